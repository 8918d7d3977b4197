//! The checkpoint image of one process.
//!
//! ```text
//! offset 0      Header (one 4 KiB page): magic, version, section offsets, checksums
//! offset 4096   page data: uncompressed, runs of whole pages, each starting on a 4 KiB
//!               boundary so that a run can be mapped straight from the file; compressed,
//!               a sequence of independently compressed chunks (see [`Chunk`])
//! meta_offset   ImageMeta, postcard-encoded, checksummed (crc32c) as a whole
//! ```
//! Every page run carries the crc32c of its (uncompressed) bytes, every compressed chunk the
//! crc32c of its compressed bytes. The writer streams page data first, then the metadata,
//! then writes the header last (under a temporary file name), fsyncs and renames; a reader
//! that finds a valid header therefore finds a complete file.
//!
//! The full format is described in `docs/IMAGE_FORMAT.md`.

use serde::{Deserialize, Serialize};

/// First 8 bytes of every image.
pub const MAGIC: [u8; 8] = *b"CRUSTIMG";
/// Current image format version (2: compressed page data, chunk table; 3: the fd table
/// right after the header; 4: dup_fds; 5: SysV IPC objects and attachments, POSIX
/// message queue fds; 6: sibling_fds).
pub const VERSION: u32 = 6;
/// Size of the header page; page data starts here.
pub const HEADER_SIZE: usize = 4096;
/// Page size the format is built around.
pub const PAGE_SIZE: u64 = 4096;
/// The header checksum (at bytes 72..76) covers bytes 0..72 and 76..HEADER_CRC_END.
const HEADER_CRC_SPAN: usize = 72;
const HEADER_CRC_END: usize = 128;

fn header_crc(b: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&b[..HEADER_CRC_SPAN]), &b[HEADER_CRC_SPAN + 4..HEADER_CRC_END])
}
/// Uncompressed size of a compressed chunk (the last one of an image may be shorter).
pub const CHUNK_SIZE: usize = 1 << 20;
/// Header flag: the page data was written with `O_DIRECT` (straight from the process's
/// memory to the disk, bypassing the page cache). Informational; readers ignore it.
pub const FLAG_DIRECT_IO: u32 = 1;

/// How the page data of an image is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Compression {
    /// Runs stored as they are, page-aligned: they can be mapped from the file.
    #[default]
    None,
    /// zstd frames, one per chunk.
    Zstd,
    /// LZ4 blocks (raw block format, no frame), one per chunk.
    Lz4,
}

impl Compression {
    /// `none`, `zstd`, `lz4` (the command-line and `CR_COMPRESS` spelling).
    pub fn parse(s: &str) -> Option<Compression> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "none" | "off" | "0" => Some(Compression::None),
            "zstd" => Some(Compression::Zstd),
            "lz4" => Some(Compression::Lz4),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd => "zstd",
            Compression::Lz4 => "lz4",
        }
    }
}

/// One compressed chunk of page data.
///
/// The uncompressed page data of a compressed image is one stream: every run's bytes, in
/// the order of `ImageMeta::regions` and their `runs`. The stream is cut into chunks of
/// [`CHUNK_SIZE`] bytes, compressed independently and stored one after the other. A chunk
/// whose `clen` equals its `ulen` is stored raw (it did not compress).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// Offset of the compressed bytes in the image file.
    pub offset: u64,
    /// Compressed length in bytes.
    pub clen: u32,
    /// Uncompressed length in bytes.
    pub ulen: u32,
    /// crc32c of the compressed bytes (as stored in the file).
    pub crc: u32,
}

/// The fixed header at offset 0 (little endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    pub version: u32,
    pub flags: u32,
    pub meta_offset: u64,
    pub meta_len: u64,
    pub meta_crc: u32,
    pub data_offset: u64,
    pub data_len: u64,
    /// Total file length, so truncation is detected from the header alone.
    pub file_len: u64,
    /// Length of the fd table at offset [`HEADER_SIZE`] (0: none; the table is then the
    /// metadata's `fds`), and the crc32c of its bytes.
    pub fd_table_len: u64,
    pub fd_table_crc: u32,
}

impl Header {
    /// Serialize into the header page.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
        b[16..20].copy_from_slice(&self.flags.to_le_bytes());
        b[24..32].copy_from_slice(&self.meta_offset.to_le_bytes());
        b[32..40].copy_from_slice(&self.meta_len.to_le_bytes());
        b[40..44].copy_from_slice(&self.meta_crc.to_le_bytes());
        b[48..56].copy_from_slice(&self.data_offset.to_le_bytes());
        b[56..64].copy_from_slice(&self.data_len.to_le_bytes());
        b[64..72].copy_from_slice(&self.file_len.to_le_bytes());
        b[80..88].copy_from_slice(&self.fd_table_len.to_le_bytes());
        b[88..92].copy_from_slice(&self.fd_table_crc.to_le_bytes());
        let crc = header_crc(&b);
        b[72..76].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parse and verify a header page.
    pub fn from_bytes(b: &[u8]) -> Result<Header, crate::Error> {
        if b.len() < HEADER_SIZE {
            return Err(crate::Error::Truncated { what: "header", have: b.len() as u64, need: HEADER_SIZE as u64 });
        }
        if b[0..8] != MAGIC {
            return Err(crate::Error::NotAnImage);
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let version = u32_at(8);
        if version != VERSION {
            return Err(crate::Error::Version { found: version, supported: VERSION });
        }
        let crc = u32_at(72);
        if header_crc(b) != crc {
            return Err(crate::Error::Corrupt("header checksum mismatch".into()));
        }
        Ok(Header {
            version,
            flags: u32_at(16),
            meta_offset: u64_at(24),
            meta_len: u64_at(32),
            meta_crc: u32_at(40),
            data_offset: u64_at(48),
            data_len: u64_at(56),
            file_len: u64_at(64),
            fd_table_len: u64_at(80),
            fd_table_crc: u32_at(88),
        })
    }
}

/// Memory-map layout fields of `struct mm_struct`, restored with `PR_SET_MM_MAP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MmInfo {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
}

