//! The application API: the `cr_*` functions a program may call (declared in
//! `api/include/crust.h`, wrapped for Rust by the `crust-api` crate).
//!
//! * `cr_checkpoint()` asks the coordinator for a checkpoint over this process's own
//!   connection and waits for the generation. The calling thread is stopped in the
//!   checkpoint like every other thread, so a program restarted from that generation
//!   comes back inside this call, which then returns 0 (the restart path bumps
//!   [`EPOCH`]); in the running program it returns the generation number (the CRID).
//! * `cr_disable()`/`cr_enable()` bracket a critical section. The checkpoint thread does
//!   not stop the program while any thread is inside one: it tells the coordinator (the
//!   generation shows the process as "held") and waits until the last section ends, or
//!   the coordinator gives up on the generation (`--generation-timeout`).
//! * Hooks run on the checkpoint thread, never in a signal handler and never while the
//!   program's threads are stopped: the before-checkpoint hooks before they are stopped
//!   (the checkpoint waits for them), the resume hooks when this process is done with the
//!   checkpoint (with forked checkpoints: once its image is written, while the program has
//!   been running since its capture), the restart hooks when the checkpoint thread comes
//!   back after a restart.
//! * `cr_ignore_fd()` keeps a descriptor out of checkpoints; after a restart it is closed.
//!
//! Which requests a generation answers: while a checkpoint is pending in this process
//! ([`PENDING`], from the `Checkpoint` message until the threads are stopped) no new request
//! starts (callers wait), and the checkpoint thread waits for requests being sent
//! ([`INFLIGHT`]) before it records the last request number ([`COVER`]). So every request
//! it covers was sent before this process said it suspended, which is exactly when the
//! coordinator counts it as answered by that generation (`coordinator/src/core.rs`).
//! The coordinator answers with `Completed`, or `RequestFailed` for the requesters.
//!
//! Everything here uses atomics, futexes and raw system calls only; the functions called by
//! the program take the wrapper lock while they touch shared state, so a thread is never
//! stopped halfway through.

use crate::quiesce::WrapperGuard;
use crate::sys;
use core::cell::Cell;
use core::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use crust_format::wire::{self, FromCoord, Phase, ToCoord};
use std::string::{String, ToString};

/// A hook: `void (*)(long long crid, void *arg)`.
pub type HookFn = unsafe extern "C" fn(i64, *mut libc::c_void);

/// Set at load when the preload is active (not `CR_DISABLE=1`).
pub static ENABLED: AtomicU32 = AtomicU32::new(0);
/// The coordinator socket once the hello was answered (-1: not connected), and the pid
/// that connection belongs to (a forked child inherits the number, not the connection).
static API_FD: AtomicI32 = AtomicI32::new(-1);
static API_PID: AtomicI32 = AtomicI32::new(0);
/// Bumped (and futex-woken) whenever the connection comes or goes.
static CONN_SEQ: AtomicU32 = AtomicU32::new(0);
/// The checkpoint thread's kernel tid (hooks run there; it must not wait for itself).
static CKPT_TID: AtomicI32 = AtomicI32::new(0);
/// Owner pid of the socket write lock (0 = free): frames from program threads and from
/// the checkpoint thread never interleave.
static SEND_LOCK: AtomicU32 = AtomicU32::new(0);

/// 1 from a `Checkpoint` message until the program runs again.
pub static PENDING: AtomicU32 = AtomicU32::new(0);
/// Requests being numbered and sent right now.
static INFLIGHT: AtomicU32 = AtomicU32::new(0);
/// Number of the last request made.
static REQ_SEQ: AtomicU32 = AtomicU32::new(0);
/// (generation, last request number it answers) of the checkpoint in progress.
static COVER: AtomicU64 = AtomicU64::new(0);
/// The newest outcome: `(last request number answered) << 32 | (result as u32)`.
static OUTCOME: AtomicU64 = AtomicU64::new(0);
/// Futex word bumped with every outcome and restart.
static OUTCOME_SEQ: AtomicU32 = AtomicU32::new(0);
/// Bumped after every restart: a thread that was waiting in `cr_checkpoint` returns 0.
pub static EPOCH: AtomicU32 = AtomicU32::new(0);

