/* A process tree that checks its own pids: parent P, child A, grandchild G, talking over
 * pipes. Every process learns the others' pids from fork() and from the pipes and checks
 * them against getpid/getppid/getpgid/getsid/waitpid/waitid/si_pid/kill and
 * /proc/<pid>. Output has no pid in it (it must equal an uninterrupted run's).
 *
 * gate 1: the whole tree is alive (A and G blocked reading their pipes);
 * gate 2: A and G did their second round (signals, setsid, reaping) and are gone;
 * gate 3: end.
 */
#include "gate.h"
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t usr1_from, chld_from;

static void on_usr1(int sig, siginfo_t *si, void *uc) {
    (void)sig;
    (void)uc;
    usr1_from = si->si_pid;
}

static void on_chld(int sig, siginfo_t *si, void *uc) {
    (void)sig;
    (void)uc;
    chld_from = si->si_pid;
}

/* What a child reports about itself. */
struct report {
    int pid, ppid, pgid, sid, tid, self_link, other; /* other: a child's pid as fork returned */
    int ok;                                          /* checks done in the child that passed */
    int failed;                                      /* ... and failed */
    int failed_line;                                 /* source line of the first failure */
};

static int self_link_pid(void) {
    char buf[64] = {0};
    ssize_t n = readlink("/proc/self", buf, sizeof buf - 1);
    return n > 0 ? atoi(buf) : -1;
}

static void fill(struct report *r) {
    r->pid = getpid();
    r->ppid = getppid();
    r->pgid = getpgid(0);
    r->sid = getsid(0);
    r->tid = (int)syscall(SYS_gettid);
    r->self_link = self_link_pid();
}

static int proc_exists(int pid) {
    char p[64];
    snprintf(p, sizeof p, "/proc/%d/comm", pid);
    int fd = open(p, O_RDONLY);
    if (fd < 0) return 0;
    close(fd);
    return 1;
}

#define CHECK(cond, ...)                                                                                               \
    do {                                                                                                               \
        if (cond)                                                                                                      \
            ok++;                                                                                                      \
        else {                                                                                                         \
            ERR(__VA_ARGS__);                                                                                          \
        }                                                                                                              \
    } while (0)

/* Checks in a child are counted and reported to P, which prints them. */
#define CCHECK(r, cond)                                                                                                \
    do {                                                                                                               \
        if (cond)                                                                                                      \
            (r)->ok++;                                                                                                 \
        else if ((r)->failed++ == 0)                                                                                   \
            (r)->failed_line = __LINE__;                                                                               \
    } while (0)

static void grandchild(int up, int down, int parent_pid) {
    struct report r = {0};
    fill(&r);
    CCHECK(&r, r.ppid == parent_pid);
    CCHECK(&r, r.tid == r.pid);
    CCHECK(&r, r.self_link == r.pid);
    xwrite(up, &r, sizeof r);
    char go;
    xread(down, &go, 1);
    /* Round 2: a session of its own. */
    struct report r2 = {0};
    pid_t s = setsid();
    CCHECK(&r2, s == getpid());
    CCHECK(&r2, getsid(0) == getpid() && getpgid(0) == getpid() && getpgrp() == getpid());
    CCHECK(&r2, getppid() == parent_pid);
    fill(&r2);
    xwrite(up, &r2, sizeof r2);
    _exit(7);
}

static void child(int up, int down_a, int parent_pid) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_usr1;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_sigaction = on_chld;
    sigaction(SIGCHLD, &sa, NULL);

    int down_g[2];
    if (pipe(down_g) != 0) _exit(92);
    fflush(stdout);
    pid_t g = fork();
    if (g < 0) _exit(93);
    if (g == 0) {
        close(down_g[1]);
        grandchild(up, down_g[0], getppid());
    }
    close(down_g[0]);
    struct report r = {0};
    fill(&r);
    r.other = g;
    CCHECK(&r, r.ppid == parent_pid);
    CCHECK(&r, r.self_link == r.pid);
    CCHECK(&r, proc_exists(g));
    CCHECK(&r, getpgid(g) == getpgid(0));
    xwrite(up, &r, sizeof r);

    char go;
    xread(down_a, &go, 1);
    /* Round 2: P sent SIGUSR1 before "go". */
    struct report r2 = {0};
    CCHECK(&r2, setpgid(0, 0) == 0);
    CCHECK(&r2, usr1_from == parent_pid);
    CCHECK(&r2, kill(g, 0) == 0);
    xwrite(down_g[1], "g", 1);
    int st = 0;
    pid_t w = waitpid(g, &st, 0);
    CCHECK(&r2, w == g);
    CCHECK(&r2, WIFEXITED(st) && WEXITSTATUS(st) == 7);
    CCHECK(&r2, chld_from == g);
    CCHECK(&r2, !proc_exists(g));
    fill(&r2);
    r2.other = g;
    xwrite(up, &r2, sizeof r2);
    exit(5);
}

