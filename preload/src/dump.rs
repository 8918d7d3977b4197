//! Writing the checkpoint image of this process (see `crust_format::image`).
//!
//! Runs in the checkpoint thread while every application thread is stopped, with the
//! allocator in scratch mode. Order: open a temp file, describe every memory area and
//! write the pages worth keeping (present or swapped, not all zero, and for private file
//! mappings only pages that no longer equal the file), then the metadata, then the
//! header, fsync, rename.

use crate::procfs::{self, Pagemap, Vma, PM_FILE, PM_PRESENT, PM_SWAPPED};
use crate::quiesce;
use crate::sys;
use crust_format::image::{
    FdKind, FdRecord, FileIdentity, Header, ImageMeta, MmInfo, PageRun, Region, RegionKind, RestartEntry, Rlimit, SharedMap,
    ThreadRecord, HEADER_SIZE, PAGE_SIZE, VERSION,
};
use std::format;
use std::string::{String, ToString};
use std::vec::Vec;

/// Longest page run written with one system call.
const MAX_RUN: u64 = 64 << 20;
/// Pages examined per pagemap read.
const PM_BATCH: usize = 4096;

/// What a dump produced.
pub struct DumpResult {
    pub file_name: String,
    pub bytes: u64,
    pub memory_bytes: u64,
}

/// fds that belong to the preload (never saved as the program's).
pub static OWN_FDS: [core::sync::atomic::AtomicI32; 8] = [const { core::sync::atomic::AtomicI32::new(-1) }; 8];

pub fn add_own_fd(fd: i32) {
    for s in &OWN_FDS {
        if s.compare_exchange(-1, fd, core::sync::atomic::Ordering::AcqRel, core::sync::atomic::Ordering::Relaxed).is_ok() {
            return;
        }
    }
}
pub fn remove_own_fd(fd: i32) {
    for s in &OWN_FDS {
        let _ = s.compare_exchange(fd, -1, core::sync::atomic::Ordering::AcqRel, core::sync::atomic::Ordering::Relaxed);
    }
}
pub fn is_own_fd(fd: i32) -> bool {
    OWN_FDS.iter().any(|s| s.load(core::sync::atomic::Ordering::Relaxed) == fd)
}

/// Close-on-exec flags of the program's fds, kept in static memory so that the restart
/// path (which cannot allocate from restored state safely) can apply them.
pub static mut CLOEXEC_BITS: [u64; 1024] = [0; 1024];

fn file_identity(st: &libc::stat) -> FileIdentity {
    FileIdentity {
        dev: st.st_dev,
        ino: st.st_ino,
        size: st.st_size as u64,
        mtime_sec: st.st_mtime,
        mtime_nsec: st.st_mtime_nsec,
    }
}

fn classify(v: &Vma) -> Option<RegionKind> {
    match v.name.as_str() {
        "[vsyscall]" => None,
        "[vdso]" => Some(RegionKind::Vdso),
        "[vvar]" => Some(RegionKind::Vvar),
        "[vvar_vclock]" => Some(RegionKind::VvarVclock),
        "[heap]" => Some(RegionKind::Heap),
        "" | "[stack]" => {
            if v.shared {
                Some(RegionKind::Detached { name: "shared anonymous".to_string() })
            } else {
                Some(RegionKind::Anon)
            }
        }
        n if n.starts_with("[anon:") => Some(RegionKind::Anon),
        n if n.starts_with('/') && !n.ends_with(" (deleted)") && v.inode != 0 => {
            match sys::stat(n.as_bytes()) {
                Ok(st) if st.st_ino == v.inode && (st.st_mode & libc::S_IFMT) == libc::S_IFREG => Some(RegionKind::File {
                    path: n.to_string(),
                    offset: v.offset,
                    identity: file_identity(&st),
                }),
                // A file that was replaced or cannot be reopened: keep its contents.
                _ => Some(RegionKind::Detached { name: n.to_string() }),
            }
        }
        n => Some(RegionKind::Detached { name: n.to_string() }),
    }
}

