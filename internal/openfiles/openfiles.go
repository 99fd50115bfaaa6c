// Package openfiles keeps the FUSE file handles the guest holds (from OPEN,
// CREATE and OPENDIR) in a small file in the state directory, so that a
// process that takes over a connection (restart, upgrade) can reopen every
// file the guest has open and answer READ, WRITE and READDIR on handles its
// predecessor issued.
//
// Guarantees:
//   - An entry is written (to the page cache) before Add returns, so it
//     survives SIGKILL of the daemon; an fh is never given to two open files
//     at once.
//   - Each slot is sealed with HMAC-SHA256 (truncated to 16 bytes) over its
//     slot number and contents, keyed from the node table's key: a slot
//     edited or copied from elsewhere is ignored (and logged), so the file
//     cannot be used to make the daemon open a file the guest never opened.
//   - Memory is one small map entry per open file, plus the pages of the
//     file's mapping that slots were written through (see below).
//
// Slots are written through a shared mapping of the file's first
// mappedBytes (a copy of 64 bytes instead of a pwrite: 2 per OPEN+RELEASE,
// see BenchmarkAddRemove), and with pwrite beyond it or where the file
// cannot be mapped. A mapped page is in the page cache like a written one,
// so an entry survives the process as before. The file grows with
// fallocate (or written zeros) before a slot is stored through the
// mapping, so a full disk fails the Add, never a store to the mapping
// (which would be SIGBUS). Slots are reused lowest-freed-last, so the
// pages touched stay few. A write torn by the process dying in the middle
// of a copy fails its MAC next time: such an entry is dropped, and its
// request (an Add or Remove not yet replied to) was never answered. The
// append journal is written with pwrite all the same: it updates an entry
// the guest holds.
//
// Lock order: Table.mu is a leaf.
package openfiles

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"log/slog"
	"os"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Kind says what an fh names.
type Kind uint32

const (
	File Kind = 1 // OPEN / CREATE / TMPFILE
	Dir  Kind = 2 // OPENDIR
)

// Entry is one open file.
type Entry struct {
	FH     uint64
	NodeID uint64
	Flags  uint32 // host open flags
	Kind   Kind
	// BackingID is the kernel's id for the file's FUSE passthrough
	// backing file (0: none). It stays valid across a restart of the
	// server, so a successor reuses it rather than register a second one
	// for the same inode (which the kernel refuses).
	BackingID int32
	// The append journal: the last O_APPEND WRITE started on this fh
	// (its FUSE unique) and the file size before it. A successor that
	// gets that WRITE again (FUSE_NOTIFY_RESEND) can tell whether it was
	// already applied, since appending twice is not idempotent.
	JournalUnique uint64
	JournalSize   uint64
}

const (
	slotSize = 64 // fh, nodeid, flags, kind, backing id, pad, journal unique, journal size, mac[16]
	sealed   = 48 // bytes covered by the MAC
	macOff   = 48
	macLen   = 16
)

// Table is the open-file table. A nil *os.File means memory only
// (--state-dir=none).
type Table struct {
	f   *os.File
	mac []byte
	log *slog.Logger
	// mapped is the file's first mappedBytes mapped shared, nil if it
	// could not be. Slots below len(mapped)/slotSize are written there
	// once the file has blocks for them (allocated).
	mapped []byte

	mu sync.Mutex
	// sealer is HMAC-SHA256 keyed with mac, made once and Reset per
	// slot: keying it again for every OPEN and RELEASE cost two extra
	// SHA-256 blocks and four allocations each.
	sealer  hash.Hash         // +checklocks:mu
	sum     [sha256.Size]byte // +checklocks:mu
	live    map[uint64]Entry  // +checklocks:mu
	free    []uint64          // +checklocks:mu slots to reuse
	nextFH  uint64            // +checklocks:mu
	resumed map[uint64]Entry  // +checklocks:mu entries a predecessor left
	// allocated is how far the file has blocks (its size, grown by
	// allocChunk), for writes through mapped.
	allocated   int64 // +checklocks:mu
	noFallocate bool  // +checklocks:mu
}

const (
	// mappedBytes of the file are mapped: 16384 open files. Only the
	// pages written through count towards the process's memory.
	mappedBytes = 1 << 20
	// allocChunk is how much the file grows at a time for the mapping.
	allocChunk = 4096
)

// OpenMemory returns a table that is not persisted.
func OpenMemory() *Table {
	return &Table{live: map[uint64]Entry{}, resumed: map[uint64]Entry{}, nextFH: 1, log: slog.Default()}
}

