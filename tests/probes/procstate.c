/* Process-state probe: what a process is besides its memory.
 *
 * Before gate 1 it moves into the subdirectory "wd sub ü" of its start directory, sets
 * umask 027, changes rlimits, its environment and its name (comm), opens regular files
 * (one read part-way with O_CLOEXEC, one written with an offset, one O_APPEND), and
 * writes getpid() to $PROBE_PID_FILE when that is set. After gate 2 it prints all of it:
 * the cwd, umask, rlimits, environment, file offsets and flags, the rest of the files,
 * whether /proc/self/cmdline still equals argv and /proc/self/comm is the name it set,
 * and whether getpid() is unchanged.
 */
#include "gate.h"

#include <fcntl.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/sysmacros.h>
#include <unistd.h>

static const char *yesno(int b) { return b ? "yes" : "no"; }

static void print_bytes(const char *what, const char *buf, ssize_t n) {
    printf("%s (%zd bytes): ", what, n);
    for (ssize_t i = 0; i < n; i++) putchar(buf[i] == '\n' ? '|' : buf[i]);
    putchar('\n');
}

static ssize_t slurp(const char *path, char *buf, size_t cap) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t total = 0, n;
    while ((n = read(fd, buf + total, cap - total)) > 0) total += n;
    close(fd);
    return total;
}

