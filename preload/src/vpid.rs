//! Virtual process, thread, process-group and session ids.
//!
//! A program must see the same ids after a restart, but the kernel hands the restarted
//! processes new ones. This table maps the ids the program knows (virtual) to the kernel's
//! (real). Before any restart the table is empty and every id is its own virtual id.
//! Process groups and sessions mostly need no entries of their own: a pgid or sid is the
//! pid of its leader, so the leader's entry translates it. A group whose leader had exited
//! before a checkpoint is led, after the restart, by one of its members, whose real pid is
//! then both that member's pid and the group's id: such group ids live in a table of
//! their own ([`insert_group`]), which only the calls that return a *group* id consult
//! ([`to_virtual_group`]), so `getpgrp()` shows the group's old id while `getpid()` of the
//! same process shows its own.
//!
//! ## API (used by the wrappers, the restart path and crrestart's tree rebuild)
//!
//! | function | what |
//! |---|---|
//! | [`insert`]`(virt, real)` | record or update a mapping (`virt == real` removes it) |
//! | [`remove`]`(virt)` / [`remove_real`]`(real)` | forget a mapping (a stale one: its real pid was handed out again) |
//! | [`to_real`]`(virt)` | id the program knows → kernel id (`-pgid` and 0/-1 handled) |
//! | [`to_virtual`]`(real)` | kernel id → id the program knows |
//! | [`insert_group`]`(virt, real)` / [`to_virtual_group`]`(real)` | group ids whose leader is gone |
//! | [`entries`]`(out)` | every `(virt, real)` pair (for an image, or to pass across exec) |
//! | [`is_virtual_in_use`]`(id)` | whether `id` is some other process's virtual id (fork collisions) |
//! | [`set_self`]`(vpid)` / [`vpid`]`()` | this process's own virtual pid |
//! | [`encode`] / [`decode_into`] | the table as text `v:r,v:r,...` (the `CR_VPIDS` variable across exec) |
//!
//! At restart, every process of a tree should get the mappings of the *whole* tree
//! (parents, children, siblings, pgid/sid leaders), not only its own: any pid a program
//! learnt (through a pipe, a file) must keep translating, and a new child's real pid must
//! never equal a virtual pid the program might know (see `fork` in `wrap_proc.rs`).
//!
//! Lookups are lock-free: they run in wrappers and in signal handlers (SIGCHLD's `si_pid`).
//! Writers (wrappers, the restart path) serialise on a small spin lock; they always run
//! inside a wrapper section, so no writer is ever stopped for a checkpoint while holding
//! it. Slots are published with release stores (real first, then virt), and a removed
//! slot gets `virt = 0` first, so a reader never sees a half-written pair.

use core::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};

/// Most mappings one process keeps.
pub const MAX: usize = 8192;

struct Entry {
    virt: AtomicI32,
    real: AtomicI32,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Entry = Entry { virt: AtomicI32::new(0), real: AtomicI32::new(0) };
static TABLE: [Entry; MAX] = [EMPTY; MAX];
/// Slots in use or tombstoned below this index.
static LEN: AtomicUsize = AtomicUsize::new(0);
static WRITER: AtomicBool = AtomicBool::new(false);

/// Most group ids without their leader one process keeps.
const MAX_GROUPS: usize = 256;
static GROUPS: [Entry; MAX_GROUPS] = [EMPTY; MAX_GROUPS];
static GROUPS_LEN: AtomicUsize = AtomicUsize::new(0);

/// The process's virtual pid (0 until it differs from the real one or a checkpoint set it).
pub static VPID: AtomicI32 = AtomicI32::new(0);

fn lock() {
    while WRITER.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
        core::hint::spin_loop();
    }
}

fn unlock() {
    WRITER.store(false, Ordering::Release);
}

/// Whether any mapping exists (fast path of every translation).
#[inline]
pub fn is_empty() -> bool {
    LEN.load(Ordering::Acquire) == 0 && GROUPS_LEN.load(Ordering::Acquire) == 0
}

