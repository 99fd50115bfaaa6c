package vhostfront

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/govirtiofsd/govirtiofsd/internal/vhostuser"
	"github.com/govirtiofsd/govirtiofsd/internal/vhostuser/wire"
	"github.com/govirtiofsd/govirtiofsd/internal/virtqueue"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// echo is a fake Handler: the reply is the request, reversed.
type echo struct {
	calls atomic.Int64
	inits atomic.Int64  // requests that look like FUSE_INIT
	block chan struct{} // if set, every request waits on it
	began chan struct{} // if set, receives one value per started request
}

func (e *echo) HandleRequest(in, out [][]byte) (int, fuse.Status) {
	e.calls.Add(1)
	if e.began != nil {
		e.began <- struct{}{}
	}
	if e.block != nil {
		<-e.block
	}
	req := bytes.Join(in, nil)
	if len(req) >= 40 && binary.LittleEndian.Uint32(req[4:]) == OpInit {
		e.inits.Add(1)
	}
	for i, j := 0, len(req)-1; i < j; i, j = i+1, j-1 {
		req[i], req[j] = req[j], req[i]
	}
	n := 0
	for _, b := range out {
		n += copy(b, req[n:])
	}
	return n, fuse.OK
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(string(bytes.TrimSpace(b)))
	return len(b), nil
}

// backend runs vhostuser.Serve on a temp socket until the test ends.
type backend struct {
	path string
	done chan error
}

func startBackend(t testing.TB, cfg vhostuser.Config) *backend {
	t.Helper()
	path := filepath.Join(t.TempDir(), "vhost.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b := &backend{path: path, done: make(chan error, 1)}
	go func() { b.done <- vhostuser.Serve(ctx, ln, cfg) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-b.done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after cancel")
		}
		ln.Close()
	})
	return b
}

func dial(t testing.TB, b *backend, opts Options) *Frontend {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f, err := Dial(ctx, b.path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// checkLeaks fails if goroutines are left behind once the test's cleanups
// (which stop the back-end) ran.
func checkLeaks(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > before {
			buf := make([]byte, 1<<16)
			t.Errorf("%d goroutines leaked:\n%s", n-before, buf[:runtime.Stack(buf, true)])
		}
	})
}

