// Package suite is a conformance suite for a FUSE passthrough file server:
// every case drives a mounted file system with real syscalls and asserts
// what a user sees (content, modes, owners, errors), and where the host
// side of the shared directory is visible, what the host sees.
//
// The suite knows nothing about how the server was started: Run takes a
// mount point and, optionally, the host path of the directory it serves, so
// it runs against a local /dev/fuse mount as well as inside a guest.
//
// Cases that act as another user or need a second process (locks) re-exec
// the current binary; such binaries must call HelperMain first thing in
// main or TestMain.
package suite

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// Options describe the mount under test.
type Options struct {
	// Xattr: the server was started with --xattr, so the xattr cases expect
	// xattrs to work; otherwise they expect EOPNOTSUPP.
	Xattr bool
	// HostInodes: st_ino through the mount must equal the host's st_ino
	// (--inode-numbers=host, or a plain passthrough).
	HostInodes bool
	// Cases restricts the run to these cases; nil runs all.
	Cases []string
	// Exclude maps cases not to run to the reason why. A reason is
	// mandatory; excluded cases are logged.
	Exclude map[string]string
	// UID and GID of the non-root caller; 0 means 1000.
	UID, GID uint32
	// ServerFDs, when set, reports the server's open fd count; Run logs
	// how it moved over each case.
	ServerFDs func() (int, error)
}

// Env is what a case gets: its own fresh directory, through the mount and
// (when visible) on the host.
type Env struct {
	// Dir is the case's directory through the mount.
	Dir string
	// Host is the same directory on the host, or "" when the host side
	// is not visible (inside a guest).
	Host string
	// Mnt is the mount point and Shared the shared directory's host path
	// ("" when not visible).
	Mnt, Shared string
	Opts        Options
	// MountDev is st_dev of the mount's root.
	MountDev uint64
}

// Case is one conformance check.
type Case func(t *testing.T, e *Env)

// Cases holds every case by name. Names are stable: the lead's pending
// lists refer to them.
var Cases = map[string]Case{}

func register(name string, c Case) {
	if _, dup := Cases[name]; dup {
		panic("suite: duplicate case " + name)
	}
	Cases[name] = c
}

// Names returns the sorted case names.
func Names() []string {
	var ns []string
	for n := range Cases {
		ns = append(ns, n)
	}
	sort.Strings(ns)
	return ns
}

// Run runs the selected cases as subtests, each in a fresh directory
// "case-NAME" created through the mount.
func Run(t *testing.T, mnt, shared string, opts Options) {
	if opts.UID == 0 {
		opts.UID = 1000
	}
	if opts.GID == 0 {
		opts.GID = 1000
	}
	names := opts.Cases
	if names == nil {
		names = Names()
	}
	for _, n := range names {
		if _, ok := Cases[n]; !ok {
			t.Fatalf("unknown case %q", n)
		}
	}
	for n, why := range opts.Exclude {
		if strings.TrimSpace(why) == "" {
			t.Fatalf("case %s is excluded without a reason", n)
		}
	}
	t.Cleanup(removeHelperBinary)
	var root unix.Stat_t
	if err := unix.Stat(mnt, &root); err != nil {
		t.Fatalf("stat mount point: %v", err)
	}
	for _, n := range names {
		if why, ok := opts.Exclude[n]; ok {
			t.Logf("not running %s: %s", n, why)
			continue
		}
		c := Cases[n]
		var serverBefore int
		if opts.ServerFDs != nil {
			serverBefore, _ = opts.ServerFDs()
		}
		t.Run(n, func(t *testing.T) {
			before := fdsUnder(mnt, shared)
			e := &Env{Mnt: mnt, Shared: shared, Opts: opts, MountDev: root.Dev}
			e.Dir = filepath.Join(mnt, "case-"+n)
			if err := os.Mkdir(e.Dir, 0o755); err != nil {
				t.Fatalf("mkdir case dir: %v", err)
			}
			// Mkdir applies the umask; the case dir must be reachable by
			// the non-root caller whatever the umask.
			if err := os.Chmod(e.Dir, 0o755); err != nil {
				t.Fatalf("chmod case dir: %v", err)
			}
			if shared != "" {
				e.Host = filepath.Join(shared, "case-"+n)
			}
			c(t, e)
			if leaked := newFDs(before, fdsUnder(mnt, shared)); len(leaked) > 0 {
				t.Errorf("the case left fds open on the mount or the shared dir: %v", leaked)
			}
			if !t.Failed() {
				if err := os.RemoveAll(e.Dir); err != nil {
					t.Errorf("removing case dir through the mount: %v", err)
				}
			}
		})
		if opts.ServerFDs != nil {
			if after, err := opts.ServerFDs(); err == nil {
				t.Logf("%s: server fds %d -> %d", n, serverBefore, after)
			}
		}
	}
}

// fdsUnder lists this process's fds that point into the mount or the
// shared dir, as "fd -> path".
func fdsUnder(dirs ...string) map[string]bool {
	out := map[string]bool{}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return out
	}
	for _, ent := range ents {
		target, err := os.Readlink("/proc/self/fd/" + ent.Name())
		if err != nil {
			continue
		}
		for _, d := range dirs {
			if d != "" && (target == d || strings.HasPrefix(target, d+"/")) {
				out[ent.Name()+" -> "+target] = true
			}
		}
	}
	return out
}

func newFDs(before, after map[string]bool) []string {
	var out []string
	for k := range after {
		if !before[k] {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// M is the path of name inside the case directory, through the mount.
func (e *Env) M(name string) string { return filepath.Join(e.Dir, name) }

// H is the host path of name inside the case directory; cases call it only
// when HostVisible.
func (e *Env) H(name string) string { return filepath.Join(e.Host, name) }

// HostVisible reports whether the host side can be checked.
func (e *Env) HostVisible() bool { return e.Host != "" }

// errnoOf extracts the errno from err, or 0.
func errnoOf(err error) syscall.Errno {
	var en syscall.Errno
	if errors.As(err, &en) {
		return en
	}
	return 0
}

// wantErrno fails t unless err carries one of the errnos.
func wantErrno(t *testing.T, what string, err error, want ...syscall.Errno) {
	t.Helper()
	got := errnoOf(err)
	for _, w := range want {
		if got == w {
			return
		}
	}
	var names []string
	for _, w := range want {
		names = append(names, unix.ErrnoName(w))
	}
	t.Errorf("%s: got %v, want %s", what, errString(err), strings.Join(names, " or "))
}

func errString(err error) string {
	if err == nil {
		return "success"
	}
	if en := errnoOf(err); en != 0 {
		return fmt.Sprintf("%v (%s)", err, unix.ErrnoName(en))
	}
	return err.Error()
}

func must(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, errString(err))
	}
}

func lstat(t *testing.T, p string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	must(t, "lstat "+p, unix.Lstat(p, &st))
	return st
}

func writeFile(t *testing.T, p string, data string, mode os.FileMode) {
	t.Helper()
	must(t, "write "+p, os.WriteFile(p, []byte(data), mode))
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	must(t, "read "+p, err)
	return string(b)
}

func wantContent(t *testing.T, p, want string) {
	t.Helper()
	if got := readFile(t, p); got != want {
		t.Errorf("%s holds %q, want %q", p, trunc(got), trunc(want))
	}
}

func trunc(s string) string {
	if len(s) > 64 {
		return fmt.Sprintf("%s...(%d bytes)", s[:64], len(s))
	}
	return s
}

func umask() int {
	m := unix.Umask(0)
	unix.Umask(m)
	return m
}
