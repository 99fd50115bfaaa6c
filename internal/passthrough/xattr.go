package passthrough

import (
	"strings"

	"github.com/govirtiofsd/govirtiofsd/internal/inode"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Extended attributes are reached through /proc/self/fd/N, which names the
// node's inode without opening it (so fifos and devices are safe). A
// symlink's own xattrs cannot be reached that way without following it, so
// they are reported as unsupported.

func (fs *FS) xattrNode(h *fuse.InHeader) (*inode.Node, fuse.Status) {
	if !fs.opts.Xattr {
		return nil, fuse.ENOSYS
	}
	n, st := fs.node(h.NodeId)
	if !st.Ok() {
		return nil, st
	}
	if n.IsSymlink() {
		n.Release()
		return nil, fuse.Status(unix.EOPNOTSUPP)
	}
	return n, fuse.OK
}

// GetXAttr reads one attribute; with an empty dest it reports the size.
func (fs *FS) GetXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	n, st := fs.xattrNode(h)
	if !st.Ok() {
		return 0, st
	}
	defer n.Release()
	sz, err := unix.Getxattr(procPath(n.FD()), attr, dest)
	if err != nil {
		return 0, errno(err)
	}
	return uint32(sz), fuse.OK
}

// ListXAttr lists attribute names; with an empty dest it reports the size.
func (fs *FS) ListXAttr(cancel <-chan struct{}, h *fuse.InHeader, dest []byte) (uint32, fuse.Status) {
	n, st := fs.xattrNode(h)
	if !st.Ok() {
		return 0, st
	}
	defer n.Release()
	sz, err := unix.Listxattr(procPath(n.FD()), dest)
	if err != nil {
		return 0, errno(err)
	}
	return uint32(sz), fuse.OK
}

// SetXAttr sets an attribute. Writes to system.posix_acl_* are passed on;
// the host kernel validates them.
func (fs *FS) SetXAttr(cancel <-chan struct{}, in *fuse.SetXAttrIn, attr string, data []byte) fuse.Status {
	if fs.opts.ReadOnly {
		return fuse.EROFS
	}
	n, st := fs.xattrNode(&in.InHeader)
	if !st.Ok() {
		return st
	}
	defer n.Release()
	if attr == "" || strings.ContainsRune(attr, 0) {
		return fuse.EINVAL
	}
	return errno(unix.Setxattr(procPath(n.FD()), attr, data, int(in.Flags)))
}

// RemoveXAttr removes an attribute.
func (fs *FS) RemoveXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string) fuse.Status {
	if fs.opts.ReadOnly {
		return fuse.EROFS
	}
	n, st := fs.xattrNode(h)
	if !st.Ok() {
		return st
	}
	defer n.Release()
	return errno(unix.Removexattr(procPath(n.FD()), attr))
}
