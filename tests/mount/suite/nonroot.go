package suite

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func init() {
	register("nonroot_create_owner", nonrootCreateOwner)
	register("nonroot_eacces", nonrootEACCES)
	register("nonroot_setgid_dir", nonrootSetgidDir)
	register("nonroot_setgid_dir_member", nonrootSetgidDirMember)
	register("nonroot_write_kills_suid", nonrootWriteKillsSuid)
	register("nonroot_truncate_kills_suid", nonrootTruncateKillsSuid)
}

func wantOwner(t *testing.T, p string, uid, gid uint32) {
	t.Helper()
	st := lstat(t, p)
	if st.Uid != uid || st.Gid != gid {
		t.Errorf("%s owned by %d:%d, want %d:%d", p, st.Uid, st.Gid, uid, gid)
	}
}

// nonrootCreateOwner: what a non-root caller creates belongs to it, through
// the mount and on the host.
func nonrootCreateOwner(t *testing.T, e *Env) {
	must(t, "chmod case dir", unix.Chmod(e.Dir, 0o777))
	c := e.nonRoot()
	steps := []Step{
		{Op: "open", Path: e.M("file"), Flags: unix.O_CREAT | unix.O_WRONLY, Mode: 0o644},
		{Op: "write", Data: "mine"},
		{Op: "close"},
		{Op: "mkdir", Path: e.M("dir"), Mode: 0o755},
		{Op: "symlink", Path: e.M("link"), Path2: "file"},
		{Op: "mknod", Path: e.M("fifo"), Mode: unix.S_IFIFO | 0o644},
		{Op: "open", Path: e.M("dir/nested"), Flags: unix.O_CREAT | unix.O_WRONLY, Mode: 0o600},
		{Op: "link", Path: e.M("file"), Path2: e.M("hardlink")},
		{Op: "rename", Path: e.M("hardlink"), Path2: e.M("dir/moved")},
		{Op: "chown", Path: e.M("file"), UID: -1, GID: int(c.GID)},
		{Op: "chmod", Path: e.M("file"), Mode: 0o600},
	}
	wantOK(t, steps, runAs(t, c, steps...))
	for _, n := range []string{"file", "dir", "link", "fifo", "dir/nested", "dir/moved"} {
		wantOwner(t, e.M(n), c.UID, c.GID)
		if e.HostVisible() {
			wantOwner(t, e.H(n), c.UID, c.GID)
		}
	}
	wantContent(t, e.M("file"), "mine")
	// Root can still do anything with it.
	must(t, "root chown", unix.Lchown(e.M("file"), 0, 0))
	wantOwner(t, e.M("file"), 0, 0)
}

