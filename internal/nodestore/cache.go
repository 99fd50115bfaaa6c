package nodestore

import "sync"

// cache is the bounded in-memory part of the persistent store: verified
// records by nodeid, and (mount, ino) → nodeid hints. Both are fixed-size,
// 4-way set-associative arrays with CLOCK replacement inside a set: they
// are allocated once, never grow or churn (a Go map used as a cache keeps
// its peak size and bloats under evictions), and a hit costs one lock and
// four compares. The size follows Options.CacheBytes for typical records
// (names of a few dozen bytes); records with 255-byte names and 128-byte
// handles cost up to about twice as much.
//
// Reference model: entries are copies; a Record handed out shares its
// Handle with the cache, which is why callers must not modify Handle.
// Consistency: writers update the files and then the cache while holding
// diskStore.mu for writing; readers fill the cache only while holding it
// for reading, so a reader never puts a record a writer has replaced.
type cache struct {
	shards [cacheShards]cacheShard
}

const (
	cacheShards = 16
	cacheWays   = 4
	// Estimated bytes per cached record: the Record (88), its entry
	// overhead, and the name and handle allocations.
	recCost = 192
	inoCost = 32
)

type cacheShard struct {
	mu      sync.Mutex
	tags    []recTags  // +checklocks:mu; one per record set
	recs    []Record   // +checklocks:mu; way w of set i at i*cacheWays+w (ID 0: empty)
	inos    []inoEntry // +checklocks:mu
	recMask uint64     // number of record sets - 1
	inoMask uint64
	_       [32]byte // 128 bytes per shard: locks on separate cache lines
}

// recTags is the tag line of a record set: the nodeid of each way, and its
// CLOCK reference bit and index hint (see ixHint, packHint), in one 64-byte
// cache line, apart from the records. A lookup or a fill reads this line
// and touches one record, instead of reading the nodeid of each of the 4
// 88-byte records (4 cache lines). Why: with nodeids placed in order
// (hashID), a new node's set has not been touched since the array last
// wrapped, and those loads were cache misses: 63% of the fill's own
// samples at CREATE+RELEASE+UNLINK at 16 in flight sat on the nodeid
// compare, the fill ~0.5 µs per new node.
type recTags struct {
	ids  [cacheWays]NodeID // 0: empty way
	meta [cacheWays]uint64 // usedBit, and the packed hint (see packHint)
}

const usedBit = 1 << 63 // CLOCK reference bit in recTags.meta

// packHint packs h into a meta word (without its reference bit), or no
// hint if it does not fit: position 32 bits, epoch 16 bits (0: no hint),
// old 1 bit.
func packHint(h ixHint) uint64 {
	if h.epoch == 0 || h.epoch > 0xffff || h.pos > 0xffffffff {
		return 0
	}
	m := h.pos | uint64(h.epoch)<<32
	if h.old {
		m |= 1 << 48
	}
	return m
}

// unpackHint is the hint of a meta word, and whether it has one.
func unpackHint(m uint64) (ixHint, bool) {
	epoch := uint32(m >> 32 & 0xffff)
	if epoch == 0 {
		return ixHint{}, false
	}
	return ixHint{epoch: epoch, old: m>>48&1 != 0, pos: m & 0xffffffff}, true
}

// way returns the way of the set that holds id, or -1.
func (t *recTags) way(id NodeID) int {
	for i := range t.ids {
		if t.ids[i] == id {
			return i
		}
	}
	return -1
}

// victim picks a way to fill: the first empty one, else the first whose
// reference bit is clear, clearing bits as it passes (CLOCK).
func (t *recTags) victim() int {
	for i := range t.ids {
		if t.ids[i] == 0 {
			return i
		}
	}
	for {
		for i := range t.meta {
			if t.meta[i]&usedBit == 0 {
				return i
			}
			t.meta[i] &^= usedBit
		}
	}
}

