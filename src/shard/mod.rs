//! One core's share of the server: its engine shard and the protocol
//! sessions of the connections it accepted, as one state machine that takes
//! received bytes and the time, and leaves reply bytes in each session's
//! [`Output`].
//!
//! It performs no I/O: the network layer feeds it ([`Shard::input`],
//! [`Shard::eof`], [`Shard::tick`]), then writes out whatever the sessions
//! listed by [`Shard::take_dirty`] owe. Because of that, whole conversations
//! (pipelining, blocked reserves, timeouts) can be tested without sockets
//! and with a hand-driven clock.
//!
//! # Order of work
//! Every entry point first lets the engine do what is due at `now`, then
//! runs commands, then *settles*: answers owed to waiting clients are
//! written to their sessions, and those sessions, no longer blocked, run
//! the commands they had pipelined behind the reserve, until nothing moves.
//! Replies therefore leave each connection in command order.

pub mod route;
pub mod session;

use std::collections::VecDeque;

use slab::Slab;

use crate::engine::{BodyBuilder, ClientId, Engine, EngineConfig, Nanos, Op, PutOutcome, ReserveOutcome, Wake};
use crate::protocol::command::{self, Command, ParseError};
use crate::protocol::output::{Output, Segment};
use crate::protocol::reply;
use crate::protocol::yaml::{self, BinlogStats, CpuTime, ProcessStats};
use session::{LineScan, Mode, PendingPut, Session, find_crlf, scan_line};

/// Commands pipelined behind a blocked reserve are buffered up to this
/// many bytes; beyond it the connection is not read until it unblocks.
pub const PENDING_BYTES_MAX: usize = 64 * 1024;

/// A connection owed this many reply bytes runs no further command and is
/// not read until they have been sent, so a client that sends cheap
/// commands with large replies and never reads costs at most this much.
pub const OUTPUT_BYTES_HIGH: usize = 4 * 1024 * 1024;

/// The same for the part of those replies the session holds in text
/// buffers of its own (lines, documents, small bodies), which is what a
/// connection's backlog costs in memory; large bodies are sent from their
/// jobs. A client that floods `stats` and never reads costs this much here,
/// besides what the kernel's socket buffers hold (as with beanstalkd).
pub const OUTPUT_TEXT_BYTES_HIGH: usize = 256 * 1024;

/// Put bodies with at least this many bytes still to come are received
/// straight into the job's memory (see [`Shard::wants_direct_body`]).
pub const DIRECT_BODY_BYTES_MIN: usize = 16 * 1024;

/// A put body lent to the network layer while a receive writes into it.
/// Dropping it (the connection went away) frees the body.
pub struct BodyLoan {
    builder: BodyBuilder,
}

impl BodyLoan {
    /// The first byte still missing and how many are missing.
    pub fn spare(&mut self) -> (*mut u8, usize) {
        self.builder.spare()
    }
}

/// A connection of this shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId(pub u32);

/// Facts about the server that `stats` reports and the shard cannot know.
pub struct ServerInfo {
    pub max_job_size: u64,
    pub pid: u32,
    pub instance_id: String,
    pub hostname: String,
    pub os: String,
    pub platform: String,
    pub binlog_max_size: u64,
    /// runnerbean's own `stats` keys and their YAML values.
    pub extra: Vec<(String, String)>,
    /// Process CPU time (user, system); a function so tests can fix it.
    pub cpu_times: fn() -> (CpuTime, CpuTime),
    /// 0 quiet, 1 connections, 2 also commands (beanstalkd's `-V`).
    pub verbosity: u8,
}

/// Whether a connection's input should be received now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadGate {
    Read,
    /// Too much is buffered either way; wait until the session moves.
    Wait,
    /// The connection is closing; read no more.
    Stop,
}

