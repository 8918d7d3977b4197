//! `crrestart`: check a generation, then rebuild its process tree and turn every process
//! into `crust-restorer`, which becomes the restored program. crrestart's own process
//! becomes the tree's root (the launched program), so the pid, stdio and exit status seen
//! by the caller are the root program's.
//!
//! Every check that can fail happens before anything is started or changed: a missing,
//! truncated, corrupt or wrong-version image, an incomplete generation (a process of the
//! tree without an image), a file a program had open or mapped that vanished or changed,
//! an fd kind that cannot be restored yet. The one exception is the page data that the
//! restorers read themselves (`--eager`, and the runs they read in mapped mode): they
//! check it as it arrives, before the restart barrier, so a corrupt page still fails the
//! restart before any program runs and before anything that existed changes.
//!
//! Then ([`crate::rebuild`]): every kernel object the tree shares (pipes, open files,
//! shared memory) is created once here, so that forking hands it to every process that
//! holds it; the processes are forked top-down from the right parents; sessions and
//! process groups are set up; each process places its fds, writes its restore plan (with
//! the whole tree's virtual → new real pid table) and execs `crust-restorer`, which
//! waits at the restart barrier until every process has its memory back and checked.

use crust_format::image::{self, ChildRecord, FdKind, FdRecord, ImageMeta, RegionKind};
use crust_format::manifest;
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Options of a restart.
pub struct RestartOptions {
    pub path: PathBuf,
    pub coord: String,
    pub start_coordinator: bool,
    pub keep_files: bool,
    /// Check every page checksum before starting (eager mode and compressed images check
    /// them as they read anyway).
    pub verify: bool,
    /// Read all page data in instead of mapping large runs from the image (`crate::pages`).
    pub eager: bool,
    /// With `eager`: when page data is read with O_DIRECT (`crate::pages::open_pages`).
    pub direct_reads: crate::pages::DirectReads,
    /// `--fd [VPID:]N=PATH`: fds that refer to another file after the restart.
    pub fd_substs: Vec<crate::fds::FdSubst>,
}

/// Where one fd of a restored process comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Src {
    /// crrestart's own fd with this number (a terminal, socket or pipe to the outside on
    /// fds 0-2).
    Inherit(i32),
    /// An object created once for the whole tree (index into [`TreePlan::objects`]).
    Obj(usize),
}

/// A kernel object created by crrestart before forking.
#[derive(Debug, Clone)]
pub enum ObjSpec {
    /// A file, directory or device reopened at its path (and offset).
    Open(FdRecord),
    /// A substituted fd (`crrestart --fd`): this path, opened with the fd's recorded flags.
    Subst { rec: FdRecord, path: String },
    /// /dev/null, for a pipe whose reader is outside the checkpoint.
    DevNull,
    /// One end of a pipe (index into [`TreePlan::pipes`]).
    PipeEnd { pipe: usize, read: bool },
    /// A shared-memory object (index into [`TreePlan::shms`]).
    Shm(usize),
    /// A new description of a shared-memory object (a memfd both mapped and held as an
    /// fd), opened with the fd's recorded flags and offset.
    ShmFd { shm: usize, rec: FdRecord },
}

/// A pipe (or named FIFO) of the tree.
#[derive(Debug, Clone, Default)]
pub struct PipeSpec {
    pub id: u64,
    pub capacity: u32,
    /// Bytes in flight at checkpoint time.
    pub data: Vec<u8>,
    /// Path of a named FIFO.
    pub fifo: Option<String>,
    /// File status flags of each end's description (None: no process holds that end).
    pub read_flags: Option<i32>,
    pub write_flags: Option<i32>,
}

/// Shared memory without a path: a memfd filled from the images.
#[derive(Debug, Clone, Default)]
pub struct ShmSpec {
    pub size: u64,
    /// (process whose page source holds the bytes, offset of the bytes there, length,
    /// offset in the object).
    pub fills: Vec<(usize, u64, u64, u64)>,
    /// The object's `(dev, ino)` at checkpoint time.
    pub obj: (u64, u64),
    /// A memfd's name (the memfd is made with it), else empty.
    pub name: String,
    /// A memfd also held as an fd: its whole content (written before the mapped pages)
    /// and seals (`kobjects::memfd_fd_object`).
    pub content: Option<Vec<u8>>,
    pub seals: u32,
}

/// One process of the tree.
#[derive(Debug)]
pub struct ProcPlan {
    pub img_path: PathBuf,
    /// What the restorer reads or maps page data from: the image file itself, or a memfd
    /// with the unpacked page data of a compressed image (`crate::pages`).
    pub pages: std::fs::File,
    /// Every page checksum was checked already (the restorer need not check them again).
    pub pages_verified: bool,
    /// The restorer reads page data with O_DIRECT (`crate::pages::PageSource::direct`).
    pub pages_direct: bool,
    pub meta: ImageMeta,
    pub parent: Option<usize>,
    /// Live children, in creation order.
    pub children: Vec<usize>,
    /// Exited-but-unreaped children to recreate.
    pub zombies: Vec<ChildRecord>,
    /// (target fd, source).
    pub fds: Vec<(i32, Src)>,
    /// Region start → (shared-memory object, offset in it).
    pub shared: HashMap<u64, (usize, u64)>,
    /// Calls setsid() (it led its session).
    pub session_leader: bool,
    /// Calls setsid() to bring back a session whose leader had exited before the
    /// checkpoint: the first process of that session in creation order whose parent is in
    /// another session. The session's old id then names this process's new session.
    pub new_session: bool,
    /// Process group to join: Some(self) = create its own group; Some(other) = join
    /// that process's group; None = keep the group it inherits.
    pub group: Option<usize>,
}

