// Package mounttest starts a FUSE file server as a subprocess over a fresh
// shared directory and mount point, for tests that assert through real
// syscalls what a user of the mount sees.
//
// The server under test is ./cmd/govirtiofsd of this module, built once per
// test binary. Setting GOVIRTIOFSD_TEST_DAEMON=loopback runs go-fuse's
// example loopback instead (a known-good FUSE passthrough, for checking the
// tests themselves); GOVIRTIOFSD_TEST_DAEMON=/abs/path runs a prebuilt
// govirtiofsd binary.
//
// Every Start registers a cleanup that sends SIGTERM, waits for the server
// to exit, fails the test unless the mount is gone and the exit status is 0,
// and reports the server's open fd count. Test binaries must call Main from
// TestMain so the build directory is removed and child helpers dispatch.
package mounttest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// EnvDaemon selects the server under test: "" or "govirtiofsd" (build
// ./cmd/govirtiofsd), "loopback" (go-fuse's example loopback), or an
// absolute path to a govirtiofsd binary.
const EnvDaemon = "GOVIRTIOFSD_TEST_DAEMON"

// EnvFlags holds extra flags, separated by spaces, for every govirtiofsd
// the harness starts (e.g. "--log-level=debug"). The server's output is
// logged when a test fails.
const EnvFlags = "GOVIRTIOFSD_TEST_FLAGS"

// Kind names a server implementation.
type Kind string

const (
	Govirtiofsd Kind = "govirtiofsd"
	Loopback    Kind = "loopback"
)

// Target reports which server the tests run against.
func Target() Kind {
	if os.Getenv(EnvDaemon) == string(Loopback) {
		return Loopback
	}
	return Govirtiofsd
}

// IsLoopback reports whether the tests run against go-fuse's loopback.
func IsLoopback() bool { return Target() == Loopback }

// StartTimeout bounds how long a server may take to show its mount. The
// machines are shared, so it is generous.
var StartTimeout = 30 * time.Second

var (
	buildMu  sync.Mutex
	buildDir string
	binaries = map[Kind]string{}
)

// Main runs the tests of a package that uses mounttest and removes the
// binaries it built. Call it from TestMain; pass extra hooks (such as
// suite.HelperMain) that must run before the tests and may exit the process.
func Main(m *testing.M, hooks ...func()) {
	for _, h := range hooks {
		h()
	}
	code := m.Run()
	buildMu.Lock()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	buildMu.Unlock()
	os.Exit(code)
}

// moduleRoot finds the directory holding this module's go.mod.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("go env GOMOD: not inside a module")
	}
	return filepath.Dir(gomod), nil
}

// Binary returns the path of the server binary of the given kind, building
// it on first use.
func Binary(t testing.TB, k Kind) string {
	t.Helper()
	if p := os.Getenv(EnvDaemon); k == Govirtiofsd && filepath.IsAbs(p) {
		return p
	}
	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := binaries[k]; ok {
		return p
	}
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	if buildDir == "" {
		d, err := os.MkdirTemp("", "mounttest-bin-")
		if err != nil {
			t.Fatal(err)
		}
		// Helpers running as other users exec binaries from here.
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
		buildDir = d
	}
	pkg := "./cmd/govirtiofsd"
	if k == Loopback {
		pkg = "github.com/hanwen/go-fuse/v2/example/loopback"
	}
	out := filepath.Join(buildDir, string(k))
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	binaries[k] = out
	return out
}

// Options configure a server started by Start.
type Options struct {
	// Flags are extra govirtiofsd flags, e.g. "--xattr", "--cache=never".
	// The loopback understands only "--readonly"; other flags are logged
	// and ignored for it.
	Flags []string
	// SharedDir is served instead of a fresh t.TempDir.
	SharedDir string
	// MountPoint is used instead of a fresh t.TempDir.
	MountPoint string
	// Setup runs on the shared directory before the server starts.
	Setup func(t testing.TB, shared string)
	// KeepMounted leaves the kernel mount in place on cleanup when the
	// server has been killed on purpose (the test unmounts it itself).
	// Without it, a mount left behind fails the test.
	KeepMounted bool
}

