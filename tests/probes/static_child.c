/* Linked statically by the tests: a program the preload cannot enter. Reports like a
 * spawn.c child (kind 'x') on the fd in argv[1], then waits for EOF on RELEASE_FD. */
#include <stdlib.h>
#include <unistd.h>

struct report {
    char kind;
    int pid, ppid;
};

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    struct report r = {'x', getpid(), getppid()};
    if (write(atoi(argv[1]), &r, sizeof r) != sizeof r) return 3;
    const char *rel = getenv("RELEASE_FD");
    char c;
    if (rel)
        while (read(atoi(rel), &c, 1) > 0) {
        }
    return 13;
}
