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
	// fp mirrors the table in memory, one byte per bucket (fpEmpty,
	// fpTomb, or fpOf the entry's hash), so that a probe reads the file
	// only at buckets whose entry may be the one looked for: looking up
	// or inserting a key the table does not have costs no read at all.
	// nil when the table is bigger than maxFPBits, for the old table of
	// a migration, and after a failed write (then probes read the file).
	// Written with diskStore.mu held exclusively, like the file.
	fp []byte
	// pend holds entries written to the mirror but not yet to the file
	// (write-behind, see diskStore.deferIndex): bucket → hash, nodeid.
	// Only a mirrored table outside a migration has any; a write to the
	// file at a bucket supersedes its pending entry.
	pend map[uint64][2]uint64
	// over holds the pending buckets whose entry replaced one that names
	// another record (an Insert that took a key, or replaced an entry
	// whose record fails to verify): the file still has that entry
	// there, so a tombstone for the bucket must not wait in pend (see
	// diskStore.deferTombLocked). Usually empty: taking a key is rare.
	over map[uint64]struct{}
	// flushBuf is flushPending's list of buckets, kept between flushes.
	flushBuf []uint64
}

// pendMax pending entries are written at once (flushPending): with
// several per 4 KiB page of the index, a page costs a pread and a pwrite
// instead of a pwrite per entry.
const pendMax = 4096

const (
	fpEmpty = 0
	fpTomb  = 1
)

// maxFPBits bounds fp to 4 MiB (4M buckets, 1.6M records at 40% load)
// whatever the cache size; larger tables probe the file. A variable for
// tests. Below it, a store's mirror may take a quarter of its
// Options.CacheBytes (fpBitsFor).
var maxFPBits uint = 22

// fpBitsFor is the largest table a store with cache size cacheBytes
// mirrors: a quarter of the cache (2 MiB, 2M buckets, for the default
// 8 MiB), and at least 64 KiB.
func fpBitsFor(cacheBytes int) uint {
	b := uint(16)
	for b < maxFPBits && 1<<(b+1) <= cacheBytes/4 {
		b++
	}
	return min(b, maxFPBits)
}

// fpOf is the fingerprint of hash h: its low byte (the bucket comes from
// the top bits), never fpEmpty or fpTomb.
func fpOf(h uint64) byte {
	if f := byte(h); f > fpTomb {
		return f
	}
	return byte(h>>8) | 2
}

// newFP returns an empty mirror for a table of 1<<bits buckets, or nil if
// that is more than 1<<maxBits.
func newFP(bits, maxBits uint) []byte {
	if bits > maxBits {
		return nil
	}
	return make([]byte, 1<<bits)
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
	if ix.fp != nil {
		if pos, found, ok, err := ix.probeFP(h, visit); ok || err != nil {
			return pos, found, err
		}
	}
	return ix.probeFile(h, visit)
}

// probeFP is probe on the mirror: it reads the entries whose fingerprint
// matches h's and shows every other one to visit as a foreign hash (^h),
// or a tombstone. ok is false if the file disagrees with the mirror (it
// should not): then the caller probes the file.
func (ix *index) probeFP(h uint64, visit func(pos, eh, id uint64) bool) (pos uint64, found, ok bool, err error) {
	n := ix.size()
	want := fpOf(h)
	pos = ix.home(h)
	for scanned := uint64(0); scanned < n; scanned++ {
		switch f := ix.fp[pos]; f {
		case fpEmpty:
			return pos, false, true, nil
		case fpTomb:
			if visit(pos, 0, tombID) {
				return pos, true, true, nil
			}
		case want:
			var eh, id uint64
			if e, ok := ix.pend[pos]; ok {
				eh, id = e[0], e[1]
			} else {
				var b [entrySize]byte
				if err := preadFull(ix.fd, b[:], int64(pos*entrySize)); err != nil {
					return 0, false, false, fmt.Errorf("read index: %w", err)
				}
				eh = binary.LittleEndian.Uint64(b[:])
				id = binary.LittleEndian.Uint64(b[8:])
			}
			if id == 0 || id == tombID || fpOf(eh) != f {
				return 0, false, false, nil
			}
			if visit(pos, eh, id) {
				return pos, true, true, nil
			}
		default:
			if visit(pos, ^h, 1) { // another key: visitors look no further
				return pos, true, true, nil
			}
		}
		pos = (pos + 1) & (n - 1)
	}
	return 0, false, true, errors.New("index: table full")
}

