/* File-descriptor probe: what a restart must give back for each kind of fd.
 *
 * Before gate 1 it sets up, at fixed numbers:
 *   10  log.txt, O_RDWR|O_CREAT|O_APPEND, "line 1" written
 *   11  data.txt (written by the probe), O_RDONLY with FD_CLOEXEC, read 6 bytes in
 *   12  /dev/zero, 13  /dev/urandom (FD_CLOEXEC)
 *   14, 15 (PROBE_SOCKET=1) a socketpair, marked "do not checkpoint" when PROBE_IGNORE=1
 *   16  scratch.tmp, O_RDWR, 3000 bytes written, deleted, offset 100
 *   17  a memfd "probe-memfd" (not mapped), 20 bytes, offset 3, MFD_CLOEXEC
 *   18  an eventfd with counter 5 (EFD_NONBLOCK), 19 an eventfd in semaphore mode, counter 3
 *   21  a timerfd (CLOCK_MONOTONIC) due in an hour, interval 2 s
 *   22  a one-shot timerfd that expired once before gate 1, not read
 *   24  a signalfd for SIGUSR1 (blocked, one pending)
 *   26  /proc/version, open for reading
 *   27  shared.bin, O_RDWR, also mapped MAP_SHARED: "before" at gate 1, "after gate 1"
 *       written through the mapping right after it (the file changes after the checkpoint)
 *   23  an epoll instance watching 18 (EPOLLIN), 22 (EPOLLIN|EPOLLET) and 24, each with its
 *       own data; after gate 2 it reports all three ready (before any is read)
 * With PROBE_CHILD=1 it forks a child that holds child.log (O_RDWR|O_APPEND) at fd 20 and
 * waits on a pipe; after gate 2 the parent wakes it, the child appends "child 2" and
 * prints its log read back through fd 20, reads 7 bytes of data.txt through the inherited
 * fd 11 (one description: the parent reads on after them), and exits; the parent sees
 * that through a pidfd of the child (fd 28) and reaps it.
 * With PROBE_UFFD=1 it holds a userfaultfd at fd 25 (crust cannot restore it).
 * After gate 2 it prints each fd's flags, the rest of data.txt, what /dev/zero and
 * /dev/urandom read, appends "line 2" to the log and prints the log read back through fd
 * 10, and what fds 14 and 15 are now.
 */
#include "gate.h"

#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef WITH_API
#include <crust.h>
#endif

static void place(int fd, int at, int cloexec) {
    if (fd < 0) {
        ERR("open for fd %d: %s", at, strerror(errno));
        return;
    }
    if (dup2(fd, at) != at) ERR("dup2 %d: %s", at, strerror(errno));
    close(fd);
    if (cloexec) fcntl(at, F_SETFD, FD_CLOEXEC);
}

static const char *kind(int fd) {
    struct stat st;
    if (fstat(fd, &st) != 0) return "closed";
    switch (st.st_mode & S_IFMT) {
    case S_IFREG: return "regular file";
    case S_IFSOCK: return "socket";
    case S_IFCHR: return "character device";
    case S_IFIFO: return "pipe";
    default: return "other";
    }
}

static void show_flags(int fd) {
    int fl = fcntl(fd, F_GETFL), fdfl = fcntl(fd, F_GETFD);
    const char *acc = (fl & O_ACCMODE) == O_RDONLY ? "rdonly" : (fl & O_ACCMODE) == O_WRONLY ? "wronly" : "rdwr";
    printf("fd %d: %s %s append=%d cloexec=%d\n", fd, kind(fd), acc, !!(fl & O_APPEND), !!(fdfl & FD_CLOEXEC));
}

