/* An orphan in the tree: P forks C, C forks D and exits, P reaps C, so D is adopted by
 * init (or the nearest subreaper). D starts its own session, reports its parent and waits
 * on a pipe from P at gate 1. After the restart D must have the same adoptive parent, the
 * pipe must still connect it to P, and P's signal must reach it (through D's pid as P
 * learnt it). D exits on its own; P cannot reap it (not its child).
 */
#include "gate.h"
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

struct report {
    int pid, ppid, sig;
};

int main(void) {
    int up[2], down[2];
    if (pipe(up) || pipe(down)) return 92;
    fflush(stdout);
    pid_t c = fork();
    if (c == 0) {
        c = getpid();
        pid_t d = fork();
        if (d == 0) {
            /* Wait until C is gone, so the parent D reports is the adoptive one. */
            while (getppid() == c) {
                struct timespec ts = {0, 1000000};
                nanosleep(&ts, NULL);
            }
            if (setsid() < 0) _exit(80);
            sigset_t set;
            sigemptyset(&set);
            sigaddset(&set, SIGUSR1);
            sigprocmask(SIG_BLOCK, &set, NULL);
            struct report r = {getpid(), getppid(), 0};
            xwrite(up[1], &r, sizeof r);
            char go;
            xread(down[0], &go, 1);
            siginfo_t si;
            while ((r.sig = sigwaitinfo(&set, &si)) < 0 && errno == EINTR) {
            }
            r.pid = getpid();
            r.ppid = getppid();
            xwrite(up[1], &r, sizeof r);
            _exit(0);
        }
        _exit(4);
    }
    int st = 0;
    if (waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st) != 4) ERR("C: status %#x", st);
    close(up[1]);
    close(down[0]);
    struct report before, after;
    xread(up[0], &before, sizeof before);
    printf("orphan reported: adopted by another process: %s\n", before.ppid != getpid() && before.ppid != c ? "yes" : "no");
    gate(1);
    xwrite(down[1], "g", 1);
    if (kill(before.pid, SIGUSR1) != 0) ERR("kill(orphan): %s", strerror(errno));
    xread(up[0], &after, sizeof after);
    if (after.pid != before.pid) ERR("the orphan's pid changed: %d -> %d", before.pid, after.pid);
    if (after.ppid != before.ppid) ERR("the orphan's parent changed: %d -> %d", before.ppid, after.ppid);
    if (after.sig != SIGUSR1) ERR("the orphan got signal %d", after.sig);
    printf("orphan after gate 1: same pid, same adoptive parent, got SIGUSR1\n");
    if (waitpid(-1, &st, WNOHANG) != -1 || errno != ECHILD) ERR("P has a child left");
    gate(2);
    gate(3);
    return probe_exit_code();
}
