/* Floating-point / vector register probe.
 *
 * A worker thread sets unusual FP control state (rounding upward, MXCSR flush-to-zero and
 * denormals-are-zero, x87 precision 53 bits) and then spins in a tight loop that keeps its
 * whole state in registers: four vector accumulators (zmm with AVX-512, else ymm with AVX,
 * else xmm) plus an x87 long double, with no memory traffic except one volatile load of
 * the stop flag per iteration. The checkpoint at gate 1 interrupts that loop. After gate 1
 * main stops the worker, which reports how many iterations k it ran and its registers;
 * main then recomputes k iterations of the same function from scratch and compares the
 * bits. A register that was not saved or restored exactly (including upper vector halves,
 * MXCSR and the x87 control word) makes the comparison fail. The output never mentions k,
 * so it is the same whether the checkpoint happened or not.
 */
#include "gate.h"

#include <fenv.h>
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>

struct acc {
    double v[4][8];
    long double x;
};

#define LOOP_BODY_X87 x += dx;

__attribute__((target("avx512f"), noinline)) static uint64_t spin_avx512(uint64_t kmax, volatile int *stop,
                                                                          struct acc *out) {
    __m512d a = _mm512_set_pd(1, 2, 3, 4, 5, 6, 7, 8), b = _mm512_set_pd(-1.5, .25, 7, 1e6, -3, 11, 13e-3, 2);
    __m512d c = _mm512_set_pd(1. / 3, 1. / 7, 1. / 11, 1. / 13, 1. / 17, 1. / 19, 1. / 23, 1. / 29);
    __m512d d = _mm512_set_pd(1e-3 / 3, 1e-3 / 7, 2e-3 / 11, 3e-3 / 13, 5e-3 / 17, 7e-3 / 19, 1e-3 / 23, 1e-2 / 29);
    __m512d e = _mm512_set1_pd(0.1), f = _mm512_set1_pd(-1e10);
    long double x = 0.1L, dx = 1.0L / 3;
    uint64_t k = 0;
    while (k < kmax && !*stop) {
        a = _mm512_add_pd(a, c);
        b = _mm512_sub_pd(b, d);
        e = _mm512_add_pd(e, d);
        f = _mm512_add_pd(f, c);
        LOOP_BODY_X87
        k++;
    }
    _mm512_storeu_pd(out->v[0], a);
    _mm512_storeu_pd(out->v[1], b);
    _mm512_storeu_pd(out->v[2], e);
    _mm512_storeu_pd(out->v[3], f);
    out->x = x;
    return k;
}

__attribute__((target("avx"), noinline)) static uint64_t spin_avx(uint64_t kmax, volatile int *stop, struct acc *out) {
    __m256d a = _mm256_set_pd(1, 2, 3, 4), b = _mm256_set_pd(-1.5, .25, 7, 1e6);
    __m256d c = _mm256_set_pd(1. / 3, 1. / 7, 1. / 11, 1. / 13);
    __m256d d = _mm256_set_pd(1e-3 / 3, 1e-3 / 7, 2e-3 / 11, 3e-3 / 13);
    __m256d e = _mm256_set1_pd(0.1), f = _mm256_set1_pd(-1e10);
    long double x = 0.1L, dx = 1.0L / 3;
    uint64_t k = 0;
    while (k < kmax && !*stop) {
        a = _mm256_add_pd(a, c);
        b = _mm256_sub_pd(b, d);
        e = _mm256_add_pd(e, d);
        f = _mm256_add_pd(f, c);
        LOOP_BODY_X87
        k++;
    }
    _mm256_storeu_pd(out->v[0], a);
    _mm256_storeu_pd(out->v[1], b);
    _mm256_storeu_pd(out->v[2], e);
    _mm256_storeu_pd(out->v[3], f);
    out->x = x;
    return k;
}

__attribute__((noinline)) static uint64_t spin_sse(uint64_t kmax, volatile int *stop, struct acc *out) {
    __m128d a = _mm_set_pd(1, 2), b = _mm_set_pd(-1.5, .25), c = _mm_set_pd(1. / 3, 1. / 7);
    __m128d d = _mm_set_pd(1e-3 / 3, 1e-3 / 7), e = _mm_set1_pd(0.1), f = _mm_set1_pd(-1e10);
    long double x = 0.1L, dx = 1.0L / 3;
    uint64_t k = 0;
    while (k < kmax && !*stop) {
        a = _mm_add_pd(a, c);
        b = _mm_sub_pd(b, d);
        e = _mm_add_pd(e, d);
        f = _mm_add_pd(f, c);
        LOOP_BODY_X87
        k++;
    }
    _mm_storeu_pd(out->v[0], a);
    _mm_storeu_pd(out->v[1], b);
    _mm_storeu_pd(out->v[2], e);
    _mm_storeu_pd(out->v[3], f);
    out->x = x;
    return k;
}

