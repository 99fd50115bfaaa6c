package engine

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"reflect"
	"syscall"
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// attrFS answers GETATTR of node 5 with fixed attributes (and says whether
// it saw the fh flag), and ENOENT for any other node.
type attrFS struct {
	fuse.RawFileSystem
	calls *int
}

func (f attrFS) Capabilities() uint64 { return 0 }
func (f attrFS) Negotiated(uint64)    {}
func (f attrFS) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	*f.calls++
	if in.NodeId != 5 {
		return fuse.ENOENT
	}
	out.Ino, out.Size, out.Mode, out.Nlink = 5, 1234, syscall.S_IFREG|0o640, 1
	if in.Flags()&fuse.FUSE_GETATTR_FH != 0 {
		out.Size = in.Fh()
	}
	out.SetTimeout(3e9)
	return fuse.OK
}

func getattrRequest(unique, nodeid uint64, flags uint32, fh uint64) []byte {
	body := make([]byte, 16)
	binary.LittleEndian.PutUint32(body[0:], flags)
	binary.LittleEndian.PutUint64(body[8:], fh)
	b := request(opGetattr, unique, body)
	binary.LittleEndian.PutUint64(b[16:], nodeid)
	return b
}

// split cuts b into pieces of the given lengths (the rest in the last).
func split(b []byte, lens ...int) [][]byte {
	var iov [][]byte
	for _, n := range lens {
		iov, b = append(iov, b[:n:n]), b[n:]
	}
	return append(iov, b)
}

// TestGetattrFastPath: GETATTR answered by the engine itself gives the
// same reply bytes as go-fuse's ProtocolServer, for a request and reply
// in one buffer or split as a virtio-fs guest driver splits them, for
// errors, and for GETATTR_FH; requests of another size go to go-fuse.
func TestGetattrFastPath(t *testing.T) {
	var calls int
	fs := attrFS{fuse.NewDefaultRawFileSystem(), &calls}
	fast := New(fs, Options{})
	slow := New(fs, Options{}) // no INIT seen by the fast path: go-fuse answers
	for _, e := range []*Engine{fast, slow} {
		out := make([]byte, 4096)
		if _, st := e.HandleRequest([][]byte{initRequest()}, [][]byte{out}); !st.Ok() {
			t.Fatal("INIT:", st)
		}
	}
	slow.fastAttr.Store(false)
	if !fast.fastAttr.Load() {
		t.Fatal("fast path off after an INIT of protocol 7.38")
	}
	for _, c := range []struct {
		name          string
		nodeid        uint64
		flags         uint32
		fh            uint64
		inSplit, outS []int
	}{
		{name: "whole", nodeid: 5},
		{name: "split as virtio-fs", nodeid: 5, inSplit: []int{40}, outS: []int{16}},
		{name: "split oddly", nodeid: 5, inSplit: []int{7, 40}, outS: []int{3, 50}},
		{name: "fh", nodeid: 5, flags: fuse.FUSE_GETATTR_FH, fh: 777},
		{name: "error", nodeid: 6, inSplit: []int{40}, outS: []int{16}},
	} {
		calls = 0
		var replies [2][]byte
		for i, e := range []*Engine{fast, slow} {
			out := make([]byte, 16+104)
			n, _ := e.HandleRequest(split(getattrRequest(9, c.nodeid, c.flags, c.fh), c.inSplit...), split(out, c.outS...))
			replies[i] = out[:n]
		}
		if !bytes.Equal(replies[0], replies[1]) {
			t.Errorf("%s: fast path replied %x, go-fuse %x", c.name, replies[0], replies[1])
		}
		if calls != 2 {
			t.Errorf("%s: file system called %d times, want once per engine", c.name, calls)
		}
	}
	if got := binary.LittleEndian.Uint64(must(fast, getattrRequest(10, 5, fuse.FUSE_GETATTR_FH, 777))[16+24:]); got != 777 {
		t.Errorf("GETATTR_FH size %d, want the fh 777 the file system saw", got)
	}
	// The point of the fast path: no allocation per GETATTR (go-fuse's
	// dispatcher allocates a request and a channel).
	req, out := [][]byte{getattrRequest(13, 5, 0, 0)}, [][]byte{make([]byte, 120)}
	if a := testing.AllocsPerRun(100, func() { fast.HandleRequest(req, out) }); a != 0 {
		t.Errorf("fast path: %.1f allocations per GETATTR, want 0", a)
	}
	if a := testing.AllocsPerRun(100, func() { slow.HandleRequest(req, out) }); a == 0 {
		t.Errorf("go-fuse's dispatcher made no allocation: the check above proves nothing")
	}
	// A GETATTR with a trailing byte is not the fast path's to answer:
	// go-fuse gets it (and the reply is go-fuse's).
	long := append(getattrRequest(11, 5, 0, 0), 0)
	binary.LittleEndian.PutUint32(long[0:], uint32(len(long)))
	a, b := must(fast, long), must(slow, long)
	if !bytes.Equal(a, b) {
		t.Errorf("odd-sized GETATTR: fast engine replied %x, go-fuse %x", a, b)
	}
	// A reply buffer too small for attr_out: go-fuse refuses it.
	small := make([]byte, 40)
	if n, st := fast.HandleRequest([][]byte{getattrRequest(12, 5, 0, 0)}, [][]byte{small}); st.Ok() || n != 0 {
		t.Errorf("GETATTR into %d bytes: %d bytes, %v; want go-fuse's refusal", len(small), n, st)
	}
}

