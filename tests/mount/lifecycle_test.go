package mount

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/tests/mount/mounttest"
)

// TestStopSIGINT: SIGINT unmounts and exits 0 like SIGTERM.
func TestStopSIGINT(t *testing.T) {
	if !enabled(t) {
		return
	}
	d := mounttest.Start(t, mounttest.Options{})
	if err := os.WriteFile(filepath.Join(d.Mnt, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	d.ExpectExit()
	d.Signal(syscall.SIGINT)
	exited, err := d.Wait(15 * time.Second)
	if !exited || err != nil {
		t.Fatalf("after SIGINT: exited %v, %v", exited, err)
	}
	if ok, _ := mounttest.IsMountPoint(d.Mnt); ok {
		t.Errorf("%s still mounted after SIGINT", d.Mnt)
	}
	if b, err := os.ReadFile(filepath.Join(d.Shared, "f")); err != nil || string(b) != "x" {
		t.Errorf("host file after shutdown: %q %v", b, err)
	}
}

// TestStopBusy: SIGTERM while a process holds a file and a directory
// inside the mount still ends with the server gone (exit 0) and the mount
// detached (as libfuse does with a lazy unmount); the holder then sees
// errors, not a hang.
func TestStopBusy(t *testing.T) {
	if !enabled(t) {
		return
	}
	d := mounttest.Start(t, mounttest.Options{})
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Mkdir(filepath.Join(d.Mnt, "d"), 0o755))
	f, err := os.Create(filepath.Join(d.Mnt, "d", "f"))
	must(err)
	defer f.Close()
	dir, err := os.Open(filepath.Join(d.Mnt, "d"))
	must(err)
	defer dir.Close()
	d.ExpectExit()
	d.Signal(syscall.SIGTERM)
	exited, err := d.Wait(15 * time.Second)
	if !exited || err != nil {
		t.Fatalf("SIGTERM with files open in the mount: exited %v, %v\n%s", exited, err, d.Log())
	}
	if ok, _ := mounttest.IsMountPoint(d.Mnt); ok {
		t.Errorf("%s still mounted after the server exited", d.Mnt)
	}
	done := make(chan error, 1)
	go func() { _, err := f.Write([]byte("late")); done <- err }()
	select {
	case err := <-done:
		if err == nil {
			t.Logf("write after shutdown succeeded (page cache)")
		}
	case <-time.After(10 * time.Second):
		t.Errorf("a write to a file of the stopped server hangs")
	}
}
