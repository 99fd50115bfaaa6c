// Package vhostfront is a vhost-user front-end in Go: it plays the part of
// QEMU and of a guest driver against any vhost-user-fs back-end socket, for
// tests and load generation without a virtual machine.
//
// It creates guest memory in a memfd, negotiates features, sets up the
// hiprio queue and N request queues, and sends FUSE requests built from
// go-fuse's wire structs. [Frontend.Do] places a request in guest memory,
// kicks the queue and waits for the back-end's used-ring entry; any number
// of requests may be in flight on each queue.
//
// Guarantees: a request whose context ends before its reply keeps its
// guest buffers reserved until the back-end returns the chain, so the
// back-end never writes into memory reused by another request. Nothing
// here trusts the back-end: reply lengths are clamped to the buffer.
//
// Concurrency: Frontend is safe for concurrent use. Lock order:
// Frontend.ctlMu (control messages), then queue.mu (ring and waiters),
// then Frontend.allocMu (guest memory allocator).
package vhostfront

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/govirtiofsd/govirtiofsd/internal/vhostuser/wire"
	"github.com/govirtiofsd/govirtiofsd/internal/virtqueue"
	"golang.org/x/sys/unix"
)

// Options configures a Frontend.
type Options struct {
	// NumRequestQueues to set up; 0: as many as the back-end offers
	// (GET_QUEUE_NUM - 1), at most 8.
	NumRequestQueues int
	// QueueSize is the number of descriptors per queue; default 128.
	QueueSize uint16
	// MemSize is the guest memory size; default 64 MiB.
	MemSize int
	// DisableEventIdx and DisableIndirect turn off those ring features
	// even if offered.
	DisableEventIdx, DisableIndirect bool
	// UseIndirect sends every request through an indirect table.
	UseIndirect bool
	// UseAddMemReg announces memory with ADD_MEM_REG (CONFIGURE_MEM_SLOTS)
	// instead of SET_MEM_TABLE.
	UseAddMemReg bool
	// Timeout bounds each control message round trip; default 10s.
	Timeout time.Duration
	Logger  *slog.Logger
}

// Guest memory layout: one region at this guest physical address.
const guestBase = 0x40000000

// wantedProtocol is what we accept of the back-end's protocol features.
const wantedProtocol = wire.ProtocolMQ | wire.ProtocolReplyAck | wire.ProtocolConfig |
	wire.ProtocolConfigureMemSlots | wire.ProtocolStatus | wire.ProtocolResetDevice |
	wire.ProtocolDeviceState | wire.ProtocolLogSHMFD

// Frontend is one connection to a vhost-user back-end.
type Frontend struct {
	opts Options
	log  *slog.Logger
	conn *wire.Conn

	ctlMu    sync.Mutex // serialises control round trips
	features uint64
	protocol uint64
	maxQueue int

	memfd *os.File
	mem   []byte // our mapping of the memfd: guest physical guestBase+i is mem[i]

	allocMu sync.Mutex
	alloc   allocator // +checklocks:allocMu

	unique atomic.Uint64 // FUSE request ids

	queues []*queue
	closed chan struct{}
	wg     sync.WaitGroup
}

// Dial connects to a back-end's socket and sets up the device.
func Dial(ctx context.Context, path string, opts Options) (*Frontend, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("vhostfront: dial %s: %w", path, err)
	}
	return New(c.(*net.UnixConn), opts)
}

