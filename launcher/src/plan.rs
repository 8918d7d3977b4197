//! Building the restore plan that `crust-restorer` follows (see `crust_restorer` for the
//! layout). Everything here is checked and computed in ordinary Rust so the restorer
//! itself stays a short, allocation-free program.

use crust_format::image::{ImageMeta, RegionKind};
use crust_restorer::*;
use std::path::Path;

/// Address range of the restorer's loadable segments, read from its ELF headers.
pub fn restorer_range(path: &Path) -> Result<(u64, u64), String> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if data.len() < 64 || &data[..4] != b"\x7fELF" {
        return Err(format!("{} is not an ELF file", path.display()));
    }
    let u16_at = |o: usize| u16::from_le_bytes(data[o..o + 2].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().unwrap());
    let phoff = u64_at(32) as usize;
    let phentsize = u16_at(54) as usize;
    let phnum = u16_at(56) as usize;
    let (mut lo, mut hi) = (u64::MAX, 0u64);
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        if o + 56 > data.len() {
            break;
        }
        if u32_at(o) == 1 {
            let vaddr = u64_at(o + 16);
            let memsz = u64_at(o + 40);
            lo = lo.min(vaddr & !4095);
            hi = hi.max((vaddr + memsz + 4095) & !4095);
        }
    }
    if lo == u64::MAX {
        return Err(format!("{} has no loadable segments", path.display()));
    }
    // The kernel may place the initial brk right after the image: leave room.
    Ok((lo, hi))
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// Find `len` bytes of address space that no image region and no restorer segment uses.
pub fn free_range(meta: &ImageMeta, avoid: &[(u64, u64)], len: u64) -> Option<u64> {
    let mut at = 0x1f10_0000_0000u64;
    while at < 0x7000_0000_0000 {
        let r = (at, at + len);
        let clash = meta.regions.iter().any(|g| overlaps(r, (g.start, g.end))) || avoid.iter().any(|&a| overlaps(r, a));
        if !clash {
            return Some(at);
        }
        at += 1 << 30;
    }
    None
}

/// Check that no image region overlaps the restorer.
pub fn check_no_overlap(meta: &ImageMeta, restorer: (u64, u64)) -> Result<(), String> {
    for g in &meta.regions {
        if overlaps((g.start, g.end), restorer) {
            return Err(format!(
                "the program had memory at {:#x}-{:#x}, where crust-restorer must run ({:#x}-{:#x}); this image cannot be restarted",
                g.start, g.end, restorer.0, restorer.1
            ));
        }
    }
    Ok(())
}

/// Inputs of [`build`].
pub struct PlanInput<'a> {
    pub meta: &'a ImageMeta,
    pub image_fd: i32,
    pub plan_fd: i32,
    pub restorer: (u64, u64),
    pub plan_addr: u64,
    pub scratch_addr: u64,
    pub coord: &'a str,
    pub generation: u64,
    pub verify: bool,
    /// Read large runs with O_DIRECT and AIO (`PlanHeader::direct_reads`).
    pub direct_reads: bool,
    /// The tree's ids (virtual, new real, old real).
    pub pids: &'a [PlanPid],
    /// Lowest fd number of crrestart's own descriptors (see [`RestartArgs::close_from`]).
    pub close_from: i32,
    /// Regions (by start address) mapped from a shared-memory object that crrestart
    /// created and filled: `(path to open, offset in the object)`. Their pages are not
    /// loaded from the image (the object already holds them, for every process).
    pub shared: &'a std::collections::HashMap<u64, (String, u64)>,
    /// Map large page runs from the image instead of reading them (`crate::pages`).
    pub mapped: bool,
    /// crrestart's stderr for the restorer's error messages (-1: the program's fd 2).
    pub err_fd: i32,
    /// The restart barrier's descriptors (`PlanHeader::report_fd`, `go_fd`; -1: none).
    pub report_fd: i32,
    pub go_fd: i32,
    /// This process is the tree's root (crrestart's own process).
    pub is_root: bool,
    /// Names the process in the restorer's error messages ("vpid N (prog), image PATH").
    pub who: &'a str,
}

fn push_struct<T: Copy>(out: &mut Vec<u8>, v: &T) {
    // SAFETY: T is a plain #[repr(C)] struct of integers; viewing it as bytes is sound.
    let bytes = unsafe { core::slice::from_raw_parts(v as *const T as *const u8, core::mem::size_of::<T>()) };
    out.extend_from_slice(bytes);
}

fn align8(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(8) {
        out.push(0);
    }
}

