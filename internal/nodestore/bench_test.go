package nodestore

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// benchN is the number of records the read benchmarks run against:
// NODESTORE_BENCH_N, default 1M.
func benchN() int {
	if n, err := strconv.Atoi(os.Getenv("NODESTORE_BENCH_N")); err == nil && n > 0 {
		return n
	}
	return 1_000_000
}

func benchRec(i int) Record {
	return Record{
		Mount: uint32(i % 4), Ino: uint64(i) * 7, Type: 0o100000, Parent: 1,
		Name: "some-file-name-" + strconv.Itoa(i) + ".txt", HandleType: 1,
		Handle: []byte("0123456789abcdef01234567"), // 24 bytes, like btrfs/xfs
	}
}

func fill(b *testing.B, s Store, n int) []NodeID {
	ids := make([]NodeID, n)
	for i := range n {
		var err error
		if ids[i], err = s.Insert(benchRec(i)); err != nil {
			b.Fatal(err)
		}
	}
	return ids
}

func benchStores(b *testing.B, f func(b *testing.B, s Store)) {
	b.Run("disk", func(b *testing.B) {
		s, err := Open(b.TempDir(), Options{Logger: quietLogger()})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		f(b, s)
	})
	b.Run("memory", func(b *testing.B) { f(b, OpenMemory()) })
}

// BenchmarkInsert measures Insert into a store that already holds benchN
// records (so index grows and a cold cache are part of the cost).
func BenchmarkInsert(b *testing.B) {
	benchStores(b, func(b *testing.B, s Store) {
		n := benchN()
		fill(b, s, n)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; b.Loop(); i++ {
			if _, err := s.Insert(benchRec(n + i)); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkGet reads random nodeids out of benchN: with 1M records and the
// default 8 MiB cache almost every Get is a pread plus a MAC check.
// "hot" reads 10k nodeids that fit the cache.
func BenchmarkGet(b *testing.B) {
	for _, ws := range []string{"cold", "hot"} {
		b.Run(ws, func(b *testing.B) {
			benchStores(b, func(b *testing.B, s Store) {
				ids := fill(b, s, benchN())
				span := len(ids)
				if ws == "hot" {
					span = min(span, 10_000)
				}
				rng := rand.New(rand.NewPCG(1, 2))
				b.ReportAllocs()
				b.ResetTimer()
				for b.Loop() {
					if _, err := s.Get(ids[rng.IntN(span)]); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}

// BenchmarkByIno looks up random (mount, ino) pairs out of benchN.
func BenchmarkByIno(b *testing.B) {
	for _, ws := range []string{"cold", "hot"} {
		b.Run(ws, func(b *testing.B) {
			benchStores(b, func(b *testing.B, s Store) {
				n := benchN()
				fill(b, s, n)
				span := n
				if ws == "hot" {
					span = min(span, 10_000)
				}
				rng := rand.New(rand.NewPCG(1, 2))
				b.ReportAllocs()
				b.ResetTimer()
				for b.Loop() {
					r := benchRec(rng.IntN(span))
					if _, err := s.ByIno(r.Mount, r.Ino); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}

// BenchmarkMAC is the cost of sealing or verifying one record slot.
func BenchmarkMAC(b *testing.B) {
	m := newMacer(make([]byte, 32), 42)
	var buf slotBuf
	r := benchRec(1)
	r.ID = 5
	m.encodeSlot(&buf, &r, 0)
	payload := buf.main[offInline : offInline+len(r.Name)+len(r.Handle)]
	b.ReportAllocs()
	for b.Loop() {
		var out [macLen]byte
		m.slotMAC(&out, buf.main[:], payload)
	}
}

func vmRSS() int64 {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			kb, _ := strconv.ParseInt(strings.Fields(l)[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

func diskUsage(dir string) (apparent, allocated int64) {
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			apparent += fi.Size()
			allocated += fi.Sys().(*syscall.Stat_t).Blocks * 512
		}
		return nil
	})
	return
}

// TestMemory1M inserts 1M records and reports RSS, heap and disk use. RSS
// must stay within 64 MiB of the empty store.
func TestMemory1M(t *testing.T) {
	n := benchN()
	dir := t.TempDir()
	s := openT(t, dir, Options{})
	defer s.Close()
	runtime.GC()
	debug.FreeOSMemory()
	base := vmRSS()
	for i := range n {
		if _, err := s.Insert(benchRec(i)); err != nil {
			t.Fatal(err)
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range n {
		r := benchRec(rng.IntN(n))
		if _, err := s.ByIno(r.Mount, r.Ino); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	peak := vmRSS()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	after := vmRSS()
	app, alloc := diskUsage(dir)
	ds := s.(*diskStore)
	recs, inos := ds.cache.len()
	t.Logf("%d records: RSS %.1f MiB → %.1f MiB (+%.1f MiB; %.1f MiB after FreeOSMemory); HeapInuse %.1f MiB, HeapSys %.1f MiB; cache %d records %d ino hints; index 2^%d buckets, mirror %.1f MiB; disk %.1f MiB apparent, %.1f MiB allocated",
		n, mib(base), mib(peak), mib(peak-base), mib(after), mib(int64(ms.HeapInuse)), mib(int64(ms.HeapSys)), recs, inos, ds.ix.bits, mib(int64(len(ds.ix.fp))), mib(app), mib(alloc))
	if peak-base > 64<<20 {
		t.Fatalf("RSS grew by %.1f MiB", mib(peak-base))
	}
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

var _ = fmt.Sprint
