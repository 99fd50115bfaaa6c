package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/govirtiofsd/govirtiofsd/internal/vhostfront"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Syscalls per FUSE request: strace -f of the daemon's process tree around
// a fixed number of identical requests, sent one at a time. strace slows
// the daemon down; only the counts are used.

// syscallOps are the request kinds counted, in row order.
var syscallOps = []struct{ row, what string }{
	{"vhost-syscalls-lookup-cold", "LOOKUP on a fresh daemon after drop_caches"},
	{"vhost-syscalls-lookup-warm", "the same LOOKUP again"},
	{"vhost-syscalls-getattr", "GETATTR of a looked-up (cached) node"},
	{"vhost-syscalls-create", "CREATE+RELEASE+UNLINK (+FORGET) of a new file, per file"},
	{"vhost-syscalls-read-4k", "READ of 4 KiB at a random offset of an open file"},
}

// syscallsN is the number of requests traced per kind.
func syscallsN(cfg *Config) int { return min(cfg.Files, 2000) }

func vhostSyscallsJob(cfg *Config) *job {
	n := syscallsN(cfg)
	var rows []Row
	for _, o := range syscallOps {
		rows = append(rows, Row{Name: o.row, Unit: "syscalls/op",
			Desc: fmt.Sprintf("system calls of the daemon (strace -f of its process tree, all threads) per %s, %d requests one at a time; which calls: under the table", o.what, n)})
	}
	return &job{
		name: "vhost-syscalls", parts: partStat | partData | partCreate, cold: true, transports: []Transport{Vhost},
		cleanup: func(shared string) error { return emptyDir(shared + "/create") },
		missing: func() string {
			if _, err := exec.LookPath("strace"); err != nil {
				return "strace not installed (apt-get install strace)"
			}
			return ""
		},
		rows:  rows,
		tools: []string{"strace"},
		run: func(ctx context.Context, e *Env) (map[string]float64, error) {
			return syscallsRun(ctx, e, n)
		},
	}
}

func syscallsRun(ctx context.Context, e *Env, n int) (map[string]float64, error) {
	f := e.front
	dir, err := lookupPath(f, "stat")
	if err != nil {
		return nil, err
	}
	names := statNames(n)
	ids := make([]uint64, n)
	tmp, err := os.MkdirTemp("", "govirtiofsd-strace-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	out := map[string]float64{}
	if e.details == nil {
		e.details = map[string]string{}
	}
	trace := func(row string, op func(int) error) error {
		if !e.want(row) {
			return nil
		}
		path := filepath.Join(tmp, row+".strace")
		st, err := startStrace(ctx, e.PID, path)
		if err != nil {
			return err
		}
		_, _, err = drive(ctx, 1, n, op)
		if serr := st.stop(); err == nil {
			err = serr
		}
		if err != nil {
			return fmt.Errorf("%s: %w", row, err)
		}
		counts, err := parseStrace(path)
		if err != nil {
			return err
		}
		total, detail := syscallSummary(counts, n)
		out[row] = total
		e.details[row] = detail
		return nil
	}
	// The LOOKUPs run anyway: the GETATTRs need their nodeids.
	lookups := lookupAll(e, dir, names, ids, false)
	if e.want("vhost-syscalls-lookup-cold") {
		if err := trace("vhost-syscalls-lookup-cold", lookups); err != nil {
			return nil, err
		}
	} else if _, _, err := drive(ctx, 1, n, lookups); err != nil {
		return nil, err
	}
	if err := trace("vhost-syscalls-lookup-warm", lookupAll(e, dir, names, ids, true)); err != nil {
		return nil, err
	}
	if err := trace("vhost-syscalls-getattr", getattrAll(e, ids)); err != nil {
		return nil, err
	}
	cdir, err := lookupPath(f, "create")
	if err != nil {
		return nil, err
	}
	err = trace("vhost-syscalls-create", func(i int) error {
		name := cstr(statName(i))
		in := fuse.CreateIn{Flags: syscall.O_CREAT | syscall.O_EXCL | syscall.O_WRONLY, Mode: syscall.S_IFREG | 0o644}
		body, err := call(f, "CREATE", opCreate, cdir, argOf(&in), name, int(unsafe.Sizeof(fuse.CreateOut{})))
		if err != nil {
			return err
		}
		var co fuse.CreateOut
		if err := decodeInto(body, &co); err != nil {
			return err
		}
		if err := release(f, vhostfront.OpRelease, co.NodeId, co.Fh); err != nil {
			return err
		}
		if _, err := call(f, "UNLINK", opUnlink, cdir, nil, name, 0); err != nil {
			return err
		}
		return f.Forget(co.NodeId, 1)
	})
	if err != nil {
		return nil, err
	}
	if e.want("vhost-syscalls-read-4k") {
		node, err := lookupPath(f, "data", "seq.dat")
		if err != nil {
			return nil, err
		}
		fh, err := openFile(f, node, syscall.O_RDONLY)
		if err != nil {
			return nil, err
		}
		pages := e.Cfg.Size / 4096
		r := rand.New(rand.NewPCG(5, 6))
		err = trace("vhost-syscalls-read-4k", func(int) error {
			in := fuse.ReadIn{Fh: fh, Offset: uint64(r.Int64N(pages) * 4096), Size: 4096}
			body, err := call(f, "READ", vhostfront.OpRead, node, argOf(&in), nil, 4096)
			if err == nil && len(body) != 4096 {
				err = fmt.Errorf("READ: %d bytes", len(body))
			}
			return err
		})
		if err != nil {
			return nil, err
		}
		if err := release(f, vhostfront.OpRelease, node, fh); err != nil {
			return nil, err
		}
	}
	return out, nil
}

type straceRun struct {
	cmd    *exec.Cmd
	stderr bytes.Buffer
	done   chan error
}

// startStrace attaches strace -f to every process of pid's tree and waits
// until every thread is traced.
func startStrace(ctx context.Context, pid int, out string) (*straceRun, error) {
	pids := procTree(pid)
	args := []string{"-f", "-qq", "-y", "-o", out}
	for _, p := range pids {
		args = append(args, "-p", strconv.Itoa(p))
	}
	s := &straceRun{done: make(chan error, 1)}
	s.cmd = exec.Command("strace", args...)
	s.cmd.Stderr = &s.stderr
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { s.done <- s.cmd.Wait() }()
	tracer := strconv.Itoa(s.cmd.Process.Pid)
	deadline := time.Now().Add(10 * time.Second)
	for {
		all := true
		for _, p := range pids {
			tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", p))
			for _, t := range tasks {
				data, err := os.ReadFile(t)
				if err != nil {
					continue // thread gone
				}
				if !bytes.Contains(data, []byte("\nTracerPid:\t"+tracer+"\n")) {
					all = false
				}
			}
		}
		if all {
			return s, nil
		}
		select {
		case err := <-s.done:
			return nil, fmt.Errorf("strace exited: %v: %s", err, strings.TrimSpace(s.stderr.String()))
		case <-ctx.Done():
			s.cmd.Process.Kill()
			return nil, ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.cmd.Process.Kill()
			return nil, fmt.Errorf("strace did not attach to every thread of %v in 10s: %s", pids, strings.TrimSpace(s.stderr.String()))
		}
	}
}

// stop detaches strace (SIGINT) and waits for it to write its output.
func (s *straceRun) stop() error {
	s.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-s.done:
		return nil
	case <-time.After(20 * time.Second):
		s.cmd.Process.Kill()
		return errors.New("strace did not exit 20s after SIGINT")
	}
}

