package inode

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// fdTableSize is the size of this process's fd table (FDSize in
// /proc/self/status).
func fdTableSize(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range bytes.Lines(b) {
		if v, ok := bytes.CutPrefix(line, []byte("FDSize:")); ok {
			n, err := strconv.Atoi(string(bytes.TrimSpace(v)))
			if err != nil {
				t.Fatalf("FDSize %q: %v", v, err)
			}
			return n
		}
	}
	t.Fatal("no FDSize in /proc/self/status")
	return 0
}

// A new table grows the process's fd table for its fd bound at once, so
// filling the fd cache never grows it again (each growth of a shared fd
// table waits for an RCU grace period: see reserveFDTable).
func TestFDTableGrownUpFront(t *testing.T) {
	before := fdTableSize(t)
	bound := 2 * before // more than the table holds now
	tab, dir := newTestTable(t, bound, HandlesNever)
	grown := fdTableSize(t)
	if grown < bound+fdTableHeadroom {
		t.Fatalf("fd table holds %d fds after New with bound %d (was %d); want >= %d", grown, bound, before, bound+fdTableHeadroom)
	}
	for i := range bound {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprint(i)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	root := tab.Root()
	for i := range bound {
		lookup(t, tab, root, fmt.Sprint(i)).Release()
	}
	if got := tab.OpenFDs(); got < bound {
		t.Fatalf("fd cache holds %d fds after %d lookups; want the bound", got, bound)
	}
	if after := fdTableSize(t); after != grown {
		t.Errorf("fd table grew from %d to %d while the cache filled to its bound %d", grown, after, bound)
	}
}
