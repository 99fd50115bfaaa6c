package bench

import (
	"context"
	le "encoding/binary"
	"fmt"
	"math/rand/v2"
	"syscall"
	"time"
	"unsafe"

	"github.com/govirtiofsd/govirtiofsd/internal/vhostfront"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// More vhost-user rows: CREATE+RELEASE+UNLINK, MKDIR+RMDIR, READDIRPLUS,
// READ and WRITE. Requests are built from go-fuse's wire structs and sent
// with Frontend.FUSE on the first request queue.

// FUSE opcodes vhostfront does not name.
const (
	opUnlink     = 10
	opMkdir      = 9
	opRmdir      = 11
	opWrite      = 16
	opFsync      = 20
	opCreate     = 35
	opReleasedir = vhostfront.OpReleasedir
)

// vhostInitFlags are sent in FUSE_INIT: what a Linux guest asks for that
// matters to these rows (large requests, READDIRPLUS, parallel dirops).
const vhostInitFlags = fuse.CAP_ASYNC_READ | fuse.CAP_BIG_WRITES | fuse.CAP_READDIRPLUS |
	fuse.CAP_PARALLEL_DIROPS | fuse.CAP_MAX_PAGES | fuse.CAP_AUTO_INVAL_DATA

// argOf views the part of a go-fuse "…In" struct after its InHeader.
func argOf[T any](p *T) []byte {
	b := unsafe.Slice((*byte)(unsafe.Pointer(p)), unsafe.Sizeof(*p))
	return b[unsafe.Sizeof(fuse.InHeader{}):]
}

// decodeInto copies a reply body into a wire struct.
func decodeInto[T any](body []byte, v *T) error {
	b := unsafe.Slice((*byte)(unsafe.Pointer(v)), unsafe.Sizeof(*v))
	if len(body) < len(b) {
		return fmt.Errorf("reply body of %d bytes, want %d", len(body), len(b))
	}
	copy(b, body)
	return nil
}

// call sends one request on the first request queue and turns a FUSE error
// status into an error.
func call(f *vhostfront.Frontend, what string, op uint32, node uint64, arg, payload []byte, outLen int) ([]byte, error) {
	return callQ(f, vhostfront.RequestQueue, what, op, node, arg, payload, outLen)
}

// callQ is call on queue qi.
func callQ(f *vhostfront.Frontend, qi int, what string, op uint32, node uint64, arg, payload []byte, outLen int) ([]byte, error) {
	r, err := f.FUSE(qi, op, node, arg, payload, outLen)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if st := r.Status(); !st.Ok() {
		return nil, fmt.Errorf("%s: %v", what, st)
	}
	return r.Body, nil
}

func cstr(s string) []byte { return append([]byte(s), 0) }

// queue is the request queue of the job's request i: requests are spread
// round-robin over the request queues the front-end set up.
func (e *Env) queue(i int) int {
	n := 1
	if e.inst != nil && e.inst.queues > 1 {
		n = e.inst.queues
	}
	return vhostfront.RequestQueue + i%n
}

func lookupQ(f *vhostfront.Frontend, qi int, parent uint64, name string) (*fuse.EntryOut, error) {
	body, err := callQ(f, qi, "LOOKUP "+name, vhostfront.OpLookup, parent, nil, cstr(name), int(unsafe.Sizeof(fuse.EntryOut{})))
	if err != nil {
		return nil, err
	}
	var out fuse.EntryOut
	return &out, decodeInto(body, &out)
}

func getattrQ(f *vhostfront.Frontend, qi int, node uint64) (*fuse.AttrOut, error) {
	var in fuse.GetAttrIn
	body, err := callQ(f, qi, fmt.Sprintf("GETATTR %d", node), vhostfront.OpGetattr, node, argOf(&in), nil, int(unsafe.Sizeof(fuse.AttrOut{})))
	if err != nil {
		return nil, err
	}
	var out fuse.AttrOut
	return &out, decodeInto(body, &out)
}

func lookupPath(f *vhostfront.Frontend, names ...string) (uint64, error) {
	node := uint64(fuse.FUSE_ROOT_ID)
	for _, n := range names {
		ent, st, err := f.Lookup(node, n)
		if err != nil {
			return 0, err
		}
		if !st.Ok() {
			return 0, fmt.Errorf("LOOKUP %s: %v", n, st)
		}
		node = ent.NodeId
	}
	return node, nil
}

func openFile(f *vhostfront.Frontend, node uint64, flags uint32) (uint64, error) {
	in := fuse.OpenIn{Flags: flags}
	body, err := call(f, "OPEN", vhostfront.OpOpen, node, argOf(&in), nil, int(unsafe.Sizeof(fuse.OpenOut{})))
	if err != nil {
		return 0, err
	}
	var out fuse.OpenOut
	return out.Fh, decodeInto(body, &out)
}

func release(f *vhostfront.Frontend, op uint32, node, fh uint64) error {
	in := fuse.ReleaseIn{Fh: fh}
	_, err := call(f, "RELEASE", op, node, argOf(&in), nil, 0)
	return err
}

// vhostCreateJob: per op CREATE, RELEASE and UNLINK of a new file (and a
// FORGET of its nodeid), then per op MKDIR and RMDIR (and FORGET).
func vhostCreateJob(cfg *Config, depth, nq int) *job {
	n := count(cfg.Files)
	s := vsuf(nq, depth)
	qd := queuesDesc(nq)
	return &job{
		name: "vhost-create" + s, parts: partCreate, transports: []Transport{Vhost}, queues: nq,
		cleanup: func(shared string) error { return emptyDir(shared + "/create") },
		rows: keepRows([]Row{
			{Name: "vhost-create-unlink" + s, Unit: "files/s", HigherBetter: true,
				Desc: fmt.Sprintf("CREATE+RELEASE+UNLINK (+FORGET) of %s files, %d in flight%s", n, depth, qd)},
			{Name: "vhost-mkdir-rmdir" + s, Unit: "dirs/s", HigherBetter: true,
				Desc: fmt.Sprintf("MKDIR+RMDIR (+FORGET) of %s directories, %d in flight%s", n, depth, qd)},
		}, nq, "vhost-create-unlink"+s),
		run: func(ctx context.Context, e *Env) (map[string]float64, error) {
			f := e.front
			dir, err := lookupPath(f, "create")
			if err != nil {
				return nil, err
			}
			cnt := e.Cfg.Files
			m := e.cpuStart()
			_, el, err := drive(ctx, depth, cnt, func(i int) error {
				name := cstr(statName(i))
				q := e.queue(i)
				in := fuse.CreateIn{Flags: syscall.O_CREAT | syscall.O_EXCL | syscall.O_WRONLY, Mode: syscall.S_IFREG | 0o644}
				body, err := callQ(f, q, "CREATE", opCreate, dir, argOf(&in), name, int(unsafe.Sizeof(fuse.CreateOut{})))
				if err != nil {
					return err
				}
				var out fuse.CreateOut
				if err := decodeInto(body, &out); err != nil {
					return err
				}
				rin := fuse.ReleaseIn{Fh: out.Fh}
				if _, err := callQ(f, q, "RELEASE", vhostfront.OpRelease, out.NodeId, argOf(&rin), nil, 0); err != nil {
					return err
				}
				if _, err := callQ(f, q, "UNLINK", opUnlink, dir, nil, name, 0); err != nil {
					return err
				}
				return f.Forget(out.NodeId, 1)
			})
			if err != nil {
				return nil, err
			}
			e.cpuOps("vhost-create-unlink"+s, m, float64(cnt), "file")
			res := map[string]float64{"vhost-create-unlink" + s: float64(cnt) / el.Seconds()}
			if !e.want("vhost-mkdir-rmdir" + s) {
				return res, nil
			}
			m = e.cpuStart()
			_, el, err = drive(ctx, depth, cnt, func(i int) error {
				name := cstr(statName(i))
				in := fuse.MkdirIn{Mode: 0o755}
				body, err := call(f, "MKDIR", opMkdir, dir, argOf(&in), name, int(unsafe.Sizeof(fuse.EntryOut{})))
				if err != nil {
					return err
				}
				var out fuse.EntryOut
				if err := decodeInto(body, &out); err != nil {
					return err
				}
				if out.Attr.Mode&syscall.S_IFMT != syscall.S_IFDIR {
					return fmt.Errorf("MKDIR: mode %o", out.Attr.Mode)
				}
				if _, err := call(f, "RMDIR", opRmdir, dir, nil, name, 0); err != nil {
					return err
				}
				return f.Forget(out.NodeId, 1)
			})
			if err != nil {
				return nil, err
			}
			e.cpuOps("vhost-mkdir-rmdir"+s, m, float64(cnt), "dir")
			res["vhost-mkdir-rmdir"+s] = float64(cnt) / el.Seconds()
			return res, nil
		},
	}
}

// vhostReaddirJob: OPENDIR, READDIRPLUS with 128 KiB buffers to the end,
// RELEASEDIR of the -files directory, on a fresh daemon after drop_caches.
func vhostReaddirJob(cfg *Config) *job {
	n := count(cfg.Files)
	return &job{
		name: "vhost-readdirplus", parts: partStat, cold: true, transports: []Transport{Vhost},
		rows: []Row{{Name: "vhost-readdirplus-cold", Unit: "ms/pass",
			Desc: "OPENDIR, READDIRPLUS (128 KiB replies) to the end, RELEASEDIR of the " + n + "-entry directory, fresh daemon after drop_caches"}},
		run: func(ctx context.Context, e *Env) (map[string]float64, error) {
			f := e.front
			dir, err := lookupPath(f, "stat")
			if err != nil {
				return nil, err
			}
			m := e.cpuStart()
			t0 := time.Now()
			oin := fuse.OpenIn{Flags: syscall.O_RDONLY | syscall.O_DIRECTORY}
			body, err := call(f, "OPENDIR", vhostfront.OpOpendir, dir, argOf(&oin), nil, int(unsafe.Sizeof(fuse.OpenOut{})))
			if err != nil {
				return nil, err
			}
			var oo fuse.OpenOut
			if err := decodeInto(body, &oo); err != nil {
				return nil, err
			}
			entries, off := 0, uint64(0)
			for {
				rin := fuse.ReadIn{Fh: oo.Fh, Offset: off, Size: 128 << 10}
				body, err := call(f, "READDIRPLUS", vhostfront.OpReaddirplus, dir, argOf(&rin), nil, 128<<10)
				if err != nil {
					return nil, err
				}
				if len(body) == 0 {
					break
				}
				k, last, err := parseDirentPlus(body)
				if err != nil {
					return nil, err
				}
				entries += k
				off = last
			}
			if err := release(f, opReleasedir, dir, oo.Fh); err != nil {
				return nil, err
			}
			el := time.Since(t0)
			if entries != e.Cfg.Files {
				return nil, fmt.Errorf("READDIRPLUS gave %d entries, want %d", entries, e.Cfg.Files)
			}
			e.cpuOps("vhost-readdirplus-cold", m, float64(entries), "entry")
			return map[string]float64{"vhost-readdirplus-cold": float64(el.Microseconds()) / 1000}, nil
		},
	}
}

// parseDirentPlus counts the entries of a READDIRPLUS reply other than .
// and .., and returns the offset of the last one.
func parseDirentPlus(b []byte) (n int, lastOff uint64, err error) {
	entSize := int(unsafe.Sizeof(fuse.EntryOut{}))
	for len(b) > 0 {
		if len(b) < entSize+24 {
			return n, lastOff, fmt.Errorf("short direntplus (%d bytes)", len(b))
		}
		d := b[entSize:]
		off := le.LittleEndian.Uint64(d[8:])
		nl := int(le.LittleEndian.Uint32(d[16:]))
		if 24+nl > len(d) {
			return n, lastOff, fmt.Errorf("direntplus name of %d bytes overruns", nl)
		}
		name := string(d[24 : 24+nl])
		if name != "." && name != ".." {
			n++
		}
		lastOff = off
		rec := entSize + (24+nl+7)&^7
		if rec > len(b) {
			rec = len(b)
		}
		b = b[rec:]
	}
	return n, lastOff, nil
}

// vhostIOJob: READ and WRITE through a file handle at depth requests in
// flight over nq request queues: 4 KiB at distinct random offsets of the
// -size file (read on a fresh daemon after drop_caches; written into a new
// file of that size), then 1 MiB sequential reads of the whole file, and
// 1 MiB sequential writes of a new file of that size.
func vhostIOJob(cfg *Config, depth, nq int) *job {
	s := vsuf(nq, depth)
	qd := queuesDesc(nq)
	sz := bytesStr(cfg.Size)
	return &job{
		name: "vhost-io" + s, parts: partData | partCreate, cold: true, transports: []Transport{Vhost}, queues: nq,
		cleanup: func(shared string) error { return emptyDir(shared + "/create") },
		rows: keepRows([]Row{
			{Name: "vhost-read-4k" + s, Unit: "ops/s", HigherBetter: true,
				Desc: fmt.Sprintf("READ of 4 KiB at %d distinct random offsets of the %s file, %d in flight%s, fresh daemon after drop_caches", cfg.RandReads, sz, depth, qd)},
			{Name: "vhost-read-4k" + s + "-p99", Unit: "µs", Desc: "p99 latency of those READs"},
			{Name: "vhost-write-4k" + s, Unit: "ops/s", HigherBetter: true,
				Desc: fmt.Sprintf("WRITE of 4 KiB at %d distinct random offsets of a new %s file, %d in flight", cfg.RandReads, sz, depth)},
			{Name: "vhost-read-seq" + s, Unit: "MiB/s", HigherBetter: true,
				Desc: fmt.Sprintf("READ of the whole %s file in 1 MiB requests, %d in flight", sz, depth)},
			{Name: "vhost-write-seq" + s, Unit: "MiB/s", HigherBetter: true,
				Desc: fmt.Sprintf("WRITE of a new %s file in 1 MiB requests (the peer's max_write if smaller), %d in flight, then FSYNC, timed to its reply", sz, depth)},
		}, nq, "vhost-read-4k"+s, "vhost-read-4k"+s+"-p99"),
		run: func(ctx context.Context, e *Env) (map[string]float64, error) {
			f := e.front
			node, err := lookupPath(f, "data", "seq.dat")
			if err != nil {
				return nil, err
			}
			fh, err := openFile(f, node, syscall.O_RDONLY)
			if err != nil {
				return nil, err
			}
			const page = 4096
			size := e.Cfg.Size
			pages := size / page
			k := int(min(int64(e.Cfg.RandReads), pages))
			r := rand.New(rand.NewPCG(3, 4))
			perm := make([]int64, 0, k)
			seen := make(map[int64]bool, k)
			for len(perm) < k {
				if p := r.Int64N(pages); !seen[p] {
					seen[p] = true
					perm = append(perm, p*page)
				}
			}
			out := map[string]float64{}
			if e.want("vhost-read-4k"+s) || e.want("vhost-read-4k"+s+"-p99") {
				m := e.cpuStart()
				lat, el, err := drive(ctx, depth, k, func(i int) error {
					in := fuse.ReadIn{Fh: fh, Offset: uint64(perm[i]), Size: page}
					body, err := callQ(f, e.queue(i), "READ", vhostfront.OpRead, node, argOf(&in), nil, page)
					if err != nil {
						return err
					}
					if len(body) != page {
						return fmt.Errorf("READ at %d: %d bytes", perm[i], len(body))
					}
					want := make([]byte, 16)
					fill(want, perm[i])
					if string(body[:16]) != string(want) {
						return fmt.Errorf("READ at %d: wrong data", perm[i])
					}
					return nil
				})
				if err != nil {
					return nil, err
				}
				e.cpuOps("vhost-read-4k"+s, m, float64(k), "READ")
				out["vhost-read-4k"+s] = float64(k) / el.Seconds()
				out["vhost-read-4k"+s+"-p99"] = percentileUS(lat, 0.99)
			}

			const chunk = 1 << 20
			if e.want("vhost-read-seq" + s) {
				nchunks := int((size + chunk - 1) / chunk)
				m := e.cpuStart()
				_, el, err := drive(ctx, depth, nchunks, func(i int) error {
					off := int64(i) * chunk
					want := min(chunk, size-off)
					in := fuse.ReadIn{Fh: fh, Offset: uint64(off), Size: uint32(want)}
					body, err := callQ(f, e.queue(i), "READ", vhostfront.OpRead, node, argOf(&in), nil, int(want))
					if err != nil {
						return err
					}
					if int64(len(body)) != want {
						return fmt.Errorf("READ at %d: %d bytes, want %d", off, len(body), want)
					}
					return nil
				})
				if err != nil {
					return nil, err
				}
				e.cpuOps("vhost-read-seq"+s, m, mib(size), "MiB")
				out["vhost-read-seq"+s] = float64(size) / (1 << 20) / el.Seconds()
			}
			if err := release(f, vhostfront.OpRelease, node, fh); err != nil {
				return nil, err
			}
			if !e.want("vhost-write-4k"+s) && !e.want("vhost-write-seq"+s) {
				return out, nil
			}

			dir, err := lookupPath(f, "create")
			if err != nil {
				return nil, err
			}
			if e.want("vhost-write-4k" + s) {
				co, err := createFile(f, dir, "w.dat")
				if err != nil {
					return nil, err
				}
				buf := make([]byte, page)
				m := e.cpuStart()
				_, el, err := drive(ctx, depth, k, func(i int) error {
					return writeAt(f, e.queue(i), co.NodeId, co.Fh, perm[i], buf)
				})
				if err != nil {
					return nil, err
				}
				e.cpuOps("vhost-write-4k"+s, m, float64(k), "WRITE")
				out["vhost-write-4k"+s] = float64(k) / el.Seconds()
				if err := release(f, vhostfront.OpRelease, co.NodeId, co.Fh); err != nil {
					return nil, err
				}
			}
			if e.want("vhost-write-seq" + s) {
				wchunk := int64(chunk)
				if e.inst != nil && e.inst.init != nil && e.inst.init.MaxWrite > 0 {
					wchunk = min(wchunk, int64(e.inst.init.MaxWrite))
				}
				buf := make([]byte, wchunk)
				fill(buf, 0)
				nchunks := int((size + wchunk - 1) / wchunk)
				m := e.cpuStart()
				t0 := time.Now()
				co, err := createFile(f, dir, "wseq.dat")
				if err != nil {
					return nil, err
				}
				_, _, err = drive(ctx, depth, nchunks, func(i int) error {
					off := int64(i) * wchunk
					return writeAt(f, e.queue(i), co.NodeId, co.Fh, off, buf[:min(wchunk, size-off)])
				})
				if err != nil {
					return nil, err
				}
				fin := fuse.FsyncIn{Fh: co.Fh}
				if _, err := call(f, "FSYNC", opFsync, co.NodeId, argOf(&fin), nil, 0); err != nil {
					return nil, err
				}
				el := time.Since(t0)
				e.cpuOps("vhost-write-seq"+s, m, mib(size), "MiB")
				out["vhost-write-seq"+s] = float64(size) / (1 << 20) / el.Seconds()
				if err := release(f, vhostfront.OpRelease, co.NodeId, co.Fh); err != nil {
					return nil, err
				}
			}
			return out, nil
		},
	}
}

// createFile sends CREATE (O_RDWR) of name in dir.
func createFile(f *vhostfront.Frontend, dir uint64, name string) (*fuse.CreateOut, error) {
	cin := fuse.CreateIn{Flags: syscall.O_CREAT | syscall.O_RDWR, Mode: syscall.S_IFREG | 0o644}
	body, err := call(f, "CREATE "+name, opCreate, dir, argOf(&cin), cstr(name), int(unsafe.Sizeof(fuse.CreateOut{})))
	if err != nil {
		return nil, err
	}
	var co fuse.CreateOut
	return &co, decodeInto(body, &co)
}

// writeAt sends one WRITE of data at off on queue qi and checks the count.
func writeAt(f *vhostfront.Frontend, qi int, node, fh uint64, off int64, data []byte) error {
	in := fuse.WriteIn{Fh: fh, Offset: uint64(off), Size: uint32(len(data))}
	body, err := callQ(f, qi, "WRITE", opWrite, node, argOf(&in), data, int(unsafe.Sizeof(fuse.WriteOut{})))
	if err != nil {
		return err
	}
	var wo fuse.WriteOut
	if err := decodeInto(body, &wo); err != nil {
		return err
	}
	if int(wo.Size) != len(data) {
		return fmt.Errorf("WRITE at %d: %d of %d bytes written", off, wo.Size, len(data))
	}
	return nil
}
