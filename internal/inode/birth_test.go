package inode

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/govirtiofsd/govirtiofsd/internal/nodestore"
	"golang.org/x/sys/unix"
)

// A host file deleted while the daemon is down and replaced by a new file
// that the host gives the same inode number, on the same mount, under the
// same name, is another file: it gets a new nodeid, and the old nodeid no
// longer resolves (to it or to anything). Two fresh tmpfs mounted in turn at
// one path give the premise: the same device number and the same inode
// numbers for the same sequence of creations, and different birth times.
func TestBirthTimeTellsReusedInode(t *testing.T) {
	for _, mode := range []HandleMode{HandlesNever, HandlesPrefer} {
		t.Run(fmt.Sprint(mode), func(t *testing.T) {
			dir := t.TempDir()
			sub := filepath.Join(dir, "sub")
			if err := os.Mkdir(sub, 0o755); err != nil {
				t.Fatal(err)
			}
			mountTmpfs := func() {
				t.Helper()
				if err := unix.Mount("tmpfs", sub, "tmpfs", 0, "size=1m"); err != nil {
					t.Fatalf("mount tmpfs (the test needs root): %v", err)
				}
				if err := os.WriteFile(filepath.Join(sub, "f"), []byte("file"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			t.Cleanup(func() { unix.Unmount(sub, unix.MNT_DETACH) })
			state := filepath.Join(t.TempDir(), "nodes")
			open := func() *Table {
				t.Helper()
				store, err := nodestore.Open(state, nodestore.Options{})
				if err != nil {
					t.Fatal(err)
				}
				tab, err := New(dir, store, Options{MaxOpenFDs: 64, Handles: mode})
				if err != nil {
					t.Fatal(err)
				}
				return tab
			}
			look := func(tab *Table) (NodeID, unix.Statx_t) {
				t.Helper()
				root := tab.Root()
				defer root.Release()
				s := lookup(t, tab, root, "sub")
				defer s.Release()
				var st unix.Statx_t
				e, err := tab.LookupStat(s, "f", &st)
				if err != nil {
					t.Fatal(err)
				}
				return e.ID, st
			}

			mountTmpfs()
			tab := open()
			oldID, old := look(tab)
			if old.Mask&unix.STATX_BTIME == 0 {
				t.Fatal("tmpfs reports no birth time: the test premise fails")
			}
			if err := tab.Close(); err != nil {
				t.Fatal(err)
			}
			if err := unix.Unmount(sub, 0); err != nil {
				t.Fatal(err)
			}
			mountTmpfs()
			tab = open()
			defer tab.Close()
			newID, cur := look(tab)
			if cur.Ino != old.Ino || cur.Dev_major != old.Dev_major || cur.Dev_minor != old.Dev_minor {
				t.Fatalf("the new file is %d:%d ino %d, the old one was %d:%d ino %d: the test premise (inode reuse) fails",
					cur.Dev_major, cur.Dev_minor, cur.Ino, old.Dev_major, old.Dev_minor, old.Ino)
			}
			if cur.Btime == old.Btime {
				t.Fatalf("both files were born at %v: the test premise fails", cur.Btime)
			}
			if newID == oldID {
				t.Errorf("the new file got the old file's nodeid %d", oldID)
			}
			if n, err := tab.Get(oldID); err == nil {
				n.Release()
				t.Errorf("the old nodeid %d resolves (to ino %d)", oldID, n.Ino)
			}
			var st unix.Statx_t
			if _, err := tab.Stat(oldID, &st); err == nil {
				t.Errorf("GETATTR of the old nodeid %d answered (ino %d)", oldID, st.Ino)
			}
			if again, _ := look(tab); again != newID {
				t.Errorf("the new file's nodeid changed on a second lookup: %d, then %d", newID, again)
			}
			n, err := tab.Get(newID)
			if err != nil {
				t.Fatalf("the new file's nodeid: %v", err)
			}
			n.Release()
		})
	}
}

// A record of the new kind keeps its nodeid across a restart (the birth
// time matches), and a record without a birth time (made before this
// check existed, or on a filesystem that reports none) is accepted as
// before.
func TestBirthTimeKeepsIdentity(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "f"), nil, 0o644)
	state := filepath.Join(t.TempDir(), "nodes")
	var ids []NodeID
	for range 2 {
		store, err := nodestore.Open(state, nodestore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		tab, err := New(dir, store, Options{MaxOpenFDs: 64})
		if err != nil {
			t.Fatal(err)
		}
		root := tab.Root()
		var st unix.Statx_t
		e, err := tab.LookupStat(root, "f", &st)
		root.Release()
		if err != nil {
			t.Fatal(err)
		}
		rec, err := tab.Store().Get(e.ID)
		if err != nil || rec.HandleType != birthHandleType || len(rec.Handle) != birthLen {
			t.Errorf("record of f: handle type %d, %d bytes, %v; want the birth time", rec.HandleType, len(rec.Handle), err)
		}
		ids = append(ids, e.ID)
		tab.Close()
	}
	if ids[0] != ids[1] {
		t.Errorf("f got nodeid %d, then %d after a restart", ids[0], ids[1])
	}

	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, dir, 0, statxMask, &st); err != nil {
		t.Fatal(err)
	}
	legacy := Record{Ino: 1, Type: unix.S_IFREG}
	if !sameBirth(legacy, &st) {
		t.Errorf("a record without a birth time failed the check")
	}
	st.Mask &^= unix.STATX_BTIME
	if !sameBirth(Record{HandleType: birthHandleType, Handle: make([]byte, birthLen)}, &st) {
		t.Errorf("a file without a birth time failed the check")
	}
	if _, h := birthHandle(&st); h != nil {
		t.Errorf("birth handle %x for a file without a birth time", h)
	}
	if isHostHandle(Record{HandleType: birthHandleType, Handle: make([]byte, birthLen)}) {
		t.Errorf("a birth time counts as a host handle")
	}
}
