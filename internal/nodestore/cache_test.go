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
