//! Virtual pids wherever a pid crosses the libc boundary.
//!
//! Every id the program passes in is translated virtual → real ([`vpid::to_real`]), every
//! id it gets back real → virtual ([`vpid::to_virtual`]). Before any restart the table is
//! empty and each translation is one atomic load. Covered here:
//!
//! * waiting: `wait`, `waitpid`, `wait3`, `wait4`, `waitid` (the pid argument, the result,
//!   `siginfo.si_pid`);
//! * signals: `killpg`, `sigqueue` (`kill`/`tgkill` are in `wrappers.rs`); `si_pid` of
//!   signals delivered to `SA_SIGINFO` handlers (see [`siginfo_trampoline`]) and returned by
//!   `sigwaitinfo`/`sigtimedwait`;
//! * groups and sessions: `setpgid`, `getpgid`, `getpgrp`, `setsid`, `getsid`, `tcgetpgrp`,
//!   `tcsetpgrp`;
//! * scheduling and resources: `sched_{set,get}{affinity,scheduler,param}`,
//!   `sched_rr_get_interval`, `{get,set}priority`, `prlimit`, `pidfd_open`,
//!   `process_vm_{readv,writev}`;
//! * `fcntl`/`fcntl64` `F_SETOWN`/`F_GETOWN`/`F_SETOWN_EX`/`F_GETOWN_EX`; `ioctl`
//!   `TIOCGPGRP`/`TIOCSPGRP`/`TIOCGSID`;
//! * `/proc/<pid>/...` (and `/proc/<pid>/task/<tid>`) paths given to `open`, `openat`,
//!   `fopen`, `opendir`, the stat family, `readlink`, `access`, `chdir`; `readlink` of
//!   `/proc/self` and `/proc/thread-self` answers virtual ids;
//! * raw `syscall(2)` of all the above (in `wrappers.rs`, through [`syscall_pid`]).
//!
//! Nothing here takes a lock or allocates: lookups are lock-free, paths are rewritten on
//! the stack. The SIGCHLD path ([`siginfo_trampoline`]) runs in signal context.

use crate::sys::{self, sc};
use crate::vpid;
use crate::wrappers::{real, set_errno};
use core::sync::atomic::{AtomicUsize, Ordering};
use libc::{c_char, c_int, c_long, c_void, pid_t};

crate::wrappers::real_slots! {
    R_WAIT = c"wait";
    R_WAITPID = c"waitpid";
    R_WAIT3 = c"wait3";
    R_WAIT4 = c"wait4";
    R_WAITID = c"waitid";
    R_SETPGID = c"setpgid";
    R_GETPGID = c"getpgid";
    R_GETPGRP = c"getpgrp";
    R_SETSID = c"setsid";
    R_GETSID = c"getsid";
    R_TCGETPGRP = c"tcgetpgrp";
    R_TCSETPGRP = c"tcsetpgrp";
    R_SCHED_SETAFFINITY = c"sched_setaffinity";
    R_SCHED_GETAFFINITY = c"sched_getaffinity";
    R_SCHED_SETSCHEDULER = c"sched_setscheduler";
    R_SCHED_GETSCHEDULER = c"sched_getscheduler";
    R_SCHED_SETPARAM = c"sched_setparam";
    R_SCHED_GETPARAM = c"sched_getparam";
    R_SCHED_RR = c"sched_rr_get_interval";
    R_GETPRIORITY = c"getpriority";
    R_SETPRIORITY = c"setpriority";
    R_PRLIMIT = c"prlimit";
    R_PRLIMIT64 = c"prlimit64";
    R_PIDFD_OPEN = c"pidfd_open";
    R_PVM_READV = c"process_vm_readv";
    R_PVM_WRITEV = c"process_vm_writev";
    R_FCNTL = c"fcntl";
    R_IOCTL = c"ioctl";
    R_FCNTL64 = c"fcntl64";
    R_OPEN = c"open";
    R_OPEN64 = c"open64";
    R_OPENAT = c"openat";
    R_OPENAT64 = c"openat64";
    R_OPEN_2 = c"__open_2";
    R_OPEN64_2 = c"__open64_2";
    R_OPENAT_2 = c"__openat_2";
    R_OPENAT64_2 = c"__openat64_2";
    R_FOPEN = c"fopen";
    R_FOPEN64 = c"fopen64";
    R_OPENDIR = c"opendir";
    R_STAT = c"stat";
    R_STAT64 = c"stat64";
    R_LSTAT = c"lstat";
    R_LSTAT64 = c"lstat64";
    R_FSTATAT = c"fstatat";
    R_FSTATAT64 = c"fstatat64";
    R_XSTAT = c"__xstat";
    R_XSTAT64 = c"__xstat64";
    R_LXSTAT = c"__lxstat";
    R_LXSTAT64 = c"__lxstat64";
    R_STATX = c"statx";
    R_READLINK = c"readlink";
    R_READLINKAT = c"readlinkat";
    R_ACCESS = c"access";
    R_FACCESSAT = c"faccessat";
    R_CHDIR = c"chdir";
}

/// Resolve this module's real functions (at load time).
pub fn resolve() {
    resolve_slots();
    remember_exe();
}

fn fail(e: c_int) -> c_int {
    set_errno(e);
    -1
}

// ---------------------------------------------------------------- siginfo

