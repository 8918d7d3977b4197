//! Kernel objects crrestart recreates beyond files and pipes: inotify instances, tmpfs
//! files mapped MAP_SHARED (written back from the images), and the checks of files the
//! tree maps shared and writable.
//!
//! An inotify instance numbers its watches itself (1, 2, 3... never reusing a number
//! until it wraps), and the program holds those numbers. The watches are added again in
//! number order; a number the program no longer uses (a watch removed before the
//! checkpoint) is taken by a placeholder watch on an inode of our own (a memfd) and
//! removed at once, so the next watch gets the next number; placeholders continue up to
//! the highest number the instance had handed out, so that the program's next watch
//! gets the number it would have got. The `IN_IGNORED` events of the placeholders (and
//! anything else queued meanwhile) are read off before the program gets the instance.

use crate::restart::TreePlan;
use crust_format::image::{FdRecord, FileIdentity, ImageMeta, InotifyWatch, RegionKind};
use std::collections::{BTreeMap, HashSet};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

/// Recreate an inotify instance with its watches and numbering.
pub fn open_inotify(rec: &FdRecord, watches: &[InotifyWatch], last_wd: i32) -> Result<std::fs::File, String> {
    let what = |e: String| format!("fd {} (inotify): {e}", rec.fd);
    // SAFETY: a new fd, owned by the File below.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
    if fd < 0 {
        return Err(what(format!("inotify_init1: {}", std::io::Error::last_os_error())));
    }
    // SAFETY: fd is ours.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    let name = c"crust-inotify-placeholder";
    // SAFETY: a valid name; the fd is owned by the File below.
    let ph = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if ph < 0 {
        return Err(what(format!("memfd_create: {}", std::io::Error::last_os_error())));
    }
    // SAFETY: ph is ours.
    let ph = unsafe { std::fs::File::from_raw_fd(ph) };
    let ph_path = std::ffi::CString::new(format!("/proc/self/fd/{}", ph.as_raw_fd())).expect("no NUL");
    let add = |path: &std::ffi::CStr, mask: u32| -> Result<i32, std::io::Error> {
        // SAFETY: valid fd and C string.
        let wd = unsafe { libc::inotify_add_watch(fd, path.as_ptr(), mask) };
        if wd < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(wd)
        }
    };
    let mut next = 1i32;
    let fill_to = |upto: i32, next: &mut i32| -> Result<(), String> {
        while *next < upto {
            let wd = add(&ph_path, libc::IN_ATTRIB).map_err(|e| what(format!("placeholder watch: {e}")))?;
            // SAFETY: removes the watch just added.
            unsafe { libc::inotify_rm_watch(fd, wd) };
            if wd != *next {
                return Err(what(format!("the kernel numbered a new watch {wd} where {next} was expected")));
            }
            *next += 1;
        }
        Ok(())
    };
    let mut sorted: Vec<&InotifyWatch> = watches.iter().collect();
    sorted.sort_by_key(|w| w.wd);
    for w in sorted {
        if w.wd < next {
            return Err(what(format!("watch {} appears twice", w.wd)));
        }
        fill_to(w.wd, &mut next)?;
        if std::fs::symlink_metadata(&w.path).is_err() {
            return Err(what(format!(
                "watch {} was on {}, which no longer exists (substitute the fd with --fd, e.g. /dev/null)",
                w.wd, w.path
            )));
        }
        let c = std::ffi::CString::new(w.path.as_bytes()).map_err(|_| what(format!("watch {}: a path with a NUL byte", w.wd)))?;
        let got = add(&c, w.mask).map_err(|e| what(format!("watch {} on {}: {e}", w.wd, w.path)))?;
        if got != w.wd {
            return Err(what(format!(
                "watch on {} got number {got} instead of {} (the path now names a file another watch of the instance holds?)",
                w.path, w.wd
            )));
        }
        next += 1;
    }
    fill_to(last_wd + 1, &mut next)?;
    // Read off the placeholders' IN_IGNORED events (the instance is non-blocking here).
    let mut buf = [0u8; 4096];
    // SAFETY: reads into our buffer until the queue is empty.
    while unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
    drop(ph);
    // The recorded status flags (O_NONBLOCK or not).
    // SAFETY: fcntl on our own fd.
    unsafe { libc::fcntl(fd, libc::F_SETFL, rec.flags & libc::O_NONBLOCK) };
    Ok(file)
}

/// `(dev, ino)` of every file some process of the tree maps MAP_SHARED and writable.
pub fn shared_writable_files<'a>(metas: impl Iterator<Item = &'a ImageMeta>) -> HashSet<(u64, u64)> {
    metas
        .flat_map(|m| m.regions.iter())
        .filter(|r| r.shared && r.prot & libc::PROT_WRITE as u32 != 0)
        .filter_map(|r| match &r.kind {
            RegionKind::File { identity, .. } => Some((identity.dev, identity.ino)),
            _ => None,
        })
        .collect()
}

