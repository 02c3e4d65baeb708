//! runnerbean-null: the floor for server CPU per operation.
//!
//! A server that keeps no jobs and does nothing but answer: `put` gets
//! `INSERTED n` once its body has arrived, `use` gets `USING`, anything else
//! `UNKNOWN_COMMAND`. It reads everything a connection has, parses every
//! complete command, and sends all the replies of that read in one write,
//! on one thread over epoll (mio, edge-triggered).
//!
//! `scripts/bench-vs-c` runs it beside C beanstalkd and runnerbean in the put
//! scenarios marked as floors: whatever CPU it spends per put is the cost of
//! the kernel's TCP path plus the least a server can add, so no beanstalkd
//! server can go much below it.
//!
//! Usage: `runnerbean-null -l ADDR -p PORT` (the flags of the servers it sits
//! beside; others are refused).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

#[path = "../decimal.rs"]
mod decimal;
use decimal::push_u64;

const LISTENER: Token = Token(usize::MAX);
const READ_BYTES: usize = 64 * 1024;
/// Longest command line accepted, as in beanstalkd.
const LINE_MAX: usize = 224;

struct Conn {
    stream: TcpStream,
    inbuf: Vec<u8>,
    in_end: usize,
    out: Vec<u8>,
    out_pos: usize,
    /// Body bytes (with their CRLF) still to be skipped.
    skip: usize,
    /// The id the next `put` is answered with.
    next_id: u64,
}

impl Conn {
    fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            inbuf: vec![0; READ_BYTES],
            in_end: 0,
            out: Vec::with_capacity(READ_BYTES),
            out_pos: 0,
            skip: 0,
            next_id: 1,
        }
    }

    /// Reads until the socket is empty, answering as it goes, then writes
    /// the replies. Returns false when the connection is finished.
    fn on_event(&mut self) -> bool {
        loop {
            match self.stream.read(&mut self.inbuf[self.in_end..]) {
                Ok(0) => return false,
                Ok(n) => {
                    self.in_end += n;
                    if !self.answer() {
                        return false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        self.flush()
    }

    /// Answers every complete command in the input and keeps the rest.
    /// Returns false on a line too long to be a command.
    fn answer(&mut self) -> bool {
        let mut pos = 0;
        loop {
            if self.skip > 0 {
                let n = self.skip.min(self.in_end - pos);
                self.skip -= n;
                pos += n;
                if self.skip > 0 {
                    break;
                }
            }
            let Some(nl) = memchr::memchr(b'\n', &self.inbuf[pos..self.in_end]) else {
                break;
            };
            let line = &self.inbuf[pos..pos + nl + 1];
            pos += nl + 1;
            let words = line.strip_suffix(b"\r\n").unwrap_or(line);
            if let Some(rest) = words.strip_prefix(b"put ") {
                self.skip = body_bytes(rest).map_or(0, |n| n.saturating_add(2));
                self.out.extend_from_slice(b"INSERTED ");
                push_u64(&mut self.out, self.next_id);
                self.out.extend_from_slice(b"\r\n");
                self.next_id += 1;
            } else if let Some(tube) = words.strip_prefix(b"use ") {
                self.out.extend_from_slice(b"USING ");
                self.out.extend_from_slice(tube);
                self.out.extend_from_slice(b"\r\n");
            } else {
                self.out.extend_from_slice(b"UNKNOWN_COMMAND\r\n");
            }
        }
        self.inbuf.copy_within(pos..self.in_end, 0);
        self.in_end -= pos;
        self.in_end < LINE_MAX || self.skip > 0
    }

    /// Writes pending replies until done or the socket is full.
    fn flush(&mut self) -> bool {
        while self.out_pos < self.out.len() {
            match self.stream.write(&self.out[self.out_pos..]) {
                Ok(0) => return false,
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        self.out.clear();
        self.out_pos = 0;
        true
    }
}

/// The last word of `put <pri> <delay> <ttr> <bytes>`.
fn body_bytes(args: &[u8]) -> Option<usize> {
    let last = args.rsplit(|&b| b == b' ').next()?;
    std::str::from_utf8(last).ok()?.parse().ok()
}

fn parse_args() -> Result<SocketAddr, String> {
    let mut host = "127.0.0.1".to_string();
    let mut port = "11300".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "-l" => host = value,
            "-p" => port = value,
            _ => return Err(format!("unknown flag {flag} (only -l ADDR and -p PORT)")),
        }
    }
    let port: u16 = port.parse().map_err(|_| format!("bad port {port}"))?;
    (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("{host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}: no address"))
}

fn serve(addr: SocketAddr) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(addr)?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut conns = slab::Slab::new();
    let mut events = Events::with_capacity(1024);
    loop {
        match poll.poll(&mut events, None) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => other?,
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            stream.set_nodelay(true)?;
                            let entry = conns.vacant_entry();
                            let token = Token(entry.key());
                            poll.registry().register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
                            entry.insert(Conn::new(stream));
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        // Out of descriptors and the like. Edge-triggered, the
                        // connections already queued wait for the next one to
                        // arrive; the harness never runs this server out of
                        // descriptors.
                        Err(_) => break,
                    }
                }
                continue;
            }
            let key = event.token().0;
            let alive = conns.get_mut(key).is_some_and(Conn::on_event);
            if !alive && conns.contains(key) {
                let mut conn = conns.remove(key);
                poll.registry().deregister(&mut conn.stream)?;
            }
        }
    }
}

fn main() -> ExitCode {
    let addr = match parse_args() {
        Ok(addr) => addr,
        Err(msg) => {
            eprintln!("runnerbean-null: {msg}");
            return ExitCode::from(2);
        }
    };
    match serve(addr) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("runnerbean-null: {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::body_bytes;

    #[test]
    fn body_size_is_the_last_word() {
        assert_eq!(body_bytes(b"0 0 120 16"), Some(16));
        assert_eq!(body_bytes(b"0 0 120 x"), None);
    }
}
