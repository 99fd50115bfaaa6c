// Package vhostuser is a vhost-user-fs back-end: it serves virtio-fs
// request queues for a VMM (QEMU's vhost-user-fs-pci) and hands each FUSE
// request to a [Handler], normally go-fuse's *fuse.ProtocolServer.
//
// # Guarantees
//
//   - Every message is validated (size, number of fds, device state) before
//     it is acted on; a malformed message gets an error reply (REPLY_ACK) or
//     a logged refusal, and the daemon keeps serving. Only a message that
//     leaves the stream out of sync (bad version, oversized payload) drops
//     the connection. A panic while serving a connection is recovered,
//     logged, and ends only that connection.
//   - Descriptor chains are validated by package virtqueue before the
//     Handler sees them; replies are written straight into guest buffers.
//     A request the Handler cannot parse gets a FUSE error reply (EIO) when
//     the chain has room for one.
//   - Guest memory stays mapped while any request still uses it, across
//     SET_MEM_TABLE, ADD_MEM_REG and REM_MEM_REG.
//   - GET_VRING_BASE stops the ring and waits for its in-flight requests,
//     so the index it reports covers every request answered. (A request
//     the filesystem never answers therefore holds up GET_VRING_BASE; a
//     warning is logged every 5 s. A disconnect or RESET_DEVICE waits at
//     most Config.AbandonAfter, then drops such requests' replies.)
//   - While VHOST_F_LOG_ALL is negotiated (live migration), every page the
//     back-end writes — reply buffers and used rings flagged for logging —
//     is marked in the front-end's dirty log (SET_LOG_BASE, LOG_SHMFD).
//   - Serve keeps listening after a front-end disconnects (VM reboot, QEMU
//     restart) unless Config.ExitOnDisconnect; each connection gets a fresh
//     Handler and fresh device state. RESET_DEVICE (a guest reset) stops
//     and forgets the rings but keeps the negotiated protocol features and
//     the memory table, as QEMU expects.
//
// Tested against QEMU 7.2 (Debian bookworm) and QEMU 10.0
// (bookworm-backports) vhost-user-fs-pci with a Linux 6.1 guest: see
// TestQEMUGuest.
//
// # Concurrency
//
// One goroutine per connection reads and dispatches front-end messages and
// is the only writer of the device configuration (fields of device and the
// configuration fields of vring). Each started ring has one goroutine that
// waits on its kick eventfd and pops chains, and ThreadPoolSize worker
// goroutines (or none: inline) that run the Handler and complete requests.
// Inline (ThreadPoolSize 0, the default), the hiprio ring has no goroutine:
// the request rings' goroutines watch its kick beside their own and serve
// its FORGETs and INTERRUPTs between and after their requests, so that one
// thread per request queue does all the work (see helpHiprio); hiprio
// requests then wait while no request ring runs. Inline too, a request
// ring's goroutine that finds requests queued up polls its ring (and the
// hiprio ring) for up to Config.PollMax, with the driver's kicks off,
// before it sleeps (see vring.poll). A device state transfer runs on a
// goroutine of its own.
//
// Lock order: device.ctlMu, then device.mu, then vring.mu, then
// dirtyLog.mu.
//   - device.ctlMu is held while a message is dispatched and by
//     Connection.Snapshot, which thereby sees a consistent configuration.
//   - device.mu guards the memory table pointer, which rings read when
//     they start.
//   - vring.mu guards the ring (virtqueue.Queue), the call eventfd and
//     the used-ring log address, shared by the ring goroutine and the
//     workers.
//   - dirtyLog.mu (read-locked while marking) keeps the log mapped while
//     a worker sets bits in it.
//
// # Restart seam
//
// [ConnectionState] describes everything a successor needs besides the fds
// themselves: features, memory layout, each vring's geometry, indices and
// in-flight heads, and which fd is which. [Connection.Snapshot] takes one
// while the connection runs. [Connection.Handover] stops the connection
// between two messages with every ring drained and returns the state and
// duplicated fds; [ResumeConn] (in this process or an exec'd successor that
// inherited the fds) re-maps guest memory and restarts the rings where the
// predecessor stopped. QEMU does not notice (TestQEMUHandover). The
// successor's Handler must already know the FUSE session (replay the INIT
// request into it). A crash is not covered yet: that needs the in-flight
// log in shared memory (TODO in state.go).
package vhostuser

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// Handler serves one FUSE request. in is the device-readable part of the
// descriptor chain, out the device-writable part (straight into guest
// memory); it returns the number of bytes written into out.
// *fuse.ProtocolServer satisfies it. HandleRequest is called concurrently.
type Handler interface {
	HandleRequest(in, out [][]byte) (int, fuse.Status)
}

var _ Handler = (*fuse.ProtocolServer)(nil)

