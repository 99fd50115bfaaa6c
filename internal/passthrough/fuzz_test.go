package passthrough

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
)

// FuzzRequest feeds arbitrary request bytes to the engine and the
// passthrough behind it, as a hostile guest could. Every request must get a
// well-formed reply or none (FORGET), never a panic, and must not touch
// anything outside the shared directory.
func FuzzRequest(f *testing.F) {
	hdr := func(op uint32, nodeid uint64, body []byte) []byte {
		b := make([]byte, 40, 40+len(body))
		binary.LittleEndian.PutUint32(b[0:], uint32(40+len(body)))
		binary.LittleEndian.PutUint32(b[4:], op)
		binary.LittleEndian.PutUint64(b[8:], 7)
		binary.LittleEndian.PutUint64(b[16:], nodeid)
		return append(b, body...)
	}
	f.Add(hdr(opLookup, 1, []byte("a\x00")))
	f.Add(hdr(opLookup, 1, []byte("..\x00")))
	f.Add(hdr(opGetattr, 2, make([]byte, 16)))
	f.Add(hdr(opMkdir, 1, append(make([]byte, 8), "x\x00"...)))
	f.Add(hdr(opReaddir, 1, make([]byte, 40)))
	f.Add(hdr(opBatchFgt, 0, []byte{255, 255, 255, 255, 0, 0, 0, 0}))
	f.Add(hdr(opCreate, 1, append(make([]byte, 16), "c\x00"...)))
	// The requests the engine answers without go-fuse's dispatcher.
	f.Add(hdr(opUnlink, 1, []byte("a\x00")))
	f.Add(hdr(opRmdir, 1, []byte("a\x00")))
	f.Add(hdr(opOpen, 1, make([]byte, 8)))
	f.Add(hdr(opOpendir, 1, make([]byte, 8)))
	f.Add(hdr(opRelease, 1, make([]byte, 24)))
	f.Add(hdr(opReleasedir, 1, make([]byte, 24)))
	f.Add(hdr(25, 1, make([]byte, 24))) // FLUSH
	f.Add(hdr(4, 1, make([]byte, 88)))  // SETATTR
	f.Add(hdr(2, 1, make([]byte, 8)))   // FORGET
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, req []byte) {
		s := newWireServer(t)
		outside := filepath.Join(filepath.Dir(s.dir), "fuzz-outside")
		os.WriteFile(filepath.Join(s.dir, "a"), []byte("a"), 0o644)
		out := make([]byte, 1<<20+4096)
		n, _ := s.eng.HandleRequest([][]byte{req}, [][]byte{out})
		if n > 0 {
			if n < 16 || int(binary.LittleEndian.Uint32(out)) != n {
				t.Fatalf("malformed reply: %d bytes, header says %d", n, binary.LittleEndian.Uint32(out))
			}
		}
		if _, err := os.Lstat(outside); err == nil {
			t.Fatalf("request created %s outside the shared directory", outside)
		}
	})
}
