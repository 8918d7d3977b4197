/* Application API probe (api/include/crust.h).
 *
 * Registers the three hooks (they count their calls and remember the CRID they got),
 * marks a socketpair "do not checkpoint", asks for a checkpoint with cr_checkpoint() after
 * gate 1 and prints what it returned (> 0: the CRID in the running program; 0: restarted
 * from that checkpoint; -1: not under crust), then holds a nested critical section
 * (cr_disable twice) across gates 3 and 4, leaving the inner one between them and the
 * outer one after gate 4. Without crust it runs alone: cr_is_enabled() is 0 and
 * cr_checkpoint() returns -1.
 */
#include "gate.h"

#include <crust.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <unistd.h>

static atomic_int n_before, n_resume, n_restart;
static atomic_llong crid_before, crid_restart;

static void on_before(long long crid, void *arg) {
    (void)arg;
    crid_before = crid;
    n_before++;
}
static void on_resume(long long crid, void *arg) {
    (void)arg;
    (void)crid;
    n_resume++;
}
static void on_restart(long long crid, void *arg) {
    (void)arg;
    crid_restart = crid;
    n_restart++;
}

int main(void) {
    int enabled = cr_is_enabled();
    printf("enabled %d\n", enabled);
    if (enabled) {
        int ok = cr_on_checkpoint(on_before, NULL) == 0 && cr_on_resume(on_resume, NULL) == 0 &&
                 cr_on_restart(on_restart, NULL) == 0;
        printf("hooks registered %d\n", ok);
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0 || dup2(sv[0], 200) != 200 || dup2(sv[1], 201) != 201) {
        ERR("socketpair: %s", strerror(errno));
        return 1;
    }
    close(sv[0]);
    close(sv[1]);
    printf("ignore fds %d %d\n", cr_ignore_fd(200), cr_ignore_fd(201));
    printf("enable outside a section %d\n", cr_enable());
    gate(1);

    long long id = cr_checkpoint();
    if (id > 0)
        printf("checkpoint taken %lld\n", id);
    else if (id == 0)
        printf("restarted\n");
    else
        printf("checkpoint failed %lld\n", id);
    printf("hooks before=%d resume=%d restart=%d crid_before=%lld crid_restart=%lld\n", n_before, n_resume, n_restart,
           (long long)crid_before, (long long)crid_restart);
    printf("socketpair %s\n", fcntl(200, F_GETFD) == -1 && fcntl(201, F_GETFD) == -1 ? "closed" : "open");
    gate(2);

    int d1 = cr_disable();
    int d2 = cr_disable();
    printf("critical section %d %d\n", d1, d2);
    gate(3);
    printf("leave inner %d\n", cr_enable());
    gate(4);
    int e = cr_enable();
    gate(5);
    printf("left outer %d\n", e);
    return probe_exit_code();
}
