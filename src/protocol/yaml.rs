//! The YAML documents of `stats`, `stats-tube`, `stats-job` and the list
//! commands, byte for byte as beanstalkd 1.13 writes them: keys in its
//! order, string values in double quotes without escaping (tube names and
//! uname fields never need it), list entries bare.

use super::reply::{push_i64, push_u64};
use crate::engine::{JobStats, ServerStats, TubeStats, stats::SHOWN_OPS};

/// The protocol version clients see in `stats` (some parse it).
pub const PROTOCOL_VERSION: &str = "1.13";

/// Log counters shown in `stats`; all zero until a write-ahead log runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct BinlogStats {
    pub oldest_index: u64,
    pub current_index: u64,
    pub records_migrated: u64,
    pub records_written: u64,
    pub max_size: u64,
}

/// Seconds and microseconds, as `getrusage` reports them.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTime {
    pub secs: u64,
    pub micros: u32,
}

/// The process-wide facts in `stats`.
#[derive(Clone, Debug, Default)]
pub struct ProcessStats<'a> {
    pub max_job_size: u64,
    pub pid: u32,
    pub utime: CpuTime,
    pub stime: CpuTime,
    pub uptime_s: u64,
    pub binlog: BinlogStats,
    pub instance_id: &'a str,
    pub hostname: &'a str,
    pub os: &'a str,
    pub platform: &'a str,
    /// runnerbean's own keys, appended after the standard ones. Values are
    /// written as given.
    pub extra: &'a [(&'a str, &'a str)],
}

struct Doc<'a>(&'a mut Vec<u8>);

impl Doc<'_> {
    fn start(buf: &mut Vec<u8>) -> Doc<'_> {
        buf.clear();
        buf.extend_from_slice(b"---\n");
        Doc(buf)
    }

    fn key(&mut self, key: &str) {
        self.0.extend_from_slice(key.as_bytes());
        self.0.extend_from_slice(b": ");
    }

    fn u64(&mut self, key: &str, value: u64) {
        self.key(key);
        push_u64(self.0, value);
        self.0.push(b'\n');
    }

    fn i64(&mut self, key: &str, value: i64) {
        self.key(key);
        push_i64(self.0, value);
        self.0.push(b'\n');
    }

    fn raw(&mut self, key: &str, value: &str) {
        self.key(key);
        self.0.extend_from_slice(value.as_bytes());
        self.0.push(b'\n');
    }

    fn quoted(&mut self, key: &str, value: &str) {
        self.key(key);
        self.0.push(b'"');
        self.0.extend_from_slice(value.as_bytes());
        self.0.extend_from_slice(b"\"\n");
    }

    fn cpu(&mut self, key: &str, t: CpuTime) {
        self.key(key);
        push_u64(self.0, t.secs);
        self.0.push(b'.');
        let micros = format!("{:06}", t.micros);
        self.0.extend_from_slice(micros.as_bytes());
        self.0.push(b'\n');
    }
}

/// The `stats` document (51 standard keys, then runnerbean's own).
pub fn stats(buf: &mut Vec<u8>, s: &ServerStats, p: &ProcessStats<'_>) {
    let mut d = Doc::start(buf);
    d.u64("current-jobs-urgent", s.urgent);
    d.u64("current-jobs-ready", s.ready);
    d.u64("current-jobs-reserved", s.reserved);
    d.u64("current-jobs-delayed", s.delayed);
    d.u64("current-jobs-buried", s.buried);
    for (op, key) in SHOWN_OPS {
        d.u64(key, s.ops.get(op));
    }
    d.u64("job-timeouts", s.job_timeouts);
    d.u64("total-jobs", s.total_jobs);
    d.u64("max-job-size", p.max_job_size);
    d.u64("current-tubes", s.tubes);
    d.u64("current-connections", s.connections);
    d.u64("current-producers", s.producers);
    d.u64("current-workers", s.workers);
    d.u64("current-waiting", s.waiting);
    d.u64("total-connections", u64::from(s.total_connections));
    d.u64("pid", u64::from(p.pid));
    d.quoted("version", PROTOCOL_VERSION);
    d.cpu("rusage-utime", p.utime);
    d.cpu("rusage-stime", p.stime);
    d.u64("uptime", p.uptime_s);
    d.u64("binlog-oldest-index", p.binlog.oldest_index);
    d.u64("binlog-current-index", p.binlog.current_index);
    d.u64("binlog-records-migrated", p.binlog.records_migrated);
    d.u64("binlog-records-written", p.binlog.records_written);
    d.u64("binlog-max-size", p.binlog.max_size);
    d.raw("draining", if s.draining { "true" } else { "false" });
    d.raw("id", p.instance_id);
    d.quoted("hostname", p.hostname);
    d.quoted("os", p.os);
    d.quoted("platform", p.platform);
    for (key, value) in p.extra {
        d.raw(key, value);
    }
}

