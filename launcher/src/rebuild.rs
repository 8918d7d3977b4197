//! Rebuilding a checked process tree (see [`crate::restart`]).
//!
//! 1. crrestart creates every shared kernel object once, at fds at or above the plan's
//!    `stage_base` (above every fd number of every program): pipes (refilled with their
//!    bytes in flight), files opened by several processes through one description,
//!    memfds holding shared memory. What must exist before the tree opens it is created
//!    now, which destroys nothing: files to write back that no longer exist (with their
//!    checkpoint-time content), FIFOs, SysV objects and message queues that no longer
//!    exist (with their contents); an abandoned restart removes them again ([`Undo`]).
//!    Surviving IPC objects keep their contents until the barrier.
//! 2. The restart barrier: two pipes, and the supervisor, double-forked so that init or the
//!    nearest subreaper adopts it (no process of the tree can see it or wait for it). It
//!    holds the read end of the report pipe and the write end of the go pipe, and every
//!    change that can destroy something (see [`supervise`]).
//! 3. It becomes the root and forks the tree top-down: each process forks its own
//!    children (so they are its real children), then recreates its zombie children (a
//!    child that exits at once with the recorded status and is left unreaped); the root
//!    also double-forks the orphans so that init or the nearest subreaper adopts them.
//!    A session leader calls setsid() before forking anything.
//! 4. All processes meet at barriers in a shared anonymous mapping (atomics + futexes):
//!    once all exist, group leaders create their process groups, then members join them.
//! 5. Each process places its fds, writes its restore plan with the whole tree's
//!    virtual → new real pid table, and execs `crust-restorer` with its ends of the
//!    barrier pipes, with every signal blocked until the restored program's own mask
//!    comes back.
//! 6. Each restorer rebuilds its memory, checking page checksums as it reads, reports
//!    "verified" and waits for "go". Once every process of the tree has reported, the
//!    supervisor makes sure a coordinator answers, truncates the files the programs wrote
//!    back, writes back the saved files, gives surviving IPC objects their contents back,
//!    and says "go"; anything else abandons the restart before any program runs or any
//!    file changes.
//!
//! A failure before the exec sets a flag every barrier watches: the root then SIGKILLs
//! what was created and reports the error (the supervisor sees the report pipe close
//! without every report, removes what the rebuild created, and leaves).

use crate::restart::{ObjSpec, Src, TreePlan};
use crust_restorer::PlanPid;
use std::convert::Infallible;
use std::ffi::CString;
use std::os::fd::IntoRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Most processes one restart rebuilds.
const MAX_PROCS: usize = 4096;
/// How long a process waits at a barrier for the others.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(60);

/// The rebuild's shared state (a MAP_SHARED anonymous mapping inherited by every fork).
#[repr(C)]
struct Control {
    failed: AtomicU32,
    created: AtomicU32,
    grouped: AtomicU32,
    ready: AtomicU32,
    real: [AtomicI32; MAX_PROCS],
}

fn control() -> Result<&'static Control, String> {
    // SAFETY: a fresh anonymous shared mapping, zero-filled, which is a valid Control
    // (atomics of integers); it is never unmapped before exec.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            std::mem::size_of::<Control>(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            return Err("cannot map the restart control block".into());
        }
        Ok(&*(p as *const Control))
    }
}

fn wake(a: &AtomicU32) {
    // SAFETY: futex wake on a valid word of a shared mapping (not FUTEX_PRIVATE: the
    // waiters are other processes).
    unsafe { libc::syscall(libc::SYS_futex, a.as_ptr(), libc::FUTEX_WAKE, i32::MAX, 0, 0, 0) };
}

fn bump(a: &AtomicU32) {
    a.fetch_add(1, Ordering::AcqRel);
    wake(a);
}

fn fail_all(ctl: &Control) {
    ctl.failed.store(1, Ordering::Release);
    for a in [&ctl.failed, &ctl.created, &ctl.grouped, &ctl.ready] {
        wake(a);
    }
}

