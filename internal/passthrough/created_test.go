package passthrough

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
)

const opSetattr = 4

// A file CREATE made is recorded without a node fd. While the guest has it
// open, requests on its nodeid reach that very file, even after it was
// renamed on the host or unlinked.
func TestCreatedNodeFollowsOpenFile(t *testing.T) {
	for _, how := range []string{"host-rename", "unlink"} {
		t.Run(how, func(t *testing.T) {
			s := newWireServer(t)
			cin := fuse.CreateIn{Flags: syscall.O_RDWR | syscall.O_CREAT | syscall.O_EXCL, Mode: syscall.S_IFREG | 0o644}
			st, out := s.call(opCreate, 1, append(structBytes(&cin)[unsafe.Sizeof(fuse.InHeader{}):], name("c")...))
			if st != 0 {
				t.Fatalf("CREATE: errno %d", st)
			}
			co := *(*fuse.CreateOut)(unsafe.Pointer(&out[0]))
			switch how {
			case "host-rename":
				if err := os.Rename(filepath.Join(s.dir, "c"), filepath.Join(s.dir, "moved")); err != nil {
					t.Fatal(err)
				}
				// Another file takes the name.
				if err := os.WriteFile(filepath.Join(s.dir, "c"), nil, 0o644); err != nil {
					t.Fatal(err)
				}
			case "unlink":
				if st, _ := s.call(opUnlink, 1, name("c")); st != 0 {
					t.Fatalf("UNLINK: errno %d", st)
				}
			}
			gin := fuse.GetAttrIn{}
			st, out = s.call(opGetattr, co.NodeId, structBytes(&gin)[unsafe.Sizeof(fuse.InHeader{}):])
			if st != 0 {
				t.Fatalf("GETATTR: errno %d", st)
			}
			if a := (*fuse.AttrOut)(unsafe.Pointer(&out[0])); a.Ino != co.Attr.Ino {
				t.Errorf("GETATTR: inode %d, want %d (the created file)", a.Ino, co.Attr.Ino)
			}
			sin := fuse.SetAttrIn{SetAttrInCommon: fuse.SetAttrInCommon{Valid: fuse.FATTR_MODE, Mode: 0o600}}
			st, out = s.call(opSetattr, co.NodeId, structBytes(&sin)[unsafe.Sizeof(fuse.InHeader{}):])
			if st != 0 {
				t.Fatalf("SETATTR: errno %d", st)
			}
			if a := (*fuse.AttrOut)(unsafe.Pointer(&out[0])); a.Ino != co.Attr.Ino || a.Mode&0o777 != 0o600 {
				t.Errorf("SETATTR: inode %d mode %o, want %d, 600", a.Ino, a.Mode&0o777, co.Attr.Ino)
			}
			if how == "host-rename" {
				if fi, err := os.Stat(filepath.Join(s.dir, "moved")); err != nil || fi.Mode().Perm() != 0o600 {
					t.Errorf("the created file: %v, %v; want mode 600", fi.Mode(), err)
				}
				if fi, err := os.Stat(filepath.Join(s.dir, "c")); err != nil || fi.Mode().Perm() != 0o644 {
					t.Errorf("the file now named c: %v, %v; want it untouched (644)", fi.Mode(), err)
				}
			}
			rin := fuse.ReleaseIn{Fh: co.Fh}
			s.call(opRelease, co.NodeId, structBytes(&rin)[unsafe.Sizeof(fuse.InHeader{}):])
		})
	}
}
