package bench

import (
	"bytes"
	"context"
	le "encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/govirtiofsd/govirtiofsd/internal/vhostfront"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Replay of a recording (record.go) to a vhost peer: the requests are sent
// one at a time in the recorded order, unique renumbered by the
// front-end, nodeids and file handles (and READDIR offsets) mapped from
// the recording daemon's values to the ones this peer returned in its
// replies to the same recorded requests.

var opNames = map[uint32]string{
	1: "LOOKUP", 2: "FORGET", 3: "GETATTR", 4: "SETATTR", 5: "READLINK", 6: "SYMLINK", 8: "MKNOD",
	9: "MKDIR", 10: "UNLINK", 11: "RMDIR", 12: "RENAME", 13: "LINK", 14: "OPEN", 15: "READ", 16: "WRITE",
	17: "STATFS", 18: "RELEASE", 20: "FSYNC", 21: "SETXATTR", 22: "GETXATTR", 23: "LISTXATTR",
	24: "REMOVEXATTR", 25: "FLUSH", 26: "INIT", 27: "OPENDIR", 28: "READDIR", 29: "RELEASEDIR",
	30: "FSYNCDIR", 31: "GETLK", 32: "SETLK", 33: "SETLKW", 34: "ACCESS", 35: "CREATE", 36: "INTERRUPT",
	37: "BMAP", 38: "DESTROY", 39: "IOCTL", 40: "POLL", 42: "BATCH_FORGET", 43: "FALLOCATE",
	44: "READDIRPLUS", 45: "RENAME2", 46: "LSEEK", 47: "COPY_FILE_RANGE", 48: "SETUPMAPPING",
	49: "REMOVEMAPPING", 50: "SYNCFS", 51: "TMPFILE", 52: "STATX",
}

func opNameOf(op uint32) string {
	if n, ok := opNames[op]; ok {
		return n
	}
	return fmt.Sprintf("op%d", op)
}

// RecordingSummary says what a recording holds: requests per opcode.
func RecordingSummary(rec *Recording) string {
	cnt := map[uint32]int{}
	for _, r := range rec.Records {
		cnt[le.LittleEndian.Uint32(r.Req[4:])]++
	}
	ops := make([]uint32, 0, len(cnt))
	for op := range cnt {
		ops = append(ops, op)
	}
	sort.Slice(ops, func(i, j int) bool { return cnt[ops[i]] > cnt[ops[j]] || cnt[ops[i]] == cnt[ops[j]] && ops[i] < ops[j] })
	var parts []string
	for _, op := range ops {
		parts = append(parts, fmt.Sprintf("%s %d", opNameOf(op), cnt[op]))
	}
	return fmt.Sprintf("%d requests (%s, recorded %s on kernel %s from %s of %s): %s",
		len(rec.Records), rec.Meta.Daemon, rec.Meta.Created.Format("2006-01-02"), rec.Meta.Kernel,
		rec.Meta.Workload, rec.Meta.Source, strings.Join(parts, ", "))
}

// replayPasses: the recording is replayed this many times per sample (it
// ends with the tree removed, so every pass starts from the same state).
const replayPasses = 3

// vhostReplayJob replays cfg.Replay to each vhost peer.
func vhostReplayJob(cfg *Config) *job {
	var rec *Recording
	var recErr error
	if cfg.Replay == "" {
		recErr = fmt.Errorf("no recording (-replay)")
	} else if _, err := os.Stat(cfg.Replay); err != nil {
		recErr = err
	}
	load := func() (*Recording, error) {
		if rec == nil && recErr == nil {
			rec, recErr = ReadRecording(cfg.Replay)
		}
		return rec, recErr
	}
	desc := "the recorded mixed stream (bench/testdata/mixed.rec.gz: tar x of a source tree, drop_caches, find -ls, stat, reading files, an edit, grep -r, rm -rf)"
	return &job{
		name: "vhost-replay-mixed", transports: []Transport{Vhost},
		missing: func() string {
			if _, err := load(); err != nil {
				return "no recording: " + err.Error()
			}
			return ""
		},
		cleanup: func(shared string) error { return os.RemoveAll(filepath.Join(shared, "mixed")) },
		rows: []Row{
			{Name: "vhost-replay-mixed", Unit: "ops/s", HigherBetter: true,
				Desc: fmt.Sprintf("%s replayed %d times on a fresh daemon, one request at a time in the recorded order, nodeids, file handles and directory offsets mapped through this peer's replies: requests (FORGETs included) per second", desc, replayPasses)},
			{Name: "vhost-replay-mixed-p50", Unit: "µs", Desc: "median latency of those requests"},
			{Name: "vhost-replay-mixed-p99", Unit: "µs", Desc: "p99 latency of those requests"},
			{Name: "vhost-replay-mixed-diff", Unit: "replies", NoRatio: true,
				Desc: "replies per pass whose status differs from the recording's (the peer answers some request differently), plus requests skipped because an earlier one failed"},
			{Name: "vhost-replay-mixed-w16", Unit: "ops/s", HigherBetter: true,
				Desc: fmt.Sprintf("the same stream replayed %d more times with up to 16 requests in flight: a request is sent, in recorded order, once every earlier request sharing a nodeid or file handle with it (a directory's for name operations) has been answered", replayPasses)},
			{Name: "vhost-replay-mixed-w16-p99", Unit: "µs", Desc: "p99 latency of those requests"},
		},
		run: func(ctx context.Context, e *Env) (map[string]float64, error) {
			rec, err := load()
			if err != nil {
				return nil, err
			}
			passes := func(window int) (lat []time.Duration, el time.Duration, diffs int, err error) {
				row := "vhost-replay-mixed"
				if window > 1 {
					row += fmt.Sprintf("-w%d", window)
				}
				m := e.cpuStart()
				defer func() {
					if err == nil {
						e.cpuOps(row, m, float64(len(lat)), "request")
					}
				}()
				for range replayPasses {
					rp := newReplayer(e.front)
					l, d, err := rp.run(ctx, rec, window)
					if err != nil {
						return nil, 0, 0, err
					}
					lat = append(lat, l...)
					el += d
					diffs += rp.diffs + rp.skipped
					if rp.skipped > len(rec.Records)/100 {
						return nil, 0, 0, fmt.Errorf("replay diverged: %d requests skipped, %d differing replies (%s)", rp.skipped, rp.diffs, rp.diffSummary())
					}
					if rp.diffs > 0 && e.Cfg.Log != nil {
						e.Cfg.Log.Info("replay differs", "window", window, "diffs", rp.diffs, "skipped", rp.skipped, "what", rp.diffSummary())
					}
				}
				return lat, el, diffs, nil
			}
			out := map[string]float64{}
			lat, el, diffs, err := passes(1)
			if err != nil {
				return nil, err
			}
			out["vhost-replay-mixed"] = float64(len(lat)) / el.Seconds()
			out["vhost-replay-mixed-p50"] = percentileUS(lat, 0.5)
			out["vhost-replay-mixed-p99"] = percentileUS(lat, 0.99)
			out["vhost-replay-mixed-diff"] = float64(diffs) / replayPasses
			if e.want("vhost-replay-mixed-w16") || e.want("vhost-replay-mixed-w16-p99") {
				lat, el, _, err := passes(16)
				if err != nil {
					return nil, fmt.Errorf("16 in flight: %w", err)
				}
				out["vhost-replay-mixed-w16"] = float64(len(lat)) / el.Seconds()
				out["vhost-replay-mixed-w16-p99"] = percentileUS(lat, 0.99)
			}
			return out, nil
		},
	}
}

type replayer struct {
	f       *vhostfront.Frontend
	mu      sync.Mutex
	node    map[uint64]uint64    // recorded nodeid → peer's
	fh      map[uint64]uint64    // recorded file handle → peer's
	dirOff  map[[2]uint64]uint64 // (recorded fh, recorded offset) → peer's offset
	lastOff map[uint64]uint64    // recorded fh → the peer's last directory offset
	diffs   int
	skipped int
	what    map[string]int
}

func newReplayer(f *vhostfront.Frontend) *replayer {
	return &replayer{f: f, node: map[uint64]uint64{fuse.FUSE_ROOT_ID: fuse.FUSE_ROOT_ID}, fh: map[uint64]uint64{},
		dirOff: map[[2]uint64]uint64{}, lastOff: map[uint64]uint64{}, what: map[string]int{}}
}

func (rp *replayer) diffSummary() string {
	keys := make([]string, 0, len(rp.what))
	for k := range rp.what {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return rp.what[keys[i]] > rp.what[keys[j]] })
	if len(keys) > 6 {
		keys = keys[:6]
	}
	for i, k := range keys {
		keys[i] = fmt.Sprintf("%s ×%d", k, rp.what[k])
	}
	return strings.Join(keys, "; ")
}

