//! The freestanding restorer proper (see main.rs).
//!
//! Page data: runs marked `RUN_MAP` are mapped from the page source; every other run is
//! read, with Linux AIO on an `O_DIRECT` descriptor when the plan asks for direct reads
//! (cold image, [`Aio`]) or with `pread` through the page cache ([`pread_run`]). Unless
//! crrestart checked every page already (`PlanHeader::verify` = 0), each run's crc32c is
//! computed as its data arrives: AIO pieces in submission order while later pieces are
//! in flight, `pread` pieces while they are still in the CPU cache. So an eager restore
//! reads the image once. A second thread faults the pages of large reads in ahead of them
//! ([`start_prefaulter`]), so that allocating and zeroing the program's memory runs on
//! another CPU while the disk fills it.
//!
//! Nothing done before the barrier ([`barrier`]) is visible outside this process: a
//! corrupt page (or any failure) ends it with a message naming its image and the address,
//! and crrestart's supervisor then abandons the whole tree's restart before any program
//! runs or any of the programs' files changes (`launcher/src/rebuild.rs`).

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU32, AtomicUsize};
use core::sync::atomic::Ordering::Relaxed;
use crust_restorer::*;

// ---------------------------------------------------------------- startup

#[repr(C, align(16))]
struct Stack([u8; 256 * 1024]);
#[unsafe(no_mangle)]
static mut RESTORER_STACK: Stack = Stack([0; 256 * 1024]);

global_asm!(
    ".globl _start",
    "_start:",
    "mov rdi, rsp",
    "lea rsp, [rip + RESTORER_STACK + 262144]",
    "and rsp, -16",
    "call restorer_main",
    "ud2",
);

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    fail(b"internal error (panic)", EXIT_BAD_PLAN)
}

// Freestanding builds need these; written with string instructions so the compiler
// cannot turn them back into calls to themselves.
#[unsafe(no_mangle)]
unsafe extern "C" fn memcpy(d: *mut u8, s: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees valid, non-overlapping ranges.
    unsafe { asm!("rep movsb", inout("rcx") n => _, inout("rdi") d => _, inout("rsi") s => _, options(nostack)) };
    d
}
#[unsafe(no_mangle)]
unsafe extern "C" fn memmove(d: *mut u8, s: *const u8, n: usize) -> *mut u8 {
    if (d as usize) <= (s as usize) || (d as usize) >= (s as usize) + n {
        // SAFETY: forward copy is safe when the destination starts first or after.
        return unsafe { memcpy(d, s, n) };
    }
    // SAFETY: backward copy for overlapping ranges.
    unsafe {
        asm!("std", "rep movsb", "cld",
            inout("rcx") n => _, inout("rdi") d.add(n - 1) => _, inout("rsi") s.add(n - 1) => _, options(nostack));
    }
    d
}
#[unsafe(no_mangle)]
unsafe extern "C" fn memset(d: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees a valid range.
    unsafe { asm!("rep stosb", inout("rcx") n => _, inout("rdi") d => _, in("al") c as u8, options(nostack)) };
    d
}
#[unsafe(no_mangle)]
unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: the caller guarantees valid ranges.
        let (x, y) = unsafe { (core::ptr::read_volatile(a.add(i)), core::ptr::read_volatile(b.add(i))) };
        if x != y {
            return x as i32 - y as i32;
        }
        i += 1;
    }
    0
}
#[unsafe(no_mangle)]
unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: forwarded.
    unsafe { memcmp(a, b, n) }
}

// ---------------------------------------------------------------- syscalls

