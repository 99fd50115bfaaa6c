package nodestore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

var (
	_ Store = (*diskStore)(nil)
	_ Store = (*memStore)(nil)
)

// diskStore is the persistent store. See the package doc for the file
// formats, durability and the lock order.
type diskStore struct {
	dir   string
	log   *slog.Logger
	keys  keys
	mac   *macer
	gen   uint64
	cache *cache
	bufs  sync.Pool // of *slotBuf
	// isClosed mirrors closed for Get's lock-free cache hits.
	isClosed atomic.Bool
	// migStep is how many index entries a write migrates (migrateStep;
	// tests lower it). Set before the store is shared.
	migStep uint64

	// reportMu is a leaf lock. reported holds the tampered nodeids
	// already logged.
	reportMu sync.Mutex
	reported map[NodeID]struct{} // +checklocks:reportMu

	// mu: readers (Get, ByIno, Mounts, Sync, Export) hold it shared,
	// writers exclusively. It also orders cache fills against writes (see
	// cache).
	mu     sync.RWMutex
	closed bool          // +checklocks:mu
	hdr    header        // +checklocks:mu
	mounts []MountRecord // +checklocks:mu

	// Files. extF holds the overflow slots (records.ext).
	metaF *os.File // +checklocks:mu
	recF  *os.File // +checklocks:mu
	recFD int      // +checklocks:mu
	extF  *os.File // +checklocks:mu
	extFD int      // +checklocks:mu

	// next is the next nodeid to hand out, extNext the next overflow
	// slot to append, allocEnd the bytes of the records file
	// preallocated.
	next     NodeID // +checklocks:mu
	extNext  uint64 // +checklocks:mu
	allocEnd int64  // +checklocks:mu
	// noFallocate: the filesystem has no fallocate; allocLocked writes
	// zeros.
	noFallocate bool // +checklocks:mu

	// The reverse index: ix is the current table (file ixF); mig is
	// non-nil while ix grows from an older table, prep the next table
	// being zero-filled, prepFailed set when preparing failed (wait for
	// the grow). migCrossed counts, for tests, unmigrated keys placed in
	// the new table. See grow.go.
	ixF        *os.File       // +checklocks:mu
	ix         index          // +checklocks:mu
	mig        *migration     // +checklocks:mu
	prep       *preparedIndex // +checklocks:mu
	prepFailed bool           // +checklocks:mu
	migCrossed int            // +checklocks:mu
	// ixEpoch changes whenever a table is created, opened or retired,
	// which invalidates the cache's index position hints (ixHint).
	ixEpoch uint32 // +checklocks:mu
	// hdrDurable is the header copy last made durable (fdatasync'ed):
	// every header write goes to the other copy, so a host crash that
	// tears it, or loses it unsynced, falls back to a copy on disk with
	// the current nodeid reservation. See writeHeaderLocked.
	hdrDurable int // +checklocks:mu
	// noDefer turns off the index write-behind (deferIndexLocked); tests.
	noDefer bool
	// fpBits is the largest index (log2 buckets) kept mirrored in memory
	// (index.fp). Set at open.
	fpBits uint
	// wb holds the records written behind (Options.WriteBehindRecords);
	// nil without the option. Set at open.
	wb *writeBehind
}

// writeHeaderLocked writes s.hdr over the copy that is not known durable;
// with sync it makes it durable (and with it the whole meta file). Only
// synced writes may change the nodeid reservation: an unsynced one may be
// lost in a host crash, which then reads the durable copy. Index changes
// (grow start and end) are written unsynced, off the fdatasync a request
// would otherwise wait for: after a host crash the index is rebuilt
// anyway, and a process crash keeps the page cache.
func (s *diskStore) writeHeaderLocked(sync bool) error {
	slot := 1 - s.hdrDurable
	if err := writeHeaderSlot(int(s.metaF.Fd()), &s.hdr, s.keys.header, slot, sync); err != nil {
		return err
	}
	if sync {
		s.hdrDurable = slot
	}
	return nil
}