func (rp *replayer) note(what string) { rp.what[what]++ }

// run replays every record once, with up to window requests in flight
// (window 1: one at a time, in order; otherwise a request is sent, in
// recorded order, once every earlier request it depends on has been
// answered: see Recording.deps). It returns the latency of each request
// sent and the total time.
func (rp *replayer) run(ctx context.Context, rec *Recording, window int) ([]time.Duration, time.Duration, error) {
	deps := rec.deps()
	lat := make([]time.Duration, 0, len(rec.Records))
	done := make([]chan struct{}, len(rec.Records))
	for i := range done {
		done[i] = make(chan struct{})
	}
	sem := make(chan struct{}, max(1, window))
	var wg sync.WaitGroup
	var firstErr error
	// send sends record i (its nodeids and handles already mapped) and
	// learns from the reply; it runs with rp.mu unlocked.
	send := func(i int, h fuse.InHeader, node uint64, arg []byte) {
		r := rec.Records[i]
		s := time.Now()
		var err error
		var reply *vhostfront.Reply
		forget := h.Opcode == vhostfront.OpForget || h.Opcode == vhostfront.OpBatchForget
		var rh fuse.OutHeader
		if forget {
			_, err = rp.f.FUSE(vhostfront.HiprioQueue, h.Opcode, node, arg, nil, -1)
		} else {
			copy(structView(&rh), r.Reply)
			outLen := max(int(rh.Length)-outHeaderLen, sizeArg(h.Opcode, arg), 256)
			reply, err = rp.f.FUSE(vhostfront.RequestQueue, h.Opcode, node, arg, nil, outLen)
		}
		d := time.Since(s)
		rp.mu.Lock()
		defer rp.mu.Unlock()
		if err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("record %d %s: %w", i, opNameOf(h.Opcode), err)
			}
			return
		}
		lat = append(lat, d)
		if forget {
			return
		}
		if reply.Header.Status != rh.Status {
			rp.diffs++
			rp.note(fmt.Sprintf("%s: recorded %v, got %v", opNameOf(h.Opcode), fuse.Status(-rh.Status), fuse.Status(-reply.Header.Status)))
			return
		}
		if rh.Status == 0 {
			rp.learn(h.Opcode, r.Req[inHeaderLen:], r.Reply[outHeaderLen:], reply.Body)
		}
	}
	t0 := time.Now()
	for i, r := range rec.Records {
		if ctx.Err() != nil {
			break
		}
		var h fuse.InHeader
		copy(structView(&h), r.Req)
		if h.Opcode == vhostfront.OpInit || h.Opcode == vhostfront.OpDestroy || h.Opcode == opInterrupt {
			close(done[i])
			continue
		}
		for _, d := range deps[i] {
			<-done[d]
		}
		sem <- struct{}{}
		arg := append([]byte(nil), r.Req[inHeaderLen:]...)
		rp.mu.Lock()
		node, ok := rp.mapReq(&h, arg)
		if !ok {
			rp.skipped++
		}
		stop := firstErr != nil
		rp.mu.Unlock()
		if stop {
			break
		}
		if !ok {
			<-sem
			close(done[i])
			continue
		}
		if window <= 1 {
			send(i, h, node, arg)
			<-sem
			close(done[i])
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			send(i, h, node, arg)
			<-sem
			close(done[i])
		}()
	}
	wg.Wait()
	el := time.Since(t0)
	if firstErr != nil {
		return nil, 0, firstErr
	}
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	return lat, el, nil
}

