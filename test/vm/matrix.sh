#!/usr/bin/env bash
# matrix.sh: runs one command in VMs across kernels x cgroup layouts.
#
#   matrix.sh [--timeout SEC] [--file SRC:DST]... -- COMMAND [ARG...]
#
# Arguments are those of run.sh (minus --kernel and --cgroup). Each cell is one
# run.sh; up to FORKWATCH_VM_JOBS (default 2) run at once. Prints a line per
# cell as it ends ("6.1 v2 PASS 4.1s"), then a summary with the output of every
# cell that did not pass. Exits 0 only if every cell passed.
#
# Environment:
#   FORKWATCH_VM_KERNELS  kernels (default "5.10 6.1 6.12 newest")
#   FORKWATCH_VM_CGROUPS  cgroup layouts (default "v2 hybrid")
#   FORKWATCH_VM_MODES    forkwatch modes, a third dimension (default "-": one
#                         cell per kernel x layout, no mode set). Each is
#                         auto|fentry|tracepoint|kprobe, with "+perf" for a perf
#                         event array instead of the ring buffer: the cell's
#                         command gets FORKWATCH_MODE (and FORKWATCH_RINGBUF=off).
#   FORKWATCH_VM_JOBS     VMs at once (default 2; each takes ~300 MiB and a core)
#   FORKWATCH_VM_LOGS     a folder to keep each cell's output in (<kernel>-<layout>[-<mode>].log)
#   FORKWATCH_VM_VERBOSE  if set, print every cell's output, not only the failed ones
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
read -ra kernels <<<"${FORKWATCH_VM_KERNELS:-5.10 6.1 6.12 newest}"
read -ra layouts <<<"${FORKWATCH_VM_CGROUPS:-v2 hybrid}"
read -ra modes <<<"${FORKWATCH_VM_MODES:--}"
jobs=${FORKWATCH_VM_JOBS:-2}

log() { printf 'matrix.sh: %s\n' "$*" >&2; }
usage() {
	sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
	exit 2
}

args=()
while (($#)); do
	case $1 in
	--) break ;;
	--timeout | --file) args+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
	--timeout=* | --file=*) args+=("$1"); shift ;;
	-h | --help) usage ;;
	*) log "unknown argument: $1"; usage ;;
	esac
done
[[ ${1:-} == -- && $# -gt 1 ]] || { log "no command given"; usage; }
((${#kernels[@]} && ${#layouts[@]} && ${#modes[@]})) || { log "no kernels, cgroup layouts or modes"; exit 2; }
for m in "${modes[@]}"; do
	[[ $m =~ ^(-|(auto|fentry|tracepoint|kprobe)(\+perf)?)$ ]] || { log "FORKWATCH_VM_MODES: unknown mode $m (auto, fentry, tracepoint, kprobe, each with +perf)"; exit 2; }
done
[[ $jobs =~ ^[1-9][0-9]*$ ]] || { log "FORKWATCH_VM_JOBS must be a positive number"; exit 2; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/forkwatch-matrix.XXXXXX")
logs=${FORKWATCH_VM_LOGS:-$tmp/logs}
mkdir -p "$logs"

# Every run.sh is stopped with SIGTERM (background jobs of a script ignore
# SIGINT), and its own trap stops its qemu.
stop_cells() {
	local f
	for f in "$tmp"/*.pid; do
		[[ -f $f ]] && kill -TERM "$(<"$f")" 2>/dev/null || true
	done
	wait || true
}
trap 'rm -rf "$tmp"' EXIT
trap 'log "interrupted"; stop_cells; exit 130' INT
trap 'stop_cells; exit 143' TERM
trap 'stop_cells; exit 129' HUP

# Fetch the kernels one by one first: cells then start at once from the cache.
releases=()
for k in "${kernels[@]}"; do
	if [[ $k == */* ]]; then
		releases+=("$k")
	else
		vmlinuz=$("$here/kernels.sh" fetch "$k") || { log "could not fetch kernel $k"; exit 1; }
		releases+=("$k=$(basename "$(dirname "$vmlinuz")")")
	fi
done
echo "kernels: ${releases[*]}"

# cellname KERNEL LAYOUT MODE: the cell's name, its log's and result's.
cellname() {
	local name
	name=$(basename -- "$1")-$2
	[[ $3 == - ]] || name+=-$3
	echo "$name"
}

# cell KERNEL LAYOUT MODE: one run.sh; writes its status and time, prints its line.
cell() {
	local k=$1 l=$2 m=$3 name start rc=0 secs result label
	local -a env=()
	name=$(cellname "$k" "$l" "$m")
	label="$k $l"
	if [[ $m != - ]]; then
		label+=" $m"
		env=(FORKWATCH_MODE="${m%+perf}")
		[[ $m == *+perf ]] && env+=(FORKWATCH_RINGBUF=off)
	fi
	start=$EPOCHREALTIME
	env ${env[@]+"${env[@]}"} "$here/run.sh" --kernel "$k" --cgroup "$l" "${args[@]}" "${cmd[@]}" >"$logs/$name.log" 2>&1 </dev/null &
	echo $! >"$tmp/$name.pid"
	wait $! || rc=$?
	rm -f "$tmp/$name.pid"
	secs=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.1f", b - a}')
	case $rc in
	0) result=PASS ;;
	125) result="ERROR (VM failed)" ;;
	129 | 130 | 143) result="STOPPED" ;;
	*) result="FAIL (exit $rc)" ;;
	esac
	printf '%s %s %ss\n' "$label" "$result" "$secs" | tee "$tmp/$name.result"
}

cmd=("$@") # starts with --
started=$EPOCHREALTIME
running=0
for k in "${kernels[@]}"; do
	for l in "${layouts[@]}"; do
		for m in "${modes[@]}"; do
			if ((running >= jobs)); then
				wait -n || true
				running=$((running - 1))
			fi
			cell "$k" "$l" "$m" &
			running=$((running + 1))
		done
	done
done
wait || true

passed=0 failed=0
failures=()
for k in "${kernels[@]}"; do
	for l in "${layouts[@]}"; do
		for m in "${modes[@]}"; do
			name=$(cellname "$k" "$l" "$m")
			if [[ -f $tmp/$name.result ]] && grep -q " PASS " "$tmp/$name.result"; then
				passed=$((passed + 1))
			else
				failed=$((failed + 1))
				failures+=("$name")
			fi
		done
	done
done
if [[ -n ${FORKWATCH_VM_VERBOSE:-} ]]; then
	shown=()
	for k in "${kernels[@]}"; do
		for l in "${layouts[@]}"; do
			for m in "${modes[@]}"; do shown+=("$(cellname "$k" "$l" "$m")"); done
		done
	done
else
	shown=(${failures[@]+"${failures[@]}"})
fi
for name in ${shown[@]+"${shown[@]}"}; do
	echo
	echo "=== $name: $(cat "$tmp/$name.result" 2>/dev/null || echo 'no result')"
	cat "$logs/$name.log" 2>/dev/null || true
done
echo
total=$(awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.1f", b - a}')
echo "${#kernels[@]} kernels x ${#layouts[@]} cgroup layouts x ${#modes[@]} modes in ${total}s${failures[*]:+; failed: ${failures[*]}}"
echo "matrix: $passed passed, $failed failed"
((failed == 0))
