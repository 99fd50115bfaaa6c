// Package inode is the node identity table: it turns FUSE nodeids into host
// files and back.
//
// Guarantees:
//   - A nodeid names one host file for the life of the Store behind the
//     table and is never reused; (nodeid, Generation()) is unique over that
//     lifetime. Looking up the same host file (same mount, same st_ino) by
//     any name, including hard links, yields the same nodeid.
//   - Host files are reached only through fds held by the table, with
//     openat(O_PATH|O_NOFOLLOW) one component at a time from the shared
//     directory, so no host symlink is ever followed and nothing outside the
//     shared directory is reached (a LOOKUP's statx and a GETATTR of a node
//     without an fd go by one name in the parent's fd, never following a
//     symlink). A file re-found by a node without an fd is checked to be
//     the same file (mount, inode number, type, and birth time or host
//     handle where the filesystem has one: see birth.go) before it is
//     served; a new file that got a deleted file's inode number gets a new
//     nodeid.
//   - Open fds are bounded: the fd cache holds at most MaxOpenFDs node fds
//     (plus the nodes requests are using at the moment); an evicted node is
//     re-resolved on demand from its Record, so eviction never turns into
//     ESTALE for a file that still exists where it was.
//
// FORGET is only a cache hint here: a nodeid stays resolvable after the
// kernel forgets it, which is what makes guest file handles
// (FUSE_EXPORT_SUPPORT) and daemon restarts work.
//
// Lock order: a key stripe (Table.keyLocks) before Table.mu; mounts.mu is a
// leaf. Store calls are made without Table.mu held.
package inode

