//go:build ignore

// forkwatch's kernel side.
//
// Failing fork/clone calls are caught where they fail, classified on the spot
// (which limit refused them: a pids cgroup, pid_max, RLIMIT_NPROC or
// threads-max) and sent to userspace, one record per failure. Successful task
// creations and exits are only counted, per cgroup, in a per-CPU map: during a
// thread storm nothing is streamed, which is what keeps the tracer cheap.
//
// Every attach mode is compiled into this one object; userspace deletes the
// programs the running kernel cannot take before loading (tracer/modes.go):
//
//   fentry      fexit on copy_process() (every failure, with its errno) and on
//               pids_can_fork() (the exact refusing cgroup); kernels with BPF
//               trampolines (5.5+ with BTF).
//   tracepoint  syscall-exit tracepoints of clone, clone3, fork and vfork
//               (arm64 has no fork or vfork syscall).
//   kprobe      kretprobes on the fork path and pids_can_fork(), a kprobe on
//               wake_up_new_task() and the sched_process_exit tracepoint: what
//               CentOS/RHEL 7's 3.10 kernels load. These programs read no
//               global variable and can write to a perf event array.
//
// Records go to the events map: a BPF ring buffer (5.8+) or, where there is
// none or userspace asks for it, a perf event array.

#include "vmlinux.h"
#include "bpf_helpers.h"
#include "bpf_core_read.h"
#include "bpf_tracing.h"

#include "forkwatch.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Referenced so that their BTF lands in the object and bpf2go -type can
 * generate them into Go. */
const struct event *unused_event __attribute__((unused));
const enum fail_cause *unused_fail_cause __attribute__((unused));
const enum fork_syscall *unused_fork_syscall __attribute__((unused));
const enum event_type *unused_event_type __attribute__((unused));
const enum event_flags *unused_event_flags __attribute__((unused));
const enum task_kind *unused_task_kind __attribute__((unused));

/* Set by userspace before load when a pod is tailed (--pod): creations and
 * exits in tailed_cgroups are then streamed too. Off, the verifier drops
 * that code. The kprobe-mode programs read config_now instead. */
const volatile bool tail_enabled = false;
/* Set by userspace when events is a perf event array rather than a ring
 * buffer; the verifier drops the other output's code. */
const volatile bool perf_output = false;
/* Where the pids controller lives, from /proc/cgroups: PIDS_V1 (its own v1
 * hierarchy: count there), PIDS_DFL (the default hierarchy), or 0 (unknown:
 * compare the roots per task). Spares the counters two loads per task. */
#define PIDS_V1 1
#define PIDS_DFL 2
const volatile __u8 pids_hierarchy = 0;
/* Where the pids controller counts its refusals (pids.events), set by
 * userspace from the kernel's BTF and the cgroup mount; the syscall-exit
 * programs use it to tell a pids refusal from other EAGAINs:
 *   PIDS_EVENTS_FORKING: in the forking task's cgroup, one per refusal
 *     (pids_cgroup.events_limit from 4.8, events_local[PIDCG_FORKFAIL]
 *     since 6.12; what pids.events shows on cgroup v1);
 *   PIDS_EVENTS_LIMIT: in the cgroup whose limit refused
 *     (events_local[PIDCG_MAX]; cgroup v2 since 6.12 unless mounted with
 *     pids_localevents; what pids.events.local shows);
 *   0: the kernel keeps no count. */
#define PIDS_EVENTS_FORKING 1
#define PIDS_EVENTS_LIMIT 2
const volatile __u8 pids_events = 0;

/* Arming the failure hooks by pressure (tracepoint mode, where the
 * syscall-exit programs tax every syscall on the node while attached).
 * Userspace sets pressure_watch when it attaches them only on demand; the
 * counters then check, for every task created or moved into a cgroup,
 * whether a limit that could refuse its next fork is within reach:
 * headroom below pressure_pct percent of the limit or pressure_min tasks,
 * whichever is larger. The first such task since userspace last cleared
 * pressure_sent is reported (EVENT_PRESSURE); pressure_last_ns says when a
 * limit was last within reach, for detaching after a calm period. */
volatile __u8 pressure_watch = 0;
volatile __u8 pressure_sent = 0;
volatile __u64 pressure_last_ns = 0;
const volatile __u32 pressure_pct = 10;
const volatile __u32 pressure_min = 64;

#define EPERM 1
#define EAGAIN 11
#define ENOMEM 12
#define EACCES 13
#define MAX_ERRNO 4095

/* kernel/pid.c: once the allocator's cursor has wrapped, new PIDs are taken
 * from [RESERVED_PIDS, pid_max) only. */
#define RESERVED_PIDS 300
/* include/linux/pid_namespace.h: the high bit of pid_allocated (nr_hashed
 * before 4.15) is the PIDNS_ADDING flag, not a count. */
#define PIDNS_ADDING (1U << 31)
/* PID namespaces nest at most MAX_PID_NS_LEVEL (32) deep; real nodes use 1
 * or 2 (host, and a container's own). Walking 8 keeps the program small. */
#define MAX_PIDNS_WALK 8
#define RLIMIT_NPROC 6
#define CAP_SYS_ADMIN 21
#define CAP_SYS_RESOURCE 24

#if defined(__TARGET_ARCH_x86)
/* arch/x86/include/asm/thread_info.h: set while a task runs a 32-bit syscall. */
#define TS_COMPAT 0x0002
/* arch/x86/include/uapi/asm/unistd.h: x32 syscalls carry this bit. */
#define X32_SYSCALL_BIT 0x40000000
#elif defined(__TARGET_ARCH_arm64)
/* arch/arm64/include/asm/thread_info.h: thread_info.flags bit of a 32-bit
 * (AArch32) task: 22 in 6.1 and 7.3 alike. */
#define TIF_32BIT 22
#endif
/* arch/x86/include/asm/page_64_types.h: 16 KiB kernel stacks since 3.15;
 * arm64's are 16 KiB with 4 KiB pages (arch/arm64/include/asm/memory.h;
 * 64 KiB pages make them 64 KiB). KASAN doubles them; distribution kernels
 * do not enable it. */
#define THREAD_SIZE (16 << 10)

/* include/linux/pid.h: pids.max "max" is PID_MAX_LIMIT + 1 (4M + 1 on
 * 64-bit); a limit below it was set by someone. */
#define PIDS_MAX ((4 << 20) + 1)

/* A pids-controller refusal older than this is not the one a failing fork
 * reports: copy_process() returns microseconds after cgroup_can_fork(). */
#define REFUSAL_MAX_AGE_NS 1000000000ULL

/* Successful creations and exits per cgroup. A node has a few hundred to a
 * few thousand cgroups (pods × containers + system units); LRU eviction keeps
 * the map bounded when cgroups churn. */
#define MAX_COUNTED_CGROUPS 16384

/* The output map: userspace turns it into a perf event array when the
 * kernel has no ring buffer (before 5.8) or when asked to. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20); /* resized by userspace before load */
} events SEC(".maps");

/* With a perf event array a record is built here before it is copied out:
 * it is larger than the 512-byte BPF stack. One per CPU; programs on one
 * CPU do not interrupt each other (fork and exit run in process context). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct event);
} event_scratch SEC(".maps");

/* Records the kernel could not hand over: ring-buffer reservations and perf
 * outputs that failed. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} events_lost SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, MAX_COUNTED_CGROUPS);
	__type(key, __u64); /* cgroup id, see task_cgroup() */
	__type(value, struct task_counts);
} counts_by_cgroup SEC(".maps");

/* In front of counts_by_cgroup, for the BTF-enabled counters: per CPU, a
 * direct-mapped cache of the cgroups tasks were created and exited in lately,
 * keyed by the css's serial number (unique for the boot). A hit is a few
 * loads from this CPU's memory where the hash costs a lookup; a slot taken by
 * another cgroup moves its counts into counts_by_cgroup and counts an
 * eviction, which userspace watches to read cache and hash consistently. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct count_cache);
} count_slots SEC(".maps");

/* Processes whose forks failed lately, by PID: when one exits, forkwatch
 * reports it as the crash the on-call is looking at. Bounded by LRU: a node
 * has at most a few thousand processes failing at once. */
#define MAX_FAILED_PROCS 8192
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_FAILED_PROCS);
	__type(key, __u32);
	__type(value, struct failed_proc);
} failed_procs SEC(".maps");

/* The cgroups being tailed (a pod's cgroup): a task is tailed when one of
 * its cgroup's ancestors is here, so containers started later are too. */
#define MAX_TAILED_CGROUPS 64
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_TAILED_CGROUPS);
	__type(key, __u64);
	__type(value, __u8);
} tailed_cgroups SEC(".maps");

/* Refusals the syscall-exit programs have claimed, per counting cgroup (see
 * pids_events): a failing fork that finds a refusal the kernel counted and
 * no failure claimed yet was refused by the pids controller, even when a
 * task of the cgroup exited in between and no cgroup is at its edge any
 * more. Userspace seeds the counts the kernel had before attaching; only
 * cgroups that ever refused a fork get an entry, so LRU eviction of a live
 * one would take thousands of refusing cgroups at once. */
