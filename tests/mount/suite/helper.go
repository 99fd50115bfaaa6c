package suite

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A helper is this same binary re-executed with envHelper set: it runs a
// list of Steps as the credentials it was started with and prints one JSON
// Result per step on its last stdout line. A "wait" step prints "ready"
// and blocks until the parent writes a line (or closes stdin), so the
// parent can act while the helper holds a lock or an open file.
const envHelper = "GOVIRTIOFSD_SUITE_HELPER"

// Step is one syscall run by a helper process.
type Step struct {
	Op    string // see runStep
	Path  string `json:",omitempty"`
	Path2 string `json:",omitempty"`
	Mode  uint32 `json:",omitempty"`
	Flags int    `json:",omitempty"`
	Slot  int    `json:",omitempty"` // fd slot for fd-based ops
	Data  string `json:",omitempty"`
	UID   int    `json:",omitempty"`
	GID   int    `json:",omitempty"`
	Off   int64  `json:",omitempty"`
	Len   int64  `json:",omitempty"`
	Dev   int    `json:",omitempty"` // mknod's device number
}

// Result of one Step: Err is "" or the errno name (e.g. "EACCES").
type Result struct {
	Err string `json:",omitempty"`
	Out string `json:",omitempty"`
}

// HelperMain runs a helper and exits when the process was started as one;
// otherwise it returns at once. Call it first in main or TestMain.
func HelperMain() {
	if os.Getenv(envHelper) == "" {
		return
	}
	unix.Umask(0o022)
	var steps []Step
	if err := json.Unmarshal([]byte(os.Getenv(envHelper)), &steps); err != nil {
		fmt.Fprintf(os.Stderr, "helper: bad steps: %v\n", err)
		os.Exit(2)
	}
	fds := map[int]int{}
	in := bufio.NewReader(os.Stdin)
	var res []Result
	for _, s := range steps {
		res = append(res, runStep(s, fds, in))
	}
	b, _ := json.Marshal(res)
	fmt.Printf("%s\n", b)
	os.Exit(0)
}

func result(out string, err error) Result {
	if err != nil {
		if en := errnoOf(err); en != 0 {
			return Result{Err: unix.ErrnoName(en), Out: out}
		}
		return Result{Err: err.Error(), Out: out}
	}
	return Result{Out: out}
}

func runStep(s Step, fds map[int]int, in *bufio.Reader) Result {
	switch s.Op {
	case "open":
		fd, err := unix.Open(s.Path, s.Flags|unix.O_CLOEXEC, s.Mode)
		if err == nil {
			fds[s.Slot] = fd
		}
		return result("", err)
	case "close":
		return result("", unix.Close(fds[s.Slot]))
	case "write":
		_, err := unix.Pwrite(fds[s.Slot], []byte(s.Data), s.Off)
		return result("", err)
	case "writeappend":
		_, err := unix.Write(fds[s.Slot], []byte(s.Data))
		return result("", err)
	case "read":
		b := make([]byte, s.Len)
		n, err := unix.Pread(fds[s.Slot], b, s.Off)
		if n < 0 {
			n = 0
		}
		return result(string(b[:n]), err)
	case "ftruncate":
		return result("", unix.Ftruncate(fds[s.Slot], s.Len))
	case "fchmod":
		return result("", unix.Fchmod(fds[s.Slot], s.Mode))
	case "fstat":
		var st unix.Stat_t
		err := unix.Fstat(fds[s.Slot], &st)
		return result(statString(&st), err)
	case "stat":
		var st unix.Stat_t
		err := unix.Lstat(s.Path, &st)
		return result(statString(&st), err)
	case "mkdir":
		return result("", unix.Mkdir(s.Path, s.Mode))
	case "mknod":
		return result("", unix.Mknod(s.Path, s.Mode, s.Dev))
	case "symlink":
		return result("", unix.Symlink(s.Path2, s.Path))
	case "unlink":
		return result("", unix.Unlink(s.Path))
	case "rmdir":
		return result("", unix.Rmdir(s.Path))
	case "rename":
		return result("", unix.Rename(s.Path, s.Path2))
	case "link":
		return result("", unix.Link(s.Path, s.Path2))
	case "chmod":
		return result("", unix.Chmod(s.Path, s.Mode))
	case "chown":
		return result("", unix.Lchown(s.Path, s.UID, s.GID))
	case "truncate":
		return result("", unix.Truncate(s.Path, s.Len))
	case "access":
		return result("", unix.Faccessat(unix.AT_FDCWD, s.Path, s.Mode, 0))
	case "readdir":
		f, err := os.Open(s.Path)
		if err != nil {
			return result("", err)
		}
		defer f.Close()
		names, err := f.Readdirnames(-1)
		return result(strings.Join(names, "\n"), err)
	case "setxattr":
		return result("", unix.Lsetxattr(s.Path, s.Path2, []byte(s.Data), s.Flags))
	case "setlk", "setlkw", "getlk":
		lk := unix.Flock_t{Type: int16(s.Flags), Whence: 0, Start: s.Off, Len: s.Len}
		cmd := map[string]int{"setlk": unix.F_SETLK, "setlkw": unix.F_SETLKW, "getlk": unix.F_GETLK}[s.Op]
		err := unix.FcntlFlock(uintptr(fds[s.Slot]), cmd, &lk)
		return result(fmt.Sprintf("%d %d %d %d", lk.Type, lk.Start, lk.Len, lk.Pid), err)
	case "flock":
		return result("", unix.Flock(fds[s.Slot], s.Flags))
	case "wait":
		fmt.Printf("ready\n")
		in.ReadString('\n')
		return Result{}
	default:
		return Result{Err: "unknown op " + s.Op}
	}
}