/// Threads inside critical sections, counted with nesting.
static DISABLED: AtomicU32 = AtomicU32::new(0);
std::thread_local! {
    /// This thread's critical-section nesting depth.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Descriptors the program asked us not to checkpoint.
static IGNORED_FDS: [AtomicI32; 64] = [const { AtomicI32::new(-1) }; 64];

const MAX_HOOKS: usize = 8;
struct HookSlot {
    /// 0 free, 1 being written, 2 ready.
    state: AtomicU32,
    func: AtomicUsize,
    arg: AtomicUsize,
}
macro_rules! hook_table {
    () => {
        [const { HookSlot { state: AtomicU32::new(0), func: AtomicUsize::new(0), arg: AtomicUsize::new(0) } }; MAX_HOOKS]
    };
}
static BEFORE_HOOKS: [HookSlot; MAX_HOOKS] = hook_table!();
static RESUME_HOOKS: [HookSlot; MAX_HOOKS] = hook_table!();
static RESTART_HOOKS: [HookSlot; MAX_HOOKS] = hook_table!();

/// How long `cr_checkpoint` waits for the checkpoint thread to be connected.
const CONNECT_WAIT_NS: u64 = 5_000_000_000;

// ------------------------------------------------------------------ helpers

fn wait_while(word: &AtomicU32, val: u32, timeout_ns: Option<u64>) {
    if word.load(Ordering::Acquire) == val {
        let _ = sys::futex_wait(word, val, timeout_ns);
    }
}

fn bump(word: &AtomicU32) {
    word.fetch_add(1, Ordering::AcqRel);
    sys::futex_wake(word, u32::MAX);
}

fn lock_send() {
    let me = sys::getpid() as u32;
    loop {
        match SEND_LOCK.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => return,
            // Held by the process we were forked from: that holder does not exist here.
            Err(v) if v != me => {
                if SEND_LOCK.compare_exchange(v, me, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                    return;
                }
            }
            Err(v) => {
                let _ = sys::futex_wait(&SEND_LOCK, v, Some(10_000_000));
            }
        }
    }
}

fn unlock_send() {
    SEND_LOCK.store(0, Ordering::Release);
    sys::futex_wake(&SEND_LOCK, 1);
}

/// Write one encoded frame to the coordinator socket, never interleaved with another.
pub fn send_frame(fd: i32, frame: &[u8]) -> Result<(), i32> {
    lock_send();
    let r = sys::send_all(fd, frame);
    unlock_send();
    r
}

fn send_msg(fd: i32, msg: &ToCoord) -> Result<(), String> {
    let frame = wire::encode(msg).map_err(|e| e.to_string())?;
    send_frame(fd, &frame).map_err(|e| std::format!("send: errno {e}"))
}

fn publish(upto: u32, result: i64) {
    let val = (u64::from(upto) << 32) | u64::from(result as i32 as u32);
    let mut cur = OUTCOME.load(Ordering::Acquire);
    // Outcomes only move forward (a later one answers every earlier request too).
    while (cur >> 32) as u32 <= upto {
        match OUTCOME.compare_exchange(cur, val, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => break,
            Err(c) => cur = c,
        }
    }
    bump(&OUTCOME_SEQ);
}

fn is_ckpt_thread() -> bool {
    CKPT_TID.load(Ordering::Relaxed) == sys::gettid()
}

fn run_hooks(table: &[HookSlot], crid: i64) {
    for h in table {
        if h.state.load(Ordering::Acquire) == 2 {
            let f = h.func.load(Ordering::Relaxed);
            let arg = h.arg.load(Ordering::Relaxed);
            // SAFETY: the program registered `f` as a function of this signature; it runs
            // on the checkpoint thread in an ordinary context (no signal handler, no
            // program thread stopped), as crust.h documents.
            unsafe {
                let f: HookFn = core::mem::transmute::<usize, HookFn>(f);
                f(crid, arg as *mut libc::c_void);
            }
        }
    }
}

