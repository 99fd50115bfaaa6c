// Package engine is the FUSE protocol engine shared by every transport: it
// wraps go-fuse's ProtocolServer for one client connection, records the
// INIT exchange (so that a successor process can replay it after a restart,
// and so the file system learns what was negotiated), and never touches the
// host itself.
package engine

import (
	"encoding/binary"
	"log/slog"
	"sync"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// FileSystem is what the engine serves: a fuse.RawFileSystem that also
// states the INIT capabilities it wants and hears what was negotiated.
type FileSystem interface {
	fuse.RawFileSystem
	Capabilities() uint64
	Negotiated(flags uint64)
}

// Options tune the protocol for one connection.
type Options struct {
	MaxWrite int // largest WRITE/READ payload; default 1 MiB
	Logger   *slog.Logger
	// OnInit, if set, receives every INIT request the engine answers (not
	// replays), so it can be saved for a successor process.
	OnInit func(req []byte)
	// Passthrough negotiates FUSE passthrough (max_stack_depth 1), for
	// /dev/fuse connections whose file system registers backing files.
	Passthrough bool
}

// DefaultMaxWrite is the largest payload negotiated by default (256 pages,
// the kernel's limit, as the Rust virtiofsd does).
const DefaultMaxWrite = 1 << 20

// Engine serves the FUSE requests of one connection. HandleRequest may be
// called from many goroutines at once.
type Engine struct {
	ps     *fuse.ProtocolServer
	fs     FileSystem
	onInit func([]byte)

	mu      sync.Mutex
	initReq []byte // the INIT request as received, for replay
}

// New returns an engine for one connection to fs.
func New(fs FileSystem, opts Options) *Engine {
	if opts.MaxWrite == 0 {
		opts.MaxWrite = DefaultMaxWrite
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	mo := &fuse.MountOptions{
		MaxWrite:          opts.MaxWrite,
		MaxReadAhead:      opts.MaxWrite,
		MaxBackground:     64,
		ExtraCapabilities: fs.Capabilities() | fuse.CAP_HAS_RESEND,
		Logger:            slog.NewLogLogger(opts.Logger.Handler(), slog.LevelWarn),
		DisableSplice:     true,
		EnableLocks:       true,
		MaxStackDepth:     map[bool]int{true: 1}[opts.Passthrough],
	}
	return &Engine{ps: fuse.NewProtocolServer(fs, mo), fs: fs, onInit: opts.OnInit}
}

const (
	opInit        = 26
	inHeaderSize  = 40
	outHeaderSize = 16
)

// HandleRequest serves one request: in holds the request bytes, out the
// reply buffer; it returns the reply length (0: no reply is due).
func (e *Engine) HandleRequest(in, out [][]byte) (int, fuse.Status) {
	var op uint32
	if len(in) > 0 && len(in[0]) >= inHeaderSize {
		op = binary.LittleEndian.Uint32(in[0][4:])
	}
	if createOp(op) {
		if r, ok := e.fs.(SuppGroupsReceiver); ok {
			if g := suppGroups(in); g != nil {
				defer r.SetSuppGroups(binary.LittleEndian.Uint64(in[0][8:]), g)()
			}
		}
	}
	isInit := op == opInit
	n, st := e.ps.HandleRequest(in, out)
	if isInit && st.Ok() {
		if req := e.recordInit(in, out, n); req != nil && e.onInit != nil {
			e.onInit(req)
		}
	}
	return n, st
}

// recordInit keeps the INIT request and tells the file system the flags
// the reply carried.
func (e *Engine) recordInit(in, out [][]byte, n int) []byte {
	var req []byte
	for _, b := range in {
		req = append(req, b...)
	}
	var reply []byte
	for _, b := range out {
		reply = append(reply, b...)
		if len(reply) >= n {
			break
		}
	}
	if n < outHeaderSize+36 || len(reply) < outHeaderSize+36 {
		return nil
	}
	if int32(binary.LittleEndian.Uint32(reply[4:])) != 0 {
		return nil // INIT refused
	}
	init := reply[outHeaderSize:]
	flags := uint64(binary.LittleEndian.Uint32(init[12:]))
	flags |= uint64(binary.LittleEndian.Uint32(init[32:])) << 32
	e.mu.Lock()
	e.initReq = req
	e.mu.Unlock()
	e.fs.Negotiated(flags)
	return req
}

// InitRequest returns the INIT request this connection was set up with, or
// nil before INIT.
func (e *Engine) InitRequest() []byte {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]byte(nil), e.initReq...)
}

// ReplayInit feeds a saved INIT request to a fresh engine, so that it serves
// a connection whose INIT a predecessor process answered. The reply is
// discarded: the kernel already has one.
func (e *Engine) ReplayInit(req []byte) fuse.Status {
	out := make([]byte, 4096)
	onInit := e.onInit
	e.onInit = nil
	_, st := e.HandleRequest([][]byte{req}, [][]byte{out})
	e.onInit = onInit
	if st.Ok() && int32(binary.LittleEndian.Uint32(out[4:])) != 0 {
		st = fuse.Status(-int32(binary.LittleEndian.Uint32(out[4:])))
	}
	return st
}
