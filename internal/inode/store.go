package inode

import "errors"

// NodeID is a FUSE nodeid. FUSE_ROOT_ID (1) is the shared directory. A
// NodeID is never reused for another file over the life of its Store.
type NodeID uint64

// RootID is the nodeid of the shared directory (FUSE_ROOT_ID).
const RootID NodeID = 1

// Record is what a Store keeps for one nodeid: enough to find the host file
// again (by handle, or by walking Parent/Name from the root) and to check
// that what was found is the same file.
type Record struct {
	ID         NodeID
	Mount      uint32 // index into the mount table (MountRecord.Index)
	Ino        uint64 // host st_ino on that mount
	Type       uint32 // S_IFMT bits of the host file
	Parent     NodeID // parent directory (0 for the root)
	Name       string // name in Parent
	HandleType int32  // host file handle from name_to_handle_at, if any
	Handle     []byte
}

// MountRecord names one host mount inside the shared directory.
type MountRecord struct {
	Index uint32
	Path  string // relative to the shared directory; "" for the shared directory's own mount
	Dev   uint64
}

// Errors a Store returns; the table maps them to ESTALE for the guest.
var (
	ErrNotFound = errors.New("node not found")
	ErrTampered = errors.New("node record failed its integrity check")
)

// Store keeps node records. Implementations are safe for concurrent use.
// Insert assigns the next nodeid; the first Insert into an empty store
// returns RootID.
type Store interface {
	Generation() uint64
	Get(id NodeID) (Record, error)
	ByIno(mount uint32, ino uint64) (Record, error)
	Insert(r Record) (NodeID, error)
	Update(r Record) error
	Delete(id NodeID) error
	PutMount(m MountRecord) (uint32, error)
	Mounts() ([]MountRecord, error)
	Close() error
}
