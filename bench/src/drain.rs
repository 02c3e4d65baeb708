//! `drain`: connections reserve (`reserve-with-timeout 0`) and delete jobs
//! until the server reports an empty queue. One op is one job.

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use mio::Token;

use crate::conn::{Conn, EventLoop};
use crate::decimal::push_u64;
use crate::put::wait_for_reply;
use crate::{Opts, Report, histogram};

const RESERVE: &[u8] = b"reserve-with-timeout 0\r\n";

struct Worker {
    conn: Conn,
    /// Send times of the reserves in flight.
    sent: VecDeque<u64>,
    deletes_in_flight: u64,
    /// The server said TIMED_OUT: the queue was empty.
    empty: bool,
}

impl Worker {
    fn finished(&self) -> bool {
        self.empty && self.sent.is_empty() && self.deletes_in_flight == 0
    }
}

pub fn run(o: &Opts, begin: &mut dyn FnMut()) -> io::Result<Report> {
    let mut el = EventLoop::new()?;
    let mut workers = Vec::with_capacity(o.conns);
    let watch = format!("watch {}\r\n", o.tube);
    for i in 0..o.conns {
        let mut conn = Conn::connect(o.addr, el.registry(), Token(i))?;
        conn.out.extend_from_slice(watch.as_bytes());
        if o.tube != "default" {
            conn.out.extend_from_slice(b"ignore default\r\n");
        }
        conn.flush()?;
        workers.push(Worker { conn, sent: VecDeque::with_capacity(o.depth), deletes_in_flight: 0, empty: false });
    }
    for w in workers.iter_mut() {
        wait_for_reply(&mut w.conn, b"WATCHING")?;
        if o.tube != "default" {
            wait_for_reply(&mut w.conn, b"WATCHING")?;
        }
    }

    let mut latency = histogram();
    let mut jobs = 0u64;
    let mut errors = 0u64;
    let mut finished = 0usize;
    let worker_count = workers.len();
    begin();
    let start = Instant::now();
    for w in workers.iter_mut() {
        top_up(w, o.depth, 0);
        w.conn.flush()?;
    }
    let truncated = el.run(start, Duration::from_secs_f64(o.max_secs), false, |i, now| {
        let Some(i) = i else { return Ok(false) };
        let w = &mut workers[i];
        if w.finished() {
            return Ok(false);
        }
        w.conn.fill()?;
        let mut deletes: [u64; 64] = [0; 64];
        loop {
            let mut n = 0;
            while n < deletes.len() {
                let Some(reply) = w.conn.next_reply() else { break };
                match reply.word {
                    b"RESERVED" => {
                        let sent = w.sent.pop_front().unwrap_or(now);
                        latency.saturating_record(now.saturating_sub(sent).max(1));
                        deletes[n] = reply.number;
                        n += 1;
                    }
                    b"TIMED_OUT" => {
                        w.sent.pop_front();
                        w.empty = true;
                    }
                    b"DELETED" => {
                        w.deletes_in_flight -= 1;
                        jobs += 1;
                    }
                    _ => errors += 1,
                }
            }
            for &id in &deletes[..n] {
                w.conn.out.extend_from_slice(b"delete ");
                push_u64(&mut w.conn.out, id);
                w.conn.out.extend_from_slice(b"\r\n");
            }
            w.deletes_in_flight += n as u64;
            if n < deletes.len() {
                break;
            }
        }
        top_up(w, o.depth, now);
        w.conn.flush()?;
        if w.finished() {
            finished += 1;
        }
        Ok(finished == worker_count)
    })?;
    Ok(Report { ops: jobs, elapsed: start.elapsed(), latency, e2e: None, errors, truncated })
}

fn top_up(w: &mut Worker, depth: usize, now: u64) {
    if w.empty {
        return;
    }
    let k = depth - w.sent.len();
    for _ in 0..k {
        w.conn.out.extend_from_slice(RESERVE);
        w.sent.push_back(now);
    }
}
