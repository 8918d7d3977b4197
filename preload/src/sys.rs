//! Raw Linux system calls (x86-64), with no libc in between.
//!
//! The preload must never call libc for its own work: libc functions may take locks held
//! by stopped threads, and some of them are our own wrappers. Everything the preload
//! asks of the kernel goes through this module. This is the only place (with the
//! assembly in `restore.rs`) that issues `syscall` instructions.

use core::arch::asm;

pub use libc::{
    SYS_arch_prctl, SYS_clock_gettime, SYS_close, SYS_connect, SYS_exit, SYS_exit_group, SYS_fcntl, SYS_fstat,
    SYS_fsync, SYS_ftruncate, SYS_futex, SYS_get_robust_list, SYS_getcwd, SYS_getdents64, SYS_getitimer,
    SYS_getpid, SYS_getppid, SYS_gettid, SYS_kill, SYS_lseek, SYS_madvise, SYS_mmap, SYS_mprotect, SYS_munmap,
    SYS_openat, SYS_prctl, SYS_pread64, SYS_prlimit64, SYS_read, SYS_readlinkat, SYS_renameat, SYS_rseq,
    SYS_rt_sigaction, SYS_rt_sigprocmask, SYS_set_robust_list, SYS_set_tid_address, SYS_setitimer,
    SYS_setsockopt, SYS_socket, SYS_tgkill, SYS_umask, SYS_uname, SYS_unlinkat, SYS_write, SYS_newfstatat,
    SYS_getsockopt, SYS_dup3, SYS_mkdirat, SYS_pwrite64,
};

/// A raw system call with up to six arguments. Returns the kernel's value: a negative
/// errno on failure.
///
/// # Safety
/// The caller must pass arguments that are valid for system call `n`.
#[inline(always)]
pub unsafe fn syscall6(n: i64, a1: usize, a2: usize, a3: usize, a4: usize, a5: usize, a6: usize) -> isize {
    let ret: isize;
    // SAFETY: the x86-64 Linux system call convention; rcx and r11 are clobbered by the
    // instruction, memory may be read or written by the kernel as the caller intends.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") n as isize => ret,
            in("rdi") a1, in("rsi") a2, in("rdx") a3, in("r10") a4, in("r8") a5, in("r9") a6,
            lateout("rcx") _, lateout("r11") _,
            options(nostack)
        );
    }
    ret
}

macro_rules! sc {
    ($n:expr) => { $crate::sys::syscall6($n as i64, 0, 0, 0, 0, 0, 0) };
    ($n:expr, $a:expr) => { $crate::sys::syscall6($n as i64, $a as usize, 0, 0, 0, 0, 0) };
    ($n:expr, $a:expr, $b:expr) => { $crate::sys::syscall6($n as i64, $a as usize, $b as usize, 0, 0, 0, 0) };
    ($n:expr, $a:expr, $b:expr, $c:expr) => { $crate::sys::syscall6($n as i64, $a as usize, $b as usize, $c as usize, 0, 0, 0) };
    ($n:expr, $a:expr, $b:expr, $c:expr, $d:expr) => {
        $crate::sys::syscall6($n as i64, $a as usize, $b as usize, $c as usize, $d as usize, 0, 0)
    };
    ($n:expr, $a:expr, $b:expr, $c:expr, $d:expr, $e:expr) => {
        $crate::sys::syscall6($n as i64, $a as usize, $b as usize, $c as usize, $d as usize, $e as usize, 0)
    };
    ($n:expr, $a:expr, $b:expr, $c:expr, $d:expr, $e:expr, $f:expr) => {
        $crate::sys::syscall6($n as i64, $a as usize, $b as usize, $c as usize, $d as usize, $e as usize, $f as usize)
    };
}
pub(crate) use sc;

/// Result of a raw call: `Ok(value)` or `Err(errno)`.
pub type SysResult<T> = Result<T, i32>;

#[inline(always)]
pub fn check(r: isize) -> SysResult<usize> {
    if (-4095..0).contains(&r) {
        Err(-r as i32)
    } else {
        Ok(r as usize)
    }
}

/// A NUL-terminated path on the stack (paths longer than 4095 bytes are refused).
pub struct CPath {
    buf: [u8; 4096],
}

impl CPath {
    pub fn new(s: &[u8]) -> SysResult<CPath> {
        if s.len() >= 4096 || s.contains(&0) {
            return Err(libc::ENAMETOOLONG);
        }
        let mut buf = [0u8; 4096];
        buf[..s.len()].copy_from_slice(s);
        Ok(CPath { buf })
    }
    pub fn ptr(&self) -> *const u8 {
        self.buf.as_ptr()
    }
}

