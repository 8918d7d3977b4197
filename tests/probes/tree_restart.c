/* A process tree with everything a restart must rebuild, checked on both sides of gate 1.
 *
 *   P (root) ── Z   exits with status 5 at once; P reaps it only after gate 1 (a zombie
 *            │      at the checkpoint, which must come back reapable with its status)
 *            ├─ A   leads its own process group; blocked in waitpid(G) at gate 1
 *            │  └─ G  (grandchild) leads its own session; blocked reading a pipe
 *            └─ B   member of A's process group; blocked in sigwaitinfo(SIGUSR1)
 *
 * Every process reports its ids over one pipe to P before gate 1, and again after it;
 * both reports must agree with each other and with what fork() returned. After gate 1, P
 * releases G (a byte on its pipe); G exits 11; A's waitpid returns G with status 11; A
 * exits 12; P signals B, which checks si_pid and exits 13; P reaps Z, A and B by pid.
 * Output has no pid in it.
 */
#include "gate.h"
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

struct report {
    char who;
    int round;
    int pid, ppid, pgid, sid;
    int other; /* A: G's pid from fork; G: -; B: -; A after gate: what waitpid returned */
    int status;
};

static int up_w, g_cmd_r;

/* SIGCHLD deliveries to P and the pid of the last one. */
static volatile sig_atomic_t chld_count, chld_pid;

static void on_chld(int sig, siginfo_t *si, void *uc) {
    (void)sig;
    (void)uc;
    chld_count++;
    chld_pid = si->si_pid;
}

static void report(char who, int round, int other, int status) {
    struct report r = {who, round, getpid(), getppid(), getpgrp(), getsid(0), other, status};
    xwrite(up_w, &r, sizeof r);
}

static void run_g(void) {
    if (setsid() < 0) _exit(80);
    report('G', 1, 0, 0);
    char c;
    xread(g_cmd_r, &c, 1);
    report('G', 2, 0, 0);
    _exit(11);
}

static void run_a(void) {
    if (setpgid(0, 0) != 0) _exit(81);
    pid_t g = fork();
    if (g == 0) run_g();
    report('A', 1, g, 0);
    int st = 0;
    pid_t w = waitpid(g, &st, 0);
    report('A', 2, w, WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    _exit(12);
}

static void run_b(pid_t a) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, NULL);
    if (setpgid(0, a) != 0) _exit(82);
    report('B', 1, 0, 0);
    siginfo_t si;
    int sig;
    while ((sig = sigwaitinfo(&set, &si)) < 0 && errno == EINTR) {
    }
    report('B', 2, si.si_pid, sig);
    _exit(13);
}

static struct report got[3][3]; /* [A,B,G][round] */

static int idx(char who) { return who == 'A' ? 0 : who == 'B' ? 1 : 2; }

static void collect(int up_r, int n) {
    for (int i = 0; i < n; i++) {
        struct report r;
        xread(up_r, &r, sizeof r);
        got[idx(r.who)][r.round] = r;
    }
}

#define CHECK(cond, ...)                                                                                               \
    do {                                                                                                               \
        if (cond)                                                                                                      \
            checks_ok++;                                                                                               \
        else                                                                                                           \
            ERR(__VA_ARGS__);                                                                                          \
    } while (0)

static int checks_ok;

int main(void) {
    int up[2], gcmd[2];
    if (pipe(up) || pipe(gcmd)) return 92;
    up_w = up[1];
    g_cmd_r = gcmd[0];
    pid_t p = getpid();
    fflush(stdout);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_chld;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigaction(SIGCHLD, &sa, NULL);

    pid_t z = fork();
    if (z == 0) _exit(5);
    while (chld_count == 0) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    siginfo_t zi;
    memset(&zi, 0, sizeof zi);
    if (waitid(P_PID, z, &zi, WEXITED | WNOWAIT) != 0) ERR("waitid(WNOWAIT) on the zombie: %s", strerror(errno));

    pid_t a = fork();
    if (a == 0) run_a();
    /* B must join A's group only once it exists. */
    while (getpgid(a) != a) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    pid_t b = fork();
    if (b == 0) run_b(a);
    close(gcmd[0]);
    collect(up[0], 3);

    struct report *A = &got[0][1], *B = &got[1][1], *G = &got[2][1];
    for (int round = 1; round <= 2; round++) {
        if (round == 2) {
            gate(1);
            /* The restart recreated Z as a zombie: that must not look like a new death. */
            CHECK(chld_count == 1 && chld_pid == z, "SIGCHLD: %d deliveries, last from %d (expected 1, from Z %d)",
                  (int)chld_count, (int)chld_pid, (int)z);
            /* After the restart, the same tree. */
            xwrite(gcmd[1], "x", 1);
            collect(up[0], 2); /* G, then A */
            if (kill(b, SIGUSR1) != 0) ERR("kill(B): %s", strerror(errno));
            collect(up[0], 1);
            A = &got[0][2];
            B = &got[1][2];
            G = &got[2][2];
        }
        printf("round %d\n", round);
        CHECK(getpid() == p, "P's pid changed");
        CHECK(A->pid == a && A->ppid == p, "A: pid/ppid %d/%d, expected %d/%d", A->pid, A->ppid, a, p);
        CHECK(A->pgid == a, "A's process group %d, expected its own %d", A->pgid, a);
        CHECK(A->sid == getsid(0), "A's session %d, expected P's %d", A->sid, getsid(0));
        CHECK(B->pid == b && B->ppid == p, "B: pid/ppid %d/%d, expected %d/%d", B->pid, B->ppid, b, p);
        CHECK(B->pgid == a, "B's process group %d, expected A's %d", B->pgid, a);
        CHECK(G->pid == got[0][1].other, "G's pid %d, A's fork returned %d", G->pid, got[0][1].other);
        CHECK(G->ppid == a, "G's parent %d, expected A %d", G->ppid, a);
        CHECK(G->sid == G->pid && G->pgid == G->pid, "G leads session %d / group %d, expected %d", G->sid, G->pgid, G->pid);
        /* (G is gone in round 2: A reaped it.) */
        CHECK(getpgid(b) == a && getsid(a) == getsid(0) && (round == 2 || getsid(got[2][1].pid) == got[2][1].pid),
              "getpgid/getsid of others: %d %d %d", getpgid(b), getsid(a), getsid(got[2][1].pid));
        if (round == 2) {
            CHECK(A->other == G->pid && A->status == 11, "A's waitpid returned %d status %d", A->other, A->status);
            CHECK(B->other == p && B->status == SIGUSR1, "B got signal %d from %d", B->status, B->other);
        }
        printf("round %d: %d checks passed\n", round, checks_ok);
        fflush(stdout);
    }

    int st = 0;
    pid_t w = waitpid(z, &st, 0);
    CHECK(w == z && WIFEXITED(st) && WEXITSTATUS(st) == 5, "zombie: waitpid returned %d status %#x", w, st);
    w = waitpid(a, &st, 0);
    CHECK(w == a && WIFEXITED(st) && WEXITSTATUS(st) == 12, "A: waitpid returned %d status %#x", w, st);
    w = waitpid(b, &st, 0);
    CHECK(w == b && WIFEXITED(st) && WEXITSTATUS(st) == 13, "B: waitpid returned %d status %#x", w, st);
    CHECK(waitpid(-1, &st, WNOHANG) < 0 && errno == ECHILD, "P has children left");
    printf("reaped: %d checks passed\n", checks_ok);
    gate(2);
    gate(3);
    return probe_exit_code();
}
