//! Stopping and resuming the application's threads.
//!
//! The checkpoint thread sends the checkpoint signal to every other thread with a marked
//! `siginfo`. Each thread's handler records what a restart needs to rebuild it (most of
//! all: where its signal frame is — at restart the thread is recreated and does
//! `rt_sigreturn` on that very frame, which restores every register, the FPU/AVX state,
//! the signal mask and the alternate stack), reports in, and sleeps on a futex until the
//! checkpoint thread bumps the resume sequence.
//!
//! Handler rules: no libc, no allocation, no locks: atomics, futexes, raw syscalls, and
//! static memory reserved in advance.
//!
//! A signal that arrives while a thread is blocked in a system call makes the kernel
//! return EINTR for calls it cannot restart itself (nanosleep, poll, epoll_wait, select,
//! futex waits with timeouts...). The application must never see that EINTR, so the
//! handler rewrites its frame to execute the interrupted system call again. It learns the
//! system call number from `/proc/self/task/TID/syscall`, read by the checkpoint thread
//! just before signalling (matched on the instruction pointer and arguments), or from the
//! `mov $NR, %eax; syscall` instruction pair.
//!
//! The wrapper lock keeps threads from being stopped inside our own wrappers: wrappers
//! that change state the checkpoint reads hold it as readers, the checkpoint thread takes
//! it as the writer before signalling anyone.

use crate::sys::{self, sc};
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Marker in `si_value` of our checkpoint signals ("CRST").
pub const SIGVAL_MAGIC: i32 = 0x4352_5354;
pub const MAX_THREADS: usize = 4096;

/// One stopped thread, as recorded by its handler.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct ThreadSlot {
    pub real_tid: i32,
    pub ucontext: u64,
    pub fs_base: u64,
    pub clear_tid_addr: u64,
    pub robust_head: u64,
    pub robust_len: u64,
    pub rseq_addr: u64,
    pub rseq_len: u32,
    pub rseq_sig: u32,
    pub name: [u8; 16],
    pub ip: u64,
    pub sp: u64,
    /// Virtual tid (filled by the checkpoint thread).
    pub vtid: i32,
}

const EMPTY_SLOT: ThreadSlot = ThreadSlot {
    real_tid: 0,
    ucontext: 0,
    fs_base: 0,
    clear_tid_addr: 0,
    robust_head: 0,
    robust_len: 0,
    rseq_addr: 0,
    rseq_len: 0,
    rseq_sig: 0,
    name: [0; 16],
    ip: 0,
    sp: 0,
    vtid: 0,
};

/// Slots of stopped threads (valid from `suspend_all` until the next checkpoint; also
/// read by the restart path from restored memory).
pub static mut SLOTS: [ThreadSlot; MAX_THREADS] = [EMPTY_SLOT; MAX_THREADS];
pub static NSLOTS: AtomicUsize = AtomicUsize::new(0);
/// Threads that have reported in.
static SUSPENDED: AtomicU32 = AtomicU32::new(0);
/// Bumped to release stopped threads.
pub static RESUME_SEQ: AtomicU32 = AtomicU32::new(0);
/// Non-zero while a checkpoint is stopping threads.
static ACTIVE: AtomicU32 = AtomicU32::new(0);

/// What `/proc/self/task/TID/syscall` said just before the thread was signalled.
#[derive(Clone, Copy)]
struct PreRead {
    tid: i32,
    nr: i64,
    args: [u64; 3],
    pc: u64,
}
static mut PRE: [PreRead; MAX_THREADS] = [PreRead { tid: 0, nr: -1, args: [0; 3], pc: 0 }; MAX_THREADS];
static NPRE: AtomicUsize = AtomicUsize::new(0);

/// glibc's rseq registration: offset of the rseq area from the thread pointer and size.
pub static RSEQ_OFFSET: AtomicU64 = AtomicU64::new(0);
pub static RSEQ_SIZE: AtomicU32 = AtomicU32::new(0);
/// The signature glibc registers its rseq areas with (x86-64).
pub const RSEQ_SIG: u32 = 0x5305_3053;

