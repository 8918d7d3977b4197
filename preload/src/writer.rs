//! The forked (copy-on-write) image writer.
//!
//! In forked mode the checkpoint thread does not write the image itself while the
//! program is stopped. Once every thread is stopped and the kernel state that a copy of
//! the process cannot see has been captured (fds, offsets, pipe contents, pending signals,
//! timers: `dump::capture_stopped_facts`, `restore::save_process_state`), it creates a
//! *writer*: a single-threaded copy-on-write copy of the process made with raw `clone`
//! calls (glibc's `fork` would take locks the stopped threads may hold, and run the
//! program's `pthread_atfork` handlers). The program resumes at once; the writer sees the
//! memory exactly as it was at the stop moment and writes it with `dump::write_image`,
//! using only raw system calls and the preload's scratch arena (no libc, no locks).
//!
//! ## Keeping the writer out of the program's sight
//! The program must never see the writer: no SIGCHLD, nothing for its `wait(-1)` or
//! `waitpid(-1, __WALL)` to reap, nothing in its list of children. So:
//!
//! 1. The checkpoint thread clones an *intermediate* with `CLONE_VM | CLONE_VFORK` and
//!    exit signal 0: it shares the memory (no page tables are copied), and the checkpoint
//!    thread sleeps until it has exited.
//! 2. The intermediate clones the writer (no `CLONE_VM`: this is the copy-on-write copy,
//!    the one expensive step, as long as a `fork`) with exit signal 0, has the kernel store
//!    the writer's pid in our memory (`CLONE_PARENT_SETTID`) and exits at once.
//! 3. The checkpoint thread reaps the intermediate by its pid (`__WALL`), all of this
//!    while the program's threads are still stopped, so the program's own `wait` calls
//!    can never see it. The writer, orphaned, is reparented to init (or to the nearest
//!    child subreaper *above* the program: if the program itself is a subreaper,
//!    `PR_SET_CHILD_SUBREAPER` is switched off during those few microseconds and back on).
//!    Left-over limit: a program that is the init of a pid namespace adopts every
//!    orphan, the writer included.
//!
//! ## Reporting and failure
//! The writer reports over a pipe made with raw `pipe2`: one record (written with a
//! single `write` of less than `PIPE_BUF` bytes, hence atomic) with the image's size or
//! the error. End of file without a record means the writer died: the generation fails
//! with a message that says so, the temporary image is removed, the previous complete
//! generation is untouched and the program runs on. A writer that does not report within
//! `CR_WRITER_TIMEOUT` seconds is killed (through a pidfd, so a recycled pid can never be
//! hit) and the generation fails naming the timeout. A writer whose program died meanwhile
//! finds the pipe closed when it reports and removes its image; in any case it arms an
//! alarm on itself (SIGALRM, default action) so an orphan can never linger forever.
//!
//! ## Shared memory
//! A copy-on-write copy does not copy `MAP_SHARED` memory: the writer would read it live,
//! while the program (or another process) changes it. So the contents of every shared
//! mapping an image stores (shared anonymous memory, memfds, deleted files: what
//! `dump::shared_contents_stored` names) are copied into the scratch arena while the
//! program is stopped ([`copy_shared_memory`]), and the writer reads them from there
//! ([`source`]). That copy is the one part of the downtime that grows with the data.

use crate::dump::{self, DumpRequest};
use crate::sys::{self, sc};
use core::sync::atomic::{AtomicI32, Ordering};
use std::format;
use std::string::{String, ToString};

const CLONE_VM: u64 = 0x0000_0100;
const CLONE_FILES: u64 = 0x0000_0400;
const CLONE_VFORK: u64 = 0x0000_4000;
const CLONE_PARENT_SETTID: u64 = 0x0010_0000;
const WALL: i32 = 0x4000_0000;
const SYS_PIDFD_OPEN: i64 = 434;
const SYS_PIDFD_SEND_SIGNAL: i64 = 424;
const SYS_CLOSE_RANGE: i64 = 436;

/// Stack of the intermediate and the writer (reserved in the scratch arena: never part
/// of an image, only touched pages cost memory).
const WRITER_STACK: usize = 8 << 20;
/// Record header magic ("CRWR").
const RECORD_MAGIC: u32 = 0x4352_5752;
/// Largest record: one atomic pipe write.
const RECORD_MAX: usize = 4000;

