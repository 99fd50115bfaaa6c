package passthrough

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"unsafe"

	"github.com/govirtiofsd/govirtiofsd/internal/engine"
	"github.com/govirtiofsd/govirtiofsd/internal/inode"
	"github.com/govirtiofsd/govirtiofsd/internal/nodestore"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// FUSE opcodes used by the wire tests (include/uapi/linux/fuse.h).
const (
	opLookup   = 1
	opGetattr  = 3
	opMkdir    = 9
	opUnlink   = 10
	opOpen     = 14
	opRead     = 15
	opWrite    = 16
	opRelease  = 18
	opInit     = 26
	opReaddir  = 28
	opCreate   = 35
	opBatchFgt = 42
)

// wireServer is the file system behind an engine, driven with raw request
// bytes as a hostile guest would send them.
type wireServer struct {
	t      *testing.T
	dir    string
	eng    *engine.Engine
	table  *inode.Table
	unique uint64
}

func newWireServer(t *testing.T) *wireServer {
	t.Helper()
	dir := t.TempDir()
	table, err := inode.New(dir, nodestore.OpenMemory(), inode.Options{MaxOpenFDs: 16})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { table.Close() })
	fsys := New(table, Options{Cache: CacheAuto, AnnounceSubmounts: true})
	s := &wireServer{t: t, dir: dir, eng: engine.New(fsys, engine.Options{}), table: table}
	in := fuse.InitIn{Major: 7, Minor: 31, MaxReadAhead: 1 << 20, Flags: fuse.CAP_EXPORT_SUPPORT | fuse.CAP_READDIRPLUS}
	if st, _ := s.call(opInit, 0, structBytes(&in)[unsafe.Sizeof(fuse.InHeader{}):]); st != 0 {
		t.Fatalf("INIT: status %d", st)
	}
	return s
}

func structBytes[T any](v *T) []byte {
	return append([]byte(nil), unsafe.Slice((*byte)(unsafe.Pointer(v)), unsafe.Sizeof(*v))...)
}

// call sends one request and returns the reply's errno (positive) and
// payload.
func (s *wireServer) call(op uint32, nodeid uint64, body []byte) (int32, []byte) {
	s.unique++
	h := fuse.InHeader{Opcode: op, Unique: s.unique, NodeId: nodeid}
	h.Length = uint32(unsafe.Sizeof(h)) + uint32(len(body))
	req := append(structBytes(&h), body...)
	out := make([]byte, 1<<20+4096)
	n, st := s.eng.HandleRequest([][]byte{req}, [][]byte{out})
	if !st.Ok() {
		return int32(st), nil
	}
	if n == 0 {
		return 0, nil
	}
	if n < 16 {
		s.t.Fatalf("op %d: reply of %d bytes", op, n)
	}
	if got := binary.LittleEndian.Uint32(out); int(got) != n {
		s.t.Fatalf("op %d: header length %d, reply %d bytes", op, got, n)
	}
	if u := binary.LittleEndian.Uint64(out[8:]); u != s.unique {
		s.t.Fatalf("op %d: reply unique %d, want %d", op, u, s.unique)
	}
	return -int32(binary.LittleEndian.Uint32(out[4:])), out[16:n]
}

func name(s string) []byte { return append([]byte(s), 0) }

func TestUnknownNodeidIsStale(t *testing.T) {
	s := newWireServer(t)
	for _, op := range []uint32{opGetattr, opOpen} {
		body := make([]byte, 16)
		if st, _ := s.call(op, 987654, body); st != int32(syscall.ESTALE) {
			t.Errorf("op %d on unknown nodeid: errno %d, want ESTALE", op, st)
		}
	}
	if st, _ := s.call(opLookup, 987654, name("x")); st != int32(syscall.ESTALE) {
		t.Errorf("LOOKUP in unknown nodeid: errno %d, want ESTALE", st)
	}
}