/// Everything the rebuild needs, computed and checked before anything changes.
#[derive(Debug)]
pub struct TreePlan {
    pub gen_dir: PathBuf,
    pub procs: Vec<ProcPlan>,
    /// The root (crrestart's own process).
    pub root: usize,
    /// Processes whose parent was outside the tree (re-parented to init or a subreaper).
    pub orphans: Vec<usize>,
    /// Top-down creation order (parents first).
    pub order: Vec<usize>,
    pub objects: Vec<ObjSpec>,
    pub pipes: Vec<PipeSpec>,
    pub shms: Vec<ShmSpec>,
    /// Files written by the programs, to truncate back to their checkpoint-time size.
    pub truncations: Vec<(String, u64)>,
    /// Files open read-write whose content the images hold: written back (created if
    /// missing) before anything opens them.
    pub rewrites: Vec<(String, Vec<u8>)>,
    /// Every fd number of every process is below this.
    pub stage_base: i32,
    /// The root's group or session when it came from outside the tree: the virtual id
    /// maps to crrestart's own at rebuild time: (virtual, "pgid" or "sid").
    pub outside_ids: Vec<(i32, &'static str)>,
    pub restorer: PathBuf,
    pub restorer_range: (u64, u64),
    pub coord: String,
    pub warnings: Vec<String>,
    /// Map large page runs from the images (default) rather than reading them (`--eager`).
    pub mapped: bool,
    /// crrestart's own stderr (above the program fds), where restorers report failures.
    pub err_out: std::fs::File,
    /// SysV IPC objects and POSIX message queues to recreate (`crate::ipc`).
    pub ipc: crate::ipc::IpcPlan,
}

impl TreePlan {
    /// "vpid N (program)".
    pub fn describe(&self, i: usize) -> String {
        let m = &self.procs[i].meta;
        format!("process vpid {} ({})", m.vpid, m.program)
    }
}

fn identity_changed(path: &str, want: &image::FileIdentity) -> Result<(), String> {
    let md = std::fs::metadata(path).map_err(|e| format!("{path}: {e} (the program had it open or mapped at checkpoint time)"))?;
    if md.size() != want.size || md.mtime() != want.mtime_sec || md.mtime_nsec() != want.mtime_nsec {
        return Err(format!("{path} changed since the checkpoint (size or modification time differ)"));
    }
    Ok(())
}

fn kernel_special_sizes() -> HashMap<String, u64> {
    let mut m = HashMap::new();
    if let Ok(s) = std::fs::read_to_string("/proc/self/maps") {
        for l in s.lines() {
            let name = l.split_whitespace().nth(5).unwrap_or("");
            if matches!(name, "[vdso]" | "[vvar]" | "[vvar_vclock]") {
                let (a, b) = l.split_whitespace().next().unwrap().split_once('-').unwrap();
                let len = u64::from_str_radix(b, 16).unwrap() - u64::from_str_radix(a, 16).unwrap();
                m.insert(name.to_string(), len);
            }
        }
    }
    m
}

fn check_compat(meta: &ImageMeta) -> Result<(), String> {
    let have = kernel_special_sizes();
    for r in &meta.regions {
        let name = match r.kind {
            RegionKind::Vdso => "[vdso]",
            RegionKind::Vvar => "[vvar]",
            RegionKind::VvarVclock => "[vvar_vclock]",
            _ => continue,
        };
        if have.get(name) != Some(&(r.end - r.start)) {
            return Err(format!(
                "this kernel's {name} differs from the one the checkpoint was taken on (kernel {}); restart on that kernel",
                meta.kernel_release
            ));
        }
    }
    Ok(())
}

/// Open a file, directory or device an fd referred to (at its offset).
pub fn open_for_fd(rec: &FdRecord) -> Result<std::fs::File, String> {
    let acc = rec.flags & libc::O_ACCMODE;
    let mut o = std::fs::OpenOptions::new();
    o.read(acc == libc::O_RDONLY || acc == libc::O_RDWR);
    o.write(acc == libc::O_WRONLY || acc == libc::O_RDWR);
    o.custom_flags(rec.flags & (libc::O_APPEND | libc::O_NONBLOCK | libc::O_DIRECT | libc::O_SYNC | libc::O_DSYNC | libc::O_NOATIME));
    match &rec.kind {
        FdKind::File { path, .. } => {
            if !Path::new(path).exists() {
                return Err(format!("{path} (fd {}) no longer exists", rec.fd));
            }
            let f = o.open(path).map_err(|e| format!("{path} (fd {}): {e}", rec.fd))?;
            // SAFETY: lseek on our own fd.
            unsafe { libc::lseek(std::os::fd::AsRawFd::as_raw_fd(&f), rec.offset, libc::SEEK_SET) };
            Ok(f)
        }
        FdKind::Directory { path } => std::fs::File::open(path).map_err(|e| format!("directory {path} (fd {}): {e}", rec.fd)),
        FdKind::CharDevice { path, .. } | FdKind::Tty { path } => {
            o.open(path).map_err(|e| format!("device {path} (fd {}): {e}", rec.fd))
        }
        FdKind::Deleted { path, data, memfd } => {
            let tmp = recreate_deleted(path, *memfd).map_err(|e| format!("fd {} ({path}, deleted while open): {e}", rec.fd))?;
            std::io::Write::write_all(&mut &tmp, data).map_err(|e| format!("fd {} ({path}, deleted while open): {e}", rec.fd))?;
            // A description with the recorded flags (the program's may be write-only or
            // O_APPEND), through the unlinked file's /proc link.
            let link = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&tmp));
            let f = o.open(&link).map_err(|e| format!("fd {} ({path}, deleted while open): {e}", rec.fd))?;
            // SAFETY: lseek on our own fd.
            unsafe { libc::lseek(std::os::fd::AsRawFd::as_raw_fd(&f), rec.offset, libc::SEEK_SET) };
            Ok(f)
        }
        FdKind::EventFd { count, semaphore } => {
            let mut flags = libc::EFD_CLOEXEC;
            if *semaphore {
                flags |= libc::EFD_SEMAPHORE;
            }
            if rec.flags & libc::O_NONBLOCK != 0 {
                flags |= libc::EFD_NONBLOCK;
            }
            // SAFETY: creates a new fd, owned by the File below.
            let fd = unsafe { libc::eventfd(0, flags) };
            if fd < 0 {
                return Err(format!("fd {} (eventfd): {}", rec.fd, std::io::Error::last_os_error()));
            }
            // SAFETY: fd is ours.
            let f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            if *count > 0 {
                // SAFETY: writes 8 bytes from a u64 (the counter may exceed eventfd()'s u32).
                let n = unsafe { libc::write(fd, count as *const u64 as *const libc::c_void, 8) };
                if n != 8 {
                    return Err(format!("fd {} (eventfd): cannot set the counter to {count}: {}", rec.fd, std::io::Error::last_os_error()));
                }
            }
            Ok(f)
        }
        FdKind::TimerFd { clockid, value_ns, interval_ns, ticks } => {
            let mut flags = libc::TFD_CLOEXEC;
            if rec.flags & libc::O_NONBLOCK != 0 {
                flags |= libc::TFD_NONBLOCK;
            }
            // SAFETY: creates a new fd, owned by the File below.
            let fd = unsafe { libc::timerfd_create(*clockid, flags) };
            if fd < 0 {
                return Err(format!("fd {} (timerfd on clock {clockid}): {}", rec.fd, std::io::Error::last_os_error()));
            }
            // SAFETY: fd is ours.
            let f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            let ts = |ns: u64| libc::timespec { tv_sec: (ns / 1_000_000_000) as libc::time_t, tv_nsec: (ns % 1_000_000_000) as libc::c_long };
            // The time left runs from now: the time the program was not running does not count.
            // A periodic timer shows 0 left when it expires right now: keep it armed.
            let value = if *value_ns == 0 && *interval_ns > 0 { 1 } else { *value_ns };
            let its = libc::itimerspec { it_interval: ts(*interval_ns), it_value: ts(value) };
            // SAFETY: valid itimerspec; no old value wanted.
            if unsafe { libc::timerfd_settime(fd, 0, &its, std::ptr::null_mut()) } != 0 {
                return Err(format!("fd {} (timerfd): timerfd_settime: {}", rec.fd, std::io::Error::last_os_error()));
            }
            if *ticks > 0 {
                // TFD_IOC_SET_TICKS (_IOW('T', 0, u64)): the expirations not read yet.
                const TFD_IOC_SET_TICKS: libc::c_ulong = 0x4008_5400;
                // SAFETY: the ioctl reads one u64.
                if unsafe { libc::ioctl(fd, TFD_IOC_SET_TICKS, ticks as *const u64) } != 0 {
                    return Err(format!(
                        "fd {} (timerfd): cannot restore its {ticks} unread expirations (TFD_IOC_SET_TICKS: {}; the kernel needs CONFIG_CHECKPOINT_RESTORE)",
                        rec.fd,
                        std::io::Error::last_os_error()
                    ));
                }
            }
            Ok(f)
        }
        FdKind::SignalFd { mask } => {
            // SAFETY: plain data, filled by sigemptyset/sigaddset.
            let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
            // SAFETY: valid sigset_t.
            unsafe { libc::sigemptyset(&mut set) };
            for sig in 1..=64 {
                if mask & (1u64 << (sig - 1)) != 0 {
                    // SAFETY: valid sigset_t; invalid numbers are refused harmlessly.
                    unsafe { libc::sigaddset(&mut set, sig) };
                }
            }
            let mut flags = libc::SFD_CLOEXEC;
            if rec.flags & libc::O_NONBLOCK != 0 {
                flags |= libc::SFD_NONBLOCK;
            }
            // SAFETY: a new fd, owned by the File below.
            let fd = unsafe { libc::signalfd(-1, &set, flags) };
            if fd < 0 {
                return Err(format!("fd {} (signalfd): {}", rec.fd, std::io::Error::last_os_error()));
            }
            // SAFETY: fd is ours.
            Ok(unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
        }
        FdKind::Epoll { .. } => {
            // The interest list is filled in each process once its fds are in place
            // (`rebuild.rs`, `add_epoll_entries`).
            // SAFETY: a new fd, owned by the File below.
            let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
            if fd < 0 {
                return Err(format!("fd {} (epoll): {}", rec.fd, std::io::Error::last_os_error()));
            }
            // SAFETY: fd is ours.
            Ok(unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
        }
        FdKind::MQueue { .. } => crate::ipc::open_mqueue(rec),
        FdKind::Inotify { watches, last_wd } => crate::kobjects::open_inotify(rec, watches, *last_wd),
        FdKind::SealedMemfd { path, data, seals } => crate::kobjects::open_sealed_memfd(rec, path, data, *seals),
        FdKind::AbsTimerFd { clockid, expires_ns, interval_ns, ticks, cancel_on_set } => {
            crate::kobjects::open_abs_timerfd(rec, *clockid, *expires_ns, *interval_ns, *ticks, *cancel_on_set)
        }
        _ => Err(format!("fd {}: cannot reopen", rec.fd)),
    }
}

/// An empty unlinked file standing for a file deleted while open: a memfd of the same
/// name for a memfd, else an `O_TMPFILE` file in the directory it was in (a file created
/// and unlinked at once where the file system has no `O_TMPFILE`).
fn recreate_deleted(path: &str, memfd: bool) -> Result<std::fs::File, String> {
    use std::os::fd::FromRawFd;
    if memfd {
        let name = path.strip_prefix("/memfd:").unwrap_or(path);
        let c = std::ffi::CString::new(name.as_bytes().to_vec()).map_err(|_| "a memfd name with a NUL byte".to_string())?;
        // SAFETY: a valid C string; the new fd is owned by the File.
        let fd = unsafe { libc::memfd_create(c.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a new fd we own.
        return Ok(unsafe { std::fs::File::from_raw_fd(fd) });
    }
    let dir = Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("/"));
    if !dir.is_dir() {
        return Err(format!("its directory {} no longer exists (substitute it with --fd)", dir.display()));
    }
    let mut o = std::fs::OpenOptions::new();
    o.read(true).write(true).mode(0o600).custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC);
    match o.open(dir) {
        Ok(f) => Ok(f),
        Err(_) => {
            let name = dir.join(format!(".crust-deleted-{}-{}", std::process::id(), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)));
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&name)
                .map_err(|e| format!("cannot create a file in {}: {e}", dir.display()))?;
            let _ = std::fs::remove_file(&name);
            Ok(f)
        }
    }
}

