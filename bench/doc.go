// Package bench compares file servers by running identical workloads
// through each of them, interleaved, on the same shared directory.
//
// A run has three layers:
//
//   - Peers (Daemon): how to start one file server so that the shared
//     directory appears somewhere (native: the directory itself; a FUSE
//     daemon: a mount point backed by /dev/fuse). Every sample gets a fresh
//     daemon process and a fresh mount, so samples do not share state.
//   - Jobs (job): one workload that produces one or more rows (for example the
//     cold walk yields its time, the daemon's RSS and its open fds). A job
//     runs against an Env, which names the tree root as seen through the
//     peer and, for daemons, the serving process.
//   - The runner (Run): for every job, repetition and peer, in an order that
//     rotates each repetition, it starts the peer, runs the job, stops the
//     peer, and keeps the samples. It reports median and min–max per
//     (row, peer) and the ratio to a reference peer (go-fuse's loopback).
//
// Transports: a peer is reached either through a path (transport
// "devfuse": a FUSE mount served over /dev/fuse, or the host directory
// itself for native) or over vhost-user (transport "vhost": the Go
// front-end of internal/vhostfront connects to the daemon's socket and the
// jobs send FUSE requests themselves; vhost.go, vhostio.go, replay.go for
// the recorded stream of record.go, syscalls.go for strace counts). Jobs
// declare the transports they run on; the table, the chart (chart.go,
// gonum.org/v1/plot) and the reference peer (loopback, or the better Rust
// virtiofsd) are per transport.
//
// Failure policy: a peer that cannot be built, does not mount, dies, hangs
// past the sample timeout or returns a wrong result (missing files, short
// reads) gets n/a with the reason for that row; the run carries on.
package bench
