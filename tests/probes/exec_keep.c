/* exec keeps the process's identity. P forks a child C (which waits to be killed), then
 * at gate 1 execs itself with an empty environment; the new program checks that
 * getpid(), getppid() and readlink(/proc/self) are what they were, kills C by the pid
 * fork returned before the exec, reaps it and checks its status.
 *
 *   exec_keep                        before the exec
 *   exec_keep --after PID C PPID     after it
 */
#include "gate.h"
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static int self_link_pid(void) {
    char buf[64] = {0};
    ssize_t n = readlink("/proc/self", buf, sizeof buf - 1);
    return n > 0 ? atoi(buf) : -1;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOFBF, 1 << 16);
    if (argc >= 5 && strcmp(argv[1], "--after") == 0) {
        pid_t before = atoi(argv[2]), c = atoi(argv[3]), ppid = atoi(argv[4]);
        if (getpid() != before) ERR("getpid() changed across exec");
        if (getppid() != ppid) ERR("getppid() changed across exec");
        if (self_link_pid() != before) ERR("readlink(/proc/self) after exec");
        if (kill(c, SIGTERM) != 0) ERR("kill(C) after exec: %s", strerror(errno));
        int st = 0;
        if (waitpid(c, &st, 0) != c || !WIFSIGNALED(st) || WTERMSIG(st) != SIGTERM) ERR("waitpid(C) after exec");
        printf("after exec: same pid, child reaped\n");
        gate(2);
        gate(3);
        return probe_exit_code();
    }
    fflush(stdout);
    pid_t c = fork();
    if (c < 0) return 2;
    if (c == 0) {
        for (;;) pause();
    }
    printf("before exec\n");
    gate(1);
    char pid[16], cs[16], pp[16];
    snprintf(pid, sizeof pid, "%d", getpid());
    snprintf(cs, sizeof cs, "%d", c);
    snprintf(pp, sizeof pp, "%d", getppid());
    char gate_env[4200] = "";
    const char *g = getenv("CR_TEST_GATE");
    char *env[2] = {NULL, NULL};
    if (g) {
        snprintf(gate_env, sizeof gate_env, "CR_TEST_GATE=%s", g);
        env[0] = gate_env;
    }
    char *args[] = {argv[0], "--after", pid, cs, pp, NULL};
    fflush(stdout);
    execve("/proc/self/exe", args, env);
    ERR("execve: %s", strerror(errno));
    return 1;
}
