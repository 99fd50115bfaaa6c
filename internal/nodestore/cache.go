package nodestore

import "sync"

// cache is the bounded in-memory part of the persistent store: verified
// records by nodeid, and (mount, ino) → nodeid hints. It never holds more
// than about maxBytes of Go memory; eviction is random (a map iteration
// starts at a random slot), which needs no per-entry bookkeeping.
//
// Reference model: entries are copies; a Record handed out shares its
// Handle with the cache, which is why callers must not modify Handle.
// Consistency: writers update the files and then the cache while holding
// diskStore.mu for writing; readers fill the cache only while holding it
// for reading, so a reader can never put a record that a writer has
// already replaced.
type cache struct {
	shards [cacheShards]cacheShard
}

const cacheShards = 16

type cacheShard struct {
	mu       sync.Mutex
	recs     map[NodeID]Record // +checklocks:mu
	inos     map[inoKey]NodeID // +checklocks:mu
	bytes    int               // +checklocks:mu
	maxBytes int
}

// Approximate Go memory per entry, including map overhead.
const (
	recCost = 160
	inoCost = 48
)

func newCache(maxBytes int) *cache {
	c := &cache{}
	for i := range c.shards {
		c.shards[i].recs = make(map[NodeID]Record)
		c.shards[i].inos = make(map[inoKey]NodeID)
		c.shards[i].maxBytes = maxBytes / cacheShards
	}
	return c
}

func (c *cache) shardID(id NodeID) *cacheShard {
	return &c.shards[(uint64(id)*0x9E3779B97F4A7C15)>>60]
}

func (c *cache) shardIno(k inoKey) *cacheShard {
	return &c.shards[((k.ino^uint64(k.mount)<<40)*0xBF58476D1CE4E5B9)>>60]
}

func (c *cache) get(id NodeID) (Record, bool) {
	s := c.shardID(id)
	s.mu.Lock()
	r, ok := s.recs[id]
	s.mu.Unlock()
	return r, ok
}

func (c *cache) putRec(r Record) {
	s := c.shardID(r.ID)
	s.mu.Lock()
	if old, ok := s.recs[r.ID]; ok {
		s.bytes -= recCost + len(old.Name) + len(old.Handle)
	}
	s.recs[r.ID] = r
	s.bytes += recCost + len(r.Name) + len(r.Handle)
	s.evictLocked()
	s.mu.Unlock()
}

func (c *cache) delRec(id NodeID) {
	s := c.shardID(id)
	s.mu.Lock()
	if old, ok := s.recs[id]; ok {
		s.bytes -= recCost + len(old.Name) + len(old.Handle)
		delete(s.recs, id)
	}
	s.mu.Unlock()
}

func (c *cache) getIno(k inoKey) (NodeID, bool) {
	s := c.shardIno(k)
	s.mu.Lock()
	id, ok := s.inos[k]
	s.mu.Unlock()
	return id, ok
}

func (c *cache) putIno(k inoKey, id NodeID) {
	s := c.shardIno(k)
	s.mu.Lock()
	if _, ok := s.inos[k]; !ok {
		s.bytes += inoCost
	}
	s.inos[k] = id
	s.evictLocked()
	s.mu.Unlock()
}

// delIno drops the hint k → id (any id if id is 0).
func (c *cache) delIno(k inoKey, id NodeID) {
	s := c.shardIno(k)
	s.mu.Lock()
	if cur, ok := s.inos[k]; ok && (id == 0 || cur == id) {
		delete(s.inos, k)
		s.bytes -= inoCost
	}
	s.mu.Unlock()
}

func (s *cacheShard) evictLocked() {
	for s.bytes > s.maxBytes {
		// Evict from the larger population first.
		if len(s.recs)*recCost >= len(s.inos)*inoCost && len(s.recs) > 0 {
			for id, r := range s.recs {
				delete(s.recs, id)
				s.bytes -= recCost + len(r.Name) + len(r.Handle)
				break
			}
		} else if len(s.inos) > 0 {
			for k := range s.inos {
				delete(s.inos, k)
				s.bytes -= inoCost
				break
			}
		} else {
			return
		}
	}
}

func (c *cache) len() (recs, inos int) {
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		recs += len(s.recs)
		inos += len(s.inos)
		s.mu.Unlock()
	}
	return
}
