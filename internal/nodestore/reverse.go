package nodestore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// The diskStore's use of the reverse index (index.go, grow.go): lookups,
// inserts and deletes routed to the right table, and rebuilding it from
// the records.

// createIndex creates index.<seq> with 1<<bits empty entries and makes it
// s.ix. The caller closes the old index.
func (s *diskStore) createIndex(seq uint64, bits uint) error {
	f, fd, err := s.newIndexFile(seq, bits)
	if err != nil {
		return err
	}
	s.ixF = f
	s.ix.fd, s.ix.bits, s.ix.live, s.ix.tombs = fd, bits, 0, 0
	s.ix.fp = newFP(bits, s.fpBits)
	s.ixEpoch++
	return nil
}

func (s *diskStore) newIndexFile(seq uint64, bits uint) (*os.File, int, error) {
	f, err := createIndexFile(s.dir, seq)
	if err != nil {
		return nil, -1, err
	}
	size := indexFileSize(bits)
	if err := zeroFill(int(f.Fd()), 0, size); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, -1, fmt.Errorf("allocate index (%d bytes): %w", size, err)
	}
	return f, int(f.Fd()), nil
}

func createIndexFile(dir string, seq uint64) (*os.File, error) {
	p := filepath.Join(dir, indexPrefix+strconv.FormatUint(seq, 10))
	return os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_TRUNC|unix.O_NOFOLLOW, 0o600)
}

func indexFileSize(bits uint) int64 { return int64(1<<bits)*entrySize + trailerSize }

// zeroFill writes zeros over [off, off+n). Space is preallocated this way
// rather than with fallocate: on ext4 fallocate leaves unwritten extents,
// and converting them as random 16-byte index writes land made each write
// cost 2-3x more (measured: ~5 µs instead of ~2 µs for an index
// read-modify-write at 1M records). Written zeros reserve the blocks just
// as well, so later writes cannot fail with ENOSPC.
func zeroFill(fd int, off, n int64) error {
	var zero [64 << 10]byte
	for n > 0 {
		c := min(n, int64(len(zero)))
		if err := pwriteFull(fd, zero[:c], off); err != nil {
			return err
		}
		off, n = off+c, n-c
	}
	return nil
}

// removeStaleIndexes deletes index files left by a crash during a grow.
func (s *diskStore) removeStaleIndexes() {
	ents, _ := os.ReadDir(s.dir)
	cur := indexPrefix + strconv.FormatUint(s.hdr.indexSeq, 10)
	mig := indexPrefix + strconv.FormatUint(s.hdr.migSeq, 10)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), indexPrefix) && e.Name() != cur && (s.hdr.migSeq == 0 || e.Name() != mig) {
			os.Remove(filepath.Join(s.dir, e.Name()))
		}
	}
}

// rebuildIndexLocked recreates the index from the records file: used when
// the index is missing or may be stale after a host crash.
func (s *diskStore) rebuildIndexLocked() error {
	slots := uint64(s.allocEnd / slotSize)
	s.dropPrepLocked()
	if s.mig != nil {
		s.mig.oldF.Close()
		s.mig = nil
	}
	s.hdr.migSeq, s.hdr.migBits = 0, 0
	if s.ixF != nil {
		s.ixF.Close()
		s.ixF = nil
	}
	s.hdr.indexSeq++
	if err := s.createIndex(s.hdr.indexSeq, bitsFor(slots)); err != nil {
		return err
	}
	s.hdr.indexBits = uint32(s.ix.bits)
	var live, bad int
	err := s.scanSlotsLocked(0, s.allocEnd, 2048, func(id NodeID, _ int64, r *Record, st slotStatus) error {
		if st == slotBad {
			bad++
			return nil
		}
		live++
		s.next = max(s.next, id+1)
		if s.ix.needsGrow() {
			if err := s.growIndexLocked(); err != nil {
				return err
			}
		}
		return s.indexPutLocked(inoKey{r.Mount, r.Ino}, id)
	})
	if err != nil {
		return err
	}
	if bad > 0 {
		s.log.Error("nodestore: records failed their MAC during index rebuild (torn by a host crash, or tampered); they read as ErrTampered", "count", bad)
	}
	s.log.Info("nodestore: reverse index rebuilt", "records", live)
	s.removeStaleIndexes()
	return nil
}

