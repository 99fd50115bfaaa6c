package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"os/user"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"github.com/govirtiofsd/govirtiofsd/internal/engine"
	"github.com/govirtiofsd/govirtiofsd/internal/inode"
	"github.com/govirtiofsd/govirtiofsd/internal/passthrough"
	"github.com/govirtiofsd/govirtiofsd/internal/vhostuser"
)

// defaultPollMaxNS bounds how long a request ring's thread polls for the
// next request before it sleeps, once requests queue up (--poll-max-ns;
// vhostuser.Config.PollMax says why). 20 µs covers the gap while a
// driver turns completions into new requests.
const defaultPollMaxNS = 20000

// limitProcs sizes the Go scheduler to the threads that serve rings (one
// per request queue, or the worker pool's size per queue), plus one P for
// everything else: the vhost-user connection, the node store's background
// work, the GC's workers.
//
// The spare P is what keeps a ring's P with its thread while the thread
// waits for a kick in poll(2) (waitKick): the runtime's sysmon takes the P
// of a thread that stays in a system call longer than 20 µs unless another
// P is idle, and with no idle P it took it on nearly every wait — a hand-off
// of the P, a slower return from poll(2) to get a P back, the goroutine
// moved between threads, and sysmon itself kept waking every 20 µs (the
// shortest tick), ~6k times a second with one request in flight. With an
// idle P it leaves the ring's P alone (over a run of GETATTRs one at a
// time, warm-up included: sysmon's sleeps 6354 → 3137, futex calls 888 →
// 218). Measured on a 2-core VM (4–13
// interleaved runs per row, medians): daemon CPU per request down 8–14 %
// on most bench rows (CREATE+RELEASE+UNLINK at 16 in flight 14.1 → 12.9
// µs, the recorded workload with 16 in flight 19.0 → 16.4 µs) and 17–30 %
// with two request queues (whose two ring threads had no spare P on two
// CPUs: their throughput +11–40 %); at one request in flight throughput
// dropped 1–13 % in that VM, whose idle vCPUs halt at once (sysmon's
// ticks had kept one awake), and stays ahead of the Rust virtiofsd there.
//
// More Ps than that only spin looking for work between requests, and on a
// host whose cores run the guest's vCPUs that spinning is taken from the
// guest. An explicit GOMAXPROCS in the environment wins.
func limitProcs(queues, pool int) (int, bool) {
	if os.Getenv("GOMAXPROCS") != "" {
		return runtime.GOMAXPROCS(0), false
	}
	n := procsFor(queues, pool, runtime.NumCPU())
	runtime.GOMAXPROCS(n)
	return n, true
}

// procsFor is limitProcs' GOMAXPROCS: one P per ring thread, at most one
// per CPU, and the spare.
func procsFor(queues, pool, cpus int) int {
	return min(max(1, queues)*max(1, pool), cpus) + 1
}

// serveVhostUser serves virtio-fs over vhost-user on --socket-path (which it
// creates) or --fd (a listening socket libvirt made). Each front-end
// connection gets its own FUSE engine (INIT is per connection); the file
// system and its node table are shared, so a rebooted guest sees the same
// nodeids.
func serveVhostUser(ctx context.Context, c *config, fsys *passthrough.FS, table *inode.Table, mig *migration, log *slog.Logger) error {
	var (
		ln     *net.UnixListener
		st     *vhostuser.ConnectionState
		files  []*os.File
		err    error
		resume = vhostResume()
	)
	if resume {
		ln, st, files, err = inheritedVhost()
	} else {
		ln, err = listen(c)
	}
	if err != nil {
		return err
	}
	defer ln.Close()
	tracker := &connTracker{}
	cfg := vhostuser.Config{
		NewHandler: func() vhostuser.Handler {
			eng := engine.New(fsys, engine.Options{Logger: log, Barrier: storeBarrier(table)})
			mig.setEngine(eng)
			return eng
		},
		NumRequestQueues: c.numQueues,
		ThreadPoolSize:   c.threadPoolSize,
		PollMax:          time.Duration(c.pollMaxNS),
		ExitOnDisconnect: c.exitOnDisconnect,
		Tag:              c.tag,
		DeviceState:      mig,
		OnConnect:        tracker.set,
		OnDisconnect:     func() { tracker.set(nil) },
		Logger:           log,
	}
	if procs, set := limitProcs(c.numQueues, c.threadPoolSize); set {
		log.Debug("Go scheduler sized to the ring threads", "GOMAXPROCS", procs)
	}
	log.Info("serving over vhost-user", "shared-dir", c.sharedDir, "socket", ln.Addr().String(), "resumed", resume, "pid", os.Getpid())

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		if st != nil {
			err := vhostuser.ResumeConn(ctx, st, files, cfg)
			tracker.set(nil)
			if errors.Is(err, vhostuser.ErrHandedOver) || (err == nil && ctx.Err() != nil) || (err == nil && c.exitOnDisconnect) {
				done <- err
				return
			}
			if err != nil {
				log.Warn("resumed connection ended", "err", err)
			}
		}
		done <- vhostuser.Serve(ctx, ln, cfg)
	}()
	usr2 := make(chan os.Signal, 1)
	signal.Notify(usr2, syscall.SIGUSR2)
	defer signal.Stop(usr2)
	for {
		select {
		case err := <-done:
			return err
		case <-usr2:
			err := upgradeVhost(ln, tracker, table, log)
			log.Error("upgrade failed; still serving", "err", err)
			if table.Closed() {
				return err // the node table is gone; a supervisor restarts us
			}
		}
	}
}

// listen opens the vhost-user listening socket: --fd as libvirt passes it,
// or --socket-path (a stale socket from a dead daemon is replaced), with
// --socket-group giving that group access to it.
func listen(c *config) (*net.UnixListener, error) {
	if c.fd >= 0 {
		return vhostuser.ListenerFromFD(c.fd)
	}
	ln, err := vhostuser.Listen(c.socketPath)
	if err != nil {
		return nil, err
	}
	if c.socketGroup != "" {
		if err := shareWithGroup(c.socketPath, c.socketGroup); err != nil {
			ln.Close()
			return nil, fmt.Errorf("--socket-group: %w", err)
		}
	}
	return ln, nil
}

func shareWithGroup(path, group string) error {
	g, err := user.LookupGroup(group)
	if err != nil {
		return err
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return err
	}
	if err := os.Chown(path, -1, gid); err != nil {
		return err
	}
	return os.Chmod(path, 0o660)
}
