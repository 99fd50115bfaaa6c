package nodestore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
)

// Growing the reverse index.
//
// When the table passes 70% load, a table of twice the size (or the same
// size, to drop tombstones) is created and the entries are migrated to it
// incrementally: every Insert, Update and Delete moves at least
// migrateStep more entries, so no request pays for the whole table (about
// 100 ms at 1M records if done at once).
//
// The migration streams the old table in bucket order, starting right
// after an empty bucket e, a probe cluster (run between empty buckets) at a
// time. The bucket of a hash is its top bits, so sorting a cluster by hash
// sorts it by new bucket too; re-inserting in that order only ever writes
// at increasing positions of the new table, through a small read-modify-
// write window. Entries whose old bucket is before e wrapped around and
// get "virtual" positions one table length further on.
//
// Routing: the frontier p is a virtual old bucket, always at an empty
// bucket when a step ends. A key whose virtual old bucket is < p has been
// migrated (every entry of a cluster lies inside the cluster) and lives in
// the new table — lookups, inserts and deletes for it go there; any other
// key still lives in the old table. Two subtleties:
//   - keys inserted into the new table behind the streamer's back occupy
//     buckets the streamer has not reached, so the streamer skips occupied
//     buckets (which keeps every probe chain unbroken);
//   - a probe of the old table must not wrap around past e + size into
//     buckets already streamed (an entry placed there would be lost).
//     Such a chain (only the cluster at the end of the table) continues
//     in the new table instead: an insert that finds no room before
//     e + size goes to the new table, and lookups and deletes that reach
//     e + size look there too (probeRouted). The streamer skips what it
//     finds occupied, so these entries stay where they are.
//
// The migration state (e, p, last position written) is kept in a trailer
// after the new table's entries, written after every step, and the header
// names both files while a migration runs, so a restarted process resumes
// it. A crash after a step wrote entries but before its trailer makes the
// successor stream those entries again: the copies are harmless (same key,
// same nodeid; every hit is verified against its record, and a stale copy
// left behind by a delete finds an empty record). After a host crash the
// index is rebuilt from the records anyway.
type migration struct {
	old      index
	oldF     *os.File
	e        uint64 // old bucket where streaming started (empty then)
	p        uint64 // virtual old bucket: everything before it is migrated
	last     int64  // last virtual new bucket written by the streamer
	startNew uint64 // virtual new bucket of e

	// Scratch, reused by every step.
	buf     []byte
	cluster []migEnt
	win     rmwWindow
}

type migEnt struct{ vh, h, id uint64 }

// migrateStep is the minimum number of entries a write moves along
// (diskStore.migStep; tests lower it to interleave more).
const migrateStep = 256

const (
	trailerMagic = "GVFSMIG1"
	trailerSize  = 4096 // reserved after every index table
)

// route returns the table that holds key k, and its hash.
func (s *diskStore) route(k inoKey) (*index, uint64) {
	h := s.ix.hash(k)
	if m := s.mig; m != nil && m.vhome(h) >= m.p {
		return &m.old, h
	}
	return &s.ix, h
}

// inWindow reports whether old bucket pos, on the probe chain of h, lies
// before the end of the migration window (virtual bucket e + size).
func (m *migration) inWindow(h, pos uint64) bool {
	n := m.old.size()
	return m.vhome(h)+((pos-m.old.home(h))&(n-1)) < m.e+n
}

// vhome is the virtual old bucket of h.
func (m *migration) vhome(h uint64) uint64 {
	v := m.old.home(h)
	if v < m.e {
		v += m.old.size()
	}
	return v
}

// preparedIndex is the next table, zero-filled a little per write from
// 50% load on, so that starting a migration at 70% costs no big write.
type preparedIndex struct {
	f    *os.File
	seq  uint64
	bits uint
	done int64 // bytes zero-filled
}

// prepStep is the number of bytes of the next table a write zero-fills;
// with doubling that finishes long before the table reaches 70% load.
const prepStep = 16 << 10

// nextBits is the size of the table the index grows into now.
func (ix *index) nextBits() uint {
	bits := max(ix.bits, bitsFor(ix.live))
	if bits == ix.bits && ix.tombs < ix.size()/8 {
		bits++
	}
	return bits
}

