//! SysV IPC objects and POSIX message queues at restart (the preload's side is
//! `preload/src/wrap_ipc.rs`).
//!
//! [`plan`] (before anything changes) gathers the objects of every image — one object per
//! kernel id, its contents from the one image that stored them — and checks the keys and
//! names: a keyed object or a named queue that exists now must be the very object of the
//! checkpoint (same id and size; same inode for a queue: typically the killed run's, which
//! the kernel kept), else the restart stops naming it. [`materialize`] then creates every
//! object that no longer exists once with its checkpoint-time contents: segments filled,
//! semaphore values set (`SETALL`), messages queued again in order with their types or
//! priorities. A surviving object gets its contents back only after the restart barrier
//! ([`reset_surviving`], from crrestart's supervisor, `crate::rebuild`), and the objects
//! created are removed again when the restart is abandoned ([`Created::remove`]). Every process gets a memfd named `crust-ipc` of
//! `(kind, virtual id, new id, flags, attachments)` records, from which its preload
//! translates ids and attaches its segments again. A segment that was marked for removal
//! is created private and removed by the last process of the tree to attach it.

use crate::restart::TreePlan;
use crust_format::image::{FdKind, FdRecord, SysvData, SysvKind, SysvObject};
use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;

/// Kind numbers of the `crust-ipc` records (the preload uses the same).
fn kind_code(k: SysvKind) -> u32 {
    match k {
        SysvKind::Shm => 1,
        SysvKind::Sem => 2,
        SysvKind::Msg => 3,
    }
}

/// One SysV object to bring back.
#[derive(Debug, Clone)]
pub struct PlannedObject {
    pub obj: SysvObject,
    /// Mappings of the segment across the tree, as the kernel counts attachments (a
    /// removed segment is removed again once it has that many).
    pub attaches: u32,
    /// The object still exists with this id (the same one): reset it instead of creating.
    pub reuse: Option<i32>,
}

/// One POSIX message queue to bring back.
#[derive(Debug, Clone)]
pub struct PlannedQueue {
    pub name: String,
    pub unlinked: bool,
    pub ino: u64,
    pub maxmsg: i64,
    pub msgsize: i64,
    pub mode: u32,
    pub messages: Vec<(u32, Vec<u8>)>,
    /// The queue still exists under its name (the same inode): reset it.
    pub reuse: bool,
}

