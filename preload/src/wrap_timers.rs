//! `SIGEV_THREAD` POSIX timers, served by a helper thread crust can checkpoint.
//!
//! glibc runs `SIGEV_THREAD` timers with a helper thread it creates with *every* signal
//! blocked (SIGSETXID aside): the checkpoint signal could never stop it, so no checkpoint
//! of such a program could succeed. The `timer_create` wrapper therefore serves
//! `SIGEV_THREAD` itself, the way glibc does: one helper thread (an ordinary thread of the
//! program, created with libc's `pthread_create`, which blocks only SIGTIMER and takes the
//! checkpoint signal like any other thread) waits for SIGTIMER (signal 32, reserved by
//! glibc) and calls the timer's function with its value. Each timer is a kernel timer
//! aimed at the helper with `SIGEV_THREAD_ID` whose signal value names a slot of a static
//! table (function, value, kernel id). The `timer_t` handed to the program is the kernel
//! id itself, which glibc's `timer_settime`, `timer_gettime`, `timer_getoverrun` and
//! `timer_delete` take as it is (a non-negative `timer_t` is a kernel id to glibc). The
//! `timer_delete` wrapper frees the slot.
//!
//! Across a checkpoint these timers are like any other (`posix_timers.rs`): the kernel
//! timer comes back with its id, aimed at the helper's new tid; the table and the helper
//! are program memory and a program thread. A forked child has neither the parent's
//! timers nor its helper: the table is emptied and a new helper started on first use.
//!
//! Differences from glibc: the functions run one after the other on the helper thread
//! (glibc starts a thread per expiration), and `sigev_notify_attributes` is not used.

use crate::quiesce::WrapperGuard;
use crate::sys::{self, sc};
use crate::wrappers::{real, set_errno};
use core::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use libc::{c_int, c_void};

crate::wrappers::real_slots! {
    R_TIMER_CREATE = c"timer_create";
    R_TIMER_DELETE = c"timer_delete";
}

/// Resolve this module's real functions (at load time).
pub fn resolve() {
    resolve_slots();
}

/// glibc's SIGTIMER: the first real-time signal, hidden from programs.
const SIGTIMER: i32 = 32;
const SIGEV_THREAD_ID: i32 = 4;
/// Most `SIGEV_THREAD` timers alive at once.
const SLOTS: usize = 1024;
/// Marks a signal value as one of ours (high bits), the slot index in the low bits.
const MAGIC: u64 = 0x6372_7573_0000_0000;

struct Slot {
    /// 0 free, 1 being filled, 2 in use.
    state: AtomicU32,
    kid: AtomicI32,
    func: AtomicUsize,
    value: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot { state: AtomicU32::new(0), kid: AtomicI32::new(-1), func: AtomicUsize::new(0), value: AtomicU64::new(0) };
static TABLE: [Slot; SLOTS] = [FREE; SLOTS];

/// Helper state: 0 none, 1 starting, 2 running.
static HELPER: AtomicU32 = AtomicU32::new(0);
/// The helper's virtual tid (stable across restarts; `vpid::to_real` gives the kernel's).
static HELPER_VTID: AtomicI32 = AtomicI32::new(0);
/// Virtual pid of the process that owns the helper and the table (a forked child differs).
static OWNER: AtomicI32 = AtomicI32::new(0);

type TimerCreateFn = unsafe extern "C" fn(libc::clockid_t, *mut libc::sigevent, *mut libc::timer_t) -> c_int;
type TimerDeleteFn = unsafe extern "C" fn(libc::timer_t) -> c_int;
type PthreadCreate =
    unsafe extern "C" fn(*mut libc::pthread_t, *const libc::pthread_attr_t, extern "C" fn(*mut c_void) -> *mut c_void, *mut c_void) -> i32;

fn own_pid() -> i32 {
    crate::vpid::to_virtual(sys::getpid())
}

extern "C" fn helper_main(_: *mut c_void) -> *mut c_void {
    // SIGTIMER is taken with sigtimedwait; everything else but the checkpoint signal,
    // glibc's SIGSETXID and faults is left to the program's other threads.
    let ours = crate::config::get().signal;
    let keep = (1u64 << (ours - 1))
        | (1u64 << 32)
        | [libc::SIGSEGV, libc::SIGBUS, libc::SIGFPE, libc::SIGILL, libc::SIGTRAP].iter().fold(0u64, |m, &s| m | 1u64 << (s - 1));
    sys::sigprocmask(libc::SIG_SETMASK, Some(!keep));
    HELPER_VTID.store(crate::vpid::to_virtual(sys::gettid()), Ordering::Release);
    HELPER.store(2, Ordering::Release);
    sys::futex_wake(&HELPER, u32::MAX);
    let set = 1u64 << (SIGTIMER - 1);
    loop {
        let mut info = [0u64; 16];
        // SAFETY: valid set and siginfo buffer; no timeout.
        let r = unsafe { sc!(libc::SYS_rt_sigtimedwait, &set as *const u64, info.as_mut_ptr(), 0, 8) };
        if r != SIGTIMER as isize {
            continue;
        }
        // siginfo: si_code at byte 8, si_timerid at 16, si_value at 24.
        let code = info[1] as u32 as i32;
        let kid = info[2] as u32 as i32;
        let value = info[3];
        if code != libc::SI_TIMER || value & !0xffff_ffff != MAGIC {
            continue;
        }
        let Some(slot) = TABLE.get((value & 0xffff_ffff) as usize) else { continue };
        if slot.state.load(Ordering::Acquire) != 2 || slot.kid.load(Ordering::Relaxed) != kid {
            continue; // deleted meanwhile
        }
        let f = slot.func.load(Ordering::Relaxed);
        if f != 0 {
            // SAFETY: the function the program gave timer_create, with its sigval.
            let f: extern "C" fn(u64) = unsafe { core::mem::transmute::<usize, extern "C" fn(u64)>(f) };
            f(slot.value.load(Ordering::Relaxed));
        }
    }
}

/// In a forked child: no helper thread and none of the parent's timers (a start in
/// progress in the parent never finishes here).
pub fn after_fork_child() {
    for s in &TABLE {
        s.state.store(0, Ordering::Relaxed);
    }
    HELPER.store(0, Ordering::Release);
    OWNER.store(own_pid(), Ordering::Release);
}

/// Make sure this process has its helper thread; Err(errno) if it cannot be started.
fn ensure_helper() -> Result<(), c_int> {
    let me = own_pid();
    if OWNER.load(Ordering::Acquire) != me && HELPER.load(Ordering::Acquire) != 1 {
        // A forked child: the parent's helper and timers are not ours.
        for s in &TABLE {
            s.state.store(0, Ordering::Relaxed);
        }
        HELPER.store(0, Ordering::Release);
        OWNER.store(me, Ordering::Release);
    }
    loop {
        match HELPER.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => break,
            Err(2) => return Ok(()),
            Err(_) => {
                let _ = sys::futex_wait(&HELPER, 1, Some(10_000_000));
            }
        }
    }
    let Some(create) = real::<PthreadCreate>(&crate::wrappers::REAL_PTHREAD_CREATE) else {
        HELPER.store(0, Ordering::Release);
        return Err(libc::EAGAIN);
    };
    let mut t: libc::pthread_t = 0;
    // SAFETY: attributes are plain old data initialised by libc; the thread runs forever.
    let rc = unsafe {
        let mut attr: libc::pthread_attr_t = core::mem::zeroed();
        libc::pthread_attr_init(&mut attr);
        libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED);
        let rc = create(&mut t, &attr, helper_main, core::ptr::null_mut());
        libc::pthread_attr_destroy(&mut attr);
        rc
    };
    if rc != 0 {
        HELPER.store(0, Ordering::Release);
        sys::futex_wake(&HELPER, u32::MAX);
        return Err(rc);
    }
    while HELPER.load(Ordering::Acquire) != 2 {
        let _ = sys::futex_wait(&HELPER, 1, Some(10_000_000));
    }
    Ok(())
}

