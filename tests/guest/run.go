package guest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/govirtiofsd/govirtiofsd/tests/guest/checks"
)

// The checks a Run can do. Each yields result lines of the same name (and
// posixtest yields posixtest/<case> lines; identity adds identity-dino,
// handles yields handles-file and handles-dir).
const (
	CheckPosixtest = "posixtest"
	CheckIdentity  = "identity"
	CheckHandles   = "handles"
	CheckWalk      = "walk"
	// CheckReboot: the guest writes a token, runs `reboot -f` (same QEMU,
	// same daemon, the device is reset), mounts again and reads it back.
	CheckReboot = "reboot"
	// CheckReconnect: after the first QEMU exits, a second QEMU connects to
	// the same daemon socket, mounts and reads the token back.
	CheckReconnect = "reconnect"
)

// AllChecks in the order the guest runs them.
var AllChecks = []string{CheckPosixtest, CheckIdentity, CheckHandles, CheckWalk, CheckReboot, CheckReconnect}

// DefaultWalkFiles is above the machine's hard RLIMIT_NOFILE of 20000 once the
// walk's directories and the daemon's own fds are counted.
const DefaultWalkFiles = 20000

// DefaultNoFile is the daemon's RLIMIT_NOFILE, soft and hard: the hard limit
// of the machines this project runs on (which a daemon cannot raise), set
// explicitly so that the walk means the same on a machine with a higher one.
const DefaultNoFile = 20000

// laterBootWatchdog bounds a boot after the guest's own reboot -f.
const laterBootWatchdog = 60 * time.Second

// Guest is a built initramfs, reusable across Runs.
type Guest struct {
	Env    *Env
	Initrd string
}

// PrepareGuest builds cmd/guestcheck and the initramfs into dir.
func PrepareGuest(env *Env, dir string) (*Guest, error) {
	gc, err := BuildGuestcheck(dir)
	if err != nil {
		return nil, err
	}
	initrd := filepath.Join(dir, "initrd.img")
	if err := BuildInitramfs(env, gc, initrd); err != nil {
		return nil, fmt.Errorf("build initramfs: %w", err)
	}
	return &Guest{Env: env, Initrd: initrd}, nil
}

// Options for one Run.
type Options struct {
	Guest     *Guest
	Daemon    Daemon
	Checks    []string // subset of AllChecks; order does not matter
	WalkFiles int      // default DefaultWalkFiles
	WorkDir   string   // default: a new directory under os.TempDir()
	// NoFile is the daemon's RLIMIT_NOFILE (soft and hard); 0 means
	// DefaultNoFile, negative means inherit the caller's limits.
	NoFile int
	// Timeout bounds each QEMU run (the guest watchdog fires 15s earlier);
	// default: from the checks.
	Timeout time.Duration
	Log     io.Writer // progress and the guest console; may be nil
}

// Report is what a Run observed.
type Report struct {
	Daemon  string
	Results []checks.Result
	// WalkSample is the daemon's fds and RSS right after the walk, while
	// the guest still caches every walked inode; nil if not taken.
	WalkSample *Sample
	// Samples holds every sample the guest asked for, by name: "mount"
	// (first boot, right after mounting), "walk", "reboot" (after the
	// token was read back in the boot after reboot -f) and "reconnect"
	// (same, in the second QEMU).
	Samples map[string]Sample
	// Peak is the maximum of each field over samples taken every
	// peakInterval while the daemon ran. Unlike the samples above it does
	// not depend on timing: a daemon that keeps one fd per inode may get
	// FORGETs once it runs out of fds (the guest drops dentries whose
	// revalidating LOOKUP failed with EMFILE), so its fds after the walk
	// vary from run to run, but its peak does not.
	Peak      Sample
	Boots     []time.Duration // wall time of each QEMU run
	Console   string
	DaemonLog string
}

// Result returns the result line for check.
func (r *Report) Result(check string) (checks.Result, bool) {
	for _, x := range r.Results {
		if x.Check == check {
			return x, true
		}
	}
	return checks.Result{}, false
}

// Posixtest returns the posixtest/<case> results keyed by case.
func (r *Report) Posixtest() map[string]checks.Result {
	m := map[string]checks.Result{}
	for _, x := range r.Results {
		if c, ok := strings.CutPrefix(x.Check, "posixtest/"); ok {
			m[c] = x
		}
	}
	return m
}

func (r *Report) add(x checks.Result) {
	for i := range r.Results {
		if r.Results[i].Check == x.Check {
			r.Results[i] = x // a later line (e.g. watchdog) wins
			return
		}
	}
	r.Results = append(r.Results, x)
}

