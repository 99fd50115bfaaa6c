package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/govirtiofsd/govirtiofsd/internal/vhostfront"
	"golang.org/x/sys/unix"
)

// Row is one line of the table.
type Row struct {
	Name         string `json:"name"`
	Unit         string `json:"unit"`
	Desc         string `json:"desc"`
	HigherBetter bool   `json:"higher_better"`
	// Transport the row is measured over; Ref the peers its ratio is
	// relative to (the best of them).
	Transport Transport `json:"transport"`
	Ref       []string  `json:"ref"`
	// RefRow, when set, names the row whose reference cells the ratios
	// of this row are taken from (a variant no reference peer can run,
	// e.g. 2 request queues: compared with the reference on 1).
	RefRow string `json:"ref_row,omitempty"`
	// NoRatio: the row is a count to read, not a performance to compare.
	NoRatio bool `json:"no_ratio,omitempty"`
	// CPUOp, when set, says what one op is for the row's daemon CPU time
	// per op (Cell.CPUPerOp): "LOOKUP", "file", "1 MiB", …
	CPUOp string `json:"cpu_op,omitempty"`
	// noValue says why a peer has no number for this row when the job
	// ran fine but did not measure it (e.g. the RSS of native).
	noValue string
}

// Env is what a job sees of one running peer.
type Env struct {
	Root  string // the shared tree as seen through the peer ("" for Vhost peers)
	PID   int    // serving process; 0 for native
	State string // the peer's persistent state directory; "" if it keeps none
	Cfg   *Config
	inst  *instance
	front *vhostfront.Frontend // Vhost peers: the connected front-end
	abort func()               // unblocks syscalls on a hung mount; nil for native

	shared string          // the shared tree on the host
	rows   map[string]bool // rows of the job selected by -rows
	// details: text a job leaves per row (Cell.Detail), e.g. which
	// syscalls make up a count.
	details map[string]string
	// cpu: the daemon's CPU time per timed phase, by row (cpuOps).
	cpu map[string]opCPU
}

// want reports whether the job's row name is selected (-rows), so that a
// job measuring several rows can skip the work of the others.
func (e *Env) want(name string) bool { return e.rows == nil || e.rows[name] }

// dropCaches drops the host's caches in the middle of a job (not with
// -drop=false).
func (e *Env) dropCaches() error {
	if e.Cfg.NoDropCaches {
		return nil
	}
	return dropCaches(e.shared)
}

// job is one workload; it fills one or more rows per sample.
type job struct {
	name       string
	rows       []Row
	parts      part        // tree parts it needs
	transports []Transport // peers it can run against
	// cold: drop the host's caches after the fresh mount and before run.
	cold bool
	// restart: start the peer with Daemon.RestartArgv.
	restart bool
	// queues: Vhost jobs: request queues to set up (0 = 1).
	queues int
	// run measures; it returns one value per row it measured. Rows it
	// leaves out are n/a for this peer (Row.noValue says why).
	run func(ctx context.Context, e *Env) (map[string]float64, error)
	// missing, when set and returning non-empty, says why the job cannot
	// run on this machine at all (a tool is not installed).
	missing func() string
	// cleanup restores the tree natively after every sample (untimed).
	cleanup func(shared string) error
	// tools are the commands the job runs (Config.Install installs
	// them when missing).
	tools []string
}

const usPerOp = "µs/op"

