package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/govirtiofsd/govirtiofsd/internal/devfuse"
	"github.com/govirtiofsd/govirtiofsd/internal/inode"
	"golang.org/x/sys/unix"
)

// A /dev/fuse connection outlives the process serving it when someone else
// holds a copy of its fd: the supervisor (--supervise), systemd's fd store,
// or the process itself across exec (SIGUSR2 upgrade). The successor finds
// the fd and the saved INIT request, replays INIT into a fresh engine,
// asks the kernel to resend what was in flight, and serves every old nodeid
// from the persistent node table.
const (
	envFuseFD = "GOVIRTIOFSD_FUSE_FD" // fd number of an inherited /dev/fuse connection
	envResume = "GOVIRTIOFSD_RESUME"  // "1": a predecessor already answered INIT
	initFile  = "fuse-init"           // saved INIT request, in the state dir
	pidFile   = "serving.pid"         // pid of the process serving now, in the state dir
)

// inheritedFuseFD returns a /dev/fuse fd handed down by a supervisor, an
// exec-based upgrade or systemd (LISTEN_FDS with the name "fuse"), and
// whether its INIT was already answered.
func inheritedFuseFD() (fd int, resume bool, ok bool) {
	if s := os.Getenv(envFuseFD); s != "" {
		if n, err := strconv.Atoi(s); err == nil && n >= 0 {
			return n, os.Getenv(envResume) == "1", true
		}
	}
	if os.Getenv("LISTEN_PID") == strconv.Itoa(os.Getpid()) {
		names := strings.Split(os.Getenv("LISTEN_FDNAMES"), ":")
		count, _ := strconv.Atoi(os.Getenv("LISTEN_FDS"))
		for i := 0; i < count && i < len(names); i++ {
			if names[i] == "fuse" {
				return 3 + i, true, true
			}
		}
	}
	return -1, false, false
}

// saveInit writes the INIT request to the state dir (atomically), for a
// successor process.
func saveInit(dir string, log *slog.Logger) func([]byte) {
	return func(req []byte) {
		if dir == "" {
			return
		}
		tmp := filepath.Join(dir, initFile+".tmp")
		if err := os.WriteFile(tmp, req, 0o600); err != nil {
			log.Warn("cannot save INIT for restarts", "err", err)
			return
		}
		if err := os.Rename(tmp, filepath.Join(dir, initFile)); err != nil {
			log.Warn("cannot save INIT for restarts", "err", err)
		}
	}
}

func loadInit(dir string) ([]byte, error) {
	if dir == "" {
		return nil, errors.New("no state directory")
	}
	return os.ReadFile(filepath.Join(dir, initFile))
}

// storeInSystemd hands the fd to systemd's fd store when running under a
// unit with FileDescriptorStoreMax set, so that a restarted service gets the
// connection back (LISTEN_FDS).
func storeInSystemd(fd int, log *slog.Logger) {
	sock := os.Getenv("NOTIFY_SOCKET")
	if sock == "" {
		return
	}
	if strings.HasPrefix(sock, "@") {
		sock = "\x00" + sock[1:]
	}
	s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		log.Warn("systemd notify socket", "err", err)
		return
	}
	defer unix.Close(s)
	err = unix.Sendmsg(s, []byte("FDSTORE=1\nFDNAME=fuse\n"), unix.UnixRights(fd), &unix.SockaddrUnix{Name: sock}, 0)
	if err != nil {
		log.Warn("store /dev/fuse fd in systemd", "err", err)
		return
	}
	log.Info("/dev/fuse fd stored in systemd's fd store")
}

// upgrade replaces this process with a fresh execution of its binary,
// handing over the /dev/fuse fd: requests being served are answered first;
// one read meanwhile is left for the successor to get back with
// FUSE_NOTIFY_RESEND.
func upgrade(srv *devfuse.Server, fd int, table *inode.Table, stateDir string, log *slog.Logger) error {
	if stateDir == "" {
		return errors.New("upgrade needs a persistent node table (--state-dir); refusing, nodeids would die")
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own binary: %w", err)
	}
	// After a package upgrade /proc/self/exe names the deleted old file;
	// run what is installed at that path now.
	self = strings.TrimSuffix(self, " (deleted)")
	if err := unix.Access(self, unix.X_OK); err != nil {
		return fmt.Errorf("new binary %s: %w", self, err)
	}
	start := time.Now()
	dropped, drained := srv.Drain(5 * time.Second)
	if err := table.Close(); err != nil {
		log.Warn("closing node table before upgrade", "err", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0); err != nil {
		return fmt.Errorf("keep /dev/fuse fd across exec: %w", err)
	}
	env := append(withoutEnv(os.Environ(), envFuseFD, envResume), envFuseFD+"="+strconv.Itoa(fd), envResume+"=1")
	log.Info("upgrading: exec", "binary", self, "drained", drained, "left-for-resend", dropped, "drain-time", time.Since(start))
	err = syscall.Exec(self, os.Args, env)
	return fmt.Errorf("exec %s: %w", self, err)
}

func writePidFile(dir string) {
	if dir != "" {
		_ = os.WriteFile(filepath.Join(dir, pidFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644)
	}
}

// withoutEnv drops the named variables from env.
func withoutEnv(env []string, names ...string) []string {
	out := env[:0:0]
next:
	for _, kv := range env {
		for _, n := range names {
			if strings.HasPrefix(kv, n+"=") {
				continue next
			}
		}
		out = append(out, kv)
	}
	return out
}

// upgradeCommand is "govirtiofsd upgrade --pid N" (or --shared-dir DIR
// [--state-dir DIR], which reads the serving pid from the state dir): it
// asks the serving process to re-execute its binary without unmounting.
func upgradeCommand(args []string) int {
	c := &config{}
	fs := flagSetFor("govirtiofsd upgrade")
	pid := fs.Int("pid", 0, "pid of the serving govirtiofsd")
	fs.StringVar(&c.sharedDir, "shared-dir", "", "shared directory of the instance (to find its pid)")
	fs.StringVar(&c.stateDir, "state-dir", "", "state directory of the instance (to find its pid)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *pid == 0 {
		dir, err := c.resolvedStateDir()
		if err == nil && dir != "" && c.sharedDir != "" || c.stateDir != "" {
			b, rerr := os.ReadFile(filepath.Join(dir, pidFile))
			if rerr == nil {
				*pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
			}
		}
	}
	if *pid <= 0 {
		fmt.Fprintln(os.Stderr, "govirtiofsd upgrade: give --pid, or --shared-dir of a running instance")
		return 2
	}
	if err := unix.Kill(*pid, unix.SIGUSR2); err != nil {
		fmt.Fprintf(os.Stderr, "govirtiofsd upgrade: signal %d: %v\n", *pid, err)
		return 1
	}
	return 0
}
