package nodestore

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
)

func openWB(t *testing.T, dir string) *diskStore {
	t.Helper()
	ds, err := open(dir, Options{Logger: quietLogger(), WriteBehindRecords: true})
	if err != nil {
		t.Fatal(err)
	}
	return ds
}

// TestWriteBehindFlushCrash: records written behind and then Flushed
// survive the process (crashCopy: what a process killed now leaves), with
// their Updates and Deletes; records not yet Flushed are seen by the live
// store but are NOT durable: the crash copy reads them as ErrNotFound.
func TestWriteBehindFlushCrash(t *testing.T) {
	dir := t.TempDir()
	ds := openWB(t, dir)
	defer ds.Close()
	if _, err := ds.Insert(rec(0, 1, 0, "")); err != nil { // the root: written through
		t.Fatal(err)
	}
	want := map[NodeID]Record{}
	long := strings.Repeat("n", 230) // an overflow slot
	for i := range 1000 {
		r := rec(0, uint64(100+i), 1, fmt.Sprint("f", i))
		if i%97 == 0 {
			r.Name = long
		}
		got, ins, err := ds.LookupOrInsert(r)
		if err != nil || !ins {
			t.Fatal(err, ins)
		}
		want[got.ID] = got
	}
	if ds.wb.n.Load() == 0 {
		t.Fatal("nothing pending")
	}
	// Renames of pending and flushed records, in descending nodeid order
	// (the flush sorts them), a key change (written through) and deletes.
	var ids []NodeID
	for id := range want {
		ids = append(ids, id)
	}
	for _, id := range ids {
		r := want[id]
		switch {
		case id%10 == 3:
			r.Name = "renamed"
			r.Parent = 7
		case id%50 == 4:
			r.Ino += 1 << 32 // host inode reuse: a new key
		case id%30 == 5:
			if err := ds.Delete(id); err != nil {
				t.Fatal(err)
			}
			delete(want, id)
			continue
		default:
			continue
		}
		if err := ds.Update(r); err != nil {
			t.Fatal(err)
		}
		want[id] = r
	}
	if err := ds.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := ds.wb.n.Load(); n != 0 {
		t.Fatalf("%d pending after Flush", n)
	}
	// Not flushed: visible here, lost in a crash.
	unflushed, err := ds.Insert(rec(0, 5000, 1, "unflushed"))
	if err != nil {
		t.Fatal(err)
	}
	renamed := want[ids[0]]
	renamed.Name = "renamed-unflushed"
	if err := ds.Update(renamed); err != nil {
		t.Fatal(err)
	}
	mustGet(t, ds, renamed)
	if r, err := ds.ByIno(0, 5000); err != nil || r.ID != unflushed {
		t.Fatalf("ByIno of a pending record = %v %v", r.ID, err)
	}

	c, err := open(crashCopy(t, dir), Options{Logger: quietLogger(), CacheBytes: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for id, r := range want {
		mustGet(t, c, r)
		if got, err := c.ByIno(r.Mount, r.Ino); err != nil || got.ID != id {
			t.Fatalf("ByIno(%d) after the crash = %d %v, want %d", r.Ino, got.ID, err, id)
		}
	}
	for _, id := range ids {
		if _, ok := want[id]; !ok {
			if _, err := c.Get(id); !errors.Is(err, ErrNotFound) {
				t.Fatalf("deleted %d after the crash: %v", id, err)
			}
		}
	}
	if _, err := c.Get(unflushed); !errors.Is(err, ErrNotFound) {
		t.Fatalf("an unflushed record after the crash: %v (write-behind did not defer it?)", err)
	}
	mustGet(t, c, want[ids[0]]) // the flushed version
	if good, bad, err := Verify(c); err != nil || bad != 0 || good != len(want)+1 {
		t.Fatalf("Verify = %d %d %v, want %d good", good, bad, err, len(want)+1)
	}
}

// TestWriteBehindOnlyPending: a flush writes the pending slots only,
// never the ones between them (a slot another inserter has not filled
// yet must keep whatever it holds), and a Delete drops the pending slot
// rather than letting a later flush resurrect it.
func TestWriteBehindOnlyPending(t *testing.T) {
	dir := t.TempDir()
	ds := openWB(t, dir)
	defer ds.Close()
	var ids []NodeID
	for i := range 8 {
		id, err := ds.Insert(rec(0, uint64(i+10), 1, "p"))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := ds.Delete(ids[3]); err != nil {
		t.Fatal(err)
	}
	// Someone else's bytes in the deleted slot: the flush must leave them.
	marker := make([]byte, slotSize)
	for i := range marker {
		marker[i] = 0xa5
	}
	ds.mu.Lock()
	err := pwriteFull(ds.recFD, marker, int64(ids[3])*slotSize)
	ds.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if err := ds.Flush(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, slotSize)
	if err := preadFull(ds.recFD, got, int64(ids[3])*slotSize); err != nil {
		t.Fatal(err)
	}
	if string(got) != string(marker) {
		t.Fatal("the flush wrote a slot that was not pending")
	}
	for _, i := range []int{0, 2, 4, 7} {
		if err := preadFull(ds.recFD, got, int64(ids[i])*slotSize); err != nil {
			t.Fatal(err)
		}
		if got[0] != stateLive {
			t.Fatalf("slot %d not written by the flush", ids[i])
		}
	}
}

// TestWriteBehindBound: a caller that never Flushes keeps at most
// behindMax records pending; the rest are written.
func TestWriteBehindBound(t *testing.T) {
	dir := t.TempDir()
	ds := openWB(t, dir)
	defer ds.Close()
	if _, err := ds.Insert(rec(0, 1<<40, 0, "")); err != nil { // the root: written through
		t.Fatal(err)
	}
	const n = 10*behindMax + 17
	for i := range n {
		if _, err := ds.Insert(rec(0, uint64(i), 1, "b")); err != nil {
			t.Fatal(err)
		}
		if p := ds.wb.n.Load(); p > behindMax || p == 0 {
			t.Fatalf("%d pending", p)
		}
	}
	c, err := open(crashCopy(t, dir), Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	good, _, err := Verify(c)
	if good--; err != nil || good < n-behindMax || good >= n { // less the root
		t.Fatalf("after a crash without Flush: %d of %d records (%v), want at least %d and not all", good, n, err, n-behindMax)
	}
}

// TestWriteBehindConcurrent: inserters (with renames and deletes of their
// own records) each Flush after a "request" and only then count the
// request's records as acknowledged, while other goroutines Flush and Get
// at random; every acknowledged record, in its acknowledged version, is in
// what a crash leaves. Run with -race.
func TestWriteBehindConcurrent(t *testing.T) {
	dir := t.TempDir()
	ds := openWB(t, dir)
	ds.migStep = 1 // long index migrations (entries written directly)
	defer ds.Close()
	if _, err := ds.Insert(rec(0, 1, 0, "")); err != nil {
		t.Fatal(err)
	}
	const workers, requests = 4, 60
	acked := make([]map[NodeID]Record, workers)
	var deleted sync.Map
	var wg, bg sync.WaitGroup
	stop := make(chan struct{})
	errc := make(chan error, workers+2)
	for range 2 {
		bg.Add(1)
		go func() { // the replies of other requests
			defer bg.Done()
			rng := rand.New(rand.NewPCG(1, 2))
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := ds.Flush(); err != nil {
					errc <- err
					return
				}
				if _, err := ds.Get(NodeID(rng.IntN(workers*requests*40) + 1)); err != nil &&
					!errors.Is(err, ErrNotFound) {
					errc <- err
					return
				}
			}
		}()
	}
	for w := range workers {
		wg.Add(1)
		acked[w] = map[NodeID]Record{}
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 9))
			mine := map[NodeID]Record{}
			ino := uint64(w+1) << 40
			for q := range requests {
				for range 1 + rng.IntN(60) { // a READDIRPLUS
					ino++
					r := rec(uint32(w%2), ino, 1, fmt.Sprint("w", w, "-", ino))
					got, _, err := ds.LookupOrInsert(r)
					if err != nil {
						errc <- err
						return
					}
					mine[got.ID] = got
				}
				for id, r := range mine { // a few renames and unlinks
					switch rng.IntN(20) {
					case 0:
						r.Name = fmt.Sprint("renamed-", q)
						if err := ds.Update(r); err != nil {
							errc <- err
							return
						}
						mine[id] = r
					case 1:
						if err := ds.Delete(id); err != nil {
							errc <- err
							return
						}
						delete(mine, id)
						deleted.Store(id, true)
					}
				}
				if err := ds.Flush(); err != nil {
					errc <- err
					return
				}
				for id, r := range mine {
					acked[w][id] = r
				}
				for id := range acked[w] {
					if _, ok := mine[id]; !ok {
						delete(acked[w], id)
					}
				}
			}
		}()
	}
	wg.Wait()
	ds.mu.RLock()
	grew := ds.ix.bits > minIndexBits
	ds.mu.RUnlock()
	if !grew {
		t.Error("the index did not grow: make the test insert more")
	}
	close(stop)
	bg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	c, err := open(crashCopy(t, dir), Options{Logger: quietLogger(), CacheBytes: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	n := 0
	for w := range workers {
		for id, r := range acked[w] {
			mustGet(t, c, r)
			if got, err := c.ByIno(r.Mount, r.Ino); err != nil || got.ID != id {
				t.Fatalf("ByIno(%d, %d) after the crash = %d %v, want %d", r.Mount, r.Ino, got.ID, err, id)
			}
			n++
		}
	}
	deleted.Range(func(k, _ any) bool {
		if _, err := c.Get(k.(NodeID)); !errors.Is(err, ErrNotFound) {
			t.Fatalf("deleted %d after the crash: %v", k, err)
		}
		return true
	})
	if _, bad, err := Verify(c); err != nil || bad != 0 {
		t.Fatalf("Verify: %d bad, %v", bad, err)
	}
	t.Logf("%d acknowledged records checked", n)
}

// TestWriteBehindCloseRace: Flush concurrent with Close neither races nor
// writes to a closed descriptor; after Close it returns nil (nothing
// pending) and the records are all there.
func TestWriteBehindCloseRace(t *testing.T) {
	dir := t.TempDir()
	ds := openWB(t, dir)
	done := make(chan error)
	go func() {
		for {
			err := ds.Flush()
			if err != nil || ds.isClosed.Load() {
				done <- err
				return
			}
		}
	}()
	for i := range 3000 {
		if _, err := ds.Insert(rec(0, uint64(i), 1, "c")); err != nil {
			t.Fatal(err)
		}
	}
	if err := ds.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := ds.Flush(); err != nil {
		t.Fatal(err)
	}
	c, err := Open(dir, Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if good, bad, err := Verify(c); err != nil || bad != 0 || good != 3000 {
		t.Fatalf("Verify = %d %d %v", good, bad, err)
	}
}

// FuzzWriteBehind runs a sequence of inserts, renames, key changes,
// deletes, Flushes and Syncs on a write-behind store and on one without,
// which must agree call by call; after a last Flush, what a crash leaves
// of them must agree too. The first byte picks the cache: the default
// one, or a tiny one (reads go to the pending buffer and the file; no
// index mirror, so no index entries written behind). (Not a memory store
// as the oracle: a disk store's ByIno after an Update of a record whose
// key a newer Insert took over depends on its cache, and after a crash
// the index recovery can give back a key that a deleted newer record had
// taken over to the older one.)
func FuzzWriteBehind(f *testing.F) {
	f.Add([]byte{0, 1, 0, 2, 0, 3, 2, 1, 5, 0, 4, 2, 3, 1, 5, 0})
	f.Add([]byte{1, 7, 1, 7, 2, 0, 4, 1, 0, 9, 3, 0, 5, 0, 2, 1, 6, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		if len(ops) > 2000 {
			ops = ops[:2000]
		}
		opts := Options{Logger: quietLogger()}
		if len(ops) > 0 && ops[0]&1 != 0 {
			opts.CacheBytes = 1
		}
		dir, mdir := t.TempDir(), t.TempDir()
		m0, err := open(mdir, opts)
		if err != nil {
			t.Fatal(err)
		}
		defer m0.Close()
		var m Store = m0
		opts.WriteBehindRecords = true
		ds, err := open(dir, opts)
		if err != nil {
			t.Fatal(err)
		}
		defer ds.Close()
		var ids []NodeID
		keys := map[uint64]bool{}
		pick := func(b byte) (NodeID, bool) {
			if len(ids) == 0 {
				return 0, false
			}
			return ids[int(b)%len(ids)], true
		}
		same := func(what string, a, b Record, aerr, berr error) {
			t.Helper()
			if (aerr == nil) != (berr == nil) || aerr == nil && !sameRecord(a, b) ||
				aerr != nil && errors.Is(aerr, ErrNotFound) != errors.Is(berr, ErrNotFound) {
				t.Fatalf("%s: write-behind %+v %v, without %+v %v", what, a, aerr, b, berr)
			}
		}
		for i := 0; i+1 < len(ops); i += 2 {
			op, arg := ops[i]%7, ops[i+1]
			ino := uint64(arg%64) + 2
			switch op {
			case 0, 1: // LOOKUP of a file (long names: overflow slots)
				r := rec(0, ino, 1, fmt.Sprint("n", arg))
				if arg > 200 {
					r.Name = strings.Repeat("l", 220)
				}
				keys[ino] = true
				if op == 0 {
					a, ai, aerr := ds.LookupOrInsert(r)
					b, bi, berr := m.LookupOrInsert(r)
					if ai != bi {
						t.Fatalf("LookupOrInsert inserted: write-behind %v, without %v", ai, bi)
					}
					same("LookupOrInsert", a, b, aerr, berr)
					if ai {
						ids = append(ids, a.ID)
					}
				} else {
					a, aerr := ds.Insert(r)
					b, berr := m.Insert(r)
					if a != b || (aerr == nil) != (berr == nil) {
						t.Fatalf("Insert: write-behind %d %v, without %d %v", a, aerr, b, berr)
					}
					ids = append(ids, a)
				}
			case 2, 3: // rename; host inode reuse (a new key)
				id, ok := pick(arg)
				if !ok {
					continue
				}
				r, err := m.Get(id)
				if err != nil {
					continue
				}
				r = cloneRecord(r)
				if op == 2 {
					r.Name = fmt.Sprint("r", i)
				} else {
					r.Ino = uint64(arg%64) + 2
					keys[r.Ino] = true
				}
				aerr, berr := ds.Update(r), m.Update(r)
				if (aerr == nil) != (berr == nil) {
					t.Fatalf("Update: write-behind %v, without %v", aerr, berr)
				}
			case 4:
				id, ok := pick(arg)
				if !ok {
					continue
				}
				aerr, berr := ds.Delete(id), m.Delete(id)
				if (aerr == nil) != (berr == nil) {
					t.Fatalf("Delete: write-behind %v, without %v", aerr, berr)
				}
			case 5:
				if err := ds.Flush(); err != nil {
					t.Fatal(err)
				}
			case 6:
				if err := ds.Sync(); err != nil {
					t.Fatal(err)
				}
			}
			if id, ok := pick(arg); ok {
				a, aerr := ds.Get(id)
				b, berr := m.Get(id)
				same("Get", a, b, aerr, berr)
			}
		}
		if err := ds.Flush(); err != nil {
			t.Fatal(err)
		}
		opts.WriteBehindRecords = false
		c, err := open(crashCopy(t, dir), opts)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		mc, err := open(crashCopy(t, mdir), opts)
		if err != nil {
			t.Fatal(err)
		}
		defer mc.Close()
		for n, p := range [][2]Store{{ds, m}, {c, mc}} {
			s, m := p[0], p[1]
			for _, id := range ids {
				a, aerr := s.Get(id)
				b, berr := m.Get(id)
				same("Get", a, b, aerr, berr)
			}
			for ino := range keys {
				a, aerr := s.ByIno(0, ino)
				b, berr := m.ByIno(0, ino)
				same(fmt.Sprint("ByIno, store ", n), a, b, aerr, berr)
			}
		}
	})
}

// BenchmarkFlushIdle is the daemon's Flush after a request that stored
// nothing, from all goroutines at once: one atomic load.
func BenchmarkFlushIdle(b *testing.B) {
	ds, err := open(b.TempDir(), Options{Logger: quietLogger(), WriteBehindRecords: true})
	if err != nil {
		b.Fatal(err)
	}
	defer ds.Close()
	var s Store = ds
	fl := s.(interface{ Flush() error })
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := fl.Flush(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
