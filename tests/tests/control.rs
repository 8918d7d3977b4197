//! crlaunch and crctl: transparency of the launch, the on-disk layout of a checkpoint,
//! status, kill, quit, no coordinator, and the programs crlaunch must refuse.

use crust_format::image::{read_image, verify_pages};
use crust_format::manifest::read_manifest;
use crust_tests::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

/// crlaunch execs the program: same pid (also as the program sees it), /proc/PID/cmdline
/// and exe are the program's, stdout/stderr are the files it was given, exit status is
/// the program's.
#[test]
fn crlaunch_execs_program_with_its_own_pid_argv_stdio_and_exit_status() {
    let s = Session::new("launch_transparent");
    let pid_file = s.root.join("pid.txt");
    let prog = probe::procstate().env("PROBE_PID_FILE", &pid_file);
    let f = Flow::new(&s, prog);
    let mut run = f.launch();
    s.wait_reached(&mut run, 1);
    let seen = fs::read_to_string(&pid_file).expect("the probe writes its pid");
    assert_eq!(seen.trim(), run.pid.to_string(), "getpid() in the program vs the pid crlaunch was started with");
    assert_eq!(proc_cmdline(run.pid), Some(f.prog.argv()), "/proc/PID/cmdline of the launched program");
    let exe = fs::read_link(format!("/proc/{}/exe", run.pid)).expect("read /proc/PID/exe");
    assert_eq!(exe, f.prog.exe.canonicalize().expect("canonical probe path"), "/proc/PID/exe");
    f.finish(&mut run);
}

/// `CKPT_DIR/crust-<16 hex>/gen-000001/{proc-<vpid>.crimg, manifest.json}`, `latest`
/// pointing at the newest generation, image header and metadata as in format/src/image.rs.
#[test]
fn checkpoint_layout_manifest_and_image_header_match_contract() {
    let s = Session::new("layout");
    let f = Flow::new(&s, probe::memory());
    let mut run = f.launch();
    let ck1 = f.checkpoint_at(&mut run, 1);

    let comp = computation_dir(&s.ckpt_dir);
    let comp_name = comp.file_name().and_then(|n| n.to_str()).expect("utf-8 name").to_string();
    let hex = comp_name.strip_prefix("crust-").expect("crust- prefix");
    assert!(hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()), "computation directory name {comp_name}");
    let comp_id = u64::from_str_radix(hex, 16).expect("hex comp id");
    assert_eq!(ck1.gen, comp.join("gen-000001"), "first generation directory");
    assert_eq!(fs::read_link(comp.join("latest")).expect("latest is a symlink").file_name().unwrap(), "gen-000001");

    let imgs = images_of(&ck1.gen);
    assert_eq!(imgs.len(), 1, "one image per process: {imgs:?}");
    let img = &imgs[0];
    let img_name = img.file_name().and_then(|n| n.to_str()).expect("utf-8").to_string();
    let vpid: i32 = img_name
        .strip_prefix("proc-")
        .and_then(|n| n.strip_suffix(".crimg"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("image name {img_name}"));

    let bytes = fs::read(img).expect("read image");
    assert_eq!(&bytes[0..8], b"CRUSTIMG", "magic");
    assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), crust_format::image::VERSION, "version");
    assert_eq!(
        u32::from_le_bytes(bytes[72..76].try_into().unwrap()),
        crc32c::crc32c_append(crc32c::crc32c(&bytes[0..72]), &bytes[76..128]),
        "header crc32c over bytes 0..72 and 76..128"
    );
    // The fd table right after the header page; page data after it, page-aligned.
    let fd_table_len = u64::from_le_bytes(bytes[80..88].try_into().unwrap());
    assert!(fd_table_len > 0, "no fd table");
    let table = &bytes[4096..4096 + fd_table_len as usize];
    assert_eq!(u32::from_le_bytes(bytes[88..92].try_into().unwrap()), crc32c::crc32c(table), "fd table crc32c");
    assert_eq!(u64::from_le_bytes(bytes[48..56].try_into().unwrap()), crust_format::image::data_start(fd_table_len), "data_offset");
    let image = read_image(img).expect("image parses");
    verify_pages(img, &image.meta).expect("page checksums");
    assert_eq!(image.header.file_len, bytes.len() as u64, "header file_len");
    assert_eq!(image.meta.vpid, vpid, "vpid in the image vs its file name");
    assert_eq!(image.meta.comp_id, comp_id, "comp id in the image vs the directory name");
    assert_eq!(image.meta.generation, 1);
    assert_eq!(image.meta.cwd, s.work_dir.to_str().unwrap(), "cwd recorded in the image");
    assert!(!image.meta.threads.is_empty() && image.meta.threads.iter().filter(|t| t.is_main).count() == 1);
    assert!(image.meta.memory_bytes() > 4 << 20, "the probe has more than 4 MiB of data");

    let m = read_manifest(&ck1.gen).expect("manifest parses");
    assert_eq!((m.generation, m.comp_id), (1, comp_id), "manifest generation and comp id");
    assert_eq!(m.processes.len(), 1, "manifest processes: {:?}", m.processes);
    assert_eq!(m.processes[0].image, img_name);
    assert_eq!(m.processes[0].vpid, vpid);
    assert_eq!(m.processes[0].real_pid, run.pid, "real pid of the launched program");

    let ck2 = f.checkpoint_at(&mut run, 2);
    assert_eq!(ck2.gen, comp.join("gen-000002"), "second generation directory");
    assert_eq!(fs::read_link(comp.join("latest")).expect("latest").file_name().unwrap(), "gen-000002");
    assert_eq!(read_manifest(&ck2.gen).expect("manifest 2").generation, 2);
    f.kill(&mut [&mut run]);
}