/// Serialize the plan.
pub fn build(p: &PlanInput) -> Result<Vec<u8>, String> {
    let meta = p.meta;
    let mut regions = Vec::new();
    let mut runs = Vec::new();
    let mut strings = Vec::new();
    let mut special = [SpecialMap::default(); 4];
    let mut n_special = 0;
    for g in &meta.regions {
        let kind = match g.kind {
            RegionKind::Vvar => SPECIAL_VVAR,
            RegionKind::VvarVclock => SPECIAL_VVAR_VCLOCK,
            RegionKind::Vdso => SPECIAL_VDSO,
            _ => 0,
        };
        if kind != 0 {
            if n_special < 4 {
                special[n_special] = SpecialMap { kind, _pad: 0, addr: g.start, len: g.end - g.start };
                n_special += 1;
            }
            continue;
        }
        let mut flags = 0;
        if g.shared {
            flags |= RF_SHARED;
        }
        if g.grows_down {
            flags |= RF_GROWSDOWN;
        }
        // Where the pages come from: a shared-memory object crrestart made (its path and
        // offset), a tmpfs file crrestart wrote back (`kobjects::plan_shm_files`: the file
        // holds the pages, for every process that maps it), or the image, with the
        // region's file behind the pages it does not store.
        let (file, from_image) = if let Some((path, offset)) = p.shared.get(&g.start) {
            flags |= RF_FILE | RF_SHARED | RF_FILE_WRITE;
            (Some((path.as_str(), *offset)), false)
        } else {
            let file = match &g.kind {
                RegionKind::ShmFile { path, offset, .. } | RegionKind::File { path, offset, .. } => Some((path.as_str(), *offset)),
                _ => None,
            };
            if file.is_some() {
                flags |= RF_FILE;
                if g.shared && g.prot & libc::PROT_WRITE as u32 != 0 {
                    flags |= RF_FILE_WRITE;
                }
            }
            (file, !matches!(g.kind, RegionKind::ShmFile { .. }))
        };
        let (path_off, path_len, file_offset) = match file {
            Some((path, offset)) => {
                let at = strings.len() as u32;
                strings.extend_from_slice(path.as_bytes());
                strings.push(0);
                (at, path.len() as u32, offset)
            }
            None => (0, 0, 0),
        };
        let first_run = runs.len() as u32;
        if from_image {
            crate::pages::plan_runs(g, p.mapped, &|off| crate::pages::peek_words(p.image_fd, off), &mut runs);
        }
        regions.push(PlanRegion {
            start: g.start,
            end: g.end,
            prot: g.prot,
            flags,
            file_offset,
            path_off,
            path_len,
            first_run,
            n_runs: runs.len() as u32 - first_run,
        });
    }
    let mut auxv = [0u64; 64];
    // The kernel keeps at most 52 words (AT_VECTOR_SIZE) and wants the AT_NULL pair last.
    let words = meta.auxv.len().min(50) & !1;
    auxv[..words].copy_from_slice(&meta.auxv[..words]);
    let mm = MmMap {
        start_code: meta.mm.start_code,
        end_code: meta.mm.end_code,
        start_data: meta.mm.start_data,
        end_data: meta.mm.end_data,
        start_brk: meta.mm.start_brk,
        brk: meta.mm.brk,
        start_stack: meta.mm.start_stack,
        arg_start: meta.mm.arg_start,
        arg_end: meta.mm.arg_end,
        env_start: meta.mm.env_start,
        env_end: meta.mm.env_end,
        auxv: 0,
        auxv_size: 0,
        exe_fd: u32::MAX,
    };
    let mut coord = [0u8; 256];
    let cb = p.coord.as_bytes();
    if cb.len() >= coord.len() {
        return Err("coordinator address too long".into());
    }
    coord[..cb.len()].copy_from_slice(cb);

    let header_size = core::mem::size_of::<PlanHeader>();
    let regions_off = ((header_size + 7) & !7) as u64;
    let runs_off = regions_off + (regions.len() * core::mem::size_of::<PlanRegion>()) as u64;
    let strings_off = runs_off + (runs.len() * core::mem::size_of::<PlanRun>()) as u64;
    let pids_off = (strings_off + strings.len() as u64 + 7) & !7;
    let total_len = pids_off + core::mem::size_of_val(p.pids) as u64;
    let h = PlanHeader {
        magic: PLAN_MAGIC,
        version: PLAN_VERSION,
        n_regions: regions.len() as u32,
        n_runs: runs.len() as u32,
        n_special: n_special as u32,
        regions_off,
        runs_off,
        strings_off,
        total_len,
        special,
        mm,
        auxv,
        auxv_words: words as u32,
        verify: p.verify as u32,
        direct_reads: p.direct_reads as u32,
        _pad: 0,
        entry: meta.restart.entry,
        entry_stack: meta.restart.stack_top,
        scratch_addr: p.scratch_addr,
        scratch_len: 16 << 20,
        report_fd: p.report_fd,
        go_fd: p.go_fd,
        is_root: p.is_root as u32,
        _pad2: 0,
        who: {
            let mut who = [0u8; 512];
            // Cut at a character boundary, leaving a NUL at the end.
            let mut n = p.who.len().min(who.len() - 1);
            while !p.who.is_char_boundary(n) {
                n -= 1;
            }
            who[..n].copy_from_slice(&p.who.as_bytes()[..n]);
            who
        },
        args: RestartArgs {
            magic: ARGS_MAGIC,
            version: PLAN_VERSION,
            flags: 0,
            restorer_start: p.restorer.0,
            restorer_end: p.restorer.1,
            plan_addr: p.plan_addr,
            plan_len: (total_len + 4095) & !4095,
            image_fd: p.image_fd,
            plan_fd: p.plan_fd,
            mm_errno: 0,
            err_fd: p.err_fd,
            coord,
            generation: p.generation,
            pids_addr: p.plan_addr + pids_off,
            n_pids: p.pids.len() as u32,
            close_from: p.close_from,
            aio_ctx: 0,
        },
    };
    let mut out = Vec::with_capacity(total_len as usize);
    push_struct(&mut out, &h);
    align8(&mut out);
    for r in &regions {
        push_struct(&mut out, r);
    }
    for r in &runs {
        push_struct(&mut out, r);
    }
    out.extend_from_slice(&strings);
    align8(&mut out);
    for pid in p.pids {
        push_struct(&mut out, pid);
    }
    debug_assert_eq!(out.len() as u64, total_len);
    Ok(out)
}