// Open opens (or creates) the table at path. key is the node table's master
// key. Entries left by a predecessor are kept for Resume.
func Open(path string, key []byte, log *slog.Logger) (*Table, error) {
	if log == nil {
		log = slog.Default()
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open file table %s: %w", path, err)
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte("govirtiofsd/openfiles/v1"))
	t := &Table{f: f, mac: m.Sum(nil), log: log, live: map[uint64]Entry{}, resumed: map[uint64]Entry{}, nextFH: 1}
	t.sealer = hmac.New(sha256.New, t.mac)
	t.mu.Lock() // seal's lock; nobody else has t yet
	defer t.mu.Unlock()
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	buf := make([]byte, st.Size()-st.Size()%slotSize)
	if _, err := f.ReadAt(buf, 0); err != nil && len(buf) > 0 {
		f.Close()
		return nil, fmt.Errorf("read file table %s: %w", path, err)
	}
	for slot := uint64(0); slot*slotSize < uint64(len(buf)); slot++ {
		b := buf[slot*slotSize : (slot+1)*slotSize]
		e := decode(b)
		switch {
		case e.FH == 0:
			t.free = append(t.free, slot)
		case e.FH != slot+1 || !hmac.Equal(b[macOff:macOff+macLen], t.seal(slot, b)):
			log.Error("file table slot failed its integrity check; ignoring it", "file", path, "slot", slot)
			t.free = append(t.free, slot)
		default:
			t.resumed[e.FH] = e
		}
		t.nextFH = slot + 2
	}
	t.allocated = st.Size()
	if m, err := unix.Mmap(int(f.Fd()), 0, mappedBytes, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err == nil {
		t.mapped = m
	} else {
		log.Debug("file table not mapped; written with pwrite", "file", path, "err", err)
	}
	return t, nil
}

func decode(b []byte) Entry {
	return Entry{
		FH:     binary.LittleEndian.Uint64(b[0:]),
		NodeID: binary.LittleEndian.Uint64(b[8:]),
		Flags:  binary.LittleEndian.Uint32(b[16:]),
		Kind:   Kind(binary.LittleEndian.Uint32(b[20:])),

		BackingID: int32(binary.LittleEndian.Uint32(b[24:])),

		JournalUnique: binary.LittleEndian.Uint64(b[32:]),
		JournalSize:   binary.LittleEndian.Uint64(b[40:]),
	}
}

// seal computes the MAC of a slot's sealed bytes. The result is valid
// until the next call.
func (t *Table) seal(slot uint64, b []byte) []byte {
	t.sealer.Reset()
	var s [8]byte
	binary.LittleEndian.PutUint64(s[:], slot)
	t.sealer.Write(s[:])
	t.sealer.Write(b[:sealed])
	return t.sealer.Sum(t.sum[:0])[:macLen]
}

// Add records a new open file and returns its fh.
func (t *Table) Add(nodeid uint64, flags uint32, kind Kind) (uint64, error) {
	return t.AddBacked(nodeid, flags, kind, 0)
}

// AddBacked records a new open file served by FUSE passthrough through the
// kernel backing file backingID.
func (t *Table) AddBacked(nodeid uint64, flags uint32, kind Kind, backingID int32) (uint64, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var slot uint64
	if n := len(t.free); n > 0 {
		slot, t.free = t.free[n-1], t.free[:n-1]
	} else {
		slot = t.nextFH - 1
		t.nextFH++
	}
	e := Entry{FH: slot + 1, NodeID: nodeid, Flags: flags, Kind: kind, BackingID: backingID}
	t.live[e.FH] = e
	if err := t.writeLocked(slot, e); err != nil {
		// The file is open all the same; only a successor process
		// will not know the handle.
		return e.FH, fmt.Errorf("%w: %w", ErrNotRecorded, err)
	}
	return e.FH, nil
}

// ErrNotRecorded is returned with a valid fh when the entry could not be
// written (state dir full): the handle works, but not across a restart.
var ErrNotRecorded = errors.New("open file not recorded for restarts")

func (t *Table) writeLocked(slot uint64, e Entry) error {
	if t.f == nil {
		return nil
	}
	off := int64(slot * slotSize)
	if off+slotSize <= int64(len(t.mapped)) && t.allocLocked(off+slotSize) == nil {
		b := (*[slotSize]byte)(unsafe.Pointer(&t.mapped[off]))
		t.encodeLocked(slot, b, e)
		return nil
	}
	return t.writeThroughLocked(slot, e)
}

// writeThroughLocked writes slot with pwrite even where the file is
// mapped: one copy that a dying process cannot tear.
func (t *Table) writeThroughLocked(slot uint64, e Entry) error {
	if t.f == nil {
		return nil
	}
	var b [slotSize]byte
	t.encodeLocked(slot, &b, e)
	if _, err := t.f.WriteAt(b[:], int64(slot*slotSize)); err != nil {
		return fmt.Errorf("write file table: %w", err)
	}
	return nil
}

// allocLocked gives the file blocks up to end at least, so that stores
// through the mapping up to there cannot fault.
func (t *Table) allocLocked(end int64) error {
	if end <= t.allocated {
		return nil
	}
	size := (end - t.allocated + allocChunk - 1) / allocChunk * allocChunk
	fd := int(t.f.Fd())
	var err error
	if !t.noFallocate {
		err = unix.Fallocate(fd, 0, t.allocated, size)
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
			t.noFallocate = true
		}
	}
	if t.noFallocate {
		_, err = t.f.WriteAt(make([]byte, size), t.allocated)
	}
	if err != nil {
		return fmt.Errorf("grow file table: %w", err)
	}
	t.allocated += size
	return nil
}

