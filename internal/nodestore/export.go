package nodestore

import (
	"bufio"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"slices"
)

// Export and Import move a node table between daemons, for migration
// (vhost-user DEVICE_STATE) to a host that does not share the state
// directory. The stream is sealed as a whole with key (both daemons must
// hold it, e.g. from --handle-key-file); Import applies nothing until the
// MAC at the end verified. Generation and the nodeid counter travel with
// the records, so the guest's (nodeid, generation) pairs stay valid and
// the destination never hands out a nodeid the source did.
//
// Stream (little endian):
//
//	"GVFSXPT1", generation u64, next nodeid u64
//	mount count u32, per mount: index u32, dev u64, fsid 2×i32, path len u16, path
//	per record: 1, id u64, mount u32, ino u64, type u32, parent u64,
//	            handleType i32, name len u8, handle len u8, name, handle
//	0, record count u64
//	HMAC-SHA256(HMAC(key, "govirtiofsd/nodestore/v1/export"), all the above)[:16]
//
// Records appear in increasing nodeid order. Records that fail their MAC
// in the source store are left out (and logged by it).
const exportMagic = "GVFSXPT1"

// ErrBadStream is returned by Import for a stream that is malformed or
// fails its MAC (wrong key, truncated, tampered).
var ErrBadStream = errors.New("nodestore: bad export stream")

func exportKey(key []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("govirtiofsd/nodestore/v1/export"))
	return m.Sum(nil)
}

type exportWriter struct {
	w   *bufio.Writer
	mac hash.Hash
	n   uint64
	b   []byte
}

func (e *exportWriter) write(b []byte) error {
	e.mac.Write(b)
	_, err := e.w.Write(b)
	return err
}

func (e *exportWriter) record(r *Record) error {
	le := binary.LittleEndian
	b := append(e.b[:0], 1)
	b = le.AppendUint64(b, uint64(r.ID))
	b = le.AppendUint32(b, r.Mount)
	b = le.AppendUint64(b, r.Ino)
	b = le.AppendUint32(b, r.Type)
	b = le.AppendUint64(b, uint64(r.Parent))
	b = le.AppendUint32(b, uint32(r.HandleType))
	b = append(b, byte(len(r.Name)), byte(len(r.Handle)))
	b = append(b, r.Name...)
	b = append(b, r.Handle...)
	e.b = b
	e.n++
	return e.write(b)
}

// Export writes a sealed snapshot of s to w. Writers to s wait until it
// is done.
func Export(s Store, w io.Writer, key []byte) error {
	if len(key) < 16 {
		return fmt.Errorf("nodestore: export key is %d bytes, need at least 16", len(key))
	}
	e := &exportWriter{w: bufio.NewWriterSize(w, 64<<10), mac: hmac.New(sha256.New, exportKey(key))}
	var err error
	switch s := s.(type) {
	case *diskStore:
		err = s.export(e)
	case *memStore:
		err = s.export(e)
	default:
		err = fmt.Errorf("nodestore: cannot export a %T", s)
	}
	if err == nil {
		b := binary.LittleEndian.AppendUint64([]byte{0}, e.n)
		err = e.write(b)
	}
	if err == nil {
		_, err = e.w.Write(e.mac.Sum(nil)[:macLen])
	}
	if err == nil {
		err = e.w.Flush()
	}
	if err != nil {
		return fmt.Errorf("nodestore: export: %w", err)
	}
	return nil
}

func (e *exportWriter) begin(gen uint64, next NodeID, mounts []MountRecord) error {
	le := binary.LittleEndian
	b := []byte(exportMagic)
	b = le.AppendUint64(b, gen)
	b = le.AppendUint64(b, uint64(next))
	b = le.AppendUint32(b, uint32(len(mounts)))
	for _, m := range mounts {
		b = le.AppendUint32(b, m.Index)
		b = le.AppendUint64(b, m.Dev)
		b = le.AppendUint32(b, uint32(m.FSID[0]))
		b = le.AppendUint32(b, uint32(m.FSID[1]))
		b = le.AppendUint16(b, uint16(len(m.Path)))
		b = append(b, m.Path...)
	}
	return e.write(b)
}

func (s *memStore) export(e *exportWriter) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return ErrClosed
	}
	if err := e.begin(s.gen, s.next, s.mounts); err != nil {
		return err
	}
	ids := make([]NodeID, 0, len(s.recs))
	for id := range s.recs {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		r := s.recs[id]
		if err := e.record(&r); err != nil {
			return err
		}
	}
	return nil
}

func (s *diskStore) export(e *exportWriter) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return ErrClosed
	}
	if err := e.begin(s.gen, s.next, s.mounts); err != nil {
		return err
	}
	_, err := s.scanLocked(func(r *Record) error { return e.record(r) })
	return err
}

