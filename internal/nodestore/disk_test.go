package nodestore

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// logBuf collects slog output for assertions.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func openT(t testing.TB, dir string, opts Options) Store {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = quietLogger()
	}
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestReopen(t *testing.T) {
	n := 100_000
	if testing.Short() {
		n = 10_000
	}
	dir := filepath.Join(t.TempDir(), "state")
	s := openT(t, dir, Options{})
	gen := s.Generation()
	if _, err := s.PutMount(MountRecord{Path: "", Dev: 7}); err != nil {
		t.Fatal(err)
	}
	ids := make([]NodeID, n)
	for i := range n {
		var err error
		if ids[i], err = s.Insert(rec(0, uint64(i)+100, 1, strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(filepath.Join(dir, keyFile)); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", st.Mode(), err)
	}
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("dir mode: %v %v", st.Mode(), err)
	}

	s = openT(t, dir, Options{CacheBytes: 1 << 16})
	defer s.Close()
	if s.Generation() != gen {
		t.Fatalf("generation %x after reopen, want %x", s.Generation(), gen)
	}
	if ms, _ := s.Mounts(); len(ms) != 1 || ms[0].Dev != 7 {
		t.Fatalf("mounts after reopen: %+v", ms)
	}
	for i := range n {
		want := rec(0, uint64(i)+100, 1, strconv.Itoa(i))
		want.ID = ids[i]
		mustGet(t, s, want)
		got, err := s.ByIno(0, uint64(i)+100)
		if err != nil || got.ID != ids[i] {
			t.Fatalf("ByIno(%d) after reopen = %d %v, want %d", i, got.ID, err, ids[i])
		}
	}
	id, err := s.Insert(rec(0, 1, 1, "new"))
	if err != nil || id <= ids[n-1] {
		t.Fatalf("Insert after reopen = %d %v, want > %d", id, err, ids[n-1])
	}
}

func TestOpenExclusive(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, Options{})
	defer s.Close()
	if _, err := Open(dir, Options{Logger: quietLogger()}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second Open: %v", err)
	}
}

func TestWrongKey(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, Options{})
	s.Insert(rec(0, 1, 0, ""))
	s.Close()
	k := make([]byte, 32)
	rand.Read(k)
	if _, err := Open(dir, Options{Key: k, Logger: quietLogger()}); err == nil || !strings.Contains(err.Error(), "MAC") {
		t.Fatalf("Open with another key: %v", err)
	}
	// A world-readable key file is refused.
	os.Chmod(filepath.Join(dir, keyFile), 0o644)
	if _, err := Open(dir, Options{Logger: quietLogger()}); err == nil || !strings.Contains(err.Error(), "0600") {
		t.Fatalf("Open with key mode 0644: %v", err)
	}
}

