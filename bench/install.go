package bench

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// Installing what the bench needs on a fresh machine (Config.Install): the
// C and Rust virtiofsd through scripts/guest/install.sh when its install
// record lacks them, fio and strace through scripts/install-test-deps.sh
// when a selected row needs them and they are not in PATH. Each script runs
// at most once per process, as root, with its output on stderr.

// peerRecordKeys are the install record entries a vhost peer runs from.
var peerRecordKeys = map[string][]string{
	PeerCVirtiofsd: {"C_VIRTIOFSD"},
	PeerRust:       {"RUST_VIRTIOFSD", "RUST_LDSO", "RUST_LIBDIR"},
	PeerRustFH:     {"RUST_VIRTIOFSD", "RUST_LDSO", "RUST_LIBDIR"},
}

// recordLacks says what the install record lacks for peer ("" = nothing,
// or peer runs from no record).
func recordLacks(peer string) string {
	keys := peerRecordKeys[peer]
	if len(keys) == 0 {
		return ""
	}
	kv, err := assets()
	if err != nil {
		return "no install record"
	}
	for _, k := range keys {
		if kv[k] == "" {
			return "no " + k + " in the install record"
		}
		if _, err := os.Stat(kv[k]); err != nil {
			return k + ": " + err.Error()
		}
	}
	return ""
}

// installed remembers each script's outcome: it runs once per process.
var installed struct {
	sync.Mutex
	done map[string]error
}

// runInstaller runs script (relative to the module) once per process,
// saying why; it returns the error of its (first) run.
func runInstaller(ctx context.Context, cfg *Config, log *slog.Logger, script, why string, args ...string) error {
	installed.Lock()
	defer installed.Unlock()
	if installed.done == nil {
		installed.done = map[string]error{}
	}
	key := filepath.Join(cfg.ModuleDir, script)
	if err, ok := installed.done[key]; ok {
		return err
	}
	err := func() error {
		if os.Geteuid() != 0 {
			return fmt.Errorf("not root: run %s as root, or the bench as root", script)
		}
		if cfg.ModuleDir == "" {
			return fmt.Errorf("%s: module directory unknown (run the bench from the repository)", script)
		}
		path := filepath.Join(cfg.ModuleDir, script)
		if _, err := os.Stat(path); err != nil {
			return err
		}
		argv := append([]string{"bash", path}, args...)
		log.Warn("installing: running "+strings.Join(argv, " ")+" (its output follows on stderr; -install=false skips this)", "why", why)
		fmt.Fprintf(os.Stderr, "govirtiofsd-bench: %s: %s\n", why, strings.Join(argv, " "))
		t0 := time.Now()
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		err := cmd.Run()
		log.Warn("installer finished", "script", script, "took", time.Since(t0).Round(time.Second), "err", err)
		return err
	}()
	installed.done[key] = err
	return err
}

// installPeers runs scripts/guest/install.sh when a selected C or Rust
// virtiofsd peer is missing from its install record (with --force when
// the record exists, since its fast path only checks the paths it lists).
// It returns notes for Meta.Warnings.
func installPeers(ctx context.Context, cfg *Config, log *slog.Logger) []string {
	var lacks []string
	for _, p := range cfg.Daemons {
		if why := recordLacks(p); why != "" {
			lacks = append(lacks, p+": "+why)
		}
	}
	if len(lacks) == 0 {
		return nil
	}
	why := "vhost peers not installed (" + strings.Join(lacks, "; ") + ")"
	var args []string
	if _, err := assets(); err == nil {
		args = append(args, "--force")
	}
	const script = "scripts/guest/install.sh"
	if err := runInstaller(ctx, cfg, log, script, why, args...); err != nil {
		return []string{fmt.Sprintf("%s: %s failed: %v", why, script, err)}
	}
	return []string{fmt.Sprintf("%s: ran %s", why, strings.TrimSpace(script+" "+strings.Join(args, " ")))}
}

// installTools runs scripts/install-test-deps.sh when a selected job needs
// a command that is not in PATH (fio, strace). Nothing runs when all are
// there.
func installTools(ctx context.Context, cfg *Config, log *slog.Logger, js []*job) []string {
	var missing []string
	for _, j := range js {
		for _, t := range j.tools {
			if _, err := exec.LookPath(t); err != nil && !slices.Contains(missing, t) {
				missing = append(missing, t)
			}
		}
	}
	if len(missing) == 0 {
		return nil
	}
	why := strings.Join(missing, ", ") + " not installed"
	const script = "scripts/install-test-deps.sh"
	if err := runInstaller(ctx, cfg, log, script, why); err != nil {
		return []string{fmt.Sprintf("%s: %s failed: %v", why, script, err)}
	}
	return []string{fmt.Sprintf("%s: ran %s", why, script)}
}
