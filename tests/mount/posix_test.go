package mount

import (
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/govirtiofsd/govirtiofsd/tests/mount/mounttest"
	"github.com/hanwen/go-fuse/v2/posixtest"
	"golang.org/x/sys/unix"
)

// posixCannot lists posixtest cases that cannot pass whatever the server
// does, because the host kernel itself forbids what they ask. hostForbids
// checks that on the host, next to the shared directory: when it reports
// true the case runs in a child process and must end with outcome ("FAIL"
// or "SKIP") and wantOutput in its output; when the host allows it after
// all, the case must pass like any other.
var posixCannot = map[string]struct {
	reason      string
	hostForbids func(t *testing.T, dir string) bool
	outcome     string
	wantOutput  string
}{
	"FcntlFlockLocksFile": {
		reason: "it expects F_SETLK through a second fd of the same process to conflict, but POSIX record locks belong " +
			"to the process: the host kernel grants it on a native file (go-fuse's own TestAll leaves it out: 'TODO - fix this test')",
		hostForbids: func(t *testing.T, dir string) bool {
			p := filepath.Join(dir, "lockprobe")
			f1, err := os.Create(p)
			if err != nil {
				t.Fatal(err)
			}
			defer f1.Close()
			wl := syscall.Flock_t{Type: syscall.F_WRLCK}
			if err := syscall.FcntlFlock(f1.Fd(), syscall.F_SETLK, &wl); err != nil {
				t.Fatal(err)
			}
			f2, err := os.OpenFile(p, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f2.Close()
			rl := syscall.Flock_t{Type: syscall.F_RDLCK}
			return syscall.FcntlFlock(f2.Fd(), syscall.F_SETLK, &rl) == nil
		},
		outcome:    "FAIL",
		wantOutput: "expected EAGAIN",
	},
	"XAttrLarge": {
		reason: "it sets an 8 KiB+123 xattr value; the host file system (ext4 without ea_inode) holds xattrs in one block " +
			"and refuses, so the case skips itself",
		hostForbids: func(t *testing.T, dir string) bool {
			p := filepath.Join(dir, "xattrprobe")
			if err := os.WriteFile(p, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			err := unix.Setxattr(p, "user.large", make([]byte, 8<<10+123), 0)
			return err == unix.ENOSPC || err == unix.E2BIG || err == unix.ENOTSUP
		},
		outcome:    "SKIP",
		wantOutput: "does not support large xattrs",
	},
}

// posixLoopbackCannot lists posixtest cases the loopback fails by design.
var posixLoopbackCannot = map[string]string{
	"RenameOpenDir": "path-based: fstat of an open directory that a rename replaced resolves the path and finds the other directory (go-fuse issue 55)",
}

const (
	envPosixCase = "GOVIRTIOFSD_POSIXTEST_CASE"
	envPosixDir  = "GOVIRTIOFSD_POSIXTEST_DIR"
)

// TestPosix runs every case of go-fuse's posixtest on a govirtiofsd mount
// with --xattr, each in its own directory. A case that skips itself fails
// here: a skip is not a pass.
func TestPosix(t *testing.T) {
	var names []string
	for n := range posixtest.All {
		switch {
		case mounttest.IsLoopback():
			if why, ok := posixLoopbackCannot[n]; ok {
				t.Logf("not running %s against the loopback: %s", n, why)
				continue
			}
		case !runAll && !enabledPosix[n]:
			continue
		}
		names = append(names, n)
	}
	if len(names) == 0 {
		t.Logf("no posixtest case enabled against %s", mounttest.Target())
		return
	}
	sort.Strings(names)
	d := mounttest.Start(t, mounttest.Options{Flags: []string{"--xattr"}})
	for _, n := range names {
		dir := filepath.Join(d.Mnt, "posix-"+n)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if c, ok := posixCannot[n]; ok {
			probe := filepath.Join(filepath.Dir(d.Shared), "probe-"+n)
			if err := os.Mkdir(probe, 0o755); err != nil {
				t.Fatal(err)
			}
			if c.hostForbids(t, probe) {
				t.Run(n, func(t *testing.T) { posixExpectFailure(t, n, dir, c.reason, c.outcome, c.wantOutput) })
				continue
			}
			t.Logf("the host allows what %s needs after all; it must pass", n)
		}
		skipped := false
		t.Run(n, func(t *testing.T) {
			defer func() { skipped = t.Skipped() }()
			posixtest.All[n](t, dir)
		})
		if skipped {
			t.Errorf("posixtest %s skipped itself; a skip is not a pass (give a reason in posixCannot if the kernel forbids it)", n)
		}
	}
}

// posixExpectFailure runs case n in a child test process and asserts it
// fails with wantOutput in its output.
func posixExpectFailure(t *testing.T, n, dir, reason, outcome, wantOutput string) {
	t.Logf("expected to %s: %s", outcome, reason)
	cmd := exec.Command(os.Args[0], "-test.run=^TestPosixChild$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), envPosixCase+"="+n, envPosixDir+"="+dir)
	out, err := cmd.CombinedOutput()
	got := "PASS"
	switch {
	case err != nil:
		got = "FAIL"
	case strings.Contains(string(out), "--- SKIP: TestPosixChild"):
		got = "SKIP"
	}
	if got != outcome || !strings.Contains(string(out), wantOutput) {
		t.Errorf("posixtest %s: %s, want %s with %q (it is listed as impossible: %s)\n%s", n, got, outcome, wantOutput, reason, out)
	}
}

// TestPosixChild runs one posixtest case for posixExpectFailure; without
// its environment it has nothing to do.
func TestPosixChild(t *testing.T) {
	n := os.Getenv(envPosixCase)
	if n == "" {
		return
	}
	posixtest.All[n](t, os.Getenv(envPosixDir))
}
