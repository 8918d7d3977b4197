//! Progress of a checkpoint for `crctl checkpoint --wait`.
//!
//! While the waiting connection blocks for the outcome, a second control connection asks
//! the coordinator's status a few times a second and shows the generation in progress:
//! its phase, how many processes are done with it, and the image bytes written so far
//! (from the processes' `Written` reports) with the rate. On a terminal this is an
//! `indicatif` progress bar on stderr (processes done out of all); otherwise a plain line
//! on stderr whenever the phase or the count changes.

use crate::client::{Control, CONNECT_TIMEOUT};
use crust_format::wire::{Command, GenerationProgress, Reply};
use std::io::IsTerminal;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the status is asked.
const POLL: Duration = Duration::from_millis(150);

/// A running progress display; [`Watch::finish`] stops and clears it.
pub struct Watch {
    /// Dropped (or sent to) to stop the display: the thread waits on the other end between
    /// two status requests, so it ends at once rather than after its pause (which used to
    /// add up to the whole pause to every `crctl checkpoint --wait`).
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watch {
    /// Start watching (quietly does nothing if the second connection fails).
    pub fn start(addr: &str, token: Option<String>) -> Watch {
        let (stop, stopped) = channel();
        let addr = addr.to_string();
        let thread = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || {
                if let Ok(ctl) = Control::connect_with_token(&addr, CONNECT_TIMEOUT, token) {
                    run(ctl, &stopped);
                }
            })
            .ok();
        Watch { stop: Some(stop), thread }
    }

    pub fn finish(mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Bytes in binary units ("850.0 MiB"), for people.
pub fn human_bytes(b: u64) -> String {
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

/// "write 2/3 processes, 1.2 GiB (850.0 MiB/s)".
pub fn describe(p: &GenerationProgress) -> String {
    let secs = (p.elapsed_ms as f64 / 1000.0).max(0.001);
    let mut s = format!("{} {}/{} processes, {}", p.phase, p.done, p.processes, human_bytes(p.bytes));
    if p.bytes > 0 {
        s += &format!(" ({}/s)", human_bytes((p.bytes as f64 / secs) as u64));
    }
    if !p.held_by.is_empty() {
        s += &format!(", held off by vpid {:?}", p.held_by);
    }
    s
}

fn run(mut ctl: Control, stop: &Receiver<()>) {
    let tty = std::io::stderr().is_terminal();
    let bar = if tty {
        let b = indicatif::ProgressBar::new(1);
        b.set_style(
            indicatif::ProgressStyle::with_template("crctl: generation {prefix} [{bar:20}] {msg} {elapsed}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        Some(b)
    } else {
        None
    };
    let mut last_line = String::new();
    while let Ok(Reply::Status(st)) = ctl.command(Command::Status, Some(Duration::from_secs(5))) {
        if let Some(p) = st.progress {
            match &bar {
                Some(b) => {
                    b.set_prefix(p.generation.to_string());
                    b.set_length(p.processes as u64);
                    b.set_position(p.done as u64);
                    b.set_message(describe(&p));
                }
                None => {
                    let line = format!("generation {}: {} {}/{} processes", p.generation, p.phase, p.done, p.processes);
                    if line != last_line {
                        eprintln!("crctl: {line}, {} written, {:.1} s", human_bytes(p.bytes), p.elapsed_ms as f64 / 1000.0);
                        last_line = line;
                    }
                }
            }
        }
        match stop.recv_timeout(POLL) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
}
