package tracer

//go:generate go tool bpf2go -tags linux -target amd64,arm64 -type event -type task_counts -type count_cache -type node_limits -type fail_cause -type fork_syscall -type event_type -type event_flags -type task_kind -type config forkwatch ../bpf/forkwatch.bpf.c -- -I../headers -I../bpf
