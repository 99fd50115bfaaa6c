package virtqueue

import (
	"errors"
	"fmt"
	"math"
	"os"
	"sort"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// RegionLayout is one guest memory region as the vhost-user front-end
// describes it (struct vhost_user_memory_region).
type RegionLayout struct {
	GuestPhysAddr uint64 // guest physical address of the first byte
	Size          uint64 // length in bytes
	UserAddr      uint64 // the front-end's virtual address of the first byte
	MmapOffset    uint64 // offset of the first byte in the region's fd
}

func (l RegionLayout) String() string {
	return fmt.Sprintf("gpa=%#x size=%#x uaddr=%#x off=%#x", l.GuestPhysAddr, l.Size, l.UserAddr, l.MmapOffset)
}

// Validate checks the layout for overflow and emptiness.
func (l RegionLayout) Validate() error {
	switch {
	case l.Size == 0:
		return errors.New("empty memory region")
	case l.Size > math.MaxInt/2:
		return fmt.Errorf("memory region too large: %#x bytes", l.Size)
	case l.GuestPhysAddr > math.MaxUint64-l.Size+1:
		return fmt.Errorf("memory region %v: guest address overflows", l)
	case l.UserAddr > math.MaxUint64-l.Size+1:
		return fmt.Errorf("memory region %v: user address overflows", l)
	case l.MmapOffset > math.MaxInt64-l.Size:
		return fmt.Errorf("memory region %v: mmap offset overflows", l)
	}
	return nil
}

// gpaLast returns the last guest address of the region (inclusive), which
// avoids overflow for a region ending at 2^64.
func (l RegionLayout) gpaLast() uint64  { return l.GuestPhysAddr + (l.Size - 1) }
func (l RegionLayout) userLast() uint64 { return l.UserAddr + (l.Size - 1) }

// Region is one mapped guest memory region. See the package doc for the
// reference model.
type Region struct {
	layout RegionLayout
	data   []byte // len(data) == layout.Size; the guest's bytes
	// mapping is the whole mmap (it may start before data for an unaligned
	// mmap offset); nil when the memory is not owned by the Region.
	mapping []byte
	file    *os.File // the fd the front-end passed, kept for handover; may be nil
	refs    atomic.Int64
}

// MapRegion mmaps a region from f, which the Region takes ownership of (it
// is closed when the last reference is released, or here on error).
func MapRegion(f *os.File, l RegionLayout) (*Region, error) {
	if err := l.Validate(); err != nil {
		f.Close()
		return nil, err
	}
	// A mapping that reaches past the end of the file faults (SIGBUS) on
	// access; refuse it up front. (A front-end that shrinks the file
	// later can still cause faults: callers run guest-memory users with
	// debug.SetPanicOnFault.)
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() && uint64(fi.Size()) < l.MmapOffset+l.Size {
		f.Close()
		return nil, fmt.Errorf("memory region %v: file has only %d bytes", l, fi.Size())
	}
	page := uint64(os.Getpagesize())
	start := l.MmapOffset &^ (page - 1)
	lead := l.MmapOffset - start
	m, err := unix.Mmap(int(f.Fd()), int64(start), int(l.Size+lead), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("mmap memory region %v: %w", l, err)
	}
	r := &Region{layout: l, data: m[lead : lead+l.Size : lead+l.Size], mapping: m, file: f}
	r.refs.Store(1)
	return r, nil
}

// NewRegion wraps memory the caller owns (tests, or a front-end describing
// its own memory). len(data) must equal l.Size.
func NewRegion(l RegionLayout, data []byte) (*Region, error) {
	if err := l.Validate(); err != nil {
		return nil, err
	}
	if uint64(len(data)) != l.Size {
		return nil, fmt.Errorf("memory region %v: have %d bytes", l, len(data))
	}
	r := &Region{layout: l, data: data[:len(data):len(data)]}
	r.refs.Store(1)
	return r, nil
}

// Layout returns the region's layout.
func (r *Region) Layout() RegionLayout { return r.layout }

// File returns the fd the region was mapped from (nil for NewRegion). It
// stays owned by the Region.
func (r *Region) File() *os.File { return r.file }

// Release drops one reference; the last one unmaps the region and closes
// its file.
func (r *Region) Release() {
	n := r.refs.Add(-1)
	if n > 0 {
		return
	}
	if n < 0 {
		return // released too often: a caller bug; never unmap twice
	}
	if r.mapping != nil {
		_ = unix.Munmap(r.mapping)
	}
	r.mapping, r.data = nil, nil
	if r.file != nil {
		r.file.Close()
	}
}

func (r *Region) acquire() { r.refs.Add(1) }

// Memory is an immutable table of guest memory regions. See the package doc
// for its reference model.
type Memory struct {
	regions []*Region // sorted by GuestPhysAddr, disjoint in guest addresses
	refs    atomic.Int64
}

// NewMemory builds a table from regions, taking over one reference on each
// (on error too, so the caller need not release them). The result holds one
// reference for the caller.
func NewMemory(regions []*Region) (*Memory, error) {
	rs := append([]*Region(nil), regions...)
	sort.Slice(rs, func(i, j int) bool { return rs[i].layout.GuestPhysAddr < rs[j].layout.GuestPhysAddr })
	for i := 1; i < len(rs); i++ {
		if rs[i].layout.GuestPhysAddr <= rs[i-1].layout.gpaLast() {
			for _, r := range rs {
				r.Release()
			}
			return nil, fmt.Errorf("memory regions overlap: %v and %v", rs[i-1].layout, rs[i].layout)
		}
	}
	m := &Memory{regions: rs}
	m.refs.Store(1)
	return m, nil
}

// With returns a new table with r added; r's reference moves to the result.
// m is unchanged.
func (m *Memory) With(r *Region) (*Memory, error) {
	rs := make([]*Region, 0, len(m.regions)+1)
	for _, o := range m.regions {
		o.acquire()
		rs = append(rs, o)
	}
	return NewMemory(append(rs, r))
}

// Without returns a new table without the region matching l's guest address,
// size and user address, and whether one matched. m is unchanged.
func (m *Memory) Without(l RegionLayout) (*Memory, bool) {
	rs := make([]*Region, 0, len(m.regions))
	found := false
	for _, o := range m.regions {
		if !found && o.layout.GuestPhysAddr == l.GuestPhysAddr && o.layout.Size == l.Size && o.layout.UserAddr == l.UserAddr {
			found = true
			continue
		}
		o.acquire()
		rs = append(rs, o)
	}
	nm, err := NewMemory(rs) // cannot overlap: a subset of a valid table
	if err != nil {
		return nil, false
	}
	return nm, found
}

// Acquire adds a reference.
func (m *Memory) Acquire() *Memory { m.refs.Add(1); return m }

// Release drops a reference; the last one releases the regions.
func (m *Memory) Release() {
	n := m.refs.Add(-1)
	if n > 0 {
		return
	}
	if n < 0 {
		return // released too often: a caller bug; never release regions twice
	}
	for _, r := range m.regions {
		r.Release()
	}
	m.regions = nil
}

// Len returns the number of regions.
func (m *Memory) Len() int { return len(m.regions) }

// Regions returns the regions, sorted by guest address. The caller must not
// release them.
func (m *Memory) Regions() []*Region { return append([]*Region(nil), m.regions...) }

// findGPA returns the region containing gpa.
func (m *Memory) findGPA(gpa uint64) *Region {
	i := sort.Search(len(m.regions), func(i int) bool { return m.regions[i].layout.gpaLast() >= gpa })
	if i < len(m.regions) && m.regions[i].layout.GuestPhysAddr <= gpa {
		return m.regions[i]
	}
	return nil
}

// ErrBadAddress is wrapped by every translation failure.
var ErrBadAddress = errors.New("virtqueue: address not in guest memory")

// Translate appends to iov the host slices covering [gpa, gpa+length) of
// guest physical memory, one element per region crossed.
func (m *Memory) Translate(iov [][]byte, gpa uint64, length uint64) ([][]byte, error) {
	if length == 0 {
		return iov, nil
	}
	if gpa > math.MaxUint64-(length-1) {
		return iov, fmt.Errorf("guest range %#x+%#x overflows: %w", gpa, length, ErrBadAddress)
	}
	for length > 0 {
		r := m.findGPA(gpa)
		if r == nil {
			return iov, fmt.Errorf("guest address %#x: %w", gpa, ErrBadAddress)
		}
		off := gpa - r.layout.GuestPhysAddr
		n := min(length, r.layout.Size-off)
		iov = append(iov, r.data[off:off+n:off+n])
		length -= n
		gpa += n
	}
	return iov, nil
}

// Slice returns [gpa, gpa+length) of guest memory as one slice; the range
// must lie inside one region.
func (m *Memory) Slice(gpa, length uint64) ([]byte, error) {
	r := m.findGPA(gpa)
	if r == nil {
		return nil, fmt.Errorf("guest address %#x: %w", gpa, ErrBadAddress)
	}
	off := gpa - r.layout.GuestPhysAddr
	if length > r.layout.Size-off {
		return nil, fmt.Errorf("guest range %#x+%#x leaves its region %v: %w", gpa, length, r.layout, ErrBadAddress)
	}
	return r.data[off : off+length : off+length], nil
}

// UserSlice returns [va, va+length) of the front-end's address space as one
// slice; the range must lie inside one region. Ring addresses
// (SET_VRING_ADDR) are front-end addresses.
func (m *Memory) UserSlice(va, length uint64) ([]byte, error) {
	for _, r := range m.regions {
		if va < r.layout.UserAddr || va > r.layout.userLast() {
			continue
		}
		off := va - r.layout.UserAddr
		if length > r.layout.Size-off {
			return nil, fmt.Errorf("front-end range %#x+%#x leaves its region %v: %w", va, length, r.layout, ErrBadAddress)
		}
		return r.data[off : off+length : off+length], nil
	}
	return nil, fmt.Errorf("front-end address %#x: %w", va, ErrBadAddress)
}

// UserToGuest translates a front-end address to a guest physical address.
func (m *Memory) UserToGuest(va uint64) (uint64, bool) {
	for _, r := range m.regions {
		if va >= r.layout.UserAddr && va <= r.layout.userLast() {
			return r.layout.GuestPhysAddr + (va - r.layout.UserAddr), true
		}
	}
	return 0, false
}
