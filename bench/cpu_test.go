package bench

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// The CPU table gives µs per op with the ratio to the best reference (> 1
// = less CPU), marks /proc-sourced cells, and results written before
// CPU per op existed still get their per-sample table.
func TestCPUPerOpTable(t *testing.T) {
	rr := RowResult{Row: Row{Name: "vhost-getattr-d16", Unit: "ops/s", HigherBetter: true, Transport: Vhost,
		Ref: []string{PeerRust, PeerRustFH}, CPUOp: "GETATTR"}, Cells: []Cell{
		{Peer: PeerGovVhost, Samples: []float64{1}, Median: 1, CPUPerOp: []float64{4, 5, 6}, CPUSource: CPUCgroup},
		{Peer: PeerRust, Samples: []float64{1}, Median: 1, CPUPerOp: []float64{2, 3, 1}, CPUSource: CPUCgroup},
		{Peer: PeerRustFH, Samples: []float64{1}, Median: 1, CPUPerOp: []float64{3}, CPUSource: CPUProc},
		{Peer: PeerCVirtiofsd, NA: "broken"},
	}}
	setCPURatiosFrom(&rr, &rr)
	if rr.Cells[0].CPURatio != 0.4 || rr.Cells[1].CPURatio != 1 || rr.Cells[3].CPURatio != 0 {
		t.Errorf("CPU ratios: %+v", rr.Cells)
	}
	res := &Result{Peers: []PeerInfo{{Name: PeerGovVhost, Transport: "vhost"}, {Name: PeerRust, Transport: "vhost"},
		{Name: PeerRustFH, Transport: "vhost"}, {Name: PeerCVirtiofsd, Transport: "vhost"}}, Rows: []RowResult{rr}}
	var b strings.Builder
	WriteTable(&b, res)
	for _, want := range []string{"per op of the row's timed phase, µs", "| 1 | vhost-getattr-d16 | GETATTR | 5.00 (4.00–6.00) ×0.40 | 2.00 (1.00–3.00) ×1.00 | 3.00† (3.00–3.00) ×0.67 | - |", "cgroup v2", "† /proc"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
	// A run recorded before CPU time per op existed (the vhost run of
	// 2026-11-26 01:11 UTC) still renders, with its per-sample table.
	for _, f := range []string{"testdata/results-per-sample-cpu.json"} {
		old, err := ReadResult(f)
		if err != nil {
			t.Fatal(err)
		}
		b.Reset()
		WriteTable(&b, old)
		if !strings.Contains(b.String(), "per sample of the job, median ms") {
			t.Errorf("%s: no per-sample CPU table", f)
		}
	}
}

// A process started into its own cgroup is counted there, children and
// exited threads included; the cgroup goes away after it.
func TestCgroupCPU(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root, as the whole test suite does")
	}
	cg, err := newCgroup("test")
	if err != nil {
		t.Fatalf("no cgroup v2 (the bench's CPU-per-op source on this machine kind): %v", err)
	}
	defer removeCgroup(cg)
	fd, err := os.Open(cg)
	if err != nil {
		t.Fatal(err)
	}
	// The busy loop runs in a child that exits before we read.
	cmd := exec.Command("sh", "-c", "sh -c 'i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done'")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(fd.Fd())}
	err = cmd.Run()
	fd.Close()
	if err != nil {
		t.Fatal(err)
	}
	in := &instance{pid: 1, cgroup: cg}
	us, src, err := in.cpuUsec()
	if err != nil || src != CPUCgroup || us < 1000 {
		t.Errorf("cpuUsec = %v %q %v, want ≥ 1 ms from the cgroup", us, src, err)
	}
	if err := removeCgroup(cg); err != nil {
		t.Error(err)
	}
	if _, err := os.Stat(cg); !os.IsNotExist(err) {
		t.Errorf("cgroup left: %v", err)
	}
}