/// What backs a memory region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegionKind {
    /// Anonymous memory (including the main stack, which is `grows_down`).
    Anon,
    /// The brk heap.
    Heap,
    /// A file mapping. Private pages that still equal the file are not stored; they are
    /// mapped from the file again at restart, which must therefore be unchanged.
    File { path: String, offset: u64, identity: FileIdentity },
    /// Memory whose backing file was deleted, or shared anonymous memory: all pages stored.
    Detached { name: String },
    /// The kernel's vDSO and vvar pages: moved to the same address at restart, not stored.
    Vdso,
    Vvar,
    VvarVclock,
    /// A MAP_SHARED mapping of a file on tmpfs (`/dev/shm`: `shm_open`, named POSIX
    /// semaphores), which does not outlive a reboot: mapped from its path again at restart,
    /// after the file is written back with its checkpoint-time content if it is missing or
    /// differs. The content of the mapped range is stored (non-zero pages as `runs`) in one
    /// image of the computation per file and range; the others have no runs.
    ShmFile { path: String, offset: u64, identity: FileIdentity },
}

/// Enough of a file's identity to notice that it changed between checkpoint and restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: i64,
}

/// One stored run of contiguous, page-aligned memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRun {
    /// Virtual address of the first byte.
    pub addr: u64,
    /// Length in bytes (a multiple of [`PAGE_SIZE`]).
    pub len: u64,
    /// Offset of the data in the image file (a multiple of [`PAGE_SIZE`]). In a compressed
    /// image: the offset the run would have in the uncompressed image, i.e. [`HEADER_SIZE`]
    /// plus its position in the uncompressed page-data stream.
    pub offset: u64,
    /// crc32c of the (uncompressed) data.
    pub crc: u32,
}

/// One virtual memory area.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    /// PROT_READ | PROT_WRITE | PROT_EXEC bits.
    pub prot: u32,
    /// MAP_SHARED rather than MAP_PRIVATE.
    pub shared: bool,
    /// A grows-down stack VMA.
    pub grows_down: bool,
    pub kind: RegionKind,
    /// Stored page data.
    pub runs: Vec<PageRun>,
}

/// One thread at checkpoint time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadRecord {
    /// Thread id as the program sees it.
    pub vtid: i32,
    /// Kernel thread id at checkpoint time.
    pub real_tid: i32,
    /// The thread-group leader (its vtid is the process's vpid).
    pub is_main: bool,
    /// Address of the `ucontext_t` of the signal frame the thread was stopped in; the
    /// thread resumes by `rt_sigreturn` on this frame.
    pub ucontext: u64,
    /// FS base (thread pointer).
    pub fs_base: u64,
    /// Address the kernel clears and wakes at thread exit (glibc: `&pthread->tid`).
    pub clear_tid_addr: u64,
    pub robust_head: u64,
    pub robust_len: u64,
    /// rseq area registered by libc (0 if none).
    pub rseq_addr: u64,
    pub rseq_len: u32,
    pub rseq_sig: u32,
    /// Thread name (comm).
    pub name: String,
    /// Instruction and stack pointer where the thread was stopped (for tools).
    pub ip: u64,
    pub sp: u64,
}

