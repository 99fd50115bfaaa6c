package bench

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// With the install record missing, the bench runs scripts/guest/install.sh
// (here a fake one that writes the record) once, then finds its peers; a
// missing tool runs scripts/install-test-deps.sh once.
func TestInstallsMissingPeersAndTools(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root, as the whole test suite does (the installers run as root only)")
	}
	guest := t.TempDir()
	t.Setenv("GOVIRTIOFSD_GUEST_DIR", guest)
	mod := t.TempDir()
	if err := os.MkdirAll(filepath.Join(mod, "scripts", "guest"), 0o755); err != nil {
		t.Fatal(err)
	}
	runs := filepath.Join(mod, "runs")
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(mod, "scripts", name), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write("guest/install.sh", `echo "guest $*" >>`+runs+`
printf 'C_VIRTIOFSD=/bin/true\nRUST_VIRTIOFSD=/bin/true\nRUST_LDSO=/bin/true\nRUST_LIBDIR=/\n' >"$GOVIRTIOFSD_GUEST_DIR/env"
`)
	write("install-test-deps.sh", `echo deps >>`+runs+"\n")
	cfg := DefaultConfig()
	cfg.ModuleDir = mod
	cfg.Daemons = []string{PeerNative, PeerCVirtiofsd, PeerRust}
	log := slog.New(slog.DiscardHandler)
	if why := recordLacks(PeerRust); why == "" {
		t.Fatal("empty guest dir: record lacks nothing?")
	}
	notes := installPeers(context.Background(), &cfg, log)
	if len(notes) != 1 || !strings.Contains(notes[0], "ran scripts/guest/install.sh") {
		t.Errorf("notes %q", notes)
	}
	for _, p := range cfg.Daemons {
		if why := recordLacks(p); why != "" {
			t.Errorf("%s after install: %s", p, why)
		}
	}
	if notes := installPeers(context.Background(), &cfg, log); notes != nil {
		t.Errorf("second call with the record in place: %q", notes)
	}
	js := []*job{{name: "a", tools: []string{"sh"}}, {name: "b", tools: []string{"govirtiofsd-bench-no-such-tool"}}}
	for range 2 {
		notes = installTools(context.Background(), &cfg, log, js)
		if len(notes) != 1 || !strings.Contains(notes[0], "govirtiofsd-bench-no-such-tool not installed: ran scripts/install-test-deps.sh") {
			t.Errorf("tools notes %q", notes)
		}
	}
	if notes := installTools(context.Background(), &cfg, log, js[:1]); notes != nil {
		t.Errorf("nothing missing: %q", notes)
	}
	data, _ := os.ReadFile(runs)
	if string(data) != "guest \ndeps\n" {
		t.Errorf("installer runs %q, want each once (guest without --force: no record yet)", data)
	}
}
