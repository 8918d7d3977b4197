/* Gating protocol shared by the C probes (see tests/src/lib.rs).
 *
 * At gate K a probe prints "gate K" (always, so that the output has the same shape with
 * and without gating), flushes stdout, and, when CR_TEST_GATE=DIR is set, creates
 * DIR/reached-K and waits until DIR/go-K exists. reached-K is created with mkdir(), never
 * with open(), so that a checkpoint taken at the gate never holds a descriptor on a gate
 * file (the harness deletes gate files between runs). While waiting, the probe re-creates
 * reached-K if it disappears: after a restart the harness deletes every reached-* file, and
 * the re-created one tells it at which gate the restored program resumed.
 */
#ifndef CRUST_GATE_H
#define CRUST_GATE_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Every probe exits with this status when it found nothing wrong. */
#define PROBE_EXIT_CODE 23

static int probe_failures;

/* Report a failed check on stdout, where the comparison with the reference run sees it. */
#define ERR(...)                                                                                                       \
    do {                                                                                                               \
        printf("ERROR: ");                                                                                             \
        printf(__VA_ARGS__);                                                                                           \
        printf("\n");                                                                                                  \
        probe_failures++;                                                                                              \
    } while (0)

__attribute__((unused)) static int probe_exit_code(void) { return probe_failures ? 1 : PROBE_EXIT_CODE; }

/* Pseudo-random data for the memory probes (xorshift64): reproducible from run to run, so
 * a probe's reference run and its checkpointed run fill the same bytes. A probe may set
 * probe_rng first for data of its own. */
static uint64_t probe_rng = 0x9e3779b97f4a7c15ull;

__attribute__((unused)) static uint64_t random_u64(void) {
    probe_rng ^= probe_rng << 13;
    probe_rng ^= probe_rng >> 7;
    probe_rng ^= probe_rng << 17;
    return probe_rng;
}

__attribute__((unused)) static void random_fill(void *p, size_t n) {
    unsigned char *c = p;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v = random_u64();
        memcpy(c + i, &v, 8);
    }
    for (; i < n; i++) c[i] = (unsigned char)random_u64();
}

/* Read exactly n bytes (EINTR retried): 0, or -1 at end of file or on an error. */
__attribute__((unused)) static int read_exact(int fd, void *p, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)p + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        got += (size_t)r;
    }
    return 0;
}

/* Pipes between a probe's processes: a short read or write ends the process (exit 91 / 90),
 * which the comparison with the reference run reports. */
__attribute__((unused)) static void xread(int fd, void *p, size_t n) {
    if (read_exact(fd, p, n) != 0) {
        perror("read");
        _exit(91);
    }
}

__attribute__((unused)) static void xwrite(int fd, const void *p, size_t n) {
    if (write(fd, p, n) != (ssize_t)n) {
        perror("write");
        _exit(90);
    }
}

static int gate_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

static void gate_mark(const char *p) {
    if (mkdir(p, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "gate: mkdir %s: %s\n", p, strerror(errno));
        exit(98);
    }
}

static void gate(int k) {
    printf("gate %d\n", k);
    fflush(stdout);
    const char *dir = getenv("CR_TEST_GATE");
    if (!dir || !*dir) return;
    char reached[4096], go[4096];
    snprintf(reached, sizeof reached, "%s/reached-%d", dir, k);
    snprintf(go, sizeof go, "%s/go-%d", dir, k);
    gate_mark(reached);
    while (!gate_exists(go)) {
        if (!gate_exists(reached)) gate_mark(reached);
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
}

/* FNV-1a, 64 bit. */
__attribute__((unused)) static unsigned long long fnv1a(const void *p, size_t n, unsigned long long h) {
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++) {
        h ^= c[i];
        h *= 0x100000001b3ull;
    }
    return h;
}
#define FNV_INIT 0xcbf29ce484222325ull

#endif
