/* Single-threaded memory probe.
 *
 * Builds deterministic content in every kind of memory a process has (globals in .data and
 * .bss, malloc'd heap blocks small and large (> 128 KiB: mmap'd by malloc), anonymous
 * mmaps dense and sparse, shared anonymous memory, a PROT_READ region, a PROT_NONE guard
 * page, a MAP_PRIVATE file mapping it modified, brk grown with sbrk, deep stack frames),
 * then passes three gates, verifying and changing the memory between them, and prints
 * checksums of everything at the end. Output depends only on the content, never on
 * addresses or timing.
 */
#include "gate.h"

#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096


/* Globals: initialized data, zero-initialized data, and a pointer into rodata. */
static unsigned char g_data[3 * PAGE + 123] = {1, 2, 3, 4, 5};
static unsigned char g_bss[5 * PAGE + 77];
static const char *g_rodata = "constant string that lives in .rodata";

/* Heap blocks. */
#define NBLK 8
static const size_t blk_size[NBLK] = {16, 100, 4000, 65536, 200 * 1024, 1 << 20, 3 << 20, 777};
static unsigned char *blk[NBLK];
static uint64_t blk_sum[NBLK];

/* Expected checksums of each region, updated whenever the probe changes a region. */
struct region {
    const char *name;
    unsigned char *p;
    size_t len;
    uint64_t sum;
};
enum { R_DATA, R_BSS, R_ANON, R_SPARSE, R_SHARED, R_RO, R_GUARDED_LO, R_GUARDED_HI, R_FILEMAP, R_BRK, R_COUNT };
static struct region reg[R_COUNT];

static void expect(int r) { reg[r].sum = fnv1a(reg[r].p, reg[r].len, FNV_INIT); }
static void expect_all(void) {
    for (int r = 0; r < R_COUNT; r++)
        if (reg[r].p) expect(r);
    for (int b = 0; b < NBLK; b++) blk_sum[b] = fnv1a(blk[b], blk_size[b], FNV_INIT);
}
static void verify_all(const char *when) {
    int bad = 0;
    for (int r = 0; r < R_COUNT; r++) {
        if (!reg[r].p) continue;
        if (fnv1a(reg[r].p, reg[r].len, FNV_INIT) != reg[r].sum) {
            ERR("%s: region %s changed behind the program's back", when, reg[r].name);
            bad++;
        }
    }
    for (int b = 0; b < NBLK; b++) {
        if (fnv1a(blk[b], blk_size[b], FNV_INIT) != blk_sum[b]) {
            ERR("%s: heap block %d (%zu bytes) changed behind the program's back", when, b, blk_size[b]);
            bad++;
        }
    }
    if (strcmp(g_rodata, "constant string that lives in .rodata") != 0) {
        ERR("%s: rodata string changed", when);
        bad++;
    }
    if (!bad) printf("%s: all memory intact\n", when);
}

/* Deep stack: 40 frames of 1 KiB each, verified on the way back up after the gate. */
static uint64_t deep_gate(int depth, int k) {
    volatile unsigned char buf[1024];
    for (int i = 0; i < 1024; i++) buf[i] = (unsigned char)(depth * 31 + i * 7);
    uint64_t h = depth == 0 ? (gate(k), 0) : deep_gate(depth - 1, k);
    for (int i = 0; i < 1024; i++) {
        if (buf[i] != (unsigned char)(depth * 31 + i * 7)) {
            ERR("stack frame at depth %d corrupted at byte %d", depth, i);
            break;
        }
    }
    return h * 31 + buf[depth];
}

static sigjmp_buf fault_jmp;
static volatile void *fault_addr;
static void on_segv(int sig, siginfo_t *si, void *uc) {
    (void)sig;
    (void)uc;
    fault_addr = si->si_addr;
    siglongjmp(fault_jmp, 1);
}

/* 1 if touching p (read, or write when write != 0) faults with SIGSEGV at p. */
static int faults(volatile unsigned char *p, int write) {
    fault_addr = NULL;
    if (sigsetjmp(fault_jmp, 1) == 0) {
        if (write)
            *p = 1;
        else
            (void)*p;
        return 0;
    }
    return fault_addr == (void *)p;
}

