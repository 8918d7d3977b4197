//! `crcoord`: the crust checkpoint coordinator daemon.

use anyhow::Context;
use clap::Parser;
use crust_coordinator::{init_logging, is_loopback_bind, server::Server, token_from, Config, Error};
use std::io::Write;
use std::os::fd::{FromRawFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

/// Exit status when the port is already taken (a launcher that lost a start race retries).
const EXIT_ADDR_IN_USE: i32 = 3;

/// Coordinates checkpoints of the processes of one computation.
#[derive(Parser, Debug)]
#[command(name = "crcoord", version)]
struct Args {
    /// TCP port to listen on.
    #[arg(long, default_value_t = crust_format::wire::DEFAULT_PORT)]
    port: u16,
    /// Address to listen on. Anything but a loopback address needs a shared secret
    /// (--token-file or env CR_TOKEN) that every process and crctl must present.
    #[arg(long, default_value = "127.0.0.1")]
    bind: String,
    /// File holding the shared secret (first line) [default: env CR_TOKEN].
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Keep only the newest N complete generations (older ones are deleted once a newer
    /// one is durable).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    keep: Option<u32>,
    /// Run this shell command after each complete generation, with CR_GENERATION,
    /// CR_GENERATION_DIR, CR_COMP_ID and CR_CKPT_DIR in its environment.
    #[arg(long, value_name = "CMD")]
    on_checkpoint: Option<String>,
    /// Run this shell command when a restarted computation connects (same environment,
    /// naming the generation it was restarted from).
    #[arg(long, value_name = "CMD")]
    on_restart: Option<String>,
    /// Seconds between automatic checkpoints (0 = off).
    #[arg(long, default_value_t = 0)]
    interval: u64,
    /// Directory that receives the checkpoints [default: current directory].
    #[arg(long, env = "CR_CKPT_DIR")]
    ckpt_dir: Option<PathBuf>,
    /// Exit when the last process is gone (or when none connected within 60 s).
    #[arg(long)]
    exit_when_idle: bool,
    /// Write one byte to this file descriptor, then close it, once listening.
    #[arg(long, value_name = "FD")]
    ready_fd: Option<RawFd>,
    /// A checkpoint generation that takes longer than this many seconds fails.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    generation_timeout: u64,
    /// Write images stop-the-world (the program stays stopped while its image is
    /// written) instead of from a forked copy-on-write copy. Env CR_FORKED=0 does the same.
    #[arg(long)]
    no_forked: bool,
    /// Compress page data in every process's image: none, zstd or lz4 (overrides the
    /// processes' own CR_COMPRESS / crlaunch --compress).
    #[arg(long, env = "CR_COMPRESS", value_name = "none|zstd|lz4")]
    compress: Option<String>,
    /// More log output (-v info, -vv debug, -vvv trace); env CR_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() {
    let args = Args::parse();
    init_logging(args.verbose);
    match run(args) {
        Ok(()) => {}
        Err(e) => {
            let code = match e.downcast_ref::<Error>() {
                Some(Error::Bind { source, .. }) if source.kind() == std::io::ErrorKind::AddrInUse => EXIT_ADDR_IN_USE,
                _ => 1,
            };
            eprintln!("crcoord: {e:#}");
            std::process::exit(code);
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    if args.generation_timeout == 0 {
        anyhow::bail!("--generation-timeout must be at least 1 second");
    }
    let dir = match args.ckpt_dir {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::env::current_dir().context("current directory")?,
    };
    let ckpt_dir = std::path::absolute(&dir).with_context(|| format!("checkpoint directory {}", dir.display()))?;
    let mut cfg = Config::new(ckpt_dir);
    cfg.interval_secs = args.interval;
    cfg.exit_when_idle = args.exit_when_idle;
    cfg.generation_timeout = Duration::from_secs(args.generation_timeout);
    cfg.keep = args.keep;
    cfg.on_checkpoint = args.on_checkpoint.filter(|c| !c.trim().is_empty());
    cfg.on_restart = args.on_restart.filter(|c| !c.trim().is_empty());
    cfg.token = token_from(args.token_file.as_deref())?;
    if let Some(c) = &args.compress {
        cfg.compress = Some(
            crust_format::image::Compression::parse(c)
                .with_context(|| format!("--compress {c}: expected none, zstd or lz4"))?,
        );
    }
    if cfg.token.is_none() && !is_loopback_bind(&args.bind) {
        anyhow::bail!(
            "refusing to listen on {} without a shared secret: anyone who can reach it could read and \
             kill the computation; give --token-file FILE (or set CR_TOKEN) here and in every crlaunch/crctl",
            args.bind
        );
    }
    cfg.forked = !args.no_forked && !matches!(std::env::var_os("CR_FORKED"), Some(v) if v == "0");

    let host = if args.bind.contains(':') && !args.bind.starts_with('[') {
        format!("[{}]", args.bind)
    } else {
        args.bind.clone()
    };
    let addr = format!("{host}:{}", args.port);
    let server = Server::bind(&addr, cfg.clone())?;
    tracing::info!(
        addr = %server.local_addr()?,
        ckpt_dir = %cfg.ckpt_dir.display(),
        interval = cfg.interval_secs,
        keep = ?cfg.keep,
        token = cfg.token.is_some(),
        exit_when_idle = cfg.exit_when_idle,
        forked = cfg.forked,
        "crcoord listening"
    );
    if let Some(fd) = args.ready_fd {
        signal_ready(fd);
    }
    server.run()?;
    Ok(())
}

fn signal_ready(fd: RawFd) {
    // Refuse the standard streams: closing one of them would not be what the caller meant.
    if fd < 3 || nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_err() {
        tracing::warn!("--ready-fd {fd} is not an open descriptor; not signalling readiness");
        return;
    }
    // SAFETY: fd is open (checked above), not a standard stream, and was handed to us by
    // our parent for exactly this purpose; nothing else in this process owns it, so the
    // File may own and close it.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    if let Err(e) = f.write_all(b"R") {
        tracing::warn!("cannot signal readiness on fd {fd}: {e}");
    }
}
