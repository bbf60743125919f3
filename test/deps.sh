#!/usr/bin/env bash
# The packages forkwatch's test suite needs on a Debian 12 machine besides Go,
# in one place: `make test` runs this first, and installs what is missing
# (as root, from the machine's own apt sources); .ci/run only runs make test.
set -euo pipefail

packages=(
	clang-19 llvm-19        # make check-generate: the pinned BPF compiler
	bpftool                 # headers/update.sh
	make git
	prometheus              # the metrics tests scrape forkwatch with a real server; promtool checks the rules
	qemu-system-x86 busybox-static cpio  # test/vm: other kernels under qemu
	tmux                    # the live view tried as a person would
	stress-ng               # test/e2e: real clone and pthread stressors at a pod's pids.max
	docker.io               # test/e2e: a dockerd of the test's own, Docker's default seccomp profile
	gcc libc6-dev           # test/e2e: static glibc programs (pthread_create's clone3 -> clone fallback)
	qemu-system-arm         # test/vm: arm64 kernels under qemu-system-aarch64
	gcc-aarch64-linux-gnu libc6-dev-arm64-cross  # the static glibc programs for arm64 (the libc only recommended: named)
)

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
((${#missing[@]})) || exit 0
if ((EUID != 0)); then
	echo "test/deps.sh: the test suite needs ${missing[*]}; run make test as root (it installs them) or: sudo apt-get install --no-install-recommends ${missing[*]}" >&2
	exit 1
fi
echo "test/deps.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
