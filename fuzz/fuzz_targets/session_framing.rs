//! Fuzz target: the session framing of a `Shard` (src/shard), fed arbitrary
//! byte streams over several connections, cut at arbitrary points, with
//! arbitrary clock advances, half-closes, failed receives and sends, and
//! sends completing in any order.
//!
//! Two shards run the same script with the same clock. The *reference*
//! shard gets every delivery in one piece; the *split* shard gets it cut at
//! the points the input names, and, when the input asks, takes large put
//! bodies by direct receive (`lend_body` / `return_body`) as the network
//! does. (Except where cutting may rightly change the replies: a timer
//! falling due in the middle of the delivery, or another connection with
//! commands pipelined behind a blocked reserve; see [`Run::may_cut`].)
//! After every step:
//!
//! * neither shard panicked, and `engine().check_invariants(now)` holds
//!   (on the split shard; on the reference at the end);
//! * both shards agree on everything the network can see of each
//!   connection (read gate, finished, dead, bytes owed, direct-body wish,
//!   blocked with input behind), on the next deadline and on the engine's
//!   counters;
//! * every send takes the same bytes from both shards, and those bytes are
//!   a whole number of well-formed replies (reply words, numbers, the byte
//!   counts of RESERVED / FOUND / OK and the body behind them).
//!
//! At the end every connection is half-closed and its sends are completed
//! until it is finished: no connection may be left stuck.
//!
//! # Input format
//! The first byte picks the `-z` limit from [`JOB_LIMITS`]. Then steps, each
//! a tag byte (bits 0-2 the kind, bits 3-5 the connection slot, bit 6 a
//! flag) and its payload; an input that ends inside a step drops that step.
//!
//! | kind | step | payload | flag (bit 6) |
//! |---|---|---|---|
//! | 0 | deliver bytes | length (1 byte; 255 means a u16 LE follows), the bytes, cuts | take put bodies by direct receive |
//! | 1 | deliver a run of one byte | the byte, a u16 LE count, cuts | as kind 0 |
//! | 2 | advance the clock and tick | u16 LE | the count is seconds, not milliseconds |
//! | 3 | half-close (end of input) | | |
//! | 4 | a receive failed (abort) | | a send failed instead (only with one in flight) |
//! | 5 | start a send | | |
//! | 6 | the send in flight completed | | |
//! | 7 | open the slot's connection | | SIGUSR1 (drain) instead |
//!
//! Cuts: a count byte (mod 8), then that many u16 LE offsets (mod the
//! length + 1). Connection slot 0 is open when the script starts. A step on
//! a slot whose connection is not open, or that the network could not take
//! (bytes after a half-close, a second send in flight), is skipped.
//! `fuzz/seeds-from-corpus` writes inputs in this format from the
//! conformance corpus; keep the two in step. Set `RUNNERBEAN_FUZZ_TRACE=1`
//! to have each step printed as it runs (to turn a crash into a unit test).

#![no_main]

use libfuzzer_sys::fuzz_target;
use runnerbean::engine::{EngineConfig, NANOS_PER_SEC, Nanos};
use runnerbean::protocol::command::valid_tube_name;
use runnerbean::protocol::output::Segment;
use runnerbean::protocol::yaml::CpuTime;
use runnerbean::shard::{ConnId, ReadGate, ServerInfo, Shard};

/// Connection slots a script can use (three tag bits).
const SLOTS: usize = 8;

/// The `-z` limits a script can pick. The largest is far below the
/// server's 1 GiB: an input is at most a few hundred KB, so a larger body
/// could never complete, and libFuzzer counts an allocation over its
/// memory limit as a crash.
const JOB_LIMITS: [u64; 8] = [65_535, 0, 5, 10, 100, 70_000, 1 << 20, 65_535];

/// Cut points per delivery, at most (three bits of the count byte).
const CUTS_MAX: u8 = 7;

fuzz_target!(|data: &[u8]| {
    let Some((&limit, steps)) = data.split_first() else { return };
    let mut run = Run::new(JOB_LIMITS[usize::from(limit % 8)]);
    let mut input = Reader(steps);
    let trace = std::env::var_os("RUNNERBEAN_FUZZ_TRACE").is_some();
    while let Some(step) = Step::read(&mut input) {
        if trace {
            eprintln!("{step:?}");
        }
        if run.step(step) {
            run.check();
        }
    }
    run.drain();
});