/// Set in the writer process only (its own copy of this static).
static IN_WRITER: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Whether this process is a forked writer. Such a writer does not use `O_DIRECT`: its
/// pages are shared copy-on-write with the program, and pinning them for a direct write
/// makes the kernel copy every one of them into the writer first (`do_wp_page` from
/// get_user_pages: 62 % of a profile, half the speed of a write through the page cache,
/// and up to the image's size of extra memory; BENCHMARKS.md).
pub fn in_writer() -> bool {
    IN_WRITER.load(Ordering::Relaxed)
}

/// The writer's pid, stored by the kernel (`CLONE_PARENT_SETTID`) through the
/// intermediate, which shares our memory.
static WRITER_TID: AtomicI32 = AtomicI32::new(0);

/// What the writer needs; lives in scratch memory, read by the writer from its copy.
struct WriterArgs<'a> {
    req: &'a DumpRequest<'a>,
    report_fd: i32,
    alarm_secs: u64,
    pause_file: Option<&'a str>,
}

/// A running writer, as seen from the checkpoint thread. Plain integers only: nothing
/// here may point into the scratch arena, which is discarded when the program resumes.
pub struct Writer {
    pub pid: i32,
    pidfd: i32,
    report_fd: i32,
}

/// What the writer said.
pub struct Report {
    pub bytes: u64,
    pub memory_bytes: u64,
    pub write_us: u64,
    pub file: String,
}

/// Result of waiting for the writer.
pub enum Outcome {
    Done(Report),
    Failed(String),
    /// The coordinator aborted the generation meanwhile (the writer was killed).
    Aborted,
}

