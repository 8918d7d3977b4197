//! Checkpoint/restart of the C probes, compared byte for byte with uninterrupted
//! reference runs.
//!
//! `*_restarts_identically`: the canonical scenario: launch under crust, checkpoint at
//! gate 1, let the program run on to gate 2, SIGKILL it, restart from the checkpoint
//! (stdout goes back to the program's output file, truncated to its checkpoint-time size),
//! release the gates: output and exit status must equal the reference's.
//! `*_runs_on_identically_after_checkpoint`: checkpoint at gate 1 and let the original
//! process run to its end: the checkpoint must be invisible to it.

use crust_tests::*;

#[test]
fn single_threaded_memory_c_restarts_identically() {
    let s = Session::new("memory_restart");
    Flow::new(&s, probe::memory()).canonical();
}

#[test]
fn single_threaded_memory_c_runs_on_identically_after_checkpoint() {
    let s = Session::new("memory_run_on");
    Flow::new(&s, probe::memory()).checkpoint_and_run_on();
}

#[test]
fn multithreaded_c_restarts_identically() {
    let s = Session::new("threads_restart");
    Flow::new(&s, probe::threads()).canonical();
}

#[test]
fn multithreaded_c_runs_on_identically_after_checkpoint() {
    let s = Session::new("threads_run_on");
    Flow::new(&s, probe::threads()).checkpoint_and_run_on();
}

/// The probe uses SIGUSR2 (crust's default checkpoint signal) itself, so it runs with
/// `--signal SIGUSR1`; the checkpoint at gate 1 is taken while the program blocks all
/// signals with sigprocmask.
#[test]
fn signals_c_restarts_identically_with_sigusr1_as_checkpoint_signal() {
    let s = Session::new("signals_restart");
    let out = s.root.join("program.out");
    Flow::with_opts(&s, probe::signals(), LaunchOpts::file(&out).signal("SIGUSR1")).canonical();
}

#[test]
fn signals_c_runs_on_identically_after_checkpoint() {
    let s = Session::new("signals_run_on");
    let out = s.root.join("program.out");
    Flow::with_opts(&s, probe::signals(), LaunchOpts::file(&out).signal("SIGUSR1")).checkpoint_and_run_on();
}

/// The checkpoint interrupts a thread spinning with its state in vector and x87 registers
/// under non-default MXCSR/x87 control words.
#[test]
fn fp_and_vector_registers_survive_restart_in_tight_loop() {
    let s = Session::new("fp_restart");
    Flow::new(&s, probe::fp()).canonical();
}

#[test]
fn fp_and_vector_registers_survive_checkpoint_in_tight_loop() {
    let s = Session::new("fp_run_on");
    Flow::new(&s, probe::fp()).checkpoint_and_run_on();
}

/// cwd, umask, rlimits, environment, comm, file offsets and flags survive a restart, and
/// the restored process shows the original command line and name (what `ps` shows).
#[test]
fn process_state_cwd_umask_rlimits_env_files_and_cmdline_survive_restart() {
    let s = Session::new("procstate_restart");
    let f = Flow::new(&s, probe::procstate());
    let argv = f.prog.argv();
    let mut run = f.launch();
    let ck = f.checkpoint_at(&mut run, 1);
    assert_eq!(proc_cmdline(run.pid), Some(argv.clone()), "the launched program's /proc/PID/cmdline");
    s.advance_to(&mut run, 2);
    f.kill(&mut [&mut run]);

    let mut r = f.restart(&ck);
    // The restored program waits at gate 1: look for it the way ps would.
    let shown: Vec<(i32, Option<Vec<std::ffi::OsString>>)> =
        s.tagged_processes().into_iter().map(|p| (p, proc_cmdline(p))).collect();
    let restored: Vec<i32> = shown.iter().filter(|(_, c)| c.as_ref() == Some(&argv)).map(|(p, _)| *p).collect();
    assert_eq!(
        restored.len(),
        1,
        "expected exactly one process whose /proc/PID/cmdline is the original argv {argv:?}; processes of \
         this test: {shown:?}"
    );
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", restored[0])).unwrap_or_default();
    assert_eq!(comm.trim_end(), "crust-probe-nm", "/proc/PID/comm of the restored program");
    f.finish(&mut r);
}