const (
	// reserveBatch nodeids are reserved (header written and fdatasync'ed)
	// at a time, so a crash of any kind can skip nodeids but never hand
	// one out twice.
	reserveBatch = 1 << 16
	// allocChunk bytes of the records file (16384 slots) are preallocated
	// at a time, so a full disk fails an Insert before it writes
	// anything. Large because each fallocate(2) stalls the inserting
	// request, and with it the requests queued behind it: on ext4 it took
	// 0.1-0.3 ms, and at 256 KiB (one per 1024 new nodes) those stalls
	// set the tail of cold LOOKUPs (5 interleaved bench runs each, 4 in
	// flight: p99 224-242 -> 182-201 us, throughput +5 %; 16 in flight
	// p99 -9 %, throughput +8 %). Cost: up to 4 MiB of disk preallocated
	// ahead of the records.
	allocChunk        = 4 << 20
	defaultCacheBytes = 8 << 20
)

// Open opens the persistent store in dir, creating dir (mode 0700) and the
// store if they do not exist. Only one process may have a store open.
func Open(dir string, opts Options) (Store, error) {
	s, err := open(dir, opts)
	if err != nil {
		return nil, err
	}
	return s, nil
}

func open(dir string, opts Options) (*diskStore, error) { return openGen(dir, opts, 0) }

// openGen is open; a store it creates gets generation gen (random if 0).
func openGen(dir string, opts Options, gen uint64) (*diskStore, error) {
	logger := opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("nodestore: %w", err)
	}
	if st, err := os.Stat(dir); err == nil && st.Mode().Perm()&0o022 != 0 {
		// Integrity does not depend on it (everything is sealed), but
		// others could delete or replace the files.
		logger.Warn("nodestore: state directory is writable by group or others", "dir", dir, "mode", st.Mode().Perm())
	}
	key := opts.Key
	if key == nil {
		var err error
		if key, err = loadKey(dir); err != nil {
			return nil, err
		}
	} else if len(key) < 16 {
		return nil, fmt.Errorf("nodestore: key is %d bytes, need at least 16", len(key))
	}
	cacheBytes := opts.CacheBytes
	if cacheBytes <= 0 {
		cacheBytes = defaultCacheBytes
	}
	s := &diskStore{
		dir:      dir,
		log:      logger.With("store", dir),
		keys:     deriveKeys(key),
		cache:    newCache(cacheBytes),
		migStep:  migrateStep,
		reported: make(map[NodeID]struct{}),
		ixEpoch:  1,
		fpBits:   fpBitsFor(cacheBytes),
	}
	s.bufs.New = func() any { return new(slotBuf) }
	s.gen = gen
	s.ix.k0 = binary.LittleEndian.Uint64(s.keys.index)
	s.ix.k1 = binary.LittleEndian.Uint64(s.keys.index[8:])
	s.ix.fd = -1
	if err := s.openFiles(); err != nil {
		s.closeFiles()
		return nil, fmt.Errorf("nodestore: open %s: %w", dir, err)
	}
	if opts.WriteBehindRecords {
		s.wb = newWriteBehind(s.recFD)
	}
	return s, nil
}

