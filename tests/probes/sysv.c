/* SysV IPC shared between a parent and its child across a restart (issue 6).
 *
 * The parent creates a keyed shared memory segment (attached, with a pattern), a private
 * segment marked for removal (IPC_RMID) while still attached, a keyed set of three
 * semaphores {1, 0, 5} and a private message queue holding "alpha"(1), "beta"(2),
 * "gamma"(1); the keyed segment's last page is made read-only (two mappings). The child, forked with both segments attached, takes semaphore 0 with
 * SEM_UNDO (never giving it back: the kernel does when the child exits, also after a
 * restart), then blocks in msgrcv for a
 * message of type 7 (it is blocked there, or about to be, at gate 1: after a restart the
 * call runs again on the queue's new id). After gate 1 the parent changes the keyed
 * segment, sends "go" (type 7) and posts semaphore 1; the child takes it from semaphore
 * 1, checks what it sees in both segments, answers through them, takes "beta" (type 2),
 * sends "child-ok" (type 9) and takes 5 from semaphore 2. The parent waits for the answer, checks the segments,
 * the semaphores (0 given back by the child's exit), the queue's state through a raw
 * syscall(SYS_msgctl), the remaining messages in order and the removed segment (gone once
 * detached), and a program it execs with the queue's id in its arguments sends on it;
 * it removes the keyed objects after gate 2 (so that a run killed at gate 2
 * leaves them behind: a restart must reset them, not trip over them). The ids it used are
 * written to ipc-ids.txt, for the test to clean up after a killed run.
 */
#include "gate.h"
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define SEG 65536

struct msg {
    long type;
    char text[64];
};

static int sem_add(int id, int num, int delta) {
    struct sembuf op = {(unsigned short)num, (short)delta, 0};
    return semop(id, &op, 1);
}

/* Run as "exec-helper ID": send "from-exec" (type 5) on queue ID, as a program exec'd by
 * the probe with an id in its arguments. */