fn register(table: &[HookSlot], f: Option<HookFn>, arg: *mut libc::c_void) -> i32 {
    let Some(f) = f else { return -1 };
    for h in table {
        if h.state.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            h.func.store(f as usize, Ordering::Relaxed);
            h.arg.store(arg as usize, Ordering::Relaxed);
            h.state.store(2, Ordering::Release);
            return 0;
        }
    }
    -1
}

/// Whether `fd` was marked with `cr_ignore_fd` (the image writer skips it).
pub fn is_ignored_fd(fd: i32) -> bool {
    fd >= 0 && IGNORED_FDS.iter().any(|s| s.load(Ordering::Relaxed) == fd)
}

// ------------------------------------------------------------------ checkpoint thread side

/// The hello was answered on `fd` (checkpoint thread).
pub fn connected(fd: i32) {
    CKPT_TID.store(sys::gettid(), Ordering::Relaxed);
    API_PID.store(sys::getpid(), Ordering::Relaxed);
    API_FD.store(fd, Ordering::Release);
    bump(&CONN_SEQ);
}

/// The connection is gone (checkpoint thread, before closing it): every request waiting
/// for an answer fails.
pub fn disconnected() {
    lock_send();
    API_FD.store(-1, Ordering::Release);
    unlock_send();
    bump(&CONN_SEQ);
    publish(REQ_SEQ.load(Ordering::Acquire), -1);
}

/// `Checkpoint{generation}` arrived (checkpoint thread). Runs the before-checkpoint hooks,
/// stops new requests and critical sections, and waits for the critical sections in
/// progress (telling the coordinator). `Ok(false)`: the coordinator aborted the generation
/// meanwhile (already acknowledged): do not checkpoint.
pub fn before_checkpoint(fd: i32, generation: u64) -> Result<bool, String> {
    CKPT_TID.store(sys::gettid(), Ordering::Relaxed);
    run_hooks(&BEFORE_HOOKS, generation as i64);
    PENDING.store(1, Ordering::SeqCst);
    while INFLIGHT.load(Ordering::SeqCst) != 0 {
        wait_while(&INFLIGHT, INFLIGHT.load(Ordering::Acquire), Some(1_000_000));
    }
    COVER.store((generation << 32) | u64::from(REQ_SEQ.load(Ordering::SeqCst)), Ordering::Release);
    if DISABLED.load(Ordering::SeqCst) == 0 {
        return Ok(true);
    }
    send_msg(fd, &ToCoord::Held { generation })?;
    loop {
        let v = DISABLED.load(Ordering::SeqCst);
        if v == 0 {
            return Ok(true);
        }
        wait_while(&DISABLED, v, Some(50_000_000));
        if sys::poll_in(fd, 0) {
            match crate::ckpt_thread::recv(fd)? {
                FromCoord::Abort { generation: g, .. } => {
                    send_msg(fd, &ToCoord::Reached { generation: g, phase: Phase::Resumed })?;
                    if g == generation {
                        return Ok(false);
                    }
                }
                other => on_message(&other),
            }
        }
    }
}

/// Every program thread is stopped (checkpoint thread): requests and critical sections
/// may start again as soon as the threads run, even while a forked writer still writes
/// the image.
pub fn suspended() {
    PENDING.store(0, Ordering::SeqCst);
    sys::futex_wake(&PENDING, u32::MAX);
}

/// This process is done with generation `generation` (checkpoint thread; with forked
/// checkpoints, once its image is written): resume hooks, and requests and critical
/// sections may start again if the checkpoint never stopped the threads.
pub fn after_checkpoint(generation: u64) {
    PENDING.store(0, Ordering::SeqCst);
    sys::futex_wake(&PENDING, u32::MAX);
    run_hooks(&RESUME_HOOKS, generation as i64);
}

