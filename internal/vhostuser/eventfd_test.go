package vhostuser

import (
	"bufio"
	"bytes"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// runtimePollerFDs returns the descriptors registered in this process's
// epoll instances (the Go runtime's netpoller is the only one here), read
// from the "tfd:" lines of their /proc/self/fdinfo.
func runtimePollerFDs(t *testing.T) map[int]bool {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	fds := map[int]bool{}
	polls := 0
	for _, e := range ents {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err != nil || l != "anon_inode:[eventpoll]" {
			continue
		}
		polls++
		b, err := os.ReadFile("/proc/self/fdinfo/" + e.Name())
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) >= 2 && f[0] == "tfd:" {
				n, err := strconv.Atoi(f[1])
				if err != nil {
					t.Fatalf("fdinfo line %q: %v", sc.Text(), err)
				}
				fds[n] = true
			}
		}
	}
	if polls == 0 {
		t.Fatal("no epoll instance in /proc/self/fd")
	}
	return fds
}

// The rings' kick and call eventfds are not in the Go runtime's poller,
// where every kick, kick read and interrupt would wake its netpoll thread
// (see eventFD): neither as received nor as resumed after a handover.
func TestRingEventfdsNotInRuntimePoller(t *testing.T) {
	conns := make(chan *Connection, 2)
	cfg := Config{
		NewHandler:       func() Handler { return nopHandler{} },
		NumRequestQueues: 2,
		OnConnect:        func(c *Connection) { conns <- c },
		Logger:           quietLogger(t),
	}
	path := filepath.Join(t.TempDir(), "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	served := make(chan error, 1)
	go func() { served <- Serve(t.Context(), ln, cfg) }()
	f := dialFront(t, path)
	serve := func() {
		t.Helper()
		for q := range 3 {
			if out, err := f.Do(q, [][]byte{[]byte("req")}, 2); err != nil || string(out) != "ok" {
				t.Fatalf("Do on queue %d: %q %v", q, out, err)
			}
		}
	}
	serve()
	c := <-conns
	checkRingEventfds(t, c.d)

	st, files, err := c.Handover(t.Context())
	if err != nil {
		t.Fatalf("Handover: %v", err)
	}
	if err := <-served; err == nil || !strings.Contains(err.Error(), "handed over") {
		t.Errorf("Serve: %v, want handed over", err)
	}
	resumed := make(chan error, 1)
	go func() { resumed <- ResumeConn(t.Context(), st, files, cfg) }()
	c = <-conns
	serve()
	checkRingEventfds(t, c.d)
	f.Close()
	if err := <-resumed; err != nil {
		t.Errorf("ResumeConn: %v", err)
	}
}

func checkRingEventfds(t *testing.T, d *device) {
	t.Helper()
	d.ctlMu.Lock() // the connection goroutine sets the fds under it
	defer d.ctlMu.Unlock()
	polled := runtimePollerFDs(t)
	// The check can fail: the connection's socket is in the poller.
	sock := -1
	if rc, err := d.conn.UnixConn().SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { sock = int(fd) })
	}
	if sock < 0 || !polled[sock] {
		t.Fatalf("socket fd %d not among the poller's fds %v: the check cannot see registrations", sock, polled)
	}
	for _, v := range d.vrings {
		v.mu.Lock()
		call := v.call
		v.mu.Unlock()
		for _, e := range []struct {
			name string
			fd   *eventFD
		}{{"kick", v.kick}, {"call", call}} {
			if e.fd == nil {
				t.Fatalf("vring %d has no %s fd", v.index, e.name)
			}
			if polled[e.fd.fd] {
				t.Errorf("vring %d: %s eventfd %d is registered in the runtime's poller", v.index, e.name, e.fd.fd)
			}
		}
	}
	if len(d.vrings) != 3 {
		t.Fatalf("%d rings, want 3", len(d.vrings))
	}
}
