/* Signal-state probe. Run it under crust with a checkpoint signal other than SIGUSR2,
 * SIGHUP, SIGALRM, SIGTERM and SIGRTMIN+1 (the tests use `--signal SIGUSR1`): the probe
 * owns those.
 *
 * Before gate 1 it installs handlers (SA_SIGINFO|SA_RESTART|SA_ONSTACK with a handler mask
 * for SIGUSR2 on an alternate signal stack, a plain handler for SIGHUP, SA_RESTART for
 * SIGALRM, SA_SIGINFO for SIGRTMIN+1), ignores SIGTERM, then blocks ALL signals with
 * sigprocmask, makes SIGHUP (thread-directed, raise) and SIGRTMIN+1 with a value
 * (process-directed, sigqueue) pending, and arms alarm(2). The checkpoint at gate 1 is
 * therefore taken while the application blocks every signal.
 *
 * After gate 2 it checks that dispositions, flags, handler masks, the alternate stack, the
 * signal mask and the pending set are what it set, unblocks, and prints what was
 * delivered: the pending signals (with the queued value) and the alarm, which must still
 * fire.
 */
#include "gate.h"

#include <signal.h>
#include <stdint.h>
#include <unistd.h>

#define ALTSTACK_SIZE (64 * 1024)

static char *altstack_mem;
static volatile sig_atomic_t usr2_count, usr2_on_altstack, usr2_info_ok;
static volatile sig_atomic_t hup_count, alrm_count, rt_count, rt_value, rt_code_is_queue;

static void on_usr2(int sig, siginfo_t *si, void *uc) {
    (void)uc;
    char here;
    usr2_count++;
    if (&here >= altstack_mem && &here < altstack_mem + ALTSTACK_SIZE) usr2_on_altstack++;
    if (sig == SIGUSR2 && si && si->si_signo == SIGUSR2) usr2_info_ok++;
}
static void on_hup(int sig) {
    (void)sig;
    hup_count++;
}
static void on_alrm(int sig) {
    (void)sig;
    alrm_count++;
}
static void on_rt(int sig, siginfo_t *si, void *uc) {
    (void)sig;
    (void)uc;
    rt_count++;
    rt_value = si->si_value.sival_int;
    rt_code_is_queue = si->si_code == SI_QUEUE;
}

static const char *yesno(int b) { return b ? "yes" : "no"; }

static int same_mask(const sigset_t *a, const sigset_t *b) {
    for (int s = 1; s <= SIGRTMAX; s++)
        if (sigismember(a, s) != sigismember(b, s)) return 0;
    return 1;
}

