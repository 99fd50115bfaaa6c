package nodestore

import (
	"cmp"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Flusher is implemented by the stores of this package (Open, OpenMemory):
// Flush writes the records written behind (Options.WriteBehindRecords).
// The daemon calls it after handling each FUSE request and before
// publishing the reply, through a type assertion on the Store.
type Flusher interface {
	// Flush writes every record that Insert, LookupOrInsert and Update
	// left pending, and the zeroed slots of Deletes, so that when it
	// returns nil they survive a crash of the process (as records written
	// without write-behind do when the call returns). It is safe to call from several goroutines at once,
	// without any other lock, and costs one atomic load when nothing is
	// pending. A nil return also covers records that another goroutine's
	// Flush was writing meanwhile. An error leaves the records pending
	// (later Flush calls retry them): a reply that depends on them must
	// not be sent as if they were stored.
	Flush() error
}

var (
	_ Flusher = (*diskStore)(nil)
	_ Flusher = (*memStore)(nil)
)

// Flush writes the pending records (see Flusher). Without
// Options.WriteBehindRecords nothing is ever pending and it does nothing.
func (s *diskStore) Flush() error {
	if s.wb == nil {
		return nil
	}
	if err := s.wb.flush(); err != nil {
		return fmt.Errorf("nodestore: flush: %w", err)
	}
	return nil
}

// Flush does nothing: a memory store has nothing to write.
func (s *memStore) Flush() error { return nil }

// behindMax records (64 KiB of slots) at most are pending: an Insert or
// Update that finds the buffer full writes it first, so memory stays
// bounded even if nobody calls Flush, and a READDIRPLUS that records
// hundreds of entries costs one pwrite per 256 of them.
const behindMax = 256

// writeBehind holds the sealed main slots of records whose pwrite is
// deferred (Options.WriteBehindRecords), until Flush, Sync, Close, an
// index flush or a full buffer writes them, each run of consecutive
// nodeids with one pwrite. A Delete leaves the record's slot pending as
// zeros (unless it writes its tombstone at once, see diskStore.Delete).
// Only the pending slots are ever written: a slot that is not pending
// (one a concurrent inserter is about to fill) is never touched by a
// flush.
//
// Overflow slots (records.ext) are written at once: they are rare, and
// appended, so one written early is harmless (no main slot names it yet).
//
// The newest nodeids' slots are stored through a shared mapping of 256
// KiB of the records file around them (the window: 1024 slots, aligned,
// inside one allocation chunk) rather than written with pwrite: a copy instead of a system call per
// Flush, which in the daemon is one per request that recorded a new node
// (a cold LOOKUP, a CREATE, a MKDIR). A mapped page is in the page cache
// as a written one is, so what Flush stored survives the process alike,
// and Sync's fdatasync writes it back. The window moves to the chunk of a
// run past it (one munmap and one mmap per 1024 new nodeids); runs before
// it (an Update or Delete of an older record) are written with pwrite.
// Stores go only to slots the file has blocks for (Insert allocates a
// new slot's chunk before it adds it here), so a full disk cannot turn
// into SIGBUS. Memory: the window's pages written through, at most
// 256 KiB. A process that dies in the middle of a copy leaves a slot that
// fails its MAC: a record no reply had named yet, as one not flushed.
//
// Locking: mu is a leaf taken under diskStore.mu (either way) or, by
// Flush, alone. Entries are added and dropped only under diskStore.mu held
// exclusively (and mu), so a writer of a slot never races the flush of an
// older version of it: a direct write (zeros written through, an Update
// written through) first drops the slot's pending entry, which waits for
// a flush in progress. A flush holds mu until its writes are done and only then
// empties the buffer and stores n = 0, so a reader that sees an id not
// pending (under mu, or n == 0 without it) finds it in the file.
type writeBehind struct {
	// n is the number of pending records, for Flush's lock-free check.
	// It drops to 0 only once they are all written.
	n atomic.Int32

	mu sync.Mutex
	// fd is the records file; -1 once the store is closed.
	fd int // +checklocks:mu
	// ids[i] is the nodeid of slots[i*slotSize:][:slotSize]. Inserts
	// append in nodeid order, so runs are usually contiguous already.
	ids   []NodeID // +checklocks:mu
	slots []byte   // +checklocks:mu
	// order and run are the flush's scratch: a sort permutation, and a
	// run gathered from non-adjacent entries (after Updates).
	order []uint16 // +checklocks:mu
	run   []byte   // +checklocks:mu
	// win maps the records file at winOff (a multiple of windowSize);
	// nil before the first flush, or if the file cannot be mapped
	// (noWin: pwrite only).
	win    []byte // +checklocks:mu
	winOff int64  // +checklocks:mu
	noWin  bool   // +checklocks:mu
}

// windowSize is the span of the records file mapped for flushes. It
// divides allocChunk, so an aligned window lies in one allocation chunk.
const windowSize = 256 << 10

// A compile-time check that windowSize divides allocChunk.
var _ [0]struct{} = [allocChunk % windowSize]struct{}{}

func newWriteBehind(fd int) *writeBehind {
	return &writeBehind{
		fd:    fd,
		ids:   make([]NodeID, 0, behindMax),
		slots: make([]byte, 0, behindMax*slotSize),
	}
}

// add makes slot the pending content of id's slot. fresh says id is new
// (never pending: no search). A full buffer is written first; if that
// fails, nothing is added and the error returned. Needs diskStore.mu held
// exclusively.
func (w *writeBehind) add(id NodeID, slot *[slotSize]byte, fresh bool) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fd < 0 {
		return ErrClosed
	}
	if !fresh {
		if i := w.findLocked(id); i >= 0 {
			copy(w.slots[i*slotSize:], slot[:])
			return nil
		}
	}
	if len(w.ids) >= behindMax {
		if err := w.flushLocked(); err != nil {
			return err
		}
	}
	w.ids = append(w.ids, id)
	w.slots = append(w.slots, slot[:]...)
	w.n.Store(int32(len(w.ids)))
	return nil
}

