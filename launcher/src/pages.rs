//! Getting an image's page data to crust-restorer: which runs are mapped from the image
//! and which are read, checking page checksums, and unpacking compressed images.
//!
//! * Uncompressed image: the restorer gets the image file itself. In the default *mapped*
//!   mode, large runs of private anonymous memory (and the brk heap) are mapped straight
//!   from it (`MAP_PRIVATE | MAP_FIXED`): restart costs a few system calls, and pages come
//!   in from the page cache when the program touches them. Everything else is read.
//!   `--eager` reads everything into anonymous memory.
//! * Compressed image: crrestart decompresses the chunks as a stream into a memfd laid out
//!   like the uncompressed image (page data at the runs' offsets), checking every chunk's
//!   checksum and every run's; the restorer then maps or reads from the memfd exactly as
//!   from an uncompressed image.
//!
//! Checksums: the header, the metadata and the run and chunk tables in it are always
//! checked. Page checksums: with `--verify` (mapped mode) every one here, before anything
//! starts; with `--eager` every one by the restorers as the data arrives, before the
//! restart barrier (`crate::rebuild`): the image is read once, and nothing runs and no
//! file changes until every restorer of the tree has checked all its pages; for every
//! compressed image here, as it is unpacked. In the default mapped mode the restorer
//! checks the runs it reads, and crrestart those it reads itself (shared memory,
//! [`verify_runs`]); runs mapped from an uncompressed image are not read at restart, so
//! without `--verify` their checksums are not checked (that would mean reading the whole
//! image, which is what mapping avoids).

use crust_format::codec::{self, ChunkSink};
use crust_format::image::{self, Compression, Image, Region, RegionKind, HEADER_SIZE, PAGE_SIZE};
use crust_restorer::{PlanRun, RUN_MAP, RUN_PART};
use std::fs::File;
use std::os::fd::FromRawFd;
use std::path::Path;

/// Runs shorter than this are read even in mapped mode: a mapping costs a VMA (the
/// kernel allows about 65530 per process) and a system call, a 256 KiB read about as much.
pub const MAP_MIN_RUN: u64 = 256 << 10;
/// At most this many runs are mapped per process (the rest is read).
pub const MAP_MAX_RUNS: usize = 4096;
/// Images with more page data than this get a progress bar on a terminal.
pub const PROGRESS_MIN_BYTES: u64 = 256 << 20;

/// How the restorer gets page data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadMode {
    /// Large runs of private anonymous memory are mapped from the image.
    Mapped,
    /// Everything is read into anonymous memory.
    Eager,
}

/// Whether runs of this region may be mapped from the image. Shared memory must stay
/// shared anonymous memory, private file mappings must keep showing their file (their
/// stored runs are small copy-on-write copies anyway), and a grows-down stack must stay
/// one growable anonymous mapping.
pub fn region_mappable(g: &Region) -> bool {
    matches!(g.kind, RegionKind::Anon | RegionKind::Heap)
        && !g.shared
        && !g.grows_down
        && g.prot & libc::PROT_READ as u32 != 0
}

/// The two words at an offset of the page data (glibc's chunk header: `prev_size`, `size`),
/// or `None` when they cannot be read.
pub type PeekWords<'a> = &'a dyn Fn(u64) -> Option<[u64; 2]>;

/// The words at `off` of the open page source `fd` (the image file or the unpacked memfd).
pub fn peek_words(fd: i32, off: u64) -> Option<[u64; 2]> {
    let mut b = [0u8; 16];
    // SAFETY: reads at most 16 bytes into our own buffer.
    let n = unsafe { libc::pread(fd, b.as_mut_ptr().cast(), 16, off as libc::off_t) };
    (n == 16).then(|| [u64::from_le_bytes(b[..8].try_into().unwrap_or_default()), u64::from_le_bytes(b[8..].try_into().unwrap_or_default())])
}

/// Length of the block glibc's malloc served with its own mmap that starts at `addr`, if
/// the words there are such a block's header: `prev_size` 0 (the mapping starts with the
/// chunk) and `size` a multiple of the page size flagged IS_MMAPPED (2) and not
/// NON_MAIN_ARENA (4). A wrong guess costs one page read instead of mapped, nothing more.
fn glibc_mmapped_block(words: Option<[u64; 2]>) -> Option<u64> {
    let [prev_size, size] = words?;
    let len = size & !7;
    (prev_size == 0 && size & 2 != 0 && size & 4 == 0 && len >= 2 * PAGE_SIZE && len % PAGE_SIZE == 0).then_some(len)
}