// New sets up the device over an established connection, which the
// Frontend takes over (also on error).
func New(c *net.UnixConn, opts Options) (*Frontend, error) {
	if opts.QueueSize == 0 {
		opts.QueueSize = 128
	}
	if opts.MemSize == 0 {
		opts.MemSize = 64 << 20
	}
	if opts.Timeout == 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	f := &Frontend{opts: opts, log: opts.Logger, conn: wire.NewConn(c), closed: make(chan struct{})}
	if err := f.setup(); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func (f *Frontend) setup() error {
	page := os.Getpagesize()
	size := (f.opts.MemSize + page - 1) &^ (page - 1)
	fd, err := unix.MemfdCreate("vhostfront-guest", unix.MFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("vhostfront: memfd_create: %w", err)
	}
	f.memfd = os.NewFile(uintptr(fd), "guest-memory")
	if err := f.memfd.Truncate(int64(size)); err != nil {
		return fmt.Errorf("vhostfront: size guest memory: %w", err)
	}
	f.mem, err = unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("vhostfront: mmap guest memory: %w", err)
	}

	// Negotiate, in QEMU's order.
	feat, err := f.GetU64(wire.ReqGetFeatures)
	if err != nil {
		return err
	}
	want := uint64(wire.FeatureVersion1 | wire.FeatureProtocolFeatures | wire.FeatureRingEventIdx | wire.FeatureRingIndirectDesc)
	if f.opts.DisableEventIdx {
		want &^= wire.FeatureRingEventIdx
	}
	if f.opts.DisableIndirect {
		want &^= wire.FeatureRingIndirectDesc
	}
	f.features = feat & want
	if f.features&wire.FeatureProtocolFeatures != 0 {
		p, err := f.GetU64(wire.ReqGetProtocolFeatures)
		if err != nil {
			return err
		}
		if err := f.SetU64(wire.ReqSetProtocolFeatures, p&wantedProtocol); err != nil {
			return err
		}
		f.protocol = p & wantedProtocol
	}
	f.maxQueue = 2
	if f.protocol&wire.ProtocolMQ != 0 {
		n, err := f.GetU64(wire.ReqGetQueueNum)
		if err != nil {
			return err
		}
		f.maxQueue = int(n)
	}
	nreq := f.opts.NumRequestQueues
	if nreq == 0 {
		nreq = min(f.maxQueue-1, 8)
	}
	if nreq < 1 || nreq+1 > f.maxQueue {
		return fmt.Errorf("vhostfront: %d request queues wanted, back-end offers %d queues", nreq, f.maxQueue)
	}
	if err := f.SetU64(wire.ReqSetOwner, 0); err != nil {
		return err
	}
	if err := f.SetU64(wire.ReqSetFeatures, f.features); err != nil {
		return err
	}
	region := virtqueue.RegionLayout{GuestPhysAddr: guestBase, Size: uint64(size), UserAddr: uint64(uintptr(unsafe.Pointer(&f.mem[0])))}
	if f.opts.UseAddMemReg {
		if f.protocol&wire.ProtocolConfigureMemSlots == 0 {
			return errors.New("vhostfront: back-end lacks CONFIGURE_MEM_SLOTS")
		}
		err = f.Send(wire.ReqAddMemReg, wire.EncodeMemReg(region), []int{fd})
	} else {
		err = f.Send(wire.ReqSetMemTable, wire.EncodeMemTable([]virtqueue.RegionLayout{region}), []int{fd})
	}
	if err != nil {
		return err
	}

	// Rings first, then the buffer heap.
	off := 0
	for i := 0; i <= nreq; i++ {
		q, next, err := f.newQueue(i, off)
		if err != nil {
			return err
		}
		off = next
		f.queues = append(f.queues, q)
	}
	f.alloc.init(off, size)
	for _, q := range f.queues {
		if err := f.startQueue(q); err != nil {
			return err
		}
	}
	if f.protocol&wire.ProtocolStatus != 0 {
		// ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK
		if err := f.SetU64(wire.ReqSetStatus, 0xf); err != nil {
			return err
		}
	}
	return nil
}

// Features returns the negotiated virtio features and protocol features.
func (f *Frontend) Features() (features, protocol uint64) { return f.features, f.protocol }

// NumQueues returns the number of queues set up (hiprio included).
func (f *Frontend) NumQueues() int { return len(f.queues) }

