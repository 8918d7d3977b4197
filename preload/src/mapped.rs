//! Memory that crust-restorer mapped straight from the image (mapped restore, the default)
//! is a private file mapping. It behaves like the anonymous memory it was in every way but
//! two, which the wrappers here take care of for callers that go through the dynamic
//! linker:
//! * `madvise(MADV_DONTNEED)` on a private file mapping brings the file's bytes back, where
//!   anonymous memory reads zeros afterwards — and allocators such as jemalloc, tcmalloc and
//!   mimalloc rely on those zeros (calloc). The `madvise` wrapper first replaces the part
//!   of the range that still maps the image with fresh anonymous memory (zeros, same
//!   protection), which is what MADV_DONTNEED does to anonymous memory.
//! * `mremap` growing such a mapping would extend it over the following bytes of the image
//!   (and past its end: SIGBUS) instead of zeros. The `mremap` wrapper first turns the
//!   range into anonymous memory with the same contents (a copy).
//!
//! glibc's own `realloc` calls its internal `mremap`, which no wrapper sees: crrestart
//! keeps the last page of each glibc mmapped block anonymous so that mremap refuses and
//! realloc copies (`launcher/src/pages.rs`, `plan_runs`); README lists what remains.
//!
//! Cost outside restarted processes: one atomic load. In a restarted process, a range that
//! does not meet a mapped run costs a short scan of the recorded runs.

use crate::quiesce::WrapperGuard;
use crate::sys;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use crust_restorer::{PlanHeader, PlanRun, RestartArgs, RUN_MAP};

const MAX: usize = 8192;
/// Runs mapped from the image at the last restart: [start, end) pairs (end 0 = dropped).
static N: AtomicUsize = AtomicUsize::new(0);
static RANGES: [[AtomicU64; 2]; MAX] = [const { [AtomicU64::new(0), AtomicU64::new(0)] }; MAX];

/// Record the runs the restorer mapped (called at restart entry, before the plan goes).
///
/// # Safety
/// `args.plan_addr` must still hold the restore plan.
pub unsafe fn record_from_plan(args: &RestartArgs) {
    N.store(0, Ordering::Relaxed);
    if args.plan_addr == 0 {
        return;
    }
    // SAFETY: the plan is mapped at plan_addr (caller's contract) and starts with its header.
    let h = unsafe { &*(args.plan_addr as *const PlanHeader) };
    let runs = (args.plan_addr + h.runs_off) as *const PlanRun;
    let mut n = 0;
    for i in 0..h.n_runs as usize {
        // SAFETY: the plan holds n_runs runs at runs_off.
        let r = unsafe { *runs.add(i) };
        if r.flags & RUN_MAP != 0 && n < MAX {
            RANGES[n][0].store(r.addr, Ordering::Relaxed);
            RANGES[n][1].store(r.addr + r.len, Ordering::Relaxed);
            n += 1;
        }
    }
    N.store(n, Ordering::Release);
}

fn meets_mapped_run(a: u64, b: u64) -> bool {
    let n = N.load(Ordering::Acquire);
    (0..n).any(|i| {
        let (s, e) = (RANGES[i][0].load(Ordering::Relaxed), RANGES[i][1].load(Ordering::Relaxed));
        s < b && a < e
    })
}

/// Replace whatever in [a, b) still maps the restart image with anonymous memory.
fn unmap_image(a: u64, b: u64) {
    let Ok(maps) = crate::procfs::read_maps() else { return };
    for v in maps.iter().filter(|v| v.start < b && a < v.end && crate::dump::is_restored_image(v)) {
        let (lo, hi) = (v.start.max(a), v.end.min(b));
        // SAFETY: the program gave up the contents of this range (MADV_DONTNEED); it gets
        // zero-filled private memory with the same protection, as MADV_DONTNEED gives it.
        unsafe {
            let _ = sys::mmap(
                lo as usize,
                (hi - lo) as usize,
                v.prot as i32,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            );
        }
    }
    // Runs entirely inside the range are anonymous now.
    forget_runs_within(a, b);
}

