package vhostuser

import (
	"encoding/json"
	"fmt"
	"os"
	"syscall"

	"github.com/govirtiofsd/govirtiofsd/internal/virtqueue"
	"golang.org/x/sys/unix"
)

// ConnectionState is everything a successor process needs, besides the
// file descriptors themselves, to take over a live front-end connection:
// negotiated features, the guest memory layout and every vring's geometry
// and indices. FD fields are indices into the fd list handed over with the
// state (-1: none); the fds are passed out of band (SCM_RIGHTS, exec
// inheritance, a supervisor's fd store).
//
// VringState.InFlight covers a planned handover (exec-based upgrade): the
// snapshot lists the heads popped but not completed.
//
// TODO(restart): keep that in-flight descriptor log in shared memory (as
// VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD does, one entry per descriptor with
// a counter for ordering), so that it survives a crash of the daemon and a
// supervisor-restarted successor can re-run what its predecessor died
// holding.
type ConnectionState struct {
	Version          int           `json:"version"`
	SocketFD         int           `json:"socket_fd"`
	Owner            bool          `json:"owner"`
	Features         uint64        `json:"features"`
	ProtocolFeatures uint64        `json:"protocol_features"`
	Status           uint8         `json:"status"`
	BackendReqFD     int           `json:"backend_req_fd"`
	Regions          []RegionState `json:"regions"`
	Vrings           []VringState  `json:"vrings"`
	// FUSEInit is the guest's FUSE_INIT request as received, replayed
	// into the successor's Handler by ResumeConn (nil before INIT).
	FUSEInit []byte `json:"fuse_init,omitempty"`
}

// RegionState is one guest memory region and the fd it is mapped from.
type RegionState struct {
	virtqueue.RegionLayout
	FD int `json:"fd"`
}

// VringState is one vring. LastAvail and UsedIdx are the ring indices at
// the time of the snapshot; for a started ring with requests in flight
// LastAvail is ahead of UsedIdx by their number.
type VringState struct {
	Index     int    `json:"index"`
	Num       uint16 `json:"num"`
	AddrSet   bool   `json:"addr_set"`
	AddrFlags uint32 `json:"addr_flags"`
	DescUser  uint64 `json:"desc_user"`
	AvailUser uint64 `json:"avail_user"`
	UsedUser  uint64 `json:"used_user"`
	LogAddr   uint64 `json:"log_addr"`
	LastAvail uint16 `json:"last_avail"`
	UsedIdx   uint16 `json:"used_idx"`
	Started   bool   `json:"started"`
	Enabled   bool   `json:"enabled"`
	Broken    bool   `json:"broken"`
	// InFlight lists the heads popped but not yet returned, in no order:
	// a successor re-runs them (their descriptors stay valid until used).
	InFlight []uint16 `json:"in_flight,omitempty"`
	KickFD   int      `json:"kick_fd"`
	CallFD   int      `json:"call_fd"`
	ErrFD    int      `json:"err_fd"`
}

const connectionStateVersion = 1

// Marshal encodes the state (JSON, versioned).
func (s *ConnectionState) Marshal() ([]byte, error) {
	c := *s
	c.Version = connectionStateVersion
	b, err := json.Marshal(&c)
	if err != nil {
		return nil, fmt.Errorf("vhostuser: marshal connection state: %w", err)
	}
	return b, nil
}

// UnmarshalConnectionState decodes and checks a state Marshal produced.
// numFDs is the number of fds handed over with it.
func UnmarshalConnectionState(b []byte, numFDs int) (*ConnectionState, error) {
	var s ConnectionState
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("vhostuser: unmarshal connection state: %w", err)
	}
	if err := s.validate(numFDs); err != nil {
		return nil, err
	}
	return &s, nil
}

// validate checks the version and that every fd index is in range and
// used once.
func (s *ConnectionState) validate(numFDs int) error {
	if s.Version != connectionStateVersion {
		return fmt.Errorf("vhostuser: connection state version %d, want %d", s.Version, connectionStateVersion)
	}
	used := map[int]bool{}
	check := func(what string, fd int, required bool) error {
		if fd == -1 && !required {
			return nil
		}
		if fd < 0 || fd >= numFDs {
			return fmt.Errorf("vhostuser: connection state: %s fd index %d out of range (%d fds)", what, fd, numFDs)
		}
		if used[fd] {
			return fmt.Errorf("vhostuser: connection state: fd index %d used twice", fd)
		}
		used[fd] = true
		return nil
	}
	if err := check("socket", s.SocketFD, true); err != nil {
		return err
	}
	if err := check("backend request", s.BackendReqFD, false); err != nil {
		return err
	}
	for i, r := range s.Regions {
		if err := r.RegionLayout.Validate(); err != nil {
			return fmt.Errorf("vhostuser: connection state: region %d: %w", i, err)
		}
		if err := check("region", r.FD, true); err != nil {
			return err
		}
	}
	for i, v := range s.Vrings {
		if v.Index != i {
			return fmt.Errorf("vhostuser: connection state: vring %d has index %d", i, v.Index)
		}
		for _, f := range []struct {
			what string
			fd   int
		}{{"kick", v.KickFD}, {"call", v.CallFD}, {"err", v.ErrFD}} {
			if err := check(f.what, f.fd, false); err != nil {
				return err
			}
		}
		if v.Started && v.KickFD < 0 {
			return fmt.Errorf("vhostuser: connection state: started vring %d without kick fd", i)
		}
	}
	return nil
}

