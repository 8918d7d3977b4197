//! The wire protocol between checkpointed processes, the coordinator and `crctl`.
//!
//! Every message is one frame: a little-endian `u32` payload length followed by a
//! postcard-encoded [`ToCoord`] or [`FromCoord`]. Frames larger than [`MAX_FRAME`] are a
//! protocol error: the receiver drops the connection instead of allocating.
//!
//! A connection starts with a hello ([`ToCoord::HelloProcess`] or [`ToCoord::HelloControl`])
//! answered by [`FromCoord::Welcome`] or [`FromCoord::Rejected`].
//!
//! ## A checkpoint generation, as seen by a process
//! 1. coordinator → process: [`FromCoord::Checkpoint`] `{ generation, dir }`.
//!    The process quiesces its threads and answers [`ToCoord::Reached`] with [`Phase::Suspended`].
//! 2. When every process has reached `Suspended`, the coordinator sends
//!    [`FromCoord::Proceed`] with [`Phase::Written`]. The process writes its image into `dir`
//!    (temp name, fsync, rename) and answers [`ToCoord::Written`] (or [`ToCoord::Failed`]).
//! 3. When every process has written, the coordinator sends [`FromCoord::Proceed`] with
//!    [`Phase::Resumed`]; the process lets its threads run and answers `Reached(Resumed)`.
//!    Only then is the manifest written, which makes the generation complete.
//!
//! A *forked* generation (`forked` in `Checkpoint`, the default) has a capture phase
//! instead of the write phase: when every process reached `Suspended`, the coordinator
//! sends `Proceed(Captured)`; each process, while every process of the computation is
//! still stopped (pipe contents and other processes' state hold still), captures its
//! kernel state and creates its copy-on-write writer, and answers `Reached(Captured)`.
//! Then `Proceed(Resumed)`: each process resumes at once and answers `Reached(Resumed)`,
//! and sends `Written` (or `Failed`) when its writer's image is durable. The generation
//! completes when every process has resumed *and* written. (A process that declines
//! forking, `CR_FORKED=0`, writes its image during the capture phase.) In a stop-the-world
//! generation a process sends [`ToCoord::Downtime`] after it resumed (only then is its
//! downtime known).
//!
//! At any point the coordinator may send [`FromCoord::Abort`]: the process resumes its
//! threads, deletes any partial image of that generation, and answers `Reached(Resumed)`.
//! Once the manifest is durable the coordinator tells every member [`FromCoord::Completed`].
//!
//! ## Requests from inside a process (the application API)
//! A process may send [`ToCoord::RequestCheckpoint`] (the program called `cr_checkpoint`).
//! The coordinator starts a generation (or lets the one about to suspend this process
//! cover it) and the process learns the outcome from `Completed`/`Abort`; a request that
//! cannot start anything is answered by [`FromCoord::RequestFailed`]. A process that
//! receives `Checkpoint` while the program is inside a critical section (`cr_disable`)
//! answers [`ToCoord::Held`] first and suspends once the section ends.
//!
//! Enum variants are only ever appended, so the encoding of existing messages never changes.

use serde::{Deserialize, Serialize};

/// Bumped whenever a message changes shape.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest frame either side accepts (16 MiB).
pub const MAX_FRAME: usize = 16 << 20;

/// Largest frame accepted before a connection said hello (a hello is small; a peer
/// that has not identified itself gets no large buffer).
pub const MAX_HELLO_FRAME: usize = 64 << 10;

/// Default coordinator port.
pub const DEFAULT_PORT: u16 = 7787;

/// Default coordinator address.
pub const DEFAULT_COORD: &str = "127.0.0.1:7787";

/// Barrier phases of one checkpoint generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// All application threads are stopped.
    Suspended,
    /// The image is durable on disk.
    Written,
    /// Application threads run again.
    Resumed,
    /// Forked generations: kernel state captured and the copy-on-write writer created,
    /// while every process of the computation is still stopped.
    Captured,
}

/// What a checkpointed process reports about the image it wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageReport {
    /// File name of the image inside the generation directory.
    pub file: String,
    /// Size of the image file in bytes.
    pub bytes: u64,
    /// Memory bytes stored in the image (page data).
    pub memory_bytes: u64,
    /// How long the application's threads were stopped, in microseconds.
    pub downtime_us: u64,
    /// How long writing the image took, in microseconds.
    pub write_us: u64,
}

