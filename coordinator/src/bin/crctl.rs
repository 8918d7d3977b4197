//! `crctl`: talk to a running crust coordinator.

use clap::{Parser, Subcommand};
use crust_coordinator::client::{Control, CONNECT_TIMEOUT, REPLY_TIMEOUT};
use crust_coordinator::{init_logging, Error};
use crust_format::wire::{Command, GenerationSummary, Reply, StatusInfo};
use std::process::ExitCode;

/// Control a crust checkpoint coordinator.
#[derive(Parser, Debug)]
#[command(name = "crctl", version)]
struct Args {
    /// Coordinator address.
    #[arg(long, env = "CR_COORD", default_value = crust_format::wire::DEFAULT_COORD, value_name = "HOST:PORT")]
    coord: String,
    /// More log output (-v info, -vv debug); env CR_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Checkpoint the computation now.
    Checkpoint {
        /// Wait until the checkpoint is complete; print its directory as the last line.
        #[arg(long)]
        wait: bool,
        /// SIGKILL every process once the checkpoint is complete.
        #[arg(long)]
        kill: bool,
    },
    /// Show the coordinator's state.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// SIGKILL every process of the computation.
    Kill,
    /// Stop the coordinator (processes keep running).
    Quit,
    /// Set the automatic checkpoint interval in seconds (0 = off).
    Interval { secs: u64 },
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.verbose);
    let mut ctl = match Control::connect(&args.coord, CONNECT_TIMEOUT) {
        Ok(c) => c,
        Err(Error::Connect { addr, source }) => {
            eprintln!("crctl: no coordinator at {addr}: {source}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("crctl: {}: {e}", args.coord);
            return ExitCode::from(2);
        }
    };
    let (cmd, timeout) = match &args.cmd {
        Cmd::Checkpoint { wait, kill } => (Command::Checkpoint { wait: *wait, kill_after: *kill }, (!wait).then_some(REPLY_TIMEOUT)),
        Cmd::Status { .. } => (Command::Status, Some(REPLY_TIMEOUT)),
        Cmd::Kill => (Command::Kill, Some(REPLY_TIMEOUT)),
        Cmd::Quit => (Command::Quit, Some(REPLY_TIMEOUT)),
        Cmd::Interval { secs } => (Command::Interval { secs: *secs }, Some(REPLY_TIMEOUT)),
    };
    let reply = match ctl.command(cmd, timeout) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("crctl: {e}");
            return ExitCode::from(1);
        }
    };
    match (reply, &args.cmd) {
        (Reply::Error { message }, _) => {
            eprintln!("crctl: {message}");
            ExitCode::from(1)
        }
        (Reply::Started { generation }, _) => {
            println!("started generation {generation}");
            ExitCode::SUCCESS
        }
        (Reply::Done(s), _) => {
            println!("{}", summary_line(&s));
            println!("{}", s.path);
            ExitCode::SUCCESS
        }
        (Reply::Status(st), Cmd::Status { json: true }) => match serde_json::to_string_pretty(&st) {
            Ok(j) => {
                println!("{j}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("crctl: {e}");
                ExitCode::from(1)
            }
        },
        (Reply::Status(st), _) => {
            print!("{}", status_text(&st));
            ExitCode::SUCCESS
        }
        (Reply::Ok, _) => ExitCode::SUCCESS,
    }
}

fn human_bytes(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

fn summary_line(s: &GenerationSummary) -> String {
    format!(
        "generation {} complete: {} in {} ms, max downtime {:.1} ms",
        s.generation,
        human_bytes(s.bytes),
        s.duration_ms,
        s.max_downtime_us as f64 / 1000.0
    )
}

fn status_text(st: &StatusInfo) -> String {
    let mut o = String::new();
    let comp = st.comp_id.map_or("none".to_string(), |c| format!("{c:016x}"));
    o += &format!("computation:  {comp}\n");
    o += &format!("ckpt dir:     {}\n", st.ckpt_dir);
    let interval = if st.interval_secs == 0 { "off".to_string() } else { format!("{} s", st.interval_secs) };
    o += &format!("interval:     {interval}\n");
    if let Some(g) = st.in_progress {
        o += &format!("in progress:  generation {g}\n");
    }
    match &st.last_complete {
        Some(s) => o += &format!("last:         {}\n              {}\n", summary_line(s), s.path),
        None => o += "last:         none\n",
    }
    o += &format!("processes:    {}\n", st.processes.len());
    if !st.processes.is_empty() {
        o += &format!("  {:>8} {:>8} {:<11} {:<16} PROGRAM\n", "VPID", "PID", "STATE", "HOST");
        for p in &st.processes {
            o += &format!("  {:>8} {:>8} {:<11} {:<16} {}\n", p.vpid, p.real_pid, p.state, p.hostname, p.program);
        }
    }
    o
}
