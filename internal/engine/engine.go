// Package engine is the FUSE protocol engine shared by every transport: it
// wraps go-fuse's ProtocolServer for one client connection, answers the
// requests a guest sends most (LOOKUP, GETATTR, READ, WRITE and the
// open/create/remove family, see meta.go) itself with the same
// RawFileSystem calls and reply bytes but without a per-request
// allocation, records the INIT exchange (so that a successor process can
// replay it after a restart, and so the file system learns what was
// negotiated), and never touches the host itself.
package engine

import (
	"bytes"
	"encoding/binary"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

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
	// Barrier, if set, runs after each request is handled and before its
	// reply goes back to the transport: what the file system deferred
	// (node records written behind) must be durable before the client
	// can see a reply that names it. An error replaces a successful
	// reply with EIO, or ENOSPC when the error says so.
	Barrier func() error
}

// DefaultMaxWrite is the largest payload negotiated by default (256 pages,
// the kernel's limit, as the Rust virtiofsd does).
const DefaultMaxWrite = 1 << 20

// Engine serves the FUSE requests of one connection. HandleRequest may be
// called from many goroutines at once.
type Engine struct {
	ps      *fuse.ProtocolServer
	fs      FileSystem
	onInit  func([]byte)
	barrier func() error
	log     *slog.Logger
	// lastBarrierLog is when a failed barrier was last logged (UnixNano).
	lastBarrierLog atomic.Int64

	// fastAttr: GETATTR and LOOKUP are answered without go-fuse's
	// dispatcher (see getattr); set once INIT is answered for a kernel
	// whose attr_out and entry_out have today's size (protocol 7.9 and
	// later).
	fastAttr atomic.Bool

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
	return &Engine{ps: fuse.NewProtocolServer(fs, mo), fs: fs, onInit: opts.OnInit, barrier: opts.Barrier, log: opts.Logger}
}

const (
	opLookup      = 1
	opGetattr     = 3
	opRead        = 15
	opWrite       = 16
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
	if e.fastAttr.Load() {
		if n, ok := e.fast(op, in, out); ok {
			if e.barrier != nil {
				n = e.applyBarrier(out, n)
			}
			return n, fuse.OK
		}
	}
	isInit := op == opInit
	n, st := e.ps.HandleRequest(in, out)
	if e.barrier != nil {
		n = e.applyBarrier(out, n)
	}
	if isInit && st.Ok() {
		if req := e.recordInit(in, out, n); req != nil && e.onInit != nil {
			e.onInit(req)
		}
	}
	return n, st
}

// fast answers the requests the engine serves without go-fuse's
// dispatcher; ok is false for any other, or one it leaves to go-fuse.
func (e *Engine) fast(op uint32, in, out [][]byte) (n int, ok bool) {
	switch op {
	case opGetattr:
		return e.getattr(in, out)
	case opLookup:
		return e.lookup(in, out)
	case opRead:
		return e.read(in, out)
	case opWrite:
		return e.write(in, out)
	}
	if isMetaOp(op) {
		return e.meta(op, in, out)
	}
	return 0, false
}

// applyBarrier runs the barrier and, if it fails, turns a successful reply
// of n bytes in out into an error reply; it returns the reply length.
func (e *Engine) applyBarrier(out [][]byte, n int) int {
	err := e.barrier()
	if err == nil || n < outHeaderSize || len(out) == 0 || len(out[0]) < outHeaderSize {
		return n
	}
	if int32(binary.LittleEndian.Uint32(out[0][4:])) != 0 {
		return n // already an error
	}
	code := syscall.EIO
	if errors.Is(err, syscall.ENOSPC) {
		code = syscall.ENOSPC
	}
	// Rate-limited: on a full state disk every new node fails this way.
	if now := time.Now().UnixNano(); now-e.lastBarrierLog.Load() > int64(10*time.Second) {
		e.lastBarrierLog.Store(now)
		e.log.Warn("reply withheld: what it names could not be made durable (logged at most every 10 s)", "err", err, "errno", code)
	}
	binary.LittleEndian.PutUint32(out[0][0:], outHeaderSize)
	binary.LittleEndian.PutUint32(out[0][4:], uint32(-int32(code)))
	return outHeaderSize
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
	if len(req) >= inHeaderSize+8 {
		minor := binary.LittleEndian.Uint32(req[inHeaderSize+4:])
		e.fastAttr.Store(minor >= 9)
	}
	return req
}