// deps returns, per record, the earlier records it must follow in a
// replay with several requests in flight: for every nodeid and file handle
// the record uses or (by its recorded reply) produces, the last earlier
// record that used or produced it. Name operations use their directory's
// nodeid, so everything in one directory stays in order, and the nodeid
// the name had (from the recorded replies), so an UNLINK or RMDIR follows
// what was done to the file or inside the directory; a nodeid or handle
// the recording daemon reused orders its two lives. Conservative: only
// requests on disjoint nodes and handles overtake each other.
func (rec *Recording) deps() [][]int {
	rec.depsOnce.Do(func() {
		last := map[[2]uint64]int{} // (kind, value) → record index
		names := map[dirName]uint64{}
		rec.depList = make([][]int, len(rec.Records))
		for i, r := range rec.Records {
			var uses [][2]uint64
			for _, n := range recNodes(r) {
				uses = append(uses, [2]uint64{0, n})
			}
			for _, n := range recNamed(r, names) {
				uses = append(uses, [2]uint64{0, n})
			}
			for _, f := range recHandles(r) {
				uses = append(uses, [2]uint64{1, f})
			}
			seen := map[int]bool{}
			for _, u := range uses {
				if j, ok := last[u]; ok && j != i && !seen[j] {
					seen[j] = true
					rec.depList[i] = append(rec.depList[i], j)
				}
				last[u] = i
			}
		}
	})
	return rec.depList
}