// Daemon is a running server.
type Daemon struct {
	t      testing.TB
	Kind   Kind
	Bin    string
	Args   []string
	Shared string // host path of the shared directory
	Mnt    string // mount point
	opts   Options
	// stateDir is the --state-dir given when the test names none.
	stateDir string

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
	log     *syncBuffer
	stopped bool
	// expectExit is set when the process is meant to be gone before Stop:
	// Kill was called or it failed to start (already reported).
	expectExit bool
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Start builds (once) and starts the server under test on a fresh shared
// directory and mount point and waits until the mount is live.
func Start(t testing.TB, opts Options) *Daemon {
	t.Helper()
	return StartKind(t, Target(), opts)
}

// StartKind is Start for an explicit server kind.
func StartKind(t testing.TB, k Kind, opts Options) *Daemon {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("mount tests need root: mount(2) on /dev/fuse and tmpfs mounts")
	}
	bin := Binary(t, k)
	d := &Daemon{t: t, Kind: k, Bin: bin, opts: opts}
	d.Shared = opts.SharedDir
	if d.Shared == "" {
		d.Shared = t.TempDir()
	}
	d.Mnt = opts.MountPoint
	if d.Mnt == "" {
		d.Mnt = t.TempDir()
	}
	// Other users must be able to reach both, for non-root caller tests.
	for _, p := range []string{d.Shared, d.Mnt, filepath.Dir(d.Shared), filepath.Dir(d.Mnt)} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if opts.Setup != nil {
		opts.Setup(t, d.Shared)
	}
	if k == Govirtiofsd {
		d.stateDir = t.TempDir()
	}
	d.Args = d.args()
	goroutines := runtime.NumGoroutine()
	d.start()
	t.Cleanup(func() {
		d.Stop()
		checkGoroutines(t, goroutines)
	})
	return d
}

func (d *Daemon) args() []string {
	if d.Kind == Loopback {
		// Not -q: start waits for its "Mounted!" line.
		a := []string{"-allow-other", "-directmountstrict"}
		for _, f := range d.opts.Flags {
			if f == "--readonly" {
				a = append(a, "-ro")
				continue
			}
			d.t.Logf("loopback: ignoring govirtiofsd flag %s", f)
		}
		return append(a, d.Mnt, d.Shared)
	}
	a := []string{"--shared-dir", d.Shared, "--mount", d.Mnt}
	// As root the daemon keeps its node table under /var/lib/govirtiofsd
	// by default, one folder per shared dir: every test would leave one
	// behind. Keep it with the test unless the test chose.
	hasState := false
	for _, f := range d.opts.Flags {
		if f == "--state-dir" || strings.HasPrefix(f, "--state-dir=") {
			hasState = true
		}
	}
	if !hasState {
		a = append(a, "--state-dir="+d.stateDir)
	}
	a = append(a, strings.Fields(os.Getenv(EnvFlags))...)
	return append(a, d.opts.Flags...)
}

// TryRestart stops the server and starts it again like Restart, but
// returns an error (with the server's output) instead of failing the test
// when the new server exits before mounting.
func (d *Daemon) TryRestart() error {
	d.t.Helper()
	d.Stop()
	return d.tryStart()
}

// start launches the process and waits for the mount.
func (d *Daemon) start() {
	d.t.Helper()
	if err := d.tryStart(); err != nil {
		d.t.Fatal(err)
	}
}

func (d *Daemon) tryStart() error {
	t := d.t
	t.Helper()
	d.log = &syncBuffer{}
	cmd := exec.Command(d.Bin, d.Args...)
	cmd.Stdout = d.log
	cmd.Stderr = d.log
	cmd.Dir = "/"
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %v", d.Bin, err)
	}
	done := make(chan struct{})
	d.mu.Lock()
	d.cmd, d.done, d.waitErr, d.stopped, d.expectExit = cmd, done, nil, false, false
	d.mu.Unlock()
	go func() {
		err := cmd.Wait()
		d.mu.Lock()
		d.waitErr = err
		d.mu.Unlock()
		close(done)
	}()
	deadline := time.Now().Add(StartTimeout)
	for {
		if d.ready() {
			t.Logf("%s pid %d serving %s at %s", d.Kind, cmd.Process.Pid, d.Shared, d.Mnt)
			return nil
		}
		select {
		case <-done:
			d.expectExit = true
			return fmt.Errorf("%s %s exited before mounting: %v\n%s", d.Bin, strings.Join(d.Args, " "), d.exitErr(), d.log.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			d.expectExit = true
			cmd.Process.Kill()
			<-done
			return fmt.Errorf("%s did not mount %s within %v\n%s", d.Kind, d.Mnt, StartTimeout, d.log.String())
		}
	}
}

// ready reports whether the server serves its mount: the mount is listed
// and a stat of its root got an answer. The loopback installs its SIGTERM
// handler only after its mount call returns and it printed "Mounted!"; a
// SIGTERM before that kills it with files open on its own mount (go-fuse
// probes the mount while mounting), and the process then hangs in exit
// waiting for a FLUSH nobody answers. So for it, wait for that line too.
func (d *Daemon) ready() bool {
	if ok, _ := IsFUSEMount(d.Mnt); !ok {
		return false
	}
	var st syscall.Stat_t
	if err := syscall.Stat(d.Mnt, &st); err != nil {
		return false
	}
	if d.Kind == Loopback {
		if !strings.Contains(d.log.String(), "Mounted!") {
			return false
		}
		time.Sleep(50 * time.Millisecond) // from Println to signal.Notify
	}
	return true
}