#[inline(always)]
unsafe fn sc(n: usize, a1: usize, a2: usize, a3: usize, a4: usize, a5: usize, a6: usize) -> isize {
    let r: isize;
    // SAFETY: the x86-64 system call convention.
    unsafe {
        asm!("syscall", inlateout("rax") n as isize => r,
            in("rdi") a1, in("rsi") a2, in("rdx") a3, in("r10") a4, in("r8") a5, in("r9") a6,
            lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    r
}

const SYS_READ: usize = 0;
const SYS_WRITE: usize = 1;
const SYS_CLOSE: usize = 3;
const SYS_POLL: usize = 7;
const SYS_FSTAT: usize = 5;
const SYS_MMAP: usize = 9;
const SYS_MPROTECT: usize = 10;
const SYS_MUNMAP: usize = 11;
const SYS_PREAD64: usize = 17;
const SYS_MREMAP: usize = 25;
const SYS_MADVISE: usize = 28;
const SYS_PRCTL: usize = 157;
const SYS_EXIT_GROUP: usize = 231;
const SYS_OPENAT: usize = 257;
const SYS_CLONE: usize = 56;
const SYS_EXIT: usize = 60;
const SYS_FUTEX: usize = 202;
const SYS_SCHED_GETAFFINITY: usize = 204;
const SYS_IO_SETUP: usize = 206;
const SYS_IO_GETEVENTS: usize = 208;
const SYS_IO_SUBMIT: usize = 209;
const O_DIRECT: usize = 0o40000;

const PROT_READ: usize = 1;
const PROT_WRITE: usize = 2;
const MAP_SHARED: usize = 1;
const MAP_PRIVATE: usize = 2;
const MAP_FIXED: usize = 0x10;
const MAP_ANONYMOUS: usize = 0x20;
const MAP_GROWSDOWN: usize = 0x100;
const MAP_FIXED_NOREPLACE: usize = 0x100000;
const MADV_POPULATE_WRITE: usize = 23;
const MREMAP_MAYMOVE: usize = 1;
const MREMAP_FIXED: usize = 2;
const O_RDONLY: usize = 0;
const O_RDWR: usize = 2;
const O_CLOEXEC: usize = 0o2000000;
const AT_FDCWD: isize = -100;
const PR_SET_MM: usize = 35;
const PR_SET_MM_MAP: usize = 14;

/// Where error messages go: crrestart's stderr once the plan names it.
static ERR_FD: AtomicUsize = AtomicUsize::new(2);
/// The barrier's descriptors (`PlanHeader::report_fd`, `go_fd`); usize::MAX: none.
static REPORT_FD: AtomicUsize = AtomicUsize::new(usize::MAX);
static GO_FD: AtomicUsize = AtomicUsize::new(usize::MAX);
static IS_ROOT: AtomicUsize = AtomicUsize::new(0);
/// `PlanHeader::who` (address, length): named in every error message.
static WHO: AtomicUsize = AtomicUsize::new(0);
static WHO_LEN: AtomicUsize = AtomicUsize::new(0);

fn write_err(msg: &[u8]) {
    let fd = ERR_FD.load(Relaxed);
    // SAFETY: writing a valid buffer to an fd.
    unsafe { sc(SYS_WRITE, fd, msg.as_ptr() as usize, msg.len(), 0, 0, 0) };
}

/// "crust-restorer: vpid N (prog), image PATH: ".
fn write_prefix() {
    write_err(b"crust-restorer: ");
    let (at, n) = (WHO.load(Relaxed), WHO_LEN.load(Relaxed));
    if at != 0 && n != 0 {
        // SAFETY: the `who` bytes of the plan header, mapped for the restorer's whole life.
        write_err(unsafe { core::slice::from_raw_parts(at as *const u8, n) });
        write_err(b": ");
    }
}

/// Tell the barrier's supervisor that this process failed, so that it abandons the restart
/// at once (it also notices the report descriptor closing when this process exits).
fn report_failure() {
    let fd = REPORT_FD.swap(usize::MAX, Relaxed);
    if fd != usize::MAX {
        let b = [BARRIER_FAILED];
        // SAFETY: writing one byte to our report pipe (EPIPE when the supervisor is gone:
        // every signal is blocked, so no SIGPIPE).
        unsafe { sc(SYS_WRITE, fd, b.as_ptr() as usize, 1, 0, 0, 0) };
    }
}

fn fail(msg: &[u8], code: i32) -> ! {
    write_prefix();
    write_err(msg);
    write_err(b"\n");
    report_failure();
    exit(code)
}

fn exit(code: i32) -> ! {
    // SAFETY: ends the process.
    unsafe { sc(SYS_EXIT_GROUP, code as usize, 0, 0, 0, 0, 0) };
    #[allow(clippy::empty_loop)]
    loop {}
}

fn fail_at(msg: &[u8], addr: u64, err: isize, code: i32) -> ! {
    write_prefix();
    write_err(msg);
    write_err(b" at 0x");
    let mut buf = [0u8; 16];
    for (i, b) in buf.iter_mut().enumerate() {
        let nib = (addr >> (60 - 4 * i)) & 0xf;
        *b = b"0123456789abcdef"[nib as usize];
    }
    write_err(&buf);
    if err < 0 {
        write_err(b" (errno ");
        let mut e = (-err) as u32;
        let mut d = [0u8; 10];
        let mut k = d.len();
        loop {
            k -= 1;
            d[k] = b'0' + (e % 10) as u8;
            e /= 10;
            if e == 0 {
                break;
            }
        }
        write_err(&d[k..]);
        write_err(b")");
    }
    write_err(b"\n");
    report_failure();
    exit(code)
}

/// The restart was abandoned before "go": leave without running anything of the program.
fn abandon() -> ! {
    if IS_ROOT.load(Relaxed) != 0 {
        write_err(
            b"crust-restorer: restart abandoned before the program ran: a process of the tree failed \
to restore its memory (see above), or crrestart's supervisor failed or ended\n",
        );
    }
    exit(EXIT_ABANDONED)
}

/// Whether the supervisor has abandoned the restart already (the go pipe is readable or
/// closed before this process reported: it only ever gets "go" after every report). Lets
/// a restorer still reading stop early when another one failed.
fn check_abandoned() {
    let fd = GO_FD.load(Relaxed);
    if fd == usize::MAX {
        return;
    }
    #[repr(C)]
    struct PollFd {
        fd: i32,
        events: i16,
        revents: i16,
    }
    let mut p = PollFd { fd: fd as i32, events: 1 /* POLLIN */, revents: 0 };
    // SAFETY: one valid pollfd, no timeout.
    let r = unsafe { sc(SYS_POLL, &mut p as *mut PollFd as usize, 1, 0, 0, 0, 0) };
    if r > 0 && p.revents != 0 {
        abandon();
    }
}

/// The barrier: report "verified", then wait for "go" (see `PlanHeader::report_fd`).
fn barrier() {
    let report = REPORT_FD.swap(usize::MAX, Relaxed);
    let go = GO_FD.swap(usize::MAX, Relaxed);
    if report == usize::MAX || go == usize::MAX {
        return;
    }
    let b = [BARRIER_VERIFIED];
    // SAFETY: one byte to our report pipe, then closing it (the supervisor counts the
    // bytes once every writer has closed its end).
    unsafe {
        sc(SYS_WRITE, report, b.as_ptr() as usize, 1, 0, 0, 0);
        sc(SYS_CLOSE, report, 0, 0, 0, 0, 0);
    }
    let mut got = [0u8; 1];
    let r = loop {
        // SAFETY: reading one byte into our buffer.
        let r = unsafe { sc(SYS_READ, go, got.as_mut_ptr() as usize, 1, 0, 0, 0) };
        if r != -4 {
            break r; // not EINTR
        }
    };
    // SAFETY: our fd; the program never sees it.
    unsafe { sc(SYS_CLOSE, go, 0, 0, 0, 0, 0) };
    if r != 1 || got[0] != BARRIER_GO {
        abandon();
    }
}

// ---------------------------------------------------------------- crc32c

/// Bytes each of the three interleaved streams of [`crc32c_update`] covers per block.
const CRC_LANE: usize = 8192;
/// `CRC_SHIFT[i]`: the crc32c register `1 << i` after `CRC_LANE` zero bytes. The register
/// update is linear, so advancing any state over `CRC_LANE` bytes of zeros is the XOR of
/// the entries of its set bits ([`crc32c_shift`]); see [`crc32c_init`].
static mut CRC_SHIFT: [u32; 32] = [0; 32];
static CRC_READY: AtomicUsize = AtomicUsize::new(0);

/// Fill [`CRC_SHIFT`] (32 × 8 KiB of crc32 instructions, about 10 µs).
fn crc32c_init() {
    use core::arch::x86_64::_mm_crc32_u64;
    if CRC_READY.load(Relaxed) != 0 {
        return;
    }
    #[target_feature(enable = "sse4.2")]
    unsafe fn zeros(mut c: u64) -> u32 {
        for _ in 0..CRC_LANE / 8 {
            c = _mm_crc32_u64(c, 0);
        }
        c as u32
    }
    // SAFETY: single-threaded program; nothing reads CRC_SHIFT before CRC_READY is set.
    let t = unsafe { &mut *core::ptr::addr_of_mut!(CRC_SHIFT) };
    for (i, e) in t.iter_mut().enumerate() {
        // SAFETY: SSE4.2 is part of every x86-64 the checkpoint ran on (the image's
        // checksums were made with it).
        *e = unsafe { zeros(1u64 << i) };
    }
    CRC_READY.store(1, Relaxed);
}

/// A crc32c register advanced over `CRC_LANE` zero bytes.
#[inline(always)]
fn crc32c_shift(s: u32) -> u32 {
    // SAFETY: filled by crc32c_init before any use (single-threaded).
    let t = unsafe { &*core::ptr::addr_of!(CRC_SHIFT) };
    let mut r = 0u32;
    for (i, &e) in t.iter().enumerate() {
        r ^= e & 0u32.wrapping_sub((s >> i) & 1);
    }
    r
}

/// Append `len` bytes at `data` to a crc32c state (start from `!0`, finish with `!`).
/// Three streams at once over blocks of 3 × `CRC_LANE` bytes (the crc32 instruction has
/// a latency of three cycles and a throughput of one), joined with [`crc32c_shift`]:
/// crc(s, A‖B‖C) = shift(shift(crc(s, A)) ^ crc(0, B)) ^ crc(0, C).
#[target_feature(enable = "sse4.2")]
unsafe fn crc32c_update(state: u32, data: *const u8, len: usize) -> u32 {
    use core::arch::x86_64::{_mm_crc32_u64, _mm_crc32_u8};
    let mut s = state;
    let mut i = 0;
    if len >= 3 * CRC_LANE {
        crc32c_init();
    }
    while len - i >= 3 * CRC_LANE {
        let (mut a, mut b, mut c) = (s as u64, 0u64, 0u64);
        let mut k = 0;
        while k < CRC_LANE {
            // SAFETY: within [data, data+len).
            let (x, y, z) = unsafe {
                (
                    core::ptr::read_unaligned(data.add(i + k) as *const u64),
                    core::ptr::read_unaligned(data.add(i + CRC_LANE + k) as *const u64),
                    core::ptr::read_unaligned(data.add(i + 2 * CRC_LANE + k) as *const u64),
                )
            };
            a = _mm_crc32_u64(a, x);
            b = _mm_crc32_u64(b, y);
            c = _mm_crc32_u64(c, z);
            k += 8;
        }
        s = crc32c_shift(crc32c_shift(a as u32) ^ b as u32) ^ c as u32;
        i += 3 * CRC_LANE;
    }
    let mut crc = s as u64;
    while i + 8 <= len {
        // SAFETY: within [data, data+len).
        let w = unsafe { core::ptr::read_unaligned(data.add(i) as *const u64) };
        crc = _mm_crc32_u64(crc, w);
        i += 8;
    }
    let mut c = crc as u32;
    while i < len {
        // SAFETY: within range.
        c = _mm_crc32_u8(c, unsafe { *data.add(i) });
        i += 1;
    }
    c
}

// ---------------------------------------------------------------- main

fn parse_dec(s: *const u8) -> Option<usize> {
    let mut v = 0usize;
    let mut i = 0;
    loop {
        // SAFETY: argv strings are NUL-terminated.
        let c = unsafe { *s.add(i) };
        if c == 0 {
            return (i > 0).then_some(v);
        }
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (c - b'0') as usize;
        i += 1;
    }
}

fn parse_hex(s: *const u8) -> Option<usize> {
    let mut v = 0usize;
    let mut i = 0;
    loop {
        // SAFETY: argv strings are NUL-terminated.
        let c = unsafe { *s.add(i) };
        let d = match c {
            0 => return (i > 0).then_some(v),
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | d as usize;
        i += 1;
    }
}

struct Maps {
    buf: [u8; 65536],
    len: usize,
}
static mut MAPS: Maps = Maps { buf: [0; 65536], len: 0 };

fn read_maps() -> &'static [u8] {
    // SAFETY: single-threaded program; MAPS is only used here.
    let m = unsafe { &mut *core::ptr::addr_of_mut!(MAPS) };
    // SAFETY: NUL-terminated path.
    let fd = unsafe { sc(SYS_OPENAT, AT_FDCWD as usize, c"/proc/self/maps".as_ptr() as usize, O_RDONLY | O_CLOEXEC, 0, 0, 0) };
    if fd < 0 {
        fail(b"cannot read /proc/self/maps", EXIT_MAP_FAILED);
    }
    m.len = 0;
    loop {
        // SAFETY: reading into our buffer.
        let n = unsafe { sc(SYS_READ, fd as usize, m.buf.as_mut_ptr() as usize + m.len, m.buf.len() - m.len, 0, 0, 0) };
        if n <= 0 {
            break;
        }
        m.len += n as usize;
    }
    // SAFETY: closing our fd.
    unsafe { sc(SYS_CLOSE, fd as usize, 0, 0, 0, 0, 0) };
    &m.buf[..m.len]
}

/// Parse "start-end perms offset dev inode name" lines; calls f(start, end, name).
fn for_each_map(text: &[u8], mut f: impl FnMut(u64, u64, &[u8])) {
    for line in text.split(|&c| c == b'\n') {
        if line.is_empty() {
            continue;
        }
        let mut start = 0u64;
        let mut end = 0u64;
        let mut i = 0;
        while i < line.len() && line[i] != b'-' {
            start = (start << 4) | hexval(line[i]);
            i += 1;
        }
        i += 1;
        while i < line.len() && line[i] != b' ' {
            end = (end << 4) | hexval(line[i]);
            i += 1;
        }
        // The name is the sixth field, after runs of spaces.
        let mut field = 1;
        let mut in_space = false;
        let mut name_start = line.len();
        while i < line.len() {
            if line[i] == b' ' {
                in_space = true;
            } else if in_space {
                in_space = false;
                field += 1;
                if field == 6 {
                    name_start = i;
                    break;
                }
            }
            i += 1;
        }
        f(start, end, &line[name_start.min(line.len())..]);
    }
}

fn hexval(c: u8) -> u64 {
    match c {
        b'0'..=b'9' => (c - b'0') as u64,
        b'a'..=b'f' => (c - b'a' + 10) as u64,
        _ => 0,
    }
}

fn special_kind(name: &[u8]) -> u32 {
    match name {
        b"[vvar]" => SPECIAL_VVAR,
        b"[vvar_vclock]" => SPECIAL_VVAR_VCLOCK,
        b"[vdso]" => SPECIAL_VDSO,
        _ => 0,
    }
}

/// Read `len` bytes of the image at `off` into `addr` with `pread`.
fn pread_all(fd: usize, addr: u64, len: u64, off: u64) {
    let mut done = 0u64;
    while done < len {
        // SAFETY: [addr, addr+len) lies inside a region mapped writable.
        let n = unsafe { sc(SYS_PREAD64, fd, (addr + done) as usize, (len - done) as usize, (off + done) as usize, 0, 0) };
        if n <= 0 {
            fail_at(b"image ends early (truncated?) reading page data", addr + done, n, EXIT_BAD_DATA);
        }
        done += n as u64;
    }
}

/// Piece of a run read through the page cache before its checksum is appended: small
/// enough to be checksummed while still in the CPU cache.
const PREAD_PIECE: u64 = 1 << 20;

/// Read a run with `pread` (through the page cache), checking its crc32c piece by piece
/// as it arrives when `check`.
fn pread_run(fd: usize, addr: u64, len: u64, off: u64, crc: u32, check: bool) {
    if len >= 64 << 10 && !prefaulter_running() {
        // Fault the run's pages in with one call rather than one fault per page during
        // the read (kernels before 5.14 refuse; the read faults them then).
        // SAFETY: the run lies inside a region mapped writable.
        unsafe { sc(SYS_MADVISE, addr as usize, len as usize, MADV_POPULATE_WRITE, 0, 0, 0) };
    }
    let mut acc = !0u32;
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(PREAD_PIECE);
        pread_all(fd, addr + done, n, off + done);
        if check {
            // SAFETY: just read; mapped readable (see `restorer_main`).
            acc = unsafe { crc32c_update(acc, (addr + done) as *const u8, n as usize) };
        }
        done += n;
    }
    if check && !acc != crc {
        fail_at(b"page data fails its checksum (corrupt image)", addr, 0, EXIT_BAD_DATA);
    }
}

// ---------------------------------------------------------------- prefaulting thread

/// Eager restores of at least this much page data fault the program's pages in on a
/// second thread, when the process may run on two CPUs or more.
const PREFAULT_MIN_BYTES: u64 = 64 << 20;
/// One `MADV_POPULATE_WRITE` of the prefaulting thread (it checks for the end between).
const PREFAULT_PIECE: u64 = 4 << 20;

/// The plan's region and run tables, for the prefaulting thread (set before it starts).
static PF_REGIONS: AtomicUsize = AtomicUsize::new(0);
static PF_RUNS: AtomicUsize = AtomicUsize::new(0);
static PF_N_REGIONS: AtomicUsize = AtomicUsize::new(0);
/// Nonzero while the prefaulting thread lives: the kernel clears it and wakes its futex
/// when the thread exits (`CLONE_CHILD_CLEARTID`).
static PF_ALIVE: AtomicU32 = AtomicU32::new(0);
/// Set by the main thread once every run is read: the prefaulting thread stops.
static PF_STOP: AtomicU32 = AtomicU32::new(0);

#[repr(C, align(16))]
struct PrefaultStack([u8; 64 * 1024]);
static mut PREFAULT_STACK: PrefaultStack = PrefaultStack([0; 64 * 1024]);

fn prefaulter_running() -> bool {
    PF_ALIVE.load(Relaxed) != 0
}

/// The runs that are read (not mapped from the image) and long enough to be worth
/// faulting in ahead, in the order the main thread reads them.
fn for_each_read_run(regions: *const PlanRegion, runs: *const PlanRun, n_regions: usize, mut f: impl FnMut(&PlanRun) -> bool) {
    for i in 0..n_regions {
        // SAFETY: crrestart wrote n_regions entries.
        let r = unsafe { *regions.add(i) };
        for j in 0..r.n_runs as usize {
            // SAFETY: crrestart wrote the runs of this region.
            let run = unsafe { *runs.add(r.first_run as usize + j) };
            if run.flags & RUN_MAP == 0 && run.len >= 64 << 10 && !f(&run) {
                return;
            }
        }
    }
}

/// How many CPUs this process may run on.
fn usable_cpus() -> u32 {
    let mut mask = [0u64; 16];
    // SAFETY: the kernel writes at most size_of_val(mask) bytes.
    let n = unsafe { sc(SYS_SCHED_GETAFFINITY, 0, core::mem::size_of_val(&mask), mask.as_mut_ptr() as usize, 0, 0, 0) };
    if n <= 0 {
        return 1;
    }
    mask.iter().map(|w| w.count_ones()).sum()
}

/// Start a thread that faults in (allocates and zeroes) the pages of the runs about to be
/// read, ahead of the main thread, whose reads then only fill them: on a cold image the
/// kernel otherwise does this inside each `io_submit` (about a third of a second per GiB
/// here), on a warm one inside each `pread`. Only with two CPUs or more and enough data.
fn start_prefaulter(regions: *const PlanRegion, runs: *const PlanRun, n_regions: usize) {
    let mut bytes = 0u64;
    for_each_read_run(regions, runs, n_regions, |r| {
        bytes += r.len;
        true
    });
    if bytes < PREFAULT_MIN_BYTES || usable_cpus() < 2 {
        return;
    }
    PF_REGIONS.store(regions as usize, Relaxed);
    PF_RUNS.store(runs as usize, Relaxed);
    PF_N_REGIONS.store(n_regions, Relaxed);
    PF_ALIVE.store(1, Relaxed);
    const CLONE_VM: usize = 0x100;
    const CLONE_FS: usize = 0x200;
    const CLONE_FILES: usize = 0x400;
    const CLONE_SIGHAND: usize = 0x800;
    const CLONE_THREAD: usize = 0x10000;
    const CLONE_SYSVSEM: usize = 0x40000;
    const CLONE_CHILD_CLEARTID: usize = 0x200000;
    let flags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM | CLONE_CHILD_CLEARTID;
    let stack_top = core::ptr::addr_of_mut!(PREFAULT_STACK) as usize + core::mem::size_of::<PrefaultStack>();
    let ctid = PF_ALIVE.as_ptr() as usize;
    let entry = prefault_main as extern "C" fn() -> !;
    let r: isize;
    // SAFETY: a raw clone of a thread sharing everything, on its own static stack (16-byte
    // aligned top: the call leaves the callee the ABI's alignment). The new thread starts
    // with the registers of this one except rax (0) and rsp, calls `prefault_main`, which
    // never returns. Every signal is blocked here, so it runs with none too.
    unsafe {
        asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "call r12",
            "ud2",
            "2:",
            inlateout("rax") SYS_CLONE as isize => r,
            in("rdi") flags, in("rsi") stack_top, in("rdx") 0usize, in("r10") ctid, in("r8") 0usize,
            in("r12") entry,
            lateout("rcx") _, lateout("r11") _,
        );
    }
    if r < 0 {
        PF_ALIVE.store(0, Relaxed); // reads fault the pages themselves, as without it
    }
}

