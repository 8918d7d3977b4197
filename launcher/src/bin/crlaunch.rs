//! `crlaunch`: run a program under crust (with the preload library and a coordinator).

use clap::Parser;
use crust_launcher::{
    check_program, compose_ld_preload, coord_client, default_ckpt_dir, init_logging, parse_signal,
    preload_library_path, resolve_program,
};
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

/// Run PROGRAM under crust: it can then be checkpointed with `crctl checkpoint`.
///
/// crlaunch starts a coordinator when none answers at the address (on this host), then
/// replaces itself with PROGRAM, so the program keeps crlaunch's pid, stdio and exit status.
#[derive(Parser, Debug)]
#[command(name = "crlaunch", version)]
struct Args {
    /// Coordinator address [env: CR_COORD] [default: 127.0.0.1:7787].
    #[arg(long, value_name = "HOST:PORT")]
    coord: Option<String>,
    /// Checkpoint directory [env: CR_CKPT_DIR] [default: current directory].
    #[arg(long, value_name = "DIR")]
    ckpt_dir: Option<PathBuf>,
    /// Checkpoint automatically every SECS seconds.
    #[arg(long, value_name = "SECS")]
    interval: Option<u64>,
    /// Keep only the newest N complete generations (0 = all).
    #[arg(long, value_name = "N")]
    keep: Option<u32>,
    /// Signal crust uses inside the program (name or number), e.g. SIGUSR1, RTMIN+2.
    #[arg(long, env = "CR_SIGNAL", default_value = "SIGUSR2", value_name = "SIG")]
    signal: String,
    /// File holding the coordinator's shared secret; the program presents it [default: env CR_TOKEN].
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Compress page data in checkpoint images: none, zstd or lz4 (a coordinator started
    /// with --compress overrides it).
    #[arg(long, env = "CR_COMPRESS", value_name = "none|zstd|lz4")]
    compress: Option<String>,
    /// zstd level for --compress zstd, -50..=9: lower is faster, higher smaller
    /// [default: -3; see BENCHMARKS.md].
    #[arg(long, env = "CR_ZSTD_LEVEL", value_name = "N", allow_hyphen_values = true)]
    zstd_level: Option<i32>,
    /// Write checkpoint images stop-the-world instead of from a forked copy-on-write copy
    /// (sets CR_FORKED=0 for the program and for a coordinator crlaunch starts).
    #[arg(long)]
    no_forked: bool,
    /// Do not start a coordinator when none answers.
    #[arg(long)]
    no_coord_start: bool,
    /// More log output (-v info, -vv debug); env CR_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// The program and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "PROGRAM")]
    command: Vec<OsString>,
}

fn die(code: i32, msg: impl std::fmt::Display) -> ! {
    eprintln!("crlaunch: {msg}");
    std::process::exit(code);
}

fn main() {
    let args = Args::parse();
    init_logging(args.verbose);
    let coord = args.coord.clone().filter(|c| !c.is_empty()).unwrap_or_else(crust_launcher::default_coord);
    if let Err(e) = coord_client::split_addr(&coord) {
        die(2, e);
    }
    let ckpt_dir = match &args.ckpt_dir {
        Some(d) => crust_launcher::absolute(d),
        None => default_ckpt_dir(),
    }
    .unwrap_or_else(|e| die(2, e));
    let signal = parse_signal(&args.signal).unwrap_or_else(|e| die(2, e));
    if let Some(f) = &args.token_file {
        let token = crust_format::wire::read_token_file(f).unwrap_or_else(|e| die(2, e));
        // Single-threaded here: the coordinator hello below, the coordinator crlaunch may
        // start and the program all take it from the environment.
        std::env::set_var("CR_TOKEN", token);
    }
    let compress = match args.compress.as_deref() {
        None => crust_format::image::Compression::None,
        Some(c) => crust_format::image::Compression::parse(c)
            .unwrap_or_else(|| die(2, format_args!("--compress {c}: expected none, zstd or lz4"))),
    };

    if let Some(l) = args.zstd_level {
        if !crust_format::codec::ZSTD_LEVELS.contains(&l) {
            die(2, format_args!("--zstd-level {l}: expected a level from -50 to 9"));
        }
        // Inherited by the program.
        std::env::set_var("CR_ZSTD_LEVEL", l.to_string());
    }

    let program = &args.command[0];
    let shown = program.to_string_lossy();
    let resolved = resolve_program(program).unwrap_or_else(|e| die(2, e));
    check_program(&resolved, &shown).unwrap_or_else(|e| die(2, e));
    let preload = preload_library_path().unwrap_or_else(|e| die(2, e));
    if args.no_forked {
        // Inherited by the coordinator started below and by the program.
        std::env::set_var("CR_FORKED", "0");
    }

    if args.no_coord_start {
        if args.interval.is_some() || args.keep.is_some() {
            tracing::warn!("--interval and --keep have no effect with --no-coord-start");
        }
    } else {
        let settings = coord_client::CoordSettings { interval: args.interval, keep: args.keep };
        if let Err(e) = coord_client::ensure_coordinator_settings(None, &coord, &ckpt_dir, &settings) {
            die(1, e);
        }
    }

    let ld_preload = compose_ld_preload(&preload, std::env::var_os("LD_PRELOAD").as_deref());
    tracing::debug!(program = %resolved.display(), ld_preload = ?ld_preload, coord, signal, "exec");
    let err = std::process::Command::new(&resolved)
        .arg0(program)
        .args(&args.command[1..])
        .env("LD_PRELOAD", ld_preload)
        .env("CR_COORD", &coord)
        .env("CR_CKPT_DIR", &ckpt_dir)
        .env("CR_SIGNAL", signal.to_string())
        .env("CR_COMPRESS", compress.name())
        .exec();
    die(127, format_args!("cannot execute {shown}: {err}"));
}
