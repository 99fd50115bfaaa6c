// Package checks holds the file-system checks that tests/guest runs inside a
// QEMU guest against a virtio-fs mount. Each check takes a directory the host
// prepared (see guest.Fixtures) and returns one or more Results; the guest
// program cmd/guestcheck prints them on the serial console as
//
//	RESULT <check> PASS|FAIL|SKIP <detail>
//
// which the host side parses back with ParseResult. The checks use only
// syscalls, so they also run on the host against a local directory (that is
// how their own unit tests prove they can both pass and fail).
package checks

import (
	"fmt"
	"strings"
)

// Status is the outcome of one check.
type Status string

// The outcomes. SKIP is only reported where the check itself decided it
// could not run (for example a posixtest case that calls t.Skip).
const (
	Pass Status = "PASS"
	Fail Status = "FAIL"
	Skip Status = "SKIP"
)

// Result is one line of the guest's report.
type Result struct {
	Check  string
	Status Status
	Detail string
}

// Passed reports whether r is a PASS.
func (r Result) Passed() bool { return r.Status == Pass }

// String formats r as the console line the host parses.
func (r Result) String() string {
	d := strings.Join(strings.Fields(r.Detail), " ")
	if d == "" {
		return fmt.Sprintf("RESULT %s %s", r.Check, r.Status)
	}
	return fmt.Sprintf("RESULT %s %s %s", r.Check, r.Status, d)
}

// ParseResult parses a console line written by Result.String. Leading
// garbage before "RESULT " (kernel messages interleaved on the serial line)
// is tolerated.
func ParseResult(line string) (Result, bool) {
	line = strings.TrimRight(line, "\r\n")
	i := strings.Index(line, "RESULT ")
	if i < 0 {
		return Result{}, false
	}
	f := strings.SplitN(line[i+len("RESULT "):], " ", 3)
	if len(f) < 2 {
		return Result{}, false
	}
	st := Status(f[1])
	if st != Pass && st != Fail && st != Skip {
		return Result{}, false
	}
	r := Result{Check: f[0], Status: st}
	if len(f) == 3 {
		r.Detail = f[2]
	}
	return r, true
}

func pass(check, format string, args ...any) Result {
	return Result{Check: check, Status: Pass, Detail: fmt.Sprintf(format, args...)}
}

func fail(check, format string, args ...any) Result {
	return Result{Check: check, Status: Fail, Detail: fmt.Sprintf(format, args...)}
}