/// The plan runs of one region. No mapping of the image file may be a whole block that
/// `mremap` can grow: growing a private file mapping extends it over the following bytes
/// of the image and past the file's end, where touching it raises SIGBUS. The preload's
/// `mremap` wrapper guards the program's own calls, but glibc's `realloc` of a large block
/// calls its internal `mremap`, which no wrapper sees. So a mapped piece always ends one
/// page before the end of its region and before the end of each glibc mmapped block
/// (adjacent blocks are merged into one region by the kernel): that page is read into
/// anonymous memory, `mremap` of the block spans two mappings and refuses (EFAULT), and
/// glibc's `realloc` falls back to copying. Blocks are recognised by their chunk header
/// in the image (`peek` reads it).
pub fn plan_runs(g: &Region, mapped: bool, peek: PeekWords, out: &mut Vec<PlanRun>) {
    let mappable = mapped && region_mappable(g);
    let mut n_mapped = out.iter().filter(|p| p.flags & RUN_MAP != 0).count();
    for r in &g.runs {
        let read = PlanRun { addr: r.addr, len: r.len, image_off: r.offset, crc: r.crc, flags: 0 };
        if !mappable || r.len < MAP_MIN_RUN {
            out.push(read);
            continue;
        }
        let run_end = r.addr + r.len;
        let mut pos = r.addr;
        while pos < run_end {
            let off = r.offset + (pos - r.addr);
            let block = glibc_mmapped_block(peek(off)).filter(|len| pos + len <= run_end);
            let piece_end = block.map_or(run_end, |len| pos + len);
            let len = piece_end - pos;
            // The piece's last page stays anonymous unless other memory of the region
            // follows it and it is not a malloc block.
            let keep_last = block.is_some() || piece_end >= g.end;
            let head = if keep_last { len - PAGE_SIZE } else { len };
            let whole = PlanRun { addr: pos, len, image_off: off, crc: 0, flags: RUN_PART };
            if n_mapped >= MAP_MAX_RUNS || head < MAP_MIN_RUN {
                out.push(whole);
            } else {
                n_mapped += 1;
                out.push(PlanRun { len: head, flags: RUN_MAP | RUN_PART, ..whole });
                if keep_last {
                    out.push(PlanRun { addr: pos + head, len: PAGE_SIZE, image_off: off + head, ..whole });
                }
            }
            pos = piece_end;
        }
        // One piece covering the whole run keeps the run's own checksum.
        let last = out.len() - 1;
        if out[last].addr == r.addr && out[last].len == r.len {
            out[last].crc = r.crc;
            out[last].flags &= !RUN_PART;
        }
    }
}

/// What the restorer reads page data from, after checks.
pub struct PageSource {
    /// The image file, or a memfd with the unpacked page data.
    pub file: File,
    /// Every run's checksum was checked here already.
    pub verified: bool,
    /// The restorer reads large runs with O_DIRECT and AIO (eager restore of an image
    /// that is not in the page cache; see [`open_pages`]).
    pub direct: bool,
}

