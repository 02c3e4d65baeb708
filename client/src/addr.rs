//! Server addresses (`HOST:PORT`, `HOST`, `unix:PATH`) and the byte stream to one.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::error::Error;

/// The port beanstalkd listens on by default.
pub const DEFAULT_PORT: u16 = 11300;

/// Where a server listens.
///
/// ```
/// use runnerbean_client::Address;
///
/// assert_eq!("127.0.0.1:11300".parse::<Address>().unwrap(), Address::Tcp("127.0.0.1:11300".into()));
/// assert_eq!("queue.internal".parse::<Address>().unwrap(), Address::Tcp("queue.internal:11300".into()));
/// assert_eq!("[::1]".parse::<Address>().unwrap(), Address::Tcp("[::1]:11300".into()));
/// assert_eq!("unix:/run/beanstalkd.sock".parse::<Address>().unwrap(), Address::Unix("/run/beanstalkd.sock".into()));
/// assert_eq!("unix:/run/beanstalkd.sock".parse::<Address>().unwrap().to_string(), "unix:/run/beanstalkd.sock");
/// assert!("".parse::<Address>().is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Address {
    /// `HOST:PORT`, where HOST is a name, an IPv4 address or a bracketed IPv6 address. A HOST
    /// given alone gets port 11300.
    Tcp(String),
    /// `unix:PATH`: a unix-domain stream socket.
    Unix(PathBuf),
}

impl std::str::FromStr for Address {
    type Err = Error;

    fn from_str(text: &str) -> Result<Address, Error> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(Error::InvalidArgument("unix: needs a socket path".to_owned()));
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        if text.is_empty() || text.contains(char::is_whitespace) {
            return Err(Error::InvalidArgument(format!("{text:?} is not an address (HOST:PORT or unix:PATH)")));
        }
        // A port is present when the text ends in `:digits` outside IPv6 brackets.
        let has_port = match text.rsplit_once(':') {
            Some((host, port)) => {
                let bracketed_or_plain = host.ends_with(']') || !host.contains(':');
                if bracketed_or_plain && port.parse::<u16>().is_err() {
                    return Err(Error::InvalidArgument(format!("{text:?} has no valid port")));
                }
                bracketed_or_plain
            }
            None => false,
        };
        if has_port {
            Ok(Address::Tcp(text.to_owned()))
        } else if text.contains(':') && !text.starts_with('[') {
            // A bare IPv6 address: bracket it so that the port can follow.
            Ok(Address::Tcp(format!("[{text}]:{DEFAULT_PORT}")))
        } else {
            Ok(Address::Tcp(format!("{text}:{DEFAULT_PORT}")))
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Tcp(host_port) => f.write_str(host_port),
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl Address {
    /// Opens a stream to the address within `timeout`. TCP connections have Nagle's algorithm
    /// turned off, since commands are small and a client waits for each reply.
    pub async fn connect(&self, timeout: Duration) -> Result<Stream, Error> {
        let connect = async {
            match self {
                Address::Tcp(host_port) => {
                    let stream = TcpStream::connect(host_port.as_str()).await?;
                    stream.set_nodelay(true)?;
                    Ok(Stream::Tcp(stream))
                }
                Address::Unix(path) => Ok(Stream::Unix(UnixStream::connect(path).await?)),
            }
        };
        match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(Error::Connect { addr: self.to_string(), source: Arc::new(e) }),
            Err(_) => Err(Error::ConnectTimeout { addr: self.to_string(), after: timeout }),
        }
    }
}

/// An open connection's byte stream, TCP or unix-domain.
///
/// [`Client`](crate::Client) runs the protocol over one of these; it is public for programs
/// that speak the protocol themselves (rbctl's `raw` does, with `runnerbean_proto` to frame
/// the replies).
#[derive(Debug)]
pub enum Stream {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A unix-domain connection.
    Unix(UnixStream),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