/// Wait until `a` reaches `target`, or another process failed, or the timeout.
fn barrier(ctl: &Control, a: &AtomicU32, target: u32, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + BARRIER_TIMEOUT;
    loop {
        let v = a.load(Ordering::Acquire);
        if v >= target {
            return Ok(());
        }
        if ctl.failed.load(Ordering::Acquire) != 0 {
            return Err("another process of the tree failed to restart".into());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(format!("timed out waiting for {} process(es) to {what}", target - v));
        }
        let ts = libc::timespec { tv_sec: 0, tv_nsec: 200_000_000 };
        // SAFETY: futex wait on a valid shared word with a timeout.
        unsafe { libc::syscall(libc::SYS_futex, a.as_ptr(), libc::FUTEX_WAIT, v, &ts as *const libc::timespec, 0, 0) };
    }
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Move `fd` to the lowest free number >= `base` (close-on-exec) and close the original.
fn stage(fd: i32, base: i32) -> Result<i32, String> {
    // SAFETY: fcntl/close on our own fd.
    unsafe {
        let hi = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, base);
        if hi < 0 {
            return Err(format!("cannot move fd {fd} above {base}: {}", errno()));
        }
        libc::close(fd);
        Ok(hi)
    }
}

fn write_all(fd: i32, data: &[u8]) -> Result<(), String> {
    let mut done = 0;
    while done < data.len() {
        // SAFETY: writing our buffer.
        let n = unsafe { libc::write(fd, data[done..].as_ptr() as *const libc::c_void, data.len() - done) };
        if n <= 0 {
            return Err(format!("{}", errno()));
        }
        done += n as usize;
    }
    Ok(())
}

/// Flags F_SETFL can change.
const SETTABLE: i32 = libc::O_APPEND | libc::O_ASYNC | libc::O_DIRECT | libc::O_NOATIME | libc::O_NONBLOCK;

/// What the rebuild created outside its processes (files, FIFOs, IPC objects that did not
/// exist): removed again when the restart is abandoned.
#[derive(Default)]
struct Undo {
    files: Vec<String>,
    ipc: crate::ipc::Created,
}

impl Undo {
    fn remove(&self) {
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
        self.ipc.remove();
    }
}

