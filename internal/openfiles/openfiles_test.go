package openfiles

import (
	"os"
	"path/filepath"
	"testing"
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
