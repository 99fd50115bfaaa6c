package openfiles

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

var key = []byte("0123456789abcdef0123456789abcdef")

func TestResumeAfterReopen(t *testing.T) {
	p := filepath.Join(t.TempDir(), "open-files")
	a, err := Open(p, key, nil)
	if err != nil {
		t.Fatal(err)
	}
	fh1, _ := a.Add(10, 2, File)
	fh2, _ := a.Add(11, 0, Dir)
	fh3, _ := a.Add(12, 1, File)
	a.Remove(fh2)
	// The process dies without closing anything.
	b, err := Open(p, key, nil)
	if err != nil {
		t.Fatal(err)
	}
	if e, ok := b.Resume(fh1, 10); !ok || e.Flags != 2 || e.Kind != File {
		t.Errorf("Resume(fh1) = %+v, %v", e, ok)
	}
	if _, ok := b.Resume(fh2, 11); ok {
		t.Errorf("released fh2 resumed")
	}
	if _, ok := b.Resume(fh3, 99); ok {
		t.Errorf("fh3 resumed for the wrong nodeid")
	}
	fh4, _ := b.Add(13, 0, File)
	if fh4 == fh1 || fh4 == fh3 {
		t.Errorf("new fh %d collides with a live one", fh4)
	}
}

func TestTamperedSlotIgnored(t *testing.T) {
	p := filepath.Join(t.TempDir(), "open-files")
	a, _ := Open(p, key, nil)
	fh, _ := a.Add(10, 0, File)
	fhOther, _ := a.Add(20, 0, File)
	b, _ := os.ReadFile(p)
	b[8] = 77 // point fh at nodeid 77
	os.WriteFile(p, b, 0o600)
	c, _ := Open(p, key, nil)
	if _, ok := c.Resume(fh, 77); ok {
		t.Fatal("tampered slot was resumed")
	}
	if _, ok := c.Resume(fhOther, 20); !ok {
		t.Fatal("intact slot lost")
	}
	d, _ := Open(p, []byte("another key, another daemon....."), nil)
	if _, ok := d.Resume(fhOther, 20); ok {
		t.Fatal("slot sealed with another key was resumed")
	}
}

// BenchmarkAddRemove is the table's share of an OPEN and its RELEASE.
func BenchmarkAddRemove(b *testing.B) {
	t, err := Open(filepath.Join(b.TempDir(), "open-files"), make([]byte, 32), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer t.Close()
	b.ReportAllocs()
	for i := range b.N {
		fh, err := t.Add(uint64(i+2), 0, File)
		if err != nil {
			b.Fatal(err)
		}
		t.Remove(fh)
	}
}

// Entries written through the mapping and, past its end, with pwrite all
// survive the process: a reopen without Close resumes every one, and the
// file has blocks for all it holds (no hole a store could fault on).
func TestManyOpenFilesSurvive(t *testing.T) {
	p := filepath.Join(t.TempDir(), "open-files")
	a, err := Open(p, key, nil)
	if err != nil {
		t.Fatal(err)
	}
	if a.mapped == nil {
		t.Fatal("the file table is not mapped on this filesystem: the test would only cover pwrite")
	}
	n := mappedBytes/slotSize + 100
	fhs := make([]uint64, n)
	for i := range fhs {
		if fhs[i], err = a.Add(uint64(1000+i), uint32(i), File); err != nil {
			t.Fatalf("Add %d: %v", i, err)
		}
	}
	for i := 0; i < n; i += 3 {
		a.Remove(fhs[i])
	}
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 < st.Size {
		t.Errorf("file table of %d bytes has %d bytes of blocks: holes", st.Size, st.Blocks*512)
	}
	b, err := Open(p, key, nil) // a is never closed: the process "died"
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for i, fh := range fhs {
		e, ok := b.Resume(fh, uint64(1000+i))
		if removed := i%3 == 0; ok == removed || (ok && e.Flags != uint32(i)) {
			t.Fatalf("open file %d (fh %d, removed %v): resumed %v as %+v", i, fh, removed, ok, e)
		}
	}
}

// On a full disk an Add fails (ErrNotRecorded, the fh still usable in this
// process) instead of the process dying of SIGBUS on a store to a mapped
// page without blocks; what was recorded before survives.
func TestFullDisk(t *testing.T) {
	mnt := t.TempDir()
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=64k,mode=0700"); err != nil {
		t.Fatalf("mount tmpfs (the tests run as root): %v", err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	p := filepath.Join(mnt, "open-files")
	a, err := Open(p, key, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	// Leave the table less than a page to grow into.
	if err := os.WriteFile(filepath.Join(mnt, "filler"), make([]byte, 60<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	var recorded []uint64
	for i := 0; ; i++ {
		fh, err := a.Add(uint64(i+2), 0, File)
		if err != nil {
			if !errors.Is(err, ErrNotRecorded) || !errors.Is(err, unix.ENOSPC) || fh == 0 {
				t.Fatalf("Add on a full disk: fh %d, %v; want an fh and ErrNotRecorded wrapping ENOSPC", fh, err)
			}
			break
		}
		recorded = append(recorded, fh)
		if i > 1000 {
			t.Fatal("1000 open files recorded on a full 64 KiB tmpfs")
		}
	}
	b, err := Open(p, key, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for i, fh := range recorded {
		if _, ok := b.Resume(fh, uint64(i+2)); !ok {
			t.Errorf("fh %d recorded before the disk filled is lost", fh)
		}
	}
}
