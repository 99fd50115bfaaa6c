package inode

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func lookupStat(t *testing.T, tab *Table, parent *Node, name string) NodeID {
	t.Helper()
	var st unix.Statx_t
	e, err := tab.LookupStat(parent, name, &st)
	if err != nil {
		t.Fatalf("lookup %s: %v", name, err)
	}
	return e.ID
}

// A LOOKUP (LookupStat) opens no fd, gives one file one nodeid however
// often and by whichever link it is looked up, and follows the host: after
// a host rename, a replacement, a removal or a type change the name is
// resolved afresh. The fd opened on first use is the recorded file's.
func TestLookupStatFollowsHost(t *testing.T) {
	tab, dir := newTestTable(t, 64, HandlesNever)
	root := tab.Root()
	defer root.Release()
	p := func(n string) string { return filepath.Join(dir, n) }
	os.WriteFile(p("a"), []byte("a"), 0o644)
	os.Link(p("a"), p("link"))
	fds := tab.OpenFDs()
	a := lookupStat(t, tab, root, "a")
	if again := lookupStat(t, tab, root, "a"); again != a {
		t.Errorf("second lookup of a: nodeid %d, want %d", again, a)
	}
	if l := lookupStat(t, tab, root, "link"); l != a {
		t.Errorf("hard link of a: nodeid %d, want %d", l, a)
	}
	if got := tab.OpenFDs(); got != fds {
		t.Errorf("open node fds after three lookups: %d, want %d (none opened)", got, fds)
	}
	n, err := tab.Get(a)
	if err != nil {
		t.Fatalf("first use of a: %v", err)
	}
	var st, want unix.Statx_t
	Statx(n.FD(), &st)
	unix.Statx(unix.AT_FDCWD, p("a"), unix.AT_SYMLINK_NOFOLLOW, statxMask, &want)
	if st.Ino != want.Ino {
		t.Errorf("fd opened on first use: ino %d, want a's %d", st.Ino, want.Ino)
	}
	n.Release()
	// A cached node is found again by its key.
	if again := lookupStat(t, tab, root, "a"); again != a {
		t.Errorf("lookup of cached a: nodeid %d, want %d", again, a)
	}

	checkFollowsHost(t, p, a, func(name string, st *unix.Statx_t) (NodeID, error) {
		e, err := tab.LookupStat(root, name, st)
		return e.ID, err
	})
}

// checkFollowsHost changes the host under file a (nodeid a, with a hard
// link "link" to it) and checks that look, a lookup in the shared
// directory p names, follows: a rename away and another file under the
// name, a removal (ENOENT), a directory in its place.
func checkFollowsHost(t *testing.T, p func(string) string, a NodeID, look func(name string, st *unix.Statx_t) (NodeID, error)) {
	t.Helper()
	var st unix.Statx_t
	must := func(name string) NodeID {
		t.Helper()
		id, err := look(name, &st)
		if err != nil {
			t.Fatalf("lookup %s: %v", name, err)
		}
		return id
	}
	// Renamed away, another file takes the name.
	os.Remove(p("link"))
	os.Rename(p("a"), p("b"))
	os.WriteFile(p("a"), []byte("new"), 0o644)
	if na := must("a"); na == a {
		t.Errorf("a after replacement: nodeid %d, the old file's", na)
	}
	if b := must("b"); b != a {
		t.Errorf("b: nodeid %d, want %d (renamed a)", b, a)
	}
	// Removed on the host: ENOENT.
	os.Remove(p("a"))
	if id, err := look("a", &st); !errors.Is(err, unix.ENOENT) {
		t.Errorf("lookup of removed a: nodeid %d, %v; want ENOENT", id, err)
	}
	// Replaced by a directory.
	os.Mkdir(p("a"), 0o755)
	if _, err := look("a", &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
		t.Errorf("a is a directory now, lookup gave mode %o, %v", st.Mode, err)
	}
}

// A file looked up without an fd and replaced on the host before its first
// use is another file: the old nodeid must not resolve to the new one.
func TestLookupStatReplacedBeforeUse(t *testing.T) {
	tab, dir := newTestTable(t, 64, HandlesNever)
	root := tab.Root()
	defer root.Release()
	os.WriteFile(filepath.Join(dir, "f"), []byte("old"), 0o644)
	id := lookupStat(t, tab, root, "f")
	os.Remove(filepath.Join(dir, "f"))
	os.Mkdir(filepath.Join(dir, "f"), 0o755)
	if n, err := tab.Get(id); err == nil {
		n.Release()
		t.Fatalf("nodeid %d of a removed file resolved to the directory now named f", id)
	}
}

func lookupEntry(t *testing.T, tab *Table, parent *Node, name string) NodeID {
	t.Helper()
	var st unix.Statx_t
	e, err := tab.LookupEntry(parent, name, &st)
	if err != nil {
		t.Fatalf("lookup %s: %v", name, err)
	}
	return e.ID
}

// LOOKUP (LookupEntry) answers a cached node from a statx of the name only
// while the name still holds the cached file: after a host rename, a
// replacement, a removal or a type change the name is resolved afresh,
// below the fd bound and beyond it, stating the name first or (in a run
// of misses) opening it first.
func TestLookupEntryFollowsHost(t *testing.T) {
	for _, mode := range []string{"room", "full", "open-first"} {
		full := mode == "full"
		t.Run(mode, func(t *testing.T) {
			tab, dir := newTestTable(t, 4, HandlesNever)
			root := tab.Root()
			defer root.Release()
			p := func(n string) string { return filepath.Join(dir, n) }
			lookupEntry := func(t *testing.T, tab *Table, root *Node, name string) NodeID {
				t.Helper()
				if mode == "open-first" {
					tab.lookupMisses.Store(openFirstAfter)
				}
				return lookupEntry(t, tab, root, name)
			}
			if full {
				for i := range 4 {
					os.WriteFile(p(fmt.Sprint("f", i)), nil, 0o644)
					lookup(t, tab, root, fmt.Sprint("f", i)).Release()
				}
			}
			fds := tab.OpenFDs()
			os.WriteFile(p("a"), []byte("a"), 0o644)
			os.Link(p("a"), p("link"))
			a := lookupEntry(t, tab, root, "a")
			if again := lookupEntry(t, tab, root, "a"); again != a {
				t.Errorf("second lookup of a: nodeid %d, want %d", again, a)
			}
			if l := lookupEntry(t, tab, root, "link"); l != a {
				t.Errorf("hard link of a: nodeid %d, want %d", l, a)
			}
			if got, want := tab.OpenFDs(), fds+map[bool]int{false: 1, true: 0}[full]; got != want {
				t.Errorf("open node fds after three lookups of one file: %d, want %d", got, want)
			}

			checkFollowsHost(t, p, a, func(name string, st *unix.Statx_t) (NodeID, error) {
				if mode == "open-first" {
					tab.lookupMisses.Store(openFirstAfter)
				}
				e, err := tab.LookupEntry(root, name, st)
				return e.ID, err
			})
		})
	}
}