static int exec_helper(const char *id) {
    struct msg m = {5, "from-exec"};
    return msgsnd(atoi(id), &m, strlen(m.text) + 1, IPC_NOWAIT) == 0 ? 0 : 70;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "exec-helper") == 0) return exec_helper(argv[2]);
    key_t key = ftok(".", 'c');
    if (key == -1) return 90;
    int shm = shmget(key, SEG, IPC_CREAT | IPC_EXCL | 0600);
    int priv = shmget(IPC_PRIVATE, 8192, IPC_CREAT | 0600);
    int sem = semget(key, 3, IPC_CREAT | IPC_EXCL | 0640);
    int q = msgget(IPC_PRIVATE, IPC_CREAT | 0600);
    if (shm < 0 || priv < 0 || sem < 0 || q < 0) {
        printf("create: %s\n", strerror(errno));
        return 91;
    }
    FILE *ids = fopen("ipc-ids.txt", "w");
    if (ids) {
        fprintf(ids, "%d %d %d %d\n", shm, priv, sem, q);
        fclose(ids);
    }
    unsigned char *a = shmat(shm, NULL, 0);
    int *b = shmat(priv, NULL, 0);
    if (a == (void *)-1 || b == (void *)-1) return 92;
    for (int i = 0; i < SEG; i++) a[i] = (unsigned char)(i * 7 + 3);
    b[0] = 4242;
    /* The last page read-only: two mappings of one attachment (the kernel counts both). */
    if (mprotect(a + SEG - 4096, 4096, PROT_READ) != 0) return 96;
    if (shmctl(priv, IPC_RMID, NULL) != 0) return 93;
    unsigned short init[3] = {1, 0, 5};
    if (semctl(sem, 0, SETALL, init) != 0) return 94;
    const char *texts[3] = {"alpha", "beta", "gamma"};
    long types[3] = {1, 2, 1};
    for (int i = 0; i < 3; i++) {
        struct msg m = {types[i], ""};
        strcpy(m.text, texts[i]);
        if (msgsnd(q, &m, strlen(m.text) + 1, 0) != 0) return 95;
    }
    printf("created: segment %d bytes, private segment removed but attached, 3 semaphores, 3 messages\n", SEG);
    fflush(stdout);
    pid_t c = fork();
    if (c == 0) {
        struct sembuf take = {0, -1, SEM_UNDO};
        if (semop(sem, &take, 1) != 0) _exit(78);
        struct msg go;
        if (msgrcv(q, &go, sizeof go.text, 7, 0) < 0 || strcmp(go.text, "go") != 0) _exit(79); /* blocks */
        if (sem_add(sem, 1, -1) != 0) _exit(80);
        int bad = 0;
        for (int i = 0; i < SEG; i++)
            if (i != 100 && a[i] != (unsigned char)(i * 7 + 3)) bad++;
        if (bad || a[100] != 77) _exit(81);
        if (b[0] != 4242) _exit(82);
        a[200] = 99;
        b[1] = 4343;
        struct msg m;
        ssize_t n = msgrcv(q, &m, sizeof m.text, 2, 0);
        if (n < 0 || strcmp(m.text, "beta") != 0) _exit(83);
        struct msg r = {9, "child-ok"};
        if (msgsnd(q, &r, strlen(r.text) + 1, 0) != 0) _exit(84);
        if (sem_add(sem, 2, -5) != 0) _exit(85);
        _exit(0);
    }
    struct sembuf zero = {0, 0, 0};
    if (semop(sem, &zero, 1) != 0) ERR("waiting for semaphore 0 to be taken: %s", strerror(errno));
    printf("the child holds semaphore 0\n");
    gate(1);
    a[100] = 77;
    struct msg go = {7, "go"};
    if (msgsnd(q, &go, 3, 0) != 0) ERR("msgsnd: %s", strerror(errno));
    if (sem_add(sem, 1, 1) != 0) ERR("semop post: %s", strerror(errno));
    struct msg m;
    ssize_t n = msgrcv(q, &m, sizeof m.text, 9, 0);
    printf("reply: %s\n", n > 0 ? m.text : strerror(errno));
    int st = 0;
    if (waitpid(c, &st, 0) != c) ERR("waitpid: %s", strerror(errno));
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) ERR("child status %#x", st);
    printf("child saw the segments; answers %d %d\n", a[200], b[1]);
    if (a[200] != 99 || b[1] != 4343) ERR("the child's answers did not reach the parent: %d %d", a[200], b[1]);
    unsigned short vals[3] = {9, 9, 9};
    if (semctl(sem, 0, GETALL, vals) != 0) ERR("GETALL: %s", strerror(errno));
    printf("semaphores %u %u %u\n", vals[0], vals[1], vals[2]);
    struct shmid_ds ds;
    if (shmctl(shm, IPC_STAT, &ds) != 0) ERR("IPC_STAT: %s", strerror(errno));
    printf("segment: %zu bytes, mode %o, %lu attached, key matches %d\n", (size_t)ds.shm_segsz, ds.shm_perm.mode & 0777,
           (unsigned long)ds.shm_nattch, ds.shm_perm.__key == key);
    struct semid_ds sds;
    union { int val; struct semid_ds *buf; } arg = {.buf = &sds};
    if (semctl(sem, 0, IPC_STAT, arg) != 0) ERR("sem IPC_STAT: %s", strerror(errno));
    printf("semaphore set: %lu, mode %o, key matches %d\n", (unsigned long)sds.sem_nsems, sds.sem_perm.mode & 0777, sds.sem_perm.__key == key);
    struct msqid_ds qds;
    if (syscall(SYS_msgctl, q, IPC_STAT, &qds) != 0) ERR("syscall(SYS_msgctl): %s", strerror(errno));
    printf("queue: %lu messages, mode %o\n", (unsigned long)qds.msg_qnum, qds.msg_perm.mode & 0777);
    for (;;) {
        n = msgrcv(q, &m, sizeof m.text, 0, IPC_NOWAIT);
        if (n < 0) break;
        printf("left in the queue: type %ld %s\n", m.type, m.text);
    }
    if (errno != ENOMSG) ERR("msgrcv: %s", strerror(errno));
    if (shmdt(b) != 0) ERR("shmdt: %s", strerror(errno));
    printf("removed segment after detach: %s\n", shmctl(priv, IPC_STAT, &ds) == 0 ? "still there" : "gone");
    if (semctl(sem, 0, GETVAL) != 1) ERR("semaphore 0 is %d", semctl(sem, 0, GETVAL));
    /* A program exec'd with the queue's id in its arguments uses it. */
    fflush(stdout);
    pid_t h = fork();
    if (h == 0) {
        char arg[32];
        snprintf(arg, sizeof arg, "%d", q);
        execl("/proc/self/exe", argv[0], "exec-helper", arg, (char *)NULL);
        _exit(71);
    }
    if (waitpid(h, &st, 0) != h || !WIFEXITED(st) || WEXITSTATUS(st) != 0) ERR("exec helper: status %#x", st);
    n = msgrcv(q, &m, sizeof m.text, 5, IPC_NOWAIT);
    printf("from the exec'd program: %s\n", n > 0 ? m.text : strerror(errno));
    gate(2);
    if (shmdt(a) != 0) ERR("shmdt: %s", strerror(errno));
    if (shmctl(shm, IPC_RMID, NULL) != 0) ERR("shm IPC_RMID: %s", strerror(errno));
    if (semctl(sem, 0, IPC_RMID) != 0) ERR("sem IPC_RMID: %s", strerror(errno));
    if (msgctl(q, IPC_RMID, NULL) != 0) ERR("msg IPC_RMID: %s", strerror(errno));
    printf("removed\n");
    gate(3);
    return probe_exit_code();
}