/// What an open file descriptor refers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FdKind {
    /// A regular file, reopened at its path and offset.
    File { path: String, identity: FileIdentity },
    /// A directory, reopened at its path.
    Directory { path: String },
    /// A character device such as /dev/null, reopened by path.
    CharDevice { path: String, rdev: u64 },
    /// A terminal.
    Tty { path: String },
    /// One end of a pipe. `id` is the pipe's inode: ends with the same id are one pipe.
    /// `data` holds the bytes that were in flight (stored with the read end).
    Pipe { id: u64, read_end: bool, data: Vec<u8>, capacity: u32 },
    /// A socket (restored only as fd 0-2 inherited from the restarter, for now).
    Socket { id: u64, description: String },
    /// Something crust cannot restore yet; `description` names it.
    Unsupported { description: String },
    /// An fd the program marked "do not checkpoint" (`cr_ignore_fd`): closed after a
    /// restart unless substituted (`crrestart --fd`). `description` says what it was.
    Ignored { description: String },
    /// A regular file deleted while open (or a memfd): its whole content is stored, and a
    /// restart recreates it as an unlinked file in the same directory (a memfd of the same
    /// name). `path` is where it was, without the kernel's " (deleted)".
    Deleted { path: String, data: Vec<u8>, memfd: bool },
    /// An eventfd: its counter and whether it is in semaphore mode (`EFD_SEMAPHORE`).
    EventFd { count: u64, semaphore: bool },
    /// A timerfd: its clock, the time left until it next expires (0 = disarmed) and its
    /// interval, in nanoseconds, and the expirations not read yet (`ticks`).
    TimerFd { clockid: i32, value_ns: u64, interval_ns: u64, ticks: u64 },
    /// A signalfd and the signals it accepts (bit N-1 = signal N).
    SignalFd { mask: u64 },
    /// An epoll instance and its interest list (registrations of fds of this process).
    Epoll { entries: Vec<EpollEntry> },
    /// A regular file open read-write (not append-only: a database, not a log), with its
    /// whole content at checkpoint time: a restart writes it back (recreating the file if
    /// the program removed it, like a journal), then reopens it like [`FdKind::File`].
    SavedFile { path: String, identity: FileIdentity, data: Vec<u8> },
    /// A pidfd of a process of the computation: its kernel pid at checkpoint time (links it
    /// to the image with that `real_pid`, or a zombie child) and its virtual pid.
    PidFd { real_pid: i32, vpid: i32 },
    /// A POSIX message queue descriptor (`mq_open`): the queue's name (`/name`), whether
    /// it was unlinked, its inode (one queue, whoever holds it), attributes, mode and
    /// the queued messages as `(priority, bytes)` in the order they come out — stored by
    /// one process of the computation (`stored`), empty elsewhere.
    MQueue { name: String, unlinked: bool, ino: u64, maxmsg: i64, msgsize: i64, mode: u32, stored: bool, messages: Vec<(u32, Vec<u8>)> },
    /// An inotify instance: its watches (by number) and the highest watch number it
    /// handed out (a restart numbers new watches after it). Queued events are not kept.
    Inotify { watches: Vec<InotifyWatch>, last_wd: i32 },
    /// A memfd held as an fd whose seals are not those of a plain memfd (F_SEAL_SEAL
    /// alone): like [`FdKind::Deleted`] (memfd), recreated with `MFD_ALLOW_SEALING`, filled,
    /// then sealed with `seals` (F_SEAL_*).
    SealedMemfd { path: String, data: Vec<u8>, seals: u32 },
    /// A timerfd on CLOCK_REALTIME(_ALARM) set with `TFD_TIMER_ABSTIME`: its absolute
    /// expiry (ns since the epoch; 0 = disarmed), interval, unread expirations, and whether
    /// it was set with `TFD_TIMER_CANCEL_ON_SET`. Set absolute again at restart.
    AbsTimerFd { clockid: i32, expires_ns: u64, interval_ns: u64, ticks: u64, cancel_on_set: bool },
}

/// One watch of an inotify instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InotifyWatch {
    /// The watch number the program holds.
    pub wd: i32,
    /// The absolute path it was added with.
    pub path: String,
    /// Event mask as the kernel keeps it (with IN_ONESHOT, IN_EXCL_UNLINK, IN_DONT_FOLLOW).
    pub mask: u32,
    /// The watched inode at checkpoint time.
    pub dev: u64,
    pub ino: u64,
}

/// One registration of an epoll instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpollEntry {
    /// The fd number it was registered with.
    pub tfd: i32,
    /// Event mask as registered (EPOLLIN, EPOLLET, EPOLLONESHOT...).
    pub events: u32,
    /// The user data returned with its events.
    pub data: u64,
}

