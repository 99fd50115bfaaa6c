package engine

import "encoding/binary"

// FUSE request extensions (protocol 7.37+): the caller's supplementary
// group for creates (FUSE_CREATE_SUPP_GROUP). go-fuse parses extensions but
// does not hand them to the RawFileSystem, so the engine reads the one the
// file system needs itself and passes it along keyed by the request's
// unique.

// SuppGroupsReceiver is implemented by a file system that honours
// FUSE_CREATE_SUPP_GROUP: SetSuppGroups announces the groups of request
// unique before it is served and returns a function to call after.
type SuppGroupsReceiver interface {
	SetSuppGroups(unique uint64, groups []uint32) (done func())
}

const (
	opSymlink = 6
	opMknod   = 8
	opMkdir   = 9
	opCreate  = 35
	opTmpfile = 51

	extGroups = 32 // FUSE_EXT_GROUPS
)

// createOp reports whether op creates a file (and may carry groups).
func createOp(op uint32) bool {
	switch op {
	case opSymlink, opMknod, opMkdir, opCreate, opTmpfile:
		return true
	}
	return false
}

// suppGroups returns the supplementary groups extension of a request, or
// nil. A malformed extension yields nil; go-fuse rejects the request.
func suppGroups(in [][]byte) []uint32 {
	if len(in) == 0 || len(in[0]) < inHeaderSize {
		return nil
	}
	extLen := int(binary.LittleEndian.Uint16(in[0][36:])) * 8
	length := int(binary.LittleEndian.Uint32(in[0][0:]))
	if extLen == 0 || length < inHeaderSize+extLen {
		return nil
	}
	var req []byte
	if len(in[0]) >= length {
		req = in[0][:length]
	} else {
		for _, b := range in {
			req = append(req, b...)
		}
		if len(req) < length {
			return nil
		}
		req = req[:length]
	}
	ext := req[length-extLen:]
	for len(ext) >= 8 {
		size := int(binary.LittleEndian.Uint32(ext[0:]))
		typ := binary.LittleEndian.Uint32(ext[4:])
		if size < 8 || size > len(ext) {
			return nil
		}
		if typ == extGroups && size >= 12 {
			n := int(binary.LittleEndian.Uint32(ext[8:]))
			if 12+4*n > size {
				return nil
			}
			g := make([]uint32, n)
			for i := range g {
				g[i] = binary.LittleEndian.Uint32(ext[12+4*i:])
			}
			return g
		}
		ext = ext[(size+7)&^7:]
	}
	return nil
}
