package checks

import (
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// WalkLayout is how the host lays out n files for the walk: WalkDirs(n)
// directories d000.. with up to WalkPerDir files f00000.. each.
const WalkPerDir = 1000

// WalkDirs returns the number of directories the walk fixture uses for n files.
func WalkDirs(n int) int { return (n + WalkPerDir - 1) / WalkPerDir }

// Walk walks the tree under dir as find(1) would (readdir, then lstat every
// entry, descending into directories) and checks that it finds exactly want
// regular files with want distinct (st_dev, st_ino) pairs and no error.
// A daemon that runs out of file descriptors makes lookups fail, which the
// guest sees as missing files or errors here.
//
// Result: "walk".
func Walk(dir string, want int) Result {
	type key struct{ dev, ino uint64 }
	seen := make(map[key]struct{}, want)
	files, dirs, errs := 0, 0, 0
	var firstErr string
	note := func(p string, err error) {
		errs++
		if firstErr == "" {
			firstErr = p + ": " + errName(unwrap(err))
		}
	}
	var walk func(string)
	walk = func(d string) {
		f, err := os.Open(d)
		if err != nil {
			note(d, err)
			return
		}
		var subdirs []string
		for {
			names, err := f.Readdirnames(1024)
			for _, n := range names {
				p := filepath.Join(d, n)
				var st unix.Stat_t
				if err := unix.Lstat(p, &st); err != nil {
					note(p, err)
					continue
				}
				switch st.Mode & unix.S_IFMT {
				case unix.S_IFREG:
					files++
					seen[key{st.Dev, st.Ino}] = struct{}{}
				case unix.S_IFDIR:
					subdirs = append(subdirs, p)
				}
			}
			if err == io.EOF || (err == nil && len(names) == 0) {
				break
			}
			if err != nil {
				note(d, err)
				break
			}
		}
		f.Close()
		for _, s := range subdirs {
			dirs++
			walk(s)
		}
	}
	walk(dir)
	r := Result{Check: "walk"}
	r.Detail = "found " + itoa(uint64(files)) + " of " + itoa(uint64(want)) + " files in " + itoa(uint64(dirs)) +
		" dirs, " + itoa(uint64(len(seen))) + " distinct (st_dev,st_ino), " + itoa(uint64(errs)) + " errors"
	if firstErr != "" {
		r.Detail += " (first: " + firstErr + ")"
	}
	if files == want && len(seen) == want && errs == 0 {
		r.Status = Pass
	} else {
		r.Status = Fail
	}
	return r
}

func unwrap(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}
