package suite

import (
	"net"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func init() {
	register("symlink_readlink", symlinkReadlink)
	register("mknod_regular", mknodRegular)
	register("mknod_fifo", mknodFifo)
	register("mknod_socket", mknodSocket)
	register("mknod_device", mknodDevice)
	register("statfs", statfsCase)
	register("access", accessCase)
	register("xattr", xattrCase)
	register("xattr_symlink", xattrSymlink)
}

func symlinkReadlink(t *testing.T, e *Env) {
	targets := []string{"plain", "/abs/path", "../up/and/over", strings.Repeat("x", 1000), "with space\nand newline"}
	for i, target := range targets {
		name := e.M("l" + string(rune('0'+i)))
		must(t, "symlink", unix.Symlink(target, name))
		buf := make([]byte, 4096)
		n, err := unix.Readlink(name, buf)
		must(t, "readlink", err)
		if string(buf[:n]) != target {
			t.Errorf("readlink %q, want %q", buf[:n], target)
		}
		st := lstat(t, name)
		if st.Mode&unix.S_IFMT != unix.S_IFLNK || st.Size != int64(len(target)) {
			t.Errorf("lstat of a symlink: mode %o size %d, want a link of size %d", st.Mode, st.Size, len(target))
		}
		if e.HostVisible() {
			h, err := os.Readlink(e.H("l" + string(rune('0'+i))))
			must(t, "host readlink", err)
			if h != target {
				t.Errorf("host readlink %q, want %q", h, target)
			}
		}
	}
	// A symlink made on the host reads back through the mount.
	if e.HostVisible() {
		must(t, "host symlink", os.Symlink("host-target", e.H("hl")))
		if got, err := os.Readlink(e.M("hl")); err != nil || got != "host-target" {
			t.Errorf("readlink of a host-made link: %q %v", got, err)
		}
	}
	// Following a relative link inside the mount.
	writeFile(t, e.M("file"), "content", 0o644)
	must(t, "symlink to file", unix.Symlink("file", e.M("tofile")))
	wantContent(t, e.M("tofile"), "content")
	buf := make([]byte, 10)
	_, err := unix.Readlink(e.M("file"), buf)
	wantErrno(t, "readlink of a regular file", err, unix.EINVAL)
	wantErrno(t, "symlink over existing", unix.Symlink("x", e.M("file")), unix.EEXIST)
	wantErrno(t, "empty symlink target", unix.Symlink("", e.M("empty")), unix.ENOENT)
	must(t, "symlink loop a", unix.Symlink("loopb", e.M("loopa")))
	must(t, "symlink loop b", unix.Symlink("loopa", e.M("loopb")))
	_, err = os.ReadFile(e.M("loopa"))
	wantErrno(t, "open of a symlink loop", err, unix.ELOOP)
}

func mknodRegular(t *testing.T, e *Env) {
	must(t, "mknod S_IFREG", unix.Mknod(e.M("r"), unix.S_IFREG|0o640, 0))
	st := lstat(t, e.M("r"))
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size != 0 {
		t.Errorf("mode %o size %d", st.Mode, st.Size)
	}
	must(t, "write", os.WriteFile(e.M("r"), []byte("data"), 0))
	wantContent(t, e.M("r"), "data")
	wantErrno(t, "mknod existing", unix.Mknod(e.M("r"), unix.S_IFREG|0o640, 0), unix.EEXIST)
}

func mknodFifo(t *testing.T, e *Env) {
	must(t, "mkfifo", unix.Mkfifo(e.M("p"), 0o620))
	st := lstat(t, e.M("p"))
	if st.Mode&unix.S_IFMT != unix.S_IFIFO {
		t.Errorf("mode %o, want a fifo", st.Mode)
	}
	if e.HostVisible() {
		if h := lstat(t, e.H("p")); h.Mode&unix.S_IFMT != unix.S_IFIFO {
			t.Errorf("host mode %o, want a fifo", h.Mode)
		}
	}
	// The fifo works between a reader and a writer through the mount.
	r, err := unix.Open(e.M("p"), unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	must(t, "open fifo for reading", err)
	defer unix.Close(r)
	w, err := unix.Open(e.M("p"), unix.O_WRONLY|unix.O_CLOEXEC, 0)
	must(t, "open fifo for writing", err)
	defer unix.Close(w)
	_, err = unix.Write(w, []byte("through the pipe"))
	must(t, "write fifo", err)
	buf := make([]byte, 64)
	n, err := unix.Read(r, buf)
	must(t, "read fifo", err)
	if string(buf[:n]) != "through the pipe" {
		t.Errorf("fifo carried %q", buf[:n])
	}
}

func mknodSocket(t *testing.T, e *Env) {
	must(t, "mknod S_IFSOCK", unix.Mknod(e.M("s"), unix.S_IFSOCK|0o644, 0))
	if st := lstat(t, e.M("s")); st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		t.Errorf("mode %o, want a socket", st.Mode)
	}
	// bind(2) on a FUSE mount creates the socket node through MKNOD; a
	// connect then talks to the local listener (the kernel keys the
	// socket on the inode).
	l, err := net.Listen("unix", e.M("bound"))
	must(t, "bind a unix socket in the mount", err)
	defer l.Close()
	if st := lstat(t, e.M("bound")); st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		t.Errorf("bound socket mode %o", st.Mode)
	}
	go func() {
		c, err := l.Accept()
		if err == nil {
			c.Write([]byte("hi"))
			c.Close()
		}
	}()
	c, err := net.Dial("unix", e.M("bound"))
	must(t, "connect", err)
	buf := make([]byte, 2)
	_, err = c.Read(buf)
	c.Close()
	if err != nil || string(buf) != "hi" {
		t.Errorf("socket exchange: %q %v", buf, err)
	}
}