// getattr answers a GETATTR straight from the file system, without going
// through go-fuse's ProtocolServer, which allocates a request (~1 KiB) and
// a channel and registers it for INTERRUPT under a mutex: 14 % of the
// daemon's CPU for GETATTR at 16 in flight, where the statx itself is
// half. The request and reply may be split over buffers as a guest's
// virtio-fs driver lays them out (header and argument apart). ok is false
// for a request of the wrong size or a reply buffer too small: go-fuse
// then serves it, and refuses it as it should. Interrupting a GETATTR
// means nothing to this file system, which never blocks in one.
func (e *Engine) getattr(in, out [][]byte) (n int, ok bool) {
	b := getattrBufs.Get().(*getattrBuf)
	defer getattrBufs.Put(b)
	req := &b.req
	reqBytes := unsafe.Slice((*byte)(unsafe.Pointer(req)), unsafe.Sizeof(*req))
	if iovLen(in) != len(reqBytes) || iovLen(out) < outHeaderSize+attrOutSize {
		return 0, false
	}
	gather(reqBytes, in)
	if req.Length != uint32(len(reqBytes)) {
		return 0, false
	}
	b.attr = fuse.AttrOut{}
	st := e.fs.GetAttr(nil, req, &b.attr)
	return reply(out, &b.hdr, st, req.Unique, attrOutSize), true
}

// reply fills hdr, the reply header for status st to request unique, and
// copies it and, on success, the body of bodySize bytes that follows hdr
// in memory into out. It returns the reply length.
func reply(out [][]byte, hdr *[outHeaderSize]byte, st fuse.Status, unique uint64, bodySize int) int {
	n := header(hdr, st, unique, bodySize)
	scatter(out, unsafe.Slice(&hdr[0], n))
	return n
}

// header fills hdr, the reply header for status st to request unique with
// a body of bodySize bytes (none unless st is OK), and returns the reply
// length.
func header(hdr *[outHeaderSize]byte, st fuse.Status, unique uint64, bodySize int) int {
	n := outHeaderSize
	if st.Ok() {
		n += bodySize
	} else if st < 0 {
		st = fuse.EIO
	}
	binary.LittleEndian.PutUint32(hdr[0:], uint32(n))
	binary.LittleEndian.PutUint32(hdr[4:], uint32(-int32(st)))
	binary.LittleEndian.PutUint64(hdr[8:], unique)
	return n
}

// getattrBuf holds a GETATTR request and its reply, the reply header and
// attr_out back to back as they go on the wire. Pooled: handed to the
// file system through an interface, they would escape to the heap.
type getattrBuf struct {
	req  fuse.GetAttrIn
	hdr  [outHeaderSize]byte
	attr fuse.AttrOut
}

var getattrBufs = sync.Pool{New: func() any { return new(getattrBuf) }}

// lookup answers a LOOKUP as getattr answers a GETATTR (the name is the
// payload up to its NUL, as go-fuse reads it). go-fuse's own poll hack
// name is left to go-fuse.
func (e *Engine) lookup(in, out [][]byte) (n int, ok bool) {
	total := iovLen(in)
	if total <= inHeaderSize || total > inHeaderSize+lookupNameMax || iovLen(out) < outHeaderSize+entryOutSize {
		return 0, false
	}
	b := lookupBufs.Get().(*lookupBuf)
	defer lookupBufs.Put(b)
	h := &b.hdrIn
	hb := unsafe.Slice((*byte)(unsafe.Pointer(h)), inHeaderSize)
	gatherAt(hb, in, 0)
	name := b.name[:total-inHeaderSize]
	gatherAt(name, in, inHeaderSize)
	if h.Length != uint32(total) {
		return 0, false
	}
	if i := bytes.IndexByte(name, 0); i >= 0 {
		name = name[:i]
	}
	if string(name) == pollHackName {
		return 0, false
	}
	b.entry = fuse.EntryOut{}
	st := e.fs.Lookup(nil, h, string(name), &b.entry)
	return reply(out, &b.hdr, st, h.Unique, entryOutSize), true
}