// flipByte xors one byte of a file.
func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := []byte{0}
	f.ReadAt(b, off)
	b[0] ^= 0x40
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func readSlot(t *testing.T, dir string, id NodeID) []byte {
	b := make([]byte, slotSize)
	f, err := os.Open(filepath.Join(dir, recordsFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(b, int64(id)*slotSize); err != nil {
		t.Fatal(err)
	}
	return b
}

func writeSlot(t *testing.T, dir string, id NodeID, b []byte) {
	f, err := os.OpenFile(filepath.Join(dir, recordsFile), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, int64(id)*slotSize); err != nil {
		t.Fatal(err)
	}
}

// populate creates a store in dir with n records (ino = 1000+i) and
// closes it.
func populate(t *testing.T, dir string, n int, opts Options) []Record {
	s := openT(t, dir, opts)
	var rs []Record
	for i := range n {
		r := rec(0, uint64(1000+i), 1, fmt.Sprint("file", i))
		var err error
		if r.ID, err = s.Insert(r); err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return rs
}

// expectTampered checks that exactly the records in bad fail with
// ErrTampered (logged), by nodeid and by ino, and the others still work.
func expectTampered(t *testing.T, dir string, opts Options, rs []Record, bad map[NodeID]bool) {
	t.Helper()
	var lb logBuf
	opts.Logger = slog.New(slog.NewTextHandler(&lb, nil))
	s := openT(t, dir, opts)
	defer s.Close()
	if good, nbad, err := Verify(s); err != nil || good != len(rs)-len(bad) || nbad != len(bad) {
		t.Fatalf("Verify = %d good, %d bad, %v; want %d, %d", good, nbad, err, len(rs)-len(bad), len(bad))
	}
	for _, r := range rs {
		got, err := s.Get(r.ID)
		if bad[r.ID] {
			if !errors.Is(err, ErrTampered) {
				t.Fatalf("Get(%d) of tampered record = %+v, %v", r.ID, got, err)
			}
			if got.ID != 0 || got.Name != "" || got.Handle != nil {
				t.Fatalf("tampered record returned data: %+v", got)
			}
			if _, err := s.ByIno(r.Mount, r.Ino); !errors.Is(err, ErrTampered) {
				t.Fatalf("ByIno of tampered record: %v", err)
			}
			continue
		}
		if err != nil || !sameRecord(got, r) {
			t.Fatalf("Get(%d) of intact record = %+v, %v", r.ID, got, err)
		}
		if got, err := s.ByIno(r.Mount, r.Ino); err != nil || got.ID != r.ID {
			t.Fatalf("ByIno of intact record = %+v, %v", got, err)
		}
	}
	for id := range bad {
		want := fmt.Sprintf("nodeid=%d ", id)
		if !strings.Contains(lb.String(), want) || !strings.Contains(lb.String(), "fails its MAC") {
			t.Fatalf("no clear log line for %s:\n%s", want, lb.String())
		}
		// Logged once, however often it is asked for.
		s.Get(id)
		if c := strings.Count(lb.String(), want); c != 1 {
			t.Fatalf("%d log lines for %s:\n%s", c, want, lb.String())
		}
	}
}

func TestTamper(t *testing.T) {
	// rs[4] is "file4" with handle "handle-0-1004": 18 inline bytes.
	offsets := map[string]int{
		"state": 0, "namelen": offNameLen, "flags": offFlags, "mount": offMount, "ino": offIno + 3,
		"parent": offParent, "id": offID, "name": offInline + 1, "handle": offInline + 5,
		"padding": offInline + 150, "mac": slotMACOff + 5,
	}
	for what, off := range offsets {
		t.Run(what, func(t *testing.T) {
			dir := t.TempDir()
			rs := populate(t, dir, 10, Options{})
			flipByte(t, filepath.Join(dir, recordsFile), int64(rs[4].ID)*slotSize+int64(off))
			expectTampered(t, dir, Options{}, rs, map[NodeID]bool{rs[4].ID: true})
		})
	}
	// Records with long names keep them in an overflow slot.
	for what, off := range map[string]int{"ext-name": 3, "ext-handle": 250, "ext-padding": 380} {
		t.Run(what, func(t *testing.T) {
			dir := t.TempDir()
			s := openT(t, dir, Options{})
			var rs []Record
			for i := range 4 {
				r := rec(0, uint64(i), 1, strings.Repeat("L", 240+i))
				var err error
				if r.ID, err = s.Insert(r); err != nil {
					t.Fatal(err)
				}
				rs = append(rs, r)
			}
			s.Close()
			// Overflow slot 2 belongs to rs[2].
			flipByte(t, filepath.Join(dir, extFile), 2*extSlotSize+int64(off))
			expectTampered(t, dir, Options{}, rs, map[NodeID]bool{rs[2].ID: true})
		})
	}
	t.Run("ext-pointer", func(t *testing.T) {
		// Pointing a record at another record's overflow slot fails too.
		dir := t.TempDir()
		s := openT(t, dir, Options{})
		var rs []Record
		for i := range 3 {
			r := rec(0, uint64(i), 1, strings.Repeat("L", 240))
			r.ID, _ = s.Insert(r)
			rs = append(rs, r)
		}
		s.Close()
		flipByte(t, filepath.Join(dir, recordsFile), int64(rs[0].ID)*slotSize+offInline) // 0 → 0x40
		b := readSlot(t, dir, rs[0].ID)
		b[offInline] = 1 // rs[1]'s overflow slot, same length
		writeSlot(t, dir, rs[0].ID, b)
		expectTampered(t, dir, Options{}, rs, map[NodeID]bool{rs[0].ID: true})
	})
	t.Run("swap-slots", func(t *testing.T) {
		// A valid record moved to another nodeid's slot is refused: the
		// MAC binds it to its nodeid.
		dir := t.TempDir()
		rs := populate(t, dir, 10, Options{})
		writeSlot(t, dir, rs[5].ID, readSlot(t, dir, rs[2].ID))
		expectTampered(t, dir, Options{}, rs, map[NodeID]bool{rs[5].ID: true})
	})
}

func TestForeignRecord(t *testing.T) {
	t.Run("other-key", func(t *testing.T) {
		a, b := t.TempDir(), t.TempDir()
		rs := populate(t, a, 10, Options{})
		populate(t, b, 10, Options{})
		writeSlot(t, a, 3, readSlot(t, b, 3))
		expectTampered(t, a, Options{}, rs, map[NodeID]bool{3: true})
	})
	t.Run("same-key-other-store", func(t *testing.T) {
		// Even stores sharing a key (Options.Key) cannot swap records:
		// the MAC binds each record to its store's generation.
		key := bytes.Repeat([]byte{7}, 32)
		a, b := t.TempDir(), t.TempDir()
		rs := populate(t, a, 10, Options{Key: key})
		populate(t, b, 10, Options{Key: key})
		writeSlot(t, a, 3, readSlot(t, b, 3))
		expectTampered(t, a, Options{Key: key}, rs, map[NodeID]bool{3: true})
	})
	t.Run("whole-file", func(t *testing.T) {
		a, b := t.TempDir(), t.TempDir()
		rs := populate(t, a, 5, Options{})
		populate(t, b, 5, Options{})
		data, _ := os.ReadFile(filepath.Join(b, recordsFile))
		os.WriteFile(filepath.Join(a, recordsFile), data, 0o600)
		bad := map[NodeID]bool{}
		for _, r := range rs {
			bad[r.ID] = true
		}
		expectTampered(t, a, Options{}, rs, bad)
	})
}

func TestHeaderTornOrTampered(t *testing.T) {
	dir := t.TempDir()
	rs := populate(t, dir, 5, Options{})
	// One copy damaged (a torn header write): the other one is used.
	flipByte(t, filepath.Join(dir, metaFile), 20)
	expectTampered(t, dir, Options{}, rs, nil)
	// Both damaged: Open refuses the store.
	flipByte(t, filepath.Join(dir, metaFile), 20)
	flipByte(t, filepath.Join(dir, metaFile), headerStride+20)
	if _, err := Open(dir, Options{Logger: quietLogger()}); err == nil {
		t.Fatal("Open with both header copies damaged succeeded")
	}
}

// TestHostCrashRebuild simulates a host crash: the header says the store
// was open under another boot, and the index lost its contents. Open must
// rebuild the index from the records.
func TestHostCrashRebuild(t *testing.T) {
	dir := t.TempDir()
	rs := populate(t, dir, 3000, Options{})
	ds, err := open(dir, Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ixName := ds.ixF.Name()
	hdr := ds.hdr
	keys := ds.keys
	ds.Close()
	hdr.flags |= flagOpen
	hdr.bootID = [16]byte{1, 2, 3}
	fd, _ := unix.Open(filepath.Join(dir, metaFile), unix.O_RDWR, 0)
	if err := writeHeader(fd, &hdr, keys.header, false); err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	// Lose the index contents and tear one record.
	st, _ := os.Stat(ixName)
	os.Truncate(ixName, 0)
	os.Truncate(ixName, st.Size())
	flipByte(t, filepath.Join(dir, recordsFile), int64(rs[7].ID)*slotSize+offInline)
	var lb logBuf
	s := openT(t, dir, Options{Logger: slog.New(slog.NewTextHandler(&lb, nil))})
	defer s.Close()
	if !strings.Contains(lb.String(), "host crashed") || !strings.Contains(lb.String(), "count=1") {
		t.Fatalf("rebuild not logged:\n%s", lb.String())
	}
	for i, r := range rs {
		got, err := s.ByIno(0, r.Ino)
		if i == 7 {
			if err == nil {
				t.Fatalf("torn record found by ino: %+v", got)
			}
			continue
		}
		if err != nil || got.ID != r.ID {
			t.Fatalf("ByIno(%d) after rebuild = %+v %v", r.Ino, got, err)
		}
	}
}

func TestMissingIndexRebuild(t *testing.T) {
	dir := t.TempDir()
	rs := populate(t, dir, 100, Options{})
	m, _ := filepath.Glob(filepath.Join(dir, indexPrefix+"*"))
	for _, p := range m {
		os.Remove(p)
	}
	s := openT(t, dir, Options{})
	defer s.Close()
	for _, r := range rs {
		if got, err := s.ByIno(0, r.Ino); err != nil || got.ID != r.ID {
			t.Fatalf("ByIno after index loss: %+v %v", got, err)
		}
	}
}

// TestENOSPC fills a small tmpfs: Insert must fail with a wrapped ENOSPC,
// and the store must reopen with every earlier record intact.
func TestENOSPC(t *testing.T) {
	// Different sizes run out in different places: growing the records
	// file or growing the index.
	// With write-behind, a Flush stores the newest records through a
	// mapping of the file: blocks must be there first, or the store is
	// a SIGBUS instead of an error.
	for _, size := range []string{"1200k", "2304k", "4m"} {
		t.Run(size, func(t *testing.T) { testENOSPC(t, size, Options{}) })
		t.Run(size+"-write-behind", func(t *testing.T) { testENOSPC(t, size, Options{WriteBehindRecords: true}) })
	}
}

func testENOSPC(t *testing.T, size string, opts Options) {
	mnt := t.TempDir()
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size="+size+",mode=0700"); err != nil {
		t.Fatalf("mount tmpfs (the tests run as root): %v", err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	dir := filepath.Join(mnt, "state")
	s := openT(t, dir, opts)
	flush := func() error {
		if f, ok := s.(Flusher); ok {
			return f.Flush()
		}
		return nil
	}
	var rs []Record
	var err error
	for i := 0; i < 1_000_000; i++ {
		r := rec(0, uint64(i), 1, fmt.Sprint("name-", i))
		if r.ID, err = s.Insert(r); err != nil {
			break
		}
		rs = append(rs, r)
		if err := flush(); err != nil {
			t.Fatalf("Flush of an inserted record on a filling disk: %v", err)
		}
	}
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Insert on a full disk: %v", err)
	}
	t.Logf("after %d records: %v", len(rs), err)
	// Still consistent and usable while full. Later inserts may succeed
	// (a failed preallocation can leave a few blocks, a dropped prepared
	// index table frees some) but must otherwise fail the same way.
	fails := 0
	for i := 0; i < 4000; i++ {
		r := rec(0, 1<<40+uint64(i), 1, "x")
		var err error
		if r.ID, err = s.Insert(r); err == nil {
			rs = append(rs, r)
			if err := flush(); err != nil {
				t.Fatalf("Flush of an inserted record on a full disk: %v", err)
			}
			continue
		}
		if !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("Insert on a full disk: %v", err)
		}
		fails++
	}
	if fails < 1000 {
		t.Fatalf("only %d of 4000 inserts failed on a full disk", fails)
	}
	mustGet(t, s, rs[len(rs)-1])
	rs[0].Name = "renamed-while-full"
	if err := s.Update(rs[0]); err != nil {
		t.Fatalf("Update on a full disk: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close on a full disk: %v", err)
	}
	s = openT(t, dir, opts)
	defer s.Close()
	for _, r := range rs {
		mustGet(t, s, r)
		if got, err := s.ByIno(r.Mount, r.Ino); err != nil || got.ID != r.ID {
			t.Fatalf("ByIno(%d) after ENOSPC reopen: %+v %v", r.Ino, got, err)
		}
	}
}

// The crash test: a child process inserts records and reports each nodeid
// once Insert has returned; the parent SIGKILLs it at a random moment and
// checks that a new process sees every reported record, and never hands
// out a reported nodeid again. Two rounds, so the second child also runs
// on a store recovered from a kill.
const crashEnv = "NODESTORE_CRASH_DIR"

// TestMain runs the crash child when TestCrashSIGKILL starts this binary
// as one (it never returns then), and the tests otherwise.
func TestMain(m *testing.M) {
	if dir := os.Getenv(crashEnv); dir != "" {
		crashChild(dir)
	}
	os.Exit(m.Run())
}

// crashChild inserts records forever, printing each nodeid once Insert
// returned, until the parent kills it.
//
// With NODESTORE_CRASH_WB=n it writes records behind and inserts n at a
// time (a READDIRPLUS), printing them only after Flush returned.
func crashChild(dir string) {
	batch, _ := strconv.Atoi(os.Getenv("NODESTORE_CRASH_WB"))
	ds, err := open(dir, Options{Logger: quietLogger(), CacheBytes: 1 << 16, WriteBehindRecords: batch > 0})
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	if step, _ := strconv.ParseUint(os.Getenv("NODESTORE_CRASH_MIGSTEP"), 10, 64); step > 0 {
		ds.migStep = step // long index migrations, to be killed in one
	}
	var s Store = ds
	base, _ := strconv.ParseUint(os.Getenv("NODESTORE_CRASH_BASE"), 10, 64)
	if batch > 0 {
		ids := make([]NodeID, batch)
		for i := base; ; i += uint64(batch) {
			for j := range ids {
				var err error
				if ids[j], err = s.Insert(rec(0, i+uint64(j), 1, fmt.Sprint("c", i+uint64(j)))); err != nil {
					fmt.Println("ERR", err)
					os.Exit(1)
				}
			}
			if err := ds.Flush(); err != nil {
				fmt.Println("ERR", err)
				os.Exit(1)
			}
			// The replies, after the Flush; a line per write (below
			// PIPE_BUF, so a kill cannot leave half a line).
			for j, id := range ids {
				fmt.Fprintf(os.Stdout, "%d %d\n", id, i+uint64(j))
			}
		}
	}
	for i := base; ; i++ {
		id, err := s.Insert(rec(0, i, 1, fmt.Sprint("c", i)))
		if err != nil {
			fmt.Println("ERR", err)
			os.Exit(1)
		}
		// Unbuffered: the line leaves only after Insert returned.
		fmt.Fprintf(os.Stdout, "%d %d\n", id, i)
	}
}

func TestCrashSIGKILL(t *testing.T) {
	// Round 2 runs index migrations one entry per insert: the grow at
	// 91750 entries then lasts ~13k inserts, and the kill comes 2k inserts
	// into it (the child runs ahead by up to a pipe buffer, ~4k lines).
	rounds := []crashRound{{20000, 0}, {27777, 0}, {-(91750 + 2000), 1}}
	if testing.Short() {
		rounds = []crashRound{{2500, 0}, {3472, 0}}
	}
	crashRounds(t, rounds, 0)
}

// TestCrashSIGKILLWriteBehind is TestCrashSIGKILL with records written
// behind, 300 per Flush: every record acknowledged after its Flush
// survives the kill (the ones inserted since are not acknowledged).
func TestCrashSIGKILLWriteBehind(t *testing.T) {
	rounds := []crashRound{{20000, 0}, {27777, 0}, {-(91750 + 2000), 1}}
	if testing.Short() {
		rounds = []crashRound{{2500, 0}, {3472, 0}}
	}
	crashRounds(t, rounds, 300)
}

type crashRound struct{ killAfter, migStep int }

func crashRounds(t *testing.T, rounds []crashRound, wbBatch int) {
	dir := t.TempDir()
	acked := map[NodeID]uint64{}
	var maxID NodeID
	for round, rd := range rounds {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), crashEnv+"="+dir,
			"NODESTORE_CRASH_BASE="+strconv.Itoa(round*10_000_000),
			"NODESTORE_CRASH_MIGSTEP="+strconv.Itoa(rd.migStep),
			"NODESTORE_CRASH_WB="+strconv.Itoa(wbBatch))
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(out)
		killAfter := rd.killAfter
		if killAfter < 0 {
			killAfter = -killAfter - len(acked)
		}
		n := 0
		for sc.Scan() {
			var id NodeID
			var ino uint64
			if _, err := fmt.Sscanf(sc.Text(), "%d %d", &id, &ino); err != nil {
				t.Fatalf("child: %q", sc.Text())
			}
			if _, dup := acked[id]; dup {
				t.Fatalf("nodeid %d handed out twice", id)
			}
			if id <= maxID && round > 0 && n == 0 {
				t.Fatalf("nodeid %d after restart is not above %d", id, maxID)
			}
			acked[id] = ino
			maxID = max(maxID, id)
			n++
			if n == killAfter {
				cmd.Process.Signal(syscall.SIGKILL)
			}
		}
		err = cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("child did not die of SIGKILL: %v", err)
		}
		t.Logf("round %d: %d inserts acknowledged before SIGKILL", round, n)
		// Wait for the kernel to drop the dead child's flock.
		time.Sleep(10 * time.Millisecond)
		var lb logBuf
		ds, err := open(dir, Options{Logger: slog.New(slog.NewTextHandler(&lb, nil)), CacheBytes: 1 << 16})
		if err != nil {
			t.Fatal(err)
		}
		if rd.migStep > 0 {
			if ds.mig == nil {
				t.Errorf("round %d: child not killed during an index migration (%d records; index bits %d, live %d); adjust killAfter\n%s",
					round, len(acked), ds.ix.bits, ds.ix.live, lb.String())
			} else {
				t.Logf("round %d: killed during an index migration (frontier %d of %d buckets)", round, ds.mig.p-ds.mig.e, ds.mig.old.size())
			}
		}
		var s Store = ds
		for id, ino := range acked {
			want := rec(0, ino, 1, fmt.Sprint("c", ino))
			want.ID = id
			mustGet(t, s, want)
			if got, err := s.ByIno(0, ino); err != nil || got.ID != id {
				t.Fatalf("ByIno(%d) after SIGKILL = %+v %v, want %d", ino, got, err, id)
			}
		}
		id, err := s.Insert(rec(1, 1, 1, "after"))
		if err != nil || id <= maxID {
			t.Fatalf("Insert after SIGKILL = %d %v, want > %d", id, err, maxID)
		}
		maxID = id
		acked[id] = 0 // not checked by ino (mount 1)
		delete(acked, id)
		s.Close()
	}
}

