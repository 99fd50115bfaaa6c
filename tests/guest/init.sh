#!/bin/busybox sh
# init of the tests/guest initramfs (generated from tests/guest/init.sh).
# Every outcome is a "RESULT <check> PASS|FAIL|SKIP <detail>" line on the
# console; see package guest for the host <-> guest protocol.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
ln -sf /proc/self/fd /dev/fd
mkdir -p /tmp /mnt
mount -t tmpfs tmp /tmp
stty -echo 2>/dev/null

arg() { # value of gvfs.$1= on the kernel command line
	for w in $(cat /proc/cmdline); do
		case $w in "gvfs.$1="*) echo "${w#*=}"; return;; esac
	done
}
PLAN=$(arg plan | tr , ' ')
TAG=$(arg tag)
WALK=$(arg walk)
TOKEN=$(arg token)
WD=$(arg watchdog)
WD2=$(arg watchdog2)

echo GUEST-HELLO
BOOT=1
if read -t 30 line; then
	case $line in *"HOST BOOT "*) BOOT=${line##*HOST BOOT };; esac
fi
BOOT=$(echo "$BOOT" | tr -dc 0-9)
[ -n "$BOOT" ] || BOOT=1
echo "GUEST-BOOT $BOOT"

# Watchdog: the first boot runs everything, a later one only mounts and
# reads a token.
[ "$BOOT" -gt 1 ] && WD=$WD2
(sleep "${WD:-600}"; echo "RESULT watchdog FAIL guest watchdog fired after ${WD:-600}s in boot $BOOT"; echo GUEST-DONE; poweroff -nf) &

for m in @MODULES@; do
	insmod /lib/modules/$m.ko || echo "RESULT modules FAIL insmod $m failed"
done

sample() { # let the host read the daemon's fds and RSS now
	echo "SAMPLE $1"
	read -t 60 line
}

check() { # run one guestcheck command, report a crash as a FAIL
	name=$1
	case $1 in token-*) name=$2 ;; esac
	/bin/guestcheck "$@" || echo "RESULT $name FAIL guestcheck $1 exited with status $?"
}

mnt_check=mount
[ "$BOOT" -gt 1 ] && mnt_check=mount-boot$BOOT
case " $PLAN " in *" reconnect-verify "*) mnt_check=mount-reconnect;; esac
if ! mount -t virtiofs "$TAG" /mnt; then
	echo "RESULT $mnt_check FAIL mount -t virtiofs $TAG /mnt failed"
	echo GUEST-DONE
	poweroff -nf
fi
echo "RESULT $mnt_check PASS"

if [ "$BOOT" -gt 2 ]; then
	echo "RESULT reboot FAIL guest booted $BOOT times"
elif [ "$BOOT" = 2 ]; then
	check token-check reboot /mnt/reboot/token "$TOKEN"
	sample reboot
else
	case " $PLAN " in *" reconnect-verify "*) ;; *) sample mount ;; esac
	# The token goes first, so that reboot and reconnect do not depend on
	# how the daemon coped with the checks before them.
	for c in $PLAN; do
		case $c in reboot|reconnect) check token-write "$c-write" /mnt/reboot/token "$TOKEN" ;; esac
	done
	for c in $PLAN; do
		case $c in
		posixtest) check posixtest /mnt/posix ;;
		identity) check identity /mnt/ident ;;
		handles) check handles /mnt/handles ;;
		walk)
			check walk /mnt/walk "$WALK"
			sample walk
			;;
		reconnect-verify)
			check token-check reconnect /mnt/reboot/token "$TOKEN"
			sample reconnect
			;;
		esac
	done
	case " $PLAN " in *" reboot "*)
		echo "GUEST-REBOOT"
		reboot -f
		sleep 60
		;;
	esac
fi
echo GUEST-DONE
poweroff -nf
