//! POSIX timers (`timer_create`) across a checkpoint and a restart.
//!
//! Nothing is wrapped: the kernel lists a process's timers in `/proc/self/timers` (id,
//! signal and value, notification and target thread, clock) and `timer_gettime` gives
//! the time left and the interval. Both are read while the threads are stopped
//! ([`save`], from `dump::capture_stopped_facts`) into static memory, which is part of
//! the image. After a restart, `restore.rs` calls [`restore`] once every thread exists
//! again (a `SIGEV_THREAD_ID` timer targets a thread by its new kernel tid), before the
//! threads run.
//!
//! The timer ids the program holds must stay valid. Linux 6.17+ lets a process choose the
//! id of the timers it creates (`prctl(PR_TIMER_CREATE_RESTORE_IDS)`, made for CRIU:
//! `timer_create` then reads the wanted id through its id pointer). On an older kernel,
//! ids are handed out in increasing order from 0 in a new process (the restored one
//! is new: it exec'd the restorer), so creating timers for every id up to the largest and
//! deleting the ones not wanted gives the same ids; a restart that cannot get an id back
//! fails naming it.
//!
//! `SIGEV_THREAD` timers are kernel timers that signal (SIGTIMER) crust's helper thread
//! with `SIGEV_THREAD_ID` (`wrap_timers.rs`); they come back like any other, aimed at the
//! helper's new tid.
//!
//! A `SIGEV_THREAD_ID` timer whose thread had exited comes back notifying nobody (its
//! signals went nowhere); a timer on `CLOCK_THREAD_CPUTIME_ID` (the creating thread's CPU
//! time; the kernel does not say which thread) measures the main thread's after a restart.
//!
//! The time left runs from the restart (the time the program was not running does not
//! count), as for timerfds. Overrun counts and `TIMER_ABSTIME` are not kept: an absolute
//! timer comes back relative (its time left).

use crate::sys::{self, sc};

/// Most timers of one process crust keeps (a checkpoint of a process with more fails).
pub const MAX_TIMERS: usize = 1024;

#[derive(Clone, Copy)]
pub struct SavedTimer {
    /// The kernel's timer id (what `timer_t` holds, or glibc's `struct timer` for
    /// `SIGEV_THREAD`).
    pub id: i32,
    /// Clock; a CPU-time clock of another process or thread names it by virtual id.
    pub clock: i32,
    /// `sigev_notify` as the kernel keeps it (SIGEV_SIGNAL, SIGEV_NONE, SIGEV_THREAD,
    /// with SIGEV_THREAD_ID).
    pub notify: i32,
    pub signo: i32,
    pub sival: u64,
    /// Target thread of a `SIGEV_THREAD_ID` timer: virtual tid, and kernel tid at
    /// checkpoint time.
    pub target_vtid: i32,
    pub target_old_tid: i32,
    /// `struct itimerspec`: interval, then value (time left; 0 = disarmed).
    pub spec: [i64; 4],
}

const EMPTY: SavedTimer =
    SavedTimer { id: 0, clock: 0, notify: 0, signo: 0, sival: 0, target_vtid: 0, target_old_tid: 0, spec: [0; 4] };

pub struct SavedTimers {
    pub n: usize,
    /// `CR_TIMER_IDS=linear` in the program's environment: restore ids the pre-6.17 way
    /// even where the prctl exists (to test that way).
    pub linear: bool,
    pub timers: [SavedTimer; MAX_TIMERS],
}

pub static mut SAVED_TIMERS: SavedTimers = SavedTimers { n: 0, linear: false, timers: [EMPTY; MAX_TIMERS] };

const SIGEV_THREAD_ID: i32 = 4;
const PR_TIMER_CREATE_RESTORE_IDS: i32 = 77;
/// The fallback (no prctl) creates this many timers at most to reach an id.
const MAX_LINEAR_ID: i32 = 65536;

/// A CPU-time clock id names a process (or thread with bit 2) as `~pid << 3`; 0 = self.
fn cpu_clock_pid(clock: i32) -> Option<(i32, i32)> {
    if clock >= 0 {
        return None;
    }
    let pid = !(clock >> 3);
    (pid != 0).then_some((pid, clock & 7))
}

fn make_cpu_clock(pid: i32, low: i32) -> i32 {
    ((!pid) << 3) | low
}

/// Parse one `/proc/self/timers` record (the lines of one timer).
fn parse_record(lines: &[&str]) -> Option<SavedTimer> {
    let field = |key: &str| lines.iter().find_map(|l| l.strip_prefix(key)).map(str::trim);
    let mut t = EMPTY;
    t.id = field("ID:")?.parse().ok()?;
    // "signal: SIGNO/SIVAL" (the value in hex, as a pointer).
    let (signo, sival) = field("signal:")?.split_once('/')?;
    t.signo = signo.trim().parse().ok()?;
    t.sival = u64::from_str_radix(sival.trim().trim_start_matches("0x"), 16).ok()?;
    // "notify: signal|none|thread/pid|tid.N".
    let (how, target) = field("notify:")?.split_once('/')?;
    t.notify = match how {
        "signal" => libc::SIGEV_SIGNAL,
        "none" => libc::SIGEV_NONE,
        "thread" => libc::SIGEV_THREAD,
        _ => return None,
    };
    if let Some(tid) = target.strip_prefix("tid.") {
        t.notify |= SIGEV_THREAD_ID;
        t.target_old_tid = tid.parse().ok()?;
        t.target_vtid = if t.target_old_tid > 0 { crate::vpid::to_virtual(t.target_old_tid) } else { 0 };
    }
    t.clock = field("ClockID:")?.parse().ok()?;
    if let Some((pid, low)) = cpu_clock_pid(t.clock) {
        t.clock = make_cpu_clock(crate::vpid::to_virtual(pid), low);
    }
    Some(t)
}