#[derive(Debug)]
enum Step<'a> {
    Deliver { slot: usize, bytes: Bytes<'a>, cuts: Vec<usize>, direct: bool },
    Advance { nanos: Nanos },
    Eof { slot: usize },
    Abort { slot: usize, on_send: bool },
    StartSend { slot: usize },
    Sent { slot: usize },
    Open { slot: usize },
    Drain,
}

enum Bytes<'a> {
    Slice(&'a [u8]),
    Run(u8, usize),
}

impl std::fmt::Debug for Bytes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Bytes::Slice(s) => write!(f, "{:?}", String::from_utf8_lossy(s)),
            Bytes::Run(b, n) => write!(f, "{n} x {:?}", b as char),
        }
    }
}

impl Bytes<'_> {
    fn to_vec(&self) -> Vec<u8> {
        match *self {
            Bytes::Slice(s) => s.to_vec(),
            Bytes::Run(b, n) => vec![b; n],
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    /// Sorted cut offsets in `0..=len`.
    fn cuts(&mut self, len: usize) -> Option<Vec<usize>> {
        let count = self.u8()? % (CUTS_MAX + 1);
        let mut cuts = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            cuts.push(usize::from(self.u16()?) % (len + 1));
        }
        cuts.sort_unstable();
        Some(cuts)
    }
}

impl<'a> Step<'a> {
    fn read(r: &mut Reader<'a>) -> Option<Step<'a>> {
        let tag = r.u8()?;
        let slot = usize::from(tag >> 3) % SLOTS;
        let flag = tag & 0x40 != 0;
        Some(match tag & 7 {
            0 => {
                let len = match r.u8()? {
                    255 => usize::from(r.u16()?),
                    n => usize::from(n),
                };
                let bytes = r.take(len)?;
                Step::Deliver { slot, bytes: Bytes::Slice(bytes), cuts: r.cuts(len)?, direct: flag }
            }
            1 => {
                let byte = r.u8()?;
                let len = usize::from(r.u16()?);
                Step::Deliver { slot, bytes: Bytes::Run(byte, len), cuts: r.cuts(len)?, direct: flag }
            }
            2 => {
                let unit = if flag { NANOS_PER_SEC } else { 1_000_000 };
                Step::Advance { nanos: u64::from(r.u16()?) * unit }
            }
            3 => Step::Eof { slot },
            4 => Step::Abort { slot, on_send: flag },
            5 => Step::StartSend { slot },
            6 => Step::Sent { slot },
            _ if flag => Step::Drain,
            _ => Step::Open { slot },
        })
    }
}

/// What the harness, playing the network, knows of one connection slot.
#[derive(Clone, Copy, Default)]
struct Slot {
    /// The connection on (reference, split); `None` when the slot is free.
    conns: Option<(ConnId, ConnId)>,
    /// The peer sent its last byte (or its receive failed): no more input.
    peer_done: bool,
    /// A send was started and has not completed.
    in_flight: bool,
}

struct Run {
    reference: Shard,
    split: Shard,
    slots: [Slot; SLOTS],
    now: Nanos,
    /// Every byte delivered so far, a bound on the commands run.
    bytes_delivered: u64,
}

fn server_info(max_job_size: u64) -> ServerInfo {
    ServerInfo {
        max_job_size,
        pid: 1,
        instance_id: "0123456789abcdef".into(),
        hostname: "fuzz".into(),
        os: "#1".into(),
        platform: "x86_64".into(),
        binlog_max_size: 10_485_760,
        extra: Vec::new(),
        // Fixed, so `stats` replies are the same on both shards.
        cpu_times: || (CpuTime::default(), CpuTime::default()),
        verbosity: 0,
        started_at: 0,
        strict: false,
    }
}

impl Run {
    fn new(max_job_size: u64) -> Run {
        let mut run = Run {
            reference: Shard::new(EngineConfig::default(), server_info(max_job_size)),
            split: Shard::new(EngineConfig::default(), server_info(max_job_size)),
            slots: [Slot::default(); SLOTS],
            now: 0,
            bytes_delivered: 0,
        };
        run.open(0);
        run
    }