/// A file on disk the tree maps shared and writable is its own storage: it must be the
/// same file (inode) and at least as long as at checkpoint time (the mapping past its
/// end would fault).
pub fn check_mapped_written(path: &str, identity: &FileIdentity) -> Result<(), String> {
    let md = std::fs::metadata(path).map_err(|e| format!("{path}: {e} (the program had it mapped MAP_SHARED at checkpoint time)"))?;
    if identity.ino != 0 && (md.ino() != identity.ino || md.dev() != identity.dev) {
        return Err(format!("{path}, mapped MAP_SHARED by the program, was replaced since the checkpoint (another file is at that path)"));
    }
    if md.size() < identity.size {
        return Err(format!(
            "{path}, mapped MAP_SHARED by the program, is shorter than at checkpoint time ({} < {} bytes)",
            md.size(),
            identity.size
        ));
    }
    Ok(())
}

/// tmpfs files mapped MAP_SHARED (`RegionKind::ShmFile`): their checkpoint-time content,
/// put together from the runs the images stored (one image per file and range), is
/// written back before the restart when the file is missing or differs
/// (`TreePlan::rewrites`); the restorers then map the file from its path.
pub fn plan_shm_files(t: &mut TreePlan) -> Result<(), String> {
    // (dev, ino) → (path, size, content).
    let mut files: BTreeMap<(u64, u64), (String, Vec<u8>)> = BTreeMap::new();
    for p in &t.procs {
        for r in &p.meta.regions {
            let RegionKind::ShmFile { path, offset, identity } = &r.kind else { continue };
            let size = usize::try_from(identity.size).map_err(|_| format!("{path}: too large"))?;
            let (_, data) = files.entry((identity.dev, identity.ino)).or_insert_with(|| (path.clone(), vec![0u8; size]));
            for run in &r.runs {
                let at = offset + (run.addr - r.start);
                if at >= size as u64 {
                    continue;
                }
                let n = (run.len).min(size as u64 - at) as usize;
                let at = at as usize;
                p.pages
                    .read_exact_at(&mut data[at..at + n], run.offset)
                    .map_err(|e| format!("{}: reading the content of {path}: {e}", p.img_path.display()))?;
            }
        }
    }
    for (_, (path, data)) in files {
        if t.rewrites.iter().any(|(p, _)| *p == path) {
            continue;
        }
        let dir = Path::new(&path).parent().unwrap_or(Path::new("/"));
        if !dir.is_dir() {
            return Err(format!("{path} was mapped MAP_SHARED by the program; its directory {} no longer exists", dir.display()));
        }
        if !Path::new(&path).exists() {
            t.warnings.push(format!("{path} (mapped MAP_SHARED) no longer exists; it is made again from the checkpoint"));
        }
        t.rewrites.push((path, data));
    }
    Ok(())
}

/// A memfd with its seals: recreated with `MFD_ALLOW_SEALING`, filled, sealed, and opened
/// with the fd's recorded flags and offset through its /proc link.
pub fn open_sealed_memfd(rec: &FdRecord, path: &str, data: &[u8], seals: u32) -> Result<std::fs::File, String> {
    let what = |e: String| format!("fd {} ({path}, a memfd with seals {seals:#x}): {e}", rec.fd);
    let name = path.strip_prefix("/memfd:").unwrap_or(path);
    let c = std::ffi::CString::new(name.as_bytes().to_vec()).map_err(|_| what("a name with a NUL byte".into()))?;
    // SAFETY: a valid C string; the new fd is owned by the File.
    let fd = unsafe { libc::memfd_create(c.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(what(format!("memfd_create: {}", std::io::Error::last_os_error())));
    }
    // SAFETY: fd is ours.
    let mem = unsafe { std::fs::File::from_raw_fd(fd) };
    mem.write_all_at(data, 0).map_err(|e| what(e.to_string()))?;
    // SAFETY: fcntl on our own fd.
    if seals != 0 && unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals as libc::c_int) } != 0 {
        return Err(what(format!("F_ADD_SEALS: {}", std::io::Error::last_os_error())));
    }
    let link = std::ffi::CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL");
    let keep = libc::O_ACCMODE | libc::O_APPEND | libc::O_NONBLOCK;
    // SAFETY: a valid path; the new fd is owned by the File below.
    let f = unsafe { libc::open(link.as_ptr(), (rec.flags & keep) | libc::O_CLOEXEC) };
    if f < 0 {
        return Err(what(format!("reopening it: {}", std::io::Error::last_os_error())));
    }
    // SAFETY: f is ours; lseek on it.
    let file = unsafe { std::fs::File::from_raw_fd(f) };
    // SAFETY: as above.
    unsafe { libc::lseek(f, rec.offset, libc::SEEK_SET) };
    Ok(file)
}

