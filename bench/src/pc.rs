//! `pc`: producers put jobs, workers reserve and delete them, as a real
//! deployment does. Saturated (each producer keeps `--pdepth` jobs in
//! flight) or open-loop at a fixed total rate, over one tube or many.
//!
//! Each body starts with the time its job was sent (or, at a fixed rate,
//! scheduled), so a worker can measure end-to-end latency when it reserves
//! the job.

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use mio::Token;

use crate::conn::{Conn, EventLoop};
use crate::decimal::push_u64;
use crate::put::wait_for_reply;
use crate::{Opts, Report, histogram};

/// Hex digits of the timestamp at the start of each body.
pub const STAMP_BYTES: usize = 16;

/// A rate-limited producer that falls this far behind stops sending until
/// replies catch up, so a stalled server cannot exhaust memory.
const OPEN_LOOP_IN_FLIGHT_MAX: usize = 100_000;

struct Producer {
    conn: Conn,
    /// Jobs (by global index) this producer sends: `next`, `next + P`, ...
    next: u64,
    /// Send (or scheduled) times of jobs in flight.
    sent: VecDeque<u64>,
    /// Replies still expected for the job at the front: 2 with `use`.
    replies_per_job: u32,
    replies_seen: u32,
}

pub fn run(o: &Opts, begin: &mut dyn FnMut()) -> io::Result<Report> {
    let mut el = EventLoop::new()?;
    let names: Vec<String> =
        if o.tubes == 1 { vec![o.tube.clone()] } else { (0..o.tubes).map(|i| format!("t{i}")).collect() };
    // Worker w watches tubes w*K .. w*K+K (mod T); producers spread their
    // jobs over the tubes some worker watches.
    let watch_sets: Vec<Vec<usize>> =
        (0..o.workers).map(|w| (0..o.watch).map(|j| (w * o.watch + j) % o.tubes).collect()).collect();
    let mut active: Vec<usize> = watch_sets.iter().flatten().copied().collect();
    active.sort_unstable();
    active.dedup();

    // With many tubes, one idle connection watches them all, so all T exist
    // for the whole run.
    let mut holder = None;
    if o.tubes > 1 {
        let mut conn = Conn::connect(o.addr, el.registry(), Token(usize::MAX - 1))?;
        for name in &names {
            conn.out.extend_from_slice(format!("watch {name}\r\n").as_bytes());
        }
        while conn.unsent() > 0 {
            conn.flush()?;
            std::thread::sleep(Duration::from_micros(100));
        }
        for _ in 0..names.len() {
            wait_for_reply(&mut conn, b"WATCHING")?;
        }
        holder = Some(conn);
    }

    let mut workers = Vec::with_capacity(o.workers);
    for (w, set) in watch_sets.iter().enumerate() {
        let mut conn = Conn::connect(o.addr, el.registry(), Token(o.producers + w))?;
        for &t in set {
            conn.out.extend_from_slice(format!("watch {}\r\n", names[t]).as_bytes());
        }
        conn.out.extend_from_slice(b"ignore default\r\n");
        conn.flush()?;
        for _ in 0..set.len() + 1 {
            wait_for_reply(&mut conn, b"WATCHING")?;
        }
        workers.push(conn);
    }
    let mut producers = Vec::with_capacity(o.producers);
    for p in 0..o.producers {
        let mut conn = Conn::connect(o.addr, el.registry(), Token(p))?;
        if o.tubes == 1 {
            conn.out.extend_from_slice(format!("use {}\r\n", names[0]).as_bytes());
            conn.flush()?;
            wait_for_reply(&mut conn, b"USING")?;
        }
        let replies_per_job = if o.tubes == 1 { 1 } else { 2 };
        producers.push(Producer {
            conn,
            next: p as u64,
            sent: VecDeque::with_capacity(o.pdepth),
            replies_per_job,
            replies_seen: 0,
        });
    }

    let body_pad = o.size - STAMP_BYTES;
    let interval_ns = o.rate.map(|r| 1e9 / r);
    let mut latency = histogram();
    let mut e2e = histogram();
    let mut reserved = 0u64;
    let mut errors = 0u64;
    begin();
    let start = Instant::now();
    for w in workers.iter_mut() {
        w.out.extend_from_slice(b"reserve\r\n");
        w.flush()?;
    }
    let producer_count = o.producers;
    let job = |p: &mut Producer, stamp: u64| {
        let out = &mut p.conn.out;
        if names.len() > 1 {
            let tube = &names[active[(p.next as usize) % active.len()]];
            out.extend_from_slice(b"use ");
            out.extend_from_slice(tube.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"put 0 0 120 ");
        push_u64(out, (STAMP_BYTES + body_pad) as u64);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(format!("{stamp:016x}").as_bytes());
        out.extend(std::iter::repeat_n(b'x', body_pad));
        out.extend_from_slice(b"\r\n");
        p.sent.push_back(stamp);
        p.next += producer_count as u64;
    };
    let send_due = |producers: &mut Vec<Producer>, now: u64| -> io::Result<()> {
        for p in producers.iter_mut() {
            while p.next < o.jobs {
                let stamp = match interval_ns {
                    // Open loop: send every job whose time has come.
                    Some(iv) => {
                        let due = (p.next as f64 * iv) as u64;
                        if due > now || p.sent.len() >= OPEN_LOOP_IN_FLIGHT_MAX {
                            break;
                        }
                        due
                    }
                    // Closed loop: keep the window full.
                    None if p.sent.len() >= o.pdepth => break,
                    None => now,
                };
                job(p, stamp);
            }
            p.conn.flush()?;
        }
        Ok(())
    };
    send_due(&mut producers, 0)?;
    let truncated = el.run(start, Duration::from_secs_f64(o.max_secs), interval_ns.is_some(), |i, now| {
        let Some(i) = i else {
            if interval_ns.is_some() {
                send_due(&mut producers, now)?;
            }
            return Ok(reserved >= o.jobs);
        };
        if i < producers.len() {
            let p = &mut producers[i];
            p.conn.fill()?;
            while let Some(reply) = p.conn.next_reply() {
                if !matches!(reply.word, b"INSERTED" | b"USING") {
                    errors += 1;
                }
                p.replies_seen += 1;
                if p.replies_seen == p.replies_per_job {
                    p.replies_seen = 0;
                    let sent = p.sent.pop_front().unwrap_or(now);
                    latency.saturating_record(now.saturating_sub(sent).max(1));
                }
            }
            if interval_ns.is_none() {
                let p = &mut producers[i];
                while p.next < o.jobs && p.sent.len() < o.pdepth {
                    job(p, now);
                }
            }
            producers[i].conn.flush()?;
        } else if let Some(w) = workers.get_mut(i - producer_count) {
            w.fill()?;
            let mut ids: [u64; 16] = [0; 16];
            loop {
                let mut n = 0;
                while n < ids.len() {
                    let Some(reply) = w.next_reply() else { break };
                    match reply.word {
                        b"RESERVED" => {
                            let stamp = parse_stamp(reply.body);
                            e2e.saturating_record(now.saturating_sub(stamp).max(1));
                            ids[n] = reply.number;
                            n += 1;
                        }
                        b"DELETED" => {}
                        _ => errors += 1,
                    }
                }
                for &id in &ids[..n] {
                    w.out.extend_from_slice(b"delete ");
                    push_u64(&mut w.out, id);
                    w.out.extend_from_slice(b"\r\nreserve\r\n");
                }
                reserved += n as u64;
                if n < ids.len() {
                    break;
                }
            }
            w.flush()?;
        }
        Ok(reserved >= o.jobs)
    })?;
    drop(holder);
    Ok(Report { ops: reserved, elapsed: start.elapsed(), latency, e2e: Some(e2e), errors, truncated })
}

fn parse_stamp(body: &[u8]) -> u64 {
    body.iter().take(STAMP_BYTES).fold(0, |v, &b| {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => 0,
        };
        (v << 4) | u64::from(d)
    })
}
