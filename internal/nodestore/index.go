package nodestore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"golang.org/x/sys/unix"
)

// index is the on-disk reverse index (mount, ino) → nodeid: an
// open-addressing hash table with linear probing in a file of 1<<bits
// entries of 16 bytes, read and written with pread/pwrite so that it costs
// page cache, not process memory.
//
//	entry = keyed hash of (mount, ino) u64 ‖ nodeid u64
//	nodeid 0 = empty, tombID = deleted (a tombstone keeps probe chains intact)
//
// The index is a hint: every hit is checked against the record it names
// (which carries its own MAC), so a stale, torn or tampered index can cost
// a miss — and a second nodeid for one host file — but never a wrong
// answer. The bucket of a hash is its top bits, so doubling the table maps
// bucket i to 2i or 2i+1 and grow can stream the old table into the new
// one sequentially.
//
// All methods need diskStore.mu: held for reading by lookup, for writing
// by everything that changes the table.
type index struct {
	fd    int
	bits  uint
	live  uint64 // entries with a nodeid
	tombs uint64 // tombstones
	k0    uint64 // hash key
	k1    uint64
}

const (
	entrySize  = 16
	tombID     = ^uint64(0)
	probeChunk = 16 // entries read per pread while probing
	// Grow when live+tombs exceed 7/10 of the buckets, to a table at
	// most 40% full (so usually by doubling).
	loadNum, loadDen = 7, 10
	growPercent      = 40
	minIndexBits     = 12
)

func (ix *index) size() uint64 { return 1 << ix.bits }

func (ix *index) hash(k inoKey) uint64 {
	return fmix64(fmix64(k.ino^ix.k0) ^ uint64(k.mount) ^ ix.k1)
}

func fmix64(x uint64) uint64 {
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}

func (ix *index) home(h uint64) uint64 { return h >> (64 - ix.bits) }

// probe calls visit for each entry on h's probe chain, starting at its
// home bucket, until visit returns true or an empty entry ends the chain.
// visit gets the position, the entry's hash and nodeid (tombID for
// tombstones). probe returns the position visit stopped at, or the empty
// position that ended the chain, and whether visit stopped it.
func (ix *index) probe(h uint64, visit func(pos, eh, id uint64) bool) (uint64, bool, error) {
	var buf [probeChunk * entrySize]byte
	n := ix.size()
	pos := ix.home(h)
	for scanned := uint64(0); scanned < n; {
		cnt := min(probeChunk, n-pos, n-scanned)
		b := buf[:cnt*entrySize]
		if err := preadFull(ix.fd, b, int64(pos*entrySize)); err != nil {
			return 0, false, fmt.Errorf("read index: %w", err)
		}
		for i := uint64(0); i < cnt; i++ {
			eh := binary.LittleEndian.Uint64(b[i*entrySize:])
			id := binary.LittleEndian.Uint64(b[i*entrySize+8:])
			if id == 0 {
				return pos + i, false, nil
			}
			if visit(pos+i, eh, id) {
				return pos + i, true, nil
			}
		}
		scanned += cnt
		pos = (pos + cnt) & (n - 1)
	}
	return 0, false, errors.New("index: table full")
}

func (ix *index) write(pos, h, id uint64) error {
	var b [entrySize]byte
	binary.LittleEndian.PutUint64(b[:], h)
	binary.LittleEndian.PutUint64(b[8:], id)
	if err := pwriteFull(ix.fd, b[:], int64(pos*entrySize)); err != nil {
		return fmt.Errorf("write index: %w", err)
	}
	return nil
}

// needsGrow reports whether one more entry would overload the table.
func (ix *index) needsGrow() bool {
	return (ix.live+ix.tombs+1)*loadDen > ix.size()*loadNum
}

// bitsFor returns the table size for live entries after a grow.
func bitsFor(live uint64) uint {
	b := uint(minIndexBits)
	for (live+1)*100 > (uint64(1)<<b)*growPercent {
		b++
	}
	return b
}

// count scans the table and sets live and tombs.
func (ix *index) count() error {
	ix.live, ix.tombs = 0, 0
	buf := make([]byte, 1<<16)
	total := ix.size() * entrySize
	for off := uint64(0); off < total; off += uint64(len(buf)) {
		b := buf[:min(uint64(len(buf)), total-off)]
		if err := preadFull(ix.fd, b, int64(off)); err != nil {
			return fmt.Errorf("read index: %w", err)
		}
		for i := 0; i < len(b); i += entrySize {
			switch binary.LittleEndian.Uint64(b[i+8:]) {
			case 0:
			case tombID:
				ix.tombs++
			default:
				ix.live++
			}
		}
	}
	return nil
}