/// The application's own disposition of the checkpoint signal (kept virtual).
pub static mut APP_ACTION: sys::KSigaction = sys::KSigaction { handler: 0, flags: 0, restorer: 0, mask: 0 };

// ---------------------------------------------------------------- wrapper lock

const WRITER: u32 = 1 << 31;
const WAITING: u32 = 1 << 30;
const READERS: u32 = WAITING - 1;
pub static WLOCK: AtomicU32 = AtomicU32::new(0);

/// Enter a wrapper section (may block while a checkpoint is in progress).
pub fn wrapper_enter() {
    loop {
        let v = WLOCK.load(Ordering::Acquire);
        if v & WRITER != 0 {
            let _ = sys::futex_wait(&WLOCK, v, None);
            continue;
        }
        if WLOCK.compare_exchange_weak(v, v + 1, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            return;
        }
    }
}

pub fn wrapper_exit() {
    let v = WLOCK.fetch_sub(1, Ordering::AcqRel) - 1;
    if v & READERS == 0 && v & WAITING != 0 {
        sys::futex_wake(&WLOCK, u32::MAX);
    }
}

/// RAII guard for wrapper sections.
pub struct WrapperGuard;
impl WrapperGuard {
    // Not `Default`: making one has an effect (it enters a wrapper section).
    #[allow(clippy::new_without_default)]
    pub fn new() -> WrapperGuard {
        wrapper_enter();
        WrapperGuard
    }
}
impl Drop for WrapperGuard {
    fn drop(&mut self) {
        wrapper_exit();
    }
}

fn writer_lock() {
    WLOCK.fetch_or(WAITING, Ordering::AcqRel);
    loop {
        let v = WLOCK.load(Ordering::Acquire);
        if v & READERS == 0 {
            if WLOCK.compare_exchange(v, WRITER, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                return;
            }
            continue;
        }
        let _ = sys::futex_wait(&WLOCK, v, Some(10_000_000));
    }
}

/// Release the writer lock and wake wrappers waiting for it.
pub fn writer_unlock() {
    WLOCK.store(0, Ordering::Release);
    sys::futex_wake(&WLOCK, u32::MAX);
}

// ---------------------------------------------------------------- handler

#[unsafe(naked)]
unsafe extern "C" fn restore_rt() {
    // The sa_restorer: return from a signal handler.
    core::arch::naked_asm!("mov rax, 15", "syscall", "ud2");
}

/// Install our handler for the checkpoint signal (raw syscall: not through our wrapper).
pub fn install_handler() {
    let sig = crate::config::get().signal;
    // Remember what the program inherited for this signal (SIG_IGN survives exec).
    let mut old = sys::KSigaction::default();
    let _ = sys::rt_sigaction(sig, None, Some(&mut old));
    // SAFETY: single-threaded at init.
    unsafe {
        APP_ACTION = old;
    }
    let act = sys::KSigaction {
        handler: handler as *const () as usize,
        flags: (libc::SA_SIGINFO | libc::SA_RESTART) as u64 | sys::SA_RESTORER,
        restorer: restore_rt as *const () as usize,
        mask: !0u64,
    };
    let _ = sys::rt_sigaction(sig, Some(&act), None);
    // Make sure the signal is not blocked in this (the main) thread.
    let bit = 1u64 << (sig - 1);
    sys::sigprocmask(libc::SIG_UNBLOCK, Some(bit));
    // glibc's rseq registration, if any.
    // SAFETY: dlsym with valid C strings; the symbols are plain data when present.
    unsafe {
        let off = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr());
        let size = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr());
        if !off.is_null() && !size.is_null() && *(size as *const u32) > 0 {
            RSEQ_OFFSET.store(*(off as *const isize) as u64, Ordering::Relaxed);
            RSEQ_SIZE.store(*(size as *const u32), Ordering::Relaxed);
        }
    }
}

/// Our action for the checkpoint signal (re-installed at restart).
pub fn our_action() -> sys::KSigaction {
    sys::KSigaction {
        handler: handler as *const () as usize,
        flags: (libc::SA_SIGINFO | libc::SA_RESTART) as u64 | sys::SA_RESTORER,
        restorer: restore_rt as *const () as usize,
        mask: !0u64,
    }
}

