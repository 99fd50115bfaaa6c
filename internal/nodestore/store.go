package nodestore

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
)

// NodeID is a FUSE nodeid. 1 is the root. A store never hands out the same
// NodeID twice over its lifetime, not even after a crash.
type NodeID uint64

// RootID is the nodeid the kernel uses for the root of the mount. The first
// Insert into a fresh store returns it.
const RootID NodeID = 1

// Limits of a Record. They match the kernel's NAME_MAX and MAX_HANDLE_SZ.
const (
	MaxNameLen   = 255
	MaxHandleLen = 128
)

// Record is what the store keeps for one nodeid.
//
// Records returned by Get and ByIno may share Handle with the store's cache:
// callers must treat Handle as read-only.
type Record struct {
	ID         NodeID
	Mount      uint32 // index into the mount table (see MountRecord)
	Ino        uint64 // host st_ino on that mount
	Type       uint32 // S_IFMT bits of the host file
	Parent     NodeID // parent directory's nodeid, for the path fallback (0 for the root)
	Name       string // name in Parent, ≤ MaxNameLen bytes, for the path fallback
	HandleType int32  // host file handle type (name_to_handle_at); negative: a type of the caller's own (the inode table's birth time), never a host handle
	Handle     []byte // ≤ MaxHandleLen bytes; empty if the host fs has no handles
}

// MountRecord describes one host mount inside the shared directory.
type MountRecord struct {
	Index uint32   // assigned by PutMount
	Path  string   // relative to the shared directory, "" for the root mount
	Dev   uint64   // st_dev of the mount's root
	FSID  [2]int32 // statfs f_fsid
}

// Store is the node identity table: nodeid ⇄ host file. All methods are safe
// for concurrent use.
type Store interface {
	// Generation is the random, nonzero epoch chosen when the store was
	// created. It is the FUSE generation of every nodeid of this store.
	Generation() uint64
	// Get returns the record of id: ErrNotFound if there is none (never
	// inserted, deleted, or lost in a host crash), ErrTampered if the
	// stored record fails its MAC.
	Get(id NodeID) (Record, error)
	// ByIno returns the owner of (mount, ino) (see "Which record ByIno
	// answers" in the package doc): the record that the newest Insert, or
	// Update moving a record onto that pair, stored, unless it was deleted
	// or moved away since; ErrNotFound if there is none.
	ByIno(mount uint32, ino uint64) (Record, error)
	// Insert stores r under a new nodeid (r.ID is ignored) and points the
	// reverse index for (r.Mount, r.Ino) at it, replacing an older entry
	// (host inode number reuse). When it returns, the record survives a
	// crash of the process (see the package doc for host crashes) —
	// with Options.WriteBehindRecords only once Flush has returned.
	Insert(r Record) (NodeID, error)
	// LookupOrInsert returns the record ByIno(r.Mount, r.Ino) would
	// return, or inserts r if there is none, atomically: concurrent
	// LOOKUPs of one host file agree on one nodeid.
	LookupOrInsert(r Record) (rec Record, inserted bool, err error)
	// LookupOrInsertHeld is LookupOrInsert for a caller that keeps the
	// node in memory while it uses it (the inode table's fd cache): a
	// record it inserts is not put in the store's record cache, which is
	// for the nodes the caller does not hold (their Get, ByIno, Delete).
	// Filling it for every new node was the store's dearest step in a
	// cold LOOKUP (a cold line and, in a fresh daemon, a page fault per
	// few dozen nodes, plus the retained name and handle): without it,
	// daemon CPU per cold LOOKUP -7 / -10 / -12 % at 1 / 4 / 16 in
	// flight (4 interleaved bench runs each). A later Get of the record
	// reads it (from the write-behind window if it is among the newest),
	// and caches it then.
	LookupOrInsertHeld(r Record) (rec Record, inserted bool, err error)
	// Update replaces the record r.ID (rename, new handle after host inode
	// reuse). If r moves to another (mount, ino), r.ID becomes its owner
	// and leaves the old one without owner if it owned it; if not, the
	// owner stays whichever record it was. ErrNotFound if r.ID has no
	// record.
	Update(r Record) error
	// Delete removes the record id and, if it owns its (mount, ino), the
	// reverse index entry: the pair is then without owner, even if older
	// records have it. The nodeid stays retired. ErrNotFound if id has no
	// record.
	Delete(id NodeID) error
	// PutMount adds m to the mount table (m.Index is ignored) and returns
	// its index; a mount with the same Path and Dev keeps its index.
	PutMount(m MountRecord) (uint32, error)
	// Mounts returns the mount table, ordered by Index.
	Mounts() ([]MountRecord, error)
	// Sync makes everything stored so far durable against a host crash.
	Sync() error
	// Close syncs and releases the store. Other calls then fail with
	// ErrClosed.
	Close() error
}

// Errors. Use errors.Is: the store wraps them with context.
var (
	ErrNotFound = errors.New("nodestore: no such record")
	ErrTampered = errors.New("nodestore: record failed its MAC (tampered, torn or foreign)")
	ErrInvalid  = errors.New("nodestore: invalid record")
	ErrClosed   = errors.New("nodestore: store is closed")
)

// validate checks r before it is stored.
func validate(r *Record) error {
	if len(r.Name) > MaxNameLen {
		return fmt.Errorf("%w: name is %d bytes, max %d", ErrInvalid, len(r.Name), MaxNameLen)
	}
	if strings.ContainsAny(r.Name, "/\x00") {
		return fmt.Errorf("%w: name %q contains '/' or NUL", ErrInvalid, r.Name)
	}
	if len(r.Handle) > MaxHandleLen {
		return fmt.Errorf("%w: handle is %d bytes, max %d", ErrInvalid, len(r.Handle), MaxHandleLen)
	}
	return nil
}

func validateMount(m *MountRecord) error {
	if len(m.Path) > maxMountPath {
		return fmt.Errorf("%w: mount path is %d bytes, max %d", ErrInvalid, len(m.Path), maxMountPath)
	}
	if strings.ContainsRune(m.Path, 0) {
		return fmt.Errorf("%w: mount path contains NUL", ErrInvalid)
	}
	return nil
}

const maxMountPath = 4096

// Options configure Open.
type Options struct {
	// Key is the MAC key (at least 16 bytes). If nil, Open reads dir/key,
	// or creates it (32 random bytes, mode 0600).
	Key []byte
	// CacheBytes bounds the in-memory record cache; 0 means 8 MiB.
	CacheBytes int
	// Logger receives tamper reports and recovery notes; nil means
	// slog.Default().
	Logger *slog.Logger
	// WriteBehindRecords defers the write of the records that Insert,
	// LookupOrInsert and Update store (Update only when it keeps the
	// record's (mount, ino); the root's record is always written) to the
	// next Flush (see Flusher), which writes each run of consecutive
	// nodeids with one pwrite: a request that creates hundreds of nodes
	// (READDIRPLUS of a new directory) costs a few pwrites instead of one
	// per node. Until Flush (or Sync or Close) returns, such a record is
	// NOT durable: a crash of the process may lose it, and the next
	// process then reads its nodeid as ErrNotFound. Every call of this
	// store sees it meanwhile, as if it were written. At most 256 records
	// are pending: a write that finds the buffer full writes it first.
	// The caller must call Flush before it lets anyone outside the
	// process learn of a pending record (the FUSE reply naming the
	// nodeid). Without it, every record is written before the call that
	// stores it returns.
	WriteBehindRecords bool
}

func cloneRecord(r Record) Record {
	if r.Handle != nil {
		r.Handle = append([]byte(nil), r.Handle...)
	}
	return r
}
