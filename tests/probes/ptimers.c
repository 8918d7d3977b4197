/* POSIX timer probe (timer_create): what a restart must give back.
 *
 * Before gate 1 it creates, in this order (a new process gets kernel ids 0, 1, 2...):
 *   A (id 0)  CLOCK_MONOTONIC, SIGEV_SIGNAL SIGRTMIN+2 with value 0x5eed, every 5 ms,
 *             counted by an SA_SIGINFO handler that checks si_code, si_value, si_timerid
 *   B (id 1)  CLOCK_MONOTONIC, SIGEV_THREAD_ID to a worker thread, SIGRTMIN+3 with value
 *             77, every 7 ms; the worker takes them with sigwaitinfo and checks them
 *   - (id 2)  created and deleted (a gap in the ids)
 *   C (id 3)  CLOCK_REALTIME, SIGEV_NONE, due in an hour
 *   D         SIGEV_THREAD (glibc's helper thread), every 6 ms, value 99, counted by the callback
 *   F         CLOCK_MONOTONIC, SIGEV_SIGNAL, never armed
 *   E         CLOCK_MONOTONIC, SIGEV_THREAD_ID to a thread that has exited since, every 3 ms
 *   P         the process's CPU clock (clock_getcpuclockid: the clock id names the pid),
 *             SIGEV_NONE, due in an hour of CPU time
 * and waits until A, B and D have fired a few times. After gate 1 (after a restart too)
 * every timer_t must still be valid: the ids and settings are printed, A, B and D must fire
 * on (10 more ticks each, with the right values), C must still be armed within the hour,
 * F disarmed. After gate 2 a new SIGEV_THREAD timer and a new signal timer are created and
 * must fire too (their ids must not collide with the old ones). Gate 3, then everything is
 * deleted. The output holds no times or counts that depend on timing.
 */
#include "gate.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

#define SIG_A (SIGRTMIN + 2)
#define SIG_B (SIGRTMIN + 3)
#define SIG_H (SIGRTMIN + 4)

static timer_t ta, tb, tc, td, tf, tg, th, te, tp;
static atomic_int ticks_a, ticks_b, ticks_d, ticks_g, ticks_h, bad_a, bad_b, bad_d, bad_h;

static void on_a(int sig, siginfo_t *si, void *uc) {
    (void)sig;
    (void)uc;
    if (si->si_code != SI_TIMER || si->si_value.sival_int != 0x5eed || si->si_timerid != (int)(intptr_t)ta)
        atomic_fetch_add(&bad_a, 1);
    atomic_fetch_add(&ticks_a, 1);
}

static void on_h(int sig, siginfo_t *si, void *uc) {
    (void)sig;
    (void)uc;
    if (si->si_code != SI_TIMER || si->si_value.sival_int != 0x4848) atomic_fetch_add(&bad_h, 1);
    atomic_fetch_add(&ticks_h, 1);
}

static void on_d(union sigval v) {
    if (v.sival_int != 99) atomic_fetch_add(&bad_d, 1);
    atomic_fetch_add(&ticks_d, 1);
}

static void on_g(union sigval v) {
    if (v.sival_int == 7) atomic_fetch_add(&ticks_g, 1);
}

static atomic_int worker_tid, brief_tid;

