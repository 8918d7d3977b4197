/* bench/compute.c: a compute-bound loop (no system calls); prints the CPU time it took, in
 * ms (CPU time, so that other processes on a shared machine do not count). */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 200000000;
    struct timespec a, b;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &a);
    double x = 0.5, y = 0.25;
    unsigned long h = 1469598103934665603ul;
    for (long i = 0; i < n; i++) {
        x = x * 1.0000001 + y;
        y = y * 0.9999999 - x * 1e-9;
        h = (h ^ (unsigned long)i) * 1099511628211ul;
    }
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &b);
    printf("%.1f\n", (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) * 1e-6);
    fprintf(stderr, "%g %g %lu\n", x, y, h);
    return 0;
}
