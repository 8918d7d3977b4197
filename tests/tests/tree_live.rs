//! Process trees while they run: every process created by fork/vfork/exec/posix_spawn/
//! system/popen is under control and in the checkpoint generations, pids the program sees
//! are consistent across the tree, and checkpoints change nothing in the program's output.

use crust_format::manifest::{read_manifest, Manifest, ManifestProcess};
use crust_tests::*;
use std::path::Path;

fn manifest(gen: &Path) -> Manifest {
    read_manifest(gen).unwrap_or_else(|e| panic!("manifest of {}: {e}", gen.display()))
}

/// The manifest's process whose parent is `vppid`, or a panic listing them all.
#[track_caller]
fn child_of<'m>(m: &'m Manifest, vppid: i32, what: &str) -> &'m ManifestProcess {
    let kids: Vec<&ManifestProcess> = m.processes.iter().filter(|p| p.vppid == vppid).collect();
    assert_eq!(kids.len(), 1, "{what}: processes with parent {vppid} in the manifest: {:?}", m.processes);
    kids[0]
}

/// P forks A, A forks G; they check each other's pids (getpid/getppid/getpgid/getsid,
/// waitpid/waitid, SIGCHLD and SIGUSR1 si_pid, setpgid/setsid, /proc/<pid>, readlink
/// /proc/self, syscall(SYS_getpid)). Checkpointed while the whole tree is alive: the
/// generation holds all three processes with their parent links, each with an image,
/// and the run ends exactly like an uninterrupted one.
#[test]
fn tree_checkpoint_holds_every_process_and_changes_no_output() {
    let s = Session::new("tree_live");
    let f = Flow::new(&s, Program::c("tree"));
    let mut run = f.launch();
    s.advance_to(&mut run, 1);
    s.wait_registered(3);
    let ck = f.checkpoint_at(&mut run, 1);
    let m = manifest(&ck.gen);
    assert_eq!(m.processes.len(), 3, "the generation must hold P, A and G: {:?}", m.processes);
    let p = m.processes.iter().find(|p| p.real_pid == run.pid).expect("the launched program is in the manifest");
    let a = child_of(&m, p.vpid, "A");
    let g = child_of(&m, a.vpid, "G");
    for q in [p, a, g] {
        assert!(ck.gen.join(&q.image).is_file(), "image {} of vpid {} is missing", q.image, q.vpid);
    }
    // A second checkpoint of the same live tree.
    let again = s.checkpoint();
    assert_eq!(manifest(&again).processes.len(), 3, "second generation");
    f.finish(&mut run);
}

/// The same tree, killed after the checkpoint and restarted: every process has new real
/// pids, and round 2 (fcntl F_SETOWN/F_GETOWN, sched_getaffinity/getscheduler,
/// getpriority, syscall(SYS_kill/SYS_getpgid), killpg, stat /proc/<pid>/task/<tid>, sigqueue
/// with si_pid in an SA_SIGINFO handler, setpgid/setsid, a new child joining a group by
/// a restored pid, waitpid/waitid with status, SIGCHLD si_pid) runs on virtual pids only;
/// the output is the uninterrupted run's.
#[test]
fn tree_restarted_after_kill_sees_the_same_pids() {
    let s = Session::new("tree_live_restart");
    let f = Flow::new(&s, Program::c("tree"));
    let mut run = f.launch();
    s.advance_to(&mut run, 1);
    s.wait_registered(3);
    let ck = f.checkpoint_at(&mut run, 1);
    assert_eq!(manifest(&ck.gen).processes.len(), 3);
    f.kill(&mut [&mut run]);
    let mut r = f.restart(&ck);
    f.finish(&mut r);
}

/// fork + execve with an empty environment, posix_spawn with an environment without
/// LD_PRELOAD, vfork + execv, popen, system and daemon: every started program is under control
/// (it is in the generation taken while they all live, with its image) and sees the pid
/// its parent got. A fork + exec of a statically linked program is reported: the
/// generation of the rest succeeds and its manifest names the static one as excluded.
#[test]
fn exec_spawn_popen_system_children_are_under_control_and_static_exec_is_excluded() {
    let s = Session::new("tree_spawn");
    let static_child = compile_c("static_child", &["-static"], "static");
    let f = Flow::new(&s, Program::c("spawn").arg(&static_child));
    let mut run = f.launch();
    s.advance_to(&mut run, 1);
    let ck = f.checkpoint_at(&mut run, 1);
    let m = manifest(&ck.gen);
    let p = m.processes.iter().find(|p| p.real_pid == run.pid).expect("the launched program is in the manifest");
    for name in ["spawn-exec-child", "spawn-posix-child", "spawn-vfork-child"] {
        let c = m
            .processes
            .iter()
            .find(|q| q.program == name)
            .unwrap_or_else(|| panic!("{name} is not in the generation: {:?}", m.processes));
        assert_eq!(c.vppid, p.vpid, "{name}'s parent");
        assert!(ck.gen.join(&c.image).is_file(), "image of {name}");
    }
    assert!(
        m.processes.iter().any(|q| q.args.iter().any(|a| a == "o") && q.vpid != p.vpid),
        "popen's child is not in the generation: {:?}",
        m.processes
    );
    assert!(
        m.processes.iter().any(|q| q.vpid != p.vpid && q.vppid != p.vpid),
        "the daemon (an orphan, forked by daemon()) is not in the generation: {:?}",
        m.processes
    );
    assert_eq!(m.excluded.len(), 1, "the static child is listed as excluded: {:?}", m.excluded);
    let x = &m.excluded[0];
    assert!(x.reason.contains("statically linked"), "reason: {}", x.reason);
    assert!(!m.processes.iter().any(|q| q.real_pid == x.real_pid), "the static child has no image");
    f.finish(&mut run);
}

