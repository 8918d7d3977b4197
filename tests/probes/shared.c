/* Kernel objects shared between a parent and its child across a restart: a named FIFO
 * holding 5000 bytes in flight at gate 1, MAP_SHARED anonymous memory and a memfd mapped
 * shared. After gate 1 the parent drains the FIFO, then flags the child through the
 * shared anonymous page; the child answers through both shared mappings; the parent must
 * see the answers (the memory came back shared, not duplicated).
 */
#include "gate.h"
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define FIFO "shared-probe.fifo"
#define N 5000

int main(void) {
    unlink(FIFO);
    if (mkfifo(FIFO, 0600) != 0) return 90;
    volatile int *sh = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    int mfd = memfd_create("probe-shared", 0);
    if (sh == MAP_FAILED || mfd < 0 || ftruncate(mfd, 4096) != 0) return 91;
    volatile int *mf = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    if (mf == MAP_FAILED) return 92;
    close(mfd); /* the mapping keeps it (a memfd fd is issue 6's) */
    fflush(stdout);
    pid_t c = fork();
    if (c == 0) {
        int w = open(FIFO, O_WRONLY);
        if (w < 0) _exit(80);
        char buf[N];
        for (int i = 0; i < N; i++) buf[i] = (char)('a' + i % 26);
        if (write(w, buf, N) != N) _exit(81);
        /* Wait (at most 20 s) for the parent's flag in shared memory. */
        for (int i = 0; i < 20000 && sh[0] == 0; i++) {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
        if (sh[0] != 1) _exit(3);
        sh[1] = (sh[2] == 99) ? 42 : -1;
        mf[0] = 7;
        _exit(0);
    }
    int r = open(FIFO, O_RDONLY);
    if (r < 0) return 93;
    for (;;) {
        int avail = 0;
        if (ioctl(r, FIONREAD, &avail) == 0 && avail >= N) break;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    sh[2] = 99;
    printf("fifo holds %d bytes\n", N);
    gate(1);
    char buf[N];
    size_t got = 0;
    while (got < N) {
        ssize_t k = read(r, buf + got, N - got);
        if (k <= 0) break;
        got += (size_t)k;
    }
    int bad = 0;
    for (size_t i = 0; i < got; i++) bad += buf[i] != (char)('a' + i % 26);
    if (got != N || bad) ERR("fifo: %zu bytes, %d wrong", got, bad);
    printf("fifo drained: %zu bytes\n", got);
    sh[0] = 1;
    int st = 0;
    if (waitpid(c, &st, 0) != c) ERR("waitpid: %s", strerror(errno));
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) ERR("child status %#x (3: it never saw the flag in shared memory)", st);
    if (sh[1] != 42) ERR("shared anonymous memory: the child's answer is %d", sh[1]);
    if (mf[0] != 7) ERR("memfd mapping: the child's answer is %d", mf[0]);
    printf("shared memory answers: %d %d\n", sh[1], mf[0]);
    unlink(FIFO);
    gate(2);
    gate(3);
    return probe_exit_code();
}
