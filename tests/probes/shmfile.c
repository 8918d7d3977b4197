/* MAP_SHARED file mappings shared by a parent and its child: a tmpfs file (shm_open,
 * name from PROBE_SHM) and a file on disk (shared.dat in the working directory).
 *
 * Before gate 1 the parent creates both (two pages each), maps them MAP_SHARED, closes
 * the fds (keeping a read-only fd 50 of the shm object), writes "checkpoint-time" into
 * both pages of the shm object and "disk" into the disk file, and forks a child that maps
 * nothing itself (it inherits both mappings) and waits on a pipe. After gate 1 (also
 * after a restart) the parent prints what the shm object holds (the checkpoint-time
 * content: a restart writes it back if the file changed or vanished since), then
 * overwrites it, writes "shared" into the disk mapping and wakes the child; the child
 * prints what both mappings show (the parent's new content: still one object) and
 * answers through the shm mapping; the parent reaps it, prints the answer and what fd 50
 * reads. Gates 2 and 3, then the object is unlinked.
 */
#include "gate.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *name = getenv("PROBE_SHM") ? getenv("PROBE_SHM") : "/crust-probe-shm";
    shm_unlink(name);
    int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd < 0 || ftruncate(fd, 8192) != 0) ERR("shm_open %s: %s", name, strerror(errno));
    char *shm = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    /* A read-only descriptor of the object stays open (fd 50). */
    int ro = shm_open(name, O_RDONLY, 0);
    if (ro < 0 || dup2(ro, 50) != 50) ERR("shm_open %s read-only: %s", name, strerror(errno));
    close(ro);
    int dfd = open("shared.dat", O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (dfd < 0 || ftruncate(dfd, 8192) != 0) ERR("shared.dat: %s", strerror(errno));
    char *disk = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, dfd, 0);
    close(dfd);
    if (shm == MAP_FAILED || disk == MAP_FAILED) {
        ERR("mmap: %s", strerror(errno));
        return probe_exit_code();
    }
    strcpy(shm, "checkpoint-time page 0");
    strcpy(shm + 4096, "checkpoint-time page 1");
    strcpy(disk, "disk");
    int p[2];
    if (pipe(p) != 0) ERR("pipe: %s", strerror(errno));
    pid_t child = fork();
    if (child == 0) {
        close(p[1]);
        char c;
        if (read(p[0], &c, 1) != 1) ERR("child: read: %s", strerror(errno));
        printf("child sees shm [%s] [%s], disk [%s]\n", shm, shm + 4096, disk);
        strcpy(shm + 4096, "answer from the child");
        return probe_exit_code();
    }
    close(p[0]);

    gate(1);

    printf("parent sees shm [%s] [%s]\n", shm, shm + 4096);
    strcpy(shm, "written after the checkpoint");
    strcpy(disk, "shared");
    if (write(p[1], "x", 1) != 1) ERR("write: %s", strerror(errno));
    int st;
    if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != PROBE_EXIT_CODE)
        ERR("child failed: status %#x", st);
    printf("parent reads the answer [%s]\n", shm + 4096);
    char via_fd[32] = {0};
    if (pread(50, via_fd, sizeof via_fd - 1, 4096) < 0) ERR("pread fd 50: %s", strerror(errno));
    printf("fd 50 reads [%s]\n", via_fd);

    gate(2);
    gate(3);
    shm_unlink(name);
    return probe_exit_code();
}
