package checks

import (
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// IdentityFiles are the two files the host puts in dir/a and dir/b, each
// directory being the root of its own tmpfs, so that on the host they have
// the same st_ino (and different st_dev).
var IdentityFiles = [2]string{"a/f", "b/f"}

// IdentityContent is what the host writes into IdentityFiles[i].
func IdentityContent(i int) string { return []string{"identity-a\n", "identity-b\n"}[i] }

// Identity checks that the two files under dir that the host made with
// colliding inode numbers have distinct (st_dev, st_ino) as seen here, and
// that readdir's d_ino agrees with st_ino for each of them.
//
// Results: "identity" (distinct identities) and "identity-dino".
func Identity(dir string) []Result {
	var st [2]unix.Stat_t
	for i, f := range IdentityFiles {
		p := filepath.Join(dir, f)
		b, err := os.ReadFile(p)
		if err != nil {
			return []Result{fail("identity", "read %s: %v", f, err), fail("identity-dino", "not run")}
		}
		if string(b) != IdentityContent(i) {
			return []Result{fail("identity", "%s has content %q, want %q", f, b, IdentityContent(i)), fail("identity-dino", "not run")}
		}
		if err := unix.Lstat(p, &st[i]); err != nil {
			return []Result{fail("identity", "lstat %s: %v", f, err), fail("identity-dino", "not run")}
		}
	}
	desc := func(i int) string {
		return IdentityFiles[i] + " dev=" + itoa(st[i].Dev) + " ino=" + itoa(st[i].Ino)
	}
	var out []Result
	if st[0].Dev == st[1].Dev && st[0].Ino == st[1].Ino {
		out = append(out, fail("identity", "two different files share (st_dev, st_ino): %s; %s", desc(0), desc(1)))
	} else {
		out = append(out, pass("identity", "%s; %s", desc(0), desc(1)))
	}

	// d_ino from the parent directory's listing must be the st_ino.
	for i, f := range IdentityFiles {
		dino, err := direntIno(filepath.Join(dir, filepath.Dir(f)), filepath.Base(f))
		if err != nil {
			return append(out, fail("identity-dino", "readdir %s: %v", filepath.Dir(f), err))
		}
		if dino != st[i].Ino {
			return append(out, fail("identity-dino", "%s: d_ino %d != st_ino %d", f, dino, st[i].Ino))
		}
	}
	return append(out, pass("identity-dino", "d_ino == st_ino for both files"))
}

// direntIno returns the d_ino that getdents64 reports for name in dir.
func direntIno(dir, name string) (uint64, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	var found uint64
	ok := false
	err = readDirents(fd, func(n string, ino uint64, _ uint8) bool {
		if n == name {
			found, ok = ino, true
			return false
		}
		return true
	})
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, unix.ENOENT
	}
	return found, nil
}