/// Messages sent to the coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToCoord {
    /// First message of a checkpointed process.
    HelloProcess {
        proto: u32,
        /// Shared secret, when the coordinator requires one.
        token: Option<String>,
        /// The computation this process belongs to; `None` for a freshly launched
        /// process that starts a new computation or joins the current one.
        comp_id: Option<u64>,
        /// Virtual pid (what the program sees from getpid()).
        vpid: i32,
        /// Virtual parent pid.
        vppid: i32,
        /// Real pid on this host.
        real_pid: i32,
        hostname: String,
        /// argv[0] (or the program path).
        program: String,
        args: Vec<String>,
        /// Set when this process was restarted from a generation.
        restored_from: Option<u64>,
    },
    /// First message of `crctl`.
    HelloControl { proto: u32, token: Option<String> },
    /// A barrier phase was reached.
    Reached { generation: u64, phase: Phase },
    /// The image of this process is durable.
    Written { generation: u64, report: ImageReport },
    /// This process could not checkpoint; the generation must fail.
    Failed { generation: u64, error: String },
    /// A `crctl` command.
    Command(Command),
    /// The program asked for a checkpoint (`cr_checkpoint`).
    RequestCheckpoint,
    /// The program is inside a critical section (`cr_disable`): this process will suspend
    /// for `generation` when it ends (or fail the generation when it lasts too long).
    Held { generation: u64 },
    /// Sent right before this process exits (`exec: false`) or replaces its program
    /// (`exec: true`), from inside its wrapper lock, so it is never stopped afterwards.
    /// Its connection closing next is not a failure. A generation in progress waits for
    /// the close (the process is then gone), and after an exec for the hello of the same
    /// real pid, which takes this process's place (in a generation in progress too).
    Leaving { exec: bool },
    /// A process of the computation runs on outside control (an exec or spawn of a
    /// statically linked or set-id program): generations list it as excluded while it
    /// lives. When `real_pid` is the sender's own, the sender is leaving (as `Leaving`).
    Excluded { vpid: i32, real_pid: i32, program: String, reason: String },
    /// How long this process's threads were stopped for `generation` (sent after they
    /// resumed, when the `Written` report could not know it yet).
    Downtime { generation: u64, downtime_us: u64 },
}

/// Commands sent by `crctl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Start a checkpoint. With `wait`, the reply comes when it is complete or failed.
    Checkpoint { wait: bool, kill_after: bool },
    Status,
    /// SIGKILL every process of the computation.
    Kill,
    /// Stop the coordinator (processes keep running).
    Quit,
    /// Change the checkpoint interval (0 = off).
    Interval { secs: u64 },
    /// The generations of the computation on disk (complete ones, oldest first).
    Generations,
    /// Keep only the newest `keep` complete generations (0 = keep all).
    Keep { keep: u32 },
}

/// One process as the coordinator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub vpid: i32,
    pub vppid: i32,
    pub real_pid: i32,
    pub hostname: String,
    pub program: String,
    /// "running", "suspending", "held" (critical section), "suspended", "writing", ...
    pub state: String,
    /// The generation this process was restarted from, if it was.
    pub restored_from: Option<u64>,
    /// How long its threads were stopped in the last complete generation (microseconds).
    pub downtime_us: Option<u64>,
}

/// The generation in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationProgress {
    pub generation: u64,
    pub path: String,
    /// What the generation waits for: "suspend", "write", "resume".
    pub phase: String,
    /// Processes taking part.
    pub processes: usize,
    /// How many of them reached the phase.
    pub done: usize,
    /// Virtual pids holding the generation off in a critical section (`cr_disable`).
    pub held_by: Vec<i32>,
    /// Image bytes reported so far.
    pub bytes: u64,
    pub elapsed_ms: u64,
}

/// Answer to [`Command::Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    pub comp_id: Option<u64>,
    pub ckpt_dir: String,
    pub interval_secs: u64,
    pub processes: Vec<ProcessInfo>,
    /// Generation in progress, if any.
    pub in_progress: Option<u64>,
    /// Its progress.
    pub progress: Option<GenerationProgress>,
    /// Last complete generation: (id, path, unix time completed, duration ms, total bytes).
    pub last_complete: Option<GenerationSummary>,
    /// `--keep N`: complete generations kept (None = all).
    pub keep: Option<u32>,
    /// Seconds until the next interval checkpoint, when one is scheduled.
    pub next_checkpoint_in_secs: Option<u64>,
}