impl FdKind {
    /// Short name of the kind, as `crrestart --list-fds` shows it.
    pub fn name(&self) -> &'static str {
        match self {
            FdKind::File { .. } | FdKind::SavedFile { .. } => "file",
            FdKind::Directory { .. } => "directory",
            FdKind::CharDevice { .. } => "device",
            FdKind::Tty { .. } => "tty",
            FdKind::Pipe { .. } => "pipe",
            FdKind::Socket { .. } => "socket",
            FdKind::Unsupported { .. } => "unsupported",
            FdKind::Ignored { .. } => "ignored",
            FdKind::Deleted { .. } => "deleted",
            FdKind::EventFd { .. } => "eventfd",
            FdKind::TimerFd { .. } => "timerfd",
            FdKind::SignalFd { .. } => "signalfd",
            FdKind::Epoll { .. } => "epoll",
            FdKind::PidFd { .. } => "pidfd",
            FdKind::MQueue { .. } => "mqueue",
            FdKind::Inotify { .. } => "inotify",
            FdKind::SealedMemfd { .. } => "deleted",
            FdKind::AbsTimerFd { .. } => "timerfd",
        }
    }

    /// The path or description of what the fd refers to.
    pub fn target(&self) -> String {
        match self {
            FdKind::File { path, .. } | FdKind::Directory { path } | FdKind::CharDevice { path, .. } | FdKind::Tty { path } => {
                path.clone()
            }
            FdKind::Deleted { path, data, .. } => format!("{path} (deleted, {} bytes stored)", data.len()),
            FdKind::SavedFile { path, data, .. } => format!("{path} (content saved, {} bytes)", data.len()),
            FdKind::EventFd { count, semaphore } => {
                format!("eventfd count {count}{}", if *semaphore { " (semaphore)" } else { "" })
            }
            FdKind::SignalFd { mask } => format!("signalfd mask {mask:#x}"),
            FdKind::PidFd { vpid, .. } => format!("pidfd of process {vpid}"),
            FdKind::MQueue { name, unlinked, maxmsg, msgsize, .. } => {
                format!("mqueue {name}{} maxmsg {maxmsg} msgsize {msgsize}", if *unlinked { " (deleted)" } else { "" })
            }
            FdKind::SealedMemfd { path, data, seals } => {
                format!("{path} (deleted, {} bytes stored, seals {seals:#x})", data.len())
            }
            FdKind::AbsTimerFd { clockid, expires_ns, interval_ns, cancel_on_set, .. } => format!(
                "timerfd clock {clockid} at {}.{:09} (absolute{}), interval {}.{:09} s",
                expires_ns / 1_000_000_000,
                expires_ns % 1_000_000_000,
                if *cancel_on_set { ", cancel on set" } else { "" },
                interval_ns / 1_000_000_000,
                interval_ns % 1_000_000_000
            ),
            FdKind::Inotify { watches, .. } => {
                let w: Vec<String> = watches.iter().map(|w| format!("{}:{}", w.wd, w.path)).collect();
                format!("inotify watching [{}]", w.join(","))
            }
            FdKind::Epoll { entries } => {
                let fds: Vec<String> = entries.iter().map(|e| e.tfd.to_string()).collect();
                format!("epoll watching fds [{}]", fds.join(","))
            }
            FdKind::TimerFd { clockid, value_ns, interval_ns, ticks } => format!(
                "timerfd clock {clockid} next in {}.{:09} s, interval {}.{:09} s, {ticks} unread",
                value_ns / 1_000_000_000,
                value_ns % 1_000_000_000,
                interval_ns / 1_000_000_000,
                interval_ns % 1_000_000_000
            ),
            FdKind::Pipe { id, read_end, .. } => format!("pipe:[{id}] ({} end)", if *read_end { "read" } else { "write" }),
            FdKind::Socket { description, .. } | FdKind::Unsupported { description } | FdKind::Ignored { description } => {
                description.clone()
            }
        }
    }
}

/// One row of the fd table stored right after the header (readable without the memory
/// or the metadata: `crrestart --list-fds`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdEntry {
    pub fd: i32,
    /// [`FdKind::name`].
    pub kind: String,
    /// Path, or a description for objects without one.
    pub path: String,
    /// File status flags (O_ACCMODE, O_APPEND, O_NONBLOCK, ...).
    pub flags: i32,
    pub cloexec: bool,
    pub offset: i64,
}

impl FdEntry {
    pub fn of(rec: &FdRecord) -> FdEntry {
        FdEntry {
            fd: rec.fd,
            kind: rec.kind.name().to_string(),
            path: rec.kind.target(),
            flags: rec.flags,
            cloexec: rec.cloexec,
            offset: rec.offset,
        }
    }

    /// The flags as text: access mode, then O_APPEND, O_NONBLOCK... and O_CLOEXEC.
    pub fn flags_text(&self) -> String {
        let mut s = match self.flags & 3 {
            0 => "O_RDONLY",
            1 => "O_WRONLY",
            _ => "O_RDWR",
        }
        .to_string();
        for (bit, name) in [
            (0o2000, "O_APPEND"),
            (0o4000, "O_NONBLOCK"),
            (0o4010000, "O_SYNC"),
            (0o10000, "O_DSYNC"),
            (0o40000, "O_DIRECT"),
            (0o1000000, "O_NOATIME"),
            (0o10000000, "O_PATH"),
        ] {
            if self.flags & bit == bit {
                s.push('|');
                s.push_str(name);
            }
        }
        if self.cloexec {
            s.push_str("|O_CLOEXEC");
        }
        s
    }
}

/// Encode the fd table stored after the header: (bytes, crc32c).
pub fn encode_fd_table(fds: &[FdRecord]) -> Result<(Vec<u8>, u32), crate::Error> {
    let entries: Vec<FdEntry> = fds.iter().map(FdEntry::of).collect();
    let bytes = postcard::to_allocvec(&entries)?;
    let crc = crc32c::crc32c(&bytes);
    Ok((bytes, crc))
}

/// Where page data starts in an image whose fd table is `fd_table_len` bytes long.
pub fn data_start(fd_table_len: u64) -> u64 {
    HEADER_SIZE as u64 + fd_table_len.div_ceil(PAGE_SIZE) * PAGE_SIZE
}