static void *brief(void *arg) {
    (void)arg;
    atomic_store(&brief_tid, gettid());
    while (atomic_load(&brief_tid) > 0) {
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

static void *worker(void *arg) {
    (void)arg;
    atomic_store(&worker_tid, gettid());
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIG_B);
    for (;;) {
        siginfo_t si;
        if (sigwaitinfo(&set, &si) != SIG_B) continue;
        if (si.si_code != SI_TIMER || si.si_value.sival_int != 77) atomic_fetch_add(&bad_b, 1);
        atomic_fetch_add(&ticks_b, 1);
    }
    return NULL;
}

static void arm(timer_t t, long first_ns, long every_ns, const char *name) {
    struct itimerspec its = {{every_ns / 1000000000, every_ns % 1000000000}, {first_ns / 1000000000, first_ns % 1000000000}};
    if (timer_settime(t, 0, &its, NULL) != 0) ERR("timer_settime %s: %s", name, strerror(errno));
}

/* Wait (at most 30 s) until *c reaches want. */
static int wait_count(atomic_int *c, int want, const char *name) {
    for (int i = 0; i < 30000; i++) {
        if (atomic_load(c) >= want) return 1;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    ERR("timer %s stopped firing (%d ticks, waited for %d)", name, atomic_load(c), want);
    return 0;
}

static long long ns(struct timespec t) { return t.tv_sec * 1000000000LL + t.tv_nsec; }

static void show(timer_t t, const char *name) {
    struct itimerspec cur;
    if (timer_gettime(t, &cur) != 0) {
        ERR("timer_gettime %s: %s (the timer id is no longer valid)", name, strerror(errno));
        return;
    }
    long long left = ns(cur.it_value), every = ns(cur.it_interval);
    const char *state = left == 0 ? "disarmed" : left <= 3600000000000LL ? "armed" : "too far";
    printf("timer %s: %s, interval %lld ms\n", name, state, every / 1000000);
    if (timer_getoverrun(t) < 0) ERR("timer_getoverrun %s: %s", name, strerror(errno));
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIG_B);
    pthread_sigmask(SIG_BLOCK, &block, NULL);
    struct sigaction sa = {0};
    sa.sa_sigaction = on_a;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigaction(SIG_A, &sa, NULL);
    sa.sa_sigaction = on_h;
    sigaction(SIG_H, &sa, NULL);
    pthread_t w;
    pthread_create(&w, NULL, worker, NULL);
    while (!atomic_load(&worker_tid)) {
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
    }

    struct sigevent ev = {0};
    ev.sigev_notify = SIGEV_SIGNAL;
    ev.sigev_signo = SIG_A;
    ev.sigev_value.sival_int = 0x5eed;
    if (timer_create(CLOCK_MONOTONIC, &ev, &ta) != 0) ERR("timer_create A: %s", strerror(errno));
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_THREAD_ID;
    ev.sigev_signo = SIG_B;
    ev.sigev_value.sival_int = 77;
    ev._sigev_un._tid = atomic_load(&worker_tid);
    if (timer_create(CLOCK_MONOTONIC, &ev, &tb) != 0) ERR("timer_create B: %s", strerror(errno));
    timer_t gap;
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_NONE;
    if (timer_create(CLOCK_MONOTONIC, &ev, &gap) != 0) ERR("timer_create gap: %s", strerror(errno));
    if (timer_create(CLOCK_REALTIME, &ev, &tc) != 0) ERR("timer_create C: %s", strerror(errno));
    timer_delete(gap);
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_THREAD;
    ev.sigev_notify_function = on_d;
    ev.sigev_value.sival_int = 99;
    if (timer_create(CLOCK_MONOTONIC, &ev, &td) != 0) ERR("timer_create D: %s", strerror(errno));
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_SIGNAL;
    ev.sigev_signo = SIG_A;
    if (timer_create(CLOCK_MONOTONIC, &ev, &tf) != 0) ERR("timer_create F: %s", strerror(errno));
    pthread_t bt;
    pthread_create(&bt, NULL, brief, NULL);
    while (!atomic_load(&brief_tid)) {
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
    }
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_THREAD_ID;
    ev.sigev_signo = SIG_B;
    ev._sigev_un._tid = atomic_load(&brief_tid);
    if (timer_create(CLOCK_MONOTONIC, &ev, &te) != 0) ERR("timer_create E: %s", strerror(errno));
    atomic_store(&brief_tid, -1);
    pthread_join(bt, NULL);
    arm(te, 3000000, 3000000, "E");
    clockid_t cpu;
    if (clock_getcpuclockid(getpid(), &cpu) != 0) ERR("clock_getcpuclockid failed");
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_NONE;
    if (timer_create(cpu, &ev, &tp) != 0) ERR("timer_create P: %s", strerror(errno));
    arm(tp, 3600000000000L, 0, "P");
    printf("ids: A %d, B %d, C %d\n", (int)(intptr_t)ta, (int)(intptr_t)tb, (int)(intptr_t)tc);

    arm(ta, 5000000, 5000000, "A");
    arm(tb, 7000000, 7000000, "B");
    arm(tc, 3600000000000L, 0, "C");
    arm(td, 6000000, 6000000, "D");
    wait_count(&ticks_a, 3, "A");
    wait_count(&ticks_b, 3, "B");
    wait_count(&ticks_d, 3, "D");

    gate(1);

    show(ta, "A");
    show(tb, "B");
    show(tc, "C");
    show(tf, "F");
    show(te, "E");
    show(tp, "P");
    int a = atomic_load(&ticks_a), b = atomic_load(&ticks_b), d = atomic_load(&ticks_d);
    if (wait_count(&ticks_a, a + 10, "A") && wait_count(&ticks_b, b + 10, "B") && wait_count(&ticks_d, d + 10, "D"))
        printf("A, B and D fire on\n");

    gate(2);

    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_THREAD;
    ev.sigev_notify_function = on_g;
    ev.sigev_value.sival_int = 7;
    if (timer_create(CLOCK_MONOTONIC, &ev, &tg) != 0)
        ERR("timer_create of a new SIGEV_THREAD timer: %s", strerror(errno));
    else {
        arm(tg, 2000000, 0, "G");
        if (wait_count(&ticks_g, 1, "G")) printf("a new SIGEV_THREAD timer fires\n");
    }
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_SIGNAL;
    ev.sigev_signo = SIG_H;
    ev.sigev_value.sival_int = 0x4848;
    if (timer_create(CLOCK_MONOTONIC, &ev, &th) != 0)
        ERR("timer_create of a new timer: %s", strerror(errno));
    else {
        if (th == ta || th == tb || th == tc || th == tf) ERR("the new timer got the id of an old one");
        arm(th, 3000000, 0, "H");
        if (wait_count(&ticks_h, 1, "H")) printf("a new signal timer fires\n");
    }
    if (atomic_load(&bad_a) || atomic_load(&bad_b) || atomic_load(&bad_d) || atomic_load(&bad_h))
        ERR("timer signals with a wrong code or value: A %d, B %d, D %d, H %d", atomic_load(&bad_a), atomic_load(&bad_b),
            atomic_load(&bad_d), atomic_load(&bad_h));

    gate(3);

    timer_t all[] = {ta, tb, tc, td, tf, tg, th, te, tp};
    for (unsigned i = 0; i < sizeof all / sizeof all[0]; i++)
        if (timer_delete(all[i]) != 0) ERR("timer_delete %u: %s", i, strerror(errno));
    printf("done\n");
    return probe_exit_code();
}
