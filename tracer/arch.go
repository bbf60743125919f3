package tracer

import (
	"runtime"
	"slices"
)

// forkSyscalls says whether the kernels forkwatch runs on have fork and
// vfork syscalls. x86-64's do; arm64's, like every architecture of the
// kernel's generic syscall table, have only clone and clone3 (fork() and
// vfork() are clones there), and so no syscalls/sys_exit_fork or
// sys_exit_vfork tracepoints. 32-bit ARM tasks on arm64 call all four
// through the compat table, which fires no syscall tracepoint; fentry and
// kprobe modes see their forks.
var forkSyscalls = runtime.GOARCH != "arm64"

// archSyscalls drops the syscall-exit hooks of the fork and vfork syscalls
// where the architecture has none.
func archSyscalls(hooks []hook) []hook {
	if forkSyscalls {
		return hooks
	}
	return slices.DeleteFunc(hooks, func(h hook) bool {
		return h.prog == forkwatchProgFwTpFork || h.prog == forkwatchProgFwTpVfork
	})
}
