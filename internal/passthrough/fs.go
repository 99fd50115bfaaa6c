// Package passthrough implements fuse.RawFileSystem over a host directory:
// the FUSE operations, the caller's credentials and the rules that keep the
// guest inside the shared directory. It knows no transport; /dev/fuse and
// vhost-user feed it through go-fuse's ProtocolServer.
//
// Guarantees:
//   - Every name from the wire is validated before the first syscall: empty
//     names, names with '/' or NUL, and "." / ".." as targets of a create,
//     link or rename are refused.
//   - Host files are reached only relative to fds held by the node table
//     (internal/inode) with O_NOFOLLOW, or by reopening such an fd through
//     /proc/self/fd for a node whose type is known not to be a symlink, so no
//     host symlink is ever followed by the daemon. Fifos and device nodes are
//     opened only when the guest opens them.
//   - Files are created with the caller's fsuid/fsgid (internal/creds), so
//     the host kernel applies ownership, setgid inheritance and permission
//     rules as for a local process.
//   - A request naming an unknown nodeid gets ESTALE, an unknown file handle
//     EBADF; no request can make the server panic (go-fuse turns a panic into
//     EIO as a last resort).
//
// Lock order: FS.handlesMu, FS.locks.mu and FS.backing.mu are leaves (never
// held together); node references (inode.Node) are taken and released
// without FS locks held, except that lock-owner fds are opened under
// FS.locks.mu.
package passthrough

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/govirtiofsd/govirtiofsd/internal/creds"
	"github.com/govirtiofsd/govirtiofsd/internal/inode"
	"github.com/govirtiofsd/govirtiofsd/internal/openfiles"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// CachePolicy is the --cache setting (the Rust virtiofsd's meaning).
type CachePolicy int

const (
	CacheAuto     CachePolicy = iota // metadata cached for 1s, data cache invalidated on change
	CacheAlways                      // metadata and data cached for a day
	CacheMetadata                    // metadata cached for a day, data never (direct I/O)
	CacheNever                       // nothing cached, direct I/O
)

// ParseCachePolicy parses a --cache value.
func ParseCachePolicy(s string) (CachePolicy, error) {
	switch s {
	case "auto":
		return CacheAuto, nil
	case "always":
		return CacheAlways, nil
	case "metadata":
		return CacheMetadata, nil
	case "never", "none":
		return CacheNever, nil
	}
	return 0, fmt.Errorf("unknown cache policy %q (want auto, always, metadata or never)", s)
}

// InodeNumbers is the --inode-numbers policy for st_ino and d_ino.
type InodeNumbers int

const (
	// InodeAuto: host numbers where submounts are announced and negotiated,
	// remapped otherwise.
	InodeAuto InodeNumbers = iota
	// InodeHost passes host st_ino through.
	InodeHost
	// InodeRemap gives every file a persistent number unique across the
	// host mounts inside the shared directory.
	InodeRemap
)

// ParseInodeNumbers parses an --inode-numbers value.
func ParseInodeNumbers(s string) (InodeNumbers, error) {
	switch s {
	case "auto":
		return InodeAuto, nil
	case "host":
		return InodeHost, nil
	case "remap":
		return InodeRemap, nil
	}
	return 0, fmt.Errorf("unknown inode number policy %q (want auto, host or remap)", s)
}

// Options configure the file system.
type Options struct {
	Cache             CachePolicy
	Xattr             bool
	ReadOnly          bool
	Writeback         bool
	AllowDirectIO     bool
	AnnounceSubmounts bool
	InodeNumbers      InodeNumbers
	// OpenFiles records file handles for restarts; nil keeps them in
	// memory only.
	OpenFiles *openfiles.Table
	// Backing enables FUSE passthrough of READ/WRITE (/dev/fuse only).
	Backing BackingFiles
	Logger  *slog.Logger
}

