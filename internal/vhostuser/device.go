package vhostuser

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/govirtiofsd/govirtiofsd/internal/vhostuser/wire"
	"github.com/govirtiofsd/govirtiofsd/internal/virtqueue"
)

// aLongTimeAgo is a deadline in the past, to unblock a pending read.
func aLongTimeAgo() time.Time { return time.Unix(1, 0) }

// Feature sets this back-end offers.
const (
	offeredFeatures = wire.FeatureVersion1 | wire.FeatureRingIndirectDesc |
		wire.FeatureRingEventIdx | wire.FeatureProtocolFeatures | wire.FeatureLogAll
	offeredProtocol = wire.ProtocolMQ | wire.ProtocolReplyAck | wire.ProtocolBackendReq |
		wire.ProtocolResetDevice | wire.ProtocolConfigureMemSlots | wire.ProtocolStatus |
		wire.ProtocolLogSHMFD
)

// device is the back-end state of one front-end connection.
type device struct {
	cfg     *Config
	log     *slog.Logger
	conn    *wire.Conn
	handler *initRecorder

	// ctlMu is held by the connection goroutine while it dispatches a
	// message, and by Connection.Snapshot. The fields below up to mu are
	// written only by the connection goroutine, under ctlMu.
	ctlMu sync.Mutex

	owner      bool
	features   uint64 // acknowledged by SET_FEATURES
	protocol   uint64 // acknowledged by SET_PROTOCOL_FEATURES
	status     uint8
	backendReq *os.File // SET_BACKEND_REQ_FD, kept for future backend requests
	vrings     []*vring
	devState   *deviceStateTransfer

	dirty dirtyLog // shared with the request workers

	// hiprio is the running hiprio ring's run when the request rings'
	// threads serve it (ThreadPoolSize 0): they watch its kick beside
	// their own and serve it between and after their requests.
	hiprio atomic.Pointer[runner]

	// handoverReq carries a pending Connection.Handover to the
	// connection goroutine (capacity 1).
	handoverReq chan chan handoverResult

	mu sync.Mutex
	// mem is the current memory table (one reference held here).
	mem *virtqueue.Memory // +checklocks:mu
}

func newDevice(cfg *Config, conn *net.UnixConn) *device {
	d := &device{
		cfg:     cfg,
		log:     cfg.Logger,
		conn:    wire.NewConn(conn),
		handler: &initRecorder{Handler: cfg.NewHandler()},

		handoverReq: make(chan chan handoverResult, 1),
	}
	for i := 0; i < 1+cfg.NumRequestQueues; i++ {
		d.vrings = append(d.vrings, newVring(d, i))
	}
	return d
}

// serve runs the connection loop until the front-end disconnects.
func (d *device) serve(ctx context.Context) (err error) {
	stop := context.AfterFunc(ctx, func() { d.conn.Close() })
	defer stop()
	if d.cfg.OnConnect != nil {
		d.cfg.OnConnect(&Connection{d: d})
	}
	defer func() {
		if p := recover(); p != nil {
			d.log.Error("vhost-user connection panicked", "panic", p, "stack", string(debug.Stack()))
			err = fmt.Errorf("vhostuser: connection panicked: %v", p)
		}
		d.ctlMu.Lock()
		d.teardown()
		d.ctlMu.Unlock()
	}()
	for {
		m, err := d.conn.ReadMessage(wire.BackendSpec)
		if errors.Is(err, wire.ErrInterrupted) {
			select {
			case req := <-d.handoverReq:
				res := d.handOverUnderCtl()
				req <- res
				if res.err == nil {
					return ErrHandedOver
				}
			default:
			}
			d.conn.ResumeReading()
			continue
		}
		if err != nil {
			if errors.Is(err, wire.ErrDisconnected) || ctx.Err() != nil {
				return nil
			}
			var bad *wire.BadMessageError
			if m == nil || (errors.As(err, &bad) && bad.Fatal) {
				return fmt.Errorf("vhostuser: read message: %w", err)
			}
			// Well framed but invalid: refuse it and go on.
			d.log.Warn("vhost-user message refused", "request", m.Request, "err", err)
			m.Close()
			if werr := d.refuse(m); werr != nil {
				return werr
			}
			continue
		}
		werr := d.dispatchUnderCtl(m)
		m.Close()
		if werr != nil {
			if errors.Is(werr, wire.ErrDisconnected) {
				return nil
			}
			return werr
		}
	}
}

