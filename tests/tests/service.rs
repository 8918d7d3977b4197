//! The coordinator as a service: interval checkpoints, retention, status and list,
//! `checkpoint --kill`, faults (a process dying mid-checkpoint, the coordinator dying,
//! hostile bytes on the port), the shared secret, operator hooks.

use crust_format::manifest::{read_manifest, Manifest};
use crust_tests::*;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn manifests(ckpt_dir: &Path) -> Vec<Manifest> {
    complete_generations(ckpt_dir).iter().map(|g| read_manifest(g).expect("manifest parses")).collect()
}

fn gen_names(ckpt_dir: &Path) -> Vec<String> {
    complete_generations(ckpt_dir).iter().map(|g| g.file_name().unwrap().to_string_lossy().into_owned()).collect()
}

/// Entries of a computation directory other than `latest`, sorted.
fn comp_entries(ckpt_dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(computation_dir(ckpt_dir))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "latest")
        .collect();
    v.sort();
    v
}

fn latest_name(ckpt_dir: &Path) -> String {
    fs::read_link(computation_dir(ckpt_dir).join("latest")).expect("latest").to_string_lossy().into_owned()
}

/// `crlaunch --interval 1`: generations 1, 2, 3 appear by themselves, each one starting
/// no earlier than an interval after the previous one completed (the timer re-arms only
/// when a checkpoint is complete, so they never overlap); `crctl interval` changes it.
#[test]
fn interval_checkpoints_come_on_schedule_and_never_overlap() {
    let s = Session::new("interval");
    let out = s.root.join("program.out");
    let f = Flow::with_opts(&s, probe::memory(), LaunchOpts::file(&out).interval(1));
    let mut run = f.launch();
    s.wait_reached(&mut run, 1);
    assert!(
        wait_until(READY_TIMEOUT, || complete_generations(&s.ckpt_dir).len() >= 3),
        "fewer than 3 interval checkpoints within {READY_TIMEOUT:?}: {:?}\n{}",
        gen_names(&s.ckpt_dir),
        s.diagnostics()
    );
    let st = s.status_json().expect("status");
    assert_eq!(st["interval_secs"], 1, "{st}");
    let set = s.crctl(&["interval", "3600"]);
    assert!(set.status.success(), "{}", set.describe());
    let st = s.status_json().expect("status");
    assert_eq!(st["interval_secs"], 3600, "{st}");

    let ms = manifests(&s.ckpt_dir);
    let numbers: Vec<u64> = ms.iter().map(|m| m.generation).collect();
    assert_eq!(numbers, (1..=numbers.len() as u64).collect::<Vec<_>>(), "interval generations are numbered 1, 2, 3...");
    for w in ms.windows(2) {
        let gap = w[1].started_unix_ms as i64 - w[0].completed_unix_ms as i64;
        assert!(
            gap >= 950,
            "generation {} started {gap} ms after generation {} completed; the interval is 1 s",
            w[1].generation,
            w[0].generation
        );
    }
    for m in &ms {
        assert!(m.completed_unix_ms >= m.started_unix_ms && m.processes.len() == 1, "{m:?}");
    }
    // Only complete generations and possibly the one running now are on disk.
    let partial: Vec<String> =
        comp_entries(&s.ckpt_dir).into_iter().filter(|n| !computation_dir(&s.ckpt_dir).join(n).join("manifest.json").exists()).collect();
    assert!(partial.len() <= 1, "partial generation directories: {partial:?}");
    f.finish(&mut run);
}

