//! Settings read once from the environment at load time.
//!
//! | variable   | meaning                                               | default          |
//! |------------|-------------------------------------------------------|------------------|
//! | CR_COORD   | coordinator address HOST:PORT                         | 127.0.0.1:7787   |
//! | CR_SIGNAL  | checkpoint signal number                              | SIGUSR2          |
//! | CR_CKPT_DIR| checkpoint directory (informational; the coordinator decides) | cwd      |
//! | CR_DISABLE | `1`: load but do nothing                              | unset            |
//! | CR_TOKEN   | shared secret presented to the coordinator            | unset            |
//! | CR_COMPRESS| page data compression: none, zstd, lz4                | none             |
//! | CR_FORKED  | `0`: write images stop-the-world, not from a forked copy | forked        |
//! | CR_ZSTD_LEVEL | zstd level for `CR_COMPRESS=zstd` (-50..=9; lower is faster, higher smaller) | `crust_format::codec::ZSTD_LEVEL` (-3) |
//! | CR_DIRECT_IO | `0`: write uncompressed page data through the page cache, not with `O_DIRECT`; `sync`: `O_DIRECT`, one synchronous write at a time (no Linux AIO: the fallback where the kernel refuses it) | `O_DIRECT` where the filesystem takes it, written through Linux AIO while the next pieces are checksummed |
//! | CR_WRITER_TIMEOUT | seconds a forked writer may take before it is killed | 600          |
//! | CR_TEST_WRITER_PAUSE | tests only: DIR; while DIR/arm exists a forked writer writes its pid to DIR/writer.pid and waits; DIR/no-writer makes creating it fail | unset |
//! | CR_TEST_DIRECT_REFUSE | tests only: `submit` / `complete`: the second direct write of a stop-the-world image is taken as refused by io_submit / as failed when it completes (the fallbacks: synchronous direct writes / the page cache from then on) | unset |
//!
//! Per-process variables, set by the preload itself across `exec` and removed from the
//! environment at load (the program never sees them; see `wrap_proc.rs`):
//!
//! | variable      | meaning                                                       |
//! |---------------|---------------------------------------------------------------|
//! | CR_VPID       | the virtual pid of the process that exec'd                     |
//! | CR_VPIDS      | its virtual pid table, `v:r,v:r,...`                           |
//! | CR_NOTIFY_FD  | fd to write one byte to once registered with the coordinator  |
//! | CR_IPCIDS     | its SysV id table and SEM_UNDO adjustments (`wrap_ipc.rs`)     |

use std::string::String;
use std::vec::Vec;

pub struct Config {
    pub disabled: bool,
    pub coord: String,
    pub signal: i32,
    pub ckpt_dir: String,
    pub program: String,
    pub args: Vec<String>,
    pub token: Option<String>,
    /// Page data compression (CR_COMPRESS; the coordinator's setting overrides it).
    pub compress: crust_format::image::Compression,
    /// `LD_PRELOAD=...` and every `CR_*=...` entry of the environment at load (minus the
    /// per-process ones): what an exec'd program must get back if the caller drops them.
    pub control_env: Vec<Vec<u8>>,
    /// `CR_VPID`, `CR_VPIDS`, `CR_NOTIFY_FD` as found at load.
    pub inherited_vpid: i32,
    pub inherited_vpids: Vec<u8>,
    /// `CR_IPCIDS`: the SysV id table (and SEM_UNDO adjustments) across exec (`wrap_ipc.rs`).
    pub inherited_ipcids: Vec<u8>,
    pub notify_fd: i32,
    /// Forked (copy-on-write) writing allowed (the coordinator must ask for it too).
    pub forked: bool,
    /// Write uncompressed page data with O_DIRECT where the filesystem allows it.
    pub direct_io: bool,
    /// ... through Linux AIO, so that checksumming goes on while the disk writes
    /// (`CR_DIRECT_IO=sync`: one synchronous write at a time).
    pub direct_aio: bool,
    /// zstd level for compressed images.
    pub zstd_level: i32,
    pub writer_timeout_secs: u64,
    pub test_writer_pause: Option<String>,
    /// `CR_TEST_DIRECT_REFUSE`: 1 = the second AIO submission is refused, 2 = the second
    /// direct write fails when it completes (dump.rs).
    pub test_direct_refuse: u8,
}

