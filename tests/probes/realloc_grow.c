/* Large malloc'd blocks grown with realloc after a restart keep their contents and the
 * grown part is usable, also after a restart that mapped the memory straight from the
 * image (crrestart's default).
 *
 * glibc serves blocks this large with one mmap each; blocks allocated one after another
 * are adjacent, so the kernel merges them into one mapping, and at restart they form one
 * run of the image. glibc's realloc grows such a block with its internal mremap, which no
 * wrapper sees: if the block were a plain private mapping of the image file, mremap would
 * extend it over the rest of the file and past its end, and touching the grown part would
 * raise SIGBUS. Each block is grown far past the image's size and written all over.
 */
#include "gate.h"

#include <stdint.h>
#include <stdlib.h>

#define MIB (1ul << 20)
#define NBLOCKS 4

int main(void) {
    unsigned char *blk[NBLOCKS];
    unsigned long long h[NBLOCKS];
    for (int i = 0; i < NBLOCKS; i++) {
        blk[i] = malloc(2 * MIB);
        if (!blk[i]) return 2;
        random_fill(blk[i], 2 * MIB);
        h[i] = fnv1a(blk[i], 2 * MIB, FNV_INIT);
    }
    printf("filled\n");
    gate(1);

    for (int i = 0; i < NBLOCKS; i++) {
        size_t big = (size_t)(64 + 16 * i) * MIB;
        unsigned char *p = realloc(blk[i], big);
        if (!p) ERR("realloc of block %d failed", i);
        if (fnv1a(p, 2 * MIB, FNV_INIT) != h[i]) ERR("block %d lost its contents when grown", i);
        memset(p + 2 * MIB, 0x5a, big - 2 * MIB);
        if (p[big - 1] != 0x5a) ERR("block %d: the grown part does not keep what was written", i);
        blk[i] = p;
    }
    printf("grown ok\n");
    gate(2);
    for (int i = 0; i < NBLOCKS; i++) free(blk[i]);
    gate(3);
    return probe_exit_code();
}
