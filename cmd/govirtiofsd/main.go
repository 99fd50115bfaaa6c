// Command govirtiofsd shares a host directory with virtual machines over
// vhost-user (a drop-in for virtiofsd) or with the local kernel over
// /dev/fuse, giving every file a unique, persistent identity.
//
// Flags follow the Rust virtiofsd where it has one, so libvirt and Kata can
// switch binaries; new behaviour has new flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"

	"github.com/govirtiofsd/govirtiofsd/internal/devfuse"
	"github.com/govirtiofsd/govirtiofsd/internal/engine"
	"github.com/govirtiofsd/govirtiofsd/internal/inode"
	"github.com/govirtiofsd/govirtiofsd/internal/nodestore"
	"github.com/govirtiofsd/govirtiofsd/internal/passthrough"
)

// config is everything the command line says.
type config struct {
	sharedDir         string
	mount             string
	socketPath        string
	fd                int
	tag               string
	socketGroup       string
	cache             string
	xattr             bool
	readOnly          bool
	writeback         bool
	allowDirectIO     bool
	announceSubmounts bool
	noAnnounce        bool
	inodeNumbers      string
	inodeFileHandles  string
	stateDir          string
	maxOpenFDs        int
	threadPoolSize    int
	logLevel          string
	sandbox           string
	printCaps         bool
	exitOnDisconnect  bool
	numQueues         int
}

func parseFlags(args []string) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("govirtiofsd", flag.ContinueOnError)
	fs.StringVar(&c.sharedDir, "shared-dir", "", "host directory to share (required)")
	fs.StringVar(&c.mount, "mount", "", "serve over /dev/fuse at this mount point")
	fs.StringVar(&c.socketPath, "socket-path", "", "vhost-user socket to listen on")
	fs.IntVar(&c.fd, "fd", -1, "already-listening vhost-user socket fd (as libvirt passes it)")
	fs.StringVar(&c.tag, "tag", "", "virtio-fs tag reported to front-ends that ask for the device config")
	fs.StringVar(&c.socketGroup, "socket-group", "", "group that owns the vhost-user socket")
	fs.StringVar(&c.cache, "cache", "auto", "cache policy: auto, always, metadata or never")
	fs.BoolVar(&c.xattr, "xattr", false, "enable extended attributes")
	fs.BoolVar(&c.readOnly, "readonly", false, "share read-only")
	fs.BoolVar(&c.writeback, "writeback", false, "enable the kernel's writeback cache")
	fs.BoolVar(&c.allowDirectIO, "allow-direct-io", false, "honour O_DIRECT from the guest")
	fs.BoolVar(&c.announceSubmounts, "announce-submounts", true, "mark host mount points as submounts (FUSE_ATTR_SUBMOUNT) where the client supports it")
	fs.BoolVar(&c.noAnnounce, "no-announce-submounts", false, "do not announce submounts")
	fs.StringVar(&c.inodeNumbers, "inode-numbers", "auto", "st_ino policy: auto, host or remap")
	fs.StringVar(&c.inodeFileHandles, "inode-file-handles", "never", "use host file handles: never, prefer or mandatory")
	fs.StringVar(&c.stateDir, "state-dir", "none", "directory for the persistent node table, or none")
	fs.IntVar(&c.maxOpenFDs, "max-open-fds", 4096, "bound on node fds kept open")
	fs.IntVar(&c.threadPoolSize, "thread-pool-size", 0, "request workers (0: a default for the transport)")
	fs.StringVar(&c.logLevel, "log-level", "info", "error, warn, info, debug or off")
	fs.StringVar(&c.sandbox, "sandbox", "none", "sandbox mode (only none is implemented)")
	fs.BoolVar(&c.printCaps, "print-capabilities", false, "print the vhost-user capabilities JSON and exit")
	fs.BoolVar(&c.exitOnDisconnect, "exit-on-disconnect", false, "exit when the vhost-user front-end disconnects")
	fs.IntVar(&c.numQueues, "num-request-queues", 1, "virtio-fs request queues offered")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if c.noAnnounce {
		c.announceSubmounts = false
	}
	return c, nil
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	switch level {
	case "error":
		l = slog.LevelError
	case "warn":
		l = slog.LevelWarn
	case "info":
		l = slog.LevelInfo
	case "debug", "trace":
		l = slog.LevelDebug
	case "off":
		l = slog.LevelError + 100
	default:
		return nil, fmt.Errorf("unknown log level %q", level)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}