/// `crctl status` and `crctl status --json` show the launched process with its real pid.
#[test]
fn crctl_status_lists_the_launched_process() {
    let s = Session::new("status");
    let f = Flow::new(&s, probe::memory());
    let mut run = f.launch();
    s.wait_reached(&mut run, 1);
    s.wait_registered(1);
    let plain = s.crctl(&["status"]);
    assert!(plain.status.success(), "crctl status: {}", plain.describe());
    assert!(plain.stdout_text().contains(&run.pid.to_string()), "crctl status does not show pid {}: {}", run.pid, plain.describe());
    let js = s.crctl(&["status", "--json"]);
    assert!(js.status.success(), "crctl status --json: {}", js.describe());
    let v: serde_json::Value = serde_json::from_slice(&js.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", js.describe()));
    fn has_pid(v: &serde_json::Value, pid: i64) -> bool {
        match v {
            serde_json::Value::Object(m) => {
                m.get("real_pid").and_then(|p| p.as_i64()) == Some(pid) || m.values().any(|x| has_pid(x, pid))
            }
            serde_json::Value::Array(a) => a.iter().any(|x| has_pid(x, pid)),
            _ => false,
        }
    }
    assert!(has_pid(&v, run.pid as i64), "no process with real_pid {} in {v}", run.pid);
    f.kill(&mut [&mut run]);
}

/// `crctl kill` SIGKILLs the program; the coordinator crlaunch started exits once its last
/// process is gone.
#[test]
fn crctl_kill_kills_the_program_and_the_coordinator_exits() {
    let s = Session::new("kill");
    let out = s.root.join("program.out");
    let mut run = s.launch(&probe::memory(), &out);
    s.wait_reached(&mut run, 1);
    assert!(port_is_open(s.port), "crlaunch started no coordinator on port {}", s.port);
    s.wait_registered(1);
    let k = s.crctl(&["kill"]);
    assert!(k.status.success(), "crctl kill: {}", k.describe());
    let st = run.wait_timeout(READY_TIMEOUT).expect("the program dies after crctl kill");
    assert_eq!(status_text(&st), "killed by signal 9");
    assert!(
        wait_port_closed(s.port, READY_TIMEOUT),
        "the coordinator did not exit after its last process was killed\n{}",
        s.diagnostics()
    );
    assert!(s.leftovers_after(Duration::from_secs(5)).is_empty());
}

/// `crctl quit` stops the coordinator; the program keeps running and finishes normally.
#[test]
fn crctl_quit_stops_the_coordinator_and_the_program_runs_on() {
    let s = Session::new("quit");
    let f = Flow::new(&s, probe::threads());
    let mut run = f.launch();
    s.wait_reached(&mut run, 1);
    let q = s.crctl(&["quit"]);
    assert!(q.status.success(), "crctl quit: {}", q.describe());
    assert!(wait_port_closed(s.port, READY_TIMEOUT), "the coordinator still listens after crctl quit");
    assert!(run.try_status().is_none(), "crctl quit ended the program");
    f.finish(&mut run);
}

/// Every crctl command without a coordinator: exit status 2 and a message.
#[test]
fn crctl_without_coordinator_exits_2_with_a_message() {
    let s = Session::new("no_coordinator");
    assert!(!port_is_open(s.port));
    for args in [&["status"][..], &["status", "--json"], &["checkpoint", "--wait"], &["kill"], &["quit"]] {
        let out = s.crctl(args);
        assert_eq!(out.status.code(), Some(2), "crctl {args:?} without coordinator: {}", out.describe());
        let msg = out.stderr_text().to_lowercase();
        assert!(
            msg.contains("coordinator") || msg.contains(&s.coord()),
            "crctl {args:?}: the message should say that no coordinator answers at {}: {}",
            s.coord(),
            out.describe()
        );
    }
}

fn expect_refusal(s: &Session, prog: &Program, marker: &std::path::Path, keywords: &[&str], what: &str) {
    let out = s.launch_captured(prog);
    assert!(!out.status.success(), "crlaunch ran {what}: {}", out.describe());
    let text = out.all_text_lower();
    assert!(keywords.iter().any(|k| text.contains(k)), "crlaunch's refusal of {what} names none of {keywords:?}: {}", out.describe());
    assert!(!marker.exists(), "{what} ran although crlaunch refused it");
    let left = s.leftovers_after(Duration::from_secs(10));
    assert!(left.is_empty(), "crlaunch left processes behind refusing {what}: {left:?}");
}

#[test]
fn crlaunch_refuses_a_static_binary() {
    let s = Session::new("refuse_static");
    let marker = s.root.join("ran");
    let prog = Program::new(compile_c("marker", &["-static"], "static")).arg(&marker);
    // Without crust the program works.
    let plain = s.run_reference(&prog);
    assert!(plain.status.success() && marker.exists(), "static marker program: {}", plain.describe());
    fs::remove_file(&marker).unwrap();
    expect_refusal(&s, &prog, &marker, &["static"], "a statically linked program");
}

/// A setuid program owned by another user (as root: a copy chowned to nobody; the loader
/// would ignore LD_PRELOAD for it). Otherwise a system setuid-root program.
#[test]
fn crlaunch_refuses_a_setuid_binary() {
    let s = Session::new("refuse_setuid");
    let marker = s.root.join("ran");
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let exe = if euid == 0 {
        let copy = s.root.join("marker-setuid");
        fs::copy(c_probe("marker"), &copy).expect("copy marker");
        let c = std::ffi::CString::new(copy.to_str().unwrap()).unwrap();
        // SAFETY: c is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::chown(c.as_ptr(), 65534, 65534) }, 0, "chown nobody");
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o4755)).expect("chmod u+s");
        fs::set_permissions(&s.root, fs::Permissions::from_mode(0o777)).expect("let nobody write the marker");
        copy
    } else {
        ["/usr/bin/passwd", "/bin/su", "/usr/bin/su", "/usr/bin/chsh", "/usr/bin/newgrp"]
            .iter()
            .map(std::path::PathBuf::from)
            .find(|p| {
                fs::metadata(p).is_ok_and(|m| {
                    use std::os::unix::fs::MetadataExt;
                    m.mode() & 0o4000 != 0 && m.uid() != euid
                })
            })
            .expect("no setuid program owned by another user found to test with")
    };
    let prog = Program::new(&exe).arg(&marker);
    expect_refusal(&s, &prog, &marker, &["setuid", "set-user-id", "suid"], "a setuid program");
}

