//! Process creation, exec and exit: every process of the tree stays under control.
//!
//! * `fork` (and `vfork`, which is a `fork` here: the child must get its own checkpoint
//!   thread, which a child sharing its parent's memory cannot have; `daemon`, whose glibc
//!   version forks internally): the parent holds the wrapper lock (reader) from before the
//!   fork until the child has registered with the coordinator, so a checkpoint never finds
//!   the parent mid-fork and always finds the child either registered — it takes part —
//!   or not created yet. The child signals its registration through a close-on-exec pipe.
//!   If the kernel's new pid equals a virtual pid in use (after a restart), the child exits
//!   at once and the parent forks again, so no two processes ever look alike.
//! * `exec*`, `fexecve`, `execveat`, `posix_spawn(p)`, `popen`, `system`: the new program's
//!   environment gets `LD_PRELOAD` and the `CR_*` settings back when the caller dropped or
//!   replaced them, plus the virtual pid and its table (`CR_VPID`, `CR_VPIDS`) after a
//!   restart, so `getpid()` does not change across exec. The process tells the coordinator
//!   it is leaving for an exec; the new program's preload says hello with the same pid and
//!   takes its place, in a generation in progress too. Spawned programs register before
//!   the spawning call returns (`CR_NOTIFY_FD`).
//! * A statically linked or set-id target cannot load the preload: the exec goes ahead (the
//!   program runs on, outside control) and the coordinator is told it is excluded, so
//!   checkpoints of the rest of the tree go on and their manifests name it.
//! * `exit`, `_exit`, `_Exit` and the end of `main` (our `.fini_array` entry): the process
//!   says it is leaving and holds the wrapper lock until it is gone, so a checkpoint waits
//!   for it to be gone instead of failing because it disconnected.

use crate::quiesce::{self, WrapperGuard};
use crate::sys::{self, sc};
use crate::vpid;
use crate::wrappers::{real, set_errno};
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use libc::{c_char, c_int, pid_t};
use std::vec::Vec;

crate::wrappers::real_slots! {
    R_FORK = c"fork";
    R_EXECVE = c"execve";
    R_EXECVPE = c"execvpe";
    R_FEXECVE = c"fexecve";
    R_EXECVEAT = c"execveat";
    R_POSIX_SPAWN = c"posix_spawn";
    R_POSIX_SPAWNP = c"posix_spawnp";
    R_POPEN = c"popen";
    R_PCLOSE = c"pclose";
    R_EXIT = c"exit";
    R_UEXIT = c"_exit";
}

/// Resolve this module's real functions (at load time).
pub fn resolve() {
    resolve_slots();
    find_own_path();
}

unsafe extern "C" {
    static mut environ: *const *const c_char;
}

/// Path of this library as the loader knows it (for `LD_PRELOAD`).
static mut OWN_PATH: Vec<u8> = Vec::new();

fn find_own_path() {
    // SAFETY: dladdr on an address inside this library; the name is a C string owned by
    // the loader. Called once at load, single-threaded.
    unsafe {
        let mut info: libc::Dl_info = core::mem::zeroed();
        if libc::dladdr(find_own_path as *const libc::c_void, &mut info) != 0 && !info.dli_fname.is_null() {
            OWN_PATH = crate::config::cstr(info.dli_fname as *const u8).to_vec();
        }
    }
}

fn own_path() -> &'static [u8] {
    // SAFETY: written once at load.
    unsafe { &*core::ptr::addr_of!(OWN_PATH) }
}

// ---------------------------------------------------------------- coordinator notes

/// Send one frame on the coordinator connection from an application thread (always
/// inside the wrapper lock, as the API's requests are). It goes through the API's send
/// lock, so it never interleaves with a frame of the checkpoint thread, and is sent whole
/// with MSG_NOSIGNAL: a dead coordinator must not kill the program with SIGPIPE.
fn tell_coordinator(msg: &crust_format::wire::ToCoord) {
    let fd = crate::ckpt_thread::COORD_FD.load(Ordering::Acquire);
    if fd < 0 {
        return;
    }
    let Ok(frame) = crust_format::wire::encode(msg) else { return };
    let _ = crate::api::send_frame(fd, &frame);
}

/// Make the checkpoint thread drop its connection and register again (an exec that was
/// announced failed: the coordinator then sees this process come back with a hello).
fn reconnect() {
    let fd = crate::ckpt_thread::COORD_FD.load(Ordering::Acquire);
    if fd >= 0 {
        // SAFETY: no memory arguments.
        unsafe { sc!(libc::SYS_shutdown, fd, libc::SHUT_RDWR) };
    }
}

static LEFT: AtomicBool = AtomicBool::new(false);