/// The prefaulting thread: `MADV_POPULATE_WRITE` over the runs to read, in reading order,
/// in [`PREFAULT_PIECE`]s; ends at the first refusal (kernels before 5.14) or when told.
extern "C" fn prefault_main() -> ! {
    let regions = PF_REGIONS.load(Relaxed) as *const PlanRegion;
    let runs = PF_RUNS.load(Relaxed) as *const PlanRun;
    for_each_read_run(regions, runs, PF_N_REGIONS.load(Relaxed), |run| {
        let mut done = 0u64;
        while done < run.len {
            if PF_STOP.load(Relaxed) != 0 {
                return false;
            }
            let n = (run.len - done).min(PREFAULT_PIECE);
            // SAFETY: the run lies inside a region mapped writable until every read is done
            // (the main thread waits for this thread before setting final protections).
            if unsafe { sc(SYS_MADVISE, (run.addr + done) as usize, n as usize, MADV_POPULATE_WRITE, 0, 0, 0) } < 0 {
                return false;
            }
            done += n;
        }
        true
    });
    // SAFETY: ends this thread only; the kernel then clears PF_ALIVE and wakes the waiter.
    unsafe { sc(SYS_EXIT, 0, 0, 0, 0, 0, 0) };
    // SAFETY: not reached (exit does not return).
    unsafe { core::hint::unreachable_unchecked() }
}

