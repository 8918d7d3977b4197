/* Multi-threaded probe.
 *
 * At gate 1 the process has:
 *   - 4 workers that did mutex-protected work and wait in a pthread_barrier with main,
 *   - a thread blocked in read() on an empty pipe,
 *   - a thread blocked in nanosleep(1 s),
 *   - a thread blocked in poll() on another empty pipe,
 *   - a thread waiting on a condition variable,
 * each with its own __thread value. After gate 1, main feeds the pipes, signals the
 * condvar, joins the barrier, and creates and joins more threads; after gate 2 it creates
 * and joins another batch and joins everything else. Every blocking call must complete
 * normally (no EINTR, no short result); gettid(), pthread_self() and getpid() must be the
 * same before and after. Only main prints, in a fixed order, so the output is
 * deterministic.
 */
#include "gate.h"

#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <unistd.h>

#define NWORK 4
#define ROUNDS 20000

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;      /* the condvar waiter's */
static pthread_cond_t ready_cv = PTHREAD_COND_INITIALIZER; /* "about to block" */
static int ready;
static int cond_flag;
static long shared_counter;
static pthread_barrier_t barrier;
static int pipe_read[2], pipe_poll[2];

static __thread uint64_t tls_value;
static __thread char tls_name[32];

struct result {
    pid_t tid_before;
    pthread_t self_before;
    int tid_same, self_same, tls_same;
    uint64_t work;
    char msg[200];
    char err[300];
};

static void record_identity(struct result *r, uint64_t tls) {
    tls_value = tls;
    snprintf(tls_name, sizeof tls_name, "tls-%llu", (unsigned long long)tls);
    r->tid_before = gettid();
    r->self_before = pthread_self();
}

static void check_identity(struct result *r, uint64_t tls) {
    char expect[32];
    snprintf(expect, sizeof expect, "tls-%llu", (unsigned long long)tls);
    r->tid_same = gettid() == r->tid_before;
    r->self_same = pthread_equal(pthread_self(), r->self_before);
    r->tls_same = tls_value == tls && strcmp(tls_name, expect) == 0;
}

static void about_to_block(void) {
    pthread_mutex_lock(&mu);
    ready++;
    pthread_cond_broadcast(&ready_cv);
    pthread_mutex_unlock(&mu);
}

static uint64_t churn(uint64_t seed, int rounds) {
    uint64_t h = seed;
    for (int i = 0; i < rounds; i++) {
        pthread_mutex_lock(&mu);
        shared_counter++;
        pthread_mutex_unlock(&mu);
        h = h * 6364136223846793005ull + 1442695040888963407ull;
    }
    return h;
}

static struct result workers[NWORK], reader, sleeper, poller, waiter;

static void *worker_main(void *arg) {
    int i = (int)(intptr_t)arg;
    struct result *r = &workers[i];
    record_identity(r, 100 + i);
    r->work = churn(i, ROUNDS);
    about_to_block();
    int rc = pthread_barrier_wait(&barrier);
    if (rc != 0 && rc != PTHREAD_BARRIER_SERIAL_THREAD) snprintf(r->err, sizeof r->err, "barrier: %s", strerror(rc));
    r->work ^= churn(r->work, ROUNDS);
    check_identity(r, 100 + i);
    return NULL;
}

static void *reader_main(void *arg) {
    (void)arg;
    struct result *r = &reader;
    record_identity(r, 200);
    about_to_block();
    char buf[64] = {0};
    ssize_t n = read(pipe_read[0], buf, sizeof buf - 1);
    if (n < 0)
        snprintf(r->err, sizeof r->err, "read() on pipe failed: %s", strerror(errno));
    else
        snprintf(r->msg, sizeof r->msg, "read %zd bytes: %.*s", n, (int)strcspn(buf, "\n"), buf);
    check_identity(r, 200);
    return NULL;
}

static void *sleeper_main(void *arg) {
    (void)arg;
    struct result *r = &sleeper;
    record_identity(r, 300);
    about_to_block();
    struct timespec ts = {1, 0}, rem = {0, 0};
    if (nanosleep(&ts, &rem) != 0)
        snprintf(r->err, sizeof r->err, "nanosleep() failed: %s (%ld.%09ld s left)", strerror(errno), (long)rem.tv_sec,
                 rem.tv_nsec);
    else
        snprintf(r->msg, sizeof r->msg, "nanosleep returned 0");
    check_identity(r, 300);
    return NULL;
}

static void *poller_main(void *arg) {
    (void)arg;
    struct result *r = &poller;
    record_identity(r, 400);
    about_to_block();
    struct pollfd p = {.fd = pipe_poll[0], .events = POLLIN};
    int n = poll(&p, 1, -1);
    if (n < 0) {
        snprintf(r->err, sizeof r->err, "poll() failed: %s", strerror(errno));
    } else {
        char buf[64] = {0};
        ssize_t got = read(pipe_poll[0], buf, sizeof buf - 1);
        snprintf(r->msg, sizeof r->msg, "poll returned %d revents=%s, then read %zd bytes: %.*s", n,
                 (p.revents & POLLIN) ? "POLLIN" : "other", got, (int)strcspn(buf, "\n"), buf);
    }
    check_identity(r, 400);
    return NULL;
}