// teardown stops every ring and drops the memory table and fds.
func (d *device) teardown() {
	d.teardownState()
	d.conn.Close()
	if d.backendReq != nil {
		d.backendReq.Close()
		d.backendReq = nil
	}
}

// replies reports whether req always carries a reply of its own.
func replies(req wire.Request, protocol uint64) bool {
	switch req {
	case wire.ReqGetFeatures, wire.ReqGetProtocolFeatures, wire.ReqGetVringBase,
		wire.ReqGetQueueNum, wire.ReqGetConfig, wire.ReqGetMaxMemSlots,
		wire.ReqGetStatus, wire.ReqSetDeviceStateFD, wire.ReqCheckDeviceState:
		return true
	case wire.ReqSetLogBase:
		return protocol&wire.ProtocolLogSHMFD != 0
	}
	return false
}

func (d *device) reply(m *wire.Message, payload []byte) error {
	h := wire.Header{Request: m.Request, Flags: wire.FlagVersion | wire.FlagReply}
	return d.conn.WriteMessage(h, payload, nil)
}

// ack answers a message without a reply of its own: a u64 status if the
// front-end asked for one (REPLY_ACK), else a log line on failure.
func (d *device) ack(m *wire.Message, err error) error {
	if err != nil {
		d.log.Warn("vhost-user request failed", "request", m.Request, "err", err)
	}
	if d.protocol&wire.ProtocolReplyAck == 0 || m.Flags&wire.FlagNeedReply == 0 {
		return nil
	}
	var v uint64
	if err != nil {
		v = 1
	}
	return d.reply(m, wire.EncodeU64(v))
}

// refuse answers an invalid message: requests with a reply of their own
// get an empty one (which front-ends treat as failure), others a failed
// ack.
func (d *device) refuse(m *wire.Message) error {
	if replies(m.Request, d.protocol) {
		return d.reply(m, nil)
	}
	if d.protocol&wire.ProtocolReplyAck != 0 && m.Flags&wire.FlagNeedReply != 0 {
		return d.reply(m, wire.EncodeU64(1))
	}
	return nil
}

func (d *device) vring(index uint32) (*vring, error) {
	if index >= uint32(len(d.vrings)) {
		return nil, fmt.Errorf("vring index %d out of range (%d queues)", index, len(d.vrings))
	}
	return d.vrings[index], nil
}

func (d *device) handOverUnderCtl() handoverResult {
	d.ctlMu.Lock()
	defer d.ctlMu.Unlock()
	return d.handOver()
}

func (d *device) dispatchUnderCtl(m *wire.Message) error {
	d.ctlMu.Lock()
	defer d.ctlMu.Unlock() // also on panic: the recover in serve needs it
	return d.dispatch(m)
}