fn page_is_zero(addr: u64) -> bool {
    // SAFETY: the page is mapped and readable (checked by the caller).
    let words = unsafe { core::slice::from_raw_parts(addr as *const u64, 512) };
    words.iter().all(|&w| w == 0)
}

/// Decide which pages of a region to store and return the runs (offsets not yet assigned).
fn collect_runs(v: &Vma, kind: &RegionKind, pm: &mut Pagemap, out: &mut Vec<PageRun>) -> Result<(), i32> {
    let all_pages = matches!(kind, RegionKind::Detached { .. });
    let private_file = matches!(kind, RegionKind::File { .. }) && !v.shared;
    if matches!(kind, RegionKind::File { .. }) && v.shared {
        return Ok(()); // the file holds the data
    }
    let mut run_start = 0u64;
    let mut run_len = 0u64;
    let mut addr = v.start;
    while addr < v.end {
        let n = (((v.end - addr) / PAGE_SIZE) as usize).min(PM_BATCH);
        let entries = pm.read(addr, n)?.to_vec();
        for (i, e) in entries.iter().enumerate() {
            let pa = addr + i as u64 * PAGE_SIZE;
            let keep = if all_pages {
                true
            } else if private_file {
                (e & PM_PRESENT != 0 && e & PM_FILE == 0) || e & PM_SWAPPED != 0
            } else {
                e & (PM_PRESENT | PM_SWAPPED) != 0
            };
            // An all-zero page need not be stored where restart maps zeros anyway
            // (anonymous memory) — but never in a file mapping, where the file's bytes
            // would come back instead.
            let keep = keep && (private_file || !page_is_zero(pa));
            if keep {
                if run_len > 0 && run_start + run_len == pa && run_len < MAX_RUN {
                    run_len += PAGE_SIZE;
                } else {
                    if run_len > 0 {
                        out.push(PageRun { addr: run_start, len: run_len, offset: 0, crc: 0 });
                    }
                    run_start = pa;
                    run_len = PAGE_SIZE;
                }
            }
        }
        addr += n as u64 * PAGE_SIZE;
    }
    if run_len > 0 {
        out.push(PageRun { addr: run_start, len: run_len, offset: 0, crc: 0 });
    }
    Ok(())
}

fn describe_fds(dir: &str) -> Result<Vec<FdRecord>, String> {
    let mut out = Vec::new();
    // SAFETY: only the checkpoint thread writes CLOEXEC_BITS, while threads are stopped.
    let bits = unsafe { &mut *core::ptr::addr_of_mut!(CLOEXEC_BITS) };
    bits.iter_mut().for_each(|b| *b = 0);
    let fds = procfs::list_fds();
    for &fd in &fds {
        if is_own_fd(fd) || crate::api::is_ignored_fd(fd) {
            continue;
        }
        let target = procfs::readlink_string(format!("/proc/self/fd/{fd}").as_bytes());
        let Ok(st) = sys::fstat(fd) else { continue };
        let flags = sys::fcntl(fd, libc::F_GETFL, 0).unwrap_or(0) as i32;
        let cloexec = sys::fcntl(fd, libc::F_GETFD, 0).unwrap_or(0) as i32 & libc::FD_CLOEXEC != 0;
        if cloexec && (fd as usize) < 65536 {
            bits[fd as usize / 64] |= 1 << (fd % 64);
        }
        let offset = sys::lseek(fd, 0, libc::SEEK_CUR).unwrap_or(0);
        let kind = match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => {
                if target.ends_with(" (deleted)") {
                    FdKind::Unsupported { description: format!("deleted file {target}") }
                } else {
                    FdKind::File { path: target.clone(), identity: file_identity(&st) }
                }
            }
            libc::S_IFDIR => FdKind::Directory { path: target.clone() },
            libc::S_IFCHR => {
                if target.starts_with("/dev/pts/") || target.starts_with("/dev/tty") || target == "/dev/console" {
                    FdKind::Tty { path: target.clone() }
                } else {
                    FdKind::CharDevice { path: target.clone(), rdev: st.st_rdev }
                }
            }
            libc::S_IFIFO => {
                let read_end = flags & libc::O_ACCMODE == libc::O_RDONLY;
                let capacity = sys::fcntl(fd, libc::F_GETPIPE_SZ, 0).unwrap_or(65536) as u32;
                FdKind::Pipe { id: st.st_ino, read_end, data: Vec::new(), capacity }
            }
            libc::S_IFSOCK => FdKind::Socket { id: st.st_ino, description: target.clone() },
            _ => FdKind::Unsupported { description: target.clone() },
        };
        out.push(FdRecord { fd, flags, cloexec, offset, kind });
    }
    // Bytes in flight: copied without consuming them, by exactly one process of the
    // computation per pipe (see tree.rs).
    for rec in out.iter_mut() {
        let FdKind::Pipe { id, data, capacity, .. } = &mut rec.kind else { continue };
        if crate::tree::claim_pipe(dir, *id) {
            *data = crate::tree::capture_pipe(rec.fd, *capacity)?;
        }
    }
    Ok(out)
}