/// Everything IPC a restart recreates.
#[derive(Debug, Clone, Default)]
pub struct IpcPlan {
    pub objects: Vec<PlannedObject>,
    pub queues: Vec<PlannedQueue>,
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn describe(o: &SysvObject) -> String {
    if o.key != 0 {
        format!("SysV {} with key {:#x} (id {})", o.kind.name(), o.key as u32, o.vid)
    } else {
        format!("SysV {} {} (IPC_PRIVATE)", o.kind.name(), o.vid)
    }
}

/// The id of the object with `key` now, its size (segment bytes / semaphores) and how
/// many processes have it attached (segments).
fn existing(kind: SysvKind, key: i32) -> Option<(i32, u64, u64)> {
    // SAFETY: lookups by key, no creation; the stat structs are written by the kernel.
    unsafe {
        match kind {
            SysvKind::Shm => {
                let id = libc::shmget(key, 0, 0);
                let mut ds: libc::shmid_ds = std::mem::zeroed();
                (id >= 0 && libc::shmctl(id, libc::IPC_STAT, &mut ds) == 0).then_some((id, ds.shm_segsz as u64, ds.shm_nattch as u64))
            }
            SysvKind::Sem => {
                let id = libc::semget(key, 0, 0);
                let mut ds: libc::semid_ds = std::mem::zeroed();
                (id >= 0 && libc::semctl(id, 0, libc::IPC_STAT, &mut ds as *mut libc::semid_ds) == 0).then_some((id, ds.sem_nsems as u64, 0))
            }
            SysvKind::Msg => {
                let id = libc::msgget(key, 0);
                (id >= 0).then_some((id, 0, 0))
            }
        }
    }
}

/// Gather and check the IPC objects of the tree (nothing is changed).
pub fn plan(t: &TreePlan) -> Result<IpcPlan, String> {
    let mut objects: BTreeMap<(SysvKind, i32), PlannedObject> = BTreeMap::new();
    for p in &t.procs {
        for o in &p.meta.tree.sysv {
            let e = objects.entry((o.kind, o.real_id)).or_insert_with(|| PlannedObject { obj: o.clone(), attaches: 0, reuse: None });
            if e.obj.data.is_none() && o.data.is_some() {
                e.obj = o.clone();
            }
        }
        for a in &p.meta.tree.shm_attaches {
            if let Some(e) = objects.get_mut(&(SysvKind::Shm, a.real_id)) {
                e.attaches += 1;
            }
        }
    }
    for e in objects.values_mut() {
        let what = describe(&e.obj);
        if e.obj.data.is_none() {
            return Err(format!("{what}: no image of the generation holds its contents (an image is missing?)"));
        }
        if e.obj.key == 0 || e.obj.removed {
            continue;
        }
        if let Some((id, size, attached)) = existing(e.obj.kind, e.obj.key) {
            let same = id == e.obj.real_id && (e.obj.kind == SysvKind::Msg || size == e.obj.size);
            if !same {
                return Err(format!(
                    "{what}: the key {:#x} is taken by another {} (id {id}) — not the checkpointed one; \
                     remove it (ipcrm {} {:#x}) and restart again",
                    e.obj.key as u32,
                    e.obj.kind.name(),
                    e.obj.kind.ipcrm_key_option(),
                    e.obj.key as u32
                ));
            }
            if attached > 0 {
                // Resetting it would change memory under live processes (the checkpointed
                // computation itself, still running?).
                return Err(format!(
                    "{what}: running processes have it attached ({attached} attachments; is the checkpointed \
                     program still running?); stop them, or remove the segment (ipcrm -M {:#x}), and restart again",
                    e.obj.key as u32
                ));
            }
            // The checkpointed object itself survived (the killed run's): reset it.
            e.reuse = Some(id);
        }
    }
    let mut queues: BTreeMap<u64, PlannedQueue> = BTreeMap::new();
    for p in &t.procs {
        for rec in &p.meta.fds {
            let FdKind::MQueue { name, unlinked, ino, maxmsg, msgsize, mode, stored, messages } = &rec.kind else { continue };
            let q = queues.entry(*ino).or_insert_with(|| PlannedQueue {
                name: name.clone(),
                unlinked: *unlinked,
                ino: *ino,
                maxmsg: *maxmsg,
                msgsize: *msgsize,
                mode: *mode,
                messages: Vec::new(),
                reuse: false,
            });
            if *stored {
                q.messages = messages.clone();
            }
        }
    }
    for q in queues.values_mut() {
        if q.unlinked {
            continue;
        }
        let c = CString::new(q.name.as_bytes()).map_err(|_| format!("POSIX message queue name {:?} holds a NUL byte", q.name))?;
        // SAFETY: a valid name; no creation.
        let fd = unsafe { libc::mq_open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            let e = errno();
            if e.raw_os_error() == Some(libc::ENOENT) {
                continue;
            }
            return Err(format!("POSIX message queue {}: it exists and cannot be opened ({e}); remove it and restart again", q.name));
        }
        // SAFETY: our own fd.
        let f = unsafe { std::fs::File::from_raw_fd(fd) };
        let ino = std::os::unix::fs::MetadataExt::ino(&f.metadata().map_err(|e| format!("POSIX message queue {}: {e}", q.name))?);
        if ino != q.ino {
            return Err(format!(
                "POSIX message queue {}: the name is taken by another queue — not the checkpointed one; \
                 remove it (mq_unlink, or rm /dev/mqueue{}) and restart again",
                q.name, q.name
            ));
        }
        q.reuse = true;
    }
    Ok(IpcPlan { objects: objects.into_values().collect(), queues: queues.into_values().collect() })
}

/// crrestart's `crust-ipc` memfd (above the program fds), kept across the exec of every
/// restorer.
static MAP_FD: AtomicI32 = AtomicI32::new(-1);
/// One open description of every queue, by inode: each process's fds are opened from it.
static QUEUES: Mutex<Option<HashMap<u64, std::fs::File>>> = Mutex::new(None);

/// What [`materialize`] created (as opposed to found and kept): removed again when the
/// restart is abandoned, so that an abandoned restart leaves nothing behind.
#[derive(Debug, Default)]
pub struct Created {
    sysv: Vec<(SysvKind, i32)>,
    /// Named POSIX message queues.
    queues: Vec<CString>,
}

impl Created {
    pub fn remove(&self) {
        for &(kind, id) in &self.sysv {
            // SAFETY: removing objects this restart created.
            unsafe {
                match kind {
                    SysvKind::Shm => libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()),
                    SysvKind::Sem => libc::semctl(id, 0, libc::IPC_RMID),
                    SysvKind::Msg => libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()),
                };
            }
        }
        for name in &self.queues {
            // SAFETY: a valid name of a queue this restart created.
            unsafe { libc::mq_unlink(name.as_ptr()) };
        }
    }
}