pub struct Shard {
    engine: Engine,
    info: ServerInfo,
    sessions: Slab<Session>,
    /// Engine client index → session key.
    conn_of_client: Vec<u32>,
    /// Sessions unblocked by a wake, to run their pipelined commands.
    runnable: VecDeque<u32>,
    dirty: Vec<ConnId>,
    wakes: Vec<(ClientId, Wake)>,
    scratch: Vec<u8>,
    /// The latest instant the engine has been given; see [`Shard::command_time`].
    clock: Nanos,
}

impl Shard {
    pub fn new(config: EngineConfig, info: ServerInfo) -> Shard {
        Shard {
            engine: Engine::new(config),
            info,
            sessions: Slab::new(),
            conn_of_client: Vec::new(),
            runnable: VecDeque::new(),
            dirty: Vec::new(),
            wakes: Vec::new(),
            scratch: Vec::new(),
            clock: 0,
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// A new connection; `label` names it in log lines.
    pub fn open(&mut self, label: i32) -> ConnId {
        let client = self.engine.connect();
        let conn = self.sessions.insert(Session::new(client, label)) as u32;
        if self.conn_of_client.len() <= client.index() {
            self.conn_of_client.resize(client.index() + 1, u32::MAX);
        }
        self.conn_of_client[client.index()] = conn;
        ConnId(conn)
    }

    /// Bytes received on a connection.
    pub fn input(&mut self, conn: ConnId, data: &[u8], now: Nanos) {
        let now = self.observe(now);
        self.engine.advance(now);
        self.settle(now);
        let k = conn.0 as usize;
        let session = &mut self.sessions[k];
        if session.closing {
            return;
        }
        if session.pending.is_empty() && session.runnable() {
            // The common case: run straight from the read buffer and keep
            // only an incomplete tail.
            let used = self.process(conn.0, data, now);
            self.sessions[k].pending.extend_from_slice(&data[used..]);
        } else {
            session.pending.extend_from_slice(data);
            self.run(conn.0, now);
        }
        self.settle(now);
        // Input alone can close the read gate (commands piling up behind a
        // reserve, or replies reaching the high mark): have the network
        // look at this connection.
        if self.read_gate(conn) != ReadGate::Read {
            self.mark_dirty(conn.0);
        }
    }

    /// The peer sent its last byte (or the connection failed). A blocked
    /// reserve is answered TIMED_OUT, as beanstalkd does on a half-close;
    /// buffered commands still run; then the connection closes, or, when
    /// commands are held back by a high mark, once they have run (see
    /// [`Shard::sent`]).
    pub fn eof(&mut self, conn: ConnId, now: Nanos) {
        let now = self.observe(now);
        self.engine.advance(now);
        self.settle(now);
        let k = conn.0 as usize;
        let session = &mut self.sessions[k];
        if !session.closing {
            session.eof = true;
            if session.blocked {
                let client = session.client.expect("blocked session without a client");
                self.engine.cancel_wait(client);
                session.blocked = false;
                session.out.push(reply::TIMED_OUT);
            }
            self.run(conn.0, now);
            if self.sessions[k].stalled {
                // Commands are left to run once the replies owed are sent;
                // see `Shard::sent`.
                self.mark_dirty(conn.0);
                self.settle(now);
                return;
            }
        }
        self.close(conn, now);
        self.settle(now);
    }

    /// Timers: call at (or after) [`Shard::next_deadline`].
    pub fn tick(&mut self, now: Nanos) {
        let now = self.observe(now);
        self.engine.advance(now);
        self.settle(now);
    }

    pub fn next_deadline(&self) -> Option<Nanos> {
        self.engine.next_deadline()
    }

    /// SIGUSR1: refuse new jobs from now on.
    pub fn set_draining(&mut self) {
        self.engine.set_draining();
    }

    /// Ends the connection's part in the queue: it stops waiting and its
    /// reserved jobs go back to ready. Its output may still be written.
    pub fn close(&mut self, conn: ConnId, now: Nanos) {
        let now = self.observe(now);
        let session = &mut self.sessions[conn.0 as usize];
        session.closing = true;
        session.pending = Vec::new();
        session.mode = Mode::Line;
        if let Some(client) = session.client.take() {
            self.engine.disconnect(client, now);
            self.conn_of_client[client.index()] = u32::MAX;
        }
        self.mark_dirty(conn.0);
    }

    /// Writing failed: drop the output and close.
    pub fn abort(&mut self, conn: ConnId, now: Nanos) {
        let now = self.observe(now);
        let session = &mut self.sessions[conn.0 as usize];
        session.dead = true;
        session.out = Output::default();
        self.close(conn, now);
        self.settle(now);
    }

    /// Whether the connection is inside a put body with at least
    /// [`DIRECT_BODY_BYTES_MIN`] bytes still to come, which are better
    /// received straight into the job's memory than through a buffer.
    pub fn wants_direct_body(&self, conn: ConnId) -> bool {
        let session = &self.sessions[conn.0 as usize];
        match &session.mode {
            Mode::Body(put) if session.runnable() && session.pending.is_empty() => {
                put.body.as_ref().is_some_and(|b| b.remaining() >= DIRECT_BODY_BYTES_MIN)
            }
            _ => false,
        }
    }

    /// Lends the body being received, for a receive straight into it; the
    /// connection takes no other input until it comes back.
    pub fn lend_body(&mut self, conn: ConnId) -> Option<BodyLoan> {
        match &mut self.sessions[conn.0 as usize].mode {
            Mode::Body(put) => put.body.take().map(|builder| BodyLoan { builder }),
            _ => None,
        }
    }

    /// Takes back a lent body after `filled` more bytes were written into
    /// it (see [`BodyLoan::spare`]).
    ///
    /// # Safety
    /// `filled` bytes must have been written at the loan's spare pointer.
    pub unsafe fn return_body(&mut self, conn: ConnId, mut loan: BodyLoan, filled: usize, now: Nanos) {
        // Safety: the caller wrote `filled` bytes there.
        unsafe { loan.builder.assume_filled(filled) };
        let now = self.observe(now);
        let session = &mut self.sessions[conn.0 as usize];
        if let Mode::Body(put) = &mut session.mode {
            put.body = Some(loan.builder);
            // The body may be complete now, waiting only for its trailer.
            self.run(conn.0, now);
            self.settle(now);
        }
    }

    /// Forgets a closed connection once nothing is in flight on its socket.
    pub fn remove(&mut self, conn: ConnId) {
        let session = self.sessions.remove(conn.0 as usize);
        assert!(session.closing && session.client.is_none(), "removing a live session");
    }

    pub fn read_gate(&self, conn: ConnId) -> ReadGate {
        let s = &self.sessions[conn.0 as usize];
        if s.closing || s.eof {
            ReadGate::Stop
        } else if s.over_high_mark() || s.pending.len() >= PENDING_BYTES_MAX {
            ReadGate::Wait
        } else {
            ReadGate::Read
        }
    }

    /// The replies owed to a connection.
    pub fn output(&mut self, conn: ConnId) -> &mut Output {
        &mut self.sessions[conn.0 as usize].out
    }

    /// Moves the replies owed into `into` for sending; they count against
    /// the high marks until [`Shard::sent`].
    pub fn start_send(&mut self, conn: ConnId, into: &mut Vec<Segment>) {
        let session = &mut self.sessions[conn.0 as usize];
        session.in_flight += session.out.len();
        session.in_flight_text += session.out.text_len();
        session.out.take(into);
    }

    /// Everything handed over by [`Shard::start_send`] has been written
    /// (or dropped with a failed connection): commands held back by the
    /// high mark run now, and a half-closed connection that was waiting
    /// for them closes once they have.
    pub fn sent(&mut self, conn: ConnId, now: Nanos) {
        let now = self.observe(now);
        let k = conn.0 as usize;
        self.sessions[k].in_flight = 0;
        self.sessions[k].in_flight_text = 0;
        if !self.sessions[k].stalled || self.sessions[k].closing {
            return;
        }
        self.engine.advance(now);
        self.run(conn.0, now);
        self.settle(now);
        let session = &self.sessions[k];
        if session.eof && !session.stalled && !session.closing {
            self.close(conn, now);
            self.settle(now);
        }
        self.mark_dirty(conn.0);
    }

    /// Whether the connection is closing and has nothing left to write.
    pub fn finished(&self, conn: ConnId) -> bool {
        let s = &self.sessions[conn.0 as usize];
        s.closing && (s.dead || s.out.is_empty())
    }

    pub fn is_dead(&self, conn: ConnId) -> bool {
        self.sessions[conn.0 as usize].dead
    }

    /// Whether the connection is blocked in a reserve with input buffered
    /// behind it: commands that will run as soon as an answer comes, in the
    /// middle of whatever brought it. The fuzz target (fuzz/) needs to know
    /// this: cutting another connection's input at a different point can
    /// then change the order in which the two connections' commands run,
    /// which is correct behaviour, not a framing fault.
    #[doc(hidden)]
    pub fn blocked_with_input(&self, conn: ConnId) -> bool {
        let session = &self.sessions[conn.0 as usize];
        session.blocked && !session.pending.is_empty()
    }

    /// Connections whose output, blocking or closing changed since the last
    /// call.
    pub fn take_dirty(&mut self, into: &mut Vec<ConnId>) {
        for conn in self.dirty.drain(..) {
            if let Some(s) = self.sessions.get_mut(conn.0 as usize) {
                s.dirty = false;
                into.push(conn);
            }
        }
    }

    fn mark_dirty(&mut self, conn: u32) {
        let session = &mut self.sessions[conn as usize];
        if !session.dirty {
            session.dirty = true;
            self.dirty.push(ConnId(conn));
        }
    }

    /// `now` from the network, made never to go back behind a command
    /// already run.
    fn observe(&mut self, now: Nanos) -> Nanos {
        self.clock = self.clock.max(now);
        self.clock
    }

    /// The instant a command runs at: at least a nanosecond after the one
    /// before. The network reads the clock once per batch of input, where C
    /// beanstalkd reads it for every command; without this step a deadline
    /// set by one command and read by the next in the same batch would show
    /// no time passing (`time-left: 100` where beanstalkd says 99), and two
    /// delays set in one batch would tie and come out by id instead of in
    /// the order they were set.
    fn command_time(&mut self, now: Nanos) -> Nanos {
        self.clock = now.max(self.clock + 1);
        self.clock
    }

    /// Delivers answers owed to waiting clients and runs the commands they
    /// had pipelined, until nothing is left to do.
    fn settle(&mut self, now: Nanos) {
        loop {
            self.wakes.extend(self.engine.take_wakes());
            if self.wakes.is_empty() && self.runnable.is_empty() {
                return;
            }
            for (client, wake) in std::mem::take(&mut self.wakes) {
                let conn = self.conn_of_client[client.index()];
                // The engine never answers a client that has left.
                assert_ne!(conn, u32::MAX, "wake for a closed connection");
                let session = &mut self.sessions[conn as usize];
                debug_assert!(session.blocked, "wake for a session that is not blocked");
                session.blocked = false;
                match wake {
                    Wake::Reserved(job) => reply::reserved(&mut session.out, &job),
                    Wake::TimedOut => session.out.push(reply::TIMED_OUT),
                    Wake::DeadlineSoon => session.out.push(reply::DEADLINE_SOON),
                }
                self.mark_dirty(conn);
                self.runnable.push_back(conn);
            }
            while let Some(conn) = self.runnable.pop_front() {
                self.run(conn, now);
            }
        }
    }

    /// Runs a session's buffered input as far as it goes.
    fn run(&mut self, conn: u32, now: Nanos) {
        let input = std::mem::take(&mut self.sessions[conn as usize].pending);
        let used = self.process(conn, &input, now);
        let session = &mut self.sessions[conn as usize];
        if session.closing {
            return;
        }
        if used == input.len() {
            let mut input = input;
            input.clear();
            // Keep the allocation unless it grew large behind a reserve.
            if input.capacity() <= PENDING_BYTES_MAX {
                session.pending = input;
            }
        } else {
            debug_assert!(session.pending.is_empty());
            let mut input = input;
            // Nothing used (blocked, or held back by the high mark) is the
            // common case while input piles up: keep the buffer as it is.
            if used > 0 {
                input.drain(..used);
            }
            session.pending = input;
        }
    }

    /// Consumes as much of `input` as the session's state allows; returns
    /// the number of bytes used.
    fn process(&mut self, conn: u32, input: &[u8], now: Nanos) -> usize {
        let mut pos = 0;
        let start_len = self.sessions[conn as usize].out.len();
        self.sessions[conn as usize].stalled = false;
        loop {
            let session = &mut self.sessions[conn as usize];
            if !session.runnable() {
                break;
            }
            let rest = &input[pos..];
            let over_high_mark = session.over_high_mark();
            match &mut session.mode {
                Mode::Line if over_high_mark && !rest.is_empty() => {
                    session.stalled = true;
                    break;
                }
                Mode::Line => match scan_line(rest) {
                    LineScan::Line(len) => {
                        pos += len + 2;
                        self.command(conn, &rest[..len], now);
                    }
                    LineScan::Incomplete => break,
                    LineScan::Overlong => {
                        session.mode = Mode::SkipLine;
                    }
                },
                Mode::SkipLine => match find_crlf(rest) {
                    Some(i) => {
                        pos += i + 2;
                        session.mode = Mode::Line;
                        session.out.push(reply::BAD_FORMAT);
                    }
                    None => {
                        // Keep a final '\r': its '\n' may be the next byte.
                        pos += rest.len() - usize::from(rest.last() == Some(&b'\r'));
                        break;
                    }
                },
                Mode::Body(put) => {
                    pos += put.fill(rest);
                    if !put.is_complete() {
                        break;
                    }
                    let Mode::Body(put) = std::mem::replace(&mut session.mode, Mode::Line) else { unreachable!() };
                    self.finish_put(conn, put, now);
                }
                Mode::Discard { remaining, reply } => {
                    let n = (*remaining).min(rest.len() as u64);
                    pos += n as usize;
                    *remaining -= n;
                    if *remaining > 0 {
                        break;
                    }
                    session.out.push(reply);
                    session.mode = Mode::Line;
                }
            }
        }
        if self.sessions[conn as usize].out.len() != start_len {
            self.mark_dirty(conn);
        }
        pos
    }

    fn finish_put(&mut self, conn: u32, put: PendingPut, now: Nanos) {
        let now = self.command_time(now);
        let body = put.body.expect("a complete put has its body").finish();
        let session = &mut self.sessions[conn as usize];
        if put.trailer != *b"\r\n" {
            session.out.push(reply::EXPECTED_CRLF);
            return;
        }
        let client = session.client.expect("running session without a client");
        match self.engine.put(client, put.id, put.created_at, put.pri, put.delay_s, put.ttr_s, body, now) {
            PutOutcome::Inserted => reply::number_line(&mut session.out, b"INSERTED", put.id),
            PutOutcome::Draining => session.out.push(reply::DRAINING),
        }
    }

    /// Runs one command line.
    fn command(&mut self, conn: u32, line: &[u8], now: Nanos) {
        let now = self.command_time(now);
        let session = &mut self.sessions[conn as usize];
        let client = session.client.expect("running session without a client");
        let cmd = match command::parse(line) {
            Ok(cmd) => cmd,
            Err(ParseError::BadFormat) => return session.out.push(reply::BAD_FORMAT),
            Err(ParseError::UnknownCommand) => return session.out.push(reply::UNKNOWN_COMMAND),
        };
        if self.info.verbosity >= 2 {
            println!("<{} command {}", session.label, String::from_utf8_lossy(line));
        }
        // Every command goes through the router; with one shard it always
        // lands here.
        let shards = self.engine.config().shards;
        debug_assert!(
            route::owner(route::target(&cmd), self.engine.used_tube(client), shards)
                .is_none_or(|s| s.0 == self.engine.config().shard)
        );

        let engine = &mut self.engine;
        let out = &mut session.out;
        use Command as C;
        match cmd {
            C::Put { pri, delay_s, ttr_s, size, trailing_garbage } => {
                engine.count(Op::Put);
                // JOB_TOO_BIG comes before the trailing-garbage check, and
                // the body is read and thrown away before the reply.
                let body_bytes = u64::from(size) + 2;
                if u64::from(size) > self.info.max_job_size {
                    session.mode = Mode::Discard { remaining: body_bytes, reply: reply::JOB_TOO_BIG };
                    return;
                }
                if trailing_garbage {
                    return out.push(reply::BAD_FORMAT);
                }
                engine.set_producer(client);
                let Some(body) = BodyBuilder::try_new(size as usize) else {
                    session.mode = Mode::Discard { remaining: body_bytes, reply: reply::OUT_OF_MEMORY };
                    return;
                };
                let id = engine.allocate_id();
                let put = PendingPut {
                    id,
                    created_at: now,
                    pri,
                    delay_s,
                    ttr_s,
                    body: Some(body),
                    trailer: [0; 2],
                    trailer_len: 0,
                };
                session.mode = Mode::Body(put);
            }
            C::Peek(id) => {
                engine.count(Op::Peek);
                found_or_not(out, engine.peek(id));
            }
            C::PeekReady => {
                engine.count(Op::PeekReady);
                found_or_not(out, engine.peek_ready(client));
            }
            C::PeekDelayed => {
                engine.count(Op::PeekDelayed);
                found_or_not(out, engine.peek_delayed(client));
            }
            C::PeekBuried => {
                engine.count(Op::PeekBuried);
                found_or_not(out, engine.peek_buried(client));
            }
            C::Reserve | C::ReserveWithTimeout(_) => {
                let timeout = match cmd {
                    C::ReserveWithTimeout(t) => {
                        engine.count(Op::ReserveWithTimeout);
                        Some(t)
                    }
                    _ => {
                        engine.count(Op::Reserve);
                        None
                    }
                };
                match engine.reserve(client, timeout, now) {
                    ReserveOutcome::Reserved(job) => reply::reserved(out, &job),
                    ReserveOutcome::DeadlineSoon => out.push(reply::DEADLINE_SOON),
                    ReserveOutcome::TimedOut => out.push(reply::TIMED_OUT),
                    ReserveOutcome::Waiting if session.eof => {
                        engine.cancel_wait(client);
                        out.push(reply::TIMED_OUT);
                    }
                    ReserveOutcome::Waiting => session.blocked = true,
                }
            }
            C::ReserveJob(id) => {
                engine.count(Op::ReserveJob);
                match engine.reserve_job(client, id, now) {
                    Some(job) => reply::reserved(out, &job),
                    None => out.push(reply::NOT_FOUND),
                }
            }
            C::Delete(id) => {
                engine.count(Op::Delete);
                yes_or_not_found(out, engine.delete(client, id, now), reply::DELETED);
            }
            C::Release { id, pri, delay_s } => {
                engine.count(Op::Release);
                yes_or_not_found(out, engine.release(client, id, pri, delay_s, now), reply::RELEASED);
            }
            C::Bury { id, pri } => {
                engine.count(Op::Bury);
                yes_or_not_found(out, engine.bury(client, id, pri, now), reply::BURIED);
            }
            C::Kick(bound) => {
                engine.count(Op::Kick);
                let kicked = engine.kick(client, bound, now);
                reply::number_line(out, b"KICKED", u64::from(kicked));
            }
            C::KickJob(id) => {
                engine.count(Op::KickJob);
                yes_or_not_found(out, engine.kick_job(id, now), reply::KICKED);
            }
            C::Touch(id) => {
                engine.count(Op::Touch);
                yes_or_not_found(out, engine.touch(client, id, now), reply::TOUCHED);
            }
            C::StatsJob(id) => {
                engine.count(Op::StatsJob);
                match engine.stats_job(id, now) {
                    Some(stats) => {
                        yaml::job_stats(&mut self.scratch, &stats);
                        reply::ok_document(out, &self.scratch);
                    }
                    None => out.push(reply::NOT_FOUND),
                }
            }
            C::StatsTube(name) => {
                engine.count(Op::StatsTube);
                match engine.stats_tube(name, now) {
                    Some(stats) => {
                        yaml::tube_stats(&mut self.scratch, &stats);
                        reply::ok_document(out, &self.scratch);
                    }
                    None => out.push(reply::NOT_FOUND),
                }
            }
            C::Stats => {
                engine.count(Op::Stats);
                let info = &self.info;
                let (utime, stime) = (info.cpu_times)();
                let extra: Vec<(&str, &str)> = info.extra.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let process = ProcessStats {
                    max_job_size: info.max_job_size,
                    pid: info.pid,
                    utime,
                    stime,
                    uptime_s: now / crate::engine::NANOS_PER_SEC,
                    binlog: BinlogStats { max_size: info.binlog_max_size, ..BinlogStats::default() },
                    instance_id: &info.instance_id,
                    hostname: &info.hostname,
                    os: &info.os,
                    platform: &info.platform,
                    extra: &extra,
                };
                yaml::stats(&mut self.scratch, &engine.stats(), &process);
                reply::ok_document(out, &self.scratch);
            }
            C::Use(name) => {
                engine.count(Op::Use);
                engine.use_tube(client, name);
                reply::using(out, name);
            }
            C::Watch(name) => {
                engine.count(Op::Watch);
                let n = engine.watch(client, name);
                reply::number_line(out, b"WATCHING", n as u64);
            }
            C::Ignore(name) => {
                engine.count(Op::Ignore);
                match engine.ignore(client, name) {
                    Some(n) => reply::number_line(out, b"WATCHING", n as u64),
                    None => out.push(reply::NOT_IGNORED),
                }
            }
            C::ListTubesWatched => {
                engine.count(Op::ListTubesWatched);
                yaml::list(&mut self.scratch, engine.watched_tubes(client));
                reply::ok_document(out, &self.scratch);
            }
            C::ListTubeUsed => {
                engine.count(Op::ListTubeUsed);
                reply::using(out, engine.used_tube(client));
            }
            C::ListTubes => {
                engine.count(Op::ListTubes);
                yaml::list(&mut self.scratch, engine.tube_names());
                reply::ok_document(out, &self.scratch);
            }
            C::Quit => {
                self.close(ConnId(conn), now);
            }
            C::PauseTube { name, delay_s } => {
                // Counted before the name is validated, as beanstalkd does.
                engine.count(Op::PauseTube);
                match name {
                    None => out.push(reply::BAD_FORMAT),
                    Some(name) if engine.pause_tube(name, delay_s, now) => out.push(reply::PAUSED),
                    Some(_) => out.push(reply::NOT_FOUND),
                }
            }
        }
    }
}

fn found_or_not(out: &mut Output, job: Option<crate::engine::JobRef>) {
    match job {
        Some(job) => reply::found(out, &job),
        None => out.push(reply::NOT_FOUND),
    }
}

fn yes_or_not_found(out: &mut Output, ok: bool, yes: &'static [u8]) {
    out.push(if ok { yes } else { reply::NOT_FOUND });
}

#[cfg(test)]
mod tests;
