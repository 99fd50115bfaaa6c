package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// WriteFiles writes results.json, table.md and chart.png into dir.
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
	f, err := os.Create(filepath.Join(dir, "chart.png"))
	if err != nil {
		return err
	}
	if err := DrawChart(f, res); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// WriteTable prints the result as a Markdown table: one line per row, one
// column per peer; each cell is "median (min–max) ×ratio".
func WriteTable(w io.Writer, res *Result) {
	m := res.Meta
	fmt.Fprintf(w, "govirtiofsd-bench %s UTC, %s, kernel %s, %d CPUs (%s), %s, commit %s\n",
		m.Start.Format("2006-01-02 15:04"), m.Host, m.Kernel, m.CPUs, m.CPU, m.GoVersion, orDash(m.Commit))
	fmt.Fprintf(w, "shared tree on %s; %d runs per cell, peers interleaved; cell = median (min–max) ×ratio to %s, where ×ratio > 1 means better than %s (faster, or less RSS/fds)\n\n",
		m.FS, m.Runs, m.Reference, m.Reference)
	fmt.Fprintf(w, "| # | row | unit |")
	for _, p := range res.Peers {
		fmt.Fprintf(w, " %s |", p.Name)
	}
	fmt.Fprintf(w, "\n|---|---|---|")
	for range res.Peers {
		fmt.Fprintf(w, "---|")
	}
	fmt.Fprintln(w)
	notes := map[string]int{}
	var noteList []string
	for i, rr := range res.Rows {
		fmt.Fprintf(w, "| %d | %s | %s |", i+1, rr.Name, rr.Unit)
		for _, c := range rr.Cells {
			if !c.OK() {
				k, ok := notes[c.NA]
				if !ok {
					noteList = append(noteList, c.NA)
					k = len(noteList)
					notes[c.NA] = k
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
	writeCPUTable(w, res)
	fmt.Fprintln(w)
	for i, rr := range res.Rows {
		fmt.Fprintf(w, "%d. %s: %s\n", i+1, rr.Name, rr.Desc)
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
		fmt.Fprintf(w, "- %s: %s\n", p.Name, s)
	}
	if len(m.Warnings) > 0 {
		fmt.Fprintln(w, "\nwarnings:")
		for _, s := range m.Warnings {
			fmt.Fprintf(w, "- %s\n", s)
		}
	}
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

// writeCPUTable prints the daemons' CPU time per sample (median, ms) for
// the rows that carry it.
func writeCPUTable(w io.Writer, res *Result) {
	any := false
	for _, rr := range res.Rows {
		for _, c := range rr.Cells {
			any = any || len(c.DaemonCPU) > 0
		}
	}
	if !any {
		return
	}
	fmt.Fprintf(w, "\ndaemon CPU time (user+system) per sample, median ms (10 ms resolution):\n\n| # | row |")
	for _, p := range res.Peers {
		fmt.Fprintf(w, " %s |", p.Name)
	}
	fmt.Fprintf(w, "\n|---|---|")
	for range res.Peers {
		fmt.Fprintf(w, "---|")
	}
	fmt.Fprintln(w)
	for i, rr := range res.Rows {
		has := false
		for _, c := range rr.Cells {
			has = has || len(c.DaemonCPU) > 0
		}
		if !has {
			continue
		}
		fmt.Fprintf(w, "| %d | %s |", i+1, rr.Name)
		for _, c := range rr.Cells {
			if len(c.DaemonCPU) == 0 {
				fmt.Fprintf(w, " - |")
				continue
			}
			m, _, _ := stats(c.DaemonCPU)
			fmt.Fprintf(w, " %.0f |", m*1000)
		}
		fmt.Fprintln(w)
	}
}
