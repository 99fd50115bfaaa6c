package virtqueue

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"
)

// Split-ring constants from the virtio 1.x specification, §2.7.
const (
	DescFNext     = 1 // VIRTQ_DESC_F_NEXT
	DescFWrite    = 2 // VIRTQ_DESC_F_WRITE: device-writable buffer
	DescFIndirect = 4 // VIRTQ_DESC_F_INDIRECT

	AvailFNoInterrupt = 1 // VIRTQ_AVAIL_F_NO_INTERRUPT
	UsedFNoNotify     = 1 // VIRTQ_USED_F_NO_NOTIFY

	// MaxQueueSize is the largest split queue size (the spec's limit).
	MaxQueueSize = 32768

	DescSize = 16 // sizeof(struct virtq_desc)
)

// Features are the negotiated ring features that change the device's
// behaviour.
type Features struct {
	IndirectDesc bool // VIRTIO_RING_F_INDIRECT_DESC
	EventIdx     bool // VIRTIO_RING_F_EVENT_IDX
}

// Layout locates a split ring in the front-end's address space
// (VHOST_USER_SET_VRING_NUM and SET_VRING_ADDR).
type Layout struct {
	Size      uint16 // number of descriptors, a power of two
	DescUser  uint64 // descriptor table, front-end address
	AvailUser uint64 // driver area
	UsedUser  uint64 // device area
}

// Ring sizes in bytes for a queue of n descriptors.
func DescTableBytes(n uint16) uint64 { return DescSize * uint64(n) }
func AvailRingBytes(n uint16) uint64 { return 4 + 2*uint64(n) + 2 }
func UsedRingBytes(n uint16) uint64  { return 4 + 8*uint64(n) + 2 }

// Validate checks size and alignment (§2.7: descriptor table 16, available
// ring 2, used ring 4).
func (l Layout) Validate() error {
	switch {
	case l.Size == 0 || l.Size > MaxQueueSize || l.Size&(l.Size-1) != 0:
		return fmt.Errorf("queue size %d is not a power of two in [1, %d]", l.Size, MaxQueueSize)
	case l.DescUser%16 != 0:
		return fmt.Errorf("descriptor table %#x not 16-byte aligned", l.DescUser)
	case l.AvailUser%2 != 0:
		return fmt.Errorf("available ring %#x not 2-byte aligned", l.AvailUser)
	case l.UsedUser%4 != 0:
		return fmt.Errorf("used ring %#x not 4-byte aligned", l.UsedUser)
	}
	return nil
}

// Queue is the device side of one split virtqueue. See the package doc for
// which methods need the caller's lock.
type Queue struct {
	size     uint16
	mask     uint16
	features Features
	layout   Layout

	// Ring views into guest memory; the slices never change after
	// NewQueue. mem holds a reference that keeps them mapped.
	mem   *Memory
	desc  []byte
	avail []byte
	used  []byte

	// availIdxWord is the aligned 32-bit word of the available ring that
	// holds avail->idx, and availIdxShift its bit offset in that word.
	availIdxWord  *uint32
	availIdxShift uint
	usedWord      *uint32 // used->flags | used->idx<<16

	lastAvail      uint16 // next available-ring slot to consume
	usedIdx        uint16 // shadow of used->idx
	usedFlags      uint16 // shadow of used->flags
	signalledUsed  uint16 // used->idx at the last interrupt (EVENT_IDX)
	signalledValid bool

	fenceWord atomic.Uint64
}

// ErrBrokenRing is wrapped by errors that mean the driver broke the ring
// protocol; the device should stop serving the queue.
var ErrBrokenRing = errors.New("virtqueue: driver broke the ring protocol")