func must(e *Engine, req []byte) []byte {
	out := make([]byte, 256)
	n, _ := e.HandleRequest([][]byte{req}, [][]byte{out})
	return out[:n]
}

// entryFS answers LOOKUP of "a" in node 1 with node 7 (and records the
// names it was asked for), ENOENT for anything else.
type entryFS struct {
	fuse.RawFileSystem
	names *[]string
}

func (f entryFS) Capabilities() uint64 { return 0 }
func (f entryFS) Negotiated(uint64)    {}
func (f entryFS) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	*f.names = append(*f.names, name)
	if h.NodeId != 1 || name != "a" {
		return fuse.ENOENT
	}
	out.NodeId, out.Generation, out.Ino, out.Mode = 7, 3, 7, syscall.S_IFDIR|0o755
	out.SetEntryTimeout(1e9)
	return fuse.OK
}

// TestLookupFastPath: LOOKUP answered by the engine itself gives the same
// reply bytes as go-fuse's, with the same name handed to the file system,
// whole or split as virtio-fs splits it; go-fuse's poll hack name still
// goes to go-fuse.
func TestLookupFastPath(t *testing.T) {
	var names []string
	fs := entryFS{fuse.NewDefaultRawFileSystem(), &names}
	fast, slow := New(fs, Options{}), New(fs, Options{})
	for _, e := range []*Engine{fast, slow} {
		out := make([]byte, 4096)
		if _, st := e.HandleRequest([][]byte{initRequest()}, [][]byte{out}); !st.Ok() {
			t.Fatal("INIT:", st)
		}
	}
	slow.fastAttr.Store(false)
	for _, c := range []struct {
		name     string
		payload  string
		in, outS []int
	}{
		{name: "whole", payload: "a\x00"},
		{name: "split as virtio-fs", payload: "a\x00", in: []int{40}, outS: []int{16}},
		{name: "split in the name", payload: "a\x00", in: []int{20, 21}, outS: []int{100}},
		{name: "no NUL", payload: "a"},
		{name: "bytes after the NUL", payload: "a\x00zz"},
		{name: "missing", payload: "b\x00", in: []int{40}},
	} {
		names = nil
		var replies [2][]byte
		for i, e := range []*Engine{fast, slow} {
			out := make([]byte, 16+128)
			n, _ := e.HandleRequest(split(request(opLookup, 21, []byte(c.payload)), c.in...), split(out, c.outS...))
			replies[i] = out[:n]
		}
		if !bytes.Equal(replies[0], replies[1]) {
			t.Errorf("%s: fast path replied %x, go-fuse %x", c.name, replies[0], replies[1])
		}
		if len(names) != 2 || names[0] != names[1] {
			t.Errorf("%s: file system asked for %q, want the same name once per engine", c.name, names)
		}
	}
	names = nil
	must(fast, request(opLookup, 22, []byte(pollHackName+"\x00")))
	if len(names) != 0 {
		t.Errorf("go-fuse's poll hack name reached the file system: %q", names)
	}
	req, out := [][]byte{request(opLookup, 23, []byte("a\x00"))}, [][]byte{make([]byte, 144)}
	if a := testing.AllocsPerRun(100, func() { fast.HandleRequest(req, out) }); a > 1 {
		t.Errorf("fast path: %.1f allocations per LOOKUP, want at most the name's", a)
	}
}

