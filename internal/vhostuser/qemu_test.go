package vhostuser

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
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

// TestQEMUGuest boots a Linux guest under QEMU (TCG) with a
// vhost-user-fs-pci device served by this package over go-fuse's loopback
// filesystem, mounts it and checks reads, writes and a directory listing,
// then reboots the guest (QEMU stops and resets the device, then sets it
// up again on the same connection) and mounts once more.
// It is a transport smoke test (tens of seconds under TCG):
//
//	go test -run TestQEMUGuest -v ./internal/vhostuser
//
// It needs what scripts/guest/install.sh puts in /var/cache/govirtiofsd-test
// (override with GOVIRTIOFSD_GUEST_DIR) and QEMU (override with QEMU).
// VHOSTUSER_QEMU_DEVICE_OPTS is appended to the -device option, e.g.
// ",event_idx=off,indirect_desc=off".
func TestQEMUGuest(t *testing.T) {
	dir, qemu := guestEnv(t)
	work := t.TempDir()
	shared := filepath.Join(work, "shared")
	os.MkdirAll(filepath.Join(shared, "sub"), 0o755)
	os.WriteFile(filepath.Join(shared, "hello.txt"), []byte("hello from host\n"), 0o644)
	for i := 0; i < 50; i++ {
		os.WriteFile(filepath.Join(shared, "sub", fmt.Sprintf("f%02d", i)), []byte{byte(i)}, 0o644)
	}
	initrd := buildInitrd(t, dir, work, guestInit)

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
	served := make(chan error, 1)
	go func() {
		served <- Serve(ctx, ln, Config{
			NewHandler: func() Handler {
				opts := &fuse.MountOptions{Logger: log.New(io.Discard, "", 0)}
				return fuse.NewProtocolServer(fs.NewNodeFS(root, &fs.Options{}), opts)
			},
			NumRequestQueues: 2, ThreadPoolSize: 2, ExitOnDisconnect: true,
			Logger: slog.New(slog.NewTextHandler(logWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})),
		})
	}()

	qctx, qcancel := context.WithTimeout(ctx, 240*time.Second)
	defer qcancel()
	cmd := exec.CommandContext(qctx, qemu,
		"-accel", "tcg", "-M", "q35", "-m", "512M", "-smp", "1",
		"-object", "memory-backend-memfd,id=mem,size=512M,share=on", "-numa", "node,memdev=mem",
		"-chardev", "socket,id=c0,path="+sock,
		"-device", "vhost-user-fs-pci,queue-size=1024,num-request-queues=2,chardev=c0,tag=myfs"+os.Getenv("VHOSTUSER_QEMU_DEVICE_OPTS"),
		"-kernel", filepath.Join(dir, "vmlinux"), "-initrd", initrd,
		"-append", "console=ttyS0 quiet panic=-1",
		"-nographic", "-nodefaults", "-serial", "stdio")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err = cmd.Run()
	t.Logf("guest ran %v (err %v):\n%s", time.Since(start).Round(time.Millisecond), err, out.String())
	results := map[string]string{}
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		line := sc.Text()
		if i := strings.Index(line, "R_"); i >= 0 {
			line = line[i:]
		}
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok && strings.HasPrefix(k, "R_") {
			results[k] = v
		}
	}
	for k, want := range map[string]string{
		"R_MOUNT": "ok", "R_HELLO": "hello from host", "R_SUBCOUNT": "50",
		"R_WRITE": "ok", "R_BIGSUM": "ok", "R_REBOOT": "ok", "R_DONE": "1",
	} {
		if results[k] != want {
			t.Errorf("%s = %q, want %q", k, results[k], want)
		}
	}
	if b, err := os.ReadFile(filepath.Join(shared, "fromguest.txt")); err != nil || string(b) != "guest wrote this\n" {
		t.Errorf("host sees fromguest.txt = %q, %v", b, err)
	}
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("Serve did not return after QEMU exited (ExitOnDisconnect)")
	}
}

const guestInit = `#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /mnt /tmp
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci fuse virtiofs; do
	insmod /lib/$m.ko 2>/dev/null
done
(sleep 180; echo R_WATCHDOG=1; poweroff -nf) &
if mount -t virtiofs myfs /mnt; then echo R_MOUNT=ok; fi
if [ -e /mnt/booted ]; then
	# Second boot: the device was reset by the reboot and set up again.
	echo "R_REBOOT=$(cat /mnt/booted)"
	umount /mnt
	echo R_DONE=1
	poweroff -nf
fi
echo "R_HELLO=$(cat /mnt/hello.txt)"
echo "R_SUBCOUNT=$(ls /mnt/sub | wc -l)"
echo "guest wrote this" > /mnt/fromguest.txt && echo R_WRITE=ok
dd if=/dev/urandom of=/tmp/big bs=4096 count=300 2>/dev/null
cp /tmp/big /mnt/big
echo 3 > /proc/sys/vm/drop_caches
a=$(md5sum < /tmp/big); b=$(md5sum < /mnt/big)
[ -s /mnt/big ] && [ "$a" = "$b" ] && echo R_BIGSUM=ok
echo ok > /mnt/booted
umount /mnt
reboot -nf
`

// guestEnv returns the guest files directory and the QEMU binary, or skips.
func guestEnv(t *testing.T) (dir, qemu string) {
	dir = os.Getenv("GOVIRTIOFSD_GUEST_DIR")
	if dir == "" {
		dir = "/var/cache/govirtiofsd-test"
	}
	qemu = os.Getenv("QEMU")
	if qemu == "" {
		qemu = "qemu-system-x86_64"
	}
	for _, p := range []string{"vmlinux", "busybox", "modules/virtiofs.ko"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			t.Fatalf("guest files missing (run scripts/guest/install.sh): %v", err)
		}
	}
	return dir, qemu
}

// qemu10 returns a QEMU that can migrate vhost-user-fs (>= 8.2): $QEMU if
// set, else the one scripts/guest/install.sh extracted from
// bookworm-backports.
func qemu10(t *testing.T, dir string) string {
	if q := os.Getenv("QEMU"); q != "" {
		return q
	}
	b, err := os.ReadFile(filepath.Join(dir, "env"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if q, ok := strings.CutPrefix(l, "QEMU10="); ok {
			return q
		}
	}
	t.Fatalf("no QEMU10 in %s/env: run scripts/guest/install.sh", dir)
	return ""
}

func buildInitrd(t *testing.T, dir, work, init string) string {
	root := filepath.Join(work, "initrd")
	for _, d := range []string{"bin", "lib"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	copyFile(t, filepath.Join(dir, "busybox"), filepath.Join(root, "bin", "busybox"), 0o755)
	for _, m := range []string{"virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci", "fuse", "virtiofs"} {
		copyFile(t, filepath.Join(dir, "modules", m+".ko"), filepath.Join(root, "lib", m+".ko"), 0o644)
	}
	if err := os.WriteFile(filepath.Join(root, "init"), []byte(init), 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(work, "initrd.cpio")
	cmd := exec.Command("sh", "-c", "find . | cpio -o -H newc > "+out)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio: %v\n%s", err, b)
	}
	return out
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, mode); err != nil {
		t.Fatal(err)
	}
}
