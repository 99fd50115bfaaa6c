package nodestore

import (
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The per-request costs the daemon pays on top of --state-dir=none (issue
// #5): each benchmark runs on a store in a fresh directory of the
// filesystem the daemon's state lives on (/var/tmp, or
// NODESTORE_BENCH_DIR), on tmpfs (/dev/shm), and in memory. The store is
// new for every run, like a daemon's state directory on its first start,
// so first writes (block allocation, index growth) are part of the cost.
//
//	go test -run X -bench 'New|Churn|Small' -count 5 ./internal/nodestore/

type benchFS struct{ name, dir string }

func benchFSes() []benchFS {
	disk := os.Getenv("NODESTORE_BENCH_DIR")
	if disk == "" {
		disk = "/var/tmp"
	}
	fses := []benchFS{{fsName(disk), disk}}
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		fses = append(fses, benchFS{"tmpfs", "/dev/shm"})
	}
	return append(fses, benchFS{"memory", ""})
}

func fsName(dir string) string {
	var st unix.Statfs_t
	if unix.Statfs(dir, &st) != nil {
		return "disk"
	}
	switch st.Type {
	case unix.EXT4_SUPER_MAGIC:
		return "ext4"
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	}
	return "disk"
}

// onFreshStores runs f on a new store per filesystem.
func onFreshStores(b *testing.B, f func(b *testing.B, s Store)) {
	onFreshStoresOpts(b, Options{}, f)
}

// onFreshStoresOpts is onFreshStores with opts (Logger is set).
func onFreshStoresOpts(b *testing.B, opts Options, f func(b *testing.B, s Store)) {
	opts.Logger = quietLogger()
	for _, fs := range benchFSes() {
		b.Run(fs.name, func(b *testing.B) {
			var s Store = OpenMemory()
			if fs.dir != "" {
				dir, err := os.MkdirTemp(fs.dir, "nodestore-bench-")
				if err != nil {
					b.Fatal(err)
				}
				defer os.RemoveAll(dir)
				if s, err = Open(dir, opts); err != nil {
					b.Fatal(err)
				}
			}
			defer s.Close()
			if _, err := s.Insert(Record{Mount: 0, Ino: 1 << 40, Type: 0o40000}); err != nil {
				b.Fatal(err) // the root, synced
			}
			b.ReportAllocs()
			b.ResetTimer()
			cpuStart = cpuTime()
			f(b, s)
			// CPU time (user + system, all threads) per op: steadier
			// than wall time on a shared machine.
			b.ReportMetric(float64(cpuTime()-cpuStart)/float64(b.N), "cpu-ns/op")
		})
	}
}

// BenchmarkLookupOrInsertNew is the store's part of a LOOKUP of a file the
// daemon has never seen: LookupOrInsert of a new (mount, ino).
func BenchmarkLookupOrInsertNew(b *testing.B) {
	onFreshStores(b, func(b *testing.B, s Store) {
		for i := 0; b.Loop(); i++ {
			if _, ins, err := s.LookupOrInsert(benchRec(i)); err != nil || !ins {
				b.Fatal(err, ins)
			}
		}
	})
}

// BenchmarkLookupOrInsertHeldNew is BenchmarkLookupOrInsertNew as the
// inode table runs it for a node it keeps in its fd cache: the record
// cache is not filled.
func BenchmarkLookupOrInsertHeldNew(b *testing.B) {
	onFreshStores(b, func(b *testing.B, s Store) {
		for i := 0; b.Loop(); i++ {
			if _, ins, err := s.LookupOrInsertHeld(benchRec(i)); err != nil || !ins {
				b.Fatal(err, ins)
			}
		}
	})
}

// BenchmarkInsertNew is Insert of new records into a fresh store.
func BenchmarkInsertNew(b *testing.B) {
	onFreshStores(b, func(b *testing.B, s Store) {
		for i := 0; b.Loop(); i++ {
			if _, err := s.Insert(benchRec(i)); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkChurn is CREATE + UNLINK: LookupOrInsert of a new file, then
// Delete of its record.
func BenchmarkChurn(b *testing.B) {
	onFreshStores(b, func(b *testing.B, s Store) {
		for i := 0; b.Loop(); i++ {
			r, _, err := s.LookupOrInsert(benchRec(i))
			if err != nil {
				b.Fatal(err)
			}
			if err := s.Delete(r.ID); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkChurnFlush is BenchmarkChurn as the daemon runs it with
// Options.WriteBehindRecords: a CREATE (LookupOrInsert, then Flush before
// its reply) and an UNLINK (Delete, then Flush).
func BenchmarkChurnFlush(b *testing.B) {
	onFreshStoresOpts(b, Options{WriteBehindRecords: true}, func(b *testing.B, s Store) {
		fl := s.(Flusher)
		for i := 0; b.Loop(); i++ {
			r, _, err := s.LookupOrInsert(benchRec(i))
			if err != nil {
				b.Fatal(err)
			}
			if err := fl.Flush(); err != nil {
				b.Fatal(err)
			}
			if err := s.Delete(r.ID); err != nil {
				b.Fatal(err)
			}
			if err := fl.Flush(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// smallN is the size of the store the Small read benchmarks use: a
// directory tree the cache does not hold (8 MiB cache ≈ 30k records).
const smallN = 100_000

func smallFill(b *testing.B, s Store) []NodeID {
	b.StopTimer()
	defer func() { cpuStart = cpuTime(); b.StartTimer() }()
	return fill(b, s, smallN)
}

// cpuStart is the process CPU time when the measured part began.
var cpuStart int64

func cpuTime() int64 {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// BenchmarkSmallGet reads random nodeids out of smallN records.
func BenchmarkSmallGet(b *testing.B) {
	onFreshStores(b, func(b *testing.B, s Store) {
		ids := smallFill(b, s)
		for i := 0; b.Loop(); i++ {
			if _, err := s.Get(ids[(i*7919)%len(ids)]); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkSmallByInoHit and Miss look up (mount, ino) pairs among smallN
// records: present ones, and ones never inserted (a LOOKUP of a new file
// with --inode-file-handles=prefer starts with one).
func BenchmarkSmallByInoHit(b *testing.B) {
	onFreshStores(b, func(b *testing.B, s Store) {
		smallFill(b, s)
		for i := 0; b.Loop(); i++ {
			r := benchRec((i * 7919) % smallN)
			if _, err := s.ByIno(r.Mount, r.Ino); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkSmallByInoMiss(b *testing.B) {
	onFreshStores(b, func(b *testing.B, s Store) {
		smallFill(b, s)
		for i := 0; b.Loop(); i++ {
			r := benchRec(smallN + i)
			if _, err := s.ByIno(r.Mount, r.Ino); err == nil {
				b.Fatal("found")
			}
		}
	})
}

// BenchmarkLookupOrInsertCold is BenchmarkLookupOrInsertNew after the host
// dropped the clean pages of the state files, as the cold bench rows do
// (drop_caches after the daemon started): the fresh store's files were
// synced at Open and when the root was inserted, so a write to one of
// their pages that is not resident any more may have to read it first.
func BenchmarkLookupOrInsertCold(b *testing.B) {
	onFreshStores(b, func(b *testing.B, s Store) {
		if ds, ok := s.(*diskStore); ok {
			b.StopTimer()
			for _, fd := range []int{ds.recFD, ds.extFD, ds.ix.fd, int(ds.metaF.Fd())} {
				unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED)
			}
			cpuStart = cpuTime()
			b.StartTimer()
		}
		for i := 0; b.Loop(); i++ {
			if _, ins, err := s.LookupOrInsert(benchRec(i)); err != nil || !ins {
				b.Fatal(err, ins)
			}
		}
	})
}

// readdirplusNodes is the number of new nodes a BenchmarkReaddirplusNew
// "request" records: a cold directory's READDIRPLUS replies, or a chunk of
// a cold `ls -l` of 10k files.
const readdirplusNodes = 1000

// BenchmarkReaddirplusNew is one request that records readdirplusNodes new
// nodes (LookupOrInsert of new (mount, ino)s) and then Flushes before its
// reply, as the daemon does: "off" writes each record when it is stored,
// "writebehind" (Options.WriteBehindRecords) one pwrite per run of
// consecutive nodeids at the Flush or when 256 are pending. One op is the
// whole request; cpu-ns/node is the CPU time per new node.
func BenchmarkReaddirplusNew(b *testing.B) {
	for _, wb := range []bool{false, true} {
		name := "off"
		if wb {
			name = "writebehind"
		}
		b.Run(name, func(b *testing.B) {
			onFreshStoresOpts(b, Options{WriteBehindRecords: wb}, func(b *testing.B, s Store) {
				fl, _ := s.(Flusher)
				for i := 0; b.Loop(); i++ {
					for j := range readdirplusNodes {
						if _, ins, err := s.LookupOrInsert(benchRec(i*readdirplusNodes + j)); err != nil || !ins {
							b.Fatal(err, ins)
						}
					}
					if fl != nil {
						if err := fl.Flush(); err != nil {
							b.Fatal(err)
						}
					}
				}
				b.ReportMetric(float64(cpuTime()-cpuStart)/float64(b.N*readdirplusNodes), "cpu-ns/node")
			})
		})
	}
}

// BenchmarkLookupNewFlush is a LOOKUP of a new file as the daemon runs it
// with Options.WriteBehindRecords: LookupOrInsert, then Flush before the
// reply (one pwrite of one slot, as without the option).
func BenchmarkLookupNewFlush(b *testing.B) {
	onFreshStoresOpts(b, Options{WriteBehindRecords: true}, func(b *testing.B, s Store) {
		fl := s.(Flusher)
		for i := 0; b.Loop(); i++ {
			if _, ins, err := s.LookupOrInsert(benchRec(i)); err != nil || !ins {
				b.Fatal(err, ins)
			}
			if err := fl.Flush(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkFlushPending times the index's write-behind flush: 4096 pending
// entries of new records written to the file (µs/flush; ns/op is the
// whole insert, the flush included).
func BenchmarkFlushPending(b *testing.B) {
	dir := b.TempDir()
	s, err := open(dir, Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	var total time.Duration
	flushes := 0
	for i := 0; b.Loop(); i++ {
		s.mu.Lock()
		full := len(s.ix.pend) >= pendMax-1
		s.mu.Unlock()
		if full {
			s.mu.Lock()
			t0 := time.Now()
			if err := s.ix.flushPending(); err != nil {
				b.Fatal(err)
			}
			total += time.Since(t0)
			flushes++
			s.mu.Unlock()
		}
		if _, _, err := s.LookupOrInsertHeld(benchRec(i)); err != nil {
			b.Fatal(err)
		}
	}
	if flushes > 0 {
		b.ReportMetric(float64(total.Microseconds())/float64(flushes), "µs/flush")
	}
}
