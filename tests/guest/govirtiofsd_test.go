package guest

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/govirtiofsd/govirtiofsd/tests/guest/checks"
)

// TestGovirtiofsd boots a guest against govirtiofsd's vhost-user mode
// (./cmd/govirtiofsd --shared-dir DIR --socket-path SOCK) and asserts
// everything the peers get wrong: distinct identities across host mounts,
// guest file handles that survive drop_caches, a 20k-file walk within a
// bounded number of fds, and a daemon that serves a second QEMU.
func TestGovirtiofsd(t *testing.T) {
	bin := buildGovirtiofsd(t)
	const maxFDs = 1000
	rep := runGuest(t, Govirtiofsd(bin, "--max-open-fds", "1000"), AllChecks...)

	expect(t, rep, "mount", checks.Pass, "")
	// xattrs are off by default (--xattr), as in the peers.
	checkPosixtest(t, rep, map[string]bool{"XAttr": true, "XAttrLarge": true})
	expect(t, rep, "identity", checks.Pass, "")
	expect(t, rep, "identity-dino", checks.Pass, "")
	expect(t, rep, "handles-file", checks.Pass, "")
	expect(t, rep, "handles-dir", checks.Pass, "")
	expect(t, rep, "walk", checks.Pass, "found 20000 of 20000 files")
	if rep.Peak.FDs > maxFDs+100 {
		t.Errorf("peak fds = %d, want ≤ %d (--max-open-fds %d plus the daemon's own)", rep.Peak.FDs, maxFDs+100, maxFDs)
	}
	expect(t, rep, "reboot", checks.Pass, "")
	expect(t, rep, "reconnect", checks.Pass, "")
	for _, when := range []string{"reboot", "reconnect"} {
		if s, ok := rep.Samples[when]; !ok || s.FDs > maxFDs+100 {
			t.Errorf("fds after %s = %v, want ≤ %d", when, s, maxFDs+100)
		}
	}
}

// TestGovirtiofsdNoSubmounts: with submounts not announced the guest sees
// one st_dev for the whole share, and govirtiofsd remaps st_ino (the
// default --inode-numbers=auto) so the colliding files stay distinct and
// d_ino still equals st_ino.
func TestGovirtiofsdNoSubmounts(t *testing.T) {
	bin := buildGovirtiofsd(t)
	rep := runGuest(t, Govirtiofsd(bin, "--no-announce-submounts"), "identity")
	expect(t, rep, "mount", checks.Pass, "")
	expect(t, rep, "identity", checks.Pass, "")
	expect(t, rep, "identity-dino", checks.Pass, "")
}

func buildGovirtiofsd(t *testing.T) string {
	t.Helper()
	testGuest(t) // fail early, naming install.sh, if the assets are missing
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin := filepath.Join(t.TempDir(), "govirtiofsd")
	if out, err := exec.Command(goTool, "build", "-o", bin, "github.com/govirtiofsd/govirtiofsd/cmd/govirtiofsd").CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/govirtiofsd: %v\n%s", err, out)
	}
	return bin
}
