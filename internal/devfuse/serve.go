package devfuse

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"

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

// Serve reads requests from the /dev/fuse fd with several workers and
// answers them until the file system is unmounted (ENODEV). It does not
// close fd.
func Serve(fd int, h Handler, opts ServeOptions) error {
	if opts.Workers <= 0 {
		opts.Workers = 16
	}
	if opts.MaxWrite <= 0 {
		opts.MaxWrite = 1 << 20
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	var wg sync.WaitGroup
	errs := make(chan error, opts.Workers)
	for range opts.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- serveWorker(fd, h, opts)
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

// bufSize is the largest request or reply: a WRITE of MaxWrite plus its
// headers (the kernel requires at least 8 KiB past the payload).
func bufSize(maxWrite int) int { return maxWrite + 64<<10 }

func serveWorker(fd int, h Handler, opts ServeOptions) error {
	in := make([]byte, bufSize(opts.MaxWrite))
	out := make([]byte, bufSize(opts.MaxWrite))
	inv, outv := make([][]byte, 1), [][]byte{out}
	for {
		n, err := unix.Read(fd, in)
		switch {
		case errors.Is(err, unix.EINTR), errors.Is(err, unix.EAGAIN), errors.Is(err, unix.ENOENT):
			continue // interrupted, or a request the kernel already withdrew
		case errors.Is(err, unix.ENODEV):
			return nil // unmounted
		case err != nil:
			return fmt.Errorf("read /dev/fuse: %w", err)
		}
		inv[0] = in[:n]
		rn, st := h.HandleRequest(inv, outv)
		if rn == 0 && !st.Ok() && n >= 16 {
			// The engine could not even parse the request: the kernel
			// still waits for an answer.
			rn = errorReply(out, binary.LittleEndian.Uint64(in[8:]), st)
		}
		if rn == 0 {
			continue
		}
		if _, err := unix.Write(fd, out[:rn]); err != nil {
			switch {
			case errors.Is(err, unix.ENOENT):
				// The request was interrupted and is gone.
			case errors.Is(err, unix.ENODEV):
				return nil
			default:
				opts.Logger.Warn("write reply to /dev/fuse", "err", err)
			}
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
