package wire

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func socketpair(t testing.TB) (*Conn, *os.File) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	a := os.NewFile(uintptr(fds[0]), "a")
	c, err := net.FileConn(a)
	a.Close()
	if err != nil {
		t.Fatal(err)
	}
	return NewConn(c.(*net.UnixConn)), os.NewFile(uintptr(fds[1]), "b")
}

func TestReadMessageWithFDs(t *testing.T) {
	c, peer := socketpair(t)
	defer c.Close()
	pc, _ := net.FileConn(peer) // dups the fd
	peer.Close()
	defer pc.Close()
	w := NewConn(pc.(*net.UnixConn))
	r, wr, _ := os.Pipe()
	defer r.Close()
	defer wr.Close()
	if err := w.WriteMessage(Header{Request: ReqSetVringCall, Flags: FlagVersion}, EncodeU64(1), []int{int(r.Fd())}); err != nil {
		t.Fatal(err)
	}
	m, err := c.ReadMessage(BackendSpec)
	if err != nil || m.NumFDs() != 1 || m.U64() != 1 {
		t.Fatalf("ReadMessage = %+v, %v", m, err)
	}
	m.Close()
	// Wrong fd count is typed.
	w.WriteMessage(Header{Request: ReqSetFeatures, Flags: FlagVersion}, EncodeU64(0), []int{int(r.Fd())})
	m, err = c.ReadMessage(BackendSpec)
	var fe *FDCountError
	if !errors.As(err, &fe) || m == nil {
		t.Errorf("SET_FEATURES with an fd: %v", err)
	}
	m.Close()
	// Short payload is typed.
	w.WriteMessage(Header{Request: ReqSetVringAddr, Flags: FlagVersion}, make([]byte, 12), nil)
	_, err = c.ReadMessage(BackendSpec)
	var se *ShortMessageError
	if !errors.As(err, &se) {
		t.Errorf("short SET_VRING_ADDR: %v", err)
	}
	w.Close()
	if _, err := c.ReadMessage(BackendSpec); !errors.Is(err, ErrDisconnected) {
		t.Errorf("after close: %v", err)
	}
}

// FuzzReadMessage decodes arbitrary streams: every message returned has a
// bounded payload that matches its header, and decoding ends.
func FuzzReadMessage(f *testing.F) {
	hdr := func(req Request, flags, size uint32) []byte {
		b := make([]byte, HeaderSize)
		Header{Request: req, Flags: flags, Size: size}.Encode(b)
		return b
	}
	f.Add(append(hdr(ReqSetFeatures, FlagVersion, 8), 1, 2, 3, 4, 5, 6, 7, 8))
	f.Add(hdr(ReqGetFeatures, FlagVersion, 0))
	f.Add(hdr(ReqSetMemTable, FlagVersion, 1<<20))
	f.Add(hdr(ReqSetFeatures, 2, 0))
	f.Add(append(hdr(ReqSetVringAddr, FlagVersion|FlagNeedReply, 40), make([]byte, 40)...))
	f.Fuzz(func(t *testing.T, stream []byte) {
		c, peer := socketpair(t)
		defer c.Close()
		go func() {
			peer.Write(stream)
			peer.Close()
		}()
		for {
			m, err := c.ReadMessage(BackendSpec)
			if m != nil {
				if len(m.Payload) > MaxPayload || uint32(len(m.Payload)) != m.Size {
					t.Fatalf("payload %d bytes, header says %d", len(m.Payload), m.Size)
				}
				m.Close()
			}
			if err != nil {
				var bad *BadMessageError
				if errors.Is(err, ErrDisconnected) || (errors.As(err, &bad) && bad.Fatal) {
					return
				}
			}
		}
	})
}

func TestInterrupt(t *testing.T) {
	c, peer := socketpair(t)
	defer c.Close()
	defer peer.Close()
	done := make(chan error, 1)
	go func() { _, err := c.ReadMessage(BackendSpec); done <- err }()
	time.Sleep(10 * time.Millisecond)
	c.Interrupt()
	if err := <-done; !errors.Is(err, ErrInterrupted) {
		t.Fatalf("ReadMessage after Interrupt: %v", err)
	}
	c.ResumeReading()
	b := make([]byte, HeaderSize)
	Header{Request: ReqGetFeatures, Flags: FlagVersion}.Encode(b)
	peer.Write(b)
	if m, err := c.ReadMessage(BackendSpec); err != nil || m.Request != ReqGetFeatures {
		t.Fatalf("after ResumeReading: %v %v", m, err)
	}
}