/// Record every POSIX timer of the process (threads stopped). Fails when there are more
/// than crust keeps or the kernel's list cannot be read.
pub fn save() -> Result<(), std::string::String> {
    // SAFETY: only the checkpoint thread writes this, while the program's threads are stopped.
    let s = unsafe { &mut *core::ptr::addr_of_mut!(SAVED_TIMERS) };
    s.n = 0;
    let mut env = std::vec::Vec::new();
    let _ = sys::read_file(b"/proc/self/environ", &mut env);
    s.linear = env.split(|&c| c == 0).any(|v| v == b"CR_TIMER_IDS=linear");
    let mut raw = std::vec::Vec::new();
    if let Err(e) = sys::read_file(b"/proc/self/timers", &mut raw) {
        // Without the kernel's list (no CONFIG_CHECKPOINT_RESTORE) timers cannot be
        // described: refuse rather than lose them, if there are any (ids start at 0).
        let mut spec = [0i64; 4];
        // SAFETY: spec is a valid struct itimerspec.
        if let Some(id) = (0..4096).find(|&id| unsafe { sc!(libc::SYS_timer_gettime, id, spec.as_mut_ptr()) } == 0) {
            return Err(std::format!(
                "the process holds POSIX timer {id}, and this kernel does not list timers in /proc/self/timers \
                 (errno {e}; it needs CONFIG_CHECKPOINT_RESTORE): crust cannot checkpoint them"
            ));
        }
        return Ok(());
    }
    let text = std::string::String::from_utf8_lossy(&raw).into_owned();
    let lines: std::vec::Vec<&str> = text.lines().collect();
    let starts: std::vec::Vec<usize> = (0..lines.len()).filter(|&i| lines[i].starts_with("ID:")).collect();
    for (k, &b) in starts.iter().enumerate() {
        let e = starts.get(k + 1).copied().unwrap_or(lines.len());
        let Some(mut t) = parse_record(&lines[b..e]) else {
            return Err(std::format!(
                "cannot understand this kernel's /proc/self/timers (POSIX timer record {:?})",
                lines[b..e].join("; ")
            ));
        };
        if s.n == MAX_TIMERS {
            return Err(std::format!("the process holds more than {MAX_TIMERS} POSIX timers, more than crust keeps"));
        }
        // A thread the kernel still names but which had exited (its number may belong to
        // another thread one day): the timer notifies nobody.
        if t.notify & SIGEV_THREAD_ID != 0 && !crate::quiesce::slots().iter().any(|sl| sl.real_tid == t.target_old_tid) {
            t.target_old_tid = 0;
            t.target_vtid = 0;
        }
        // SAFETY: t.spec is a valid struct itimerspec.
        let r = unsafe { sc!(libc::SYS_timer_gettime, t.id, t.spec.as_mut_ptr()) };
        if r < 0 {
            return Err(std::format!("timer_gettime of POSIX timer {}: errno {}", t.id, -r));
        }
        s.timers[s.n] = t;
        s.n += 1;
    }
    Ok(())
}

/// Timers saved in the image (for diagnostics).
pub fn saved_count() -> usize {
    // SAFETY: a plain read of restored or checkpoint-time state.
    unsafe { (*core::ptr::addr_of!(SAVED_TIMERS)).n }
}

/// `struct sigevent` as the kernel reads it (64 bytes).
#[repr(C)]
struct KSigevent {
    value: u64,
    signo: i32,
    notify: i32,
    tid: i32,
    _pad: [i32; 11],
}

fn create(clock: i32, ev: &KSigevent, id: &mut i32) -> isize {
    // SAFETY: valid sigevent and id pointer.
    unsafe { sc!(libc::SYS_timer_create, clock, ev as *const KSigevent, id as *mut i32) }
}

fn sigevent_of(t: &SavedTimer) -> KSigevent {
    let mut notify = t.notify;
    let mut tid = 0;
    if notify & SIGEV_THREAD_ID != 0 {
        tid = crate::vpid::to_real(t.target_vtid);
        if t.target_old_tid <= 0 || tid <= 0 {
            // Its thread had exited (the kernel shows tid 0): its signals went nowhere,
            // which a timer that notifies nobody reproduces.
            notify = libc::SIGEV_NONE;
            tid = 0;
        }
    }
    KSigevent { value: t.sival, signo: t.signo, notify, tid, _pad: [0; 11] }
}

