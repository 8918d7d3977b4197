//! Forked (copy-on-write) checkpoints: the image is written by a copy of the process
//! while the program runs on.
//!
//! * A program whose threads rewrite a large buffer without pause restarts at exactly the
//!   snapshot moment (its threads check that memory and their own running sums agree).
//! * Killing the writer, or a writer that hangs, fails that generation cleanly: crctl says
//!   why, the previous generation is intact and restartable, the program runs on.
//! * `--no-forked` (stop-the-world) still works.
//! * The program never sees the writer: no SIGCHLD, nothing for wait(), no children.

use crust_tests::*;
use std::fs;
use std::path::Path;
use std::time::Duration;

/// (downtime_us, write_us) of the single process of a generation's manifest.
fn manifest_times(gen: &Path) -> (u64, u64) {
    let m: serde_json::Value = serde_json::from_slice(&fs::read(gen.join("manifest.json")).expect("read manifest"))
        .expect("parse manifest");
    let p = &m["processes"][0];
    (p["downtime_us"].as_u64().expect("downtime_us"), p["write_us"].as_u64().expect("write_us"))
}

#[test]
fn dirtying_threads_restart_at_the_snapshot_moment_of_a_forked_checkpoint() {
    let s = Session::new("forked_dirty_restart");
    let f = Flow::new(&s, probe::dirty());
    let mut run = f.launch();
    let ck = f.checkpoint_at(&mut run, 1);
    let (downtime, _) = manifest_times(&ck.gen);
    assert!(downtime > 0, "no downtime recorded");
    s.advance_to(&mut run, 2);
    f.kill(&mut [&mut run]);
    let mut r = f.restart(&ck);
    f.finish(&mut r);
}

/// The same with MAP_SHARED anonymous memory, which the writer shares with the program
/// instead of getting a copy-on-write copy: it must be captured while the program is
/// stopped.
#[test]
fn dirtying_threads_in_shared_memory_restart_at_the_snapshot_moment() {
    let s = Session::new("forked_dirty_shared");
    let f = Flow::new(&s, probe::dirty().arg("4").arg("3").arg("shared"));
    let mut run = f.launch();
    let ck = f.checkpoint_at(&mut run, 1);
    s.advance_to(&mut run, 2);
    f.kill(&mut [&mut run]);
    let mut r = f.restart(&ck);
    f.finish(&mut r);
}

#[test]
fn dirtying_threads_run_on_correctly_after_forked_checkpoints() {
    let s = Session::new("forked_dirty_run_on");
    let f = Flow::new(&s, probe::dirty());
    let mut run = f.launch();
    f.checkpoint_at(&mut run, 1);
    f.checkpoint_at(&mut run, 2);
    f.finish(&mut run);
}

/// Stop-the-world mode (`crlaunch --no-forked`): restart identical, and the downtime
/// covers the whole write (the program was stopped while its image was written).
#[test]
fn no_forked_writes_stop_the_world_and_restarts_identically() {
    let s = Session::new("no_forked_restart");
    let out = s.root.join("program.out");
    let f = Flow::with_opts(&s, probe::dirty(), LaunchOpts::file(&out).no_forked());
    let mut run = f.launch();
    let ck = f.checkpoint_at(&mut run, 1);
    let (downtime, write) = manifest_times(&ck.gen);
    assert!(downtime > write, "stop-the-world downtime {downtime} us must include the write ({write} us)");
    s.advance_to(&mut run, 2);
    f.kill(&mut [&mut run]);
    let mut r = f.restart(&ck);
    f.finish(&mut r);
}

/// A process started with `CR_FORKED=0` under a coordinator that runs forked generations
/// writes its image itself while stopped (in the capture phase); the coordinator logs the
/// exact per-process downtime; the restart is identical.
#[test]
fn a_process_declining_forking_writes_stop_the_world_in_a_forked_generation() {
    if suite_no_forked() {
        return; // needs a forked coordinator
    }
    let s = Session::new("forked_declined");
    let coord = s.start_coordinator(&[], &[]);
    let f = Flow::new(&s, probe::dirty().env("CR_FORKED", "0"));
    let mut run = f.launch();
    let ck = f.checkpoint_at(&mut run, 1);
    let (downtime, write) = manifest_times(&ck.gen);
    assert!(downtime > write, "the declining process's downtime {downtime} us must include its write ({write} us)");
    let log = coord.stderr_text();
    assert!(log.contains("forked=true"), "the coordinator did not run a forked generation:\n{log}");
    assert!(log.contains(&format!("downtime_us={downtime}")), "the coordinator log does not show the downtime:\n{log}");
    s.advance_to(&mut run, 2);
    f.kill(&mut [&mut run]);
    let mut r = f.restart(&ck);
    f.finish(&mut r);
}