static void *waiter_main(void *arg) {
    (void)arg;
    struct result *r = &waiter;
    record_identity(r, 500);
    pthread_mutex_lock(&mu);
    ready++;
    pthread_cond_broadcast(&ready_cv);
    while (!cond_flag) {
        int rc = pthread_cond_wait(&cv, &mu);
        if (rc != 0) snprintf(r->err, sizeof r->err, "pthread_cond_wait: %s", strerror(rc));
    }
    pthread_mutex_unlock(&mu);
    snprintf(r->msg, sizeof r->msg, "condition observed: flag=%d", cond_flag);
    check_identity(r, 500);
    return NULL;
}

struct late {
    int idx;
    uint64_t out;
    int tls_ok;
};
static void *late_main(void *arg) {
    struct late *l = arg;
    tls_value = 1000 + l->idx;
    l->out = churn(l->idx * 77, ROUNDS / 4);
    l->tls_ok = tls_value == (uint64_t)(1000 + l->idx);
    return NULL;
}

static void run_batch(const char *name, int n, int base) {
    pthread_t t[8];
    struct late l[8];
    for (int i = 0; i < n; i++) {
        l[i] = (struct late){.idx = base + i};
        int rc = pthread_create(&t[i], NULL, late_main, &l[i]);
        if (rc != 0) ERR("%s: pthread_create: %s", name, strerror(rc));
    }
    for (int i = 0; i < n; i++) {
        int rc = pthread_join(t[i], NULL);
        if (rc != 0) ERR("%s: pthread_join: %s", name, strerror(rc));
        printf("%s thread %d: work %016llx tls %s\n", name, i, (unsigned long long)l[i].out, l[i].tls_ok ? "ok" : "BAD");
    }
}

static void print_result(const char *name, struct result *r) {
    if (r->err[0]) ERR("%s: %s", name, r->err);
    if (r->msg[0]) printf("%s: %s\n", name, r->msg);
    printf("%s: gettid unchanged %s, pthread_self unchanged %s, __thread intact %s\n", name,
           r->tid_same ? "yes" : "no", r->self_same ? "yes" : "no", r->tls_same ? "yes" : "no");
}

int main(void) {
    if (pipe(pipe_read) != 0 || pipe(pipe_poll) != 0) {
        ERR("pipe: %s", strerror(errno));
        return 1;
    }
    pthread_barrier_init(&barrier, NULL, NWORK + 1);
    pid_t pid_before = getpid(), main_tid_before = gettid();
    pthread_t main_self_before = pthread_self();
    tls_value = 42;

    pthread_t tw[NWORK], tr, ts, tp, tc;
    for (int i = 0; i < NWORK; i++) pthread_create(&tw[i], NULL, worker_main, (void *)(intptr_t)i);
    pthread_create(&tr, NULL, reader_main, NULL);
    pthread_create(&ts, NULL, sleeper_main, NULL);
    pthread_create(&tp, NULL, poller_main, NULL);
    pthread_create(&tc, NULL, waiter_main, NULL);

    /* Wait until every thread is about to block, so that the checkpoint at gate 1 finds
     * them blocked (the output does not depend on it). */
    pthread_mutex_lock(&mu);
    while (ready < NWORK + 4) pthread_cond_wait(&ready_cv, &mu);
    pthread_mutex_unlock(&mu);
    printf("%d threads started\n", NWORK + 4);

    gate(1);

    if (write(pipe_read[1], "hello reader\n", 13) != 13) ERR("write to reader pipe: %s", strerror(errno));
    if (write(pipe_poll[1], "hello poller\n", 13) != 13) ERR("write to poller pipe: %s", strerror(errno));
    pthread_mutex_lock(&mu);
    cond_flag = 1;
    pthread_cond_signal(&cv);
    pthread_mutex_unlock(&mu);
    int rc = pthread_barrier_wait(&barrier);
    if (rc != 0 && rc != PTHREAD_BARRIER_SERIAL_THREAD) ERR("main barrier: %s", strerror(rc));
    run_batch("after-gate-1", 2, 10);

    gate(2);

    run_batch("after-gate-2", 3, 20);
    for (int i = 0; i < NWORK; i++) pthread_join(tw[i], NULL);
    pthread_join(tr, NULL);
    pthread_join(ts, NULL);
    pthread_join(tp, NULL);
    pthread_join(tc, NULL);

    for (int i = 0; i < NWORK; i++) {
        char name[32];
        snprintf(name, sizeof name, "worker %d", i);
        printf("%s: work %016llx\n", name, (unsigned long long)workers[i].work);
        print_result(name, &workers[i]);
    }
    print_result("reader", &reader);
    print_result("sleeper", &sleeper);
    print_result("poller", &poller);
    print_result("condvar waiter", &waiter);
    printf("shared counter: %ld\n", shared_counter);
    printf("main: getpid unchanged %s, gettid unchanged %s, pthread_self unchanged %s, __thread intact %s\n",
           getpid() == pid_before ? "yes" : "no", gettid() == main_tid_before ? "yes" : "no",
           pthread_equal(pthread_self(), main_self_before) ? "yes" : "no", tls_value == 42 ? "yes" : "no");
    printf("gettid of main equals getpid: %s\n", gettid() == getpid() ? "yes" : "no");

    gate(3);
    printf("done\n");
    fflush(stdout);
    return probe_exit_code();
}