/// A terminal progress bar for `total` bytes (hidden when stderr is not a terminal or the
/// image is small).
fn progress_bar(total: u64, what: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if total < PROGRESS_MIN_BYTES || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(total);
    pb.set_style(
        indicatif::ProgressStyle::with_template("crrestart: {msg} [{bar:20}] {bytes}/{total_bytes} {binary_bytes_per_sec}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// Prepare the page data of `img` (read from `path`) for the restorer: check what must be
/// checked here (see the module comment) and unpack a compressed image.
///
/// Eager restore of an uncompressed image reads the page data once, in the restorers,
/// which check every run's checksum as it arrives, before the restart barrier
/// (`crate::rebuild`): nothing is read here. An image mostly not in the page cache (cold:
/// written with O_DIRECT, or on a machine that restarts after the checkpoint's) is read
/// with O_DIRECT and several requests in flight straight into the program's memory;
/// through the page cache every page would cost a page-cache page, a fresh page and a
/// copy. A warm image (mostly cached) is read through the page cache, and so is an image
/// on a filesystem that refuses O_DIRECT (the restorer falls back).
pub fn open_pages(path: &Path, img: &Image, verify: bool, eager: bool, direct: DirectReads) -> Result<PageSource, String> {
    let name = path.display();
    let meta = &img.meta;
    let total: u64 = meta.memory_bytes();
    if meta.compression == Compression::None {
        let file = File::open(path).map_err(|e| format!("{name}: {e}"))?;
        if eager {
            let direct = match direct {
                DirectReads::Never => false,
                DirectReads::Always => true,
                DirectReads::Auto => total >= DIRECT_MIN_BYTES && mostly_uncached(&file),
            };
            if direct {
                tracing::info!("{name}: page data read with O_DIRECT");
            }
            return Ok(PageSource { file, verified: false, direct });
        }
        if verify {
            verify_mapped(&file, meta, total).map_err(|e| format!("{name}: {e}"))?;
        }
        return Ok(PageSource { file, verified: verify, direct: false });
    }
    let file = File::open(path).map_err(|e| format!("{name}: {e}"))?;
    let memfd = unpack_to_memfd(&file, meta, total).map_err(|e| format!("{name}: {e}"))?;
    Ok(PageSource { file: memfd, verified: true, direct: false })
}

/// When eager restore reads page data with O_DIRECT (`crrestart --direct-reads`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectReads {
    /// When the image is mostly not in the page cache and holds at least 64 MiB of pages.
    Auto,
    Always,
    Never,
}

impl DirectReads {
    pub fn parse(s: &str) -> Result<DirectReads, String> {
        match s {
            "auto" => Ok(DirectReads::Auto),
            "always" => Ok(DirectReads::Always),
            "never" => Ok(DirectReads::Never),
            _ => Err(format!("expected auto, always or never, not {s}")),
        }
    }
}

/// Eager restores of less page data than this use the page cache (too little to matter).
const DIRECT_MIN_BYTES: u64 = 64 << 20;
/// Whether less than half of a sample of the file's pages is in the page cache (mincore
/// of a mapping that is never touched). The sample: [`CACHE_SAMPLES`] windows of
/// [`CACHE_SAMPLE_PAGES`] pages spread evenly over the file (asking about every page of a
/// 1 GiB image took 10 ms, on the way to the program running again).
fn mostly_uncached(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(len) = file.metadata().map(|m| m.len() as usize) else { return false };
    if len == 0 {
        return false;
    }
    // SAFETY: a private read-only mapping of our own open file, never touched, unmapped below.
    let base = unsafe { libc::mmap(core::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_PRIVATE, file.as_raw_fd(), 0) };
    if base == libc::MAP_FAILED {
        return false;
    }
    let pages = len.div_ceil(PAGE_SIZE as usize);
    let mut vec = [0u8; CACHE_SAMPLE_PAGES];
    let (mut resident, mut asked) = (0usize, 0usize);
    let mut next = 0usize;
    for i in 0..CACHE_SAMPLES {
        let first = (pages * i / CACHE_SAMPLES).max(next);
        let n = CACHE_SAMPLE_PAGES.min(pages - first.min(pages));
        if n == 0 {
            break;
        }
        next = first + n;
        // SAFETY: n pages inside the mapping; vec holds one byte per page asked about.
        let r = unsafe { libc::mincore(base.cast::<u8>().add(first * PAGE_SIZE as usize).cast(), n * PAGE_SIZE as usize, vec.as_mut_ptr()) };
        if r != 0 {
            break;
        }
        resident += vec[..n].iter().filter(|&&b| b & 1 != 0).count();
        asked += n;
    }
    // SAFETY: our own mapping.
    unsafe { libc::munmap(base, len) };
    asked > 0 && resident * 2 < asked
}

/// How many windows of the image [`mostly_uncached`] asks about, and how long each is.
const CACHE_SAMPLES: usize = 256;
const CACHE_SAMPLE_PAGES: usize = 16;

/// Check the crc32c of the runs crrestart reads itself from an unchecked page source
/// (shared memory it fills, tmpfs files it writes back): the restorers never see them.
pub fn verify_runs<'a>(src: &File, runs: impl Iterator<Item = &'a image::PageRun>) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    let mut buf = Vec::new();
    for r in runs {
        let mut crc = 0u32;
        let mut at = 0u64;
        while at < r.len {
            let n = (r.len - at).min(8 << 20) as usize;
            buf.resize(n, 0);
            src.read_exact_at(&mut buf, r.offset + at).map_err(|e| format!("reading page data at file offset {}: {e}", r.offset + at))?;
            crc = crc32c::crc32c_append(crc, &buf);
            at += n as u64;
        }
        if crc != r.crc {
            return Err(format!("corrupt image: page data at {:#x} (+{:#x}) fails its checksum", r.addr, r.len));
        }
    }
    Ok(())
}