// dispatch handles one validated message. Its error is only for the
// connection (a failed write); request failures are answered.
func (d *device) dispatch(m *wire.Message) error {
	if d.log.Enabled(context.Background(), slog.LevelDebug) {
		d.log.Debug("vhost-user request", "request", m.Request, "size", m.Size, "fds", m.NumFDs())
	}
	switch m.Request {
	case wire.ReqGetFeatures:
		return d.reply(m, wire.EncodeU64(offeredFeatures))
	case wire.ReqGetProtocolFeatures:
		return d.reply(m, wire.EncodeU64(d.offeredProtocol()))
	case wire.ReqGetQueueNum:
		return d.reply(m, wire.EncodeU64(uint64(len(d.vrings))))
	case wire.ReqGetMaxMemSlots:
		return d.reply(m, wire.EncodeU64(uint64(d.cfg.MaxMemSlots)))
	case wire.ReqGetStatus:
		return d.reply(m, wire.EncodeU64(uint64(d.status)))
	case wire.ReqGetVringBase:
		s := wire.DecodeVringState(m.Payload)
		v, err := d.vring(s.Index)
		if err != nil {
			d.log.Warn("vhost-user request failed", "request", m.Request, "err", err)
			return d.reply(m, wire.EncodeVringState(s.Index, 0))
		}
		return d.reply(m, wire.EncodeVringState(s.Index, uint32(v.getBase())))
	case wire.ReqGetConfig:
		return d.getConfig(m)
	case wire.ReqSetDeviceStateFD:
		return d.setDeviceStateFD(m)
	case wire.ReqCheckDeviceState:
		return d.checkDeviceState(m)
	case wire.ReqSetLogBase:
		if d.protocol&wire.ProtocolLogSHMFD == 0 {
			break // no reply of its own: ack below
		}
		err := d.setLogBase(m)
		var v uint64
		if err != nil {
			d.log.Warn("vhost-user SET_LOG_BASE failed", "err", err)
			v = 1
		}
		return d.reply(m, wire.EncodeU64(v))
	}
	return d.ack(m, d.handleSet(m))
}

func (d *device) offeredProtocol() uint64 {
	p := uint64(offeredProtocol)
	// CONFIG only with a tag: QEMU's vhost-user-fs-pci takes the tag
	// from its command line and warns about a back-end offering CONFIG.
	if d.cfg.Tag != "" {
		p |= wire.ProtocolConfig
	}
	if d.cfg.DeviceState != nil {
		p |= wire.ProtocolDeviceState
	}
	return p
}

// handleSet handles the messages without a reply of their own.
func (d *device) handleSet(m *wire.Message) error {
	switch m.Request {
	case wire.ReqSetOwner:
		d.owner = true
		return nil
	case wire.ReqResetOwner, wire.ReqResetDevice:
		d.resetDevice()
		return nil
	case wire.ReqSetFeatures:
		f := m.U64()
		if f&^offeredFeatures != 0 {
			return fmt.Errorf("features %#x not offered (offered %#x)", f, uint64(offeredFeatures))
		}
		d.features = f
		d.dirty.active.Store(f&wire.FeatureLogAll != 0)
		if f&wire.FeatureProtocolFeatures == 0 {
			d.protocol = 0
		}
		return nil
	case wire.ReqSetProtocolFeatures:
		p := m.U64()
		if p&^d.offeredProtocol() != 0 {
			return fmt.Errorf("protocol features %#x not offered (offered %#x)", p, d.offeredProtocol())
		}
		d.protocol = p
		return nil
	case wire.ReqSetStatus:
		s := m.U64()
		if s > 0xff {
			return fmt.Errorf("status %#x out of range", s)
		}
		d.status = uint8(s)
		return nil
	case wire.ReqSetMemTable:
		return d.setMemTable(m)
	case wire.ReqAddMemReg:
		return d.addMemReg(m)
	case wire.ReqRemMemReg:
		return d.remMemReg(m)
	case wire.ReqSetBackendReqFD:
		if d.protocol&wire.ProtocolBackendReq == 0 {
			return errors.New("BACKEND_REQ not negotiated")
		}
		f, err := m.TakeFile(0, "backend-req", false)
		if err != nil {
			return err
		}
		if d.backendReq != nil {
			d.backendReq.Close()
		}
		d.backendReq = f
		return nil
	case wire.ReqSetConfig:
		return errors.New("the virtio-fs config space is read-only")
	case wire.ReqSetLogBase:
		return errors.New("SET_LOG_BASE without LOG_SHMFD")
	case wire.ReqSetLogFD:
		return errors.New("SET_LOG_FD (log eventfd) not supported")
	case wire.ReqSetVringNum, wire.ReqSetVringBase, wire.ReqSetVringEnable:
		s := wire.DecodeVringState(m.Payload)
		v, err := d.vring(s.Index)
		if err != nil {
			return err
		}
		switch m.Request {
		case wire.ReqSetVringNum:
			return v.setNum(s.Num)
		case wire.ReqSetVringBase:
			return v.setBase(s.Num)
		default:
			if d.features&wire.FeatureProtocolFeatures == 0 {
				return errors.New("SET_VRING_ENABLE without VHOST_USER_F_PROTOCOL_FEATURES")
			}
			if s.Num > 1 {
				return fmt.Errorf("SET_VRING_ENABLE %d", s.Num)
			}
			v.setEnabled(s.Num == 1)
			return nil
		}
	case wire.ReqSetVringAddr:
		a := wire.DecodeVringAddr(m.Payload)
		v, err := d.vring(a.Index)
		if err != nil {
			return err
		}
		return v.setAddr(a)
	case wire.ReqSetVringKick, wire.ReqSetVringCall, wire.ReqSetVringErr:
		return d.setVringFD(m)
	}
	return fmt.Errorf("unsupported request %v", m.Request)
}

