//! Reading the process's own state from /proc/self with raw system calls.

use crate::sys;
use std::string::String;
use std::vec::Vec;

/// One line of /proc/self/maps.
#[derive(Debug, Clone)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    pub prot: u32,
    pub shared: bool,
    pub offset: u64,
    pub dev: u64,
    pub inode: u64,
    pub name: String,
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s, 16).unwrap_or(0)
}

pub fn read_maps() -> Result<Vec<Vma>, i32> {
    let mut buf = Vec::new();
    sys::read_file(b"/proc/self/maps", &mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.splitn(6, ' ');
        let (Some(range), Some(perms), Some(off), Some(dev), Some(ino)) = (it.next(), it.next(), it.next(), it.next(), it.next())
        else {
            continue;
        };
        let name = it.next().unwrap_or("").trim_start().to_string();
        let (s, e) = range.split_once('-').unwrap_or(("0", "0"));
        let p = perms.as_bytes();
        let mut prot = 0;
        if p.first() == Some(&b'r') {
            prot |= libc::PROT_READ as u32;
        }
        if p.get(1) == Some(&b'w') {
            prot |= libc::PROT_WRITE as u32;
        }
        if p.get(2) == Some(&b'x') {
            prot |= libc::PROT_EXEC as u32;
        }
        let (maj, min) = dev.split_once(':').unwrap_or(("0", "0"));
        out.push(Vma {
            start: hex(s),
            end: hex(e),
            prot,
            shared: p.get(3) == Some(&b's'),
            offset: hex(off),
            dev: libc::makedev(hex(maj) as u32, hex(min) as u32),
            inode: ino.parse().unwrap_or(0),
            name,
        });
    }
    Ok(out)
}

/// pagemap entry bits.
pub const PM_PRESENT: u64 = 1 << 63;
pub const PM_SWAPPED: u64 = 1 << 62;
pub const PM_FILE: u64 = 1 << 61;

/// Reader of /proc/self/pagemap.
pub struct Pagemap {
    fd: i32,
    buf: Vec<u64>,
}

impl Pagemap {
    pub fn open() -> Result<Pagemap, i32> {
        let fd = sys::open(b"/proc/self/pagemap", libc::O_RDONLY, 0)?;
        Ok(Pagemap { fd, buf: Vec::new() })
    }

    pub fn fd(&self) -> i32 {
        self.fd
    }

    /// Entries for `npages` pages from `addr`.
    pub fn read(&mut self, addr: u64, npages: usize) -> Result<&[u64], i32> {
        self.buf.clear();
        self.buf.resize(npages, 0);
        // SAFETY: u64 slice viewed as bytes for reading into.
        let bytes = unsafe { core::slice::from_raw_parts_mut(self.buf.as_mut_ptr() as *mut u8, npages * 8) };
        let mut done = 0;
        while done < bytes.len() {
            let n = sys::pread(self.fd, &mut bytes[done..], (addr / 4096) * 8 + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(&self.buf)
    }
}

impl Drop for Pagemap {
    fn drop(&mut self) {
        sys::close(self.fd);
    }
}

/// Fields of /proc/self/stat after the command name, 1-based as in proc(5).
pub fn stat_fields() -> Vec<u64> {
    let mut buf = Vec::new();
    if sys::read_file(b"/proc/self/stat", &mut buf).is_err() {
        return Vec::new();
    }
    let close = buf.iter().rposition(|&c| c == b')').unwrap_or(0);
    let rest = String::from_utf8_lossy(&buf[close + 1..]).into_owned();
    // Field 3 (state) is the first after ')'; pad so that index == field number.
    let mut v = vec![0u64, 0, 0];
    for (i, f) in rest.split_ascii_whitespace().enumerate() {
        if i == 0 {
            continue; // state letter
        }
        v.push(f.parse::<i64>().unwrap_or(0) as u64);
    }
    v.insert(3, 0);
    v
}

/// The number on a `Key:` line of a /proc status file, in the given radix.
pub fn status_value(status: &str, key: &str, radix: u32) -> Option<u64> {
    status.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| u64::from_str_radix(v.trim(), radix).ok())
}

pub fn readlink_string(path: &[u8]) -> String {
    let mut buf = vec![0u8; 4096];
    match sys::readlink(path, &mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(_) => String::new(),
    }
}

pub fn read_string(path: &[u8]) -> String {
    let mut buf = Vec::new();
    let _ = sys::read_file(path, &mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Numeric entries of a /proc directory (tasks, fds), sorted.
pub fn list_numbers(dir: &[u8]) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(fd) = sys::open(dir, libc::O_RDONLY | libc::O_DIRECTORY, 0) else { return out };
    let mut buf = [0u8; 8192];
    loop {
        // SAFETY: buf is writable.
        let n = unsafe { sys::sc!(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
        if n <= 0 {
            break;
        }
        let mut off = 0usize;
        while off < n as usize {
            let reclen = u16::from_le_bytes([buf[off + 16], buf[off + 17]]) as usize;
            let name = &buf[off + 19..off + reclen];
            let name = &name[..name.iter().position(|&c| c == 0).unwrap_or(name.len())];
            if let Some(t) = core::str::from_utf8(name).ok().and_then(|s| s.parse::<i32>().ok()) {
                out.push(t);
            }
            off += reclen;
        }
    }
    sys::close(fd);
    out.sort_unstable();
    out
}

/// Open file descriptors of this process (without the one used to list them).
pub fn list_fds() -> Vec<i32> {
    let mut v = list_numbers(b"/proc/self/fd");
    // The directory fd itself was the lowest free number while listing; it is closed now.
    v.retain(|&fd| sys::fcntl(fd, libc::F_GETFD, 0).is_ok());
    v
}
