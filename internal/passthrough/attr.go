package passthrough

import (
	"github.com/govirtiofsd/govirtiofsd/internal/inode"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// fillAttr converts a host statx result for node id on mount into the FUSE
// attributes the guest sees.
func (fs *FS) fillAttr(id inode.NodeID, mount uint32, st *unix.Statx_t, out *fuse.Attr) {
	out.Ino = fs.inodeNumber(mount, st.Ino)
	out.Size = st.Size
	out.Blocks = st.Blocks
	out.Atime, out.Atimensec = uint64(st.Atime.Sec), st.Atime.Nsec
	out.Mtime, out.Mtimensec = uint64(st.Mtime.Sec), st.Mtime.Nsec
	out.Ctime, out.Ctimensec = uint64(st.Ctime.Sec), st.Ctime.Nsec
	out.Mode = uint32(st.Mode)
	out.Nlink = st.Nlink
	out.Uid, out.Gid = st.Uid, st.Gid
	out.Rdev = uint32(unix.Mkdev(st.Rdev_major, st.Rdev_minor))
	out.Blksize = st.Blksize
	out.Flags = 0
	if id != inode.RootID && st.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT != 0 &&
		st.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0 && fs.submounts.Load() {
		out.Flags |= fuse.ATTR_SUBMOUNT
	}
}

// fillEntry fills an entry reply for node id on mount.
func (fs *FS) fillEntry(id inode.NodeID, mount uint32, st *unix.Statx_t, out *fuse.EntryOut) {
	out.NodeId = uint64(id)
	out.Generation = fs.nodes.Generation()
	out.SetEntryTimeout(fs.entryTimeout)
	out.SetAttrTimeout(fs.attrTimeout)
	fs.fillAttr(id, mount, st, &out.Attr)
}

// Lookup resolves name in the directory header.NodeId. With export support
// the kernel also sends "." (the node itself) and ".." (its parent) for
// nodeids it no longer caches, to decode guest file handles.
func (fs *FS) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	if st := checkName(name); !st.Ok() {
		return st
	}
	parent, st := fs.node(h.NodeId)
	if !st.Ok() {
		return st
	}
	defer parent.Release()
	if !parent.IsDir() && name != "." {
		return fuse.ENOTDIR
	}
	if name == "." || name == ".." {
		return fs.entryFor(parent, name, out)
	}
	// Opened and cached while the fd cache has room, recorded without an
	// fd once it is full (see inode.Table.LookupEntry).
	var sx unix.Statx_t
	e, err := fs.nodes.LookupEntry(parent, name, &sx)
	if err != nil {
		return errno(err)
	}
	fs.fillEntry(e.ID, e.Mount.Index, &sx, out)
	return fuse.OK
}

// Forget drops the kernel's lookup references; see inode.Table.Forget.
func (fs *FS) Forget(nodeid, nlookup uint64) {
	fs.nodes.Forget(inode.NodeID(nodeid), nlookup)
}

// GetAttr stats the node (or the open file, when the kernel names one).
func (fs *FS) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	var sx unix.Statx_t
	mount, err := fs.nodes.Stat(inode.NodeID(in.NodeId), &sx)
	if err != nil {
		// A file CREATE made, still open but no longer where it was
		// created.
		if n := fs.createdNode(in.NodeId); n != nil {
			mount, err = n.Mount.Index, inode.Statx(n.FD(), &sx)
			n.Release()
		}
	}
	if err != nil {
		fs.log.Debug("getattr", "nodeid", in.NodeId, "err", err)
		if st := errno(err); st != fuse.EIO {
			return st
		}
		return fuse.Status(unix.ESTALE)
	}
	fs.fillAttr(inode.NodeID(in.NodeId), mount, &sx, &out.Attr)
	out.SetTimeout(fs.attrTimeout)
	return fuse.OK
}

