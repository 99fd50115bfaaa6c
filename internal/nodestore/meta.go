package nodestore

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Files in the state directory.
const (
	keyFile     = "key"         // 32-byte master key, mode 0600 (unless Options.Key)
	metaFile    = "meta"        // two copies of the header; flock'ed while open
	recordsFile = "records"     // fixed-size record slots, slot i = nodeid i
	extFile     = "records.ext" // overflow slots for long names and handles
	mountsFile  = "mounts"      // the mount table, sealed as a whole
	indexPrefix = "index."      // index.<seq>: the reverse index
)

const (
	keyLen    = 32 // bytes of a key we create
	minKeyLen = 16
	maxKeyLen = 1024
)

// keys are derived from the master key, one per purpose, so that no MAC
// over one kind of data can be replayed as another.
type keys struct {
	record, header, mounts, index []byte
}

func deriveKeys(master []byte) keys {
	d := func(label string) []byte {
		m := hmac.New(sha256.New, master)
		m.Write([]byte("govirtiofsd/nodestore/v1/" + label))
		return m.Sum(nil)
	}
	return keys{record: d("record"), header: d("header"), mounts: d("mounts"), index: d("index")}
}

// loadKey reads dir/key, or creates it if it does not exist.
func loadKey(dir string) ([]byte, error) {
	p := filepath.Join(dir, keyFile)
	for {
		f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW, 0)
		if err == nil {
			defer f.Close()
			st, err := f.Stat()
			if err != nil {
				return nil, err
			}
			if !st.Mode().IsRegular() || st.Mode().Perm()&0o077 != 0 {
				return nil, fmt.Errorf("nodestore: key file %s must be a regular file with mode 0600, is %v", p, st.Mode())
			}
			// We write 32 bytes; accept any key of 16 bytes to 1 KiB
			// that an operator or another tool put there.
			k := make([]byte, maxKeyLen+1)
			n, err := f.ReadAt(k, 0)
			if n < minKeyLen || n > maxKeyLen {
				return nil, fmt.Errorf("nodestore: key file %s has %d bytes, want %d to %d (err %v)", p, n, minKeyLen, maxKeyLen, err)
			}
			return k[:n], nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("nodestore: open key: %w", err)
		}
		// Create it atomically: a crash leaves either no key or a whole one.
		k := make([]byte, keyLen)
		if _, err := rand.Read(k); err != nil {
			return nil, err
		}
		tmp, err := os.CreateTemp(dir, ".key-*")
		if err != nil {
			return nil, fmt.Errorf("nodestore: create key: %w", err)
		}
		// CreateTemp uses mode 0600.
		_, err = tmp.Write(k)
		if err == nil {
			err = tmp.Sync()
		}
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			// link fails if another process created the key meanwhile;
			// then loop and read theirs.
			err = os.Link(tmp.Name(), p)
			if errors.Is(err, os.ErrExist) {
				err = nil
			}
		}
		os.Remove(tmp.Name())
		if err != nil {
			return nil, fmt.Errorf("nodestore: create key: %w", err)
		}
		syncDir(dir)
	}
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// header is the store's superblock. The meta file holds two copies, at
// offsets 0 and headerStride; each write goes to the copy not holding the
// newest version, so a torn write (host crash) leaves the other intact.
//
//	0  magic "GVFSNODE"
//	8  version u32, slotSize u32
//	16 seq u64           incremented by every header write
//	24 generation u64
//	32 reserved u64      every nodeid < reserved may have been handed out
//	40 indexSeq u64      the index file is index.<indexSeq>
//	48 indexBits u32
//	52 flags u32         flagOpen: a process has the store open
//	56 bootID [16]       /proc/sys/kernel/random/boot_id of that process
//	72 migSeq u64        while the index grows: the old table is index.<migSeq>
//	80 migBits u32
//	84 zero
//	88 indexed u64       with flagIndexed: every record below this nodeid
//	                     has its reverse index entry in the index file
//	                     (see diskStore.flushIndexLocked)
//	96 MAC [16]          HMAC-SHA256(headerKey, bytes 0..96)[:16]
type header struct {
	seq        uint64
	generation uint64
	reserved   NodeID
	indexSeq   uint64
	indexBits  uint32
	flags      uint32
	bootID     [16]byte
	migSeq     uint64
	migBits    uint32
	indexed    NodeID
}