func TestEchoConfigurations(t *testing.T) {
	for _, tc := range []struct {
		name string
		pool int
		opts Options
	}{
		{"inline", 0, Options{}},
		{"pool", 4, Options{}},
		{"pool-noeventidx", 3, Options{DisableEventIdx: true}},
		{"indirect", 2, Options{UseIndirect: true}},
		{"add-mem-reg", 0, Options{UseAddMemReg: true, QueueSize: 16}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkLeaks(t)
			e := &echo{}
			b := startBackend(t, vhostuser.Config{
				NewHandler:       func() vhostuser.Handler { return e },
				NumRequestQueues: 2, ThreadPoolSize: tc.pool,
			})
			f := dial(t, b, tc.opts)
			if f.NumQueues() != 3 {
				t.Fatalf("NumQueues = %d, want 3", f.NumQueues())
			}
			const workers, each = 16, 25
			var wg sync.WaitGroup
			errs := make(chan error, workers)
			for w := range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range each {
						msg := fmt.Sprintf("w%d-i%d-%s", w, i, bytes.Repeat([]byte{'x'}, i*37))
						q := 1 + (w+i)%2
						out, err := f.Do(q, [][]byte{[]byte(msg[:3]), []byte(msg[3:])}, len(msg)+10)
						if err != nil {
							errs <- err
							return
						}
						want := []byte(msg)
						for a, z := 0, len(want)-1; a < z; a, z = a+1, z-1 {
							want[a], want[z] = want[z], want[a]
						}
						if !bytes.Equal(out, want) {
							errs <- fmt.Errorf("queue %d: got %q, want %q", q, out, want)
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			if got := e.calls.Load(); got != workers*each {
				t.Errorf("handler saw %d requests, want %d", got, workers*each)
			}
		})
	}
}

func newProtocolServer(t testing.TB) vhostuser.Handler {
	opts := &fuse.MountOptions{Logger: log.New(io.Discard, "", 0)}
	return fuse.NewProtocolServer(fuse.NewDefaultRawFileSystem(), opts)
}

func TestProtocolServerRoundTrips(t *testing.T) {
	checkLeaks(t)
	b := startBackend(t, vhostuser.Config{
		NewHandler:       func() vhostuser.Handler { return newProtocolServer(t) },
		NumRequestQueues: 1, ThreadPoolSize: 2, Tag: "myfs",
	})
	f := dial(t, b, Options{})
	feat, proto := f.Features()
	if feat&wire.FeatureVersion1 == 0 || proto&wire.ProtocolReplyAck == 0 {
		t.Errorf("features %#x protocol %#x", feat, proto)
	}
	initOut, st, err := f.Init(0)
	if err != nil || !st.Ok() {
		t.Fatalf("INIT: %v %v", st, err)
	}
	if initOut.Major != 7 || initOut.Minor < 12 || initOut.MaxWrite == 0 {
		t.Errorf("INIT reply %+v", initOut)
	}
	// DefaultRawFileSystem answers ENOSYS to everything.
	for i := 0; i < 3; i++ {
		if _, st, err := f.GetAttr(1); err != nil || st != fuse.ENOSYS {
			t.Errorf("GETATTR = %v, %v; want ENOSYS", st, err)
		}
	}
	if _, st, err := f.Lookup(1, "x"); err != nil || st != fuse.ENOSYS {
		t.Errorf("LOOKUP = %v, %v; want ENOSYS", st, err)
	}
	if err := f.Forget(1, 1); err != nil {
		t.Errorf("FORGET: %v", err)
	}
	// A truncated request gets no reply bytes, and the queue goes on.
	if out, err := f.Do(RequestQueue, [][]byte{[]byte("short")}, 64); err != nil || len(out) != 0 {
		t.Errorf("short request: %q %v", out, err)
	}
	// A request whose reply buffer is too small gets a FUSE error.
	r, err := f.FUSE(RequestQueue, OpGetattr, 1, make([]byte, 16), nil, 0)
	if err != nil || r.Status() != fuse.EIO {
		t.Errorf("GETATTR without room: %+v %v; want EIO", r, err)
	}
	if _, st, _ := f.GetAttr(1); st != fuse.ENOSYS {
		t.Errorf("GETATTR after errors = %v", st)
	}
	cfg, err := f.GetConfig(0, wire.FSConfigSize)
	if err != nil || string(bytes.TrimRight(cfg[:36], "\x00")) != "myfs" || cfg[36] != 1 {
		t.Errorf("GET_CONFIG = %q %v", cfg, err)
	}
}

func TestDisconnectMidRequest(t *testing.T) {
	checkLeaks(t)
	e := &echo{block: make(chan struct{}), began: make(chan struct{}, 10)}
	conns := atomic.Int64{}
	b := startBackend(t, vhostuser.Config{
		NewHandler: func() vhostuser.Handler {
			if conns.Add(1) == 1 {
				return e
			}
			return newProtocolServer(t)
		},
		ThreadPoolSize: 1,
	})
	f1 := dial(t, b, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan error, 1)
	go func() {
		_, err := f1.DoContext(ctx, RequestQueue, [][]byte{[]byte("hang")}, 16)
		res <- err
	}()
	<-e.began // the back-end is inside the handler
	f1.Close()
	cancel()
	if err := <-res; err == nil {
		t.Error("request on a closed front-end succeeded")
	}
	close(e.block) // the handler returns into memory the front-end dropped

	f2 := dial(t, b, Options{})
	if _, st, err := f2.Init(0); err != nil || !st.Ok() {
		t.Fatalf("INIT on the second connection: %v %v", st, err)
	}
	if _, st, err := f2.GetAttr(1); err != nil || st != fuse.ENOSYS {
		t.Errorf("GETATTR on the second connection: %v %v", st, err)
	}
}

func TestExitOnDisconnect(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		done <- vhostuser.Serve(context.Background(), ln, vhostuser.Config{
			NewHandler: func() vhostuser.Handler { return &echo{} }, ExitOnDisconnect: true, Logger: testLogger(t),
		})
	}()
	f := dial(t, &backend{path: path}, Options{})
	if _, err := f.Do(1, [][]byte{[]byte("ab")}, 2); err != nil {
		t.Fatal(err)
	}
	f.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve still running after the disconnect")
	}
}

