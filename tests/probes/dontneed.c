/* Memory given back with madvise(MADV_DONTNEED) reads zeros, and a large block grown with
 * mremap (as realloc does) has zeros in its new part, also after a restart that mapped the
 * memory straight from the image (crrestart's default).
 *
 * An 8 MiB anonymous area and a 4 MiB one are filled with data; gate 1 (the checkpoint);
 * then 2 MiB in the middle of the first are given back with MADV_DONTNEED and must read
 * zeros while the rest is intact, and the second is grown to 8 MiB with mremap (falling
 * back to copying when mremap refuses, like glibc's realloc): its old part must be intact
 * and its new part zero.
 */
#include "gate.h"

#include <stdint.h>
#include <sys/mman.h>

#define MIB (1ul << 20)

static int all_zero(const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i]) return 0;
    return 1;
}

int main(void) {
    probe_rng = 0x2545f4914f6cdd1dull;
    unsigned char *a = mmap(NULL, 8 * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    unsigned char *b = mmap(NULL, 4 * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (a == MAP_FAILED || b == MAP_FAILED) return 2;
    random_fill(a, 8 * MIB);
    random_fill(b, 4 * MIB);
    unsigned long long ha_lo = fnv1a(a, MIB, FNV_INIT), ha_hi = fnv1a(a + 3 * MIB, 5 * MIB, FNV_INIT);
    unsigned long long hb = fnv1a(b, 4 * MIB, FNV_INIT);
    printf("filled\n");
    gate(1);

    if (madvise(a + MIB, 2 * MIB, MADV_DONTNEED) != 0) ERR("madvise: %s", strerror(errno));
    if (!all_zero(a + MIB, 2 * MIB)) ERR("memory given back with MADV_DONTNEED does not read zeros");
    if (fnv1a(a, MIB, FNV_INIT) != ha_lo || fnv1a(a + 3 * MIB, 5 * MIB, FNV_INIT) != ha_hi)
        ERR("MADV_DONTNEED changed memory outside its range");
    printf("dontneed ok\n");

    unsigned char *c = mremap(b, 4 * MIB, 8 * MIB, MREMAP_MAYMOVE);
    if (c == MAP_FAILED) {
        c = mmap(NULL, 8 * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (c == MAP_FAILED) return 2;
        memcpy(c, b, 4 * MIB);
        munmap(b, 4 * MIB);
    }
    if (fnv1a(c, 4 * MIB, FNV_INIT) != hb) ERR("the grown block lost its contents");
    if (!all_zero(c + 4 * MIB, 4 * MIB)) ERR("the grown part of a block does not read zeros");
    printf("grow ok\n");
    gate(2);
    gate(3);
    return probe_exit_code();
}
