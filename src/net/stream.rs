//! The narrow boundary between the server and its two I/O back ends: a
//! connected stream that can read into an owned buffer, write a list of
//! output segments, and be shut down. Everything above this file is the
//! same on io_uring and on epoll.
//!
//! # Never drop in-flight I/O
//! tokio-uring does not cancel an operation whose future is dropped: a
//! dropped read still consumes bytes and a dropped write still sends them.
//! So these futures are only ever awaited to completion, never raced in a
//! `select!` or wrapped in a timeout. A reader is stopped by shutting the
//! socket down ([`Stream::shutdown`]), which completes its read at once.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use tokio_uring::buf::{BoundedBuf, IoBuf};

use crate::protocol::output::Segment;

/// An output segment with a start offset, for resuming partial writes.
pub struct OutBuf {
    segment: Segment,
    start: usize,
}

impl OutBuf {
    pub fn new(segment: Segment) -> OutBuf {
        OutBuf { segment, start: 0 }
    }

    pub fn remaining(&self) -> &[u8] {
        &self.segment.bytes()[self.start..]
    }

    pub fn into_segment(self) -> Segment {
        self.segment
    }
}

// Safety: the bytes live in a Vec or a Body owned by the OutBuf, which do
// not move or change while it exists, and the range is fully initialised.
unsafe impl IoBuf for OutBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.remaining().as_ptr()
    }

    fn bytes_init(&self) -> usize {
        self.remaining().len()
    }

    fn bytes_total(&self) -> usize {
        self.remaining().len()
    }
}

pub enum Stream {
    UringTcp(tokio_uring::net::TcpStream),
    UringUnix(tokio_uring::net::UnixStream),
    EpollTcp(tokio::net::TcpStream),
    EpollUnix(tokio::net::UnixStream),
}

impl Stream {
    /// Adopts a freshly accepted socket for the chosen back end.
    pub fn adopt(accepted: Accepted, uring: bool) -> io::Result<Stream> {
        Ok(match (accepted, uring) {
            (Accepted::Tcp(s), true) => {
                let std = s.into_std()?;
                std.set_nonblocking(false)?;
                Stream::UringTcp(tokio_uring::net::TcpStream::from_std(std))
            }
            (Accepted::Unix(s), true) => {
                let std = s.into_std()?;
                std.set_nonblocking(false)?;
                Stream::UringUnix(tokio_uring::net::UnixStream::from_std(std))
            }
            (Accepted::Tcp(s), false) => Stream::EpollTcp(s),
            (Accepted::Unix(s), false) => Stream::EpollUnix(s),
        })
    }

    pub fn raw_fd(&self) -> RawFd {
        match self {
            Stream::UringTcp(s) => s.as_raw_fd(),
            Stream::UringUnix(s) => s.as_raw_fd(),
            Stream::EpollTcp(s) => s.as_raw_fd(),
            Stream::EpollUnix(s) => s.as_raw_fd(),
        }
    }

    /// Reads into the spare capacity of `buf` (after `buf.len()`); returns
    /// the byte count, 0 at end of stream.
    pub async fn read(&self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let start = buf.len();
        match self {
            Stream::UringTcp(s) => {
                let (res, slice) = s.read(buf.slice(start..)).await;
                (res, slice.into_inner())
            }
            Stream::UringUnix(s) => {
                let (res, slice) = s.read(buf.slice(start..)).await;
                (res, slice.into_inner())
            }
            Stream::EpollTcp(s) => loop {
                if let Err(e) = s.readable().await {
                    return (Err(e), buf);
                }
                match s.try_read_buf(&mut buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    res => return (res, buf),
                }
            },
            Stream::EpollUnix(s) => loop {
                if let Err(e) = s.readable().await {
                    return (Err(e), buf);
                }
                match s.try_read_buf(&mut buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    res => return (res, buf),
                }
            },
        }
    }

    /// Writes every segment, in one vectored write when the socket takes
    /// it all. Returns the segments (emptied buffers can be reused).
    pub async fn write_all(&self, mut bufs: Vec<OutBuf>) -> (io::Result<()>, Vec<OutBuf>) {
        let mut done = Vec::with_capacity(bufs.len());
        while !bufs.is_empty() {
            // The kernel takes at most IOVECS_MAX segments per call.
            let later = if bufs.len() > IOVECS_MAX { bufs.split_off(IOVECS_MAX) } else { Vec::new() };
            let (res, back) = self.writev(bufs).await;
            bufs = back;
            bufs.extend(later);
            let mut n = match res {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), bufs),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return (Err(e), bufs),
            };
            // Drop what was written; resume a partly written segment.
            let mut written = 0;
            for buf in bufs.iter_mut() {
                let len = buf.remaining().len();
                if n < len {
                    buf.start += n;
                    break;
                }
                n -= len;
                written += 1;
            }
            done.extend(bufs.drain(..written));
        }
        (Ok(()), done)
    }

    async fn writev(&self, bufs: Vec<OutBuf>) -> (io::Result<usize>, Vec<OutBuf>) {
        match self {
            Stream::UringTcp(s) => s.writev(bufs).await,
            Stream::UringUnix(s) => s.writev(bufs).await,
            Stream::EpollTcp(s) => loop {
                if let Err(e) = s.writable().await {
                    return (Err(e), bufs);
                }
                match s.try_write_vectored(&io_slices(&bufs)) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    res => return (res, bufs),
                }
            },
            Stream::EpollUnix(s) => loop {
                if let Err(e) = s.writable().await {
                    return (Err(e), bufs);
                }
                match s.try_write_vectored(&io_slices(&bufs)) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    res => return (res, bufs),
                }
            },
        }
    }

    /// Shuts both directions down, which completes any read in flight.
    pub fn shutdown(&self) {
        // Safety: a plain system call on a descriptor we own. Errors (the
        // peer is already gone) change nothing.
        unsafe { libc::shutdown(self.raw_fd(), libc::SHUT_RDWR) };
    }
}

/// Most segments handed to one vectored write (the kernel's IOV_MAX).
const IOVECS_MAX: usize = 1024;

fn io_slices(bufs: &[OutBuf]) -> Vec<io::IoSlice<'_>> {
    bufs.iter().map(|b| io::IoSlice::new(b.remaining())).collect()
}

/// A connection as the listener accepted it, before the back end adopts it.
pub enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// The listening socket. Accepting always uses tokio's readiness-based
/// listener, on both back ends: accept is cancel-safe there, so stopping the
/// accept loop can never leak a connection, and accepts are rare next to
/// reads and writes.
pub enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

impl Listener {
    pub fn from_bound(bound: super::listen::BoundListener) -> io::Result<Listener> {
        use super::listen::BoundListener as B;
        Ok(match bound {
            B::Tcp(l) => {
                l.set_nonblocking(true)?;
                Listener::Tcp(tokio::net::TcpListener::from_std(l)?)
            }
            B::Unix(l) => {
                l.set_nonblocking(true)?;
                Listener::Unix(tokio::net::UnixListener::from_std(l)?)
            }
        })
    }

    pub async fn accept(&self) -> io::Result<Accepted> {
        match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                s.set_nodelay(true)?;
                Ok(Accepted::Tcp(s))
            }
            Listener::Unix(l) => Ok(Accepted::Unix(l.accept().await?.0)),
        }
    }
}