func (s *diskStore) byInoLocked(k inoKey) (Record, error) {
	if id, ok := s.cache.getIno(k); ok {
		if r, err := s.getLocked(id); err == nil && r.Mount == k.mount && r.Ino == k.ino {
			return r, nil
		}
	}
	var res Record
	var lastErr error
	_, _, _, found, err := s.probeRouted(k, func(_ *index, h, _, eh, eid uint64) bool {
		if eh != h || eid == tombID {
			return false
		}
		r, err := s.getLocked(NodeID(eid))
		if err != nil {
			lastErr = err
			return false
		}
		if r.Mount == k.mount && r.Ino == k.ino {
			res = r
			return true
		}
		return false
	})
	if err != nil {
		return Record{}, fmt.Errorf("nodestore: mount %d ino %d: %w", k.mount, k.ino, err)
	}
	if !found {
		if errors.Is(lastErr, ErrTampered) {
			return Record{}, fmt.Errorf("mount %d ino %d: %w", k.mount, k.ino, lastErr)
		}
		return Record{}, fmt.Errorf("mount %d ino %d: %w", k.mount, k.ino, ErrNotFound)
	}
	s.cache.putIno(k, res.ID)
	return res, nil
}

// probeRouted probes the index for k's hash in the table that holds k
// (see route). While the index migrates, a probe of the old table stops
// where its chain would run out of the migration window (virtual bucket
// e + size): what an insert could not place before that point went to the
// new table, so the probe goes on there (see grow.go). visit is as for
// index.probe, plus the table and the hash. It returns the table probed
// last and its result.
func (s *diskStore) probeRouted(k inoKey, visit func(ix *index, h, pos, eh, id uint64) bool) (ix *index, h, pos uint64, found bool, err error) {
	ix, h = s.route(k)
	m := s.mig
	if m == nil || ix != &m.old {
		pos, found, err = ix.probe(h, func(p, eh, id uint64) bool { return visit(ix, h, p, eh, id) })
		return ix, h, pos, found, err
	}
	crossed := false
	pos, found, err = ix.probe(h, func(p, eh, id uint64) bool {
		if !m.inWindow(h, p) {
			crossed = true
			return true
		}
		return visit(ix, h, p, eh, id)
	})
	if err != nil || (found && !crossed) || (!found && m.inWindow(h, pos)) {
		return ix, h, pos, found && !crossed, err
	}
	ix = &s.ix
	pos, found, err = ix.probe(h, func(p, eh, id uint64) bool { return visit(ix, h, p, eh, id) })
	return ix, h, pos, found, err
}

// slotKeyLocked returns (mount, ino) of id's record without verifying it,
// to decide whether an index entry is for the same host file. A tampered
// slot can at worst make that decision wrong, which the MAC check on every
// lookup turns into a miss.
func (s *diskStore) slotKeyLocked(id NodeID) (inoKey, error) {
	if r, ok := s.cache.get(id); ok {
		return inoKey{r.Mount, r.Ino}, nil
	}
	buf := s.bufs.Get().(*slotBuf)
	defer s.bufs.Put(buf)
	if s.wb != nil && s.wb.read(id, buf.main[:]) {
		return slotKey(buf.main[:]), nil
	}
	if err := preadFull(s.recFD, buf.main[:], int64(id)*slotSize); err != nil {
		return inoKey{}, err
	}
	return slotKey(buf.main[:]), nil
}

// indexPutLocked points the index entry for k at id, replacing the entry
// of an older record with the same key. Needs s.mu held exclusively and
// room in the index.
func (s *diskStore) indexPutLocked(k inoKey, id NodeID) error {
	_, err := s.indexPutHintLocked(k, id)
	return err
}

// indexPutHintLocked is indexPutLocked, and returns where the entry went.
func (s *diskStore) indexPutHintLocked(k inoKey, id NodeID) (ixHint, error) {
	p, err := s.probePutLocked(k)
	if err != nil {
		return ixHint{}, err
	}
	return s.placeLocked(p, id)
}

