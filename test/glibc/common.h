/* What forker.c, threads.c and namedthreads.c share. Each defines
 * SETUP_FAILURE_EXIT, the exit code of a failed setup, before including
 * this. */
#ifndef FORKWATCH_TEST_GLIBC_COMMON_H
#define FORKWATCH_TEST_GLIBC_COMMON_H

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void die(const char *what)
{
	fprintf(stderr, "%s: %s: %s\n", program_invocation_short_name, what, strerror(errno));
	exit(SETUP_FAILURE_EXIT);
}

/* Moves the process into the cgroup dir: its PID into dir/cgroup.procs. */
static void join_cgroup(const char *dir)
{
	char path[4096], pid[32];
	int fd, n;

	snprintf(path, sizeof path, "%s/cgroup.procs", dir);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		die(path);
	n = snprintf(pid, sizeof pid, "%d", getpid());
	if (write(fd, pid, n) != n)
		die(path);
	close(fd);
}

/* Threads with small stacks, so that many fit a small VM: 64 KiB, or
 * glibc's least where that is more (128 KiB on arm64, which allows 64 KiB
 * pages). Sets errno and returns -1 on failure. */
static inline int small_stack_attr(pthread_attr_t *attr)
{
	size_t size = 64 << 10;
	long min = sysconf(_SC_THREAD_STACK_MIN);

	if (min > 0 && (size_t)min > size)
		size = min;
	if ((errno = pthread_attr_init(attr)) || (errno = pthread_attr_setstacksize(attr, size)))
		return -1;
	return 0;
}

#endif