type dirName struct {
	dir  uint64
	name string
}

// recNamed returns the recorded nodeids of the entries a name operation
// names (as earlier replies gave them) and updates names from its reply.
func recNamed(r Record, names map[dirName]uint64) []uint64 {
	var h fuse.InHeader
	copy(structView(&h), r.Req)
	arg := r.Req[inHeaderLen:]
	cstrAt := func(off int) (string, int) {
		if off > len(arg) {
			return "", off
		}
		e := bytes.IndexByte(arg[off:], 0)
		if e < 0 {
			return string(arg[off:]), len(arg)
		}
		return string(arg[off : off+e]), off + e + 1
	}
	ok := r.Reply != nil && len(r.Reply) >= outHeaderLen && int32(le.LittleEndian.Uint32(r.Reply[4:])) == 0
	var body []byte
	if ok {
		body = r.Reply[outHeaderLen:]
	}
	replyNode := func() uint64 {
		if len(body) >= 8 {
			return le.LittleEndian.Uint64(body)
		}
		return 0
	}
	var out []uint64
	use := func(k dirName) {
		if n := names[k]; n != 0 {
			out = append(out, n)
		}
	}
	nameOff := map[uint32]int{vhostfront.OpLookup: 0, opSymlink: 0, opMknod: 16, opMkdir: 8, opCreate: 16, opLink: 8}
	switch h.Opcode {
	case vhostfront.OpLookup, opSymlink, opMknod, opMkdir, opCreate, opLink:
		name, _ := cstrAt(nameOff[h.Opcode])
		k := dirName{h.NodeId, name}
		use(k)
		if ok {
			names[k] = replyNode()
		}
	case opUnlink, opRmdir:
		name, _ := cstrAt(0)
		k := dirName{h.NodeId, name}
		use(k)
		if ok {
			delete(names, k)
		}
	case opRename, opRename2:
		off := 8
		if h.Opcode == opRename2 {
			off = 16
		}
		if len(arg) < off {
			break
		}
		newdir := le.LittleEndian.Uint64(arg)
		oldName, next := cstrAt(off)
		newName, _ := cstrAt(next)
		ko, kn := dirName{h.NodeId, oldName}, dirName{newdir, newName}
		use(ko)
		use(kn)
		if ok {
			names[kn] = names[ko]
			delete(names, ko)
		}
	case vhostfront.OpReaddirplus:
		for _, d := range parseDirents(body, true) {
			if d.node != 0 {
				names[dirName{h.NodeId, d.name}] = d.node
			}
		}
	}
	return out
}