func (s *diskStore) openFiles() error {
	var err error
	s.metaF, err = os.OpenFile(filepath.Join(s.dir, metaFile), os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	metaFD := int(s.metaF.Fd())
	if err := unix.Flock(metaFD, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return fmt.Errorf("store is in use by another process: %w", err)
	}
	hdr, slot, err := readHeaderSlot(metaFD, s.keys.header)
	fresh := false
	switch {
	case errors.Is(err, os.ErrNotExist):
		// Both copies empty: a new store, unless records exist.
		if st, err := os.Stat(filepath.Join(s.dir, recordsFile)); err == nil && st.Size() > 0 {
			return errors.New("header missing but records file is not empty")
		}
		fresh = true
		if s.gen == 0 {
			s.gen = newGeneration()
		}
		hdr = header{generation: s.gen, reserved: RootID, indexSeq: 1, indexBits: minIndexBits}
		if err := zeroFill(metaFD, 0, 2*headerStride); err != nil {
			return fmt.Errorf("allocate header: %w", err)
		}
	case err != nil:
		return fmt.Errorf("read header: %w", err)
	default:
		// The newest copy may have been written unsynced by a process
		// that crashed: make it durable before the other copy is
		// overwritten, so that a torn write cannot fall back to an
		// older copy on disk.
		if err := unix.Fdatasync(metaFD); err != nil {
			return fmt.Errorf("sync header: %w", err)
		}
		s.hdrDurable = slot
	}
	s.hdr = hdr
	s.gen = hdr.generation
	s.mac = newMacer(s.keys.record, s.gen)

	s.recF, err = os.OpenFile(filepath.Join(s.dir, recordsFile), os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	s.recFD = int(s.recF.Fd())
	st, err := s.recF.Stat()
	if err != nil {
		return err
	}
	s.allocEnd = st.Size()
	s.extF, err = os.OpenFile(filepath.Join(s.dir, extFile), os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	s.extFD = int(s.extF.Fd())
	if st, err = s.extF.Stat(); err != nil {
		return err
	}
	// Appended slots only: a torn last slot is skipped, never reused.
	s.extNext = uint64((st.Size() + extSlotSize - 1) / extSlotSize)

	if b, err := readFileNoFollow(filepath.Join(s.dir, mountsFile)); err == nil {
		if s.mounts, err = decodeMounts(b, s.keys.mounts, s.gen); err != nil {
			return err
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}

	// The reverse index.
	rebuild := ""
	ixPath := filepath.Join(s.dir, indexPrefix+strconv.FormatUint(hdr.indexSeq, 10))
	if fresh {
		if err := s.createIndex(hdr.indexSeq, uint(hdr.indexBits)); err != nil {
			return err
		}
	} else {
		s.ixF, err = os.OpenFile(ixPath, os.O_RDWR|unix.O_NOFOLLOW, 0)
		if err == nil {
			s.ix.fd, s.ix.bits = int(s.ixF.Fd()), uint(hdr.indexBits)
			if st, err := s.ixF.Stat(); err != nil || st.Size() != int64(s.ix.size()*entrySize+trailerSize) {
				rebuild = "index file has the wrong size"
			} else if err := s.ix.count(s.fpBits); err != nil {
				return err
			} else if hdr.migSeq != 0 {
				if err := s.resumeMigration(); err != nil {
					rebuild = "cannot resume growing the index: " + err.Error()
				}
			}
		} else if errors.Is(err, os.ErrNotExist) {
			rebuild = "index file is missing"
		} else {
			return err
		}
		if hdr.flags&flagOpen != 0 && hdr.bootID != bootID() {
			rebuild = "the host crashed while the store was open"
		}
	}
	s.removeStaleIndexes()

	s.next = hdr.reserved
	if s.next < RootID {
		s.next = RootID
	}
	if rebuild != "" {
		s.log.Warn("nodestore: rebuilding the reverse index from the records", "reason", rebuild)
		if err := s.rebuildIndexLocked(); err != nil {
			return fmt.Errorf("rebuild index: %w", err)
		}
	} else if !fresh && hdr.flags&(flagOpen|flagIndexed) == flagOpen|flagIndexed {
		// The last process stopped without Close: index entries it
		// wrote behind may be missing.
		if err := s.recoverIndexLocked(max(hdr.indexed, RootID)); err != nil {
			return fmt.Errorf("recover index: %w", err)
		}
	}
	s.hdr.reserved = s.next + reserveBatch
	s.hdr.indexed = s.next
	s.hdr.flags |= flagOpen | flagIndexed
	s.hdr.bootID = bootID()
	if err := s.writeHeaderLocked(true); err != nil {
		return err
	}
	if fresh {
		// Make the new files' names durable.
		syncDir(s.dir)
	}
	return nil
}

func (s *diskStore) Generation() uint64 { return s.gen }

func (s *diskStore) Get(id NodeID) (Record, error) {
	if r, ok := s.cache.get(id); ok && !s.isClosed.Load() {
		return r, nil
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return Record{}, ErrClosed
	}
	return s.getLocked(id)
}

// getLocked reads and verifies the record of id, and caches it. s.mu must
// be held (either way).
func (s *diskStore) getLocked(id NodeID) (Record, error) { return s.readLocked(id, true) }

// readLocked is getLocked; cache says whether a record read from the file
// goes into the record cache (not for one about to be deleted).
func (s *diskStore) readLocked(id NodeID, cache bool) (Record, error) {
	if r, ok := s.cache.get(id); ok {
		return r, nil
	}
	if id == 0 || id >= s.next {
		return Record{}, fmt.Errorf("nodeid %d: %w", id, ErrNotFound)
	}
	buf := s.bufs.Get().(*slotBuf)
	defer s.bufs.Put(buf)
	off := int64(id) * slotSize
	var err error
	if s.wb == nil || !s.wb.read(id, buf.main[:]) {
		err = preadFull(s.recFD, buf.main[:], off)
	}
	if err == nil {
		err = s.readExtLocked(buf)
	}
	if err != nil {
		return Record{}, fmt.Errorf("nodestore: read nodeid %d: %w", id, err)
	}
	var r Record
	switch s.mac.decodeSlot(buf, id, &r) {
	case slotEmpty:
		return Record{}, fmt.Errorf("nodeid %d: %w", id, ErrNotFound)
	case slotBad:
		s.reportTampered(id, off)
		return Record{}, fmt.Errorf("nodeid %d: %w", id, ErrTampered)
	}
	if cache {
		s.cache.putRec(r)
	}
	return r, nil
}

// reportTampered logs a record that failed its MAC, once per nodeid (up to
// maxReported nodeids at a time), so that a guest repeating a lookup
// cannot flood the log.
func (s *diskStore) reportTampered(id NodeID, off int64) {
	s.reportMu.Lock()
	_, seen := s.reported[id]
	if !seen {
		if len(s.reported) >= maxReported {
			clear(s.reported)
		}
		s.reported[id] = struct{}{}
	}
	s.reportMu.Unlock()
	if !seen {
		s.log.Error("nodestore: record fails its MAC: tampered, torn by a host crash, or copied from another store; refusing it",
			"nodeid", uint64(id), "file", filepath.Join(s.dir, recordsFile), "offset", off)
	}
}

const maxReported = 4096

func (s *diskStore) ByIno(mount uint32, ino uint64) (Record, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return Record{}, ErrClosed
	}
	return s.byInoLocked(inoKey{mount, ino})
}

func (s *diskStore) Insert(r Record) (NodeID, error) {
	if err := validate(&r); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, ErrClosed
	}
	rec, err := s.insertLocked(r, nil, true)
	if err != nil {
		return 0, fmt.Errorf("nodestore: insert: %w", err)
	}
	return rec.ID, nil
}

func (s *diskStore) LookupOrInsert(r Record) (Record, bool, error) {
	return s.lookupOrInsert(r, true)
}

func (s *diskStore) LookupOrInsertHeld(r Record) (Record, bool, error) {
	return s.lookupOrInsert(r, false)
}

// lookupOrInsert is LookupOrInsert; cache says whether a record it inserts
// goes into the record cache.
func (s *diskStore) lookupOrInsert(r Record, cache bool) (Record, bool, error) {
	if err := validate(&r); err != nil {
		return Record{}, false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return Record{}, false, ErrClosed
	}
	old, found, put, err := s.lookupForInsertLocked(inoKey{r.Mount, r.Ino})
	if err != nil {
		return Record{}, false, err
	}
	if found {
		return old, false, nil
	}
	rec, err := s.insertLocked(r, &put, cache)
	if err != nil {
		return Record{}, false, fmt.Errorf("nodestore: insert: %w", err)
	}
	return rec, true, nil
}

// insertLocked stores r under a new nodeid. put, if not nil, is where a
// probe made under the same hold of s.mu would put the index entry; it is
// used unless the index changed meanwhile. cache says whether the record
// goes into the record cache (see LookupOrInsertHeld); the record returned
// shares its Handle with the cache.
func (s *diskStore) insertLocked(r Record, put *putSlot, cache bool) (Record, error) {
	// Make room first, so that a failure (ENOSPC above all) leaves
	// nothing half done. A migration step moves entries, so a probe made
	// before it is stale.
	migrating := s.mig != nil
	if err := s.maintainIndexLocked(s.migStep); err != nil {
		return Record{}, err
	}
	if migrating || s.mig != nil {
		put = nil
	}
	if s.next >= s.hdr.reserved {
		old := s.hdr.reserved
		s.hdr.reserved = s.next + reserveBatch
		if err := s.writeHeaderLocked(true); err != nil {
			s.hdr.reserved = old
			return Record{}, fmt.Errorf("reserve nodeids: %w", err)
		}
	}
	off := int64(s.next) * slotSize
	if err := s.allocLocked(off + slotSize); err != nil {
		return Record{}, err
	}
	r = cloneRecord(r)
	r.ID = s.next
	s.next++ // from here on, failure skips the nodeid
	// The root is written through: it is synced below.
	if err := s.writeRecordLocked(&r, s.wb != nil && r.ID != RootID, true); err != nil {
		s.zeroSlotLocked(r.ID)
		return Record{}, err
	}
	k := inoKey{r.Mount, r.Ino}
	var hint ixHint
	var err error
	if put == nil {
		var p putSlot
		if p, err = s.probePutLocked(k); err == nil {
			put = &p
		}
	}
	if err == nil {
		hint, err = s.placeMaybeBehindLocked(*put, r.ID, true)
	}
	if err != nil {
		s.zeroSlotLocked(r.ID)
		return Record{}, fmt.Errorf("update reverse index: %w", err)
	}
	if len(s.ix.pend) >= pendMax || put.replace && put.oldID != r.ID && put.oldID >= s.hdr.indexed {
		// Full, or r took the key from a record that the next Open's
		// recovery would re-index too (from the mark on): move the
		// mark past both, so that if r is deleted, recovery cannot
		// give the key back to the older record (see
		// recoverIndexLocked). Taking a key from a live record is rare
		// (host inode reuse the daemon did not see).
		if err := s.flushIndexLocked(); err != nil {
			// The record and its entry (in memory) are there; the
			// file catches up at the next flush, or the next Open.
			s.log.Warn("nodestore: write reverse index", "err", err)
		}
	}
	if r.ID == RootID {
		// The root must survive even a power loss right after the store
		// was created: the kernel knows it as nodeid 1 for good, and a
		// store without it cannot serve. Its index entry need not: after
		// a host crash the index is rebuilt from the records.
		if err := unix.Fdatasync(s.recFD); err != nil {
			return Record{}, fmt.Errorf("sync records: %w", err)
		}
	}
	if cache {
		s.cache.putRecHint(r, hint)
	}
	s.cache.putIno(k, r.ID)
	return r, nil
}

// readExtLocked reads the overflow slot that buf.main names, if any.
func (s *diskStore) readExtLocked(buf *slotBuf) error {
	idx, ok := extIndex(buf.main[:])
	if !ok {
		return nil
	}
	if idx >= s.extNext {
		clear(buf.ext[:]) // fails the MAC
		return nil
	}
	return preadFull(s.extFD, buf.ext[:], int64(idx)*extSlotSize)
}

// scanSlotsLocked reads the records file from nodeid from up to byte
// offset end, batch slots per pread, and calls fn with the nodeid, file
// offset, decoded record and status (slotOK or slotBad) of each slot that
// is not empty. It stops at the first error.
func (s *diskStore) scanSlotsLocked(from NodeID, end int64, batch int, fn func(id NodeID, off int64, r *Record, st slotStatus) error) error {
	buf := make([]byte, batch*slotSize)
	sb := new(slotBuf)
	for off := int64(from) * slotSize; off < end; off += int64(len(buf)) {
		b := buf[:min(int64(len(buf)), end-off)]
		if err := preadFull(s.recFD, b, off); err != nil {
			return err
		}
		for i := 0; i+slotSize <= len(b); i += slotSize {
			id := NodeID((off + int64(i)) / slotSize)
			if id == 0 || b[i] == 0 && isZero(b[i:i+slotSize]) {
				continue
			}
			copy(sb.main[:], b[i:i+slotSize])
			if err := s.readExtLocked(sb); err != nil {
				return err
			}
			var r Record
			st := s.mac.decodeSlot(sb, id, &r)
			if st == slotEmpty {
				continue
			}
			if err := fn(id, off+int64(i), &r, st); err != nil {
				return err
			}
		}
	}
	return nil
}

// writeRecordLocked seals r and writes it: first its overflow slot, if it
// needs one, then its slot, so that a failure leaves the old slot intact.
// With behind (write-behind on) the slot goes to s.wb instead; fresh says
// r.ID was never written (an Insert). Without behind, a pending version of
// the slot is dropped first, so that no flush overwrites the new one.
func (s *diskStore) writeRecordLocked(r *Record, behind, fresh bool) error {
	buf := s.bufs.Get().(*slotBuf)
	defer s.bufs.Put(buf)
	var idx uint64
	if needsExt(r) {
		idx = s.extNext
		s.extNext++ // a failed write leaks the slot; it is never reused
	}
	s.mac.encodeSlot(buf, r, idx)
	if needsExt(r) {
		if err := pwriteFull(s.extFD, buf.ext[:], int64(idx)*extSlotSize); err != nil {
			return fmt.Errorf("write overflow record: %w", err)
		}
	}
	if behind {
		if err := s.wb.add(r.ID, &buf.main, fresh); err != nil {
			return fmt.Errorf("write record: %w", err)
		}
		return nil
	}
	if s.wb != nil {
		s.wb.drop(r.ID)
	}
	if err := pwriteFull(s.recFD, buf.main[:], int64(r.ID)*slotSize); err != nil {
		return fmt.Errorf("write record: %w", err)
	}
	return nil
}

// allocLocked makes sure the records file has blocks up to end. It
// fallocates them where the filesystem can: slots are appended in order,
// so the unwritten extents convert in long runs, and a write into a page
// of them that the host evicted (drop_caches, memory pressure) needs no
// read of it first, as a page of written zeros does: that read, once per
// 16 new nodes, cost a cold fresh daemon ~3 µs per LOOKUP. Elsewhere it
// writes zeros (see zeroFill for why the index is always zero-filled).
func (s *diskStore) allocLocked(end int64) error {
	if end <= s.allocEnd {
		return nil
	}
	var err error
	for _, chunk := range []int64{allocChunk, 4096} {
		size := (end - s.allocEnd + chunk - 1) / chunk * chunk
		if !s.noFallocate {
			err = unix.Fallocate(s.recFD, 0, s.allocEnd, size)
			if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
				s.noFallocate = true
			}
		}
		if s.noFallocate {
			err = zeroFill(s.recFD, s.allocEnd, size)
		}
		if err == nil {
			s.allocEnd += size
			return nil
		}
		if !errors.Is(err, unix.ENOSPC) {
			break
		}
	}
	return fmt.Errorf("allocate records file: %w", err)
}

// zeroSlotLocked empties a slot (overwriting allocated blocks needs no
// space). Errors are ignored: the caller already fails, and a slot that
// stays half written fails its MAC.
func (s *diskStore) zeroSlotLocked(id NodeID) {
	if s.wb != nil {
		s.wb.drop(id)
	}
	var zero [slotSize]byte
	_ = pwriteFull(s.recFD, zero[:], int64(id)*slotSize)
	s.cache.delRec(id)
}

func (s *diskStore) Update(r Record) error {
	if err := validate(&r); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	old, err := s.getLocked(r.ID)
	tampered := errors.Is(err, ErrTampered)
	if err != nil && !tampered {
		return fmt.Errorf("nodestore: update: %w", err)
	}
	r = cloneRecord(r)
	oldK, newK := inoKey{old.Mount, old.Ino}, inoKey{r.Mount, r.Ino}
	if tampered || oldK != newK {
		// Room in the index first: a full disk fails the Update before
		// it changes anything. Entries written behind go to the file
		// first: the next Open's recovery re-indexes only records newer
		// than the mark, so it must not find one that this older record
		// has taken the key from.
		if err := s.flushIndexLocked(); err != nil {
			return fmt.Errorf("nodestore: update nodeid %d: %w", r.ID, err)
		}
		if err := s.maintainIndexLocked(s.migStep); err != nil {
			return fmt.Errorf("nodestore: update nodeid %d: %w", r.ID, err)
		}
	}
	hint, _ := s.cache.getHint(r.ID)
	// Written behind only if the key stays (a rename): an Update that
	// moves the record to another key rewrites index entries in the
	// file now, which must not name a record still in memory.
	behind := s.wb != nil && !tampered && oldK == newK
	if err := s.writeRecordLocked(&r, behind, false); err != nil {
		s.cache.delRec(r.ID)
		return fmt.Errorf("nodestore: update nodeid %d: %w", r.ID, err)
	}
	if tampered || oldK != newK {
		s.cache.putRec(r)
	} else {
		s.cache.putRecHint(r, hint) // the index entry stays
	}
	if !tampered && oldK != newK {
		s.cache.delIno(oldK, r.ID)
		if err := s.indexDelHintLocked(oldK, r.ID, hint); err != nil {
			return fmt.Errorf("nodestore: update nodeid %d: %w", r.ID, err)
		}
	}
	if tampered || oldK != newK {
		hint, err := s.indexPutHintLocked(newK, r.ID)
		if err != nil {
			return fmt.Errorf("nodestore: update nodeid %d: %w", r.ID, err)
		}
		s.cache.setHint(r.ID, hint)
		s.cache.putIno(newK, r.ID)
	}
	// An Update that keeps the key leaves the ino hints alone: r.ID may
	// be an older record whose key a newer one took, and it does not
	// take it back (see the package doc).
	return nil
}

func (s *diskStore) Delete(id NodeID) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	old, err := s.readLocked(id, false)
	tampered := errors.Is(err, ErrTampered)
	if err != nil && !tampered {
		return fmt.Errorf("nodestore: delete: %w", err)
	}
	if s.mig != nil {
		if err := s.stepMigrationLocked(s.migStep); err != nil {
			return fmt.Errorf("nodestore: delete nodeid %d: %w", id, err)
		}
	}
	var k inoKey
	var e ixEntry
	if !tampered {
		k = inoKey{old.Mount, old.Ino}
		hint, _ := s.cache.getHint(id)
		if e, err = s.indexFindLocked(k, id, hint); err != nil {
			return fmt.Errorf("nodestore: delete nodeid %d: %w", id, err)
		}
	}
	// The tombstone waits in the index's pending entries where losing
	// it is harmless (deferTombLocked), and then, with write-behind, the
	// zeroed slot waits with the records written behind: the Flush before
	// the reply writes it, so a Delete the caller reported survives a
	// process crash as one written through does. Otherwise (a migration,
	// no mirror, an entry pending over another record's) both are
	// written now, as without write-behind.
	tombBehind := e.ix != nil && s.deferTombLocked(e)
	var zero [slotSize]byte
	if s.wb != nil && (e.ix == nil || tombBehind) {
		if err := s.wb.add(id, &zero, false); err != nil {
			return fmt.Errorf("nodestore: delete nodeid %d: %w", id, err)
		}
	} else {
		if s.wb != nil {
			s.wb.drop(id)
		}
		if err := pwriteFull(s.recFD, zero[:], int64(id)*slotSize); err != nil {
			return fmt.Errorf("nodestore: delete nodeid %d: %w", id, err)
		}
	}
	s.cache.delRec(id)
	if tampered {
		return nil
	}
	s.cache.delIno(k, id)
	if e.ix == nil {
		return nil
	}
	if err := s.tombLocked(e, tombBehind); err != nil {
		return fmt.Errorf("nodestore: delete nodeid %d: %w", id, err)
	}
	if tombBehind && len(s.ix.pend) >= pendMax {
		if err := s.flushIndexLocked(); err != nil {
			// The record is deleted and its entry a tombstone (in
			// memory); the file catches up at the next flush.
			s.log.Warn("nodestore: write reverse index", "err", err)
		}
	}
	return nil
}

