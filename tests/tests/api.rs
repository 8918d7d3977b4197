//! The application API (`api/include/crust.h`): cr_checkpoint returns the CRID, then 0
//! after a restart; hooks; "do not checkpoint" descriptors; critical sections delay a
//! checkpoint until cr_enable, bounded by the coordinator's generation timeout; a program
//! using the API runs alone without crust.

use crust_tests::*;
use std::fs;
use std::path::PathBuf;

/// A probe compiled against api/include/crust.h (rebuilt when the header changes).
fn api_program(name: &str) -> Program {
    use std::hash::{Hash, Hasher};
    let include = workspace_dir().join("api").join("include");
    let mut h = std::hash::DefaultHasher::new();
    fs::read(include.join("crust.h")).expect("api/include/crust.h").hash(&mut h);
    Program::new(compile_c(name, &["-I", include.to_str().unwrap()], &format!("h{:x}", h.finish())))
}

/// The API probe (`tests/probes/api.c`).
fn api_probe() -> Program {
    api_program("api")
}

fn text(p: &std::path::Path) -> String {
    String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned()
}

fn gen_dir(s: &Session, n: u64) -> PathBuf {
    computation_dir(&s.ckpt_dir).join(format!("gen-{n:06}"))
}

/// Without crust the probe runs to its end: not enabled, cr_checkpoint returns -1, the
/// other calls fail harmlessly.
#[test]
fn a_program_using_the_api_runs_alone() {
    let s = Session::new("api_alone");
    let r = s.run_reference(&api_probe());
    check_reference(&r);
    let out = r.stdout_text();
    for line in ["enabled 0", "ignore fds -1 -1", "checkpoint failed -1", "socketpair open", "critical section -1 -1", "left outer -1"] {
        assert!(out.lines().any(|l| l == line), "missing {line:?} in:\n{out}");
    }
}

/// cr_checkpoint in the running program returns the CRID (generation 1) once it is
/// complete, after the before-checkpoint and resume hooks ran; restarted from that
/// generation the program comes back inside the call, which returns 0 after the restart
/// hook ran; the descriptors marked with cr_ignore_fd are not checkpointed (the
/// socketpair would otherwise make the restart fail) and are closed after it.
#[test]
fn cr_checkpoint_returns_the_crid_then_0_after_restart() {
    let s = Session::new("api_checkpoint");
    let f = Flow::new(&s, api_probe());
    let mut run = f.launch();
    s.advance_to(&mut run, 2);
    let out = text(&f.out);
    for line in [
        "enabled 1",
        "hooks registered 1",
        "ignore fds 0 0",
        "enable outside a section -1",
        "checkpoint taken 1",
        "hooks before=1 resume=1 restart=0 crid_before=1 crid_restart=0",
        "socketpair open",
    ] {
        assert!(out.lines().any(|l| l == line), "missing {line:?} in the running program's output:\n{out}");
    }
    let gen = gen_dir(&s, 1);
    assert!(gen.join("manifest.json").is_file(), "cr_checkpoint returned before generation 1 was complete");
    let at_checkpoint = end_of_gate_line(&fs::read(&f.out).unwrap(), 1);
    f.kill(&mut [&mut run]);

    s.prepare_restart_at(2);
    let mut r = s.restart(&gen, &StdoutTo::File(s.root.join("crrestart-own.out")));
    s.wait_reached(&mut r, 2);
    let got = fs::read(&f.out).unwrap();
    let expected_tail = "restarted\nhooks before=1 resume=0 restart=1 crid_before=1 crid_restart=1\nsocketpair closed\ngate 2\n";
    assert_eq!(
        String::from_utf8_lossy(&got[at_checkpoint..]),
        expected_tail,
        "output of the restarted program after the checkpoint (whole output:\n{})",
        String::from_utf8_lossy(&got)
    );
    let st = s.drive_to_exit(&mut r);
    assert_eq!(st.code(), Some(PROBE_EXIT_CODE), "restarted probe: {}\n{}", status_text(&st), text(&f.out));
}

