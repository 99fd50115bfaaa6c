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
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/govirtiofsd/govirtiofsd/internal/devfuse"
	"github.com/govirtiofsd/govirtiofsd/internal/engine"
	"github.com/govirtiofsd/govirtiofsd/internal/gcfloor"
	"github.com/govirtiofsd/govirtiofsd/internal/inode"
	"github.com/govirtiofsd/govirtiofsd/internal/openfiles"
	"github.com/govirtiofsd/govirtiofsd/internal/passthrough"
	"golang.org/x/sys/unix"
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
	handleKeyFile     string
	handles           inode.HandleMode
	maxOpenFDs        int
	threadPoolSize    int
	pollMaxNS         int
	logLevel          string
	sandbox           string
	printCaps         bool
	exitOnDisconnect  bool
	numQueues         int
	supervise         bool
	fusePassthrough   bool
	cpuProfile        string
}

func parseFlags(args []string) (*config, error) {
	c := &config{}
	fs := flagSetFor("govirtiofsd")
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
	fs.StringVar(&c.stateDir, "state-dir", "", "directory for the persistent node table, or none (default: a per-export folder under /var/lib/govirtiofsd as root, $XDG_STATE_HOME otherwise)")
	fs.StringVar(&c.handleKeyFile, "handle-key-file", "", "file holding the MAC key that seals node records (default: a key kept in the state directory, mode 0600)")
	fs.IntVar(&c.maxOpenFDs, "max-open-fds", defaultMaxOpenFDs, "bound on node fds kept open (lowered to half of RLIMIT_NOFILE if that is smaller)")
	fs.IntVar(&c.threadPoolSize, "thread-pool-size", 0, "request workers (0: a default for the transport)")
	fs.IntVar(&c.pollMaxNS, "poll-max-ns", defaultPollMaxNS, "vhost-user: ns a request ring's thread polls for the next request before it sleeps, once requests queue up (0: never polls)")
	fs.StringVar(&c.logLevel, "log-level", "info", "error, warn, info, debug or off")
	fs.StringVar(&c.sandbox, "sandbox", "none", "sandbox mode (only none is implemented)")
	fs.BoolVar(&c.printCaps, "print-capabilities", false, "print the vhost-user capabilities JSON and exit")
	fs.BoolVar(&c.exitOnDisconnect, "exit-on-disconnect", false, "exit when the vhost-user front-end disconnects")
	fs.IntVar(&c.numQueues, "num-request-queues", 1, "virtio-fs request queues offered")
	fs.BoolVar(&c.fusePassthrough, "fuse-passthrough", true, "/dev/fuse: let the kernel read and write opened files directly on the host (FUSE passthrough, Linux 6.9+, root); cache auto or always only")
	fs.StringVar(&c.cpuProfile, "cpuprofile", "", "write a CPU profile (pprof) to this file until exit")
	fs.BoolVar(&c.supervise, "supervise", false, "keep the /dev/fuse connection in a supervisor process and restart the serving process if it dies")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if c.pollMaxNS < 0 {
		return nil, fmt.Errorf("--poll-max-ns %d is negative", c.pollMaxNS)
	}
	if c.noAnnounce {
		c.announceSubmounts = false
	}
	return c, nil
}

func flagSetFor(name string) *flag.FlagSet {
	return flag.NewFlagSet(name, flag.ContinueOnError)
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
	if len(os.Args) > 1 && os.Args[1] == "upgrade" {
		os.Exit(upgradeCommand(os.Args[2:]))
	}
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
	if c.supervise {
		if err := supervise(c, os.Args[1:], log); err != nil {
			log.Error("supervisor failed", "err", err)
			os.Exit(1)
		}
		return
	}
	if c.cpuProfile != "" {
		stop, err := startCPUProfile(c.cpuProfile)
		if err != nil {
			log.Error("cpu profile", "err", err)
			os.Exit(1)
		}
		defer stop()
	}
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
	c.maxOpenFDs = fitOpenFDs(c.maxOpenFDs, log)
	fsys, table, files, err := newFileSystem(c, log)
	if err != nil {
		return err
	}
	defer table.Close()
	defer files.Close()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go syncPeriodically(ctx, table, log)
	// Fewer GC cycles, out of the request loop's tail latency (see gcfloor).
	gcfloor.Start(ctx, gcfloor.DefaultFloor, time.Second)
	if c.mount != "" {
		return serveDevFuse(ctx, c, fsys, table, log)
	}
	return serveVhostUser(ctx, c, fsys, table, &migration{c: c, table: table, files: files, log: log}, log)
}

// defaultMaxOpenFDs bounds the node fds the daemon keeps (--max-open-fds).
// 16384 holds the working set of a build in a source tree of that many
// files: a cached node is stated and opened through its own fd, an evicted
// one costs a store read and a statx by name, or a new O_PATH open (LOOKUP
// of 10k files at 16 in flight: 3.0-3.4 instead of 4.6-5.6 us of daemon
// CPU each with 4096). The kernel memory the fds pin (a file, its dentry
// and inode) is then ~25 MiB at most.
const defaultMaxOpenFDs = 16384

