package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/govirtiofsd/govirtiofsd/internal/devfuse"
)

// supervise is --supervise: this process mounts, keeps a copy of the
// /dev/fuse fd, and runs the serving process as its child, restarting it if
// it dies. While a copy of the fd is held the kernel keeps the connection
// (and every file open in the mount) alive across the child's death.
//
// The serving process's pid is in <state-dir>/serving.pid and in the log
// line "serving over /dev/fuse"; the supervisor's is the one you started.
// SIGTERM or SIGINT to the supervisor unmounts and stops both.
func supervise(c *config, args []string, log *slog.Logger) error {
	if c.mount == "" {
		return errors.New("--supervise works with --mount (vhost-user restarts are a separate mechanism)")
	}
	stateDir, err := c.resolvedStateDir()
	if err != nil {
		return err
	}
	if stateDir == "" {
		return errors.New("--supervise needs a persistent node table: drop --state-dir=none")
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	fd, err := devfuse.Mount(c.mount, devfuse.MountOptions{FsName: c.sharedDir, ReadOnly: c.readOnly})
	if err != nil {
		return err
	}
	// A stale INIT from an earlier mount must not be replayed into this one.
	os.Remove(filepath.Join(stateDir, initFile))
	fuseFile := os.NewFile(uintptr(fd), "/dev/fuse")
	childArgs := withoutFlag(args, "supervise")

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var crashes []time.Time
	for restarts := 0; ; restarts++ {
		cmd := exec.Command(self, childArgs...)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, os.Stdout, os.Stderr
		cmd.ExtraFiles = []*os.File{fuseFile}
		cmd.Env = withoutEnv(os.Environ(), envFuseFD, envResume)
		cmd.Env = append(cmd.Env, envFuseFD+"=3")
		if restarts > 0 {
			cmd.Env = append(cmd.Env, envResume+"=1")
		}
		if err := cmd.Start(); err != nil {
			devfuse.Unmount(c.mount)
			return fmt.Errorf("start serving process: %w", err)
		}
		log.Info("supervisor: serving process started", "pid", cmd.Process.Pid, "restarts", restarts)
		waited := make(chan error, 1)
		go func() { waited <- cmd.Wait() }()
		var werr error
		select {
		case werr = <-waited:
		case <-ctx.Done():
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case werr = <-waited:
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				werr = <-waited
			}
			if werr != nil {
				devfuse.Unmount(c.mount)
			}
			return werr
		}
		if werr == nil {
			log.Info("supervisor: file system unmounted; exiting")
			return nil
		}
		log.Warn("supervisor: serving process died; restarting it on the same connection", "err", werr)
		now := time.Now()
		crashes = append(crashes, now)
		for len(crashes) > 0 && now.Sub(crashes[0]) > 30*time.Second {
			crashes = crashes[1:]
		}
		if len(crashes) > 5 {
			devfuse.Unmount(c.mount)
			return fmt.Errorf("serving process died %d times in 30s; giving up: %w", len(crashes), werr)
		}
	}
}

// withoutFlag drops --name and --name=value (and -name) from args.
func withoutFlag(args []string, name string) []string {
	var out []string
	for _, a := range args {
		trimmed := strings.TrimLeft(a, "-")
		if trimmed == name || strings.HasPrefix(trimmed, name+"=") {
			continue
		}
		out = append(out, a)
	}
	return out
}