/// Open the file that replaces fd `rec.fd` (`crrestart --fd`): with the fd's recorded
/// flags; created (0644) when the fd was open for writing and the path does not exist; at
/// the recorded offset when the fd was a file and the new file is that long (a moved log
/// continues where it was), else at its end (a file) or its start.
pub fn open_substitute(rec: &FdRecord, path: &str) -> Result<std::fs::File, String> {
    let what = || format!("fd {} substituted by {path}", rec.fd);
    let p = Path::new(path);
    if p.is_dir() {
        return std::fs::File::open(p).map_err(|e| format!("{}: {e}", what()));
    }
    let acc = rec.flags & libc::O_ACCMODE;
    let mut o = std::fs::OpenOptions::new();
    let write = acc == libc::O_WRONLY || acc == libc::O_RDWR;
    o.read(acc == libc::O_RDONLY || acc == libc::O_RDWR);
    o.write(write);
    if write && !p.exists() {
        o.create(true).mode(0o644);
    }
    o.custom_flags(rec.flags & (libc::O_APPEND | libc::O_NONBLOCK | libc::O_DIRECT | libc::O_SYNC | libc::O_DSYNC | libc::O_NOATIME));
    let f = o.open(p).map_err(|e| format!("{}: {e}", what()))?;
    let md = f.metadata().map_err(|e| format!("{}: {e}", what()))?;
    if md.is_file() {
        let off = match rec.kind {
            FdKind::File { .. } => (rec.offset.max(0) as u64).min(md.len()),
            _ => 0,
        };
        // SAFETY: lseek on our own fd.
        unsafe { libc::lseek(std::os::fd::AsRawFd::as_raw_fd(&f), off as libc::off_t, libc::SEEK_SET) };
    }
    Ok(f)
}

