//! Prometheus metrics (`--metrics ADDR`): what each core publishes, and the
//! thread that serves `GET /metrics` from it.
//!
//! # Shape
//! Each core's loop owns a [`Publisher`] and shares one [`CoreSlot`] with
//! the metrics thread. At the end of a turn the publisher writes a
//! [`CoreSnapshot`] of its shard into the slot, at most every
//! [`METRICS_PUBLISH_MS`] and within that time of any turn (a loop that has
//! nothing else to do wakes for the publish it owes, see
//! [`Publisher::next_due`]), so a snapshot is never more than about that
//! much behind the shard, and an idle shard costs nothing. A scrape
//! ([`Exporter::render`]) takes every core's latest snapshot and merges
//! them: counters summed, tubes merged by name, per-core figures labelled
//! with their core. With one core there is one slot; with N cores (one loop
//! and one shard per core) there will be N, and nothing here changes.
//!
//! A scrape does not ask the cores for a fresh snapshot: an idle core has
//! published its last change already, and a busy one publishes within
//! [`METRICS_PUBLISH_MS`] anyway, so a request would gain at most that
//! delay, for a wake-up descriptor and an operation more in every loop.
//!
//! # Invariants
//! * A loop never waits for the metrics thread: it only ever `try_lock`s
//!   its slot, and when the scrape holds it (while it copies the snapshot
//!   out), it tries again a millisecond later ([`METRICS_RETRY_MS`]).
//! * The metrics thread only reads slots; it never touches a shard.
//! * Names follow davidtannock/beanstalkd_exporter (see [`render`]), so
//!   dashboards and alerts written for that exporter keep working.
//!
//! # What it must never do
//! Panic (the release build aborts on a panic, so a panic here would stop
//! the server, which the metrics must never do), block a loop, or cost a
//! loop more than one snapshot per [`METRICS_PUBLISH_MS`]. What the
//! metrics thread cannot do (bind or start, accept, answer, allocate while
//! memory is short) it reports, and the server goes on.

pub mod histogram;
mod http;
pub mod render;

use std::sync::{Arc, Mutex, TryLockError};
use std::time::{Duration, Instant};

pub use histogram::Histogram;
pub use http::{MetricsServer, parse_addr};
pub use render::ProcessInfo;

use crate::engine::{Nanos, ServerStats, TubeStats};
use crate::shard::Shard;
use crate::wal::log::LogStats;

/// The longest a core's snapshot may lag behind its shard, in milliseconds,
/// and the least time between two of its snapshots. Prometheus scrapes
/// every 15 to 60 s, so a quarter of a second is invisible to it; and at
/// four snapshots a second, a shard with 10,000 tubes spends about
/// 0.1 ms a second choosing and copying the busiest of them.
pub const METRICS_PUBLISH_MS: u64 = 250;

/// How soon a core tries again when a scrape held its slot.
pub const METRICS_RETRY_MS: u64 = 1;

/// The most tubes exported unless `--metrics-tubes-max` says otherwise:
/// each tube is 13 series, so 1,000 tubes are 13,000, about what one
/// Prometheus target is usually allowed. Beyond it, the tubes with the
/// most jobs are exported, a line in the log says the cap was reached, and
/// `runnerbean_metrics_tubes_omitted` says how many were left out.
pub const METRICS_TUBES_MAX_DEFAULT: usize = 1000;

/// What one core published: its shard's figures and its loop's.
#[derive(Clone, Debug, Default)]
pub struct CoreSnapshot {
    pub core: u32,
    /// When it was taken; `None` until the core's first snapshot.
    pub at: Option<Instant>,
    /// The shard's part of `stats`, connection figures included.
    pub stats: ServerStats,
    /// The shard's log, with `-b`.
    pub log: Option<LogStats>,
    /// `stats-tube` of the shard's busiest tubes, most jobs first.
    pub tubes: Vec<TubeStats>,
    /// Tubes of the shard in all.
    pub tubes_total: u64,
    /// Time the loop spent working (not waiting for events), in all.
    pub busy_ns: u64,
    /// Turns of the loop, in all.
    pub turns: u64,
    /// Connections the loop has open (closing ones included).
    pub connections: u64,
    /// Reply text the core's sessions hold, waiting or being sent.
    pub reply_text_bytes: u64,
    /// With `-b`: how long the log's writes and syncs took.
    pub wal_write: Histogram,
    pub wal_sync: Histogram,
}

