// Node identity tests for issue 3: unique st_ino across host submounts,
// d_ino = st_ino, guest file handles across cache drops and restarts,
// forged handles, carrying on after kill -9 under --supervise, and the fd
// bound. (Malformed requests are tested in-process, with raw protocol
// bytes, in internal/passthrough's wire tests and fuzzer.)

package mount

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/govirtiofsd/govirtiofsd/tests/mount/mounttest"
	"golang.org/x/sys/unix"
)

// mountTmpfs mounts a tmpfs at dir and unmounts it at cleanup (after the
// server, which was started later, has stopped).
func mountTmpfs(t testing.TB, dir, opts string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, opts); err != nil {
		t.Fatalf("mount tmpfs at %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			unix.Unmount(dir, unix.MNT_DETACH)
			t.Errorf("unmount tmpfs %s: %v", dir, err)
		}
	})
}

// fillTree makes the same small tree (files, a hard link, a dir, a symlink)
// in dir; on two fresh tmpfs mounts it gets the same inode numbers.
func fillTree(t testing.TB, dir string) {
	t.Helper()
	for i := 0; i < 20; i++ {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%02d", i)), []byte(dir), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	must(t, os.Link(filepath.Join(dir, "f00"), filepath.Join(dir, "hardlink")))
	must(t, os.Mkdir(filepath.Join(dir, "sub"), 0o755))
	must(t, os.WriteFile(filepath.Join(dir, "sub", "g"), nil, 0o644))
	must(t, os.Symlink("f01", filepath.Join(dir, "sym")))
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

type devIno struct{ dev, ino uint64 }

// TestIdentitySubmountCollisions: two tmpfs mounts inside the shared dir
// with colliding inode numbers give distinct (st_dev, st_ino) through the
// mount, hard links still agree, find(1) reports no loops and d_ino equals
// st_ino everywhere.
func TestIdentitySubmountCollisions(t *testing.T) {
	for _, mode := range []string{"auto", "remap"} {
		t.Run(mode, func(t *testing.T) {
			d := mounttest.Start(t, mounttest.Options{
				Flags: []string{"--inode-numbers=" + mode},
				Setup: func(t testing.TB, shared string) {
					for _, s := range []string{"a", "b"} {
						mountTmpfs(t, filepath.Join(shared, s), "size=16m")
						fillTree(t, filepath.Join(shared, s))
					}
					// The premise: the host numbers collide.
					var a, b unix.Stat_t
					must(t, unix.Lstat(filepath.Join(shared, "a", "f05"), &a))
					must(t, unix.Lstat(filepath.Join(shared, "b", "f05"), &b))
					if a.Ino != b.Ino || a.Dev == b.Dev {
						t.Fatalf("host tmpfs inode numbers do not collide (a/f05 %d:%d, b/f05 %d:%d): the test premise fails", a.Dev, a.Ino, b.Dev, b.Ino)
					}
				},
			})
			seen := map[devIno]string{}
			links := map[string]devIno{}
			err := filepath.Walk(d.Mnt, func(p string, fi os.FileInfo, err error) error {
				if err != nil {
					return err
				}
				st := fi.Sys().(*syscall.Stat_t)
				k := devIno{st.Dev, st.Ino}
				rel, _ := filepath.Rel(d.Mnt, p)
				if base := filepath.Base(rel); base == "hardlink" || base == "f00" {
					if prev, ok := links[filepath.Dir(rel)]; ok {
						if prev != k {
							t.Errorf("%s: hard links differ through the mount: %v vs %v", rel, prev, k)
						}
						return nil
					}
					links[filepath.Dir(rel)] = k
				}
				if other, dup := seen[k]; dup {
					t.Errorf("%s and %s share (st_dev %d, st_ino %d) through the mount", rel, other, k.dev, k.ino)
				}
				seen[k] = rel
				return nil
			})
			must(t, err)
			if len(seen) < 2*24 {
				t.Errorf("walked %d distinct files, want at least 48", len(seen))
			}
			out, err := exec.Command("find", d.Mnt).CombinedOutput()
			if err != nil || bytes.Contains(out, []byte("loop")) {
				t.Errorf("find over the mount: %v\n%s", err, out)
			}
			checkDinoTree(t, d.Mnt)
		})
	}
}

// checkDinoTree asserts d_ino = st_ino for every entry under root.
func checkDinoTree(t *testing.T, root string) {
	t.Helper()
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil || !fi.IsDir() {
			return err
		}
		for name, dino := range dinos(t, p) {
			if name == ".." {
				continue
			}
			var st unix.Stat_t
			must(t, unix.Lstat(filepath.Join(p, name), &st))
			if st.Ino != dino {
				t.Errorf("%s/%s: d_ino %d, st_ino %d", p, name, dino, st.Ino)
			}
		}
		return nil
	})
}