fn rlimits() -> Vec<Rlimit> {
    let mut v = Vec::new();
    for r in 0..16u32 {
        let mut old = [0u64; 2];
        // SAFETY: old is a valid struct rlimit out-pointer.
        let rc = unsafe { sys::sc!(sys::SYS_prlimit64, 0, r, 0, old.as_mut_ptr()) };
        if rc == 0 {
            v.push(Rlimit { resource: r, soft: old[0], hard: old[1] });
        }
    }
    v
}

fn mm_info() -> MmInfo {
    let f = procfs::stat_fields();
    let g = |i: usize| f.get(i).copied().unwrap_or(0);
    // SAFETY: brk(0) only queries.
    let brk = unsafe { sys::sc!(libc::SYS_brk, 0) } as u64;
    MmInfo {
        start_code: g(26),
        end_code: g(27),
        start_stack: g(28),
        start_data: g(45),
        end_data: g(46),
        start_brk: g(47),
        brk,
        arg_start: g(48),
        arg_end: g(49),
        env_start: g(50),
        env_end: g(51),
    }
}

fn auxv() -> Vec<u64> {
    let mut buf = Vec::new();
    let _ = sys::read_file(b"/proc/self/auxv", &mut buf);
    buf.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect()
}

fn xcr0() -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: xgetbv(0) is available on every x86-64 CPU Linux enables XSAVE on.
    unsafe { core::arch::asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (hi as u64) << 32 | lo as u64
}

/// (nodename, kernel release).
pub(crate) fn uname() -> (String, String) {
    // SAFETY: plain old data.
    let mut u: libc::utsname = unsafe { core::mem::zeroed() };
    // SAFETY: u is a valid out-pointer.
    unsafe { sys::sc!(sys::SYS_uname, &mut u as *mut libc::utsname) };
    let s = |a: &[libc::c_char]| {
        let b: Vec<u8> = a.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
        String::from_utf8_lossy(&b).into_owned()
    };
    (s(&u.nodename), s(&u.release))
}

fn umask_now() -> u32 {
    procfs::status_value(&procfs::read_string(b"/proc/self/status"), "Umask:", 8).map_or(0o022, |v| v as u32)
}

/// Everything a dump needs to know from the caller.
pub struct DumpRequest<'a> {
    pub dir: &'a str,
    pub comp_id: u64,
    pub generation: u64,
    pub restart: RestartEntry,
}

