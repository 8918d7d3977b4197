//! Harness for crust's end-to-end tests.
//!
//! * [`bins`] finds `crlaunch`, `crctl`, `crrestart`, `crcoord` and `libcrpreload.so` in the
//!   workspace's target directory (or `$CRUST_BIN_DIR`).
//! * [`c_probe`] compiles a C probe from `tests/probes/` (cached by content under
//!   `<target>/crust-tests/probes/`).
//! * [`Session`] is one test's private world: a free loopback port for its coordinator,
//!   a temporary directory with the checkpoint directory, the program's working
//!   directories and the gate directory, and a tag (`CRUST_TEST_TAG`) put in the
//!   environment of every process it starts, by which it finds and kills whatever is left
//!   when it is dropped (also when the test fails).
//! * [`Running`] is one started process (`crlaunch`, `crrestart` or a plain program); it
//!   SIGKILLs and reaps its process when dropped.
//! * [`Flow`] drives the scenarios: reference run, launch, checkpoint at a gate, kill,
//!   restart, run to the end, compare.
//!
//! ## Gating protocol
//! Probes take `CR_TEST_GATE=DIR`. At gate K a probe prints `gate K`, flushes stdout,
//! creates `DIR/reached-K` and waits until `DIR/go-K` exists, re-creating `reached-K` if
//! it disappears. Without `CR_TEST_GATE` probes run straight through. The harness never
//! sleeps to let something happen: it waits for gate files, process exits and ports, with
//! generous timeouts.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long to wait for something that should happen promptly (a gate, a port, a file).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a program may take to run to its end once released.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a `crctl` command may take (a checkpoint included).
pub const CRCTL_TIMEOUT: Duration = Duration::from_secs(90);
/// Exit status of every probe that found nothing wrong.
pub const PROBE_EXIT_CODE: i32 = 23;
/// Appended to the program's output file after it is killed: a restart must truncate the
/// file back to its checkpoint-time size, so these bytes must never survive.
pub const GARBAGE: &[u8] = b"\n#### crust-tests: written after the kill; a restart must truncate this away ####\n";

const POLL: Duration = Duration::from_millis(1);

// ---------------------------------------------------------------------------------------
// Locations and binaries

/// The workspace root (parent of this crate).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("crate has a parent").to_path_buf()
}

/// `$CARGO_TARGET_DIR` or `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                workspace_dir().join(d)
            }
        }
        _ => workspace_dir().join("target"),
    }
}

/// Directory of the probe sources.
pub fn probes_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("probes")
}

/// The crust executables and the preload library.
#[derive(Debug, Clone)]
pub struct Bins {
    pub dir: PathBuf,
    pub crlaunch: PathBuf,
    pub crctl: PathBuf,
    pub crrestart: PathBuf,
    pub crcoord: PathBuf,
    pub preload: PathBuf,
}

const BIN_NAMES: [&str; 5] = ["crlaunch", "crctl", "crrestart", "crcoord", "libcrpreload.so"];

fn find_bins() -> Result<Bins, String> {
    let mut candidates = Vec::new();
    if let Some(d) = std::env::var_os("CRUST_BIN_DIR").filter(|d| !d.is_empty()) {
        candidates.push(PathBuf::from(d));
    } else {
        // The profile directory this test executable was built into
        // (<target>/<profile>/deps/<test>), then <target>/debug.
        if let Some(profile_dir) = std::env::current_exe().ok().and_then(|e| Some(e.parent()?.parent()?.to_path_buf())) {
            candidates.push(profile_dir);
        }
        candidates.push(target_dir().join("debug"));
    }
    for dir in &candidates {
        if BIN_NAMES.iter().all(|n| dir.join(n).is_file()) {
            return Ok(Bins {
                dir: dir.clone(),
                crlaunch: dir.join("crlaunch"),
                crctl: dir.join("crctl"),
                crrestart: dir.join("crrestart"),
                crcoord: dir.join("crcoord"),
                preload: dir.join("libcrpreload.so"),
            });
        }
    }
    let looked: Vec<String> = candidates
        .iter()
        .map(|d| {
            let missing: Vec<&str> = BIN_NAMES.iter().copied().filter(|n| !d.join(n).is_file()).collect();
            format!("{} (missing: {})", d.display(), missing.join(", "))
        })
        .collect();
    Err(format!(
        "crust binaries not found; looked in {}. Run `cargo build --workspace` first (or set CRUST_BIN_DIR).",
        looked.join("; ")
    ))
}

fn try_bins() -> Option<&'static Bins> {
    static BINS: OnceLock<Result<Bins, String>> = OnceLock::new();
    BINS.get_or_init(|| {
        let b = find_bins()?;
        warn_if_stale(&b);
        Ok(b)
    })
    .as_ref()
    .ok()
}

/// `cargo test` does not rebuild other packages' binaries: say so when a runtime source
/// file is newer than the binaries the tests are about to use.
fn warn_if_stale(b: &Bins) {
    fn newest(dir: &Path, best: &mut Option<(std::time::SystemTime, PathBuf)>) {
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                newest(&p, best);
            } else if let Ok(t) = e.metadata().and_then(|m| m.modified()) {
                if best.as_ref().is_none_or(|(bt, _)| t > *bt) {
                    *best = Some((t, p));
                }
            }
        }
    }
    let mut src = None;
    for krate in ["format", "coordinator", "launcher", "preload", "restorer"] {
        newest(&workspace_dir().join(krate).join("src"), &mut src);
    }
    let oldest_bin = [&b.crlaunch, &b.crctl, &b.crrestart, &b.crcoord, &b.preload]
        .iter()
        .filter_map(|p| fs::metadata(p).and_then(|m| m.modified()).ok())
        .min();
    if let (Some((t, path)), Some(bin_t)) = (src, oldest_bin) {
        if t > bin_t {
            eprintln!(
                "warning: {} is newer than the crust binaries in {}; run `cargo build --workspace` to test current code",
                path.display(),
                b.dir.display()
            );
        }
    }
}

/// The crust binaries; panics with "run `cargo build --workspace` first" when missing.
pub fn bins() -> &'static Bins {
    match try_bins() {
        Some(b) => b,
        None => panic!("{}", find_bins().err().unwrap_or_default()),
    }
}

/// The python3 interpreter to run the Python probe with (a real executable, not a
/// wrapper script): `$CRUST_TEST_PYTHON`, else `/usr/bin/python3`, else what `python3`
/// reports as `sys.executable`.
pub fn python3() -> PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        if let Some(p) = std::env::var_os("CRUST_TEST_PYTHON").filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
        if Path::new("/usr/bin/python3").is_file() {
            return PathBuf::from("/usr/bin/python3");
        }
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 is needed by the tests (apt-get install python3)");
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .clone()
}

/// The bash to run the bash probe with.
pub fn bash() -> PathBuf {
    ["/usr/bin/bash", "/bin/bash"].iter().map(PathBuf::from).find(|p| p.is_file()).expect("bash is needed by the tests")
}

// ---------------------------------------------------------------------------------------
// C probes

/// Compile `tests/probes/<name>.c` with `cc -O1 -g -pthread` (cached).
pub fn c_probe(name: &str) -> PathBuf {
    compile_c(name, &[], "")
}

