#!/usr/bin/env bash
# run.sh: runs one command inside a qemu VM booting one of Debian's kernels.
#
#   run.sh --kernel NAME [--cgroup v2|hybrid] [--timeout SEC] [--file SRC:DST]... -- COMMAND [ARG...]
#
#   --kernel NAME   5.10, 6.1, 6.12, X.Y or newest (see kernels.sh), each also as arm64:NAME,
#                   or a path (with a /) to a bzImage or an arm64 Image
#   --cgroup        v2 (default): cgroup2 at /sys/fs/cgroup with +pids for children;
#                   hybrid: tmpfs at /sys/fs/cgroup, cgroup2 at unified/, v1 pids at pids/
#   --timeout SEC   whole-run limit (default 300)
#   --file SRC:DST  put SRC (a file or folder; binaries must be static) at DST in the guest;
#                   DST is absolute, not under /tmp (the guest mounts a tmpfs there);
#                   DST ending in / is a folder: SRC keeps its name
#
# The guest is busybox plus the given files. Its /init mounts proc, sysfs,
# devtmpfs, tmpfs on /tmp, tracefs, debugfs, bpffs and the cgroup layout, sets
# up loopback and /etc/passwd (root, nobody), then runs COMMAND as root in /,
# with PATH, HOME, CI and every FORKWATCH_* variable of the host, plus
# FORKWATCH_VM_KERNEL and FORKWATCH_VM_CGROUP. Its stdout and stderr come back
# over a serial port of their own and are printed on stdout when the VM is off.
#
# x86-64 kernels boot in qemu-system-x86_64 (-machine pc); arm64 kernels in
# qemu-system-aarch64 (-machine virt), with busybox-static for arm64 from
# Debian (kernels.sh busybox arm64) and the files given, which must be arm64
# binaries then.
#
# Exit status: COMMAND's, or 125 when the VM failed (kernel panic, timeout, no
# exit status came back); then the console's last 40 lines go to stderr.
# FORKWATCH_VM_KEEP=DIR keeps the console log, output and initramfs in DIR.
# FORKWATCH_VM_TCG_THREAD=multi runs the vCPUs on two host threads (default single).
# FORKWATCH_VM_ARM64_CPU: qemu's -cpu for arm64 (default max,pauth-impdef=on).
set -Eeuo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${FORKWATCH_VM_CACHE:-$here/.cache}
busybox=${FORKWATCH_VM_BUSYBOX:-/bin/busybox}

log() { printf 'run.sh: %s\n' "$*" >&2; }
# Whatever fails in here is the harness's failure, never the command's.
trap 'exit 125' ERR
fail() { log "$*"; exit 125; }
usage() {
	sed -n '2,/^set -E\{0,1\}euo/{/^set -/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
	exit 125
}

kernel="" layout=v2 timeout=300 files=()
while (($#)); do
	case $1 in
	--kernel) kernel=${2:?--kernel needs a value}; shift 2 ;;
	--cgroup) layout=${2:?--cgroup needs a value}; shift 2 ;;
	--timeout) timeout=${2:?--timeout needs a value}; shift 2 ;;
	--file) files+=("${2:?--file needs SRC:DST}"); shift 2 ;;
	--kernel=* | --cgroup=* | --timeout=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
	--file=*) files+=("${1#*=}"); shift ;;
	--) shift; break ;;
	-h | --help) usage ;;
	*) log "unknown argument: $1"; usage ;;
	esac