/// Stop the prefaulting thread (if any) and wait until it has exited.
fn stop_prefaulter() {
    PF_STOP.store(1, Relaxed);
    loop {
        let v = PF_ALIVE.load(core::sync::atomic::Ordering::Acquire);
        if v == 0 {
            return;
        }
        // SAFETY: FUTEX_WAIT on our own word while it holds v; woken by the kernel at the
        // thread's exit (spurious wake-ups loop).
        unsafe { sc(SYS_FUTEX, PF_ALIVE.as_ptr() as usize, 0 /* FUTEX_WAIT */, v as usize, 0, 0, 0) };
    }
}

/// Runs at least this long are read through AIO when direct reads are on.
const AIO_MIN_RUN: u64 = 64 << 10;
/// Size of one AIO request, and how many are in flight: the kernel faults the pages of
/// one request in (allocating and zeroing them) while the disk fills the others.
const AIO_PIECE: u64 = 16 << 20;
const AIO_DEPTH: usize = 4;
/// Pieces read (or in flight) whose checksum is not appended yet, at most.
const AIO_PENDING: usize = 64;

/// `struct iocb` (linux/aio_abi.h, little endian).
#[repr(C)]
#[derive(Clone, Copy)]
struct Iocb {
    data: u64,
    key: u32,
    rw_flags: u32,
    opcode: u16,
    reqprio: i16,
    fildes: u32,
    buf: u64,
    nbytes: u64,
    offset: i64,
    reserved2: u64,
    flags: u32,
    resfd: u32,
}

