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
	// A record that is still there (ids are in map order, and a few of
	// them were deleted above).
	var kept NodeID
	for _, id := range ids {
		if _, ok := want[id]; ok {
			kept = id
			break
		}
	}
	renamed := want[kept]
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
	mustGet(t, c, want[kept]) // the flushed version
	if good, bad, err := Verify(c); err != nil || bad != 0 || good != len(want)+1 {
		t.Fatalf("Verify = %d %d %v, want %d good", good, bad, err, len(want)+1)
	}
}

// TestWriteBehindOnlyPending: a flush writes the pending slots only,
// never the ones between them (a slot another inserter has not filled
// yet must keep whatever it holds), and a Delete leaves zeros pending in
// place of the record's pending slot, so that no flush resurrects it.
func TestWriteBehindOnlyPending(t *testing.T) {
	dir := t.TempDir()
	ds := openWB(t, dir)
	defer ds.Close()
	var ids []NodeID
	var recs []Record
	for i := range 8 {
		r := rec(0, uint64(i+10), 1, "p")
		id, err := ds.Insert(r)
		if err != nil {
			t.Fatal(err)
		}
		r.ID = id
		ids, recs = append(ids, id), append(recs, r)
	}
	if err := ds.Delete(ids[3]); err != nil { // pending, never written
		t.Fatal(err)
	}
	if err := ds.Flush(); err != nil {
		t.Fatal(err)
	}
	slot := func(id NodeID) []byte {
		t.Helper()
		got := make([]byte, slotSize)
		if err := preadFull(ds.recFD, got, int64(id)*slotSize); err != nil {
			t.Fatal(err)
		}
		return got
	}
	if !isZero(slot(ids[3])) {
		t.Fatal("a deleted pending record was written by the flush")
	}
	for _, i := range []int{0, 2, 4, 7} {
		if slot(ids[i])[0] != stateLive {
			t.Fatalf("slot %d not written by the flush", ids[i])
		}
	}
	// Pending: renames of ids[2] and ids[4], the deletion of ids[6].
	for _, i := range []int{2, 4} {
		recs[i].Name = "renamed"
		if err := ds.Update(recs[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := ds.Delete(ids[6]); err != nil {
		t.Fatal(err)
	}
	if slot(ids[6])[0] != stateLive {
		t.Fatal("Delete wrote the slot (write-behind did not defer it?)")
	}
	// Someone else's bytes in a slot between them: the flush must leave
	// them.
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
	if string(slot(ids[3])) != string(marker) {
		t.Fatal("the flush wrote a slot that was not pending")
	}
	if !isZero(slot(ids[6])) {
		t.Fatal("the flush did not write the deleted slot's zeros")
	}
	c := reopenCrashed(t, dir)
	for _, i := range []int{2, 4} {
		mustGet(t, c, recs[i])
	}
	if _, err := c.Get(ids[6]); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted %d after the crash: %v", ids[6], err)
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
// deletes, Flushes, Syncs and crashes on three stores — a persistent one
// with Options.WriteBehindRecords, one without, and the memory store as
// the oracle — which must agree call by call: what each call returns,
// then Get of a nodeid and ByIno of a key. Only ino numbers 2–65 are used,
// so inserts and key changes often meet a key another record has (host
// inode reuse), which checks the package doc's rule of which record ByIno
// answers. A crash (op 6 with an argument ≥ 128, and once at the end)
// Flushes the write-behind store, reopens both persistent stores from
// what a process killed then leaves (crashCopy, recovered by Open) and
// goes on with them: the rule must hold across it too. Then every nodeid
// and key is compared.
//
// The first byte picks the cache (bit 0: a tiny one, whose reads go to
// the pending buffer and the files, and whose ByIno always probes the
// index), bit 1 flips it at each crash, and bit 2 makes the store without
// write-behind write its index entries directly (noDefer). The disk stores
// skip nodeids after a crash and the memory store does not, so nodeids are
// compared through a map.
func FuzzWriteBehind(f *testing.F) {
	f.Add([]byte{0, 1, 0, 2, 0, 3, 2, 1, 5, 0, 4, 2, 3, 1, 5, 0})
	f.Add([]byte{1, 7, 1, 7, 2, 0, 4, 1, 0, 9, 3, 0, 5, 0, 2, 1, 6, 0})
	// A delete of the record that took a key over: the crash must not give
	// the key back to the older one (CI crasher of the old test).
	f.Add([]byte("1\a2\a00C100"))
	f.Add([]byte{0, 7, 1, 7, 4, 1, 6, 200, 0, 7})
	// An Update (rename) of the older record keeps the key with the newer.
	f.Add([]byte{0, 7, 1, 7, 2, 0, 0, 7, 6, 128, 0, 7})
	f.Add([]byte{1, 7, 1, 7, 2, 0, 0, 7, 6, 128, 0, 7})
	// Key changes onto a taken key and back, deletes, crashes.
	f.Add([]byte{6, 3, 1, 4, 3, 3, 3, 0, 4, 1, 6, 255, 0, 3, 0, 4, 3, 2, 6, 129})
	// An Insert takes the key of a record below the mark (Sync moved
	// it), its entry pending over the older one's; deleting it, then a
	// crash: the tombstone must have reached the file (deferTombLocked),
	// or the older record gets the key back. Then the key is reused.
	f.Add([]byte{8, 7, 6, 0, 1, 7, 4, 1, 6, 200, 0, 7})
	f.Add([]byte{1, 7, 6, 0, 1, 7, 4, 1, 6, 200, 0, 7})
	// The same with the newer record's entry in the file (a lost
	// tombstone leaves a dead entry).
	f.Add([]byte{8, 7, 6, 0, 1, 7, 6, 0, 4, 1, 5, 0, 6, 200, 0, 7, 4, 2, 6, 201, 0, 7})
	f.Fuzz(func(t *testing.T, ops []byte) {
		if len(ops) > 2000 {
			ops = ops[:2000]
		}
		var mode byte
		if len(ops) > 0 {
			mode = ops[0]
		}
		opts := Options{Logger: quietLogger()}
		if mode&1 != 0 {
			opts.CacheBytes = 1
		}
		wbOpts := opts
		wbOpts.WriteBehindRecords = true
		dir, mdir := t.TempDir(), t.TempDir()
		openBoth := func() (ds, m *diskStore) {
			t.Helper()
			var err error
			if ds, err = open(dir, wbOpts); err != nil {
				t.Fatal(err)
			}
			if m, err = open(mdir, opts); err != nil {
				ds.Close()
				t.Fatal(err)
			}
			m.noDefer = mode&4 != 0
			return ds, m
		}
		ds, m := openBoth()
		defer func() { ds.Close(); m.Close() }()
		mem := OpenMemory()
		defer mem.Close()
		crashes := 0
		crash := func() {
			t.Helper()
			if err := ds.Flush(); err != nil {
				t.Fatal(err)
			}
			ndir, nmdir := crashCopy(t, dir), crashCopy(t, mdir)
			abandon(ds)
			abandon(m)
			dir, mdir = ndir, nmdir
			if mode&2 != 0 {
				opts.CacheBytes ^= 1
				wbOpts.CacheBytes ^= 1
			}
			ds, m = openBoth()
		}

		var ids []NodeID             // the disk stores' nodeids
		memID := map[NodeID]NodeID{} // disk nodeid → memory nodeid
		keys := map[uint64]bool{}
		pick := func(b byte) (NodeID, bool) {
			if len(ids) == 0 {
				return 0, false
			}
			return ids[int(b)%len(ids)], true
		}
		// same checks that the two disk stores' answers a and b and the
		// memory store's o agree.
		same := func(what string, a, b, o Record, aerr, berr, oerr error) {
			t.Helper()
			agree := func(x Record, xerr error) bool {
				if (xerr == nil) != (oerr == nil) {
					return false
				}
				if xerr != nil {
					return errors.Is(xerr, ErrNotFound) == errors.Is(oerr, ErrNotFound)
				}
				y := x
				y.ID = memID[x.ID]
				return y.ID != 0 && sameRecord(y, o)
			}
			if !agree(a, aerr) || !agree(b, berr) {
				t.Fatalf("%s: write-behind %+v %v, without %+v %v, memory %+v %v (nodeids disk→memory %v)",
					what, a, aerr, b, berr, o, oerr, memID)
			}
		}
		check := func(when string, id NodeID, ino uint64) {
			t.Helper()
			if id != 0 {
				a, aerr := ds.Get(id)
				b, berr := m.Get(id)
				o, oerr := mem.Get(memID[id])
				same(fmt.Sprint(when, ": Get ", id), a, b, o, aerr, berr, oerr)
			}
			a, aerr := ds.ByIno(0, ino)
			b, berr := m.ByIno(0, ino)
			o, oerr := mem.ByIno(0, ino)
			same(fmt.Sprint(when, ": ByIno ", ino), a, b, o, aerr, berr, oerr)
		}
		for i := 0; i+1 < len(ops); i += 2 {
			op, arg := ops[i]%7, ops[i+1]
			ino := uint64(arg%64) + 2
			what := fmt.Sprintf("op %d (%d %d)", i/2, op, arg)
			switch op {
			case 0, 1: // LOOKUP of a file (long names: overflow slots)
				r := rec(0, ino, 1, fmt.Sprint("n", arg))
				if arg > 200 {
					r.Name = strings.Repeat("l", 220)
				}
				keys[ino] = true
				if op == 0 {
					// Half of them as the inode table records a node it
					// keeps (not put in the record cache).
					loi := func(s Store) (Record, bool, error) {
						if arg&64 != 0 {
							return s.LookupOrInsertHeld(r)
						}
						return s.LookupOrInsert(r)
					}
					a, ai, aerr := loi(ds)
					b, bi, berr := loi(m)
					o, oi, oerr := loi(mem)
					if ai != bi || ai != oi || aerr == nil && a.ID != b.ID {
						t.Fatalf("%s: LookupOrInsert: write-behind %d inserted %v, without %d %v, memory %d %v",
							what, a.ID, ai, b.ID, bi, o.ID, oi)
					}
					if ai {
						ids = append(ids, a.ID)
						memID[a.ID] = o.ID
					}
					same(what+": LookupOrInsert", a, b, o, aerr, berr, oerr)
				} else {
					a, aerr := ds.Insert(r)
					b, berr := m.Insert(r)
					o, oerr := mem.Insert(r)
					if aerr != nil || berr != nil || oerr != nil || a != b {
						t.Fatalf("%s: Insert: write-behind %d %v, without %d %v, memory %d %v", what, a, aerr, b, berr, o, oerr)
					}
					ids = append(ids, a)
					memID[a] = o
				}
			case 2, 3: // rename; host inode reuse (a new key)
				id, ok := pick(arg)
				if !ok {
					continue
				}
				r, err := mem.Get(memID[id])
				if err != nil {
					continue
				}
				r = cloneRecord(r)
				if op == 2 {
					r.Name = fmt.Sprint("r", i)
				} else {
					keys[r.Ino] = true
					r.Ino = ino
					keys[r.Ino] = true
				}
				oerr := mem.Update(r)
				r.ID = id
				aerr, berr := ds.Update(r), m.Update(r)
				if (aerr == nil) != (oerr == nil) || (berr == nil) != (oerr == nil) {
					t.Fatalf("%s: Update: write-behind %v, without %v, memory %v", what, aerr, berr, oerr)
				}
			case 4:
				id, ok := pick(arg)
				if !ok {
					continue
				}
				aerr, berr, oerr := ds.Delete(id), m.Delete(id), mem.Delete(memID[id])
				if (aerr == nil) != (oerr == nil) || (berr == nil) != (oerr == nil) {
					t.Fatalf("%s: Delete: write-behind %v, without %v, memory %v", what, aerr, berr, oerr)
				}
			case 5:
				if err := ds.Flush(); err != nil {
					t.Fatal(err)
				}
			case 6:
				// At most 8 crashes per input: each reopens three
				// stores (fdatasync), and an input slower than 10 s
				// counts as hung to the fuzzer.
				if arg >= 128 && crashes < 8 {
					crashes++
					crash()
					break
				}
				if err := ds.Sync(); err != nil {
					t.Fatal(err)
				}
			}
			id, _ := pick(arg)
			check(what, id, ino)
		}
		checkAll := func(when string) {
			t.Helper()
			for _, id := range ids {
				check(when, id, 2)
			}
			for ino := range keys {
				check(when, 0, ino)
			}
		}
		checkAll("at the end")
		crash()
		checkAll("after a crash at the end")
	})
}

// abandon releases s's files without writing or syncing anything, as a
// killed process would (Close syncs: too slow for a fuzz target that
// crashes often).
func abandon(s *diskStore) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	s.isClosed.Store(true)
	if s.wb != nil {
		s.wb.close()
	}
	s.closeFiles()
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

// Flushed records are stored through the window over the newest slots
// (which moves along as nodeids grow) and, for an older record, written
// with pwrite; all of it is in the file for a process that opens the
// store after this one died (the store is never closed here), and a
// delete's zeros too.
func TestWriteBehindWindow(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, Options{WriteBehindRecords: true})
	fl := s.(Flusher)
	var rs []Record
	for i := range 3000 { // three windows of 1024 slots
		r := rec(0, uint64(i+1), 1, fmt.Sprint("f", i))
		var err error
		if r.ID, err = s.Insert(r); err != nil {
			t.Fatal(err)
		}
		if err := fl.Flush(); err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r)
	}
	w := s.(*diskStore).wb
	w.mu.Lock()
	win, off := w.win, w.winOff
	w.mu.Unlock()
	if win == nil {
		t.Fatal("no window mapped on this filesystem: the test covers pwrite only")
	}
	if last := int64(rs[len(rs)-1].ID) * slotSize; last < off || last >= off+windowSize {
		t.Errorf("window at %d+%d does not hold the newest slot at %d", off, windowSize, last)
	}
	// Before the window: an Update written with pwrite; in it: a Delete.
	rs[0].Name = "renamed"
	if err := s.Update(rs[0]); err != nil {
		t.Fatal(err)
	}
	gone := rs[len(rs)-1]
	if err := s.Delete(gone.ID); err != nil {
		t.Fatal(err)
	}
	rs = rs[:len(rs)-1]
	if err := fl.Flush(); err != nil {
		t.Fatal(err)
	}
	abandon(s.(*diskStore)) // the process dies: no Sync, no Close
	s2 := openT(t, dir, Options{WriteBehindRecords: true})
	defer s2.Close()
	for _, r := range rs {
		mustGet(t, s2, r)
	}
	if r, err := s2.Get(gone.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleted nodeid %d: %+v, %v; want ErrNotFound", gone.ID, r, err)
	}
}