int main(void) {
    altstack_mem = malloc(ALTSTACK_SIZE);
    stack_t ss = {.ss_sp = altstack_mem, .ss_size = ALTSTACK_SIZE, .ss_flags = 0};
    if (sigaltstack(&ss, NULL) != 0) ERR("sigaltstack: %s", strerror(errno));

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_usr2;
    sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGTERM);
    if (sigaction(SIGUSR2, &sa, NULL) != 0) ERR("sigaction(SIGUSR2): %s", strerror(errno));

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_hup;
    if (sigaction(SIGHUP, &sa, NULL) != 0) ERR("sigaction(SIGHUP): %s", strerror(errno));

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alrm;
    sa.sa_flags = SA_RESTART;
    if (sigaction(SIGALRM, &sa, NULL) != 0) ERR("sigaction(SIGALRM): %s", strerror(errno));

    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_rt;
    sa.sa_flags = SA_SIGINFO;
    if (sigaction(SIGRTMIN + 1, &sa, NULL) != 0) ERR("sigaction(SIGRTMIN+1): %s", strerror(errno));

    signal(SIGTERM, SIG_IGN);

    raise(SIGUSR2);
    printf("before: SIGUSR2 handled %d time(s), on the alternate stack %d, siginfo ok %d\n", (int)usr2_count,
           (int)usr2_on_altstack, (int)usr2_info_ok);

    sigset_t all, mask_before, none;
    sigfillset(&all);
    sigemptyset(&none);
    if (sigprocmask(SIG_BLOCK, &all, NULL) != 0) ERR("sigprocmask(block all): %s", strerror(errno));
    sigprocmask(SIG_BLOCK, NULL, &mask_before);
    printf("blocked all signals: SIGUSR2 blocked %s, SIGRTMAX blocked %s\n", yesno(sigismember(&mask_before, SIGUSR2)),
           yesno(sigismember(&mask_before, SIGRTMAX)));

    raise(SIGHUP);
    union sigval v = {.sival_int = 4242};
    if (sigqueue(getpid(), SIGRTMIN + 1, v) != 0) ERR("sigqueue: %s", strerror(errno));
    alarm(2);

    sigset_t pend;
    sigpending(&pend);
    printf("pending before gate 1: SIGHUP %s, SIGRTMIN+1 %s\n", yesno(sigismember(&pend, SIGHUP)),
           yesno(sigismember(&pend, SIGRTMIN + 1)));

    gate(1);
    printf("between gates 1 and 2: SIGHUP handled %d time(s)\n", (int)hup_count);
    gate(2);

    sigset_t mask_after;
    sigprocmask(SIG_BLOCK, NULL, &mask_after);
    printf("signal mask unchanged: %s\n", yesno(same_mask(&mask_before, &mask_after)));
    sigpending(&pend);
    printf("still pending: SIGHUP %s, SIGRTMIN+1 %s\n", yesno(sigismember(&pend, SIGHUP)),
           yesno(sigismember(&pend, SIGRTMIN + 1)));

    struct sigaction cur;
    sigaction(SIGUSR2, NULL, &cur);
    int usr2_flags = (cur.sa_flags & (SA_SIGINFO | SA_RESTART | SA_ONSTACK)) == (SA_SIGINFO | SA_RESTART | SA_ONSTACK);
    printf("SIGUSR2 handler kept %s, flags SA_SIGINFO|SA_RESTART|SA_ONSTACK kept %s, SA_RESETHAND clear %s, "
           "handler mask {SIGTERM} kept %s\n",
           yesno(cur.sa_sigaction == on_usr2), yesno(usr2_flags), yesno(!(cur.sa_flags & SA_RESETHAND)),
           yesno(sigismember(&cur.sa_mask, SIGTERM) && !sigismember(&cur.sa_mask, SIGINT)));
    sigaction(SIGHUP, NULL, &cur);
    printf("SIGHUP handler kept %s, SA_SIGINFO clear %s\n", yesno(cur.sa_handler == on_hup),
           yesno(!(cur.sa_flags & SA_SIGINFO)));
    sigaction(SIGALRM, NULL, &cur);
    printf("SIGALRM handler kept %s, SA_RESTART kept %s\n", yesno(cur.sa_handler == on_alrm),
           yesno(cur.sa_flags & SA_RESTART));
    sigaction(SIGRTMIN + 1, NULL, &cur);
    printf("SIGRTMIN+1 handler kept %s\n", yesno(cur.sa_sigaction == on_rt));
    sigaction(SIGTERM, NULL, &cur);
    printf("SIGTERM still ignored %s\n", yesno(cur.sa_handler == SIG_IGN));
    sigaction(SIGINT, NULL, &cur);
    printf("SIGINT still default %s\n", yesno(cur.sa_handler == SIG_DFL));

    stack_t now;
    sigaltstack(NULL, &now);
    printf("alternate stack kept: %s\n",
           yesno(now.ss_sp == altstack_mem && now.ss_size == ALTSTACK_SIZE && !(now.ss_flags & SS_DISABLE)));

    /* Deliver the pending signals. */
    if (sigprocmask(SIG_SETMASK, &none, NULL) != 0) ERR("sigprocmask(unblock): %s", strerror(errno));
    printf("after unblocking: SIGHUP handled %d time(s); SIGRTMIN+1 handled %d time(s), value %d, SI_QUEUE %s\n",
           (int)hup_count, (int)rt_count, (int)rt_value, yesno(rt_code_is_queue));

    /* The alarm armed before gate 1 must fire (it may already have). */
    for (int i = 0; i < 20000 && !alrm_count; i++) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    if (!alrm_count) ERR("the alarm armed before gate 1 never fired (waited 20 s)");
    printf("SIGALRM delivered %d time(s)\n", (int)alrm_count);

    raise(SIGUSR2);
    printf("after: SIGUSR2 handled %d time(s), on the alternate stack %d, siginfo ok %d\n", (int)usr2_count,
           (int)usr2_on_altstack, (int)usr2_info_ok);

    gate(3);
    printf("done\n");
    fflush(stdout);
    return probe_exit_code();
}