/// `crlaunch --keep 2` (passed to the coordinator it starts): after four checkpoints
/// exactly the newest two are on disk, `latest` names the newest, `crctl list
/// --generations` lists them, and a restart from the checkpoint directory uses the newest.
#[test]
fn retention_keeps_exactly_n_generations() {
    let s = Session::new("keep");
    let mut opts = LaunchOpts::file(s.root.join("program.out"));
    opts.extra = vec!["--keep".into(), "2".into()];
    let f = Flow::with_opts(&s, probe::memory(), opts);
    let mut run = f.launch();
    let mut last = None;
    for k in 1..=3 {
        last = Some(f.checkpoint_at(&mut run, k));
        if k == 1 {
            f.checkpoint_at(&mut run, 1);
        }
    }
    let ck = last.unwrap();
    assert_eq!(gen_names(&s.ckpt_dir), vec!["gen-000003", "gen-000004"]);
    assert_eq!(comp_entries(&s.ckpt_dir), vec!["gen-000003", "gen-000004"], "nothing else is left in the computation directory");
    assert_eq!(latest_name(&s.ckpt_dir), "gen-000004");
    assert_eq!(ck.gen.file_name().unwrap(), "gen-000004");

    let l = s.crctl(&["list", "--generations", "--json"]);
    assert!(l.status.success(), "{}", l.describe());
    let v: serde_json::Value = serde_json::from_slice(&l.stdout).expect("JSON");
    let listed: Vec<(u64, bool)> =
        v.as_array().unwrap().iter().map(|g| (g["generation"].as_u64().unwrap(), g["latest"].as_bool().unwrap())).collect();
    assert_eq!(listed, vec![(3, false), (4, true)]);
    let human = s.crctl(&["list", "--generations"]);
    assert!(human.stdout_text().contains("gen-000004") && human.stdout_text().contains("(latest)"), "{}", human.describe());
    let st = s.status_json().unwrap();
    assert_eq!(st["keep"], 2);

    f.kill(&mut [&mut run]);
    let mut r = f.restart_from(&s.ckpt_dir, &ck);
    f.finish(&mut r);
}

/// `crctl status`, `crctl list` for people and scripts; `crctl checkpoint --kill` writes a
/// complete generation and then stops the program, which restarts from it.
#[test]
fn status_list_and_checkpoint_kill() {
    let s = Session::new("status_list");
    let f = Flow::new(&s, probe::memory());
    let mut run = f.launch();
    s.advance_to(&mut run, 2);
    s.wait_registered(1);

    let l = s.crctl(&["list", "--json"]);
    assert!(l.status.success(), "{}", l.describe());
    let v: serde_json::Value = serde_json::from_slice(&l.stdout).expect("JSON");
    let p = &v.as_array().expect("an array of processes")[0];
    assert_eq!(p["real_pid"].as_i64(), Some(run.pid as i64), "{v}");
    assert_eq!(p["vpid"].as_i64(), Some(run.pid as i64), "{v}");
    assert_eq!(p["state"], "running");
    assert!(p["program"].as_str().unwrap().contains("memory"), "{v}");
    assert!(!p["hostname"].as_str().unwrap().is_empty());
    let human = s.crctl(&["list"]).stdout_text();
    assert!(human.contains("VPID") && human.contains(&run.pid.to_string()) && human.contains("running"), "{human}");
    let st = s.crctl(&["status"]).stdout_text();
    assert!(st.contains("interval:     off") && st.contains("last:         none"), "{st}");
    assert!(!st.contains("keep:"), "{st}");
    let k = s.crctl(&["keep", "5"]);
    assert!(k.status.success(), "{}", k.describe());
    assert_eq!(s.status_json().unwrap()["keep"], 5);

    s.settle_gate_fds();
    let k = s.crctl(&["checkpoint", "--kill"]);
    assert!(k.status.success(), "crctl checkpoint --kill: {}", k.describe());
    let gen = PathBuf::from(k.stdout_text().lines().last().unwrap().trim());
    assert!(gen.join("manifest.json").is_file(), "{}", k.describe());
    let stat = run.wait_timeout(READY_TIMEOUT).expect("checkpoint --kill stops the program");
    assert_eq!(status_text(&stat), "killed by signal 9");

    let m = read_manifest(&gen).unwrap();
    assert_eq!(m.command, f.prog.argv().iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>());
    assert_eq!(m.hosts.len(), 1);
    assert!(m.processes[0].header_crc32c != 0 && m.bytes == m.processes[0].bytes && m.bytes > 0, "{m:?}");
    for p in [gen.clone(), gen.join("manifest.json"), gen.join(&m.processes[0].image)] {
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        let want = if p.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "mode of {}", p.display());
    }

    let out_len = file_len(&f.out);
    let ck = Checkpointed { gen, gate: 2, out_len };
    s.stop_coordinator();
    let mut r = f.restart(&ck);
    s.wait_registered(1);
    let st = s.status_json().unwrap();
    assert_eq!(st["processes"][0]["restored_from"], 1, "{st}");
    assert_eq!(st["last_complete"]["generation"], 1, "a coordinator knows the last checkpoint from disk: {st}");
    f.finish(&mut r);
}

