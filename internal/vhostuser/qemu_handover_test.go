package vhostuser

import (
	"bufio"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
)

var handoverInit = guestScript(150*time.Second, `mount -t virtiofs myfs /mnt && echo R_MOUNT=ok
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
`)

// TestQEMUHandover hands the connection of a running QEMU guest from one
// back-end instance to another while the guest is busy writing and reading
// files: QEMU and the guest must not notice. Both instances share the node
// table (go-fuse's bridge), standing in for a successor that restored the
// filesystem's state; each has its own ProtocolServer, the successor's
// initialised by the replayed FUSE_INIT. Opt-in like TestQEMUGuest.
func TestQEMUHandover(t *testing.T) {
	w := newGuestWorkspace(t, handoverInit)
	// One node table (the bridge), a fresh ProtocolServer per back-end
	// instance: the successor learns the FUSE session from the replayed
	// INIT, as a restarted daemon would.
	bridge := fs.NewNodeFS(loopbackRoot(t, w.Shared), &fs.Options{})
	servers := 0
	ctx := t.Context()
	conns := make(chan *Connection, 2)
	cfg := Config{
		NewHandler: func() Handler {
			servers++
			return protocolServer(bridge)
		},
		NumRequestQueues: 1, ThreadPoolSize: 2,
		OnConnect: func(c *Connection) { conns <- c },
		Logger:    infoLogger(t),
	}
	servedA := serveVhost(ctx, t, w.Socket, cfg)

	qctx, qcancel := context.WithTimeout(ctx, 200*time.Second)
	defer qcancel()
	stdout := startGuest(t, qemuCommand(qctx, w.QEMU, qemuGuest{
		Dir: w.Dir, Initrd: w.Initrd, Socket: w.Socket,
		Memory: "256M", CPUs: 1, QueueSize: 256,
	}))
	results := map[string]string{}
	handedOver := false
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		t.Logf("guest: %s", line)
		if k, v, ok := guestResult(line); ok {
			results[k] = v
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
	checkResults(t, results, map[string]string{"R_MOUNT": "ok", "R_BAD": "0", "R_COUNT": "400", "R_DONE": "1"})
}