/// A file an fd referred to must still be that file: the same inode; unchanged (size and
/// modification time) if only read, by this tree; not shorter if written (the program's
/// data would be gone). Files written are truncated back later.
fn check_file_unchanged(
    f: &std::fs::File,
    rec: &FdRecord,
    path: &str,
    identity: &image::FileIdentity,
    written: &std::collections::HashSet<(u64, u64)>,
    root: bool,
    vpid: i32,
) -> Result<(), String> {
    // Kernel files (/proc, /sys) have no lasting identity: reopened as they are.
    if path.starts_with("/proc/") || path.starts_with("/sys/") {
        return Ok(());
    }
    let md = f.metadata().map_err(|e| format!("{path} (fd {}): {e}", rec.fd))?;
    let hint = format!(
        "(restart with --fd {}{}=PATH to give the program this or another file)",
        if root { String::new() } else { format!("{vpid}:") },
        rec.fd
    );
    if identity.ino != 0 && md.ino() != identity.ino {
        return Err(format!("{path} (fd {}) was replaced since the checkpoint (another file is at that path) {hint}", rec.fd));
    }
    if rec.flags & libc::O_ACCMODE == libc::O_RDONLY {
        if !written.contains(&(identity.dev, identity.ino))
            && (md.size() != identity.size || md.mtime() != identity.mtime_sec || md.mtime_nsec() != identity.mtime_nsec)
        {
            return Err(format!(
                "{path} (fd {}, open for reading) changed since the checkpoint (size or modification time differ) {hint}",
                rec.fd
            ));
        }
    } else if md.size() < identity.size {
        return Err(format!(
            "{path} (fd {}) is shorter than at checkpoint time ({} < {} bytes): data the program wrote is gone {hint}",
            rec.fd,
            md.size(),
            identity.size
        ));
    }
    Ok(())
}

/// Resolve `--fd` substitutions to (process index, fd) → path, checking each names a
/// process of the generation and an fd it held.
fn resolve_substs(t: &TreePlan, substs: &[crate::fds::FdSubst]) -> Result<HashMap<(usize, i32), String>, String> {
    let mut out = HashMap::new();
    for s in substs {
        let i = match s.vpid {
            None => t.root,
            Some(v) => t.procs.iter().position(|p| p.meta.vpid == v).ok_or_else(|| {
                let have: Vec<String> = t.procs.iter().map(|p| format!("{} ({})", p.meta.vpid, p.meta.program)).collect();
                format!("--fd {v}:{}={}: the generation has no process vpid {v} (it has {})", s.fd, s.path, have.join(", "))
            })?,
        };
        let m = &t.procs[i].meta;
        if !m.fds.iter().any(|r| r.fd == s.fd) {
            let have: Vec<String> = m.fds.iter().map(|r| r.fd.to_string()).collect();
            return Err(format!(
                "--fd {}: process vpid {} ({}) had no fd {} at checkpoint time (its fds: {}; see crrestart --list-fds)",
                s.path,
                m.vpid,
                m.program,
                s.fd,
                have.join(" ")
            ));
        }
        if out.insert((i, s.fd), s.path.clone()).is_some() {
            return Err(format!("--fd: fd {} of process vpid {} is substituted twice", s.fd, m.vpid));
        }
    }
    Ok(out)
}