/// Without `--coord`/`--ckpt-dir`, crlaunch and crctl use `CR_COORD` and `CR_CKPT_DIR`;
/// without `CR_CKPT_DIR` the checkpoint directory is crlaunch's working directory.
#[test]
fn cr_coord_and_cr_ckpt_dir_environment_replace_the_flags() {
    let s = Session::new("env_config");
    let env_dir = s.root.join("env-ckpt");
    fs::create_dir_all(&env_dir).unwrap();
    let out = s.root.join("program.out");
    let mut opts = LaunchOpts::file(&out);
    opts.flags = false;
    opts.ckpt_dir_env = Some(env_dir.clone());

    let mut run = s.launch_with(&probe::memory(), &opts);
    s.wait_reached(&mut run, 1);
    assert!(port_is_open(s.port), "crlaunch did not start a coordinator at $CR_COORD ({})", s.coord());
    let gen = s.checkpoint();
    assert!(gen.starts_with(&env_dir), "generation {} is not under $CR_CKPT_DIR {}", gen.display(), env_dir.display());
    let st = s.crctl_env_only(&["status"]);
    assert!(st.status.success() && st.stdout_text().contains(&run.pid.to_string()), "crctl via $CR_COORD: {}", st.describe());
    s.kill_all(&mut [&mut run]);

    opts.ckpt_dir_env = None;
    s.gate.clear_reached();
    let mut run = s.launch_with(&probe::memory(), &opts);
    s.wait_reached(&mut run, 1);
    let gen = s.checkpoint();
    assert!(gen.starts_with(&s.work_dir), "generation {} is not under crlaunch's cwd {}", gen.display(), s.work_dir.display());
    s.kill_all(&mut [&mut run]);
}
