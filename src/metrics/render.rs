//! The body of `GET /metrics`: every core's snapshot merged and written in
//! the Prometheus text exposition format, version 0.0.4.
//!
//! # Names
//! The names are those of davidtannock/beanstalkd_exporter (namespace
//! `beanstalkd_`, a `_total` suffix on command counters, `_count` on
//! counts, per-tube figures as `beanstalkd_tube_*` with a `tube` label), so
//! that dashboards and alerts built on that exporter keep working when it
//! is replaced by `--metrics`. That exporter reads a subset of `stats`;
//! the rest of `stats` (job size limit, uptime, CPU time, the binlog
//! figures, draining and the host facts) follows the same pattern with
//! Prometheus' unit suffixes (`beanstalkd_uptime_seconds`,
//! `beanstalkd_max_job_size_bytes`, the strings as labels of
//! `beanstalkd_info`). It typed every figure a gauge; here figures that
//! only grow are counters, which changes no query. What only runnerbean
//! knows is under `runnerbean_`, with a `core` label where it is a core's.
//! docs/OPERATIONS.md lists them all.
//!
//! # Merging
//! Counters and counts are summed over cores, the log's oldest segment is
//! the least and its current one the greatest, draining is any core's, and
//! tubes are merged by name. The tubes exported are the `tubes_max` with
//! the most jobs (ties by name); every core published its own busiest
//! `tubes_max`, which hold every tube of the merged busiest.

use std::collections::BTreeMap;
use std::fmt::{Display, Write};
use std::time::Instant;

use super::CoreSnapshot;
use crate::engine::stats::{Op, SHOWN_OPS};
use crate::engine::{ServerStats, TubeStats};
use crate::protocol::yaml::{CpuTime, PROTOCOL_VERSION};
use crate::wal::log::LogStats;

/// Facts about the process that `stats` reports besides the shards'.
pub struct ProcessInfo {
    pub pid: u32,
    pub instance_id: String,
    pub hostname: String,
    pub os: String,
    pub platform: String,
    /// The I/O back end (`io_uring`, `epoll`).
    pub io: &'static str,
    pub cores: u32,
    pub max_job_size: u64,
    pub binlog_max_size: u64,
    /// When the server started serving (`uptime`).
    pub started: Instant,
    /// Process CPU time (user, system); a function so tests can fix it.
    pub cpu_times: fn() -> (CpuTime, CpuTime),
}

/// What the renderer keeps between scrapes.
#[derive(Debug, Default)]
pub struct ScrapeState {
    scrapes: u64,
    /// The last scrape left tubes out.
    cutting: bool,
}

const GAUGE: &str = "gauge";
const COUNTER: &str = "counter";
const HISTOGRAM: &str = "histogram";

/// Renders the snapshots; the second value is a line for the log when the
/// tube cap starts or stops leaving tubes out.
pub fn render(
    snapshots: &[CoreSnapshot],
    info: &ProcessInfo,
    tubes_max: usize,
    state: &mut ScrapeState,
) -> (String, Option<String>) {
    state.scrapes += 1;
    let now = Instant::now();
    let published: Vec<&CoreSnapshot> = snapshots.iter().filter(|s| s.at.is_some()).collect();
    let mut stats = ServerStats::default();
    for s in &published {
        ServerStats::merge(&mut stats, &s.stats);
    }
    let log = merge_logs(published.iter().filter_map(|s| s.log.as_ref()));
    let (tubes, tubes_total) = merge_tubes(&published, tubes_max);
    let omitted = tubes_total.saturating_sub(tubes.len() as u64);
    let line = match (omitted > 0, state.cutting) {
        (true, false) => Some(format!(
            "metrics: {tubes_total} tubes, more than --metrics-tubes-max ({tubes_max}): the {} with the most jobs \
             are exported, runnerbean_metrics_tubes_omitted counts the others",
            tubes.len()
        )),
        (false, true) => Some(format!("metrics: all {tubes_total} tubes are exported again")),
        _ => None,
    };
    state.cutting = omitted > 0;

    let mut out = Out(String::with_capacity(8192 + 2048 * tubes.len()));
    server(&mut out, &stats, log.as_ref(), info, state.scrapes);
    tube_families(&mut out, &tubes);
    runnerbean(&mut out, &stats, &published, info, tubes_max, omitted, now);
    (out.0, line)
}

