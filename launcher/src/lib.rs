//! Shared code of the crust launchers: `crlaunch` (start a program under crust) and
//! `crrestart` (restart a computation from a checkpoint generation).
//!
//! * [`coord_client`]: find or start the coordinator.
//! * this module: locating crust's binaries and preload library, checking that a program
//!   can run under `LD_PRELOAD`, parsing signal names, logging setup.

pub mod coord_client;
pub mod fds;
pub mod ipc;
pub mod kobjects;
pub mod pages;
pub mod plan;
pub mod rebuild;
pub mod restart;

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Errors of the launcher library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}: command not found")]
    NotFound(String),
    #[error("{0}: permission denied (not an executable file)")]
    NotExecutable(String),
    #[error("{0} is setuid/setgid; the dynamic loader ignores LD_PRELOAD for it, so it cannot run under crust")]
    Setuid(String),
    #[error("{0} is statically linked; crust needs a dynamically linked program (LD_PRELOAD)")]
    Static(String),
    #[error("{program} is {what}; crust runs only native {arch} programs")]
    ForeignElf { program: String, what: String, arch: &'static str },
    #[error("{program}: bad interpreter {interp}: {reason}")]
    BadInterpreter { program: String, interp: String, reason: String },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("cannot find {name} (looked in {searched})")]
    MissingBinary { name: String, searched: String },
    #[error("{0}")]
    BadPath(String),
    #[error("bad signal {0:?}: {1}")]
    BadSignal(String, String),
    #[error("bad coordinator address {0:?}: expected HOST:PORT")]
    BadAddress(String),
    #[error("no coordinator at {addr}: {source}")]
    NoCoordinator { addr: String, source: std::io::Error },
    #[error("cannot start a coordinator at {addr}: {reason}")]
    CoordinatorStart { addr: String, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.display().to_string(), source }
}

pub use crust_coordinator::init_logging;

/// The coordinator address to use: env `CR_COORD`, else [`crust_format::wire::DEFAULT_COORD`].
pub fn default_coord() -> String {
    std::env::var("CR_COORD").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| crust_format::wire::DEFAULT_COORD.to_string())
}

/// The checkpoint directory to use: env `CR_CKPT_DIR`, else the current directory; absolute.
pub fn default_ckpt_dir() -> Result<PathBuf, Error> {
    let d = match std::env::var_os("CR_CKPT_DIR").filter(|s| !s.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => std::env::current_dir().map_err(io_err(Path::new(".")))?,
    };
    absolute(&d)
}

/// `path` made absolute against the current directory (not resolving symlinks).
pub fn absolute(path: &Path) -> Result<PathBuf, Error> {
    std::path::absolute(path).map_err(io_err(path))
}

/// Directories to look for crust's own files in: env `CR_BIN_DIR`, then the directory of
/// the running executable (and its parent when that is cargo's `deps` directory, so tests
/// find the binaries of the workspace).
fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("CR_BIN_DIR").filter(|d| !d.is_empty()) {
        dirs.push(PathBuf::from(d));
    }
    if let Some(exe_dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        if exe_dir.file_name() == Some(OsStr::new("deps")) {
            if let Some(p) = exe_dir.parent() {
                dirs.push(exe_dir.clone());
                dirs.push(p.to_path_buf());
            }
        } else {
            dirs.push(exe_dir);
        }
    }
    dirs
}

fn find_in_search_dirs(name: &str) -> Result<PathBuf, Error> {
    let dirs = search_dirs();
    for d in &dirs {
        let p = d.join(name);
        if p.is_file() {
            return absolute(&p);
        }
    }
    let searched = if dirs.is_empty() {
        "nowhere: CR_BIN_DIR is unset and the executable's directory is unknown".to_string()
    } else {
        dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
    };
    Err(Error::MissingBinary { name: name.to_string(), searched })
}

/// A crust binary (`crcoord`, `crust-restorer`, ...) installed next to the running one,
/// or in env `CR_BIN_DIR`.
pub fn find_sibling_binary(name: &str) -> Result<PathBuf, Error> {
    find_in_search_dirs(name)
}

