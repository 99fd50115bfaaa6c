package passthrough

import (
	"strings"

	"github.com/govirtiofsd/govirtiofsd/internal/inode"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Extended attributes are reached through the node's /proc/self/fd magic
// link, which names its inode without opening it (so fifos and devices are
// safe; see inode.Getxattr). A
// symlink's own xattrs are reached as its name in its parent directory
// (xattrat.go).

func (fs *FS) xattrNode(h *fuse.InHeader) (*inode.Node, fuse.Status) {
	if !fs.opts.Xattr {
		return nil, fuse.ENOSYS
	}
	return fs.node(h.NodeId)
}

// symlinkAt returns the parent directory (referenced) and name through
// which symlink node n is reached by the *xattrat calls.
func (fs *FS) symlinkAt(n *inode.Node) (*inode.Node, string, fuse.Status) {
	parent, name, err := fs.nodes.ParentOf(n)
	if err != nil {
		return nil, "", fuse.Status(unix.EOPNOTSUPP)
	}
	return parent, name, fuse.OK
}

// GetXAttr reads one attribute; with an empty dest it reports the size.
func (fs *FS) GetXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	n, st := fs.xattrNode(h)
	if !st.Ok() {
		return 0, st
	}
	defer n.Release()
	var sz int
	var err error
	if n.IsSymlink() {
		parent, name, st := fs.symlinkAt(n)
		if !st.Ok() {
			return 0, st
		}
		defer parent.Release()
		var ok bool
		if sz, ok, err = getxattrat(parent.FD(), name, attr, dest); !ok {
			return 0, fuse.Status(unix.EOPNOTSUPP)
		}
	} else {
		sz, err = inode.Getxattr(n.FD(), attr, dest)
	}
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
	var sz int
	var err error
	if n.IsSymlink() {
		parent, name, st := fs.symlinkAt(n)
		if !st.Ok() {
			return 0, fuse.OK
		}
		defer parent.Release()
		var ok bool
		if sz, ok, err = listxattrat(parent.FD(), name, dest); !ok {
			return 0, fuse.OK
		}
	} else {
		sz, err = inode.Listxattr(n.FD(), dest)
	}
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
	if n.IsSymlink() {
		parent, name, st := fs.symlinkAt(n)
		if !st.Ok() {
			return st
		}
		defer parent.Release()
		if ok, err := setxattrat(parent.FD(), name, attr, data, int(in.Flags)); ok {
			return errno(err)
		}
		return fuse.Status(unix.EOPNOTSUPP)
	}
	return errno(inode.Setxattr(n.FD(), attr, data, int(in.Flags)))
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
	if n.IsSymlink() {
		parent, name, st := fs.symlinkAt(n)
		if !st.Ok() {
			return st
		}
		defer parent.Release()
		if ok, err := removexattrat(parent.FD(), name, attr); ok {
			return errno(err)
		}
		return fuse.Status(unix.EOPNOTSUPP)
	}
	return errno(inode.Removexattr(n.FD(), attr))
}
