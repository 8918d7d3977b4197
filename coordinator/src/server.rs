//! The TCP driver of the coordinator.
//!
//! One thread accepts connections; each connection gets a reader thread that decodes
//! frames and forwards them over a channel; the thread that called [`Server::run`] owns
//! the [`Core`] and the write halves of every connection. A connection that sends a frame
//! over the size limit, or one that does not decode, is dropped (only that one). Before its
//! hello a connection gets [`HELLO_TIMEOUT`] and frames of at most
//! [`wire::MAX_HELLO_FRAME`] bytes; at most [`MAX_CONNECTIONS`] are open at once, so
//! nobody can exhaust the coordinator's threads or memory by connecting and idling.
//!
//! Without a shared secret the coordinator only listens on loopback, where every user of
//! the machine can connect: a connection from a socket owned by another user (asked of the
//! kernel with one `NETLINK_SOCK_DIAG` lookup, else found in `/proc/net/tcp` as identd
//! does) is refused before it can say anything, so other users
//! cannot read the computation's state, register fake processes or have processes killed.

use crate::core::{Action, ConnId, Core, Input};
use crate::{recv_frame, recv_frame_limited, Config, Error};
use crust_format::wire::{self, ToCoord};
use std::collections::HashMap;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// A peer that does not read its messages for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that has not said hello after this long is dropped.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections beyond this many are closed at once.
pub const MAX_CONNECTIONS: usize = 4096;

enum Event {
    Connected(ConnId, TcpStream),
    Message(ConnId, ToCoord),
    Closed(ConnId),
}

/// A bound coordinator, ready to [`run`](Server::run).
pub struct Server {
    listener: TcpListener,
    cfg: Config,
}

impl Server {
    /// Bind the listening socket. An `Error::Bind` whose source has kind `AddrInUse`
    /// means another coordinator (or something else) has the port.
    pub fn bind(addr: &str, cfg: Config) -> Result<Server, Error> {
        let listener = TcpListener::bind(addr).map_err(|source| Error::Bind { addr: addr.to_string(), source })?;
        Ok(Server { listener, cfg })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        Ok(self.listener.local_addr()?)
    }

    /// Serve until the state machine asks to exit (`crctl quit`, `--exit-when-idle`).
    pub fn run(self) -> Result<(), Error> {
        let (tx, rx) = mpsc::channel::<Event>();
        let listener = self.listener;
        let same_user_only = self.cfg.token.is_none();
        std::thread::Builder::new().name("accept".into()).spawn(move || accept_loop(listener, tx, same_user_only))?;
        let mut core = Core::new(self.cfg, Instant::now());
        let mut writers: HashMap<ConnId, TcpStream> = HashMap::new();
        loop {
            let now = Instant::now();
            let ev = match core.next_deadline() {
                Some(d) => match rx.recv_timeout(d.saturating_duration_since(now)) {
                    Ok(ev) => Some(ev),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return Err(Error::Config("accept thread died".into())),
                },
                None => match rx.recv() {
                    Ok(ev) => Some(ev),
                    Err(_) => return Err(Error::Config("accept thread died".into())),
                },
            };
            let now = Instant::now();
            let actions = match ev {
                None => core.tick(now),
                Some(Event::Connected(c, w)) => {
                    writers.insert(c, w);
                    core.handle(now, Input::Connected(c))
                }
                Some(Event::Message(c, m)) => core.handle(now, Input::Message(c, m)),
                Some(Event::Closed(c)) => {
                    writers.remove(&c);
                    core.handle(now, Input::Closed(c))
                }
            };
            if execute(&mut core, &mut writers, actions) {
                // Closing the write halves tells every peer we are gone.
                for (_, w) in writers.drain() {
                    let _ = w.shutdown(Shutdown::Both);
                }
                return Ok(());
            }
        }
    }
}

