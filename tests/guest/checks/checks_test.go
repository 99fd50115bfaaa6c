package checks

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestResultRoundTrip(t *testing.T) {
	for _, r := range []Result{
		{Check: "walk", Status: Pass, Detail: "found 3 of 3"},
		{Check: "posixtest/Link", Status: Fail, Detail: "x\ny  z"},
		{Check: "handles-dir", Status: Skip},
	} {
		line := "[  1.0] junk " + r.String()
		got, ok := ParseResult(line + "\r\n")
		if !ok {
			t.Fatalf("ParseResult(%q) failed", line)
		}
		want := r
		if r.Detail == "x\ny  z" {
			want.Detail = "x y z" // one line on the console
		}
		if got != want {
			t.Errorf("ParseResult(%q) = %+v, want %+v", line, got, want)
		}
	}
	for _, bad := range []string{"RESULT", "RESULT walk", "RESULT walk MAYBE x", "walk PASS"} {
		if _, ok := ParseResult(bad); ok {
			t.Errorf("ParseResult(%q) accepted", bad)
		}
	}
}

func makeWalk(t *testing.T, dir string, n int) {
	t.Helper()
	for d := 0; d < WalkDirs(n); d++ {
		sub := filepath.Join(dir, fmt.Sprintf("d%03d", d))
		if err := os.MkdirAll(sub, 0o755); err != nil {
			t.Fatal(err)
		}
		for i := d * WalkPerDir; i < n && i < (d+1)*WalkPerDir; i++ {
			if err := os.WriteFile(filepath.Join(sub, fmt.Sprint(i)), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestWalkCountsExactly(t *testing.T) {
	dir := t.TempDir()
	makeWalk(t, dir, 1500)
	if r := Walk(dir, 1500); !r.Passed() {
		t.Errorf("Walk of 1500 files: %v", r)
	}
	if r := Walk(dir, 1501); r.Passed() {
		t.Errorf("Walk expecting 1501 of 1500 files passed: %v", r)
	}
	// A hard link is a second name, not a second file: distinct
	// (st_dev, st_ino) must catch it.
	if err := os.Link(filepath.Join(dir, "d000", "0"), filepath.Join(dir, "d000", "link")); err != nil {
		t.Fatal(err)
	}
	if r := Walk(dir, 1501); r.Passed() {
		t.Errorf("Walk counted a hard link as a distinct file: %v", r)
	}
	// An unreadable directory is an error, not silently skipped.
	if r := Walk(filepath.Join(dir, "missing"), 0); r.Passed() {
		t.Errorf("Walk of a missing directory passed: %v", r)
	}
}

func TestTokens(t *testing.T) {
	p := filepath.Join(t.TempDir(), "token")
	if r := WriteToken("w", p, "abc"); !r.Passed() {
		t.Fatal(r)
	}
	if r := CheckToken("c", p, "abc"); !r.Passed() {
		t.Error(r)
	}
	if r := CheckToken("c", p, "abd"); r.Passed() {
		t.Error("wrong token accepted")
	}
}

// TestHandlesOnHost: on the host file system (root has
// CAP_DAC_READ_SEARCH) handles survive a forgotten dentry, so the check
// passes here; and it fails when the files are gone.
func TestHandlesOnHost(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, HandleDir), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, HandleFile), []byte(HandleFileContent), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, HandleDir, HandleDirEntry), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	rs := Handles(dir, nil)
	if len(rs) != 2 {
		t.Fatalf("Handles = %v, want 2 results", rs)
	}
	for _, r := range rs {
		if !r.Passed() {
			t.Errorf("%v", r)
		}
	}
	// Remove the file between taking the handle and opening it.
	rs = Handles(dir, func() error {
		return os.Remove(filepath.Join(dir, HandleFile))
	})
	for _, r := range rs {
		if r.Check == "handles-file" && r.Passed() {
			t.Errorf("handle of a deleted file opened: %v", r)
		}
	}
}

// TestIdentityOnHost: two tmpfs mounts with colliding st_ino have distinct
// st_dev on the host, so the check passes; a bind mount of the same tmpfs
// shows the same file twice and must fail.
func TestIdentityOnHost(t *testing.T) {
	dir := t.TempDir()
	mount := func(p string) {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mount("tmpfs", p, "tmpfs", 0, "size=1m"); err != nil {
			t.Fatalf("mount tmpfs (tests run as root): %v", err)
		}
		t.Cleanup(func() { unix.Unmount(p, unix.MNT_DETACH) })
	}
	mount(filepath.Join(dir, "a"))
	mount(filepath.Join(dir, "b"))
	for i, f := range IdentityFiles {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(IdentityContent(i)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	rs := Identity(dir)
	for _, r := range rs {
		if !r.Passed() {
			t.Errorf("%v", r)
		}
	}

	// The same tmpfs bind-mounted on b: b/f is a/f, which the check must
	// notice (here by its content; a daemon that mixed up two files would
	// be caught the same way).
	dir2 := t.TempDir()
	mount(filepath.Join(dir2, "a"))
	if err := os.WriteFile(filepath.Join(dir2, "a", "f"), []byte(IdentityContent(0)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir2, "b"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(filepath.Join(dir2, "a"), filepath.Join(dir2, "b"), "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(filepath.Join(dir2, "b"), unix.MNT_DETACH) })
	rs = Identity(dir2)
	if len(rs) == 0 || rs[0].Passed() {
		t.Errorf("Identity with one file seen twice passed: %v", rs)
	}
}
