package passthrough

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
	"unsafe"

	"github.com/govirtiofsd/govirtiofsd/internal/engine"
	"github.com/govirtiofsd/govirtiofsd/internal/inode"
	"github.com/govirtiofsd/govirtiofsd/internal/nodestore"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// The benchmarks below are the file-system side of one FUSE request: the
// request bytes go through the engine (go-fuse's ProtocolServer, as the
// vhost-user and /dev/fuse transports feed it) into FS, over a directory on
// tmpfs, with the node table in memory (nodestore.OpenMemory), so they
// measure this package and internal/inode: CPU, allocations and syscalls
// per op. Requests come from uid/gid 0, the daemon's own, like a guest's
// root. Count syscalls with
//
//	go test -c -o /tmp/pt.test ./internal/passthrough
//	strace -f -c /tmp/pt.test -test.run '^$' -test.bench 'BenchmarkOp/getattr-cached$' -test.benchtime 10000x
//
// and divide by N (the setup's few hundred syscalls aside).
//
// Syscalls per op (strace, Go runtime's futex/nanosleep left out; before =
// commit 5238231, after = the changes of issue #5):
//
//	op                     before                               after
//	getattr (cached fd)    statx                                statx
//	getattr (no fd)        statx by name                        statx by name
//	lookup, cached node    openat, statx, close                 statx by name
//	lookup, new file       openat, statx (+ close of an         statx by name, openat, statx;
//	                       evicted fd once the cache is full)   statx by name once it is full
//	create+release+unlink  openat, openat, statx, close,        openat, statx, close,
//	                       statx, unlinkat, close               statx, unlinkat
//	mkdir+rmdir            mkdirat, openat, statx, statx,       the same
//	                       unlinkat, close
//	open+release           openat (/proc/self/fd), close        the same
//	read 4 KiB / write     preadv / pwritev                     the same
//	readdirplus 1000       openat, 3 getdents64, 1042 statx,    1001 statx
//	                       close (4 KiB replies)

const (
	opRmdir       = 11
	opOpendir     = 27
	opReleasedir  = 29
	opReaddirplus = 44
)

// cpuClock reports the process's CPU time (user + system, all threads) per
// op as "cpu-ns/op": on a shared machine it varies far less than the wall
// time, and it is what bounds a transport's single-threaded request loop.
type cpuClock struct {
	b     *testing.B
	start time.Duration
}

