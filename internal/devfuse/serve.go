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
	Workers  int // most goroutines reading or serving /dev/fuse at once; default 16
	MaxWrite int // must match the engine's
	Logger   *slog.Logger
}

// Server reads requests from a /dev/fuse fd and answers them. It never
// closes the fd: the fd may outlive this process (kept by a supervisor,
// systemd's fd store, or carried across exec).
//
// Workers come and go with the load, as go-fuse's own server does: a
// worker that takes a request starts another if nobody is left waiting in
// read(2) (up to Workers), and a worker that finishes a request while
// maxIdle others wait retires. The kernel wakes waiting readers in FIFO
// order, so a fixed pool of 16 would hand a single-threaded client's
// requests to a different, cold thread each time; with at most two
// waiting, its requests alternate between two warm ones.
type Server struct {
	fd   int
	h    Handler
	opts ServeOptions

	draining atomic.Bool
	inflight atomic.Int64
	dropped  atomic.Int64

	mu   sync.Mutex
	idle int   // +checklocks:mu workers waiting in read(2)
	live int   // +checklocks:mu workers
	err  error // +checklocks:mu first fatal read error
	done chan struct{}
	bufs sync.Pool // *buffers
}

// maxIdle is how many workers may wait in read(2) at once.
const maxIdle = 2

// buffers are one worker's request and reply buffers.
type buffers struct{ in, out []byte }

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
	s := &Server{fd: fd, h: h, opts: opts, done: make(chan struct{})}
	s.bufs.New = func() any {
		return &buffers{in: make([]byte, bufSize(opts.MaxWrite)), out: make([]byte, bufSize(opts.MaxWrite))}
	}
	return s
}

// Serve answers requests until the file system is unmounted (ENODEV) or a
// read fails, and returns once every worker has stopped.
func (s *Server) Serve() error {
	s.mu.Lock()
	s.live = 1
	s.mu.Unlock()
	go s.worker()
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// exit ends a worker; the last one to go ends Serve.
func (s *Server) exit(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil && s.err == nil {
		s.err = err
	}
	s.live--
	if s.live == 0 {
		close(s.done)
	}
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

func (s *Server) worker() {
	b := s.bufs.Get().(*buffers)
	defer s.bufs.Put(b)
	in, out := b.in, b.out
	inv, outv := make([][]byte, 1), [][]byte{out}
	for {
		s.mu.Lock()
		s.idle++
		s.mu.Unlock()
		n, err := unix.Read(s.fd, in)
		s.mu.Lock()
		s.idle--
		spawn := err == nil && s.idle == 0 && s.live < s.opts.Workers
		if spawn {
			s.live++
		}
		s.mu.Unlock()
		if spawn {
			go s.worker()
		}
		switch {
		case errors.Is(err, unix.EINTR), errors.Is(err, unix.EAGAIN), errors.Is(err, unix.ENOENT):
			continue // interrupted, or a request the kernel already withdrew
		case errors.Is(err, unix.ENODEV):
			s.exit(nil) // unmounted
			return
		case err != nil:
			s.exit(fmt.Errorf("read /dev/fuse: %w", err))
			return
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
					s.exit(nil)
					return
				default:
					s.opts.Logger.Warn("write reply to /dev/fuse", "err", err)
				}
			}
		}
		s.inflight.Add(-1)
		s.mu.Lock()
		retire := s.idle >= maxIdle
		if retire {
			s.live--
		}
		s.mu.Unlock()
		if retire {
			return // live > 0: others wait in read(2)
		}
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
