/* bench/idle.c: sleeps until killed (resident-memory measurements). */
#include <unistd.h>
int main(void) {
    for (;;) pause();
}
