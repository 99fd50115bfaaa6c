package vhostuser

import (
	"bufio"
	"context"
	"io"
	"log"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

const migrateInit = `#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /mnt /tmp
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci fuse virtiofs; do
	insmod /lib/$m.ko 2>/dev/null
done
(sleep 200; poweroff -nf) &
mount -t virtiofs myfs /mnt && echo R_MOUNT=ok
cat /mnt/hello.txt >/dev/null
echo R_READY=1
i=0
while true; do i=$((i+1)); echo $i > /mnt/tick-$i; sleep 1; done
`

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
	dir, _ := guestEnv(t)
	qemu := qemu10(t, dir)
	work := t.TempDir()
	shared := filepath.Join(work, "shared")
	os.MkdirAll(shared, 0o755)
	os.WriteFile(filepath.Join(shared, "hello.txt"), []byte("hi\n"), 0o644)
	initrd := buildInitrd(t, dir, work, migrateInit)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	backend := func(name string) (*recordingState, string) {
		root, err := fs.NewLoopbackRoot(shared)
		if err != nil {
			t.Fatal(err)
		}
		sock := filepath.Join(work, name+".sock")
		ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		rec := &recordingState{}
		go Serve(ctx, ln, Config{
			NewHandler: func() Handler {
				return fuse.NewProtocolServer(fs.NewNodeFS(root, &fs.Options{}), &fuse.MountOptions{Logger: log.New(io.Discard, "", 0)})
			},
			DeviceState: rec, ExitOnDisconnect: true,
			Logger: slog.New(slog.NewTextHandler(logWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})).With("backend", name),
		})
		return rec, sock
	}
	qctx, qcancel := context.WithTimeout(ctx, 200*time.Second)
	defer qcancel()
	startQEMU := func(name, sock string, extra ...string) (mon string, lines chan string) {
		mon = filepath.Join(work, name+"-mon.sock")
		args := append([]string{
			"-accel", "tcg", "-M", "q35", "-m", "256M", "-smp", "1",
			"-object", "memory-backend-memfd,id=mem,size=256M,share=on", "-numa", "node,memdev=mem",
			"-chardev", "socket,id=c0,path=" + sock,
			"-device", "vhost-user-fs-pci,queue-size=256,chardev=c0,tag=myfs",
			"-kernel", filepath.Join(dir, "vmlinux"), "-initrd", initrd,
			"-append", "console=ttyS0 quiet panic=-1",
			"-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
			"-monitor", "unix:" + mon + ",server=on,wait=off"}, extra...)
		cmd := exec.CommandContext(qctx, qemu, args...)
		stdout, _ := cmd.StdoutPipe()
		cmd.Stderr = cmd.Stdout
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
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
