/* Types shared by forkwatch's BPF programs and, through bpf2go -type, its Go
 * code: defined here once, generated into tracer/forkwatch_x86_bpfel.go. */
#ifndef FORKWATCH_H
#define FORKWATCH_H

/* Cgroup paths carried in failure records. Kubernetes nests pods 3–5 levels
 * deep (kubepods[/qos]/pod/container, more under kind or docker-in-docker);
 * 16 levels and 512 bytes hold every layout seen in the wild, and the record
 * says when a path was cut. Names are at most NAME_MAX (255) bytes. */
#define MAX_CGROUP_DEPTH 16
#define CGROUP_PATH_MAX 512
#define CGROUP_NAME_MAX 256

enum event_type {
	EVENT_FORK_FAILED = 1,
	EVENT_TASK_CREATED = 2, /* --pod tail only */
	EVENT_TASK_EXITED = 3,  /* --pod tail, and processes whose forks failed */
	/* A task was created in (or moved into) reach of a limit: the failure
	 * hooks are to be attached (--failure-hooks=pressure). cause and the
	 * limit fields name the limit, as in fork_failed. */
	EVENT_PRESSURE = 4,
};

enum task_kind {
	KIND_THREAD = 1,
	KIND_PROCESS = 2,
};

enum fork_syscall {
	SYSCALL_CLONE = 1,
	SYSCALL_CLONE3 = 2,
	SYSCALL_FORK = 3,
	SYSCALL_VFORK = 4,
};

enum fail_cause {
	CAUSE_UNKNOWN = 0,
	CAUSE_PIDS_CGROUP = 1,
	CAUSE_PID_MAX = 2,
	CAUSE_RLIMIT_NPROC = 3,
	CAUSE_THREADS_MAX = 4,
	CAUSE_NO_MEMORY = 5,
	/* EPERM or EACCES: seccomp, an LSM or a missing capability said no.
	 * Not a limit: reported, never counted as a fork failure. */
	CAUSE_DENIED = 6,
};

enum event_flags {
	EVENT_PATH_TRUNCATED = 1,
	/* fork_failed, fentry mode: the fork was refused by the pids cgroup of
	 * the cgroup the child was to join (clone3 with CLONE_INTO_CGROUP),
	 * not the caller's: cgroup_id and cgroup_path name that cgroup. */
	EVENT_TARGET_CGROUP = 2,
};

/* One record type for everything the ring buffer carries; type says which
 * fields are meaningful. */
struct event {
	__u64 ktime_ns;       /* CLOCK_MONOTONIC */
	__u64 cgroup_id;      /* the task's cgroup: its directory's inode number */
	__u64 limit_id;       /* fork_failed, by cause: refusing cgroup's id, PID namespace inode, uid */
	__s64 limit_current;
	__s64 limit_max;
	__u64 last_failure_ns; /* task_exited: when this process's last fork failed, 0 if none seen */
	__u32 pid;            /* thread group id, what ps calls the PID */
	__u32 tid;
	__u32 parent_pid;     /* task_created: the creating process */
	__s32 ret;            /* fork_failed: -errno; task_exited: wait status (exit code << 8 | signal) */
	__u32 uid;
	__u32 failures;       /* task_exited: this process's failed forks */
	__u8 type;            /* enum event_type */
	__u8 syscall;         /* enum fork_syscall */
	__u8 cause;           /* enum fail_cause */
	__u8 limit_level;     /* pids_cgroup: depth of the refusing cgroup below the root */
	__u8 flags;           /* enum event_flags */
	__u8 kind;            /* enum task_kind, task_created/task_exited */
	__u16 cgroup_path_len;
	char comm[16];
	/* "/kubepods/burstable/pod…/…": the caller's cgroup, carried so that a
	 * pod removed right after the failure is still named. The refusing
	 * cgroup is its first limit_level components. */
	char cgroup_path[CGROUP_PATH_MAX + CGROUP_NAME_MAX];
};

struct task_counts {
	__u64 threads_created;
	__u64 processes_created;
	__u64 threads_exited;
	__u64 processes_exited;
};

/* A cgroup's counts on one CPU, not yet in counts_by_cgroup: serial (its
 * css's serial number) identifies it for the cache, cgroup_id for userspace. */
struct count_slot {
	__u64 serial;
	__u64 cgroup_id;
	struct task_counts c;
	__u64 checked; /* the cgroup's last pressure check on this CPU (ns) */
};

#define COUNT_SLOTS 256
struct count_cache {
	__u64 evictions;
	struct count_slot slot[COUNT_SLOTS];
};

/* A process whose forks failed: if it exits soon after, it is a victim. */
struct failed_proc {
	__u64 last_failure_ns;
	__u32 failures;
	__u8 syscall; /* of the last failure */
	__u8 _pad[3];
};

/* Settings of the programs that cannot read global variables: kprobe mode
 * runs on kernels without them (before 5.2, CentOS 7's 3.10). */
struct config {
	__u8 tail_enabled; /* as the tail_enabled global of the other programs */
	__u8 _pad[7];
};

struct node_limits {
	__s64 pid_max;     /* kernel.pid_max, for kernels before 6.14 */
	__s64 threads_max; /* kernel.threads-max */
};

#endif
