// Command compare runs the tests/guest checks in a QEMU guest against
// govirtiofsd (when its binary has the vhost-user mode), QEMU's C virtiofsd
// and the Rust virtiofsd, and prints one table: check × daemon. It is what
// scripts/compare.sh (make compare) runs.
//
// Usage:
//
//	compare [-govirtiofsd BIN] [-daemons a,b] [-checks a,b] [-walk N] [-nofile N] [-v] [-list]
//
// Every daemon runs with RLIMIT_NOFILE 20000 (soft and hard, as the hard
// limit of this project's machines) unless -nofile says otherwise.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/govirtiofsd/govirtiofsd/tests/guest"
	"github.com/govirtiofsd/govirtiofsd/tests/guest/checks"
)

func main() {
	govirtiofsd := flag.String("govirtiofsd", "", "govirtiofsd binary (empty: n/a)")
	only := flag.String("daemons", "", "comma-separated daemon names to run (default: all)")
	checkList := flag.String("checks", strings.Join(guest.AllChecks, ","), "comma-separated checks")
	walk := flag.Int("walk", guest.DefaultWalkFiles, "files for the walk check")
	nofile := flag.Int("nofile", guest.DefaultNoFile, "daemons' RLIMIT_NOFILE (soft and hard); -1: inherit")
	verbose := flag.Bool("v", false, "show progress and the guest consoles on stderr")
	list := flag.Bool("list", false, "list the daemons and exit")
	flag.Parse()

	env, err := guest.LoadEnv()
	if err != nil {
		fmt.Fprintln(os.Stderr, "compare:", err)
		os.Exit(1)
	}
	type column struct {
		d    guest.Daemon
		na   string // reason the daemon is not available
		rep  *guest.Report
		err  error
		took time.Duration
	}
	var cols []*column
	add := func(d guest.Daemon, na string) { cols = append(cols, &column{d: d, na: na}) }
	if *govirtiofsd == "" {
		add(guest.Daemon{Name: "govirtiofsd"}, "no binary given")
	} else if ok, why := supportsSocketPath(*govirtiofsd); !ok {
		add(guest.Govirtiofsd(*govirtiofsd), why)
	} else {
		add(guest.Govirtiofsd(*govirtiofsd), "")
	}
	for _, d := range guest.Peers(env) {
		add(d, "")
	}
	if *list {
		for _, c := range cols {
			fmt.Printf("%-20s %s\n", c.d.Name, strings.Join(c.d.Args, " "))
		}
		return
	}
	if *only != "" {
		keep := map[string]bool{}
		for _, n := range strings.Split(*only, ",") {
			keep[n] = true
		}
		var kept []*column
		for _, c := range cols {
			if keep[c.d.Name] {
				kept = append(kept, c)
			}
		}
		cols = kept
	}
	var log io.Writer
	if *verbose {
		log = os.Stderr
	}
	tmp, err := os.MkdirTemp("", "compare-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "compare:", err)
		os.Exit(1)
	}
	defer os.RemoveAll(tmp)
	g, err := guest.PrepareGuest(env, tmp)
	if err != nil {
		fmt.Fprintln(os.Stderr, "compare:", err)
		os.Exit(1)
	}
	checkNames := strings.Split(*checkList, ",")
	// An interrupt stops the current guest and daemon and still removes
	// the fixtures (tmpfs mounts included).
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	for _, c := range cols {
		if c.na != "" || ctx.Err() != nil {
			continue
		}
		fmt.Fprintf(os.Stderr, "compare: %s ...\n", c.d.Name)
		start := time.Now()
		c.rep, c.err = guest.Run(ctx, guest.Options{
			Guest: g, Daemon: c.d, Checks: checkNames, WalkFiles: *walk, NoFile: *nofile, Log: log,
		})
		c.took = time.Since(start)
		if c.err != nil {
			fmt.Fprintf(os.Stderr, "compare: %s: %v\n", c.d.Name, c.err)
		}
	}

	// Rows: every check any daemon reported, posixtest cases summarised.
	rowSet := map[string]bool{}
	for _, c := range cols {
		if c.rep == nil {
			continue
		}
		for _, r := range c.rep.Results {
			if !strings.HasPrefix(r.Check, "posixtest/") {
				rowSet[r.Check] = true
			}
		}
	}
	order := map[string]int{}
	for i, n := range []string{"mount", "posixtest", "identity", "identity-dino", "handles-file", "handles-dir",
		"walk", "reboot-write", "mount-boot2", "reboot", "reconnect-write", "mount-reconnect", "reconnect"} {
		order[n] = i
	}
	var rows []string
	for r := range rowSet {
		rows = append(rows, r)
	}
	sort.Slice(rows, func(i, j int) bool {
		oi, iok := order[rows[i]]
		oj, jok := order[rows[j]]
		if iok && jok {
			return oi < oj
		}
		if iok != jok {
			return iok
		}
		return rows[i] < rows[j]
	})
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprint(tw, "check")
	for _, c := range cols {
		fmt.Fprint(tw, "\t"+c.d.Name)
	}
	fmt.Fprintln(tw)
	cell := func(c *column, f func(*guest.Report) string) string {
		switch {
		case c.na != "":
			return "n/a"
		case c.err != nil:
			return "error"
		}
		return f(c.rep)
	}
	line := func(name string, f func(*guest.Report) string) {
		fmt.Fprint(tw, name)
		for _, c := range cols {
			fmt.Fprint(tw, "\t"+cell(c, f))
		}
		fmt.Fprintln(tw)
	}
	if wantCheck(checkNames, guest.CheckPosixtest) {
		line("posixtest pass/fail/skip", func(r *guest.Report) string {
			n := map[checks.Status]int{}
			for _, x := range r.Posixtest() {
				n[x.Status]++
			}
			return fmt.Sprintf("%d/%d/%d", n[checks.Pass], n[checks.Fail], n[checks.Skip])
		})
	}
	for _, row := range rows {
		line(row, func(r *guest.Report) string {
			x, ok := r.Result(row)
			if !ok {
				return "-"
			}
			return strings.ToLower(string(x.Status))
		})
	}
	line("peak fds", func(r *guest.Report) string { return fmt.Sprint(r.Peak.FDs) })
	line("peak RSS (MiB)", func(r *guest.Report) string { return fmt.Sprintf("%.1f", float64(r.Peak.RSSKiB)/1024) })
	// Daemon resources at the moments the guest asked the host to look.
	for _, when := range []string{"mount", "walk", "reboot", "reconnect"} {
		present := false
		for _, c := range cols {
			if c.rep != nil {
				if _, ok := c.rep.Samples[when]; ok {
					present = true
				}
			}
		}
		if !present {
			continue
		}
		line("fds after "+when, func(r *guest.Report) string {
			s, ok := r.Samples[when]
			if !ok {
				return "-"
			}
			return fmt.Sprint(s.FDs)
		})
		line("RSS after "+when+" (MiB)", func(r *guest.Report) string {
			s, ok := r.Samples[when]
			if !ok {
				return "-"
			}
			return fmt.Sprintf("%.1f", float64(s.RSSKiB)/1024)
		})
	}
	line("guest runs (s)", func(r *guest.Report) string {
		var s []string
		for _, b := range r.Boots {
			s = append(s, fmt.Sprintf("%.0f", b.Seconds()))
		}
		return strings.Join(s, "+")
	})
	tw.Flush()

	// Details: failed posixtest cases and every non-pass line.
	fmt.Println()
	for _, c := range cols {
		if c.na != "" {
			fmt.Printf("%s: n/a: %s\n", c.d.Name, c.na)
			continue
		}
		if c.err != nil {
			fmt.Printf("%s: error: %v\n", c.d.Name, c.err)
			continue
		}
		fmt.Printf("%s: %s\n", c.d.Name, strings.Join(c.d.Args, " "))
		for _, r := range c.rep.Results {
			if r.Status != checks.Pass {
				fmt.Printf("  %s %s %s\n", r.Check, r.Status, r.Detail)
			}
		}
	}
}

func wantCheck(list []string, c string) bool {
	for _, x := range list {
		if x == c {
			return true
		}
	}
	return false
}

// supportsSocketPath reports whether bin has the vhost-user mode, by its
// --help mentioning --socket-path.
func supportsSocketPath(bin string) (bool, string) {
	if _, err := os.Stat(bin); err != nil {
		return false, err.Error()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, bin, "--help").CombinedOutput()
	if !strings.Contains(string(out), "socket-path") {
		return false, bin + " --help does not mention --socket-path (no vhost-user mode yet)"
	}
	return true, ""
}
