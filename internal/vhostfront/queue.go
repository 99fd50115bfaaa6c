package vhostfront

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/govirtiofsd/govirtiofsd/internal/vhostuser/wire"
	"github.com/govirtiofsd/govirtiofsd/internal/virtqueue"
	"golang.org/x/sys/unix"
)

// ErrClosed is returned for requests on a closed Frontend.
var ErrClosed = errors.New("vhostfront: closed")

// queue is one virtqueue, driver side.
type queue struct {
	f     *Frontend
	index int
	size  uint16
	desc  uint64 // guest physical addresses of the rings
	avail uint64
	used  uint64
	kick  *os.File // eventfds we created; the back-end got duplicates
	call  *os.File

	mu      sync.Mutex
	drv     *virtqueue.Driver   // +checklocks:mu
	waiters map[uint16]*pending // +checklocks:mu; by head
	space   *sync.Cond          // signalled when descriptors are freed
	dead    error               // +checklocks:mu; set when the queue cannot complete anymore

	// kicks counts the kicks written: a back-end that polls its ring
	// needs fewer (see Kicks).
	kicks atomic.Uint64
}

// pending is one request in flight.
type pending struct {
	bufs []span // guest memory to free once the chain is back
	done chan uint32
	// abandoned is set when the caller gave up; the completion then
	// only frees the buffers.
	abandoned bool
}

type span struct{ off, n int }

func pageAlign(n int) int { p := os.Getpagesize(); return (n + p - 1) &^ (p - 1) }

// newQueue places queue i's rings at offset off of guest memory and returns
// the offset after them.
func (f *Frontend) newQueue(i, off int) (*queue, int, error) {
	size := f.opts.QueueSize
	descOff := pageAlign(off)
	availOff := pageAlign(descOff + int(virtqueue.DescTableBytes(size)))
	usedOff := pageAlign(availOff + int(virtqueue.AvailRingBytes(size)))
	end := pageAlign(usedOff + int(virtqueue.UsedRingBytes(size)))
	if end > len(f.mem) {
		return nil, 0, errors.New("vhostfront: guest memory too small for the rings")
	}
	drv, err := virtqueue.NewDriver(size, f.features&wire.FeatureRingEventIdx != 0,
		f.mem[descOff:availOff], f.mem[availOff:usedOff], f.mem[usedOff:end])
	if err != nil {
		return nil, 0, fmt.Errorf("vhostfront: queue %d: %w", i, err)
	}
	q := &queue{f: f, index: i, size: size, drv: drv, waiters: map[uint16]*pending{},
		desc: guestBase + uint64(descOff), avail: guestBase + uint64(availOff), used: guestBase + uint64(usedOff)}
	q.space = sync.NewCond(&q.mu)
	for _, p := range []**os.File{&q.kick, &q.call} {
		fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			q.closeFDs()
			return nil, 0, fmt.Errorf("vhostfront: eventfd: %w", err)
		}
		*p = os.NewFile(uintptr(fd), fmt.Sprintf("queue-%d", i))
	}
	return q, end, nil
}

func (q *queue) closeFDs() {
	if q.kick != nil {
		q.kick.Close()
	}
	if q.call != nil {
		q.call.Close()
	}
}

// rawFD returns f's descriptor without switching it to blocking mode.
func rawFD(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	err = rc.Control(func(u uintptr) { fd = int(u) })
	return fd, err
}

func (f *Frontend) startQueue(q *queue) error {
	idx := uint32(q.index)
	if err := f.Send(wire.ReqSetVringNum, wire.EncodeVringState(idx, uint32(q.size)), nil); err != nil {
		return err
	}
	if err := f.Send(wire.ReqSetVringBase, wire.EncodeVringState(idx, 0), nil); err != nil {
		return err
	}
	ua := func(gpa uint64) uint64 { return uint64(uintptrOf(q.f.guest(gpa, 1))) }
	a := wire.VringAddr{Index: idx, DescUser: ua(q.desc), UsedUser: ua(q.used), AvailUser: ua(q.avail), Log: q.used}
	if err := f.Send(wire.ReqSetVringAddr, wire.EncodeVringAddr(a), nil); err != nil {
		return err
	}
	kfd, err := rawFD(q.kick)
	if err != nil {
		return err
	}
	cfd, err := rawFD(q.call)
	if err != nil {
		return err
	}
	if err := f.Send(wire.ReqSetVringCall, wire.EncodeU64(uint64(idx)), []int{cfd}); err != nil {
		return err
	}
	if err := f.Send(wire.ReqSetVringKick, wire.EncodeU64(uint64(idx)), []int{kfd}); err != nil {
		return err
	}
	if f.features&wire.FeatureProtocolFeatures != 0 {
		if err := f.Send(wire.ReqSetVringEnable, wire.EncodeVringState(idx, 1), nil); err != nil {
			return err
		}
	}
	f.wg.Add(1)
	go q.completions()
	return nil
}