/// The process is about to end: announce it once and keep the wrapper lock for good, so
/// no checkpoint starts in it any more (a checkpoint in progress is waited for first).
fn leaving_for_good() {
    // Our hello must be read before our Leaving (a child that ends right after fork).
    if crate::ckpt_thread::COORD_FD.load(Ordering::Acquire) >= 0 {
        crate::ckpt_thread::wait_first_contact(500_000_000);
    }
    quiesce::wrapper_enter();
    // A forked writer still writing this process's image of a generation: its report
    // must reach the coordinator before this process's end does (no new checkpoint can
    // start meanwhile: we hold the lock). Also for `_exit`, the common end of a child.
    crate::ckpt_thread::wait_at_exit();
    if !LEFT.swap(true, Ordering::AcqRel) {
        tell_coordinator(&crust_format::wire::ToCoord::Leaving { exec: false });
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn exit(status: c_int) -> ! {
    leaving_for_good();
    if let Some(f) = real::<unsafe extern "C" fn(c_int) -> !>(&R_EXIT) {
        // SAFETY: libc's exit.
        unsafe { f(status) }
    }
    sys::exit_group(status)
}

#[unsafe(no_mangle)]
pub extern "C" fn _exit(status: c_int) -> ! {
    leaving_for_good();
    if let Some(f) = real::<unsafe extern "C" fn(c_int) -> !>(&R_UEXIT) {
        // SAFETY: libc's _exit.
        unsafe { f(status) }
    }
    sys::exit_group(status)
}

#[unsafe(no_mangle)]
pub extern "C" fn _Exit(status: c_int) -> ! {
    _exit(status)
}

/// Runs in `exit()` after the program's atexit handlers (also when `main` returns, where
/// glibc calls its internal `exit`, which our `exit` cannot see).
extern "C" fn fini() {
    if crate::config::get().disabled || !crate::wrappers::is_active() {
        return;
    }
    leaving_for_good();
}

#[used]
#[unsafe(link_section = ".fini_array")]
static FINI_ARRAY: extern "C" fn() = fini;

// ---------------------------------------------------------------- registration pipe

/// A pipe on which a new process says "registered" (one byte).
struct Notify {
    rfd: i32,
    wfd: i32,
}

impl Notify {
    /// A socket pair, not a pipe: the new process writes with MSG_NOSIGNAL, so a parent
    /// that stopped waiting (and closed its end) never gets it killed by SIGPIPE.
    /// `cloexec`: false when the writing end must survive an exec.
    fn new(cloexec: bool) -> Option<Notify> {
        let mut fds = [-1i32; 2];
        let kind = libc::SOCK_STREAM | if cloexec { libc::SOCK_CLOEXEC } else { 0 };
        // SAFETY: fds is a valid out-array of two ints.
        sys::check(unsafe { sc!(libc::SYS_socketpair, libc::AF_UNIX, kind, 0, fds.as_mut_ptr()) }).ok()?;
        // The reading end is ours alone.
        let _ = sys::fcntl(fds[0], libc::F_SETFD, libc::FD_CLOEXEC as usize);
        if !cloexec {
            spawn_notify_add(fds[1]);
        }
        Some(Notify { rfd: fds[0], wfd: fds[1] })
    }

    /// In the parent: wait (bounded) for the byte or for every writer to be gone. A wait
    /// that runs out makes the next ones short (a coordinator that does not answer must
    /// not cost every fork seconds); an answer makes them normal again.
    fn wait(self, timeout_ms: i32) {
        spawn_notify_remove(self.wfd);
        sys::close(self.wfd);
        let timeout_ms = if REGISTER_SLOW.load(Ordering::Relaxed) { timeout_ms.min(SLOW_WAIT_MS) } else { timeout_ms };
        let mut pfd = libc::pollfd { fd: self.rfd, events: libc::POLLIN, revents: 0 };
        let start = sys::clock_monotonic_ns();
        let mut answered = false;
        loop {
            let spent = ((sys::clock_monotonic_ns() - start) / 1_000_000) as i32;
            if spent >= timeout_ms {
                break;
            }
            let ts = libc::timespec { tv_sec: ((timeout_ms - spent) / 1000) as i64, tv_nsec: (((timeout_ms - spent) % 1000) as i64) * 1_000_000 };
            // SAFETY: one valid pollfd, valid timeout, no signal mask change.
            let r = unsafe { sc!(libc::SYS_ppoll, &mut pfd as *mut libc::pollfd, 1, &ts as *const libc::timespec, 0, 8) };
            if r == -(libc::EINTR as isize) {
                continue;
            }
            answered = r > 0;
            break;
        }
        REGISTER_SLOW.store(!answered, Ordering::Relaxed);
        sys::close(self.rfd);
    }

    fn forget(self) {
        spawn_notify_remove(self.wfd);
        sys::close(self.rfd);
        sys::close(self.wfd);
    }
}

/// Writing ends of spawn/popen notify sockets being handed to a new program right now.
/// They cannot be close-on-exec; a child another thread forks meanwhile closes them.
static SPAWN_NOTIFY: [core::sync::atomic::AtomicI32; 8] = [const { core::sync::atomic::AtomicI32::new(-1) }; 8];

fn spawn_notify_add(fd: i32) {
    for s in &SPAWN_NOTIFY {
        if s.compare_exchange(-1, fd, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            return;
        }
    }
}

fn spawn_notify_remove(fd: i32) {
    for s in &SPAWN_NOTIFY {
        let _ = s.compare_exchange(fd, -1, Ordering::AcqRel, Ordering::Relaxed);
    }
}

/// The last registration wait ran out.
static REGISTER_SLOW: AtomicBool = AtomicBool::new(false);
/// How long a parent waits while registrations are slow.
const SLOW_WAIT_MS: i32 = 50;

/// The notify fd of this process's registration (-1: none or done).
static NOTIFY_FD: core::sync::atomic::AtomicI32 = core::sync::atomic::AtomicI32::new(-1);

/// Set before the checkpoint thread starts: it calls [`registered`] after its first
/// contact with the coordinator (either way).
pub fn set_notify_fd(fd: i32) {
    NOTIFY_FD.store(fd, Ordering::Release);
}

/// The first contact with the coordinator ended (checkpoint thread).
pub fn registered() {
    notify_registered(NOTIFY_FD.swap(-1, Ordering::AcqRel));
}

/// In a new process: say "registered" (or "gave up") on the inherited notify fd.
pub fn notify_registered(fd: i32) {
    if fd >= 0 {
        let b = [1u8];
        // SAFETY: one byte from a local buffer; MSG_NOSIGNAL: never SIGPIPE.
        let _ = unsafe { sc!(libc::SYS_sendto, fd, b.as_ptr(), 1, libc::MSG_NOSIGNAL, 0, 0) };
        sys::close(fd);
    }
}

/// How long a parent waits for a new process to register (the child itself waits at
/// most 2 s for the coordinator).
const REGISTER_WAIT_MS: i32 = 3000;

// ---------------------------------------------------------------- fork

static CONN_LOCK: AtomicBool = AtomicBool::new(false);

/// Held while the checkpoint thread creates or closes its coordinator socket, and by
/// `fork` around the real fork: a child never inherits a socket of ours that
/// `COORD_FD` does not name (it closes the one it names), which would keep the parent's
/// connection open after the parent is gone.
pub struct ConnGuard;

impl ConnGuard {
    pub fn new() -> ConnGuard {
        while CONN_LOCK.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            core::hint::spin_loop();
        }
        ConnGuard
    }
}

impl Default for ConnGuard {
    fn default() -> Self {
        ConnGuard::new()
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        CONN_LOCK.store(false, Ordering::Release);
    }
}

type ForkFn = unsafe extern "C" fn() -> pid_t;

/// In the child, right after the real fork: become a process of our own.
fn child_after_fork(notify: Option<&Notify>) {
    // Only this thread exists; locks copied from the parent may be held by threads that
    // are not here. The wrapper lock keeps our own reader count (dropped when `fork`
    // returns), so a checkpoint of the child waits until it is fully set up.
    quiesce::WLOCK.store(1, Ordering::Release);
    vpid::after_fork_child();
    crate::kobjects::after_fork_child();
    crate::wrap_timers::after_fork_child();
    LEFT.store(false, Ordering::Release);
    let fd = crate::ckpt_thread::COORD_FD.swap(-1, Ordering::AcqRel);
    if fd >= 0 {
        crate::dump::remove_own_fd(fd);
        sys::close(fd);
    }
    // The table is kept: the child knows its parent and siblings by their virtual pids.
    vpid::VPID.store(0, Ordering::Relaxed);
    crate::restore::RESTARTED_FROM.store(0, Ordering::Relaxed);
    crate::ckpt_thread::FIRST_CONTACT.store(0, Ordering::Release);
    // Our parent's own registration socket, if it was not registered yet when it forked,
    // is not ours to answer.
    let inherited = NOTIFY_FD.swap(-1, Ordering::AcqRel);
    if inherited >= 0 {
        sys::close(inherited);
    }
    // Nor the ones another thread of the parent was handing to a spawned program.
    for s in &SPAWN_NOTIFY {
        let fd = s.swap(-1, Ordering::AcqRel);
        if fd >= 0 {
            sys::close(fd);
        }
    }
    // The checkpoint thread tells the parent once registered; this thread goes on.
    if let Some(n) = notify {
        sys::close(n.rfd);
        set_notify_fd(n.wfd);
    } else {
        set_notify_fd(-1);
    }
    crate::ckpt_thread::start();
}

/// fork(): see the module documentation.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fork() -> pid_t {
    let Some(f) = real::<ForkFn>(&R_FORK) else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    if !crate::wrappers::is_active() {
        // SAFETY: forwarding (crust disabled in this process).
        return unsafe { f() };
    }
    let g = WrapperGuard::new();
    let notify = Notify::new(true);
    loop {
        let conn = ConnGuard::new();
        crate::heap::fork_prepare();
        // SAFETY: forwarding.
        let pid = unsafe { f() };
        crate::heap::fork_done();
        drop(conn);
        if pid == 0 {
            if vpid::is_virtual_in_use(sys::getpid()) {
                // Our real pid is some process's virtual pid: let the parent try again.
                // SAFETY: ends this process only, without running any of its code.
                unsafe { sc!(libc::SYS_exit_group, 0) };
            }
            // A mapping to our real pid is stale (its process is gone).
            vpid::remove_real(sys::getpid());
            child_after_fork(notify.as_ref());
            drop(g);
            return 0;
        }
        if pid < 0 {
            let e = errno();
            if let Some(n) = notify {
                n.forget();
            }
            drop(g);
            set_errno(e);
            return -1;
        }
        if vpid::is_virtual_in_use(pid) {
            // SAFETY: reaping the child that exited at once (by its exact pid).
            unsafe { sc!(libc::SYS_wait4, pid, 0, libc::__WALL, 0) };
            continue;
        }
        // A mapping to this real pid is stale (its process is gone).
        vpid::remove_real(pid);
        if let Some(n) = notify {
            n.wait(REGISTER_WAIT_MS);
        }
        drop(g);
        return vpid::to_virtual(pid);
    }
}