/// Read an image's fd table: the header page and the table right after it, nothing else
/// (an image without a table: its metadata's fds).
pub fn read_fd_table(path: &std::path::Path) -> Result<(ImageHead, Vec<FdEntry>), crate::Error> {
    use std::io::Read;
    let io = |e| crate::Error::Io { path: path.display().to_string(), source: e };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    let mut page = vec![0u8; HEADER_SIZE.min(len as usize)];
    f.read_exact(&mut page)?;
    let header = Header::from_bytes(&page)?;
    if len < header.file_len {
        return Err(crate::Error::Truncated { what: "image", have: len, need: header.file_len });
    }
    if header.fd_table_len == 0 {
        let img = read_image(path)?;
        let entries = img.meta.fds.iter().map(FdEntry::of).collect();
        return Ok((ImageHead { header, file_len: len }, entries));
    }
    if header.fd_table_len > (64 << 20) || data_start(header.fd_table_len) > header.data_offset {
        return Err(crate::Error::Corrupt("fd table out of bounds".into()));
    }
    let mut table = vec![0u8; header.fd_table_len as usize];
    f.read_exact(&mut table)?;
    if crc32c::crc32c(&table) != header.fd_table_crc {
        return Err(crate::Error::Corrupt("fd table checksum mismatch".into()));
    }
    let entries: Vec<FdEntry> = postcard::from_bytes(&table)?;
    Ok((ImageHead { header, file_len: len }, entries))
}

/// The header of an image read on its own.
#[derive(Debug, Clone, Copy)]
pub struct ImageHead {
    pub header: Header,
    pub file_len: u64,
}

/// One open file descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdRecord {
    pub fd: i32,
    /// File status flags (O_ACCMODE, O_APPEND, O_NONBLOCK, ...).
    pub flags: i32,
    pub cloexec: bool,
    /// File offset (0 when not seekable).
    pub offset: i64,
    pub kind: FdKind,
}

/// A resource limit (RLIMIT_* index, soft, hard).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    pub resource: u32,
    pub soft: u64,
    pub hard: u64,
}

/// Where the preload library wants the restorer to jump once memory is back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RestartEntry {
    /// Address of the preload's restart function.
    pub entry: u64,
    /// Top of the stack reserved for it.
    pub stack_top: u64,
}

/// Everything about the process except its page data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMeta {
    pub comp_id: u64,
    pub generation: u64,
    pub vpid: i32,
    pub vppid: i32,
    /// Real pid at checkpoint time.
    pub real_pid: i32,
    pub hostname: String,
    /// Kernel release at checkpoint time (the vDSO must match at restart).
    pub kernel_release: String,
    /// XCR0 at checkpoint time: the FPU state components saved in signal frames.
    pub xcr0: u64,
    pub program: String,
    pub args: Vec<String>,
    pub comm: String,
    pub exe: String,
    pub cwd: String,
    pub umask: u32,
    pub rlimits: Vec<Rlimit>,
    pub mm: MmInfo,
    pub auxv: Vec<u64>,
    pub restart: RestartEntry,
    /// The checkpoint signal in use.
    pub ckpt_signal: i32,
    pub threads: Vec<ThreadRecord>,
    pub fds: Vec<FdRecord>,
    pub regions: Vec<Region>,
    /// Unix time (seconds) at which the process was stopped.
    pub taken_unix: u64,
    /// Where the process sits in its process tree and what it shares with the others.
    pub tree: TreeInfo,
    /// How page data is stored.
    pub compression: Compression,
    /// The compressed chunks, in stream order (empty when `compression` is `None`).
    pub chunks: Vec<Chunk>,
}

/// A process's place in its process tree, and the kernel objects it shares with other
/// processes of the computation. Process ids are virtual (what the program sees) unless
/// named `real_*` (the kernel's at checkpoint time, used to link images together).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TreeInfo {
    /// Real parent pid at checkpoint time (a parent's `real_pid` links a child to it).
    pub real_ppid: i32,
    /// Virtual process group and session.
    pub vpgid: i32,
    pub vsid: i32,
    /// Start time in clock ticks after boot (`/proc/PID/stat` field 22): of the processes
    /// whose parent is outside the tree, the earliest is the root (the launched program);
    /// the others are orphans.
    pub start_ticks: u64,
    /// Children, live and exited-but-unreaped (zombies).
    pub children: Vec<ChildRecord>,
    /// fds that share their open file description (offset, flags) with an fd of the
    /// parent, found with kcmp(KCMP_FILE): `(fd here, fd in the parent)`.
    pub inherited_fds: Vec<(i32, i32)>,
    /// fds that share their open file description with a lower-numbered fd of this
    /// process (dup, dup2, F_DUPFD): `(fd, lower fd)`.
    pub dup_fds: Vec<(i32, i32)>,
    /// fds that share their open file description with a sibling (a child of the same
    /// parent) but not with the parent: `(fd here, sibling's real pid, sibling's fd)`.
    pub sibling_fds: Vec<(i32, i32, i32)>,
    /// Named FIFOs among the pipe fds: `(fd, path)`.
    pub fifos: Vec<(i32, String)>,
    /// Shared memory that no file path can bring back (MAP_SHARED anonymous, deleted
    /// files such as POSIX semaphores and shm_open objects, memfds), by kernel object:
    /// regions with the same `(dev, ino)` in several processes are one object.
    pub shared_maps: Vec<SharedMap>,
    /// SysV IPC objects (shared memory, semaphore sets, message queues) the process used,
    /// with their contents in the image of the one process that stored them.
    pub sysv: Vec<SysvObject>,
    /// Where the process had SysV shared memory segments attached: one entry per mapping
    /// (an attachment split by mprotect has several, as the kernel's attach count does).
    pub shm_attaches: Vec<ShmAttach>,
}

/// Which SysV IPC object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SysvKind {
    Shm,
    Sem,
    Msg,
}