func jobs(cfg *Config) []*job {
	n := count(cfg.Files)
	js := []*job{
		{
			name: "stat-warm", parts: partStat,
			rows: []Row{{Name: "stat-warm", Unit: usPerOp,
				Desc: "lstat of " + n + " files in one directory, after a priming pass (kernel caches warm)"}},
			run: func(ctx context.Context, e *Env) (map[string]float64, error) {
				return timedStat(ctx, e, "stat-warm", true, false)
			},
		},
		{
			name: "stat-warm-sync", parts: partStat,
			rows: []Row{{Name: "stat-warm-sync", Unit: usPerOp,
				Desc: "statx(AT_STATX_FORCE_SYNC) of " + n + " files after a priming pass: one GETATTR per file reaches the daemon"}},
			run: func(ctx context.Context, e *Env) (map[string]float64, error) {
				return timedStat(ctx, e, "stat-warm-sync", true, true)
			},
		},
		{
			name: "stat-cold", parts: partStat, cold: true,
			rows: []Row{{Name: "stat-cold", Unit: usPerOp,
				Desc: "lstat of " + n + " files on a fresh mount after drop_caches (LOOKUP per file)"}},
			run: func(ctx context.Context, e *Env) (map[string]float64, error) {
				return timedStat(ctx, e, "stat-cold", false, false)
			},
		},
		{
			name: "create-unlink", parts: partCreate,
			rows: []Row{{Name: "create-unlink", Unit: "µs/file",
				Desc: "create+close " + n + " files in an empty directory, then unlink them"}},
			run:     createUnlink,
			cleanup: func(shared string) error { return emptyDir(filepath.Join(shared, "create")) },
		},
		{
			name: "readdir", parts: partStat,
			rows: []Row{{Name: "readdir", Unit: "ms/pass",
				Desc: "getdents64 (32 KiB buffer) of the " + n + "-entry directory, warm"}},
			run: func(ctx context.Context, e *Env) (map[string]float64, error) {
				return readdirPasses(ctx, e, "readdir", false, true)
			},
		},
		{
			name: "readdir-stat", parts: partStat,
			rows: []Row{{Name: "readdir-stat", Unit: "ms/pass",
				Desc: "ls -l of the " + n + "-entry directory (getdents64 + fstatat per entry), warm"}},
			run: func(ctx context.Context, e *Env) (map[string]float64, error) {
				return readdirPasses(ctx, e, "readdir-stat", true, true)
			},
		},
		{
			name: "readdir-stat-cold", parts: partStat, cold: true,
			rows: []Row{{Name: "readdir-stat-cold", Unit: "ms/pass",
				Desc: "ls -l of the " + n + "-entry directory on a fresh mount after drop_caches"}},
			run: func(ctx context.Context, e *Env) (map[string]float64, error) {
				return readdirPasses(ctx, e, "readdir-stat-cold", true, false)
			},
		},
		{
			name: "seq-write", parts: partData,
			rows: []Row{{Name: "seq-write", Unit: "MiB/s", HigherBetter: true,
				Desc: fmt.Sprintf("write %s in 1 MiB writes to a new file, fsync, close", bytesStr(cfg.Size))}},
			run:     seqWrite,
			cleanup: func(shared string) error { return removeIfExists(filepath.Join(shared, "data", "w.dat")) },
		},
		{
			name: "seq-read", parts: partData, cold: true,
			rows: []Row{{Name: "seq-read-cold", Unit: "MiB/s", HigherBetter: true,
				Desc: fmt.Sprintf("read %s in 1 MiB reads on a fresh mount after drop_caches", bytesStr(cfg.Size))}},
			run: seqRead,
		},
		{
			name: "rand-read", parts: partData, cold: true,
			rows: []Row{{Name: "rand-read-4k", Unit: usPerOp,
				Desc: fmt.Sprintf("%d preads of 4 KiB at distinct random offsets of the %s file, POSIX_FADV_RANDOM, after drop_caches", cfg.RandReads, bytesStr(cfg.Size))}},
			run: randRead,
		},
	}
	js = append(js, fioJobs(cfg)...)
	js = append(js, walkJob("walk", partWalk, cfg.WalkFiles))
	js = append(js, restartJob("walk", partWalk, cfg.WalkFiles))
	if cfg.BigWalkFiles > 0 {
		js = append(js, walkJob("big", partBigWalk, cfg.BigWalkFiles))
		js = append(js, restartJob("big", partBigWalk, cfg.BigWalkFiles))
	}
	js = append(js, vhostJobs(cfg)...)
	for _, j := range js {
		if j.transports == nil {
			j.transports = []Transport{DevFuse}
		}
		for i := range j.rows {
			j.rows[i].Transport = j.transports[0]
			j.rows[i].Ref = []string{referencePeer}
			if j.transports[0] == Vhost {
				j.rows[i].Ref = vhostRef
			}
		}
	}
	return js
}

