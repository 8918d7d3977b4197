/* Run in a fresh pid namespace (as root) with CR_VPIDS naming PROBE_VIRT as the virtual
 * pid of another process: the probe makes the kernel's next pid PROBE_VIRT
 * (ns_last_pid) and forks. Under crust the child must not get that pid (the program
 * would see two processes with one pid): the fork is done again. Without crust (or with
 * the protection broken) the child gets it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

int main(void) {
    const char *v = getenv("PROBE_VIRT");
    if (!v) return 2;
    int n = atoi(v);
    FILE *f = fopen("/proc/sys/kernel/ns_last_pid", "w");
    if (!f) {
        perror("ns_last_pid");
        return 3;
    }
    fprintf(f, "%d", n - 1);
    fclose(f);
    pid_t c = fork();
    if (c < 0) return 4;
    if (c == 0) _exit(getpid() == n ? 1 : 0);
    int st = 0;
    if (waitpid(c, &st, 0) != c) return 5;
    fprintf(stderr, "c=%d n=%d st=%d me=%d\n", c, n, st, getpid());
    printf("%s\n", c != n && WIFEXITED(st) && WEXITSTATUS(st) == 0 ? "pid kept apart" : "pid collision");
    return 0;
}