func processCPU() time.Duration {
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// startCPU resets the benchmark timer and starts the CPU clock.
func startCPU(b *testing.B) *cpuClock {
	b.ReportAllocs()
	b.ResetTimer()
	return &cpuClock{b: b, start: processCPU()}
}

func (c *cpuClock) stop() {
	c.b.StopTimer()
	c.b.ReportMetric(float64(processCPU()-c.start)/float64(c.b.N), "cpu-ns/op")
}

// benchServer drives an FS with prebuilt requests and one reply buffer.
type benchServer struct {
	b      *testing.B
	dir    string
	eng    *engine.Engine
	table  *inode.Table
	unique uint64
	out    []byte
}

// benchDir is a fresh directory on tmpfs (the host filesystem's own cost
// is not what these benchmarks look at).
func benchDir(b *testing.B) string {
	dir, err := os.MkdirTemp("/dev/shm", "govirtiofsd-bench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func newBenchServer(b *testing.B) *benchServer {
	b.Helper()
	dir := benchDir(b)
	table, err := inode.New(dir, nodestore.OpenMemory(), inode.Options{MaxOpenFDs: 1024})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { table.Close() })
	fsys := New(table, Options{Cache: CacheAuto, AnnounceSubmounts: true})
	s := &benchServer{b: b, dir: dir, eng: engine.New(fsys, engine.Options{}), table: table, out: make([]byte, 1<<20+4096)}
	in := fuse.InitIn{Major: 7, Minor: 31, MaxReadAhead: 1 << 20, Flags: fuse.CAP_EXPORT_SUPPORT | fuse.CAP_READDIRPLUS}
	if st, _ := s.do(s.req(opInit, 0, structBytes(&in)[unsafe.Sizeof(fuse.InHeader{}):])); st != 0 {
		b.Fatalf("INIT: status %d", st)
	}
	return s
}

// req builds a request; do stamps a fresh unique on it.
func (s *benchServer) req(op uint32, nodeid uint64, body ...[]byte) []byte {
	h := fuse.InHeader{Opcode: op, NodeId: nodeid}
	r := structBytes(&h)
	for _, b := range body {
		r = append(r, b...)
	}
	binary.LittleEndian.PutUint32(r, uint32(len(r)))
	return r
}

func inBody[T any](v *T) []byte { return structBytes(v)[unsafe.Sizeof(fuse.InHeader{}):] }

// do sends one request and returns the reply's errno (positive) and payload.
func (s *benchServer) do(req []byte) (int32, []byte) {
	s.unique++
	binary.LittleEndian.PutUint64(req[8:], s.unique)
	n, st := s.eng.HandleRequest([][]byte{req}, [][]byte{s.out})
	if !st.Ok() {
		return int32(st), nil
	}
	if n == 0 {
		return 0, nil
	}
	return -int32(binary.LittleEndian.Uint32(s.out[4:])), s.out[16:n]
}

// must is do for requests that have to succeed.
func (s *benchServer) must(req []byte) []byte {
	st, out := s.do(req)
	if st != 0 {
		s.b.Fatalf("op %d: errno %d", binary.LittleEndian.Uint32(req[4:]), st)
	}
	return out
}

func (s *benchServer) lookup(parent uint64, n string) uint64 {
	out := s.must(s.req(opLookup, parent, name(n)))
	return (*fuse.EntryOut)(unsafe.Pointer(&out[0])).NodeId
}

func (s *benchServer) open(nodeid uint64, flags uint32) uint64 {
	in := fuse.OpenIn{Flags: flags}
	out := s.must(s.req(opOpen, nodeid, inBody(&in)))
	return (*fuse.OpenOut)(unsafe.Pointer(&out[0])).Fh
}

func (s *benchServer) file(n string, size int) {
	if err := os.WriteFile(filepath.Join(s.dir, n), make([]byte, size), 0o644); err != nil {
		s.b.Fatal(err)
	}
}

func BenchmarkOp(b *testing.B) {
	b.Run("getattr-cached", func(b *testing.B) {
		s := newBenchServer(b)
		s.file("f", 0)
		id := s.lookup(1, "f")
		in := fuse.GetAttrIn{}
		r := s.req(opGetattr, id, inBody(&in))
		defer startCPU(b).stop()
		for range b.N {
			s.must(r)
		}
	})
	b.Run("getattr-uncached", func(b *testing.B) {
		// A node recorded by READDIRPLUS (no fd): the fd cache does not
		// hold it.
		s := newBenchServer(b)
		s.file("f", 0)
		root := s.table.Root()
		var sx unix.Statx_t
		e, err := s.table.LookupStat(root, "f", &sx)
		root.Release()
		if err != nil {
			b.Fatal(err)
		}
		in := fuse.GetAttrIn{}
		r := s.req(opGetattr, uint64(e.ID), inBody(&in))
		defer startCPU(b).stop()
		for range b.N {
			s.must(r)
		}
	})
	b.Run("lookup-warm", func(b *testing.B) {
		s := newBenchServer(b)
		s.file("f", 0)
		s.lookup(1, "f")
		r := s.req(opLookup, 1, name("f"))
		defer startCPU(b).stop()
		for range b.N {
			s.must(r)
		}
	})
	b.Run("lookup-new", func(b *testing.B) {
		s := newBenchServer(b)
		reqs := make([][]byte, b.N)
		for i := range b.N {
			n := fmt.Sprintf("f%d", i)
			s.file(n, 0)
			reqs[i] = s.req(opLookup, 1, name(n))
		}
		defer startCPU(b).stop()
		for i := range b.N {
			s.must(reqs[i])
		}
	})
	b.Run("create-release-unlink", func(b *testing.B) {
		s := newBenchServer(b)
		cin := fuse.CreateIn{Flags: unix.O_RDWR | unix.O_CREAT | unix.O_EXCL, Mode: unix.S_IFREG | 0o644}
		create := s.req(opCreate, 1, inBody(&cin), name("c"))
		rin := fuse.ReleaseIn{Flags: unix.O_RDWR}
		release := s.req(opRelease, 0, inBody(&rin))
		unlink := s.req(opUnlink, 1, name("c"))
		defer startCPU(b).stop()
		for range b.N {
			out := s.must(create)
			co := (*fuse.CreateOut)(unsafe.Pointer(&out[0]))
			binary.LittleEndian.PutUint64(release[16:], co.NodeId)
			(*fuse.ReleaseIn)(unsafe.Pointer(&release[0])).Fh = co.Fh
			s.must(release)
			s.must(unlink)
		}
	})
	b.Run("mkdir-rmdir", func(b *testing.B) {
		s := newBenchServer(b)
		min := fuse.MkdirIn{Mode: 0o755}
		mkdir := s.req(opMkdir, 1, inBody(&min), name("d"))
		rmdir := s.req(opRmdir, 1, name("d"))
		defer startCPU(b).stop()
		for range b.N {
			s.must(mkdir)
			s.must(rmdir)
		}
	})
	b.Run("open-release", func(b *testing.B) {
		s := newBenchServer(b)
		s.file("f", 4096)
		id := s.lookup(1, "f")
		oin := fuse.OpenIn{Flags: unix.O_RDONLY}
		open := s.req(opOpen, id, inBody(&oin))
		rin := fuse.ReleaseIn{}
		release := s.req(opRelease, id, inBody(&rin))
		defer startCPU(b).stop()
		for range b.N {
			out := s.must(open)
			(*fuse.ReleaseIn)(unsafe.Pointer(&release[0])).Fh = (*fuse.OpenOut)(unsafe.Pointer(&out[0])).Fh
			s.must(release)
		}
	})
	b.Run("read-4k", func(b *testing.B) {
		s := newBenchServer(b)
		s.file("f", 1<<20)
		id := s.lookup(1, "f")
		fh := s.open(id, unix.O_RDONLY)
		in := fuse.ReadIn{Fh: fh, Size: 4096}
		r := s.req(opRead, id, inBody(&in))
		b.SetBytes(4096)
		defer startCPU(b).stop()
		for i := range b.N {
			(*fuse.ReadIn)(unsafe.Pointer(&r[0])).Offset = uint64(i%256) * 4096
			if out := s.must(r); len(out) != 4096 {
				b.Fatalf("READ: %d bytes", len(out))
			}
		}
	})
	b.Run("write-4k", func(b *testing.B) {
		s := newBenchServer(b)
		s.file("f", 0)
		id := s.lookup(1, "f")
		fh := s.open(id, unix.O_RDWR)
		in := fuse.WriteIn{Fh: fh, Size: 4096}
		r := s.req(opWrite, id, inBody(&in), make([]byte, 4096))
		b.SetBytes(4096)
		defer startCPU(b).stop()
		for i := range b.N {
			(*fuse.WriteIn)(unsafe.Pointer(&r[0])).Offset = uint64(i%256) * 4096
			s.must(r)
		}
	})
	b.Run("readdirplus-1000", func(b *testing.B) {
		// One op is a whole listing: OPENDIR, READDIRPLUS in 4 KiB
		// replies (the guest kernel's page-sized buffer) until the end,
		// RELEASEDIR. The entries are known to the node table after the
		// first round, as after a guest's first ls.
		s := newBenchServer(b)
		sub := filepath.Join(s.dir, "d")
		if err := os.Mkdir(sub, 0o755); err != nil {
			b.Fatal(err)
		}
		for i := range 1000 {
			if err := os.WriteFile(filepath.Join(sub, fmt.Sprintf("file-%04d", i)), nil, 0o644); err != nil {
				b.Fatal(err)
			}
		}
		id := s.lookup(1, "d")
		oin := fuse.OpenIn{Flags: unix.O_RDONLY | unix.O_DIRECTORY}
		opendir := s.req(opOpendir, id, inBody(&oin))
		rdin := fuse.ReadIn{Size: 4096}
		readdir := s.req(opReaddirplus, id, inBody(&rdin))
		relin := fuse.ReleaseIn{}
		releasedir := s.req(opReleasedir, id, inBody(&relin))
		list := func() int {
			out := s.must(opendir)
			fh := (*fuse.OpenOut)(unsafe.Pointer(&out[0])).Fh
			rd := (*fuse.ReadIn)(unsafe.Pointer(&readdir[0]))
			rd.Fh, rd.Offset = fh, 0
			entries := 0
			for {
				out := s.must(readdir)
				if len(out) == 0 {
					break
				}
				for len(out) > 0 {
					// fuse_direntplus: entry_out, then ino, off,
					// namelen, type, name (padded to 8).
					d := out[unsafe.Sizeof(fuse.EntryOut{}):]
					rd.Offset = binary.LittleEndian.Uint64(d[8:])
					namelen := int(binary.LittleEndian.Uint32(d[16:]))
					size := int(unsafe.Sizeof(fuse.EntryOut{})) + (24+namelen+7)&^7
					out = out[size:]
					entries++
				}
			}
			(*fuse.ReleaseIn)(unsafe.Pointer(&releasedir[0])).Fh = fh
			s.must(releasedir)
			return entries
		}
		if n := list(); n != 1002 {
			b.Fatalf("listed %d entries, want 1002", n)
		}
		defer startCPU(b).stop()
		for range b.N {
			list()
		}
	})
}
