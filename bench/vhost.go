package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/govirtiofsd/govirtiofsd/internal/vhostfront"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// The vhost-user transport: each peer is a vhost-user-fs back-end listening
// on a socket; the bench connects the Go front-end (internal/vhostfront),
// sends FUSE_INIT, and drives FUSE requests at a fixed number in flight.
// No guest, no mount: the rows measure the daemons themselves.

// Vhost peer names.
const (
	PeerGovVhost        = "govirtiofsd-vhost"           // --socket-path, persistent node table
	PeerGovVhostNoState = "govirtiofsd-vhost-statenone" // --state-dir=none
	PeerCVirtiofsd      = "c-virtiofsd"                 // QEMU 7.2's C virtiofsd
	PeerRust            = "rust-virtiofsd"              // 1.13, --inode-file-handles=never
	PeerRustFH          = "rust-virtiofsd-fh"           // 1.13, --inode-file-handles=prefer
)

// VhostPeers are the vhost-user peers, in column order.
var VhostPeers = []string{PeerGovVhost, PeerGovVhostNoState, PeerCVirtiofsd, PeerRust, PeerRustFH}

// vhostRef: vhost rows compare with the better Rust virtiofsd
// configuration (issue 5).
var vhostRef = []string{PeerRust, PeerRustFH}

// vhostDepths are the numbers of requests in flight per row.
var vhostDepths = []int{1, 4, 16}

// assets reads the install record of scripts/guest/install.sh
// ($GOVIRTIOFSD_GUEST_DIR or /var/cache/govirtiofsd-test, file env).
func assets() (map[string]string, error) {
	dir := os.Getenv("GOVIRTIOFSD_GUEST_DIR")
	if dir == "" {
		dir = "/var/cache/govirtiofsd-test"
	}
	f, err := os.Open(filepath.Join(dir, "env"))
	if err != nil {
		return nil, fmt.Errorf("peer not installed (%v): run scripts/guest/install.sh as root (the bench does unless -install=false)", err)
	}
	defer f.Close()
	kv := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if k, v, ok := strings.Cut(l, "="); ok && !strings.HasPrefix(l, "#") {
			kv[k] = v
		}
	}
	return kv, sc.Err()
}

// vhostPeer fills d for a vhost peer name; gov is the govirtiofsd binary
// (or govErr) and govHelp its --help text.
func vhostPeer(d *Daemon, gov string, govErr error, govHelp string, extra []string) {
	d.Transport = Vhost
	need := func(kv map[string]string, keys ...string) bool {
		for _, k := range keys {
			if kv[k] == "" {
				d.Unavailable = "no " + k + " in the install record: run scripts/guest/install.sh"
				return false
			}
			if _, err := os.Stat(kv[k]); err != nil {
				d.Unavailable = fmt.Sprintf("%s: %v (run scripts/guest/install.sh)", k, err)
				return false
			}
		}
		return true
	}
	switch d.Name {
	case PeerGovVhost, PeerGovVhostNoState:
		if govErr != nil {
			d.Unavailable = "build failed: " + firstLine(govErr.Error())
			return
		}
		if !strings.Contains(govHelp, "socket-path") {
			d.Unavailable = "govirtiofsd has no --socket-path flag yet"
			return
		}
		noState := d.Name == PeerGovVhostNoState
		d.KeepsState = !noState
		d.Argv = func(shared, sock, state string) []string {
			a := []string{gov, "--shared-dir", shared, "--socket-path", sock}
			if noState {
				a = append(a, "--state-dir=none")
			} else {
				a = append(a, "--state-dir="+state)
			}
			return append(a, extra...)
		}
		if strings.Contains(govHelp, "num-request-queues") {
			d.QueueArgv = func(n int) []string { return []string{fmt.Sprintf("--num-request-queues=%d", n)} }
		}
	case PeerCVirtiofsd:
		kv, err := assets()
		if err != nil {
			d.Unavailable = err.Error()
			return
		}
		if !need(kv, "C_VIRTIOFSD") {
			return
		}
		bin := kv["C_VIRTIOFSD"]
		d.Argv = func(shared, sock, _ string) []string {
			return []string{bin, "--socket-path=" + sock, "-o", "source=" + shared, "-o", "cache=auto"}
		}
	case PeerRust, PeerRustFH:
		kv, err := assets()
		if err != nil {
			d.Unavailable = err.Error()
			return
		}
		if !need(kv, "RUST_VIRTIOFSD", "RUST_LDSO", "RUST_LIBDIR") {
			return
		}
		fh := "--inode-file-handles=never"
		if d.Name == PeerRustFH {
			fh = "--inode-file-handles=prefer"
		}
		d.Argv = func(shared, sock, _ string) []string {
			return []string{kv["RUST_LDSO"], "--library-path", kv["RUST_LIBDIR"], kv["RUST_VIRTIOFSD"],
				"--socket-path", sock, "--shared-dir", shared, "--cache", "auto", "--sandbox", "namespace", fh}
		}
	}
	if d.Argv != nil {
		d.Note = strings.Join(d.Argv("DIR", "SOCK", "STATE"), " ")
	}
}

