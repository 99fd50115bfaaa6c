package nodestore

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"sync"
)

// memStore is the store for --state-dir=none: the same semantics as the
// persistent store, without persistence (and so without MACs).
type memStore struct {
	gen uint64

	mu     sync.RWMutex
	closed bool              // +checklocks:mu
	next   NodeID            // +checklocks:mu
	recs   map[NodeID]Record // +checklocks:mu
	byIno  map[inoKey]NodeID // +checklocks:mu
	mounts []MountRecord     // +checklocks:mu
}

type inoKey struct {
	mount uint32
	ino   uint64
}

// OpenMemory returns a store that keeps everything in memory.
func OpenMemory() Store {
	return &memStore{
		gen:   newGeneration(),
		next:  RootID,
		recs:  make(map[NodeID]Record),
		byIno: make(map[inoKey]NodeID),
	}
}

func newGeneration() uint64 {
	var b [8]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			panic(err) // crypto/rand never fails on Linux ≥ 3.17
		}
		if g := binary.LittleEndian.Uint64(b[:]); g != 0 {
			return g
		}
	}
}

func (s *memStore) Generation() uint64 { return s.gen }

func (s *memStore) Get(id NodeID) (Record, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return Record{}, ErrClosed
	}
	r, ok := s.recs[id]
	if !ok {
		return Record{}, fmt.Errorf("nodeid %d: %w", id, ErrNotFound)
	}
	return r, nil
}

func (s *memStore) ByIno(mount uint32, ino uint64) (Record, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return Record{}, ErrClosed
	}
	id, ok := s.byIno[inoKey{mount, ino}]
	if !ok {
		return Record{}, fmt.Errorf("mount %d ino %d: %w", mount, ino, ErrNotFound)
	}
	return s.recs[id], nil
}

func (s *memStore) Insert(r Record) (NodeID, error) {
	if err := validate(&r); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, ErrClosed
	}
	return s.insertLocked(r), nil
}

func (s *memStore) insertLocked(r Record) NodeID {
	r = cloneRecord(r)
	r.ID = s.next
	s.next++
	s.recs[r.ID] = r
	s.byIno[inoKey{r.Mount, r.Ino}] = r.ID
	return r.ID
}

func (s *memStore) LookupOrInsert(r Record) (Record, bool, error) {
	if err := validate(&r); err != nil {
		return Record{}, false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return Record{}, false, ErrClosed
	}
	if id, ok := s.byIno[inoKey{r.Mount, r.Ino}]; ok {
		return s.recs[id], false, nil
	}
	id := s.insertLocked(r)
	return s.recs[id], true, nil
}

// LookupOrInsertHeld is LookupOrInsert: a memory store has no cache.
func (s *memStore) LookupOrInsertHeld(r Record) (Record, bool, error) {
	return s.LookupOrInsert(r)
}

func (s *memStore) Update(r Record) error {
	if err := validate(&r); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	old, ok := s.recs[r.ID]
	if !ok {
		return fmt.Errorf("update nodeid %d: %w", r.ID, ErrNotFound)
	}
	r = cloneRecord(r)
	s.recs[r.ID] = r
	// Only a move to another key changes owners (see the package doc):
	// an Update that keeps its key does not take it back from a newer
	// record.
	if ok1, ok2 := (inoKey{old.Mount, old.Ino}), (inoKey{r.Mount, r.Ino}); ok1 != ok2 {
		if s.byIno[ok1] == r.ID {
			delete(s.byIno, ok1)
		}
		s.byIno[ok2] = r.ID
	}
	return nil
}

func (s *memStore) Delete(id NodeID) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	old, ok := s.recs[id]
	if !ok {
		return fmt.Errorf("delete nodeid %d: %w", id, ErrNotFound)
	}
	delete(s.recs, id)
	if k := (inoKey{old.Mount, old.Ino}); s.byIno[k] == id {
		delete(s.byIno, k)
	}
	return nil
}

func (s *memStore) PutMount(m MountRecord) (uint32, error) {
	if err := validateMount(&m); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, ErrClosed
	}
	if i, ok := findMount(s.mounts, m); ok {
		return i, nil
	}
	m.Index = uint32(len(s.mounts))
	s.mounts = append(s.mounts, m)
	return m.Index, nil
}

func findMount(ms []MountRecord, m MountRecord) (uint32, bool) {
	for _, x := range ms {
		if x.Path == m.Path && x.Dev == m.Dev {
			return x.Index, true
		}
	}
	return 0, false
}

func (s *memStore) Mounts() ([]MountRecord, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, ErrClosed
	}
	return append([]MountRecord(nil), s.mounts...), nil
}

func (s *memStore) Sync() error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return ErrClosed
	}
	return nil
}

func (s *memStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	s.closed = true
	return nil
}
