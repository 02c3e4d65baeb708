//! The write-ahead log at the wire: the real binary with `-b DIR`, stopped
//! and started again on the same directory, on both back ends.
//!
//! * Restart: every job comes back in its state with every field that
//!   `stats-job` shows and its body; ids are never handed out again; the
//!   `binlog-*` keys of `stats` say what is on disk.
//! * SIGTERM under pipelined load, in every sync mode: every reply received
//!   before the connection closed is honoured after the restart.
//! * Torn and corrupt logs: the server starts, serves only acknowledged
//!   jobs with their exact bodies, and says what it cut.
//! * The directory's lock against a second runnerbean and C beanstalkd,
//!   and directories that cannot be used.
//! * Tiny `-s` values and bodies larger than a segment.
//! * A full file system (a size-limited tmpfs mounted by the test, as
//!   root): the reference's replies, nothing written damaged, puts again
//!   once there is room.
//! * Compaction: the directory stays within the bound docs/OPERATIONS.md
//!   states under workloads that pin old segments in C beanstalkd.
//!
//! The on-disk checks read segment files as docs/LOG-FORMAT.md lays them
//! out (a 64-byte header, then records framed by length and checksum).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{BIN, Client, REPLY_TIMEOUT, Server, on_both, stat};

/// How long a stopped server may take to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes of a segment file's header (docs/LOG-FORMAT.md).
const HEADER_BYTES: usize = 64;

/// Bytes of a record's frame: length and checksum.
const FRAME_BYTES: usize = 8;

/// Bytes of a job record beyond its tube name and body, of a state record,
/// and of a delete record (docs/LOG-FORMAT.md).
const JOB_RECORD_FIXED_BYTES: u64 = 71;
const STATE_RECORD_BYTES: u64 = 54;
const DELETE_RECORD_BYTES: u64 = 17;

/// The exit status for a log directory another process has locked, and for
/// one that cannot be used (both as beanstalkd).
const EXIT_LOCKED: i32 = 10;
const EXIT_LOG: i32 = 1;

// ----- the directory -------------------------------------------------------

/// A directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("rb-wal-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The segment files of shard 0 in `dir`, by seq.
fn segment_files(dir: &Path) -> BTreeMap<u64, PathBuf> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        if let Some(seq) = name.strip_prefix("runnerbean-wal.0.") {
            out.insert(seq.parse().unwrap(), entry.path());
        }
    }
    out
}

/// Whether a segment file has a header (it became a segment; the spares
/// made ahead start with zeros). A file removed meanwhile has none.
fn has_header(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|bytes| bytes.len() >= HEADER_BYTES && bytes[..HEADER_BYTES].iter().any(|&b| b != 0))
}

/// Bytes of every file in `dir` (the directory's entries themselves are
/// not counted), and how many files there are.
fn dir_usage(dir: &Path) -> (u64, usize) {
    let mut bytes = 0;
    let mut files = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        // A file removed between the listing and its metadata is gone.
        let Ok(meta) = entry.unwrap().metadata() else { continue };
        if meta.is_file() {
            bytes += meta.len();
            files += 1;
        }
    }
    (bytes, files)
}

/// The bytes a job takes in the log while it lives: its job record, and a
/// state record once it was buried, kicked or released.
fn live_record_bytes(tube: &str, body_bytes: usize, has_state: bool) -> u64 {
    JOB_RECORD_FIXED_BYTES + tube.len() as u64 + body_bytes as u64 + if has_state { STATE_RECORD_BYTES } else { 0 }
}

/// One record of a segment file: where it starts, its bytes with the frame,
/// its kind (1 job, 2 state, 3 delete) and its job id.
#[derive(Clone, Copy, Debug)]
struct Rec {
    offset: u64,
    bytes: u64,
    kind: u8,
    id: u64,
}

/// The records of a segment file written by a healthy server, in order.
fn records(path: &Path) -> Vec<Rec> {
    let bytes = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut at = HEADER_BYTES;
    while at + FRAME_BYTES <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        let kind = bytes[at + 8];
        let id = u64::from_le_bytes(bytes[at + 9..at + 17].try_into().unwrap());
        out.push(Rec { offset: at as u64, bytes: (FRAME_BYTES + len) as u64, kind, id });
        at += FRAME_BYTES + len;
    }
    out
}

// ----- the server ---------------------------------------------------------

/// Starts runnerbean with `-b DIR` and `args`.
fn start(backend: &'static str, dir: &TempDir, args: &[&str]) -> Server {
    let mut all = vec!["-b", dir.arg()];
    all.extend_from_slice(args);
    Server::start(backend, &all)
}

/// Stops a server with SIGTERM; it must exit 0. Returns what it printed.
fn stop(mut server: Server) -> String {
    server.signal("TERM");
    assert_eq!(server.wait(EXIT_TIMEOUT), Some(0), "after SIGTERM:\n{}", server.log_text());
    server.log_text()
}

/// Runs runnerbean to its exit (a start that must fail).
fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(["-l", "127.0.0.1", "-p", "0"]).args(args).output().expect("run runnerbean")
}