/// The preload library: env `CR_PRELOAD_LIB`, else `libcrpreload.so` next to the running
/// executable (or in `CR_BIN_DIR`). Absolute, and usable in `LD_PRELOAD` (which splits on
/// spaces and colons).
pub fn preload_library_path() -> Result<PathBuf, Error> {
    let p = match std::env::var_os("CR_PRELOAD_LIB").filter(|s| !s.is_empty()) {
        Some(p) => {
            let p = absolute(Path::new(&p))?;
            if !p.is_file() {
                return Err(Error::Io {
                    path: p.display().to_string(),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "CR_PRELOAD_LIB names no file"),
                });
            }
            p
        }
        None => find_in_search_dirs("libcrpreload.so")?,
    };
    if p.as_os_str().as_bytes().iter().any(|b| matches!(b, b':' | b' ' | b'\t' | b'\n')) {
        return Err(Error::BadPath(format!(
            "the preload library path {} contains a colon or a space, which LD_PRELOAD cannot express; \
             install crust elsewhere or set CR_PRELOAD_LIB",
            p.display()
        )));
    }
    Ok(p)
}

/// `LD_PRELOAD` with `preload` first, followed by the entries of `existing` (minus any
/// copy of `preload`), colon-separated.
pub fn compose_ld_preload(preload: &Path, existing: Option<&OsStr>) -> std::ffi::OsString {
    let mut out = preload.as_os_str().to_os_string();
    if let Some(e) = existing {
        for entry in e.as_bytes().split(|b| matches!(b, b':' | b' ')).filter(|s| !s.is_empty()) {
            if entry != preload.as_os_str().as_bytes() {
                out.push(":");
                out.push(OsStr::from_bytes(entry));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Programs

/// Find `program` like execvp(3): a name with a slash is used as is, otherwise every
/// directory of `PATH` is tried. The result is an executable regular file.
pub fn resolve_program(program: &OsStr) -> Result<PathBuf, Error> {
    let shown = program.to_string_lossy().into_owned();
    if program.is_empty() {
        return Err(Error::NotFound(shown));
    }
    if program.as_bytes().contains(&b'/') {
        let p = PathBuf::from(program);
        let md = std::fs::metadata(&p).map_err(io_err(&p))?;
        if !md.is_file() || !is_executable(&p) {
            return Err(Error::NotExecutable(shown));
        }
        return Ok(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/bin:/usr/bin".into());
    let mut denied = false;
    for dir in path.as_bytes().split(|b| *b == b':') {
        let dir = if dir.is_empty() { Path::new(".") } else { Path::new(OsStr::from_bytes(dir)) };
        let p = dir.join(program);
        if let Ok(md) = std::fs::metadata(&p) {
            if md.is_file() && is_executable(&p) {
                return Ok(p);
            }
            denied = true;
        }
    }
    Err(if denied { Error::NotExecutable(shown) } else { Error::NotFound(shown) })
}

fn is_executable(p: &Path) -> bool {
    nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok()
}

/// What kind of executable a file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecKind {
    /// ELF with a `PT_INTERP`: the dynamic loader runs it, LD_PRELOAD works.
    Dynamic,
    /// ELF without `PT_INTERP` (static, or static-pie).
    Static,
    /// ELF for another class, byte order or machine.
    Foreign(String),
    /// `#!` script: interpreter path (as written).
    Script(PathBuf),
    /// Anything else (execvp runs it with /bin/sh, binfmt_misc may handle it, ...).
    Other,
}

#[cfg(target_arch = "x86_64")]
const NATIVE_MACHINE: (u16, &str) = (62, "x86_64");
#[cfg(target_arch = "aarch64")]
const NATIVE_MACHINE: (u16, &str) = (183, "aarch64");
#[cfg(target_arch = "riscv64")]
const NATIVE_MACHINE: (u16, &str) = (243, "riscv64");
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "riscv64")))]
const NATIVE_MACHINE: (u16, &str) = (0, "unknown");

const PT_INTERP: u32 = 3;

/// Classify an executable by its first bytes and, for ELF, its program headers.
pub fn exec_kind(path: &Path) -> Result<ExecKind, Error> {
    let f = File::open(path).map_err(io_err(path))?;
    let mut head = [0u8; 256];
    let n = read_at_most(&f, &mut head, 0).map_err(io_err(path))?;
    let head = &head[..n];
    if let Some(rest) = head.strip_prefix(b"#!") {
        let line = rest.split(|b| *b == b'\n').next().unwrap_or(&[]);
        let interp = line
            .split(|b| *b == b' ' || *b == b'\t')
            .find(|s| !s.is_empty())
            .ok_or_else(|| Error::BadInterpreter {
                program: path.display().to_string(),
                interp: String::new(),
                reason: "empty #! line".into(),
            })?;
        return Ok(ExecKind::Script(PathBuf::from(OsStr::from_bytes(interp))));
    }
    if !head.starts_with(b"\x7fELF") {
        return Ok(ExecKind::Other);
    }
    if head.len() < 64 {
        return Ok(ExecKind::Foreign("a truncated ELF file".into()));
    }
    let (class, data) = (head[4], head[5]);
    if class != 2 {
        return Ok(ExecKind::Foreign(if class == 1 { "a 32-bit ELF program".into() } else { format!("an ELF of class {class}") }));
    }
    if data != 1 {
        return Ok(ExecKind::Foreign("a big-endian ELF program".into()));
    }
    let u16_at = |o: usize| u16::from_le_bytes([head[o], head[o + 1]]);
    let machine = u16_at(18);
    if machine != NATIVE_MACHINE.0 {
        return Ok(ExecKind::Foreign(format!("an ELF program for machine type {machine}")));
    }
    let phoff = u64::from_le_bytes(head[32..40].try_into().unwrap_or([0; 8]));
    let phentsize = u16_at(54) as u64;
    let phnum = u16_at(56) as u64;
    if phentsize < 4 || phnum == 0 || phnum == 0xffff {
        return Ok(ExecKind::Foreign("an ELF file with unusual program headers".into()));
    }
    let mut phdrs = vec![0u8; (phentsize * phnum) as usize];
    let got = read_at_most(&f, &mut phdrs, phoff).map_err(io_err(path))?;
    if got != phdrs.len() {
        return Ok(ExecKind::Foreign("a truncated ELF file".into()));
    }
    let has_interp = phdrs
        .chunks_exact(phentsize as usize)
        .any(|ph| u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]) == PT_INTERP);
    Ok(if has_interp { ExecKind::Dynamic } else { ExecKind::Static })
}