// scanLocked calls fn for every record that verifies, in nodeid order.
// Records that fail their MAC are logged, counted and skipped.
func (s *diskStore) scanLocked(fn func(*Record) error) (bad int, err error) {
	if s.wb != nil {
		// Reads the file in bulk: the records written behind go there
		// first.
		if err := s.wb.flush(); err != nil {
			return 0, err
		}
	}
	end := min(s.allocEnd, int64(s.next)*slotSize)
	err = s.scanSlotsLocked(0, end, 1024, func(id NodeID, off int64, r *Record, st slotStatus) error {
		if st == slotBad {
			s.reportTampered(id, off)
			bad++
			return nil
		}
		return fn(r)
	})
	return bad, err
}

// Verify reads every record of s and checks its MAC, for an operator's
// consistency check. It returns how many records verified and how many
// failed (each of those is also logged, as by Get).
func Verify(s Store) (good, bad int, err error) {
	switch s := s.(type) {
	case *diskStore:
		s.mu.RLock()
		defer s.mu.RUnlock()
		if s.closed {
			return 0, 0, ErrClosed
		}
		bad, err = s.scanLocked(func(*Record) error { good++; return nil })
		if err != nil {
			err = fmt.Errorf("nodestore: verify: %w", err)
		}
		return good, bad, err
	case *memStore:
		s.mu.RLock()
		defer s.mu.RUnlock()
		if s.closed {
			return 0, 0, ErrClosed
		}
		return len(s.recs), 0, nil
	}
	return 0, 0, fmt.Errorf("nodestore: cannot verify a %T", s)
}

// streamReader parses an export stream, MACing what it reads.
type streamReader struct {
	r   *bufio.Reader
	mac hash.Hash
	err error
}

func (sr *streamReader) read(n int) []byte {
	if sr.err != nil {
		return nil
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(sr.r, b); err != nil {
		sr.err = fmt.Errorf("%w: %v", ErrBadStream, err)
		return nil
	}
	sr.mac.Write(b)
	return b
}

func (sr *streamReader) u8() uint8 {
	if b := sr.read(1); b != nil {
		return b[0]
	}
	return 0
}

func (sr *streamReader) u16() uint16 {
	if b := sr.read(2); b != nil {
		return binary.LittleEndian.Uint16(b)
	}
	return 0
}

func (sr *streamReader) u32() uint32 {
	if b := sr.read(4); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}

func (sr *streamReader) u64() uint64 {
	if b := sr.read(8); b != nil {
		return binary.LittleEndian.Uint64(b)
	}
	return 0
}

// importSink receives a stream's contents; nothing is committed before
// the stream's MAC verified.
type importSink interface {
	begin(gen uint64, next NodeID, mounts []MountRecord) error
	record(r Record) error
}

func readStream(r io.Reader, key []byte, sink func(gen uint64) (importSink, error)) error {
	sr := &streamReader{r: bufio.NewReaderSize(r, 64<<10), mac: hmac.New(sha256.New, exportKey(key))}
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrBadStream, fmt.Sprintf(format, a...))
	}
	if string(sr.read(8)) != exportMagic {
		if sr.err != nil {
			return sr.err
		}
		return bad("not a node table stream")
	}
	gen, next := sr.u64(), NodeID(sr.u64())
	nm := sr.u32()
	if sr.err != nil {
		return sr.err
	}
	if gen == 0 || next < RootID || nm > 1<<16 {
		return bad("generation %d, next nodeid %d, %d mounts", gen, next, nm)
	}
	var mounts []MountRecord
	for i := uint32(0); i < nm; i++ {
		m := MountRecord{Index: sr.u32(), Dev: sr.u64()}
		m.FSID[0], m.FSID[1] = int32(sr.u32()), int32(sr.u32())
		l := int(sr.u16())
		if l > maxMountPath {
			return bad("mount path of %d bytes", l)
		}
		m.Path = string(sr.read(l))
		if sr.err != nil {
			return sr.err
		}
		if m.Index != i {
			return bad("mount %d has index %d", i, m.Index)
		}
		mounts = append(mounts, m)
	}
	dst, err := sink(gen)
	if err != nil {
		return err
	}
	if err := dst.begin(gen, next, mounts); err != nil {
		return err
	}
	var n uint64
	last := NodeID(0)
	for {
		tag := sr.u8()
		if sr.err != nil {
			return sr.err
		}
		if tag == 0 {
			break
		}
		if tag != 1 {
			return bad("record tag %d", tag)
		}
		r := Record{ID: NodeID(sr.u64()), Mount: sr.u32(), Ino: sr.u64(), Type: sr.u32(),
			Parent: NodeID(sr.u64()), HandleType: int32(sr.u32())}
		nl, hl := int(sr.u8()), int(sr.u8())
		if hl > MaxHandleLen {
			return bad("handle of %d bytes", hl)
		}
		r.Name = string(sr.read(nl))
		if hl > 0 {
			r.Handle = sr.read(hl)
		}
		if sr.err != nil {
			return sr.err
		}
		if r.ID <= last || r.ID >= next {
			return bad("nodeid %d out of order or ≥ next %d", r.ID, next)
		}
		if err := validate(&r); err != nil {
			return bad("%v", err)
		}
		last = r.ID
		if err := dst.record(r); err != nil {
			return err
		}
		n++
	}
	if cnt := sr.u64(); sr.err != nil || cnt != n {
		if sr.err != nil {
			return sr.err
		}
		return bad("%d records, trailer says %d", n, cnt)
	}
	want := sr.mac.Sum(nil)[:macLen]
	got := make([]byte, macLen)
	if _, err := io.ReadFull(sr.r, got); err != nil {
		return bad("truncated MAC: %v", err)
	}
	if !hmac.Equal(got, want) {
		return bad("MAC mismatch (wrong key, or tampered)")
	}
	return nil
}