int main(void) {
    int sock = getenv("PROBE_SOCKET") && atoi(getenv("PROBE_SOCKET"));
    int ignore = getenv("PROBE_IGNORE") && atoi(getenv("PROBE_IGNORE"));

    int d = open("data.txt", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const char *data = "header|the rest of the data file\n";
    if (d < 0 || write(d, data, strlen(data)) != (ssize_t)strlen(data)) ERR("data.txt: %s", strerror(errno));
    close(d);
    unlink("log.txt");
    place(open("log.txt", O_RDWR | O_CREAT | O_APPEND, 0644), 10, 0);
    if (write(10, "line 1\n", 7) != 7) ERR("write log: %s", strerror(errno));
    place(open("data.txt", O_RDONLY), 11, 1);
    char hdr[7] = {0};
    if (read(11, hdr, 6) != 6) ERR("read data.txt: %s", strerror(errno));
    printf("data header [%s]\n", hdr);
    place(open("/dev/zero", O_RDONLY), 12, 0);
    place(open("/dev/urandom", O_RDONLY), 13, 1);
    if (sock) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) ERR("socketpair: %s", strerror(errno));
        place(sv[0], 14, 0);
        place(sv[1], 15, 0);
        if (ignore) {
#ifdef WITH_API
            printf("ignored %d %d\n", cr_ignore_fd(14) == 0 || !cr_is_enabled(), cr_ignore_fd(15) == 0 || !cr_is_enabled());
#else
            ERR("PROBE_IGNORE needs the probe built WITH_API");
#endif
        }
    }

    place(open("scratch.tmp", O_RDWR | O_CREAT | O_TRUNC, 0600), 16, 0);
    for (int i = 0; i < 100; i++) dprintf(16, "deleted line %04d.......\n", i); /* 25 bytes each */
    if (unlink("scratch.tmp") != 0) ERR("unlink scratch.tmp: %s", strerror(errno));
    lseek(16, 100, SEEK_SET);
    place(memfd_create("probe-memfd", MFD_CLOEXEC), 17, 1);
    if (write(17, "memfd bytes 0123456\n", 20) != 20) ERR("write memfd: %s", strerror(errno));
    lseek(17, 3, SEEK_SET);

    place(eventfd(5, EFD_NONBLOCK), 18, 0);
    place(eventfd(3, EFD_SEMAPHORE), 19, 0);
    place(timerfd_create(CLOCK_MONOTONIC, 0), 21, 0);
    struct itimerspec its = {{2, 0}, {3600, 0}};
    if (timerfd_settime(21, 0, &its, NULL) != 0) ERR("timerfd_settime 21: %s", strerror(errno));
    place(timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK), 22, 0);
    struct itimerspec once = {{0, 0}, {0, 1000000}};
    if (timerfd_settime(22, 0, &once, NULL) != 0) ERR("timerfd_settime 22: %s", strerror(errno));
    struct pollfd pfd = {22, POLLIN, 0};
    if (poll(&pfd, 1, 5000) != 1) ERR("timer 22 did not expire");

    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, NULL);
    place(signalfd(-1, &usr1, SFD_NONBLOCK), 24, 0);
    raise(SIGUSR1);
    place(epoll_create1(0), 23, 0);
    struct epoll_event ev = {EPOLLIN, {.u64 = 0x1818}};
    if (epoll_ctl(23, EPOLL_CTL_ADD, 18, &ev) != 0) ERR("epoll_ctl 18: %s", strerror(errno));
    ev.events = EPOLLIN | EPOLLET;
    ev.data.u64 = 0x2222;
    if (epoll_ctl(23, EPOLL_CTL_ADD, 22, &ev) != 0) ERR("epoll_ctl 22: %s", strerror(errno));
    ev.events = EPOLLIN;
    ev.data.u64 = 0x2424;
    if (epoll_ctl(23, EPOLL_CTL_ADD, 24, &ev) != 0) ERR("epoll_ctl 24: %s", strerror(errno));

    place(open("/proc/version", O_RDONLY), 26, 0); /* a kernel file: no identity to keep */
    place(open("shared.bin", O_RDWR | O_CREAT | O_TRUNC, 0644), 27, 0);
    if (ftruncate(27, 4096) != 0) ERR("ftruncate shared.bin: %s", strerror(errno));
    char *shm = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, 27, 0);
    if (shm == MAP_FAILED) ERR("mmap shared.bin: %s", strerror(errno));
    else strcpy(shm, "before");
    /* UFFD_USER_MODE_ONLY (1): allowed without privileges. */
    if (getenv("PROBE_UFFD") && atoi(getenv("PROBE_UFFD"))) place((int)syscall(SYS_userfaultfd, 1), 25, 0);

    int child_pipe[2] = {-1, -1};
    pid_t child = -1;
    if (getenv("PROBE_CHILD") && atoi(getenv("PROBE_CHILD"))) {
        if (pipe(child_pipe) != 0) ERR("pipe: %s", strerror(errno));
        fflush(stdout);
        child = fork();
        if (child == 0) {
            close(child_pipe[1]);
            place(open("child.log", O_RDWR | O_CREAT | O_TRUNC | O_APPEND, 0644), 20, 0);
            if (write(20, "child 1\n", 8) != 8) ERR("write child.log: %s", strerror(errno));
            char c;
            ssize_t got;
            while ((got = read(child_pipe[0], &c, 1)) < 0 && errno == EINTR) {
            }
            if (got != 1) _exit(3); /* the parent is gone (killed at gate 2): write nothing */
            if (write(20, "child 2\n", 8) != 8) ERR("write child.log after gate 2: %s", strerror(errno));
            /* fd 11 is the parent's description (inherited): reading moves the parent's offset too. */
            char shared[8] = {0};
            printf("child reads fd 11: [%.*s]\n", (int)read(11, shared, 7), shared);
            char cbuf[256];
            ssize_t k = pread(20, cbuf, sizeof cbuf - 1, 0);
            cbuf[k > 0 ? k : 0] = 0;
            printf("child log through fd 20:\n%s", cbuf);
            fflush(stdout);
            _exit(probe_failures ? 1 : 0);
        }
        close(child_pipe[0]);
        place((int)syscall(SYS_pidfd_open, child, 0), 28, 0);
    }

    gate(1);
    if (shm != MAP_FAILED) {
        printf("shared.bin mapped at gate 1: %s\n", shm);
        strcpy(shm, "after gate 1");
        msync(shm, 4096, MS_SYNC);
    }
    gate(2);

    if (child > 0) {
        if (write(child_pipe[1], "x", 1) != 1) ERR("wake the child: %s", strerror(errno));
        struct pollfd pp = {28, POLLIN, 0};
        printf("pidfd 28 reports the child's exit: %s\n", poll(&pp, 1, 10000) == 1 && (pp.revents & POLLIN) ? "yes" : "no");
        int status = -1;
        if (waitpid(child, &status, 0) != child) ERR("waitpid: %s", strerror(errno));
        printf("child exited %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    }

    struct epoll_event evs[8];
    int nev = epoll_wait(23, evs, 8, 1000);
    unsigned long long ready[8];
    for (int i = 0; i < nev; i++) ready[i] = evs[i].data.u64;
    for (int i = 0; i < nev; i++)
        for (int j = i + 1; j < nev; j++)
            if (ready[j] < ready[i]) {
                unsigned long long x = ready[i];
                ready[i] = ready[j];
                ready[j] = x;
            }
    printf("epoll 23 ready (%d):", nev);
    for (int i = 0; i < nev; i++) printf(" %llx", ready[i]);
    printf("\n");
    struct signalfd_siginfo si;
    ssize_t n;
    n = read(24, &si, sizeof si);
    printf("signalfd 24: read %zd signal %u", n, n == (ssize_t)sizeof si ? si.ssi_signo : 0);
    n = read(24, &si, sizeof si);
    printf(", again: %s\n", n < 0 && errno == EAGAIN ? "EAGAIN" : "data");

    for (int fd = 10; fd <= 13; fd++) show_flags(fd);
    char buf[256];
    n = read(11, buf, sizeof buf - 1);
    buf[n > 0 ? n : 0] = 0;
    printf("data rest (%zd): %s", n, buf);
    unsigned char z[64];
    memset(z, 0xff, sizeof z);
    n = read(12, z, sizeof z);
    int zeros = n == (ssize_t)sizeof z;
    for (size_t i = 0; i < sizeof z; i++) zeros &= z[i] == 0;
    printf("/dev/zero gave %zd zero bytes: %s\n", n, zeros ? "yes" : "no");
    n = read(13, z, 16);
    printf("/dev/urandom gave %zd bytes\n", n);
    if (write(10, "line 2\n", 7) != 7) ERR("write log after gate 2: %s", strerror(errno));
    n = pread(10, buf, sizeof buf - 1, 0);
    buf[n > 0 ? n : 0] = 0;
    printf("log through fd 10:\n%s", buf);
    if (sock) printf("fd 14: %s, fd 15: %s\n", kind(14), kind(15));

    uint64_t v = 0;
    n = read(18, &v, 8);
    printf("eventfd 18: read %zd value %llu", n, (unsigned long long)v);
    n = read(18, &v, 8);
    printf(", again: %s, nonblock=%d\n", n < 0 && errno == EAGAIN ? "EAGAIN" : "data", !!(fcntl(18, F_GETFL) & O_NONBLOCK));
    printf("eventfd 19 (semaphore):");
    for (int i = 0; i < 3; i++) {
        v = 0;
        n = read(19, &v, 8);
        printf(" %llu", (unsigned long long)v);
    }
    fcntl(19, F_SETFL, O_NONBLOCK);
    n = read(19, &v, 8);
    printf(", then %s\n", n < 0 && errno == EAGAIN ? "EAGAIN" : "data");
    struct itimerspec cur;
    if (timerfd_gettime(21, &cur) != 0) ERR("timerfd_gettime 21: %s", strerror(errno));
    printf("timer 21: interval %ld.%09ld, due in (3000 s, 3600 s]: %s\n", (long)cur.it_interval.tv_sec, cur.it_interval.tv_nsec,
           cur.it_value.tv_sec >= 3000 && cur.it_value.tv_sec < 3600 ? "yes" : "no");
    v = 0;
    n = read(22, &v, 8);
    printf("timer 22: read %zd, %llu expiration(s)", n, (unsigned long long)v);
    n = read(22, &v, 8);
    printf(", again: %s\n", n < 0 && errno == EAGAIN ? "EAGAIN" : "data");

    printf("fd 26: %s\n", kind(26));
    char sb[32] = {0};
    if (pread(27, sb, sizeof sb - 1, 0) < 0) ERR("pread shared.bin: %s", strerror(errno));
    printf("shared.bin: mapped [%s], read [%s]\n", shm != MAP_FAILED ? shm : "", sb);
    show_flags(16);
    struct stat st;
    fstat(16, &st);
    printf("fd 16: links %d size %lld offset %lld\n", (int)st.st_nlink, (long long)st.st_size, (long long)lseek(16, 0, SEEK_CUR));
    n = read(16, buf, 50);
    buf[n > 0 ? n : 0] = 0;
    printf("fd 16 reads: %s|\n", buf);
    lseek(16, 0, SEEK_END);
    dprintf(16, "appended after gate 2\n");
    unsigned long long h = FNV_INIT;
    char big[4096];
    off_t at = 0;
    while ((n = pread(16, big, sizeof big, at)) > 0) {
        h = fnv1a(big, n, h);
        at += n;
    }
    printf("fd 16 content: %lld bytes, hash %016llx\n", (long long)at, h);
    show_flags(17);
    char link[256] = {0};
    if (readlink("/proc/self/fd/17", link, sizeof link - 1) < 0) ERR("readlink fd 17: %s", strerror(errno));
    printf("fd 17 is a memfd named probe-memfd: %s\n", strncmp(link, "/memfd:probe-memfd", 18) == 0 ? "yes" : "no");
    n = read(17, buf, 64);
    buf[n > 0 ? n : 0] = 0;
    printf("fd 17 reads: %s", buf);

    gate(3);
    return probe_exit_code();
}
