// Package wire is the vhost-user message codec: the header, the payload
// layouts, and reading and writing messages with their file descriptors
// over a Unix stream socket. It is shared by the back-end (package
// vhostuser) and the Go front-end (package vhostfront).
//
// Guarantees: [Conn.ReadMessage] returns either a message whose header
// passed [Validate] (version, payload size for the request, number of fds)
// or an error; it never returns a payload larger than [MaxPayload], and
// every fd it received is either in the message or already closed. Errors
// are typed: [ErrDisconnected], [*ShortMessageError], [*FDCountError],
// [*BadMessageError]. A [Conn] may be used by one reader and one writer
// concurrently; it has no locks of its own (writes are serialised by the
// caller).
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrDisconnected means the peer closed the connection.
var ErrDisconnected = errors.New("vhost-user: peer disconnected")

// ShortMessageError means a message ended early or its payload size does
// not fit its request.
type ShortMessageError struct {
	Request   Request
	Want, Got int // Want < 0: at most -Want
}

func (e *ShortMessageError) Error() string {
	if e.Want < 0 {
		return fmt.Sprintf("vhost-user %v: payload of %d bytes, want at most %d", e.Request, e.Got, -e.Want)
	}
	return fmt.Sprintf("vhost-user %v: payload of %d bytes, want %d", e.Request, e.Got, e.Want)
}

// FDCountError means a message carried the wrong number of fds.
type FDCountError struct {
	Request  Request
	Min, Max int
	Got      int
}

func (e *FDCountError) Error() string {
	return fmt.Sprintf("vhost-user %v: %d fds attached, want %d..%d", e.Request, e.Got, e.Min, e.Max)
}

// BadMessageError is any other malformed message. Fatal errors leave the
// stream out of sync; the connection must be dropped.
type BadMessageError struct {
	Request Request
	Reason  string
	Fatal   bool
}

func (e *BadMessageError) Error() string {
	return fmt.Sprintf("vhost-user %v: %s", e.Request, e.Reason)
}

// Message is one received message. Its fds are owned by the message until
// taken with TakeFile; Close closes the rest.
type Message struct {
	Header
	Payload []byte
	FDs     []int // -1 once taken
}

// NumFDs returns the number of fds received with the message.
func (m *Message) NumFDs() int { return len(m.FDs) }

// TakeFile transfers ownership of fd i to the caller as an *os.File. With
// pollable it is switched to non-blocking mode first, so that the Go
// runtime poller (and deadlines) work on it; for the eventfds in use the
// flag is already set by QEMU, so the shared open file is not changed.
func (m *Message) TakeFile(i int, name string, pollable bool) (*os.File, error) {
	fd, err := m.TakeFD(i, name, pollable)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), name), nil
}

// TakeFD is TakeFile for a caller that keeps the plain descriptor (and
// so keeps it out of the Go runtime's poller).
func (m *Message) TakeFD(i int, name string, nonblock bool) (int, error) {
	if i >= len(m.FDs) || m.FDs[i] < 0 {
		return -1, &FDCountError{Request: m.Request, Min: i + 1, Max: i + 1, Got: len(m.FDs)}
	}
	fd := m.FDs[i]
	m.FDs[i] = -1
	if nonblock {
		if err := unix.SetNonblock(fd, true); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("%v: set %s non-blocking: %w", m.Request, name, err)
		}
	}
	return fd, nil
}

// Close closes every fd not taken.
func (m *Message) Close() {
	for i, fd := range m.FDs {
		if fd >= 0 {
			unix.Close(fd)
			m.FDs[i] = -1
		}
	}
}

// U64 decodes a u64 payload (size already validated).
func (m *Message) U64() uint64 { return binary.LittleEndian.Uint64(m.Payload) }

// ErrInterrupted is returned by ReadMessage after Interrupt, at a message
// boundary: no byte of the next message has been consumed.
var ErrInterrupted = errors.New("vhost-user: read interrupted between messages")

// Conn frames vhost-user messages on a Unix stream socket.
type Conn struct {
	c         *net.UnixConn
	oob       []byte
	interrupt atomic.Bool
}

