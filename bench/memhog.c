/* bench/memhog.c: hold SIZE_MIB MiB of memory filled with data of a KIND, for the
 * checkpoint and restart benchmarks.
 *
 *   memhog SIZE_MIB KIND DIR
 *
 * KIND: random (incompressible), text, mixed (text, random, numbers, half-empty pages).
 * Writes DIR/ready once the memory is filled, then polls for DIR/go every millisecond.
 * When DIR/go exists (after a restart) it writes DIR/resumed holding CLOCK_REALTIME in
 * nanoseconds (the moment it runs again), reads every byte (sum), writes DIR/touched with
 * the time after that and the sum, and exits 0.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static const char *words[] = {"checkpoint", "restart", "memory", "the", "of", "process", "and", "page",
                              "image", "kernel", "a", "thread", "signal", "to", "is", "compute",
                              "simulation", "step", "energy", "grid", "value", "in", "for", "with"};

static void fill_random(unsigned char *p, size_t n) {
    for (size_t i = 0; i + 8 <= n; i += 8) {
        uint64_t v = rnd();
        memcpy(p + i, &v, 8);
    }
}
static void fill_text(unsigned char *p, size_t n) {
    size_t i = 0;
    while (i < n) {
        const char *w = words[rnd() % (sizeof words / sizeof *words)];
        size_t l = strlen(w);
        for (size_t k = 0; k < l && i < n; k++) p[i++] = (unsigned char)w[k];
        if (i < n) p[i++] = (rnd() % 11 == 0) ? '\n' : ' ';
    }
}
static void fill_numbers(unsigned char *p, size_t n) {
    double x = 1.0;
    for (size_t i = 0; i + 8 <= n; i += 8) {
        x += 0.001 * (double)(rnd() % 1000);
        memcpy(p + i, &x, 8);
    }
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void write_file(const char *dir, const char *name, const char *text) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) exit(3);
    if (write(fd, text, strlen(text)) < 0) exit(3);
    close(fd);
    rename(tmp, path);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: memhog SIZE_MIB random|text|mixed DIR\n");
        return 2;
    }
    size_t size = (size_t)atol(argv[1]) << 20;
    const char *kind = argv[2], *dir = argv[3];
    unsigned char *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return 3;
    for (size_t off = 0; off < size; off += 1 << 20) {
        size_t n = size - off < (1 << 20) ? size - off : (1 << 20);
        unsigned char *p = m + off;
        if (!strcmp(kind, "random")) {
            fill_random(p, n);
        } else if (!strcmp(kind, "text")) {
            fill_text(p, n);
        } else {
            switch ((off >> 20) % 4) {
            case 0: fill_text(p, n); break;
            case 1: fill_random(p, n); break;
            case 2: fill_numbers(p, n); break;
            default: /* half-empty pages: 512 bytes of data per 4 KiB page */
                for (size_t k = 0; k < n; k += 4096) fill_text(p + k, 512);
            }
        }
    }
    write_file(dir, "ready", "1\n");
    char go[4096];
    snprintf(go, sizeof go, "%s/go", dir);
    struct timespec ms = {0, 1000000};
    while (access(go, F_OK) != 0) nanosleep(&ms, NULL);
    char buf[128];
    snprintf(buf, sizeof buf, "%llu\n", (unsigned long long)now_ns());
    write_file(dir, "resumed", buf);
    uint64_t sum = 0;
    for (size_t i = 0; i < size; i += 8) sum += *(uint64_t *)(m + i);
    snprintf(buf, sizeof buf, "%llu %llu\n", (unsigned long long)now_ns(), (unsigned long long)sum);
    write_file(dir, "touched", buf);
    return 0;
}