/// When no writer can be created, the process writes its image while stopped: the
/// checkpoint succeeds (with a stop-the-world downtime) and restarts identically.
#[test]
fn without_a_writer_the_image_is_written_while_stopped() {
    if suite_no_forked() {
        return; // about forked generations
    }
    let s = Session::new("forked_no_writer");
    let pause = s.root.join("writer-pause");
    fs::create_dir_all(pause.join("no-writer")).unwrap();
    let f = Flow::new(&s, probe::dirty().env("CR_TEST_WRITER_PAUSE", &pause));
    let mut run = f.launch();
    let ck = f.checkpoint_at(&mut run, 1);
    let (downtime, write) = manifest_times(&ck.gen);
    assert!(downtime > write, "downtime {downtime} us must include the write ({write} us) without a writer");
    s.advance_to(&mut run, 2);
    f.kill(&mut [&mut run]);
    let mut r = f.restart(&ck);
    f.finish(&mut r);
}

/// Run `crctl checkpoint --wait` in the background while the writer, armed through
/// `CR_TEST_WRITER_PAUSE`, announces its pid and waits; `with_writer` gets that pid.
fn checkpoint_with_paused_writer(s: &Session, pause: &Path, with_writer: impl FnOnce(i32)) -> CmdOutput {
    let pidfile = pause.join("writer.pid");
    let _ = fs::remove_file(&pidfile);
    fs::create_dir_all(pause.join("arm")).expect("arm the writer pause");
    s.settle_gate_fds();
    let out = std::thread::scope(|sc| {
        let h = sc.spawn(|| s.crctl(&["checkpoint", "--wait"]));
        assert!(wait_for_file(&pidfile, READY_TIMEOUT), "the writer never announced itself\n{}", s.diagnostics());
        let pid: i32 = fs::read_to_string(&pidfile).unwrap().trim().parse().expect("writer pid");
        with_writer(pid);
        h.join().expect("crctl thread")
    });
    fs::remove_dir(pause.join("arm")).expect("disarm");
    out
}

/// The writer's parent pid and name from /proc.
fn ppid_and_comm(pid: i32) -> (i32, String) {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("writer stat");
    let (head, rest) = stat.rsplit_once(')').unwrap();
    let comm = head.split_once('(').unwrap().1.to_string();
    let ppid = rest.split_whitespace().nth(1).unwrap().parse().unwrap();
    (ppid, comm)
}

#[test]
fn killing_the_writer_fails_that_generation_and_keeps_the_previous_one() {
    if suite_no_forked() {
        return; // needs a writer (the suite runs with CRUST_TEST_NO_FORKED=1)
    }
    let s = Session::new("forked_writer_killed");
    let pause = s.root.join("writer-pause");
    fs::create_dir_all(&pause).unwrap();
    let f = Flow::new(&s, probe::dirty().env("CR_TEST_WRITER_PAUSE", &pause));
    let mut run = f.launch();
    let ck1 = f.checkpoint_at(&mut run, 1);
    let before = dir_fingerprint(&ck1.gen);

    let out = checkpoint_with_paused_writer(&s, &pause, |wpid| {
        let (ppid, comm) = ppid_and_comm(wpid);
        assert_ne!(ppid, run.pid, "the writer is a child of the program");
        assert_eq!(comm, "crust-writer");
        kill9(wpid);
    });
    assert!(!out.status.success(), "crctl checkpoint --wait succeeded although its writer was killed: {}", out.describe());
    let text = out.all_text_lower();
    assert!(text.contains("writer") && text.contains("died"), "crctl does not name the failure: {}", out.describe());

    assert_eq!(complete_generations(&s.ckpt_dir), vec![ck1.gen.clone()], "complete generations after the failure");
    assert_eq!(dir_fingerprint(&ck1.gen), before, "the previous generation changed");
    let comp = computation_dir(&s.ckpt_dir);
    let leftovers: Vec<String> = fs::read_dir(&comp)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("gen-") && comp.join(n) != ck1.gen)
        .collect();
    assert!(leftovers.is_empty(), "the failed generation left {leftovers:?}");

    // The program runs on: it checkpoints again and ends exactly like the reference.
    f.checkpoint_at(&mut run, 2);
    f.finish(&mut run);
    // The previous generation restarts.
    let mut r = f.restart(&ck1);
    f.finish(&mut r);
}

