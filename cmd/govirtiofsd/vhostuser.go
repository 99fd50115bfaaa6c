package main

import (
	"context"
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
