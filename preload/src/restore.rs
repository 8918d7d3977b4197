//! The second half of a restart, running inside the restored process.
//!
//! `crust-restorer` has put every memory area back (the preload's own code and data
//! included) and jumps to [`crust_restart_entry`] on a stack reserved in this library.
//! From here on the process *is* the checkpointed program again, with one thread. This
//! code then:
//!
//! 1. forgets the scratch arena and unmaps the restorer and its plan;
//! 2. gives the main thread its kernel registrations back (clear-tid address, robust
//!    futex list, rseq) and patches glibc's cached tid (`pthread->tid`);
//! 3. maps virtual ids to the new real ones;
//! 4. reinstalls every signal action, interval timer and pending signal;
//! 5. recreates the checkpoint thread (fresh, on its old stack and thread descriptor) and
//!    every application thread: each new kernel thread gets its old TLS, registers
//!    robust list and rseq, waits at a gate, then does `rt_sigreturn` on the signal frame
//!    it was stopped in, which restores all of its registers, FPU state and signal mask;
//! 6. opens the gate and does the same `rt_sigreturn` for the main thread.

use crate::quiesce::{self, ThreadSlot};
use crate::sys::{self, sc};
use core::sync::atomic::{AtomicU32, Ordering};
use crust_restorer::{PlanPid, RestartArgs, ARGS_MAGIC};

/// Stack for the restart path (the restorer jumps here with `rsp` at its top).
#[repr(C, align(64))]
pub struct RestartStack(pub [u8; 256 * 1024]);
pub static mut RESTART_STACK: RestartStack = RestartStack([0; 256 * 1024]);

pub fn restart_stack_top() -> u64 {
    // SAFETY: only the address is taken.
    let base = core::ptr::addr_of!(RESTART_STACK) as u64;
    (base + 256 * 1024 - 64) & !15
}

/// Signal actions, interval timers and pending signals saved at checkpoint time.
pub struct SavedProcess {
    pub actions: [sys::KSigaction; 65],
    pub itimers: [[i64; 4]; 3],
    pub shared_pending: u64,
    pub thread_pending: [u64; quiesce::MAX_THREADS],
    pub vtids: [i32; quiesce::MAX_THREADS],
    /// Real pid when the image was taken.
    pub old_pid: i32,
    pub generation: u64,
    /// Process-directed pending signals with their full siginfo (queued values included).
    pub shared_infos: [[u64; 16]; MAX_QUEUED],
    pub n_shared_infos: usize,
}

/// Most process-directed pending signals kept with their siginfo.
pub const MAX_QUEUED: usize = 256;

pub static mut SAVED: SavedProcess = SavedProcess {
    actions: [sys::KSigaction { handler: 0, flags: 0, restorer: 0, mask: 0 }; 65],
    itimers: [[0; 4]; 3],
    shared_pending: 0,
    thread_pending: [0; quiesce::MAX_THREADS],
    vtids: [0; quiesce::MAX_THREADS],
    old_pid: 0,
    generation: 0,
    shared_infos: [[0; 16]; MAX_QUEUED],
    n_shared_infos: 0,
};

/// Take every process-directed pending signal off the queue (this thread blocks them
/// all, so `rt_sigtimedwait` takes them from the shared queue), keep its siginfo, and queue
/// it again at once. The saved copies are queued again at restart.
fn save_shared_pending(s: &mut SavedProcess, mask: u64) {
    s.n_shared_infos = 0;
    if mask == 0 {
        return;
    }
    let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    while s.n_shared_infos < MAX_QUEUED {
        let mut info = [0u64; 16];
        // SAFETY: valid set, siginfo buffer and timeout.
        let r = unsafe { sc!(libc::SYS_rt_sigtimedwait, &mask as *const u64, info.as_mut_ptr(), &zero as *const libc::timespec, 8) };
        if r <= 0 {
            break;
        }
        s.shared_infos[s.n_shared_infos] = info;
        s.n_shared_infos += 1;
    }
    requeue_shared(s, sys::getpid());
}

