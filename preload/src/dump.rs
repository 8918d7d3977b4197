//! Writing the checkpoint image of this process (see `crust_format::image`).
//!
//! Runs while every application thread is stopped (in the checkpoint thread, or in a
//! forked copy of the process), with the allocator in scratch mode: no libc, no locks, raw
//! system calls only. Order: open a temp file, describe every memory area and write the
//! pages worth keeping (present or swapped, not all zero, and for private file mappings
//! only pages that no longer equal the file), then the metadata, then the header, fsync,
//! rename.
//!
//! Which pages hold data comes from `PAGEMAP_SCAN` (`pagescan.rs`): unpopulated pages are
//! never touched. Uncompressed memory is read once: `collect_runs` checks each page for
//! zeros, and the run it extends is checksummed (64 KiB at a time, from the CPU cache)
//! and handed to the `PageWriter` as it grows, which writes it straight from the
//! process's memory (runs' crcs live in the metadata, written after the data). A
//! stop-the-world writer sends runs of 256 KiB and more through a second descriptor of the
//! temp file opened with `O_DIRECT`: the disk reads the pages where they are, and the
//! kernel does not copy them into the page cache first (that copy was 60 % of a
//! stop-the-world checkpoint, BENCHMARKS.md). Those writes go out in 32 MiB pieces, two in
//! flight through Linux AIO, while the next pieces are scanned and checksummed: the CPU
//! work hides behind the disk. The memory does not change meanwhile (the threads are
//! stopped), and the file's size is raised ahead of the writes (ext4 makes a direct write
//! that extends the file wait inside `io_submit`) and cut to the image's length at the end.
//! Page runs are page-aligned in memory, in length and in the file, which is what `O_DIRECT`
//! asks; the header, fd table and metadata are written through the ordinary descriptor,
//! and so are runs shorter than 256 KiB: crrestart's mapped restore reads exactly those,
//! and finds them in the page cache after a restart on the same machine. Where the
//! filesystem refuses `O_DIRECT` (tmpfs: EINVAL at open) or a write through it fails
//! (memory the kernel cannot pin, an odd device), the page data goes through the ordinary
//! descriptor instead, from that point on; where the kernel refuses AIO (or
//! `CR_DIRECT_IO=sync`), each piece is one synchronous `pwritev`. `CR_DIRECT_IO=0` turns
//! direct writes off. The forked writer never uses them (`writer::in_writer` says why):
//! it writes through the page cache, in the same single pass. Compressed data goes through
//! one chunk buffer and the codec (`crust_format::codec`), whose zstd context lives in
//! memory reserved here, and is written through the page cache.

use crate::pagescan::{PageScanner, PAGE_IS_FILE, PAGE_IS_PFNZERO, PAGE_IS_PRESENT, PAGE_IS_SWAPPED};
use crate::procfs::{self, Vma};
use crate::quiesce;
use crate::sys;
use core::sync::atomic::{AtomicU64, Ordering};
use crust_format::codec::Encoder;
use crust_format::image::{
    max_compressed_len, Chunk, Compression, EpollEntry, FdKind, FdRecord, FileIdentity, Header, ImageMeta, MmInfo, PageRun,
    Region, RegionKind, RestartEntry, Rlimit, SharedMap, ThreadRecord, TreeInfo, CHUNK_SIZE, FLAG_DIRECT_IO, HEADER_SIZE, PAGE_SIZE, VERSION,
};
use std::format;
use std::string::{String, ToString};
use std::vec::Vec;

/// Longest page run recorded as one run.
const MAX_RUN: u64 = 1 << 30;
/// Runs at least this long are written with O_DIRECT; shorter ones through the page cache
/// (crrestart's mapped restore reads runs shorter than its MAP_MIN_RUN, the same 256 KiB,
/// and maps the others).
const DIRECT_MIN_RUN: u64 = 256 << 10;
/// Most iovecs per pwritev (IOV_MAX).
const MAX_IOV: usize = 1024;
/// Page data written through the page cache is handed to the kernel in pieces of this
/// size, and the disk starts writing back at once (sync_file_range), while the next one is
/// copied: the final fsync then has little left to wait for.
const WRITEBACK_STEP: u64 = 64 << 20;
/// A direct write request is this long at most, and this many are in flight through
/// Linux AIO: while the disk takes them, the next piece is scanned and checksummed.
/// Measured on this machine's virtual disk (BENCHMARKS.md): two of 32 MiB keep it as busy
/// as more or larger ones, which made io_submit itself wait for free requests instead.
const AIO_PIECE: u64 = 32 << 20;
const AIO_DEPTH: usize = 2;
/// ext4 makes a direct write that extends the file wait for the disk inside io_submit
/// (IOMAP_DIO_FORCE_WAIT): the file's size is raised ahead of the direct writes, this
/// much at a time, and cut to the image's length at the end.
const GROW_STEP: u64 = 1 << 30;
/// Runs are checksummed and handed to the writer in spans of this size, right after their
/// pages were read to check them for zeros (so the checksum reads the CPU cache).
const STREAM_SPAN: u64 = 64 << 10;

/// Device and inode of the image (or unpacked page memfd) this process was restarted
/// from: crust-restorer maps page runs straight from it, so at the next checkpoint such
/// mappings are the program's anonymous memory, not a file mapping (0 = none).
static RESTORED_FROM_DEV: AtomicU64 = AtomicU64::new(0);
static RESTORED_FROM_INO: AtomicU64 = AtomicU64::new(0);
/// Its size: pages of such a mapping past the end of the file hold nothing (touching them
/// raises SIGBUS), as when `mremap` grew a mapped run.
static RESTORED_FROM_SIZE: AtomicU64 = AtomicU64::new(0);

/// Compression imposed by the coordinator (`crcoord --compress`): 0 = none imposed,
/// else 1 + the `Compression` as a number.
static COORD_COMPRESSION: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

/// The coordinator's compression setting (overrides CR_COMPRESS).
pub fn set_compression(c: Compression) {
    let v = match c {
        Compression::None => 1,
        Compression::Zstd => 2,
        Compression::Lz4 => 3,
    };
    COORD_COMPRESSION.store(v, Ordering::Relaxed);
}

/// Forget the coordinator's setting (a new connection).
pub fn clear_compression() {
    COORD_COMPRESSION.store(0, Ordering::Relaxed);
}

/// How page data is stored: the coordinator's setting, else CR_COMPRESS.
pub fn compression() -> Compression {
    match COORD_COMPRESSION.load(Ordering::Relaxed) {
        1 => Compression::None,
        2 => Compression::Zstd,
        3 => Compression::Lz4,
        _ => crate::config::get().compress,
    }
}

/// Remember the image file the restorer mapped memory from (called at restart with the
/// image fd, before it is closed).
pub fn note_restored_image(image_fd: i32) {
    if let Ok(st) = sys::fstat(image_fd) {
        RESTORED_FROM_DEV.store(st.st_dev, Ordering::Relaxed);
        RESTORED_FROM_INO.store(st.st_ino, Ordering::Relaxed);
        RESTORED_FROM_SIZE.store(st.st_size as u64, Ordering::Relaxed);
    }
}

/// The part of a mapping of the restart image that lies inside the file: `[v.start, end)`.
pub(crate) fn restored_image_end(v: &Vma) -> u64 {
    let size = RESTORED_FROM_SIZE.load(Ordering::Relaxed);
    let in_file = size.saturating_sub(v.offset) & !(PAGE_SIZE - 1);
    v.end.min(v.start.saturating_add(in_file))
}

