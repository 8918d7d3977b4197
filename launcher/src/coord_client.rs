//! Finding, or starting, the coordinator a launched program will talk to.

use crate::Error;
use crust_format::wire::{self, Command, FromCoord, Reply, ToCoord, PROTOCOL_VERSION};
use std::io::Read;
use std::net::{IpAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// How long one connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a freshly spawned coordinator has to start listening.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the coordinator's answers during the hello.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Split `HOST:PORT` (`[v6]:PORT` for IPv6). The host comes back without brackets.
pub fn split_addr(addr: &str) -> Result<(String, u16), Error> {
    let bad = || Error::BadAddress(addr.to_string());
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = match host.strip_prefix('[') {
        Some(h) => h.strip_suffix(']').ok_or_else(bad)?,
        None if host.contains(':') => return Err(bad()),
        None => host,
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// Whether a coordinator for `host` may be started on this machine.
pub fn is_local_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn connect(addr: &str) -> std::io::Result<TcpStream> {
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "the address resolves to nothing");
    for a in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Make sure a coordinator answers at `addr`.
///
/// When one answers, nothing is started; if `interval` is given it is applied to that
/// coordinator (`crctl interval`), and a warning says so when it writes checkpoints
/// somewhere else than `ckpt_dir`. When the connection is refused and `addr` is on this
/// host (a loopback address or `localhost`), `crcoord --exit-when-idle` is started fully
/// detached (its own session, not our child) and awaited through its `--ready-fd` pipe.
/// When it loses a bind race to another launcher it exits without signalling readiness,
/// and the winner is used.
pub fn ensure_coordinator(addr: &str, ckpt_dir: &Path, interval: Option<u64>) -> Result<(), Error> {
    ensure_coordinator_with(None, addr, ckpt_dir, interval)
}

/// Settings a launcher applies to the coordinator it finds or starts.
#[derive(Debug, Clone, Default)]
pub struct CoordSettings {
    /// `--interval` (seconds).
    pub interval: Option<u64>,
    /// `--keep` (complete generations kept; 0 = all).
    pub keep: Option<u32>,
}

/// [`ensure_coordinator`] with an explicit `crcoord` binary (`None`: [`crate::find_sibling_binary`]).
pub fn ensure_coordinator_with(
    crcoord: Option<&Path>,
    addr: &str,
    ckpt_dir: &Path,
    interval: Option<u64>,
) -> Result<(), Error> {
    ensure_coordinator_settings(crcoord, addr, ckpt_dir, &CoordSettings { interval, keep: None })
}

/// [`ensure_coordinator`] applying every setting of `settings` (to a running coordinator
/// through control commands, to one it starts through its command line).
pub fn ensure_coordinator_settings(
    crcoord: Option<&Path>,
    addr: &str,
    ckpt_dir: &Path,
    settings: &CoordSettings,
) -> Result<(), Error> {
    let (host, port) = split_addr(addr)?;
    let ckpt_dir = crate::absolute(ckpt_dir)?;
    for attempt in 0..3 {
        match connect(addr) {
            Ok(s) => {
                debug!("coordinator at {addr} answers");
                hello(s, addr, &ckpt_dir, settings);
                return Ok(());
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && is_local_host(&host) => {
                if attempt > 0 {
                    debug!("still no coordinator at {addr} (attempt {attempt})");
                }
            }
            Err(source) => return Err(Error::NoCoordinator { addr: addr.to_string(), source }),
        }
        let bin = match crcoord {
            Some(b) => b.to_path_buf(),
            None => crate::find_sibling_binary("crcoord")?,
        };
        let bind = if host.eq_ignore_ascii_case("localhost") { "127.0.0.1" } else { host.as_str() };
        match spawn_coordinator(&bin, bind, port, &ckpt_dir, settings) {
            Ok(true) => {
                info!("started a coordinator at {addr} (checkpoints in {})", ckpt_dir.display());
                // Readiness means it listens: the next connect succeeds.
                match connect(addr) {
                    Ok(_) => return Ok(()),
                    Err(source) => return Err(Error::NoCoordinator { addr: addr.to_string(), source }),
                }
            }
            // It exited before listening: most likely another launcher's coordinator took
            // the port first (exit status 3). Try connecting again.
            Ok(false) => debug!("the coordinator we started exited early; retrying"),
            Err(e) => return Err(e),
        }
    }
    Err(Error::CoordinatorStart {
        addr: addr.to_string(),
        reason: format!(
            "crcoord exited before listening; run `crcoord --port {port} -v` to see why, or set CR_LOG=debug \
             to log to {}",
            ckpt_dir.join("crcoord.log").display()
        ),
    })
}

/// Say hello as a control client: check where the coordinator writes, and apply the
/// settings. Problems are warnings only: the coordinator answered, which is what was asked.
fn hello(mut s: TcpStream, addr: &str, ckpt_dir: &Path, settings: &CoordSettings) {
    let r = (|| -> Result<(), crust_format::Error> {
        s.set_read_timeout(Some(REPLY_TIMEOUT))?;
        let token = std::env::var("CR_TOKEN").ok().filter(|t| !t.is_empty());
        wire::blocking::send(&mut s, &ToCoord::HelloControl { proto: PROTOCOL_VERSION, token })?;
        match wire::blocking::recv::<_, FromCoord>(&mut s)? {
            FromCoord::Welcome { ckpt_dir: theirs, .. } => {
                if Path::new(&theirs) != ckpt_dir {
                    warn!(
                        "the coordinator at {addr} writes checkpoints under {theirs}, not {}; \
                         use another --coord port for a separate checkpoint directory",
                        ckpt_dir.display()
                    );
                }
            }
            FromCoord::Rejected { reason } => {
                warn!("the coordinator at {addr} refused a control connection: {reason}");
                return Ok(());
            }
            other => {
                warn!("unexpected answer from the coordinator at {addr}: {other:?}");
                return Ok(());
            }
        }
        if let Some(secs) = settings.interval {
            wire::blocking::send(&mut s, &ToCoord::Command(Command::Interval { secs }))?;
            match wire::blocking::recv::<_, FromCoord>(&mut s)? {
                FromCoord::Reply(Reply::Ok) => info!("checkpoint interval of {addr} set to {secs} s"),
                other => warn!("cannot set the checkpoint interval of {addr}: {other:?}"),
            }
        }
        if let Some(keep) = settings.keep {
            wire::blocking::send(&mut s, &ToCoord::Command(Command::Keep { keep }))?;
            match wire::blocking::recv::<_, FromCoord>(&mut s)? {
                FromCoord::Reply(Reply::Ok) => info!("{addr} keeps {keep} generation(s) (0 = all)"),
                other => warn!("cannot set the retention of {addr}: {other:?}"),
            }
        }
        Ok(())
    })();
    if let Err(e) = r {
        warn!("the service at {addr} does not speak the crust protocol properly: {e}");
    }
}

/// Start `crcoord` detached and wait until it listens. `Ok(true)`: ready; `Ok(false)`: it
/// exited without becoming ready.
fn spawn_coordinator(bin: &Path, bind: &str, port: u16, ckpt_dir: &Path, settings: &CoordSettings) -> Result<bool, Error> {
    let start_err = |reason: String| Error::CoordinatorStart { addr: format!("{bind}:{port}"), reason };
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| start_err(format!("pipe: {e}")))?;
    // Keep the write end off the standard descriptors, which the spawn rewires.
    let wr = if wr.as_raw_fd() < 3 {
        let fd = nix::fcntl::fcntl(wr.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))
            .map_err(|e| start_err(format!("fcntl: {e}")))?;
        // SAFETY: fcntl(F_DUPFD_CLOEXEC) just returned this new descriptor; nothing else owns it.
        unsafe { OwnedFd::from_raw_fd(fd) }
    } else {
        wr
    };
    let wfd = wr.as_raw_fd();

    let (out, err) = match std::env::var_os("CR_LOG").filter(|v| !v.is_empty()) {
        Some(_) => match open_log(ckpt_dir) {
            Ok(f) => match f.try_clone() {
                Ok(g) => (Stdio::from(f), Stdio::from(g)),
                Err(_) => (Stdio::null(), Stdio::null()),
            },
            Err(e) => {
                warn!("cannot open {}/crcoord.log: {e}", ckpt_dir.display());
                (Stdio::null(), Stdio::null())
            }
        },
        None => (Stdio::null(), Stdio::null()),
    };
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("--port")
        .arg(port.to_string())
        .arg("--bind")
        .arg(bind)
        .arg("--ckpt-dir")
        .arg(ckpt_dir)
        .arg("--exit-when-idle")
        .arg("--ready-fd")
        .arg(wfd.to_string());
    if let Some(s) = settings.interval {
        cmd.arg("--interval").arg(s.to_string());
    }
    if let Some(k) = settings.keep.filter(|&k| k > 0) {
        cmd.arg("--keep").arg(k.to_string());
    }
    // CR_COMPRESS is the launched program's own setting, not one to impose on every process.
    cmd.stdin(Stdio::null()).stdout(out).stderr(err).current_dir("/").env_remove("LD_PRELOAD").env_remove("CR_COMPRESS");
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (fork, _exit, setsid, fcntl); it touches no memory
    // shared with other threads. Forking again and exiting the middle process makes the
    // coordinator an orphan adopted by init, so it is never a child of the program this
    // launcher is about to exec (which might wait() for it).
    unsafe {
        cmd.pre_exec(move || {
            match libc::fork() {
                -1 => return Err(std::io::Error::last_os_error()),
                0 => {}
                _ => libc::_exit(0),
            }
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            let flags = libc::fcntl(wfd, libc::F_GETFD);
            if flags == -1 || libc::fcntl(wfd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| start_err(format!("{}: {e}", bin.display())))?;
    drop(wr);
    // Reap the middle process (it exits at once).
    let _ = child.wait();
    wait_ready(rd).map_err(start_err)
}

fn open_log(ckpt_dir: &Path) -> std::io::Result<std::fs::File> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(ckpt_dir)?;
    std::fs::OpenOptions::new().append(true).create(true).mode(0o600).open(ckpt_dir.join("crcoord.log"))
}

/// Wait for the readiness byte. `Ok(false)` when the writer closed the pipe without it.
fn wait_ready(rd: OwnedFd) -> Result<bool, String> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("crcoord did not start listening within {} s", READY_TIMEOUT.as_secs()));
        }
        let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(rd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => continue,
            Ok(_) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("poll: {e}")),
        }
    }
    let mut f = std::fs::File::from(rd);
    let mut b = [0u8; 1];
    loop {
        match f.read(&mut b) {
            Ok(n) => return Ok(n == 1),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("reading the readiness pipe: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(split_addr("127.0.0.1:7787").unwrap(), ("127.0.0.1".into(), 7787));
        assert_eq!(split_addr("[::1]:9").unwrap(), ("::1".into(), 9));
        assert_eq!(split_addr("localhost:1").unwrap(), ("localhost".into(), 1));
        for bad in ["7787", "host:", ":7787", "::1:7787", "[::1:7", "h:99999"] {
            assert!(split_addr(bad).is_err(), "{bad}");
        }
        assert!(is_local_host("127.0.0.2"));
        assert!(is_local_host("::1"));
        assert!(is_local_host("LocalHost"));
        assert!(!is_local_host("10.0.0.1"));
        assert!(!is_local_host("example.org"));
    }

    #[test]
    fn remote_refusal_is_an_error_not_a_spawn() {
        // 0.0.0.0 reaches this host but is not a loopback address: a refusal is reported
        // and nothing is started (the crcoord path would fail if it were used).
        let r = ensure_coordinator_with(Some(Path::new("/nonexistent/crcoord")), "0.0.0.0:1", Path::new("/tmp"), None);
        assert!(matches!(r, Err(Error::NoCoordinator { .. })), "{r:?}");
    }
}