// Config configures Serve.
type Config struct {
	// NewHandler is called once per front-end connection (each connection
	// negotiates INIT afresh); the filesystem behind it is shared.
	NewHandler func() Handler
	// NumRequestQueues is the number of request queues offered (queue 0
	// is hiprio, 1..N are request queues); default 1.
	NumRequestQueues int
	// ThreadPoolSize is the number of concurrent request workers per
	// queue; 0 serves requests inline on the queue goroutine.
	ThreadPoolSize int
	// PollMax is how long a request ring's thread, serving requests
	// inline, polls its ring for the next chain before it sleeps, once
	// requests queue up on the ring (see vring.poll); 0 never polls.
	PollMax time.Duration
	// ExitOnDisconnect makes Serve return after the first connection.
	ExitOnDisconnect bool
	// Tag is the virtio-fs tag reported in the config space (GET_CONFIG);
	// at most 36 bytes. Setting it offers VHOST_USER_PROTOCOL_F_CONFIG.
	// QEMU's vhost-user-fs-pci takes the tag from its own command line and
	// only warns about the feature (7.2, 10.0), but QEMU 7.1 to 8.0 are
	// reported to crash on that warning: leave Tag empty for QEMU.
	Tag string
	// AbandonAfter is how long a disconnect or a device reset waits for
	// requests still inside the filesystem before it abandons them (their
	// replies are dropped; nobody is left to read them); default 10s.
	// GET_VRING_BASE always waits, as the ring index must cover them.
	AbandonAfter time.Duration
	// MaxMemSlots is reported by GET_MAX_MEM_SLOTS; default 32.
	MaxMemSlots int
	// DeviceState, if set, enables VHOST_USER_PROTOCOL_F_DEVICE_STATE.
	DeviceState DeviceStateHandler
	// OnConnect, if set, is called with each new connection before its
	// first message is read (the restart seam: Connection.Snapshot).
	OnConnect func(*Connection)
	// OnDisconnect, if set, is called by Serve after each connection
	// ended (before the next is accepted).
	OnDisconnect func()
	Logger       *slog.Logger
}

// DeviceStateHandler supplies and consumes the opaque device state that
// travels with a migration (SET_DEVICE_STATE_FD / CHECK_DEVICE_STATE).
type DeviceStateHandler interface {
	// SaveState returns the state of the connection's filesystem.
	SaveState() ([]byte, error)
	// LoadState restores a state SaveState produced.
	LoadState([]byte) error
}

const maxRequestQueues = 255 // vring indices are 8 bits in kick/call messages

func (c *Config) normalize() (Config, error) {
	n := *c
	if n.NewHandler == nil {
		return n, errors.New("vhostuser: Config.NewHandler is nil")
	}
	if n.NumRequestQueues == 0 {
		n.NumRequestQueues = 1
	}
	if n.NumRequestQueues < 0 || n.NumRequestQueues > maxRequestQueues-1 {
		return n, fmt.Errorf("vhostuser: NumRequestQueues %d out of range", n.NumRequestQueues)
	}
	if n.ThreadPoolSize < 0 {
		return n, fmt.Errorf("vhostuser: ThreadPoolSize %d is negative", n.ThreadPoolSize)
	}
	if n.PollMax < 0 {
		return n, fmt.Errorf("vhostuser: PollMax %v is negative", n.PollMax)
	}
	if len(n.Tag) > 36 {
		return n, fmt.Errorf("vhostuser: tag %q longer than 36 bytes", n.Tag)
	}
	if n.AbandonAfter <= 0 {
		n.AbandonAfter = 10 * time.Second
	}
	if n.MaxMemSlots <= 0 {
		n.MaxMemSlots = 32
	}
	if n.Logger == nil {
		n.Logger = slog.Default()
	}
	return n, nil
}

// Serve accepts front-end connections on ln one after another and serves
// each until it disconnects; it keeps listening after a disconnect (VM
// reboot, QEMU restart) unless ExitOnDisconnect. It returns when ctx is
// cancelled (nil error) or ln fails. ln is not closed.
func Serve(ctx context.Context, ln *net.UnixListener, cfg Config) error {
	c, err := cfg.normalize()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait() // after cancel (defers run last first)
	defer cancel()
	// Accept blocks; a cancelled ctx unblocks it through a deadline.
	wg.Add(1)
	go func() {
		defer wg.Done()
		<-ctx.Done()
		_ = ln.SetDeadline(aLongTimeAgo())
	}()
	var backoff time.Duration
	for {
		conn, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				_ = ln.SetDeadline(time.Time{})
				return nil
			}
			// Out of fds or an aborted connection: wait and retry,
			// as a daemon for many VMs should.
			if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) || errors.Is(err, syscall.ECONNABORTED) {
				backoff = min(max(2*backoff, 10*time.Millisecond), time.Second)
				c.Logger.Warn("vhost-user accept failed; retrying", "err", err, "in", backoff)
				select {
				case <-time.After(backoff):
				case <-ctx.Done():
				}
				continue
			}
			return fmt.Errorf("vhostuser: accept: %w", err)
		}
		backoff = 0
		c.Logger.Info("vhost-user front-end connected")
		err = ServeConn(ctx, conn, c)
		if c.OnDisconnect != nil {
			c.OnDisconnect()
		}
		switch {
		case ctx.Err() != nil:
			_ = ln.SetDeadline(time.Time{})
			return nil
		case errors.Is(err, ErrHandedOver):
			return err
		case err != nil:
			c.Logger.Warn("vhost-user connection ended", "err", err)
		default:
			c.Logger.Info("vhost-user front-end disconnected")
		}
		if c.ExitOnDisconnect {
			return nil
		}
	}
}

// ServeConn serves one front-end connection (for a socket passed with
// --fd, or a socketpair) until it disconnects or ctx is cancelled. It
// closes conn. A clean disconnect returns nil.
func ServeConn(ctx context.Context, conn *net.UnixConn, cfg Config) (err error) {
	c, err := cfg.normalize()
	if err != nil {
		conn.Close()
		return err
	}
	d := newDevice(&c, conn)
	return d.serve(ctx)
}