/// Two processes; one is stopped (SIGSTOP) so the generation waits for it, then killed:
/// the generation is aborted and removed, the previous one is untouched, the other process
/// runs on, and the next checkpoint succeeds without the dead one.
#[test]
fn a_process_killed_mid_checkpoint_aborts_only_that_generation() {
    let s = Session::new("mid_checkpoint_kill");
    let f = Flow::new(&s, probe::memory());
    let mut a = f.launch();
    let gate_b = s.root.join("gate-b");
    fs::create_dir_all(&gate_b).unwrap();
    let prog_b = probe::threads().env("CR_TEST_GATE", &gate_b);
    let mut b = s.launch_with(&prog_b, &LaunchOpts::file(s.root.join("b.out")));
    s.wait_reached(&mut a, 1);
    assert!(wait_for_file(&gate_b.join("reached-1"), READY_TIMEOUT), "process B never reached its gate");
    s.wait_registered(2);
    let g1 = s.checkpoint();
    let before = dir_fingerprint(&g1);

    // SAFETY: plain kill(2) on a process of this test.
    assert_eq!(unsafe { libc::kill(b.pid, libc::SIGSTOP) }, 0);
    let c = s.crctl(&["checkpoint"]);
    assert!(c.status.success() && c.stdout_text().contains("generation 2"), "{}", c.describe());
    let waiting = wait_until(READY_TIMEOUT, || {
        let Some(st) = s.status_json() else { return false };
        let states: Vec<String> =
            st["processes"].as_array().into_iter().flatten().map(|p| p["state"].as_str().unwrap_or("").to_string()).collect();
        st["progress"]["generation"] == 2 && st["progress"]["done"] == 1 && states.iter().any(|x| x == "suspending")
    });
    assert!(waiting, "generation 2 never waited for the stopped process\n{}", s.diagnostics());
    b.kill9();
    assert!(
        wait_until(READY_TIMEOUT, || s.status_json().is_some_and(|st| st["in_progress"].is_null())),
        "generation 2 did not end after its process died"
    );
    let comp = computation_dir(&s.ckpt_dir);
    assert!(!comp.join("gen-000002").exists(), "the failed generation's directory is removed");
    assert_eq!(dir_fingerprint(&g1), before, "the previous complete generation changed");
    assert_eq!(latest_name(&s.ckpt_dir), "gen-000001");
    assert!(a.try_status().is_none(), "the surviving process died");
    let st = s.status_json().unwrap();
    assert_eq!(st["processes"].as_array().unwrap().len(), 1, "{st}");
    assert_eq!(st["processes"][0]["state"], "running", "{st}");

    let g3 = s.checkpoint();
    assert_eq!(g3.file_name().unwrap(), "gen-000003", "generation numbers are never reused");
    assert_eq!(read_manifest(&g3).unwrap().processes.len(), 1);
    f.finish(&mut a);
}

/// kill -9 the coordinator: the program runs on; a coordinator started again on the same
/// address gets it back (the preload reconnects with its computation id), numbers the
/// next generation after what is on disk, and that generation restarts correctly.
#[test]
fn coordinator_killed_and_started_again_takes_the_computation_back() {
    let s = Session::new("coord_restart");
    let mut coord = s.start_coordinator(&[], &[]);
    let f = Flow::new(&s, probe::memory());
    let mut run = f.launch();
    let ck1 = f.checkpoint_at(&mut run, 1);
    let comp = computation_dir(&s.ckpt_dir);
    coord.kill9();
    assert!(wait_port_closed(s.port, READY_TIMEOUT));
    s.gate.go(1);
    s.wait_reached(&mut run, 2);
    assert!(run.try_status().is_none(), "the program died with its coordinator");

    let _coord2 = s.start_coordinator(&[], &[]);
    s.wait_registered(1);
    let st = s.status_json().unwrap();
    let hex = comp.file_name().unwrap().to_string_lossy().trim_start_matches("crust-").to_string();
    assert_eq!(st["comp_id"].as_u64(), Some(u64::from_str_radix(&hex, 16).unwrap()), "the computation id is kept: {st}");
    assert_eq!(st["last_complete"]["generation"], 1, "{st}");
    let ck2 = f.checkpoint_at(&mut run, 2);
    assert_eq!(ck2.gen, comp.join("gen-000002"));
    assert!(ck1.gen.join("manifest.json").is_file());
    f.kill(&mut [&mut run]);
    let mut r = f.restart(&ck2);
    f.finish(&mut r);
}

