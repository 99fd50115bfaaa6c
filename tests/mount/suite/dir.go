package suite

import (
	"fmt"
	"os"
	"sort"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

func init() {
	register("mkdir", mkdirCase)
	register("unlink", unlinkCase)
	register("rmdir", rmdirCase)
	register("rename", renameCase)
	register("rename_noreplace", renameNoreplace)
	register("rename_exchange", renameExchange)
	register("link", linkCase)
	register("readdir_large", readdirLarge)
	register("readdir_seek", readdirSeek)
	register("readdir_attrs", readdirAttrs)
	register("readdir_dino_is_stino", readdirDinoIsStino)
	register("fsyncdir", fsyncdirCase)
}

func mkdirCase(t *testing.T, e *Env) {
	old := unix.Umask(0o022)
	defer unix.Umask(old)
	must(t, "mkdir", unix.Mkdir(e.M("d"), 0o777))
	st := lstat(t, e.M("d"))
	if st.Mode != unix.S_IFDIR|0o755 {
		t.Errorf("mode %o, want %o (umask 022 applied)", st.Mode, unix.S_IFDIR|0o755)
	}
	if st.Nlink != 2 {
		t.Errorf("new dir nlink %d, want 2", st.Nlink)
	}
	if st.Uid != 0 || st.Gid != 0 {
		t.Errorf("new dir owned by %d:%d, want 0:0", st.Uid, st.Gid)
	}
	if e.HostVisible() {
		if h := lstat(t, e.H("d")); h.Mode != st.Mode {
			t.Errorf("host mode %o, mount %o", h.Mode, st.Mode)
		}
	}
	must(t, "mkdir sub", unix.Mkdir(e.M("d/sub"), 0o700))
	if n := lstat(t, e.M("d")).Nlink; n != 3 {
		t.Errorf("parent nlink %d after mkdir of a subdir, want 3", n)
	}
	wantErrno(t, "mkdir existing", unix.Mkdir(e.M("d"), 0o755), unix.EEXIST)
	wantErrno(t, "mkdir .", unix.Mkdir(e.Dir+"/d/.", 0o755), unix.EEXIST)
	wantErrno(t, "mkdir ..", unix.Mkdir(e.Dir+"/d/..", 0o755), unix.EEXIST)
	wantErrno(t, "mkdir in missing", unix.Mkdir(e.M("missing/x"), 0o755), unix.ENOENT)
	writeFile(t, e.M("f"), "", 0o644)
	wantErrno(t, "mkdir over file", unix.Mkdir(e.M("f"), 0o755), unix.EEXIST)
	wantErrno(t, "mkdir under file", unix.Mkdir(e.M("f/x"), 0o755), unix.ENOTDIR)
}

func unlinkCase(t *testing.T, e *Env) {
	writeFile(t, e.M("f"), "x", 0o644)
	must(t, "unlink", unix.Unlink(e.M("f")))
	var st unix.Stat_t
	wantErrno(t, "lstat after unlink", unix.Lstat(e.M("f"), &st), unix.ENOENT)
	if e.HostVisible() {
		wantErrno(t, "host lstat after unlink", unix.Lstat(e.H("f"), &st), unix.ENOENT)
	}
	wantErrno(t, "unlink again", unix.Unlink(e.M("f")), unix.ENOENT)
	must(t, "mkdir", unix.Mkdir(e.M("d"), 0o755))
	wantErrno(t, "unlink dir", unix.Unlink(e.M("d")), unix.EISDIR)
	// Unlinking a symlink removes the link only.
	writeFile(t, e.M("target"), "t", 0o644)
	must(t, "symlink", unix.Symlink("target", e.M("l")))
	must(t, "unlink link", unix.Unlink(e.M("l")))
	wantContent(t, e.M("target"), "t")
	// An open file stays readable after unlink.
	writeFile(t, e.M("open"), "still here", 0o644)
	f, err := os.Open(e.M("open"))
	must(t, "open", err)
	defer f.Close()
	must(t, "unlink open", unix.Unlink(e.M("open")))
	buf := make([]byte, 64)
	n, err := f.ReadAt(buf, 0)
	if string(buf[:n]) != "still here" {
		t.Errorf("read after unlink: %q %v", buf[:n], err)
	}
}

func rmdirCase(t *testing.T, e *Env) {
	must(t, "mkdir", unix.Mkdir(e.M("d"), 0o755))
	writeFile(t, e.M("d/f"), "x", 0o644)
	wantErrno(t, "rmdir non-empty", unix.Rmdir(e.M("d")), unix.ENOTEMPTY, unix.EEXIST)
	wantErrno(t, "rmdir file", unix.Rmdir(e.M("d/f")), unix.ENOTDIR)
	wantErrno(t, "rmdir missing", unix.Rmdir(e.M("missing")), unix.ENOENT)
	wantErrno(t, "rmdir .", unix.Rmdir(e.Dir+"/d/."), unix.EINVAL)
	must(t, "unlink", unix.Unlink(e.M("d/f")))
	must(t, "rmdir", unix.Rmdir(e.M("d")))
	var st unix.Stat_t
	wantErrno(t, "lstat removed dir", unix.Lstat(e.M("d"), &st), unix.ENOENT)
	if e.HostVisible() {
		wantErrno(t, "host lstat removed dir", unix.Lstat(e.H("d"), &st), unix.ENOENT)
	}
	if n := lstat(t, e.Dir).Nlink; n != 2 {
		t.Errorf("case dir nlink %d after rmdir, want 2", n)
	}
}

func renameCase(t *testing.T, e *Env) {
	writeFile(t, e.M("a"), "A", 0o644)
	ino := lstat(t, e.M("a")).Ino
	must(t, "rename", unix.Rename(e.M("a"), e.M("b")))
	wantContent(t, e.M("b"), "A")
	var st unix.Stat_t
	wantErrno(t, "old name", unix.Lstat(e.M("a"), &st), unix.ENOENT)
	if got := lstat(t, e.M("b")).Ino; got != ino {
		t.Errorf("st_ino %d after rename, was %d", got, ino)
	}
	if e.HostVisible() {
		wantContent(t, e.H("b"), "A")
	}
	// Overwrite an existing file.
	writeFile(t, e.M("c"), "C", 0o644)
	must(t, "rename over file", unix.Rename(e.M("b"), e.M("c")))
	wantContent(t, e.M("c"), "A")
	// Across directories, and a directory with content.
	must(t, "mkdir d1", unix.Mkdir(e.M("d1"), 0o755))
	must(t, "mkdir d2", unix.Mkdir(e.M("d2"), 0o755))
	writeFile(t, e.M("d1/f"), "F", 0o644)
	must(t, "rename across dirs", unix.Rename(e.M("d1/f"), e.M("d2/g")))
	wantContent(t, e.M("d2/g"), "F")
	must(t, "rename dir", unix.Rename(e.M("d2"), e.M("d1/d3")))
	wantContent(t, e.M("d1/d3/g"), "F")
	if n := lstat(t, e.M("d1")).Nlink; n != 3 {
		t.Errorf("d1 nlink %d after a dir moved in, want 3", n)
	}
	// Errors.
	must(t, "mkdir e", unix.Mkdir(e.M("e"), 0o755))
	writeFile(t, e.M("e/x"), "", 0o644)
	must(t, "mkdir empty", unix.Mkdir(e.M("empty"), 0o755))
	wantErrno(t, "rename dir over non-empty dir", unix.Rename(e.M("empty"), e.M("e")), unix.ENOTEMPTY, unix.EEXIST)
	wantErrno(t, "rename dir over file", unix.Rename(e.M("empty"), e.M("c")), unix.ENOTDIR)
	wantErrno(t, "rename file over dir", unix.Rename(e.M("c"), e.M("empty")), unix.EISDIR)
	wantErrno(t, "rename dir into itself", unix.Rename(e.M("e"), e.M("e/sub")), unix.EINVAL)
	wantErrno(t, "rename missing", unix.Rename(e.M("missing"), e.M("x")), unix.ENOENT)
	// Rename over an empty dir works.
	must(t, "rename dir over empty dir", unix.Rename(e.M("e"), e.M("empty")))
	wantContent(t, e.M("empty/x"), "")
}

func renameNoreplace(t *testing.T, e *Env) {
	writeFile(t, e.M("a"), "A", 0o644)
	writeFile(t, e.M("b"), "B", 0o644)
	wantErrno(t, "RENAME_NOREPLACE onto existing", unix.Renameat2(unix.AT_FDCWD, e.M("a"), unix.AT_FDCWD, e.M("b"), unix.RENAME_NOREPLACE), unix.EEXIST)
	wantContent(t, e.M("a"), "A")
	wantContent(t, e.M("b"), "B")
	must(t, "RENAME_NOREPLACE to a new name", unix.Renameat2(unix.AT_FDCWD, e.M("a"), unix.AT_FDCWD, e.M("c"), unix.RENAME_NOREPLACE))
	wantContent(t, e.M("c"), "A")
	if e.HostVisible() {
		wantContent(t, e.H("c"), "A")
		// The target appearing on the host only is still refused.
		writeFile(t, e.H("hostonly"), "H", 0o644)
		wantErrno(t, "RENAME_NOREPLACE onto a host-made file", unix.Renameat2(unix.AT_FDCWD, e.M("c"), unix.AT_FDCWD, e.M("hostonly"), unix.RENAME_NOREPLACE), unix.EEXIST)
		wantContent(t, e.H("hostonly"), "H")
	}
}

func renameExchange(t *testing.T, e *Env) {
	writeFile(t, e.M("a"), "A", 0o644)
	must(t, "mkdir", unix.Mkdir(e.M("d"), 0o755))
	writeFile(t, e.M("d/in"), "IN", 0o644)
	ia, id := lstat(t, e.M("a")).Ino, lstat(t, e.M("d")).Ino
	must(t, "RENAME_EXCHANGE", unix.Renameat2(unix.AT_FDCWD, e.M("a"), unix.AT_FDCWD, e.M("d"), unix.RENAME_EXCHANGE))
	wantContent(t, e.M("d"), "A")
	wantContent(t, e.M("a/in"), "IN")
	if st := lstat(t, e.M("a")); st.Mode&unix.S_IFMT != unix.S_IFDIR || st.Ino != id {
		t.Errorf("a after exchange: mode %o ino %d, want a dir with ino %d", st.Mode, st.Ino, id)
	}
	if st := lstat(t, e.M("d")); st.Mode&unix.S_IFMT != unix.S_IFREG || st.Ino != ia {
		t.Errorf("d after exchange: mode %o ino %d, want a file with ino %d", st.Mode, st.Ino, ia)
	}
	if e.HostVisible() {
		wantContent(t, e.H("d"), "A")
		wantContent(t, e.H("a/in"), "IN")
	}
	wantErrno(t, "RENAME_EXCHANGE with a missing target", unix.Renameat2(unix.AT_FDCWD, e.M("d"), unix.AT_FDCWD, e.M("missing"), unix.RENAME_EXCHANGE), unix.ENOENT)
	wantErrno(t, "RENAME_EXCHANGE|RENAME_NOREPLACE", unix.Renameat2(unix.AT_FDCWD, e.M("d"), unix.AT_FDCWD, e.M("a"), unix.RENAME_EXCHANGE|unix.RENAME_NOREPLACE), unix.EINVAL)
}

func linkCase(t *testing.T, e *Env) {
	writeFile(t, e.M("a"), "A", 0o644)
	must(t, "link", unix.Link(e.M("a"), e.M("b")))
	a, b := lstat(t, e.M("a")), lstat(t, e.M("b"))
	if a.Ino != b.Ino || a.Dev != b.Dev {
		t.Errorf("hard links differ: (%d,%d) vs (%d,%d)", a.Dev, a.Ino, b.Dev, b.Ino)
	}
	if a.Nlink != 2 || b.Nlink != 2 {
		t.Errorf("nlink %d, %d, want 2", a.Nlink, b.Nlink)
	}
	must(t, "write via b", os.WriteFile(e.M("b"), []byte("shared"), 0))
	wantContent(t, e.M("a"), "shared")
	if e.HostVisible() {
		ha, hb := lstat(t, e.H("a")), lstat(t, e.H("b"))
		if ha.Ino != hb.Ino || ha.Nlink != 2 {
			t.Errorf("host: ino %d %d nlink %d", ha.Ino, hb.Ino, ha.Nlink)
		}
		// A link made on the host shows the same st_ino through the mount.
		must(t, "host link", os.Link(e.H("a"), e.H("c")))
		if c := lstat(t, e.M("c")); c.Ino != a.Ino || c.Nlink != 3 {
			t.Errorf("host-made link: ino %d nlink %d, want ino %d nlink 3", c.Ino, c.Nlink, a.Ino)
		}
	}
	must(t, "unlink a", unix.Unlink(e.M("a")))
	want := uint64(1)
	if e.HostVisible() {
		want = 2
	}
	if n := lstat(t, e.M("b")).Nlink; n != want {
		t.Errorf("nlink %d after unlink, want %d", n, want)
	}
	wantErrno(t, "link onto existing", unix.Link(e.M("b"), e.M("b")), unix.EEXIST)
	wantErrno(t, "link missing", unix.Link(e.M("missing"), e.M("x")), unix.ENOENT)
	must(t, "mkdir", unix.Mkdir(e.M("d"), 0o755))
	wantErrno(t, "link dir", unix.Link(e.M("d"), e.M("d2")), unix.EPERM)
}

// dirent is one entry from getdents64.
type dirent struct {
	ino  uint64
	off  int64
	typ  uint8
	name string
}

// getdents reads entries from fd with a buffer of bufSize bytes until EOF
// or max entries (0: no limit).
func getdents(fd int, bufSize, max int) ([]dirent, error) {
	var out []dirent
	buf := make([]byte, bufSize)
	for {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			return out, err
		}
		if n == 0 {
			return out, nil
		}
		for p := 0; p < n; {
			d := (*unix.Dirent)(unsafe.Pointer(&buf[p]))
			nb := (*[256]byte)(unsafe.Pointer(&d.Name[0]))
			l := 0
			for l < len(nb) && nb[l] != 0 {
				l++
			}
			out = append(out, dirent{ino: d.Ino, off: d.Off, typ: d.Type, name: string(nb[:l])})
			p += int(d.Reclen)
		}
		if max > 0 && len(out) >= max {
			return out, nil
		}
	}
}

