package vhostuser

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/govirtiofsd/govirtiofsd/internal/vhostuser/wire"
	"github.com/govirtiofsd/govirtiofsd/internal/virtqueue"
	"golang.org/x/sys/unix"
)

// logPageShift is the dirty log's granularity: one bit per 4 KiB page of
// guest physical memory (VHOST_LOG_PAGE).
const logPageShift = 12

// dirtyLog is the front-end's dirty page bitmap for live migration
// (SET_LOG_BASE with LOG_SHMFD). While VHOST_F_LOG_ALL is negotiated every
// byte the back-end writes into guest memory — reply buffers and the used
// ring — gets its page marked, so the front-end re-sends those pages.
type dirtyLog struct {
	active atomic.Bool // VHOST_F_LOG_ALL negotiated

	mu sync.RWMutex
	// bitmap is the mapped log, nil before SET_LOG_BASE. Writers of the
	// field hold mu exclusively; markers hold it shared while they set
	// bits, so the old mapping is never unmapped under them.
	bitmap []byte // +checklocks:mu
}

// setBitmap installs a new mapping and unmaps the old one.
func (l *dirtyLog) setBitmap(b []byte) {
	l.mu.Lock()
	old := l.bitmap
	l.bitmap = b
	l.mu.Unlock()
	if old != nil {
		_ = unix.Munmap(old)
	}
}

// mark sets the bits for [gpa, gpa+n). Pages past the end of the log are
// ignored (the front-end sized it for all of guest memory).
func (l *dirtyLog) mark(gpa, n uint64) {
	if n == 0 || !l.active.Load() {
		return
	}
	l.mu.RLock()
	defer l.mu.RUnlock()
	words := uint64(len(l.bitmap) / 4)
	end := gpa + (n - 1) // last byte
	if end < gpa {
		end = ^uint64(0)
	}
	first, last := gpa>>logPageShift, end>>logPageShift
	for page := first; ; page++ {
		w := page / 32
		if w >= words {
			return
		}
		// The bitmap is a little-endian bit array; bit page%32 of
		// this word is bit page%8 of byte page/8. The atomic OR keeps
		// bits other writers (the front-end clears, QEMU's own
		// devices set) intact.
		atomic.OrUint32((*uint32)(unsafe.Pointer(&l.bitmap[4*w])), 1<<(page%32))
		if page == last {
			return
		}
	}
}

// markChain logs the first n bytes of a chain's device-writable buffers.
func (l *dirtyLog) markChain(c *virtqueue.Chain, n uint32) {
	if !l.active.Load() {
		return
	}
	left := uint64(n)
	for i, b := range c.Out {
		if left == 0 {
			break
		}
		k := min(left, uint64(len(b)))
		l.mark(c.OutAddr[i], k)
		left -= k
	}
}

func (l *dirtyLog) close() { l.setBitmap(nil) }

// setLogBase handles SET_LOG_BASE: map the log the front-end passed.
func (d *device) setLogBase(m *wire.Message) error {
	if d.protocol&wire.ProtocolLogSHMFD == 0 {
		return errors.New("SET_LOG_BASE without LOG_SHMFD")
	}
	size := binary.LittleEndian.Uint64(m.Payload)
	off := binary.LittleEndian.Uint64(m.Payload[8:])
	if size == 0 || size > 1<<40 || off > 1<<62 {
		return fmt.Errorf("log size %#x offset %#x", size, off)
	}
	f, err := m.TakeFile(0, "dirty-log", false)
	if err != nil {
		return err
	}
	defer f.Close() // the mapping outlives the fd
	b, err := unix.Mmap(int(f.Fd()), int64(off), int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("mmap dirty log (%d bytes at %d): %w", size, off, err)
	}
	d.dirty.setBitmap(b)
	return nil
}
