/* What forker.c and threads.c share. Each defines SETUP_FAILURE_EXIT, the
 * exit code of a failed setup, before including this. */
#ifndef FORKWATCH_TEST_GLIBC_COMMON_H
#define FORKWATCH_TEST_GLIBC_COMMON_H

#include <errno.h>
#include <fcntl.h>
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

#endif