#define MAX_REFUSING_CGROUPS 4096
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_REFUSING_CGROUPS);
	__type(key, __u64);   /* cgroup id */
	__type(value, __u64); /* refusals claimed */
} pids_refusals_claimed SEC(".maps");

/* Node-wide limits the kernel keeps in variables BPF cannot read (pid_max
 * before 6.14, threads-max): userspace refreshes them every second. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct node_limits);
} node_limits_now SEC(".maps");

/* What the kprobe-mode programs would read from global variables. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} config_now SEC(".maps");

/*
 * The pids controller refused a thread's fork: seen when pids_can_fork()
 * returns, consumed when the fork's failure is reported. In fentry mode the
 * refusing cgroup is found right there, from the css_set the child was to
 * join; a kretprobe sees only that it refused.
 */
struct pids_refusal {
	__u64 ktime_ns;
	__u64 limit_id;
	__s64 limit_current;
	__s64 limit_max;
	__u64 target_cgroup; /* CLONE_INTO_CGROUP: struct cgroup * the child was to join */
	__u8 limit_level;
	__u8 found;
	__u8 _pad[6];
};

/* By thread id. Entries live from pids_can_fork()'s return to copy_process()'s,
 * so a handful at once; LRU bounds what a lost consumer would leave. */
#define MAX_PIDS_REFUSALS 1024
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_PIDS_REFUSALS);
	__type(key, __u32);
	__type(value, struct pids_refusal);
} pids_refusals SEC(".maps");

/* How a program is built, a compile-time constant per program, so that each
 * holds the code of one output and one cgroup layout only: the kprobe-mode
 * programs must stay under the 4096 instructions of kernels before 5.2. */
enum variant {
	V_OUT_GLOBAL = 0, /* output as perf_output says (global variables: 5.2+) */
	V_OUT_RING = 1,
	V_OUT_PERF = 2,
	V_CGROUP_RH7 = 4, /* cgroups before kernfs: 3.10, CentOS/RHEL 7 */
	/* BTF-enabled program (tp_btf, 5.5+): the per-creation path reads
	 * kernel memory directly instead of through a helper call per field. */
	V_BTF = 8,
	/* Classifies at syscall exit, without sight of the pids charge
	 * (tracepoint mode): refusals are told apart by the kernel's counts. */
	V_SYSCALL_EXIT = 16,
};

/* Kernels before 6.2 kept pids_cgroup.limit as a plain int64_t; since then it
 * is an atomic64_t. CO-RE tells the two apart by the field's type. */
struct pids_cgroup___s64_limit {
	s64 limit;
} __attribute__((preserve_access_index));

/* 6.15 renamed kernfs_node.parent to __parent (it became RCU-protected). */
struct kernfs_node___pre615 {
	struct kernfs_node *parent;
} __attribute__((preserve_access_index));

/* Before 5.5 a kernfs node's id was a union of {ino, generation}; the cgroup
 * id userspace sees as the directory's inode number is .ino. */
union kernfs_node_id___pre55 {
	struct {
		u32 ino;
		u32 generation;
	};
	u64 id;
} __attribute__((preserve_access_index));
struct kernfs_node___pre55 {
	union kernfs_node_id___pre55 id;
} __attribute__((preserve_access_index));

/*
 * Before kernfs (3.14), and so on CentOS/RHEL 7's 3.10, a cgroup was a
 * directory of its own filesystem: it points to its parent, its name
 * (RCU-managed struct cgroup_name) and its dentry, whose inode number is what
 * userspace sees as the cgroup's id. A css had no parent pointer: the parent's
 * css is the parent cgroup's subsys[] entry. Controller ids were named
 * <name>_subsys_id (<name>_cgrp_id since 3.15).
 */
struct cgroup_name___rh7 {
	char name[1];
} __attribute__((preserve_access_index));
struct cgroup___rh7 {
	struct cgroup___rh7 *parent;
	struct dentry *dentry;
	struct cgroup_name___rh7 *name;
	struct cgroup_subsys_state *subsys[1];
} __attribute__((preserve_access_index));
enum cgroup_subsys_id___rh7 {
	pids_subsys_id___rh7 = 0,
};

/* 6.12 split the pids controller's one refusal count (events_limit, in the
 * forking cgroup) into events[] and events_local[] by enum pidcg_event. */
struct pids_cgroup___pre612 {
	atomic64_t events_limit;
} __attribute__((preserve_access_index));

/* 5.14 moved the per-user task count from user_struct.processes into
 * ucounts; 6.2 moved it again, from ucounts.ucount[] to ucounts.rlimit[]. */
enum ucount_type___pre62 {
	UCOUNT_RLIMIT_NPROC___pre62 = 0,
};
struct user_struct___pre514 {
	atomic_t processes;
} __attribute__((preserve_access_index));

/* 6.14 made pid_max per PID namespace; before, one global value. */
struct pid_namespace___pre614 {
	unsigned int pid_allocated;
} __attribute__((preserve_access_index));
/* 4.15 replaced the hashed-PID count nr_hashed by pid_allocated (same
 * PIDNS_ADDING flag); 3.19 moved the namespace's inode number into ns.inum. */
struct pid_namespace___pre415 {
	unsigned int nr_hashed;
	unsigned int proc_inum;
} __attribute__((preserve_access_index));
/* 3.14 renamed nsproxy.pid_ns to pid_ns_for_children. */
struct nsproxy___pre314 {
	struct pid_namespace *pid_ns;
} __attribute__((preserve_access_index));

/* 4.15 dropped thread_struct.sp0, the top of the task's kernel stack, where
 * its user registers (struct pt_regs) sit. */
struct thread_struct___sp0 {
	unsigned long sp0;
} __attribute__((preserve_access_index));
struct task_struct___sp0 {
	struct thread_struct___sp0 thread;
} __attribute__((preserve_access_index));

static __always_inline bool cgroup_is_rh7(int v)
{
	return v & V_CGROUP_RH7;
}

static __always_inline u64 cgroup_id(struct cgroup *cg, int v)
{
	struct kernfs_node *kn;

	if (!cg)
		return 0;
	if (cgroup_is_rh7(v)) {
		struct cgroup___rh7 *old = (void *)cg;
		return BPF_CORE_READ(old, dentry, d_inode, i_ino);
	}
	kn = BPF_CORE_READ(cg, kn);
	if (bpf_core_type_exists(union kernfs_node_id___pre55)) {
		struct kernfs_node___pre55 *old = (void *)kn;
		return BPF_CORE_READ(old, id.ino);
	}
	return BPF_CORE_READ(kn, id);
}

static __always_inline struct cgroup *cgroup_parent(struct cgroup *cg, int v)
{
	struct cgroup_subsys_state *parent;

	if (cgroup_is_rh7(v)) {
		struct cgroup___rh7 *old = (void *)cg;
		return (struct cgroup *)BPF_CORE_READ(old, parent);
	}
	parent = BPF_CORE_READ(cg, self.parent);
	return parent ? BPF_CORE_READ(parent, cgroup) : NULL;
}

static __always_inline const char *cgroup_name(struct cgroup *cg, int v)
{
	if (cgroup_is_rh7(v)) {
		struct cgroup___rh7 *old = (void *)cg;
		struct cgroup_name___rh7 *cn = BPF_CORE_READ(old, name);

		return cn ? cn->name : NULL; /* an address, not a read */
	}
	return BPF_CORE_READ(cg, kn, name);
}

/* The pids controller's index in css_set.subsys[] and cgroup.subsys[], or -1
 * on kernels built without it. */
static __always_inline int pids_subsys_id(void)
{
	if (bpf_core_enum_value_exists(enum cgroup_subsys_id, pids_cgrp_id))
		return bpf_core_enum_value(enum cgroup_subsys_id, pids_cgrp_id);
	if (bpf_core_enum_value_exists(enum cgroup_subsys_id___rh7, pids_subsys_id___rh7))
		return bpf_core_enum_value(enum cgroup_subsys_id___rh7, pids_subsys_id___rh7);
	return -1;
}

/* The css_set's css in the pids controller, or NULL. */
static __always_inline struct cgroup_subsys_state *cset_pids_css(struct css_set *cset)
{
	struct cgroup_subsys_state *css = NULL;
	int id = pids_subsys_id();

	if (id < 0 || !cset)
		return NULL;
	bpf_core_read(&css, sizeof(css), &cset->subsys[id & 63]);
	return css;
}

/* The task's css in the pids controller, or NULL on kernels built without it. */
static __always_inline struct cgroup_subsys_state *task_pids_css(struct task_struct *task)
{
	return cset_pids_css(BPF_CORE_READ(task, cgroups));
}

static __always_inline struct cgroup_subsys_state *css_parent(struct cgroup_subsys_state *css, int v)
{
	struct cgroup_subsys_state *parent = NULL;
	struct cgroup___rh7 *cg;
	int id;

	if (!cgroup_is_rh7(v))
		return BPF_CORE_READ(css, parent);
	id = pids_subsys_id();
	cg = (void *)BPF_CORE_READ(css, cgroup);
	cg = BPF_CORE_READ(cg, parent);
	if (!cg || id < 0)
		return NULL;
	bpf_core_read(&parent, sizeof(parent), &cg->subsys[id & 63]);
	return parent;
}