/// Create every object that no longer exists, with its contents, and write the id map.
/// Objects that still exist (the checkpoint's own, [`PlannedObject::reuse`],
/// [`PlannedQueue::reuse`]) are left as they are: [`reset_surviving`] gives them their
/// checkpoint-time contents once every process of the tree has its memory back.
pub fn materialize(p: &IpcPlan, base: i32) -> Result<Created, String> {
    let mut created = Created::default();
    let r = create_all(p, base, &mut created);
    if r.is_err() {
        // Nothing half-made stays behind.
        created.remove();
    }
    r.map(|()| created)
}

/// The checkpoint-time contents into the objects and queues that survived (see
/// [`materialize`]).
pub fn reset_surviving(p: &IpcPlan) -> Result<(), String> {
    for e in &p.objects {
        if let Some(id) = e.reuse {
            fill(&e.obj, id).map_err(|err| format!("{}: {err}", describe(&e.obj)))?;
        }
    }
    for q in p.queues.iter().filter(|q| q.reuse) {
        let c = CString::new(q.name.as_bytes()).map_err(|_| format!("POSIX message queue {}: a name with a NUL byte", q.name))?;
        // SAFETY: a valid name.
        let fd = unsafe { libc::mq_open(c.as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(format!("POSIX message queue {}: cannot open it: {}", q.name, errno()));
        }
        // SAFETY: our own fd, closed when `f` drops.
        let f = unsafe { std::fs::File::from_raw_fd(fd) };
        refill_queue(f.as_raw_fd(), q).map_err(|e| format!("POSIX message queue {}: {e}", q.name))?;
    }
    Ok(())
}

fn create_all(p: &IpcPlan, base: i32, created: &mut Created) -> Result<(), String> {
    let mut map = Vec::new();
    for e in &p.objects {
        let o = &e.obj;
        let what = describe(o);
        let key = if o.removed { libc::IPC_PRIVATE } else { o.key };
        let flags = libc::IPC_CREAT | libc::IPC_EXCL | o.mode as i32;
        let id = match e.reuse {
            Some(id) => id,
            None => {
                // SAFETY: creating a new object.
                let id = unsafe {
                    match o.kind {
                        SysvKind::Shm => libc::shmget(key, o.size as usize, flags),
                        SysvKind::Sem => libc::semget(key, o.size as i32, flags),
                        SysvKind::Msg => libc::msgget(key, flags),
                    }
                };
                if id < 0 {
                    return Err(format!("{what}: cannot create it again: {}", errno()));
                }
                created.sysv.push((o.kind, id));
                fill(o, id).map_err(|e| format!("{what}: {e}"))?;
                id
            }
        };
        let flags = u32::from(o.removed);
        for w in [kind_code(o.kind), o.vid as u32, id as u32, flags, e.attaches, 0] {
            map.extend_from_slice(&w.to_le_bytes());
        }
    }
    let mut queues = HashMap::new();
    for q in &p.queues {
        let f = make_queue(q, created).map_err(|e| format!("POSIX message queue {}: {e}", q.name))?;
        queues.insert(q.ino, f);
    }
    *QUEUES.lock().unwrap() = Some(queues);
    if !map.is_empty() {
        let name = CString::new("crust-ipc").unwrap();
        // SAFETY: a valid name.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(format!("memfd_create: {}", errno()));
        }
        // SAFETY: our own memfd.
        let f = unsafe { std::fs::File::from_raw_fd(fd) };
        std::io::Write::write_all(&mut &f, &map).map_err(|e| format!("writing the SysV id map: {e}"))?;
        // SAFETY: moving our own fd above every program fd number.
        let hi = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_DUPFD_CLOEXEC, base) };
        if hi < 0 {
            return Err(format!("cannot move the SysV id map above fd {base}: {}", errno()));
        }
        MAP_FD.store(hi, Ordering::Release);
    }
    Ok(())
}