// read answers a READ as getattr answers a GETATTR, the data read by the
// file system's ReadResult straight into the reply buffers, as go-fuse's
// ProtocolServer does. It takes only a READ whose data buffer is in one
// piece (go-fuse hands that to the file system as its buffer; a guest's
// small reads are one page), leaving larger ones to go-fuse.
func (e *Engine) read(in, out [][]byte) (n int, ok bool) {
	b := readBufs.Get().(*readBuf)
	defer readBufs.Put(b)
	req := &b.req
	reqBytes := unsafe.Slice((*byte)(unsafe.Pointer(req)), unsafe.Sizeof(*req))
	if iovLen(in) != len(reqBytes) {
		return 0, false
	}
	gather(reqBytes, in)
	size := int(req.Size)
	if req.Length != uint32(len(reqBytes)) || iovLen(out) < outHeaderSize+size {
		return 0, false
	}
	buf, ok := iovRange(out, outHeaderSize, size)
	if !ok {
		return 0, false
	}
	res, st := e.fs.Read(nil, req, buf)
	switch {
	case !st.Ok():
		if res != nil {
			res.Done()
		}
	case res == nil:
		n = size // the file system filled buf (go-fuse sends it whole)
	default:
		b.dst = appendIovRange(b.dst[:0], out, outHeaderSize, res.Size())
		n, st = readInto(res, b.dst)
		res.Done()
		clear(b.dst) // drop the references to guest memory
		if !st.Ok() {
			n = 0
		}
	}
	n = header(&b.hdr, st, req.Unique, n)
	scatter(out, b.hdr[:]) // the data is in out already
	return n, true
}

// write answers a WRITE as getattr answers a GETATTR: the data goes to
// the file system's Writev as the pieces the request came in (as go-fuse
// does), or, if it has none, to Write in one piece.
func (e *Engine) write(in, out [][]byte) (n int, ok bool) {
	b := writeBufs.Get().(*writeBuf)
	defer writeBufs.Put(b)
	req := &b.req
	reqBytes := unsafe.Slice((*byte)(unsafe.Pointer(req)), unsafe.Sizeof(*req))
	total := iovLen(in)
	if total < len(reqBytes) || iovLen(out) < outHeaderSize+writeOutSize {
		return 0, false
	}
	gatherAt(reqBytes, in, 0)
	if req.Length != uint32(total) {
		return 0, false
	}
	b.data = appendIovRange(b.data[:0], in, len(reqBytes), total-len(reqBytes))
	if len(b.data) == 0 {
		b.data = append(b.data, nil) // go-fuse hands over one empty piece
	}
	b.out = fuse.WriteOut{}
	size, st := e.fs.Writev(nil, req, b.data)
	if st == fuse.ENOSYS {
		if len(b.data) == 1 {
			size, st = e.fs.Write(nil, req, b.data[0])
		} else {
			buf := make([]byte, total-len(reqBytes))
			gatherAt(buf, in, len(reqBytes))
			size, st = e.fs.Write(nil, req, buf)
		}
	}
	clear(b.data) // drop the references to guest memory
	b.out.Size = size
	return reply(out, &b.hdr, st, req.Unique, writeOutSize), true
}

type writeBuf struct {
	req  fuse.WriteIn
	data [][]byte
	hdr  [outHeaderSize]byte
	out  fuse.WriteOut
}

var writeBufs = sync.Pool{New: func() any { return new(writeBuf) }}

const writeOutSize = int(unsafe.Sizeof(fuse.WriteOut{}))

// writeBuf's reply header and write_out must be back to back.
var _ [0]struct{} = [unsafe.Offsetof(writeBuf{}.out) - unsafe.Offsetof(writeBuf{}.hdr) - outHeaderSize]struct{}{}

type readBuf struct {
	req fuse.ReadIn
	hdr [outHeaderSize]byte
	dst [][]byte
}

