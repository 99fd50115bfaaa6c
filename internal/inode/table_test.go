package inode

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/govirtiofsd/govirtiofsd/internal/nodestore"
	"golang.org/x/sys/unix"
)

func newTestTable(t *testing.T, maxFDs int, handles HandleMode) (*Table, string) {
	t.Helper()
	dir := t.TempDir()
	tab, err := New(dir, nodestore.OpenMemory(), Options{MaxOpenFDs: maxFDs, Handles: handles})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tab.Close() })
	return tab, dir
}

func lookup(t *testing.T, tab *Table, parent *Node, name string) *Node {
	t.Helper()
	var st unix.Statx_t
	n, err := tab.Lookup(parent, name, &st)
	if err != nil {
		t.Fatalf("lookup %s: %v", name, err)
	}
	return n
}

// Nodeids survive eviction from the fd cache, hard links share one nodeid,
// and the cache stays within its bound while requests use nodes
// concurrently.
func TestEvictionAndIdentity(t *testing.T) {
	for _, mode := range []HandleMode{HandlesNever, HandlesPrefer} {
		t.Run(fmt.Sprint(mode), func(t *testing.T) {
			tab, dir := newTestTable(t, 8, mode)
			os.Mkdir(filepath.Join(dir, "d"), 0o755)
			for i := range 100 {
				os.WriteFile(filepath.Join(dir, "d", fmt.Sprint(i)), []byte(fmt.Sprint(i)), 0o644)
			}
			os.Link(filepath.Join(dir, "d", "0"), filepath.Join(dir, "hard"))
			root := tab.Root()
			d := lookup(t, tab, root, "d")
			ids := map[int]NodeID{}
			for i := range 100 {
				n := lookup(t, tab, d, fmt.Sprint(i))
				ids[i] = n.ID
				n.Release()
			}
			d.Release()
			if got := tab.OpenFDs(); got > 8+1 {
				t.Errorf("cache holds %d fds, bound 8 (+root)", got)
			}
			h := lookup(t, tab, root, "hard")
			if h.ID != ids[0] {
				t.Errorf("hard link has nodeid %d, its other name %d", h.ID, ids[0])
			}
			h.Release()
			root.Release()

			var wg sync.WaitGroup
			for g := range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := g; i < 100; i += 8 {
						n, err := tab.Get(ids[i])
						if err != nil {
							t.Errorf("Get(%d) after eviction: %v", ids[i], err)
							continue
						}
						buf := make([]byte, 8)
						fd, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", n.FD()), unix.O_RDONLY|unix.O_CLOEXEC, 0)
						if err == nil {
							k, _ := unix.Read(fd, buf)
							unix.Close(fd)
							if string(buf[:k]) != fmt.Sprint(i) {
								t.Errorf("nodeid %d reads %q, want %q", ids[i], buf[:k], fmt.Sprint(i))
							}
						}
						n.Release()
					}
				}()
			}
			wg.Wait()
			if got := tab.OpenFDs(); got > 8+1 {
				t.Errorf("cache holds %d fds after concurrent gets, bound 8 (+root)", got)
			}
		})
	}
}

// A file replaced on the host under the same name is another file: its old
// nodeid must not resolve to the new one.
func TestReplacedFileIsStale(t *testing.T) {
	tab, dir := newTestTable(t, 1, HandlesNever)
	os.WriteFile(filepath.Join(dir, "f"), []byte("old"), 0o644)
	root := tab.Root()
	defer root.Release()
	old := lookup(t, tab, root, "f")
	id := old.ID
	old.Release()
	// Evict it, then replace it on the host.
	evictAll(t, tab, root, dir, id)
	os.Remove(filepath.Join(dir, "f"))
	os.Mkdir(filepath.Join(dir, "f"), 0o755)
	if n, err := tab.Get(id); err == nil {
		n.Release()
		t.Fatalf("old nodeid %d resolved to the directory now named f", id)
	}
}

// A directory renamed out of the shared directory on the host is never
// served again, by path or by handle.
func TestMovedOutsideIsStale(t *testing.T) {
	for _, mode := range []HandleMode{HandlesNever, HandlesPrefer} {
		t.Run(fmt.Sprint(mode), func(t *testing.T) {
			tab, dir := newTestTable(t, 1, mode)
			os.MkdirAll(filepath.Join(dir, "d", "e"), 0o755)
			root := tab.Root()
			defer root.Release()
			d := lookup(t, tab, root, "d")
			e := lookup(t, tab, d, "e")
			eid := e.ID
			e.Release()
			d.Release()
			evictAll(t, tab, root, dir, eid)
			outside := filepath.Join(t.TempDir(), "moved")
			if err := os.Rename(filepath.Join(dir, "d", "e"), outside); err != nil {
				t.Fatal(err)
			}
			if n, err := tab.Get(eid); err == nil {
				n.Release()
				t.Fatalf("nodeid %d of a directory moved outside the shared directory still resolves", eid)
			}
		})
	}
}

// evictAll pushes every other node out of the cache by looking up fresh
// files, and checks that id is no longer cached.
func evictAll(t *testing.T, tab *Table, root *Node, dir string, id NodeID) {
	t.Helper()
	for i := range 2*tab.opts.MaxOpenFDs + 4 {
		name := fmt.Sprintf("evict-%d", i)
		os.WriteFile(filepath.Join(dir, name), nil, 0o644)
		lookup(t, tab, root, name).Release()
	}
	if n := tab.cached(id); n != nil {
		n.Release()
		t.Fatalf("nodeid %d still cached", id)
	}
}

// Removing a file's last name drops its record and the cache's fd on it, so
// its disk space is freed at once; a node still in use keeps working.
func TestRemovedReleasesInode(t *testing.T) {
	tab, dir := newTestTable(t, 64, HandlesNever)
	root := tab.Root()
	defer root.Release()
	for _, name := range []string{"gone", "open", "nofd"} {
		os.WriteFile(filepath.Join(dir, name), []byte(name), 0o644)
	}
	gone := lookup(t, tab, root, "gone")
	goneID := gone.ID
	gone.Release()
	open := lookup(t, tab, root, "open") // held, like an open file
	defer open.Release()
	var nst unix.Statx_t
	nofd, err := tab.LookupStat(root, "nofd", &nst) // recorded, no fd cached
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"gone", "open", "nofd"} {
		var st unix.Statx_t
		unix.Statx(root.FD(), name, unix.AT_SYMLINK_NOFOLLOW, statxMask, &st)
		os.Remove(filepath.Join(dir, name))
		tab.Removed(&st)
	}
	ents, _ := os.ReadDir("/proc/self/fd")
	for _, e := range ents {
		if l, _ := os.Readlink("/proc/self/fd/" + e.Name()); l == filepath.Join(dir, "gone")+" (deleted)" {
			t.Errorf("fd %s still holds the removed file", e.Name())
		}
	}
	for _, id := range []NodeID{goneID, open.ID, nofd.ID} {
		if _, err := tab.Store().Get(id); err == nil {
			t.Errorf("nodeid %d: the removed file's record is kept", id)
		}
	}
	if n, err := tab.Get(goneID); err == nil {
		n.Release()
		t.Errorf("the removed file's nodeid still resolves")
	}
	var st unix.Statx_t
	if err := Statx(open.FD(), &st); err != nil || st.Nlink != 0 {
		t.Errorf("the open node: nlink %d, %v; want a working fd on the unlinked file", st.Nlink, err)
	}
}
