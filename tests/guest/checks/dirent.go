package checks

import (
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"
)

// readDirents calls fn for every entry getdents64 returns for fd (including
// "." and ".."), until fn returns false.
func readDirents(fd int, fn func(name string, ino uint64, typ uint8) bool) error {
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			return err
		}
		if n <= 0 {
			return nil
		}
		for off := 0; off < n; {
			d := (*unix.Dirent)(unsafe.Pointer(&buf[off]))
			if d.Reclen == 0 || off+int(d.Reclen) > n {
				return unix.EIO
			}
			nameBytes := buf[off+int(unsafe.Offsetof(d.Name)) : off+int(d.Reclen)]
			l := 0
			for l < len(nameBytes) && nameBytes[l] != 0 {
				l++
			}
			if !fn(string(nameBytes[:l]), d.Ino, d.Type) {
				return nil
			}
			off += int(d.Reclen)
		}
	}
}

func itoa(v uint64) string { return strconv.FormatUint(v, 10) }