// fitOpenFDs lowers the node fd bound to half of RLIMIT_NOFILE (which the
// Go runtime has raised to the hard limit), leaving the other half to
// the files the guest opens, the sockets and the state files.
func fitOpenFDs(n int, log *slog.Logger) int {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil || rl.Cur == unix.RLIM_INFINITY {
		return n
	}
	if b := openFDBound(n, rl.Cur); b != n {
		log.Warn("--max-open-fds lowered to half of RLIMIT_NOFILE", "max-open-fds", b, "asked", n, "rlimit-nofile", rl.Cur)
		return b
	}
	return n
}

// openFDBound is the node fd bound for --max-open-fds n under an fd limit
// of nofile: n, or half of nofile if that is smaller (at least 16).
func openFDBound(n int, nofile uint64) int {
	if half := nofile / 2; uint64(n) > half {
		return int(max(half, 16))
	}
	return n
}

func newFileSystem(c *config, log *slog.Logger) (*passthrough.FS, *inode.Table, *openfiles.Table, error) {
	cache, err := passthrough.ParseCachePolicy(c.cache)
	if err != nil {
		return nil, nil, nil, err
	}
	inos, err := passthrough.ParseInodeNumbers(c.inodeNumbers)
	if err != nil {
		return nil, nil, nil, err
	}
	if c.handles, err = inode.ParseHandleMode(c.inodeFileHandles); err != nil {
		return nil, nil, nil, err
	}
	if c.sandbox != "none" {
		log.Warn("sandboxing is not implemented; serving without one", "sandbox", c.sandbox)
	}
	table, err := openTable(c, log)
	if err != nil {
		return nil, nil, nil, err
	}
	_, resume, _ := inheritedFuseFD()
	files, err := openFileTable(c, resume || vhostResume(), log)
	if err != nil {
		table.Close()
		return nil, nil, nil, err
	}
	fsys := passthrough.New(table, passthrough.Options{
		Cache:             cache,
		Xattr:             c.xattr,
		ReadOnly:          c.readOnly,
		Writeback:         c.writeback,
		AllowDirectIO:     c.allowDirectIO,
		AnnounceSubmounts: c.announceSubmounts,
		InodeNumbers:      inos,
		OpenFiles:         files,
		Logger:            log,
	})
	return fsys, table, files, nil
}

func serveDevFuse(ctx context.Context, c *config, fsys *passthrough.FS, table *inode.Table, log *slog.Logger) error {
	stateDir, err := c.resolvedStateDir()
	if err != nil {
		return err
	}
	fd, resume, inherited := inheritedFuseFD()
	if !inherited {
		if fd, err = devfuse.Mount(c.mount, devfuse.MountOptions{FsName: c.sharedDir, ReadOnly: c.readOnly}); err != nil {
			return err
		}
		storeInSystemd(fd, log)
	}
	if c.fusePassthrough && os.Geteuid() == 0 {
		fsys.EnableBacking(devfuse.Backing{FD: fd})
	}
	eng := engine.New(fsys, engine.Options{Logger: log, OnInit: saveInit(stateDir, log), Passthrough: c.fusePassthrough, Barrier: storeBarrier(table)})
	if resume {
		req, err := loadInit(stateDir)
		if err != nil {
			log.Warn("no saved INIT for the inherited connection; waiting for the kernel's", "err", err)
		} else if st := eng.ReplayInit(req); !st.Ok() {
			return fmt.Errorf("replay saved INIT: %v", st)
		}
	}
	workers := c.threadPoolSize
	if workers <= 0 {
		workers = max(16, 4*runtime.NumCPU())
	}
	srv := devfuse.NewServer(fd, eng, devfuse.ServeOptions{Workers: workers, MaxWrite: engine.DefaultMaxWrite, Logger: log})
	done := make(chan error, 1)
	go func() { done <- srv.Serve() }()
	if resume {
		// Requests the predecessor read and never answered.
		if err := devfuse.NotifyResend(fd); err != nil {
			log.Warn("kernel cannot resend lost requests (needs Linux 6.9); requests in flight at the restart stay unanswered", "err", err)
		}
	}
	writePidFile(stateDir)
	log.Info("serving over /dev/fuse", "shared-dir", c.sharedDir, "mount", c.mount, "resumed", resume, "pid", os.Getpid())

	usr2 := make(chan os.Signal, 1)
	signal.Notify(usr2, syscall.SIGUSR2)
	defer signal.Stop(usr2)
	for {
		select {
		case err := <-done:
			// Unmounted from outside (umount, fusermount -u).
			return err
		case <-usr2:
			err := upgrade(srv, fd, table, stateDir, log)
			log.Error("upgrade failed", "err", err)
			return err
		case <-ctx.Done():
			log.Info("unmounting", "mount", c.mount)
			if err := devfuse.Unmount(c.mount); err != nil {
				return err
			}
			// A busy mount was only detached: files still open in it
			// keep the connection alive. Like libfuse, stop serving
			// anyway; with this process gone they get ENOTCONN.
			select {
			case err := <-done:
				return err
			case <-time.After(2 * time.Second):
				log.Warn("mount was busy: detached it; open files in it are cut off", "mount", c.mount)
				return nil
			}
		}
	}
}

// syncInterval bounds what a host crash (power loss) can take from the node
// table: records are written to the page cache before their nodeid leaves
// the daemon (enough for a daemon crash) and made durable this often.
const syncInterval = 5 * time.Second

func syncPeriodically(ctx context.Context, table *inode.Table, log *slog.Logger) {
	t := time.NewTicker(syncInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := table.Store().Sync(); err != nil {
				log.Warn("sync node table", "err", err)
			}
		}
	}
}

func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}
