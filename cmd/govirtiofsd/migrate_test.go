package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/govirtiofsd/govirtiofsd/internal/vhostfront"
	"github.com/govirtiofsd/govirtiofsd/internal/vhostuser/wire"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// buildDaemon builds this command once per test binary.
func buildDaemon(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "govirtiofsd")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// startVhost starts a daemon serving shared over vhost-user and returns a
// connected front-end (no INIT sent).
func startVhost(t *testing.T, bin, shared, key string) *vhostfront.Frontend {
	f, _, _ := startVhostProc(t, bin, shared, key)
	return f
}

// startVhostProc is startVhost that also returns the daemon and its log.
func startVhostProc(t *testing.T, bin, shared, key string) (*vhostfront.Frontend, *exec.Cmd, string) {
	t.Helper()
	dir := t.TempDir()
	sock := filepath.Join(dir, "vfs.sock")
	cmd := exec.Command(bin, "--shared-dir", shared, "--socket-path", sock,
		"--state-dir", filepath.Join(dir, "state"), "--handle-key-file", key, "--log-level", "debug")
	logf, _ := os.Create(filepath.Join(dir, "log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "log"))
			t.Logf("daemon log:\n%s", b)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("daemon did not create its socket")
		}
		time.Sleep(20 * time.Millisecond)
	}
	f, err := vhostfront.Dial(ctx, sock, vhostfront.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, cmd, filepath.Join(dir, "log")
}

// transferState runs SET_DEVICE_STATE_FD and CHECK_DEVICE_STATE; for a
// save it returns what the back-end wrote.
func transferState(t *testing.T, f *vhostfront.Frontend, load []byte) ([]byte, uint64) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	dir, fd := uint32(wire.DeviceStateSave), int(w.Fd())
	if load != nil {
		dir, fd = wire.DeviceStateLoad, int(r.Fd())
	}
	p := make([]byte, 8)
	binary.LittleEndian.PutUint32(p, dir)
	if _, err := f.CallWithFDs(wire.ReqSetDeviceStateFD, p, []int{fd}); err != nil {
		t.Fatalf("SET_DEVICE_STATE_FD: %v", err)
	}
	var saved []byte
	if load != nil {
		r.Close()
		w.Write(load)
		w.Close()
	} else {
		w.Close()
		saved, _ = io.ReadAll(r)
		r.Close()
	}
	check, err := f.GetU64(wire.ReqCheckDeviceState)
	if err != nil {
		t.Fatal(err)
	}
	return saved, check
}

func argBytes[T any](p *T) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(p)), unsafe.Sizeof(*p))[unsafe.Sizeof(fuse.InHeader{}):]
}