/*
 * The cgroup forkwatch names a task (or a css_set) by: its cgroup in the pids
 * hierarchy. With the pids controller on a v1 hierarchy
 * (/sys/fs/cgroup/pids) that is the pids css's cgroup. On cgroup v2 it is the
 * task's own cgroup: the pids css may belong to an ancestor when a subtree
 * has not enabled the controller, and the pod and container are named by the
 * leaf. Kernels before 4.5 (and 3.10) have no v2 hierarchy.
 */
static __always_inline struct cgroup *cset_cgroup(struct css_set *cset,
						  struct cgroup_subsys_state *pids_css)
{
	struct cgroup *dfl = NULL, *pids_cg;

	if (bpf_core_field_exists(cset->dfl_cgrp))
		dfl = BPF_CORE_READ(cset, dfl_cgrp);
	if (!pids_css)
		return dfl;
	pids_cg = BPF_CORE_READ(pids_css, cgroup);
	if (!dfl)
		return pids_cg;
	if (BPF_CORE_READ(pids_cg, root) == BPF_CORE_READ(dfl, root))
		return dfl;
	return pids_cg;
}

static __always_inline struct cgroup *task_cgroup(struct task_struct *task,
						  struct cgroup_subsys_state *pids_css)
{
	return cset_cgroup(BPF_CORE_READ(task, cgroups), pids_css);
}

/* Writes "/a/b/c" (the cgroup's path below its hierarchy root) into e and
 * returns its depth. */
static __always_inline int fill_cgroup_path(struct event *e, struct cgroup *leaf, int v)
{
	const char *names[MAX_CGROUP_DEPTH] = {};
	struct cgroup *cg = leaf;
	int depth = 0;
	u32 off = 0;

#pragma unroll
	for (int i = 0; i < MAX_CGROUP_DEPTH; i++) {
		struct cgroup *parent;

		if (!cg)
			break;
		parent = cgroup_parent(cg, v);
		if (!parent)
			break;
		names[i] = cgroup_name(cg, v);
		depth++;
		cg = parent;
	}
	if (depth == MAX_CGROUP_DEPTH && cgroup_parent(cg, v))
		e->flags |= EVENT_PATH_TRUNCATED;

#pragma unroll
	for (int i = MAX_CGROUP_DEPTH - 1; i >= 0; i--) {
		long n;
		u32 o;

		if (i >= depth)
			continue;
		if (off >= CGROUP_PATH_MAX) {
			e->flags |= EVENT_PATH_TRUNCATED;
			break;
		}
		/* The compiler knows off < CGROUP_PATH_MAX here and would drop
		 * the mask; the verifier needs it to bound the write. */
		o = off;
		barrier_var(o);
		o &= CGROUP_PATH_MAX - 1;
		e->cgroup_path[o] = '/';
		n = bpf_probe_read_kernel_str(&e->cgroup_path[o + 1], CGROUP_NAME_MAX, names[i]);
		if (n < 1)
			n = 1;
		off = o + n;
	}
	if (depth == 0) {
		e->cgroup_path[0] = '/';
		e->cgroup_path[1] = 0;
		off = 1;
	}
	e->cgroup_path_len = off;
	return depth;
}

/* Whether a limit of max with current in use is within reach (see
 * pressure_watch). */
static __always_inline bool near_limit(s64 current, s64 max)
{
	s64 slack;

	if (max <= 0)
		return false;
	slack = (s64)((u64)max / 100 * pressure_pct);
	if (slack < pressure_min)
		slack = pressure_min;
	return max - current < slack;
}

static __always_inline s64 pids_limit(struct pids_cgroup *pc)
{
	if (bpf_core_field_exists(((struct pids_cgroup___s64_limit *)0)->limit)) {
		struct pids_cgroup___s64_limit *old = (void *)pc;
		return BPF_CORE_READ(old, limit);
	}
	return BPF_CORE_READ(pc, limit.counter);
}

/* A cgroup at (or nearest to) its pids limit. */
struct pids_hit {
	u64 id;
	s64 current;
	s64 max;
	u8 level;
};

/* Fills hit with the pids cgroup css, found up levels above a leaf at depth
 * (for kernels whose cgroups do not know their level: 3.10). */
static __always_inline void set_pids_hit(struct pids_hit *hit, struct cgroup_subsys_state *css,
					 s64 counter, s64 limit, int up, int depth, int v)
{
	struct cgroup *cg = BPF_CORE_READ(css, cgroup);

	hit->id = cgroup_id(cg, v);
	if (bpf_core_field_exists(cg->level))
		hit->level = BPF_CORE_READ(cg, level);
	else
		hit->level = depth > up ? depth - up : 0;
	hit->current = counter;
	hit->max = limit;
}

/*
 * kernel/cgroup/pids.c: pids_try_charge() adds one to every cgroup from the
 * css's up to (not including) the root and, if any goes above its limit,
 * reverts and fails the fork with EAGAIN. So after the failure the refusing
 * cgroup sits at counter >= limit (counter + 1 > limit). The first such
 * cgroup from the leaf up is the one dmesg's "fork rejected by pids
 * controller in …" does *not* name when it is an ancestor (dmesg names the
 * task's own cgroup). depth is the leaf's depth, for kernels whose cgroups do
 * not know their level (3.10, where the pids css's cgroup is the leaf).
 *
 * nearest: the fork is known to be a pids refusal, but a task of the
 * refusing cgroup may have exited since and taken it off its edge: with no
 * cgroup at its edge, the one with the least headroom is named (the leaf-most
 * of equals, as pids_try_charge() checks from the leaf up).
 */
static __always_inline bool find_pids_limit(struct cgroup_subsys_state *css, int depth,
					    struct pids_hit *hit, bool nearest, int v)
{
	struct cgroup_subsys_state *at = NULL;
	s64 at_counter = 0, at_limit = 0, headroom = PIDS_MAX;
	int up = 0;

#pragma unroll
	for (int i = 0; i < MAX_CGROUP_DEPTH; i++) {
		struct cgroup_subsys_state *parent;
		struct pids_cgroup *pc;
		s64 counter, limit;

		if (!css)
			break;
		parent = css_parent(css, v);
		if (!parent)
			break; /* the root is never charged */
		pc = (struct pids_cgroup *)css; /* css is pids_cgroup's first member */
		counter = BPF_CORE_READ(pc, counter.counter);
		limit = pids_limit(pc);
		if (counter >= limit || (nearest && limit < PIDS_MAX && limit - counter < headroom)) {
			at = css;
			up = i;
			at_counter = counter;
			at_limit = limit;
			headroom = limit - counter;
			if (headroom <= 0)
				break;
		}
		css = parent;
	}
	if (!at)
		return false;
	set_pids_hit(hit, at, at_counter, at_limit, up, depth, v);
	return true;
}

/* The pids controller's count of refusals kept in this cgroup (see
 * pids_events), or 0 where the kernel keeps none. */
static __always_inline s64 pids_refusal_count(struct pids_cgroup *pc)
{
	s64 n = 0;

	if (bpf_core_field_exists(pc->events_local)) {
		if (pids_events == PIDS_EVENTS_LIMIT)
			bpf_core_read(&n, sizeof(n), &pc->events_local[PIDCG_MAX].counter);
		else
			bpf_core_read(&n, sizeof(n), &pc->events_local[PIDCG_FORKFAIL].counter);
	} else if (bpf_core_field_exists(((struct pids_cgroup___pre612 *)0)->events_limit)) {
		struct pids_cgroup___pre612 *old = (void *)pc;

		n = BPF_CORE_READ(old, events_limit.counter);
	}
	return n;
}

/* Claims one of the refusals the kernel counted in the cgroup with this id,
 * if it counted more than failures have claimed. The check and the add are
 * two steps: two failures racing for a cgroup's last unclaimed refusal can
 * both claim it (atomic fetch-and-add needs 5.12), which takes one off
 * a later failure's evidence; the add itself never loses a count. */
static __always_inline bool claim_refusal(u64 id, s64 counted)
{
	u64 *claimed = bpf_map_lookup_elem(&pids_refusals_claimed, &id);
	u64 one = 1;

	if (claimed) {
		if ((s64)*claimed >= counted)
			return false;
		__sync_fetch_and_add(claimed, 1);
		return true;
	}
	if (counted <= 0)
		return false;
	/* No entry: the cgroup had not refused a fork when forkwatch started. */
	if (bpf_map_update_elem(&pids_refusals_claimed, &id, &one, BPF_NOEXIST)) {
		claimed = bpf_map_lookup_elem(&pids_refusals_claimed, &id);
		if (claimed)
			__sync_fetch_and_add(claimed, 1);
	}
	return true;
}

/*
 * Tracepoint mode: whether the pids controller refused this fork, from its
 * own refusal counts, and the refusing cgroup in hit. Where the count is kept
 * in the cgroup whose limit refused (cgroup v2, 6.12+), that names it
 * exactly; where it is kept in the forking cgroup, the refusing cgroup is the
 * first at its edge from there up, or the nearest to it.
 */