// rehashInto streams every live entry of ix into dst, an empty table with
// dst.bits ≥ ix.bits and the same hash key, with sequential reads and
// writes: O(size) I/O and O(1) memory besides one probe cluster.
//
// Why it works: start right after an empty bucket e, so no probe chain
// crosses the start. Then clusters (runs between empty buckets) come in
// bucket order, and sorting each cluster by hash puts all entries in hash
// order — except those whose home lies before e, which wrapped around and
// are given a "virtual" home one table length further on. Re-inserting in
// that order with linear probing only ever writes at increasing virtual
// positions.
func (ix *index) rehashInto(dst *index) error {
	n := ix.size()
	shift := dst.bits - ix.bits
	// Find an empty bucket.
	e, found, err := ix.firstEmpty()
	if err != nil {
		return err
	}
	if !found {
		return errors.New("index: no empty bucket")
	}
	N := dst.size()
	startNew := e << shift
	w := newIndexWriter(dst.fd)
	last := int64(-1) // last virtual position written
	type ent struct{ vh, h, id uint64 }
	var cluster []ent
	flush := func() error {
		slices.SortFunc(cluster, func(a, b ent) int {
			switch {
			case a.vh < b.vh:
				return -1
			case a.vh > b.vh:
				return 1
			}
			return 0
		})
		for _, c := range cluster {
			vpos := max(int64(c.vh), last+1)
			if uint64(vpos) >= startNew+N {
				return errors.New("index: rehash overflow")
			}
			if err := w.put(uint64(vpos)&(N-1), c.h, c.id); err != nil {
				return err
			}
			last = vpos
		}
		cluster = cluster[:0]
		return nil
	}
	buf := make([]byte, 1<<16)
	for done := uint64(0); done < n; {
		pos := (e + done) & (n - 1)
		cnt := min(uint64(len(buf))/entrySize, n-pos, n-done)
		b := buf[:cnt*entrySize]
		if err := preadFull(ix.fd, b, int64(pos*entrySize)); err != nil {
			return fmt.Errorf("read index: %w", err)
		}
		for i := uint64(0); i < cnt; i++ {
			h := binary.LittleEndian.Uint64(b[i*entrySize:])
			id := binary.LittleEndian.Uint64(b[i*entrySize+8:])
			switch id {
			case 0:
				if err := flush(); err != nil {
					return err
				}
			case tombID:
			default:
				vh := dst.home(h)
				if vh < startNew {
					vh += N
				}
				cluster = append(cluster, ent{vh, h, id})
				dst.live++
			}
		}
		done += cnt
	}
	if err := flush(); err != nil {
		return err
	}
	return w.flush()
}

func (ix *index) firstEmpty() (uint64, bool, error) {
	buf := make([]byte, 1<<16)
	total := ix.size() * entrySize
	for off := uint64(0); off < total; off += uint64(len(buf)) {
		b := buf[:min(uint64(len(buf)), total-off)]
		if err := preadFull(ix.fd, b, int64(off)); err != nil {
			return 0, false, fmt.Errorf("read index: %w", err)
		}
		for i := 0; i < len(b); i += entrySize {
			if binary.LittleEndian.Uint64(b[i+8:]) == 0 {
				return (off + uint64(i)) / entrySize, true, nil
			}
		}
	}
	return 0, false, nil
}

// indexWriter buffers writes at increasing positions (with at most one
// wrap to the start) of a fresh, zeroed table.
type indexWriter struct {
	fd   int
	buf  []byte
	base uint64 // position of buf[0]
	hi   int    // bytes of buf in use
}

const writerEntries = 4096

func newIndexWriter(fd int) *indexWriter {
	return &indexWriter{fd: fd, buf: make([]byte, writerEntries*entrySize)}
}

func (w *indexWriter) put(pos, h, id uint64) error {
	if w.hi == 0 || pos < w.base || pos >= w.base+writerEntries {
		if err := w.flush(); err != nil {
			return err
		}
		w.base = pos &^ (writerEntries - 1)
		clear(w.buf)
	}
	off := int(pos-w.base) * entrySize
	binary.LittleEndian.PutUint64(w.buf[off:], h)
	binary.LittleEndian.PutUint64(w.buf[off+8:], id)
	w.hi = max(w.hi, off+entrySize)
	return nil
}

func (w *indexWriter) flush() error {
	if w.hi == 0 {
		return nil
	}
	if err := pwriteFull(w.fd, w.buf[:w.hi], int64(w.base*entrySize)); err != nil {
		return fmt.Errorf("write index: %w", err)
	}
	w.hi = 0
	return nil
}

func preadFull(fd int, b []byte, off int64) error {
	for len(b) > 0 {
		n, err := unix.Pread(fd, b, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			// Beyond EOF reads as zero: an empty slot.
			clear(b)
			return nil
		}
		b, off = b[n:], off+int64(n)
	}
	return nil
}

func pwriteFull(fd int, b []byte, off int64) error {
	for len(b) > 0 {
		n, err := unix.Pwrite(fd, b, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		b, off = b[n:], off+int64(n)
	}
	return nil
}
