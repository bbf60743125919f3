/*
 * forker: forks children that sleep until fork has failed N times, as a
 * shell script or a prefork server does at a full pids limit, and reports
 * on stdout, as one JSON line, what it saw; then gives up: kills its
 * children and exits 1, a service dying after its forks failed.
 *
 *	forker [--cgroup DIR] N
 *
 * --cgroup DIR moves it into the cgroup DIR (its PID into DIR/cgroup.procs)
 * first. Each fork is glibc's fork(), which is a clone(2) (never clone3):
 * a pids limit refuses it with EAGAIN. It prints
 *
 *	{"pid":P,"children":C,"failures":N,"errnos":{"EAGAIN":N}}
 *
 * ("pid" as its own PID namespace sees it: 1 as a container's init) and
 * exits 1 once forks failed; 0 if it reached 4096 children without a
 * failure; 2 on bad usage.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#define SETUP_FAILURE_EXIT 2
#include "common.h"

#define MAX_CHILDREN 4096

static void usage(void)
{
	fprintf(stderr, "usage: forker [--cgroup DIR] N\n");
	exit(2);
}

int main(int argc, char **argv)
{
	static pid_t children[MAX_CHILDREN];
	static int errnos[4096];
	int i, n, count = 0, failures = 0, first = 1;
	const char *cgroup = NULL;
	pid_t parent = getpid();
	char *end;

	for (i = 1; i < argc - 1; i++) {
		if (!strcmp(argv[i], "--cgroup") && i + 2 < argc)
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

	while (failures < n && count < MAX_CHILDREN) {
		pid_t pid = fork();

		if (pid < 0) {
			failures++;
			errnos[errno < 4096 ? errno : 0]++;
			continue;
		}
		if (pid == 0) {
			/* Die with the parent, wherever it is. */
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			if (getppid() != parent)
				_exit(0);
			for (;;)
				pause();
		}
		children[count++] = pid;
	}

	printf("{\"pid\":%d,\"children\":%d,\"failures\":%d,\"errnos\":{", getpid(), count, failures);
	for (i = 0; i < 4096; i++) {
		if (errnos[i]) {
			const char *name = strerrorname_np(i);

			printf("%s\"%s\":%d", first ? "" : ",", name ? name : "unknown", errnos[i]);
			first = 0;
		}
	}
	printf("}}\n");
	fflush(stdout);

	for (i = 0; i < count; i++)
		kill(children[i], SIGKILL);
	for (i = 0; i < count; i++)
		while (waitpid(children[i], NULL, 0) < 0 && errno == EINTR)
			;
	return failures ? 1 : 0;
}