// prepareLocked advances the zero-filling of the next table.
func (s *diskStore) prepareLocked() error {
	if s.prep == nil {
		if (s.ix.live+s.ix.tombs)*2 <= s.ix.size() {
			return nil
		}
		seq := s.hdr.indexSeq + 1
		f, err := createIndexFile(s.dir, seq)
		if err != nil {
			return err
		}
		s.prep = &preparedIndex{f: f, seq: seq, bits: s.ix.nextBits()}
	}
	p := s.prep
	size := indexFileSize(p.bits)
	if p.done < size {
		n := min(prepStep, size-p.done)
		if err := zeroFill(int(p.f.Fd()), p.done, n); err != nil {
			return fmt.Errorf("allocate index: %w", err)
		}
		p.done += n
	}
	return nil
}

// dropPrepLocked forgets the prepared table.
func (s *diskStore) dropPrepLocked() {
	if s.prep != nil {
		s.prep.f.Close()
		os.Remove(s.prep.f.Name())
		s.prep = nil
	}
}

// takePrepLocked returns the prepared table for seq and bits, completed,
// or a new one.
func (s *diskStore) takePrepLocked(seq uint64, bits uint) (*os.File, int, error) {
	p := s.prep
	if p == nil || p.bits != bits || p.seq != seq {
		s.dropPrepLocked()
		return s.newIndexFile(seq, bits)
	}
	s.prep = nil
	size := indexFileSize(bits)
	if err := zeroFill(int(p.f.Fd()), p.done, size-p.done); err != nil {
		p.f.Close()
		os.Remove(p.f.Name())
		return nil, -1, fmt.Errorf("allocate index (%d bytes): %w", size, err)
	}
	return p.f, int(p.f.Fd()), nil
}

// maintainIndexLocked advances a running migration, or starts one if the
// index is too full for one more entry, or prepares the next table.
func (s *diskStore) maintainIndexLocked(step uint64) error {
	if s.mig == nil {
		if !s.ix.needsGrow() {
			if !s.prepFailed {
				if err := s.prepareLocked(); err != nil {
					// Not fatal: the grow itself allocates what is
					// missing and reports ENOSPC then. Until then, stop
					// taking space from the records.
					s.dropPrepLocked()
					s.prepFailed = true
				}
			}
			return nil
		}
		if err := s.startGrowLocked(); err != nil {
			return fmt.Errorf("grow reverse index: %w", err)
		}
	}
	if err := s.stepMigrationLocked(step); err != nil {
		return fmt.Errorf("grow reverse index: %w", err)
	}
	return nil
}

// finishMigrationLocked completes a running migration, if any.
func (s *diskStore) finishMigrationLocked() error {
	if s.mig == nil {
		return nil
	}
	return s.stepMigrationLocked(^uint64(0))
}

// growIndexLocked grows the index now, in one go.
func (s *diskStore) growIndexLocked() error {
	if err := s.finishMigrationLocked(); err != nil {
		return err
	}
	if err := s.startGrowLocked(); err != nil {
		return err
	}
	return s.finishMigrationLocked()
}

func (s *diskStore) startGrowLocked() error {
	// The migration reads the table from the file.
	if err := s.flushIndexLocked(); err != nil {
		return err
	}
	bits := s.ix.nextBits()
	e, found, err := s.ix.firstEmpty()
	if err != nil {
		return err
	}
	if !found {
		return errors.New("index: no empty bucket")
	}
	seq := s.hdr.indexSeq + 1
	f, fd, err := s.takePrepLocked(seq, bits)
	if err != nil {
		return err
	}
	m := &migration{
		old: s.ix, oldF: s.ixF, e: e, p: e, last: -1, startNew: e << (bits - s.ix.bits),
		buf: make([]byte, 4096),
	}
	m.old.fp = nil // the old table is probed from the file while it lasts
	nix := index{fd: fd, bits: bits, k0: s.ix.k0, k1: s.ix.k1, fp: newFP(bits, s.fpBits)}
	if err := writeTrailer(&nix, m); err != nil {
		f.Close()
		os.Remove(f.Name())
		return err
	}
	old := s.hdr
	s.hdr.migSeq, s.hdr.migBits = s.hdr.indexSeq, s.hdr.indexBits
	s.hdr.indexSeq, s.hdr.indexBits = seq, uint32(bits)
	if err := s.writeHeaderLocked(false); err != nil {
		s.hdr = old
		f.Close()
		os.Remove(f.Name())
		return err
	}
	s.mig = m
	s.prepFailed = false
	s.ix, s.ixF = nix, f
	s.ixEpoch++
	m.win.reset(&s.ix)
	return nil
}

