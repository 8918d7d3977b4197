//! The checkpoint thread: one per process, connected to the coordinator.
//!
//! It is created with the real `pthread_create` (so glibc knows it and its TLS works),
//! blocks every signal except glibc's internal SIGCANCEL/SIGSETXID, and serves the
//! coordinator's checkpoint requests (see `crust_format::wire` for the barrier phases).
//! At restart it is recreated from scratch on its old stack by `restore.rs` and starts
//! again in [`restart_main`].
//!
//! The coordinator connection is a TCP socket moved to a high fd number and marked as
//! ours, so the program's fd scans, close loops and dup2 calls leave it alone.

use crate::quiesce;
use crate::restore;
use crate::sys::{self, sc};
use core::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use crust_format::wire::{self, FromCoord, ImageReport, Phase, ToCoord};
use std::string::{String, ToString};

/// The coordinator socket (-1 when disconnected).
pub static COORD_FD: AtomicI32 = AtomicI32::new(-1);
/// The computation this process belongs to (0 = not yet known).
pub static COMP_ID: AtomicU64 = AtomicU64::new(0);

/// Set (and futex-woken) once the first attempt to register with the coordinator ended,
/// either way; `init` waits for it so a program is known to the coordinator before its
/// `main` runs.
pub static FIRST_CONTACT: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

fn first_contact_done() {
    if FIRST_CONTACT.load(Ordering::Acquire) == 0 {
        // A parent waiting in fork/posix_spawn/popen for our registration (wrap_proc.rs);
        // before the flag, so a program that execs right after never carries the fd on.
        crate::wrap_proc::registered();
    }
    if FIRST_CONTACT.swap(1, Ordering::AcqRel) == 0 {
        sys::futex_wake(&FIRST_CONTACT, u32::MAX);
    }
}

/// Wait (bounded) until the checkpoint thread has registered or given up once.
pub fn wait_first_contact(timeout_ns: u64) {
    let start = sys::clock_monotonic_ns();
    while FIRST_CONTACT.load(Ordering::Acquire) == 0 {
        let spent = sys::clock_monotonic_ns() - start;
        if spent >= timeout_ns {
            return;
        }
        let _ = sys::futex_wait(&FIRST_CONTACT, 0, Some(timeout_ns - spent));
    }
}

/// Lowest fd number used for the preload's own descriptors.
const OWN_FD_BASE: usize = 1000;

type PthreadCreate =
    unsafe extern "C" fn(*mut libc::pthread_t, *const libc::pthread_attr_t, extern "C" fn(*mut libc::c_void) -> *mut libc::c_void, *mut libc::c_void) -> i32;

/// Start the checkpoint thread (at load time, and in a forked child).
pub fn start() {
    let Some(create) = crate::wrappers::real::<PthreadCreate>(&crate::wrappers::REAL_PTHREAD_CREATE) else { return };
    // The new thread inherits our signal mask: create it with everything blocked.
    let old = sys::sigprocmask(libc::SIG_SETMASK, Some(!0u64));
    let mut t: libc::pthread_t = 0;
    // SAFETY: attributes are plain old data initialised by libc.
    unsafe {
        let mut attr: libc::pthread_attr_t = core::mem::zeroed();
        libc::pthread_attr_init(&mut attr);
        libc::pthread_attr_setstacksize(&mut attr, 1 << 20);
        libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED);
        create(&mut t, &attr, thread_main, core::ptr::null_mut());
        libc::pthread_attr_destroy(&mut attr);
    }
    sys::sigprocmask(libc::SIG_SETMASK, Some(old));
}

fn unblock_glibc_internal_signals() {
    // SIGCANCEL (32) and SIGSETXID (33): glibc's setuid() broadcast waits for every thread.
    sys::sigprocmask(libc::SIG_SETMASK, Some(!(1u64 << 31) & !(1u64 << 32)));
}

extern "C" fn thread_main(_: *mut libc::c_void) -> *mut libc::c_void {
    unblock_glibc_internal_signals();
    record_self();
    serve_forever();
}

