package checks

import (
	"os"
	"strings"
)

// WriteToken writes token to path and fsyncs it, so that it survives the
// guest's forced reboot (reboot -f does not sync). Result: check.
func WriteToken(check, path, token string) Result {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return fail(check, "create: %v", err)
	}
	if _, err := f.WriteString(token + "\n"); err != nil {
		f.Close()
		return fail(check, "write: %v", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fail(check, "fsync: %v", err)
	}
	if err := f.Close(); err != nil {
		return fail(check, "close: %v", err)
	}
	return pass(check, "wrote %s", path)
}

// CheckToken reads path back and compares it with token. Result: check.
func CheckToken(check, path, token string) Result {
	b, err := os.ReadFile(path)
	if err != nil {
		return fail(check, "read %s: %v", path, err)
	}
	if got := strings.TrimSpace(string(b)); got != token {
		return fail(check, "%s holds %q, want %q", path, got, token)
	}
	return pass(check, "read back the token written before")
}
