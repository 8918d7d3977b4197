/* Concurrent cr_checkpoint: four threads ask for five checkpoints each (thread 0 also
 * enters and leaves a critical section before each request). Every call must return a
 * CRID larger than the previous one of the same thread (a checkpoint taken after the
 * call); requests made together may share a generation. Prints one line per thread and
 * exits 23 when all is well (1 otherwise, or when not under crust).
 */
#include "gate.h"

#include <crust.h>
#include <pthread.h>
#include <unistd.h>

static int bad_total;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static void *worker(void *arg) {
    long id = (long)arg;
    long long last = 0;
    int bad = 0;
    for (int i = 0; i < 5; i++) {
        if (id == 0) {
            cr_disable();
            usleep(5000);
            cr_enable();
        }
        long long r = cr_checkpoint();
        if (r <= last) bad++;
        last = r;
    }
    pthread_mutex_lock(&lock);
    printf("thread %ld: 5 checkpoints, increasing: %s\n", id, bad ? "no" : "yes");
    bad_total += bad;
    pthread_mutex_unlock(&lock);
    return NULL;
}

int main(void) {
    if (!cr_is_enabled()) {
        printf("not under crust\n");
        return 1;
    }
    pthread_t t[4];
    for (long i = 0; i < 4; i++) pthread_create(&t[i], NULL, worker, (void *)i);
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    return bad_total ? 1 : PROBE_EXIT_CODE;
}