// recFS answers LOOKUP and GETATTR from what it is asked and records every
// call, so that two engines can be compared call for call.
type recFS struct {
	fuse.RawFileSystem
	log *[]string
}

func (f recFS) Capabilities() uint64 { return 0 }
func (f recFS) Negotiated(uint64)    {}
func (f recFS) Forget(nodeid, nlookup uint64) {
	*f.log = append(*f.log, fmt.Sprint("forget ", nodeid, nlookup))
}
func (f recFS) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	*f.log = append(*f.log, fmt.Sprintf("lookup %d %q", h.NodeId, name))
	if len(name)%3 == 0 {
		return fuse.ENOENT
	}
	out.NodeId, out.Ino, out.Size = h.NodeId+1, uint64(len(name)), h.Unique
	return fuse.OK
}
func (f recFS) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	*f.log = append(*f.log, fmt.Sprint("getattr ", in.NodeId, in.Flags(), in.Fh()))
	if in.NodeId%3 == 0 {
		return fuse.Status(in.NodeId % 200)
	}
	out.Ino, out.Size = in.NodeId, in.Fh()
	return fuse.OK
}

// Read answers from a 10000-byte file whose byte i is i*7 (short at the
// end), through a Readv result; fh%5 picks other shapes: 1 an error, 2 a
// result that fails, 3 go-fuse's ReadResultData, 4 nil with OK (the file
// system filled buf itself).
func (f recFS) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	*f.log = append(*f.log, fmt.Sprint("read ", in.NodeId, in.Fh, in.Offset, in.Size, len(buf)))
	data := func() []byte {
		var d []byte
		for i := in.Offset; i < min(in.Offset+uint64(in.Size), 10000); i++ {
			d = append(d, byte(i*7))
		}
		return d
	}
	switch in.Fh % 5 {
	case 1:
		return nil, fuse.EBADF
	case 2:
		return &testRead{data: data(), fail: true}, fuse.OK
	case 3:
		return fuse.ReadResultData(data()), fuse.OK
	case 4:
		copy(buf, data())
		return nil, fuse.OK
	}
	return &testRead{data: data()}, fuse.OK
}

// Writev records the pieces of the data; fh%3 == 1 has no Writev (so the
// engine falls back to Write), fh%3 == 2 fails.
func (f recFS) Writev(cancel <-chan struct{}, in *fuse.WriteIn, data [][]byte) (uint32, fuse.Status) {
	if in.Fh%3 == 1 {
		return 0, fuse.ENOSYS
	}
	var lens []int
	var all []byte
	for _, d := range data {
		lens = append(lens, len(d))
		all = append(all, d...)
	}
	*f.log = append(*f.log, fmt.Sprintf("writev %d %d %d %d %v %x", in.NodeId, in.Fh, in.Offset, in.Size, lens, all))
	if in.Fh%3 == 2 {
		return 0, fuse.EIO
	}
	return uint32(len(all)), fuse.OK
}

func (f recFS) Write(cancel <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	*f.log = append(*f.log, fmt.Sprintf("write %d %d %d %x", in.NodeId, in.Fh, in.Offset, data))
	return uint32(len(data)) / 2, fuse.OK
}

type testRead struct {
	data []byte
	fail bool
}

