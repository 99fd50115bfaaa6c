package main

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Under systemd the /dev/fuse fd goes to the fd store (NOTIFY_SOCKET,
// FDSTORE=1, FDNAME=fuse); a restarted service gets it back in LISTEN_FDS
// and carries on without unmounting: a file opened before the daemon was
// killed is still readable, by the same inode number. This plays systemd's
// part with a datagram socket and a shell that sets LISTEN_PID.
func TestSystemdFDStoreRestart(t *testing.T) {
	bin := buildDaemon(t)
	shared, mnt, state := t.TempDir(), t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(shared, "f"), []byte("kept by systemd"), 0o644)

	notify := filepath.Join(t.TempDir(), "notify")
	sock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notify, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()

	first := exec.Command(bin, "--shared-dir", shared, "--mount", mnt, "--state-dir", state)
	first.Env = append(os.Environ(), "NOTIFY_SOCKET="+notify)
	var log1 bytes.Buffer
	first.Stdout, first.Stderr = &log1, &log1
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		unix.Unmount(mnt, unix.MNT_DETACH)
	}()

	// systemd's side: receive the fd.
	sock.SetReadDeadline(time.Now().Add(20 * time.Second))
	buf, oob := make([]byte, 256), make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := sock.ReadMsgUnix(buf, oob)
	if err != nil {
		t.Fatalf("no fd store message: %v\n%s", err, log1.String())
	}
	if !strings.Contains(string(buf[:n]), "FDSTORE=1") || !strings.Contains(string(buf[:n]), "FDNAME=fuse") {
		t.Fatalf("notify message %q", buf[:n])
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		t.Fatalf("control message: %v", err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		t.Fatalf("fds: %v", err)
	}
	stored := os.NewFile(uintptr(fds[0]), "stored-fuse")
	defer stored.Close()

	// A reader in another process holds a file open in the mount (the
	// test process itself must not: exec of the new daemon would FLUSH
	// its fds on the mount while no daemon answers).
	var holder *exec.Cmd
	var holderIn io.WriteCloser
	var holderOut *bufio.Reader
	for i := 0; i < 100; i++ {
		if _, err = os.Stat(filepath.Join(mnt, "f")); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	holder = exec.Command("/bin/sh", "-c", `exec 3<"$0" && echo ready && read x && cat <&3 && echo`, filepath.Join(mnt, "f"))
	holderIn, _ = holder.StdinPipe()
	out, _ := holder.StdoutPipe()
	holderOut = bufio.NewReader(out)
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer holder.Wait()
	if line, err := holderOut.ReadString('\n'); line != "ready\n" {
		t.Fatalf("holder: %q %v\n%s", line, err, log1.String())
	}

	first.Process.Kill()
	first.Wait()

	// The restarted service: fd 3 is the stored fd, LISTEN_PID its pid.
	second := exec.Command("/bin/sh", "-c", `export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=fuse; exec "$0" "$@"`,
		bin, "--shared-dir", shared, "--mount", mnt, "--state-dir", state)
	second.ExtraFiles = []*os.File{stored}
	var log2 bytes.Buffer
	second.Stdout, second.Stderr = &log2, &log2
	if err := second.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		second.Process.Signal(syscall.SIGTERM)
		second.Wait()
	}()
	// A daemon that failed to take the connection over would leave the
	// read hanging: give up after a while and cut the connection.
	holderIn.Write([]byte("go\n"))
	holderIn.Close()
	var got string
	read := make(chan error, 1)
	go func() {
		var err error
		got, err = holderOut.ReadString('\n')
		read <- err
	}()
	select {
	case err := <-read:
		if got != "kept by systemd\n" {
			t.Fatalf("read of a file opened before the restart: %q %v\nfirst:\n%s\nsecond:\n%s", got, err, log1.String(), log2.String())
		}
	case <-time.After(30 * time.Second):
		abortFUSE(t, mnt)
		t.Fatalf("read through the mount hangs after the restart\nfirst:\n%s\nsecond:\n%s", log1.String(), log2.String())
	}
	for i := 0; i < 100 && !strings.Contains(log2.String(), "resumed=true"); i++ {
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(log2.String(), "resumed=true") {
		t.Errorf("the second daemon did not resume:\n%s", log2.String())
	}
}

// abortFUSE aborts the FUSE connection mounted at mnt (fusectl), so a test
// that lost its server does not hang forever.
func abortFUSE(t *testing.T, mnt string) {
	var st unix.Stat_t
	if err := unix.Stat(mnt, &st); err != nil {
		t.Logf("stat %s: %v", mnt, err)
		return
	}
	if _, err := os.Stat("/sys/fs/fuse/connections"); err != nil {
		unix.Mount("fusectl", "/sys/fs/fuse/connections", "fusectl", 0, "")
	}
	minor := unix.Minor(st.Dev)
	os.WriteFile(filepath.Join("/sys/fs/fuse/connections", strconv.Itoa(int(minor)), "abort"), []byte("1"), 0)
}