/// Create every shared object; returns the staged fd of each object.
fn materialize(t: &TreePlan, undo: &mut Undo) -> Result<Vec<i32>, String> {
    let base = t.stage_base;
    // SysV IPC objects and POSIX message queues that no longer exist, with their contents.
    undo.ipc = crate::ipc::materialize(&t.ipc, base)?;
    // Pipes (and FIFOs), refilled.
    let mut pipe_fds: Vec<(i32, i32)> = Vec::new();
    for p in &t.pipes {
        let what = format!("pipe {}", p.id);
        let (r, w, helper) = match &p.fifo {
            Some(path) => {
                let c = CString::new(path.as_bytes()).map_err(|_| format!("bad FIFO path {path}"))?;
                // SAFETY: a valid path; fails harmlessly when the FIFO exists.
                if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } == 0 {
                    undo.files.push(path.clone());
                }
                // SAFETY: opening a FIFO read-write never blocks on Linux; it is the writer
                // that lets the non-blocking opens of both ends succeed.
                let (h, r, w) = unsafe {
                    let h = libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK);
                    let r = libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK);
                    let w = libc::open(c.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NONBLOCK);
                    (h, r, w)
                };
                if h < 0 || r < 0 || w < 0 {
                    return Err(format!("FIFO {path}: {}", errno()));
                }
                (r, w, Some(h))
            }
            None => {
                let mut fds = [0i32; 2];
                // SAFETY: fds is a valid out-array.
                if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
                    return Err(format!("cannot create a pipe: {}", errno()));
                }
                (fds[0], fds[1], None)
            }
        };
        let wfd = helper.unwrap_or(w);
        if p.capacity > 0 {
            // SAFETY: our own pipe.
            unsafe { libc::fcntl(wfd, libc::F_SETPIPE_SZ, p.capacity as libc::c_int) };
        }
        write_all(wfd, &p.data).map_err(|e| format!("cannot refill {what} with {} bytes: {e}", p.data.len()))?;
        // SAFETY: setting status flags on our own descriptions.
        unsafe {
            libc::fcntl(r, libc::F_SETFL, p.read_flags.unwrap_or(0) & SETTABLE);
            libc::fcntl(w, libc::F_SETFL, p.write_flags.unwrap_or(0) & SETTABLE);
            if let Some(h) = helper {
                libc::close(h);
            }
        }
        pipe_fds.push((r, w));
    }
    // Shared memory.
    let mut shm_fds: Vec<i32> = Vec::new();
    for (k, s) in t.shms.iter().enumerate() {
        // A memfd gets its name back (the program may look at /proc/self/fd or maps).
        let name = CString::new(if s.name.is_empty() { format!("crust-shm-{k}") } else { s.name.clone() })
            .unwrap_or_else(|_| CString::new(format!("crust-shm-{k}")).unwrap());
        let sealing = if s.seals != 0 { libc::MFD_ALLOW_SEALING } else { 0 };
        // SAFETY: valid name.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | sealing) };
        if fd < 0 {
            return Err(format!("memfd_create: {}", errno()));
        }
        let size = s.size.max(s.content.as_ref().map_or(0, |c| c.len() as u64));
        // SAFETY: our own memfd.
        if unsafe { libc::ftruncate(fd, size as libc::off_t) } != 0 {
            return Err(format!("cannot size shared memory ({} bytes): {}", s.size, errno()));
        }
        // SAFETY: the memfd stays owned by us through its raw number (into_raw_fd below).
        let f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        if let Some(content) = &s.content {
            // A memfd also held as an fd: its whole content first (the mapped pages follow).
            f.write_all_at(content, 0).map_err(|e| format!("filling shared memory: {e}"))?;
        }
        let mut buf = Vec::new();
        for &(i, off, len, at) in &s.fills {
            // The image, or the memfd its compressed page data was unpacked into.
            let (src, img) = (&t.procs[i].pages, t.procs[i].img_path.display());
            buf.resize(len as usize, 0);
            src.read_exact_at(&mut buf, off).map_err(|e| format!("{img}: {e}"))?;
            f.write_all_at(&buf, at).map_err(|e| format!("filling shared memory: {e}"))?;
        }
        crate::kobjects::seal_shared_memfd(&f, s)?;
        shm_fds.push(f.into_raw_fd());
    }
    let mut staged = Vec::with_capacity(t.objects.len());
    for o in &t.objects {
        let fd = match o {
            ObjSpec::Open(rec) => crate::restart::open_for_fd(rec)?.into_raw_fd(),
            ObjSpec::Subst { rec, path } => crate::restart::open_substitute(rec, path)?.into_raw_fd(),
            ObjSpec::DevNull => std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map_err(|e| format!("/dev/null: {e}"))?
                .into_raw_fd(),
            ObjSpec::PipeEnd { pipe, read } => {
                let (r, w) = pipe_fds[*pipe];
                // SAFETY: duplicating our own fd.
                unsafe { libc::fcntl(if *read { r } else { w }, libc::F_DUPFD_CLOEXEC, base) }
            }
            // SAFETY: duplicating our own fd.
            ObjSpec::Shm(k) => unsafe { libc::fcntl(shm_fds[*k], libc::F_DUPFD_CLOEXEC, base) },
            ObjSpec::ShmFd { shm, rec } => crate::kobjects::open_shm_fd(shm_fds[*shm], rec)?.into_raw_fd(),
        };
        if fd < 0 {
            return Err(format!("cannot duplicate a descriptor: {}", errno()));
        }
        staged.push(if fd >= base { fd } else { stage(fd, base)? });
    }
    crate::ipc::drop_queues();
    for (r, w) in pipe_fds {
        // SAFETY: the originals; staged copies exist where needed. A pipe whose write end
        // no process holds now reads as end-of-file after its bytes.
        unsafe {
            libc::close(r);
            libc::close(w);
        }
    }
    for fd in shm_fds {
        // SAFETY: as above.
        unsafe { libc::close(fd) };
    }
    Ok(staged)
}

/// A zombie child: end the way the recorded child ended.
fn die_as(exit: crust_format::image::ChildExit) -> ! {
    // SAFETY: plain process-control calls in a freshly forked child.
    unsafe {
        if exit.code == libc::CLD_KILLED || exit.code == libc::CLD_DUMPED {
            let lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            libc::setrlimit(libc::RLIMIT_CORE, &lim);
            libc::signal(exit.status, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            libc::kill(libc::getpid(), exit.status);
            libc::_exit(128 + exit.status);
        }
        libc::_exit(exit.status)
    }
}

struct Ctx<'a> {
    t: &'a TreePlan,
    staged: &'a [i32],
    ctl: &'static Control,
    /// crrestart's own process group and session (inherited by the tree).
    outside_pgid: i32,
    outside_sid: i32,
    /// The restart barrier's pipes (the restorers' ends).
    barrier: &'a BarrierPipes,
}