// nonrootEACCES: the caller's permissions are enforced.
func nonrootEACCES(t *testing.T, e *Env) {
	must(t, "mkdir private", unix.Mkdir(e.M("private"), 0o700))
	writeFile(t, e.M("private/secret"), "s", 0o644)
	writeFile(t, e.M("rootonly"), "r", 0o600)
	writeFile(t, e.M("readonly"), "r", 0o644)
	must(t, "mkdir sticky", unix.Mkdir(e.M("sticky"), 0o777))
	must(t, "chmod sticky", unix.Chmod(e.M("sticky"), 0o1777))
	writeFile(t, e.M("sticky/rootfile"), "", 0o666)
	must(t, "mkdir shared", unix.Mkdir(e.M("open"), 0o777))
	must(t, "chmod open", unix.Chmod(e.M("open"), 0o777))
	c := e.nonRoot()
	type want struct {
		s   Step
		err string
	}
	cases := []want{
		{Step{Op: "stat", Path: e.M("private/secret")}, "EACCES"},
		{Step{Op: "readdir", Path: e.M("private")}, "EACCES"},
		{Step{Op: "open", Path: e.M("private/new"), Flags: unix.O_CREAT | unix.O_WRONLY, Mode: 0o644}, "EACCES"},
		{Step{Op: "mkdir", Path: e.M("private/d"), Mode: 0o755}, "EACCES"},
		{Step{Op: "open", Path: e.M("rootonly"), Flags: unix.O_RDONLY}, "EACCES"},
		{Step{Op: "open", Path: e.M("readonly"), Flags: unix.O_WRONLY}, "EACCES"},
		{Step{Op: "truncate", Path: e.M("readonly"), Len: 0}, "EACCES"},
		{Step{Op: "open", Path: e.M("new-in-0755-dir"), Flags: unix.O_CREAT | unix.O_WRONLY, Mode: 0o644}, "EACCES"},
		{Step{Op: "unlink", Path: e.M("readonly")}, "EACCES"},
		{Step{Op: "rename", Path: e.M("readonly"), Path2: e.M("open/stolen")}, "EACCES"},
		{Step{Op: "unlink", Path: e.M("sticky/rootfile")}, "EPERM"},
		{Step{Op: "chmod", Path: e.M("readonly"), Mode: 0o777}, "EPERM"},
		{Step{Op: "chown", Path: e.M("readonly"), UID: int(c.UID), GID: -1}, "EPERM"},
		{Step{Op: "open", Path: e.M("open/mine"), Flags: unix.O_CREAT | unix.O_WRONLY, Mode: 0o644}, ""},
		{Step{Op: "chown", Path: e.M("open/mine"), UID: 0, GID: -1}, "EPERM"},
		{Step{Op: "chown", Path: e.M("open/mine"), UID: -1, GID: 0}, "EPERM"},
		{Step{Op: "open", Path: e.M("readonly"), Flags: unix.O_RDONLY}, ""},
	}
	var steps []Step
	for _, c := range cases {
		steps = append(steps, c.s)
	}
	res := runAs(t, c, steps...)
	for i, w := range cases {
		if res[i].Err != w.err {
			t.Errorf("uid %d %s %s: %q, want %q", c.UID, w.s.Op, strings.TrimPrefix(w.s.Path, e.Dir), res[i].Err, w.err)
		}
	}
	// Nothing changed.
	wantContent(t, e.M("readonly"), "r")
	if m := lstat(t, e.M("readonly")).Mode; m&0o777 != 0o644 {
		t.Errorf("readonly mode %o", m)
	}
	var st unix.Stat_t
	wantErrno(t, "private/new", unix.Lstat(e.M("private/new"), &st), unix.ENOENT)
}

// nonrootSetgidDir: in a setgid directory new entries take the directory's
// group; a file a caller outside that group asks to be setgid is not; new
// subdirectories inherit the setgid bit.
func nonrootSetgidDir(t *testing.T, e *Env) {
	setgidDir(t, e, false)
}

// nonrootSetgidDirMember: a caller whose supplementary groups include the
// setgid directory's group keeps the setgid bit it asks for. Over FUSE this
// needs FUSE_CREATE_SUPP_GROUP (the request carries only uid and gid).
func nonrootSetgidDirMember(t *testing.T, e *Env) {
	setgidDir(t, e, true)
}

func setgidDir(t *testing.T, e *Env, asMember bool) {
	const group = 2000
	must(t, "mkdir", unix.Mkdir(e.M("sg"), 0o777))
	must(t, "chown", unix.Lchown(e.M("sg"), 0, group))
	must(t, "chmod", unix.Chmod(e.M("sg"), 0o2777))
	outsider := e.nonRoot()
	member := Caller{UID: outsider.UID, GID: outsider.GID, Groups: []uint32{group}}
	steps := func(prefix string) []Step {
		return []Step{
			{Op: "open", Path: e.M("sg/" + prefix + "file"), Flags: unix.O_CREAT | unix.O_WRONLY, Mode: 0o2755},
			{Op: "mkdir", Path: e.M("sg/" + prefix + "dir"), Mode: 0o755},
			{Op: "mknod", Path: e.M("sg/" + prefix + "fifo"), Mode: unix.S_IFIFO | 0o2755},
		}
	}
	if asMember {
		wantOK(t, steps("in-"), runAs(t, member, steps("in-")...))
	} else {
		wantOK(t, steps("out-"), runAs(t, outsider, steps("out-")...))
	}
	check := func(name string, wantSgid bool) {
		t.Helper()
		for _, p := range []string{e.M("sg/" + name), e.H("sg/" + name)} {
			if p == e.H("sg/"+name) && !e.HostVisible() {
				continue
			}
			st := lstat(t, p)
			if st.Gid != group || st.Uid != outsider.UID {
				t.Errorf("%s owned by %d:%d, want %d:%d (the setgid dir's group)", p, st.Uid, st.Gid, outsider.UID, group)
			}
			if got := st.Mode&unix.S_ISGID != 0; got != wantSgid {
				t.Errorf("%s mode %o: setgid %v, want %v", p, st.Mode, got, wantSgid)
			}
		}
	}
	if asMember {
		check("in-file", true) // a member may keep it
		check("in-dir", true)
		return
	}
	check("out-file", false) // the security rule: not in group 2000
	check("out-fifo", false)
	check("out-dir", true) // directories inherit setgid
}