// probePutLocked finds where indexPutLocked puts the entry for k.
func (s *diskStore) probePutLocked(k inoKey) (putSlot, error) {
	var tombIx *index
	var tomb, oldID uint64
	var kerr error
	ix, h, pos, found, err := s.probeRouted(k, func(ix *index, h, pos, eh, eid uint64) bool {
		if eid == tombID {
			if tombIx != ix {
				tombIx, tomb = ix, pos
			}
			return false
		}
		if eh != h {
			return false
		}
		ok, err := s.slotKeyLocked(NodeID(eid))
		if err != nil {
			kerr = err
			return true
		}
		oldID = eid
		return ok == k
	})
	if err == nil {
		err = kerr
	}
	if err != nil {
		return putSlot{}, err
	}
	return putSlot{ix: ix, h: h, pos: pos, replace: found, oldID: NodeID(oldID), tombIx: tombIx, tomb: tomb}, nil
}

// putSlot is where indexPutLocked's probe decided to put an entry: over
// the entry of oldID at pos (replace), or in the empty bucket pos that
// ended the chain, or in the chain's first tombstone if it is in the same
// table.
type putSlot struct {
	ix      *index
	h, pos  uint64
	replace bool
	oldID   NodeID
	tombIx  *index
	tomb    uint64
}

// placeLocked writes the entry h → id at p and returns where it went.
func (s *diskStore) placeLocked(p putSlot, id NodeID) (ixHint, error) {
	return s.placeMaybeBehindLocked(p, id, false)
}

// placeMaybeBehindLocked is placeLocked; with behind, for a new record, it
// may leave the write to the file for later (write-behind, see
// deferIndex).
func (s *diskStore) placeMaybeBehindLocked(p putSlot, id NodeID, behind bool) (ixHint, error) {
	ix, pos := p.ix, p.pos
	if !p.replace {
		if p.tombIx == ix {
			pos = p.tomb
			ix.tombs--
		}
		ix.live++
		if m := s.mig; m != nil && ix == &s.ix && m.vhome(p.h) >= m.p {
			s.migCrossed++ // an unmigrated key placed in the new table
		}
	} else if p.oldID != id {
		s.cache.setHint(p.oldID, ixHint{}) // its entry is id's now
	}
	if behind && s.deferIndexLocked(ix) {
		ix.writeBehind(pos, p.h, uint64(id))
		if p.replace && p.oldID != id {
			if ix.over == nil {
				ix.over = make(map[uint64]struct{})
			}
			ix.over[pos] = struct{}{}
		}
	} else if err := ix.write(pos, p.h, uint64(id)); err != nil {
		return ixHint{}, err
	}
	return s.hintAt(ix, pos), nil
}

// deferIndexLocked reports whether an entry of a new record in table ix
// may be written behind: kept in the mirror and ix.pend, and written to
// the file with others (flushIndexLocked: when pendMax are pending, by
// Sync and Close, before an index grow and before an Update that changes
// a key). Records are always written before the call that stores them
// returns; an entry lost with the process is put back from its record by
// the next Open (recoverIndexLocked), which re-indexes every record from
// the header's "indexed" mark on, in nodeid order. Not while the index
// migrates (the streamer reads the file) nor without a mirror (probes
// would read the file).
func (s *diskStore) deferIndexLocked(ix *index) bool {
	return !s.noDefer && s.mig == nil && ix == &s.ix && ix.fp != nil
}

// flushIndexLocked writes the records written behind, then the pending
// index entries, and then moves the header's mark: every record below
// s.next has its entry in the file. (Records first: the entries it writes
// never name a record that a crash can still lose; see the package doc
// for the entries written directly.)
func (s *diskStore) flushIndexLocked() error {
	if s.wb != nil {
		if err := s.wb.flush(); err != nil {
			return err
		}
	}
	if len(s.ix.pend) == 0 && s.hdr.indexed >= s.next {
		return nil
	}
	if err := s.ix.flushPending(); err != nil {
		return fmt.Errorf("write reverse index: %w", err)
	}
	s.hdr.indexed = s.next
	return s.writeHeaderLocked(false)
}

