package guest

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/govirtiofsd/govirtiofsd/tests/guest/checks"
)

// Fixtures is the shared directory a Run prepares on the host. Its layout
// matches what init.sh and the checks expect:
//
//	posix/           empty; posixtest makes posix/<case>
//	ident/a, ident/b two tmpfs mounts, each holding a file f with the same st_ino
//	handles/file, handles/dir/entry
//	walk/dNNN/fNNNNN WalkFiles regular files
//	reboot/          token written by the guest
type Fixtures struct {
	Root   string
	mounts []string
}

// PrepareFixtures fills root (an empty directory) for the given checks.
// walkFiles is the number of files for the walk.
func PrepareFixtures(root string, checkSet map[string]bool, walkFiles int) (*Fixtures, error) {
	f := &Fixtures{Root: root}
	mk := func(p string) error { return os.MkdirAll(filepath.Join(root, p), 0o755) }
	for _, d := range []string{"posix", "reboot", "handles/dir", "walk"} {
		if err := mk(d); err != nil {
			return f, err
		}
	}
	if err := os.WriteFile(filepath.Join(root, "handles", checks.HandleFile), []byte(checks.HandleFileContent), 0o644); err != nil {
		return f, err
	}
	if err := os.WriteFile(filepath.Join(root, "handles", checks.HandleDir, checks.HandleDirEntry), nil, 0o644); err != nil {
		return f, err
	}
	if checkSet["identity"] {
		if err := f.prepareIdentity(); err != nil {
			return f, err
		}
	}
	if checkSet["walk"] {
		if err := MakeWalkTree(filepath.Join(root, "walk"), walkFiles); err != nil {
			return f, err
		}
	}
	return f, nil
}

// prepareIdentity mounts a tmpfs on ident/a and ident/b and writes a file f in
// each. Fresh tmpfs instances number their inodes from the same start, so
// the two files collide in st_ino; that is verified here, because a check
// that could not fail would prove nothing.
func (f *Fixtures) prepareIdentity() error {
	var st [2]unix.Stat_t
	for i, rel := range checks.IdentityFiles {
		d := filepath.Join(f.Root, "ident", filepath.Dir(rel))
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		if err := unix.Mount("tmpfs", d, "tmpfs", 0, "size=1m,mode=755"); err != nil {
			return fmt.Errorf("mount tmpfs on %s: %w", d, err)
		}
		f.mounts = append(f.mounts, d)
		p := filepath.Join(f.Root, "ident", rel)
		if err := os.WriteFile(p, []byte(checks.IdentityContent(i)), 0o644); err != nil {
			return err
		}
		if err := unix.Lstat(p, &st[i]); err != nil {
			return err
		}
	}
	if st[0].Ino != st[1].Ino || st[0].Dev == st[1].Dev {
		return fmt.Errorf("identity fixture: host files do not collide in st_ino (dev %d ino %d vs dev %d ino %d)",
			st[0].Dev, st[0].Ino, st[1].Dev, st[1].Ino)
	}
	return nil
}

// MakeWalkTree creates n empty regular files under dir, checks.WalkPerDir
// per subdirectory.
func MakeWalkTree(dir string, n int) error {
	for d := 0; d < checks.WalkDirs(n); d++ {
		sub := filepath.Join(dir, fmt.Sprintf("d%03d", d))
		if err := os.MkdirAll(sub, 0o755); err != nil {
			return err
		}
		for i := d * checks.WalkPerDir; i < n && i < (d+1)*checks.WalkPerDir; i++ {
			fd, err := unix.Open(filepath.Join(sub, fmt.Sprintf("f%05d", i)), unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
			if err != nil {
				return err
			}
			unix.Close(fd)
		}
	}
	return nil
}

// Cleanup unmounts the tmpfs mounts and removes the tree.
func (f *Fixtures) Cleanup() error {
	var first error
	for i := len(f.mounts) - 1; i >= 0; i-- {
		if err := unix.Unmount(f.mounts[i], unix.MNT_DETACH); err != nil && first == nil {
			first = fmt.Errorf("unmount %s: %w", f.mounts[i], err)
		}
	}
	f.mounts = nil
	if err := os.RemoveAll(f.Root); err != nil && first == nil {
		first = err
	}
	return first
}
