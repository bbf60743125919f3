#!/usr/bin/env bash
# smoke.sh: shows that test/vm works. Builds test/vm/smoke statically (the
# program and its `go test -c` binary) and runs both across the kernel matrix.
#
#   test/vm/smoke.sh              every kernel x cgroup layout (matrix.sh)
#   test/vm/smoke.sh 6.1 hybrid   one cell (run.sh)
#   test/vm/smoke.sh arm64:6.1    one arm64 cell: the binaries built for arm64
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
go=${GO:-go}
command -v "$go" >/dev/null || go=/usr/local/go/bin/go

arch=amd64
if [[ ${1:-} == arm64:* ]]; then arch=arm64; fi
bin=$(mktemp -d "${TMPDIR:-/tmp}/forkwatch-smoke.XXXXXX")
trap 'rm -rf "$bin"' EXIT
(
	cd "$here/smoke"
	CGO_ENABLED=0 GOARCH=$arch "$go" build -trimpath -o "$bin/smoke" .
	CGO_ENABLED=0 GOARCH=$arch "$go" test -c -trimpath -o "$bin/smoke.test" .
)
files=(--file "$bin/smoke:/bin/smoke" --file "$bin/smoke.test:/bin/smoke.test")
cmd=(/bin/sh -c '/bin/smoke && exec /bin/smoke.test -test.v')

if (($#)); then
	"$here/run.sh" --kernel "$1" --cgroup "${2:-v2}" "${files[@]}" -- "${cmd[@]}"
else
	"$here/matrix.sh" "${files[@]}" -- "${cmd[@]}"
fi