// Close stops the completion goroutines, closes the connection (the
// back-end sees a disconnect) and unmaps guest memory.
func (f *Frontend) Close() error {
	select {
	case <-f.closed:
		return nil
	default:
	}
	close(f.closed)
	err := f.conn.Close()
	for _, q := range f.queues {
		q.shutdown()
	}
	f.wg.Wait()
	for _, q := range f.queues {
		q.closeFDs()
	}
	if f.mem != nil {
		unix.Munmap(f.mem)
		f.mem = nil
	}
	if f.memfd != nil {
		f.memfd.Close()
	}
	return err
}

// guest returns our view of guest memory at a guest physical address.
func (f *Frontend) guest(gpa uint64, n int) []byte {
	off := gpa - guestBase
	return f.mem[off : off+uint64(n) : off+uint64(n)]
}

// Send sends a request without a reply of its own; with REPLY_ACK it asks
// for and checks the ack.
func (f *Frontend) Send(req wire.Request, payload []byte, fds []int) error {
	f.ctlMu.Lock()
	defer f.ctlMu.Unlock()
	h := wire.Header{Request: req, Flags: wire.FlagVersion}
	ack := f.protocol&wire.ProtocolReplyAck != 0
	if ack {
		h.Flags |= wire.FlagNeedReply
	}
	if err := f.conn.WriteMessage(h, payload, fds); err != nil {
		return fmt.Errorf("vhostfront: %w", err)
	}
	if !ack {
		return nil
	}
	r, err := f.readReplyLocked(req)
	if err != nil {
		return err
	}
	if len(r.Payload) != 8 {
		return fmt.Errorf("vhostfront: %v: ack of %d bytes", req, len(r.Payload))
	}
	if v := r.U64(); v != 0 {
		return fmt.Errorf("vhostfront: %v: back-end replied %d", req, v)
	}
	return nil
}

// Call sends a request that has a reply and returns the reply payload.
func (f *Frontend) Call(req wire.Request, payload []byte) ([]byte, error) {
	return f.CallWithFDs(req, payload, nil)
}

// CallWithFDs is Call with fds attached (SET_DEVICE_STATE_FD).
func (f *Frontend) CallWithFDs(req wire.Request, payload []byte, fds []int) ([]byte, error) {
	f.ctlMu.Lock()
	defer f.ctlMu.Unlock()
	if err := f.conn.WriteMessage(wire.Header{Request: req, Flags: wire.FlagVersion}, payload, fds); err != nil {
		return nil, fmt.Errorf("vhostfront: %w", err)
	}
	r, err := f.readReplyLocked(req)
	if err != nil {
		return nil, err
	}
	return r.Payload, nil
}

// SendRaw writes a message as given (for fault injection) without reading
// anything back.
func (f *Frontend) SendRaw(h wire.Header, payload []byte, fds []int) error {
	f.ctlMu.Lock()
	defer f.ctlMu.Unlock()
	return f.conn.WriteMessage(h, payload, fds)
}

func (f *Frontend) readReplyLocked(req wire.Request) (*wire.Message, error) {
	_ = f.conn.UnixConn().SetReadDeadline(time.Now().Add(f.opts.Timeout))
	defer f.conn.UnixConn().SetReadDeadline(time.Time{})
	r, err := f.conn.ReadMessage(nil)
	if err != nil {
		return nil, fmt.Errorf("vhostfront: reply to %v: %w", req, err)
	}
	r.Close()
	if r.Request != req || r.Flags&wire.FlagReply == 0 {
		return nil, fmt.Errorf("vhostfront: reply to %v is %v flags %#x", req, r.Request, r.Flags)
	}
	return r, nil
}

// GetU64 sends a GET_* request and decodes its u64 reply.
func (f *Frontend) GetU64(req wire.Request) (uint64, error) {
	p, err := f.Call(req, nil)
	if err != nil {
		return 0, err
	}
	if len(p) != 8 {
		return 0, fmt.Errorf("vhostfront: %v: reply of %d bytes", req, len(p))
	}
	return (&wire.Message{Payload: p}).U64(), nil
}

