/* `gate_at K...`: pass gates K... in order (see gate.h), for scripts and makefiles whose
 * own language has no gate. Exits 0. */
#include "gate.h"

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) gate(atoi(argv[i]));
    return 0;
}