// recNodes lists the recorded nodeids a record uses or produces.
func recNodes(r Record) []uint64 {
	var h fuse.InHeader
	copy(structView(&h), r.Req)
	arg := r.Req[inHeaderLen:]
	var out []uint64
	add := func(b []byte, off int) {
		if len(b) >= off+8 {
			if v := le.LittleEndian.Uint64(b[off:]); v != 0 {
				out = append(out, v)
			}
		}
	}
	if h.NodeId != 0 {
		out = append(out, h.NodeId)
	}
	switch h.Opcode {
	case opRename, opRename2, opLink:
		add(arg, 0)
	case opCopyFileRange:
		add(arg, 16)
	case vhostfront.OpBatchForget:
		if len(arg) >= 4 {
			n := int(le.LittleEndian.Uint32(arg))
			for i := 0; i < n; i++ {
				add(arg, 8+16*i)
			}
		}
	}
	if r.Reply == nil || len(r.Reply) < outHeaderLen || int32(le.LittleEndian.Uint32(r.Reply[4:])) != 0 {
		return out
	}
	body := r.Reply[outHeaderLen:]
	switch h.Opcode {
	case vhostfront.OpLookup, opMknod, opMkdir, opSymlink, opLink, opTmpfile, opCreate:
		add(body, 0)
	case vhostfront.OpReaddirplus:
		for _, d := range parseDirents(body, true) {
			if d.node != 0 {
				out = append(out, d.node)
			}
		}
	}
	return out
}

// recHandles lists the recorded file handles a record uses or produces.
func recHandles(r Record) []uint64 {
	var h fuse.InHeader
	copy(structView(&h), r.Req)
	arg := r.Req[inHeaderLen:]
	var out []uint64
	add := func(b []byte, off int) {
		if len(b) >= off+8 {
			out = append(out, le.LittleEndian.Uint64(b[off:]))
		}
	}
	u32 := func(off int) uint32 {
		if len(arg) < off+4 {
			return 0
		}
		return le.LittleEndian.Uint32(arg[off:])
	}
	switch h.Opcode {
	case vhostfront.OpRead, opWrite, vhostfront.OpRelease, opFsync, opFlush, vhostfront.OpReleasedir,
		opFsyncdir, opGetlk, opSetlk, opSetlkw, opIoctl, opPoll, opFallocate, opLseek,
		vhostfront.OpReaddir, vhostfront.OpReaddirplus:
		add(arg, 0)
	case vhostfront.OpGetattr, opStatx:
		if u32(0)&fuse.FUSE_GETATTR_FH != 0 {
			add(arg, 8)
		}
	case opSetattr:
		if u32(0)&fuse.FATTR_FH != 0 {
			add(arg, 8)
		}
	case opCopyFileRange:
		add(arg, 0)
		add(arg, 24)
	}
	if r.Reply == nil || len(r.Reply) < outHeaderLen || int32(le.LittleEndian.Uint32(r.Reply[4:])) != 0 {
		return out
	}
	body := r.Reply[outHeaderLen:]
	switch h.Opcode {
	case vhostfront.OpOpen, vhostfront.OpOpendir:
		add(body, 0)
	case opCreate:
		add(body, entryOutLen)
	}
	return out
}

// mapReq rewrites the request's nodeids and file handles (in arg) to the
// peer's and returns its header nodeid; false if one is unknown (the
// request that should have produced it failed on this peer).
func (rp *replayer) mapReq(h *fuse.InHeader, arg []byte) (uint64, bool) {
	ok := true
	node := uint64(0)
	if h.NodeId != 0 {
		n, found := rp.node[h.NodeId]
		if !found {
			rp.note(fmt.Sprintf("%s: unknown nodeid", opNameOf(h.Opcode)))
			return 0, false
		}
		node = n
	}
	u64 := func(off int, m map[uint64]uint64, what string) {
		if !ok || len(arg) < off+8 {
			return
		}
		v := le.LittleEndian.Uint64(arg[off:])
		if w, found := m[v]; found {
			le.LittleEndian.PutUint64(arg[off:], w)
		} else {
			rp.note(fmt.Sprintf("%s: unknown %s", opNameOf(h.Opcode), what))
			ok = false
		}
	}
	u32 := func(off int) uint32 {
		if len(arg) < off+4 {
			return 0
		}
		return le.LittleEndian.Uint32(arg[off:])
	}
	switch h.Opcode {
	case vhostfront.OpReaddir, vhostfront.OpReaddirplus:
		if len(arg) >= 16 {
			recFh := le.LittleEndian.Uint64(arg)
			if off := le.LittleEndian.Uint64(arg[8:]); off != 0 {
				p, found := rp.dirOff[[2]uint64{recFh, off}]
				if !found {
					p = rp.lastOff[recFh]
				}
				le.LittleEndian.PutUint64(arg[8:], p)
			}
		}
		u64(0, rp.fh, "fh")
	case vhostfront.OpRead, opWrite, vhostfront.OpRelease, opFsync, opFlush, vhostfront.OpReleasedir,
		opFsyncdir, opGetlk, opSetlk, opSetlkw, opIoctl, opPoll, opFallocate, opLseek:
		u64(0, rp.fh, "fh")
	case vhostfront.OpGetattr, opStatx:
		if u32(0)&fuse.FUSE_GETATTR_FH != 0 {
			u64(8, rp.fh, "fh")
		}
	case opSetattr:
		if u32(0)&fuse.FATTR_FH != 0 {
			u64(8, rp.fh, "fh")
		}
	case opRename, opRename2, opLink:
		u64(0, rp.node, "nodeid")
	case opCopyFileRange:
		u64(0, rp.fh, "fh")
		u64(16, rp.node, "nodeid")
		u64(24, rp.fh, "fh")
	case vhostfront.OpBatchForget:
		n := int(u32(0))
		for i := 0; i < n && 8+16*i+16 <= len(arg); i++ {
			off := 8 + 16*i
			v := le.LittleEndian.Uint64(arg[off:])
			if w, found := rp.node[v]; found {
				le.LittleEndian.PutUint64(arg[off:], w)
			} else {
				le.LittleEndian.PutUint64(arg[off+8:], 0) // forget nothing
			}
		}
	}
	return node, ok
}

