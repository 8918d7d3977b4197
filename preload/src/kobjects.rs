//! Kernel objects the preload describes for a restart: inotify instances (below),
//! MAP_SHARED mappings of tmpfs files ([`on_tmpfs`], [`claim_shm_file`]), memfd seals
//! ([`sealed_memfd`]) and absolute wall-clock timerfds ([`absolute_timerfd`]).
//!
//! inotify instances: what a restart needs that the kernel does not tell.
//!
//! `/proc/self/fdinfo` lists an inotify instance's watches (number, inode, device, mask)
//! but not the paths they were added with. The `inotify_add_watch` wrapper remembers, per
//! watched inode, the absolute path it was added with (and whether symlinks were
//! followed), and per fd number the highest watch number the kernel handed out (the
//! numbering continues after it). At checkpoint time [`describe_inotify`] joins both into
//! [`FdKind::Inotify`]; crrestart adds the watches again in number order to get the same
//! numbers (`launcher/src/restart.rs`). Events queued but not read are not kept.
//!
//! The table lives in the preload's own heap, under a small spin lock taken only inside a
//! wrapper section (never while a checkpoint reads it: the checkpoint holds the wrapper
//! lock as writer).

use crate::sys::{self, sc};
use crate::wrappers::{real, set_errno};
use core::sync::atomic::{AtomicBool, Ordering};
use crust_format::image::{FdKind, InotifyWatch};
use std::string::String;
use std::vec::Vec;

crate::wrappers::real_slots! {
    R_INOTIFY_ADD_WATCH = c"inotify_add_watch";
}

/// Resolve this module's real functions (at load time).
pub fn resolve() {
    resolve_slots();
}

struct Known {
    dev: u64,
    ino: u64,
    path: String,
    dont_follow: bool,
}

struct Table {
    known: Vec<Known>,
    /// (fd number, highest watch number handed out through it).
    last_wd: Vec<(i32, i32)>,
}

static LOCK: AtomicBool = AtomicBool::new(false);
static mut TABLE: Table = Table { known: Vec::new(), last_wd: Vec::new() };

fn with_table<R>(f: impl FnOnce(&mut Table) -> R) -> R {
    while LOCK.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
        core::hint::spin_loop();
    }
    // SAFETY: the spin lock above gives exclusive access.
    let r = f(unsafe { &mut *core::ptr::addr_of_mut!(TABLE) });
    LOCK.store(false, Ordering::Release);
    r
}

/// In a forked child: the table's lock may have been held by a thread that is not there.
pub fn after_fork_child() {
    LOCK.store(false, Ordering::Release);
}

/// The absolute form of `path` (relative paths are taken from the working directory).
fn absolute(path: &[u8]) -> Option<String> {
    let p = core::str::from_utf8(path).ok()?;
    if p.starts_with('/') {
        return Some(p.into());
    }
    let mut buf = [0u8; 4096];
    // SAFETY: buf is writable for its length.
    let n = sys::check(unsafe { sc!(sys::SYS_getcwd, buf.as_mut_ptr(), buf.len()) }).ok()?;
    let cwd = core::str::from_utf8(&buf[..n.saturating_sub(1)]).ok()?;
    let rel = p.trim_start_matches("./");
    Some(if cwd == "/" { std::format!("/{rel}") } else { std::format!("{cwd}/{rel}") })
}

fn stat_of(path: &[u8], follow: bool) -> Option<libc::stat> {
    let c = sys::CPath::new(path).ok()?;
    // SAFETY: plain old data.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    let flags = if follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
    // SAFETY: valid path and stat buffer.
    let r = unsafe { sc!(sys::SYS_newfstatat, libc::AT_FDCWD, c.ptr(), &mut st as *mut libc::stat, flags) };
    (r == 0).then_some(st)
}

type AddWatchFn = unsafe extern "C" fn(libc::c_int, *const libc::c_char, u32) -> libc::c_int;

/// `inotify_add_watch`: the real call, then the watched inode's path is remembered.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn inotify_add_watch(fd: libc::c_int, path: *const libc::c_char, mask: u32) -> libc::c_int {
    let Some(f) = real::<AddWatchFn>(&R_INOTIFY_ADD_WATCH) else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    if !crate::wrappers::is_active() || path.is_null() {
        // SAFETY: forwarding the program's own call.
        return unsafe { f(fd, path, mask) };
    }
    let _g = crate::quiesce::WrapperGuard::new();
    // SAFETY: forwarding the program's own call.
    let wd = unsafe { f(fd, path, mask) };
    if wd < 0 {
        return wd;
    }
    // SAFETY: the program's NUL-terminated path.
    let bytes = unsafe { core::ffi::CStr::from_ptr(path) }.to_bytes();
    let follow = mask & libc::IN_DONT_FOLLOW == 0;
    if let (Some(abs), Some(st)) = (absolute(bytes), stat_of(bytes, follow)) {
        with_table(|t| {
            match t.known.iter_mut().find(|k| k.dev == st.st_dev && k.ino == st.st_ino) {
                Some(k) => {
                    k.path = abs;
                    k.dont_follow = !follow;
                }
                None => t.known.push(Known { dev: st.st_dev, ino: st.st_ino, path: abs, dont_follow: !follow }),
            }
            match t.last_wd.iter_mut().find(|(f, _)| *f == fd) {
                Some(e) => e.1 = e.1.max(wd),
                None => t.last_wd.push((fd, wd)),
            }
        });
    }
    wd
}

