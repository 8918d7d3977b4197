/* A memfd both mapped MAP_SHARED and held as an fd, shared by a parent and its child:
 * one object after a restart, with its name, content and seals.
 *
 * Before gate 1 the parent makes memfd "shared-buf" (MFD_ALLOW_SEALING, 3 pages, the
 * last one beyond the mapping), keeps it at fd 60, maps its first two pages MAP_SHARED,
 * seals it F_SEAL_SHRINK, writes "mapped" through the mapping and "tail" through the fd at
 * page 2, and forks a child that waits on a pipe. After gate 1 (after a restart too) the
 * parent prints the name, seals and page 2 of fd 60, writes "written through the fd" at
 * offset 0 with pwrite and wakes the child, which prints what its mapping shows there
 * (one object: the parent's write) and writes an answer at page 1 through the mapping;
 * the parent reaps it and reads the answer back through fd 60.
 */
#include "gate.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    int fd = memfd_create("shared-buf", MFD_ALLOW_SEALING);
    if (fd < 0 || dup2(fd, 60) != 60 || ftruncate(60, 3 * 4096) != 0) ERR("memfd: %s", strerror(errno));
    close(fd);
    char *m = mmap(NULL, 2 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED, 60, 0);
    if (m == MAP_FAILED) {
        ERR("mmap: %s", strerror(errno));
        return probe_exit_code();
    }
    if (fcntl(60, F_ADD_SEALS, F_SEAL_SHRINK) != 0) ERR("seal: %s", strerror(errno));
    strcpy(m, "mapped");
    if (pwrite(60, "tail", 4, 2 * 4096) != 4) ERR("pwrite tail: %s", strerror(errno));
    int p[2];
    if (pipe(p) != 0) ERR("pipe: %s", strerror(errno));
    pid_t child = fork();
    if (child == 0) {
        close(p[1]);
        char c;
        if (read(p[0], &c, 1) != 1) ERR("child: read: %s", strerror(errno));
        printf("child's mapping shows [%s]\n", m);
        strcpy(m + 4096, "answer through the mapping");
        return probe_exit_code();
    }
    close(p[0]);

    gate(1);

    char link[256] = {0};
    if (readlink("/proc/self/fd/60", link, sizeof link - 1) < 0) ERR("readlink: %s", strerror(errno));
    printf("fd 60 is %s, seals %#x\n", link, fcntl(60, F_GET_SEALS));
    char tail[8] = {0};
    if (pread(60, tail, 4, 2 * 4096) != 4) ERR("pread tail: %s", strerror(errno));
    printf("page 2 holds [%s], mapping shows [%s]\n", tail, m);
    const char *msg = "written through the fd";
    if (pwrite(60, msg, strlen(msg) + 1, 0) != (ssize_t)strlen(msg) + 1) ERR("pwrite: %s", strerror(errno));
    if (write(p[1], "x", 1) != 1) ERR("write: %s", strerror(errno));
    int st;
    if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != PROBE_EXIT_CODE)
        ERR("child failed: status %#x", st);
    char answer[64] = {0};
    if (pread(60, answer, sizeof answer - 1, 4096) < 0) ERR("pread answer: %s", strerror(errno));
    printf("fd 60 reads the answer [%s]\n", answer);
    if (ftruncate(60, 4096) == 0) ERR("shrinking a memfd sealed F_SEAL_SHRINK worked");

    gate(2);
    gate(3);
    return probe_exit_code();
}
