//! Compression of page data: encoding one chunk (inside the checkpointed process, with no
//! allocation at all) and unpacking a compressed image's page data (in crrestart).
//!
//! This is the format crate's only FFI module (zstd through `zstd-sys`). LZ4 is `lz4_flex`,
//! pure Rust, built without its `alloc` feature so that it keeps its hash table on the
//! stack and never calls an allocator.
//!
//! Inside a checkpointed process nothing may call libc's `malloc` (a stopped thread may hold
//! its lock). The zstd encoder therefore works in a *static* context: the caller reserves
//! [`Encoder::workspace_len`] bytes in advance and zstd lives inside them
//! (`ZSTD_initStaticCCtx`); `ZSTD_compressCCtx` on a static context never allocates
//! (zstd returns an error instead of resizing), and it is built without multi-threading.

use crate::image::{Chunk, Compression, ImageMeta, PageRun, HEADER_SIZE};
use crate::Error;

/// zstd level used for images unless `CR_ZSTD_LEVEL` (crlaunch `--zstd-level`) says
/// otherwise. On process-like data (examples/codec_bench.rs, BENCHMARKS.md) -3 compresses
/// mixed memory about 40 % faster than level 1 for images about 5 % larger; text
/// compresses at about the same rate at every level from -20 to 1 (zstd's entropy stage,
/// not its match finder, sets the pace there), and data that does not compress is found
/// by sampling and stored raw at any level.
pub const ZSTD_LEVEL: i32 = -3;
/// Levels accepted for images: the static context of levels above 9 takes tens of MiB
/// of the checkpointed process's memory, and below -50 nothing gets faster.
pub const ZSTD_LEVELS: core::ops::RangeInclusive<i32> = -50..=9;

/// Chunks at least this long are sampled before zstd compresses them.
const SAMPLED_MIN: usize = 64 << 10;
/// How many samples, and how long each.
const SAMPLES: usize = 8;
const SAMPLE_LEN: usize = 4096;
/// The samples must shrink by at least 1/this, or the chunk is stored raw.
const SAVE_MIN_FRACTION: usize = 32;

/// A chunk encoder for one compression kind.
pub struct Encoder {
    kind: Compression,
    cctx: *mut zstd_sys::ZSTD_CCtx,
    level: i32,
}

impl Encoder {
    /// Bytes of workspace a zstd encoder at [`ZSTD_LEVEL`] needs (0 for the other kinds).
    pub fn workspace_len(kind: Compression) -> usize {
        Self::workspace_len_at(kind, ZSTD_LEVEL)
    }

    /// [`Encoder::workspace_len`] for another zstd level.
    pub fn workspace_len_at(kind: Compression, level: i32) -> usize {
        match kind {
            // SAFETY: a pure computation.
            Compression::Zstd => unsafe { zstd_sys::ZSTD_estimateCCtxSize(level) },
            _ => 0,
        }
    }

    /// An encoder living in `workspace` (at least [`Encoder::workspace_len`] bytes, 8-byte
    /// aligned). Returns `None` when zstd refuses the workspace.
    ///
    /// # Safety
    /// `workspace` must be valid for reads and writes of `len` bytes, used by nothing else,
    /// for as long as the encoder is used.
    pub unsafe fn in_workspace(kind: Compression, workspace: *mut u8, len: usize) -> Option<Encoder> {
        // SAFETY: forwarded from the caller.
        unsafe { Self::in_workspace_at(kind, ZSTD_LEVEL, workspace, len) }
    }

    /// [`Encoder::in_workspace`] at another zstd level (the workspace must be
    /// [`Encoder::workspace_len_at`] that level).
    ///
    /// # Safety
    /// As for [`Encoder::in_workspace`].
    pub unsafe fn in_workspace_at(kind: Compression, level: i32, workspace: *mut u8, len: usize) -> Option<Encoder> {
        let cctx = match kind {
            Compression::Zstd => {
                // SAFETY: forwarded from the caller; zstd only uses the given memory.
                let c = unsafe { zstd_sys::ZSTD_initStaticCCtx(workspace.cast(), len) };
                if c.is_null() {
                    return None;
                }
                c
            }
            _ => core::ptr::null_mut(),
        };
        Some(Encoder { kind, cctx, level })
    }

