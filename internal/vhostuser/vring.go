package vhostuser

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/govirtiofsd/govirtiofsd/internal/vhostuser/wire"
	"github.com/govirtiofsd/govirtiofsd/internal/virtqueue"
	"github.com/govirtiofsd/govirtiofsd/internal/yield"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// vring is one virtqueue of a connection.
//
// Life cycle: configured by SET_VRING_NUM/ADDR/BASE, started by
// SET_VRING_KICK, stopped by GET_VRING_BASE (or a reset). Requests are
// taken only while it is started and enabled (SET_VRING_ENABLE; rings
// start enabled when VHOST_USER_F_PROTOCOL_FEATURES was not negotiated).
type vring struct {
	d     *device
	index int
	log   *slog.Logger

	// Configuration, touched only by the connection goroutine.
	num     uint16
	addr    wire.VringAddr
	addrSet bool
	base    uint16   // next avail index, valid while stopped
	kick    *eventFD // see eventFD
	errFD   *os.File
	running *runner // nil while stopped

	enabled atomic.Bool

	mu sync.Mutex
	// q is the ring while started, else nil.
	q *virtqueue.Queue // +checklocks:mu
	// cur is the runner of the current start, nil while stopped;
	// completions from an older runner are dropped.
	cur *runner // +checklocks:mu
	// inflight marks, by head, the chains popped and not yet returned
	// (for ConnectionState; a successor would re-run them).
	inflight []bool // +checklocks:mu
	// usedIdx is the used index when the ring last stopped.
	usedIdx uint16 // +checklocks:mu
	// badChains counts refused chains, to rate-limit their log lines.
	badChains uint64 // +checklocks:mu
	// call is the eventfd to interrupt the driver, or nil.
	call *eventFD // +checklocks:mu
	// broken is set when the driver broke the ring protocol; the ring
	// then takes no more requests until it is restarted.
	broken bool // +checklocks:mu
	// logUsed and logAddr say whether and where (guest physical) to log
	// used-ring writes (SET_VRING_ADDR's VHOST_VRING_F_LOG).
	logUsed bool   // +checklocks:mu
	logAddr uint64 // +checklocks:mu
}

// runner is the goroutines serving a started ring.
type runner struct {
	stopping  atomic.Bool
	abandoned chan struct{} // closed when stop stops waiting for it
	done      chan struct{} // closed when the kick goroutine returns
	work      chan *request // nil: requests are served inline
	workers   sync.WaitGroup
	// slots holds one request per descriptor head: a head is in flight at
	// most once (pop refuses a driver that reuses one early), so a ring
	// reads its chains into these without allocating.
	slots []request
	// wake interrupts the kick goroutine's wait (stop, or a new hiprio
	// ring to watch); the goroutine closes it when it returns.
	wake *os.File

	// helped: this is a run of the hiprio ring served by the request
	// rings' threads (see device.hiprio), with no goroutine of its own.
	helped bool
	// wakeFD is wake's descriptor, which request threads poll on a
	// helped run (valid until the run's last user let go of it).
	wakeFD int
	// kickFD is a duplicate of the kick eventfd, owned by a helped run,
	// which the request threads poll; closed when the last of them let
	// go of the run after it stopped.
	kickFD int
	// users counts the request threads polling or serving a helped run.
	users atomic.Int32

	// yield keeps the kick goroutine, which serves requests inline
	// without ever parking, from being preempted by the runtime's sysmon;
	// only that goroutine touches it.
	yield yield.Yielder
}

// request is one popped chain. It holds a reference on the memory table
// its buffers live in until it completes.
type request struct {
	chain virtqueue.Chain
	mem   *virtqueue.Memory
	r     *runner // the ring run it was popped in
}

func newVring(d *device, index int) *vring {
	return &vring{d: d, index: index, log: d.log.With("vring", index)}
}

func (v *vring) started() bool { return v.running != nil }

func (v *vring) setNum(n uint32) error {
	if v.started() {
		return errors.New("SET_VRING_NUM on a started ring")
	}
	if n == 0 || n > virtqueue.MaxQueueSize || n&(n-1) != 0 {
		return fmt.Errorf("queue size %d is not a power of two in [1, %d]", n, virtqueue.MaxQueueSize)
	}
	v.num = uint16(n)
	return nil
}