// memSink builds a memStore.
type memSink struct{ s *memStore }

func (m *memSink) begin(gen uint64, next NodeID, mounts []MountRecord) error {
	m.s.gen, m.s.next, m.s.mounts = gen, next, mounts
	return nil
}

func (m *memSink) record(r Record) error {
	m.s.recs[r.ID] = r
	m.s.byIno[inoKey{r.Mount, r.Ino}] = r.ID
	return nil
}

// diskSink fills a fresh diskStore.
type diskSink struct{ s *diskStore }

func (d *diskSink) begin(gen uint64, next NodeID, mounts []MountRecord) error {
	s := d.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(mounts) > 0 {
		if err := writeFileAtomic(s.dir, mountsFile, encodeMounts(mounts, s.keys.mounts, s.gen)); err != nil {
			return err
		}
	}
	s.mounts = mounts
	s.next = next
	s.hdr.reserved = next + reserveBatch
	return s.writeHeaderLocked(true)
}

func (d *diskSink) record(r Record) error {
	s := d.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.maintainIndexLocked(s.migStep); err != nil {
		return err
	}
	if err := s.allocLocked(int64(r.ID+1) * slotSize); err != nil {
		return err
	}
	if err := s.writeRecordLocked(&r, false, true); err != nil {
		return err
	}
	return s.indexPutLocked(inoKey{r.Mount, r.Ino}, r.ID)
}

// Import reads a stream written by Export, sealed with key, into a new
// store: in memory if dir is "", else a persistent store created in dir
// (which must not exist or be empty), opened with opts. The new store has
// the stream's generation, nodeids and mount table; its reverse index
// maps each (mount, ino) to the highest nodeid that has it. A stream that
// fails its MAC or is malformed leaves nothing behind.
func Import(r io.Reader, key []byte, dir string, opts Options) (Store, error) {
	if len(key) < 16 {
		return nil, fmt.Errorf("nodestore: import key is %d bytes, need at least 16", len(key))
	}
	if dir == "" {
		s := OpenMemory().(*memStore)
		err := readStream(r, key, func(uint64) (importSink, error) { return &memSink{s}, nil })
		if err != nil {
			return nil, fmt.Errorf("nodestore: import: %w", err)
		}
		return s, nil
	}
	if st, err := os.Lstat(dir); err == nil && !st.IsDir() {
		return nil, fmt.Errorf("nodestore: import: %s is not a directory", dir)
	}
	if ents, err := os.ReadDir(dir); err == nil && len(ents) > 0 {
		return nil, fmt.Errorf("nodestore: import: %s is not empty", dir)
	}
	// Build in a sibling directory and rename it into place when the
	// stream verified: a failed import leaves no store behind.
	tmp := filepath.Clean(dir) + ".import"
	os.RemoveAll(tmp)
	var ds *diskStore
	err := readStream(r, key, func(gen uint64) (importSink, error) {
		var err error
		ds, err = openGen(tmp, opts, gen)
		if err != nil {
			return nil, err
		}
		return &diskSink{ds}, nil
	})
	if ds != nil {
		if cerr := ds.Close(); err == nil {
			err = cerr
		}
	}
	if err == nil {
		os.Remove(dir) // empty, or missing
		err = os.Rename(tmp, dir)
	}
	if err != nil {
		os.RemoveAll(tmp)
		return nil, fmt.Errorf("nodestore: import: %w", err)
	}
	syncDir(filepath.Dir(filepath.Clean(dir)))
	return Open(dir, opts)
}
