package vhostuser

// Shared set-up for the QEMU guest tests (qemu_test.go,
// qemu_handover_test.go, qemu_stress_test.go, qemu_migrate_test.go): the
// guest files, the initrd and its init script, the go-fuse loopback
// back-end, the QEMU command line and the guest's "R_KEY=value" results.

import (
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
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// guestModules are the kernel modules, in load order, that buildInitrd
// copies into the initrd's /lib and guestScript loads: what a guest needs
// to mount a virtio-fs device on the q35 PCI bus.
var guestModules = []string{"virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci", "fuse", "virtiofs"}

// guestScript returns a busybox /init script: it installs the busybox
// applets, mounts /proc, /sys and /dev, makes /mnt and /tmp, loads
// guestModules, and starts a watchdog that, after watchdog (whole seconds),
// prints R_WATCHDOG=1 and powers the guest off, so that a hung guest ends
// by itself. The prelude is the same for every test; then it runs body, in
// the same shell, which should
// mount the device (tag "myfs") and report with "R_KEY=value" lines (see
// guestResults).
func guestScript(watchdog time.Duration, body string) string {
	return `#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /mnt /tmp
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in ` + strings.Join(guestModules, " ") + `; do
	insmod /lib/$m.ko 2>/dev/null
done
(sleep ` + strconv.Itoa(int(watchdog/time.Second)) + `; echo R_WATCHDOG=1; poweroff -nf) &
` + body
}

// guestEnv returns the guest files directory and the QEMU binary. It fails
// the test (it does not skip) when the guest files are missing.
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

// guestWorkspace is the host side every QEMU test starts from.
type guestWorkspace struct {
	Dir    string // the guest files (guestEnv)
	QEMU   string // the QEMU binary (guestEnv)
	Work   string // the test's temporary directory
	Shared string // Work/shared: made and empty, for the back-end to serve
	Initrd string // the initrd with the test's /init (buildInitrd)
	Socket string // Work/vhost.sock: where the back-end is to listen
}

// newGuestWorkspace finds the guest files and QEMU (failing, not skipping,
// without them), makes an empty shared directory in a fresh temporary
// directory and builds an initrd there whose /init is init (see
// guestScript). Socket is named, not made.
func newGuestWorkspace(t *testing.T, init string) guestWorkspace {
	t.Helper()
	dir, qemu := guestEnv(t)
	work := t.TempDir()
	shared := filepath.Join(work, "shared")
	if err := os.MkdirAll(shared, 0o755); err != nil {
		t.Fatal(err)
	}
	return guestWorkspace{
		Dir: dir, QEMU: qemu, Work: work, Shared: shared,
		Initrd: buildInitrd(t, dir, work, init),
		Socket: filepath.Join(work, "vhost.sock"),
	}
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

// buildInitrd writes a newc cpio initrd under work holding busybox,
// guestModules (both from dir) and init as /init, and returns its path.
func buildInitrd(t *testing.T, dir, work, init string) string {
	root := filepath.Join(work, "initrd")
	for _, d := range []string{"bin", "lib"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	copyFile(t, filepath.Join(dir, "busybox"), filepath.Join(root, "bin", "busybox"), 0o755)
	for _, m := range guestModules {
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

// loopbackRoot returns go-fuse's loopback filesystem over the host
// directory shared, failing the test if it cannot.
func loopbackRoot(t *testing.T, shared string) fs.InodeEmbedder {
	t.Helper()
	root, err := fs.NewLoopbackRoot(shared)
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// protocolServer returns a go-fuse ProtocolServer over the node table
// fsys, with go-fuse's own logging discarded (the back-end logs through
// Config.Logger).
func protocolServer(fsys fuse.RawFileSystem) Handler {
	return fuse.NewProtocolServer(fsys, &fuse.MountOptions{Logger: log.New(io.Discard, "", 0)})
}

// loopbackHandler returns a Config.NewHandler that serves the host
// directory shared: one loopback root for all connections, and for each
// call a fresh node table and ProtocolServer (see protocolServer), as a
// new daemon would have.
func loopbackHandler(t *testing.T, shared string) func() Handler {
	root := loopbackRoot(t, shared)
	return func() Handler { return protocolServer(fs.NewNodeFS(root, &fs.Options{})) }
}

// serveVhost listens on the Unix socket path for QEMU's vhost-user
// connection and runs Serve(ctx, listener, cfg) in the background. Serve's
// result arrives on the returned channel, which is buffered: nobody need
// read it. The listener is closed when the test ends.
func serveVhost(ctx context.Context, t *testing.T, path string, cfg Config) <-chan error {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	served := make(chan error, 1)
	go func() { served <- Serve(ctx, ln, cfg) }()
	return served
}

// infoLogger returns a logger for Config.Logger that writes Info and above
// to the test log.
func infoLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(logWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// qemuGuest describes the guest qemuCommand boots.
type qemuGuest struct {
	Dir    string // guest files (guestEnv): the kernel is Dir/vmlinux
	Initrd string // from buildInitrd
	Socket string // the back-end's vhost-user socket

	Memory string // guest RAM, shared with the back-end, e.g. "256M"
	// CPUs is the number of vCPUs; above 1 TCG runs one host thread per
	// vCPU (MTTCG), for real parallelism in the guest.
	CPUs      int
	QueueSize int // the device's queue-size
	// RequestQueues is the device's num-request-queues; 0 leaves QEMU's
	// default (1).
	RequestQueues int
	// DeviceOpts is appended to the -device option as is, e.g.
	// ",event_idx=off".
	DeviceOpts string
	// Reboot lets a guest reboot (QEMU resets the device and sets it up
	// again); without it a reboot ends QEMU (-no-reboot).
	Reboot bool
	Extra  []string // further QEMU arguments, last
}

// qemuCommand returns the command that boots g under QEMU's TCG (no KVM
// needed) on a q35 machine whose RAM is a shared memfd (as vhost-user
// needs), with a vhost-user-fs-pci device tagged "myfs" on g.Socket, the
// console on ttyS0 and the serial port on stdio (no display, no default
// devices), killed when ctx ends.
func qemuCommand(ctx context.Context, qemu string, g qemuGuest) *exec.Cmd {
	accel := "tcg"
	if g.CPUs > 1 {
		accel = "tcg,thread=multi"
	}
	dev := fmt.Sprintf("vhost-user-fs-pci,queue-size=%d", g.QueueSize)
	if g.RequestQueues > 0 {
		dev += fmt.Sprintf(",num-request-queues=%d", g.RequestQueues)
	}
	dev += ",chardev=c0,tag=myfs" + g.DeviceOpts
	args := []string{
		"-accel", accel, "-M", "q35", "-m", g.Memory, "-smp", strconv.Itoa(g.CPUs),
		"-object", "memory-backend-memfd,id=mem,size=" + g.Memory + ",share=on", "-numa", "node,memdev=mem",
		"-chardev", "socket,id=c0,path=" + g.Socket,
		"-device", dev,
		"-kernel", filepath.Join(g.Dir, "vmlinux"), "-initrd", g.Initrd,
		"-append", "console=ttyS0 quiet panic=-1",
		"-nographic"}
	if !g.Reboot {
		args = append(args, "-no-reboot")
	}
	args = append(args, "-nodefaults", "-serial", "stdio")
	return exec.CommandContext(ctx, qemu, append(args, g.Extra...)...)
}

// runGuest runs cmd to the end, logs how long it ran, how it ended and
// all it printed, and returns that output (stdout and stderr together).
func runGuest(t *testing.T, cmd *exec.Cmd) string {
	t.Helper()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	t.Logf("guest ran %v (err %v):\n%s", time.Since(start).Round(time.Millisecond), err, out.String())
	return out.String()
}

// startGuest starts cmd and returns its output (stdout and stderr on one
// pipe) to be read as the guest runs; when the test ends QEMU is killed
// and waited for.
func startGuest(t *testing.T, cmd *exec.Cmd) io.Reader {
	t.Helper()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return stdout
}

// guestResult parses a line of guest output for a result "R_KEY=value":
// it looks from the first "R_" on (the console may put other text before
// it), trims white space, and returns the key (with its R_) and value.
func guestResult(line string) (key, value string, ok bool) {
	i := strings.Index(line, "R_")
	if i < 0 {
		return "", "", false
	}
	return strings.Cut(strings.TrimSpace(line[i:]), "=")
}

// guestResults returns the results (see guestResult) in the guest output
// out, by key; where a key is reported more than once, the last value.
func guestResults(out string) map[string]string {
	results := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if k, v, ok := guestResult(line); ok {
			results[k] = v
		}
	}
	return results
}

// checkResults reports, as test errors, each key of want whose value in
// results is not the one wanted (a missing key counts as "").
func checkResults(t *testing.T, results, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if results[k] != v {
			t.Errorf("%s = %q, want %q", k, results[k], v)
		}
	}
}
