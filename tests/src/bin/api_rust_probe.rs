//! Rust API probe (the `crust-api` crate): registers a restart hook, asks for a checkpoint
//! after gate 1 inside nothing, prints what `checkpoint()` returned, holds a critical
//! section (a guard) across gate 2, passes gate 3, exits 23. Without crust: not enabled, NotEnabled.
//! Follows the gating protocol of `tests/probes/gate.h`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

static RESTARTED_FROM: AtomicU64 = AtomicU64::new(0);

fn gate(k: u32) {
    println!("gate {k}");
    std::io::stdout().flush().expect("flush stdout");
    let Some(dir) = std::env::var_os("CR_TEST_GATE").filter(|d| !d.is_empty()) else { return };
    let dir = PathBuf::from(dir);
    let (reached, go) = (dir.join(format!("reached-{k}")), dir.join(format!("go-{k}")));
    let mark = |p: &PathBuf| {
        if let Err(e) = std::fs::create_dir(p) {
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                eprintln!("gate: mkdir {}: {e}", p.display());
                std::process::exit(98);
            }
        }
    };
    mark(&reached);
    while !go.exists() {
        if !reached.exists() {
            mark(&reached);
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

fn main() {
    println!("enabled {}", crust_api::is_enabled());
    if crust_api::is_enabled() {
        crust_api::on_restart(|crid| RESTARTED_FROM.store(crid, Ordering::SeqCst)).expect("register a hook");
    }
    gate(1);
    match crust_api::checkpoint() {
        Ok(crust_api::Checkpoint::Taken(crid)) => println!("checkpoint taken {crid}"),
        Ok(crust_api::Checkpoint::Restarted) => {
            println!("restarted from {}", RESTARTED_FROM.load(Ordering::SeqCst))
        }
        Err(e) => println!("checkpoint: {e}"),
    }
    {
        let section = crust_api::disable();
        println!("critical section {}", section.is_ok());
        gate(2);
    }
    gate(3);
    println!("done");
    std::process::exit(23);
}
