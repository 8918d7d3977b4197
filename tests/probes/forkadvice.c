/* Memory a fork does not copy: an area marked MADV_DONTFORK (absent from a forked child)
 * and one marked MADV_WIPEONFORK (zeros in a forked child), both filled with data, and a
 * plain area. A checkpoint in forked mode (the default) must still store their contents:
 * after a restart all three hold exactly what they held at the checkpoint.
 *
 * Gate 1 (the checkpoint); then each area's hash is compared with the one taken at fill
 * time, and each is written to once more (gate 2), and checked again (gate 3).
 */
#include "gate.h"

#include <stdint.h>
#include <sys/mman.h>

#define MIB (1ul << 20)

int main(void) {
    const char *names[3] = {"MADV_DONTFORK", "MADV_WIPEONFORK", "plain"};
    int advice[3] = {MADV_DONTFORK, MADV_WIPEONFORK, -1};
    unsigned char *area[3];
    unsigned long long hash[3];
    for (int i = 0; i < 3; i++) {
        area[i] = mmap(NULL, 4 * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (area[i] == MAP_FAILED) return 2;
        random_fill(area[i], 4 * MIB);
        if (advice[i] >= 0 && madvise(area[i], 4 * MIB, advice[i]) != 0) ERR("madvise %s: %s", names[i], strerror(errno));
        hash[i] = fnv1a(area[i], 4 * MIB, FNV_INIT);
    }
    printf("filled\n");
    gate(1);
    for (int i = 0; i < 3; i++) {
        if (fnv1a(area[i], 4 * MIB, FNV_INIT) != hash[i]) ERR("the %s area lost its contents", names[i]);
        area[i][i] ^= 1;
    }
    printf("areas ok\n");
    gate(2);
    for (int i = 0; i < 3; i++) {
        area[i][i] ^= 1;
        if (fnv1a(area[i], 4 * MIB, FNV_INIT) != hash[i]) ERR("the %s area changed after gate 2", names[i]);
    }
    printf("areas ok again\n");
    gate(3);
    return probe_exit_code();
}