/// Rebuild the tree. Returns only on error; the calling process becomes the root.
pub fn rebuild(t: &TreePlan, coordinator: Option<&std::path::Path>) -> Result<Infallible, String> {
    // SAFETY: only this process's settings: children must stay zombies (not be reaped
    // automatically), and every staged fd needs room.
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    // Nothing of crrestart's above the program's fd numbers may leak into the tree, but
    // the page sources (image files, unpacked memfds; close-on-exec) stay until each
    // restorer has its own.
    let mut keep: Vec<i32> = t.procs.iter().map(|p| std::os::fd::AsRawFd::as_raw_fd(&p.pages)).collect();
    keep.push(std::os::fd::AsRawFd::as_raw_fd(&t.err_out));
    crate::pages::close_from_except(t.stage_base, &keep);
    if t.procs.len() > MAX_PROCS {
        return Err(format!("the generation holds {} processes; crrestart rebuilds at most {MAX_PROCS}", t.procs.len()));
    }
    let ctl = control()?;
    // Files to write back that are missing now, FIFOs, IPC objects that no longer exist are
    // made at once (that destroys nothing; the fds and mappings of the tree open them, and
    // an abandoned restart removes them again); everything else that changes the programs'
    // files or objects waits for the barrier.
    let mut undo = Undo::default();
    let made = create_missing_files(t, &mut undo).and_then(|later| Ok((later, materialize(t, &mut undo)?)));
    let (later, staged) = made.inspect_err(|_| undo.remove())?;
    let barrier = BarrierPipes::new(t.stage_base).inspect_err(|_| undo.remove())?;
    start_supervisor(t, &barrier, &later, coordinator, &undo).inspect_err(|_| undo.remove())?;
    // SAFETY: the supervisor's ends: only it may hold them (see `supervise`).
    unsafe {
        libc::close(barrier.report_r);
        libc::close(barrier.go_w);
    }
    // SAFETY: plain queries.
    let (outside_pgid, outside_sid) = unsafe { (libc::getpgrp(), libc::getsid(0)) };
    let cx = Ctx { t, staged: &staged, ctl, outside_pgid, outside_sid, barrier: &barrier };
    let Err(e) = become_process(&cx, t.root);
    fail_all(ctl);
    // SAFETY: SIGKILL the processes this restart created, then reap our children.
    unsafe {
        let me = libc::getpid();
        for a in ctl.real.iter().take(t.procs.len()) {
            let pid = a.load(Ordering::Acquire);
            if pid > 0 && pid != me {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        while libc::waitpid(-1, std::ptr::null_mut(), libc::__WALL) > 0 {}
    }
    Err(e)
}

/// The restart barrier's two pipes, created before anything of the tree exists, staged
/// above every program fd number, close-on-exec (each restorer gets its two ends kept
/// across its exec).
struct BarrierPipes {
    /// Every restorer writes [`crust_restorer::BARRIER_VERIFIED`] (or `BARRIER_FAILED`)
    /// here, then closes it; the supervisor reads to end of file.
    report_r: i32,
    report_w: i32,
    /// The supervisor writes one [`crust_restorer::BARRIER_GO`] per process; its end of
    /// file (the supervisor closed it without writing, or died) means "abandon".
    go_r: i32,
    go_w: i32,
}

impl BarrierPipes {
    fn new(base: i32) -> Result<BarrierPipes, String> {
        let mut report = [0i32; 2];
        let mut go = [0i32; 2];
        // SAFETY: valid out-arrays.
        if unsafe { libc::pipe2(report.as_mut_ptr(), libc::O_CLOEXEC) != 0 || libc::pipe2(go.as_mut_ptr(), libc::O_CLOEXEC) != 0 } {
            return Err(format!("cannot create the restart barrier's pipes: {}", errno()));
        }
        Ok(BarrierPipes { report_r: stage(report[0], base)?, report_w: stage(report[1], base)?, go_r: stage(go[0], base)?, go_w: stage(go[1], base)? })
    }
}

/// Rewrites ([`TreePlan::rewrites`]) of files that are missing now: created with their
/// checkpoint-time content before anything opens them. Returns the indices of the
/// others (existing files, rewritten only after the barrier if they differ).
fn create_missing_files(t: &TreePlan, undo: &mut Undo) -> Result<Vec<usize>, String> {
    let mut later = Vec::new();
    for (k, (path, data)) in t.rewrites.iter().enumerate() {
        if std::fs::symlink_metadata(path).is_ok() {
            later.push(k);
            continue;
        }
        undo.files.push(path.clone());
        write_back(path, data)?;
    }
    Ok(later)
}

fn write_back(path: &str, data: &[u8]) -> Result<(), String> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o644);
    let mut f = o.open(path).map_err(|e| format!("{path}: cannot write its checkpoint-time content back: {e}"))?;
    std::io::Write::write_all(&mut f, data).map_err(|e| format!("{path}: cannot write its checkpoint-time content back: {e}"))
}

