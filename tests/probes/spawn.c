/* Every way of starting a program: fork + execve with an empty environment, posix_spawn
 * with an environment of its own (no LD_PRELOAD), vfork + execv, popen, system, and fork +
 * exec of a statically linked program (argv[1]; optional), daemon() in a forked child. Every started process reports
 * on a pipe (its pid, its parent's pid, and on stderr whether the preload is in it) and
 * waits on an inherited "release" pipe, so that at gate 1 all of them are alive.
 *
 *   spawn [STATIC_PROGRAM]          the parent
 *   spawn --child KIND REPORT_FD    a started program (KIND: a letter)
 */
#include "gate.h"
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

struct report {
    char kind;
    int pid, ppid;
};

static int preloaded(void) {
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) return 0;
    char line[4096];
    int yes = 0;
    while (fgets(line, sizeof line, f))
        if (strstr(line, "libcrpreload")) yes = 1;
    fclose(f);
    return yes;
}

static int child_main(char kind, int report_fd) {
    struct report r = {kind, getpid(), getppid()};
    fprintf(stderr, "child %c: pid %d preload %s LD_PRELOAD=%s\n", kind, r.pid, preloaded() ? "yes" : "no",
            getenv("LD_PRELOAD") ? getenv("LD_PRELOAD") : "(unset)");
    if (write(report_fd, &r, sizeof r) != sizeof r) return 90;
    close(report_fd);
    /* Wait for the release: EOF on stdin-independent fd 3 is not guaranteed; read until
     * EOF on the release pipe, which the parent passes as RELEASE_FD. */
    const char *rel = getenv("RELEASE_FD");
    int fd = rel && kind != 's' ? atoi(rel) : -1; /* system() waits for its child */
    char c;
    if (fd >= 0)
        while (read(fd, &c, 1) > 0) {
        }
    return kind == 's' ? 11 : 12;
}

static int report_w, release_r, release_w;

static void read_report(int fd, struct report *r) {
    size_t got = 0;
    while (got < sizeof *r) {
        ssize_t n = read(fd, (char *)r + got, sizeof *r - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            ERR("report pipe closed early");
            exit(1);
        }
        got += n;
    }
}

