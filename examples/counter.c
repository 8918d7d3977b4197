/* The demo program: a multi-threaded counter that knows nothing about crust. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static long total;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static void *worker(void *arg) {
    long id = (long)arg;
    for (int i = 0; i < 30; i++) {
        pthread_mutex_lock(&lock);
        total += id + i;
        pthread_mutex_unlock(&lock);
        usleep(20000);
    }
    return NULL;
}

int main(void) {
    long *heap = malloc(8 << 20); /* 8 MiB of state on the heap */
    for (int step = 1; step <= 20; step++) {
        pthread_t t[4];
        for (long i = 0; i < 4; i++) pthread_create(&t[i], NULL, worker, (void *)i);
        for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
        heap[step * 1000] = total;
        printf("step %2d: total %ld\n", step, heap[step * 1000]);
        fflush(stdout);
    }
    return 0;
}
