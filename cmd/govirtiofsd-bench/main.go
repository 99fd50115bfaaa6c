// Command govirtiofsd-bench mounts one shared directory through each file
// server (native, govirtiofsd in its default and --state-dir=none
// configurations, go-fuse's example loopback) and runs identical workloads
// through each, interleaved. It prints a Markdown table (median, min–max,
// ratio to loopback) and writes results.json, table.md, chart.png and the
// daemons' logs to -out.
//
// It must run as root from inside the govirtiofsd module (it builds the
// peers with go build), e.g.
//
//	go run ./cmd/govirtiofsd-bench -runs 3 -size 256MiB -bigwalkfiles 0
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"

	"github.com/govirtiofsd/govirtiofsd/bench"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	cfg := bench.DefaultConfig()
	fl := flag.NewFlagSet("govirtiofsd-bench", flag.ContinueOnError)
	fl.IntVar(&cfg.Runs, "runs", cfg.Runs, "samples per row and daemon (≥ 3 for a meaningful median)")
	rows := fl.String("rows", "", "regexp selecting rows by name (default: all); e.g. 'stat|readdir'")
	daemons := fl.String("daemons", strings.Join(cfg.Daemons, ","), "comma-separated peers: "+strings.Join(bench.AllPeers, ", "))
	fl.IntVar(&cfg.Files, "files", cfg.Files, "files for the stat, create+unlink and readdir rows")
	size := fl.String("size", "1GiB", "size of the sequential file (bytes, or with KiB/MiB/GiB)")
	fl.IntVar(&cfg.RandReads, "randreads", cfg.RandReads, "4 KiB random reads per sample")
	fl.IntVar(&cfg.WarmPasses, "warmpasses", cfg.WarmPasses, "passes over the stat directory's nodeids per sample of the warm LOOKUP and GETATTR rows")
	fl.DurationVar(&cfg.FioRuntime, "fioruntime", cfg.FioRuntime, "length of each time-based fio sample (random I/O rows)")
	fl.IntVar(&cfg.WalkFiles, "walkfiles", cfg.WalkFiles, "files in the cold-walk tree")
	fl.IntVar(&cfg.BigWalkFiles, "bigwalkfiles", cfg.BigWalkFiles, "files in the big walk tree for the RSS/fd rows (0 = skip)")
	fl.StringVar(&cfg.FS, "fs", cfg.FS, "where the shared tree lives: tmpfs (mounted by the bench) or disk (under -workdir)")
	fl.StringVar(&cfg.WorkDir, "workdir", "", "parent of the scratch directory (default /var/tmp)")
	fl.StringVar(&cfg.OutDir, "out", cfg.OutDir, "directory for results.json, table.md, chart.png and daemon logs")
	fl.DurationVar(&cfg.Timeout, "timeout", cfg.Timeout, "per-sample timeout; a hung daemon is aborted and gets n/a")
	fl.StringVar(&cfg.GovirtiofsdBin, "govirtiofsd", "", "prebuilt govirtiofsd binary (default: go build ./cmd/govirtiofsd)")
	fl.StringVar(&cfg.LoopbackBin, "loopback", "", "prebuilt go-fuse loopback binary (default: go build "+"github.com/hanwen/go-fuse/v2/example/loopback)")
	govArgs := fl.String("govirtiofsd-args", "", "extra space-separated flags for both govirtiofsd peers")
	fl.BoolVar(&cfg.Install, "install", cfg.Install, "as root, install what is missing: the C and Rust virtiofsd (scripts/guest/install.sh) when the install record lacks a selected one, fio and strace (scripts/install-test-deps.sh) when a selected row needs them")
	drop := fl.Bool("drop", true, "drop the host's caches (echo 3 > /proc/sys/vm/drop_caches) before cold rows")
	verbose := fl.Bool("v", false, "log every sample")
	render := fl.String("render", "", "do not measure: print the table of this results.json and redraw its files into -out")
	record := fl.String("record", "", "do not measure: record the FUSE requests of -record-script into this file (bench/README.md)")
	recordScript := fl.String("record-script", "", "workload for -record (default bench/testdata/mixed-workload.sh of the module)")
	recordPeer := fl.String("record-daemon", bench.PeerRust, "vhost peer that answers the requests -record records")
	fl.StringVar(&cfg.Replay, "replay", "", "recording for the vhost-replay rows (default bench/testdata/mixed.rec.gz of the module)")
	if err := fl.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fl.NArg() != 0 {
		fmt.Fprintf(os.Stderr, "unexpected arguments: %q\n", fl.Args())
		return 2
	}
	if *render != "" {
		res, err := bench.ReadResult(*render)
		if err != nil {
			fmt.Fprintf(os.Stderr, "govirtiofsd-bench: %v\n", err)
			return 1
		}
		bench.WriteTable(os.Stdout, res)
		if err := bench.WriteFiles(res, cfg.OutDir); err != nil {
			fmt.Fprintf(os.Stderr, "govirtiofsd-bench: %v\n", err)
			return 1
		}
		return 0
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	cfg.ModuleDir = moduleDir()
	if cfg.Replay == "" && cfg.ModuleDir != "" {
		cfg.Replay = filepath.Join(cfg.ModuleDir, "bench", "testdata", "mixed.rec.gz")
	}
	if *record != "" {
		rc := bench.RecordConfig{Peer: *recordPeer, Govirtiofsd: cfg.GovirtiofsdBin, ModuleDir: cfg.ModuleDir, Script: *recordScript,
			Out: *record, WorkDir: cfg.WorkDir, Log: cfg.Log}
		if rc.Script == "" {
			rc.Script = filepath.Join(cfg.ModuleDir, "bench", "testdata", "mixed-workload.sh")
		}
		out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/hanwen/go-fuse/v2").Output()
		if err != nil {
			fmt.Fprintf(os.Stderr, "govirtiofsd-bench: go list go-fuse: %v\n", err)
			return 1
		}
		rc.Source = strings.TrimSpace(string(out))
		if err := bench.RecordWorkload(context.Background(), rc); err != nil {
			fmt.Fprintf(os.Stderr, "govirtiofsd-bench: record: %v\n", err)
			return 1
		}
		rec, err := bench.ReadRecording(*record)
		if err != nil {
			fmt.Fprintf(os.Stderr, "govirtiofsd-bench: %v\n", err)
			return 1
		}
		fmt.Println(bench.RecordingSummary(rec))
		return 0
	}

	var err error
	if *rows != "" {
		if cfg.Rows, err = regexp.Compile(*rows); err != nil {
			fmt.Fprintf(os.Stderr, "-rows: %v\n", err)
			return 2
		}
	}
	cfg.Daemons = nil
	for _, d := range strings.Split(*daemons, ",") {
		if d = strings.TrimSpace(d); d != "" {
			cfg.Daemons = append(cfg.Daemons, d)
		}
	}
	if cfg.Size, err = parseSize(*size); err != nil {
		fmt.Fprintf(os.Stderr, "-size: %v\n", err)
		return 2
	}
	cfg.GovirtiofsdArgs = strings.Fields(*govArgs)
	cfg.NoDropCaches = !*drop

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := bench.Run(ctx, cfg)
	if res == nil {
		fmt.Fprintf(os.Stderr, "govirtiofsd-bench: %v\n", err)
		return 1
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "govirtiofsd-bench: interrupted: %v (partial results follow)\n", err)
	}
	bench.WriteTable(os.Stdout, res)
	if werr := bench.WriteFiles(res, cfg.OutDir); werr != nil {
		fmt.Fprintf(os.Stderr, "govirtiofsd-bench: %v\n", werr)
		return 1
	}
	fmt.Printf("\nwrote results.json, table.md and charts to %s\n", cfg.OutDir)
	if err != nil {
		return 1
	}
	return 0
}

// parseSize reads "1073741824", "256MiB", "1GiB", "64k".
func parseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suf string
		m   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"g", 1 << 30}, {"m", 1 << 20}, {"k", 1 << 10}} {
		if v, ok := strings.CutSuffix(s, u.suf); ok {
			s, mult = v, u.m
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return n * mult, nil
}

// moduleDir is the root of the module the command runs in ("" outside).
func moduleDir() string {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return ""
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return ""
	}
	return filepath.Dir(mod)
}
