package bench

import (
	"fmt"
	"log/slog"
	"regexp"
	"time"
)

// Config is everything a run needs; cmd/govirtiofsd-bench fills it from
// flags.
type Config struct {
	Runs    int            // samples per (row, peer), ≥ 1; medians want ≥ 3
	Rows    *regexp.Regexp // rows to run; nil = all
	Daemons []string       // peer names, column order (AllPeers)

	Files     int   // files for the stat, create and readdir rows
	Size      int64 // bytes of the sequential file
	RandReads int   // 4 KiB reads per random-read sample
	// WarmPasses is how many times the warm LOOKUP and GETATTR rows go
	// over the stat directory's nodeids in one sample. One pass of 10k
	// GETATTRs at 16 in flight takes 25–45 ms, short enough that one
	// scheduling hiccup of a 2-vCPU machine moved a sample by a third;
	// several passes average over many. Every peer gets the same requests.
	WarmPasses   int
	FioRuntime   time.Duration // length of each time-based fio sample
	WalkFiles    int           // files in the cold walk tree (issue 3: 100k)
	BigWalkFiles int           // files in the big walk tree (issue 3: 1M); 0 = skip those rows

	// FS is where the shared tree lives: "tmpfs" (mounted by the bench,
	// needs root) or "disk" (a directory under WorkDir).
	FS      string
	WorkDir string // parent of the scratch directory; "" = /var/tmp
	OutDir  string // results.json, table.md, chart.png, daemon logs

	Timeout time.Duration // per sample; a hung daemon is aborted

	// Install runs scripts/guest/install.sh when the install record lacks
	// a selected C or Rust virtiofsd peer, and scripts/install-test-deps.sh
	// when a selected row needs fio or strace and it is missing (root
	// only; once per process).
	Install bool

	// NoDropCaches runs the cold rows without drop_caches (they are then
	// only "fresh mount" cold); for smoke tests on shared machines.
	NoDropCaches bool

	ModuleDir       string   // module root, to go build the peers
	GovirtiofsdBin  string   // prebuilt govirtiofsd; "" = go build
	LoopbackBin     string   // prebuilt loopback; "" = go build
	GovirtiofsdArgs []string // extra flags for both govirtiofsd peers
	Replay          string   // recording for the vhost-replay rows; "" = none

	Log *slog.Logger
}

// DefaultConfig returns the sizes of issues 2 and 3.
func DefaultConfig() Config {
	return Config{
		Runs:         3,
		Daemons:      append([]string(nil), AllPeers...),
		Files:        10_000,
		Size:         1 << 30,
		RandReads:    40_000,
		WarmPasses:   5,
		FioRuntime:   2 * time.Second,
		WalkFiles:    100_000,
		BigWalkFiles: 1_000_000,
		FS:           "tmpfs",
		OutDir:       "bench-out",
		Timeout:      10 * time.Minute,
		Install:      true,
	}
}

func (c *Config) validate() error {
	switch {
	case c.Runs < 1:
		return fmt.Errorf("runs must be ≥ 1, got %d", c.Runs)
	case c.Files < 1:
		return fmt.Errorf("files must be ≥ 1, got %d", c.Files)
	case c.Size < 4096:
		return fmt.Errorf("size must be ≥ 4096, got %d", c.Size)
	case c.RandReads < 1:
		return fmt.Errorf("randreads must be ≥ 1, got %d", c.RandReads)
	case c.WarmPasses < 1:
		return fmt.Errorf("warmpasses must be ≥ 1, got %d", c.WarmPasses)
	case c.WalkFiles < 1:
		return fmt.Errorf("walkfiles must be ≥ 1, got %d", c.WalkFiles)
	case c.BigWalkFiles < 0:
		return fmt.Errorf("bigwalkfiles must be ≥ 0, got %d", c.BigWalkFiles)
	case c.FS != "tmpfs" && c.FS != "disk":
		return fmt.Errorf("fs must be tmpfs or disk, got %q", c.FS)
	case len(c.Daemons) == 0:
		return fmt.Errorf("no daemons")
	case c.Timeout <= 0:
		return fmt.Errorf("timeout must be > 0")
	}
	return nil
}

// count formats a file count the way row names use it: 10k, 100k, 1M.
func count(n int) string {
	switch {
	case n >= 1_000_000 && n%1_000_000 == 0:
		return fmt.Sprintf("%dM", n/1_000_000)
	case n >= 1000 && n%1000 == 0:
		return fmt.Sprintf("%dk", n/1000)
	}
	return fmt.Sprint(n)
}