/// Variables that belong to one process only: never copied into an exec'd program's
/// environment from the saved set, always removed from the environment at load.
pub const PER_PROCESS_VARS: [&[u8]; 4] = [b"CR_VPID=", b"CR_VPIDS=", b"CR_NOTIFY_FD=", b"CR_IPCIDS="];

/// Whether an environment entry is one of [`PER_PROCESS_VARS`].
pub fn is_per_process(kv: &[u8]) -> bool {
    PER_PROCESS_VARS.iter().any(|p| kv.starts_with(p))
}

static mut CONFIG: Option<Config> = None;

/// # Safety
/// Called once from `init` with the loader's argv/envp, before any other thread exists.
pub unsafe fn load(argc: i32, argv: *const *const u8, envp: *const *const u8) {
    let mut c = Config {
        disabled: false,
        coord: String::from(crust_format::wire::DEFAULT_COORD),
        signal: libc::SIGUSR2,
        ckpt_dir: String::new(),
        program: String::new(),
        args: Vec::new(),
        token: None,
        compress: crust_format::image::Compression::None,
        control_env: Vec::new(),
        inherited_vpid: 0,
        inherited_vpids: Vec::new(),
        inherited_ipcids: Vec::new(),
        notify_fd: -1,
        forked: true,
        direct_io: true,
        direct_aio: true,
        zstd_level: crust_format::codec::ZSTD_LEVEL,
        writer_timeout_secs: 600,
        test_writer_pause: None,
        test_direct_refuse: 0,
    };
    // SAFETY: the loader passes valid C string arrays (argv has argc entries).
    unsafe {
        for i in 0..argc.max(0) as usize {
            let p = *argv.add(i);
            if p.is_null() {
                break;
            }
            c.args.push(String::from_utf8_lossy(cstr(p)).into_owned());
        }
        let mut e = envp;
        while !e.is_null() && !(*e).is_null() {
            let kv = cstr(*e);
            if kv.starts_with(b"LD_PRELOAD=") || (kv.starts_with(b"CR_") && !is_per_process(kv)) {
                c.control_env.push(kv.to_vec());
            }
            let parse = |v: &[u8]| core::str::from_utf8(v).ok().and_then(|s| s.parse::<i32>().ok());
            if let Some(v) = kv.strip_prefix(b"CR_VPID=") {
                c.inherited_vpid = parse(v).unwrap_or(0);
            } else if let Some(v) = kv.strip_prefix(b"CR_VPIDS=") {
                c.inherited_vpids = v.to_vec();
            } else if let Some(v) = kv.strip_prefix(b"CR_IPCIDS=") {
                c.inherited_ipcids = v.to_vec();
            } else if let Some(v) = kv.strip_prefix(b"CR_NOTIFY_FD=") {
                c.notify_fd = parse(v).unwrap_or(-1);
            } else if let Some(v) = kv.strip_prefix(b"CR_COORD=") {
                c.coord = String::from_utf8_lossy(v).into_owned();
            } else if let Some(v) = kv.strip_prefix(b"CR_SIGNAL=") {
                if let Some(n) = core::str::from_utf8(v).ok().and_then(|s| s.parse::<i32>().ok()) {
                    if (1..=64).contains(&n) && n != libc::SIGKILL && n != libc::SIGSTOP {
                        c.signal = n;
                    }
                }
            } else if let Some(v) = kv.strip_prefix(b"CR_CKPT_DIR=") {
                c.ckpt_dir = String::from_utf8_lossy(v).into_owned();
            } else if let Some(v) = kv.strip_prefix(b"CR_TOKEN=") {
                let t = String::from_utf8_lossy(v).trim().into();
                c.token = Some(t).filter(|t: &String| !t.is_empty());
            } else if let Some(v) = kv.strip_prefix(b"CR_COMPRESS=") {
                if let Some(k) = core::str::from_utf8(v).ok().and_then(crust_format::image::Compression::parse) {
                    c.compress = k;
                }
            } else if let Some(v) = kv.strip_prefix(b"CR_FORKED=") {
                c.forked = v != b"0";
            } else if let Some(v) = kv.strip_prefix(b"CR_DIRECT_IO=") {
                c.direct_io = v != b"0";
                c.direct_aio = v != b"sync";
            } else if let Some(v) = kv.strip_prefix(b"CR_ZSTD_LEVEL=") {
                if let Some(n) = parse(v).filter(|n| crust_format::codec::ZSTD_LEVELS.contains(n)) {
                    c.zstd_level = n;
                }
            } else if let Some(v) = kv.strip_prefix(b"CR_WRITER_TIMEOUT=") {
                if let Some(n) = core::str::from_utf8(v).ok().and_then(|s| s.parse::<u64>().ok()) {
                    c.writer_timeout_secs = n.clamp(1, 1 << 30);
                }
            } else if let Some(v) = kv.strip_prefix(b"CR_TEST_DIRECT_REFUSE=") {
                c.test_direct_refuse = match v {
                    b"submit" => 1,
                    b"complete" => 2,
                    _ => 0,
                };
            } else if let Some(v) = kv.strip_prefix(b"CR_TEST_WRITER_PAUSE=") {
                if !v.is_empty() {
                    c.test_writer_pause = Some(String::from_utf8_lossy(v).into_owned());
                }
            } else if kv == b"CR_DISABLE=1" {
                c.disabled = true;
            }
            e = e.add(1);
        }
    }
    c.program = c.args.first().cloned().unwrap_or_default();
    // SAFETY: envp is the process's environment array, which we may edit before main.
    unsafe { strip_per_process(envp as *mut *const u8) };
    // SAFETY: single-threaded at load time.
    unsafe { CONFIG = Some(c) };
}

