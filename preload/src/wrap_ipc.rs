//! SysV IPC (shared memory, semaphore sets, message queues) and POSIX message queues.
//!
//! * **Virtual ids.** The kernel gives a restarted computation's SysV objects new ids, but
//!   the program holds the old ones. Every SysV function that takes or returns an id is
//!   wrapped: ids the program passes in are translated virtual → real, ids it gets back
//!   real → virtual. The table is lock-free for readers (a linear scan of atomics); the
//!   few writers (object creation, first use of an id, the restart path) serialise on a
//!   spin lock and run inside a wrapper section, so no writer is ever stopped holding it.
//!   Before any restart every id is its own virtual id; the table then only lists the
//!   objects the program used (which a checkpoint saves).
//! * **Checkpoint** ([`capture`], while every process of the computation is stopped): each
//!   object of the table that still exists is described (key, mode, size) from
//!   `IPC_STAT`; its contents are stored by the one process that creates the claim file
//!   `.sysv-<host>-<kind>-<id>` in the generation directory: a segment's bytes (attached
//!   read-only for the copy), a set's values (`GETALL`), a queue's messages (`MSG_COPY`,
//!   which reads without consuming; without it the queue is drained and refilled in
//!   order). Attachments come from `/proc/self/maps` (`/SYSV<key> (deleted)`, the inode
//!   is the id); their pages are not stored as memory (the segment's contents are), and
//!   where they are is also kept in static memory for the restart.
//! * **Restart**: crrestart creates every object once (`launcher/src/ipc.rs`) and hands
//!   each process a memfd named `crust-ipc` with `(kind, virtual id, new id)` records;
//!   [`after_restart`] loads them into the table, attaches every segment again at its
//!   address (`SHM_REMAP` over the restorer's placeholder), puts back the protections
//!   of each part, marks segments that were removed (IPC_RMID) once every process has
//!   attached them, and [`fix_interrupted_args`] rewrites the id of a `semop`,
//!   `msgrcv`... a thread is about to re-issue.
//! * **POSIX message queues** are fds: [`mqueue_kind`] recognises one (mqueue file
//!   system), reads its attributes and, in one process per queue, its messages with
//!   their priorities (received through a fresh description and sent back in the same
//!   order, while everything is stopped).

use crate::quiesce::WrapperGuard;
use crate::sys::{self, sc};
use crate::wrappers::{real, set_errno};
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicUsize, Ordering};
use crust_format::image::{FdKind, ShmAttach, SysvData, SysvKind, SysvObject};
use libc::{c_int, c_long, c_void, key_t, size_t, ssize_t};
use std::format;
use std::string::{String, ToString};
use std::vec::Vec;

crate::wrappers::real_slots! {
    R_SHMGET = c"shmget";
    R_SHMAT = c"shmat";
    R_SHMDT = c"shmdt";
    R_SHMCTL = c"shmctl";
    R_SEMGET = c"semget";
    R_SEMOP = c"semop";
    R_SEMTIMEDOP = c"semtimedop";
    R_SEMCTL = c"semctl";
    R_MSGGET = c"msgget";
    R_MSGSND = c"msgsnd";
    R_MSGRCV = c"msgrcv";
    R_MSGCTL = c"msgctl";
}

/// Resolve this module's real functions (at load time).
pub fn resolve() {
    resolve_slots();
}

// x86-64 system call numbers.
const SYS_SHMAT: i64 = 30;
const SYS_SHMCTL: i64 = 31;
const SYS_SEMOP: i64 = 65;
const SYS_SEMCTL: i64 = 66;
const SYS_SHMDT: i64 = 67;
const SYS_MSGSND: i64 = 69;
const SYS_MSGRCV: i64 = 70;
const SYS_MSGCTL: i64 = 71;
const SYS_SEMTIMEDOP: i64 = 220;
const SYS_MQ_TIMEDSEND: i64 = 242;
const SYS_MQ_TIMEDRECEIVE: i64 = 243;
const SYS_MQ_GETSETATTR: i64 = 245;
const SYS_FSTATFS: i64 = 138;

const SHM_RDONLY: i32 = 0o10000;
const SHM_REMAP: i32 = 0o40000;
const SHM_DEST: u32 = 0o1000;
const MSG_COPY: i32 = 0o40000;
const MQUEUE_MAGIC: i64 = 0x1980_0202;

/// Kinds as stored in the table and in crrestart's map (0 = free slot; `launcher/src/ipc.rs`
/// writes the same numbers).
const K_SHM: u32 = 1;
const K_SEM: u32 = 2;
const K_MSG: u32 = 3;

// ---------------------------------------------------------------- the id table

/// Most SysV objects one process keeps track of.
const MAX_IDS: usize = 1024;

struct IdEntry {
    kind: AtomicU32,
    virt: AtomicI32,
    real: AtomicI32,
    /// A segment the program removed (IPC_RMID): it lives on while attached; once
    /// detached everywhere, its id may be another object's.
    removed: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: IdEntry = IdEntry { kind: AtomicU32::new(0), virt: AtomicI32::new(0), real: AtomicI32::new(0), removed: AtomicBool::new(false) };
static IDS: [IdEntry; MAX_IDS] = [FREE; MAX_IDS];
static N_IDS: AtomicUsize = AtomicUsize::new(0);
static WRITER: AtomicBool = AtomicBool::new(false);
/// Set when an object could not be recorded (table full): a checkpoint then fails.
static OVERFLOW: AtomicBool = AtomicBool::new(false);

fn lock() {
    while WRITER.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
        core::hint::spin_loop();
    }
}

fn unlock() {
    WRITER.store(false, Ordering::Release);
}

fn entries() -> &'static [IdEntry] {
    &IDS[..N_IDS.load(Ordering::Acquire)]
}

/// Id the program knows → the kernel's.
fn to_real(kind: u32, virt: c_int) -> c_int {
    for e in entries() {
        if e.kind.load(Ordering::Acquire) == kind && e.virt.load(Ordering::Acquire) == virt {
            return e.real.load(Ordering::Acquire);
        }
    }
    virt
}

/// The kernel's id → the id the program knows (without recording it).
fn to_virtual(kind: u32, real: c_int) -> c_int {
    for e in entries() {
        if e.kind.load(Ordering::Acquire) == kind && e.real.load(Ordering::Acquire) == real {
            return e.virt.load(Ordering::Acquire);
        }
    }
    real
}

fn virt_in_use(kind: u32, v: c_int) -> bool {
    entries().iter().any(|e| e.kind.load(Ordering::Acquire) == kind && e.virt.load(Ordering::Acquire) == v)
}