static __always_inline bool claim_pids_refusal(struct cgroup_subsys_state *css, int depth,
					       struct pids_hit *hit, int v)
{
	if (pids_events == PIDS_EVENTS_FORKING) {
		struct cgroup *cg;

		if (!css || !css_parent(css, v))
			return false;
		cg = BPF_CORE_READ(css, cgroup);
		if (!claim_refusal(cgroup_id(cg, v), pids_refusal_count((struct pids_cgroup *)css)))
			return false;
		/* Some cgroup on the path refused, so one has a limit (unless
		 * it was lifted since): name the nearest. */
		return find_pids_limit(css, depth, hit, true, v);
	}
	if (pids_events != PIDS_EVENTS_LIMIT)
		return false;
#pragma unroll
	for (int i = 0; i < MAX_CGROUP_DEPTH; i++) {
		struct cgroup_subsys_state *parent;
		struct pids_cgroup *pc;
		struct cgroup *cg;

		if (!css)
			break;
		parent = css_parent(css, v);
		if (!parent)
			break;
		pc = (struct pids_cgroup *)css;
		cg = BPF_CORE_READ(css, cgroup);
		if (claim_refusal(cgroup_id(cg, v), pids_refusal_count(pc))) {
			set_pids_hit(hit, css, BPF_CORE_READ(pc, counter.counter), pids_limit(pc), i, depth, v);
			return true;
		}
		css = parent;
	}
	return false;
}

static __always_inline s64 pidns_pid_max(struct pid_namespace *ns, struct node_limits *nl)
{
	if (bpf_core_field_exists(ns->pid_max))
		return BPF_CORE_READ(ns, pid_max);
	return nl ? nl->pid_max : 0;
}

static __always_inline s64 pidns_allocated(struct pid_namespace *ns)
{
	if (bpf_core_field_exists(((struct pid_namespace___pre415 *)0)->nr_hashed)) {
		struct pid_namespace___pre415 *old = (void *)ns;
		return BPF_CORE_READ(old, nr_hashed) & ~PIDNS_ADDING;
	}
	return BPF_CORE_READ(ns, pid_allocated) & ~PIDNS_ADDING;
}

static __always_inline u64 pidns_inum(struct pid_namespace *ns)
{
	if (bpf_core_field_exists(((struct pid_namespace___pre415 *)0)->proc_inum)) {
		struct pid_namespace___pre415 *old = (void *)ns;
		return BPF_CORE_READ(old, proc_inum);
	}
	return BPF_CORE_READ(ns, ns.inum);
}

static __always_inline struct pid_namespace *task_child_pidns(struct task_struct *task)
{
	if (bpf_core_field_exists(((struct nsproxy___pre314 *)0)->pid_ns)) {
		struct nsproxy___pre314 *old = (void *)BPF_CORE_READ(task, nsproxy);
		return BPF_CORE_READ(old, pid_ns);
	}
	return BPF_CORE_READ(task, nsproxy, pid_ns_for_children);
}

/* A PID namespace out of PIDs. */
struct pidns_hit {
	struct pid_namespace *ns;
	s64 allocated;
	s64 max;
	bool found;
};

/*
 * kernel/pid.c: alloc_pid() allocates a number in the child's PID namespace and
 * in every ancestor; any level without a free number fails the fork with
 * EAGAIN (ENOMEM on 3.10). A namespace is out of PIDs when all of
 * [1, pid_max) is taken (exact), or, once the cursor has wrapped, all of
 * [RESERVED_PIDS, pid_max): so a full namespace has at least
 * pid_max - RESERVED_PIDS allocated (wrapped). One walk finds the first
 * namespace of each kind, and the init namespace's allocated count (every
 * task has a PID there): the node's task count.
 */
static __always_inline void find_pidns_limits(struct task_struct *task, struct node_limits *nl,
					      struct pidns_hit *exact, struct pidns_hit *wrapped,
					      u32 *init_allocated)
{
	struct pid_namespace *ns = task_child_pidns(task);

#pragma unroll
	for (int i = 0; i < MAX_PIDNS_WALK; i++) {
		s64 allocated, max;

		if (!ns)
			break;
		allocated = pidns_allocated(ns);
		max = pidns_pid_max(ns, nl);
		*init_allocated = allocated;
		if (max > 0 && !exact->found && allocated >= (max > 1 ? max - 1 : 1)) {
			exact->found = true;
			exact->ns = ns;
			exact->allocated = allocated;
			exact->max = max;
		}
		if (max > 0 && !wrapped->found && allocated >= (max > RESERVED_PIDS ? max - RESERVED_PIDS : 1)) {
			wrapped->found = true;
			wrapped->ns = ns;
			wrapped->allocated = allocated;
			wrapped->max = max;
		}
		ns = BPF_CORE_READ(ns, parent);
	}
}

static __always_inline void set_pidns_cause(struct event *e, struct pidns_hit *hit)
{
	e->cause = CAUSE_PID_MAX;
	e->limit_id = pidns_inum(hit->ns);
	e->limit_current = hit->allocated;
	e->limit_max = hit->max;
}

/*
 * kernel/fork.c: copy_process() refuses with EAGAIN when the user owns at
 * least RLIMIT_NPROC tasks, unless the user is root or the caller has
 * CAP_SYS_RESOURCE or CAP_SYS_ADMIN.
 */
static __always_inline bool find_rlimit_nproc(struct event *e, struct task_struct *task, bool near)
{
	const struct cred *cred = BPF_CORE_READ(task, real_cred);
	u64 caps = 0, rlim;
	s64 count = 0;
	u32 uid;

	uid = BPF_CORE_READ(cred, uid.val);
	/* kernel_cap_t was u32[2] before 6.3 and one u64 since: both start with
	 * capabilities 0..31 in the first 32 bits on little-endian. */
	bpf_core_read(&caps, sizeof(caps), &cred->cap_effective);
	if (uid == 0 || caps & ((1ULL << CAP_SYS_ADMIN) | (1ULL << CAP_SYS_RESOURCE)))
		return false;

	rlim = BPF_CORE_READ(task, signal, rlim[RLIMIT_NPROC].rlim_cur);
	if (bpf_core_field_exists(((struct ucounts *)0)->rlimit)) {
		struct ucounts *uc = BPF_CORE_READ(cred, ucounts);
		int idx = bpf_core_enum_value(enum rlimit_type, UCOUNT_RLIMIT_NPROC);

		bpf_core_read(&count, sizeof(count), &uc->rlimit[idx]);
	} else if (bpf_core_enum_value_exists(enum ucount_type___pre62, UCOUNT_RLIMIT_NPROC___pre62)) {
		struct ucounts *uc = BPF_CORE_READ(cred, ucounts);
		int idx = bpf_core_enum_value(enum ucount_type___pre62, UCOUNT_RLIMIT_NPROC___pre62);

		bpf_core_read(&count, sizeof(count), &uc->ucount[idx]);
	} else {
		struct user_struct___pre514 *user = (void *)BPF_CORE_READ(cred, user);

		count = BPF_CORE_READ(user, processes.counter);
	}
	if (near ? rlim >= PIDS_MAX || !near_limit(count, rlim) : (u64)count < rlim)
		return false;
	e->cause = CAUSE_RLIMIT_NPROC;
	e->limit_id = uid;
	e->limit_current = count;
	e->limit_max = rlim;
	return true;
}

static __always_inline void set_pids_cause(struct event *e, struct pids_hit *hit)
{
	e->cause = CAUSE_PIDS_CGROUP;
	e->limit_id = hit->id;
	e->limit_level = hit->level;
	e->limit_current = hit->current;
	e->limit_max = hit->max;
}

/*
 * Fill in the caller's cgroup and decide which limit refused the fork, in
 * the order copy_process() checks them where the evidence is exact
 * (RLIMIT_NPROC, threads-max, a completely full PID namespace, a pids cgroup
 * at its limit or a refusal the pids controller counted), then a PID
 * namespace full after its cursor wrapped. Nothing at its edge: unknown,
 * never a guess. EPERM and EACCES are a refusal by policy, not a limit.
 *
 * refusal, when the pids controller was seen refusing this fork (fentry and
 * kprobe modes): then the earlier checks had all passed (copy_process()
 * calls cgroup_can_fork() after them) and the cause is the pids cgroup.
 */
static __always_inline void classify(struct event *e, struct task_struct *task, long ret,
				     struct pids_refusal *refusal, int v)
{
	struct cgroup_subsys_state *css = task_pids_css(task);
	struct cgroup *cg = task_cgroup(task, css);
	struct pidns_hit exact = {}, wrapped = {};
	struct pids_hit hit = {};
	struct node_limits *nl = NULL;
	u32 zero = 0, init_allocated = 0;
	int depth;

	if (refusal && refusal->target_cgroup) {
		cg = (struct cgroup *)refusal->target_cgroup;
		e->flags |= EVENT_TARGET_CGROUP;
	}
	e->cgroup_id = cgroup_id(cg, v);
	depth = fill_cgroup_path(e, cg, v);
	if (ret == -EPERM || ret == -EACCES) {
		e->cause = CAUSE_DENIED;
		return;
	}