import (
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Options configure a Table.
type Options struct {
	// MaxOpenFDs bounds the node fds kept open (--max-open-fds).
	MaxOpenFDs int
	// Handles says whether nodes are re-found by host file handle.
	Handles HandleMode
	Logger  *slog.Logger
}

// Table is the node identity table. It is safe for concurrent use.
type Table struct {
	// store holds the Store; it changes only in ReplaceStore.
	store    atomic.Pointer[Store]
	opts     Options
	log      *slog.Logger
	rootPath string
	root     *Node

	mounts mounts

	lastInsertWarn atomic.Int64
	// lookupMisses counts the LOOKUPs in a row whose node the fd cache
	// did not hold (see LookupEntry); zeroed by a hit.
	lookupMisses atomic.Int32

	closeOnce sync.Once
	closeErr  error
	closed    atomic.Bool

	keyLocks [64]sync.Mutex
	seed     maphash.Seed

	// mu guards the cache maps; lookups that only touch atomic node
	// fields (refs, clock) take it for reading.
	mu    sync.RWMutex
	byID  map[NodeID]*Node // +checklocks:mu
	byKey map[inoKey]*Node // +checklocks:mu
	ring  []*Node          // +checklocks:mu (CLOCK order)
	hand  int              // +checklocks:mu
}

// statxMask is what every stat of a node asks for.
const statxMask = unix.STATX_BASIC_STATS | unix.STATX_MNT_ID_UNIQUE | unix.STATX_BTIME

// New opens the table for the shared directory rootPath on store.
func New(rootPath string, store Store, opts Options) (*Table, error) {
	if opts.MaxOpenFDs <= 0 {
		opts.MaxOpenFDs = 4096
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	fd, err := unix.Open(rootPath, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open shared directory %s: %w", rootPath, err)
	}
	if err := reserveFDTable(fd, opts.MaxOpenFDs+fdTableHeadroom); err != nil {
		// Only a cost: the table then grows as fds are opened.
		opts.Logger.Debug("fd table not grown up front", "err", err)
	}
	t := &Table{
		opts: opts, log: opts.Logger,
		seed: maphash.MakeSeed(),
		byID: map[NodeID]*Node{}, byKey: map[inoKey]*Node{},
	}
	t.store.Store(&store)
	t.mounts.byID = map[uint64]*Mount{}
	if t.rootPath, err = readlinkProc(fd); err != nil {
		unix.Close(fd)
		return nil, err
	}
	var st unix.Statx_t
	m, err := t.statMount(fd, &st)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("shared directory %s: %w", rootPath, err)
	}
	if err := t.checkRoot(store, m, &st); err != nil {
		unix.Close(fd)
		return nil, err
	}
	t.root = &Node{ID: RootID, Type: unix.S_IFDIR, Mount: m, Ino: st.Ino, fd: fd, pinned: true}
	t.root.refs.Store(1)
	t.byID[RootID] = t.root
	t.byKey[inoKey{m.Index, st.Ino}] = t.root
	return t, nil
}

// statMount stats fd and finds (or registers) the mount it lives on.
func (t *Table) statMount(fd int, st *unix.Statx_t) (*Mount, error) {
	if err := Statx(fd, st); err != nil {
		return nil, fmt.Errorf("stat: %w", err)
	}
	return t.mountFor(st, fd)
}

// st returns the current store.
func (t *Table) st() Store { return *t.store.Load() }

// Store returns the store behind the table (for export).
func (t *Table) Store() Store { return t.st() }

// checkRoot makes sure store's root record is the shared directory (mount
// m, stat st), creating it in an empty store.
func (t *Table) checkRoot(store Store, m *Mount, st *unix.Statx_t) error {
	rec, err := store.Get(RootID)
	switch {
	case errors.Is(err, ErrNotFound):
		id, err := store.Insert(Record{Mount: m.Index, Ino: st.Ino, Type: unix.S_IFDIR})
		if err != nil {
			return fmt.Errorf("record shared directory: %w", err)
		}
		if id != RootID {
			return fmt.Errorf("node store gave the shared directory nodeid %d, want %d", id, RootID)
		}
	case err != nil:
		return fmt.Errorf("read root record: %w", err)
	case rec.Mount != m.Index || rec.Ino != st.Ino:
		return fmt.Errorf("%w: its root is inode %d on mount %d, the shared directory is inode %d on mount %d", ErrForeignState, rec.Ino, rec.Mount, st.Ino, m.Index)
	}
	return nil
}

// ReplaceStore swaps in another store (a node table migrated from another
// daemon) and closes the old one. The caller guarantees that no request is
// being served (vhost-user device state is loaded while the rings are
// stopped). The cache and the mount table start afresh; the new store's
// root record must name the shared directory.
func (t *Table) ReplaceStore(store Store) error {
	var st unix.Statx_t
	if err := Statx(t.root.fd, &st); err != nil {
		return err
	}
	dev := unix.Mkdev(st.Dev_major, st.Dev_minor)
	idx, err := store.PutMount(MountRecord{Path: "", Dev: dev})
	if err != nil {
		return err
	}
	m := &Mount{Index: idx, MntID: st.Mnt_id, Dev: dev, Root: true, fd: -1}
	if err := t.checkRoot(store, m, &st); err != nil {
		return err
	}
	t.mu.Lock()
	evicted := t.ring
	t.ring, t.hand = nil, 0
	t.byID = map[NodeID]*Node{RootID: t.root}
	t.byKey = map[inoKey]*Node{{m.Index, st.Ino}: t.root}
	t.mu.Unlock()
	for _, n := range evicted {
		n.Release()
	}
	t.mounts.mu.Lock()
	for _, old := range t.mounts.byID {
		if old.fd >= 0 && old.MntID == st.Mnt_id {
			m.fd, old.fd = old.fd, -1
		} else if old.fd >= 0 {
			unix.Close(old.fd)
		}
	}
	t.mounts.byID = map[uint64]*Mount{st.Mnt_id: m}
	t.mounts.mu.Unlock()
	t.root.Mount = m
	old := t.store.Swap(&store)
	return (*old).Close()
}

// Generation is the FUSE generation of every nodeid in this table.
func (t *Table) Generation() uint64 { return t.st().Generation() }

// Root returns the shared directory's node (referenced).
func (t *Table) Root() *Node {
	t.root.IncRef()
	return t.root
}

// Close releases the cached fds and the store. Later calls do nothing.
func (t *Table) Close() error {
	t.closeOnce.Do(func() { t.closeErr = t.close(); t.closed.Store(true) })
	return t.closeErr
}

// Closed reports whether Close was called.
func (t *Table) Closed() bool { return t.closed.Load() }

func (t *Table) close() error {
	t.mu.Lock()
	for _, n := range t.ring {
		n.Release()
	}
	t.ring, t.byID, t.byKey = nil, map[NodeID]*Node{}, map[inoKey]*Node{}
	t.mu.Unlock()
	t.root.Release()
	t.mounts.mu.Lock()
	for _, m := range t.mounts.byID {
		if m.fd >= 0 {
			unix.Close(m.fd)
			m.fd = -1
		}
	}
	t.mounts.mu.Unlock()
	return t.st().Close()
}

// OpenFDs reports how many node fds the cache holds (for tests and metrics).
func (t *Table) OpenFDs() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.ring) + 1
}

// Statx stats fd itself (never following a symlink) with the table's mask.
func Statx(fd int, st *unix.Statx_t) error {
	return statxFD(fd, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW|unix.AT_STATX_SYNC_AS_STAT, statxMask, st)
}