/// Entry of the recreated checkpoint thread after a restart.
pub extern "C" fn restart_main(_req: *const restore::CloneReq) {
    unblock_glibc_internal_signals();
    // The old connection belonged to the old process (the restart path forgot the other
    // fds of ours the image recorded before any thread of the program ran again).
    COORD_FD.store(-1, Ordering::Release);
    crate::writer::reset_after_restart();
    // The restorer's AIO context (its ring is a mapping of the program until then).
    crate::dump::release_direct_aio();
    WRITE_BUSY.store(0, Ordering::Release);
    if SUBREAPER.load(Ordering::Relaxed) != 0 {
        let _ = sys::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
    crate::api::on_restarted(restore::RESTARTED_FROM.load(Ordering::Relaxed));
    serve_forever();
}

/// Remember what a restart needs to recreate this thread.
fn record_self() {
    let mut info = restore::CkptThreadInfo::default();
    let marker = 0u8;
    // Restart this thread well below the frames of its current stack.
    info.stack_top = ((&marker as *const u8 as u64) - 4096) & !15;
    // SAFETY: queries of this thread's own kernel state into valid out-pointers.
    unsafe {
        sc!(sys::SYS_arch_prctl, 0x1003, &mut info.fs_base as *mut u64);
        sc!(sys::SYS_prctl, libc::PR_GET_TID_ADDRESS, &mut info.clear_tid_addr as *mut u64);
        sc!(sys::SYS_get_robust_list, 0, &mut info.robust_head as *mut u64, &mut info.robust_len as *mut u64);
        let rsize = quiesce::RSEQ_SIZE.load(Ordering::Relaxed);
        if rsize > 0 {
            let addr = info.fs_base.wrapping_add(quiesce::RSEQ_OFFSET.load(Ordering::Relaxed));
            if sc!(sys::SYS_rseq, addr, 32u32, 0, quiesce::RSEQ_SIG) == -(libc::EBUSY as isize) {
                info.rseq_addr = addr;
            }
        }
        restore::CKPT_INFO = info;
    }
}

fn sleep_ms(ms: u64) {
    let ts = libc::timespec { tv_sec: (ms / 1000) as i64, tv_nsec: ((ms % 1000) * 1_000_000) as i64 };
    // SAFETY: ts is valid.
    unsafe { sc!(libc::SYS_nanosleep, &ts as *const libc::timespec, 0) };
}

fn serve_forever() -> ! {
    let mut backoff = 50;
    loop {
        match connect() {
            Ok(fd) => {
                backoff = 50;
                if session(fd).is_err() {
                    first_contact_done();
                }
                let _no_fork = crate::wrap_proc::ConnGuard::new();
                COORD_FD.store(-1, Ordering::Release);
                crate::api::disconnected();
                crate::dump::remove_own_fd(fd);
                sys::close(fd);
            }
            Err(_) => first_contact_done(),
        }
        sleep_ms(backoff);
        backoff = (backoff * 2).min(2000);
    }
}

fn parse_addr(s: &str) -> Option<libc::sockaddr_in> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = if host == "localhost" || host.is_empty() { "127.0.0.1" } else { host };
    let mut ip = [0u8; 4];
    let mut parts = host.split('.');
    for b in ip.iter_mut() {
        *b = parts.next()?.parse().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(ip) },
        sin_zero: [0; 8],
    })
}

