package nodestore

import (
	"testing"
)

// FuzzDecodeSlot feeds arbitrary slot bytes to the decoder: it must never
// panic, and must accept only what encodeSlot produced.
func FuzzDecodeSlot(f *testing.F) {
	m := newMacer(make([]byte, 32), 9)
	for _, r := range []Record{
		{ID: 3, Mount: 1, Ino: 2, Name: "a", Handle: []byte{1, 2}},
		{ID: 3, Name: string(make([]byte, 250)), Handle: make([]byte, 100)},
	} {
		var b slotBuf
		m.encodeSlot(&b, &r, 0)
		f.Add(b.main[:], b.ext[:])
	}
	f.Fuzz(func(t *testing.T, main, ext []byte) {
		var b slotBuf
		copy(b.main[:], main)
		copy(b.ext[:], ext)
		var r Record
		if m.decodeSlot(&b, 3, &r) == slotOK {
			var again slotBuf
			m.encodeSlot(&again, &r, 0)
			if again.main != b.main && !(b.main[offFlags]&flagExt != 0) {
				t.Fatalf("accepted a slot encodeSlot would not write")
			}
		}
	})
}

// FuzzDecodeMounts: arbitrary mounts files never panic the decoder.
func FuzzDecodeMounts(f *testing.F) {
	key := make([]byte, 32)
	f.Add(encodeMounts([]MountRecord{{Path: "a/b", Dev: 3}}, key, 1))
	f.Fuzz(func(t *testing.T, b []byte) {
		decodeMounts(b, key, 1)
		// With a valid MAC over garbage, too.
		if len(b) >= 12 {
			body := append([]byte(mountsMagic), b[8:]...)
			decodeMounts(append(body, mountsMAC(body, key, 1)...), key, 1)
		}
	})
}

// FuzzDecodeHeader: arbitrary header bytes never panic the decoder.
func FuzzDecodeHeader(f *testing.F) {
	key := make([]byte, 32)
	h := header{generation: 5, reserved: 9, indexSeq: 1, indexBits: minIndexBits}
	f.Add(h.encode(key))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < headerSize {
			b = append(b, make([]byte, headerSize-len(b))...)
		}
		decodeHeader(b[:headerSize], key)
	})
}