func TestUnknownFileHandleIsEBADF(t *testing.T) {
	s := newWireServer(t)
	in := fuse.ReadIn{Fh: 4242, Size: 4096}
	if st, _ := s.call(opRead, 1, structBytes(&in)[unsafe.Sizeof(fuse.InHeader{}):]); st != int32(syscall.EBADF) {
		t.Errorf("READ with unknown fh: errno %d, want EBADF", st)
	}
	w := fuse.WriteIn{Fh: 4242, Size: 3}
	body := append(structBytes(&w)[unsafe.Sizeof(fuse.InHeader{}):], 'a', 'b', 'c')
	if st, _ := s.call(opWrite, 1, body); st != int32(syscall.EBADF) {
		t.Errorf("WRITE with unknown fh: errno %d, want EBADF", st)
	}
}

func TestHostileNames(t *testing.T) {
	s := newWireServer(t)
	if err := os.WriteFile(filepath.Join(filepath.Dir(s.dir), "outside-"+filepath.Base(s.dir)), []byte("secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	mk := func(n string) []byte {
		in := fuse.MkdirIn{Mode: 0o755}
		return append(structBytes(&in)[unsafe.Sizeof(fuse.InHeader{}):], name(n)...)
	}
	for _, tc := range []struct {
		op   uint32
		body []byte
		want syscall.Errno
	}{
		{opLookup, name("a/b"), syscall.EINVAL},
		{opLookup, name("../outside-" + filepath.Base(s.dir)), syscall.EINVAL},
		{opLookup, name(""), syscall.EINVAL},
		{opMkdir, mk(".."), syscall.EEXIST},
		{opMkdir, mk("."), syscall.EEXIST},
		{opMkdir, mk("x/y"), syscall.EINVAL},
		{opUnlink, name("../x"), syscall.EINVAL},
	} {
		if st, _ := s.call(tc.op, 1, tc.body); st != int32(tc.want) {
			t.Errorf("op %d %q: errno %d, want %d", tc.op, tc.body, st, tc.want)
		}
	}
	// ".." of the shared directory is the shared directory.
	st, out := s.call(opLookup, 1, name(".."))
	if st != 0 {
		t.Fatalf("LOOKUP ..: errno %d", st)
	}
	e := (*fuse.EntryOut)(unsafe.Pointer(&out[0]))
	if e.NodeId != 1 {
		t.Errorf("LOOKUP .. at the root gave nodeid %d, want 1", e.NodeId)
	}
}

func TestExportLookupAfterForget(t *testing.T) {
	s := newWireServer(t)
	if err := os.MkdirAll(filepath.Join(s.dir, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(s.dir, "d", "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	lookup := func(parent uint64, n string) fuse.EntryOut {
		t.Helper()
		st, out := s.call(opLookup, parent, name(n))
		if st != 0 {
			t.Fatalf("LOOKUP %d/%s: errno %d", parent, n, st)
		}
		return *(*fuse.EntryOut)(unsafe.Pointer(&out[0]))
	}
	d := lookup(1, "d")
	f := lookup(d.NodeId, "f")
	// The kernel forgets both; then decodes a file handle of f.
	type forgetOne struct{ nodeid, nlookup uint64 }
	var body bytes.Buffer
	binary.Write(&body, binary.LittleEndian, [2]uint32{2, 0})
	binary.Write(&body, binary.LittleEndian, []forgetOne{{d.NodeId, 1}, {f.NodeId, 1}})
	s.call(opBatchFgt, 0, body.Bytes())
	// Push them out of the fd cache too.
	for i := range 40 {
		os.WriteFile(filepath.Join(s.dir, "filler"+string(rune('a'+i%26))+string(rune('a'+i/26))), nil, 0o644)
		lookup(1, "filler"+string(rune('a'+i%26))+string(rune('a'+i/26)))
	}
	self := lookup(f.NodeId, ".")
	if self.NodeId != f.NodeId || self.Generation != f.Generation || self.Attr.Ino != f.Attr.Ino {
		t.Errorf("LOOKUP(f, .) = %d/%d ino %d, want %d/%d ino %d", self.NodeId, self.Generation, self.Attr.Ino, f.NodeId, f.Generation, f.Attr.Ino)
	}
	parent := lookup(d.NodeId, "..")
	if parent.NodeId != 1 {
		t.Errorf("LOOKUP(d, ..) = %d, want 1", parent.NodeId)
	}
	if st, _ := s.call(opLookup, f.NodeId+1000, name(".")); st != int32(syscall.ESTALE) {
		t.Errorf("LOOKUP(forged, .): errno %d, want ESTALE", st)
	}
}