/// Publish `virt → real` in a free slot. Caller holds the spin lock.
fn push(kind: u32, virt: c_int, real: c_int) -> bool {
    let n = N_IDS.load(Ordering::Acquire);
    let slot = IDS[..n].iter().position(|e| e.kind.load(Ordering::Acquire) == 0).unwrap_or(n);
    if slot >= MAX_IDS {
        OVERFLOW.store(true, Ordering::Release);
        return false;
    }
    let e = &IDS[slot];
    e.removed.store(false, Ordering::Release);
    e.virt.store(virt, Ordering::Release);
    e.real.store(real, Ordering::Release);
    e.kind.store(kind, Ordering::Release);
    if slot == n {
        N_IDS.store(n + 1, Ordering::Release);
    }
    true
}

/// A real id the program is about to get: record it and return its virtual id (itself,
/// unless that number is another object's virtual id since a restart).
fn record_real(kind: u32, real: c_int) -> c_int {
    lock();
    let known = entries()
        .iter()
        .find(|e| e.kind.load(Ordering::Acquire) == kind && e.real.load(Ordering::Acquire) == real)
        .map(|e| e.virt.load(Ordering::Acquire));
    let v = match known {
        Some(v) => v,
        None => {
            let mut v = real;
            while virt_in_use(kind, v) {
                v = (v ^ 0x4000_0000).wrapping_add(1) & 0x7fff_ffff;
            }
            push(kind, v, real);
            v
        }
    };
    unlock();
    v
}

/// Make sure an id the program uses is in the table (an id learnt from another process
/// of the computation: before any restart, its own virtual id).
fn note_virtual(kind: u32, virt: c_int) {
    if virt < 0 || virt_in_use(kind, virt) {
        return;
    }
    let _g = WrapperGuard::new();
    lock();
    if !virt_in_use(kind, virt) && !entries().iter().any(|e| e.kind.load(Ordering::Acquire) == kind && e.real.load(Ordering::Acquire) == virt) {
        push(kind, virt, virt);
    }
    unlock();
}

/// Forget an object the program removed.
fn forget(kind: u32, virt: c_int) {
    lock();
    for e in entries() {
        if e.kind.load(Ordering::Acquire) == kind && e.virt.load(Ordering::Acquire) == virt {
            e.kind.store(0, Ordering::Release);
        }
    }
    unlock();
}

/// A segment the program removed.
fn mark_removed(virt: c_int) {
    for e in entries() {
        if e.kind.load(Ordering::Acquire) == K_SHM && e.virt.load(Ordering::Acquire) == virt {
            e.removed.store(true, Ordering::Release);
        }
    }
}

/// The id the program passed, translated (and recorded when new).
fn id_in(kind: u32, virt: c_int) -> c_int {
    note_virtual(kind, virt);
    to_real(kind, virt)
}

// ---------------------------------------------------------------- wrappers

type GetFn = unsafe extern "C" fn(key_t, c_int, c_int) -> c_int;
type ShmGetFn = unsafe extern "C" fn(key_t, size_t, c_int) -> c_int;
type ShmAtFn = unsafe extern "C" fn(c_int, *const c_void, c_int) -> *mut c_void;
type ShmDtFn = unsafe extern "C" fn(*const c_void) -> c_int;
type CtlFn = unsafe extern "C" fn(c_int, c_int, *mut c_void) -> c_int;
type SemCtlFn = unsafe extern "C" fn(c_int, c_int, c_int, usize) -> c_int;
type SemOpFn = unsafe extern "C" fn(c_int, *mut c_void, size_t) -> c_int;
type SemTimedOpFn = unsafe extern "C" fn(c_int, *mut c_void, size_t, *const libc::timespec) -> c_int;
type MsgSndFn = unsafe extern "C" fn(c_int, *const c_void, size_t, c_int) -> c_int;
type MsgRcvFn = unsafe extern "C" fn(c_int, *mut c_void, size_t, c_long, c_int) -> ssize_t;

fn missing() -> c_int {
    set_errno(libc::ENOSYS);
    -1
}

// Creation and attachment hold the wrapper lock across the call: a checkpoint never
// sees an object the program holds that the table does not list yet.

