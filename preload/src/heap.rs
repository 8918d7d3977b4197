//! The preload's private memory allocator.
//!
//! The Rust code in the preload never uses libc's malloc: an application thread may be
//! stopped for a checkpoint while it holds malloc's lock, and the checkpoint thread must
//! still be able to allocate. This allocator takes memory straight from the kernel.
//!
//! * Small blocks come from power-of-two size classes (16 B .. 32 KiB) carved out of
//!   1 MiB chunks, with intrusive free lists, behind a spin lock. Only the checkpoint thread
//!   and our wrappers allocate, and wrappers run under the wrapper lock, so no stopped
//!   thread can ever hold this lock while the checkpoint thread needs it.
//! * Large blocks are their own mappings.
//! * While a checkpoint writes memory, allocations go to a *scratch* arena instead (bump
//!   allocation, frees ignored). The scratch arena is not part of the image, and the
//!   allocator's own state is not touched while pages are being written, so the image
//!   holds a consistent allocator.

use crate::sys;
use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

const CLASSES: usize = 12; // 16 << 0 ..= 16 << 11 (32 KiB)
const MIN_SHIFT: usize = 4;
const CHUNK: usize = 1 << 20;
/// Virtual size reserved for the scratch arena (not committed until touched).
pub const SCRATCH_RESERVE: usize = 8 << 30;

pub struct PreloadAlloc;

struct State {
    free: [usize; CLASSES],
    bump: usize,
    bump_end: usize,
}

static LOCK: AtomicBool = AtomicBool::new(false);
static mut STATE: State = State { free: [0; CLASSES], bump: 0, bump_end: 0 };

/// Scratch arena: active flag, base, current bump offset.
static SCRATCH_ON: AtomicBool = AtomicBool::new(false);
static SCRATCH_BASE: AtomicUsize = AtomicUsize::new(0);
static SCRATCH_USED: AtomicUsize = AtomicUsize::new(0);

fn lock() {
    while LOCK.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
        core::hint::spin_loop();
    }
}
fn unlock() {
    LOCK.store(false, Ordering::Release);
}

/// Around `fork`: hold the allocator's lock so the child never inherits it taken by
/// another thread (the checkpoint thread allocates at any time).
pub fn fork_prepare() {
    lock();
}

/// After `fork`, in the parent and in the child.
pub fn fork_done() {
    unlock();
}

fn class_of(size: usize, align: usize) -> Option<usize> {
    let need = size.max(align).max(1 << MIN_SHIFT);
    let c = (usize::BITS - (need - 1).leading_zeros()) as usize - MIN_SHIFT;
    (c < CLASSES).then_some(c)
}

