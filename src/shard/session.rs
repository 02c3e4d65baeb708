//! One connection's protocol state: where it is in the byte stream (a
//! command line, a put body, bytes to throw away), whether it is blocked in
//! reserve, and the replies it is owed.
//!
//! # Framing rules
//! * A command line ends at the first CRLF. A bare `\r` or `\n` inside a
//!   line is an ordinary byte (it will fail the command's own checks).
//! * A line may be at most [`LINE_BYTES_MAX`] bytes, CRLF included. A longer
//!   one is thrown away up to its CRLF and earns one BAD_FORMAT; whatever
//!   follows the CRLF is the next command. (beanstalkd reads in fixed
//!   224-byte chunks and can lose the following command or stall on a stray
//!   `\r`; we do not. See docs/COMPAT.md.)
//! * A put body is exactly `size + 2` bytes, then the next command starts.
//! * After JOB_TOO_BIG (or OUT_OF_MEMORY) on a put line, exactly `size + 2`
//!   bytes are thrown away before the reply is sent.

use memchr::memchr_iter;

use crate::engine::{BodyBuilder, ClientId, Nanos};
use crate::protocol::LINE_BYTES_MAX;
use crate::protocol::output::Output;
use crate::shard::{COMMANDS_PER_TURN_MAX, OUTPUT_BYTES_HIGH, OUTPUT_TEXT_BYTES_HIGH};

/// A put line accepted, its body still arriving.
pub struct PendingPut {
    pub id: u64,
    pub created_at: Nanos,
    pub pri: u32,
    pub delay_s: u32,
    pub ttr_s: u32,
    /// The body; lent out (`None`) while a receive writes straight into it.
    pub body: Option<BodyBuilder>,
    /// The two bytes after the body, which must be CRLF.
    pub trailer: [u8; 2],
    pub trailer_len: usize,
}

impl PendingPut {
    /// Takes body bytes, then the trailer; returns how many it used.
    pub fn fill(&mut self, input: &[u8]) -> usize {
        let Some(body) = self.body.as_mut() else {
            return 0;
        };
        let mut used = body.fill(input);
        while used < input.len() && body.is_full() && self.trailer_len < 2 {
            self.trailer[self.trailer_len] = input[used];
            self.trailer_len += 1;
            used += 1;
        }
        used
    }

    pub fn is_complete(&self) -> bool {
        self.body.as_ref().is_some_and(BodyBuilder::is_full) && self.trailer_len == 2
    }
}

/// Received bytes not processed yet. They are consumed from the front
/// without moving the rest: a connection that carries input over many turns
/// (see `shard::COMMANDS_PER_TURN_MAX`) uses a little of it each turn, and
/// moving what is left every time cost more than running the commands (two
/// thirds of the server's time with 20 connections flooding puts). The
/// consumed front is dropped when new bytes are appended and it is at least
/// half of the buffer, so appending stays amortized O(1).
#[derive(Default)]
pub struct Pending {
    bytes: Vec<u8>,
    /// Bytes at the front already consumed.
    start: usize,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.start == self.bytes.len()
    }

    pub fn len(&self) -> usize {
        self.bytes.len() - self.start
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[self.start..]
    }

    pub fn extend(&mut self, data: &[u8]) {
        if self.start > 0 && self.start >= self.bytes.len() / 2 {
            self.bytes.drain(..self.start);
            self.start = 0;
        }
        self.bytes.extend_from_slice(data);
    }

    /// Drops the first `n` unconsumed bytes. Once all are consumed the
    /// buffer is kept for reuse, unless it grew beyond `keep_bytes_max`.
    pub fn consume(&mut self, n: usize, keep_bytes_max: usize) {
        self.start += n;
        debug_assert!(self.start <= self.bytes.len());
        if self.is_empty() {
            self.start = 0;
            self.bytes.clear();
            if self.bytes.capacity() > keep_bytes_max {
                self.bytes = Vec::new();
            }
        }
    }
}

