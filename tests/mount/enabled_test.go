//go:build !pending

package mount

// The lists below say what runs against govirtiofsd in a plain `go test`
// (and so in CI): what the daemon passed when they were last updated. Add
// a name once the daemon passes it; `go test -tags pending` runs
// everything regardless. Against the loopback
// (GOVIRTIOFSD_TEST_DAEMON=loopback) everything runs except the
// loopbackCannot lists.
const runAll = false

// enabledSuite lists suite cases (suite.Names()) enabled against
// govirtiofsd: all of them now.
var enabledSuite = map[string]bool{
	"access":                     true,
	"close_flush":                true,
	"copy_file_range":            true,
	"fallocate":                  true,
	"fallocate_punch_hole":       true,
	"flock":                      true,
	"flock_host":                 true,
	"fsync":                      true,
	"fsyncdir":                   true,
	"getattr_matches_host":       true,
	"getattr_stable_ino":         true,
	"link":                       true,
	"lookup_enoent":              true,
	"lseek_data_hole":            true,
	"mkdir":                      true,
	"mknod_device":               true,
	"mknod_fifo":                 true,
	"mknod_regular":              true,
	"mknod_socket":               true,
	"mmap_shared":                true,
	"names":                      true,
	"nonroot_create_owner":       true,
	"nonroot_eacces":             true,
	"nonroot_setgid_dir":         true,
	"nonroot_setgid_dir_member":  true,
	"nonroot_write_kills_suid":   true,
	"open_append":                true,
	"open_create":                true,
	"open_errors":                true,
	"open_nofollow":              true,
	"open_excl":                  true,
	"open_trunc":                 true,
	"posix_lock":                 true,
	"posix_lock_pid":             true,
	"posix_lock_host":            true,
	"read_write_offsets":         true,
	"readdir_attrs":              true,
	"readdir_dino_is_stino":      true,
	"readdir_large":              true,
	"readdir_seek":               true,
	"rename":                     true,
	"rename_exchange":            true,
	"rename_noreplace":           true,
	"rmdir":                      true,
	"safety_fifo_no_hang":        true,
	"safety_host_rename_race":    true,
	"safety_root_listing":        true,
	"safety_symlink_abs_outside": true,
	"safety_symlink_rel_outside": true,
	"setattr_chmod":              true,
	"setattr_chown":              true,
	"setattr_on_fd":              true,
	"setattr_truncate":           true,
	"setattr_utimens":            true,
	"statfs":                     true,
	"symlink_readlink":           true,
	"tmpfile_linkat":             true,
	"unlink":                     true,
	"write_large":                true,
	"xattr":                      true,
	"xattr_symlink":              true,
}

// enabledPosix lists posixtest cases enabled against govirtiofsd.
var enabledPosix = map[string]bool{
	"AppendWrite":                true,
	"DirSeek":                    true,
	"DirectIO":                   true,
	"Fallocate":                  true,
	"FallocateKeepSize":          true,
	"FcntlFlockLocksFile":        true,
	"FcntlFlockSetLk":            true,
	"FdLeak":                     true,
	"FileBasic":                  true,
	"FileLarge":                  true,
	"FstatDeleted":               true,
	"Link":                       true,
	"LinkUnlinkRename":           true,
	"LseekEnxioCheck":            true,
	"LseekHoleSeeksToEOF":        true,
	"MkdirRmdir":                 true,
	"NlinkZero":                  true,
	"OpenAt":                     true,
	"OpenSymlinkRace":            true,
	"ParallelFileOpen":           true,
	"ReadDirBasic":               true,
	"ReadDirConsistency":         true,
	"RenameOpenDir":              true,
	"RenameOverwriteDestExist":   true,
	"RenameOverwriteDestNoExist": true,
	"SetattrSymlink":             true,
	"SymlinkReadlink":            true,
	"Tmpfile":                    true,
	"TruncateFile":               true,
	"TruncateNoFile":             true,
	"XAttr":                      true,
	"XAttrLarge":                 true,
}

// enabledTests lists top-level tests of this package enabled against
// govirtiofsd (those that check enabled(t)).
var enabledTests = map[string]bool{
	"TestReadonly":   true,
	"TestStopSIGINT": true,
	"TestStopBusy":   true,
}
