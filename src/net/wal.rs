//! The event loop's part of the write-ahead log: once per turn, the turn's
//! records go out as one batch (group commit) through the back end's file
//! operations, the log's upkeep runs (compaction, spare segments, removal
//! of old ones), and when a batch is durable the replies that waited for
//! it are released.
//!
//! At most one file operation is in flight per lane (see `wal::flush`);
//! while a batch is written and synced, the next one fills. With `-f0`,
//! the batch after a sync may be held a moment, over several turns, for
//! the clients just answered (`wal::flush::HOLD_NS`); the loop polls
//! meanwhile (`Server::timeout`).

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;

use super::io::Io;
use crate::engine::Nanos;
use crate::metrics::{Histogram, WalLatencies};
use crate::shard::Shard;
use crate::wal::flush::{Flush, LANES, Lane, Progress, Request};

/// How often a failure to make a log segment (a full disk) is logged.
const MAKE_ERROR_LOG_NS: u64 = 10_000_000_000;

pub struct LogDriver {
    flush: Flush,
    /// The log directory, kept open for syncing new files' entries.
    _dir: OwnedFd,
    /// The file operation in flight on the back end in each lane: when it
    /// started, and whether it is a write (else a sync).
    in_flight: [Option<(Instant, bool)>; LANES],
    make_error_logged_at: Option<u64>,
    /// How long the writes and the syncs took, for the metrics.
    write_latency: Histogram,
    sync_latency: Histogram,
}

impl LogDriver {
    pub fn new(shard: &Shard, dir: OwnedFd, now: Nanos) -> LogDriver {
        let policy = shard.engine().log().expect("a shard with a log").config().sync;
        LogDriver {
            flush: Flush::new(policy, dir.as_raw_fd(), now),
            _dir: dir,
            in_flight: [None; LANES],
            make_error_logged_at: None,
            write_latency: Histogram::default(),
            sync_latency: Histogram::default(),
        }
    }

    /// The end of a turn: upkeep, then the turn's records out as one batch,
    /// then whatever file operation can start now.
    pub fn after_turn(&mut self, shard: &mut Shard, io: &mut dyn FileIo, now: Nanos) {
        shard.log_upkeep(now);
        if let Some(e) = shard.engine().log().and_then(|l| l.make_error().map(str::to_string))
            && self.make_error_logged_at.is_none_or(|at| now >= at + MAKE_ERROR_LOG_NS)
        {
            eprintln!("runnerbean: {e}; puts get OUT_OF_MEMORY until there is room");
            self.make_error_logged_at = Some(now);
        }
        self.start(shard, io, now);
    }

    fn start(&mut self, shard: &mut Shard, io: &mut dyn FileIo, now: Nanos) {
        let records = shard.engine().log().map_or(0, |l| l.filling_records());
        if self.flush.can_start(now, records)
            && let Some(batch) = shard.engine_mut().log_mut().and_then(|l| l.take_batch())
        {
            self.flush.start(batch);
        }
        while let Some((lane, request)) = self.flush.request(now) {
            debug_assert!(self.in_flight[lane.index()].is_none(), "two operations in flight in {lane:?}");
            self.in_flight[lane.index()] = Some((Instant::now(), matches!(request, Request::Write { .. })));
            // Safety: the request's memory is owned by `self.flush` until
            // `completed` is called for it.
            unsafe { io.file_op(lane, request) };
        }
    }

    /// A file operation completed.
    pub fn completed(
        &mut self,
        shard: &mut Shard,
        io: &mut dyn FileIo,
        lane: Lane,
        result: std::io::Result<usize>,
        now: Nanos,
    ) {
        if let Some((started, write)) = self.in_flight[lane.index()].take() {
            let ns = started.elapsed().as_nanos() as u64;
            if write { self.write_latency.observe(ns) } else { self.sync_latency.observe(ns) }
        }
        match self.flush.complete(lane, result, now) {
            Ok(Progress { written, synced }) => {
                let log = shard.engine_mut().log_mut().expect("a shard with a log");
                if let Some(n) = written {
                    log.written(n);
                }
                if let Some(n) = synced {
                    log.synced(n);
                }
                log.recycle_text(self.flush.take_spent());
                let durable = log.durable();
                shard.durable(durable);
            }
            Err(message) => eprintln!("runnerbean: {message}"),
        }
        self.start(shard, io, now);
    }

    /// When the log needs the loop without any other event (a timed sync,
    /// a retry).
    pub fn next_deadline(&self) -> Option<Nanos> {
        self.flush.next_deadline()
    }

    /// Whether a batch is held for records about to come (see
    /// `wal::flush::HOLD_NS`): the loop looks for them without sleeping.
    pub fn is_holding(&self) -> bool {
        self.flush.is_holding()
    }

    /// The server is stopping: sync everything written from now on, the
    /// files the log has open included.
    pub fn stopping(&mut self, shard: &mut Shard) {
        let open = shard.engine_mut().log_mut().expect("a shard with a log").stopping();
        self.flush.sync_all(open);
    }

    /// Whether everything recorded is written and synced and nothing is in
    /// flight: the process may exit.
    pub fn is_done(&self, shard: &Shard) -> bool {
        let pending = shard.engine().log().is_some_and(|l| l.has_records());
        !self.in_flight() && !pending && self.flush.is_idle()
    }

    pub fn in_flight(&self) -> bool {
        self.in_flight.iter().any(Option::is_some)
    }

    /// How long the log's file operations took so far.
    pub fn latencies(&self) -> WalLatencies<'_> {
        WalLatencies { write: &self.write_latency, sync: &self.sync_latency }
    }
}

/// The file operations a back end offers the log.
pub trait FileIo {
    /// Starts a file operation; its completion comes back as an event.
    ///
    /// # Safety
    /// The memory the request points to must stay valid until then.
    unsafe fn file_op(&mut self, lane: Lane, request: crate::wal::flush::Request);
}

impl<T: Io> FileIo for T {
    unsafe fn file_op(&mut self, lane: Lane, request: crate::wal::flush::Request) {
        // Safety: passed on with the caller's promise.
        unsafe { Io::file_op(self, lane, request) }
    }
}