impl SysvKind {
    pub fn name(self) -> &'static str {
        match self {
            SysvKind::Shm => "shared memory segment",
            SysvKind::Sem => "semaphore set",
            SysvKind::Msg => "message queue",
        }
    }
    /// The `ipcrm` option that removes one by key.
    pub fn ipcrm_key_option(self) -> &'static str {
        match self {
            SysvKind::Shm => "-M",
            SysvKind::Sem => "-S",
            SysvKind::Msg => "-Q",
        }
    }
}

/// One SysV IPC object at checkpoint time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SysvObject {
    pub kind: SysvKind,
    /// The id the program knows (virtual; equal to `real_id` before any restart).
    pub vid: i32,
    /// The kernel's id at checkpoint time.
    pub real_id: i32,
    /// Its key (0: IPC_PRIVATE, or a segment marked for removal).
    pub key: i32,
    /// Permission bits (low 9 bits of `ipc_perm.mode`).
    pub mode: u32,
    /// Shared memory: size in bytes; semaphores: number in the set; message queue: its
    /// byte limit (`msg_qbytes`).
    pub size: u64,
    /// A shared memory segment marked for removal (IPC_RMID) while still attached.
    pub removed: bool,
    /// The contents, stored by one process of the computation (None in the others).
    pub data: Option<SysvData>,
}

/// Contents of a SysV IPC object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SysvData {
    /// The segment's bytes (trailing zero bytes left out).
    Shm(Vec<u8>),
    /// Every semaphore's value.
    Sem(Vec<u16>),
    /// The queued messages, oldest first: (type, bytes).
    Msg(Vec<(i64, Vec<u8>)>),
}

/// A SysV shared memory segment attached in a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShmAttach {
    /// The segment's kernel id at checkpoint time.
    pub real_id: i32,
    /// The attach address.
    pub addr: u64,
    /// Attached read-only (SHM_RDONLY).
    pub readonly: bool,
}

/// A child process at checkpoint time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildRecord {
    pub vpid: i32,
    pub real_pid: i32,
    /// Set for a child that had exited but was not yet reaped: how it ended.
    pub exit: Option<ChildExit>,
}

/// How a zombie child ended, as `waitid` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildExit {
    /// `si_code`: CLD_EXITED (1), CLD_KILLED (2) or CLD_DUMPED (3).
    pub code: i32,
    /// Exit status (CLD_EXITED) or signal number.
    pub status: i32,
}

/// One region of shared memory backed by a kernel object without a usable path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedMap {
    pub start: u64,
    pub end: u64,
    /// Device and inode of the backing object (from /proc/PID/maps).
    pub dev: u64,
    pub ino: u64,
    /// Offset of `start` in the object.
    pub offset: u64,
}

impl ImageMeta {
    /// Bytes of page data stored in the image.
    pub fn memory_bytes(&self) -> u64 {
        self.regions.iter().flat_map(|r| r.runs.iter()).map(|r| r.len).sum()
    }
}

/// A parsed image: header, metadata, and the file it came from.
#[derive(Debug)]
pub struct Image {
    pub header: Header,
    pub meta: ImageMeta,
}

/// Open an image, verify its header, size and metadata checksum, and decode the metadata.
/// Page data checksums are verified by [`verify_pages`] or while restoring.
pub fn read_image(path: &std::path::Path) -> Result<Image, crate::Error> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).map_err(|e| crate::Error::Io { path: path.display().to_string(), source: e })?;
    let len = f.metadata().map_err(|e| crate::Error::Io { path: path.display().to_string(), source: e })?.len();
    let mut page = vec![0u8; HEADER_SIZE.min(len as usize)];
    f.read_exact(&mut page)?;
    let header = Header::from_bytes(&page)?;
    if len < header.file_len {
        return Err(crate::Error::Truncated { what: "image", have: len, need: header.file_len });
    }
    if header.meta_offset.checked_add(header.meta_len).is_none_or(|end| end > header.file_len)
        || header.meta_len > (1 << 30)
    {
        return Err(crate::Error::Corrupt("metadata section out of bounds".into()));
    }
    f.seek(SeekFrom::Start(header.meta_offset))?;
    let mut meta_bytes = vec![0u8; header.meta_len as usize];
    f.read_exact(&mut meta_bytes)?;
    if crc32c::crc32c(&meta_bytes) != header.meta_crc {
        return Err(crate::Error::Corrupt("metadata checksum mismatch".into()));
    }
    let meta: ImageMeta = postcard::from_bytes(&meta_bytes)?;
    check_layout(&header, &meta)?;
    Ok(Image { header, meta })
}