// Run starts the daemon, boots the guest (twice for reconnect) and returns
// what the guest reported. An error means the harness itself could not do
// its job (assets, fixtures, daemon start); anything the daemon got wrong is
// a FAIL result in the report instead.
func Run(ctx context.Context, o Options) (*Report, error) {
	if o.Guest == nil {
		return nil, fmt.Errorf("guest.Run: no Guest")
	}
	if o.WalkFiles == 0 {
		o.WalkFiles = DefaultWalkFiles
	}
	want := map[string]bool{}
	for _, c := range o.Checks {
		want[c] = true
	}
	// The guest's watchdog for the first boot fires before the host
	// timeout, so that a hung check still yields the other checks' lines;
	// a boot after reboot -f only mounts and reads, and gets
	// laterBootWatchdog.
	if o.Timeout == 0 {
		o.Timeout = 75 * time.Second
		if want[CheckPosixtest] {
			o.Timeout += 150 * time.Second
		}
		if want[CheckWalk] {
			o.Timeout += 240 * time.Second
		}
		if want[CheckReboot] {
			o.Timeout += laterBootWatchdog + 15*time.Second
		}
	}
	watchdog := o.Timeout - 15*time.Second
	if want[CheckReboot] {
		watchdog -= laterBootWatchdog + 15*time.Second
	}
	watchdog = max(watchdog, 10*time.Second)
	start := time.Now()
	logf := func(format string, args ...any) {
		if o.Log != nil {
			fmt.Fprintf(o.Log, "%6.1fs guest: "+format+"\n", append([]any{time.Since(start).Seconds()}, args...)...)
		}
	}
	work := o.WorkDir
	if work == "" {
		var err error
		if work, err = os.MkdirTemp("", "guest-"+o.Daemon.Name+"-"); err != nil {
			return nil, err
		}
		defer os.RemoveAll(work)
	}
	shared := filepath.Join(work, "shared")
	if err := os.MkdirAll(shared, 0o755); err != nil {
		return nil, err
	}
	fx, err := PrepareFixtures(shared, want, o.WalkFiles)
	defer fx.Cleanup()
	if err != nil {
		return nil, fmt.Errorf("fixtures: %w", err)
	}
	sock := filepath.Join(work, "vhost-fs.sock")
	daemonLog := filepath.Join(work, "daemon.log")
	dwork := filepath.Join(work, "daemon")
	if err := os.MkdirAll(dwork, 0o700); err != nil {
		return nil, err
	}
	if o.NoFile == 0 {
		o.NoFile = DefaultNoFile
	}
	d, err := startDaemon(o.Daemon, sock, shared, dwork, daemonLog, o.NoFile)
	if err != nil {
		return nil, err
	}
	defer d.stop()
	peak := startPeakSampler(d.cmd.Process.Pid)
	logf("%s started (pid %d, RLIMIT_NOFILE %d): %s", o.Daemon.Name, d.cmd.Process.Pid, o.NoFile, strings.Join(o.Daemon.Command(sock, shared, dwork), " "))

	rep := &Report{Daemon: o.Daemon.Name, Samples: map[string]Sample{}}
	var console strings.Builder
	var mu sync.Mutex // guards rep and console against the console reader
	tok := make([]byte, 8)
	rand.Read(tok)
	token := hex.EncodeToString(tok)

	var plan []string
	for _, c := range AllChecks {
		if want[c] && c != CheckReconnect && c != CheckReboot {
			plan = append(plan, c)
		}
	}
	if want[CheckReboot] {
		plan = append(plan, CheckReboot) // writes the token and reboots: last
	} else if want[CheckReconnect] {
		plan = append(plan, CheckReconnect) // writes the token
	}

	runQEMU := func(plan []string, allowReboot bool) bootResult {
		boots := 0
		cmdline := fmt.Sprintf("gvfs.plan=%s gvfs.tag=gvfs gvfs.walk=%d gvfs.token=%s gvfs.watchdog=%d gvfs.watchdog2=%d",
			strings.Join(plan, ","), o.WalkFiles, token, int(watchdog.Seconds()), int(laterBootWatchdog.Seconds()))
		var logw io.Writer
		if o.Log != nil {
			logw = prefixWriter{o.Log, "console: ", start}
		}
		br := boot(ctx, bootConfig{
			env: o.Guest.Env, initrd: o.Guest.Initrd, sock: sock, tag: "gvfs",
			cmdline: cmdline, allowReboot: allowReboot, timeout: o.Timeout, log: logw,
			onLine: func(line string) (string, bool) {
				mu.Lock()
				defer mu.Unlock()
				console.WriteString(line + "\n")
				switch {
				case strings.Contains(line, "GUEST-HELLO"):
					boots++
					return fmt.Sprintf("HOST BOOT %d", boots), boots > 3
				case strings.HasPrefix(line, "SAMPLE "):
					name := strings.TrimSpace(strings.TrimPrefix(line, "SAMPLE "))
					s, err := sampleTree(d.cmd.Process.Pid)
					if err != nil {
						logf("sample %s: %v", name, err)
						return "HOST SAMPLED", false
					}
					logf("sample %s: %s", name, s)
					rep.Samples[name] = s
					if name == "walk" {
						rep.WalkSample = &s
					}
					return "HOST SAMPLED", false
				}
				if r, ok := checks.ParseResult(line); ok {
					rep.add(r)
				}
				return "", false
			},
		})
		mu.Lock()
		rep.Boots = append(rep.Boots, br.took)
		mu.Unlock()
		logf("qemu ran %v (timed out: %v, exit: %v) %s", br.took.Round(time.Millisecond), br.timedOut, br.exitErr, br.stderr)
		return br
	}

	first := runQEMU(plan, want[CheckReboot])
	var second *bootResult
	if want[CheckReconnect] {
		// A daemon that exits when the front-end disconnects may take a
		// moment to do so; give it that moment so the outcome does not
		// depend on a race.
		select {
		case <-d.done:
		case <-time.After(3 * time.Second):
		}
		if !d.alive() {
			rep.add(checks.Result{Check: CheckReconnect, Status: checks.Fail,
				Detail: "daemon exited when the first guest disconnected (" + exitText(d.err) + ")"})
		} else {
			b := runQEMU([]string{"reconnect-verify"}, false)
			second = &b
		}
	}

	// Every requested check must have produced a line; silence is a FAIL
	// that says where the guest stopped.
	mu.Lock()
	defer mu.Unlock()
	missing := func(check string, br *bootResult) {
		why := "no result from the guest"
		if br != nil {
			switch {
			case br.timedOut:
				why += fmt.Sprintf("; QEMU killed after the %v host timeout", o.Timeout)
			case br.exitErr != nil:
				why += fmt.Sprintf("; QEMU: %v %s", br.exitErr, lastLine(br.stderr))
			}
		}
		if !d.alive() {
			why += fmt.Sprintf("; daemon exited (%s): %s", exitText(d.err), lastLine(tail(daemonLog, 400)))
		}
		rep.add(checks.Result{Check: check, Status: checks.Fail, Detail: why})
	}
	for _, c := range o.Checks {
		br := &first
		if c == CheckReconnect && second != nil {
			br = second
		}
		switch c {
		case CheckPosixtest:
			if len(rep.Posixtest()) == 0 {
				missing(c, br)
			}
		case CheckHandles:
			for _, h := range []string{"handles-file", "handles-dir"} {
				if _, ok := rep.Result(h); !ok {
					missing(h, br)
				}
			}
		default:
			if _, ok := rep.Result(c); !ok {
				missing(c, br)
			}
		}
	}
	// The token must also have reached the host's disk.
	if want[CheckReboot] || want[CheckReconnect] {
		b, err := os.ReadFile(filepath.Join(shared, "reboot", "token"))
		if err != nil || strings.TrimSpace(string(b)) != token {
			for _, c := range []string{CheckReboot, CheckReconnect} {
				if r, ok := rep.Result(c); ok && r.Passed() {
					rep.add(checks.Result{Check: c, Status: checks.Fail, Detail: "guest read the token back but the host file does not hold it"})
				}
			}
		}
	}
	rep.Peak = peak.stop()
	rep.Console = console.String()
	rep.DaemonLog = tail(daemonLog, 64<<10)
	return rep, nil
}

