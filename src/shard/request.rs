//! What a command asks of the engine that owns what it touches
//! ([`Request`]), and what the engine answers ([`Reply`]): the one seam
//! between a connection's protocol session and the queue state.
//!
//! A session parses a command line, does what belongs to the connection
//! alone (the put line's checks and its body, `quit`), and turns the rest
//! into a request; [`execute`] runs it on an engine and returns a reply as a
//! value; the session encodes that value into its output. Nothing in
//! between writes bytes or looks at a session, so a request can be run on
//! another core's engine and its reply carried back, and replies from
//! several engines can be merged (counters summed, lists joined) before
//! they are encoded.
//!
//! # Invariants
//! * [`execute`] counts the command (the `cmd-*` counters) exactly once,
//!   as beanstalkd does, before anything can fail.
//! * A reply is encoded once, in the order the commands ran: the engine
//!   never answers out of turn except through [`Reply::Waiting`], whose
//!   answer comes later as a wake.

use crate::engine::{Body, Change, ClientId, Engine, JobRef, JobStats, Nanos, Op, PutOutcome, ReserveOutcome};
use crate::engine::{JobState, ServerStats, StateSet, TubeStats};
use crate::memory::{self, OutOfMemory};
use crate::wal::log::LogStats;

/// A put whose body has arrived, ready to be stored.
#[derive(Debug)]
pub struct Put {
    pub id: u64,
    /// When the put line was accepted.
    pub created_at: Nanos,
    pub pri: u32,
    pub delay_s: u32,
    pub ttr_s: u32,
    pub body: Body,
}