/// Compile `tests/probes/<name>.c` with extra compiler flags; `variant` distinguishes the
/// output name (e.g. "static"). Output goes to `<target>/crust-tests/probes/`, named by a
/// hash of the sources and flags, so each probe is compiled once per change, and
/// concurrent test binaries never see a half-written executable (temp name + rename).
pub fn compile_c(name: &str, extra: &[&str], variant: &str) -> PathBuf {
    use std::hash::{Hash, Hasher};
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let src = probes_dir().join(format!("{name}.c"));
    let source = fs::read(&src).unwrap_or_else(|e| panic!("read {}: {e}", src.display()));
    let header = fs::read(probes_dir().join("gate.h")).unwrap_or_default();
    let mut flags = vec!["-O1", "-g", "-pthread", "-Wall"];
    flags.extend_from_slice(extra);
    let mut h = std::hash::DefaultHasher::new();
    (&source, &header, &flags).hash(&mut h);
    let out_dir = target_dir().join("crust-tests").join("probes");
    fs::create_dir_all(&out_dir).unwrap_or_else(|e| panic!("create {}: {e}", out_dir.display()));
    let suffix = if variant.is_empty() { String::new() } else { format!("-{variant}") };
    let out = out_dir.join(format!("{name}{suffix}-{:016x}", h.finish()));
    if out.is_file() {
        return out;
    }
    let tmp = out_dir.join(format!(".{name}{suffix}.{}.tmp", std::process::id()));
    let result = Command::new("cc")
        .args(&flags)
        .arg("-I")
        .arg(probes_dir())
        .arg("-o")
        .arg(&tmp)
        .arg(&src)
        .arg("-lm")
        .output()
        .unwrap_or_else(|e| panic!("cannot run cc (apt-get install gcc libc6-dev): {e}"));
    assert!(
        result.status.success(),
        "compiling {} failed:\n{}",
        src.display(),
        String::from_utf8_lossy(&result.stderr)
    );
    fs::rename(&tmp, &out).unwrap_or_else(|e| panic!("rename {}: {e}", tmp.display()));
    out
}

// ---------------------------------------------------------------------------------------
// Small utilities

/// A loopback port that was free a moment ago (bound, read, dropped). Chosen below the
/// kernel's ephemeral range when there is room, so that no outgoing connection (of crctl,
/// of a preload) can take it between now and the moment the coordinator binds it; falls
/// back to binding port 0. Never hands out the same port twice in one test binary.
pub fn free_port() -> u16 {
    static USED: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut used = USED.lock().unwrap_or_else(|e| e.into_inner());
    let ephemeral_low: u32 = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(32768);
    if ephemeral_low > 12000 {
        // Ports [10000, ephemeral_low), starting at a point that differs between test
        // binaries and runs.
        let span = ephemeral_low - 10000;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let start = (std::process::id().wrapping_mul(7919) ^ nanos) % span;
        for i in 0..span {
            let port = (10000 + (start + i * 7) % span) as u16;
            if used.contains(&port) {
                continue;
            }
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                used.push(port);
                return port;
            }
        }
    }
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local_addr").port();
        if !used.contains(&port) {
            used.push(port);
            return port;
        }
    }
}

/// Whether something accepts connections on 127.0.0.1:`port`.
pub fn port_is_open(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// Wait until nothing listens on `port`; false on timeout.
pub fn wait_port_closed(port: u16, timeout: Duration) -> bool {
    wait_until(timeout, || !port_is_open(port))
}

/// Poll `cond` every millisecond until it holds; false on timeout.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Wait until `path` exists (file, directory or symlink); false on timeout.
pub fn wait_for_file(path: &Path, timeout: Duration) -> bool {
    wait_until(timeout, || path.symlink_metadata().is_ok())
}

/// SIGKILL a process by pid (ignores errors).
pub fn kill9(pid: i32) {
    if pid > 0 {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// Whether a process with this pid exists and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])).unwrap_or(false),
        Err(_) => false,
    }
}

/// `/proc/PID/cmdline` split at NULs.
pub fn proc_cmdline(pid: i32) -> Option<Vec<OsString>> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut parts: Vec<OsString> = raw.split(|&b| b == 0).map(|p| OsStr::from_bytes(p).to_os_string()).collect();
    if parts.last().is_some_and(|p| p.is_empty()) {
        parts.pop();
    }
    Some(parts)
}

/// Last `n` bytes of a file, as text (for diagnostics).
pub fn tail(path: &Path, n: usize) -> String {
    match fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b[b.len().saturating_sub(n)..]).into_owned(),
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Panic with a readable account of the first difference between two outputs.
#[track_caller]
pub fn assert_same_bytes(expected: &[u8], actual: &[u8], what: &str) {
    if expected == actual {
        return;
    }
    let first = expected.iter().zip(actual).position(|(a, b)| a != b).unwrap_or(expected.len().min(actual.len()));
    let line_start = expected[..first].iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    let show = |b: &[u8]| {
        let from = line_start.min(b.len());
        let to = (first + 300).min(b.len());
        String::from_utf8_lossy(&b[from..to]).into_owned()
    };
    panic!(
        "{what}: differs from the reference at byte {first} (line {}; expected {} bytes, got {}).\n\
         --- expected from there:\n{}\n--- actual from there:\n{}\n--- full actual output:\n{}",
        expected[..first].iter().filter(|&&b| b == b'\n').count() + 1,
        expected.len(),
        actual.len(),
        show(expected),
        show(actual),
        String::from_utf8_lossy(actual)
    );
}

/// `crctl --coord 127.0.0.1:PORT checkpoint --wait` for any coordinator: returns the
/// generation directory it prints as its last line (panics if the checkpoint fails).
/// Tests normally use [`Session::checkpoint`], which also waits for registration.
pub fn checkpoint(port: u16) -> PathBuf {
    let out = Command::new(&bins().crctl)
        .arg("--coord")
        .arg(format!("127.0.0.1:{port}"))
        .args(["checkpoint", "--wait"])
        .stdin(Stdio::null())
        .output()
        .expect("run crctl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "crctl checkpoint --wait failed ({}): {text}{}", out.status, String::from_utf8_lossy(&out.stderr));
    PathBuf::from(text.lines().map(str::trim).rfind(|l| !l.is_empty()).expect("a generation path"))
}

/// Captured result of a command.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl CmdOutput {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    /// stdout and stderr together, lowercased, for message checks.
    pub fn all_text_lower(&self) -> String {
        format!("{}\n{}", self.stdout_text(), self.stderr_text()).to_lowercase()
    }
    pub fn describe(&self) -> String {
        format!("status {}\n--- stdout:\n{}\n--- stderr:\n{}", self.status, self.stdout_text(), self.stderr_text())
    }
}

/// Exit code or "killed by signal N".
pub fn status_text(s: &ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => format!("{s}"),
    }
}

// ---------------------------------------------------------------------------------------
// Programs

/// A program to run: executable, arguments, extra environment.
#[derive(Debug, Clone)]
pub struct Program {
    pub exe: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
}

impl Program {
    pub fn new(exe: impl Into<PathBuf>) -> Program {
        Program { exe: exe.into(), args: Vec::new(), env: Vec::new() }
    }
    /// A C probe from `tests/probes/<name>.c`.
    pub fn c(name: &str) -> Program {
        Program::new(c_probe(name))
    }
    /// `python3 tests/probes/<script>`.
    pub fn python(script: &str) -> Program {
        Program::new(python3()).arg(probes_dir().join(script))
    }
    /// `bash tests/probes/<script>`.
    pub fn bash(script: &str) -> Program {
        Program::new(bash()).arg(probes_dir().join(script))
    }
    pub fn arg(mut self, a: impl Into<OsString>) -> Program {
        self.args.push(a.into());
        self
    }
    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Program {
        self.env.push((k.into(), v.into()));
        self
    }
    /// argv as the program sees it (argv[0] is the executable path).
    pub fn argv(&self) -> Vec<OsString> {
        std::iter::once(self.exe.clone().into_os_string()).chain(self.args.iter().cloned()).collect()
    }
}

