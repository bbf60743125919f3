//go:build ignore

// forkwatch's kernel side.
//
// Failing fork/clone calls are caught at syscall exit, classified on the spot
// (which limit refused them: a pids cgroup, pid_max, RLIMIT_NPROC or
// threads-max) and sent to userspace through the ring buffer, one record per
// failure. Successful task creations and exits are only counted, per cgroup,
// in a per-CPU map: during a thread storm nothing is streamed, which is what
// keeps the tracer cheap.

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
 * that code. */
const volatile bool tail_enabled = false;

#define EAGAIN 11
#define ENOMEM 12
#define ERESTARTSYS 512
#define ERESTART_RESTARTBLOCK 516

/* kernel/pid.c: once the allocator's cursor has wrapped, new PIDs are taken
 * from [RESERVED_PIDS, pid_max) only. */
#define RESERVED_PIDS 300
/* include/linux/pid_namespace.h: the high bit of pid_allocated is the
 * PIDNS_ADDING flag, not a count. */
#define PIDNS_ADDING (1U << 31)
/* PID namespaces nest at most MAX_PID_NS_LEVEL (32) deep; real nodes use 1
 * or 2 (host, and a container's own). Walking 8 keeps the program small. */
#define MAX_PIDNS_WALK 8
#define RLIMIT_NPROC 6
#define CAP_SYS_ADMIN 21
#define CAP_SYS_RESOURCE 24

/* Successful creations and exits per cgroup. A node has a few hundred to a
 * few thousand cgroups (pods × containers + system units); LRU eviction keeps
 * the map bounded when cgroups churn. */
#define MAX_COUNTED_CGROUPS 16384

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20); /* resized by userspace before load */
} events SEC(".maps");

/* Ring-buffer reservations that failed: the records userspace never saw. */
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

/* Node-wide limits the kernel keeps in variables BPF cannot read (pid_max
 * before 6.14, threads-max): userspace refreshes them every second. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct node_limits);
} node_limits_now SEC(".maps");

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

static __always_inline u64 cgroup_id(struct cgroup *cg)
{
	struct kernfs_node *kn = BPF_CORE_READ(cg, kn);

	if (bpf_core_type_exists(union kernfs_node_id___pre55)) {
		struct kernfs_node___pre55 *old = (void *)kn;
		return BPF_CORE_READ(old, id.ino);
	}
	return BPF_CORE_READ(kn, id);
}

static __always_inline struct cgroup *cgroup_parent(struct cgroup *cg)
{
	struct cgroup_subsys_state *parent = BPF_CORE_READ(cg, self.parent);

	return parent ? BPF_CORE_READ(parent, cgroup) : NULL;
}

/* The task's css in the pids controller, or NULL on kernels built without it. */
static __always_inline struct cgroup_subsys_state *task_pids_css(struct task_struct *task)
{
	struct cgroup_subsys_state *css = NULL;
	struct css_set *cset;
	int id;

	if (!bpf_core_enum_value_exists(enum cgroup_subsys_id, pids_cgrp_id))
		return NULL;
	id = bpf_core_enum_value(enum cgroup_subsys_id, pids_cgrp_id);
	cset = BPF_CORE_READ(task, cgroups);
	bpf_core_read(&css, sizeof(css), &cset->subsys[id]);
	return css;
}

/*
 * The cgroup forkwatch names a task by: its cgroup in the pids hierarchy.
 * With the pids controller on a v1 hierarchy (/sys/fs/cgroup/pids) that is the
 * pids css's cgroup. On cgroup v2 it is the task's own cgroup: the pids css
 * may belong to an ancestor when a subtree has not enabled the controller,
 * and the pod and container are named by the leaf.
 */
static __always_inline struct cgroup *task_cgroup(struct task_struct *task,
						  struct cgroup_subsys_state *pids_css)
{
	struct cgroup *dfl = BPF_CORE_READ(task, cgroups, dfl_cgrp);
	struct cgroup *pids_cg;

	if (!pids_css)
		return dfl;
	pids_cg = BPF_CORE_READ(pids_css, cgroup);
	if (BPF_CORE_READ(pids_cg, root) == BPF_CORE_READ(dfl, root))
		return dfl;
	return pids_cg;
}

