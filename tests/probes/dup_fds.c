/* Descriptors that share one open file description inside one process (dup, dup2,
 * F_DUPFD) must share it again after a restart: one offset, one set of status flags.
 *
 * Before gate 1: notes.txt is opened at fd 10 (O_RDWR, no O_APPEND) and duplicated to
 * fd 20 (dup2) and fd 30 (F_DUPFD_CLOEXEC); 12 bytes are written through fd 10, so all
 * three sit at offset 12. fd 40 is a dup of stdout (a file in the tests, not appending).
 * After gate 1: one line is written through each of 10, 20, 30 in turn (each must land
 * after the previous one), O_NONBLOCK is set through fd 20 and must show on fd 10, and
 * the file is read back; a line goes to stdout through fd 40, then through fd 1 (the two
 * must not overwrite each other). A separate open of the same file (fd 11, its own
 * description) keeps its own offset.
 */
#include "gate.h"
#include <fcntl.h>
#include <unistd.h>

static void put(int fd, const char *s) {
    size_t n = strlen(s);
    if (write(fd, s, n) != (ssize_t)n) ERR("write to fd %d: %s", fd, strerror(errno));
}

int main(void) {
    int fd = open("notes.txt", O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || dup2(fd, 10) != 10) return 90;
    close(fd);
    if (dup2(10, 20) != 20) return 91;
    if (fcntl(10, F_DUPFD_CLOEXEC, 30) != 30) return 92;
    int other = open("notes.txt", O_RDONLY);
    if (other < 0 || dup2(other, 11) != 11) return 93;
    close(other);
    if (dup2(1, 40) != 40) return 94;
    put(10, "first line\n");
    put(20, "\n");
    char b[4];
    if (read(11, b, 4) != 4) ERR("read fd 11");
    printf("offsets before: %ld %ld %ld, other %ld\n", (long)lseek(10, 0, SEEK_CUR), (long)lseek(20, 0, SEEK_CUR),
           (long)lseek(30, 0, SEEK_CUR), (long)lseek(11, 0, SEEK_CUR));
    gate(1);
    put(10, "through 10\n");
    put(20, "through 20\n");
    put(30, "through 30\n");
    fcntl(20, F_SETFL, fcntl(20, F_GETFL) | O_NONBLOCK);
    printf("O_NONBLOCK seen through fd 10: %d\n", (fcntl(10, F_GETFL) & O_NONBLOCK) != 0);
    printf("fd 30 close-on-exec: %d\n", (fcntl(30, F_GETFD) & FD_CLOEXEC) != 0);
    printf("offsets after: %ld %ld %ld, other %ld\n", (long)lseek(10, 0, SEEK_CUR), (long)lseek(20, 0, SEEK_CUR),
           (long)lseek(30, 0, SEEK_CUR), (long)lseek(11, 0, SEEK_CUR));
    char buf[256];
    ssize_t n = pread(10, buf, sizeof buf - 1, 0);
    buf[n > 0 ? n : 0] = 0;
    printf("notes.txt:\n%s", buf);
    fflush(stdout);
    put(40, "this line went through fd 40\n");
    printf("and this one through fd 1\n");
    gate(2);
    put(20, "after gate 2\n");
    n = pread(30, buf, sizeof buf - 1, 0);
    buf[n > 0 ? n : 0] = 0;
    printf("notes.txt at the end:\n%s", buf);
    gate(3);
    return probe_exit_code();
}
