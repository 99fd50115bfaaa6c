# The workload recorded into mixed.rec.gz (bench/README.md, "Recorded
# mixed stream"). Regenerate the recording, as root, from the repository:
#
#   go run ./cmd/govirtiofsd-bench -record bench/testdata/mixed.rec.gz
#
# which runs this script with sh -eu on a /dev/fuse mount forwarded to
# govirtiofsd through the Go vhost-user front-end, with
#   $MNT  the mount being recorded (empty at the start),
#   $SRC  the source tree to extract (the go-fuse module from the Go module
#         cache),
#   $TMP  a scratch directory outside the mount.
# The replay starts from the same state: no "mixed" directory in the root.

tar -C "$SRC" -cf "$TMP/src.tar" .

cd "$MNT"
mkdir mixed
cd mixed

# Unpack a source tree.
tar -xf "$TMP/src.tar"

# Cold: the kernel forgets its dentries and inodes (FORGETs), as after a
# while of other work.
cd /
sync
echo 3 > /proc/sys/vm/drop_caches
cd "$MNT/mixed"

# A "git status": walk with an lstat of every entry, then stat the sources.
find . -ls > /dev/null
find . -type f -name '*.go' -exec stat -c '%s %Y' {} + > /dev/null

# Read some files, edit one (write to a new name, rename over), grep.
find . -type f -name '*.go' | sort | head -n 60 | xargs cat > /dev/null
cp fuse/api.go fuse/api.go.tmp
echo '// edited' >> fuse/api.go.tmp
mv fuse/api.go.tmp fuse/api.go
grep -rl 'func New' . > /dev/null

# Remove the tree.
cd "$MNT"
rm -rf mixed
