/* A program that never creates a child must never see one, checkpoints included: crust's
 * forked image writer must stay invisible. The probe is a child subreaper (the edge case
 * where an orphaned writer would be handed to it), counts SIGCHLDs in a handler, and a
 * watcher thread polls without pause: waitpid(-1, WNOHANG|__WALL) must always fail with
 * ECHILD (while a child exists, even a running one, it returns 0 or its pid), wait3
 * likewise. After each gate (the checkpoint there is complete) /proc/self/task/T/children
 * must list nothing. (The watcher keeps no fd open: a checkpoint may catch it anywhere,
 * and a directory of the old process's /proc cannot be reopened at restart.)
 */
#include "gate.h"
#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

static atomic_int sigchld_count;
static atomic_int stop_flag;
static atomic_long polls;
static int wait_anomalies, children_anomalies;
static char first_anomaly[256];

static void on_sigchld(int sig) {
    (void)sig;
    atomic_fetch_add(&sigchld_count, 1);
}

static int any_children(void) {
    DIR *d = opendir("/proc/self/task");
    if (!d) return 0;
    struct dirent *e;
    int found = 0;
    while ((e = readdir(d)) && !found) {
        if (e->d_name[0] == '.') continue;
        char p[256], buf[256];
        snprintf(p, sizeof p, "/proc/self/task/%s/children", e->d_name);
        FILE *f = fopen(p, "r");
        if (!f) continue;
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = 0;
        if (n > 0 && buf[0] != '\n' && buf[0] != ' ') {
            found = 1;
            if (!first_anomaly[0]) snprintf(first_anomaly, sizeof first_anomaly, "task %s children: %s", e->d_name, buf);
        }
    }
    closedir(d);
    return found;
}

static void *watcher(void *arg) {
    (void)arg;
    while (!atomic_load(&stop_flag)) {
        int st;
        errno = 0;
        pid_t r = waitpid(-1, &st, WNOHANG | __WALL);
        if (r != -1 || errno != ECHILD) {
            wait_anomalies++;
            if (!first_anomaly[0]) snprintf(first_anomaly, sizeof first_anomaly, "waitpid(-1, __WALL) = %d (errno %d)", r, errno);
        }
        errno = 0;
        r = wait3(&st, WNOHANG, NULL);
        if (r != -1 || errno != ECHILD) {
            wait_anomalies++;
            if (!first_anomaly[0]) snprintf(first_anomaly, sizeof first_anomaly, "wait3 = %d (errno %d)", r, errno);
        }
        atomic_fetch_add(&polls, 1);
    }
    return NULL;
}

int main(void) {
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) ERR("prctl(PR_SET_CHILD_SUBREAPER): %s", strerror(errno));
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigchld;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGCHLD, &sa, NULL);
    pthread_t th;
    pthread_create(&th, NULL, watcher, NULL);
    while (atomic_load(&polls) < 100) usleep(100);
    for (int k = 1; k <= 3; k++) {
        gate(k);
        if (any_children()) children_anomalies++;
    }
    atomic_store(&stop_flag, 1);
    pthread_join(th, NULL);
    int sub = -1;
    prctl(PR_GET_CHILD_SUBREAPER, &sub);
    if (sub != 1) ERR("no longer a child subreaper (%d)", sub);
    if (atomic_load(&sigchld_count)) ERR("%d SIGCHLD received", atomic_load(&sigchld_count));
    if (wait_anomalies) ERR("%d wait calls found a child: %s", wait_anomalies, first_anomaly);
    if (children_anomalies) ERR("%d scans listed children: %s", children_anomalies, first_anomaly);
    printf("no child seen\n");
    return probe_exit_code();
}