/// Where a started process's stdout goes.
#[derive(Debug, Clone)]
pub enum StdoutTo {
    /// A regular file, created (truncated) by the harness.
    File(PathBuf),
    /// A pipe read by the harness; see [`Running::pipe_output`].
    Pipe,
}

/// Options of `crlaunch`.
#[derive(Debug, Clone)]
pub struct LaunchOpts {
    pub stdout: StdoutTo,
    /// `--signal`.
    pub signal: Option<String>,
    /// `--interval`.
    pub interval: Option<u64>,
    /// Set `CR_TEST_GATE` (default true).
    pub gated: bool,
    /// Pass `--coord` and `--ckpt-dir` (default true). When false, crlaunch gets the
    /// coordinator from `CR_COORD` and the checkpoint directory from `CR_CKPT_DIR` =
    /// `ckpt_dir_env`, or, when that is None, no `CR_CKPT_DIR` at all (its cwd).
    pub flags: bool,
    pub ckpt_dir_env: Option<PathBuf>,
    /// More crlaunch options (before the `--`), e.g. `--no-forked` ([`LaunchOpts::no_forked`]).
    /// Env `CRUST_TEST_NO_FORKED=1` adds `--no-forked` to every launch, to run the whole
    /// suite in stop-the-world mode.
    pub extra: Vec<String>,
}

impl LaunchOpts {
    pub fn file(path: impl Into<PathBuf>) -> LaunchOpts {
        LaunchOpts {
            stdout: StdoutTo::File(path.into()),
            signal: None,
            interval: None,
            gated: true,
            flags: true,
            ckpt_dir_env: None,
            extra: Vec::new(),
        }
    }
    pub fn pipe() -> LaunchOpts {
        LaunchOpts {
            stdout: StdoutTo::Pipe,
            signal: None,
            interval: None,
            gated: true,
            flags: true,
            ckpt_dir_env: None,
            extra: Vec::new(),
        }
    }
    pub fn signal(mut self, s: &str) -> LaunchOpts {
        self.signal = Some(s.to_string());
        self
    }
    pub fn interval(mut self, secs: u64) -> LaunchOpts {
        self.interval = Some(secs);
        self
    }
    /// An extra crlaunch option.
    pub fn arg(mut self, a: &str) -> LaunchOpts {
        self.extra.push(a.to_string());
        self
    }
    /// `--no-forked` (stop-the-world writing).
    pub fn no_forked(mut self) -> LaunchOpts {
        self.extra.push("--no-forked".into());
        self
    }
}

// ---------------------------------------------------------------------------------------
// Gate directory

/// The gate directory of a session.
#[derive(Debug, Clone)]
pub struct Gate {
    pub dir: PathBuf,
}

