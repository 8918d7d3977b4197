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
            if let Some(v) = kv.strip_prefix(b"CR_COORD=") {
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
            } else if kv == b"CR_DISABLE=1" {
                c.disabled = true;
            }
            e = e.add(1);
        }
    }
    c.program = c.args.first().cloned().unwrap_or_default();
    // SAFETY: single-threaded at load time.
    unsafe { CONFIG = Some(c) };
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
