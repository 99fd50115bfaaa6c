package vhostfront

import (
	"fmt"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// FUSE opcodes (include/uapi/linux/fuse.h); go-fuse keeps its own
// unexported.
const (
	OpLookup      = 1
	OpForget      = 2
	OpGetattr     = 3
	OpOpen        = 14
	OpRead        = 15
	OpStatfs      = 17
	OpRelease     = 18
	OpInit        = 26
	OpOpendir     = 27
	OpReaddir     = 28
	OpReleasedir  = 29
	OpDestroy     = 38
	OpBatchForget = 42
	OpReaddirplus = 44
)

// Queue indices of a virtio-fs device.
const (
	HiprioQueue  = 0
	RequestQueue = 1 // the first request queue
)

const (
	inHeaderSize  = int(unsafe.Sizeof(fuse.InHeader{}))
	outHeaderSize = int(unsafe.Sizeof(fuse.OutHeader{}))
)

// structBytes views a wire struct as bytes (go-fuse's structs have the
// kernel's layout; the host is little-endian).
func structBytes[T any](p *T) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(p)), unsafe.Sizeof(*p))
}

// argBytes returns the bytes of a go-fuse "…In" struct after its embedded
// InHeader.
func argBytes[T any](p *T) []byte { return structBytes(p)[inHeaderSize:] }

// Reply is a FUSE reply.
type Reply struct {
	Header fuse.OutHeader
	Body   []byte
}

// Status returns the reply's status.
func (r *Reply) Status() fuse.Status { return fuse.Status(-r.Header.Status) }

// FUSE sends one FUSE request on queue qi: the header is filled in, arg
// is the opcode's argument struct (without the InHeader), payload follows
// it (names, data). outLen is the reply body size to make room for; with
// outLen < 0 no reply is expected (FORGET) and nil is returned.
func (f *Frontend) FUSE(qi int, opcode uint32, nodeid uint64, arg, payload []byte, outLen int) (*Reply, error) {
	h := fuse.InHeader{
		Length: uint32(inHeaderSize + len(arg) + len(payload)),
		Opcode: opcode,
		Unique: f.unique.Add(1),
		NodeId: nodeid,
	}
	in := [][]byte{structBytes(&h), arg, payload}
	if outLen < 0 {
		_, err := f.Do(qi, in, 0)
		return nil, err
	}
	out, err := f.Do(qi, in, outHeaderSize+outLen)
	if err != nil {
		return nil, err
	}
	if len(out) < outHeaderSize {
		return nil, fmt.Errorf("vhostfront: %s reply of %d bytes", opName(opcode), len(out))
	}
	r := &Reply{}
	copy(structBytes(&r.Header), out)
	if int(r.Header.Length) != len(out) {
		return nil, fmt.Errorf("vhostfront: %s reply header says %d bytes, used ring %d", opName(opcode), r.Header.Length, len(out))
	}
	if r.Header.Unique != h.Unique {
		return nil, fmt.Errorf("vhostfront: %s reply for unique %d, sent %d", opName(opcode), r.Header.Unique, h.Unique)
	}
	r.Body = out[outHeaderSize:]
	return r, nil
}

func opName(op uint32) string { return fmt.Sprintf("opcode %d", op) }

// decode copies a reply body into a wire struct; short bodies are an error.
func decode[T any](r *Reply, v *T) error {
	b := structBytes(v)
	if len(r.Body) < len(b) {
		return fmt.Errorf("vhostfront: reply body of %d bytes, want %d", len(r.Body), len(b))
	}
	copy(b, r.Body)
	return nil
}

