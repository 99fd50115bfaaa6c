package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/govirtiofsd/govirtiofsd/internal/inode"
	"github.com/govirtiofsd/govirtiofsd/internal/vhostuser"
	"golang.org/x/sys/unix"
)

// A vhost-user upgrade (SIGUSR2, or `govirtiofsd upgrade`) re-executes the
// binary without QEMU noticing: the backend stops the rings between
// requests and hands over its connection state (features, memory layout,
// ring indices, the guest's INIT) and fds (socket, guest memory, eventfds);
// the new process maps the memory again and carries on, resolving every
// nodeid from the persistent node table and every open file from the
// open-file table. The listening socket is inherited too.
const (
	envVhostState  = "GOVIRTIOFSD_VHOST_STATE"  // the marshalled ConnectionState
	envVhostFDs    = "GOVIRTIOFSD_VHOST_FDS"    // its fds, comma-separated, in order
	envVhostListen = "GOVIRTIOFSD_VHOST_LISTEN" // the listening socket's fd
)

// vhostResume reports whether this process takes over a vhost-user
// connection from its predecessor.
func vhostResume() bool { return os.Getenv(envVhostState) != "" }

// connTracker remembers the connection being served, for a handover.
type connTracker struct {
	mu   sync.Mutex
	conn *vhostuser.Connection
}

func (t *connTracker) set(c *vhostuser.Connection) {
	t.mu.Lock()
	t.conn = c
	t.mu.Unlock()
}

func (t *connTracker) get() *vhostuser.Connection {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.conn
}

// inheritedVhost returns the listener, connection state and fds a
// predecessor handed over (see upgradeVhost).
func inheritedVhost() (*net.UnixListener, *vhostuser.ConnectionState, []*os.File, error) {
	lfd, err := strconv.Atoi(os.Getenv(envVhostListen))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%s: %w", envVhostListen, err)
	}
	ln, err := vhostuser.ListenerFromFD(lfd)
	if err != nil {
		return nil, nil, nil, err
	}
	unix.Close(lfd) // ListenerFromFD duplicated it
	ln.SetUnlinkOnClose(true)
	var files []*os.File
	if s := os.Getenv(envVhostFDs); s != "" {
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.Atoi(f)
			if err != nil {
				return nil, nil, nil, fmt.Errorf("%s: %w", envVhostFDs, err)
			}
			unix.CloseOnExec(n)
			files = append(files, os.NewFile(uintptr(n), "vhost-user-handover"))
		}
	}
	st, err := vhostuser.UnmarshalConnectionState([]byte(os.Getenv(envVhostState)), len(files))
	if err != nil {
		return nil, nil, nil, err
	}
	for _, k := range []string{envVhostState, envVhostFDs, envVhostListen} {
		os.Unsetenv(k)
	}
	return ln, st, files, nil
}

// upgradeVhost hands the current connection (if any) and the listener to
// a fresh execution of the binary. On error this process goes on serving.
func upgradeVhost(ln *net.UnixListener, tracker *connTracker, table *inode.Table, log *slog.Logger) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	self = strings.TrimSuffix(self, " (deleted)")
	if err := unix.Access(self, unix.X_OK); err != nil {
		return fmt.Errorf("new binary %s: %w", self, err)
	}
	env := withoutEnv(os.Environ(), envVhostState, envVhostFDs, envVhostListen)
	lf, err := ln.File() // a duplicate, without close-on-exec once cleared below
	if err != nil {
		return fmt.Errorf("listener fd: %w", err)
	}
	keep := []*os.File{lf}
	env = append(env, envVhostListen+"="+strconv.Itoa(int(lf.Fd())))
	start := time.Now()
	if conn := tracker.get(); conn != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		st, files, err := conn.Handover(ctx)
		cancel()
		if err != nil {
			lf.Close()
			return fmt.Errorf("hand over the connection: %w", err)
		}
		b, err := st.Marshal()
		if err != nil {
			return err // the connection is stopped: nothing left to serve
		}
		var fds []string
		for _, f := range files {
			fds = append(fds, strconv.Itoa(int(f.Fd())))
		}
		keep = append(keep, files...)
		env = append(env, envVhostState+"="+string(b), envVhostFDs+"="+strings.Join(fds, ","))
	}
	for _, f := range keep {
		if _, err := unix.FcntlInt(f.Fd(), unix.F_SETFD, 0); err != nil {
			return fmt.Errorf("keep fd across exec: %w", err)
		}
	}
	ln.SetUnlinkOnClose(false)
	if err := table.Close(); err != nil {
		log.Warn("closing node table before upgrade", "err", err)
	}
	log.Info("upgrading: exec", "binary", self, "handover-time", time.Since(start))
	err = syscall.Exec(self, os.Args, env)
	return errors.Join(fmt.Errorf("exec %s", self), err)
}