fn requeue_shared(s: &SavedProcess, pid: i32) {
    for info in &s.shared_infos[..s.n_shared_infos] {
        let sig = info[0] as u32 as i32;
        // SAFETY: a siginfo we dequeued ourselves; queueing to our own process is allowed
        // for every si_code.
        unsafe { sc!(libc::SYS_rt_sigqueueinfo, pid, sig, info.as_ptr()) };
    }
}

/// The checkpoint thread's descriptor, recorded when it starts.
#[derive(Clone, Copy, Default)]
pub struct CkptThreadInfo {
    pub fs_base: u64,
    pub clear_tid_addr: u64,
    pub robust_head: u64,
    pub robust_len: u64,
    pub rseq_addr: u64,
    pub stack_top: u64,
}
pub static mut CKPT_INFO: CkptThreadInfo =
    CkptThreadInfo { fs_base: 0, clear_tid_addr: 0, robust_head: 0, robust_len: 0, rseq_addr: 0, stack_top: 0 };

/// Set once a restart has happened (the checkpoint thread reports it).
pub static RESTARTED_FROM: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
/// Errno of PR_SET_MM_MAP in the restorer (0 = brk and friends restored).
pub static MM_ERRNO: core::sync::atomic::AtomicI32 = core::sync::atomic::AtomicI32::new(0);

/// Record signal actions, timers and pending signals (threads stopped).
pub fn save_process_state() {
    // SAFETY: only the checkpoint thread writes SAVED, while application threads are stopped.
    let s = unsafe { &mut *core::ptr::addr_of_mut!(SAVED) };
    let ours = crate::config::get().signal;
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP || sig == ours {
            continue;
        }
        let mut a = sys::KSigaction::default();
        let _ = sys::rt_sigaction(sig, None, Some(&mut a));
        s.actions[sig as usize] = a;
    }
    for (i, t) in s.itimers.iter_mut().enumerate() {
        let mut v = [0i64; 4];
        // SAFETY: v is a valid struct itimerval.
        unsafe { sc!(sys::SYS_getitimer, i, v.as_mut_ptr()) };
        *t = v;
    }
    let status = crate::procfs::read_string(b"/proc/self/status");
    s.shared_pending = crate::procfs::status_value(&status, "ShdPnd:", 16).unwrap_or(0);
    for (i, slot) in quiesce::slots().iter().enumerate() {
        let st = crate::procfs::read_string(std::format!("/proc/self/task/{}/status", slot.real_tid).as_bytes());
        s.thread_pending[i] = crate::procfs::status_value(&st, "SigPnd:", 16).unwrap_or(0) & !(1u64 << (ours - 1));
        s.vtids[i] = crate::vpid::to_virtual(slot.real_tid);
    }
    s.shared_pending &= !(1u64 << (ours - 1));
    let mask = s.shared_pending;
    save_shared_pending(s, mask);
    s.old_pid = sys::getpid();
    crate::vpid::VPID.store(crate::vpid::vpid(), Ordering::Relaxed);
}

/// What a new thread needs, read by the assembly in [`clone_thread`].
#[repr(C)]
pub struct CloneReq {
    pub flags: u64,
    pub stack: u64,
    pub ptid: u64,
    pub ctid: u64,
    pub tls: u64,
    pub robust_head: u64,
    pub robust_len: u64,
    pub rseq_addr: u64,
    pub rseq_len: u64,
    pub rseq_sig: u64,
    pub name: [u8; 16],
    /// 0: `rt_sigreturn` on the frame at `stack`; 1: call `func(req)` on `stack`.
    pub mode: u64,
    pub func: u64,
    pub gate: u64,
}