/// Real id → the id the program knows. Negative ids below -1 are process groups.
pub fn to_virtual(real: i32) -> i32 {
    if real <= 0 {
        if real < -1 {
            return -to_virtual_group(-real);
        }
        return real;
    }
    virt_of(&TABLE[..LEN.load(Ordering::Acquire)], real).unwrap_or(real)
}

/// The virtual id `entries` give to `real`, if any (a removed slot has `virt == 0`).
fn virt_of(entries: &[Entry], real: i32) -> Option<i32> {
    entries.iter().find_map(|e| {
        let v = (e.real.load(Ordering::Acquire) == real).then(|| e.virt.load(Ordering::Acquire))?;
        (v != 0).then_some(v)
    })
}

/// Real process-group id → the id the program knows (see the module's notes).
pub fn to_virtual_group(real: i32) -> i32 {
    let group = if real > 0 { virt_of(&GROUPS[..GROUPS_LEN.load(Ordering::Acquire)], real) } else { None };
    group.unwrap_or_else(|| to_virtual(real))
}

/// Record that group `virt` (whose leader is gone) is `real` now. Returns false when the
/// table is full.
pub fn insert_group(virt: i32, real: i32) -> bool {
    if virt <= 0 || real <= 0 || virt == real {
        return false;
    }
    lock();
    let n = GROUPS_LEN.load(Ordering::Acquire);
    let ok = if let Some(e) = GROUPS[..n].iter().find(|e| e.virt.load(Ordering::Relaxed) == virt) {
        e.real.store(real, Ordering::Release);
        true
    } else if n < MAX_GROUPS {
        GROUPS[n].real.store(real, Ordering::Release);
        GROUPS[n].virt.store(virt, Ordering::Release);
        GROUPS_LEN.store(n + 1, Ordering::Release);
        true
    } else {
        false
    };
    unlock();
    ok
}

/// Id the program knows → real id. Negative ids below -1 are process groups (`-pgid`).
pub fn to_real(virt: i32) -> i32 {
    if virt <= 0 {
        if virt < -1 {
            return -to_real(-virt);
        }
        return virt;
    }
    let n = LEN.load(Ordering::Acquire);
    let groups = GROUPS_LEN.load(Ordering::Acquire);
    for e in TABLE[..n].iter().chain(&GROUPS[..groups]) {
        if e.virt.load(Ordering::Acquire) == virt {
            let r = e.real.load(Ordering::Acquire);
            if r != 0 {
                return r;
            }
        }
    }
    virt
}

/// Record (or update) `virt → real`. `virt == real` removes any mapping of `virt`.
/// Returns false when the table is full.
pub fn insert(virt: i32, real: i32) -> bool {
    if virt <= 0 || real <= 0 {
        return false;
    }
    if virt == real {
        remove(virt);
        return true;
    }
    lock();
    let n = LEN.load(Ordering::Acquire);
    let mut free = None;
    for (i, e) in TABLE[..n].iter().enumerate() {
        let v = e.virt.load(Ordering::Relaxed);
        if v == virt {
            e.real.store(real, Ordering::Release);
            unlock();
            return true;
        }
        if v == 0 && free.is_none() {
            free = Some(i);
        }
    }
    let ok = match free {
        Some(i) => {
            TABLE[i].real.store(real, Ordering::Release);
            TABLE[i].virt.store(virt, Ordering::Release);
            true
        }
        None if n < MAX => {
            TABLE[n].real.store(real, Ordering::Release);
            TABLE[n].virt.store(virt, Ordering::Release);
            LEN.store(n + 1, Ordering::Release);
            true
        }
        None => false,
    };
    unlock();
    ok
}

/// Former name of [`insert`] (kept for the restart path).
pub fn set(virt: i32, real: i32) {
    insert(virt, real);
}

