// Package guest boots real Linux guests under QEMU against a vhost-user-fs
// daemon (govirtiofsd, QEMU's C virtiofsd, the Rust virtiofsd) and runs the
// checks of package checks inside them.
//
// One Run is: prepare a shared directory on the host (Fixtures), start the
// daemon from a command-line template, boot QEMU (TCG, q35, memfd shared
// memory, vhost-user-fs-pci, PVH boot of an uncompressed vmlinux) with an
// initramfs holding busybox, the virtio/fuse/virtiofs modules and the static
// cmd/guestcheck program, read the RESULT lines off the serial console, and
// sample the daemon's open fds and RSS right after the guest's 20k-file walk.
//
// # Host ⇄ guest protocol on the serial console
//
// The guest prints lines; the host answers on QEMU's stdin, which is the
// guest's ttyS0 input. Only two exchanges exist:
//
//	guest: GUEST-HELLO          host: HOST BOOT <n>   (n counts boots of this QEMU)
//	guest: SAMPLE <what>        host: HOST SAMPLED    (after reading /proc/PID)
//
// The first lets the init script tell the first boot from the one after its
// own `reboot -f` (the kernel command line does not change across a reset).
// The second is how fds and RSS are sampled "after the walk": the guest still
// holds every walked inode in its dcache (nothing sent FORGET yet), so the
// daemon holds whatever it keeps per inode, and the guest waits (at most a
// minute) until the host has looked. Sampling after poweroff would be too
// late: the peers exit when the front-end disconnects.
//
// Assets (kernel, modules, busybox, peers) come from scripts/guest/install.sh;
// LoadEnv reads the env file it writes.
package guest