static mut CLONE_REQS: [CloneReq; quiesce::MAX_THREADS + 1] = [const {
    CloneReq {
        flags: 0,
        stack: 0,
        ptid: 0,
        ctid: 0,
        tls: 0,
        robust_head: 0,
        robust_len: 0,
        rseq_addr: 0,
        rseq_len: 0,
        rseq_sig: 0,
        name: [0; 16],
        mode: 0,
        func: 0,
        gate: 0,
    }
}; quiesce::MAX_THREADS + 1];

/// Threads wait here until the whole process is back.
static GATE: AtomicU32 = AtomicU32::new(0);

/// Create a kernel thread as described by `req`; returns its tid (or -errno).
#[unsafe(naked)]
unsafe extern "C" fn clone_thread(req: *const CloneReq) -> i64 {
    core::arch::naked_asm!(
        "push r12",
        "mov r12, rdi",
        "mov rdi, [r12]",
        "mov rsi, [r12 + 8]",
        "mov rdx, [r12 + 16]",
        "mov r10, [r12 + 24]",
        "mov r8, [r12 + 32]",
        "mov eax, 56",
        "syscall",
        "test rax, rax",
        "jz 2f",
        "pop r12",
        "ret",
        // Child: rsp = req.stack, r12 = req.
        "2:",
        "mov rdi, [r12 + 40]",
        "test rdi, rdi",
        "jz 3f",
        "mov rsi, [r12 + 48]",
        "mov eax, 273", // set_robust_list
        "syscall",
        "3:",
        "mov rdi, [r12 + 56]",
        "test rdi, rdi",
        "jz 4f",
        "mov esi, [r12 + 64]",
        "xor edx, edx",
        "mov r10d, [r12 + 72]",
        "mov eax, 334", // rseq
        "syscall",
        "4:",
        "mov edi, 15", // PR_SET_NAME
        "lea rsi, [r12 + 80]",
        "mov eax, 157",
        "syscall",
        "5:",
        "mov rdi, [r12 + 112]",
        "test rdi, rdi",
        "jz 6f",
        "mov eax, [rdi]",
        "test eax, eax",
        "jnz 6f",
        "mov esi, 128", // FUTEX_WAIT_PRIVATE
        "xor edx, edx",
        "xor r10d, r10d",
        "mov eax, 202",
        "syscall",
        "jmp 5b",
        "6:",
        "cmp qword ptr [r12 + 96], 0",
        "jne 7f",
        "mov eax, 15", // rt_sigreturn on the frame at rsp
        "syscall",
        "ud2",
        "7:",
        "mov rdi, r12",
        "mov rax, [r12 + 104]",
        "and rsp, -16",
        "call rax",
        "xor edi, edi",
        "mov eax, 60",
        "syscall",
        "ud2",
    );
}

const SYS_CLOSE_RANGE: i64 = 436;

/// Process ids of the restored tree, copied out of the plan.
static mut PID_TABLE: [PlanPid; 4096] = [PlanPid { virt: 0, real: 0, old_real: 0, flags: 0 }; 4096];

fn new_real(pids: &[PlanPid], old: i64) -> i64 {
    pids.iter().find(|p| p.old_real as i64 == old && old > 0).map_or(old, |p| p.real as i64)
}

/// If the thread whose signal frame is at `uc` is about to (re)issue `wait4` or `waitid`
/// for a pid or process group, replace the old kernel id in the argument register by
/// the new one.
fn fix_interrupted_pid_args(uc: u64, pids: &[PlanPid]) {
    if uc == 0 || pids.is_empty() {
        return;
    }
    // ucontext_t: the general registers start at byte 40: r8..r15, rdi, rsi, rbp, rbx,
    // rdx, rax, rcx, rsp, rip.
    let gregs = (uc + 40) as *mut i64;
    // SAFETY: the frame is in restored memory, written by the kernel at checkpoint time.
    unsafe {
        let rip = *gregs.add(16) as u64;
        if rip == 0 {
            return;
        }
        // Only a thread sitting on a `syscall` instruction is about to run this call.
        let insn = core::ptr::read_unaligned(rip as *const [u8; 2]);
        if insn != [0x0f, 0x05] {
            return;
        }
        let nr = *gregs.add(13);
        let rdi = gregs.add(8);
        let rsi = gregs.add(9);
        match nr {
            n if n == libc::SYS_wait4 => {
                let pid = *rdi as i32 as i64;
                if pid > 0 {
                    *rdi = new_real(pids, pid);
                } else if pid < -1 {
                    *rdi = -new_real(pids, -pid);
                }
            }
            n if n == libc::SYS_waitid => {
                let idtype = *rdi as i32;
                if idtype == libc::P_PID as i32 || idtype == libc::P_PGID as i32 {
                    *rsi = new_real(pids, *rsi as i32 as i64);
                }
            }
            _ => {}
        }
    }
}

