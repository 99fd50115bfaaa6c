package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/posixtest"

	"github.com/govirtiofsd/govirtiofsd/tests/guest/checks"
)

// caseTimeout bounds one posixtest case; a hung case is reported as FAIL and
// the next one runs.
const caseTimeout = 90 * time.Second

// runPosixtest runs every case of posixtest.All, each in a child process of
// its own (so that a panic, a t.Fatal in a goroutine or a hang in one case
// cannot take the others down) and in a fresh directory dir/<case>, because
// the cases use fixed file names. It prints one RESULT posixtest/<case> line
// per case as soon as the case ends.
func runPosixtest(dir string) {
	names := make([]string, 0, len(posixtest.All))
	for n := range posixtest.All {
		names = append(names, n)
	}
	sort.Strings(names)
	self, err := os.Executable()
	if err != nil {
		self = os.Args[0]
	}
	for _, name := range names {
		fmt.Println(posixtestCase(self, name, filepath.Join(dir, name)))
	}
}

func posixtestCase(self, name, dir string) checks.Result {
	r := checks.Result{Check: "posixtest/" + name}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		r.Status, r.Detail = checks.Fail, fmt.Sprintf("mkdir %s: %v", dir, err)
		return r
	}
	ctx, cancel := context.WithTimeout(context.Background(), caseTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, self, "posixtest-case", name, dir)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start).Round(10 * time.Millisecond)
	text := out.String()
	switch {
	case ctx.Err() != nil:
		r.Status, r.Detail = checks.Fail, fmt.Sprintf("timed out after %v", caseTimeout)
	case err == nil && strings.Contains(text, "--- SKIP: "+name):
		r.Status, r.Detail = checks.Skip, firstMessage(text)
	case err == nil:
		r.Status, r.Detail = checks.Pass, took.String()
	default:
		r.Status, r.Detail = checks.Fail, firstMessage(text)
		if r.Detail == "" {
			r.Detail = err.Error()
		}
	}
	return r
}

// firstMessage picks the first line a test logged (t.Errorf, t.Skip, a
// panic) out of `go test -v` style output.
func firstMessage(out string) string {
	for _, l := range strings.Split(out, "\n") {
		t := strings.TrimSpace(l)
		switch {
		case t == "", strings.HasPrefix(t, "=== RUN"), strings.HasPrefix(t, "--- "),
			t == "PASS", t == "FAIL", strings.HasPrefix(t, "exit status"):
			continue
		}
		if len(t) > 300 {
			t = t[:300]
		}
		return t
	}
	return ""
}

// runPosixtestCase runs one case under the real testing package, which is
// what the posixtest functions expect, and exits with its status.
func runPosixtestCase(name, dir string) {
	fn, ok := posixtest.All[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "no posixtest case %q\n", name)
		os.Exit(2)
	}
	os.Args = []string{os.Args[0], "-test.v", "-test.timeout=" + caseTimeout.String()}
	testing.Main(func(_, _ string) (bool, error) { return true, nil },
		[]testing.InternalTest{{Name: name, F: func(t *testing.T) { fn(t, dir) }}}, nil, nil)
}