	if (refusal) {
		if (refusal->found) {
			hit.id = refusal->limit_id;
			hit.level = refusal->limit_level;
			hit.current = refusal->limit_current;
			hit.max = refusal->limit_max;
		} else if (!find_pids_limit(css, depth, &hit, true, v)) {
			/* kprobe mode: the pids controller refused, yet no cgroup
			 * on the caller's path has a limit: the child was to join
			 * another cgroup (clone3 with CLONE_INTO_CGROUP), which a
			 * kretprobe cannot see. Unknown rather than a guess. */
			return;
		}
		set_pids_cause(e, &hit);
		return;
	}
	nl = bpf_map_lookup_elem(&node_limits_now, &zero);
	if (find_rlimit_nproc(e, task, false))
		return;
	find_pidns_limits(task, nl, &exact, &wrapped, &init_allocated);
	if (exact.found) {
		set_pidns_cause(e, &exact);
		return;
	}
	/* nr_threads is not visible to BPF; every task holds a PID in the init
	 * namespace, so its allocated count is the node's task count. */
	if (nl && nl->threads_max > 0 && init_allocated >= nl->threads_max) {
		e->cause = CAUSE_THREADS_MAX;
		e->limit_current = init_allocated;
		e->limit_max = nl->threads_max;
		return;
	}
	if ((v & V_SYSCALL_EXIT) && ret == -EAGAIN && claim_pids_refusal(css, depth, &hit, v)) {
		set_pids_cause(e, &hit);
		return;
	}
	if (find_pids_limit(css, depth, &hit, false, v)) {
		set_pids_cause(e, &hit);
		return;
	}
	if (wrapped.found) {
		set_pidns_cause(e, &wrapped);
		return;
	}
	if (ret == -ENOMEM)
		e->cause = CAUSE_NO_MEMORY;
}

static __always_inline void count_lost(void)
{
	u32 zero = 0;
	u64 *lost = bpf_map_lookup_elem(&events_lost, &zero);

	if (lost)
		__sync_fetch_and_add(lost, 1);
}

static __always_inline bool use_ring(int v)
{
	if (v & V_OUT_RING)
		return true;
	if (v & V_OUT_PERF)
		return false;
	return !perf_output;
}

/* Whether creations and exits of tailed cgroups are streamed. */
static __always_inline bool tail_on(int v)
{
	u32 zero = 0;
	struct config *c;

	if (!(v & (V_OUT_RING | V_OUT_PERF)))
		return tail_enabled;
	c = bpf_map_lookup_elem(&config_now, &zero);
	return c && c->tail_enabled;
}

/* A zeroed record of the given type about task, or NULL (counted as lost). */
static __always_inline struct event *new_event(u8 type, struct task_struct *task, int v)
{
	struct event *e;
	u32 zero = 0;

	if (use_ring(v))
		e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	else
		e = bpf_map_lookup_elem(&event_scratch, &zero);
	if (!e) {
		count_lost();
		return NULL;
	}
	__builtin_memset(e, 0, offsetof(struct event, cgroup_path) + 2);
	e->ktime_ns = bpf_ktime_get_ns();
	e->type = type;
	e->pid = BPF_CORE_READ(task, tgid);
	e->tid = BPF_CORE_READ(task, pid);
	e->uid = BPF_CORE_READ(task, real_cred, uid.val);
	BPF_CORE_READ_STR_INTO(&e->comm, task, comm);
	return e;
}

static __always_inline void submit_event(void *ctx, struct event *e, int v)
{
	long err;

	if (use_ring(v)) {
		bpf_ringbuf_submit(e, 0);
		return;
	}
	err = bpf_perf_event_output(ctx, &events, BPF_F_CURRENT_CPU, e, sizeof(*e));
	/* Counted here, a full buffer (-ENOSPC) included: perf's own count of
	 * lost samples reaches userspace only with the next record written to
	 * that CPU's buffer, which may never come. */
	if (err)
		count_lost();
}

/* A thread storm creates tens of thousands of tasks a second in one
 * cgroup: checking each would cost it more than the counters do. A cgroup's
 * creations are checked on a CPU at the first (its counts' slot newly
 * taken), then every PRESSURE_EVERY-th, by the count the counters keep
 * anyway, and, with BTF, at the first PRESSURE_GAP_NS after its last check,
 * timed by the new task's start time (the clock the kernel read for it: a
 * clock read or a helper call of ours costs tens of ns under a
 * hypervisor). A storm pays a check every 16 creations; a shell starting a
 * task at a time is checked at each. The limits' slack is 64 tasks or
 * more, so a cgroup passes through it checked unless every CPU creating
 * tasks in it skips its checks at once. */
#define PRESSURE_EVERY 16
#define PRESSURE_GAP_NS 1000000

/* Whether the creation that made a cgroup's count on this CPU reach made
 * (0: not counted), at now (ns; 0: unknown), is to be checked; s is the
 * cgroup's slot, if any. */
static __always_inline bool pressure_due(struct count_slot *s, u64 made, u64 now)
{
	if ((made & (PRESSURE_EVERY - 1)) == 1 || !made)
		return true;
	if (!s || !now || now - s->checked < PRESSURE_GAP_NS)
		return false;
	s->checked = now;
	return true;
}

/* The first pids cgroup from css up whose limit is within reach. */
static __always_inline bool find_pids_pressure(struct cgroup_subsys_state *css, struct pids_hit *hit, int v)
{
#pragma unroll
	for (int i = 0; i < MAX_CGROUP_DEPTH; i++) {
		struct cgroup_subsys_state *parent;
		struct pids_cgroup *pc;
		s64 counter, limit;

		if (!css)
			break;
		parent = css_parent(css, v);
		if (!parent)
			break;
		pc = (struct pids_cgroup *)css;
		limit = pids_limit(pc);
		if (limit < PIDS_MAX) {
			counter = BPF_CORE_READ(pc, counter.counter);
			if (near_limit(counter, limit)) {
				set_pids_hit(hit, css, counter, limit, i, 0, v);
				return true;
			}
		}
		css = parent;
	}
	return false;
}

/*
 * task was just created or moved into a cgroup: if a limit that could
 * refuse its (or its cgroup's) next fork is within reach, note when, and
 * tell userspace once (see pressure_watch). Checked in the order
 * copy_process() applies them; the PID namespaces also give the node's task
 * count for threads-max, as in classify().
 */
static __always_inline void check_pressure(void *ctx, struct task_struct *task, int v)
{
	struct cgroup_subsys_state *css = task_pids_css(task);
	struct pid_namespace *ns = task_child_pidns(task);
	struct event probe = {}, *e;
	struct node_limits *nl;
	struct pids_hit hit = {};
	u32 zero = 0, init_allocated = 0;

	nl = bpf_map_lookup_elem(&node_limits_now, &zero);
	if (find_rlimit_nproc(&probe, task, true))
		goto near;
#pragma unroll
	for (int i = 0; i < MAX_PIDNS_WALK; i++) {
		s64 allocated, max;

		if (!ns)
			break;
		allocated = pidns_allocated(ns);
		max = pidns_pid_max(ns, nl);
		init_allocated = allocated;
		if (max > 0 && !probe.cause && near_limit(allocated, max)) {
			probe.cause = CAUSE_PID_MAX;
			probe.limit_id = pidns_inum(ns);
			probe.limit_current = allocated;
			probe.limit_max = max;
		}
		ns = BPF_CORE_READ(ns, parent);
	}
	if (probe.cause)
		goto near;
	if (nl && nl->threads_max > 0 && near_limit(init_allocated, nl->threads_max)) {
		probe.cause = CAUSE_THREADS_MAX;
		probe.limit_current = init_allocated;
		probe.limit_max = nl->threads_max;
		goto near;
	}
	if (!find_pids_pressure(css, &hit, v))
		return;
	probe.cause = CAUSE_PIDS_CGROUP;
	probe.limit_id = hit.id;
	probe.limit_level = hit.level;
	probe.limit_current = hit.current;
	probe.limit_max = hit.max;
near:
	pressure_last_ns = bpf_ktime_get_ns();
	/* Not atomic (compare-and-swap needs 5.12): two CPUs may both report;
	 * userspace attaches once. */
	if (pressure_sent)
		return;
	pressure_sent = 1;
	e = new_event(EVENT_PRESSURE, task, v);
	if (!e)
		return;
	e->cause = probe.cause;
	e->limit_id = probe.limit_id;
	e->limit_level = probe.limit_level;
	e->limit_current = probe.limit_current;
	e->limit_max = probe.limit_max;
	e->cgroup_id = cgroup_id(task_cgroup(task, css), v);
	fill_cgroup_path(e, task_cgroup(task, css), v);
	if (use_ring(v))
		bpf_ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
	else
		submit_event(ctx, e, v);
}