/// Write this process's image into `req.dir`. Threads must be stopped.
pub fn write_image(req: &DumpRequest) -> Result<DumpResult, String> {
    let vpid = crate::vpid::vpid();
    let file_name = crust_format::manifest::image_file_name(vpid);
    let final_path = format!("{}/{}", req.dir, file_name);
    let tmp_path = format!("{}/.{}.tmp", req.dir, file_name);
    let fd = sys::open(tmp_path.as_bytes(), libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, 0o600)
        .map_err(|e| format!("cannot create {tmp_path}: errno {e}"))?;
    add_own_fd(fd);
    let r = write_into(fd, req, vpid);
    remove_own_fd(fd);
    let r = r.and_then(|(bytes, mem)| {
        sys::fsync(fd).map_err(|e| format!("fsync {tmp_path}: errno {e}"))?;
        Ok((bytes, mem))
    });
    sys::close(fd);
    match r {
        Ok((bytes, memory_bytes)) => {
            sys::rename(tmp_path.as_bytes(), final_path.as_bytes()).map_err(|e| format!("rename {tmp_path}: errno {e}"))?;
            Ok(DumpResult { file_name, bytes, memory_bytes })
        }
        Err(e) => {
            let _ = sys::unlink(tmp_path.as_bytes());
            Err(e)
        }
    }
}