/// Check that every page run and chunk lies where the format says it must.
pub fn check_layout(header: &Header, meta: &ImageMeta) -> Result<(), crate::Error> {
    let data_end = header.meta_offset;
    let compressed = meta.compression != Compression::None;
    if !compressed && !meta.chunks.is_empty() {
        return Err(crate::Error::Corrupt("chunk table in an uncompressed image".into()));
    }
    // In a compressed image the runs are laid out back to back in the stream.
    let mut stream = HEADER_SIZE as u64;
    for r in &meta.regions {
        for run in &r.runs {
            let end = run.offset.checked_add(run.len);
            let bad_place = if compressed { run.offset != stream } else { end.is_none_or(|e| e > data_end) };
            if run.offset % PAGE_SIZE != 0
                || run.len % PAGE_SIZE != 0
                || bad_place
                || run.addr < r.start
                || run.addr.checked_add(run.len).is_none_or(|e| e > r.end)
            {
                return Err(crate::Error::Corrupt(format!("page run at {:#x} out of bounds", run.addr)));
            }
            stream = stream.saturating_add(run.len);
        }
    }
    if compressed {
        let mut total = HEADER_SIZE as u64;
        for (i, c) in meta.chunks.iter().enumerate() {
            if c.ulen as usize > CHUNK_SIZE
                || c.clen as u64 > max_compressed_len(CHUNK_SIZE) as u64
                || c.offset < header.data_offset
                || c.offset.checked_add(c.clen as u64).is_none_or(|e| e > data_end)
            {
                return Err(crate::Error::Corrupt(format!("compressed chunk {i} out of bounds")));
            }
            total += c.ulen as u64;
        }
        if total != stream {
            return Err(crate::Error::Corrupt(format!(
                "the chunks hold {} bytes of page data but the runs need {}",
                total - HEADER_SIZE as u64,
                stream - HEADER_SIZE as u64
            )));
        }
    }
    Ok(())
}

/// Upper bound of a compressed chunk's size for `ulen` input bytes (either codec).
pub fn max_compressed_len(ulen: usize) -> usize {
    // lz4_flex wants room for 110 % of the input plus 20 bytes before it starts.
    ulen + ulen / 8 + 1024
}

/// Read every page run and check its crc32c (for a compressed image: check every chunk's
/// checksum, decompress it and check the runs).
pub fn verify_pages(path: &std::path::Path, meta: &ImageMeta) -> Result<(), crate::Error> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).map_err(|e| crate::Error::Io { path: path.display().to_string(), source: e })?;
    if meta.compression != Compression::None {
        return crate::codec::unpack(&f, meta, &mut crate::codec::Discard::new(), &mut |_| {});
    }
    let mut buf = vec![0u8; 1 << 20];
    for r in &meta.regions {
        for run in &r.runs {
            let mut crc = 0u32;
            let mut done = 0u64;
            while done < run.len {
                let n = (run.len - done).min(buf.len() as u64) as usize;
                f.read_exact_at(&mut buf[..n], run.offset + done)?;
                crc = crc32c::crc32c_append(crc, &buf[..n]);
                done += n as u64;
            }
            if crc != run.crc {
                return Err(crate::Error::Corrupt(format!(
                    "page data at {:#x} (+{:#x}) fails its checksum",
                    run.addr, run.len
                )));
            }
        }
    }
    Ok(())
}