func mknodDevice(t *testing.T, e *Env) {
	dev := int(unix.Mkdev(1, 3)) // like /dev/null
	must(t, "mknod S_IFCHR", unix.Mknod(e.M("null"), unix.S_IFCHR|0o666, dev))
	st := lstat(t, e.M("null"))
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != uint64(dev) {
		t.Errorf("mode %o rdev %x, want a char device %x", st.Mode, st.Rdev, dev)
	}
	if e.HostVisible() {
		if h := lstat(t, e.H("null")); h.Mode&unix.S_IFMT != unix.S_IFCHR || h.Rdev != uint64(dev) {
			t.Errorf("host: mode %o rdev %x", h.Mode, h.Rdev)
		}
	}
	blk := int(unix.Mkdev(7, 200))
	must(t, "mknod S_IFBLK", unix.Mknod(e.M("blk"), unix.S_IFBLK|0o600, blk))
	if st := lstat(t, e.M("blk")); st.Mode&unix.S_IFMT != unix.S_IFBLK || st.Rdev != uint64(blk) {
		t.Errorf("block device: mode %o rdev %x", st.Mode, st.Rdev)
	}
	// The device node opens the local device (the kernel, not the server,
	// drives it): writing to a null device succeeds and reads EOF.
	if err := os.WriteFile(e.M("null"), []byte("discarded"), 0); err != nil {
		// A mount with nodev refuses; that is a valid policy.
		wantErrno(t, "open device node", err, unix.EACCES, unix.EPERM)
	} else if b, err := os.ReadFile(e.M("null")); err != nil || len(b) != 0 {
		t.Errorf("read of a null device node: %q %v", b, err)
	}
	// A non-root caller cannot make devices.
	must(t, "chmod case dir", unix.Chmod(e.Dir, 0o777))
	steps := []Step{{Op: "mknod", Path: e.M("userdev"), Mode: unix.S_IFCHR | 0o666, Dev: dev}}
	res := runAs(t, e.nonRoot(), steps...)
	if res[0].Err != "EPERM" {
		t.Errorf("mknod of a device by uid %d: %q, want EPERM", e.Opts.UID, res[0].Err)
	}
}

func statfsCase(t *testing.T, e *Env) {
	var m unix.Statfs_t
	must(t, "statfs mount", unix.Statfs(e.Dir, &m))
	if m.Bsize == 0 || m.Blocks == 0 || m.Namelen == 0 {
		t.Fatalf("statfs through the mount: bsize %d blocks %d namelen %d", m.Bsize, m.Blocks, m.Namelen)
	}
	if !e.HostVisible() {
		return
	}
	var h unix.Statfs_t
	must(t, "statfs host", unix.Statfs(e.Host, &h))
	if uint64(m.Blocks)*uint64(m.Frsize) != uint64(h.Blocks)*uint64(h.Frsize) {
		t.Errorf("total bytes %d through the mount, %d on the host", uint64(m.Blocks)*uint64(m.Frsize), uint64(h.Blocks)*uint64(h.Frsize))
	}
	if m.Files != h.Files {
		t.Errorf("f_files %d through the mount, %d on the host", m.Files, h.Files)
	}
	if m.Namelen != h.Namelen {
		t.Errorf("f_namelen %d through the mount, %d on the host", m.Namelen, h.Namelen)
	}
	// Free space moves as others use the disk; allow 1% of the total.
	mf, hf := int64(m.Bfree)*m.Frsize, int64(h.Bfree)*h.Frsize
	tol := int64(h.Blocks) * h.Frsize / 100
	if d := mf - hf; d > tol || d < -tol {
		t.Errorf("free bytes %d through the mount, %d on the host", mf, hf)
	}
	if m.Type != 0x65735546 {
		t.Errorf("f_type %#x, want FUSE_SUPER_MAGIC", m.Type)
	}
}