fn connect() -> Result<i32, i32> {
    // No fork while the socket exists but COORD_FD does not name it yet (wrap_proc.rs).
    let _no_fork = crate::wrap_proc::ConnGuard::new();
    let addr = parse_addr(&crate::config::get().coord).ok_or(libc::EINVAL)?;
    // SAFETY: plain socket creation.
    let fd = sys::check(unsafe { sc!(sys::SYS_socket, libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })? as i32;
    // SAFETY: addr is a valid sockaddr_in.
    let r = sys::check(unsafe {
        sc!(sys::SYS_connect, fd, &addr as *const libc::sockaddr_in, core::mem::size_of::<libc::sockaddr_in>())
    });
    if let Err(e) = r {
        sys::close(fd);
        return Err(e);
    }
    // Move it out of the program's way.
    let high = sys::fcntl(fd, libc::F_DUPFD_CLOEXEC, OWN_FD_BASE).map(|v| v as i32).unwrap_or(fd);
    if high != fd {
        sys::close(fd);
    }
    crate::dump::add_own_fd(high);
    COORD_FD.store(high, Ordering::Release);
    let one: i32 = 1;
    // SAFETY: valid option value.
    unsafe {
        sc!(sys::SYS_setsockopt, high, libc::IPPROTO_TCP, libc::TCP_NODELAY, &one as *const i32, 4);
    }
    Ok(high)
}

fn send(fd: i32, msg: &ToCoord) -> Result<(), String> {
    let frame = wire::encode(msg).map_err(|e| e.to_string())?;
    crate::api::send_frame(fd, &frame).map_err(|e| std::format!("send: errno {e}"))
}

pub(crate) fn recv(fd: i32) -> Result<FromCoord, String> {
    let mut prefix = [0u8; 4];
    read_exact(fd, &mut prefix)?;
    let n = wire::frame_len(prefix).map_err(|e| e.to_string())?;
    let mut body = std::vec![0u8; n];
    read_exact(fd, &mut body)?;
    wire::decode(&body).map_err(|e| e.to_string())
}

/// The next message about a generation in progress (notices such as `Completed` of an
/// earlier generation or `RequestFailed` are skipped).
fn recv_phase(fd: i32) -> Result<FromCoord, String> {
    loop {
        match recv(fd)? {
            FromCoord::Completed { .. } | FromCoord::RequestFailed { .. } => {}
            m => return Ok(m),
        }
    }
}

fn read_exact(fd: i32, buf: &mut [u8]) -> Result<(), String> {
    let mut done = 0;
    while done < buf.len() {
        match sys::read(fd, &mut buf[done..]) {
            Ok(0) => return Err("coordinator closed the connection".to_string()),
            Ok(n) => done += n,
            Err(e) => return Err(std::format!("recv: errno {e}")),
        }
    }
    Ok(())
}

fn set_recv_timeout(fd: i32, secs: i64) {
    let tv = libc::timeval { tv_sec: secs, tv_usec: 0 };
    // SAFETY: valid option value.
    unsafe {
        sc!(sys::SYS_setsockopt, fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv as *const libc::timeval, core::mem::size_of::<libc::timeval>());
    }
}

fn session(fd: i32) -> Result<(), String> {
    let cfg = crate::config::get();
    let comp = COMP_ID.load(Ordering::Relaxed);
    let restored = restore::RESTARTED_FROM.load(Ordering::Relaxed);
    send(
        fd,
        &ToCoord::HelloProcess {
            proto: wire::PROTOCOL_VERSION,
            token: cfg.token.clone(),
            comp_id: (comp != 0).then_some(comp),
            vpid: crate::vpid::vpid(),
            vppid: crate::vpid::to_virtual(sys::getppid()),
            real_pid: sys::getpid(),
            hostname: crate::dump::uname().0,
            program: cfg.program.clone(),
            args: cfg.args.clone(),
            restored_from: (restored != 0).then_some(restored),
        },
    )?;
    match recv(fd)? {
        FromCoord::Welcome { comp_id, .. } => {
            // A coordinator's settings (Settings, below) last as long as its connection.
            crate::dump::clear_compression();
            COMP_ID.store(comp_id, Ordering::Relaxed);
            crate::api::connected(fd);
            first_contact_done();
        }
        FromCoord::Rejected { reason } => {
            first_contact_done();
            // Not fatal for the program: try again later (quietly).
            sleep_ms(2000);
            return Err(reason);
        }
        _ => {
            first_contact_done();
            return Err("unexpected first message".to_string());
        }
    }
    loop {
        match recv(fd)? {
            FromCoord::Checkpoint { generation, dir, forked } => {
                // Application API: hooks, critical sections (api.rs).
                let go = crate::api::before_checkpoint(fd, generation);
                let done = match go {
                    Ok(true) => checkpoint(fd, generation, &dir, forked),
                    Ok(false) => Ok(()),
                    Err(e) => Err(e),
                };
                crate::api::after_checkpoint(generation);
                done?
            }
            m @ (FromCoord::Completed { .. } | FromCoord::RequestFailed { .. }) => crate::api::on_message(&m),
            FromCoord::Settings { compression } => crate::dump::set_compression(compression),
            FromCoord::Abort { generation, .. } => {
                // Nothing in progress here: just acknowledge.
                send(fd, &ToCoord::Reached { generation, phase: Phase::Resumed })?;
            }
            _ => {}
        }
    }
}

/// Set while a forked writer works for a generation this process has not finished yet
/// (futex word): a program that calls `exit()` meanwhile waits for it (see [`wait_at_exit`]).
static WRITE_BUSY: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

/// The flag holds the pid of the process it is about, so a child the program forks
/// meanwhile (which inherits the word) never waits for a writer that is not its own.
fn set_busy(on: bool) {
    WRITE_BUSY.store(if on { sys::getpid() as u32 } else { 0 }, Ordering::Release);
    if !on {
        sys::futex_wake(&WRITE_BUSY, u32::MAX);
    }
}

/// Called when the program exits normally (`exit()`, return from `main`): if a forked
/// writer is still writing, let this process's part of the generation end first (bounded
/// by the writer timeout), so that a checkpoint taken just before the end still counts.
/// `_exit` and the `exec` family wait too (`wrap_proc.rs`); `exit_group` and signals do
/// not: that generation then fails cleanly.
pub fn wait_at_exit() {
    let limit = (crate::config::get().writer_timeout_secs + 5) * 1_000_000_000;
    let start = sys::clock_monotonic_ns();
    let me = sys::getpid() as u32;
    loop {
        let v = WRITE_BUSY.load(Ordering::Acquire);
        let spent = sys::clock_monotonic_ns() - start;
        if v != me || spent >= limit {
            return;
        }
        let _ = sys::futex_wait(&WRITE_BUSY, v, Some((limit - spent).min(100_000_000)));
    }
}

/// Whether the program was a child subreaper at the checkpoint (restored by [`restart_main`]).
static SUBREAPER: AtomicI32 = AtomicI32::new(0);

/// One checkpoint generation, from `Checkpoint` to this process's last word on it.
/// `forked`: the coordinator runs a forked generation (a process with `CR_FORKED=0` takes
/// part but writes its image while stopped, in the capture phase).
fn checkpoint(fd: i32, generation: u64, dir: &str, forked: bool) -> Result<(), String> {
    let t0 = sys::clock_monotonic_ns();
    if let Err(quiesce::SuspendError::Timeout { detail, .. }) = quiesce::suspend_all(30_000_000_000) {
        // The message was built in the scratch arena, which resume_all gives back to the
        // kernel (its pages read as zeros then): copy it out first.
        let mut keep = [0u8; 512];
        let n = detail.len().min(keep.len());
        keep[..n].copy_from_slice(&detail.as_bytes()[..n]);
        drop(detail);
        quiesce::resume_all();
        let error = String::from_utf8_lossy(&keep[..n]).into_owned();
        return send(fd, &ToCoord::Failed { generation, error });
    }
    crate::api::suspended();
    // From here until resume_all, allocations go to the scratch arena: nothing allocated
    // here may be used after resume_all (the arena is discarded).
    restore::save_process_state();
    crate::writer::clear_shared_copies();
    let mut sub: i32 = 0;
    let _ = sys::prctl(libc::PR_GET_CHILD_SUBREAPER, &mut sub as *mut i32 as usize, 0, 0, 0);
    SUBREAPER.store(sub, Ordering::Relaxed);
    // SAFETY: single writer (this thread), application threads stopped.
    unsafe {
        restore::SAVED.generation = generation;
    }
    set_recv_timeout(fd, 600);
    let outcome = if forked {
        forked_generation(fd, generation, dir, t0)
    } else {
        stopped_generation(fd, generation, dir, t0)
    };
    set_recv_timeout(fd, 0);
    set_busy(false);
    // The image's AIO context is destroyed while the program runs (dump.rs).
    crate::dump::release_direct_aio();
    outcome
}

fn dump_request<'a>(dir: &'a str, generation: u64, facts: &'a crate::dump::StoppedFacts) -> crate::dump::DumpRequest<'a> {
    crate::dump::DumpRequest {
        dir,
        comp_id: COMP_ID.load(Ordering::Relaxed),
        generation,
        restart: crust_format::image::RestartEntry {
            entry: restore::crust_restart_entry as *const () as u64,
            stack_top: restore::restart_stack_top(),
        },
        compression: crate::dump::compression(),
        facts,
    }
}

/// Resume the program and return how long it was stopped (µs).
fn resume(t0: u64) -> u64 {
    (quiesce::resume_all() - t0) / 1000
}

/// A message kept on the stack, so it survives `resume_all` (which discards the scratch
/// arena every allocation of the stopped window lives in).
struct StackMsg {
    buf: [u8; 2048],
    len: usize,
}

impl StackMsg {
    fn new(s: &str) -> StackMsg {
        let mut m = StackMsg { buf: [0; 2048], len: s.len().min(2048) };
        m.buf[..m.len].copy_from_slice(&s.as_bytes()[..m.len]);
        m
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf[..self.len]).into_owned()
    }
}