/// Remove [`PER_PROCESS_VARS`] entries from the environment array, in place.
///
/// # Safety
/// `envp` is null or the NULL-terminated environment array, not used by another thread.
unsafe fn strip_per_process(envp: *mut *const u8) {
    if envp.is_null() {
        return;
    }
    let (mut r, mut w) = (0usize, 0usize);
    // SAFETY: walking and compacting the NULL-terminated array.
    unsafe {
        loop {
            let p = *envp.add(r);
            if p.is_null() {
                *envp.add(w) = p;
                break;
            }
            if !is_per_process(cstr(p)) {
                *envp.add(w) = p;
                w += 1;
            }
            r += 1;
        }
    }
}

/// The configuration (valid after `load`).
pub fn get() -> &'static Config {
    // SAFETY: written once during init before any reader exists, then only read.
    unsafe { (*core::ptr::addr_of!(CONFIG)).as_ref().expect("crust config not loaded") }
}

/// Replace the coordinator address (crrestart --coord).
pub fn set_coord(addr: String) {
    // SAFETY: called from the single-threaded restart path before other threads run.
    unsafe {
        if let Some(c) = (*core::ptr::addr_of_mut!(CONFIG)).as_mut() {
            c.coord = addr;
        }
    }
}

/// # Safety
/// `p` must point to a NUL-terminated string.
pub unsafe fn cstr<'a>(p: *const u8) -> &'a [u8] {
    let mut n = 0;
    // SAFETY: forwarded from the caller.
    unsafe {
        while *p.add(n) != 0 {
            n += 1;
        }
        core::slice::from_raw_parts(p, n)
    }
}