func (d *Daemon) exitErr() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.waitErr
}

// Pid is the process id of the server process this harness started.
func (d *Daemon) Pid() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cmd.Process.Pid
}

// Log returns what the server wrote to stdout and stderr so far.
func (d *Daemon) Log() string { return d.log.String() }

// Exited reports whether the server process has exited.
func (d *Daemon) Exited() bool {
	d.mu.Lock()
	done := d.done
	d.mu.Unlock()
	select {
	case <-done:
		return true
	default:
		return false
	}
}

// ExpectExit tells the harness the server is meant to exit before Stop
// (the test signals it itself); Stop then does not report the exit as a
// crash.
func (d *Daemon) ExpectExit() {
	d.mu.Lock()
	d.expectExit = true
	d.mu.Unlock()
}

// Signal sends sig to the server process.
func (d *Daemon) Signal(sig syscall.Signal) error {
	return syscall.Kill(d.Pid(), sig)
}

// Wait waits up to timeout for the server to exit and returns its exit
// error (nil for status 0).
func (d *Daemon) Wait(timeout time.Duration) (exited bool, err error) {
	d.mu.Lock()
	done := d.done
	d.mu.Unlock()
	select {
	case <-done:
		return true, d.exitErr()
	case <-time.After(timeout):
		return false, nil
	}
}

// Stop sends SIGTERM and checks a clean shutdown: the server exits 0 within
// 15s and the mount is gone. Failures are reported on the test; a mount
// left behind is removed with umount -l. Stop is idempotent; Start
// registers it as a cleanup.
func (d *Daemon) Stop() {
	t := d.t
	t.Helper()
	d.mu.Lock()
	if d.stopped {
		d.mu.Unlock()
		return
	}
	d.stopped = true
	expectExit := d.expectExit
	d.mu.Unlock()
	defer func() {
		if t.Failed() {
			t.Logf("%s output (tail):\n%s", d.Kind, tail(d.Log()))
		}
	}()
	if d.Exited() && !expectExit {
		t.Errorf("%s pid %d exited on its own before shutdown: %v\n%s", d.Kind, d.Pid(), d.exitErr(), tail(d.Log()))
	}
	if !d.Exited() {
		if n, err := FDCount(d.Pid()); err == nil {
			t.Logf("%s pid %d has %d fds open before shutdown", d.Kind, d.Pid(), n)
		}
		d.Signal(syscall.SIGTERM)
		exited, err := false, error(nil)
		if d.Kind == Loopback {
			// go-fuse's example loopback gives up unmounting after five
			// quick EBUSY retries (the kernel can still hold the mount
			// for a moment after the last close), ignores the error and
			// then waits forever for the mount to go away. Unmount for
			// it: the loopback is the reference, not what is tested.
			exited, err = d.Wait(3 * time.Second)
			for i := 0; !exited && i < 50; i++ {
				if i == 0 {
					t.Logf("loopback still running 3s after SIGTERM; unmounting %s for it", d.Mnt)
				}
				if unix.Unmount(d.Mnt, 0) == nil {
					exited, err = d.Wait(10 * time.Second)
					break
				}
				exited, err = d.Wait(100 * time.Millisecond)
			}
		} else {
			exited, err = d.Wait(15 * time.Second)
		}
		switch {
		case !exited:
			t.Logf("%s tasks before SIGKILL:\n%s", d.Kind, TaskStacks(d.Pid()))
			d.Signal(syscall.SIGKILL)
			d.Wait(15 * time.Second)
			t.Errorf("%s did not exit within 15s of SIGTERM\n%s", d.Kind, tail(d.Log()))
		case err != nil:
			t.Errorf("%s exited with %v after SIGTERM\n%s", d.Kind, err, tail(d.Log()))
		}
	}
	// The kernel may take a moment to drop the mount after the server
	// closed /dev/fuse.
	deadline := time.Now().Add(5 * time.Second)
	for {
		ok, _ := IsMountPoint(d.Mnt)
		if !ok {
			return
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !d.opts.KeepMounted {
		t.Errorf("%s still mounted after the server exited; unmounting with umount -l", d.Mnt)
	}
	if b, err := exec.Command("umount", "-l", d.Mnt).CombinedOutput(); err != nil {
		t.Errorf("umount -l %s: %v %s", d.Mnt, err, b)
	}
}

// Kill sends SIGKILL to the server and waits for it to exit. The mount
// stays (a dead FUSE server leaves an aborted or, with a supervisor holding
// the fd, a live connection).
func (d *Daemon) Kill() {
	d.t.Helper()
	d.mu.Lock()
	d.expectExit = true
	d.mu.Unlock()
	d.Signal(syscall.SIGKILL)
	if exited, _ := d.Wait(10 * time.Second); !exited {
		d.t.Fatalf("%s pid %d survived SIGKILL for 10s", d.Kind, d.Pid())
	}
}

// Restart stops the server cleanly and starts it again with the same
// arguments, shared directory and mount point.
func (d *Daemon) Restart() {
	d.t.Helper()
	d.Stop()
	d.start()
}

func tail(s string) string {
	const max = 4000
	if len(s) > max {
		return "..." + s[len(s)-max:]
	}
	return s
}

// FDCount counts the open fds of process pid.
func FDCount(pid int) (int, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0, err
	}
	return len(ents), nil
}

// TaskStacks describes each thread of pid: state, wchan and kernel stack,
// for diagnosing a server stuck in the kernel.
func TaskStacks(pid int) string {
	var b strings.Builder
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return err.Error()
	}
	for _, task := range tasks {
		dir := fmt.Sprintf("/proc/%d/task/%s", pid, task.Name())
		stat, _ := os.ReadFile(dir + "/stat")
		state := ""
		if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) {
			state = string(stat[i+2 : i+3])
		}
		wchan, _ := os.ReadFile(dir + "/wchan")
		stack, _ := os.ReadFile(dir + "/stack")
		if state == "S" && len(stack) == 0 {
			continue
		}
		fmt.Fprintf(&b, "task %s state %s wchan %s\n%s", task.Name(), state, wchan, stack)
	}
	return b.String()
}