func (v *vring) setBase(n uint32) error {
	if v.started() {
		return errors.New("SET_VRING_BASE on a started ring")
	}
	if n > 0xffff {
		return fmt.Errorf("split ring base %#x has more than 16 bits", n)
	}
	v.base = uint16(n)
	return nil
}

func (v *vring) setAddr(a wire.VringAddr) error {
	if a.Flags&^wire.VringAddrFLog != 0 {
		return fmt.Errorf("vring address flags %#x", a.Flags)
	}
	if v.started() {
		// QEMU re-sends the addresses to toggle used-ring logging.
		if a.DescUser != v.addr.DescUser || a.AvailUser != v.addr.AvailUser || a.UsedUser != v.addr.UsedUser {
			return errors.New("SET_VRING_ADDR moves a started ring")
		}
	}
	v.addr, v.addrSet = a, true
	v.mu.Lock()
	v.logUsed, v.logAddr = a.Flags&wire.VringAddrFLog != 0, a.Log
	v.mu.Unlock()
	return nil
}

func (v *vring) setKick(f *eventFD) error {
	wasRunning := v.started()
	v.stop(0)
	if v.kick != nil {
		v.kick.Close()
	}
	v.kick = f
	if err := v.start(); err != nil {
		if wasRunning {
			v.log.Error("vring could not restart with the new kick fd", "err", err)
		}
		return err
	}
	return nil
}

func (v *vring) setCall(f *eventFD) {
	v.mu.Lock()
	old := v.call
	v.call = f
	v.mu.Unlock()
	if old != nil {
		old.Close()
	}
	// An interrupt raised while the front-end swapped fds (it does so
	// when the guest masks a vector) must not be lost; a spurious one is
	// harmless.
	if f != nil && v.started() {
		f.signal()
	}
}

func (v *vring) setErr(f *os.File) {
	if v.errFD != nil {
		v.errFD.Close()
	}
	v.errFD = f
}

func (v *vring) setEnabled(e bool) {
	v.enabled.Store(e)
	if e && v.started() {
		v.kick.signal() // wake the kick goroutine to look at the ring
	}
}

// signal adds one to an eventfd.
func signal(f *os.File) {
	var one [8]byte
	binary.LittleEndian.PutUint64(one[:], 1)
	_, _ = f.Write(one[:]) // EAGAIN means the counter is saturated: still signalled
}

// start starts the ring if it is fully configured.
func (v *vring) start() error {
	if v.kick == nil || !v.addrSet || v.num == 0 {
		return fmt.Errorf("vring %d not configured (num %d, address set %v)", v.index, v.num, v.addrSet)
	}
	mem := v.d.memory()
	if mem == nil {
		return errors.New("ring started before SET_MEM_TABLE")
	}
	defer mem.Release()
	f := virtqueue.Features{
		IndirectDesc: v.d.features&wire.FeatureRingIndirectDesc != 0,
		EventIdx:     v.d.features&wire.FeatureRingEventIdx != 0,
	}
	l := virtqueue.Layout{Size: v.num, DescUser: v.addr.DescUser, AvailUser: v.addr.AvailUser, UsedUser: v.addr.UsedUser}
	q, err := virtqueue.NewQueue(mem, l, f, v.base)
	if err != nil {
		return fmt.Errorf("vring %d: %w", v.index, err)
	}
	wfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		q.Close()
		return fmt.Errorf("vring %d: wake eventfd: %w", v.index, err)
	}
	r := &runner{done: make(chan struct{}), abandoned: make(chan struct{}), slots: make([]request, q.Size()),
		wake: os.NewFile(uintptr(wfd), "vring-wake"), wakeFD: wfd, kickFD: -1}
	if v.index == 0 && v.d.cfg.ThreadPoolSize == 0 {
		kfd, err := dupCloexec(v.kick.fd)
		if err != nil {
			q.Close()
			r.wake.Close()
			return fmt.Errorf("vring %d: dup kick eventfd: %w", v.index, err)
		}
		r.helped, r.kickFD = true, kfd
	}
	v.mu.Lock()
	v.q, v.cur, v.broken = q, r, false
	v.inflight = make([]bool, q.Size())
	v.mu.Unlock()
	if v.d.features&wire.FeatureProtocolFeatures == 0 {
		v.enabled.Store(true)
	}
	if n := v.d.cfg.ThreadPoolSize; n > 0 {
		r.work = make(chan *request)
		r.workers.Add(n)
		for range n {
			go v.worker(r)
		}
	}
	v.running = r
	if r.helped {
		v.d.hiprio.Store(r)
		v.d.wakeRequestRings()
		return nil
	}
	go v.loop(r, v.kick)
	return nil
}