/// A checkpoint asked for while the program is inside a nested critical section waits
/// (the process shows as "held") until the outer cr_enable; the generation then completes
/// and restarts after the section.
#[test]
fn a_critical_section_delays_a_checkpoint_until_cr_enable() {
    let s = Session::new("api_critical");
    let f = Flow::new(&s, api_probe());
    let mut run = f.launch();
    s.advance_to(&mut run, 3);
    let c = s.crctl(&["checkpoint"]);
    assert!(c.status.success() && c.stdout_text().contains("generation 2"), "{}", c.describe());
    let pid = run.pid as i64;
    let held = |s: &Session| {
        s.status_json().is_some_and(|st| {
            st["processes"][0]["state"] == "held"
                && st["progress"]["generation"] == 2
                && st["progress"]["held_by"][0].as_i64() == Some(pid)
        })
    };
    assert!(wait_until(READY_TIMEOUT, || held(&s)), "the process never showed as held\n{}", s.diagnostics());
    let human = s.crctl(&["status"]).stdout_text();
    assert!(human.contains("held off by a critical section"), "{human}");
    s.gate.go(3);
    s.wait_reached(&mut run, 4);
    assert!(held(&s), "the checkpoint went on inside the outer critical section");
    assert!(!gen_dir(&s, 2).join("manifest.json").exists());
    s.gate.go(4);
    assert!(
        wait_for_file(&gen_dir(&s, 2).join("manifest.json"), READY_TIMEOUT),
        "generation 2 did not complete after cr_enable\n{}",
        s.diagnostics()
    );
    s.wait_reached(&mut run, 5);
    let original = fs::read(&f.out).unwrap();
    f.kill(&mut [&mut run]);
    s.prepare_restart_at(5);
    let mut r = s.restart(&gen_dir(&s, 2), &StdoutTo::File(s.root.join("crrestart-own.out")));
    assert_eq!(s.wait_any_reached(&mut r), 5, "the checkpoint was not taken after the critical section");
    assert_same_bytes(&original, &fs::read(&f.out).unwrap(), "output of the program restarted after the critical section");
    let st = s.drive_to_exit(&mut r);
    assert_eq!(st.code(), Some(PROBE_EXIT_CODE));
}

/// A critical section that lasts longer than the coordinator's --generation-timeout fails
/// that generation with a message naming it; the program goes on and the next checkpoint
/// succeeds.
#[test]
fn a_critical_section_that_lasts_too_long_fails_the_generation() {
    let s = Session::new("api_critical_timeout");
    let _coord = s.start_coordinator(&["--generation-timeout", "2"], &[]);
    let f = Flow::new(&s, api_probe());
    let mut run = f.launch();
    s.advance_to(&mut run, 3);
    let c = s.crctl(&["checkpoint", "--wait"]);
    assert_eq!(c.status.code(), Some(1), "{}", c.describe());
    assert!(c.stderr_text().contains("critical section"), "the failure does not name the critical section: {}", c.describe());
    assert!(!gen_dir(&s, 2).exists(), "the failed generation's directory was left behind");
    assert!(run.try_status().is_none());
    s.advance_to(&mut run, 5);
    let g = s.checkpoint();
    assert_eq!(g.file_name().unwrap(), "gen-000003");
    let st = s.drive_to_exit(&mut run);
    assert_eq!(st.code(), Some(PROBE_EXIT_CODE), "{}", text(&f.out));
}

/// The Rust crate: `checkpoint()` is `Taken(1)` in the running program and `Restarted`
/// after a restart (after the restart hook ran); without crust it is `NotEnabled`.
#[test]
fn the_rust_crate_checkpoints_and_restarts() {
    let s = Session::new("api_rust");
    let prog = Program::new(env!("CARGO_BIN_EXE_api_rust_probe"));
    let alone = s.run_reference(&prog);
    check_reference(&alone);
    assert!(alone.stdout_text().contains("enabled false\ngate 1\ncheckpoint: the program does not run under crust"), "{}", alone.describe());
    let f = Flow::new(&s, prog);
    let mut run = f.launch();
    s.advance_to(&mut run, 2);
    let out = text(&f.out);
    assert!(out.contains("enabled true\ngate 1\ncheckpoint taken 1\ncritical section true\ngate 2\n"), "{out}");
    f.kill(&mut [&mut run]);
    s.prepare_restart_at(2);
    let mut r = s.restart(&gen_dir(&s, 1), &StdoutTo::File(s.root.join("crrestart-own.out")));
    s.wait_reached(&mut r, 2);
    let out = text(&f.out);
    assert!(out.ends_with("gate 1\nrestarted from 1\ncritical section true\ngate 2\n"), "{out}");
    let st = s.drive_to_exit(&mut r);
    assert_eq!(st.code(), Some(PROBE_EXIT_CODE));
}

/// Four threads call cr_checkpoint five times each, one of them also entering critical
/// sections: every call returns a CRID larger than the same thread's previous one, and
/// nothing hangs.
#[test]
fn concurrent_cr_checkpoint_calls_from_threads() {
    let s = Session::new("api_threads");
    let out = s.root.join("program.out");
    let mut opts = LaunchOpts::file(&out);
    opts.gated = false;
    let mut run = s.launch_with(&api_program("api_threads"), &opts);
    let st = run.wait_timeout(EXIT_TIMEOUT).unwrap_or_else(|| panic!("the probe hung\n{}", s.diagnostics()));
    let text = text(&out);
    assert_eq!(st.code(), Some(PROBE_EXIT_CODE), "{text}");
    assert_eq!(text.lines().filter(|l| l.ends_with("increasing: yes")).count(), 4, "{text}");
    let gens = complete_generations(&s.ckpt_dir).len();
    assert!((5..=20).contains(&gens), "{gens} generations for 20 requests (5 per thread, coalesced)");
}
