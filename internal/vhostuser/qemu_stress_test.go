package vhostuser

import (
	"bytes"
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

const stressInit = `#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /mnt /tmp
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci fuse virtiofs; do
	insmod /lib/$m.ko 2>/dev/null
done
(sleep 200; echo R_WATCHDOG=1; poweroff -nf) &
mount -t virtiofs myfs /mnt && echo R_MOUNT=ok
dd if=/dev/urandom of=/tmp/blob bs=65536 count=8 2>/dev/null
sum=$(md5sum < /tmp/blob)
worker() {
	mkdir -p /mnt/w$1
	i=0
	while [ $i -lt 30 ]; do
		i=$((i+1))
		cp /tmp/blob /mnt/w$1/f$i || echo R_ERR=cp
		[ "$(md5sum < /mnt/w$1/f$i)" = "$sum" ] || echo R_ERR=sum
		[ $((i % 3)) = 0 ] && rm /mnt/w$1/f$((i-1))
	done
	echo R_WORKER_DONE=$1
}
pids=""
for w in 1 2 3 4; do worker $w & pids="$pids $!"; done
wait $pids
echo 3 > /proc/sys/vm/drop_caches
echo R_FILES=$(find /mnt -type f | wc -l)
umount /mnt
echo R_DONE=1
poweroff -nf
`

// TestQEMUStress runs four writers in a two-vCPU guest (MTTCG: real
// parallelism) against two request queues and a worker pool, and checks
// every file's checksum. Opt-in like TestQEMUGuest.
func TestQEMUStress(t *testing.T) {
	dir, qemu := guestEnv(t)
	work := t.TempDir()
	shared := filepath.Join(work, "shared")
	os.MkdirAll(shared, 0o755)
	initrd := buildInitrd(t, dir, work, stressInit)
	root, err := fs.NewLoopbackRoot(shared)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(work, "vhost.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go Serve(ctx, ln, Config{
		NewHandler: func() Handler {
			return fuse.NewProtocolServer(fs.NewNodeFS(root, &fs.Options{}), &fuse.MountOptions{Logger: log.New(io.Discard, "", 0)})
		},
		NumRequestQueues: 2, ThreadPoolSize: 4, ExitOnDisconnect: true,
		Logger: slog.New(slog.NewTextHandler(logWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	qctx, qcancel := context.WithTimeout(ctx, 240*time.Second)
	defer qcancel()
	cmd := exec.CommandContext(qctx, qemu,
		"-accel", "tcg,thread=multi", "-M", "q35", "-m", "512M", "-smp", "2",
		"-object", "memory-backend-memfd,id=mem,size=512M,share=on", "-numa", "node,memdev=mem",
		"-chardev", "socket,id=c0,path="+sock,
		"-device", "vhost-user-fs-pci,queue-size=1024,num-request-queues=2,chardev=c0,tag=myfs",
		"-kernel", filepath.Join(dir, "vmlinux"), "-initrd", initrd,
		"-append", "console=ttyS0 quiet panic=-1",
		"-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err = cmd.Run()
	text := out.String()
	t.Logf("guest ran %v (err %v):\n%s", time.Since(start).Round(time.Millisecond), err, text)
	for _, want := range []string{"R_MOUNT=ok", "R_WORKER_DONE=1", "R_WORKER_DONE=2", "R_WORKER_DONE=3", "R_WORKER_DONE=4", "R_FILES=80", "R_DONE=1"} {
		if !strings.Contains(text, want) {
			t.Errorf("guest output lacks %s", want)
		}
	}
	if strings.Contains(text, "R_ERR") || strings.Contains(text, "R_WATCHDOG") {
		t.Error("guest reported errors")
	}
}
