package nodestore

import (
	"errors"
	"testing"
	"unsafe"
)

// A run of consecutive nodeids as long as the record cache's capacity
// fills it exactly: every record of the run stays cached (see hashID). With
// a mixing hash some sets would get more than their four ways and evict
// records of the run while others stay empty.
func TestCacheHoldsRunOfNodeids(t *testing.T) {
	c := newCache(1 << 20)
	capacity := 0
	for i := range c.shards {
		capacity += len(c.shards[i].recs)
	}
	if capacity == 0 {
		t.Fatal("empty record cache")
	}
	const first = 1000 // any start: the run need not be aligned
	for id := NodeID(first); id < first+NodeID(capacity); id++ {
		c.putRec(Record{ID: id, Name: "f"})
	}
	if recs, _ := c.len(); recs != capacity {
		t.Errorf("%d of a run of %d nodeids cached", recs, capacity)
	}
	for id := NodeID(first); id < first+NodeID(capacity); id++ {
		if _, ok := c.get(id); !ok {
			t.Fatalf("nodeid %d of the run evicted", id)
		}
	}
}

// The inode numbers of an aligned block of 64 go to 64 consecutive sets of
// one shard (see hashIno), so all of them stay cached and a run of new
// files touches a few pages of the ino arrays, not one each.
func TestInoCacheKeepsBlocksTogether(t *testing.T) {
	c := newCache(1 << 20)
	for _, k0 := range []inoKey{{0, 64 * 12345}, {3, 1 << 40}, {1, 64}} {
		h0 := hashIno(k0)
		s0 := c.shard(h0)
		mask := s0.inoMask
		for i := range uint64(64) {
			k := inoKey{k0.mount, k0.ino + i}
			h := hashIno(k)
			if c.shard(h) != s0 {
				t.Fatalf("ino %d in another shard than ino %d", k.ino, k0.ino)
			}
			if got, want := h&mask, (h0+i)&mask; got != want {
				t.Fatalf("ino %d in set %d, want %d (ino %d's set + %d)", k.ino, got, want, k0.ino, i)
			}
			c.putIno(k, NodeID(100+i))
		}
		for i := range uint64(64) {
			if id, ok := c.getIno(inoKey{k0.mount, k0.ino + i}); !ok || id != NodeID(100+i) {
				t.Fatalf("ino %d: got %d, %v", k0.ino+i, id, ok)
			}
		}
	}
}

// A record LookupOrInsertHeld inserts is not in the record cache (the
// caller holds the node), yet reads back the same through every method,
// with and without write-behind (whose window then serves the read), and
// deletes as one LookupOrInsert inserted. LookupOrInsert still caches.
func TestLookupOrInsertHeldSkipsRecordCache(t *testing.T) {
	for _, wb := range []bool{false, true} {
		t.Run(map[bool]string{false: "writethrough", true: "writebehind"}[wb], func(t *testing.T) {
			s, err := open(t.TempDir(), Options{Logger: quietLogger(), WriteBehindRecords: wb})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			held, ins, err := s.LookupOrInsertHeld(rec(0, 7, 1, "held"))
			if err != nil || !ins {
				t.Fatalf("LookupOrInsertHeld = %+v %v %v", held, ins, err)
			}
			cached, ins, err := s.LookupOrInsert(rec(0, 8, 1, "cached"))
			if err != nil || !ins {
				t.Fatalf("LookupOrInsert = %+v %v %v", cached, ins, err)
			}
			if err := s.Flush(); err != nil {
				t.Fatal(err)
			}
			if _, ok := s.cache.get(held.ID); ok {
				t.Errorf("LookupOrInsertHeld put nodeid %d in the record cache", held.ID)
			}
			if _, ok := s.cache.get(cached.ID); !ok {
				t.Errorf("LookupOrInsert did not put nodeid %d in the record cache", cached.ID)
			}
			// Found again, not inserted: the ino cache and index have it.
			if again, ins, err := s.LookupOrInsertHeld(rec(0, 7, 1, "other")); err != nil || ins || again.ID != held.ID {
				t.Fatalf("LookupOrInsertHeld of the same key = %+v %v %v, want nodeid %d", again, ins, err, held.ID)
			}
			got, err := s.Get(held.ID)
			if err != nil || !sameRecord(got, held) {
				t.Fatalf("Get(%d) = %+v %v, want %+v", held.ID, got, err, held)
			}
			if got, err := s.ByIno(0, 7); err != nil || !sameRecord(got, held) {
				t.Fatalf("ByIno(0, 7) = %+v %v, want %+v", got, err, held)
			}
			s.cache.delRec(held.ID) // as if evicted again: Delete reads it
			if err := s.Delete(held.ID); err != nil {
				t.Fatal(err)
			}
			if err := s.Flush(); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Get(held.ID); !errors.Is(err, ErrNotFound) {
				t.Fatalf("Get of the deleted nodeid %d: %v, want ErrNotFound", held.ID, err)
			}
			if _, err := s.ByIno(0, 7); !errors.Is(err, ErrNotFound) {
				t.Fatalf("ByIno of the deleted record's key: %v, want ErrNotFound", err)
			}
			if got, err := s.Get(cached.ID); err != nil || !sameRecord(got, cached) {
				t.Fatalf("Get(%d) = %+v %v, want %+v", cached.ID, got, err, cached)
			}
		})
	}
}

