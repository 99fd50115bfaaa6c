package vhostfront

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/internal/vhostuser"
)

const handoverChildEnv = "VHOSTFRONT_HANDOVER_CHILD_STATE"

// TestMain runs the successor process of TestHandoverToProcess when this
// binary is started as one, and the tests otherwise.
func TestMain(m *testing.M) {
	if state := os.Getenv(handoverChildEnv); state != "" {
		if err := handoverChild(state); err != nil {
			fmt.Fprintln(os.Stderr, "handover child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// handoverChild resumes the connection a parent test handed over.
func handoverChild(state string) error {
	n, _ := strconv.Atoi(os.Getenv(handoverChildEnv + "_FDS"))
	st, err := vhostuser.UnmarshalConnectionState([]byte(state), n)
	if err != nil {
		return err
	}
	var files []*os.File
	for i := range n {
		files = append(files, os.NewFile(uintptr(3+i), fmt.Sprintf("inherited-%d", i)))
	}
	return vhostuser.ResumeConn(context.Background(), st, files, vhostuser.Config{
		NewHandler: func() vhostuser.Handler { return &echo{} }, NumRequestQueues: 1, ThreadPoolSize: 2,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)).With("pid", os.Getpid()),
	})
}

// TestHandoverToProcess hands a live connection to another process (the
// exec-based upgrade path): the state travels as JSON, the socket, guest
// memory and eventfds as inherited fds. The front-end keeps working and
// the requests are now served by the child.
func TestHandoverToProcess(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	conns := make(chan *vhostuser.Connection, 1)
	e := &echo{}
	served := make(chan error, 1)
	go func() {
		served <- vhostuser.Serve(context.Background(), ln, vhostuser.Config{
			NewHandler: func() vhostuser.Handler { return e }, NumRequestQueues: 1, ThreadPoolSize: 2,
			OnConnect: func(c *vhostuser.Connection) { conns <- c }, Logger: testLogger(t),
		})
	}()
	f := dial(t, &backend{path: path}, Options{})
	for i := range 20 {
		if out, err := f.Do(1, [][]byte{[]byte(fmt.Sprint("ab", i))}, 8); err != nil || len(out) == 0 {
			t.Fatal(out, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, files, err := (<-conns).Handover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	<-served
	b, err := st.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), handoverChildEnv+"="+string(b), fmt.Sprintf("%s_FDS=%d", handoverChildEnv, len(files)))
	cmd.ExtraFiles = files
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		f.Close() // the child has them now
	}
	served2 := make(chan error, 1)
	go func() { served2 <- cmd.Wait() }()
	for i := range 50 {
		msg := fmt.Sprint("cd", i)
		got, err := f.Do(1, [][]byte{[]byte(msg)}, 8)
		if err != nil || len(got) != len(msg) || got[0] != msg[len(msg)-1] {
			t.Fatalf("request %d after handover: %q %v\nchild:\n%s", i, got, err, out.String())
		}
	}
	if e.calls.Load() != 20 {
		t.Errorf("the parent served %d requests, want 20", e.calls.Load())
	}
	f.Close()
	select {
	case err := <-served2:
		if err != nil {
			t.Errorf("child: %v\n%s", err, out.String())
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Errorf("child did not exit after the disconnect:\n%s", out.String())
	}
	t.Logf("child:\n%s", out.String())
}

// lockedBuffer collects a child's output.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
