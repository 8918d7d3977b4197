//! The libc functions the preload interposes.
//!
//! Real symbols are resolved once, eagerly, at load time with `dlsym(RTLD_NEXT)`: nothing
//! is looked up lazily on a wrapper's path. Data-path functions (read, write, mmap...)
//! are not wrapped. Variadic functions (`syscall`) are defined with their full integer
//! argument list, which is ABI-compatible on x86-64.
//!
//! What the wrappers keep true:
//! * ids: the program sees virtual pids/tids (`vpid.rs`), which stay stable across restarts;
//! * the checkpoint signal stays deliverable: it is removed from every mask the program
//!   sets, and the program's own handler for it is kept virtual and called by ours;
//! * the preload's own fds survive the program's close/dup2 calls.

use crate::quiesce::{self, WrapperGuard};
use crate::sys;
use crate::vpid;
use core::sync::atomic::{AtomicUsize, Ordering};
use libc::{c_int, c_long, pid_t};

/// Declares a module's slots for real libc functions (`static NAME: AtomicUsize`) and
/// `resolve_slots()`, which fills them all at load time (see [`resolve_one`]). Every
/// wrapper module lists its functions with it, and its `resolve()` calls `resolve_slots()`.
macro_rules! real_slots {
    ($($vis:vis $slot:ident = $name:literal;)*) => {
        $($vis static $slot: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);)*
        /// Fill this module's slots with libc's functions.
        fn resolve_slots() {
            $( crate::wrappers::resolve_one($name, &$slot); )*
        }
    };
}
pub(crate) use real_slots;

real_slots! {
    pub REAL_PTHREAD_CREATE = c"pthread_create";
    REAL_SIGACTION = c"sigaction";
    REAL_SIGNAL = c"signal";
    REAL_SIGPROCMASK = c"sigprocmask";
    REAL_PTHREAD_SIGMASK = c"pthread_sigmask";
    REAL_SIGSUSPEND = c"sigsuspend";
    REAL_CLOSE = c"close";
    REAL_CLOSE_RANGE = c"close_range";
    REAL_DUP2 = c"dup2";
    REAL_DUP3 = c"dup3";
    REAL_SYSCALL = c"syscall";
    REAL_SIGWAIT = c"sigwait";
    REAL_SIGWAITINFO = c"sigwaitinfo";
    REAL_SIGTIMEDWAIT = c"sigtimedwait";
}

/// Resolve every real function at load time.
pub fn resolve_real_symbols() {
    resolve_slots();
    crate::wrap_pids::resolve();
    crate::wrap_proc::resolve();
    crate::wrap_ipc::resolve();
    crate::wrap_timers::resolve();
    crate::kobjects::resolve();
}

/// Resolve one real function into `slot` (null when libc does not have it).
pub fn resolve_one(name: &core::ffi::CStr, slot: &AtomicUsize) {
    // SAFETY: dlsym with a valid C string; RTLD_NEXT finds libc's definition.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) };
    slot.store(p as usize, Ordering::Release);
}

/// The real function stored in `slot`, as type `F` (a function pointer type).
pub fn real<F: Copy>(slot: &AtomicUsize) -> Option<F> {
    let p = slot.load(Ordering::Acquire);
    if p == 0 {
        return None;
    }
    debug_assert_eq!(core::mem::size_of::<F>(), core::mem::size_of::<usize>());
    // SAFETY: F is the function pointer type of the symbol stored in slot.
    Some(unsafe { core::mem::transmute_copy::<usize, F>(&p) })
}

pub fn set_errno(e: c_int) {
    // SAFETY: errno is thread-local and always addressable.
    unsafe { *libc::__errno_location() = e };
}

fn ckpt_sig() -> c_int {
    crate::config::get().signal
}

/// Set once crust is running in this process (not with CR_DISABLE=1).
static ACTIVE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Crust is running in this process: wrappers do their work (otherwise they only forward).
pub fn set_active() {
    ACTIVE.store(true, Ordering::Release);
}

pub fn is_active() -> bool {
    ACTIVE.load(Ordering::Acquire)
}

fn active() -> bool {
    is_active()
}

/// Remove the checkpoint signal from a sigset the program passes to the kernel.
fn strip(set: *const libc::sigset_t) -> Option<libc::sigset_t> {
    if set.is_null() {
        return None;
    }
    // SAFETY: the program passed a valid sigset.
    let mut copy = unsafe { *set };
    let words = &mut copy as *mut libc::sigset_t as *mut u64;
    // SAFETY: sigset_t is at least 8 bytes.
    unsafe { *words &= !(1u64 << (ckpt_sig() - 1)) };
    Some(copy)
}