// +checklocks:w.mu
func (w *writeBehind) findLocked(id NodeID) int {
	// Newest first: a lookup is most often for a record just added.
	for i := len(w.ids) - 1; i >= 0; i-- {
		if w.ids[i] == id {
			return i
		}
	}
	return -1
}

// read copies id's slot into dst if it is pending, or in the window (the
// newest nodeids': a copy instead of a pread, for the Get or Delete of a
// node that was inserted without being cached, see LookupOrInsertHeld),
// and reports whether it did. Needs diskStore.mu held (either way).
func (w *writeBehind) read(id NodeID, dst []byte) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.n.Load() != 0 {
		if i := w.findLocked(id); i >= 0 {
			copy(dst, w.slots[i*slotSize:(i+1)*slotSize])
			return true
		}
	}
	// The window spans one allocation chunk that the file has blocks
	// for (see writeLocked), and a mapped page is the page cache's page,
	// which pwrite updates too.
	off := int64(id) * slotSize
	if w.inWindowLocked(off, off+slotSize) {
		copy(dst, w.win[off-w.winOff:off-w.winOff+slotSize])
		return true
	}
	return false
}

// drop forgets id's pending slot, if any, before a direct write of the
// slot (and waits for a flush in progress, which may be writing it).
// Needs diskStore.mu held exclusively.
func (w *writeBehind) drop(id NodeID) {
	if w.n.Load() == 0 {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	i := w.findLocked(id)
	if i < 0 {
		return
	}
	w.ids = slices.Delete(w.ids, i, i+1)
	w.slots = slices.Delete(w.slots, i*slotSize, (i+1)*slotSize)
	w.n.Store(int32(len(w.ids)))
}

// flush writes the pending slots. It needs no other lock.
func (w *writeBehind) flush() error {
	if w.n.Load() == 0 {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.flushLocked()
}

// flushLocked writes the pending slots, one pwrite per run of consecutive
// nodeids, and empties the buffer once all are written. On an error they
// all stay pending (rewriting the same bytes is harmless).
//
// +checklocks:w.mu
func (w *writeBehind) flushLocked() error {
	n := len(w.ids)
	if n == 0 {
		return nil
	}
	if w.fd < 0 {
		return ErrClosed
	}
	sorted := true
	for i := 1; i < n; i++ {
		if w.ids[i] <= w.ids[i-1] {
			sorted = false
			break
		}
	}
	if sorted {
		// Runs are contiguous in slots: write them from there.
		start := 0
		for i := 1; i <= n; i++ {
			if i < n && w.ids[i] == w.ids[i-1]+1 {
				continue
			}
			if err := w.writeLocked(w.slots[start*slotSize:i*slotSize], int64(w.ids[start])*slotSize); err != nil {
				return fmt.Errorf("write records: %w", err)
			}
			start = i
		}
	} else {
		w.order = w.order[:0]
		for i := range n {
			w.order = append(w.order, uint16(i))
		}
		ids := w.ids
		slices.SortFunc(w.order, func(a, b uint16) int { return cmp.Compare(ids[a], ids[b]) })
		if w.run == nil {
			w.run = make([]byte, 0, behindMax*slotSize)
		}
		start := 0
		for j := 1; j <= n; j++ {
			if j < n && ids[w.order[j]] == ids[w.order[j-1]]+1 {
				continue
			}
			w.run = w.run[:0]
			for _, i := range w.order[start:j] {
				w.run = append(w.run, w.slots[int(i)*slotSize:(int(i)+1)*slotSize]...)
			}
			if err := w.writeLocked(w.run, int64(ids[w.order[start]])*slotSize); err != nil {
				return fmt.Errorf("write records: %w", err)
			}
			start = j
		}
	}
	w.ids = w.ids[:0]
	w.slots = w.slots[:0]
	w.n.Store(0)
	return nil
}

// writeLocked writes b at off of the records file: stored through the
// window if it falls in it, or past it (the window moves there), else
// with pwrite.
//
// +checklocks:w.mu
func (w *writeBehind) writeLocked(b []byte, off int64) error {
	end := off + int64(len(b))
	if !w.noWin && (w.win == nil || off >= w.winOff+windowSize) {
		start := off / windowSize * windowSize
		if end <= start+windowSize {
			w.unmapLocked()
			m, err := unix.Mmap(w.fd, start, windowSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
			if err != nil {
				w.noWin = true // a filesystem without shared writable mappings
			} else {
				w.win, w.winOff = m, start
			}
		}
	}
	if w.inWindowLocked(off, end) {
		copy(w.win[off-w.winOff:], b)
		return nil
	}
	return pwriteFull(w.fd, b, off)
}

// inWindowLocked reports whether [off, end) of the records file is mapped.
//
// +checklocks:w.mu
func (w *writeBehind) inWindowLocked(off, end int64) bool {
	return w.win != nil && off >= w.winOff && end <= w.winOff+windowSize
}

// +checklocks:w.mu
func (w *writeBehind) unmapLocked() {
	if w.win != nil {
		unix.Munmap(w.win)
		w.win = nil
	}
}

// close makes later writes fail with ErrClosed (the descriptor is about
// to be closed); what is still pending (a failed flush) is lost. Needs
// diskStore.mu held exclusively.
func (w *writeBehind) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.unmapLocked()
	w.fd = -1
}