/// Carry out actions (and the ones that failed sends lead to). Returns true on Exit.
fn execute(_core: &mut Core, writers: &mut HashMap<ConnId, TcpStream>, actions: Vec<Action>) -> bool {
    let mut queue: std::collections::VecDeque<Action> = actions.into();
    let mut exit = false;
    while let Some(a) = queue.pop_front() {
        match a {
            Action::Send(c, m) => {
                let Some(w) = writers.get_mut(&c) else { continue };
                if let Err(e) = wire::blocking::send(w, &m) {
                    // The peer is gone. Its reader still delivers what it sent before
                    // going (a process's `Leaving`), then reports the close.
                    debug!(conn = c, "send failed: {e}; dropping the connection");
                    let _ = w.shutdown(Shutdown::Write);
                    writers.remove(&c);
                }
            }
            Action::Close(c) => {
                if let Some(w) = writers.remove(&c) {
                    let _ = w.shutdown(Shutdown::Both);
                }
            }
            Action::Kill { real_pid } => {
                use nix::sys::signal::{kill, Signal};
                if let Err(e) = kill(nix::unistd::Pid::from_raw(real_pid), Signal::SIGKILL) {
                    warn!("cannot kill pid {real_pid}: {e}");
                }
            }
            Action::RunHook { cmd, env } => run_hook(&cmd, env),
            Action::Exit => exit = true,
        }
    }
    exit
}

/// Start an operator hook with `sh -c` and reap it from a thread; its output goes where
/// the coordinator's goes.
fn run_hook(cmd: &str, env: Vec<(String, String)>) {
    let gen = env.iter().find(|(k, _)| k == "CR_GENERATION").map(|(_, v)| v.clone()).unwrap_or_default();
    let mut c = std::process::Command::new("/bin/sh");
    c.arg("-c").arg(cmd).envs(env).stdin(std::process::Stdio::null());
    match c.spawn() {
        Ok(mut child) => {
            debug!(pid = child.id(), generation = %gen, "hook started: {cmd}");
            let cmd = cmd.to_string();
            let _ = std::thread::Builder::new().name("hook".into()).spawn(move || match child.wait() {
                Ok(st) if st.success() => debug!("hook finished: {cmd}"),
                Ok(st) => warn!("hook `{cmd}` (generation {gen}) failed: {st}"),
                Err(e) => warn!("hook `{cmd}`: {e}"),
            });
        }
        Err(e) => warn!("cannot run hook `{cmd}`: {e}"),
    }
}

/// How a socket address appears in `/proc/net/tcp` / `tcp6`.
fn proc_net_addr(a: &SocketAddr) -> String {
    match a {
        SocketAddr::V4(v) => format!("{:08X}:{:04X}", u32::from_ne_bytes(v.ip().octets()), v.port()),
        SocketAddr::V6(v) => {
            let o = v.ip().octets();
            let mut s = String::new();
            for w in o.chunks(4) {
                s += &format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
            }
            format!("{s}:{:04X}", v.port())
        }
    }
}

/// The uid owning the other end of a connection on this host: the socket whose local
/// address is `peer` and remote address is `ours`. `None` when it cannot be told.
pub fn local_peer_uid(ours: SocketAddr, peer: SocketAddr) -> Option<u32> {
    sock_diag_uid(peer, ours).or_else(|| proc_net_uid(ours, peer))
}

/// The uid owning the TCP socket whose local address is `local` and remote address
/// `remote`, asked of the kernel with one exact NETLINK_SOCK_DIAG lookup (what `ss` uses).
/// Reading /proc/net/tcp instead walks every socket of the host: 10 ms and more per
/// connection with a few thousand in TIME_WAIT, on the path of every `crctl` command.
fn sock_diag_uid(local: SocketAddr, remote: SocketAddr) -> Option<u32> {
    use nix::sys::socket::{recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType};
    use std::os::fd::AsRawFd;
    const AF_INET: u8 = 2;
    const AF_INET6: u8 = 10;
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLM_F_REQUEST: u16 = 1;
    const IPPROTO_TCP: u8 = 6;
    let v4 = |a: &SocketAddr| match a {
        SocketAddr::V4(v) => Some(*v.ip()),
        SocketAddr::V6(v) => v.ip().to_ipv4_mapped(),
    };
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    let family = match (v4(&local), v4(&remote)) {
        (Some(l), Some(r)) => {
            src[..4].copy_from_slice(&l.octets());
            dst[..4].copy_from_slice(&r.octets());
            AF_INET
        }
        _ => match (local, remote) {
            (SocketAddr::V6(l), SocketAddr::V6(r)) => {
                src = l.ip().octets();
                dst = r.ip().octets();
                AF_INET6
            }
            _ => return None,
        },
    };
    // struct nlmsghdr, then struct inet_diag_req_v2 (ports and addresses in network order).
    let mut req = Vec::with_capacity(72);
    req.extend_from_slice(&72u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    req.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    req.extend_from_slice(&[family, IPPROTO_TCP, 0, 0]);
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // any state
    req.extend_from_slice(&local.port().to_be_bytes());
    req.extend_from_slice(&remote.port().to_be_bytes());
    req.extend_from_slice(&src);
    req.extend_from_slice(&dst);
    req.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    req.extend_from_slice(&[0xff; 8]); // INET_DIAG_NOCOOKIE
    let fd = socket(AddressFamily::Netlink, SockType::Datagram, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkSockDiag).ok()?;
    sendto(fd.as_raw_fd(), &req, &NetlinkAddr::new(0, 0), MsgFlags::empty()).ok()?;
    // The kernel answers while handling the request: the reply is queued already.
    let mut buf = [0u8; 1024];
    let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT).ok()?;
    // struct nlmsghdr, then struct inet_diag_msg, whose idiag_uid is at byte 64.
    let msg_type = u16::from_ne_bytes([buf[4], buf[5]]);
    if n < 16 + 68 || msg_type != SOCK_DIAG_BY_FAMILY {
        return None; // NLMSG_ERROR: no such socket, or no inet_diag in this kernel
    }
    Some(u32::from_ne_bytes(buf[80..84].try_into().ok()?))
}