/// A mapping of the image this process was restarted from.
pub(crate) fn is_restored_image(v: &Vma) -> bool {
    let ino = RESTORED_FROM_INO.load(Ordering::Relaxed);
    if ino == 0 || v.inode != ino || v.shared {
        return false;
    }
    // /proc/PID/maps shows the superblock's device, which can differ from st_dev (btrfs
    // subvolumes): accept the name as a second witness.
    v.dev == RESTORED_FROM_DEV.load(Ordering::Relaxed)
        || v.name.contains(".crimg")
        || v.name.starts_with("/memfd:crust-pages")
}

/// The AIO context of the last stop-the-world image or of the restorer's reads (0:
/// none), idle, destroyed once the program runs again.
static SPENT_AIO_CTX: AtomicU64 = AtomicU64::new(0);

/// Destroy the AIO context the last image was written with (its ring is a mapping of
/// this process, which must not outlive the checkpoint). Called once the program was
/// resumed, and before an image is written.
pub fn release_direct_aio() {
    let ctx = SPENT_AIO_CTX.swap(0, Ordering::Relaxed);
    if ctx != 0 {
        sys::io_destroy(ctx);
    }
}

/// An AIO context to destroy once the program runs: the restorer's, after a restart
/// (`crust_restorer::RestartArgs::aio_ctx`).
pub fn defer_aio_destroy(ctx: u64) {
    SPENT_AIO_CTX.store(ctx, Ordering::Relaxed);
}

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

fn classify(v: &Vma, mm: &MmInfo) -> Option<RegionKind> {
    if is_restored_image(v) {
        let heap = mm.start_brk < mm.brk && v.start >= mm.start_brk && v.end <= (mm.brk + PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
        return Some(if heap { RegionKind::Heap } else { RegionKind::Anon });
    }
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
                Ok(st) if st.st_ino == v.inode && (st.st_mode & libc::S_IFMT) == libc::S_IFREG && v.shared && crate::kobjects::on_tmpfs(n.as_bytes()) => {
                    Some(RegionKind::ShmFile { path: n.to_string(), offset: v.offset, identity: file_identity(&st) })
                }
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

/// The readable shared mappings whose contents an image stores (a forked writer needs
/// them copied while the program is stopped: `writer::copy_shared_memory`).
pub(crate) fn shared_contents_stored(maps: &[Vma]) -> Vec<(u64, u64)> {
    let mm = mm_info();
    maps.iter()
        .filter(|v| v.shared && v.prot & libc::PROT_READ as u32 != 0 && !crate::wrap_ipc::is_sysv_shm(v))
        .filter(|v| matches!(classify(v, &mm), Some(RegionKind::Detached { .. } | RegionKind::ShmFile { .. })))
        .map(|v| (v.start, v.end))
        .collect()
}

fn page_is_zero(addr: u64) -> bool {
    // SAFETY: the page is mapped and readable (checked by the caller); shared memory is
    // read from its copy taken at the stop (writer.rs).
    let words = unsafe { core::slice::from_raw_parts(crate::writer::source(addr) as *const u64, 512) };
    words.iter().all(|&w| w == 0)
}

/// Decide which pages of a region to store, into `out`. With a `writer` (uncompressed
/// memory that does not change while it is written) each run is also checksummed and
/// handed to the writer as its pages are found, in the same pass over the memory (its
/// offset and crc are filled in); without one the runs come back with neither, for
/// `PageWriter::add`.
fn collect_runs(
    v: &Vma,
    kind: &RegionKind,
    scanner: &mut PageScanner,
    out: &mut Vec<PageRun>,
    dir: &str,
    writer: Option<&mut PageWriter>,
) -> Result<(), String> {
    let file = matches!(kind, RegionKind::File { .. });
    if (file && v.shared) || crate::wrap_ipc::is_sysv_shm(v) {
        return Ok(()); // the file (the SysV segment, stored with the object) holds the data
    }
    let mut runs = RunBuilder::new(out, writer);
    if let RegionKind::ShmFile { identity, offset, .. } = kind {
        // Stored by one process of the computation per file and range; the file's pages
        // past its end cannot be read (SIGBUS).
        if !crate::kobjects::claim_shm_file(dir, identity.dev, identity.ino, *offset, v.end - v.start) {
            return Ok(());
        }
        let in_file = identity.size.saturating_sub(*offset).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let end = v.end.min(v.start.saturating_add(in_file));
        runs.add_nonzero_pages(v.start, end);
        return runs.done();
    }
    // Memory whose backing is gone (deleted files, shared anonymous memory) and memory
    // mapped from the image this process was restarted from: every page holds data,
    // present in the page tables or not. Store the non-zero ones.
    if matches!(kind, RegionKind::Detached { .. }) || is_restored_image(v) {
        let end = if is_restored_image(v) { restored_image_end(v) } else { v.end };
        runs.add_nonzero_pages(v.start, end);
        return runs.done();
    }
    let scanned = scanner.scan(v.start, v.end, &mut |start, end, cat| {
        if cat & PAGE_IS_PFNZERO != 0 {
            return; // the shared zero page: reads as zeros, restart maps zeros anyway
        }
        // Private file mappings: only copy-on-write copies (anonymous pages) differ from
        // the file; the rest is mapped from the file again at restart.
        let keep = if file {
            (cat & PAGE_IS_PRESENT != 0 && cat & PAGE_IS_FILE == 0) || cat & PAGE_IS_SWAPPED != 0
        } else {
            cat & (PAGE_IS_PRESENT | PAGE_IS_SWAPPED) != 0
        };
        if !keep {
            return;
        }
        // An all-zero page need not be stored where restart maps zeros anyway (anonymous
        // memory) — but never in a file mapping, where the file's bytes would come back.
        let mut pa = start.max(v.start);
        let end = end.min(v.end);
        while pa < end {
            if file || !page_is_zero(pa) {
                runs.add(pa, PAGE_SIZE);
            }
            pa += PAGE_SIZE;
        }
    });
    runs.finish();
    scanned.map_err(|e| format!("pagemap of {:#x}-{:#x}: errno {e}", v.start, v.end))?;
    runs.done()
}

/// Coalesces pages into runs; with a writer, checksums each run and hands it over as it
/// grows, in spans of STREAM_SPAN (the pages were just read to check them for zeros, so
/// the checksum reads them from the CPU cache, not from memory again).
struct RunBuilder<'a> {
    out: &'a mut Vec<PageRun>,
    start: u64,
    len: u64,
    writer: Option<&'a mut PageWriter>,
    /// The current run's file offset, its crc so far, and how much of it was handed over.
    offset: u64,
    crc: u32,
    streamed: u64,
    /// The first write error (the scanner's callback cannot return one).
    err: Option<String>,
}

impl<'a> RunBuilder<'a> {
    fn new(out: &'a mut Vec<PageRun>, writer: Option<&'a mut PageWriter>) -> RunBuilder<'a> {
        RunBuilder { out, start: 0, len: 0, writer, offset: 0, crc: 0, streamed: 0, err: None }
    }

    fn add(&mut self, addr: u64, len: u64) {
        if self.len > 0 && self.start + self.len == addr && self.len < MAX_RUN {
            self.len += len;
        } else {
            self.finish();
            self.start = addr;
            self.len = len;
            self.crc = 0;
            self.streamed = 0;
            if let Some(w) = self.writer.as_deref_mut() {
                self.offset = w.begin_run();
            }
        }
        if self.len - self.streamed >= STREAM_SPAN {
            self.stream();
        }
    }

    /// Checksum the part of the current run not handed over yet and give it to the writer.
    fn stream(&mut self) {
        let Some(w) = self.writer.as_deref_mut() else { return };
        let n = self.len - self.streamed;
        if n == 0 || self.err.is_some() {
            return;
        }
        // Shared memory is read from its copy taken at the stop (writer.rs); a run never
        // crosses mappings, so the copy is contiguous too.
        let src = crate::writer::source(self.start + self.streamed);
        // SAFETY: the pages lie in a readable mapping of this process that nobody changes
        // while the image is written (stopped threads, or a forked copy); the volatile
        // mappings never come here (write_into).
        let data = unsafe { core::slice::from_raw_parts(src as *const u8, n as usize) };
        self.crc = crc32c::crc32c_append(self.crc, data);
        self.streamed = self.len;
        if let Err(e) = w.run_data(src, n) {
            self.err = Some(e);
        }
    }

    fn finish(&mut self) {
        if self.len == 0 {
            return;
        }
        let (mut offset, mut crc) = (0, 0);
        if self.writer.is_some() {
            self.stream();
            if let Some(w) = self.writer.as_deref_mut() {
                if let Err(e) = w.end_run() {
                    self.err.get_or_insert(e);
                }
            }
            (offset, crc) = (self.offset, self.crc);
        }
        self.out.push(PageRun { addr: self.start, len: self.len, offset, crc });
        self.len = 0;
    }

    /// Every page of `[start, end)` that is not all zeros (memory with no backing to tell
    /// which pages hold data), then the last run.
    fn add_nonzero_pages(&mut self, start: u64, end: u64) {
        let mut pa = start;
        while pa < end {
            if !page_is_zero(pa) {
                self.add(pa, PAGE_SIZE);
            }
            pa += PAGE_SIZE;
        }
        self.finish();
    }

    /// The last run, and the first write error if any.
    fn done(mut self) -> Result<(), String> {
        self.finish();
        self.err.map_or(Ok(()), Err)
    }
}