// setVringFD handles SET_VRING_KICK/CALL/ERR.
func (d *device) setVringFD(m *wire.Message) error {
	u := m.U64()
	if u&^uint64(wire.VringIndexMask|wire.VringNoFDFlag) != 0 {
		return fmt.Errorf("reserved bits set in %#x", u)
	}
	v, err := d.vring(uint32(u & wire.VringIndexMask))
	if err != nil {
		return err
	}
	noFD := u&wire.VringNoFDFlag != 0
	if noFD != (m.NumFDs() == 0) {
		return &wire.FDCountError{Request: m.Request, Min: 1, Max: 1, Got: m.NumFDs()}
	}
	name := fmt.Sprintf("%v-%d", m.Request, v.index)
	switch m.Request {
	case wire.ReqSetVringKick:
		if noFD {
			return errors.New("polling mode (no kick fd) is not supported")
		}
		fd, err := m.TakeFD(0, name, true)
		if err != nil {
			return err
		}
		return v.setKick(newEventFD(fd))
	case wire.ReqSetVringCall:
		var call *eventFD
		if !noFD {
			fd, err := m.TakeFD(0, name, false)
			if err != nil {
				return err
			}
			call = newEventFD(fd)
		}
		v.setCall(call)
	default:
		var f *os.File
		if !noFD {
			if f, err = m.TakeFile(0, name, false); err != nil {
				return err
			}
		}
		v.setErr(f)
	}
	return nil
}

// setMemTable replaces the whole memory table.
func (d *device) setMemTable(m *wire.Message) error {
	n := binary.LittleEndian.Uint32(m.Payload)
	if n > wire.MaxFDs || len(m.Payload) < wire.SizeMemTable+wire.SizeRegion*int(n) {
		return fmt.Errorf("%d regions in %d bytes", n, len(m.Payload))
	}
	if int(n) != m.NumFDs() {
		return &wire.FDCountError{Request: m.Request, Min: int(n), Max: int(n), Got: m.NumFDs()}
	}
	var regions []*virtqueue.Region
	for i := 0; i < int(n); i++ {
		l := wire.DecodeRegion(m.Payload[wire.SizeMemTable+wire.SizeRegion*i:])
		f, err := m.TakeFile(i, fmt.Sprintf("mem-region-%d", i), false)
		if err == nil {
			var r *virtqueue.Region
			r, err = virtqueue.MapRegion(f, l)
			if err == nil {
				regions = append(regions, r)
				continue
			}
		}
		for _, r := range regions {
			r.Release()
		}
		return fmt.Errorf("region %d: %w", i, err)
	}
	mem, err := virtqueue.NewMemory(regions)
	if err != nil {
		return err
	}
	d.swapMemory(mem)
	return nil
}