func accessCase(t *testing.T, e *Env) {
	writeFile(t, e.M("rw"), "", 0o644)
	writeFile(t, e.M("x"), "", 0o755)
	writeFile(t, e.M("none"), "", 0o000)
	for _, c := range []struct {
		name string
		mode uint32
		want unix.Errno
	}{
		{"rw", unix.F_OK, 0},
		{"rw", unix.R_OK | unix.W_OK, 0},
		{"rw", unix.X_OK, unix.EACCES}, // root needs an x bit somewhere
		{"x", unix.X_OK, 0},
		{"none", unix.R_OK | unix.W_OK, 0}, // root bypasses rw bits
		{"missing", unix.F_OK, unix.ENOENT},
	} {
		err := unix.Access(e.M(c.name), c.mode)
		if errnoOf(err) != c.want {
			t.Errorf("root access(%s, %d): %s, want %s", c.name, c.mode, errString(err), unix.ErrnoName(c.want))
		}
	}
	// As a non-root caller the mode bits decide.
	steps := []Step{
		{Op: "access", Path: e.M("rw"), Mode: unix.R_OK},
		{Op: "access", Path: e.M("rw"), Mode: unix.W_OK},
		{Op: "access", Path: e.M("x"), Mode: unix.X_OK},
		{Op: "access", Path: e.M("none"), Mode: unix.R_OK},
		{Op: "access", Path: e.M("none"), Mode: unix.F_OK},
	}
	want := []string{"", "EACCES", "", "EACCES", ""}
	res := runAs(t, e.nonRoot(), steps...)
	for i := range steps {
		if res[i].Err != want[i] {
			t.Errorf("uid %d access(%s, %d): %q, want %q", e.Opts.UID, steps[i].Path, steps[i].Mode, res[i].Err, want[i])
		}
	}
}

