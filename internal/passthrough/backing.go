package passthrough

import (
	"sync"

	"github.com/govirtiofsd/govirtiofsd/internal/openfiles"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// BackingFiles registers host files with the kernel for FUSE passthrough
// (Linux 6.9+, /dev/fuse only): READ and WRITE on such a file go from the
// kernel to the host file directly, without a round trip through the
// daemon. The /dev/fuse transport implements it; vhost-user cannot.
type BackingFiles interface {
	// Open registers fd and returns the kernel's backing id.
	Open(fd int) (int32, error)
	// Close drops a backing id.
	Close(id int32) error
}

// backingIDs shares one backing id among the open files of a node: the
// kernel allows one backing file per FUSE inode (a second, different one is
// refused with EBUSY), and it opens each FUSE file on the backing path with
// that file's own flags, so one registration serves every open.
//
// Reference model: each open file using the id holds one reference; the
// last RELEASE closes the id.
type backingIDs struct {
	mu       sync.Mutex
	disabled bool                   // +checklocks:mu registration failed once (no CAP_SYS_ADMIN, old kernel)
	byNode   map[uint64]*backingRef // +checklocks:mu
}

type backingRef struct {
	id   int32
	refs int
}

// usePassthrough reports whether opens of regular files may be served by
// FUSE passthrough: a backing registrar exists and the cache policy lets
// the kernel's page cache be used (direct I/O policies keep every READ and
// WRITE in the daemon).
func (fs *FS) usePassthrough() bool {
	return fs.opts.Backing != nil && (fs.opts.Cache == CacheAuto || fs.opts.Cache == CacheAlways) && !fs.opts.Writeback
}

// acquireBacking returns the backing id for an open of node nodeid whose
// host fd is fd, registering fd if the node has none; 0 if passthrough is
// not used for it.
func (fs *FS) acquireBacking(nodeid uint64, fd int) int32 {
	if !fs.usePassthrough() {
		return 0
	}
	b := &fs.backing
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.disabled {
		return 0
	}
	if r, ok := b.byNode[nodeid]; ok {
		r.refs++
		return r.id
	}
	id, err := fs.opts.Backing.Open(fd)
	if err != nil {
		fs.log.Info("FUSE passthrough unavailable; serving READ and WRITE in the daemon", "err", err)
		b.disabled = true
		return 0
	}
	if b.byNode == nil {
		b.byNode = map[uint64]*backingRef{}
	}
	b.byNode[nodeid] = &backingRef{id: id, refs: 1}
	return id
}

// releaseBacking drops one open file's reference on node nodeid's id.
func (fs *FS) releaseBacking(nodeid uint64, id int32) {
	if id == 0 {
		return
	}
	b := &fs.backing
	b.mu.Lock()
	r, ok := b.byNode[nodeid]
	if !ok || r.id != id {
		b.mu.Unlock()
		return
	}
	r.refs--
	if r.refs > 0 {
		b.mu.Unlock()
		return
	}
	delete(b.byNode, nodeid)
	b.mu.Unlock()
	if err := fs.opts.Backing.Close(id); err != nil {
		fs.log.Warn("close FUSE backing id", "id", id, "err", err)
	}
}

// adoptBacking takes over the backing ids of files a predecessor process
// opened and the guest still has open: they stay registered in the kernel,
// and a new id for the same inode would be refused.
func (fs *FS) adoptBacking(entries []openfiles.Entry) {
	b := &fs.backing
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, e := range entries {
		if e.BackingID == 0 {
			continue
		}
		if b.byNode == nil {
			b.byNode = map[uint64]*backingRef{}
		}
		if r, ok := b.byNode[e.NodeID]; ok && r.id == e.BackingID {
			r.refs++
		} else {
			b.byNode[e.NodeID] = &backingRef{id: e.BackingID, refs: 1}
		}
	}
}

// setPassthrough marks an OPEN/CREATE reply as served by passthrough.
func setPassthrough(out *fuse.OpenOut, id int32) {
	if id == 0 {
		return
	}
	out.BackingID = id
	out.OpenFlags |= fuse.FOPEN_PASSTHROUGH
	out.OpenFlags &^= fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_DIRECT_IO
}

// EnableBacking turns FUSE passthrough on with b. The /dev/fuse transport
// calls it before serving the first request.
func (fs *FS) EnableBacking(b BackingFiles) {
	fs.opts.Backing = b
}