// stepMigrationLocked moves at least budget entries (whole clusters) to
// the new table, and finishes the migration when none are left.
func (s *diskStore) stepMigrationLocked(budget uint64) (err error) {
	defer func() {
		if err != nil {
			// The window may hold entries the mirror has and the file
			// not yet.
			s.ix.fp = nil
		}
	}()
	m := s.mig
	m.cluster = m.cluster[:0] // left over if the previous step failed
	n := m.old.size()
	end := m.e + n
	var moved uint64
	v := m.p
	stop := false
	for v < end && !stop {
		pos := v & (n - 1)
		cnt := min(uint64(len(m.buf))/entrySize, n-pos, end-v)
		b := m.buf[:cnt*entrySize]
		if err := preadFull(m.old.fd, b, int64(pos*entrySize)); err != nil {
			return fmt.Errorf("read index: %w", err)
		}
		var i uint64
		for i = 0; i < cnt; i++ {
			h := binary.LittleEndian.Uint64(b[i*entrySize:])
			id := binary.LittleEndian.Uint64(b[i*entrySize+8:])
			switch id {
			case 0:
				if err := s.flushClusterLocked(); err != nil {
					return err
				}
				if moved >= budget {
					stop = true
				}
			case tombID:
			default:
				vh := s.ix.home(h)
				if vh < m.startNew {
					vh += s.ix.size()
				}
				m.cluster = append(m.cluster, migEnt{vh, h, id})
				moved++
			}
			if stop {
				break
			}
		}
		v += i
	}
	if err := s.flushClusterLocked(); err != nil {
		return err
	}
	if err := m.win.flush(); err != nil {
		return err
	}
	m.p = v
	if v < end {
		return writeTrailer(&s.ix, m)
	}
	// Done: the header forgets the old table.
	s.hdr.migSeq, s.hdr.migBits = 0, 0
	if err := s.writeHeaderLocked(false); err != nil {
		return err
	}
	s.mig = nil
	s.ixEpoch++
	m.oldF.Close()
	os.Remove(m.oldF.Name())
	return nil
}

// flushClusterLocked writes the collected cluster into the new table.
func (s *diskStore) flushClusterLocked() error {
	m := s.mig
	slices.SortFunc(m.cluster, func(a, b migEnt) int {
		switch {
		case a.vh < b.vh:
			return -1
		case a.vh > b.vh:
			return 1
		}
		return 0
	})
	N := s.ix.size()
	for _, c := range m.cluster {
		vpos := max(int64(c.vh), m.last+1)
		for {
			// Inserts routed to the new table may have taken the
			// buckets the tail of the stream (entries whose new home
			// wrapped around, vh >= N) was heading for; the stream then
			// goes on past startNew+N, into buckets of its own head,
			// like any linear probe. Only a full circle means a full
			// table.
			if uint64(vpos) >= c.vh+N {
				return errors.New("index: migration overflow")
			}
			e, err := m.win.entry(uint64(vpos) & (N - 1))
			if err != nil {
				return err
			}
			if binary.LittleEndian.Uint64(e[8:]) == 0 {
				binary.LittleEndian.PutUint64(e, c.h)
				binary.LittleEndian.PutUint64(e[8:], c.id)
				m.win.dirty(uint64(vpos) & (N - 1))
				s.ix.mirror(uint64(vpos)&(N-1), c.h, c.id)
				break
			}
			vpos++ // taken by an insert routed to the new table
		}
		m.last = vpos
		s.ix.live++
	}
	m.cluster = m.cluster[:0]
	return nil
}

// rmwWindow caches a window of the new table for the streamer.
type rmwWindow struct {
	ix     *index
	buf    []byte
	base   uint64 // first bucket in buf
	cnt    uint64 // buckets in buf; 0 = nothing loaded
	lo, hi int    // dirty byte range
}

