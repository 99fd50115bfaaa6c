package bench

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Daemon CPU time. Each daemon the bench starts is put into a cgroup v2 of
// its own (<cgroup2 mount>/govirtiofsd-bench/<peer>-<pid>-<n>, created
// directly into it with clone3(CLONE_INTO_CGROUP), so its children and
// threads never run outside it); cpu.stat usage_usec then counts the CPU
// time of every thread the daemon ever ran, exited ones included, in µs.
// Without cgroup v2 (not mounted, not root) the bench falls back to
// utime+stime of /proc/PID/stat summed over the live process tree, in
// clock ticks (10 ms), which misses threads and children that exited.

// CPU sources, as recorded in Cell.CPUSource.
const (
	CPUCgroup = "cgroup"
	CPUProc   = "proc"
)

// cgroupBase is the parent of the daemons' cgroups (an error if cgroup v2
// is not mounted here), found once; newCgroup creates it.
var cgroupBase = sync.OnceValues(func() (string, error) {
	mnt, err := cgroup2Mount()
	if err != nil {
		return "", err
	}
	return filepath.Join(mnt, "govirtiofsd-bench"), nil
})

// removeCgroupBase removes the parent of the daemons' cgroups at the end
// of a run if it is empty.
func removeCgroupBase() {
	if base, err := cgroupBase(); err == nil {
		_ = os.Remove(base)
	}
}

// cgroup2Mount returns where the cgroup v2 hierarchy is mounted
// (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid systems).
func cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent maj:min root mountpoint opts… - fstype source superopts
		l := sc.Text()
		i := strings.Index(l, " - ")
		if i < 0 {
			continue
		}
		post := strings.Fields(l[i+3:])
		pre := strings.Fields(l[:i])
		if len(post) > 0 && post[0] == "cgroup2" && len(pre) >= 5 {
			return unescapeMount(pre[4]), nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	return "", errors.New("no cgroup2 mount")
}

// cgroupSeq numbers the cgroups of one bench process.
var cgroupSeq struct {
	sync.Mutex
	n int
}

// newCgroup creates an empty cgroup for one start of peer and returns its
// directory.
func newCgroup(peer string) (string, error) {
	base, err := cgroupBase()
	if err != nil {
		return "", err
	}
	if err := os.Mkdir(base, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return "", err
	}
	if _, err := os.Stat(filepath.Join(base, "cgroup.procs")); err != nil {
		return "", fmt.Errorf("%s is not a cgroup: %w", base, err)
	}
	cgroupSeq.Lock()
	cgroupSeq.n++
	n := cgroupSeq.n
	cgroupSeq.Unlock()
	dir := filepath.Join(base, fmt.Sprintf("%s-%d-%d", peer, os.Getpid(), n))
	_ = os.Remove(dir) // left over by an earlier process with our pid
	if err := os.Mkdir(dir, 0o755); err != nil {
		return "", err
	}
	return dir, nil
}

// removeCgroup removes a daemon's cgroup once its processes are gone
// (the kernel takes a moment after the last one is reaped).
func removeCgroup(dir string) error {
	if dir == "" {
		return nil
	}
	var err error
	for t0 := time.Now(); time.Since(t0) < 2*time.Second; time.Sleep(5 * time.Millisecond) {
		if err = os.Remove(dir); err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
	}
	return err
}

// cgroupUsage reads usage_usec of dir/cpu.stat.
func cgroupUsage(dir string) (float64, error) {
	data, err := os.ReadFile(filepath.Join(dir, "cpu.stat"))
	if err != nil {
		return 0, err
	}
	for _, l := range bytes.Split(data, []byte("\n")) {
		if v, ok := bytes.CutPrefix(l, []byte("usage_usec ")); ok {
			return strconv.ParseFloat(string(bytes.TrimSpace(v)), 64)
		}
	}
	return 0, fmt.Errorf("%s/cpu.stat: no usage_usec", dir)
}

// cpuUsec returns the daemon's CPU time so far in µs and where it came
// from (CPUCgroup or CPUProc).
func (in *instance) cpuUsec() (float64, string, error) {
	if in == nil || in.pid == 0 {
		return 0, "", errors.New("no daemon process")
	}
	if in.cgroup != "" {
		v, err := cgroupUsage(in.cgroup)
		return v, CPUCgroup, err
	}
	v, err := treeCPU(in.pid)
	return v * 1e6, CPUProc, err
}

// opCPU is the daemon CPU time of one timed phase of a job.
type opCPU struct {
	us     float64 // daemon CPU µs during the phase
	ops    float64 // operations the phase did
	op     string  // what one op is ("LOOKUP", "file", "1 MiB", …)
	source string  // CPUCgroup or CPUProc
}

// cpuMark is the daemon's CPU time at the start of a timed phase.
type cpuMark struct {
	us  float64
	src string
	ok  bool
}

// cpuStart reads the daemon's CPU time before a timed phase (no-op for
// native peers).
func (e *Env) cpuStart() cpuMark {
	if e.inst == nil || e.inst.pid == 0 {
		return cpuMark{}
	}
	v, src, err := e.inst.cpuUsec()
	return cpuMark{us: v, src: src, ok: err == nil}
}

// cpuOps records the daemon's CPU time since m as row's CPU per op: the
// phase did ops operations of kind op.
func (e *Env) cpuOps(row string, m cpuMark, ops float64, op string) {
	if !m.ok || ops <= 0 {
		return
	}
	v, src, err := e.inst.cpuUsec()
	if err != nil || src != m.src {
		return
	}
	if e.cpu == nil {
		e.cpu = map[string]opCPU{}
	}
	e.cpu[row] = opCPU{us: v - m.us, ops: ops, op: op, source: src}
}