static __always_inline void remember_failure(u32 tgid, u64 now, u8 syscall)
{
	struct failed_proc *fp = bpf_map_lookup_elem(&failed_procs, &tgid);

	if (fp) {
		__sync_fetch_and_add(&fp->failures, 1);
		fp->last_failure_ns = now;
		fp->syscall = syscall;
		return;
	}
	struct failed_proc first = {.last_failure_ns = now, .failures = 1, .syscall = syscall};
	bpf_map_update_elem(&failed_procs, &tgid, &first, BPF_NOEXIST);
}

/* Takes the pids controller's refusal of the current thread's fork, if one
 * was seen (and is recent), out of pids_refusals into r. */
static __always_inline bool take_refusal(u32 tid, u64 now, struct pids_refusal *r)
{
	struct pids_refusal *seen = bpf_map_lookup_elem(&pids_refusals, &tid);

	if (!seen)
		return false;
	__builtin_memcpy(r, seen, sizeof(*r));
	bpf_map_delete_elem(&pids_refusals, &tid);
	return now - r->ktime_ns < REFUSAL_MAX_AGE_NS;
}

/* Reports the current thread's failed fork (ret < 0). */
static __always_inline int on_fork_failed(void *ctx, long ret, u8 syscall, int v)
{
	u64 id = bpf_get_current_pid_tgid(), now = bpf_ktime_get_ns();
	struct pids_refusal refusal;
	struct task_struct *task;
	struct event *e;
	bool refused;

	refused = take_refusal((u32)id, now, &refusal);
	/*
	 * What forkwatch reports (README, "What counts as a failure"): a fork
	 * refused for lack of PIDs, threads or memory (EAGAIN, ENOMEM), and one
	 * refused by policy (EPERM, EACCES: seccomp, an LSM, a missing
	 * capability), which kills a Go program as surely. Nothing else: a
	 * clone3 refused with ENOSYS is how container runtimes' default seccomp
	 * profiles make glibc fall back to clone, on every thread it starts;
	 * EINVAL and the rest are malformed or probing calls; and
	 * ERESTARTSYS..ERESTART_RESTARTBLOCK never reach userspace (a fork
	 * interrupted by a signal, as Go's runtime preempts with SIGURG, is run
	 * again once the handler returns).
	 */
	if (ret != -EAGAIN && ret != -ENOMEM && ret != -EPERM && ret != -EACCES)
		return 0;
	/* Not from a fork syscall: a kernel thread or io_uring creating a
	 * worker. Records name the syscall that failed; these have none. */
	if (!syscall)
		return 0;

	task = (struct task_struct *)bpf_get_current_task();
	remember_failure(id >> 32, now, syscall);
	e = new_event(EVENT_FORK_FAILED, task, v);
	if (!e)
		return 0;
	e->syscall = syscall;
	e->ret = ret;
	classify(e, task, ret, refused ? &refusal : NULL, v);
	submit_event(ctx, e, v);
	return 0;
}

/* --- tracepoint mode: syscall exits --------------------------------------- */

static __always_inline int on_fork_exit(void *ctx, long ret, u8 syscall)
{
	if (ret >= 0)
		return 0;
	return on_fork_failed(ctx, ret, syscall, V_OUT_GLOBAL | V_SYSCALL_EXIT);
}

SEC("tracepoint/syscalls/sys_exit_clone")
int fw_tp_clone(struct trace_event_raw_sys_exit *ctx)
{
	return on_fork_exit(ctx, ctx->ret, SYSCALL_CLONE);
}

SEC("tracepoint/syscalls/sys_exit_clone3")
int fw_tp_clone3(struct trace_event_raw_sys_exit *ctx)
{
	return on_fork_exit(ctx, ctx->ret, SYSCALL_CLONE3);
}

SEC("tracepoint/syscalls/sys_exit_fork")
int fw_tp_fork(struct trace_event_raw_sys_exit *ctx)
{
	return on_fork_exit(ctx, ctx->ret, SYSCALL_FORK);
}

SEC("tracepoint/syscalls/sys_exit_vfork")
int fw_tp_vfork(struct trace_event_raw_sys_exit *ctx)
{
	return on_fork_exit(ctx, ctx->ret, SYSCALL_VFORK);
}

/* --- fentry and kprobe modes: the fork path --------------------------------- */

/* The fork syscalls of 32-bit tasks: x86's ia32 table and arm64's AArch32
 * one number them alike. */
static __always_inline u8 compat_fork_syscall(long nr)
{
	switch (nr) {
	case 120:
		return SYSCALL_CLONE;
	case 2:
		return SYSCALL_FORK;
	case 190:
		return SYSCALL_VFORK;
	case 435:
		return SYSCALL_CLONE3;
	}
	return 0;
}

/*
 * The fork syscall the current task is in, from the syscall number its entry
 * saved in its user registers (pt_regs.orig_ax on x86, .syscallno on arm64,
 * at the top of its kernel stack), or 0 when it is in none: a kernel thread,
 * or io_uring starting a worker. The registers are found with
 * bpf_task_pt_regs() (5.15+), else below thread.sp0 (x86 before 4.15), else
 * at the top of the 16 KiB stack (4.15 to 5.14 have no FRED and so no
 * padding above pt_regs; arm64 never has any).
 */
static __always_inline u8 current_fork_syscall(struct task_struct *task)
{
	struct pt_regs *regs;
	bool compat = false;
	long nr;

	if (bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_task_pt_regs)) {
		regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	} else if (bpf_core_field_exists(((struct task_struct___sp0 *)0)->thread.sp0)) {
		struct task_struct___sp0 *old = (void *)task;

		regs = (struct pt_regs *)BPF_CORE_READ(old, thread.sp0) - 1;
	} else {
#if defined(__TARGET_ARCH_arm64)
		/* arm64's pt_regs grew over the years: its size is the kernel's. */
		regs = (struct pt_regs *)((u8 *)BPF_CORE_READ(task, stack) + THREAD_SIZE -
					  bpf_core_type_size(struct pt_regs));
#else
		regs = (struct pt_regs *)((u8 *)BPF_CORE_READ(task, stack) + THREAD_SIZE) - 1;
#endif
	}
	if (!regs)
		return 0;
#if defined(__TARGET_ARCH_arm64)
	/* arch/arm64/kernel/syscall.c: el0_svc saves the number (x8, or r7 of
	 * an AArch32 task) in pt_regs.syscallno. arm64 has no fork or vfork
	 * syscall: fork() is a clone; AArch32 tasks have all four. */
	nr = BPF_CORE_READ(regs, syscallno);
	compat = BPF_CORE_READ(task, thread_info.flags) & (1UL << TIF_32BIT);
	if (compat)
		return compat_fork_syscall(nr);
	switch (nr) {
	case 220:
		return SYSCALL_CLONE;
	case 435:
		return SYSCALL_CLONE3;
	}
	return 0;
#else
	nr = BPF_CORE_READ(regs, orig_ax);
	/* 32-bit tasks call fork through the ia32 table (thread_info lives in
	 * task_struct since 4.9; older kernels are taken for 64-bit only). */
	if (bpf_core_field_exists(task->thread_info) &&
	    bpf_core_field_exists(task->thread_info.status))
		compat = BPF_CORE_READ(task, thread_info.status) & TS_COMPAT;
	if (compat)
		return compat_fork_syscall(nr);
	switch (nr & ~X32_SYSCALL_BIT) {
	case 56:
		return SYSCALL_CLONE;
	case 57:
		return SYSCALL_FORK;
	case 58:
		return SYSCALL_VFORK;
	case 435:
		return SYSCALL_CLONE3;
	}
	return 0;
#endif
}

/* copy_process() returns the new task or an ERR_PTR: every fork's failure,
 * whoever asked for it, with its errno. Reading the return value as the
 * argument after the parameters (ctx[4]) works from 5.5; 5.17+ has
 * bpf_get_func_ret(), which does not depend on the parameter count. */
SEC("fexit/copy_process")
int fw_fexit_copy(u64 *ctx)
{
	struct task_struct *task;
	u64 ret;

	if (bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_get_func_ret)) {
		bpf_get_func_ret(ctx, &ret);
	} else {
		ret = ctx[4];
		if (ret < (u64)-MAX_ERRNO)
			return 0;
		/* Before 5.17 the verifier types ctx[4] as the task pointer
		 * copy_process() returns, and refuses arithmetic on it: read
		 * it again as the number it is. */
		bpf_probe_read_kernel(&ret, sizeof(ret), &ctx[4]);
	}
	if (ret < (u64)-MAX_ERRNO)
		return 0;
	task = (struct task_struct *)bpf_get_current_task();
	return on_fork_failed(ctx, (long)ret, current_fork_syscall(task), V_OUT_GLOBAL);
}

/* kernel_clone() (5.10+) returns pid_t, _do_fork() (4.2+) and do_fork()
 * (3.10) long: the low 32 bits hold the PID or -errno in each. */
static __always_inline int on_fork_path_return(struct pt_regs *ctx, int v)
{
	int ret = (int)PT_REGS_RC(ctx);
	struct task_struct *task;

	if (ret >= 0)
		return 0;
	task = (struct task_struct *)bpf_get_current_task();
	return on_fork_failed(ctx, ret, current_fork_syscall(task), v);
}

