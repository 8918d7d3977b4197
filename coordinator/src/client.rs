//! The control side of the protocol (what `crctl` speaks).

use crate::{recv_frame, Error};
use crust_format::wire::{self, Command, FromCoord, Reply, ToCoord, PROTOCOL_VERSION};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// How long connecting may take before `crctl` gives up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long to wait for the answer to a command that answers at once.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Connect a TCP stream to `addr` (`HOST:PORT`), trying every address it resolves to,
/// each with `timeout`.
pub fn connect_tcp(addr: &str, timeout: Duration) -> Result<TcpStream, Error> {
    let err = |source| Error::Connect { addr: addr.to_string(), source };
    let addrs: Vec<_> = addr.to_socket_addrs().map_err(err)?.collect();
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "the address resolves to nothing");
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(err(last))
}

/// A control connection to a coordinator.
pub struct Control {
    stream: TcpStream,
    /// The computation id from the coordinator's welcome (0 when it has none).
    pub comp_id: u64,
    /// The coordinator's checkpoint directory.
    pub ckpt_dir: String,
}

impl Control {
    /// Connect and say hello, presenting the shared secret of env `CR_TOKEN` if set.
    pub fn connect(addr: &str, timeout: Duration) -> Result<Control, Error> {
        Self::connect_with_token(addr, timeout, token_from_env())
    }

    /// Connect and say hello with an explicit shared secret.
    pub fn connect_with_token(addr: &str, timeout: Duration, token: Option<String>) -> Result<Control, Error> {
        let mut stream = connect_tcp(addr, timeout)?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        wire::blocking::send(&mut stream, &ToCoord::HelloControl { proto: PROTOCOL_VERSION, token })?;
        match recv(&mut stream)? {
            FromCoord::Welcome { comp_id, ckpt_dir } => Ok(Control { stream, comp_id, ckpt_dir }),
            FromCoord::Rejected { reason } => Err(Error::Rejected(reason)),
            other => Err(Error::Unexpected(format!("{other:?}"))),
        }
    }

    /// Send a command and wait for its reply (`timeout: None` waits as long as it takes,
    /// which is what `checkpoint --wait` needs; the coordinator bounds generations itself).
    pub fn command(&mut self, cmd: Command, timeout: Option<Duration>) -> Result<Reply, Error> {
        self.stream.set_read_timeout(timeout)?;
        wire::blocking::send(&mut self.stream, &ToCoord::Command(cmd))?;
        match recv(&mut self.stream)? {
            FromCoord::Reply(r) => Ok(r),
            other => Err(Error::Unexpected(format!("{other:?}"))),
        }
    }
}

fn recv(stream: &mut TcpStream) -> Result<FromCoord, Error> {
    recv_frame(stream).map_err(|e| match e {
        Error::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => Error::Closed,
        e => e,
    })
}

/// The shared secret to present, from env `CR_TOKEN` (unset = none).
pub fn token_from_env() -> Option<String> {
    std::env::var("CR_TOKEN").ok().filter(|t| !t.is_empty())
}
