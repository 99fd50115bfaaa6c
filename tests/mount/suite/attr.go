package suite

import (
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func init() {
	register("getattr_matches_host", getattrMatchesHost)
	register("getattr_stable_ino", getattrStableIno)
	register("lookup_enoent", lookupENOENT)
	register("setattr_chmod", setattrChmod)
	register("setattr_chown", setattrChown)
	register("setattr_truncate", setattrTruncate)
	register("setattr_utimens", setattrUtimens)
	register("setattr_on_fd", setattrOnFd)
}

// getattrMatchesHost: a file made on the host shows the host's mode, owner,
// size, nlink, times and blocks through the mount.
func getattrMatchesHost(t *testing.T, e *Env) {
	if !e.HostVisible() {
		// Create through the mount and compare lstat with fstat instead.
		writeFile(t, e.M("f"), "hello", 0o640)
		st := lstat(t, e.M("f"))
		if st.Size != 5 || st.Mode&0o7777 != 0o640&^uint32(umask()) {
			t.Errorf("size %d mode %o", st.Size, st.Mode)
		}
		return
	}
	data := make([]byte, 12345)
	for i := range data {
		data[i] = byte(i)
	}
	must(t, "host write", os.WriteFile(e.H("f"), data, 0o600))
	must(t, "host chmod", os.Chmod(e.H("f"), 0o4751))
	must(t, "host chown", os.Chown(e.H("f"), 1234, 5678))
	mt := time.Unix(1_000_000_000, 123456789)
	at := time.Unix(900_000_000, 987654321)
	must(t, "host chtimes", os.Chtimes(e.H("f"), at, mt))
	must(t, "host mkdir", os.Mkdir(e.H("d"), 0o711))

	for _, name := range []string{"f", "d"} {
		h := lstat(t, e.H(name))
		m := lstat(t, e.M(name))
		if m.Mode != h.Mode {
			t.Errorf("%s: mode %o through the mount, %o on the host", name, m.Mode, h.Mode)
		}
		if m.Uid != h.Uid || m.Gid != h.Gid {
			t.Errorf("%s: owner %d:%d through the mount, %d:%d on the host", name, m.Uid, m.Gid, h.Uid, h.Gid)
		}
		if m.Size != h.Size {
			t.Errorf("%s: size %d through the mount, %d on the host", name, m.Size, h.Size)
		}
		if m.Nlink != h.Nlink {
			t.Errorf("%s: nlink %d through the mount, %d on the host", name, m.Nlink, h.Nlink)
		}
		if m.Mtim != h.Mtim {
			t.Errorf("%s: mtime %v through the mount, %v on the host", name, m.Mtim, h.Mtim)
		}
		if m.Ctim != h.Ctim {
			t.Errorf("%s: ctime %v through the mount, %v on the host", name, m.Ctim, h.Ctim)
		}
		if m.Blocks != h.Blocks {
			t.Errorf("%s: blocks %d through the mount, %d on the host", name, m.Blocks, h.Blocks)
		}
		if e.Opts.HostInodes && m.Ino != h.Ino {
			t.Errorf("%s: ino %d through the mount, %d on the host", name, m.Ino, h.Ino)
		}
		if m.Dev != e.MountDev {
			t.Errorf("%s: st_dev %d, the mount's root has %d", name, m.Dev, e.MountDev)
		}
	}
	m := lstat(t, e.M("f"))
	if m.Atim != unix.NsecToTimespec(at.UnixNano()) {
		t.Errorf("atime %v through the mount, want %v", m.Atim, at)
	}
}

// getattrStableIno: st_ino stays the same across repeated lookups, opens
// and a cache drop of the dentry (unlink of another name), and differs
// between files.
func getattrStableIno(t *testing.T, e *Env) {
	writeFile(t, e.M("a"), "a", 0o644)
	writeFile(t, e.M("b"), "b", 0o644)
	a1, b1 := lstat(t, e.M("a")), lstat(t, e.M("b"))
	if a1.Ino == b1.Ino {
		t.Errorf("two files share st_ino %d", a1.Ino)
	}
	f, err := os.Open(e.M("a"))
	must(t, "open", err)
	defer f.Close()
	var fst unix.Stat_t
	must(t, "fstat", unix.Fstat(int(f.Fd()), &fst))
	if fst.Ino != a1.Ino || fst.Dev != a1.Dev {
		t.Errorf("fstat (dev,ino) (%d,%d), lstat (%d,%d)", fst.Dev, fst.Ino, a1.Dev, a1.Ino)
	}
	must(t, "rename", os.Rename(e.M("a"), e.M("c")))
	c := lstat(t, e.M("c"))
	if c.Ino != a1.Ino {
		t.Errorf("st_ino changed across rename: %d -> %d", a1.Ino, c.Ino)
	}
}

func lookupENOENT(t *testing.T, e *Env) {
	var st unix.Stat_t
	wantErrno(t, "lstat missing", unix.Lstat(e.M("missing"), &st), unix.ENOENT)
	wantErrno(t, "lstat missing/x", unix.Lstat(e.M("missing/x"), &st), unix.ENOENT)
	writeFile(t, e.M("f"), "", 0o644)
	wantErrno(t, "lstat file/x", unix.Lstat(e.M("f/x"), &st), unix.ENOTDIR)
	long := make([]byte, 256)
	for i := range long {
		long[i] = 'x'
	}
	wantErrno(t, "lstat 256-byte name", unix.Lstat(e.M(string(long)), &st), unix.ENAMETOOLONG)
	if e.HostVisible() {
		// A file appearing on the host after a negative lookup is found
		// once the entry times out; the directory listing shows it at once.
		writeFile(t, e.H("late"), "x", 0o644)
		names, err := readdirnames(e.Dir)
		must(t, "readdir", err)
		if !contains(names, "late") {
			t.Errorf("readdir does not show a file created on the host: %v", names)
		}
	}
}

func setattrChmod(t *testing.T, e *Env) {
	writeFile(t, e.M("f"), "x", 0o644)
	for _, mode := range []uint32{0, 0o600, 0o755, 0o1777, 0o4755, 0o2755} {
		must(t, "chmod", unix.Chmod(e.M("f"), mode))
		if got := lstat(t, e.M("f")).Mode & 0o7777; got != mode {
			t.Errorf("chmod %o: mount shows %o", mode, got)
		}
		if e.HostVisible() {
			if got := lstat(t, e.H("f")).Mode & 0o7777; got != mode {
				t.Errorf("chmod %o: host shows %o", mode, got)
			}
		}
	}
	must(t, "mkdir", unix.Mkdir(e.M("d"), 0o755))
	must(t, "chmod dir", unix.Chmod(e.M("d"), 0o3711))
	if got := lstat(t, e.M("d")).Mode; got != unix.S_IFDIR|0o3711 {
		t.Errorf("dir mode %o, want %o", got, unix.S_IFDIR|0o3711)
	}
	wantErrno(t, "chmod missing", unix.Chmod(e.M("missing"), 0o644), unix.ENOENT)
}

func setattrChown(t *testing.T, e *Env) {
	writeFile(t, e.M("f"), "x", 0o644)
	must(t, "chown", unix.Lchown(e.M("f"), 4321, 8765))
	st := lstat(t, e.M("f"))
	if st.Uid != 4321 || st.Gid != 8765 {
		t.Errorf("mount shows %d:%d, want 4321:8765", st.Uid, st.Gid)
	}
	if e.HostVisible() {
		h := lstat(t, e.H("f"))
		if h.Uid != 4321 || h.Gid != 8765 {
			t.Errorf("host shows %d:%d, want 4321:8765", h.Uid, h.Gid)
		}
	}
	// -1 leaves a field alone.
	must(t, "chown gid only", unix.Lchown(e.M("f"), -1, 42))
	st = lstat(t, e.M("f"))
	if st.Uid != 4321 || st.Gid != 42 {
		t.Errorf("after chown -1:42 mount shows %d:%d", st.Uid, st.Gid)
	}
	// Chown of a symlink changes the link, not its target.
	must(t, "symlink", unix.Symlink("f", e.M("l")))
	must(t, "lchown link", unix.Lchown(e.M("l"), 77, 88))
	if l := lstat(t, e.M("l")); l.Uid != 77 || l.Gid != 88 {
		t.Errorf("link owner %d:%d, want 77:88", l.Uid, l.Gid)
	}
	if f := lstat(t, e.M("f")); f.Uid != 4321 {
		t.Errorf("lchown of the link changed the target's owner to %d", f.Uid)
	}
	// chown by root clears setuid on a regular file, as the host would.
	must(t, "chmod 4755", unix.Chmod(e.M("f"), 0o4755))
	must(t, "chown", unix.Lchown(e.M("f"), 1, 1))
	if m := lstat(t, e.M("f")).Mode; m&unix.S_ISUID != 0 {
		t.Errorf("chown kept setuid: mode %o", m)
	}
}

func setattrTruncate(t *testing.T, e *Env) {
	writeFile(t, e.M("f"), "0123456789", 0o644)
	must(t, "truncate 4", unix.Truncate(e.M("f"), 4))
	wantContent(t, e.M("f"), "0123")
	must(t, "truncate 8", unix.Truncate(e.M("f"), 8))
	wantContent(t, e.M("f"), "0123\x00\x00\x00\x00")
	if e.HostVisible() {
		wantContent(t, e.H("f"), "0123\x00\x00\x00\x00")
	}
	must(t, "truncate 1 GiB", unix.Truncate(e.M("f"), 1<<30))
	if st := lstat(t, e.M("f")); st.Size != 1<<30 {
		t.Errorf("size %d after truncate to 1 GiB", st.Size)
	}
	must(t, "truncate 0", unix.Truncate(e.M("f"), 0))
	wantContent(t, e.M("f"), "")
	must(t, "mkdir", unix.Mkdir(e.M("d"), 0o755))
	wantErrno(t, "truncate dir", unix.Truncate(e.M("d"), 0), unix.EISDIR)
	wantErrno(t, "truncate -1", unix.Truncate(e.M("f"), -1), unix.EINVAL)
}

func setattrUtimens(t *testing.T, e *Env) {
	writeFile(t, e.M("f"), "x", 0o644)
	ts := []unix.Timespec{{Sec: 1111, Nsec: 222}, {Sec: 3333, Nsec: 444}}
	must(t, "utimensat", unix.UtimesNanoAt(unix.AT_FDCWD, e.M("f"), ts, unix.AT_SYMLINK_NOFOLLOW))
	st := lstat(t, e.M("f"))
	if st.Atim != ts[0] || st.Mtim != ts[1] {
		t.Errorf("times (%v, %v), want (%v, %v)", st.Atim, st.Mtim, ts[0], ts[1])
	}
	if e.HostVisible() {
		h := lstat(t, e.H("f"))
		if h.Atim != ts[0] || h.Mtim != ts[1] {
			t.Errorf("host times (%v, %v), want (%v, %v)", h.Atim, h.Mtim, ts[0], ts[1])
		}
	}
	// UTIME_OMIT keeps atime, UTIME_NOW sets mtime to now.
	before := time.Now().Add(-2 * time.Second)
	now := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_NOW}}
	must(t, "utimensat UTIME_NOW", unix.UtimesNanoAt(unix.AT_FDCWD, e.M("f"), now, 0))
	st = lstat(t, e.M("f"))
	if st.Atim != ts[0] {
		t.Errorf("UTIME_OMIT changed atime to %v", st.Atim)
	}
	if mt := time.Unix(st.Mtim.Unix()); mt.Before(before) || mt.After(time.Now().Add(2*time.Second)) {
		t.Errorf("UTIME_NOW set mtime to %v, now is %v", mt, time.Now())
	}
	// Symlink times.
	must(t, "symlink", unix.Symlink("f", e.M("l")))
	must(t, "utimensat link", unix.UtimesNanoAt(unix.AT_FDCWD, e.M("l"), ts, unix.AT_SYMLINK_NOFOLLOW))
	if l := lstat(t, e.M("l")); l.Mtim != ts[1] {
		t.Errorf("link mtime %v, want %v", l.Mtim, ts[1])
	}
}

