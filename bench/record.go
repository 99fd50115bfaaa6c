package bench

import (
	"bufio"
	"compress/gzip"
	"context"
	le "encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/govirtiofsd/govirtiofsd/internal/vhostfront"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// A recording is the FUSE request stream of a real workload, with the
// reply each request got, to be replayed to every vhost peer (replay.go).
//
// File format (the file is gzip-compressed):
//
//	"govirtiofsd-fuse-recording 1\n"
//	one line of JSON: RecordingMeta
//	records until EOF, each:
//	  u32 little-endian n, then n bytes: the request as the kernel sent it
//	    (struct fuse_in_header + arguments + payload, e.g. WRITE data)
//	  u32 little-endian m, then m bytes: the reply (struct fuse_out_header
//	    + body); m = 0xffffffff: the request has no reply (FORGET,
//	    BATCH_FORGET). The body of a READ reply is left out (m = 16), its
//	    header keeps the length the daemon returned.
//
// Records are in the order the kernel sent the requests (read from
// /dev/fuse). FUSE_INIT is the first record; INTERRUPT and DESTROY are not
// recorded. Unique values, nodeids and file handles are those of the
// recording daemon: a replay renumbers unique and maps nodeids and handles
// through the replies of the peer it replays to.

const recMagic = "govirtiofsd-fuse-recording 1\n"

// noReply marks a record without a reply.
const noReply = 0xffffffff

// RecordingMeta is the JSON header of a recording.
type RecordingMeta struct {
	Created  time.Time `json:"created"`
	Kernel   string    `json:"kernel"`
	Daemon   string    `json:"daemon"`   // command line of the recording daemon
	Workload string    `json:"workload"` // the script that ran on the mount
	Source   string    `json:"source"`   // the tree the workload extracted
	Requests int       `json:"requests"`
	// InitFlags: the FUSE_INIT flags the kernel was allowed to ask for
	// (masked to what the bench's front-end negotiates).
	InitFlags uint32 `json:"init_flags"`
}

// Record is one request and its reply.
type Record struct {
	Req   []byte
	Reply []byte // nil: no reply
}

// Recording is a loaded recording.
type Recording struct {
	Meta    RecordingMeta
	Records []Record

	depsOnce sync.Once
	depList  [][]int
}

func writeRecording(w io.Writer, rec *Recording) error {
	zw := gzip.NewWriter(w)
	bw := bufio.NewWriter(zw)
	js, err := json.Marshal(rec.Meta)
	if err != nil {
		return err
	}
	bw.WriteString(recMagic)
	bw.Write(js)
	bw.WriteByte('\n')
	var n [4]byte
	for _, r := range rec.Records {
		le.LittleEndian.PutUint32(n[:], uint32(len(r.Req)))
		bw.Write(n[:])
		bw.Write(r.Req)
		if r.Reply == nil {
			le.LittleEndian.PutUint32(n[:], noReply)
			bw.Write(n[:])
			continue
		}
		le.LittleEndian.PutUint32(n[:], uint32(len(r.Reply)))
		bw.Write(n[:])
		bw.Write(r.Reply)
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	return zw.Close()
}

// ReadRecording loads a recording written by RecordWorkload.
func ReadRecording(path string) (*Recording, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	br := bufio.NewReader(zr)
	magic := make([]byte, len(recMagic))
	if _, err := io.ReadFull(br, magic); err != nil || string(magic) != recMagic {
		return nil, fmt.Errorf("%s: not a FUSE recording", path)
	}
	line, err := br.ReadBytes('\n')
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	rec := &Recording{}
	if err := json.Unmarshal(line, &rec.Meta); err != nil {
		return nil, fmt.Errorf("%s: header: %w", path, err)
	}
	readBlock := func() ([]byte, bool, error) {
		var n [4]byte
		if _, err := io.ReadFull(br, n[:]); err != nil {
			return nil, false, err
		}
		m := le.LittleEndian.Uint32(n[:])
		if m == noReply {
			return nil, false, nil
		}
		if m > 64<<20 {
			return nil, false, fmt.Errorf("record of %d bytes", m)
		}
		b := make([]byte, m)
		_, err := io.ReadFull(br, b)
		return b, true, err
	}
	for {
		req, ok, err := readBlock()
		if err == io.EOF {
			break
		}
		if err != nil || !ok {
			return nil, fmt.Errorf("%s: record %d: request: %v", path, len(rec.Records), err)
		}
		if len(req) < inHeaderLen {
			return nil, fmt.Errorf("%s: record %d: request of %d bytes", path, len(rec.Records), len(req))
		}
		reply, _, err := readBlock()
		if err != nil {
			return nil, fmt.Errorf("%s: record %d: reply: %v", path, len(rec.Records), err)
		}
		if reply != nil && len(reply) < outHeaderLen {
			return nil, fmt.Errorf("%s: record %d: reply of %d bytes", path, len(rec.Records), len(reply))
		}
		rec.Records = append(rec.Records, Record{Req: req, Reply: reply})
	}
	return rec, nil
}

const (
	inHeaderLen  = int(unsafe.Sizeof(fuse.InHeader{}))
	outHeaderLen = int(unsafe.Sizeof(fuse.OutHeader{}))
)

// FUSE opcodes used by recording and replay (include/uapi/linux/fuse.h).
const (
	opSymlink       = 6
	opMknod         = 8
	opRename        = 12
	opLink          = 13
	opSetattr       = 4
	opFlush         = 25
	opFsyncdir      = 30
	opGetlk         = 31
	opSetlk         = 32
	opSetlkw        = 33
	opInterrupt     = 36
	opGetxattr      = 22
	opListxattr     = 23
	opIoctl         = 39
	opPoll          = 40
	opFallocate     = 43
	opRename2       = 45
	opLseek         = 46
	opCopyFileRange = 47
	opTmpfile       = 51
	opStatx         = 52
)

// RecordConfig says what to record.
type RecordConfig struct {
	// Peer is the vhost peer (VhostPeers) that answers the recorded
	// requests; "" = rust-virtiofsd.
	Peer        string
	Govirtiofsd string // binary for the govirtiofsd peers; "" = go build in ModuleDir
	ModuleDir   string
	Script      string // workload, run with sh; $MNT, $SRC, $TMP set
	Source      string // tree for $SRC
	Out         string // recording file
	WorkDir     string // parent of the scratch directory ("" = /var/tmp)
	Log         *slog.Logger
}

// RecordWorkload runs cfg.Script on a FUSE mount (/dev/fuse) whose
// requests are forwarded, as they are, through the Go vhost-user front-end
// to a vhost peer (cfg.Peer) and records every request with its reply.
// Needs root (mount(2), drop_caches in the script).
func RecordWorkload(ctx context.Context, cfg RecordConfig) error {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	parent := cfg.WorkDir
	if parent == "" {
		parent = "/var/tmp"
	}
	work, err := os.MkdirTemp(parent, "govirtiofsd-record-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	if cfg.Peer == "" {
		cfg.Peer = PeerRust
	}
	d := &Daemon{Name: cfg.Peer}
	var gov, govHelp string
	var govErr error
	switch cfg.Peer {
	case PeerGovVhost, PeerGovVhostNoState:
		bc := Config{ModuleDir: cfg.ModuleDir}
		gov, govErr = binary(ctx, &bc, cfg.Govirtiofsd, govirtiofsdPkg, filepath.Join(work, "govirtiofsd"))
		if govErr == nil {
			govHelp = helpText(ctx, gov)
		}
	case PeerCVirtiofsd, PeerRust, PeerRustFH:
	default:
		return fmt.Errorf("cannot record through %q (one of %s)", cfg.Peer, strings.Join(VhostPeers, ", "))
	}
	vhostPeer(d, gov, govErr, govHelp, nil)
	if d.Unavailable != "" {
		return fmt.Errorf("%s: %s", cfg.Peer, d.Unavailable)
	}
	if cfg.Source == "" {
		return errors.New("no source tree to extract")
	}
	shared, mnt, tmp := filepath.Join(work, "shared"), filepath.Join(work, "mnt"), filepath.Join(work, "tmp")
	for _, d := range []string{shared, mnt, tmp} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	sock := filepath.Join(work, "vhost.sock")
	state := filepath.Join(work, "state")
	if err := os.MkdirAll(state, 0o700); err != nil {
		return err
	}
	argv := d.Argv(shared, sock, state)
	lf := filepath.Join(work, "daemon.log")
	cmd := exec.Command(argv[0], argv[1:]...)
	logf, err := os.Create(lf)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	inst := &instance{d: d, pid: cmd.Process.Pid, cmd: cmd, done: make(chan struct{}), log: lf, queues: 1}
	go func() { inst.err = cmd.Wait(); close(inst.done) }()
	defer inst.stop()
	f, err := inst.dial(ctx, sock)
	if err != nil {
		return fmt.Errorf("%w%s", err, logTail(lf))
	}
	inst.front = f

	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	devClosed := false
	defer func() {
		if !devClosed {
			unix.Close(fd)
		}
	}()
	opts := fmt.Sprintf("fd=%d,rootmode=40000,user_id=0,group_id=0,allow_other", fd)
	if err := unix.Mount("govirtiofsd-record", mnt, "fuse.govirtiofsd-record", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		return fmt.Errorf("mount %s: %w", mnt, err)
	}
	mounted := true
	defer func() {
		if mounted {
			unix.Unmount(mnt, unix.MNT_DETACH)
		}
	}()

	s := &recorder{f: f, fd: fd, log: log}
	served := make(chan error, 1)
	go func() { served <- s.serve() }()

	sc := exec.CommandContext(ctx, "sh", "-eu", cfg.Script)
	sc.Env = append(os.Environ(), "MNT="+mnt, "SRC="+cfg.Source, "TMP="+tmp)
	sc.Stdout, sc.Stderr = os.Stderr, os.Stderr
	sc.Dir = tmp
	log.Info("running workload", "script", cfg.Script, "mnt", mnt)
	scriptErr := sc.Run()
	if err := unix.Unmount(mnt, 0); err != nil {
		log.Warn("umount", "err", err)
		unix.Unmount(mnt, unix.MNT_DETACH)
	}
	mounted = false
	// The kernel answers further reads with ENODEV once unmounted.
	select {
	case err := <-served:
		if err != nil {
			return err
		}
	case <-time.After(10 * time.Second):
		return errors.New("/dev/fuse reader did not stop after umount")
	}
	s.wg.Wait()
	unix.Close(fd)
	devClosed = true
	if scriptErr != nil {
		return fmt.Errorf("workload %s: %w", cfg.Script, scriptErr)
	}
	if s.failed != nil {
		return s.failed
	}

	var u unix.Utsname
	unix.Uname(&u)
	rec := &Recording{Meta: RecordingMeta{
		Created: time.Now().UTC(), Kernel: unix.ByteSliceToString(u.Release[:]),
		Daemon:   cfg.Peer + ": " + strings.Join(d.noteArgv(argv, work), " "),
		Workload: filepath.Base(cfg.Script), Source: filepath.Base(cfg.Source),
		InitFlags: vhostInitFlags,
	}}
	sort.Slice(s.recs, func(i, j int) bool { return s.recs[i].seq < s.recs[j].seq })
	for _, r := range s.recs {
		rec.Records = append(rec.Records, r.Record)
	}
	rec.Meta.Requests = len(rec.Records)
	out, err := os.Create(cfg.Out)
	if err != nil {
		return err
	}
	if err := writeRecording(out, rec); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	log.Info("recorded", "requests", len(rec.Records), "out", cfg.Out)
	return nil
}

func (d *Daemon) noteArgv(argv []string, work string) []string {
	out := make([]string, len(argv))
	for i, a := range argv {
		out[i] = strings.ReplaceAll(a, work, "$WORK")
	}
	return out
}

// recorder forwards /dev/fuse requests to the front-end and records them.
type recorder struct {
	f   *vhostfront.Frontend
	fd  int
	log *slog.Logger
	wg  sync.WaitGroup

	mu     sync.Mutex
	seq    int
	recs   []seqRecord
	failed error
}

type seqRecord struct {
	seq int
	Record
}

// serve reads requests until the connection is gone.
func (s *recorder) serve() error {
	buf := make([]byte, 2<<20+64<<10)
	for {
		n, err := unix.Read(s.fd, buf)
		switch {
		case err == unix.EINTR || err == unix.ENOENT || err == unix.EAGAIN:
			continue
		case err == unix.ENODEV:
			return nil
		case err != nil:
			return fmt.Errorf("read /dev/fuse: %w", err)
		}
		if n < inHeaderLen {
			return fmt.Errorf("read /dev/fuse: %d bytes", n)
		}
		req := append([]byte(nil), buf[:n]...)
		var h fuse.InHeader
		copy(structView(&h), req)
		switch h.Opcode {
		case opInterrupt:
			continue // the interrupted request is answered anyway
		case vhostfront.OpDestroy:
			s.reply(h.Unique, 0, nil)
			continue
		}
		s.mu.Lock()
		seq := s.seq
		s.seq++
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.forward(seq, h, req)
		}()
	}
}

// forward sends one request to the daemon, answers the kernel and
// records both.
func (s *recorder) forward(seq int, h fuse.InHeader, req []byte) {
	arg := append([]byte(nil), req[inHeaderLen:]...)
	if h.Opcode == vhostfront.OpInit {
		// Let the kernel ask only for what the bench's front-end asks
		// for, so that the replay sees the same protocol.
		var in fuse.InitIn
		copy(structView(&in)[inHeaderLen:], arg)
		in.Flags &= vhostInitFlags
		in.Flags2 = 0
		arg = append([]byte(nil), structView(&in)[inHeaderLen:inHeaderLen+len(arg)]...)
		copy(req[inHeaderLen:], arg)
	}
	if h.Opcode == vhostfront.OpForget || h.Opcode == vhostfront.OpBatchForget {
		_, err := s.f.FUSE(vhostfront.HiprioQueue, h.Opcode, h.NodeId, arg, nil, -1)
		if err != nil {
			s.fail(fmt.Errorf("forward opcode %d: %w", h.Opcode, err))
		}
		s.add(seq, req, nil)
		return
	}
	outLen := max(4096, sizeArg(h.Opcode, arg))
	r, err := s.f.FUSE(vhostfront.RequestQueue, h.Opcode, h.NodeId, arg, nil, outLen)
	if err != nil {
		s.fail(fmt.Errorf("forward opcode %d: %w", h.Opcode, err))
		s.reply(h.Unique, -int32(syscall.EIO), nil)
		return
	}
	s.reply(h.Unique, r.Header.Status, r.Body)
	oh := r.Header
	oh.Unique = h.Unique
	rep := append([]byte(nil), structView(&oh)...)
	if h.Opcode != vhostfront.OpRead {
		rep = append(rep, r.Body...)
	}
	s.add(seq, req, rep)
}

func (s *recorder) add(seq int, req, reply []byte) {
	s.mu.Lock()
	s.recs = append(s.recs, seqRecord{seq, Record{Req: req, Reply: reply}})
	s.mu.Unlock()
}

func (s *recorder) fail(err error) {
	s.mu.Lock()
	if s.failed == nil {
		s.failed = err
	}
	s.mu.Unlock()
	s.log.Warn("recording", "err", err)
}

// reply writes a reply to /dev/fuse.
func (s *recorder) reply(unique uint64, status int32, body []byte) {
	oh := fuse.OutHeader{Length: uint32(outHeaderLen + len(body)), Status: status, Unique: unique}
	msg := append(append([]byte(nil), structView(&oh)...), body...)
	if _, err := unix.Write(s.fd, msg); err != nil && err != unix.ENOENT && err != unix.ENODEV {
		s.fail(fmt.Errorf("write /dev/fuse: %w", err))
	}
}

// sizeArg is the reply size a request announces (READ, READDIR, xattrs).
func sizeArg(op uint32, arg []byte) int {
	switch op {
	case vhostfront.OpRead, vhostfront.OpReaddir, vhostfront.OpReaddirplus:
		if len(arg) >= 20 {
			return int(le.LittleEndian.Uint32(arg[16:]))
		}
	case opGetxattr, opListxattr:
		if len(arg) >= 4 {
			return int(le.LittleEndian.Uint32(arg[0:]))
		}
	}
	return 0
}

// structView views a wire struct as bytes.
func structView[T any](p *T) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(p)), unsafe.Sizeof(*p))
}
