//! The write-ahead log at the wire: the real binary with `-b DIR`, stopped
//! and started again on the same directory, on both back ends, with one
//! core and with four (each core's shard keeps its own log files; the
//! on-disk checks read the log of the shard that holds the test's jobs,
//! and bound every shard's).
//!
//! 1. Restart: every job comes back in its state with every field that
//!    `stats-job` shows and its body (a reserved job ready, a delayed one
//!    counting down to the same wall-clock deadline); ids are never handed
//!    out again, even after every job was deleted; the `binlog-*` keys of
//!    `stats` say what is on disk.
//! 2. SIGTERM under pipelined load, in every sync mode: the server exits 0
//!    and every reply received before the connection closed is honoured
//!    after the restart; nothing else comes back.
//! 3. Torn and corrupt logs: the server starts, serves exactly the jobs the
//!    readable records describe, with their bodies, and says what it cut.
//! 4. The directory's lock against a second runnerbean and C beanstalkd
//!    (exit 10), and directories that cannot be made or written (exit 1).
//! 5. Tiny `-s` values and bodies larger than a segment.
//! 6. A full file system (a size-limited tmpfs the test mounts; skipped
//!    with a message where mounting is not permitted, unless
//!    `RUNNERBEAN_REQUIRE_LIVE=1`): the reference's replies, nothing
//!    written damaged, puts again once there is room, and a start without
//!    room for its jobs' deletes refused.
//! 7. Compaction: the directory stays within the bound docs/OPERATIONS.md
//!    states under workloads that pin old segments in C beanstalkd.
//! 8. Reuse: under steady puts and deletes, emptied segments' files are
//!    written again instead of new ones made, and a restart reads exactly
//!    the live jobs from them.
//!
//! The on-disk checks read segment files as docs/LOG-FORMAT.md lays them
//! out (a 64-byte header, then records framed by length and checksum).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{BACKENDS, BIN, CServer, Client, REPLY_TIMEOUT, Server, TempDir, cores, on_both_and_four_cores};

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

/// The shard of the tube `default` with the cores of the servers the test
/// starts now: the shard whose log holds the jobs of a test that uses no
/// other tube (0 with one core).
fn home() -> u32 {
    runnerbean::engine::shard_of_tube("default", cores())
}

/// The segment files of the home shard in `dir`, by seq.
fn segment_files(dir: &Path) -> BTreeMap<u64, PathBuf> {
    shard_segment_files(dir, home())
}

/// The segment files of a shard in `dir`, by seq.
fn shard_segment_files(dir: &Path, shard: u32) -> BTreeMap<u64, PathBuf> {
    let prefix = format!("runnerbean-wal.{shard}.");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        if let Some(seq) = name.strip_prefix(&prefix) {
            out.insert(seq.parse().unwrap(), entry.path());
        }
    }
    out
}

