//! Kernel objects (issue 6) beyond plain fds: POSIX timers (`timer_create`) with their
//! ids, signals, values, threads and settings (probe `tests/probes/ptimers.c`).

use crust_tests::*;

/// Timers of every kind (a signal with a value, a signal to one thread, SIGEV_NONE,
/// glibc's SIGEV_THREAD, one never armed, ids with a gap) keep their ids, settings and
/// signals across a restart: every `timer_t` stays valid, they fire on with the right
/// values, and new timers (also SIGEV_THREAD ones) work after the restart. The output
/// equals an uninterrupted run's.
#[test]
fn posix_timers_keep_ids_signals_and_settings() {
    let s = Session::new("kobj_ptimers");
    Flow::new(&s, Program::c("ptimers")).canonical();
}

/// A restored process's timers are checkpointed again: restart, checkpoint the restored
/// program at the same gate, kill it, restart again; the output equals the reference.
#[test]
fn posix_timers_survive_a_second_restart() {
    let s = Session::new("kobj_ptimers_twice");
    let f = Flow::new(&s, Program::c("ptimers"));
    let mut run = f.launch();
    let ck = f.checkpoint_at(&mut run, 1);
    f.kill(&mut [&mut run]);
    let mut r = f.restart(&ck);
    let ck2 = f.checkpoint_at(&mut r, 1);
    f.kill(&mut [&mut r]);
    let mut r2 = f.restart(&ck2);
    f.finish(&mut r2);
}