pub(crate) fn merge_logs<'a>(logs: impl Iterator<Item = &'a LogStats>) -> Option<LogStats> {
    logs.copied().reduce(|a, b| LogStats {
        oldest_seq: a.oldest_seq.min(b.oldest_seq),
        current_seq: a.current_seq.max(b.current_seq),
        records_written: a.records_written + b.records_written,
        records_migrated: a.records_migrated + b.records_migrated,
        segment_bytes: a.segment_bytes,
        disk_bytes: a.disk_bytes + b.disk_bytes,
        live_bytes: a.live_bytes + b.live_bytes,
        segments: a.segments + b.segments,
        spares: a.spares + b.spares,
    })
}

fn jobs_of(t: &TubeStats) -> u64 {
    t.ready + t.reserved + t.delayed + t.buried
}

/// The busiest `max` tubes over all cores, merged by name, most jobs first;
/// and how many tubes there are in all.
fn merge_tubes(snapshots: &[&CoreSnapshot], max: usize) -> (Vec<TubeStats>, u64) {
    let mut by_name: BTreeMap<&str, TubeStats> = BTreeMap::new();
    let mut total = 0;
    for s in snapshots {
        total += s.tubes_total;
        for t in &s.tubes {
            match by_name.get_mut(t.name.as_str()) {
                Some(m) => {
                    // A tube lives on one shard; were it seen on two, its
                    // figures add up, and it counts once.
                    total -= 1;
                    m.urgent += t.urgent;
                    m.ready += t.ready;
                    m.reserved += t.reserved;
                    m.delayed += t.delayed;
                    m.buried += t.buried;
                    m.total_jobs += t.total_jobs;
                    m.using += t.using;
                    m.watching += t.watching;
                    m.waiting += t.waiting;
                    m.deletes += t.deletes;
                    m.pauses += t.pauses;
                    m.pause_s = m.pause_s.max(t.pause_s);
                    m.pause_left_s = m.pause_left_s.max(t.pause_left_s);
                }
                None => {
                    by_name.insert(&t.name, t.clone());
                }
            }
        }
    }
    let mut tubes: Vec<TubeStats> = by_name.into_values().collect();
    tubes.sort_by(|a, b| jobs_of(b).cmp(&jobs_of(a)).then_with(|| a.name.cmp(&b.name)));
    tubes.truncate(max);
    (tubes, total)
}

/// The text being written. Writing into a `String` cannot fail, which is
/// why the results of `write!` are ignored.
struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = write!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{key}=\"");
                escape_label(&mut self.0, value);
                self.0.push('"');
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A family of one unlabelled sample.
    fn one(&mut self, name: &str, kind: &str, help: &str, value: impl Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &super::Histogram) {
        let bucket = format!("{name}_bucket");
        for (bound, count) in h.cumulative() {
            let le = bound.map_or_else(|| "+Inf".to_string(), |ns| seconds(ns).to_string());
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, count);
        }
        self.sample(&format!("{name}_sum"), labels, seconds(h.sum_ns()));
        self.sample(&format!("{name}_count"), labels, h.count());
    }
}

