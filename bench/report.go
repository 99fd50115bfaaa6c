package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// ReadResult loads a results.json written by WriteFiles, so that its
// table and charts can be drawn again.
func ReadResult(path string) (*Result, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var res Result
	if err := json.Unmarshal(data, &res); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	sortRows(&res)
	return &res, nil
}

// sortRows keeps the rows of one transport together (devfuse first), in
// their order otherwise, so each table's row numbers are contiguous.
func sortRows(res *Result) {
	rank := func(t Transport) int {
		if t == DevFuse {
			return 0
		}
		return 1
	}
	sort.SliceStable(res.Rows, func(i, j int) bool {
		return rank(res.Rows[i].Transport) < rank(res.Rows[j].Transport)
	})
}

// WriteFiles writes results.json, table.md and a chart per transport
// (chart.png for /dev/fuse, chart-vhost.png) into dir.
func WriteFiles(res *Result, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	js, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(js, '\n'), 0o644); err != nil {
		return err
	}
	var b strings.Builder
	WriteTable(&b, res)
	if err := os.WriteFile(filepath.Join(dir, "table.md"), []byte(b.String()), 0o644); err != nil {
		return err
	}
	for _, g := range groups(res) {
		name := "chart.png"
		if g.transport != DevFuse {
			name = "chart-" + string(g.transport) + ".png"
		}
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		if err := DrawChart(f, res, g); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
	}
	return nil
}

// WriteTable prints the result as Markdown: one table per transport, one
// line per row, one column per peer of that transport; each cell is
// "median (min–max) ×ratio".
func WriteTable(w io.Writer, res *Result) {
	m := res.Meta
	fmt.Fprintf(w, "govirtiofsd-bench %s UTC, %s, kernel %s, %d CPUs (%s), %s, commit %s\n",
		m.Start.Format("2006-01-02 15:04"), m.Host, m.Kernel, m.CPUs, m.CPU, m.GoVersion, orDash(m.Commit))
	fmt.Fprintf(w, "shared tree on %s; %d runs per cell, peers interleaved; cell = median (min–max) ×ratio, where ×ratio > 1 means better than the reference (faster, or less RSS/fds)\n",
		m.FS, m.Runs)
	notes := map[string]int{}
	var noteList []string
	for _, g := range groups(res) {
		fmt.Fprintf(w, "\n### %s (reference: %s)\n\n", g.transport, strings.Join(g.ref, " or "))
		writeHeader(w, []string{"#", "row", "unit"}, g.peers)
		for _, i := range g.rows {
			rr := res.Rows[i]
			fmt.Fprintf(w, "| %d | %s | %s |", i+1, rr.Name, rr.Unit)
			for _, p := range g.peers {
				c := cellOf(&rr, p)
				if c == nil || !c.OK() {
					why := "missing"
					if c != nil {
						why = c.NA
					}
					k, ok := notes[why]
					if !ok {
						noteList = append(noteList, why)
						k = len(noteList)
						notes[why] = k
					}
					fmt.Fprintf(w, " n/a[%d] |", k)
					continue
				}
				fmt.Fprintf(w, " %s (%s–%s)", num(c.Median), num(c.Min), num(c.Max))
				if c.Ratio != 0 {
					fmt.Fprintf(w, " ×%s", ratio(c.Ratio))
				}
				fmt.Fprintf(w, " |")
			}
			fmt.Fprintln(w)
		}
		writeCPUTable(w, res, g)
	}
	fmt.Fprintln(w)
	for i, rr := range res.Rows {
		fmt.Fprintf(w, "%d. %s: %s\n", i+1, rr.Name, rr.Desc)
	}
	for i, rr := range res.Rows {
		first := true
		for _, c := range rr.Cells {
			if c.Detail == "" || !c.OK() {
				continue
			}
			if first {
				fmt.Fprintf(w, "\n%d. %s, per peer (last sample):\n", i+1, rr.Name)
				first = false
			}
			fmt.Fprintf(w, "   - %s: %s\n", c.Peer, c.Detail)
		}
	}
	if len(noteList) > 0 {
		fmt.Fprintln(w, "\nn/a:")
		for i, n := range noteList {
			fmt.Fprintf(w, "- [%d] %s\n", i+1, n)
		}
	}
	fmt.Fprintln(w, "\npeers:")
	for _, p := range res.Peers {
		s := p.Command
		if p.Unavailable != "" {
			s = "unavailable: " + p.Unavailable
		}
		fmt.Fprintf(w, "- %s (%s): %s\n", p.Name, p.Transport, s)
	}
	if len(m.Warnings) > 0 {
		fmt.Fprintln(w, "\nwarnings:")
		for _, s := range m.Warnings {
			fmt.Fprintf(w, "- %s\n", s)
		}
	}
}

// group is the part of a result measured over one transport.
type group struct {
	transport Transport
	ref       []string
	peers     []string // peers of this transport, column order
	rows      []int    // indices into Result.Rows
}