/// iovecs for one stretch of the file, waiting to be written.
struct Batch {
    iov: Vec<libc::iovec>,
    off: u64,
    bytes: u64,
}

impl Batch {
    fn new() -> Batch {
        Batch { iov: Vec::with_capacity(MAX_IOV), off: 0, bytes: 0 }
    }

    fn end(&self) -> u64 {
        self.off + self.bytes
    }

    /// Add `len` bytes at `src`, for file offset `off` (the batch's end when not empty).
    fn push(&mut self, src: u64, len: u64, off: u64) {
        if self.bytes == 0 {
            self.off = off;
        }
        self.bytes += len;
        if let Some(last) = self.iov.last_mut() {
            if last.iov_base as u64 + last.iov_len as u64 == src {
                last.iov_len += len as usize;
                return;
            }
        }
        self.iov.push(libc::iovec { iov_base: src as *mut libc::c_void, iov_len: len as usize });
    }

    fn clear(&mut self) {
        self.iov.clear();
        self.bytes = 0;
    }
}

/// The soft RLIMIT_FSIZE of this process (u64::MAX: none).
fn file_size_limit() -> u64 {
    let mut old = [0u64; 2];
    // SAFETY: old is a valid struct rlimit out-pointer.
    let rc = unsafe { sys::sc!(sys::SYS_prlimit64, 0, libc::RLIMIT_FSIZE, 0, old.as_mut_ptr()) };
    if rc == 0 {
        old[0]
    } else {
        u64::MAX
    }
}

/// Drop the first `n` bytes of `iov` (in place: written iovecs become empty).
fn advance(iov: &mut [libc::iovec], mut n: u64) {
    for v in iov.iter_mut() {
        if n == 0 {
            return;
        }
        let k = (v.iov_len as u64).min(n);
        v.iov_base = (v.iov_base as usize + k as usize) as *mut libc::c_void;
        v.iov_len -= k as usize;
        n -= k;
    }
}

/// Write `iov` at `*off` with as few pwritev calls as the kernel allows; on return `iov`
/// and `*off` describe what is left (nothing on success). Err(0): no progress.
fn pwritev_all(fd: i32, iov: &mut [libc::iovec], off: &mut u64) -> Result<(), i32> {
    let mut first = 0usize;
    while first < iov.len() {
        if iov[first].iov_len == 0 {
            first += 1;
            continue;
        }
        let rest = &iov[first..];
        // SAFETY: every iovec describes readable memory of this process.
        let r = unsafe { sys::sc!(libc::SYS_pwritev, fd, rest.as_ptr(), rest.len().min(MAX_IOV), *off, 0) };
        let n = match sys::check(r) {
            Ok(0) => return Err(0),
            Ok(n) => n as u64,
            Err(libc::EINTR) => continue,
            Err(e) => return Err(e),
        };
        *off += n;
        advance(&mut iov[first..], n);
    }
    Ok(())
}

fn write_error(e: i32) -> String {
    if e == 0 {
        "writing image: no progress (disk full?)".to_string()
    } else {
        format!("writing image: errno {e}")
    }
}

/// Direct writes in flight (Linux AIO), each with the iovecs it was given.
struct DirectAio {
    ctx: u64,
    iocbs: [sys::Iocb; AIO_DEPTH],
    batches: [Batch; AIO_DEPTH],
    busy: [bool; AIO_DEPTH],
    in_flight: usize,
    /// The file's size as raised ahead of the writes (u64::MAX: raising it failed).
    size: u64,
}

/// Writes page runs into the image, uncompressed (page-aligned, straight from memory) or
/// as compressed chunks.
///
/// Uncompressed runs arrive as a stream (`begin_run`, `run_data`..., `end_run`): a run's
/// first DIRECT_MIN_RUN bytes wait until it is known to be that long; then it goes
/// through `direct_fd` in pieces of AIO_PIECE, AIO_DEPTH of them in flight through Linux
/// AIO while the caller scans and checksums the next ones (or one synchronous `pwritev`
/// at a time without AIO). Shorter runs, and everything when there is no `direct_fd`, are
/// gathered into `pwritev` calls on `fd` through the page cache.
struct PageWriter {
    fd: i32,
    /// The same file opened with O_DIRECT for uncompressed page data, or -1 (none, or it
    /// refused a write: from then on everything goes through `fd`).
    direct_fd: i32,
    /// Whether any page data went through `direct_fd`.
    wrote_direct: bool,
    /// File offset where the next byte of page data goes.
    file_off: u64,
    /// Position in the page-data stream (+ HEADER_SIZE for compressed images): the offset
    /// runs get (for uncompressed images, their file offset).
    stream_off: u64,
    /// Uncompressed data waiting for `direct_fd`, and for `fd`.
    direct: Batch,
    buffered: Batch,
    aio: Option<DirectAio>,
    /// The file was made longer than its data (DirectAio::size): cut it at the end.
    grown: bool,
    /// The run being streamed goes through `direct_fd`; until that is decided, its first
    /// bytes (`und_len` at `und_src`, for file offset `und_off`) wait.
    run_direct: bool,
    und_src: u64,
    und_off: u64,
    und_len: u64,
    /// Page-cache bytes written since writeback was last started.
    unkicked: u64,
    /// Test hook (CR_TEST_DIRECT_REFUSE), and the AIO submissions and completions so far.
    test_refuse: u8,
    submitted: u32,
    reaped: u32,
    /// Copy buffer for memory that changes while it is written (our own stack).
    copy: Vec<u8>,
    /// Compression: encoder, its zstd workspace, the chunk being filled, the output buffer.
    encoder: Option<Encoder>,
    _workspace: Vec<u64>,
    stage: Vec<u8>,
    stage_len: usize,
    cbuf: Vec<u8>,
    chunks: Vec<Chunk>,
}

/// What the page writer leaves behind.
struct PagesWritten {
    /// File offset after the page data.
    end: u64,
    chunks: Vec<Chunk>,
    /// Some page data went through O_DIRECT.
    wrote_direct: bool,
    /// The file is longer than `end`: it must be cut to its final length.
    grown: bool,
}

