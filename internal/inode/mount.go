package inode

import (
	"fmt"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Mount is one host mount seen inside the shared directory.
type Mount struct {
	Index uint32 // persistent index (MountRecord.Index)
	MntID uint64 // the kernel's mount id this boot (statx STATX_MNT_ID_UNIQUE)
	Dev   uint64
	// Root is true for the shared directory's own mount.
	Root bool
	// fd is an O_PATH fd on the mount, for open_by_handle_at; -1 if none.
	fd int
}

// mounts maps the kernel's mount ids to persistent mount indexes.
type mounts struct {
	mu   sync.RWMutex      // read-locked on every lookup
	byID map[uint64]*Mount // +checklocks:mu
}

// mountFor returns the Mount a statx result lives on, registering it in the
// store on first sight. fd names the file (used to compute the mount's path
// when it is new).
func (t *Table) mountFor(st *unix.Statx_t, fd int) (*Mount, error) {
	t.mounts.mu.RLock()
	m, ok := t.mounts.byID[st.Mnt_id]
	t.mounts.mu.RUnlock()
	if ok {
		return m, nil
	}
	path, err := t.relPath(fd)
	if err != nil {
		return nil, err
	}
	dev := unix.Mkdev(st.Dev_major, st.Dev_minor)
	idx, err := t.st().PutMount(MountRecord{Path: path, Dev: dev})
	if err != nil {
		return nil, fmt.Errorf("record mount %q: %w", path, err)
	}
	t.mounts.mu.Lock()
	defer t.mounts.mu.Unlock()
	if m, ok := t.mounts.byID[st.Mnt_id]; ok {
		return m, nil
	}
	// open_by_handle_at refuses O_PATH mount fds, so keep a real (read
	// only, directory) open of the mount's root. A bind-mounted file gets
	// none, and its files are found by path.
	mfd := -1
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		if d, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", fd), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0); err == nil {
			mfd = d
		}
	}
	m = &Mount{Index: idx, MntID: st.Mnt_id, Dev: dev, Root: len(t.mounts.byID) == 0, fd: mfd}
	t.mounts.byID[st.Mnt_id] = m
	return m, nil
}

// mountByIndex returns the mount with persistent index idx. A mount recorded
// by an earlier process is found again by its recorded path, opened beneath
// the shared directory without following symlinks, and accepted only if its
// device matches. nil if it cannot be found.
func (t *Table) mountByIndex(idx uint32) *Mount {
	t.mounts.mu.RLock()
	for _, m := range t.mounts.byID {
		if m.Index == idx {
			t.mounts.mu.RUnlock()
			return m
		}
	}
	t.mounts.mu.RUnlock()
	recs, err := t.st().Mounts()
	if err != nil {
		return nil
	}
	for _, r := range recs {
		if r.Index != idx {
			continue
		}
		how := unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS}
		path := r.Path
		if path == "" {
			path = "."
		}
		fd, err := unix.Openat2(t.root.fd, path, &how)
		if err != nil {
			return nil
		}
		var st unix.Statx_t
		if err := Statx(fd, &st); err != nil || unix.Mkdev(st.Dev_major, st.Dev_minor) != r.Dev {
			unix.Close(fd)
			return nil
		}
		m, err := t.mountFor(&st, fd)
		unix.Close(fd)
		if err != nil || m.Index != idx {
			return nil
		}
		return m
	}
	return nil
}

// relPath returns fd's path relative to the shared directory, for the mount
// table only (it names mounts for operators and restarts; it is never used
// to reach a file).
func (t *Table) relPath(fd int) (string, error) {
	p, err := readlinkProc(fd)
	if err != nil {
		return "", err
	}
	if p == t.rootPath {
		return "", nil
	}
	rel, ok := strings.CutPrefix(p, t.rootPath+"/")
	if !ok {
		return "", fmt.Errorf("mount at %q is outside the shared directory %q", p, t.rootPath)
	}
	return rel, nil
}

func readlinkProc(fd int) (string, error) {
	buf := make([]byte, unix.PathMax)
	n, err := unix.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd), buf)
	if err != nil {
		return "", fmt.Errorf("readlink /proc/self/fd/%d: %w", fd, err)
	}
	return string(buf[:n]), nil
}