// TestENOSPCIndexGrow runs out of space exactly when the index must grow:
// the Insert fails with ENOSPC, and once space is freed the store carries
// on with every record intact.
func TestENOSPCIndexGrow(t *testing.T) {
	mnt := t.TempDir()
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=8m,mode=0700"); err != nil {
		t.Fatalf("mount tmpfs (the tests run as root): %v", err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	ds, err := open(filepath.Join(mnt, "state"), Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ds.prepFailed = true // no prepared table: the grow must allocate it
	var rs []Record
	for !func() bool { ds.mu.Lock(); defer ds.mu.Unlock(); return ds.ix.needsGrow() }() {
		r := rec(0, uint64(len(rs)), 1, "f")
		if r.ID, err = ds.Insert(r); err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r)
	}
	// Fill the disk.
	filler, err := os.Create(filepath.Join(mnt, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 4096)
	for {
		if _, err := filler.Write(chunk); err != nil {
			break
		}
	}
	filler.Close()
	_, err = ds.Insert(rec(0, 1<<40, 1, "x"))
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "grow reverse index") {
		t.Fatalf("Insert needing an index grow on a full disk: %v", err)
	}
	for _, r := range rs {
		if got, err := ds.ByIno(0, r.Ino); err != nil || got.ID != r.ID {
			t.Fatalf("ByIno(%d) on a full disk: %+v %v", r.Ino, got, err)
		}
	}
	os.Remove(filepath.Join(mnt, "filler"))
	for i := 0; i < 100; i++ {
		r := rec(0, 1<<41+uint64(i), 1, "y")
		if r.ID, err = ds.Insert(r); err != nil {
			t.Fatalf("Insert after freeing space: %v", err)
		}
		rs = append(rs, r)
	}
	if err := ds.Close(); err != nil {
		t.Fatal(err)
	}
	s := openT(t, filepath.Join(mnt, "state"), Options{})
	defer s.Close()
	for _, r := range rs {
		mustGet(t, s, r)
		if got, err := s.ByIno(0, r.Ino); err != nil || got.ID != r.ID {
			t.Fatalf("ByIno(%d) after reopen: %+v %v", r.Ino, got, err)
		}
	}
}

func TestKeyFileLengths(t *testing.T) {
	for _, n := range []int{16, 32, 64, 1024} {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, keyFile), bytes.Repeat([]byte{byte(n)}, n), 0o600)
		rs := populate(t, dir, 3, Options{})
		s := openT(t, dir, Options{})
		for _, r := range rs {
			mustGet(t, s, r)
		}
		s.Close()
		// The same key given directly opens the store too.
		s = openT(t, dir, Options{Key: bytes.Repeat([]byte{byte(n)}, n)})
		s.Close()
	}
	for _, n := range []int{0, 8, 1025} {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, keyFile), make([]byte, n), 0o600)
		if _, err := Open(dir, Options{Logger: quietLogger()}); err == nil {
			t.Fatalf("Open with a %d-byte key file succeeded", n)
		}
	}
}