// wakeRequestRings interrupts the kick waits of the running request rings
// so that they start watching a new hiprio run. Called by the connection
// goroutine, which owns vring.running.
func (d *device) wakeRequestRings() {
	for _, v := range d.vrings[1:] {
		if r := v.running; r != nil {
			signal(r.wake) // fails harmlessly if the ring goroutine closed it
		}
	}
}

// acquireHiprio returns the running hiprio ring's run if it is served by
// the request threads, with a use the caller must drop (users.Add(-1));
// nil if there is none or it is stopping.
func (d *device) acquireHiprio() *runner {
	r := d.hiprio.Load()
	if r == nil {
		return nil
	}
	r.users.Add(1)
	if r.stopping.Load() {
		r.users.Add(-1)
		return nil
	}
	return r
}

// serveHiprio serves what the driver put on the hiprio ring (FORGET,
// BATCH_FORGET, INTERRUPT) on the calling request thread.
func (d *device) serveHiprio(r *runner) {
	hv := d.vrings[0]
	for {
		req, _, err := hv.pop(r, false)
		if err != nil {
			hv.fail(err)
			return
		}
		if req == nil {
			return
		}
		hv.serve(req)
	}
}

// stop stops the ring, waits for its in-flight requests and records the
// next avail index in v.base. With abandonAfter > 0 it gives up waiting
// after that long (a disconnect or a device reset, where nobody will read
// the replies): the stragglers finish into memory they still hold a
// reference on, and their completions are dropped because the ring they
// came from is gone.
func (v *vring) stop(abandonAfter time.Duration) {
	r := v.running
	if r == nil {
		return
	}
	r.stopping.Store(true)
	signal(r.wake) // fails harmlessly if the kick goroutine already closed it
	if r.helped {
		// The request threads let go of the run when they see it
		// stopping (r.wake wakes those that wait); the last one out
		// has completed every chain they popped from it.
		v.d.hiprio.CompareAndSwap(r, nil)
		go func() {
			for r.users.Load() != 0 {
				time.Sleep(20 * time.Microsecond)
			}
			unix.Close(r.kickFD)
			r.wake.Close()
			close(r.done)
		}()
	}
	finished := make(chan struct{})
	go func() {
		<-r.done
		r.workers.Wait()
		close(finished)
	}()
	start := time.Now()
	tick := 5 * time.Second
	if abandonAfter > 0 {
		tick = min(tick, abandonAfter)
	}
wait:
	for {
		select {
		case <-finished:
			break wait
		case <-time.After(tick):
			if abandonAfter > 0 && time.Since(start) >= abandonAfter {
				v.log.Warn("vring stopped with requests still in the filesystem; their replies will be dropped")
				close(r.abandoned)
				break wait
			}
			v.log.Warn("vring stop is waiting for in-flight requests", "seconds", time.Since(start).Round(time.Second))
		}
	}
	v.mu.Lock()
	v.base = v.q.LastAvail()
	v.usedIdx = v.q.UsedIdx()
	v.q.Close()
	v.q, v.cur, v.inflight = nil, nil, nil
	v.mu.Unlock()
	v.running = nil
}

// getBase handles GET_VRING_BASE: stop the ring and report its index.
func (v *vring) getBase() uint16 {
	v.stop(0)
	if v.kick != nil {
		v.kick.Close()
		v.kick = nil
	}
	return v.base
}

// reset stops the ring and forgets its configuration and fds.
func (v *vring) reset() {
	v.stop(v.d.cfg.AbandonAfter)
	if v.kick != nil {
		v.kick.Close()
	}
	if v.errFD != nil {
		v.errFD.Close()
	}
	v.kick, v.errFD = nil, nil
	v.setCall(nil)
	v.num, v.addr, v.addrSet, v.base = 0, wire.VringAddr{}, false, 0
	v.mu.Lock()
	v.logUsed, v.logAddr = false, 0
	v.mu.Unlock()
	v.enabled.Store(false)
}