const (
	headerMagic   = "GVFSNODE"
	headerVersion = 1
	headerSize    = 112
	headerMACOff  = 96
	headerStride  = 4096
	flagOpen      = 1
	flagIndexed   = 2 // the indexed field is set
)

var errHeaderMAC = errors.New("header fails its MAC (wrong key, or the files were tampered with)")

func (h *header) encode(key []byte) []byte {
	b := make([]byte, headerSize)
	copy(b, headerMagic)
	le := binary.LittleEndian
	le.PutUint32(b[8:], headerVersion)
	le.PutUint32(b[12:], slotSize)
	le.PutUint64(b[16:], h.seq)
	le.PutUint64(b[24:], h.generation)
	le.PutUint64(b[32:], uint64(h.reserved))
	le.PutUint64(b[40:], h.indexSeq)
	le.PutUint32(b[48:], h.indexBits)
	le.PutUint32(b[52:], h.flags)
	copy(b[56:72], h.bootID[:])
	le.PutUint64(b[72:], h.migSeq)
	le.PutUint32(b[80:], h.migBits)
	le.PutUint64(b[88:], uint64(h.indexed))
	m := hmac.New(sha256.New, key)
	m.Write(b[:headerMACOff])
	copy(b[headerMACOff:], m.Sum(nil))
	return b
}

func decodeHeader(b []byte, key []byte) (header, error) {
	var h header
	if isZero(b) {
		return h, os.ErrNotExist
	}
	if !bytes.Equal(b[:8], []byte(headerMagic)) {
		return h, errors.New("bad magic")
	}
	m := hmac.New(sha256.New, key)
	m.Write(b[:headerMACOff])
	if !hmac.Equal(m.Sum(nil)[:macLen], b[headerMACOff:headerSize]) {
		return h, errHeaderMAC
	}
	le := binary.LittleEndian
	if v, ss := le.Uint32(b[8:]), le.Uint32(b[12:]); v != headerVersion || ss != slotSize {
		return h, fmt.Errorf("unsupported version %d slot size %d", v, ss)
	}
	h.seq = le.Uint64(b[16:])
	h.generation = le.Uint64(b[24:])
	h.reserved = NodeID(le.Uint64(b[32:]))
	h.indexSeq = le.Uint64(b[40:])
	h.indexBits = le.Uint32(b[48:])
	h.flags = le.Uint32(b[52:])
	copy(h.bootID[:], b[56:72])
	h.migSeq = le.Uint64(b[72:])
	h.migBits = le.Uint32(b[80:])
	h.indexed = NodeID(le.Uint64(b[88:]))
	if h.generation == 0 || h.indexBits < minIndexBits || h.indexBits > 40 {
		return h, errors.New("invalid fields")
	}
	return h, nil
}

// readHeader returns the newest valid copy.
func readHeader(fd int, key []byte) (header, error) {
	h, _, err := readHeaderSlot(fd, key)
	return h, err
}

// readHeaderSlot returns the newest valid copy and which copy it is.
func readHeaderSlot(fd int, key []byte) (header, int, error) {
	var best header
	var errs []error
	ok := false
	slot := 0
	for i := 0; i < 2; i++ {
		b := make([]byte, headerSize)
		if err := preadFull(fd, b, int64(i*headerStride)); err != nil {
			return best, 0, err
		}
		h, err := decodeHeader(b, key)
		if err != nil {
			errs = append(errs, fmt.Errorf("copy %d: %w", i, err))
			continue
		}
		if !ok || h.seq > best.seq {
			best, ok, slot = h, true, i
		}
	}
	if !ok {
		return best, 0, errors.Join(errs...)
	}
	return best, slot, nil
}