// SetU64 sends a request with a u64 payload (0 for SET_OWNER and other
// payload-less requests).
func (f *Frontend) SetU64(req wire.Request, v uint64) error {
	if req == wire.ReqSetOwner || req == wire.ReqResetDevice || req == wire.ReqResetOwner {
		return f.Send(req, nil, nil)
	}
	return f.Send(req, wire.EncodeU64(v), nil)
}

// GetConfig reads size bytes of the device config space at offset.
func (f *Frontend) GetConfig(offset, size uint32) ([]byte, error) {
	p, err := f.Call(wire.ReqGetConfig, wire.EncodeConfig(offset, make([]byte, size)))
	if err != nil {
		return nil, err
	}
	if len(p) != wire.SizeConfigHdr+int(size) {
		return nil, fmt.Errorf("vhostfront: GET_CONFIG: reply of %d bytes", len(p))
	}
	return p[wire.SizeConfigHdr:], nil
}

// StopQueue sends GET_VRING_BASE, which stops the queue, and returns the
// back-end's next avail index.
func (f *Frontend) StopQueue(i int) (uint16, error) {
	p, err := f.Call(wire.ReqGetVringBase, wire.EncodeVringState(uint32(i), 0))
	if err != nil {
		return 0, err
	}
	if len(p) != wire.SizeVringState {
		return 0, fmt.Errorf("vhostfront: GET_VRING_BASE: reply of %d bytes", len(p))
	}
	return uint16(wire.DecodeVringState(p).Num), nil
}

// DirtyLog is a dirty page bitmap shared with the back-end (live
// migration): one bit per 4 KiB page of guest physical
// memory, counted from address 0.
type DirtyLog struct {
	Bitmap []byte
	file   *os.File
}

// Close unmaps the log.
func (l *DirtyLog) Close() {
	unix.Munmap(l.Bitmap)
	l.file.Close()
}

// PageDirty reports whether the page holding gpa is marked.
func (l *DirtyLog) PageDirty(gpa uint64) bool {
	p := gpa >> 12
	return p/8 < uint64(len(l.Bitmap)) && l.Bitmap[p/8]&(1<<(p%8)) != 0
}

// EnableDirtyLog starts migration-style dirty logging as QEMU does:
// SET_LOG_BASE with a shared bitmap covering guest memory, SET_FEATURES
// with VHOST_F_LOG_ALL, and SET_VRING_ADDR with the log flag on every ring.
func (f *Frontend) EnableDirtyLog() (*DirtyLog, error) {
	if f.protocol&wire.ProtocolLogSHMFD == 0 {
		return nil, errors.New("vhostfront: back-end lacks LOG_SHMFD")
	}
	pages := (guestBase + uint64(len(f.mem))) >> 12
	size := (pages/8 + 4095) &^ 4095
	fd, err := unix.MemfdCreate("vhostfront-log", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, err
	}
	file := os.NewFile(uintptr(fd), "dirty-log")
	if err := file.Truncate(int64(size)); err != nil {
		file.Close()
		return nil, err
	}
	bm, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		file.Close()
		return nil, err
	}
	l := &DirtyLog{Bitmap: bm, file: file}
	p := make([]byte, 16)
	copy(p, wire.EncodeU64(size))
	r, err := f.CallWithFDs(wire.ReqSetLogBase, p, []int{fd})
	if err == nil && (len(r) != 8 || (&wire.Message{Payload: r}).U64() != 0) {
		err = fmt.Errorf("vhostfront: SET_LOG_BASE refused: %x", r)
	}
	if err == nil {
		err = f.SetU64(wire.ReqSetFeatures, f.features|wire.FeatureLogAll)
	}
	for _, q := range f.queues {
		if err != nil {
			break
		}
		ua := func(gpa uint64) uint64 { return uint64(uintptrOf(f.guest(gpa, 1))) }
		a := wire.VringAddr{Index: uint32(q.index), Flags: wire.VringAddrFLog, DescUser: ua(q.desc), UsedUser: ua(q.used), AvailUser: ua(q.avail), Log: q.used}
		err = f.Send(wire.ReqSetVringAddr, wire.EncodeVringAddr(a), nil)
	}
	if err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}
