/* bench/forkhog.c: a process holding SIZE_MIB MiB of populated 4 KiB pages, for the
 * forked-checkpoint downtime benchmark (bench/downtime.sh).
 *
 *   forkhog SIZE_MIB fork REPS   time REPS bare fork()s (child _exit(0) at once); prints
 *                                the duration of each fork() call in the parent, in µs
 *   forkhog SIZE_MIB serve       print "ready", then one timed fork per line read from
 *                                stdin, printing its duration in µs (interleaved runs)
 *   forkhog SIZE_MIB hold DIR    write DIR/ready, then wait (to be checkpointed)
 *
 * Every page is written (zeros: the pages are allocated, so fork copies their page table
 * entries, but an image of them is small), with transparent huge pages off for the area
 * so that both measurements see 4 KiB pages.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: forkhog SIZE_MIB fork REPS | serve | hold DIR\n");
        return 2;
    }
    size_t len = strtoull(argv[1], NULL, 10) << 20;
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    madvise(p, len, MADV_NOHUGEPAGE);
    for (size_t i = 0; i < len; i += 4096) p[i] = 0;
    if (strcmp(argv[2], "fork") == 0 || strcmp(argv[2], "serve") == 0) {
        int serve = strcmp(argv[2], "serve") == 0;
        int reps = serve ? 1 << 30 : atoi(argv[3]);
        if (serve) {
            printf("ready\n");
            fflush(stdout);
        }
        char line[64];
        for (int r = 0; r < reps; r++) {
            if (serve && !fgets(line, sizeof line, stdin)) break;
            double t0 = now_us();
            pid_t pid = fork();
            if (pid == 0) _exit(0);
            double t1 = now_us();
            waitpid(pid, NULL, 0);
            printf("%.0f\n", t1 - t0);
            fflush(stdout);
        }
        return 0;
    }
    if (argc < 4) return 2;
    char path[4096];
    snprintf(path, sizeof path, "%s/ready", argv[3]);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) close(fd);
    for (;;) pause();
}