/// What the supervisor does once every restorer has its memory in place and checked:
/// files the programs write go back to their checkpoint-time size (so output the killed
/// run wrote after the checkpoint is neither left behind nor duplicated), files open
/// read-write whose content the images hold (databases, tmpfs files mapped shared) get
/// exactly that content back, and so do the SysV objects and message queues that
/// survived.
fn put_files_back(t: &TreePlan, later: &[usize]) -> Result<(), String> {
    crate::ipc::reset_surviving(&t.ipc)?;
    for (path, size) in &t.truncations {
        if let Ok(f) = std::fs::OpenOptions::new().write(true).open(path) {
            let _ = f.set_len(*size);
        }
    }
    for &k in later {
        let (path, data) = &t.rewrites[k];
        if std::fs::read(path).is_ok_and(|now| now == *data) {
            continue; // unchanged: left as it is (also on a read-only file system)
        }
        write_back(path, data)?;
    }
    Ok(())
}

/// Start the supervisor: double-forked (init or the nearest subreaper adopts it), so it
/// is no child of any process of the tree, which could see or wait for it.
fn start_supervisor(t: &TreePlan, b: &BarrierPipes, later: &[usize], coordinator: Option<&std::path::Path>, undo: &Undo) -> Result<(), String> {
    let mid = fork()?;
    if mid == 0 {
        if fork().unwrap_or(-1) == 0 {
            supervise(t, b, later, coordinator, undo);
        }
        // SAFETY: ends the middle process.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: reaping our own middle process.
    unsafe { libc::waitpid(mid, std::ptr::null_mut(), 0) };
    Ok(())
}

/// The supervisor: reads the restorers' reports to end of file (every restorer closes its
/// end after its report; one that dies closes it too), then, only if every process of the
/// tree reported "verified", puts the files back and writes "go" for each. Anything else
/// (a checksum failure, a restorer that died or failed to map, a process that failed
/// before its exec, a file that cannot be written back) closes the go pipe unwritten:
/// every restorer then exits without running anything. It never waits for anything but
/// the tree's processes, and exits right after "go".
fn supervise(t: &TreePlan, b: &BarrierPipes, later: &[usize], coordinator: Option<&std::path::Path>, undo: &Undo) -> ! {
    let err = std::os::fd::AsRawFd::as_raw_fd(&t.err_out);
    // SAFETY: this process's own fds: crrestart's stderr on 2, then nothing but the
    // barrier's two ends (no pipe end, image or terminal of the tree stays open here).
    unsafe {
        libc::dup2(err, 2);
        libc::close(b.report_w);
        libc::close(b.go_r);
    }
    crate::pages::close_from_except(0, &[2, b.report_r, b.go_w]);
    let n = t.procs.len();
    let (mut verified, mut failed) = (0usize, false);
    let mut buf = [0u8; 4096];
    while !failed {
        // SAFETY: reading into our buffer.
        let r = unsafe { libc::read(b.report_r, buf.as_mut_ptr().cast(), buf.len()) };
        if r < 0 && errno().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if r <= 0 {
            break;
        }
        for &c in &buf[..r as usize] {
            if c == crust_restorer::BARRIER_VERIFIED {
                verified += 1;
            } else {
                failed = true;
            }
        }
    }
    // Abandoning: what the rebuild created goes, and closing the go pipe unwritten tells
    // every restorer (the failing one has named its problem, the root says the restart
    // was abandoned).
    let abandon = |msg: Option<String>| -> ! {
        if let Some(m) = msg {
            eprintln!("crrestart: {m}");
        }
        undo.remove();
        // SAFETY: ends this process.
        unsafe { libc::_exit(1) }
    };
    if failed || verified != n {
        abandon(None);
    }
    if let Some(ckpt_dir) = coordinator {
        if let Err(e) = crate::coord_client::ensure_coordinator(&t.coord, ckpt_dir, None) {
            abandon(Some(e.to_string()));
        }
    }
    if let Err(e) = put_files_back(t, later) {
        abandon(Some(e));
    }
    let go = vec![crust_restorer::BARRIER_GO; n];
    let _ = write_all(b.go_w, &go);
    // SAFETY: as above.
    unsafe { libc::_exit(0) }
}

fn fork() -> Result<i32, String> {
    // SAFETY: crrestart is single-threaded; the child continues with a copy of it.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", errno()));
    }
    Ok(pid)
}

