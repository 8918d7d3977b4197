//! What crrestart shows and changes about file descriptors: `--list-fds` (the fd table of
//! every image of a generation, read without the memory) and `--fd [VPID:]N=PATH`
//! (substitution: fd N of a process refers to PATH after the restart).

use crust_format::image::{self, FdEntry};
use crust_format::manifest;
use std::path::Path;

/// One `--fd` substitution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdSubst {
    /// The process (virtual pid); None = the root process (the launched program).
    pub vpid: Option<i32>,
    pub fd: i32,
    pub path: String,
}

impl FdSubst {
    /// Parse `N=PATH` or `VPID:N=PATH`.
    pub fn parse(spec: &str) -> Result<FdSubst, String> {
        let bad = |why: &str| format!("bad --fd {spec:?}: {why} (expected N=PATH or VPID:N=PATH)");
        let (lhs, path) = spec.split_once('=').ok_or_else(|| bad("no '='"))?;
        if path.is_empty() {
            return Err(bad("empty path"));
        }
        let (vpid, fd) = match lhs.split_once(':') {
            Some((v, n)) => (Some(v.trim().parse::<i32>().ok().filter(|&v| v > 0).ok_or_else(|| bad("the process id is not a positive number"))?), n),
            None => (None, lhs),
        };
        let fd = fd.trim().parse::<i32>().ok().filter(|&n| n >= 0).ok_or_else(|| bad("the fd is not a number >= 0"))?;
        Ok(FdSubst { vpid, fd, path: path.to_string() })
    }
}

/// The fd table of one process.
pub struct ProcFds {
    pub vpid: i32,
    pub program: String,
    pub image: String,
    pub fds: Vec<FdEntry>,
}

/// Read the fd tables of a generation (checkpoint directory, generation directory) or of
/// one image file, without reading page data.
pub fn read_tables(path: &Path) -> Result<Vec<ProcFds>, String> {
    if path.is_file() {
        let (_, fds) = image::read_fd_table(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let vpid = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.strip_prefix("proc-"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        return Ok(vec![ProcFds { vpid, program: String::new(), image: path.display().to_string(), fds }]);
    }
    let (gen_dir, man) = manifest::resolve_generation(path).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for mp in &man.processes {
        let img = gen_dir.join(&mp.image);
        if mp.image.is_empty() || !img.is_file() {
            return Err(format!("{}: the image of process vpid {} ({}) is missing", gen_dir.display(), mp.vpid, mp.program));
        }
        let (_, fds) = image::read_fd_table(&img).map_err(|e| format!("{}: {e}", img.display()))?;
        out.push(ProcFds { vpid: mp.vpid, program: mp.program.clone(), image: img.display().to_string(), fds });
    }
    Ok(out)
}

/// `crrestart --list-fds`: a table per process (or JSON).
pub fn list(path: &Path, json: bool) -> Result<String, String> {
    let tables = read_tables(path)?;
    if json {
        let v: Vec<serde_json::Value> = tables
            .iter()
            .map(|t| {
                serde_json::json!({
                    "vpid": t.vpid,
                    "program": t.program,
                    "image": t.image,
                    "fds": t.fds.iter().map(|f| serde_json::json!({
                        "fd": f.fd,
                        "kind": f.kind,
                        "path": f.path,
                        "flags": f.flags,
                        "flags_text": f.flags_text(),
                        "cloexec": f.cloexec,
                        "offset": f.offset,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        return Ok(serde_json::to_string_pretty(&v).unwrap_or_default() + "\n");
    }
    let mut s = String::new();
    for t in &tables {
        s += &format!("process vpid {} ({}) {}\n", t.vpid, t.program, t.image);
        s += &format!("  {:>4}  {:<11}  {:<28}  {:>12}  PATH\n", "FD", "KIND", "FLAGS", "OFFSET");
        for f in &t.fds {
            s += &format!("  {:>4}  {:<11}  {:<28}  {:>12}  {}\n", f.fd, f.kind, f.flags_text(), f.offset, f.path);
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_specs() {
        assert_eq!(FdSubst::parse("3=/tmp/x").unwrap(), FdSubst { vpid: None, fd: 3, path: "/tmp/x".into() });
        assert_eq!(FdSubst::parse("41:7=/a=b").unwrap(), FdSubst { vpid: Some(41), fd: 7, path: "/a=b".into() });
        for bad in ["3", "x=/a", "3=", "-1=/a", "0:3=/a", "a:3=/a", ":3=/a"] {
            assert!(FdSubst::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
