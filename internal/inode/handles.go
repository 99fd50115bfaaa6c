package inode

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// HandleMode is the --inode-file-handles setting (the Rust virtiofsd's
// meaning): whether nodes are re-found by host file handle.
type HandleMode int

const (
	// HandlesNever re-finds nodes by walking their stored parent chain.
	HandlesNever HandleMode = iota
	// HandlesPrefer records a handle where the host filesystem gives one
	// and re-finds nodes by it (open_by_handle_at, which needs
	// CAP_DAC_READ_SEARCH), falling back to the parent chain.
	HandlesPrefer
	// HandlesMandatory refuses files whose filesystem gives no handle.
	HandlesMandatory
)

// ParseHandleMode parses an --inode-file-handles value.
func ParseHandleMode(s string) (HandleMode, error) {
	switch s {
	case "never":
		return HandlesNever, nil
	case "prefer":
		return HandlesPrefer, nil
	case "mandatory":
		return HandlesMandatory, nil
	}
	return 0, fmt.Errorf("unknown --inode-file-handles %q (want never, prefer or mandatory)", s)
}

// ErrForeignState is returned by New when the store's root record names
// another directory than the one being shared.
var ErrForeignState = errors.New("node table belongs to another directory")

// handleOf returns the host file handle of fd, or none when the mode is
// never or (prefer) the filesystem has no handles.
func (t *Table) handleOf(fd int) (int32, []byte, error) {
	if t.opts.Handles == HandlesNever {
		return 0, nil, nil
	}
	h, _, err := unix.NameToHandleAt(fd, "", unix.AT_EMPTY_PATH)
	if err != nil {
		if t.opts.Handles == HandlesMandatory {
			return 0, nil, fmt.Errorf("--inode-file-handles=mandatory: name_to_handle_at: %w", err)
		}
		return 0, nil, nil
	}
	return h.Type(), h.Bytes(), nil
}

// handleAt is handleOf for name in the directory dirfd (not following a
// final symlink).
func (t *Table) handleAt(dirfd int, name string) (int32, []byte, error) {
	if t.opts.Handles == HandlesNever {
		return 0, nil, nil
	}
	h, _, err := unix.NameToHandleAt(dirfd, name, 0)
	if err != nil {
		if t.opts.Handles == HandlesMandatory {
			return 0, nil, fmt.Errorf("--inode-file-handles=mandatory: name_to_handle_at: %w", err)
		}
		return 0, nil, nil
	}
	return h.Type(), h.Bytes(), nil
}

// openByHandle re-finds a node's file by its handle and checks that it is
// still inside the shared directory: a host-side rename may have moved it
// out, and such a file is never served. ok is false when the handle cannot
// be used here (no CAP_DAC_READ_SEARCH, or the mount is gone), so the caller
// falls back to the parent chain.
func (t *Table) openByHandle(rec Record, m *Mount, depth int) (fd int, ok bool, err error) {
	if t.opts.Handles == HandlesNever || !isHostHandle(rec) || m == nil || m.fd < 0 {
		return -1, false, nil
	}
	fd, err = unix.OpenByHandleAt(m.fd, unix.NewFileHandle(rec.HandleType, rec.Handle), unix.O_PATH|unix.O_CLOEXEC)
	switch {
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.EINVAL):
		return -1, false, nil
	case err != nil:
		// ESTALE: the file is gone from the host.
		return -1, true, fmt.Errorf("nodeid %d: open by handle: %w", rec.ID, err)
	}
	if t.inside(fd, rec, depth) {
		return fd, true, nil
	}
	unix.Close(fd)
	return -1, true, fmt.Errorf("nodeid %d: file moved outside the shared directory: %w", rec.ID, unix.ESTALE)
}

// inside reports whether the file fd (found by handle for rec) is inside
// the shared directory: it is still rec.Name in rec.Parent (whose own
// resolution is checked the same way), or, for a directory renamed on the
// host, its ".." chain reaches the shared directory.
func (t *Table) inside(fd int, rec Record, depth int) bool {
	var st unix.Statx_t
	if err := Statx(fd, &st); err != nil {
		return false
	}
	if parent, err := t.get(rec.Parent, depth+1); err == nil {
		var cst unix.Statx_t
		err := unix.Statx(parent.fd, rec.Name, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_INO|unix.STATX_MNT_ID_UNIQUE, &cst)
		parent.Release()
		if err == nil && cst.Ino == st.Ino && cst.Mnt_id == st.Mnt_id {
			return true
		}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return false
	}
	return t.dotdotReachesRoot(fd)
}

// dotdotReachesRoot walks ".." from the directory fd until it meets the
// shared directory (true) or the top of the host's tree (false).
func (t *Table) dotdotReachesRoot(fd int) bool {
	var root unix.Statx_t
	if err := Statx(t.root.fd, &root); err != nil {
		return false
	}
	cur, err := unix.Openat(fd, ".", unix.O_PATH|unix.O_CLOEXEC|unix.O_DIRECTORY, 0)
	if err != nil {
		return false
	}
	defer func() { unix.Close(cur) }()
	var prev unix.Statx_t
	for range maxDepth {
		var st unix.Statx_t
		if err := Statx(cur, &st); err != nil {
			return false
		}
		if st.Ino == root.Ino && st.Mnt_id == root.Mnt_id {
			return true
		}
		if st.Ino == prev.Ino && st.Mnt_id == prev.Mnt_id {
			return false // "/" is its own parent
		}
		prev = st
		next, err := unix.Openat(cur, "..", unix.O_PATH|unix.O_CLOEXEC|unix.O_DIRECTORY, 0)
		if err != nil {
			return false
		}
		unix.Close(cur)
		cur = next
	}
	return false
}