// NewQueue maps a split ring. lastAvail is the index of the next available
// entry to consume (VHOST_USER_SET_VRING_BASE); the used index is read from
// the ring, which is where a previous device (or the front-end, on
// migration) left it. The Queue holds its own reference on mem.
func NewQueue(mem *Memory, l Layout, f Features, lastAvail uint16) (*Queue, error) {
	if err := l.Validate(); err != nil {
		return nil, err
	}
	q := &Queue{size: l.Size, mask: l.Size - 1, features: f, layout: l, lastAvail: lastAvail}
	if err := q.mapRings(mem); err != nil {
		return nil, err
	}
	w := atomic.LoadUint32(q.usedWord)
	q.usedFlags, q.usedIdx = uint16(w), uint16(w>>16)
	return q, nil
}

// Remap moves the ring views to a new memory table (after the front-end
// changed it), keeping all indices. On error the queue keeps its old
// views, which stay valid: they hold a reference on the old table.
func (q *Queue) Remap(mem *Memory) error {
	old := q.mem
	if err := q.mapRings(mem); err != nil {
		return err
	}
	old.Release()
	return nil
}

// Memory returns the table the ring views live in; the caller must
// Acquire it to use it beyond the lock that serialises the Queue.
func (q *Queue) Memory() *Memory { return q.mem }

func (q *Queue) mapRings(mem *Memory) error {
	l := q.layout
	desc, err := mem.UserSlice(l.DescUser, DescTableBytes(l.Size))
	if err != nil {
		return fmt.Errorf("descriptor table: %w", err)
	}
	avail, err := mem.UserSlice(l.AvailUser, AvailRingBytes(l.Size))
	if err != nil {
		return fmt.Errorf("available ring: %w", err)
	}
	used, err := mem.UserSlice(l.UsedUser, UsedRingBytes(l.Size))
	if err != nil {
		return fmt.Errorf("used ring: %w", err)
	}
	// The host mapping must keep the guest's alignment for the atomic
	// accesses below; it does unless the front-end passed an mmap offset
	// and user address that disagree modulo 4.
	if uintptr(unsafe.Pointer(&used[0]))%4 != 0 || uintptr(unsafe.Pointer(&avail[0]))%2 != 0 {
		return errors.New("ring misaligned in the host mapping")
	}
	q.mem, q.desc, q.avail, q.used = mem.Acquire(), desc, avail, used
	// avail->idx sits at byte 2. If the ring is 4-aligned its word is
	// bytes [0,4) (flags|idx<<16); otherwise idx starts a word, bytes
	// [2,6), which still lies inside the ring (it has at least one slot).
	if uintptr(unsafe.Pointer(&avail[0]))%4 == 0 {
		q.availIdxWord, q.availIdxShift = (*uint32)(unsafe.Pointer(&avail[0])), 16
	} else {
		q.availIdxWord, q.availIdxShift = (*uint32)(unsafe.Pointer(&avail[2])), 0
	}
	q.usedWord = (*uint32)(unsafe.Pointer(&used[0]))
	return nil
}

// Close releases the ring's memory reference. The Queue must not be used
// afterwards.
func (q *Queue) Close() {
	if q.mem != nil {
		q.mem.Release()
		q.mem = nil
	}
}

// Size returns the number of descriptors.
func (q *Queue) Size() uint16 { return q.size }

// LastAvail returns the index of the next available entry to consume, what
// VHOST_USER_GET_VRING_BASE reports.
func (q *Queue) LastAvail() uint16 { return q.lastAvail }

// UsedIdx returns the device's used index.
func (q *Queue) UsedIdx() uint16 { return q.usedIdx }

// fence is a full memory barrier (virtio_mb): a LOCK-prefixed RMW on amd64.
// It also keeps the compiler from moving guest-memory accesses across it.
func (q *Queue) fence() { q.fenceWord.Add(1) }

// availIdx reads avail->idx. The atomic load is an acquire: ring entries
// and descriptors read after it are at least as new as the index (pairs
// with the driver's write barrier before it publishes the index).
func (q *Queue) availIdx() uint16 {
	return uint16(atomic.LoadUint32(q.availIdxWord) >> q.availIdxShift)
}

func load16(b []byte, off int) uint16 { return *(*uint16)(unsafe.Pointer(&b[off])) }

