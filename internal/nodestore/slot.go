package nodestore

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"hash"
	"sync"
	"unsafe"
)

// Record slot layout in the records file (little endian). Slot i lives at
// offset i*slotSize; slot 0 is never used.
//
//	0   state   1 = live (0 = empty: never written, deleted or lost)
//	1   nameLen
//	2   handleLen
//	3   reserved, 0
//	4   mount     u32
//	8   type      u32
//	12  handleType i32
//	16  ino       u64
//	24  parent    u64
//	32  id        u64
//	40  name      [255]
//	295 handle    [128]
//	423 zero padding
//	496 MAC       [16] = HMAC-SHA256(recordKey, generation ‖ slot[0:40] ‖ name ‖ handle)[:16]
//
// Every unused byte (after the name, after the handle, padding) must be zero.
const (
	slotSize   = 512
	slotMACOff = slotSize - macLen
	macLen     = 16

	offNameLen   = 1
	offHandleLen = 2
	offMount     = 4
	offType      = 8
	offHType     = 12
	offIno       = 16
	offParent    = 24
	offID        = 32
	offName      = 40
	offHandle    = offName + MaxNameLen
	offPad       = offHandle + MaxHandleLen

	stateLive = 1
)

// macer computes the record MAC. HMAC states are pooled: hmac.New costs
// allocations and two compression rounds for the padded key.
type macer struct {
	gen  [8]byte
	pool sync.Pool // of *macState
}

type macState struct {
	h   hash.Hash
	sum [sha256.Size]byte
}

func newMacer(key []byte, gen uint64) *macer {
	m := &macer{}
	binary.LittleEndian.PutUint64(m.gen[:], gen)
	k := append([]byte(nil), key...)
	m.pool.New = func() any { return &macState{h: hmac.New(sha256.New, k)} }
	return m
}

// slotMAC computes the MAC of a slot into out: HMAC-SHA256(recordKey,
// generation ‖ fixed fields ‖ name ‖ handle)[:16]. The unused parts of the
// name and handle fields and the padding are not hashed (that would
// quadruple the cost for typical names); decodeSlot requires them to be
// zero instead, so every byte of the slot is still covered.
func (m *macer) slotMAC(out *[macLen]byte, b []byte) {
	nl, hl := int(b[offNameLen]), int(b[offHandleLen])
	st := m.pool.Get().(*macState)
	st.h.Reset()
	st.h.Write(m.gen[:])
	st.h.Write(b[:offName])
	st.h.Write(b[offName : offName+nl])
	st.h.Write(b[offHandle : offHandle+min(hl, MaxHandleLen)])
	copy(out[:], st.h.Sum(st.sum[:0]))
	m.pool.Put(st)
}

// encodeSlot fills b (slotSize bytes) with r, sealed.
func (m *macer) encodeSlot(b []byte, r *Record) {
	clear(b)
	b[0] = stateLive
	b[offNameLen] = byte(len(r.Name))
	b[offHandleLen] = byte(len(r.Handle))
	le := binary.LittleEndian
	le.PutUint32(b[offMount:], r.Mount)
	le.PutUint32(b[offType:], r.Type)
	le.PutUint32(b[offHType:], uint32(r.HandleType))
	le.PutUint64(b[offIno:], r.Ino)
	le.PutUint64(b[offParent:], uint64(r.Parent))
	le.PutUint64(b[offID:], uint64(r.ID))
	copy(b[offName:], r.Name)
	copy(b[offHandle:], r.Handle)
	var mac [macLen]byte
	m.slotMAC(&mac, b)
	copy(b[slotMACOff:], mac[:])
}

type slotStatus int

const (
	slotOK slotStatus = iota
	slotEmpty
	slotBad
)

// decodeSlot verifies b as the slot of id and decodes it. An all-zero slot
// is empty; anything else that fails the MAC, names another id or has
// nonzero padding is bad.
func (m *macer) decodeSlot(b []byte, id NodeID, r *Record) slotStatus {
	if b[0] == 0 && isZero(b) {
		return slotEmpty
	}
	nl, hl := int(b[offNameLen]), int(b[offHandleLen])
	if hl > MaxHandleLen || !isZero(b[offName+nl:offHandle]) || !isZero(b[offHandle+hl:slotMACOff]) {
		return slotBad
	}
	var mac [macLen]byte
	m.slotMAC(&mac, b)
	if !hmac.Equal(mac[:], b[slotMACOff:]) {
		return slotBad
	}
	// The MAC verified, so the fields below were written by this store's
	// key holder; the checks are defence in depth.
	le := binary.LittleEndian
	if b[0] != stateLive || b[3] != 0 || NodeID(le.Uint64(b[offID:])) != id {
		return slotBad
	}
	r.ID = id
	r.Mount = le.Uint32(b[offMount:])
	r.Type = le.Uint32(b[offType:])
	r.HandleType = int32(le.Uint32(b[offHType:]))
	r.Ino = le.Uint64(b[offIno:])
	r.Parent = NodeID(le.Uint64(b[offParent:]))
	// One allocation for name and handle; neither is written afterwards,
	// which makes the unsafe.String sound.
	r.Name, r.Handle = "", nil
	if nl+hl > 0 {
		buf := make([]byte, nl+hl)
		copy(buf, b[offName:offName+nl])
		copy(buf[nl:], b[offHandle:offHandle+hl])
		if nl > 0 {
			r.Name = unsafe.String(&buf[0], nl)
		}
		if hl > 0 {
			r.Handle = buf[nl : nl+hl : nl+hl]
		}
	}
	return slotOK
}

// slotKey reads (mount, ino) of a slot without verifying it; callers use it
// only where a wrong answer costs a cache miss, never a wrong record.
func slotKey(b []byte) inoKey {
	le := binary.LittleEndian
	return inoKey{le.Uint32(b[offMount:]), le.Uint64(b[offIno:])}
}

func isZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