// FS is the passthrough file system. Create it with New.
type FS struct {
	fuse.RawFileSystem // ENOSYS for what is not implemented below

	nodes *inode.Table
	opts  Options
	log   *slog.Logger

	// daemonUID/GID are the daemon's own ids: requests from them need
	// no credential switch.
	daemonUID, daemonGID uint32

	entryTimeout time.Duration
	attrTimeout  time.Duration

	// submounts is set once the client negotiated FUSE_SUBMOUNTS.
	submounts atomic.Bool

	// openFiles numbers file handles and keeps them for a successor.
	openFiles *openfiles.Table

	// suppGroups holds the supplementary groups of create requests in
	// flight, by unique (see SetSuppGroups); suppPending counts them, so
	// a request finds none without a map lookup (which boxes its key).
	suppGroups  sync.Map
	suppPending atomic.Int32

	// warnState rate-limits warnings about the state directory.
	warnState rateLimited

	locks   lockFiles
	backing backingIDs

	handlesMu sync.Mutex
	files     map[uint64]*file // +checklocks:handlesMu
	// created holds, by nodeid, an open file CREATE made, whose node has
	// no fd in the node table (see FS.node).
	created map[uint64]*file      // +checklocks:handlesMu
	dirs    map[uint64]*dirStream // +checklocks:handlesMu
}

var _ fuse.RawFileSystem = (*FS)(nil)

// New returns a file system serving the nodes of table.
func New(table *inode.Table, opts Options) *FS {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	fs := &FS{
		RawFileSystem: fuse.NewDefaultRawFileSystem(),
		nodes:         table,
		opts:          opts,
		log:           opts.Logger,
		daemonUID:     uint32(os.Geteuid()),
		daemonGID:     uint32(os.Getegid()),
		openFiles:     opts.OpenFiles,
		files:         map[uint64]*file{},
		created:       map[uint64]*file{},
		dirs:          map[uint64]*dirStream{},
	}
	if fs.openFiles == nil {
		fs.openFiles = openfiles.OpenMemory()
	}
	fs.adoptBacking(fs.openFiles.Resumed())
	switch opts.Cache {
	case CacheAuto:
		fs.entryTimeout, fs.attrTimeout = time.Second, time.Second
	case CacheAlways, CacheMetadata:
		fs.entryTimeout, fs.attrTimeout = 24*time.Hour, 24*time.Hour
	case CacheNever:
	}
	return fs
}

func (fs *FS) String() string { return "govirtiofsd" }

// SetDebug is part of fuse.RawFileSystem; logging is configured through
// Options.Logger instead.
func (fs *FS) SetDebug(bool) {}

// Capabilities returns the INIT capabilities the file system wants on top of
// go-fuse's defaults (fuse.MountOptions.ExtraCapabilities).
func (fs *FS) Capabilities() uint64 {
	// DIRECT_IO_ALLOW_MMAP: MAP_SHARED works under the direct-I/O cache
	// policies too (kernel 6.6+).
	c := uint64(fuse.CAP_EXPORT_SUPPORT | fuse.CAP_CREATE_SUPP_GROUP | fuse.CAP_DIRECT_IO_ALLOW_MMAP)
	if fs.opts.AnnounceSubmounts {
		c |= fuse.CAP_SUBMOUNTS
	}
	if fs.opts.Writeback {
		c |= fuse.CAP_WRITEBACK_CACHE
	}
	return c
}

// Negotiated tells the file system which INIT flags the client accepted
// (the engine calls it after every INIT).
func (fs *FS) Negotiated(flags uint64) {
	fs.submounts.Store(fs.opts.AnnounceSubmounts && flags&fuse.CAP_SUBMOUNTS != 0)
}

// remapInodes reports whether st_ino is remapped right now.
func (fs *FS) remapInodes() bool {
	switch fs.opts.InodeNumbers {
	case InodeHost:
		return false
	case InodeRemap:
		return true
	}
	return !fs.submounts.Load()
}