// Interrupt makes a pending or future ReadMessage return ErrInterrupted
// at the next message boundary; a message already being read is finished
// first. It may be called from any goroutine.
func (c *Conn) Interrupt() {
	c.interrupt.Store(true)
	_ = c.c.SetReadDeadline(time.Unix(1, 0))
}

// ResumeReading undoes Interrupt.
func (c *Conn) ResumeReading() {
	c.interrupt.Store(false)
	_ = c.c.SetReadDeadline(time.Time{})
}

// readFull reads len(b) bytes of a message that has started; an Interrupt
// cannot cut it short.
func (c *Conn) readFull(b []byte) error {
	for n := 0; n < len(b); {
		k, err := c.c.Read(b[n:])
		n += k
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && c.interrupt.Load() {
				_ = c.c.SetReadDeadline(time.Time{})
				continue
			}
			return mapEOF(err)
		}
	}
	return nil
}

// NewConn wraps c.
func NewConn(c *net.UnixConn) *Conn {
	return &Conn{c: c, oob: make([]byte, unix.CmsgSpace(4*(MaxFDs+8)))}
}

// Close closes the socket.
func (c *Conn) Close() error { return c.c.Close() }

// UnixConn returns the socket.
func (c *Conn) UnixConn() *net.UnixConn { return c.c }

func mapEOF(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("%w (%v)", ErrDisconnected, err)
	}
	return err
}

// ReadMessage reads one message and validates it with spec (nil: no
// validation beyond the version and MaxPayload).
func (c *Conn) ReadMessage(spec func(Header) (Spec, bool)) (*Message, error) {
	var hdr [HeaderSize]byte
	n, oobn, flags, _, err := c.c.ReadMsgUnix(hdr[:], c.oob)
	var fds []int
	if oobn > 0 {
		fds = parseRights(c.oob[:oobn])
	}
	m := &Message{FDs: fds}
	if n <= 0 && errors.Is(err, os.ErrDeadlineExceeded) && c.interrupt.Load() { // n is -1 on some errors
		m.Close()
		return nil, ErrInterrupted
	}
	if err != nil || n <= 0 {
		m.Close()
		if err == nil {
			err = io.EOF
		}
		return nil, mapEOF(err)
	}
	if flags&unix.MSG_CTRUNC != 0 {
		m.Close()
		// The stream is still in sync: read and drop the message.
		if h, err := c.finishHeader(hdr[:], n); err == nil && h.Size <= MaxPayload {
			_ = c.readFull(make([]byte, h.Size))
			return nil, &FDCountError{Request: h.Request, Max: MaxFDs, Got: MaxFDs + 1}
		}
		return nil, &BadMessageError{Reason: "too many fds", Fatal: true}
	}
	m.Header, err = c.finishHeader(hdr[:], n)
	if err != nil {
		m.Close()
		return nil, err
	}
	if m.Flags&versionMask != FlagVersion {
		m.Close()
		return nil, &BadMessageError{Request: m.Request, Reason: fmt.Sprintf("protocol version %d", m.Flags&versionMask), Fatal: true}
	}
	if m.Size > MaxPayload {
		m.Close()
		return nil, &BadMessageError{Request: m.Request, Reason: fmt.Sprintf("payload size %d over %d", m.Size, MaxPayload), Fatal: true}
	}
	m.Payload = make([]byte, m.Size)
	if err := c.readFull(m.Payload); err != nil {
		m.Close()
		return nil, err
	}
	if spec != nil {
		s, ok := spec(m.Header)
		if !ok {
			return m, &BadMessageError{Request: m.Request, Reason: "unsupported request"}
		}
		if err := s.Check(m); err != nil {
			return m, err
		}
	}
	return m, nil
}

func (c *Conn) finishHeader(hdr []byte, n int) (Header, error) {
	if n < HeaderSize {
		if err := c.readFull(hdr[n:]); err != nil {
			return Header{}, err
		}
	}
	return DecodeHeader(hdr), nil
}