// queuesError: the peer offers fewer request queues than the job needs
// (GET_QUEUE_NUM counts the hiprio queue too).
type queuesError struct{ msg string }

func (e *queuesError) Error() string { return e.msg }

// connect waits for the daemon's socket, connects the front-end and
// sends FUSE_INIT.
func (in *instance) connect(ctx context.Context, sock string) error {
	f, err := in.dial(ctx, sock)
	if err != nil {
		return err
	}
	out, st, err := f.Init(vhostInitFlags)
	if err == nil && !st.Ok() {
		err = fmt.Errorf("FUSE_INIT: %v", st)
	}
	if err != nil {
		f.Close()
		return err
	}
	in.init = out
	in.front = f
	return nil
}

// dial waits for the daemon's socket and connects the front-end with
// in.queues request queues (no FUSE_INIT yet).
func (in *instance) dial(ctx context.Context, sock string) (*vhostfront.Frontend, error) {
	deadline := time.Now().Add(mountTimeout)
	for {
		select {
		case <-in.done:
			return nil, fmt.Errorf("daemon exited before listening: %v", in.err)
		default:
		}
		if st, err := os.Stat(sock); err == nil && st.Mode()&os.ModeSocket != 0 {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no socket at %s after %v", sock, mountTimeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	var f *vhostfront.Frontend
	for {
		var err error
		f, err = vhostfront.Dial(dctx, sock, vhostfront.Options{
			NumRequestQueues: max(1, in.queues),
			QueueSize:        1024,
			Logger:           slog.New(slog.NewTextHandler(io.Discard, nil)),
		})
		if err == nil {
			break
		}
		// The socket file exists between bind(2) and listen(2).
		if errors.Is(err, syscall.ECONNREFUSED) && time.Now().Before(deadline) {
			select {
			case <-in.done:
				return nil, fmt.Errorf("daemon exited before listening: %v", in.err)
			case <-time.After(5 * time.Millisecond):
			}
			continue
		}
		if in.queues > 1 && strings.Contains(err.Error(), "request queues wanted") {
			return nil, &queuesError{fmt.Sprintf("serves fewer than %d request queues (%v)", in.queues, strings.TrimPrefix(err.Error(), "vhostfront: "))}
		}
		return nil, fmt.Errorf("vhost-user setup: %w", err)
	}
	return f, nil
}

// drive runs op(0…n-1) from depth goroutines, so that up to depth
// requests are in flight, and returns each op's latency and the total
// time. It stops at the first error.
func drive(ctx context.Context, depth, n int, op func(i int) error) ([]time.Duration, time.Duration, error) {
	lat := make([]time.Duration, n)
	var next atomic.Int64
	var mu sync.Mutex
	var first error
	var wg sync.WaitGroup
	t0 := time.Now()
	for range depth {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				s := time.Now()
				if err := op(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					next.Store(int64(n))
					return
				}
				lat[i] = time.Since(s)
			}
		})
	}
	wg.Wait()
	el := time.Since(t0)
	if first == nil {
		first = ctx.Err()
	}
	return lat, el, first
}