// makeBigDir creates 1000 entries of mixed types in dir (on the host when
// visible, else through the mount) and returns name → d_type.
func makeBigDir(t *testing.T, e *Env, sub string) map[string]uint8 {
	t.Helper()
	base := e.M(sub)
	if e.HostVisible() {
		base = e.H(sub)
	}
	must(t, "mkdir", os.Mkdir(base, 0o755))
	want := map[string]uint8{}
	for i := 0; i < 1000; i++ {
		p := fmt.Sprintf("%s/entry-%04d-%s", base, i, "padding-to-make-names-longer")
		name := p[len(base)+1:]
		var err error
		switch i % 10 {
		case 0:
			err = os.Mkdir(p, 0o755)
			want[name] = unix.DT_DIR
		case 1:
			err = os.Symlink("target", p)
			want[name] = unix.DT_LNK
		case 2:
			err = unix.Mkfifo(p, 0o644)
			want[name] = unix.DT_FIFO
		default:
			err = os.WriteFile(p, nil, 0o644)
			want[name] = unix.DT_REG
		}
		must(t, "create "+name, err)
	}
	want["."] = unix.DT_DIR
	want[".."] = unix.DT_DIR
	return want
}

func readdirLarge(t *testing.T, e *Env) {
	want := makeBigDir(t, e, "big")
	for _, bufSize := range []int{300, 4096, 65536} {
		fd, err := unix.Open(e.M("big"), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		must(t, "opendir", err)
		ents, err := getdents(fd, bufSize, 0)
		unix.Close(fd)
		must(t, "getdents", err)
		seen := map[string]int{}
		for _, d := range ents {
			seen[d.name]++
			wt, ok := want[d.name]
			if !ok {
				t.Errorf("buf %d: unexpected entry %q", bufSize, d.name)
				continue
			}
			if d.typ != wt {
				t.Errorf("buf %d: %s d_type %d, want %d", bufSize, d.name, d.typ, wt)
			}
		}
		for n := range want {
			if seen[n] != 1 {
				t.Errorf("buf %d: %q listed %d times, want once", bufSize, n, seen[n])
			}
		}
	}
}

func readdirSeek(t *testing.T, e *Env) {
	makeBigDir(t, e, "big")
	fd, err := unix.Open(e.M("big"), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	must(t, "opendir", err)
	defer unix.Close(fd)
	all, err := getdents(fd, 8192, 0)
	must(t, "getdents", err)
	if len(all) != 1002 {
		t.Fatalf("%d entries, want 1002", len(all))
	}
	// Rewind: the same listing again.
	_, err = unix.Seek(fd, 0, 0)
	must(t, "rewinddir", err)
	again, err := getdents(fd, 8192, 0)
	must(t, "getdents after rewind", err)
	if !sameNames(all, again) {
		t.Errorf("listing after rewind differs: %d vs %d entries", len(again), len(all))
	}
	// telldir/seekdir: each d_off is a cookie to resume after that entry.
	for _, k := range []int{0, 1, 2, 499, 500, 997, 1000} {
		_, err := unix.Seek(fd, all[k].off, 0)
		must(t, fmt.Sprintf("seekdir to d_off of entry %d", k), err)
		rest, err := getdents(fd, 1024, 0)
		must(t, "getdents after seekdir", err)
		if !sameNames(all[k+1:], rest) {
			t.Errorf("after seekdir(d_off of entry %d) got %d entries starting %q, want %d starting %q",
				k, len(rest), firstName(rest), len(all)-k-1, firstName(all[k+1:]))
		}
	}
	// lseek(fd, 0, SEEK_CUR) is telldir: after reading some entries it
	// resumes at the next one.
	_, err = unix.Seek(fd, 0, 0)
	must(t, "rewind", err)
	part, err := getdents(fd, 512, 1)
	must(t, "partial getdents", err)
	pos, err := unix.Seek(fd, 0, 1)
	must(t, "telldir", err)
	rest, err := getdents(fd, 8192, 0)
	must(t, "getdents rest", err)
	_, err = unix.Seek(fd, pos, 0)
	must(t, "seekdir to telldir", err)
	rest2, err := getdents(fd, 8192, 0)
	must(t, "getdents after seekdir", err)
	if !sameNames(rest, rest2) || len(part)+len(rest) != len(all) {
		t.Errorf("telldir/seekdir: %d+%d entries, then %d after seekdir; want %d in all", len(part), len(rest), len(rest2), len(all))
	}
}

func sameNames(a, b []dirent) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].name != b[i].name {
			return false
		}
	}
	return true
}