// walkJob: cold walk of a generated tree, then the daemon's RSS and fds.
func walkJob(dir string, p part, n int) *job {
	c := count(n)
	return &job{
		name: "walk-" + c, parts: p, cold: true,
		rows: []Row{
			{Name: "walk-cold-" + c, Unit: "s",
				Desc: "find-like walk (getdents64 + fstatat of every entry) of " + c + " files, fresh mount, after drop_caches"},
			{Name: "rss-idle-" + c, Unit: "MiB", noValue: "no daemon process",
				Desc: "daemon VmRSS on the fresh mount before that walk"},
			{Name: "rss-walk-" + c, Unit: "MiB", noValue: "no daemon process",
				Desc: "daemon VmRSS growth over rss-idle after the walk (kernel still caches every inode)"},
			{Name: "fds-walk-" + c, Unit: "fds", noValue: "no daemon process",
				Desc: "daemon open fds (/proc/PID/fd) after the walk"},
			{Name: "state-walk-" + c, Unit: "MiB", noValue: "no persistent state",
				Desc: "disk space allocated in the daemon's --state-dir after the walk"},
		},
		run: func(ctx context.Context, e *Env) (map[string]float64, error) {
			out := map[string]float64{}
			var idle int64
			if e.PID != 0 {
				rss, err := treeRSS(e.PID)
				if err != nil {
					return nil, err
				}
				idle = rss
				out["rss-idle-"+c] = mib(rss)
			}
			m := e.cpuStart()
			t0 := time.Now()
			files, err := walk(ctx, filepath.Join(e.Root, dir))
			el := time.Since(t0)
			if err != nil {
				return nil, err
			}
			e.cpuOps("walk-cold-"+c, m, float64(files), "file")
			if files != n {
				return nil, fmt.Errorf("walk saw %d files, want %d", files, n)
			}
			out["walk-cold-"+c] = el.Seconds()
			if e.PID != 0 {
				rss, err := treeRSS(e.PID)
				if err != nil {
					return nil, err
				}
				fds, err := treeFDs(e.PID)
				if err != nil {
					return nil, err
				}
				out["rss-walk-"+c] = mib(rss - idle)
				out["fds-walk-"+c] = float64(fds)
			}
			if e.State != "" {
				b, err := diskUsage(e.State)
				if err != nil {
					return nil, err
				}
				out["state-walk-"+c] = mib(b)
			}
			return out, nil
		},
	}
}

// restartJob: with n nodes known, kill -9 the serving process of a
// supervised daemon and time until a GETATTR on an old nodeid is answered.
func restartJob(dir string, p part, n int) *job {
	c := count(n)
	return &job{
		name: "restart-" + c, parts: p, restart: true,
		rows: []Row{{Name: "restart-" + c, Unit: "ms",
			Desc: "kill -9 of the serving process (after a walk of " + c + " files) to the first answered GETATTR of a file looked up before"}},
		run: func(ctx context.Context, e *Env) (map[string]float64, error) {
			root := filepath.Join(e.Root, dir)
			if files, err := walk(ctx, root); err != nil {
				return nil, err
			} else if files != n {
				return nil, fmt.Errorf("walk saw %d files, want %d", files, n)
			}
			kids := procChildren(e.PID)
			if len(kids) != 1 {
				return nil, fmt.Errorf("supervisor %d has %d children, want 1 serving process", e.PID, len(kids))
			}
			victim := kids[0]
			probe := filepath.Join(root, fmt.Sprintf("d%05d", 0), statName(0))
			t0 := time.Now()
			if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
				return nil, err
			}
			for processAlive(victim) {
				if time.Since(t0) > 10*time.Second {
					return nil, fmt.Errorf("serving process %d still alive 10s after SIGKILL", victim)
				}
				time.Sleep(100 * time.Microsecond)
			}
			var st unix.Statx_t
			if err := unix.Statx(unix.AT_FDCWD, probe, unix.AT_SYMLINK_NOFOLLOW|unix.AT_STATX_FORCE_SYNC, unix.STATX_BASIC_STATS, &st); err != nil {
				return nil, fmt.Errorf("first request after restart: %w", err)
			}
			el := time.Since(t0)
			if st.Mode&unix.S_IFMT != unix.S_IFREG {
				return nil, fmt.Errorf("%s: mode %o after restart, want a regular file", probe, st.Mode)
			}
			return map[string]float64{"restart-" + c: float64(el.Microseconds()) / 1000}, nil
		},
	}
}

