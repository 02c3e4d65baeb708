//! One connection's protocol state: where it is in the byte stream (a
//! command line, a put body, bytes to throw away), whether it is blocked in
//! reserve, the tubes it uses and watches, and the replies it is owed.
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

use std::borrow::Cow;

use memchr::memchr_iter;
use smallvec::SmallVec;

use crate::engine::{BodyBuilder, ClientId, DEFAULT_TUBE, Nanos};
use crate::memory::{self, OutOfMemory};
use crate::protocol::LINE_BYTES_MAX;
use crate::protocol::output::Output;
use crate::shard::{
    COMMANDS_PER_TURN_MAX, OUTPUT_BYTES_HIGH, OUTPUT_TEXT_BYTES_HIGH, OUTPUT_TEXT_FLOOR_BYTES, PENDING_KEPT_BYTES_MAX,
    REPLY_ROOM_BYTES,
};

/// Received bytes not processed yet, consumed from the front.
///
/// Commands held back behind a blocked reserve or a high mark run a few at
/// a time as the way clears; moving every byte after them to the front
/// each time would cost the size of the backlog per few commands. The
/// consumed front is dropped only once it is at least as large as what is
/// left, so each byte is moved at most once on average, and the buffer
/// shrinks with its contents.
#[derive(Default)]
pub struct Input {
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed.
    start: usize,
}

impl Input {
    pub fn is_empty(&self) -> bool {
        self.start == self.buf.len()
    }

    pub fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The bytes not consumed yet.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Appends received bytes; refuses, keeping what it had, when the
    /// memory for them cannot be had.
    pub fn extend_from_slice(&mut self, data: &[u8]) -> Result<(), OutOfMemory> {
        if self.buf.len() + data.len() > self.buf.capacity() {
            // The consumed front goes first, then the buffer grows by half
            // rather than doubling: a backlog is held, not built up.
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let need = self.buf.len() + data.len();
            if need > self.buf.capacity() {
                let more = need.max(self.buf.capacity() + self.buf.capacity() / 2) - self.buf.len();
                let buf = &mut self.buf;
                memory::try_or_spend(|| memory::try_reserve_exact(buf, more))?;
            }
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// Memory the buffer takes.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Drops the first `n` bytes not consumed yet.
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.start += n;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            // A buffer a burst made large is freed; a small one is kept
            // for the partial lines of everyday traffic.
            if self.buf.capacity() > PENDING_KEPT_BYTES_MAX {
                self.buf = Vec::new();
            }
        } else if self.start >= self.len() {
            self.buf.drain(..self.start);
            self.start = 0;
            if self.buf.capacity() > PENDING_KEPT_BYTES_MAX && self.buf.capacity() > 4 * self.buf.len() {
                self.buf.shrink_to(2 * self.buf.len());
            }
        }
    }
}

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

/// A tube's name as a session keeps it: `default`, which every connection
/// starts with, costs no allocation.
pub type TubeName = Cow<'static, str>;

/// `name` as a [`TubeName`], or `OutOfMemory` when its copy cannot be had.
pub fn tube_name(name: &str) -> Result<TubeName, OutOfMemory> {
    if name == DEFAULT_TUBE {
        return Ok(Cow::Borrowed(DEFAULT_TUBE));
    }
    let mut owned = String::new();
    memory::attempt(|| owned.try_reserve_exact(name.len()))?;
    owned.push_str(name);
    Ok(Cow::Owned(owned))
}

pub struct Session {
    /// The engine's client, until the connection is closed.
    pub client: Option<ClientId>,
    /// The tube `put` and the peeks go to, as the connection named it: what
    /// routes those commands to the tube's shard.
    pub used: TubeName,
    /// The watched tubes in `list-tubes-watched` order: appended at the
    /// end, and a removal moves the last entry into the gap, as beanstalkd
    /// does. Which shards a reserve asks follows from it.
    pub watched: SmallVec<[TubeName; 1]>,
    pub mode: Mode,
    /// Received bytes not processed yet: a partial command line, or
    /// commands pipelined behind a blocked reserve or a high mark.
    pub pending: Input,
    pub out: Output,
    /// Reply bytes handed to the network and not yet reported sent.
    pub in_flight: usize,
    /// The part of `in_flight` in text buffers.
    pub in_flight_text: usize,
    /// This session's part of the shard's count of reply text held, as
    /// last counted.
    pub text_counted: usize,
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
    /// Listed in the shard's runnable queue, to run its buffered input.
    pub queued: bool,
    /// The turn `turn_commands` counts for, and the commands run in it.
    pub turn: u64,
    pub turn_commands: u32,
    /// A label for log lines (the socket's file descriptor).
    pub label: i32,
    /// The connection has sent a put (`current-producers`).
    pub producer: bool,
    /// The connection has reserved, or tried to (`current-workers`).
    pub worker: bool,
    /// With several shards: a command's reply is owed by a shard, and no
    /// further command runs until it has come.
    pub awaiting: bool,
    /// With several shards: the connection's part in them.
    pub far: Option<Box<crate::shard::spread::Far>>,
}