/// A message outside a checkpoint that concerns the API (checkpoint thread).
pub fn on_message(m: &FromCoord) {
    match m {
        FromCoord::Completed { generation } => {
            let c = COVER.load(Ordering::Acquire);
            if c >> 32 == *generation {
                publish(c as u32, *generation as i64);
            }
        }
        FromCoord::RequestFailed { generation: 0, .. } => publish(REQ_SEQ.load(Ordering::Acquire), -1),
        FromCoord::RequestFailed { generation, .. } => {
            let c = COVER.load(Ordering::Acquire);
            if c >> 32 == *generation {
                publish(c as u32, -1);
            }
        }
        _ => {}
    }
}

/// Restart path, single-threaded, before the program's threads run (`restore.rs`): nothing
/// is pending any more and the old connection is gone.
pub fn after_restart() {
    API_FD.store(-1, Ordering::Release);
    INFLIGHT.store(0, Ordering::Release);
    COVER.store(0, Ordering::Release);
    SEND_LOCK.store(0, Ordering::Release);
    PENDING.store(0, Ordering::SeqCst);
    sys::futex_wake(&PENDING, u32::MAX);
}

/// The checkpoint thread is back after a restart from `generation`: restart hooks, then
/// threads waiting in `cr_checkpoint` return 0.
pub fn on_restarted(generation: u64) {
    CKPT_TID.store(sys::gettid(), Ordering::Relaxed);
    run_hooks(&RESTART_HOOKS, generation as i64);
    EPOCH.fetch_add(1, Ordering::AcqRel);
    bump(&OUTCOME_SEQ);
}

// ------------------------------------------------------------------ the exported API

/// 1 when the program runs under crust (the preload is active), else 0.
#[unsafe(no_mangle)]
pub extern "C" fn cr_is_enabled() -> i32 {
    (ENABLED.load(Ordering::Relaxed) != 0) as i32
}

/// Checkpoint the whole computation and wait. Returns the generation number (> 0) in the
/// running program, 0 when the program was restarted from that checkpoint, -1 on error.
#[unsafe(no_mangle)]
pub extern "C" fn cr_checkpoint() -> i64 {
    if ENABLED.load(Ordering::Relaxed) == 0 || is_ckpt_thread() || DEPTH.with(|d| d.get()) > 0 {
        // Not under crust; from a hook (it would wait for itself); inside a critical
        // section (the checkpoint would wait for it).
        return -1;
    }
    let epoch = EPOCH.load(Ordering::Acquire);
    let start = sys::clock_monotonic_ns();
    let my_seq = loop {
        if EPOCH.load(Ordering::Acquire) != epoch {
            return 0;
        }
        let conn = CONN_SEQ.load(Ordering::Acquire);
        let fd = API_FD.load(Ordering::Acquire);
        if fd < 0 || API_PID.load(Ordering::Relaxed) != sys::getpid() {
            // Not connected (yet, or again): wait a little for the checkpoint thread.
            let spent = sys::clock_monotonic_ns() - start;
            if spent >= CONNECT_WAIT_NS {
                return -1;
            }
            wait_while(&CONN_SEQ, conn, Some((CONNECT_WAIT_NS - spent).min(100_000_000)));
            continue;
        }
        let g = WrapperGuard::new();
        INFLIGHT.fetch_add(1, Ordering::SeqCst);
        if PENDING.load(Ordering::SeqCst) != 0 {
            // A checkpoint is under way: ask for the next one once it is over.
            if INFLIGHT.fetch_sub(1, Ordering::SeqCst) == 1 {
                sys::futex_wake(&INFLIGHT, u32::MAX);
            }
            drop(g);
            wait_while(&PENDING, 1, None);
            continue;
        }
        let seq = REQ_SEQ.fetch_add(1, Ordering::SeqCst) + 1;
        let sent = send_msg(fd, &ToCoord::RequestCheckpoint);
        if INFLIGHT.fetch_sub(1, Ordering::SeqCst) == 1 {
            sys::futex_wake(&INFLIGHT, u32::MAX);
        }
        drop(g);
        if sent.is_err() {
            return -1;
        }
        break seq;
    };
    loop {
        let seen = OUTCOME_SEQ.load(Ordering::Acquire);
        if EPOCH.load(Ordering::Acquire) != epoch {
            return 0;
        }
        let o = OUTCOME.load(Ordering::Acquire);
        if (o >> 32) as u32 >= my_seq {
            return i64::from(o as u32 as i32);
        }
        let _ = sys::futex_wait(&OUTCOME_SEQ, seen, None);
    }
}