const entryOutLen = int(unsafe.Sizeof(fuse.EntryOut{}))

// learn records the peer's nodeids, file handles and directory offsets
// from a successful reply next to the recorded one.
func (rp *replayer) learn(op uint32, recArg, recBody, body []byte) {
	u64 := func(b []byte, off int) (uint64, bool) {
		if len(b) < off+8 {
			return 0, false
		}
		return le.LittleEndian.Uint64(b[off:]), true
	}
	// pair maps the value at off of the recorded reply to the peer's;
	// nodeid 0 is no node (a negative entry), file handle 0 is a handle.
	pair := func(m map[uint64]uint64, off int, zeroOK bool) {
		r, ok1 := u64(recBody, off)
		p, ok2 := u64(body, off)
		if ok1 && ok2 && (r != 0 || zeroOK) {
			m[r] = p
		}
	}
	switch op {
	case vhostfront.OpLookup, opMknod, opMkdir, opSymlink, opLink, opTmpfile:
		pair(rp.node, 0, false)
	case opCreate:
		pair(rp.node, 0, false)
		pair(rp.fh, entryOutLen, true)
	case vhostfront.OpOpen, vhostfront.OpOpendir:
		pair(rp.fh, 0, true)
	case vhostfront.OpReaddir, vhostfront.OpReaddirplus:
		plus := op == vhostfront.OpReaddirplus
		recFh, _ := u64(recArg, 0)
		recEnts := parseDirents(recBody, plus)
		peerEnts := parseDirents(body, plus)
		byName := make(map[string]dirent, len(peerEnts))
		for _, d := range peerEnts {
			byName[d.name] = d
		}
		for _, d := range recEnts {
			p, ok := byName[d.name]
			if !ok {
				continue
			}
			rp.dirOff[[2]uint64{recFh, d.off}] = p.off
			if plus && d.node != 0 && p.node != 0 {
				rp.node[d.node] = p.node
			}
		}
		if n := len(peerEnts); n > 0 {
			rp.lastOff[recFh] = peerEnts[n-1].off
		}
	}
}

type dirent struct {
	name string
	off  uint64
	node uint64 // READDIRPLUS: the entry's nodeid (0 for . and ..)
}

// parseDirents reads a READDIR or READDIRPLUS reply.
func parseDirents(b []byte, plus bool) []dirent {
	var out []dirent
	for len(b) > 0 {
		var node uint64
		if plus {
			if len(b) < entryOutLen+24 {
				break
			}
			node = le.LittleEndian.Uint64(b)
			b = b[entryOutLen:]
		}
		if len(b) < 24 {
			break
		}
		off := le.LittleEndian.Uint64(b[8:])
		nl := int(le.LittleEndian.Uint32(b[16:]))
		if 24+nl > len(b) {
			break
		}
		out = append(out, dirent{name: string(b[24 : 24+nl]), off: off, node: node})
		rec := (24 + nl + 7) &^ 7
		if rec > len(b) {
			break
		}
		b = b[rec:]
	}
	return out
}