    /// Whether a delivery on `slot` (already counted in `bytes_delivered`)
    /// may reach the split shard in pieces without changing what is
    /// correct. Each piece is an entry point of its own, which first runs
    /// the timers due and ends by running the commands of connections its
    /// commands answered; in one piece both happen once, at the end. So
    /// the replies may rightly differ when
    ///
    /// * a timer falls due while the delivery's commands run (each command
    ///   runs a nanosecond after the one before): the clock is at most
    ///   `now` plus one nanosecond per command, and every command takes at
    ///   least one byte, so a deadline beyond `now + bytes_delivered` is
    ///   safe; or
    /// * another connection is blocked in a reserve with commands behind
    ///   it, which an answer from this delivery would run in between.
    ///
    /// Then the delivery goes in one piece to both shards (rare: it takes a
    /// deadline within nanoseconds, or a pipelined waiter).
    fn may_cut(&self, slot: usize) -> bool {
        let horizon = self.now + self.bytes_delivered;
        if self.split.next_deadline().is_some_and(|at| at <= horizon) {
            return false;
        }
        self.slots.iter().enumerate().all(|(i, other)| match other.conns {
            Some((_, p)) if i != slot => !self.split.blocked_with_input(p),
            _ => true,
        })
    }

    fn open(&mut self, slot: usize) {
        let label = slot as i32;
        self.slots[slot] = Slot {
            conns: Some((
                self.reference.open(label).expect("memory for a connection"),
                self.split.open(label).expect("memory for a connection"),
            )),
            ..Slot::default()
        };
    }

    /// Runs one step; false when it was skipped (nothing reached the
    /// shards).
    /// Runs one step as one turn of the event loop: a fresh command budget
    /// for every connection, the step, then the turns the input carried
    /// over needs (as the loop runs them without waiting).
    fn step(&mut self, step: Step<'_>) -> bool {
        self.reference.begin_turn();
        self.split.begin_turn();
        let reached = self.step_in_turn(step);
        for shard in [&mut self.reference, &mut self.split] {
            while shard.has_carried() {
                shard.begin_turn();
                shard.run_carried(self.now);
            }
        }
        reached
    }

    fn step_in_turn(&mut self, step: Step<'_>) -> bool {
        let now = self.now;
        match step {
            Step::Advance { nanos } => {
                self.now += nanos;
                self.reference.tick(self.now);
                self.split.tick(self.now);
            }
            Step::Drain => {
                self.reference.set_draining();
                self.split.set_draining();
            }
            Step::Open { slot } => {
                if self.slots[slot].conns.is_some() {
                    return false;
                }
                self.open(slot);
            }
            Step::Deliver { slot, bytes, cuts, direct } => {
                let s = self.slots[slot];
                let Some((r, p)) = s.conns else { return false };
                if s.peer_done {
                    return false;
                }
                let bytes = bytes.to_vec();
                // The network never delivers nothing (a receive of 0 bytes
                // is the end of the stream).
                if bytes.is_empty() {
                    return false;
                }
                self.bytes_delivered += bytes.len() as u64;
                let cut = self.may_cut(slot);
                self.reference.input(r, &bytes, now);
                if !cut {
                    self.split.input(p, &bytes, now);
                    return true;
                }
                let mut start = 0;
                for end in cuts.into_iter().chain([bytes.len()]) {
                    if end > start {
                        deliver_piece(&mut self.split, p, &bytes[start..end], direct, now);
                        start = end;
                    }
                }
            }
            Step::Eof { slot } => {
                let s = &mut self.slots[slot];
                let Some((r, p)) = s.conns else { return false };
                if s.peer_done {
                    return false;
                }
                s.peer_done = true;
                self.reference.eof(r, now);
                self.split.eof(p, now);
            }
            Step::Abort { slot, on_send } => {
                let s = &mut self.slots[slot];
                let Some((r, p)) = s.conns else { return false };
                if on_send {
                    // As the network does when a send fails: abort, then
                    // report the send over to clear the bytes in flight.
                    if !s.in_flight {
                        return false;
                    }
                    s.in_flight = false;
                    for (shard, conn) in [(&mut self.reference, r), (&mut self.split, p)] {
                        shard.abort(conn, now);
                        shard.sent(conn, now);
                    }
                } else {
                    if s.peer_done {
                        return false;
                    }
                    s.peer_done = true;
                    self.reference.abort(r, now);
                    self.split.abort(p, now);
                }
            }
            Step::StartSend { slot } => return self.start_send(slot),
            Step::Sent { slot } => return self.complete_send(slot),
        }
        true
    }