// TestLookupOrInsertOverTampered: a LOOKUP of a file whose record fails
// its MAC gets a new nodeid, and the index entry of the bad record is
// replaced rather than joined by a second one (lookupForInsertLocked
// decides like indexPutLocked).
func TestLookupOrInsertOverTampered(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, Options{})
	if _, err := s.Insert(rec(0, 1, 0, "")); err != nil {
		t.Fatal(err)
	}
	old, err := s.Insert(rec(0, 42, 1, "victim"))
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	flipByte(t, filepath.Join(dir, recordsFile), int64(old)*slotSize+offInline)
	s = openT(t, dir, Options{})
	got, inserted, err := s.LookupOrInsert(rec(0, 42, 1, "victim"))
	if err != nil || !inserted || got.ID == old {
		t.Fatalf("LookupOrInsert over a tampered record = %+v %v %v, want a new nodeid", got, inserted, err)
	}
	live := s.(*diskStore).ix.live
	s.Close()
	s = openT(t, dir, Options{})
	defer s.Close()
	if r, err := s.ByIno(0, 42); err != nil || r.ID != got.ID {
		t.Fatalf("ByIno after reopen = %+v %v, want nodeid %d", r, err, got.ID)
	}
	if l := s.(*diskStore).ix.live; l != live || l != 2 {
		t.Fatalf("index has %d live entries (%d before reopen), want 2", l, live)
	}
}

