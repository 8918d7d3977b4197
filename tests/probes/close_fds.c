/* While waiting at gate 1 (where the checkpoint is taken) and right after a restart, the
 * program keeps opening and closing fds and checks that every close succeeds. A
 * stop-the-world checkpoint records the preload's own fds of that moment (the image file
 * being written is one, at a low number); if a restart kept that record until the new
 * checkpoint thread started, the program could not close its own fd of the same number
 * (the close wrapper says EBADF) in the meantime, and the file stayed open. The gate-1
 * wait is written out here (gate.h's, plus the open/close), so that the restored
 * program does it from its first instruction on.
 */
#include "gate.h"
#include <fcntl.h>
#include <unistd.h>

static int bad;

static void churn(void) {
    int fds[16];
    for (int i = 0; i < 16; i++) fds[i] = open("/dev/null", O_RDONLY);
    for (int i = 0; i < 16; i++)
        if (fds[i] < 0 || close(fds[i]) != 0) {
            if (!bad) ERR("close(%d): %s", fds[i], strerror(errno));
            bad++;
        }
}

int main(void) {
    printf("ready\n");
    printf("gate 1\n");
    fflush(stdout);
    const char *dir = getenv("CR_TEST_GATE");
    if (dir && *dir) {
        char reached[4096], go[4096];
        snprintf(reached, sizeof reached, "%s/reached-1", dir);
        snprintf(go, sizeof go, "%s/go-1", dir);
        gate_mark(reached);
        while (!gate_exists(go)) {
            if (!gate_exists(reached)) gate_mark(reached);
            churn();
            struct timespec ts = {0, 200000};
            nanosleep(&ts, NULL);
        }
    }
    for (int round = 0; round < 8; round++) churn();
    printf("fds opened and closed, %d failures\n", bad);
    gate(2);
    gate(3);
    return probe_exit_code();
}
