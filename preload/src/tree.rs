//! What an image records about the process tree (see `crust_format::image::TreeInfo`).
//!
//! Runs in the checkpoint thread during the write phase, when every process of the
//! computation is stopped (the coordinator sends `Proceed(Written)` only once all of them
//! reached `Suspended`), so what one process reads about another (its parent's fds, a
//! pipe's contents) holds still while it is read.
//!
//! * Children come from `/proc/self/task/*/children`; a child that has exited but was not
//!   reaped is recognised with `waitid(WNOHANG | WNOWAIT)`, which reports its status
//!   without reaping it: the checkpointer never reaps a child of the program.
//! * Open file descriptions shared with the parent (inherited over fork), between two fds
//!   of the process itself (dup), or with a sibling (the parent closed its copy) are found
//!   with `kcmp(KCMP_FILE)`, so a restart can give them one description again (one file
//!   offset for a shared stdout).
//! * Pipe contents are copied with `tee(2)`, which duplicates a pipe's buffers without
//!   consuming them: nothing is taken out of the pipe and put back, so no other process
//!   (inside or outside the computation) can see bytes reordered. Exactly one process of
//!   the computation stores a given pipe's bytes: the first to create the claim file
//!   `.pipe-<host>-<inode>` in the generation directory (O_EXCL).

use crate::procfs;
use crate::sys::{self, sc};
use crust_format::image::{ChildExit, ChildRecord, FdKind, FdRecord, SharedMap, TreeInfo};
use std::format;
use std::string::String;
use std::vec::Vec;

const SYS_KCMP: i64 = 312;
const KCMP_FILE: usize = 0;
const WNOWAIT: usize = 0x0100_0000;
const WALL: usize = 0x4000_0000;

