//! A non-blocking client connection with an outgoing buffer and a reply
//! parser, for the load generator's event loops.
//!
//! Nothing here allocates per request: buffers are sized once and reused,
//! replies are parsed in place and handed out as borrowed views.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

/// Read buffer size; replies that do not fit make it grow once.
const READ_BYTES: usize = 256 * 1024;

pub struct Conn {
    pub stream: TcpStream,
    /// Bytes still to send, from `out_pos`.
    pub out: Vec<u8>,
    pub out_pos: usize,
    inbuf: Vec<u8>,
    in_start: usize,
    in_end: usize,
}

/// One reply, borrowed from the read buffer.
#[derive(Debug)]
pub struct Reply<'a> {
    /// The first word of the reply line (`INSERTED`, `RESERVED`, …).
    pub word: &'a [u8],
    /// The first number after the word, if any (an id, a count).
    pub number: u64,
    /// The body of a RESERVED or FOUND reply, without its CRLF.
    pub body: &'a [u8],
}

impl Conn {
    pub fn connect(addr: SocketAddr, registry: &Registry, token: Token) -> io::Result<Conn> {
        // A blocking connect first, so a refused connection is an error here
        // and not a spurious event later.
        let std = std::net::TcpStream::connect(addr)?;
        std.set_nodelay(true)?;
        std.set_nonblocking(true)?;
        let mut stream = TcpStream::from_std(std);
        registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
        Ok(Conn {
            stream,
            out: Vec::with_capacity(64 * 1024),
            out_pos: 0,
            inbuf: vec![0; READ_BYTES],
            in_start: 0,
            in_end: 0,
        })
    }

    /// Bytes not yet sent.
    pub fn unsent(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Writes what is pending until done or the socket is full.
    pub fn flush(&mut self) -> io::Result<()> {
        while self.out_pos < self.out.len() {
            match self.stream.write(&self.out[self.out_pos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        self.out_pos = 0;
        Ok(())
    }

    /// Writes from a shared buffer; returns how many bytes went out.
    pub fn write_shared(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < bytes.len() {
            match self.stream.write(&bytes[done..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// Reads everything available. Errors on end of stream.
    pub fn fill(&mut self) -> io::Result<()> {
        loop {
            if self.in_start > 0 && self.in_start == self.in_end {
                self.in_start = 0;
                self.in_end = 0;
            }
            if self.in_end == self.inbuf.len() {
                if self.in_start > 0 {
                    self.inbuf.copy_within(self.in_start..self.in_end, 0);
                    self.in_end -= self.in_start;
                    self.in_start = 0;
                } else {
                    let len = self.inbuf.len();
                    self.inbuf.resize(len * 2, 0);
                }
            }
            match self.stream.read(&mut self.inbuf[self.in_end..]) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection")),
                Ok(n) => self.in_end += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The next complete reply, if one has arrived.
    pub fn next_reply(&mut self) -> Option<Reply<'_>> {
        let start = self.in_start;
        let buf = &self.inbuf[start..self.in_end];
        let nl = memchr::memchr(b'\n', buf)?;
        let line = &buf[..nl.saturating_sub(1)];
        let word_len = memchr::memchr(b' ', line).unwrap_or(line.len());
        let number = line.get(word_len + 1..).map_or(0, parse_u64);
        let framed = matches!(&line[..word_len], b"RESERVED" | b"FOUND" | b"OK");
        let (body_start, body_len, used) = if framed {
            let size = line.rsplit(|&b| b == b' ').next().map_or(0, parse_u64) as usize;
            if buf.len() < nl + 1 + size + 2 {
                return None;
            }
            (nl + 1, size, nl + 1 + size + 2)
        } else {
            (0, 0, nl + 1)
        };
        self.in_start += used;
        let buf = &self.inbuf[start..];
        Some(Reply { word: &buf[..word_len], number, body: &buf[body_start..body_start + body_len] })
    }
}

fn parse_u64(digits: &[u8]) -> u64 {
    digits.iter().take_while(|b| b.is_ascii_digit()).fold(0, |v, &b| v * 10 + u64::from(b - b'0'))
}

/// Appends the decimal digits of `n`.
pub fn push_u64(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// An event loop over a set of connections: calls `handle(Some(index),
/// now)` for every connection with an event and `handle(None, now)` once
/// per turn, until the handler says the run is over or `limit` passes.
pub struct EventLoop {
    pub poll: mio::Poll,
    events: mio::Events,
}

impl EventLoop {
    pub fn new() -> io::Result<EventLoop> {
        Ok(EventLoop { poll: mio::Poll::new()?, events: mio::Events::with_capacity(1024) })
    }

    pub fn registry(&self) -> &Registry {
        self.poll.registry()
    }

    /// Returns whether the limit cut the run short. `spin` polls without
    /// sleeping (for rate-limited sends).
    pub fn run(
        &mut self,
        start: std::time::Instant,
        limit: std::time::Duration,
        spin: bool,
        mut handle: impl FnMut(Option<usize>, u64) -> io::Result<bool>,
    ) -> io::Result<bool> {
        let timeout = if spin { std::time::Duration::ZERO } else { std::time::Duration::from_millis(10) };
        loop {
            self.poll.poll(&mut self.events, Some(timeout))?;
            let now = start.elapsed().as_nanos() as u64;
            for event in self.events.iter() {
                if handle(Some(event.token().0), now)? {
                    return Ok(false);
                }
            }
            if handle(None, now)? {
                return Ok(false);
            }
            if start.elapsed() >= limit {
                return Ok(true);
            }
        }
    }
}
