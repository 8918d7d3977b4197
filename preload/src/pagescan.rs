//! Which pages of an address range hold data, without touching them.
//!
//! Kernels since 6.7 answer the `PAGEMAP_SCAN` ioctl on `/proc/self/pagemap` with ranges of
//! pages that share the same categories (present, swapped, file-backed, the shared zero
//! page): one system call describes a whole mapping. Older kernels get the same answer
//! from reading the 8-byte pagemap entries. Unpopulated pages are never read either way.

use crate::sys;
use std::vec::Vec;

/// Page categories (`PAGE_IS_*` in `linux/fs.h`).
pub const PAGE_IS_FILE: u64 = 1 << 2;
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
pub const PAGE_IS_PFNZERO: u64 = 1 << 5;

/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: u64 = 0xc060_6610;

#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;
const PM_BATCH: usize = 4096;
/// Pages one PAGEMAP_SCAN reports at most (64 MiB: walking the page tables of 1 GiB of
/// present memory takes the kernel about 15 ms, which overlaps the writes in pieces).
const MAX_PAGES: u64 = 16384;

pub struct PageScanner {
    fd: i32,
    /// PAGEMAP_SCAN works here (cleared on the first ENOTTY/EINVAL).
    scan_ok: bool,
    regions: Vec<PageRegion>,
    entries: Vec<u64>,
}

impl PageScanner {
    pub fn open() -> Result<PageScanner, i32> {
        let fd = sys::open(b"/proc/self/pagemap", libc::O_RDONLY, 0)?;
        Ok(PageScanner { fd, scan_ok: true, regions: vec![PageRegion::default(); 1024], entries: Vec::new() })
    }

    pub fn fd(&self) -> i32 {
        self.fd
    }

    /// Whether the kernel answered PAGEMAP_SCAN (for tests and benchmarks).
    pub fn uses_ioctl(&self) -> bool {
        self.scan_ok
    }

    /// Call `f(start, end, categories)` for every stretch of present or swapped pages in
    /// `[start, end)`, in address order. Categories are `PAGE_IS_*` bits.
    pub fn scan(&mut self, start: u64, end: u64, f: &mut dyn FnMut(u64, u64, u64)) -> Result<(), i32> {
        if self.scan_ok {
            match self.scan_ioctl(start, end, f) {
                Err(libc::ENOTTY) | Err(libc::EINVAL) => self.scan_ok = false,
                r => return r,
            }
        }
        self.scan_pagemap(start, end, f)
    }

    fn scan_ioctl(&mut self, start: u64, end: u64, f: &mut dyn FnMut(u64, u64, u64)) -> Result<(), i32> {
        let mut at = start;
        while at < end {
            let mut arg = PmScanArg {
                size: core::mem::size_of::<PmScanArg>() as u64,
                start: at,
                end,
                vec: self.regions.as_mut_ptr() as u64,
                vec_len: self.regions.len() as u64,
                // At most MAX_PAGES per call, wherever they are: the caller gets to work on
                // (write) the first pages while the kernel has not walked the rest yet.
                max_pages: MAX_PAGES,
                category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
                return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_FILE | PAGE_IS_PFNZERO,
                ..Default::default()
            };
            // SAFETY: arg and the region vector are valid for the kernel to read and write.
            let n = sys::check(unsafe { sys::sc!(libc::SYS_ioctl, self.fd, PAGEMAP_SCAN, &mut arg as *mut PmScanArg) })?;
            for r in &self.regions[..n.min(self.regions.len())] {
                f(r.start, r.end, r.categories);
            }
            if arg.walk_end <= at {
                break; // no progress: the kernel walked nothing
            }
            at = arg.walk_end;
        }
        Ok(())
    }

    fn scan_pagemap(&mut self, start: u64, end: u64, f: &mut dyn FnMut(u64, u64, u64)) -> Result<(), i32> {
        let mut addr = start;
        let mut cur: Option<(u64, u64, u64)> = None;
        while addr < end {
            let n = (((end - addr) / 4096) as usize).min(PM_BATCH);
            self.entries.clear();
            self.entries.resize(n, 0);
            // SAFETY: a u64 slice viewed as bytes to read into.
            let bytes = unsafe { core::slice::from_raw_parts_mut(self.entries.as_mut_ptr() as *mut u8, n * 8) };
            let mut done = 0;
            while done < bytes.len() {
                let k = sys::pread(self.fd, &mut bytes[done..], (addr / 4096) * 8 + done as u64)?;
                if k == 0 {
                    break;
                }
                done += k;
            }
            for (i, &e) in self.entries.iter().enumerate() {
                let pa = addr + i as u64 * 4096;
                let mut cat = 0;
                if e & PM_PRESENT != 0 {
                    cat |= PAGE_IS_PRESENT;
                }
                if e & PM_SWAPPED != 0 {
                    cat |= PAGE_IS_SWAPPED;
                }
                if cat != 0 && e & PM_FILE != 0 {
                    cat |= PAGE_IS_FILE;
                }
                match cur {
                    Some((s, e2, c)) if e2 == pa && c == cat => cur = Some((s, pa + 4096, c)),
                    _ => {
                        if let Some((s, e2, c)) = cur.take() {
                            if c != 0 {
                                f(s, e2, c);
                            }
                        }
                        cur = Some((pa, pa + 4096, cat));
                    }
                }
            }
            addr += n as u64 * 4096;
        }
        if let Some((s, e, c)) = cur {
            if c != 0 {
                f(s, e, c);
            }
        }
        Ok(())
    }
}

impl Drop for PageScanner {
    fn drop(&mut self) {
        sys::close(self.fd);
    }
}