impl PageWriter {
    /// `data_off`: where page data starts in the file (after the header and the fd table).
    /// `direct_fd`: the file opened with O_DIRECT (-1: none), used for uncompressed data.
    /// Creates the AIO context (a mapping of its own): call after /proc/self/maps was read.
    fn new(fd: i32, direct_fd: i32, compression: Compression, data_off: u64) -> Result<PageWriter, String> {
        let direct_fd = if compression == Compression::None { direct_fd } else { -1 };
        let aio = if direct_fd >= 0 && crate::config::get().direct_aio {
            sys::io_setup(AIO_DEPTH as u32).ok().map(|ctx| DirectAio {
                ctx,
                iocbs: [sys::Iocb::default(); AIO_DEPTH],
                batches: core::array::from_fn(|_| Batch::new()),
                busy: [false; AIO_DEPTH],
                in_flight: 0,
                size: 0,
            })
        } else {
            None
        };
        let mut w = PageWriter {
            fd,
            direct_fd,
            wrote_direct: false,
            file_off: data_off,
            // Uncompressed runs are where their offset says; compressed runs' offsets are
            // positions in the page-data stream, which starts at HEADER_SIZE.
            stream_off: if compression == Compression::None { data_off } else { HEADER_SIZE as u64 },
            direct: Batch::new(),
            buffered: Batch::new(),
            aio,
            grown: false,
            run_direct: false,
            und_src: 0,
            und_off: 0,
            und_len: 0,
            unkicked: 0,
            test_refuse: crate::config::get().test_direct_refuse,
            submitted: 0,
            reaped: 0,
            copy: Vec::new(),
            encoder: None,
            _workspace: Vec::new(),
            stage: Vec::new(),
            stage_len: 0,
            cbuf: Vec::new(),
            chunks: Vec::new(),
        };
        if compression != Compression::None {
            // Memory reserved here, from the preload's own allocator: the codec itself
            // never allocates (see crust_format::codec).
            let level = crate::config::get().zstd_level;
            let ws_len = Encoder::workspace_len_at(compression, level);
            w._workspace = vec![0u64; ws_len / 8 + 1];
            // SAFETY: the workspace lives as long as the writer (it is dropped after the
            // encoder, which is declared before it) and is used by nothing else.
            let enc = unsafe { Encoder::in_workspace_at(compression, level, w._workspace.as_mut_ptr().cast(), ws_len + 8) };
            w.encoder = Some(enc.ok_or_else(|| format!("cannot set up {} compression", compression.name()))?);
            w.stage = vec![0u8; CHUNK_SIZE];
            w.cbuf = vec![0u8; max_compressed_len(CHUNK_SIZE)];
        }
        Ok(w)
    }

    /// Store one whole run (its offset and crc are filled in). `volatile`: the memory may
    /// change while being written (our own stack), so it is copied first. `shared`: the
    /// run is in shared memory, which a process outside the computation may change
    /// meanwhile (compressed data is then always copied before it is checksummed).
    fn add(&mut self, run: &mut PageRun, volatile: bool, shared: bool) -> Result<(), String> {
        // Shared memory is read from its copy taken at the stop (writer.rs).
        let src_addr = crate::writer::source(run.addr);
        if self.encoder.is_some() {
            run.offset = self.stream_off;
            self.stream_off += run.len;
            return self.add_compressed(run, volatile || (shared && src_addr == run.addr));
        }
        if !volatile {
            run.offset = self.begin_run();
            // SAFETY: the run lies in a readable mapping of this process that nobody
            // changes while the image is written (the program's threads are stopped).
            let data = unsafe { core::slice::from_raw_parts(src_addr as *const u8, run.len as usize) };
            run.crc = crc32c::crc32c(data);
            self.run_data(src_addr, run.len)?;
            return self.end_run();
        }
        if self.copy.is_empty() {
            self.copy = vec![0u8; 4 << 20];
        }
        run.offset = self.stream_off;
        let mut crc = 0u32;
        let mut done = 0usize;
        let len = run.len as usize;
        while done < len {
            let n = (len - done).min(self.copy.len());
            // SAFETY: the run lies in a readable mapping of this process.
            let src = unsafe { core::slice::from_raw_parts((src_addr as usize + done) as *const u8, n) };
            self.copy[..n].copy_from_slice(src);
            crc = crc32c::crc32c_append(crc, &self.copy[..n]);
            sys::pwrite_all(self.fd, &self.copy[..n], self.file_off).map_err(write_error)?;
            self.file_off += n as u64;
            self.stream_off += n as u64;
            done += n;
        }
        run.crc = crc;
        Ok(())
    }

    /// Start an uncompressed run; returns its offset.
    fn begin_run(&mut self) -> u64 {
        self.run_direct = false;
        self.und_len = 0;
        self.stream_off
    }

    /// The next `len` bytes of the run being streamed, at `src` (right after the previous
    /// bytes in memory). They must not change until written (`drain`).
    fn run_data(&mut self, src: u64, len: u64) -> Result<(), String> {
        let off = self.stream_off;
        self.stream_off += len;
        self.file_off += len;
        if self.direct_fd < 0 {
            self.settle_undecided()?;
            return self.push_buffered(src, len, off);
        }
        if self.run_direct {
            return self.push_direct(src, len, off);
        }
        if self.und_len == 0 {
            (self.und_src, self.und_off) = (src, off);
        }
        self.und_len += len;
        if self.und_len >= DIRECT_MIN_RUN {
            self.run_direct = true;
            let (s, o, n) = (self.und_src, self.und_off, self.und_len);
            self.und_len = 0;
            self.push_direct(s, n, o)?;
        }
        Ok(())
    }

    /// The run being streamed is complete.
    fn end_run(&mut self) -> Result<(), String> {
        self.settle_undecided()
    }

    /// A run shorter than DIRECT_MIN_RUN goes through the page cache: crrestart's mapped
    /// restore reads exactly those, and finds them there after a restart on this machine.
    fn settle_undecided(&mut self) -> Result<(), String> {
        if self.und_len == 0 {
            return Ok(());
        }
        let (s, o, n) = (self.und_src, self.und_off, self.und_len);
        self.und_len = 0;
        self.push_buffered(s, n, o)
    }

    fn push_direct(&mut self, src: u64, len: u64, off: u64) -> Result<(), String> {
        // Page-cache data is written before the direct stream moves on (it cannot join a
        // later page-cache batch anyway: the file offsets in between are this run's), so
        // that memory is never read long after it was checksummed.
        self.flush_buffered()?;
        if self.direct.bytes > 0 && self.direct.end() != off {
            self.submit_direct()?;
        }
        let mut done = 0;
        while done < len {
            if self.direct_fd < 0 {
                return self.push_buffered(src + done, len - done, off + done);
            }
            let n = (len - done).min(AIO_PIECE - self.direct.bytes);
            self.direct.push(src + done, n, off + done);
            done += n;
            if self.direct.bytes >= AIO_PIECE || self.direct.iov.len() == MAX_IOV {
                self.submit_direct()?;
            }
        }
        Ok(())
    }

    fn push_buffered(&mut self, src: u64, len: u64, off: u64) -> Result<(), String> {
        if self.buffered.bytes > 0 && self.buffered.end() != off {
            self.flush_buffered()?;
        }
        let mut done = 0;
        while done < len {
            let n = (len - done).min(WRITEBACK_STEP - self.buffered.bytes);
            self.buffered.push(src + done, n, off + done);
            done += n;
            if self.buffered.bytes >= WRITEBACK_STEP || self.buffered.iov.len() == MAX_IOV {
                self.flush_buffered()?;
            }
        }
        Ok(())
    }

    /// Write the page-cache batch, and start writing back once a step's worth is dirty
    /// (sync_file_range), so that the final fsync has little left to wait for.
    fn flush_buffered(&mut self) -> Result<(), String> {
        if self.buffered.bytes == 0 {
            return Ok(());
        }
        let mut off = self.buffered.off;
        let r = pwritev_all(self.fd, &mut self.buffered.iov, &mut off);
        self.unkicked += self.buffered.bytes;
        self.buffered.clear();
        r.map_err(write_error)?;
        self.kick_writeback();
        Ok(())
    }