// recoverIndexLocked puts back the index entries of the records from
// nodeid from on, in nodeid order: after a process crash, those written
// behind may be missing. Entries already there are found and kept.
//
// It gives each key to the record that owned it (see the package doc)
// because no two live records from the mark on share a key: a record from
// the mark on loses its key only by a Delete, by an Update that moves it
// (which flushes the index first, moving the mark past it) or to an
// Insert (which then flushes the index, see insertLocked). So a key whose
// owner was deleted is not given back to an older record with that key:
// that one is below the mark, and its entry was overwritten when it lost
// the key.
func (s *diskStore) recoverIndexLocked(from NodeID) error {
	n := 0
	err := s.scanSlotsLocked(from, s.allocEnd, 256, func(id NodeID, _ int64, r *Record, st slotStatus) error {
		if st != slotOK {
			return nil
		}
		if s.mig == nil && s.ix.needsGrow() {
			if err := s.growIndexLocked(); err != nil {
				return err
			}
		}
		p, err := s.probePutLocked(inoKey{r.Mount, r.Ino})
		if err != nil {
			return err
		}
		if p.replace && p.oldID == id {
			return nil // the entry made it to the file
		}
		if _, err := s.placeLocked(p, id); err != nil {
			return err
		}
		n++
		return nil
	})
	if err != nil {
		return err
	}
	if n > 0 {
		s.log.Info("nodestore: reverse index entries put back after an unclean stop", "records", n, "from", uint64(from))
	}
	return nil
}

// hintAt is the hint for an entry at pos of table ix.
func (s *diskStore) hintAt(ix *index, pos uint64) ixHint {
	return ixHint{epoch: s.ixEpoch, old: s.mig != nil && ix == &s.mig.old, pos: pos}
}

// hintTable returns the table a hint for key k points into, or nil if the
// hint is stale. Entries stay where they were written until a tombstone or
// a replacement (which clears the replaced record's hint) overwrites them,
// with two exceptions the epoch and the route catch: a new table (grow,
// rebuild, reopen) bumps s.ixEpoch, and the migration streamer copies an
// old-table entry to the new table once it passes the key, after which the
// key routes to the new table.
func (s *diskStore) hintTable(hint ixHint, k inoKey) *index {
	if hint.epoch != s.ixEpoch {
		return nil
	}
	if !hint.old {
		return &s.ix
	}
	if m := s.mig; m != nil {
		if ix, _ := s.route(k); ix == &m.old {
			return ix
		}
	}
	return nil
}

// lookupForInsertLocked is byInoLocked and the probe of indexPutLocked in
// one pass over k's probe chain, for LookupOrInsert: it returns the record
// ByIno would return (found), or else where indexPutLocked would put an
// entry for k. A miss costs one index read and no error value. The slot is
// valid until the index changes (an insert, delete or migration step).
func (s *diskStore) lookupForInsertLocked(k inoKey) (rec Record, found bool, put putSlot, err error) {
	if id, ok := s.cache.getIno(k); ok {
		if r, err := s.getLocked(id); err == nil && r.Mount == k.mount && r.Ino == k.ino {
			return r, true, putSlot{}, nil
		}
	}
	var kerr error
	replaced := false
	ix, h, pos, hit, err := s.probeRouted(k, func(ix *index, h, pos, eh, eid uint64) bool {
		if eid == tombID {
			if put.tombIx != ix {
				put.tombIx, put.tomb = ix, pos
			}
			return false
		}
		if eh != h {
			return false
		}
		r, err := s.getLocked(NodeID(eid))
		if err == nil {
			if r.Mount == k.mount && r.Ino == k.ino {
				rec = r
				return true
			}
			return false
		}
		if !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrTampered) {
			kerr = err
			return true
		}
		// An entry whose record does not verify: ByIno goes on looking,
		// an insert of the same key replaces it (as indexPutLocked).
		if !replaced {
			if sk, err := s.slotKeyLocked(NodeID(eid)); err == nil && sk == k {
				put.ix, put.h, put.pos, put.replace, put.oldID = ix, h, pos, true, NodeID(eid)
				replaced = true
			}
		}
		return false
	})
	if err == nil {
		err = kerr
	}
	if err != nil {
		return Record{}, false, putSlot{}, fmt.Errorf("nodestore: mount %d ino %d: %w", k.mount, k.ino, err)
	}
	if hit {
		s.cache.putIno(k, rec.ID)
		return rec, true, putSlot{}, nil
	}
	if !replaced {
		put.ix, put.h, put.pos = ix, h, pos
	}
	return Record{}, false, put, nil
}