func store16(b []byte, off int, v uint16) { *(*uint16)(unsafe.Pointer(&b[off])) = v }

// Next consumes the next available head, if any. It returns an error
// wrapping ErrBrokenRing if the driver published more entries than the ring
// holds or a head index out of range.
func (q *Queue) Next() (head uint16, ok bool, err error) {
	idx := q.availIdx()
	if idx == q.lastAvail {
		return 0, false, nil
	}
	if pending := idx - q.lastAvail; pending > q.size {
		return 0, false, fmt.Errorf("avail idx %d is %d entries ahead of %d, queue size %d: %w", idx, pending, q.lastAvail, q.size, ErrBrokenRing)
	}
	// The slot is read after the index (acquire above), so it holds the
	// driver's value for this index.
	head = load16(q.avail, 4+2*int(q.lastAvail&q.mask))
	q.lastAvail++
	if head >= q.size {
		return 0, false, fmt.Errorf("head %d out of range, queue size %d: %w", head, q.size, ErrBrokenRing)
	}
	return head, true, nil
}

// HasAvailable reports whether the driver published entries not yet
// consumed.
func (q *Queue) HasAvailable() bool { return q.availIdx() != q.lastAvail }

// Push returns a chain to the driver: head is the chain's head index and n
// the number of bytes the device wrote into it.
func (q *Queue) Push(head uint16, n uint32) {
	slot := 4 + 8*int(q.usedIdx&q.mask)
	binary.LittleEndian.PutUint32(q.used[slot:], uint32(head))
	binary.LittleEndian.PutUint32(q.used[slot+4:], n)
	q.usedIdx++
	// Barrier: the element must be visible before the index that
	// publishes it (virtio_wmb). atomic.StoreUint32 is a release store
	// (XCHG, a full barrier, on amd64).
	atomic.StoreUint32(q.usedWord, uint32(q.usedFlags)|uint32(q.usedIdx)<<16)
}

// NeedNotify reports whether the driver wants an interrupt for the entries
// pushed since the last call that returned true.
func (q *Queue) NeedNotify() bool {
	// Barrier: the used index store must be visible before we read the
	// driver's suppression state, or a driver that just re-enabled
	// interrupts and then checked the old used index would sleep forever
	// (virtio_mb).
	q.fence()
	if !q.features.EventIdx {
		return load16(q.avail, 0)&AvailFNoInterrupt == 0
	}
	newIdx, old, valid := q.usedIdx, q.signalledUsed, q.signalledValid
	q.signalledUsed, q.signalledValid = newIdx, true
	if !valid {
		return true
	}
	usedEvent := load16(q.avail, 4+2*int(q.size))
	return newIdx-usedEvent-1 < newIdx-old // vring_need_event
}

// DisableNotification asks the driver not to kick while the device is
// draining the ring. With EVENT_IDX there is nothing to do: the driver only
// kicks when avail->idx passes avail_event, which is left behind.
func (q *Queue) DisableNotification() {
	if q.features.EventIdx || q.usedFlags&UsedFNoNotify != 0 {
		return
	}
	q.usedFlags |= UsedFNoNotify
	atomic.StoreUint32(q.usedWord, uint32(q.usedFlags)|uint32(q.usedIdx)<<16)
}

// EnableNotification asks the driver to kick for new entries and reports
// whether entries arrived meanwhile (the caller must then drain again, as
// the driver may have skipped the kick).
func (q *Queue) EnableNotification() bool {
	if q.features.EventIdx {
		store16(q.used, 4+8*int(q.size), q.lastAvail) // avail_event
	} else {
		q.usedFlags &^= UsedFNoNotify
		atomic.StoreUint32(q.usedWord, uint32(q.usedFlags)|uint32(q.usedIdx)<<16)
	}
	// Barrier: the store above must be visible before we re-read
	// avail->idx; otherwise the driver can read the old suppression state
	// and skip its kick while we miss its new entry (virtio_mb).
	q.fence()
	return q.HasAvailable()
}