pub fn getpid() -> i32 {
    // SAFETY: no arguments.
    unsafe { sc!(SYS_getpid) as i32 }
}
pub fn gettid() -> i32 {
    // SAFETY: no arguments.
    unsafe { sc!(SYS_gettid) as i32 }
}
pub fn getppid() -> i32 {
    // SAFETY: no arguments.
    unsafe { sc!(SYS_getppid) as i32 }
}

pub fn open(path: &[u8], flags: i32, mode: u32) -> SysResult<i32> {
    let p = CPath::new(path)?;
    // SAFETY: p is NUL-terminated and lives across the call.
    check(unsafe { sc!(SYS_openat, libc::AT_FDCWD, p.ptr(), flags | libc::O_CLOEXEC, mode) }).map(|v| v as i32)
}

pub fn close(fd: i32) {
    // SAFETY: closing an fd has no memory effects.
    unsafe {
        sc!(SYS_close, fd);
    }
}

pub fn read(fd: i32, buf: &mut [u8]) -> SysResult<usize> {
    loop {
        // SAFETY: buf is valid for writes of its length.
        let r = check(unsafe { sc!(SYS_read, fd, buf.as_mut_ptr(), buf.len()) });
        if r != Err(libc::EINTR) {
            return r;
        }
    }
}

pub fn pread(fd: i32, buf: &mut [u8], off: u64) -> SysResult<usize> {
    // SAFETY: buf is valid for writes of its length.
    check(unsafe { sc!(SYS_pread64, fd, buf.as_mut_ptr(), buf.len(), off) })
}

/// Write from raw memory (which may be any mapped memory of the process).
///
/// # Safety
/// `[ptr, ptr+len)` must be readable memory (or the kernel returns EFAULT).
pub unsafe fn write_raw(fd: i32, ptr: *const u8, len: usize) -> SysResult<usize> {
    // SAFETY: forwarded from the caller.
    check(unsafe { sc!(SYS_write, fd, ptr, len) })
}