// remap moves a started ring to a new memory table.
func (v *vring) remap(mem *virtqueue.Memory) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.q == nil {
		return
	}
	if err := v.q.Remap(mem); err != nil {
		v.log.Warn("ring not in the new memory table; it keeps the old mapping", "err", err)
	}
}

// loop is the kick goroutine: drain the ring, wait for a kick, repeat.
func (v *vring) loop(r *runner, kick *eventFD) {
	// A front-end that truncates a memory file under us makes guest
	// memory accesses fault; turn that into a panic recoverRing catches.
	debug.SetPanicOnFault(true)
	defer close(r.done)
	if r.work != nil {
		defer close(r.work)
	}
	defer v.recoverRing()
	defer r.wake.Close()
	kfd, wfd := kick.fd, r.wakeFD
	if kfd < 0 || wfd < 0 {
		v.log.Error("kick or wake eventfd unusable; ring stops")
		return
	}
	// quiet: this thread polls its ring while requests queue up (see
	// poll), so it leaves the driver's kicks off when the ring runs dry
	// and turns them back on (rearm) only before it sleeps.
	quiet := r.work == nil && v.index > 0 && v.d.cfg.PollMax > 0
	polled := false
	window := v.d.cfg.PollMax // how long poll spins, adapted by pollWindow
	for !r.stopping.Load() {
		if v.enabled.Load() {
			queued, ok := v.drain(r, quiet)
			if !ok {
				return
			}
			if quiet {
				if (queued || polled) && window > 0 && v.poll(r, window) {
					polled = true
					continue
				}
				polled = false
				if v.rearm(r) {
					continue
				}
			}
		}
		if r.stopping.Load() {
			return
		}
		var slept time.Time
		if quiet {
			slept = time.Now()
		}
		if err := v.wait(r, kfd, wfd); err != nil {
			v.log.Error("waiting for a kick; ring stops", "err", err)
			return
		}
		if quiet {
			window = pollWindow(window, time.Since(slept), v.d.cfg.PollMax)
		}
	}
}

// wait waits for a kick of the ring, and on a request ring served inline
// also for one of the hiprio ring, which it then serves on this thread.
func (v *vring) wait(r *runner, kfd, wfd int) error {
	var hp *runner
	if v.index > 0 && r.work == nil {
		if hp = v.d.acquireHiprio(); hp != nil {
			defer hp.users.Add(-1)
			// Served before sleeping: chains put there while this
			// thread was busy, or before it started.
			v.d.serveHiprio(hp)
		}
	}
	if err := waitKick(r, kfd, wfd, hp); err != nil {
		return err
	}
	if hp != nil {
		v.d.serveHiprio(hp)
	}
	return nil
}

// waitKick blocks in poll(2) until the driver kicks (or stop wakes us)
// and consumes the kick.
//
// Why poll in a plain blocking syscall and not a read through Go's
// netpoller: parking the goroutine and waking it through epoll costs the
// runtime more than the request it waits for (GETATTR with one request
// in flight: 8.2 -> 4.9 us of daemon CPU per request, 59k -> 82k
// requests/s on a 2-core VM; no worse at 4 or 16 in flight). The ring
// goroutine keeps its thread while it waits, as a virtiofsd ring thread
// does.
//
// kfd and wfd stay open while this runs: the kick fd is closed only after
// stop, which wakes us through wfd first, and wfd only by the caller.
//
// With hp (a hiprio run served by this thread) it also waits for hp's kick
// and stop, and consumes hp's kick. A wake that is not a stop (a new
// hiprio run to watch) is consumed too.
func waitKick(r *runner, kfd, wfd int, hp *runner) error {
	fds := [4]unix.PollFd{{Fd: int32(kfd), Events: unix.POLLIN}, {Fd: int32(wfd), Events: unix.POLLIN}}
	n := 2
	if hp != nil {
		fds[2] = unix.PollFd{Fd: int32(hp.kickFD), Events: unix.POLLIN}
		fds[3] = unix.PollFd{Fd: int32(hp.wakeFD), Events: unix.POLLIN}
		n = 4
	}
	for {
		_, err := unix.Poll(fds[:n], -1)
		if err == nil {
			break
		}
		if err != unix.EINTR {
			return fmt.Errorf("poll kick eventfd: %w", err)
		}
	}
	if r.stopping.Load() {
		return nil
	}
	var buf [8]byte
	if _, err := unix.Read(kfd, buf[:]); err != nil && err != unix.EAGAIN {
		return fmt.Errorf("read kick eventfd: %w", err)
	}
	if fds[1].Revents&unix.POLLIN != 0 {
		_, _ = unix.Read(wfd, buf[:])
	}
	if hp != nil && fds[2].Revents&unix.POLLIN != 0 {
		if _, err := unix.Read(hp.kickFD, buf[:]); err != nil && err != unix.EAGAIN {
			return fmt.Errorf("read hiprio kick eventfd: %w", err)
		}
	}
	return nil
}