func TestMalformedMessages(t *testing.T) {
	checkLeaks(t)
	b := startBackend(t, vhostuser.Config{NewHandler: func() vhostuser.Handler { return &echo{} }})
	f := dial(t, b, Options{})
	ack := func(req wire.Request, payload []byte, fds []int) error { return f.Send(req, payload, fds) }
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	for _, tc := range []struct {
		name    string
		req     wire.Request
		payload []byte
		fds     []int
	}{
		{"SET_FEATURES short", wire.ReqSetFeatures, []byte{1, 2, 3}, nil},
		{"SET_FEATURES unknown bit", wire.ReqSetFeatures, wire.EncodeU64(1 << 60), nil},
		{"unknown request", 99, nil, nil},
		{"vring index", wire.ReqSetVringNum, wire.EncodeVringState(7, 64), nil},
		{"vring num not pow2", wire.ReqSetVringNum, wire.EncodeVringState(1, 100), nil},
		{"num on started ring", wire.ReqSetVringNum, wire.EncodeVringState(1, 64), nil},
		{"mem table fd count", wire.ReqSetMemTable, wire.EncodeMemTable([]virtqueue.RegionLayout{{Size: 4096}, {GuestPhysAddr: 1 << 20, Size: 4096}}), []int{int(r.Fd())}},
		{"mem table unmappable fd", wire.ReqSetMemTable, wire.EncodeMemTable([]virtqueue.RegionLayout{{Size: 4096}}), []int{int(r.Fd())}},
		{"kick without fd flag", wire.ReqSetVringKick, wire.EncodeU64(1 | wire.VringNoFDFlag), nil},
		{"kick fd mismatch", wire.ReqSetVringKick, wire.EncodeU64(1), nil},
		{"call reserved bits", wire.ReqSetVringCall, wire.EncodeU64(1 << 20), nil},
		{"SET_CONFIG", wire.ReqSetConfig, wire.EncodeConfig(0, []byte{1}), nil},
		{"SET_LOG_FD", wire.ReqSetLogFD, nil, []int{int(w.Fd())}},
		{"REM_MEM_REG unknown", wire.ReqRemMemReg, wire.EncodeMemReg(virtqueue.RegionLayout{GuestPhysAddr: 5, Size: 5}), nil},
		{"ENABLE 2", wire.ReqSetVringEnable, wire.EncodeVringState(1, 2), nil},
	} {
		if err := ack(tc.req, tc.payload, tc.fds); err == nil {
			t.Errorf("%s: accepted", tc.name)
		}
	}
	// Requests with replies still reply.
	if p, err := f.Call(wire.ReqGetVringBase, wire.EncodeVringState(200, 0)); err != nil || len(p) != 8 {
		t.Errorf("GET_VRING_BASE bad index: %v %v", p, err)
	}
	if p, err := f.Call(wire.ReqGetConfig, wire.EncodeConfig(30, make([]byte, 20))); err != nil || len(p) != wire.SizeConfigHdr {
		t.Errorf("GET_CONFIG out of range: %v %v", p, err)
	}
	// The device still works.
	if out, err := f.Do(1, [][]byte{[]byte("ok")}, 2); err != nil || string(out) != "ko" {
		t.Errorf("after malformed messages: %q %v", out, err)
	}
}

