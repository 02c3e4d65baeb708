//! `put` and `fill`: many connections putting pre-built jobs as fast as the
//! server takes them, each with a window of requests in flight.

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use mio::Token;

use crate::conn::{Conn, EventLoop};
use crate::{Opts, Report, histogram};

struct Producer {
    conn: Conn,
    /// Jobs this connection has yet to send.
    remaining: u64,
    /// Send times of the requests in flight, oldest first.
    sent: VecDeque<u64>,
    /// The part of the shared batch still to write: `batch[pending..end]`.
    pending: usize,
    end: usize,
}

pub fn run(o: &Opts, begin: &mut dyn FnMut()) -> io::Result<Report> {
    let mut el = EventLoop::new()?;
    let mut request = format!("put 0 0 120 {}\r\n", o.size).into_bytes();
    request.extend(std::iter::repeat_n(b'x', o.size));
    request.extend_from_slice(b"\r\n");
    // One window of requests, written from this buffer without copying.
    let batch = request.repeat(o.depth);
    let conns = o.conns.min(o.ops.max(1) as usize);
    let mut producers = Vec::with_capacity(conns);
    for i in 0..conns {
        let conn = Conn::connect(o.addr, el.registry(), Token(i))?;
        let share = o.ops / conns as u64 + u64::from((i as u64) < o.ops % conns as u64);
        producers.push(Producer { conn, remaining: share, sent: VecDeque::with_capacity(o.depth), pending: 0, end: 0 });
    }
    // Every connection uses the tube before the timed part.
    let use_line = format!("use {}\r\n", o.tube);
    for p in producers.iter_mut() {
        p.conn.out.extend_from_slice(use_line.as_bytes());
        p.conn.flush()?;
    }
    for p in producers.iter_mut() {
        wait_for_reply(&mut p.conn, b"USING")?;
    }

    let mut latency = histogram();
    let mut done = 0u64;
    let mut errors = 0u64;
    begin();
    let start = Instant::now();
    for p in producers.iter_mut() {
        send(p, &batch, request.len(), o.depth, 0)?;
    }
    let truncated = el.run(start, Duration::from_secs_f64(o.max_secs), false, |i, now| {
        let Some(i) = i else { return Ok(false) };
        let p = &mut producers[i];
        p.conn.fill()?;
        while let Some(reply) = p.conn.next_reply() {
            if reply.word != b"INSERTED" {
                errors += 1;
            }
            let sent = p.sent.pop_front().unwrap_or(now);
            latency.saturating_record(now.saturating_sub(sent).max(1));
            done += 1;
        }
        send(p, &batch, request.len(), o.depth, now)?;
        Ok(done == o.ops)
    })?;
    Ok(Report { ops: done, elapsed: start.elapsed(), latency, e2e: None, errors, truncated })
}

/// Finishes a partial write, then tops the window up.
fn send(p: &mut Producer, batch: &[u8], request_len: usize, depth: usize, now: u64) -> io::Result<()> {
    if p.pending == p.end {
        let room = (depth - p.sent.len()) as u64;
        let k = room.min(p.remaining) as usize;
        if k == 0 {
            return Ok(());
        }
        p.remaining -= k as u64;
        p.sent.extend(std::iter::repeat_n(now, k));
        p.pending = 0;
        p.end = k * request_len;
    }
    p.pending += p.conn.write_shared(&batch[p.pending..p.end])?;
    Ok(())
}

/// Blocks (by polling the socket) until one reply arrives; checks its word.
pub fn wait_for_reply(conn: &mut Conn, word: &[u8]) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        conn.fill()?;
        if let Some(reply) = conn.next_reply() {
            if reply.word != word {
                let got = String::from_utf8_lossy(reply.word).into_owned();
                return Err(io::Error::other(format!("expected {}, got {got}", String::from_utf8_lossy(word))));
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(io::Error::other("no reply within 10 s"));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}