/// Put the checkpoint-time contents into object `id`.
fn fill(o: &SysvObject, id: i32) -> Result<(), String> {
    match &o.data {
        Some(SysvData::Shm(bytes)) => {
            // SAFETY: attaching the segment at a kernel-chosen address, detached below.
            let at = unsafe { libc::shmat(id, std::ptr::null(), 0) };
            if at as isize == -1 {
                return Err(format!("cannot attach it to fill it: {}", errno()));
            }
            let size = o.size as usize;
            let n = bytes.len().min(size);
            // SAFETY: the segment is `size` bytes, mapped read-write.
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), at as *mut u8, n);
                std::ptr::write_bytes((at as *mut u8).add(n), 0, size - n);
                libc::shmdt(at);
            }
        }
        // SAFETY: SETALL reads nsems unsigned shorts.
        Some(SysvData::Sem(vals)) if !vals.is_empty() && unsafe { libc::semctl(id, 0, libc::SETALL, vals.as_ptr()) } != 0 => {
            return Err(format!("cannot set its values (SETALL): {}", errno()));
        }
        Some(SysvData::Sem(_)) => {}
        Some(SysvData::Msg(msgs)) => {
            // A surviving queue: empty it first.
            let mut buf = vec![0u8; 8 + 65536];
            loop {
                // SAFETY: buf holds the type word and 64 KiB (longer messages are cut: MSG_NOERROR).
                let r = unsafe { libc::msgrcv(id, buf.as_mut_ptr().cast(), 65536, 0, libc::IPC_NOWAIT | libc::MSG_NOERROR) };
                if r < 0 {
                    break;
                }
            }
            // SAFETY: plain data written by IPC_STAT.
            let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            if unsafe { libc::msgctl(id, libc::IPC_STAT, &mut ds) } == 0 && ds.msg_qbytes as u64 != o.size {
                ds.msg_qbytes = o.size as _;
                // SAFETY: IPC_SET reads the struct.
                if unsafe { libc::msgctl(id, libc::IPC_SET, &mut ds) } != 0 {
                    return Err(format!("cannot set its byte limit to {} (IPC_SET): {}", o.size, errno()));
                }
            }
            for (i, (typ, m)) in msgs.iter().enumerate() {
                let mut b = Vec::with_capacity(8 + m.len());
                b.extend_from_slice(&typ.to_ne_bytes());
                b.extend_from_slice(m);
                // SAFETY: b holds the type word and the message.
                if unsafe { libc::msgsnd(id, b.as_ptr().cast(), m.len(), libc::IPC_NOWAIT) } != 0 {
                    return Err(format!("cannot queue message {i} of {} again: {}", msgs.len(), errno()));
                }
            }
        }
        None => {}
    }
    Ok(())
}