/// exec with an empty environment after a restart: the new program is under control with
/// the same virtual pid (getpid, getppid, /proc/self) and still knows its child by the pid
/// fork returned before the restart (kill, waitpid). A checkpoint after the exec holds the
/// exec'd program under the same virtual pid.
#[test]
fn exec_after_restart_keeps_the_virtual_pid_and_the_pid_table() {
    let s = Session::new("tree_exec_keep");
    let f = Flow::new(&s, Program::c("exec_keep"));
    let mut run = f.launch();
    s.advance_to(&mut run, 1);
    s.wait_registered(2);
    let ck = f.checkpoint_at(&mut run, 1);
    let before = manifest(&ck.gen);
    assert_eq!(before.processes.len(), 2, "P and its child: {:?}", before.processes);
    let p = before.processes.iter().find(|p| p.real_pid == run.pid).expect("P in the manifest").clone();
    f.kill(&mut [&mut run]);
    let mut r = f.restart(&ck);
    s.advance_to(&mut r, 2);
    s.wait_registered(1);
    let after = manifest(&s.checkpoint());
    let q = after
        .processes
        .iter()
        .find(|q| q.vpid == p.vpid)
        .unwrap_or_else(|| panic!("the exec'd program (vpid {}) is not in the generation: {:?}", p.vpid, after.processes));
    assert!(q.args.iter().any(|a| a == "--after"), "the generation holds the exec'd program: {:?}", q.args);
    assert_ne!(q.real_pid, p.real_pid, "the restarted process has a new real pid");
    f.finish(&mut r);
}

/// Checkpoints taken one after the other while the program forks short-lived children
/// (and grandchildren) in a tight loop: every checkpoint completes (no deadlock, no
/// failure because a process was being created or was exiting), every process of every
/// generation has its image and a parent in the generation, new children are caught
/// (some generation holds more than the parent), and the program's output is unchanged.
#[test]
fn checkpoints_during_a_tight_fork_loop_complete_and_hold_whole_processes() {
    let s = Session::new("tree_forkloop");
    let stop = s.root.join("stop");
    std::fs::write(&stop, b"").expect("create the stop file");
    let f = Flow::new(&s, Program::c("forkloop").arg("100").env("PROBE_STOP_FILE", &stop));
    std::fs::remove_file(&stop).expect("remove the stop file");
    let mut run = f.launch();
    s.advance_to(&mut run, 1);
    s.wait_registered(1);
    s.gate.go(1);
    let gens: Vec<std::path::PathBuf> = (0..8).map(|_| s.checkpoint()).collect();
    std::fs::write(&stop, b"").expect("create the stop file");
    let mut caught = 0;
    for g in &gens {
        let m = manifest(g);
        let p = m.processes.iter().find(|p| p.real_pid == run.pid).expect("the parent is in every generation");
        for q in &m.processes {
            assert!(g.join(&q.image).is_file(), "{}: image {} missing", g.display(), q.image);
            assert!(
                q.vpid == p.vpid || m.processes.iter().any(|o| o.vpid == q.vppid),
                "{}: process {} has no parent in the generation: {:?}",
                g.display(),
                q.vpid,
                m.processes
            );
        }
        if m.processes.len() > 1 {
            caught += 1;
        }
    }
    assert!(caught > 0, "no generation caught a child of the fork loop");
    f.finish(&mut run);
}

/// A new child never gets a pid that is some process's virtual pid (after a restart the
/// kernel may hand out the number a restored process is known by). In a fresh pid
/// namespace (root; `unshare`), the probe makes the kernel's next pid one that its pid
/// table (`CR_VPIDS`, as a restarted tree's processes have) names as another process's
/// virtual pid, and forks: without crust the child gets that pid; under crust the fork is
/// done again and the child gets another one.
#[test]
fn fork_never_hands_out_a_virtual_pid_in_use() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/usr/bin/unshare").exists() {
        eprintln!("skipped: needs root and unshare (a pid namespace of its own)");
        return;
    }
    let s = Session::new("tree_collide");
    let probe = c_probe("collide");
    let ns = |inner: Vec<std::ffi::OsString>| {
        let mut p = Program::new("/usr/bin/unshare").arg("--pid").arg("--fork").arg("--mount-proc");
        for a in inner {
            p = p.arg(a);
        }
        p.env("PROBE_VIRT", "700").env("CR_VPIDS", "700:99999")
    };
    let plain = s.run_reference(&ns(vec![probe.clone().into()]));
    assert_eq!(plain.stdout_text().trim(), "pid collision", "the setup must produce the collision: {}", plain.describe());
    let b = bins();
    let under = s.run_reference(&ns(vec![
        b.crlaunch.clone().into(),
        "--coord".into(),
        s.coord().into(),
        "--ckpt-dir".into(),
        s.ckpt_dir.clone().into(),
        "--".into(),
        probe.into(),
    ]));
    assert_eq!(under.stdout_text().trim(), "pid kept apart", "{}", under.describe());
}