// writeHeader writes h (with seq incremented) over the older copy.
func writeHeader(fd int, h *header, key []byte, sync bool) error {
	return writeHeaderSlot(fd, h, key, int(h.seq+1)%2, sync)
}

// writeHeaderSlot writes h (with seq incremented) as copy slot.
func writeHeaderSlot(fd int, h *header, key []byte, slot int, sync bool) error {
	h.seq++
	off := int64(slot) * headerStride
	if err := pwriteFull(fd, h.encode(key), off); err != nil {
		return fmt.Errorf("write header: %w", err)
	}
	if sync {
		if err := unix.Fdatasync(fd); err != nil {
			return fmt.Errorf("sync header: %w", err)
		}
	}
	return nil
}

func bootID() [16]byte {
	var id [16]byte
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return id
	}
	s := strings.ReplaceAll(strings.TrimSpace(string(b)), "-", "")
	for i := 0; i < 16 && 2*i+1 < len(s); i++ {
		fmt.Sscanf(s[2*i:2*i+2], "%02x", &id[i])
	}
	return id
}

// The mounts file: magic "GVFSMNT1", count u32, then per mount: index u32,
// dev u64, fsid 2×i32, pathLen u16, path; then HMAC-SHA256(mountsKey,
// generation ‖ everything before)[:16]. It is rewritten whole (temp file,
// fsync, rename) by PutMount, which is rare.
const mountsMagic = "GVFSMNT1"

func encodeMounts(ms []MountRecord, key []byte, gen uint64) []byte {
	le := binary.LittleEndian
	b := []byte(mountsMagic)
	b = le.AppendUint32(b, uint32(len(ms)))
	for _, m := range ms {
		b = le.AppendUint32(b, m.Index)
		b = le.AppendUint64(b, m.Dev)
		b = le.AppendUint32(b, uint32(m.FSID[0]))
		b = le.AppendUint32(b, uint32(m.FSID[1]))
		b = le.AppendUint16(b, uint16(len(m.Path)))
		b = append(b, m.Path...)
	}
	return append(b, mountsMAC(b, key, gen)...)
}

func mountsMAC(b, key []byte, gen uint64) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(binary.LittleEndian.AppendUint64(nil, gen))
	m.Write(b)
	return m.Sum(nil)[:macLen]
}

func decodeMounts(b, key []byte, gen uint64) ([]MountRecord, error) {
	if len(b) < len(mountsMagic)+4+macLen || string(b[:8]) != mountsMagic {
		return nil, errors.New("bad mounts file")
	}
	body, mac := b[:len(b)-macLen], b[len(b)-macLen:]
	if !hmac.Equal(mac, mountsMAC(body, key, gen)) {
		return nil, fmt.Errorf("mounts file: %w", ErrTampered)
	}
	le := binary.LittleEndian
	n := le.Uint32(body[8:])
	p := body[12:]
	var ms []MountRecord
	for i := uint32(0); i < n; i++ {
		if len(p) < 22 {
			return nil, errors.New("mounts file truncated")
		}
		m := MountRecord{Index: le.Uint32(p), Dev: le.Uint64(p[4:])}
		m.FSID[0], m.FSID[1] = int32(le.Uint32(p[12:])), int32(le.Uint32(p[16:]))
		l := int(le.Uint16(p[20:]))
		p = p[22:]
		if len(p) < l || m.Index != i {
			return nil, errors.New("mounts file corrupt")
		}
		m.Path = string(p[:l])
		p = p[l:]
		ms = append(ms, m)
	}
	return ms, nil
}

func readFileNoFollow(p string) ([]byte, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, 64<<20))
}

func writeFileAtomic(dir, name string, data []byte) error {
	tmp, err := os.CreateTemp(dir, "."+name+"-*")
	if err != nil {
		return err
	}
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), filepath.Join(dir, name))
	}
	if err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return syncDir(dir)
}
