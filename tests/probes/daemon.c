/* A daemon's double fork: the session and process group of the daemon lost their leader.
 *
 * P forks C; C calls setsid() (it leads a new session and group, both with C's pid),
 * forks D and exits; P reaps C. D is adopted by init (or the nearest subreaper) and runs
 * in a session and group whose leader no longer exists. D forks E, which inherits both.
 * D and E report their pid, session and group to P, then wait on a pipe at gate 1.
 * After the restart they report again: the ids must be the ones P learnt before (C's pid
 * as their session and group), as must getsid/getpgid of them seen from P. The output
 * has no pid in it.
 */
#include "gate.h"
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

struct report {
    char who;
    int round, pid, sid, pgrp, pgid;
};

static int up_w, down_r;

static void report(char who, int round) {
    struct report r = {who, round, getpid(), getsid(0), getpgrp(), getpgid(0)};
    xwrite(up_w, &r, sizeof r);
}

static void daemon_side(char who) {
    report(who, 1);
    char go;
    if (read_exact(down_r, &go, 1) != 0) _exit(91);
    report(who, 2);
    _exit(0);
}

int main(void) {
    int up[2], down[2], cpid[2];
    if (pipe(up) || pipe(down) || pipe(cpid)) return 92;
    up_w = up[1];
    down_r = down[0];
    fflush(stdout);
    pid_t c = fork();
    if (c == 0) {
        if (setsid() < 0) _exit(80);
        pid_t me_c = getpid();
        pid_t d = fork();
        if (d == 0) {
            /* Wait until C is gone, so D's session and group have lost their leader. */
            while (getppid() == me_c) {
                struct timespec ts = {0, 1000000};
                nanosleep(&ts, NULL);
            }
            pid_t e = fork();
            if (e == 0) daemon_side('E');
            xwrite(cpid[1], &e, sizeof e);
            daemon_side('D');
        }
        xwrite(cpid[1], &d, sizeof d);
        _exit(4);
    }
    int st = 0;
    if (waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st) != 4) ERR("C: status %#x", st);
    close(up[1]);
    close(down[0]);
    pid_t d = 0, e = 0;
    if (read_exact(cpid[0], &d, sizeof d) || read_exact(cpid[0], &e, sizeof e)) ERR("no pids of D and E");
    struct report r;
    for (int i = 0; i < 2; i++) {
        if (read_exact(up[0], &r, sizeof r) != 0) {
            ERR("no report");
            break;
        }
        pid_t want = r.who == 'D' ? d : e;
        if (r.pid != want || r.sid != c || r.pgrp != c || r.pgid != c)
            ERR("%c before: pid ok %d, sid ok %d, pgrp ok %d, pgid ok %d", r.who, r.pid == want, r.sid == c, r.pgrp == c, r.pgid == c);
    }
    printf("D and E run in the session and group of C, which has exited\n");
    gate(1);
    if (getsid(d) != c || getpgid(d) != c || getsid(e) != c || getpgid(e) != c)
        ERR("seen from P: getsid(D) ok %d, getpgid(D) ok %d, getsid(E) ok %d, getpgid(E) ok %d", getsid(d) == c, getpgid(d) == c,
            getsid(e) == c, getpgid(e) == c);
    if (getsid(0) == c) ERR("P is in the daemon's session");
    if (killpg(c, 0) != 0) ERR("killpg(C's group, 0): %s", strerror(errno));
    xwrite(down[1], "gg", 2);
    int seen = 0;
    for (int i = 0; i < 2; i++) {
        if (read_exact(up[0], &r, sizeof r) != 0) {
            ERR("no second report");
            break;
        }
        pid_t want = r.who == 'D' ? d : e;
        const char *sid = r.sid == c ? "ok" : r.sid == r.pid ? "its own pid" : r.sid == getsid(0) ? "P's session" : "another id";
        const char *pg = r.pgrp == c ? "ok" : r.pgrp == r.pid ? "its own pid" : "another id";
        if (r.pid != want || r.sid != c || r.pgrp != c || r.pgid != c)
            ERR("%c after: pid ok %d, sid %s, pgrp %s, pgid ok %d", r.who, r.pid == want, sid, pg, r.pgid == c);
        else
            seen++;
    }
    printf("after gate 1: %d daemon processes report the same pid, session and group\n", seen);
    gate(2);
    gate(3);
    return probe_exit_code();
}
