// Package govirtiofsd is a virtio-fs / FUSE file server that shares a host
// directory with virtual machines (vhost-user) and with the local kernel
// (/dev/fuse), giving every file a unique, persistent, guest-usable and
// unforgeable identity. The code lives in cmd/ and internal/.
package govirtiofsd

import (
	// Pinned here until the packages that use them land.
	_ "github.com/hanwen/go-fuse/v2/fuse"
	_ "golang.org/x/sys/unix"
)
