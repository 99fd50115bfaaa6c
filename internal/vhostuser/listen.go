package vhostuser

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"
)

// Listen creates the vhost-user socket at path (--socket-path). A stale
// socket left by a dead daemon is replaced; a live one (something accepts
// connections on it) or a file that is not a socket is an error.
func Listen(path string) (*net.UnixListener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("vhostuser: %s exists and is not a socket", path)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("vhostuser: %s is in use by another process", path)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("vhostuser: probe %s: %w", path, err)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("vhostuser: remove stale socket: %w", err)
		}
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("vhostuser: listen: %w", err)
	}
	// Serve runs one connection at a time; the socket file is ours to
	// remove when we close.
	ln.SetUnlinkOnClose(true)
	return ln, nil
}

// ListenerFromFD wraps an inherited listening socket (--fd, as with the
// Rust virtiofsd). The fd is duplicated; the caller may close its copy.
func ListenerFromFD(fd int) (*net.UnixListener, error) {
	f := os.NewFile(uintptr(fd), "vhost-user-listener")
	if f == nil {
		return nil, fmt.Errorf("vhostuser: fd %d is not valid", fd)
	}
	defer f.Close()
	l, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("vhostuser: fd %d: %w", fd, err)
	}
	ul, ok := l.(*net.UnixListener)
	if !ok {
		l.Close()
		return nil, fmt.Errorf("vhostuser: fd %d is a %T, not a Unix socket listener", fd, l)
	}
	return ul, nil
}