/// `struct io_event`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct IoEvent {
    data: u64,
    obj: u64,
    res: i64,
    res2: i64,
}

/// One AIO piece of a run, in submission order.
#[derive(Clone, Copy, Default)]
struct Piece {
    addr: u64,
    len: u64,
    /// The run's start and checksum (checked after its last piece).
    run_addr: u64,
    crc: u32,
    first: bool,
    last: bool,
    check: bool,
    done: bool,
}

/// Reads into the program's memory with O_DIRECT through Linux AIO, AIO_DEPTH requests
/// of AIO_PIECE in flight. Anything the kernel refuses or cuts short is read again with
/// `pread` on the ordinary descriptor, so the worst case is the plain path.
///
/// Checksums overlap the reads: pieces are checksummed in submission order (a run's
/// crc32c is appended piece by piece), each as soon as it and every piece before it have
/// arrived, while the later requests are still in flight.
struct Aio {
    ctx: usize,
    direct_fd: usize,
    image_fd: usize,
    slots: [Iocb; AIO_DEPTH],
    busy: [bool; AIO_DEPTH],
    in_flight: usize,
    /// Pieces `head..next` (sequence numbers), at `seq % AIO_PENDING`.
    pending: [Piece; AIO_PENDING],
    head: u64,
    next: u64,
    /// crc32c state of the run whose pieces are being checksummed.
    acc: u32,
}