/// Turn whatever in [a, b) still maps the restart image into anonymous memory with the
/// same contents and protection.
fn materialize(a: u64, b: u64) {
    let Ok(maps) = crate::procfs::read_maps() else { return };
    for v in maps.iter().filter(|v| v.start < b && a < v.end && crate::dump::is_restored_image(v)) {
        let (lo, hi) = (v.start.max(a), v.end.min(b));
        let len = (hi - lo) as usize;
        let Ok(tmp) = sys::mmap_anon(len) else { continue };
        // Pages past the end of the image cannot have been touched (SIGBUS): zeros.
        let readable = crate::dump::restored_image_end(v).min(hi).saturating_sub(lo) as usize;
        // SAFETY: [lo, lo+readable) is mapped (made readable for the copy if it was not),
        // tmp is our fresh mapping of len bytes; the copy then replaces the range in one
        // mremap, so the program never sees it missing.
        unsafe {
            if v.prot & libc::PROT_READ as u32 == 0 {
                let _ = sys::mprotect(lo as usize, len, libc::PROT_READ);
            }
            core::ptr::copy_nonoverlapping(lo as *const u8, tmp as *mut u8, readable);
            let _ = sys::mprotect(tmp, len, v.prot as i32);
            let r = sys::sc!(libc::SYS_mremap, tmp, len, len, libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED, lo);
            if sys::check(r).is_err() {
                let _ = sys::munmap(tmp, len);
                if v.prot & libc::PROT_READ as u32 == 0 {
                    let _ = sys::mprotect(lo as usize, len, v.prot as i32);
                }
            }
        }
    }
    forget_runs_within(a, b);
}

fn forget_runs_within(a: u64, b: u64) {
    for r in RANGES.iter().take(N.load(Ordering::Acquire)) {
        if a <= r[0].load(Ordering::Relaxed) && r[1].load(Ordering::Relaxed) <= b {
            r[1].store(0, Ordering::Relaxed);
            r[0].store(0, Ordering::Relaxed);
        }
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn mremap(
    old: *mut libc::c_void,
    old_size: libc::size_t,
    new_size: libc::size_t,
    flags: libc::c_int,
    new_addr: *mut libc::c_void,
) -> *mut libc::c_void {
    if N.load(Ordering::Relaxed) != 0 && new_size > old_size {
        let a = old as u64;
        let b = a.saturating_add((old_size as u64 + 4095) & !4095);
        if meets_mapped_run(a, b) {
            let _g = WrapperGuard::new();
            materialize(a, b);
        }
    }
    // SAFETY: the program's own request, forwarded as it is (new_addr only matters, and
    // was only passed, with MREMAP_FIXED).
    let r = unsafe { sys::sc!(libc::SYS_mremap, old, old_size, new_size, flags, new_addr) };
    match sys::check(r) {
        Ok(p) => p as *mut libc::c_void,
        Err(e) => {
            crate::wrappers::set_errno(e);
            libc::MAP_FAILED
        }
    }
}

/// Set once the program marked memory `MADV_DONTFORK` or `MADV_WIPEONFORK`: a forked
/// writer would not see that memory (absent from the copy, or zeros in it), so this
/// process writes its images while stopped instead (`ckpt_thread.rs`). Never cleared.
static FORK_EXCLUDED: AtomicBool = AtomicBool::new(false);

/// Whether the program has (or had) memory a forked copy does not get.
pub fn has_fork_excluded_memory() -> bool {
    FORK_EXCLUDED.load(Ordering::Relaxed)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn madvise(addr: *mut libc::c_void, len: libc::size_t, advice: libc::c_int) -> libc::c_int {
    if N.load(Ordering::Relaxed) != 0 && (advice == libc::MADV_DONTNEED || advice == 24 /* MADV_DONTNEED_LOCKED */) {
        let a = addr as u64;
        let b = a.saturating_add((len as u64 + 4095) & !4095);
        if meets_mapped_run(a, b) {
            let _g = WrapperGuard::new();
            unmap_image(a, b);
        }
    }
    // SAFETY: the program's own request, forwarded as it is.
    let r = unsafe { sys::sc!(libc::SYS_madvise, addr, len, advice) };
    match sys::check(r) {
        Ok(_) => {
            if advice == libc::MADV_DONTFORK || advice == 18 /* MADV_WIPEONFORK */ {
                FORK_EXCLUDED.store(true, Ordering::Relaxed);
            }
            0
        }
        Err(e) => {
            crate::wrappers::set_errno(e);
            -1
        }
    }
}