// indexDelLocked removes the entry k → id, if the index has it: where the
// cache's hint says, else by probing for it.
func (s *diskStore) indexDelLocked(k inoKey, id NodeID) error {
	hint, _ := s.cache.getHint(id)
	return s.indexDelHintLocked(k, id, hint)
}

// indexDelHintLocked is indexDelLocked with the hint (ixHint{}: none)
// taken before the cache dropped the record. It writes the tombstone to
// the file now.
func (s *diskStore) indexDelHintLocked(k inoKey, id NodeID, hint ixHint) error {
	e, err := s.indexFindLocked(k, id, hint)
	if err != nil || e.ix == nil {
		return err
	}
	return s.tombLocked(e, false)
}

// ixEntry is where the index entry of a record is: bucket pos of table ix
// (nil: the index has none), for hash h.
type ixEntry struct {
	ix     *index
	h, pos uint64
}

// indexFindLocked finds the entry k → id: where the hint says, else by
// probing for it.
func (s *diskStore) indexFindLocked(k inoKey, id NodeID, hint ixHint) (ixEntry, error) {
	if hint.epoch != 0 {
		if ix := s.hintTable(hint, k); ix != nil {
			_, h := s.route(k)
			return ixEntry{ix, h, hint.pos}, nil
		}
	}
	ix, h, pos, found, err := s.probeRouted(k, func(_ *index, h, _, eh, eid uint64) bool {
		return eh == h && eid == uint64(id)
	})
	if err != nil || !found {
		return ixEntry{}, err
	}
	return ixEntry{ix, h, pos}, nil
}

// deferTombLocked reports whether the tombstone for entry e may be written
// behind (left in the mirror and ix.pend like a new record's entry, see
// deferIndexLocked), for a Delete. If the process dies before it reaches
// the file, the bucket keeps what the file had there:
//
//   - the deleted record's own entry (the entry had been flushed): a dead
//     entry, naming a record that reads as ErrNotFound (Delete's zeroed
//     slot is in the file when the Delete returns, or with
//     Options.WriteBehindRecords once the Flush before the reply has
//     run). ByIno, LookupOrInsert and recovery look past it, as past an
//     entry whose record a crash lost; a later record with the same key
//     gets an entry of its own. It costs a bucket until the next
//     rebuild.
//   - empty or a tombstone (the record's entry was pending too, put in
//     a free bucket): as if the record had never been indexed. Entries
//     the file has past the bucket were written by a flush, which wrote
//     the bucket too (later ones wait in pend just as long).
//   - an entry naming another record, if the record's entry was pending
//     over it (ix.over): that one may be a live record that lost the key
//     to the deleted one, which the crash would give the key back to.
//     Not deferred: the tombstone is written now.
//
// The recovery at the next Open does not re-index deleted records, so it
// adds nothing for them either.
func (s *diskStore) deferTombLocked(e ixEntry) bool {
	if !s.deferIndexLocked(e.ix) {
		return false
	}
	_, over := e.ix.over[e.pos]
	return !over
}

// tombLocked replaces the entry e with a tombstone, written behind or now.
func (s *diskStore) tombLocked(e ixEntry, behind bool) error {
	e.ix.live--
	e.ix.tombs++
	if behind {
		e.ix.writeBehind(e.pos, e.h, tombID)
		return nil
	}
	return e.ix.write(e.pos, e.h, tombID)
}
