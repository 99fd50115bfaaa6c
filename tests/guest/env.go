package guest

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// DefaultAssetDir is where scripts/guest/install.sh puts everything; the
// environment variable GOVIRTIOFSD_GUEST_DIR overrides it (for both).
const DefaultAssetDir = "/var/cache/govirtiofsd-test"

// Env describes the installed assets.
type Env struct {
	Dir           string
	Vmlinux       string
	ModulesDir    string
	Modules       []string // load order; names without .ko
	Busybox       string
	QEMU          string
	CVirtiofsd    string
	RustVirtiofsd string
	RustLdso      string
	RustLibdir    string
	KernelVersion string
	RustVersion   string
}

// AssetDir returns the asset directory in use.
func AssetDir() string {
	if d := os.Getenv("GOVIRTIOFSD_GUEST_DIR"); d != "" {
		return d
	}
	return DefaultAssetDir
}

// LoadEnv reads AssetDir()/env and checks that every path in it exists. Its
// errors tell the operator to run scripts/guest/install.sh.
func LoadEnv() (*Env, error) {
	dir := AssetDir()
	p := filepath.Join(dir, "env")
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("guest test assets missing (%v): run scripts/guest/install.sh as root first", err)
	}
	defer f.Close()
	kv := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		k, v, ok := strings.Cut(l, "=")
		if ok {
			kv[k] = v
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	e := &Env{
		Dir:           dir,
		Vmlinux:       kv["VMLINUX"],
		ModulesDir:    kv["MODULES_DIR"],
		Modules:       strings.Fields(kv["MODULES"]),
		Busybox:       kv["BUSYBOX"],
		QEMU:          kv["QEMU"],
		CVirtiofsd:    kv["C_VIRTIOFSD"],
		RustVirtiofsd: kv["RUST_VIRTIOFSD"],
		RustLdso:      kv["RUST_LDSO"],
		RustLibdir:    kv["RUST_LIBDIR"],
		KernelVersion: kv["KERNEL_VERSION"],
		RustVersion:   kv["RUST_VERSION"],
	}
	for name, path := range map[string]string{
		"VMLINUX": e.Vmlinux, "MODULES_DIR": e.ModulesDir, "BUSYBOX": e.Busybox, "QEMU": e.QEMU,
		"C_VIRTIOFSD": e.CVirtiofsd, "RUST_VIRTIOFSD": e.RustVirtiofsd, "RUST_LDSO": e.RustLdso,
		"RUST_LIBDIR": e.RustLibdir,
	} {
		if path == "" {
			return nil, fmt.Errorf("%s: no %s: run scripts/guest/install.sh as root (again)", p, name)
		}
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("%s: %s: %v: run scripts/guest/install.sh as root (again)", p, name, err)
		}
	}
	for _, m := range e.Modules {
		if _, err := os.Stat(filepath.Join(e.ModulesDir, m+".ko")); err != nil {
			return nil, fmt.Errorf("module %s: %v: run scripts/guest/install.sh as root (again)", m, err)
		}
	}
	return e, nil
}