extern "C" fn handler(sig: i32, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo; read its raw words.
    let (code, pid, val) = unsafe {
        let w = info as *const i32;
        (*w.add(2), *w.add(4), *w.add(6))
    };
    let ours = code == libc::SI_QUEUE && val == SIGVAL_MAGIC && pid == sys::getpid();
    // Read the resume sequence before looking at ACTIVE: a late delivery racing with
    // resume_all then sees the new sequence and does not wait for a resume already done.
    let seq = RESUME_SEQ.load(Ordering::Acquire);
    if ours && ACTIVE.load(Ordering::Acquire) != 0 {
        // SAFETY: uc is the kernel's ucontext for this delivery.
        unsafe { suspend_self(uc as *mut libc::ucontext_t, seq) };
    } else if !ours {
        // SAFETY: forwarding the delivery as the application asked for it.
        unsafe { forward_to_app(sig, info, uc) };
    }
}

/// Deliver a checkpoint-signal the application sent (or was sent) to its own handler.
unsafe fn forward_to_app(sig: i32, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    // SAFETY: APP_ACTION is only written by sigaction wrappers (word-sized fields).
    let act = unsafe { core::ptr::read_volatile(core::ptr::addr_of!(APP_ACTION)) };
    match act.handler {
        0 => {
            // SIG_DFL for SIGUSR1/2 and most others: terminate, as the kernel would.
            let dfl = sys::KSigaction::default();
            let _ = sys::rt_sigaction(sig, Some(&dfl), None);
            sys::sigprocmask(libc::SIG_UNBLOCK, Some(1u64 << (sig - 1)));
            let _ = sys::tgkill(sys::getpid(), sys::gettid(), sig);
        }
        1 => {} // SIG_IGN
        h => {
            if act.flags & libc::SA_SIGINFO as u64 != 0 {
                // SAFETY: the application installed this SA_SIGINFO handler.
                let f: extern "C" fn(i32, *mut libc::siginfo_t, *mut libc::c_void) = unsafe { core::mem::transmute(h) };
                f(sig, info, uc);
            } else {
                // SAFETY: the application installed this one-argument handler.
                let f: extern "C" fn(i32) = unsafe { core::mem::transmute(h) };
                f(sig);
            }
        }
    }
}

unsafe fn suspend_self(uc: *mut libc::ucontext_t, seq: u32) {
    let tid = sys::gettid();
    let i = NSLOTS.fetch_add(1, Ordering::AcqRel);
    if i < MAX_THREADS {
        // SAFETY: slot i is ours alone (fetch_add), uc is valid.
        unsafe {
            let s = &mut *core::ptr::addr_of_mut!(SLOTS[i]);
            *s = EMPTY_SLOT;
            s.real_tid = tid;
            s.ucontext = uc as u64;
            let mut fs: u64 = 0;
            sc!(sys::SYS_arch_prctl, 0x1003, &mut fs as *mut u64);
            s.fs_base = fs;
            let mut cta: u64 = 0;
            sc!(sys::SYS_prctl, libc::PR_GET_TID_ADDRESS, &mut cta as *mut u64);
            s.clear_tid_addr = cta;
            let mut head: u64 = 0;
            let mut len: u64 = 0;
            sc!(sys::SYS_get_robust_list, 0, &mut head as *mut u64, &mut len as *mut u64);
            s.robust_head = head;
            s.robust_len = len;
            let rsize = RSEQ_SIZE.load(Ordering::Relaxed);
            if rsize > 0 {
                let addr = fs.wrapping_add(RSEQ_OFFSET.load(Ordering::Relaxed));
                // Registering again answers EBUSY exactly when this area is registered.
                let r = sc!(sys::SYS_rseq, addr, 32u32, 0, RSEQ_SIG);
                if r == -(libc::EBUSY as isize) {
                    s.rseq_addr = addr;
                    s.rseq_len = 32;
                    s.rseq_sig = RSEQ_SIG;
                }
            }
            sc!(sys::SYS_prctl, libc::PR_GET_NAME, s.name.as_mut_ptr());
            let g = &mut (*uc).uc_mcontext.gregs;
            s.ip = g[libc::REG_RIP as usize] as u64;
            s.sp = g[libc::REG_RSP as usize] as u64;
            restart_interrupted_syscall(tid, g);
        }
    }
    SUSPENDED.fetch_add(1, Ordering::AcqRel);
    sys::futex_wake(&SUSPENDED, 1);
    while RESUME_SEQ.load(Ordering::Acquire) == seq {
        let _ = sys::futex_wait(&RESUME_SEQ, seq, None);
    }
}