/// Real pids of this process's children, sorted (those of thread `except` left out).
pub fn child_pids(except: i32) -> Vec<i32> {
    let mut pids: Vec<i32> = Vec::new();
    for tid in procfs::list_numbers(b"/proc/self/task") {
        if tid == except {
            continue;
        }
        let text = procfs::read_string(format!("/proc/self/task/{tid}/children").as_bytes());
        pids.extend(text.split_ascii_whitespace().filter_map(|p| p.parse::<i32>().ok()));
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Children of this process (threads other than the calling checkpoint thread, whose
/// own helpers are not the program's).
fn children() -> Vec<ChildRecord> {
    child_pids(sys::gettid())
        .into_iter()
        .map(|pid| ChildRecord { vpid: crate::vpid::to_virtual(pid), real_pid: pid, exit: zombie_status(pid) })
        .collect()
}

/// How child `pid` ended, if it is a zombie. A child that is still exiting (it left the
/// computation while the others were being stopped) is waited for briefly, so it is
/// recorded as the zombie it is about to be rather than as a live child without an image.
fn zombie_status(pid: i32) -> Option<ChildExit> {
    const PF_EXITING: u64 = 0x4;
    for attempt in 0..2000 {
        let mut info = [0u64; 16];
        // SAFETY: info is a siginfo_t-sized buffer; WNOWAIT leaves the child waitable.
        let r = unsafe {
            sc!(libc::SYS_waitid, libc::P_PID, pid, info.as_mut_ptr(), libc::WEXITED as usize | libc::WNOHANG as usize | WNOWAIT | WALL, 0)
        };
        let words = info.as_ptr() as *const i32;
        // SAFETY: siginfo layout: si_code at byte 8, si_pid at 16, si_status at 24.
        let (code, si_pid, status) = unsafe { (*words.add(2), *words.add(4), *words.add(6)) };
        if r == 0 && si_pid == pid {
            return Some(ChildExit { code, status });
        }
        // Field 9 of /proc/PID/stat: the task flags.
        let stat = procfs::read_string(format!("/proc/{pid}/stat").as_bytes());
        let flags = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_ascii_whitespace().nth(6)).and_then(|f| f.parse::<u64>().ok());
        if r != 0 || flags.is_none_or(|f| f & PF_EXITING == 0) || attempt == 1999 {
            return None;
        }
        let ts = libc::timespec { tv_sec: 0, tv_nsec: 1_000_000 };
        // SAFETY: a plain sleep.
        unsafe { sc!(libc::SYS_nanosleep, &ts as *const libc::timespec, 0) };
    }
    None
}

/// `(fd, parent's fd)` for every recorded fd whose open file description the parent holds too.
fn inherited_fds(fds: &[FdRecord]) -> Vec<(i32, i32)> {
    let parent = sys::getppid();
    if parent <= 1 {
        return Vec::new();
    }
    let mine: Vec<i32> = fds.iter().map(|r| r.fd).collect();
    shared_with(parent, &mine)
}

/// `(fd, sibling's real pid, sibling's fd)` for the recorded fds (pipes aside: they are
/// matched by inode) that share their description with a sibling but neither with the
/// parent nor with a lower fd of this process: the parent opened a file, forked its
/// children and closed its own copy. A restart gives the siblings one description again.
fn sibling_fds(fds: &[FdRecord], inherited: &[(i32, i32)], dups: &[(i32, i32)]) -> Vec<(i32, i32, i32)> {
    let parent = sys::getppid();
    let me = sys::getpid();
    let mine: Vec<i32> = fds
        .iter()
        .filter(|r| !matches!(r.kind, FdKind::Pipe { .. } | FdKind::Ignored { .. }))
        .map(|r| r.fd)
        .filter(|fd| !inherited.iter().any(|(f, _)| f == fd) && !dups.iter().any(|(f, _)| f == fd))
        .collect();
    if parent <= 1 || mine.is_empty() || !procfs::read_string(format!("/proc/{parent}/maps").as_bytes()).contains("libcrpreload") {
        // The root's parent (a shell, a batch system) is not part of the computation, nor
        // are its other children.
        return Vec::new();
    }
    let mut siblings: Vec<i32> = Vec::new();
    for tid in procfs::list_numbers(format!("/proc/{parent}/task").as_bytes()) {
        let text = procfs::read_string(format!("/proc/{parent}/task/{tid}/children").as_bytes());
        siblings.extend(text.split_ascii_whitespace().filter_map(|p| p.parse::<i32>().ok()).filter(|&p| p != me));
    }
    siblings.sort_unstable();
    siblings.dedup();
    let mut out = Vec::new();
    let mut left = mine;
    for sib in siblings {
        if left.is_empty() {
            break;
        }
        let hits = shared_with(sib, &left);
        left.retain(|fd| !hits.iter().any(|(f, _)| f == fd));
        out.extend(hits.into_iter().map(|(fd, theirs)| (fd, sib, theirs)));
    }
    out.sort_unstable();
    out
}

/// `(fd, other's fd)` for each of `mine` whose open file description process `other`
/// holds too.
///
/// The other process is being checkpointed at the same moment: its checkpoint thread
/// opens and closes fds of its own (image files, /proc files, pipes for `tee`) while this
/// runs, so its fd list is not still. Such an fd may vanish or be reused for another file
/// between two `kcmp` calls, which breaks the order a sort relies on and made the binary
/// search miss a description that is shared. The sorted list is therefore checked after
/// sorting and the search retried when any comparison failed; a search that still cannot
/// trust the order falls back to comparing each fd with every one of the other's.
fn shared_with(other: i32, mine: &[i32]) -> Vec<(i32, i32)> {
    let me = sys::getpid();
    // kcmp orders open file descriptions consistently (0 same, 1 less, 2 greater), so the
    // other's fds are sorted once and each of ours found by binary search: O(n log n)
    // system calls, not O(n²), for processes with many fds. None: not comparable (an fd
    // closed meanwhile).
    let kcmp = |pid1: i32, fd1: i32, fd2: i32| -> Option<core::cmp::Ordering> {
        // SAFETY: kcmp only compares kernel objects.
        match unsafe { sc!(SYS_KCMP, pid1, other, KCMP_FILE, fd1, fd2) } {
            0 => Some(core::cmp::Ordering::Equal),
            1 => Some(core::cmp::Ordering::Less),
            2 => Some(core::cmp::Ordering::Greater),
            _ => None,
        }
    };
    let listed = procfs::list_numbers(format!("/proc/{other}/fd").as_bytes());
    for _attempt in 0..8 {
        let failed = core::cell::Cell::new(false);
        let ordered = |a: Option<core::cmp::Ordering>| {
            a.unwrap_or_else(|| {
                failed.set(true);
                core::cmp::Ordering::Less
            })
        };
        let mut theirs: Vec<i32> = listed.iter().copied().filter(|&p| kcmp(other, p, p).is_some()).collect();
        merge_sort(&mut theirs, &|a, b| ordered(kcmp(other, a, b)));
        if failed.get() || theirs.windows(2).any(|w| ordered(kcmp(other, w[0], w[1])).is_gt()) {
            continue;
        }
        let mut out = Vec::new();
        for &fd in mine {
            // Inherited fds usually keep their number: try that first.
            let hit = if listed.binary_search(&fd).is_ok() && kcmp(me, fd, fd).is_some_and(|o| o.is_eq()) {
                Some(fd)
            } else {
                theirs.binary_search_by(|&p| ordered(kcmp(me, fd, p)).reverse()).ok().map(|i| theirs[i])
            };
            if let Some(p) = hit {
                out.push((fd, p));
            }
        }
        if !failed.get() {
            return out;
        }
    }
    // The other's fds kept changing: compare with each of them (only equality counts,
    // and the program's own fds hold still while it is stopped).
    mine.iter()
        .filter_map(|&fd| listed.iter().find(|&&p| kcmp(me, fd, p).is_some_and(|o| o.is_eq())).map(|&p| (fd, p)))
        .collect()
}

/// `(fd, lower fd)` for every recorded fd that shares its open file description with a
/// lower-numbered fd of this process (made by dup, dup2 or F_DUPFD), so that a restart
/// gives them one description again: one offset, one set of status flags. The program's
/// fds hold still while it is stopped, so kcmp gives a consistent order here.
fn dup_fds(fds: &[FdRecord]) -> Vec<(i32, i32)> {
    let me = sys::getpid();
    let cmp = |a: i32, b: i32| -> core::cmp::Ordering {
        // SAFETY: kcmp only compares kernel objects.
        match unsafe { sc!(SYS_KCMP, me, me, KCMP_FILE, a, b) } {
            0 => core::cmp::Ordering::Equal,
            2 => core::cmp::Ordering::Greater,
            _ => core::cmp::Ordering::Less,
        }
    };
    let mut sorted: Vec<i32> = fds.iter().map(|r| r.fd).collect();
    merge_sort(&mut sorted, &cmp);
    let mut out = Vec::new();
    for group in sorted.chunk_by(|&a, &b| cmp(a, b).is_eq()) {
        let first = group.iter().copied().min().unwrap_or(-1);
        out.extend(group.iter().filter(|&&fd| fd != first).map(|&fd| (fd, first)));
    }
    out.sort_unstable();
    out
}

/// A merge sort that stays safe with a comparison that is not a total order (the
/// standard sort may panic then): the parent need not be under control, and one that
/// changes its fds meanwhile only gets a useless order.
fn merge_sort(v: &mut Vec<i32>, cmp: &dyn Fn(i32, i32) -> core::cmp::Ordering) {
    if v.len() <= 1 {
        return;
    }
    let mut right = v.split_off(v.len() / 2);
    merge_sort(v, cmp);
    merge_sort(&mut right, cmp);
    let left = core::mem::take(v);
    let (mut i, mut j) = (0, 0);
    while i < left.len() && j < right.len() {
        if cmp(right[j], left[i]).is_lt() {
            v.push(right[j]);
            j += 1;
        } else {
            v.push(left[i]);
            i += 1;
        }
    }
    v.extend_from_slice(&left[i..]);
    v.extend_from_slice(&right[j..]);
}

/// Whether this process is the one that stores pipe `id`'s bytes in this generation.
pub fn claim_pipe(dir: &str, id: u64) -> bool {
    // Pipe inode numbers are per host; a generation directory may be shared by hosts.
    let host = crate::dump::uname().0;
    match sys::open(format!("{dir}/.pipe-{host}-{id}").as_bytes(), libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC, 0o600) {
        Ok(fd) => {
            sys::close(fd);
            true
        }
        Err(_) => false,
    }
}

/// Copy the bytes in flight in the pipe behind `fd` (either end) without consuming them.
pub fn capture_pipe(fd: i32, capacity: u32) -> Result<Vec<u8>, String> {
    let mut data = Vec::new();
    // A fresh read description of the pipe (works from either end, like opening a FIFO).
    let src = sys::open(format!("/proc/self/fd/{fd}").as_bytes(), libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC, 0)
        .map_err(|e| format!("cannot open pipe fd {fd} for reading: errno {e}"))?;
    let mut pending: i32 = 0;
    // SAFETY: FIONREAD writes an int.
    unsafe { sc!(libc::SYS_ioctl, src, libc::FIONREAD, &mut pending as *mut i32) };
    if pending <= 0 {
        sys::close(src);
        return Ok(data);
    }
    let mut p = [0i32; 2];
    // SAFETY: p is a valid out-array.
    let r = unsafe { sc!(libc::SYS_pipe2, p.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if r < 0 {
        sys::close(src);
        return Err(format!("pipe2: errno {}", -r));
    }
    // As many buffer slots as the source has, so every buffer fits.
    let _ = sys::fcntl(p[1], libc::F_SETPIPE_SZ, capacity.max(4096) as usize);
    // SAFETY: both are pipes; tee duplicates buffers without consuming them.
    let n = unsafe { sc!(libc::SYS_tee, src, p[1], 1usize << 30, libc::SPLICE_F_NONBLOCK) };
    if n > 0 {
        let mut chunk = vec![0u8; 65536];
        while let Ok(k) = sys::read(p[0], &mut chunk) {
            if k == 0 {
                break;
            }
            data.extend_from_slice(&chunk[..k]);
        }
    }
    sys::close(p[0]);
    sys::close(p[1]);
    sys::close(src);
    if data.len() != pending as usize {
        return Err(format!("pipe fd {fd} holds {pending} bytes but only {} could be copied", data.len()));
    }
    Ok(data)
}

/// The tree part of the image.
pub fn describe(fds: &[FdRecord], shared_maps: Vec<SharedMap>) -> TreeInfo {
    let f = procfs::stat_fields();
    // SAFETY: plain queries.
    let (pgid, sid) = unsafe { (sc!(libc::SYS_getpgid, 0) as i32, sc!(libc::SYS_getsid, 0) as i32) };
    let fifos = fds
        .iter()
        .filter(|r| matches!(r.kind, FdKind::Pipe { .. }))
        .filter_map(|r| {
            let target = procfs::readlink_string(format!("/proc/self/fd/{}", r.fd).as_bytes());
            (target.starts_with('/')).then_some((r.fd, target))
        })
        .collect();
    let inherited = inherited_fds(fds);
    let dups = dup_fds(fds);
    TreeInfo {
        real_ppid: sys::getppid(),
        vpgid: crate::vpid::to_virtual_group(pgid),
        vsid: crate::vpid::to_virtual_group(sid),
        start_ticks: f.get(22).copied().unwrap_or(0),
        children: children(),
        sibling_fds: sibling_fds(fds, &inherited, &dups),
        inherited_fds: inherited,
        dup_fds: dups,
        fifos,
        shared_maps,
        sysv: Vec::new(),
        shm_attaches: Vec::new(),
    }
}
