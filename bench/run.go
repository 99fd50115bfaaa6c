package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Result is the whole outcome of a run, as written to results.json.
type Result struct {
	Meta  Meta        `json:"meta"`
	Peers []PeerInfo  `json:"peers"`
	Rows  []RowResult `json:"rows"`
}

// Meta says when, where and how the numbers were taken.
type Meta struct {
	Start        time.Time `json:"start"`
	End          time.Time `json:"end"`
	Host         string    `json:"host"`
	Kernel       string    `json:"kernel"`
	CPU          string    `json:"cpu"`
	CPUs         int       `json:"cpus"`
	GoVersion    string    `json:"go_version"`
	Commit       string    `json:"commit,omitempty"`
	Fio          string    `json:"fio,omitempty"`
	FS           string    `json:"fs"`
	Runs         int       `json:"runs"`
	Files        int       `json:"files"`
	Size         int64     `json:"size"`
	RandReads    int       `json:"rand_reads"`
	WarmPasses   int       `json:"warm_passes,omitempty"`
	WalkFiles    int       `json:"walk_files"`
	BigWalkFiles int       `json:"big_walk_files"`
	Reference    string    `json:"reference"`
	Warnings     []string  `json:"warnings,omitempty"`
}

// PeerInfo describes one column.
type PeerInfo struct {
	Name        string `json:"name"`
	Transport   string `json:"transport"`
	Command     string `json:"command,omitempty"`
	Unavailable string `json:"unavailable,omitempty"`
}

// RowResult is one line of the table: a cell per peer, in column order.
type RowResult struct {
	Row
	Cells []Cell `json:"cells"`
}

// Cell is the outcome of one (row, peer): every sample, or why there is
// none. Ratio is relative to the reference peer, oriented so that > 1
// always means better than the reference (faster, or less memory/fds).
type Cell struct {
	Peer    string    `json:"peer"`
	Samples []float64 `json:"samples,omitempty"`
	Median  float64   `json:"median"`
	Min     float64   `json:"min"`
	Max     float64   `json:"max"`
	Ratio   float64   `json:"ratio,omitempty"` // 0 = no ratio
	NA      string    `json:"na,omitempty"`
	// DaemonCPU is the daemon's user+system CPU seconds during each sample
	// of the job (the whole job, all its rows), on the job's first row
	// only.
	DaemonCPU []float64 `json:"daemon_cpu_s,omitempty"`
	// CPUPerOp is the daemon's CPU time in µs per op (Row.CPUOp) during
	// the row's timed phase, one per sample; CPUOps the ops of each
	// sample; CPUSource where the time came from (CPUCgroup: the
	// daemon's cgroup v2, µs resolution; CPUProc: /proc/PID/stat of the
	// live process tree, 10 ms; "mixed"). CPURatio is the reference's
	// median over this cell's median (> 1 = less CPU per op), 0 = none.
	CPUPerOp  []float64 `json:"cpu_us_per_op,omitempty"`
	CPUOps    []float64 `json:"cpu_ops,omitempty"`
	CPUSource string    `json:"cpu_source,omitempty"`
	CPURatio  float64   `json:"cpu_ratio,omitempty"`
	// Detail is what the job said about the number in its last sample
	// (e.g. which syscalls a syscall count is made of).
	Detail string `json:"detail,omitempty"`
}

// OK reports whether the cell has numbers.
func (c *Cell) OK() bool { return c.NA == "" && len(c.Samples) > 0 }