// rawFD returns f's descriptor without switching it to blocking mode (as
// f.Fd would), or -1.
func rawFD(f *os.File) int {
	fd := -1
	if rc, err := f.SyscallConn(); err == nil {
		rc.Control(func(u uintptr) { fd = int(u) })
	}
	return fd
}

// drain serves every available chain. It returns false if the ring broke.
//
// Served inline, each completion is published and, if the driver asks for
// it, signalled at once: the driver refills the ring while the rest are
// served. (Signalling once per pass over the ring instead made GETATTR of
// 10k nodes at 16 in flight 142k instead of 208k requests/s and cost more
// CPU per request: the driver sat idle while the ring thread worked
// through the batch, then the ring thread while the driver refilled it.)
//
// quiet leaves the driver's kicks off when the ring runs dry (the caller
// polls, then rearms). queued reports whether a chain was already waiting
// behind one it took: requests queue up, the driver has more than one in
// flight.
func (v *vring) drain(r *runner, quiet bool) (queued, ok bool) {
	for !r.stopping.Load() {
		req, more, err := v.pop(r, quiet)
		if err != nil {
			v.fail(err)
			return queued, false
		}
		if req == nil {
			return queued, true
		}
		queued = queued || more
		if r.work != nil {
			select {
			case r.work <- req:
			case <-r.abandoned:
				req.mem.Release()
				return queued, true
			}
			continue
		}
		v.serve(req)
		v.helpHiprio()
		r.yield.Served() // see package yield
	}
	return queued, true
}

// poll spins on the ring for up to Config.PollMax and reports whether the
// driver published a chain meanwhile (on it, or on the hiprio ring, which
// it then served). The ring thread polls after a pass
// in which requests queued up (one was waiting behind another), and goes
// on polling while polls find requests; the driver's kicks stay off
// meanwhile (drain quiet), so a request costs the driver no kick and this
// thread no sleep and wake-up.
//
// Why: with several requests in flight the ring runs dry for a few µs at
// a time while the driver turns completions into new requests. Sleeping
// in poll(2) through such a gap costs the driver a kick and this thread a
// wake-up, often on the other core, and on a 2-core host that took the
// driver's CPU: GETATTR of 10k nodes (bench, 2 interleaved runs), 4 in
// flight 62-72k -> 105-114k requests/s, 16 in flight 186-215k ->
// 278-378k (the Rust virtiofsd 239-397k), with less daemon CPU per
// request (5.9-6.6 -> 4.4-4.6 µs, 2.2-2.7 -> 1.7-2.0); CREATE, MKDIR,
// READ, WRITE and the recorded workload unchanged within noise.
// One request at a time never queues, so such a ring never polls: there
// the gap is the driver's whole turnaround, and spinning through it took
// the core the driver was woken on (GETATTR at 1 in flight: 26k instead
// of 31-37k requests/s, 15 instead of 11-12 µs of daemon CPU). An idle
// ring polls at most once, for PollMax. QEMU's IOThreads poll the same
// way (poll-max-ns).
//
// How long it spins adapts, as QEMU's does (pollWindow): a ring whose
// requests come further apart than PollMax (each taking long to serve,
// so a few in flight leave long gaps) stops spinning for them.
func (v *vring) poll(r *runner, window time.Duration) bool {
	t0 := time.Now()
	for {
		v.mu.Lock()
		ok := v.cur == r && !v.broken && v.q.HasAvailable()
		v.mu.Unlock()
		// The hiprio ring too: its kick is not watched while this
		// thread spins, and a driver may wait for its FORGET to come
		// back before it sends the next request.
		if ok || v.helpHiprio() {
			return true
		}
		if r.stopping.Load() || !v.enabled.Load() || time.Since(t0) >= window {
			return false
		}
	}
}

