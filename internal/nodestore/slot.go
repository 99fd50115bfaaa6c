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
//	0   state     1 = live (0 = empty: never written, deleted or lost)
//	1   nameLen
//	2   handleLen
//	3   flags     flagExt: name and handle live in an overflow slot
//	4   mount     u32
//	8   type      u32
//	12  handleType i32
//	16  ino       u64
//	24  parent    u64
//	32  id        u64
//	40  inline    [200] name ‖ handle, or (flagExt) the overflow slot number u64
//	240 MAC       [16]
//
// Name and handle take 200 bytes or less for nearly every file (handles
// are 8–40 bytes), so a record is one 256-byte slot. Longer ones go to a
// 384-byte slot of the overflow file records.ext, allocated by appending;
// an Update or Delete of such a record leaks its old overflow slot.
//
// MAC = HMAC-SHA256(recordKey, generation ‖ slot[0:40] ‖ [overflow slot
// number] ‖ name ‖ handle)[:16]. Every unused byte of both slots must be
// zero, so every byte is covered.
const (
	slotSize    = 256
	inlineLen   = 200
	slotMACOff  = slotSize - macLen
	macLen      = 16
	extSlotSize = MaxNameLen + MaxHandleLen + 1 // 384

	offNameLen   = 1
	offHandleLen = 2
	offFlags     = 3
	offMount     = 4
	offType      = 8
	offHType     = 12
	offIno       = 16
	offParent    = 24
	offID        = 32
	offInline    = 40

	stateLive = 1
	flagExt   = 1
)

// slotBuf holds one record's bytes on their way to or from the files.
type slotBuf struct {
	main [slotSize]byte
	ext  [extSlotSize]byte
}

// needsExt reports whether r needs an overflow slot.
func needsExt(r *Record) bool { return len(r.Name)+len(r.Handle) > inlineLen }

// extIndex returns the overflow slot number of an encoded slot.
func extIndex(b []byte) (uint64, bool) {
	if b[offFlags]&flagExt == 0 {
		return 0, false
	}
	return binary.LittleEndian.Uint64(b[offInline:]), true
}

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

// slotMAC computes the MAC of main slot b whose name ‖ handle is payload.
func (m *macer) slotMAC(out *[macLen]byte, b, payload []byte) {
	st := m.pool.Get().(*macState)
	st.h.Reset()
	st.h.Write(m.gen[:])
	st.h.Write(b[:offInline])
	if b[offFlags]&flagExt != 0 {
		st.h.Write(b[offInline : offInline+8])
	}
	st.h.Write(payload)
	copy(out[:], st.h.Sum(st.sum[:0]))
	m.pool.Put(st)
}

// encodeSlot fills buf.main (and buf.ext if needsExt(r), with overflow
// slot number ext) with r, sealed.
func (m *macer) encodeSlot(buf *slotBuf, r *Record, ext uint64) {
	b := buf.main[:]
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
	payload := b[offInline:]
	if needsExt(r) {
		b[offFlags] = flagExt
		le.PutUint64(b[offInline:], ext)
		clear(buf.ext[:])
		payload = buf.ext[:]
	}
	n := copy(payload, r.Name)
	n += copy(payload[n:], r.Handle)
	var mac [macLen]byte
	m.slotMAC(&mac, b, payload[:n])
	copy(b[slotMACOff:], mac[:])
}

type slotStatus int

const (
	slotOK slotStatus = iota
	slotEmpty
	slotBad
)

// decodeSlot verifies buf as the record of id and decodes it into r.
// buf.ext must hold the overflow slot if the main slot names one. An
// all-zero slot is empty; anything else that fails the MAC, names another
// id or has nonzero unused bytes is bad.
func (m *macer) decodeSlot(buf *slotBuf, id NodeID, r *Record) slotStatus {
	b := buf.main[:]
	if b[0] == 0 && isZero(b) {
		return slotEmpty
	}
	nl, hl := int(b[offNameLen]), int(b[offHandleLen])
	if hl > MaxHandleLen || b[offFlags]&^flagExt != 0 {
		return slotBad
	}
	var payload []byte
	if b[offFlags]&flagExt != 0 {
		if nl+hl <= inlineLen || !isZero(b[offInline+8:slotMACOff]) || !isZero(buf.ext[nl+hl:]) {
			return slotBad
		}
		payload = buf.ext[:nl+hl]
	} else {
		if nl+hl > inlineLen || !isZero(b[offInline+nl+hl:slotMACOff]) {
			return slotBad
		}
		payload = b[offInline : offInline+nl+hl]
	}
	var mac [macLen]byte
	m.slotMAC(&mac, b, payload)
	if !hmac.Equal(mac[:], b[slotMACOff:]) {
		return slotBad
	}
	// The MAC verified, so the fields below were written by this store's
	// key holder; the checks are defence in depth.
	le := binary.LittleEndian
	if b[0] != stateLive || NodeID(le.Uint64(b[offID:])) != id {
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
		cp := append([]byte(nil), payload...)
		if nl > 0 {
			r.Name = unsafe.String(&cp[0], nl)
		}
		if hl > 0 {
			r.Handle = cp[nl : nl+hl : nl+hl]
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
