//! Compression rate of the image codecs on one core, on data like process memory.
//!
//! `cargo run --release -p crust-format --example codec_bench [MIB]` (bench/run.sh runs it).
//! Each data set is compressed in 1 MiB chunks exactly as the checkpoint writer does (zstd
//! in a static context), then decompressed; prints MB/s of input per core and the ratio.
//! Rates use the thread's CPU time, so a busy machine (other processes taking the core)
//! does not count against them; the best of 3 runs is kept.
//!
//! Two compression rates per codec: `compress` is the codec alone on every chunk; `writer`
//! is the whole path the checkpoint writer takes per 4 KiB page of memory (all-zero pages
//! dropped, the rest checksummed (crc32c) and compressed in place by whole chunks or
//! through the 1 MiB chunk buffer, stored compressed or raw, the stored bytes' crc32c),
//! in MB of process memory per second.
//! Data sets: `mixed` (text, random, numbers, half-empty pages: 1 MiB each in turn),
//! `typical` (zero pages, text and random data: 1 MiB each in turn, the issue's "zeros,
//! text, random mixed"), and `text`, `numbers`, `random` alone.

use crust_format::codec::{Decoder, Encoder};
use crust_format::image::{max_compressed_len, Compression, CHUNK_SIZE};
/// CPU time of this thread, in seconds.
fn cpu_now() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const WORDS: &[&str] = &[
    "checkpoint", "restart", "memory", "the", "of", "process", "and", "page", "image", "kernel", "a", "thread",
    "signal", "to", "is", "compute", "simulation", "step", "energy", "grid", "value", "in", "for", "with",
];

fn text(r: &mut Rng, out: &mut Vec<u8>, n: usize) {
    let end = out.len() + n;
    while out.len() < end {
        out.extend_from_slice(WORDS[(r.next() % WORDS.len() as u64) as usize].as_bytes());
        out.push(if r.next().is_multiple_of(11) { b'\n' } else { b' ' });
    }
    out.truncate(end);
}
fn random(r: &mut Rng, out: &mut Vec<u8>, n: usize) {
    let end = out.len() + n;
    while out.len() < end {
        out.extend_from_slice(&r.next().to_le_bytes());
    }
    out.truncate(end);
}
fn numbers(r: &mut Rng, out: &mut Vec<u8>, n: usize) {
    let end = out.len() + n;
    let mut x = 1.0f64;
    while out.len() < end {
        x += 0.001 * (r.next() % 1000) as f64;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(end);
}
fn sparse(r: &mut Rng, out: &mut Vec<u8>, n: usize) {
    // Pages with 512 bytes of data and zeros after (all-zero pages never reach the codec).
    let end = out.len() + n;
    while out.len() < end {
        text(r, out, 512);
        out.resize(out.len() + 4096 - 512, 0);
    }
    out.truncate(end);
}

fn dataset(kind: &str, mib: usize) -> Vec<u8> {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let mut v = Vec::with_capacity(mib << 20);
    for i in 0..mib {
        match kind {
            "text" => text(&mut r, &mut v, 1 << 20),
            "random" => random(&mut r, &mut v, 1 << 20),
            "numbers" => numbers(&mut r, &mut v, 1 << 20),
            "typical" => match i % 3 {
                0 => v.resize(v.len() + (1 << 20), 0),
                1 => text(&mut r, &mut v, 1 << 20),
                _ => random(&mut r, &mut v, 1 << 20),
            },
            _ => match i % 4 {
                0 => text(&mut r, &mut v, 1 << 20),
                1 => random(&mut r, &mut v, 1 << 20),
                2 => numbers(&mut r, &mut v, 1 << 20),
                _ => sparse(&mut r, &mut v, 1 << 20),
            },
        }
    }
    v
}

/// The writer's path over `data` (see the module comment); returns MB of memory per CPU
/// second. As in preload/src/dump.rs: runs of non-zero pages; a whole chunk of a run is
/// compressed in place, the rest goes through the chunk buffer.
fn writer_path(enc: &mut Encoder, data: &[u8], stage: &mut [u8], out: &mut [u8]) -> f64 {
    let t = cpu_now();
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, page) in data.chunks(4096).enumerate() {
        if page.iter().all(|&b| b == 0) {
            continue;
        }
        match runs.last_mut() {
            Some((s, l)) if *s + *l == i * 4096 => *l += page.len(),
            _ => runs.push((i * 4096, page.len())),
        }
    }
    let mut fill = 0usize;
    let mut crcs = 0u32;
    let mut store = |src: &[u8], out: &mut [u8]| {
        let n = enc.compress(src, out).expect("compress");
        let s = if n >= src.len() { src } else { &out[..n] };
        crc32c::crc32c(s)
    };
    for (start, len) in runs {
        let mut crc = 0u32;
        let mut done = 0;
        while done < len {
            if fill == 0 && len - done >= CHUNK_SIZE {
                let src = &data[start + done..start + done + CHUNK_SIZE];
                crc = crc32c::crc32c_append(crc, src);
                crcs ^= store(src, out);
                done += CHUNK_SIZE;
                continue;
            }
            let n = (len - done).min(CHUNK_SIZE - fill);
            stage[fill..fill + n].copy_from_slice(&data[start + done..start + done + n]);
            crc = crc32c::crc32c_append(crc, &stage[fill..fill + n]);
            fill += n;
            done += n;
            if fill == CHUNK_SIZE {
                crcs ^= store(stage, out);
                fill = 0;
            }
        }
        crcs ^= crc;
    }
    if fill > 0 {
        crcs ^= store(&stage[..fill], out);
    }
    std::hint::black_box(crcs);
    data.len() as f64 / 1e6 / (cpu_now() - t)
}