// nonrootWriteKillsSuid: a write by a non-owner through a world-writable
// setuid/setgid file clears setuid (and setgid where group-exec is set), so
// nobody can plant code in a setuid binary.
func nonrootWriteKillsSuid(t *testing.T, e *Env) {
	files := map[string]uint32{"f6666": 0o6666, "f6777": 0o6777, "f4777": 0o4777}
	for n, mode := range files {
		writeFile(t, e.M(n), "original", 0o644)
		must(t, "chmod", unix.Chmod(e.M(n), mode))
	}
	var steps []Step
	for _, n := range []string{"f6666", "f6777", "f4777"} {
		steps = append(steps,
			Step{Op: "open", Path: e.M(n), Flags: unix.O_WRONLY, Slot: len(steps)},
			Step{Op: "write", Data: "written by " + fmt.Sprint(e.Opts.UID), Slot: len(steps)})
	}
	wantOK(t, steps, runAs(t, e.nonRoot(), steps...))
	for n := range files {
		for _, p := range []string{e.M(n), e.H(n)} {
			if p == e.H(n) && !e.HostVisible() {
				continue
			}
			st := lstat(t, p)
			if st.Mode&unix.S_ISUID != 0 {
				t.Errorf("%s: mode %o keeps setuid after a write by uid %d", p, st.Mode, e.Opts.UID)
			}
			if st.Mode&unix.S_IXGRP != 0 && st.Mode&unix.S_ISGID != 0 {
				t.Errorf("%s: mode %o keeps setgid (with group exec) after a write by uid %d", p, st.Mode, e.Opts.UID)
			}
		}
		if b, _ := os.ReadFile(e.M(n)); !strings.HasPrefix(string(b), "written by") {
			t.Errorf("%s holds %q", n, b)
		}
	}
	// A write by the owner (root here, via the mount) keeps the bits: root
	// has CAP_FSETID.
	writeFile(t, e.M("rootsuid"), "x", 0o644)
	must(t, "chmod", unix.Chmod(e.M("rootsuid"), 0o4755))
	f, err := os.OpenFile(e.M("rootsuid"), os.O_WRONLY, 0)
	must(t, "open", err)
	f.WriteString("y")
	f.Close()
	if m := lstat(t, e.M("rootsuid")).Mode; m&unix.S_ISUID == 0 {
		t.Errorf("a write by root cleared setuid (mode %o); the kernel keeps it for CAP_FSETID", m)
	}
}

// nonrootTruncateKillsSuid: truncate and ftruncate by a non-owner of a
// world-writable setuid file clear setuid, as a write does.
func nonrootTruncateKillsSuid(t *testing.T, e *Env) {
	for _, n := range []string{"t", "ft"} {
		writeFile(t, e.M(n), "original", 0o644)
		must(t, "chmod", unix.Chmod(e.M(n), 0o6777))
	}
	steps := []Step{
		{Op: "truncate", Path: e.M("t"), Len: 3},
		{Op: "open", Path: e.M("ft"), Flags: unix.O_WRONLY},
		{Op: "ftruncate", Len: 2},
	}
	wantOK(t, steps, runAs(t, e.nonRoot(), steps...))
	for n, size := range map[string]int64{"t": 3, "ft": 2} {
		st := lstat(t, e.M(n))
		if st.Size != size {
			t.Errorf("%s: size %d, want %d", n, st.Size, size)
		}
		if st.Mode&(unix.S_ISUID|unix.S_ISGID) != 0 {
			t.Errorf("%s: mode %o keeps setuid/setgid after truncation by uid %d", n, st.Mode, e.Opts.UID)
		}
	}
}