fn make_queue(q: &PlannedQueue, created: &mut Created) -> Result<std::fs::File, String> {
    let name = if q.unlinked { format!("/crust-restart-{}-{}", std::process::id(), q.ino) } else { q.name.clone() };
    let c = CString::new(name.as_bytes()).map_err(|_| "a name with a NUL byte".to_string())?;
    let fd = if q.reuse {
        // SAFETY: a valid name.
        unsafe { libc::mq_open(c.as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC) }
    } else {
        // SAFETY: plain data.
        let mut attr: libc::mq_attr = unsafe { std::mem::zeroed() };
        attr.mq_maxmsg = q.maxmsg;
        attr.mq_msgsize = q.msgsize;
        // SAFETY: a valid name and attributes.
        unsafe {
            libc::mq_open(
                c.as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_CREAT | libc::O_EXCL,
                q.mode as libc::mode_t,
                &attr as *const libc::mq_attr,
            )
        }
    };
    if fd < 0 {
        return Err(format!("cannot {} it: {}", if q.reuse { "open" } else { "create" }, errno()));
    }
    // SAFETY: our own fd.
    let f = unsafe { std::fs::File::from_raw_fd(fd) };
    if q.reuse {
        return Ok(f); // its contents: `reset_surviving`
    }
    if q.unlinked {
        // SAFETY: a valid name.
        unsafe { libc::mq_unlink(c.as_ptr()) };
    } else {
        created.queues.push(c);
    }
    // SAFETY: our own fd; the mode without crrestart's umask.
    unsafe { libc::fchmod(fd, q.mode as libc::mode_t) };
    refill_queue(fd, q)?;
    Ok(f)
}

/// Empty a queue, then queue its checkpoint-time messages again in order.
fn refill_queue(fd: i32, q: &PlannedQueue) -> Result<(), String> {
    let mut buf = vec![0u8; q.msgsize.max(1) as usize];
    // SAFETY: emptying a surviving queue (non-blocking).
    while unsafe { libc::mq_receive(fd, buf.as_mut_ptr().cast(), buf.len(), std::ptr::null_mut()) } >= 0 {}
    for (i, (prio, m)) in q.messages.iter().enumerate() {
        // SAFETY: sending our buffer.
        if unsafe { libc::mq_send(fd, m.as_ptr().cast(), m.len(), *prio) } != 0 {
            return Err(format!("cannot queue message {i} of {} again: {}", q.messages.len(), errno()));
        }
    }
    Ok(())
}

/// A description of a restored queue for an fd, with the fd's access mode and O_NONBLOCK.
pub fn open_mqueue(rec: &FdRecord) -> Result<std::fs::File, String> {
    let FdKind::MQueue { name, ino, .. } = &rec.kind else { return Err(format!("fd {}: not a message queue", rec.fd)) };
    let guard = QUEUES.lock().unwrap();
    let Some(q) = guard.as_ref().and_then(|m| m.get(ino)) else {
        return Err(format!("fd {} (POSIX message queue {name}): not recreated", rec.fd));
    };
    let acc = rec.flags & libc::O_ACCMODE;
    let mut o = std::fs::OpenOptions::new();
    o.read(acc == libc::O_RDONLY || acc == libc::O_RDWR);
    o.write(acc == libc::O_WRONLY || acc == libc::O_RDWR);
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut o, rec.flags & libc::O_NONBLOCK);
    o.open(format!("/proc/self/fd/{}", q.as_raw_fd())).map_err(|e| format!("fd {} (POSIX message queue {name}): {e}", rec.fd))
}

/// In each process before it execs its restorer: the id map stays open across the exec
/// (the preload reads it, then closes it with crrestart's other fds).
pub fn keep_map_across_exec() {
    let fd = MAP_FD.load(Ordering::Acquire);
    if fd >= 0 {
        // SAFETY: clearing close-on-exec on our own fd.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    }
}

/// Close crrestart's own descriptions of the queues once every fd is made.
pub fn drop_queues() {
    drop(QUEUES.lock().unwrap().take());
}
