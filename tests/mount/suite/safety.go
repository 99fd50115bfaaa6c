package suite

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func init() {
	register("safety_symlink_abs_outside", safetySymlinkAbs)
	register("safety_symlink_rel_outside", safetySymlinkRel)
	register("safety_root_listing", safetyRootListing)
	register("safety_host_rename_race", safetyHostRenameRace)
	register("safety_fifo_no_hang", safetyFifoNoHang)
	register("names", namesCase)
}

// outsideDir makes a directory outside the shared tree holding a "secret"
// file, removed at the end of the test.
func outsideDir(t *testing.T) string {
	d, err := os.MkdirTemp("", "suite-outside-")
	must(t, "mkdtemp", err)
	t.Cleanup(func() { os.RemoveAll(d) })
	must(t, "chmod", os.Chmod(d, 0o755))
	writeFile(t, filepath.Join(d, "secret"), "outside the shared dir", 0o644)
	return d
}

// checkLinkNotFollowed asserts that name, a symlink on the host to target,
// is a symlink through the mount: the server did not follow it.
func checkLinkNotFollowed(t *testing.T, e *Env, name, target string) {
	t.Helper()
	st := lstat(t, e.M(name))
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		t.Fatalf("%s is mode %o through the mount: the server followed a host symlink", name, st.Mode)
	}
	if st.Dev != e.MountDev {
		t.Errorf("lstat %s: st_dev %d, want the mount's %d", name, st.Dev, e.MountDev)
	}
	if got, err := os.Readlink(e.M(name)); err != nil || got != target {
		t.Errorf("readlink %s: %q %v, want %q", name, got, err, target)
	}
	_, err := unix.Open(e.M(name), unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	wantErrno(t, "O_NOFOLLOW open of "+name, err, unix.ELOOP)
	fd, err := unix.Open(e.M(name), unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	must(t, "O_PATH|O_NOFOLLOW", err)
	defer unix.Close(fd)
	var fst unix.Stat_t
	must(t, "fstat", unix.Fstat(fd, &fst))
	if fst.Mode&unix.S_IFMT != unix.S_IFLNK || fst.Dev != e.MountDev {
		t.Errorf("O_PATH|O_NOFOLLOW fd of %s: mode %o dev %d, want the link on the mount", name, fst.Mode, fst.Dev)
	}
	// A file handle for the link names the link, never what it points to.
	h, mountID, err := unix.NameToHandleAt(unix.AT_FDCWD, e.M(name), 0)
	if err != nil {
		t.Logf("name_to_handle_at %s: %v (no export support)", name, errString(err))
		return
	}
	_ = mountID
	mfd, err := unix.Open(e.Mnt, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	must(t, "open mount root", err)
	defer unix.Close(mfd)
	hfd, err := unix.OpenByHandleAt(mfd, h, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC)
	if err != nil {
		t.Logf("open_by_handle_at %s: %v", name, errString(err))
		return
	}
	defer unix.Close(hfd)
	must(t, "fstat by handle", unix.Fstat(hfd, &fst))
	if fst.Mode&unix.S_IFMT != unix.S_IFLNK || fst.Dev != e.MountDev {
		t.Errorf("open_by_handle_at of link %s gave mode %o dev %d, want the link on the mount", name, fst.Mode, fst.Dev)
	}
}

func safetySymlinkAbs(t *testing.T, e *Env) {
	if !e.HostVisible() {
		t.Log("host side not visible: nothing to check")
		return
	}
	out := outsideDir(t)
	must(t, "host symlink", os.Symlink(out, e.H("abs")))
	must(t, "host symlink /etc", os.Symlink("/etc", e.H("etc")))
	must(t, "host symlink file", os.Symlink(filepath.Join(out, "secret"), e.H("secretlink")))
	checkLinkNotFollowed(t, e, "abs", out)
	checkLinkNotFollowed(t, e, "etc", "/etc")
	checkLinkNotFollowed(t, e, "secretlink", filepath.Join(out, "secret"))
	// Following the link is the caller's kernel resolving the target in
	// its own namespace, outside the mount: st_dev is not the mount's.
	var st, host unix.Stat_t
	must(t, "stat through link", unix.Stat(e.M("abs/secret"), &st))
	must(t, "host stat", unix.Stat(filepath.Join(out, "secret"), &host))
	if st.Dev == e.MountDev || st.Dev != host.Dev || st.Ino != host.Ino {
		t.Errorf("abs/secret resolved to (dev %d, ino %d); want the caller-side file (%d, %d), not one served by the mount (dev %d)",
			st.Dev, st.Ino, host.Dev, host.Ino, e.MountDev)
	}
	// Creating through a link to outside must not create inside the
	// shared dir, nor must it create outside through the server: the
	// caller's kernel follows the link in its namespace.
	writeFile(t, e.M("abs/created"), "via link", 0o644)
	var c unix.Stat_t
	must(t, "stat created", unix.Stat(filepath.Join(out, "created"), &c))
	if c.Dev == e.MountDev {
		t.Errorf("file created through the link is on the mount")
	}
	// openat2 with RESOLVE_BENEATH from the mount root refuses the escape.
	root, err := unix.Open(e.Dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	must(t, "open case dir", err)
	defer unix.Close(root)
	_, err = unix.Openat2(root, "abs/secret", &unix.OpenHow{Flags: unix.O_RDONLY | unix.O_CLOEXEC, Resolve: unix.RESOLVE_BENEATH})
	wantErrno(t, "openat2 RESOLVE_BENEATH through an escaping link", err, unix.EXDEV)
}

func safetySymlinkRel(t *testing.T, e *Env) {
	if !e.HostVisible() {
		t.Log("host side not visible: nothing to check")
		return
	}
	// shared/case-X/up -> ../../ is the shared dir's parent on the host;
	// through the mount it names the mount point's parent.
	must(t, "host symlink", os.Symlink("../../", e.H("up")))
	must(t, "host symlink deep", os.Symlink("../../../../../../../../../../etc/passwd", e.H("deep")))
	must(t, "mkdir sub", os.Mkdir(e.H("sub"), 0o755))
	must(t, "host symlink in sub", os.Symlink("../../../", e.H("sub/up3")))
	checkLinkNotFollowed(t, e, "up", "../../")
	checkLinkNotFollowed(t, e, "deep", "../../../../../../../../../../etc/passwd")
	checkLinkNotFollowed(t, e, "sub/up3", "../../../")
	var st, want unix.Stat_t
	must(t, "stat up", unix.Stat(e.M("up"), &st))
	must(t, "stat mount's parent", unix.Stat(filepath.Dir(e.Mnt), &want))
	if st.Dev != want.Dev || st.Ino != want.Ino {
		t.Errorf("up resolved to (dev %d, ino %d), want the mount point's parent (%d, %d)", st.Dev, st.Ino, want.Dev, want.Ino)
	}
	// The listing through "up" is the caller's view of the mount's parent,
	// which holds the mount point itself.
	names, err := readdirnames(e.M("up"))
	must(t, "readdir up", err)
	if !contains(names, filepath.Base(e.Mnt)) {
		t.Errorf("up lists %v, want the mount point's siblings including %s", names, filepath.Base(e.Mnt))
	}
}

// safetyRootListing: the mount root lists exactly the shared directory's
// entries, and ".." of the root, seen from inside, is the mount point's
// parent in the caller's namespace, never the shared dir's parent served by
// the server.
func safetyRootListing(t *testing.T, e *Env) {
	if !e.HostVisible() {
		return
	}
	got, err := readdirnames(e.Mnt)
	must(t, "readdir mount root", err)
	want, err := readdirnames(e.Shared)
	must(t, "readdir shared", err)
	sort.Strings(got)
	sort.Strings(want)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("mount root lists %v, shared dir %v", got, want)
	}
	var st unix.Stat_t
	must(t, "stat root/..", unix.Stat(e.Mnt+"/..", &st))
	if st.Dev == e.MountDev {
		t.Errorf("the mount root's .. is on the mount (dev %d)", st.Dev)
	}
	// ".." from a subdirectory comes back to the root.
	must(t, "mkdir", unix.Mkdir(e.M("a"), 0o755))
	must(t, "stat a/../..", unix.Stat(e.Dir+"/a/../..", &st))
	var root unix.Stat_t
	must(t, "stat root", unix.Stat(e.Mnt, &root))
	if st.Dev != root.Dev || st.Ino != root.Ino {
		t.Errorf("case/a/../.. is (%d,%d), want the root (%d,%d)", st.Dev, st.Ino, root.Dev, root.Ino)
	}
}

// safetyHostRenameRace: the host swaps two directories for a second while
// the caller reads files in them through the mount: every read returns one
// of the two files' contents or ENOENT, never another file, and the server
// survives.
func safetyHostRenameRace(t *testing.T, e *Env) {
	if !e.HostVisible() {
		return
	}
	for _, d := range []string{"one", "two"} {
		must(t, "mkdir", os.Mkdir(e.H(d), 0o755))
		writeFile(t, e.H(d+"/f"), "content of "+d, 0o644)
		must(t, "mkdir deep", os.MkdirAll(e.H(d+"/x/y"), 0o755))
		writeFile(t, e.H(d+"/x/y/g"), "deep "+d, 0o644)
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	var renames atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			if err := unix.Renameat2(unix.AT_FDCWD, e.H("one"), unix.AT_FDCWD, e.H("two"), unix.RENAME_EXCHANGE); err == nil {
				renames.Add(1)
			}
			os.Rename(e.H("one"), e.H("tmp"))
			os.Rename(e.H("tmp"), e.H("one"))
		}
	}()
	var reads, misses atomic.Int64
	var mu sync.Mutex
	var bad []string
	for r := 0; r < 2; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				for _, p := range []string{"one/f", "two/f", "one/x/y/g", "two/x/y/g"} {
					b, err := os.ReadFile(e.M(p))
					reads.Add(1)
					switch en := errnoOf(err); {
					case err == nil:
						s := string(b)
						if s != "content of one" && s != "content of two" && s != "deep one" && s != "deep two" {
							mu.Lock()
							bad = append(bad, fmt.Sprintf("%s: %q", p, s))
							mu.Unlock()
						}
						if strings.HasPrefix(s, "deep") != strings.Contains(p, "/y/") {
							mu.Lock()
							bad = append(bad, fmt.Sprintf("%s gave the wrong file: %q", p, s))
							mu.Unlock()
						}
					case en == unix.ENOENT || en == unix.ESTALE:
						misses.Add(1)
					default:
						mu.Lock()
						bad = append(bad, fmt.Sprintf("%s: %v", p, errString(err)))
						mu.Unlock()
					}
				}
			}
		}()
	}
	time.Sleep(time.Second)
	stop.Store(true)
	wg.Wait()
	t.Logf("%d host renames, %d reads through the mount, %d ENOENT/ESTALE", renames.Load(), reads.Load(), misses.Load())
	if len(bad) > 0 {
		if len(bad) > 10 {
			bad = append(bad[:10], fmt.Sprintf("... %d in all", len(bad)))
		}
		t.Errorf("wrong results during the race:\n%s", strings.Join(bad, "\n"))
	}
	// The server is alive and agrees with the host afterwards.
	time.Sleep(1100 * time.Millisecond) // let cached entries expire
	for _, d := range []string{"one", "two"} {
		h, err := os.ReadFile(e.H(d + "/f"))
		must(t, "host read", err)
		m, err := os.ReadFile(e.M(d + "/f"))
		must(t, "read after the race", err)
		if string(h) != string(m) {
			t.Errorf("%s/f: %q through the mount, %q on the host", d, m, h)
		}
	}
}