#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmget(key: key_t, size: size_t, flg: c_int) -> c_int {
    let Some(f) = real::<ShmGetFn>(&R_SHMGET) else { return missing() };
    let _g = WrapperGuard::new();
    // SAFETY: forwarding the program's arguments.
    let r = unsafe { f(key, size, flg) };
    if r < 0 { r } else { record_real(K_SHM, r) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmat(id: c_int, addr: *const c_void, flg: c_int) -> *mut c_void {
    let Some(f) = real::<ShmAtFn>(&R_SHMAT) else {
        set_errno(libc::ENOSYS);
        return usize::MAX as *mut c_void;
    };
    note_virtual(K_SHM, id);
    let _g = WrapperGuard::new();
    // SAFETY: forwarding the program's arguments with the kernel's id.
    unsafe { f(to_real(K_SHM, id), addr, flg) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmdt(addr: *const c_void) -> c_int {
    let Some(f) = real::<ShmDtFn>(&R_SHMDT) else { return missing() };
    let _g = WrapperGuard::new();
    // SAFETY: forwarding the program's argument.
    unsafe { f(addr) }
}

/// `*ctl` commands whose first argument is an index into the kernel's table, not an id:
/// (`IPC_INFO`, `*_INFO`) return a count, (`*_STAT`, `*_STAT_ANY`) return an id.
fn ctl_by_index(kind: u32, cmd: c_int) -> Option<bool> {
    let cmd = cmd & !0x100; // IPC_64
    match (kind, cmd) {
        (_, 3) | (K_SHM, 14) | (K_SEM, 19) | (K_MSG, 12) => Some(false),
        (K_SHM, 13) | (K_SHM, 15) | (K_SEM, 18) | (K_SEM, 20) | (K_MSG, 11) | (K_MSG, 13) => Some(true),
        _ => None,
    }
}

fn ctl(kind: u32, id: c_int, cmd: c_int, call: impl FnOnce(c_int) -> c_int) -> c_int {
    match ctl_by_index(kind, cmd) {
        Some(false) => call(id),
        Some(true) => {
            let r = call(id);
            if r < 0 { r } else { to_virtual(kind, r) }
        }
        None => {
            let real_id = id_in(kind, id);
            let _g = WrapperGuard::new();
            let r = call(real_id);
            // A removed semaphore set or queue is gone at once (a segment lives on while
            // attached, and a checkpoint skips it once it is gone).
            if r == 0 && cmd & !0x100 == libc::IPC_RMID {
                if kind == K_SHM {
                    mark_removed(id);
                } else {
                    forget(kind, id);
                }
            }
            r
        }
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmctl(id: c_int, cmd: c_int, buf: *mut c_void) -> c_int {
    let Some(f) = real::<CtlFn>(&R_SHMCTL) else { return missing() };
    // SAFETY: forwarding the program's arguments.
    ctl(K_SHM, id, cmd, |i| unsafe { f(i, cmd, buf) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn semget(key: key_t, nsems: c_int, flg: c_int) -> c_int {
    let Some(f) = real::<GetFn>(&R_SEMGET) else { return missing() };
    let _g = WrapperGuard::new();
    // SAFETY: forwarding the program's arguments.
    let r = unsafe { f(key, nsems, flg) };
    if r < 0 { r } else { record_real(K_SEM, r) }
}

/// `semctl` is variadic; its optional fourth argument (`union semun`) is one register.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn semctl(id: c_int, num: c_int, cmd: c_int, arg: usize) -> c_int {
    let Some(f) = real::<SemCtlFn>(&R_SEMCTL) else { return missing() };
    // SAFETY: forwarding the program's arguments.
    let r = ctl(K_SEM, id, cmd, |i| unsafe { f(i, num, cmd, arg) });
    // Setting values (or removing the set) drops the kernel's adjustments for them.
    let c = cmd & !0x100;
    if r == 0 && (c == libc::SETVAL || c == libc::SETALL || c == libc::IPC_RMID) {
        let _g = WrapperGuard::new();
        lock();
        undo_clear(id, (c == libc::SETVAL).then_some(num));
        unlock();
    }
    r
}

// Operations that may block never hold the wrapper lock while blocked (see
// `nowait_first`, `semop_common`).

#[unsafe(no_mangle)]
pub unsafe extern "C" fn semop(id: c_int, sops: *mut c_void, n: size_t) -> c_int {
    let Some(f) = real::<SemOpFn>(&R_SEMOP) else { return missing() };
    note_virtual(K_SEM, id);
    // SAFETY: the program's operations, read and forwarded.
    unsafe { semop_common(id, sops, n, |ops| f(to_real(K_SEM, id), ops, n)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn semtimedop(id: c_int, sops: *mut c_void, n: size_t, t: *const libc::timespec) -> c_int {
    let Some(f) = real::<SemTimedOpFn>(&R_SEMTIMEDOP) else { return missing() };
    note_virtual(K_SEM, id);
    // SAFETY: the program's operations, read and forwarded.
    unsafe { semop_common(id, sops, n, |ops| f(to_real(K_SEM, id), ops, n, t)) }
}

// ---------------------------------------------------------------- SEM_UNDO

/// The kernel keeps, per process, an adjustment for every semaphore it operated on with
/// `SEM_UNDO`, applied when the process exits, and offers no way to read it. The wrappers
/// keep the same sums (`-sem_op` per operation); a restart makes the kernel's list again
/// with one atomic, non-blocking semop per semaphore (`+S` then `-S` with `SEM_UNDO`:
/// the value is unchanged, the adjustment is `S`).
const MAX_UNDO: usize = 256;
const SEM_UNDO: i16 = 0x1000;

struct UndoEntry {
    /// The set's virtual id and the semaphore's number (-1: free).
    vid: AtomicI32,
    num: AtomicI32,
    adj: AtomicI32,
}

#[allow(clippy::declare_interior_mutable_const)]
const NO_UNDO: UndoEntry = UndoEntry { vid: AtomicI32::new(0), num: AtomicI32::new(-1), adj: AtomicI32::new(0) };
static UNDO: [UndoEntry; MAX_UNDO] = [NO_UNDO; MAX_UNDO];
static N_UNDO: AtomicUsize = AtomicUsize::new(0);
/// The kernel pid the adjustments belong to: a forked child starts without any (the
/// kernel does not copy them), so a table copied from another pid is empty.
static UNDO_OWNER: AtomicI32 = AtomicI32::new(0);

/// Forget every adjustment if they are another process's. Caller holds the spin lock.
fn undo_own() {
    let me = sys::getpid();
    if UNDO_OWNER.load(Ordering::Acquire) != me {
        for e in &UNDO[..N_UNDO.load(Ordering::Acquire)] {
            e.num.store(-1, Ordering::Release);
        }
        N_UNDO.store(0, Ordering::Release);
        UNDO_OWNER.store(me, Ordering::Release);
    }
}

/// Add `delta` to the adjustment of semaphore `num` of set `vid` (None: `num` < 0 clears
/// every semaphore of the set). Caller holds the spin lock.
fn undo_add(vid: i32, num: i32, delta: i32) {
    let n = N_UNDO.load(Ordering::Acquire);
    if let Some(e) = UNDO[..n].iter().find(|e| e.vid.load(Ordering::Acquire) == vid && e.num.load(Ordering::Acquire) == num) {
        e.adj.fetch_add(delta, Ordering::AcqRel);
        return;
    }
    let slot = UNDO[..n].iter().position(|e| e.num.load(Ordering::Acquire) < 0).unwrap_or(n);
    if slot >= MAX_UNDO {
        OVERFLOW.store(true, Ordering::Release);
        return;
    }
    let e = &UNDO[slot];
    e.vid.store(vid, Ordering::Release);
    e.adj.store(delta, Ordering::Release);
    e.num.store(num, Ordering::Release);
    if slot == n {
        N_UNDO.store(n + 1, Ordering::Release);
    }
}

/// The adjustments of a set (`num` None) or one semaphore are gone (SETVAL, SETALL,
/// IPC_RMID). Caller holds the spin lock.
fn undo_clear(vid: i32, num: Option<i32>) {
    for e in &UNDO[..N_UNDO.load(Ordering::Acquire)] {
        if e.vid.load(Ordering::Acquire) == vid && num.is_none_or(|k| e.num.load(Ordering::Acquire) == k) {
            e.num.store(-1, Ordering::Release);
        }
    }
}

/// Run the program's semop (`call` translates the id and passes the operations it is
/// given) and keep its `SEM_UNDO` adjustments. An operation that can complete at once
/// does so under the wrapper lock — translation, call and the record of its adjustments
/// — so a checkpoint never sees one without the other, nor stops the thread between
/// translating the id and the call; one that blocks runs outside the lock (a thread stopped
/// in the call re-issues it on the new id after a restart) and is recorded as it returns.
///
/// # Safety
/// `sops` points to `n` `struct sembuf` (or the call fails in the kernel).
unsafe fn semop_common(vid: c_int, sops: *mut c_void, n: size_t, call: impl Fn(*mut c_void) -> c_int) -> c_int {
    let ops = sops as *const libc::sembuf;
    // SAFETY: the program's array (a bad pointer faults in the kernel call instead).
    let undo = !ops.is_null() && n <= 4096 && (0..n).any(|i| unsafe { (*ops.add(i)).sem_flg } & SEM_UNDO != 0);
    let record = || {
        if !undo {
            return;
        }
        lock();
        undo_own();
        for i in 0..n {
            // SAFETY: as above.
            let op = unsafe { *ops.add(i) };
            if op.sem_flg & SEM_UNDO != 0 && op.sem_op != 0 {
                undo_add(vid, op.sem_num as i32, -(op.sem_op as i32));
            }
        }
        unlock();
    };
    if ops.is_null() || n > 64 {
        let r = call(sops);
        if r == 0 {
            let _g = WrapperGuard::new();
            record();
        }
        return r;
    }
    // SAFETY: as above; a copy of at most 64 operations.
    let mut nowait: [libc::sembuf; 64] = unsafe { core::mem::zeroed() };
    let mut waits = false;
    for (i, slot) in nowait.iter_mut().enumerate().take(n) {
        // SAFETY: as above.
        *slot = unsafe { *ops.add(i) };
        waits |= slot.sem_flg & libc::IPC_NOWAIT as i16 == 0;
        slot.sem_flg |= libc::IPC_NOWAIT as i16;
    }
    {
        let _g = WrapperGuard::new();
        let r = call(nowait.as_mut_ptr().cast());
        if r == 0 {
            record();
            return 0;
        }
        // SAFETY: errno is thread-local.
        if !waits || unsafe { *libc::__errno_location() } != libc::EAGAIN {
            return r;
        }
    }
    let r = call(sops);
    if r == 0 {
        let _g = WrapperGuard::new();
        record();
    }
    r
}

/// Before a checkpoint's capture: adjustments copied from a parent are not this
/// process's.
fn undo_check_owner() {
    lock();
    undo_own();
    unlock();
}

/// At restart: make the kernel's adjustment list again (the table's sets have their new
/// ids already).
fn undo_restore() {
    let n = N_UNDO.load(Ordering::Acquire);
    for e in &UNDO[..n] {
        let num = e.num.load(Ordering::Acquire);
        let adj = e.adj.load(Ordering::Acquire);
        if num < 0 || adj == 0 {
            continue;
        }
        let id = to_real(K_SEM, e.vid.load(Ordering::Acquire));
        let m = adj.unsigned_abs().min(i16::MAX as u32) as i16;
        let flags = libc::IPC_NOWAIT as i16;
        // Adjustment S > 0: +S, then -S with SEM_UNDO (which adds S); S < 0: +|S| with
        // SEM_UNDO (adds -|S|), then -|S|. Atomic, never blocks, value unchanged.
        let ops: [libc::sembuf; 2] = if adj > 0 {
            [libc::sembuf { sem_num: num as u16, sem_op: m, sem_flg: flags }, libc::sembuf { sem_num: num as u16, sem_op: -m, sem_flg: flags | SEM_UNDO }]
        } else {
            [libc::sembuf { sem_num: num as u16, sem_op: m, sem_flg: flags | SEM_UNDO }, libc::sembuf { sem_num: num as u16, sem_op: -m, sem_flg: flags }]
        };
        // SAFETY: two valid operations; failures (a set removed since) leave nothing to undo.
        unsafe { sc!(SYS_SEMOP, id, ops.as_ptr(), 2) };
    }
    UNDO_OWNER.store(sys::getpid(), Ordering::Release);
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn msgget(key: key_t, flg: c_int) -> c_int {
    let Some(f) = real::<unsafe extern "C" fn(key_t, c_int) -> c_int>(&R_MSGGET) else { return missing() };
    let _g = WrapperGuard::new();
    // SAFETY: forwarding the program's arguments.
    let r = unsafe { f(key, flg) };
    if r < 0 { r } else { record_real(K_MSG, r) }
}

/// A call that may block: first without blocking under the wrapper lock (translation and
/// call together: a checkpoint never stops the thread between them), then, if it would
/// have to wait (`would_block` errno) and the program did not ask for IPC_NOWAIT, the
/// blocking call outside the lock (a thread stopped in it re-issues it on the new id after
/// a restart: `fix_interrupted_args`).
fn nowait_first<R: Copy + PartialOrd + Default>(flg: c_int, would_block: c_int, call: impl Fn(c_int) -> R) -> R {
    {
        let _g = WrapperGuard::new();
        let r = call(flg | libc::IPC_NOWAIT);
        // SAFETY: errno is thread-local.
        if r >= R::default() || flg & libc::IPC_NOWAIT != 0 || unsafe { *libc::__errno_location() } != would_block {
            return r;
        }
    }
    call(flg)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn msgsnd(id: c_int, msg: *const c_void, size: size_t, flg: c_int) -> c_int {
    let Some(f) = real::<MsgSndFn>(&R_MSGSND) else { return missing() };
    note_virtual(K_MSG, id);
    // SAFETY: forwarding the program's arguments.
    nowait_first(flg, libc::EAGAIN, |fl| unsafe { f(to_real(K_MSG, id), msg, size, fl) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn msgrcv(id: c_int, msg: *mut c_void, size: size_t, typ: c_long, flg: c_int) -> ssize_t {
    let Some(f) = real::<MsgRcvFn>(&R_MSGRCV) else { return missing() as ssize_t };
    note_virtual(K_MSG, id);
    // SAFETY: forwarding the program's arguments.
    nowait_first(flg, libc::ENOMSG, |fl| unsafe { f(to_real(K_MSG, id), msg, size, typ, fl) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn msgctl(id: c_int, cmd: c_int, buf: *mut c_void) -> c_int {
    let Some(f) = real::<CtlFn>(&R_MSGCTL) else { return missing() };
    // SAFETY: forwarding the program's arguments.
    ctl(K_MSG, id, cmd, |i| unsafe { f(i, cmd, buf) })
}

// ---------------------------------------------------------------- across exec

/// `CR_IPCIDS=k:v:r,...` for a new program (after a restart, ids differ from the kernel's:
/// an exec'd program given an id in its arguments must still translate it), plus
/// `u:vid:num:adj` entries for an exec (the kernel keeps SEM_UNDO adjustments across
/// exec, not across spawn). None when there is nothing to pass.
pub fn encode_for_exec(exec: bool) -> Option<Vec<u8>> {
    let mut out = String::from("CR_IPCIDS=");
    let start = out.len();
    for e in entries() {
        let (k, v, r) = (e.kind.load(Ordering::Acquire), e.virt.load(Ordering::Acquire), e.real.load(Ordering::Acquire));
        if k != 0 && v != r {
            out.push_str(&format!("{k}:{v}:{r},"));
        }
    }
    if exec && UNDO_OWNER.load(Ordering::Acquire) == sys::getpid() {
        for e in &UNDO[..N_UNDO.load(Ordering::Acquire)] {
            let (num, adj) = (e.num.load(Ordering::Acquire), e.adj.load(Ordering::Acquire));
            if num >= 0 && adj != 0 {
                out.push_str(&format!("u:{}:{num}:{adj},", e.vid.load(Ordering::Acquire)));
            }
        }
    }
    (out.len() > start).then(|| out.into_bytes())
}

/// At load: what the program that exec'd this one (or spawned it) passed.
pub fn decode_inherited(text: &[u8]) {
    let Ok(text) = core::str::from_utf8(text) else { return };
    lock();
    for item in text.split(',').filter(|s| !s.is_empty()) {
        let f: Vec<&str> = item.split(':').collect();
        match f[..] {
            ["u", v, n, a] => {
                if let (Ok(v), Ok(n), Ok(a)) = (v.parse(), n.parse(), a.parse()) {
                    UNDO_OWNER.store(sys::getpid(), Ordering::Release);
                    undo_add(v, n, a);
                }
            }
            [k, v, r] => {
                if let (Ok(k), Ok(v), Ok(r)) = (k.parse::<u32>(), v.parse(), r.parse()) {
                    if (K_SHM..=K_MSG).contains(&k) {
                        push(k, v, r);
                    }
                }
            }
            _ => {}
        }
    }
    unlock();
}

// ---------------------------------------------------------------- checkpoint

/// `syscall(2)` of a SysV call goes through the wrapper above (None: another call).
///
/// # Safety
/// The program's own call and arguments.
pub unsafe fn syscall_ipc(nr: c_long, a: [c_long; 6]) -> Option<c_long> {
    let i = |k: usize| a[k] as c_int;
    let p = |k: usize| a[k] as *mut c_void;
    // SAFETY: forwarding the program's arguments to the wrappers of the same calls.
    let r = unsafe {
        match nr {
            libc::SYS_shmget => shmget(i(0) as key_t, a[1] as size_t, i(2)) as c_long,
            libc::SYS_shmat => shmat(i(0), p(1), i(2)) as c_long,
            libc::SYS_shmdt => shmdt(p(0)) as c_long,
            libc::SYS_shmctl => shmctl(i(0), i(1), p(2)) as c_long,
            libc::SYS_semget => semget(i(0) as key_t, i(1), i(2)) as c_long,
            libc::SYS_semop => semop(i(0), p(1), a[2] as size_t) as c_long,
            libc::SYS_semtimedop => semtimedop(i(0), p(1), a[2] as size_t, a[3] as *const libc::timespec) as c_long,
            libc::SYS_semctl => semctl(i(0), i(1), i(2), a[3] as usize) as c_long,
            libc::SYS_msgget => msgget(i(0) as key_t, i(1)) as c_long,
            libc::SYS_msgsnd => msgsnd(i(0), p(1), a[2] as size_t, i(3)) as c_long,
            libc::SYS_msgrcv => msgrcv(i(0), p(1), a[2] as size_t, a[3], i(4)) as c_long,
            libc::SYS_msgctl => msgctl(i(0), i(1), p(2)) as c_long,
            _ => return None,
        }
    };
    Some(r)
}

/// A SysV shared memory attachment, kept in static memory for the restart path.
#[derive(Clone, Copy)]
struct AttachRec {
    vid: i32,
    readonly: bool,
    addr: u64,
}

/// One mapping (VMA) of an attachment with its protection.
#[derive(Clone, Copy)]
struct VmaRec {
    start: u64,
    end: u64,
    prot: u32,
}

const MAX_ATTACH: usize = 256;
const MAX_VMAS: usize = 512;
static mut ATTACHES: [AttachRec; MAX_ATTACH] = [AttachRec { vid: 0, readonly: false, addr: 0 }; MAX_ATTACH];
static mut N_ATTACHES: usize = 0;
static mut VMAS: [VmaRec; MAX_VMAS] = [VmaRec { start: 0, end: 0, prot: 0 }; MAX_VMAS];
static mut N_VMAS: usize = 0;

/// Most bytes stored for one segment, and for all of a process's (they live in the
/// metadata, with deleted and saved files' contents).
const MAX_SEGMENT: u64 = 128 << 20;
const MAX_SEGMENTS_TOTAL: u64 = 256 << 20;

/// A mapping of a SysV shared memory segment (its pages are the segment's: stored with
/// the object, not as memory).
pub(crate) fn is_sysv_shm(v: &crate::procfs::Vma) -> bool {
    v.shared && v.name.starts_with("/SYSV") && v.name.ends_with(" (deleted)")
}

/// Whether this process stores the object `what-id` (the first of the computation to
/// create `.<what>-<host>-<id>` in the generation directory: ids are per host).
fn claim(dir: &str, what: &str, id: &str) -> bool {
    let host = crate::dump::uname().0;
    match sys::open(format!("{dir}/.{what}-{host}-{id}").as_bytes(), libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC, 0o600) {
        Ok(fd) => {
            sys::close(fd);
            true
        }
        Err(_) => false,
    }
}

fn kind_of(code: u32) -> SysvKind {
    match code {
        K_SHM => SysvKind::Shm,
        K_SEM => SysvKind::Sem,
        _ => SysvKind::Msg,
    }
}

/// Describe every SysV object the process uses, with the contents of those this process
/// claims, and where it has segments attached. Runs while the computation is stopped.
pub fn capture(dir: &str) -> Result<(Vec<SysvObject>, Vec<ShmAttach>), String> {
    if OVERFLOW.load(Ordering::Acquire) {
        return Err(format!("the program used more than {MAX_IDS} SysV IPC objects; crust tracks at most {MAX_IDS}"));
    }
    undo_check_owner();
    let maps = crate::procfs::read_maps().map_err(|e| format!("read /proc/self/maps: errno {e}"))?;
    // Attachments: the inode of a /SYSV mapping is the segment's id.
    let mut attaches: Vec<ShmAttach> = Vec::new();
    // SAFETY: only the checkpoint thread writes these, while the program is stopped.
    let (att, n_att, vmas, n_vmas) = unsafe {
        (
            &mut *core::ptr::addr_of_mut!(ATTACHES),
            &mut *core::ptr::addr_of_mut!(N_ATTACHES),
            &mut *core::ptr::addr_of_mut!(VMAS),
            &mut *core::ptr::addr_of_mut!(N_VMAS),
        )
    };
    *n_att = 0;
    *n_vmas = 0;
    for v in maps.iter().filter(|v| is_sysv_shm(v)) {
        let real_id = v.inode as i32;
        let addr = v.start - v.offset;
        if *n_vmas >= MAX_VMAS {
            return Err(format!("more than {MAX_VMAS} mappings of SysV shared memory; crust keeps at most {MAX_VMAS}"));
        }
        vmas[*n_vmas] = VmaRec { start: v.start, end: v.end, prot: v.prot };
        *n_vmas += 1;
        let readonly = v.prot & libc::PROT_WRITE as u32 == 0;
        // One entry per mapping: the kernel counts every mapping of a segment as one
        // attachment (`shm_nattch`), also the parts of one split by mprotect.
        let known = attaches.iter().any(|a| a.real_id == real_id && a.addr == addr);
        attaches.push(ShmAttach { real_id, addr, readonly });
        if known {
            continue;
        }
        if *n_att >= MAX_ATTACH {
            return Err(format!("more than {MAX_ATTACH} SysV shared memory attachments; crust keeps at most {MAX_ATTACH}"));
        }
        // Attached before any restart, or by a program that inherited it: make sure the
        // table lists it.
        let vid = to_virtual(K_SHM, real_id);
        if !virt_in_use(K_SHM, vid) {
            lock();
            push(K_SHM, vid, real_id);
            unlock();
        }
        att[*n_att] = AttachRec { vid, readonly, addr };
        *n_att += 1;
    }
    let mut objects = Vec::new();
    let mut shm_total = 0u64;
    for e in entries() {
        let code = e.kind.load(Ordering::Acquire);
        if code == 0 {
            continue;
        }
        let (vid, real_id) = (e.virt.load(Ordering::Acquire), e.real.load(Ordering::Acquire));
        if code == K_SHM && e.removed.load(Ordering::Acquire) && !attaches.iter().any(|a| a.real_id == real_id) {
            // Removed and no longer attached here: gone, or the process that still has
            // it attached stores it (a new segment may have its id by now).
            continue;
        }
        let mut obj = match stat_object(code, vid, real_id) {
            Ok(o) => o,
            Err(libc::EINVAL) | Err(libc::EIDRM) => continue, // removed since
            Err(e) => {
                return Err(format!("SysV {} {vid}: cannot read its state (IPC_STAT): errno {e}", kind_of(code).name()));
            }
        };
        if objects.iter().any(|o: &SysvObject| o.kind == obj.kind && o.real_id == real_id) {
            continue;
        }
        if claim(dir, "sysv", &format!("{code}-{real_id}")) {
            let what = format!("SysV {} {vid} (key {:#x})", obj.kind.name(), obj.key);
            obj.data = Some(match obj.kind {
                SysvKind::Shm => {
                    if obj.size > MAX_SEGMENT {
                        return Err(format!("{what} holds {} bytes; crust stores at most {} MiB of a segment", obj.size, MAX_SEGMENT >> 20));
                    }
                    shm_total += obj.size;
                    if shm_total > MAX_SEGMENTS_TOTAL {
                        return Err(format!("{what}: the SysV segments of this process exceed {} MiB together", MAX_SEGMENTS_TOTAL >> 20));
                    }
                    SysvData::Shm(read_segment(real_id, obj.size).map_err(|e| format!("{what}: cannot read it: errno {e}"))?)
                }
                SysvKind::Sem => SysvData::Sem(read_semaphores(real_id, obj.size).map_err(|e| format!("{what}: GETALL: errno {e}"))?),
                SysvKind::Msg => SysvData::Msg(read_messages(real_id, obj.size).map_err(|e| format!("{what}: cannot read its messages: {e}"))?),
            });
        }
        objects.push(obj);
    }
    Ok((objects, attaches))
}

fn stat_object(code: u32, vid: i32, real_id: i32) -> Result<SysvObject, i32> {
    let kind = kind_of(code);
    let mut obj = SysvObject { kind, vid, real_id, key: 0, mode: 0, size: 0, removed: false, data: None };
    // SAFETY: each call writes its own struct; the buffers are large enough.
    unsafe {
        match kind {
            SysvKind::Shm => {
                let mut ds: libc::shmid_ds = core::mem::zeroed();
                sys::check(sc!(SYS_SHMCTL, real_id, libc::IPC_STAT, &mut ds as *mut libc::shmid_ds))?;
                obj.key = ds.shm_perm.__key;
                obj.mode = ds.shm_perm.mode as u32 & 0o777;
                obj.removed = ds.shm_perm.mode as u32 & SHM_DEST != 0;
                obj.size = ds.shm_segsz as u64;
            }
            SysvKind::Sem => {
                let mut ds: libc::semid_ds = core::mem::zeroed();
                sys::check(sc!(SYS_SEMCTL, real_id, 0, libc::IPC_STAT, &mut ds as *mut libc::semid_ds))?;
                obj.key = ds.sem_perm.__key;
                obj.mode = ds.sem_perm.mode as u32 & 0o777;
                obj.size = ds.sem_nsems as u64;
            }
            SysvKind::Msg => {
                let mut ds: libc::msqid_ds = core::mem::zeroed();
                sys::check(sc!(SYS_MSGCTL, real_id, libc::IPC_STAT, &mut ds as *mut libc::msqid_ds))?;
                obj.key = ds.msg_perm.__key;
                obj.mode = ds.msg_perm.mode as u32 & 0o777;
                obj.size = ds.msg_qbytes as u64;
            }
        }
    }
    Ok(obj)
}

fn read_segment(id: i32, size: u64) -> Result<Vec<u8>, i32> {
    // SAFETY: a read-only attachment at an address the kernel picks, detached below.
    let at = sys::check(unsafe { sc!(SYS_SHMAT, id, 0, SHM_RDONLY) })?;
    // SAFETY: the segment is mapped readable for `size` bytes.
    let bytes = unsafe { core::slice::from_raw_parts(at as *const u8, size as usize) };
    let used = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let data = bytes[..used].to_vec();
    // SAFETY: detaching our own attachment.
    unsafe { sc!(SYS_SHMDT, at) };
    Ok(data)
}

fn read_semaphores(id: i32, nsems: u64) -> Result<Vec<u16>, i32> {
    let mut vals = vec![0u16; nsems as usize];
    // SAFETY: GETALL writes nsems unsigned shorts.
    sys::check(unsafe { sc!(SYS_SEMCTL, id, 0, libc::GETALL, vals.as_mut_ptr()) })?;
    Ok(vals)
}

/// Every queued message, oldest first, without consuming them (`MSG_COPY`); a kernel
/// without it: drained and sent back in the same order (the computation is stopped).
fn read_messages(id: i32, qbytes: u64) -> Result<Vec<(i64, Vec<u8>)>, String> {
    // SAFETY: plain data.
    let mut ds: libc::msqid_ds = unsafe { core::mem::zeroed() };
    // SAFETY: IPC_STAT writes the struct.
    sys::check(unsafe { sc!(SYS_MSGCTL, id, libc::IPC_STAT, &mut ds as *mut libc::msqid_ds) }).map_err(|e| format!("IPC_STAT: errno {e}"))?;
    let n = ds.msg_qnum as usize;
    let max = (qbytes as usize).max(ds.__msg_cbytes as usize).max(8192);
    let mut buf = vec![0u8; 8 + max];
    let mut out = Vec::with_capacity(n);
    let mut copy_works = true;
    for i in 0..n {
        // SAFETY: buf holds the type word and `max` bytes.
        let r = unsafe { sc!(SYS_MSGRCV, id, buf.as_mut_ptr(), max, i, MSG_COPY | libc::IPC_NOWAIT) };
        match sys::check(r) {
            Ok(len) => out.push((i64::from_ne_bytes(buf[..8].try_into().unwrap()), buf[8..8 + len].to_vec())),
            Err(libc::ENOSYS) | Err(libc::EINVAL) if i == 0 => {
                copy_works = false;
                break;
            }
            Err(e) => return Err(format!("MSG_COPY of message {i}: errno {e}")),
        }
    }
    if copy_works {
        return Ok(out);
    }
    loop {
        // SAFETY: as above; type 0 takes the oldest message.
        let r = unsafe { sc!(SYS_MSGRCV, id, buf.as_mut_ptr(), max, 0, libc::IPC_NOWAIT) };
        match sys::check(r) {
            Ok(len) => out.push((i64::from_ne_bytes(buf[..8].try_into().unwrap()), buf[8..8 + len].to_vec())),
            Err(libc::ENOMSG) => break,
            Err(e) => return Err(format!("draining: errno {e}")),
        }
    }
    for (t, m) in &out {
        buf[..8].copy_from_slice(&t.to_ne_bytes());
        buf[8..8 + m.len()].copy_from_slice(m);
        // SAFETY: as above.
        sys::check(unsafe { sc!(SYS_MSGSND, id, buf.as_ptr(), m.len(), libc::IPC_NOWAIT) }).map_err(|e| format!("refilling: errno {e}"))?;
    }
    Ok(out)
}

/// A POSIX message queue fd (None: not one). Its messages are stored by the one process
/// of the computation that claims the queue.
pub fn mqueue_kind(fd: i32, target: &str, st: &libc::stat, dir: &str) -> Option<Result<FdKind, String>> {
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return None;
    }
    // SAFETY: plain data.
    let mut sf: libc::statfs = unsafe { core::mem::zeroed() };
    // SAFETY: fstatfs writes the struct.
    if unsafe { sc!(SYS_FSTATFS, fd, &mut sf as *mut libc::statfs) } != 0 || sf.f_type as i64 != MQUEUE_MAGIC {
        return None;
    }
    let (name, unlinked) = match target.strip_suffix(" (deleted)") {
        Some(n) => (n.to_string(), true),
        None => (target.to_string(), false),
    };
    Some(mqueue_state(fd, name, unlinked, st, dir))
}

fn mqueue_state(fd: i32, name: String, unlinked: bool, st: &libc::stat, dir: &str) -> Result<FdKind, String> {
    let mut attr = [0i64; 8];
    // SAFETY: mq_getsetattr writes a struct mq_attr (8 longs).
    sys::check(unsafe { sc!(SYS_MQ_GETSETATTR, fd, 0, attr.as_mut_ptr()) })
        .map_err(|e| format!("fd {fd} (POSIX message queue {name}): mq_getattr: errno {e}"))?;
    let (maxmsg, msgsize, cur) = (attr[1], attr[2], attr[3]);
    let mut messages = Vec::new();
    let stored = claim(dir, "mq", &st.st_ino.to_string());
    if stored && cur > 0 {
        // A description of our own (the program's may be write-only, and its flags
        // must not change): take every message out in the order the queue gives them,
        // then send them back in that order, which rebuilds the same queue.
        let q = sys::open(format!("/proc/self/fd/{fd}").as_bytes(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC, 0)
            .map_err(|e| format!("fd {fd} (POSIX message queue {name}): cannot open it to read its messages: errno {e}"))?;
        let mut buf = vec![0u8; msgsize.max(1) as usize];
        let r = (|| {
            loop {
                let mut prio = 0u32;
                // SAFETY: buf holds msgsize bytes; no timeout (the description is non-blocking).
                let r = unsafe { sc!(SYS_MQ_TIMEDRECEIVE, q, buf.as_mut_ptr(), buf.len(), &mut prio as *mut u32, 0) };
                match sys::check(r) {
                    Ok(n) => messages.push((prio, buf[..n].to_vec())),
                    Err(libc::EAGAIN) => break,
                    Err(e) => return Err(format!("mq_receive: errno {e}")),
                }
            }
            for (prio, m) in &messages {
                // SAFETY: sending our copy back.
                sys::check(unsafe { sc!(SYS_MQ_TIMEDSEND, q, m.as_ptr(), m.len(), *prio, 0) })
                    .map_err(|e| format!("mq_send (putting a message back): errno {e}"))?;
            }
            Ok(())
        })();
        sys::close(q);
        r.map_err(|e| format!("fd {fd} (POSIX message queue {name}): {e}"))?;
    }
    Ok(FdKind::MQueue { name, unlinked, ino: st.st_ino, maxmsg, msgsize, mode: st.st_mode & 0o777, stored, messages })
}

// ---------------------------------------------------------------- restart

/// Name of the memfd crrestart passes with the new ids.
pub const MAP_MEMFD: &[u8] = b"/memfd:crust-ipc";
/// One record of that memfd (little endian): kind, virtual id, new id, flags, attachments
/// expected across the tree, padding.
const REC_LEN: usize = 24;
/// Flag: a segment marked for removal, to remove again once every process attached it.
const F_REMOVE: u32 = 1;

const MAX_MAP: usize = 2048;
static mut MAP_BUF: [u8; MAX_MAP * REC_LEN] = [0; MAX_MAP * REC_LEN];
/// (kind, old real id, new real id) of every object, for the interrupted system calls.
static mut OLD_NEW: [(u32, i32, i32); MAX_MAP] = [(0, 0, 0); MAX_MAP];
static mut N_OLD_NEW: usize = 0;

fn rec(buf: &[u8], i: usize) -> (u32, i32, i32, u32, u32) {
    let b = &buf[i * REC_LEN..(i + 1) * REC_LEN];
    let w = |k: usize| u32::from_le_bytes(b[k * 4..k * 4 + 4].try_into().unwrap());
    (w(0), w(1) as i32, w(2) as i32, w(3), w(4))
}

/// At restart, before crrestart's fds (from `close_from` up) are closed: load the new ids,
/// attach every segment again where it was, mark removed segments for removal once every
/// process of the tree has attached them. Single-threaded, no allocation.
pub fn after_restart(close_from: i32) -> Result<(), &'static str> {
    // SAFETY: single-threaded restart path; these statics are used only here and by
    // fix_interrupted_args right after.
    let (buf, old_new, n_old_new) = unsafe {
        (&mut *core::ptr::addr_of_mut!(MAP_BUF), &mut *core::ptr::addr_of_mut!(OLD_NEW), &mut *core::ptr::addr_of_mut!(N_OLD_NEW))
    };
    *n_old_new = 0;
    let mut n = 0usize;
    if close_from > 2 {
        let mut link = [0u8; 64];
        for fd in close_from..close_from + 256 {
            let mut path = [0u8; 32];
            let p = fd_path(fd, &mut path);
            let Ok(len) = sys::readlink(p, &mut link) else { continue };
            if !link[..len].starts_with(MAP_MEMFD) {
                continue;
            }
            let mut got = 0usize;
            while got < buf.len() {
                match sys::pread(fd, &mut buf[got..], got as u64) {
                    Ok(0) => break,
                    Ok(k) => got += k,
                    Err(libc::EINTR) => {}
                    Err(_) => return Err("cannot read the SysV IPC ids crrestart passed"),
                }
            }
            n = got / REC_LEN;
            break;
        }
    }
    for (i, slot) in old_new.iter_mut().enumerate().take(n) {
        let (kind, vid, new, _, _) = rec(buf, i);
        *slot = (kind, to_real(kind, vid), new);
    }
    *n_old_new = n;
    // The table now holds exactly the objects of the checkpoint, with their new ids.
    lock();
    for e in entries() {
        e.kind.store(0, Ordering::Release);
    }
    N_IDS.store(0, Ordering::Release);
    for i in 0..n {
        let (kind, vid, new, flags, _) = rec(buf, i);
        push(kind, vid, new);
        if kind == K_SHM && flags & F_REMOVE != 0 {
            mark_removed(vid);
        }
    }
    unlock();
    // SAFETY: restored static state, single thread.
    let (att, n_att, vmas, n_vmas) = unsafe {
        (
            &*core::ptr::addr_of!(ATTACHES),
            *core::ptr::addr_of!(N_ATTACHES),
            &*core::ptr::addr_of!(VMAS),
            *core::ptr::addr_of!(N_VMAS),
        )
    };
    for a in &att[..n_att] {
        let id = to_real(K_SHM, a.vid);
        let flags = SHM_REMAP | if a.readonly { SHM_RDONLY } else { 0 };
        // SAFETY: replaces the restorer's placeholder mapping of the same range.
        let r = unsafe { sc!(SYS_SHMAT, id, a.addr, flags) };
        if r as u64 != a.addr {
            return Err("cannot attach a SysV shared memory segment again at its address");
        }
    }
    undo_restore();
    for v in &vmas[..n_vmas] {
        // SAFETY: a range of the segment just attached; the program's own protection.
        unsafe {
            let _ = sys::mprotect(v.start as usize, (v.end - v.start) as usize, v.prot as i32);
        }
    }
    for i in 0..n {
        let (kind, _, new, flags, expected) = rec(buf, i);
        if kind != K_SHM || flags & F_REMOVE == 0 {
            continue;
        }
        // SAFETY: plain data written by IPC_STAT.
        let mut ds: libc::shmid_ds = unsafe { core::mem::zeroed() };
        // SAFETY: as above.
        let ok = unsafe { sc!(SYS_SHMCTL, new, libc::IPC_STAT, &mut ds as *mut libc::shmid_ds) } == 0;
        if ok && ds.shm_nattch as u64 >= expected as u64 {
            // Every process of the tree has it attached: it goes when the last detaches.
            // SAFETY: no memory arguments.
            unsafe { sc!(SYS_SHMCTL, new, libc::IPC_RMID, 0) };
        }
    }
    Ok(())
}

fn fd_path(fd: i32, out: &mut [u8; 32]) -> &[u8] {
    let prefix = b"/proc/self/fd/";
    out[..prefix.len()].copy_from_slice(prefix);
    let mut at = prefix.len();
    // 14 bytes of prefix and at most 10 digits: always fits.
    crate::wrap_pids::push_id(out, &mut at, fd);
    out[at] = 0;
    &out[..at]
}

/// A thread stopped in a SysV call re-issues it after the restart: its id argument (the
/// kernel's at checkpoint time) becomes the new kernel id.
pub fn fix_interrupted_args(uc: u64) {
    // SAFETY: single-threaded restart path.
    let n = unsafe { *core::ptr::addr_of!(N_OLD_NEW) };
    if uc == 0 || n == 0 {
        return;
    }
    // SAFETY: as above.
    let old_new = unsafe { &*core::ptr::addr_of!(OLD_NEW) };
    // ucontext_t: general registers from byte 40: r8..r15, rdi, rsi, rbp, rbx, rdx, rax,
    // rcx, rsp, rip.
    let gregs = (uc + 40) as *mut i64;
    // SAFETY: the frame is in restored memory, written by the kernel at checkpoint time.
    unsafe {
        let rip = *gregs.add(16) as u64;
        if rip == 0 || core::ptr::read_unaligned(rip as *const [u8; 2]) != [0x0f, 0x05] {
            return;
        }
        let kind = match *gregs.add(13) {
            SYS_SHMAT | SYS_SHMCTL => K_SHM,
            SYS_SEMOP | SYS_SEMTIMEDOP | SYS_SEMCTL => K_SEM,
            SYS_MSGSND | SYS_MSGRCV | SYS_MSGCTL => K_MSG,
            _ => return,
        };
        let rdi = gregs.add(8);
        let old = *rdi as i32;
        if let Some(&(_, _, new)) = old_new[..n].iter().find(|(k, o, _)| *k == kind && *o == old) {
            *rdi = new as i64;
        }
    }
}
