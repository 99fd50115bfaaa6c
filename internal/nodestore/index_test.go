package nodestore

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

func tempIndex(t *testing.T, bits uint) *index {
	f, err := os.Create(filepath.Join(t.TempDir(), "ix"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(int64(1<<bits) * entrySize); err != nil {
		t.Fatal(err)
	}
	return &index{fd: int(f.Fd()), bits: bits}
}

// indexHas reports whether (h, id) is reachable by probing.
func indexHas(t *testing.T, ix *index, h, id uint64) bool {
	_, found, err := ix.probe(h, func(_, eh, eid uint64) bool { return eh == h && eid == id })
	if err != nil {
		t.Fatal(err)
	}
	return found
}

func indexAdd(t *testing.T, ix *index, h, id uint64) {
	pos, _, err := ix.probe(h, func(_, _, eid uint64) bool { return eid == tombID })
	if err != nil {
		t.Fatal(err)
	}
	if err := ix.write(pos, h, id); err != nil {
		t.Fatal(err)
	}
}

// TestRehash fills small tables (with clusters wrapping around the end and
// tombstones) and checks that the streaming rehash keeps every live entry
// reachable, into a table of the same size and into larger ones.
func TestRehash(t *testing.T) {
	seeds := uint64(20)
	if testing.Short() {
		seeds = 4
	}
	for seed := uint64(0); seed < seeds; seed++ {
		rng := rand.New(rand.NewPCG(seed, 99))
		src := tempIndex(t, minIndexBits)
		n := src.size() * 7 / 10
		type kv struct{ h, id uint64 }
		var live, dead []kv
		for i := uint64(1); i <= n; i++ {
			h := rng.Uint64()
			if i%10 == 0 {
				h = ^uint64(0) - rng.Uint64N(1<<50) // crowd the end: wrap-around clusters
			}
			indexAdd(t, src, h, i)
			if rng.IntN(5) == 0 {
				dead = append(dead, kv{h, i})
			} else {
				live = append(live, kv{h, i})
			}
		}
		for _, e := range dead {
			pos, found, _ := src.probe(e.h, func(_, eh, eid uint64) bool { return eh == e.h && eid == e.id })
			if !found {
				t.Fatal("entry lost before rehash")
			}
			src.write(pos, e.h, tombID)
		}
		for _, shift := range []uint{0, 1, 2} {
			dst := tempIndex(t, src.bits+shift)
			if err := src.rehashInto(dst); err != nil {
				t.Fatalf("seed %d shift %d: %v", seed, shift, err)
			}
			if dst.live != uint64(len(live)) {
				t.Fatalf("seed %d shift %d: live %d want %d", seed, shift, dst.live, len(live))
			}
			for _, e := range live {
				if !indexHas(t, dst, e.h, e.id) {
					t.Fatalf("seed %d shift %d: entry %x→%d lost", seed, shift, e.h, e.id)
				}
			}
			for _, e := range dead {
				if indexHas(t, dst, e.h, e.id) {
					t.Fatalf("seed %d shift %d: deleted entry survived", seed, shift)
				}
			}
			if err := dst.count(); err != nil || dst.tombs != 0 || dst.live != uint64(len(live)) {
				t.Fatalf("count: %v live %d tombs %d", err, dst.live, dst.tombs)
			}
		}
	}
}