SEC("kretprobe")
int fw_kfork_ring(struct pt_regs *ctx)
{
	return on_fork_path_return(ctx, V_OUT_RING);
}

SEC("kretprobe")
int fw_kfork_perf(struct pt_regs *ctx)
{
	return on_fork_path_return(ctx, V_OUT_PERF);
}

SEC("kretprobe")
int fw_kfork_rh7(struct pt_regs *ctx)
{
	return on_fork_path_return(ctx, V_OUT_PERF | V_CGROUP_RH7);
}

/*
 * pids_can_fork(task, cset) (5.7+; the child and the css_set it is to join,
 * which differs from the caller's with CLONE_INTO_CGROUP) returns 0 or
 * -EAGAIN. On -EAGAIN the charge was reverted already: the refusing cgroup
 * is the first from cset's pids css up at counter >= limit, and it is found
 * now, before another task's exit can lower the counter.
 */
SEC("fexit/pids_can_fork")
int fw_fexit_pids(u64 *ctx)
{
	struct pids_refusal r = {};
	struct css_set *cset = (struct css_set *)ctx[1];
	struct cgroup_subsys_state *css;
	struct task_struct *cur;
	struct pids_hit hit = {};
	u32 tid = (u32)bpf_get_current_pid_tgid();
	u64 ret;

	if (bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_get_func_ret))
		bpf_get_func_ret(ctx, &ret);
	else
		ret = ctx[2];
	if ((int)ret != -EAGAIN)
		return 0;

	r.ktime_ns = bpf_ktime_get_ns();
	css = cset_pids_css(cset);
	if (find_pids_limit(css, 0, &hit, true, 0)) {
		r.found = 1;
		r.limit_id = hit.id;
		r.limit_level = hit.level;
		r.limit_current = hit.current;
		r.limit_max = hit.max;
	}
	cur = (struct task_struct *)bpf_get_current_task();
	if (cset != BPF_CORE_READ(cur, cgroups))
		r.target_cgroup = (u64)cset_cgroup(cset, css);
	bpf_map_update_elem(&pids_refusals, &tid, &r, BPF_ANY);
	return 0;
}

/* Kprobe mode: the refusal only; the refusing cgroup is found from the
 * caller's pids css when the failure is reported. */
SEC("kretprobe")
int fw_kret_pids(struct pt_regs *ctx)
{
	struct pids_refusal r = {};
	u32 tid = (u32)bpf_get_current_pid_tgid();

	if ((int)PT_REGS_RC(ctx) != -EAGAIN)
		return 0;
	r.ktime_ns = bpf_ktime_get_ns();
	bpf_map_update_elem(&pids_refusals, &tid, &r, BPF_ANY);
	return 0;
}

/* --- task creations and exits ------------------------------------------------ */