    fn kick_writeback(&mut self) {
        if self.unkicked >= WRITEBACK_STEP {
            // SAFETY: no memory arguments; SYNC_FILE_RANGE_WRITE only starts I/O (on every
            // dirty page of the file not under writeback yet).
            unsafe {
                sys::sc!(libc::SYS_sync_file_range, self.fd, 0, 0, libc::SYNC_FILE_RANGE_WRITE);
            }
            self.unkicked = 0;
        }
    }

    /// Send the direct batch on its way: through AIO (waiting for a free slot first), or
    /// written synchronously.
    fn submit_direct(&mut self) -> Result<(), String> {
        if self.direct.bytes == 0 {
            return Ok(());
        }
        if self.direct_fd < 0 || self.aio.is_none() {
            let mut batch = core::mem::replace(&mut self.direct, Batch { iov: Vec::new(), off: 0, bytes: 0 });
            let r = self.write_sync(&mut batch, 0);
            batch.clear();
            self.direct = batch;
            return r;
        }
        let end = self.direct.end();
        if let Some(aio) = self.aio.as_mut() {
            // ext4 makes a direct write that extends the file wait for the disk inside
            // io_submit: raise the size ahead (cut back to the image's length at the end).
            if end > aio.size {
                // Never past RLIMIT_FSIZE: the kernel would send SIGXFSZ.
                let want = (end + GROW_STEP).min(file_size_limit());
                if want >= end && sys::ftruncate(self.fd, want).is_ok() {
                    aio.size = want;
                    self.grown = true;
                } else {
                    aio.size = u64::MAX;
                }
            }
        }
        if self.aio.as_ref().is_some_and(|a| a.in_flight == AIO_DEPTH) {
            self.reap(1)?;
        }
        let direct_fd = self.direct_fd;
        let refuse = self.test_refuse == 1 && self.submitted == 1;
        self.submitted += 1;
        let Some(aio) = self.aio.as_mut() else { unreachable!("checked above") };
        let k = aio.busy.iter().position(|b| !b).unwrap_or(0);
        core::mem::swap(&mut aio.batches[k], &mut self.direct);
        self.direct.clear();
        let b = &aio.batches[k];
        aio.iocbs[k] = sys::Iocb {
            data: k as u64,
            opcode: sys::IOCB_CMD_PWRITEV,
            fildes: direct_fd as u32,
            buf: b.iov.as_ptr() as u64,
            nbytes: b.iov.len() as u64,
            offset: b.off as i64,
            ..Default::default()
        };
        // SAFETY: the iocb, its iovec array and the memory they describe stay untouched
        // until the request is reaped (reap, drain, or io_destroy on drop, which waits).
        let submitted = if refuse { Err(libc::EAGAIN) } else { unsafe { sys::io_submit_one(aio.ctx, &aio.iocbs[k]) } };
        match submitted {
            Ok(()) => {
                aio.busy[k] = true;
                aio.in_flight += 1;
                Ok(())
            }
            Err(_) => {
                // AIO refused it (no room, an odd file): wait for the others, then this
                // one and the next ones are written synchronously.
                let mut batch = core::mem::replace(&mut aio.batches[k], Batch { iov: Vec::new(), off: 0, bytes: 0 });
                let drained = self.drain_aio();
                self.close_aio();
                let r = self.write_sync(&mut batch, 0);
                drained.and(r)
            }
        }
    }

    /// Write what is left of `batch` after its first `skip` bytes synchronously, through
    /// `direct_fd` while it takes them, else through the page cache.
    fn write_sync(&mut self, batch: &mut Batch, skip: u64) -> Result<(), String> {
        advance(&mut batch.iov, skip);
        let mut off = batch.off + skip;
        if self.direct_fd >= 0 {
            let start = off;
            let r = pwritev_all(self.direct_fd, &mut batch.iov, &mut off);
            if off > start {
                self.wrote_direct = true;
            }
            match r {
                Ok(()) => return Ok(()),
                Err(0) => return Err(write_error(0)),
                // O_DIRECT refused this write (memory the kernel cannot pin, an alignment
                // the device does not take...): the rest goes through the page cache; a
                // genuine I/O error shows up there again.
                Err(_) => self.direct_fd = -1,
            }
        }
        pwritev_all(self.fd, &mut batch.iov, &mut off).map_err(write_error)
    }

    /// Wait for at least `min` direct writes; finish short or failed ones synchronously.
    fn reap(&mut self, min: usize) -> Result<(), String> {
        let Some(aio) = self.aio.as_mut() else { return Ok(()) };
        let mut ev = [sys::IoEvent::default(); AIO_DEPTH];
        let n = sys::io_getevents(aio.ctx, min.min(aio.in_flight), &mut ev)
            .map_err(|e| format!("waiting for image writes (io_getevents): errno {e}"))?;
        let mut result = Ok(());
        for e in &ev[..n] {
            let Some(aio) = self.aio.as_mut() else { break };
            let k = (e.data as usize).min(AIO_DEPTH - 1);
            aio.busy[k] = false;
            aio.in_flight -= 1;
            // The test hook takes the second completion as failed (its data is on the
            // disk all the same: writing it again through the page cache changes nothing).
            let res = if self.test_refuse == 2 && self.reaped == 1 { -(libc::EINVAL as i64) } else { e.res };
            self.reaped += 1;
            let want = aio.batches[k].bytes;
            let got = if res < 0 { 0 } else { (res as u64).min(want) };
            if got > 0 {
                self.wrote_direct = true;
            }
            if res < 0 {
                // Refused (see write_sync): the rest goes through the page cache.
                self.direct_fd = -1;
            }
            if got < want {
                let mut batch = core::mem::replace(&mut aio.batches[k], Batch { iov: Vec::new(), off: 0, bytes: 0 });
                let r = self.write_sync(&mut batch, got);
                if let Some(aio) = self.aio.as_mut() {
                    aio.batches[k] = batch;
                }
                if result.is_ok() {
                    result = r;
                }
            }
            if let Some(aio) = self.aio.as_mut() {
                aio.batches[k].clear();
            }
        }
        result
    }

    fn drain_aio(&mut self) -> Result<(), String> {
        while self.aio.as_ref().is_some_and(|a| a.in_flight > 0) {
            self.reap(AIO_DEPTH)?;
        }
        Ok(())
    }

    /// Done with AIO: with nothing in flight the context is left for
    /// [`release_direct_aio`] (destroying one waits for an RCU grace period, tens of
    /// milliseconds, which the program need not spend stopped); else destroyed now, which
    /// waits for what is in flight.
    fn close_aio(&mut self) {
        if let Some(aio) = self.aio.take() {
            if aio.in_flight == 0 {
                release_direct_aio();
                SPENT_AIO_CTX.store(aio.ctx, Ordering::Relaxed);
            } else {
                sys::io_destroy(aio.ctx);
            }
        }
    }

    /// Make sure every byte given so far has left the process's memory (before an
    /// unreadable area gets its protection back).
    fn flush_pending(&mut self) -> Result<(), String> {
        if self.encoder.is_none() {
            self.drain()?;
        }
        Ok(())
    }

    /// Write everything pending and wait for it.
    fn drain(&mut self) -> Result<(), String> {
        self.settle_undecided()?;
        self.submit_direct()?;
        self.drain_aio()?;
        self.flush_buffered()
    }

