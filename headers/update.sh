#!/usr/bin/env bash
# Refreshes the vendored BPF headers.
#
#   libbpf's bpf_helpers.h, bpf_helper_defs.h, bpf_core_read.h, bpf_tracing.h and
#   bpf_endian.h come from Debian's libbpf-dev, at the version pinned below, so a
#   regeneration on any machine sees the same macros.
#
#   vmlinux_x86.h is dumped from a kernel's BTF (default: the running kernel's
#   /sys/kernel/btf/vmlinux, or the file given as $1). forkwatch's programs are
#   CO-RE: the types only need to name the fields the programs read, and libbpf
#   relocates offsets against the BTF of the kernel they load on.
set -euo pipefail

LIBBPF_DEB_VERSION="1:1.1.2-0+deb12u1"
BTF="${1:-/sys/kernel/btf/vmlinux}"

here="$(cd "$(dirname "$0")" && pwd)"
tmp="$(mktemp -d)"
chmod 0755 "$tmp" # apt-get download drops privileges to _apt
trap 'rm -rf "$tmp"' EXIT

(cd "$tmp" && apt-get download -q "libbpf-dev=${LIBBPF_DEB_VERSION}" >/dev/null)
dpkg -x "$tmp"/libbpf-dev_*.deb "$tmp/root"
for h in bpf_helpers.h bpf_helper_defs.h bpf_core_read.h bpf_tracing.h bpf_endian.h; do
	install -m 0644 "$tmp/root/usr/include/bpf/$h" "$here/$h"
done
# They include each other as <bpf/...>, from libbpf-dev's place in
# /usr/include; here they sit side by side.
sed -i 's|#include <bpf/\(.*\)>|#include "\1"|' "$here"/bpf_*.h

bpftool btf dump file "$BTF" format c >"$here/vmlinux_x86.h"
echo "headers refreshed: libbpf ${LIBBPF_DEB_VERSION}, vmlinux from ${BTF}"
