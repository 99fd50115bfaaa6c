package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Peer names accepted by Config.Daemons.
const (
	PeerNative       = "native"
	PeerGovirtiofsd  = "govirtiofsd"           // default configuration (persistent node table)
	PeerGovNoState   = "govirtiofsd-statenone" // --state-dir=none
	PeerLoopback     = "loopback"              // go-fuse's example/loopback
	PeerLoopbackNoPT = "loopback-nopt"         // the same without FUSE passthrough
	referencePeer    = PeerLoopback
	govirtiofsdPkg   = "./cmd/govirtiofsd"
	loopbackPkg      = "github.com/hanwen/go-fuse/v2/example/loopback"
	loopbackNoPTPkg  = "./cmd/govirtiofsd-bench/loopback-nopt"
	helpProbeTimeout = 10 * time.Second
)

// AllPeers is the default peer list, in column order.
var AllPeers = append([]string{PeerNative, PeerGovirtiofsd, PeerGovNoState, PeerLoopback, PeerLoopbackNoPT}, VhostPeers...)

// buildPeers turns peer names into Daemons, building binaries as needed.
// A peer that cannot be built is returned with Unavailable set.
func buildPeers(ctx context.Context, cfg *Config, binDir string) ([]*Daemon, error) {
	var out []*Daemon
	var gov, loop, nopt string
	var govErr, loopErr, noptErr error
	var govHelp string
	needGov, needLoop, needNoPT := false, false, false
	for _, n := range cfg.Daemons {
		switch n {
		case PeerGovirtiofsd, PeerGovNoState, PeerGovVhost, PeerGovVhostNoState:
			needGov = true
		case PeerCVirtiofsd, PeerRust, PeerRustFH:
		case PeerLoopback:
			needLoop = true
		case PeerLoopbackNoPT:
			needNoPT = true
		case PeerNative:
		default:
			return nil, fmt.Errorf("unknown daemon %q (known: %s)", n, strings.Join(AllPeers, ", "))
		}
	}
	if needGov {
		gov, govErr = binary(ctx, cfg, cfg.GovirtiofsdBin, govirtiofsdPkg, filepath.Join(binDir, "govirtiofsd"))
		if govErr == nil {
			govHelp = helpText(ctx, gov)
		}
	}
	if needLoop {
		loop, loopErr = binary(ctx, cfg, cfg.LoopbackBin, loopbackPkg, filepath.Join(binDir, "loopback"))
	}
	if needNoPT {
		nopt, noptErr = binary(ctx, cfg, "", loopbackNoPTPkg, filepath.Join(binDir, "loopback-nopt"))
	}
	for _, n := range cfg.Daemons {
		d := &Daemon{Name: n, Transport: DevFuse}
		switch n {
		case PeerGovVhost, PeerGovVhostNoState, PeerCVirtiofsd, PeerRust, PeerRustFH:
			vhostPeer(d, gov, govErr, govHelp, cfg.GovirtiofsdArgs)
		case PeerNative:
			d.Native = true
			d.Note = "the shared directory itself, no FUSE"
		case PeerGovirtiofsd, PeerGovNoState:
			if govErr != nil {
				d.Unavailable = "build failed: " + firstLine(govErr.Error())
				break
			}
			hasState := strings.Contains(govHelp, "state-dir")
			noState := n == PeerGovNoState
			if noState && !hasState {
				d.Unavailable = "govirtiofsd has no --state-dir flag yet"
				break
			}
			d.KeepsState = hasState && !noState
			extra := cfg.GovirtiofsdArgs
			d.Argv = func(shared, mnt, state string) []string {
				a := []string{gov, "--shared-dir", shared, "--mount", mnt}
				switch {
				case noState:
					a = append(a, "--state-dir=none")
				case hasState:
					// The default location is /var/lib/govirtiofsd/…; a fresh
					// folder on the same kind of disk keeps runs independent.
					a = append(a, "--state-dir="+state)
				}
				return append(a, extra...)
			}
			// --supervise needs the persistent table (the successor
			// resolves old nodeids from it).
			if strings.Contains(govHelp, "supervise") && !noState {
				argv := d.Argv
				d.RestartArgv = func(shared, mnt, state string) []string {
					return append(argv(shared, mnt, state), "--supervise")
				}
			}
			d.Note = strings.Join(d.Argv("DIR", "MNT", "STATE"), " ")
		case PeerLoopback:
			if loopErr != nil {
				d.Unavailable = "build failed: " + firstLine(loopErr.Error())
				break
			}
			// -directmountstrict: mount(2) as root, no fusermount.
			// Its attr and entry timeouts are 1 s (libfuse defaults).
			// Not -q: it prints "Mounted!" once fs.Mount has returned.
			d.Argv = func(shared, mnt, _ string) []string {
				return []string{loop, "-directmountstrict", mnt, shared}
			}
			d.ReadyLine = "Mounted!"
			d.Note = strings.Join(d.Argv("DIR", "MNT", ""), " ") + " (READ/WRITE use FUSE passthrough when root on kernel ≥ 6.9)"
		case PeerLoopbackNoPT:
			if noptErr != nil {
				d.Unavailable = "build failed: " + firstLine(noptErr.Error())
				break
			}
			d.Argv = func(shared, mnt, _ string) []string {
				return []string{nopt, mnt, shared}
			}
			d.ReadyLine = "Mounted!"
			d.Note = strings.Join(d.Argv("DIR", "MNT", ""), " ") + " (go-fuse loopback without passthrough: READ/WRITE reach the daemon)"
		}
		out = append(out, d)
	}
	return out, nil
}

// binary returns prebuilt if set, else builds pkg from the module into dst.
func binary(ctx context.Context, cfg *Config, prebuilt, pkg, dst string) (string, error) {
	if prebuilt != "" {
		if _, err := os.Stat(prebuilt); err != nil {
			return "", err
		}
		return prebuilt, nil
	}
	if cfg.ModuleDir == "" {
		return "", fmt.Errorf("no module directory to build %s in", pkg)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-o", dst, pkg)
	cmd.Dir = cfg.ModuleDir
	if out, err := cmd.CombinedOutput(); err != nil {
		var msg []string
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if !strings.HasPrefix(l, "# ") && len(msg) < 2 {
				msg = append(msg, strings.TrimSpace(l))
			}
		}
		return "", fmt.Errorf("go build %s: %v: %s", pkg, err, strings.Join(msg, "; "))
	}
	return dst, nil
}

// helpText returns what `bin --help` prints, to probe for optional flags.
func helpText(ctx context.Context, bin string) string {
	ctx, cancel := context.WithTimeout(ctx, helpProbeTimeout)
	defer cancel()
	out, _ := exec.CommandContext(ctx, bin, "--help").CombinedOutput()
	return string(out)
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " …"
	}
	return s
}
