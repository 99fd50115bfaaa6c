package mount

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/govirtiofsd/govirtiofsd/tests/mount/mounttest"
	"github.com/govirtiofsd/govirtiofsd/tests/mount/suite"
	"golang.org/x/sys/unix"
)

// loopbackCannot lists suite cases go-fuse's example loopback fails by
// design, with the reason; they still run against govirtiofsd.
var loopbackCannot = map[string]string{
	"flock_host":                "does not negotiate FUSE_FLOCK_LOCKS: flock stays in the local kernel and never meets a lock on the host file",
	"posix_lock_host":           "does not set MountOptions.EnableLocks: POSIX locks stay in the local kernel and never meet a lock on the host file",
	"nonroot_setgid_dir":        "creates as root and then chowns to the caller's uid:gid, overriding the setgid directory's group",
	"nonroot_setgid_dir_member": "creates as root and then chowns to the caller's uid:gid, overriding the setgid directory's group",
	"setattr_on_fd":             "path-based: fchmod of an open, unlinked file resolves the old path and gets ENOENT",
	"tmpfile_linkat":            "an O_TMPFILE file has no path in the loopback, so linkat gives EXDEV",
}

// loopbackCannotTests lists top-level tests the loopback fails by design.
var loopbackCannotTests = map[string]string{
	"TestStopBusy": "go-fuse's example ignores a failed (EBUSY) unmount and waits forever",
}

// enabled reports whether the top-level test t runs against the current
// target, logging why not.
func enabled(t *testing.T) bool {
	if why, ok := loopbackCannotTests[t.Name()]; ok && mounttest.IsLoopback() {
		t.Logf("not run against the loopback: %s", why)
		return false
	}
	if mounttest.IsLoopback() || runAll || enabledTests[t.Name()] {
		return true
	}
	t.Logf("pending against govirtiofsd: add %q to enabledTests in enabled_test.go, or run with -tags pending", t.Name())
	return false
}

// suiteCases picks the suite cases to run against the current target.
func suiteCases(t *testing.T, names []string) (run []string, exclude map[string]string) {
	exclude = map[string]string{}
	for _, n := range names {
		switch {
		case mounttest.IsLoopback():
			if why, ok := loopbackCannot[n]; ok {
				exclude[n] = "loopback: " + why
				continue
			}
		case !runAll && !enabledSuite[n]:
			continue
		}
		run = append(run, n)
	}
	if len(run) < len(names) {
		t.Logf("%d of %d cases run against %s; the rest are pending", len(run), len(names), mounttest.Target())
	}
	return run, exclude
}

func runSuite(t *testing.T, names []string, flags []string, opts suite.Options) {
	run, exclude := suiteCases(t, names)
	if len(run) == 0 {
		return
	}
	d := mounttest.Start(t, mounttest.Options{Flags: flags})
	opts.Cases = run
	opts.Exclude = exclude
	opts.HostInodes = opts.HostInodes || mounttest.IsLoopback()
	opts.ServerFDs = func() (int, error) { return mounttest.FDCount(d.Pid()) }
	suite.Run(t, d.Mnt, d.Shared, opts)
}

// TestSuite runs every conformance case on one mount with --xattr.
func TestSuite(t *testing.T) {
	runSuite(t, suite.Names(), []string{"--xattr"}, suite.Options{Xattr: true})
}

// TestSuiteHostInodes runs the identity-sensitive cases with
// --inode-numbers=host, where st_ino must equal the host's.
func TestSuiteHostInodes(t *testing.T) {
	if mounttest.IsLoopback() {
		return // TestSuite already compares st_ino with the host for the loopback
	}
	names := []string{"getattr_matches_host", "getattr_stable_ino", "link", "readdir_dino_is_stino", "rename_exchange"}
	runSuite(t, names, []string{"--inode-numbers=host"}, suite.Options{HostInodes: true})
}

// TestSuiteNoXattr: without --xattr, xattr calls fail with EOPNOTSUPP.
func TestSuiteNoXattr(t *testing.T) {
	if mounttest.IsLoopback() {
		return // the loopback always passes xattrs through
	}
	runSuite(t, []string{"xattr"}, nil, suite.Options{Xattr: false})
}

// cacheModePending lists mode/case pairs that stay pending against
// govirtiofsd until -tags pending, with the reason.
// (None now: MAP_SHARED under direct I/O works since the daemon negotiates
// FUSE_DIRECT_IO_ALLOW_MMAP.)
var cacheModePending = map[string]string{}

// TestCacheModes runs the data-path cases under each --cache policy.
func TestCacheModes(t *testing.T) {
	names := []string{"read_write_offsets", "close_flush", "mmap_shared", "rename", "getattr_matches_host", "open_append", "open_trunc", "unlink"}
	for _, mode := range []string{"auto", "always", "metadata", "never"} {
		t.Run(mode, func(t *testing.T) {
			if mounttest.IsLoopback() && mode != "auto" {
				return // the loopback has one cache policy
			}
			var run []string
			for _, n := range names {
				if why, ok := cacheModePending[mode+"/"+n]; ok && !runAll && !mounttest.IsLoopback() {
					t.Logf("%s pending: %s", n, why)
					continue
				}
				run = append(run, n)
			}
			runSuite(t, run, []string{"--cache=" + mode}, suite.Options{})
		})
	}
}

