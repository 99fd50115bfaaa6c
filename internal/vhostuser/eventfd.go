package vhostuser

import (
	"encoding/binary"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// eventFD is a ring's kick or call eventfd, held as a plain descriptor and
// not as an *os.File.
//
// Why: os.NewFile registers a non-blocking descriptor (the front-end's
// eventfds are non-blocking) with the Go runtime's epoll, edge-triggered
// for input and output. Nothing of ours waits there for these fds, yet
// every kick the driver writes, every read of a kick (an eventfd read
// wakes its waiters for output) and every interrupt we write then wakes
// the runtime's netpoll thread for nothing, usually on the other CPU: the
// eventfd reads and writes held 21 % of the daemon's CPU samples in cold
// LOOKUPs at 4 and 16 in flight, nearly all of it waking that thread. The
// Rust virtiofsd's epoll asks for input only, so its reads wake nobody.
// Measured without them (2 interleaved runs against 2 with, CI machine
// kind): cold LOOKUP at 16 in flight 91-98k -> 115-123k/s, at 4 49-53k ->
// 53-58k/s, CREATE+RELEASE+UNLINK at 16 44-52k -> 51-55k/s, with less
// daemon CPU per request. One request at a time lost some (GETATTR 25-29k
// -> 22-25k/s in 3 more runs each): in this VM an idle vCPU halts at
// once (guest halt polling off), and the needless wake-ups kept the
// other vCPU from halting, which made the wake-ups that matter cheaper.
//
// Ownership: the connection goroutine creates and closes it; the ring
// thread uses it only while the ring runs (the kick fd is closed only
// after the ring stopped), and the call fd is signalled and swapped under
// vring.mu, so no descriptor is used after Close (a plain descriptor,
// unlike an *os.File, would then name whatever file got its number).
type eventFD struct{ fd int }

// newEventFD owns fd.
func newEventFD(fd int) *eventFD { return &eventFD{fd: fd} }

// takeEventFD moves f's descriptor out of the runtime's poller: it
// duplicates it and closes f (which deregisters f's descriptor).
func takeEventFD(f *os.File) (*eventFD, error) {
	if f == nil {
		return nil, nil
	}
	defer f.Close()
	fd := rawFD(f)
	if fd < 0 {
		return nil, fmt.Errorf("eventfd %s unusable", f.Name())
	}
	nfd, err := dupCloexec(fd)
	if err != nil {
		return nil, fmt.Errorf("duplicate eventfd %s: %w", f.Name(), err)
	}
	return newEventFD(nfd), nil
}

// signal adds one to the eventfd. EAGAIN means the counter is saturated:
// still signalled.
func (e *eventFD) signal() {
	var one [8]byte
	binary.LittleEndian.PutUint64(one[:], 1)
	for {
		if _, err := unix.Write(e.fd, one[:]); err != unix.EINTR {
			return
		}
	}
}

func (e *eventFD) Close() error { return unix.Close(e.fd) }