/// A wall-clock timerfd set with `TFD_TIMER_ABSTIME` (and `TFD_TIMER_CANCEL_ON_SET`): set
/// absolute again, so it expires at the same time of day (at once if that has passed,
/// counting the expirations missed meanwhile when periodic).
pub fn open_abs_timerfd(
    rec: &FdRecord,
    clockid: i32,
    expires_ns: u64,
    interval_ns: u64,
    ticks: u64,
    cancel_on_set: bool,
) -> Result<std::fs::File, String> {
    let what = |e: String| format!("fd {} (timerfd on clock {clockid}, absolute): {e}", rec.fd);
    let mut flags = libc::TFD_CLOEXEC;
    if rec.flags & libc::O_NONBLOCK != 0 {
        flags |= libc::TFD_NONBLOCK;
    }
    // SAFETY: a new fd, owned by the File below.
    let fd = unsafe { libc::timerfd_create(clockid, flags) };
    if fd < 0 {
        return Err(what(format!("timerfd_create: {}", std::io::Error::last_os_error())));
    }
    // SAFETY: fd is ours.
    let f = unsafe { std::fs::File::from_raw_fd(fd) };
    let ts = |ns: u64| libc::timespec { tv_sec: (ns / 1_000_000_000) as libc::time_t, tv_nsec: (ns % 1_000_000_000) as libc::c_long };
    if expires_ns != 0 {
        let its = libc::itimerspec { it_interval: ts(interval_ns), it_value: ts(expires_ns) };
        let mut set_flags = libc::TFD_TIMER_ABSTIME;
        if cancel_on_set {
            set_flags |= libc::TFD_TIMER_CANCEL_ON_SET;
        }
        // SAFETY: valid itimerspec; no old value wanted.
        if unsafe { libc::timerfd_settime(fd, set_flags, &its, std::ptr::null_mut()) } != 0 {
            return Err(what(format!("timerfd_settime: {}", std::io::Error::last_os_error())));
        }
    }
    if ticks > 0 {
        const TFD_IOC_SET_TICKS: libc::c_ulong = 0x4008_5400;
        // SAFETY: the ioctl reads one u64.
        if unsafe { libc::ioctl(fd, TFD_IOC_SET_TICKS, &ticks as *const u64) } != 0 {
            return Err(what(format!("cannot restore its {ticks} unread expirations: {}", std::io::Error::last_os_error())));
        }
    }
    Ok(f)
}

/// `(dev, ino)` of every tmpfs file some process maps shared (`RegionKind::ShmFile`): an
/// fd on one needs no identity check, the file is written back before it is opened.
pub fn shm_file_ids<'a>(metas: impl Iterator<Item = &'a ImageMeta>) -> HashSet<(u64, u64)> {
    metas
        .flat_map(|m| m.regions.iter())
        .filter_map(|r| match &r.kind {
            RegionKind::ShmFile { identity, .. } => Some((identity.dev, identity.ino)),
            _ => None,
        })
        .collect()
}

/// The shared-memory object (index into `TreePlan::shms`) that a memfd fd of process `i`
/// refers to, when the process also maps it shared: the one object whose mapping bears
/// the memfd's name (None when no mapping or several objects do: they stay apart).
pub fn memfd_fd_object(t: &TreePlan, i: usize, path: &str) -> Option<usize> {
    let meta = &t.procs[i].meta;
    let want = format!("{path} (deleted)");
    let mut objs: Vec<(u64, u64)> = meta
        .tree
        .shared_maps
        .iter()
        .filter(|sm| {
            meta.regions
                .iter()
                .any(|r| r.start == sm.start && r.end == sm.end && matches!(&r.kind, RegionKind::Detached { name } if *name == want))
        })
        .map(|sm| (sm.dev, sm.ino))
        .collect();
    objs.sort_unstable();
    objs.dedup();
    match objs[..] {
        [one] => t.shms.iter().position(|s| s.obj == one),
        _ => None,
    }
}

/// Seal a shared memfd as its fd was (after it is filled). `F_SEAL_FUTURE_WRITE` is left
/// out: the restorer maps the object again, writable where the program had it so.
pub fn seal_shared_memfd(f: &std::fs::File, s: &crate::restart::ShmSpec) -> Result<(), String> {
    let seals = s.seals & !(libc::F_SEAL_FUTURE_WRITE as u32);
    // SAFETY: fcntl on our own fd.
    if seals != 0 && unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, seals as libc::c_int) } != 0 {
        return Err(format!("memfd {}: F_ADD_SEALS {seals:#x}: {}", s.name, std::io::Error::last_os_error()));
    }
    Ok(())
}

/// A new description of a shared memfd for an fd, with its recorded flags and offset.
pub fn open_shm_fd(memfd: i32, rec: &FdRecord) -> Result<std::fs::File, String> {
    let link = std::ffi::CString::new(format!("/proc/self/fd/{memfd}")).expect("no NUL");
    let keep = libc::O_ACCMODE | libc::O_APPEND | libc::O_NONBLOCK;
    // SAFETY: a valid path; the new fd is owned by the File below.
    let f = unsafe { libc::open(link.as_ptr(), (rec.flags & keep) | libc::O_CLOEXEC) };
    if f < 0 {
        return Err(format!("fd {} (a memfd also mapped shared): {}", rec.fd, std::io::Error::last_os_error()));
    }
    // SAFETY: f is ours.
    let file = unsafe { std::fs::File::from_raw_fd(f) };
    // SAFETY: lseek on our own fd.
    unsafe { libc::lseek(f, rec.offset, libc::SEEK_SET) };
    Ok(file)
}