// dinos lists dir with getdents64: name → d_ino.
func dinos(t *testing.T, dir string) map[string]uint64 {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	must(t, err)
	defer unix.Close(fd)
	out := map[string]uint64{}
	buf := make([]byte, 16<<10)
	for {
		n, err := unix.Getdents(fd, buf)
		must(t, err)
		if n == 0 {
			return out
		}
		for off := 0; off < n; {
			de := (*unix.Dirent)(unsafe.Pointer(&buf[off]))
			nb := (*[256]byte)(unsafe.Pointer(&de.Name[0]))
			l := bytes.IndexByte(nb[:], 0)
			out[string(nb[:l])] = de.Ino
			off += int(de.Reclen)
		}
	}
}

// openByHandle opens h on the mount at mnt, O_RDONLY.
func openByHandle(mnt string, h unix.FileHandle, flags int) (int, error) {
	mfd, err := unix.Open(mnt, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	defer unix.Close(mfd)
	return unix.OpenByHandleAt(mfd, h, flags|unix.O_CLOEXEC)
}

// TestIdentityHandles: name_to_handle_at → drop_caches → open_by_handle_at
// works for a file and a directory with the in-memory table; a forged
// handle gives ESTALE.
func TestIdentityHandles(t *testing.T) {
	testHandles(t, []string{"--state-dir=none"}, false)
}

// TestIdentityHandlesRestart: the same, and the handles still work after the
// daemon is stopped and started again with the same --state-dir.
func TestIdentityHandlesRestart(t *testing.T) {
	testHandles(t, []string{"--state-dir=" + t.TempDir()}, true)
}

func testHandles(t *testing.T, flags []string, restart bool) {
	d := mounttest.Start(t, mounttest.Options{Flags: flags})
	must(t, os.Mkdir(filepath.Join(d.Mnt, "dir"), 0o755))
	must(t, os.WriteFile(filepath.Join(d.Mnt, "dir", "file"), []byte("by handle"), 0o644))
	fh, _, err := unix.NameToHandleAt(unix.AT_FDCWD, filepath.Join(d.Mnt, "dir", "file"), 0)
	if err != nil {
		t.Fatalf("name_to_handle_at on a file: %v (FUSE_EXPORT_SUPPORT not negotiated?)", err)
	}
	dh, _, err := unix.NameToHandleAt(unix.AT_FDCWD, filepath.Join(d.Mnt, "dir"), 0)
	must(t, err)
	var fileSt, dirSt unix.Stat_t
	must(t, unix.Stat(filepath.Join(d.Mnt, "dir", "file"), &fileSt))
	must(t, unix.Stat(filepath.Join(d.Mnt, "dir"), &dirSt))

	check := func(when string) {
		t.Helper()
		mounttest.DropCaches(t)
		fd, err := openByHandle(d.Mnt, fh, unix.O_RDONLY)
		if err != nil {
			t.Errorf("%s: open_by_handle_at(file): %v", when, err)
		} else {
			b := make([]byte, 32)
			n, _ := unix.Read(fd, b)
			var st unix.Stat_t
			unix.Fstat(fd, &st)
			unix.Close(fd)
			if string(b[:n]) != "by handle" || st.Ino != fileSt.Ino {
				t.Errorf("%s: file by handle reads %q, st_ino %d (want %d)", when, b[:n], st.Ino, fileSt.Ino)
			}
		}
		fd, err = openByHandle(d.Mnt, dh, unix.O_RDONLY|unix.O_DIRECTORY)
		if err != nil {
			t.Errorf("%s: open_by_handle_at(dir): %v", when, err)
			return
		}
		var st unix.Stat_t
		unix.Fstat(fd, &st)
		names := 0
		buf := make([]byte, 4096)
		if n, err := unix.Getdents(fd, buf); err == nil && n > 0 {
			names = n
		}
		unix.Close(fd)
		if st.Ino != dirSt.Ino || names == 0 {
			t.Errorf("%s: dir by handle: st_ino %d (want %d), getdents %d bytes", when, st.Ino, dirSt.Ino, names)
		}
	}
	check("after drop_caches")

	// Forged handles: flip each byte in turn.
	raw := fh.Bytes()
	for i := range raw {
		forged := append([]byte(nil), raw...)
		forged[i] ^= 0x5a
		fd, err := openByHandle(d.Mnt, unix.NewFileHandle(fh.Type(), forged), unix.O_RDONLY)
		if err == nil {
			var st unix.Stat_t
			unix.Fstat(fd, &st)
			unix.Close(fd)
			if st.Ino == fileSt.Ino {
				continue // a byte the kernel ignores (e.g. padding) may leave the handle valid
			}
			t.Errorf("forged handle (byte %d flipped) opened another file, st_ino %d", i, st.Ino)
			continue
		}
		if err != unix.ESTALE {
			t.Errorf("forged handle (byte %d flipped): %v, want ESTALE", i, err)
		}
	}

	if restart {
		d.Restart()
		check("after stop and start with the same --state-dir")
	}
}

// TestIdentitySupervisedKill: under --supervise, kill -9 of the serving
// process leaves a process holding an open file, a cwd and a directory
// stream inside the mount able to carry on with the same st_ino values,
// and a writer and a reader running across the kill lose nothing.
func TestIdentitySupervisedKill(t *testing.T) {
	state := t.TempDir()
	d := mounttest.Start(t, mounttest.Options{Flags: []string{"--supervise", "--state-dir=" + state}})
	m := func(p string) string { return filepath.Join(d.Mnt, p) }
	must(t, os.Mkdir(m("cwd"), 0o755))
	must(t, os.WriteFile(m("cwd/f"), []byte("in cwd"), 0o644))
	must(t, os.Mkdir(m("stream"), 0o755))
	for i := 0; i < 300; i++ {
		must(t, os.WriteFile(m(fmt.Sprintf("stream/e%03d", i)), nil, 0o644))
	}
	fh, _, err := unix.NameToHandleAt(unix.AT_FDCWD, m("cwd/f"), 0)
	must(t, err)
	var cwdSt, fileSt, streamSt unix.Stat_t
	must(t, unix.Stat(m("cwd"), &cwdSt))
	must(t, unix.Stat(m("cwd/f"), &fileSt))
	must(t, unix.Stat(m("stream"), &streamSt))

	// A process whose cwd is inside the mount.
	cwdProc := exec.Command("sh", "-c", "stat -c %i . f; read x; stat -c %i . f; cat f")
	cwdProc.Dir = m("cwd")
	stdin, _ := cwdProc.StdinPipe()
	var cwdOut bytes.Buffer
	cwdProc.Stdout = &cwdOut
	cwdProc.Stderr = &cwdOut
	must(t, cwdProc.Start())

	// An open file and a half-read directory stream.
	f, err := os.OpenFile(m("cwd/f"), os.O_RDWR, 0)
	must(t, err)
	defer f.Close()
	dirfd, err := unix.Open(m("stream"), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	must(t, err)
	defer unix.Close(dirfd)
	buf := make([]byte, 1024)
	n1, err := unix.Getdents(dirfd, buf)
	must(t, err)

	// A writer appending numbered records and a reader checking them.
	var stop atomic.Bool
	var wg sync.WaitGroup
	var written atomic.Int64
	var errs []string
	var mu sync.Mutex
	fail := func(s string) { mu.Lock(); errs = append(errs, s); mu.Unlock() }
	w, err := os.OpenFile(m("log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	must(t, err)
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := 0; !stop.Load(); i++ {
			if _, err := fmt.Fprintf(w, "record %08d\n", i); err != nil {
				fail(fmt.Sprintf("write %d: %v", i, err))
				return
			}
			written.Store(int64(i + 1))
		}
	}()
	go func() {
		defer wg.Done()
		r, err := os.Open(m("log"))
		if err != nil {
			fail(fmt.Sprintf("open reader: %v", err))
			return
		}
		defer r.Close()
		for !stop.Load() {
			if _, err := r.ReadAt(make([]byte, 4096), 0); err != nil && err != io.EOF {
				fail(fmt.Sprintf("read: %v", err))
				return
			}
		}
	}()
	time.Sleep(300 * time.Millisecond)

	killServing(t, d)
	time.Sleep(300 * time.Millisecond)
	stop.Store(true)
	wg.Wait()
	w.Close()
	if len(errs) > 0 {
		t.Errorf("the workload saw errors across kill -9:\n%s", strings.Join(errs, "\n"))
	}
	// Nothing lost: every record written is in the file, in order.
	data, err := os.ReadFile(m("log"))
	must(t, err)
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	t.Logf("%d records written across the kill", written.Load())
	if int64(len(lines)) != written.Load() {
		t.Errorf("log holds %d records, the writer wrote %d", len(lines), written.Load())
	}
	for i, l := range lines {
		if l != fmt.Sprintf("record %08d", i) {
			t.Errorf("record %d is %q", i, l)
			break
		}
	}

	// The open file, the directory stream and the cwd carry on.
	var st unix.Stat_t
	must(t, unix.Fstat(int(f.Fd()), &st))
	if st.Ino != fileSt.Ino {
		t.Errorf("open file st_ino %d after the kill, was %d", st.Ino, fileSt.Ino)
	}
	if _, err := f.WriteAt([]byte("IN"), 0); err != nil {
		t.Errorf("write to the open file after the kill: %v", err)
	}
	n2, err := unix.Getdents(dirfd, buf)
	if err != nil {
		t.Errorf("getdents on the directory stream after the kill: %v", err)
	}
	if _, err := unix.Seek(dirfd, 0, 0); err != nil {
		t.Errorf("rewinddir after the kill: %v", err)
	}
	if ents := dinos(t, m("stream")); len(ents) != 302 {
		t.Errorf("stream lists %d entries after the kill, want 302 (read %d+%d bytes across it)", len(ents), n1, n2)
	}
	must(t, unix.Stat(m("stream"), &st))
	if st.Ino != streamSt.Ino {
		t.Errorf("stream st_ino %d after the kill, was %d", st.Ino, streamSt.Ino)
	}
	// A guest handle taken before the kill opens the file after a cache drop.
	mounttest.DropCaches(t)
	if hfd, err := openByHandle(d.Mnt, fh, unix.O_RDONLY); err != nil {
		t.Errorf("open_by_handle_at after kill -9 and drop_caches: %v", err)
	} else {
		unix.Fstat(hfd, &st)
		unix.Close(hfd)
		if st.Ino != fileSt.Ino {
			t.Errorf("handle opened st_ino %d, want %d", st.Ino, fileSt.Ino)
		}
	}
	stdin.Write([]byte("\n"))
	stdin.Close()
	if err := cwdProc.Wait(); err != nil {
		t.Errorf("the process with its cwd in the mount failed: %v\n%s", err, cwdOut.String())
	}
	want := fmt.Sprintf("%d\n%d\n%d\n%d\nIN cwd", cwdSt.Ino, fileSt.Ino, cwdSt.Ino, fileSt.Ino)
	if got := cwdOut.String(); got != want {
		t.Errorf("cwd process printed %q, want %q", got, want)
	}
}

// killServing kills the serving process of a --supervise daemon (not the
// supervisor) with SIGKILL and waits until the supervisor has started the
// next one.
func killServing(t *testing.T, d *mounttest.Daemon) {
	t.Helper()
	kids, err := mounttest.Children(d.Pid())
	if err != nil || len(kids) == 0 {
		t.Fatalf("no serving child under the supervisor pid %d: %v", d.Pid(), err)
	}
	must(t, syscall.Kill(kids[0], syscall.SIGKILL))
	deadline := time.Now().Add(15 * time.Second)
	for {
		now, _ := mounttest.Children(d.Pid())
		if len(now) > 0 && now[0] != kids[0] {
			t.Logf("killed serving pid %d under supervisor %d; the supervisor started pid %d", kids[0], d.Pid(), now[0])
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the supervisor did not restart the serving process within 15s\n%s", d.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestIdentityFDBound: after find over 200k files with --max-open-fds=4096
// the daemon's open fds stay bounded, and a second walk after drop_caches
// finds every file again (nothing ESTALE because of eviction).
func TestIdentityFDBound(t *testing.T) {
	const files = 200_000
	const bound = 4096
	d := mounttest.Start(t, mounttest.Options{
		Flags: []string{fmt.Sprintf("--max-open-fds=%d", bound)},
		Setup: func(t testing.TB, shared string) {
			mountTmpfs(t, shared, "size=512m,nr_inodes=400k")
			for i := 0; i < files/1000; i++ {
				dir := filepath.Join(shared, fmt.Sprintf("d%03d", i))
				must(t, os.Mkdir(dir, 0o755))
				for j := 0; j < 1000; j++ {
					fd, err := unix.Open(filepath.Join(dir, fmt.Sprintf("f%04d", j)), unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
					must(t, err)
					unix.Close(fd)
				}
			}
		},
	})
	before, err := mounttest.FDCount(d.Pid())
	must(t, err)
	count := func() int {
		out, err := exec.Command("find", d.Mnt, "-type", "f").Output()
		if err != nil {
			t.Errorf("find: %v", err)
		}
		return bytes.Count(out, []byte("\n"))
	}
	if n := count(); n != files {
		t.Errorf("find saw %d files, want %d", n, files)
	}
	after, err := mounttest.FDCount(d.Pid())
	must(t, err)
	t.Logf("daemon fds: %d before the walk, %d after", before, after)
	if after > bound+before+64 {
		t.Errorf("daemon holds %d fds after a %d-file walk, bound %d (+%d at start, +64 slack)", after, files, bound, before)
	}
	mounttest.DropCaches(t)
	if n := count(); n != files {
		t.Errorf("second walk after drop_caches saw %d files, want %d", n, files)
	}
}

// TestIdentityHandleMovedOutside: a guest handle for a file or directory
// that a host-side rename moved out of the shared directory is never served
// again (ESTALE), whichever way the daemon resolves host files.
func TestIdentityHandleMovedOutside(t *testing.T) {
	for _, mode := range []string{"never", "prefer", "mandatory"} {
		t.Run(mode, func(t *testing.T) {
			d := mounttest.Start(t, mounttest.Options{Flags: []string{"--inode-file-handles=" + mode}})
			m := func(p string) string { return filepath.Join(d.Mnt, p) }
			must(t, os.MkdirAll(m("d/d2"), 0o755))
			must(t, os.WriteFile(m("d/f"), []byte("secret once moved"), 0o644))
			must(t, os.WriteFile(m("d/d2/g"), nil, 0o644))
			fh, _, err := unix.NameToHandleAt(unix.AT_FDCWD, m("d/f"), 0)
			must(t, err)
			dh, _, err := unix.NameToHandleAt(unix.AT_FDCWD, m("d/d2"), 0)
			must(t, err)
			// Outside, on the same host file system, so a host handle
			// would still resolve.
			out := filepath.Join(filepath.Dir(d.Shared), "outside")
			must(t, os.Mkdir(out, 0o755))
			must(t, os.Rename(filepath.Join(d.Shared, "d/f"), filepath.Join(out, "f")))
			must(t, os.Rename(filepath.Join(d.Shared, "d/d2"), filepath.Join(out, "d2")))
			mounttest.DropCaches(t)
			for what, h := range map[string]unix.FileHandle{"file": fh, "dir": dh} {
				fd, err := openByHandle(d.Mnt, h, unix.O_RDONLY)
				if err == nil {
					b := make([]byte, 64)
					n, _ := unix.Read(fd, b)
					unix.Close(fd)
					t.Errorf("%s moved outside the shared dir is still served by handle (read %q)", what, b[:max(n, 0)])
					continue
				}
				if err != unix.ESTALE {
					t.Errorf("%s moved outside: open_by_handle_at: %v, want ESTALE", what, err)
				}
			}
			// Moved back, the file is reachable by path again.
			must(t, os.Rename(filepath.Join(out, "f"), filepath.Join(d.Shared, "f")))
			if b, err := os.ReadFile(m("f")); err != nil || string(b) != "secret once moved" {
				t.Errorf("moved back: %q %v", b, err)
			}
		})
	}
}

// TestIdentityTamperedRecord: with a byte of one file's record flipped in
// the state dir while the daemon is stopped, the restarted daemon refuses
// that record (ESTALE for the old handle, a log line naming it) and serves
// everything else, the old handle of another file included. It finds the
// record by the file's name (records keep parent nodeid + name) in the
// state dir's files (at any depth) and flips a byte of that name.
func TestIdentityTamperedRecord(t *testing.T) {
	state := t.TempDir()
	d := mounttest.Start(t, mounttest.Options{Flags: []string{"--state-dir=" + state}})
	m := func(p string) string { return filepath.Join(d.Mnt, p) }
	must(t, os.WriteFile(m("victim-0123456789"), []byte("v"), 0o644))
	must(t, os.WriteFile(m("bystander"), []byte("b"), 0o644))
	vh, _, err := unix.NameToHandleAt(unix.AT_FDCWD, m("victim-0123456789"), 0)
	must(t, err)
	bh, _, err := unix.NameToHandleAt(unix.AT_FDCWD, m("bystander"), 0)
	must(t, err)
	d.Stop()
	name := []byte("victim-0123456789")
	hits := 0
	var files []string
	must(t, filepath.WalkDir(state, func(p string, ent os.DirEntry, err error) error {
		if err == nil && ent.Type().IsRegular() {
			files = append(files, p)
		}
		return err
	}))
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		for i := bytes.Index(b, name); i >= 0; {
			hits++
			b[i+3] ^= 0x01
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
			j := bytes.Index(b[i+1:], name)
			if j < 0 {
				break
			}
			i += 1 + j
		}
	}
	if hits == 0 {
		t.Fatalf("no record in %s holds the name %q", state, name)
	}
	t.Logf("flipped a byte of %d copies of the record's name", hits)
	if err := d.TryRestart(); err != nil {
		t.Fatalf("the daemon refused to start over one tampered record: %v", err)
	}
	mounttest.DropCaches(t)
	if fd, err := openByHandle(d.Mnt, vh, unix.O_RDONLY); err == nil {
		unix.Close(fd)
		t.Errorf("the tampered record still serves its handle")
	} else if err != unix.ESTALE {
		t.Errorf("tampered record: open_by_handle_at: %v, want ESTALE", err)
	}
	if fd, err := openByHandle(d.Mnt, bh, unix.O_RDONLY); err != nil {
		t.Errorf("an untouched record's handle fails after the restart: %v", err)
	} else {
		unix.Close(fd)
	}
	if b, err := os.ReadFile(m("victim-0123456789")); err != nil || string(b) != "v" {
		t.Errorf("the tampered file by path: %q %v", b, err)
	}
	if !strings.Contains(strings.ToLower(d.Log()), "tamper") {
		t.Errorf("no log line about the tampered record:\n%s", d.Log())
	}
}

// TestIdentityStateDirFull: with the node table on a full disk (a small
// tmpfs), new lookups fail with a clear error (ENOSPC to the caller, a log
// line naming the node table) and the daemon keeps serving what it knows;
// once space is freed it records new files again, and the table is intact
// after a restart: nodeids issued before still resolve.
func TestIdentityStateDirFull(t *testing.T) {
	state := t.TempDir()
	mountTmpfs(t, state, "size=16m,mode=0700") // 20k records need ~6 MiB
	d := mounttest.Start(t, mounttest.Options{
		Flags: []string{"--state-dir=" + filepath.Join(state, "s")},
		Setup: func(t testing.TB, shared string) {
			for i := range 20000 {
				must(t, os.WriteFile(filepath.Join(shared, fmt.Sprintf("f%05d", i)), nil, 0o644))
			}
			must(t, os.WriteFile(filepath.Join(shared, "early"), []byte("early"), 0o644))
		},
	})
	early, _, err := unix.NameToHandleAt(unix.AT_FDCWD, filepath.Join(d.Mnt, "early"), 0)
	must(t, err)
	// Fill the state disk.
	filler := filepath.Join(state, "filler")
	f, err := os.Create(filler)
	must(t, err)
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			break
		}
	}
	f.Close()
	var failed, ok int
	var firstErr error
	for i := range 20000 {
		if _, err := os.Lstat(filepath.Join(d.Mnt, fmt.Sprintf("f%05d", i))); err != nil {
			failed++
			if firstErr == nil {
				firstErr = err
			}
		} else {
			ok++
		}
	}
	t.Logf("with the state disk full: %d lookups answered, %d failed (first: %v)", ok, failed, firstErr)
	if failed == 0 {
		t.Fatalf("no lookup failed with the node table's disk full")
	}
	if !errors.Is(firstErr, unix.ENOSPC) {
		t.Errorf("a lookup on a full state disk failed with %v, want ENOSPC", firstErr)
	}
	if !strings.Contains(d.Log(), "cannot record new files in the node table") {
		t.Errorf("no log line about the full node table:\n%s", d.Log())
	}
	// The daemon still serves what it recorded.
	mounttest.DropCaches(t)
	if fd, err := openByHandle(d.Mnt, early, unix.O_RDONLY); err != nil {
		t.Errorf("a file recorded before the disk filled: open_by_handle_at: %v", err)
	} else {
		unix.Close(fd)
	}
	must(t, os.Remove(filler))
	for i := range 20000 {
		if _, err := os.Lstat(filepath.Join(d.Mnt, fmt.Sprintf("f%05d", i))); err != nil {
			t.Fatalf("after freeing space: lstat f%05d: %v", i, err)
		}
	}
	if err := d.TryRestart(); err != nil {
		t.Fatalf("restart on the table that ran out of space: %v", err)
	}
	mounttest.DropCaches(t)
	if fd, err := openByHandle(d.Mnt, early, unix.O_RDONLY); err != nil {
		t.Errorf("after the restart: open_by_handle_at of a file recorded before the disk filled: %v", err)
	} else {
		unix.Close(fd)
	}
}

// TestIdentityReaddirplusKill: nodes that a READDIRPLUS reply handed out
// survive a kill -9 right after the reply. Their records are written behind
// and made durable by the barrier before each reply leaves; a daemon that
// skipped it would lose the last ones and answer ESTALE for them.
func TestIdentityReaddirplusKill(t *testing.T) {
	state := t.TempDir()
	shared := t.TempDir()
	const files = 500
	// Created on the host: the daemon first sees them in READDIRPLUS.
	must(t, os.Mkdir(filepath.Join(shared, "dir"), 0o755))
	for i := range files {
		must(t, os.WriteFile(filepath.Join(shared, "dir", fmt.Sprintf("e%03d", i)), []byte{byte(i)}, 0o644))
	}
	d := mounttest.Start(t, mounttest.Options{SharedDir: shared, Flags: []string{"--supervise", "--state-dir=" + state}})
	dir := filepath.Join(d.Mnt, "dir")
	// The first getdents of a directory is a READDIRPLUS; the kernel
	// keeps the entries' nodeids in its dentries.
	names, err := os.ReadDir(dir)
	must(t, err)
	if len(names) != files {
		t.Fatalf("listed %d entries, want %d", len(names), files)
	}
	// Pin every entry's inode (and so its nodeid) with an O_PATH fd: the
	// path walk uses the dentries READDIRPLUS made, no LOOKUP.
	fds := make([]int, files)
	inos := make([]uint64, files)
	for i := range files {
		fd, err := unix.Open(filepath.Join(dir, fmt.Sprintf("e%03d", i)), unix.O_PATH|unix.O_CLOEXEC, 0)
		must(t, err)
		fds[i] = fd
		defer unix.Close(fd)
		var st unix.Stat_t
		must(t, unix.Fstat(fd, &st))
		inos[i] = st.Ino
	}
	killServing(t, d)
	// A forced GETATTR by nodeid for every entry: the successor knows
	// each one only from the records the killed process wrote.
	bad := 0
	for i, fd := range fds {
		var sx unix.Statx_t
		err := unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_STATX_FORCE_SYNC, unix.STATX_INO, &sx)
		if err != nil || sx.Ino != inos[i] {
			if bad++; bad <= 5 {
				t.Errorf("entry e%03d after kill -9: statx %v, st_ino %d (was %d)", i, err, sx.Ino, inos[i])
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d READDIRPLUS entries lost across kill -9\n%s", bad, files, d.Log())
	}
}

// TestIdentityInodeReuse: a file the guest knows is deleted while the
// daemon is down, and the host gives its inode number, on the same device,
// to a new file under the same name (two fresh tmpfs mounted in turn at one
// path do that). After the restart the guest's old file handle must not
// open the new file (ESTALE), and the new file gets a handle of its own.
// With --inode-file-handles=never and no fd held on the old file, only the
// record's birth time tells the two apart.
func TestIdentityInodeReuse(t *testing.T) {
	var sub string
	remount := func(t testing.TB) {
		t.Helper()
		if err := unix.Mount("tmpfs", sub, "tmpfs", 0, "size=1m"); err != nil {
			t.Fatalf("mount tmpfs at %s: %v", sub, err)
		}
	}
	d := mounttest.Start(t, mounttest.Options{
		Flags: []string{"--state-dir=" + t.TempDir(), "--inode-file-handles=never"},
		Setup: func(t testing.TB, shared string) {
			sub = filepath.Join(shared, "sub")
			must(t, os.Mkdir(sub, 0o755))
			remount(t)
			// Registered before the server starts, so it runs after the
			// server has stopped.
			t.Cleanup(func() { unix.Unmount(sub, unix.MNT_DETACH) })
		},
	})
	f := filepath.Join(d.Mnt, "sub", "f")
	must(t, os.WriteFile(f, []byte("old file"), 0o644))
	oldH, _, err := unix.NameToHandleAt(unix.AT_FDCWD, f, 0)
	if err != nil {
		t.Fatalf("name_to_handle_at: %v", err)
	}
	var before unix.Stat_t
	must(t, unix.Stat(filepath.Join(sub, "f"), &before))

	d.Stop()
	if err := unix.Unmount(sub, 0); err != nil {
		t.Fatalf("unmount the old tmpfs: %v", err)
	}
	remount(t)
	must(t, os.WriteFile(filepath.Join(sub, "f"), []byte("new file"), 0o644))
	var after unix.Stat_t
	must(t, unix.Stat(filepath.Join(sub, "f"), &after))
	if after.Dev != before.Dev || after.Ino != before.Ino {
		t.Fatalf("the new file is %d:%d, the old one was %d:%d: the test premise (inode number reuse) fails", after.Dev, after.Ino, before.Dev, before.Ino)
	}
	d.Restart()

	oldHandle := func(when string) {
		t.Helper()
		mounttest.DropCaches(t)
		fd, err := openByHandle(d.Mnt, oldH, unix.O_RDONLY)
		if err == nil {
			b := make([]byte, 32)
			n, _ := unix.Read(fd, b)
			unix.Close(fd)
			t.Errorf("%s: the deleted file's handle opened a file reading %q", when, b[:n])
		} else if err != unix.ESTALE {
			t.Errorf("%s: open_by_handle_at with the deleted file's handle: %v, want ESTALE", when, err)
		}
	}
	oldHandle("before the new file is looked up")
	if b, err := os.ReadFile(f); err != nil || string(b) != "new file" {
		t.Fatalf("the new file through the mount: %q, %v", b, err)
	}
	newH, _, err := unix.NameToHandleAt(unix.AT_FDCWD, f, 0)
	must(t, err)
	if newH.Type() == oldH.Type() && string(newH.Bytes()) == string(oldH.Bytes()) {
		t.Errorf("the new file has the deleted file's handle %x", newH.Bytes())
	}
	oldHandle("after the new file was looked up")
	fd, err := openByHandle(d.Mnt, newH, unix.O_RDONLY)
	if err != nil {
		t.Fatalf("open_by_handle_at with the new file's handle: %v", err)
	}
	b := make([]byte, 32)
	n, _ := unix.Read(fd, b)
	unix.Close(fd)
	if string(b[:n]) != "new file" {
		t.Errorf("the new file's handle reads %q", b[:n])
	}
}