func xattrCase(t *testing.T, e *Env) {
	writeFile(t, e.M("f"), "", 0o644)
	p := e.M("f")
	if !e.Opts.Xattr {
		wantErrno(t, "setxattr without --xattr", unix.Setxattr(p, "user.a", []byte("v"), 0), unix.EOPNOTSUPP)
		_, err := unix.Getxattr(p, "user.a", make([]byte, 10))
		wantErrno(t, "getxattr without --xattr", err, unix.EOPNOTSUPP, unix.ENODATA)
		_, err = unix.Listxattr(p, make([]byte, 100))
		if err != nil {
			wantErrno(t, "listxattr without --xattr", err, unix.EOPNOTSUPP)
		}
		wantErrno(t, "removexattr without --xattr", unix.Removexattr(p, "user.a"), unix.EOPNOTSUPP, unix.ENODATA)
		return
	}
	must(t, "setxattr", unix.Setxattr(p, "user.a", []byte("value-a"), 0))
	must(t, "setxattr trusted", unix.Setxattr(p, "trusted.b", []byte("value-b"), 0))
	must(t, "setxattr empty value", unix.Setxattr(p, "user.empty", nil, 0))
	buf := make([]byte, 100)
	n, err := unix.Getxattr(p, "user.a", buf)
	must(t, "getxattr", err)
	if string(buf[:n]) != "value-a" {
		t.Errorf("getxattr %q", buf[:n])
	}
	n, err = unix.Getxattr(p, "user.a", nil)
	if err != nil || n != 7 {
		t.Errorf("getxattr size query: %d %v, want 7", n, errString(err))
	}
	_, err = unix.Getxattr(p, "user.a", make([]byte, 3))
	wantErrno(t, "getxattr with a short buffer", err, unix.ERANGE)
	_, err = unix.Getxattr(p, "user.missing", buf)
	wantErrno(t, "getxattr missing", err, unix.ENODATA)
	wantErrno(t, "XATTR_CREATE on existing", unix.Setxattr(p, "user.a", []byte("x"), unix.XATTR_CREATE), unix.EEXIST)
	wantErrno(t, "XATTR_REPLACE on missing", unix.Setxattr(p, "user.new", []byte("x"), unix.XATTR_REPLACE), unix.ENODATA)
	must(t, "XATTR_REPLACE", unix.Setxattr(p, "user.a", []byte("replaced"), unix.XATTR_REPLACE))
	lb := make([]byte, 1000)
	n, err = unix.Listxattr(p, lb)
	must(t, "listxattr", err)
	names := strings.Split(strings.TrimRight(string(lb[:n]), "\x00"), "\x00")
	for _, want := range []string{"user.a", "trusted.b", "user.empty"} {
		if !contains(names, want) {
			t.Errorf("listxattr %q lacks %s", names, want)
		}
	}
	if sz, err := unix.Listxattr(p, nil); err != nil || sz != n {
		t.Errorf("listxattr size query %d %v, want %d", sz, errString(err), n)
	}
	if e.HostVisible() {
		n, err := unix.Getxattr(e.H("f"), "user.a", buf)
		if err != nil || string(buf[:n]) != "replaced" {
			t.Errorf("host getxattr: %q %v", buf[:n], errString(err))
		}
		must(t, "host setxattr", unix.Setxattr(e.H("f"), "user.fromhost", []byte("h"), 0))
		n, err = unix.Getxattr(p, "user.fromhost", buf)
		if err != nil || string(buf[:n]) != "h" {
			t.Errorf("getxattr of a host-set attr: %q %v", buf[:n], errString(err))
		}
	}
	must(t, "removexattr", unix.Removexattr(p, "user.a"))
	_, err = unix.Getxattr(p, "user.a", buf)
	wantErrno(t, "getxattr after remove", err, unix.ENODATA)
	wantErrno(t, "removexattr missing", unix.Removexattr(p, "user.a"), unix.ENODATA)
	must(t, "mkdir", unix.Mkdir(e.M("d"), 0o755))
	must(t, "setxattr dir", unix.Setxattr(e.M("d"), "user.d", []byte("dir"), 0))
	if n, err := unix.Getxattr(e.M("d"), "user.d", buf); err != nil || string(buf[:n]) != "dir" {
		t.Errorf("getxattr on a dir: %q %v", buf[:n], errString(err))
	}
	// A non-root caller cannot write trusted.* nor user.* on a file it
	// cannot write.
	steps := []Step{
		{Op: "setxattr", Path: p, Path2: "trusted.c", Data: "x"},
		{Op: "setxattr", Path: p, Path2: "user.c", Data: "x"},
	}
	res := runAs(t, e.nonRoot(), steps...)
	if res[0].Err != "EPERM" || res[1].Err != "EACCES" {
		t.Errorf("uid %d setxattr trusted.c / user.c: %q / %q, want EPERM / EACCES", e.Opts.UID, res[0].Err, res[1].Err)
	}
}

// xattrSymlink: xattrs on a symlink act on the link itself (trusted.* is
// allowed there, user.* is not), never on its target.
func xattrSymlink(t *testing.T, e *Env) {
	if !e.Opts.Xattr {
		return
	}
	writeFile(t, e.M("f"), "", 0o644)
	must(t, "symlink", unix.Symlink("f", e.M("l")))
	wantErrno(t, "lsetxattr user.* on a symlink", unix.Lsetxattr(e.M("l"), "user.x", []byte("x"), 0), unix.EPERM)
	must(t, "lsetxattr trusted.* on a symlink", unix.Lsetxattr(e.M("l"), "trusted.l", []byte("L"), 0))
	buf := make([]byte, 16)
	if n, err := unix.Lgetxattr(e.M("l"), "trusted.l", buf); err != nil || string(buf[:n]) != "L" {
		t.Errorf("lgetxattr on the link: %q %v", buf[:n], errString(err))
	}
	if _, err := unix.Getxattr(e.M("f"), "trusted.l", buf); errnoOf(err) != unix.ENODATA {
		t.Errorf("lsetxattr on the link reached the target: %v", errString(err))
	}
	if e.HostVisible() {
		if n, err := unix.Lgetxattr(e.H("l"), "trusted.l", buf); err != nil || string(buf[:n]) != "L" {
			t.Errorf("host lgetxattr on the link: %q %v", buf[:n], errString(err))
		}
	}
}
