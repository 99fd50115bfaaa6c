package bench

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Tree parts, generated natively in the shared directory before any peer
// starts, and only when a selected job needs them.
type part int

const (
	partStat    part = 1 << iota // stat/f000000…: Files empty files
	partCreate                   // create/: empty, for create+unlink
	partData                     // data/seq.dat: Size bytes
	partWalk                     // walk/: WalkFiles files, 1000 per directory
	partBigWalk                  // big/: BigWalkFiles files, 1000 per directory
)

const (
	walkFanout = 1000
	ioChunk    = 1 << 20
)

func statName(i int) string { return fmt.Sprintf("f%07d", i) }

// walkLayout returns the number of directories of a walk tree of n files
// (walkFanout files in each, the last one possibly fewer).
func walkLayout(n int) (dirs int) { return (n + walkFanout - 1) / walkFanout }

// generate creates the parts of the tree under shared.
func generate(shared string, parts part, cfg *Config) error {
	if parts&partStat != 0 {
		if err := makeFlat(filepath.Join(shared, "stat"), cfg.Files); err != nil {
			return err
		}
	}
	if parts&partCreate != 0 {
		if err := os.MkdirAll(filepath.Join(shared, "create"), 0o755); err != nil {
			return err
		}
	}
	if parts&partData != 0 {
		if err := os.MkdirAll(filepath.Join(shared, "data"), 0o755); err != nil {
			return err
		}
		if err := writeFile(filepath.Join(shared, "data", "seq.dat"), cfg.Size); err != nil {
			return err
		}
	}
	if parts&partWalk != 0 {
		if err := makeWalk(filepath.Join(shared, "walk"), cfg.WalkFiles); err != nil {
			return err
		}
	}
	if parts&partBigWalk != 0 && cfg.BigWalkFiles > 0 {
		if err := makeWalk(filepath.Join(shared, "big"), cfg.BigWalkFiles); err != nil {
			return err
		}
	}
	return nil
}

func makeFlat(dir string, n int) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	for i := range n {
		fd, err := unix.Openat(dfd, statName(i), unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
		if err != nil {
			return fmt.Errorf("create %s/%s: %w", dir, statName(i), err)
		}
		unix.Close(fd)
	}
	return nil
}

func makeWalk(root string, n int) error {
	for d := range walkLayout(n) {
		k := min(walkFanout, n-d*walkFanout)
		if err := makeFlat(filepath.Join(root, fmt.Sprintf("d%05d", d)), k); err != nil {
			return err
		}
	}
	return nil
}

// fill writes a recognisable, non-zero pattern: byte i of the file is
// byte(i*7 + i>>12).
func fill(buf []byte, off int64) {
	for i := range buf {
		p := off + int64(i)
		buf[i] = byte(p*7 + p>>12)
	}
}

func writeFile(path string, size int64) error {
	if st, err := os.Stat(path); err == nil && st.Size() == size {
		return nil
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	buf := make([]byte, ioChunk)
	for off := int64(0); off < size; off += int64(len(buf)) {
		b := buf[:min(int64(len(buf)), size-off)]
		fill(b, off)
		if _, err := f.Write(b); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}