fn put(c: &mut Client, pri: u32, delay_s: u32, ttr_s: u32, body: &[u8]) -> u64 {
    let mut line = format!("put {pri} {delay_s} {ttr_s} {}\r\n", body.len()).into_bytes();
    line.extend_from_slice(body);
    line.extend_from_slice(b"\r\n");
    let reply = c.ask(&line, 1);
    reply.strip_prefix("INSERTED ").and_then(|r| r.trim_end().parse().ok()).unwrap_or_else(|| panic!("put: {reply:?}"))
}

/// The bytes of a put command.
fn put_bytes(pri: u32, delay_s: u32, ttr_s: u32, body: &[u8]) -> Vec<u8> {
    let mut out = format!("put {pri} {delay_s} {ttr_s} {}\r\n", body.len()).into_bytes();
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
    out
}

/// A YAML reply as key → value (`None` for NOT_FOUND).
fn yaml(c: &mut Client, command: &str) -> Option<BTreeMap<String, String>> {
    let reply = c.ask(format!("{command}\r\n").as_bytes(), 1);
    if reply == "NOT_FOUND\r\n" {
        return None;
    }
    assert!(reply.starts_with("OK "), "{command}: {reply:?}");
    let doc = reply.split_once("\r\n").unwrap().1;
    Some(
        doc.lines()
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
            .collect(),
    )
}

fn stats(c: &mut Client) -> BTreeMap<String, String> {
    yaml(c, "stats").unwrap()
}

fn num(doc: &BTreeMap<String, String>, key: &str) -> u64 {
    doc.get(key).unwrap_or_else(|| panic!("no {key} in {doc:?}")).parse().unwrap()
}

/// `peek <id>`: the body, or `None` for NOT_FOUND.
fn peek(c: &mut Client, id: u64) -> Option<Vec<u8>> {
    c.send(format!("peek {id}\r\n").as_bytes());
    let reply = c.replies(1);
    if reply == b"NOT_FOUND\r\n" {
        return None;
    }
    let line_end = reply.windows(2).position(|w| w == b"\r\n").unwrap();
    let line = std::str::from_utf8(&reply[..line_end]).unwrap();
    let mut words = line.split(' ');
    assert_eq!(words.next(), Some("FOUND"), "peek {id}: {line}");
    assert_eq!(words.next(), Some(id.to_string().as_str()), "peek {id}: {line}");
    let body = reply[line_end + 2..reply.len() - 2].to_vec();
    assert_eq!(words.next(), Some(body.len().to_string().as_str()), "peek {id}: {line}");
    Some(body)
}

