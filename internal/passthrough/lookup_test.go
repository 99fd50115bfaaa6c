package passthrough

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"unsafe"

	"github.com/govirtiofsd/govirtiofsd/internal/inode"
	"github.com/hanwen/go-fuse/v2/fuse"
)

func (s *wireServer) lookupID(t *testing.T, parent uint64, n string) uint64 {
	t.Helper()
	st, out := s.call(opLookup, parent, name(n))
	if st != 0 {
		t.Fatalf("LOOKUP %s: errno %d", n, st)
	}
	return (*fuse.EntryOut)(unsafe.Pointer(&out[0])).NodeId
}

func (s *wireServer) openRead(t *testing.T, id uint64) (string, int32) {
	t.Helper()
	oin := fuse.OpenIn{Flags: syscall.O_RDONLY}
	st, out := s.call(opOpen, id, structBytes(&oin)[unsafe.Sizeof(fuse.InHeader{}):])
	if st != 0 {
		return "", st
	}
	fh := (*fuse.OpenOut)(unsafe.Pointer(&out[0])).Fh
	rin := fuse.ReadIn{Fh: fh, Size: 100}
	st, out = s.call(opRead, id, structBytes(&rin)[unsafe.Sizeof(fuse.InHeader{}):])
	relin := fuse.ReleaseIn{Fh: fh}
	s.call(opRelease, id, structBytes(&relin)[unsafe.Sizeof(fuse.InHeader{}):])
	return string(out), st
}

// LOOKUP opens and caches a file's fd while the fd cache has room, and
// records files without an fd once it is full: looking up more files than
// the cache holds never evicts (no open and close per LOOKUP), and every
// nodeid still serves GETATTR, and OPEN and READ of its own file.
func TestLookupFillsCacheThenRecords(t *testing.T) {
	s := newWireServer(t) // fd cache of 16
	const files = 64
	for i := range files {
		if err := os.WriteFile(filepath.Join(s.dir, fmt.Sprint(i)), []byte(fmt.Sprint("data ", i)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ids := make([]uint64, files)
	for i := range files {
		ids[i] = s.lookupID(t, 1, fmt.Sprint(i))
		if got, want := s.table.OpenFDs(), 1+min(i+1, 16); got != want {
			t.Fatalf("node fds after %d LOOKUPs: %d, want %d", i+1, got, want)
		}
	}
	for i, id := range ids[:16] {
		if n := s.table.Cached(inode.NodeID(id)); n == nil {
			t.Errorf("file %d (looked up while the cache had room) is not cached", i)
		} else {
			n.Release()
		}
	}
	for i, id := range ids {
		var want syscall.Stat_t
		syscall.Lstat(filepath.Join(s.dir, fmt.Sprint(i)), &want)
		gin := fuse.GetAttrIn{}
		st, out := s.call(opGetattr, id, structBytes(&gin)[unsafe.Sizeof(fuse.InHeader{}):])
		if st != 0 {
			t.Fatalf("GETATTR of file %d: errno %d", i, st)
		}
		if a := (*fuse.AttrOut)(unsafe.Pointer(&out[0])); a.Size != uint64(want.Size) || a.Mtimensec != uint32(want.Mtim.Nsec) {
			t.Errorf("GETATTR of file %d: size %d mtime ns %d, want %d %d", i, a.Size, a.Mtimensec, want.Size, want.Mtim.Nsec)
		}
	}
	for _, i := range []int{0, files / 2, files - 1} {
		if got, st := s.openRead(t, ids[i]); st != 0 || got != fmt.Sprint("data ", i) {
			t.Errorf("OPEN+READ of file %d: %q, errno %d", i, got, st)
		}
	}
}

// An OPEN that follows a LOOKUP reaches the file the LOOKUP found, even if
// the name was replaced in between (a rename over it, as an editor's save
// or go-fuse's OpenSymlinkRace does): the LOOKUP's fd pins the inode. With
// no pin the OPEN would find another file under the name and fail ESTALE.
func TestOpenAfterReplacedName(t *testing.T) {
	s := newWireServer(t)
	p := filepath.Join(s.dir, "f")
	if err := os.WriteFile(p, []byte("looked up"), 0o644); err != nil {
		t.Fatal(err)
	}
	id := s.lookupID(t, 1, "f")
	if err := os.WriteFile(p+".tmp", []byte("replacement"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(p+".tmp", p); err != nil {
		t.Fatal(err)
	}
	if got, st := s.openRead(t, id); st != 0 || got != "looked up" {
		t.Errorf("OPEN+READ of the looked-up file after its name was replaced: %q, errno %d; want %q", got, st, "looked up")
	}
	if got, st := s.openRead(t, s.lookupID(t, 1, "f")); st != 0 || got != "replacement" {
		t.Errorf("the name looked up again: %q, errno %d", got, st)
	}
}
