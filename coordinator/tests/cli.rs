//! The `crcoord` and `crctl` binaries, and the launcher's `ensure_coordinator` starting a
//! detached `crcoord`.

use crust_coordinator::client::Control;
use crust_format::manifest;
use crust_format::wire::{self, Command, FromCoord, ImageReport, Phase, Reply, ToCoord, PROTOCOL_VERSION};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

const CRCOORD: &str = env!("CARGO_BIN_EXE_crcoord");
const CRCTL: &str = env!("CARGO_BIN_EXE_crctl");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn crctl(addr: &str, args: &[&str]) -> Output {
    std::process::Command::new(CRCTL).arg("--coord").arg(addr).args(args).env_remove("CR_LOG").output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("crust-cli-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn crctl_without_coordinator_exits_2() {
    let addr = format!("127.0.0.1:{}", free_port());
    let o = crctl(&addr, &["status"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let e = stderr(&o);
    assert!(e.starts_with(&format!("crctl: no coordinator at {addr}: ")), "{e}");
    assert!(e.contains("refused"), "{e}");
}

#[test]
fn crcoord_exits_3_when_the_port_is_taken() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let o = std::process::Command::new(CRCOORD)
        .args(["--port", &port.to_string(), "--ckpt-dir", "/tmp"])
        .env_remove("CR_LOG")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert!(stderr(&o).starts_with("crcoord: cannot listen on 127.0.0.1:"), "{}", stderr(&o));
}

/// Children of this process whose command name is `crcoord` and that listen on `port`
/// (other tests of this binary run crcoord as a child at the same time, on other ports).
fn crcoord_children(port: u16) -> usize {
    let me = std::process::id().to_string();
    let port_arg = format!("--port\0{port}\0");
    let mut n = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        // pid (comm) state ppid ...
        let Some((head, tail)) = stat.rsplit_once(')') else { continue };
        let comm = head.split_once('(').map(|x| x.1).unwrap_or("");
        let ppid = tail.split_whitespace().nth(1).unwrap_or("");
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if comm == "crcoord" && ppid == me && String::from_utf8_lossy(&cmdline).contains(&port_arg) {
            n += 1;
        }
    }
    n
}

fn fake_process(addr: &str, vpid: i32) -> TcpStream {
    let mut p = TcpStream::connect(addr).unwrap();
    let hello = ToCoord::HelloProcess {
        proto: PROTOCOL_VERSION,
        token: None,
        comp_id: None,
        vpid,
        vppid: 1,
        real_pid: -1,
        hostname: crust_coordinator::hostname(),
        program: "fake".into(),
        args: vec![],
        restored_from: None,
    };
    wire::blocking::send(&mut p, &hello).unwrap();
    let w: FromCoord = wire::blocking::recv(&mut p).unwrap();
    assert!(matches!(w, FromCoord::Welcome { .. }), "{w:?}");
    p
}

/// Answer one generation as a well-behaved process would.
fn serve_generation(p: &mut TcpStream, vpid: i32) {
    // The previous generation's `Completed` may come first.
    let (generation, dir) = loop {
        match wire::blocking::recv(p).unwrap() {
            FromCoord::Checkpoint { generation, dir, .. } => break (generation, dir),
            FromCoord::Completed { .. } => continue,
            other => panic!("{other:?}"),
        }
    };
    wire::blocking::send(p, &ToCoord::Reached { generation, phase: Phase::Suspended }).unwrap();
    let file = manifest::image_file_name(vpid);
    let report = ImageReport { file: file.clone(), bytes: 3000, memory_bytes: 2048, downtime_us: 2500, write_us: 100 };
    match wire::blocking::recv::<_, FromCoord>(p).unwrap() {
        // Forked (the default): capture, resume, then the image becomes durable.
        FromCoord::Proceed { phase: Phase::Captured, .. } => {
            wire::blocking::send(p, &ToCoord::Reached { generation, phase: Phase::Captured }).unwrap();
            assert_eq!(wire::blocking::recv::<_, FromCoord>(p).unwrap(), FromCoord::Proceed { generation, phase: Phase::Resumed });
            wire::blocking::send(p, &ToCoord::Reached { generation, phase: Phase::Resumed }).unwrap();
            std::fs::write(Path::new(&dir).join(&file), vec![0u8; 3000]).unwrap();
            wire::blocking::send(p, &ToCoord::Written { generation, report }).unwrap();
        }
        FromCoord::Proceed { phase: Phase::Written, .. } => {
            std::fs::write(Path::new(&dir).join(&file), vec![0u8; 3000]).unwrap();
            wire::blocking::send(p, &ToCoord::Written { generation, report }).unwrap();
            assert_eq!(wire::blocking::recv::<_, FromCoord>(p).unwrap(), FromCoord::Proceed { generation, phase: Phase::Resumed });
            wire::blocking::send(p, &ToCoord::Reached { generation, phase: Phase::Resumed }).unwrap();
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn launcher_starts_a_detached_coordinator_and_crctl_drives_it() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let dir = temp_dir("ensure");
    crust_launcher::coord_client::ensure_coordinator_with(Some(Path::new(CRCOORD)), &addr, &dir, Some(50)).unwrap();
    assert_eq!(crcoord_children(port), 0, "crcoord must not be our child");

    let mut c = Control::connect(&addr, Duration::from_secs(5)).unwrap();
    assert_eq!(c.ckpt_dir, dir.display().to_string());
    let Reply::Status(st) = c.command(Command::Status, Some(Duration::from_secs(10))).unwrap() else { panic!() };
    assert_eq!(st.interval_secs, 50);
    // A second launcher finds it running, and applies its interval.
    crust_launcher::coord_client::ensure_coordinator_with(Some(Path::new("/nonexistent")), &addr, &dir, Some(70)).unwrap();
    let Reply::Status(st) = c.command(Command::Status, Some(Duration::from_secs(10))).unwrap() else { panic!() };
    assert_eq!(st.interval_secs, 70);
    // Losing the bind race: exit status 3.
    let o = std::process::Command::new(CRCOORD).args(["--port", &port.to_string()]).output().unwrap();
    assert_eq!(o.status.code(), Some(3));

    let o = crctl(&addr, &["interval", "0"]);
    assert!(o.status.success(), "{o:?}");
    let o = crctl(&addr, &["checkpoint", "--wait"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o), "crctl: no processes to checkpoint\n");

    let mut p = fake_process(&addr, 77);
    let waiter = {
        let addr = addr.clone();
        std::thread::spawn(move || crctl(&addr, &["checkpoint", "--wait"]))
    };
    serve_generation(&mut p, 77);
    let o = waiter.join().unwrap();
    assert!(o.status.success(), "{o:?}");
    let out = stdout(&o);
    let last = out.lines().last().unwrap();
    assert!(out.starts_with("generation 1 complete: 2.9 KiB in "), "{out}");
    assert!(out.contains("max downtime 2.5 ms"), "{out}");
    let gen_dir = PathBuf::from(last);
    assert!(gen_dir.join("manifest.json").is_file(), "{out}");
    assert!(gen_dir.starts_with(&dir));

    let o = crctl(&addr, &["status", "--json"]);
    assert!(o.status.success(), "{o:?}");
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["processes"][0]["vpid"], 77);
    assert_eq!(v["last_complete"]["generation"], 1);
    let o = crctl(&addr, &["status"]);
    assert!(stdout(&o).contains("processes:    1"), "{}", stdout(&o));

    // Without --wait.
    let o = {
        let addr = addr.clone();
        let h = std::thread::spawn(move || crctl(&addr, &["checkpoint"]));
        serve_generation(&mut p, 77);
        h.join().unwrap()
    };
    assert_eq!(stdout(&o), "started generation 2\n");

    let o = crctl(&addr, &["quit"]);
    assert!(o.status.success(), "{o:?}");
    drop(p);
    std::fs::remove_dir_all(&dir).unwrap();
}
