package bench

import (
	"bytes"
	"context"
	"errors"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func tinyConfig(t *testing.T) Config {
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.Runs = 1
	cfg.Files = 30
	cfg.Size = 64 << 10
	cfg.RandReads = 4
	cfg.WalkFiles = 1500
	cfg.BigWalkFiles = 0
	cfg.FS = "disk"
	cfg.WorkDir = dir
	cfg.OutDir = filepath.Join(dir, "out")
	cfg.NoDropCaches = true
	cfg.Timeout = time.Minute
	cfg.Install = false // tests never run apt-get
	return cfg
}

// moduleConfig is tinyConfig for peers the bench builds from this module
// (govirtiofsd, go-fuse's loopback).
func moduleConfig(t *testing.T) Config {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	cfg := tinyConfig(t)
	cfg.ModuleDir = filepath.Dir(strings.TrimSpace(string(out)))
	return cfg
}

func cell(t *testing.T, res *Result, row, peer string) Cell {
	t.Helper()
	for _, r := range res.Rows {
		if r.Name != row {
			continue
		}
		for _, c := range r.Cells {
			if c.Peer == peer {
				return c
			}
		}
	}
	t.Fatalf("no cell (%s, %s)", row, peer)
	return Cell{}
}

// A daemon that exits instead of mounting is n/a with its reason; the run
// goes on and the other peers get numbers.
func TestFailingDaemonIsNA(t *testing.T) {
	cfg := tinyConfig(t)
	fake := filepath.Join(t.TempDir(), "govirtiofsd")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho 'cannot serve today' >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg.GovirtiofsdBin = fake
	cfg.Daemons = []string{PeerNative, PeerGovirtiofsd, PeerGovNoState}
	cfg.Rows = regexp.MustCompile(`^(stat-warm|walk-cold-1500|restart-1500)$`)
	res, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if c := cell(t, res, "stat-warm", PeerNative); !c.OK() {
		t.Errorf("native stat-warm: %+v", c)
	}
	c := cell(t, res, "stat-warm", PeerGovirtiofsd)
	if c.OK() || !strings.Contains(c.NA, "exited before mounting") || !strings.Contains(c.NA, "cannot serve today") {
		t.Errorf("failing daemon: %+v, want n/a with its exit and log", c)
	}
	if c := cell(t, res, "stat-warm", PeerGovNoState); c.OK() || !strings.Contains(c.NA, "state-dir") {
		t.Errorf("statenone without the flag: %+v", c)
	}
	if c := cell(t, res, "restart-1500", PeerGovirtiofsd); c.OK() {
		t.Errorf("restart of a daemon that does not start: %+v", c)
	}
	if c := cell(t, res, "walk-cold-1500", PeerGovirtiofsd); c.OK() || !strings.Contains(c.NA, "cannot serve today") {
		t.Errorf("failing daemon in its second job: %+v", c)
	}
	var b bytes.Buffer
	WriteTable(&b, res)
	if !strings.Contains(b.String(), "n/a[") {
		t.Errorf("table has no n/a:\n%s", b.String())
	}
	// results.json reads back into the same table.
	if err := WriteFiles(res, cfg.OutDir); err != nil {
		t.Fatal(err)
	}
	back, err := ReadResult(filepath.Join(cfg.OutDir, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var b2 bytes.Buffer
	WriteTable(&b2, back)
	if b2.String() != b.String() {
		t.Errorf("table from results.json differs:\n%s\nwant:\n%s", b2.String(), b.String())
	}
}

// The loopback peer mounts, serves every row, and unmounts (root and
// /dev/fuse only; builds go-fuse's example).
func TestLoopbackMount(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root for mount(2) (the test suite runs as root)")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Fatalf("no /dev/fuse: %v", err)
	}
	cfg := moduleConfig(t)
	cfg.Runs = 2
	cfg.Daemons = []string{PeerNative, PeerLoopback}
	cfg.Rows = regexp.MustCompile(`^(stat-warm-sync|stat-cold|create-unlink|readdir-stat|seq-write|seq-read-cold|rand-read-4k|walk-cold-1500|fds-walk-1500|restart-1500)$`)
	res, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res.Rows {
		c := cell(t, res, r.Name, PeerLoopback)
		if r.Name == "restart-1500" {
			if c.OK() {
				t.Errorf("loopback restart measured: %+v", c)
			}
			continue
		}
		if !c.OK() || len(c.Samples) != 2 || c.Ratio != 1 {
			t.Errorf("loopback %s: %+v, want 2 samples and ratio 1", r.Name, c)
		}
	}
	if fds := cell(t, res, "fds-walk-1500", PeerLoopback); fds.OK() && fds.Median < 3 {
		t.Errorf("loopback has %v fds open, want at least stdin/out/err", fds.Median)
	}
	// An unclean stop (e.g. EBUSY on unmount because another process on
	// the machine looked into the mount) is cleaned up and reported, not
	// a failure of the bench.
	t.Logf("warnings: %q", res.Meta.Warnings)
	if err := WriteFiles(res, cfg.OutDir); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(cfg.OutDir, "chart.png"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	if b := img.Bounds(); b.Dx() < 300 || b.Dy() < 300 {
		t.Errorf("chart is %v", b)
	}
}

func TestStatsAndRatios(t *testing.T) {
	if m, lo, hi := stats([]float64{3, 1, 2}); m != 2 || lo != 1 || hi != 3 {
		t.Errorf("stats odd: %v %v %v", m, lo, hi)
	}
	if m, _, _ := stats([]float64{4, 1, 2, 3}); m != 2.5 {
		t.Errorf("stats even: %v", m)
	}
	rr := RowResult{Row: Row{Name: "t", Ref: []string{"loopback"}}, Cells: []Cell{
		{Peer: "a", Samples: []float64{2}, Median: 2},
		{Peer: "loopback", Samples: []float64{4}, Median: 4},
		{Peer: "b", NA: "broken"},
	}}
	setRatios(&rr)
	if rr.Cells[0].Ratio != 2 || rr.Cells[1].Ratio != 1 || rr.Cells[2].Ratio != 0 {
		t.Errorf("lower-better ratios: %+v", rr.Cells)
	}
	rr.HigherBetter = true
	setRatios(&rr)
	if rr.Cells[0].Ratio != 0.5 {
		t.Errorf("higher-better ratio: %v", rr.Cells[0].Ratio)
	}
	// Two references: the better one counts.
	rr.Ref = []string{"a", "loopback"}
	setRatios(&rr)
	if rr.Cells[0].Ratio != 0.5 || rr.Cells[1].Ratio != 1 {
		t.Errorf("best-of-two ratios: %+v", rr.Cells)
	}
	rr.HigherBetter = false
	setRatios(&rr)
	if rr.Cells[0].Ratio != 1 || rr.Cells[1].Ratio != 0.5 {
		t.Errorf("best-of-two lower-better ratios: %+v", rr.Cells)
	}
}

// A vhost-user peer that exits instead of listening is n/a; the /dev/fuse
// peers are not asked to run vhost rows.
func TestVhostPeerFailsIsNA(t *testing.T) {
	cfg := tinyConfig(t)
	fake := filepath.Join(t.TempDir(), "govirtiofsd")
	script := "#!/bin/sh\nif [ \"$1\" = --help ]; then echo '--socket-path --state-dir'; exit 0; fi\necho 'no vhost today' >&2\nexit 3\n"
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg.GovirtiofsdBin = fake
	cfg.Daemons = []string{PeerNative, PeerGovVhost}
	cfg.Rows = regexp.MustCompile(`^(stat-warm|vhost-getattr-d1)$`)
	res, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	c := cell(t, res, "vhost-getattr-d1", PeerGovVhost)
	if c.OK() || !strings.Contains(c.NA, "no vhost today") {
		t.Errorf("failing vhost peer: %+v", c)
	}
	if c := cell(t, res, "stat-warm", PeerNative); !c.OK() {
		t.Errorf("native: %+v", c)
	}
	var b bytes.Buffer
	WriteTable(&b, res)
	if !strings.Contains(b.String(), "### vhost") || !strings.Contains(b.String(), "### devfuse") {
		t.Errorf("want a table per transport:\n%s", b.String())
	}
}

func TestDrive(t *testing.T) {
	var seen [100]atomic.Int32
	var inflight, peak atomic.Int32
	lat, _, err := drive(context.Background(), 4, len(seen), func(i int) error {
		n := inflight.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(time.Millisecond)
		seen[i].Add(1)
		inflight.Add(-1)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range seen {
		if seen[i].Load() != 1 {
			t.Fatalf("op %d ran %d times", i, seen[i].Load())
		}
	}
	if p := peak.Load(); p < 2 || p > 4 {
		t.Errorf("peak in flight %d, want 2..4", p)
	}
	if p := percentileUS(lat, 0.99); p < 1000 {
		t.Errorf("p99 %vµs for 1 ms ops", p)
	}
	// The warm rows' passes: each item once per pass, in flight as before.
	var times [10]atomic.Int32
	if _, _, err := drive(context.Background(), 4, 3*len(times), passes(len(times), func(i int) error {
		times[i].Add(1)
		return nil
	})); err != nil {
		t.Fatal(err)
	}
	for i := range times {
		if n := times[i].Load(); n != 3 {
			t.Errorf("3 passes: item %d ran %d times", i, n)
		}
	}
	_, _, err = drive(context.Background(), 3, 50, func(i int) error {
		if i == 7 {
			return errors.New("boom")
		}
		return nil
	})
	if err == nil || err.Error() != "boom" {
		t.Errorf("drive error: %v", err)
	}
}

// Every run of a job samples the rows -rows selected, also when its first
// row is not among them (that row's cell stays unmeasured, which is not a
// failure to stop retrying on): here the vhost I/O job, whose first row is
// READ 4 KiB.
func TestRunsSampleRowsAfterTheFirst(t *testing.T) {
	cfg := moduleConfig(t)
	cfg.Runs = 3
	cfg.Daemons = []string{PeerGovVhost}
	cfg.Rows = regexp.MustCompile(`^vhost-write-seq-d1$`)
	res, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if c := cell(t, res, "vhost-write-seq-d1", PeerGovVhost); !c.OK() || len(c.Samples) != 3 {
		t.Errorf("vhost-write-seq-d1 over 3 runs: %+v, want 3 samples", c)
	}
}
