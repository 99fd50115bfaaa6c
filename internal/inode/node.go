package inode

import (
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Node is a live, referenced host file: an O_PATH fd plus what the table
// knows about it.
//
// Reference model: the fd cache holds one reference while the node is in it;
// every Node returned by Table.Get, Table.Lookup or Table.Register carries
// one more, which the caller gives back with Release. The fd is closed when
// the last reference goes, so eviction or FORGET never closes an fd that a
// request is still using (the model of Go's internal/poll fdMutex).
type Node struct {
	ID    NodeID
	Type  uint32 // S_IFMT bits
	Mount *Mount
	Ino   uint64 // host st_ino

	fd   int
	refs atomic.Int32

	// clock is the CLOCK "recently used" bit; set on every hit, cleared by
	// the eviction hand.
	clock atomic.Bool
	// pinned nodes (the root) are never evicted.
	pinned bool
	// ringIdx is the node's place in Table.ring (guarded by Table.mu).
	ringIdx int
}

// FD returns the node's O_PATH file descriptor. It stays valid until the
// caller's reference is released.
func (n *Node) FD() int { return n.fd }

// IsDir reports whether the node is a directory.
func (n *Node) IsDir() bool { return n.Type == unix.S_IFDIR }

// IsSymlink reports whether the node is a symbolic link.
func (n *Node) IsSymlink() bool { return n.Type == unix.S_IFLNK }

// IncRef takes one more reference, for a caller that keeps the node beyond
// the request (an open file keeps its node).
func (n *Node) IncRef() { n.refs.Add(1) }

// Release drops one reference; the last one closes the fd.
func (n *Node) Release() {
	if n == nil {
		return
	}
	if r := n.refs.Add(-1); r == 0 {
		unix.Close(n.fd)
		n.fd = -1
	} else if r < 0 {
		panic("inode: Node released more often than referenced")
	}
}
