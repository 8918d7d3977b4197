/* memfd seals and wall-clock absolute timerfds across a restart.
 *
 * Before gate 1:
 *   40  memfd "sealed" (MFD_ALLOW_SEALING), 64 bytes, sealed SHRINK|GROW|WRITE
 *   41  memfd "sealable" (MFD_ALLOW_SEALING), no seals yet
 *   42  memfd "plain" (no MFD_ALLOW_SEALING: sealed with F_SEAL_SEAL by the kernel)
 *   43  timerfd CLOCK_REALTIME set TFD_TIMER_ABSTIME|TFD_TIMER_CANCEL_ON_SET an hour ahead
 *   44  timerfd CLOCK_MONOTONIC set relative, an hour ahead
 * After gate 1 (after a restart too) it prints the seals of 40-42, checks that writing
 * and resizing 40 fail and its content is there, adds F_SEAL_GROW to 41 (must work) and
 * to 42 (must fail), and prints the timerfds' settime flags (from /proc/self/fdinfo) and
 * whether they are armed within the hour.
 */
#include "gate.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/timerfd.h>
#include <unistd.h>

static void place(int fd, int at) {
    if (fd < 0 || dup2(fd, at) != at) ERR("place fd %d: %s", at, strerror(errno));
    close(fd);
}

static void show_flags(int fd) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
    FILE *f = fopen(path, "r");
    if (!f) {
        ERR("%s: %s", path, strerror(errno));
        return;
    }
    while (fgets(buf, sizeof buf, f))
        if (!strncmp(buf, "settime flags:", 14)) printf("fd %d %s", fd, buf);
    fclose(f);
    struct itimerspec cur;
    if (timerfd_gettime(fd, &cur) != 0) ERR("timerfd_gettime %d: %s", fd, strerror(errno));
    int armed = (cur.it_value.tv_sec || cur.it_value.tv_nsec) && cur.it_value.tv_sec <= 3600;
    printf("fd %d armed within the hour: %s\n", fd, armed ? "yes" : "no");
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    place(memfd_create("sealed", MFD_ALLOW_SEALING), 40);
    char content[64];
    for (int i = 0; i < 64; i++) content[i] = 'a' + i % 26;
    if (write(40, content, 64) != 64) ERR("write 40: %s", strerror(errno));
    if (fcntl(40, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE) != 0) ERR("seal 40: %s", strerror(errno));
    place(memfd_create("sealable", MFD_ALLOW_SEALING), 41);
    place(memfd_create("plain", 0), 42);
    place(timerfd_create(CLOCK_REALTIME, 0), 43);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct itimerspec abs = {{0, 0}, {now.tv_sec + 3600, 0}};
    if (timerfd_settime(43, TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET, &abs, NULL) != 0) ERR("settime 43: %s", strerror(errno));
    place(timerfd_create(CLOCK_MONOTONIC, 0), 44);
    struct itimerspec rel = {{0, 0}, {3600, 0}};
    if (timerfd_settime(44, 0, &rel, NULL) != 0) ERR("settime 44: %s", strerror(errno));

    gate(1);

    for (int fd = 40; fd <= 42; fd++) printf("fd %d seals %#x\n", fd, fcntl(fd, F_GET_SEALS));
    if (pwrite(40, "x", 1, 0) != -1 || errno != EPERM) ERR("writing the sealed memfd did not fail with EPERM");
    if (ftruncate(40, 10) != -1 || errno != EPERM) ERR("shrinking the sealed memfd did not fail with EPERM");
    char back[64];
    if (pread(40, back, 64, 0) != 64 || memcmp(back, content, 64)) ERR("the sealed memfd lost its content");
    printf("add F_SEAL_GROW to 41: %s\n", fcntl(41, F_ADD_SEALS, F_SEAL_GROW) == 0 ? "ok" : strerror(errno));
    printf("add F_SEAL_GROW to 42: %s\n", fcntl(42, F_ADD_SEALS, F_SEAL_GROW) == 0 ? "ok" : strerror(errno));
    show_flags(43);
    show_flags(44);

    gate(2);
    gate(3);
    return probe_exit_code();
}