/// Run in a freshly forked process: become process `i`; never returns.
fn child_main(cx: &Ctx, i: usize) -> ! {
    let Err(e) = become_process(cx, i);
    eprintln!("crrestart: {}: {e}", cx.t.describe(i));
    fail_all(cx.ctl);
    // SAFETY: ends this forked process.
    unsafe { libc::_exit(2) }
}

/// Turn the calling process into process `i` of the tree.
fn become_process(cx: &Ctx, i: usize) -> Result<Infallible, String> {
    let t = cx.t;
    let p = &t.procs[i];
    let n = t.procs.len() as u32;
    // SAFETY: process-control calls on ourselves.
    unsafe {
        if (p.session_leader || p.new_session) && libc::getsid(0) != libc::getpid() && libc::setsid() < 0 {
            eprintln!(
                "crrestart: warning: {} led its own session, or was the first of a session whose leader had exited, \
                 but cannot make a session now ({}); it stays in crrestart's session",
                t.describe(i),
                errno()
            );
        }
    }
    // SAFETY: getpid has no preconditions.
    cx.ctl.real[i].store(unsafe { libc::getpid() }, Ordering::Release);
    bump(&cx.ctl.created);
    for &c in &p.children {
        if fork()? == 0 {
            child_main(cx, c);
        }
    }
    let mut zombies = Vec::new();
    for z in &p.zombies {
        let exit = z.exit.expect("zombies have an exit record");
        let pid = fork()?;
        if pid == 0 {
            die_as(exit);
        }
        // Wait until it has exited, without reaping it.
        // SAFETY: info is a valid out-pointer.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT);
        }
        zombies.push(PlanPid { virt: z.vpid, real: pid, old_real: z.real_pid, flags: 0 });
    }
    if i == t.root {
        for &o in &t.orphans {
            let mid = fork()?;
            if mid == 0 {
                // The middle process exits at once, so init (or the nearest subreaper)
                // adopts the orphan, as before the checkpoint.
                if fork().unwrap_or(-1) == 0 {
                    child_main(cx, o);
                }
                // SAFETY: ends the middle process.
                unsafe { libc::_exit(0) };
            }
            // SAFETY: reaping our own middle process.
            unsafe { libc::waitpid(mid, std::ptr::null_mut(), 0) };
        }
    }
    // From here on no signal may reach the program before its own mask is back (the
    // restorer and the preload's restart path run with everything blocked).
    // SAFETY: blocking signals in this process only.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
    }
    barrier(cx.ctl, &cx.ctl.created, n, "be created")?;
    let real = |j: usize| cx.ctl.real[j].load(Ordering::Acquire);
    // Groups: leaders first, then members.
    // SAFETY: process-group calls on ourselves.
    unsafe {
        if p.group == Some(i) && libc::getpgrp() != libc::getpid() && libc::setpgid(0, 0) != 0 {
            eprintln!("crrestart: warning: {} cannot lead its process group again: {}", t.describe(i), errno());
        }
    }
    bump(&cx.ctl.grouped);
    barrier(cx.ctl, &cx.ctl.grouped, n, "set up process groups")?;
    if let Some(g) = p.group.filter(|&g| g != i) {
        // SAFETY: joining a group of our session.
        if unsafe { libc::setpgid(0, real(g)) } != 0 {
            eprintln!(
                "crrestart: warning: {} cannot join the process group of {}: {}",
                t.describe(i),
                t.describe(g),
                errno()
            );
        }
    }
    bump(&cx.ctl.ready);
    barrier(cx.ctl, &cx.ctl.ready, n, "be ready")?;

    // The tree's ids, as every process of it will see them.
    let mut pids: Vec<PlanPid> = t
        .procs
        .iter()
        .enumerate()
        .map(|(j, q)| PlanPid { virt: q.meta.vpid, real: real(j), old_real: q.meta.real_pid, flags: 0 })
        .collect();
    pids.extend(zombies);
    for q in &t.procs {
        if let Some(g) = q.group {
            let v = q.meta.tree.vpgid;
            if t.procs[g].meta.vpid != v && !pids.iter().any(|e| e.virt == v) {
                pids.push(PlanPid { virt: v, real: real(g), old_real: 0, flags: crust_restorer::PID_GROUP_ONLY });
            }
        }
    }
    for (j, q) in t.procs.iter().enumerate() {
        let v = q.meta.tree.vsid;
        if q.new_session && !pids.iter().any(|e| e.virt == v) {
            pids.push(PlanPid { virt: v, real: real(j), old_real: 0, flags: crust_restorer::PID_GROUP_ONLY });
        }
    }
    for &(v, what) in &t.outside_ids {
        if !pids.iter().any(|e| e.virt == v) {
            let real = if what == "pgid" { cx.outside_pgid } else { cx.outside_sid };
            pids.push(PlanPid { virt: v, real, old_real: 0, flags: 0 });
        }
    }
    exec_restorer(cx, i, &pids)
}