/// If our signal made a system call fail with EINTR, rewrite the frame so that the call
/// runs again when the thread resumes (here or after a restart).
unsafe fn restart_interrupted_syscall(tid: i32, g: &mut [i64; 23]) {
    let rax = g[libc::REG_RAX as usize];
    let rip = g[libc::REG_RIP as usize] as u64;
    if rax != -(libc::EINTR as i64) || rip < 2 {
        return;
    }
    // SAFETY: rip-2 .. rip were just executed, so they are mapped and readable code.
    let insn = unsafe { core::ptr::read_unaligned((rip - 2) as *const [u8; 2]) };
    if insn != [0x0f, 0x05] {
        return;
    }
    let mut nr: i64 = -1;
    let n = NPRE.load(Ordering::Acquire).min(MAX_THREADS);
    // SAFETY: PRE[..n] was written before the signal was sent.
    let pre = unsafe { &*core::ptr::addr_of!(PRE) };
    for p in &pre[..n] {
        if p.tid == tid
            && p.nr >= 0
            && p.pc == rip
            && p.args[0] == g[libc::REG_RDI as usize] as u64
            && p.args[1] == g[libc::REG_RSI as usize] as u64
            && p.args[2] == g[libc::REG_RDX as usize] as u64
        {
            nr = p.nr;
        }
    }
    if nr < 0 && (rip - 7) & !4095 == (rip - 2) & !4095 {
        // `mov $imm32, %eax` (b8 imm32) right before the syscall instruction.
        // SAFETY: same page as the syscall instruction, hence mapped.
        let b = unsafe { core::ptr::read_unaligned((rip - 7) as *const [u8; 5]) };
        if b[0] == 0xb8 {
            nr = u32::from_le_bytes([b[1], b[2], b[3], b[4]]) as i64;
        }
    }
    if (0..1024).contains(&nr) {
        g[libc::REG_RAX as usize] = nr;
        g[libc::REG_RIP as usize] = (rip - 2) as i64;
    }
}

// ---------------------------------------------------------------- checkpoint thread side

/// Why stopping the threads failed.
pub enum SuspendError {
    Timeout { tid: i32, detail: std::string::String },
}

fn list_tasks(out: &mut std::vec::Vec<i32>) {
    *out = crate::procfs::list_numbers(b"/proc/self/task");
}

fn pre_read_syscall(tid: i32) {
    let path = std::format!("/proc/self/task/{tid}/syscall");
    let mut buf = std::vec::Vec::new();
    if sys::read_file(path.as_bytes(), &mut buf).is_err() {
        return;
    }
    let s = core::str::from_utf8(&buf).unwrap_or("");
    let mut it = s.split_ascii_whitespace();
    let Some(nr) = it.next().and_then(|v| v.parse::<i64>().ok()) else { return };
    let vals: std::vec::Vec<u64> = it.map(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap_or(0)).collect();
    if nr < 0 || vals.len() < 8 {
        return;
    }
    let i = NPRE.load(Ordering::Relaxed);
    if i < MAX_THREADS {
        // SAFETY: only the checkpoint thread writes PRE, before signalling the thread.
        unsafe {
            (*core::ptr::addr_of_mut!(PRE))[i] = PreRead { tid, nr, args: [vals[0], vals[1], vals[2]], pc: vals[7] };
        }
        NPRE.store(i + 1, Ordering::Release);
    }
}