int main(int argc, char **argv) {
    const char *pid_file = getenv("PROBE_PID_FILE");
    if (pid_file) {
        FILE *f = fopen(pid_file, "w");
        if (f) {
            fprintf(f, "%d\n", (int)getpid());
            fclose(f);
        }
    }
    pid_t pid_before = getpid();

    printf("argc %d:", argc);
    for (int i = 1; i < argc; i++) printf(" [%s]", argv[i]);
    printf("\n");

    if (mkdir("wd sub \xc3\xbc", 0755) != 0 && errno != EEXIST) ERR("mkdir: %s", strerror(errno));
    if (chdir("wd sub \xc3\xbc") != 0) ERR("chdir: %s", strerror(errno));
    char cwd_before[4096];
    if (!getcwd(cwd_before, sizeof cwd_before)) ERR("getcwd: %s", strerror(errno));

    umask(027);

    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rlim_t nofile_hard = rl.rlim_max;
    rl.rlim_cur = rl.rlim_max - 1;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) ERR("setrlimit(NOFILE): %s", strerror(errno));
    getrlimit(RLIMIT_CORE, &rl);
    rl.rlim_cur = 0;
    if (setrlimit(RLIMIT_CORE, &rl) != 0) ERR("setrlimit(CORE): %s", strerror(errno));
    getrlimit(RLIMIT_FSIZE, &rl);
    rl.rlim_cur = 1ull << 30;
    if (setrlimit(RLIMIT_FSIZE, &rl) != 0) ERR("setrlimit(FSIZE): %s", strerror(errno));
    getrlimit(RLIMIT_MSGQUEUE, &rl);
    rl.rlim_cur = rl.rlim_max < 12345 ? rl.rlim_max : 12345;
    rlim_t msgq = rl.rlim_cur;
    if (setrlimit(RLIMIT_MSGQUEUE, &rl) != 0) ERR("setrlimit(MSGQUEUE): %s", strerror(errno));

    setenv("PROBE_CHANGED", "value set by setenv", 1);
    unsetenv("PROBE_REMOVED");

    if (prctl(PR_SET_NAME, "crust-probe-nm", 0, 0, 0) != 0) ERR("PR_SET_NAME: %s", strerror(errno));

    /* Files. */
    {
        FILE *f = fopen("kept-open.txt", "w");
        for (int i = 1; i <= 40; i++) fprintf(f, "line %02d of the file kept open\n", i);
        fclose(f);
    }
    int kept = open("kept-open.txt", O_RDONLY | O_CLOEXEC);
    int log = open("log.txt", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int app = open("append.txt", O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
    if (kept < 0 || log < 0 || app < 0) ERR("open: %s", strerror(errno));
    char buf[8192];
    ssize_t n = read(kept, buf, 100);
    print_bytes("kept-open.txt, first read", buf, n);
    if (write(log, "written before gate 1\n", 22) != 22) ERR("write log: %s", strerror(errno));
    if (write(app, "appended before gate 1\n", 23) != 23) ERR("write append: %s", strerror(errno));

    gate(1);

    n = read(kept, buf, 50);
    print_bytes("kept-open.txt, second read", buf, n);
    if (write(log, "written between gates 1 and 2\n", 30) != 30) ERR("write log: %s", strerror(errno));
    if (write(app, "appended between gates 1 and 2\n", 31) != 31) ERR("write append: %s", strerror(errno));

    gate(2);

    char cwd_after[4096];
    if (!getcwd(cwd_after, sizeof cwd_after)) ERR("getcwd after gate 2: %s", strerror(errno));
    const char *base = strrchr(cwd_after, '/');
    printf("cwd basename: %s\n", base ? base + 1 : cwd_after);
    printf("cwd unchanged: %s\n", yesno(strcmp(cwd_before, cwd_after) == 0));
    mode_t um = umask(0);
    umask(um);
    printf("umask: %03o\n", (unsigned)um);

    getrlimit(RLIMIT_NOFILE, &rl);
    printf("RLIMIT_NOFILE soft is hard-1: %s, hard unchanged: %s\n", yesno(rl.rlim_cur == nofile_hard - 1),
           yesno(rl.rlim_max == nofile_hard));
    getrlimit(RLIMIT_CORE, &rl);
    printf("RLIMIT_CORE soft: %llu\n", (unsigned long long)rl.rlim_cur);
    getrlimit(RLIMIT_FSIZE, &rl);
    printf("RLIMIT_FSIZE soft: %llu\n", (unsigned long long)rl.rlim_cur);
    getrlimit(RLIMIT_MSGQUEUE, &rl);
    printf("RLIMIT_MSGQUEUE soft is what was set: %s\n", yesno(rl.rlim_cur == msgq));

    const char *in = getenv("PROBE_INPUT"), *ch = getenv("PROBE_CHANGED"), *rm = getenv("PROBE_REMOVED");
    printf("env PROBE_INPUT=%s\n", in ? in : "(unset)");
    printf("env PROBE_CHANGED=%s\n", ch ? ch : "(unset)");
    printf("env PROBE_REMOVED=%s\n", rm ? rm : "(unset)");

    n = read(kept, buf, 100);
    print_bytes("kept-open.txt, third read", buf, n);
    printf("kept-open.txt offset: %lld\n", (long long)lseek(kept, 0, SEEK_CUR));
    printf("kept-open.txt FD_CLOEXEC: %s, O_RDONLY: %s\n", yesno(fcntl(kept, F_GETFD) & FD_CLOEXEC),
           yesno((fcntl(kept, F_GETFL) & O_ACCMODE) == O_RDONLY));
    printf("log.txt offset: %lld, O_WRONLY: %s, O_APPEND: %s\n", (long long)lseek(log, 0, SEEK_CUR),
           yesno((fcntl(log, F_GETFL) & O_ACCMODE) == O_WRONLY), yesno(fcntl(log, F_GETFL) & O_APPEND));
    printf("append.txt O_APPEND: %s\n", yesno(fcntl(app, F_GETFL) & O_APPEND));
    if (write(log, "written after gate 2\n", 21) != 21) ERR("write log: %s", strerror(errno));
    if (write(app, "appended after gate 2\n", 22) != 22) ERR("write append: %s", strerror(errno));
    close(log);
    close(app);
    print_bytes("log.txt", buf, slurp("log.txt", buf, sizeof buf));
    print_bytes("append.txt", buf, slurp("append.txt", buf, sizeof buf));

    struct stat st0, stnull;
    printf("stdin is /dev/null: %s\n", yesno(fstat(0, &st0) == 0 && stat("/dev/null", &stnull) == 0 &&
                                             S_ISCHR(st0.st_mode) && st0.st_rdev == stnull.st_rdev));

    /* What ps shows. */
    ssize_t len = slurp("/proc/self/cmdline", buf, sizeof buf);
    size_t want = 0;
    for (int i = 0; i < argc; i++) want += strlen(argv[i]) + 1;
    int same = len == (ssize_t)want;
    for (int i = 0, off = 0; same && i < argc; i++) {
        same = strcmp(buf + off, argv[i]) == 0;
        off += strlen(argv[i]) + 1;
    }
    printf("/proc/self/cmdline equals argv: %s\n", yesno(same));
    len = slurp("/proc/self/comm", buf, sizeof buf);
    print_bytes("/proc/self/comm", buf, len);
    printf("getpid unchanged: %s\n", yesno(getpid() == pid_before));

    gate(3);
    printf("done\n");
    fflush(stdout);
    return probe_exit_code();
}