/// A label value as the format wants it: backslash, double quote and line
/// feed escaped. Tube names never need it; host facts might.
fn escape_label(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn cpu_seconds(t: CpuTime) -> f64 {
    t.secs as f64 + f64::from(t.micros) / 1e6
}

/// Everything in `stats`, in its order.
fn server(out: &mut Out, s: &ServerStats, log: Option<&LogStats>, info: &ProcessInfo, scrapes: u64) {
    out.one("beanstalkd_up", GAUGE, "Whether the server answered the scrape (always 1 when it is served).", 1);
    out.one("beanstalkd_exporter_scrapes_total", COUNTER, "Scrapes of /metrics since the server started.", scrapes);
    let counts = [
        ("urgent", "Ready jobs with a priority below 1024 (current-jobs-urgent).", s.urgent),
        ("ready", "Jobs ready to be reserved (current-jobs-ready).", s.ready),
        ("reserved", "Jobs reserved by a client (current-jobs-reserved).", s.reserved),
        ("delayed", "Jobs waiting for their delay to end (current-jobs-delayed).", s.delayed),
        ("buried", "Buried jobs (current-jobs-buried).", s.buried),
    ];
    for (state, help, value) in counts {
        out.one(&format!("beanstalkd_current_jobs_{state}_count"), GAUGE, help, value);
    }
    for (op, key) in SHOWN_OPS {
        let help = format!("{} commands since the server started ({key}).", &key["cmd-".len()..]);
        out.one(&format!("beanstalkd_{}_total", key.replace('-', "_")), COUNTER, &help, s.ops.get(op));
    }
    out.one(
        "beanstalkd_job_timeouts_count",
        COUNTER,
        "Reservations that ran out of time to run (job-timeouts).",
        s.job_timeouts,
    );
    out.one("beanstalkd_total_jobs_count", COUNTER, "Jobs put since the server started (total-jobs).", s.total_jobs);
    out.one("beanstalkd_max_job_size_bytes", GAUGE, "The largest job body accepted (max-job-size).", info.max_job_size);
    out.one("beanstalkd_current_tubes_count", GAUGE, "Tubes that exist (current-tubes).", s.tubes);
    let connections = [
        ("connections", "Open connections (current-connections).", s.connections),
        ("producers", "Open connections that have put a job (current-producers).", s.producers),
        ("workers", "Open connections that have reserved a job (current-workers).", s.workers),
        ("waiting", "Connections waiting in a reserve (current-waiting).", s.waiting),
    ];
    for (what, help, value) in connections {
        out.one(&format!("beanstalkd_current_{what}_count"), GAUGE, help, value);
    }
    out.one(
        "beanstalkd_total_connections_count",
        COUNTER,
        "Connections opened since the server started (total-connections).",
        s.total_connections,
    );
    let (utime, stime) = (info.cpu_times)();
    out.one("beanstalkd_rusage_utime_seconds_total", COUNTER, "User CPU time (rusage-utime).", cpu_seconds(utime));
    out.one("beanstalkd_rusage_stime_seconds_total", COUNTER, "System CPU time (rusage-stime).", cpu_seconds(stime));
    out.one(
        "beanstalkd_uptime_seconds",
        GAUGE,
        "Seconds since the server started (uptime).",
        info.started.elapsed().as_secs(),
    );
    let log = log.copied().unwrap_or_default();
    out.one(
        "beanstalkd_binlog_oldest_index",
        GAUGE,
        "The oldest log file in use (binlog-oldest-index).",
        log.oldest_seq,
    );
    out.one(
        "beanstalkd_binlog_current_index",
        GAUGE,
        "The log file written to (binlog-current-index).",
        log.current_seq,
    );
    out.one(
        "beanstalkd_binlog_records_migrated_total",
        COUNTER,
        "Records written again by compaction (binlog-records-migrated).",
        log.records_migrated,
    );
    out.one(
        "beanstalkd_binlog_records_written_total",
        COUNTER,
        "Records written to the log (binlog-records-written).",
        log.records_written,
    );
    out.one(
        "beanstalkd_binlog_max_size_bytes",
        GAUGE,
        "The size of each log file (binlog-max-size).",
        info.binlog_max_size,
    );
    out.one("beanstalkd_draining", GAUGE, "1 in drain mode (draining): puts are refused.", u8::from(s.draining));
    out.family(
        "beanstalkd_info",
        GAUGE,
        "The server's facts from stats (pid, version, id, hostname, os, platform) as labels; always 1.",
    );
    let pid = info.pid.to_string();
    let labels = [
        ("pid", pid.as_str()),
        ("version", PROTOCOL_VERSION),
        ("id", info.instance_id.as_str()),
        ("hostname", info.hostname.as_str()),
        ("os", info.os.as_str()),
        ("platform", info.platform.as_str()),
        ("runnerbean_version", env!("CARGO_PKG_VERSION")),
        ("runnerbean_io", info.io),
    ];
    out.sample("beanstalkd_info", &labels, 1);
}

/// Everything in `stats-tube`, a family per figure with a sample per tube.
fn tube_families(out: &mut Out, tubes: &[TubeStats]) {
    type Figure = fn(&TubeStats) -> String;
    let figures: [(&str, &str, &str, Figure); 13] = [
        ("current_jobs_urgent_count", GAUGE, "Ready jobs of the tube with a priority below 1024.", |t| {
            t.urgent.to_string()
        }),
        ("current_jobs_ready_count", GAUGE, "Jobs of the tube ready to be reserved.", |t| t.ready.to_string()),
        ("current_jobs_reserved_count", GAUGE, "Jobs of the tube reserved by a client.", |t| t.reserved.to_string()),
        ("current_jobs_delayed_count", GAUGE, "Jobs of the tube waiting for their delay to end.", |t| {
            t.delayed.to_string()
        }),
        ("current_jobs_buried_count", GAUGE, "Buried jobs of the tube.", |t| t.buried.to_string()),
        ("total_jobs_count", COUNTER, "Jobs put into the tube since it was made.", |t| t.total_jobs.to_string()),
        ("current_using_count", GAUGE, "Connections using the tube.", |t| t.using.to_string()),
        ("current_watching_count", GAUGE, "Connections watching the tube.", |t| t.watching.to_string()),
        ("current_waiting_count", GAUGE, "Connections waiting in a reserve on the tube.", |t| t.waiting.to_string()),
        ("cmd_delete_total", COUNTER, "Jobs of the tube deleted by delete commands.", |t| t.deletes.to_string()),
        ("cmd_pause_tube_total", COUNTER, "pause-tube commands on the tube.", |t| t.pauses.to_string()),
        // The exporter's names, although neither figure only grows.
        ("pause_seconds_total", GAUGE, "The length of the tube's current pause (pause).", |t| t.pause_s.to_string()),
        ("pause_time_left_seconds_total", GAUGE, "Seconds until the tube's pause ends (pause-time-left).", |t| {
            t.pause_left_s.to_string()
        }),
    ];
    for (figure, kind, help, value) in figures {
        let name = format!("beanstalkd_tube_{figure}");
        out.family(&name, kind, help);
        for t in tubes {
            out.sample(&name, &[("tube", &t.name)], value(t));
        }
    }
}

/// What only runnerbean knows.
fn runnerbean(
    out: &mut Out,
    stats: &ServerStats,
    cores: &[&CoreSnapshot],
    info: &ProcessInfo,
    tubes_max: usize,
    omitted: u64,
    now: Instant,
) {
    out.one("runnerbean_cores", GAUGE, "Cores serving, each with its event loop and queue shard.", info.cores);
    let own_ops = [
        (Op::ReserveJob, "reserve_job", "reserve-job"),
        (Op::KickJob, "kick_job", "kick-job"),
        (Op::ClearTube, "clear_tube", "clear-tube"),
        (Op::ListJobs, "list_jobs", "list-jobs"),
    ];
    for (op, name, command) in own_ops {
        let help = format!("{command} commands since the server started (counted, but not shown by stats).");
        out.one(&format!("runnerbean_cmd_{name}_total"), COUNTER, &help, stats.ops.get(op));
    }
    out.one("runnerbean_metrics_tubes_max", GAUGE, "The most tubes exported (--metrics-tubes-max).", tubes_max);
    out.one(
        "runnerbean_metrics_tubes_omitted",
        GAUGE,
        "Tubes not exported because more than --metrics-tubes-max exist (those with the fewest jobs).",
        omitted,
    );
    type Figure = fn(&CoreSnapshot, Instant) -> String;
    let per_core: [(&str, &str, &str, Figure); 5] = [
        (
            "loop_busy_seconds_total",
            COUNTER,
            "Time the core's event loop spent working, not waiting for events.",
            |s, _| seconds(s.busy_ns).to_string(),
        ),
        ("loop_turns_total", COUNTER, "Turns of the core's event loop.", |s, _| s.turns.to_string()),
        ("connections", GAUGE, "Connections open on the core, closing ones included.", |s, _| {
            s.connections.to_string()
        }),
        (
            "pending_reply_bytes",
            GAUGE,
            "Reply text owed to the core's clients, waiting or being sent (bodies over 1 KiB are sent from their jobs and not counted).",
            |s, _| s.reply_text_bytes.to_string(),
        ),
        ("metrics_snapshot_age_seconds", GAUGE, "How old the core's snapshot behind these figures is.", |s, now| {
            s.at.map_or(0.0, |at| now.saturating_duration_since(at).as_secs_f64()).to_string()
        }),
    ];
    for (figure, kind, help, value) in per_core {
        let name = format!("runnerbean_{figure}");
        out.family(&name, kind, help);
        for s in cores {
            out.sample(&name, &[("core", &s.core.to_string())], value(s, now));
        }
    }
    // The log's figures, with -b only.
    let logged: Vec<(&CoreSnapshot, &LogStats)> = cores.iter().filter_map(|s| Some((*s, s.log.as_ref()?))).collect();
    if logged.is_empty() {
        return;
    }
    type LogFigure = fn(&LogStats) -> u64;
    let log_figures: [(&str, &str, LogFigure); 4] = [
        ("wal_disk_bytes", "Bytes of the core's log files on disk.", |l| l.disk_bytes),
        ("wal_live_bytes", "Bytes of the core's log records that still describe a job.", |l| l.live_bytes),
        ("wal_segments", "The core's log files holding records.", |l| l.segments),
        ("wal_spare_segments", "The core's log files made ahead of need.", |l| l.spares),
    ];
    for (figure, help, value) in log_figures {
        let name = format!("runnerbean_{figure}");
        out.family(&name, GAUGE, help);
        for (s, log) in &logged {
            out.sample(&name, &[("core", &s.core.to_string())], value(log));
        }
    }
    type Latency = fn(&CoreSnapshot) -> &super::Histogram;
    let latencies: [(&str, &str, Latency); 2] = [
        (
            "runnerbean_wal_write_seconds",
            "How long the core's log writes took (with -f0 a write carries its own data sync).",
            |s| &s.wal_write,
        ),
        (
            "runnerbean_wal_sync_seconds",
            "How long the core's log syncs (fdatasync, fsync of the directory) took.",
            |s| &s.wal_sync,
        ),
    ];
    for (name, help, histogram) in latencies {
        out.family(name, HISTOGRAM, help);
        for (s, _) in &logged {
            out.histogram(name, &[("core", &s.core.to_string())], histogram(s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::OpCounts;

    fn info() -> ProcessInfo {
        ProcessInfo {
            pid: 7,
            instance_id: "abc".into(),
            hostname: "h\"q".into(),
            os: "#1 SMP".into(),
            platform: "x86_64".into(),
            io: "epoll",
            cores: 2,
            max_job_size: 65535,
            binlog_max_size: 10,
            started: Instant::now(),
            cpu_times: || (CpuTime { secs: 2, micros: 500_000 }, CpuTime::default()),
        }
    }

    fn tube(name: &str, ready: u64) -> TubeStats {
        TubeStats {
            name: name.into(),
            urgent: 0,
            ready,
            reserved: 0,
            delayed: 0,
            buried: 0,
            total_jobs: ready,
            using: 0,
            watching: 0,
            waiting: 0,
            deletes: 0,
            pauses: 0,
            pause_s: 0,
            pause_left_s: 0,
        }
    }

    fn core(core: u32, ready: u64, tubes: Vec<TubeStats>, tubes_total: u64) -> CoreSnapshot {
        let mut ops = OpCounts::default();
        ops.bump(Op::Put);
        ops.bump(Op::ClearTube);
        CoreSnapshot {
            core,
            at: Some(Instant::now()),
            stats: ServerStats { ready, ops, tubes: tubes_total, total_connections: 3, ..ServerStats::default() },
            tubes,
            tubes_total,
            busy_ns: 1_500_000_000,
            ..CoreSnapshot::default()
        }
    }

    fn value<'a>(text: &'a str, series: &str) -> &'a str {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    #[test]
    fn cores_are_summed_tubes_merged_and_the_busiest_kept() {
        let a = core(0, 4, vec![tube("x", 3), tube("shared", 1)], 3);
        let b = core(1, 5, vec![tube("shared", 4), tube("y", 1)], 2);
        let unpublished = CoreSnapshot { core: 2, ..CoreSnapshot::default() };
        let mut state = ScrapeState::default();
        let (text, line) = render(&[a, b, unpublished], &info(), 2, &mut state);
        assert_eq!(value(&text, "beanstalkd_current_jobs_ready_count"), "9");
        assert_eq!(value(&text, "beanstalkd_cmd_put_total"), "2");
        assert_eq!(value(&text, "runnerbean_cmd_clear_tube_total"), "2");
        assert_eq!(value(&text, "beanstalkd_total_connections_count"), "6");
        assert_eq!(value(&text, "beanstalkd_rusage_utime_seconds_total"), "2.5");
        assert_eq!(value(&text, "beanstalkd_exporter_scrapes_total"), "1");
        // shared: 1 + 4 jobs; x: 3; y: 1, left out by the cap of 2.
        assert_eq!(value(&text, "beanstalkd_tube_current_jobs_ready_count{tube=\"shared\"}"), "5");
        assert_eq!(value(&text, "beanstalkd_tube_current_jobs_ready_count{tube=\"x\"}"), "3");
        assert!(!text.contains("tube=\"y\""), "{text}");
        // Four tubes in all (shared counted once), two exported.
        assert_eq!(value(&text, "runnerbean_metrics_tubes_omitted"), "2");
        assert!(line.is_some_and(|l| l.contains("4 tubes, more than --metrics-tubes-max (2)")));
        assert_eq!(value(&text, "runnerbean_loop_busy_seconds_total{core=\"1\"}"), "1.5");
        assert!(!text.contains("core=\"2\""), "an unpublished core has no figures yet");
        assert!(text.contains("hostname=\"h\\\"q\""), "labels are escaped: {text}");
        assert!(!text.contains("runnerbean_wal_"), "no log, no log figures");
        // The cut is logged when it starts and when it ends, not on every scrape.
        let again = core(0, 0, vec![tube("x", 3)], 3);
        assert_eq!(render(std::slice::from_ref(&again), &info(), 2, &mut state).1, None);
        let fewer = core(0, 0, vec![tube("x", 3)], 1);
        assert_eq!(
            render(std::slice::from_ref(&fewer), &info(), 2, &mut state).1.as_deref(),
            Some("metrics: all 1 tubes are exported again")
        );
    }

    #[test]
    fn every_family_is_declared_once_before_its_samples() {
        let mut a = core(0, 1, vec![tube("x", 1)], 1);
        a.log = Some(LogStats { current_seq: 3, disk_bytes: 4096, ..LogStats::default() });
        a.wal_sync.observe(2_000_000);
        let (text, _) = render(&[a], &info(), 10, &mut ScrapeState::default());
        let mut declared: Vec<&str> = Vec::new();
        let mut current = "";
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(!declared.contains(&name), "{name} declared twice");
                declared.push(name);
                current = name;
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| *f == current))
                    .unwrap_or(name);
                assert_eq!(family, current, "{line} outside its family");
            }
        }
        assert_eq!(value(&text, "runnerbean_wal_sync_seconds_bucket{core=\"0\",le=\"0.0025\"}"), "1");
        assert_eq!(value(&text, "runnerbean_wal_sync_seconds_bucket{core=\"0\",le=\"0.001\"}"), "0");
        assert_eq!(value(&text, "runnerbean_wal_sync_seconds_bucket{core=\"0\",le=\"+Inf\"}"), "1");
        assert_eq!(value(&text, "runnerbean_wal_sync_seconds_sum{core=\"0\"}"), "0.002");
        assert_eq!(value(&text, "beanstalkd_binlog_current_index"), "3");
        assert_eq!(value(&text, "runnerbean_wal_disk_bytes{core=\"0\"}"), "4096");
    }
}
