/*
 * namedthreads: a service that names its threads, as a JVM does, and leaks
 * one pool of them while its other threads stay steady.
 *
 *	namedthreads [--cgroup DIR] [--leak-after S] [--leak-rate N]
 *	             [--leak-max N] [--exit-after S]
 *
 * At start it creates, and names with pthread_setname_np:
 *
 *	4 "GC Thread#0".."GC Thread#3"
 *	2 "C2 CompilerThread0", "C2 CompilerThread1"
 *	3 "grpc-default-executor-0".."-2"
 *
 * and 5 threads it never names (they keep the process's name), and the
 * pool's first thread, "pool-3-thread-999" (POOL_FIRST once cut), which
 * starts the leak. The kernel
 * keeps 15 bytes of a name and pthread_setname_np refuses a longer one
 * with ERANGE, so a longer name is cut to 15 bytes first, as the JVM does
 * (C2 CompilerThre, grpc-default-ex).
 *
 * After --leak-after seconds (default 3) it starts threads named
 * pool-3-thread-1000, pool-3-thread-1001, … (pool-3-thread-1 once cut) at
 * --leak-rate a second (default 40), up to --leak-max (default 2000), and
 * never ends them. With --exit-after S it exits (code 0) S seconds after
 * its start, every thread with it; else it runs until killed.
 *
 * It prints on stdout one JSON line when its steady threads run,
 *
 *	{"pid":P,"steady":9,"unnamed":5}
 *
 * and {"leaking":true} when the leak begins. --cgroup DIR moves it into
 * the cgroup DIR first. Exit code 2 on bad usage, 1 when its setup fails.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SETUP_FAILURE_EXIT 1
#include "common.h"

static pthread_attr_t attr;

static void *hold(void *arg)
{
	(void)arg;
	for (;;)
		pause();
	return NULL;
}

/* Starts a thread that holds forever, named name (cut to the 15 bytes the
 * kernel keeps) unless name is NULL. */
static void start(const char *name)
{
	char cut[16];
	pthread_t t;
	int err;

	err = pthread_create(&t, &attr, hold, NULL);
	if (err) {
		errno = err;
		die("pthread_create");
	}
	if (!name)
		return;
	snprintf(cut, sizeof cut, "%s", name);
	err = pthread_setname_np(t, cut);
	if (err) {
		errno = err;
		die("pthread_setname_np");
	}
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_until(double t)
{
	struct timespec ts;
	double d = t - now();

	if (d <= 0)
		return;
	ts.tv_sec = (time_t)d;
	ts.tv_nsec = (long)((d - ts.tv_sec) * 1e9);
	nanosleep(&ts, NULL);
}

/* The leak runs in a thread of the pool, which starts the pool's threads:
 * a new thread is named after the one that starts it until it is renamed,
 * so none is ever seen under the process's name. */
#define POOL_FIRST "pool-3-thread-9"
static double t0, leak_after = 3, exit_after = -1;
static int leak_rate = 40, leak_max = 2000;

static void *leak(void *arg)
{
	double next = t0 + leak_after;
	int leaked = 0;
	char name[64];

	(void)arg;
	pthread_setname_np(pthread_self(), POOL_FIRST);
	for (;;) {
		double end = exit_after >= 0 ? t0 + exit_after : 0;

		if (leaked >= leak_max)
			next = end ? end : now() + 3600;
		if (end && next >= end) {
			sleep_until(end);
			exit(0);
		}
		sleep_until(next);
		if (leaked >= leak_max)
			continue;
		if (leaked == 0) {
			printf("{\"leaking\":true}\n");
			fflush(stdout);
		}
		snprintf(name, sizeof name, "pool-3-thread-%d", 1000 + leaked);
		start(name);
		leaked++;
		next += 1.0 / leak_rate;
	}
	return NULL;
}

static void usage(void)
{
	fprintf(stderr, "usage: namedthreads [--cgroup DIR] [--leak-after S] [--leak-rate N] [--leak-max N] [--exit-after S]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *cgroup = NULL;
	char name[64];
	pthread_t t;
	int i, err;

	for (i = 1; i < argc; i++) {
		if (i + 1 >= argc)
			usage();
		if (!strcmp(argv[i], "--cgroup"))
			cgroup = argv[++i];
		else if (!strcmp(argv[i], "--leak-after"))
			leak_after = atof(argv[++i]);
		else if (!strcmp(argv[i], "--leak-rate"))
			leak_rate = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--leak-max"))
			leak_max = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--exit-after"))
			exit_after = atof(argv[++i]);
		else
			usage();
	}
	if (leak_rate <= 0 || leak_max < 0)
		usage();

	t0 = now();
	if (cgroup)
		join_cgroup(cgroup);
	if (small_stack_attr(&attr))
		die("pthread_attr");

	for (i = 0; i < 4; i++) {
		snprintf(name, sizeof name, "GC Thread#%d", i);
		start(name);
	}
	for (i = 0; i < 2; i++) {
		snprintf(name, sizeof name, "C2 CompilerThread%d", i);
		start(name);
	}
	for (i = 0; i < 3; i++) {
		snprintf(name, sizeof name, "grpc-default-executor-%d", i);
		start(name);
	}
	for (i = 0; i < 5; i++)
		start(NULL);
	/* The pool's first thread, which starts the others. */
	err = pthread_create(&t, &attr, leak, NULL);
	if (err) {
		errno = err;
		die("pthread_create");
	}
	err = pthread_setname_np(t, POOL_FIRST);
	if (err) {
		errno = err;
		die("pthread_setname_np");
	}
	printf("{\"pid\":%d,\"steady\":9,\"unnamed\":5}\n", getpid());
	fflush(stdout);
	hold(NULL);
}
