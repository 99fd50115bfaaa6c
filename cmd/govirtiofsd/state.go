package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/govirtiofsd/govirtiofsd/internal/inode"
	"github.com/govirtiofsd/govirtiofsd/internal/nodestore"
	"github.com/govirtiofsd/govirtiofsd/internal/openfiles"
)

// defaultStateDir is the per-export folder for the node table: under
// /var/lib/govirtiofsd as root, under $XDG_STATE_HOME (~/.local/state)
// otherwise. The folder name carries the shared directory's path, readable
// for operators, plus a hash that keeps distinct paths apart.
func defaultStateDir(sharedDir string) (string, error) {
	abs, err := filepath.Abs(sharedDir)
	if err != nil {
		return "", err
	}
	base := "/var/lib/govirtiofsd"
	if os.Geteuid() != 0 {
		if x := os.Getenv("XDG_STATE_HOME"); x != "" {
			base = filepath.Join(x, "govirtiofsd")
		} else {
			home, err := os.UserHomeDir()
			if err != nil {
				return "", fmt.Errorf("no state directory: set --state-dir or $XDG_STATE_HOME: %w", err)
			}
			base = filepath.Join(home, ".local", "state", "govirtiofsd")
		}
	}
	sum := sha256.Sum256([]byte(abs))
	label := strings.Trim(strings.ReplaceAll(abs, "/", "-"), "-")
	if len(label) > 64 {
		label = label[len(label)-64:]
	}
	return filepath.Join(base, label+"-"+hex.EncodeToString(sum[:6])), nil
}

// stateDir resolves --state-dir: "" for none (memory only).
func (c *config) resolvedStateDir() (string, error) {
	switch c.stateDir {
	case "none":
		return "", nil
	case "":
		return defaultStateDir(c.sharedDir)
	}
	return c.stateDir, nil
}

func openStore(c *config, log *slog.Logger) (inode.Store, error) {
	dir, err := c.resolvedStateDir()
	if err != nil {
		return nil, err
	}
	if dir == "" {
		return nodestore.OpenMemory(), nil
	}
	// New records are written behind and flushed once per FUSE request,
	// before its reply leaves (engine barrier, see storeBarrier): one
	// pwrite per run of new nodes in a READDIRPLUS reply instead of one
	// per node.
	opts := nodestore.Options{Logger: log, WriteBehindRecords: true}
	if c.handleKeyFile != "" {
		key, err := os.ReadFile(c.handleKeyFile)
		if err != nil {
			return nil, fmt.Errorf("--handle-key-file: %w", err)
		}
		opts.Key = key
	}
	store, err := nodestore.Open(nodesDir(dir), opts)
	if err != nil {
		return nil, fmt.Errorf("open node table in %s: %w", dir, err)
	}
	log.Info("node table", "state-dir", dir)
	return store, nil
}

// openTable opens the node table. A persistent table that belongs to another
// directory (the shared directory was deleted and made anew at the same
// path) is set aside with a warning and a fresh one started: its nodeids
// name files that no longer exist.
func openTable(c *config, log *slog.Logger) (*inode.Table, error) {
	store, err := openStore(c, log)
	if err != nil {
		return nil, err
	}
	opts := inode.Options{MaxOpenFDs: c.maxOpenFDs, Handles: c.handles, Logger: log}
	table, err := inode.New(c.sharedDir, store, opts)
	if err == nil {
		return table, nil
	}
	store.Close()
	dir, _ := c.resolvedStateDir()
	if !errors.Is(err, inode.ErrForeignState) || dir == "" {
		return nil, err
	}
	aside := fmt.Sprintf("%s.foreign-%s", dir, time.Now().UTC().Format("20060102T150405"))
	log.Warn("node table belongs to another directory; starting a new one", "state-dir", dir, "moved-to", aside, "reason", err)
	if err := os.Rename(dir, aside); err != nil {
		return nil, fmt.Errorf("set aside foreign node table: %w", err)
	}
	if store, err = openStore(c, log); err != nil {
		return nil, err
	}
	table, err = inode.New(c.sharedDir, store, opts)
	if err != nil {
		store.Close()
		return nil, err
	}
	return table, nil
}

// openFileTable opens the table of file handles the guest holds. A fresh
// connection starts it empty; a resumed one keeps what the predecessor
// recorded.
func openFileTable(c *config, resume bool, log *slog.Logger) (*openfiles.Table, error) {
	dir, err := c.resolvedStateDir()
	if err != nil || dir == "" {
		return openfiles.OpenMemory(), err
	}
	key, err := os.ReadFile(c.handleKeyFile)
	if c.handleKeyFile == "" {
		key, err = os.ReadFile(filepath.Join(nodesDir(dir), "key"))
	}
	if err != nil {
		return nil, fmt.Errorf("read the node table key: %w", err)
	}
	path := filepath.Join(dir, "open-files")
	if !resume {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}
	return openfiles.Open(path, key, log)
}

// nodesDir is where the node table lives inside a state directory. Beside
// it: open-files (the guest's file handles), fuse-init (the INIT of the
// current /dev/fuse connection) and serving.pid.
func nodesDir(stateDir string) string { return filepath.Join(stateDir, "nodes") }

// storeBarrier returns the engine barrier that makes the node records a
// request wrote behind durable before its reply leaves. It asks the table
// for its store each time: a migration replaces the store.
func storeBarrier(table *inode.Table) func() error {
	return func() error {
		if f, ok := table.Store().(nodestore.Flusher); ok {
			return f.Flush()
		}
		return nil
	}
}