// completions waits for interrupts and hands used entries to waiters.
func (q *queue) completions() {
	defer q.f.wg.Done()
	var buf [8]byte
	for {
		q.mu.Lock()
		err := q.reapLocked()
		q.mu.Unlock()
		if err != nil {
			q.kill(err)
			return
		}
		if _, err := q.call.Read(buf[:]); err != nil {
			q.kill(ErrClosed)
			return
		}
	}
}

// reapLocked takes every used entry, re-arming interrupts when done.
func (q *queue) reapLocked() error {
	for {
		head, n, ok, err := q.drv.Used()
		if err != nil {
			return err
		}
		if !ok {
			if q.drv.EnableInterrupts() {
				continue
			}
			return nil
		}
		p := q.waiters[head]
		delete(q.waiters, head)
		if p == nil {
			return fmt.Errorf("vhostfront: back-end completed head %d which is not in flight", head)
		}
		q.space.Broadcast()
		if p.abandoned {
			q.f.free(p.bufs)
		} else {
			p.done <- n // the waiter copies the reply, then frees
		}
	}
}

// kill fails every waiter (the connection or the ring is gone).
func (q *queue) kill(err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.dead == nil {
		q.dead = err
	}
	for h, p := range q.waiters {
		if !p.abandoned {
			close(p.done)
		}
		delete(q.waiters, h)
	}
	q.space.Broadcast()
}

func (q *queue) shutdown() {
	q.kill(ErrClosed)
	_ = q.call.SetReadDeadline(aLongTimeAgo())
}

// Kicks reports how many times the front-end kicked queue qi: once per
// request the back-end asked to hear about (all of them without
// VIRTIO_RING_F_EVENT_IDX, unless it turned kicks off).
func (f *Frontend) Kicks(qi int) uint64 {
	if qi < 0 || qi >= len(f.queues) {
		return 0
	}
	return f.queues[qi].kicks.Load()
}

// Do sends one request on queue qi: in is copied into device-readable
// buffers (one descriptor per element), and a device-writable buffer of
// outLen bytes receives the reply, which is returned (as many bytes as the
// back-end reported writing).
func (f *Frontend) Do(qi int, in [][]byte, outLen int) ([]byte, error) {
	return f.DoContext(context.Background(), qi, in, outLen)
}

// DoContext is Do with a context bounding the wait for the reply.
func (f *Frontend) DoContext(ctx context.Context, qi int, in [][]byte, outLen int) ([]byte, error) {
	if qi < 0 || qi >= len(f.queues) {
		return nil, fmt.Errorf("vhostfront: no queue %d", qi)
	}
	q := f.queues[qi]
	var bufs []virtqueue.Buf
	var spans []span
	fail := func(err error) ([]byte, error) { f.free(spans); return nil, err }
	for _, b := range in {
		if len(b) == 0 {
			continue
		}
		s, err := f.allocate(len(b))
		if err != nil {
			return fail(err)
		}
		spans = append(spans, s)
		copy(f.mem[s.off:], b)
		bufs = append(bufs, virtqueue.Buf{Addr: guestBase + uint64(s.off), Len: uint32(len(b))})
	}
	var out span
	if outLen > 0 {
		s, err := f.allocate(outLen)
		if err != nil {
			return fail(err)
		}
		clear(f.mem[s.off : s.off+outLen])
		out = s
		spans = append(spans, s)
		bufs = append(bufs, virtqueue.Buf{Addr: guestBase + uint64(s.off), Len: uint32(outLen), Write: true})
	}
	var table span
	if f.opts.UseIndirect {
		if f.features&wire.FeatureRingIndirectDesc == 0 {
			return fail(errors.New("vhostfront: indirect descriptors not negotiated"))
		}
		s, err := f.allocate(virtqueue.DescSize * len(bufs))
		if err != nil {
			return fail(err)
		}
		table = s
		spans = append(spans, s)
	}
	return f.submit(ctx, q, bufs, spans, table, out, outLen)
}

