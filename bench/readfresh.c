/* bench/readfresh.c: read a file into freshly mapped anonymous memory with one pread, as
 * any eager restorer must (the kernel allocates and zeroes every page first); prints the
 * time in nanoseconds. The baseline of the eager restart benchmark, next to dd (which
 * reads into one reused buffer). */
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) return 3;
    size_t len = (size_t)lseek(fd, 0, SEEK_END);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return 3;
    size_t done = 0;
    while (done < len) {
        ssize_t n = pread(fd, m + done, len - done, (off_t)done);
        if (n <= 0) return 4;
        done += (size_t)n;
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%lld\n", (long long)(b.tv_sec - a.tv_sec) * 1000000000ll + (b.tv_nsec - a.tv_nsec));
    return 0;
}