int main(int argc, char **argv) {
    if (argc >= 4 && strcmp(argv[1], "--child") == 0) return child_main(argv[2][0], atoi(argv[3]));
    setvbuf(stdout, NULL, _IOFBF, 1 << 16);
    const char *static_prog = argc >= 2 ? argv[1] : NULL;
    int rep[2], rel[2];
    if (pipe(rep) != 0 || pipe(rel) != 0) return 2;
    report_w = rep[1];
    release_r = rel[0];
    release_w = rel[1];
    fcntl(release_w, F_SETFD, FD_CLOEXEC);
    fcntl(rep[0], F_SETFD, FD_CLOEXEC);
    char fdbuf[16], relbuf[32];
    snprintf(fdbuf, sizeof fdbuf, "%d", report_w);
    snprintf(relbuf, sizeof relbuf, "RELEASE_FD=%d", release_r);
    setenv("RELEASE_FD", relbuf + 11, 1);
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return 3;
    self[n] = 0;
    pid_t me = getpid();
    int expected = 0;
    pid_t pids[8];
    char kinds[8];
    int npids = 0;

    /* e: fork + execve with an environment holding only RELEASE_FD. */
    fflush(stdout);
    pid_t e = fork();
    if (e == 0) {
        char *args[] = {"spawn-exec-child", "--child", "e", fdbuf, NULL};
        char *env[] = {relbuf, NULL};
        execve(self, args, env);
        _exit(127);
    }
    pids[npids] = e, kinds[npids++] = 'e';
    expected++;

    /* p: posix_spawn with its own environment. */
    {
        char *args[] = {"spawn-posix-child", "--child", "p", fdbuf, NULL};
        char *env[] = {relbuf, "FOO=bar", NULL};
        pid_t p;
        int r = posix_spawn(&p, self, NULL, NULL, args, env);
        if (r != 0) ERR("posix_spawn: %s", strerror(r));
        pids[npids] = p, kinds[npids++] = 'p';
        expected++;
    }

    /* v: vfork + execv (current environment). */
    fflush(stdout);
    pid_t v = vfork();
    if (v == 0) {
        char *args[] = {"spawn-vfork-child", "--child", "v", fdbuf, NULL};
        execv(self, args);
        _exit(127);
    }
    pids[npids] = v, kinds[npids++] = 'v';
    expected++;

    /* o: popen (through /bin/sh). */
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "exec '%s' --child o %s", self, fdbuf);
    FILE *po = popen(cmd, "r");
    if (!po) ERR("popen: %s", strerror(errno));
    expected++;

    /* d: daemon() in a forked child: the daemon (an orphan now) reports. */
    fflush(stdout);
    pid_t dm = fork();
    if (dm == 0) {
        close(release_w); /* no exec here: the release pipe's end must not stay open */
        close(rep[0]);
        if (daemon(1, 1) != 0) _exit(3);
        _exit(child_main('d', report_w));
    }
    {
        int s2 = 0;
        if (waitpid(dm, &s2, 0) != dm || !WIFEXITED(s2) || WEXITSTATUS(s2) != 0) ERR("daemon()'s parent: status %d", s2);
    }
    expected++;

    /* x: fork + exec of a static program (outside control), if given. */
    pid_t x = -1;
    if (static_prog) {
        fflush(stdout);
        x = fork();
        if (x == 0) {
            char *args[] = {"spawn-static-child", fdbuf, NULL};
            execv(static_prog, args);
            _exit(127);
        }
        expected++;
    }

    /* s: system() runs to its end before returning. */
    snprintf(cmd, sizeof cmd, "'%s' --child s %s < /dev/null; exit $?", self, fdbuf);
    int st = system(cmd);
    if (!(WIFEXITED(st) && WEXITSTATUS(st) == 11)) ERR("system() status %d", st);

    /* Everybody reports (the system() child already did). */
    struct report r;
    int seen_e = 0, seen_p = 0, seen_v = 0, seen_o = 0, seen_x = 0, seen_s = 0, seen_d = 0;
    for (int i = 0; i < expected + 1; i++) {
        read_report(rep[0], &r);
        switch (r.kind) {
        case 's':
            seen_s++;
            break;
        case 'd':
            seen_d++;
            if (r.pid == dm || r.ppid == me) ERR("daemon() did not detach");
            break;
        case 'e':
            seen_e++;
            if (r.pid != e) ERR("exec'd child's getpid() differs from fork's result");
            if (r.ppid != me) ERR("exec'd child's getppid()");
            break;
        case 'p':
            seen_p++;
            if (r.pid != pids[1]) ERR("posix_spawn'd child's pid");
            if (r.ppid != me) ERR("posix_spawn'd child's getppid()");
            break;
        case 'v':
            seen_v++;
            if (r.pid != v) ERR("vfork'd child's pid");
            if (r.ppid != me) ERR("vfork'd child's getppid()");
            break;
        case 'o':
            seen_o++;
            break;
        case 'x':
            seen_x++;
            if (r.pid != x) ERR("static child's pid");
            break;
        }
    }
    printf("reports: exec %d, posix_spawn %d, vfork %d, popen %d, system %d, daemon %d, static %d\n", seen_e, seen_p,
           seen_v, seen_o, seen_s, seen_d, seen_x);

    gate(1);

    close(release_w);
    for (int i = 0; i < npids; i++) {
        int s2 = 0;
        if (waitpid(pids[i], &s2, 0) != pids[i] || !WIFEXITED(s2) || WEXITSTATUS(s2) != 12)
            ERR("child %c: waitpid/status %d", kinds[i], s2);
    }
    if (po) {
        int pst = pclose(po);
        if (!(WIFEXITED(pst) && WEXITSTATUS(pst) == 12)) ERR("pclose status %d", pst);
    }
    if (x > 0) {
        int s2 = 0;
        if (waitpid(x, &s2, 0) != x || !WIFEXITED(s2) || WEXITSTATUS(s2) != 13) ERR("static child status %d", s2);
    }
    printf("all children done\n");
    gate(2);
    gate(3);
    return probe_exit_code();
}