/// Read until the coordinator closes the connection (or 20 s pass).
fn closed_by_peer(mut s: TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Garbage, oversized and hostile frames on the port: each such connection is dropped,
/// the coordinator keeps serving, the registered program is not disturbed, and a
/// checkpoint succeeds meanwhile. A process of another computation is refused.
#[test]
fn garbage_and_oversized_frames_on_the_port_are_rejected() {
    let s = Session::new("garbage");
    let f = Flow::new(&s, probe::memory());
    let mut run = f.launch();
    s.wait_reached(&mut run, 1);
    s.wait_registered(1);
    let addr = s.coord();
    let connect = || TcpStream::connect(&addr).expect("connect");
    // An idle connection stays open across everything below.
    let idle = connect();

    let mut noise = Vec::with_capacity(1 << 16);
    let mut x: u64 = 0x1234_5678_9abc_def1;
    for _ in 0..(1 << 16) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.push(x as u8);
    }
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("random bytes", noise.clone()),
        ("length u32::MAX", u32::MAX.to_le_bytes().to_vec()),
        ("length 16 MiB + 1", ((16u32 << 20) + 1).to_le_bytes().to_vec()),
        ("a 1 MiB hello", [&(1u32 << 20).to_le_bytes()[..], &vec![0u8; 1 << 20][..]].concat()),
        ("undecodable body", vec![6, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
        ("command before hello", {
            let body = [5u8, 1]; // ToCoord::Command(Command::Status) would be [5, 1]
            [&(body.len() as u32).to_le_bytes()[..], &body[..]].concat()
        }),
    ];
    for (what, bytes) in &cases {
        let mut c = connect();
        let _ = c.write_all(bytes);
        assert!(closed_by_peer(c), "the coordinator kept a connection that sent {what}");
    }
    // Many connections at once, half a frame each, then gone.
    let many: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut c = connect();
            let _ = c.write_all(&[200, 0, 0, 0, 1, 2, 3]);
            c
        })
        .collect();
    drop(many);

    // A process of another computation is refused with a message naming both ids.
    let mut other = connect();
    let hello = crust_format::wire::ToCoord::HelloProcess {
        proto: crust_format::wire::PROTOCOL_VERSION,
        token: None,
        comp_id: Some(0x0bad_c0de),
        vpid: 4242,
        vppid: 1,
        real_pid: -1,
        hostname: "elsewhere".into(),
        program: "intruder".into(),
        args: vec![],
        restored_from: None,
    };
    crust_format::wire::blocking::send(&mut other, &hello).unwrap();
    match crust_format::wire::blocking::recv::<_, crust_format::wire::FromCoord>(&mut other).unwrap() {
        crust_format::wire::FromCoord::Rejected { reason } => assert!(reason.contains("000000000badc0de"), "{reason}"),
        m => panic!("a process of another computation was not refused: {m:?}"),
    }

    let st = s.status_json().expect("the coordinator still answers");
    assert_eq!(st["processes"].as_array().unwrap().len(), 1, "{st}");
    let ck = f.checkpoint_at(&mut run, 1);
    assert!(read_manifest(&ck.gen).unwrap().processes.len() == 1);
    drop(idle);
    f.finish(&mut run);
}

fn write_token(s: &Session, name: &str, secret: &str, mode: u32) -> PathBuf {
    let p = s.root.join(name);
    fs::write(&p, format!("{secret}\n")).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    p
}