fn write_into(fd: i32, req: &DumpRequest, vpid: i32) -> Result<(u64, u64), String> {
    let raw_maps = procfs::read_maps().map_err(|e| format!("read /proc/self/maps: errno {e}"))?;
    // The scratch arena is not part of the image. The kernel may have merged it with a
    // neighbouring mapping, so cut it out of whatever area contains it.
    let (sb, se) = crate::heap::scratch_range();
    let mut maps = Vec::with_capacity(raw_maps.len() + 2);
    for v in raw_maps {
        if sb == 0 || v.end <= sb as u64 || v.start >= se as u64 {
            maps.push(v);
            continue;
        }
        if v.start < sb as u64 {
            let mut a = v.clone();
            a.end = sb as u64;
            maps.push(a);
        }
        if v.end > se as u64 {
            let mut b = v.clone();
            if !b.name.is_empty() || b.inode != 0 {
                b.offset += se as u64 - v.start;
            }
            b.start = se as u64;
            maps.push(b);
        }
    }
    let mut pm = Pagemap::open().map_err(|e| format!("open /proc/self/pagemap: errno {e}"))?;
    add_own_fd(pm.fd());
    let fds = describe_fds(req.dir)?;
    let mut shared_maps = Vec::new();
    let mut regions: Vec<Region> = Vec::new();
    let mut offset = HEADER_SIZE as u64;
    let mut memory_bytes = 0u64;
    let mut buf = vec![0u8; 4 << 20];
    let result = (|| -> Result<(), String> {
        for v in &maps {
            let Some(kind) = classify(v) else { continue };
            let mut runs = Vec::new();
            let special = matches!(kind, RegionKind::Vdso | RegionKind::Vvar | RegionKind::VvarVclock);
            // Unreadable areas (guard pages, PROT_NONE reservations) may still hold data.
            let unreadable = v.prot & libc::PROT_READ as u32 == 0;
            if !special {
                if unreadable {
                    // SAFETY: all other threads are stopped; protection is put back below.
                    unsafe {
                        let _ = sys::mprotect(v.start as usize, (v.end - v.start) as usize, libc::PROT_READ);
                    }
                }
                let r = collect_runs(v, &kind, &mut pm, &mut runs);
                if let Err(e) = r {
                    return Err(format!("pagemap of {:#x}-{:#x}: errno {e}", v.start, v.end));
                }
                for run in runs.iter_mut() {
                    run.offset = offset;
                    // Copy through a buffer: the crc must describe exactly the bytes
                    // written, and memory the checkpoint thread itself uses (its stack)
                    // changes while it is being written.
                    let mut crc = 0u32;
                    let mut done = 0usize;
                    let len = run.len as usize;
                    while done < len {
                        let n = (len - done).min(buf.len());
                        // SAFETY: the run lies in a readable mapping of this process.
                        let src = unsafe { core::slice::from_raw_parts((run.addr as usize + done) as *const u8, n) };
                        buf[..n].copy_from_slice(src);
                        crc = crc32c::crc32c_append(crc, &buf[..n]);
                        if let Err(e) = sys::pwrite_all(fd, &buf[..n], offset + done as u64) {
                            return Err(format!("writing image: errno {e}"));
                        }
                        done += n;
                    }
                    run.crc = crc;
                    offset += run.len;
                    memory_bytes += run.len;
                }
                if unreadable {
                    // SAFETY: restoring the original protection.
                    unsafe {
                        let _ = sys::mprotect(v.start as usize, (v.end - v.start) as usize, v.prot as i32);
                    }
                }
            }
            if v.shared && matches!(kind, RegionKind::Detached { .. }) {
                shared_maps.push(SharedMap { start: v.start, end: v.end, dev: v.dev, ino: v.inode, offset: v.offset });
            }
            regions.push(Region {
                start: v.start,
                end: v.end,
                prot: v.prot,
                shared: v.shared,
                grows_down: v.name == "[stack]",
                kind,
                runs,
            });
        }
        Ok(())
    })();
    remove_own_fd(pm.fd());
    drop(pm);
    result?;

    let threads: Vec<ThreadRecord> = quiesce::slots()
        .iter()
        .map(|s| ThreadRecord {
            vtid: crate::vpid::to_virtual(s.real_tid),
            real_tid: s.real_tid,
            is_main: s.real_tid == sys::getpid(),
            ucontext: s.ucontext,
            fs_base: s.fs_base,
            clear_tid_addr: s.clear_tid_addr,
            robust_head: s.robust_head,
            robust_len: s.robust_len,
            rseq_addr: s.rseq_addr,
            rseq_len: s.rseq_len,
            rseq_sig: s.rseq_sig,
            name: String::from_utf8_lossy(&s.name[..s.name.iter().position(|&c| c == 0).unwrap_or(16)]).into_owned(),
            ip: s.ip,
            sp: s.sp,
        })
        .collect();
    if !threads.iter().any(|t| t.is_main) {
        return Err("the main thread is not running (it called pthread_exit?); such processes cannot be checkpointed yet".to_string());
    }
    let tree = crate::tree::describe(&fds, shared_maps);
    let cfg = crate::config::get();
    let (hostname, release) = uname();
    let meta = ImageMeta {
        comp_id: req.comp_id,
        generation: req.generation,
        vpid,
        vppid: crate::vpid::to_virtual(sys::getppid()),
        real_pid: sys::getpid(),
        hostname,
        kernel_release: release,
        xcr0: xcr0(),
        program: cfg.program.clone(),
        args: cfg.args.clone(),
        comm: procfs::read_string(b"/proc/self/comm").trim_end().to_string(),
        exe: procfs::readlink_string(b"/proc/self/exe"),
        cwd: procfs::readlink_string(b"/proc/self/cwd"),
        umask: umask_now(),
        rlimits: rlimits(),
        mm: mm_info(),
        auxv: auxv(),
        restart: req.restart,
        ckpt_signal: cfg.signal,
        threads,
        fds,
        regions,
        taken_unix: sys::clock_realtime_secs(),
        tree,
    };
    let (meta_bytes, meta_crc) = crust_format::image::encode_meta(&meta).map_err(|e| format!("encoding metadata: {e}"))?;
    sys::pwrite_all(fd, &meta_bytes, offset).map_err(|e| format!("writing metadata: errno {e}"))?;
    let file_len = offset + meta_bytes.len() as u64;
    let header = Header {
        version: VERSION,
        flags: 0,
        meta_offset: offset,
        meta_len: meta_bytes.len() as u64,
        meta_crc,
        data_offset: HEADER_SIZE as u64,
        data_len: offset - HEADER_SIZE as u64,
        file_len,
    };
    sys::pwrite_all(fd, &header.to_bytes(), 0).map_err(|e| format!("writing header: errno {e}"))?;
    Ok((file_len, memory_bytes))
}
