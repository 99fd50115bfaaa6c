// Package virtqueue implements the device side of virtio split virtqueues
// over guest memory shared by a vhost-user front-end.
//
// # Guarantees
//
//   - Guest memory is a set of [Region]s, each an mmap of a file descriptor
//     the front-end passed (SET_MEM_TABLE, ADD_MEM_REG). Every guest address
//     the driver supplies (descriptor buffers, indirect tables) and every
//     front-end address (ring locations) is translated through [Memory]; the
//     translation never yields a slice that reaches outside a mapped region.
//     A buffer that crosses a region boundary becomes several iov elements.
//     Address arithmetic is checked for overflow.
//   - Descriptor chains are walked defensively: each descriptor is copied out
//     of guest memory once (the guest may rewrite it concurrently), next
//     indices are bounds-checked, a chain longer than the queue size (which
//     also catches loops) is refused, nested indirect tables are refused, a
//     device-readable descriptor after a device-writable one is refused, and
//     indirect descriptors are refused unless VIRTIO_RING_F_INDIRECT_DESC was
//     negotiated. A refused chain is reported as an error; nothing panics.
//   - [Driver] is the other side of the same ring (what a guest driver
//     does), used by tests and by the Go front-end in package vhostfront.
//   - The used ring is published with the barriers the virtio spec asks for;
//     each barrier carries a comment saying what it orders.
//     Notification suppression is implemented in both directions, with and
//     without VIRTIO_RING_F_EVENT_IDX.
//
// # Memory model
//
// The ring fields the driver and the device both touch are accessed with
// single-copy-atomic aligned loads and stores (sync/atomic on the containing
// 32-bit word where that word lies inside the ring, otherwise an aligned
// 16-bit access after an explicit full barrier). Barriers are built from
// sync/atomic read-modify-write operations, which are full barriers on amd64
// (LOCK-prefixed) and the only target this package is tuned for; the package
// assumes a little-endian host, as virtio 1.0 rings are little-endian.
//
// # Reference model
//
// A [Region] is referenced by every [Memory] table that contains it; a
// [Memory] is referenced by its creator and by every user that called
// [Memory.Acquire] (a queue's ring view, each in-flight request). The mapping
// is unmapped when the last reference is released, so a memory-table update
// from the front-end never pulls pages out from under a request that is still
// writing its reply.
//
// # Concurrency
//
// [Memory] is safe for concurrent use. A [Queue] is not: the caller must
// serialise [Queue.Next], [Queue.Push], [Queue.NeedNotify],
// [Queue.EnableNotification] and [Queue.DisableNotification] with one lock.
// [Queue.ReadChain] only reads immutable ring geometry and may run without
// that lock. There are no locks inside this package to order.
package virtqueue