/// Whether `si_pid` of this siginfo holds a process id (and not a timer id, a fd band or
/// a fault address, which share its place in the union).
fn has_pid(sig: c_int, code: c_int) -> bool {
    matches!(code, libc::SI_USER | libc::SI_QUEUE | libc::SI_MESGQ | libc::SI_TKILL)
        || (sig == libc::SIGCHLD && (1..=6).contains(&code))
}

/// Rewrite `si_pid` of a siginfo to the sender's virtual pid (in place).
///
/// # Safety
/// `info` is null or a valid, writable siginfo.
pub unsafe fn translate_siginfo(info: *mut libc::siginfo_t) {
    if info.is_null() || vpid::is_empty() {
        return;
    }
    let w = info as *mut i32;
    // SAFETY: siginfo is 128 bytes; si_signo, si_code and si_pid are ints at 0, 8 and 16.
    unsafe {
        if has_pid(*w, *w.add(2)) {
            *w.add(4) = vpid::to_virtual(*w.add(4));
        }
    }
}

/// The application's `SA_SIGINFO` handlers; the kernel calls [`siginfo_trampoline`].
pub static APP_SIGINFO: [AtomicUsize; 65] = [const { AtomicUsize::new(0) }; 65];

/// Installed instead of every `SA_SIGINFO` handler of the program: translates `si_pid`
/// (SIGCHLD's child, a `kill`/`sigqueue` sender) and calls the program's handler.
/// Signal context: atomics and a lock-free table walk only.
///
/// # Safety
/// Called by the kernel with its siginfo and ucontext.
pub unsafe extern "C" fn siginfo_trampoline(sig: c_int, info: *mut libc::siginfo_t, uc: *mut c_void) {
    // SAFETY: the kernel passes a writable siginfo on the signal frame.
    unsafe { translate_siginfo(info) };
    let h = APP_SIGINFO.get(sig as usize).map_or(0, |a| a.load(Ordering::Acquire));
    if h > 1 {
        // SAFETY: the program installed this handler with SA_SIGINFO.
        let f: extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) = unsafe { core::mem::transmute(h) };
        f(sig, info, uc);
    }
}

/// The handler address to give the kernel for the program's `act`, remembering the
/// program's own. Returns the previous program handler (to report in `old`).
pub fn route_handler(sig: c_int, act: &mut libc::sigaction) {
    let Some(slot) = APP_SIGINFO.get(sig as usize) else { return };
    if act.sa_flags & libc::SA_SIGINFO != 0 && act.sa_sigaction > 1 {
        slot.store(act.sa_sigaction, Ordering::Release);
        act.sa_sigaction = siginfo_trampoline as *const () as usize;
    }
}

/// Report the program's handler, not the trampoline, in an `old` action.
///
/// # Safety
/// `old` is null or the program's valid out-pointer.
pub unsafe fn unroute_old(sig: c_int, prev_app: usize, old: *mut libc::sigaction) {
    if old.is_null() || sig <= 0 || sig as usize >= APP_SIGINFO.len() {
        return;
    }
    // SAFETY: the program's out-pointer, just filled by libc.
    unsafe {
        if (*old).sa_sigaction == siginfo_trampoline as *const () as usize {
            (*old).sa_sigaction = prev_app;
        }
    }
}

/// The program's current `SA_SIGINFO` handler for `sig` (0 if none).
pub fn app_handler(sig: c_int) -> usize {
    APP_SIGINFO.get(sig as usize).map_or(0, |a| a.load(Ordering::Acquire))
}

// ---------------------------------------------------------------- waiting

/// A wait result: real pid → virtual. The mapping of a reaped child is kept: its virtual
/// pid then still names a process that is gone (ESRCH, no /proc entry) rather than
/// whatever process now has the same number, and a new child never gets that virtual pid
/// (see `fork`). A stale mapping is dropped when its real pid is handed out again.
fn waited(r: pid_t, _status: c_int) -> pid_t {
    if r <= 0 {
        return r;
    }
    vpid::to_virtual(r)
}

type Wait4Fn = unsafe extern "C" fn(pid_t, *mut c_int, c_int, *mut libc::rusage) -> pid_t;
type WaitpidFn = unsafe extern "C" fn(pid_t, *mut c_int, c_int) -> pid_t;
type WaitFn = unsafe extern "C" fn(*mut c_int) -> pid_t;
type Wait3Fn = unsafe extern "C" fn(*mut c_int, c_int, *mut libc::rusage) -> pid_t;
type WaitidFn = unsafe extern "C" fn(libc::idtype_t, libc::id_t, *mut libc::siginfo_t, c_int) -> c_int;