// processAlive reports whether pid exists and is not a zombie.
func processAlive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) S …: the state follows the last ')'.
	for i := len(data) - 1; i > 0; i-- {
		if data[i] == ')' {
			return i+2 < len(data) && data[i+2] != 'Z' && data[i+2] != 'X'
		}
	}
	return true
}

func timedStat(ctx context.Context, e *Env, row string, prime, sync bool) (map[string]float64, error) {
	n := e.Cfg.Files
	paths := make([]string, n)
	for i := range paths {
		paths[i] = filepath.Join(e.Root, "stat", statName(i))
	}
	one := func(p string) error {
		var mode uint32
		if sync {
			var st unix.Statx_t
			if err := unix.Statx(unix.AT_FDCWD, p, unix.AT_SYMLINK_NOFOLLOW|unix.AT_STATX_FORCE_SYNC, unix.STATX_BASIC_STATS, &st); err != nil {
				return err
			}
			mode = uint32(st.Mode)
		} else {
			var st unix.Stat_t
			if err := unix.Lstat(p, &st); err != nil {
				return err
			}
			mode = st.Mode
		}
		if mode&unix.S_IFMT != unix.S_IFREG {
			return fmt.Errorf("%s: mode %o, want a regular file", p, mode)
		}
		return nil
	}
	if prime {
		for _, p := range paths {
			if err := one(p); err != nil {
				return nil, err
			}
		}
	}
	m := e.cpuStart()
	t0 := time.Now()
	for i, p := range paths {
		if i%1024 == 0 && ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err := one(p); err != nil {
			return nil, err
		}
	}
	el := time.Since(t0)
	op := "lstat"
	if sync {
		op = "statx"
	}
	e.cpuOps(row, m, float64(n), op)
	return map[string]float64{row: perOp(el, n)}, nil
}

