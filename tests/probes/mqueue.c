/* POSIX message queues shared between a parent and its child across a restart (issue 6).
 *
 * The parent creates a named queue (maxmsg 8, msgsize 64) holding "low"(1), "high"(5),
 * "low2"(1), and a second queue that it unlinks at once (held by fds only). The child,
 * forked with both, blocks in mq_receive on the unlinked queue (it is blocked there, or
 * about to be, at gate 1). After gate 1 the parent sends "go"(3) there; the child answers
 * "child-ok"(9) on the named queue. The parent then takes every message of the named
 * queue: by priority, oldest first within one. The name is unlinked after gate 2.
 */
#include "gate.h"
#include <fcntl.h>
#include <mqueue.h>
#include <sys/wait.h>
#include <unistd.h>

int main(void) {
    struct stat st;
    if (stat(".", &st) != 0) return 90;
    char name[64], name2[64];
    snprintf(name, sizeof name, "/crust-probe-%lx", (unsigned long)st.st_ino);
    snprintf(name2, sizeof name2, "/crust-probe-%lx-2", (unsigned long)st.st_ino);
    struct mq_attr attr = {0, 8, 64, 0};
    mqd_t q = mq_open(name, O_CREAT | O_EXCL | O_RDWR, 0640, &attr);
    mqd_t q2 = mq_open(name2, O_CREAT | O_EXCL | O_RDWR, 0600, &attr);
    if (q == (mqd_t)-1 || q2 == (mqd_t)-1) {
        printf("mq_open: %s\n", strerror(errno));
        return 91;
    }
    mq_unlink(name2);
    if (mq_send(q, "low", 4, 1) || mq_send(q, "high", 5, 5) || mq_send(q, "low2", 5, 1)) return 92;
    printf("created: 3 messages queued\n");
    fflush(stdout);
    pid_t c = fork();
    if (c == 0) {
        char buf[64];
        unsigned prio = 0;
        ssize_t n = mq_receive(q2, buf, sizeof buf, &prio); /* blocks until the parent sends */
        if (n != 3 || strcmp(buf, "go") != 0 || prio != 3) _exit(80);
        if (mq_send(q, "child-ok", 9, 9) != 0) _exit(81);
        _exit(0);
    }
    gate(1);
    if (mq_send(q2, "go", 3, 3) != 0) ERR("mq_send: %s", strerror(errno));
    int wst = 0;
    if (waitpid(c, &wst, 0) != c) ERR("waitpid: %s", strerror(errno));
    if (!WIFEXITED(wst) || WEXITSTATUS(wst) != 0) ERR("child status %#x", wst);
    struct mq_attr now;
    if (mq_getattr(q, &now) != 0) ERR("mq_getattr: %s", strerror(errno));
    printf("attributes: maxmsg %ld msgsize %ld, %ld queued\n", now.mq_maxmsg, now.mq_msgsize, now.mq_curmsgs);
    for (long i = 0; i < now.mq_curmsgs; i++) {
        char buf[64];
        unsigned prio = 0;
        ssize_t n = mq_receive(q, buf, sizeof buf, &prio);
        if (n < 0) {
            ERR("mq_receive: %s", strerror(errno));
            break;
        }
        printf("message %s priority %u\n", buf, prio);
    }
    struct stat qs;
    if (fstat(q, &qs) != 0) ERR("fstat: %s", strerror(errno));
    printf("mode %o\n", qs.st_mode & 0777);
    gate(2);
    if (mq_unlink(name) != 0) ERR("mq_unlink: %s", strerror(errno));
    printf("unlinked\n");
    gate(3);
    return probe_exit_code();
}