/// A command for an engine, with everything it needs.
#[derive(Debug)]
pub enum Request<'a> {
    Put(Put),
    Peek(u64),
    PeekReady,
    PeekDelayed,
    PeekBuried,
    /// `reserve` (`None`) and `reserve-with-timeout`.
    Reserve(Option<u32>),
    ReserveJob(u64),
    Delete(u64),
    Release {
        id: u64,
        pri: u32,
        delay_s: u32,
    },
    Bury {
        id: u64,
        pri: u32,
    },
    Kick(u32),
    KickJob(u64),
    Touch(u64),
    StatsJob(u64),
    StatsTube(&'a str),
    Stats,
    Use(&'a str),
    Watch(&'a str),
    Ignore(&'a str),
    ListTubes,
    /// `pause-tube`; `name` is `None` when it is not a valid tube name
    /// (counted, then BAD_FORMAT).
    PauseTube {
        name: Option<&'a str>,
        delay_s: u32,
    },
    /// runnerbean's own `clear-tube`.
    ClearTube {
        name: &'a str,
        states: StateSet,
    },
    /// runnerbean's own `list-jobs`.
    ListJobs {
        name: &'a str,
        state: JobState,
        after: u64,
        count: u32,
    },
}

/// Words of the replies that are a fixed line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Word {
    BadFormat,
    OutOfMemory,
    InternalError,
    Draining,
    NotFound,
    DeadlineSoon,
    TimedOut,
    Deleted,
    Released,
    Buried,
    Kicked,
    Touched,
    NotIgnored,
    Paused,
}

/// An engine's answer to a request, as a value.
#[derive(Debug)]
pub enum Reply {
    Word(Word),
    Inserted(u64),
    /// `KICKED <count>`.
    KickedCount(u32),
    /// `WATCHING <count>`.
    Watching(usize),
    /// `USING <tube>`.
    Using(String),
    Reserved(JobRef),
    Found(JobRef),
    /// The client waits; its answer comes later as a wake.
    Waiting,
    /// Boxed, as the two stats documents are, so that a reply (which
    /// crosses between cores in every answer) stays a few words: at 128
    /// bytes inline they made each message between cores 168 bytes, and
    /// copying messages took a tenth of `--cores 2`'s CPU.
    JobStats(Box<JobStats>),
    TubeStats(Box<TubeStats>),
    /// The engine's share of `stats`, and its log's figures.
    Stats(Box<(ServerStats, Option<LogStats>)>),
    /// A YAML list of tube names (`list-tubes`, `list-tubes-watched`).
    Tubes(Vec<String>),
    /// `CLEARED <count>`.
    Cleared(u64),
    /// A YAML list of job ids (`list-jobs`).
    JobIds(Vec<u64>),
}

impl From<Word> for Reply {
    fn from(word: Word) -> Reply {
        Reply::Word(word)
    }
}

/// Runs `request` for client `c` on `engine` at `now`.
pub fn execute(engine: &mut Engine, c: ClientId, request: Request<'_>, now: Nanos) -> Reply {
    run(engine, c, request, now, true)
}

/// Runs `request` without counting it: for a shard running a command that
/// another core parsed and counted (a command on an id the connection has
/// not seen is tried on every shard, yet counted once).
pub fn execute_uncounted(engine: &mut Engine, c: ClientId, request: Request<'_>, now: Nanos) -> Reply {
    run(engine, c, request, now, false)
}

/// Counts the command when `count` (constant at each call, so the
/// single-shard path is exactly what it was).
#[inline(always)]
fn tally(engine: &mut Engine, count: bool, op: Op) {
    if count {
        engine.count(op);
    }
}

#[inline(always)]
fn run(engine: &mut Engine, c: ClientId, request: Request<'_>, now: Nanos, count: bool) -> Reply {
    use Request as R;
    match request {
        R::Put(put) => {
            // Counted when its line was accepted.
            match engine.put(c, put.id, put.created_at, put.pri, put.delay_s, put.ttr_s, put.body, now) {
                PutOutcome::Inserted => Reply::Inserted(put.id),
                PutOutcome::Draining => Word::Draining.into(),
                PutOutcome::NoLogSpace | PutOutcome::OutOfMemory => Word::OutOfMemory.into(),
            }
        }
        R::Peek(id) => {
            tally(engine, count, Op::Peek);
            found(engine.peek(id))
        }
        R::PeekReady => {
            tally(engine, count, Op::PeekReady);
            found(engine.peek_ready(c))
        }
        R::PeekDelayed => {
            tally(engine, count, Op::PeekDelayed);
            found(engine.peek_delayed(c))
        }
        R::PeekBuried => {
            tally(engine, count, Op::PeekBuried);
            found(engine.peek_buried(c))
        }
        R::Reserve(timeout) => {
            tally(engine, count, if timeout.is_some() { Op::ReserveWithTimeout } else { Op::Reserve });
            match engine.reserve(c, timeout, now) {
                ReserveOutcome::Reserved(job) => Reply::Reserved(job),
                ReserveOutcome::DeadlineSoon => Word::DeadlineSoon.into(),
                ReserveOutcome::TimedOut => Word::TimedOut.into(),
                ReserveOutcome::Waiting => Reply::Waiting,
                ReserveOutcome::OutOfMemory => Word::OutOfMemory.into(),
            }
        }
        R::ReserveJob(id) => {
            tally(engine, count, Op::ReserveJob);
            match engine.reserve_job(c, id, now) {
                Some(job) => Reply::Reserved(job),
                None => Word::NotFound.into(),
            }
        }
        R::Delete(id) => {
            tally(engine, count, Op::Delete);
            yes_or_not_found(engine.delete(c, id, now), Word::Deleted)
        }
        R::Release { id, pri, delay_s } => {
            tally(engine, count, Op::Release);
            changed(engine.release(c, id, pri, delay_s, now), Word::Released, Word::OutOfMemory)
        }
        R::Bury { id, pri } => {
            tally(engine, count, Op::Bury);
            changed(engine.bury(c, id, pri, now), Word::Buried, Word::InternalError)
        }
        R::Kick(bound) => {
            tally(engine, count, Op::Kick);
            Reply::KickedCount(engine.kick(c, bound, now))
        }
        R::KickJob(id) => {
            tally(engine, count, Op::KickJob);
            yes_or_not_found(engine.kick_job(id, now), Word::Kicked)
        }
        R::Touch(id) => {
            tally(engine, count, Op::Touch);
            yes_or_not_found(engine.touch(c, id, now), Word::Touched)
        }
        R::StatsJob(id) => {
            tally(engine, count, Op::StatsJob);
            match engine.stats_job(id, now) {
                Some(stats) => Reply::JobStats(Box::new(stats)),
                None => Word::NotFound.into(),
            }
        }
        R::StatsTube(name) => {
            tally(engine, count, Op::StatsTube);
            match engine.stats_tube(name, now) {
                Some(stats) => Reply::TubeStats(Box::new(stats)),
                None => Word::NotFound.into(),
            }
        }
        R::Stats => {
            tally(engine, count, Op::Stats);
            Reply::Stats(Box::new((engine.stats(), engine.log().map(|l| l.stats()))))
        }
        R::Use(name) => {
            tally(engine, count, Op::Use);
            // A new tube while memory is short, as a put, only out of
            // what has been freed beyond what the reserve lacks.
            let refused = !engine.has_tube(name) && !memory::room_for(name.len());
            match if refused { Err(OutOfMemory) } else { engine.use_tube(c, name) } {
                Ok(()) => Reply::Using(name.to_string()),
                Err(OutOfMemory) => Word::OutOfMemory.into(),
            }
        }
        R::Watch(name) => {
            tally(engine, count, Op::Watch);
            let refused = !engine.has_tube(name) && !memory::room_for(name.len());
            match if refused { Err(OutOfMemory) } else { engine.watch(c, name) } {
                Ok(n) => Reply::Watching(n),
                Err(OutOfMemory) => Word::OutOfMemory.into(),
            }
        }
        R::Ignore(name) => {
            tally(engine, count, Op::Ignore);
            match engine.ignore(c, name) {
                Some(n) => Reply::Watching(n),
                None => Word::NotIgnored.into(),
            }
        }
        R::ListTubes => {
            tally(engine, count, Op::ListTubes);
            names(engine.tube_names().count(), engine.tube_names())
        }
        R::PauseTube { name, delay_s } => {
            // Counted before the name is validated, as beanstalkd does.
            tally(engine, count, Op::PauseTube);
            match name {
                None => Word::BadFormat.into(),
                Some(name) if engine.pause_tube(name, delay_s, now) => Word::Paused.into(),
                Some(_) => Word::NotFound.into(),
            }
        }
        R::ClearTube { name, states } => {
            tally(engine, count, Op::ClearTube);
            match engine.clear_tube(name, states, now) {
                Some(n) => Reply::Cleared(n),
                None => Word::NotFound.into(),
            }
        }
        R::ListJobs { name, state, after, count: n } => {
            tally(engine, count, Op::ListJobs);
            match engine.list_jobs(name, state, after, n as usize) {
                Some(Ok(ids)) => Reply::JobIds(ids),
                Some(Err(OutOfMemory)) => Word::OutOfMemory.into(),
                None => Word::NotFound.into(),
            }
        }
    }
}

fn found(job: Option<JobRef>) -> Reply {
    match job {
        Some(job) => Reply::Found(job),
        None => Word::NotFound.into(),
    }
}

fn yes_or_not_found(ok: bool, yes: Word) -> Reply {
    Reply::Word(if ok { yes } else { Word::NotFound })
}

/// The reply to a change of one job: `yes`, NOT_FOUND, or `no_room` when
/// the log had no room for it.
fn changed(change: Change, yes: Word, no_room: Word) -> Reply {
    Reply::Word(match change {
        Change::Done => yes,
        Change::NotFound => Word::NotFound,
        Change::NoLogSpace => no_room,
    })
}

/// The names as a list reply, or OUT_OF_MEMORY when the list cannot be
/// had (a list of many tubes is large, and every name is copied).
pub fn names<'a>(count: usize, names: impl Iterator<Item = &'a str>) -> Reply {
    let mut list = Vec::new();
    if memory::try_reserve(&mut list, count).is_err() {
        return Word::OutOfMemory.into();
    }
    for name in names {
        let mut owned = String::new();
        if memory::attempt(|| owned.try_reserve_exact(name.len())).is_err() {
            return Word::OutOfMemory.into();
        }
        owned.push_str(name);
        list.push(owned);
    }
    Reply::Tubes(list)
}
