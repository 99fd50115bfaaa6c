package engine

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"reflect"
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// The metadata requests of the fast path (meta.go), on recFS: each call is
// logged with every input field the file system sees, and each reply
// carries values derived from them, so that comparing two engines' logs
// and replies compares what they passed and what they sent. A nodeid
// divisible by 3 fails with an errno derived from it.

func metaStatus(nodeid uint64) fuse.Status {
	if nodeid%3 == 0 {
		return fuse.Status(nodeid%200 + 1)
	}
	return fuse.OK
}

func (f recFS) SetAttr(cancel <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	*f.log = append(*f.log, fmt.Sprintf("setattr %+v", *in))
	out.Ino, out.Size, out.Mode, out.Uid = in.NodeId, in.Size, in.Mode, in.Owner.Uid
	out.SetTimeout(2e9)
	return metaStatus(in.NodeId)
}

func (f recFS) Mkdir(cancel <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) fuse.Status {
	*f.log = append(*f.log, fmt.Sprintf("mkdir %+v %q", *in, name))
	out.NodeId, out.Generation, out.Mode, out.Ino = in.NodeId+100, 7, in.Mode, uint64(len(name))
	return metaStatus(in.NodeId)
}

func (f recFS) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	*f.log = append(*f.log, fmt.Sprintf("create %+v %q", *in, name))
	out.NodeId, out.Mode, out.Ino = in.NodeId+200, in.Mode, uint64(len(name))
	out.Fh, out.OpenFlags = in.Unique*3, in.Flags
	return metaStatus(in.NodeId)
}

func (f recFS) Unlink(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	*f.log = append(*f.log, fmt.Sprintf("unlink %+v %q", *h, name))
	return metaStatus(h.NodeId)
}

func (f recFS) Rmdir(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	*f.log = append(*f.log, fmt.Sprintf("rmdir %+v %q", *h, name))
	return metaStatus(h.NodeId)
}

func (f recFS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	*f.log = append(*f.log, fmt.Sprintf("open %+v", *in))
	out.Fh, out.OpenFlags, out.BackingID = in.NodeId*5, in.Flags, int32(in.Mode)
	return metaStatus(in.NodeId)
}

func (f recFS) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	*f.log = append(*f.log, fmt.Sprintf("opendir %+v", *in))
	out.Fh, out.OpenFlags = in.NodeId*11, in.Flags
	return metaStatus(in.NodeId)
}

func (f recFS) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	*f.log = append(*f.log, fmt.Sprintf("release %+v", *in))
}

func (f recFS) ReleaseDir(in *fuse.ReleaseIn) {
	*f.log = append(*f.log, fmt.Sprintf("releasedir %+v", *in))
}

func (f recFS) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	*f.log = append(*f.log, fmt.Sprintf("flush %+v", *in))
	return metaStatus(in.NodeId)
}

// metaRequest is a request of op for nodeid with the argument arg (bytes
// i*13+op, so that every field has a value) and, if name is not nil, the
// name and its NUL.
func metaRequest(op uint32, unique, nodeid uint64, name []byte) []byte {
	arg := make([]byte, metaOps[op].arg)
	for i := range arg {
		arg[i] = byte(i*13) + byte(op)
	}
	if name != nil {
		arg = append(append(arg, name...), 0)
	}
	b := request(op, unique, arg)
	binary.LittleEndian.PutUint64(b[16:], nodeid)
	binary.LittleEndian.PutUint32(b[24:], 1000+uint32(op)) // uid
	return b
}

// metaEngines returns an engine with the fast paths and one without
// (go-fuse answers), each on its own recFS log.
func metaEngines(t testing.TB, logs *[2][]string) [2]*Engine {
	var es [2]*Engine
	for i := range es {
		es[i] = New(recFS{fuse.NewDefaultRawFileSystem(), &logs[i]}, Options{})
		if _, st := es[i].HandleRequest([][]byte{initRequest()}, [][]byte{make([]byte, 4096)}); !st.Ok() {
			t.Fatal("INIT:", st)
		}
	}
	es[1].fastAttr.Store(false)
	return es
}

var metaOpNames = map[uint32]string{opForget: "FORGET", opSetattr: "SETATTR", opMkdir: "MKDIR", opUnlink: "UNLINK",
	opRmdir: "RMDIR", opOpen: "OPEN", opRelease: "RELEASE", opFlush: "FLUSH", opOpendir: "OPENDIR",
	opReleasedir: "RELEASEDIR", opCreate: "CREATE"}

