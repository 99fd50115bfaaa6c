// Package devfuse is the /dev/fuse transport: it mounts a FUSE file system
// on the local kernel and feeds the requests read from /dev/fuse to an
// engine. It never touches the shared directory.
package devfuse

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// MountOptions describe the mount.
type MountOptions struct {
	FsName   string // shown as the source in /proc/mounts
	ReadOnly bool
	// MaxRead limits READ sizes (the max_read mount option).
	MaxRead int
}

// Mount mounts a FUSE file system at mnt and returns the /dev/fuse fd that
// serves it. As root it calls mount(2) itself; otherwise it asks
// fusermount3 (from the fuse3 package) to do it and hand back the fd.
func Mount(mnt string, opts MountOptions) (int, error) {
	if opts.FsName == "" {
		opts.FsName = "govirtiofsd"
	}
	st, err := os.Stat(mnt)
	if err != nil {
		return -1, fmt.Errorf("mount point: %w", err)
	}
	if !st.IsDir() {
		return -1, fmt.Errorf("mount point %s is not a directory", mnt)
	}
	if os.Geteuid() == 0 {
		return mountDirect(mnt, opts)
	}
	return mountFusermount(mnt, opts)
}

func mountDirect(mnt string, opts MountOptions) (int, error) {
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open /dev/fuse: %w", err)
	}
	data := fmt.Sprintf("fd=%d,rootmode=40000,user_id=%d,group_id=%d,default_permissions,allow_other",
		fd, os.Geteuid(), os.Getegid())
	if opts.MaxRead > 0 {
		data += ",max_read=" + strconv.Itoa(opts.MaxRead)
	}
	flags := uintptr(unix.MS_NOSUID | unix.MS_NODEV)
	if opts.ReadOnly {
		flags |= unix.MS_RDONLY
	}
	if err := unix.Mount(opts.FsName, mnt, "fuse.govirtiofsd", flags, data); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("mount fuse at %s: %w", mnt, err)
	}
	return fd, nil
}

// mountFusermount runs fusermount3 with a socket over which it passes the
// /dev/fuse fd back (the _FUSE_COMMFD protocol of libfuse).
func mountFusermount(mnt string, opts MountOptions) (int, error) {
	bin, err := exec.LookPath("fusermount3")
	if err != nil {
		return -1, errors.New("not running as root and fusermount3 is not installed: install the fuse3 package (apt-get install fuse3) or run as root")
	}
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socketpair: %w", err)
	}
	local, remote := os.NewFile(uintptr(pair[0]), "fusermount-local"), os.NewFile(uintptr(pair[1]), "fusermount-remote")
	defer local.Close()
	o := []string{"default_permissions", "fsname=" + opts.FsName, "subtype=govirtiofsd"}
	if opts.ReadOnly {
		o = append(o, "ro")
	}
	cmd := exec.Command(bin, "-o", strings.Join(o, ","), "--", mnt)
	cmd.ExtraFiles = []*os.File{remote}
	cmd.Env = append(os.Environ(), "_FUSE_COMMFD=3")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		remote.Close()
		return -1, fmt.Errorf("start fusermount3: %w", err)
	}
	remote.Close()
	fd, rerr := receiveFD(int(local.Fd()))
	if err := cmd.Wait(); err != nil {
		if rerr == nil {
			unix.Close(fd)
		}
		return -1, fmt.Errorf("fusermount3: %w", err)
	}
	if rerr != nil {
		return -1, fmt.Errorf("receive /dev/fuse fd from fusermount3: %w", rerr)
	}
	return fd, nil
}

func receiveFD(sock int) (int, error) {
	buf := make([]byte, 32)
	oob := make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := unix.Recvmsg(sock, buf, oob, 0)
	if err != nil {
		return -1, err
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) == 0 {
		return -1, fmt.Errorf("no control message: %v", err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) == 0 {
		return -1, fmt.Errorf("no fd in control message: %v", err)
	}
	return fds[0], nil
}

// Unmount unmounts mnt; a busy mount is detached lazily.
func Unmount(mnt string) error {
	if os.Geteuid() != 0 {
		if out, err := exec.Command("fusermount3", "-u", "-z", mnt).CombinedOutput(); err != nil {
			return fmt.Errorf("fusermount3 -u %s: %v: %s", mnt, err, out)
		}
		return nil
	}
	err := unix.Unmount(mnt, 0)
	if errors.Is(err, unix.EBUSY) {
		err = unix.Unmount(mnt, unix.MNT_DETACH)
	}
	if err != nil {
		return fmt.Errorf("unmount %s: %w", mnt, err)
	}
	return nil
}