func (r *testRead) Size() int                              { return len(r.data) }
func (r *testRead) Done()                                  {}
func (r *testRead) Bytes(buf []byte) ([]byte, fuse.Status) { return r.data, fuse.OK }
func (r *testRead) Readv(dst [][]byte) (int, fuse.Status) {
	if r.fail {
		return 0, fuse.EIO
	}
	n := 0
	for _, d := range dst {
		n += copy(d, r.data[n:])
	}
	return n, fuse.OK
}

// FuzzFastPath feeds any bytes, as LOOKUP, GETATTR, READ, WRITE,
// BATCH_FORGET (go-fuse's either way) or a request of the metadata fast
// path (meta.go) split anywhere, to an engine with the fast paths and to
// one without: the replies and the file system calls must be the same.
func FuzzFastPath(f *testing.F) {
	f.Add(uint8(1), uint8(40), uint8(16), []byte("name\x00"))
	f.Add(uint8(3), uint8(40), uint8(16), make([]byte, 16))
	f.Add(uint8(2), uint8(0), uint8(0), make([]byte, 8))
	f.Add(uint8(5), uint8(44), uint8(0), make([]byte, 40))
	for op := uint8(7); op < 17; op++ {
		f.Add(op, uint8(40), uint8(16), append(make([]byte, 88), "name\x00"...))
		f.Add(op, uint8(40), uint8(16), make([]byte, 24))
		f.Add(op, uint8(43), uint8(20), append(make([]byte, 16), "x\x00"...))
	}
	readIn := func(fh, off uint64, size uint32) []byte {
		b := binary.LittleEndian.AppendUint64(nil, fh)
		b = binary.LittleEndian.AppendUint64(b, off)
		b = binary.LittleEndian.AppendUint32(b, size)
		return append(b, make([]byte, 20)...)
	}
	for fh := range uint64(3) {
		w := append(readIn(fh, 4096, 5), "hello"...)
		f.Add(uint8(6), uint8(40), uint8(16), w)
		f.Add(uint8(6), uint8(82), uint8(0), w) // data split
		f.Add(uint8(6), uint8(0), uint8(0), readIn(fh, 0, 0))
	}
	for fh := range uint64(5) {
		f.Add(uint8(4), uint8(40), uint8(16), readIn(fh, 100, 64))
		f.Add(uint8(4), uint8(40), uint8(16), readIn(fh, 9990, 64)) // short
		f.Add(uint8(4), uint8(0), uint8(30), readIn(fh, 0, 100))    // data split
	}
	f.Fuzz(func(t *testing.T, op, inCut, outCut uint8, body []byte) {
		var logs [2][]string
		var replies [2][]byte
		for i := range 2 {
			e := New(recFS{fuse.NewDefaultRawFileSystem(), &logs[i]}, Options{})
			if _, st := e.HandleRequest([][]byte{initRequest()}, [][]byte{make([]byte, 4096)}); !st.Ok() {
				t.Fatal("INIT:", st)
			}
			e.fastAttr.Store(i == 0)
			opcodes := []uint32{0, opLookup, opForget, opGetattr, opRead, 42, opWrite, // 42 BATCH_FORGET
				opSetattr, opMkdir, opUnlink, opRmdir, opOpen, opRelease, opFlush, opOpendir, opReleasedir, opCreate}
			opcode := opcodes[int(op)%len(opcodes)]
			req := request(opcode, 77, body)
			if len(body) > 0 && body[0] == 0xff {
				binary.LittleEndian.PutUint32(req[0:], uint32(len(req)+int(inCut))) // a wrong length
			}
			out := make([]byte, 200)
			n, st := e.HandleRequest(split(req, min(int(inCut), len(req))), split(out, min(int(outCut), len(out))))
			replies[i] = append(out[:n:n], []byte(fmt.Sprint(st))...)
		}
		if !bytes.Equal(replies[0], replies[1]) {
			t.Errorf("fast path replied %x, go-fuse %x", replies[0], replies[1])
		}
		if !reflect.DeepEqual(logs[0], logs[1]) {
			t.Errorf("fast path made the calls %q, go-fuse %q", logs[0], logs[1])
		}
	})
}