// encodeLocked writes e, sealed, into b (zeros for an empty slot).
func (t *Table) encodeLocked(slot uint64, b *[slotSize]byte, e Entry) {
	*b = [slotSize]byte{}
	if e.FH == 0 {
		return
	}
	binary.LittleEndian.PutUint64(b[0:], e.FH)
	binary.LittleEndian.PutUint64(b[8:], e.NodeID)
	binary.LittleEndian.PutUint32(b[16:], e.Flags)
	binary.LittleEndian.PutUint32(b[20:], uint32(e.Kind))
	binary.LittleEndian.PutUint32(b[24:], uint32(e.BackingID))
	binary.LittleEndian.PutUint64(b[32:], e.JournalUnique)
	binary.LittleEndian.PutUint64(b[40:], e.JournalSize)
	copy(b[macOff:], t.seal(slot, b[:]))
}

// Remove forgets fh (RELEASE / RELEASEDIR) and returns what it named.
func (t *Table) Remove(fh uint64) (Entry, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, live := t.live[fh]
	if !live {
		var old bool
		if e, old = t.resumed[fh]; !old {
			return Entry{}, false
		}
	}
	delete(t.live, fh)
	delete(t.resumed, fh)
	if err := t.writeLocked(fh-1, Entry{}); err != nil {
		t.log.Warn("clear file table slot", "fh", fh, "err", err)
	}
	t.free = append(t.free, fh-1)
	return e, true
}

// Journal records that the O_APPEND WRITE unique is about to be applied to
// fh's file, whose size is size now. It is written before the data.
func (t *Table) Journal(fh, unique, size uint64) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.live[fh]
	if !ok {
		return nil
	}
	e.JournalUnique, e.JournalSize = unique, size
	t.live[fh] = e
	return t.writeThroughLocked(fh-1, e)
}

// Resumed lists the entries a predecessor left that are not live again yet.
func (t *Table) Resumed() []Entry {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]Entry, 0, len(t.resumed))
	for _, e := range t.resumed {
		out = append(out, e)
	}
	return out
}

// Resume returns the entry a predecessor process recorded for fh, if the
// kernel's request names the same nodeid, and makes it live again.
func (t *Table) Resume(fh, nodeid uint64) (Entry, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.resumed[fh]
	if !ok || e.NodeID != nodeid {
		return Entry{}, false
	}
	delete(t.resumed, fh)
	t.live[fh] = e
	return e, true
}

// Close closes the backing file.
func (t *Table) Close() error {
	if t.f == nil {
		return nil
	}
	t.mu.Lock()
	if t.mapped != nil {
		unix.Munmap(t.mapped)
		t.mapped = nil
	}
	t.mu.Unlock()
	return t.f.Close()
}

// Entries lists every open file, live or left by a predecessor (for a
// migration's device state).
func (t *Table) Entries() []Entry {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]Entry, 0, len(t.live)+len(t.resumed))
	for _, e := range t.live {
		out = append(out, e)
	}
	for _, e := range t.resumed {
		out = append(out, e)
	}
	return out
}

// Adopt takes over the open files of a migrated guest: each becomes an
// entry to Resume, under the same fh. The table must not use those fhs.
func (t *Table) Adopt(entries []Entry) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, e := range entries {
		if e.FH == 0 {
			return fmt.Errorf("adopt open file: fh 0")
		}
		if _, ok := t.live[e.FH]; ok {
			return fmt.Errorf("adopt open file: fh %d is in use", e.FH)
		}
	}
	taken := map[uint64]bool{}
	for _, e := range entries {
		e.BackingID = 0 // a backing id means nothing on another connection
		if err := t.writeLocked(e.FH-1, e); err != nil {
			return err
		}
		t.resumed[e.FH] = e
		taken[e.FH-1] = true
		for t.nextFH <= e.FH {
			t.free = append(t.free, t.nextFH-1)
			t.nextFH++
		}
	}
	free := t.free[:0]
	for _, s := range t.free {
		if !taken[s] {
			free = append(free, s)
		}
	}
	t.free = free
	return nil
}
