//! Virtual process and thread ids.
//!
//! A program must see the same pid and tids after a restart, but the kernel hands the
//! restarted process new ones. This table maps the ids the program knows (virtual) to the
//! kernel's (real). Before any restart the table is empty and every id is its own virtual
//! id. Lookups are lock-free (they run in wrappers and signal handlers); entries are only
//! added by the restart path and by single wrapper calls.

use core::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

const MAX: usize = 8192;

struct Entry {
    virt: AtomicI32,
    real: AtomicI32,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Entry = Entry { virt: AtomicI32::new(0), real: AtomicI32::new(0) };
static TABLE: [Entry; MAX] = [EMPTY; MAX];
static LEN: AtomicUsize = AtomicUsize::new(0);

/// The process's virtual pid (0 until known).
pub static VPID: AtomicI32 = AtomicI32::new(0);

/// Real id → the id the program knows.
pub fn to_virtual(real: i32) -> i32 {
    let n = LEN.load(Ordering::Acquire);
    for e in &TABLE[..n] {
        if e.real.load(Ordering::Relaxed) == real {
            return e.virt.load(Ordering::Relaxed);
        }
    }
    real
}

/// Id the program knows → real id.
pub fn to_real(virt: i32) -> i32 {
    if virt <= 0 {
        // Process groups (-pgid) and special values.
        if virt < -1 {
            return -to_real(-virt);
        }
        return virt;
    }
    let n = LEN.load(Ordering::Acquire);
    for e in &TABLE[..n] {
        if e.virt.load(Ordering::Relaxed) == virt {
            return e.real.load(Ordering::Relaxed);
        }
    }
    virt
}

/// Record (or update) virt → real. Single writer at a time (restart path).
pub fn set(virt: i32, real: i32) {
    let n = LEN.load(Ordering::Acquire);
    for e in &TABLE[..n] {
        if e.virt.load(Ordering::Relaxed) == virt {
            e.real.store(real, Ordering::Release);
            return;
        }
    }
    if virt == real {
        return;
    }
    if n < MAX {
        TABLE[n].virt.store(virt, Ordering::Relaxed);
        TABLE[n].real.store(real, Ordering::Relaxed);
        LEN.store(n + 1, Ordering::Release);
    }
}

/// Forget every mapping (a forked child starts with its own real ids).
pub fn clear() {
    LEN.store(0, Ordering::Release);
}

/// The virtual pid of this process.
pub fn vpid() -> i32 {
    let v = VPID.load(Ordering::Relaxed);
    if v != 0 {
        v
    } else {
        crate::sys::getpid()
    }
}
