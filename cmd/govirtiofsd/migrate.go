package main

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/govirtiofsd/govirtiofsd/internal/engine"
	"github.com/govirtiofsd/govirtiofsd/internal/inode"
	"github.com/govirtiofsd/govirtiofsd/internal/nodestore"
	"github.com/govirtiofsd/govirtiofsd/internal/openfiles"
)

// migration is the vhost-user device state (QEMU ≥ 8.2 DEVICE_STATE): what
// a destination daemon needs to go on serving a migrated guest as if
// nothing happened. It carries
//   - the INIT request of the guest's FUSE session (the guest does not
//     send INIT again), replayed into the destination's engine;
//   - the guest's open file handles, reopened on first use;
//   - the node table (nodestore.Export): generation, every nodeid and its
//     record, so every nodeid the guest holds resolves at the destination.
//
// The whole blob is sealed with HMAC-SHA256 (16 bytes) under a key derived
// from the node table key: both daemons must share it (--handle-key-file).
// A blob sealed with another key, or tampered with on the way, is refused
// before anything is applied.
type migration struct {
	c     *config
	table *inode.Table
	files *openfiles.Table
	log   *slog.Logger

	mu  sync.Mutex
	eng *engine.Engine // the current connection's engine
}

const migrationMagic = "GVFSMIG1"

func (m *migration) setEngine(e *engine.Engine) {
	m.mu.Lock()
	m.eng = e
	m.mu.Unlock()
}

func (m *migration) engine() *engine.Engine {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.eng
}

// key returns the node table's master key (the migration key is derived
// from it).
func (m *migration) key() ([]byte, error) {
	if m.c.handleKeyFile != "" {
		return os.ReadFile(m.c.handleKeyFile)
	}
	dir, err := m.c.resolvedStateDir()
	if err != nil {
		return nil, err
	}
	if dir == "" {
		return nil, errors.New("migration needs a node table key: give both daemons the same --handle-key-file")
	}
	return os.ReadFile(filepath.Join(nodesDir(dir), "key"))
}

func migrationMAC(key []byte) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte("govirtiofsd/migration/v1"))
	return h.Sum(nil)
}

// SaveState is called on the source when QEMU stops the device.
func (m *migration) SaveState() ([]byte, error) {
	key, err := m.key()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	var b bytes.Buffer
	b.WriteString(migrationMagic)
	var init []byte
	if e := m.engine(); e != nil {
		init = e.InitRequest()
	}
	binary.Write(&b, binary.LittleEndian, uint32(len(init)))
	b.Write(init)
	entries := m.files.Entries()
	binary.Write(&b, binary.LittleEndian, uint32(len(entries)))
	for _, e := range entries {
		binary.Write(&b, binary.LittleEndian, [2]uint64{e.FH, e.NodeID})
		binary.Write(&b, binary.LittleEndian, [2]uint32{e.Flags, uint32(e.Kind)})
	}
	if err := nodestore.Export(m.table.Store(), &b, key); err != nil {
		return nil, fmt.Errorf("export node table: %w", err)
	}
	mac := hmac.New(sha256.New, migrationMAC(key))
	mac.Write(b.Bytes())
	b.Write(mac.Sum(nil)[:16])
	m.log.Info("device state saved for migration", "bytes", b.Len(), "open-files", len(entries), "took", time.Since(start))
	return b.Bytes(), nil
}

// LoadState is called on the destination before the guest runs again.
func (m *migration) LoadState(state []byte) error {
	key, err := m.key()
	if err != nil {
		return err
	}
	if len(state) < len(migrationMagic)+8+16 || string(state[:len(migrationMagic)]) != migrationMagic {
		return errors.New("device state: not a govirtiofsd migration stream")
	}
	body, sum := state[:len(state)-16], state[len(state)-16:]
	mac := hmac.New(sha256.New, migrationMAC(key))
	mac.Write(body)
	if !hmac.Equal(sum, mac.Sum(nil)[:16]) {
		return errors.New("device state fails its MAC: sealed with another key (give both daemons the same --handle-key-file) or damaged")
	}
	r := bytes.NewReader(body[len(migrationMagic):])
	var n uint32
	if err := binary.Read(r, binary.LittleEndian, &n); err != nil || int(n) > r.Len() {
		return errors.New("device state: bad INIT length")
	}
	init := make([]byte, n)
	r.Read(init)
	if err := binary.Read(r, binary.LittleEndian, &n); err != nil || int(n) > r.Len()/24 {
		return errors.New("device state: bad open file count")
	}
	entries := make([]openfiles.Entry, n)
	for i := range entries {
		var ids [2]uint64
		var fk [2]uint32
		binary.Read(r, binary.LittleEndian, &ids)
		if err := binary.Read(r, binary.LittleEndian, &fk); err != nil {
			return errors.New("device state: truncated open files")
		}
		entries[i] = openfiles.Entry{FH: ids[0], NodeID: ids[1], Flags: fk[0], Kind: openfiles.Kind(fk[1])}
	}
	store, aside, err := m.importTable(r, key)
	if err != nil {
		return err
	}
	if err := m.table.ReplaceStore(store); err != nil {
		store.Close()
		return fmt.Errorf("adopt migrated node table: %w", err)
	}
	if aside != "" {
		os.RemoveAll(aside)
	}
	if err := m.files.Adopt(entries); err != nil {
		return err
	}
	if e := m.engine(); e != nil && len(init) > 0 {
		if st := e.ReplayInit(init); !st.Ok() {
			return fmt.Errorf("replay the guest's INIT: %v", st)
		}
	}
	m.log.Info("device state loaded: serving the migrated guest", "open-files", len(entries), "generation", m.table.Generation())
	return nil
}

// importTable reads the node table into a new store that takes the place
// of the current one: in memory with --state-dir=none, else in the state
// dir's nodes folder. The old folder is renamed to aside, for the caller to
// remove once the old store is closed.
func (m *migration) importTable(r *bytes.Reader, key []byte) (store inode.Store, aside string, err error) {
	opts := nodestore.Options{Logger: m.log, Key: key, WriteBehindRecords: true}
	dir, err := m.c.resolvedStateDir()
	if err != nil {
		return nil, "", err
	}
	if dir == "" {
		store, err = nodestore.Import(r, key, "", opts)
		return store, "", err
	}
	nodes := nodesDir(dir)
	incoming := nodes + ".migrated"
	os.RemoveAll(incoming)
	if store, err = nodestore.Import(r, key, incoming, opts); err != nil {
		return nil, "", fmt.Errorf("import node table: %w", err)
	}
	store.Close()
	// The key goes with the table, for restarts without --handle-key-file.
	if m.c.handleKeyFile == "" {
		if err := os.WriteFile(filepath.Join(incoming, "key"), key, 0o600); err != nil {
			return nil, "", err
		}
	}
	aside = fmt.Sprintf("%s.replaced-%d", nodes, time.Now().UnixNano())
	if err := os.Rename(nodes, aside); err != nil {
		return nil, "", err
	}
	if err := os.Rename(incoming, nodes); err != nil {
		os.Rename(aside, nodes)
		return nil, "", err
	}
	if m.c.handleKeyFile == "" {
		opts.Key = nil // read it from the key file, as a restart will
	}
	if store, err = nodestore.Open(nodes, opts); err != nil {
		return nil, "", err
	}
	return store, aside, nil
}