#[unsafe(no_mangle)]
pub unsafe extern "C" fn waitpid(pid: pid_t, status: *mut c_int, options: c_int) -> pid_t {
    let mut st = 0;
    let sp = if status.is_null() { &mut st as *mut c_int } else { status };
    let Some(f) = real::<WaitpidFn>(&R_WAITPID) else { return fail(libc::ENOSYS) };
    // SAFETY: forwarding with a translated pid and a valid status pointer.
    let r = unsafe { f(vpid::to_real(pid), sp, options) };
    // SAFETY: sp is valid.
    waited(r, unsafe { *sp })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn wait(status: *mut c_int) -> pid_t {
    let mut st = 0;
    let sp = if status.is_null() { &mut st as *mut c_int } else { status };
    let Some(f) = real::<WaitFn>(&R_WAIT) else { return fail(libc::ENOSYS) };
    // SAFETY: forwarding with a valid status pointer.
    let r = unsafe { f(sp) };
    // SAFETY: sp is valid.
    waited(r, unsafe { *sp })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn wait3(status: *mut c_int, options: c_int, ru: *mut libc::rusage) -> pid_t {
    let mut st = 0;
    let sp = if status.is_null() { &mut st as *mut c_int } else { status };
    let Some(f) = real::<Wait3Fn>(&R_WAIT3) else { return fail(libc::ENOSYS) };
    // SAFETY: forwarding with a valid status pointer.
    let r = unsafe { f(sp, options, ru) };
    // SAFETY: sp is valid.
    waited(r, unsafe { *sp })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn wait4(pid: pid_t, status: *mut c_int, options: c_int, ru: *mut libc::rusage) -> pid_t {
    let mut st = 0;
    let sp = if status.is_null() { &mut st as *mut c_int } else { status };
    let Some(f) = real::<Wait4Fn>(&R_WAIT4) else { return fail(libc::ENOSYS) };
    // SAFETY: forwarding with a translated pid and a valid status pointer.
    let r = unsafe { f(vpid::to_real(pid), sp, options, ru) };
    // SAFETY: sp is valid.
    waited(r, unsafe { *sp })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn waitid(idtype: libc::idtype_t, id: libc::id_t, info: *mut libc::siginfo_t, options: c_int) -> c_int {
    let id = match idtype {
        libc::P_PID | libc::P_PGID if id > 0 => vpid::to_real(id as i32) as libc::id_t,
        _ => id,
    };
    let Some(f) = real::<WaitidFn>(&R_WAITID) else { return fail(libc::ENOSYS) };
    // SAFETY: forwarding.
    let r = unsafe { f(idtype, id, info, options) };
    if r == 0 && !info.is_null() {
        // SAFETY: filled by the kernel (si_pid 0 when WNOHANG found nothing).
        unsafe {
            let w = info as *mut i32;
            let (code, pid) = (*w.add(2), *w.add(4));
            if pid > 0 {
                let _ = code;
                *w.add(4) = vpid::to_virtual(pid);
            }
        }
    }
    r
}

// ---------------------------------------------------------------- signals

#[unsafe(no_mangle)]
pub extern "C" fn killpg(pgrp: pid_t, sig: c_int) -> c_int {
    if pgrp <= 1 {
        return fail(libc::EINVAL);
    }
    match sys::kill(-vpid::to_real(pgrp), sig) {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn sigqueue(pid: pid_t, sig: c_int, val: libc::sigval) -> c_int {
    // glibc fills si_pid with the real pid of the sender; the receiver translates it.
    let mut si = [0i32; 32];
    si[0] = sig;
    si[2] = libc::SI_QUEUE;
    si[4] = sys::getpid();
    // SAFETY: getuid has no arguments.
    si[5] = unsafe { sc!(libc::SYS_getuid) } as i32;
    // SAFETY: si_value is a pointer-sized union at offset 24.
    unsafe { core::ptr::write_unaligned(si.as_mut_ptr().add(6) as *mut libc::sigval, val) };
    // SAFETY: si is a valid 128-byte siginfo.
    match sys::check(unsafe { sc!(libc::SYS_rt_sigqueueinfo, vpid::to_real(pid), sig, si.as_ptr()) }) {
        Ok(_) => 0,
        Err(e) => fail(e),
    }
}

// ---------------------------------------------------------------- groups and sessions

type PidToPid = unsafe extern "C" fn(pid_t) -> pid_t;
type Void2Pid = unsafe extern "C" fn() -> pid_t;

#[unsafe(no_mangle)]
pub unsafe extern "C" fn setpgid(pid: pid_t, pgid: pid_t) -> c_int {
    let Some(f) = real::<unsafe extern "C" fn(pid_t, pid_t) -> c_int>(&R_SETPGID) else { return fail(libc::ENOSYS) };
    // SAFETY: forwarding translated ids (0 stays 0: "myself").
    unsafe { f(vpid::to_real(pid), vpid::to_real(pgid)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn getpgid(pid: pid_t) -> pid_t {
    let Some(f) = real::<PidToPid>(&R_GETPGID) else { return fail(libc::ENOSYS) };
    // SAFETY: forwarding.
    vpid::to_virtual_group(unsafe { f(vpid::to_real(pid)) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn getpgrp() -> pid_t {
    let Some(f) = real::<Void2Pid>(&R_GETPGRP) else { return fail(libc::ENOSYS) };
    // SAFETY: forwarding.
    vpid::to_virtual_group(unsafe { f() })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn setsid() -> pid_t {
    let Some(f) = real::<Void2Pid>(&R_SETSID) else { return fail(libc::ENOSYS) };
    // SAFETY: forwarding.
    vpid::to_virtual(unsafe { f() })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn getsid(pid: pid_t) -> pid_t {
    let Some(f) = real::<PidToPid>(&R_GETSID) else { return fail(libc::ENOSYS) };
    // SAFETY: forwarding.
    vpid::to_virtual_group(unsafe { f(vpid::to_real(pid)) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn tcgetpgrp(fd: c_int) -> pid_t {
    let Some(f) = real::<unsafe extern "C" fn(c_int) -> pid_t>(&R_TCGETPGRP) else { return fail(libc::ENOSYS) };
    // SAFETY: forwarding.
    vpid::to_virtual_group(unsafe { f(fd) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn tcsetpgrp(fd: c_int, pgrp: pid_t) -> c_int {
    let Some(f) = real::<unsafe extern "C" fn(c_int, pid_t) -> c_int>(&R_TCSETPGRP) else { return fail(libc::ENOSYS) };
    // SAFETY: forwarding.
    unsafe { f(fd, vpid::to_real(pgrp)) }
}

// ---------------------------------------------------------------- scheduling, resources

#[unsafe(no_mangle)]
pub unsafe extern "C" fn sched_setaffinity(pid: pid_t, size: usize, mask: *const libc::cpu_set_t) -> c_int {
    let Some(f) = real::<unsafe extern "C" fn(pid_t, usize, *const libc::cpu_set_t) -> c_int>(&R_SCHED_SETAFFINITY) else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: forwarding.
    unsafe { f(vpid::to_real(pid), size, mask) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn sched_getaffinity(pid: pid_t, size: usize, mask: *mut libc::cpu_set_t) -> c_int {
    let Some(f) = real::<unsafe extern "C" fn(pid_t, usize, *mut libc::cpu_set_t) -> c_int>(&R_SCHED_GETAFFINITY) else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: forwarding.
    unsafe { f(vpid::to_real(pid), size, mask) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn sched_setscheduler(pid: pid_t, policy: c_int, p: *const libc::sched_param) -> c_int {
    let Some(f) = real::<unsafe extern "C" fn(pid_t, c_int, *const libc::sched_param) -> c_int>(&R_SCHED_SETSCHEDULER)
    else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: forwarding.
    unsafe { f(vpid::to_real(pid), policy, p) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn sched_getscheduler(pid: pid_t) -> c_int {
    let Some(f) = real::<unsafe extern "C" fn(pid_t) -> c_int>(&R_SCHED_GETSCHEDULER) else { return fail(libc::ENOSYS) };
    // SAFETY: forwarding.
    unsafe { f(vpid::to_real(pid)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn sched_setparam(pid: pid_t, p: *const libc::sched_param) -> c_int {
    let Some(f) = real::<unsafe extern "C" fn(pid_t, *const libc::sched_param) -> c_int>(&R_SCHED_SETPARAM) else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: forwarding.
    unsafe { f(vpid::to_real(pid), p) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn sched_getparam(pid: pid_t, p: *mut libc::sched_param) -> c_int {
    let Some(f) = real::<unsafe extern "C" fn(pid_t, *mut libc::sched_param) -> c_int>(&R_SCHED_GETPARAM) else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: forwarding.
    unsafe { f(vpid::to_real(pid), p) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn sched_rr_get_interval(pid: pid_t, t: *mut libc::timespec) -> c_int {
    let Some(f) = real::<unsafe extern "C" fn(pid_t, *mut libc::timespec) -> c_int>(&R_SCHED_RR) else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: forwarding.
    unsafe { f(vpid::to_real(pid), t) }
}

/// `who` of get/setpriority and ioprio: a pid or a pgid for the process and group kinds.
fn prio_who(which: c_int, who: libc::id_t) -> libc::id_t {
    if (which == libc::PRIO_PROCESS as c_int || which == libc::PRIO_PGRP as c_int) && who > 0 {
        vpid::to_real(who as i32) as libc::id_t
    } else {
        who
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn getpriority(which: c_int, who: libc::id_t) -> c_int {
    let Some(f) = real::<unsafe extern "C" fn(c_int, libc::id_t) -> c_int>(&R_GETPRIORITY) else { return fail(libc::ENOSYS) };
    // SAFETY: forwarding.
    unsafe { f(which, prio_who(which, who)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn setpriority(which: c_int, who: libc::id_t, prio: c_int) -> c_int {
    let Some(f) = real::<unsafe extern "C" fn(c_int, libc::id_t, c_int) -> c_int>(&R_SETPRIORITY) else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: forwarding.
    unsafe { f(which, prio_who(which, who), prio) }
}

type PrlimitFn = unsafe extern "C" fn(pid_t, c_int, *const libc::rlimit64, *mut libc::rlimit64) -> c_int;

#[unsafe(no_mangle)]
pub unsafe extern "C" fn prlimit(pid: pid_t, res: c_int, new: *const libc::rlimit64, old: *mut libc::rlimit64) -> c_int {
    let Some(f) = real::<PrlimitFn>(&R_PRLIMIT) else { return fail(libc::ENOSYS) };
    // SAFETY: forwarding (rlimit and rlimit64 are the same on x86-64).
    unsafe { f(vpid::to_real(pid), res, new, old) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn prlimit64(pid: pid_t, res: c_int, new: *const libc::rlimit64, old: *mut libc::rlimit64) -> c_int {
    let Some(f) = real::<PrlimitFn>(&R_PRLIMIT64) else { return fail(libc::ENOSYS) };
    // SAFETY: forwarding.
    unsafe { f(vpid::to_real(pid), res, new, old) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn pidfd_open(pid: pid_t, flags: libc::c_uint) -> c_int {
    match real::<unsafe extern "C" fn(pid_t, libc::c_uint) -> c_int>(&R_PIDFD_OPEN) {
        // SAFETY: forwarding.
        Some(f) => unsafe { f(vpid::to_real(pid), flags) },
        // SAFETY: no memory arguments.
        None => match sys::check(unsafe { sc!(libc::SYS_pidfd_open, vpid::to_real(pid), flags) }) {
            Ok(v) => v as c_int,
            Err(e) => fail(e),
        },
    }
}

type PvmFn = unsafe extern "C" fn(pid_t, *const libc::iovec, libc::c_ulong, *const libc::iovec, libc::c_ulong, libc::c_ulong) -> isize;

#[unsafe(no_mangle)]
pub unsafe extern "C" fn process_vm_readv(
    pid: pid_t,
    l: *const libc::iovec,
    ln: libc::c_ulong,
    r: *const libc::iovec,
    rn: libc::c_ulong,
    flags: libc::c_ulong,
) -> isize {
    let Some(f) = real::<PvmFn>(&R_PVM_READV) else { return fail(libc::ENOSYS) as isize };
    // SAFETY: forwarding.
    unsafe { f(vpid::to_real(pid), l, ln, r, rn, flags) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn process_vm_writev(
    pid: pid_t,
    l: *const libc::iovec,
    ln: libc::c_ulong,
    r: *const libc::iovec,
    rn: libc::c_ulong,
    flags: libc::c_ulong,
) -> isize {
    let Some(f) = real::<PvmFn>(&R_PVM_WRITEV) else { return fail(libc::ENOSYS) as isize };
    // SAFETY: forwarding.
    unsafe { f(vpid::to_real(pid), l, ln, r, rn, flags) }
}

// ---------------------------------------------------------------- fcntl

type FcntlFn = unsafe extern "C" fn(c_int, c_int, usize) -> c_int;

const F_SETOWN_EX: c_int = 15;
const F_GETOWN_EX: c_int = 16;

/// `struct f_owner_ex`.
#[repr(C)]
#[derive(Clone, Copy)]
struct FOwnerEx {
    kind: c_int,
    pid: pid_t,
}

/// `fcntl` is variadic; on x86-64 its one optional argument travels in the third integer
/// register whatever its type, so a three-argument definition is ABI-compatible.
fn fcntl_common(slot: &AtomicUsize, fd: c_int, cmd: c_int, arg: usize) -> c_int {
    let Some(f) = real::<FcntlFn>(slot) else { return fail(libc::ENOSYS) };
    match cmd {
        libc::F_SETOWN => {
            // A negative owner is a process group.
            // SAFETY: forwarding a translated owner.
            unsafe { f(fd, cmd, vpid::to_real(arg as c_int) as isize as usize) }
        }
        libc::F_GETOWN => {
            // SAFETY: forwarding; the result is an owner (negative: a group) or -1.
            let r = unsafe { f(fd, cmd, arg) };
            if r == -1 {
                r
            } else {
                vpid::to_virtual(r)
            }
        }
        F_SETOWN_EX | F_GETOWN_EX if arg != 0 => {
            let p = arg as *mut FOwnerEx;
            if cmd == F_SETOWN_EX {
                // SAFETY: the program passed a valid f_owner_ex; translate a copy.
                let mut o = unsafe { *p };
                o.pid = vpid::to_real(o.pid);
                // SAFETY: forwarding the copy.
                return unsafe { f(fd, cmd, &o as *const FOwnerEx as usize) };
            }
            // SAFETY: forwarding; then translating the kernel's answer in place.
            let r = unsafe { f(fd, cmd, arg) };
            if r == 0 {
                // SAFETY: filled by the kernel.
                unsafe { (*p).pid = vpid::to_virtual((*p).pid) };
            }
            r
        }
        // SAFETY: forwarding unchanged.
        _ => unsafe { f(fd, cmd, arg) },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    fcntl_common(&R_FCNTL, fd, cmd, arg)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    fcntl_common(&R_FCNTL64, fd, cmd, arg)
}

// ---------------------------------------------------------------- ioctl

type IoctlFn = unsafe extern "C" fn(c_int, libc::c_ulong, usize) -> c_int;

/// `ioctl` is variadic with one optional argument, passed like `fcntl`'s (see there).
/// Only the terminal's process group and session requests carry pids; every other request
/// is forwarded after one comparison.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ioctl(fd: c_int, req: libc::c_ulong, arg: usize) -> c_int {
    let Some(f) = real::<IoctlFn>(&R_IOCTL) else { return fail(libc::ENOSYS) };
    match req {
        libc::TIOCSPGRP if arg != 0 && !vpid::is_empty() => {
            // SAFETY: the program passed a pid_t; we pass a translated copy.
            let pgrp: pid_t = vpid::to_real(unsafe { *(arg as *const pid_t) });
            // SAFETY: forwarding with the copy.
            unsafe { f(fd, req, &pgrp as *const pid_t as usize) }
        }
        libc::TIOCGPGRP | libc::TIOCGSID if arg != 0 => {
            // SAFETY: forwarding; then translating the kernel's answer in place.
            let r = unsafe { f(fd, req, arg) };
            if r == 0 {
                // SAFETY: filled by the kernel.
                unsafe { *(arg as *mut pid_t) = vpid::to_virtual_group(*(arg as *const pid_t)) };
            }
            r
        }
        // SAFETY: forwarding unchanged.
        _ => unsafe { f(fd, req, arg) },
    }
}

// ---------------------------------------------------------------- /proc/<pid> paths

const PROC: &[u8] = b"/proc/";

/// Parse a decimal id at the start of `s`; returns (id, digits).
fn leading_id(s: &[u8]) -> Option<(i32, usize)> {
    let n = s.iter().take_while(|c| c.is_ascii_digit()).count();
    if n == 0 || n > 9 || (n < s.len() && s[n] != b'/') {
        return None;
    }
    core::str::from_utf8(&s[..n]).ok()?.parse().ok().map(|v| (v, n))
}

/// Append `id` in decimal at `*at`; false (nothing written) if it would not fit with a
/// byte to spare for a terminating NUL.
pub(crate) fn push_id(out: &mut [u8], at: &mut usize, id: i32) -> bool {
    let mut digits = [0u8; 12];
    let mut n = 0;
    let mut v = id as u32;
    loop {
        digits[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if *at + n >= out.len() {
        return false;
    }
    for i in 0..n {
        out[*at + i] = digits[n - 1 - i];
    }
    *at += n;
    true
}

fn push(out: &mut [u8], at: &mut usize, s: &[u8]) -> bool {
    if *at + s.len() >= out.len() {
        return false;
    }
    out[*at..*at + s.len()].copy_from_slice(s);
    *at += s.len();
    true
}

/// `/proc/<vpid>[/task/<vtid>]...` → the same path with real ids, written into `buf`.
/// Returns false when the path needs no change (or cannot be rewritten).
fn rewrite_proc_path(path: &[u8], buf: &mut [u8; 4096]) -> bool {
    let Some(rest) = path.strip_prefix(PROC) else { return false };
    let Some((v, n)) = leading_id(rest) else { return false };
    let r = vpid::to_real(v);
    let mut tail = &rest[n..];
    // /proc/PID/task/TID
    let mut tid = None;
    if let Some(t) = tail.strip_prefix(b"/task/") {
        if let Some((vt, m)) = leading_id(t) {
            tid = Some((vpid::to_real(vt), vt));
            tail = &t[m..];
        }
    }
    if r == v && tid.is_none_or(|(rt, vt)| rt == vt) {
        return false;
    }
    let mut at = 0;
    let ok = push(buf, &mut at, PROC)
        && push_id(buf, &mut at, r)
        && match tid {
            Some((rt, _)) => push(buf, &mut at, b"/task/") && push_id(buf, &mut at, rt),
            None => true,
        }
        && push(buf, &mut at, tail);
    if ok {
        buf[at] = 0;
    }
    ok
}

/// The program's executable as the kernel named it at load (NUL-terminated).
static mut EXE_PATH: std::vec::Vec<u8> = std::vec::Vec::new();

fn remember_exe() {
    let mut buf = [0u8; 4096];
    if let Ok(n) = sys::readlink(b"/proc/self/exe", &mut buf) {
        if n < buf.len() {
            // SAFETY: written once at load, single-threaded; read-only afterwards.
            unsafe {
                EXE_PATH = buf[..n].to_vec();
                (*core::ptr::addr_of_mut!(EXE_PATH)).push(0);
            }
        }
    }
}

/// Set at restart: the kernel's `/proc/self/exe` is crust-restorer, in this process and in
/// the children it forks afterwards (a fork keeps the executable; an exec loads the
/// preload afresh, with this false).
pub static EXE_IS_RESTORER: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// After a restart the kernel says the executable is crust-restorer: `/proc/self/exe`
/// (and `/proc/<own pid>/exe`) must still name the program's own file, for readlink, open
/// and the common "re-exec myself" idiom. Returns the program's path (NUL-terminated).
fn restarted_self_exe(path: &[u8]) -> Option<&'static [u8]> {
    if !EXE_IS_RESTORER.load(Ordering::Relaxed) {
        return None;
    }
    let rest = path.strip_prefix(PROC)?.strip_suffix(b"/exe")?;
    let mine = rest == b"self"
        || leading_id(rest).is_some_and(|(v, n)| n == rest.len() && (v == vpid::vpid() || v == sys::getpid()));
    // SAFETY: written once at load.
    let exe = unsafe { &*core::ptr::addr_of!(EXE_PATH) };
    (mine && exe.len() > 1).then_some(exe.as_slice())
}

/// `path` with a restarted program's own `/proc/self/exe` replaced (for exec wrappers).
pub fn exec_path(path: *const c_char) -> *const c_char {
    if path.is_null() {
        return path;
    }
    // SAFETY: the program passed a NUL-terminated path.
    let bytes = unsafe { crate::config::cstr(path as *const u8) };
    restarted_self_exe(bytes).map_or(path, |e| e.as_ptr() as *const c_char)
}

/// The path to give the kernel for the program's `path` (possibly rewritten into `buf`).
fn proc_path(path: *const c_char, buf: &mut [u8; 4096]) -> *const c_char {
    if path.is_null() || vpid::is_empty() {
        return path;
    }
    // SAFETY: the program passed a NUL-terminated path.
    let bytes = unsafe { crate::config::cstr(path as *const u8) };
    if let Some(exe) = restarted_self_exe(bytes) {
        return exe.as_ptr() as *const c_char;
    }
    if rewrite_proc_path(bytes, buf) {
        buf.as_ptr() as *const c_char
    } else {
        path
    }
}

macro_rules! path_wrapper {
    ($name:ident, $slot:ident, ($($a:ident: $t:ty),*) -> $ret:ty, $err:expr, |$path:ident => $p:ident| ($($call:expr),*)) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name($($a: $t),*) -> $ret {
            let mut buf = [0u8; 4096];
            let $p = proc_path($path, &mut buf);
            match real::<unsafe extern "C" fn($($t),*) -> $ret>(&$slot) {
                // SAFETY: forwarding the program's call with a /proc path translated.
                Some(f) => unsafe { f($($call),*) },
                None => {
                    set_errno(libc::ENOSYS);
                    $err
                }
            }
        }
    };
}

path_wrapper!(open, R_OPEN, (path: *const c_char, flags: c_int, mode: libc::c_uint) -> c_int, -1, |path => p| (p, flags, mode));
path_wrapper!(open64, R_OPEN64, (path: *const c_char, flags: c_int, mode: libc::c_uint) -> c_int, -1, |path => p| (p, flags, mode));
path_wrapper!(openat, R_OPENAT, (dirfd: c_int, path: *const c_char, flags: c_int, mode: libc::c_uint) -> c_int, -1, |path => p| (dirfd, p, flags, mode));
path_wrapper!(openat64, R_OPENAT64, (dirfd: c_int, path: *const c_char, flags: c_int, mode: libc::c_uint) -> c_int, -1, |path => p| (dirfd, p, flags, mode));
// _FORTIFY_SOURCE builds call these when the flags are not known at compile time.
path_wrapper!(__open_2, R_OPEN_2, (path: *const c_char, flags: c_int) -> c_int, -1, |path => p| (p, flags));
path_wrapper!(__open64_2, R_OPEN64_2, (path: *const c_char, flags: c_int) -> c_int, -1, |path => p| (p, flags));
path_wrapper!(__openat_2, R_OPENAT_2, (dirfd: c_int, path: *const c_char, flags: c_int) -> c_int, -1, |path => p| (dirfd, p, flags));
path_wrapper!(__openat64_2, R_OPENAT64_2, (dirfd: c_int, path: *const c_char, flags: c_int) -> c_int, -1, |path => p| (dirfd, p, flags));
path_wrapper!(fopen, R_FOPEN, (path: *const c_char, mode: *const c_char) -> *mut libc::FILE, core::ptr::null_mut(), |path => p| (p, mode));
path_wrapper!(fopen64, R_FOPEN64, (path: *const c_char, mode: *const c_char) -> *mut libc::FILE, core::ptr::null_mut(), |path => p| (p, mode));
path_wrapper!(opendir, R_OPENDIR, (path: *const c_char) -> *mut libc::DIR, core::ptr::null_mut(), |path => p| (p));
path_wrapper!(stat, R_STAT, (path: *const c_char, st: *mut libc::stat) -> c_int, -1, |path => p| (p, st));
path_wrapper!(stat64, R_STAT64, (path: *const c_char, st: *mut libc::stat64) -> c_int, -1, |path => p| (p, st));
path_wrapper!(lstat, R_LSTAT, (path: *const c_char, st: *mut libc::stat) -> c_int, -1, |path => p| (p, st));
path_wrapper!(lstat64, R_LSTAT64, (path: *const c_char, st: *mut libc::stat64) -> c_int, -1, |path => p| (p, st));
path_wrapper!(fstatat, R_FSTATAT, (dirfd: c_int, path: *const c_char, st: *mut libc::stat, fl: c_int) -> c_int, -1, |path => p| (dirfd, p, st, fl));
path_wrapper!(fstatat64, R_FSTATAT64, (dirfd: c_int, path: *const c_char, st: *mut libc::stat64, fl: c_int) -> c_int, -1, |path => p| (dirfd, p, st, fl));
path_wrapper!(__xstat, R_XSTAT, (ver: c_int, path: *const c_char, st: *mut libc::stat) -> c_int, -1, |path => p| (ver, p, st));
path_wrapper!(__xstat64, R_XSTAT64, (ver: c_int, path: *const c_char, st: *mut libc::stat64) -> c_int, -1, |path => p| (ver, p, st));
path_wrapper!(__lxstat, R_LXSTAT, (ver: c_int, path: *const c_char, st: *mut libc::stat) -> c_int, -1, |path => p| (ver, p, st));
path_wrapper!(__lxstat64, R_LXSTAT64, (ver: c_int, path: *const c_char, st: *mut libc::stat64) -> c_int, -1, |path => p| (ver, p, st));
path_wrapper!(statx, R_STATX, (dirfd: c_int, path: *const c_char, fl: c_int, mask: libc::c_uint, st: *mut libc::statx) -> c_int, -1, |path => p| (dirfd, p, fl, mask, st));
path_wrapper!(access, R_ACCESS, (path: *const c_char, mode: c_int) -> c_int, -1, |path => p| (p, mode));
path_wrapper!(faccessat, R_FACCESSAT, (dirfd: c_int, path: *const c_char, mode: c_int, fl: c_int) -> c_int, -1, |path => p| (dirfd, p, mode, fl));
path_wrapper!(chdir, R_CHDIR, (path: *const c_char) -> c_int, -1, |path => p| (p));

/// `readlink` answer for `/proc/self` (`"<pid>"`) and `/proc/thread-self`
/// (`"<pid>/task/<tid>"`), with virtual ids; None for other paths.
fn self_link(path: &[u8], buf: *mut c_char, size: usize) -> Option<isize> {
    if let Some(exe) = restarted_self_exe(path) {
        let n = (exe.len() - 1).min(size);
        // SAFETY: the program's buffer holds `size` bytes.
        unsafe { core::ptr::copy_nonoverlapping(exe.as_ptr(), buf as *mut u8, n) };
        return Some(n as isize);
    }
    let thread = match path {
        b"/proc/self" | b"/proc/self/" => false,
        b"/proc/thread-self" | b"/proc/thread-self/" => true,
        _ => return None,
    };
    let mut tmp = [0u8; 64];
    let mut at = 0;
    push_id(&mut tmp, &mut at, crate::wrappers::getpid());
    if thread {
        push(&mut tmp, &mut at, b"/task/");
        push_id(&mut tmp, &mut at, crate::wrappers::gettid());
    }
    let n = at.min(size);
    // SAFETY: the program's buffer holds `size` bytes; readlink does not NUL-terminate.
    unsafe { core::ptr::copy_nonoverlapping(tmp.as_ptr(), buf as *mut u8, n) };
    Some(n as isize)
}

type ReadlinkFn = unsafe extern "C" fn(*const c_char, *mut c_char, usize) -> isize;
type ReadlinkatFn = unsafe extern "C" fn(c_int, *const c_char, *mut c_char, usize) -> isize;

#[unsafe(no_mangle)]
pub unsafe extern "C" fn readlink(path: *const c_char, out: *mut c_char, size: usize) -> isize {
    if !path.is_null() && !vpid::is_empty() {
        // SAFETY: NUL-terminated path from the program.
        if let Some(n) = self_link(unsafe { crate::config::cstr(path as *const u8) }, out, size) {
            return n;
        }
    }
    let mut buf = [0u8; 4096];
    let p = proc_path(path, &mut buf);
    match real::<ReadlinkFn>(&R_READLINK) {
        // SAFETY: forwarding.
        Some(f) => unsafe { f(p, out, size) },
        None => fail(libc::ENOSYS) as isize,
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn readlinkat(dirfd: c_int, path: *const c_char, out: *mut c_char, size: usize) -> isize {
    if !path.is_null() && !vpid::is_empty() {
        // SAFETY: NUL-terminated path from the program.
        if let Some(n) = self_link(unsafe { crate::config::cstr(path as *const u8) }, out, size) {
            return n;
        }
    }
    let mut buf = [0u8; 4096];
    let p = proc_path(path, &mut buf);
    match real::<ReadlinkatFn>(&R_READLINKAT) {
        // SAFETY: forwarding.
        Some(f) => unsafe { f(dirfd, p, out, size) },
        None => fail(libc::ENOSYS) as isize,
    }
}

// ---------------------------------------------------------------- raw syscall(2)

/// `syscall(2)` numbers whose pid arguments or results this module translates. Returns
/// None for other numbers (forwarded unchanged by the caller).
///
/// # Safety
/// The arguments are the program's, valid for system call `n`.
pub unsafe fn syscall_pid(n: c_long, a: [c_long; 6]) -> Option<c_long> {
    let p = |x: c_long| vpid::to_real(x as i32) as c_long;
    let raw = |n: c_long, b: [c_long; 6]| -> c_long {
        // SAFETY: the program's own call, with translated ids.
        let r = unsafe { sys::syscall6(n, b[0] as usize, b[1] as usize, b[2] as usize, b[3] as usize, b[4] as usize, b[5] as usize) };
        match sys::check(r) {
            Ok(v) => v as c_long,
            Err(e) => fail(e) as c_long,
        }
    };
    // SAFETY: (all arms) forwarding the program's call with translated ids.
    let r = unsafe {
        match n {
            libc::SYS_wait4 => wait4(a[0] as pid_t, a[1] as *mut c_int, a[2] as c_int, a[3] as *mut libc::rusage) as c_long,
            libc::SYS_waitid => waitid(a[0] as libc::idtype_t, a[1] as libc::id_t, a[2] as *mut libc::siginfo_t, a[3] as c_int) as c_long,
            libc::SYS_setpgid => setpgid(a[0] as pid_t, a[1] as pid_t) as c_long,
            libc::SYS_getpgid => getpgid(a[0] as pid_t) as c_long,
            libc::SYS_getpgrp => getpgrp() as c_long,
            libc::SYS_setsid => setsid() as c_long,
            libc::SYS_getsid => getsid(a[0] as pid_t) as c_long,
            libc::SYS_rt_sigqueueinfo => raw(n, [p(a[0]), a[1], a[2], 0, 0, 0]),
            libc::SYS_rt_tgsigqueueinfo => raw(n, [p(a[0]), p(a[1]), a[2], a[3], 0, 0]),
            libc::SYS_sched_setaffinity
            | libc::SYS_sched_getaffinity
            | libc::SYS_sched_setscheduler
            | libc::SYS_sched_getscheduler
            | libc::SYS_sched_setparam
            | libc::SYS_sched_getparam
            | libc::SYS_sched_rr_get_interval
            | libc::SYS_sched_setattr
            | libc::SYS_sched_getattr
            | libc::SYS_process_vm_readv
            | libc::SYS_process_vm_writev
            | libc::SYS_prlimit64
            | libc::SYS_pidfd_open
            | libc::SYS_get_robust_list
            | libc::SYS_migrate_pages
            | libc::SYS_move_pages => raw(n, [p(a[0]), a[1], a[2], a[3], a[4], a[5]]),
            libc::SYS_kcmp => raw(n, [p(a[0]), p(a[1]), a[2], a[3], a[4], a[5]]),
            libc::SYS_getpriority | libc::SYS_setpriority => {
                raw(n, [a[0], prio_who(a[0] as c_int, a[1] as libc::id_t) as c_long, a[2], a[3], a[4], a[5]])
            }
            // IOPRIO_WHO_PROCESS (1) and IOPRIO_WHO_PGRP (2) take a pid or a pgid.
            libc::SYS_ioprio_get | libc::SYS_ioprio_set if (a[0] == 1 || a[0] == 2) && a[1] > 0 => {
                raw(n, [a[0], p(a[1]), a[2], a[3], a[4], a[5]])
            }
            _ => return None,
        }
    };
    Some(r)
}