// Init sends FUSE_INIT with the kernel's version and flags (0: none).
func (f *Frontend) Init(flags uint32) (*fuse.InitOut, fuse.Status, error) {
	in := fuse.InitIn{Major: 7, Minor: 38, MaxReadAhead: 128 << 10, Flags: flags}
	r, err := f.FUSE(RequestQueue, OpInit, 0, argBytes(&in), nil, int(unsafe.Sizeof(fuse.InitOut{})))
	if err != nil {
		return nil, 0, err
	}
	if !r.Status().Ok() {
		return nil, r.Status(), nil
	}
	var out fuse.InitOut
	// Old servers send a shorter InitOut; take what came.
	copy(structBytes(&out), r.Body)
	return &out, fuse.OK, nil
}

// GetAttr sends FUSE_GETATTR for nodeid.
func (f *Frontend) GetAttr(nodeid uint64) (*fuse.AttrOut, fuse.Status, error) {
	var in fuse.GetAttrIn
	r, err := f.FUSE(RequestQueue, OpGetattr, nodeid, argBytes(&in), nil, int(unsafe.Sizeof(fuse.AttrOut{})))
	if err != nil || !r.Status().Ok() {
		return nil, statusOf(r), err
	}
	var out fuse.AttrOut
	return &out, fuse.OK, decode(r, &out)
}

// Lookup sends FUSE_LOOKUP for name in parent.
func (f *Frontend) Lookup(parent uint64, name string) (*fuse.EntryOut, fuse.Status, error) {
	r, err := f.FUSE(RequestQueue, OpLookup, parent, nil, append([]byte(name), 0), int(unsafe.Sizeof(fuse.EntryOut{})))
	if err != nil || !r.Status().Ok() {
		return nil, statusOf(r), err
	}
	var out fuse.EntryOut
	return &out, fuse.OK, decode(r, &out)
}

// StatFs sends FUSE_STATFS.
func (f *Frontend) StatFs(nodeid uint64) (*fuse.StatfsOut, fuse.Status, error) {
	r, err := f.FUSE(RequestQueue, OpStatfs, nodeid, nil, nil, int(unsafe.Sizeof(fuse.StatfsOut{})))
	if err != nil || !r.Status().Ok() {
		return nil, statusOf(r), err
	}
	var out fuse.StatfsOut
	return &out, fuse.OK, decode(r, &out)
}

// Forget sends FUSE_FORGET on the hiprio queue (no reply).
func (f *Frontend) Forget(nodeid, nlookup uint64) error {
	in := fuse.ForgetIn{Nlookup: nlookup}
	_, err := f.FUSE(HiprioQueue, OpForget, nodeid, argBytes(&in), nil, -1)
	return err
}

func statusOf(r *Reply) fuse.Status {
	if r == nil {
		return fuse.EIO
	}
	return r.Status()
}

// Open sends FUSE_OPEN and returns the file handle.
func (f *Frontend) Open(qi int, nodeid uint64, flags uint32) (uint64, fuse.Status, error) {
	in := fuse.OpenIn{Flags: flags}
	r, err := f.FUSE(qi, OpOpen, nodeid, argBytes(&in), nil, int(unsafe.Sizeof(fuse.OpenOut{})))
	if err != nil || !r.Status().Ok() {
		return 0, statusOf(r), err
	}
	var out fuse.OpenOut
	return out.Fh, fuse.OK, decode(r, &out)
}

// Read sends FUSE_READ and returns the data.
func (f *Frontend) Read(qi int, nodeid, fh, off uint64, size uint32) ([]byte, fuse.Status, error) {
	in := fuse.ReadIn{Fh: fh, Offset: off, Size: size}
	r, err := f.FUSE(qi, OpRead, nodeid, argBytes(&in), nil, int(size))
	if err != nil || !r.Status().Ok() {
		return nil, statusOf(r), err
	}
	return r.Body, fuse.OK, nil
}

// Release sends FUSE_RELEASE.
func (f *Frontend) Release(qi int, nodeid, fh uint64) (fuse.Status, error) {
	in := fuse.ReleaseIn{Fh: fh}
	r, err := f.FUSE(qi, OpRelease, nodeid, argBytes(&in), nil, 0)
	return statusOf(r), err
}
