package vhostuser

import (
	"bufio"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var migrateInit = guestScript(200*time.Second, `mount -t virtiofs myfs /mnt && echo R_MOUNT=ok
cat /mnt/hello.txt >/dev/null
echo R_READY=1
i=0
while true; do i=$((i+1)); echo $i > /mnt/tick-$i; sleep 1; done
`)

type recordingState struct {
	mu     sync.Mutex
	saves  int
	loaded []byte
}

func (r *recordingState) SaveState() ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.saves++
	return []byte("govirtiofsd-test-state"), nil
}

func (r *recordingState) LoadState(b []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.loaded = b
	return nil
}

// TestQEMUMigration live-migrates a running guest between two QEMUs, each
// with its own back-end over the same shared directory, through a state
// file: the source's device state goes out through SET_DEVICE_STATE_FD
// (save), the destination's comes in the same way (load), and the guest,
// which keeps creating files, carries on against the destination back-end.
// It runs on QEMU 10 (QEMU 7.2 marks vhost-user-fs unmigratable).
func TestQEMUMigration(t *testing.T) {
	w := newGuestWorkspace(t, migrateInit)
	qemu := qemu10(t, w.Dir)
	work, shared := w.Work, w.Shared
	os.WriteFile(filepath.Join(shared, "hello.txt"), []byte("hi\n"), 0o644)
	ctx := t.Context()

	backend := func(name string) (*recordingState, string) {
		sock := filepath.Join(work, name+".sock")
		rec := &recordingState{}
		serveVhost(ctx, t, sock, Config{
			NewHandler:  loopbackHandler(t, shared),
			DeviceState: rec, ExitOnDisconnect: true,
			Logger: infoLogger(t).With("backend", name),
		})
		return rec, sock
	}
	qctx, qcancel := context.WithTimeout(ctx, 200*time.Second)
	defer qcancel()
	startQEMU := func(name, sock string, extra ...string) (mon string, lines chan string) {
		mon = filepath.Join(work, name+"-mon.sock")
		stdout := startGuest(t, qemuCommand(qctx, qemu, qemuGuest{
			Dir: w.Dir, Initrd: w.Initrd, Socket: sock,
			Memory: "256M", CPUs: 1, QueueSize: 256,
			Extra: append([]string{"-monitor", "unix:" + mon + ",server=on,wait=off"}, extra...),
		}))
		lines = make(chan string, 1000)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				t.Logf("%s: %s", name, sc.Text())
				select {
				case lines <- sc.Text():
				default:
				}
			}
			close(lines)
		}()
		return mon, lines
	}
	hmp := func(mon, cmd string) string {
		mc, err := net.Dial("unix", mon)
		if err != nil {
			t.Fatalf("monitor %s: %v", mon, err)
		}
		defer mc.Close()
		mc.Write([]byte(cmd + "\n"))
		time.Sleep(500 * time.Millisecond)
		mc.SetReadDeadline(time.Now().Add(time.Second))
		b, _ := io.ReadAll(mc)
		return string(b)
	}

	srcRec, srcSock := backend("src")
	srcMon, lines := startQEMU("src", srcSock)
	for l := range lines {
		if strings.Contains(l, "R_READY=1") {
			break
		}
	}
	state := filepath.Join(work, "vm.state")
	if out := hmp(srcMon, "migrate file:"+state); strings.Contains(out, "rror") {
		i := strings.Index(out, "rror")
		t.Fatalf("QEMU refuses to migrate the guest: E%.120s", out[i:])
	}
	status := ""
	for i := 0; i < 60 && !strings.Contains(status, "completed") && !strings.Contains(status, "failed"); i++ {
		time.Sleep(time.Second)
		status = hmp(srcMon, "info migrate")
	}
	if !strings.Contains(status, "Migration status: completed") {
		i := strings.Index(status, "Migration status")
		t.Fatalf("QEMU did not migrate the guest: %.80s", status[max(i, 0):])
	}
	srcRec.mu.Lock()
	saves := srcRec.saves
	srcRec.mu.Unlock()
	if saves != 1 {
		t.Errorf("source device state saved %d times, want 1", saves)
	}
	ticks := func() int {
		m, _ := filepath.Glob(filepath.Join(shared, "tick-*"))
		return len(m)
	}
	before := ticks()
	hmp(srcMon, "quit")

	dstRec, dstSock := backend("dst")
	startQEMU("dst", dstSock, "-incoming", "file:"+state)
	deadline := time.Now().Add(60 * time.Second)
	for ticks() < before+3 && time.Now().Before(deadline) {
		time.Sleep(500 * time.Millisecond)
	}
	if got := ticks(); got < before+3 {
		t.Errorf("guest created %d files before and %d after migration; it did not carry on against the destination", before, got)
	}
	dstRec.mu.Lock()
	loaded := string(dstRec.loaded)
	dstRec.mu.Unlock()
	if loaded != "govirtiofsd-test-state" {
		t.Errorf("destination loaded state %q", loaded)
	}
}