fn take_slot() -> Option<usize> {
    TABLE.iter().position(|s| s.state.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed).is_ok())
}

/// `timer_create`: `SIGEV_THREAD` timers are served by crust's helper (see above), the
/// others go to libc.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn timer_create(clock: libc::clockid_t, sev: *mut libc::sigevent, out: *mut libc::timer_t) -> c_int {
    // sigevent: value at byte 0, signo at 8, notify at 12, function at 16.
    // SAFETY: the program passes a valid sigevent or null.
    let thread = !sev.is_null() && unsafe { *((sev as *const u8).add(12) as *const i32) } == libc::SIGEV_THREAD;
    if !thread || !crate::wrappers::is_active() {
        return match real::<TimerCreateFn>(&R_TIMER_CREATE) {
            // SAFETY: forwarding the program's own call.
            Some(f) => unsafe { f(clock, sev, out) },
            None => {
                set_errno(libc::ENOSYS);
                -1
            }
        };
    }
    let _g = WrapperGuard::new();
    if let Err(e) = ensure_helper() {
        set_errno(e);
        return -1;
    }
    let Some(i) = take_slot() else {
        set_errno(libc::EAGAIN);
        return -1;
    };
    // SAFETY: as above.
    let (value, func) = unsafe { (*(sev as *const u64), *((sev as *const u8).add(16) as *const usize)) };
    let slot = &TABLE[i];
    slot.func.store(func, Ordering::Relaxed);
    slot.value.store(value, Ordering::Relaxed);
    let mut ev = [0i32; 16];
    let tagged = MAGIC | i as u64;
    ev[0] = tagged as u32 as i32;
    ev[1] = (tagged >> 32) as u32 as i32;
    ev[2] = SIGTIMER;
    ev[3] = libc::SIGEV_SIGNAL | SIGEV_THREAD_ID;
    ev[4] = crate::vpid::to_real(HELPER_VTID.load(Ordering::Acquire));
    let mut kid: i32 = 0;
    // SAFETY: valid sigevent and id pointer.
    let r = unsafe { sc!(libc::SYS_timer_create, clock, ev.as_ptr(), &mut kid as *mut i32) };
    if let Err(e) = sys::check(r) {
        slot.state.store(0, Ordering::Release);
        set_errno(e);
        return -1;
    }
    slot.kid.store(kid, Ordering::Relaxed);
    slot.state.store(2, Ordering::Release);
    // SAFETY: the program's out-pointer.
    unsafe { *out = kid as isize as libc::timer_t };
    0
}

/// `timer_delete`: libc deletes the kernel timer; a `SIGEV_THREAD` timer's slot is freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn timer_delete(t: libc::timer_t) -> c_int {
    let Some(f) = real::<TimerDeleteFn>(&R_TIMER_DELETE) else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    // SAFETY: forwarding the program's own call.
    let r = unsafe { f(t) };
    let kid = t as isize;
    if r == 0 && (0..=i32::MAX as isize).contains(&kid) && OWNER.load(Ordering::Acquire) == own_pid() {
        for s in &TABLE {
            if s.state.load(Ordering::Acquire) == 2 && s.kid.load(Ordering::Relaxed) == kid as i32 {
                s.kid.store(-1, Ordering::Relaxed);
                s.state.store(0, Ordering::Release);
            }
        }
    }
    r
}
