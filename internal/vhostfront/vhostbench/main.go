// Command vhostbench is a vhost-user-fs load generator: it connects to any
// vhost-user-fs back-end socket (govirtiofsd, QEMU's C virtiofsd, Rust
// virtiofsd) as QEMU and a guest driver would, sends FUSE requests from
// several goroutines over shared memory, and reports throughput and
// latency. No virtual machine is involved.
//
//	vhostbench -socket /run/vfs.sock -op read -file big -size 131072 -c 16 -d 10s
//
// Ops: getattr (root), getattr-dir (every entry of directory -file, looked
// up first; run from the shared directory), lookup (-file in root), statfs, read (-file, -size
// bytes per request at increasing offsets, wrapping at -span).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/govirtiofsd/govirtiofsd/internal/vhostfront"
	"github.com/hanwen/go-fuse/v2/fuse"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "vhostbench:", err)
		os.Exit(1)
	}
}

func run() error {
	socket := flag.String("socket", "", "vhost-user back-end socket path")
	op := flag.String("op", "getattr", "getattr, lookup, statfs or read")
	file := flag.String("file", "", "file in the shared directory's root (lookup, read)")
	size := flag.Int("size", 4096, "read size")
	span := flag.Int64("span", 1<<30, "read offsets wrap at this many bytes (use the file size)")
	conc := flag.Int("c", 16, "requests in flight")
	dur := flag.Duration("d", 5*time.Second, "duration")
	queues := flag.Int("queues", 1, "request queues to spread requests over")
	qsize := flag.Int("queue-size", 256, "descriptors per queue")
	verbose := flag.Bool("v", false, "log front-end warnings")
	flag.Parse()
	if *socket == "" {
		return errors.New("-socket is required")
	}
	level := slog.LevelError
	if *verbose {
		level = slog.LevelWarn
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f, err := vhostfront.Dial(ctx, *socket, vhostfront.Options{
		NumRequestQueues: *queues, QueueSize: uint16(*qsize),
		MemSize: max(64<<20, 2*(*conc)*(*size+8192)),
		Logger:  slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})),
	})
	if err != nil {
		return err
	}
	defer f.Close()
	initOut, st, err := f.Init(0)
	if err != nil || !st.Ok() {
		return fmt.Errorf("INIT: %v %v", st, err)
	}
	feat, proto := f.Features()
	fmt.Printf("connected: FUSE %d.%d, max_write %d, virtio features %#x, protocol features %#x, %d queues\n",
		initOut.Major, initOut.Minor, initOut.MaxWrite, feat, proto, f.NumQueues())

	var nodeid, fh uint64 = 1, 0
	var many []uint64 // getattr-dir: the nodeids of -file's entries
	if *op == "getattr-dir" {
		if *file == "" {
			return errors.New("-file (a directory in the root) is required for getattr-dir")
		}
		if many, err = lookupAll(f, *file); err != nil {
			return err
		}
		fmt.Printf("looked up %d entries of %s\n", len(many), *file)
	}
	if *op == "lookup" || *op == "read" {
		if *file == "" {
			return errors.New("-file is required for " + *op)
		}
		e, st, err := f.Lookup(1, *file)
		if err != nil || !st.Ok() {
			return fmt.Errorf("LOOKUP %s: %v %v", *file, st, err)
		}
		nodeid = e.NodeId
	}
	if *op == "read" {
		fh, st, err = f.Open(vhostfront.RequestQueue, nodeid, uint32(os.O_RDONLY))
		if err != nil || !st.Ok() {
			return fmt.Errorf("OPEN: %v %v", st, err)
		}
	}
	one := func(w, i int) error {
		q := vhostfront.RequestQueue + (w+i)%(*queues)
		var st fuse.Status
		var err error
		switch *op {
		case "getattr":
			_, st, err = f.GetAttr(nodeid)
		case "getattr-dir":
			_, st, err = f.GetAttr(many[(w*7919+i)%len(many)])
		case "statfs":
			_, st, err = f.StatFs(nodeid)
		case "lookup":
			_, st, err = f.Lookup(1, *file)
		case "read":
			off := (int64(w)*1000003 + int64(i)) * int64(*size) % max(*span-int64(*size), 1)
			off -= off % int64(*size)
			var b []byte
			b, st, err = f.Read(q, nodeid, fh, uint64(off), uint32(*size))
			if err == nil && st.Ok() && len(b) == 0 {
				return errors.New("empty read: is -span within the file?")
			}
		default:
			return fmt.Errorf("unknown op %q", *op)
		}
		if err != nil {
			return err
		}
		if !st.Ok() {
			return fmt.Errorf("%s: %v", *op, st)
		}
		return nil
	}

	deadline := time.Now().Add(*dur)
	var mu sync.Mutex
	var lat []time.Duration
	var firstErr error
	var wg sync.WaitGroup
	start := time.Now()
	for w := range *conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for i := 0; time.Now().Before(deadline); i++ {
				t0 := time.Now()
				if err := one(w, i); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if firstErr != nil {
		return firstErr
	}
	slices.Sort(lat)
	pct := func(p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[min(len(lat)-1, int(float64(len(lat))*p))]
	}
	ops := float64(len(lat)) / elapsed.Seconds()
	fmt.Printf("%s: %d ops in %v: %.0f ops/s", *op, len(lat), elapsed.Round(time.Millisecond), ops)
	if *op == "read" {
		fmt.Printf(", %.1f MiB/s", ops*float64(*size)/(1<<20))
	}
	fmt.Printf(", latency p50 %v p99 %v\n", pct(0.5), pct(0.99))
	return nil
}

// lookupAll looks up every entry of directory dir (in the root) and returns
// their nodeids.
func lookupAll(f *vhostfront.Frontend, dir string) ([]uint64, error) {
	d, st, err := f.Lookup(1, dir)
	if err != nil || !st.Ok() {
		return nil, fmt.Errorf("LOOKUP %s: %v %v", dir, st, err)
	}
	names, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list %s on the host (run from the shared directory): %w", dir, err)
	}
	var ids []uint64
	for _, n := range names {
		e, st, err := f.Lookup(d.NodeId, n.Name())
		if err != nil || !st.Ok() {
			return nil, fmt.Errorf("LOOKUP %s/%s: %v %v", dir, n.Name(), st, err)
		}
		ids = append(ids, e.NodeId)
	}
	return ids, nil
}