fn errno() -> c_int {
    // SAFETY: errno is thread-local.
    unsafe { *libc::__errno_location() }
}

/// vfork(): a plain fork (the child gets its own memory and checkpoint thread).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vfork() -> pid_t {
    // SAFETY: our fork wrapper.
    unsafe { fork() }
}

/// daemon(): glibc forks internally (out of our sight); do it with our fork.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn daemon(nochdir: c_int, noclose: c_int) -> c_int {
    // SAFETY: our fork wrapper.
    match unsafe { fork() } {
        -1 => return -1,
        0 => {}
        _ => _exit(0),
    }
    // SAFETY: plain system calls on our own process.
    unsafe {
        if sys::check(sc!(libc::SYS_setsid)).is_err() {
            return -1;
        }
        if nochdir == 0 {
            sc!(libc::SYS_chdir, c"/".as_ptr());
        }
    }
    if noclose == 0 {
        if let Ok(fd) = sys::open(b"/dev/null", libc::O_RDWR, 0) {
            for t in 0..3 {
                // SAFETY: no memory arguments.
                unsafe { sc!(libc::SYS_dup3, fd, t, 0) };
            }
            if fd > 2 {
                sys::close(fd);
            }
        }
    }
    0
}

// ---------------------------------------------------------------- exec targets