/// Route allocations of the checkpoint thread into the scratch arena (true) or back to
/// the normal heap (false). Turning it off discards everything allocated in scratch.
pub fn set_scratch(on: bool) -> bool {
    if on {
        if SCRATCH_BASE.load(Ordering::Relaxed) == 0 {
            // SAFETY: a fresh reservation at a kernel-chosen address.
            let r = unsafe {
                sys::mmap(
                    0,
                    SCRATCH_RESERVE,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            match r {
                Ok(a) => SCRATCH_BASE.store(a, Ordering::Relaxed),
                Err(_) => return false,
            }
        }
        SCRATCH_USED.store(0, Ordering::Relaxed);
        SCRATCH_ON.store(true, Ordering::SeqCst);
    } else {
        release_scratch(scratch_off());
    }
    true
}

/// Route allocations back to the normal heap; returns how much of the scratch arena was
/// used, for [`release_scratch`] (which may come later: the checkpoint thread gives the
/// pages back after the program runs again, out of its downtime).
pub fn scratch_off() -> usize {
    SCRATCH_ON.store(false, Ordering::SeqCst);
    SCRATCH_USED.swap(0, Ordering::Relaxed)
}

/// Return the first `used` bytes of the scratch arena to the kernel (everything allocated
/// there is discarded).
pub fn release_scratch(used: usize) {
    let base = SCRATCH_BASE.load(Ordering::Relaxed);
    if base != 0 && used > 0 {
        // SAFETY: returns scratch pages to the kernel; nothing refers to them any more.
        unsafe {
            sys::sc!(sys::SYS_madvise, base, (used + 4095) & !4095, libc::MADV_DONTNEED);
        }
    }
}

/// The scratch arena's address range (excluded from images).
pub fn scratch_range() -> (usize, usize) {
    let b = SCRATCH_BASE.load(Ordering::Relaxed);
    (b, if b == 0 { 0 } else { b + SCRATCH_RESERVE })
}

/// After a restart the scratch arena was not restored: forget it.
pub fn forget_scratch() {
    SCRATCH_ON.store(false, Ordering::SeqCst);
    SCRATCH_BASE.store(0, Ordering::Relaxed);
    SCRATCH_USED.store(0, Ordering::Relaxed);
}

fn scratch_alloc(layout: Layout) -> *mut u8 {
    let base = SCRATCH_BASE.load(Ordering::Relaxed);
    let align = layout.align().max(16);
    let mut cur = SCRATCH_USED.load(Ordering::Relaxed);
    loop {
        let start = (base + cur + align - 1) & !(align - 1);
        let end = start + layout.size();
        if end > base + SCRATCH_RESERVE {
            return core::ptr::null_mut();
        }
        match SCRATCH_USED.compare_exchange(cur, end - base, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return start as *mut u8,
            Err(c) => cur = c,
        }
    }
}

fn in_scratch(p: *mut u8) -> bool {
    let (b, e) = scratch_range();
    (p as usize) >= b && (p as usize) < e
}

// SAFETY: the allocator hands out disjoint blocks of at least the requested size and
// alignment; all shared state is protected by LOCK or is atomic.
unsafe impl GlobalAlloc for PreloadAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if SCRATCH_ON.load(Ordering::Relaxed) {
            return scratch_alloc(layout);
        }
        match class_of(layout.size(), layout.align()) {
            Some(c) => {
                let size = 1usize << (c + MIN_SHIFT);
                lock();
                // SAFETY: STATE is only touched under LOCK.
                let st = unsafe { &mut *core::ptr::addr_of_mut!(STATE) };
                let head = st.free[c];
                let p = if head != 0 {
                    // SAFETY: free blocks store the next pointer in their first word.
                    st.free[c] = unsafe { *(head as *const usize) };
                    head
                } else {
                    let mut start = (st.bump + size - 1) & !(size - 1);
                    if st.bump == 0 || start + size > st.bump_end {
                        match sys::mmap_anon(CHUNK) {
                            Ok(a) => {
                                st.bump = a;
                                st.bump_end = a + CHUNK;
                                start = a;
                            }
                            Err(_) => {
                                unlock();
                                return core::ptr::null_mut();
                            }
                        }
                    }
                    st.bump = start + size;
                    start
                };
                unlock();
                p as *mut u8
            }
            None => {
                let align = layout.align();
                let len = (layout.size() + 4095) & !4095;
                if align <= 4096 {
                    sys::mmap_anon(len).map_or(core::ptr::null_mut(), |a| a as *mut u8)
                } else {
                    // Over-allocate and trim to honour large alignments.
                    let Ok(a) = sys::mmap_anon(len + align) else { return core::ptr::null_mut() };
                    let start = (a + align - 1) & !(align - 1);
                    // SAFETY: trimming the unused head and tail of our own fresh mapping.
                    unsafe {
                        if start > a {
                            let _ = sys::munmap(a, start - a);
                        }
                        let tail = a + len + align - (start + len);
                        if tail > 0 {
                            let _ = sys::munmap(start + len, tail);
                        }
                    }
                    start as *mut u8
                }
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if in_scratch(ptr) {
            return;
        }
        match class_of(layout.size(), layout.align()) {
            Some(c) => {
                lock();
                // SAFETY: STATE under LOCK; the block is ours and at least 16 bytes.
                unsafe {
                    let st = &mut *core::ptr::addr_of_mut!(STATE);
                    *(ptr as *mut usize) = st.free[c];
                    st.free[c] = ptr as usize;
                }
                unlock();
            }
            None => {
                let len = (layout.size() + 4095) & !4095;
                // SAFETY: the block was one mapping of this length.
                unsafe {
                    let _ = sys::munmap(ptr as usize, len);
                }
            }
        }
    }
}