/// crcoord refuses a non-loopback address without a shared secret; with one, crctl and
/// processes must present it (`--token-file` or `CR_TOKEN`).
#[test]
fn non_loopback_bind_requires_a_token() {
    let s = Session::new("token");
    let crcoord = |extra: &[&str], env: &[(&str, &str)]| {
        let mut c = std::process::Command::new(&bins().crcoord);
        c.args(["--port", &s.port.to_string(), "--ckpt-dir", s.ckpt_dir.to_str().unwrap()]).args(extra);
        c.env_remove("CR_TOKEN").envs(env.iter().copied()).env("CRUST_TEST_TAG", "token-refusal");
        c.output().unwrap()
    };
    let o = crcoord(&["--bind", "0.0.0.0"], &[]);
    let err = String::from_utf8_lossy(&o.stderr).to_lowercase();
    assert!(!o.status.success() && err.contains("token"), "crcoord --bind 0.0.0.0 without a token: {o:?}");
    assert!(!port_is_open(s.port));
    let loose = write_token(&s, "loose-token", "s3cret-loose", 0o644);
    let o = crcoord(&["--bind", "0.0.0.0", "--token-file", loose.to_str().unwrap()], &[]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("chmod 600"), "{o:?}");

    let tok = write_token(&s, "token", "s3cret-0123456789", 0o600);
    let _coord = s.start_coordinator(&["--bind", "0.0.0.0", "--token-file", tok.to_str().unwrap()], &[]);
    let no = s.crctl(&["status"]);
    assert_eq!(no.status.code(), Some(2), "crctl without the token: {}", no.describe());
    assert!(no.stderr_text().contains("token"), "{}", no.describe());
    let wrong = s.crctl_env(&["status"], &[("CR_TOKEN", "guess")]);
    assert_eq!(wrong.status.code(), Some(2), "{}", wrong.describe());

    // The program gets the secret through crlaunch --token-file (as CR_TOKEN).
    let mut opts = LaunchOpts::file(s.root.join("program.out"));
    opts.extra = vec!["--token-file".into(), tok.display().to_string()];
    let mut run = s.launch_with(&probe::memory(), &opts);
    s.wait_reached(&mut run, 1);
    let with_file = || s.crctl(&["--token-file", tok.to_str().unwrap(), "status", "--json"]);
    assert!(
        wait_until(READY_TIMEOUT, || {
            let o = with_file();
            o.status.success()
                && serde_json::from_slice::<serde_json::Value>(&o.stdout)
                    .is_ok_and(|v| v["processes"].as_array().is_some_and(|a| a.len() == 1))
        }),
        "the launched program did not register with the token"
    );
    let ck = s.crctl_env(&["checkpoint", "--wait"], &[("CR_TOKEN", "s3cret-0123456789")]);
    assert!(ck.status.success(), "{}", ck.describe());
    let k = s.crctl_env(&["kill"], &[("CR_TOKEN", "s3cret-0123456789")]);
    assert!(k.status.success(), "{}", k.describe());
    run.wait_timeout(READY_TIMEOUT).expect("killed");
    let q = s.crctl(&["--token-file", tok.to_str().unwrap(), "quit"]);
    assert!(q.status.success(), "{}", q.describe());
}

/// `--on-checkpoint` runs after each complete generation and `--on-restart` when a
/// restarted computation connects, both with the generation in their environment.
#[test]
fn operator_hooks_run_with_the_generation_in_their_environment() {
    let s = Session::new("hooks");
    let hook = |name: &str| {
        let dest = s.root.join(name);
        format!(
            "echo \"$CR_HOOK $CR_GENERATION $CR_GENERATION_DIR $CR_COMP_ID\" > {d}.tmp.$$ && mv {d}.tmp.$$ {d}-$CR_GENERATION",
            d = dest.display()
        )
    };
    let (on_ckpt, on_restart) = (hook("ckpt-hook"), hook("restart-hook"));
    let args = ["--on-checkpoint", on_ckpt.as_str(), "--on-restart", on_restart.as_str()];
    let _coord = s.start_coordinator(&args, &[]);
    let f = Flow::new(&s, probe::memory());
    let mut run = f.launch();
    let ck = f.checkpoint_at(&mut run, 1);
    let comp_hex = computation_dir(&s.ckpt_dir).file_name().unwrap().to_string_lossy().trim_start_matches("crust-").to_string();
    let got = s.root.join("ckpt-hook-1");
    assert!(wait_for_file(&got, READY_TIMEOUT), "the on-checkpoint hook did not run\n{}", s.diagnostics());
    assert_eq!(fs::read_to_string(&got).unwrap().trim(), format!("checkpoint 1 {} {comp_hex}", ck.gen.display()));
    f.kill(&mut [&mut run]);

    let _coord2 = s.start_coordinator(&args, &[]);
    let mut r = f.restart(&ck);
    let got = s.root.join("restart-hook-1");
    assert!(wait_for_file(&got, READY_TIMEOUT), "the on-restart hook did not run\n{}", s.diagnostics());
    assert_eq!(fs::read_to_string(&got).unwrap().trim(), format!("restart 1 {} {comp_hex}", ck.gen.display()));
    f.finish(&mut r);
}

