//! Checkpoint generations on disk.
//!
//! ```text
//! CKPT_DIR/crust-<comp_id as 16 hex digits>/
//!     gen-000001/
//!         proc-<vpid>.crimg        one image per process
//!         manifest.json            written last, atomically: its presence makes the generation complete
//!     gen-000002/ ...
//!     latest -> gen-000002         symlink to the newest complete generation
//! ```

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// File name of a generation's manifest.
pub const MANIFEST_NAME: &str = "manifest.json";
/// Name of the symlink to the newest complete generation.
pub const LATEST_NAME: &str = "latest";
/// Version of the manifest format.
pub const MANIFEST_VERSION: u32 = 1;

/// One process of a generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestProcess {
    pub vpid: i32,
    pub vppid: i32,
    pub real_pid: i32,
    pub hostname: String,
    pub program: String,
    pub args: Vec<String>,
    /// Image file name, relative to the generation directory.
    pub image: String,
    pub bytes: u64,
    pub memory_bytes: u64,
    pub downtime_us: u64,
    pub write_us: u64,
    /// crc32c of the image's header page, which holds the metadata checksum, which holds
    /// every page run's checksum: ties the manifest to exactly this image. 0 = not read
    /// (the image is on another host).
    #[serde(default)]
    pub header_crc32c: u32,
    /// The generation this process had been restarted from, if any.
    #[serde(default)]
    pub restored_from: Option<u64>,
}

/// The manifest of a complete generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub comp_id: u64,
    pub generation: u64,
    pub started_unix: u64,
    pub completed_unix: u64,
    pub duration_ms: u64,
    /// Start and completion, unix time in milliseconds.
    #[serde(default)]
    pub started_unix_ms: u64,
    #[serde(default)]
    pub completed_unix_ms: u64,
    /// Total image bytes.
    #[serde(default)]
    pub bytes: u64,
    /// Hosts the processes ran on (sorted, distinct).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// The command line the computation was launched with (its first process's argv).
    #[serde(default)]
    pub command: Vec<String>,
    pub processes: Vec<ManifestProcess>,
    /// Processes of the computation that ran on outside control when the generation was
    /// taken (a statically linked or set-id program was exec'd or spawned): not in it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<ExcludedProcess>,
}

/// A process that is part of the computation's tree but not under crust's control.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExcludedProcess {
    pub vpid: i32,
    pub real_pid: i32,
    pub hostname: String,
    pub program: String,
    /// Why it is not under control (e.g. "statically linked").
    pub reason: String,
}

/// `CKPT_DIR/crust-<comp_id>`.
pub fn computation_dir(ckpt_dir: &Path, comp_id: u64) -> PathBuf {
    ckpt_dir.join(format!("crust-{comp_id:016x}"))
}

/// `CKPT_DIR/crust-<comp_id>/gen-<N>`.
pub fn generation_dir(ckpt_dir: &Path, comp_id: u64, generation: u64) -> PathBuf {
    computation_dir(ckpt_dir, comp_id).join(format!("gen-{generation:06}"))
}

/// Image file name of a process.
pub fn image_file_name(vpid: i32) -> String {
    format!("proc-{vpid}.crimg")
}

/// Parse `gen-NNNNNN`.
pub fn parse_generation_name(name: &str) -> Option<u64> {
    name.strip_prefix("gen-")?.parse().ok()
}

/// The next unused generation number in a computation directory (1 if none exist).
/// Counts incomplete generations too, so a new generation never reuses a directory.
pub fn next_generation(comp_dir: &Path) -> u64 {
    let mut max = 0;
    if let Ok(rd) = std::fs::read_dir(comp_dir) {
        for e in rd.flatten() {
            if let Some(n) = e.file_name().to_str().and_then(parse_generation_name) {
                max = max.max(n);
            }
        }
    }
    max.saturating_add(1)
}

/// Generation numbers of the complete generations (with a manifest) of a computation
/// directory, ascending.
pub fn complete_generations(comp_dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(comp_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(parse_generation_name))
        .filter(|&n| comp_dir.join(format!("gen-{n:06}")).join(MANIFEST_NAME).is_file())
        .collect();
    v.sort_unstable();
    v
}

/// Generation numbers of the directories of a computation that have no manifest
/// (failed, interrupted or in progress), ascending.
pub fn incomplete_generations(comp_dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(comp_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(parse_generation_name))
        .filter(|&n| !comp_dir.join(format!("gen-{n:06}")).join(MANIFEST_NAME).exists())
        .collect();
    v.sort_unstable();
    v
}

/// Delete a generation directory so that it is never seen half-deleted: it is renamed to
/// a hidden name first (not a generation any more), then removed.
pub fn remove_generation(comp_dir: &Path, generation: u64) -> Result<(), crate::Error> {
    let dir = comp_dir.join(format!("gen-{generation:06}"));
    let trash = comp_dir.join(format!(".deleting-gen-{generation:06}.{}", std::process::id()));
    std::fs::rename(&dir, &trash).map_err(|e| crate::Error::Io { path: dir.display().to_string(), source: e })?;
    crate::fsync_dir(comp_dir)?;
    std::fs::remove_dir_all(&trash).map_err(|e| crate::Error::Io { path: trash.display().to_string(), source: e })
}

