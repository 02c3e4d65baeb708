//! One connection's two tasks.
//!
//! The *reader* owns the only read in flight: it reads, feeds the bytes to
//! the shard, and lets the shard's dirty list wake the writers that now have
//! something to send (its own and those of waiters it served). It stops
//! reading while the shard says too much is buffered, and ends on `quit`,
//! end of stream or error.
//!
//! The *writer* takes everything the session owes and writes it in one
//! vectored write, again and again, until the session is closed and
//! drained or a write fails. A failed write shuts the socket down, which
//! completes the reader's read; neither task ever abandons an operation.
//!
//! The reader closes the connection: once the writer has finished, it
//! removes the session and drops its handle; the socket is closed when the
//! last handle goes.

use std::cell::Cell;
use std::rc::Rc;

use tokio::sync::Notify;

use super::Core;
use super::stream::{OutBuf, Stream};
use crate::protocol::output::Segment;
use crate::shard::{ConnId, ReadGate};

/// A read buffer starts at this size...
const READ_BYTES_MIN: usize = 8 * 1024;
/// ...doubles while reads fill it, up to this size...
const READ_BYTES_MAX: usize = 256 * 1024;

pub struct ConnIo {
    pub stream: Stream,
    /// New output, or the session closed.
    pub write_wake: Notify,
    /// The session may accept input again.
    pub read_wake: Notify,
    writer_done: Cell<bool>,
    done_wake: Notify,
}

impl ConnIo {
    pub fn new(stream: Stream) -> ConnIo {
        ConnIo {
            stream,
            write_wake: Notify::new(),
            read_wake: Notify::new(),
            writer_done: Cell::new(false),
            done_wake: Notify::new(),
        }
    }
}

pub async fn reader(core: Rc<Core>, conn: ConnId, io: Rc<ConnIo>) {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_BYTES_MIN);
    loop {
        let gate = core.shard.borrow().read_gate(conn);
        match gate {
            ReadGate::Stop => break,
            ReadGate::Wait => {
                io.read_wake.notified().await;
                continue;
            }
            ReadGate::Read => {}
        }
        buf.clear();
        let (res, back) = io.stream.read(buf).await;
        buf = back;
        let now = core.clock.now();
        let mut shard = core.shard.borrow_mut();
        match res {
            Ok(0) => shard.eof(conn, now),
            Ok(n) => shard.input(conn, &buf[..n], now),
            Err(_) => shard.abort(conn, now),
        }
        core.publish(&mut shard);
        drop(shard);
        buf = resize_read_buffer(buf);
    }
    // Let the writer drain what is owed, then close.
    io.write_wake.notify_one();
    while !io.writer_done.get() {
        io.done_wake.notified().await;
    }
    if core.verbosity > 0 {
        println!("close {}", io.stream.raw_fd());
    }
    core.shard.borrow_mut().remove(conn);
    core.unregister(conn);
}

/// Grows the buffer while reads fill it (large bodies arrive in fewer
/// reads) and shrinks it back when they stop (idle connections hold one).
fn resize_read_buffer(mut buf: Vec<u8>) -> Vec<u8> {
    let cap = buf.capacity();
    if buf.len() == cap && cap < READ_BYTES_MAX {
        buf.clear();
        buf.reserve_exact(cap * 2);
    } else if cap > READ_BYTES_MIN && buf.len() < cap / 8 {
        return Vec::with_capacity(READ_BYTES_MIN);
    }
    buf
}

pub async fn writer(core: Rc<Core>, conn: ConnId, io: Rc<ConnIo>) {
    let mut segments: Vec<Segment> = Vec::new();
    loop {
        let finished = {
            let mut shard = core.shard.borrow_mut();
            shard.output(conn).take(&mut segments);
            shard.finished(conn)
        };
        if segments.is_empty() {
            if finished {
                break;
            }
            io.write_wake.notified().await;
            continue;
        }
        let bufs: Vec<OutBuf> = segments.drain(..).map(OutBuf::new).collect();
        let (res, written) = io.stream.write_all(bufs).await;
        let mut shard = core.shard.borrow_mut();
        if res.is_err() {
            shard.abort(conn, core.clock.now());
            core.publish(&mut shard);
            io.stream.shutdown();
            break;
        }
        let output = shard.output(conn);
        for buf in written {
            if let Segment::Text(text) = buf.into_segment() {
                output.recycle(text);
            }
        }
        // Output drained: a reader held back by it may go on.
        io.read_wake.notify_one();
    }
    io.writer_done.set(true);
    io.done_wake.notify_one();
}
