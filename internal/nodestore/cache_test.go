package nodestore

import "testing"

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
