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
//!
//! # Several shards
//! A shard built by [`Shard::new_spread`] among several sends its sessions'
//! engine commands to the shards that own what they touch, as messages its
//! caller carries ([`Shard::take_outbox`], [`Shard::deliver`]); see
//! [`spread`]. With one shard no message is ever made.
//!
//! # Turns
//! The network layer works in turns (wait for events, act on them, write
//! replies) and starts each with [`Shard::begin_turn`]. A connection runs at
//! most [`COMMANDS_PER_TURN_MAX`] commands per turn; the rest of its input
//! stays in its session, in order, and the shard remembers it as *carried*.
//! [`Shard::run_carried`] runs carried input with the next turn's budget,
//! and while [`Shard::has_carried`] the network does not sleep. A client
//! that pipelines as fast as it can therefore gets its share of each turn,
//! not the whole of it: a turn stays short, other clients are answered
//! within a turn or two, and timers fire on time.

pub mod request;
pub mod route;
pub mod session;
pub mod spanning;
pub mod spread;

#[cfg(test)]
mod cluster;

use std::collections::VecDeque;

use crate::engine::arena::Slots;
use crate::engine::{BodyBuilder, ClientId, Engine, EngineConfig, Nanos, Op, ServerStats, Wake};
use crate::memory::{self, OutOfMemory};
use crate::protocol::command::{self, Command, ParseError};
use crate::protocol::output::{Mark, Output, Segment};
use crate::protocol::reply;
use crate::protocol::yaml::{self, BinlogStats, CpuTime, ProcessStats};
use request::{Reply, Request, Word};
use session::{Input, LineScan, Mode, PendingPut, Session, find_crlf, scan_line};

/// Input not run yet (commands pipelined behind a blocked reserve, or held
/// back by a high mark) is buffered up to this many bytes; beyond it the
/// connection is not read until its session has taken some. A receive
/// brings at most `net::io::RECV_BYTES_MAX` (and a buffer) more, so this
/// bounds what a client that sends and never reads costs in input: with
/// 64 KiB, 2,000 such clients held 36 KB each, about twice their share of
/// the shard's reply text, whenever the kernel took a send and opened
/// their gate again.
pub const PENDING_BYTES_MAX: usize = 16 * 1024;

/// A connection owed this many reply bytes runs no further command and is
/// not read until they have been sent, so a client that sends cheap
/// commands with large replies and never reads costs at most this much.
pub const OUTPUT_BYTES_HIGH: usize = 4 * 1024 * 1024;

/// The same for the part of those replies the session holds in text
/// buffers of its own (lines, documents, small bodies), which is what a
/// connection's backlog costs in memory; large bodies are sent from their
/// jobs. A reader that pipelines deeply gets its replies in batches this
/// large, which keeps system calls few.
pub const OUTPUT_TEXT_BYTES_HIGH: usize = 256 * 1024;

/// Commands one connection may run in one turn of the event loop before
/// the rest of its input waits for the next turn. Measured with
/// `runnerbean-flood` (20 connections pipelining puts beside one client
/// running put/reserve/delete cycles a request at a time): with 64, a turn
/// of all 20 runs about 1,300 commands (about a millisecond), the cycle's
/// p99 is 3 to 7 ms (C beanstalkd's, 2 to 5) and the flooders still get 1.9
/// to 2.8 million puts/s, 27 to 43 times C's (perf/RESULTS.md). A smaller
/// budget spreads the same work over more turns, each with its system
/// calls; a larger one makes every turn, and so every other client's wait,
/// longer.
pub const COMMANDS_PER_TURN_MAX: u32 = 64;
/// The reply text all of a shard's connections may hold together before
/// each is held to [`OUTPUT_TEXT_FLOOR_BYTES`]: 128 connections at the
/// per-connection mark. Without it, connections that flood `stats` and
/// never read cost the per-connection mark each, with no overall bound:
/// 2,000 of them held 840 MB, 10,000 held 3.5 GB (C beanstalkd: 23 MB).
pub const OUTPUT_TEXT_BUDGET_BYTES: usize = 32 * 1024 * 1024;

/// What a connection may still hold in reply text once the shard's budget
/// is spent: a few replies, so a client that reads gets on, slowly, while
/// one that does not costs about this much (C beanstalkd holds one reply).
pub const OUTPUT_TEXT_FLOOR_BYTES: usize = 4 * 1024;

const _: () = assert!(OUTPUT_TEXT_FLOOR_BYTES < OUTPUT_TEXT_BYTES_HIGH);
const _: () = assert!(OUTPUT_TEXT_BYTES_HIGH < OUTPUT_TEXT_BUDGET_BYTES);
const _: () = assert!(OUTPUT_TEXT_BYTES_HIGH < OUTPUT_BYTES_HIGH);
// A connection blocked in reserve can still buffer a whole command line
// behind it, so a pipelined line is never cut by the bound.
const _: () = assert!(PENDING_BYTES_MAX >= crate::protocol::LINE_BYTES_MAX);

/// A session's input buffer larger than this is freed once it is empty, so
/// that a burst of pipelined commands leaves nothing behind; below it the
/// buffer is kept, so partial lines cost no allocation.
pub const PENDING_KEPT_BYTES_MAX: usize = 1024;

