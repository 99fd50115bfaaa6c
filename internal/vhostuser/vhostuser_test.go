package vhostuser

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/internal/vhostfront"
	"github.com/govirtiofsd/govirtiofsd/internal/vhostuser/wire"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

type nopHandler struct{}

func (nopHandler) HandleRequest(in, out [][]byte) (int, fuse.Status) {
	n := 0
	for _, b := range out {
		n += copy(b, "ok")
	}
	return n, fuse.OK
}

type logWriter struct{ t testing.TB }

func (w logWriter) Write(b []byte) (int, error) {
	w.t.Log(string(bytes.TrimSpace(b)))
	return len(b), nil
}

func quietLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(logWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// serveOnce starts Serve on a temp socket and returns its path.
func serveOnce(t *testing.T, cfg Config) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Logger == nil {
		cfg.Logger = quietLogger(t)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, cfg) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		ln.Close()
	})
	return path
}

func dialFront(t *testing.T, path string) *vhostfront.Frontend {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f, err := vhostfront.Dial(ctx, path, vhostfront.Options{Logger: quietLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func TestConnectionStateSnapshot(t *testing.T) {
	conns := make(chan *Connection, 1)
	path := serveOnce(t, Config{
		NewHandler:       func() Handler { return nopHandler{} },
		NumRequestQueues: 2, ThreadPoolSize: 1,
		OnConnect: func(c *Connection) { conns <- c },
	})
	f := dialFront(t, path)
	for i := 0; i < 3; i++ {
		if out, err := f.Do(2, [][]byte{[]byte("req")}, 2); err != nil || string(out) != "ok" {
			t.Fatalf("Do: %q %v", out, err)
		}
	}
	c := <-conns
	s, files, err := c.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	feat, proto := f.Features()
	if s.Features != feat || s.ProtocolFeatures != proto || !s.Owner || s.Status != 0xf {
		t.Errorf("state %+v, front-end features %#x %#x", s, feat, proto)
	}
	if len(s.Regions) != 1 || s.Regions[0].GuestPhysAddr != 0x40000000 {
		t.Fatalf("regions %+v", s.Regions)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(files[s.Regions[0].FD].Fd()), &st); err != nil || uint64(st.Size) != s.Regions[0].Size {
		t.Errorf("region fd: size %d, err %v; want %d", st.Size, err, s.Regions[0].Size)
	}
	if len(s.Vrings) != 3 {
		t.Fatalf("%d vrings", len(s.Vrings))
	}
	v := s.Vrings[2]
	if !v.Started || !v.Enabled || v.LastAvail != 3 || v.UsedIdx != 3 || v.Num != 128 || v.KickFD < 0 || v.CallFD < 0 {
		t.Errorf("vring 2: %+v", v)
	}
	if s.Vrings[1].LastAvail != 0 || !s.Vrings[1].Started {
		t.Errorf("vring 1: %+v", s.Vrings[1])
	}
	b, err := s.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	s2, err := UnmarshalConnectionState(b, len(files))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(s, s2) {
		t.Errorf("round trip:\n%+v\n%+v", s, s2)
	}
	if _, err := UnmarshalConnectionState(b, len(files)-1); err == nil {
		t.Error("state accepted with fewer fds than it names")
	}
	bad := *s
	bad.Vrings = append([]VringState(nil), s.Vrings...)
	bad.Vrings[1].CallFD = bad.Vrings[2].CallFD
	bb, _ := bad.Marshal()
	if _, err := UnmarshalConnectionState(bb, len(files)); err == nil {
		t.Error("state with an fd used twice accepted")
	}
	if _, err := UnmarshalConnectionState([]byte(`{"version":99}`), 0); err == nil {
		t.Error("foreign version accepted")
	}
	if len(v.InFlight) != 0 {
		t.Errorf("idle ring has in-flight heads %v", v.InFlight)
	}
	// The ring keeps serving after the snapshot.
	if out, err := f.Do(1, [][]byte{[]byte("req")}, 2); err != nil || string(out) != "ok" {
		t.Errorf("Do after snapshot: %q %v", out, err)
	}
}

type memState struct {
	mu     sync.Mutex
	loaded []byte
}

func (m *memState) SaveState() ([]byte, error) { return bytes.Repeat([]byte("state!"), 20000), nil }
func (m *memState) LoadState(b []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(b) == 0 {
		return errors.New("empty state")
	}
	m.loaded = b
	return nil
}

func TestDeviceState(t *testing.T) {
	ms := &memState{}
	path := serveOnce(t, Config{NewHandler: func() Handler { return nopHandler{} }, DeviceState: ms})
	f := dialFront(t, path)
	if _, proto := f.Features(); proto&wire.ProtocolDeviceState == 0 {
		t.Fatalf("DEVICE_STATE not negotiated: %#x", proto)
	}
	transfer := func(dir uint32, fd int) uint64 {
		p := make([]byte, 8)
		binary.LittleEndian.PutUint32(p, dir)
		r, err := f.CallWithFDs(wire.ReqSetDeviceStateFD, p, []int{fd})
		if err != nil || len(r) != 8 {
			t.Fatalf("SET_DEVICE_STATE_FD: %v %v", r, err)
		}
		return binary.LittleEndian.Uint64(r)
	}
	check := func() uint64 {
		v, err := f.GetU64(wire.ReqCheckDeviceState)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}

	// Save: the back-end writes the state into our pipe.
	r, w, _ := os.Pipe()
	if got := transfer(wire.DeviceStateSave, int(w.Fd())); got != 1<<8 {
		t.Fatalf("save reply %#x", got)
	}
	w.Close()
	saved, err := io.ReadAll(r)
	r.Close()
	if err != nil || !bytes.Equal(saved, bytes.Repeat([]byte("state!"), 20000)) {
		t.Fatalf("saved %d bytes, %v", len(saved), err)
	}
	if got := check(); got != 0 {
		t.Errorf("CHECK after save = %d", got)
	}

	// Load: we write the state, the back-end consumes it.
	r, w, _ = os.Pipe()
	if got := transfer(wire.DeviceStateLoad, int(r.Fd())); got != 1<<8 {
		t.Fatalf("load reply %#x", got)
	}
	r.Close()
	w.Write([]byte("hello state"))
	w.Close()
	if got := check(); got != 0 {
		t.Errorf("CHECK after load = %d", got)
	}
	ms.mu.Lock()
	if string(ms.loaded) != "hello state" {
		t.Errorf("loaded %q", ms.loaded)
	}
	ms.mu.Unlock()

	// A failed load is reported by CHECK.
	r, w, _ = os.Pipe()
	transfer(wire.DeviceStateLoad, int(r.Fd()))
	r.Close()
	w.Close()
	if got := check(); got == 0 {
		t.Error("CHECK after an empty load = 0")
	}
	// CHECK without a transfer fails, and the device still works.
	if got := check(); got == 0 {
		t.Error("CHECK without transfer = 0")
	}
	if out, err := f.Do(1, [][]byte{[]byte("x")}, 2); err != nil || string(out) != "ok" {
		t.Errorf("Do: %q %v", out, err)
	}
}

// FuzzMessages feeds arbitrary byte streams to a connection: the device
// must answer or refuse without panicking or hanging, and end cleanly at
// EOF.
func FuzzMessages(f *testing.F) {
	msg := func(req wire.Request, flags uint32, payload []byte) []byte {
		b := make([]byte, wire.HeaderSize+len(payload))
		wire.Header{Request: req, Flags: wire.FlagVersion | flags, Size: uint32(len(payload))}.Encode(b)
		copy(b[wire.HeaderSize:], payload)
		return b
	}
	cat := func(ms ...[]byte) []byte { return bytes.Join(ms, nil) }
	f.Add(cat(msg(wire.ReqGetFeatures, 0, nil), msg(wire.ReqSetFeatures, 0, wire.EncodeU64(1<<30|1<<32))))
	f.Add(cat(msg(wire.ReqSetProtocolFeatures, 0, wire.EncodeU64(wire.ProtocolReplyAck)),
		msg(wire.ReqSetVringNum, wire.FlagNeedReply, wire.EncodeVringState(1, 64)),
		msg(wire.ReqSetVringAddr, wire.FlagNeedReply, wire.EncodeVringAddr(wire.VringAddr{Index: 1, DescUser: 0x1000})),
		msg(wire.ReqGetVringBase, 0, wire.EncodeVringState(1, 0))))
	f.Add(cat(msg(wire.ReqGetConfig, 0, wire.EncodeConfig(0, make([]byte, 40))), msg(wire.ReqSetMemTable, 0, wire.EncodeMemTable(nil))))
	f.Add(cat(msg(wire.ReqSetVringKick, 0, wire.EncodeU64(0x100)), msg(99, 0, []byte{1, 2})))
	f.Add(msg(wire.ReqSetFeatures, 0, make([]byte, 5000)))
	f.Add([]byte{1, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, stream []byte) {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		a := os.NewFile(uintptr(fds[0]), "a")
		fc, err := net.FileConn(a) // dups the fd
		a.Close()
		if err != nil {
			t.Fatal(err)
		}
		peer := os.NewFile(uintptr(fds[1]), "b")
		defer peer.Close()
		done := make(chan error, 1)
		cfg := Config{NewHandler: func() Handler { return nopHandler{} }, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
		go func() { done <- ServeConn(context.Background(), fc.(*net.UnixConn), cfg) }()
		go io.Copy(io.Discard, peer) // replies
		if _, err := peer.Write(stream); err != nil {
			t.Fatal(err)
		}
		unix.Shutdown(fds[1], unix.SHUT_WR)
		select {
		case err := <-done:
			var bad *wire.BadMessageError
			if err != nil && !errors.As(err, &bad) {
				t.Errorf("ServeConn: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("connection did not end at EOF")
		}
	})
}

type blockingHandler struct {
	began   chan struct{}
	release chan struct{}
}

func (b blockingHandler) HandleRequest(in, out [][]byte) (int, fuse.Status) {
	b.began <- struct{}{}
	<-b.release
	return nopHandler{}.HandleRequest(in, out)
}

func TestSnapshotInFlight(t *testing.T) {
	h := blockingHandler{began: make(chan struct{}, 4), release: make(chan struct{})}
	conns := make(chan *Connection, 1)
	path := serveOnce(t, Config{
		NewHandler: func() Handler { return h }, ThreadPoolSize: 2,
		OnConnect: func(c *Connection) { conns <- c },
	})
	f := dialFront(t, path)
	done := make(chan error, 2)
	for range 2 {
		go func() { _, err := f.Do(1, [][]byte{[]byte("x")}, 2); done <- err }()
	}
	<-h.began
	<-h.began
	s, files, err := (<-conns).Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		f.Close()
	}
	v := s.Vrings[1]
	if len(v.InFlight) != 2 || v.LastAvail-v.UsedIdx != 2 {
		t.Errorf("vring 1 with two requests in the handler: %+v", v)
	}
	close(h.release)
	for range 2 {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
}

func TestListen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(path); err == nil {
		t.Error("Listen on a live socket succeeded")
	}
	// A stale socket (nobody listening) is replaced.
	f, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	l2, err := ListenerFromFD(int(f.Fd()))
	if err != nil {
		t.Fatalf("ListenerFromFD: %v", err)
	}
	f.Close()
	l2.Close()
	ln3, err := Listen(path)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	ln3.Close()
	if _, err := os.Stat(path); err == nil {
		t.Error("socket file left after Close")
	}
	os.WriteFile(path, nil, 0o600)
	if _, err := Listen(path); err == nil {
		t.Error("Listen replaced a regular file")
	}
}

// countingHandler counts the requests it serves.
type countingHandler struct{ n *atomic.Int64 }

func (h countingHandler) HandleRequest(in, out [][]byte) (int, fuse.Status) {
	h.n.Add(1)
	return nopHandler{}.HandleRequest(in, out)
}

// TestHiprioServedByRequestThreads: with requests served inline, the
// hiprio ring has no goroutine of its own; the request rings' threads
// serve it, when idle (woken by its kick) and between their own requests.
// Every hiprio request completes, GET_VRING_BASE of the hiprio ring
// reports all of them, and the request rings go on serving after it.
func TestHiprioServedByRequestThreads(t *testing.T) {
	for _, tc := range []struct {
		queues int
		poll   time.Duration
	}{{1, 0}, {2, 0}, {1, 20 * time.Microsecond}, {2, 20 * time.Microsecond}} {
		queues := tc.queues
		t.Run(fmt.Sprintf("queues=%d,poll=%v", queues, tc.poll), func(t *testing.T) {
			var n atomic.Int64
			path := serveOnce(t, Config{NewHandler: func() Handler { return countingHandler{&n} }, NumRequestQueues: queues, PollMax: tc.poll})
			f := dialFront(t, path)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			do := func(qi int) error {
				_, err := f.DoContext(ctx, qi, [][]byte{[]byte("x")}, 2)
				return err
			}
			// Idle request threads: each hiprio request wakes one.
			for range 50 {
				if err := do(0); err != nil {
					t.Fatal("hiprio request on idle rings:", err)
				}
			}
			// Busy request rings: hiprio requests in between.
			var wg sync.WaitGroup
			errs := make(chan error, 64)
			const perWorker = 300
			for w := range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range perWorker {
						if err := do(1 + w%queues); err != nil {
							errs <- err
							return
						}
					}
				}()
			}
			hiprio := 0
			for i := 0; i < 2; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range perWorker {
						if err := do(0); err != nil {
							errs <- err
							return
						}
					}
				}()
				hiprio += perWorker
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			if want := int64(50 + hiprio + 8*perWorker); n.Load() != want {
				t.Errorf("handler saw %d requests, want %d", n.Load(), want)
			}
			base, err := f.StopQueue(0)
			if err != nil {
				t.Fatal("GET_VRING_BASE of the hiprio ring:", err)
			}
			if want := uint16(50 + hiprio); base != want {
				t.Errorf("hiprio ring stopped at avail index %d, want %d", base, want)
			}
			for qi := 1; qi <= queues; qi++ {
				if err := do(qi); err != nil {
					t.Errorf("request ring %d after the hiprio ring stopped: %v", qi, err)
				}
			}
		})
	}
}

// gateHandler holds the first request until gate is closed.
type gateHandler struct {
	first   *sync.Once
	entered chan struct{}
	gate    chan struct{}
}

func (h gateHandler) HandleRequest(in, out [][]byte) (int, fuse.Status) {
	h.first.Do(func() {
		close(h.entered)
		<-h.gate
	})
	return nopHandler{}.HandleRequest(in, out)
}

// TestRingPolling: once requests queued up on the ring (one waiting behind
// another), the ring thread polls the ring with the driver's kicks off, so
// requests sent one after the other meanwhile need no kick; when polling
// times out it turns kicks back on before it sleeps, so the next request
// is kicked and served. Without polling (PollMax 0) requests sent to an
// idle ring are kicked.
func TestRingPolling(t *testing.T) {
	for _, poll := range []time.Duration{0, 300 * time.Millisecond} {
		t.Run(fmt.Sprintf("poll=%v", poll), func(t *testing.T) {
			h := gateHandler{first: new(sync.Once), entered: make(chan struct{}), gate: make(chan struct{})}
			path := serveOnce(t, Config{NewHandler: func() Handler { return h }, PollMax: poll})
			f := dialFront(t, path)
			const q = vhostfront.RequestQueue
			do := func() {
				t.Helper()
				if out, err := f.Do(q, [][]byte{[]byte("req")}, 2); err != nil || string(out) != "ok" {
					t.Fatalf("Do: %q %v", out, err)
				}
			}
			// Requests queue up: the first is held in the handler while
			// two more are put on the ring.
			errs := make(chan error, 3)
			send := func() { _, err := f.Do(q, [][]byte{[]byte("a")}, 2); errs <- err }
			go send()
			<-h.entered
			go send()
			go send()
			time.Sleep(200 * time.Millisecond) // both published
			close(h.gate)
			for range 3 {
				if err := <-errs; err != nil {
					t.Fatal(err)
				}
			}
			k0 := f.Kicks(q)
			t0 := time.Now()
			const n = 20
			for range n {
				do()
			}
			kicked := f.Kicks(q) - k0
			switch {
			case poll == 0 && kicked == 0:
				// Most are kicked; one sent before the ring thread
				// finished its pass (and turned kicks back on) is not.
				t.Errorf("no polling: %d requests took no kick", n)
			case poll > 0 && time.Since(t0) < poll/2 && kicked != 0:
				t.Errorf("polling ring: %d requests took %d kicks, want none", n, kicked)
			}
			// Polling times out: kicks are back on, and the next request
			// is kicked and served.
			time.Sleep(poll + 50*time.Millisecond)
			k0 = f.Kicks(q)
			do()
			if kicked := f.Kicks(q) - k0; kicked != 1 {
				t.Errorf("request to a sleeping ring: %d kicks, want 1", kicked)
			}
		})
	}
}

// TestPollWindow: the poll window halves after a sleep longer than the
// limit (to nothing below minPollWindow) and doubles after a shorter one,
// up to the limit; an idle sleep leaves it as it is.
func TestPollWindow(t *testing.T) {
	const us = time.Microsecond
	for _, c := range []struct{ window, slept, want time.Duration }{
		{20 * us, 21 * us, 10 * us},
		{10 * us, 500 * us, 5 * us},
		{3 * us, 500 * us, 0},
		{0, 500 * us, 0},
		{10 * us, time.Second, 10 * us}, // idle: unchanged
		{0, time.Second, 0},
		{0, 5 * us, minPollWindow},
		{minPollWindow, 5 * us, 2 * minPollWindow},
		{16 * us, 19 * us, 20 * us},
		{20 * us, 20 * us, 20 * us},
	} {
		if got := pollWindow(c.window, c.slept, 20*us); got != c.want {
			t.Errorf("pollWindow(%v, slept %v, limit 20µs) = %v, want %v", c.window, c.slept, got, c.want)
		}
	}
}
