//! `crrestart [--coord HOST:PORT] [--fd [VPID:]N=PATH]... PATH`: restart a checkpointed program;
//! `crrestart --list-fds [--json] PATH`: show the fds of its processes.
use clap::Parser;

#[derive(Parser)]
#[command(name = "crrestart", about = "Restart a program from a crust checkpoint (a checkpoint directory or one generation)")]
struct Args {
    /// Coordinator address (env CR_COORD); started if none answers on a local address.
    #[arg(long)]
    coord: Option<String>,
    /// Do not start a coordinator.
    #[arg(long)]
    no_coord_start: bool,
    /// Keep files the program writes as they are (default: truncate back to checkpoint-time size).
    #[arg(long)]
    keep_files: bool,
    /// Check every page checksum before starting. Without it, runs mapped from the image
    /// are not read (so not checked) at restart; --eager and compressed images check
    /// every page before starting anyway.
    #[arg(long)]
    verify: bool,
    /// Read all memory in (into anonymous memory) instead of mapping large runs straight
    /// from the image file [env: CR_RESTART_EAGER=1].
    #[arg(long, env = "CR_RESTART_EAGER", value_parser = clap::builder::BoolishValueParser::new())]
    eager: bool,
    /// With --eager: read page data with O_DIRECT, several requests in flight, straight
    /// into memory: `auto` when the image is mostly not in the page cache, `always`, or
    /// `never` (through the page cache) [env: CR_DIRECT_READS].
    #[arg(long, env = "CR_DIRECT_READS", value_name = "auto|always|never", default_value = "auto", value_parser = crust_launcher::pages::DirectReads::parse)]
    direct_reads: crust_launcher::pages::DirectReads,
    /// Show the fd table of every process of the generation (read without the memory) and exit.
    #[arg(long)]
    list_fds: bool,
    /// With --list-fds: JSON instead of a table.
    #[arg(long, requires = "list_fds")]
    json: bool,
    /// Fd substitution: fd N of the root process (VPID:N of process VPID) refers to PATH
    /// after the restart, opened with the fd's recorded flags (repeatable).
    #[arg(long = "fd", value_name = "[VPID:]N=PATH", value_parser = crust_launcher::fds::FdSubst::parse)]
    fd: Vec<crust_launcher::fds::FdSubst>,
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// A checkpoint directory or one generation's directory.
    path: std::path::PathBuf,
}

fn main() {
    let a = Args::parse();
    crust_launcher::init_logging(a.verbose);
    if a.list_fds {
        match crust_launcher::fds::list(&a.path, a.json) {
            Ok(s) => {
                print!("{s}");
                return;
            }
            Err(e) => {
                eprintln!("crrestart: {e}");
                std::process::exit(2);
            }
        }
    }
    let opts = crust_launcher::restart::RestartOptions {
        path: a.path,
        coord: a.coord.unwrap_or_else(crust_launcher::default_coord),
        start_coordinator: !a.no_coord_start,
        keep_files: a.keep_files,
        verify: a.verify,
        eager: a.eager,
        direct_reads: a.direct_reads,
        fd_substs: a.fd,
    };
    match crust_launcher::restart::restart(&opts) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("crrestart: {e}");
            std::process::exit(2);
        }
    }
}
