package passthrough

import (
	"github.com/govirtiofsd/govirtiofsd/internal/inode"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// parentDir resolves the directory a create-like request names and checks
// the new name. The caller releases the node.
func (fs *FS) parentDir(h *fuse.InHeader, name string) (*inode.Node, fuse.Status) {
	if fs.opts.ReadOnly {
		return nil, fuse.EROFS
	}
	if st := checkNewName(name); !st.Ok() {
		return nil, st
	}
	parent, st := fs.node(h.NodeId)
	if !st.Ok() {
		return nil, st
	}
	if !parent.IsDir() {
		parent.Release()
		return nil, fuse.ENOTDIR
	}
	return parent, fuse.OK
}

// entryFor looks up name in parent (or what was just created as name) and
// fills the entry reply.
//
// A LOOKUP opens and caches the node's O_PATH fd (READDIRPLUS does not, see
// addPlusEntry): the OPEN or GETATTR that usually follows then reaches the
// very file looked up, even if a host rename replaced its name meanwhile,
// as a local open would, instead of ESTALE from re-resolving a name that
// now holds another file.
func (fs *FS) entryFor(parent *inode.Node, name string, out *fuse.EntryOut) fuse.Status {
	var sx unix.Statx_t
	n, err := fs.nodes.Lookup(parent, name, &sx)
	if err != nil {
		return errno(err)
	}
	defer n.Release()
	fs.fillEntry(n.ID, n.Mount.Index, &sx, out)
	return fuse.OK
}

// Mknod creates a regular file, fifo, socket or device node, with the
// caller's credentials (so creating a device needs the caller's privilege).
func (fs *FS) Mknod(cancel <-chan struct{}, in *fuse.MknodIn, name string, out *fuse.EntryOut) fuse.Status {
	parent, st := fs.parentDir(&in.InHeader, name)
	if !st.Ok() {
		return st
	}
	defer parent.Release()
	err := fs.asCaller(&in.InHeader, func() error {
		return unix.Mknodat(parent.FD(), name, in.Mode, int(in.Rdev))
	})
	if err != nil {
		return errno(err)
	}
	return fs.entryFor(parent, name, out)
}

// Mkdir creates a directory with the caller's credentials.
func (fs *FS) Mkdir(cancel <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) fuse.Status {
	parent, st := fs.parentDir(&in.InHeader, name)
	if !st.Ok() {
		return st
	}
	defer parent.Release()
	err := fs.asCaller(&in.InHeader, func() error {
		return inode.Mkdirat(parent.FD(), name, in.Mode)
	})
	if err != nil {
		return errno(err)
	}
	return fs.entryFor(parent, name, out)
}

// Symlink creates a symbolic link; its target is stored, never resolved.
func (fs *FS) Symlink(cancel <-chan struct{}, h *fuse.InHeader, target string, name string, out *fuse.EntryOut) fuse.Status {
	parent, st := fs.parentDir(h, name)
	if !st.Ok() {
		return st
	}
	defer parent.Release()
	err := fs.asCaller(h, func() error {
		return unix.Symlinkat(target, parent.FD(), name)
	})
	if err != nil {
		return errno(err)
	}
	return fs.entryFor(parent, name, out)
}

// Link makes a new name for an existing file. The source is reached through
// its O_PATH fd via /proc/self/fd with AT_SYMLINK_FOLLOW, which links the
// inode the fd names (a symlink itself, not its target).
func (fs *FS) Link(cancel <-chan struct{}, in *fuse.LinkIn, name string, out *fuse.EntryOut) fuse.Status {
	parent, st := fs.parentDir(&in.InHeader, name)
	if !st.Ok() {
		return st
	}
	defer parent.Release()
	old, st := fs.node(in.Oldnodeid)
	if !st.Ok() {
		return st
	}
	defer old.Release()
	if old.IsDir() {
		return fuse.EPERM
	}
	if err := inode.LinkProc(old.FD(), parent.FD(), name); err != nil {
		return errno(err)
	}
	return fs.entryFor(parent, name, out)
}

// Unlink removes a non-directory. Its nodeid stays valid for open files.
func (fs *FS) Unlink(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	return fs.remove(h, name, 0)
}

// Rmdir removes an empty directory.
func (fs *FS) Rmdir(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	return fs.remove(h, name, unix.AT_REMOVEDIR)
}

func (fs *FS) remove(h *fuse.InHeader, name string, flags int) fuse.Status {
	if fs.opts.ReadOnly {
		return fuse.EROFS
	}
	if st := checkName(name); !st.Ok() {
		return st
	}
	if name == "." {
		return fuse.EINVAL
	}
	if name == ".." {
		return fuse.Status(unix.ENOTEMPTY)
	}
	parent, st := fs.node(h.NodeId)
	if !st.Ok() {
		return st
	}
	defer parent.Release()
	var sx unix.Statx_t
	known := inode.StatxAt(parent.FD(), name, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_INO|unix.STATX_NLINK|unix.STATX_TYPE|unix.STATX_MNT_ID_UNIQUE, &sx) == nil
	if err := inode.Unlinkat(parent.FD(), name, flags); err != nil {
		return errno(err)
	}
	// The last name of a file is gone: so is its identity. (Open files
	// keep their node; a new file that gets the inode number later gets
	// a new nodeid.) This keeps the node table from growing with files
	// that no longer exist.
	if known && (flags&unix.AT_REMOVEDIR != 0 || sx.Nlink <= 1) {
		fs.nodes.Removed(&sx)
	}
	return fuse.OK
}

// renameFlags are the renameat2 flags a guest may ask for.
const renameFlags = unix.RENAME_NOREPLACE | unix.RENAME_EXCHANGE | unix.RENAME_WHITEOUT

// Rename implements RENAME and RENAME2 (RENAME_NOREPLACE, RENAME_EXCHANGE).
func (fs *FS) Rename(cancel <-chan struct{}, in *fuse.RenameIn, oldName string, newName string) fuse.Status {
	if fs.opts.ReadOnly {
		return fuse.EROFS
	}
	if in.Flags&^renameFlags != 0 {
		return fuse.EINVAL
	}
	if st := checkNewName(oldName); !st.Ok() {
		if st == fuse.Status(unix.EEXIST) {
			return fuse.EBUSY
		}
		return st
	}
	if st := checkNewName(newName); !st.Ok() {
		if st == fuse.Status(unix.EEXIST) {
			return fuse.EBUSY
		}
		return st
	}
	oldDir, st := fs.node(in.NodeId)
	if !st.Ok() {
		return st
	}
	defer oldDir.Release()
	newDir, st := fs.node(in.Newdir)
	if !st.Ok() {
		return st
	}
	defer newDir.Release()
	if err := unix.Renameat2(oldDir.FD(), oldName, newDir.FD(), newName, uint(in.Flags)); err != nil {
		return errno(err)
	}
	fs.nodes.Moved(newDir, newName)
	if in.Flags&unix.RENAME_EXCHANGE != 0 {
		fs.nodes.Moved(oldDir, oldName)
	}
	return fuse.OK
}
