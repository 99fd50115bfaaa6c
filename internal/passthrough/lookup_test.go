package passthrough

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// LOOKUP records a file without opening it: looking up more files than the
// fd cache holds opens no node fd, and each nodeid still serves GETATTR,
// and OPEN and READ of its own file, afterwards.
func TestLookupOpensNoFD(t *testing.T) {
	s := newWireServer(t) // fd cache of 16
	const files = 64
	for i := range files {
		if err := os.WriteFile(filepath.Join(s.dir, fmt.Sprint(i)), []byte(fmt.Sprint("data ", i)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	fds := s.table.OpenFDs()
	ids := make([]uint64, files)
	for i := range files {
		st, out := s.call(opLookup, 1, name(fmt.Sprint(i)))
		if st != 0 {
			t.Fatalf("LOOKUP %d: errno %d", i, st)
		}
		ids[i] = (*fuse.EntryOut)(unsafe.Pointer(&out[0])).NodeId
	}
	if got := s.table.OpenFDs(); got != fds {
		t.Errorf("node fds after %d LOOKUPs: %d, want %d (none opened)", files, got, fds)
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
		oin := fuse.OpenIn{Flags: syscall.O_RDONLY}
		st, out := s.call(opOpen, ids[i], structBytes(&oin)[unsafe.Sizeof(fuse.InHeader{}):])
		if st != 0 {
			t.Fatalf("OPEN of file %d: errno %d", i, st)
		}
		fh := (*fuse.OpenOut)(unsafe.Pointer(&out[0])).Fh
		rin := fuse.ReadIn{Fh: fh, Size: 100}
		st, out = s.call(opRead, ids[i], structBytes(&rin)[unsafe.Sizeof(fuse.InHeader{}):])
		if want := fmt.Sprint("data ", i); st != 0 || string(out) != want {
			t.Errorf("READ of file %d: %q, errno %d; want %q", i, out, st, want)
		}
		relin := fuse.ReleaseIn{Fh: fh}
		s.call(opRelease, ids[i], structBytes(&relin)[unsafe.Sizeof(fuse.InHeader{}):])
	}
}