/// What an exec target is, as far as loading the preload goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Target {
    /// Has an ELF interpreter (or is a script whose interpreter has one), not set-id.
    Controlled,
    Static,
    SetId,
    /// Cannot tell (unreadable, missing): let exec decide; treated as controlled.
    Unknown,
}

impl Target {
    fn reason(self) -> &'static str {
        match self {
            Target::Static => "statically linked: the preload cannot load into it",
            Target::SetId => "set-id: the dynamic loader ignores LD_PRELOAD for it",
            _ => "",
        }
    }
}

/// Inspect an exec target (a path as exec would use it).
pub fn classify(path: &[u8], depth: u32) -> Target {
    let Ok(st) = sys::stat(path) else { return Target::Unknown };
    // SAFETY: no arguments.
    let (euid, egid) = unsafe { (sc!(libc::SYS_geteuid) as u32, sc!(libc::SYS_getegid) as u32) };
    if (st.st_mode & libc::S_ISUID != 0 && st.st_uid != euid) || (st.st_mode & libc::S_ISGID != 0 && st.st_gid != egid) {
        return Target::SetId;
    }
    let Ok(fd) = sys::open(path, libc::O_RDONLY, 0) else { return Target::Unknown };
    let mut head = [0u8; 256];
    let n = sys::pread(fd, &mut head, 0).unwrap_or(0);
    let kind = if n >= 2 && &head[..2] == b"#!" {
        sys::close(fd);
        // "#! /path/interp [arg]"
        let line = &head[2..n];
        let line = &line[..line.iter().position(|&c| c == b'\n').unwrap_or(line.len())];
        let start = line.iter().position(|&c| c != b' ' && c != b'\t').unwrap_or(line.len());
        let rest = &line[start..];
        let interp = &rest[..rest.iter().position(|&c| c == b' ' || c == b'\t').unwrap_or(rest.len())];
        return if depth < 4 && !interp.is_empty() { classify(interp, depth + 1) } else { Target::Unknown };
    } else if n >= 64 && &head[..4] == b"\x7fELF" && head[4] == 2 {
        elf_has_interp(fd, &head)
    } else {
        Target::Unknown
    };
    sys::close(fd);
    kind
}

/// 64-bit ELF: is there a PT_INTERP program header?
fn elf_has_interp(fd: i32, head: &[u8; 256]) -> Target {
    let rd64 = |o: usize| u64::from_le_bytes(head[o..o + 8].try_into().unwrap_or([0; 8]));
    let rd16 = |o: usize| u16::from_le_bytes([head[o], head[o + 1]]);
    let phoff = rd64(32);
    let phentsize = rd16(54) as u64;
    let phnum = rd16(56) as u64;
    if phentsize < 56 || phnum == 0 || phnum > 256 {
        return Target::Unknown;
    }
    let mut ph = [0u8; 64];
    for i in 0..phnum {
        if sys::pread(fd, &mut ph[..56], phoff + i * phentsize) != Ok(56) {
            return Target::Unknown;
        }
        if u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]) == 3 {
            return Target::Controlled;
        }
    }
    Target::Static
}

/// The file `execvp` would run for `file` (first executable match in PATH).
fn search_path(file: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    if file.contains(&b'/') {
        out.extend_from_slice(file);
        return true;
    }
    let path = getenv_raw(b"PATH=").unwrap_or(b"/bin:/usr/bin");
    for dir in path.split(|&c| c == b':') {
        out.clear();
        out.extend_from_slice(if dir.is_empty() { b"." } else { dir });
        out.push(b'/');
        out.extend_from_slice(file);
        let Ok(p) = sys::CPath::new(out) else { continue };
        // SAFETY: NUL-terminated path.
        if unsafe { sc!(libc::SYS_access, p.ptr(), libc::X_OK) } == 0 {
            return true;
        }
    }
    false
}

