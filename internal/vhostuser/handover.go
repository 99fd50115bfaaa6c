package vhostuser

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/govirtiofsd/govirtiofsd/internal/vhostuser/wire"
	"github.com/govirtiofsd/govirtiofsd/internal/virtqueue"
)

// ErrHandedOver is returned by ServeConn and Serve after
// Connection.Handover passed the connection to a successor.
var ErrHandedOver = errors.New("vhostuser: connection handed over to a successor")

type handoverResult struct {
	state *ConnectionState
	files []*os.File
	err   error
}

// Handover stops serving the connection without the front-end noticing and
// returns its state and duplicates of its fds for a successor (ResumeConn,
// in this process or another). Every ring stops taking requests and its
// in-flight requests complete first, so the state has none in flight; the
// connection goroutine stops between two messages. Kicks and messages
// that arrive meanwhile wait in the eventfds and the socket for the
// successor. On success the connection's ServeConn returns ErrHandedOver;
// on error the connection goes on serving.
//
// Handover is refused while a device state transfer or dirty logging (a
// migration) is in progress.
func (c *Connection) Handover(ctx context.Context) (*ConnectionState, []*os.File, error) {
	req := make(chan handoverResult, 1)
	select {
	case c.d.handoverReq <- req:
	default:
		return nil, nil, errors.New("vhostuser: handover already in progress")
	}
	c.d.conn.Interrupt()
	select {
	case r := <-req:
		return r.state, r.files, r.err
	case <-ctx.Done():
		// The connection goroutine still answers req (buffered).
		return nil, nil, ctx.Err()
	}
}

// handOver runs on the connection goroutine between two messages.
func (d *device) handOver() handoverResult {
	switch {
	case d.devState != nil:
		return handoverResult{err: errors.New("vhostuser: handover during a device state transfer")}
	case d.dirty.active.Load():
		return handoverResult{err: errors.New("vhostuser: handover during dirty logging (migration)")}
	}
	started := make([]bool, len(d.vrings))
	for i, v := range d.vrings {
		started[i] = v.started()
		v.stop(0)
	}
	s, files, err := d.snapshot()
	if err == nil {
		for i := range s.Vrings {
			s.Vrings[i].Started = started[i]
		}
		return handoverResult{state: s, files: files}
	}
	for i, v := range d.vrings {
		if started[i] {
			if serr := v.start(); serr != nil {
				d.log.Error("ring did not restart after a failed handover", "vring", i, "err", serr)
			}
		}
	}
	return handoverResult{err: err}
}

// ResumeConn takes over a connection from a predecessor's Handover: it
// maps guest memory again, replays the recorded FUSE_INIT into the new
// Handler (its reply is dropped), restarts the rings at the recorded
// indices and serves the connection like ServeConn. It takes ownership of files (all
// are closed or kept). cfg must offer as many queues as the state has.
func ResumeConn(ctx context.Context, st *ConnectionState, files []*os.File, cfg Config) error {
	closeAll := func() {
		for _, f := range files {
			if f != nil {
				f.Close()
			}
		}
	}
	c, err := cfg.normalize()
	if err != nil {
		closeAll()
		return err
	}
	if err := st.validate(len(files)); err != nil {
		closeAll()
		return err
	}
	if len(st.Vrings) != 1+c.NumRequestQueues {
		closeAll()
		return fmt.Errorf("vhostuser: state has %d vrings, config offers %d", len(st.Vrings), 1+c.NumRequestQueues)
	}
	take := func(i int) *os.File {
		if i < 0 {
			return nil
		}
		f := files[i]
		files[i] = nil
		return f
	}
	sf := take(st.SocketFD)
	fc, err := net.FileConn(sf)
	sf.Close()
	if err != nil {
		closeAll()
		return fmt.Errorf("vhostuser: resume socket: %w", err)
	}
	uc, ok := fc.(*net.UnixConn)
	if !ok {
		fc.Close()
		closeAll()
		return fmt.Errorf("vhostuser: resume socket is a %T", fc)
	}
	d := newDevice(&c, uc)
	if st.FUSEInit != nil {
		replayInit(d.handler, st.FUSEInit)
	}
	if err := d.restore(st, take); err != nil {
		closeAll()
		d.teardown()
		return err
	}
	closeAll() // fds the state did not name
	return d.serve(ctx)
}

// restore loads st into a fresh device.
func (d *device) restore(st *ConnectionState, take func(int) *os.File) error {
	d.owner, d.features, d.protocol, d.status = st.Owner, st.Features, st.ProtocolFeatures, st.Status
	d.backendReq = take(st.BackendReqFD)
	var regions []*virtqueue.Region
	for i, r := range st.Regions {
		reg, err := virtqueue.MapRegion(take(r.FD), r.RegionLayout)
		if err != nil {
			for _, o := range regions {
				o.Release()
			}
			return fmt.Errorf("vhostuser: resume region %d: %w", i, err)
		}
		regions = append(regions, reg)
	}
	if len(regions) > 0 {
		mem, err := virtqueue.NewMemory(regions)
		if err != nil {
			return fmt.Errorf("vhostuser: resume memory: %w", err)
		}
		d.swapMemory(mem)
	}
	for i, vs := range st.Vrings {
		v := d.vrings[i]
		v.num, v.base, v.addrSet = vs.Num, vs.LastAvail, vs.AddrSet
		v.addr = wire.VringAddr{Index: uint32(i), Flags: vs.AddrFlags, DescUser: vs.DescUser,
			UsedUser: vs.UsedUser, AvailUser: vs.AvailUser, Log: vs.LogAddr}
		v.errFD = take(vs.ErrFD)
		kick, err := takeEventFD(take(vs.KickFD))
		if err != nil {
			return fmt.Errorf("vhostuser: resume vring %d: %w", i, err)
		}
		call, err := takeEventFD(take(vs.CallFD))
		if err != nil {
			if kick != nil {
				kick.Close()
			}
			return fmt.Errorf("vhostuser: resume vring %d: %w", i, err)
		}
		v.kick = kick
		v.mu.Lock()
		v.call = call
		v.logUsed, v.logAddr = vs.AddrFlags&wire.VringAddrFLog != 0, vs.LogAddr
		v.mu.Unlock()
		v.enabled.Store(vs.Enabled)
		if vs.Started && !vs.Broken {
			if err := v.start(); err != nil {
				return fmt.Errorf("vhostuser: resume vring %d: %w", i, err)
			}
			// Kicks that arrived during the handover are still counted
			// in the eventfd; the ring goroutine drains the ring first
			// thing anyway.
		}
	}
	return nil
}