// ixHint is the position of a record's reverse index entry, so that Delete
// can write the tombstone without probing for it. It is valid while the
// store's index epoch is (epoch 0: no hint); see diskStore.hintTable. The
// cache keeps hints whose epoch fits 16 bits and position 32 bits (an
// index epoch changes a few times per doubling of the table, so a process
// never gets near 65536).
type ixHint struct {
	epoch uint32
	old   bool // in the old table of a running migration
	pos   uint64
}

type inoEntry struct {
	k    inoKey
	id   NodeID // 0: empty
	used bool
}

func newCache(maxBytes int) *cache {
	c := &cache{}
	recSets := pow2Floor(maxBytes * 3 / 4 / recCost / cacheWays / cacheShards)
	inoSets := pow2Floor(maxBytes / 4 / inoCost / cacheWays / cacheShards)
	for i := range c.shards {
		s := &c.shards[i]
		if recSets > 0 {
			s.tags = make([]recTags, recSets)
			s.recs = make([]Record, recSets*cacheWays)
			s.recMask = uint64(recSets - 1)
		}
		if inoSets > 0 {
			s.inos = make([]inoEntry, inoSets*cacheWays)
			s.inoMask = uint64(inoSets - 1)
		}
	}
	return c
}

func pow2Floor(n int) int {
	if n <= 0 {
		return 0
	}
	p := 1
	for p*2 <= n {
		p *= 2
	}
	return p
}

// hashID places nodeid id in the record cache: shard id mod 16, set
// id/16 (mod the shard's sets). Nodeids are handed out in order, so the
// records of new nodes fill each shard's array front to back instead of
// landing on random pages of it: a fresh daemon's first 10k nodes touch
// ~240 of its 4 KiB pages, not all ~1500 (a page fault each, and a cache
// miss per insert), and a run of recent nodeids never collides in a set
// while it fits. Measured against a mixing hash (interleaved bench runs,
// daemon CPU, medians): cold LOOKUP at 1 / 4 / 16 in flight 24.5 / 11.5 /
// 7.4 -> 21.8 / 11.0 / 7.0 µs (4 / 8 / 8 runs each), CREATE+RELEASE+UNLINK
// at 16 in flight 15.0 -> 14.2 µs (8 runs). Nodeids are the daemon's,
// not the guest's, so a guest cannot aim them at one set. Inode numbers
// are the host filesystem's: hashIno mixes them by blocks.
func hashID(id NodeID) uint64 { return uint64(id)<<60 | uint64(id)>>4 }

// hashIno places (mount, ino) in the ino cache: blocks of 64 consecutive
// inode numbers at mixed places, the inodes of a block in consecutive
// sets. Filesystems hand out inode numbers mostly in runs (tmpfs and btrfs
// in order, ext4 within a block group, XFS within a chunk of 64), so the
// files of a new directory or an untarred tree touch a few pages of the
// arrays instead of a random page each; mixing the block keeps strided
// numbering (XFS's allocation groups) from piling into a few sets.
// Measured against a mixing hash of the whole number (6 interleaved bench
// runs each, daemon CPU): cold LOOKUP at 1 in flight 25.2-28.2 -> 21.0-26.0
// µs, CREATE+RELEASE+UNLINK at 16 14.6 -> 14.0 µs (medians), MKDIR+RMDIR
// at 16 11.4 -> 10.1 µs, the 100k-file walk 4.75 -> 4.5 µs per LOOKUP;
// cold LOOKUP at 16 unchanged.
func hashIno(k inoKey) uint64 {
	return fmix64(k.ino>>6^uint64(k.mount)<<48^0x5bd1e995) + k.ino&63
}

// shard and set for a hash: the top 4 bits pick the shard, the low bits the set.
func (c *cache) shard(h uint64) *cacheShard { return &c.shards[h>>60] }

// recSet returns the tag line and the records of h's set.
func (s *cacheShard) recSet(h uint64) (*recTags, []Record) {
	i := h & s.recMask
	return &s.tags[i], s.recs[i*cacheWays : (i+1)*cacheWays]
}

func (s *cacheShard) inoSet(h uint64) []inoEntry {
	i := (h & s.inoMask) * cacheWays
	return s.inos[i : i+cacheWays]
}

