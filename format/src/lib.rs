//! The image format and the wire protocol shared by every part of crust.
//!
//! * [`image`]: the per-process checkpoint image (header, page data, metadata).
//! * [`codec`]: compressing and unpacking page data (zstd, LZ4).
//! * [`manifest`]: generations on disk (directories, manifest, `latest`).
//! * [`wire`]: coordinator protocol frames.

pub mod codec;
pub mod image;
pub mod manifest;
pub mod wire;

use std::path::Path;

/// Errors of the format crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error on {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("I/O error: {0}")]
    PlainIo(#[from] std::io::Error),
    #[error("not a crust checkpoint image (bad magic)")]
    NotAnImage,
    #[error("image format version {found} is not supported (this build reads version {supported})")]
    Version { found: u32, supported: u32 },
    #[error("truncated {what}: {have} bytes, expected {need}")]
    Truncated { what: &'static str, have: u64, need: u64 },
    #[error("corrupt image: {0}")]
    Corrupt(String),
    #[error("compression error: {0}")]
    Codec(String),
    #[error("encoding error: {0}")]
    Encoding(#[from] postcard::Error),
    #[error("frame of {0} bytes exceeds the protocol limit")]
    FrameTooLarge(usize),
    #[error("{0}: no such file or directory")]
    Missing(String),
    #[error("{0} is an incomplete generation (no manifest): a checkpoint that did not finish")]
    Incomplete(String),
    #[error("no complete checkpoint generation found in {0}")]
    NoGeneration(String),
}

/// fsync a directory so a rename inside it is durable.
pub fn fsync_dir(dir: &Path) -> Result<(), Error> {
    let f = std::fs::File::open(dir).map_err(|e| Error::Io { path: dir.display().to_string(), source: e })?;
    f.sync_all()?;
    Ok(())
}

/// Write a file atomically: temp name, fsync, rename, fsync the directory. Mode 0600.
pub fn atomic_write(path: &Path, body: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.tmp.{}", path.file_name().and_then(|n| n.to_str()).unwrap_or("f"), std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::Io { path: tmp.display().to_string(), source: e })?;
    f.write_all(body)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| Error::Io { path: path.display().to_string(), source: e })?;
    fsync_dir(dir)
}
