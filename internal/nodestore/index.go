package nodestore

import (
	"encoding/binary"
	"errors"
	"fmt"

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