/// pidfds, opened on the new processes once every process of the tree exists (fds that
/// were substituted are already in place).
fn open_pidfds(meta: &crust_format::image::ImageMeta, pids: &[PlanPid], placed: &[(i32, crate::restart::Src)]) -> Result<(), String> {
    for rec in &meta.fds {
        let crust_format::image::FdKind::PidFd { real_pid, vpid } = &rec.kind else { continue };
        if placed.iter().any(|(fd, _)| *fd == rec.fd) {
            continue; // substituted
        }
        let Some(now) = pids.iter().find(|e| e.old_real == *real_pid && *real_pid > 0).map(|e| e.real) else {
            return Err(format!("fd {} (pidfd of process {vpid}): that process was not recreated", rec.fd));
        };
        let flags = if rec.flags & libc::O_NONBLOCK != 0 { libc::O_NONBLOCK } else { 0 };
        // SAFETY: plain system calls on our own fds.
        unsafe {
            let fd = libc::syscall(libc::SYS_pidfd_open, now, flags) as i32;
            if fd < 0 {
                return Err(format!("fd {} (pidfd of process {vpid}): pidfd_open: {}", rec.fd, errno()));
            }
            if fd != rec.fd {
                libc::dup2(fd, rec.fd);
                libc::close(fd);
            }
        }
    }
    Ok(())
}

/// Register again, in this process with its fds in place, what each of its epoll
/// instances watched. A registration another process of the tree already made on a
/// shared instance is there (EEXIST); one whose fd is not restored (ignored, closed) or
/// was substituted with a file that cannot be polled is left out.
fn add_epoll_entries(meta: &crust_format::image::ImageMeta) -> Result<(), String> {
    for rec in &meta.fds {
        let crust_format::image::FdKind::Epoll { entries } = &rec.kind else { continue };
        for e in entries {
            let mut ev = libc::epoll_event { events: e.events, u64: e.data };
            // SAFETY: both fds are this process's; ev is a valid epoll_event.
            if unsafe { libc::epoll_ctl(rec.fd, libc::EPOLL_CTL_ADD, e.tfd, &mut ev) } != 0 {
                let err = std::io::Error::last_os_error();
                // EPERM: the fd was substituted with a file that cannot be polled.
                if !matches!(err.raw_os_error(), Some(libc::EEXIST) | Some(libc::EBADF) | Some(libc::ENOENT) | Some(libc::EPERM)) {
                    return Err(format!("fd {} (epoll): cannot watch fd {} again: {err}", rec.fd, e.tfd));
                }
            }
        }
    }
    Ok(())
}