func createUnlink(ctx context.Context, e *Env) (map[string]float64, error) {
	n := e.Cfg.Files
	dir := filepath.Join(e.Root, "create")
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(dfd)
	m := e.cpuStart()
	t0 := time.Now()
	for i := range n {
		fd, err := unix.Openat(dfd, statName(i), unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
		if err != nil {
			return nil, fmt.Errorf("create %s: %w", statName(i), err)
		}
		if err := unix.Close(fd); err != nil {
			return nil, fmt.Errorf("close %s: %w", statName(i), err)
		}
	}
	for i := range n {
		if err := unix.Unlinkat(dfd, statName(i), 0); err != nil {
			return nil, fmt.Errorf("unlink %s: %w", statName(i), err)
		}
	}
	el := time.Since(t0)
	e.cpuOps("create-unlink", m, float64(n), "file")
	if left, err := countDir(dfd, nil); err != nil {
		return nil, err
	} else if left != 0 {
		return nil, fmt.Errorf("%d entries left after unlinking all", left)
	}
	return map[string]float64{"create-unlink": perOp(el, n)}, ctx.Err()
}

// readdirPasses lists the stat directory (and lstats each entry when
// withStat) enough times to take a measurable time, after one priming pass
// when warm.
func readdirPasses(ctx context.Context, e *Env, row string, withStat, warm bool) (map[string]float64, error) {
	n := e.Cfg.Files
	dir := filepath.Join(e.Root, "stat")
	pass := func() error {
		dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(dfd)
		var st unix.Stat_t
		var each func(string) error
		if withStat {
			each = func(name string) error {
				return unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
			}
		}
		got, err := countDir(dfd, each)
		if err != nil {
			return err
		}
		if got != n {
			return fmt.Errorf("readdir of %s gave %d entries, want %d", dir, got, n)
		}
		return nil
	}
	passes := 1
	if warm {
		passes = max(1, 100_000/n)
		if err := pass(); err != nil {
			return nil, err
		}
	}
	m := e.cpuStart()
	t0 := time.Now()
	for range passes {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := pass(); err != nil {
			return nil, err
		}
	}
	el := time.Since(t0)
	e.cpuOps(row, m, float64(passes), "pass")
	return map[string]float64{row: float64(el.Microseconds()) / 1000 / float64(passes)}, nil
}

// countDir reads a directory fd to the end with getdents64 and returns the
// number of entries other than . and .., calling each (if set) per entry.
func countDir(dfd int, each func(name string) error) (int, error) {
	if _, err := unix.Seek(dfd, 0, 0); err != nil {
		return 0, err
	}
	buf := make([]byte, 32<<10)
	names := make([]string, 0, 256)
	total := 0
	for {
		nb, err := unix.Getdents(dfd, buf)
		if err != nil {
			return total, err
		}
		if nb == 0 {
			return total, nil
		}
		_, _, names = unix.ParseDirent(buf[:nb], -1, names[:0])
		total += len(names)
		if each != nil {
			for _, name := range names {
				if err := each(name); err != nil {
					return total, fmt.Errorf("%s: %w", name, err)
				}
			}
		}
	}
}

// walk visits every entry below root like find(1) -ls: getdents64 and
// fstatat relative to the directory fd. It returns the number of regular
// files.
func walk(ctx context.Context, root string) (int, error) {
	dfd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	return walkFD(ctx, dfd, root)
}

func walkFD(ctx context.Context, dfd int, path string) (int, error) {
	defer unix.Close(dfd)
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	var files int
	var subdirs []string
	var st unix.Stat_t
	_, err := countDir(dfd, func(name string) error {
		if err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			files++
		case unix.S_IFDIR:
			subdirs = append(subdirs, name)
		}
		return nil
	})
	if err != nil {
		return files, fmt.Errorf("%s: %w", path, err)
	}
	for _, name := range subdirs {
		sub, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return files, fmt.Errorf("%s/%s: %w", path, name, err)
		}
		k, err := walkFD(ctx, sub, path+"/"+name)
		files += k
		if err != nil {
			return files, err
		}
	}
	return files, nil
}

func seqWrite(ctx context.Context, e *Env) (map[string]float64, error) {
	size := e.Cfg.Size
	buf := make([]byte, ioChunk)
	fill(buf, 0)
	p := filepath.Join(e.Root, "data", "w.dat")
	m := e.cpuStart()
	t0 := time.Now()
	fd, err := unix.Open(p, unix.O_CREAT|unix.O_TRUNC|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, err
	}
	defer func() {
		if fd >= 0 {
			unix.Close(fd)
		}
	}()
	for off := int64(0); off < size; {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		b := buf[:min(int64(len(buf)), size-off)]
		k, err := unix.Write(fd, b)
		if err != nil {
			return nil, fmt.Errorf("write at %d: %w", off, err)
		}
		if k == 0 {
			return nil, fmt.Errorf("write at %d: no progress", off)
		}
		off += int64(k)
	}
	if err := unix.Fsync(fd); err != nil {
		return nil, fmt.Errorf("fsync: %w", err)
	}
	err = unix.Close(fd)
	fd = -1
	if err != nil {
		return nil, fmt.Errorf("close: %w", err)
	}
	el := time.Since(t0)
	e.cpuOps("seq-write", m, mib(size), "MiB")
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		return nil, err
	}
	if st.Size != size {
		return nil, fmt.Errorf("wrote %d bytes, file has %d", size, st.Size)
	}
	return map[string]float64{"seq-write": mibps(size, el)}, nil
}

