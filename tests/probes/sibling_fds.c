/* An open file description shared only by siblings: P opens notes.log (O_RDWR, not
 * appending) at fd 10, forks A and B, and closes its own fd 10. A and B take turns
 * writing a line through fd 10, on P's command, and report the offset after each write:
 * the offset is one for both. Before gate 1 each writes once; after it (and after a
 * restart) they write three more lines in turn, which must follow each other in the file
 * (with two descriptions, B's lines would overwrite A's). P prints the offsets and the file.
 */
#include "gate.h"
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

static int up_w;

static void worker(char who, int cmd) {
    int n = 0;
    for (;;) {
        char c;
        ssize_t r = read(cmd, &c, 1);
        if (r < 0 && errno == EINTR) continue;
        if (r != 1 || c == 'q') _exit(0);
        char line[32];
        int len = snprintf(line, sizeof line, "%c writes line %d\n", who, ++n);
        if (write(10, line, (size_t)len) != len) _exit(90);
        long off = (long)lseek(10, 0, SEEK_CUR);
        if (write(up_w, &off, sizeof off) != sizeof off) _exit(91);
    }
}

static long turn(int cmd, int up_r, char who) {
    if (write(cmd, "w", 1) != 1) ERR("command to %c", who);
    long off = -1;
    ssize_t r;
    while ((r = read(up_r, &off, sizeof off)) < 0 && errno == EINTR) {
    }
    if (r != sizeof off) ERR("no offset from %c", who);
    return off;
}

int main(void) {
    int fd = open("notes.log", O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || dup2(fd, 10) != 10) return 90;
    close(fd);
    int to_a[2], to_b[2], up[2];
    if (pipe(to_a) || pipe(to_b) || pipe(up)) return 91;
    up_w = up[1];
    fflush(stdout);
    pid_t a = fork();
    if (a == 0) worker('A', to_a[0]);
    pid_t b = fork();
    if (b == 0) worker('B', to_b[0]);
    close(10);
    long o1 = turn(to_a[1], up[0], 'A');
    long o2 = turn(to_b[1], up[0], 'B');
    printf("offsets before: %ld %ld\n", o1, o2);
    gate(1);
    long o3 = turn(to_a[1], up[0], 'A');
    long o4 = turn(to_b[1], up[0], 'B');
    long o5 = turn(to_a[1], up[0], 'A');
    printf("offsets after: %ld %ld %ld\n", o3, o4, o5);
    if (write(to_a[1], "q", 1) != 1 || write(to_b[1], "q", 1) != 1) ERR("quit");
    int st;
    if (waitpid(a, &st, 0) != a || waitpid(b, &st, 0) != b) ERR("reaping A and B");
    char buf[512];
    int r = open("notes.log", O_RDONLY);
    ssize_t n = r >= 0 ? read(r, buf, sizeof buf - 1) : -1;
    buf[n > 0 ? n : 0] = 0;
    printf("notes.log:\n%s", buf);
    gate(2);
    gate(3);
    return probe_exit_code();
}