func parseRights(oob []byte) []int {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var fds []int
	for _, cm := range msgs {
		if cm.Header.Level != unix.SOL_SOCKET || cm.Header.Type != unix.SCM_RIGHTS {
			continue
		}
		// ParseUnixRights fails only on a truncated message; the
		// fds it does return must still be closed by the caller.
		r, _ := unix.ParseUnixRights(&cm)
		fds = append(fds, r...)
	}
	return fds
}

// WriteMessage writes one message with optional fds (not closed).
func (c *Conn) WriteMessage(h Header, payload []byte, fds []int) error {
	h.Size = uint32(len(payload))
	b := make([]byte, HeaderSize+len(payload))
	h.Encode(b)
	copy(b[HeaderSize:], payload)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	n, _, err := c.c.WriteMsgUnix(b, oob, nil)
	if err != nil {
		return mapEOF(fmt.Errorf("write %v: %w", h.Request, err))
	}
	if n < len(b) {
		if _, err := c.c.Write(b[n:]); err != nil {
			return mapEOF(fmt.Errorf("write %v: %w", h.Request, err))
		}
	}
	return nil
}

// Spec says what a valid message of one request looks like.
type Spec struct {
	Size    int // exact payload size; with MinSize, the minimum
	MinSize bool
	// MinFDs..MaxFDs fds may be attached.
	MinFDs, MaxFDs int
}

// Check validates m against s.
func (s Spec) Check(m *Message) error {
	got := len(m.Payload)
	if (s.MinSize && got < s.Size) || (!s.MinSize && got != s.Size) {
		return &ShortMessageError{Request: m.Request, Want: s.Size, Got: got}
	}
	if n := len(m.FDs); n < s.MinFDs || n > s.MaxFDs {
		return &FDCountError{Request: m.Request, Min: s.MinFDs, Max: s.MaxFDs, Got: n}
	}
	return nil
}

// BackendSpec returns the shape of front-end requests a back-end accepts.
// GET_FEATURES and friends carry no payload, though some front-ends send a
// zeroed u64; both are accepted.
func BackendSpec(h Header) (Spec, bool) {
	switch h.Request {
	case ReqGetFeatures, ReqGetProtocolFeatures, ReqGetQueueNum, ReqGetMaxMemSlots,
		ReqGetStatus, ReqSetOwner, ReqResetOwner, ReqResetDevice, ReqCheckDeviceState:
		if h.Size == SizeU64 {
			return Spec{Size: SizeU64}, true
		}
		return Spec{Size: 0}, true
	case ReqSetFeatures, ReqSetProtocolFeatures, ReqSetStatus:
		return Spec{Size: SizeU64}, true
	case ReqSetMemTable:
		return Spec{Size: SizeMemTable, MinSize: true, MaxFDs: MaxFDs}, true
	case ReqSetLogBase:
		return Spec{Size: SizeLog, MinFDs: 1, MaxFDs: 1}, true
	case ReqSetLogFD, ReqSetBackendReqFD:
		return Spec{Size: 0, MinFDs: 1, MaxFDs: 1}, true
	case ReqSetVringNum, ReqSetVringBase, ReqGetVringBase, ReqSetVringEnable:
		return Spec{Size: SizeVringState}, true
	case ReqSetVringAddr:
		return Spec{Size: SizeVringAddr}, true
	case ReqSetVringKick, ReqSetVringCall, ReqSetVringErr:
		return Spec{Size: SizeU64, MaxFDs: 1}, true
	case ReqAddMemReg:
		return Spec{Size: SizeMemRegMsg, MinFDs: 1, MaxFDs: 1}, true
	case ReqRemMemReg:
		// QEMU attaches the region's fd although it is not needed.
		return Spec{Size: SizeMemRegMsg, MaxFDs: 1}, true
	case ReqGetConfig, ReqSetConfig:
		return Spec{Size: SizeConfigHdr, MinSize: true}, true
	case ReqSetDeviceStateFD:
		return Spec{Size: SizeDevState, MinFDs: 1, MaxFDs: 1}, true
	}
	return Spec{}, false
}