// minPollWindow is where a poll window that was shrunk to nothing starts
// growing again.
const minPollWindow = 2 * time.Microsecond

// idleSleep: a sleep longer than this is the driver going quiet, which
// says nothing about the gaps between its requests when it is busy (the
// window would otherwise shrink at each pause and be small when the next
// burst comes).
const idleSleep = time.Millisecond

// pollWindow adapts the poll window after the ring thread slept for slept:
// a sleep longer than limit means spinning would not have caught the
// request that ended it, so the window halves (to nothing below
// minPollWindow); a shorter one means a longer spin might have, so it
// doubles, up to limit.
func pollWindow(window, slept, limit time.Duration) time.Duration {
	if slept > idleSleep {
		return window // the driver went quiet: no news about its gaps
	}
	if slept > limit {
		if window /= 2; window < minPollWindow {
			return 0
		}
		return window
	}
	if window < minPollWindow {
		return min(minPollWindow, limit)
	}
	return min(2*window, limit)
}

// rearm turns the driver's kicks back on before the thread sleeps and
// reports whether a chain arrived meanwhile (drain again).
func (v *vring) rearm(r *runner) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.cur != r || v.broken || !v.enabled.Load() {
		return false
	}
	return v.q.EnableNotification()
}

// helpHiprio serves, between two requests of a busy request ring, the
// FORGETs and INTERRUPTs the driver put on the hiprio ring meanwhile.
//
// Why the request threads serve the hiprio ring, rather than a goroutine
// of its own: the daemon runs one P per request ring (see GOMAXPROCS in
// cmd/govirtiofsd), and a second goroutine waking from its own poll(2)
// takes that P from the request thread's pending syscall or waits for it;
// each FORGET then cost thread switches and, at one request in flight, a
// wait for the runtime's sysmon to hand the P back (tens of µs).
// CREATE+RELEASE+UNLINK+FORGET at 16 in flight: the FORGETs took a third
// of the throughput. One atomic load, one uncontended lock and one load
// from the ring per request.
//
// It reports whether it found hiprio requests.
func (v *vring) helpHiprio() bool {
	hp := v.d.acquireHiprio()
	if hp == nil {
		return false
	}
	defer hp.users.Add(-1)
	hv := v.d.vrings[0]
	hv.mu.Lock()
	pending := hv.cur == hp && hv.q != nil && hv.q.HasAvailable()
	hv.mu.Unlock()
	if pending {
		v.d.serveHiprio(hp)
	}
	return pending
}

// pop returns the next valid chain, and (quiet only: the caller may
// poll) whether another is already waiting behind it; or nil once the ring is empty with notifications
// re-enabled (quiet: still disabled), or the ring is disabled, broken, or
// no longer run by r.
func (v *vring) pop(r *runner, quiet bool) (_ *request, more bool, _ error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	q := v.q
	if v.cur != r || v.broken || !v.enabled.Load() {
		return nil, false, nil
	}
	for {
		q.DisableNotification()
		head, ok, err := q.Next()
		if err != nil {
			return nil, false, err
		}
		if !ok {
			if !quiet && q.EnableNotification() {
				continue
			}
			return nil, false, nil
		}
		if v.inflight[head] {
			return nil, false, fmt.Errorf("driver made head %d available again before it was used: %w", head, virtqueue.ErrBrokenRing)
		}
		req := &r.slots[head]
		if err := q.ReadChainInto(&req.chain, q.Memory(), head); err != nil {
			// The chain is unusable, but its head is valid: hand it
			// back empty so the driver can reclaim it.
			// Rate-limited: a guest can send these at will.
			if v.badChains++; v.badChains <= 10 || v.badChains%1000 == 0 {
				v.log.Warn("malformed descriptor chain refused", "head", head, "err", err, "count", v.badChains)
			}
			v.pushLocked(head, 0)
			continue
		}
		v.inflight[head] = true
		req.mem, req.r = q.Memory().Acquire(), r
		return req, quiet && q.HasAvailable(), nil
	}
}