func groups(res *Result) []group {
	var gs []group
	idx := map[Transport]int{}
	for i, rr := range res.Rows {
		k, ok := idx[rr.Transport]
		if !ok {
			g := group{transport: rr.Transport, ref: rr.Ref}
			for _, p := range res.Peers {
				if Transport(p.Transport) == rr.Transport {
					g.peers = append(g.peers, p.Name)
				}
			}
			gs = append(gs, g)
			k = len(gs) - 1
			idx[rr.Transport] = k
		}
		gs[k].rows = append(gs[k].rows, i)
	}
	return gs
}

func cellOf(rr *RowResult, peer string) *Cell {
	for i := range rr.Cells {
		if rr.Cells[i].Peer == peer {
			return &rr.Cells[i]
		}
	}
	return nil
}

// num prints 3 significant digits without exponent for the usual ranges.
func num(v float64) string {
	a := v
	if a < 0 {
		a = -a
	}
	switch {
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	case a >= 1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3g", v)
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func ratio(r float64) string {
	if r >= 0.01 {
		return fmt.Sprintf("%.2f", r)
	}
	return fmt.Sprintf("%.2g", r)
}

// writeCPUTable prints the daemons' CPU time per op for the rows of g that
// carry it; results written before CPU per op was recorded get their CPU
// time per sample instead.
func writeCPUTable(w io.Writer, res *Result, g group) {
	var rows, old []int
	sources := map[string]bool{}
	for _, i := range g.rows {
		perOp, perSample := false, false
		for _, c := range res.Rows[i].Cells {
			if len(c.CPUPerOp) > 0 {
				perOp = true
				sources[c.CPUSource] = true
			}
			perSample = perSample || len(c.DaemonCPU) > 0
		}
		if perOp {
			rows = append(rows, i)
		} else if perSample {
			old = append(old, i)
		}
	}
	if len(rows) > 0 {
		writeCPUPerOp(w, res, g, rows, sources)
		return
	}
	if len(old) == 0 {
		return
	}
	fmt.Fprintf(w, "\ndaemon CPU time (user+system) per sample of the job, median ms (10 ms resolution):\n\n")
	writeHeader(w, []string{"#", "row"}, g.peers)
	for _, i := range old {
		rr := res.Rows[i]
		fmt.Fprintf(w, "| %d | %s |", i+1, rr.Name)
		for _, p := range g.peers {
			c := cellOf(&rr, p)
			if c == nil || len(c.DaemonCPU) == 0 {
				fmt.Fprintf(w, " - |")
				continue
			}
			m, _, _ := stats(c.DaemonCPU)
			fmt.Fprintf(w, " %.0f |", m*1000)
		}
		fmt.Fprintln(w)
	}
}

// writeHeader prints a Markdown table header: the fixed columns, then one
// column per peer.
func writeHeader(w io.Writer, fixed, peers []string) {
	cols := append(append([]string(nil), fixed...), peers...)
	fmt.Fprintf(w, "| %s |\n|%s\n", strings.Join(cols, " | "), strings.Repeat("---|", len(cols)))
}

// writeCPUPerOp prints the daemon CPU time per op: "median (min–max)
// ×ratio" in µs, ×ratio > 1 = less CPU than the reference.
func writeCPUPerOp(w io.Writer, res *Result, g group, rows []int, sources map[string]bool) {
	var how []string
	if sources[CPUCgroup] || sources["mixed"] {
		how = append(how, "cgroup v2 cpu.stat usage_usec of the daemon's own cgroup (every thread and child, exited ones included; µs resolution)")
	}
	if sources[CPUProc] || sources["mixed"] {
		how = append(how, "† /proc/PID/stat utime+stime of the live process tree (10 ms resolution; cgroup v2 unavailable)")
	}
	fmt.Fprintf(w, "\ndaemon CPU time (user+system) per op of the row's timed phase, µs: median (min–max) ×ratio, ×ratio > 1 = less CPU than the reference; from %s:\n\n",
		strings.Join(how, "; "))
	writeHeader(w, []string{"#", "row", "op"}, g.peers)
	for _, i := range rows {
		rr := res.Rows[i]
		fmt.Fprintf(w, "| %d | %s | %s |", i+1, rr.Name, orDash(rr.CPUOp))
		for _, p := range g.peers {
			c := cellOf(&rr, p)
			if c == nil || len(c.CPUPerOp) == 0 {
				fmt.Fprintf(w, " - |")
				continue
			}
			m, lo, hi := stats(c.CPUPerOp)
			mark := ""
			if c.CPUSource != CPUCgroup {
				mark = "†"
			}
			fmt.Fprintf(w, " %s%s (%s–%s)", num(m), mark, num(lo), num(hi))
			if c.CPURatio != 0 {
				fmt.Fprintf(w, " ×%s", ratio(c.CPURatio))
			}
			fmt.Fprintf(w, " |")
		}
		fmt.Fprintln(w)
	}
}
