package passthrough

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"unsafe"

	"github.com/govirtiofsd/govirtiofsd/internal/engine"
	"github.com/govirtiofsd/govirtiofsd/internal/inode"
	"github.com/govirtiofsd/govirtiofsd/internal/nodestore"
	"github.com/govirtiofsd/govirtiofsd/internal/openfiles"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// A WRITE to an O_APPEND file that the kernel resends to a restarted server
// (FUSE_NOTIFY_RESEND) is applied once, not twice; an append the
// predecessor never started is applied.
func TestResentAppendAppliedOnce(t *testing.T) {
	dir := t.TempDir()
	state := t.TempDir()
	store, err := nodestore.Open(filepath.Join(state, "nodes"), nodestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	key, err := os.ReadFile(filepath.Join(state, "nodes", "key"))
	if err != nil {
		t.Fatal(err)
	}
	table, err := inode.New(dir, store, inode.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer table.Close()
	serve := func() *wireServer {
		files, err := openfiles.Open(filepath.Join(state, "open-files"), key, nil)
		if err != nil {
			t.Fatal(err)
		}
		fsys := New(table, Options{OpenFiles: files})
		s := &wireServer{t: t, dir: dir, eng: engine.New(fsys, engine.Options{}), table: table}
		in := fuse.InitIn{Major: 7, Minor: 31, MaxReadAhead: 1 << 20}
		if st, _ := s.call(opInit, 0, structBytes(&in)[unsafe.Sizeof(fuse.InHeader{}):]); st != 0 {
			t.Fatalf("INIT: %d", st)
		}
		return s
	}
	a := serve()
	cin := fuse.CreateIn{Flags: syscall.O_WRONLY | syscall.O_APPEND, Mode: 0o644}
	st, out := a.call(opCreate, 1, append(structBytes(&cin)[unsafe.Sizeof(fuse.InHeader{}):], name("log")...))
	if st != 0 {
		t.Fatalf("CREATE: %d", st)
	}
	co := (*fuse.CreateOut)(unsafe.Pointer(&out[0]))
	nodeid, fh := co.NodeId, co.Fh
	write := func(s *wireServer, unique uint64, data string) {
		t.Helper()
		w := fuse.WriteIn{Fh: fh, Size: uint32(len(data))}
		s.unique = unique - 1
		if st, _ := s.call(opWrite, nodeid, append(structBytes(&w)[unsafe.Sizeof(fuse.InHeader{}):], data...)); st != 0 {
			t.Fatalf("WRITE %d: errno %d", unique, st)
		}
	}
	write(a, 100, "abc")
	// The server dies after applying WRITE 100 but before replying; its
	// successor gets it again with the resend bit.
	b := serve()
	write(b, 100|fuseUniqueResend, "abc")
	if got, _ := os.ReadFile(filepath.Join(dir, "log")); string(got) != "abc" {
		t.Fatalf("after the resent append: %q, want %q", got, "abc")
	}
	write(b, 101|fuseUniqueResend, "def")
	if got, _ := os.ReadFile(filepath.Join(dir, "log")); string(got) != "abcdef" {
		t.Fatalf("after a resent append that never ran: %q, want %q", got, "abcdef")
	}
}
