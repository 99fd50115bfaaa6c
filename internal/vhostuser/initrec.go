package vhostuser

import (
	"encoding/binary"
	"sync"

	"github.com/hanwen/go-fuse/v2/fuse"
)

type fuseStatus = fuse.Status

const (
	fuseOpInit     = 26      // FUSE_INIT
	maxInitRequest = 1 << 10 // fuse_in_header + fuse_init_in, with room to grow
)

// initRecorder wraps a connection's Handler and keeps a copy of the last
// FUSE_INIT request, so that a handover can replay it into the
// successor's Handler: the FUSE session outlives the back-end process.
type initRecorder struct {
	Handler
	mu   sync.Mutex
	init []byte // +checklocks:mu
}

func (r *initRecorder) HandleRequest(in, out [][]byte) (int, fuseStatus) {
	var hdr [8]byte
	copyFrom(hdr[:], in)
	if binary.LittleEndian.Uint32(hdr[4:]) == fuseOpInit {
		var total int
		for _, b := range in {
			total += len(b)
		}
		if total <= maxInitRequest {
			req := make([]byte, total)
			copyFrom(req, in)
			r.mu.Lock()
			r.init = req
			r.mu.Unlock()
		}
	}
	return r.Handler.HandleRequest(in, out)
}

// initRequest returns the recorded FUSE_INIT request, or nil.
func (r *initRecorder) initRequest() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.init
}

// replayInit feeds a recorded FUSE_INIT request to h and drops the reply
// (the kernel got its reply from the predecessor).
func replayInit(h Handler, init []byte) {
	out := make([]byte, 4096)
	h.HandleRequest([][]byte{append([]byte(nil), init...)}, [][]byte{out})
}