// parseStrace counts the calls in strace -f -y output by name and, for
// calls whose first argument is an fd, the kind of that fd:
// write(eventfd), statx(file), epoll_wait(epoll). A call interrupted by
// another thread's is counted once, at its "<unfinished ...>" line.
func parseStrace(path string) (map[string]int, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	counts := map[string]int{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if name := straceCall(sc.Text()); name != "" {
			counts[name]++
		}
	}
	return counts, sc.Err()
}

// straceCall returns the counted name of one strace output line ("" for
// resumptions, signals and exits).
func straceCall(l string) string {
	l = strings.TrimSpace(l)
	if i := strings.IndexByte(l, ' '); i > 0 {
		if _, err := strconv.Atoi(l[:i]); err == nil {
			l = strings.TrimSpace(l[i+1:])
		}
	}
	if l == "" || strings.HasPrefix(l, "<...") || strings.HasPrefix(l, "---") || strings.HasPrefix(l, "+++") {
		return ""
	}
	open := strings.IndexByte(l, '(')
	if open <= 0 {
		return ""
	}
	name := l[:open]
	for _, c := range name {
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return ""
		}
	}
	arg := l[open+1:]
	end := strings.IndexAny(arg, ",)")
	if end < 0 {
		end = len(arg)
	}
	first := arg[:end]
	lt := strings.IndexByte(first, '<')
	if lt <= 0 || !isDigits(first[:lt]) {
		return name
	}
	return name + "(" + fdKind(first[lt+1:]) + ")"
}

func isDigits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return s != ""
}

// fdKind classifies strace -y's description of an fd.
func fdKind(d string) string {
	switch {
	case strings.HasPrefix(d, "anon_inode:[eventfd"):
		return "eventfd"
	case strings.HasPrefix(d, "anon_inode:[eventpoll"):
		return "epoll"
	case strings.HasPrefix(d, "anon_inode:[io_uring"):
		return "io_uring"
	case strings.HasPrefix(d, "anon_inode:"):
		return strings.Trim(strings.TrimPrefix(d, "anon_inode:"), "[]>")
	case strings.HasPrefix(d, "socket:") || strings.HasPrefix(d, "UNIX"):
		return "socket"
	case strings.HasPrefix(d, "pipe:"):
		return "pipe"
	case strings.HasPrefix(d, "/memfd:"):
		return "memfd"
	case strings.HasPrefix(d, "/proc/"):
		return "proc"
	case strings.HasPrefix(d, "/dev/"):
		return "dev"
	}
	return "file"
}

// syscallSummary returns the calls per request and their breakdown, most
// frequent first: "3.02 = 1.00 statx(file) + 1.00 write(eventfd) + …";
// names below 0.02 per request are summed as "other".
func syscallSummary(counts map[string]int, n int) (float64, string) {
	type kv struct {
		k string
		v int
	}
	var list []kv
	total := 0
	for k, v := range counts {
		list = append(list, kv{k, v})
		total += v
	}
	sort.Slice(list, func(i, j int) bool { return list[i].v > list[j].v || list[i].v == list[j].v && list[i].k < list[j].k })
	per := func(v int) float64 { return float64(v) / float64(n) }
	var parts []string
	other := 0
	for _, e := range list {
		if per(e.v) < 0.02 {
			other += e.v
			continue
		}
		parts = append(parts, fmt.Sprintf("%.2f %s", per(e.v), e.k))
	}
	if other > 0 {
		parts = append(parts, fmt.Sprintf("%.2f other", per(other)))
	}
	if len(parts) == 0 {
		parts = []string{"none"}
	}
	return per(total), fmt.Sprintf("%.2f = %s", per(total), strings.Join(parts, " + "))
}
