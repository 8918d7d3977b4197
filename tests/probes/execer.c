/* Execs itself after gate 1 (a checkpoint taken at gate 1 may still be writing its image
 * from a forked writer then: the exec must wait for it, not end the process's part of the
 * generation before its image is durable). The exec'd program goes through gates 2 and 3.
 */
#include "gate.h"
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "after") == 0) {
        printf("after exec\n");
        gate(2);
        gate(3);
        return probe_exit_code();
    }
    printf("before exec\n");
    gate(1);
    printf("about to exec\n");
    fflush(stdout);
    execl("/proc/self/exe", argv[0], "after", (char *)NULL);
    ERR("exec: %s", strerror(errno));
    return probe_exit_code();
}
