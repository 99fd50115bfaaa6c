package vhostuser

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
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
	w := newGuestWorkspace(t, guestInit)
	shared := w.Shared
	os.MkdirAll(filepath.Join(shared, "sub"), 0o755)
	os.WriteFile(filepath.Join(shared, "hello.txt"), []byte("hello from host\n"), 0o644)
	for i := 0; i < 50; i++ {
		os.WriteFile(filepath.Join(shared, "sub", fmt.Sprintf("f%02d", i)), []byte{byte(i)}, 0o644)
	}

	ctx := t.Context()
	served := serveVhost(ctx, t, w.Socket, Config{
		NewHandler:       loopbackHandler(t, shared),
		NumRequestQueues: 2, ThreadPoolSize: 2, ExitOnDisconnect: true,
		Logger: infoLogger(t),
	})

	qctx, qcancel := context.WithTimeout(ctx, 240*time.Second)
	defer qcancel()
	out := runGuest(t, qemuCommand(qctx, w.QEMU, qemuGuest{
		Dir: w.Dir, Initrd: w.Initrd, Socket: w.Socket,
		Memory: "512M", CPUs: 1, QueueSize: 1024, RequestQueues: 2,
		DeviceOpts: os.Getenv("VHOSTUSER_QEMU_DEVICE_OPTS"),
		Reboot:     true,
	}))
	checkResults(t, guestResults(out), map[string]string{
		"R_MOUNT": "ok", "R_HELLO": "hello from host", "R_SUBCOUNT": "50",
		"R_WRITE": "ok", "R_BIGSUM": "ok", "R_REBOOT": "ok", "R_DONE": "1",
	})
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

var guestInit = guestScript(180*time.Second, `if mount -t virtiofs myfs /mnt; then echo R_MOUNT=ok; fi
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
`)