// TestMetaFastPath: every request of the metadata fast path gives the same
// reply bytes and the same file system call as through go-fuse's
// ProtocolServer, whole or split as a virtio-fs guest driver splits it,
// for success and errors; requests the fast path must leave to go-fuse
// (another size, extensions, go-fuse's poll hack, a short reply buffer)
// get go-fuse's answer; and the fast path allocates nothing but the name.
func TestMetaFastPath(t *testing.T) {
	var logs [2][]string
	es := metaEngines(t, &logs)
	try := func(what string, req []byte, inCut, outCut, outLen int) {
		t.Helper()
		logs = [2][]string{}
		var replies [2][]byte
		for i, e := range es {
			out := make([]byte, outLen)
			n, st := e.HandleRequest(split(req, min(inCut, len(req))), split(out, min(outCut, len(out))))
			replies[i] = append(out[:n:n], fmt.Sprint(st)...)
		}
		if !bytes.Equal(replies[0], replies[1]) {
			t.Errorf("%s: fast path replied %x, go-fuse %x", what, replies[0], replies[1])
		}
		if !reflect.DeepEqual(logs[0], logs[1]) {
			t.Errorf("%s: fast path made the calls %q, go-fuse %q", what, logs[0], logs[1])
		}
		if len(logs[1]) == 0 && what[len(what)-1] != '-' {
			t.Errorf("%s: go-fuse made no file system call: the comparison proves little", what)
		}
	}
	for op, name := range metaOpNames {
		var fname []byte
		if metaOps[op].named {
			fname = []byte("file name")
		}
		for _, nodeid := range []uint64{5, 6, 1} {
			w := fmt.Sprintf("%s nodeid %d", name, nodeid)
			// (The engine reads the opcode from the first piece, as
			// a virtio-fs driver puts the whole header there.)
			try(w+" whole", metaRequest(op, 9, nodeid, fname), 1<<20, 1<<20, 256)
			try(w+" split as virtio-fs", metaRequest(op, 9, nodeid, fname), 40, 16, 256)
			try(w+" split oddly", metaRequest(op, 9, nodeid, fname), 43, 21, 256)
		}
		// Left to go-fuse: a trailing byte (or for a named request, a
		// missing name), an extension, a short reply buffer, the poll
		// hack.
		odd := metaRequest(op, 9, 5, fname)
		if fname != nil {
			odd = odd[:len(odd)-len(fname)-1]
		} else {
			odd = append(odd, 1)
		}
		binary.LittleEndian.PutUint32(odd[0:], uint32(len(odd)))
		try(name+" odd size -", odd, 40, 0, 256)
		ext := binary.LittleEndian.AppendUint32(metaRequest(op, 9, 5, fname), 16) // fuse_ext_header.size
		ext = binary.LittleEndian.AppendUint32(ext, extGroups)
		ext = binary.LittleEndian.AppendUint32(ext, 1)    // nr_groups
		ext = binary.LittleEndian.AppendUint32(ext, 1234) // groups[0]
		binary.LittleEndian.PutUint32(ext[0:], uint32(len(ext)))
		binary.LittleEndian.PutUint16(ext[36:], 2) // TotalExtlen, in 8-byte units
		try(name+" with groups extension -", ext, 40, 0, 256)
		binary.LittleEndian.PutUint32(ext[len(ext)-16:], 15) // a malformed extension: go-fuse refuses it
		try(name+" with a malformed extension -", ext, 40, 0, 256)
		if metaOps[op].body > 0 {
			try(name+" short reply buffer -", metaRequest(op, 9, 5, fname), 40, 0, 16+metaOps[op].body-1)
		}
		try(name+" poll hack nodeid -", metaRequest(op, 9, pollHackInode, fname), 40, 0, 256)
		if fname != nil {
			try(name+" poll hack name -", metaRequest(op, 9, 1, []byte(pollHackName)), 40, 0, 256)
		}
	}

	// The point of the fast path: no allocation per request but the
	// name's string (go-fuse's dispatcher allocates a request and a
	// channel each time).
	quiet := New(nopMetaFS{fuse.NewDefaultRawFileSystem()}, Options{})
	quiet.HandleRequest([][]byte{initRequest()}, [][]byte{make([]byte, 4096)})
	for op, name := range metaOpNames {
		var fname []byte
		want := 0.0
		if metaOps[op].named {
			fname, want = []byte("f"), 1
		}
		req, out := [][]byte{metaRequest(op, 9, 5, fname)}, [][]byte{make([]byte, 256)}
		if a := testing.AllocsPerRun(100, func() { quiet.HandleRequest(req, out) }); a > want {
			t.Errorf("%s: %.1f allocations per request, want at most %.0f", name, a, want)
		}
	}
	quiet.fastAttr.Store(false)
	req, out := [][]byte{metaRequest(opRelease, 9, 5, nil)}, [][]byte{make([]byte, 256)}
	if a := testing.AllocsPerRun(100, func() { quiet.HandleRequest(req, out) }); a == 0 {
		t.Errorf("go-fuse's dispatcher made no allocation: the check above proves nothing")
	}
}

// nopMetaFS answers the metadata requests without allocating.
type nopMetaFS struct{ fuse.RawFileSystem }

func (nopMetaFS) Capabilities() uint64 { return 0 }
func (nopMetaFS) Negotiated(uint64)    {}
