#!/bin/bash
# Installs everything the guest tests (tests/guest) and scripts/compare.sh
# need, under one fixed directory (default /var/cache/govirtiofsd-test,
# override with GOVIRTIOFSD_GUEST_DIR):
#
#   vmlinux                 uncompressed ELF kernel (Debian linux-image-6.1.*-amd64),
#                           booted by QEMU via PVH
#   modules/*.ko            virtio / fuse / virtiofs modules, in load order
#   busybox                 busybox-static
#   c-virtiofsd/virtiofsd   QEMU's C virtiofsd from bookworm's qemu-system-common
#   qemu10/root/            QEMU 10 from bookworm-backports (for DEVICE_STATE
#                           migration tests), extracted privately
#   rust-virtiofsd/root/    trixie's virtiofsd 1.13 + libc6, libcap-ng0,
#                           libseccomp2, libgcc-s1, extracted privately
#   env                     KEY=VALUE lines describing all of the above
#
# System-wide it only installs bookworm packages: qemu-system-x86,
# busybox-static, cpio, xz-utils. Trixie is reached through a private apt
# state (its own sources file, lists and cache under the directory above),
# so nothing from trixie is ever visible to the system's apt.
#
# Idempotent: a second run checks the env file and its paths and exits.
# Run as root on Debian bookworm.
set -euo pipefail

DIR=${GOVIRTIOFSD_GUEST_DIR:-/var/cache/govirtiofsd-test}
STAMP_VERSION=2
ENV_FILE=$DIR/env

log() { echo "install.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"

# Fast path: everything is already in place.
if [ "${1:-}" != "--force" ] && [ -f "$ENV_FILE" ] && grep -qx "STAMP_VERSION=$STAMP_VERSION" "$ENV_FILE" \
	&& command -v qemu-system-x86_64 >/dev/null; then
	ok=1
	while IFS='=' read -r k v; do
		case $k in
		VMLINUX|BUSYBOX|C_VIRTIOFSD|RUST_VIRTIOFSD|RUST_LDSO|QEMU|QEMU10) [ -e "$v" ] || ok=0 ;;
		esac
	done <"$ENV_FILE"
	if [ $ok = 1 ]; then
		log "already installed in $DIR"
		exit 0
	fi
fi

export DEBIAN_FRONTEND=noninteractive
mkdir -p "$DIR"

# --- 1. bookworm packages, system-wide -------------------------------------
need=()
for p in qemu-system-x86 busybox-static cpio xz-utils; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
	log "apt-get install ${need[*]}"
	apt-get update -qq
	# Pin to bookworm: QEMU 10 from backports dropped the C virtiofsd and
	# we want the QEMU the design notes were measured with.
	pkgs=()
	for p in "${need[@]}"; do pkgs+=("$p/bookworm"); done
	apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi
QEMU=$(command -v qemu-system-x86_64) || die "qemu-system-x86_64 missing after install"

# Make sure the system's lists are there for apt-get download below.
if ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then
	apt-get update -qq
fi

work=$(mktemp -d "$DIR/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT

# --- 2. kernel and modules ---------------------------------------------------
# linux-image-amd64 (bookworm) depends on the current linux-image-6.1.0-N-amd64.
kpkg=$(apt-cache depends linux-image-amd64/bookworm 2>/dev/null \
	| sed -n 's/^ *Depends: \(linux-image-6\.1\.[0-9.-]*-amd64\)$/\1/p' | head -n1)
[ -n "$kpkg" ] || die "cannot find linux-image-6.1.*-amd64 via linux-image-amd64"
log "kernel package $kpkg"
(cd "$work" && apt-get -o APT::Sandbox::User=root download -qq "$kpkg/bookworm")
mkdir -p "$work/kernel"
dpkg-deb -x "$work"/linux-image-*.deb "$work/kernel"
bz=$(ls "$work"/kernel/boot/vmlinuz-* | head -n1)
kver=${bz##*/vmlinuz-}

# The bzImage carries the kernel as an xz stream; QEMU boots the ELF inside
# via PVH and skips the slow in-guest decompressor under TCG.
off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$bz" | head -n1 | cut -d: -f1)
[ -n "$off" ] || die "no xz stream in $bz"
tail -c +$((off + 1)) "$bz" | xz -dc --single-stream >"$work/vmlinux" 2>/dev/null || true
head -c 4 "$work/vmlinux" | grep -q $'\x7fELF' || die "decompressed kernel is not an ELF file"

moddir=$work/kernel/lib/modules/$kver
mkdir -p "$work/modules"
order=""
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci fuse virtiofs; do
	f=$(find "$moddir/kernel" \( -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" \) | head -n1)
	if [ -z "$f" ]; then
		if grep -q "/$m.ko\$" "$moddir/modules.builtin"; then
			log "module $m is built in"
			continue
		fi
		die "module $m neither a module nor built in"
	fi
	case $f in
	*.ko.xz) xz -dc "$f" >"$work/modules/$m.ko" ;;
	*.ko.zst) zstd -dcq "$f" >"$work/modules/$m.ko" ;;
	*) cp "$f" "$work/modules/$m.ko" ;;
	esac
	order="$order $m"
done
order=${order# }

# --- 3. busybox ------------------------------------------------------------
cp /bin/busybox "$work/busybox"
file_ok=$("$work/busybox" --help >/dev/null 2>&1 && echo y || echo n)
[ "$file_ok" = y ] || die "busybox does not run"

# --- 4. QEMU's C virtiofsd (bookworm qemu-system-common, extracted) ---------
# Taken from the package rather than /usr/lib/qemu so that a newer QEMU
# (which drops it) cannot make it disappear.
(cd "$work" && apt-get -o APT::Sandbox::User=root download -qq qemu-system-common/bookworm)
mkdir -p "$work/qsc" "$work/c-virtiofsd"
dpkg-deb -x "$work"/qemu-system-common_*.deb "$work/qsc"
cp "$work/qsc/usr/lib/qemu/virtiofsd" "$work/c-virtiofsd/virtiofsd"
"$work/c-virtiofsd/virtiofsd" --version >/dev/null 2>&1 || die "C virtiofsd does not run (missing libraries?)"

# --- 5. Rust virtiofsd from trixie, private apt state ----------------------
uri=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources | head -n1)
[ -n "$uri" ] || die "no URIs: line in /etc/apt/sources.list.d/debian.sources"
apt_dir=$DIR/apt
mkdir -p "$apt_dir/none" "$apt_dir/sources.list.d" "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
cat >"$apt_dir/sources.list.d/trixie.sources" <<EOF
Types: deb
URIs: $uri
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
aptx=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$apt_dir/sources.list.d"
	-o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
	-o Dir::Etc::Preferences=/dev/null -o "Dir::Etc::PreferencesParts=$apt_dir/none"
	-o APT::Get::List-Cleanup=0)