    /// Compress `src` into `dst` (at least [`crate::image::max_compressed_len`] of
    /// `src.len()` bytes). Returns the compressed length; a result >= `src.len()` means the
    /// data did not compress and should be stored raw.
    pub fn compress(&mut self, src: &[u8], dst: &mut [u8]) -> Result<usize, Error> {
        match self.kind {
            Compression::None => Err(Error::Codec("no compression selected".into())),
            Compression::Lz4 => lz4_flex::block::compress_into(src, dst).map_err(|e| Error::Codec(lz4_error(&e))),
            Compression::Zstd => {
                if src.len() >= SAMPLED_MIN && !self.samples_compress(src, dst)? {
                    return Ok(src.len()); // stored raw
                }
                self.zstd(src, dst)
            }
        }
    }

    /// Whether `src` looks worth compressing: [`SAMPLES`] pieces of [`SAMPLE_LEN`] bytes
    /// spread over it, compressed alone (about 3 % of the work of compressing `src`), must
    /// save at least 1/[`SAVE_MIN_FRACTION`] of their size. Random data (encrypted or
    /// already compressed memory) then costs a copy instead of a full pass of zstd, which
    /// finds nothing. A chunk that is random only where the samples fall is stored raw too:
    /// a slightly larger image, never a wrong one.
    fn samples_compress(&mut self, src: &[u8], dst: &mut [u8]) -> Result<bool, Error> {
        let step = src.len() / SAMPLES;
        let mut stored = 0usize;
        for i in 0..SAMPLES {
            let piece = &src[i * step..i * step + SAMPLE_LEN];
            stored += self.zstd(piece, dst)?.min(SAMPLE_LEN);
        }
        Ok(stored < SAMPLES * SAMPLE_LEN - SAMPLES * SAMPLE_LEN / SAVE_MIN_FRACTION)
    }

    fn zstd(&mut self, src: &[u8], dst: &mut [u8]) -> Result<usize, Error> {
        // SAFETY: the context lives in the caller's workspace; both buffers are valid for
        // the lengths given.
        let n = unsafe {
            zstd_sys::ZSTD_compressCCtx(self.cctx, dst.as_mut_ptr().cast(), dst.len(), src.as_ptr().cast(), src.len(), self.level)
        };
        // SAFETY: a pure check of a return code.
        if unsafe { zstd_sys::ZSTD_isError(n) } != 0 {
            return Err(Error::Codec(zstd_error(n)));
        }
        Ok(n)
    }
}

fn lz4_error(_e: &lz4_flex::block::CompressError) -> String {
    // Without lz4_flex's `std` feature its errors have no Display; the only one is this.
    "lz4: output buffer too small".into()
}

fn zstd_error(code: usize) -> String {
    // SAFETY: zstd returns a static NUL-terminated string for every code.
    let name = unsafe { core::ffi::CStr::from_ptr(zstd_sys::ZSTD_getErrorName(code)) };
    format!("zstd: {}", name.to_string_lossy())
}

/// A chunk decoder (crrestart side; may allocate).
pub struct Decoder {
    kind: Compression,
    dctx: *mut zstd_sys::ZSTD_DCtx,
}

impl Decoder {
    pub fn new(kind: Compression) -> Result<Decoder, Error> {
        let dctx = if kind == Compression::Zstd {
            // SAFETY: plain constructor; freed in Drop.
            let d = unsafe { zstd_sys::ZSTD_createDCtx() };
            if d.is_null() {
                return Err(Error::Codec("zstd: cannot create a decompression context".into()));
            }
            d
        } else {
            core::ptr::null_mut()
        };
        Ok(Decoder { kind, dctx })
    }