func statString(st *unix.Stat_t) string {
	return fmt.Sprintf("uid=%d gid=%d mode=%o size=%d ino=%d", st.Uid, st.Gid, st.Mode, st.Size, st.Ino)
}

var (
	helperMu  sync.Mutex
	helperBin string // guarded by helperMu
)

// helperBinary returns a copy of this binary that any user can execute:
// test binaries live in 0700 build directories. Run removes it when done.
func helperBinary() (string, error) {
	helperMu.Lock()
	defer helperMu.Unlock()
	if helperBin != "" {
		return helperBin, nil
	}
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "suite-helper-")
	if err != nil {
		return "", err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", err
	}
	src, err := os.Open(self)
	if err != nil {
		return "", err
	}
	defer src.Close()
	p := filepath.Join(dir, "helper")
	dst, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return "", err
	}
	if err := dst.Close(); err != nil {
		return "", err
	}
	helperBin = p
	return p, nil
}

// removeHelperBinary deletes the copy made by helperBinary.
func removeHelperBinary() {
	helperMu.Lock()
	defer helperMu.Unlock()
	if helperBin != "" {
		os.RemoveAll(filepath.Dir(helperBin))
		helperBin = ""
	}
}

// Caller names the credentials a helper runs with.
type Caller struct {
	UID, GID uint32
	Groups   []uint32
}

// nonRoot is the suite's unprivileged caller.
func (e *Env) nonRoot() Caller { return Caller{UID: e.Opts.UID, GID: e.Opts.GID} }

// Proc is a running helper.
type Proc struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	out    *bufio.Reader
	stderr strings.Builder
}

// startHelper starts a helper running steps as c.
func startHelper(t *testing.T, c Caller, steps ...Step) *Proc {
	t.Helper()
	bin, err := helperBinary()
	if err != nil {
		t.Fatalf("helper binary: %v", err)
	}
	b, _ := json.Marshal(steps)
	p := &Proc{cmd: exec.Command(bin)}
	p.cmd.Env = append(os.Environ(), envHelper+"="+string(b))
	p.cmd.Dir = "/"
	p.cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: c.UID, Gid: c.GID, Groups: c.Groups, NoSetGroups: false},
		Pdeathsig:  syscall.SIGKILL,
	}
	if p.cmd.SysProcAttr.Credential.Groups == nil {
		p.cmd.SysProcAttr.Credential.Groups = []uint32{}
	}
	p.cmd.Stderr = &p.stderr
	p.stdin, _ = p.cmd.StdinPipe()
	stdout, _ := p.cmd.StdoutPipe()
	p.out = bufio.NewReader(stdout)
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start helper: %v", err)
	}
	t.Cleanup(func() {
		p.stdin.Close()
		done := make(chan struct{})
		go func() { p.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			p.cmd.Process.Kill()
			<-done
		}
	})
	return p
}

// Pid of the helper.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Ready waits for the helper's next "wait" step.
func (p *Proc) Ready(t *testing.T) {
	t.Helper()
	line, err := p.out.ReadString('\n')
	if strings.TrimSpace(line) != "ready" {
		t.Fatalf("helper: want ready, got %q %v; stderr %s", line, err, p.stderr.String())
	}
}

// Continue releases the helper from its current "wait" step.
func (p *Proc) Continue() { io.WriteString(p.stdin, "go\n") }

// Results waits for the helper to finish and returns one Result per step.
func (p *Proc) Results(t *testing.T) []Result {
	t.Helper()
	p.stdin.Close()
	line, err := p.out.ReadString('\n')
	if err != nil {
		t.Fatalf("helper output: %v; stderr %s", err, p.stderr.String())
	}
	var res []Result
	if err := json.Unmarshal([]byte(line), &res); err != nil {
		t.Fatalf("helper output %q: %v", line, err)
	}
	return res
}

// runAs runs steps as c and returns their results.
func runAs(t *testing.T, c Caller, steps ...Step) []Result {
	t.Helper()
	return startHelper(t, c, steps...).Results(t)
}

// wantOK fails t for every step in res that did not succeed.
func wantOK(t *testing.T, steps []Step, res []Result) {
	t.Helper()
	for i, r := range res {
		if r.Err != "" {
			t.Errorf("step %d %s %s: %s", i, steps[i].Op, steps[i].Path, r.Err)
		}
	}
}
