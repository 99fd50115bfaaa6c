package guest

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/posixtest"

	"github.com/govirtiofsd/govirtiofsd/tests/guest/checks"
)

// These tests boot real guests (TCG, ~4 s a boot) against the peers and
// assert what a user of each daemon sees, as measured on Debian's packages
// (bookworm's QEMU 7.2 C virtiofsd, trixie's Rust virtiofsd 1.13). They need
// root and the assets of scripts/guest/install.sh; without them they fail.

var (
	guestOnce sync.Once
	guestVal  *Guest
	guestErr  error
	guestDir  string
)

func TestMain(m *testing.M) {
	if sock := os.Getenv("GUEST_TEST_SILENT_DAEMON"); sock != "" {
		silentDaemon(sock)
		return
	}
	code := m.Run()
	if guestDir != "" {
		os.RemoveAll(guestDir)
	}
	os.Exit(code)
}

// testGuest builds guestcheck and the initramfs once per test binary.
func testGuest(t *testing.T) *Guest {
	t.Helper()
	guestOnce.Do(func() {
		env, err := LoadEnv()
		if err != nil {
			guestErr = err
			return
		}
		if guestDir, err = os.MkdirTemp("", "guest-test-"); err != nil {
			guestErr = err
			return
		}
		guestVal, guestErr = PrepareGuest(env, guestDir)
	})
	if guestErr != nil {
		t.Fatalf("guest tests need root and the assets of scripts/guest/install.sh (run it as root): %v", guestErr)
	}
	return guestVal
}

// runGuest runs the checks against d; the console and the daemon's log are
// printed only if the test fails.
func runGuest(t *testing.T, d Daemon, cs ...string) *Report {
	t.Helper()
	var log bytes.Buffer
	rep, err := Run(context.Background(), Options{Guest: testGuest(t), Daemon: d, Checks: cs, Log: &log})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("progress and console:\n%s", log.String())
			if rep != nil {
				t.Logf("daemon log (tail):\n%s", tail2(rep.DaemonLog, 4000))
			}
		}
	})
	if err != nil {
		t.Fatalf("Run %s: %v", d.Name, err)
	}
	var boots []string
	for _, b := range rep.Boots {
		boots = append(boots, b.Round(100e6).String())
	}
	t.Logf("%s: guest runs took %s; after walk: %v; peak: %v", d.Name, strings.Join(boots, " + "), rep.WalkSample, rep.Peak)
	return rep
}