static uint64_t (*spin)(uint64_t, volatile int *, struct acc *);
static const char *isa;

static unsigned short fpu_cw(void) {
    unsigned short cw;
    __asm__ volatile("fnstcw %0" : "=m"(cw));
    return cw;
}
static void set_fpu_cw(unsigned short cw) { __asm__ volatile("fldcw %0" : : "m"(cw)); }

/* The control state the worker runs under. */
static void set_unusual_fp_state(void) {
    fesetround(FE_UPWARD);
    set_fpu_cw((unsigned short)((fpu_cw() & ~0x300) | 0x200)); /* precision: 53 bits */
    _mm_setcsr(_mm_getcsr() | 0x8040);                          /* FTZ | DAZ */
}

static volatile int stop_flag, worker_running;
static const int never = 0;
static struct acc worker_acc;
static uint64_t worker_k;
static unsigned int mxcsr_before, mxcsr_after;
static unsigned short cw_before, cw_after;
static int round_after;

static void *worker(void *arg) {
    (void)arg;
    set_unusual_fp_state();
    mxcsr_before = _mm_getcsr();
    cw_before = fpu_cw();
    __atomic_store_n(&worker_running, 1, __ATOMIC_SEQ_CST);
    worker_k = spin(UINT64_MAX, &stop_flag, &worker_acc);
    mxcsr_after = _mm_getcsr();
    cw_after = fpu_cw();
    round_after = fegetround();
    return NULL;
}

int main(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) {
        spin = spin_avx512;
        isa = "avx512f";
    } else if (__builtin_cpu_supports("avx")) {
        spin = spin_avx;
        isa = "avx";
    } else {
        spin = spin_sse;
        isa = "sse2";
    }
    printf("vector isa: %s\n", isa);

    /* Main runs with another rounding mode, which must survive too. */
    fesetround(FE_TOWARDZERO);
    unsigned int main_mxcsr = _mm_getcsr();
    unsigned short main_cw = fpu_cw();

    pthread_t t;
    pthread_create(&t, NULL, worker, NULL);
    while (!__atomic_load_n(&worker_running, __ATOMIC_SEQ_CST)) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    printf("worker spinning\n");

    gate(1);

    stop_flag = 1;
    pthread_join(t, NULL);
    printf("worker MXCSR control bits unchanged: %s\n", (mxcsr_after & 0xffc0) == (mxcsr_before & 0xffc0) ? "yes" : "no");
    printf("worker x87 control word unchanged: %s\n", cw_after == cw_before ? "yes" : "no");
    printf("worker rounding mode still upward: %s\n", round_after == FE_UPWARD ? "yes" : "no");
    printf("main rounding mode still toward zero: %s\n", fegetround() == FE_TOWARDZERO ? "yes" : "no");
    printf("main MXCSR and x87 control word unchanged: %s\n",
           (_mm_getcsr() & 0xffc0) == (main_mxcsr & 0xffc0) && fpu_cw() == main_cw ? "yes" : "no");

    /* Recompute worker_k iterations under the same control state and compare the bits. */
    struct acc again;
    memset(&again, 0, sizeof again);
    set_unusual_fp_state();
    uint64_t k2 = spin(worker_k, (volatile int *)&never, &again);
    fesetround(FE_TONEAREST);
    int same_vec = k2 == worker_k && memcmp(worker_acc.v, again.v, sizeof again.v) == 0;
    int same_x87 = memcmp(&worker_acc.x, &again.x, 10) == 0;
    printf("vector registers consistent with an uninterrupted run: %s\n", same_vec ? "yes" : "no");
    printf("x87 register consistent with an uninterrupted run: %s\n", same_x87 ? "yes" : "no");
    if (!same_vec || !same_x87) ERR("floating-point state differs from an uninterrupted run");

    gate(2);
    /* A little FP work after the restart, in the default environment. */
    double s = 0;
    for (int i = 1; i <= 100000; i++) s += 1.0 / ((double)i * i);
    printf("basel sum: %.15f\n", s);
    gate(3);
    printf("done\n");
    fflush(stdout);
    return probe_exit_code();
}
