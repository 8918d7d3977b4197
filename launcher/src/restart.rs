//! `crrestart`: check an image, rebuild the process's fds, cwd and limits, write the
//! restore plan and exec `crust-restorer`, which becomes the restored program (so the
//! pid, stdio and exit status seen by the caller are the program's).
//!
//! Every check that can fail happens before anything is started or changed: a missing,
//! truncated, corrupt or wrong-version image, a multi-process generation (not supported
//! yet), a file the program had open or mapped that vanished or changed, an fd kind that
//! cannot be restored yet.

use crust_format::image::{self, FdKind, ImageMeta, RegionKind};
use crust_format::manifest;
use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Options of a restart.
pub struct RestartOptions {
    pub path: PathBuf,
    pub coord: String,
    pub start_coordinator: bool,
    pub keep_files: bool,
    pub verify: bool,
}

/// What to do with one fd of the program.
enum FdAction {
    /// Keep crrestart's own fd at this number (terminal or pipe to the outside).
    Inherit,
    /// Open a file (already open at `fd`), place it at the target number.
    Place(i32),
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

fn open_for_fd(rec: &image::FdRecord, keep_files: bool, truncations: &mut Vec<(String, u64)>) -> Result<std::fs::File, String> {
    let acc = rec.flags & libc::O_ACCMODE;
    let mut o = std::fs::OpenOptions::new();
    o.read(acc == libc::O_RDONLY || acc == libc::O_RDWR);
    o.write(acc == libc::O_WRONLY || acc == libc::O_RDWR);
    o.custom_flags(rec.flags & (libc::O_APPEND | libc::O_NONBLOCK | libc::O_DIRECT | libc::O_SYNC | libc::O_DSYNC | libc::O_NOATIME));
    match &rec.kind {
        FdKind::File { path, identity } => {
            if !Path::new(path).exists() {
                return Err(format!("{path} (fd {}) no longer exists", rec.fd));
            }
            let f = o.open(path).map_err(|e| format!("{path} (fd {}): {e}", rec.fd))?;
            if acc != libc::O_RDONLY && !keep_files && f.metadata().map(|m| m.len() != identity.size).unwrap_or(false) {
                truncations.push((path.clone(), identity.size));
            }
            // SAFETY: lseek on our own fd.
            unsafe { libc::lseek(f.as_raw_fd(), rec.offset, libc::SEEK_SET) };
            Ok(f)
        }
        FdKind::Directory { path } => std::fs::File::open(path).map_err(|e| format!("directory {path} (fd {}): {e}", rec.fd)),
        FdKind::CharDevice { path, .. } | FdKind::Tty { path } => {
            o.open(path).map_err(|e| format!("device {path} (fd {}): {e}", rec.fd))
        }
        _ => Err(format!("fd {}: cannot reopen", rec.fd)),
    }
}

/// Restart. Returns only on error (on success the process becomes the program).
pub fn restart(opts: &RestartOptions) -> Result<std::convert::Infallible, String> {
    let (gen_dir, man) = manifest::resolve_generation(&opts.path).map_err(|e| e.to_string())?;
    if man.processes.len() != 1 {
        return Err(format!(
            "{} holds {} processes; restarting process trees is not supported yet (single-process generations only)",
            gen_dir.display(),
            man.processes.len()
        ));
    }
    let img_path = gen_dir.join(&man.processes[0].image);
    let img = image::read_image(&img_path).map_err(|e| format!("{}: {e}", img_path.display()))?;
    let meta = &img.meta;
    if opts.verify {
        image::verify_pages(&img_path, meta).map_err(|e| format!("{}: {e}", img_path.display()))?;
    }
    check_compat(meta)?;
    for r in &meta.regions {
        if let RegionKind::File { path, identity, .. } = &r.kind {
            identity_changed(path, identity)?;
        }
    }
    let restorer = crate::find_sibling_binary("crust-restorer").map_err(|e| e.to_string())?;
    let range = crate::plan::restorer_range(&restorer)?;
    // Leave room for the restorer's brk area after its image.
    let range = (range.0, range.1 + (16 << 20));
    crate::plan::check_no_overlap(meta, range)?;

    // fds: plan and open everything before touching the process.
    let mut opened: Vec<(i32, std::fs::File)> = Vec::new();
    let mut pipes: HashMap<u64, (i32, i32)> = HashMap::new();
    let mut actions: Vec<(i32, FdAction)> = Vec::new();
    let mut pipe_writes: Vec<(i32, Vec<u8>)> = Vec::new();
    let mut truncations: Vec<(String, u64)> = Vec::new();
    for rec in &meta.fds {
        let action = match &rec.kind {
            FdKind::Tty { .. } | FdKind::Socket { .. } if rec.fd <= 2 => FdAction::Inherit,
            FdKind::Pipe { id, .. } if rec.fd <= 2 && meta.fds.iter().filter(|f| matches!(&f.kind, FdKind::Pipe { id: j, .. } if j == id)).count() < 2 => {
                FdAction::Inherit
            }
            FdKind::Pipe { id, read_end, data, capacity } => {
                let both = meta.fds.iter().any(|f| matches!(&f.kind, FdKind::Pipe { id: j, read_end: r, .. } if j == id && r != read_end));
                if !both {
                    // Typically a descriptor leaked by whatever started the program
                    // (a build tool's jobserver, a shell's pipe). It cannot be
                    // reconnected; the program gets /dev/null instead, and is told so.
                    eprintln!(
                        "crrestart: warning: fd {} was a pipe to a process outside the checkpoint; it is /dev/null now",
                        rec.fd
                    );
                    let f = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null").map_err(|e| e.to_string())?;
                    let raw = f.as_raw_fd();
                    opened.push((rec.fd, f));
                    actions.push((rec.fd, FdAction::Place(raw)));
                    continue;
                }
                let (r, w) = *pipes.entry(*id).or_insert_with(|| {
                    let mut p = [0i32; 2];
                    // SAFETY: p is a valid out-array.
                    unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) };
                    // SAFETY: our own fd.
                    unsafe { libc::fcntl(p[1], libc::F_SETPIPE_SZ, *capacity as libc::c_int) };
                    (p[0], p[1])
                });
                if r < 0 {
                    return Err("cannot create a pipe".into());
                }
                if *read_end && !data.is_empty() {
                    pipe_writes.push((w, data.clone()));
                }
                FdAction::Place(if *read_end { r } else { w })
            }
            FdKind::Socket { description, .. } => {
                return Err(format!("fd {} is a socket ({description}); sockets are not restored yet", rec.fd))
            }
            FdKind::Unsupported { description } => {
                return Err(format!("fd {} ({description}) is of a kind crust cannot restore yet", rec.fd))
            }
            _ => {
                let f = open_for_fd(rec, opts.keep_files, &mut truncations)?;
                let raw = f.as_raw_fd();
                opened.push((rec.fd, f));
                FdAction::Place(raw)
            }
        };
        actions.push((rec.fd, action));
    }
    let cwd = Path::new(&meta.cwd);
    if !cwd.is_dir() {
        return Err(format!("the program's working directory {} no longer exists", meta.cwd));
    }

    if opts.start_coordinator {
        let ckpt_dir = gen_dir.parent().and_then(|p| p.parent()).unwrap_or(Path::new("."));
        crate::coord_client::ensure_coordinator(&opts.coord, ckpt_dir, None).map_err(|e| e.to_string())?;
    }

    // Point of no return: rebuild process state.
    // Files the program writes go back to their checkpoint-time size, so output the
    // killed run wrote after the checkpoint is neither left behind nor duplicated.
    for (path, size) in &truncations {
        if let Ok(f) = std::fs::OpenOptions::new().write(true).open(path) {
            let _ = f.set_len(*size);
        }
    }
    for (w, data) in &pipe_writes {
        let mut done = 0;
        while done < data.len() {
            // SAFETY: writing our buffer into our pipe.
            let n = unsafe { libc::write(*w, data[done..].as_ptr() as *const libc::c_void, data.len() - done) };
            if n <= 0 {
                return Err("cannot refill a pipe".into());
            }
            done += n as usize;
        }
    }
    let max_app_fd = meta.fds.iter().map(|f| f.fd).max().unwrap_or(2).max(2);
    let image_file = std::fs::File::open(&img_path).map_err(|e| e.to_string())?;
    let memfd_name = CString::new("crust-plan").unwrap();
    // SAFETY: valid name.
    let plan_raw = unsafe { libc::memfd_create(memfd_name.as_ptr(), 0) };
    if plan_raw < 0 {
        return Err("memfd_create failed".into());
    }
    // Move our two fds above every fd the program will have.
    // SAFETY: fcntl on our own fds.
    let image_fd = unsafe { libc::fcntl(image_file.into_raw_fd(), libc::F_DUPFD, max_app_fd + 100) };
    // SAFETY: as above.
    let plan_fd = unsafe { libc::fcntl(plan_raw, libc::F_DUPFD, max_app_fd + 101) };
    // Every temporary fd must also sit above the program's numbers before placing.
    let mut staged: Vec<(i32, i32)> = Vec::new();
    for (target, a) in &actions {
        if let FdAction::Place(src) = a {
            // SAFETY: duplicating our own fd.
            let hi = unsafe { libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, max_app_fd + 200) };
            staged.push((*target, hi));
        }
    }
    drop(opened);
    for (_, (r, w)) in &pipes {
        // SAFETY: our own fds (staged copies exist).
        unsafe {
            libc::close(*r);
            libc::close(*w);
        }
    }
    let keep: Vec<i32> = actions.iter().filter(|(_, a)| matches!(a, FdAction::Inherit)).map(|(t, _)| *t).collect();
    // Close everything else below the staging area except our fds.
    for fd in 0..=max_app_fd + 99 {
        if !keep.contains(&fd) {
            // SAFETY: closing fds that the program will get anew.
            unsafe { libc::close(fd) };
        }
    }
    for (target, hi) in &staged {
        // SAFETY: placing the program's fds; dup2 clears close-on-exec.
        unsafe {
            libc::dup2(*hi, *target);
            libc::close(*hi);
        }
    }
    // SAFETY: clear close-on-exec of our two fds.
    unsafe {
        libc::fcntl(image_fd, libc::F_SETFD, 0);
        libc::fcntl(plan_fd, libc::F_SETFD, 0);
    }

    let plan_probe = crate::plan::build(&crate::plan::PlanInput {
        meta,
        image_fd,
        plan_fd,
        restorer: range,
        plan_addr: 0,
        scratch_addr: 0,
        coord: &opts.coord,
        generation: meta.generation,
        verify: true,
    })?;
    let plan_len = (plan_probe.len() as u64 + 4095) & !4095;
    let plan_addr = crate::plan::free_range(meta, &[range], plan_len + (64 << 20)).ok_or("no free address range for the restore plan")?;
    let plan = crate::plan::build(&crate::plan::PlanInput {
        meta,
        image_fd,
        plan_fd,
        restorer: range,
        plan_addr,
        scratch_addr: plan_addr + plan_len + (16 << 20),
        coord: &opts.coord,
        generation: meta.generation,
        verify: true,
    })?;
    // SAFETY: writing the plan into our memfd.
    let n = unsafe { libc::pwrite(plan_fd, plan.as_ptr() as *const libc::c_void, plan.len(), 0) };
    if n != plan.len() as isize {
        return Err("cannot write the restore plan".into());
    }
    std::env::set_current_dir(cwd).map_err(|e| format!("{}: {e}", meta.cwd))?;
    // SAFETY: umask and setrlimit only change this process's settings.
    unsafe {
        libc::umask(meta.umask as libc::mode_t);
        for r in &meta.rlimits {
            let lim = libc::rlimit { rlim_cur: r.soft, rlim_max: r.hard };
            libc::setrlimit(r.resource as _, &lim);
        }
    }
    let prog = CString::new(restorer.as_os_str().as_encoded_bytes()).unwrap();
    let a1 = CString::new(plan_fd.to_string()).unwrap();
    let a2 = CString::new(format!("{plan_addr:x}")).unwrap();
    let argv = [prog.as_ptr(), a1.as_ptr(), a2.as_ptr(), std::ptr::null()];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: valid NUL-terminated arrays.
    unsafe { libc::execve(prog.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    Err(format!("cannot execute {}: {}", restorer.display(), std::io::Error::last_os_error()))
}