fn read_at_most(f: &File, buf: &mut [u8], mut off: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], off) {
            Ok(0) => break,
            Ok(k) => {
                n += k;
                off += k as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Check that a resolved program can run under crust: not setuid/setgid (for us), an ELF
/// with a dynamic loader for this machine, or a `#!` script whose interpreter is one
/// (followed up to 4 levels, like the kernel). `shown` names the program in errors.
pub fn check_program(path: &Path, shown: &str) -> Result<(), Error> {
    let mut path = path.to_path_buf();
    let mut shown = shown.to_string();
    for _ in 0..5 {
        let md = std::fs::metadata(&path).map_err(io_err(&path))?;
        if !md.is_file() || !is_executable(&path) {
            return Err(Error::NotExecutable(shown));
        }
        // The loader runs in secure mode (and drops LD_PRELOAD) when exec changes the
        // effective user or group; a set-id bit naming ourselves changes nothing.
        let mode = md.mode();
        let setuid = mode & 0o4000 != 0 && md.uid() != nix::unistd::geteuid().as_raw();
        let setgid = mode & 0o2010 == 0o2010 && md.gid() != nix::unistd::getegid().as_raw();
        if setuid || setgid {
            return Err(Error::Setuid(shown));
        }
        match exec_kind(&path)? {
            ExecKind::Dynamic | ExecKind::Other => return Ok(()),
            ExecKind::Static => return Err(Error::Static(shown)),
            ExecKind::Foreign(what) => return Err(Error::ForeignElf { program: shown, what, arch: NATIVE_MACHINE.1 }),
            ExecKind::Script(interp) => {
                let interp_shown = interp.display().to_string();
                if !interp.exists() {
                    return Err(Error::BadInterpreter {
                        program: shown,
                        interp: interp_shown,
                        reason: "no such file".into(),
                    });
                }
                shown = format!("{interp_shown} (the interpreter of {shown})");
                path = interp;
            }
        }
    }
    Err(Error::BadInterpreter { program: shown, interp: String::new(), reason: "too many levels of #! interpreters".into() })
}

// ---------------------------------------------------------------------------------------
// Signals

const SIGNAL_NAMES: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("IOT", libc::SIGIOT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("STKFLT", libc::SIGSTKFLT),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("POLL", libc::SIGPOLL),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];

/// Parse a signal given as a number or a name (`SIGUSR2`, `usr2`, `SIGRTMIN+2`,
/// `RTMAX-1`). Signals that cannot be caught (KILL, STOP) and those the C library keeps
/// for itself (between 31 and SIGRTMIN) are refused, since crust must handle the signal.
pub fn parse_signal(s: &str) -> Result<i32, Error> {
    let bad = |why: &str| Error::BadSignal(s.to_string(), why.to_string());
    let rtmin = libc::SIGRTMIN();
    let rtmax = libc::SIGRTMAX();
    let t = s.trim();
    let n = if let Ok(n) = t.parse::<i32>() {
        n
    } else {
        let up = t.to_ascii_uppercase();
        let name = up.strip_prefix("SIG").unwrap_or(&up);
        let rt = |base: i32, rest: &str, sign: i32| -> Result<i32, Error> {
            if rest.is_empty() {
                return Ok(base);
            }
            let off: i32 = rest.parse().map_err(|_| bad("expected a number after + or -"))?;
            Ok(base + sign * off)
        };
        if let Some(rest) = name.strip_prefix("RTMIN") {
            match rest.strip_prefix('+') {
                Some(r) => rt(rtmin, r, 1)?,
                None if rest.is_empty() => rtmin,
                None => return Err(bad("expected RTMIN+N")),
            }
        } else if let Some(rest) = name.strip_prefix("RTMAX") {
            match rest.strip_prefix('-') {
                Some(r) => rt(rtmax, r, -1)?,
                None if rest.is_empty() => rtmax,
                None => return Err(bad("expected RTMAX-N")),
            }
        } else {
            SIGNAL_NAMES.iter().find(|(nm, _)| *nm == name).map(|(_, n)| *n).ok_or_else(|| bad("unknown signal name"))?
        }
    };
    if n < 1 || n > rtmax {
        return Err(bad(&format!("signals are numbered 1 to {rtmax}")));
    }
    if n == libc::SIGKILL || n == libc::SIGSTOP {
        return Err(bad("it cannot be caught"));
    }
    if n > 31 && n < rtmin {
        return Err(bad("it is reserved by the C library"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals() {
        assert_eq!(parse_signal("SIGUSR2").unwrap(), libc::SIGUSR2);
        assert_eq!(parse_signal("usr1").unwrap(), libc::SIGUSR1);
        assert_eq!(parse_signal("12").unwrap(), 12);
        assert_eq!(parse_signal("SIGRTMIN").unwrap(), libc::SIGRTMIN());
        assert_eq!(parse_signal("SIGRTMIN+2").unwrap(), libc::SIGRTMIN() + 2);
        assert_eq!(parse_signal("rtmax-1").unwrap(), libc::SIGRTMAX() - 1);
        for bad in ["SIGKILL", "9", "STOP", "0", "-3", "999", "SIGFOO", "RTMIN+x", "RTMIN-1", "32", "RTMAX+1", ""] {
            assert!(parse_signal(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ld_preload_composition() {
        let p = Path::new("/opt/crust/libcrpreload.so");
        assert_eq!(compose_ld_preload(p, None), OsStr::new("/opt/crust/libcrpreload.so"));
        assert_eq!(
            compose_ld_preload(p, Some(OsStr::new("libfoo.so /opt/crust/libcrpreload.so:/x/bar.so"))),
            OsStr::new("/opt/crust/libcrpreload.so:libfoo.so:/x/bar.so")
        );
    }

    #[test]
    fn resolve_like_execvp() {
        let sh = resolve_program(OsStr::new("sh")).unwrap();
        assert!(sh.is_absolute() || sh.starts_with("."), "{}", sh.display());
        assert!(matches!(resolve_program(OsStr::new("crust-no-such-program-xyz")), Err(Error::NotFound(_))));
        assert!(matches!(resolve_program(OsStr::new("/etc/passwd")), Err(Error::NotExecutable(_))));
        assert!(matches!(resolve_program(OsStr::new("/nonexistent/x")), Err(Error::Io { .. })));
    }

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("crust-launcher-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn write_exec(path: &Path, body: &[u8]) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, body).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn elf_dynamic_static_and_scripts() {
        let sh = resolve_program(OsStr::new("sh")).unwrap();
        assert_eq!(exec_kind(&sh).unwrap(), ExecKind::Dynamic);
        check_program(&sh, "sh").unwrap();

        let d = temp_dir("elf");
        // A script is judged by its interpreter.
        let script = d.join("script");
        write_exec(&script, b"#!/bin/sh -e\necho hi\n");
        assert_eq!(exec_kind(&script).unwrap(), ExecKind::Script("/bin/sh".into()));
        check_program(&script, "script").unwrap();
        let broken = d.join("broken");
        write_exec(&broken, b"#! /nonexistent/interp\n");
        assert!(matches!(check_program(&broken, "broken"), Err(Error::BadInterpreter { .. })));
        // Hand-made ELF headers: 64-bit, native machine, one PT_LOAD (static) or PT_INTERP.
        let elf = |ptype: u32, class: u8| {
            let mut b = vec![0u8; 64 + 56];
            b[..4].copy_from_slice(b"\x7fELF");
            b[4] = class;
            b[5] = 1;
            b[18..20].copy_from_slice(&NATIVE_MACHINE.0.to_le_bytes());
            b[32..40].copy_from_slice(&64u64.to_le_bytes());
            b[54..56].copy_from_slice(&56u16.to_le_bytes());
            b[56..58].copy_from_slice(&1u16.to_le_bytes());
            b[64..68].copy_from_slice(&ptype.to_le_bytes());
            b
        };
        let fake_static = d.join("fake-static");
        write_exec(&fake_static, &elf(1, 2));
        assert_eq!(exec_kind(&fake_static).unwrap(), ExecKind::Static);
        let e = check_program(&fake_static, "fake-static").unwrap_err().to_string();
        assert_eq!(e, "fake-static is statically linked; crust needs a dynamically linked program (LD_PRELOAD)");
        let fake_dyn = d.join("fake-dyn");
        write_exec(&fake_dyn, &elf(PT_INTERP, 2));
        assert_eq!(exec_kind(&fake_dyn).unwrap(), ExecKind::Dynamic);
        let fake32 = d.join("fake32");
        write_exec(&fake32, &elf(PT_INTERP, 1));
        assert!(matches!(check_program(&fake32, "fake32"), Err(Error::ForeignElf { .. })));
        // A script whose interpreter is static is refused too.
        let via_static = d.join("via-static");
        write_exec(&via_static, format!("#!{}\n", fake_static.display()).as_bytes());
        assert!(matches!(check_program(&via_static, "via-static"), Err(Error::Static(_))));
        // Not executable.
        std::fs::write(d.join("plain"), b"x").unwrap();
        assert!(matches!(check_program(&d.join("plain"), "plain"), Err(Error::NotExecutable(_))));

        // A real static binary, when a C compiler that can link statically is around.
        let src = d.join("s.c");
        std::fs::write(&src, b"int main(void){return 0;}\n").unwrap();
        let out = d.join("static-prog");
        let built = std::process::Command::new("cc")
            .arg("-static")
            .arg("-o")
            .arg(&out)
            .arg(&src)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if built {
            assert_eq!(exec_kind(&out).unwrap(), ExecKind::Static);
            assert!(matches!(check_program(&out, "static-prog"), Err(Error::Static(_))));
        } else {
            eprintln!("note: cc -static unavailable; real static binary not tested");
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn setuid_is_refused_unless_it_names_us() {
        use std::os::unix::fs::PermissionsExt;
        let d = temp_dir("setuid");
        let p = d.join("prog");
        std::fs::copy("/bin/sh", &p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o4755)).unwrap();
        // We own the copy, so its setuid bit changes nothing.
        check_program(&p, "prog").unwrap();
        // A setuid binary owned by someone else (e.g. root's su/passwd) is refused.
        if !nix::unistd::geteuid().is_root() {
            for cand in ["/usr/bin/passwd", "/bin/su", "/usr/bin/su"] {
                let c = Path::new(cand);
                if std::fs::metadata(c).is_ok_and(|m| m.mode() & 0o4000 != 0) {
                    let e = check_program(c, cand).unwrap_err().to_string();
                    assert!(e.contains("is setuid/setgid"), "{e}");
                    break;
                }
            }
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}