/// Room made for the documents of `stats`, `stats-tube` and `stats-job`
/// before they are written: `stats` takes about 1.5 KB, with runnerbean's
/// own keys and long host names well under this.
const DOCUMENT_BYTES_MAX: usize = 4096;

/// Room for the `OK <bytes>\r\n` before a document and the CRLF after it.
const DOCUMENT_HEADER_BYTES_MAX: usize = 32;

/// Room made in a connection's reply text before each of its commands
/// runs (and before a waiter's answer), when memory is short: the longest
/// reply line with a body copied into it, so that no reply but a document
/// needs an allocation of its own. Outside a shortage the room is taken
/// as the replies are written, and a failure there spends the reserve.
const REPLY_ROOM_BYTES: usize = crate::protocol::LINE_BYTES_MAX + crate::protocol::output::BODY_INLINE_BYTES_MAX + 2;

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
#[derive(Clone)]
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
    /// When the server started, on the shard's clock (for `uptime`).
    pub started_at: Nanos,
    /// `--strict`: runnerbean's own commands (`clear-tube`, `list-jobs`)
    /// are answered UNKNOWN_COMMAND, as C beanstalkd answers them.
    pub strict: bool,
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
    sessions: Slots<Session>,
    /// Engine client index → session key.
    conn_of_client: Vec<u32>,
    /// Sessions unblocked by a wake or answered by another shard, to run
    /// their pipelined commands; each at most once (`Session::queued`), so
    /// it never holds more than the sessions it has room for.
    runnable: VecDeque<u32>,
    /// Sessions run from `runnable`.
    #[cfg(test)]
    queued_runs: u64,
    dirty: Vec<ConnId>,
    wakes: Vec<(ClientId, Wake)>,
    scratch: Vec<u8>,
    /// The latest instant the engine has been given; see [`Shard::command_time`].
    clock: Nanos,
    /// The current turn of the event loop (see "Turns" above).
    turn: u64,
    /// Sessions with input left over from an earlier turn, oldest first.
    carried: VecDeque<u32>,
    /// Sessions with replies held for the write-ahead log.
    fenced: Vec<u32>,
    /// Reply text held by all sessions, waiting and in flight: the sum of
    /// their `text_counted` (see [`OUTPUT_TEXT_BUDGET_BYTES`]).
    text_held: usize,
    /// Taking the memory reserve back and giving freed memory to the
    /// kernel, from [`Shard::tick`].
    upkeep: memory::Upkeep,
    /// Connections opened since start (`total-connections`), wrapping as
    /// beanstalkd's does.
    total_connections: u32,
    /// The connection figures of `stats`, kept as sessions change (see
    /// [`Figures`]).
    figures: Figures,
    /// This shard's part in a server of several; `None` with one shard,
    /// whose commands never make a message (see [`spread`]).
    spread: Option<Box<spread::Spread>>,
}

/// What `stats` reports of the connections: those open (with an engine
/// client), and how many of them have put, have reserved, and are blocked in
/// a reserve now. Kept up to date as each session changes rather than
/// counted by `stats`, which walked every session: with 10,000 connections
/// sending `stats`, each one cost 10,000 steps, and the server took 50 s to
/// answer anyone after they had closed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Figures {
    connections: u64,
    producers: u64,
    workers: u64,
    waiting: u64,
}

impl Shard {
    pub fn new(config: EngineConfig, info: ServerInfo) -> Shard {
        Shard {
            engine: Engine::new(config),
            info,
            sessions: Slots::default(),
            conn_of_client: Vec::new(),
            runnable: VecDeque::new(),
            #[cfg(test)]
            queued_runs: 0,
            dirty: Vec::new(),
            wakes: Vec::new(),
            scratch: Vec::new(),
            clock: 0,
            turn: 0,
            carried: VecDeque::new(),
            fenced: Vec::new(),
            text_held: 0,
            upkeep: memory::Upkeep::default(),
            total_connections: 0,
            figures: Figures::default(),
            spread: None,
        }
    }