impl Gate {
    pub fn reached_path(&self, k: u32) -> PathBuf {
        self.dir.join(format!("reached-{k}"))
    }
    pub fn go_path(&self, k: u32) -> PathBuf {
        self.dir.join(format!("go-{k}"))
    }
    pub fn is_reached(&self, k: u32) -> bool {
        self.reached_path(k).symlink_metadata().is_ok()
    }
    fn numbered(&self, prefix: &str) -> Vec<u32> {
        let mut v: Vec<u32> = fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_prefix(prefix)).and_then(|n| n.parse().ok()))
                    .collect()
            })
            .unwrap_or_default();
        v.sort_unstable();
        v
    }
    /// Gates whose reached-K exists.
    pub fn reached(&self) -> Vec<u32> {
        self.numbered("reached-")
    }
    /// Release gate `k`.
    pub fn go(&self, k: u32) {
        let p = self.go_path(k);
        fs::write(&p, b"").unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
    }
    fn remove(p: &Path) {
        if let Ok(md) = p.symlink_metadata() {
            let r = if md.is_dir() { fs::remove_dir(p) } else { fs::remove_file(p) };
            if let Err(e) = r {
                if e.kind() != std::io::ErrorKind::NotFound {
                    panic!("remove {}: {e}", p.display());
                }
            }
        }
    }
    /// Remove every reached-* file.
    pub fn clear_reached(&self) {
        for k in self.reached() {
            Self::remove(&self.reached_path(k));
        }
    }
    /// Remove go-J for every J >= k.
    pub fn clear_go_from(&self, k: u32) {
        for j in self.numbered("go-") {
            if j >= k {
                Self::remove(&self.go_path(j));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Running processes

/// What kind of process a [`Running`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `crlaunch ... -- PROGRAM`: after the exec, the program itself.
    Launched,
    /// `crrestart PATH`: returns when the restored program exits.
    Restarted,
    /// A program started without crust.
    Plain,
}

/// A process started by the harness. Dropping it SIGKILLs and reaps the process.
pub struct Running {
    pub label: String,
    pub kind: Kind,
    pub pid: i32,
    child: Child,
    status: Option<ExitStatus>,
    /// File the process's stdout goes to, if a file.
    pub stdout_path: Option<PathBuf>,
    /// File its stderr goes to.
    pub stderr_path: PathBuf,
    pipe: Option<mpsc::Receiver<Vec<u8>>>,
    pipe_data: Option<Vec<u8>>,
}

impl Running {
    /// Exit status if it has exited (reaps it).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().unwrap_or_else(|e| panic!("wait for {}: {e}", self.label));
        }
        self.status
    }

    /// Wait until it exits; None on timeout.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGKILL it and reap it.
    pub fn kill9(&mut self) -> ExitStatus {
        if let Some(s) = self.try_status() {
            return s;
        }
        kill9(self.pid);
        let s = self.child.wait().unwrap_or_else(|e| panic!("wait for {}: {e}", self.label));
        self.status = Some(s);
        s
    }

    /// Its stderr so far.
    pub fn stderr_text(&self) -> String {
        tail(&self.stderr_path, 8000)
    }

    /// Everything it wrote to its stdout pipe (waits for EOF, at most `timeout`).
    pub fn pipe_output(&mut self, timeout: Duration) -> Vec<u8> {
        if self.pipe_data.is_none() {
            let rx = self.pipe.take().unwrap_or_else(|| panic!("{}: stdout is not a pipe", self.label));
            let data = rx.recv_timeout(timeout).unwrap_or_else(|_| {
                panic!(
                    "{}: no EOF on its stdout pipe within {timeout:?}: some process kept the pipe open",
                    self.label
                )
            });
            self.pipe_data = Some(data);
        }
        self.pipe_data.clone().unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.status.is_none() {
            kill9(self.pid);
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Sessions

/// One test's private coordinator port, directories and processes.
pub struct Session {
    pub name: String,
    pub port: u16,
    /// Temporary root; removed on drop unless the test failed.
    pub root: PathBuf,
    /// `--ckpt-dir` of every crlaunch.
    pub ckpt_dir: PathBuf,
    /// Working directory of launched programs.
    pub work_dir: PathBuf,
    /// Working directory of reference runs.
    pub ref_dir: PathBuf,
    pub gate: Gate,
    /// The test checks one image or restart mode itself (mapped restore, O_DIRECT, a
    /// compression level): the suite-wide variants (`CRUST_TEST_NO_FORKED=1`,
    /// `CR_COMPRESS`, `CR_ZSTD_LEVEL`, `CR_RESTART_EAGER`, `CR_DIRECT_READS` in the
    /// environment of `cargo test`) do not reach its processes. See [`Session::exact_modes`].
    pub exact_modes: bool,
    tag: String,
    seq: AtomicU32,
}

impl Session {
    /// A session whose processes run in the modes the test chooses, whatever suite-wide
    /// variant the test suite runs under (see the field [`Session::exact_modes`]).
    pub fn exact_modes(mut self) -> Session {
        self.exact_modes = true;
        self
    }

    /// A new session named after the test.
    pub fn new(name: &str) -> Session {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let base = std::env::temp_dir().join("crust-tests");
        fs::create_dir_all(&base).expect("create temp dir");
        let base = base.canonicalize().expect("canonicalize temp dir");
        let tag = format!("{name}-{}-{n}", std::process::id());
        let root = base.join(&tag);
        let _ = fs::remove_dir_all(&root);
        let s = Session {
            name: name.to_string(),
            port: free_port(),
            ckpt_dir: root.join("ckpt"),
            work_dir: root.join("work"),
            ref_dir: root.join("ref"),
            gate: Gate { dir: root.join("gate") },
            exact_modes: false,
            root,
            tag,
            seq: AtomicU32::new(0),
        };
        for d in [&s.root, &s.ckpt_dir, &s.work_dir, &s.ref_dir, &s.gate.dir] {
            fs::create_dir_all(d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
        }
        s
    }

    /// `127.0.0.1:PORT`.
    pub fn coord(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn next(&self) -> u32 {
        self.seq.fetch_add(1, Ordering::SeqCst)
    }

    /// Environment every process of this session gets.
    fn base_env(&self, cmd: &mut Command) {
        if self.exact_modes {
            for k in ["CR_FORKED", "CR_COMPRESS", "CR_ZSTD_LEVEL", "CR_RESTART_EAGER", "CR_DIRECT_READS"] {
                cmd.env_remove(k);
            }
        } else if suite_no_forked() {
            // Coordinators started by crrestart too.
            cmd.env("CR_FORKED", "0");
        }
        cmd.env("CRUST_TEST_TAG", &self.tag)
            .env("CR_COORD", self.coord())
            .env("CR_CKPT_DIR", &self.ckpt_dir)
            .env_remove("CR_TEST_GATE")
            .env_remove("LD_PRELOAD");
    }

    /// Run `prog` without crust (no gate), in `ref_dir`, and capture its output.
    pub fn run_reference(&self, prog: &Program) -> CmdOutput {
        let mut cmd = Command::new(&prog.exe);
        cmd.args(&prog.args).current_dir(&self.ref_dir);
        self.base_env(&mut cmd);
        cmd.envs(prog.env.iter().map(|(k, v)| (k, v)));
        self.run_captured(cmd, "reference", EXIT_TIMEOUT)
    }

    /// Run a command to completion with stdout/stderr captured through files.
    fn run_captured(&self, mut cmd: Command, label: &str, timeout: Duration) -> CmdOutput {
        let n = self.next();
        let out_p = self.root.join(format!("{n:03}-{label}.out"));
        let err_p = self.root.join(format!("{n:03}-{label}.err"));
        let out = fs::File::create(&out_p).expect("create stdout file");
        let err = fs::File::create(&err_p).expect("create stderr file");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {label} ({cmd:?}): {e}"));
        let mut r = Running {
            label: label.to_string(),
            kind: Kind::Plain,
            pid: child.id() as i32,
            child,
            status: None,
            stdout_path: Some(out_p.clone()),
            stderr_path: err_p.clone(),
            pipe: None,
            pipe_data: None,
        };
        let status = r.wait_timeout(timeout).unwrap_or_else(|| {
            r.kill9();
            panic!("{label} did not finish within {timeout:?}: {cmd:?}\n--- stderr:\n{}", tail(&err_p, 4000))
        });
        CmdOutput { status, stdout: fs::read(&out_p).unwrap_or_default(), stderr: fs::read(&err_p).unwrap_or_default() }
    }

    fn spawn(&self, mut cmd: Command, label: &str, kind: Kind, stdout: &StdoutTo) -> Running {
        let n = self.next();
        let err_p = self.root.join(format!("{n:03}-{label}.err"));
        let err = fs::File::create(&err_p).expect("create stderr file");
        cmd.stdin(Stdio::null()).stderr(err).process_group(0);
        let stdout_path = match stdout {
            StdoutTo::File(p) => {
                let f = fs::File::create(p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
                cmd.stdout(f);
                Some(p.clone())
            }
            StdoutTo::Pipe => {
                cmd.stdout(Stdio::piped());
                None
            }
        };
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {label} ({cmd:?}): {e}"));
        let pipe = child.stdout.take().map(|mut out| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = out.read_to_end(&mut buf);
                let _ = tx.send(buf);
            });
            rx
        });
        Running {
            label: format!("{label} (#{n})"),
            kind,
            pid: child.id() as i32,
            child,
            status: None,
            stdout_path,
            stderr_path: err_p,
            pipe,
            pipe_data: None,
        }
    }

    /// `crlaunch --coord .. --ckpt-dir .. -- PROGRAM` in `work_dir`, stdout to `out`.
    pub fn launch(&self, prog: &Program, out: &Path) -> Running {
        self.launch_with(prog, &LaunchOpts::file(out))
    }

    /// `crlaunch` with options.
    pub fn launch_with(&self, prog: &Program, opts: &LaunchOpts) -> Running {
        let b = bins();
        let mut cmd = Command::new(&b.crlaunch);
        if opts.flags {
            cmd.arg("--coord").arg(self.coord()).arg("--ckpt-dir").arg(&self.ckpt_dir);
        }
        if let Some(i) = opts.interval {
            cmd.arg("--interval").arg(i.to_string());
        }
        if let Some(s) = &opts.signal {
            cmd.arg("--signal").arg(s);
        }
        cmd.args(&opts.extra);
        if suite_no_forked() && !self.exact_modes && !opts.extra.iter().any(|a| a == "--no-forked") {
            cmd.arg("--no-forked");
        }
        cmd.arg("--").arg(&prog.exe).args(&prog.args).current_dir(&self.work_dir);
        self.base_env(&mut cmd);
        if !opts.flags {
            match &opts.ckpt_dir_env {
                Some(d) => cmd.env("CR_CKPT_DIR", d),
                None => cmd.env_remove("CR_CKPT_DIR"),
            };
        }
        if opts.gated {
            cmd.env("CR_TEST_GATE", &self.gate.dir);
        }
        cmd.envs(prog.env.iter().map(|(k, v)| (k, v)));
        self.spawn(cmd, "crlaunch", Kind::Launched, &opts.stdout)
    }

    /// Start `prog` without crust but with the gate, in `work_dir`.
    pub fn start_plain(&self, prog: &Program, out: &Path) -> Running {
        let mut cmd = Command::new(&prog.exe);
        cmd.args(&prog.args).current_dir(&self.work_dir);
        self.base_env(&mut cmd);
        cmd.env("CR_TEST_GATE", &self.gate.dir);
        cmd.envs(prog.env.iter().map(|(k, v)| (k, v)));
        self.spawn(cmd, "plain", Kind::Plain, &StdoutTo::File(out.to_path_buf()))
    }

    /// Run `crlaunch -- PROGRAM` to completion (for programs crlaunch must refuse).
    pub fn launch_captured(&self, prog: &Program) -> CmdOutput {
        let b = bins();
        let mut cmd = Command::new(&b.crlaunch);
        cmd.arg("--coord").arg(self.coord()).arg("--ckpt-dir").arg(&self.ckpt_dir);
        cmd.arg("--").arg(&prog.exe).args(&prog.args).current_dir(&self.work_dir);
        self.base_env(&mut cmd);
        cmd.envs(prog.env.iter().map(|(k, v)| (k, v)));
        self.run_captured(cmd, "crlaunch-captured", EXIT_TIMEOUT)
    }

    /// `crrestart --coord .. PATH`, its own stdout to `stdout`.
    pub fn restart(&self, path: &Path, stdout: &StdoutTo) -> Running {
        self.restart_with(path, stdout, &[])
    }

    /// `crrestart --coord .. ARGS PATH`, its own stdout to `stdout`.
    pub fn restart_with(&self, path: &Path, stdout: &StdoutTo, args: &[&str]) -> Running {
        let b = bins();
        let mut cmd = Command::new(&b.crrestart);
        cmd.arg("--coord").arg(self.coord()).args(args).arg(path).current_dir(&self.root);
        self.base_env(&mut cmd);
        self.spawn(cmd, "crrestart", Kind::Restarted, stdout)
    }

    /// Run `crrestart` expecting it to fail: returns its output after it exits.
    pub fn restart_expecting_failure(&self, path: &Path) -> CmdOutput {
        self.restart_expecting_failure_with(path, &[])
    }

    /// Run `crrestart ARGS PATH` expecting it to fail: returns its output after it exits.
    pub fn restart_expecting_failure_with(&self, path: &Path, args: &[&str]) -> CmdOutput {
        let b = bins();
        let mut cmd = Command::new(&b.crrestart);
        cmd.arg("--coord").arg(self.coord()).args(args).arg(path).current_dir(&self.root);
        self.base_env(&mut cmd);
        self.run_captured(cmd, "crrestart-failing", READY_TIMEOUT)
    }

    /// `crrestart --list-fds [ARGS] GEN`: its table (stdout), after checking that it succeeded.
    #[track_caller]
    pub fn list_fds(&self, gen: &Path, args: &[&str]) -> String {
        let mut cmd = Command::new(&bins().crrestart);
        cmd.arg("--coord").arg(self.coord()).arg("--list-fds").args(args).arg(gen).current_dir(&self.root);
        self.base_env(&mut cmd);
        let o = self.run_captured(cmd, "crrestart-list-fds", READY_TIMEOUT);
        assert!(o.status.success(), "crrestart --list-fds failed: {}", o.describe());
        o.stdout_text()
    }

    /// `crctl --coord .. ARGS` (cwd = root).
    pub fn crctl(&self, args: &[&str]) -> CmdOutput {
        let b = bins();
        let mut cmd = Command::new(&b.crctl);
        cmd.arg("--coord").arg(self.coord()).args(args).current_dir(&self.root);
        self.base_env(&mut cmd);
        self.run_captured(cmd, &format!("crctl-{}", args.first().unwrap_or(&"")), CRCTL_TIMEOUT)
    }

    /// `crctl --coord .. ARGS` with extra environment (e.g. `CR_TOKEN`).
    pub fn crctl_env(&self, args: &[&str], env: &[(&str, &str)]) -> CmdOutput {
        let b = bins();
        let mut cmd = Command::new(&b.crctl);
        cmd.arg("--coord").arg(self.coord()).args(args).current_dir(&self.root);
        self.base_env(&mut cmd);
        cmd.envs(env.iter().copied());
        self.run_captured(cmd, &format!("crctl-{}", args.first().unwrap_or(&"")), CRCTL_TIMEOUT)
    }

    /// `crctl status --json`, parsed; None when no coordinator answers.
    pub fn status_json(&self) -> Option<serde_json::Value> {
        let out = self.crctl(&["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Start `crcoord --port PORT --ckpt-dir CKPT_DIR -vv EXTRA...` for this session (with
    /// extra environment) and wait until it listens. Panics if it exits first.
    #[track_caller]
    pub fn start_coordinator(&self, extra: &[&str], env: &[(&str, &str)]) -> Running {
        let b = bins();
        let mut cmd = Command::new(&b.crcoord);
        cmd.arg("--port").arg(self.port.to_string()).arg("--ckpt-dir").arg(&self.ckpt_dir).arg("-vv").args(extra);
        cmd.current_dir(&self.root);
        self.base_env(&mut cmd);
        cmd.envs(env.iter().copied());
        let n = self.next();
        let out = self.root.join(format!("{n:03}-crcoord.out"));
        let mut r = self.spawn(cmd, "crcoord", Kind::Plain, &StdoutTo::File(out));
        let ok = wait_until(READY_TIMEOUT, || port_is_open(self.port) || r.try_status().is_some());
        if let Some(st) = r.try_status() {
            panic!("crcoord {extra:?} exited ({}) before listening:\n{}", status_text(&st), r.stderr_text());
        }
        assert!(ok, "crcoord did not listen on port {} within {READY_TIMEOUT:?}", self.port);
        r
    }

    /// `crctl ARGS` without `--coord`: the address comes from `CR_COORD`.
    pub fn crctl_env_only(&self, args: &[&str]) -> CmdOutput {
        let b = bins();
        let mut cmd = Command::new(&b.crctl);
        cmd.args(args).current_dir(&self.root);
        self.base_env(&mut cmd);
        self.run_captured(cmd, &format!("crctl-env-{}", args.first().unwrap_or(&"")), CRCTL_TIMEOUT)
    }

    /// `crctl checkpoint --wait`: returns the generation directory (the last stdout line),
    /// after checking that it holds a manifest (is durable). Panics on failure.
    #[track_caller]
    pub fn checkpoint(&self) -> PathBuf {
        self.settle_gate_fds();
        self.wait_registered(1);
        let out = self.crctl(&["checkpoint", "--wait"]);
        assert!(out.status.success(), "crctl checkpoint --wait failed: {}\n{}", out.describe(), self.diagnostics());
        let text = out.stdout_text();
        let last = text.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or_else(|| {
            panic!("crctl checkpoint --wait printed no generation path: {}", out.describe())
        });
        let p = PathBuf::from(last);
        let p = if p.is_absolute() { p } else { self.root.join(p) };
        assert!(
            p.join("manifest.json").is_file(),
            "crctl checkpoint --wait returned {} but it has no manifest.json (not durable)\n{}",
            p.display(),
            self.diagnostics()
        );
        p
    }

    /// Number of processes the coordinator lists (`crctl status --json`), None when no
    /// coordinator answers or the answer is not understood.
    pub fn registered(&self) -> Option<usize> {
        let out = self.crctl(&["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v.get("processes").and_then(|p| p.as_array()).map(|a| a.len())
    }

    /// Wait up to `timeout` until the coordinator lists at least `n` processes.
    pub fn try_wait_registered(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || {
            if self.registered().is_some_and(|k| k >= n) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
            false
        })
    }

    /// Wait until the coordinator lists at least `n` processes. The preload registers
    /// from a background thread, so a program can reach its first gate before the
    /// coordinator knows it.
    #[track_caller]
    pub fn wait_registered(&self, n: usize) {
        if !self.try_wait_registered(n, READY_TIMEOUT) {
            panic!(
                "the coordinator did not list {n} process(es) within {READY_TIMEOUT:?} (it lists {:?})\n{}",
                self.registered(),
                self.diagnostics()
            );
        }
    }

    /// Processes (other than this test process) whose environment carries this session's
    /// tag: everything it started, their children, restored programs and coordinators.
    pub fn tagged_processes(&self) -> Vec<i32> {
        let needle = format!("CRUST_TEST_TAG={}", self.tag);
        let me = std::process::id() as i32;
        let mut v = Vec::new();
        if let Ok(rd) = fs::read_dir("/proc") {
            for e in rd.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
                if pid == me {
                    continue;
                }
                if let Ok(env) = fs::read(format!("/proc/{pid}/environ")) {
                    if env.split(|&b| b == 0).any(|kv| kv == needle.as_bytes()) {
                        v.push(pid);
                    }
                }
            }
        }
        v
    }

    /// Wait until no process of this session has a file of the gate directory open, so a
    /// checkpoint never captures a half-created gate file.
    pub fn settle_gate_fds(&self) {
        let gate = self.gate.dir.clone();
        let ok = wait_until(Duration::from_secs(10), || {
            !self.tagged_processes().iter().any(|pid| {
                fs::read_dir(format!("/proc/{pid}/fd"))
                    .map(|rd| rd.flatten().any(|fd| fs::read_link(fd.path()).is_ok_and(|t| t.starts_with(&gate))))
                    .unwrap_or(false)
            })
        });
        assert!(ok, "a process kept a gate file open for 10 s");
    }

    /// Wait for gate `k`; panics if the process exits first or on timeout.
    #[track_caller]
    pub fn wait_reached(&self, run: &mut Running, k: u32) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self.gate.is_reached(k) {
                return;
            }
            if let Some(s) = run.try_status() {
                panic!(
                    "{} exited ({}) before reaching gate {k}\n{}",
                    run.label,
                    status_text(&s),
                    self.diagnostics()
                );
            }
            if Instant::now() >= deadline {
                panic!("{} did not reach gate {k} within {READY_TIMEOUT:?}\n{}", run.label, self.diagnostics());
            }
            std::thread::sleep(POLL);
        }
    }

    /// Wait until some gate is reached and return the (only) one.
    #[track_caller]
    pub fn wait_any_reached(&self, run: &mut Running) -> u32 {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let r = self.gate.reached();
            if let Some(&k) = r.first() {
                assert_eq!(r.len(), 1, "{}: several gates reached at once: {r:?}", run.label);
                return k;
            }
            if let Some(s) = run.try_status() {
                panic!("{} exited ({}) before reaching any gate\n{}", run.label, status_text(&s), self.diagnostics());
            }
            if Instant::now() >= deadline {
                panic!("{} reached no gate within {READY_TIMEOUT:?}\n{}", run.label, self.diagnostics());
            }
            std::thread::sleep(POLL);
        }
    }

    /// Release every gate below `k` as it is reached, until gate `k` is reached.
    #[track_caller]
    pub fn advance_to(&self, run: &mut Running, k: u32) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            for j in self.gate.reached() {
                if j < k && !self.gate.go_path(j).exists() {
                    self.gate.go(j);
                }
            }
            if self.gate.is_reached(k) {
                return;
            }
            if let Some(s) = run.try_status() {
                panic!("{} exited ({}) before reaching gate {k}\n{}", run.label, status_text(&s), self.diagnostics());
            }
            if Instant::now() >= deadline {
                panic!("{} did not reach gate {k} within {READY_TIMEOUT:?}\n{}", run.label, self.diagnostics());
            }
            std::thread::sleep(POLL);
        }
    }

    /// Release every gate as it is reached until the process exits; returns its status.
    #[track_caller]
    pub fn drive_to_exit(&self, run: &mut Running) -> ExitStatus {
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(s) = run.try_status() {
                return s;
            }
            for j in self.gate.reached() {
                if !self.gate.go_path(j).exists() {
                    self.gate.go(j);
                }
            }
            if Instant::now() >= deadline {
                panic!("{} did not exit within {EXIT_TIMEOUT:?}\n{}", run.label, self.diagnostics());
            }
            std::thread::sleep(POLL);
        }
    }

    /// Make the gate directory ready for a restart from a checkpoint taken at gate `k`:
    /// no reached-* file (the restored program re-creates reached-K, which tells where it
    /// resumed), and no go-J for J >= k (it waits there until released).
    pub fn prepare_restart_at(&self, k: u32) {
        self.gate.clear_reached();
        self.gate.clear_go_from(k);
    }

    /// Kill a computation: SIGKILL launched programs directly, `crctl kill` for the rest,
    /// wait for every given process to exit, stop the coordinator (`crctl quit`), wait
    /// until its port is closed, and SIGKILL anything of this session still alive.
    pub fn kill_all(&self, runs: &mut [&mut Running]) {
        for r in runs.iter_mut() {
            if r.kind != Kind::Restarted {
                r.kill9();
            }
        }
        if port_is_open(self.port) {
            if runs.iter_mut().any(|r| r.kind == Kind::Restarted && r.try_status().is_none()) {
                // A restored program registers again from a background thread.
                self.try_wait_registered(1, Duration::from_secs(10));
            }
            let _ = self.crctl(&["kill"]);
        }
        for r in runs.iter_mut() {
            if r.wait_timeout(Duration::from_secs(20)).is_none() {
                eprintln!("[{}] {} still running 20 s after crctl kill; SIGKILL", self.name, r.label);
                r.kill9();
            }
        }
        self.stop_coordinator();
        self.kill_tagged();
    }

    /// `crctl quit` if a coordinator answers; wait until its port is closed.
    pub fn stop_coordinator(&self) {
        if port_is_open(self.port) {
            let _ = self.crctl(&["quit"]);
        }
        if !wait_port_closed(self.port, READY_TIMEOUT) {
            // Not our business to wait forever: kill_tagged gets the coordinator if it
            // carries our environment.
            eprintln!("[{}] coordinator on port {} still listening after crctl quit", self.name, self.port);
        }
    }

    /// SIGKILL every process carrying this session's tag, until none is left (10 s).
    pub fn kill_tagged(&self) -> Vec<i32> {
        let mut killed = Vec::new();
        wait_until(Duration::from_secs(10), || {
            let left = self.tagged_processes();
            for &p in &left {
                kill9(p);
                if !killed.contains(&p) {
                    killed.push(p);
                }
            }
            left.is_empty()
        });
        killed
    }

    /// Processes of this session still alive after `grace`: none expected.
    pub fn leftovers_after(&self, grace: Duration) -> Vec<String> {
        let mut left = Vec::new();
        wait_until(grace, || {
            left = self.tagged_processes();
            left.is_empty() && !port_is_open(self.port)
        });
        let mut v: Vec<String> = left
            .iter()
            .map(|p| {
                let cmd = proc_cmdline(*p)
                    .map(|c| c.iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" "))
                    .unwrap_or_default();
                format!("pid {p}: {cmd}")
            })
            .collect();
        if port_is_open(self.port) {
            v.push(format!("something still listens on the coordinator port {}", self.port));
        }
        v
    }

    /// Tails of every stderr file of this session and the gate directory's content.
    pub fn diagnostics(&self) -> String {
        let mut s = format!("--- session {} (root {}, port {})\n", self.name, self.root.display(), self.port);
        s += &format!("gate dir: reached {:?}, go {:?}\n", self.gate.reached(), self.gate.numbered("go-"));
        let mut files: Vec<PathBuf> = fs::read_dir(&self.root)
            .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "err")).collect())
            .unwrap_or_default();
        files.sort();
        files.push(self.ckpt_dir.join("crcoord.log"));
        files.push(self.root.join("program.out"));
        for f in files {
            if !f.exists() {
                continue;
            }
            let t = tail(&f, 3000);
            if !t.trim().is_empty() {
                s += &format!("--- {}:\n{}\n", f.file_name().unwrap_or_default().to_string_lossy(), t.trim_end());
            }
        }
        s += &self.process_report();
        s
    }

    /// Every process of this session with the state, wait channel and current syscall of
    /// each of its threads (what is stuck where).
    pub fn process_report(&self) -> String {
        let mut s = String::new();
        for pid in self.tagged_processes() {
            let cmd = proc_cmdline(pid)
                .map(|c| c.iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" "))
                .unwrap_or_default();
            s += &format!("--- process {pid}: {cmd}\n");
            let mut tids: Vec<i32> = fs::read_dir(format!("/proc/{pid}/task"))
                .map(|rd| rd.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
                .unwrap_or_default();
            tids.sort_unstable();
            for tid in tids {
                let base = format!("/proc/{pid}/task/{tid}");
                let stat = fs::read_to_string(format!("{base}/stat")).unwrap_or_default();
                let state = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()).unwrap_or("?").to_string();
                let comm = fs::read_to_string(format!("{base}/comm")).unwrap_or_default();
                let wchan = fs::read_to_string(format!("{base}/wchan")).unwrap_or_default();
                let sc = fs::read_to_string(format!("{base}/syscall")).unwrap_or_default();
                s += &format!(
                    "    tid {tid} {} state {state} wchan {} syscall {}\n",
                    comm.trim(),
                    wchan.trim(),
                    sc.split_whitespace().next().unwrap_or("?")
                );
            }
        }
        s
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if try_bins().is_some() && port_is_open(self.port) {
            let run = |args: &[&str]| {
                let b = try_bins().expect("checked");
                let mut cmd = Command::new(&b.crctl);
                cmd.arg("--coord").arg(self.coord()).args(args).stdin(Stdio::null()).stdout(Stdio::null());
                cmd.stderr(Stdio::null());
                self.base_env(&mut cmd);
                if let Ok(mut c) = cmd.spawn() {
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while Instant::now() < deadline {
                        if let Ok(Some(_)) = c.try_wait() {
                            return;
                        }
                        std::thread::sleep(POLL);
                    }
                    let _ = c.kill();
                    let _ = c.wait();
                }
            };
            run(&["kill"]);
            run(&["quit"]);
            wait_port_closed(self.port, Duration::from_secs(10));
        }
        let killed = self.kill_tagged();
        if std::thread::panicking() {
            eprintln!(
                "[{}] test failed: keeping {} for inspection{}",
                self.name,
                self.root.display(),
                if killed.is_empty() { String::new() } else { format!("; killed leftover processes {killed:?}") }
            );
        } else {
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Scenarios

/// A checkpoint taken by a [`Flow`].
#[derive(Debug, Clone)]
pub struct Checkpointed {
    /// The generation directory `crctl checkpoint --wait` printed.
    pub gen: PathBuf,
    /// The gate the program was waiting at.
    pub gate: u32,
    /// Size of the program's output file at checkpoint time.
    pub out_len: u64,
}

/// The scenarios of the tests, for one program: a reference run (no crust) and then
/// launches, checkpoints, kills and restarts whose output is compared with it.
pub struct Flow<'a> {
    pub s: &'a Session,
    pub prog: Program,
    pub opts: LaunchOpts,
    pub reference: CmdOutput,
    /// The program's stdout file (when `opts.stdout` is a file).
    pub out: PathBuf,
    /// Extra crrestart options (e.g. `--eager`) for every restart of this flow.
    pub restart_args: Vec<String>,
}

