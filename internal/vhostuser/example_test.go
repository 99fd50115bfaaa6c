package vhostuser_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"

	"github.com/govirtiofsd/govirtiofsd/internal/vhostuser"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Serving a filesystem to QEMU's vhost-user-fs-pci (--socket-path; for
// --fd use vhostuser.ListenerFromFD).
func ExampleServe() {
	ln, err := vhostuser.Listen("/run/govirtiofsd.sock")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer ln.Close()
	rawFS := fuse.NewDefaultRawFileSystem() // the passthrough filesystem, shared by all connections
	err = vhostuser.Serve(context.Background(), ln, vhostuser.Config{
		NewHandler: func() vhostuser.Handler {
			return fuse.NewProtocolServer(rawFS, &fuse.MountOptions{})
		},
		NumRequestQueues: 1,
		ThreadPoolSize:   4,
		Logger:           slog.Default(),
	})
	if err != nil {
		fmt.Println(err)
	}
}

// An exec-based upgrade: the running daemon hands its connection to a new
// binary, which resumes it with vhostuser.ResumeConn (see
// TestHandoverToProcess in package vhostfront for both halves).
func ExampleConnection_Handover() {
	var conn *vhostuser.Connection // from Config.OnConnect
	st, files, err := conn.Handover(context.Background())
	if err != nil {
		fmt.Println("keep serving:", err)
		return
	}
	state, _ := st.Marshal()
	cmd := exec.Command("/usr/libexec/govirtiofsd", "--resume")
	cmd.Env = append(os.Environ(), "GOVIRTIOFSD_VHOST_STATE="+string(state))
	cmd.ExtraFiles = files // fd 3+i in the successor is files[i]
	if err := cmd.Start(); err != nil {
		fmt.Println(errors.Join(errors.New("successor did not start"), err))
	}
	// Successor:
	//	st, _ := vhostuser.UnmarshalConnectionState([]byte(os.Getenv("GOVIRTIOFSD_VHOST_STATE")), n)
	//	vhostuser.ResumeConn(ctx, st, inheritedFiles, cfg)
}
