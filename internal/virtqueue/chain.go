package virtqueue

import (
	"encoding/binary"
	"fmt"
	"math"
)

// Chain is one descriptor chain, translated to host memory.
type Chain struct {
	Head uint16   // head index, to hand back to Queue.Push
	In   [][]byte // device-readable buffers (the request), in order
	Out  [][]byte // device-writable buffers (the reply), in order
	// OutAddr[i] is the guest physical address of Out[i], for dirty
	// page logging during migration.
	OutAddr []uint64
	// InLen and OutLen are the byte totals of In and Out.
	InLen, OutLen uint32
}

// desc is one descriptor, copied out of guest memory so that the guest
// cannot change it between validation and use.
type desc struct {
	addr  uint64
	len   uint32
	flags uint16
	next  uint16
}

func readDesc(table []byte, i uint32) desc {
	b := table[DescSize*int(i):][:DescSize]
	return desc{
		addr:  binary.LittleEndian.Uint64(b[0:]),
		len:   binary.LittleEndian.Uint32(b[8:]),
		flags: binary.LittleEndian.Uint16(b[12:]),
		next:  binary.LittleEndian.Uint16(b[14:]),
	}
}

// ReadChain walks the chain starting at head and translates its buffers
// through mem. It only reads the descriptor table and guest memory; see
// the package doc for everything it checks. Errors wrap ErrBrokenRing or
// ErrBadAddress. The slices alias mem, so the caller must keep a reference
// on mem until it is done with them.
func (q *Queue) ReadChain(mem *Memory, head uint16) (*Chain, error) {
	c := new(Chain)
	if err := q.ReadChainInto(c, mem, head); err != nil {
		return nil, err
	}
	return c, nil
}

// ReadChainInto is ReadChain into a caller-owned Chain, reusing its
// slices' storage, so a ring that keeps one Chain per head reads chains
// without allocating. On error c holds a partial chain.
func (q *Queue) ReadChainInto(c *Chain, mem *Memory, head uint16) error {
	*c = Chain{Head: head, In: c.In[:0], Out: c.Out[:0], OutAddr: c.OutAddr[:0]}
	if head >= q.size {
		return fmt.Errorf("head %d out of range, queue size %d: %w", head, q.size, ErrBrokenRing)
	}
	table := q.desc
	tableLen := uint32(q.size)
	indirect := false
	var inLen, outLen uint64
	i := uint32(head)
	// The spec (§2.7.5.3.1, §2.7.13.3) bounds a chain, indirect
	// descriptors included, by the queue size; counting every visited
	// descriptor against it also stops loops.
	for count := 0; ; count++ {
		if count >= int(q.size) {
			return fmt.Errorf("chain at head %d longer than queue size %d: %w", head, q.size, ErrBrokenRing)
		}
		d := readDesc(table, i)
		if d.flags&DescFIndirect != 0 {
			switch {
			case !q.features.IndirectDesc:
				return fmt.Errorf("chain at head %d: indirect descriptor not negotiated: %w", head, ErrBrokenRing)
			case indirect:
				return fmt.Errorf("chain at head %d: nested indirect table: %w", head, ErrBrokenRing)
			case d.flags&DescFNext != 0:
				return fmt.Errorf("chain at head %d: indirect descriptor with NEXT: %w", head, ErrBrokenRing)
			case d.len == 0 || d.len%DescSize != 0:
				return fmt.Errorf("chain at head %d: indirect table length %d: %w", head, d.len, ErrBrokenRing)
			}
			t, err := mem.Slice(d.addr, uint64(d.len))
			if err != nil {
				return fmt.Errorf("chain at head %d: indirect table: %w", head, err)
			}
			table, tableLen, indirect, i = t, d.len/DescSize, true, 0
			continue
		}
		var err error
		if d.flags&DescFWrite != 0 {
			outLen += uint64(d.len)
			before := len(c.Out)
			c.Out, err = mem.Translate(c.Out, d.addr, uint64(d.len))
			g := d.addr
			for _, e := range c.Out[before:] {
				c.OutAddr = append(c.OutAddr, g)
				g += uint64(len(e))
			}
		} else {
			if len(c.Out) > 0 || outLen > 0 {
				return fmt.Errorf("chain at head %d: device-readable descriptor after a writable one: %w", head, ErrBrokenRing)
			}
			inLen += uint64(d.len)
			c.In, err = mem.Translate(c.In, d.addr, uint64(d.len))
		}
		if err != nil {
			return fmt.Errorf("chain at head %d: %w", head, err)
		}
		if inLen > math.MaxUint32 || outLen > math.MaxUint32 {
			return fmt.Errorf("chain at head %d: more than 4 GiB of buffers: %w", head, ErrBrokenRing)
		}
		if d.flags&DescFNext == 0 {
			break
		}
		if uint32(d.next) >= tableLen {
			return fmt.Errorf("chain at head %d: next %d out of range %d: %w", head, d.next, tableLen, ErrBrokenRing)
		}
		i = uint32(d.next)
	}
	c.InLen, c.OutLen = uint32(inLen), uint32(outLen)
	return nil
}
