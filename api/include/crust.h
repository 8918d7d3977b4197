/* crust.h — the crust application API (C and C++).
 *
 * A program that includes this header runs unchanged without crust: every function is
 * declared weak and called through a check, so when the program does not run under
 * `crlaunch` (the preload library that defines the functions is absent) cr_is_enabled()
 * returns 0, cr_checkpoint() returns -1 and the rest do nothing and return -1. No library
 * to link against; just include the header.
 *
 *   long long id = cr_checkpoint();
 *   if (id > 0)       { running: checkpoint `id` (its CRID, the generation number) is complete }
 *   else if (id == 0) { restarted: the program was restarted from the checkpoint it asked for }
 *   else              { error: not under crust, no coordinator, or the checkpoint failed }
 *
 * Rules:
 *  - cr_checkpoint() checkpoints the whole computation (every process of it) and waits until
 *    the generation is complete (its manifest is durable). The calling thread is stopped in
 *    the checkpoint like every other thread. It returns -1 when called from a hook or inside
 *    a critical section (it would wait for itself). If a checkpoint is already under way it
 *    waits for it and asks for a new one, so the checkpoint always follows the call.
 *  - cr_disable()/cr_enable() bracket a critical section (they nest, per thread). While any
 *    thread is inside one, a checkpoint waits (the process shows as "held" in `crctl status`;
 *    the coordinator's --generation-timeout bounds the wait and names the process). A thread
 *    calling cr_disable() while a checkpoint is about to stop the program waits until the
 *    program runs again.
 *  - Hooks run on crust's checkpoint thread, in an ordinary thread context (not a signal
 *    handler), while the program's threads run: they may use malloc, stdio and locks. The
 *    before-checkpoint hook runs before the threads are stopped and the checkpoint waits for
 *    it; the resume hook runs when the process is done with a checkpoint (also a failed one;
 *    with forked checkpoints once its image is written, the threads having run again since
 *    the capture); the restart hook runs after a restart, before cr_checkpoint() returns 0 in the
 *    thread that asked for the checkpoint (other threads already run). A hook must not call
 *    cr_checkpoint() and must not wait for a thread that is inside cr_checkpoint() or a
 *    critical section. Up to 8 hooks of each kind; `crid` is the generation (for the restart
 *    hook: the one the program was restarted from).
 *  - cr_ignore_fd(fd) keeps a descriptor out of checkpoints (e.g. a socket to a service the
 *    program reconnects to in its restart hook): after a restart it is closed. The mark stays
 *    on the number until cr_unignore_fd(fd). Up to 64 descriptors.
 */
#ifndef CRUST_H
#define CRUST_H

#ifdef __cplusplus
extern "C" {
#endif

typedef void (*cr_hook_fn)(long long crid, void *arg);

/* The preload's symbols, referenced weakly under private C names. */
extern int crust_sym_is_enabled(void) __asm__("cr_is_enabled") __attribute__((weak));
extern long long crust_sym_checkpoint(void) __asm__("cr_checkpoint") __attribute__((weak));
extern int crust_sym_disable(void) __asm__("cr_disable") __attribute__((weak));
extern int crust_sym_enable(void) __asm__("cr_enable") __attribute__((weak));
extern int crust_sym_ignore_fd(int) __asm__("cr_ignore_fd") __attribute__((weak));
extern int crust_sym_unignore_fd(int) __asm__("cr_unignore_fd") __attribute__((weak));
extern int crust_sym_on_checkpoint(cr_hook_fn, void *) __asm__("cr_on_checkpoint") __attribute__((weak));
extern int crust_sym_on_resume(cr_hook_fn, void *) __asm__("cr_on_resume") __attribute__((weak));
extern int crust_sym_on_restart(cr_hook_fn, void *) __asm__("cr_on_restart") __attribute__((weak));

/* The API, as inline functions with their own assembler names (so they never clash with
 * the preload's symbols of the same C name). */
static inline int cr_is_enabled(void) __asm__("crust_inline_cr_is_enabled");
static inline long long cr_checkpoint(void) __asm__("crust_inline_cr_checkpoint");
static inline int cr_disable(void) __asm__("crust_inline_cr_disable");
static inline int cr_enable(void) __asm__("crust_inline_cr_enable");
static inline int cr_ignore_fd(int fd) __asm__("crust_inline_cr_ignore_fd");
static inline int cr_unignore_fd(int fd) __asm__("crust_inline_cr_unignore_fd");
static inline int cr_on_checkpoint(cr_hook_fn fn, void *arg) __asm__("crust_inline_cr_on_checkpoint");
static inline int cr_on_resume(cr_hook_fn fn, void *arg) __asm__("crust_inline_cr_on_resume");
static inline int cr_on_restart(cr_hook_fn fn, void *arg) __asm__("crust_inline_cr_on_restart");

/* 1 when the program runs under crust, else 0. */
static inline int cr_is_enabled(void) { return crust_sym_is_enabled ? crust_sym_is_enabled() : 0; }
/* CRID (> 0) when the checkpoint is complete, 0 after a restart from it, -1 on error. */
static inline long long cr_checkpoint(void) { return crust_sym_checkpoint ? crust_sym_checkpoint() : -1; }
/* Enter / leave a critical section (0 on success; cr_enable: -1 when not in one). */
static inline int cr_disable(void) { return crust_sym_disable ? crust_sym_disable() : -1; }
static inline int cr_enable(void) { return crust_sym_enable ? crust_sym_enable() : -1; }
/* Do not checkpoint fd / checkpoint it again. */
static inline int cr_ignore_fd(int fd) { return crust_sym_ignore_fd ? crust_sym_ignore_fd(fd) : -1; }
static inline int cr_unignore_fd(int fd) { return crust_sym_unignore_fd ? crust_sym_unignore_fd(fd) : -1; }
/* Hooks (0 on success, -1 when not under crust or the table is full). */
static inline int cr_on_checkpoint(cr_hook_fn fn, void *arg) {
    return crust_sym_on_checkpoint ? crust_sym_on_checkpoint(fn, arg) : -1;
}
static inline int cr_on_resume(cr_hook_fn fn, void *arg) { return crust_sym_on_resume ? crust_sym_on_resume(fn, arg) : -1; }
static inline int cr_on_restart(cr_hook_fn fn, void *arg) {
    return crust_sym_on_restart ? crust_sym_on_restart(fn, arg) : -1;
}

#ifdef __cplusplus
}
#endif

#endif /* CRUST_H */