/// A variable of the current environment (`KEY=` prefix), without libc.
fn getenv_raw(prefix: &[u8]) -> Option<&'static [u8]> {
    // SAFETY: environ is the NULL-terminated environment array.
    unsafe {
        let mut e = environ;
        while !e.is_null() && !(*e).is_null() {
            let kv = crate::config::cstr(*e as *const u8);
            if let Some(v) = kv.strip_prefix(prefix) {
                return Some(v);
            }
            e = e.add(1);
        }
    }
    None
}

// ---------------------------------------------------------------- environments

/// A NULL-terminated environment array and the strings it points at.
struct Env {
    _strings: Vec<Vec<u8>>,
    ptrs: Vec<*const c_char>,
}

impl Env {
    fn as_ptr(&self) -> *const *const c_char {
        self.ptrs.as_ptr()
    }
}

fn key_of(kv: &[u8]) -> &[u8] {
    &kv[..kv.iter().position(|&c| c == b'=').map_or(kv.len(), |i| i + 1)]
}

fn lists_own_lib(value: &[u8]) -> bool {
    let own = own_path();
    !own.is_empty() && value.split(|&c| c == b':' || c == b' ').any(|e| e == own)
}

/// The environment to give a new program: the caller's `envp`, with `LD_PRELOAD` and the
/// `CR_*` settings put back, the virtual pid table after a restart (and this process's
/// virtual pid when the new program is this process: an exec), and `notify`.
fn control_env(envp: *const *const c_char, notify_fd: Option<i32>, exec: bool) -> Env {
    let cfg = crate::config::get();
    let mut strings: Vec<Vec<u8>> = Vec::new();
    let mut keys: Vec<Vec<u8>> = Vec::new();
    // SAFETY: envp is null or the caller's NULL-terminated array of C strings.
    unsafe {
        let mut e = envp;
        while !e.is_null() && !(*e).is_null() {
            let kv = crate::config::cstr(*e as *const u8);
            e = e.add(1);
            if crate::config::is_per_process(kv) {
                continue;
            }
            let mut s = kv.to_vec();
            if let Some(v) = kv.strip_prefix(b"LD_PRELOAD=") {
                if !lists_own_lib(v) && !own_path().is_empty() {
                    s = [b"LD_PRELOAD=".as_slice(), own_path(), if v.is_empty() { b"" } else { b":" }, v].concat();
                }
            }
            keys.push(key_of(kv).to_vec());
            strings.push(s);
        }
    }
    for kv in &cfg.control_env {
        if !keys.iter().any(|k| k.as_slice() == key_of(kv)) {
            let mut s = kv.clone();
            if let Some(v) = kv.strip_prefix(b"LD_PRELOAD=") {
                if !lists_own_lib(v) && !own_path().is_empty() {
                    s = [b"LD_PRELOAD=".as_slice(), own_path(), b":", v].concat();
                }
            }
            keys.push(key_of(kv).to_vec());
            strings.push(s);
        }
    }
    if !keys.iter().any(|k| k.as_slice() == b"LD_PRELOAD=") && !own_path().is_empty() {
        strings.push([b"LD_PRELOAD=".as_slice(), own_path()].concat());
    }
    if !vpid::is_empty() {
        if exec {
            strings.push(std::format!("CR_VPID={}", vpid::vpid()).into_bytes());
        }
        strings.push([b"CR_VPIDS=".as_slice(), vpid::encode().as_bytes()].concat());
    }
    if let Some(ids) = crate::wrap_ipc::encode_for_exec(exec) {
        strings.push(ids);
    }
    if let Some(fd) = notify_fd {
        strings.push(std::format!("CR_NOTIFY_FD={fd}").into_bytes());
    }
    for s in strings.iter_mut() {
        s.push(0);
    }
    let mut ptrs: Vec<*const c_char> = strings.iter().map(|s| s.as_ptr() as *const c_char).collect();
    ptrs.push(core::ptr::null());
    Env { _strings: strings, ptrs }
}

// ---------------------------------------------------------------- exec

/// Before an exec of `target`: tell the coordinator what is about to happen.
fn announce_exec(target: Target, program: &[u8]) {
    match target {
        Target::Static | Target::SetId => tell_coordinator(&crust_format::wire::ToCoord::Excluded {
            vpid: vpid::vpid(),
            real_pid: sys::getpid(),
            program: std::string::String::from_utf8_lossy(program).into_owned(),
            reason: target.reason().into(),
        }),
        _ => tell_coordinator(&crust_format::wire::ToCoord::Leaving { exec: true }),
    }
}