func percentileUS(lat []time.Duration, p float64) float64 {
	s := append([]time.Duration(nil), lat...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return float64(s[int(p*float64(len(s)-1))].Nanoseconds()) / 1000
}

// vsuf is the row-name suffix of a vhost row at depth requests in flight
// over nq request queues: -d16, -q2-d16.
func vsuf(nq, depth int) string {
	if nq > 1 {
		return fmt.Sprintf("-q%d-d%d", nq, depth)
	}
	return fmt.Sprintf("-d%d", depth)
}

// queuesDesc says how requests are spread over nq request queues.
func queuesDesc(nq int) string {
	if nq <= 1 {
		return ""
	}
	return fmt.Sprintf(", spread over %d request queues (request i on queue i mod %d)", nq, nq)
}

// keepRows drops the rows of a multi-queue variant that it does not
// measure, and points the ratios of the others at the same row over one
// request queue (the Rust and C virtiofsd serve only one).
func keepRows(rows []Row, nq int, names ...string) []Row {
	if nq <= 1 {
		return rows
	}
	var out []Row
	for _, r := range rows {
		if slices.Contains(names, r.Name) {
			r.RefRow = strings.Replace(r.Name, fmt.Sprintf("-q%d-", nq), "-", 1)
			r.Desc += fmt.Sprintf("; ratio to the reference's %s (1 request queue)", r.RefRow)
			out = append(out, r)
		}
	}
	return out
}

// vhostMetaJob: LOOKUP of every file of the stat directory on a fresh
// daemon after drop_caches (cold), again (warm), then GETATTR of each, at
// depth requests in flight over nq request queues.
func vhostMetaJob(cfg *Config, depth, nq int) *job {
	n := count(cfg.Files)
	s := vsuf(nq, depth)
	qd := queuesDesc(nq)
	return &job{
		name: "vhost-meta" + s, parts: partStat, cold: true, transports: []Transport{Vhost}, queues: nq,
		rows: keepRows([]Row{
			{Name: "vhost-lookup-cold" + s, Unit: "ops/s", HigherBetter: true,
				Desc: fmt.Sprintf("FUSE LOOKUP of %s files in one directory, fresh daemon after drop_caches, %d in flight%s", n, depth, qd)},
			{Name: "vhost-lookup-cold" + s + "-p99", Unit: "µs", Desc: "p99 latency of those LOOKUPs"},
			{Name: "vhost-lookup-warm" + s, Unit: "ops/s", HigherBetter: true,
				Desc: fmt.Sprintf("the same LOOKUPs again, %d passes over the %s names (daemon and host caches warm)", cfg.WarmPasses, n)},
			{Name: "vhost-getattr" + s, Unit: "ops/s", HigherBetter: true,
				Desc: fmt.Sprintf("FUSE GETATTR of each of those %s nodeids, %d passes, %d in flight%s", n, cfg.WarmPasses, depth, qd)},
			{Name: "vhost-getattr" + s + "-p99", Unit: "µs", Desc: "p99 latency of those GETATTRs"},
		}, nq, "vhost-lookup-cold"+s, "vhost-lookup-cold"+s+"-p99", "vhost-getattr"+s, "vhost-getattr"+s+"-p99"),
		run: func(ctx context.Context, e *Env) (map[string]float64, error) {
			f := e.front
			if f == nil {
				return nil, fmt.Errorf("no vhost-user front-end")
			}
			dir, err := lookupPath(f, "stat")
			if err != nil {
				return nil, err
			}
			names := statNames(e.Cfg.Files)
			cnt := len(names)
			ids := make([]uint64, cnt)
			out := map[string]float64{}
			m := e.cpuStart()
			lat, el, err := drive(ctx, depth, cnt, lookupAll(e, dir, names, ids, false))
			if err != nil {
				return nil, err
			}
			e.cpuOps("vhost-lookup-cold"+s, m, float64(cnt), "LOOKUP")
			out["vhost-lookup-cold"+s] = float64(cnt) / el.Seconds()
			out["vhost-lookup-cold"+s+"-p99"] = percentileUS(lat, 0.99)
			warm := cnt * e.Cfg.WarmPasses
			if e.want("vhost-lookup-warm" + s) {
				m := e.cpuStart()
				_, el, err = drive(ctx, depth, warm, passes(cnt, lookupAll(e, dir, names, ids, true)))
				if err != nil {
					return nil, err
				}
				e.cpuOps("vhost-lookup-warm"+s, m, float64(warm), "LOOKUP")
				out["vhost-lookup-warm"+s] = float64(warm) / el.Seconds()
			}
			if e.want("vhost-getattr" + s) {
				m = e.cpuStart()
				lat, el, err = drive(ctx, depth, warm, passes(cnt, getattrAll(e, ids)))
				if err != nil {
					return nil, err
				}
				e.cpuOps("vhost-getattr"+s, m, float64(warm), "GETATTR")
				out["vhost-getattr"+s] = float64(warm) / el.Seconds()
				out["vhost-getattr"+s+"-p99"] = percentileUS(lat, 0.99)
			}
			return out, nil
		},
	}
}

// vhostGetattrColdJob: on a fresh daemon, LOOKUP every file of the stat
// directory (untimed), drop the host's caches, then time the first
// GETATTR of each nodeid. A fresh daemon knows no nodeid before a LOOKUP,
// so this is the closest to a cold GETATTR: the daemon has seen each file
// once (and holds whatever its LOOKUP kept, e.g. an fd), the host's
// dentry and inode caches of the files it does not pin are dropped.
func vhostGetattrColdJob(cfg *Config, depth int) *job {
	n := count(cfg.Files)
	s := vsuf(1, depth)
	return &job{
		name: "vhost-getattr-cold" + s, parts: partStat, cold: true, transports: []Transport{Vhost},
		rows: []Row{
			{Name: "vhost-getattr-cold" + s, Unit: "ops/s", HigherBetter: true,
				Desc: fmt.Sprintf("fresh daemon: LOOKUP of the %s files (untimed), drop_caches, then the first GETATTR of each nodeid, %d in flight (on tmpfs the host side stays cached)", n, depth)},
			{Name: "vhost-getattr-cold" + s + "-p99", Unit: "µs", Desc: "p99 latency of those GETATTRs"},
		},
		run: func(ctx context.Context, e *Env) (map[string]float64, error) {
			f := e.front
			dir, err := lookupPath(f, "stat")
			if err != nil {
				return nil, err
			}
			names := statNames(e.Cfg.Files)
			ids := make([]uint64, len(names))
			if _, _, err := drive(ctx, 16, len(names), lookupAll(e, dir, names, ids, false)); err != nil {
				return nil, err
			}
			if err := e.dropCaches(); err != nil {
				return nil, err
			}
			m := e.cpuStart()
			lat, el, err := drive(ctx, depth, len(ids), getattrAll(e, ids))
			if err != nil {
				return nil, err
			}
			e.cpuOps("vhost-getattr-cold"+s, m, float64(len(ids)), "GETATTR")
			return map[string]float64{
				"vhost-getattr-cold" + s:          float64(len(ids)) / el.Seconds(),
				"vhost-getattr-cold" + s + "-p99": percentileUS(lat, 0.99),
			}, nil
		},
	}
}

func statNames(n int) []string {
	names := make([]string, n)
	for i := range names {
		names[i] = statName(i)
	}
	return names
}

// passes turns op over n items into an op over any number of passes over
// them: op(i mod n).
func passes(n int, op func(int) error) func(int) error {
	return func(i int) error { return op(i % n) }
}

// lookupAll returns an op for drive: LOOKUP of names[i] in dir on the
// request queue of i, storing the nodeid into ids[i] (warm: checking it is
// the one returned before).
func lookupAll(e *Env, dir uint64, names []string, ids []uint64, warm bool) func(int) error {
	return func(i int) error {
		ent, err := lookupQ(e.front, e.queue(i), dir, names[i])
		if err != nil {
			return err
		}
		if ent.Attr.Mode&syscall.S_IFMT != syscall.S_IFREG {
			return fmt.Errorf("LOOKUP %s: mode %o, want a regular file", names[i], ent.Attr.Mode)
		}
		if warm && ent.NodeId != ids[i] {
			return fmt.Errorf("LOOKUP %s: nodeid %d, was %d", names[i], ent.NodeId, ids[i])
		}
		ids[i] = ent.NodeId
		return nil
	}
}

// getattrAll returns an op for drive: GETATTR of ids[i] on the request
// queue of i.
func getattrAll(e *Env, ids []uint64) func(int) error {
	return func(i int) error {
		a, err := getattrQ(e.front, e.queue(i), ids[i])
		if err != nil {
			return err
		}
		if a.Attr.Mode&syscall.S_IFMT != syscall.S_IFREG {
			return fmt.Errorf("GETATTR %d: mode %o, want a regular file", ids[i], a.Attr.Mode)
		}
		return nil
	}
}

// vhostWalkJob: LOOKUP of every file of a generated tree (names are known,
// so no READDIR) at 16 in flight on a fresh daemon after drop_caches, then
// the daemon's RSS growth and open fds with every node still referenced
// (no FORGET is sent, as a guest that caches them all).
func vhostWalkJob(dir string, p part, n int) *job {
	c := count(n)
	const depth = 16
	return &job{
		name: "vhost-walk-" + c, parts: p, cold: true, transports: []Transport{Vhost},
		rows: []Row{
			{Name: "vhost-walk-" + c, Unit: "ops/s", HigherBetter: true,
				Desc: fmt.Sprintf("FUSE LOOKUP of all %s files of the walk tree (1000 per directory), %d in flight, fresh daemon after drop_caches", c, depth)},
			{Name: "vhost-rss-walk-" + c, Unit: "MiB",
				Desc: "daemon VmRSS growth (process tree) after those lookups, nothing forgotten"},
			{Name: "vhost-fds-walk-" + c, Unit: "fds",
				Desc: "daemon open fds (process tree) after those lookups"},
			{Name: "vhost-state-walk-" + c, Unit: "MiB", noValue: "no persistent state",
				Desc: "disk space of the daemon's --state-dir after those lookups"},
		},
		run: func(ctx context.Context, e *Env) (map[string]float64, error) {
			f := e.front
			if f == nil {
				return nil, fmt.Errorf("no vhost-user front-end")
			}
			idle, err := treeRSS(e.PID)
			if err != nil {
				return nil, err
			}
			top, st, err := f.Lookup(fuse.FUSE_ROOT_ID, dir)
			if err != nil || !st.Ok() {
				return nil, fmt.Errorf("LOOKUP %s: %v %v", dir, st, err)
			}
			nd := walkLayout(n)
			dirs := make([]uint64, nd)
			m := e.cpuStart()
			t0 := time.Now()
			_, _, err = drive(ctx, depth, nd, func(i int) error {
				name := fmt.Sprintf("d%05d", i)
				ent, st, err := f.Lookup(top.NodeId, name)
				if err != nil {
					return err
				}
				if !st.Ok() {
					return fmt.Errorf("LOOKUP %s/%s: %v", dir, name, st)
				}
				dirs[i] = ent.NodeId
				return nil
			})
			if err != nil {
				return nil, err
			}
			_, _, err = drive(ctx, depth, n, func(i int) error {
				name := statName(i % walkFanout)
				ent, st, err := f.Lookup(dirs[i/walkFanout], name)
				if err != nil {
					return err
				}
				if !st.Ok() {
					return fmt.Errorf("LOOKUP %s/d%05d/%s: %v", dir, i/walkFanout, name, st)
				}
				if ent.Attr.Mode&syscall.S_IFMT != syscall.S_IFREG {
					return fmt.Errorf("LOOKUP %s/d%05d/%s: mode %o", dir, i/walkFanout, name, ent.Attr.Mode)
				}
				return nil
			})
			el := time.Since(t0)
			if err != nil {
				return nil, err
			}
			e.cpuOps("vhost-walk-"+c, m, float64(n+nd), "LOOKUP")
			rss, err := treeRSS(e.PID)
			if err != nil {
				return nil, err
			}
			fds, err := treeFDs(e.PID)
			if err != nil {
				return nil, err
			}
			out := map[string]float64{
				"vhost-walk-" + c:     float64(n+nd) / el.Seconds(),
				"vhost-rss-walk-" + c: mib(rss - idle),
				"vhost-fds-walk-" + c: float64(fds),
			}
			if e.State != "" {
				b, err := diskUsage(e.State)
				if err != nil {
					return nil, err
				}
				out["vhost-state-walk-"+c] = mib(b)
			}
			return out, nil
		},
	}
}

func vhostJobs(cfg *Config) []*job {
	var js []*job
	for _, d := range vhostDepths {
		js = append(js, vhostMetaJob(cfg, d, 1))
	}
	for _, d := range vhostDepths {
		js = append(js, vhostGetattrColdJob(cfg, d))
	}
	for _, d := range vhostDepths {
		js = append(js, vhostCreateJob(cfg, d, 1))
	}
	js = append(js, vhostReaddirJob(cfg))
	for _, d := range vhostDepths {
		js = append(js, vhostIOJob(cfg, d, 1))
	}
	// 2 request queues at 16 in flight (issue 5).
	js = append(js, vhostMetaJob(cfg, 16, 2), vhostCreateJob(cfg, 16, 2), vhostIOJob(cfg, 16, 2))
	js = append(js, vhostReplayJob(cfg))
	js = append(js, vhostSyscallsJob(cfg))
	js = append(js, vhostWalkJob("walk", partWalk, cfg.WalkFiles))
	if cfg.BigWalkFiles > 0 {
		js = append(js, vhostWalkJob("big", partBigWalk, cfg.BigWalkFiles))
	}
	return js
}