#[test]
fn a_hanging_writer_is_killed_after_the_writer_timeout() {
    if suite_no_forked() {
        return; // needs a writer (the suite runs with CRUST_TEST_NO_FORKED=1)
    }
    let s = Session::new("forked_writer_hangs");
    let pause = s.root.join("writer-pause");
    fs::create_dir_all(&pause).unwrap();
    let f = Flow::new(&s, probe::dirty().env("CR_TEST_WRITER_PAUSE", &pause).env("CR_WRITER_TIMEOUT", "1"));
    let mut run = f.launch();
    s.advance_to(&mut run, 1);
    s.wait_registered(1);
    let mut writer = 0;
    let out = checkpoint_with_paused_writer(&s, &pause, |wpid| writer = wpid);
    assert!(!out.status.success(), "a hanging writer did not fail the checkpoint: {}", out.describe());
    assert!(out.all_text_lower().contains("did not finish within 1 s"), "crctl does not name the timeout: {}", out.describe());
    assert!(wait_until(READY_TIMEOUT, || !process_alive(writer)), "the hanging writer {writer} was not killed");
    assert!(complete_generations(&s.ckpt_dir).is_empty());
    // (No second checkpoint here: a 1 s writer timeout is too short for a loaded machine.)
    f.finish(&mut run);
}

/// The program dying while its writer works fails the generation: no image is published,
/// the generation directory goes, and the writer, finding nobody listening, ends.
#[test]
fn the_program_dying_while_its_writer_writes_fails_the_generation() {
    if suite_no_forked() {
        return; // needs a writer
    }
    let s = Session::new("forked_program_dies");
    let pause = s.root.join("writer-pause");
    fs::create_dir_all(&pause).unwrap();
    let f = Flow::new(&s, probe::dirty().env("CR_TEST_WRITER_PAUSE", &pause));
    let mut run = f.launch();
    let ck1 = f.checkpoint_at(&mut run, 1);
    let mut writer = 0;
    let out = checkpoint_with_paused_writer(&s, &pause, |wpid| {
        writer = wpid;
        run.kill9();
    });
    assert!(!out.status.success(), "the checkpoint of a program that died succeeded: {}", out.describe());
    assert!(out.all_text_lower().contains("ended before its image was written"), "crctl does not say why: {}", out.describe());
    assert!(wait_until(READY_TIMEOUT, || !process_alive(writer)), "the writer {writer} outlived its program");
    assert_eq!(complete_generations(&s.ckpt_dir), vec![ck1.gen.clone()]);
    let mut r = f.restart(&ck1);
    f.finish(&mut r);
}

/// A program that execs while its writer still writes waits for the writer (the exec
/// would end this process's part of the generation before its image is durable).
#[test]
fn exec_while_the_writer_writes_waits_for_it() {
    if suite_no_forked() {
        return; // needs a writer
    }
    let s = Session::new("forked_exec");
    let pause = s.root.join("writer-pause");
    fs::create_dir_all(&pause).unwrap();
    let f = Flow::new(&s, Program::c("execer").env("CR_TEST_WRITER_PAUSE", &pause));
    let mut run = f.launch();
    s.advance_to(&mut run, 1);
    s.wait_registered(1);
    let pidfile = pause.join("writer.pid");
    fs::create_dir_all(pause.join("arm")).unwrap();
    s.settle_gate_fds();
    let out = std::thread::scope(|sc| {
        let h = sc.spawn(|| s.crctl(&["checkpoint", "--wait"]));
        assert!(wait_for_file(&pidfile, READY_TIMEOUT), "the writer never announced itself\n{}", s.diagnostics());
        s.gate.go(1);
        // The program is at its exec, held there while the writer is paused.
        let pid = run.pid;
        let held = wait_until(READY_TIMEOUT, || {
            let said = fs::read_to_string(&f.out).unwrap_or_default();
            let sc = fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
            said.contains("about to exec") && !said.contains("after exec") && sc.starts_with("202 ")
        });
        assert!(held, "the program did not wait at its exec:\n{}", fs::read_to_string(&f.out).unwrap_or_default());
        fs::remove_dir(pause.join("arm")).unwrap();
        h.join().expect("crctl thread")
    });
    assert!(out.status.success(), "the checkpoint failed although the exec waited: {}", out.describe());
    f.finish(&mut run);
}

/// A program that is a child subreaper, counts SIGCHLDs and polls wait() and its children
/// without pause never sees the writers of checkpoints taken before and after a restart.
#[test]
fn the_program_never_sees_the_writer() {
    let s = Session::new("forked_invisible");
    let f = Flow::new(&s, probe::childwatch());
    let mut run = f.launch();
    f.checkpoint_at(&mut run, 1);
    let ck2 = f.checkpoint_at(&mut run, 2);
    s.advance_to(&mut run, 3);
    f.kill(&mut [&mut run]);
    let mut r = f.restart(&ck2);
    s.advance_to(&mut r, 3);
    s.checkpoint();
    f.finish(&mut r);
    // No writer outlives its checkpoint.
    assert!(
        wait_until(Duration::from_secs(10), || s.tagged_processes().iter().all(|&p| ppid_and_comm_opt(p) != Some("crust-writer".into()))),
        "a writer is still alive: {}",
        s.process_report()
    );
}

fn ppid_and_comm_opt(pid: i32) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat.split_once('(')?.1.rsplit_once(')')?.0.to_string())
}