/// Read, check and link every image of the generation.
fn load(opts: &RestartOptions) -> Result<TreePlan, String> {
    let (gen_dir, man) = manifest::resolve_generation(&opts.path).map_err(|e| e.to_string())?;
    if man.processes.is_empty() {
        return Err(format!("{}: the manifest lists no process", gen_dir.display()));
    }
    let mut procs: Vec<ProcPlan> = Vec::new();
    for mp in &man.processes {
        let img_path = gen_dir.join(&mp.image);
        if mp.image.is_empty() || !img_path.is_file() {
            return Err(format!(
                "{}: the generation is incomplete: the image of process vpid {} ({}), {}, is missing",
                gen_dir.display(),
                mp.vpid,
                mp.program,
                if mp.image.is_empty() { "(none recorded)".to_string() } else { img_path.display().to_string() }
            ));
        }
        let img = image::read_image(&img_path).map_err(|e| format!("{}: {e}", img_path.display()))?;
        if mp.header_crc32c != 0 && manifest::image_header_crc(&img_path) != Some(mp.header_crc32c) {
            return Err(format!(
                "{}: this image is not the one the manifest recorded for vpid {} (header checksum differs)",
                img_path.display(),
                mp.vpid
            ));
        }
        if img.meta.vpid != mp.vpid {
            return Err(format!(
                "{}: the image is of vpid {} but the manifest lists it for vpid {} (mixed-up generation)",
                img_path.display(),
                img.meta.vpid,
                mp.vpid
            ));
        }
        // Page checksums (`--verify` in mapped mode: checked here, before anything changes;
        // `--eager`: checked by the restorers as they read, before the restart barrier),
        // unpacking of compressed images.
        let pages = crate::pages::open_pages(&img_path, &img, opts.verify, opts.eager, opts.direct_reads)?;
        procs.push(ProcPlan {
            img_path,
            pages: pages.file,
            pages_verified: pages.verified,
            pages_direct: pages.direct,
            meta: img.meta,
            parent: None,
            children: Vec::new(),
            zombies: Vec::new(),
            fds: Vec::new(),
            shared: HashMap::new(),
            session_leader: false,
            new_session: false,
            group: None,
        });
    }
    let n = procs.len();
    // Link children to parents by the kernel's pids at checkpoint time (always unique then).
    let by_real: HashMap<i32, usize> = procs.iter().enumerate().map(|(i, p)| (p.meta.real_pid, i)).collect();
    if by_real.len() != n {
        return Err(format!("{}: two images claim the same process", gen_dir.display()));
    }
    for (i, p) in procs.iter_mut().enumerate() {
        p.parent = by_real.get(&p.meta.tree.real_ppid).copied().filter(|&q| q != i && n > 1);
    }
    // Every live child a process had must be in the generation, unless the generation
    // says it ran outside crust's control (a static or set-id program): that one cannot
    // come back, and the restart says so.
    let mut warnings = Vec::new();
    for p in procs.iter_mut() {
        for c in &p.meta.tree.children {
            if c.exit.is_none() && !by_real.contains_key(&c.real_pid) {
                if let Some(x) = man.excluded.iter().find(|x| x.real_pid == c.real_pid) {
                    warnings.push(format!(
                        "process vpid {} ({}), a child of vpid {} ({}), ran outside crust's control ({}) and is not restored",
                        x.vpid, x.program, p.meta.vpid, p.meta.program, x.reason
                    ));
                    continue;
                }
                return Err(format!(
                    "{}: the generation is incomplete: process vpid {} (a child of vpid {}, {}) has no image; \
                     it was not under crust's control when the checkpoint was taken",
                    gen_dir.display(),
                    c.vpid,
                    p.meta.vpid,
                    p.meta.program
                ));
            }
        }
        p.zombies = p.meta.tree.children.iter().filter(|c| c.exit.is_some()).copied().collect();
    }
    let tops: Vec<usize> = (0..n).filter(|&i| procs[i].parent.is_none()).collect();
    let root = *tops
        .iter()
        .min_by_key(|&&i| (procs[i].meta.tree.start_ticks, procs[i].meta.vpid))
        .ok_or_else(|| format!("{}: the processes form a cycle", gen_dir.display()))?;
    let orphans: Vec<usize> = tops.iter().copied().filter(|&i| i != root).collect();
    for i in 0..n {
        if let Some(p) = procs[i].parent {
            procs[p].children.push(i);
        }
    }
    let keys: Vec<(u64, i32)> = procs.iter().map(|p| (p.meta.tree.start_ticks, p.meta.vpid)).collect();
    for p in procs.iter_mut() {
        p.children.sort_by_key(|&c| keys[c]);
    }
    let mut order = Vec::new();
    let mut stack: Vec<usize> = std::iter::once(root).chain(orphans.iter().copied()).rev().collect();
    while let Some(i) = stack.pop() {
        order.push(i);
        stack.extend(procs[i].children.iter().rev().copied());
    }
    if order.len() != n {
        return Err(format!("{}: the processes do not form a tree", gen_dir.display()));
    }

    let restorer = crate::find_sibling_binary("crust-restorer").map_err(|e| e.to_string())?;
    let range = crate::plan::restorer_range(&restorer)?;
    // Leave room for the restorer's brk area after its image.
    let range = (range.0, range.1 + (16 << 20));
    // Files whose content an image holds (open read-write): written back before the
    // restart, so their shared mappings need not be unchanged now.
    let saved: std::collections::HashSet<(u64, u64)> = procs
        .iter()
        .flat_map(|p| p.meta.fds.iter())
        .filter_map(|r| match &r.kind {
            FdKind::SavedFile { identity, .. } => Some((identity.dev, identity.ino)),
            _ => None,
        })
        .collect();
    // Files some process maps shared and writable: the program writes them after the
    // checkpoint by design (the file is the storage), so they must only be the same file.
    let mapped_written = crate::kobjects::shared_writable_files(procs.iter().map(|p| &p.meta));
    for p in &procs {
        let who = format!("vpid {} ({})", p.meta.vpid, p.meta.program);
        check_compat(&p.meta)?;
        for r in &p.meta.regions {
            if let RegionKind::File { path, identity, .. } = &r.kind {
                if r.shared && saved.contains(&(identity.dev, identity.ino)) {
                    continue;
                }
                if mapped_written.contains(&(identity.dev, identity.ino)) {
                    crate::kobjects::check_mapped_written(path, identity).map_err(|e| format!("{who}: {e}"))?;
                    continue;
                }
                identity_changed(path, identity).map_err(|e| format!("{who}: {e}"))?;
            }
        }
        crate::plan::check_no_overlap(&p.meta, range).map_err(|e| format!("{who}: {e}"))?;
        let cwd = Path::new(&p.meta.cwd);
        if !cwd.is_dir() {
            return Err(format!("{who}: the program's working directory {} no longer exists", p.meta.cwd));
        }
    }
    let stage_base = procs.iter().flat_map(|p| p.meta.fds.iter().map(|f| f.fd)).max().unwrap_or(2).max(2) + 1;
    // Page sources (image files, unpacked memfds) live above every program fd number.
    for p in procs.iter_mut() {
        let f = std::mem::replace(&mut p.pages, std::fs::File::open("/dev/null").map_err(|e| e.to_string())?);
        p.pages = crate::pages::move_above(f, stage_base.max(10))?;
    }
    let err_out = std::os::fd::AsFd::as_fd(&std::io::stderr()).try_clone_to_owned().map_err(|e| format!("stderr: {e}"))?;
    let err_out = crate::pages::move_above(std::fs::File::from(err_out), stage_base.max(10))?;
    Ok(TreePlan {
        gen_dir,
        procs,
        root,
        orphans,
        order,
        objects: Vec::new(),
        pipes: Vec::new(),
        shms: Vec::new(),
        truncations: Vec::new(),
        rewrites: Vec::new(),
        stage_base: stage_base.max(10),
        outside_ids: Vec::new(),
        restorer,
        restorer_range: range,
        coord: opts.coord.clone(),
        warnings,
        mapped: !opts.eager,
        err_out,
        ipc: Default::default(),
    })
}