int main(void) {
    setvbuf(stdout, NULL, _IOFBF, 1 << 16);
    int ok = 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_chld;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigaction(SIGCHLD, &sa, NULL);
    struct sigaction back;
    sigaction(SIGCHLD, NULL, &back);
    CHECK(back.sa_sigaction == on_chld, "sigaction reports another SIGCHLD handler than the program's");

    int up[2], down_a[2];
    if (pipe(up) != 0 || pipe(down_a) != 0) return 2;
    pid_t me = getpid();
    CHECK(self_link_pid() == me, "readlink /proc/self != getpid()");
    CHECK((pid_t)syscall(SYS_getpid) == me, "syscall(SYS_getpid) != getpid()");
    fflush(stdout);
    pid_t a = fork();
    if (a < 0) return 3;
    if (a == 0) {
        close(up[0]);
        close(down_a[1]);
        child(up[1], down_a[0], me);
    }
    close(up[1]);
    close(down_a[0]);

    /* Round 1: both reports (A's and G's, in either order). */
    struct report ra = {0}, rg = {0}, x;
    for (int i = 0; i < 2; i++) {
        xread(up[0], &x, sizeof x);
        if (x.pid == a)
            ra = x;
        else
            rg = x;
    }
    CHECK(ra.pid == a, "A's getpid() differs from what fork returned");
    CHECK(ra.ppid == me, "A's getppid() is not P's getpid()");
    CHECK(rg.pid == ra.other, "G's getpid() differs from what A's fork returned");
    CHECK(rg.ppid == a, "G's getppid() is not A's pid");
    CHECK(ra.pgid == getpgrp() && rg.pgid == getpgrp(), "the children are not in P's process group");
    CHECK(ra.sid == getsid(0) && rg.sid == getsid(0), "the children are not in P's session");
    CHECK(getpgid(a) == getpgrp() && getsid(a) == getsid(0), "getpgid/getsid of A seen from P");
    CHECK(ra.failed == 0 && rg.failed == 0, "checks in A (%d failed, line %d) or G (%d failed, line %d)", ra.failed,
          ra.failed_line, rg.failed, rg.failed_line);
    CHECK(proc_exists(a) && proc_exists(rg.pid), "/proc/<pid> of A or G");
    printf("round 1: tree of 3, child checks %d\n", ra.ok + rg.ok);

    gate(1);

    /* Round 2. A makes a process group of its own; a signal with si_pid; a new child B
     * joins A's group (A is then a zombie, still its group's leader); reaping with status. */
    /* Other calls that take A's pid. */
    CHECK(fcntl(up[0], F_SETOWN, a) == 0 && fcntl(up[0], F_GETOWN) == a, "fcntl F_SETOWN/F_GETOWN with A's pid");
    CHECK(fcntl(up[0], F_SETOWN, -getpgrp()) == 0 && fcntl(up[0], F_GETOWN) == -getpgrp(), "fcntl F_SETOWN with -pgid");
    cpu_set_t cs;
    CHECK(sched_getaffinity(a, sizeof cs, &cs) == 0, "sched_getaffinity(A): %s", strerror(errno));
    CHECK(sched_getscheduler(a) >= 0, "sched_getscheduler(A): %s", strerror(errno));
    errno = 0;
    CHECK(getpriority(PRIO_PROCESS, a) != -1 || errno == 0, "getpriority(A): %s", strerror(errno));
    CHECK(syscall(SYS_kill, a, 0) == 0 && syscall(SYS_getpgid, a) == getpgrp(), "syscall(SYS_kill/SYS_getpgid, A)");
    CHECK(killpg(getpgrp(), 0) == 0, "killpg(own group, 0): %s", strerror(errno));
    char path[64], buf[64];
    snprintf(path, sizeof path, "/proc/%d/task/%d", a, a);
    struct stat stb;
    CHECK(stat(path, &stb) == 0, "stat %s: %s", "/proc/A/task/A", strerror(errno));
    CHECK(readlink("/proc/self", buf, sizeof buf) > 0, "readlink /proc/self");
    union sigval sv = {.sival_int = 7};
    CHECK(sigqueue(a, SIGUSR1, sv) == 0, "sigqueue(A, SIGUSR1): %s", strerror(errno));
    xwrite(down_a[1], "a", 1);
    struct report r2a = {0}, r2g = {0};
    for (int i = 0; i < 2; i++) {
        xread(up[0], &x, sizeof x);
        if (x.pid == a)
            r2a = x;
        else
            r2g = x;
    }
    CHECK(r2g.pid == rg.pid && r2g.sid == rg.pid && r2g.pgid == rg.pid, "G's new session");
    CHECK(r2a.other == rg.pid && r2a.pgid == a, "A's view in round 2");
    CHECK(r2a.failed == 0 && r2g.failed == 0, "round 2 checks in A (%d failed, line %d) or G (%d failed, line %d)",
          r2a.failed, r2a.failed_line, r2g.failed, r2g.failed_line);
    siginfo_t si;
    memset(&si, 0, sizeof si);
    CHECK(waitid(P_PID, a, &si, WEXITED | WNOWAIT) == 0 && si.si_pid == a && si.si_status == 5,
          "waitid(P_PID, A, WNOWAIT)");
    CHECK(chld_from == a, "SIGCHLD si_pid is not A's pid");
    CHECK(getpgid(a) == a, "getpgid(A) after A's setpgid(0, 0)");
    fflush(stdout);
    pid_t b = fork();
    if (b == 0) _exit(setpgid(0, a) == 0 && getpgid(0) == a && getpgrp() == a ? 3 : 4);
    int st = 0;
    CHECK(waitpid(b, &st, 0) == b && WIFEXITED(st) && WEXITSTATUS(st) == 3, "B could not join A's group");
    CHECK(waitpid(a, &st, 0) == a && WIFEXITED(st) && WEXITSTATUS(st) == 5, "waitpid(A)");
    CHECK(waitpid(-1, &st, WNOHANG) == -1 && errno == ECHILD, "a child left over");
    printf("round 2: child checks %d\n", r2a.ok + r2g.ok);

    gate(2);
    printf("checks passed in P: %d\n", ok);
    gate(3);
    return probe_exit_code();
}