// TestBadChains has the guest hand the device chains that point outside
// guest memory: each comes back empty and the queue keeps working.
func TestBadChains(t *testing.T) {
	checkLeaks(t)
	e := &echo{}
	b := startBackend(t, vhostuser.Config{NewHandler: func() vhostuser.Handler { return e }, ThreadPoolSize: 1})
	f := dial(t, b, Options{})
	q := f.queues[1]
	for _, bufs := range [][]virtqueue.Buf{
		{{Addr: 0x1000, Len: 8}},
		{{Addr: guestBase + uint64(len(f.mem)) - 4, Len: 8}},
		{{Addr: guestBase, Len: 8, Write: true}, {Addr: guestBase, Len: 8}},
	} {
		out, err := f.submit(context.Background(), q, bufs, nil, span{}, span{}, 0)
		if err != nil || len(out) != 0 {
			t.Errorf("bad chain %+v: %q %v", bufs, out, err)
		}
	}
	if e.calls.Load() != 0 {
		t.Errorf("handler saw %d bad chains", e.calls.Load())
	}
	if out, err := f.Do(1, [][]byte{[]byte("ok")}, 2); err != nil || string(out) != "ko" {
		t.Errorf("after bad chains: %q %v", out, err)
	}
}

// publishRaw makes head available in q's avail ring once more, behind
// the Driver's back, and kicks: what a buggy or hostile driver does when
// it reuses a head before the device returned it. The Driver's own avail
// index is then one behind the ring's, so q takes no more requests.
func (q *queue) publishRaw(head uint16) error {
	q.mu.Lock()
	avail := q.f.guest(q.avail, int(virtqueue.AvailRingBytes(q.size)))
	w := (*uint32)(unsafe.Pointer(&avail[0])) // flags | idx<<16
	word := atomic.LoadUint32(w)
	idx := uint16(word >> 16)
	binary.LittleEndian.PutUint16(avail[4+2*int(idx&(q.size-1)):], head)
	atomic.StoreUint32(w, word&0xffff|uint32(idx+1)<<16) // release: the entry before the index
	q.mu.Unlock()
	var one [8]byte
	binary.LittleEndian.PutUint64(one[:], 1)
	_, err := q.kick.Write(one[:])
	return err
}