/// Decide where every fd of every process comes from, and which objects to create.
fn plan_fds(t: &mut TreePlan, keep_files: bool, substs: &[crate::fds::FdSubst]) -> Result<(), String> {
    let substs = resolve_substs(t, substs)?;
    let shm_ids = crate::kobjects::shm_file_ids(t.procs.iter().map(|p| &p.meta));
    // Pipes: which ends the tree holds.
    #[derive(Default)]
    struct Ends {
        reads: usize,
        writes: usize,
        read_rec: Option<FdRecord>,
        write_rec: Option<FdRecord>,
        data: Vec<u8>,
        capacity: u32,
        fifo: Option<String>,
    }
    let mut ends: BTreeMap<u64, Ends> = BTreeMap::new();
    for p in &t.procs {
        for rec in &p.meta.fds {
            if let FdKind::Pipe { id, read_end, data, capacity } = &rec.kind {
                let e = ends.entry(*id).or_default();
                if *read_end {
                    e.reads += 1;
                    e.read_rec.get_or_insert_with(|| rec.clone());
                } else {
                    e.writes += 1;
                    e.write_rec.get_or_insert_with(|| rec.clone());
                }
                if e.data.is_empty() && !data.is_empty() {
                    e.data = data.clone();
                }
                e.capacity = e.capacity.max(*capacity);
                if let Some((_, path)) = p.meta.tree.fifos.iter().find(|(fd, _)| *fd == rec.fd) {
                    e.fifo = Some(path.clone());
                }
            }
        }
    }
    // Named FIFOs: the node must be a FIFO still; one the program removed after the
    // checkpoint is made again (a FIFO keeps nothing on disk).
    for e in ends.values() {
        if let Some(path) = &e.fifo {
            match std::fs::symlink_metadata(path) {
                Ok(md) if std::os::unix::fs::FileTypeExt::is_fifo(&md.file_type()) => {}
                Ok(_) => return Err(format!("{path} was a named FIFO at checkpoint time and is something else now")),
                Err(_) => t.warnings.push(format!("the named FIFO {path} no longer exists; it is made again")),
            }
        }
    }
    // A pipe on one of the root's fds 0-2 that has an end outside the tree is the
    // root's connection to the outside: crrestart's own fd of that number replaces it
    // for every process that holds it.
    let root_outside: HashMap<u64, i32> = t.procs[t.root]
        .meta
        .fds
        .iter()
        .filter(|r| r.fd <= 2)
        .filter_map(|r| match &r.kind {
            FdKind::Pipe { id, .. } if ends.get(id).is_some_and(|e| e.reads == 0 || e.writes == 0) => Some((*id, r.fd)),
            _ => None,
        })
        .collect();
    // Files some process of the tree had open for writing: they change after the
    // checkpoint by design (and are truncated back), also for the tree's readers.
    let written: std::collections::HashSet<(u64, u64)> = t
        .procs
        .iter()
        .flat_map(|p| p.meta.fds.iter())
        .filter(|r| r.flags & libc::O_ACCMODE != libc::O_RDONLY)
        .filter_map(|r| match &r.kind {
            FdKind::File { identity, .. } | FdKind::SavedFile { identity, .. } => Some((identity.dev, identity.ino)),
            _ => None,
        })
        .collect();
    let mut pipe_obj: HashMap<(u64, bool), usize> = HashMap::new();
    let mut pipe_index: HashMap<u64, usize> = HashMap::new();
    let mut devnull: Option<usize> = None;
    let mut resolved: HashMap<(usize, i32), Src> = HashMap::new();
    let order = t.order.clone();
    let by_real: HashMap<i32, usize> = t.procs.iter().enumerate().map(|(j, p)| (p.meta.real_pid, j)).collect();
    for &i in &order {
        let who = t.describe(i);
        let parent = t.procs[i].parent;
        let recs = t.procs[i].meta.fds.clone();
        let inherited = t.procs[i].meta.tree.inherited_fds.clone();
        let dups = t.procs[i].meta.tree.dup_fds.clone();
        let siblings = t.procs[i].meta.tree.sibling_fds.clone();
        let mut fds = Vec::new();
        for rec in &recs {
            if let Some(path) = substs.get(&(i, rec.fd)) {
                // Check now that it can be opened; it is opened for real later.
                open_substitute(rec, path).map_err(|e| format!("{who}: {e}"))?;
                t.objects.push(ObjSpec::Subst { rec: rec.clone(), path: path.clone() });
                let src = Src::Obj(t.objects.len() - 1);
                resolved.insert((i, rec.fd), src);
                fds.push((rec.fd, src));
                continue;
            }
            if matches!(rec.kind, FdKind::Ignored { .. }) {
                continue; // marked "do not checkpoint": closed after the restart
            }
            if let FdKind::PidFd { real_pid, vpid } = &rec.kind {
                // Opened by the process itself once the tree exists (`rebuild.rs`).
                let in_tree = t.procs.iter().any(|p| p.meta.real_pid == *real_pid)
                    || t.procs.iter().any(|p| p.zombies.iter().any(|z| z.real_pid == *real_pid));
                if !in_tree {
                    return Err(format!(
                        "{who}: fd {} is a pidfd of process {vpid}, which is not part of the checkpoint \
                         (substitute it with --fd, e.g. /dev/null)",
                        rec.fd
                    ));
                }
                continue;
            }
            let src = match &rec.kind {
                FdKind::Pipe { id, read_end, .. } => {
                    let e = &ends[id];
                    let internal = e.reads > 0 && e.writes > 0;
                    if let Some(&k) = root_outside.get(id) {
                        Src::Inherit(k)
                    } else if !internal && rec.fd <= 2 {
                        Src::Inherit(rec.fd)
                    } else if !internal && !*read_end {
                        // Typically a descriptor leaked by whatever started the program (a
                        // build tool's jobserver): it cannot be reconnected.
                        t.warnings.push(format!(
                            "{who}: fd {} was a pipe to a process outside the checkpoint; it is /dev/null now",
                            rec.fd
                        ));
                        Src::Obj(*devnull.get_or_insert_with(|| {
                            t.objects.push(ObjSpec::DevNull);
                            t.objects.len() - 1
                        }))
                    } else {
                        // Both ends in the tree; or only readers, whose writers are gone:
                        // the reader gets the bytes in flight, then end-of-file.
                        let pi = *pipe_index.entry(*id).or_insert_with(|| {
                            t.pipes.push(PipeSpec {
                                id: *id,
                                capacity: e.capacity,
                                data: e.data.clone(),
                                fifo: e.fifo.clone(),
                                read_flags: e.read_rec.as_ref().map(|r| r.flags),
                                write_flags: e.write_rec.as_ref().map(|r| r.flags),
                            });
                            t.pipes.len() - 1
                        });
                        Src::Obj(*pipe_obj.entry((*id, *read_end)).or_insert_with(|| {
                            t.objects.push(ObjSpec::PipeEnd { pipe: pi, read: *read_end });
                            t.objects.len() - 1
                        }))
                    }
                }
                _ => {
                    // A dup of a lower fd of this process: the same description; else one
                    // inherited from the parent.
                    let from_parent = dups
                        .iter()
                        .find(|(fd, _)| *fd == rec.fd)
                        .and_then(|(_, lower)| resolved.get(&(i, *lower)).copied())
                        .or_else(|| {
                            inherited
                                .iter()
                                .find(|(fd, _)| *fd == rec.fd)
                                .and_then(|(_, pfd)| parent.and_then(|p| resolved.get(&(p, *pfd)).copied()))
                        })
                        .or_else(|| {
                            // A sibling restored earlier holds it (the first one opens it).
                            siblings.iter().filter(|(fd, _, _)| *fd == rec.fd).find_map(|&(_, sib, sfd)| {
                                let j = by_real.get(&sib)?;
                                resolved.get(&(*j, sfd)).copied()
                            })
                        });
                    match (from_parent, &rec.kind) {
                        (Some(s), _) => s,
                        (None, FdKind::Tty { .. } | FdKind::Socket { .. }) if rec.fd <= 2 => Src::Inherit(rec.fd),
                        (None, FdKind::Socket { description, .. }) => {
                            return Err(format!("{who}: fd {} is a socket ({description}); sockets are not restored yet", rec.fd))
                        }
                        (None, FdKind::Deleted { path, data, memfd: true } | FdKind::SealedMemfd { path, data, .. })
                            if crate::kobjects::memfd_fd_object(t, i, path).is_some() =>
                        {
                            // The memfd is also mapped shared: one object for both.
                            let k = crate::kobjects::memfd_fd_object(t, i, path).expect("checked");
                            t.shms[k].content = Some(data.clone());
                            if let FdKind::SealedMemfd { seals, .. } = &rec.kind {
                                t.shms[k].seals = *seals;
                            }
                            t.objects.push(ObjSpec::ShmFd { shm: k, rec: rec.clone() });
                            Src::Obj(t.objects.len() - 1)
                        }
                        (
                            None,
                            FdKind::EventFd { .. }
                            | FdKind::TimerFd { .. }
                            | FdKind::SignalFd { .. }
                            | FdKind::Epoll { .. }
                            | FdKind::Inotify { .. }
                            | FdKind::SealedMemfd { .. }
                            | FdKind::AbsTimerFd { .. },
                        ) => {
                            open_for_fd(rec).map_err(|e| format!("{who}: {e}"))?;
                            t.objects.push(ObjSpec::Open(rec.clone()));
                            Src::Obj(t.objects.len() - 1)
                        }
                        (None, FdKind::SavedFile { path, identity, data }) => {
                            // Its content comes back from the image: no identity checks.
                            let dir = Path::new(path).parent().unwrap_or(Path::new("/"));
                            if !dir.is_dir() {
                                return Err(format!(
                                    "{who}: fd {} was {path}; its directory {} no longer exists (substitute it with --fd)",
                                    rec.fd,
                                    dir.display()
                                ));
                            }
                            if !t.rewrites.iter().any(|(p, _)| p == path) {
                                if !Path::new(path).exists() {
                                    t.warnings.push(format!("{who}: {path} (fd {}) no longer exists; it is made again from the checkpoint", rec.fd));
                                }
                                t.rewrites.push((path.clone(), data.clone()));
                            }
                            let mut file = rec.clone();
                            file.kind = FdKind::File { path: path.clone(), identity: *identity };
                            t.objects.push(ObjSpec::Open(file));
                            Src::Obj(t.objects.len() - 1)
                        }
                        (None, FdKind::Deleted { path, memfd, .. }) => {
                            let dir = Path::new(path).parent().unwrap_or(Path::new("/"));
                            if !*memfd && !dir.is_dir() {
                                return Err(format!(
                                    "{who}: fd {} was {path}, deleted while open; its directory {} no longer exists \
                                     (substitute it with --fd)",
                                    rec.fd,
                                    dir.display()
                                ));
                            }
                            t.objects.push(ObjSpec::Open(rec.clone()));
                            Src::Obj(t.objects.len() - 1)
                        }
                        (None, FdKind::MQueue { .. }) => {
                            // Created (or reset) with its messages by `crate::ipc`, checked there.
                            t.objects.push(ObjSpec::Open(rec.clone()));
                            Src::Obj(t.objects.len() - 1)
                        }
                        (None, FdKind::Unsupported { description }) => {
                            return Err(format!("{who}: fd {} ({description}) is of a kind crust cannot restore yet", rec.fd))
                        }
                        (None, FdKind::File { identity, .. }) if shm_ids.contains(&(identity.dev, identity.ino)) => {
                            // A tmpfs file the tree also maps shared: written back from the
                            // images before anything opens it (`kobjects::plan_shm_files`).
                            t.objects.push(ObjSpec::Open(rec.clone()));
                            Src::Obj(t.objects.len() - 1)
                        }
                        (None, _) => {
                            // Check now that it can be opened; it is opened for real later.
                            let f = open_for_fd(rec).map_err(|e| format!("{who}: {e}"))?;
                            if let FdKind::File { path, identity } = &rec.kind {
                                check_file_unchanged(&f, rec, path, identity, &written, i == t.root, t.procs[i].meta.vpid)
                                    .map_err(|e| format!("{who}: {e}"))?;
                                let acc = rec.flags & libc::O_ACCMODE;
                                if acc != libc::O_RDONLY && !keep_files && f.metadata().map(|m| m.len() != identity.size).unwrap_or(false) {
                                    t.truncations.push((path.clone(), identity.size));
                                }
                            }
                            t.objects.push(ObjSpec::Open(rec.clone()));
                            Src::Obj(t.objects.len() - 1)
                        }
                    }
                }
            };
            resolved.insert((i, rec.fd), src);
            fds.push((rec.fd, src));
        }
        t.procs[i].fds = fds;
    }
    Ok(())
}

