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
		return nil, fmt.Errorf("peer not installed (%v): run scripts/guest/install.sh as root", err)
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

// connect waits for the daemon's socket, connects the front-end and
// sends FUSE_INIT.
func (in *instance) connect(ctx context.Context, sock string) error {
	deadline := time.Now().Add(mountTimeout)
	for {
		select {
		case <-in.done:
			return fmt.Errorf("daemon exited before listening: %v", in.err)
		default:
		}
		if st, err := os.Stat(sock); err == nil && st.Mode()&os.ModeSocket != 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no socket at %s after %v", sock, mountTimeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	var f *vhostfront.Frontend
	for {
		var err error
		f, err = vhostfront.Dial(dctx, sock, vhostfront.Options{
			NumRequestQueues: 1,
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
				return fmt.Errorf("daemon exited before listening: %v", in.err)
			case <-time.After(5 * time.Millisecond):
			}
			continue
		}
		return fmt.Errorf("vhost-user setup: %w", err)
	}
	out, st, err := f.Init(vhostInitFlags)
	if err == nil && !st.Ok() {
		err = fmt.Errorf("FUSE_INIT: %v", st)
	}
	if err != nil {
		f.Close()
		return err
	}
	_ = out
	in.front = f
	return nil
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

// vhostMetaJob: LOOKUP of every file of the stat directory on a fresh
// daemon after drop_caches (cold), again (warm), then GETATTR of each, at
// depth requests in flight.
func vhostMetaJob(cfg *Config, depth int) *job {
	n := count(cfg.Files)
	s := fmt.Sprintf("-d%d", depth)
	return &job{
		name: "vhost-meta" + s, parts: partStat, cold: true, transports: []Transport{Vhost},
		rows: []Row{
			{Name: "vhost-lookup-cold" + s, Unit: "ops/s", HigherBetter: true,
				Desc: fmt.Sprintf("FUSE LOOKUP of %s files in one directory, fresh daemon after drop_caches, %d in flight", n, depth)},
			{Name: "vhost-lookup-cold" + s + "-p99", Unit: "µs", Desc: "p99 latency of those LOOKUPs"},
			{Name: "vhost-lookup-warm" + s, Unit: "ops/s", HigherBetter: true,
				Desc: "the same LOOKUPs again (daemon and host caches warm)"},
			{Name: "vhost-getattr" + s, Unit: "ops/s", HigherBetter: true,
				Desc: fmt.Sprintf("FUSE GETATTR of each of those %s nodeids, %d in flight", n, depth)},
			{Name: "vhost-getattr" + s + "-p99", Unit: "µs", Desc: "p99 latency of those GETATTRs"},
		},
		run: func(ctx context.Context, e *Env) (map[string]float64, error) {
			f := e.front
			if f == nil {
				return nil, fmt.Errorf("no vhost-user front-end")
			}
			dir, st, err := f.Lookup(fuse.FUSE_ROOT_ID, "stat")
			if err != nil || !st.Ok() {
				return nil, fmt.Errorf("LOOKUP stat: %v %v", st, err)
			}
			cnt := e.Cfg.Files
			names := make([]string, cnt)
			for i := range names {
				names[i] = statName(i)
			}
			ids := make([]uint64, cnt)
			lookup := func(warm bool) func(int) error {
				return func(i int) error {
					ent, st, err := f.Lookup(dir.NodeId, names[i])
					if err != nil {
						return err
					}
					if !st.Ok() {
						return fmt.Errorf("LOOKUP %s: %v", names[i], st)
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
			out := map[string]float64{}
			lat, el, err := drive(ctx, depth, cnt, lookup(false))
			if err != nil {
				return nil, err
			}
			out["vhost-lookup-cold"+s] = float64(cnt) / el.Seconds()
			out["vhost-lookup-cold"+s+"-p99"] = percentileUS(lat, 0.99)
			_, el, err = drive(ctx, depth, cnt, lookup(true))
			if err != nil {
				return nil, err
			}
			out["vhost-lookup-warm"+s] = float64(cnt) / el.Seconds()
			lat, el, err = drive(ctx, depth, cnt, func(i int) error {
				a, st, err := f.GetAttr(ids[i])
				if err != nil {
					return err
				}
				if !st.Ok() {
					return fmt.Errorf("GETATTR %d: %v", ids[i], st)
				}
				if a.Attr.Mode&syscall.S_IFMT != syscall.S_IFREG {
					return fmt.Errorf("GETATTR %d: mode %o, want a regular file", ids[i], a.Attr.Mode)
				}
				return nil
			})
			if err != nil {
				return nil, err
			}
			out["vhost-getattr"+s] = float64(cnt) / el.Seconds()
			out["vhost-getattr"+s+"-p99"] = percentileUS(lat, 0.99)
			return out, nil
		},
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
		js = append(js, vhostMetaJob(cfg, d))
	}
	for _, d := range vhostDepths {
		js = append(js, vhostCreateJob(cfg, d))
	}
	js = append(js, vhostReaddirJob(cfg))
	for _, d := range vhostDepths {
		js = append(js, vhostIOJob(cfg, d))
	}
	js = append(js, vhostWalkJob("walk", partWalk, cfg.WalkFiles))
	if cfg.BigWalkFiles > 0 {
		js = append(js, vhostWalkJob("big", partBigWalk, cfg.BigWalkFiles))
	}
	return js
}