// probeFile is probe reading the table from the file.
func (ix *index) probeFile(h uint64, visit func(pos, eh, id uint64) bool) (uint64, bool, error) {
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
			if e, ok := ix.pend[pos+i]; ok { // after the mirror was dropped
				eh, id = e[0], e[1]
			}
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
		ix.fp = nil // the file may or may not have it now
		return fmt.Errorf("write index: %w", err)
	}
	delete(ix.pend, pos)
	delete(ix.over, pos)
	ix.mirror(pos, h, id)
	return nil
}

// writeBehind puts h → id at pos in the mirror and the pending entries;
// flushPending writes it to the file. Only for a table with a mirror.
func (ix *index) writeBehind(pos, h, id uint64) {
	if ix.pend == nil {
		ix.pend = make(map[uint64][2]uint64, pendMax)
	}
	ix.pend[pos] = [2]uint64{h, id}
	ix.mirror(pos, h, id)
}

// flushPending writes the pending entries to the file, in bucket order: a
// 4 KiB page with three or more of them is read, patched and written
// whole, others one entry at a time.
//
// The buckets are sorted in a slice the index keeps, not grouped in a map
// of per-page slices: that grouping (4096 map inserts and as many small
// allocations per flush) was most of a flush's 0.25–1.35 ms.
func (ix *index) flushPending() error {
	if len(ix.pend) == 0 {
		return nil
	}
	const perPage = 4096 / entrySize
	ps := ix.flushBuf[:0]
	for pos := range ix.pend {
		ps = append(ps, pos)
	}
	slices.Sort(ps)
	ix.flushBuf = ps[:0]
	var page [4096]byte
	for len(ps) > 0 {
		pg := ps[0] / perPage
		n := 1
		for n < len(ps) && ps[n]/perPage == pg {
			n++
		}
		run := ps[:n]
		ps = ps[n:]
		if len(run) < 3 {
			for _, pos := range run {
				e := ix.pend[pos]
				if err := ix.write(pos, e[0], e[1]); err != nil {
					return err
				}
			}
			continue
		}
		b := page[:min(perPage, ix.size()-pg*perPage)*entrySize]
		if err := preadFull(ix.fd, b, int64(pg*perPage*entrySize)); err != nil {
			return fmt.Errorf("read index: %w", err)
		}
		for _, pos := range run {
			e := ix.pend[pos]
			o := (pos - pg*perPage) * entrySize
			binary.LittleEndian.PutUint64(b[o:], e[0])
			binary.LittleEndian.PutUint64(b[o+8:], e[1])
		}
		if err := pwriteFull(ix.fd, b, int64(pg*perPage*entrySize)); err != nil {
			return fmt.Errorf("write index: %w", err)
		}
	}
	// Every pending entry is in the file now; over names pending
	// buckets only.
	clear(ix.pend)
	clear(ix.over)
	return nil
}

// mirror records in fp that bucket pos holds h → id.
func (ix *index) mirror(pos, h, id uint64) {
	if ix.fp == nil {
		return
	}
	switch id {
	case 0:
		ix.fp[pos] = fpEmpty
	case tombID:
		ix.fp[pos] = fpTomb
	default:
		ix.fp[pos] = fpOf(h)
	}
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

// count scans the table, sets live and tombs, and builds the mirror (if
// the table has at most 1<<fpBits buckets).
func (ix *index) count(fpBits uint) error {
	ix.live, ix.tombs = 0, 0
	ix.fp = newFP(ix.bits, fpBits)
	buf := make([]byte, 1<<16)
	total := ix.size() * entrySize
	for off := uint64(0); off < total; off += uint64(len(buf)) {
		b := buf[:min(uint64(len(buf)), total-off)]
		if err := preadFull(ix.fd, b, int64(off)); err != nil {
			ix.fp = nil
			return fmt.Errorf("read index: %w", err)
		}
		for i := 0; i < len(b); i += entrySize {
			id := binary.LittleEndian.Uint64(b[i+8:])
			switch id {
			case 0:
			case tombID:
				ix.tombs++
			default:
				ix.live++
			}
			ix.mirror((off+uint64(i))/entrySize, binary.LittleEndian.Uint64(b[i:]), id)
		}
	}
	return nil
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