// inodeNumber is the st_ino (and d_ino) the guest sees for host inode ino on
// the mount with persistent index mount. The shared directory's own
// filesystem (index 0) keeps its host numbers; files on other host mounts
// get their mount index in the top 16 bits, which keeps numbers unique
// across mounts, equal for hard links, and stable across restarts (mount
// indexes are persistent).
func (fs *FS) inodeNumber(mount uint32, ino uint64) uint64 {
	if mount == 0 || !fs.remapInodes() {
		return ino
	}
	return uint64(mount)<<48 ^ ino
}

// errno turns an internal error into the status the guest sees. Wrapped
// context stays in the logs.
func errno(err error) fuse.Status {
	if err == nil {
		return fuse.OK
	}
	var e unix.Errno
	if errors.As(err, &e) {
		return fuse.Status(e)
	}
	if errors.Is(err, inode.ErrNotFound) || errors.Is(err, inode.ErrTampered) {
		return fuse.Status(unix.ESTALE)
	}
	return fuse.EIO
}

// node resolves a request's nodeid.
//
// A node CREATE recorded without an fd is given one from the guest's open
// file while there is one (one open of /proc/self/fd/N, O_PATH, the very
// file, even if unlinked or renamed on the host since); otherwise it is
// re-found like any node the fd cache evicted.
func (fs *FS) node(id uint64) (*inode.Node, fuse.Status) {
	if n := fs.nodes.Cached(inode.NodeID(id)); n != nil {
		return n, fuse.OK
	}
	if n := fs.createdNode(id); n != nil {
		return n, fuse.OK
	}
	n, err := fs.nodes.Get(inode.NodeID(id))
	if err != nil {
		fs.log.Debug("resolve nodeid", "nodeid", id, "err", err)
		if st := errno(err); st != fuse.EIO {
			return nil, st
		}
		return nil, fuse.Status(unix.ESTALE)
	}
	return n, fuse.OK
}

// checkName validates a single path component from the wire.
func checkName(name string) fuse.Status {
	if name == "" || strings.ContainsAny(name, "/\x00") {
		return fuse.EINVAL
	}
	if len(name) > 255 {
		return fuse.Status(unix.ENAMETOOLONG)
	}
	return fuse.OK
}

// checkNewName validates the name of something about to be created.
func checkNewName(name string) fuse.Status {
	if st := checkName(name); !st.Ok() {
		return st
	}
	if name == "." || name == ".." {
		return fuse.Status(unix.EEXIST)
	}
	return fuse.OK
}

// asCaller runs f with the caller's filesystem credentials (and the
// supplementary group the kernel sent with a create, if any).
func (fs *FS) asCaller(h *fuse.InHeader, f func() error) error {
	var g []uint32
	if fs.suppPending.Load() != 0 {
		groups, _ := fs.suppGroups.Load(h.Unique)
		g, _ = groups.([]uint32)
	}
	if h.Uid == fs.daemonUID && h.Gid == fs.daemonGID && g == nil {
		return f()
	}
	restore, err := creds.SwitchGroups(h.Uid, h.Gid, g)
	if err != nil {
		return err
	}
	defer restore()
	return f()
}

// SetSuppGroups is told by the engine which supplementary groups a create
// request carries (FUSE_CREATE_SUPP_GROUP).
func (fs *FS) SetSuppGroups(unique uint64, groups []uint32) (done func()) {
	fs.suppPending.Add(1)
	fs.suppGroups.Store(unique, groups)
	return func() {
		fs.suppGroups.Delete(unique)
		fs.suppPending.Add(-1)
	}
}

// rateLimited logs a warning at most once every ten seconds, so a guest
// repeating a failing request cannot flood the log.
type rateLimited struct {
	last atomic.Int64 // unix nanoseconds of the last line
}

func (r *rateLimited) log(l *slog.Logger, msg string, err error) {
	now := time.Now().UnixNano()
	last := r.last.Load()
	if now-last < int64(10*time.Second) || !r.last.CompareAndSwap(last, now) {
		return
	}
	l.Warn(msg, "err", err)
}