    /// Starts a send when the network would: none in flight, something
    /// owed, the connection not dead. Checks both shards hand over the same
    /// bytes, and that they are whole replies.
    fn start_send(&mut self, slot: usize) -> bool {
        let s = &mut self.slots[slot];
        let Some((r, p)) = s.conns else { return false };
        if s.in_flight || self.reference.output(r).is_empty() || self.reference.is_dead(r) {
            return false;
        }
        s.in_flight = true;
        let sent_r = take_output(&mut self.reference, r);
        let sent_p = take_output(&mut self.split, p);
        assert!(sent_r == sent_p, "slot {slot}: the split stream got other replies:\n{}", diff(&sent_r, &sent_p));
        check_replies(&sent_r);
        true
    }

    fn complete_send(&mut self, slot: usize) -> bool {
        let s = &mut self.slots[slot];
        let Some((r, p)) = s.conns else { return false };
        if !s.in_flight {
            return false;
        }
        s.in_flight = false;
        self.reference.sent(r, self.now);
        self.split.sent(p, self.now);
        true
    }

    /// The invariants that hold between steps; then, as the network does,
    /// forgets connections that are finished with nothing in flight.
    fn check(&mut self) {
        // The invariant check walks every job for every tube, and is most
        // of the target's time: it runs on the split shard after every
        // step, and on the reference (which must be in the same state, as
        // the comparisons below check from the outside) at the end.
        self.split.engine().check_invariants(self.now);
        assert_eq!(self.reference.engine().stats(), self.split.engine().stats(), "engine counters");
        assert_eq!(self.reference.next_deadline(), self.split.next_deadline(), "next deadline");
        for slot in 0..SLOTS {
            let s = self.slots[slot];
            let Some((r, p)) = s.conns else { continue };
            let seen = |shard: &mut Shard, c: ConnId| {
                let owed = shard.output(c).len();
                (
                    shard.read_gate(c),
                    shard.finished(c),
                    shard.is_dead(c),
                    owed,
                    shard.wants_direct_body(c),
                    shard.blocked_with_input(c),
                )
            };
            let (ref_seen, split_seen) = (seen(&mut self.reference, r), seen(&mut self.split, p));
            assert_eq!(
                ref_seen, split_seen,
                "slot {slot}: (read gate, finished, dead, bytes owed, direct body, blocked with input)"
            );
            let (gate, finished, ..) = ref_seen;
            if finished && !s.in_flight {
                assert_eq!(gate, ReadGate::Stop, "slot {slot}: finished but still reading");
                self.reference.remove(r);
                self.split.remove(p);
                self.slots[slot].conns = None;
            }
        }
    }