/// The coordinator dies while a generation waits for a stopped process: the other
/// process, already suspended, runs on; a coordinator started again takes both back,
/// numbers the next generation after the interrupted one (left on disk, never used), and
/// a restart from the checkpoint directory would use that complete generation.
#[test]
fn the_program_runs_on_when_the_coordinator_dies_mid_checkpoint() {
    let s = Session::new("coord_dies_mid_checkpoint");
    let mut coord = s.start_coordinator(&[], &[]);
    let f = Flow::new(&s, probe::memory());
    let mut a = f.launch();
    let gate_b = s.root.join("gate-b");
    fs::create_dir_all(&gate_b).unwrap();
    let mut b = s.launch_with(&probe::threads().env("CR_TEST_GATE", &gate_b), &LaunchOpts::file(s.root.join("b.out")));
    s.wait_reached(&mut a, 1);
    assert!(wait_for_file(&gate_b.join("reached-1"), READY_TIMEOUT));
    s.wait_registered(2);
    // SAFETY: plain kill(2) on a process of this test.
    assert_eq!(unsafe { libc::kill(b.pid, libc::SIGSTOP) }, 0);
    let c = s.crctl(&["checkpoint"]);
    assert!(c.status.success(), "{}", c.describe());
    assert!(
        wait_until(READY_TIMEOUT, || s.status_json().is_some_and(|st| st["progress"]["done"] == 1)),
        "process A never suspended\n{}",
        s.diagnostics()
    );
    coord.kill9();
    // A resumes: it goes through its next gate.
    s.advance_to(&mut a, 2);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(b.pid, libc::SIGCONT) }, 0);
    let _coord2 = s.start_coordinator(&[], &[]);
    s.wait_registered(2);
    let g = s.checkpoint();
    assert_eq!(g.file_name().unwrap(), "gen-000002", "the interrupted generation 1 is skipped: {}", g.display());
    let comp = computation_dir(&s.ckpt_dir);
    assert!(comp.join("gen-000001").is_dir() && !comp.join("gen-000001/manifest.json").exists());
    let (resolved, m) = crust_format::manifest::resolve_generation(&s.ckpt_dir).unwrap();
    assert_eq!(resolved, g);
    assert_eq!(m.processes.len(), 2);
    b.kill9();
    f.finish(&mut a);
}

/// cr_checkpoint without a coordinator returns -1 (after a bounded wait) and the program
/// runs on.
#[test]
fn cr_checkpoint_without_a_coordinator_returns_minus_1() {
    let s = Session::new("api_no_coord");
    use std::hash::{Hash, Hasher};
    let include = workspace_dir().join("api").join("include");
    let mut h = std::hash::DefaultHasher::new();
    fs::read(include.join("crust.h")).unwrap().hash(&mut h);
    let prog = Program::new(compile_c("api", &["-I", include.to_str().unwrap()], &format!("h{:x}", h.finish())));
    let out = s.root.join("program.out");
    let mut run = s.launch(&prog, &out);
    s.wait_reached(&mut run, 1);
    s.wait_registered(1);
    s.stop_coordinator();
    s.advance_to(&mut run, 2);
    let text = fs::read_to_string(&out).unwrap();
    assert!(text.contains("checkpoint failed -1\n"), "{text}");
    let st = s.drive_to_exit(&mut run);
    assert_eq!(st.code(), Some(PROBE_EXIT_CODE), "{text}");
}

/// Without a shared secret a coordinator serves its own user only: a connection from
/// another user's socket on the same machine is refused before it can say anything (run
/// as root, the test connects as `nobody`; as another user it checks nothing but the
/// owner's access).
#[test]
fn another_user_cannot_use_a_loopback_coordinator() {
    use std::os::unix::process::CommandExt;
    let s = Session::new("other_user");
    let _coord = s.start_coordinator(&[], &[]);
    let own = s.crctl(&["status"]);
    assert!(own.status.success(), "{}", own.describe());
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: cannot connect as another user; skipping that part");
        return;
    }
    let o = std::process::Command::new(&bins().crctl)
        .args(["--coord", &s.coord(), "status"])
        .env("CRUST_TEST_TAG", "other-user")
        .current_dir("/")
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run crctl as nobody");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "crctl as another user: {o:?}");
    assert!(err.contains("other users may not connect"), "{err}");
}