/// The kernel's internal device number (as fdinfo shows it) as `st_dev`.
fn user_dev(kdev: u64) -> u64 {
    let major = kdev >> 20;
    let minor = kdev & 0xfffff;
    libc::makedev(major as u32, minor as u32)
}

/// An inotify instance's watches with their paths (checkpoint time, threads stopped).
pub fn describe_inotify(fd: i32) -> Result<FdKind, String> {
    let info = crate::procfs::read_string(std::format!("/proc/self/fdinfo/{fd}").as_bytes());
    let mut watches = Vec::new();
    for l in info.lines().filter(|l| l.starts_with("inotify ")) {
        // "inotify wd:HEX ino:HEX sdev:HEX mask:HEX ignored_mask:HEX ..."
        let field = |name: &str| l.split_whitespace().find_map(|w| w.strip_prefix(name)).and_then(|v| u64::from_str_radix(v, 16).ok());
        let (Some(wd), Some(ino), Some(sdev), Some(mask)) = (field("wd:"), field("ino:"), field("sdev:"), field("mask:")) else {
            return Err(std::format!("fd {fd} (inotify): cannot understand this kernel's fdinfo line {l:?}"));
        };
        let dev = user_dev(sdev);
        let found = with_table(|t| t.known.iter().find(|k| k.ino == ino && k.dev == dev).map(|k| (k.path.clone(), k.dont_follow)));
        let Some((path, dont_follow)) = found else {
            return Err(std::format!(
                "fd {fd} is an inotify instance whose watch {wd} (inode {ino}) was added before crust could see it \
                 (before an exec?): its path is unknown"
            ));
        };
        let mut mask = mask as u32;
        if dont_follow {
            mask |= libc::IN_DONT_FOLLOW;
        }
        watches.push(InotifyWatch { wd: wd as i32, path, mask, dev, ino });
    }
    watches.sort_by_key(|w| w.wd);
    let max_live = watches.last().map_or(0, |w| w.wd);
    let last_wd = with_table(|t| t.last_wd.iter().find(|(f, _)| *f == fd).map_or(0, |e| e.1)).max(max_live);
    Ok(FdKind::Inotify { watches, last_wd })
}

/// Whether `path` is on a tmpfs (`/dev/shm`...), whose files do not outlive a reboot.
pub fn on_tmpfs(path: &[u8]) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    let Ok(c) = sys::CPath::new(path) else { return false };
    // SAFETY: plain old data.
    let mut sf: libc::statfs = unsafe { core::mem::zeroed() };
    // SAFETY: valid path and statfs buffer.
    let r = unsafe { sc!(libc::SYS_statfs, c.ptr(), &mut sf as *mut libc::statfs) };
    r == 0 && sf.f_type as i64 == TMPFS_MAGIC
}

/// The one process of the computation that stores the content of a tmpfs file's mapped
/// range (`offset`, `len`) is the one that creates its claim file in the generation
/// directory first (as for pipes: `tree.rs`).
pub fn claim_shm_file(dir: &str, dev: u64, ino: u64, offset: u64, len: u64) -> bool {
    let host = crate::dump::uname().0;
    let path = std::format!("{dir}/.shmfile-{host}-{dev}-{ino}-{offset}-{len}");
    match sys::open(path.as_bytes(), libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC, 0o600) {
        Ok(fd) => {
            sys::close(fd);
            true
        }
        Err(_) => false,
    }
}

/// A memfd whose seals differ from a plain memfd's (F_SEAL_SEAL alone) as
/// [`FdKind::SealedMemfd`] (None: not a memfd, or plain).
pub fn sealed_memfd(fd: i32, path: &str, data: &[u8]) -> Option<FdKind> {
    if !path.starts_with("/memfd:") {
        return None;
    }
    let seals = sys::fcntl(fd, libc::F_GET_SEALS, 0).ok()? as u32;
    (seals != libc::F_SEAL_SEAL as u32).then(|| FdKind::SealedMemfd { path: path.into(), data: data.to_vec(), seals })
}

/// A timerfd's fdinfo (with `value_ns` left and `interval_ns`): when it was set with
/// TFD_TIMER_ABSTIME on a wall clock, [`FdKind::AbsTimerFd`] with its absolute expiry
/// (None otherwise: a relative timer, or a clock whose absolute values do not outlive a
/// boot, which comes back relative).
pub fn absolute_timerfd(info: &str, value_ns: u64, interval_ns: u64) -> Option<FdKind> {
    let flags = crate::procfs::status_value(info, "settime flags:", 8)?;
    let clockid = crate::procfs::status_value(info, "clockid:", 10)? as i32;
    if flags & 1 == 0 || !(clockid == libc::CLOCK_REALTIME || clockid == libc::CLOCK_REALTIME_ALARM) {
        return None;
    }
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out-pointer.
    unsafe { sc!(sys::SYS_clock_gettime, libc::CLOCK_REALTIME, &mut ts as *mut libc::timespec) };
    let now = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    Some(FdKind::AbsTimerFd {
        clockid,
        expires_ns: if value_ns == 0 && interval_ns == 0 { 0 } else { now + value_ns.max(1) },
        interval_ns,
        ticks: crate::procfs::status_value(info, "ticks:", 10)?,
        cancel_on_set: flags & 2 != 0,
    })
}