const windowBuckets = 1024

func (w *rmwWindow) reset(ix *index) {
	w.ix = ix
	if w.buf == nil {
		w.buf = make([]byte, windowBuckets*entrySize)
	}
	w.cnt, w.lo, w.hi = 0, 0, 0
}

func (w *rmwWindow) entry(pos uint64) ([]byte, error) {
	if w.cnt == 0 || pos < w.base || pos >= w.base+w.cnt {
		if err := w.flush(); err != nil {
			return nil, err
		}
		w.base = pos &^ (windowBuckets - 1)
		w.cnt = min(windowBuckets, w.ix.size()-w.base)
		if err := preadFull(w.ix.fd, w.buf[:w.cnt*entrySize], int64(w.base*entrySize)); err != nil {
			w.cnt = 0
			return nil, fmt.Errorf("read index: %w", err)
		}
	}
	off := (pos - w.base) * entrySize
	return w.buf[off : off+entrySize], nil
}

func (w *rmwWindow) dirty(pos uint64) {
	off := int((pos - w.base) * entrySize)
	if w.lo == w.hi {
		w.lo, w.hi = off, off+entrySize
		return
	}
	w.lo, w.hi = min(w.lo, off), max(w.hi, off+entrySize)
}

// flush writes the dirty range and forgets the window: inserts routed to
// the new table between steps write it directly.
func (w *rmwWindow) flush() error {
	if w.lo != w.hi {
		if err := pwriteFull(w.ix.fd, w.buf[w.lo:w.hi], int64(w.base*entrySize)+int64(w.lo)); err != nil {
			w.ix.fp = nil // the mirror has entries the file may not
			return fmt.Errorf("write index: %w", err)
		}
	}
	w.cnt, w.lo, w.hi = 0, 0, 0
	return nil
}

// The trailer: magic, e, p, last+1, check = fmix64 chain of the three.
func trailerCheck(e, p, last1 uint64) uint64 {
	return fmix64(fmix64(fmix64(e^0x6d6967)^p) ^ last1)
}

func writeTrailer(ix *index, m *migration) error {
	b := make([]byte, 40)
	copy(b, trailerMagic)
	le := binary.LittleEndian
	last1 := uint64(m.last + 1)
	le.PutUint64(b[8:], m.e)
	le.PutUint64(b[16:], m.p)
	le.PutUint64(b[24:], last1)
	le.PutUint64(b[32:], trailerCheck(m.e, m.p, last1))
	if err := pwriteFull(ix.fd, b, int64(ix.size()*entrySize)); err != nil {
		return fmt.Errorf("write index trailer: %w", err)
	}
	return nil
}

// resumeMigration reopens the old table of a migration that a previous
// process left running.
func (s *diskStore) resumeMigration() error {
	p := filepath.Join(s.dir, indexPrefix+strconv.FormatUint(s.hdr.migSeq, 10))
	f, err := os.OpenFile(p, os.O_RDWR|0, 0)
	if err != nil {
		return err
	}
	old := index{fd: int(f.Fd()), bits: uint(s.hdr.migBits), k0: s.ix.k0, k1: s.ix.k1}
	if st, err := f.Stat(); err != nil || st.Size() != int64(old.size()*entrySize+trailerSize) || old.bits > s.ix.bits {
		f.Close()
		return errors.New("old index file has the wrong size")
	}
	b := make([]byte, 40)
	if err := preadFull(s.ix.fd, b, int64(s.ix.size()*entrySize)); err != nil {
		f.Close()
		return err
	}
	le := binary.LittleEndian
	e, pp, last1 := le.Uint64(b[8:]), le.Uint64(b[16:]), le.Uint64(b[24:])
	if string(b[:8]) != trailerMagic || le.Uint64(b[32:]) != trailerCheck(e, pp, last1) ||
		e >= old.size() || pp < e || pp > e+old.size() {
		f.Close()
		return errors.New("bad migration trailer")
	}
	m := &migration{
		old: old, oldF: f, e: e, p: pp, last: int64(last1) - 1,
		startNew: e << (s.ix.bits - old.bits), buf: make([]byte, 4096),
	}
	m.win.reset(&s.ix)
	s.mig = m
	s.ixEpoch++
	return nil
}