func (s *diskStore) PutMount(m MountRecord) (uint32, error) {
	if err := validateMount(&m); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, ErrClosed
	}
	if i, ok := findMount(s.mounts, m); ok {
		return i, nil
	}
	m.Index = uint32(len(s.mounts))
	ms := append(s.mounts[:len(s.mounts):len(s.mounts)], m)
	if err := writeFileAtomic(s.dir, mountsFile, encodeMounts(ms, s.keys.mounts, s.gen)); err != nil {
		return 0, fmt.Errorf("nodestore: put mount: %w", err)
	}
	s.mounts = ms
	return m.Index, nil
}

func (s *diskStore) Mounts() ([]MountRecord, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, ErrClosed
	}
	return append([]MountRecord(nil), s.mounts...), nil
}

// Sync writes back the records and the index. It holds no lock while it
// waits for the disk: the periodic Sync (every few seconds) would otherwise
// stall every Insert and Delete for as long as writeback takes (tens of
// milliseconds with megabytes of new records). It syncs duplicates of the
// descriptors, so a concurrent Close or index grow cannot close them under
// it; what is written meanwhile may or may not be included.
func (s *diskStore) Sync() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	if err := s.flushIndexLocked(); err != nil {
		s.mu.Unlock()
		return fmt.Errorf("nodestore: sync: %w", err)
	}
	type target struct {
		fd   int
		what string
	}
	ts := []target{{s.recFD, "records"}, {s.extFD, "overflow records"}, {s.ix.fd, "index"}}
	if s.mig != nil {
		ts = append(ts, target{s.mig.old.fd, "old index"})
	}
	var err error
	for i := range ts {
		if ts[i].fd, err = unix.FcntlInt(uintptr(ts[i].fd), unix.F_DUPFD_CLOEXEC, 0); err != nil {
			for _, t := range ts[:i] {
				unix.Close(t.fd)
			}
			s.mu.Unlock()
			return fmt.Errorf("nodestore: sync: %w", err)
		}
	}
	s.mu.Unlock()
	for _, t := range ts {
		if serr := unix.Fdatasync(t.fd); serr != nil && err == nil {
			err = fmt.Errorf("nodestore: sync %s: %w", t.what, serr)
		}
		unix.Close(t.fd)
	}
	return err
}