/// Shared memory without a path: one memfd per kernel object, filled from the images.
fn plan_shared_memory(t: &mut TreePlan) {
    let mut by_obj: HashMap<(u64, u64), usize> = HashMap::new();
    for i in 0..t.procs.len() {
        let maps = t.procs[i].meta.tree.shared_maps.clone();
        for sm in maps {
            let Some(region) = t.procs[i].meta.regions.iter().find(|r| r.start == sm.start && r.end == sm.end) else { continue };
            let k = *by_obj.entry((sm.dev, sm.ino)).or_insert_with(|| {
                let name = match &region.kind {
                    RegionKind::Detached { name } => name.strip_prefix("/memfd:").and_then(|n| n.strip_suffix(" (deleted)")),
                    _ => None,
                };
                t.shms.push(ShmSpec { obj: (sm.dev, sm.ino), name: name.unwrap_or("").to_string(), ..ShmSpec::default() });
                t.shms.len() - 1
            });
            let spec = &mut t.shms[k];
            spec.size = spec.size.max(sm.offset + (sm.end - sm.start));
            for run in &region.runs {
                spec.fills.push((i, run.offset, run.len, sm.offset + (run.addr - sm.start)));
            }
            t.objects.push(ObjSpec::Shm(k));
            let obj = t.objects.len() - 1;
            t.procs[i].shared.insert(sm.start, (obj, sm.offset));
        }
    }
}