// setattrOnFd: fchmod/fchown/ftruncate/futimens act on the open file, even
// when its mode no longer lets the caller open it, and even after unlink.
func setattrOnFd(t *testing.T, e *Env) {
	f, err := os.OpenFile(e.M("f"), os.O_CREATE|os.O_RDWR, 0o644)
	must(t, "create", err)
	defer f.Close()
	fd := int(f.Fd())
	_, err = f.WriteString("0123456789")
	must(t, "write", err)
	must(t, "ftruncate", unix.Ftruncate(fd, 3))
	wantContent(t, e.M("f"), "012")
	must(t, "fchmod", unix.Fchmod(fd, 0o600))
	must(t, "fchown", unix.Fchown(fd, 99, 98))
	ts := []unix.Timespec{{Sec: 5, Nsec: 6}, {Sec: 7, Nsec: 8}}
	must(t, "futimens", unix.UtimesNanoAt(fd, "", ts, unix.AT_EMPTY_PATH))
	var st unix.Stat_t
	must(t, "fstat", unix.Fstat(fd, &st))
	if st.Size != 3 || st.Mode&0o7777 != 0o600 || st.Uid != 99 || st.Gid != 98 || st.Mtim != ts[1] {
		t.Errorf("fstat after f* calls: size %d mode %o owner %d:%d mtime %v", st.Size, st.Mode, st.Uid, st.Gid, st.Mtim)
	}
	// On an unlinked file the fd is the only way to name it.
	must(t, "unlink", unix.Unlink(e.M("f")))
	must(t, "ftruncate unlinked", unix.Ftruncate(fd, 7))
	must(t, "fchmod unlinked", unix.Fchmod(fd, 0o640))
	must(t, "fstat unlinked", unix.Fstat(fd, &st))
	if st.Size != 7 || st.Mode&0o7777 != 0o640 || st.Nlink != 0 {
		t.Errorf("unlinked file: size %d mode %o nlink %d, want 7 640 0", st.Size, st.Mode, st.Nlink)
	}
	// A non-root owner can ftruncate through a writable fd after making the
	// file read-only: the request names the open file.
	c := e.nonRoot()
	steps := []Step{
		{Op: "open", Path: e.M("g"), Flags: unix.O_CREAT | unix.O_RDWR, Mode: 0o644},
		{Op: "fchmod", Mode: 0o400},
		{Op: "ftruncate", Len: 100},
		{Op: "write", Data: "abc", Off: 10},
		{Op: "fstat"},
	}
	must(t, "chmod case dir", unix.Chmod(e.Dir, 0o777))
	res := runAs(t, c, steps...)
	wantOK(t, steps, res)
	if st := lstat(t, e.M("g")); st.Size != 100 || st.Mode&0o777 != 0o400 {
		t.Errorf("g: size %d mode %o, want 100 400", st.Size, st.Mode)
	}
}

func readdirnames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}
