package checks

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// Names and content of the handles fixture: dir/file holds HandleFileContent,
// dir/dir holds one entry, HandleDirEntry.
const (
	HandleFile        = "file"
	HandleDir         = "dir"
	HandleDirEntry    = "entry"
	HandleFileContent = "open_by_handle_at reads this\n"
)

// DropCaches makes the guest kernel forget the dentries and inodes it holds
// (the FUSE client then sends FORGET), as `echo 3 > /proc/sys/vm/drop_caches`.
// One drop is best effort: a directory whose child dentry was pruned in the
// same pass can stay cached (a peer's handles-dir once passed that way), so
// it drops three times, a moment apart.
func DropCaches() error {
	for i := range 3 {
		if i > 0 {
			time.Sleep(50 * time.Millisecond)
		}
		unix.Sync()
		if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0); err != nil {
			return err
		}
	}
	return nil
}

// Handles takes file handles (name_to_handle_at) of dir/file and dir/dir,
// calls dropCaches (nil: no cache drop), and opens both again with
// open_by_handle_at relative to an fd on dir, reading back the file's content
// and the directory's entry. This is what NFS re-export from the guest and
// any user of file handles needs after the kernel forgot the inode: the
// server must resolve a nodeid the guest kernel had FORGOTten.
//
// Results: "handles-file" and "handles-dir".
func Handles(dir string, dropCaches func() error) []Result {
	type target struct {
		check string
		path  string
		h     unix.FileHandle
	}
	ts := []*target{
		{check: "handles-file", path: filepath.Join(dir, HandleFile)},
		{check: "handles-dir", path: filepath.Join(dir, HandleDir)},
	}
	var out []Result
	for _, t := range ts {
		h, _, err := unix.NameToHandleAt(unix.AT_FDCWD, t.path, 0)
		if err != nil {
			out = append(out, fail(t.check, "name_to_handle_at: %s", errName(err)))
			t.path = ""
			continue
		}
		t.h = h
	}
	mfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return append(out, fail("handles", "open %s: %v", dir, err))
	}
	defer unix.Close(mfd)

	// Warm: with the inode still cached the kernel needs no help from the
	// server; reported in the detail only.
	warm := map[string]string{}
	for _, t := range ts {
		if t.path != "" {
			warm[t.check] = openByHandle(mfd, t.h, t.check == "handles-dir")
		}
	}
	if dropCaches != nil {
		if err := dropCaches(); err != nil {
			return append(out, fail("handles", "drop caches: %v", err))
		}
	}
	for _, t := range ts {
		if t.path == "" {
			continue
		}
		if e := openByHandle(mfd, t.h, t.check == "handles-dir"); e != "" {
			out = append(out, fail(t.check, "after drop_caches: %s (before: %s)", e, okOr(warm[t.check])))
		} else {
			out = append(out, pass(t.check, "handle of %d bytes reopened after drop_caches (before: %s)", len(t.h.Bytes()), okOr(warm[t.check])))
		}
	}
	return out
}

func okOr(s string) string {
	if s == "" {
		return "ok"
	}
	return s
}

// openByHandle opens h and verifies what it finds; "" on success.
func openByHandle(mfd int, h unix.FileHandle, isDir bool) string {
	flags := unix.O_RDONLY | unix.O_CLOEXEC
	if isDir {
		flags |= unix.O_DIRECTORY
	}
	fd, err := unix.OpenByHandleAt(mfd, h, flags)
	if err != nil {
		return "open_by_handle_at: " + errName(err)
	}
	defer unix.Close(fd)
	if !isDir {
		buf := make([]byte, 4096)
		n, err := unix.Read(fd, buf)
		if err != nil {
			return "read: " + errName(err)
		}
		if !bytes.Equal(buf[:n], []byte(HandleFileContent)) {
			return fmt.Sprintf("read %q, want %q", buf[:n], HandleFileContent)
		}
		return ""
	}
	found := false
	if err := readDirents(fd, func(n string, _ uint64, _ uint8) bool {
		found = found || n == HandleDirEntry
		return !found
	}); err != nil {
		return "getdents: " + errName(err)
	}
	if !found {
		return "directory opened by handle lacks " + HandleDirEntry
	}
	return ""
}

// errName gives "ESTALE (stale file handle)" style text for errno values.
func errName(err error) string {
	if e, ok := err.(unix.Errno); ok {
		if n := unix.ErrnoName(e); n != "" {
			return n + " (" + e.Error() + ")"
		}
	}
	return err.Error()
}
