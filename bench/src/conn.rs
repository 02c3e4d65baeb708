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
        let parsed = parse_reply(&self.inbuf[start..self.in_end])?;
        self.in_start += parsed.used;
        let buf = &self.inbuf[start..];
        Some(Reply { word: &buf[..parsed.word_len], number: parsed.number, body: &buf[parsed.body] })
    }
}

/// Where the parts of one reply lie in a buffer.
#[derive(Debug, PartialEq, Eq)]
struct Parsed {
    word_len: usize,
    number: u64,
    body: std::ops::Range<usize>,
    /// Bytes the whole reply takes.
    used: usize,
}

/// Finds the first complete reply at the start of `buf`: a CRLF-terminated
/// line, followed for RESERVED, FOUND and OK by the announced bytes and CRLF.
fn parse_reply(buf: &[u8]) -> Option<Parsed> {
    let nl = memchr::memchr(b'\n', buf)?;
    let line = &buf[..nl.saturating_sub(1)];
    let word_len = memchr::memchr(b' ', line).unwrap_or(line.len());
    let number = line.get(word_len + 1..).map_or(0, parse_u64);
    if !matches!(&line[..word_len], b"RESERVED" | b"FOUND" | b"OK") {
        return Some(Parsed { word_len, number, body: 0..0, used: nl + 1 });
    }
    let size = line.rsplit(|&b| b == b' ').next().map_or(0, parse_u64) as usize;
    let used = nl + 1 + size + 2;
    (buf.len() >= used).then_some(Parsed { word_len, number, body: nl + 1..nl + 1 + size, used })
}

fn parse_u64(digits: &[u8]) -> u64 {
    digits.iter().take_while(|b| b.is_ascii_digit()).fold(0, |v, &b| v * 10 + u64::from(b - b'0'))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_framed_by_line_and_byte_count() {
        let p = parse_reply(b"INSERTED 42\r\nmore").unwrap();
        assert_eq!((p.word_len, p.number, p.used), (8, 42, 13));
        let buf = b"RESERVED 7 5\r\nhello\r\nDELETED\r\n";
        let p = parse_reply(buf).unwrap();
        assert_eq!((p.word_len, p.number, &buf[p.body.clone()], p.used), (8, 7, &b"hello"[..], 21));
        assert_eq!(parse_reply(&buf[21..]).unwrap().word_len, 7);
        // A body that has not fully arrived is not a reply yet.
        assert_eq!(parse_reply(b"RESERVED 7 5\r\nhel"), None);
        assert_eq!(parse_reply(b"TIMED_OU"), None);
        let p = parse_reply(b"OK 3\r\n---\r\n").unwrap();
        assert_eq!((p.body, p.used), (6..9, 11));
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64(b"123 456"), 123);
    }
}