/// Where a core's loop publishes its snapshot for the metrics thread.
#[derive(Debug)]
pub struct CoreSlot {
    snapshot: Mutex<CoreSnapshot>,
}

impl CoreSlot {
    pub fn new(core: u32) -> Arc<CoreSlot> {
        Arc::new(CoreSlot { snapshot: Mutex::new(CoreSnapshot { core, ..CoreSnapshot::default() }) })
    }

    /// A copy of the latest snapshot. The metrics thread may wait here for
    /// a publish in progress; a core never does.
    pub fn read(&self) -> CoreSnapshot {
        // A poisoned lock (a panic while it was held, which only a test's
        // unwinding build allows) still holds a whole snapshot.
        self.snapshot.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

/// A core's loop's side of its slot.
pub struct Publisher {
    slot: Arc<CoreSlot>,
    tubes_max: usize,
    /// Kept for [`crate::engine::Engine::busiest_tubes`].
    scratch: Vec<(u64, u32)>,
    busy_ns: u64,
    turns: u64,
    /// A turn ran since the last snapshot.
    owed: bool,
    /// When the next snapshot may be taken.
    due_at: Option<Instant>,
}

/// The log's latencies, from the loop's part of the log.
#[derive(Clone, Copy)]
pub struct WalLatencies<'a> {
    pub write: &'a Histogram,
    pub sync: &'a Histogram,
}

impl Publisher {
    pub fn new(slot: Arc<CoreSlot>, tubes_max: usize) -> Publisher {
        Publisher { slot, tubes_max, scratch: Vec::new(), busy_ns: 0, turns: 0, owed: true, due_at: None }
    }

    /// The end of a turn that started working at `busy_from`: counts the
    /// turn, and publishes a snapshot if one is due.
    pub fn turn_end(
        &mut self,
        busy_from: Instant,
        shard: &Shard,
        connections: usize,
        wal: Option<WalLatencies<'_>>,
        now: Nanos,
    ) {
        let end = Instant::now();
        self.busy_ns += end.saturating_duration_since(busy_from).as_nanos() as u64;
        self.turns += 1;
        self.owed = true;
        if self.due_at.is_some_and(|at| end < at) {
            return;
        }
        let mut slot = match self.slot.snapshot.try_lock() {
            Ok(slot) => slot,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => {
                self.due_at = Some(end + Duration::from_millis(METRICS_RETRY_MS));
                return;
            }
        };
        let engine = shard.engine();
        slot.at = Some(end);
        slot.stats = shard.server_stats();
        slot.log = engine.log().map(|l| l.stats());
        slot.tubes_total = engine.busiest_tubes(self.tubes_max, now, &mut slot.tubes, &mut self.scratch);
        slot.busy_ns = self.busy_ns;
        slot.turns = self.turns;
        slot.connections = connections as u64;
        slot.reply_text_bytes = shard.text_held() as u64;
        if let Some(wal) = wal {
            slot.wal_write = *wal.write;
            slot.wal_sync = *wal.sync;
        }
        drop(slot);
        self.owed = false;
        self.due_at = Some(end + Duration::from_millis(METRICS_PUBLISH_MS));
    }

    /// When the loop must run a turn even with nothing else to do: a
    /// snapshot is owed for what the last turns did.
    pub fn next_due(&self) -> Option<Instant> {
        if self.owed { Some(self.due_at.unwrap_or_else(Instant::now)) } else { None }
    }
}

/// The metrics thread's view of every core, and what it renders.
pub struct Exporter {
    slots: Vec<Arc<CoreSlot>>,
    info: ProcessInfo,
    tubes_max: usize,
    state: Mutex<render::ScrapeState>,
}

impl Exporter {
    pub fn new(slots: Vec<Arc<CoreSlot>>, info: ProcessInfo, tubes_max: usize) -> Exporter {
        Exporter { slots, info, tubes_max, state: Mutex::new(render::ScrapeState::default()) }
    }

    /// The body of `GET /metrics`: every core's latest snapshot, merged,
    /// in the Prometheus text format.
    pub fn render(&self) -> String {
        let snapshots: Vec<CoreSnapshot> = self.slots.iter().map(|slot| slot.read()).collect();
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (text, cut) = render::render(&snapshots, &self.info, self.tubes_max, &mut state);
        if let Some(line) = cut {
            eprintln!("runnerbean: {line}");
        }
        text
    }
}
