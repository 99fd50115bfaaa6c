package engine

import (
	"encoding/binary"
	"errors"
	"syscall"
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// lookupFS answers every LOOKUP with node 7 and notes the order of events.
type lookupFS struct {
	fuse.RawFileSystem
	events *[]string
}

func (f lookupFS) Capabilities() uint64 { return 0 }
func (f lookupFS) Negotiated(uint64)    {}
func (f lookupFS) String() string       { return "lookupFS" }
func (f lookupFS) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	*f.events = append(*f.events, "lookup "+name)
	out.NodeId = 7
	return fuse.OK
}

func request(op uint32, unique uint64, body []byte) []byte {
	b := make([]byte, inHeaderSize, inHeaderSize+len(body))
	b = append(b, body...)
	binary.LittleEndian.PutUint32(b[0:], uint32(len(b)))
	binary.LittleEndian.PutUint32(b[4:], op)
	binary.LittleEndian.PutUint64(b[8:], unique)
	binary.LittleEndian.PutUint64(b[16:], 1) // nodeid
	return b
}

func initRequest() []byte {
	in := make([]byte, 64)
	binary.LittleEndian.PutUint32(in[0:], 7)  // major
	binary.LittleEndian.PutUint32(in[4:], 38) // minor
	binary.LittleEndian.PutUint32(in[8:], 1<<20)
	return request(opInit, 1, in)
}

// TestBarrier checks that the barrier runs after the file system handled a
// request and before its reply is returned, and that a failed barrier
// turns the reply into an error the client sees instead of the entry.
func TestBarrier(t *testing.T) {
	var events []string
	var fail error
	e := New(lookupFS{fuse.NewDefaultRawFileSystem(), &events}, Options{Barrier: func() error {
		events = append(events, "barrier")
		return fail
	}})
	out := make([]byte, 4096)
	if n, st := e.HandleRequest([][]byte{initRequest()}, [][]byte{out}); !st.Ok() || n < outHeaderSize || binary.LittleEndian.Uint32(out[4:]) != 0 {
		t.Fatalf("INIT: %d bytes, %v, error %d", n, st, int32(binary.LittleEndian.Uint32(out[4:])))
	}
	events = nil
	const opLookup = 1
	n, _ := e.HandleRequest([][]byte{request(opLookup, 2, []byte("a\x00"))}, [][]byte{out})
	if len(events) != 2 || events[0] != "lookup a" || events[1] != "barrier" {
		t.Errorf("events %q, want lookup then barrier", events)
	}
	if errno := int32(binary.LittleEndian.Uint32(out[4:])); errno != 0 || n <= outHeaderSize || binary.LittleEndian.Uint64(out[16:]) != 7 {
		t.Errorf("reply %d bytes, error %d, nodeid %d; want the entry of node 7", n, errno, binary.LittleEndian.Uint64(out[16:]))
	}

	fail = errors.Join(errors.New("write node record"), syscall.ENOSPC)
	n, _ = e.HandleRequest([][]byte{request(opLookup, 3, []byte("b\x00"))}, [][]byte{out})
	if errno := -int32(binary.LittleEndian.Uint32(out[4:])); n != outHeaderSize || errno != int32(syscall.ENOSPC) {
		t.Errorf("failed barrier: reply %d bytes, errno %d; want %d bytes, ENOSPC", n, errno, outHeaderSize)
	}
	if u := binary.LittleEndian.Uint64(out[8:]); u != 3 {
		t.Errorf("error reply for unique %d, want 3", u)
	}
	fail = errors.New("I/O")
	e.HandleRequest([][]byte{request(opLookup, 4, []byte("c\x00"))}, [][]byte{out})
	if errno := -int32(binary.LittleEndian.Uint32(out[4:])); errno != int32(syscall.EIO) {
		t.Errorf("failed barrier: errno %d, want EIO", errno)
	}
}