/// Whether a segment file has its own header (it became a segment). The
/// spares made ahead have none: a new file starts with zeros, and a reused
/// one still has the header of the segment it was, which names an earlier
/// seq (bytes 32..40) than the file's name. A file removed meanwhile has
/// none.
fn has_header(path: &Path) -> bool {
    let name = path.file_name().unwrap().to_str().unwrap();
    let seq: u64 = name.rsplit('.').next().unwrap().parse().unwrap();
    std::fs::read(path)
        .is_ok_and(|bytes| bytes.len() >= HEADER_BYTES && u64::from_le_bytes(bytes[32..40].try_into().unwrap()) == seq)
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

/// Runs `test` on both back ends at the same time, for a test that spends
/// most of its time waiting for seconds to pass,
/// with one core, then with four.
fn on_both_at_once_and_four_cores(test: impl Fn(&'static str) + Sync) {
    let test = &test;
    for n in [1, 4] {
        std::thread::scope(|s| {
            let runs: Vec<_> = BACKENDS
                .iter()
                .map(|&backend| {
                    s.spawn(move || {
                        common::with_cores(n, || {
                            eprintln!("-- {backend}, --cores {n}");
                            test(backend)
                        })
                    })
                })
                .collect();
            for run in runs {
                if let Err(panic) = run.join() {
                    std::panic::resume_unwind(panic);
                }
            }
        });
    }
}

/// Starts runnerbean with `-b DIR` and `args`, and returns once it serves.
fn start(backend: &'static str, dir: &TempDir, args: &[&str]) -> Server {
    let mut all = vec!["-b", dir.arg()];
    all.extend_from_slice(args);
    let server = Server::start(backend, &all);
    // It binds before it takes the directory's lock and reads the log, and
    // answers only after: until then, another process could take the lock.
    assert!(server.connect().ask(b"stats\r\n", 1).starts_with("OK "), "{}", server.log_text());
    server
}

/// Stops a server with SIGTERM; it must exit 0. Returns what it printed.
fn stop(mut server: Server) -> String {
    server.signal("TERM");
    assert_eq!(server.wait(EXIT_TIMEOUT), Some(0), "after SIGTERM:\n{}", server.log_text());
    server.log_text()
}

/// Runs runnerbean to its exit (a start that must fail), with the cores
/// of the test's servers.
fn run(args: &[&str]) -> Output {
    let mut command = Command::new(BIN);
    command.args(["-l", "127.0.0.1", "-p", "0", "--cores", &cores().to_string()]).args(args);
    run_to_exit(command)
}

/// Runs a command that must exit by itself, killing it if it does not.
fn run_to_exit(mut command: Command) -> Output {
    use std::process::Stdio;
    let mut child =
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start it");
    let deadline = Instant::now() + EXIT_TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("{command:?} did not exit; it printed:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.wait_with_output().unwrap()
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
    /// Delayed at the stop; its deadline passes while the server is down.
    ends_while_down: u64,
    /// When that deadline has passed, for sure.
    down_deadline: Instant,
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
    let ends_while_down = put_in(c, "beta", 22, 1, 47, "its delay ends while the server is down");
    // Later than the deadline the server set (the put was answered),
    // with room for the two servers' readings of the wall clock.
    let down_deadline = Instant::now() + Duration::from_millis(1050);
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
        ends_while_down,
        down_deadline,
        deleted: [deleted, last],
        bodies,
    }
}

/// Records the history writes: 15 puts, 4 buries, 3 releases, 2 kicks and
/// 2 deletes.
const RESTART_RECORDS: u64 = 26;

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
        } else if *id == h.ends_while_down {
            ("ready".to_string(), b["reserves"].clone())
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

/// A job as the restart test expects it: id, tube, state, pri, delay, and
/// its counters [reserves, timeouts, releases, buries, kicks].
type WantedJob = (u64, &'static str, &'static str, u32, u32, [u32; 5]);

/// Checks the jobs' states and counters against what was done to them,
/// before the stop or after a restart.
fn check_history_fields(h: &Restart, jobs: &JobStats, restarted: bool) {
    // A reserved job comes back ready, with the counters of its last record.
    let (reserved_state, reserves) = if restarted { ("ready", 0) } else { ("reserved", 1) };
    let down_state = if restarted { "ready" } else { "delayed" };
    let want: [WantedJob; 13] = [
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
        (h.ends_while_down, "beta", down_state, 22, 1, [0, 0, 0, 0, 0]),
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

/// Waits until the segments in use on disk are `want` in the home shard's
/// log, and those of every other shard's among them (the new current
/// segment's header is written on the server's first turn, and a segment
/// emptied by the restart is removed soon after), then checks that the
/// server's `binlog-*` keys name the oldest and the current one (of every
/// shard's: the oldest of any, the newest of any).
fn binlog_stats_match_disk(c: &mut Client, dir: &Path, want: &[u64]) {
    let deadline = Instant::now() + REPLY_TIMEOUT;
    let in_range = |seq: &u64| (want[0]..=want[want.len() - 1]).contains(seq);
    let shards = || -> Vec<Vec<u64>> {
        (0..cores())
            .map(|shard| {
                let files = shard_segment_files(dir, shard);
                files.into_iter().filter(|(_, p)| has_header(p)).map(|(s, _)| s).collect()
            })
            .collect()
    };
    while segments_in_use(dir) != want || !shards().iter().flatten().all(in_range) {
        assert!(Instant::now() < deadline, "segments in use: {:?} by shard, want {want:?}", shards());
        std::thread::sleep(Duration::from_millis(10));
    }
    let s = stats(c);
    let named = (num(&s, "binlog-oldest-index"), num(&s, "binlog-current-index"));
    assert_eq!(named, (want[0], want[want.len() - 1]), "{s:?}");
}

#[test]
fn a_restart_brings_back_every_job_in_its_state() {
    on_both_at_once_and_four_cores(|backend| {
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
        assert_eq!(before[&h.ends_while_down]["state"], "delayed", "{backend}: its delay ended too soon to test");
        stop(server);
        drop(c);
        // Down until that job's deadline has passed.
        std::thread::sleep(h.down_deadline.saturating_duration_since(Instant::now()));

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
    on_both_and_four_cores(|backend| {
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

// ----- 2. SIGTERM under load ------------------------------------------------

/// Connections that load the server, and the commands each sends at once.
const LOAD_CONNECTIONS: usize = 4;
const LOAD_DEPTH: usize = 16;

/// Replies the connections must have had, all together, before SIGTERM is
/// sent: enough that the stop falls among commands in flight.
const LOAD_ACKS_BEFORE_STOP: usize = 600;

/// What one loading connection sent and was told before it was closed.
#[derive(Default)]
struct Told {
    /// INSERTED: id → body.
    inserted: BTreeMap<u64, Vec<u8>>,
    /// DELETED.
    deleted: BTreeSet<u64>,
    /// Bodies of puts sent and never answered: such a job may exist or not.
    puts_in_doubt: BTreeSet<Vec<u8>>,
    /// Deletes sent and never answered.
    deletes_in_doubt: BTreeSet<u64>,
    /// The highest id in any reply.
    max_id: u64,
}

/// Loads the server on `port` with pipelined puts and deletes of the jobs
/// it put, `LOAD_DEPTH` commands at a time, until the server closes the
/// connection; `acks` counts the replies of every connection.
fn load(port: u16, conn: usize, acks: &std::sync::atomic::AtomicUsize) -> Told {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    enum Sent {
        Put(Vec<u8>),
        Delete(u64),
    }
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    let mut rng = Rng(0x10ad ^ (conn as u64 + 1) << 20);
    let mut told = Told::default();
    let mut deletable: Vec<u64> = Vec::new();
    let mut buf = Vec::new();
    for batch in 0u64.. {
        let mut sent = std::collections::VecDeque::new();
        let mut bytes = Vec::new();
        for k in 0..LOAD_DEPTH {
            if k % 3 == 2
                && let Some(id) = deletable.pop()
            {
                bytes.extend_from_slice(format!("delete {id}\r\n").as_bytes());
                sent.push_back(Sent::Delete(id));
            } else {
                // Unique, so that a job found after the restart names the
                // put it came from.
                let mut body = format!("conn {conn} batch {batch} put {k} ").into_bytes();
                body.extend(rng.body(300).iter().map(|b| b'a' + b % 26));
                bytes.extend_from_slice(&put_bytes(k as u32, 0, 60, &body));
                sent.push_back(Sent::Put(body));
            }
        }
        let mut open = stream.write_all(&bytes).is_ok();
        while open && !sent.is_empty() {
            match buf.windows(2).position(|w| w == b"\r\n") {
                Some(end) => {
                    let line = String::from_utf8(buf.drain(..end + 2).collect()).unwrap();
                    match (sent.pop_front().unwrap(), line.trim_end()) {
                        (Sent::Put(body), reply) => {
                            let id: u64 = reply
                                .strip_prefix("INSERTED ")
                                .and_then(|n| n.parse().ok())
                                .unwrap_or_else(|| panic!("put: {reply:?}"));
                            told.max_id = told.max_id.max(id);
                            told.inserted.insert(id, body);
                            deletable.insert(rng.next() as usize % (deletable.len() + 1), id);
                        }
                        (Sent::Delete(id), reply) => {
                            assert_eq!(reply, "DELETED", "delete {id}");
                            told.deleted.insert(id);
                        }
                    }
                    acks.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    let mut chunk = [0u8; 16 * 1024];
                    match stream.read(&mut chunk) {
                        Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                        // Closed (or reset) by the stopping server.
                        _ => open = false,
                    }
                }
            }
        }
        if !open {
            for s in sent {
                match s {
                    Sent::Put(body) => told.puts_in_doubt.insert(body),
                    Sent::Delete(id) => told.deletes_in_doubt.insert(id),
                };
            }
            return told;
        }
    }
    unreachable!("the loop ends when the connection closes")
}

#[test]
fn sigterm_under_load_loses_no_acknowledged_change() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    on_both_and_four_cores(|backend| {
        // Small segments, so that the load fills several and the stop
        // finds some closed.
        for mode in [&["-f0", "-s", "32768"][..], &["-s", "32768"][..], &["-F", "-s", "32768"][..]] {
            let what = format!("{backend}, {mode:?}");
            let dir = TempDir::new("sigterm");
            let server = start(backend, &dir, mode);
            let acks = AtomicUsize::new(0);
            let (port, acks) = (server.port, &acks);
            let told: Vec<Told> = std::thread::scope(|s| {
                let loaders: Vec<_> =
                    (0..LOAD_CONNECTIONS).map(|conn| s.spawn(move || load(port, conn, acks))).collect();
                let deadline = Instant::now() + REPLY_TIMEOUT;
                while acks.load(Ordering::Relaxed) < LOAD_ACKS_BEFORE_STOP {
                    assert!(Instant::now() < deadline, "{what}: the load never got going");
                    std::thread::sleep(Duration::from_millis(1));
                }
                server.signal("TERM");
                loaders.into_iter().map(|l| l.join().unwrap()).collect()
            });
            stop(server);
            let mut live = BTreeMap::new();
            let mut deleted: BTreeSet<u64> = BTreeSet::new();
            let mut in_doubt_bodies = BTreeSet::new();
            let mut in_doubt_deletes: BTreeSet<u64> = BTreeSet::new();
            let mut max_id = 0;
            for t in &told {
                for (id, body) in &t.inserted {
                    if !t.deleted.contains(id) {
                        live.insert(*id, body.clone());
                    }
                }
                deleted.extend(&t.deleted);
                in_doubt_bodies.extend(t.puts_in_doubt.iter().cloned());
                in_doubt_deletes.extend(&t.deletes_in_doubt);
                max_id = max_id.max(t.max_id);
            }
            let server = start(backend, &dir, mode);
            let mut c = server.connect();
            let s = stats(&mut c);
            let jobs: u64 =
                ["current-jobs-ready", "current-jobs-delayed", "current-jobs-buried", "current-jobs-reserved"]
                    .iter()
                    .map(|k| num(&s, k))
                    .sum();
            // Every job there is one that was put; ids beyond the highest
            // acknowledged one can only be puts in doubt.
            let mut found = 0;
            for id in 1..=max_id + in_doubt_bodies.len() as u64 {
                let Some(body) = peek(&mut c, id) else {
                    assert!(!live.contains_key(&id) || in_doubt_deletes.contains(&id), "{what}: job {id} was lost");
                    continue;
                };
                found += 1;
                assert!(!deleted.contains(&id), "{what}: deleted job {id} came back");
                match live.get(&id) {
                    Some(want) => assert_eq!(&body, want, "{what}: the body of job {id}"),
                    None => assert!(
                        in_doubt_bodies.contains(&body),
                        "{what}: job {id} holds {:?}, which no unanswered put sent",
                        String::from_utf8_lossy(&body)
                    ),
                }
            }
            assert_eq!(found, jobs, "{what}: jobs beyond the ids looked at: {s:?}");
            // A delete in doubt never ran: the stop writes the reply of
            // every command that ran, on whichever core it ran.
            assert!(
                live.len() as u64 <= found,
                "{what}: {} jobs acknowledged and not deleted, {found} there",
                live.len()
            );
            assert!(put(&mut c, 0, 0, 60, b"after") > max_id, "{what}: an id handed out again");
            stop(server);
        }
    });
}

// ----- 3. torn and corrupt logs ---------------------------------------------

/// Segment bytes for the damage tests: small, so that a few dozen jobs fill
/// several segments.
const SMALL_SEGMENT: &str = "4096";

/// A log of several segments: jobs put with varied bodies, some deleted.
struct Written {
    /// The acknowledged live jobs.
    live: BTreeMap<u64, Vec<u8>>,
    /// Every job put, deleted or not (a lost delete brings one back).
    put: BTreeMap<u64, Vec<u8>>,
}

fn write_log(backend: &'static str, dir: &TempDir, seed: u64) -> Written {
    let server = start(backend, dir, &["-s", SMALL_SEGMENT]);
    let mut c = server.connect();
    let mut rng = Rng(seed);
    let mut live = BTreeMap::new();
    let mut all = BTreeMap::new();
    for i in 0..80 {
        let body = rng.body(300);
        let id = put(&mut c, (i % 7) as u32, 0, 60, &body);
        live.insert(id, body.clone());
        all.insert(id, body);
        if i % 4 == 3 {
            let doomed = id - 2;
            assert_eq!(c.ask(format!("delete {doomed}\r\n").as_bytes(), 1), "DELETED\r\n");
            live.remove(&doomed);
        }
    }
    stop(server);
    Written { live, put: all }
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

/// Asserts that the server serves exactly `want` of the jobs put (`acked`),
/// each with the body it was put with, and no other id up to a few past
/// the highest.
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
    /// Its header is zeros, its records are there.
    ZeroedHeader,
    /// The file is gone.
    Missing,
    /// The file holds something else.
    Foreign,
}

/// Text that is not a segment, more than a header long.
const FOREIGN_TEXT: &[u8] = b"This is not a runnerbean log segment: it is a note someone saved under that name.\n";

#[test]
fn a_damaged_log_is_cut_where_it_is_damaged_and_the_server_starts() {
    on_both_and_four_cores(|backend| {
        let original = TempDir::new("damage-original");
        let written = write_log(backend, &original, 0x5eed_0001);
        let acked = &written.put;
        let log = log_records(original.path());
        assert!(log.len() >= 4, "the log should span several segments: {:?}", log.keys());
        // The second segment in use, and its middle record.
        let victim = *log.keys().nth(1).unwrap();
        let recs = &log[&victim];
        let (k, rec) = (recs.len() / 2, recs[recs.len() / 2]);
        assert_eq!(replay(&log), written.live.keys().copied().collect(), "the log as written");
        for damage in
            [Damage::Cut, Damage::FlippedByte, Damage::Zeroed, Damage::ZeroedHeader, Damage::Missing, Damage::Foreign]
        {
            let what = format!("{backend}, {damage:?}");
            let dir = TempDir::new("damage");
            copy_dir(original.path(), dir.path());
            let path = segment_files(dir.path())[&victim].clone();
            let name = path.display();
            let file_bytes = std::fs::metadata(&path).unwrap().len();
            let mut readable = log.clone();
            let shard = home();
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
                        "{name}: it is zeros to its end, yet later segments of shard {shard} were written: its header \
                         never reached the disk, and the records written in it, if any, are lost; it holds \
                         nothing and is removed"
                    )
                }
                Damage::ZeroedHeader => {
                    let mut bytes = std::fs::read(&path).unwrap();
                    bytes[..HEADER_BYTES].fill(0);
                    std::fs::write(&path, bytes).unwrap();
                    readable.remove(&victim);
                    format!(
                        "{name}: the header is all zeros, but the file holds other bytes from offset {HEADER_BYTES}: \
                         what was written in it is lost; the file is left as it is and not read"
                    )
                }
                Damage::Missing => {
                    std::fs::remove_file(&path).unwrap();
                    readable.remove(&victim);
                    format!(
                        "segments {victim} to {victim} of shard {shard} are missing: changes recorded in them are lost \
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
            let live: BTreeSet<u64> = written.live.keys().copied().collect();
            assert_ne!(want, live, "{what}: the damage cut nothing");
            check_served(&mut c, acked, &want, &what);
            // Later segments were opened after every acknowledged id.
            let id = put(&mut c, 0, 0, 60, b"after the damage");
            assert!(id > *acked.keys().max().unwrap(), "{what}: id {id} handed out again");
            stop(server);
            // Reading changed nothing in the damaged file; one of zeros,
            // which holds nothing, is gone.
            let want = if matches!(damage, Damage::Zeroed) { None } else { damaged_bytes };
            assert_eq!(std::fs::read(&path).ok(), want, "{what}: the damaged file was changed");
        }
    });
}

#[test]
fn a_foreign_file_named_like_the_next_segment_does_not_stop_the_log() {
    on_both_and_four_cores(|backend| {
        let dir = TempDir::new("foreign-next");
        let mut acked = write_log(backend, &dir, 0x5eed_0002).live;
        // Where the next start would make its first segment, and where the
        // ones after it would go.
        let next = *log_records(dir.path()).keys().last().unwrap() + 1;
        let foreign = [next, next + 2].map(|seq| dir.path().join(format!("runnerbean-wal.{}.{seq:012}", home())));
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
    on_both_and_four_cores(|backend| {
        let dir = TempDir::new("lock");
        let server = start(backend, &dir, &[]);
        let mut c = server.connect();
        let id = put(&mut c, 0, 0, 60, b"kept");
        let out = run(&["-b", dir.arg()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(EXIT_LOCKED), "{err}");
        assert!(
            err.contains(&format!(
                "failed to lock wal dir {0}: the log directory is in use: another process holds {0}/lock\n",
                dir.arg()
            )),
            "{err}"
        );
        // The first one goes on as if nothing happened.
        assert_eq!(peek(&mut c, id).as_deref(), Some(&b"kept"[..]));
        stop(server);
    });
}

/// C beanstalkd with `-b DIR`, once it answers (which it does only once it
/// holds the directory's lock).
fn start_c(binary: &Path, dir: &TempDir) -> CServer {
    let server = CServer::start(binary, &["-b", dir.arg()]);
    let mut c = Client::connect(server.port);
    assert!(c.ask(b"stats\r\n", 1).starts_with("OK "));
    server
}

#[test]
fn runnerbean_and_c_beanstalkd_refuse_each_others_directory() {
    let Some(beanstalkd) = common::c_beanstalkd() else {
        assert!(!common::live_required(), "RUNNERBEAN_REQUIRE_LIVE=1 but `beanstalkd` is not on PATH");
        eprintln!("wal lock: C beanstalkd part skipped, `beanstalkd` is not on PATH");
        return;
    };
    on_both_and_four_cores(|backend| {
        // C finds the lock taken and exits 10.
        let dir = TempDir::new("lock-c");
        let server = start(backend, &dir, &[]);
        let mut command = Command::new(&beanstalkd);
        command.args(["-l", "127.0.0.1", "-p", "0", "-b", dir.arg()]);
        let out = run_to_exit(command);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(EXIT_LOCKED), "beanstalkd: {err}");
        assert!(err.contains("failed to lock wal dir"), "{err}");
        stop(server);
        // And the other way round: runnerbean is refused while C runs.
        let c = start_c(&beanstalkd, &dir);
        let out = run(&["-b", dir.arg()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(EXIT_LOCKED), "{err}");
        assert!(err.contains(&format!("failed to lock wal dir {}: ", dir.arg())), "{err}");
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

/// What the directory holds, read in one pass: bytes and count of every
/// file, and for each shard the bytes of its segment files and of those
/// that have no header yet (the spares made ahead).
fn dir_usage_and_spares(dir: &Path) -> (u64, usize, BTreeMap<u32, (u64, u64)>) {
    let (mut bytes, mut files, mut shards) = (0, 0, BTreeMap::new());
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        // A file removed between the listing and its metadata is gone.
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        bytes += meta.len();
        files += 1;
        let name = entry.file_name().into_string().unwrap();
        let Some(shard) = name.strip_prefix("runnerbean-wal.").and_then(|r| r.split('.').next()?.parse().ok()) else {
            continue;
        };
        let (shard_bytes, spares) = shards.entry(shard).or_insert((0, 0));
        *shard_bytes += meta.len();
        if !has_header(&entry.path()) {
            *spares += meta.len();
        }
    }
    (bytes, files, shards)
}

/// Checks the bound docs/OPERATIONS.md states for each shard's log: twice
/// its live record bytes, three segments, and the spares made ahead; and
/// for the directory, the sum of those. Every job is in `default` (the
/// home shard's; the other shards' logs hold none). The server may be a
/// turn or two behind the replies (a move written, then the oldest
/// segment removed once that is durable), so the bound must hold once it
/// has caught up, soon after. Returns the bytes and files.
fn check_bound(dir: &Path, live_bytes: u64, segment_bytes: u64, what: &str) -> (u64, usize) {
    let deadline = Instant::now() + REPLY_TIMEOUT;
    loop {
        let (bytes, files, shards) = dir_usage_and_spares(dir);
        let spares: u64 = shards.values().map(|&(_, spares)| spares).sum();
        let bound = 2 * live_bytes + 3 * u64::from(cores()) * segment_bytes + spares;
        let over: Vec<String> = shards
            .iter()
            .filter_map(|(&shard, &(shard_bytes, spares))| {
                let live = if shard == home() { live_bytes } else { 0 };
                let bound = 2 * live + 3 * segment_bytes + spares;
                (shard_bytes > bound).then(|| format!("shard {shard}: {shard_bytes} bytes, bound {bound}"))
            })
            .collect();
        if bytes <= bound && over.is_empty() {
            assert!(shards.keys().all(|&shard| shard < cores()), "{what}: segments of shards {:?}", shards.keys());
            return (bytes, files);
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {bytes} bytes in the directory, bound {bound} (live {live_bytes}, spares {spares}); {over:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The inode numbers of the segment files in `dir`.
fn segment_inodes(dir: &Path) -> BTreeSet<u64> {
    use std::os::unix::fs::MetadataExt;
    segment_files(dir).values().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.ino()).collect()
}

#[test]
fn steady_puts_and_deletes_write_into_the_same_files_again() {
    on_both_and_four_cores(|backend| {
        for sync in ["-f0", "-F"] {
            let what = format!("{backend} {sync}");
            let dir = TempDir::new("reuse");
            let server = start(backend, &dir, &["-s", "8192", sync]);
            let mut c = server.connect();
            let mut live = std::collections::VecDeque::new();
            let mut seen = BTreeSet::new();
            let mut warm = BTreeSet::new();
            // About 40 segments' worth of records through a handful of
            // live jobs.
            for i in 0..600u32 {
                let body = vec![b'a' + (i % 26) as u8; 500];
                live.push_back((put(&mut c, 1, 0, 60, &body), body));
                if live.len() > 5 {
                    let (id, _) = live.pop_front().unwrap();
                    assert_eq!(c.ask(format!("delete {id}\r\n").as_bytes(), 1), "DELETED\r\n", "{what}");
                }
                if i == 150 {
                    warm = segment_inodes(dir.path());
                }
                if i > 150 {
                    seen.extend(segment_inodes(dir.path()));
                }
            }
            // A file made now and then is allowed (a turn where no emptied
            // segment was safe to give up yet); one per segment filled is
            // what making every spare anew looks like.
            let new: Vec<_> = seen.difference(&warm).collect();
            assert!(new.len() <= 3, "{what}: {} files made after warming up, {} there then", new.len(), warm.len());
            stop(server);
            let server = start(backend, &dir, &[]);
            let mut c = server.connect();
            for (id, body) in &live {
                assert_eq!(peek(&mut c, *id).as_deref(), Some(body.as_slice()), "{what}: job {id}");
            }
            let s = stats(&mut c);
            assert_eq!(num(&s, "current-jobs-ready"), live.len() as u64, "{what}");
            let log = server.log_text();
            assert!(!log.contains("corrupt") && !log.contains("torn"), "{what}: {log}");
            stop(server);
        }
    });
}

#[test]
fn tiny_segments_and_bodies_larger_than_a_segment() {
    on_both_and_four_cores(|backend| {
        for s in [1u64, 100, 4096] {
            let what = format!("{backend}, -s {s}");
            let dir = TempDir::new("tiny");
            let s_arg = s.to_string();
            let args = ["-s", s_arg.as_str()];
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
            // Every file but the lock is at least a segment; each shard
            // makes at most 16 spares ahead.
            let n = u64::from(cores());
            let bound_files = (2 * live + 3 * n * segment_bytes_for(s)) / segment_bytes_for(s) + 16 * n + 1;
            assert!(files as u64 <= bound_files, "{what}: {files} files");
            stop(server);
        }
    });
}

// ----- 6. a full disk -------------------------------------------------------

/// The file system the full-disk test mounts, and the segments it runs
/// with: room for a few dozen of them for each of four shards (each makes
/// up to 16 spares ahead, 256 KiB; with 1 MiB, four shards' spares took
/// the whole disk, and what a deleted filler gave back went to the
/// shards that had not made theirs yet). The test fills what is left
/// whatever the size.
const FULL_DISK_FS: &str = "size=4m";
const FULL_DISK_SEGMENT: &str = "16384";

/// Segments of the start that finds no room: its one segment has room for
/// the deletes of fewer jobs than there are.
const NO_ROOM_SEGMENT: &str = "4096";

/// Bytes free for an unprivileged file on the file system `dir` is on.
fn free_bytes(dir: &Path) -> u64 {
    let path = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
    // Safety: a valid C string and a statvfs to fill.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut st) }, 0, "{}", std::io::Error::last_os_error());
    st.f_bavail * st.f_frsize
}

/// Fills the file system `dir` is on with the file `dir/filler`, leaving
/// `left` bytes free (none: until the file system refuses).
fn fill(dir: &Path, left: u64) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
    let chunk = [0xf1u8; 4096];
    loop {
        let free = free_bytes(dir);
        if free <= left {
            break;
        }
        let n = (free - left).min(chunk.len() as u64) as usize;
        match file.write_all(&chunk[..n]) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    assert!(free_bytes(dir) <= left, "{} bytes still free", free_bytes(dir));
    path
}

/// A put that may be refused with OUT_OF_MEMORY (`None`); the jobs put go
/// into `acked`.
fn try_put(c: &mut Client, acked: &mut BTreeMap<u64, Vec<u8>>, pri: u32, delay_s: u32, body: &[u8]) -> Option<u64> {
    let reply = c.ask(&put_bytes(pri, delay_s, 600, body), 1);
    if reply == "OUT_OF_MEMORY\r\n" {
        return None;
    }
    let id = reply.strip_prefix("INSERTED ").and_then(|r| r.trim_end().parse().ok());
    let id = id.unwrap_or_else(|| panic!("put: {reply:?}"));
    acked.insert(id, body.to_vec());
    Some(id)
}

/// `stats-job <id>`: state and priority.
fn state_and_pri(c: &mut Client, id: u64) -> (String, String) {
    let s = yaml(c, &format!("stats-job {id}")).unwrap_or_else(|| panic!("job {id} is gone"));
    (s["state"].clone(), s["pri"].clone())
}

#[test]
fn a_full_disk_refuses_what_needs_room_and_damages_nothing() {
    let base = TempDir::new("full-disk");
    let fs = base.path().join("fs");
    let Some(_mount) = Mount::tmpfs(&fs, 0, FULL_DISK_FS) else { return };
    on_both_and_four_cores(|backend| {
        let dir = TempDir::under(&fs, backend);
        let args = ["-s", FULL_DISK_SEGMENT];
        let server = start(backend, &dir, &args);
        let mut c = server.connect();
        assert_eq!(c.ask(b"use full\r\n", 1), "USING full\r\n");
        let mut acked = BTreeMap::new();
        // Jobs in every state while there is room.
        let to_bury = try_put(&mut c, &mut acked, 1, 0, b"reserved, to be buried").unwrap();
        let to_release = try_put(&mut c, &mut acked, 2, 0, b"reserved, to be released").unwrap();
        let flapper = try_put(&mut c, &mut acked, 3, 0, b"released with a delay until there is no room").unwrap();
        let buried = try_put(&mut c, &mut acked, 4, 0, b"buried").unwrap();
        let delayed = try_put(&mut c, &mut acked, 5, 3600, b"delayed").unwrap();
        for id in [to_bury, to_release, buried] {
            assert!(c.ask(format!("reserve-job {id}\r\n").as_bytes(), 1).starts_with(&format!("RESERVED {id} ")));
        }
        assert_eq!(c.ask(format!("bury {buried} 4\r\n").as_bytes(), 1), "BURIED\r\n");

        // The disk fills. The segments made ahead still take puts, then
        // they are refused, large bodies first, then even an empty one.
        let filler = fill(&fs, 0);
        let mut rng = Rng(0xf111);
        let mut refused = 0;
        for size in [400, 0] {
            while try_put(&mut c, &mut acked, 6, 0, &rng.body(size).iter().map(|b| b'a' + b % 26).collect::<Vec<u8>>())
                .is_some()
            {
                assert!(acked.len() < 5000, "{backend}: puts never refused on a full disk");
            }
            refused += 1;
        }
        assert_eq!(refused, 2);
        // What is left is eaten by delayed releases, each a state record,
        // until one is refused, as beanstalkd does (and the job stays
        // reserved, which beanstalkd loses).
        let mut releases = 0;
        loop {
            assert!(c.ask(format!("reserve-job {flapper}\r\n").as_bytes(), 1).starts_with("RESERVED "));
            match c.ask(format!("release {flapper} 7 3600\r\n").as_bytes(), 1).as_str() {
                "RELEASED\r\n" => releases += 1,
                "OUT_OF_MEMORY\r\n" => break,
                other => panic!("{backend}: release: {other:?}"),
            }
            assert!(releases < 1000, "{backend}: delayed releases never refused on a full disk");
        }
        assert_eq!(state_and_pri(&mut c, flapper), ("reserved".to_string(), "7".to_string()));
        // Each change that needs a record gets the reference's reply and
        // changes nothing.
        let script = [
            (format!("bury {to_bury} 9\r\n"), "INTERNAL_ERROR\r\n"),
            (format!("release {to_release} 9 60\r\n"), "OUT_OF_MEMORY\r\n"),
            (format!("kick-job {buried}\r\n"), "NOT_FOUND\r\n"),
            (format!("kick-job {delayed}\r\n"), "NOT_FOUND\r\n"),
            ("kick 10\r\n".to_string(), "KICKED 0\r\n"),
        ];
        for (command, want) in &script {
            assert_eq!(c.ask(command.as_bytes(), 1), *want, "{backend}: {command:?}");
        }
        assert_eq!(state_and_pri(&mut c, to_bury).0, "reserved");
        assert_eq!(state_and_pri(&mut c, to_release).0, "reserved");
        assert_eq!(state_and_pri(&mut c, buried).0, "buried");
        assert_eq!(state_and_pri(&mut c, delayed).0, "delayed");
        // A release without delay needs no record (its new priority is what
        // a restart loses, as it always does in beanstalkd), and a delete
        // always has its room.
        assert_eq!(c.ask(format!("release {to_release} 8 0\r\n").as_bytes(), 1), "RELEASED\r\n");
        assert_eq!(state_and_pri(&mut c, to_release), ("ready".to_string(), "8".to_string()));
        let doomed: Vec<u64> = acked.keys().rev().take(20).copied().collect();
        for id in &doomed {
            assert_eq!(c.ask(format!("delete {id}\r\n").as_bytes(), 1), "DELETED\r\n", "{backend}: delete {id}");
            acked.remove(id);
        }
        server.wait_for_log("No space left on device (os error 28); puts get OUT_OF_MEMORY until there is room");

        // Room again: puts succeed once a segment can be made (the log
        // tries again after a pause).
        std::fs::remove_file(&filler).unwrap();
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let id = loop {
            if let Some(id) = try_put(&mut c, &mut acked, 6, 0, b"room again") {
                break id;
            }
            assert!(Instant::now() < deadline, "{backend}: puts still refused with room on the disk");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(id > *doomed.iter().max().unwrap());
        assert_eq!(c.ask(format!("bury {to_bury} 9\r\n").as_bytes(), 1), "BURIED\r\n");
        stop(server);

        // Nothing written was damaged: every acknowledged job comes back,
        // each in its state.
        let server = start(backend, &dir, &args);
        let mut c = server.connect();
        check_served(&mut c, &acked, &acked.keys().copied().collect(), backend);
        assert_eq!(state_and_pri(&mut c, to_bury), ("buried".to_string(), "9".to_string()));
        assert_eq!(state_and_pri(&mut c, to_release), ("ready".to_string(), "2".to_string()));
        assert_eq!(state_and_pri(&mut c, buried), ("buried".to_string(), "4".to_string()));
        assert_eq!(state_and_pri(&mut c, delayed), ("delayed".to_string(), "5".to_string()));
        let f = yaml(&mut c, &format!("stats-job {flapper}")).unwrap();
        assert_eq!((f["state"].as_str(), f["pri"].as_str()), ("delayed", "7"), "{f:?}");
        assert_eq!(f["releases"], releases.to_string(), "{f:?}");
        stop(server);

        // A start with no room for the deletes of the jobs it reads back is
        // refused. (The files a start makes ahead, in every shard's log, are
        // removed first, as the next start would remove them.)
        for shard in 0..cores() {
            for path in shard_segment_files(dir.path(), shard).values().filter(|p| !has_header(p)) {
                std::fs::remove_file(path).unwrap();
            }
        }
        let filler = fill(&fs, 4096);
        let out = run(&["-b", dir.arg(), "-s", NO_ROOM_SEGMENT]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(EXIT_LOG), "{backend}: {err}");
        let jobs = acked.len();
        let want = format!(
            "{}: cannot start the log: no room on the disk for the delete records of the {jobs} jobs read back \
             ({} bytes): cannot make log segment ",
            dir.arg(),
            jobs as u64 * DELETE_RECORD_BYTES
        );
        assert!(err.contains(&want), "{backend}: {err}");
        assert!(err.contains("No space left on device (os error 28); free some space and start again\n"), "{err}");
        std::fs::remove_file(&filler).unwrap();
        let server = start(backend, &dir, &args);
        let mut c = server.connect();
        check_served(&mut c, &acked, &acked.keys().copied().collect(), backend);
        stop(server);
    });
}

// ----- 7. compaction ---------------------------------------------------------

/// Segment bytes of the compaction test: small, so that the churn fills
/// many segments and compaction must keep up.
const COMPACT_SEGMENT: u64 = 4096;

/// Rounds of churn, each a few puts and their deletes, and a release with a
/// delay of the job that flaps: without compaction the pinned jobs would
/// keep every segment, many times the bound.
const COMPACT_ROUNDS: u64 = 300;
const COMPACT_PUTS_PER_ROUND: usize = 8;

#[test]
fn compaction_keeps_the_directory_bounded_at_the_wire() {
    on_both_and_four_cores(|backend| {
        let dir = TempDir::new("compact");
        let s_arg = COMPACT_SEGMENT.to_string();
        // Never synced: a segment emptied is removed as soon as what
        // emptied it is written, so the directory follows the replies
        // closely (with a sync every 50 ms it would lag by that much).
        let args = ["-s", s_arg.as_str(), "-F"];
        let server = start(backend, &dir, &args);
        let mut c = server.connect();
        // The jobs that pin old segments in beanstalkd: buried ones, one
        // delayed for a day, one released with a delay over and over.
        let buried: Vec<u64> = (0..3).map(|i| put(&mut c, 10 + i, 0, 60, format!("buried {i}").as_bytes())).collect();
        for (i, id) in buried.iter().enumerate() {
            c.send(format!("reserve-job {id}\r\nbury {id} {i}\r\n").as_bytes());
            assert!(c.replies(2).ends_with(b"\r\nBURIED\r\n"), "{backend}: bury {id}");
        }
        let delayed = put(&mut c, 20, 86_400, 60, b"delayed for a day");
        let flapper = put(&mut c, 30, 0, 60, b"released with a delay, again and again");
        let pinned_live =
            buried.iter().map(|i| live_record_bytes("default", format!("buried {i}").len(), true)).sum::<u64>()
                + live_record_bytes("default", b"delayed for a day".len(), false)
                + live_record_bytes("default", b"released with a delay, again and again".len(), true);
        let first_oldest = num(&stats(&mut c), "binlog-oldest-index");
        let mut worst = 0;
        for round in 0..COMPACT_ROUNDS {
            let mut batch = Vec::new();
            for k in 0..COMPACT_PUTS_PER_ROUND {
                batch.extend_from_slice(&put_bytes(0, 0, 60, &[b'a' + k as u8; 200]));
            }
            batch.extend_from_slice(format!("reserve-job {flapper}\r\nrelease {flapper} 30 3600\r\n").as_bytes());
            let replies = c.ask(&batch, COMPACT_PUTS_PER_ROUND + 2);
            let mut deletes = Vec::new();
            for line in replies.lines().take(COMPACT_PUTS_PER_ROUND) {
                let id = line.strip_prefix("INSERTED ").unwrap_or_else(|| panic!("{backend}: {replies:?}"));
                deletes.extend_from_slice(format!("delete {id}\r\n").as_bytes());
            }
            assert!(replies.ends_with("\r\nRELEASED\r\n"), "{backend}: {replies:?}");
            let replies = c.ask(&deletes, COMPACT_PUTS_PER_ROUND);
            assert_eq!(replies, "DELETED\r\n".repeat(COMPACT_PUTS_PER_ROUND), "{backend}");
            let what = format!("{backend}, round {round}");
            let (bytes, _) = check_bound(dir.path(), pinned_live, COMPACT_SEGMENT, &what);
            worst = worst.max(bytes);
        }
        let s = stats(&mut c);
        assert!(num(&s, "binlog-records-migrated") > 0, "{backend}: nothing was moved: {s:?}");
        // The segments the pinned jobs were first written in are gone from
        // their shard's log. (With several cores `binlog-oldest-index` is
        // the oldest of every shard's, and the shards of no tube keep
        // their first segment, empty.)
        if cores() == 1 {
            assert!(num(&s, "binlog-oldest-index") > first_oldest + 10, "{backend}: {s:?}");
        }
        let deadline = Instant::now() + REPLY_TIMEOUT;
        while segments_in_use(dir.path())[0] <= first_oldest + 10 {
            assert!(Instant::now() < deadline, "{backend}: segments in use {:?}", segments_in_use(dir.path()));
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(segment_files(dir.path()).keys().all(|&seq| seq > first_oldest), "{backend}");
        stop(server);
        // And the pinned jobs are all there after a restart, as they were.
        let server = start(backend, &dir, &args);
        let mut c = server.connect();
        for (i, id) in buried.iter().enumerate() {
            assert_eq!(state_and_pri(&mut c, *id), ("buried".to_string(), i.to_string()), "{backend}: job {id}");
            assert_eq!(peek(&mut c, *id), Some(format!("buried {i}").into_bytes()));
        }
        assert_eq!(state_and_pri(&mut c, delayed), ("delayed".to_string(), "20".to_string()));
        let f = yaml(&mut c, &format!("stats-job {flapper}")).unwrap();
        assert_eq!((f["state"].as_str(), f["releases"].as_str()), ("delayed", COMPACT_ROUNDS.to_string().as_str()));
        let s = stats(&mut c);
        assert_eq!(num(&s, "current-jobs-buried") + num(&s, "current-jobs-delayed"), 5, "{backend}: {s:?}");
        assert_eq!(num(&s, "current-jobs-ready"), 0, "{backend}: {s:?}");
        check_bound(dir.path(), pinned_live, COMPACT_SEGMENT, backend);
        stop(server);
    });
}

// ----- another number of cores ---------------------------------------------

/// Live jobs by id: tube, state, priority, body.
type LiveJobs = BTreeMap<u64, (String, &'static str, u32, Vec<u8>)>;

/// Writes, with the library's own log, what a server of `shards` shards
/// leaves: each job in the segments of its tube's shard, one of them
/// buried, one deleted in a later batch. Returns the live jobs (id → tube,
/// state, pri, body) and the deleted id.
fn write_sharded_log(dir: &Path, shards: u32) -> (LiveJobs, u64) {
    use runnerbean::engine::body::Body;
    use runnerbean::wal::files::{DirFiles, open_dir};
    use runnerbean::wal::flush::write_blocking;
    use runnerbean::wal::image::{Counters, ImageState};
    use runnerbean::wal::log::{Log, LogConfig, SyncPolicy};
    use runnerbean::wal::record::StateFields;
    use runnerbean::wal::recover::Recovered;
    use std::os::fd::AsRawFd;

    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let dir_fd = open_dir(dir).unwrap();
    let mut logs: Vec<Log> = (0..shards)
        .map(|shard| {
            let config = LogConfig { shard, shards, segment_bytes: 1 << 20, sync: SyncPolicy::Always };
            Log::open(config, Box::new(DirFiles::new(dir)), &Recovered::default(), now).unwrap()
        })
        .collect();
    let mut live = BTreeMap::new();
    let mut segments = BTreeMap::new();
    const JOBS: u64 = 16;
    for id in 1..=JOBS {
        let tube = format!("tube{id}");
        let shard = runnerbean::engine::shard_of_tube(&tube, shards) as usize;
        let body = format!("body of job {id}").into_bytes();
        let (state, name) = if id == 5 { (ImageState::Buried, "buried") } else { (ImageState::Ready, "ready") };
        let pri = 100 + id as u32;
        let fields = StateFields { id, state, pri, delay_s: 0, deadline: 0, counters: Counters::default() };
        let log = &mut logs[shard];
        assert!(log.reserve_put(tube.len(), body.len()));
        log.note_next_id(id + 1);
        let seg = log.job(&fields, 60, now, &tube, &Body::from_slice(&body), false);
        segments.insert(id, (shard, seg, tube.len(), body.len()));
        live.insert(id, (tube, name, pri, body));
    }
    let spread: BTreeSet<usize> = segments.values().map(|&(shard, ..)| shard).collect();
    assert!(spread.len() > 1, "the jobs' tubes all hash to one of {shards} shards");
    let write = |log: &mut Log| {
        if let Some(batch) = log.take_batch() {
            write_blocking(&batch, dir_fd.as_raw_fd()).unwrap();
            log.written(batch.number);
            log.synced(batch.number);
        }
    };
    logs.iter_mut().for_each(write);
    let deleted = 9;
    let (shard, seg, tube_bytes, body_bytes) = segments[&deleted];
    logs[shard].delete(deleted, seg, Log::live_bytes_of(tube_bytes, body_bytes, false));
    live.remove(&deleted);
    logs.iter_mut().for_each(write);
    (live, deleted)
}

/// The names of the segment files in `dir`.
fn segment_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("runnerbean-wal."))
        .collect();
    names.sort();
    names
}

/// A directory written by a server of four cores, started with one (and
/// one of two cores started with four): every job comes back with its
/// tube, state, priority and body, the deleted one stays deleted, ids go on
/// above the old ones, and the old segments are replaced by this server's
/// own, which a second start reads as they are.
#[test]
fn a_log_written_with_more_cores_is_written_again_for_this_many_and_keeps_every_job() {
    on_both_and_four_cores(|backend| {
        let (was, now) = if cores() == 1 { (4, 1) } else { (2, cores()) };
        let cores_text = |n: u32| if n == 1 { "1 core".to_string() } else { format!("{n} cores") };
        let written = TempDir::new("rb-reshard-src");
        let (live, deleted) = write_sharded_log(written.path(), was);
        let old_names = segment_names(written.path());
        assert!(old_names.iter().any(|n| !n.starts_with("runnerbean-wal.0.")));
        let dir = TempDir::new("rb-reshard");
        copy_dir(written.path(), dir.path());
        let check = |c: &mut Client, live: &LiveJobs, gone: &[u64], what: &str| {
            for (&id, (tube, state, pri, body)) in live {
                let doc = yaml(c, &format!("stats-job {id}")).unwrap_or_else(|| panic!("{what}: job {id} is gone"));
                assert_eq!(doc["tube"], *tube, "{what}: job {id}");
                assert_eq!(doc["state"], *state, "{what}: job {id}");
                assert_eq!(num(&doc, "pri"), u64::from(*pri), "{what}: job {id}");
                assert_eq!(peek(c, id).as_deref(), Some(&body[..]), "{what}: job {id}");
            }
            for &id in gone {
                assert_eq!(peek(c, id), None, "{what}: deleted job {id} came back");
            }
        };
        let server = start(backend, &dir, &[]);
        let mut c = server.connect();
        check(&mut c, &live, &[deleted], &format!("{backend}, first start"));
        assert!(put(&mut c, 1, 0, 60, b"new") > *live.keys().last().unwrap(), "{backend}: an id was handed out again");
        // A job of every old segment deleted now stays deleted after the
        // next start (old records must never replay after new ones).
        let mut after = live.clone();
        let gone: Vec<u64> = live.keys().copied().filter(|id| id % 3 == 0).collect();
        for id in &gone {
            assert_eq!(c.ask(format!("delete {id}\r\n").as_bytes(), 1), "DELETED\r\n", "{backend}");
            after.remove(id);
        }
        let printed = stop(server);
        assert!(
            printed.contains(&format!(
                "written with {}, and {} now: {} jobs written again for {}",
                cores_text(was),
                cores_text(now),
                live.len(),
                cores_text(now)
            )),
            "{backend}: {printed}"
        );
        // Only this server's shards' files, none of the old ones.
        let names = segment_names(dir.path());
        let shard_of = |n: &String| -> u32 { n.split('.').nth(1).unwrap().parse().unwrap() };
        assert!(names.iter().all(|n| shard_of(n) < now), "{backend}: segments of other shards: {names:?}");
        for old in &old_names {
            let kept = std::fs::read(dir.path().join(old))
                .is_ok_and(|b| b == std::fs::read(written.path().join(old)).unwrap());
            assert!(!kept, "{backend}: old segment {old} left as it was");
        }

        let server = start(backend, &dir, &[]);
        let mut c = server.connect();
        check(&mut c, &after, &[&[deleted][..], &gone].concat(), &format!("{backend}, second start"));
        let printed = stop(server);
        assert!(!printed.contains("written with"), "{backend}: written again at the second start: {printed}");
    });
}