    /// Ends every connection as a client going away would, completing
    /// sends until each is finished.
    fn drain(&mut self) {
        for slot in 0..SLOTS {
            if self.slots[slot].conns.is_none() {
                continue;
            }
            self.complete_send(slot);
            self.check();
            self.step(Step::Eof { slot });
            self.check();
            // Each send takes at least one reply, and a connection gets at
            // most one reply per command line (two bytes at least) and one
            // for its half-close: more sends than that is a loop.
            let sends_max = self.bytes_delivered / 2 + 2;
            let mut sends = 0;
            while self.slots[slot].conns.is_some() {
                let started = self.start_send(slot);
                assert!(started, "slot {slot}: stuck: not finished, and nothing to send");
                sends += 1;
                assert!(sends <= sends_max, "slot {slot}: still not finished after {sends} sends");
                self.complete_send(slot);
                self.check();
            }
        }
        self.reference.engine().check_invariants(self.now);
        assert_eq!(self.reference.engine().stats().connections, 0, "connections left after the drain");
    }
}

/// One receive's worth of bytes into the split shard, as the network would
/// deliver it: straight into the put body when the shard asks for that (and
/// the script allows it), through `input` otherwise.
fn deliver_piece(shard: &mut Shard, conn: ConnId, mut piece: &[u8], direct: bool, now: Nanos) {
    while direct && !piece.is_empty() && shard.read_gate(conn) == ReadGate::Read && shard.wants_direct_body(conn) {
        let Some(mut loan) = shard.lend_body(conn) else { break };
        let (spare, room) = loan.spare();
        let n = room.min(piece.len());
        // Safety: `spare` points at `room` writable bytes of the lent body,
        // which nothing else touches until it is returned; `n <= room`.
        unsafe {
            std::ptr::copy_nonoverlapping(piece.as_ptr(), spare, n);
            shard.return_body(conn, loan, n, now);
        }
        piece = &piece[n..];
    }
    if !piece.is_empty() {
        shard.input(conn, piece, now);
    }
}

/// Everything owed, as one send would take it; text buffers go back for
/// reuse as the network hands them back.
fn take_output(shard: &mut Shard, conn: ConnId) -> Vec<u8> {
    let mut segments = Vec::new();
    shard.start_send(conn, &mut segments);
    let mut bytes = Vec::with_capacity(segments.iter().map(|s| s.bytes().len()).sum());
    for segment in &segments {
        bytes.extend_from_slice(segment.bytes());
    }
    for segment in segments {
        if let Segment::Text(text) = segment {
            shard.output(conn).recycle(text);
        }
    }
    bytes
}

fn diff(a: &[u8], b: &[u8]) -> String {
    let at = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let from = at.saturating_sub(200);
    format!(
        "reference: {:?}\nsplit:     {:?}\n(first difference at byte {at})",
        String::from_utf8_lossy(&a[from..a.len().min(at + 200)]),
        String::from_utf8_lossy(&b[from..b.len().min(at + 200)])
    )
}

/// Checks that `bytes` is a whole number of well-formed replies.
fn check_replies(bytes: &[u8]) {
    let mut rest = bytes;
    while !rest.is_empty() {
        let end = rest.windows(2).position(|w| w == b"\r\n").unwrap_or_else(|| panic!("reply without CRLF: {rest:?}"));
        let line = std::str::from_utf8(&rest[..end]).unwrap_or_else(|_| panic!("reply line not UTF-8: {rest:?}"));
        rest = &rest[end + 2..];
        let words: Vec<&str> = line.split(' ').collect();
        let data = match (words[0], &words[1..]) {
            ("RESERVED" | "FOUND", [id, n]) => {
                number(id, line);
                Some(number(n, line))
            }
            ("OK", [n]) => Some(number(n, line)),
            ("INSERTED" | "WATCHING" | "KICKED" | "BURIED" | "CLEARED", [n]) => {
                number(n, line);
                None
            }
            ("USING", [name]) => {
                assert!(valid_tube_name(name.as_bytes()).is_some(), "USING a bad tube name: {line:?}");
                None
            }
            (
                "BAD_FORMAT" | "UNKNOWN_COMMAND" | "OUT_OF_MEMORY" | "INTERNAL_ERROR" | "DRAINING" | "EXPECTED_CRLF"
                | "JOB_TOO_BIG" | "NOT_FOUND" | "DEADLINE_SOON" | "TIMED_OUT" | "DELETED" | "RELEASED" | "BURIED"
                | "KICKED" | "TOUCHED" | "NOT_IGNORED" | "PAUSED",
                [],
            ) => None,
            _ => panic!("not a reply: {line:?}"),
        };
        if let Some(n) = data {
            let n = usize::try_from(n).expect("byte count fits");
            assert!(rest.len() >= n + 2, "{line:?}: {} bytes follow, not {n} and CRLF", rest.len());
            assert_eq!(&rest[n..n + 2], b"\r\n", "{line:?}: no CRLF after the data");
            if words[0] == "OK" {
                assert!(rest.starts_with(b"---\n"), "{line:?}: not a YAML document");
            }
            rest = &rest[n + 2..];
        }
    }
}

/// A decimal reply number as the server writes it: digits, no sign, no
/// leading zero.
fn number(text: &str, line: &str) -> u64 {
    let ok = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) && (text == "0" || !text.starts_with('0'));
    assert!(ok, "bad number {text:?} in {line:?}");
    text.parse().unwrap_or_else(|_| panic!("number {text:?} out of range in {line:?}"))
}
