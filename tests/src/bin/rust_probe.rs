//! Rust probe: std threads, mpsc channels (async and rendezvous), Mutex + Condvar, a
//! Barrier, thread-locals, scoped threads and a 16 MiB heap vector.
//!
//! At gate 1, four workers are blocked in `recv()` on their job channels, one thread waits
//! on a Condvar, one is blocked in a rendezvous `send()`, one is parked. After gate 1 main
//! hands out work and collects the results; after gate 2 it runs scoped threads and shuts
//! everything down. Only main prints, in a fixed order. Exit status 23 when all is well.
//! Follows the gating protocol of `tests/probes/gate.h` (reached-K is a directory).

use std::cell::Cell;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::thread;
use std::time::Duration;

const PROBE_EXIT_CODE: i32 = 23;

fn gate(k: u32) {
    println!("gate {k}");
    std::io::stdout().flush().expect("flush stdout");
    let Some(dir) = std::env::var_os("CR_TEST_GATE").filter(|d| !d.is_empty()) else { return };
    let dir = PathBuf::from(dir);
    let reached = dir.join(format!("reached-{k}"));
    let go = dir.join(format!("go-{k}"));
    let mark = |p: &PathBuf| match std::fs::create_dir(p) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            eprintln!("gate: mkdir {}: {e}", p.display());
            std::process::exit(98);
        }
    };
    mark(&reached);
    while !go.exists() {
        if !reached.exists() {
            mark(&reached);
        }
        thread::sleep(Duration::from_millis(1));
    }
}

fn mix(mut h: u64, x: u64) -> u64 {
    h ^= x;
    h = h.wrapping_mul(0x100000001b3);
    h ^ (h >> 29)
}

fn hash(data: &[u64], seed: u64) -> u64 {
    data.iter().fold(seed ^ 0xcbf29ce484222325, |h, &x| mix(h, x))
}

thread_local! {
    static TLS: Cell<u64> = const { Cell::new(0) };
}

fn main() {
    let mut failures = 0u32;
    let mut x = 0x9e3779b97f4a7c15u64;
    let data: Vec<u64> = (0..2_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        })
        .collect();
    let data = Arc::new(data);
    println!("data: {} words, hash {:016x}", data.len(), hash(&data, 0));
    TLS.with(|t| t.set(7));

    let ready = Arc::new(Barrier::new(4 + 3 + 1));

    // Workers blocked in recv() on their own job channel.
    let (res_tx, res_rx) = mpsc::channel::<(usize, u64, bool)>();
    let mut job_txs = Vec::new();
    let mut workers = Vec::new();
    for i in 0..4 {
        let (tx, rx) = mpsc::channel::<(usize, usize)>();
        job_txs.push(tx);
        let res_tx = res_tx.clone();
        let data = Arc::clone(&data);
        let ready = Arc::clone(&ready);
        workers.push(thread::spawn(move || {
            TLS.with(|t| t.set(100 + i as u64));
            ready.wait();
            let mut jobs = 0u64;
            for (lo, hi) in rx {
                let h = hash(&data[lo..hi], i as u64);
                jobs += 1;
                res_tx.send((i, h, TLS.with(|t| t.get()) == 100 + i as u64)).expect("send result");
            }
            jobs
        }));
    }
    drop(res_tx);

    // A thread waiting on a Condvar.
    let pair = Arc::new((Mutex::new(None::<u64>), Condvar::new()));
    let waiter = {
        let pair = Arc::clone(&pair);
        let ready = Arc::clone(&ready);
        thread::spawn(move || {
            let (m, cv) = &*pair;
            let mut g = m.lock().expect("lock");
            ready.wait();
            while g.is_none() {
                g = cv.wait(g).expect("condvar wait");
            }
            g.expect("value") * 2
        })
    };

    // A thread blocked in a rendezvous send.
    let (sync_tx, sync_rx) = mpsc::sync_channel::<u64>(0);
    let sender = {
        let ready = Arc::clone(&ready);
        thread::spawn(move || {
            ready.wait();
            sync_tx.send(0xdead_beef).is_ok()
        })
    };

    // A parked thread.
    let unparked = Arc::new(AtomicBool::new(false));
    let parked = {
        let ready = Arc::clone(&ready);
        let unparked = Arc::clone(&unparked);
        thread::spawn(move || {
            ready.wait();
            let mut parks = 0u32;
            while !unparked.load(Ordering::SeqCst) {
                thread::park();
                parks += 1;
            }
            parks > 0
        })
    };

    ready.wait();
    println!("7 threads started");

    gate(1);

    let chunk = data.len() / 16;
    for j in 0..16 {
        job_txs[j % 4].send((j * chunk, (j + 1) * chunk)).expect("send job");
    }
    let mut results: Vec<(usize, u64, bool)> = res_rx.iter().take(16).collect();
    results.sort();
    for (i, h, tls_ok) in &results {
        println!("worker {i}: result {h:016x} thread-local ok {tls_ok}");
    }
    {
        let (m, cv) = &*pair;
        *m.lock().expect("lock") = Some(21);
        cv.notify_all();
    }
    println!("condvar waiter returned {}", waiter.join().expect("join waiter"));
    println!("rendezvous received {:#x}", sync_rx.recv().expect("recv"));
    println!("rendezvous sender ok {}", sender.join().expect("join sender"));
    unparked.store(true, Ordering::SeqCst);
    parked.thread().unpark();
    println!("parked thread was parked {}", parked.join().expect("join parked"));

    gate(2);

    let sums: Vec<u64> = thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|i| {
                let data = &data;
                s.spawn(move || {
                    TLS.with(|t| t.set(1000 + i));
                    let part = &data[i as usize * 1000..(i as usize + 1) * 1000];
                    (hash(part, i), TLS.with(|t| t.get()) == 1000 + i)
                })
            })
            .map(|h| h.join().expect("scoped join"))
            .map(|(h, ok)| {
                if !ok {
                    println!("ERROR: scoped thread-local lost");
                }
                h
            })
            .collect();
        handles
    });
    for (i, s) in sums.iter().enumerate() {
        println!("scoped thread {i}: {s:016x}");
    }
    drop(job_txs);
    for (i, w) in workers.into_iter().enumerate() {
        println!("worker {i} did {} jobs", w.join().expect("join worker"));
    }
    if TLS.with(|t| t.get()) != 7 {
        println!("ERROR: main thread-local lost");
        failures += 1;
    }
    println!("main thread-local intact {}", failures == 0);
    println!("data hash again {:016x}", hash(&data, 0));

    gate(3);
    println!("done");
    std::io::stdout().flush().expect("flush stdout");
    std::process::exit(if failures == 0 { PROBE_EXIT_CODE } else { 1 });
}