/// Create the writer. Threads must be stopped (and stay stopped until this returns).
pub fn spawn(req: &DumpRequest) -> Result<Writer, String> {
    let cfg = crate::config::get();
    if let Some(dir) = cfg.test_writer_pause.as_deref() {
        // Test hook: `DIR/no-writer` makes creating the writer fail.
        if sys::stat(format!("{dir}/no-writer").as_bytes()).is_ok() {
            return Err("no writer (test)".to_string());
        }
    }
    let mut p = [0i32; 2];
    // SAFETY: p is a valid int[2].
    sys::check(unsafe { sc!(libc::SYS_pipe2, p.as_mut_ptr(), libc::O_CLOEXEC) })
        .map_err(|e| format!("cannot create the writer's report pipe: errno {e}"))?;
    // The read end stays in the program's fd table while the writer runs: keep it out of
    // the program's way (high number, marked as ours for close/dup2/close_range).
    let rfd = high_fd(p[0]);
    dump::add_own_fd(rfd);
    let wfd = p[1];
    // Stack for the intermediate and the writer, untouched here.
    let stack: std::vec::Vec<u8> = std::vec::Vec::with_capacity(WRITER_STACK);
    let stack_top = (stack.as_ptr() as u64 + WRITER_STACK as u64 - 64) & !15;
    core::mem::forget(stack);
    let args = WriterArgs {
        req,
        report_fd: wfd,
        alarm_secs: cfg.writer_timeout_secs + 30,
        pause_file: cfg.test_writer_pause.as_deref(),
    };
    // A subreaper program would adopt the orphaned writer: not during the handover.
    let mut sub: i32 = 0;
    let subreaper =
        sys::prctl(libc::PR_GET_CHILD_SUBREAPER, &mut sub as *mut i32 as usize, 0, 0, 0).is_ok() && sub != 0;
    if subreaper {
        let _ = sys::prctl(libc::PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0);
    }
    WRITER_TID.store(0, Ordering::SeqCst);
    // SAFETY: the intermediate runs only the assembly below on its own stack, and the
    // writer gets a private copy of this address space; `args` outlives the call (the
    // vfork semantics keep us here until the intermediate is gone).
    let ipid = unsafe {
        clone_writer(
            CLONE_VM | CLONE_VFORK | CLONE_FILES,
            stack_top,
            CLONE_PARENT_SETTID,
            WRITER_TID.as_ptr() as u64,
            writer_main as *const () as u64,
            &args as *const WriterArgs as u64,
        )
    };
    let mut result = Ok(());
    if ipid < 0 {
        result = Err(format!("cannot create the image writer (clone): errno {}", -ipid));
    } else {
        let mut status: i32 = 0;
        // SAFETY: status is a valid out-pointer; we wait for our own clone child by pid.
        let r = unsafe { sc!(libc::SYS_wait4, ipid, &mut status as *mut i32, WALL, 0) };
        let code = (status >> 8) & 0xff;
        if r == ipid as isize && status & 0x7f == 0 && code != 0 {
            result = Err(format!("cannot create the image writer (clone): errno {code}"));
        }
    }
    if subreaper {
        let _ = sys::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
    sys::close(wfd);
    let pid = WRITER_TID.load(Ordering::SeqCst);
    if result.is_ok() && pid <= 0 {
        result = Err("the image writer was not created".to_string());
    }
    if let Err(e) = result {
        dump::remove_own_fd(rfd);
        sys::close(rfd);
        return Err(e);
    }
    // SAFETY: plain system call. If the writer is already gone the pidfd is -1 and its
    // report (or the end of file) tells the rest.
    let pidfd = match sys::check(unsafe { sc!(SYS_PIDFD_OPEN, pid, 0) }) {
        Ok(fd) => {
            let h = high_fd(fd as i32);
            dump::add_own_fd(h);
            h
        }
        Err(_) => -1,
    };
    Ok(Writer { pid, pidfd, report_fd: rfd })
}

/// Move an fd of ours to a number >= 1000 (close-on-exec).
fn high_fd(fd: i32) -> i32 {
    match sys::fcntl(fd, libc::F_DUPFD_CLOEXEC, 1000) {
        Ok(h) => {
            sys::close(fd);
            h as i32
        }
        Err(_) => fd,
    }
}

/// Clone the intermediate (`flags1`, on `stack_top`), which clones the writer (`flags2`,
/// pid stored at `ptid`) and exits; the writer calls `entry(arg)` on a copy of that stack.
/// Returns the intermediate's pid or -errno.
#[unsafe(naked)]
unsafe extern "C" fn clone_writer(flags1: u64, stack_top: u64, flags2: u64, ptid: u64, entry: u64, arg: u64) -> i64 {
    core::arch::naked_asm!(
        "push r12",
        "push r13",
        "push r14",
        "push r15",
        "mov r12, r8",
        "mov r13, r9",
        "mov r14, rdx",
        "mov r15, rcx",
        // clone(flags1, stack_top, 0, 0, 0)
        "xor edx, edx",
        "xor r10d, r10d",
        "xor r8d, r8d",
        "mov eax, 56",
        "syscall",
        "test rax, rax",
        "jz 2f",
        "pop r15",
        "pop r14",
        "pop r13",
        "pop r12",
        "ret",
        // Intermediate: shares our memory, runs on stack_top, touches nothing.
        "2:",
        "mov rdi, r14",
        "xor esi, esi",
        "mov rdx, r15",
        "xor r10d, r10d",
        "xor r8d, r8d",
        "mov eax, 56",
        "syscall",
        "test rax, rax",
        "jz 3f",
        // exit(0), or exit(errno) when the clone failed.
        "xor edi, edi",
        "test rax, rax",
        "jns 4f",
        "mov rdi, rax",
        "neg rdi",
        "4:",
        "mov eax, 60",
        "syscall",
        "ud2",
        // Writer: its own copy of the memory, on its copy of the stack.
        "3:",
        "mov rdi, r13",
        "and rsp, -16",
        "call r12",
        "ud2",
    );
}

// ---------------------------------------------------------------- the writer process

/// The writer's record: header, then the file name (success) or the error (failure).
#[repr(C)]
#[derive(Clone, Copy)]
struct RecordHeader {
    magic: u32,
    ok: u32,
    bytes: u64,
    memory_bytes: u64,
    write_us: u64,
    text_len: u32,
    _pad: u32,
}
const HEADER_LEN: usize = core::mem::size_of::<RecordHeader>();

extern "C" fn writer_main(args: *const WriterArgs) -> ! {
    // SAFETY: args points into our (copied) memory, written before the clone.
    let a = unsafe { &*args };
    IN_WRITER.store(true, Ordering::Relaxed);
    // Only the alarm below may end us (besides SIGKILL): the program's handlers are
    // copies here and must never run, nor may terminal signals to the process group.
    let dfl = sys::KSigaction::default();
    let _ = sys::rt_sigaction(libc::SIGALRM, Some(&dfl), None);
    sys::sigprocmask(libc::SIG_SETMASK, Some(!(1u64 << (libc::SIGALRM - 1))));
    let it = [0i64, 0, a.alarm_secs as i64, 0];
    // SAFETY: it is a valid struct itimerval; ITIMER_REAL is this process's own.
    unsafe { sc!(sys::SYS_setitimer, 0, it.as_ptr(), 0) };
    let _ = sys::prctl(libc::PR_SET_NAME, c"crust-writer".as_ptr() as usize, 0, 0, 0);
    // Drop every fd but the report pipe: the copies would keep the program's pipes from
    // reaching end of file and its sockets open.
    // SAFETY: closing descriptors of this (writer) process only.
    unsafe {
        if a.report_fd > 0 {
            sc!(SYS_CLOSE_RANGE, 0, a.report_fd - 1, 0);
        }
        sc!(SYS_CLOSE_RANGE, a.report_fd + 1, u32::MAX, 0);
    }
    if let Some(p) = a.pause_file {
        test_pause(p, a.report_fd);
    }
    let t0 = sys::clock_monotonic_ns();
    let result = dump::write_image(a.req);
    let write_us = (sys::clock_monotonic_ns() - t0) / 1000;
    let mut rec = [0u8; HEADER_LEN + RECORD_MAX];
    let (ok, bytes, mem, text) = match &result {
        Ok(r) => (1, r.bytes, r.memory_bytes, r.file_name.as_bytes()),
        Err(e) => (0, 0, 0, e.as_bytes()),
    };
    let text = &text[..text.len().min(RECORD_MAX)];
    let h = RecordHeader {
        magic: RECORD_MAGIC,
        ok,
        bytes,
        memory_bytes: mem,
        write_us,
        text_len: text.len() as u32,
        _pad: 0,
    };
    // SAFETY: RecordHeader is plain old data of HEADER_LEN bytes.
    let hb = unsafe { core::slice::from_raw_parts(&h as *const RecordHeader as *const u8, HEADER_LEN) };
    rec[..HEADER_LEN].copy_from_slice(hb);
    rec[HEADER_LEN..HEADER_LEN + text.len()].copy_from_slice(text);
    let sent = sys::write_all(a.report_fd, &rec[..HEADER_LEN + text.len()]);
    if sent.is_err() {
        // Nobody listens any more (the program died or exec'd): the coordinator never
        // gets Written for this image, so do not leave it behind either.
        if let Ok(r) = &result {
            let _ = sys::unlink(format!("{}/{}", a.req.dir, r.file_name).as_bytes());
        }
    }
    sys::exit_group(if result.is_ok() { 0 } else { 1 });
}

/// Test hook (`CR_TEST_WRITER_PAUSE=DIR`): when `DIR/arm` exists, a writer announces its
/// pid in `DIR/writer.pid` (atomically) and waits until `DIR/arm` is gone (then it writes
/// on), until it is killed or its alarm fires, or until nobody listens on its report pipe
/// any more (the program died: then it gives up).
fn test_pause(dir: &str, report_fd: i32) {
    if sys::stat(format!("{dir}/arm").as_bytes()).is_err() {
        return;
    }
    let tmp = format!("{dir}/.writer.pid.tmp");
    if let Ok(fd) = sys::open(tmp.as_bytes(), libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, 0o644) {
        let _ = sys::write_all(fd, format!("{}\n", sys::getpid()).as_bytes());
        sys::close(fd);
        let _ = sys::rename(tmp.as_bytes(), format!("{dir}/writer.pid").as_bytes());
    }
    loop {
        // POLLERR on a pipe's write end: its read end is closed.
        let mut fds = [libc::pollfd { fd: report_fd, events: 0, revents: 0 }];
        let ts = libc::timespec { tv_sec: 0, tv_nsec: 20_000_000 };
        // SAFETY: valid pollfd and timespec.
        let r = unsafe { sc!(libc::SYS_ppoll, fds.as_mut_ptr(), 1, &ts as *const libc::timespec, 0, 8) };
        if r > 0 && fds[0].revents & (libc::POLLERR | libc::POLLHUP) != 0 {
            sys::exit_group(1);
        }
        if sys::stat(format!("{dir}/arm").as_bytes()).is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------- waiting for it

impl Writer {
    /// Wait for the writer's report, at most `timeout_ns`, while watching the coordinator
    /// connection `coord_fd` for an `Abort`. `on_coord` reads one message and says whether
    /// it aborts the generation (an error ends the wait as a failure).
    pub fn wait(&self, coord_fd: i32, timeout_ns: u64, mut on_coord: impl FnMut() -> Result<bool, String>) -> Outcome {
        let start = sys::clock_monotonic_ns();
        let mut buf = std::vec![0u8; HEADER_LEN + RECORD_MAX];
        let mut got = 0usize;
        loop {
            let spent = sys::clock_monotonic_ns() - start;
            if spent >= timeout_ns {
                self.kill();
                return Outcome::Failed(format!(
                    "the image writer (pid {}) did not finish within {} s and was killed (CR_WRITER_TIMEOUT)",
                    self.pid,
                    timeout_ns / 1_000_000_000
                ));
            }
            let mut fds = [
                libc::pollfd { fd: self.report_fd, events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: coord_fd, events: libc::POLLIN, revents: 0 },
            ];
            let left = (timeout_ns - spent).min(1_000_000_000);
            let ts = libc::timespec { tv_sec: (left / 1_000_000_000) as i64, tv_nsec: (left % 1_000_000_000) as i64 };
            let nfds = if coord_fd >= 0 { 2 } else { 1 };
            // SAFETY: fds and ts are valid; no signal mask change.
            let r = unsafe { sc!(libc::SYS_ppoll, fds.as_mut_ptr(), nfds, &ts as *const libc::timespec, 0, 8) };
            if r < 0 {
                if r == -(libc::EINTR as isize) {
                    continue;
                }
                self.kill();
                return Outcome::Failed(format!("waiting for the image writer: errno {}", -r));
            }
            if fds[0].revents != 0 {
                match sys::read(self.report_fd, &mut buf[got..]) {
                    Ok(0) => return self.parse(&buf[..got]),
                    Ok(n) => got += n,
                    Err(e) => {
                        self.kill();
                        return Outcome::Failed(format!("reading the image writer's report: errno {e}"));
                    }
                }
                if got == buf.len() {
                    return self.parse(&buf[..got]);
                }
            }
            if nfds == 2 && fds[1].revents != 0 {
                match on_coord() {
                    Ok(false) => {}
                    Ok(true) => {
                        self.kill();
                        return Outcome::Aborted;
                    }
                    Err(e) => {
                        self.kill();
                        return Outcome::Failed(e);
                    }
                }
            }
        }
    }

    fn parse(&self, rec: &[u8]) -> Outcome {
        if rec.len() < HEADER_LEN {
            return Outcome::Failed(format!(
                "the image writer (pid {}) died before finishing the image (killed, or it crashed)",
                self.pid
            ));
        }
        // SAFETY: at least HEADER_LEN bytes; RecordHeader is plain old data.
        let h = unsafe { core::ptr::read_unaligned(rec.as_ptr() as *const RecordHeader) };
        let tl = h.text_len as usize;
        if h.magic != RECORD_MAGIC || rec.len() < HEADER_LEN + tl {
            return Outcome::Failed(format!("the image writer (pid {}) sent a garbled report", self.pid));
        }
        let text = String::from_utf8_lossy(&rec[HEADER_LEN..HEADER_LEN + tl]).into_owned();
        if h.ok == 1 {
            Outcome::Done(Report { bytes: h.bytes, memory_bytes: h.memory_bytes, write_us: h.write_us, file: text })
        } else {
            Outcome::Failed(text)
        }
    }

    /// SIGKILL the writer (if still there) and wait, bounded, until it is gone (its end of
    /// the pipe closes when it exits).
    pub fn kill(&self) {
        if self.pidfd >= 0 {
            // SAFETY: plain system call on our pidfd.
            unsafe { sc!(SYS_PIDFD_SEND_SIGNAL, self.pidfd, libc::SIGKILL, 0, 0) };
        }
        let start = sys::clock_monotonic_ns();
        let mut scratch = [0u8; 512];
        while sys::clock_monotonic_ns() - start < 10_000_000_000 {
            let mut fds = [libc::pollfd { fd: self.report_fd, events: libc::POLLIN, revents: 0 }];
            let ts = libc::timespec { tv_sec: 1, tv_nsec: 0 };
            // SAFETY: valid pollfd and timespec.
            let r = unsafe { sc!(libc::SYS_ppoll, fds.as_mut_ptr(), 1, &ts as *const libc::timespec, 0, 8) };
            if r > 0 && matches!(sys::read(self.report_fd, &mut scratch), Ok(0) | Err(_)) {
                return;
            }
        }
    }

    /// Close our ends (pipe, pidfd).
    pub fn close(self) {
        for fd in [self.report_fd, self.pidfd] {
            if fd >= 0 {
                dump::remove_own_fd(fd);
                sys::close(fd);
            }
        }
    }
}

/// Remove what a failed or killed writer may have left in `dir` for this process.
pub fn remove_partial_image(dir: &str) {
    let name = crust_format::manifest::image_file_name(crate::vpid::vpid());
    let _ = sys::unlink(format!("{dir}/.{name}.tmp").as_bytes());
    let _ = sys::unlink(format!("{dir}/{name}").as_bytes());
}

/// After a restart: the writer of the checkpoint we came from belonged to the old process.
pub fn reset_after_restart() {
    WRITER_TID.store(0, Ordering::Relaxed);
    clear_shared_copies();
}

// ---------------------------------------------------------------- shared memory

/// A shared mapping `[start, end)` and where its contents were copied at the stop.
#[derive(Clone, Copy)]
struct SharedCopy {
    start: u64,
    end: u64,
    copy: u64,
}

const MAX_SHARED_COPIES: usize = 256;
static mut SHARED_COPIES: [SharedCopy; MAX_SHARED_COPIES] = [SharedCopy { start: 0, end: 0, copy: 0 }; MAX_SHARED_COPIES];
static N_SHARED_COPIES: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// Forget the copies (every checkpoint starts with none).
pub fn clear_shared_copies() {
    N_SHARED_COPIES.store(0, Ordering::Release);
}

/// Copy the contents of every shared mapping an image stores into the scratch arena.
/// Threads stopped, allocator in scratch mode (the copies are not part of the image and
/// are discarded in this process when it resumes; the writer has its own).
pub fn copy_shared_memory() -> Result<(), String> {
    clear_shared_copies();
    let maps = crate::procfs::read_maps().map_err(|e| format!("read /proc/self/maps: errno {e}"))?;
    let mut n = 0;
    for (start, end) in dump::shared_contents_stored(&maps) {
        if n == MAX_SHARED_COPIES {
            return Err(format!("more than {MAX_SHARED_COPIES} shared memory mappings; use --no-forked (CR_FORKED=0)"));
        }
        let len = (end - start) as usize;
        let layout = core::alloc::Layout::from_size_align(len, 4096).map_err(|_| "shared mapping too large".to_string())?;
        // SAFETY: a fresh block of `len` bytes from the scratch arena.
        let copy = unsafe { std::alloc::alloc(layout) };
        if copy.is_null() {
            return Err(format!("no room to copy {len} bytes of shared memory at {start:#x} (scratch arena)"));
        }
        // SAFETY: the mapping is readable (checked by shared_contents_stored) and nobody
        // writes it while every process of the computation is stopped; the block is ours.
        unsafe {
            core::ptr::copy_nonoverlapping(start as *const u8, copy, len);
            (*core::ptr::addr_of_mut!(SHARED_COPIES))[n] = SharedCopy { start, end, copy: copy as u64 };
        }
        n += 1;
    }
    N_SHARED_COPIES.store(n, Ordering::Release);
    Ok(())
}

/// Where the contents of `addr` are read from for the image: the copy taken at the stop
/// for shared memory, the address itself otherwise. A page run never crosses mappings.
pub fn source(addr: u64) -> u64 {
    let n = N_SHARED_COPIES.load(Ordering::Acquire).min(MAX_SHARED_COPIES);
    // SAFETY: entries below n were written before n was published.
    let copies = unsafe { &(&*core::ptr::addr_of!(SHARED_COPIES))[..n] };
    copies.iter().find(|c| addr >= c.start && addr < c.end).map_or(addr, |c| c.copy + (addr - c.start))
}
