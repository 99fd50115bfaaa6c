package engine

import (
	"bytes"
	"sync"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// The metadata requests a guest sends most after LOOKUP and GETATTR: what
// open(2), close(2), creat(2), mkdir(2), unlink(2), rmdir(2), chmod(2) and
// the kernel's inode eviction cost. The engine answers them as it answers
// GETATTR (see getattr), without go-fuse's ProtocolServer: its dispatcher
// allocates a request struct (~1 KiB) and a channel per request, which for
// CREATE+RELEASE+UNLINK was 90 % of the bytes allocated per file (3 KiB)
// and, at 40k files/s, a GC cycle every few hundred ms. The file system
// methods are go-fuse's RawFileSystem's, called with the request as go-fuse
// would pass it; the reply bytes are go-fuse's (TestMetaFastPath compares
// them). None of these requests blocks in this file system, so there is
// nothing for an INTERRUPT to cancel.
//
// A request goes to go-fuse instead (which answers or refuses it as it
// should) when it is not exactly the size its opcode implies (a fixed
// argument, or an argument and a name of 1 to metaNameMax bytes), carries
// request extensions (supplementary groups: the rare create in a directory
// of another group), names go-fuse's poll hack, or its reply buffer is too
// small.

const (
	opForget     = 2
	opSetattr    = 4
	opUnlink     = 10
	opRmdir      = 11
	opOpen       = 14
	opRelease    = 18
	opFlush      = 25
	opOpendir    = 27
	opReleasedir = 29
)

// metaOp says, for an opcode the fast path takes, the size of its fixed
// argument (after the header), whether a name follows it, and the size of
// the reply body (-1: no reply at all).
type metaOp struct {
	arg   int
	named bool
	body  int
	taken bool
}

// metaOps is indexed by opcode.
var metaOps = func() (t [64]metaOp) {
	arg := func(size uintptr) int { return int(size) - inHeaderSize }
	t[opForget] = metaOp{arg(unsafe.Sizeof(fuse.ForgetIn{})), false, -1, true}
	t[opSetattr] = metaOp{arg(unsafe.Sizeof(fuse.SetAttrIn{})), false, attrOutSize, true}
	t[opMkdir] = metaOp{arg(unsafe.Sizeof(fuse.MkdirIn{})), true, entryOutSize, true}
	t[opUnlink] = metaOp{0, true, 0, true}
	t[opRmdir] = metaOp{0, true, 0, true}
	t[opOpen] = metaOp{arg(unsafe.Sizeof(fuse.OpenIn{})), false, openOutSize, true}
	t[opRelease] = metaOp{arg(unsafe.Sizeof(fuse.ReleaseIn{})), false, 0, true}
	t[opFlush] = metaOp{arg(unsafe.Sizeof(fuse.FlushIn{})), false, 0, true}
	t[opOpendir] = metaOp{arg(unsafe.Sizeof(fuse.OpenIn{})), false, openOutSize, true}
	t[opReleasedir] = metaOp{arg(unsafe.Sizeof(fuse.ReleaseIn{})), false, 0, true}
	t[opCreate] = metaOp{arg(unsafe.Sizeof(fuse.CreateIn{})), true, createOutSize, true}
	return t
}()

// isMetaOp reports whether the fast path takes op.
func isMetaOp(op uint32) bool { return op < uint32(len(metaOps)) && metaOps[op].taken }

const (
	openOutSize   = int(unsafe.Sizeof(fuse.OpenOut{}))
	createOutSize = int(unsafe.Sizeof(fuse.CreateOut{}))
	// metaNameMax bounds the name the fast path takes (a name is at most
	// 255 bytes and its NUL); a longer one goes to go-fuse.
	metaNameMax = 1024
	// metaInMax is the largest request the fast path takes: SETATTR's
	// argument is the largest fixed one, CREATE's with a name the
	// largest named one.
	metaInMax = inHeaderSize + 88 + metaNameMax
)

// metaBuf holds a request and its reply, the reply header and body back
// to back as they go on the wire. in and body are uint64 arrays so that the
// go-fuse structs laid over them are aligned. Pooled: handed to the file
// system through an interface, they would escape to the heap.
type metaBuf struct {
	in   [metaInMax / 8]uint64
	hdr  [outHeaderSize]byte
	body [createOutSize / 8]uint64
}

var metaBufs = sync.Pool{New: func() any { return new(metaBuf) }}

// metaBuf's reply header and body must be back to back.
var _ [0]struct{} = [unsafe.Offsetof(metaBuf{}.body) - unsafe.Offsetof(metaBuf{}.hdr) - outHeaderSize]struct{}{}

// meta answers a request of an opcode in metaOps; ok is false for one it
// leaves to go-fuse (see above).
func (e *Engine) meta(op uint32, in, out [][]byte) (n int, ok bool) {
	m := metaOps[op]
	total := iovLen(in)
	fixed := inHeaderSize + m.arg
	if total < fixed || total > fixed+metaNameMax || (total > fixed) != m.named || iovLen(out) < outHeaderSize+max(m.body, 0) {
		return 0, false
	}
	b := metaBufs.Get().(*metaBuf)
	defer metaBufs.Put(b)
	raw := unsafe.Slice((*byte)(unsafe.Pointer(&b.in[0])), total)
	gather(raw, in)
	h := (*fuse.InHeader)(unsafe.Pointer(&b.in[0]))
	if h.Length != uint32(total) || h.TotalExtlen != 0 || h.NodeId == pollHackInode {
		return 0, false
	}
	var name string
	if m.named {
		nb := raw[fixed:]
		if i := bytes.IndexByte(nb, 0); i >= 0 {
			nb = nb[:i]
		}
		if h.NodeId == fuse.FUSE_ROOT_ID && string(nb) == pollHackName {
			return 0, false
		}
		name = string(nb)
	}
	arg := unsafe.Pointer(&b.in[0])
	body := unsafe.Pointer(&b.body[0])
	clear(b.body[:])
	st := fuse.OK
	switch op {
	case opForget:
		e.fs.Forget(h.NodeId, (*fuse.ForgetIn)(arg).Nlookup)
		return 0, true // FORGET has no reply
	case opSetattr:
		st = e.fs.SetAttr(nil, (*fuse.SetAttrIn)(arg), (*fuse.AttrOut)(body))
	case opMkdir:
		st = e.fs.Mkdir(nil, (*fuse.MkdirIn)(arg), name, (*fuse.EntryOut)(body))
	case opUnlink:
		st = e.fs.Unlink(nil, h, name)
	case opRmdir:
		st = e.fs.Rmdir(nil, h, name)
	case opOpen:
		st = e.fs.Open(nil, (*fuse.OpenIn)(arg), (*fuse.OpenOut)(body))
	case opRelease:
		e.fs.Release(nil, (*fuse.ReleaseIn)(arg))
	case opFlush:
		st = e.fs.Flush(nil, (*fuse.FlushIn)(arg))
	case opOpendir:
		st = e.fs.OpenDir(nil, (*fuse.OpenIn)(arg), (*fuse.OpenOut)(body))
	case opReleasedir:
		e.fs.ReleaseDir((*fuse.ReleaseIn)(arg))
	case opCreate:
		st = e.fs.Create(nil, (*fuse.CreateIn)(arg), name, (*fuse.CreateOut)(body))
	}
	return reply(out, &b.hdr, st, h.Unique, m.body), true
}

// pollHackInode is the nodeid go-fuse's poll hack answers for.
const pollHackInode = ^uint64(0)