// Shards keep their locks on separate cache lines; a record set's tags
// fill one line.
func TestCacheLayout(t *testing.T) {
	if n := unsafe.Sizeof(cacheShard{}); n != 128 {
		t.Errorf("cacheShard is %d bytes, want 128", n)
	}
	if n := unsafe.Sizeof(recTags{}); n != 64 {
		t.Errorf("recTags is %d bytes, want 64", n)
	}
}

// Index hints survive the packing into a tag's meta word, next to the
// reference bit; hints that do not fit are dropped, never truncated.
func TestCacheHints(t *testing.T) {
	c := newCache(1 << 20)
	c.putRecHint(Record{ID: 7, Name: "a"}, ixHint{epoch: 3, old: true, pos: 0xfffffffe})
	if h, ok := c.getHint(7); !ok || h != (ixHint{epoch: 3, old: true, pos: 0xfffffffe}) {
		t.Errorf("hint %+v %v", h, ok)
	}
	c.get(7) // sets the reference bit
	c.setHint(7, ixHint{epoch: 0xffff, pos: 5})
	if h, ok := c.getHint(7); !ok || h != (ixHint{epoch: 0xffff, pos: 5}) {
		t.Errorf("hint after setHint %+v %v", h, ok)
	}
	for _, h := range []ixHint{{epoch: 1 << 16, pos: 1}, {epoch: 1, pos: 1 << 32}, {}} {
		c.setHint(7, h)
		if got, ok := c.getHint(7); ok {
			t.Errorf("hint %+v kept as %+v", h, got)
		}
	}
	if r, ok := c.get(7); !ok || r.Name != "a" {
		t.Errorf("record after hint changes: %+v %v", r, ok)
	}
	c.delRec(7)
	if _, ok := c.get(7); ok {
		t.Error("deleted record still cached")
	}
	if _, ok := c.getHint(7); ok {
		t.Error("deleted record's hint still cached")
	}
}

// CLOCK inside a set: a record read since the last pass survives the
// next fill of its full set, one not read is evicted.
func TestCacheClock(t *testing.T) {
	c := newCache(1 << 20)
	s := &c.shards[0]
	sets := NodeID(len(s.tags))
	// Nodeids 16*sets*k (k = 1..5) share shard 0's set 0 (see hashID).
	id := func(k NodeID) NodeID { return 16 * sets * k }
	for k := NodeID(1); k <= 4; k++ {
		c.putRec(Record{ID: id(k), Name: "x"})
	}
	c.get(id(2))
	c.putRec(Record{ID: id(5), Name: "x"})
	if _, ok := c.get(id(2)); !ok {
		t.Error("record read since the last pass was evicted")
	}
	if _, ok := c.get(id(5)); !ok {
		t.Error("new record not cached")
	}
	evicted := 0
	for _, k := range []NodeID{1, 3, 4} {
		if _, ok := c.get(id(k)); !ok {
			evicted++
		}
	}
	if evicted != 1 {
		t.Errorf("%d unread records evicted, want 1", evicted)
	}
}