/* The permission field of the /proc/self/maps line that contains addr. */
static const char *perms_of(void *addr) {
    static char perms[8];
    strcpy(perms, "?");
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) return perms;
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        char pr[8];
        if (sscanf(line, "%lx-%lx %7s", &lo, &hi, pr) == 3 && (unsigned long)addr >= lo &&
            (unsigned long)addr < hi) {
            strcpy(perms, pr);
            break;
        }
    }
    fclose(f);
    return perms;
}

static unsigned char file_byte(size_t i) { return (unsigned char)((i * 7 + 3) ^ (i >> 9)); }

int main(void) {
    /* --- globals --- */
    random_fill(g_data, sizeof g_data);
    random_fill(g_bss + 1000, 2 * PAGE); /* partially written .bss */
    reg[R_DATA] = (struct region){"data", g_data, sizeof g_data, 0};
    reg[R_BSS] = (struct region){"bss", g_bss, sizeof g_bss, 0};

    /* --- heap --- */
    for (int b = 0; b < NBLK; b++) {
        blk[b] = malloc(blk_size[b]);
        if (!blk[b]) {
            ERR("malloc(%zu) failed", blk_size[b]);
            return 1;
        }
        random_fill(blk[b], blk_size[b]);
    }

    /* --- anonymous mmaps --- */
    unsigned char *anon = mmap(NULL, 16 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    const size_t sparse_len = 64u << 20; /* mostly never touched: must read back as zeros */
    unsigned char *sparse =
        mmap(NULL, sparse_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    unsigned char *shared = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    unsigned char *ro = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    unsigned char *guarded = mmap(NULL, 3 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (anon == MAP_FAILED || sparse == MAP_FAILED || shared == MAP_FAILED || ro == MAP_FAILED ||
        guarded == MAP_FAILED) {
        ERR("mmap failed: %s", strerror(errno));
        return 1;
    }
    random_fill(anon, 16 * PAGE);
    for (size_t off = 0; off < sparse_len; off += 97 * PAGE) random_fill(sparse + off, 64);
    random_fill(shared, 4 * PAGE);
    random_fill(ro, 4 * PAGE);
    random_fill(guarded, 3 * PAGE);
    if (mprotect(ro, 4 * PAGE, PROT_READ) != 0) ERR("mprotect(PROT_READ): %s", strerror(errno));
    if (mprotect(guarded + PAGE, PAGE, PROT_NONE) != 0) ERR("mprotect(PROT_NONE): %s", strerror(errno));
    reg[R_ANON] = (struct region){"anon", anon, 16 * PAGE, 0};
    reg[R_SPARSE] = (struct region){"sparse", sparse, sparse_len, 0};
    reg[R_SHARED] = (struct region){"shared-anon", shared, 4 * PAGE, 0};
    reg[R_RO] = (struct region){"read-only", ro, 4 * PAGE, 0};
    reg[R_GUARDED_LO] = (struct region){"below-guard", guarded, PAGE, 0};
    reg[R_GUARDED_HI] = (struct region){"above-guard", guarded + 2 * PAGE, PAGE, 0};

    /* --- a private file mapping, modified in memory only --- */
    const size_t file_len = 8 * PAGE;
    {
        int fd = open("mapped.dat", O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0) {
            ERR("create mapped.dat: %s", strerror(errno));
            return 1;
        }
        unsigned char *buf = malloc(file_len);
        for (size_t i = 0; i < file_len; i++) buf[i] = file_byte(i);
        if (write(fd, buf, file_len) != (ssize_t)file_len) ERR("write mapped.dat: %s", strerror(errno));
        free(buf);
        unsigned char *fm = mmap(NULL, file_len, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
        close(fd);
        if (fm == MAP_FAILED) {
            ERR("mmap mapped.dat: %s", strerror(errno));
            return 1;
        }
        random_fill(fm + 2 * PAGE + 100, 300);
        random_fill(fm + 5 * PAGE, PAGE);
        reg[R_FILEMAP] = (struct region){"file-private", fm, file_len, 0};
    }

    /* --- brk --- */
    unsigned char *brk0 = sbrk(64 * 1024);
    if (brk0 == (void *)-1) {
        ERR("sbrk: %s", strerror(errno));
        return 1;
    }
    random_fill(brk0, 64 * 1024);
    reg[R_BRK] = (struct region){"brk", brk0, 64 * 1024, 0};

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSEGV, &sa, NULL);

    expect_all();
    printf("setup done: %d heap blocks, 7 mappings, %d KiB of brk\n", NBLK, 64);
    uint64_t stack_sum = deep_gate(40, 1);
    verify_all("after gate 1");
    printf("stack frames: %016llx\n", (unsigned long long)stack_sum);

    /* Change things after the first checkpoint. */
    free(blk[1]);
    blk[1] = malloc(blk_size[1]);
    random_fill(blk[1], blk_size[1]);
    free(blk[4]); /* an mmap'd chunk goes away and comes back */
    blk[4] = malloc(blk_size[4]);
    random_fill(blk[4], blk_size[4]);
    random_fill(anon + 3 * PAGE, PAGE);
    random_fill(sparse + sparse_len - PAGE, 16);
    random_fill(reg[R_FILEMAP].p + 6 * PAGE, 17);
    random_fill(shared + PAGE, 8);
    g_bss[sizeof g_bss - 1] = 0x5a;
    expect_all();

    gate(2);
    verify_all("after gate 2");

    /* brk growth after the (possible) restart. */
    unsigned char *brk1 = sbrk(256 * 1024);
    if (brk1 == (void *)-1) {
        ERR("sbrk after gate 2: %s", strerror(errno));
    } else {
        random_fill(brk1, 256 * 1024);
        uint64_t h = fnv1a(brk1, 256 * 1024, FNV_INIT);
        printf("brk grew by 256 KiB: %016llx\n", (unsigned long long)h);
        if (sbrk(0) != brk1 + 256 * 1024) ERR("sbrk(0) is not the new break");
    }
    /* More heap after the restart too. */
    unsigned char *late = malloc(300 * 1024);
    random_fill(late, 300 * 1024);
    printf("late malloc: %016llx\n", (unsigned long long)fnv1a(late, 300 * 1024, FNV_INIT));
    free(late);

    /* The file behind the private mapping must not have changed. */
    {
        int fd = open("mapped.dat", O_RDONLY | O_CLOEXEC);
        unsigned char *buf = malloc(file_len);
        ssize_t n = fd >= 0 ? read(fd, buf, file_len) : -1;
        int same = n == (ssize_t)file_len;
        for (size_t i = 0; same && i < file_len; i++) same = buf[i] == file_byte(i);
        printf("mapped.dat on disk unchanged: %s\n", same ? "yes" : "no");
        if (fd >= 0) close(fd);
        free(buf);
        /* Unmodified pages of the mapping still show the file's bytes. */
        int page0 = 1;
        for (size_t i = 0; i < PAGE; i++) page0 &= reg[R_FILEMAP].p[i] == file_byte(i);
        printf("unmodified mapped page reads the file: %s\n", page0 ? "yes" : "no");
    }

    /* Zero pages of the sparse mapping are still zero. */
    {
        size_t nonzero = 0;
        for (size_t off = PAGE; off < sparse_len; off += 97 * PAGE)
            for (size_t i = 0; i < PAGE - 64; i++) nonzero += sparse[off + 64 + i] != 0;
        printf("sparse mapping zero pages: %s\n", nonzero ? "no" : "yes");
    }

    /* Protections. */
    printf("read-only region perms: %s\n", perms_of(ro));
    printf("guard page perms: %s\n", perms_of(guarded + PAGE));
    printf("shared region perms: %s\n", perms_of(shared));
    printf("write to read-only region faults: %s\n", faults(ro + 5, 1) ? "yes" : "no");
    printf("read of guard page faults: %s\n", faults(guarded + PAGE + 8, 0) ? "yes" : "no");

    for (int r = 0; r < R_COUNT; r++)
        printf("region %-12s %8zu bytes  %016llx\n", reg[r].name, reg[r].len,
               (unsigned long long)fnv1a(reg[r].p, reg[r].len, FNV_INIT));
    for (int b = 0; b < NBLK; b++)
        printf("heap block %d %8zu bytes  %016llx\n", b, blk_size[b],
               (unsigned long long)fnv1a(blk[b], blk_size[b], FNV_INIT));

    gate(3);
    printf("done\n");
    fflush(stdout);
    return probe_exit_code();
}