    /// `volatile`: the memory may change while it is read (copy it before checksumming).
    fn add_compressed(&mut self, run: &mut PageRun, volatile: bool) -> Result<(), String> {
        let src_addr = crate::writer::source(run.addr);
        let mut crc = 0u32;
        let mut done = 0usize;
        let len = run.len as usize;
        while done < len {
            if !volatile && self.stage_len == 0 && len - done >= CHUNK_SIZE {
                // A whole chunk of memory that nobody changes while the image is written:
                // compressed where it is, without the copy into the chunk buffer.
                // SAFETY: the run lies in a readable mapping of this process.
                let src = unsafe { core::slice::from_raw_parts((src_addr as usize + done) as *const u8, CHUNK_SIZE) };
                crc = crc32c::crc32c_append(crc, src);
                self.store_chunk(src)?;
                done += CHUNK_SIZE;
                continue;
            }
            let n = (len - done).min(CHUNK_SIZE - self.stage_len);
            // SAFETY: the run lies in a readable mapping of this process.
            let src = unsafe { core::slice::from_raw_parts((src_addr as usize + done) as *const u8, n) };
            let dst = &mut self.stage[self.stage_len..self.stage_len + n];
            dst.copy_from_slice(src);
            // The checksum describes the copy, which is what gets compressed.
            crc = crc32c::crc32c_append(crc, dst);
            self.stage_len += n;
            done += n;
            if self.stage_len == CHUNK_SIZE {
                self.write_chunk()?;
            }
        }
        run.crc = crc;
        Ok(())
    }

    /// Compress and write the chunk buffer.
    fn write_chunk(&mut self) -> Result<(), String> {
        if self.stage_len == 0 {
            return Ok(());
        }
        let len = self.stage_len;
        self.stage_len = 0;
        // SAFETY: the stage holds `len` bytes, and store_chunk never touches the stage.
        let src = unsafe { core::slice::from_raw_parts(self.stage.as_ptr(), len) };
        self.store_chunk(src)
    }

    /// Compress `src` (one chunk's data) and write it as the next chunk.
    fn store_chunk(&mut self, src: &[u8]) -> Result<(), String> {
        let enc = self.encoder.as_mut().expect("compressing writer");
        let n = enc.compress(src, &mut self.cbuf).map_err(|e| format!("compressing page data: {e}"))?;
        // Data that does not compress is stored raw (clen == ulen marks it).
        let stored: &[u8] = if n >= src.len() { src } else { &self.cbuf[..n] };
        let crc = crc32c::crc32c(stored);
        sys::pwrite_all(self.fd, stored, self.file_off).map_err(write_error)?;
        self.chunks.push(Chunk { offset: self.file_off, clen: stored.len() as u32, ulen: src.len() as u32, crc });
        self.file_off += stored.len() as u64;
        self.unkicked += stored.len() as u64;
        self.kick_writeback();
        Ok(())
    }

    /// Write what is pending and wait for it.
    fn finish(mut self) -> Result<PagesWritten, String> {
        if self.encoder.is_some() {
            self.write_chunk()?;
        } else {
            self.drain()?;
        }
        self.close_aio();
        Ok(PagesWritten {
            end: self.file_off,
            chunks: core::mem::take(&mut self.chunks),
            wrote_direct: self.wrote_direct,
            grown: self.grown,
        })
    }
}

impl Drop for PageWriter {
    /// On an error, the writes still in flight end before the memory they read can go.
    fn drop(&mut self) {
        self.close_aio();
    }
}

/// A static in the preload's initialized data (.data).
static DATA_MARKER: AtomicU64 = AtomicU64::new(1);

/// Which mappings hold memory that changes while the image is being written: our stack,
/// and the preload's own writable data (the scratch allocator's bump pointer, fd
/// bookkeeping...): the read-write mapping of the library that holds its statics and the
/// anonymous mapping right after it (the rest of .bss). Their pages are copied before they
/// are checksummed and written, so the checksum describes exactly the bytes in the file.
fn volatile_mappings(maps: &[Vma]) -> Vec<bool> {
    let sp: u64;
    // SAFETY: reads a register.
    unsafe { core::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags)) };
    let data = &DATA_MARKER as *const AtomicU64 as u64;
    let mut out = vec![false; maps.len()];
    for (i, v) in maps.iter().enumerate() {
        if v.start <= sp && sp < v.end {
            out[i] = true;
        }
        if v.start <= data && data < v.end {
            // Every writable mapping of the library, and the anonymous .bss after it.
            for (k, w) in maps.iter().enumerate() {
                if w.inode == v.inode && w.dev == v.dev && w.prot & libc::PROT_WRITE as u32 != 0 {
                    out[k] = true;
                    if let Some(next) = maps.get(k + 1) {
                        if next.start == w.end && next.inode == 0 && next.name.is_empty() {
                            out[k + 1] = true;
                        }
                    }
                }
            }
        }
    }
    out
}

