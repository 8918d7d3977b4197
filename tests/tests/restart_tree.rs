//! Checkpoint/restart of whole process trees: launch a program that forks, checkpoint it
//! at a gate with every process of the tree registered, let it run on, SIGKILL the whole
//! tree, restart it with one `crrestart`, and compare output and exit status with an
//! uninterrupted reference run.

use crust_tests::*;
use std::fs;
use std::path::Path;
use std::time::Duration;

/// Wait until the coordinator lists exactly `n` processes: the tree is complete and no
/// process is still starting or exiting.
fn wait_tree(s: &Session, n: usize) {
    let ok = wait_until(READY_TIMEOUT, || {
        if s.registered() == Some(n) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
        false
    });
    assert!(ok, "the coordinator did not list exactly {n} processes (it lists {:?})\n{}", s.registered(), s.diagnostics());
}

/// The canonical scenario for a tree of `procs` processes.
fn tree_canonical(f: &Flow, procs: usize) -> Checkpointed {
    let mut run = f.launch();
    f.s.advance_to(&mut run, 1);
    wait_tree(f.s, procs);
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

/// `bash -c` running producer | sed | tr | consumer, checkpointed while records sit in
/// the pipes between the stages and in the tools' stdio buffers.
#[test]
fn bash_pipeline_with_data_in_flight_restarts_identically() {
    let s = Session::new("tree_bash_pipeline");
    let script = fs::read_to_string(probes_dir().join("pipeline.sh")).expect("read pipeline.sh");
    let prog = Program::new(bash()).arg("-c").arg(script).arg("pipeline").arg(c_probe("gate_at"));
    let f = Flow::new(&s, prog);
    // bash, the producer subshell, gate_at, sed, tr, the consumer subshell.
    tree_canonical(&f, 6);
}

/// python3 multiprocessing.Pool (fork): workers blocked in a shared Event inside tasks,
/// tasks in flight in the task pipe, POSIX semaphores in shared memory.
#[test]
fn python_multiprocessing_pool_restarts_identically() {
    let s = Session::new("tree_pool");
    let f = Flow::new(&s, Program::python("pool.py"));
    tree_canonical(&f, 3);
}

fn manifest_without(gen: &Path, vpid: i64) {
    let p = gen.join("manifest.json");
    let mut man: serde_json::Value = serde_json::from_slice(&fs::read(&p).expect("manifest")).expect("JSON");
    man["processes"].as_array_mut().expect("processes").retain(|e| e["vpid"].as_i64() != Some(vpid));
    fs::write(&p, serde_json::to_vec_pretty(&man).expect("JSON")).expect("write manifest");
}

/// A generation missing one process's image (or that process altogether) is refused with
/// a message naming the problem, before anything starts; the complete one still restarts.
#[test]
fn generation_missing_a_process_is_refused() {
    let s = Session::new("tree_incomplete");
    let f = Flow::new(&s, Program::c("pipe_pair"));
    let mut run = f.launch();
    f.s.advance_to(&mut run, 1);
    wait_tree(&s, 2);
    let ck = f.checkpoint_at(&mut run, 1);
    f.kill(&mut [&mut run]);
    let man: serde_json::Value =
        serde_json::from_slice(&fs::read(ck.gen.join("manifest.json")).expect("manifest")).expect("JSON");
    let child = man["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .find(|p| p["vpid"].as_i64() != Some(run.pid as i64))
        .expect("a child in the manifest")
        .clone();
    let child_vpid = child["vpid"].as_i64().expect("vpid");
    let child_image = child["image"].as_str().expect("image").to_string();

    for case in ["image-missing", "process-missing"] {
        let gen = s.root.join("copies").join(case).join(ck.gen.file_name().expect("name"));
        copy_dir_files(&ck.gen, &gen);
        fs::remove_file(gen.join(&child_image)).expect("remove the child's image");
        if case == "process-missing" {
            manifest_without(&gen, child_vpid);
        }
        s.prepare_restart_at(1);
        let before = fs::read(&f.out).expect("program output");
        let out = s.restart_expecting_failure(&gen);
        assert!(out.status.code().is_some_and(|c| c != 0), "crrestart must fail ({case}): {}", out.describe());
        let text = out.all_text_lower();
        assert!(
            text.contains("incomplete") && text.contains(&format!("vpid {child_vpid}")),
            "crrestart must say the generation is incomplete and name vpid {child_vpid} ({case}): {}",
            out.describe()
        );
        let left = s.leftovers_after(Duration::from_secs(10));
        assert!(left.is_empty(), "crrestart left processes behind ({case}): {left:?}");
        assert!(s.gate.reached().is_empty(), "the program ran although crrestart failed ({case})");
        assert_eq!(fs::read(&f.out).expect("program output"), before, "crrestart touched the output ({case})");
    }
    let mut r = f.restart(&ck);
    f.finish(&mut r);
}

/// An orphan (its parent exited, init or a subreaper adopted it) that leads its own
/// session comes back adopted the same way, still connected to the root by a pipe and
/// reachable by the pid the root knows.
#[test]
fn orphan_comes_back_adopted_and_connected() {
    let s = Session::new("tree_orphan");
    let f = Flow::new(&s, Program::c("orphan"));
    tree_canonical(&f, 2);
}

/// Children and a grandchild, a zombie, a process group led by one child and joined by
/// another, a grandchild leading its own session, a parent blocked in waitpid and a child
/// blocked in sigwaitinfo at the checkpoint: all ids agree before and after the restart.
#[test]
fn tree_with_zombie_sessions_groups_and_waiting_parent_restarts_identically() {
    let s = Session::new("tree_restart");
    let f = Flow::new(&s, Program::c("tree_restart"));
    tree_canonical(&f, 4);
}

/// `make -j2`: a top make and two sub-makes sharing the jobserver pipe, checkpointed while
/// one recipe waits at gate 1 and the tokens sit in the pipe.
#[test]
fn make_j2_with_sub_makes_and_jobserver_restarts_identically() {
    let s = Session::new("tree_make");
    let prog = Program::new("/bin/sh")
        .arg("-c")
        .arg("make -j2 -s --no-print-directory -f \"$0\" GATE_AT=\"$1\" && exit 23")
        .arg(probes_dir().join("jobs.mk"))
        .arg(c_probe("gate_at"));
    let f = Flow::new(&s, prog);
    // sh, make, the sub-make building one/*, the recipe's sh, gate_at.
    tree_canonical(&f, 5);
}

/// Checkpoint at gate 1, kill, restart; checkpoint the restarted tree at the same gate,
/// kill it, restart it again (new kernel pids, new pipe inodes, memfd-backed shared
/// memory), run to the end.
fn twice(f: &Flow, procs: usize) {
    let s = f.s;
    let mut run = f.launch();
    s.advance_to(&mut run, 1);
    wait_tree(s, procs);
    let ck = f.checkpoint_at(&mut run, 1);
    f.kill(&mut [&mut run]);
    let mut r = f.restart(&ck);
    wait_tree(s, procs);
    let gen2 = s.checkpoint();
    assert_ne!(gen2, ck.gen, "a new generation");
    let ck2 = Checkpointed { gen: gen2, gate: 1, out_len: fs::metadata(&f.out).expect("output").len() };
    f.kill(&mut [&mut r]);
    let mut r2 = f.restart(&ck2);
    f.finish(&mut r2);
}

/// A restarted tree is one computation again: it checkpoints and restarts a second time.
#[test]
fn restarted_tree_checkpoints_and_restarts_again() {
    let s = Session::new("tree_twice");
    twice(&Flow::new(&s, Program::c("pipe_pair")), 2);
}

/// The same for the multiprocessing Pool, whose semaphores live in crrestart's memfds
/// after the first restart.
#[test]
fn restarted_pool_checkpoints_and_restarts_again() {
    let s = Session::new("pool_twice");
    twice(&Flow::new(&s, Program::python("pool.py")), 3);
}

/// Children started by fork + exec (empty environment), posix_spawn (an environment
/// without LD_PRELOAD), vfork + exec, popen and system (`tests/probes/spawn.c`): the whole
/// tree restarts and ends like an uninterrupted run.
#[test]
fn exec_spawn_popen_system_tree_restarts_identically() {
    let s = Session::new("tree_spawn_restart");
    let f = Flow::new(&s, Program::c("spawn"));
    let mut run = f.launch();
    s.advance_to(&mut run, 1);
    // Every child registered before the call that started it returned.
    let n = s.registered().expect("the coordinator answers");
    assert!(n >= 5, "the parent and its children: {n}");
    let ck = f.checkpoint_at(&mut run, 1);
    f.s.advance_to(&mut run, 2);
    f.kill(&mut [&mut run]);
    let mut r = f.restart(&ck);
    f.finish(&mut r);
}

/// A statically linked child runs outside crust's control: the generation lists it as
/// excluded, and crrestart restarts the rest of the tree with a warning naming it.
#[test]
fn excluded_static_child_is_named_at_restart() {
    let s = Session::new("tree_excluded_restart");
    let static_child = compile_c("static_child", &["-static"], "static");
    let f = Flow::new(&s, Program::c("spawn").arg(&static_child));
    let mut run = f.launch();
    s.advance_to(&mut run, 1);
    let ck = f.checkpoint_at(&mut run, 1);
    f.kill(&mut [&mut run]);
    let mut r = f.restart(&ck);
    let err = r.stderr_text();
    assert!(
        err.contains("outside crust's control") && err.contains("static_child") && err.contains("not restored"),
        "crrestart must name the excluded static child: {err}"
    );
    s.kill_all(&mut [&mut r]);
}

/// A named FIFO with bytes in flight, MAP_SHARED anonymous memory and a shared memfd
/// mapping between parent and child (`tests/probes/shared.c`): after the restart the
/// FIFO gives back its bytes and the memory is still shared (the child's writes reach the
/// parent).
#[test]
fn fifo_and_shared_memory_between_parent_and_child_restart_shared() {
    let s = Session::new("tree_shared");
    let f = Flow::new(&s, Program::c("shared"));
    tree_canonical(&f, 2);
}

/// A process group whose leader had exited before the checkpoint keeps its id after a
/// restart, for its member (getpgrp/getpgid, also after an exec) and for the parent
/// (getpgid, killpg), and again after a second checkpoint and restart
/// (`tests/probes/lost_leader.c`). Before, the member saw its own pid as its group's id.
#[test]
fn group_whose_leader_exited_keeps_its_id_after_restarts() {
    let s = Session::new("lost_leader");
    let f = Flow::new(&s, Program::c("lost_leader"));
    f.canonical();
    let s2 = Session::new("lost_leader_twice");
    twice(&Flow::new(&s2, Program::c("lost_leader")), 2);
}

/// A daemon's double fork (setsid, fork, exit): the daemon and its child run in a session
/// and process group whose leader had exited. After a restart, and after a second
/// checkpoint and restart, they see the same session and group ids, and so does the root
/// (`tests/probes/daemon.c`). Before, the session was not recreated.
#[test]
fn daemon_session_whose_leader_exited_keeps_its_id_after_restarts() {
    let s = Session::new("daemon_session");
    tree_canonical(&Flow::new(&s, Program::c("daemon")), 3);
    let s2 = Session::new("daemon_session_twice");
    twice(&Flow::new(&s2, Program::c("daemon")), 3);
}

/// An open file description held only by two siblings (the parent closed its copy after
/// forking them) is one description again after a restart: their lines follow each
/// other in the file and they report one offset (`tests/probes/sibling_fds.c`).
#[test]
fn description_shared_only_by_siblings_stays_shared() {
    let s = Session::new("sibling_fds");
    tree_canonical(&Flow::new(&s, Program::c("sibling_fds")), 3);
}