/// Forget the mapping of `virt`, if any.
pub fn remove(virt: i32) {
    if virt <= 0 {
        return;
    }
    lock();
    let n = LEN.load(Ordering::Acquire);
    for e in &TABLE[..n] {
        if e.virt.load(Ordering::Relaxed) == virt {
            e.virt.store(0, Ordering::Release);
            e.real.store(0, Ordering::Release);
        }
    }
    // Drop trailing tombstones so the fast path sees an empty table again.
    let mut m = n;
    while m > 0 && TABLE[m - 1].virt.load(Ordering::Relaxed) == 0 {
        m -= 1;
    }
    if m != n {
        LEN.store(m, Ordering::Release);
    }
    unlock();
}

/// Forget the mapping whose *real* id is `real` (a child reaped by its real pid).
pub fn remove_real(real: i32) {
    let v = to_virtual(real);
    if v != real {
        remove(v);
    }
}

/// In a forked child: the writer lock may have been copied while another thread of the
/// parent held it.
pub fn after_fork_child() {
    WRITER.store(false, Ordering::Release);
}

/// Forget every mapping.
pub fn clear() {
    lock();
    LEN.store(0, Ordering::Release);
    GROUPS_LEN.store(0, Ordering::Release);
    unlock();
}

/// Every `(virt, real)` pair, appended to `out`.
pub fn entries(out: &mut std::vec::Vec<(i32, i32)>) {
    let n = LEN.load(Ordering::Acquire);
    for e in &TABLE[..n] {
        let v = e.virt.load(Ordering::Acquire);
        let r = e.real.load(Ordering::Acquire);
        if v != 0 && r != 0 {
            out.push((v, r));
        }
    }
}

/// Whether `id` is a virtual id the program may know for some *other* process or thread
/// than the one whose real id is `id`: a fresh real pid equal to it would be ambiguous.
pub fn is_virtual_in_use(id: i32) -> bool {
    if id <= 0 {
        return false;
    }
    if VPID.load(Ordering::Relaxed) == id && crate::sys::getpid() != id {
        return true;
    }
    let n = LEN.load(Ordering::Acquire);
    let groups = GROUPS_LEN.load(Ordering::Acquire);
    TABLE[..n].iter().chain(&GROUPS[..groups]).any(|e| e.virt.load(Ordering::Acquire) == id && e.real.load(Ordering::Acquire) != id)
}

/// Set this process's virtual pid (after exec or restart). Also maps it to the real pid.
pub fn set_self(vpid: i32) {
    VPID.store(vpid, Ordering::Relaxed);
    let real = crate::sys::getpid();
    if vpid > 0 && vpid != real {
        insert(vpid, real);
    }
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

/// The table as `v:r,v:r,...`, group ids as `v:r:g` (empty when there are no mappings).
pub fn encode() -> std::string::String {
    let mut pairs = std::vec::Vec::new();
    entries(&mut pairs);
    let mut s = std::string::String::new();
    for (v, r) in pairs {
        s.push_str(&std::format!("{v}:{r},"));
    }
    for e in &GROUPS[..GROUPS_LEN.load(Ordering::Acquire)] {
        let (v, r) = (e.virt.load(Ordering::Acquire), e.real.load(Ordering::Acquire));
        if v != 0 && r != 0 {
            s.push_str(&std::format!("{v}:{r}:g,"));
        }
    }
    s.pop();
    s
}

/// Add the mappings of an [`encode`]d table; malformed pairs are skipped.
pub fn decode_into(s: &[u8]) {
    for pair in s.split(|&c| c == b',') {
        let (pair, group) = match pair.strip_suffix(b":g") {
            Some(p) => (p, true),
            None => (pair, false),
        };
        let Some(colon) = pair.iter().position(|&c| c == b':') else { continue };
        let parse = |b: &[u8]| core::str::from_utf8(b).ok().and_then(|t| t.parse::<i32>().ok());
        if let (Some(v), Some(r)) = (parse(&pair[..colon]), parse(&pair[colon + 1..])) {
            if group {
                insert_group(v, r);
            } else {
                insert(v, r);
            }
        }
    }
}