// fdList collects duplicated fds for a snapshot.
type fdList struct {
	files []*os.File
	err   error
}

// add dups f and returns its index, or -1 for nil.
func (l *fdList) add(f interface {
	SyscallConn() (syscall.RawConn, error)
}, name string) int {
	if f == nil || l.err != nil {
		return -1
	}
	rc, err := f.SyscallConn()
	if err != nil {
		l.err = err
		return -1
	}
	idx := -1
	if cerr := rc.Control(func(fd uintptr) { idx = l.addFD(int(fd), name) }); cerr != nil && l.err == nil {
		l.err = cerr
		return -1
	}
	return idx
}

// addFD dups fd and returns its index.
func (l *fdList) addFD(fd int, name string) int {
	if l.err != nil {
		return -1
	}
	nfd, err := dupCloexec(fd)
	if err != nil {
		l.err = err
		return -1
	}
	l.files = append(l.files, os.NewFile(uintptr(nfd), name))
	return len(l.files) - 1
}

func (l *fdList) close() {
	for _, f := range l.files {
		f.Close()
	}
}

// snapshot captures the connection state with duplicates of its fds
// (the caller closes them). It must run on the connection goroutine, so
// the configuration cannot change under it; started rings keep running,
// so the indices are a moment's view.
func (d *device) snapshot() (*ConnectionState, []*os.File, error) {
	var fds fdList
	s := &ConnectionState{
		Version: connectionStateVersion, Owner: d.owner,
		Features: d.features, ProtocolFeatures: d.protocol, Status: d.status,
		FUSEInit: d.handler.initRequest(),
	}
	s.SocketFD = fds.add(d.conn.UnixConn(), "vhost-user-socket")
	if d.backendReq != nil {
		s.BackendReqFD = fds.add(d.backendReq, "backend-req")
	} else {
		s.BackendReqFD = -1
	}
	if mem := d.memory(); mem != nil {
		for _, r := range mem.Regions() {
			fd := -1
			if r.File() != nil {
				fd = fds.add(r.File(), "mem-region")
			}
			s.Regions = append(s.Regions, RegionState{RegionLayout: r.Layout(), FD: fd})
		}
		mem.Release()
	}
	for _, v := range d.vrings {
		vs := VringState{
			Index: v.index, Num: v.num, AddrSet: v.addrSet, AddrFlags: v.addr.Flags,
			DescUser: v.addr.DescUser, AvailUser: v.addr.AvailUser, UsedUser: v.addr.UsedUser, LogAddr: v.addr.Log,
			LastAvail: v.base, Started: v.started(), Enabled: v.enabled.Load(),
			KickFD: -1, CallFD: -1, ErrFD: -1,
		}
		if v.kick != nil {
			vs.KickFD = fds.addFD(v.kick.fd, "kick")
		}
		if v.errFD != nil {
			vs.ErrFD = fds.add(v.errFD, "err")
		}
		v.mu.Lock()
		if v.call != nil {
			vs.CallFD = fds.addFD(v.call.fd, "call")
		}
		if v.q != nil {
			vs.LastAvail, vs.UsedIdx = v.q.LastAvail(), v.q.UsedIdx()
		} else {
			vs.UsedIdx = v.usedIdx
		}
		for h, busy := range v.inflight {
			if busy {
				vs.InFlight = append(vs.InFlight, uint16(h))
			}
		}
		vs.Broken = v.broken
		v.mu.Unlock()
		s.Vrings = append(s.Vrings, vs)
	}
	if fds.err != nil {
		fds.close()
		return nil, nil, fmt.Errorf("vhostuser: snapshot: duplicate fds: %w", fds.err)
	}
	return s, fds.files, nil
}

func dupCloexec(fd int) (int, error) {
	return unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
}

// Connection is a live front-end connection, handed to Config.OnConnect.
type Connection struct{ d *device }

// Snapshot captures the connection state and duplicates of its fds, in
// the order ConnectionState's fd indices refer to; the caller closes them.
// It waits for the message being dispatched, if any.
func (c *Connection) Snapshot() (*ConnectionState, []*os.File, error) {
	c.d.ctlMu.Lock()
	defer c.d.ctlMu.Unlock()
	return c.d.snapshot()
}
