//! `crctl`: talk to a running crust coordinator.

use clap::{Parser, Subcommand};
use crust_coordinator::client::{Control, CONNECT_TIMEOUT, REPLY_TIMEOUT};
use crust_coordinator::progress::human_bytes;
use crust_coordinator::{init_logging, token_from, Error};
use crust_format::wire::{Command, GenerationInfo, GenerationSummary, ProcessInfo, Reply, StatusInfo};
use std::path::PathBuf;
use std::process::ExitCode;

/// Control a crust checkpoint coordinator.
#[derive(Parser, Debug)]
#[command(name = "crctl", version)]
struct Args {
    /// Coordinator address.
    #[arg(long, env = "CR_COORD", default_value = crust_format::wire::DEFAULT_COORD, value_name = "HOST:PORT")]
    coord: String,
    /// File holding the coordinator's shared secret [default: env CR_TOKEN].
    #[arg(long, value_name = "FILE", global = true)]
    token_file: Option<PathBuf>,
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
        /// SIGKILL every process once the checkpoint is complete (implies --wait).
        #[arg(long)]
        kill: bool,
    },
    /// Show the coordinator's state: computation, interval, the checkpoint in progress,
    /// the last one, the processes.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the processes (or, with --generations, the complete generations on disk).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// List the complete checkpoint generations instead of the processes.
        #[arg(long)]
        generations: bool,
    },
    /// SIGKILL every process of the computation.
    Kill,
    /// Stop the coordinator (processes keep running).
    Quit,
    /// Set the automatic checkpoint interval in seconds (0 = off).
    Interval { secs: u64 },
    /// Keep only the newest N complete generations from the next checkpoint on (0 = all).
    Keep { n: u32 },
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.verbose);
    let token = match token_from(args.token_file.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("crctl: {e}");
            return ExitCode::from(2);
        }
    };
    let mut ctl = match Control::connect_with_token(&args.coord, CONNECT_TIMEOUT, token.clone()) {
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
        Cmd::Checkpoint { wait, kill } => {
            let wait = *wait || *kill;
            (Command::Checkpoint { wait, kill_after: *kill }, (!wait).then_some(REPLY_TIMEOUT))
        }
        Cmd::Status { .. } => (Command::Status, Some(REPLY_TIMEOUT)),
        Cmd::List { generations: false, .. } => (Command::Status, Some(REPLY_TIMEOUT)),
        Cmd::List { generations: true, .. } => (Command::Generations, Some(REPLY_TIMEOUT)),
        Cmd::Kill => (Command::Kill, Some(REPLY_TIMEOUT)),
        Cmd::Quit => (Command::Quit, Some(REPLY_TIMEOUT)),
        Cmd::Interval { secs } => (Command::Interval { secs: *secs }, Some(REPLY_TIMEOUT)),
        Cmd::Keep { n } => (Command::Keep { keep: *n }, Some(REPLY_TIMEOUT)),
    };
    // A waiting checkpoint shows its progress on stderr (a bar on a terminal).
    let watch = match &args.cmd {
        Cmd::Checkpoint { wait, kill } if *wait || *kill => {
            Some(crust_coordinator::progress::Watch::start(&args.coord, token))
        }
        _ => None,
    };
    let reply = ctl.command(cmd, timeout);
    if let Some(w) = watch {
        w.finish();
    }
    let reply = match reply {
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
        (Reply::Status(st), Cmd::Status { json: true }) => print_json(&st),
        (Reply::Status(st), Cmd::List { json: true, .. }) => print_json(&st.processes),
        (Reply::Status(st), Cmd::List { json: false, .. }) => {
            print!("{}", process_table(&st.processes));
            ExitCode::SUCCESS
        }
        (Reply::Status(st), _) => {
            print!("{}", status_text(&st));
            ExitCode::SUCCESS
        }
        (Reply::Generations(g), Cmd::List { json: true, .. }) => print_json(&g),
        (Reply::Generations(g), _) => {
            print!("{}", generations_table(&g));
            ExitCode::SUCCESS
        }
        (Reply::Ok, _) => ExitCode::SUCCESS,
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> ExitCode {
    match serde_json::to_string_pretty(v) {
        Ok(j) => {
            println!("{j}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("crctl: {e}");
            ExitCode::from(1)
        }
    }
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
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

fn process_table(ps: &[ProcessInfo]) -> String {
    let mut o =
        format!("{:>8} {:>8} {:>8} {:<11} {:<16} {:>10} PROGRAM\n", "VPID", "PID", "VPPID", "STATE", "HOST", "DOWNTIME");
    for p in ps {
        let restored = p.restored_from.map_or(String::new(), |g| format!("  (restarted from generation {g})"));
        let down = p.downtime_us.map_or("-".to_string(), |d| format!("{:.1} ms", d as f64 / 1000.0));
        o += &format!(
            "{:>8} {:>8} {:>8} {:<11} {:<16} {:>10} {}{restored}\n",
            p.vpid, p.real_pid, p.vppid, p.state, p.hostname, down, p.program
        );
    }
    o
}

fn generations_table(gs: &[GenerationInfo]) -> String {
    let mut o = format!("{:>10} {:<23} {:>10} {:>9} {:>5}  PATH\n", "GENERATION", "COMPLETED", "SIZE", "DURATION", "PROCS");
    for g in gs {
        o += &format!(
            "{:>10} {:<23} {:>10} {:>7}ms {:>5}  {}{}\n",
            g.generation,
            utc(g.completed_unix),
            human_bytes(g.bytes),
            g.duration_ms,
            g.processes,
            g.path,
            if g.latest { "  (latest)" } else { "" }
        );
    }
    o
}

fn status_text(st: &StatusInfo) -> String {
    let mut o = String::new();
    let comp = st.comp_id.map_or("none".to_string(), |c| format!("{c:016x}"));
    o += &format!("computation:  {comp}\n");
    o += &format!("ckpt dir:     {}\n", st.ckpt_dir);
    let mut interval = if st.interval_secs == 0 { "off".to_string() } else { format!("{} s", st.interval_secs) };
    if let Some(n) = st.next_checkpoint_in_secs {
        interval += &format!(" (next in {n} s)");
    }
    o += &format!("interval:     {interval}\n");
    if let Some(k) = st.keep {
        o += &format!("keep:         newest {k} generation(s)\n");
    }
    match &st.progress {
        Some(p) => {
            o += &format!(
                "in progress:  generation {} ({}: {}/{} processes, {} written, {:.1} s)\n",
                p.generation,
                p.phase,
                p.done,
                p.processes,
                human_bytes(p.bytes),
                p.elapsed_ms as f64 / 1000.0
            );
            if !p.held_by.is_empty() {
                o += &format!("              held off by a critical section in vpid {:?}\n", p.held_by);
            }
        }
        None => {
            if let Some(g) = st.in_progress {
                o += &format!("in progress:  generation {g}\n");
            }
        }
    }
    match &st.last_complete {
        Some(s) => {
            o += &format!("last:         {} at {}\n              {}\n", summary_line(s), utc(s.completed_unix), s.path)
        }
        None => o += "last:         none\n",
    }
    o += &format!("processes:    {}\n", st.processes.len());
    if !st.processes.is_empty() {
        for line in process_table(&st.processes).lines() {
            o += &format!("  {line}\n");
        }
    }
    o
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(super::utc(1_767_225_599), "2025-12-31 23:59:59 UTC");
    }
}