func (s *diskStore) syncLocked() error {
	if err := unix.Fdatasync(s.recFD); err != nil {
		return fmt.Errorf("nodestore: sync records: %w", err)
	}
	if err := unix.Fdatasync(s.extFD); err != nil {
		return fmt.Errorf("nodestore: sync overflow records: %w", err)
	}
	if err := unix.Fdatasync(s.ix.fd); err != nil {
		return fmt.Errorf("nodestore: sync index: %w", err)
	}
	if s.mig != nil {
		if err := unix.Fdatasync(s.mig.old.fd); err != nil {
			return fmt.Errorf("nodestore: sync old index: %w", err)
		}
	}
	return nil
}

func (s *diskStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	s.closed = true
	s.isClosed.Store(true)
	err := s.flushIndexLocked() // and the records written behind
	if s.wb != nil {
		s.wb.close()
	}
	if err == nil {
		err = s.syncLocked()
	}
	if err == nil {
		// A clean close: the next open need not suspect the index.
		s.hdr.flags &^= flagOpen
		err = s.writeHeaderLocked(true)
	}
	if cerr := s.closeFiles(); err == nil {
		err = cerr
	}
	return err
}

func (s *diskStore) closeFiles() error {
	var errs []error
	if s.mig != nil {
		errs = append(errs, s.mig.oldF.Close())
	}
	s.dropPrepLocked()
	for _, f := range []*os.File{s.ixF, s.extF, s.recF, s.metaF} {
		if f != nil {
			errs = append(errs, f.Close())
		}
	}
	return errors.Join(errs...)
}
