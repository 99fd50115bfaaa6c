package virtqueue

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"
)

// Driver is the driver (guest) side of a split ring over memory the caller
// owns: the mock driver for tests and the ring engine of the Go front-end.
// It is not safe for concurrent use.
type Driver struct {
	size     uint16
	eventIdx bool
	desc     []byte
	avail    []byte
	used     []byte

	free     []uint16 // free descriptor indices
	chainLen []uint16 // by head: descriptors the chain occupies
	next     []uint16 // by descriptor: next link we wrote
	availIdx uint16
	lastUsed uint16
	kickedAt uint16 // availIdx at the last kick decision

	fenceWord atomic.Uint64
}

// Buf is one buffer of a chain, by guest physical address.
type Buf struct {
	Addr  uint64
	Len   uint32
	Write bool // device-writable
}

// ErrRingFull is returned by Driver.Add when too few descriptors are free.
var ErrRingFull = errors.New("virtqueue: no free descriptors")

// NewDriver lays a ring over desc, avail and used, which must be
// DescTableBytes, AvailRingBytes and UsedRingBytes long for size and
// suitably aligned, and zeroes them.
func NewDriver(size uint16, eventIdx bool, desc, avail, used []byte) (*Driver, error) {
	l := Layout{Size: size}
	if err := l.Validate(); err != nil {
		return nil, err
	}
	if uint64(len(desc)) < DescTableBytes(size) || uint64(len(avail)) < AvailRingBytes(size) || uint64(len(used)) < UsedRingBytes(size) {
		return nil, fmt.Errorf("ring memory too small for queue size %d", size)
	}
	if uintptr(unsafe.Pointer(&avail[0]))%4 != 0 || uintptr(unsafe.Pointer(&used[0]))%4 != 0 {
		return nil, errors.New("rings must be 4-byte aligned")
	}
	clear(desc)
	clear(avail)
	clear(used)
	d := &Driver{size: size, eventIdx: eventIdx, desc: desc, avail: avail, used: used,
		chainLen: make([]uint16, size), next: make([]uint16, size)}
	for i := int(size) - 1; i >= 0; i-- {
		d.free = append(d.free, uint16(i))
	}
	return d, nil
}

// Free returns the number of free descriptors.
func (d *Driver) Free() int { return len(d.free) }

func (d *Driver) writeDesc(table []byte, i int, b Buf, next uint16, more bool) {
	e := table[DescSize*i:][:DescSize]
	var flags uint16
	if b.Write {
		flags |= DescFWrite
	}
	if more {
		flags |= DescFNext
	}
	binary.LittleEndian.PutUint64(e[0:], b.Addr)
	binary.LittleEndian.PutUint32(e[8:], b.Len)
	binary.LittleEndian.PutUint16(e[12:], flags)
	binary.LittleEndian.PutUint16(e[14:], next)
}

// Add publishes a chain of direct descriptors and returns its head.
func (d *Driver) Add(bufs []Buf) (uint16, error) {
	if len(bufs) == 0 {
		return 0, errors.New("empty chain")
	}
	if len(bufs) > len(d.free) {
		return 0, ErrRingFull
	}
	idx := make([]uint16, len(bufs))
	for k := range bufs {
		idx[k] = d.free[len(d.free)-1]
		d.free = d.free[:len(d.free)-1]
	}
	for k, b := range bufs {
		var nx uint16
		if k+1 < len(bufs) {
			nx = idx[k+1]
		}
		d.writeDesc(d.desc, int(idx[k]), b, nx, k+1 < len(bufs))
		d.next[idx[k]] = nx
	}
	d.chainLen[idx[0]] = uint16(len(bufs))
	d.publish(idx[0])
	return idx[0], nil
}

// AddIndirect publishes a chain through one indirect table, written into
// table (at guest address tableAddr, len(bufs)*DescSize bytes).
func (d *Driver) AddIndirect(tableAddr uint64, table []byte, bufs []Buf) (uint16, error) {
	if len(d.free) == 0 {
		return 0, ErrRingFull
	}
	if len(table) < DescSize*len(bufs) || len(bufs) == 0 {
		return 0, errors.New("indirect table too small")
	}
	for k, b := range bufs {
		d.writeDesc(table, k, b, uint16(k+1), k+1 < len(bufs))
	}
	h := d.free[len(d.free)-1]
	d.free = d.free[:len(d.free)-1]
	e := d.desc[DescSize*int(h):][:DescSize]
	binary.LittleEndian.PutUint64(e[0:], tableAddr)
	binary.LittleEndian.PutUint32(e[8:], uint32(DescSize*len(bufs)))
	binary.LittleEndian.PutUint16(e[12:], DescFIndirect)
	binary.LittleEndian.PutUint16(e[14:], 0)
	d.chainLen[h] = 1
	d.publish(h)
	return h, nil
}

func (d *Driver) publish(head uint16) {
	store16(d.avail, 4+2*int(d.availIdx&(d.size-1)), head)
	d.availIdx++
	// Barrier: the ring entry and descriptors must be visible before the
	// index (virtio_wmb); the atomic store is a release.
	d.storeAvailIdx()
}

func (d *Driver) storeAvailIdx() {
	w := (*uint32)(unsafe.Pointer(&d.avail[0]))
	flags := load16(d.avail, 0)
	atomic.StoreUint32(w, uint32(flags)|uint32(d.availIdx)<<16)
}

// NeedKick reports whether the device wants a notification for the
// entries published since the last call.
func (d *Driver) NeedKick() bool {
	// Barrier: our avail index store before reading the device's
	// suppression state (virtio_mb).
	d.fenceWord.Add(1)
	old := d.kickedAt
	d.kickedAt = d.availIdx
	if !d.eventIdx {
		return uint16(atomic.LoadUint32((*uint32)(unsafe.Pointer(&d.used[0]))))&UsedFNoNotify == 0
	}
	ev := load16(d.used, 4+8*int(d.size))
	return d.availIdx-ev-1 < d.availIdx-old
}

// Used pops one completed chain: its head and the bytes the device wrote.
func (d *Driver) Used() (head uint16, n uint32, ok bool, err error) {
	// Acquire: the used element is read after the index that published it.
	idx := uint16(atomic.LoadUint32((*uint32)(unsafe.Pointer(&d.used[0]))) >> 16)
	if idx == d.lastUsed {
		return 0, 0, false, nil
	}
	slot := 4 + 8*int(d.lastUsed&(d.size-1))
	id := binary.LittleEndian.Uint32(d.used[slot:])
	n = binary.LittleEndian.Uint32(d.used[slot+4:])
	d.lastUsed++
	if id >= uint32(d.size) || d.chainLen[id] == 0 {
		return 0, 0, false, fmt.Errorf("device returned bad head %d: %w", id, ErrBrokenRing)
	}
	head = uint16(id)
	i := head
	for k := d.chainLen[head]; k > 0; k-- {
		d.free = append(d.free, i)
		i = d.next[i]
	}
	d.chainLen[head] = 0
	return head, n, true, nil
}

// EnableInterrupts asks the device to signal the next completion and
// reports whether completions arrived meanwhile.
func (d *Driver) EnableInterrupts() bool {
	if d.eventIdx {
		store16(d.avail, 4+2*int(d.size), d.lastUsed) // used_event
	}
	// Barrier: used_event before re-reading used->idx (virtio_mb).
	d.fenceWord.Add(1)
	idx := uint16(atomic.LoadUint32((*uint32)(unsafe.Pointer(&d.used[0]))) >> 16)
	return idx != d.lastUsed
}