// Stat stats node id (not following a symlink) and returns the persistent
// index of its mount. A node the fd cache holds is stated through its fd.
// One it does not hold is stated by name in its parent (one statx, no fd
// opened, nothing evicted) when the parent is cached and the name still
// holds the recorded file; otherwise it is resolved like Get. This keeps
// GETATTR on a working set larger than the fd cache at one syscall.
func (t *Table) Stat(id NodeID, st *unix.Statx_t) (mount uint32, err error) {
	if n := t.cached(id); n != nil {
		defer n.Release()
		return n.Mount.Index, Statx(n.fd, st)
	}
	if rec, err := t.st().Get(id); err == nil && rec.Parent != 0 && rec.Name != "" {
		if parent := t.cached(rec.Parent); parent != nil {
			err := StatxAt(parent.fd, rec.Name, unix.AT_SYMLINK_NOFOLLOW|unix.AT_STATX_SYNC_AS_STAT, statxMask, st)
			parent.Release()
			if err == nil {
				if idx, ok := t.MountIndex(st); ok && isRecordedFile(rec, idx, st) {
					return idx, nil
				}
			}
		}
	}
	n, err := t.Get(id)
	if err != nil {
		return 0, err
	}
	defer n.Release()
	return n.Mount.Index, Statx(n.fd, st)
}

// isRecordedFile reports whether st, a file on the mount of index mount, is
// the file rec records: same mount, inode number, type and (where the
// filesystem has one) birth time.
func isRecordedFile(rec Record, mount uint32, st *unix.Statx_t) bool {
	return mount == rec.Mount && st.Ino == rec.Ino && uint32(st.Mode)&unix.S_IFMT == rec.Type && sameBirth(rec, st)
}

// maxDepth bounds the parent chain walked to re-resolve a node, so a
// corrupt chain cannot recurse forever.
const maxDepth = 4096

// Get returns the node for id, re-resolving it from its record if the fd
// cache no longer holds it. Errors: ErrNotFound / ErrTampered / ESTALE-like
// errors when the file is gone or is no longer the same file.
func (t *Table) Get(id NodeID) (*Node, error) {
	return t.get(id, 0)
}

func (t *Table) get(id NodeID, depth int) (*Node, error) {
	if n := t.cached(id); n != nil {
		return n, nil
	}
	if depth > maxDepth {
		return nil, fmt.Errorf("nodeid %d: parent chain deeper than %d: %w", id, maxDepth, unix.ESTALE)
	}
	rec, err := t.st().Get(id)
	if err != nil {
		if errors.Is(err, ErrTampered) {
			t.log.Error("refusing tampered node record", "nodeid", id, "err", err)
		}
		return nil, fmt.Errorf("nodeid %d: %w", id, err)
	}
	if rec.Parent == 0 || rec.Parent == id {
		return nil, fmt.Errorf("nodeid %d: record has no parent: %w", id, unix.ESTALE)
	}
	var m *Mount
	if t.opts.Handles != HandlesNever && isHostHandle(rec) {
		m = t.mountByIndex(rec.Mount)
	}
	fd, ok, err := t.openByHandle(rec, m, depth)
	if err != nil {
		return nil, err
	}
	if !ok {
		if fd, err = t.openByPath(rec, depth); err != nil {
			return nil, err
		}
	}
	var st unix.Statx_t
	m, err = t.statMount(fd, &st)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("nodeid %d: %w", id, err)
	}
	if !isRecordedFile(rec, m.Index, &st) {
		unix.Close(fd)
		return nil, fmt.Errorf("nodeid %d: %q in nodeid %d is another file now: %w", id, rec.Name, rec.Parent, unix.ESTALE)
	}
	return t.insertCache(&Node{ID: id, Type: rec.Type, Mount: m, Ino: rec.Ino, fd: fd}), nil
}

// openByPath re-finds a node's file by walking its stored parent chain
// (each step an O_PATH|O_NOFOLLOW openat relative to the parent's fd).
func (t *Table) openByPath(rec Record, depth int) (int, error) {
	parent, err := t.get(rec.Parent, depth+1)
	if err != nil {
		return -1, err
	}
	defer parent.Release()
	fd, err := openChild(parent.fd, rec.Name)
	if err != nil {
		return -1, fmt.Errorf("nodeid %d: reopen %q in nodeid %d: %w", rec.ID, rec.Name, rec.Parent, staleIfGone(err))
	}
	return fd, nil
}

func staleIfGone(err error) error {
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return fmt.Errorf("%w (%w)", unix.ESTALE, err)
	}
	return err
}