fn clock_of(t: &SavedTimer) -> i32 {
    match cpu_clock_pid(t.clock) {
        Some((vpid, low)) => make_cpu_clock(crate::vpid::to_real(vpid), low),
        None => t.clock,
    }
}

fn arm(t: &SavedTimer) -> Result<(), std::string::String> {
    let mut spec = t.spec;
    if spec[2] == 0 && spec[3] == 0 {
        if spec[0] == 0 && spec[1] == 0 {
            return Ok(()); // disarmed
        }
        spec[3] = 1; // a periodic timer due right now: keep it armed
    }
    // SAFETY: valid itimerspec, no old value wanted.
    let r = unsafe { sc!(libc::SYS_timer_settime, t.id, 0, spec.as_ptr(), 0) };
    if r < 0 {
        return Err(std::format!("timer_settime of POSIX timer {}: errno {}", t.id, -r));
    }
    Ok(())
}

/// Recreate every saved timer with its id, event, clock, time left and interval (restart
/// path, single-threaded, after the threads are recreated and the pid table is set).
pub fn restore() -> Result<(), std::string::String> {
    // SAFETY: restored static state, read on the single-threaded restart path.
    let s = unsafe { &*core::ptr::addr_of!(SAVED_TIMERS) };
    let timers = &s.timers[..s.n];
    if timers.is_empty() {
        return Ok(());
    }
    if !s.linear && sys::prctl(PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0).is_ok() {
        let mut r = Ok(());
        for t in timers {
            let mut id = t.id;
            let e = create(clock_of(t), &sigevent_of(t), &mut id);
            if e < 0 || id != t.id {
                r = Err(std::format!("cannot recreate POSIX timer {} (clock {}): errno {}", t.id, t.clock, -e));
                break;
            }
        }
        let _ = sys::prctl(PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0);
        r?;
    } else {
        restore_linear(timers)?;
    }
    for t in timers {
        arm(t)?;
    }
    Ok(())
}

/// Without the prctl: create timers in id order (a new process hands out 0, 1, 2...),
/// placeholders for the ids not wanted, deleted afterwards.
fn restore_linear(timers: &[SavedTimer]) -> Result<(), std::string::String> {
    let max = timers.iter().map(|t| t.id).max().unwrap_or(0);
    if max > MAX_LINEAR_ID {
        return Err(std::format!(
            "POSIX timer {max}: this kernel cannot create a timer with a chosen id (PR_TIMER_CREATE_RESTORE_IDS needs Linux 6.17)"
        ));
    }
    let none = KSigevent { value: 0, signo: 0, notify: libc::SIGEV_NONE, tid: 0, _pad: [0; 11] };
    let mut want = 0i32;
    let mut placeholders = std::vec::Vec::new();
    while want <= max {
        let mut id = 0i32;
        let e = match timers.iter().find(|t| t.id == want) {
            Some(t) => create(clock_of(t), &sigevent_of(t), &mut id),
            None => {
                placeholders.push(want);
                create(libc::CLOCK_MONOTONIC, &none, &mut id)
            }
        };
        if e < 0 || id != want {
            return Err(std::format!(
                "cannot recreate POSIX timer {want} with its id (the kernel gave {id}, errno {}; \
                 PR_TIMER_CREATE_RESTORE_IDS needs Linux 6.17)",
                if e < 0 { -e } else { 0 }
            ));
        }
        want += 1;
    }
    for id in placeholders {
        // SAFETY: deletes a timer created above.
        unsafe { sc!(libc::SYS_timer_delete, id) };
    }
    Ok(())
}

/// A signal pending on one thread at checkpoint time is raised again by number; when it
/// is the signal of a `SIGEV_THREAD_ID` timer aimed at that thread, queue it as the timer
/// would (`SI_TIMER`, the timer's id and value), so the thread sees what the kernel would
/// have given it. Returns false when no such timer exists (the caller raises it plainly).
pub fn requeue_thread_signal(pid: i32, tid: i32, vtid: i32, sig: i32) -> bool {
    // SAFETY: restored static state, read on the single-threaded restart path.
    let s = unsafe { &*core::ptr::addr_of!(SAVED_TIMERS) };
    let mut candidates =
        s.timers[..s.n].iter().filter(|t| t.notify & SIGEV_THREAD_ID != 0 && t.target_vtid == vtid && t.signo == sig);
    let Some(t) = candidates.next() else {
        return false;
    };
    if candidates.next().is_some() {
        return false; // several timers signal this thread so: which one is pending is unknown
    }
    // siginfo: si_signo, si_errno, si_code; then si_timerid, si_overrun, si_value.
    let mut info = [0u64; 16];
    info[0] = sig as u32 as u64;
    info[1] = libc::SI_TIMER as u32 as u64;
    info[2] = t.id as u32 as u64;
    info[3] = t.sival;
    // SAFETY: a complete siginfo; queueing to a thread of our own process is allowed for
    // every si_code.
    let r = unsafe { sc!(libc::SYS_rt_tgsigqueueinfo, pid, tid, sig, info.as_ptr()) };
    r == 0
}