var readBufs = sync.Pool{New: func() any { return new(readBuf) }}

// readInto has a ReadResult write its data into dst, as go-fuse does.
func readInto(res fuse.ReadResult, dst [][]byte) (int, fuse.Status) {
	switch r := res.(type) {
	case interface {
		Readv(dst [][]byte) (int, fuse.Status)
	}:
		return r.Readv(dst)
	case interface {
		Slices() ([][]byte, fuse.Status)
	}:
		src, st := r.Slices()
		if !st.Ok() {
			return 0, st
		}
		n := 0
		for _, s := range src {
			n += copyIov(dst, n, s)
		}
		return n, fuse.OK
	}
	return 0, fuse.EIO
}

// copyIov copies src into iov starting off bytes in; it returns how many
// bytes fit.
func copyIov(iov [][]byte, off int, src []byte) int {
	n := 0
	for _, b := range iov {
		if off >= len(b) {
			off -= len(b)
			continue
		}
		c := copy(b[off:], src[n:])
		n += c
		off = 0
		if n == len(src) {
			break
		}
	}
	return n
}

// iovRange returns the n bytes at off in iov if they are in one piece.
func iovRange(iov [][]byte, off, n int) ([]byte, bool) {
	for _, b := range iov {
		if off < len(b) {
			if off+n <= len(b) {
				return b[off : off+n], true
			}
			return nil, false
		}
		off -= len(b)
	}
	return nil, n == 0
}

// appendIovRange appends to dst the pieces of iov that hold n bytes from off.
func appendIovRange(dst [][]byte, iov [][]byte, off, n int) [][]byte {
	for _, b := range iov {
		if n == 0 {
			break
		}
		if off >= len(b) {
			off -= len(b)
			continue
		}
		b = b[off:]
		off = 0
		b = b[:min(len(b), n)]
		n -= len(b)
		dst = append(dst, b)
	}
	return dst
}

// pollHackName is the name go-fuse answers LOOKUPs of itself (its epoll
// workaround for /dev/fuse mounts it makes).
const pollHackName = ".go-fuse-epoll-hack"

// lookupNameMax bounds the LOOKUP payload the fast path takes (a name is at
// most 255 bytes and its NUL); a longer one goes to go-fuse, which refuses
// it or hands it to the file system to refuse.
const lookupNameMax = 1024

type lookupBuf struct {
	hdrIn fuse.InHeader
	name  [lookupNameMax]byte
	hdr   [outHeaderSize]byte
	entry fuse.EntryOut
}

var lookupBufs = sync.Pool{New: func() any { return new(lookupBuf) }}

const entryOutSize = int(unsafe.Sizeof(fuse.EntryOut{}))

// lookupBuf's reply header and entry_out must be back to back.
var _ [0]struct{} = [unsafe.Offsetof(lookupBuf{}.entry) - unsafe.Offsetof(lookupBuf{}.hdr) - outHeaderSize]struct{}{}

// gatherAt fills dst from iov, starting off bytes into it.
func gatherAt(dst []byte, iov [][]byte, off int) {
	for _, b := range iov {
		if off >= len(b) {
			off -= len(b)
			continue
		}
		dst = dst[copy(dst, b[off:]):]
		off = 0
		if len(dst) == 0 {
			return
		}
	}
}

func iovLen(iov [][]byte) int {
	n := 0
	for _, b := range iov {
		n += len(b)
	}
	return n
}

// gather fills dst from iov; scatter copies src into iov.
func gather(dst []byte, iov [][]byte) {
	for _, b := range iov {
		dst = dst[copy(dst, b):]
	}
}

func scatter(iov [][]byte, src []byte) {
	for _, b := range iov {
		src = src[copy(b, src):]
	}
}

const attrOutSize = int(unsafe.Sizeof(fuse.AttrOut{}))

// getattrBuf's reply header and attr_out must be back to back.
var _ [0]struct{} = [unsafe.Offsetof(getattrBuf{}.attr) - unsafe.Offsetof(getattrBuf{}.hdr) - outHeaderSize]struct{}{}

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
