package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/user"
	"strconv"

	"github.com/govirtiofsd/govirtiofsd/internal/engine"
	"github.com/govirtiofsd/govirtiofsd/internal/passthrough"
	"github.com/govirtiofsd/govirtiofsd/internal/vhostuser"
)

// serveVhostUser serves virtio-fs over vhost-user on --socket-path (which it
// creates) or --fd (a listening socket libvirt made). Each front-end
// connection gets its own FUSE engine (INIT is per connection); the file
// system and its node table are shared, so a rebooted guest sees the same
// nodeids.
func serveVhostUser(ctx context.Context, c *config, fsys *passthrough.FS, mig *migration, log *slog.Logger) error {
	ln, err := listen(c)
	if err != nil {
		return err
	}
	defer ln.Close()
	log.Info("serving over vhost-user", "shared-dir", c.sharedDir, "socket", ln.Addr().String(), "pid", os.Getpid())
	return vhostuser.Serve(ctx, ln, vhostuser.Config{
		NewHandler: func() vhostuser.Handler {
			eng := engine.New(fsys, engine.Options{Logger: log})
			mig.setEngine(eng)
			return eng
		},
		DeviceState:      mig,
		NumRequestQueues: c.numQueues,
		ThreadPoolSize:   c.threadPoolSize,
		ExitOnDisconnect: c.exitOnDisconnect,
		Tag:              c.tag,
		Logger:           log,
	})
}

func listen(c *config) (*net.UnixListener, error) {
	if c.fd >= 0 {
		f := os.NewFile(uintptr(c.fd), "vhost-user-listener")
		l, err := net.FileListener(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("--fd %d: %w", c.fd, err)
		}
		ul, ok := l.(*net.UnixListener)
		if !ok {
			l.Close()
			return nil, fmt.Errorf("--fd %d is not a unix socket", c.fd)
		}
		return ul, nil
	}
	if fi, err := os.Lstat(c.socketPath); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("--socket-path %s exists and is not a socket", c.socketPath)
		}
		os.Remove(c.socketPath) // a stale socket from an earlier run
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: c.socketPath, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", c.socketPath, err)
	}
	ln.SetUnlinkOnClose(true)
	if c.socketGroup != "" {
		g, err := user.LookupGroup(c.socketGroup)
		if err != nil {
			ln.Close()
			return nil, fmt.Errorf("--socket-group: %w", err)
		}
		gid, _ := strconv.Atoi(g.Gid)
		if err := os.Chown(c.socketPath, -1, gid); err != nil {
			ln.Close()
			return nil, fmt.Errorf("--socket-group: %w", err)
		}
		if err := os.Chmod(c.socketPath, 0o660); err != nil {
			ln.Close()
			return nil, errors.Join(fmt.Errorf("--socket-group: %w", err))
		}
	}
	return ln, nil
}
