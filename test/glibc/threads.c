/*
 * threads: creates N threads through glibc's pthread_create, all alive at
 * once, as a JVM or a thread pool starting up does, and reports on stdout,
 * as one JSON line, what it saw.
 *
 *	threads [--seccomp-clone3-enosys] [--cgroup DIR] N
 *
 * --cgroup DIR moves it into the cgroup DIR (its PID into DIR/cgroup.procs)
 * before anything else.
 *
 * --seccomp-clone3-enosys installs the filter Docker's and containerd's
 * default seccomp profiles have for clone3: the call fails with ENOSYS, as
 * if the kernel predated it. glibc 2.34+ creates threads with clone3 and
 * falls back to clone on ENOSYS, so every thread then costs a refused
 * clone3 and a clone.
 *
 * It calls clone3 once with no arguments first and reports the errno as
 * "clone3_errno": ENOSYS when a filter refused the call, EINVAL when the
 * kernel looked at the (empty) arguments. A thread pthread_create cannot
 * start (EAGAIN at a pids limit) is counted in "failures" and "errnos", not
 * fatal: it prints
 *
 *	{"pid":P,"threads":CREATED,"failures":K,"errnos":{"EAGAIN":K},"clone3_errno":"ENOSYS"}
 *
 * and exits 0 once every thread it started has been joined; 2 on bad usage,
 * 1 when its own setup fails.
 *
 * Built static (gcc -static -O2 -pthread), it runs where there is no libc:
 * in a scratch container image, in test/vm's busybox guest.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#define SETUP_FAILURE_EXIT 1
#include "common.h"

#ifndef __NR_clone3
#define __NR_clone3 435 /* the same number on x86-64 and arm64 */
#endif

#if defined(__x86_64__)
#define AUDIT_ARCH_NATIVE AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define AUDIT_ARCH_NATIVE AUDIT_ARCH_AARCH64
#else
#error "threads.c: seccomp filter written for x86-64 and arm64 only"
#endif

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int released;

/* What the runtimes' default profiles do for clone3: ENOSYS on the native
 * architecture, everything else allowed. */
static void seccomp_clone3_enosys(void)
{
	struct sock_filter filter[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_NATIVE, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone3, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA)),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = {
		.len = sizeof filter / sizeof filter[0],
		.filter = filter,
	};

	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
		die("PR_SET_NO_NEW_PRIVS");
	if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog))
		die("PR_SET_SECCOMP");
}

static const char *errno_name(int e)
{
	const char *n = strerrorname_np(e);

	return n ? n : "unknown";
}

static void *hold(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&mu);
	while (!released)
		pthread_cond_wait(&cv, &mu);
	pthread_mutex_unlock(&mu);
	return NULL;
}

static void usage(void)
{
	fprintf(stderr, "usage: threads [--seccomp-clone3-enosys] [--cgroup DIR] N\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *cgroup = NULL, *probe;
	int filter = 0, i, n, created = 0, failures = 0, first = 1;
	static int errnos[4096];
	pthread_t *tids;
	pthread_attr_t attr;
	char *end;
	long r;

	for (i = 1; i < argc - 1; i++) {
		if (!strcmp(argv[i], "--seccomp-clone3-enosys"))
			filter = 1;
		else if (!strcmp(argv[i], "--cgroup") && i + 2 < argc)
			cgroup = argv[++i];
		else
			usage();
	}
	if (i != argc - 1)
		usage();
	n = strtol(argv[i], &end, 10);
	if (*end || n < 0)
		usage();

	if (cgroup)
		join_cgroup(cgroup);
	if (filter)
		seccomp_clone3_enosys();

	r = syscall(__NR_clone3, NULL, 0);
	probe = r < 0 ? errno_name(errno) : "none";
	if (r == 0)
		_exit(0); /* cannot happen (no arguments), but never run on as a child */

	tids = calloc(n ? n : 1, sizeof *tids);
	if (!tids)
		die("calloc");
	if (small_stack_attr(&attr))
		die("pthread_attr");
	for (i = 0; i < n; i++) {
		int err = pthread_create(&tids[created], &attr, hold, NULL);

		if (err) {
			failures++;
			errnos[err < 4096 ? err : 0]++;
			continue;
		}
		created++;
	}

	pthread_mutex_lock(&mu);
	released = 1;
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&mu);
	for (i = 0; i < created; i++)
		pthread_join(tids[i], NULL);

	printf("{\"pid\":%d,\"threads\":%d,\"failures\":%d,\"errnos\":{", getpid(), created, failures);
	for (i = 0; i < 4096; i++) {
		if (errnos[i]) {
			printf("%s\"%s\":%d", first ? "" : ",", errno_name(i), errnos[i]);
			first = 0;
		}
	}
	printf("},\"clone3_errno\":\"%s\"}\n", probe);
	return fflush(stdout) ? 1 : 0;
}