/* Writes "/a/b/c" (the cgroup's path below its hierarchy root) into e. */
static __always_inline void fill_cgroup_path(struct event *e, struct cgroup *leaf)
{
	const char *names[MAX_CGROUP_DEPTH] = {};
	struct cgroup *cg = leaf;
	int depth = 0;
	u32 off = 0;

#pragma unroll
	for (int i = 0; i < MAX_CGROUP_DEPTH; i++) {
		struct cgroup *parent = cgroup_parent(cg);

		if (!parent)
			break;
		names[i] = BPF_CORE_READ(cg, kn, name);
		depth++;
		cg = parent;
	}
	if (depth == MAX_CGROUP_DEPTH && cgroup_parent(cg))
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
}

static __always_inline s64 pids_limit(struct pids_cgroup *pc)
{
	if (bpf_core_field_exists(((struct pids_cgroup___s64_limit *)0)->limit)) {
		struct pids_cgroup___s64_limit *old = (void *)pc;
		return BPF_CORE_READ(old, limit);
	}
	return BPF_CORE_READ(pc, limit.counter);
}

/*
 * kernel/cgroup/pids.c: pids_try_charge() adds one to every cgroup from the
 * task's up to (not including) the root and, if any goes above its limit,
 * reverts and fails the fork with EAGAIN. So after the failure the refusing
 * cgroup sits at counter >= limit. The first such cgroup from the leaf up is
 * the one dmesg's "fork rejected by pids controller in …" does *not* name when
 * it is an ancestor (dmesg names the task's own cgroup).
 */