func main() {
	c, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "govirtiofsd:", err)
		os.Exit(2)
	}
	if c.printCaps {
		fmt.Println(capabilitiesJSON)
		return
	}
	log, err := newLogger(c.logLevel)
	if err != nil {
		fmt.Fprintln(os.Stderr, "govirtiofsd:", err)
		os.Exit(2)
	}
	slog.SetDefault(log)
	if err := run(c, log); err != nil {
		log.Error("govirtiofsd failed", "err", err)
		os.Exit(1)
	}
}

// capabilitiesJSON is what --print-capabilities prints: the vhost-user.json
// backend description libvirt reads.
const capabilitiesJSON = `{
  "type": "fs",
  "features": [
    "migrate-precopy",
    "separate-options"
  ]
}`

func run(c *config, log *slog.Logger) error {
	if c.sharedDir == "" {
		return errors.New("--shared-dir is required")
	}
	transports := 0
	for _, set := range []bool{c.mount != "", c.socketPath != "", c.fd >= 0} {
		if set {
			transports++
		}
	}
	if transports != 1 {
		return errors.New("give exactly one of --mount (serve over /dev/fuse), --socket-path or --fd (serve over vhost-user)")
	}
	fsys, table, err := newFileSystem(c, log)
	if err != nil {
		return err
	}
	defer table.Close()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if c.mount != "" {
		return serveDevFuse(ctx, c, fsys, log)
	}
	return serveVhostUser(ctx, c, fsys, log)
}

func newFileSystem(c *config, log *slog.Logger) (*passthrough.FS, *inode.Table, error) {
	cache, err := passthrough.ParseCachePolicy(c.cache)
	if err != nil {
		return nil, nil, err
	}
	inos, err := passthrough.ParseInodeNumbers(c.inodeNumbers)
	if err != nil {
		return nil, nil, err
	}
	switch c.inodeFileHandles {
	case "never", "prefer", "mandatory":
	default:
		return nil, nil, fmt.Errorf("unknown --inode-file-handles %q (want never, prefer or mandatory)", c.inodeFileHandles)
	}
	if c.sandbox != "none" {
		log.Warn("sandboxing is not implemented; serving without one", "sandbox", c.sandbox)
	}
	store, err := openStore(c, log)
	if err != nil {
		return nil, nil, err
	}
	table, err := inode.New(c.sharedDir, store, inode.Options{MaxOpenFDs: c.maxOpenFDs, Logger: log})
	if err != nil {
		store.Close()
		return nil, nil, err
	}
	fsys := passthrough.New(table, passthrough.Options{
		Cache:             cache,
		Xattr:             c.xattr,
		ReadOnly:          c.readOnly,
		Writeback:         c.writeback,
		AllowDirectIO:     c.allowDirectIO,
		AnnounceSubmounts: c.announceSubmounts,
		InodeNumbers:      inos,
		Logger:            log,
	})
	return fsys, table, nil
}

func openStore(c *config, log *slog.Logger) (inode.Store, error) {
	if c.stateDir != "none" {
		return nil, fmt.Errorf("--state-dir %s: the persistent node table is not built yet; use --state-dir=none", c.stateDir)
	}
	return nodestore.OpenMemory(), nil
}

func serveDevFuse(ctx context.Context, c *config, fsys *passthrough.FS, log *slog.Logger) error {
	fd, err := devfuse.Mount(c.mount, devfuse.MountOptions{FsName: c.sharedDir, ReadOnly: c.readOnly})
	if err != nil {
		return err
	}
	log.Info("serving over /dev/fuse", "shared-dir", c.sharedDir, "mount", c.mount)
	eng := engine.New(fsys, engine.Options{Logger: log})
	done := make(chan error, 1)
	workers := c.threadPoolSize
	if workers <= 0 {
		workers = max(16, 4*runtime.NumCPU())
	}
	go func() {
		done <- devfuse.Serve(fd, eng, devfuse.ServeOptions{Workers: workers, MaxWrite: engine.DefaultMaxWrite, Logger: log})
	}()
	select {
	case err := <-done:
		// Unmounted from outside (umount, fusermount -u).
		return err
	case <-ctx.Done():
	}
	log.Info("unmounting", "mount", c.mount)
	if err := devfuse.Unmount(c.mount); err != nil {
		return err
	}
	return <-done
}