// TestReadonly: with --readonly everything that would change the shared
// directory fails with EROFS and the host files stay as they were.
func TestReadonly(t *testing.T) {
	if !enabled(t) {
		return
	}
	d := mounttest.Start(t, mounttest.Options{
		Flags: []string{"--readonly", "--xattr"},
		Setup: func(t testing.TB, shared string) {
			os.WriteFile(filepath.Join(shared, "f"), []byte("read only"), 0o644)
			os.Mkdir(filepath.Join(shared, "d"), 0o755)
		},
	})
	m := func(n string) string { return filepath.Join(d.Mnt, n) }
	if b, err := os.ReadFile(m("f")); err != nil || string(b) != "read only" {
		t.Errorf("read: %q %v", b, err)
	}
	if _, err := os.ReadDir(m("d")); err != nil {
		t.Errorf("readdir: %v", err)
	}
	checks := map[string]error{
		"open for writing": func() error { _, err := os.OpenFile(m("f"), os.O_WRONLY, 0); return err }(),
		"create":           os.WriteFile(m("new"), nil, 0o644),
		"mkdir":            os.Mkdir(m("nd"), 0o755),
		"unlink":           os.Remove(m("f")),
		"rmdir":            os.Remove(m("d")),
		"rename":           os.Rename(m("f"), m("g")),
		"chmod":            os.Chmod(m("f"), 0o600),
		"chown":            os.Chown(m("f"), 1, 1),
		"truncate":         os.Truncate(m("f"), 0),
		"symlink":          os.Symlink("x", m("l")),
		"link":             os.Link(m("f"), m("h")),
		"mknod":            unix.Mkfifo(m("p"), 0o644),
		"setxattr":         unix.Setxattr(m("f"), "user.x", []byte("x"), 0),
		"utimes":           unix.UtimesNano(m("f"), []unix.Timespec{{Sec: 1}, {Sec: 1}}),
	}
	for what, err := range checks {
		if !isErrno(err, unix.EROFS) {
			t.Errorf("%s on a --readonly mount: %v, want EROFS", what, err)
		}
	}
	if b, err := os.ReadFile(filepath.Join(d.Shared, "f")); err != nil || string(b) != "read only" {
		t.Errorf("host file changed: %q %v", b, err)
	}
}

func isErrno(err error, want unix.Errno) bool {
	var en unix.Errno
	for err != nil {
		if e, ok := err.(unix.Errno); ok {
			en = e
			break
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			break
		}
		err = u.Unwrap()
	}
	return en == want
}

// TestHarnessLoopback checks the harness itself against go-fuse's loopback,
// whatever the target: start, serve, restart, stop cleanly.
func TestHarnessLoopback(t *testing.T) {
	d := mounttest.StartKind(t, mounttest.Loopback, mounttest.Options{})
	if ok, err := mounttest.IsFUSEMount(d.Mnt); !ok || err != nil {
		t.Fatalf("%s is not a FUSE mount: %v", d.Mnt, err)
	}
	if err := os.WriteFile(filepath.Join(d.Mnt, "f"), []byte("through"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(d.Shared, "f")); err != nil || string(b) != "through" {
		t.Fatalf("host sees %q %v", b, err)
	}
	n, err := mounttest.FDCount(d.Pid())
	if err != nil || n < 4 {
		t.Errorf("fd count of the loopback: %d %v", n, err)
	}
	old := d.Pid()
	d.Restart()
	if d.Pid() == old {
		t.Errorf("restart kept pid %d", old)
	}
	if b, err := os.ReadFile(filepath.Join(d.Mnt, "f")); err != nil || string(b) != "through" {
		t.Fatalf("after restart: %q %v", b, err)
	}
}

// TestSuiteSmallFDCache runs the whole suite with --max-open-fds=32, so
// node fds are evicted and host files re-resolved all the time, and checks
// the daemon's fds stay within the bound once the cases closed their files.
func TestSuiteSmallFDCache(t *testing.T) {
	if mounttest.IsLoopback() {
		return // the loopback keeps no fd cache
	}
	const bound = 32
	run, exclude := suiteCases(t, suite.Names())
	if len(run) == 0 {
		return
	}
	d := mounttest.Start(t, mounttest.Options{Flags: []string{"--xattr", fmt.Sprintf("--max-open-fds=%d", bound)}})
	suite.Run(t, d.Mnt, d.Shared, suite.Options{
		Xattr: true, Cases: run, Exclude: exclude,
		ServerFDs: func() (int, error) { return mounttest.FDCount(d.Pid()) },
	})
	mounttest.DropCaches(t)
	// The process's own fds (stdio, /dev/fuse, state files, epoll...) come
	// on top; 32 is generous for them.
	if n, err := mounttest.FDCount(d.Pid()); err != nil || n > bound+32 {
		t.Errorf("daemon holds %d fds (%v) after the suite with --max-open-fds=%d", n, err, bound)
	}
}
