package engine

import (
	"encoding/binary"
	"reflect"
	"testing"
)

func TestSuppGroupsExtension(t *testing.T) {
	name := []byte("f\x00\x00\x00\x00\x00\x00\x00")
	ext := make([]byte, 16)
	binary.LittleEndian.PutUint32(ext[0:], 16)
	binary.LittleEndian.PutUint32(ext[4:], extGroups)
	binary.LittleEndian.PutUint32(ext[8:], 1)
	binary.LittleEndian.PutUint32(ext[12:], 4242)
	req := make([]byte, inHeaderSize+16)
	req = append(req, name...)
	req = append(req, ext...)
	binary.LittleEndian.PutUint32(req[0:], uint32(len(req)))
	binary.LittleEndian.PutUint32(req[4:], opCreate)
	binary.LittleEndian.PutUint16(req[36:], 2)
	if g := suppGroups([][]byte{req}); !reflect.DeepEqual(g, []uint32{4242}) {
		t.Errorf("groups %v, want [4242]", g)
	}
	// Split across iovecs, as from guest memory.
	if g := suppGroups([][]byte{req[:50], req[50:]}); !reflect.DeepEqual(g, []uint32{4242}) {
		t.Errorf("split: groups %v, want [4242]", g)
	}
	// Hostile: a count past the extension, a size past the request.
	bad := append([]byte(nil), req...)
	binary.LittleEndian.PutUint32(bad[len(bad)-8:], 1000)
	if g := suppGroups([][]byte{bad}); g != nil {
		t.Errorf("oversized count accepted: %v", g)
	}
	bad = append([]byte(nil), req...)
	binary.LittleEndian.PutUint32(bad[len(bad)-16:], 4096)
	if g := suppGroups([][]byte{bad}); g != nil {
		t.Errorf("oversized extension accepted: %v", g)
	}
	binary.LittleEndian.PutUint16(bad[36:], 200)
	if g := suppGroups([][]byte{bad}); g != nil {
		t.Errorf("extension longer than the request accepted: %v", g)
	}
}
