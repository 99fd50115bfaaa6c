package guest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Daemon describes a vhost-user-fs backend as a command-line template: every
// argument has "{socket}" replaced by the socket path, "{shared}" by the
// shared directory and "{work}" by a private directory of the Run (for
// state files), which is removed afterwards.
type Daemon struct {
	Name string
	Args []string
}

// Command returns the argv for sock and shared.
func (d Daemon) Command(sock, shared, work string) []string {
	out := make([]string, len(d.Args))
	for i, a := range d.Args {
		a = strings.ReplaceAll(a, "{socket}", sock)
		a = strings.ReplaceAll(a, "{work}", work)
		out[i] = strings.ReplaceAll(a, "{shared}", shared)
	}
	return out
}

// CVirtiofsd is QEMU's C virtiofsd (bookworm, QEMU 7.2) with its default
// namespace sandbox. extra are appended (e.g. "-o", "announce_submounts").
func CVirtiofsd(env *Env, name string, extra ...string) Daemon {
	args := []string{env.CVirtiofsd, "--socket-path={socket}", "-o", "source={shared}", "-o", "cache=auto"}
	return Daemon{Name: name, Args: append(args, extra...)}
}

// RustVirtiofsd is the Rust virtiofsd 1.13 from trixie, run through its
// private ld.so, with the namespace sandbox (its default; we are root).
// extra are appended (e.g. "--inode-file-handles=prefer").
func RustVirtiofsd(env *Env, name string, extra ...string) Daemon {
	args := []string{env.RustLdso, "--library-path", env.RustLibdir, env.RustVirtiofsd,
		"--socket-path", "{socket}", "--shared-dir", "{shared}", "--cache", "auto", "--sandbox", "namespace"}
	return Daemon{Name: name, Args: append(args, extra...)}
}

// Govirtiofsd is govirtiofsd's vhost-user mode, binary at bin, with its
// persistent node table in the Run's private directory (not the default
// under /var/lib/govirtiofsd).
func Govirtiofsd(bin string, extra ...string) Daemon {
	args := []string{bin, "--shared-dir", "{shared}", "--socket-path", "{socket}", "--state-dir", "{work}/state"}
	return Daemon{Name: "govirtiofsd", Args: append(args, extra...)}
}

// runningDaemon is a started daemon.
type runningDaemon struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has been waited for
	err  error         // Wait's result; valid after done is closed
	log  string        // path of its stdout+stderr
}

// prlimit (util-linux, Essential in Debian) sets the daemon's RLIMIT_NOFILE
// and execs it, so the pid stays the daemon's.
const prlimit = "/usr/bin/prlimit"

func startDaemon(d Daemon, sock, shared, work, logPath string, nofile int) (*runningDaemon, error) {
	argv := d.Command(sock, shared, work)
	if nofile > 0 {
		argv = append([]string{prlimit, fmt.Sprintf("--nofile=%d:%d", nofile, nofile), "--"}, argv...)
	}
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer lf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = lf, lf
	// Own process group: Stop signals the daemon and the children its
	// sandbox forks.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", d.Name, err)
	}
	rd := &runningDaemon{cmd: cmd, done: make(chan struct{}), log: logPath}
	go func() { rd.err = cmd.Wait(); close(rd.done) }()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if fi, err := os.Stat(sock); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return rd, nil
		}
		select {
		case <-rd.done:
			return nil, fmt.Errorf("%s exited before creating %s: %v; log: %s", d.Name, sock, rd.err, tail(logPath, 800))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			rd.stop()
			return nil, fmt.Errorf("%s did not create %s within 15s; log: %s", d.Name, sock, tail(logPath, 800))
		}
	}
}

func (rd *runningDaemon) alive() bool {
	select {
	case <-rd.done:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM to the daemon's process group, then SIGKILL.
func (rd *runningDaemon) stop() {
	pgid := rd.cmd.Process.Pid
	syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-rd.done:
	case <-time.After(3 * time.Second):
		syscall.Kill(-pgid, syscall.SIGKILL)
		<-rd.done
	}
	syscall.Kill(-pgid, syscall.SIGKILL) // sandbox children that outlived the parent
}

// Sample is the daemon's resource use at one moment, over its process tree
// (the sandboxes of both peers fork: the worker is a child of the process we
// started).
type Sample struct {
	Procs  int
	FDs    int
	RSSKiB int
}

func (s Sample) String() string {
	return fmt.Sprintf("%d fds, %d MiB RSS", s.FDs, (s.RSSKiB+512)/1024)
}

// sampleTree sums open fds and VmRSS over pid and its descendants.
func sampleTree(pid int) (Sample, error) {
	pids := descendants(pid)
	var s Sample
	for _, p := range pids {
		ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p))
		if err != nil {
			continue // exited meanwhile
		}
		s.Procs++
		s.FDs += len(ents)
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p)); err == nil {
			for _, l := range strings.Split(string(b), "\n") {
				if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
					v, _ := strconv.Atoi(f[1])
					s.RSSKiB += v
				}
			}
		}
	}
	if s.Procs == 0 {
		return s, fmt.Errorf("daemon process %d is gone", pid)
	}
	return s, nil
}

// descendants returns pid and all its descendants, from /proc/*/stat.
func descendants(pid int) []int {
	parent := map[int]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may contain spaces and ')'.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 {
			continue
		}
		pp, _ := strconv.Atoi(f[1])
		parent[p] = pp
	}
	out := []int{pid}
	for changed := true; changed; {
		changed = false
		for p, pp := range parent {
			if contains(out, pp) && !contains(out, p) {
				out = append(out, p)
				changed = true
			}
		}
	}
	return out
}

func contains(xs []int, x int) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

// tail returns the last n bytes of a file, for error messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.TrimSpace(string(b))
}

// Peers is the list of peer daemon configurations compare runs, in table
// order. Both peers use their default namespace sandbox (we are root).
func Peers(env *Env) []Daemon {
	return []Daemon{
		CVirtiofsd(env, "c"),
		CVirtiofsd(env, "c+submounts", "-o", "announce_submounts"),
		RustVirtiofsd(env, "rust", "--inode-file-handles=never"),
		RustVirtiofsd(env, "rust-fh", "--inode-file-handles=prefer"),
		RustVirtiofsd(env, "rust-nosubmounts", "--inode-file-handles=never", "--no-announce-submounts"),
	}
}