/// Enter a critical section: no checkpoint stops the program until the matching
/// `cr_enable`. Nests. Waits while a checkpoint is already under way.
#[unsafe(no_mangle)]
pub extern "C" fn cr_disable() -> i32 {
    if DEPTH.with(|d| d.get()) > 0 {
        DISABLED.fetch_add(1, Ordering::SeqCst);
        DEPTH.with(|d| d.set(d.get() + 1));
        return 0;
    }
    loop {
        let g = WrapperGuard::new();
        DISABLED.fetch_add(1, Ordering::SeqCst);
        if PENDING.load(Ordering::SeqCst) == 0 || is_ckpt_thread() {
            DEPTH.with(|d| d.set(1));
            drop(g);
            return 0;
        }
        if DISABLED.fetch_sub(1, Ordering::SeqCst) == 1 {
            sys::futex_wake(&DISABLED, u32::MAX);
        }
        drop(g);
        wait_while(&PENDING, 1, None);
    }
}

/// Leave a critical section. -1 when this thread is not in one.
#[unsafe(no_mangle)]
pub extern "C" fn cr_enable() -> i32 {
    let depth = DEPTH.with(|d| d.get());
    if depth == 0 {
        return -1;
    }
    DEPTH.with(|d| d.set(depth - 1));
    if DISABLED.fetch_sub(1, Ordering::SeqCst) == 1 {
        sys::futex_wake(&DISABLED, u32::MAX);
    }
    0
}

/// Do not checkpoint descriptor `fd` (after a restart it is closed). -1 when `fd` is
/// negative or 64 descriptors are marked already.
#[unsafe(no_mangle)]
pub extern "C" fn cr_ignore_fd(fd: i32) -> i32 {
    if fd < 0 {
        return -1;
    }
    if is_ignored_fd(fd) {
        return 0;
    }
    for s in &IGNORED_FDS {
        if s.compare_exchange(-1, fd, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            return 0;
        }
    }
    -1
}

/// Checkpoint `fd` again.
#[unsafe(no_mangle)]
pub extern "C" fn cr_unignore_fd(fd: i32) -> i32 {
    let mut found = -1;
    for s in &IGNORED_FDS {
        if fd >= 0 && s.compare_exchange(fd, -1, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            found = 0;
        }
    }
    found
}

/// Register a hook run before each checkpoint (before the program is stopped).
#[unsafe(no_mangle)]
pub extern "C" fn cr_on_checkpoint(f: Option<HookFn>, arg: *mut libc::c_void) -> i32 {
    register(&BEFORE_HOOKS, f, arg)
}

/// Register a hook run when the program runs again after a checkpoint.
#[unsafe(no_mangle)]
pub extern "C" fn cr_on_resume(f: Option<HookFn>, arg: *mut libc::c_void) -> i32 {
    register(&RESUME_HOOKS, f, arg)
}

/// Register a hook run after the program was restarted from a checkpoint.
#[unsafe(no_mangle)]
pub extern "C" fn cr_on_restart(f: Option<HookFn>, arg: *mut libc::c_void) -> i32 {
    register(&RESTART_HOOKS, f, arg)
}
