package devfuse

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Handler serves one FUSE request (engine.Engine satisfies it).
type Handler interface {
	HandleRequest(in, out [][]byte) (int, fuse.Status)
}

// ServeOptions tune the read loop.
type ServeOptions struct {
	Workers  int // goroutines reading /dev/fuse; default 16
	MaxWrite int // must match the engine's
	Logger   *slog.Logger
}

// Server reads requests from a /dev/fuse fd with several workers and
// answers them. It never closes the fd: the fd may outlive this process
// (kept by a supervisor, systemd's fd store, or carried across exec).
type Server struct {
	fd   int
	h    Handler
	opts ServeOptions

	draining atomic.Bool
	inflight atomic.Int64
	dropped  atomic.Int64
}

// NewServer returns a server for the connection fd.
func NewServer(fd int, h Handler, opts ServeOptions) *Server {
	if opts.Workers <= 0 {
		opts.Workers = 16
	}
	if opts.MaxWrite <= 0 {
		opts.MaxWrite = 1 << 20
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Server{fd: fd, h: h, opts: opts}
}

// Serve answers requests until the file system is unmounted (ENODEV) or a
// read fails.
func (s *Server) Serve() error {
	var wg sync.WaitGroup
	errs := make(chan error, s.opts.Workers)
	for range s.opts.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- s.worker()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// Drain stops handling new requests and waits (at most timeout) for the
// ones being handled to be answered. Workers blocked in read(2) stay
// blocked; a request one of them reads afterwards is left unanswered for the
// successor process to get back with FUSE_NOTIFY_RESEND. Drain is the step
// before an exec-based upgrade.
func (s *Server) Drain(timeout time.Duration) (dropped int64, ok bool) {
	s.draining.Store(true)
	deadline := time.Now().Add(timeout)
	for s.inflight.Load() > 0 {
		if time.Now().After(deadline) {
			return s.dropped.Load(), false
		}
		time.Sleep(time.Millisecond)
	}
	return s.dropped.Load(), true
}

// bufSize is the largest request or reply: a WRITE of MaxWrite plus its
// headers (the kernel requires at least 8 KiB past the payload).
func bufSize(maxWrite int) int { return maxWrite + 64<<10 }

func (s *Server) worker() error {
	in := make([]byte, bufSize(s.opts.MaxWrite))
	out := make([]byte, bufSize(s.opts.MaxWrite))
	inv, outv := make([][]byte, 1), [][]byte{out}
	for {
		n, err := unix.Read(s.fd, in)
		switch {
		case errors.Is(err, unix.EINTR), errors.Is(err, unix.EAGAIN), errors.Is(err, unix.ENOENT):
			continue // interrupted, or a request the kernel already withdrew
		case errors.Is(err, unix.ENODEV):
			return nil // unmounted
		case err != nil:
			return fmt.Errorf("read /dev/fuse: %w", err)
		}
		s.inflight.Add(1)
		if s.draining.Load() {
			s.dropped.Add(1)
			s.inflight.Add(-1)
			select {} // the process is about to be replaced
		}
		inv[0] = in[:n]
		rn, st := s.h.HandleRequest(inv, outv)
		if rn == 0 && !st.Ok() && n >= 16 {
			// The engine could not even parse the request: the kernel
			// still waits for an answer.
			rn = errorReply(out, binary.LittleEndian.Uint64(in[8:]), st)
		}
		if rn > 0 {
			if _, err := unix.Write(s.fd, out[:rn]); err != nil {
				switch {
				case errors.Is(err, unix.ENOENT):
					// The request was interrupted and is gone.
				case errors.Is(err, unix.ENODEV):
					s.inflight.Add(-1)
					return nil
				default:
					s.opts.Logger.Warn("write reply to /dev/fuse", "err", err)
				}
			}
		}
		s.inflight.Add(-1)
	}
}

// errorReply writes a bare error reply for request unique into out.
func errorReply(out []byte, unique uint64, st fuse.Status) int {
	binary.LittleEndian.PutUint32(out[0:], 16)
	binary.LittleEndian.PutUint32(out[4:], uint32(-int32(st)))
	binary.LittleEndian.PutUint64(out[8:], unique)
	return 16
}

// notifyResend is FUSE_NOTIFY_RESEND (protocol 7.40, Linux 6.9).
const notifyResend = 7

// NotifyResend asks the kernel to send again every request it handed out
// on this connection and has not seen answered: what a restarted server
// needs for the requests its predecessor died holding. Kernels before 6.9
// refuse it (EINVAL); their pending requests stay unanswered.
func NotifyResend(fd int) error {
	var msg [16]byte
	binary.LittleEndian.PutUint32(msg[0:], 16)
	binary.LittleEndian.PutUint32(msg[4:], notifyResend) // error field carries the notify code
	_, err := unix.Write(fd, msg[:])
	if err != nil {
		return fmt.Errorf("FUSE_NOTIFY_RESEND: %w", err)
	}
	return nil
}