// Run executes every selected job against every peer, cfg.Runs times,
// interleaved, and returns the result. It needs root for tmpfs, mounts and
// drop_caches; without root, use FS "disk" and native only (caches are then
// not dropped, which Meta.Warnings records).
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	log := cfg.Log
	if err := os.MkdirAll(cfg.OutDir, 0o755); err != nil {
		return nil, err
	}
	res := &Result{Meta: meta(&cfg)}

	parent := cfg.WorkDir
	if parent == "" {
		parent = "/var/tmp"
	}
	work, err := os.MkdirTemp(parent, "govirtiofsd-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	shared := filepath.Join(work, "shared")
	mnt := filepath.Join(work, "mnt")
	for _, d := range []string{shared, mnt, filepath.Join(work, "state")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	if cfg.FS == "tmpfs" {
		if err := unix.Mount("tmpfs", shared, "tmpfs", 0, "mode=755"); err != nil {
			return nil, fmt.Errorf("mount tmpfs on %s (needs root; or use -fs disk): %w", shared, err)
		}
		defer func() {
			if err := unix.Unmount(shared, unix.MNT_DETACH); err != nil {
				log.Warn("unmount tmpfs", "dir", shared, "err", err)
			}
		}()
	}

	defer removeCgroupBase() // after the daemons' cgroups (cpu.go)
	if cfg.Install {
		res.Meta.Warnings = append(res.Meta.Warnings, installPeers(ctx, &cfg, log)...)
	}
	peers, err := buildPeers(ctx, &cfg, filepath.Join(work, "bin"))
	if err != nil {
		return nil, err
	}
	for _, p := range peers {
		pi := PeerInfo{Name: p.Name, Transport: string(p.Transport), Command: p.Note, Unavailable: p.Unavailable}
		res.Peers = append(res.Peers, pi)
		if p.Unavailable != "" {
			log.Warn("peer unavailable", "peer", p.Name, "why", p.Unavailable)
		}
	}

	var selected []*job
	var parts part
	for _, j := range jobs(&cfg) {
		served := false
		for _, p := range peers {
			served = served || slices.Contains(j.transports, p.Transport)
		}
		if !served {
			continue // no peer of its transport selected
		}
		var keep []Row
		for _, r := range j.rows {
			if cfg.Rows == nil || cfg.Rows.MatchString(r.Name) {
				keep = append(keep, r)
			}
		}
		if len(keep) == 0 {
			continue
		}
		selected = append(selected, j)
		parts |= j.parts
	}
	if len(selected) == 0 {
		return nil, errors.New("no row matches -rows")
	}
	if cfg.Install {
		res.Meta.Warnings = append(res.Meta.Warnings, installTools(ctx, &cfg, log, selected)...)
	}
	log.Info("generating tree", "dir", shared, "fs", cfg.FS)
	t0 := time.Now()
	if err := generate(shared, parts, &cfg); err != nil {
		return nil, fmt.Errorf("generate tree: %w", err)
	}
	log.Info("tree ready", "took", time.Since(t0).Round(time.Millisecond))

	canDrop := true
	if cfg.NoDropCaches {
		res.Meta.Warnings = append(res.Meta.Warnings, "caches not dropped (-drop=false): cold rows are fresh mounts over warm host caches")
	} else if err := dropCaches(shared); err != nil {
		canDrop = false
		res.Meta.Warnings = append(res.Meta.Warnings, "caches not dropped for cold rows: "+err.Error())
		log.Warn("cannot drop caches; cold rows are not cold", "err", err)
	}

	r := &runner{cfg: &cfg, log: log, shared: shared, mnt: mnt, work: work, canDrop: canDrop, res: res}
	for _, j := range selected {
		r.runJob(ctx, j, peers)
		if ctx.Err() != nil {
			break
		}
	}
	res.Meta.End = time.Now().UTC()
	sortRows(res)
	return res, ctx.Err()
}

type runner struct {
	cfg     *Config
	log     *slog.Logger
	shared  string
	mnt     string
	work    string
	canDrop bool
	res     *Result
	starts  int
	// details and CPU times of the last sample (Env.details, Env.cpu)
	details map[string]string
	cpu     map[string]opCPU
}

// runJob runs one job: for each repetition, every peer once, the order
// rotated by one peer per repetition so no peer always runs first.
func (r *runner) runJob(ctx context.Context, j *job, peers []*Daemon) {
	samples := make(map[string]map[string][]float64) // row → peer → samples
	cpu := make(map[string][]float64)                // peer → daemon CPU s per sample
	na := make(map[string]map[string]string)         // row → peer → reason
	detail := make(map[string]map[string]string)     // row → peer → Cell.Detail
	opCPUs := make(map[string]map[string][]opCPU)    // row → peer → CPU per timed phase
	for _, row := range j.rows {
		samples[row.Name] = map[string][]float64{}
		na[row.Name] = map[string]string{}
	}
	failed := make(map[string]bool) // peer → a sample failed or was skipped
	fail := func(peer, why string) {
		failed[peer] = true
		for _, row := range j.rows {
			if na[row.Name][peer] == "" {
				na[row.Name][peer] = why
			}
		}
	}
	for rep := range r.cfg.Runs {
		for k := range peers {
			p := peers[(k+rep)%len(peers)]
			if ctx.Err() != nil {
				return
			}
			if failed[p.Name] {
				// Failed before: do not retry the same failure. (Not
				// read from the first row's cell, which -rows may have
				// left unmeasured.)
				continue
			}
			if why := r.skip(j, p); why != "" {
				fail(p.Name, why)
				continue
			}
			vals, err := r.sample(ctx, j, p)
			if err != nil {
				var se *startError
				exited := errors.As(err, &se) && strings.Contains(se.Error(), "exited before")
				err = errors.New(strings.ReplaceAll(err.Error(), r.work, "$WORK"))
				if exited && !j.restart {
					// A daemon that exits instead of serving will do so
					// for the next job too: stop trying.
					p.Unavailable = err.Error()
					r.peerInfo(p.Name).Unavailable = err.Error()
				}
				r.log.Warn("sample failed", "job", j.name, "peer", p.Name, "rep", rep, "err", err)
				fail(p.Name, err.Error())
				continue
			}
			if v, ok := vals[cpuKey]; ok {
				cpu[p.Name] = append(cpu[p.Name], v)
			}
			for row, c := range r.cpu {
				if opCPUs[row] == nil {
					opCPUs[row] = map[string][]opCPU{}
				}
				opCPUs[row][p.Name] = append(opCPUs[row][p.Name], c)
			}
			for row, d := range r.details {
				if detail[row] == nil {
					detail[row] = map[string]string{}
				}
				detail[row][p.Name] = d
			}
			for _, row := range j.rows {
				if v, ok := vals[row.Name]; ok {
					samples[row.Name][p.Name] = append(samples[row.Name][p.Name], v)
				} else if na[row.Name][p.Name] == "" {
					na[row.Name][p.Name] = row.noValue
					if row.noValue == "" {
						na[row.Name][p.Name] = "not measured"
					}
				}
			}
			r.log.Info("sample", "job", j.name, "peer", p.Name, "rep", rep, "values", fmtVals(vals))
		}
	}
	for ri, row := range j.rows {
		if r.cfg.Rows != nil && !r.cfg.Rows.MatchString(row.Name) {
			continue
		}
		rr := RowResult{Row: row}
		for _, p := range peers {
			c := Cell{Peer: p.Name, NA: na[row.Name][p.Name], Detail: detail[row.Name][p.Name]}
			if ri == 0 && c.NA == "" {
				c.DaemonCPU = cpu[p.Name]
			}
			if c.NA == "" {
				for _, oc := range opCPUs[row.Name][p.Name] {
					c.CPUPerOp = append(c.CPUPerOp, oc.us/oc.ops)
					c.CPUOps = append(c.CPUOps, oc.ops)
					switch c.CPUSource {
					case "":
						c.CPUSource = oc.source
					case oc.source:
					default:
						c.CPUSource = "mixed"
					}
					rr.CPUOp = oc.op
				}
				c.Samples = samples[row.Name][p.Name]
				if len(c.Samples) == 0 {
					c.NA = "no samples"
				} else {
					c.Median, c.Min, c.Max = stats(c.Samples)
				}
			}
			rr.Cells = append(rr.Cells, c)
		}
		src := &rr
		if row.RefRow != "" {
			src = nil
			for i := range r.res.Rows {
				if r.res.Rows[i].Name == row.RefRow {
					src = &r.res.Rows[i]
				}
			}
		}
		if src != nil {
			setRatiosFrom(&rr, src)
			setCPURatiosFrom(&rr, src)
		}
		r.res.Rows = append(r.res.Rows, rr)
	}
}

// cpuKey carries the daemon's CPU time from measure to runJob.
const cpuKey = "\x00cpu"

// startError is a peer that did not come up (no mount, exited, hung).
type startError struct{ err error }

func (e *startError) Error() string { return "start: " + e.err.Error() }
func (e *startError) Unwrap() error { return e.err }

func (r *runner) peerInfo(name string) *PeerInfo {
	for i := range r.res.Peers {
		if r.res.Peers[i].Name == name {
			return &r.res.Peers[i]
		}
	}
	return &PeerInfo{}
}

// skip says why peer p cannot run job j at all ("" = it can).
func (r *runner) skip(j *job, p *Daemon) string {
	if p.Unavailable != "" {
		return p.Unavailable
	}
	if j.missing != nil {
		if why := j.missing(); why != "" {
			return why
		}
	}
	ok := false
	for _, t := range j.transports {
		ok = ok || t == p.Transport
	}
	if !ok {
		return "job not available over " + string(p.Transport)
	}
	if j.restart {
		switch {
		case p.Native:
			return "no daemon to restart"
		case p.RestartArgv == nil && p.Name == PeerGovNoState:
			return "--supervise needs the persistent node table"
		case p.RestartArgv == nil && p.Name == PeerGovirtiofsd:
			return "no --supervise flag in govirtiofsd --help yet"
		case p.RestartArgv == nil:
			return "cannot restart without losing the mount"
		}
	}
	if j.queues > 1 && p.queueLimit != "" {
		return p.queueLimit
	}
	if j.cold && !r.canDrop {
		return "cannot drop caches (not root?)"
	}
	return ""
}

// sample starts p on a fresh mount, runs j once, and stops p.
func (r *runner) sample(ctx context.Context, j *job, p *Daemon) (map[string]float64, error) {
	if j.cleanup != nil {
		if err := j.cleanup(r.shared); err != nil {
			return nil, fmt.Errorf("cleanup before: %w", err)
		}
	}
	r.starts++
	state := filepath.Join(r.work, "state", fmt.Sprintf("%s-%d", p.Name, r.starts))
	if err := os.MkdirAll(state, 0o700); err != nil {
		return nil, err
	}
	defer os.RemoveAll(state)
	var argv []string
	where := r.mnt
	if p.Transport == Vhost {
		// A new name per start: the Rust virtiofsd keeps a locked
		// SOCK.pid file, and a dying predecessor may still hold it.
		where = filepath.Join(r.work, fmt.Sprintf("vhost-%d.sock", r.starts))
	}
	if !p.Native {
		if j.restart {
			argv = p.RestartArgv(r.shared, where, state)
		} else {
			argv = p.Argv(r.shared, where, state)
		}
	}
	logPath := filepath.Join(r.cfg.OutDir, "daemon-"+p.Name+".log")
	if j.queues > 1 && p.QueueArgv != nil {
		argv = append(argv, p.QueueArgv(j.queues)...)
	}
	inst, err := start(ctx, p, argv, r.shared, where, logPath, max(1, j.queues))
	if qe := (*queuesError)(nil); errors.As(err, &qe) {
		return nil, qe
	}
	if err != nil {
		return nil, &startError{err}
	}
	env := &Env{Root: inst.root, PID: inst.pid, Cfg: r.cfg, inst: inst, front: inst.front, shared: r.shared, rows: map[string]bool{}}
	for _, row := range j.rows {
		if r.cfg.Rows == nil || r.cfg.Rows.MatchString(row.Name) {
			env.rows[row.Name] = true
		}
	}
	if p.KeepsState {
		env.State = state
	}
	if !p.Native {
		env.abort = inst.abort
	}
	vals, err := r.measure(ctx, j, env)
	r.details = env.details
	r.cpu = env.cpu
	if serr := inst.stop(); serr != nil {
		msg := fmt.Sprintf("%s: unclean stop after %s: %v", p.Name, j.name, serr)
		r.log.Warn("unclean stop", "peer", p.Name, "job", j.name, "err", serr)
		r.res.Meta.Warnings = appendOnce(r.res.Meta.Warnings, msg)
	}
	if j.cleanup != nil {
		if cerr := j.cleanup(r.shared); cerr != nil && err == nil {
			err = fmt.Errorf("cleanup after: %w", cerr)
		}
	}
	return vals, err
}

// measure runs the job under the sample timeout; a hung daemon is aborted
// so the blocked syscalls return.
func (r *runner) measure(ctx context.Context, j *job, e *Env) (map[string]float64, error) {
	if j.cold && !r.cfg.NoDropCaches {
		paths := []string{r.shared}
		if e.Root != "" && e.Root != r.shared {
			paths = append(paths, e.Root)
		}
		if err := dropCaches(paths...); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type out struct {
		v   map[string]float64
		err error
	}
	ch := make(chan out, 1)
	cpu0 := e.cpuStart()
	go func() {
		v, err := j.run(ctx, e)
		if err == nil && cpu0.ok && !j.restart {
			if cpu1, src, err := e.inst.cpuUsec(); err == nil && src == cpu0.src {
				v[cpuKey] = (cpu1 - cpu0.us) / 1e6
			}
		}
		ch <- out{v, err}
	}()
	var died <-chan struct{}
	if e.inst != nil && e.inst.done != nil && !j.restart {
		died = e.inst.done
	}
	timer := time.NewTimer(r.cfg.Timeout)
	defer timer.Stop()
	select {
	case o := <-ch:
		return o.v, o.err
	case <-died:
		if e.abort != nil {
			e.abort()
		}
		o := <-ch
		return nil, fmt.Errorf("daemon died during the sample (%v); workload: %v%s", e.inst.err, o.err, logTail(e.inst.log))
	case <-timer.C:
		cancel()
		if e.abort != nil {
			e.abort()
		}
		select {
		case <-ch:
		case <-time.After(30 * time.Second):
		}
		return nil, fmt.Errorf("timeout after %v", r.cfg.Timeout)
	}
}

func stats(v []float64) (median, lo, hi float64) {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	n := len(s)
	median = s[n/2]
	if n%2 == 0 {
		median = (s[n/2-1] + s[n/2]) / 2
	}
	return median, s[0], s[n-1]
}

// setRatios sets each cell's ratio to the best of the row's reference
// peers.
func setRatios(rr *RowResult) { setRatiosFrom(rr, rr) }

// setRatiosFrom sets rr's ratios to the best reference cell of src (a
// row with the same unit: rr itself, or the row named by rr.RefRow).
func setRatiosFrom(rr, src *RowResult) {
	if rr.NoRatio {
		return
	}
	var rc *Cell
	for i := range src.Cells {
		c := &src.Cells[i]
		if !slices.Contains(rr.Ref, c.Peer) || !c.OK() {
			continue
		}
		if rc == nil || (rr.HigherBetter && c.Median > rc.Median) || (!rr.HigherBetter && c.Median < rc.Median) {
			rc = c
		}
	}
	if rc == nil || !rc.OK() || rc.Median == 0 {
		return
	}
	for i := range rr.Cells {
		c := &rr.Cells[i]
		if !c.OK() || c.Median == 0 {
			continue
		}
		if rr.HigherBetter {
			c.Ratio = c.Median / rc.Median
		} else {
			c.Ratio = rc.Median / c.Median
		}
	}
}

// setCPURatiosFrom sets each cell's CPURatio to the lowest median CPU
// per op of src's reference cells over the cell's own (> 1 = less CPU).
func setCPURatiosFrom(rr, src *RowResult) {
	best := 0.0
	for _, c := range src.Cells {
		if !slices.Contains(rr.Ref, c.Peer) || !c.OK() || len(c.CPUPerOp) == 0 {
			continue
		}
		if m, _, _ := stats(c.CPUPerOp); m > 0 && (best == 0 || m < best) {
			best = m
		}
	}
	if best == 0 {
		return
	}
	for i := range rr.Cells {
		c := &rr.Cells[i]
		if len(c.CPUPerOp) == 0 {
			continue
		}
		if m, _, _ := stats(c.CPUPerOp); m > 0 {
			c.CPURatio = best / m
		}
	}
}

func fmtVals(v map[string]float64) string {
	keys := make([]string, 0, len(v))
	for k := range v {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		name := k
		if k == cpuKey {
			name = "daemon_cpu_s"
		}
		fmt.Fprintf(&b, "%s=%.4g ", name, v[k])
	}
	return strings.TrimSpace(b.String())
}

func appendOnce(list []string, s string) []string {
	for _, x := range list {
		if x == s {
			return list
		}
	}
	return append(list, s)
}

func meta(cfg *Config) Meta {
	m := Meta{
		Start: time.Now().UTC(), CPUs: runtime.NumCPU(), GoVersion: runtime.Version(),
		FS: cfg.FS, Runs: cfg.Runs, Files: cfg.Files, Size: cfg.Size, RandReads: cfg.RandReads,
		WarmPasses: cfg.WarmPasses,
		WalkFiles:  cfg.WalkFiles, BigWalkFiles: cfg.BigWalkFiles, Reference: referencePeer,
	}
	m.Host, _ = os.Hostname()
	m.Fio = fioVersion()
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				m.CPU = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	if cfg.ModuleDir != "" {
		cmd := exec.Command("git", "describe", "--always", "--dirty")
		cmd.Dir = cfg.ModuleDir
		if out, err := cmd.Output(); err == nil {
			m.Commit = strings.TrimSpace(string(out))
		}
	}
	return m
}
