/* bench/syscalls.c: system-call-heavy loops, to measure the preload's overhead.
 *   syscalls getpid|openclose|forkwait N   → prints nanoseconds per operation
 * getpid and open/close count the thread's CPU time (user + kernel), so that other
 * processes on a shared machine do not count; fork/wait counts wall time (it waits). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int cpu_clock = 1;
static double now(void) {
    struct timespec ts;
    clock_gettime(cpu_clock ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    long n = atol(argv[2]);
    volatile long sink = 0;
    cpu_clock = strcmp(argv[1], "forkwait") != 0;
    double t0 = now();
    if (!strcmp(argv[1], "getpid")) {
        for (long i = 0; i < n; i++) sink += getpid();
    } else if (!strcmp(argv[1], "openclose")) {
        for (long i = 0; i < n; i++) {
            int fd = open("/dev/null", O_RDONLY);
            sink += fd;
            close(fd);
        }
    } else if (!strcmp(argv[1], "forkwait")) {
        for (long i = 0; i < n; i++) {
            pid_t p = fork();
            if (p == 0) _exit(0);
            int st;
            waitpid(p, &st, 0);
        }
    } else {
        return 2;
    }
    printf("%.1f\n", (now() - t0) * 1e9 / (double)n);
    return 0;
}