/// Run `exec` (which returns only on failure) for `target` with a controlled environment.
fn do_exec(path_for_check: Option<&[u8]>, envp: *const *const c_char, exec: impl FnOnce(*const *const c_char) -> c_int) -> c_int {
    if !crate::wrappers::is_active() {
        return exec(envp);
    }
    // Our hello must reach the coordinator before our Leaving does (a process exec'ing
    // right after its start or a restart).
    crate::ckpt_thread::wait_first_contact(2_000_000_000);
    // Whatever happened, a parent waiting for our registration stops waiting now (the fd
    // must not pass on to the new program).
    registered();
    let g = WrapperGuard::new();
    // A forked writer still writing this process's image: its report must reach the
    // coordinator before the exec ends this process's part of the generation (as for exit).
    crate::ckpt_thread::wait_at_exit();
    let target = path_for_check.map_or(Target::Unknown, |p| classify(p, 0));
    let env = control_env(envp, None, true);
    announce_exec(target, path_for_check.unwrap_or(b"?"));
    let r = exec(env.as_ptr());
    let e = errno();
    // Still here: the exec failed. The coordinator was told we were leaving: register again.
    reconnect();
    drop(env);
    drop(g);
    set_errno(e);
    r
}

type ExecveFn = unsafe extern "C" fn(*const c_char, *const *const c_char, *const *const c_char) -> c_int;

