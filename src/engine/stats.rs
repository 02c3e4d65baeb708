//! Counters and the snapshots behind `stats`, `stats-tube` and `stats-job`.
//!
//! The engine fills these plain structs; `protocol::yaml` turns them into
//! the exact YAML documents beanstalkd sends. Keeping numbers and text apart
//! lets several shards' snapshots be merged before formatting.

/// Commands with a counter. The order is the order of the `cmd-*` keys in
/// `stats`; `ReserveJob` and `KickJob` are counted but never shown, as in
/// beanstalkd, and so are runnerbean's own `ClearTube` and `ListJobs`
/// (the metrics exporter shows all four).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Put,
    Peek,
    PeekReady,
    PeekDelayed,
    PeekBuried,
    Reserve,
    ReserveWithTimeout,
    Delete,
    Release,
    Use,
    Watch,
    Ignore,
    Bury,
    Kick,
    Touch,
    Stats,
    StatsJob,
    StatsTube,
    ListTubes,
    ListTubeUsed,
    ListTubesWatched,
    PauseTube,
    ReserveJob,
    KickJob,
    ClearTube,
    ListJobs,
}

pub const OP_COUNT: usize = Op::ListJobs as usize + 1;

/// Ops in `stats` key order with their key names.
pub const SHOWN_OPS: [(Op, &str); 22] = [
    (Op::Put, "cmd-put"),
    (Op::Peek, "cmd-peek"),
    (Op::PeekReady, "cmd-peek-ready"),
    (Op::PeekDelayed, "cmd-peek-delayed"),
    (Op::PeekBuried, "cmd-peek-buried"),
    (Op::Reserve, "cmd-reserve"),
    (Op::ReserveWithTimeout, "cmd-reserve-with-timeout"),
    (Op::Delete, "cmd-delete"),
    (Op::Release, "cmd-release"),
    (Op::Use, "cmd-use"),
    (Op::Watch, "cmd-watch"),
    (Op::Ignore, "cmd-ignore"),
    (Op::Bury, "cmd-bury"),
    (Op::Kick, "cmd-kick"),
    (Op::Touch, "cmd-touch"),
    (Op::Stats, "cmd-stats"),
    (Op::StatsJob, "cmd-stats-job"),
    (Op::StatsTube, "cmd-stats-tube"),
    (Op::ListTubes, "cmd-list-tubes"),
    (Op::ListTubeUsed, "cmd-list-tube-used"),
    (Op::ListTubesWatched, "cmd-list-tubes-watched"),
    (Op::PauseTube, "cmd-pause-tube"),
];

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCounts([u64; OP_COUNT]);

impl OpCounts {
    pub fn bump(&mut self, op: Op) {
        self.0[op as usize] += 1;
    }

    pub fn get(&self, op: Op) -> u64 {
        self.0[op as usize]
    }

    pub fn merge(&mut self, other: &OpCounts) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a += b;
        }
    }
}

/// The shard's share of the `stats` document (everything but process facts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    pub urgent: u64,
    pub ready: u64,
    pub reserved: u64,
    pub delayed: u64,
    pub buried: u64,
    pub ops: OpCounts,
    pub job_timeouts: u64,
    pub total_jobs: u64,
    pub tubes: u64,
    pub connections: u64,
    pub producers: u64,
    pub workers: u64,
    pub waiting: u64,
    pub total_connections: u32,
    pub draining: bool,
}

impl ServerStats {
    /// Adds another shard's share: counters summed, drain mode if any
    /// shard drains.
    pub fn merge(into: &mut ServerStats, s: &ServerStats) {
        into.urgent += s.urgent;
        into.ready += s.ready;
        into.reserved += s.reserved;
        into.delayed += s.delayed;
        into.buried += s.buried;
        into.ops.merge(&s.ops);
        into.job_timeouts += s.job_timeouts;
        into.total_jobs += s.total_jobs;
        into.tubes += s.tubes;
        into.connections += s.connections;
        into.producers += s.producers;
        into.workers += s.workers;
        into.waiting += s.waiting;
        into.total_connections = into.total_connections.wrapping_add(s.total_connections);
        into.draining |= s.draining;
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TubeStats {
    pub name: String,
    pub urgent: u64,
    pub ready: u64,
    pub reserved: u64,
    pub delayed: u64,
    pub buried: u64,
    pub total_jobs: u64,
    pub using: u64,
    pub watching: u64,
    pub waiting: u64,
    pub deletes: u64,
    pub pauses: u64,
    pub pause_s: u64,
    pub pause_left_s: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobStats {
    pub id: u64,
    pub tube: String,
    pub state: &'static str,
    pub pri: u32,
    pub age_s: i64,
    pub delay_s: u32,
    pub ttr_s: u32,
    pub time_left_s: i64,
    /// The log file holding the job's latest full record; 0 without a log.
    pub file: u64,
    pub reserves: u32,
    pub timeouts: u32,
    pub releases: u32,
    pub buries: u32,
    pub kicks: u32,
}