// submit publishes a chain of bufs (through an indirect table if table is
// set), waits for its completion and returns the reply bytes from out.
// spans are freed when the chain is back.
func (f *Frontend) submit(ctx context.Context, q *queue, bufs []virtqueue.Buf, spans []span, table, out span, outLen int) ([]byte, error) {
	qi := q.index
	fail := func(err error) ([]byte, error) { f.free(spans); return nil, err }
	p := &pending{bufs: spans, done: make(chan uint32, 1)}

	q.mu.Lock()
	var head uint16
	for {
		if q.dead != nil {
			err := q.dead
			q.mu.Unlock()
			return fail(err)
		}
		need := len(bufs)
		if table.n > 0 {
			need = 1
		}
		if need > int(q.size) {
			q.mu.Unlock()
			return fail(fmt.Errorf("vhostfront: %d buffers do not fit a queue of %d", need, q.size))
		}
		var err error
		if table.n > 0 {
			head, err = q.drv.AddIndirect(guestBase+uint64(table.off), f.mem[table.off:table.off+table.n], bufs)
		} else {
			head, err = q.drv.Add(bufs)
		}
		if err == nil {
			break
		}
		if !errors.Is(err, virtqueue.ErrRingFull) {
			q.mu.Unlock()
			return fail(err)
		}
		q.space.Wait()
	}
	q.waiters[head] = p
	kick := q.drv.NeedKick()
	q.mu.Unlock()
	if kick {
		q.kicks.Add(1)
		var one [8]byte
		binary.LittleEndian.PutUint64(one[:], 1)
		if _, err := q.kick.Write(one[:]); err != nil {
			return nil, fmt.Errorf("vhostfront: kick queue %d: %w", qi, err)
		}
	}

	select {
	case n, ok := <-p.done:
		if !ok {
			q.mu.Lock()
			err := q.dead
			q.mu.Unlock()
			return nil, fmt.Errorf("vhostfront: queue %d: %w", qi, err)
		}
		// The back-end's count is not trusted: clamp it.
		m := min(int(n), outLen)
		r := make([]byte, m)
		copy(r, f.mem[out.off:out.off+m])
		f.free(spans)
		return r, nil
	case <-ctx.Done():
		q.mu.Lock()
		if w, ok := q.waiters[head]; ok && w == p {
			p.abandoned = true // buffers are freed when the chain comes back
		}
		q.mu.Unlock()
		return nil, ctx.Err()
	}
}

// allocator is a first-fit allocator over the guest memory heap.
type allocator struct {
	free []span // sorted by offset, coalesced
}

func (a *allocator) init(start, end int) { a.free = []span{{start, end - start}} }

const allocAlign = 64

func (f *Frontend) allocate(n int) (span, error) {
	n = (n + allocAlign - 1) &^ (allocAlign - 1)
	f.allocMu.Lock()
	defer f.allocMu.Unlock()
	for i, s := range f.alloc.free {
		if s.n >= n {
			f.alloc.free[i] = span{s.off + n, s.n - n}
			if f.alloc.free[i].n == 0 {
				f.alloc.free = append(f.alloc.free[:i], f.alloc.free[i+1:]...)
			}
			return span{s.off, n}, nil
		}
	}
	return span{}, fmt.Errorf("vhostfront: guest memory exhausted allocating %d bytes", n)
}

func (f *Frontend) free(spans []span) {
	f.allocMu.Lock()
	defer f.allocMu.Unlock()
	for _, s := range spans {
		if s.n == 0 {
			continue
		}
		fl := append(f.alloc.free, s)
		sort.Slice(fl, func(i, j int) bool { return fl[i].off < fl[j].off })
		merged := fl[:1]
		for _, x := range fl[1:] {
			last := &merged[len(merged)-1]
			if last.off+last.n == x.off {
				last.n += x.n
			} else {
				merged = append(merged, x)
			}
		}
		f.alloc.free = merged
	}
}

// aLongTimeAgo is a deadline in the past, to unblock a pending read.
func aLongTimeAgo() time.Time { return time.Unix(1, 0) }

func uintptrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(&b[0])) }