// ---------------------------------------------------------------- ids

#[unsafe(no_mangle)]
pub extern "C" fn getpid() -> pid_t {
    vpid::to_virtual(sys::getpid())
}

#[unsafe(no_mangle)]
pub extern "C" fn gettid() -> pid_t {
    vpid::to_virtual(sys::gettid())
}

#[unsafe(no_mangle)]
pub extern "C" fn getppid() -> pid_t {
    vpid::to_virtual(sys::getppid())
}

#[unsafe(no_mangle)]
pub extern "C" fn kill(pid: pid_t, sig: c_int) -> c_int {
    match sys::kill(vpid::to_real(pid), sig) {
        Ok(()) => 0,
        Err(e) => {
            set_errno(e);
            -1
        }
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn tgkill(tgid: pid_t, tid: pid_t, sig: c_int) -> c_int {
    match sys::tgkill(vpid::to_real(tgid), vpid::to_real(tid), sig) {
        Ok(()) => 0,
        Err(e) => {
            set_errno(e);
            -1
        }
    }
}

type SyscallFn = unsafe extern "C" fn(c_long, c_long, c_long, c_long, c_long, c_long, c_long) -> c_long;

/// `syscall(2)`: ids are translated for the calls that return or take them.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn syscall(n: c_long, a1: c_long, a2: c_long, a3: c_long, a4: c_long, a5: c_long, a6: c_long) -> c_long {
    match n {
        libc::SYS_gettid => return gettid() as c_long,
        libc::SYS_getpid => return getpid() as c_long,
        libc::SYS_getppid => return getppid() as c_long,
        libc::SYS_kill => return kill(a1 as pid_t, a2 as c_int) as c_long,
        libc::SYS_tgkill => return tgkill(a1 as pid_t, a2 as pid_t, a3 as c_int) as c_long,
        libc::SYS_tkill => {
            // SAFETY: tkill takes two integers; the tid is translated to the kernel's.
            return match sys::check(unsafe { sys::sc!(libc::SYS_tkill, vpid::to_real(a1 as pid_t), a2) }) {
                Ok(_) => 0,
                Err(e) => {
                    set_errno(e);
                    -1
                }
            }
        }
        _ => {}
    }
    // SAFETY: the program's own call; SysV ids translated (wrap_ipc.rs).
    if let Some(r) = unsafe { crate::wrap_ipc::syscall_ipc(n, [a1, a2, a3, a4, a5, a6]) } {
        return r;
    }
    // SAFETY: the program's own call; ids translated.
    if let Some(r) = unsafe { crate::wrap_pids::syscall_pid(n, [a1, a2, a3, a4, a5, a6]) } {
        return r;
    }
    match real::<SyscallFn>(&REAL_SYSCALL) {
        // SAFETY: forwarding the program's own call unchanged.
        Some(f) => unsafe { f(n, a1, a2, a3, a4, a5, a6) },
        None => {
            // SAFETY: as above, without libc's errno convention.
            let r = unsafe { sys::syscall6(n, a1 as usize, a2 as usize, a3 as usize, a4 as usize, a5 as usize, a6 as usize) };
            match sys::check(r) {
                Ok(v) => v as c_long,
                Err(e) => {
                    set_errno(e);
                    -1
                }
            }
        }
    }
}

// ---------------------------------------------------------------- signals

type SigactionFn = unsafe extern "C" fn(c_int, *const libc::sigaction, *mut libc::sigaction) -> c_int;
type SignalFn = unsafe extern "C" fn(c_int, libc::sighandler_t) -> libc::sighandler_t;
type SigmaskFn = unsafe extern "C" fn(c_int, *const libc::sigset_t, *mut libc::sigset_t) -> c_int;
type SigsuspendFn = unsafe extern "C" fn(*const libc::sigset_t) -> c_int;

fn app_action_to_libc(old: *mut libc::sigaction) {
    if old.is_null() {
        return;
    }
    // SAFETY: APP_ACTION is word-sized fields; old is the program's out-pointer.
    unsafe {
        let a = core::ptr::read_volatile(core::ptr::addr_of!(quiesce::APP_ACTION));
        let mut o: libc::sigaction = core::mem::zeroed();
        o.sa_sigaction = a.handler;
        o.sa_flags = (a.flags & !sys::SA_RESTORER) as c_int;
        *(&mut o.sa_mask as *mut libc::sigset_t as *mut u64) = a.mask;
        *old = o;
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn sigaction(sig: c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> c_int {
    if active() && sig == ckpt_sig() {
        app_action_to_libc(old);
        if !act.is_null() {
            // SAFETY: the program passed a valid sigaction.
            let a = unsafe { &*act };
            let ka = sys::KSigaction {
                handler: a.sa_sigaction,
                flags: a.sa_flags as u64,
                restorer: 0,
                // SAFETY: sigset_t is at least 8 bytes.
                mask: unsafe { *(&a.sa_mask as *const libc::sigset_t as *const u64) },
            };
            // SAFETY: single word-sized writes; read by our handler.
            unsafe { core::ptr::write_volatile(core::ptr::addr_of_mut!(quiesce::APP_ACTION), ka) };
        }
        return 0;
    }
    let Some(f) = real::<SigactionFn>(&REAL_SIGACTION) else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    let prev_app = crate::wrap_pids::app_handler(sig);
    if act.is_null() {
        // SAFETY: forwarding.
        let r = unsafe { f(sig, act, old) };
        // SAFETY: old is the program's out-pointer (or null).
        unsafe { crate::wrap_pids::unroute_old(sig, prev_app, old) };
        return r;
    }
    // SAFETY: act is valid; we pass a copy with the checkpoint signal unmasked.
    let mut copy = unsafe { *act };
    let words = &mut copy.sa_mask as *mut libc::sigset_t as *mut u64;
    // SAFETY: sigset_t is at least 8 bytes.
    unsafe { *words &= !(1u64 << (ckpt_sig() - 1)) };
    // SA_SIGINFO handlers get si_pid translated first.
    crate::wrap_pids::route_handler(sig, &mut copy);
    // SAFETY: forwarding.
    let r = unsafe { f(sig, &copy, old) };
    // SAFETY: old is the program's out-pointer (or null).
    unsafe { crate::wrap_pids::unroute_old(sig, prev_app, old) };
    r
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    if active() && sig == ckpt_sig() {
        // SAFETY: reading/writing the virtual action.
        unsafe {
            let prev = core::ptr::read_volatile(core::ptr::addr_of!(quiesce::APP_ACTION));
            let ka = sys::KSigaction { handler, flags: libc::SA_RESTART as u64, restorer: 0, mask: 0 };
            core::ptr::write_volatile(core::ptr::addr_of_mut!(quiesce::APP_ACTION), ka);
            return prev.handler;
        }
    }
    let prev_app = crate::wrap_pids::app_handler(sig);
    match real::<SignalFn>(&REAL_SIGNAL) {
        Some(f) => {
            // SAFETY: forwarding.
            let r = unsafe { f(sig, handler) };
            if r == crate::wrap_pids::siginfo_trampoline as *const () as usize {
                prev_app
            } else {
                r
            }
        }
        None => libc::SIG_ERR,
    }
}

fn mask_call(slot: &AtomicUsize, how: c_int, set: *const libc::sigset_t, old: *mut libc::sigset_t) -> c_int {
    let Some(f) = real::<SigmaskFn>(slot) else {
        return libc::ENOSYS;
    };
    let copy = if how == libc::SIG_UNBLOCK { None } else { strip(set) };
    let p = copy.as_ref().map_or(set, |c| c as *const libc::sigset_t);
    // SAFETY: forwarding with a sanitised set.
    unsafe { f(how, p, old) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn sigprocmask(how: c_int, set: *const libc::sigset_t, old: *mut libc::sigset_t) -> c_int {
    mask_call(&REAL_SIGPROCMASK, how, set, old)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn pthread_sigmask(how: c_int, set: *const libc::sigset_t, old: *mut libc::sigset_t) -> c_int {
    mask_call(&REAL_PTHREAD_SIGMASK, how, set, old)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn sigsuspend(set: *const libc::sigset_t) -> c_int {
    let copy = strip(set);
    let p = copy.as_ref().map_or(set, |c| c as *const libc::sigset_t);
    match real::<SigsuspendFn>(&REAL_SIGSUSPEND) {
        // SAFETY: forwarding with a sanitised set.
        Some(f) => unsafe { f(p) },
        None => -1,
    }
}

type SigwaitFn = unsafe extern "C" fn(*const libc::sigset_t, *mut c_int) -> c_int;
type SigwaitinfoFn = unsafe extern "C" fn(*const libc::sigset_t, *mut libc::siginfo_t) -> c_int;
type SigtimedwaitFn = unsafe extern "C" fn(*const libc::sigset_t, *mut libc::siginfo_t, *const libc::timespec) -> c_int;

#[unsafe(no_mangle)]
pub unsafe extern "C" fn sigwait(set: *const libc::sigset_t, sig: *mut c_int) -> c_int {
    let copy = strip(set);
    let p = copy.as_ref().map_or(set, |c| c as *const libc::sigset_t);
    // SAFETY: forwarding with the checkpoint signal removed from the wait set.
    real::<SigwaitFn>(&REAL_SIGWAIT).map_or(libc::ENOSYS, |f| unsafe { f(p, sig) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn sigwaitinfo(set: *const libc::sigset_t, info: *mut libc::siginfo_t) -> c_int {
    let copy = strip(set);
    let p = copy.as_ref().map_or(set, |c| c as *const libc::sigset_t);
    // SAFETY: forwarding with the checkpoint signal removed from the wait set.
    let r = real::<SigwaitinfoFn>(&REAL_SIGWAITINFO).map_or(-1, |f| unsafe { f(p, info) });
    if r > 0 {
        // SAFETY: info (if not null) was just filled.
        unsafe { crate::wrap_pids::translate_siginfo(info) };
    }
    r
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn sigtimedwait(set: *const libc::sigset_t, info: *mut libc::siginfo_t, t: *const libc::timespec) -> c_int {
    let copy = strip(set);
    let p = copy.as_ref().map_or(set, |c| c as *const libc::sigset_t);
    // SAFETY: forwarding with the checkpoint signal removed from the wait set.
    let r = real::<SigtimedwaitFn>(&REAL_SIGTIMEDWAIT).map_or(-1, |f| unsafe { f(p, info, t) });
    if r > 0 {
        // SAFETY: info (if not null) was just filled.
        unsafe { crate::wrap_pids::translate_siginfo(info) };
    }
    r
}

// ---------------------------------------------------------------- fds

type CloseFn = unsafe extern "C" fn(c_int) -> c_int;
type CloseRangeFn = unsafe extern "C" fn(libc::c_uint, libc::c_uint, c_int) -> c_int;
type Dup2Fn = unsafe extern "C" fn(c_int, c_int) -> c_int;
type Dup3Fn = unsafe extern "C" fn(c_int, c_int, c_int) -> c_int;

#[unsafe(no_mangle)]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    if crate::dump::is_own_fd(fd) {
        set_errno(libc::EBADF);
        return -1;
    }
    match real::<CloseFn>(&REAL_CLOSE) {
        // SAFETY: forwarding.
        Some(f) => unsafe { f(fd) },
        None => {
            sys::close(fd);
            0
        }
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn close_range(first: libc::c_uint, last: libc::c_uint, flags: c_int) -> c_int {
    let Some(f) = real::<CloseRangeFn>(&REAL_CLOSE_RANGE) else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    let mut own: [i64; 8] = [-1; 8];
    for (i, s) in crate::dump::OWN_FDS.iter().enumerate() {
        own[i] = s.load(Ordering::Relaxed) as i64;
    }
    own.sort_unstable();
    let mut lo = first as i64;
    for &o in own.iter().filter(|&&o| o >= first as i64 && o <= last as i64) {
        if o > lo {
            // SAFETY: forwarding a sub-range without our fds.
            let r = unsafe { f(lo as libc::c_uint, (o - 1) as libc::c_uint, flags) };
            if r != 0 {
                return r;
            }
        }
        lo = o + 1;
    }
    if lo <= last as i64 {
        // SAFETY: as above.
        return unsafe { f(lo as libc::c_uint, last, flags) };
    }
    0
}

/// If the program is about to dup2 onto one of our fds, move ours out of the way first.
fn evacuate(newfd: c_int) {
    if !crate::dump::is_own_fd(newfd) {
        return;
    }
    if let Ok(moved) = sys::fcntl(newfd, libc::F_DUPFD_CLOEXEC, newfd as usize + 1) {
        crate::dump::add_own_fd(moved as i32);
        let _ = crate::ckpt_thread::COORD_FD.compare_exchange(newfd, moved as i32, Ordering::AcqRel, Ordering::Relaxed);
    }
    crate::dump::remove_own_fd(newfd);
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    let _g = WrapperGuard::new();
    evacuate(new);
    // SAFETY: forwarding.
    real::<Dup2Fn>(&REAL_DUP2).map_or(-1, |f| unsafe { f(old, new) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    let _g = WrapperGuard::new();
    evacuate(new);
    // SAFETY: forwarding.
    real::<Dup3Fn>(&REAL_DUP3).map_or(-1, |f| unsafe { f(old, new, flags) })
}
