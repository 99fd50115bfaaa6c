package vhostuser

import (
	"context"
	"strings"
	"testing"
	"time"
)

var stressInit = guestScript(200*time.Second, `mount -t virtiofs myfs /mnt && echo R_MOUNT=ok
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
`)

// TestQEMUStress runs four writers in a two-vCPU guest (MTTCG: real
// parallelism) against two request queues and a worker pool, and checks
// every file's checksum. Opt-in like TestQEMUGuest.
func TestQEMUStress(t *testing.T) {
	w := newGuestWorkspace(t, stressInit)
	ctx := t.Context()
	serveVhost(ctx, t, w.Socket, Config{
		NewHandler:       loopbackHandler(t, w.Shared),
		NumRequestQueues: 2, ThreadPoolSize: 4, ExitOnDisconnect: true,
		Logger: quietLogger(t),
	})
	qctx, qcancel := context.WithTimeout(ctx, 240*time.Second)
	defer qcancel()
	text := runGuest(t, qemuCommand(qctx, w.QEMU, qemuGuest{
		Dir: w.Dir, Initrd: w.Initrd, Socket: w.Socket,
		Memory: "512M", CPUs: 2, QueueSize: 1024, RequestQueues: 2,
	}))
	for _, want := range []string{"R_MOUNT=ok", "R_WORKER_DONE=1", "R_WORKER_DONE=2", "R_WORKER_DONE=3", "R_WORKER_DONE=4", "R_FILES=80", "R_DONE=1"} {
		if !strings.Contains(text, want) {
			t.Errorf("guest output lacks %s", want)
		}
	}
	if strings.Contains(text, "R_ERR") || strings.Contains(text, "R_WATCHDOG") {
		t.Error("guest reported errors")
	}
}
