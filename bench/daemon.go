package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/govirtiofsd/govirtiofsd/internal/vhostfront"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Transport says how a peer is reached.
type Transport string

const (
	// DevFuse peers are reached through a path: a FUSE mount served over
	// /dev/fuse, or the host directory itself (native).
	DevFuse Transport = "devfuse"
	// Vhost peers are vhost-user-fs backends driven by the Go vhost-user
	// front-end (internal/vhostfront) with FUSE requests; no mount.
	Vhost Transport = "vhost"
)

// Daemon is one peer: how to make the shared directory visible.
type Daemon struct {
	// Name is the column title: native, govirtiofsd, loopback, …
	Name      string
	Transport Transport
	// Native peers have no process: the tree is used in place.
	Native bool
	// Argv returns the command line that serves shared at mnt. state is a
	// fresh empty directory for this start (for daemons that keep state).
	Argv func(shared, mnt, state string) []string
	// RestartArgv, when set, returns the command line of a supervised
	// daemon (one that restarts its serving process after kill -9 without
	// losing the mount); nil means the restart rows are n/a.
	RestartArgv func(shared, mnt, state string) []string
	// KeepsState: the daemon writes its persistent state into the state
	// directory Argv is given (its size is reported).
	KeepsState bool
	// ReadyLine, when set, is a line the daemon prints once it has
	// finished mounting (its signal handlers are then in place); start
	// waits for it as well as for the mount.
	ReadyLine string
	// Unavailable, when not empty, is why every row of this peer is n/a
	// (the binary did not build, a flag is missing, …).
	Unavailable string
	// Note is printed under the table (the command line, caveats).
	Note string
	// QueueArgv, for a Vhost peer that can serve more than one request
	// queue, returns the extra flags asking for n of them.
	QueueArgv func(n int) []string
	// queueLimit, once a connection showed that the peer serves fewer
	// request queues than a job asked for, says so.
	queueLimit string
}

// instance is a running peer serving one mount.
type instance struct {
	d    *Daemon
	root string // where workloads see the shared tree
	pid  int    // 0 for native
	dev  uint64 // st_dev of the FUSE mount, for fusectl abort
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
	err  error         // cmd.Wait result, valid after done
	log  string        // path of the daemon's stdout+stderr
	// front is the vhost-user front-end connected to a Vhost peer, with
	// queues request queues.
	front  *vhostfront.Frontend
	queues int
	init   *fuse.InitOut // the peer's FUSE_INIT reply
	// cgroup is the daemon's own cgroup v2 directory ("" = none: CPU time
	// then comes from /proc, see cpu.go).
	cgroup string
}

// mountTimeout bounds how long a daemon may take to show up in mountinfo.
const mountTimeout = 20 * time.Second

// start launches d so that shared appears at mnt (for a Vhost peer: so
// that it listens on the socket mnt). logPath receives the daemon's output.
// The returned instance is mounted and answered a stat of its root, or
// (Vhost) is connected to the front-end and answered FUSE_INIT.
func start(ctx context.Context, d *Daemon, argv []string, shared, mnt, logPath string, queues int) (*instance, error) {
	if d.Native {
		return &instance{d: d, root: shared}, nil
	}
	if d.Unavailable != "" {
		return nil, errors.New(d.Unavailable)
	}
	if d.Transport == Vhost {
		if err := os.Remove(mnt); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	} else if mi, ok, _ := findMount(mnt); ok {
		return nil, fmt.Errorf("%s is already mounted (%s)", mnt, mi.fsType)
	}
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer lf.Close()
	fmt.Fprintf(lf, "### %s %s\n", time.Now().UTC().Format(time.RFC3339), strings.Join(argv, " "))
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout = lf
	cmd.Stderr = lf
	// Own process group: a supervised daemon's children are killed with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// Its own cgroup, entered by clone3 itself (cpu.go).
	cg, cgErr := newCgroup(d.Name)
	var cgFD *os.File
	if cgErr == nil {
		if cgFD, cgErr = os.Open(cg); cgErr == nil {
			cmd.SysProcAttr.UseCgroupFD = true
			cmd.SysProcAttr.CgroupFD = int(cgFD.Fd())
		}
	}
	err = cmd.Start()
	if cgFD != nil {
		cgFD.Close()
		if err != nil {
			// A kernel without CLONE_INTO_CGROUP: start it outside
			// and move it in (its early children may stay outside).
			cmd = exec.Command(argv[0], argv[1:]...)
			cmd.Stdout, cmd.Stderr = lf, lf
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
			if err = cmd.Start(); err == nil {
				cgErr = os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(fmt.Sprint(cmd.Process.Pid)), 0)
			}
		}
	}
	if err != nil {
		_ = removeCgroup(cg)
		return nil, err
	}
	if cgErr != nil {
		_ = removeCgroup(cg)
		cg = ""
	}
	inst := &instance{d: d, root: mnt, pid: cmd.Process.Pid, cmd: cmd, done: make(chan struct{}), log: logPath, queues: queues, cgroup: cg}
	go func() {
		inst.err = cmd.Wait()
		close(inst.done)
	}()
	ready := inst.waitMounted
	if d.Transport == Vhost {
		inst.root = ""
		ready = inst.connect
	}
	if err := ready(ctx, mnt); err != nil {
		inst.stop()
		if qe := (*queuesError)(nil); errors.As(err, &qe) {
			d.queueLimit = qe.msg // the same for every job that needs more
			return nil, err
		}
		return nil, fmt.Errorf("%w%s", err, logTail(logPath))
	}
	return inst, nil
}