/// Sessions and process groups.
fn plan_groups(t: &mut TreePlan) {
    let by_vpid: HashMap<i32, usize> = t.procs.iter().enumerate().map(|(i, p)| (p.meta.vpid, i)).collect();
    let root = t.root;
    let (root_pgid, root_sid) = (t.procs[root].meta.tree.vpgid, t.procs[root].meta.tree.vsid);
    let mut substitute: HashMap<i32, usize> = HashMap::new();
    let mut new_sessions: std::collections::HashSet<i32> = std::collections::HashSet::new();
    for &i in &t.order.clone() {
        let m = &t.procs[i].meta;
        let (vpid, vpgid, vsid) = (m.vpid, m.tree.vpgid, m.tree.vsid);
        if vpgid == 0 {
            continue; // an image without tree information
        }
        t.procs[i].session_leader = vsid == vpid;
        if vsid != vpid && !by_vpid.contains_key(&vsid) && vsid != root_sid {
            // A session whose leader had exited (a daemon's double fork): its first process
            // makes a new session, which its descendants inherit; the old id names it.
            let inherits = t.procs[i].parent.is_some_and(|p| t.procs[p].meta.tree.vsid == vsid);
            if !inherits {
                if new_sessions.insert(vsid) {
                    t.procs[i].new_session = true;
                } else {
                    t.warnings.push(format!(
                        "{}: its session {vsid} lost its leader before the checkpoint and another branch of the tree \
                         brings it back; this process stays in its parent's session",
                        t.describe(i)
                    ));
                }
            }
        }
        t.procs[i].group = match by_vpid.get(&vpgid) {
            Some(&leader) => Some(leader),
            None if vpgid == root_pgid => None,
            // A group whose leader had exited is led by its first member now; the program
            // keeps seeing the group's old id (`PID_GROUP_ONLY` in the plan's pid table).
            None => Some(*substitute.entry(vpgid).or_insert(i)),
        };
    }
    if !by_vpid.contains_key(&root_pgid) && root_pgid != 0 {
        t.outside_ids.push((root_pgid, "pgid"));
    }
    if !by_vpid.contains_key(&root_sid) && root_sid != 0 && root_sid != root_pgid {
        t.outside_ids.push((root_sid, "sid"));
    }
}

/// Everything checked and planned; nothing changed yet.
pub fn prepare(opts: &RestartOptions) -> Result<TreePlan, String> {
    let mut t = load(opts)?;
    plan_shared_memory(&mut t);
    plan_fds(&mut t, opts.keep_files, &opts.fd_substs)?;
    crate::kobjects::plan_shm_files(&mut t)?;
    plan_groups(&mut t);
    t.ipc = crate::ipc::plan(&t)?;
    // Page data crrestart itself reads (shared memory it fills, tmpfs files it writes
    // back) is checked here, before anything changes; the restorers check what they read.
    for p in &t.procs {
        if p.pages_verified {
            continue;
        }
        let runs = p
            .meta
            .regions
            .iter()
            .filter(|r| p.shared.contains_key(&r.start) || matches!(r.kind, RegionKind::ShmFile { .. }))
            .flat_map(|r| r.runs.iter());
        crate::pages::verify_runs(&p.pages, runs).map_err(|e| format!("{}: {e}", p.img_path.display()))?;
    }
    Ok(t)
}

/// Restart. Returns only on error (on success the process becomes the root program).
pub fn restart(opts: &RestartOptions) -> Result<std::convert::Infallible, String> {
    let t = prepare(opts)?;
    for w in &t.warnings {
        eprintln!("crrestart: warning: {w}");
    }
    // A coordinator is made sure of (started if none answers) only once every process of
    // the tree has its memory back and checked (`rebuild.rs`, the supervisor).
    let ckpt_dir = t.gen_dir.parent().and_then(|p| p.parent()).unwrap_or(Path::new(".")).to_path_buf();
    crate::rebuild::rebuild(&t, opts.start_coordinator.then_some(ckpt_dir.as_path()))
}