/// [`local_peer_uid`] from the tables in /proc/net (where sock_diag is not answered).
fn proc_net_uid(ours: SocketAddr, peer: SocketAddr) -> Option<u32> {
    let (want_local, want_remote) = (proc_net_addr(&peer), proc_net_addr(&ours));
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 7 && f[1] == want_local && f[2] == want_remote {
                return f[7].parse().ok();
            }
        }
    }
    None
}

/// Whether a loopback connection comes from another user (root may always connect).
fn from_another_user(stream: &TcpStream, peer: SocketAddr) -> Option<u32> {
    if !peer.ip().is_loopback() && !peer.ip().to_canonical().is_loopback() {
        return None;
    }
    let me = nix::unistd::geteuid().as_raw();
    let ours = stream.local_addr().ok()?;
    match local_peer_uid(ours, peer) {
        Some(uid) if uid != me && uid != 0 => Some(uid),
        _ => None,
    }
}

fn accept_loop(listener: TcpListener, tx: mpsc::Sender<Event>, same_user_only: bool) {
    let mut next: ConnId = 1;
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let stream = match listener.accept() {
            Ok((mut s, peer)) => {
                debug!(conn = next, %peer, "connection");
                if same_user_only {
                    if let Some(uid) = from_another_user(&s, peer) {
                        warn!("refusing a connection from {peer}: it belongs to uid {uid}, not to this coordinator's user");
                        let reason = format!(
                            "this coordinator serves uid {} only (connection from uid {uid}); without a shared secret \
                             other users may not connect",
                            nix::unistd::geteuid()
                        );
                        let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
                        let _ = wire::blocking::send(&mut s, &crust_format::wire::FromCoord::Rejected { reason });
                        continue;
                    }
                }
                s
            }
            Err(e) => {
                // EMFILE and friends: back off a little instead of spinning.
                warn!("accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if open.load(Ordering::Acquire) >= MAX_CONNECTIONS {
            warn!("{MAX_CONNECTIONS} connections open; refusing another");
            drop(stream);
            continue;
        }
        let id = next;
        next += 1;
        let _ = stream.set_nodelay(true);
        let writer = match stream.try_clone() {
            Ok(w) => w,
            Err(e) => {
                warn!("cannot clone a socket: {e}");
                continue;
            }
        };
        let _ = writer.set_write_timeout(Some(WRITE_TIMEOUT));
        if tx.send(Event::Connected(id, writer)).is_err() {
            return;
        }
        let rtx = tx.clone();
        open.fetch_add(1, Ordering::AcqRel);
        let count = open.clone();
        let spawned = std::thread::Builder::new().name(format!("conn-{id}")).spawn(move || {
            reader(id, stream, rtx);
            count.fetch_sub(1, Ordering::AcqRel);
        });
        if let Err(e) = spawned {
            open.fetch_sub(1, Ordering::AcqRel);
            warn!("cannot start a connection thread: {e}");
            if tx.send(Event::Closed(id)).is_err() {
                return;
            }
        }
    }
}

fn reader(id: ConnId, mut stream: TcpStream, tx: mpsc::Sender<Event>) {
    // The hello: small, and soon.
    let first = stream
        .set_read_timeout(Some(HELLO_TIMEOUT))
        .map_err(Error::from)
        .and_then(|()| recv_frame_limited::<_, ToCoord>(&mut stream, wire::MAX_HELLO_FRAME))
        .and_then(|m| stream.set_read_timeout(None).map(|()| m).map_err(Error::from));
    match first {
        Ok(m) => {
            if tx.send(Event::Message(id, m)).is_err() {
                return;
            }
        }
        Err(e) => {
            debug!(conn = id, "connection dropped before its hello: {e}");
            let _ = stream.shutdown(Shutdown::Both);
            let _ = tx.send(Event::Closed(id));
            return;
        }
    }
    loop {
        match recv_frame::<_, ToCoord>(&mut stream) {
            Ok(m) => {
                if tx.send(Event::Message(id, m)).is_err() {
                    return;
                }
            }
            Err(e) => {
                debug!(conn = id, "connection closed: {e}");
                let _ = stream.shutdown(Shutdown::Both);
                let _ = tx.send(Event::Closed(id));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Control;
    use crust_format::manifest;
    use crust_format::wire::{Command, FromCoord, ImageReport, Phase, Reply, PROTOCOL_VERSION};
    use std::io::{Read, Write};

    fn start(name: &str, exit_when_idle: bool) -> (String, std::path::PathBuf, std::thread::JoinHandle<Result<(), Error>>) {
        let dir = std::env::temp_dir().join(format!("crust-server-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cfg = Config::new(dir.clone());
        cfg.forked = false;
        cfg.exit_when_idle = exit_when_idle;
        let server = Server::bind("127.0.0.1:0", cfg).unwrap();
        let addr = server.local_addr().unwrap().to_string();
        (addr, dir, std::thread::spawn(move || server.run()))
    }

    /// The coordinator closes the connection: reading gives EOF (or a reset), never data.
    fn assert_dropped(mut s: TcpStream) {
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("expected the connection to be dropped, got {n} bytes"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    }

    #[test]
    fn the_peer_of_a_loopback_connection_is_found() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, peer) = l.accept().unwrap();
        assert_eq!(peer, c.local_addr().unwrap());
        let uid = local_peer_uid(s.local_addr().unwrap(), peer);
        assert_eq!(uid, Some(nix::unistd::geteuid().as_raw()));
        // Both ways of asking find it (sock_diag, and /proc/net/tcp where it is not answered).
        assert_eq!(sock_diag_uid(peer, s.local_addr().unwrap()), uid);
        assert_eq!(proc_net_uid(s.local_addr().unwrap(), peer), uid);
        // A socket that does not exist has no owner.
        let gone: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(sock_diag_uid(gone, s.local_addr().unwrap()), None);
        assert_eq!(from_another_user(&s, peer), None);
        assert_eq!(proc_net_addr(&"127.0.0.1:7787".parse().unwrap()), "0100007F:1E6B");
    }

    /// As root: a connection made by a process running as nobody is found to be nobody's
    /// (and would be refused), by both ways of asking.
    #[test]
    fn the_peer_of_another_users_connection_is_that_user() {
        use std::os::unix::process::CommandExt;
        if !nix::unistd::geteuid().is_root() {
            eprintln!("not root: cannot connect as another user here");
            return;
        }
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut child = std::process::Command::new("/bin/bash")
            .arg("-c")
            .arg(format!("exec 3<>/dev/tcp/127.0.0.1/{port}; read -t 20 -u 3 x"))
            .uid(65534)
            .gid(65534)
            .spawn()
            .expect("bash as nobody");
        let (s, peer) = l.accept().unwrap();
        let ours = s.local_addr().unwrap();
        assert_eq!(sock_diag_uid(peer, ours), Some(65534));
        assert_eq!(proc_net_uid(ours, peer), Some(65534));
        assert_eq!(from_another_user(&s, peer), Some(65534));
        drop(s);
        let _ = child.wait();
    }

    #[test]
    fn garbage_and_oversized_frames_only_drop_that_connection() {
        let (addr, dir, h) = start("garbage", false);
        // A frame whose body does not decode.
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(&[5, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff]).unwrap();
        assert_dropped(s);
        // A length prefix over the limit (nothing is allocated; the connection is dropped).
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(&((wire::MAX_FRAME as u32) + 1).to_le_bytes()).unwrap();
        assert_dropped(s);
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(&u32::MAX.to_le_bytes()).unwrap();
        assert_dropped(s);
        // A valid frame of the wrong kind first.
        let mut s = TcpStream::connect(&addr).unwrap();
        wire::blocking::send(&mut s, &ToCoord::Reached { generation: 1, phase: Phase::Suspended }).unwrap();
        assert_dropped(s);
        // Wrong protocol version: Rejected, then dropped.
        let mut s = TcpStream::connect(&addr).unwrap();
        wire::blocking::send(&mut s, &ToCoord::HelloControl { proto: PROTOCOL_VERSION + 1, token: None }).unwrap();
        match recv_frame::<_, FromCoord>(&mut s).unwrap() {
            FromCoord::Rejected { reason } => assert!(reason.contains("protocol version"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert_dropped(s);
        // Half a frame, then the peer goes away.
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(&[100, 0, 0, 0, 1, 2]).unwrap();
        drop(s);

        // The coordinator is still up and answers a valid control connection.
        let mut c = Control::connect(&addr, Duration::from_secs(5)).unwrap();
        assert_eq!(c.comp_id, 0);
        assert_eq!(c.ckpt_dir, dir.display().to_string());
        match c.command(Command::Status, Some(Duration::from_secs(10))).unwrap() {
            Reply::Status(st) => {
                assert!(st.processes.is_empty());
                assert_eq!(st.comp_id, None);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.command(Command::Quit, Some(Duration::from_secs(10))).unwrap(), Reply::Ok);
        h.join().unwrap().unwrap();
    }

    fn expect(s: &mut TcpStream) -> FromCoord {
        recv_frame(s).unwrap()
    }

    /// A fake process and crctl go through a whole generation over real sockets.
    #[test]
    fn generation_over_tcp_then_exit_when_idle() {
        let (addr, dir, h) = start("tcp", true);
        let mut p = TcpStream::connect(&addr).unwrap();
        let vpid = 4242;
        let hello = ToCoord::HelloProcess {
            proto: PROTOCOL_VERSION,
            token: None,
            comp_id: Some(0x1234),
            vpid,
            vppid: 1,
            real_pid: -1,
            hostname: crate::hostname(),
            program: "fake".into(),
            args: vec!["fake".into(), "--x".into()],
            restored_from: Some(3),
        };
        wire::blocking::send(&mut p, &hello).unwrap();
        assert_eq!(expect(&mut p), FromCoord::Welcome { comp_id: 0x1234, ckpt_dir: dir.display().to_string() });

        let ctl_addr = addr.clone();
        let waiter = std::thread::spawn(move || {
            let mut c = Control::connect(&ctl_addr, Duration::from_secs(5)).unwrap();
            c.command(Command::Checkpoint { wait: true, kill_after: false }, None).unwrap()
        });

        let FromCoord::Checkpoint { generation, dir: gdir, .. } = expect(&mut p) else { panic!() };
        assert_eq!(generation, 1);
        wire::blocking::send(&mut p, &ToCoord::Reached { generation, phase: Phase::Suspended }).unwrap();
        assert_eq!(expect(&mut p), FromCoord::Proceed { generation, phase: Phase::Written });
        let file = manifest::image_file_name(vpid);
        std::fs::write(std::path::Path::new(&gdir).join(&file), b"image").unwrap();
        let report = ImageReport { file, bytes: 5, memory_bytes: 0, downtime_us: 1500, write_us: 10 };
        wire::blocking::send(&mut p, &ToCoord::Written { generation, report }).unwrap();
        assert_eq!(expect(&mut p), FromCoord::Proceed { generation, phase: Phase::Resumed });
        wire::blocking::send(&mut p, &ToCoord::Reached { generation, phase: Phase::Resumed }).unwrap();

        match waiter.join().unwrap() {
            Reply::Done(s) => {
                assert_eq!(s.generation, 1);
                assert_eq!(s.path, gdir);
                assert_eq!(s.max_downtime_us, 1500);
            }
            other => panic!("{other:?}"),
        }
        let m = manifest::read_manifest(std::path::Path::new(&gdir)).unwrap();
        assert_eq!(m.comp_id, 0x1234);
        assert_eq!(m.processes[0].args, vec!["fake".to_string(), "--x".to_string()]);
        // The last process leaves: an --exit-when-idle coordinator stops.
        drop(p);
        h.join().unwrap().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