fn cbytes<'a>(p: *const c_char) -> &'a [u8] {
    if p.is_null() {
        return b"";
    }
    // SAFETY: the program passed a NUL-terminated string.
    unsafe { crate::config::cstr(p as *const u8) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn execve(path: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int {
    let Some(f) = real::<ExecveFn>(&R_EXECVE) else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    let path = crate::wrap_pids::exec_path(path);
    // SAFETY: forwarding with the controlled environment.
    do_exec(Some(cbytes(path)), envp, |env| unsafe { f(path, argv, env) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn execv(path: *const c_char, argv: *const *const c_char) -> c_int {
    // SAFETY: execv is execve with the current environment.
    unsafe { execve(path, argv, environ) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn execvpe(file: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int {
    let Some(f) = real::<ExecveFn>(&R_EXECVPE) else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    let mut found = Vec::new();
    let check = search_path(cbytes(file), &mut found).then_some(found.as_slice());
    // SAFETY: forwarding with the controlled environment (libc searches PATH itself).
    do_exec(check, envp, |env| unsafe { f(file, argv, env) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn execvp(file: *const c_char, argv: *const *const c_char) -> c_int {
    // SAFETY: execvp is execvpe with the current environment.
    unsafe { execvpe(file, argv, environ) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fexecve(fd: c_int, argv: *const *const c_char, envp: *const *const c_char) -> c_int {
    let Some(f) = real::<unsafe extern "C" fn(c_int, *const *const c_char, *const *const c_char) -> c_int>(&R_FEXECVE) else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    let p = std::format!("/proc/self/fd/{fd}");
    // SAFETY: forwarding with the controlled environment.
    do_exec(Some(p.as_bytes()), envp, |env| unsafe { f(fd, argv, env) })
}

type ExecveatFn = unsafe extern "C" fn(c_int, *const c_char, *const *const c_char, *const *const c_char, c_int) -> c_int;

#[unsafe(no_mangle)]
pub unsafe extern "C" fn execveat(dirfd: c_int, path: *const c_char, argv: *const *const c_char, envp: *const *const c_char, flags: c_int) -> c_int {
    let Some(f) = real::<ExecveatFn>(&R_EXECVEAT) else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    let p = cbytes(path);
    let check = (p.first() == Some(&b'/') || dirfd == libc::AT_FDCWD).then_some(p);
    // SAFETY: forwarding with the controlled environment.
    do_exec(check, envp, |env| unsafe { f(dirfd, path, argv, env, flags) })
}

// execl, execlp, execle: variadic. Stable Rust cannot define variadic functions, so a
// small naked entry stores the six integer argument registers next to each other and
// passes them, and the address of the caller's stack arguments, to `execl_common`.
macro_rules! execl_entry {
    ($name:ident, $kind:literal) => {
        #[unsafe(no_mangle)]
        #[unsafe(naked)]
        pub unsafe extern "C" fn $name() {
            core::arch::naked_asm!(
                "mov r10, rsp",
                "push r9",
                "push r8",
                "push rcx",
                "push rdx",
                "push rsi",
                "push rdi",
                "mov rdi, rsp",
                "lea rsi, [r10 + 8]",
                concat!("mov edx, ", $kind),
                "sub rsp, 8",
                "call {common}",
                "add rsp, 56",
                "ret",
                common = sym execl_common,
            );
        }
    };
}

execl_entry!(execl, "0");
execl_entry!(execlp, "1");
execl_entry!(execle, "2");

/// `regs`: the six register arguments (path, arg0, ...); `stack`: the caller's stack
/// arguments that follow. kind 0 = execl, 1 = execlp, 2 = execle (envp after the NULL).
extern "C" fn execl_common(regs: *const usize, stack: *const usize, kind: c_int) -> c_int {
    // SAFETY: the naked entry passed its saved registers and the caller's stack area;
    // the caller's argument list is NULL-terminated (and followed by envp for execle).
    unsafe {
        let arg = |i: usize| if i < 6 { *regs.add(i) } else { *stack.add(i - 6) };
        let path = arg(0) as *const c_char;
        let mut argv: Vec<*const c_char> = Vec::new();
        let mut i = 1;
        loop {
            let a = arg(i) as *const c_char;
            argv.push(a);
            i += 1;
            if a.is_null() {
                break;
            }
        }
        match kind {
            0 => execve(path, argv.as_ptr(), environ),
            1 => execvpe(path, argv.as_ptr(), environ),
            _ => execve(path, argv.as_ptr(), arg(i) as *const *const c_char),
        }
    }
}

// ---------------------------------------------------------------- spawn

type SpawnFn = unsafe extern "C" fn(
    *mut pid_t,
    *const c_char,
    *const libc::posix_spawn_file_actions_t,
    *const libc::posix_spawnattr_t,
    *const *const c_char,
    *const *const c_char,
) -> c_int;

/// posix_spawn(p): glibc clones with CLONE_VM|CLONE_VFORK and execs, out of our sight;
/// the child gets the controlled environment and registers before we return.
#[allow(clippy::too_many_arguments)]
fn spawn_common(
    slot: &AtomicUsize,
    check: Option<&[u8]>,
    pid: *mut pid_t,
    path: *const c_char,
    fa: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    let Some(f) = real::<SpawnFn>(slot) else { return libc::ENOSYS };
    if !crate::wrappers::is_active() {
        // SAFETY: forwarding.
        return unsafe { f(pid, path, fa, attr, argv, envp) };
    }
    let g = WrapperGuard::new();
    let target = check.map_or(Target::Unknown, |p| classify(p, 0));
    let controlled = matches!(target, Target::Controlled | Target::Unknown);
    let mut attempts = 0;
    let (r, child, env) = loop {
        let notify = if controlled { Notify::new(false) } else { None };
        let env = control_env(envp, notify.as_ref().map(|n| n.wfd), false);
        let mut child: pid_t = 0;
        // SAFETY: forwarding with the controlled environment.
        let r = unsafe { f(&mut child, path, fa, attr, argv, env.as_ptr()) };
        match notify {
            Some(n) if r == 0 => n.wait(REGISTER_WAIT_MS),
            Some(n) => n.forget(),
            None => {}
        }
        if r == 0 && controlled && attempts < 8 && vpid::is_virtual_in_use(child) {
            // Its real pid is some process's virtual pid: the new program's preload saw
            // the same in the table it inherited and exited before its main (lib.rs).
            // SAFETY: reaping that child by its exact pid.
            unsafe { sc!(libc::SYS_wait4, child, 0, libc::__WALL, 0) };
            attempts += 1;
            continue;
        }
        break (r, child, env);
    };
    if r == 0 {
        // A mapping to this real pid is stale (its process is gone).
        vpid::remove_real(child);
    }
    if r == 0 && !controlled {
        tell_coordinator(&crust_format::wire::ToCoord::Excluded {
            vpid: child,
            real_pid: child,
            program: std::string::String::from_utf8_lossy(check.unwrap_or(b"?")).into_owned(),
            reason: target.reason().into(),
        });
    }
    drop(env);
    drop(g);
    if r == 0 && !pid.is_null() {
        // SAFETY: the caller's out-pointer.
        unsafe { *pid = vpid::to_virtual(child) };
    }
    r
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_spawn(
    pid: *mut pid_t,
    path: *const c_char,
    fa: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    spawn_common(&R_POSIX_SPAWN, Some(cbytes(path)), pid, path, fa, attr, argv, envp)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_spawnp(
    pid: *mut pid_t,
    file: *const c_char,
    fa: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    let mut found = Vec::new();
    let check = search_path(cbytes(file), &mut found).then_some(found.as_slice());
    spawn_common(&R_POSIX_SPAWNP, check, pid, file, fa, attr, argv, envp)
}

/// popen(): glibc spawns `/bin/sh -c` with `environ`; give it the controlled one for the
/// duration of the call and wait for the shell to register.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn popen(cmd: *const c_char, mode: *const c_char) -> *mut libc::FILE {
    let Some(f) = real::<unsafe extern "C" fn(*const c_char, *const c_char) -> *mut libc::FILE>(&R_POPEN) else {
        set_errno(libc::ENOSYS);
        return core::ptr::null_mut();
    };
    if !crate::wrappers::is_active() {
        // SAFETY: forwarding.
        return unsafe { f(cmd, mode) };
    }
    let g = WrapperGuard::new();
    let notify = Notify::new(false);
    let before = crate::tree::child_pids(0);
    // SAFETY: environ is the process's environment pointer; swapped back right after.
    let saved = unsafe { environ };
    let env = control_env(saved, notify.as_ref().map(|n| n.wfd), false);
    // SAFETY: as above. Other threads reading the environment meanwhile see the same
    // variables plus ours.
    let r = unsafe {
        environ = env.as_ptr();
        let r = f(cmd, mode);
        environ = saved;
        r
    };
    let e = errno();
    if !r.is_null() {
        // glibc keeps the shell's kernel pid inside the FILE and waits for it in pclose;
        // remember the pid the program knows, for pclose after a restart.
        let after = crate::tree::child_pids(0);
        if let Some(&c) = after.iter().find(|c| before.binary_search(c).is_err()) {
            popen_child_record(r as usize, vpid::to_virtual(c));
        }
    }
    match notify {
        Some(n) if !r.is_null() => n.wait(REGISTER_WAIT_MS),
        Some(n) => n.forget(),
        None => {}
    }
    drop(env);
    drop(g);
    set_errno(e);
    r
}

/// popen'd streams and the virtual pid of their shell.
static POPEN_FILES: [AtomicUsize; 64] = [const { AtomicUsize::new(0) }; 64];
static POPEN_VPIDS: [core::sync::atomic::AtomicI32; 64] = [const { core::sync::atomic::AtomicI32::new(0) }; 64];

fn popen_child_record(fp: usize, v: pid_t) {
    for (i, slot) in POPEN_FILES.iter().enumerate() {
        if slot.compare_exchange(0, fp, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            POPEN_VPIDS[i].store(v, Ordering::Release);
            return;
        }
    }
}

fn popen_child_take(fp: usize) -> pid_t {
    for (i, slot) in POPEN_FILES.iter().enumerate() {
        if slot.load(Ordering::Acquire) == fp {
            let v = POPEN_VPIDS[i].swap(0, Ordering::AcqRel);
            slot.store(0, Ordering::Release);
            return v;
        }
    }
    0
}

/// pclose(): glibc waits for the shell by the kernel pid it got from popen. After a
/// restart that pid is gone (ECHILD) and the shell, recreated by crrestart as the same
/// child, has a new one: wait for it through the virtual pid instead.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pclose(fp: *mut libc::FILE) -> c_int {
    let v = popen_child_take(fp as usize);
    let Some(f) = real::<unsafe extern "C" fn(*mut libc::FILE) -> c_int>(&R_PCLOSE) else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    // SAFETY: forwarding.
    let r = unsafe { f(fp) };
    if r != -1 || errno() != libc::ECHILD || v <= 0 || vpid::to_real(v) == v {
        return r;
    }
    let mut status: c_int = 0;
    loop {
        // SAFETY: waiting for our own child; status is a valid out-pointer.
        let w = unsafe { sc!(libc::SYS_wait4, vpid::to_real(v), &mut status as *mut c_int, 0, 0) };
        if w == -(libc::EINTR as isize) {
            continue;
        }
        if w <= 0 {
            set_errno(-w as c_int);
            return -1;
        }
        vpid::remove(v);
        return status;
    }
}

/// system(): glibc's spawns `/bin/sh -c` internally and waits; done here with our
/// posix_spawn so the shell is under control and registered before we wait for it.
/// Same signal handling as POSIX asks: SIGINT and SIGQUIT ignored and SIGCHLD blocked in
/// the caller while the command runs; the shell starts with the caller's mask and
/// default SIGINT/SIGQUIT.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn system(cmd: *const c_char) -> c_int {
    if cmd.is_null() {
        return (sys::stat(b"/bin/sh").is_ok()) as c_int;
    }
    // SIG_IGN needs no restorer; the old actions come back with theirs.
    let ign = sys::KSigaction { handler: 1, flags: 0, restorer: 0, mask: 0 };
    let mut old_int = sys::KSigaction::default();
    let mut old_quit = sys::KSigaction::default();
    let _ = sys::rt_sigaction(libc::SIGINT, Some(&ign), Some(&mut old_int));
    let _ = sys::rt_sigaction(libc::SIGQUIT, Some(&ign), Some(&mut old_quit));
    let old_mask = sys::sigprocmask(libc::SIG_BLOCK, Some(1u64 << (libc::SIGCHLD - 1)));
    let mut status: c_int = -1;
    // SAFETY: attribute objects initialised by libc and destroyed below; argv is a
    // NULL-terminated array of C strings that outlives the call.
    unsafe {
        let mut attr: libc::posix_spawnattr_t = core::mem::zeroed();
        libc::posix_spawnattr_init(&mut attr);
        let mut mask: libc::sigset_t = core::mem::zeroed();
        *(&mut mask as *mut libc::sigset_t as *mut u64) = old_mask;
        libc::posix_spawnattr_setsigmask(&mut attr, &mask);
        let mut def: libc::sigset_t = core::mem::zeroed();
        let mut bits = 0u64;
        if old_int.handler != 1 {
            bits |= 1 << (libc::SIGINT - 1);
        }
        if old_quit.handler != 1 {
            bits |= 1 << (libc::SIGQUIT - 1);
        }
        *(&mut def as *mut libc::sigset_t as *mut u64) = bits;
        libc::posix_spawnattr_setsigdefault(&mut attr, &def);
        libc::posix_spawnattr_setflags(&mut attr, (libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF) as _);
        let argv: [*const c_char; 4] = [c"sh".as_ptr(), c"-c".as_ptr(), cmd, core::ptr::null()];
        let mut pid: pid_t = 0;
        let r = posix_spawn(&mut pid, c"/bin/sh".as_ptr(), core::ptr::null(), &attr, argv.as_ptr(), environ);
        libc::posix_spawnattr_destroy(&mut attr);
        if r == 0 {
            let real_pid = vpid::to_real(pid);
            loop {
                let w = sys::check(sc!(libc::SYS_wait4, real_pid, &mut status as *mut c_int, 0, 0));
                match w {
                    Err(libc::EINTR) => continue,
                    Err(_) => status = -1,
                    Ok(_) => {}
                }
                break;
            }
        } else {
            status = 127 << 8;
        }
    }
    let _ = sys::rt_sigaction(libc::SIGINT, Some(&old_int), None);
    let _ = sys::rt_sigaction(libc::SIGQUIT, Some(&old_quit), None);
    sys::sigprocmask(libc::SIG_SETMASK, Some(old_mask));
    status
}