/// Place process `i`'s fds, write its plan and exec the restorer.
fn exec_restorer(cx: &Ctx, i: usize, pids: &[PlanPid]) -> Result<Infallible, String> {
    let t = cx.t;
    let p = &t.procs[i];
    let meta = &p.meta;
    let base = t.stage_base;
    // Everything to place goes above the program's numbers first, then into place.
    let mut temps: Vec<(i32, i32)> = Vec::new();
    for &(target, src) in &p.fds {
        let from = match src {
            Src::Inherit(k) => k,
            Src::Obj(o) => cx.staged[o],
        };
        // SAFETY: duplicating our own fd.
        let tmp = unsafe { libc::fcntl(from, libc::F_DUPFD_CLOEXEC, base) };
        if tmp < 0 {
            return Err(format!("fd {target}: cannot duplicate fd {from}: {}", errno()));
        }
        temps.push((target, tmp));
    }
    // SAFETY: closing every fd below the program's highest number; all sources are safe above.
    unsafe { libc::syscall(libc::SYS_close_range, 0u32, (base - 1) as u32, 0u32) };
    for &(target, tmp) in &temps {
        // SAFETY: placing the program's fd; dup2 clears close-on-exec (the preload puts
        // back the program's close-on-exec flags after the restart).
        unsafe {
            libc::dup2(tmp, target);
            libc::close(tmp);
        }
    }
    open_pidfds(meta, pids, &p.fds)?;
    crate::ipc::keep_map_across_exec();
    add_epoll_entries(meta)?;
    // Shared memory the restorer maps by path.
    let mut shared: std::collections::HashMap<u64, (String, u64)> = std::collections::HashMap::new();
    for (&start, &(obj, off)) in &p.shared {
        let fd = cx.staged[obj];
        // SAFETY: keep this memfd across exec (the preload closes it after the restart).
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        shared.insert(start, (format!("/proc/self/fd/{fd}"), off));
    }
    // The image file, or the memfd a compressed image was unpacked into (`crate::pages`).
    // SAFETY: duplicating our own fd above the program's numbers, kept across exec.
    let image_fd = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&p.pages), libc::F_DUPFD, base) };
    // Our stderr, where the restorer reports failures (the program's fd 2 may be a file);
    // the preload closes it with crrestart's other fds (close_from).
    // SAFETY: duplicating our own fd, kept across exec.
    let err_fd = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&t.err_out), libc::F_DUPFD, base) };
    let memfd_name = CString::new("crust-plan").unwrap();
    // SAFETY: valid name. Close-on-exec: only its duplicate above `base` (made below,
    // without the flag) may reach the restored program, which closes it.
    let plan_raw = unsafe { libc::memfd_create(memfd_name.as_ptr(), libc::MFD_CLOEXEC) };
    if plan_raw < 0 || image_fd < 0 {
        return Err(format!("cannot open the image or create the plan: {}", errno()));
    }
    // SAFETY: as above.
    let plan_fd = unsafe { libc::fcntl(plan_raw, libc::F_DUPFD, base) };
    // The barrier's ends go to the restorer, which closes them before the program runs.
    // SAFETY: clearing close-on-exec on our own fds.
    unsafe {
        libc::fcntl(cx.barrier.report_w, libc::F_SETFD, 0);
        libc::fcntl(cx.barrier.go_r, libc::F_SETFD, 0);
    }
    let who = format!("vpid {} ({}), image {}", meta.vpid, meta.program, p.img_path.display());
    let range = t.restorer_range;
    let input = |plan_addr: u64, scratch_addr: u64| crate::plan::PlanInput {
        meta,
        image_fd,
        plan_fd,
        restorer: range,
        plan_addr,
        scratch_addr,
        coord: &t.coord,
        generation: meta.generation,
        verify: !p.pages_verified,
        direct_reads: p.pages_direct,
        pids,
        close_from: base,
        shared: &shared,
        mapped: t.mapped,
        err_fd,
        report_fd: cx.barrier.report_w,
        go_fd: cx.barrier.go_r,
        is_root: i == t.root,
        who: &who,
    };
    let plan_probe = crate::plan::build(&input(0, 0))?;
    let plan_len = (plan_probe.len() as u64 + 4095) & !4095;
    let plan_addr =
        crate::plan::free_range(meta, &[range], plan_len + (64 << 20)).ok_or("no free address range for the restore plan")?;
    let plan = crate::plan::build(&input(plan_addr, plan_addr + plan_len + (16 << 20)))?;
    // SAFETY: writing the plan into our memfd.
    let n = unsafe { libc::pwrite(plan_fd, plan.as_ptr() as *const libc::c_void, plan.len(), 0) };
    if n != plan.len() as isize {
        return Err("cannot write the restore plan".into());
    }
    std::env::set_current_dir(&meta.cwd).map_err(|e| format!("{}: {e}", meta.cwd))?;
    // SAFETY: umask and setrlimit only change this process's settings.
    unsafe {
        libc::umask(meta.umask as libc::mode_t);
        for r in &meta.rlimits {
            let lim = libc::rlimit { rlim_cur: r.soft, rlim_max: r.hard };
            libc::setrlimit(r.resource as _, &lim);
        }
    }
    let prog = CString::new(t.restorer.as_os_str().as_encoded_bytes()).unwrap();
    let a1 = CString::new(plan_fd.to_string()).unwrap();
    let a2 = CString::new(format!("{plan_addr:x}")).unwrap();
    let argv = [prog.as_ptr(), a1.as_ptr(), a2.as_ptr(), std::ptr::null()];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: valid NUL-terminated arrays.
    unsafe { libc::execve(prog.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    Err(format!("cannot execute {}: {}", t.restorer.display(), errno()))
}
