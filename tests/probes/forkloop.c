/* A tight fork loop, for checkpoints taken while processes are being created and are
 * exiting. After gate 1 the parent forks children one after the other, at least N
 * (argv[1]) and until the file PROBE_STOP_FILE exists; every 8th child forks a grandchild
 * of its own. Each child checks getppid() against the parent's getpid() and exits with a
 * status the parent checks (half of them through exit(), half through _exit()), after
 * living 2 ms.
 */
#include "gate.h"
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static void child(int i, pid_t parent) {
    int bad = getppid() != parent;
    if (i % 8 == 0) {
        pid_t me = getpid();
        pid_t g = fork();
        if (g < 0) _exit(2);
        if (g == 0) _exit(getppid() == me ? 9 : 10);
        int st = 0;
        if (waitpid(g, &st, 0) != g || !WIFEXITED(st) || WEXITSTATUS(st) != 9) bad = 1;
    }
    /* Live a little, so that checkpoints find children running, not only starting or ending. */
    struct timespec ts = {0, 2000000};
    nanosleep(&ts, NULL);
    int code = bad ? 1 : 20 + i % 7;
    if (i % 2)
        exit(code);
    _exit(code);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOFBF, 1 << 16);
    int n = argc > 1 ? atoi(argv[1]) : 200;
    const char *stop = getenv("PROBE_STOP_FILE");
    pid_t me = getpid();
    gate(1);
    int i, errors = 0;
    for (i = 0; i < n || (stop && !gate_exists(stop)); i++) {
        fflush(stdout);
        pid_t c = fork();
        if (c < 0) {
            ERR("fork: %s", strerror(errno));
            break;
        }
        if (c == 0) child(i, me);
        int st = 0;
        pid_t w = waitpid(c, &st, 0);
        if (w != c || !WIFEXITED(st) || WEXITSTATUS(st) != 20 + i % 7) {
            if (errors++ < 5) ERR("child %d: waitpid %d (fork said %d), status %#x", i, w, c, st);
        }
    }
    printf("fork loop done, %s\n", errors ? "with errors" : "every child ok");
    gate(2);
    gate(3);
    return probe_exit_code();
}