func firstName(d []dirent) string {
	if len(d) == 0 {
		return ""
	}
	return d[0].name
}

// readdirAttrs: an "ls -l" after listing (READDIRPLUS territory) shows each
// entry's own type, mode and size.
func readdirAttrs(t *testing.T, e *Env) {
	must(t, "mkdir", unix.Mkdir(e.M("d"), 0o755))
	for i := 0; i < 50; i++ {
		p := e.M(fmt.Sprintf("d/f%02d", i))
		writeFile(t, p, string(make([]byte, i)), 0o600)
		must(t, "chmod", os.Chmod(p, 0o600|os.FileMode(i%8)))
	}
	must(t, "mkdir sub", unix.Mkdir(e.M("d/sub"), 0o711))
	must(t, "symlink", unix.Symlink("f01", e.M("d/lnk")))
	ents, err := os.ReadDir(e.M("d"))
	must(t, "readdir", err)
	if len(ents) != 52 {
		t.Errorf("%d entries, want 52", len(ents))
	}
	for _, ent := range ents {
		fi, err := ent.Info()
		must(t, "info "+ent.Name(), err)
		var n int
		switch {
		case ent.Name() == "sub":
			if !fi.IsDir() || fi.Mode().Perm() != 0o711 {
				t.Errorf("sub: %v", fi.Mode())
			}
		case ent.Name() == "lnk":
			if fi.Mode()&os.ModeSymlink == 0 || fi.Size() != 3 {
				t.Errorf("lnk: %v size %d", fi.Mode(), fi.Size())
			}
		default:
			if _, err := fmt.Sscanf(ent.Name(), "f%d", &n); err != nil {
				t.Errorf("unexpected entry %q", ent.Name())
				continue
			}
			if fi.Size() != int64(n) || fi.Mode() != 0o600|os.FileMode(n%8) {
				t.Errorf("%s: size %d mode %v, want %d %v", ent.Name(), fi.Size(), fi.Mode(), n, 0o600|os.FileMode(n%8))
			}
		}
	}
	// Sorted listing is stable across calls.
	n1, _ := readdirnames(e.M("d"))
	n2, _ := readdirnames(e.M("d"))
	sort.Strings(n1)
	sort.Strings(n2)
	if fmt.Sprint(n1) != fmt.Sprint(n2) {
		t.Errorf("two listings differ")
	}
}

