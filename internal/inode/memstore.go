package inode

import (
	"crypto/rand"
	"encoding/binary"
	"sync"
)

// memStore is a Store that lives in memory only: nodeids die with the
// process, as in today's daemons. It backs --state-dir=none.
type memStore struct {
	gen uint64

	mu     sync.Mutex
	next   NodeID            // +checklocks:mu
	byID   map[NodeID]Record // +checklocks:mu
	byIno  map[inoKey]NodeID // +checklocks:mu
	mounts []MountRecord     // +checklocks:mu
}

type inoKey struct {
	mount uint32
	ino   uint64
}

// NewMemStore returns an empty in-memory Store with a random generation.
func NewMemStore() Store {
	var b [8]byte
	_, _ = rand.Read(b[:])
	gen := binary.LittleEndian.Uint64(b[:]) | 1
	return &memStore{gen: gen, next: RootID, byID: map[NodeID]Record{}, byIno: map[inoKey]NodeID{}}
}

func (s *memStore) Generation() uint64 { return s.gen }

func (s *memStore) Get(id NodeID) (Record, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.byID[id]
	if !ok {
		return Record{}, ErrNotFound
	}
	return r, nil
}

func (s *memStore) ByIno(mount uint32, ino uint64) (Record, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id, ok := s.byIno[inoKey{mount, ino}]
	if !ok {
		return Record{}, ErrNotFound
	}
	return s.byID[id], nil
}

func (s *memStore) Insert(r Record) (NodeID, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r.ID = s.next
	s.next++
	r.Handle = append([]byte(nil), r.Handle...)
	s.byID[r.ID] = r
	s.byIno[inoKey{r.Mount, r.Ino}] = r.ID
	return r.ID, nil
}

func (s *memStore) Update(r Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	old, ok := s.byID[r.ID]
	if !ok {
		return ErrNotFound
	}
	if k := (inoKey{old.Mount, old.Ino}); s.byIno[k] == r.ID {
		delete(s.byIno, k)
	}
	r.Handle = append([]byte(nil), r.Handle...)
	s.byID[r.ID] = r
	s.byIno[inoKey{r.Mount, r.Ino}] = r.ID
	return nil
}

func (s *memStore) Delete(id NodeID) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	old, ok := s.byID[id]
	if !ok {
		return ErrNotFound
	}
	if k := (inoKey{old.Mount, old.Ino}); s.byIno[k] == id {
		delete(s.byIno, k)
	}
	delete(s.byID, id)
	return nil
}

func (s *memStore) PutMount(m MountRecord) (uint32, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, old := range s.mounts {
		if old.Path == m.Path && old.Dev == m.Dev {
			return old.Index, nil
		}
	}
	m.Index = uint32(len(s.mounts))
	s.mounts = append(s.mounts, m)
	return m.Index, nil
}

func (s *memStore) Mounts() ([]MountRecord, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]MountRecord(nil), s.mounts...), nil
}

func (s *memStore) Close() error { return nil }