/// What the capture phase produced.
enum Captured {
    /// A forked writer is writing the image.
    Writer(crate::writer::Writer),
    /// This process declined forking and wrote its image while stopped.
    Written { bytes: u64, memory_bytes: u64, write_us: u64 },
}

/// Wait for `Proceed(want)`; `Err("")` means Abort. Decided before resuming, so no
/// allocation of the stopped window is needed afterwards.
fn await_proceed(fd: i32, want: Phase) -> Result<(), &'static str> {
    match recv_phase(fd) {
        Ok(FromCoord::Proceed { phase, .. }) if phase == want => Ok(()),
        Ok(FromCoord::Abort { .. }) => Err(""),
        Ok(_) => Err("unexpected message from the coordinator during a checkpoint"),
        Err(_) => Err("lost the coordinator during a checkpoint"),
    }
}

/// Forked generation: Suspended → (everyone stopped) capture kernel state and create the
/// writer → Captured → (everyone captured: a consistent cut) resume at once → Resumed →
/// Written when the writer's image is durable.
fn forked_generation(fd: i32, generation: u64, dir: &str, t0: u64) -> Result<(), String> {
    let aborted = |why: &'static str| -> Result<(), String> {
        if why.is_empty() {
            send(fd, &ToCoord::Reached { generation, phase: Phase::Resumed })
        } else {
            Err(why.to_string())
        }
    };
    let go = send(fd, &ToCoord::Reached { generation, phase: Phase::Suspended })
        .map_err(|_| "lost the coordinator during a checkpoint")
        .and_then(|()| await_proceed(fd, Phase::Captured));
    if let Err(why) = go {
        resume(t0);
        return aborted(why);
    }
    // Every process of the computation is stopped now: pipes and other processes' state
    // hold still while they are captured.
    let captured = crate::dump::capture_stopped_facts(dir).and_then(|facts| {
        let req = dump_request(dir, generation, &facts);
        let write_here = || {
            let tw = sys::clock_monotonic_ns();
            crate::dump::write_image(&req).map(|res| Captured::Written {
                bytes: res.bytes,
                memory_bytes: res.memory_bytes,
                write_us: (sys::clock_monotonic_ns() - tw) / 1000,
            })
        };
        // Memory marked MADV_DONTFORK or MADV_WIPEONFORK is absent from (or zeros in) a
        // forked copy: such a process writes while stopped.
        let r = if !crate::config::get().forked || crate::mapped::has_fork_excluded_memory() {
            write_here()
        } else {
            match crate::writer::copy_shared_memory().and_then(|()| crate::writer::spawn(&req)) {
                Ok(w) => Ok(Captured::Writer(w)),
                // No writer (no memory to commit for the copy, a process limit, too much
                // shared memory for the scratch arena): write while stopped rather than
                // not at all; the downtime recorded shows it.
                Err(_) => {
                    crate::writer::clear_shared_copies();
                    write_here()
                }
            }
        };
        core::mem::forget(facts);
        r
    });
    let captured = match captured {
        Ok(c) => c,
        Err(e) => {
            // Said while still stopped (the message lives in the scratch arena); the
            // coordinator answers Abort.
            let error = StackMsg::new(&e);
            core::mem::forget(e);
            let sent = send(fd, &ToCoord::Failed { generation, error: error.text() });
            let end = sent.map_err(|_| "lost the coordinator during a checkpoint").and_then(|()| await_proceed(fd, Phase::Resumed));
            resume(t0);
            crate::writer::remove_partial_image(dir);
            return aborted(end.err().unwrap_or(""));
        }
    };
    let go = send(fd, &ToCoord::Reached { generation, phase: Phase::Captured })
        .map_err(|_| "lost the coordinator during a checkpoint")
        .and_then(|()| await_proceed(fd, Phase::Resumed));
    if go.is_ok() && matches!(captured, Captured::Writer(_)) {
        set_busy(true);
    }
    let downtime_us = resume(t0);
    if let Err(why) = go {
        if let Captured::Writer(w) = captured {
            w.kill();
            w.close();
        }
        crate::writer::remove_partial_image(dir);
        return aborted(why);
    }
    send(fd, &ToCoord::Reached { generation, phase: Phase::Resumed })?;
    let file = crust_format::manifest::image_file_name(crate::vpid::vpid());
    let writer = match captured {
        Captured::Written { bytes, memory_bytes, write_us } => {
            let report = ImageReport { file, bytes, memory_bytes, downtime_us, write_us };
            return send(fd, &ToCoord::Written { generation, report });
        }
        Captured::Writer(w) => w,
    };
    let timeout = crate::config::get().writer_timeout_secs * 1_000_000_000;
    let outcome = writer.wait(fd, timeout, || match recv(fd)? {
        FromCoord::Abort { .. } => Ok(true),
        FromCoord::Completed { .. } | FromCoord::RequestFailed { .. } => Ok(false),
        _ => Err("unexpected message while the image was being written".to_string()),
    });
    writer.close();
    match outcome {
        crate::writer::Outcome::Done(r) => {
            let report = ImageReport { file: r.file, bytes: r.bytes, memory_bytes: r.memory_bytes, downtime_us, write_us: r.write_us };
            send(fd, &ToCoord::Written { generation, report })
        }
        crate::writer::Outcome::Failed(error) => {
            crate::writer::remove_partial_image(dir);
            send(fd, &ToCoord::Failed { generation, error })
        }
        crate::writer::Outcome::Aborted => {
            crate::writer::remove_partial_image(dir);
            Ok(())
        }
    }
}