impl<'a> Flow<'a> {
    /// Run the reference and check it: exit status 23 and no "ERROR" line.
    pub fn new(s: &'a Session, prog: Program) -> Flow<'a> {
        let out = s.root.join("program.out");
        Flow::with_opts(s, prog, LaunchOpts::file(&out))
    }

    pub fn with_opts(s: &'a Session, prog: Program, opts: LaunchOpts) -> Flow<'a> {
        let reference = s.run_reference(&prog);
        check_reference(&reference);
        let out = match &opts.stdout {
            StdoutTo::File(p) => p.clone(),
            StdoutTo::Pipe => s.root.join("program.out"),
        };
        Flow { s, prog, opts, reference, out, restart_args: Vec::new() }
    }

    pub fn launch(&self) -> Running {
        self.s.launch_with(&self.prog, &self.opts)
    }

    /// Release gates up to `k`, wait for gate `k` and checkpoint there.
    #[track_caller]
    pub fn checkpoint_at(&self, run: &mut Running, k: u32) -> Checkpointed {
        self.s.advance_to(run, k);
        let gen = self.s.checkpoint();
        let out_len = if matches!(self.opts.stdout, StdoutTo::File(_)) {
            let got = fs::read(&self.out).expect("read program output");
            let reference = &self.reference.stdout;
            assert!(
                got.len() <= reference.len() && got[..] == reference[..got.len()],
                "output at the checkpoint at gate {k} is not a prefix of the reference:\n{}",
                String::from_utf8_lossy(&got)
            );
            got.len() as u64
        } else {
            0
        };
        Checkpointed { gen, gate: k, out_len }
    }

    /// Launch, release gates up to `k` and checkpoint there once the coordinator lists
    /// `procs` processes (a tree whose children register after the gate is reached).
    #[track_caller]
    pub fn launch_checkpointed(&self, k: u32, procs: usize) -> (Running, Checkpointed) {
        let mut run = self.launch();
        self.s.advance_to(&mut run, k);
        self.s.wait_registered(procs);
        let ck = self.checkpoint_at(&mut run, k);
        (run, ck)
    }

    /// Kill everything of the computation, then append [`GARBAGE`] to the output file.
    pub fn kill(&self, runs: &mut [&mut Running]) {
        self.s.kill_all(runs);
        if matches!(self.opts.stdout, StdoutTo::File(_)) {
            let mut f = fs::OpenOptions::new().append(true).open(&self.out).expect("open program output");
            f.write_all(GARBAGE).expect("append garbage");
        }
    }

    /// Restart from `ck` (or from `path` if given: a checkpoint or computation directory
    /// that must resolve to `ck`'s generation), with crrestart's own stdout to a file.
    /// Waits until the restored program is back at `ck.gate` and checks that the output
    /// file was truncated to its checkpoint-time size.
    #[track_caller]
    pub fn restart(&self, ck: &Checkpointed) -> Running {
        self.restart_from(&ck.gen, ck)
    }

    #[track_caller]
    pub fn restart_from(&self, path: &Path, ck: &Checkpointed) -> Running {
        self.s.prepare_restart_at(ck.gate);
        let n = self.s.next();
        let own = self.s.root.join(format!("{n:03}-crrestart-own-stdout.out"));
        let args: Vec<&str> = self.restart_args.iter().map(String::as_str).collect();
        let mut r = self.s.restart_with(path, &StdoutTo::File(own), &args);
        let at = self.s.wait_any_reached(&mut r);
        assert_eq!(
            at,
            ck.gate,
            "the restarted program resumed at gate {at}, but the checkpoint ({}) was taken at gate {}",
            ck.gen.display(),
            ck.gate
        );
        if matches!(self.opts.stdout, StdoutTo::File(_)) {
            let got = fs::read(&self.out).expect("read program output");
            assert_eq!(
                got.len() as u64,
                ck.out_len,
                "after the restart the output file is {} bytes, but it was {} at checkpoint time \
                 (a restart must truncate it back)",
                got.len(),
                ck.out_len
            );
            assert_same_bytes(&self.reference.stdout[..got.len()], &got, "output file right after the restart");
        }
        r
    }

    /// Run a (launched or restarted) program to its end and compare with the reference:
    /// exit status, output file, and crrestart's own stdout (must stay empty: the program's
    /// stdout was a file, which it got back).
    #[track_caller]
    pub fn finish(&self, run: &mut Running) {
        let status = self.s.drive_to_exit(run);
        let got = fs::read(&self.out).expect("read program output");
        assert_same_bytes(&self.reference.stdout, &got, &format!("output of {}", run.label));
        assert_eq!(
            (status.code(), status.signal()),
            (self.reference.status.code(), self.reference.status.signal()),
            "{}: {} but the reference run ended with {}\n{}",
            run.label,
            status_text(&status),
            status_text(&self.reference.status),
            self.s.diagnostics()
        );
        if run.kind == Kind::Restarted {
            if let Some(p) = &run.stdout_path {
                let own = fs::read(p).unwrap_or_default();
                assert!(
                    own.is_empty(),
                    "crrestart wrote to its own stdout, which the restored program does not use:\n{}",
                    String::from_utf8_lossy(&own)
                );
            }
        }
    }

    /// The canonical scenario: launch; checkpoint at gate 1; let it run on to gate 2; kill
    /// it; restart from the checkpoint; run to the end; compare with the reference.
    pub fn canonical(&self) {
        let mut run = self.launch();
        let ck = self.checkpoint_at(&mut run, 1);
        self.s.advance_to(&mut run, 2);
        self.kill(&mut [&mut run]);
        let mut r = self.restart(&ck);
        self.finish(&mut r);
    }

    /// Checkpoint at gate 1 and let the original run on to its end: the checkpoint must not
    /// disturb it.
    pub fn checkpoint_and_run_on(&self) {
        let mut run = self.launch();
        self.checkpoint_at(&mut run, 1);
        self.finish(&mut run);
    }
}

/// A reference run must end with status 23 and report no error.
#[track_caller]
pub fn check_reference(r: &CmdOutput) {
    assert_eq!(r.status.code(), Some(PROBE_EXIT_CODE), "reference run failed: {}", r.describe());
    let text = r.stdout_text();
    assert!(!text.contains("ERROR"), "reference run reported an error: {}", r.describe());
    assert!(text.contains("gate 1\n") && text.contains("gate 3\n"), "reference run passed no gates: {}", r.describe());
}

/// Byte offset just past the line `gate K` in a probe's output.
pub fn end_of_gate_line(output: &[u8], k: u32) -> usize {
    let needle = format!("gate {k}\n");
    let n = needle.as_bytes();
    let pos = output
        .windows(n.len())
        .enumerate()
        .find(|(i, w)| *w == n && (*i == 0 || output[i - 1] == b'\n'))
        .map(|(i, _)| i)
        .unwrap_or_else(|| panic!("no line `gate {k}` in the output"));
    pos + n.len()
}

/// The only `crust-<16 hex>` directory in a checkpoint directory.
pub fn computation_dir(ckpt_dir: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = fs::read_dir(ckpt_dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("crust-")))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(dirs.len(), 1, "expected one computation directory in {}, found {dirs:?}", ckpt_dir.display());
    dirs.into_iter().next().expect("one")
}

/// The process image files (`proc-*.crimg`) of a generation.
pub fn images_of(gen: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(gen)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("proc-") && n.ends_with(".crimg")))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Copy a directory's regular files (not recursive) into `to`.
pub fn copy_dir_files(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
    for e in fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display())).flatten() {
        if e.file_type().is_ok_and(|t| t.is_file()) {
            fs::copy(e.path(), to.join(e.file_name())).unwrap_or_else(|err| panic!("copy {}: {err}", e.path().display()));
        }
    }
}