/// Check every run's crc32c straight from a read-only mapping of the image (no copy; the
/// crc32c crate's interleaved hardware CRC).
fn verify_mapped(file: &File, meta: &image::ImageMeta, total: u64) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let len = file.metadata().map_err(|e| e.to_string())?.len() as usize;
    let end = meta.regions.iter().flat_map(|r| r.runs.iter()).map(|r| r.offset + r.len).max().unwrap_or(0);
    if end == 0 {
        return Ok(());
    }
    if end as usize > len {
        return Err(format!("truncated image: page data reaches {end} bytes, the file has {len}"));
    }
    // SAFETY: a private read-only mapping of our own open file, unmapped below.
    let base = unsafe { libc::mmap(core::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_PRIVATE, file.as_raw_fd(), 0) };
    if base == libc::MAP_FAILED {
        return Err(format!("mapping the image: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: advice on our own mapping.
    unsafe { libc::madvise(base, len, libc::MADV_SEQUENTIAL) };
    let pb = progress_bar(total, "verifying");
    let mut done = 0u64;
    let mut result = Ok(());
    'runs: for r in meta.regions.iter().flat_map(|r| r.runs.iter()) {
        let mut crc = 0u32;
        let mut at = 0u64;
        while at < r.len {
            let n = (r.len - at).min(64 << 20);
            // SAFETY: [offset, offset+len) is inside the mapping (checked above).
            let data = unsafe { core::slice::from_raw_parts((base as *const u8).add((r.offset + at) as usize), n as usize) };
            // Read the piece in with large requests (MADV_POPULATE_READ, Linux 5.14) rather
            // than fault by fault; older kernels fall back to sequential read-ahead.
            // SAFETY: advice on a page-aligned piece of our own mapping.
            unsafe { libc::madvise(data.as_ptr() as *mut libc::c_void, data.len(), 22 /* MADV_POPULATE_READ */) };
            crc = crc32c::crc32c_append(crc, data);
            at += n;
            done += n;
            pb.set_position(done);
        }
        if crc != r.crc {
            result = Err(format!("corrupt image: page data at {:#x} (+{:#x}) fails its checksum", r.addr, r.len));
            break 'runs;
        }
    }
    pb.finish_and_clear();
    // SAFETY: our own mapping.
    unsafe { libc::munmap(base, len) };
    result
}

/// A shared writable mapping of a memfd, filled chunk by chunk.
struct MemfdSink {
    base: *mut u8,
    len: usize,
}

impl ChunkSink for MemfdSink {
    fn buffer(&mut self, offset: u64, len: usize) -> Result<&mut [u8], crust_format::Error> {
        let off = offset as usize;
        if off.checked_add(len).is_none_or(|e| e > self.len) {
            return Err(crust_format::Error::Corrupt("a chunk reaches past the page data".into()));
        }
        // SAFETY: [off, off+len) is inside our mapping, which nothing else uses.
        Ok(unsafe { core::slice::from_raw_parts_mut(self.base.add(off), len) })
    }
}

impl Drop for MemfdSink {
    fn drop(&mut self) {
        // SAFETY: our own mapping.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// Decompress every chunk into a memfd laid out like the uncompressed image.
fn unpack_to_memfd(file: &File, meta: &image::ImageMeta, total: u64) -> Result<File, String> {
    let len = HEADER_SIZE as u64 + total;
    // SAFETY: a valid NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"crust-pages".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh fd we own.
    let memfd = unsafe { File::from_raw_fd(fd) };
    memfd.set_len(len).map_err(|e| format!("sizing the page memfd ({len} bytes): {e}"))?;
    // SAFETY: mapping our own memfd, shared, at a kernel-chosen address.
    let base = unsafe {
        libc::mmap(core::ptr::null_mut(), len as usize, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0)
    };
    if base == libc::MAP_FAILED {
        return Err(format!("mapping the page memfd: {}", std::io::Error::last_os_error()));
    }
    let mut sink = MemfdSink { base: base.cast(), len: len as usize };
    let pb = progress_bar(total, "unpacking");
    codec::unpack(file, meta, &mut sink, &mut |done| pb.set_position(done)).map_err(|e| e.to_string())?;
    pb.finish_and_clear();
    drop(sink);
    Ok(memfd)
}

/// Move a page source to the lowest free fd number >= `lo` (close-on-exec), so that it
/// survives crrestart closing the program's fd numbers below `lo`.
pub fn move_above(f: File, lo: i32) -> Result<File, String> {
    use std::os::fd::AsRawFd;
    // SAFETY: duplicating our own fd; the original is closed when `f` drops.
    let fd = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_DUPFD_CLOEXEC, lo) };
    if fd < 0 {
        return Err(format!("cannot move the image's page data to fd >= {lo}: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Close every fd >= `lo` except those in `keep` (the page sources).
pub fn close_from_except(lo: i32, keep: &[i32]) {
    let mut keep: Vec<i32> = keep.iter().copied().filter(|&k| k >= lo).collect();
    keep.sort_unstable();
    let mut from = lo as u32;
    for k in keep {
        if k as u32 > from {
            // SAFETY: closing fds of crrestart's own that nothing uses.
            unsafe { libc::syscall(libc::SYS_close_range, from, k as u32 - 1, 0u32) };
        }
        from = k as u32 + 1;
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, 0u32) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crust_format::image::PageRun;

    fn region(kind: RegionKind, runs: &[(u64, u64)]) -> Region {
        Region {
            start: 0x100000,
            end: 0x100000 + (64 << 20),
            prot: 3,
            shared: false,
            grows_down: false,
            kind,
            runs: runs.iter().map(|&(a, l)| PageRun { addr: a, len: l, offset: 4096 + a - 0x100000, crc: 1 }).collect(),
        }
    }

    #[test]
    fn large_anonymous_runs_are_mapped_small_ones_read() {
        let g = region(RegionKind::Anon, &[(0x100000, 4096), (0x200000, 1 << 20)]);
        let mut v = Vec::new();
        plan_runs(&g, true, &|_| None, &mut v);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].flags, 0);
        assert_eq!(v[1].flags, RUN_MAP);
        let mut e = Vec::new();
        plan_runs(&g, false, &|_| None, &mut e);
        assert!(e.iter().all(|r| r.flags == 0), "eager mode maps nothing");
    }

    #[test]
    fn a_run_reaching_the_region_end_keeps_its_last_page_anonymous() {
        let end = 0x100000 + (64 << 20);
        let g = region(RegionKind::Heap, &[(end - (2 << 20), 2 << 20)]);
        let mut v = Vec::new();
        plan_runs(&g, true, &|_| None, &mut v);
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].flags, v[0].len), (RUN_MAP | RUN_PART, (2 << 20) - 4096));
        assert_eq!((v[1].flags, v[1].addr, v[1].image_off), (RUN_PART, end - 4096, v[0].image_off + (2 << 20) - 4096));
    }

    #[test]
    fn shared_stack_and_file_regions_are_never_mapped() {
        for g in [
            Region { shared: true, ..region(RegionKind::Anon, &[(0x200000, 1 << 20)]) },
            Region { grows_down: true, ..region(RegionKind::Anon, &[(0x200000, 1 << 20)]) },
            region(
                RegionKind::File { path: "/x".into(), offset: 0, identity: Default::default() },
                &[(0x200000, 1 << 20)],
            ),
            region(RegionKind::Detached { name: "x".into() }, &[(0x200000, 1 << 20)]),
        ] {
            let mut v = Vec::new();
            plan_runs(&g, true, &|_| None, &mut v);
            assert!(v.iter().all(|r| r.flags & RUN_MAP == 0), "{:?} must be read", g.kind);
        }
    }

    #[test]
    fn each_glibc_mmapped_block_of_a_run_keeps_its_last_page_anonymous() {
        // Three adjacent 2 MiB + 4 KiB malloc blocks merged into one run, then other memory.
        let blk = (2 << 20) + 4096;
        let g = region(RegionKind::Anon, &[(0x200000, 3 * blk + (1 << 20))]);
        let first_off = g.runs[0].offset;
        let peek = |off: u64| {
            let k = (off - first_off) / blk;
            (k < 3 && (off - first_off).is_multiple_of(blk)).then_some([0, blk | 2])
        };
        let mut v = Vec::new();
        plan_runs(&g, true, &peek, &mut v);
        let mapped: Vec<_> = v.iter().filter(|r| r.flags & RUN_MAP != 0).map(|r| (r.addr, r.len)).collect();
        let b = 0x200000;
        assert_eq!(mapped, [(b, blk - 4096), (b + blk, blk - 4096), (b + 2 * blk, blk - 4096), (b + 3 * blk, 1 << 20)]);
        let read: Vec<_> = v.iter().filter(|r| r.flags & RUN_MAP == 0).map(|r| (r.addr, r.image_off - first_off)).collect();
        assert_eq!(read, [(b + blk - 4096, blk - 4096), (b + 2 * blk - 4096, 2 * blk - 4096), (b + 3 * blk - 4096, 3 * blk - 4096)]);
        assert_eq!(v.iter().map(|r| r.len).sum::<u64>(), 3 * blk + (1 << 20), "the pieces cover the run");
    }
}