func seqRead(ctx context.Context, e *Env) (map[string]float64, error) {
	size := e.Cfg.Size
	p := filepath.Join(e.Root, "data", "seq.dat")
	buf := make([]byte, ioChunk)
	want := make([]byte, 64)
	m := e.cpuStart()
	t0 := time.Now()
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	var total int64
	for {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		k, err := unix.Read(fd, buf)
		if err != nil {
			return nil, fmt.Errorf("read at %d: %w", total, err)
		}
		if k == 0 {
			break
		}
		// Spot-check the content of every chunk.
		m := min(k, len(want))
		fill(want[:m], total)
		if string(buf[:m]) != string(want[:m]) {
			return nil, fmt.Errorf("wrong data at offset %d", total)
		}
		total += int64(k)
	}
	el := time.Since(t0)
	e.cpuOps("seq-read-cold", m, mib(size), "MiB")
	if total != size {
		return nil, fmt.Errorf("read %d bytes, want %d", total, size)
	}
	return map[string]float64{"seq-read-cold": mibps(size, el)}, nil
}

func randRead(ctx context.Context, e *Env) (map[string]float64, error) {
	const page = 4096
	pages := e.Cfg.Size / page
	k := min(int64(e.Cfg.RandReads), pages)
	// Distinct pages, so that every read misses the (dropped) page cache.
	r := rand.New(rand.NewPCG(1, 2))
	seen := make(map[int64]bool, k)
	offs := make([]int64, 0, k)
	for int64(len(offs)) < k {
		pg := r.Int64N(pages)
		if !seen[pg] {
			seen[pg] = true
			offs = append(offs, pg*page)
		}
	}
	p := filepath.Join(e.Root, "data", "seq.dat")
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	if err := unix.Fadvise(fd, 0, 0, unix.FADV_RANDOM); err != nil {
		return nil, fmt.Errorf("fadvise: %w", err)
	}
	buf := make([]byte, page)
	want := make([]byte, 16)
	m := e.cpuStart()
	t0 := time.Now()
	for i, off := range offs {
		if i%1024 == 0 && ctx.Err() != nil {
			return nil, ctx.Err()
		}
		n, err := unix.Pread(fd, buf, off)
		if err != nil {
			return nil, fmt.Errorf("pread at %d: %w", off, err)
		}
		if n != page {
			return nil, fmt.Errorf("pread at %d: %d bytes, want %d", off, n, page)
		}
		fill(want, off)
		if string(buf[:len(want)]) != string(want) {
			return nil, fmt.Errorf("wrong data at offset %d", off)
		}
	}
	el := time.Since(t0)
	e.cpuOps("rand-read-4k", m, float64(len(offs)), "4 KiB pread")
	return map[string]float64{"rand-read-4k": perOp(el, len(offs))}, nil
}

func perOp(d time.Duration, n int) float64 { return float64(d.Nanoseconds()) / 1000 / float64(n) }

func mibps(size int64, d time.Duration) float64 { return float64(size) / (1 << 20) / d.Seconds() }

func mib(b int64) float64 { return float64(b) / (1 << 20) }

func bytesStr(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}

func emptyDir(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

func removeIfExists(p string) error {
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// diskUsage sums the allocated blocks of everything under dir.
func diskUsage(dir string) (int64, error) {
	var total int64
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		total += st.Blocks * 512
		return nil
	})
	return total, err
}
