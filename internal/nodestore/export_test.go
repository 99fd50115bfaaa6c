package nodestore

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var exportTestKey = bytes.Repeat([]byte{0x5a}, 32)

// fillForExport gives s mounts, records (some long, some deleted) and
// returns the live ones.
func fillForExport(t *testing.T, s Store) []Record {
	s.PutMount(MountRecord{Path: "", Dev: 1, FSID: [2]int32{3, 4}})
	s.PutMount(MountRecord{Path: "sub/dir", Dev: 2})
	var live []Record
	for i := 0; i < 3000; i++ {
		r := rec(uint32(i%2), uint64(i), 1, strings.Repeat("n", 1+i%250))
		var err error
		if r.ID, err = s.Insert(r); err != nil {
			t.Fatal(err)
		}
		if i%7 == 3 {
			if err := s.Delete(r.ID); err != nil {
				t.Fatal(err)
			}
			continue
		}
		live = append(live, r)
	}
	return live
}

func TestExportImport(t *testing.T) {
	for _, c := range constructors() {
		for _, target := range []string{"memory", "disk"} {
			t.Run(c.name+"-to-"+target, func(t *testing.T) {
				src := c.open(t)
				defer src.Close()
				live := fillForExport(t, src)
				var buf bytes.Buffer
				if err := Export(src, &buf, exportTestKey); err != nil {
					t.Fatal(err)
				}
				dir := ""
				if target == "disk" {
					dir = filepath.Join(t.TempDir(), "imported")
				}
				dst, err := Import(bytes.NewReader(buf.Bytes()), exportTestKey, dir, Options{Logger: quietLogger()})
				if err != nil {
					t.Fatal(err)
				}
				defer dst.Close()
				if dst.Generation() != src.Generation() {
					t.Fatalf("generation %x, want %x", dst.Generation(), src.Generation())
				}
				ms1, _ := src.Mounts()
				ms2, _ := dst.Mounts()
				if len(ms1) != 2 || len(ms2) != 2 || ms1[0] != ms2[0] || ms1[1] != ms2[1] {
					t.Fatalf("mounts %+v, want %+v", ms2, ms1)
				}
				var maxID NodeID
				for _, r := range live {
					mustGet(t, dst, r)
					if got, err := dst.ByIno(r.Mount, r.Ino); err != nil || got.ID != r.ID {
						t.Fatalf("ByIno after import: %+v %v", got, err)
					}
					maxID = max(maxID, r.ID)
				}
				if _, err := dst.Get(4); !errors.Is(err, ErrNotFound) {
					t.Fatalf("deleted record imported: %v", err)
				}
				next, _ := src.Insert(rec(5, 5, 1, "src"))
				id, err := dst.Insert(rec(5, 5, 1, "dst"))
				if err != nil || id < next {
					t.Fatalf("Insert after import = %d %v; the source is at %d", id, err, next)
				}
			})
		}
	}
}

func TestImportRefusesBadStreams(t *testing.T) {
	src := OpenMemory()
	fillForExport(t, src)
	var buf bytes.Buffer
	if err := Export(src, &buf, exportTestKey); err != nil {
		t.Fatal(err)
	}
	good := buf.Bytes()
	flipped := bytes.Clone(good)
	flipped[len(flipped)/2] ^= 1
	cases := map[string]struct {
		b   []byte
		key []byte
	}{
		"wrong-key": {good, bytes.Repeat([]byte{1}, 32)},
		"truncated": {good[:len(good)-5], exportTestKey},
		"cut":       {good[:len(good)/3], exportTestKey},
		"flipped":   {flipped, exportTestKey},
		"empty":     {nil, exportTestKey},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			for _, target := range []string{"", "disk"} {
				dir := ""
				if target != "" {
					dir = filepath.Join(t.TempDir(), "imported")
				}
				s, err := Import(bytes.NewReader(c.b), c.key, dir, Options{Logger: quietLogger()})
				if !errors.Is(err, ErrBadStream) {
					if s != nil {
						s.Close()
					}
					t.Fatalf("Import(%s, %q): %v", name, dir, err)
				}
				if dir != "" {
					for _, p := range []string{dir, dir + ".import"} {
						if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
							t.Fatalf("failed import left %s behind (%v)", p, err)
						}
					}
				}
			}
		})
	}
}

func FuzzImport(f *testing.F) {
	src := OpenMemory()
	src.PutMount(MountRecord{Path: "a", Dev: 1})
	src.Insert(rec(0, 1, 0, "x"))
	var buf bytes.Buffer
	Export(src, &buf, exportTestKey)
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		if s, err := Import(bytes.NewReader(b), exportTestKey, "", Options{}); err == nil {
			s.Close()
		}
	})
}
