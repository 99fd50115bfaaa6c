package creds

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// Files created while switched belong to the caller, and the switch is
// undone afterwards, on this thread only.
func TestSwitchOwnsNewFiles(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root (the test suite runs as root)")
	}
	dir := t.TempDir()
	os.Chmod(filepath.Dir(dir), 0o755) // t.TempDir makes it 0700
	os.Chmod(dir, 0o777)
	restore, err := Switch(1234, 5678)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "f")
	err = os.WriteFile(p, nil, 0o644)
	// A file in a root-only directory is refused while switched.
	denied := os.WriteFile("/root/.govirtiofsd-creds-test", nil, 0o644)
	restore()
	if err != nil {
		t.Fatal(err)
	}
	if denied == nil {
		os.Remove("/root/.govirtiofsd-creds-test")
		t.Errorf("a switched thread wrote into /root")
	}
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	if st.Uid != 1234 || st.Gid != 5678 {
		t.Errorf("new file owned by %d:%d, want 1234:5678", st.Uid, st.Gid)
	}
	q := filepath.Join(dir, "g")
	if err := os.WriteFile(q, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(q, &st); err != nil || st.Uid != 0 {
		t.Errorf("after restore, new file owned by %d, want 0 (%v)", st.Uid, err)
	}
}