    /// Decompress `src` into exactly `dst.len()` bytes.
    pub fn decompress(&mut self, src: &[u8], dst: &mut [u8]) -> Result<(), Error> {
        if src.len() == dst.len() {
            dst.copy_from_slice(src); // stored raw
            return Ok(());
        }
        let n = match self.kind {
            Compression::None => return Err(Error::Codec("no compression selected".into())),
            Compression::Lz4 => lz4_flex::block::decompress_into(src, dst).map_err(|_| Error::Codec("lz4: malformed block".into()))?,
            Compression::Zstd => {
                // SAFETY: the context is ours; both buffers are valid for their lengths.
                let n = unsafe {
                    zstd_sys::ZSTD_decompressDCtx(self.dctx, dst.as_mut_ptr().cast(), dst.len(), src.as_ptr().cast(), src.len())
                };
                // SAFETY: a pure check of a return code.
                if unsafe { zstd_sys::ZSTD_isError(n) } != 0 {
                    return Err(Error::Codec(zstd_error(n)));
                }
                n
            }
        };
        if n != dst.len() {
            return Err(Error::Codec(format!("decompressed to {n} bytes instead of {}", dst.len())));
        }
        Ok(())
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        if !self.dctx.is_null() {
            // SAFETY: created by ZSTD_createDCtx, freed once.
            unsafe { zstd_sys::ZSTD_freeDCtx(self.dctx) };
        }
    }
}

/// Where [`unpack`] puts decompressed page data.
pub trait ChunkSink {
    /// A buffer for the `len` bytes that belong at `offset` of the uncompressed image layout.
    fn buffer(&mut self, offset: u64, len: usize) -> Result<&mut [u8], Error>;
}

/// A sink that only checks (the data is dropped).
pub struct Discard(Vec<u8>);

impl Discard {
    pub fn new() -> Discard {
        Discard(Vec::new())
    }
}

impl Default for Discard {
    fn default() -> Self {
        Discard::new()
    }
}

impl ChunkSink for Discard {
    fn buffer(&mut self, _offset: u64, len: usize) -> Result<&mut [u8], Error> {
        self.0.resize(len, 0);
        Ok(&mut self.0[..len])
    }
}