fn run(kind: Compression, level: i32, data: &[u8]) -> (f64, f64, f64, f64) {
    let ws_len = Encoder::workspace_len_at(kind, level);
    let mut ws = vec![0u64; ws_len / 8 + 1];
    // SAFETY: the workspace outlives the encoder and nothing else uses it.
    let mut enc = unsafe { Encoder::in_workspace_at(kind, level, ws.as_mut_ptr().cast(), ws.len() * 8) }.expect("encoder");
    let mut out = vec![0u8; max_compressed_len(CHUNK_SIZE)];
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut stored = 0usize;
    let mut ct = 0.0;
    for c in data.chunks(CHUNK_SIZE) {
        // Only the codec is timed (not keeping the result for the decompression below).
        let t = cpu_now();
        let n = enc.compress(c, &mut out).expect("compress");
        ct += cpu_now() - t;
        let s = if n >= c.len() { c } else { &out[..n] };
        stored += s.len();
        chunks.push(s.to_vec());
    }
    let mut dec = Decoder::new(kind).expect("decoder");
    let mut back = vec![0u8; CHUNK_SIZE];
    let t = cpu_now();
    for (c, orig) in chunks.iter().zip(data.chunks(CHUNK_SIZE)) {
        dec.decompress(c, &mut back[..orig.len()]).expect("decompress");
    }
    let dt = cpu_now() - t;
    let mb = data.len() as f64 / 1e6;
    let mut stage = vec![0u8; CHUNK_SIZE];
    let wp = writer_path(&mut enc, data, &mut stage, &mut out);
    (mb / ct, mb / dt, data.len() as f64 / stored as f64, wp)
}

fn main() {
    let mib: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(64);
    println!("{:<8} {:<10} {:>12} {:>12} {:>14} {:>7}", "data", "codec", "compress", "writer", "decompress", "ratio");
    for set in ["mixed", "typical", "text", "numbers", "random"] {
        let data = dataset(set, mib);
        let mut cases: Vec<(String, Compression, i32)> = vec![("lz4".into(), Compression::Lz4, 0)];
        for l in [-20, -10, -5, -3, -1, 1, 3] {
            cases.push((format!("zstd {l}"), Compression::Zstd, l));
        }
        for (name, kind, level) in cases {
            // Best of 3 (the machine is shared).
            let mut best = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
            for _ in 0..3 {
                let r = run(kind, level, &data);
                best = (best.0.max(r.0), best.1.max(r.1), r.2, best.3.max(r.3));
            }
            println!(
                "{:<8} {:<10} {:>7.0} MB/s {:>7.0} MB/s {:>9.0} MB/s {:>6.2}x",
                set, name, best.0, best.3, best.1, best.2
            );
        }
    }
}