// A guest migrated from one daemon to another (vhost-user DEVICE_STATE)
// keeps its nodeids and its open files: the destination answers GETATTR
// and READ on them without the guest sending INIT, LOOKUP or OPEN again.
// A state sealed with another key is refused.
func TestMigrationKeepsNodeidsAndOpenFiles(t *testing.T) {
	bin := buildDaemon(t)
	shared := t.TempDir()
	os.MkdirAll(filepath.Join(shared, "d"), 0o755)
	os.WriteFile(filepath.Join(shared, "d", "f"), []byte("hello migration"), 0o644)
	key := filepath.Join(t.TempDir(), "key")
	os.WriteFile(key, []byte("0123456789abcdef0123456789abcdef"), 0o600)

	src := startVhost(t, bin, shared, key)
	if _, st, err := src.Init(fuse.CAP_EXPORT_SUPPORT); err != nil || !st.Ok() {
		t.Fatalf("INIT: %v %v", st, err)
	}
	d, st, err := src.Lookup(1, "d")
	if err != nil || !st.Ok() {
		t.Fatalf("LOOKUP d: %v %v", st, err)
	}
	f, st, err := src.Lookup(d.NodeId, "f")
	if err != nil || !st.Ok() {
		t.Fatalf("LOOKUP f: %v %v", st, err)
	}
	oin := fuse.OpenIn{Flags: syscall.O_RDONLY}
	r, err := src.FUSE(vhostfront.RequestQueue, vhostfront.OpOpen, f.NodeId, argBytes(&oin), nil, int(unsafe.Sizeof(fuse.OpenOut{})))
	if err != nil || !r.Status().Ok() {
		t.Fatalf("OPEN: %v %v", r, err)
	}
	fh := (*fuse.OpenOut)(unsafe.Pointer(&r.Body[0])).Fh

	state, check := transferState(t, src, nil)
	if check != 0 || len(state) == 0 {
		t.Fatalf("save: %d bytes, check %d", len(state), check)
	}

	dst := startVhost(t, bin, shared, key)
	if _, check := transferState(t, dst, state); check != 0 {
		t.Fatalf("load: check %d", check)
	}
	a, st, err := dst.GetAttr(f.NodeId)
	if err != nil || !st.Ok() || a.Size != uint64(len("hello migration")) {
		t.Fatalf("GETATTR of the migrated nodeid: %+v %v %v", a, st, err)
	}
	rin := fuse.ReadIn{Fh: fh, Size: 64}
	r, err = dst.FUSE(vhostfront.RequestQueue, vhostfront.OpRead, f.NodeId, argBytes(&rin), nil, 64)
	if err != nil || !r.Status().Ok() || string(r.Body) != "hello migration" {
		t.Fatalf("READ on the migrated fh: %q %v %v", r.Body, r.Status(), err)
	}
	self, st, err := dst.Lookup(f.NodeId, ".")
	if err != nil || !st.Ok() || self.NodeId != f.NodeId || self.Generation != f.Generation {
		t.Fatalf("LOOKUP(nodeid, .) at the destination: %+v %v %v (want nodeid %d generation %d)", self, st, err, f.NodeId, f.Generation)
	}

	otherKey := filepath.Join(t.TempDir(), "key")
	os.WriteFile(otherKey, []byte("another key, another daemon....."), 0o600)
	foreign := startVhost(t, bin, shared, otherKey)
	if _, check := transferState(t, foreign, state); check == 0 {
		t.Fatalf("a daemon with another key accepted the state")
	}
	if _, st, _ := foreign.GetAttr(f.NodeId); st.Ok() {
		t.Fatalf("the refused state was applied anyway")
	}
}

// An upgrade of a vhost-user daemon (SIGUSR2: exec of the binary) while a
// front-end is connected: the same connection goes on, the new process
// answers GETATTR and READ on the nodeid and file handle the old one gave
// out, and the pid stays.
func TestVhostUpgradeKeepsConnection(t *testing.T) {
	bin := buildDaemon(t)
	shared := t.TempDir()
	os.WriteFile(filepath.Join(shared, "f"), []byte("across exec"), 0o644)
	key := filepath.Join(t.TempDir(), "key")
	os.WriteFile(key, []byte("0123456789abcdef0123456789abcdef"), 0o600)
	fe, cmd, logPath := startVhostProc(t, bin, shared, key)
	if _, st, err := fe.Init(fuse.CAP_EXPORT_SUPPORT); err != nil || !st.Ok() {
		t.Fatalf("INIT: %v %v", st, err)
	}
	f, st, err := fe.Lookup(1, "f")
	if err != nil || !st.Ok() {
		t.Fatalf("LOOKUP: %v %v", st, err)
	}
	oin := fuse.OpenIn{Flags: syscall.O_RDONLY}
	r, err := fe.FUSE(vhostfront.RequestQueue, vhostfront.OpOpen, f.NodeId, argBytes(&oin), nil, int(unsafe.Sizeof(fuse.OpenOut{})))
	if err != nil || !r.Status().Ok() {
		t.Fatalf("OPEN: %v %v", r, err)
	}
	fh := (*fuse.OpenOut)(unsafe.Pointer(&r.Body[0])).Fh

	if err := cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, _ := os.ReadFile(logPath)
		if bytes.Contains(b, []byte("resumed=true")) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the new process did not resume the connection:\n%s", b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	a, st, err := fe.GetAttr(f.NodeId)
	if err != nil || !st.Ok() || a.Size != uint64(len("across exec")) {
		t.Fatalf("GETATTR after the upgrade: %+v %v %v", a, st, err)
	}
	rin := fuse.ReadIn{Fh: fh, Size: 64}
	r, err = fe.FUSE(vhostfront.RequestQueue, vhostfront.OpRead, f.NodeId, argBytes(&rin), nil, 64)
	if err != nil || !r.Status().Ok() || string(r.Body) != "across exec" {
		t.Fatalf("READ on the old fh after the upgrade: %q %v %v", r.Body, r.Status(), err)
	}
	if err := syscall.Kill(cmd.Process.Pid, 0); err != nil {
		t.Fatalf("the daemon's pid is gone after the upgrade: %v", err)
	}
}