impl Session {
    pub fn new(client: ClientId, label: i32) -> Session {
        Session {
            client: Some(client),
            used: Cow::Borrowed(DEFAULT_TUBE),
            watched: smallvec::smallvec![Cow::Borrowed(DEFAULT_TUBE)],
            mode: Mode::Line,
            pending: Input::default(),
            out: Output::default(),
            in_flight: 0,
            in_flight_text: 0,
            text_counted: 0,
            stalled: false,
            blocked: false,
            eof: false,
            closing: false,
            dead: false,
            dirty: false,
            log_fenced: false,
            carried: false,
            queued: false,
            turn: 0,
            turn_commands: 0,
            label,
            producer: false,
            worker: false,
            awaiting: false,
            far: None,
        }
    }

    /// Whether commands may run now.
    pub fn runnable(&self) -> bool {
        !self.blocked && !self.closing && !self.awaiting
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

    /// Reply text this session holds, waiting and in flight.
    pub fn text_held(&self) -> usize {
        self.out.text_len() + self.in_flight_text
    }

    /// Whether the replies owed (waiting here or on their way out) are
    /// enough that no further command should run nor input be read, when
    /// `budget_left` bytes of the shard's reply text budget are left to
    /// this session (none while memory is short).
    pub fn over_high_mark(&self, budget_left: usize) -> bool {
        let text = self.text_held();
        self.out.len() + self.in_flight >= OUTPUT_BYTES_HIGH
            || text >= OUTPUT_TEXT_BYTES_HIGH
            || (text >= OUTPUT_TEXT_FLOOR_BYTES && text >= budget_left)
    }

    /// Makes room for one reply, fallibly, while memory is short (see
    /// `REPLY_ROOM_BYTES`); outside a shortage there is nothing to do.
    pub fn make_room(&mut self) -> Result<(), OutOfMemory> {
        if memory::is_short() {
            let out = &mut self.out;
            memory::try_or_spend(|| out.try_reserve(REPLY_ROOM_BYTES))
        } else {
            Ok(())
        }
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
    fn input_is_consumed_from_the_front_and_shrinks_with_it() {
        let mut input = Input::default();
        let backlog: Vec<u8> = (0..=255u8).cycle().take(256 * 1024).collect();
        input.extend_from_slice(&backlog).unwrap();
        let mut taken = 0;
        // A few bytes at a time, as held-back commands run.
        while input.len() > 1000 {
            assert_eq!(input.bytes()[0], backlog[taken]);
            input.consume(100);
            taken += 100;
            assert!(input.capacity() <= (4 * input.len()).max(256 * 1024), "{} for {}", input.capacity(), input.len());
        }
        assert_eq!(input.bytes(), &backlog[taken..]);
        assert!(input.capacity() <= 4 * PENDING_KEPT_BYTES_MAX, "{}", input.capacity());
        input.consume(input.len());
        assert!(input.is_empty());
        assert!(input.capacity() <= PENDING_KEPT_BYTES_MAX, "{}", input.capacity());
        input.extend_from_slice(&backlog).unwrap();
        input.consume(backlog.len());
        assert_eq!(input.capacity(), 0, "a large buffer is freed once empty");
        input.extend_from_slice(b"put 0 0 1").unwrap();
        input.consume(4);
        input.extend_from_slice(b"0 5\r\n").unwrap();
        assert_eq!(input.bytes(), b"0 0 10 5\r\n");
        input.consume(input.len());
        assert!(input.capacity() > 0, "a small buffer is kept");
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
