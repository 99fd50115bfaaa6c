package bench

import (
	"strings"
	"testing"
)

// The 2-queue variants keep only their rows, named -q2-d16, with ratios
// taken from the 1-queue row of the same name.
func TestQueueVariantRows(t *testing.T) {
	cfg := DefaultConfig()
	names := map[string]Row{}
	for _, j := range jobs(&cfg) {
		for _, r := range j.rows {
			if _, dup := names[r.Name]; dup {
				t.Errorf("row %s twice", r.Name)
			}
			names[r.Name] = r
		}
	}
	for _, n := range []string{"vhost-getattr-q2-d16", "vhost-lookup-cold-q2-d16", "vhost-read-4k-q2-d16", "vhost-create-unlink-q2-d16",
		"vhost-write-seq-d1", "vhost-write-seq-d4", "vhost-write-seq-d16", "vhost-getattr-cold-d1", "vhost-getattr-cold-d16"} {
		r, ok := names[n]
		if !ok {
			t.Errorf("no row %s", n)
			continue
		}
		if strings.Contains(n, "-q2-") {
			if _, ok := names[r.RefRow]; !ok || r.RefRow != strings.Replace(n, "-q2", "", 1) {
				t.Errorf("row %s: RefRow %q", n, r.RefRow)
			}
		}
	}
	for _, n := range []string{"vhost-mkdir-rmdir-q2-d16", "vhost-lookup-warm-q2-d16", "vhost-read-seq-q2-d16"} {
		if _, ok := names[n]; ok {
			t.Errorf("row %s should not exist", n)
		}
	}
	// Ratios of a variant come from the reference cells of another row.
	ref := RowResult{Row: Row{Name: "a", HigherBetter: true, Ref: []string{"r"}},
		Cells: []Cell{{Peer: "r", Samples: []float64{10}, Median: 10}, {Peer: "g", Samples: []float64{5}, Median: 5}}}
	v := RowResult{Row: Row{Name: "a-q2", HigherBetter: true, Ref: []string{"r"}, RefRow: "a"},
		Cells: []Cell{{Peer: "r", NA: "one queue"}, {Peer: "g", Samples: []float64{20}, Median: 20}}}
	setRatiosFrom(&v, &ref)
	if v.Cells[1].Ratio != 2 || v.Cells[0].Ratio != 0 {
		t.Errorf("ratios %+v", v.Cells)
	}
}