// readdirDinoIsStino: d_ino from getdents equals st_ino from lstat for
// every entry, "." included.
func readdirDinoIsStino(t *testing.T, e *Env) {
	makeBigDir(t, e, "big")
	fd, err := unix.Open(e.M("big"), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	must(t, "opendir", err)
	defer unix.Close(fd)
	ents, err := getdents(fd, 8192, 0)
	must(t, "getdents", err)
	bad := 0
	for _, d := range ents {
		if d.name == ".." {
			continue
		}
		st := lstat(t, e.M("big/"+d.name))
		if st.Ino != d.ino {
			if bad++; bad <= 10 {
				t.Errorf("%s: d_ino %d, st_ino %d", d.name, d.ino, st.Ino)
			}
		}
	}
	if bad > 10 {
		t.Errorf("... %d mismatches in all", bad)
	}
}

func fsyncdirCase(t *testing.T, e *Env) {
	must(t, "mkdir", unix.Mkdir(e.M("d"), 0o755))
	writeFile(t, e.M("d/f"), "x", 0o644)
	fd, err := unix.Open(e.M("d"), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	must(t, "opendir", err)
	defer unix.Close(fd)
	must(t, "fsync dir", unix.Fsync(fd))
	must(t, "fdatasync dir", unix.Fdatasync(fd))
	must(t, "syncfs", unix.Syncfs(fd))
}