/// The `stats-tube` document (14 keys).
pub fn tube_stats(buf: &mut Vec<u8>, t: &TubeStats) {
    let mut d = Doc::start(buf);
    d.quoted("name", &t.name);
    d.u64("current-jobs-urgent", t.urgent);
    d.u64("current-jobs-ready", t.ready);
    d.u64("current-jobs-reserved", t.reserved);
    d.u64("current-jobs-delayed", t.delayed);
    d.u64("current-jobs-buried", t.buried);
    d.u64("total-jobs", t.total_jobs);
    d.u64("current-using", t.using);
    d.u64("current-watching", t.watching);
    d.u64("current-waiting", t.waiting);
    d.u64("cmd-delete", t.deletes);
    d.u64("cmd-pause-tube", t.pauses);
    d.u64("pause", t.pause_s);
    d.i64("pause-time-left", t.pause_left_s);
}

/// The `stats-job` document (14 keys).
pub fn job_stats(buf: &mut Vec<u8>, j: &JobStats) {
    let mut d = Doc::start(buf);
    d.u64("id", j.id);
    d.quoted("tube", &j.tube);
    d.raw("state", j.state);
    d.u64("pri", u64::from(j.pri));
    d.i64("age", j.age_s);
    d.u64("delay", u64::from(j.delay_s));
    d.u64("ttr", u64::from(j.ttr_s));
    d.i64("time-left", j.time_left_s);
    d.u64("file", j.file);
    d.u64("reserves", u64::from(j.reserves));
    d.u64("timeouts", u64::from(j.timeouts));
    d.u64("releases", u64::from(j.releases));
    d.u64("buries", u64::from(j.buries));
    d.u64("kicks", u64::from(j.kicks));
}

/// A YAML list of names, for `list-tubes` and `list-tubes-watched`.
pub fn list<'a>(buf: &mut Vec<u8>, names: impl Iterator<Item = &'a str>) {
    Doc::start(buf);
    for name in names {
        buf.extend_from_slice(b"- ");
        buf.extend_from_slice(name.as_bytes());
        buf.push(b'\n');
    }
}

/// A YAML list of job ids, for `list-jobs`: `---\n`, then `- <id>\n` each.
pub fn ids(buf: &mut Vec<u8>, ids: &[u64]) {
    Doc::start(buf);
    for &id in ids {
        buf.extend_from_slice(b"- ");
        push_u64(buf, id);
        buf.push(b'\n');
    }
}

/// The size of [`ids`]' document.
pub fn ids_bytes(ids: &[u64]) -> usize {
    4 + ids.iter().map(|&id| decimal_digits(id) + 3).sum::<usize>()
}

fn decimal_digits(mut n: u64) -> usize {
    let mut digits = 1;
    while n >= 10 {
        n /= 10;
        digits += 1;
    }
    digits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_matches_reference_bytes() {
        let mut buf = Vec::new();
        list(&mut buf, ["default"].into_iter());
        assert_eq!(buf, b"---\n- default\n");
        assert_eq!(buf.len(), 14);
    }

    #[test]
    fn id_lists_are_framed_as_tube_lists_and_sized_exactly() {
        let mut buf = Vec::new();
        for list in [&[][..], &[7], &[1, 10, 99, 100, u64::MAX]] {
            ids(&mut buf, list);
            assert_eq!(buf.len(), ids_bytes(list), "{list:?}");
        }
        assert_eq!(buf, format!("---\n- 1\n- 10\n- 99\n- 100\n- {}\n", u64::MAX).as_bytes());
        ids(&mut buf, &[]);
        assert_eq!(buf, b"---\n");
    }

    #[test]
    fn stats_has_51_standard_keys_in_order() {
        let mut buf = Vec::new();
        let extra = [("runnerbean-version", "\"0.1.0\"")];
        let p = ProcessStats { extra: &extra, hostname: "vm", os: "#1 SMP", platform: "x86_64", ..Default::default() };
        stats(&mut buf, &ServerStats::default(), &p);
        let text = String::from_utf8(buf).unwrap();
        let keys: Vec<&str> = text.lines().skip(1).map(|l| l.split(": ").next().unwrap()).collect();
        assert_eq!(keys.len(), 52);
        assert_eq!(keys[0], "current-jobs-urgent");
        assert_eq!(keys[26], "cmd-pause-tube");
        assert_eq!(keys[50], "platform");
        assert_eq!(keys[51], "runnerbean-version");
        assert!(text.contains("\nversion: \"1.13\"\nrusage-utime: 0.000000\n"));
        assert!(
            text.ends_with("hostname: \"vm\"\nos: \"#1 SMP\"\nplatform: \"x86_64\"\nrunnerbean-version: \"0.1.0\"\n")
        );
    }

    #[test]
    fn job_stats_matches_reference_bytes() {
        let mut buf = Vec::new();
        let j = JobStats {
            id: 1,
            tube: "foo".into(),
            state: "ready",
            pri: 0,
            age_s: 0,
            delay_s: 0,
            ttr_s: 1,
            time_left_s: 0,
            file: 0,
            reserves: 0,
            timeouts: 0,
            releases: 0,
            buries: 0,
            kicks: 0,
        };
        job_stats(&mut buf, &j);
        // The 1.13 transcript of spec §1.7.
        assert_eq!(
            buf,
            b"---\nid: 1\ntube: \"foo\"\nstate: ready\npri: 0\nage: 0\ndelay: 0\nttr: 1\ntime-left: 0\nfile: 0\n\
reserves: 0\ntimeouts: 0\nreleases: 0\nburies: 0\nkicks: 0\n"
        );
        assert_eq!(buf.len(), 141);
    }
}
