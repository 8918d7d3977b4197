/* Dirty-memory probe for forked (copy-on-write) checkpoints.
 *
 * Worker threads rewrite a large buffer without pause while checkpoints are taken: each
 * owns a slice and applies read-modify-write steps at pseudo-random positions
 * (slice[i] = mix(slice[i], step)), keeping in its own state (registers and stack) the
 * running sum of its slice, updated with every step. At any instant between two steps the
 * sum over the slice equals the thread's running sum. A snapshot whose memory is not from
 * the same instant as the thread's registers (a page copied after the program resumed,
 * or before a thread stopped) breaks that invariant for good: after a restart the
 * worker's final check fails, and every later step applies to the wrong content.
 *
 * The main thread waits until every worker has done some steps (so they are busy at the
 * checkpoint), then goes through gates 1..3; after gate 3 it stops the workers and each
 * reports whether its invariant held. The output does not depend on how many steps ran.
 *
 * argv[1]: MiB per worker (default 16); argv[2]: workers (default 3); argv[3] "shared": the
 * slices are MAP_SHARED anonymous memory (which a forked copy shares with the program
 * instead of copying on write).
 */
#include "gate.h"
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#define MAXW 16

static uint64_t *slices[MAXW];
static size_t words;
static atomic_int stop_flag;
static atomic_ulong progress[MAXW];
static int result_ok[MAXW];
static uint64_t result_steps[MAXW];

static uint64_t mix(uint64_t x, uint64_t k) {
    x ^= k + 0x9e3779b97f4a7c15ull + (x << 6) + (x >> 2);
    x *= 0xbf58476d1ce4e5b9ull;
    return x ^ (x >> 31);
}

static void *worker(void *arg) {
    int t = (int)(intptr_t)arg;
    uint64_t *s = slices[t];
    /* The running sum and the step counter live in this thread's registers/stack. */
    uint64_t sum = 0;
    for (size_t i = 0; i < words; i++) sum += s[i];
    uint64_t step = 0, pos = (uint64_t)t * 7919;
    while (!atomic_load_explicit(&stop_flag, memory_order_relaxed)) {
        for (int j = 0; j < 256; j++) {
            pos = (pos * 6364136223846793005ull + 1442695040888963407ull) % words;
            uint64_t old = s[pos];
            uint64_t nv = mix(old, step);
            s[pos] = nv;
            sum += nv - old;
            step++;
        }
        atomic_store_explicit(&progress[t], step, memory_order_relaxed);
    }
    uint64_t check = 0;
    for (size_t i = 0; i < words; i++) check += s[i];
    result_ok[t] = check == sum;
    result_steps[t] = step;
    return NULL;
}

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 16;
    int nw = argc > 2 ? atoi(argv[2]) : 3;
    if (nw < 1 || nw > MAXW) nw = 3;
    int shared = argc > 3 && strcmp(argv[3], "shared") == 0;
    words = mib * (1u << 20) / 8;
    for (int t = 0; t < nw; t++) {
        if (shared) {
            void *p = mmap(NULL, words * 8, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
            slices[t] = p == MAP_FAILED ? NULL : p;
        } else {
            slices[t] = malloc(words * 8);
        }
        if (!slices[t]) {
            printf("ERROR: out of memory\n");
            return 1;
        }
        for (size_t i = 0; i < words; i++) slices[t][i] = mix(i, (uint64_t)t);
    }
    printf("dirty: %d workers x %zu MiB%s\n", nw, mib, shared ? " (shared memory)" : "");
    pthread_t th[MAXW];
    for (int t = 0; t < nw; t++) pthread_create(&th[t], NULL, worker, (void *)(intptr_t)t);
    /* Busy workers at every gate: each has done some steps before gate 1. */
    for (int t = 0; t < nw; t++)
        while (atomic_load_explicit(&progress[t], memory_order_relaxed) < 4096) usleep(100);
    gate(1);
    gate(2);
    gate(3);
    atomic_store(&stop_flag, 1);
    for (int t = 0; t < nw; t++) pthread_join(th[t], NULL);
    for (int t = 0; t < nw; t++) {
        if (result_ok[t])
            printf("worker %d: slice matches its running sum\n", t);
        else
            ERR("worker %d: slice does not match its running sum after %llu steps (torn snapshot)", t,
                (unsigned long long)result_steps[t]);
        fprintf(stderr, "worker %d: %llu steps\n", t, (unsigned long long)result_steps[t]);
    }
    return probe_exit_code();
}