/// Resume the main thread: `rt_sigreturn` on its frame.
#[unsafe(naked)]
unsafe extern "C" fn sigreturn_on(uc: u64) -> ! {
    core::arch::naked_asm!("mov rsp, rdi", "mov eax, 15", "syscall", "ud2");
}

fn thread_flags(clear_tid: u64) -> u64 {
    let mut f = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM
        | libc::CLONE_SETTLS) as u64;
    if clear_tid != 0 {
        f |= (libc::CLONE_PARENT_SETTID | libc::CLONE_CHILD_CLEARTID) as u64;
    }
    f
}

fn fatal(msg: &str) -> ! {
    sys::eprint(b"crust: restart failed: ");
    sys::eprint(msg.as_bytes());
    sys::eprint(b"\n");
    sys::exit_group(70);
}

/// Entry point after the restorer put memory back. Never returns: the thread becomes the
/// program's main thread again.
///
/// # Safety
/// Only the restorer may call this, on the restart stack, with valid arguments.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crust_restart_entry(args: *const RestartArgs) -> ! {
    crate::heap::forget_scratch();
    sys::sigprocmask(libc::SIG_SETMASK, Some(!0u64));
    // SAFETY: the restorer passes a pointer into its plan, valid until we unmap it.
    let a = unsafe { core::ptr::read(args) };
    if a.magic != ARGS_MAGIC {
        fatal("bad restart arguments");
    }
    // The tree's ids live in the plan: keep them before it goes.
    // SAFETY: PID_TABLE is only used on this single-threaded path; the table lies in the plan.
    let pids: &[PlanPid] = unsafe {
        let t = &mut *core::ptr::addr_of_mut!(PID_TABLE);
        let n = if a.pids_addr != 0 { (a.n_pids as usize).min(t.len()) } else { 0 };
        core::ptr::copy_nonoverlapping(a.pids_addr as *const PlanPid, t.as_mut_ptr(), n);
        &t[..n]
    };
    // SAFETY: the plan is still mapped; remember which runs were mapped from the image.
    unsafe { crate::mapped::record_from_plan(&a) };
    // SAFETY: the restorer and its plan are no longer executing or needed.
    unsafe {
        let _ = sys::munmap(a.restorer_start as usize, (a.restorer_end - a.restorer_start) as usize);
        let _ = sys::munmap(a.plan_addr as usize, a.plan_len as usize);
    }
    sys::close(a.plan_fd);
    crate::dump::note_restored_image(a.image_fd);
    sys::close(a.image_fd);
    // fds of ours the image recorded (the coordinator connection, the image file being
    // written in stop-the-world mode, the writer's report pipe) belonged to the old
    // process; the same numbers may be the program's now, and the close wrapper refuses to
    // close an fd of ours. Forgotten here, before any thread of the program runs again:
    // the new checkpoint thread, which would otherwise do it, may start later than they.
    for s in &crate::dump::OWN_FDS {
        s.store(-1, Ordering::Release);
    }
    if a.err_fd >= 0 {
        sys::close(a.err_fd);
    }
    // SysV IPC: new ids, segments attached again (crrestart's memfd is among its fds).
    if let Err(e) = crate::wrap_ipc::after_restart(a.close_from) {
        fatal(e);
    }
    if a.close_from > 2 {
        // crrestart's shared-memory objects (mapped by now) and anything else of its own.
        // SAFETY: these fds are not the program's (all of its fds are below close_from).
        unsafe { sc!(SYS_CLOSE_RANGE, a.close_from, u32::MAX, 0) };
    }
    // The restorer's AIO context: destroyed by the checkpoint thread, not on the way to
    // the program (io_destroy waits for an RCU grace period).
    crate::dump::defer_aio_destroy(a.aio_ctx);
    MM_ERRNO.store(a.mm_errno, Ordering::Relaxed);
    RESTARTED_FROM.store(a.generation, Ordering::Relaxed);
    crate::wrap_pids::EXE_IS_RESTORER.store(true, Ordering::Relaxed);
    // Not registered with the coordinator yet (exec waits for it: wrap_proc.rs).
    crate::ckpt_thread::FIRST_CONTACT.store(0, Ordering::Release);
    crate::wrap_proc::set_notify_fd(-1);
    let coord_len = a.coord.iter().position(|&c| c == 0).unwrap_or(0);
    if coord_len > 0 {
        crate::config::set_coord(std::string::String::from_utf8_lossy(&a.coord[..coord_len]).into_owned());
    }

    let new_pid = sys::getpid();
    // SAFETY: restored static state, single thread.
    let saved = unsafe { &*core::ptr::addr_of!(SAVED) };
    let slots: &[ThreadSlot] = quiesce::slots();
    let vpid = crate::vpid::VPID.load(Ordering::Relaxed);
    // Every real id changed: forget the old mappings, then learn the tree's.
    crate::vpid::clear();
    crate::vpid::set(vpid, new_pid);
    for p in pids {
        if p.flags & crust_restorer::PID_GROUP_ONLY != 0 {
            crate::vpid::insert_group(p.virt, p.real);
        } else if p.virt != vpid {
            crate::vpid::set(p.virt, p.real);
        }
    }

    let Some(main_idx) = slots.iter().position(|s| s.real_tid == saved.old_pid) else {
        fatal("the image has no main thread");
    };
    let main = slots[main_idx];
    // SAFETY: registering this thread's own kernel state; addresses are in restored memory.
    unsafe {
        // The thread pointer: the restorer ran without one.
        sc!(sys::SYS_arch_prctl, 0x1002, main.fs_base);
        if main.clear_tid_addr != 0 {
            sc!(sys::SYS_set_tid_address, main.clear_tid_addr);
            *(main.clear_tid_addr as *mut i32) = new_pid;
        }
        if main.robust_head != 0 {
            sc!(sys::SYS_set_robust_list, main.robust_head, main.robust_len);
        }
        if main.rseq_addr != 0 {
            sc!(sys::SYS_rseq, main.rseq_addr, main.rseq_len, 0, main.rseq_sig);
        }
        sc!(sys::SYS_prctl, libc::PR_SET_NAME, main.name.as_ptr());
    }

    // Signal actions (ours included).
    let ours = crate::config::get().signal;
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        if sig == ours {
            let _ = sys::rt_sigaction(sig, Some(&quiesce::our_action()), None);
        } else {
            let _ = sys::rt_sigaction(sig, Some(&saved.actions[sig as usize]), None);
        }
    }

    quiesce::reset_after_restart();
    GATE.store(0, Ordering::Release);

    // SAFETY: CLONE_REQS is used only here, single-threaded until the gate opens.
    let reqs = unsafe { &mut *core::ptr::addr_of_mut!(CLONE_REQS) };
    // The checkpoint thread, fresh.
    // SAFETY: recorded when it first started; restored with memory.
    let ck = unsafe { core::ptr::read(core::ptr::addr_of!(CKPT_INFO)) };
    if ck.fs_base != 0 {
        let r = &mut reqs[quiesce::MAX_THREADS];
        r.flags = thread_flags(ck.clear_tid_addr);
        r.stack = ck.stack_top;
        r.ptid = ck.clear_tid_addr;
        r.ctid = ck.clear_tid_addr;
        r.tls = ck.fs_base;
        r.robust_head = ck.robust_head;
        r.robust_len = ck.robust_len;
        r.rseq_addr = ck.rseq_addr;
        r.rseq_len = if ck.rseq_addr != 0 { 32 } else { 0 };
        r.rseq_sig = quiesce::RSEQ_SIG as u64;
        r.name = *b"crust-ckpt\0\0\0\0\0\0";
        r.mode = 1;
        r.func = crate::ckpt_thread::restart_main as *const () as u64;
        r.gate = GATE.as_ptr() as u64;
        // SAFETY: r describes a valid stack and thread descriptor.
        let tid = unsafe { clone_thread(r) };
        if tid < 0 {
            fatal("cannot recreate the checkpoint thread");
        }
    }
    for (i, s) in slots.iter().enumerate() {
        if i == main_idx {
            continue;
        }
        let r = &mut reqs[i];
        r.flags = thread_flags(s.clear_tid_addr);
        r.stack = s.ucontext;
        r.ptid = s.clear_tid_addr;
        r.ctid = s.clear_tid_addr;
        r.tls = s.fs_base;
        r.robust_head = s.robust_head;
        r.robust_len = s.robust_len;
        r.rseq_addr = s.rseq_addr;
        r.rseq_len = s.rseq_len as u64;
        r.rseq_sig = s.rseq_sig as u64;
        r.name = s.name;
        r.mode = 0;
        r.func = 0;
        r.gate = GATE.as_ptr() as u64;
        // SAFETY: the frame and TLS are in restored memory.
        let tid = unsafe { clone_thread(r) };
        if tid < 0 {
            fatal("cannot recreate a thread");
        }
        crate::vpid::set(saved.vtids[i], tid as i32);
    }

    // Interval timers.
    for (i, t) in saved.itimers.iter().enumerate() {
        if t.iter().any(|&v| v != 0) {
            // SAFETY: t is a valid struct itimerval.
            unsafe { sc!(sys::SYS_setitimer, i, t.as_ptr(), 0) };
        }
    }
    // POSIX timers, with their ids (threads exist: a timer may target one).
    if let Err(e) = crate::posix_timers::restore() {
        fatal(&e);
    }
    // Close-on-exec flags (fds were opened by crrestart without them, to survive exec).
    // SAFETY: restored static state.
    let bits = unsafe { &*core::ptr::addr_of!(crate::dump::CLOEXEC_BITS) };
    for (w, &b) in bits.iter().enumerate() {
        if b == 0 {
            continue;
        }
        for bit in 0..64 {
            if b & (1 << bit) != 0 {
                let _ = sys::fcntl((w * 64 + bit) as i32, libc::F_SETFD, libc::FD_CLOEXEC as usize);
            }
        }
    }
    // Pending signals, raised again.
    requeue_shared(saved, new_pid);
    for i in 0..slots.len() {
        let p = saved.thread_pending[i];
        if p != 0 {
            let tid = crate::vpid::to_real(saved.vtids[i]);
            for sig in 1..=64 {
                if p & (1u64 << (sig - 1)) != 0
                    && !crate::posix_timers::requeue_thread_signal(new_pid, tid, saved.vtids[i], sig)
                {
                    let _ = sys::tgkill(new_pid, tid, sig);
                }
            }
        }
    }
    // System calls interrupted by the checkpoint run again with the arguments they had:
    // a wait for a child by its old kernel pid must wait for the child's new pid.
    for s in slots {
        fix_interrupted_pid_args(s.ucontext, pids);
        crate::wrap_ipc::fix_interrupted_args(s.ucontext);
    }
    crate::api::after_restart();
    quiesce::writer_unlock();
    GATE.store(1, Ordering::Release);
    sys::futex_wake(&GATE, u32::MAX);
    // SAFETY: the main thread's frame is in restored memory.
    unsafe { sigreturn_on(main.ucontext) }
}