impl Aio {
    /// A direct descriptor on the image (through /proc/self/fd: a description of its
    /// own) and an AIO context; None when either is refused (tmpfs, a memfd, no AIO).
    fn open(image_fd: usize) -> Option<Aio> {
        let mut path = *b"/proc/self/fd/\0\0\0\0\0\0\0\0\0\0\0";
        let mut digits = [0u8; 10];
        let (mut v, mut n) = (image_fd, 0);
        loop {
            digits[n] = b'0' + (v % 10) as u8;
            n += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        for k in 0..n {
            path[14 + k] = digits[n - 1 - k];
        }
        // SAFETY: NUL-terminated path.
        let fd = unsafe { sc(SYS_OPENAT, AT_FDCWD as usize, path.as_ptr() as usize, O_RDONLY | O_DIRECT | O_CLOEXEC, 0, 0, 0) };
        if fd < 0 {
            return None;
        }
        let mut ctx = 0usize;
        // SAFETY: ctx is a valid out-pointer, zero as io_setup requires.
        if unsafe { sc(SYS_IO_SETUP, AIO_DEPTH, &mut ctx as *mut usize as usize, 0, 0, 0, 0) } < 0 {
            // SAFETY: our fd.
            unsafe { sc(SYS_CLOSE, fd as usize, 0, 0, 0, 0, 0) };
            return None;
        }
        let empty = Iocb { data: 0, key: 0, rw_flags: 0, opcode: 0, reqprio: 0, fildes: 0, buf: 0, nbytes: 0, offset: 0, reserved2: 0, flags: 0, resfd: 0 };
        Some(Aio {
            ctx,
            direct_fd: fd as usize,
            image_fd,
            slots: [empty; AIO_DEPTH],
            busy: [false; AIO_DEPTH],
            in_flight: 0,
            pending: [Piece::default(); AIO_PENDING],
            head: 0,
            next: 0,
            acc: !0,
        })
    }

    /// Queue the read of the run of `len` bytes at `off` into `addr` (in pieces), its
    /// crc32c `crc` checked when `check`; returns once every piece is submitted (or read
    /// with pread).
    fn read(&mut self, addr: u64, len: u64, off: u64, crc: u32, check: bool) {
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(AIO_PIECE);
            while self.next - self.head == AIO_PENDING as u64 {
                self.reap(1);
            }
            if self.in_flight == AIO_DEPTH {
                self.reap(1);
            }
            let seq = self.next;
            self.next += 1;
            self.pending[(seq % AIO_PENDING as u64) as usize] = Piece {
                addr: addr + done,
                len: n,
                run_addr: addr,
                crc,
                first: done == 0,
                last: done + n == len,
                check,
                done: false,
            };
            let k = self.busy.iter().position(|b| !b).unwrap_or(0);
            self.slots[k] = Iocb {
                data: (seq << 8) | k as u64,
                key: 0,
                rw_flags: 0,
                opcode: 0, // IOCB_CMD_PREAD
                reqprio: 0,
                fildes: self.direct_fd as u32,
                buf: addr + done,
                nbytes: n,
                offset: (off + done) as i64,
                reserved2: 0,
                flags: 0,
                resfd: 0,
            };
            let list = [&self.slots[k] as *const Iocb];
            // SAFETY: one valid iocb; its buffer lies in a region mapped writable.
            let r = unsafe { sc(SYS_IO_SUBMIT, self.ctx, 1, list.as_ptr() as usize, 0, 0, 0) };
            if r == 1 {
                self.busy[k] = true;
                self.in_flight += 1;
            } else {
                pread_all(self.image_fd, addr + done, n, off + done);
                self.pending[(seq % AIO_PENDING as u64) as usize].done = true;
            }
            done += n;
            self.checksum_arrived();
            check_abandoned();
        }
    }

    /// Wait for at least `min` requests; finish short or failed ones with pread; then
    /// checksum what has arrived in order.
    fn reap(&mut self, min: usize) {
        let mut ev = [IoEvent::default(); AIO_DEPTH];
        let r = loop {
            // SAFETY: ev holds AIO_DEPTH events; no timeout.
            let r = unsafe { sc(SYS_IO_GETEVENTS, self.ctx, min, AIO_DEPTH, ev.as_mut_ptr() as usize, 0, 0) };
            if r != -4 {
                break r; // not EINTR
            }
        };
        if r < 0 {
            fail(b"waiting for page data reads (io_getevents) failed", EXIT_BAD_DATA);
        }
        for e in &ev[..r as usize] {
            let k = ((e.data & 0xff) as usize).min(AIO_DEPTH - 1);
            let at = ((e.data >> 8) % AIO_PENDING as u64) as usize;
            let s = self.slots[k];
            let got = if e.res < 0 { 0 } else { (e.res as u64).min(s.nbytes) };
            if got < s.nbytes {
                pread_all(self.image_fd, s.buf + got, s.nbytes - got, s.offset as u64 + got);
            }
            self.busy[k] = false;
            self.in_flight -= 1;
            self.pending[at].done = true;
        }
        self.checksum_arrived();
    }

    /// Append the checksums of the oldest pieces that have arrived; check each run after
    /// its last piece.
    fn checksum_arrived(&mut self) {
        while self.head < self.next {
            let p = self.pending[(self.head % AIO_PENDING as u64) as usize];
            if !p.done {
                return;
            }
            self.head += 1;
            if !p.check {
                continue;
            }
            if p.first {
                self.acc = !0;
            }
            // SAFETY: the piece has been read into memory mapped readable.
            self.acc = unsafe { crc32c_update(self.acc, p.addr as *const u8, p.len as usize) };
            if p.last && !self.acc != p.crc {
                fail_at(b"page data fails its checksum (corrupt image)", p.run_addr, 0, EXIT_BAD_DATA);
            }
        }
    }

    /// Wait for every request in flight (and checksum everything).
    fn drain(&mut self) {
        while self.in_flight > 0 {
            self.reap(self.in_flight);
        }
        self.checksum_arrived();
    }

