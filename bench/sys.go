package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// dropCaches writes back the filesystems under paths and then drops the
// page cache, dentries and inodes of every filesystem on the host
// (including FUSE mounts: their unused dentries go, and the kernel sends
// FORGET for them). It needs root.
func dropCaches(paths ...string) error {
	for _, p := range paths {
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("drop caches: open %s: %w", p, err)
		}
		err = unix.Syncfs(fd)
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("drop caches: syncfs %s: %w", p, err)
		}
	}
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0); err != nil {
		return fmt.Errorf("drop caches: %w", err)
	}
	return nil
}

// mountInfo describes the mount at a path, read from /proc/self/mountinfo.
type mountInfo struct {
	fsType string
	dev    uint64 // from the major:minor field
}

// findMount returns the topmost mount whose mount point is exactly dir.
func findMount(dir string) (mountInfo, bool, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return mountInfo{}, false, err
	}
	var found mountInfo
	ok := false
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw
		f := strings.Fields(sc.Text())
		if len(f) < 10 {
			continue
		}
		if unescapeMount(f[4]) != dir {
			continue
		}
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+1 >= len(f) {
			continue
		}
		var maj, min uint32
		if _, err := fmt.Sscanf(f[2], "%d:%d", &maj, &min); err != nil {
			continue
		}
		found = mountInfo{fsType: f[sep+1], dev: unix.Mkdev(maj, min)}
		ok = true // later lines are mounted on top: keep the last one
	}
	return found, ok, sc.Err()
}

// unescapeMount undoes the octal escapes (\040 for space) of mountinfo.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// procRSS returns VmRSS of pid in bytes.
func procRSS(pid int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) < 1 {
				break
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return 0, err
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// procFDs counts the open file descriptors of pid.
func procFDs(pid int) (int, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0, err
	}
	return len(ents), nil
}

// procChildren lists the direct children of pid (all its threads).
func procChildren(pid int) []int {
	var out []int
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, t := range tasks {
		data, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(data)) {
			if c, err := strconv.Atoi(f); err == nil {
				out = append(out, c)
			}
		}
	}
	return out
}

const fusectlDir = "/sys/fs/fuse/connections"

// abortFUSE aborts the FUSE connection dev through fusectl, so every
// syscall blocked on it returns ENOTCONN. It mounts fusectl where it is
// not mounted (as systemd does at boot). This is the only way out when a
// dying daemon waits on its own mount (a thread flushing a file of that
// mount during exit holds the process, and with it the /dev/fuse fd).
func abortFUSE(dev uint64) error {
	if _, ok, _ := findMount(fusectlDir); !ok {
		if err := unix.Mount("fusectl", fusectlDir, "fusectl", 0, ""); err != nil {
			return fmt.Errorf("mount fusectl: %w", err)
		}
	}
	p := fmt.Sprintf("%s/%d/abort", fusectlDir, unix.Minor(dev))
	return os.WriteFile(p, []byte("1"), 0)
}

// clockTicks is USER_HZ, the unit of utime/stime in /proc/PID/stat (100 on
// every Linux architecture Go supports).
const clockTicks = 100

// procCPU returns the user+system CPU time of pid (all its threads, live
// and exited) in seconds.
func procCPU(pid int) (float64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no comm", pid)
	}
	// Fields after "(comm)": state is field 3; utime 14, stime 15.
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: short", pid)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad times", pid)
	}
	return float64(ut+st) / clockTicks, nil
}

// procTree returns pid and all its descendants. Sandboxing daemons (the C
// and Rust virtiofsd in namespace mode) serve from a child process; RSS,
// fds and CPU are summed over the tree.
func procTree(pid int) []int {
	out := []int{pid}
	for i := 0; i < len(out) && len(out) < 64; i++ {
		out = append(out, procChildren(out[i])...)
	}
	return out
}

// treeRSS, treeFDs and treeCPU sum procRSS, procFDs and procCPU over
// procTree(pid); processes that vanish meanwhile are skipped.
func treeRSS(pid int) (int64, error) {
	var sum int64
	for i, p := range procTree(pid) {
		v, err := procRSS(p)
		if err != nil && i == 0 {
			return 0, err
		}
		sum += v
	}
	return sum, nil
}

func treeFDs(pid int) (int, error) {
	var sum int
	for i, p := range procTree(pid) {
		v, err := procFDs(p)
		if err != nil && i == 0 {
			return 0, err
		}
		sum += v
	}
	return sum, nil
}

func treeCPU(pid int) (float64, error) {
	var sum float64
	for i, p := range procTree(pid) {
		v, err := procCPU(p)
		if err != nil && i == 0 {
			return 0, err
		}
		sum += v
	}
	return sum, nil
}