/// A complete generation on disk (answer to [`Command::Generations`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationInfo {
    pub generation: u64,
    pub path: String,
    pub completed_unix: u64,
    pub duration_ms: u64,
    pub bytes: u64,
    pub processes: usize,
    /// Whether `latest` points at it.
    pub latest: bool,
}

/// Summary of a finished generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationSummary {
    pub generation: u64,
    pub path: String,
    pub completed_unix: u64,
    pub duration_ms: u64,
    pub bytes: u64,
    /// Longest downtime of any process, microseconds.
    pub max_downtime_us: u64,
}

/// Replies to `crctl` commands.
// A status is large and rare; boxing it would only make every use clumsier.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// A checkpoint was started (no wait) with this generation id.
    Started { generation: u64 },
    /// A checkpoint completed.
    Done(GenerationSummary),
    /// A command failed.
    Error { message: String },
    Status(StatusInfo),
    Ok,
    Generations(Vec<GenerationInfo>),
}

/// Messages sent by the coordinator.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromCoord {
    /// Accepted. `comp_id` is the computation this connection belongs to.
    Welcome { comp_id: u64, ckpt_dir: String },
    /// Refused (wrong token, protocol version, or computation).
    Rejected { reason: String },
    /// Begin generation `generation`: suspend, then write into `dir` when told; with
    /// `forked`, from a copy-on-write copy while the program runs on.
    Checkpoint { generation: u64, dir: String, forked: bool },
    /// Every process reached the previous phase; go on to `phase`.
    Proceed { generation: u64, phase: Phase },
    /// Give up on this generation and resume.
    Abort { generation: u64, reason: String },
    /// Answer to a `crctl` command.
    Reply(Reply),
    /// Generation `generation` is complete (its manifest is durable).
    Completed { generation: u64 },
    /// Settings the coordinator imposes on every process (sent after `Welcome` when the
    /// coordinator has any): page data compression (`crcoord --compress`).
    Settings { compression: crate::image::Compression },
    /// A [`ToCoord::RequestCheckpoint`] of this process failed: generation `generation`
    /// (which was to cover it) failed, or, with `generation` 0, none could be started.
    RequestFailed { generation: u64, reason: String },
}

/// Read a shared secret from a file: its first line, without surrounding white space.
/// A file every user may read, and an empty secret, are refused with a message.
pub fn read_token_file(path: &std::path::Path) -> Result<String, String> {
    use std::os::unix::fs::MetadataExt;
    let bad = |why: String| format!("token file {}: {why}", path.display());
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if meta.mode() & 0o004 != 0 {
        return Err(bad("readable by every user; chmod 600 it".into()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.is_empty() {
        return Err(bad("empty".into()));
    }
    Ok(token)
}

/// Encode one frame (length prefix + postcard body).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, crate::Error> {
    let body = postcard::to_allocvec(msg)?;
    if body.len() > MAX_FRAME {
        return Err(crate::Error::FrameTooLarge(body.len()));
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decode a frame body (without its length prefix).
pub fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, crate::Error> {
    Ok(postcard::from_bytes(body)?)
}

/// Read a frame's length prefix and check it against [`MAX_FRAME`].
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, crate::Error> {
    let n = u32::from_le_bytes(prefix) as usize;
    if n > MAX_FRAME {
        return Err(crate::Error::FrameTooLarge(n));
    }
    Ok(n)
}

/// Blocking helpers for std streams (used by the coordinator, crctl and the launchers).
pub mod blocking {
    use super::*;
    use std::io::{Read, Write};

    pub fn send<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), crate::Error> {
        let frame = encode(msg)?;
        w.write_all(&frame)?;
        w.flush()?;
        Ok(())
    }

    pub fn recv<R: Read, T: for<'de> Deserialize<'de>>(r: &mut R) -> Result<T, crate::Error> {
        let mut prefix = [0u8; 4];
        r.read_exact(&mut prefix)?;
        let n = frame_len(prefix)?;
        let mut body = vec![0u8; n];
        r.read_exact(&mut body)?;
        decode(&body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_limits() {
        let m = FromCoord::Checkpoint { generation: 7, dir: "/tmp/x".into(), forked: true };
        let f = encode(&m).unwrap();
        let n = frame_len(f[..4].try_into().unwrap()).unwrap();
        assert_eq!(n, f.len() - 4);
        let back: FromCoord = decode(&f[4..]).unwrap();
        assert_eq!(back, m);
        assert!(frame_len((MAX_FRAME as u32 + 1).to_le_bytes()).is_err());
        assert!(decode::<FromCoord>(&[0xff, 0xff, 0xff]).is_err());
    }
}