// TestSyncConcurrent: Sync runs without the store lock (on duplicated
// descriptors) while inserts, index grows and finally Close go on.
func TestSyncConcurrent(t *testing.T) {
	ds, err := open(t.TempDir(), Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ds.migStep = 1
	done := make(chan error, 1)
	go func() {
		for {
			if err := ds.Sync(); err != nil {
				if errors.Is(err, ErrClosed) {
					err = nil
				}
				done <- err
				return
			}
		}
	}()
	for i := range 20000 {
		if _, err := ds.Insert(Record{Mount: 0, Ino: uint64(i), Name: "s"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := ds.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestHeaderDurableCopy: header writes that are not synced (index grows)
// never overwrite the copy last synced, which holds the current nodeid
// reservation, so a host crash that loses or tears them falls back to it.
func TestHeaderDurableCopy(t *testing.T) {
	dir := t.TempDir()
	ds, err := open(dir, Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer ds.Close()
	readCopy := func(slot int) []byte {
		b := make([]byte, headerSize)
		if err := preadFull(int(ds.metaF.Fd()), b, int64(slot*headerStride)); err != nil {
			t.Fatal(err)
		}
		return b
	}
	durable := ds.hdrDurable
	want := readCopy(durable)
	seq := ds.hdr.seq
	for i := range 10000 { // grows the index from 4096 buckets twice
		if _, err := ds.Insert(Record{Mount: 0, Ino: uint64(i), Name: "h"}); err != nil {
			t.Fatal(err)
		}
	}
	if ds.hdr.seq < seq+4 {
		t.Fatalf("header seq %d → %d: the index did not grow", seq, ds.hdr.seq)
	}
	if ds.hdrDurable != durable || !bytes.Equal(readCopy(durable), want) {
		t.Fatal("an unsynced header write overwrote the durable copy")
	}
	h, err := decodeHeader(readCopy(durable), ds.keys.header)
	if err != nil || h.reserved != ds.hdr.reserved {
		t.Fatalf("durable copy: %+v %v, reservation want %d", h, err, ds.hdr.reserved)
	}
	// A reservation is synced, to the other copy, which becomes durable.
	ds.mu.Lock()
	ds.next = ds.hdr.reserved
	ds.mu.Unlock()
	if _, err := ds.Insert(Record{Mount: 0, Ino: 1 << 30, Name: "r"}); err != nil {
		t.Fatal(err)
	}
	if ds.hdrDurable == durable {
		t.Fatal("a reservation did not move the durable copy")
	}
	if h, err := decodeHeader(readCopy(ds.hdrDurable), ds.keys.header); err != nil || h.reserved != ds.hdr.reserved {
		t.Fatalf("durable copy after reservation: %+v %v, want reservation %d", h, err, ds.hdr.reserved)
	}
}

// crashCopy copies the state directory of a store that is still open: what
// a process killed now leaves behind (its writes are in the page cache).
func crashCopy(t *testing.T, dir string) string {
	t.Helper()
	dst := t.TempDir()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// TestCrashWriteBehind: index entries written behind (not yet in the
// index file) when the process dies are put back from the records by the
// next Open, the newest record of a key winning; an Update that moves an
// older record onto a key flushes them first, so recovery cannot undo it.
func TestCrashWriteBehind(t *testing.T) {
	dir := t.TempDir()
	ds, err := open(dir, Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer ds.Close()
	const n = 2000 // < pendMax and no index grow: nothing flushed but by the Update
	ids := make([]NodeID, n)
	insert := func(from, to int) {
		for i := from; i < to; i++ {
			if ids[i], err = ds.Insert(rec(0, uint64(i), 1, "w")); err != nil {
				t.Fatal(err)
			}
		}
	}
	insert(0, n/2)
	// An older record moved onto the key of a newer one.
	newer, err := ds.Insert(rec(0, 5000, 1, "newer"))
	if err != nil {
		t.Fatal(err)
	}
	moved := rec(0, 5000, 1, "moved")
	moved.ID = ids[10]
	if err := ds.Update(moved); err != nil {
		t.Fatal(err)
	}
	insert(n/2, n)
	if len(ds.ix.pend) == 0 {
		t.Fatal("no index entries written behind")
	}
	// Host inode reuse: new records take over a key whose entry is in
	// the file and one whose entry is pending.
	taker, err := ds.Insert(rec(0, 7, 1, "taker"))
	if err != nil {
		t.Fatal(err)
	}
	taker2, err := ds.Insert(rec(0, n-1, 1, "taker2"))
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{20, n - 2} {
		if err := ds.Delete(ids[i]); err != nil {
			t.Fatal(err)
		}
	}
	// taker2 took its key from a record newer than the mark, which
	// flushed the index (see insertLocked): entries written behind since.
	var late []NodeID
	for i := range 100 {
		id, err := ds.Insert(rec(0, uint64(6000+i), 1, "late"))
		if err != nil {
			t.Fatal(err)
		}
		late = append(late, id)
	}
	if len(ds.ix.pend) == 0 {
		t.Fatal("no index entries written behind after the takers")
	}
	var lb logBuf
	c, err := open(crashCopy(t, dir), Options{Logger: slog.New(slog.NewTextHandler(&lb, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !strings.Contains(lb.String(), "put back") {
		t.Errorf("no recovery logged:\n%s", lb.String())
	}
	for i := range n {
		want := ids[i]
		switch i {
		case 7:
			want = taker
		case n - 1:
			want = taker2
		case 10:
			continue
		case 20, n - 2:
			if _, err := c.ByIno(0, uint64(i)); !errors.Is(err, ErrNotFound) {
				t.Fatalf("ByIno(%d) of a deleted record: %v", i, err)
			}
			continue
		}
		if r, err := c.ByIno(0, uint64(i)); err != nil || r.ID != want {
			t.Fatalf("ByIno(%d) after the crash = %d %v, want %d", i, r.ID, err, want)
		}
	}
	for i, id := range late {
		if r, err := c.ByIno(0, uint64(6000+i)); err != nil || r.ID != id {
			t.Fatalf("ByIno(%d) after the crash = %d %v, want %d", 6000+i, r.ID, err, id)
		}
	}
	if r, err := c.ByIno(0, 5000); err != nil || r.ID != ids[10] {
		t.Fatalf("ByIno(5000) = %d %v, want the moved record %d (not %d)", r.ID, err, ids[10], newer)
	}
	checkMirrorT(t, c)
}

// The records file grows by allocChunk at a time: a fresh store's first
// allocation holds the slots of the first 16384 nodes, so no insert among
// them waits for another fallocate (each one stalled the requests queued
// behind it, see allocChunk), and the next chunk comes only after them.
func TestRecordsPreallocatedInLargeChunks(t *testing.T) {
	dir := t.TempDir()
	s, err := open(dir, Options{Logger: quietLogger(), WriteBehindRecords: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	size := func() int64 {
		t.Helper()
		var st unix.Stat_t
		if err := unix.Fstat(s.recFD, &st); err != nil {
			t.Fatal(err)
		}
		return st.Size
	}
	perChunk := allocChunk / slotSize
	if perChunk < 16384 {
		t.Fatalf("allocation chunk of %d slots, want at least 16384", perChunk)
	}
	for i := 0; s.next < NodeID(perChunk); i++ {
		if _, _, err := s.LookupOrInsertHeld(rec(0, uint64(i)+2, 1, "f")); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			if got := size(); got != allocChunk {
				t.Fatalf("records file of %d bytes after the first insert, want one chunk of %d", got, allocChunk)
			}
		}
	}
	if got := size(); got != allocChunk {
		t.Fatalf("records file of %d bytes after %d nodes, want still %d", got, s.next-1, allocChunk)
	}
	if _, _, err := s.LookupOrInsertHeld(rec(0, 1<<30, 1, "next")); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := size(); got != 2*allocChunk {
		t.Fatalf("records file of %d bytes after nodeid %d, want two chunks (%d)", got, s.next-1, 2*allocChunk)
	}
}
