// Command loopback-nopt is go-fuse's example/loopback with FUSE passthrough
// turned off, a reference peer for govirtiofsd-bench.
//
// As root on a kernel ≥ 6.9, go-fuse's loopback hands every opened file to
// the kernel as a backing file (FOPEN_PASSTHROUGH): READ and WRITE then
// never reach the daemon. That is the right reference for a /dev/fuse
// daemon that may use passthrough too, but says nothing about the cost of
// serving READ/WRITE requests, which is all a virtio-fs daemon can do. This
// peer serves them; everything else (options, 1 s attr/entry timeouts,
// direct mount) is as in the example.
//
//	loopback-nopt MOUNTPOINT ORIGINAL
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// node is a loopback node whose files refuse passthrough.
type node struct{ fs.LoopbackNode }

var (
	_ = (fs.NodeOpener)((*node)(nil))
	_ = (fs.NodeCreater)((*node)(nil))
)

// file is a loopback file that reports it has no backing fd.
type file struct{ *fs.LoopbackFile }

func (file) PassthroughFd() (int, bool) { return -1, false }

func wrap(fh fs.FileHandle) fs.FileHandle {
	if lf, ok := fh.(*fs.LoopbackFile); ok {
		return file{lf}
	}
	return fh
}

func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	fh, fl, errno := n.LoopbackNode.Open(ctx, flags)
	return wrap(fh), fl, errno
}

func (n *node) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	in, fh, fl, errno := n.LoopbackNode.Create(ctx, name, flags, mode, out)
	return in, wrap(fh), fl, errno
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintf(os.Stderr, "usage: %s MOUNTPOINT ORIGINAL\n", os.Args[0])
		os.Exit(2)
	}
	mnt, orig := os.Args[1], os.Args[2]
	var st syscall.Stat_t
	if err := syscall.Stat(orig, &st); err != nil {
		fmt.Fprintf(os.Stderr, "loopback-nopt: %v\n", err)
		os.Exit(1)
	}
	root := &fs.LoopbackRoot{Path: orig, Dev: uint64(st.Dev)}
	root.NewNode = func(r *fs.LoopbackRoot, _ *fs.Inode, _ string, _ *syscall.Stat_t) fs.InodeEmbedder {
		return &node{fs.LoopbackNode{RootData: r}}
	}
	root.RootNode = root.NewNode(root, nil, "", &st)

	sec := time.Second
	opts := &fs.Options{
		AttrTimeout:     &sec,
		EntryTimeout:    &sec,
		NullPermissions: true,
		MountOptions: fuse.MountOptions{
			DirectMountStrict: true,
			FsName:            orig,
			Name:              "loopback-nopt",
		},
	}
	// Catch SIGTERM before mounting: fs.Mount opens a file on the new
	// mount (go-fuse's epoll hack), and dying by the default action at that
	// moment leaves the process waiting on its own mount.
	c := make(chan os.Signal, 1)
	signal.Notify(c, os.Interrupt, syscall.SIGTERM)
	server, err := fs.Mount(mnt, root.RootNode, opts)
	if err != nil {
		fmt.Fprintf(os.Stderr, "loopback-nopt: mount: %v\n", err)
		os.Exit(1)
	}
	fmt.Println("Mounted!")
	go func() {
		<-c
		server.Unmount()
	}()
	server.Wait()
}