fn describe_fds(dir: &str) -> Result<Vec<FdRecord>, String> {
    let mut out = Vec::new();
    // SAFETY: only the checkpoint thread writes CLOEXEC_BITS, while threads are stopped.
    let bits = unsafe { &mut *core::ptr::addr_of_mut!(CLOEXEC_BITS) };
    bits.iter_mut().for_each(|b| *b = 0);
    let fds = procfs::list_fds();
    let mut deleted_total = 0u64;
    let mut saved_total = 0u64;
    for &fd in &fds {
        if is_own_fd(fd) {
            continue;
        }
        let target = procfs::readlink_string(format!("/proc/self/fd/{fd}").as_bytes());
        if crate::api::is_ignored_fd(fd) {
            // "Do not checkpoint" (cr_ignore_fd): listed, so that it can be substituted;
            // closed after a restart otherwise.
            let flags = sys::fcntl(fd, libc::F_GETFL, 0).unwrap_or(0) as i32;
            let cloexec = sys::fcntl(fd, libc::F_GETFD, 0).unwrap_or(0) as i32 & libc::FD_CLOEXEC != 0;
            out.push(FdRecord { fd, flags, cloexec, offset: 0, kind: FdKind::Ignored { description: target } });
            continue;
        }
        let Ok(st) = sys::fstat(fd) else { continue };
        let flags = sys::fcntl(fd, libc::F_GETFL, 0).unwrap_or(0) as i32;
        let cloexec = sys::fcntl(fd, libc::F_GETFD, 0).unwrap_or(0) as i32 & libc::FD_CLOEXEC != 0;
        if cloexec && (fd as usize) < 65536 {
            bits[fd as usize / 64] |= 1 << (fd % 64);
        }
        let offset = sys::lseek(fd, 0, libc::SEEK_CUR).unwrap_or(0);
        if let Some(kind) = crate::wrap_ipc::mqueue_kind(fd, &target, &st, dir) {
            out.push(FdRecord { fd, flags, cloexec, offset: 0, kind: kind? });
            continue;
        }
        let kind = match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => {
                if let Some(path) = target.strip_suffix(" (deleted)") {
                    deleted_total += st.st_size as u64;
                    if deleted_total > MAX_DELETED_TOTAL {
                        return Err(format!(
                            "fd {fd} ({target}): the files this process holds deleted while open exceed {} MiB together, \
                             more than crust stores (mark some with cr_ignore_fd to leave them out)",
                            MAX_DELETED_TOTAL >> 20
                        ));
                    }
                    let data = deleted_content(fd, &target, st.st_size as u64)?;
                    crate::kobjects::sealed_memfd(fd, path, &data).unwrap_or(FdKind::Deleted {
                        path: path.to_string(),
                        data,
                        memfd: path.starts_with("/memfd:"),
                    })
                } else if flags & libc::O_ACCMODE == libc::O_RDWR
                    && flags & libc::O_APPEND == 0
                    && (st.st_size as u64) <= MAX_SAVED
                    && saved_total + st.st_size as u64 <= MAX_SAVED_TOTAL
                {
                    // Read-write, not append-only: a database or the like, changed in
                    // place after the checkpoint; its content is kept.
                    saved_total += st.st_size as u64;
                    FdKind::SavedFile { path: target.clone(), identity: file_identity(&st), data: deleted_content(fd, &target, st.st_size as u64)? }
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
            _ if target == "anon_inode:inotify" => crate::kobjects::describe_inotify(fd)?,
            _ => anon_kind(fd, &target).unwrap_or_else(|| FdKind::Unsupported { description: target.clone() }),
        };
        if let Some(why) = cannot_restore(fd, &kind) {
            return Err(format!(
                "fd {fd} ({}) is {why}, which crust cannot checkpoint yet; the program can mark it \
                 \"do not checkpoint\" (cr_ignore_fd) to leave it out (then it is closed after a restart, \
                 or substituted with crrestart --fd)",
                kind.target()
            ));
        }
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

/// eventfd and timerfd state from `/proc/self/fdinfo` (None: another kind, or a format
/// this kernel does not show).
fn anon_kind(fd: i32, target: &str) -> Option<FdKind> {
    let kind = target.strip_prefix("anon_inode:")?.trim_start_matches('[').trim_end_matches(']');
    if !matches!(kind, "eventfd" | "timerfd" | "signalfd" | "eventpoll" | "pidfd") {
        return None;
    }
    let info = procfs::read_string(format!("/proc/self/fdinfo/{fd}").as_bytes());
    if kind == "pidfd" {
        // "Pid: N" (-1 once the process is gone and reaped: not restorable).
        let pid = info.lines().find_map(|l| l.strip_prefix("Pid:"))?.trim().parse::<i32>().ok().filter(|&p| p > 0)?;
        return Some(FdKind::PidFd { real_pid: pid, vpid: crate::vpid::to_virtual(pid) });
    }
    if kind == "signalfd" {
        return Some(FdKind::SignalFd { mask: procfs::status_value(&info, "sigmask:", 16)? });
    }
    if kind == "eventpoll" {
        // "tfd: N events: HEX data: HEX  pos:P ino:HEX sdev:HEX" per registration.
        let mut entries = Vec::new();
        for l in info.lines().filter(|l| l.starts_with("tfd:")) {
            let w: Vec<&str> = l.split_whitespace().collect();
            let field = |name: &str| w.iter().position(|x| *x == name).and_then(|i| w.get(i + 1)).copied();
            let tfd: i32 = field("tfd:")?.parse().ok()?;
            let events = u32::from_str_radix(field("events:")?, 16).ok()?;
            let data = u64::from_str_radix(field("data:")?, 16).ok()?;
            let ino = w.iter().find_map(|x| x.strip_prefix("ino:")).and_then(|v| u64::from_str_radix(v, 16).ok());
            // A registration whose fd number now holds another file (closed, reused)
            // cannot be made again through that number: left out.
            match sys::fstat(tfd) {
                Ok(st) if ino.is_none_or(|i| i == st.st_ino) && !is_own_fd(tfd) => entries.push(EpollEntry { tfd, events, data }),
                _ => {}
            }
        }
        entries.sort_by_key(|e| e.tfd);
        return Some(FdKind::Epoll { entries });
    }
    if kind == "eventfd" {
        return Some(FdKind::EventFd {
            count: procfs::status_value(&info, "eventfd-count:", 16)?,
            semaphore: procfs::status_value(&info, "eventfd-semaphore:", 10).unwrap_or(0) != 0,
        });
    }
    // "it_value: (SECS, NSECS)": the time left, relative, whatever the settime flags.
    let pair = |key: &str| -> Option<u64> {
        let v = info.lines().find_map(|l| l.strip_prefix(key))?;
        let (a, b) = v.trim().trim_start_matches('(').trim_end_matches(')').split_once(',')?;
        Some(a.trim().parse::<u64>().ok()? * 1_000_000_000 + b.trim().parse::<u64>().ok()?)
    };
    if let Some(abs) = crate::kobjects::absolute_timerfd(&info, pair("it_value:")?, pair("it_interval:")?) {
        return Some(abs);
    }
    Some(FdKind::TimerFd {
        clockid: procfs::status_value(&info, "clockid:", 10)? as i32,
        value_ns: pair("it_value:")?,
        interval_ns: pair("it_interval:")?,
        ticks: procfs::status_value(&info, "ticks:", 10)?,
    })
}

/// Most bytes stored for one file deleted while open, and for all of a process's (they
/// live in the metadata, which a reader accepts up to 1 GiB).
const MAX_DELETED: u64 = 64 << 20;
const MAX_DELETED_TOTAL: u64 = 128 << 20;
/// Most bytes of a read-write file saved whole, and of all of a process's; larger ones
/// are only truncated back at restart.
const MAX_SAVED: u64 = 16 << 20;
const MAX_SAVED_TOTAL: u64 = 64 << 20;

/// The whole content of a file (deleted while open, or saved whole), read through a fresh
/// read-only description (the program's may be write-only; its offset must not move).
fn deleted_content(fd: i32, target: &str, size: u64) -> Result<Vec<u8>, String> {
    if size > MAX_DELETED {
        return Err(format!(
            "fd {fd} ({target}) is a file deleted while open holding {size} bytes; crust stores at most {} MiB of such a file \
             (mark it with cr_ignore_fd to leave it out)",
            MAX_DELETED >> 20
        ));
    }
    let src = sys::open(format!("/proc/self/fd/{fd}").as_bytes(), libc::O_RDONLY | libc::O_CLOEXEC, 0)
        .map_err(|e| format!("cannot read fd {fd} ({target}), deleted while open: errno {e}"))?;
    let mut data = vec![0u8; size as usize];
    let mut done = 0usize;
    let r = loop {
        if done == data.len() {
            break Ok(());
        }
        match sys::pread(src, &mut data[done..], done as u64) {
            Ok(0) => break Ok(()),
            Ok(n) => done += n,
            Err(libc::EINTR) => {}
            Err(e) => break Err(format!("reading fd {fd} ({target}), deleted while open: errno {e}")),
        }
    };
    sys::close(src);
    data.truncate(done);
    r.map(|()| data)
}

/// Character devices a restart reopens by path and gets the same thing back.
const REOPENABLE_DEVICES: [&str; 5] = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"];

/// Why an fd cannot be restored (None: it can). Checked at checkpoint time, so that the
/// checkpoint fails with the fd's name rather than a restart later. fds 0-2 that are
/// sockets are the program's connection to the outside and become crrestart's own.
fn cannot_restore(fd: i32, kind: &FdKind) -> Option<String> {
    match kind {
        FdKind::Socket { .. } if fd > 2 => Some("a socket".to_string()),
        FdKind::CharDevice { path, .. } if !REOPENABLE_DEVICES.contains(&path.as_str()) => {
            Some(format!("the device {path}"))
        }
        FdKind::Unsupported { description } => {
            let what = match description.strip_prefix("anon_inode:") {
                Some(k) => {
                    let k = k.trim_start_matches('[').trim_end_matches(']');
                    match k {
                        "io_uring" => "an io_uring instance".to_string(),
                        "userfaultfd" => "a userfaultfd".to_string(),
                        "perf_event" => "a perf event".to_string(),
                        k => format!("a kernel object of kind {k}"),
                    }
                }
                None => format!("of an unknown kind ({description})"),
            };
            Some(what)
        }
        _ => None,
    }
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

/// What only the process itself can tell, read while its threads are stopped: a forked
/// writer is another process (its own pid and parent, the checkpoint thread's name, no
/// children) and shares the program's open file descriptions, whose offsets and pipe
/// contents move on as soon as the program resumes.
pub struct StoppedFacts {
    pub real_pid: i32,
    pub vppid: i32,
    pub comm: String,
    pub fds: Vec<FdRecord>,
    /// The process-tree part (children, shared fds, ids) without `shared_maps`, which the
    /// memory walk adds.
    pub tree: TreeInfo,
}

/// Capture [`StoppedFacts`]. Every process of the computation must be stopped (pipe
/// contents are copied, by one claimant per pipe in `dir`).
pub fn capture_stopped_facts(dir: &str) -> Result<StoppedFacts, String> {
    crate::posix_timers::save()?;
    let fds = describe_fds(dir)?;
    let mut tree = crate::tree::describe(&fds, Vec::new());
    (tree.sysv, tree.shm_attaches) = crate::wrap_ipc::capture(dir)?;
    Ok(StoppedFacts {
        real_pid: sys::getpid(),
        vppid: crate::vpid::to_virtual(sys::getppid()),
        comm: procfs::read_string(b"/proc/self/comm").trim_end().to_string(),
        fds,
        tree,
    })
}

/// Everything a dump needs to know from the caller.
pub struct DumpRequest<'a> {
    pub dir: &'a str,
    pub comp_id: u64,
    pub generation: u64,
    pub restart: RestartEntry,
    /// How to store page data.
    pub compression: Compression,
    pub facts: &'a StoppedFacts,
}

/// Write the image of this address space into `req.dir`: either the stopped process
/// itself, or its forked copy-on-write writer (`writer.rs`), which sees the memory as it
/// was when the threads were stopped. Uses only raw system calls and the scratch arena.
pub fn write_image(req: &DumpRequest) -> Result<DumpResult, String> {
    // Not in this image: the previous image's AIO ring.
    release_direct_aio();
    if !crate::writer::in_writer() {
        // Written from live memory: no stopped thread may still be on its way to sleep.
        quiesce::wait_until_asleep()?;
    }
    let vpid = crate::vpid::vpid();
    let file_name = crust_format::manifest::image_file_name(vpid);
    let final_path = format!("{}/{}", req.dir, file_name);
    let tmp_path = format!("{}/.{}.tmp", req.dir, file_name);
    let fd = sys::open(tmp_path.as_bytes(), libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, 0o600)
        .map_err(|e| format!("cannot create {tmp_path}: errno {e}"))?;
    add_own_fd(fd);
    // A second descriptor with O_DIRECT for the page data (see the module comment);
    // tmpfs and some other filesystems refuse it with EINVAL: then there is none.
    let direct_fd = if crate::config::get().direct_io && req.compression == Compression::None && !crate::writer::in_writer() {
        sys::open(tmp_path.as_bytes(), libc::O_WRONLY | libc::O_DIRECT, 0).unwrap_or(-1)
    } else {
        -1
    };
    if direct_fd >= 0 {
        add_own_fd(direct_fd);
    }
    let r = write_into(fd, direct_fd, req, vpid);
    if direct_fd >= 0 {
        remove_own_fd(direct_fd);
        sys::close(direct_fd);
    }
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

fn write_into(fd: i32, direct_fd: i32, req: &DumpRequest, vpid: i32) -> Result<(u64, u64), String> {
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
    let mut scanner = PageScanner::open().map_err(|e| format!("open /proc/self/pagemap: errno {e}"))?;
    add_own_fd(scanner.fd());
    let fds = req.facts.fds.clone();
    let mut shared_maps = Vec::new();
    let mm = mm_info();
    let volatile = volatile_mappings(&maps);
    let mut regions: Vec<Region> = Vec::new();
    let mut memory_bytes = 0u64;
    // The fd table goes right after the header, so that it can be read without the rest.
    let (fd_table, fd_table_crc) =
        crust_format::image::encode_fd_table(&fds).map_err(|e| format!("encoding the fd table: {e}"))?;
    sys::pwrite_all(fd, &fd_table, HEADER_SIZE as u64).map_err(|e| format!("writing the fd table: errno {e}"))?;
    let data_off = crust_format::image::data_start(fd_table.len() as u64);
    let result = (|| -> Result<PagesWritten, String> {
        let mut writer = PageWriter::new(fd, direct_fd, req.compression, data_off)?;
        for (vi, v) in maps.iter().enumerate() {
            let Some(kind) = classify(v, &mm) else { continue };
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
                // Uncompressed memory that nobody changes while it is written is checked
                // for zero pages, checksummed and written in one pass (collect_runs);
                // the rest is collected first and then stored run by run.
                let stream = req.compression == Compression::None && !volatile[vi];
                collect_runs(v, &kind, &mut scanner, &mut runs, req.dir, stream.then_some(&mut writer))?;
                for run in runs.iter_mut() {
                    if !stream {
                        writer.add(run, volatile[vi], v.shared)?;
                    }
                    memory_bytes += run.len;
                }
                if unreadable {
                    // The data must be out before the protection goes back (an area
                    // without any, like a guard page, leaves the writes in flight alone).
                    if !runs.is_empty() {
                        writer.flush_pending()?;
                    }
                    // SAFETY: restoring the original protection.
                    unsafe {
                        let _ = sys::mprotect(v.start as usize, (v.end - v.start) as usize, v.prot as i32);
                    }
                }
            }
            if v.shared && matches!(kind, RegionKind::Detached { .. }) && !crate::wrap_ipc::is_sysv_shm(v) {
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
        writer.finish()
    })();
    remove_own_fd(scanner.fd());
    drop(scanner);
    let PagesWritten { end: offset, chunks, wrote_direct, grown } = result?;

    let threads: Vec<ThreadRecord> = quiesce::slots()
        .iter()
        .map(|s| ThreadRecord {
            vtid: crate::vpid::to_virtual(s.real_tid),
            real_tid: s.real_tid,
            is_main: s.real_tid == req.facts.real_pid,
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
    let mut tree = req.facts.tree.clone();
    tree.shared_maps = shared_maps;
    let cfg = crate::config::get();
    let (hostname, release) = uname();
    let meta = ImageMeta {
        comp_id: req.comp_id,
        generation: req.generation,
        vpid,
        vppid: req.facts.vppid,
        real_pid: req.facts.real_pid,
        hostname,
        kernel_release: release,
        xcr0: xcr0(),
        program: cfg.program.clone(),
        args: cfg.args.clone(),
        comm: req.facts.comm.clone(),
        exe: procfs::readlink_string(b"/proc/self/exe"),
        cwd: procfs::readlink_string(b"/proc/self/cwd"),
        umask: umask_now(),
        rlimits: rlimits(),
        mm,
        auxv: auxv(),
        restart: req.restart,
        ckpt_signal: cfg.signal,
        threads,
        fds,
        regions,
        taken_unix: sys::clock_realtime_secs(),
        tree,
        compression: req.compression,
        chunks,
    };
    let (meta_bytes, meta_crc) = crust_format::image::encode_meta(&meta).map_err(|e| format!("encoding metadata: {e}"))?;
    sys::pwrite_all(fd, &meta_bytes, offset).map_err(|e| format!("writing metadata: errno {e}"))?;
    let file_len = offset + meta_bytes.len() as u64;
    if grown {
        sys::ftruncate(fd, file_len).map_err(|e| format!("cutting the image to its length: errno {e}"))?;
    }
    let header = Header {
        version: VERSION,
        flags: if wrote_direct { FLAG_DIRECT_IO } else { 0 },
        meta_offset: offset,
        meta_len: meta_bytes.len() as u64,
        meta_crc,
        data_offset: data_off,
        data_len: offset - data_off,
        file_len,
        fd_table_len: fd_table.len() as u64,
        fd_table_crc,
    };
    sys::pwrite_all(fd, &header.to_bytes(), 0).map_err(|e| format!("writing header: errno {e}"))?;
    Ok((file_len, memory_bytes))
}