log "apt-get update (private trixie lists)"
apt-get "${aptx[@]}" update -qq
mkdir -p "$work/rust"
(cd "$work/rust" && apt-get "${aptx[@]}" -o APT::Sandbox::User=root download -qq virtiofsd libc6 libcap-ng0 libseccomp2 libgcc-s1)
mkdir -p "$work/rust-virtiofsd/root"
for d in "$work"/rust/*.deb; do dpkg-deb -x "$d" "$work/rust-virtiofsd/root"; done
rroot=$DIR/rust-virtiofsd/root
ldso_rel=usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
[ -e "$work/rust-virtiofsd/root/$ldso_rel" ] || ldso_rel=lib64/ld-linux-x86-64.so.2
"$work/rust-virtiofsd/root/$ldso_rel" --library-path "$work/rust-virtiofsd/root/usr/lib/x86_64-linux-gnu" \
	"$work/rust-virtiofsd/root/usr/libexec/virtiofsd" --version >/dev/null \
	|| die "Rust virtiofsd does not run with its private libc"
rust_version=$("$work/rust-virtiofsd/root/$ldso_rel" --library-path "$work/rust-virtiofsd/root/usr/lib/x86_64-linux-gnu" \
	"$work/rust-virtiofsd/root/usr/libexec/virtiofsd" --version | head -n1)

# --- 5b. QEMU 10 from bookworm-backports, privately (vhost-user DEVICE_STATE
# migration needs QEMU >= 8.2; 7.2 stays the system QEMU) -------------------
cat >"$apt_dir/sources.list.d/backports.sources" <<EOF
Types: deb
URIs: $uri
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
log "apt-get update (private lists with bookworm-backports)"
apt-get "${aptx[@]}" update -qq
mkdir -p "$work/q10deb" "$work/qemu10/root"
(cd "$work/q10deb" && apt-get "${aptx[@]}" -o APT::Sandbox::User=root download -qq \
	qemu-system-x86/bookworm-backports qemu-system-common/bookworm-backports qemu-system-data/bookworm-backports)
for d in "$work"/q10deb/*.deb; do dpkg-deb -x "$d" "$work/qemu10/root"; done
"$work/qemu10/root/usr/bin/qemu-system-x86_64" --version >/dev/null 2>&1 || die "QEMU 10 does not run with bookworm's libraries"

# --- 6. move into place and write the env file ------------------------------
for x in vmlinux modules busybox c-virtiofsd rust-virtiofsd qemu10; do
	rm -rf "${DIR:?}/$x"
	mv "$work/$x" "$DIR/$x"
done
tmp_env=$(mktemp "$DIR/.env.XXXXXX")
cat >"$tmp_env" <<EOF
# Written by scripts/guest/install.sh; read by tests/guest.
STAMP_VERSION=$STAMP_VERSION
KERNEL_PACKAGE=$kpkg
KERNEL_VERSION=$kver
VMLINUX=$DIR/vmlinux
MODULES_DIR=$DIR/modules
MODULES=$order
BUSYBOX=$DIR/busybox
QEMU=$QEMU
C_VIRTIOFSD=$DIR/c-virtiofsd/virtiofsd
RUST_VIRTIOFSD=$rroot/usr/libexec/virtiofsd
RUST_LDSO=$rroot/$ldso_rel
RUST_LIBDIR=$rroot/usr/lib/x86_64-linux-gnu
RUST_VERSION=$rust_version
QEMU10=$DIR/qemu10/root/usr/bin/qemu-system-x86_64
EOF
chmod 644 "$tmp_env"
mv "$tmp_env" "$ENV_FILE"
log "done: $ENV_FILE"
cat "$ENV_FILE" >&2
