package inode

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// A repeated LOOKUP answers from the cached node only while the name still
// holds that very file: after a host rename, a replacement, a removal or a
// type change the name is resolved afresh.
func TestLookupHintFollowsHost(t *testing.T) {
	tab, dir := newTestTable(t, 64, HandlesNever)
	root := tab.Root()
	defer root.Release()
	p := func(n string) string { return filepath.Join(dir, n) }
	os.WriteFile(p("a"), []byte("a"), 0o644)
	a := lookup(t, tab, root, "a")
	a.Release()
	if again := lookup(t, tab, root, "a"); again != a {
		t.Errorf("second lookup of a: node %d, want the cached %d", again.ID, a.ID)
	} else {
		again.Release()
	}

	// Renamed away, another file takes the name.
	os.Rename(p("a"), p("b"))
	os.WriteFile(p("a"), []byte("new"), 0o644)
	na := lookup(t, tab, root, "a")
	if na.ID == a.ID || na.Ino == a.Ino {
		t.Errorf("a after replacement: node %d ino %d, the old file's", na.ID, na.Ino)
	}
	na.Release()
	if b := lookup(t, tab, root, "b"); b.ID != a.ID {
		t.Errorf("b: node %d, want %d (renamed a)", b.ID, a.ID)
	} else {
		b.Release()
	}

	// Removed on the host: ENOENT, not the cached node.
	os.Remove(p("a"))
	var st unix.Statx_t
	if n, err := tab.Lookup(root, "a", &st); !errors.Is(err, unix.ENOENT) {
		t.Errorf("lookup of removed a: %v, %v; want ENOENT", n, err)
		n.Release()
	}

	// Replaced by a directory.
	os.Mkdir(p("a"), 0o755)
	d := lookup(t, tab, root, "a")
	if !d.IsDir() {
		t.Errorf("a is a directory now, lookup gave type %o", d.Type)
	}
	d.Release()
}