/// Serialize metadata and return (bytes, crc32c).
pub fn encode_meta(meta: &ImageMeta) -> Result<(Vec<u8>, u32), crate::Error> {
    let bytes = postcard::to_allocvec(meta)?;
    let crc = crc32c::crc32c(&bytes);
    Ok((bytes, crc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip_and_corruption() {
        let h = Header { version: VERSION, flags: 0, meta_offset: 8192, meta_len: 100, meta_crc: 5, data_offset: 4096, data_len: 4096, file_len: 8292, fd_table_len: 0, fd_table_crc: 0 };
        let mut b = h.to_bytes();
        assert_eq!(Header::from_bytes(&b).unwrap(), h);
        b[30] ^= 1;
        assert!(matches!(Header::from_bytes(&b), Err(crate::Error::Corrupt(_))));
        let mut t = h.to_bytes();
        t[81] ^= 1;
        assert!(matches!(Header::from_bytes(&t), Err(crate::Error::Corrupt(_))), "the fd table fields are checksummed");
        let mut v = h.to_bytes();
        v[8] = 99;
        assert!(matches!(Header::from_bytes(&v), Err(crate::Error::Version { .. })));
        assert!(matches!(Header::from_bytes(&[0u8; 10]), Err(crate::Error::Truncated { .. })));
        assert!(matches!(Header::from_bytes(&[0u8; 4096]), Err(crate::Error::NotAnImage)));
    }

    fn sample_meta(runs: Vec<Vec<PageRun>>, compression: Compression, chunks: Vec<Chunk>) -> ImageMeta {
        ImageMeta {
            comp_id: 1,
            generation: 1,
            vpid: 7,
            vppid: 1,
            real_pid: 7,
            hostname: "h".into(),
            kernel_release: "k".into(),
            xcr0: 0,
            program: "p".into(),
            args: vec![],
            comm: "p".into(),
            exe: "/p".into(),
            cwd: "/".into(),
            umask: 0o22,
            rlimits: vec![],
            mm: MmInfo::default(),
            auxv: vec![],
            restart: RestartEntry::default(),
            ckpt_signal: 12,
            threads: vec![],
            fds: vec![],
            regions: runs
                .into_iter()
                .enumerate()
                .map(|(i, runs)| Region {
                    start: 0x1000_0000 * (i as u64 + 1),
                    end: 0x1000_0000 * (i as u64 + 1) + (8 << 20),
                    prot: 3,
                    shared: false,
                    grows_down: false,
                    kind: RegionKind::Anon,
                    runs,
                })
                .collect(),
            taken_unix: 0,
            tree: TreeInfo::default(),
            compression,
            chunks,
        }
    }

    /// A compressed image written the way the preload writes one (runs back to back in one
    /// stream, 1 MiB chunks, raw chunks for data that does not compress) reads, verifies and
    /// unpacks; a damaged chunk is refused naming it; a run out of place is refused.
    #[test]
    fn compressed_image_roundtrip_corrupt_chunk_and_layout() {
        use crate::codec::{unpack, ChunkSink, Encoder};
        struct Collect(Vec<u8>);
        impl ChunkSink for Collect {
            fn buffer(&mut self, offset: u64, len: usize) -> Result<&mut [u8], crate::Error> {
                let at = offset as usize - HEADER_SIZE;
                if self.0.len() < at + len {
                    self.0.resize(at + len, 0);
                }
                Ok(&mut self.0[at..at + len])
            }
        }
        for kind in [Compression::Zstd, Compression::Lz4] {
            // Three runs: text, random (stored raw), text; 2.5 MiB in all.
            let mut x = 0x1234_5678_9abc_def0u64;
            let mut stream = Vec::new();
            let lens = [1 << 20, 1 << 20, 512 << 10];
            for (i, &len) in lens.iter().enumerate() {
                for k in 0..len / 8 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let v = if i == 1 { x } else { (k as u64 % 97) * 0x0101_0101 };
                    stream.extend_from_slice(&v.to_le_bytes());
                }
            }
            let mut off = 0u64;
            let mut runs: Vec<Vec<PageRun>> = vec![vec![], vec![]];
            for (i, &len) in lens.iter().enumerate() {
                let data = &stream[off as usize..off as usize + len];
                let region = if i < 2 { 0 } else { 1 };
                let addr = 0x1000_0000 * (region as u64 + 1) + if i == 1 { 2 << 20 } else { 0 };
                runs[region].push(PageRun { addr, len: len as u64, offset: HEADER_SIZE as u64 + off, crc: crc32c::crc32c(data) });
                off += len as u64;
            }
            let mut ws = vec![0u64; Encoder::workspace_len(kind) / 8 + 1];
            // SAFETY: the workspace outlives the encoder.
            let mut enc = unsafe { Encoder::in_workspace(kind, ws.as_mut_ptr().cast(), ws.len() * 8) }.unwrap();
            let mut file = vec![0u8; HEADER_SIZE];
            let mut chunks = Vec::new();
            let mut out = vec![0u8; max_compressed_len(CHUNK_SIZE)];
            for c in stream.chunks(CHUNK_SIZE) {
                let n = enc.compress(c, &mut out).unwrap();
                let stored: &[u8] = if n >= c.len() { c } else { &out[..n] };
                chunks.push(Chunk { offset: file.len() as u64, clen: stored.len() as u32, ulen: c.len() as u32, crc: crc32c::crc32c(stored) });
                file.extend_from_slice(stored);
            }
            assert!(chunks.iter().any(|c| c.clen == c.ulen), "the random chunk is stored raw");
            assert!(chunks.iter().any(|c| c.clen < c.ulen), "the text chunks compress");
            let write = |meta: &ImageMeta, body: &[u8], name: &str| {
                let (mb, mcrc) = encode_meta(meta).unwrap();
                let mut f = body.to_vec();
                let meta_offset = f.len() as u64;
                f.extend_from_slice(&mb);
                let h = Header {
                    version: VERSION,
                    flags: 0,
                    meta_offset,
                    meta_len: mb.len() as u64,
                    meta_crc: mcrc,
                    data_offset: HEADER_SIZE as u64,
                    data_len: meta_offset - HEADER_SIZE as u64,
                    file_len: f.len() as u64,
                    fd_table_len: 0,
                    fd_table_crc: 0,
                };
                f[..HEADER_SIZE].copy_from_slice(&h.to_bytes());
                let p = std::env::temp_dir().join(format!("crust-format-test-{}-{name}-{}", std::process::id(), kind.name()));
                std::fs::write(&p, &f).unwrap();
                p
            };
            let meta = sample_meta(runs.clone(), kind, chunks.clone());
            let good = write(&meta, &file, "good");
            let img = read_image(&good).expect("the compressed image reads");
            verify_pages(&good, &img.meta).expect("chunks and runs check out");
            let mut sink = Collect(Vec::new());
            unpack(&std::fs::File::open(&good).unwrap(), &img.meta, &mut sink, &mut |_| {}).unwrap();
            assert!(sink.0 == stream, "{kind:?}: unpacked data differs");

            let mut bad = file.clone();
            bad[(chunks[1].offset + 100) as usize] ^= 1;
            let badp = write(&meta, &bad, "bad");
            let e = verify_pages(&badp, &read_image(&badp).unwrap().meta).unwrap_err().to_string();
            assert!(e.contains("chunk 1") && e.contains("checksum"), "{e}");

            let mut moved = runs.clone();
            moved[1][0].offset += 4096;
            let movedp = write(&sample_meta(moved, kind, chunks.clone()), &file, "moved");
            assert!(matches!(read_image(&movedp), Err(crate::Error::Corrupt(_))), "a run out of place is refused");
            for p in [good, badp, movedp] {
                let _ = std::fs::remove_file(p);
            }
        }
    }

}
