//! Checkpoint/restart of whole process trees: launch a program that forks, checkpoint it
//! at a gate with every process of the tree registered, let it run on, SIGKILL the whole
//! tree, restart it with one `crrestart`, and compare output and exit status with an
//! uninterrupted reference run.

use crust_tests::*;
use std::fs;

/// The canonical scenario for a tree of `procs` processes (at least).
fn tree_canonical(f: &Flow, procs: usize) -> Checkpointed {
    let mut run = f.launch();
    f.s.advance_to(&mut run, 1);
    f.s.wait_registered(procs);
    let ck = f.checkpoint_at(&mut run, 1);
    let man: serde_json::Value =
        serde_json::from_slice(&fs::read(ck.gen.join("manifest.json")).expect("manifest")).expect("manifest is JSON");
    let listed = man["processes"].as_array().map_or(0, |a| a.len());
    assert!(listed >= procs, "the manifest lists {listed} processes, expected {procs}: {man}");
    f.s.advance_to(&mut run, 2);
    f.kill(&mut [&mut run]);
    let mut r = f.restart(&ck);
    f.finish(&mut r);
    ck
}

/// Parent and child with pipes in both directions holding bytes at the checkpoint; the
/// child prints to the stdout it shares with the parent; the parent reaps it after the
/// restart and checks its exit status.
#[test]
fn parent_and_child_with_pipes_in_flight_restart_identically() {
    let s = Session::new("tree_pipe_pair");
    let f = Flow::new(&s, Program::c("pipe_pair"));
    tree_canonical(&f, 2);
}