    /// Close the direct fd; the context (idle: drained) is left for the preload to
    /// destroy once the program runs ([`RestartArgs::aio_ctx`]): `io_destroy` waits for
    /// an RCU grace period.
    fn close(self) -> u64 {
        // SAFETY: our fd.
        unsafe { sc(SYS_CLOSE, self.direct_fd, 0, 0, 0, 0, 0) };
        self.ctx as u64
    }
}

#[unsafe(no_mangle)]
extern "C" fn restorer_main(sp: *const usize) -> ! {
    // SAFETY: the kernel's initial stack: argc, then argv pointers.
    let (argc, argv) = unsafe { (*sp, sp.add(1) as *const *const u8) };
    if argc < 3 {
        fail(b"usage: crust-restorer PLAN_FD PLAN_ADDR (run by crrestart)", EXIT_BAD_PLAN);
    }
    // SAFETY: argc >= 3.
    let (plan_fd, plan_addr) = unsafe { (parse_dec(*argv.add(1)), parse_hex(*argv.add(2))) };
    let (Some(plan_fd), Some(plan_addr)) = (plan_fd, plan_addr) else { fail(b"bad arguments", EXIT_BAD_PLAN) };

    let mut st = [0u64; 18];
    // SAFETY: st is large enough for struct stat.
    if unsafe { sc(SYS_FSTAT, plan_fd, st.as_mut_ptr() as usize, 0, 0, 0, 0) } < 0 {
        fail(b"cannot stat the plan", EXIT_BAD_PLAN);
    }
    let plan_len = ((st[6] as usize) + 4095) & !4095; // st_size is the 7th word
    // SAFETY: crrestart chose a free address for the plan.
    let r = unsafe {
        sc(SYS_MMAP, plan_addr, plan_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED_NOREPLACE, plan_fd, 0)
    };
    if r != plan_addr as isize {
        fail_at(b"cannot map the plan", plan_addr as u64, r, EXIT_BAD_PLAN);
    }
    // SAFETY: the plan starts with a PlanHeader written by crrestart.
    let h = unsafe { &mut *(plan_addr as *mut PlanHeader) };
    if h.magic != PLAN_MAGIC || h.version != PLAN_VERSION {
        fail(b"bad plan (version mismatch between crrestart and crust-restorer?)", EXIT_BAD_PLAN);
    }
    if h.args.err_fd >= 0 {
        ERR_FD.store(h.args.err_fd as usize, Relaxed);
    }
    WHO.store(h.who.as_ptr() as usize, Relaxed);
    WHO_LEN.store(h.who.iter().position(|&c| c == 0).unwrap_or(h.who.len()), Relaxed);
    if h.report_fd >= 0 && h.go_fd >= 0 {
        REPORT_FD.store(h.report_fd as usize, Relaxed);
        GO_FD.store(h.go_fd as usize, Relaxed);
    }
    IS_ROOT.store(h.is_root as usize, Relaxed);
    let own_start = h.args.restorer_start;
    let own_end = h.args.restorer_end;

    // Everything but ourselves, the plan and the kernel's special pages goes.
    let mut vdso_now = [(0u64, 0u64); 4];
    {
        let text = read_maps();
        for_each_map(text, |start, end, name| {
            let k = special_kind(name);
            if k != 0 {
                vdso_now[k as usize] = (start, end);
                return;
            }
            if name == b"[vsyscall]" {
                return;
            }
            if start >= own_start && end <= own_end {
                return;
            }
            if start >= plan_addr as u64 && end <= (plan_addr + plan_len) as u64 {
                return;
            }
            // SAFETY: nothing we need lives there (we run on our own stack).
            unsafe { sc(SYS_MUNMAP, start as usize, (end - start) as usize, 0, 0, 0, 0) };
        });
    }

    // Move the special mappings: first all to the scratch area, then to their targets,
    // so that a target overlapping a current position is never a problem.
    let mut parked = [(0u64, 0u64); 4];
    let mut next = h.scratch_addr;
    for k in 1..4 {
        let (s, e) = vdso_now[k];
        if s == 0 {
            continue;
        }
        // SAFETY: moving a special mapping into free space.
        let r = unsafe { sc(SYS_MREMAP, s as usize, (e - s) as usize, (e - s) as usize, MREMAP_MAYMOVE | MREMAP_FIXED, next as usize, 0) };
        if r < 0 {
            fail_at(b"cannot move the vdso", s, r, EXIT_MAP_FAILED);
        }
        parked[k] = (next, e - s);
        next += (e - s) + 0x10000;
    }
    for i in 0..h.n_special as usize {
        let sp = h.special[i];
        let k = sp.kind as usize;
        if k == 0 || k > 3 {
            continue;
        }
        let (at, len) = parked[k];
        if at == 0 {
            fail(b"this kernel has no matching vdso/vvar mapping; restart on the kernel that took the checkpoint", EXIT_MAP_FAILED);
        }
        if len != sp.len {
            fail(b"the vdso/vvar size differs from the checkpoint's kernel; restart on the kernel that took the checkpoint", EXIT_MAP_FAILED);
        }
        // SAFETY: the target is free (it was a special mapping in the image, nothing else).
        let r = unsafe { sc(SYS_MREMAP, at as usize, len as usize, len as usize, MREMAP_MAYMOVE | MREMAP_FIXED, sp.addr as usize, 0) };
        if r < 0 {
            fail_at(b"cannot move the vdso into place", sp.addr, r, EXIT_MAP_FAILED);
        }
        parked[k] = (0, 0);
    }
    // Special mappings the image did not have (older kernel): leave them parked.

    // Memory areas.
    let regions = (plan_addr + h.regions_off as usize) as *const PlanRegion;
    let runs = (plan_addr + h.runs_off as usize) as *const PlanRun;
    let strings = (plan_addr + h.strings_off as usize) as *const u8;
    let image_fd = h.args.image_fd as usize;
    for i in 0..h.n_regions as usize {
        // SAFETY: crrestart wrote n_regions entries.
        let r = unsafe { *regions.add(i) };
        let len = (r.end - r.start) as usize;
        // Filled (and checksummed) before its final protection is set.
        let need_write = r.n_runs > 0;
        let prot = r.prot as usize | if need_write { PROT_READ | PROT_WRITE } else { 0 };
        let share = if r.flags & RF_SHARED != 0 { MAP_SHARED } else { MAP_PRIVATE };
        let m = if r.flags & RF_FILE != 0 {
            let mut path = [0u8; 4096];
            let n = (r.path_len as usize).min(4095);
            // SAFETY: the path bytes are inside the plan.
            unsafe { core::ptr::copy_nonoverlapping(strings.add(r.path_off as usize), path.as_mut_ptr(), n) };
            let mode = if r.flags & RF_FILE_WRITE != 0 { O_RDWR } else { O_RDONLY };
            // SAFETY: NUL-terminated path.
            let fd = unsafe { sc(SYS_OPENAT, AT_FDCWD as usize, path.as_ptr() as usize, mode | O_CLOEXEC, 0, 0, 0) };
            if fd < 0 {
                write_err(&path[..n]);
                fail_at(b": cannot open mapped file", r.start, fd, EXIT_MAP_FAILED);
            }
            // SAFETY: mapping the program's file at its address.
            let m = unsafe { sc(SYS_MMAP, r.start as usize, len, prot, share | MAP_FIXED, fd as usize, r.file_offset as usize) };
            // SAFETY: our fd.
            unsafe { sc(SYS_CLOSE, fd as usize, 0, 0, 0, 0, 0) };
            m
        } else {
            let grows = if r.flags & RF_GROWSDOWN != 0 { MAP_GROWSDOWN } else { 0 };
            // SAFETY: anonymous memory at the program's address.
            unsafe { sc(SYS_MMAP, r.start as usize, len, prot, share | MAP_ANONYMOUS | MAP_FIXED | grows, usize::MAX, 0) }
        };
        if m != r.start as isize {
            fail_at(b"cannot map memory", r.start, m, EXIT_MAP_FAILED);
        }
        for j in 0..r.n_runs as usize {
            // SAFETY: crrestart wrote the runs of this region.
            let run = unsafe { *runs.add(r.first_run as usize + j) };
            if run.flags & RUN_MAP != 0 {
                // Straight from the image: pages come in from the page cache when touched,
                // and are the program's own (copy-on-write) once written.
                // SAFETY: the run lies inside the region just mapped; the image fd is open.
                let m = unsafe {
                    sc(SYS_MMAP, run.addr as usize, run.len as usize, prot, MAP_PRIVATE | MAP_FIXED, image_fd, run.image_off as usize)
                };
                if m != run.addr as isize {
                    fail_at(b"cannot map page data from the image", run.addr, m, EXIT_MAP_FAILED);
                }
            }
        }
    }

    // Page data read in, once every region is mapped (the AIO context's ring is a mapping
    // the kernel places in a free range: it must not be where a region goes later). Every
    // run read is checked against its crc32c as it arrives, unless crrestart checked them
    // all already (`h.verify` = 0: a compressed image, unpacked and checked into a memfd).
    let mut aio = if h.direct_reads != 0 { Aio::open(image_fd) } else { None };
    start_prefaulter(regions, runs, h.n_regions as usize);
    let mut since_poll = 0u64;
    for i in 0..h.n_regions as usize {
        // SAFETY: crrestart wrote n_regions entries.
        let r = unsafe { *regions.add(i) };
        for j in 0..r.n_runs as usize {
            // SAFETY: crrestart wrote the runs of this region.
            let run = unsafe { *runs.add(r.first_run as usize + j) };
            if run.flags & RUN_MAP != 0 {
                continue;
            }
            let check = h.verify != 0 && run.flags & RUN_PART == 0;
            match aio.as_mut().filter(|_| run.len >= AIO_MIN_RUN) {
                Some(a) => a.read(run.addr, run.len, run.image_off, run.crc, check),
                None => {
                    pread_run(image_fd, run.addr, run.len, run.image_off, run.crc, check);
                    since_poll += run.len;
                    if since_poll >= AIO_PIECE {
                        since_poll = 0;
                        check_abandoned();
                    }
                }
            }
        }
    }
    if let Some(mut a) = aio.take() {
        a.drain();
        h.args.aio_ctx = a.close();
    }
    // Before the final protections (it populates with write access) and before the
    // program runs (it must be gone: the program's threads are the only ones).
    stop_prefaulter();
    for i in 0..h.n_regions as usize {
        // SAFETY: crrestart wrote n_regions entries.
        let r = unsafe { *regions.add(i) };
        let need_write = r.n_runs > 0;
        let prot = r.prot as usize | if need_write { PROT_READ | PROT_WRITE } else { 0 };
        if need_write && prot != r.prot as usize {
            // SAFETY: final protection of the program's memory.
            unsafe { sc(SYS_MPROTECT, r.start as usize, (r.end - r.start) as usize, r.prot as usize, 0, 0, 0) };
        }
    }

    // Every page is in place and checked: wait until every process of the tree is there
    // too and crrestart's supervisor has put the programs' files back (rebuild.rs).
    barrier();

    // The kernel's idea of the address space layout.
    let mut mm = h.mm;
    mm.auxv = h.auxv.as_ptr() as u64;
    mm.auxv_size = h.auxv_words * 8;
    mm.exe_fd = u32::MAX;
    // SAFETY: a valid prctl_mm_map.
    let r = unsafe { sc(SYS_PRCTL, PR_SET_MM, PR_SET_MM_MAP, &mm as *const MmMap as usize, core::mem::size_of::<MmMap>(), 0, 0) };
    h.args.mm_errno = if r < 0 { (-r) as i32 } else { 0 };

    let entry = h.entry;
    let stack = h.entry_stack;
    let args = &h.args as *const RestartArgs as usize;
    // SAFETY: the preload's restart entry, on its restart stack, never returns.
    unsafe {
        asm!("mov rsp, {stack}", "call {entry}", "ud2",
            stack = in(reg) stack, entry = in(reg) entry, in("rdi") args, options(noreturn));
    }
}

/// The precompiled `core` refers to this symbol even though nothing here unwinds.
#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() {}
