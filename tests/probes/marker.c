/* Trivial program for the crlaunch refusal tests (static binary, setuid binary): if it
 * ever runs, it creates the file named by argv[1], which the tests check for. */
#include <stdio.h>

int main(int argc, char **argv) {
    if (argc > 1) {
        FILE *f = fopen(argv[1], "w");
        if (f) {
            fputs("the program ran\n", f);
            fclose(f);
        }
    }
    puts("marker ran");
    return 0;
}