static __always_inline struct task_counts *counts_for(u64 cgid)
{
	struct task_counts *c = bpf_map_lookup_elem(&counts_by_cgroup, &cgid);

	if (c)
		return c;
	struct task_counts zero = {};
	bpf_map_update_elem(&counts_by_cgroup, &cgid, &zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(&counts_by_cgroup, &cgid);
}

/* A slot's counts join its cgroup's in counts_by_cgroup (this CPU's value). */
static __always_inline void flush_slot(struct count_cache *cc, struct count_slot *s)
{
	struct task_counts *c;

	if (!s->cgroup_id)
		return;
	c = counts_for(s->cgroup_id);
	if (c) {
		c->threads_created += s->c.threads_created;
		c->processes_created += s->c.processes_created;
		c->threads_exited += s->c.threads_exited;
		c->processes_exited += s->c.processes_exited;
	}
	cc->evictions++;
}

/* The counts of the cgroup whose css is css, from this CPU's slot cache. A
 * css's serial number is unique for the boot, so it names the cgroup without
 * a further load (and a freed css's reused memory is a different cgroup). A
 * hit costs nothing more; a miss moves the slot's previous cgroup into
 * counts_by_cgroup and reads the cgroup's id. */
static __always_inline struct task_counts *cached_counts(struct cgroup_subsys_state *css,
							 u64 *cgid, struct count_slot **slot)
{
	u64 serial = css->serial_nr;
	struct count_cache *cc;
	struct count_slot *s;
	u32 zero = 0;

	*slot = NULL;
	cc = bpf_map_lookup_elem(&count_slots, &zero);
	if (!cc) {
		*cgid = css->cgroup->kn->id;
		return counts_for(*cgid);
	}
	/* Fibonacci hashing: serial numbers are consecutive. */
	s = &cc->slot[((serial * 0x9E3779B97F4A7C15ULL) >> 56) & (COUNT_SLOTS - 1)];
	*slot = s;
	if (s->cgroup_id && s->serial == serial) {
		*cgid = s->cgroup_id;
		return &s->c;
	}
	flush_slot(cc, s);
	*cgid = css->cgroup->kn->id;
	s->serial = serial;
	s->cgroup_id = *cgid;
	s->c.threads_created = 0;
	s->c.processes_created = 0;
	s->c.threads_exited = 0;
	s->c.processes_exited = 0;
	return &s->c;
}

/* Whether cg or one of its ancestors is tailed. */
static __always_inline bool tailed(struct cgroup *cg, int v)
{
#pragma unroll
	for (int i = 0; i < MAX_CGROUP_DEPTH; i++) {
		u64 id;

		if (!cg)
			return false;
		id = cgroup_id(cg, v);
		if (bpf_map_lookup_elem(&tailed_cgroups, &id))
			return true;
		cg = cgroup_parent(cg, v);
	}
	return false;
}

/* The css that counts a task, by direct loads, for BTF-enabled programs
 * (5.5+: kernfs ids, a default hierarchy): its pids css where the pids
 * controller has a v1 hierarchy, else its default-hierarchy cgroup's. Every
 * creation and exit on the node runs this: a helper call per field, or a load
 * more than needed, would cost more than the rest. */
static __always_inline struct cgroup_subsys_state *task_css_btf(struct task_struct *task)
{
	struct css_set *cset = task->cgroups;
	struct cgroup *dfl = cset->dfl_cgrp;
	int ss = pids_subsys_id();
	struct cgroup_subsys_state *css;

	if (ss < 0 || pids_hierarchy == PIDS_DFL)
		return &dfl->self;
	css = cset->subsys[ss & 63];
	if (!css)
		return &dfl->self;
	if (pids_hierarchy == PIDS_V1 || css->cgroup->root != dfl->root)
		return css;
	return &dfl->self;
}

/* child exists and has been attached to its cgroup (also with
 * CLONE_INTO_CGROUP): count it there. */
static __always_inline int on_task_created(void *ctx, struct task_struct *parent,
					   struct task_struct *child, int v)
{
	struct cgroup_subsys_state *css = NULL;
	struct count_slot *slot = NULL;
	struct task_counts *c;
	struct cgroup *cg;
	bool thread;
	u64 cgid, made = 0;

	if (v & V_BTF) {
		css = task_css_btf(child);
		c = cached_counts(css, &cgid, &slot);
		thread = child->pid != child->tgid;
	} else {
		cg = task_cgroup(child, task_pids_css(child));
		cgid = cgroup_id(cg, v);
		thread = BPF_CORE_READ(child, pid) != BPF_CORE_READ(child, tgid);
		c = counts_for(cgid);
	}

	if (c) {
		if (thread)
			c->threads_created++;
		else
			c->processes_created++;
		made = c->threads_created + c->processes_created;
	}
	if (!(v & (V_OUT_RING | V_OUT_PERF)) && pressure_watch &&
	    pressure_due(slot, made, (v & V_BTF) ? child->start_time : 0))
		check_pressure(ctx, child, v);
	if (!tail_on(v))
		return 0;
	if (v & V_BTF)
		cg = css->cgroup;
	if (tailed(cg, v)) {
		struct event *e = new_event(EVENT_TASK_CREATED, child, v);

		if (!e)
			return 0;
		e->kind = thread ? KIND_THREAD : KIND_PROCESS;
		e->parent_pid = BPF_CORE_READ(parent, tgid);
		e->cgroup_id = cgid;
		fill_cgroup_path(e, cg, v);
		submit_event(ctx, e, v);
	}
	return 0;
}

/* How task ended, as wait(2) tells a parent: exit_group() records the
 * group's status in the signal struct, a lone exit() in the task. */
static __always_inline int exit_status(struct task_struct *task)
{
	int status = BPF_CORE_READ(task, signal, group_exit_code);

	return status ? status : BPF_CORE_READ(task, exit_code);
}

/* task is exiting, still in its cgroup, and has left its thread group's live
 * count: the thread group is gone when that count is zero. A thread-group
 * leader's exit counts as the process's.
 *
 * A process whose forks failed lately is reported when it ends, with how it
 * ended: by the exit of its last task, or, once exit_group() or a fatal
 * signal has ended the whole group (SIGNAL_GROUP_EXIT, its status already
 * set), by the first of its tasks whose exit is seen. A kernel whose tracing
 * programs can be preempted skips a run now and then (the recursion misses),
 * and a dying runtime's dozens of threads exit at once: any one of them
 * reporting it makes a victim lost only if every one of their runs is. The
 * first to take the process out of failed_procs reports it. */
#define SIGNAL_GROUP_EXIT 0x00000004 /* include/linux/sched/signal.h, since 2.6 */

static __always_inline int on_task_exit(void *ctx, struct task_struct *task, int v)
{
	struct cgroup_subsys_state *css = NULL;
	struct count_slot *slot;
	struct failed_proc *fp, victim = {};
	struct task_counts *c;
	bool thread, group_dead, group_exit, is_victim = false;
	struct cgroup *cg;
	struct event *e;
	int status = 0;
	u64 cgid;
	u32 tgid;

	if (v & V_BTF) {
		css = task_css_btf(task);
		c = cached_counts(css, &cgid, &slot);
		tgid = task->tgid;
		thread = task->pid != tgid;
		group_dead = task->signal->live.counter == 0;
		group_exit = task->signal->flags & SIGNAL_GROUP_EXIT;
	} else {
		cg = task_cgroup(task, task_pids_css(task));
		cgid = cgroup_id(cg, v);
		tgid = BPF_CORE_READ(task, tgid);
		thread = BPF_CORE_READ(task, pid) != tgid;
		group_dead = BPF_CORE_READ(task, signal, live.counter) == 0;
		group_exit = BPF_CORE_READ(task, signal, flags) & SIGNAL_GROUP_EXIT;
		c = counts_for(cgid);
	}

	if (c) {
		if (thread)
			c->threads_exited++;
		else
			c->processes_exited++;
	}
	if (group_dead || group_exit) {
		fp = bpf_map_lookup_elem(&failed_procs, &tgid);
		if (fp) {
			/* Read before the delete frees the entry for reuse. */
			victim = *fp;
			status = exit_status(task);
			/* A victim exits abnormally (a non-zero code or a fatal
			 * signal): a process that exits 0 after failed forks
			 * coped with them. */
			is_victim = bpf_map_delete_elem(&failed_procs, &tgid) == 0 && status;
		}
	}
	if (!is_victim && !tail_on(v))
		return 0;
	if (v & V_BTF)
		cg = css->cgroup;
	if (!is_victim && !tailed(cg, v))
		return 0;

	e = new_event(EVENT_TASK_EXITED, task, v);
	if (!e)
		return 0;
	e->kind = group_dead || !thread || is_victim ? KIND_PROCESS : KIND_THREAD;
	e->ret = is_victim ? status : exit_status(task);
	if (is_victim) {
		e->failures = victim.failures;
		e->last_failure_ns = victim.last_failure_ns;
		e->syscall = victim.syscall;
	}
	e->cgroup_id = cgid;
	fill_cgroup_path(e, cg, v);
	submit_event(ctx, e, v);
	return 0;
}

/* sched_process_fork fires in the parent once the child exists and has been
 * attached to its cgroup. */
SEC("raw_tp/sched_process_fork")
int BPF_PROG(fw_raw_fork, struct task_struct *parent, struct task_struct *child)
{
	return on_task_created(ctx, parent, child, V_OUT_GLOBAL);
}

/* sched_process_exit fires in the exiting task. */
SEC("raw_tp/sched_process_exit")
int BPF_PROG(fw_raw_exit, struct task_struct *task)
{
	return on_task_exit(ctx, task, V_OUT_GLOBAL);
}

/* The same as BTF-enabled tracepoints (5.5+), preferred where they load. */
/* Kernels whose tracing programs can be preempted (7.x) skip the run of a
 * second task hitting the same program on a CPU while the first is
 * preempted in it (counted as the program's recursion misses, shown as
 * missed runs), and a preempted counter update could interleave with
 * another program's on that CPU's slot cache. With preemption off from the
 * first instruction, the window shrinks to the kernel's few instructions
 * before the program. 6.10+ have the kfuncs; elsewhere the calls are dead
 * code. */
extern void bpf_preempt_disable(void) __weak __ksym;
extern void bpf_preempt_enable(void) __weak __ksym;

SEC("tp_btf/sched_process_fork")
int BPF_PROG(fw_btf_fork, struct task_struct *parent, struct task_struct *child)
{
	int ret;

	if (bpf_preempt_disable)
		bpf_preempt_disable();
	ret = on_task_created(ctx, parent, child, V_BTF);
	if (bpf_preempt_enable)
		bpf_preempt_enable();
	return ret;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(fw_btf_exit, struct task_struct *task)
{
	int ret;

	if (bpf_preempt_disable)
		bpf_preempt_disable();
	ret = on_task_exit(ctx, task, V_BTF);
	if (bpf_preempt_enable)
		bpf_preempt_enable();
	return ret;
}

/* A task moved into a cgroup (a container's first process, before it execs
 * its program): a limit within reach there arms the failure hooks before
 * that program's first fork. */
SEC("tp_btf/cgroup_attach_task")
int BPF_PROG(fw_btf_cgattach, struct cgroup *dst, const char *path, struct task_struct *task)
{
	if (pressure_watch)
		check_pressure(ctx, task, V_BTF);
	return 0;
}

SEC("raw_tp/cgroup_attach_task")
int BPF_PROG(fw_raw_cgattach, struct cgroup *dst, const char *path, struct task_struct *task)
{
	if (pressure_watch)
		check_pressure(ctx, task, V_OUT_GLOBAL);
	return 0;
}

/* Kprobe mode (no raw tracepoints before 4.17): wake_up_new_task(child) is
 * called by the parent for every new task, once it is in its cgroup, and
 * the classic sched_process_exit tracepoint runs in the exiting task. */
static __always_inline int on_wake_up_new_task(struct pt_regs *ctx, int v)
{
	struct task_struct *child = (struct task_struct *)PT_REGS_PARM1(ctx);

	return on_task_created(ctx, (struct task_struct *)bpf_get_current_task(), child, v);
}

SEC("kprobe")
int fw_kp_task_ring(struct pt_regs *ctx)
{
	return on_wake_up_new_task(ctx, V_OUT_RING);
}

SEC("kprobe")
int fw_kp_task_perf(struct pt_regs *ctx)
{
	return on_wake_up_new_task(ctx, V_OUT_PERF);
}

SEC("kprobe")
int fw_kp_task_rh7(struct pt_regs *ctx)
{
	return on_wake_up_new_task(ctx, V_OUT_PERF | V_CGROUP_RH7);
}

SEC("tracepoint/sched/sched_process_exit")
int fw_tp_exit_ring(void *ctx)
{
	return on_task_exit(ctx, (struct task_struct *)bpf_get_current_task(), V_OUT_RING);
}

SEC("tracepoint/sched/sched_process_exit")
int fw_tp_exit_perf(void *ctx)
{
	return on_task_exit(ctx, (struct task_struct *)bpf_get_current_task(), V_OUT_PERF);
}

SEC("tracepoint/sched/sched_process_exit")
int fw_tp_exit_rh7(void *ctx)
{
	return on_task_exit(ctx, (struct task_struct *)bpf_get_current_task(), V_OUT_PERF | V_CGROUP_RH7);
}

/* --- limits changed at run time ---------------------------------------------- */

/* Whether the sysctl's full name, as bpf_sysctl_get_name() writes it, is want. */
static __always_inline bool sysctl_is(const char *name, const char *want, int len)
{
	for (int i = 0; i < len; i++)
		if (name[i] != want[i])
			return false;
	return true;
}

/*
 * kernel.threads-max, and kernel.pid_max before 6.14, live in variables BPF
 * cannot read: userspace copies them into node_limits_now every second. An
 * operator lowering one during an incident would leave the copy stale for up
 * to that second, and the refusals in it misnamed. This program, attached to
 * the root of the cgroup v2 hierarchy (where every task is), sees each write
 * to them and updates the copy just before the kernel stores the value. A
 * write the kernel then rejects (out of range) is undone by the next refresh.
 */
SEC("cgroup/sysctl")
int fw_sysctl(struct bpf_sysctl *ctx)
{
	/* "kernel/threads-max" and "kernel/pid_max" with their NUL fit; a
	 * longer name does not (-E2BIG) and is not one of them. */
	char name[20] = {}, value[24] = {};
	struct node_limits *nl;
	unsigned long v = 0;
	u32 zero = 0;
	bool threads;

	if (!ctx->write)
		return 1;
	if (bpf_sysctl_get_name(ctx, name, sizeof(name), 0) < 0)
		return 1;
	threads = sysctl_is(name, "kernel/threads-max", sizeof("kernel/threads-max"));
	if (!threads && !sysctl_is(name, "kernel/pid_max", sizeof("kernel/pid_max")))
		return 1;
	if (bpf_sysctl_get_new_value(ctx, value, sizeof(value)) < 0)
		return 1;
	if (bpf_strtoul(value, sizeof(value), 0, &v) < 0)
		return 1;
	nl = bpf_map_lookup_elem(&node_limits_now, &zero);
	if (!nl)
		return 1;
	if (threads)
		nl->threads_max = v;
	else
		nl->pid_max = v;
	return 1; /* allowed: forkwatch only watches */
}