// peakInterval is how often the peak sampler looks at the daemon.
const peakInterval = 250 * time.Millisecond

type peakSampler struct {
	quit chan struct{}
	done chan Sample
}

// startPeakSampler samples pid's process tree every peakInterval.
func startPeakSampler(pid int) *peakSampler {
	p := &peakSampler{quit: make(chan struct{}), done: make(chan Sample, 1)}
	go func() {
		var peak Sample
		t := time.NewTicker(peakInterval)
		defer t.Stop()
		for {
			if s, err := sampleTree(pid); err == nil {
				peak.Procs = max(peak.Procs, s.Procs)
				peak.FDs = max(peak.FDs, s.FDs)
				peak.RSSKiB = max(peak.RSSKiB, s.RSSKiB)
			}
			select {
			case <-p.quit:
				p.done <- peak
				return
			case <-t.C:
			}
		}
	}()
	return p
}

func (p *peakSampler) stop() Sample {
	close(p.quit)
	return <-p.done
}

// exitText describes a Wait result.
func exitText(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return s
}

// prefixWriter prefixes every Write (one console line each) with the time
// since start and p.
type prefixWriter struct {
	w     io.Writer
	p     string
	start time.Time
}

func (pw prefixWriter) Write(b []byte) (int, error) {
	_, err := fmt.Fprintf(pw.w, "%6.1fs %s%s", time.Since(pw.start).Seconds(), pw.p, b)
	return len(b), err
}
