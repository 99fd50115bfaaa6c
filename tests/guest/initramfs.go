package guest

import (
	"bytes"
	"compress/gzip"
	_ "embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

//go:embed init.sh
var initScript string

// BuildGuestcheck compiles cmd/guestcheck as a static binary into dir and
// returns its path. It needs the go tool (found in PATH or GOROOT) and runs
// inside this module.
func BuildGuestcheck(dir string) (string, error) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out := filepath.Join(dir, "guestcheck")
	cmd := exec.Command(goTool, "build", "-trimpath", "-o", out,
		"github.com/govirtiofsd/govirtiofsd/tests/guest/cmd/guestcheck")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build guestcheck: %v\n%s", err, b)
	}
	return out, nil
}

// BuildInitramfs writes a gzipped newc initramfs to path: busybox, the
// modules of env in load order, guestcheck, and the init script.
func BuildInitramfs(env *Env, guestcheck, path string) error {
	var raw bytes.Buffer
	c := &cpioWriter{w: &raw}
	for _, d := range []string{"bin", "dev", "proc", "sys", "tmp", "mnt", "lib", "lib/modules"} {
		c.Dir(d, 0o755)
	}
	c.CharDev("dev/console", 0o600, 5, 1)
	c.CharDev("dev/null", 0o666, 1, 3)
	add := func(name, src string, perm uint32) error {
		b, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		c.File(name, perm, b)
		return nil
	}
	if err := add("bin/busybox", env.Busybox, 0o755); err != nil {
		return err
	}
	c.Symlink("bin/sh", "busybox")
	if err := add("bin/guestcheck", guestcheck, 0o755); err != nil {
		return err
	}
	for _, m := range env.Modules {
		if err := add("lib/modules/"+m+".ko", filepath.Join(env.ModulesDir, m+".ko"), 0o644); err != nil {
			return err
		}
	}
	script := strings.ReplaceAll(initScript, "@MODULES@", strings.Join(env.Modules, " "))
	c.File("init", 0o755, []byte(script))
	if err := c.Close(); err != nil {
		return err
	}
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.BestSpeed)
	if _, err := zw.Write(raw.Bytes()); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return os.WriteFile(path, gz.Bytes(), 0o644)
}
