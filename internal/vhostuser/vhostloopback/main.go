// Command vhostloopback serves a directory over vhost-user-fs with this
// repository's back-end and go-fuse's loopback filesystem: a way to test
// and benchmark the transport (with QEMU or vhostbench) apart from
// govirtiofsd's own passthrough filesystem.
//
//	vhostloopback -socket-path /tmp/vfs.sock -shared-dir /srv/share
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

	"github.com/govirtiofsd/govirtiofsd/internal/vhostuser"
	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "vhostloopback:", err)
		os.Exit(1)
	}
}

func run() error {
	sock := flag.String("socket-path", "", "vhost-user socket to create")
	dir := flag.String("shared-dir", "", "directory to share")
	pool := flag.Int("thread-pool-size", 4, "request workers per queue (0: inline)")
	queues := flag.Int("queues", 1, "request queues")
	keep := flag.Bool("keep-listening", false, "serve further connections after a disconnect")
	debug := flag.Bool("debug", false, "log every vhost-user message")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile here")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if *sock == "" || *dir == "" {
		return fmt.Errorf("-socket-path and -shared-dir are required")
	}
	root, err := fs.NewLoopbackRoot(*dir)
	if err != nil {
		return err
	}
	os.Remove(*sock)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: *sock, Net: "unix"})
	if err != nil {
		return err
	}
	defer ln.Close()
	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return vhostuser.Serve(ctx, ln, vhostuser.Config{
		NewHandler: func() vhostuser.Handler {
			return fuse.NewProtocolServer(fs.NewNodeFS(root, &fs.Options{}), &fuse.MountOptions{Logger: log.New(io.Discard, "", 0)})
		},
		NumRequestQueues: *queues, ThreadPoolSize: *pool, ExitOnDisconnect: !*keep,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})),
	})
}
