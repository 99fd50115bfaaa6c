package suite

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func init() {
	register("open_create", openCreate)
	register("open_excl", openExcl)
	register("open_trunc", openTrunc)
	register("open_append", openAppend)
	register("open_errors", openErrors)
	register("open_nofollow", openNoFollow)
	register("tmpfile_linkat", tmpfileLinkat)
	register("read_write_offsets", readWriteOffsets)
	register("write_large", writeLarge)
	register("close_flush", closeFlush)
	register("fsync", fsyncCase)
	register("fallocate", fallocateCase)
	register("fallocate_punch_hole", fallocatePunchHole)
	register("lseek_data_hole", lseekDataHole)
	register("copy_file_range", copyFileRange)
	register("mmap_shared", mmapShared)
}

func openCreate(t *testing.T, e *Env) {
	old := unix.Umask(0o027)
	defer unix.Umask(old)
	fd, err := unix.Open(e.M("f"), unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o666)
	must(t, "create", err)
	_, err = unix.Write(fd, []byte("new"))
	must(t, "write", err)
	must(t, "close", unix.Close(fd))
	st := lstat(t, e.M("f"))
	if st.Mode != unix.S_IFREG|0o640 {
		t.Errorf("mode %o, want %o (umask 027)", st.Mode, unix.S_IFREG|0o640)
	}
	if st.Uid != 0 || st.Gid != 0 || st.Nlink != 1 || st.Size != 3 {
		t.Errorf("owner %d:%d nlink %d size %d", st.Uid, st.Gid, st.Nlink, st.Size)
	}
	if e.HostVisible() {
		h := lstat(t, e.H("f"))
		if h.Mode != st.Mode || h.Uid != 0 {
			t.Errorf("host mode %o uid %d", h.Mode, h.Uid)
		}
		wantContent(t, e.H("f"), "new")
	}
	// O_CREAT on an existing file opens it without truncating.
	fd, err = unix.Open(e.M("f"), unix.O_CREAT|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	must(t, "reopen with O_CREAT", err)
	unix.Close(fd)
	wantContent(t, e.M("f"), "new")
	if m := lstat(t, e.M("f")).Mode; m != unix.S_IFREG|0o640 {
		t.Errorf("O_CREAT on an existing file changed its mode to %o", m)
	}
	// Create a file with no permissions at all; the creator's fd still writes.
	fd, err = unix.Open(e.M("zero"), unix.O_CREAT|unix.O_RDWR|unix.O_CLOEXEC, 0)
	must(t, "create mode 0", err)
	_, err = unix.Write(fd, []byte("z"))
	must(t, "write to mode-0 file", err)
	unix.Close(fd)
	wantContent(t, e.M("zero"), "z")
}

func openExcl(t *testing.T, e *Env) {
	fd, err := unix.Open(e.M("f"), unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
	must(t, "O_EXCL create", err)
	unix.Close(fd)
	_, err = unix.Open(e.M("f"), unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
	wantErrno(t, "O_EXCL on existing", err, unix.EEXIST)
	must(t, "symlink", unix.Symlink("dangling", e.M("l")))
	_, err = unix.Open(e.M("l"), unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
	wantErrno(t, "O_EXCL on a dangling symlink", err, unix.EEXIST)
	var st unix.Stat_t
	wantErrno(t, "dangling target must not be created", unix.Lstat(e.M("dangling"), &st), unix.ENOENT)
	if e.HostVisible() {
		writeFile(t, e.H("hostmade"), "", 0o644)
		_, err = unix.Open(e.M("hostmade"), unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
		wantErrno(t, "O_EXCL on a host-made file", err, unix.EEXIST)
	}
}

func openTrunc(t *testing.T, e *Env) {
	writeFile(t, e.M("f"), "0123456789", 0o644)
	fd, err := unix.Open(e.M("f"), unix.O_TRUNC|unix.O_WRONLY|unix.O_CLOEXEC, 0)
	must(t, "O_TRUNC", err)
	if st := lstat(t, e.M("f")); st.Size != 0 {
		t.Errorf("size %d right after O_TRUNC open", st.Size)
	}
	_, err = unix.Write(fd, []byte("ab"))
	must(t, "write", err)
	unix.Close(fd)
	wantContent(t, e.M("f"), "ab")
	if e.HostVisible() {
		wantContent(t, e.H("f"), "ab")
	}
	// O_TRUNC|O_RDONLY on Linux truncates too.
	fd, err = unix.Open(e.M("f"), unix.O_TRUNC|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	must(t, "O_TRUNC|O_RDONLY", err)
	unix.Close(fd)
	if st := lstat(t, e.M("f")); st.Size != 0 {
		t.Errorf("size %d after O_TRUNC|O_RDONLY", st.Size)
	}
}

func openAppend(t *testing.T, e *Env) {
	writeFile(t, e.M("f"), "abc", 0o644)
	fd, err := unix.Open(e.M("f"), unix.O_APPEND|unix.O_WRONLY|unix.O_CLOEXEC, 0)
	must(t, "O_APPEND", err)
	_, err = unix.Write(fd, []byte("def"))
	must(t, "write", err)
	// pwrite on an O_APPEND fd appends on Linux.
	_, err = unix.Pwrite(fd, []byte("ghi"), 0)
	must(t, "pwrite", err)
	if e.HostVisible() {
		// Data appended on the host in between is not overwritten.
		f, err := os.OpenFile(e.H("f"), os.O_APPEND|os.O_WRONLY, 0)
		must(t, "host open", err)
		f.WriteString("HOST")
		f.Close()
		_, err = unix.Write(fd, []byte("jkl"))
		must(t, "write after host append", err)
		unix.Close(fd)
		wantContent(t, e.H("f"), "abcdefghiHOSTjkl")
		return
	}
	unix.Close(fd)
	wantContent(t, e.M("f"), "abcdefghi")
}

func openErrors(t *testing.T, e *Env) {
	_, err := unix.Open(e.M("missing"), unix.O_RDONLY, 0)
	wantErrno(t, "open missing", err, unix.ENOENT)
	writeFile(t, e.M("f"), "", 0o644)
	_, err = unix.Open(e.M("f"), unix.O_RDONLY|unix.O_DIRECTORY, 0)
	wantErrno(t, "O_DIRECTORY on a file", err, unix.ENOTDIR)
	must(t, "mkdir", unix.Mkdir(e.M("d"), 0o755))
	_, err = unix.Open(e.M("d"), unix.O_WRONLY, 0)
	wantErrno(t, "open dir for writing", err, unix.EISDIR)
	must(t, "symlink", unix.Symlink("f", e.M("l")))
	_, err = unix.Open(e.M("l"), unix.O_RDONLY|unix.O_NOFOLLOW, 0)
	wantErrno(t, "O_NOFOLLOW on a symlink", err, unix.ELOOP)
	fd, err := unix.Open(e.M("l"), unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	must(t, "O_PATH|O_NOFOLLOW on a symlink", err)
	var st unix.Stat_t
	must(t, "fstat O_PATH", unix.Fstat(fd, &st))
	unix.Close(fd)
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		t.Errorf("O_PATH|O_NOFOLLOW fd has mode %o, want a symlink", st.Mode)
	}
	_, err = unix.Open(e.M("f/x"), unix.O_CREAT|unix.O_WRONLY, 0o644)
	wantErrno(t, "create under a file", err, unix.ENOTDIR)
	_, err = unix.Open(e.Dir+"/d/.", unix.O_CREAT|unix.O_WRONLY, 0o644)
	wantErrno(t, "create '.'", err, unix.EISDIR, unix.EEXIST)
}

func tmpfileLinkat(t *testing.T, e *Env) {
	fd, err := unix.Open(e.Dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o640)
	must(t, "O_TMPFILE", err)
	defer unix.Close(fd)
	_, err = unix.Write(fd, []byte("anonymous"))
	must(t, "write", err)
	var st unix.Stat_t
	must(t, "fstat", unix.Fstat(fd, &st))
	if st.Nlink != 0 || st.Mode != unix.S_IFREG|0o640&^uint32(umask()) {
		t.Errorf("O_TMPFILE fstat: nlink %d mode %o", st.Nlink, st.Mode)
	}
	names, err := readdirnames(e.Dir)
	must(t, "readdir", err)
	if len(names) != 0 {
		t.Errorf("O_TMPFILE file shows in the directory: %v", names)
	}
	must(t, "linkat AT_EMPTY_PATH", unix.Linkat(fd, "", unix.AT_FDCWD, e.M("named"), unix.AT_EMPTY_PATH))
	wantContent(t, e.M("named"), "anonymous")
	if got := lstat(t, e.M("named")); got.Nlink != 1 {
		t.Errorf("linked tmpfile nlink %d, want 1", got.Nlink)
	}
	if e.HostVisible() {
		wantContent(t, e.H("named"), "anonymous")
	}
	// O_TMPFILE|O_EXCL cannot be linked.
	fd2, err := unix.Open(e.Dir, unix.O_TMPFILE|unix.O_EXCL|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	must(t, "O_TMPFILE|O_EXCL", err)
	defer unix.Close(fd2)
	wantErrno(t, "linkat of O_EXCL tmpfile", unix.Linkat(fd2, "", unix.AT_FDCWD, e.M("x"), unix.AT_EMPTY_PATH), unix.ENOENT)
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) ^ seed
	}
	return b
}

func readWriteOffsets(t *testing.T, e *Env) {
	fd, err := unix.Open(e.M("f"), unix.O_CREAT|unix.O_RDWR|unix.O_CLOEXEC, 0o644)
	must(t, "create", err)
	defer unix.Close(fd)
	a := pattern(5000, 1)
	b := pattern(3000, 2)
	_, err = unix.Pwrite(fd, a, 0)
	must(t, "pwrite 0", err)
	_, err = unix.Pwrite(fd, b, 100_000)
	must(t, "pwrite 100000", err)
	_, err = unix.Pwrite(fd, []byte("XY"), 4095)
	must(t, "pwrite across a page boundary", err)
	want := make([]byte, 103_000)
	copy(want, a)
	copy(want[100_000:], b)
	copy(want[4095:], "XY")
	got := make([]byte, len(want)+10)
	n, err := unix.Pread(fd, got, 0)
	must(t, "pread", err)
	if n != len(want) || !bytes.Equal(got[:n], want) {
		t.Errorf("pread returned %d bytes, content equal: %v", n, bytes.Equal(got[:n], want))
	}
	n, err = unix.Pread(fd, got[:10], 99_995)
	must(t, "pread in the hole", err)
	if n != 10 || !bytes.Equal(got[:10], want[99_995:100_005]) {
		t.Errorf("pread across hole end: %d %x", n, got[:10])
	}
	n, err = unix.Pread(fd, got, 200_000)
	if n != 0 || err != nil {
		t.Errorf("pread past EOF: %d %v, want 0 nil", n, err)
	}
	// read/write use and move the file offset.
	_, err = unix.Seek(fd, 10, 0)
	must(t, "seek", err)
	_, err = unix.Write(fd, []byte("cursor"))
	must(t, "write", err)
	if off, _ := unix.Seek(fd, 0, 1); off != 16 {
		t.Errorf("offset %d after write, want 16", off)
	}
	copy(want[10:], "cursor")
	if e.HostVisible() {
		h, err := os.ReadFile(e.H("f"))
		must(t, "host read", err)
		if !bytes.Equal(h, want) {
			t.Errorf("host content differs (len %d, want %d)", len(h), len(want))
		}
	}
	// A read-only fd cannot write and vice versa.
	ro, err := unix.Open(e.M("f"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	must(t, "open ro", err)
	_, err = unix.Write(ro, []byte("x"))
	wantErrno(t, "write to O_RDONLY fd", err, unix.EBADF)
	unix.Close(ro)
	wo, err := unix.Open(e.M("f"), unix.O_WRONLY|unix.O_CLOEXEC, 0)
	must(t, "open wo", err)
	_, err = unix.Read(wo, got[:1])
	wantErrno(t, "read from O_WRONLY fd", err, unix.EBADF)
	unix.Close(wo)
}

func writeLarge(t *testing.T, e *Env) {
	data := pattern(8<<20+123, 9)
	must(t, "write 8 MiB", os.WriteFile(e.M("big"), data, 0o644))
	got, err := os.ReadFile(e.M("big"))
	must(t, "read", err)
	if !bytes.Equal(got, data) {
		t.Errorf("8 MiB round trip differs (len %d)", len(got))
	}
	if e.HostVisible() {
		h, err := os.ReadFile(e.H("big"))
		must(t, "host read", err)
		if !bytes.Equal(h, data) {
			t.Errorf("host copy differs (len %d)", len(h))
		}
	}
}

// closeFlush: data written through the mount is on the host once close
// returns; so are errors of a file written by a dup'd fd.
func closeFlush(t *testing.T, e *Env) {
	for i := 0; i < 20; i++ {
		p := e.M(fmt.Sprintf("f%d", i))
		fd, err := unix.Open(p, unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
		must(t, "create", err)
		dup, err := unix.Dup(fd)
		must(t, "dup", err)
		_, err = unix.Write(fd, []byte(strings.Repeat("x", i)))
		must(t, "write", err)
		must(t, "close dup", unix.Close(dup))
		must(t, "close", unix.Close(fd))
		if e.HostVisible() {
			wantContent(t, e.H(fmt.Sprintf("f%d", i)), strings.Repeat("x", i))
		} else {
			wantContent(t, p, strings.Repeat("x", i))
		}
	}
}

func fsyncCase(t *testing.T, e *Env) {
	fd, err := unix.Open(e.M("f"), unix.O_CREAT|unix.O_RDWR|unix.O_CLOEXEC, 0o644)
	must(t, "create", err)
	_, err = unix.Write(fd, []byte("durable"))
	must(t, "write", err)
	must(t, "fsync", unix.Fsync(fd))
	must(t, "fdatasync", unix.Fdatasync(fd))
	must(t, "sync_file_range", unix.SyncFileRange(fd, 0, 0, unix.SYNC_FILE_RANGE_WRITE))
	unix.Close(fd)
	ro, err := unix.Open(e.M("f"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	must(t, "open ro", err)
	must(t, "fsync on O_RDONLY fd", unix.Fsync(ro))
	unix.Close(ro)
	if e.HostVisible() {
		wantContent(t, e.H("f"), "durable")
	}
}

func fallocateCase(t *testing.T, e *Env) {
	fd, err := unix.Open(e.M("f"), unix.O_CREAT|unix.O_RDWR|unix.O_CLOEXEC, 0o644)
	must(t, "create", err)
	defer unix.Close(fd)
	must(t, "fallocate 0..1MiB", unix.Fallocate(fd, 0, 0, 1<<20))
	var st unix.Stat_t
	must(t, "fstat", unix.Fstat(fd, &st))
	if st.Size != 1<<20 {
		t.Errorf("size %d after fallocate, want %d", st.Size, 1<<20)
	}
	if e.HostVisible() {
		h := lstat(t, e.H("f"))
		if h.Size != 1<<20 || h.Blocks < (1<<20)/512 {
			t.Errorf("host: size %d blocks %d, want the space allocated", h.Size, h.Blocks)
		}
	}
	must(t, "fallocate KEEP_SIZE", unix.Fallocate(fd, unix.FALLOC_FL_KEEP_SIZE, 1<<20, 1<<20))
	must(t, "fstat", unix.Fstat(fd, &st))
	if st.Size != 1<<20 {
		t.Errorf("size %d after KEEP_SIZE fallocate, want unchanged", st.Size)
	}
	wantErrno(t, "fallocate negative length", unix.Fallocate(fd, 0, 0, -1), unix.EINVAL)
	ro, err := unix.Open(e.M("f"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	must(t, "open ro", err)
	defer unix.Close(ro)
	wantErrno(t, "fallocate on O_RDONLY fd", unix.Fallocate(ro, 0, 0, 4096), unix.EBADF)
}

func fallocatePunchHole(t *testing.T, e *Env) {
	data := bytes.Repeat([]byte{0xaa}, 64<<10)
	must(t, "write", os.WriteFile(e.M("f"), data, 0o644))
	fd, err := unix.Open(e.M("f"), unix.O_RDWR|unix.O_CLOEXEC, 0)
	must(t, "open", err)
	defer unix.Close(fd)
	must(t, "fsync", unix.Fsync(fd))
	var before unix.Stat_t
	if e.HostVisible() {
		before = lstat(t, e.H("f"))
	}
	must(t, "punch hole", unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 16<<10, 32<<10))
	copy(data[16<<10:48<<10], make([]byte, 32<<10))
	got := make([]byte, len(data))
	n, err := unix.Pread(fd, got, 0)
	must(t, "pread", err)
	if n != len(data) || !bytes.Equal(got, data) {
		t.Errorf("after punching 16K..48K the content is wrong (%d bytes)", n)
	}
	if e.HostVisible() {
		h, err := os.ReadFile(e.H("f"))
		must(t, "host read", err)
		if !bytes.Equal(h, data) {
			t.Errorf("host content wrong after punch hole")
		}
		after := lstat(t, e.H("f"))
		if after.Blocks >= before.Blocks {
			t.Errorf("host blocks %d after punching, %d before: the hole was not punched on the host", after.Blocks, before.Blocks)
		}
	}
	wantErrno(t, "PUNCH_HOLE without KEEP_SIZE", unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE, 0, 4096), unix.EOPNOTSUPP, unix.EINVAL)
}

func lseekDataHole(t *testing.T, e *Env) {
	const mib = 1 << 20
	p := e.M("sparse")
	if e.HostVisible() {
		p = e.H("sparse")
	}
	f, err := os.Create(p)
	must(t, "create", err)
	_, err = f.WriteAt(bytes.Repeat([]byte{1}, 4096), 0)
	must(t, "write at 0", err)
	_, err = f.WriteAt(bytes.Repeat([]byte{2}, 4096), 2*mib)
	must(t, "write at 2MiB", err)
	must(t, "truncate", f.Truncate(4*mib))
	must(t, "fsync", f.Sync())
	f.Close()

	fd, err := unix.Open(e.M("sparse"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	must(t, "open", err)
	defer unix.Close(fd)
	seek := func(off int64, whence int) (int64, error) { return unix.Seek(fd, off, whence) }
	if off, err := seek(0, unix.SEEK_DATA); err != nil || off != 0 {
		t.Errorf("SEEK_DATA 0: %d %v, want 0", off, errString(err))
	}
	if off, err := seek(0, unix.SEEK_HOLE); err != nil || off < 4096 || off >= 2*mib {
		t.Errorf("SEEK_HOLE 0: %d %v, want the end of the first block (a hole before 2MiB)", off, errString(err))
	}
	if off, err := seek(8192, unix.SEEK_DATA); err != nil || off > 2*mib || off <= 4096 {
		t.Errorf("SEEK_DATA 8192: %d %v, want 2MiB", off, errString(err))
	}
	if off, err := seek(2*mib, unix.SEEK_HOLE); err != nil || off < 2*mib+4096 || off > 4*mib {
		t.Errorf("SEEK_HOLE 2MiB: %d %v, want after the second block", off, errString(err))
	}
	if off, err := seek(3*mib, unix.SEEK_HOLE); err != nil || off != 3*mib {
		t.Errorf("SEEK_HOLE 3MiB: %d %v, want 3MiB (already in a hole)", off, errString(err))
	}
	_, err = seek(3*mib, unix.SEEK_DATA)
	wantErrno(t, "SEEK_DATA in the trailing hole", err, unix.ENXIO)
	_, err = seek(5*mib, unix.SEEK_DATA)
	wantErrno(t, "SEEK_DATA past EOF", err, unix.ENXIO)
	_, err = seek(5*mib, unix.SEEK_HOLE)
	wantErrno(t, "SEEK_HOLE past EOF", err, unix.ENXIO)
	if off, err := seek(0, unix.SEEK_END); err != nil || off != 4*mib {
		t.Errorf("SEEK_END: %d %v", off, errString(err))
	}
}

func copyFileRange(t *testing.T, e *Env) {
	src := pattern(100_000, 3)
	must(t, "write src", os.WriteFile(e.M("src"), src, 0o644))
	writeFile(t, e.M("dst"), strings.Repeat("d", 50), 0o644)
	in, err := unix.Open(e.M("src"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	must(t, "open src", err)
	defer unix.Close(in)
	out, err := unix.Open(e.M("dst"), unix.O_RDWR|unix.O_CLOEXEC, 0)
	must(t, "open dst", err)
	defer unix.Close(out)
	roff, woff := int64(1000), int64(20)
	total := 0
	for total < 60_000 {
		n, err := unix.CopyFileRange(in, &roff, out, &woff, 60_000-total, 0)
		must(t, "copy_file_range", err)
		if n == 0 {
			break
		}
		total += n
	}
	if total != 60_000 || roff != 61_000 || woff != 60_020 {
		t.Errorf("copied %d, offsets %d %d; want 60000, 61000, 60020", total, roff, woff)
	}
	want := append([]byte(strings.Repeat("d", 20)), src[1000:61_000]...)
	got, err := os.ReadFile(e.M("dst"))
	must(t, "read dst", err)
	if !bytes.Equal(got, want) {
		t.Errorf("dst differs after copy_file_range (len %d want %d)", len(got), len(want))
	}
	if e.HostVisible() {
		h, err := os.ReadFile(e.H("dst"))
		must(t, "host read", err)
		if !bytes.Equal(h, want) {
			t.Errorf("host dst differs after copy_file_range")
		}
	}
	// Past EOF copies nothing.
	roff = 200_000
	n, err := unix.CopyFileRange(in, &roff, out, nil, 10, 0)
	if n != 0 || err != nil {
		t.Errorf("copy_file_range past EOF: %d %v, want 0 nil", n, err)
	}
}

func mmapShared(t *testing.T, e *Env) {
	const size = 3 * 4096
	writeFile(t, e.M("m"), strings.Repeat("-", size), 0o644)
	fd, err := unix.Open(e.M("m"), unix.O_RDWR|unix.O_CLOEXEC, 0)
	must(t, "open", err)
	defer unix.Close(fd)
	mem, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	must(t, "mmap", err)
	copy(mem[0:], "first page")
	copy(mem[4096+100:], "second page")
	copy(mem[size-4:], "tail")
	must(t, "msync", unix.Msync(mem, unix.MS_SYNC))
	must(t, "munmap", unix.Munmap(mem))
	want := []byte(strings.Repeat("-", size))
	copy(want, "first page")
	copy(want[4196:], "second page")
	copy(want[size-4:], "tail")
	got, err := os.ReadFile(e.M("m"))
	must(t, "read back", err)
	if !bytes.Equal(got, want) {
		t.Errorf("content after MAP_SHARED writes differs through the mount")
	}
	if e.HostVisible() {
		h, err := os.ReadFile(e.H("m"))
		must(t, "host read", err)
		if !bytes.Equal(h, want) {
			t.Errorf("MAP_SHARED writes not visible on the host after msync")
		}
		// A file written on the host maps with its content.
		writeFile(t, e.H("h"), "host data for mmap", 0o644)
	} else {
		writeFile(t, e.M("h"), "host data for mmap", 0o644)
	}
	rfd, err := unix.Open(e.M("h"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	must(t, "open h", err)
	defer unix.Close(rfd)
	rm, err := unix.Mmap(rfd, 0, 4096, unix.PROT_READ, unix.MAP_SHARED)
	must(t, "mmap ro", err)
	if string(rm[:18]) != "host data for mmap" {
		t.Errorf("mapped %q", rm[:18])
	}
	unix.Munmap(rm)
	// A read-only fd cannot be mapped shared and writable.
	_, err = unix.Mmap(rfd, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	wantErrno(t, "writable MAP_SHARED of an O_RDONLY fd", err, unix.EACCES)
}

// openNoFollow: O_NOFOLLOW refuses a symlink as the last component and
// nothing else; `grep -r` and fts-based tools (find, rm -r) open every
// file and directory with it.
func openNoFollow(t *testing.T, e *Env) {
	writeFile(t, e.M("f"), "data", 0o644)
	must(t, "mkdir", os.Mkdir(e.M("d"), 0o755))
	must(t, "symlink", os.Symlink("f", e.M("l")))
	fd, err := unix.Open(e.M("f"), unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	must(t, "open regular file O_NOFOLLOW", err)
	buf := make([]byte, 16)
	n, err := unix.Read(fd, buf)
	must(t, "read", err)
	if string(buf[:n]) != "data" {
		t.Errorf("read %q, want %q", buf[:n], "data")
	}
	unix.Close(fd)
	fd, err = unix.Open(e.M("f"), unix.O_WRONLY|unix.O_APPEND|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	must(t, "open for append O_NOFOLLOW", err)
	_, err = unix.Write(fd, []byte("+"))
	must(t, "append", err)
	unix.Close(fd)
	wantContent(t, e.M("f"), "data+")
	fd, err = unix.Open(e.M("d"), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	must(t, "open directory O_NOFOLLOW", err)
	unix.Close(fd)
	_, err = unix.Open(e.M("l"), unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	wantErrno(t, "open symlink O_NOFOLLOW", err, unix.ELOOP)
	fd, err = unix.Open(e.M("l"), unix.O_NOFOLLOW|unix.O_PATH|unix.O_CLOEXEC, 0)
	must(t, "open symlink O_PATH|O_NOFOLLOW", err)
	unix.Close(fd)
}