func tail2(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// expect asserts the status of a result line and, if contains is not empty,
// that its detail mentions it.
func expect(t *testing.T, rep *Report, check string, st checks.Status, contains string) {
	t.Helper()
	r, ok := rep.Result(check)
	if !ok {
		t.Errorf("%s: no %q result", rep.Daemon, check)
		return
	}
	if r.Status != st || !strings.Contains(r.Detail, contains) {
		t.Errorf("%s: %s = %s %q, want %s (detail containing %q)", rep.Daemon, check, r.Status, r.Detail, st, contains)
	}
}

// posixtestUnasserted are posixtest cases whose outcome says nothing about
// the daemon: FcntlFlockLocksFile expects two fds of one process to conflict
// over a POSIX record lock, which no Linux file system does (it fails on the
// host's own ext4 too). It is still reported.
var posixtestUnasserted = map[string]bool{"FcntlFlockLocksFile": true}

// Posixtest cases the peers skip: O_TMPFILE is not implemented by either,
// and xattrs are off by default in both.
var peerPosixtestSkips = map[string]bool{"Tmpfile": true, "XAttr": true, "XAttrLarge": true}

// checkPosixtest asserts that every posixtest case ran in the guest and
// passed, except the skips and posixtestUnasserted. (OpenSymlinkRace can fail
// on the host's own file system, where nothing stops the race; through a
// FUSE server that opens with O_NOFOLLOW it must pass.)
func checkPosixtest(t *testing.T, rep *Report, skips map[string]bool) {
	t.Helper()
	got := rep.Posixtest()
	if len(got) != len(posixtest.All) {
		t.Errorf("%s: %d posixtest results, want %d", rep.Daemon, len(got), len(posixtest.All))
	}
	for name := range posixtest.All {
		if posixtestUnasserted[name] {
			continue
		}
		want := checks.Pass
		if skips[name] {
			want = checks.Skip
		}
		if r, ok := got[name]; !ok || r.Status != want {
			t.Errorf("%s: posixtest/%s = %v %q, want %s", rep.Daemon, name, r.Status, r.Detail, want)
		}
	}
}

// TestCVirtiofsd: QEMU 7.2's C virtiofsd, default options (no submount
// announcement, one O_PATH fd per inode the guest knows).
func TestCVirtiofsd(t *testing.T) {
	g := testGuest(t)
	rep := runGuest(t, CVirtiofsd(g.Env, "c"), AllChecks...)
	expect(t, rep, "mount", checks.Pass, "")
	checkPosixtest(t, rep, peerPosixtestSkips)
	// The two tmpfs files look like one file to the guest.
	expect(t, rep, "identity", checks.Fail, "share (st_dev, st_ino)")
	expect(t, rep, "identity-dino", checks.Pass, "")
	// Guest file handles die with the guest's inode cache.
	expect(t, rep, "handles-file", checks.Fail, "ESTALE")
	expect(t, rep, "handles-dir", checks.Fail, "ESTALE")
	// One fd per inode: the walk runs into RLIMIT_NOFILE and the guest's
	// find misses files.
	expect(t, rep, "walk", checks.Fail, "EMFILE")
	if rep.Peak.FDs < 19000 {
		t.Errorf("c: peak fds = %d, want ≥ 19000 (one per inode)", rep.Peak.FDs)
	}
	// A guest reboot keeps working (token written before the walk), and
	// the device reset makes the daemon drop its per-inode fds ...
	expect(t, rep, "reboot", checks.Pass, "")
	if s, ok := rep.Samples["reboot"]; !ok || s.FDs > 200 {
		t.Errorf("c: fds after the guest's reboot = %v, want ≤ 200", s)
	}
	// ... but the daemon exits when QEMU disconnects.
	expect(t, rep, "reconnect", checks.Fail, "daemon exited")
}

// TestRustVirtiofsd: the Rust virtiofsd 1.13 with O_PATH fds
// (--inode-file-handles=never, its default) and submount announcement (its
// default).
func TestRustVirtiofsd(t *testing.T) {
	g := testGuest(t)
	rep := runGuest(t, RustVirtiofsd(g.Env, "rust", "--inode-file-handles=never"), AllChecks...)
	expect(t, rep, "mount", checks.Pass, "")
	checkPosixtest(t, rep, peerPosixtestSkips)
	// Announced submounts: the guest gives each tmpfs its own st_dev.
	expect(t, rep, "identity", checks.Pass, "")
	expect(t, rep, "identity-dino", checks.Pass, "")
	expect(t, rep, "handles-file", checks.Fail, "ESTALE")
	expect(t, rep, "handles-dir", checks.Fail, "ESTALE")
	expect(t, rep, "walk", checks.Fail, "too many open files")
	if rep.Peak.FDs < 19000 {
		t.Errorf("rust: peak fds = %d, want ≥ 19000 (one per inode)", rep.Peak.FDs)
	}
	expect(t, rep, "reboot", checks.Pass, "")
	if s, ok := rep.Samples["reboot"]; !ok || s.FDs > 200 {
		t.Errorf("rust: fds after the guest's reboot = %v, want ≤ 200", s)
	}
	expect(t, rep, "reconnect", checks.Fail, "daemon exited")
}

// TestRustFileHandles: the Rust virtiofsd with --inode-file-handles=prefer
// keeps host file handles instead of fds, so the 20k-file walk completes with
// a handful of fds (the positive control for the walk check); guest file
// handles still fail, and without submount announcement the two tmpfs files
// collide.
func TestRustFileHandles(t *testing.T) {
	g := testGuest(t)
	rep := runGuest(t, RustVirtiofsd(g.Env, "rust-fh-nosubmounts", "--inode-file-handles=prefer", "--no-announce-submounts"),
		CheckIdentity, CheckHandles, CheckWalk)
	expect(t, rep, "mount", checks.Pass, "")
	expect(t, rep, "identity", checks.Fail, "share (st_dev, st_ino)")
	expect(t, rep, "handles-file", checks.Fail, "ESTALE")
	expect(t, rep, "handles-dir", checks.Fail, "ESTALE")
	expect(t, rep, "walk", checks.Pass, "found 20000 of 20000 files")
	if rep.Peak.FDs > 1000 {
		t.Errorf("rust with file handles: peak fds = %d, want ≤ 1000", rep.Peak.FDs)
	}
}

// TestDaemonThatDoesNotListen: the harness reports a daemon that never
// creates its socket as an error with the daemon's own output.
func TestDaemonThatDoesNotListen(t *testing.T) {
	g := testGuest(t)
	_, err := Run(context.Background(), Options{Guest: g, Checks: []string{CheckIdentity},
		Daemon: Daemon{Name: "broken", Args: []string{"/bin/sh", "-c", "echo no vhost-user here >&2; exit 3"}}})
	if err == nil || !strings.Contains(err.Error(), "exited before creating") || !strings.Contains(err.Error(), "no vhost-user here") {
		t.Fatalf("Run with a daemon that exits: err = %v", err)
	}
}

// silentDaemon is a vhost-user "backend" that accepts the front-end's
// connection and never answers: QEMU then hangs while realizing the device.
func silentDaemon(sock string) {
	l, err := net.Listen("unix", sock)
	if err != nil {
		os.Exit(1)
	}
	var conns []net.Conn
	for {
		c, err := l.Accept()
		if err != nil {
			os.Exit(1)
		}
		conns = append(conns, c) // keep it open, say nothing
	}
}

// TestHostTimeout: a daemon that accepts the connection but never answers
// leaves QEMU hanging before the guest starts; the host timeout must stop it
// and every check must be a FAIL saying so.
func TestHostTimeout(t *testing.T) {
	g := testGuest(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	rep, err := Run(context.Background(), Options{Guest: g, Checks: []string{CheckIdentity, CheckHandles},
		Timeout: 20 * time.Second,
		Daemon:  Daemon{Name: "silent", Args: []string{"/usr/bin/env", "GUEST_TEST_SILENT_DAEMON={socket}", self}}})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if took := time.Since(start); took > time.Minute {
		t.Errorf("Run took %v with a 20s timeout", took)
	}
	for _, c := range []string{"identity", "handles-file", "handles-dir"} {
		expect(t, rep, c, checks.Fail, "host timeout")
	}
}

// TestInitramfsContents lists the initramfs with the system's cpio.
func TestInitramfsContents(t *testing.T) {
	g := testGuest(t)
	cmd := exec.Command("sh", "-c", "gzip -dc < \"$0\" | cpio -t --quiet", g.Initrd)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("list %s: %v", g.Initrd, err)
	}
	have := map[string]bool{}
	for _, l := range strings.Split(string(out), "\n") {
		have[l] = true
	}
	want := []string{"init", "bin/busybox", "bin/sh", "bin/guestcheck", "dev/console"}
	for _, m := range g.Env.Modules {
		want = append(want, "lib/modules/"+m+".ko")
	}
	for _, w := range want {
		if !have[w] {
			t.Errorf("initramfs lacks %s; has %q", w, out)
		}
	}
}