func (d *device) addMemReg(m *wire.Message) error {
	if d.protocol&wire.ProtocolConfigureMemSlots == 0 {
		return errors.New("CONFIGURE_MEM_SLOTS not negotiated")
	}
	l := wire.DecodeRegion(m.Payload[8:])
	d.mu.Lock()
	cur := d.mem
	d.mu.Unlock()
	if cur != nil {
		for _, r := range cur.Regions() {
			if r.Layout() == l {
				return nil // already mapped (a front-end re-adding it)
			}
		}
		if cur.Len() >= d.cfg.MaxMemSlots {
			return fmt.Errorf("all %d memory slots in use", d.cfg.MaxMemSlots)
		}
	}
	f, err := m.TakeFile(0, "mem-region", false)
	if err != nil {
		return err
	}
	r, err := virtqueue.MapRegion(f, l)
	if err != nil {
		return err
	}
	var mem *virtqueue.Memory
	if cur == nil {
		mem, err = virtqueue.NewMemory([]*virtqueue.Region{r})
	} else {
		mem, err = cur.With(r)
	}
	if err != nil {
		return err
	}
	d.swapMemory(mem)
	return nil
}

func (d *device) remMemReg(m *wire.Message) error {
	if d.protocol&wire.ProtocolConfigureMemSlots == 0 {
		return errors.New("CONFIGURE_MEM_SLOTS not negotiated")
	}
	l := wire.DecodeRegion(m.Payload[8:])
	d.mu.Lock()
	cur := d.mem
	d.mu.Unlock()
	if cur == nil {
		return fmt.Errorf("no region %v", l)
	}
	mem, found := cur.Without(l)
	if !found {
		mem.Release()
		return fmt.Errorf("no region %v", l)
	}
	d.swapMemory(mem)
	return nil
}

// swapMemory installs mem (taking the caller's reference) and re-maps the
// rings of started queues. The old table stays mapped until its last
// in-flight request completes.
func (d *device) swapMemory(mem *virtqueue.Memory) {
	d.mu.Lock()
	old := d.mem
	d.mem = mem
	d.mu.Unlock()
	for _, v := range d.vrings {
		v.remap(mem)
	}
	if old != nil {
		old.Release()
	}
}

// memory returns the current table with a reference for the caller, or nil.
func (d *device) memory() *virtqueue.Memory {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.mem == nil {
		return nil
	}
	return d.mem.Acquire()
}

// resetDevice handles RESET_DEVICE (and RESET_OWNER, which QEMU sends in
// its place without RESET_DEVICE): every ring is stopped and forgotten, the
// status cleared, a device state transfer aborted. Ownership, the
// negotiated features and protocol features, the memory table and the
// dirty log survive, as in libvhost-user: QEMU negotiates protocol features
// once per connection and resets the device on every guest reset, then
// goes straight to ADD_MEM_REG and ring setup.
func (d *device) resetDevice() {
	for _, v := range d.vrings {
		v.reset()
	}
	d.status = 0
	if d.devState != nil {
		d.devState.close()
		d.devState = nil
	}
}

// teardownState drops everything at the end of a connection.
func (d *device) teardownState() {
	d.resetDevice()
	d.mu.Lock()
	old := d.mem
	d.mem = nil
	d.mu.Unlock()
	if old != nil {
		old.Release()
	}
	d.features, d.protocol = 0, 0
	d.dirty.active.Store(false)
	d.dirty.close()
}

// configSpace returns the virtio-fs config space.
func (d *device) configSpace() []byte {
	b := make([]byte, wire.FSConfigSize)
	copy(b, d.cfg.Tag)
	binary.LittleEndian.PutUint32(b[wire.FSTagSize:], uint32(d.cfg.NumRequestQueues))
	return b
}

func (d *device) getConfig(m *wire.Message) error {
	off := binary.LittleEndian.Uint32(m.Payload)
	size := binary.LittleEndian.Uint32(m.Payload[4:])
	cs := d.configSpace()
	if uint64(off)+uint64(size) > uint64(len(cs)) || len(m.Payload) != wire.SizeConfigHdr+int(size) {
		d.log.Warn("vhost-user GET_CONFIG refused", "offset", off, "size", size, "payload", len(m.Payload))
		return d.reply(m, wire.EncodeConfig(off, nil))
	}
	return d.reply(m, wire.EncodeConfig(off, cs[off:off+size]))
}
