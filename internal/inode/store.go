package inode

import "github.com/govirtiofsd/govirtiofsd/internal/nodestore"

// The table keeps its records in a nodestore.Store: persistent and sealed
// (nodestore.Open) or in memory for --state-dir=none (nodestore.OpenMemory).
type (
	// NodeID is a FUSE nodeid, never reused over the life of its store.
	NodeID = nodestore.NodeID
	// Record is what the store keeps for one nodeid.
	Record = nodestore.Record
	// MountRecord names one host mount inside the shared directory.
	MountRecord = nodestore.MountRecord
	// Store keeps node records.
	Store = nodestore.Store
)

// RootID is the nodeid of the shared directory (FUSE_ROOT_ID).
const RootID = nodestore.RootID

// Errors of the store that mean "no such node" to the guest (ESTALE).
var (
	ErrNotFound = nodestore.ErrNotFound
	ErrTampered = nodestore.ErrTampered
)

// inoKey identifies a host file within the table: persistent mount index
// and host inode number.
type inoKey struct {
	mount uint32
	ino   uint64
}