    /// A shard around an engine made elsewhere (one restored from the log).
    pub fn with_engine(engine: Engine, info: ServerInfo) -> Shard {
        let mut shard = Shard::new(engine.config(), info);
        shard.engine = engine;
        shard
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// The log's upkeep at the end of a turn: files made and removed, and
    /// compaction for as many bytes as the log asks.
    pub fn log_upkeep(&mut self, now: Nanos) {
        let Some(log) = self.engine.log_mut() else { return };
        let budget = log.maintain(now);
        if budget > 0 {
            self.engine.compact(budget);
        }
    }

    /// Batches of the log up to `batch` are durable: replies that waited
    /// for them may leave.
    pub fn durable(&mut self, batch: u64) {
        self.note_durable(batch);
        let mut i = 0;
        while i < self.fenced.len() {
            let conn = self.fenced[i];
            let Some(session) = self.sessions.get_mut(conn) else {
                self.fenced.swap_remove(i);
                continue;
            };
            session.out.release(batch);
            let (sendable, fenced) = (session.out.has_sendable(), session.out.is_fenced());
            if sendable {
                self.mark_dirty(conn);
            }
            if fenced {
                i += 1;
            } else {
                self.sessions[conn as usize].log_fenced = false;
                self.fenced.swap_remove(i);
            }
        }
    }

    /// Before a command: where its reply will start, and how many records
    /// the log had, so that a reply acknowledging a recorded change can be
    /// held until the record is durable ([`Shard::hold_if_recorded`]).
    fn log_mark(&self, conn: u32) -> Option<(Mark, u64)> {
        let log = self.engine.log()?;
        Some((self.sessions[conn as usize].out.mark(), log.records_written()))
    }

    /// After a command: if it recorded a change, its reply (and everything
    /// after it on the connection) waits for the batch holding the record.
    fn hold_if_recorded(&mut self, conn: u32, before: Option<(Mark, u64)>) {
        let Some((mark, records)) = before else { return };
        let log = self.engine.log().expect("a mark was taken with a log");
        if log.records_written() == records {
            return;
        }
        let batch = log.filling();
        let Some(session) = self.sessions.get_mut(conn) else { return };
        session.out.fence(mark, batch);
        if session.out.is_fenced() && !session.log_fenced {
            session.log_fenced = true;
            self.fenced.push(conn);
        }
    }

    /// A new connection; `label` names it in log lines. `None` when the
    /// memory for it cannot be had: the network then closes it at once, as
    /// beanstalkd does when it cannot allocate one. A shortage alone does
    /// not refuse it (an administrator must be able to get in and delete
    /// jobs); it may spend some of the reserve, never the last of it
    /// (`memory::try_or_spend`).
    pub fn open(&mut self, label: i32) -> Option<ConnId> {
        // Room for the session, its place in every per-session list, and
        // the engine's client, before anything changes. Each step only
        // makes room, so trying it again after spending changes nothing.
        let sessions = self.sessions.len() + 1;
        memory::try_or_spend(|| {
            self.sessions.try_reserve()?;
            memory::try_reserve_total(&mut self.dirty, sessions)?;
            memory::try_reserve_total(&mut self.wakes, sessions)?;
            let more = sessions.saturating_sub(self.runnable.len());
            memory::attempt(|| self.runnable.try_reserve(more))
        })
        .ok()?;
        if self.spread.is_some() {
            return self.far_open(label);
        }
        let client = memory::try_or_spend(|| self.engine.connect()).ok()?;
        if memory::try_or_spend(|| memory::try_reserve_total(&mut self.conn_of_client, client.index() + 1)).is_err() {
            self.engine.disconnect(client, self.clock);
            return None;
        }
        let conn = self.sessions.insert(Session::new(client, label));
        self.total_connections = self.total_connections.wrapping_add(1);
        self.figures.connections += 1;
        if self.conn_of_client.len() <= client.index() {
            self.conn_of_client.resize(client.index() + 1, u32::MAX);
        }
        self.conn_of_client[client.index()] = conn;
        Some(ConnId(conn))
    }

    /// Bytes received on a connection.
    pub fn input(&mut self, conn: ConnId, data: &[u8], now: Nanos) {
        let now = self.observe(now);
        self.upkeep.note_activity(now);
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
            if self.sessions[k].pending.extend_from_slice(&data[used..]).is_err() {
                return self.abort(conn, now);
            }
        } else {
            if session.pending.extend_from_slice(data).is_err() {
                return self.abort(conn, now);
            }
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
        self.upkeep.note_activity(now);
        self.engine.advance(now);
        self.settle(now);
        if self.spread.is_some() {
            self.far_eof(conn.0, now);
            self.settle(now);
            return;
        }
        let k = conn.0 as usize;
        let session = &mut self.sessions[k];
        if !session.closing {
            session.eof = true;
            if session.blocked {
                let client = session.client.expect("blocked session without a client");
                self.engine.cancel_wait(client);
                session.blocked = false;
                self.figures.waiting -= 1;
                session.out.push(reply::TIMED_OUT);
                self.recount(conn.0);
            }
            self.run(conn.0, now);
            if self.sessions[k].stalled || self.sessions[k].carried {
                // Commands are left to run once the replies owed are sent
                // (see `Shard::sent`) or in a later turn (see
                // `Shard::run_carried`); the connection closes after them.
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
        self.tick_engine(now);
        if self.spread.is_some() {
            self.span_timers(now);
            self.settle(now);
        }
    }

    /// The engine's timers and the memory upkeep, without the sessions'
    /// own (spanning reserves'): their answers first, as beanstalkd's tick
    /// hands out the jobs it makes ready before it times out connections.
    fn tick_engine(&mut self, now: Nanos) {
        let now = self.observe(now);
        self.upkeep.tick(now);
        self.engine.advance(now);
        self.settle(now);
    }

    pub fn next_deadline(&self) -> Option<Nanos> {
        [self.engine.next_deadline(), self.upkeep.next_due(), self.span_deadline()].into_iter().flatten().min()
    }

    /// A new turn of the event loop: every connection may run
    /// [`COMMANDS_PER_TURN_MAX`] commands again.
    pub fn begin_turn(&mut self) {
        self.turn += 1;
    }

    /// Whether some connection has input left over from an earlier turn;
    /// the network must then not sleep before [`Shard::run_carried`].
    pub fn has_carried(&self) -> bool {
        !self.carried.is_empty()
    }

    /// Whether this connection has input left over for a later turn.
    pub fn is_carried(&self, conn: ConnId) -> bool {
        self.sessions[conn.0 as usize].carried
    }

    /// Runs the input that connections carried over from earlier turns,
    /// oldest first, within this turn's budget; what still does not fit
    /// waits for the next turn. A connection whose peer has finished
    /// sending closes once its last carried command has run.
    pub fn run_carried(&mut self, now: Nanos) {
        if self.carried.is_empty() {
            return;
        }
        let now = self.observe(now);
        self.engine.advance(now);
        self.settle(now);
        for _ in 0..self.carried.len() {
            let Some(conn) = self.carried.pop_front() else { break };
            let session = &mut self.sessions[conn as usize];
            session.carried = false;
            if session.closing {
                // Nothing more runs, but what it is owed must still go.
                self.mark_dirty(conn);
                continue;
            }
            self.run(conn, now);
            self.settle(now);
            let session = &self.sessions[conn as usize];
            if session.eof && !session.stalled && !session.carried && !session.closing && !session.awaiting {
                self.close(ConnId(conn), now);
                self.settle(now);
            }
            // Its replies are to be sent, and its read gate may have opened.
            self.mark_dirty(conn);
        }
    }

    /// SIGUSR1: refuse new jobs from now on.
    pub fn set_draining(&mut self) {
        self.engine.set_draining();
    }

    /// The server stops: no further command of the connection runs, and
    /// it closes ([`Shard::close`]) once the commands it has in flight on
    /// other shards are answered, at once if it has none.
    pub fn stop(&mut self, conn: ConnId, now: Nanos) {
        if self.spread.is_some() && self.far_stop(conn.0) {
            self.mark_dirty(conn.0);
            return;
        }
        self.close(conn, now);
    }

    /// Ends the connection's part in the queue: it stops waiting and its
    /// reserved jobs go back to ready. Its output may still be written.
    pub fn close(&mut self, conn: ConnId, now: Nanos) {
        let now = self.observe(now);
        let session = &mut self.sessions[conn.0 as usize];
        session.closing = true;
        session.pending = Input::default();
        session.mode = Mode::Line;
        if let Some(client) = session.client.take() {
            let f = &mut self.figures;
            f.connections -= 1;
            f.producers -= u64::from(session.producer);
            f.workers -= u64::from(session.worker);
            f.waiting -= u64::from(session.blocked);
            if self.spread.is_some() {
                self.far_close(conn.0);
            } else {
                self.engine.disconnect(client, now);
                self.conn_of_client[client.index()] = u32::MAX;
            }
        }
        self.mark_dirty(conn.0);
    }

    /// A connection that cannot be answered for want of memory: drop its
    /// output and close it, without settling (for callers that are).
    fn kill(&mut self, conn: u32, now: Nanos) {
        let session = &mut self.sessions[conn as usize];
        session.dead = true;
        session.out = Output::default();
        self.recount(conn);
        self.close(ConnId(conn), now);
    }

    /// Writing failed: drop the output and close.
    pub fn abort(&mut self, conn: ConnId, now: Nanos) {
        let now = self.observe(now);
        let session = &mut self.sessions[conn.0 as usize];
        session.dead = true;
        session.out = Output::default();
        self.recount(conn.0);
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
        // Bytes received are activity, whichever way they came (the memory
        // upkeep's timer follows it): as `input` notes it.
        self.upkeep.note_activity(now);
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
        let session = self.sessions.remove(conn.0);
        assert!(session.closing && session.client.is_none(), "removing a live session");
        if session.carried {
            // The slot may be reused; a new session must not inherit this
            // place in the queue.
            self.carried.retain(|&c| c != conn.0);
        }
        self.text_held -= session.text_counted;
    }

    pub fn read_gate(&self, conn: ConnId) -> ReadGate {
        let s = &self.sessions[conn.0 as usize];
        if s.closing || s.eof {
            ReadGate::Stop
        } else if s.over_high_mark(self.budget_left(s)) || s.pending.len() >= PENDING_BYTES_MAX || s.carried {
            // A connection carrying input is read again once that input
            // has run: reading more meanwhile would only pile it up.
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
        self.upkeep.note_activity(now);
        let k = conn.0 as usize;
        let session = &mut self.sessions[k];
        session.in_flight = 0;
        session.in_flight_text = 0;
        if session.out.is_empty() {
            // The burst is over: large buffers go back to the allocator.
            session.out.shrink();
        }
        self.recount(conn.0);
        if !self.sessions[k].stalled || self.sessions[k].closing {
            return;
        }
        self.engine.advance(now);
        self.run(conn.0, now);
        self.settle(now);
        let session = &self.sessions[k];
        if session.eof && !session.stalled && !session.carried && !session.closing && !session.awaiting {
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
            if let Some(s) = self.sessions.get_mut(conn.0) {
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
            if self.engine.has_wakes() {
                self.wakes.extend(self.engine.take_wakes());
            }
            if self.spread.is_some() && (!self.wakes.is_empty() || self.engine.owes_spans()) {
                self.forward_owed();
            }
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
                self.figures.waiting -= 1;
                if session.make_room().is_err() {
                    // The answer cannot be written: the connection goes,
                    // and a job it was handed goes back to ready.
                    self.kill(conn, now);
                    continue;
                }
                match wake {
                    Wake::Reserved(job) => reply::reserved(&mut session.out, &job),
                    Wake::TimedOut => session.out.push(reply::TIMED_OUT),
                    Wake::DeadlineSoon => session.out.push(reply::DEADLINE_SOON),
                }
                self.recount(conn);
                self.mark_dirty(conn);
                self.queue_run(conn);
            }
            while let Some(conn) = self.runnable.pop_front() {
                self.sessions[conn as usize].queued = false;
                #[cfg(test)]
                {
                    self.queued_runs += 1;
                }
                self.run(conn, now);
                if self.spread.is_some() {
                    self.far_idle(conn, now);
                }
            }
        }
    }

    /// Queues a session to run its buffered input when the shard settles,
    /// once however many of its replies arrive before then (a batch of
    /// answers from another shard finishes a command per reply).
    fn queue_run(&mut self, conn: u32) {
        let session = &mut self.sessions[conn as usize];
        if !session.queued {
            session.queued = true;
            self.runnable.push_back(conn);
        }
    }

    /// Runs a session's buffered input as far as it goes.
    fn run(&mut self, conn: u32, now: Nanos) {
        let mut input = std::mem::take(&mut self.sessions[conn as usize].pending);
        let used = self.process(conn, input.bytes(), now);
        let session = &mut self.sessions[conn as usize];
        if session.closing {
            return;
        }
        debug_assert!(session.pending.is_empty());
        input.consume(used);
        session.pending = input;
    }

    /// Consumes as much of `input` as the session's state allows; returns
    /// the number of bytes used.
    fn process(&mut self, conn: u32, input: &[u8], now: Nanos) -> usize {
        let mut pos = 0;
        let start_len = self.sessions[conn as usize].out.len();
        self.sessions[conn as usize].stalled = false;
        // No other session's replies change while this one runs commands.
        let budget_left = self.budget_left(&self.sessions[conn as usize]);
        // The rings to other cores are full (see `Shard::set_mail_blocked`):
        // new commands wait, as the ones beyond a turn's budget do.
        let mail_blocked = self.mail_blocked();
        loop {
            let session = &self.sessions[conn as usize];
            // A line parsed to decide whether it may be pipelined, run as
            // parsed.
            let mut parsed = None;
            if !session.runnable() {
                // A session among several shards may send the next command
                // to the shard it is waiting on (see `spread`).
                if !session.awaiting || session.blocked || session.closing {
                    break;
                }
                match self.may_pipeline(conn, &input[pos..]) {
                    spread::Pipeline::No => break,
                    spread::Pipeline::Body => {}
                    spread::Pipeline::Line(cmd) => parsed = Some(cmd),
                }
            }
            let session = &mut self.sessions[conn as usize];
            let rest = &input[pos..];
            let over_high_mark = session.over_high_mark(budget_left);
            match &mut session.mode {
                Mode::Line if over_high_mark && !rest.is_empty() => {
                    session.stalled = true;
                    break;
                }
                Mode::Line => match scan_line(rest) {
                    LineScan::Line(_) if mail_blocked || !session.take_command_budget(self.turn) => {
                        if !session.carried {
                            session.carried = true;
                            self.carried.push_back(conn);
                        }
                        break;
                    }
                    LineScan::Line(_) if session.make_room().is_err() => {
                        // Not even room for OUT_OF_MEMORY.
                        self.kill(conn, now);
                        break;
                    }
                    LineScan::Line(len) => {
                        pos += len + 2;
                        match parsed.take() {
                            Some(cmd) => self.command(conn, &rest[..len], Some(Ok(cmd)), now),
                            None => self.command(conn, &rest[..len], None, now),
                        }
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
            self.recount(conn);
            self.mark_dirty(conn);
        }
        pos
    }

    /// Brings the shard's count of reply text held up to date with one
    /// session's.
    fn recount(&mut self, conn: u32) {
        let session = &mut self.sessions[conn as usize];
        let held = session.text_held();
        self.text_held = self.text_held - session.text_counted + held;
        session.text_counted = held;
    }

    /// What is left of the shard's reply text budget for `session`, which
    /// may hold its own text and this: nothing while memory is short.
    fn budget_left(&self, session: &Session) -> usize {
        if memory::is_short() {
            return 0;
        }
        OUTPUT_TEXT_BUDGET_BYTES.saturating_sub(self.text_held - session.text_counted)
    }

    /// Reply text held by all sessions; see [`OUTPUT_TEXT_BUDGET_BYTES`].
    pub fn text_held(&self) -> usize {
        self.text_held
    }

    /// Checks the count of reply text held against every session; for
    /// tests.
    #[cfg(test)]
    fn check_text_held(&self) {
        let mut sum = 0;
        for (_, session) in self.sessions.iter() {
            assert_eq!(session.text_counted, session.text_held(), "a session's text held, as counted");
            sum += session.text_counted;
        }
        assert_eq!(sum, self.text_held);
    }

    fn finish_put(&mut self, conn: u32, put: PendingPut, now: Nanos) {
        let before = self.log_mark(conn);
        self.insert_put(conn, put, now);
        self.hold_if_recorded(conn, before);
    }

    fn insert_put(&mut self, conn: u32, put: PendingPut, now: Nanos) {
        let now = self.command_time(now);
        let body = put.body.expect("a complete put has its body").finish();
        let session = &mut self.sessions[conn as usize];
        if put.trailer != *b"\r\n" {
            if session.awaiting {
                // Replies owed by a shard come first (see `spread`).
                return self.far_local(conn, reply::EXPECTED_CRLF);
            }
            session.out.push(reply::EXPECTED_CRLF);
            return;
        }
        let client = session.client.expect("running session without a client");
        let request = Request::Put(request::Put {
            id: put.id,
            created_at: put.created_at,
            pri: put.pri,
            delay_s: put.delay_s,
            ttr_s: put.ttr_s,
            body,
        });
        if self.spread.is_some() {
            let Request::Put(put) = request else { unreachable!() };
            return self.far_put(conn, put);
        }
        let answer = request::execute(&mut self.engine, client, request, now);
        self.answer(conn, answer, now);
    }

    /// Runs one command line.
    /// Runs one command line; `parsed` is the line parsed already, if it
    /// was.
    fn command(&mut self, conn: u32, line: &[u8], parsed: Option<Result<Command<'_>, ParseError>>, now: Nanos) {
        let before = self.log_mark(conn);
        self.run_command(conn, line, parsed, now);
        self.hold_if_recorded(conn, before);
    }

    fn run_command(&mut self, conn: u32, line: &[u8], parsed: Option<Result<Command<'_>, ParseError>>, now: Nanos) {
        let now = self.command_time(now);
        let session = &mut self.sessions[conn as usize];
        let client = session.client.expect("running session without a client");
        // `--strict` knows beanstalkd's commands only.
        let cmd = match parsed.unwrap_or_else(|| command::parse_with(line, !self.info.strict)) {
            Ok(cmd) => cmd,
            Err(ParseError::BadFormat) => return session.out.push(reply::BAD_FORMAT),
            Err(ParseError::UnknownCommand) => return session.out.push(reply::UNKNOWN_COMMAND),
        };
        if self.info.verbosity >= 2 {
            println!("<{} command {}", session.label, String::from_utf8_lossy(line));
        }
        // Every command goes through the router, in every build. A shard
        // among several sends everything but the put line and the
        // connection's own state to its owners as messages (see `spread`).
        // A shard alone must own what every command touches; a command for
        // another one would be answered wrongly, so it stops the server
        // instead (it cannot happen with one shard).
        let config = self.engine.config();
        if self.spread.is_some() {
            if !matches!(cmd, Command::Put { .. } | Command::Quit | Command::ListTubeUsed | Command::ListTubesWatched) {
                return self.far_command(conn, cmd, now);
            }
        } else {
            match route::owner(route::target(&cmd), &session.used, config.shards) {
                Some(owner) => {
                    assert_eq!(owner.0, config.shard, "a command for shard {} reached shard {}", owner.0, config.shard)
                }
                None => assert_eq!(config.shards, 1, "a command spanning shards needs a shard of several"),
            }
        }

        use Command as C;
        let mut staged = None;
        let request = match cmd {
            C::Put { pri, delay_s, ttr_s, size, trailing_garbage } => {
                let engine = &mut self.engine;
                engine.count(Op::Put);
                // JOB_TOO_BIG comes before the trailing-garbage check, and
                // the body is read and thrown away before the reply.
                let body_bytes = u64::from(size) + 2;
                if u64::from(size) > self.info.max_job_size {
                    session.mode = Mode::Discard { remaining: body_bytes, reply: reply::JOB_TOO_BIG };
                    return;
                }
                if trailing_garbage {
                    return session.out.push(reply::BAD_FORMAT);
                }
                engine.set_producer(client);
                self.figures.producers += u64::from(!session.producer);
                session.producer = true;
                // While memory is short, a body is tried only out of what
                // has been freed beyond what the reserve lacks.
                let body = if memory::room_for(size as usize) { BodyBuilder::try_new(size as usize) } else { None };
                let Some(body) = body else {
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
                return;
            }
            C::Quit => return self.close(ConnId(conn), now),
            C::Peek(id) => Request::Peek(id),
            C::PeekReady => Request::PeekReady,
            C::PeekDelayed => Request::PeekDelayed,
            C::PeekBuried => Request::PeekBuried,
            C::Reserve | C::ReserveWithTimeout(_) => {
                self.figures.workers += u64::from(!session.worker);
                session.worker = true;
                Request::Reserve(if let C::ReserveWithTimeout(t) = cmd { Some(t) } else { None })
            }
            C::ReserveJob(id) => Request::ReserveJob(id),
            C::Delete(id) => Request::Delete(id),
            C::Release { id, pri, delay_s } => Request::Release { id, pri, delay_s },
            C::Bury { id, pri } => Request::Bury { id, pri },
            C::Kick(bound) => Request::Kick(bound),
            C::KickJob(id) => Request::KickJob(id),
            C::Touch(id) => Request::Touch(id),
            C::StatsJob(id) => Request::StatsJob(id),
            C::StatsTube(name) => Request::StatsTube(name),
            C::Stats => Request::Stats,
            C::Use(name) | C::Watch(name) => {
                // The session's copy of the name first (and room for it in
                // the watch list): without it the engine is not asked, and
                // nothing changes.
                let watch = matches!(cmd, C::Watch(_));
                let room = if watch { memory::attempt(|| session.watched.try_reserve(1)) } else { Ok(()) };
                match room.and_then(|()| session::tube_name(name)) {
                    Ok(owned) => staged = Some(owned),
                    Err(OutOfMemory) => {
                        self.engine.count(if watch { Op::Watch } else { Op::Use });
                        return session.out.push(reply::OUT_OF_MEMORY);
                    }
                }
                if watch { Request::Watch(name) } else { Request::Use(name) }
            }
            C::Ignore(name) => Request::Ignore(name),
            C::ListTubesWatched => {
                // The connection's own state: counted by its core's engine,
                // answered from the session.
                self.engine.count(Op::ListTubesWatched);
                let list = request::names(session.watched.len(), session.watched.iter().map(|n| &**n));
                return self.answer(conn, list, now);
            }
            C::ListTubeUsed => {
                self.engine.count(Op::ListTubeUsed);
                return reply::using(&mut session.out, &session.used);
            }
            C::ListTubes => Request::ListTubes,
            C::PauseTube { name, delay_s } => Request::PauseTube { name, delay_s },
            C::ClearTube { name, states } => Request::ClearTube { name, states },
            C::ListJobs { name, state, after, count } => Request::ListJobs { name, state, after, count },
        };
        let mut answer = request::execute(&mut self.engine, client, request, now);
        if let Reply::Stats(figures) = &mut answer {
            self.connection_figures(&mut figures.0);
        }
        self.follow(conn, &cmd, &answer, staged);
        self.answer(conn, answer, now);
    }

    /// Brings the session's own state in line with what the engine did:
    /// the used tube and the watch list (`staged` is the name copied for a
    /// `use` or `watch`).
    fn follow(&mut self, conn: u32, cmd: &Command<'_>, answer: &Reply, staged: Option<session::TubeName>) {
        let session = &mut self.sessions[conn as usize];
        match (cmd, answer, staged) {
            (Command::ReserveJob(_), Reply::Reserved(_), _) => {
                self.figures.workers += u64::from(!session.worker);
                session.worker = true;
            }
            (Command::Use(_), Reply::Using(_), Some(name)) => session.used = name,
            (Command::Watch(_), Reply::Watching(_), Some(name)) if !session.watched.contains(&name) => {
                session.watched.push(name)
            }
            (Command::Ignore(name), Reply::Watching(_), _) => {
                if let Some(i) = session.watched.iter().position(|w| w == name) {
                    session.watched.swap_remove(i);
                }
            }
            _ => {}
        }
        if let Reply::Watching(n) = answer {
            debug_assert_eq!(*n, session.watched.len(), "the session's watch list and the engine's");
        }
    }

    /// This core's part of `stats`: the engine's figures with the sessions'
    /// connection figures, as `stats` merges them (for the metrics).
    pub fn server_stats(&self) -> ServerStats {
        let mut stats = self.engine.stats();
        self.connection_figures(&mut stats);
        stats
    }

    /// Writes this core's connection figures into its part of `stats`:
    /// connections, producers, workers and waiting clients are counted by
    /// the sessions, which know them whichever shard their commands went
    /// to (an engine knows only the clients that reached it).
    fn connection_figures(&self, stats: &mut ServerStats) {
        let Figures { connections, producers, workers, waiting } = self.figures;
        debug_assert_eq!(self.figures, self.count_figures(), "the figures kept and the sessions");
        let engine = (stats.connections, stats.producers, stats.workers, stats.waiting, stats.total_connections);
        stats.connections = connections;
        stats.producers = producers;
        stats.workers = workers;
        stats.total_connections = self.total_connections;
        // `current-waiting` stays the engine's: a waiter that a put in this
        // same batch has just served is still blocked here until its answer
        // is delivered, but it waits no more, and beanstalkd no longer
        // counts it (found by the session_framing fuzz target).
        let _ = waiting;
        if self.engine.config().shards == 1 {
            debug_assert_eq!(
                engine,
                (connections, producers, workers, stats.waiting, self.total_connections),
                "the sessions' connection figures and the engine's"
            );
        }
    }

    /// The connection figures counted from the sessions, which is what the
    /// figures kept must always be (checked in debug builds).
    fn count_figures(&self) -> Figures {
        let mut f = Figures::default();
        for (_, session) in self.sessions.iter().filter(|(_, s)| s.client.is_some()) {
            f.connections += 1;
            f.producers += u64::from(session.producer);
            f.workers += u64::from(session.worker);
            f.waiting += u64::from(session.blocked);
        }
        f
    }

    /// Writes an engine's reply into a session's output.
    fn answer(&mut self, conn: u32, answer: Reply, now: Nanos) {
        let session = &mut self.sessions[conn as usize];
        let out = &mut session.out;
        match answer {
            Reply::Word(word) => out.push(word_line(word)),
            Reply::Inserted(id) => reply::number_line(out, b"INSERTED", id),
            Reply::KickedCount(n) => reply::number_line(out, b"KICKED", u64::from(n)),
            Reply::Watching(n) => reply::number_line(out, b"WATCHING", n as u64),
            Reply::Using(name) => reply::using(out, &name),
            Reply::Reserved(job) => reply::reserved(out, &job),
            Reply::Found(job) => reply::found(out, &job),
            Reply::Waiting if session.eof => {
                // A client that half-closed is not left waiting: beanstalkd
                // answers it at once.
                let client = session.client.expect("running session without a client");
                self.engine.cancel_wait(client);
                out.push(reply::TIMED_OUT);
            }
            Reply::Waiting => {
                session.blocked = true;
                self.figures.waiting += 1;
            }
            Reply::JobStats(stats) => {
                document(out, &mut self.scratch, DOCUMENT_BYTES_MAX, |d| yaml::job_stats(d, &stats))
            }
            Reply::TubeStats(stats) => {
                document(out, &mut self.scratch, DOCUMENT_BYTES_MAX, |d| yaml::tube_stats(d, &stats))
            }
            Reply::Stats(figures) => {
                let (stats, log) = *figures;
                let info = &self.info;
                let (utime, stime) = (info.cpu_times)();
                let extra: Vec<(&str, &str)> = info.extra.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let process = ProcessStats {
                    max_job_size: info.max_job_size,
                    pid: info.pid,
                    utime,
                    stime,
                    uptime_s: now.saturating_sub(info.started_at) / crate::engine::NANOS_PER_SEC,
                    binlog: match log {
                        Some(l) => BinlogStats {
                            oldest_index: l.oldest_seq,
                            current_index: l.current_seq,
                            records_migrated: l.records_migrated,
                            records_written: l.records_written,
                            max_size: info.binlog_max_size,
                        },
                        None => BinlogStats { max_size: info.binlog_max_size, ..BinlogStats::default() },
                    },
                    instance_id: &info.instance_id,
                    hostname: &info.hostname,
                    os: &info.os,
                    platform: &info.platform,
                    extra: &extra,
                };
                document(out, &mut self.scratch, DOCUMENT_BYTES_MAX, |d| yaml::stats(d, &stats, &process));
            }
            Reply::Tubes(names) => {
                let size = list_bytes(names.iter().map(String::as_str));
                document(out, &mut self.scratch, size, |d| yaml::list(d, names.iter().map(String::as_str)));
            }
            Reply::Cleared(n) => reply::number_line(out, b"CLEARED", n),
            Reply::JobIds(ids) => document(out, &mut self.scratch, yaml::ids_bytes(&ids), |d| yaml::ids(d, &ids)),
        }
    }
}

/// The line of a fixed reply.
fn word_line(word: Word) -> &'static [u8] {
    match word {
        Word::BadFormat => reply::BAD_FORMAT,
        Word::OutOfMemory => reply::OUT_OF_MEMORY,
        Word::InternalError => reply::INTERNAL_ERROR,
        Word::Draining => reply::DRAINING,
        Word::NotFound => reply::NOT_FOUND,
        Word::DeadlineSoon => reply::DEADLINE_SOON,
        Word::TimedOut => reply::TIMED_OUT,
        Word::Deleted => reply::DELETED,
        Word::Released => reply::RELEASED,
        Word::Buried => reply::BURIED,
        Word::Kicked => reply::KICKED,
        Word::Touched => reply::TOUCHED,
        Word::NotIgnored => reply::NOT_IGNORED,
        Word::Paused => reply::PAUSED,
    }
}

/// Writes a document reply (`OK <bytes>` and the YAML), its text first
/// built in `scratch` with room for `size` bytes made beforehand; answers
/// OUT_OF_MEMORY when that room, or the room for the reply, cannot be had.
///
/// Outside a shortage, the room for a document of at most
/// [`DOCUMENT_BYTES_MAX`] is taken infallibly, so that `stats` still
/// answers when memory has just run out (spending the reserve if need be,
/// which makes memory short); larger ones, lists of many tubes, are always
/// made room for fallibly.
fn document(out: &mut Output, scratch: &mut Vec<u8>, size: usize, write: impl FnOnce(&mut Vec<u8>)) {
    let fallibly = size > DOCUMENT_BYTES_MAX || memory::is_short();
    scratch.clear();
    if fallibly {
        if memory::try_reserve(scratch, size).is_err() {
            return out.push(reply::OUT_OF_MEMORY);
        }
    } else {
        scratch.reserve(size);
    }
    write(scratch);
    debug_assert!(scratch.len() <= size, "a document larger than its room");
    if fallibly && out.try_reserve(scratch.len() + DOCUMENT_HEADER_BYTES_MAX).is_err() {
        return out.push(reply::OUT_OF_MEMORY);
    }
    reply::ok_document(out, scratch);
}

/// The size of `yaml::list` of these names: `---\n`, then `- <name>\n` each.
fn list_bytes<'a>(names: impl Iterator<Item = &'a str>) -> usize {
    4 + names.map(|name| name.len() + 3).sum::<usize>()
}

#[cfg(test)]
mod tests;