fn send_ckpt_signal(pid: i32, tid: i32, sig: i32) -> sys::SysResult<()> {
    let mut si = [0i32; 32];
    si[0] = sig;
    si[2] = libc::SI_QUEUE;
    si[4] = pid;
    // SAFETY: getuid has no arguments.
    si[5] = unsafe { sc!(libc::SYS_getuid) } as i32;
    si[6] = SIGVAL_MAGIC;
    // SAFETY: si is a valid 128-byte siginfo.
    sys::check(unsafe { sc!(libc::SYS_rt_tgsigqueueinfo, pid, tid, sig, si.as_ptr()) }).map(|_| ())
}

fn thread_state(tid: i32) -> u8 {
    let path = std::format!("/proc/self/task/{tid}/stat");
    let mut buf = std::vec::Vec::new();
    if sys::read_file(path.as_bytes(), &mut buf).is_err() {
        return b'X';
    }
    let close = buf.iter().rposition(|&c| c == b')').unwrap_or(0);
    buf.get(close + 2).copied().unwrap_or(b'?')
}

/// Stop every application thread. On success all of them sit in the handler and their
/// slots are filled. The caller must call [`resume_all`] afterwards in every case.
pub fn suspend_all(timeout_ns: u64) -> Result<usize, SuspendError> {
    writer_lock();
    // From now until resume_all no application thread can be in our code, so the
    // checkpoint thread's allocations go to the scratch arena (see heap.rs).
    crate::heap::set_scratch(true);
    let sig = crate::config::get().signal;
    let pid = sys::getpid();
    let me = sys::gettid();
    NSLOTS.store(0, Ordering::Release);
    NPRE.store(0, Ordering::Release);
    SUSPENDED.store(0, Ordering::Release);
    ACTIVE.store(1, Ordering::Release);
    let mut signaled: std::vec::Vec<i32> = std::vec::Vec::new();
    let mut tasks = std::vec::Vec::new();
    let start = sys::clock_monotonic_ns();
    loop {
        list_tasks(&mut tasks);
        let mut new = 0;
        for &t in &tasks {
            if t == me || signaled.contains(&t) {
                continue;
            }
            if thread_state(t) == b'Z' {
                continue;
            }
            pre_read_syscall(t);
            if send_ckpt_signal(pid, t, sig).is_ok() {
                signaled.push(t);
                new += 1;
            }
        }
        if new == 0 && SUSPENDED.load(Ordering::Acquire) as usize >= signaled.len() {
            break;
        }
        // Wait for every signalled thread, dropping ones that exited meanwhile.
        loop {
            let got = SUSPENDED.load(Ordering::Acquire);
            if got as usize >= signaled.len() {
                break;
            }
            let _ = sys::futex_wait(&SUSPENDED, got, Some(5_000_000));
            if sys::clock_monotonic_ns() - start > 2_000_000 {
                // Threads that vanished or became zombies will never report.
                signaled.retain(|&t| sys::tgkill(pid, t, 0).is_ok() && thread_state(t) != b'Z' || reported(t));
            }
            if sys::clock_monotonic_ns() - start > timeout_ns {
                let missing = signaled.iter().copied().find(|&t| !reported(t)).unwrap_or(0);
                return Err(SuspendError::Timeout { tid: missing, detail: blocked_detail(missing, sig) });
            }
        }
    }
    Ok(NSLOTS.load(Ordering::Acquire).min(MAX_THREADS))
}