/// Wait for the coordinator's last word on the generation (Proceed(Resumed) or Abort).
fn until_end(fd: i32) -> Result<(), String> {
    match recv_phase(fd)? {
        FromCoord::Proceed { phase: Phase::Resumed, .. } | FromCoord::Abort { .. } => Ok(()),
        _ => Err("unexpected message while writing".to_string()),
    }
}

/// Stop-the-world generation: the image is written while the program is stopped; it
/// resumes on Proceed(Resumed) (or Abort), then tells the coordinator its exact downtime.
fn stopped_generation(fd: i32, generation: u64, dir: &str, t0: u64) -> Result<(), String> {
    let outcome = stopped_window(fd, generation, dir, t0);
    let downtime_us = resume(t0);
    outcome?;
    send(fd, &ToCoord::Downtime { generation, downtime_us })?;
    send(fd, &ToCoord::Reached { generation, phase: Phase::Resumed })
}

/// The part of a stop-the-world checkpoint during which the program is stopped. Returns
/// once the coordinator says Resumed or Abort (also after this process reported Failed).
fn stopped_window(fd: i32, generation: u64, dir: &str, t0: u64) -> Result<(), String> {
    send(fd, &ToCoord::Reached { generation, phase: Phase::Suspended })?;
    match recv_phase(fd)? {
        FromCoord::Proceed { phase: Phase::Written, .. } => {}
        FromCoord::Abort { .. } => return Ok(()),
        _ => return Err("unexpected message while suspended".to_string()),
    }
    let t_write = sys::clock_monotonic_ns();
    match crate::dump::capture_stopped_facts(dir).and_then(|facts| crate::dump::write_image(&dump_request(dir, generation, &facts))) {
        Ok(res) => {
            let now = sys::clock_monotonic_ns();
            let report = ImageReport {
                file: res.file_name.clone(),
                bytes: res.bytes,
                memory_bytes: res.memory_bytes,
                // Until now; the exact value follows in Downtime once resumed.
                downtime_us: (now - t0) / 1000,
                write_us: (now - t_write) / 1000,
            };
            send(fd, &ToCoord::Written { generation, report })?;
        }
        Err(e) => {
            send(fd, &ToCoord::Failed { generation, error: e })?;
        }
    }
    until_end(fd)
}
