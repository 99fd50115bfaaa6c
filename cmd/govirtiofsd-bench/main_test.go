package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestSmokeNative runs the whole command, native peer only, on a tiny tree
// on disk: every row native can measure must have numbers, and the three
// output files must be written.
func TestSmokeNative(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	code := run([]string{
		"-daemons", "native", "-runs", "2", "-files", "50", "-size", "64KiB",
		"-randreads", "8", "-walkfiles", "1200", "-bigwalkfiles", "0", "-fioruntime", "100ms",
		"-fs", "disk", "-workdir", dir, "-out", out,
		"-drop=false",    // do not flush the page cache of a shared CI machine
		"-install=false", // and do not install fio on it
	})
	if code != 0 {
		t.Fatalf("exit code %d", code)
	}
	var res struct {
		Rows []struct {
			Name  string
			Cells []struct {
				Peer    string
				Samples []float64
				NA      string
			}
		}
	}
	data, err := os.ReadFile(filepath.Join(out, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &res); err != nil {
		t.Fatal(err)
	}
	measured := 0
	for _, r := range res.Rows {
		if len(r.Cells) != 1 || r.Cells[0].Peer != "native" {
			t.Fatalf("row %s: cells %+v, want one native cell", r.Name, r.Cells)
		}
		c := r.Cells[0]
		daemonOnly := strings.HasPrefix(r.Name, "rss-") || strings.HasPrefix(r.Name, "fds-") || strings.HasPrefix(r.Name, "restart-") || strings.HasPrefix(r.Name, "state-")
		_, noFio := exec.LookPath("fio")
		switch {
		case strings.HasPrefix(r.Name, "fio-") && noFio != nil:
			if !strings.Contains(c.NA, "fio not installed") {
				t.Errorf("row %s without fio: %+v", r.Name, c)
			}
		case daemonOnly:
			if c.NA == "" {
				t.Errorf("row %s: native has numbers %v, want n/a", r.Name, c.Samples)
			}
		case c.NA != "" || len(c.Samples) != 2:
			t.Errorf("row %s: na=%q samples=%v, want 2 samples", r.Name, c.NA, c.Samples)
		default:
			measured++
		}
	}
	if measured < 5 {
		t.Errorf("only %d rows measured", measured)
	}
	for _, f := range []string{"table.md", "chart.png"} {
		if st, err := os.Stat(filepath.Join(out, f)); err != nil || st.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"4096": 4096, "64KiB": 64 << 10, "256MiB": 256 << 20, "1GiB": 1 << 30, "2M": 2 << 20} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "x", "-1", "0", "1TiB"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) succeeded", in)
		}
	}
}

func TestBadFlags(t *testing.T) {
	if code := run([]string{"-rows", "("}); code != 2 {
		t.Errorf("bad -rows: exit %d, want 2", code)
	}
	if code := run([]string{"extra"}); code != 2 {
		t.Errorf("extra argument: exit %d, want 2", code)
	}
}
