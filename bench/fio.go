package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// fio rows (issue 5's /dev/fuse side): Debian's fio against the mount, one
// fio process per sample, psync engine (one request in flight per job).

// fioOut is the part of fio's JSON output the rows use.
type fioOut struct {
	Jobs []struct {
		Read  fioDir `json:"read"`
		Write fioDir `json:"write"`
	} `json:"jobs"`
}

type fioDir struct {
	BwBytes  float64 `json:"bw_bytes"`
	TotalIOs float64 `json:"total_ios"`
	IOPS     float64 `json:"iops"`
	ClatNs   struct {
		Percentile map[string]float64 `json:"percentile"`
	} `json:"clat_ns"`
}

func fioMissing() string {
	if _, err := exec.LookPath("fio"); err != nil {
		return "fio not installed (apt-get install fio)"
	}
	return ""
}

// runFio runs fio with args plus the common ones and returns its first
// (group-reported) job.
func runFio(ctx context.Context, args ...string) (*fioOut, error) {
	all := append([]string{"--name=bench", "--ioengine=psync", "--group_reporting", "--output-format=json"}, args...)
	cmd := exec.CommandContext(ctx, "fio", all...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("fio: %v: %s", err, firstLine(stderr.String()+stdout.String()))
	}
	out := stdout.Bytes()
	if i := bytes.IndexByte(out, '{'); i > 0 {
		out = out[i:] // fio may print notes before the JSON
	}
	var res fioOut
	if err := json.Unmarshal(out, &res); err != nil {
		return nil, fmt.Errorf("fio output: %w", err)
	}
	if len(res.Jobs) != 1 {
		return nil, fmt.Errorf("fio reported %d job groups, want 1", len(res.Jobs))
	}
	return &res, nil
}

// fioCPU runs fio like runFio and records the daemon's CPU time per I/O
// of the run (dir: "read" or "write") for row.
func fioCPU(ctx context.Context, e *Env, row, dir string, args ...string) (*fioOut, error) {
	m := e.cpuStart()
	o, err := runFio(ctx, args...)
	if err != nil {
		return nil, err
	}
	d := o.Jobs[0].Read
	if dir == "write" {
		d = o.Jobs[0].Write
	}
	e.cpuOps(row, m, d.TotalIOs, "fio I/O")
	return o, nil
}

func p99us(d fioDir) (float64, error) {
	v, ok := d.ClatNs.Percentile["99.000000"]
	if !ok {
		return 0, fmt.Errorf("fio output has no p99")
	}
	return v / 1000, nil
}

func fioJobs(cfg *Config) []*job {
	size := strconv.FormatInt(cfg.Size, 10)
	sz := bytesStr(cfg.Size)
	bs := "--bs=" + strconv.FormatInt(min(1<<20, cfg.Size/4096*4096), 10)
	rt := fmt.Sprintf("--runtime=%dms", max(100, cfg.FioRuntime.Milliseconds()))
	rtS := cfg.FioRuntime.String()
	seq := func(e *Env) string { return "--filename=" + filepath.Join(e.Root, "data", "seq.dat") }
	wfile := func(e *Env) string { return "--filename=" + filepath.Join(e.Root, "data", "fio-w.dat") }
	cleanW := func(shared string) error { return removeIfExists(filepath.Join(shared, "data", "fio-w.dat")) }
	js := []*job{
		{
			name: "fio-seq-read", parts: partData, cold: true,
			rows: []Row{{Name: "fio-seq-read", Unit: "MiB/s", HigherBetter: true,
				Desc: "fio rw=read bs=1M over the " + sz + " file, fresh mount, after drop_caches"}},
			run: func(ctx context.Context, e *Env) (map[string]float64, error) {
				o, err := fioCPU(ctx, e, "fio-seq-read", "read", seq(e), "--rw=read", bs, "--size="+size)
				if err != nil {
					return nil, err
				}
				return map[string]float64{"fio-seq-read": o.Jobs[0].Read.BwBytes / (1 << 20)}, nil
			},
		},
		{
			name: "fio-seq-write", parts: partData,
			rows: []Row{{Name: "fio-seq-write", Unit: "MiB/s", HigherBetter: true,
				Desc: "fio rw=write bs=1M, " + sz + " to a new file, end_fsync"}},
			run: func(ctx context.Context, e *Env) (map[string]float64, error) {
				o, err := fioCPU(ctx, e, "fio-seq-write", "write", wfile(e), "--rw=write", bs, "--size="+size, "--end_fsync=1")
				if err != nil {
					return nil, err
				}
				return map[string]float64{"fio-seq-write": o.Jobs[0].Write.BwBytes / (1 << 20)}, nil
			},
			cleanup: cleanW,
		},
		{
			name: "fio-randread", parts: partData, cold: true,
			rows: []Row{
				{Name: "fio-randread-4k", Unit: "IOPS", HigherBetter: true,
					Desc: fmt.Sprintf("fio rw=randread bs=4k over the %s file (FADV_RANDOM), 1 in flight, for %s, after drop_caches", sz, rtS)},
				{Name: "fio-randread-4k-p99", Unit: "µs",
					Desc: "p99 completion latency of that run"},
			},
			run: func(ctx context.Context, e *Env) (map[string]float64, error) {
				o, err := fioCPU(ctx, e, "fio-randread-4k", "read", seq(e), "--rw=randread", "--bs=4k", "--size="+size, "--fadvise_hint=1", "--time_based", rt)
				if err != nil {
					return nil, err
				}
				p, err := p99us(o.Jobs[0].Read)
				if err != nil {
					return nil, err
				}
				return map[string]float64{"fio-randread-4k": o.Jobs[0].Read.IOPS, "fio-randread-4k-p99": p}, nil
			},
		},
		{
			name: "fio-randread-4jobs", parts: partData, cold: true,
			rows: []Row{{Name: "fio-randread-4k-4jobs", Unit: "IOPS", HigherBetter: true,
				Desc: "the same with numjobs=4 (4 requests in flight)"}},
			run: func(ctx context.Context, e *Env) (map[string]float64, error) {
				o, err := fioCPU(ctx, e, "fio-randread-4k-4jobs", "read", seq(e), "--rw=randread", "--bs=4k", "--size="+size, "--fadvise_hint=1", "--numjobs=4", "--time_based", rt)
				if err != nil {
					return nil, err
				}
				return map[string]float64{"fio-randread-4k-4jobs": o.Jobs[0].Read.IOPS}, nil
			},
		},
		{
			name: "fio-randwrite", parts: partData,
			rows: []Row{
				{Name: "fio-randwrite-4k", Unit: "IOPS", HigherBetter: true,
					Desc: fmt.Sprintf("fio rw=randwrite bs=4k into a laid-out %s file, 1 in flight, for %s, end_fsync", sz, rtS)},
			},
			run: func(ctx context.Context, e *Env) (map[string]float64, error) {
				o, err := fioCPU(ctx, e, "fio-randwrite-4k", "write", wfile(e), "--rw=randwrite", "--bs=4k", "--size="+size, "--end_fsync=1", "--time_based", rt)
				if err != nil {
					return nil, err
				}
				return map[string]float64{"fio-randwrite-4k": o.Jobs[0].Write.IOPS}, nil
			},
			cleanup: cleanW,
		},
	}
	for _, j := range js {
		j.missing = fioMissing
		j.tools = []string{"fio"}
	}
	return js
}

// fioVersion is recorded in the result's metadata.
func fioVersion() string {
	out, err := exec.Command("fio", "--version").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}
