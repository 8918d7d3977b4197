/* Two processes and three pipes, with bytes in flight in both directions at gate 1.
 *
 * The parent writes 40 numbered messages into `down` before gate 1; the child has
 * written a greeting (with the result of its own pid checks) into `up` and waits on
 * `start`, so at gate 1 both pipes hold unread bytes. After gate 1 the parent releases
 * the child, which reads every message, checks their checksum, prints a line to the
 * shared stdout (same file offset as the parent's), answers, and exits with status 7.
 * The parent checks what it gets back, reaps the child and checks its exit status.
 */
#include "gate.h"
#include <signal.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <unistd.h>

#define NMSG 40

static void write_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0) {
            if (errno == EINTR) continue;
            perror("write");
            exit(90);
        }
        p += k;
        n -= (size_t)k;
    }
}

static int read_full(int fd, void *buf, size_t n) {
    char *p = buf;
    size_t got = 0;
    while (got < n) {
        ssize_t k = read(fd, p + got, n - got);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return (int)got;
        got += (size_t)k;
    }
    return (int)got;
}

struct msg {
    int seq;
    int from;
    char text[56];
};

static int child(int down, int up, int start, pid_t parent) {
    char greeting[64];
    snprintf(greeting, sizeof greeting, "hello ppid-ok=%d self-ok=%d", getppid() == parent, getpid() != parent);
    write_all(up, greeting, sizeof greeting);
    char go;
    if (read_full(start, &go, 1) != 1) return 80;
    /* After a restart: the same parent, still. */
    if (getppid() != parent) {
        printf("ERROR: child sees parent %d, expected %d\n", (int)getppid(), (int)parent);
        fflush(stdout);
    }
    unsigned long long h = FNV_INIT;
    int n = 0;
    struct msg m;
    while (n < NMSG && read_full(down, &m, sizeof m) == (int)sizeof m) {
        if (m.seq != n || m.from != (int)parent) {
            printf("ERROR: message %d has seq %d from %d\n", n, m.seq, m.from);
        }
        h = fnv1a(&m, sizeof m, h);
        n++;
    }
    printf("child: %d messages read\n", n);
    fflush(stdout);
    /* fd 20 is the parent's stdout under another number: one file offset still. */
    dprintf(20, "child: this line went through fd 20\n");
    pid_t me = getpid();
    write_all(up, &me, sizeof me);
    write_all(up, &h, sizeof h);
    return 7;
}

int main(void) {
    int down[2], up[2], start[2];
    if (pipe(down) || pipe(up) || pipe(start)) return 91;
    pid_t parent = getpid();
    fflush(stdout);
    pid_t c = fork();
    if (c < 0) return 92;
    if (c == 0) {
        if (dup2(1, 20) != 20) _exit(93);
        close(down[1]);
        close(up[0]);
        close(start[1]);
        int code = child(down[0], up[1], start[0], parent);
        fflush(stdout);
        _exit(code);
    }
    close(down[0]);
    close(up[1]);
    close(start[0]);
    unsigned long long h = FNV_INIT;
    for (int i = 0; i < NMSG; i++) {
        struct msg m;
        memset(&m, 0, sizeof m);
        m.seq = i;
        m.from = (int)parent;
        snprintf(m.text, sizeof m.text, "message %d of %d", i, NMSG);
        write_all(down[1], &m, sizeof m);
        h = fnv1a(&m, sizeof m, h);
    }
    /* Wait until the child's greeting is in the pipe (without reading it). */
    for (;;) {
        int avail = 0;
        if (ioctl(up[0], FIONREAD, &avail) == 0 && avail >= 64) break;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    printf("parent: sent %d messages\n", NMSG);
    gate(1);
    char greeting[64];
    if (read_full(up[0], greeting, sizeof greeting) != sizeof greeting) ERR("no greeting");
    printf("parent: child says \"%s\"\n", greeting);
    fflush(stdout);
    write_all(start[1], "g", 1);
    pid_t cpid = 0;
    unsigned long long ch = 0;
    if (read_full(up[0], &cpid, sizeof cpid) != sizeof cpid || read_full(up[0], &ch, sizeof ch) != sizeof ch) ERR("no answer");
    if (cpid != c) ERR("child reports pid %d, fork returned %d", (int)cpid, (int)c);
    if (ch != h) ERR("checksums differ: %016llx vs %016llx", ch, h);
    printf("parent: child's answer checks out\n");
    gate(2);
    int st = 0;
    pid_t w = wait(&st);
    if (w < 0) ERR("wait: %s", strerror(errno));
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 7) ERR("child status %#x", st);
    printf("parent: child exited with %d\n", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    gate(3);
    return probe_exit_code();
}