/// Decompress every chunk of a compressed image into `sink`, in order: each chunk's
/// checksum is checked before it is decompressed, and each run's checksum once its last
/// byte is out. `progress` gets the number of uncompressed bytes done so far.
pub fn unpack(
    file: &std::fs::File,
    meta: &ImageMeta,
    sink: &mut dyn ChunkSink,
    progress: &mut dyn FnMut(u64),
) -> Result<(), Error> {
    use std::os::unix::fs::FileExt;
    let mut dec = Decoder::new(meta.compression)?;
    let runs: Vec<&PageRun> = meta.regions.iter().flat_map(|r| r.runs.iter()).collect();
    let max_clen = meta.chunks.iter().map(|c| c.clen as usize).max().unwrap_or(0);
    let mut cbuf = vec![0u8; max_clen];
    let (mut ri, mut run_done, mut crc) = (0usize, 0u64, 0u32);
    let mut pos = HEADER_SIZE as u64;
    for (i, c) in meta.chunks.iter().enumerate() {
        let Chunk { offset, clen, ulen, crc: want } = *c;
        let src = &mut cbuf[..clen as usize];
        file.read_exact_at(src, offset).map_err(|e| {
            Error::Corrupt(format!("compressed chunk {i} (at file offset {offset}, {clen} bytes) cannot be read: {e}"))
        })?;
        if crc32c::crc32c(src) != want {
            return Err(Error::Corrupt(format!(
                "compressed chunk {i} (at file offset {offset}, {clen} bytes) fails its checksum"
            )));
        }
        let out = sink.buffer(pos, ulen as usize)?;
        dec.decompress(src, out)
            .map_err(|e| Error::Corrupt(format!("compressed chunk {i} (at file offset {offset}) does not decompress: {e}")))?;
        let mut o = 0usize;
        while o < out.len() {
            let Some(run) = runs.get(ri) else {
                return Err(Error::Corrupt(format!("compressed chunk {i} holds more data than the page runs")));
            };
            let take = ((run.len - run_done) as usize).min(out.len() - o);
            crc = crc32c::crc32c_append(crc, &out[o..o + take]);
            run_done += take as u64;
            o += take;
            if run_done == run.len {
                if crc != run.crc {
                    return Err(Error::Corrupt(format!(
                        "page data at {:#x} (+{:#x}) fails its checksum after decompressing chunk {i}",
                        run.addr, run.len
                    )));
                }
                ri += 1;
                run_done = 0;
                crc = 0;
            }
        }
        pos += ulen as u64;
        progress(pos - HEADER_SIZE as u64);
    }
    if ri != runs.len() {
        return Err(Error::Corrupt("the compressed chunks end before the page runs".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        // Text, zeros and pseudo-random bytes: what process memory looks like.
        let mut v = Vec::new();
        while v.len() < 300_000 {
            v.extend_from_slice(b"the quick brown fox jumps over the lazy dog 0123456789\n");
        }
        v.resize(600_000, 0);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        while v.len() < 1 << 20 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.extend_from_slice(&x.to_le_bytes());
        }
        v.truncate(1 << 20);
        v
    }

    fn roundtrip(kind: Compression) {
        let src = sample();
        let mut ws = vec![0u64; Encoder::workspace_len(kind) / 8 + 1];
        // SAFETY: ws outlives the encoder and is used by nothing else.
        let mut enc = unsafe { Encoder::in_workspace(kind, ws.as_mut_ptr().cast(), ws.len() * 8) }.expect("encoder");
        let mut dst = vec![0u8; crate::image::max_compressed_len(src.len())];
        let n = enc.compress(&src, &mut dst).expect("compress");
        assert!(n < src.len() * 3 / 4, "{kind:?} compressed 1 MiB of mixed data to {n} bytes only");
        // The same encoder again (a static zstd context is reused for every chunk).
        let n2 = enc.compress(&src, &mut dst).expect("compress again");
        assert_eq!(n, n2);
        let mut back = vec![0u8; src.len()];
        Decoder::new(kind).unwrap().decompress(&dst[..n], &mut back).expect("decompress");
        assert!(back == src, "{kind:?} roundtrip differs");
        // A damaged stream is refused (or at least never decompresses to the original).
        let mut bad = dst[..n].to_vec();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x55;
        let r = Decoder::new(kind).unwrap().decompress(&bad, &mut back);
        assert!(r.is_err() || back != src, "{kind:?}: corruption went unnoticed");
    }

    #[test]
    fn zstd_roundtrip_in_static_workspace() {
        roundtrip(Compression::Zstd);
    }

    #[test]
    fn lz4_roundtrip_without_allocation() {
        roundtrip(Compression::Lz4);
    }

    /// Random data is recognised by sampling and reported as not compressing (stored
    /// raw); a chunk that compresses is compressed at every level images may use.
    #[test]
    fn zstd_stores_random_chunks_raw_and_compresses_the_rest() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let random: Vec<u8> = (0..(1 << 20) / 8)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .collect();
        for level in [*ZSTD_LEVELS.start(), ZSTD_LEVEL, 1, *ZSTD_LEVELS.end()] {
            let len = Encoder::workspace_len_at(Compression::Zstd, level);
            let mut ws = vec![0u64; len / 8 + 1];
            // SAFETY: ws outlives the encoder and is used by nothing else.
            let mut enc = unsafe { Encoder::in_workspace_at(Compression::Zstd, level, ws.as_mut_ptr().cast(), ws.len() * 8) }
                .expect("encoder");
            let mut dst = vec![0u8; crate::image::max_compressed_len(1 << 20)];
            assert_eq!(enc.compress(&random, &mut dst).unwrap(), random.len(), "level {level}: random data");
            let src = sample();
            let n = enc.compress(&src, &mut dst).unwrap();
            assert!(n < src.len() * 3 / 4, "level {level}: mixed data compressed to {n} bytes only");
            let mut back = vec![0u8; src.len()];
            Decoder::new(Compression::Zstd).unwrap().decompress(&dst[..n], &mut back).unwrap();
            assert!(back == src, "level {level}: roundtrip differs");
        }
    }

    #[test]
    fn raw_chunk_is_copied() {
        let src = [7u8; 4096];
        let mut back = [0u8; 4096];
        Decoder::new(Compression::Zstd).unwrap().decompress(&src, &mut back).unwrap();
        assert_eq!(back, src);
    }
}