func (in *instance) waitMounted(ctx context.Context, mnt string) error {
	deadline := time.Now().Add(mountTimeout)
	for {
		select {
		case <-in.done:
			return fmt.Errorf("daemon exited before mounting: %v", in.err)
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		mi, ok, err := findMount(mnt)
		if err != nil {
			return err
		}
		if ok {
			if !strings.HasPrefix(mi.fsType, "fuse") {
				return fmt.Errorf("%s mounted with type %s, want fuse*", mnt, mi.fsType)
			}
			in.dev = mi.dev
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not mounted at %s after %v", mnt, mountTimeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// go-fuse daemons open a file on their own mount while mounting (the
	// epoll hack) and install their SIGTERM handler only afterwards; a
	// SIGTERM in between kills them while they wait on themselves.
	for in.d.ReadyLine != "" {
		data, err := os.ReadFile(in.log)
		if err != nil {
			return err
		}
		if i := bytes.LastIndex(data, []byte("\n### ")); i >= 0 {
			data = data[i:]
		}
		if bytes.Contains(data, []byte(in.d.ReadyLine)) {
			break
		}
		select {
		case <-in.done:
			return fmt.Errorf("daemon exited before it was ready: %v", in.err)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no %q from the daemon after %v", in.d.ReadyLine, mountTimeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The mount exists; make sure requests are answered.
	errc := make(chan error, 1)
	go func() {
		var st unix.Statx_t
		errc <- unix.Statx(unix.AT_FDCWD, mnt, unix.AT_STATX_FORCE_SYNC, unix.STATX_BASIC_STATS, &st)
	}()
	select {
	case err := <-errc:
		if err != nil {
			return fmt.Errorf("stat of mount root: %w", err)
		}
		return nil
	case <-time.After(time.Until(deadline) + time.Second):
		in.abort()
		return errors.New("mount root does not answer")
	}
}

// abort unblocks every syscall stuck on the mount (daemon hung).
func (in *instance) abort() {
	if in.pid == 0 {
		return
	}
	if in.dev != 0 {
		_ = abortFUSE(in.dev)
	}
	_ = syscall.Kill(-in.pid, syscall.SIGKILL)
}

// stop asks the daemon to unmount (SIGTERM), waits, and cleans up after it
// if it does not: SIGKILL of its process group and a lazy unmount. It
// returns an error when the daemon did not stop cleanly (reported in the
// log, not fatal to the sample).
func (in *instance) stop() error {
	if in.pid == 0 {
		return nil
	}
	var problem error
	if in.front != nil {
		// The C and Rust virtiofsd exit when the front-end disconnects.
		in.front.Close()
	}
	_ = syscall.Kill(in.pid, syscall.SIGTERM)
	select {
	case <-in.done:
	case <-time.After(10 * time.Second):
		problem = errors.New("did not exit 10s after SIGTERM")
		in.abort()
		select {
		case <-in.done:
		case <-time.After(10 * time.Second):
			// Leaked: a thread stuck in the kernel. Do not hang the run.
			problem = fmt.Errorf("%w; still not reaped 10s after abort and SIGKILL (pid %d)", problem, in.pid)
		}
	}
	// Children of a supervised or sandboxed daemon, if any are left; wait
	// until they are gone, so the next start finds no locks or sockets.
	_ = syscall.Kill(-in.pid, syscall.SIGKILL)
	for t0 := time.Now(); syscall.Kill(-in.pid, 0) == nil && time.Since(t0) < 5*time.Second; {
		time.Sleep(2 * time.Millisecond)
	}
	if in.cgroup != "" {
		if err := removeCgroup(in.cgroup); err != nil && problem == nil {
			problem = fmt.Errorf("remove cgroup: %w", err)
		}
	}
	if in.root == "" {
		return problem
	}
	if _, ok, _ := findMount(in.root); ok {
		if problem == nil {
			problem = errors.New("still mounted after exit")
		}
		if err := unix.Unmount(in.root, unix.MNT_DETACH); err != nil {
			problem = fmt.Errorf("%w; umount: %v", problem, err)
		}
	}
	return problem
}

// logTail returns the last lines the daemon logged since its latest start
// (the "###" line start writes), for error messages.
func logTail(path string) string {
	data, err := os.ReadFile(path)
	if err != nil || len(data) == 0 {
		return ""
	}
	s := string(data)
	if i := strings.LastIndex(s, "\n### "); i >= 0 {
		s = s[i+1:]
	}
	if i := strings.IndexByte(s, '\n'); strings.HasPrefix(s, "### ") {
		if i < 0 {
			return ""
		}
		s = s[i+1:]
	}
	s = strings.TrimSpace(s)
	if s == "" {
		return ""
	}
	lines := strings.Split(s, "\n")
	if len(lines) > 3 {
		lines = lines[len(lines)-3:]
	}
	return " [" + filepath.Base(path) + ": " + strings.Join(lines, " | ") + "]"
}
