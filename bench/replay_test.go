package bench

import (
	"bytes"
	le "encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/govirtiofsd/govirtiofsd/internal/vhostfront"
	"github.com/hanwen/go-fuse/v2/fuse"
)

func req(op uint32, node uint64, arg []byte) []byte {
	h := fuse.InHeader{Length: uint32(inHeaderLen + len(arg)), Opcode: op, NodeId: node}
	return append(append([]byte(nil), structView(&h)...), arg...)
}

func reply(body []byte) []byte {
	h := fuse.OutHeader{Length: uint32(outHeaderLen + len(body))}
	return append(append([]byte(nil), structView(&h)...), body...)
}

// A recording reads back as written, and the replayer maps the nodeids
// and file handles of later requests through the peer's replies.
func TestRecordingRoundTripAndMapping(t *testing.T) {
	co := fuse.CreateOut{}
	co.NodeId, co.Fh = 7, 0 // file handle 0 is a handle
	cin := fuse.CreateIn{}
	win := fuse.WriteIn{Fh: 0, Size: 3}
	bf := make([]byte, 8+16)
	le.LittleEndian.PutUint32(bf, 1)
	le.LittleEndian.PutUint64(bf[8:], 7)
	le.LittleEndian.PutUint64(bf[16:], 1)
	rec := &Recording{Meta: RecordingMeta{Workload: "test"}, Records: []Record{
		{Req: req(opCreate, 1, append(argOf(&cin), "f\x00"...)), Reply: reply(structView(&co))},
		{Req: req(opWrite, 7, append(argOf(&win), "abc"...)), Reply: reply(make([]byte, 8))},
		{Req: req(vhostfront.OpBatchForget, 0, bf)},
	}}
	path := filepath.Join(t.TempDir(), "r.rec.gz")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeRecording(f, rec); err != nil {
		t.Fatal(err)
	}
	f.Close()
	back, err := ReadRecording(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(back.Records) != 3 || back.Meta.Workload != "test" || back.Records[2].Reply != nil ||
		!bytes.Equal(back.Records[1].Req, rec.Records[1].Req) {
		t.Fatalf("read back %+v", back)
	}

	rp := newReplayer(nil)
	peer := co
	peer.NodeId, peer.Fh = 70, 700
	rp.learn(opCreate, nil, structView(&co), structView(&peer))
	var h fuse.InHeader
	r := back.Records[1].Req
	copy(structView(&h), r)
	arg := append([]byte(nil), r[inHeaderLen:]...)
	node, ok := rp.mapReq(&h, arg)
	if !ok || node != 70 || le.LittleEndian.Uint64(arg) != 700 || string(arg[len(arg)-3:]) != "abc" {
		t.Errorf("WRITE mapped to node %d fh %d ok %v", node, le.LittleEndian.Uint64(arg), ok)
	}
	r = back.Records[2].Req
	copy(structView(&h), r)
	arg = append([]byte(nil), r[inHeaderLen:]...)
	if _, ok := rp.mapReq(&h, arg); !ok || le.LittleEndian.Uint64(arg[8:]) != 70 {
		t.Errorf("BATCH_FORGET mapped to %x", arg)
	}
	// The recording in the repository loads.
	if rec, err := ReadRecording("testdata/mixed.rec.gz"); err != nil || len(rec.Records) < 1000 {
		t.Errorf("testdata/mixed.rec.gz: %v", err)
	}
}

func TestStraceParse(t *testing.T) {
	for _, c := range []struct{ line, want string }{
		{`1234 statx(5</var/tmp/x/stat>, "f0000001", AT_STATX_SYNC_AS_STAT|AT_SYMLINK_NOFOLLOW, STATX_ALL, {...}) = 0`, "statx(file)"},
		{`1234 write(12<anon_inode:[eventfd]>, "\1\0\0\0\0\0\0\0", 8) = 8`, "write(eventfd)"},
		{`77 epoll_pwait(4<anon_inode:[eventpoll]>, [], 128, 0, NULL, 0) = 0`, "epoll_pwait(epoll)"},
		{`77 futex(0xc000100148, FUTEX_WAIT_PRIVATE, 0, NULL <unfinished ...>`, "futex"},
		{`77 <... futex resumed>) = 0`, ""},
		{`77 openat(AT_FDCWD</>, "/proc/self/fd", O_RDONLY) = 9</proc/1/fd>`, "openat"},
		{`77 --- SIGURG {si_signo=SIGURG, si_code=SI_TKILL} ---`, ""},
		{`77 +++ exited with 0 +++`, ""},
		{`ppoll([{fd=5<anon_inode:[eventfd]>, events=POLLIN}], 2, NULL, NULL, 8) = 1`, "ppoll"},
	} {
		if got := straceCall(c.line); got != c.want {
			t.Errorf("%s: %q, want %q", c.line, got, c.want)
		}
	}
	total, s := syscallSummary(map[string]int{"statx(file)": 100, "write(eventfd)": 100, "futex": 1}, 100)
	if total != 2.01 || s != "2.01 = 1.00 statx(file) + 1.00 write(eventfd) + 0.01 other" {
		t.Errorf("summary %v %q", total, s)
	}
}

// With requests in flight, an RMDIR follows what was done inside the
// directory, and no record depends on itself.
func TestReplayDeps(t *testing.T) {
	mk := fuse.EntryOut{NodeId: 5}
	co := fuse.CreateOut{}
	co.NodeId, co.Fh = 6, 1
	mkin := fuse.MkdirIn{}
	cin := fuse.CreateIn{}
	rin := fuse.ReleaseIn{Fh: 1}
	rnin := make([]byte, 8)
	le.LittleEndian.PutUint64(rnin, 5) // rename within d: newdir == header nodeid
	rec := &Recording{Records: []Record{
		{Req: req(opMkdir, 1, append(argOf(&mkin), "d\x00"...)), Reply: reply(structView(&mk))},
		{Req: req(opCreate, 5, append(argOf(&cin), "f\x00"...)), Reply: reply(structView(&co))},
		{Req: req(vhostfront.OpRelease, 6, argOf(&rin)), Reply: reply(nil)},
		{Req: req(opRename, 5, append(rnin, "f\x00g\x00"...)), Reply: reply(nil)},
		{Req: req(opUnlink, 5, []byte("g\x00")), Reply: reply(nil)},
		{Req: req(opRmdir, 1, []byte("d\x00")), Reply: reply(nil)},
	}}
	deps := rec.deps()
	for i, d := range deps {
		for _, j := range d {
			if j >= i {
				t.Errorf("record %d depends on %d", i, j)
			}
		}
	}
	has := func(i, j int) bool {
		for _, x := range deps[i] {
			if x == j {
				return true
			}
		}
		return false
	}
	if !has(5, 4) || !has(4, 3) || !has(2, 1) {
		t.Errorf("deps %v", deps)
	}
}
