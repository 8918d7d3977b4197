/* inotify probe: watches keep their numbers, paths and masks across a restart.
 *
 * Before gate 1 it creates watched/ with sub/, sub2/, sub3/ and file.txt, and an inotify
 * instance at fd 30 with the watches
 *   1  watched        IN_CREATE
 *   2  watched/sub    IN_CREATE, removed again (a gap in the numbers)
 *   3  watched/file.txt IN_MODIFY|IN_CLOSE_WRITE
 *   4  watched/sub2   IN_CREATE|IN_ONESHOT
 *   5  watched/sub3   IN_CREATE, removed again (the next watch must be 6)
 * and reads off the IN_IGNORED events of the removals. After gate 1 (after a restart
 * too) it makes one change at a time and prints the events it gets (watch number, mask,
 * name): a file created in watched/ (watch 1), file.txt appended to (watch 3: modify,
 * close-write), a file created in watched/sub/ (no watch: no event), one in watched/sub2/
 * (watch 4, one-shot: then IN_IGNORED), a new watch on watched/sub3 (number 6) and a file
 * created there. A child forked before gate 1 holds the instance too (one description):
 * woken after these checks, it adds a watch on watched/sub (number 7: the numbering is
 * the instance's) and reads the event of a file created there; the parent's next watch
 * is then number 8. Files are removed before
 * they are created, so a run after an interrupted one sees the same events.
 */
#include "gate.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/inotify.h>
#include <sys/wait.h>
#include <unistd.h>

#define IFD 30

static void touch(const char *p) {
    unlink(p);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) ERR("create %s: %s", p, strerror(errno));
    else close(fd);
}

static const char *mask_name(unsigned m) {
    static char buf[128];
    buf[0] = 0;
    struct { unsigned bit; const char *name; } names[] = {
        {IN_CREATE, "CREATE"}, {IN_MODIFY, "MODIFY"}, {IN_CLOSE_WRITE, "CLOSE_WRITE"}, {IN_IGNORED, "IGNORED"},
        {IN_DELETE, "DELETE"}, {IN_ISDIR, "ISDIR"}, {IN_ATTRIB, "ATTRIB"}, {IN_OPEN, "OPEN"}};
    for (unsigned i = 0; i < sizeof names / sizeof names[0]; i++)
        if (m & names[i].bit) {
            if (buf[0]) strcat(buf, "|");
            strcat(buf, names[i].name);
        }
    if (!buf[0]) snprintf(buf, sizeof buf, "%#x", m);
    return buf;
}

/* Read and print events until `want` have arrived (at most 10 s). */
static void expect(int want, const char *what) {
    int got = 0;
    char buf[4096] __attribute__((aligned(8)));
    while (got < want) {
        struct pollfd p = {IFD, POLLIN, 0};
        if (poll(&p, 1, 10000) != 1) {
            ERR("%s: %d of %d events arrived", what, got, want);
            return;
        }
        ssize_t n = read(IFD, buf, sizeof buf);
        if (n <= 0) {
            ERR("%s: read: %s", what, strerror(errno));
            return;
        }
        for (char *c = buf; c < buf + n;) {
            struct inotify_event *e = (struct inotify_event *)c;
            printf("%s: wd %d %s %s\n", what, e->wd, mask_name(e->mask), e->len ? e->name : "-");
            got++;
            c += sizeof *e + e->len;
        }
    }
}

static int add(const char *path, unsigned mask) {
    int wd = inotify_add_watch(IFD, path, mask);
    if (wd < 0) ERR("inotify_add_watch %s: %s", path, strerror(errno));
    return wd;
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    mkdir("watched", 0755);
    mkdir("watched/sub", 0755);
    mkdir("watched/sub2", 0755);
    mkdir("watched/sub3", 0755);
    touch("watched/file.txt");
    int fd = inotify_init1(0);
    if (fd < 0 || dup2(fd, IFD) != IFD) ERR("inotify_init1: %s", strerror(errno));
    close(fd);
    int w1 = add("watched", IN_CREATE);
    int w2 = add("watched/sub", IN_CREATE);
    int w3 = add("watched/file.txt", IN_MODIFY | IN_CLOSE_WRITE);
    int w4 = add("watched/sub2", IN_CREATE | IN_ONESHOT);
    int w5 = add("watched/sub3", IN_CREATE);
    printf("watches %d %d %d %d %d\n", w1, w2, w3, w4, w5);
    inotify_rm_watch(IFD, w2);
    inotify_rm_watch(IFD, w5);
    expect(2, "removed");
    int p[2];
    if (pipe(p) != 0) ERR("pipe: %s", strerror(errno));
    pid_t child = fork();
    if (child == 0) {
        close(p[1]);
        char c;
        if (read(p[0], &c, 1) != 1) ERR("child: read: %s", strerror(errno));
        int w7 = add("watched/sub", IN_CREATE);
        printf("child added watch %d\n", w7);
        touch("watched/sub/c");
        expect(1, "child: create in sub");
        return probe_exit_code();
    }
    close(p[0]);

    gate(1);

    touch("watched/new1");
    expect(1, "create in watched");
    int f = open("watched/file.txt", O_WRONLY | O_APPEND);
    if (f < 0 || write(f, "x", 1) != 1) ERR("append to file.txt: %s", strerror(errno));
    close(f);
    expect(2, "append to file.txt");
    touch("watched/sub/x");
    touch("watched/sub2/y");
    expect(2, "create in sub/ then sub2/");
    int w6 = add("watched/sub3", IN_CREATE);
    printf("new watch %d\n", w6);
    touch("watched/sub3/z");
    expect(1, "create in sub3");
    if (write(p[1], "x", 1) != 1) ERR("write: %s", strerror(errno));
    int st;
    if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != PROBE_EXIT_CODE)
        ERR("child failed: status %#x", st);
    printf("parent then adds watch %d\n", add("watched/sub2", IN_CREATE));

    gate(2);
    gate(3);
    return probe_exit_code();
}
