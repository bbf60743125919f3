#!/usr/bin/env bash
# Refreshes the vendored BPF headers.
#
#   update.sh                  libbpf's headers and vmlinux_x86.h from this machine's BTF
#   update.sh x86 [BTF]        vmlinux_x86.h from a BTF file (default /sys/kernel/btf/vmlinux)
#   update.sh arm64 [IMAGE]    vmlinux_arm64.h from an arm64 kernel: its BTF file or its
#                              Image (default: test/vm's arm64:newest, fetched if need be)
#
#   libbpf's bpf_helpers.h, bpf_helper_defs.h, bpf_core_read.h, bpf_tracing.h and
#   bpf_endian.h come from Debian's libbpf-dev, at the version pinned below, so a
#   regeneration on any machine sees the same macros.
#
#   vmlinux_<arch>.h is dumped from a kernel's BTF. forkwatch's programs are
#   CO-RE: the types only need to name the fields the programs read, and libbpf
#   relocates offsets against the BTF of the kernel they load on. Each
#   architecture needs its own: struct pt_regs, which the kprobe programs and
#   the fork syscall's number are read from, differs.
set -euo pipefail

LIBBPF_DEB_VERSION="1:1.1.2-0+deb12u1"

here="$(cd "$(dirname "$0")" && pwd)"
tmp="$(mktemp -d)"
chmod 0755 "$tmp" # apt-get download drops privileges to _apt
trap 'rm -rf "$tmp"' EXIT

libbpf() {
	(cd "$tmp" && apt-get download -q "libbpf-dev=${LIBBPF_DEB_VERSION}" >/dev/null)
	dpkg -x "$tmp"/libbpf-dev_*.deb "$tmp/root"
	for h in bpf_helpers.h bpf_helper_defs.h bpf_core_read.h bpf_tracing.h bpf_endian.h; do
		install -m 0644 "$tmp/root/usr/include/bpf/$h" "$here/$h"
	done
	# They include each other as <bpf/...>, from libbpf-dev's place in
	# /usr/include; here they sit side by side.
	sed -i 's|#include <bpf/\(.*\)>|#include "\1"|' "$here"/bpf_*.h
	echo "libbpf headers refreshed: ${LIBBPF_DEB_VERSION}"
}

# btf_of FILE OUT: writes FILE's BTF to OUT. FILE is BTF already, or an arm64
# kernel Image, which carries its .BTF section uncompressed: the blob starts
# with struct btf_header (magic 0xeb9f, version 1, flags 0, hdr_len 24, then
# type_off, type_len, str_off, str_len) and ends where the later of its type
# and string sections does.
btf_of() {
	local file=$1 out=$2 at h
	if [[ $(od -An -tx1 -N2 "$file" | tr -d ' \n') == 9feb ]]; then
		cp "$file" "$out"
		return
	fi
	at=$(LC_ALL=C grep -obUaP '\x9f\xeb\x01\x00\x18\x00\x00\x00' "$file" | head -n 1 | cut -d: -f1)
	[[ -n $at ]] || { echo "update.sh: no BTF in $file" >&2; exit 1; }
	read -ra h < <(od -An -tu4 -j "$((at + 8))" -N16 "$file")
	local types_end=$((h[0] + h[1])) strs_end=$((h[2] + h[3]))
	dd if="$file" of="$out" iflag=skip_bytes,count_bytes status=none skip="$at" \
		count="$((24 + (types_end > strs_end ? types_end : strs_end)))"
}

dump() {
	local arch=$1 file=$2
	btf_of "$file" "$tmp/btf"
	# Kernels from 6.19 are built with -fms-extensions and embed tagged
	# structs and unions as anonymous members (struct ns_common has a
	# "struct ns_tree;"); bpftool dumps them as such, which clang refuses
	# without that extension. They get a name: forkwatch reads none of their
	# fields, and their layout is unchanged.
	bpftool btf dump file "$tmp/btf" format c |
		sed -E 's/^(\t+)(struct|union) ([A-Za-z_0-9]+);$/\1\2 \3 __anon_\3;/' >"$here/vmlinux_$arch.h"
	echo "vmlinux_$arch.h refreshed from $file"
}

case ${1:-} in
"")
	libbpf
	dump x86 /sys/kernel/btf/vmlinux
	;;
x86) dump x86 "${2:-/sys/kernel/btf/vmlinux}" ;;
arm64) dump arm64 "${2:-$("$here/../test/vm/kernels.sh" fetch arm64:newest)}" ;;
*)
	sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2
	exit 2
	;;
esac