// Children lists the pids of pid's child processes.
func Children(pid int) ([]int, error) {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return nil, err
	}
	var kids []int
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, task.Name()))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				kids = append(kids, n)
			}
		}
	}
	return kids, nil
}

// MountInfo is one line of /proc/self/mountinfo.
type MountInfo struct {
	ID         int
	Major      uint32
	Minor      uint32
	Root       string
	MountPoint string
	FSType     string
	Source     string
}

// Mounts parses /proc/self/mountinfo.
func Mounts() ([]MountInfo, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []MountInfo
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if len(fields) < 5 || sep < 0 || sep+2 >= len(fields) {
			continue
		}
		var m MountInfo
		m.ID, _ = strconv.Atoi(fields[0])
		if maj, min, ok := strings.Cut(fields[2], ":"); ok {
			a, _ := strconv.ParseUint(maj, 10, 32)
			b, _ := strconv.ParseUint(min, 10, 32)
			m.Major, m.Minor = uint32(a), uint32(b)
		}
		m.Root = unescapeMount(fields[3])
		m.MountPoint = unescapeMount(fields[4])
		m.FSType = fields[sep+1]
		m.Source = unescapeMount(fields[sep+2])
		out = append(out, m)
	}
	return out, s.Err()
}

// unescapeMount undoes the octal escapes (\040 etc.) of mountinfo.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// lastMount returns the topmost mount at path, if any.
func lastMount(path string) (MountInfo, bool, error) {
	ms, err := Mounts()
	if err != nil {
		return MountInfo{}, false, err
	}
	path = filepath.Clean(path)
	var found MountInfo
	ok := false
	for _, m := range ms {
		if m.MountPoint == path {
			found, ok = m, true
		}
	}
	return found, ok, nil
}

// IsMountPoint reports whether something is mounted at path.
func IsMountPoint(path string) (bool, error) {
	_, ok, err := lastMount(path)
	return ok, err
}

// IsFUSEMount reports whether the topmost mount at path is a FUSE mount
// (fstype "fuse" or "fuse.*").
func IsFUSEMount(path string) (bool, error) {
	m, ok, err := lastMount(path)
	if err != nil || !ok {
		return false, err
	}
	return m.FSType == "fuse" || strings.HasPrefix(m.FSType, "fuse."), nil
}

// DropCaches writes 2 to /proc/sys/vm/drop_caches after a sync, so the
// kernel forgets cached dentries and inodes (sending FORGETs to FUSE
// servers).
func DropCaches(t testing.TB) {
	t.Helper()
	syscall.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("2"), 0); err != nil {
		t.Fatalf("drop_caches: %v", err)
	}
}

// checkGoroutines fails t if the test process has more goroutines than
// before the server started, after a grace period.
func checkGoroutines(t testing.TB, before int) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= before {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Errorf("goroutine leak: %d goroutines, %d before the server started\n%s", n, before, buf)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