/// Write all of `buf`, retrying on short writes and EINTR.
pub fn write_all(fd: i32, buf: &[u8]) -> SysResult<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the slice is readable.
        match unsafe { write_raw(fd, buf[done..].as_ptr(), buf.len() - done) } {
            Ok(0) => return Err(libc::EIO),
            Ok(n) => done += n,
            Err(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Send all of `buf` on a socket without SIGPIPE when the peer is gone (EPIPE instead):
/// a program thread sending to a dead coordinator must not be killed by it.
pub fn send_all(fd: i32, buf: &[u8]) -> SysResult<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the slice is readable; no address argument.
        let r = unsafe { sc!(libc::SYS_sendto, fd, buf[done..].as_ptr(), buf.len() - done, libc::MSG_NOSIGNAL, 0, 0) };
        match check(r) {
            Ok(0) => return Err(libc::EIO),
            Ok(n) => done += n,
            Err(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub fn pwrite_all(fd: i32, buf: &[u8], mut off: u64) -> SysResult<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the slice is readable.
        match check(unsafe { sc!(SYS_pwrite64, fd, buf[done..].as_ptr(), buf.len() - done, off) }) {
            Ok(0) => return Err(libc::EIO),
            Ok(n) => {
                done += n;
                off += n as u64;
            }
            Err(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub fn ftruncate(fd: i32, len: u64) -> SysResult<()> {
    // SAFETY: no memory arguments.
    check(unsafe { sc!(SYS_ftruncate, fd, len) }).map(|_| ())
}

/// `struct iocb` (linux/aio_abi.h, little endian).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Iocb {
    pub data: u64,
    pub key: u32,
    pub rw_flags: u32,
    pub opcode: u16,
    pub reqprio: i16,
    pub fildes: u32,
    pub buf: u64,
    pub nbytes: u64,
    pub offset: i64,
    pub reserved2: u64,
    pub flags: u32,
    pub resfd: u32,
}

/// `IOCB_CMD_PWRITEV`: `buf` is an iovec array, `nbytes` its length.
pub const IOCB_CMD_PWRITEV: u16 = 8;

/// `struct io_event`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct IoEvent {
    pub data: u64,
    pub obj: u64,
    pub res: i64,
    pub res2: i64,
}

/// A Linux AIO context for `nr` requests (the kernel maps its ring into this process:
/// create it only after /proc/self/maps was read for an image, destroy it before the next).
pub fn io_setup(nr: u32) -> SysResult<u64> {
    let mut ctx: u64 = 0;
    // SAFETY: ctx is a valid out-pointer, zero as io_setup requires.
    check(unsafe { sc!(libc::SYS_io_setup, nr, &mut ctx as *mut u64) })?;
    Ok(ctx)
}

/// Destroy an AIO context; the kernel waits for its requests in flight first.
pub fn io_destroy(ctx: u64) {
    // SAFETY: no memory arguments besides the context, which the kernel validates.
    unsafe { sc!(libc::SYS_io_destroy, ctx) };
}

/// Submit one request. Returns Ok once the kernel took it.
///
/// # Safety
/// `iocb` and whatever it points to (an iovec array, the memory it describes) must stay
/// valid and unchanged until the request's event is reaped.
pub unsafe fn io_submit_one(ctx: u64, iocb: *const Iocb) -> SysResult<()> {
    let list = [iocb];
    // SAFETY: a one-element array of valid iocb pointers (the caller's promise).
    let n = check(unsafe { sc!(libc::SYS_io_submit, ctx, 1, list.as_ptr()) })?;
    if n == 1 {
        Ok(())
    } else {
        Err(libc::EAGAIN)
    }
}

/// Wait for at least `min` finished requests (retrying on EINTR); returns how many of
/// `events` were filled.
pub fn io_getevents(ctx: u64, min: usize, events: &mut [IoEvent]) -> SysResult<usize> {
    loop {
        // SAFETY: events is a valid array of events.len() io_event; no timeout.
        match check(unsafe { sc!(libc::SYS_io_getevents, ctx, min, events.len(), events.as_mut_ptr(), 0) }) {
            Err(libc::EINTR) => {}
            r => return r,
        }
    }
}

pub fn fsync(fd: i32) -> SysResult<()> {
    // SAFETY: no memory arguments.
    check(unsafe { sc!(SYS_fsync, fd) }).map(|_| ())
}

pub fn lseek(fd: i32, off: i64, whence: i32) -> SysResult<i64> {
    // SAFETY: no memory arguments.
    check(unsafe { sc!(SYS_lseek, fd, off, whence) }).map(|v| v as i64)
}

pub fn fstat(fd: i32) -> SysResult<libc::stat> {
    // SAFETY: stat is plain old data; the kernel fills it.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: st is a valid out-pointer.
    check(unsafe { sc!(SYS_fstat, fd, &mut st as *mut libc::stat) })?;
    Ok(st)
}

pub fn stat(path: &[u8]) -> SysResult<libc::stat> {
    let p = CPath::new(path)?;
    // SAFETY: plain old data.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: p is NUL-terminated, st a valid out-pointer.
    check(unsafe { sc!(SYS_newfstatat, libc::AT_FDCWD, p.ptr(), &mut st as *mut libc::stat, 0) })?;
    Ok(st)
}

pub fn readlink(path: &[u8], buf: &mut [u8]) -> SysResult<usize> {
    let p = CPath::new(path)?;
    // SAFETY: p is NUL-terminated, buf writable.
    check(unsafe { sc!(SYS_readlinkat, libc::AT_FDCWD, p.ptr(), buf.as_mut_ptr(), buf.len()) })
}

pub fn rename(from: &[u8], to: &[u8]) -> SysResult<()> {
    let a = CPath::new(from)?;
    let b = CPath::new(to)?;
    // SAFETY: both NUL-terminated.
    check(unsafe { sc!(SYS_renameat, libc::AT_FDCWD, a.ptr(), libc::AT_FDCWD, b.ptr()) }).map(|_| ())
}

pub fn unlink(path: &[u8]) -> SysResult<()> {
    let p = CPath::new(path)?;
    // SAFETY: NUL-terminated.
    check(unsafe { sc!(SYS_unlinkat, libc::AT_FDCWD, p.ptr(), 0) }).map(|_| ())
}

pub fn fcntl(fd: i32, cmd: i32, arg: usize) -> SysResult<usize> {
    // SAFETY: the commands used by the preload take integer arguments.
    check(unsafe { sc!(SYS_fcntl, fd, cmd, arg) })
}

/// # Safety
/// Same contract as mmap(2): MAP_FIXED replaces whatever is mapped there.
pub unsafe fn mmap(addr: usize, len: usize, prot: i32, flags: i32, fd: i32, off: u64) -> SysResult<usize> {
    // SAFETY: forwarded from the caller.
    check(unsafe { sc!(SYS_mmap, addr, len, prot, flags, fd, off) })
}

/// Anonymous private read-write memory.
pub fn mmap_anon(len: usize) -> SysResult<usize> {
    // SAFETY: a fresh mapping at a kernel-chosen address affects no existing memory.
    unsafe {
        mmap(0, len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
    }
}

/// # Safety
/// The range must not hold memory anyone still uses.
pub unsafe fn munmap(addr: usize, len: usize) -> SysResult<()> {
    // SAFETY: forwarded from the caller.
    check(unsafe { sc!(SYS_munmap, addr, len) }).map(|_| ())
}

/// # Safety
/// Changing protections can make memory others use inaccessible.
pub unsafe fn mprotect(addr: usize, len: usize, prot: i32) -> SysResult<()> {
    // SAFETY: forwarded from the caller.
    check(unsafe { sc!(SYS_mprotect, addr, len, prot) }).map(|_| ())
}

pub fn futex_wait(addr: &core::sync::atomic::AtomicU32, val: u32, timeout_ns: Option<u64>) -> SysResult<()> {
    let ts;
    let tsp = match timeout_ns {
        Some(ns) => {
            ts = libc::timespec { tv_sec: (ns / 1_000_000_000) as i64, tv_nsec: (ns % 1_000_000_000) as i64 };
            &ts as *const libc::timespec
        }
        None => core::ptr::null(),
    };
    // SAFETY: addr is a valid futex word; tsp null or valid.
    check(unsafe { sc!(SYS_futex, addr.as_ptr(), libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG, val, tsp) }).map(|_| ())
}

/// Whether `fd` has data to read (or is closed) within `timeout_ms` (0: right now).
pub fn poll_in(fd: i32, timeout_ms: i32) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    let r = unsafe { sc!(libc::SYS_poll, &mut p as *mut libc::pollfd, 1, timeout_ms) };
    r > 0 && p.revents != 0
}

pub fn futex_wake(addr: &core::sync::atomic::AtomicU32, n: u32) {
    // The kernel reads the count as an int: u32::MAX would mean -1.
    let n = n.min(i32::MAX as u32);
    // SAFETY: addr is a valid futex word.
    unsafe {
        sc!(SYS_futex, addr.as_ptr(), libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG, n);
    }
}

pub fn tgkill(tgid: i32, tid: i32, sig: i32) -> SysResult<()> {
    // SAFETY: no memory arguments.
    check(unsafe { sc!(SYS_tgkill, tgid, tid, sig) }).map(|_| ())
}

pub fn kill(pid: i32, sig: i32) -> SysResult<()> {
    // SAFETY: no memory arguments.
    check(unsafe { sc!(SYS_kill, pid, sig) }).map(|_| ())
}

/// The kernel's `struct sigaction` on x86-64.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct KSigaction {
    pub handler: usize,
    pub flags: u64,
    pub restorer: usize,
    pub mask: u64,
}

pub const SA_RESTORER: u64 = 0x0400_0000;

pub fn rt_sigaction(sig: i32, new: Option<&KSigaction>, old: Option<&mut KSigaction>) -> SysResult<()> {
    let np = new.map_or(core::ptr::null(), |n| n as *const KSigaction);
    let op = old.map_or(core::ptr::null_mut(), |o| o as *mut KSigaction);
    // SAFETY: pointers are null or valid; sigsetsize is 8 on x86-64.
    check(unsafe { sc!(SYS_rt_sigaction, sig, np, op, 8) }).map(|_| ())
}

pub fn sigprocmask(how: i32, set: Option<u64>) -> u64 {
    let mut old: u64 = 0;
    let s = set.unwrap_or(0);
    let sp = if set.is_some() { &s as *const u64 } else { core::ptr::null() };
    // SAFETY: valid pointers, sigsetsize 8.
    unsafe {
        sc!(SYS_rt_sigprocmask, how, sp, &mut old as *mut u64, 8);
    }
    old
}

pub fn prctl(op: i32, a: usize, b: usize, c: usize, d: usize) -> SysResult<usize> {
    // SAFETY: the options used by the preload take integers or valid pointers.
    check(unsafe { sc!(SYS_prctl, op, a, b, c, d) })
}

pub fn clock_monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out-pointer.
    unsafe {
        sc!(SYS_clock_gettime, libc::CLOCK_MONOTONIC, &mut ts as *mut libc::timespec);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn clock_realtime_secs() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out-pointer.
    unsafe {
        sc!(SYS_clock_gettime, libc::CLOCK_REALTIME, &mut ts as *mut libc::timespec);
    }
    ts.tv_sec as u64
}

pub fn exit_group(code: i32) -> ! {
    // SAFETY: ends the process.
    unsafe {
        sc!(SYS_exit_group, code);
    }
    #[allow(clippy::empty_loop)]
    loop {}
}

/// Read a whole (small) file, such as a /proc file, into `out`.
pub fn read_file(path: &[u8], out: &mut Vec<u8>) -> SysResult<()> {
    let fd = open(path, libc::O_RDONLY, 0)?;
    out.clear();
    let mut chunk = [0u8; 4096];
    loop {
        match read(fd, &mut chunk) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) => {
                close(fd);
                return Err(e);
            }
        }
    }
    close(fd);
    Ok(())
}

/// Write a diagnostic line to stderr (fatal errors only: the preload is otherwise silent).
pub fn eprint(msg: &[u8]) {
    let _ = write_all(2, msg);
}