/// crc32c of an image's header page (as much of it as the file has).
pub fn image_header_crc(path: &Path) -> Option<u32> {
    use std::io::Read;
    let mut b = Vec::with_capacity(crate::image::HEADER_SIZE);
    std::fs::File::open(path).ok()?.take(crate::image::HEADER_SIZE as u64).read_to_end(&mut b).ok()?;
    Some(crc32c::crc32c(&b))
}

/// Read and parse a generation's manifest.
pub fn read_manifest(gen_dir: &Path) -> Result<Manifest, crate::Error> {
    let p = gen_dir.join(MANIFEST_NAME);
    let bytes = std::fs::read(&p).map_err(|e| crate::Error::Io { path: p.display().to_string(), source: e })?;
    serde_json::from_slice(&bytes).map_err(|e| crate::Error::Corrupt(format!("{}: {e}", p.display())))
}

/// Write a manifest atomically (temp file, fsync, rename, fsync directory).
pub fn write_manifest(gen_dir: &Path, m: &Manifest) -> Result<(), crate::Error> {
    let body = serde_json::to_vec_pretty(m).map_err(|e| crate::Error::Corrupt(e.to_string()))?;
    crate::atomic_write(&gen_dir.join(MANIFEST_NAME), &body)
}

/// Point `comp_dir/latest` at `gen-N` atomically.
pub fn set_latest(comp_dir: &Path, generation: u64) -> Result<(), crate::Error> {
    let tmp = comp_dir.join(format!(".latest.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("gen-{generation:06}"), &tmp)?;
    std::fs::rename(&tmp, comp_dir.join(LATEST_NAME))?;
    crate::fsync_dir(comp_dir)
}

/// Resolve what a user passed to `crrestart`: a generation directory (with a manifest),
/// a computation directory (its `latest`, else its newest complete generation), or a
/// checkpoint directory holding computation directories (the newest complete generation
/// of any of them).
pub fn resolve_generation(path: &Path) -> Result<(PathBuf, Manifest), crate::Error> {
    if !path.exists() {
        return Err(crate::Error::Missing(path.display().to_string()));
    }
    if path.join(MANIFEST_NAME).is_file() {
        let m = read_manifest(path)?;
        return Ok((path.to_path_buf(), m));
    }
    if path.is_dir() && path.file_name().and_then(|n| n.to_str()).is_some_and(|n| parse_generation_name(n).is_some()) {
        return Err(crate::Error::Incomplete(path.display().to_string()));
    }
    let mut best: Option<(u64, u64, PathBuf, Manifest)> = None;
    fn consider(dir: &Path, best: &mut Option<(u64, u64, PathBuf, Manifest)>) {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let p = e.path();
                if e.file_name().to_str().and_then(parse_generation_name).is_some() {
                    if let Ok(m) = read_manifest(&p) {
                        let key = (m.completed_unix, m.generation);
                        if best.as_ref().is_none_or(|b| key > (b.0, b.1)) {
                            *best = Some((key.0, key.1, p, m));
                        }
                    }
                }
            }
        }
    }
    consider(path, &mut best);
    if best.is_none() {
        if let Ok(rd) = std::fs::read_dir(path) {
            for e in rd.flatten() {
                if e.file_name().to_str().is_some_and(|n| n.starts_with("crust-")) {
                    consider(&e.path(), &mut best);
                }
            }
        }
    }
    match best {
        Some((_, _, p, m)) => Ok((p, m)),
        None => Err(crate::Error::NoGeneration(path.display().to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_picks_newest_complete() {
        let d = std::env::temp_dir().join(format!("crust-manifest-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let m = |g| Manifest {
            version: 1,
            comp_id: 1,
            generation: g,
            started_unix: g,
            completed_unix: g,
            duration_ms: 0,
            started_unix_ms: 0,
            completed_unix_ms: 0,
            bytes: 0,
            hosts: vec![],
            command: vec![],
            processes: vec![],
            excluded: vec![],
        };
        for g in 1..=3 {
            let gd = generation_dir(&d, 1, g);
            std::fs::create_dir_all(&gd).unwrap();
            if g != 3 {
                write_manifest(&gd, &m(g)).unwrap();
            }
        }
        let (p, mm) = resolve_generation(&d).unwrap();
        assert_eq!(mm.generation, 2);
        assert!(p.ends_with("gen-000002"));
        assert!(matches!(resolve_generation(&generation_dir(&d, 1, 3)), Err(crate::Error::Incomplete(_))));
        assert_eq!(next_generation(&computation_dir(&d, 1)), 4);
        let comp = computation_dir(&d, 1);
        assert_eq!(complete_generations(&comp), vec![1, 2]);
        assert_eq!(incomplete_generations(&comp), vec![3]);
        remove_generation(&comp, 1).unwrap();
        assert_eq!(complete_generations(&comp), vec![2]);
        assert!(std::fs::read_dir(&comp).unwrap().flatten().all(|e| !e.file_name().to_string_lossy().contains("deleting")));
        assert!(matches!(resolve_generation(&d.join("nope")), Err(crate::Error::Missing(_))));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
