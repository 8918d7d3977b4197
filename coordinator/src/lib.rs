//! The crust coordinator: the daemon that drives checkpoint generations (`crcoord`) and
//! the control client (`crctl`).
//!
//! * [`core`]: the coordinator state machine. Pure apart from the generation directories
//!   it creates and removes and the manifest it writes: it consumes [`core::Input`]s and
//!   returns [`core::Action`]s, which makes it testable without sockets or timing.
//! * [`server`]: the TCP driver (an accept thread, one reader thread per connection and
//!   one thread owning the state machine).
//! * [`client`]: the control side of the protocol, used by `crctl` and by tests.
//!
//! The protocol itself is documented in [`crust_format::wire`].

pub mod client;
pub mod core;
pub mod progress;
pub mod server;

use crust_format::wire;
use serde::de::DeserializeOwned;
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

/// Errors of the coordinator library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("no coordinator at {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol error: {0}")]
    Protocol(#[from] crust_format::Error),
    #[error("the coordinator closed the connection")]
    Closed,
    #[error("rejected by the coordinator: {0}")]
    Rejected(String),
    #[error("unexpected message from the coordinator: {0}")]
    Unexpected(String),
    #[error("{0}")]
    Config(String),
}

/// How long an `--exit-when-idle` coordinator waits for its first process.
pub const DEFAULT_IDLE_GRACE: Duration = Duration::from_secs(60);
/// Default `--generation-timeout`.
pub const DEFAULT_GENERATION_TIMEOUT: Duration = Duration::from_secs(600);

/// Coordinator settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Absolute checkpoint directory (computation directories are created inside).
    pub ckpt_dir: PathBuf,
    /// Seconds between automatic checkpoints; 0 = off.
    pub interval_secs: u64,
    /// A generation that takes longer than this fails.
    pub generation_timeout: Duration,
    /// Exit when the last process is gone, or when none connected within `idle_grace`.
    pub exit_when_idle: bool,
    pub idle_grace: Duration,
    /// Shared secret required in hellos, if set.
    pub token: Option<String>,
    /// Keep only the newest N complete generations (None: keep all).
    pub keep: Option<u32>,
    /// Shell command run (`sh -c`) after each complete generation.
    pub on_checkpoint: Option<String>,
    /// Shell command run when a restarted computation connects.
    pub on_restart: Option<String>,
    /// Ask processes to write their images from a forked copy-on-write copy (default);
    /// `false` (`--no-forked`, `CR_FORKED=0`): stop-the-world writing.
    pub forked: bool,
    /// Page data compression every process uses (`--compress`; None = each its own).
    pub compress: Option<crust_format::image::Compression>,
}

impl Config {
    /// A configuration with the defaults of `crcoord` for `ckpt_dir`.
    pub fn new(ckpt_dir: PathBuf) -> Self {
        Config {
            ckpt_dir,
            interval_secs: 0,
            generation_timeout: DEFAULT_GENERATION_TIMEOUT,
            exit_when_idle: false,
            idle_grace: DEFAULT_IDLE_GRACE,
            token: None,
            keep: None,
            on_checkpoint: None,
            on_restart: None,
            forked: true,
            compress: None,
        }
    }
}

/// Read one frame without trusting its length prefix for the allocation: the body is
/// read incrementally, so a peer announcing a large frame and sending nothing costs
/// nothing. Frames over [`wire::MAX_FRAME`] are an error.
pub fn recv_frame<R: Read, T: DeserializeOwned>(r: &mut R) -> Result<T, Error> {
    recv_frame_limited(r, wire::MAX_FRAME)
}

/// [`recv_frame`] with a lower size limit (used before a peer has said hello).
pub fn recv_frame_limited<R: Read, T: DeserializeOwned>(r: &mut R, limit: usize) -> Result<T, Error> {
    let mut prefix = [0u8; 4];
    r.read_exact(&mut prefix)?;
    let n = wire::frame_len(prefix)?;
    if n > limit {
        return Err(Error::Protocol(crust_format::Error::FrameTooLarge(n)));
    }
    let mut body = Vec::with_capacity(n.min(64 << 10));
    r.take(n as u64).read_to_end(&mut body)?;
    if body.len() != n {
        return Err(Error::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(wire::decode(&body)?)
}

/// Set up `tracing` on stderr. The level comes from env `CR_LOG` (an `EnvFilter`
/// directive such as `debug` or `crust_coordinator=trace`) when set, otherwise from the
/// number of `-v` flags: none = warnings and errors only, 1 = info, 2 = debug, 3+ = trace.
pub fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("CR_LOG") {
        Ok(s) if !s.trim().is_empty() => EnvFilter::try_new(s.trim()).unwrap_or_else(|_| EnvFilter::new("info")),
        _ => EnvFilter::new(match verbose {
            0 => "warn",
            1 => "info",
            2 => "debug",
            _ => "trace",
        }),
    };
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// Whether a `--bind` address only accepts connections from this host.
pub fn is_loopback_bind(bind: &str) -> bool {
    let host = bind.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Read a shared secret from a file (see [`wire::read_token_file`]).
pub fn read_token_file(path: &std::path::Path) -> Result<String, Error> {
    wire::read_token_file(path).map_err(Error::Config)
}

/// The shared secret from `--token-file` if given, else from env `CR_TOKEN`.
pub fn token_from(file: Option<&std::path::Path>) -> Result<Option<String>, Error> {
    match file {
        Some(f) => read_token_file(f).map(Some),
        None => Ok(std::env::var("CR_TOKEN").ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())),
    }
}

/// Compare secrets in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut diff = (a.len() != b.len()) as u8;
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// This host's name (used to tell which processes can be signalled locally).
pub fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default()
}

/// A fresh, non-zero computation id: 8 bytes of /dev/urandom, or the time mixed with the pid.
pub fn random_comp_id() -> u64 {
    let mut b = [0u8; 8];
    let from_urandom = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).is_ok();
    let mut id = u64::from_le_bytes(b);
    if !from_urandom || id == 0 {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        // splitmix64 of time ^ pid, so close start times still give unrelated ids.
        let mut z = (t.as_nanos() as u64) ^ ((std::process::id() as u64) << 32) ^ 0x9e37_79b9_7f4a_7c15;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        id = z ^ (z >> 31);
    }
    if id == 0 {
        1
    } else {
        id
    }
}
