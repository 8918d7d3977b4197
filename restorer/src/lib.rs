//! Shared definitions between `crrestart`, `crust-restorer` and the preload's restart path.
//!
//! `crrestart` (ordinary Rust, std) reads and checks an image, opens the program's files,
//! and writes a *restore plan* (these `#[repr(C)]` structures, in a memfd) that the
//! freestanding restorer can follow without parsing or allocating anything:
//!
//! ```text
//! PlanHeader
//! PlanRegion[n_regions]   at regions_off
//! PlanRun[n_runs]         at runs_off
//! path bytes              at strings_off
//! ```
//! The restorer maps the plan at `plan_addr`, rebuilds memory, then jumps to the preload's
//! restart entry with a pointer to [`RestartArgs`] (inside the plan).

#![no_std]

/// "CRSTPLAN"
pub const PLAN_MAGIC: u64 = u64::from_le_bytes(*b"CRSTPLAN");
/// "CRSTARGS"
pub const ARGS_MAGIC: u64 = u64::from_le_bytes(*b"CRSTARGS");
pub const PLAN_VERSION: u32 = 3;

/// Fixed address the restorer is linked at (see build.rs); far from where Linux places
/// programs, libraries, heaps and stacks.
pub const RESTORER_BASE: u64 = 0x1f00_0000_0000;

/// Region flags.
pub const RF_SHARED: u32 = 1;
pub const RF_GROWSDOWN: u32 = 2;
pub const RF_FILE: u32 = 4;
/// Open the file read-write (shared writable mapping).
pub const RF_FILE_WRITE: u32 = 8;

/// Kinds of kernel special mappings moved into place.
pub const SPECIAL_VVAR: u32 = 1;
pub const SPECIAL_VVAR_VCLOCK: u32 = 2;
pub const SPECIAL_VDSO: u32 = 3;

/// Handed from the restorer to the preload's `crust_restart_entry`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RestartArgs {
    pub magic: u64,
    pub version: u32,
    pub flags: u32,
    /// The restorer's own address range, for the preload to unmap.
    pub restorer_start: u64,
    pub restorer_end: u64,
    pub plan_addr: u64,
    pub plan_len: u64,
    pub image_fd: i32,
    pub plan_fd: i32,
    /// errno of PR_SET_MM_MAP (0 = the brk heap and /proc cmdline are restored).
    pub mm_errno: i32,
    /// crrestart's own stderr, where the restorer reports failures (-1: none); the preload
    /// closes it.
    pub err_fd: i32,
    /// Coordinator address override (NUL-terminated; empty = keep the saved one).
    pub coord: [u8; 256],
    /// Generation restarted from.
    pub generation: u64,
    /// The process tree's ids: `n_pids` [`PlanPid`] entries at address `pids_addr`
    /// (inside the plan), every process of the tree plus this process's zombie children.
    pub pids_addr: u64,
    pub n_pids: u32,
    /// crrestart's descriptors (image, plan, shared-memory objects) are all at or above
    /// this number, above every fd of the program: the preload closes them all.
    pub close_from: i32,
    /// The AIO context the restorer read page data with (0: none). Destroying one waits
    /// for an RCU grace period (30-50 ms here), which would delay the program: the
    /// preload's checkpoint thread destroys it once the program runs (its ring is a
    /// mapping of this process until then). A preload that does not know this field
    /// leaves it to the kernel at exit.
    pub aio_ctx: u64,
}

/// One process id of the restored tree.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct PlanPid {
    /// The id the program knows.
    pub virt: i32,
    /// The kernel's id now.
    pub real: i32,
    /// The kernel's id when the checkpoint was taken (system calls interrupted by the
    /// checkpoint still carry it in their argument registers).
    pub old_real: i32,
    /// [`PID_GROUP_ONLY`] or 0.
    pub flags: i32,
}

/// [`PlanPid::flags`]: `virt` names a process group whose leader had exited before the
/// checkpoint, now led by the member whose real pid is `real` (that member's own pid has
/// an entry of its own).
pub const PID_GROUP_ONLY: i32 = 1;

/// A kernel special mapping (vvar, vdso) and where the image needs it.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct SpecialMap {
    pub kind: u32,
    pub _pad: u32,
    pub addr: u64,
    pub len: u64,
}

/// `struct prctl_mm_map` (PR_SET_MM_MAP).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct MmMap {
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
    pub auxv: u64,
    pub auxv_size: u32,
    pub exe_fd: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct PlanHeader {
    pub magic: u64,
    pub version: u32,
    pub n_regions: u32,
    pub n_runs: u32,
    pub n_special: u32,
    pub regions_off: u64,
    pub runs_off: u64,
    pub strings_off: u64,
    pub total_len: u64,
    pub special: [SpecialMap; 4],
    pub mm: MmMap,
    pub auxv: [u64; 64],
    pub auxv_words: u32,
    /// Verify page checksums while loading.
    pub verify: u32,
    /// Read large runs with `O_DIRECT` and Linux AIO, several requests in flight, straight
    /// into the program's memory (the image is not in the page cache: a second read
    /// through it would copy every page once more). Falls back to `pread` where refused.
    pub direct_reads: u32,
    pub _pad: u32,
    /// Preload restart entry and the top of its stack.
    pub entry: u64,
    pub entry_stack: u64,
    /// A free address range where special mappings can be parked while moving.
    pub scratch_addr: u64,
    pub scratch_len: u64,
    /// The restart barrier (see `launcher/src/rebuild.rs`): once every page is in place and
    /// checked, the restorer writes [`BARRIER_VERIFIED`] on `report_fd` and closes it, then
    /// reads one byte from `go_fd`: [`BARRIER_GO`] lets the program run; end of file means
    /// the restart was abandoned (another process failed, or crrestart's supervisor is
    /// gone), and the restorer exits with [`EXIT_ABANDONED`]. A failing restorer writes
    /// [`BARRIER_FAILED`] first. -1: no barrier.
    pub report_fd: i32,
    pub go_fd: i32,
    /// Non-zero in the tree's root (crrestart's own process): it explains an abandoned
    /// restart on crrestart's stderr.
    pub is_root: u32,
    pub _pad2: u32,
    /// Who this restorer is, for its error messages ("vpid 12 (prog), image PATH"),
    /// NUL-padded.
    pub who: [u8; 512],
    pub args: RestartArgs,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct PlanRegion {
    pub start: u64,
    pub end: u64,
    pub prot: u32,
    pub flags: u32,
    pub file_offset: u64,
    pub path_off: u32,
    pub path_len: u32,
    pub first_run: u32,
    pub n_runs: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct PlanRun {
    pub addr: u64,
    pub len: u64,
    pub image_off: u64,
    pub crc: u32,
    /// `RUN_*` flags.
    pub flags: u32,
}

/// Map this run from the image file (MAP_PRIVATE) instead of reading it in.
pub const RUN_MAP: u32 = 1;
/// Part of a stored run: its checksum covers more than this piece, so it is not checked here.
pub const RUN_PART: u32 = 2;

/// Exit codes of the restorer.
pub const EXIT_BAD_PLAN: i32 = 71;
pub const EXIT_MAP_FAILED: i32 = 72;
pub const EXIT_BAD_DATA: i32 = 73;
/// Another process of the tree failed (or crrestart's supervisor ended) before "go".
pub const EXIT_ABANDONED: i32 = 74;

/// Bytes of the restart barrier (see [`PlanHeader::report_fd`]).
pub const BARRIER_VERIFIED: u8 = b'V';
pub const BARRIER_FAILED: u8 = b'F';
pub const BARRIER_GO: u8 = b'G';
