//! The probes themselves, without crust: their output must be deterministic (two reference
//! runs agree byte for byte), and under the gating protocol they must stop at every gate
//! with exactly the output up to `gate K` flushed, re-create `reached-K` when it is
//! deleted, and end with the same output and status as the reference. Every restart test
//! relies on these properties.

use crust_tests::*;
use std::fs;

fn selfcheck(name: &str, prog: Program) {
    let s = Session::new(name);
    let first = s.run_reference(&prog);
    check_reference(&first);
    let second = s.run_reference(&prog);
    assert_same_bytes(&first.stdout, &second.stdout, "second reference run");
    assert_eq!(second.status.code(), first.status.code(), "exit status of the second reference run");

    let out = s.root.join("gated.out");
    let mut run = s.start_plain(&prog, &out);
    for k in 1..=3 {
        s.wait_reached(&mut run, k);
        // Stopped at gate k, with everything up to "gate k" written out.
        let got = fs::read(&out).expect("read gated output");
        let upto = end_of_gate_line(&first.stdout, k);
        assert_same_bytes(&first.stdout[..upto], &got, &format!("output while waiting at gate {k}"));
        assert!(!s.gate.is_reached(k + 1), "the probe went past gate {k} without go-{k}");
        if k == 2 {
            // The harness deletes reached-K before a restart and expects it back.
            s.gate.clear_reached();
            s.wait_reached(&mut run, 2);
        }
        assert!(run.try_status().is_none(), "the probe exited while waiting at gate {k}");
        s.gate.go(k);
    }
    let status = s.drive_to_exit(&mut run);
    assert_same_bytes(&first.stdout, &fs::read(&out).expect("read gated output"), "gated run");
    assert_eq!(status.code(), Some(PROBE_EXIT_CODE), "exit status of the gated run");
}

#[test]
fn memory_probe_is_deterministic_and_obeys_gates() {
    selfcheck("selfcheck_memory", probe::memory());
}

#[test]
fn threads_probe_is_deterministic_and_obeys_gates() {
    selfcheck("selfcheck_threads", probe::threads());
}

#[test]
fn signals_probe_is_deterministic_and_obeys_gates() {
    selfcheck("selfcheck_signals", probe::signals());
}

#[test]
fn fp_probe_is_deterministic_and_obeys_gates() {
    selfcheck("selfcheck_fp", probe::fp());
}

#[test]
fn procstate_probe_is_deterministic_and_obeys_gates() {
    selfcheck("selfcheck_procstate", probe::procstate());
}

#[test]
fn rust_probe_is_deterministic_and_obeys_gates() {
    selfcheck("selfcheck_rust", probe::rust(env!("CARGO_BIN_EXE_rust_probe")));
}

#[test]
fn python_probe_is_deterministic_and_obeys_gates() {
    selfcheck("selfcheck_python", probe::python());
}

#[test]
fn bash_probe_is_deterministic_and_obeys_gates() {
    selfcheck("selfcheck_bash", probe::bash());
}

/// The harness's own pieces that the other tests build on.
#[test]
fn harness_ports_gates_and_tags_work() {
    let s = Session::new("selfcheck_harness");
    // A fresh port is closed, a listening one is seen as open, and seen closed again.
    assert!(!port_is_open(s.port));
    let l = std::net::TcpListener::bind(("127.0.0.1", s.port)).expect("bind the session port");
    assert!(port_is_open(s.port));
    drop(l);
    assert!(wait_port_closed(s.port, READY_TIMEOUT));
    // Tagged processes are found, and killed by kill_tagged.
    let out = s.root.join("sleeper.out");
    let mut run = s.start_plain(&Program::new("/bin/sleep").arg("600"), &out);
    assert!(wait_until(READY_TIMEOUT, || s.tagged_processes().contains(&run.pid)), "tag scan misses a child");
    s.kill_tagged();
    let st = run.wait_timeout(READY_TIMEOUT).expect("sleep killed");
    assert_eq!(status_text(&st), "killed by signal 9");
    assert!(s.leftovers_after(std::time::Duration::from_secs(5)).is_empty());
    // Gate bookkeeping.
    s.gate.go(1);
    s.gate.go(4);
    fs::create_dir(s.gate.reached_path(3)).unwrap();
    s.prepare_restart_at(2);
    assert!(s.gate.go_path(1).exists() && !s.gate.go_path(4).exists() && s.gate.reached().is_empty());
}