// TestHeadReusedWhileInFlight has the driver make a head available again
// while the back-end still holds the first use of it (its handler is
// blocked): the back-end must refuse it and stop the ring, not hand the
// same chain to a second worker (with two workers that would be a data
// race on the request slot; run with -race), and the blocked request must
// finish cleanly afterwards.
func TestHeadReusedWhileInFlight(t *testing.T) {
	checkLeaks(t)
	e := &echo{block: make(chan struct{}), began: make(chan struct{}, 10)}
	var logs lockedBuffer
	logger := slog.New(slog.NewTextHandler(io.MultiWriter(testWriter{t}, &logs), &slog.HandlerOptions{Level: slog.LevelInfo}))
	b := startBackend(t, vhostuser.Config{NewHandler: func() vhostuser.Handler { return e }, ThreadPoolSize: 2, Logger: logger})
	f := dial(t, b, Options{})
	type result struct {
		out []byte
		err error
	}
	res := make(chan result, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go func() {
		out, err := f.DoContext(ctx, 1, [][]byte{[]byte("first")}, 8)
		res <- result{out, err}
	}()
	select {
	case <-e.began:
	case <-time.After(10 * time.Second):
		t.Fatal("first request never reached the handler")
	}
	q := f.queues[1]
	q.mu.Lock()
	if len(q.waiters) != 1 {
		q.mu.Unlock()
		t.Fatalf("%d requests in flight, want 1", len(q.waiters))
	}
	var head uint16
	for h := range q.waiters {
		head = h
	}
	q.mu.Unlock()
	if err := q.publishRaw(head); err != nil {
		t.Fatal(err)
	}
	var unblock sync.Once
	release := func() { unblock.Do(func() { close(e.block) }) }
	defer release() // a failing test must not leave the handlers blocked
	want := fmt.Sprintf("driver made head %d available again before it was used", head)
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(logs.String(), want); {
		select {
		case <-e.began:
			t.Fatalf("handler called a second time for head %d while its first use is in flight", head)
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("back-end did not log %q", want)
		}
	}
	if !strings.Contains(logs.String(), "driver broke the ring") {
		t.Errorf("ring not marked broken:\n%s", logs.String())
	}
	select {
	case <-e.began:
		t.Fatalf("handler called a second time for head %d", head)
	case <-time.After(200 * time.Millisecond):
	}
	release()
	// The first use completes (its reply) or fails with the queue; either
	// way without a hang or a crash, and the handler ran once.
	select {
	case r := <-res:
		if r.err == nil && string(r.out) != "tsrif" {
			t.Errorf("first request: reply %q, want \"tsrif\"", r.out)
		}
		t.Logf("first request after the reuse: %q %v", r.out, r.err)
	case <-time.After(10 * time.Second):
		t.Fatal("first request did not return after the handler was unblocked")
	}
	if n := e.calls.Load(); n != 1 {
		t.Errorf("handler called %d times, want 1", n)
	}
}

// TestStopQueueReportsIndex checks GET_VRING_BASE after requests: the ring
// stops at the number of requests the driver made available.
func TestStopQueueReportsIndex(t *testing.T) {
	checkLeaks(t)
	b := startBackend(t, vhostuser.Config{NewHandler: func() vhostuser.Handler { return &echo{} }, ThreadPoolSize: 2})
	f := dial(t, b, Options{})
	for i := 0; i < 5; i++ {
		if _, err := f.Do(1, [][]byte{[]byte("x")}, 1); err != nil {
			t.Fatal(err)
		}
	}
	base, err := f.StopQueue(1)
	if err != nil || base != 5 {
		t.Errorf("GET_VRING_BASE = %d %v, want 5", base, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := f.DoContext(ctx, 1, [][]byte{[]byte("x")}, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("request on a stopped ring: %v", err)
	}
}

// TestMemoryTableSwapMidFlight replaces the memory table (as QEMU does on
// memory hotplug) while requests are inside the handler: they complete
// into the old mapping, which stays valid, and the rings follow the new one.
func TestMemoryTableSwapMidFlight(t *testing.T) {
	checkLeaks(t)
	e := &echo{block: make(chan struct{}), began: make(chan struct{}, 100)}
	b := startBackend(t, vhostuser.Config{NewHandler: func() vhostuser.Handler { return e }, ThreadPoolSize: 4})
	f := dial(t, b, Options{})
	const n = 4
	type result struct {
		out []byte
		err error
	}
	res := make(chan result, n)
	for i := range n {
		go func() {
			out, err := f.Do(1, [][]byte{[]byte(fmt.Sprintf("req%d", i))}, 8)
			res <- result{out, err}
		}()
	}
	for range n {
		<-e.began
	}
	region := virtqueue.RegionLayout{GuestPhysAddr: guestBase, Size: uint64(len(f.mem)), UserAddr: uint64(uintptrOf(f.mem))}
	fd, _ := rawFD(f.memfd)
	if err := f.Send(wire.ReqSetMemTable, wire.EncodeMemTable([]virtqueue.RegionLayout{region}), []int{fd}); err != nil {
		t.Fatalf("SET_MEM_TABLE mid-flight: %v", err)
	}
	// A second region at a higher address, then removed again.
	extra := virtqueue.RegionLayout{GuestPhysAddr: guestBase + 1<<32, Size: 4096, UserAddr: 0x10000, MmapOffset: 0}
	if err := f.Send(wire.ReqAddMemReg, wire.EncodeMemReg(extra), []int{fd}); err != nil {
		t.Fatalf("ADD_MEM_REG: %v", err)
	}
	if err := f.Send(wire.ReqRemMemReg, wire.EncodeMemReg(extra), nil); err != nil {
		t.Fatalf("REM_MEM_REG: %v", err)
	}
	close(e.block)
	seen := map[string]bool{}
	for range n {
		r := <-res
		if r.err != nil {
			t.Fatal(r.err)
		}
		seen[string(r.out)] = true
	}
	for i := range n {
		want := []byte(fmt.Sprintf("req%d", i))
		for a, z := 0, len(want)-1; a < z; a, z = a+1, z-1 {
			want[a], want[z] = want[z], want[a]
		}
		if !seen[string(want)] {
			t.Errorf("no reply %q among %v", want, seen)
		}
	}
	if out, err := f.Do(1, [][]byte{[]byte("ab")}, 2); err != nil || string(out) != "ba" {
		t.Errorf("after swap: %q %v", out, err)
	}
}

// BenchmarkGetAttr measures GETATTR round trips through the whole stack
// (front-end, vhost-user back-end, go-fuse ProtocolServer), with as many
// requests in flight as GOMAXPROCS*4.
func BenchmarkGetAttr(b *testing.B) {
	be := startBackend(b, vhostuser.Config{
		NewHandler:       func() vhostuser.Handler { return newProtocolServer(b) },
		NumRequestQueues: 1, ThreadPoolSize: 4,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	f := dial(b, be, Options{QueueSize: 256, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if _, st, err := f.Init(0); err != nil || !st.Ok() {
		b.Fatal(st, err)
	}
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, _, err := f.GetAttr(1); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkEcho64K moves 64 KiB each way per request.
func BenchmarkEcho64K(b *testing.B) {
	be := startBackend(b, vhostuser.Config{
		NewHandler: func() vhostuser.Handler { return &echo{} }, ThreadPoolSize: 2,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	f := dial(b, be, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	buf := bytes.Repeat([]byte("z"), 64<<10)
	b.SetBytes(2 * int64(len(buf)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := f.Do(1, [][]byte{buf}, len(buf)); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// TestDirtyLog checks migration logging: once enabled, the pages the
// back-end wrote (reply buffer, used ring) are marked, others are not.
func TestDirtyLog(t *testing.T) {
	checkLeaks(t)
	b := startBackend(t, vhostuser.Config{NewHandler: func() vhostuser.Handler { return &echo{} }, ThreadPoolSize: 1})
	f := dial(t, b, Options{})
	if out, err := f.Do(1, [][]byte{[]byte("before")}, 6); err != nil || string(out) != "erofeb" {
		t.Fatal(out, err)
	}
	l, err := f.EnableDirtyLog()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, c := range l.Bitmap {
		if c != 0 {
			t.Fatal("bits set before any write")
		}
	}
	// The reply lands in the first free heap chunk.
	s, err := f.allocate(1)
	if err != nil {
		t.Fatal(err)
	}
	f.free([]span{s})
	out, err := f.Do(1, [][]byte{bytes.Repeat([]byte("a"), 10000)}, 10000)
	if err != nil || len(out) != 10000 {
		t.Fatal(len(out), err)
	}
	q1 := f.queues[1]
	if !l.PageDirty(q1.used) {
		t.Error("used ring page of queue 1 not logged")
	}
	if l.PageDirty(f.queues[HiprioQueue].used) {
		t.Error("used ring of the idle hiprio queue logged")
	}
	if l.PageDirty(q1.desc) {
		t.Error("descriptor table logged although the device never writes it")
	}
	// The reply buffer follows the 10000-byte request buffer in the heap.
	replyStart := guestBase + uint64(s.off) + 10048
	for gpa := replyStart; gpa < replyStart+10000; gpa += 4096 {
		if !l.PageDirty(gpa) {
			t.Errorf("reply page %#x not logged", gpa)
		}
	}
}

// TestResetDeviceKeepsNegotiation mirrors QEMU 10 on a guest reset:
// RESET_DEVICE, then memory and rings again without renegotiating
// protocol features.
func TestResetDeviceKeepsNegotiation(t *testing.T) {
	checkLeaks(t)
	b := startBackend(t, vhostuser.Config{NewHandler: func() vhostuser.Handler { return &echo{} }})
	f := dial(t, b, Options{})
	if _, err := f.Do(1, [][]byte{[]byte("x")}, 1); err != nil {
		t.Fatal(err)
	}
	if err := f.SetU64(wire.ReqResetDevice, 0); err != nil {
		t.Fatalf("RESET_DEVICE: %v", err)
	}
	if st, err := f.GetU64(wire.ReqGetStatus); err != nil || st != 0 {
		t.Errorf("status after reset = %d, %v", st, err)
	}
	region := virtqueue.RegionLayout{GuestPhysAddr: guestBase + 1<<32, Size: 4096, UserAddr: 0x10000}
	fd, _ := rawFD(f.memfd)
	if err := f.Send(wire.ReqAddMemReg, wire.EncodeMemReg(region), []int{fd}); err != nil {
		t.Errorf("ADD_MEM_REG after reset: %v", err)
	}
	if base, err := f.StopQueue(1); err != nil || base != 0 {
		t.Errorf("GET_VRING_BASE of a reset ring = %d, %v", base, err)
	}
}

// TestHungRequestAbandonedOnDisconnect: a request the filesystem never
// answers must not keep the daemon from serving the next connection.
func TestHungRequestAbandonedOnDisconnect(t *testing.T) {
	checkLeaks(t)
	block := make(chan struct{})
	t.Cleanup(func() { close(block) }) // runs before the leak check
	conns := atomic.Int64{}
	b := startBackend(t, vhostuser.Config{
		NewHandler: func() vhostuser.Handler {
			if conns.Add(1) == 1 {
				return &echo{block: block}
			}
			return newProtocolServer(t)
		},
		ThreadPoolSize: 1, AbandonAfter: 100 * time.Millisecond,
	})
	f1 := dial(t, b, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	// Two requests: one inside the handler, one queued behind it.
	go f1.DoContext(ctx, RequestQueue, [][]byte{[]byte("hang")}, 16)
	f1.DoContext(ctx, RequestQueue, [][]byte{[]byte("hang")}, 16)
	f1.Close()
	start := time.Now()
	f2 := dial(t, b, Options{})
	if _, st, err := f2.Init(0); err != nil || !st.Ok() {
		t.Fatalf("INIT on the second connection: %v %v", st, err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("second connection served after %v", d)
	}
}

// TestTruncatedGuestMemory: a front-end that shrinks its memory file under
// the back-end makes guest memory accesses fault. The faulting request
// fails; the daemon survives and serves the next connection.
func TestTruncatedGuestMemory(t *testing.T) {
	checkLeaks(t)
	b := startBackend(t, vhostuser.Config{NewHandler: func() vhostuser.Handler { return &echo{} }, ThreadPoolSize: 1, AbandonAfter: 100 * time.Millisecond})
	f := dial(t, b, Options{MemSize: 8 << 20})
	if err := f.memfd.Truncate(1 << 20); err != nil {
		t.Fatal(err)
	}
	s, err := f.allocate(16)
	if err != nil {
		t.Fatal(err)
	}
	copy(f.mem[s.off:], "request")
	bufs := []virtqueue.Buf{
		{Addr: guestBase + uint64(s.off), Len: 7},
		{Addr: guestBase + 6<<20, Len: 4096, Write: true}, // past the new end of file
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	// The fault becomes a panic in the handler, answered like any failed
	// request (nothing written), or, had it struck outside the handler,
	// a stopped ring (no answer).
	if out, err := f.submit(ctx, f.queues[1], bufs, nil, span{}, span{}, 0); len(out) != 0 || (err != nil && !errors.Is(err, context.DeadlineExceeded)) {
		t.Errorf("request into truncated memory: %q %v", out, err)
	}
	f.Close()
	f2 := dial(t, b, Options{})
	if out, err := f2.Do(1, [][]byte{[]byte("ab")}, 2); err != nil || string(out) != "ba" {
		t.Errorf("second connection: %q %v", out, err)
	}
}

// TestHandover hands a live connection from one back-end to another (as
// an exec-based upgrade would, with the state marshalled) while the
// front-end keeps requests in flight: the front-end must not notice.
func TestHandover(t *testing.T) {
	checkLeaks(t)
	path := filepath.Join(t.TempDir(), "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	eA, eB := &echo{}, &echo{}
	conns := make(chan *vhostuser.Connection, 2)
	cfg := vhostuser.Config{
		NumRequestQueues: 2, ThreadPoolSize: 2, Logger: testLogger(t),
		OnConnect: func(c *vhostuser.Connection) { conns <- c },
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	servedA := make(chan error, 1)
	cfgA := cfg
	cfgA.NewHandler = func() vhostuser.Handler { return eA }
	go func() { servedA <- vhostuser.Serve(ctx, ln, cfgA) }()

	f := dial(t, &backend{path: path}, Options{})
	connA := <-conns
	f.Init(0) // the echo reply is no INIT reply; only the request matters
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				msg := fmt.Sprintf("w%d-%d", w, i)
				out, err := f.Do(1+(w%2), [][]byte{[]byte(msg)}, len(msg))
				want := []byte(msg)
				for a, z := 0, len(want)-1; a < z; a, z = a+1, z-1 {
					want[a], want[z] = want[z], want[a]
				}
				if err != nil || !bytes.Equal(out, want) {
					errs <- fmt.Errorf("%s: %q %v", msg, out, err)
					return
				}
			}
		}()
	}
	for eA.calls.Load() < 50 {
		time.Sleep(time.Millisecond)
	}
	hctx, hcancel := context.WithTimeout(ctx, 10*time.Second)
	st, files, err := connA.Handover(hctx)
	hcancel()
	if err != nil {
		t.Fatalf("Handover: %v", err)
	}
	if err := <-servedA; !errors.Is(err, vhostuser.ErrHandedOver) {
		t.Errorf("Serve A returned %v", err)
	}
	b, err := st.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	st2, err := vhostuser.UnmarshalConnectionState(b, len(files))
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range st2.Vrings[1:] {
		if !v.Started || len(v.InFlight) != 0 {
			t.Errorf("handed-over vring %+v", v)
		}
	}
	callsA := eA.calls.Load()
	time.Sleep(20 * time.Millisecond) // the front-end queues up work meanwhile
	servedB := make(chan error, 1)
	cfgB := cfg
	cfgB.NewHandler = func() vhostuser.Handler { return eB }
	go func() { servedB <- vhostuser.ResumeConn(ctx, st2, files, cfgB) }()
	for eB.calls.Load() < 50 {
		select {
		case err := <-errs:
			t.Fatal(err)
		case err := <-servedB:
			t.Fatalf("ResumeConn returned early: %v", err)
		case <-time.After(time.Millisecond):
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if eA.calls.Load() != callsA {
		t.Errorf("back-end A served %d requests after the handover", eA.calls.Load()-callsA)
	}
	if eA.inits.Load() != 1 || eB.inits.Load() != 1 || len(st2.FUSEInit) == 0 {
		t.Errorf("FUSE_INIT seen by A %d times, replayed into B %d times (state has %d bytes)", eA.inits.Load(), eB.inits.Load(), len(st2.FUSEInit))
	}
	// Control messages go to B now.
	if _, err := f.GetU64(wire.ReqGetFeatures); err != nil {
		t.Errorf("GET_FEATURES after handover: %v", err)
	}
	f.Close()
	if err := <-servedB; err != nil {
		t.Errorf("ResumeConn: %v", err)
	}
}