/// Wait until every stopped thread sleeps in its futex wait for the resume: a thread
/// counts as suspended just before it gets there, and until then its last instructions
/// still write its stack (and the kernel its rseq area). An image written while the
/// threads are stopped checksums memory some time before the disk reads it, so that memory
/// must not change any more (stop-the-world writing only: a forked writer's copy is taken
/// in one instant). A thread that has not got there after [`ASLEEP_TIMEOUT_NS`] fails this
/// checkpoint rather than risk an image whose checksums do not match at restart.
pub fn wait_until_asleep() -> Result<(), std::string::String> {
    let want = &RESUME_SEQ as *const AtomicU32 as u64;
    let deadline = sys::clock_monotonic_ns() + ASLEEP_TIMEOUT_NS;
    for s in slots() {
        while !asleep_in_futex(s.real_tid, want) {
            if sys::clock_monotonic_ns() >= deadline {
                return Err(std::format!(
                    "thread {} did not reach its wait for the resume within {} s (state {}): its memory may still change, \
                     so this process's image is not written",
                    s.real_tid,
                    ASLEEP_TIMEOUT_NS / 1_000_000_000,
                    thread_state(s.real_tid) as char
                ));
            }
            let ts = libc::timespec { tv_sec: 0, tv_nsec: 20_000 };
            // SAFETY: a valid timespec; no remainder wanted.
            unsafe { sc!(libc::SYS_nanosleep, &ts as *const libc::timespec, 0) };
        }
    }
    Ok(())
}

/// How long [`wait_until_asleep`] waits for the last stopped thread (normally a few
/// microseconds: the instructions between counting as suspended and the futex wait).
const ASLEEP_TIMEOUT_NS: u64 = 5_000_000_000;

/// Whether thread `tid` is blocked in futex(`addr`, ...) (or gone).
fn asleep_in_futex(tid: i32, addr: u64) -> bool {
    let path = std::format!("/proc/self/task/{tid}/syscall");
    let mut buf = std::vec::Vec::new();
    if sys::read_file(path.as_bytes(), &mut buf).is_err() {
        return true;
    }
    let mut it = core::str::from_utf8(&buf).unwrap_or("").split_ascii_whitespace();
    it.next() == Some("202") && it.next().and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok()) == Some(addr)
}

fn reported(tid: i32) -> bool {
    let n = NSLOTS.load(Ordering::Acquire).min(MAX_THREADS);
    // SAFETY: slots below n are written (a slot is written before SUSPENDED counts it;
    // a racing reader may see a zero tid, which only delays the check).
    let slots = unsafe { &*core::ptr::addr_of!(SLOTS) };
    slots[..n].iter().any(|s| s.real_tid == tid)
}

fn blocked_detail(tid: i32, sig: i32) -> std::string::String {
    let path = std::format!("/proc/self/task/{tid}/status");
    let mut buf = std::vec::Vec::new();
    let _ = sys::read_file(path.as_bytes(), &mut buf);
    let blk = crate::procfs::status_value(&std::string::String::from_utf8_lossy(&buf), "SigBlk:", 16).unwrap_or(0);
    if blk & (1u64 << (sig - 1)) != 0 {
        std::format!("thread {tid} blocks the checkpoint signal {sig} (set with a raw rt_sigprocmask?)")
    } else {
        std::format!("thread {tid} did not respond to the checkpoint signal {sig} (state {})", thread_state(tid) as char)
    }
}

/// Let every stopped thread run again and release the wrapper lock.
/// Returns the moment (CLOCK_MONOTONIC, ns) they were woken: the end of the downtime.
pub fn resume_all() -> u64 {
    ACTIVE.store(0, Ordering::Release);
    let used = crate::heap::scratch_off();
    RESUME_SEQ.fetch_add(1, Ordering::AcqRel);
    sys::futex_wake(&RESUME_SEQ, u32::MAX);
    writer_unlock();
    let woken = sys::clock_monotonic_ns();
    // Only the checkpoint thread uses the scratch arena: its pages go back to the kernel
    // now that the program runs (a forked writer has its own copy of them).
    crate::heap::release_scratch(used);
    woken
}

/// After a restart: reset the bookkeeping that restored memory carried over.
pub fn reset_after_restart() {
    ACTIVE.store(0, Ordering::Release);
    SUSPENDED.store(0, Ordering::Release);
}

/// Slots of the threads stopped by the last `suspend_all`.
pub fn slots() -> &'static [ThreadSlot] {
    let n = NSLOTS.load(Ordering::Acquire).min(MAX_THREADS);
    // SAFETY: after suspend_all the slots are stable until the next checkpoint.
    unsafe { &(&*core::ptr::addr_of!(SLOTS))[..n] }
}