// openChild opens name in the directory dirfd as an O_PATH fd without
// following a final symlink. name must be a single component (the caller
// validated it).
func openChild(dirfd int, name string) (int, error) {
	return Openat(dirfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
}

// Lookup resolves name in parent: it opens the child with O_PATH|O_NOFOLLOW,
// stats it and returns its node (referenced) and attributes. name must have
// been validated by the caller (no '/', not empty); "." and ".." are
// handled: ".." of the root is the root.
func (t *Table) Lookup(parent *Node, name string, st *unix.Statx_t) (*Node, error) {
	if name == "." {
		// The kernel decodes a guest file handle for an inode it
		// evicted. The node may still be cached here although a
		// host-side rename took it out of the shared directory since:
		// check, so a handle never reaches outside.
		if parent.ID != RootID {
			rec, err := t.st().Get(parent.ID)
			if err != nil {
				return nil, err
			}
			if !t.inside(parent.fd, rec, 0) {
				return nil, fmt.Errorf("nodeid %d: no longer inside the shared directory: %w", parent.ID, unix.ESTALE)
			}
		}
		parent.IncRef()
		return parent, Statx(parent.fd, st)
	}
	if name == ".." && parent.ID == RootID {
		return t.Root(), Statx(t.root.fd, st)
	}
	if name == ".." {
		fd, err := t.openStat(parent, name, st)
		if err != nil {
			return nil, err
		}
		// The guest asks for a parent it no longer caches (export
		// support); the record's parent/name for it is unknown here, so
		// register it only if the table knows it already.
		return t.registerKnown(fd, st)
	}
	n, _, err := t.openRegister(parent, name, st)
	return n, err
}

// openStat opens name in parent (O_PATH, not following a symlink) and
// stats the fd it got.
func (t *Table) openStat(parent *Node, name string, st *unix.Statx_t) (int, error) {
	fd, err := openChild(parent.fd, name)
	if err != nil {
		return -1, err
	}
	if err := Statx(fd, st); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// openRegister is Lookup of a single component: open, stat, register. It
// also says whether the fd cache held the node already.
func (t *Table) openRegister(parent *Node, name string, st *unix.Statx_t) (*Node, bool, error) {
	fd, err := t.openStat(parent, name, st)
	if err != nil {
		return nil, false, err
	}
	return t.register(parent, name, fd, st)
}

// registerKnown returns the node for an fd reached through "..": directories
// are always registered before their children, so a missing record means
// the file is not ours to serve.
func (t *Table) registerKnown(fd int, st *unix.Statx_t) (*Node, error) {
	m, err := t.mountFor(st, fd)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	key := inoKey{m.Index, st.Ino}
	t.mu.RLock()
	if n, ok := t.byKey[key]; ok {
		n.IncRef()
		n.clock.Store(true)
		t.mu.RUnlock()
		unix.Close(fd)
		return n, nil
	}
	t.mu.RUnlock()
	rec, err := t.st().ByIno(m.Index, st.Ino)
	if err != nil || !sameBirth(rec, st) {
		unix.Close(fd)
		return nil, fmt.Errorf("parent directory unknown: %w", unix.ESTALE)
	}
	return t.insertCache(&Node{ID: rec.ID, Type: rec.Type, Mount: m, Ino: st.Ino, fd: fd}), nil
}

// Register records a file the caller has just opened (O_PATH) as name in
// parent and stated, and returns its node, referenced. Register takes
// ownership of fd: it either becomes the node's fd or is closed.
func (t *Table) Register(parent *Node, name string, fd int, st *unix.Statx_t) (*Node, error) {
	n, _, err := t.register(parent, name, fd, st)
	return n, err
}

// register is Register that also says whether the fd cache held the node
// already (fd was then closed).
func (t *Table) register(parent *Node, name string, fd int, st *unix.Statx_t) (*Node, bool, error) {
	m, err := t.mountFor(st, fd)
	if err != nil {
		unix.Close(fd)
		return nil, false, err
	}
	key := inoKey{m.Index, st.Ino}
	typ := uint32(st.Mode) & unix.S_IFMT
	kl := t.keyLock(key)
	kl.Lock()
	defer kl.Unlock()
	if n := t.cachedKey(key, typ); n != nil {
		unix.Close(fd)
		return n, true, nil
	}
	rec, err := t.recordLocked(parent.ID, name, m, st, true, func() (int32, []byte, error) { return t.handleOf(fd) })
	if err != nil {
		unix.Close(fd)
		return nil, false, err
	}
	return t.insertCache(&Node{ID: rec.ID, Type: typ, Mount: m, Ino: st.Ino, fd: fd}), false, nil
}

// Entry is what a lookup that opened no fd returns: enough for a FUSE
// entry reply.
type Entry struct {
	ID    NodeID
	Mount *Mount
}

// LookupStat resolves name in parent like Lookup, but records the node
// without opening it: one statx instead of an open, a statx and (later) a
// close, and no fd cache churn. It serves the entries of a READDIRPLUS,
// most of which the guest never uses, and LOOKUPs once the fd cache is
// full (LookupEntry). A cached node is found by its key after the statx.
// The fd is opened on first use (Get), which checks the file is still the
// one recorded. name must be a validated single component other than "."
// and "..".
func (t *Table) LookupStat(parent *Node, name string, st *unix.Statx_t) (Entry, error) {
	m, err := t.statName(parent, name, st)
	if err != nil {
		return Entry{}, err
	}
	if m == nil {
		return t.lookupEntry(parent, name, st)
	}
	return t.recordEntry(parent, name, m, st, -1)
}

// statName stats name in parent and returns the known mount it is on, or
// nil for a mount seen for the first time (which is registered from an
// fd: see lookupEntry).
func (t *Table) statName(parent *Node, name string, st *unix.Statx_t) (*Mount, error) {
	if err := StatxAt(parent.fd, name, unix.AT_SYMLINK_NOFOLLOW|unix.AT_STATX_SYNC_AS_STAT, statxMask, st); err != nil {
		return nil, err
	}
	t.mounts.mu.RLock()
	m := t.mounts.byID[st.Mnt_id]
	t.mounts.mu.RUnlock()
	return m, nil
}

// lookupEntry is Lookup for a caller that needs only the entry.
func (t *Table) lookupEntry(parent *Node, name string, st *unix.Statx_t) (Entry, error) {
	n, err := t.Lookup(parent, name, st)
	if err != nil {
		return Entry{}, err
	}
	defer n.Release()
	return Entry{ID: n.ID, Mount: n.Mount}, nil
}

// LookupEntry resolves name in parent for a LOOKUP. A node the fd cache
// holds is found from one statx of the name. A new one is opened and cached
// while the cache has room: its fd pins the inode, so an OPEN that follows
// reaches the file the LOOKUP saw even if the name is replaced meanwhile
// (open(2) semantics, as the C and Rust virtiofsd keep them with an fd per
// inode; without the pin such an OPEN gets ESTALE). Once the cache is full,
// the file is recorded without an fd (LookupStat), as an evicted node is,
// rather than opening one fd and closing another per LOOKUP: a walk of a
// million files costs one statx each. name must be a validated single
// component other than "." and "..".
//
// The statx of the name is wasted on a file the fd cache does not hold
// (opening it stats the fd again, to be sure of the file opened), and
// such misses come in runs: a fresh daemon, a guest walking a tree it has
// not seen. After openFirstAfter of them in a row, while the cache has
// room, LookupEntry opens first, as Lookup does (an open and a statx per
// new file instead of two statx and an open), until a LOOKUP finds its
// node cached again.
func (t *Table) LookupEntry(parent *Node, name string, st *unix.Statx_t) (Entry, error) {
	if t.lookupMisses.Load() >= openFirstAfter && t.hasRoom() {
		return t.openEntry(parent, name, st)
	}
	m, err := t.statName(parent, name, st)
	if err != nil {
		return Entry{}, err
	}
	if m != nil {
		e, hit, room := t.cachedEntry(m, st)
		if hit {
			t.lookupMisses.Store(0)
			return e, nil
		}
		if t.lookupMisses.Load() < openFirstAfter {
			t.lookupMisses.Add(1)
		}
		if !room {
			return t.recordNew(parent, name, m, st, -1)
		}
	}
	return t.lookupEntry(parent, name, st)
}

// openFirstAfter is the run of LOOKUPs missing the fd cache after which
// LookupEntry opens names without stating them first.
const openFirstAfter = 8

// openEntry is LookupEntry opening the name first: Lookup, keeping count
// of the run of misses.
func (t *Table) openEntry(parent *Node, name string, st *unix.Statx_t) (Entry, error) {
	n, cached, err := t.openRegister(parent, name, st)
	if err != nil {
		return Entry{}, err
	}
	defer n.Release()
	if cached {
		t.lookupMisses.Store(0)
	}
	return Entry{ID: n.ID, Mount: n.Mount}, nil
}

// hasRoom reports whether the fd cache holds fewer nodes than its bound.
func (t *Table) hasRoom() bool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.roomLocked()
}

// roomLocked is hasRoom for a caller holding t.mu.
func (t *Table) roomLocked() bool { return len(t.ring) < t.opts.MaxOpenFDs }

// cachedEntry returns the entry of the file st on mount m if the fd cache
// holds its node (marking it used), and whether the cache has room for
// another node.
func (t *Table) cachedEntry(m *Mount, st *unix.Statx_t) (e Entry, hit, room bool) {
	key := inoKey{m.Index, st.Ino}
	t.mu.RLock()
	defer t.mu.RUnlock()
	room = t.roomLocked()
	if n, ok := t.byKey[key]; ok && n.Type == uint32(st.Mode)&unix.S_IFMT {
		n.clock.Store(true)
		return Entry{ID: n.ID, Mount: m}, true, room
	}
	return Entry{}, false, room
}

// Created records the file the caller has just created (or opened with
// O_CREAT) as name in parent, from fd, the open file itself: it is stated
// (st) and recorded, and no O_PATH fd is opened for it (see LookupStat).
// The caller keeps fd.
func (t *Table) Created(parent *Node, name string, fd int, st *unix.Statx_t) (Entry, error) {
	if err := Statx(fd, st); err != nil {
		return Entry{}, err
	}
	m, err := t.mountFor(st, fd)
	if err != nil {
		return Entry{}, err
	}
	return t.recordEntry(parent, name, m, st, fd)
}

// recordEntry returns the entry of the file st, name in parent on mount m,
// recording it if it is new. fd is the file itself if the caller has it
// open (for its host handle), -1 if not.
func (t *Table) recordEntry(parent *Node, name string, m *Mount, st *unix.Statx_t, fd int) (Entry, error) {
	if e, hit, _ := t.cachedEntry(m, st); hit {
		return e, nil
	}
	return t.recordNew(parent, name, m, st, fd)
}

// recordNew is recordEntry for a file the fd cache was just found not to
// hold.
func (t *Table) recordNew(parent *Node, name string, m *Mount, st *unix.Statx_t, fd int) (Entry, error) {
	key := inoKey{m.Index, st.Ino}
	kl := t.keyLock(key)
	kl.Lock()
	defer kl.Unlock()
	rec, err := t.recordLocked(parent.ID, name, m, st, false, func() (int32, []byte, error) {
		if fd >= 0 {
			return t.handleOf(fd)
		}
		return t.handleAt(parent.fd, name)
	})
	if err != nil {
		return Entry{}, err
	}
	return Entry{ID: rec.ID, Mount: m}, nil
}

// warnInsert logs a failed node table write (a full state disk, above
// all) at most every ten seconds: the guest sees the errno (ENOSPC), the
// operator this line.
func (t *Table) warnInsert(err error) {
	now := time.Now().UnixNano()
	last := t.lastInsertWarn.Load()
	if now-last < int64(10*time.Second) || !t.lastInsertWarn.CompareAndSwap(last, now) {
		return
	}
	t.log.Error("cannot record new files in the node table; lookups of them fail until it can", "err", err)
}

func (t *Table) keyLock(key inoKey) *sync.Mutex {
	return &t.keyLocks[maphash.Comparable(t.seed, key)%uint64(len(t.keyLocks))]
}

// cachedKey returns the cached node for key if it has type typ, referenced.
func (t *Table) cachedKey(key inoKey, typ uint32) *Node {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if n, ok := t.byKey[key]; ok && n.Type == typ {
		n.IncRef()
		n.clock.Store(true)
		return n
	}
	return nil
}

// recordLocked finds or creates the record of the file st, found as name in
// parent on mount m (handle computes its host handle when needed). held
// says the caller keeps the node in the fd cache (Register): its record
// need not take a place in the store's record cache too
// (nodestore.Store.LookupOrInsertHeld). The caller holds the key's lock,
// so concurrent lookups of one file agree on one nodeid.
func (t *Table) recordLocked(parent NodeID, name string, m *Mount, st *unix.Statx_t, held bool, handle func() (int32, []byte, error)) (Record, error) {
	typ := uint32(st.Mode) & unix.S_IFMT
	fresh := Record{Mount: m.Index, Ino: st.Ino, Type: typ, Parent: parent, Name: name}
	fresh.HandleType, fresh.Handle = birthHandle(st)
	var rec Record
	var err error
	if t.opts.Handles == HandlesNever {
		// One store round trip, for a file never seen (look up and
		// insert at once) as for one recorded before (the record
		// ByIno would return).
		var inserted bool
		if held {
			rec, inserted, err = t.st().LookupOrInsertHeld(fresh)
		} else {
			rec, inserted, err = t.st().LookupOrInsert(fresh)
		}
		if err != nil {
			err = fmt.Errorf("record %q in the node table: %w", name, err)
			t.warnInsert(err)
			return Record{}, err
		}
		if inserted {
			return rec, nil
		}
	} else {
		rec, err = t.st().ByIno(m.Index, st.Ino)
	}
	switch {
	case err == nil && rec.Type == typ && sameBirth(rec, st) && !t.handleChanged(rec, handle):
		if rec.Parent != parent || rec.Name != name {
			// Renamed on the host, or another hard link: remember the
			// name we can reach it by now.
			rec.Parent, rec.Name = parent, name
			if err := t.st().Update(rec); err != nil {
				t.log.Warn("could not update node path", "nodeid", rec.ID, "err", err)
			}
		}
		return rec, nil
	case err == nil:
		// The inode number was reused by another file (another type,
		// birth time or handle generation): the old nodeid's file is
		// gone.
		// Give the new file a new nodeid.
		if err := t.st().Delete(rec.ID); err != nil {
			t.log.Warn("could not delete stale node", "nodeid", rec.ID, "err", err)
		}
	case errors.Is(err, ErrNotFound) || errors.Is(err, ErrTampered):
	default:
		return Record{}, fmt.Errorf("find %q: %w", name, err)
	}
	rec = fresh
	if t.opts.Handles != HandlesNever {
		typ, h, err := handle()
		if err != nil {
			return Record{}, err
		}
		if h != nil {
			rec.HandleType, rec.Handle = typ, h
		}
	}
	if rec.ID, err = t.st().Insert(rec); err != nil {
		err = fmt.Errorf("record %q in the node table: %w", name, err)
		t.warnInsert(err)
		return Record{}, err
	}
	return rec, nil
}

// handleChanged reports whether the file's host handle differs from the one
// recorded: the inode number was reused for a new file.
func (t *Table) handleChanged(rec Record, handle func() (int32, []byte, error)) bool {
	if t.opts.Handles == HandlesNever || !isHostHandle(rec) {
		return false
	}
	typ, h, err := handle()
	if err != nil || h == nil {
		return false
	}
	return typ != rec.HandleType || string(h) != string(rec.Handle)
}

// Cached returns the node for id, referenced, if the fd cache holds it;
// nil otherwise.
func (t *Table) Cached(id NodeID) *Node { return t.cached(id) }

// Adopt caches fd, an O_PATH fd the caller opened on node id's file (a
// regular file, typ, inode ino on mount m, which the caller knows it is),
// and returns the node, referenced. If the cache holds id already, that
// node is returned and fd closed.
func (t *Table) Adopt(id NodeID, typ uint32, m *Mount, ino uint64, fd int) *Node {
	return t.insertCache(&Node{ID: id, Type: typ, Mount: m, Ino: ino, fd: fd})
}

// cached returns the cached node for id, referenced, or nil.
func (t *Table) cached(id NodeID) *Node {
	t.mu.RLock()
	defer t.mu.RUnlock()
	n, ok := t.byID[id]
	if !ok {
		return nil
	}
	n.IncRef()
	n.clock.Store(true)
	return n
}

// insertCache adds n (whose fd the caller owns) to the cache and returns it
// with a reference for the caller. If another request cached the same node
// meanwhile, that one wins and n's fd is closed.
func (t *Table) insertCache(n *Node) *Node {
	t.mu.Lock()
	if old, ok := t.byID[n.ID]; ok {
		old.IncRef()
		old.clock.Store(true)
		t.mu.Unlock()
		unix.Close(n.fd)
		return old
	}
	n.refs.Store(2) // the cache's and the caller's
	t.byID[n.ID] = n
	t.byKey[inoKey{n.Mount.Index, n.Ino}] = n
	n.ringIdx = len(t.ring)
	t.ring = append(t.ring, n)
	var buf [4]*Node
	evicted := t.evictLocked(buf[:0])
	t.mu.Unlock()
	for _, e := range evicted {
		e.Release()
	}
	return n
}

// evictLocked runs the CLOCK hand until the cache is within bounds and
// appends to out the nodes whose cache reference the caller must drop
// (outside t.mu: the last release closes an fd). One insert evicts at most
// one node in the steady state, so a small out on the caller's stack
// saves an allocation per insert.
func (t *Table) evictLocked(out []*Node) []*Node {
	for scans := 0; len(t.ring) > t.opts.MaxOpenFDs && scans < 2*len(t.ring)+2; scans++ {
		if t.hand >= len(t.ring) {
			t.hand = 0
		}
		n := t.ring[t.hand]
		if n.clock.Swap(false) || n.refs.Load() > 1 {
			t.hand++
			continue
		}
		t.removeLocked(t.hand)
		out = append(out, n)
	}
	return out
}

// removeLocked takes ring[i] out of the cache (swap-remove).
func (t *Table) removeLocked(i int) {
	n := t.ring[i]
	last := len(t.ring) - 1
	t.ring[i] = t.ring[last]
	t.ring[i].ringIdx = i
	t.ring[last] = nil
	t.ring = t.ring[:last]
	delete(t.byID, n.ID)
	if t.byKey[inoKey{n.Mount.Index, n.Ino}] == n {
		delete(t.byKey, inoKey{n.Mount.Index, n.Ino})
	}
}

// Forget is the kernel dropping nlookup references. Nodeids stay valid; the
// node's fd becomes the first candidate for eviction.
func (t *Table) Forget(id NodeID, nlookup uint64) {
	t.mu.RLock()
	if n, ok := t.byID[id]; ok {
		n.clock.Store(false)
	}
	t.mu.RUnlock()
}

// Moved tells the table that the file now at name in newParent (already
// renamed on the host) used to be elsewhere, so its record names the path it
// can be re-found by.
func (t *Table) Moved(newParent *Node, name string) {
	var st unix.Statx_t
	if err := StatxAt(newParent.fd, name, unix.AT_SYMLINK_NOFOLLOW, statxMask, &st); err != nil {
		return
	}
	t.mounts.mu.RLock()
	m, ok := t.mounts.byID[st.Mnt_id]
	t.mounts.mu.RUnlock()
	if !ok {
		return
	}
	rec, err := t.st().ByIno(m.Index, st.Ino)
	if err != nil || (rec.Parent == newParent.ID && rec.Name == name) {
		return
	}
	rec.Parent, rec.Name = newParent.ID, name
	if err := t.st().Update(rec); err != nil {
		t.log.Warn("could not update node path after rename", "nodeid", rec.ID, "err", err)
	}
}

// ParentOf returns the directory (referenced) and name through which node n
// is reached now, checked to still name n.
func (t *Table) ParentOf(n *Node) (*Node, string, error) {
	rec, err := t.st().Get(n.ID)
	if err != nil {
		return nil, "", err
	}
	parent, err := t.Get(rec.Parent)
	if err != nil {
		return nil, "", err
	}
	var st unix.Statx_t
	if err := StatxAt(parent.fd, rec.Name, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_INO, &st); err != nil || st.Ino != n.Ino {
		parent.Release()
		return nil, "", fmt.Errorf("nodeid %d is no longer %q in nodeid %d: %w", n.ID, rec.Name, rec.Parent, unix.ESTALE)
	}
	return parent, rec.Name, nil
}

// Removed drops the record of a file whose last name was just removed (st
// is its stat from before). Nodes in use keep working through their fds;
// the nodeid stops resolving once they are gone.
func (t *Table) Removed(st *unix.Statx_t) {
	idx, ok := t.MountIndex(st)
	if !ok {
		return
	}
	// The cache's O_PATH fd would keep the unlinked inode (and its
	// disk space) alive; let it go unless a request or open file uses it.
	t.mu.Lock()
	var evicted *Node
	var id NodeID
	if n, ok := t.byKey[inoKey{idx, st.Ino}]; ok {
		// A cached node names the file's record: its fd keeps the
		// inode alive, so no other file can have its number, and the
		// store's reverse index need not be asked.
		id = n.ID
		if !n.pinned && n.refs.Load() == 1 {
			t.removeLocked(n.ringIdx)
			evicted = n
		}
	}
	t.mu.Unlock()
	evicted.Release()
	if id == 0 {
		rec, err := t.st().ByIno(idx, st.Ino)
		if err != nil {
			return
		}
		id = rec.ID
	}
	if id == RootID {
		return
	}
	if err := t.st().Delete(id); err != nil && !errors.Is(err, ErrNotFound) {
		t.log.Warn("drop the record of a removed file", "nodeid", id, "err", err)
	}
}

// MountIndex returns the persistent index of the mount a statx result lives
// on, or false if the table has not seen that mount yet.
func (t *Table) MountIndex(st *unix.Statx_t) (uint32, bool) {
	t.mounts.mu.RLock()
	defer t.mounts.mu.RUnlock()
	m, ok := t.mounts.byID[st.Mnt_id]
	if !ok {
		return 0, false
	}
	return m.Index, true
}
