/* A process group whose leader has exited: its id must stay the same after a restart.
 *
 * P forks L, which leads a new process group, and M, which joins L's group. L exits and
 * P reaps it before gate 1, so at the checkpoint the group's only member is M and the
 * group's id is the pid of a process that no longer exists. M reports its ids; after
 * gate 1 it checks them again, execs itself (the ids must survive an exec too), checks
 * once more and reports; P checks getpgid(M), killpg(L's group, 0), and reaps M. The
 * output has no pid in it.
 */
#include "gate.h"
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

struct ids {
    int pid, pgrp, pgid, stage;
};

static void report(int fd, int stage) {
    struct ids r = {getpid(), getpgrp(), getpgid(0), stage};
    xwrite(fd, &r, sizeof r);
}

/* M after its exec: argv = [self, "m", report fd]. */
static int after_exec(char **argv) {
    report(atoi(argv[2]), 3);
    return 7;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "m") == 0) return after_exec(argv);
    int go_l[2], go_m[2], up[2];
    if (pipe(go_l) || pipe(go_m) || pipe(up)) return 91;
    fflush(stdout);
    pid_t l = fork();
    if (l == 0) {
        if (setpgid(0, 0) != 0) _exit(80);
        char c;
        read_exact(go_l[0], &c, 1);
        _exit(0);
    }
    setpgid(l, l); /* both sides, so that M never finds the group missing */
    pid_t m = fork();
    if (m == 0) {
        if (setpgid(0, l) != 0) _exit(81);
        report(up[1], 1);
        char c;
        if (read_exact(go_m[0], &c, 1) != 0) _exit(82);
        report(up[1], 2);
        char fd[16];
        snprintf(fd, sizeof fd, "%d", up[1]);
        execl("/proc/self/exe", argv[0], "m", fd, (char *)NULL);
        _exit(83);
    }
    struct ids r;
    if (read_exact(up[0], &r, sizeof r) != 0) ERR("no report from M");
    /* The group has M now: let its leader go. */
    xwrite(go_l[1], "x", 1);
    int st = 0;
    if (waitpid(l, &st, 0) != l || !WIFEXITED(st)) ERR("reaping L");
    if (r.pid != m || r.pgrp != l || r.pgid != l) ERR("M before: pid ok %d, pgrp ok %d, pgid ok %d", r.pid == m, r.pgrp == l, r.pgid == l);
    printf("M is in the group of L, which has exited\n");
    gate(1);
    if (getpgid(m) != l) ERR("getpgid(M) from P: %s", getpgid(m) == m ? "M's own pid" : "another id");
    if (killpg(l, 0) != 0) ERR("killpg(L's group, 0): %s", strerror(errno));
    if (kill(-l, 0) != 0) ERR("kill(-L, 0): %s", strerror(errno));
    xwrite(go_m[1], "g", 1);
    for (int stage = 2; stage <= 3; stage++) {
        if (read_exact(up[0], &r, sizeof r) != 0) {
            ERR("no report %d from M", stage);
            break;
        }
        if (r.stage != stage || r.pid != m || r.pgrp != l || r.pgid != l)
            ERR("M at stage %d: pid ok %d, getpgrp %s, getpgid(0) %s", r.stage, r.pid == m,
                r.pgrp == l ? "ok" : r.pgrp == m ? "M's own pid" : "another id",
                r.pgid == l ? "ok" : r.pgid == m ? "M's own pid" : "another id");
        else
            printf("M at stage %d: its ids check out\n", stage);
    }
    gate(2);
    if (waitpid(m, &st, 0) != m) ERR("waitpid(M): %s", strerror(errno));
    printf("M exited with %d\n", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    gate(3);
    return probe_exit_code();
}