/// Waits until `check` holds of the server's stats.
fn wait_for_stats(c: &mut Client, what: &str, check: impl Fn(&BTreeMap<String, String>) -> bool) {
    let deadline = Instant::now() + REPLY_TIMEOUT;
    loop {
        let s = stats(c);
        if check(&s) {
            return;
        }
        assert!(Instant::now() < deadline, "never {what}: {s:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until `check` holds.
fn wait_until(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + REPLY_TIMEOUT;
    while !check() {
        assert!(Instant::now() < deadline, "never {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A tiny xorshift generator: the tests need variety, not quality.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn body(&mut self, max: usize) -> Vec<u8> {
        let len = (self.next() % (max as u64 + 1)) as usize;
        (0..len).map(|_| self.next() as u8).collect()
    }
}

// ----- 1. a restart brings back every job -----------------------------------

/// The jobs of the restart test, by what was done to them.
struct Restart {
    ready: u64,
    delayed: u64,
    delay_passed: u64,
    buried: [u64; 3],
    released: u64,
    released_delayed: u64,
    kicked_buried: u64,
    kicked_delayed: u64,
    timed_out: u64,
    reserved: u64,
    deleted: [u64; 2],
    bodies: BTreeMap<u64, Vec<u8>>,
}

/// The seconds the long-delayed job waits.
const LONG_DELAY_S: u64 = 3600;

/// How long the test lets pass between its first put and the stop, so that
/// a delayed job's time-left has visibly counted down, a 1-second delay
/// has passed and a 1-second TTR has run out.
const COUNTDOWN_WAIT: Duration = Duration::from_millis(2200);

fn restart_history(c: &mut Client) -> Restart {
    let mut bodies = BTreeMap::new();
    let mut put_in = |c: &mut Client, tube: &str, pri: u32, delay: u32, ttr: u32, body: &str| {
        assert_eq!(c.ask(format!("use {tube}\r\n").as_bytes(), 1), format!("USING {tube}\r\n"));
        let id = put(c, pri, delay, ttr, body.as_bytes());
        bodies.insert(id, body.as_bytes().to_vec());
        id
    };
    let started = Instant::now();
    let delayed = put_in(c, "beta", 20, LONG_DELAY_S as u32, 45, "delayed for an hour");
    let delay_passed = put_in(c, "beta", 21, 1, 46, "delayed for a second");
    let ready = put_in(c, "alpha", 10, 0, 30, "ready");
    let buried = [
        put_in(c, "alpha", 11, 0, 31, "buried second"),
        put_in(c, "alpha", 12, 0, 32, "buried third"),
        put_in(c, "alpha", 13, 0, 33, "buried first"),
    ];
    let released = put_in(c, "gamma", 100, 0, 60, "released with a new priority");
    let released_delayed = put_in(c, "gamma", 101, 0, 61, "released with a delay");
    let kicked_buried = put_in(c, "delta", 1, 0, 62, "buried, then kicked");
    let kicked_delayed = put_in(c, "delta", 2, 600, 63, "delayed, then kicked");
    let timed_out = put_in(c, "gamma", 3, 0, 1, "its TTR ran out");
    let reserved = put_in(c, "alpha", 50, 0, 64, "reserved at the stop");
    let deleted = put_in(c, "default", 5, 0, 65, "deleted");
    // Buried in an order unlike their ids.
    for (id, pri) in [(buried[2], 7), (buried[0], 8), (buried[1], 9)] {
        assert!(c.ask(format!("reserve-job {id}\r\n").as_bytes(), 1).starts_with(&format!("RESERVED {id} ")));
        assert_eq!(c.ask(format!("bury {id} {pri}\r\n").as_bytes(), 1), "BURIED\r\n");
    }
    let script = [
        (format!("reserve-job {released}\r\n"), format!("RESERVED {released} ")),
        (format!("release {released} 5 0\r\n"), "RELEASED\r\n".to_string()),
        (format!("reserve-job {released_delayed}\r\n"), format!("RESERVED {released_delayed} ")),
        (format!("release {released_delayed} 6 7200\r\n"), "RELEASED\r\n".to_string()),
        (format!("reserve-job {kicked_buried}\r\n"), format!("RESERVED {kicked_buried} ")),
        (format!("bury {kicked_buried} 4\r\n"), "BURIED\r\n".to_string()),
        ("use delta\r\n".to_string(), "USING delta\r\n".to_string()),
        ("kick 10\r\n".to_string(), "KICKED 1\r\n".to_string()),
        (format!("kick-job {kicked_delayed}\r\n"), "KICKED\r\n".to_string()),
        (format!("reserve-job {timed_out}\r\n"), format!("RESERVED {timed_out} ")),
        (format!("delete {deleted}\r\n"), "DELETED\r\n".to_string()),
    ];
    for (command, want) in script {
        let reply = c.ask(command.as_bytes(), 1);
        assert!(reply.starts_with(&want), "{command:?} got {reply:?}");
    }
    std::thread::sleep(COUNTDOWN_WAIT.saturating_sub(started.elapsed()));
    // The TTR of 1 second ran out: reserved again, then released, which
    // records its counters.
    let stats = yaml(c, &format!("stats-job {timed_out}")).unwrap();
    assert_eq!((stats["state"].as_str(), stats["timeouts"].as_str()), ("ready", "1"), "{stats:?}");
    let reply = c.ask(format!("reserve-job {timed_out}\r\nrelease {timed_out} 3 0\r\n").as_bytes(), 2);
    assert!(reply.ends_with("\r\nRELEASED\r\n"), "{reply:?}");
    assert!(c.ask(format!("reserve-job {reserved}\r\n").as_bytes(), 1).starts_with(&format!("RESERVED {reserved} ")));
    // The newest job is deleted too: its id must not come back either.
    let last = put_in(c, "default", 5, 0, 65, "deleted, the highest id");
    assert_eq!(c.ask(format!("delete {last}\r\n").as_bytes(), 1), "DELETED\r\n");
    bodies.remove(&deleted);
    bodies.remove(&last);
    Restart {
        ready,
        delayed,
        delay_passed,
        buried,
        released,
        released_delayed,
        kicked_buried,
        kicked_delayed,
        timed_out,
        reserved,
        deleted: [deleted, last],
        bodies,
    }
}

/// Records the history writes: 14 puts, 4 buries, 3 releases, 2 kicks and
/// 2 deletes.
const RESTART_RECORDS: u64 = 25;

type JobStats = BTreeMap<u64, BTreeMap<String, String>>;

fn all_job_stats(c: &mut Client, h: &Restart) -> JobStats {
    h.bodies.keys().map(|&id| (id, yaml(c, &format!("stats-job {id}")).unwrap_or_else(|| panic!("job {id}")))).collect()
}

/// Compares every job's `stats-job` after a restart with before it.
/// `elapsed` is at least the time between the two snapshots; `moved_to` is
/// the segment compaction moved every job to, if it did.
fn compare_job_stats(
    h: &Restart,
    before: &JobStats,
    after: &JobStats,
    elapsed: Duration,
    moved_to: Option<u64>,
) -> Vec<String> {
    let mut bad = Vec::new();
    let secs = elapsed.as_secs() + 1;
    for (id, b) in before {
        let a = &after[id];
        for key in ["id", "tube", "pri", "delay", "ttr", "releases", "buries", "kicks", "timeouts"] {
            if a[key] != b[key] {
                bad.push(format!("job {id}: {key} {} before, {} after", b[key], a[key]));
            }
        }
        let file = moved_to.map_or(b["file"].clone(), |seq| seq.to_string());
        if a["file"] != file {
            bad.push(format!("job {id}: file {}, want {file}", a["file"]));
        }
        let (want_state, want_reserves) = if *id == h.reserved {
            // A reserved job comes back ready, with the reserve count of its
            // last record (its put).
            ("ready".to_string(), "0".to_string())
        } else {
            (b["state"].clone(), b["reserves"].clone())
        };
        if a["state"] != want_state || a["reserves"] != want_reserves {
            bad.push(format!(
                "job {id}: state {} reserves {}, want {want_state} {want_reserves}",
                a["state"], a["reserves"]
            ));
        }
        let (age_b, age_a): (u64, u64) = (b["age"].parse().unwrap(), a["age"].parse().unwrap());
        if age_a < age_b || age_a > age_b + secs {
            bad.push(format!("job {id}: age {age_b} before, {age_a} after {secs} s"));
        }
        let (left_b, left_a): (u64, u64) = (b["time-left"].parse().unwrap(), a["time-left"].parse().unwrap());
        if a["state"] == "delayed" {
            // The wall-clock deadline is kept: time-left went on counting down.
            if left_a > left_b || left_a + secs < left_b {
                bad.push(format!("job {id}: time-left {left_b} before, {left_a} after {secs} s"));
            }
        } else if left_a != 0 {
            bad.push(format!("job {id}: time-left {left_a} in state {}", a["state"]));
        }
    }
    bad
}

/// Checks the jobs' states and counters against what was done to them,
/// before the stop or after a restart.
fn check_history_fields(h: &Restart, jobs: &JobStats, restarted: bool) {
    // A reserved job comes back ready, with the counters of its last record.
    let (reserved_state, reserves) = if restarted { ("ready", 0) } else { ("reserved", 1) };
    let want: [(u64, &str, &str, u32, u32, [u32; 5]); 12] = [
        // id, tube, state, pri, delay, [reserves, timeouts, releases, buries, kicks]
        (h.ready, "alpha", "ready", 10, 0, [0, 0, 0, 0, 0]),
        (h.delayed, "beta", "delayed", 20, LONG_DELAY_S as u32, [0, 0, 0, 0, 0]),
        (h.delay_passed, "beta", "ready", 21, 1, [0, 0, 0, 0, 0]),
        (h.buried[0], "alpha", "buried", 8, 0, [1, 0, 0, 1, 0]),
        (h.buried[1], "alpha", "buried", 9, 0, [1, 0, 0, 1, 0]),
        (h.buried[2], "alpha", "buried", 7, 0, [1, 0, 0, 1, 0]),
        (h.released, "gamma", "ready", 5, 0, [1, 0, 1, 0, 0]),
        (h.released_delayed, "gamma", "delayed", 6, 7200, [1, 0, 1, 0, 0]),
        (h.kicked_buried, "delta", "ready", 4, 0, [1, 0, 0, 1, 1]),
        (h.kicked_delayed, "delta", "ready", 2, 600, [0, 0, 0, 0, 1]),
        (h.timed_out, "gamma", "ready", 3, 0, [2, 1, 1, 0, 0]),
        (h.reserved, "alpha", reserved_state, 50, 0, [reserves, 0, 0, 0, 0]),
    ];
    let mut bad = Vec::new();
    for (id, tube, state, pri, delay, counters) in want {
        let s = &jobs[&id];
        let keys = ["reserves", "timeouts", "releases", "buries", "kicks"];
        let got: Vec<&str> = keys.iter().map(|k| s[*k].as_str()).collect();
        let want: Vec<String> = counters.iter().map(u32::to_string).collect();
        if (s["tube"].as_str(), s["state"].as_str(), s["pri"].as_str(), s["delay"].as_str())
            != (tube, state, pri.to_string().as_str(), delay.to_string().as_str())
            || got != want
        {
            bad.push(format!("job {id}: {s:?}"));
        }
    }
    assert!(bad.is_empty(), "jobs after the restart:\n{}", bad.join("\n"));
}

fn check_bodies(c: &mut Client, h: &Restart) {
    for (&id, body) in &h.bodies {
        assert_eq!(peek(c, id).as_deref(), Some(body.as_slice()), "body of job {id}");
    }
    for id in h.deleted {
        assert_eq!(peek(c, id), None, "deleted job {id} came back");
    }
}

/// The seqs of the segments on disk that have a header (those in use; the
/// others are spares made ahead).
fn segments_in_use(dir: &Path) -> Vec<u64> {
    segment_files(dir).into_iter().filter(|(_, p)| has_header(p)).map(|(s, _)| s).collect()
}

/// Waits until the segments in use on disk are `want` (the new current
/// segment's header is written on the server's first turn, and a segment
/// emptied by the restart is removed soon after), then checks that the
/// server's `binlog-*` keys name the oldest and the current one.
fn binlog_stats_match_disk(c: &mut Client, dir: &Path, want: &[u64]) {
    let deadline = Instant::now() + REPLY_TIMEOUT;
    while segments_in_use(dir) != want {
        assert!(Instant::now() < deadline, "segments in use: {:?}, want {want:?}", segments_in_use(dir));
        std::thread::sleep(Duration::from_millis(10));
    }
    let s = stats(c);
    let named = (num(&s, "binlog-oldest-index"), num(&s, "binlog-current-index"));
    assert_eq!(named, (want[0], want[want.len() - 1]), "{s:?}");
}

#[test]
fn a_restart_brings_back_every_job_in_its_state() {
    on_both(|backend| {
        let dir = TempDir::new("restart");
        let server = start(backend, &dir, &[]);
        let mut c = server.connect();
        let h = restart_history(&mut c);
        check_history_fields(&h, &all_job_stats(&mut c, &h), false);
        let s = stats(&mut c);
        assert_eq!(
            ["binlog-records-written", "binlog-records-migrated", "binlog-max-size"].map(|k| num(&s, k)),
            [RESTART_RECORDS, 0, 10_485_760],
            "{s:?}"
        );
        binlog_stats_match_disk(&mut c, dir.path(), &[1]);
        let mut before = all_job_stats(&mut c, &h);
        let mut taken = Instant::now();
        stop(server);
        drop(c);

        // Twice: a second restart must not change anything either (C adds
        // one to `buries` of every buried job at each start).
        let jobs = h.bodies.len() as u64;
        for round in 1..=2u64 {
            let server = start(backend, &dir, &[]);
            let log = server.wait_for_log("log ");
            assert!(log.contains(&format!(": {jobs} jobs from ")), "{log}");
            let mut c = server.connect();
            // Each start writes in a new segment. After the first, segment 1
            // (every job's record) and 2 (empty) are kept; after the second,
            // three segments are more than the bound allows for so few live
            // bytes, and compaction moves every job into the new one, so the
            // two old ones go.
            let (migrated, segments, moved_to) = match round {
                1 => (0, vec![1, 2], None),
                _ => (jobs, vec![3], Some(3)),
            };
            wait_for_stats(&mut c, "the jobs moved", |s| num(s, "binlog-records-migrated") == migrated);
            let after = all_job_stats(&mut c, &h);
            let bad = compare_job_stats(&h, &before, &after, taken.elapsed(), moved_to);
            assert!(bad.is_empty(), "{backend}, restart {round}:\n{}", bad.join("\n"));
            check_history_fields(&h, &after, true);
            check_bodies(&mut c, &h);
            let s = stats(&mut c);
            assert_eq!(
                ["binlog-records-written", "binlog-records-migrated", "current-jobs-buried", "current-jobs-delayed"]
                    .map(|k| num(&s, k)),
                [migrated, migrated, 3, 2],
                "{s:?}"
            );
            binlog_stats_match_disk(&mut c, dir.path(), &segments);
            (before, taken) = (after, Instant::now());
            if round == 1 {
                stop(server);
                continue;
            }
            // Buried jobs come back in the order of their buries.
            assert_eq!(c.ask(b"use alpha\r\n", 1), "USING alpha\r\n");
            for id in [h.buried[2], h.buried[0], h.buried[1]] {
                let reply = c.ask(b"peek-buried\r\nkick 1\r\n", 2);
                assert!(reply.starts_with(&format!("FOUND {id} ")), "{reply:?}");
                assert!(reply.ends_with("\r\nKICKED 1\r\n"), "{reply:?}");
            }
            // Ids go on above every id handed out, deleted ones included.
            assert_eq!(put(&mut c, 0, 0, 10, b"new"), h.deleted[1] + 1);
            stop(server);
        }
    });
}

#[test]
fn ids_are_not_reused_after_every_job_was_deleted() {
    on_both(|backend| {
        let dir = TempDir::new("ids");
        let server = start(backend, &dir, &["-s", "4096"]);
        let mut c = server.connect();
        let ids: Vec<u64> = (0..50).map(|i| put(&mut c, 0, 0, 10, format!("job {i}").as_bytes())).collect();
        for id in &ids {
            assert_eq!(c.ask(format!("delete {id}\r\n").as_bytes(), 1), "DELETED\r\n");
        }
        stop(server);
        let last = *ids.last().unwrap();
        // Restarts that write nothing, then one that puts.
        for round in 0..3 {
            let server = start(backend, &dir, &["-s", "4096"]);
            let mut c = server.connect();
            assert_eq!(num(&stats(&mut c), "current-jobs-ready"), 0);
            if round == 2 {
                assert_eq!(put(&mut c, 0, 0, 10, b"after"), last + 1);
            }
            stop(server);
        }
    });
}

// ----- 3. torn and corrupt logs ---------------------------------------------

/// Segment bytes for the damage tests: small, so that a few dozen jobs fill
/// several segments.
const SMALL_SEGMENT: &str = "4096";

/// A log of several segments: jobs put with varied bodies, some deleted.
/// Returns the acknowledged live jobs.
fn write_log(backend: &'static str, dir: &TempDir, seed: u64) -> BTreeMap<u64, Vec<u8>> {
    let server = start(backend, dir, &["-s", SMALL_SEGMENT]);
    let mut c = server.connect();
    let mut rng = Rng(seed);
    let mut acked = BTreeMap::new();
    for i in 0..80 {
        let body = rng.body(300);
        let id = put(&mut c, (i % 7) as u32, 0, 60, &body);
        acked.insert(id, body);
        if i % 4 == 3 {
            let doomed = id - 2;
            assert_eq!(c.ask(format!("delete {doomed}\r\n").as_bytes(), 1), "DELETED\r\n");
            acked.remove(&doomed);
        }
    }
    stop(server);
    acked
}

/// The records of each segment in use, by seq.
fn log_records(dir: &Path) -> BTreeMap<u64, Vec<Rec>> {
    segment_files(dir).into_iter().filter(|(_, p)| has_header(p)).map(|(seq, p)| (seq, records(&p))).collect()
}

/// The jobs that records describe, read in order (a job record makes a
/// job, a delete removes it).
fn replay(log: &BTreeMap<u64, Vec<Rec>>) -> BTreeSet<u64> {
    let mut jobs = BTreeSet::new();
    for r in log.values().flatten() {
        match r.kind {
            1 => {
                jobs.insert(r.id);
            }
            3 => {
                jobs.remove(&r.id);
            }
            _ => {}
        }
    }
    jobs
}

/// Copies a log directory's files.
fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Asserts that the server serves exactly `want` of the acknowledged jobs,
/// each with its body, and no other id up to a few past the highest.
fn check_served(c: &mut Client, acked: &BTreeMap<u64, Vec<u8>>, want: &BTreeSet<u64>, what: &str) {
    let max = acked.keys().max().copied().unwrap_or(0).max(want.iter().max().copied().unwrap_or(0));
    let mut served = BTreeSet::new();
    for id in 1..=max + 3 {
        if let Some(body) = peek(c, id) {
            let acked_body = acked.get(&id).unwrap_or_else(|| panic!("{what}: served job {id}, never acknowledged"));
            assert_eq!(&body, acked_body, "{what}: the body of job {id}");
            served.insert(id);
        }
    }
    assert_eq!(&served, want, "{what}: the jobs served");
}

#[derive(Clone, Copy, Debug)]
enum Damage {
    /// The file ends in the middle of a record.
    Cut,
    /// One byte in the middle of a record is changed.
    FlippedByte,
    /// The whole file is zeros.
    Zeroed,
    /// The file is gone.
    Missing,
    /// The file holds something else.
    Foreign,
}

/// Text that is not a segment, more than a header long.
const FOREIGN_TEXT: &[u8] = b"This is not a runnerbean log segment: it is a note someone saved under that name.\n";

#[test]
fn a_damaged_log_is_cut_where_it_is_damaged_and_the_server_starts() {
    on_both(|backend| {
        let original = TempDir::new("damage-original");
        let acked = write_log(backend, &original, 0x5eed_0001);
        let log = log_records(original.path());
        assert!(log.len() >= 4, "the log should span several segments: {:?}", log.keys());
        // The second segment in use, and its middle record.
        let victim = *log.keys().nth(1).unwrap();
        let recs = &log[&victim];
        let (k, rec) = (recs.len() / 2, recs[recs.len() / 2]);
        assert_eq!(replay(&log), acked.keys().copied().collect(), "the log as written");
        for damage in [Damage::Cut, Damage::FlippedByte, Damage::Zeroed, Damage::Missing, Damage::Foreign] {
            let what = format!("{backend}, {damage:?}");
            let dir = TempDir::new("damage");
            copy_dir(original.path(), dir.path());
            let path = segment_files(dir.path())[&victim].clone();
            let name = path.display();
            let file_bytes = std::fs::metadata(&path).unwrap().len();
            let mut readable = log.clone();
            let warning = match damage {
                Damage::Cut => {
                    let at = rec.offset + rec.bytes / 2;
                    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(at).unwrap();
                    readable.get_mut(&victim).unwrap().truncate(k);
                    format!(
                        "{name}: a torn record at offset {} (torn record (the file ends inside it)); the log is cut \
                         there: {} bytes to the end of the file were not replayed",
                        rec.offset,
                        at - rec.offset
                    )
                }
                Damage::FlippedByte => {
                    let mut bytes = std::fs::read(&path).unwrap();
                    bytes[(rec.offset + rec.bytes / 2) as usize] ^= 0x5a;
                    std::fs::write(&path, bytes).unwrap();
                    readable.get_mut(&victim).unwrap().truncate(k);
                    format!(
                        "{name}: a corrupt record at offset {} (corrupt record (checksum mismatch)); the log is cut \
                         there: {} bytes to the end of the file were not replayed",
                        rec.offset,
                        file_bytes - rec.offset
                    )
                }
                Damage::Zeroed => {
                    std::fs::write(&path, vec![0u8; file_bytes as usize]).unwrap();
                    readable.remove(&victim);
                    format!(
                        "{name}: it is zeros to its end, yet later segments of its shard hold records: what was \
                         written in it is lost; the log is cut there: {file_bytes} bytes from offset 0 were not \
                         replayed; the file is left as it is"
                    )
                }
                Damage::Missing => {
                    std::fs::remove_file(&path).unwrap();
                    readable.remove(&victim);
                    format!(
                        "segments {victim} to {victim} of shard 0 are missing: changes recorded in them are lost \
                         (jobs deleted there may come back)"
                    )
                }
                Damage::Foreign => {
                    std::fs::write(&path, FOREIGN_TEXT).unwrap();
                    readable.remove(&victim);
                    format!("{name}: not a runnerbean log file; the file is left as it is and not read")
                }
            };
            let damaged_bytes = std::fs::read(&path).ok();
            let server = start(backend, &dir, &["-s", SMALL_SEGMENT]);
            server.wait_for_log(&warning);
            let mut c = server.connect();
            let want = replay(&readable);
            assert!(want.len() < acked.len() || matches!(damage, Damage::Missing), "{what}: nothing was cut");
            check_served(&mut c, &acked, &want, &what);
            // Later segments were opened after every acknowledged id.
            let id = put(&mut c, 0, 0, 60, b"after the damage");
            assert!(id > *acked.keys().max().unwrap(), "{what}: id {id} handed out again");
            stop(server);
            // Reading changed nothing in the damaged file.
            assert_eq!(std::fs::read(&path).ok(), damaged_bytes, "{what}: the damaged file was changed");
        }
    });
}

#[test]
fn a_foreign_file_named_like_the_next_segment_does_not_stop_the_log() {
    on_both(|backend| {
        let dir = TempDir::new("foreign-next");
        let mut acked = write_log(backend, &dir, 0x5eed_0002);
        // Where the next start would make its first segment, and where the
        // ones after it would go.
        let next = *log_records(dir.path()).keys().last().unwrap() + 1;
        let foreign = [next, next + 2].map(|seq| dir.path().join(format!("runnerbean-wal.0.{seq:012}")));
        for path in &foreign {
            std::fs::write(path, FOREIGN_TEXT).unwrap();
        }
        let server = start(backend, &dir, &["-s", SMALL_SEGMENT]);
        for path in &foreign {
            server.wait_for_log(&format!("{}: not a runnerbean log file", path.display()));
        }
        let mut c = server.connect();
        // Enough to fill several new segments.
        for i in 0..100u32 {
            let body = vec![b'a' + (i % 26) as u8; 200];
            acked.insert(put(&mut c, 0, 0, 60, &body), body);
        }
        check_served(&mut c, &acked, &acked.keys().copied().collect(), backend);
        let log = stop(server);
        assert!(!log.contains("cannot make log segment"), "{log}");
        for path in &foreign {
            assert_eq!(std::fs::read(path).unwrap(), FOREIGN_TEXT);
        }
        let server = start(backend, &dir, &["-s", SMALL_SEGMENT]);
        let mut c = server.connect();
        check_served(&mut c, &acked, &acked.keys().copied().collect(), backend);
        stop(server);
    });
}

// ----- 4. the lock, and directories that cannot be used ----------------------

#[test]
fn a_second_runnerbean_on_the_same_directory_exits_10() {
    on_both(|backend| {
        let dir = TempDir::new("lock");
        let server = start(backend, &dir, &[]);
        let mut c = server.connect();
        let id = put(&mut c, 0, 0, 60, b"kept");
        let out = run(&["-b", dir.arg()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(EXIT_LOCKED), "{err}");
        assert!(
            err.contains(&format!("{}: the log directory is in use: another process holds its lock", dir.arg())),
            "{err}"
        );
        // The first one goes on as if nothing happened.
        assert_eq!(peek(&mut c, id).as_deref(), Some(&b"kept"[..]));
        stop(server);
    });
}

/// A C beanstalkd serving on 127.0.0.1 with `-b DIR`, killed when dropped.
struct CServer(std::process::Child);

impl CServer {
    /// Starts it and waits until it answers, which it does only once it
    /// holds the directory's lock.
    fn start(binary: &Path, dir: &TempDir) -> CServer {
        use std::io::BufRead;
        let mut child = Command::new(binary)
            .args(["-l", "127.0.0.1", "-p", "0", "-V", "-b", dir.arg()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start beanstalkd");
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let port = loop {
            line.clear();
            assert!(stdout.read_line(&mut line).unwrap() > 0, "beanstalkd exited before binding");
            if let Some(port) = line.trim_end().strip_prefix("bind ").and_then(|r| r.rsplit(':').next()?.parse().ok()) {
                break port;
            }
        };
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let server = CServer(child);
        // It listens only after taking the lock and reading its binlog.
        let deadline = Instant::now() + REPLY_TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "beanstalkd never listened on {port}");
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut c = Client::connect(port);
        assert!(c.ask(b"stats\r\n", 1).starts_with("OK "));
        server
    }
}

impl Drop for CServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn runnerbean_and_c_beanstalkd_refuse_each_others_directory() {
    let Some(beanstalkd) = common::c_beanstalkd() else {
        assert!(!common::live_required(), "RUNNERBEAN_REQUIRE_LIVE=1 but `beanstalkd` is not on PATH");
        eprintln!("wal lock: C beanstalkd part skipped, `beanstalkd` is not on PATH");
        return;
    };
    on_both(|backend| {
        // C finds the lock taken and exits 10.
        let dir = TempDir::new("lock-c");
        let server = start(backend, &dir, &[]);
        let out = Command::new(&beanstalkd).args(["-l", "127.0.0.1", "-p", "0", "-b", dir.arg()]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(EXIT_LOCKED), "beanstalkd: {err}");
        assert!(err.contains("failed to lock wal dir"), "{err}");
        stop(server);
        // And the other way round: runnerbean is refused while C runs.
        let c = CServer::start(&beanstalkd, &dir);
        let out = run(&["-b", dir.arg()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(EXIT_LOCKED), "{err}");
        assert!(err.contains("the log directory is in use: another process holds its lock"), "{err}");
        drop(c);
    });
}

#[test]
fn a_directory_that_cannot_be_created_stops_the_start() {
    let dir = TempDir::new("not-a-dir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"a regular file").unwrap();
    let under = file.join("log");
    let out = run(&["-b", under.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_LOG), "{err}");
    assert!(
        err.contains(&format!("{}: cannot use it for the log: Not a directory (os error 20)", under.display())),
        "{err}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"a regular file");
}

/// A file system mounted by a test (as root), unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    /// Mounts a tmpfs with `options` (`size=...`, `ro`) on `path`; `None`,
    /// with a message, where mounting is not permitted, unless the
    /// environment says these tests must run.
    fn tmpfs(path: &Path, flags: libc::c_ulong, options: &str) -> Option<Mount> {
        use std::ffi::CString;
        std::fs::create_dir_all(path).unwrap();
        let target = CString::new(path.to_str().unwrap()).unwrap();
        let (source, fstype, data) =
            (CString::new("tmpfs").unwrap(), CString::new("tmpfs").unwrap(), CString::new(options).unwrap());
        // Safety: valid C strings for the duration of the call.
        let r = unsafe { libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), flags, data.as_ptr().cast()) };
        if r == 0 {
            return Some(Mount(path.to_path_buf()));
        }
        let e = std::io::Error::last_os_error();
        assert!(!common::live_required(), "RUNNERBEAN_REQUIRE_LIVE=1 but a tmpfs cannot be mounted: {e}");
        eprintln!("wal: skipped, cannot mount a tmpfs ({e}); run as root to test a full or read-only disk");
        None
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let target = std::ffi::CString::new(self.0.to_str().unwrap()).unwrap();
        // Safety: a valid C string. Detached, so that a failed test that
        // left something open still unmounts.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

#[test]
fn a_directory_that_cannot_be_written_stops_the_start() {
    let dir = TempDir::new("read-only");
    let Some(_mount) = Mount::tmpfs(&dir.path().join("ro"), libc::MS_RDONLY, "size=64k") else { return };
    for path in [dir.path().join("ro"), dir.path().join("ro/log")] {
        let out = run(&["-b", path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(EXIT_LOG), "{err}");
        assert!(
            err.contains(&format!(
                "{}: cannot use it for the log: Read-only file system (os error 30)",
                path.display()
            )),
            "{err}"
        );
    }
}

// ----- 5. tiny segments ---------------------------------------------------

/// Bytes of the segments the server makes for `-s`: whole pages.
fn segment_bytes_for(s: u64) -> u64 {
    s.max(1).div_ceil(4096) * 4096
}

/// The bound docs/OPERATIONS.md states for the directory: twice the live
/// record bytes, three segments, and the spares made ahead (the files that
/// have no header yet).
fn check_bound(dir: &Path, live_bytes: u64, segment_bytes: u64, what: &str) -> (u64, usize) {
    let (bytes, files) = dir_usage(dir);
    let spares: u64 = segment_files(dir)
        .values()
        .filter(|p| !has_header(p))
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let bound = 2 * live_bytes + 3 * segment_bytes + spares;
    assert!(
        bytes <= bound,
        "{what}: {bytes} bytes in the directory, bound {bound} (live {live_bytes}, spares {spares})"
    );
    (bytes, files)
}

#[test]
fn tiny_segments_and_bodies_larger_than_a_segment() {
    on_both(|backend| {
        for s in [1u64, 100, 4096] {
            let what = format!("{backend}, -s {s}");
            let dir = TempDir::new("tiny");
            let s_arg = s.to_string();
            let args = ["-s", s_arg.as_str(), "-f0"];
            let server = start(backend, &dir, &args);
            let mut c = server.connect();
            let mut rng = Rng(0x7135 ^ s);
            let mut acked = BTreeMap::new();
            let mut buried = BTreeSet::new();
            for i in 0..150u64 {
                // Now and then a body larger than a segment.
                let body = if i % 50 == 7 { vec![b'B'; 10_000] } else { rng.body(200) };
                let id = put(&mut c, 0, 0, 60, &body);
                acked.insert(id, body);
                if i % 3 == 1 {
                    assert_eq!(c.ask(format!("delete {}\r\n", id - 1).as_bytes(), 1), "DELETED\r\n");
                    acked.remove(&(id - 1));
                    buried.remove(&(id - 1));
                } else if i % 10 == 0 {
                    c.send(format!("reserve-job {id}\r\nbury {id} 1\r\n").as_bytes());
                    assert!(c.replies(2).ends_with(b"\r\nBURIED\r\n"), "{what}: bury {id}");
                    buried.insert(id);
                }
            }
            assert_eq!(num(&stats(&mut c), "binlog-max-size"), s, "{what}");
            let live: u64 =
                acked.iter().map(|(id, b)| live_record_bytes("default", b.len(), buried.contains(id))).sum();
            check_bound(dir.path(), live, segment_bytes_for(s), &what);
            stop(server);
            let server = start(backend, &dir, &args);
            let mut c = server.connect();
            check_served(&mut c, &acked, &acked.keys().copied().collect(), &what);
            assert_eq!(num(&stats(&mut c), "current-jobs-buried"), buried.len() as u64, "{what}");
            let (_, files) = check_bound(dir.path(), live, segment_bytes_for(s), &what);
            // Every file but the lock is at least a segment.
            let bound_files = (2 * live + 3 * segment_bytes_for(s)) / segment_bytes_for(s) + 16 + 1;
            assert!(files as u64 <= bound_files, "{what}: {files} files");
            stop(server);
        }
    });
}