// SetAttr changes mode, owner, size and times. The guest kernel has checked
// permissions (default_permissions); the host applies them again for the
// parts that run with the caller's credentials.
func (fs *FS) SetAttr(cancel <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	if fs.opts.ReadOnly {
		return fuse.EROFS
	}
	n, st := fs.node(in.NodeId)
	if !st.Ok() {
		return st
	}
	defer n.Release()

	// An open file named by the request is used for size changes, so that
	// ftruncate works on a file whose mode no longer allows opening it.
	var f *file
	if fh, ok := in.GetFh(); ok {
		if f = fs.file(in.NodeId, fh); f == nil {
			return fuse.EBADF
		}
		defer f.release()
	}

	if mode, ok := in.GetMode(); ok {
		if n.IsSymlink() {
			return fuse.Status(unix.EOPNOTSUPP)
		}
		if err := inode.Fchmod(n.FD(), mode&07777); err != nil {
			return errno(err)
		}
	}
	uid, uok := in.GetUID()
	gid, gok := in.GetGID()
	if uok || gok {
		u, g := -1, -1
		if uok {
			u = int(uid)
		}
		if gok {
			g = int(gid)
		}
		if err := unix.Fchownat(n.FD(), "", u, g, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return errno(err)
		}
	}
	if size, ok := in.GetSize(); ok {
		if err := fs.truncate(n, f, size); err != nil {
			return errno(err)
		}
	}
	if in.Valid&(fuse.FATTR_ATIME|fuse.FATTR_MTIME|fuse.FATTR_ATIME_NOW|fuse.FATTR_MTIME_NOW) != 0 {
		ts := [2]unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_OMIT}}
		switch {
		case in.Valid&fuse.FATTR_ATIME_NOW != 0:
			ts[0].Nsec = unix.UTIME_NOW
		case in.Valid&fuse.FATTR_ATIME != 0:
			ts[0] = unix.Timespec{Sec: int64(in.Atime), Nsec: int64(in.Atimensec)}
		}
		switch {
		case in.Valid&fuse.FATTR_MTIME_NOW != 0:
			ts[1].Nsec = unix.UTIME_NOW
		case in.Valid&fuse.FATTR_MTIME != 0:
			ts[1] = unix.Timespec{Sec: int64(in.Mtime), Nsec: int64(in.Mtimensec)}
		}
		if err := fs.utimens(n, f, ts); err != nil {
			return errno(err)
		}
	}
	var sx unix.Statx_t
	if err := inode.Statx(n.FD(), &sx); err != nil {
		return errno(err)
	}
	fs.fillAttr(n.ID, n.Mount.Index, &sx, &out.Attr)
	out.SetTimeout(fs.attrTimeout)
	return fuse.OK
}

func (fs *FS) truncate(n *inode.Node, f *file, size uint64) error {
	if f != nil {
		return unix.Ftruncate(f.fd, int64(size))
	}
	if n.Type != unix.S_IFREG {
		if n.IsDir() {
			return unix.EISDIR
		}
		return unix.EINVAL
	}
	fd, err := inode.Reopen(n.FD(), unix.O_WRONLY|unix.O_CLOEXEC|unix.O_NONBLOCK)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Ftruncate(fd, int64(size))
}

func (fs *FS) utimens(n *inode.Node, f *file, ts [2]unix.Timespec) error {
	if f != nil {
		return unix.UtimesNanoAt(f.fd, "", ts[:], unix.AT_EMPTY_PATH)
	}
	return unix.UtimesNanoAt(n.FD(), "", ts[:], unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW)
}

// Readlink reads a symlink's target without following it.
func (fs *FS) Readlink(cancel <-chan struct{}, h *fuse.InHeader) ([]byte, fuse.Status) {
	n, st := fs.node(h.NodeId)
	if !st.Ok() {
		return nil, st
	}
	defer n.Release()
	if !n.IsSymlink() {
		return nil, fuse.EINVAL
	}
	buf := make([]byte, unix.PathMax)
	sz, err := unix.Readlinkat(n.FD(), "", buf)
	if err != nil {
		return nil, errno(err)
	}
	return buf[:sz], fuse.OK
}

// StatFs reports the statistics of the filesystem the node lives on.
func (fs *FS) StatFs(cancel <-chan struct{}, h *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	n, st := fs.node(h.NodeId)
	if !st.Ok() {
		return st
	}
	defer n.Release()
	var s unix.Statfs_t
	if err := unix.Fstatfs(n.FD(), &s); err != nil {
		return errno(err)
	}
	out.Blocks, out.Bfree, out.Bavail = s.Blocks, s.Bfree, s.Bavail
	out.Files, out.Ffree = s.Files, s.Ffree
	out.Bsize, out.Frsize = uint32(s.Bsize), uint32(s.Frsize)
	out.NameLen = uint32(s.Namelen)
	return fuse.OK
}

// Access checks access with the caller's credentials (AT_EACCESS: fsuid).
func (fs *FS) Access(cancel <-chan struct{}, in *fuse.AccessIn) fuse.Status {
	n, st := fs.node(in.NodeId)
	if !st.Ok() {
		return st
	}
	defer n.Release()
	if fs.opts.ReadOnly && in.Mask&unix.W_OK != 0 {
		return fuse.EROFS
	}
	return errno(fs.asCaller(&in.InHeader, func() error {
		return unix.Faccessat2(n.FD(), "", in.Mask, unix.AT_EMPTY_PATH|unix.AT_EACCESS|unix.AT_SYMLINK_NOFOLLOW)
	}))
}