// withTimeout runs f and fails t if it takes longer than d: an operation
// that opened a fifo on the server would hang.
func withTimeout(t *testing.T, what string, d time.Duration, f func() error) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		must(t, what, err)
	case <-time.After(d):
		t.Fatalf("%s hung for %v: the server probably opened a fifo", what, d)
	}
}

func safetyFifoNoHang(t *testing.T, e *Env) {
	mk := e.M("fifo")
	if e.HostVisible() {
		mk = e.H("fifo")
	}
	must(t, "mkfifo", unix.Mkfifo(mk, 0o666))
	withTimeout(t, "lstat fifo", 5*time.Second, func() error {
		var st unix.Stat_t
		if err := unix.Lstat(e.M("fifo"), &st); err != nil {
			return err
		}
		if st.Mode&unix.S_IFMT != unix.S_IFIFO {
			return fmt.Errorf("mode %o, want a fifo", st.Mode)
		}
		return nil
	})
	withTimeout(t, "ls -l", 5*time.Second, func() error {
		ents, err := os.ReadDir(e.Dir)
		if err != nil {
			return err
		}
		for _, ent := range ents {
			if _, err := ent.Info(); err != nil {
				return err
			}
			if ent.Name() == "fifo" && ent.Type() != os.ModeNamedPipe {
				return fmt.Errorf("fifo listed as %v", ent.Type())
			}
		}
		return nil
	})
	withTimeout(t, "chmod/utimes/getxattr on a fifo", 5*time.Second, func() error {
		if err := unix.Chmod(e.M("fifo"), 0o600); err != nil {
			return err
		}
		unix.Getxattr(e.M("fifo"), "user.x", nil)
		return unix.UtimesNano(e.M("fifo"), []unix.Timespec{{Sec: 1}, {Sec: 2}})
	})
	// O_RDWR on a fifo never blocks on Linux; it is a working pipe.
	withTimeout(t, "open fifo O_RDWR", 5*time.Second, func() error {
		fd, err := unix.Open(e.M("fifo"), unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if _, err := unix.Write(fd, []byte("ping")); err != nil {
			return err
		}
		b := make([]byte, 4)
		if _, err := unix.Read(fd, b); err != nil || string(b) != "ping" {
			return fmt.Errorf("read %q %v", b, err)
		}
		return nil
	})
	withTimeout(t, "open fifo O_RDONLY|O_NONBLOCK", 5*time.Second, func() error {
		fd, err := unix.Open(e.M("fifo"), unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err == nil {
			unix.Close(fd)
		}
		return err
	})
}

func namesCase(t *testing.T, e *Env) {
	names := []string{
		"with space", "new\nline", "tab\there", "-leading-dash", "back\\slash",
		"ünïcödé-名前", ".hidden", "...", "trailing.", strings.Repeat("n", 255),
		"\x01\x7f\xff",
	}
	for _, n := range names {
		writeFile(t, e.M(n), n, 0o644)
	}
	got, err := readdirnames(e.Dir)
	must(t, "readdir", err)
	sort.Strings(got)
	want := append([]string(nil), names...)
	sort.Strings(want)
	if fmt.Sprintf("%q", got) != fmt.Sprintf("%q", want) {
		t.Errorf("listing %q, want %q", got, want)
	}
	for _, n := range names {
		wantContent(t, e.M(n), n)
		if e.HostVisible() {
			wantContent(t, e.H(n), n)
		}
	}
	err = os.WriteFile(e.M(strings.Repeat("n", 256)), nil, 0o644)
	wantErrno(t, "256-byte name", err, unix.ENAMETOOLONG)
	// "." and ".." are never create targets.
	wantErrno(t, "mkdir .", unix.Mkdir(e.Dir+"/.", 0o755), unix.EEXIST)
	wantErrno(t, "mknod ..", unix.Mknod(e.Dir+"/..", unix.S_IFREG|0o644, 0), unix.EEXIST)
	wantErrno(t, "symlink named ..", unix.Symlink("x", e.Dir+"/.."), unix.EEXIST)
	wantErrno(t, "rename onto ..", unix.Rename(e.M(names[0]), e.Dir+"/.."), unix.EBUSY, unix.EISDIR, unix.ENOTEMPTY, unix.EEXIST)
}
