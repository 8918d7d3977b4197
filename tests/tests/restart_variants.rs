//! Variations on checkpoint/restart: one generation restarted twice, a chain of
//! checkpoint-restart-checkpoint-restart, restarting from an older generation or from the
//! checkpoint directory, stdout on a pipe, and periodic checkpoints.

use crust_tests::*;

/// A generation restarted twice gives the same result twice, and restarting does not
/// modify it. Between the two restarts the output file holds the complete output plus
/// garbage: the second restart must truncate it back to its checkpoint-time size.
#[test]
fn one_generation_restarts_twice_identically() {
    let s = Session::new("restart_twice");
    let f = Flow::new(&s, probe::memory());
    let mut run = f.launch();
    let ck = f.checkpoint_at(&mut run, 1);
    s.advance_to(&mut run, 2);
    f.kill(&mut [&mut run]);
    let pristine = dir_fingerprint(&ck.gen);

    let mut first = f.restart(&ck);
    f.finish(&mut first);
    f.kill(&mut [&mut first]);
    assert_eq!(dir_fingerprint(&ck.gen), pristine, "restarting changed the generation's files");

    let mut second = f.restart(&ck);
    f.finish(&mut second);
}

/// launch → checkpoint A at gate 1 → kill → restart A → checkpoint B at gate 2 → kill →
/// restart B → run to the end. Multi-threaded, so the restored threads are checkpointed
/// again.
#[test]
fn checkpoint_restart_chain_of_three_runs_identically() {
    let s = Session::new("chain_of_three");
    let f = Flow::new(&s, probe::threads());
    let mut run = f.launch();
    let ck1 = f.checkpoint_at(&mut run, 1);
    s.advance_to(&mut run, 2);
    f.kill(&mut [&mut run]);

    let mut second = f.restart(&ck1);
    let ck2 = f.checkpoint_at(&mut second, 2);
    assert_ne!(ck2.gen, ck1.gen, "the restarted program's checkpoint must be a new generation");
    s.advance_to(&mut second, 3);
    f.kill(&mut [&mut second]);

    let mut third = f.restart(&ck2);
    f.finish(&mut third);
}

/// Two generations (gates 1 and 2); restarting the first resumes at gate 1, not at the
/// newest state.
#[test]
fn restart_from_older_generation_resumes_there() {
    let s = Session::new("older_generation");
    let f = Flow::new(&s, probe::memory());
    let mut run = f.launch();
    let ck1 = f.checkpoint_at(&mut run, 1);
    let ck2 = f.checkpoint_at(&mut run, 2);
    assert_ne!(ck1.gen, ck2.gen);
    assert!(ck1.gen.ends_with("gen-000001") && ck2.gen.ends_with("gen-000002"), "{ck1:?} {ck2:?}");
    s.advance_to(&mut run, 3);
    f.kill(&mut [&mut run]);

    let mut r = f.restart(&ck1);
    f.finish(&mut r);
}

/// `crrestart CKPT_DIR` picks the newest complete generation and ignores a newer
/// incomplete one (no manifest, as an interrupted checkpoint leaves it).
#[test]
fn restart_from_checkpoint_dir_uses_newest_complete_generation() {
    let s = Session::new("restart_ckpt_dir");
    let f = Flow::new(&s, probe::memory());
    let mut run = f.launch();
    let _ck1 = f.checkpoint_at(&mut run, 1);
    let ck2 = f.checkpoint_at(&mut run, 2);
    s.advance_to(&mut run, 3);
    f.kill(&mut [&mut run]);

    let incomplete = computation_dir(&s.ckpt_dir).join("gen-000003");
    copy_dir_files(&ck2.gen, &incomplete);
    std::fs::remove_file(incomplete.join("manifest.json")).expect("remove manifest of the copy");

    let mut r = f.restart_from(&s.ckpt_dir, &ck2);
    f.finish(&mut r);
}

/// stdout on a pipe: before the checkpoint the program writes into the pipe crlaunch was
/// given; after the restart into crrestart's own stdout pipe. Together (cut at the
/// checkpoint's gate) they are the reference output.
#[test]
fn stdout_pipe_is_replaced_by_crrestart_stdout() {
    let s = Session::new("stdout_pipe");
    let f = Flow::with_opts(&s, probe::rust(env!("CARGO_BIN_EXE_rust_probe")), LaunchOpts::pipe());
    let reference = f.reference.stdout.clone();
    let mut run = f.launch();
    let ck = f.checkpoint_at(&mut run, 1);
    s.advance_to(&mut run, 2);
    f.kill(&mut [&mut run]);
    let before = run.pipe_output(READY_TIMEOUT);
    assert_same_bytes(&reference[..end_of_gate_line(&reference, 2)], &before, "output of the original, through its pipe");

    s.prepare_restart_at(1);
    let mut r = s.restart(&ck.gen, &StdoutTo::Pipe);
    assert_eq!(s.wait_any_reached(&mut r), 1, "the restored program must resume at gate 1");
    let status = s.drive_to_exit(&mut r);
    let after = r.pipe_output(READY_TIMEOUT);
    assert_same_bytes(
        &reference[end_of_gate_line(&reference, 1)..],
        &after,
        "output of the restored program, through crrestart's stdout pipe",
    );
    assert_eq!(status.code(), f.reference.status.code(), "exit status of crrestart: {}", status_text(&status));
}

/// `crlaunch --interval 1`: the coordinator checkpoints on its own, repeatedly; the
/// newest complete generation restarts correctly even if the kill interrupts a checkpoint.
#[test]
fn periodic_checkpoints_with_interval_are_restartable() {
    let s = Session::new("interval");
    let out = s.root.join("program.out");
    let f = Flow::with_opts(&s, probe::memory(), LaunchOpts::file(&out).interval(1));
    let mut run = f.launch();
    s.wait_reached(&mut run, 1);
    assert!(
        wait_until(READY_TIMEOUT, || complete_generations(&s.ckpt_dir).len() >= 2),
        "no two complete generations within {READY_TIMEOUT:?} with --interval 1: {:?}\n{}",
        complete_generations(&s.ckpt_dir),
        s.diagnostics()
    );
    f.kill(&mut [&mut run]);

    let at_gate_1 = Checkpointed {
        gen: s.ckpt_dir.clone(),
        gate: 1,
        out_len: end_of_gate_line(&f.reference.stdout, 1) as u64,
    };
    let mut r = f.restart_from(&s.ckpt_dir, &at_gate_1);
    f.finish(&mut r);
}