static __always_inline bool find_pids_limit(struct event *e, struct cgroup_subsys_state *css)
{
#pragma unroll
	for (int i = 0; i < MAX_CGROUP_DEPTH; i++) {
		struct cgroup_subsys_state *parent;
		struct pids_cgroup *pc;
		s64 counter, limit;

		if (!css)
			return false;
		parent = BPF_CORE_READ(css, parent);
		if (!parent)
			return false; /* the root is never charged */
		pc = (struct pids_cgroup *)css; /* css is pids_cgroup's first member */
		counter = BPF_CORE_READ(pc, counter.counter);
		limit = pids_limit(pc);
		if (counter >= limit) {
			struct cgroup *cg = BPF_CORE_READ(css, cgroup);

			e->cause = CAUSE_PIDS_CGROUP;
			e->limit_id = cgroup_id(cg);
			e->limit_level = BPF_CORE_READ(cg, level);
			e->limit_current = counter;
			e->limit_max = limit;
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

/*
 * kernel/pid.c: alloc_pid() allocates a number in the child's PID namespace and
 * in every ancestor; any level without a free number fails the fork with
 * EAGAIN (ENOMEM on 3.10). A namespace is out of PIDs when all of
 * [1, pid_max) is taken, or, once the cursor has wrapped, all of
 * [RESERVED_PIDS, pid_max): so a full namespace has at least
 * pid_max - RESERVED_PIDS allocated. With exact=true only the first case.
 * Returns the init namespace's allocated count (every task has a PID there)
 * through init_allocated.
 */
static __always_inline bool find_pidns_limit(struct event *e, struct task_struct *task,
					     struct node_limits *nl, bool exact,
					     u32 *init_allocated)
{
	struct pid_namespace *ns = BPF_CORE_READ(task, nsproxy, pid_ns_for_children);

#pragma unroll
	for (int i = 0; i < MAX_PIDNS_WALK; i++) {
		s64 allocated, max, edge;

		if (!ns)
			break;
		allocated = BPF_CORE_READ(ns, pid_allocated) & ~PIDNS_ADDING;
		max = pidns_pid_max(ns, nl);
		edge = exact ? max - 1 : max - RESERVED_PIDS;
		if (edge < 1)
			edge = 1;
		if (init_allocated)
			*init_allocated = allocated;
		if (max > 0 && allocated >= edge) {
			e->cause = CAUSE_PID_MAX;
			e->limit_id = BPF_CORE_READ(ns, ns.inum);
			e->limit_current = allocated;
			e->limit_max = max;
			return true;
		}
		ns = BPF_CORE_READ(ns, parent);
	}
	return false;
}

/*
 * kernel/fork.c: copy_process() refuses with EAGAIN when the user owns at
 * least RLIMIT_NPROC tasks, unless the user is root or the caller has
 * CAP_SYS_RESOURCE or CAP_SYS_ADMIN.
 */
static __always_inline bool find_rlimit_nproc(struct event *e, struct task_struct *task)
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
	if ((u64)count < rlim)
		return false;
	e->cause = CAUSE_RLIMIT_NPROC;
	e->limit_id = uid;
	e->limit_current = count;
	e->limit_max = rlim;
	return true;
}

/*
 * Decide which limit refused the fork, in the order copy_process() checks
 * them where the evidence is exact (RLIMIT_NPROC, threads-max, a completely
 * full PID namespace, a pids cgroup at its limit), then a PID namespace full
 * after its cursor wrapped. Nothing at its edge: unknown, never a guess.
 */
static __always_inline void classify(struct event *e, struct task_struct *task, long ret)
{
	struct cgroup_subsys_state *css = task_pids_css(task);
	struct node_limits *nl;
	u32 zero = 0, init_allocated = 0;

	fill_cgroup_path(e, task_cgroup(task, css));
	if (ret != -EAGAIN && ret != -ENOMEM)
		return;

	nl = bpf_map_lookup_elem(&node_limits_now, &zero);
	if (find_rlimit_nproc(e, task))
		return;
	if (find_pidns_limit(e, task, nl, true, &init_allocated))
		return;
	/* nr_threads is not visible to BPF; every task holds a PID in the init
	 * namespace, so its allocated count is the node's task count. */
	if (nl && nl->threads_max > 0 && init_allocated >= nl->threads_max) {
		e->cause = CAUSE_THREADS_MAX;
		e->limit_current = init_allocated;
		e->limit_max = nl->threads_max;
		return;
	}
	if (find_pids_limit(e, css))
		return;
	if (find_pidns_limit(e, task, nl, false, NULL))
		return;
	if (ret == -ENOMEM)
		e->cause = CAUSE_NO_MEMORY;
}

static __always_inline void count_lost(void)
{
	u32 zero = 0;
	u64 *lost = bpf_map_lookup_elem(&events_lost, &zero);

	if (lost)
		(*lost)++;
}

/* A zeroed record of the given type about task, or NULL (counted as lost). */
static __always_inline struct event *new_event(u8 type, struct task_struct *task)
{
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

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

static __always_inline int on_fork_exit(long ret, u8 syscall)
{
	struct task_struct *task;
	struct event *e;

	if (ret >= 0)
		return 0;
	/* include/linux/errno.h: ERESTARTSYS..ERESTART_RESTARTBLOCK never reach
	 * userspace. A fork interrupted by a signal (Go's runtime preempts
	 * with SIGURG) exits with -ERESTARTNOINTR and the kernel runs it again
	 * once the handler returns: not a failure anyone sees. */
	if (ret >= -ERESTART_RESTARTBLOCK && ret <= -ERESTARTSYS)
		return 0;

	task = (struct task_struct *)bpf_get_current_task();
	remember_failure(bpf_get_current_pid_tgid() >> 32, bpf_ktime_get_ns(), syscall);
	e = new_event(EVENT_FORK_FAILED, task);
	if (!e)
		return 0;
	e->syscall = syscall;
	e->ret = ret;
	classify(e, task, ret);
	e->cgroup_id = cgroup_id(task_cgroup(task, task_pids_css(task)));
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_clone")
int tp_exit_clone(struct trace_event_raw_sys_exit *ctx)
{
	return on_fork_exit(ctx->ret, SYSCALL_CLONE);
}

SEC("tracepoint/syscalls/sys_exit_clone3")
int tp_exit_clone3(struct trace_event_raw_sys_exit *ctx)
{
	return on_fork_exit(ctx->ret, SYSCALL_CLONE3);
}

SEC("tracepoint/syscalls/sys_exit_fork")
int tp_exit_fork(struct trace_event_raw_sys_exit *ctx)
{
	return on_fork_exit(ctx->ret, SYSCALL_FORK);
}

SEC("tracepoint/syscalls/sys_exit_vfork")
int tp_exit_vfork(struct trace_event_raw_sys_exit *ctx)
{
	return on_fork_exit(ctx->ret, SYSCALL_VFORK);
}

static __always_inline struct task_counts *counts_for(u64 cgid)
{
	struct task_counts *c = bpf_map_lookup_elem(&counts_by_cgroup, &cgid);

	if (c)
		return c;
	struct task_counts zero = {};
	bpf_map_update_elem(&counts_by_cgroup, &cgid, &zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(&counts_by_cgroup, &cgid);
}

/* Whether cg or one of its ancestors is tailed. */
static __always_inline bool tailed(struct cgroup *cg)
{
#pragma unroll
	for (int i = 0; i < MAX_CGROUP_DEPTH; i++) {
		u64 id;

		if (!cg)
			return false;
		id = cgroup_id(cg);
		if (bpf_map_lookup_elem(&tailed_cgroups, &id))
			return true;
		cg = cgroup_parent(cg);
	}
	return false;
}

/* sched_process_fork fires in the parent once the child exists and has been
 * attached to its cgroup (also with CLONE_INTO_CGROUP): count it there. */
SEC("raw_tp/sched_process_fork")
int BPF_PROG(raw_tp_fork, struct task_struct *parent, struct task_struct *child)
{
	struct cgroup *cg = task_cgroup(child, task_pids_css(child));
	u64 cgid = cgroup_id(cg);
	struct task_counts *c = counts_for(cgid);
	bool thread = BPF_CORE_READ(child, pid) != BPF_CORE_READ(child, tgid);

	if (c) {
		if (thread)
			c->threads_created++;
		else
			c->processes_created++;
	}
	if (tail_enabled && tailed(cg)) {
		struct event *e = new_event(EVENT_TASK_CREATED, child);

		if (!e)
			return 0;
		e->kind = thread ? KIND_THREAD : KIND_PROCESS;
		e->parent_pid = BPF_CORE_READ(parent, tgid);
		e->cgroup_id = cgid;
		fill_cgroup_path(e, cg);
		bpf_ringbuf_submit(e, 0);
	}
	return 0;
}

/* sched_process_exit fires in the exiting task, still in its cgroup, after
 * it has left its thread group's live count: the thread group is gone
 * when that count is zero. A thread-group leader's exit counts as the
 * process's. */
SEC("raw_tp/sched_process_exit")
int BPF_PROG(raw_tp_exit, struct task_struct *task)
{
	struct cgroup *cg = task_cgroup(task, task_pids_css(task));
	u64 cgid = cgroup_id(cg);
	struct task_counts *c = counts_for(cgid);
	u32 tgid = BPF_CORE_READ(task, tgid);
	bool thread = BPF_CORE_READ(task, pid) != tgid;
	bool group_dead = BPF_CORE_READ(task, signal, live.counter) == 0;
	struct failed_proc *fp = NULL;
	struct event *e;

	if (c) {
		if (thread)
			c->threads_exited++;
		else
			c->processes_exited++;
	}
	if (group_dead)
		fp = bpf_map_lookup_elem(&failed_procs, &tgid);
	if (!fp && !(tail_enabled && tailed(cg)))
		return 0;

	e = new_event(EVENT_TASK_EXITED, task);
	if (!e)
		return 0;
	e->kind = group_dead || !thread ? KIND_PROCESS : KIND_THREAD;
	/* exit_group() records the group's status in the signal struct; a
	 * lone exit() in the task. */
	e->ret = BPF_CORE_READ(task, signal, group_exit_code);
	if (!e->ret)
		e->ret = BPF_CORE_READ(task, exit_code);
	if (fp) {
		e->failures = fp->failures;
		e->last_failure_ns = fp->last_failure_ns;
		e->syscall = fp->syscall;
		bpf_map_delete_elem(&failed_procs, &tgid);
	}
	e->cgroup_id = cgid;
	fill_cgroup_path(e, cg);
	bpf_ringbuf_submit(e, 0);
	return 0;
}