/// What a session expects next.
///
/// A put is pending on every connection of a busy producer: keeping it inline
/// saves an allocation and a free per put (the profile of 16-byte puts at depth
/// 32 showed the box's free at 6% of the server's time).
pub enum Mode {
    /// Expecting a command line.
    Line,
    /// Inside an overlong line: discard through its CRLF, then BAD_FORMAT.
    SkipLine,
    /// Receiving a put body.
    Body(PendingPut),
    /// Throwing away `remaining` bytes, then sending `reply`.
    Discard { remaining: u64, reply: &'static [u8] },
}

pub struct Session {
    /// The engine's client, until the connection is closed.
    pub client: Option<ClientId>,
    pub mode: Mode,
    /// Received bytes not processed yet: a partial command line, or
    /// commands pipelined behind a blocked reserve.
    pub pending: Pending,
    pub out: Output,
    /// Reply bytes handed to the network and not yet reported sent.
    pub in_flight: usize,
    /// The part of `in_flight` in text buffers.
    pub in_flight_text: usize,
    /// Commands were left in `pending` because the replies owed reached
    /// a high mark ([`Session::over_high_mark`]); they run once those are
    /// sent.
    pub stalled: bool,
    /// Blocked in reserve: no further command runs until it is answered.
    pub blocked: bool,
    /// The peer will send nothing more.
    pub eof: bool,
    /// No more commands will run; the connection closes once `out` is
    /// written.
    pub closing: bool,
    /// Writing failed; output is discarded.
    pub dead: bool,
    /// Listed in the shard's dirty list.
    pub dirty: bool,
    /// Listed among the sessions with replies held for the log.
    pub log_fenced: bool,
    /// Listed in the shard's carried list: complete commands are left in
    /// `pending` because this turn's budget is spent.
    pub carried: bool,
    /// The turn `turn_commands` counts for, and the commands run in it.
    pub turn: u64,
    pub turn_commands: u32,
    /// A label for log lines (the socket's file descriptor).
    pub label: i32,
}

impl Session {
    pub fn new(client: ClientId, label: i32) -> Session {
        Session {
            client: Some(client),
            mode: Mode::Line,
            pending: Pending::default(),
            out: Output::default(),
            in_flight: 0,
            in_flight_text: 0,
            stalled: false,
            blocked: false,
            eof: false,
            closing: false,
            dead: false,
            dirty: false,
            log_fenced: false,
            carried: false,
            turn: 0,
            turn_commands: 0,
            label,
        }
    }

    /// Whether commands may run now.
    pub fn runnable(&self) -> bool {
        !self.blocked && !self.closing
    }

    /// Takes one command from the budget of turn `turn`; false when this
    /// turn's [`COMMANDS_PER_TURN_MAX`] are spent.
    pub fn take_command_budget(&mut self, turn: u64) -> bool {
        if self.turn != turn {
            self.turn = turn;
            self.turn_commands = 0;
        }
        if self.turn_commands >= COMMANDS_PER_TURN_MAX {
            return false;
        }
        self.turn_commands += 1;
        true
    }

    /// Whether the replies owed (waiting here or on their way out) are
    /// enough that no further command should run nor input be read.
    pub fn over_high_mark(&self) -> bool {
        self.out.len() + self.in_flight >= OUTPUT_BYTES_HIGH
            || self.out.text_len() + self.in_flight_text >= OUTPUT_TEXT_BYTES_HIGH
    }
}

/// The result of looking for a command line at the start of `input`.
#[derive(Debug, PartialEq, Eq)]
pub enum LineScan {
    /// A line of `len` bytes, followed by CRLF.
    Line(usize),
    /// No complete line yet, and it may still fit.
    Incomplete,
    /// The line is longer than [`LINE_BYTES_MAX`].
    Overlong,
}

/// Finds the first CRLF within the first [`LINE_BYTES_MAX`] bytes.
pub fn scan_line(input: &[u8]) -> LineScan {
    let window = &input[..input.len().min(LINE_BYTES_MAX)];
    if let Some(len) = find_crlf(window) {
        return LineScan::Line(len);
    }
    if input.len() >= LINE_BYTES_MAX { LineScan::Overlong } else { LineScan::Incomplete }
}

/// The offset of the first CRLF in `input`.
pub fn find_crlf(input: &[u8]) -> Option<usize> {
    memchr_iter(b'\n', input).find(|&i| i > 0 && input[i - 1] == b'\r').map(|i| i - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_input_is_consumed_from_the_front_in_order() {
        let mut p = Pending::default();
        p.extend(b"abcdef");
        p.consume(2, 1024);
        assert_eq!((p.as_slice(), p.len(), p.is_empty()), (&b"cdef"[..], 4, false));
        // Less than half consumed: appending keeps the front as it is.
        p.extend(b"gh");
        assert_eq!(p.as_slice(), b"cdefgh");
        p.consume(4, 1024);
        // Half or more consumed: appending drops the consumed front.
        p.extend(b"ij");
        assert_eq!((p.as_slice(), p.start), (&b"ghij"[..], 0));
        p.consume(4, 1024);
        assert!(p.is_empty());
        assert!(p.bytes.capacity() > 0, "a small buffer is kept");
        p.extend(&[b'x'; 2048]);
        p.consume(2048, 1024);
        assert_eq!(p.bytes.capacity(), 0, "a large one is not");
    }

    #[test]
    fn line_scanning() {
        assert_eq!(scan_line(b"use a\r\nmore"), LineScan::Line(5));
        assert_eq!(scan_line(b"use a\rb\r\n"), LineScan::Line(7));
        assert_eq!(scan_line(b"use a\nb\r\n"), LineScan::Line(7));
        assert_eq!(scan_line(b"use a\r"), LineScan::Incomplete);
        assert_eq!(scan_line(b""), LineScan::Incomplete);
        let longest = [vec![b'x'; 222], b"\r\n".to_vec()].concat();
        assert_eq!(scan_line(&longest), LineScan::Line(222));
        let too_long = [vec![b'x'; 223], b"\r\n".to_vec()].concat();
        assert_eq!(scan_line(&too_long), LineScan::Overlong);
        assert_eq!(scan_line(&[b'x'; 223]), LineScan::Incomplete);
        assert_eq!(scan_line(&[b'x'; 224]), LineScan::Overlong);
    }
}
