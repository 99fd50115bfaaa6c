package inode

import (
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

func cString(p *byte) string {
	b := unsafe.Slice(p, len(nameBuf{}))
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

func TestProcNames(t *testing.T) {
	for _, fd := range []int{0, 7, 10, 99, 123456, 1<<31 - 1} {
		var b nameBuf
		if got, want := cString(b.setFD(fd)), fmt.Sprint(fd); got != want {
			t.Errorf("setFD(%d) = %q", fd, got)
		}
		if got, want := cString(b.setProc(fd)), fmt.Sprint("/proc/self/fd/", fd); got != want {
			t.Errorf("setProc(%d) = %q, want %q", fd, got, want)
		}
	}
}

// opath opens p with O_PATH|O_NOFOLLOW, as the node table does.
func opath(t *testing.T, p string) int {
	t.Helper()
	fd, err := unix.Open(p, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func sameFile(t *testing.T, a, b int) {
	t.Helper()
	var sa, sb unix.Stat_t
	if err := unix.Fstat(a, &sa); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fstat(b, &sb); err != nil {
		t.Fatal(err)
	}
	if sa.Dev != sb.Dev || sa.Ino != sb.Ino {
		t.Errorf("reopened fd is inode %d, want %d", sb.Ino, sa.Ino)
	}
}

// Reopen gives a real open file of the O_PATH fd's file, through the
// cached /proc/self/fd and through the absolute path alike.
func TestReopen(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "f")
	os.WriteFile(f, []byte("contents"), 0o644)
	pfd := opath(t, f)
	for _, viaDir := range []bool{true, false} {
		t.Run(fmt.Sprint("procSelfFD=", viaDir), func(t *testing.T) {
			var fd int
			var err error
			if viaDir {
				fd, err = Reopen(pfd, unix.O_RDONLY|unix.O_CLOEXEC)
			} else {
				var b nameBuf
				fd, err = unix.Open(cString(b.setProc(pfd)), unix.O_RDONLY|unix.O_CLOEXEC, 0)
			}
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			sameFile(t, pfd, fd)
			buf := make([]byte, 16)
			if n, err := unix.Read(fd, buf); err != nil || string(buf[:n]) != "contents" {
				t.Errorf("read: %q, %v", buf[:n], err)
			}
		})
	}
	if _, err := Reopen(1<<20, unix.O_RDONLY); err == nil {
		t.Errorf("Reopen of a closed fd succeeded")
	}
}

// ReopenDir opens the directory itself, also one removed meanwhile, and
// refuses a non-directory.
func TestReopenDir(t *testing.T) {
	base := t.TempDir()
	d := filepath.Join(base, "d")
	os.Mkdir(d, 0o755)
	os.WriteFile(filepath.Join(d, "entry"), nil, 0o644)
	pfd := opath(t, d)
	fd, err := ReopenDir(pfd, unix.O_RDONLY|unix.O_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	sameFile(t, pfd, fd)
	buf := make([]byte, 4096)
	n, err := unix.Getdents(fd, buf)
	unix.Close(fd)
	if err != nil || n == 0 {
		t.Errorf("getdents: %d, %v", n, err)
	}
	_, _, names := unix.ParseDirent(buf[:n], -1, nil)
	if len(names) != 1 || names[0] != "entry" {
		t.Errorf("entries %q, want [entry]", names)
	}

	os.Remove(filepath.Join(d, "entry"))
	if err := os.Remove(d); err != nil {
		t.Fatal(err)
	}
	if fd, err := ReopenDir(pfd, unix.O_RDONLY|unix.O_CLOEXEC); err != nil {
		t.Errorf("reopen of a removed directory: %v", err)
	} else {
		unix.Close(fd)
	}

	f := filepath.Join(base, "f")
	os.WriteFile(f, nil, 0o644)
	if fd, err := ReopenDir(opath(t, f), unix.O_RDONLY|unix.O_CLOEXEC); err == nil {
		unix.Close(fd)
		t.Errorf("ReopenDir of a regular file succeeded")
	}
}

// setFlag sets a kernel-feature flag (noFchmodat2, noXattrat) for the
// test, so both the new syscall and its fallback are exercised, and puts it
// back at cleanup.
func setFlag(t *testing.T, flag *atomic.Bool, v bool) {
	old := flag.Load()
	flag.Store(v)
	t.Cleanup(func() { flag.Store(old) })
}

// Fchmod changes the mode of the fd's file, with fchmodat2 and through
// the magic link.
func TestFchmod(t *testing.T) {
	for _, legacy := range []bool{false, true} {
		t.Run(fmt.Sprint("fchmodat2=", !legacy), func(t *testing.T) {
			setFlag(t, &noFchmodat2, legacy)
			f := filepath.Join(t.TempDir(), "f")
			os.WriteFile(f, nil, 0o644)
			if err := Fchmod(opath(t, f), 0o4710); err != nil {
				t.Fatal(err)
			}
			if fi, err := os.Stat(f); err != nil || fi.Mode()&(os.ModePerm|os.ModeSetuid) != 0o710|os.ModeSetuid {
				t.Errorf("mode %v, %v; want -rwx--x--- with setuid", fi.Mode(), err)
			}
		})
	}
}

// LinkProc links the fd's file under a new name, also after the file lost
// its old one.
func TestLinkProc(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "f")
	os.WriteFile(f, []byte("x"), 0o644)
	pfd := opath(t, f)
	dfd := opath(t, dir)
	if err := LinkProc(pfd, dfd, "g"); err != nil {
		t.Fatal(err)
	}
	os.Remove(f)
	if err := LinkProc(pfd, dfd, "h"); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"g", "h"} {
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(dir, n), &st); err != nil || st.Nlink != 2 {
			t.Errorf("%s: nlink %d, %v; want 2", n, st.Nlink, err)
		}
	}
	if err := LinkProc(pfd, dfd, "bad\x00name"); err == nil {
		t.Errorf("a name with a NUL byte was accepted")
	}
}

// The xattr calls reach the O_PATH fd's file through its magic link, with
// the *xattrat calls and through the absolute path alike: set, size, read,
// list, remove, the errors a guest sees (no such attribute, a name too
// long), and a fifo is not opened (the call does not block).
func TestXattrThroughMagicLink(t *testing.T) {
	for _, legacy := range []bool{false, true} {
		t.Run(fmt.Sprint("xattrat=", !legacy), func(t *testing.T) {
			setFlag(t, &noXattrat, legacy)
			dir := t.TempDir()
			f := filepath.Join(dir, "f")
			os.WriteFile(f, nil, 0o644)
			fd := opath(t, f)
			if err := Setxattr(fd, "user.k", []byte("value"), 0); err != nil {
				t.Fatalf("setxattr: %v", err)
			}
			if err := Setxattr(fd, "user.k", []byte("again"), unix.XATTR_CREATE); err != unix.EEXIST {
				t.Errorf("setxattr XATTR_CREATE of an existing attribute: %v, want EEXIST", err)
			}
			if n, err := Getxattr(fd, "user.k", nil); err != nil || n != 5 {
				t.Errorf("getxattr size: %d, %v; want 5", n, err)
			}
			buf := make([]byte, 16)
			if n, err := Getxattr(fd, "user.k", buf); err != nil || string(buf[:n]) != "value" {
				t.Errorf("getxattr: %q, %v", buf[:n], err)
			}
			if _, err := Getxattr(fd, "user.k", buf[:2]); err != unix.ERANGE {
				t.Errorf("getxattr into a short buffer: %v, want ERANGE", err)
			}
			if n, err := Listxattr(fd, buf); err != nil || string(buf[:n]) != "user.k\x00" {
				t.Errorf("listxattr: %q, %v", buf[:n], err)
			}
			if _, err := Getxattr(fd, "user.none", buf); err != unix.ENODATA {
				t.Errorf("getxattr of a missing attribute: %v, want ENODATA", err)
			}
			long := "user." + string(make([]byte, 300))
			for i := 5; i < len(long); i++ {
				long = long[:i] + "x" + long[i+1:]
			}
			if _, err := Getxattr(fd, long, buf); err != unix.ERANGE {
				t.Errorf("getxattr of a 305-byte name: %v, want ERANGE", err)
			}
			if err := Removexattr(fd, "user.k"); err != nil {
				t.Errorf("removexattr: %v", err)
			}
			if err := Removexattr(fd, "user.k"); err != unix.ENODATA {
				t.Errorf("removexattr of a removed attribute: %v, want ENODATA", err)
			}
			if n, err := Listxattr(fd, buf); err != nil || n != 0 {
				t.Errorf("listxattr after remove: %q, %v", buf[:n], err)
			}

			fifo := filepath.Join(dir, "fifo")
			if err := unix.Mkfifo(fifo, 0o644); err != nil {
				t.Fatal(err)
			}
			if _, err := Listxattr(opath(t, fifo), buf); err != nil {
				t.Errorf("listxattr of a fifo: %v", err)
			}
		})
	}
}