done
(($#)) || { log "no command given"; usage; }
[[ -n $kernel ]] || { log "--kernel is required"; usage; }
[[ $layout == v2 || $layout == hybrid ]] || fail "--cgroup must be v2 or hybrid, not $layout"
[[ $timeout =~ ^[1-9][0-9]*$ ]] || fail "--timeout must be a number of seconds, not $timeout"
[[ -x $busybox ]] || fail "$busybox missing: install Debian's busybox-static"
# A dynamic busybox (Debian's busybox package) would need a libc in the guest.
if head -c 4096 "$busybox" | grep -qa 'ld-linux'; then
	fail "$busybox is dynamically linked: install Debian's busybox-static"
fi

# --- the kernel ------------------------------------------------------------
if [[ $kernel == */* ]]; then
	[[ -f $kernel ]] || fail "no kernel image at $kernel"
	vmlinuz=$kernel
else
	vmlinuz=$("$here/kernels.sh" fetch "$kernel") || fail "could not fetch kernel $kernel"
fi
# An arm64 Image says "ARMd" at byte 56 (Documentation/arch/arm64/booting.rst).
arch=amd64
if [[ $(od -An -c -j 56 -N 4 "$vmlinuz" | tr -d ' ') == ARMd ]]; then arch=arm64; fi
# The guest's busybox; the host's runs cpio and lists the applets (Debian
# builds busybox-static with one configuration for every architecture).
guest_busybox=$busybox
case $arch in
amd64)
	qemu=qemu-system-x86_64
	command -v $qemu >/dev/null || fail "$qemu missing: install Debian's qemu-system-x86"
	;;
arm64)
	qemu=qemu-system-aarch64
	command -v $qemu >/dev/null || fail "$qemu missing: install Debian's qemu-system-arm"
	guest_busybox=$("$here/kernels.sh" busybox arm64) || fail "could not fetch busybox-static for arm64"
	;;
esac

# --- a private folder, and qemu killed on every way out ---------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/forkwatch-vm.XXXXXX")
qpid=""
cleanup() {
	local rc=$?
	if [[ -n $qpid ]] && kill -0 "$qpid" 2>/dev/null; then
		kill -TERM "$qpid" 2>/dev/null || true
		for _ in $(seq 30); do
			kill -0 "$qpid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$qpid" 2>/dev/null || true
		wait "$qpid" 2>/dev/null || true
	fi
	if [[ -n ${FORKWATCH_VM_KEEP:-} ]]; then
		mkdir -p "$FORKWATCH_VM_KEEP" && cp -f "$tmp"/*.log "$tmp"/initrd.gz "$FORKWATCH_VM_KEEP"/ 2>/dev/null || true
	fi
	rm -rf "$tmp"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# --- the initramfs -----------------------------------------------------------
# busybox and its applet links are the same for every run: archived once per
# busybox binary in the cache, padded so that the run's archive can follow.
base_cpio() {
	local sum out stage applet
	sum=$(sha256sum "$guest_busybox" | cut -c1-16)
	out=$cache/initramfs/busybox-$sum.cpio
	if [[ ! -f $out ]]; then
		mkdir -p "$cache/initramfs"
		stage=$tmp/base
		mkdir -p "$stage/bin"
		cp "$guest_busybox" "$stage/bin/busybox"
		while read -r applet; do
			[[ $applet == bin/busybox ]] && continue
			mkdir -p "$stage/$(dirname "$applet")"
			ln -sf /bin/busybox "$stage/$applet"
		done < <("$busybox" --list-full)
		(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | "$busybox" cpio -o -H newc -R 0:0 2>/dev/null) >"$tmp/base.cpio"
		# The next archive must start on a 4-byte boundary: 512 is safe.
		truncate -s %512 "$tmp/base.cpio"
		mv "$tmp/base.cpio" "$out"
		rm -rf "$stage"
	fi
	echo "$out"
}

# quote WORD: WORD as a single-quoted sh word.
quote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

marker="forkwatch-vm-exit-$(od -An -N8 -tx8 /dev/urandom | tr -d ' \n'):"
root=$tmp/root
mkdir -p "$root"/{dev,proc,sys,run,tmp,root,etc/forkwatch-vm}

for f in ${files[@]+"${files[@]}"}; do
	src=${f%%:*} dst=${f#*:}
	[[ $f == *:* && -n $src && $dst == /* ]] || fail "--file wants SRC:/ABSOLUTE/DST, not $f"
	[[ -e $src ]] || fail "--file: $src does not exist"
	if [[ $dst == */ ]]; then dst=$dst$(basename -- "$src"); fi
	dst=$(realpath -ms "$dst")
	[[ $dst == /tmp || $dst == /tmp/* ]] && fail "--file: $dst is under /tmp, which the guest mounts a tmpfs on"
	if [[ -f $src ]] && head -c 4096 "$src" | grep -qa 'ld-linux'; then
		log "warning: $src is dynamically linked; the guest has no libc (build it with CGO_ENABLED=0)"
	fi
	# An ELF file's e_machine: 62 is x86-64, 183 arm64.
	if [[ -f $src && $(head -c 4 "$src") == $'\x7fELF' ]]; then
		machine=$(od -An -tu2 -j 18 -N 2 "$src" | tr -d ' ')
		if [[ ($arch == amd64 && $machine != 62) || ($arch == arm64 && $machine != 183) ]]; then
			log "warning: $src is not an $arch binary (ELF machine $machine); the guest cannot run it"
		fi
	fi
	mkdir -p "$root$(dirname "$dst")"
	cp -rL "$src" "$root$dst"
done

cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
nobody:x:65534:
EOF
printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
echo forkwatch-vm >"$root/etc/hostname"

# The command, with its environment: CI and FORKWATCH_* from the host.
{
	printf 'exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root'
	while IFS= read -r var; do
		if [[ $var == CI || $var == FORKWATCH_* ]]; then
			case $var in FORKWATCH_VM_KERNEL | FORKWATCH_VM_CGROUP) continue ;; esac
			printf ' %s' "$(quote "$var=${!var}")"
		fi
	done < <(compgen -e)
	printf ' %s' "$(quote "FORKWATCH_VM_KERNEL=$kernel")" "$(quote "FORKWATCH_VM_CGROUP=$layout")"
	for a in "$@"; do printf ' %s' "$(quote "$a")"; done
	printf '\n'
} >"$root/etc/forkwatch-vm/command"

# The console is the board's own UART (pc: ttyS0; virt: the PL011, ttyAMA0);
# the command's output goes to a 16550 of its own (pc: the second, ttyS1;
# virt: one on PCI, ttyS0, as Debian's arm64 kernels build in 8250_pci and
# have virtio's console as a module only).
case $arch in
amd64) console=ttyS0 outport=ttyS1 ;;
arm64) console=ttyAMA0 outport=ttyS0 ;;
esac

cat >"$root/init" <<EOF
#!/bin/sh
# /init of forkwatch's VM tests, written by test/vm/run.sh. Messages go to the
# console ($console); the command's output and exit status to $outport.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
umask 022
chmod 755 /
say() { echo "forkwatch-vm: \$*"; }
must() { "\$@" || say "FAILED: \$*"; }

must mount -t proc proc /proc
must mount -t sysfs sysfs /sys
must mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
must mount -t devpts devpts /dev/pts
must mount -t tmpfs -o mode=1777 tmpfs /dev/shm
must mount -t tmpfs -o mode=1777 tmpfs /tmp
must mount -t tmpfs -o mode=755 tmpfs /run
must mount -t tracefs tracefs /sys/kernel/tracing
must mount -t debugfs debugfs /sys/kernel/debug
must mount -t bpf bpf /sys/fs/bpf
case $layout in
v2)
	must mount -t cgroup2 cgroup2 /sys/fs/cgroup
	must sh -c 'echo +pids >/sys/fs/cgroup/cgroup.subtree_control'
	;;
hybrid)
	must mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup
	mkdir -p /sys/fs/cgroup/unified /sys/fs/cgroup/pids
	must mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified
	must mount -t cgroup -o pids pids /sys/fs/cgroup/pids
	;;
esac
must ip link set lo up
hostname forkwatch-vm
# Raw: no \\n -> \\r\\n on the way out.
must stty -F /dev/$outport raw -echo
say "running: \$(cat /etc/forkwatch-vm/command)"

cd /
sh /etc/forkwatch-vm/command </dev/null >/dev/$outport 2>&1
rc=\$?
say "exit status \$rc"
# Whatever the command left running could hold $outport open; the last close
# waits until the port has sent everything.
kill -KILL -1 2>/dev/null
sleep 0.1
printf '\\n%s%s\\n' '$marker' "\$rc" >/dev/$outport
poweroff -f
EOF
chmod 755 "$root/init"

base=$(base_cpio)
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | "$busybox" cpio -o -H newc -R 0:0 2>/dev/null) >"$tmp/run.cpio"
cat "$base" "$tmp/run.cpio" | gzip -1 >"$tmp/initrd.gz"
rm -rf "$root" "$tmp/run.cpio"

# --- boot ------------------------------------------------------------------
con=$tmp/console.log out=$tmp/output.log
start=$SECONDS
# Single-threaded TCG by default: with thread=multi, 7.3 died at boot in 3 of
# ~70 boots (Oops: int3 in sched_clock_cpu, the kernel patching its own code
# while the other vCPU runs it); in none of ~170 with thread=single, 10-20%
# slower for one VM, no slower for two at a time.
tcg_thread=${FORKWATCH_VM_TCG_THREAD:-single}
# Every feature qemu emulates, pointer authentication included (the kernel
# signs return addresses, which kretprobes and trampolines must handle), but
# with qemu's cheap algorithm instead of the architected QARMA: a boot-run-
# poweroff cycle of 6.1 takes 3.9 s instead of 11.4 s.
arm64_cpu=${FORKWATCH_VM_ARM64_CPU:-max,pauth-impdef=on}
pdeath=()
if command -v setpriv >/dev/null; then pdeath=(setpriv --pdeathsig KILL --); fi

# boot: runs qemu until it powers off, panics or the time is up (sets
# timed_out), or until it has not started the command within the boot time
# limit (then qemu is killed and the console says so).
boot() {
	local boot_deadline=$((SECONDS + boot_timeout)) booted=""
	: >"$con"
	: >"$out"
	# -chardev takes a comma as ",,". setpriv: qemu dies with run.sh even on
	# a SIGKILL, which no trap sees.
	local board
	case $arch in
	amd64) board=(-machine pc -cpu max -serial chardev:con -serial chardev:out) ;;
	arm64) board=(-machine virt -cpu "$arm64_cpu" -serial chardev:con -device pci-serial,chardev=out) ;;
	esac
	"${pdeath[@]}" $qemu -nodefaults -no-user-config -display none -no-reboot \
		-accel "tcg,thread=$tcg_thread" -smp 2 -m 2G \
		-kernel "$vmlinuz" -initrd "$tmp/initrd.gz" \
		-append "console=$console panic=-1 rdinit=/init" \
		-chardev "file,id=con,path=${con//,/,,}" -chardev "file,id=out,path=${out//,/,,}" "${board[@]}" \
		</dev/null >"$tmp/qemu.log" 2>&1 &
	qpid=$!
	timed_out=""
	while kill -0 "$qpid" 2>/dev/null; do
		if ((SECONDS - start >= timeout)); then
			timed_out=1
			return
		fi
		if [[ -z $booted ]] && ((SECONDS >= boot_deadline)); then
			if ! grep -qa "$started" "$con"; then
				kill -KILL "$qpid" 2>/dev/null || true
				wait "$qpid" 2>/dev/null || true
				qpid=""
				echo "run.sh: no /init after ${boot_timeout}s: qemu killed" >>"$con"
				return
			fi
			booted=1
		fi
		sleep 0.1
	done
	wait "$qpid" || true
	qpid=""
}

# Rarely, under TCG, a kernel dies or hangs before /init starts the command
# (seen: an int3 Oops while the kernel patches its own code; a hang at the
# clocksource switch, once in ~90 boots). Such a boot is tried again, up to
# FORKWATCH_VM_BOOT_RETRIES times (default 2); FORKWATCH_VM_BOOT_TIMEOUT (default
# 60 s) is how long /init may take to start. A crash once the command runs may be
# the command's doing: it is reported, never retried.
started='forkwatch-vm: running'
retries=${FORKWATCH_VM_BOOT_RETRIES:-2}
boot_timeout=${FORKWATCH_VM_BOOT_TIMEOUT:-60}
boot
while [[ -z $timed_out ]] && ((retries-- > 0)) && ! grep -qa "$started" "$con"; do
	log "the kernel did not get to run the command; booting again. Console:"
	grep -a -m 3 -E 'Oops|BUG|Kernel panic|no /init after' "$con" >&2 || tail -n 5 "$con" >&2
	boot
done

# --- results -----------------------------------------------------------------
# /init's own failures (a mount the kernel refused, ...) matter to any test.
grep -a 'forkwatch-vm: FAILED' "$con" | sed 's/^/run.sh: guest: /' >&2 || true
# The output ends with "\n<marker><status>\n"; what precedes the "\n" is the
# command's.
hit=$(grep -abo -- "$marker[0-9]*" "$out" | tail -n 1 || true)
if [[ -z $timed_out && -n $hit ]]; then
	offset=${hit%%:*}
	status=${hit#*"$marker"}
	head -c "$((offset > 0 ? offset - 1 : 0))" "$out"
	exit "$status"
fi

cat "$out"
if [[ -n $timed_out ]]; then
	log "timed out after ${timeout}s (kernel $kernel, cgroup $layout)"
elif grep -qa 'no /init after' "$con"; then
	log "the kernel did not start /init within ${boot_timeout}s (kernel $kernel, cgroup $layout)"
elif grep -qa 'Kernel panic' "$con"; then
	log "kernel panic (kernel $kernel, cgroup $layout)"
else
	log "the VM stopped without the command's exit status (kernel $kernel, cgroup $layout)"
fi
if [[ -s $tmp/qemu.log ]]; then
	log "qemu said:"
	cat "$tmp/qemu.log" >&2
fi
log "last 40 lines of the console:"
tail -n 40 "$con" >&2
exit 125