// fail marks the ring broken after a protocol violation by the driver.
func (v *vring) fail(err error) {
	v.log.Error("driver broke the ring; it is stopped until the front-end restarts it", "err", err)
	v.mu.Lock()
	v.broken = true
	v.mu.Unlock()
	if v.errFD != nil {
		signal(v.errFD)
	}
}

func (v *vring) worker(r *runner) {
	debug.SetPanicOnFault(true) // see loop
	defer r.workers.Done()
	for req := range r.work {
		v.serveRecovered(req)
	}
}

func (v *vring) serveRecovered(req *request) {
	defer v.recoverRing()
	v.serve(req)
}

// recoverRing is the last resort against a bug on a ring goroutine: log
// it and stop the ring instead of taking the daemon down.
func (v *vring) recoverRing() {
	if p := recover(); p != nil {
		v.log.Error("ring goroutine panicked; ring stopped", "panic", p, "stack", string(debug.Stack()))
		v.mu.Lock()
		v.broken = true
		v.mu.Unlock()
	}
}

// serve runs the Handler on one request, returns the chain to the driver
// and interrupts the driver if it asks for it.
func (v *vring) serve(req *request) {
	head := req.chain.Head
	n := v.handle(&req.chain)
	v.d.dirty.markChain(&req.chain, n)
	req.mem.Release()
	req.mem = nil
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.cur != req.r {
		return // the ring was stopped without waiting for us
	}
	v.pushLocked(head, n)
}

// pushLocked returns a chain to the driver, logs the used-ring write for
// migration and interrupts the driver if it asks for it.
func (v *vring) pushLocked(head uint16, n uint32) {
	v.inflight[head] = false
	v.q.Push(head, n)
	if v.logUsed {
		v.d.dirty.mark(v.logAddr, virtqueue.UsedRingBytes(v.q.Size()))
	}
	v.notifyLocked()
}

// notifyLocked interrupts the driver if it wants to hear about the
// entries pushed so far.
func (v *vring) notifyLocked() {
	if v.q.NeedNotify() && v.call != nil {
		v.call.signal()
	}
}

// handle runs the Handler and returns the bytes written into the chain.
func (v *vring) handle(c *virtqueue.Chain) (n uint32) {
	defer func() {
		if p := recover(); p != nil {
			v.log.Error("FUSE handler panicked", "panic", p)
			n = errorReply(c, fuse.EIO)
		}
	}()
	written, st := v.d.handler.HandleRequest(c.In, c.Out)
	if !st.Ok() && written == 0 {
		return errorReply(c, st)
	}
	if written < 0 {
		return 0
	}
	return min(uint32(written), c.OutLen)
}

const (
	inHeaderSize  = 40 // sizeof(struct fuse_in_header)
	outHeaderSize = 16 // sizeof(struct fuse_out_header)
)

// errorReply writes a FUSE error reply for a request the Handler refused
// and returns its length, or 0 if the chain has no room for one.
func errorReply(c *virtqueue.Chain, st fuse.Status) uint32 {
	if c.InLen < inHeaderSize || c.OutLen < outHeaderSize {
		return 0
	}
	var in [inHeaderSize]byte
	copyFrom(in[:], c.In)
	if st.Ok() || st < 0 {
		st = fuse.EIO
	}
	var out [outHeaderSize]byte
	binary.LittleEndian.PutUint32(out[0:], outHeaderSize)
	binary.LittleEndian.PutUint32(out[4:], uint32(-int32(st)))
	copy(out[8:], in[8:16]) // unique
	copyTo(c.Out, out[:])
	return outHeaderSize
}

func copyFrom(dst []byte, iov [][]byte) {
	n := 0
	for _, b := range iov {
		n += copy(dst[n:], b)
	}
}

func copyTo(iov [][]byte, src []byte) {
	for _, b := range iov {
		src = src[copy(b, src):]
	}
}
