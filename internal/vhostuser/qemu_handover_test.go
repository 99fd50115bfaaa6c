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
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

const handoverInit = `#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /mnt /tmp
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci fuse virtiofs; do
	insmod /lib/$m.ko 2>/dev/null
done
(sleep 150; echo R_WATCHDOG=1; poweroff -nf) &
mount -t virtiofs myfs /mnt && echo R_MOUNT=ok
mkdir -p /mnt/d
bad=0
i=0
while [ $i -lt 400 ]; do
	i=$((i+1))
	echo "tick $i" > /mnt/d/t$i || bad=$((bad+1))
	[ "$(cat /mnt/d/t$i)" = "tick $i" ] || bad=$((bad+1))
	[ $((i % 50)) = 0 ] && echo R_PROGRESS=$i
done
echo R_BAD=$bad
echo R_COUNT=$(ls /mnt/d | wc -l)
umount /mnt
echo R_DONE=1
poweroff -nf
`

// TestQEMUHandover hands the connection of a running QEMU guest from one
// back-end instance to another while the guest is busy writing and reading
// files: QEMU and the guest must not notice. Both instances share the node
// table (go-fuse's bridge), standing in for a successor that restored the
// filesystem's state; each has its own ProtocolServer, the successor's
// initialised by the replayed FUSE_INIT. Opt-in like TestQEMUGuest.
func TestQEMUHandover(t *testing.T) {
	dir, qemu := guestEnv(t)
	work := t.TempDir()
	shared := filepath.Join(work, "shared")
	os.MkdirAll(shared, 0o755)
	initrd := buildInitrd(t, dir, work, handoverInit)
	root, err := fs.NewLoopbackRoot(shared)
	if err != nil {
		t.Fatal(err)
	}
	// One node table (the bridge), a fresh ProtocolServer per back-end
	// instance: the successor learns the FUSE session from the replayed
	// INIT, as a restarted daemon would.
	bridge := fs.NewNodeFS(root, &fs.Options{})
	servers := 0
	sock := filepath.Join(work, "vhost.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	conns := make(chan *Connection, 2)
	cfg := Config{
		NewHandler: func() Handler {
			servers++
			return fuse.NewProtocolServer(bridge, &fuse.MountOptions{Logger: log.New(io.Discard, "", 0)})
		},
		NumRequestQueues: 1, ThreadPoolSize: 2,
		OnConnect: func(c *Connection) { conns <- c },
		Logger:    slog.New(slog.NewTextHandler(logWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})),
	}
	servedA := make(chan error, 1)
	go func() { servedA <- Serve(ctx, ln, cfg) }()

	qctx, qcancel := context.WithTimeout(ctx, 200*time.Second)
	defer qcancel()
	cmd := exec.CommandContext(qctx, qemu,
		"-accel", "tcg", "-M", "q35", "-m", "256M", "-smp", "1",
		"-object", "memory-backend-memfd,id=mem,size=256M,share=on", "-numa", "node,memdev=mem",
		"-chardev", "socket,id=c0,path="+sock,
		"-device", "vhost-user-fs-pci,queue-size=256,chardev=c0,tag=myfs",
		"-kernel", filepath.Join(dir, "vmlinux"), "-initrd", initrd,
		"-append", "console=ttyS0 quiet panic=-1",
		"-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio")
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	results := map[string]string{}
	handedOver := false
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		t.Logf("guest: %s", line)
		if i := strings.Index(line, "R_"); i >= 0 {
			if k, v, ok := strings.Cut(strings.TrimSpace(line[i:]), "="); ok {
				results[k] = v
			}
		}
		if !handedOver && strings.Contains(line, "R_PROGRESS=100") {
			handedOver = true
			c := <-conns
			hctx, hcancel := context.WithTimeout(ctx, 20*time.Second)
			st, files, err := c.Handover(hctx)
			hcancel()
			if err != nil {
				t.Fatalf("Handover: %v", err)
			}
			if err := <-servedA; err == nil || !strings.Contains(err.Error(), "handed over") {
				t.Errorf("Serve A: %v", err)
			}
			b, _ := st.Marshal()
			st2, err := UnmarshalConnectionState(b, len(files))
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("handed over: vring 1 at avail %d used %d", st2.Vrings[1].LastAvail, st2.Vrings[1].UsedIdx)
			go func() {
				if err := ResumeConn(ctx, st2, files, cfg); err != nil {
					t.Errorf("ResumeConn: %v", err)
				}
			}()
		}
	}
	if !handedOver || servers != 2 {
		t.Fatalf("handed over: %v, %d protocol servers", handedOver, servers)
	}
	for k, want := range map[string]string{"R_MOUNT": "ok", "R_BAD": "0", "R_COUNT": "400", "R_DONE": "1"} {
		if results[k] != want {
			t.Errorf("%s = %q, want %q", k, results[k], want)
		}
	}
}