/// Size of a file.
pub fn file_len(p: &Path) -> u64 {
    fs::metadata(p).map(|m| m.len()).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
}

/// Inode of a file (to check that a file was put back as the same file).
pub fn inode(p: &Path) -> u64 {
    fs::metadata(p).map(|m| m.ino()).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
}

/// `CRUST_TEST_NO_FORKED=1`: run every launch with `--no-forked` (stop-the-world writing).
pub fn suite_no_forked() -> bool {
    std::env::var_os("CRUST_TEST_NO_FORKED").is_some_and(|v| v == "1")
}

/// The probes, as the tests run them.
pub mod probe {
    use super::Program;

    /// Single-threaded memory probe (`tests/probes/memory.c`).
    pub fn memory() -> Program {
        Program::c("memory")
    }
    /// Multi-threaded probe (`tests/probes/threads.c`).
    pub fn threads() -> Program {
        Program::c("threads")
    }
    /// Signal-state probe (`tests/probes/signals.c`); launch it with `--signal SIGUSR1`.
    pub fn signals() -> Program {
        Program::c("signals")
    }
    /// Floating-point / vector register probe (`tests/probes/fp.c`).
    pub fn fp() -> Program {
        Program::c("fp")
    }
    /// Process-state probe (`tests/probes/procstate.c`) with arguments and environment.
    pub fn procstate() -> Program {
        Program::c("procstate")
            .arg("alpha")
            .arg("two words")
            .arg("\u{fc}n\u{ef}code \u{2713}")
            .env("PROBE_INPUT", "hello world")
            .env("PROBE_REMOVED", "set by the test, unset by the probe")
    }
    /// Worker threads rewriting a large buffer without pause, each checking at the end
    /// that its slice matches the running sum it kept (`tests/probes/dirty.c`).
    pub fn dirty() -> Program {
        Program::c("dirty")
    }
    /// Counts SIGCHLDs and polls wait()/children while being checkpointed
    /// (`tests/probes/childwatch.c`).
    pub fn childwatch() -> Program {
        Program::c("childwatch")
    }
    /// The Rust probe; pass `env!("CARGO_BIN_EXE_rust_probe")`.
    pub fn rust(exe: &str) -> Program {
        Program::new(exe)
    }
    /// The Python probe (`tests/probes/threads.py`).
    pub fn python() -> Program {
        Program::python("threads.py")
    }
    /// The bash probe (`tests/probes/loop.sh`).
    pub fn bash() -> Program {
        Program::bash("loop.sh")
    }
}

/// Complete generations (with a manifest) under a checkpoint directory, oldest first.
pub fn complete_generations(ckpt_dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for comp in fs::read_dir(ckpt_dir).into_iter().flatten().flatten() {
        if !comp.file_name().to_str().is_some_and(|n| n.starts_with("crust-")) {
            continue;
        }
        for g in fs::read_dir(comp.path()).into_iter().flatten().flatten() {
            if g.file_name().to_str().is_some_and(|n| n.starts_with("gen-")) && g.path().join("manifest.json").is_file() {
                v.push(g.path());
            }
        }
    }
    v.sort();
    v
}

/// (file name, size, hash) of every file of a directory, to show it did not change.
pub fn dir_fingerprint(dir: &Path) -> Vec<(String, u64, u64)> {
    use std::hash::{Hash, Hasher};
    let mut v: Vec<(String, u64, u64)> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| {
            let bytes = fs::read(e.path()).unwrap_or_default();
            let mut h = std::hash::DefaultHasher::new();
            bytes.hash(&mut h);
            (e.file_name().to_string_lossy().into_owned(), bytes.len() as u64, h.finish())
        })
        .collect();
    v.sort();
    v
}