func (c *cache) get(id NodeID) (Record, bool) {
	h := hashID(id)
	s := c.shard(h)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.recs == nil || id == 0 {
		return Record{}, false
	}
	tags, recs := s.recSet(h)
	if w := tags.way(id); w >= 0 {
		tags.meta[w] |= usedBit
		return recs[w], true
	}
	return Record{}, false
}

func (c *cache) putRec(r Record) { c.putRecHint(r, ixHint{}) }

// putRecHint caches r with the position of its index entry.
func (c *cache) putRecHint(r Record, hint ixHint) {
	h := hashID(r.ID)
	s := c.shard(h)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.recs == nil {
		return
	}
	tags, recs := s.recSet(h)
	w := tags.way(r.ID)
	if w < 0 {
		w = tags.victim()
	}
	recs[w] = r
	tags.ids[w], tags.meta[w] = r.ID, packHint(hint)
}

// getHint returns the index position hint of id, if id is cached with one.
func (c *cache) getHint(id NodeID) (ixHint, bool) {
	h := hashID(id)
	s := c.shard(h)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.recs == nil || id == 0 {
		return ixHint{}, false
	}
	tags, _ := s.recSet(h)
	if w := tags.way(id); w >= 0 {
		return unpackHint(tags.meta[w])
	}
	return ixHint{}, false
}

// setHint sets (or with ixHint{} clears) the hint of id, if id is cached.
func (c *cache) setHint(id NodeID, hint ixHint) {
	h := hashID(id)
	s := c.shard(h)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.recs == nil || id == 0 {
		return
	}
	tags, _ := s.recSet(h)
	if w := tags.way(id); w >= 0 {
		tags.meta[w] = tags.meta[w]&usedBit | packHint(hint)
	}
}

// clockVictim picks a way of an ino set: the first empty one, else the
// first whose reference bit is clear, clearing bits as it passes (CLOCK).
func clockVictim(n int, used func(i int) *bool) int {
	for i := 0; i < n; i++ {
		if used(i) == nil {
			return i
		}
	}
	for {
		for i := 0; i < n; i++ {
			u := used(i)
			if !*u {
				return i
			}
			*u = false
		}
	}
}

func (c *cache) delRec(id NodeID) {
	h := hashID(id)
	s := c.shard(h)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.recs == nil {
		return
	}
	tags, recs := s.recSet(h)
	if w := tags.way(id); w >= 0 && id != 0 {
		tags.ids[w], tags.meta[w] = 0, 0
		recs[w] = Record{} // let the name and handle go
	}
}

func (c *cache) getIno(k inoKey) (NodeID, bool) {
	h := hashIno(k)
	s := c.shard(h)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inos == nil {
		return 0, false
	}
	set := s.inoSet(h)
	for i := range set {
		if set[i].id != 0 && set[i].k == k {
			set[i].used = true
			return set[i].id, true
		}
	}
	return 0, false
}

func (c *cache) putIno(k inoKey, id NodeID) {
	h := hashIno(k)
	s := c.shard(h)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inos == nil {
		return
	}
	set := s.inoSet(h)
	victim := -1
	for i := range set {
		if set[i].id != 0 && set[i].k == k {
			victim = i
			break
		}
	}
	if victim < 0 {
		victim = clockVictim(len(set), func(i int) *bool {
			if set[i].id == 0 {
				return nil
			}
			return &set[i].used
		})
	}
	set[victim] = inoEntry{k: k, id: id}
}

// delIno drops the hint k → id (any id if id is 0).
func (c *cache) delIno(k inoKey, id NodeID) {
	h := hashIno(k)
	s := c.shard(h)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inos == nil {
		return
	}
	set := s.inoSet(h)
	for i := range set {
		if set[i].id != 0 && set[i].k == k && (id == 0 || set[i].id == id) {
			set[i] = inoEntry{}
		}
	}
}

func (c *cache) len() (recs, inos int) {
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		for _, t := range s.tags {
			for _, id := range t.ids {
				if id != 0 {
					recs++
				}
			}
		}
		for _, e := range s.inos {
			if e.id != 0 {
				inos++
			}
		}
		s.mu.Unlock()
	}
	return
}
