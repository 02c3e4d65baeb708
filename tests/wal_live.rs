//! The write-ahead log against the installed C beanstalkd, through the real binaries.
//!
//! * **Restart, differentially**: one history of commands (several tubes; puts ready and
//!   delayed; reserve; release with and without a delay and a new priority; bury; kick;
//!   kick-job; touch; TTR expiry; pause-tube; delete; jobs reserved at the kill; a delay that
//!   runs out while the servers are down) driven in lockstep on C beanstalkd and on
//!   runnerbean (both back ends), each with `-b`; all are killed with SIGKILL and started
//!   again on their directories, twice. Each server is checked field by field (`stats-job`,
//!   `peek`, `stats-tube`, `list-tubes`, the buried order, the next id) against a model that
//!   knows what each one logs, so every difference between them is stated by the model's
//!   rules and asserted, never skipped:
//!   - C logs nothing for a release without delay, so after a restart such a job has the
//!     priority, delay and counters of its last logged change (runnerbean logs the release);
//!   - C adds one to `buries` of every buried job each time it starts (its issue #668);
//!   - C brings buried jobs back in the order their records first appear in its files (put
//!     order here), runnerbean in the order they were buried;
//!   - once C has deleted the file holding the highest id, it hands ids out again from 1.
//!
//!   Neither keeps a tube's pause. `file` is compared only as a number.
//! * **Import through the binary**: C writes a binlog in many small files and is killed;
//!   runnerbean started on that directory serves every job C itself recovers from a copy of
//!   it, moves the C files byte for byte into `beanstalkd-binlog-imported-*`, says so in one
//!   line, and on its next start reads its own log. A directory holding both kinds of files is
//!   refused.
//! * **Export through the binary**: `runnerbean --export-binlog` refuses while the server runs
//!   (the lock, exit 10) and into a directory that has binlog files; C started on what it
//!   wrote serves the jobs runnerbean would have served after a restart.
//! * **Round trip**: C → runnerbean (import) → more work → export → C, jobs intact.
//!
//! These tests need `beanstalkd` on `PATH`; without it they pass with a note, unless
//! `RUNNERBEAN_REQUIRE_LIVE=1`, which turns its absence into a failure. Every server runs on
//! 127.0.0.1 with `-p 0` and is killed when its guard drops; each test's directories are
//! removed the same way. The tests wait (for a TTR or a delay of one second to run out) only
//! until what they wait for has happened, polling.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{BACKENDS, BIN, Client, TempDir};

const NS_PER_S: u64 = 1_000_000_000;
/// How long a server may take to start, to stop, or to make a job ready that the test waits
/// for (a TTR of 1 s running out, a delay of 1 s); far above what any of them needs.
const WAIT_LIMIT: Duration = Duration::from_secs(10);
/// Pause between two looks at something the test waits for.
const POLL_PAUSE: Duration = Duration::from_millis(20);
/// Segment (and C binlog file) size for the restart tests: large enough that each part of a
/// history fits in one C file, so that C never moves a job (C moves jobs only out of a file
/// older than the one before its current one; a move would log changes C otherwise leaves
/// out, which the model does not follow).
const SEGMENT_BYTES: &str = "1048576";
/// C's file size for the import tests: C rounds it up to 4096-byte files, and the history
/// below spreads over many of them, with some deleted by C's own compaction.
const C_SMALL_FILE_BYTES: &str = "1000";

// -----------------------------------------------------------------------------------------------
// Servers and directories.
// -----------------------------------------------------------------------------------------------

/// The C server, or `None` (with a note) when it is not installed and the live mode is not
/// required.
fn beanstalkd(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path).map(|dir| dir.join("beanstalkd")).find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("RUNNERBEAN_REQUIRE_LIVE").as_deref() != Ok("1"),
            "RUNNERBEAN_REQUIRE_LIVE=1 but `beanstalkd` is not on PATH \
             (install it with `apt-get install -y beanstalkd`)"
        );
        eprintln!("wal_live {test}: skipped, `beanstalkd` is not on PATH");
    }
    found
}

/// Copies the files of `from` (C's `lock` left out) into the new directory `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() && entry.file_name() != "lock" {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// The files of `dir` whose names start with `prefix`, by name, with their bytes.
fn files_named(dir: &Path, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| (e.file_name().into_string().unwrap(), e.path()))
        .filter(|(name, _)| name.starts_with(prefix))
        .map(|(name, path)| (name, std::fs::read(path).unwrap()))
        .collect()
}

/// The subdirectories of `dir`, by name.
fn subdirs(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    C(PathBuf),
    Rb(&'static str),
}

impl Kind {
    fn label(&self) -> String {
        match self {
            Kind::C(_) => "C beanstalkd".to_string(),
            Kind::Rb(backend) => format!("runnerbean ({backend})"),
        }
    }

    fn is_c(&self) -> bool {
        matches!(self, Kind::C(_))
    }
}

/// A server process with `-b`, killed when dropped.
struct Proc {
    child: Child,
    port: u16,
    kind: Kind,
    /// Everything it printed on stdout and stderr.
    log: Arc<Mutex<String>>,
}

impl Proc {
    /// Starts `<server> -l 127.0.0.1 -p 0 -V -b DIR <extra>` and waits until it accepts.
    fn start(kind: &Kind, dir: &Path, extra: &[&str]) -> Proc {
        let mut command = match kind {
            Kind::C(binary) => Command::new(binary),
            Kind::Rb(backend) => {
                let mut c = Command::new(BIN);
                c.env("RUNNERBEAN_IO", backend);
                c
            }
        };
        command
            .args(["-l", "127.0.0.1", "-p", "0", "-V", "-b"])
            .arg(dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap_or_else(|e| panic!("start {}: {e}", kind.label()));
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let stderr = BufReader::new(child.stderr.take().unwrap());
        for (reader, tx) in [(Box::new(stdout) as Box<dyn BufRead + Send>, Some(tx)), (Box::new(stderr), None)] {
            let log = log.clone();
            thread::spawn(move || {
                for line in reader.lines().map_while(Result::ok) {
                    if let (Some(tx), Some(rest)) = (&tx, line.strip_prefix("bind ")) {
                        let _ = tx.send(rest.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()));
                    }
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        let port = match rx.recv_timeout(WAIT_LIMIT) {
            Ok(Some(port)) => port,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                thread::sleep(POLL_PAUSE);
                panic!("{} printed no bind line; it printed:\n{}", kind.label(), log.lock().unwrap());
            }
        };
        // C prints its bind line before it listens.
        let deadline = Instant::now() + WAIT_LIMIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                thread::sleep(POLL_PAUSE);
                panic!("{} exited ({status}) before accepting:\n{}", kind.label(), log.lock().unwrap());
            }
            assert!(Instant::now() < deadline, "{} never accepted on port {port}", kind.label());
            thread::sleep(Duration::from_millis(5));
        }
        Proc { child, port, kind: kind.clone(), log }
    }

    fn connect(&self) -> Client {
        Client::try_connect(self.port).unwrap_or_else(|e| {
            panic!("{}: connect to port {}: {e}; it printed:\n{}", self.kind.label(), self.port, self.log_text())
        })
    }

    /// SIGKILL, and the process reaped.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, and the exit status checked (runnerbean stops in order and exits 0).
    fn stop(mut self) {
        // Safety: kill(2) on our own child, which has not been reaped yet.
        let sent = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(sent, 0, "kill: {}", std::io::Error::last_os_error());
        let deadline = Instant::now() + WAIT_LIMIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "{} did not stop after SIGTERM", self.kind.label());
            thread::sleep(POLL_PAUSE);
        };
        assert_eq!(status.code(), Some(0), "{} after SIGTERM:\n{}", self.kind.label(), self.log_text());
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the output holds `needle` (stdout and stderr are read by threads of their
    /// own, so a line may show up after the server has answered); returns all of it.
    fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT_LIMIT;
        loop {
            let log = self.log_text();
            if log.contains(needle) {
                return log;
            }
            assert!(Instant::now() < deadline, "{}: {needle:?} never appeared in:\n{log}", self.kind.label());
            thread::sleep(POLL_PAUSE);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a runnerbean command that must end by itself; returns its exit code, stdout, stderr.
fn run_to_exit(args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start runnerbean");
    let deadline = Instant::now() + WAIT_LIMIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("runnerbean {args:?} did not exit");
        }
        thread::sleep(POLL_PAUSE);
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

// -----------------------------------------------------------------------------------------------
// The wire.
// -----------------------------------------------------------------------------------------------

/// One reply: its line, and the data block after it if it has one.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Reply {
    line: String,
    data: Vec<u8>,
}

fn ask(c: &mut Client, bytes: &[u8]) -> Reply {
    c.send(bytes);
    let raw = c.replies(1);
    let end = raw.windows(2).position(|w| w == b"\r\n").unwrap();
    let line = String::from_utf8(raw[..end].to_vec()).unwrap();
    let data = if raw.len() > end + 2 { raw[end + 2..raw.len() - 2].to_vec() } else { Vec::new() };
    Reply { line, data }
}

fn ask_line(c: &mut Client, line: &str) -> Reply {
    ask(c, format!("{line}\r\n").as_bytes())
}

type Fields = BTreeMap<String, String>;

/// A YAML document of `stats-job` or `stats-tube`, quotes taken off (C leaves simple strings
/// bare, runnerbean quotes them as 1.13 does).
fn yaml_map(data: &[u8]) -> Fields {
    String::from_utf8_lossy(data)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

/// A YAML list (`list-tubes`).
fn yaml_list(data: &[u8]) -> BTreeSet<String> {
    String::from_utf8_lossy(data)
        .lines()
        .skip(1)
        .map(|l| l.trim_start_matches("- ").trim_matches('"').to_string())
        .collect()
}

// -----------------------------------------------------------------------------------------------
// What a server shows, and comparing it with what it should show.
// -----------------------------------------------------------------------------------------------

/// `stats-job` fields compared exactly.
const JOB_KEYS_EXACT: [&str; 11] =
    ["id", "tube", "state", "pri", "delay", "ttr", "reserves", "timeouts", "releases", "buries", "kicks"];
/// `stats-job` fields in whole seconds of a clock that runs on: `age` goes up and `time-left`
/// down between two views by the time between them, and each is compared within a second of
/// that.
const JOB_KEYS_NEAR: [&str; 2] = ["age", "time-left"];
/// Leeway in those comparisons: the model reads the clock when it sends a command, a server
/// when it runs it.
const CLOCK_SLACK_S: f64 = 0.25;
/// `stats-tube` fields compared.
const TUBE_KEYS: [&str; 6] = [
    "current-jobs-urgent",
    "current-jobs-ready",
    "current-jobs-reserved",
    "current-jobs-delayed",
    "current-jobs-buried",
    "pause",
];

#[derive(Clone, Debug, PartialEq, Eq)]
struct JobView {
    stats: Fields,
    body: Vec<u8>,
}

/// The jobs of a server (those of the ids asked about that it has), its tubes and their counts.
#[derive(Clone, Debug, Default)]
struct View {
    jobs: BTreeMap<u64, JobView>,
    tubes: BTreeMap<String, Fields>,
    /// When it was taken: wall-clock ns before the first question and after the last answer.
    taken: (u64, u64),
}

impl View {
    fn take(c: &mut Client, ids: impl IntoIterator<Item = u64>) -> View {
        let mut view = View { taken: (now_ns(), 0), ..View::default() };
        for id in ids {
            let stats = ask_line(c, &format!("stats-job {id}"));
            if stats.line == "NOT_FOUND" {
                continue;
            }
            assert!(stats.line.starts_with("OK "), "stats-job {id}: {}", stats.line);
            let peek = ask_line(c, &format!("peek {id}"));
            assert_eq!(peek.line, format!("FOUND {id} {}", peek.data.len()), "peek {id}");
            view.jobs.insert(id, JobView { stats: yaml_map(&stats.data), body: peek.data });
        }
        let list = ask_line(c, "list-tubes");
        assert!(list.line.starts_with("OK "), "list-tubes: {}", list.line);
        for tube in yaml_list(&list.data) {
            let stats = ask_line(c, &format!("stats-tube {tube}"));
            assert!(stats.line.starts_with("OK "), "stats-tube {tube}: {}", stats.line);
            view.tubes.insert(tube, yaml_map(&stats.data));
        }
        view.taken.1 = now_ns();
        view
    }

    /// The same view with `n` added to `buries` of every buried job: C adds one each time it
    /// starts (its issue #668).
    fn c_start_buries(&self, n: i64) -> View {
        let mut view = self.clone();
        for job in view.jobs.values_mut() {
            if job.stats["state"] == "buried" {
                let buries: i64 = job.stats["buries"].parse().unwrap();
                job.stats.insert("buries".into(), (buries + n).to_string());
            }
        }
        view
    }

    /// The jobs of `ids` alone, without the tubes (whose counts depend on the other jobs).
    fn only(&self, ids: &BTreeSet<u64>) -> View {
        let jobs = self.jobs.iter().filter(|(id, _)| ids.contains(id)).map(|(&id, j)| (id, j.clone())).collect();
        View { jobs, tubes: BTreeMap::new(), taken: self.taken }
    }

    fn ids_in(&self, state: &str) -> BTreeSet<u64> {
        self.jobs.iter().filter(|(_, j)| j.stats["state"] == state).map(|(&id, _)| id).collect()
    }
}

/// Every way `got` differs from `want`, each line naming `who`.
fn differences(who: &str, want: &View, got: &View) -> Vec<String> {
    let mut bad = Vec::new();
    // How far the clock moved from `want` to `got`, at least and at most, in seconds.
    let s = |ns: u64| ns as f64 / NS_PER_S as f64;
    let moved = (s(got.taken.0) - s(want.taken.1), s(got.taken.1) - s(want.taken.0));
    for (id, w) in &want.jobs {
        let Some(g) = got.jobs.get(id) else {
            bad.push(format!("{who}: job {id} is missing"));
            continue;
        };
        for key in JOB_KEYS_EXACT {
            if g.stats.get(key) != w.stats.get(key) {
                bad.push(format!("{who}: job {id}: {key} {:?}, expected {:?}", g.stats.get(key), w.stats.get(key)));
            }
        }
        for key in JOB_KEYS_NEAR {
            let (Some(gv), Some(wv)) = (g.stats.get(key), w.stats.get(key)) else {
                bad.push(format!("{who}: job {id}: {key} {:?}, expected {:?}", g.stats.get(key), w.stats.get(key)));
                continue;
            };
            let (gv, wv): (f64, f64) = (gv.parse().unwrap(), wv.parse().unwrap());
            // A time left of 0 (a ready or buried job) stays 0.
            let sign = if key == "age" {
                1.0
            } else if wv == 0.0 {
                0.0
            } else {
                -1.0
            };
            let (lo, hi) = (wv + sign * moved.0, wv + sign * moved.1);
            let (lo, hi) = (lo.min(hi) - 1.0 - CLOCK_SLACK_S, lo.max(hi) + 1.0 + CLOCK_SLACK_S);
            if !(lo < gv && gv < hi) {
                bad.push(format!("{who}: job {id}: {key} {gv}, expected {wv} within a second (moved by {moved:?} s)"));
            }
        }
        if g.stats.get("file").is_none_or(|f| f.parse::<u64>().is_err()) {
            bad.push(format!("{who}: job {id}: file {:?}", g.stats.get("file")));
        }
        if g.body != w.body {
            bad.push(format!("{who}: job {id}: body {:?}, expected {:?}", g.body, w.body));
        }
    }
    for id in got.jobs.keys().filter(|id| !want.jobs.contains_key(id)) {
        bad.push(format!("{who}: job {id} should not be there"));
    }
    let (got_tubes, want_tubes): (BTreeSet<&String>, BTreeSet<&String>) =
        (got.tubes.keys().collect(), want.tubes.keys().collect());
    if got_tubes != want_tubes {
        bad.push(format!("{who}: list-tubes {got_tubes:?}, expected {want_tubes:?}"));
    }
    for (tube, w) in &want.tubes {
        let Some(g) = got.tubes.get(tube) else { continue };
        for key in TUBE_KEYS {
            if g.get(key) != w.get(key) {
                bad.push(format!("{who}: tube {tube}: {key} {:?}, expected {:?}", g.get(key), w.get(key)));
            }
        }
    }
    bad
}

fn assert_no_differences(bad: Vec<String>) {
    assert!(bad.is_empty(), "{} differences:\n{}", bad.len(), bad.join("\n"));
}

/// Each tube's buried jobs in the order `kick-job` of `peek-buried` takes them out (which
/// leaves them all ready: call it last).
fn buried_orders(c: &mut Client, tubes: impl IntoIterator<Item = String>) -> BTreeMap<String, Vec<u64>> {
    let mut orders = BTreeMap::new();
    for tube in tubes {
        assert_eq!(ask_line(c, &format!("use {tube}")).line, format!("USING {tube}"));
        let mut order = Vec::new();
        loop {
            let peek = ask_line(c, "peek-buried");
            if peek.line == "NOT_FOUND" {
                break;
            }
            let id: u64 = peek.line.split(' ').nth(1).unwrap().parse().unwrap();
            assert_eq!(ask_line(c, &format!("kick-job {id}")).line, "KICKED");
            order.push(id);
        }
        if !order.is_empty() {
            orders.insert(tube, order);
        }
    }
    orders
}

/// The id the next put gets (the job is deleted again).
fn next_id(c: &mut Client) -> u64 {
    let reply = ask(c, b"put 0 0 60 0\r\n\r\n");
    let id = reply.line.strip_prefix("INSERTED ").unwrap_or_else(|| panic!("put: {}", reply.line)).parse().unwrap();
    assert_eq!(ask_line(c, &format!("delete {id}")).line, "DELETED");
    id
}

// -----------------------------------------------------------------------------------------------
// The model: what each server holds, and what its log holds.
// -----------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Ready,
    Reserved,
    Delayed,
    Buried,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Ready => "ready",
            State::Reserved => "reserved",
            State::Delayed => "delayed",
            State::Buried => "buried",
        }
    }
}

#[derive(Clone, Debug)]
struct Job {
    tube: String,
    state: State,
    pri: u32,
    delay_s: u32,
    ttr_s: u32,
    created_ns: u64,
    /// Delayed: when it becomes ready; reserved: when the reservation ends.
    deadline_ns: u64,
    /// Buried: its place among its tube's buried jobs.
    bury_seq: u64,
    reserves: u32,
    timeouts: u32,
    releases: u32,
    buries: u32,
    kicks: u32,
    body: Vec<u8>,
}

/// Which servers write a record for a change.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LoggedBy {
    Both,
    /// A release without delay: runnerbean logs it, C does not.
    RunnerbeanOnly,
    Neither,
}

/// One server in the model: its jobs, and each job as its log last recorded it.
#[derive(Clone)]
struct Side {
    /// C's rules: no record for a release without delay; at each start one more `buries` for
    /// every buried job, and buried jobs back in the order of their first record in the files
    /// (put order, which is id order, as long as C moved no job).
    c_rules: bool,
    live: BTreeMap<u64, Job>,
    logged: BTreeMap<u64, Job>,
    bury_seq: u64,
}

impl Side {
    fn new(c_rules: bool) -> Side {
        Side { c_rules, live: BTreeMap::new(), logged: BTreeMap::new(), bury_seq: 0 }
    }

    fn change(&mut self, id: u64, logged: LoggedBy, f: impl FnOnce(&mut Job, &mut u64)) {
        let job = self.live.get_mut(&id).unwrap_or_else(|| panic!("model: no job {id}"));
        f(job, &mut self.bury_seq);
        let records = match logged {
            LoggedBy::Both => true,
            LoggedBy::RunnerbeanOnly => !self.c_rules,
            LoggedBy::Neither => false,
        };
        if records {
            self.logged.insert(id, job.clone());
        }
    }

    /// The jobs a start brings back from the log at `now`: reserved ones ready, delayed ones
    /// whose time has come ready.
    fn restart(&mut self, now: u64) {
        self.live = self.logged.clone();
        for job in self.live.values_mut() {
            match job.state {
                State::Reserved => job.state = State::Ready,
                State::Delayed if job.deadline_ns <= now => job.state = State::Ready,
                State::Buried if self.c_rules => job.buries += 1,
                _ => {}
            }
        }
        if self.c_rules {
            for job in self.live.values_mut().filter(|j| j.state == State::Buried) {
                self.bury_seq += 1;
                job.bury_seq = self.bury_seq;
            }
        }
    }

    /// C started from runnerbean's export of this side's log: its jobs as runnerbean's restart
    /// would bring them back, buried ones in runnerbean's bury order (the export writes them in
    /// that order), with C's one more `buries` at its start.
    fn exported_to_c(&self, now: u64) -> Side {
        let mut rb = self.clone();
        rb.restart(now);
        for job in rb.live.values_mut().filter(|j| j.state == State::Buried) {
            job.buries += 1;
        }
        rb.logged = rb.live.clone();
        rb.c_rules = true;
        rb
    }

    /// What `View::take` should find at `now` (tubes also those in use by connections, and
    /// their pauses).
    fn expected(&self, now: u64, tubes_in_use: &BTreeSet<String>, paused: &BTreeMap<String, u32>) -> View {
        let mut view = View { taken: (now, now), ..View::default() };
        for (&id, j) in &self.live {
            let left = match j.state {
                State::Delayed | State::Reserved => j.deadline_ns.saturating_sub(now) / NS_PER_S,
                _ => 0,
            };
            let fields = [
                ("id", id.to_string()),
                ("tube", j.tube.clone()),
                ("state", j.state.name().to_string()),
                ("pri", j.pri.to_string()),
                ("age", ((now - j.created_ns) / NS_PER_S).to_string()),
                ("delay", j.delay_s.to_string()),
                ("ttr", j.ttr_s.to_string()),
                ("time-left", left.to_string()),
                ("reserves", j.reserves.to_string()),
                ("timeouts", j.timeouts.to_string()),
                ("releases", j.releases.to_string()),
                ("buries", j.buries.to_string()),
                ("kicks", j.kicks.to_string()),
            ];
            let stats = fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            view.jobs.insert(id, JobView { stats, body: j.body.clone() });
        }
        let mut tubes: BTreeSet<String> = self.live.values().map(|j| j.tube.clone()).collect();
        tubes.extend(tubes_in_use.iter().cloned());
        tubes.insert("default".into());
        for tube in tubes {
            let of =
                |f: &dyn Fn(&Job) -> bool| self.live.values().filter(|j| j.tube == tube && f(j)).count().to_string();
            let counts = [
                ("current-jobs-urgent", of(&|j| j.state == State::Ready && j.pri < 1024)),
                ("current-jobs-ready", of(&|j| j.state == State::Ready)),
                ("current-jobs-reserved", of(&|j| j.state == State::Reserved)),
                ("current-jobs-delayed", of(&|j| j.state == State::Delayed)),
                ("current-jobs-buried", of(&|j| j.state == State::Buried)),
                ("pause", paused.get(&tube).copied().unwrap_or(0).to_string()),
            ];
            view.tubes.insert(tube, counts.into_iter().map(|(k, v)| (k.to_string(), v)).collect());
        }
        view
    }

    fn buried_orders(&self) -> BTreeMap<String, Vec<u64>> {
        let mut buried: Vec<(&String, u64, u64)> = self
            .live
            .iter()
            .filter(|(_, j)| j.state == State::Buried)
            .map(|(&id, j)| (&j.tube, j.bury_seq, id))
            .collect();
        buried.sort();
        let mut orders: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for (tube, _, id) in buried {
            orders.entry(tube.clone()).or_default().push(id);
        }
        orders
    }
}

// -----------------------------------------------------------------------------------------------
// Driving a history on several servers in lockstep, with the model beside it.
// -----------------------------------------------------------------------------------------------

/// Client connections, each open on every server, the model of every server, and the tubes
/// the connections use and watch.
struct Drive {
    labels: Vec<String>,
    /// `conns[connection][server]`.
    conns: Vec<Vec<Client>>,
    sides: Vec<Side>,
    used: Vec<String>,
    watched: Vec<BTreeSet<String>>,
    /// Tubes paused, for how long (no server keeps a pause across a restart).
    paused: BTreeMap<String, u32>,
    last_id: u64,
}

impl Drive {
    fn new(procs: &[Proc], connections: usize) -> Drive {
        let sides = procs.iter().map(|p| Side::new(p.kind.is_c())).collect();
        let labels = procs.iter().map(|p| p.kind.label()).collect();
        let mut drive = Drive {
            labels,
            conns: Vec::new(),
            sides,
            used: Vec::new(),
            watched: Vec::new(),
            paused: BTreeMap::new(),
            last_id: 0,
        };
        drive.connect(procs, connections);
        drive
    }

    /// New connections (after a restart), using and watching `default`.
    fn connect(&mut self, procs: &[Proc], connections: usize) {
        self.conns = (0..connections).map(|_| procs.iter().map(Proc::connect).collect()).collect();
        self.used = vec!["default".into(); connections];
        self.watched = vec![BTreeSet::from(["default".to_string()]); connections];
        self.paused.clear();
    }

    fn tubes_in_use(&self) -> BTreeSet<String> {
        self.used.iter().chain(self.watched.iter().flatten()).cloned().collect()
    }

    /// Sends `bytes` on connection `conn` of every server; every server must give the same
    /// reply.
    fn ask_all(&mut self, conn: usize, bytes: &[u8]) -> Reply {
        let replies: Vec<Reply> = self.conns[conn].iter_mut().map(|c| ask(c, bytes)).collect();
        for (label, reply) in self.labels.iter().zip(&replies) {
            assert_eq!(
                reply,
                &replies[0],
                "{label} and {} answered {:?} differently",
                self.labels[0],
                String::from_utf8_lossy(bytes)
            );
        }
        replies.into_iter().next().unwrap()
    }

    fn expect(&mut self, conn: usize, line: &str, reply: &str) {
        let got = self.ask_all(conn, format!("{line}\r\n").as_bytes());
        assert_eq!(got.line, reply, "{line}");
    }

    fn each_side(&mut self, id: u64, logged: LoggedBy, f: impl Fn(&mut Job, &mut u64)) {
        for side in &mut self.sides {
            side.change(id, logged, &f);
        }
    }

    fn use_tube(&mut self, conn: usize, tube: &str) {
        self.expect(conn, &format!("use {tube}"), &format!("USING {tube}"));
        self.used[conn] = tube.to_string();
    }

    fn watch(&mut self, conn: usize, tube: &str) {
        let n = self.watched[conn].len() + usize::from(!self.watched[conn].contains(tube));
        self.expect(conn, &format!("watch {tube}"), &format!("WATCHING {n}"));
        self.watched[conn].insert(tube.to_string());
    }

    fn pause_tube(&mut self, conn: usize, tube: &str, secs: u32) {
        self.expect(conn, &format!("pause-tube {tube} {secs}"), "PAUSED");
        self.paused.insert(tube.to_string(), secs);
    }

    fn ignore(&mut self, conn: usize, tube: &str) {
        self.watched[conn].remove(tube);
        let n = self.watched[conn].len();
        self.expect(conn, &format!("ignore {tube}"), &format!("WATCHING {n}"));
    }

    fn put(&mut self, conn: usize, pri: u32, delay_s: u32, ttr_s: u32, body: &[u8]) -> u64 {
        let now = now_ns();
        let mut bytes = format!("put {pri} {delay_s} {ttr_s} {}\r\n", body.len()).into_bytes();
        bytes.extend_from_slice(body);
        bytes.extend_from_slice(b"\r\n");
        let reply = self.ask_all(conn, &bytes);
        let id: u64 =
            reply.line.strip_prefix("INSERTED ").unwrap_or_else(|| panic!("put: {}", reply.line)).parse().unwrap();
        assert!(id > self.last_id, "id {id} after {}", self.last_id);
        self.last_id = id;
        let job = Job {
            tube: self.used[conn].clone(),
            state: if delay_s > 0 { State::Delayed } else { State::Ready },
            pri,
            delay_s,
            ttr_s,
            created_ns: now,
            deadline_ns: if delay_s > 0 { now + u64::from(delay_s) * NS_PER_S } else { 0 },
            bury_seq: 0,
            reserves: 0,
            timeouts: 0,
            releases: 0,
            buries: 0,
            kicks: 0,
            body: body.to_vec(),
        };
        for side in &mut self.sides {
            side.live.insert(id, job.clone());
            side.logged.insert(id, job.clone());
        }
        id
    }

    fn reserved(&mut self, id: u64, now: u64) {
        self.each_side(id, LoggedBy::Neither, |j, _| {
            j.state = State::Reserved;
            j.reserves += 1;
            j.deadline_ns = now + u64::from(j.ttr_s) * NS_PER_S;
        });
    }

    fn reserve_job(&mut self, conn: usize, id: u64) {
        let now = now_ns();
        let reply = self.ask_all(conn, format!("reserve-job {id}\r\n").as_bytes());
        assert!(reply.line.starts_with(&format!("RESERVED {id} ")), "reserve-job {id}: {}", reply.line);
        self.reserved(id, now);
    }

    /// `reserve-with-timeout 0`: the best ready job of the watched tubes, the same on every
    /// server as long as they agree on priorities.
    fn reserve(&mut self, conn: usize) -> u64 {
        let now = now_ns();
        let reply = self.ask_all(conn, b"reserve-with-timeout 0\r\n");
        let id: u64 = reply.line.split(' ').nth(1).unwrap().parse().unwrap();
        for side in &self.sides {
            let best = side
                .live
                .iter()
                .filter(|(_, j)| j.state == State::Ready && self.watched[conn].contains(&j.tube))
                .min_by_key(|&(&id, j)| (j.pri, id))
                .map(|(&id, _)| id);
            assert_eq!(best, Some(id), "model: reserve-with-timeout 0 gave {id}");
        }
        self.reserved(id, now);
        id
    }

    fn release(&mut self, conn: usize, id: u64, pri: u32, delay_s: u32) {
        let now = now_ns();
        self.expect(conn, &format!("release {id} {pri} {delay_s}"), "RELEASED");
        let logged = if delay_s > 0 { LoggedBy::Both } else { LoggedBy::RunnerbeanOnly };
        self.each_side(id, logged, |j, _| {
            j.releases += 1;
            j.pri = pri;
            j.delay_s = delay_s;
            (j.state, j.deadline_ns) =
                if delay_s > 0 { (State::Delayed, now + u64::from(delay_s) * NS_PER_S) } else { (State::Ready, 0) };
        });
    }

    fn bury(&mut self, conn: usize, id: u64, pri: u32) {
        self.expect(conn, &format!("bury {id} {pri}"), "BURIED");
        self.each_side(id, LoggedBy::Both, |j, seq| {
            j.buries += 1;
            j.pri = pri;
            j.state = State::Buried;
            *seq += 1;
            j.bury_seq = *seq;
        });
    }

    fn kicked(j: &mut Job) {
        j.kicks += 1;
        j.state = State::Ready;
        j.deadline_ns = 0;
    }

    fn kick_job(&mut self, conn: usize, id: u64) {
        self.expect(conn, &format!("kick-job {id}"), "KICKED");
        self.each_side(id, LoggedBy::Both, |j, _| Drive::kicked(j));
    }

    /// `kick n` in the connection's tube: its buried jobs in their order if it has any, else
    /// its delayed jobs by deadline.
    fn kick(&mut self, conn: usize, n: usize) {
        let tube = self.used[conn].clone();
        let mut counts = BTreeSet::new();
        for side in &mut self.sides {
            let mut ids: Vec<(u64, u64)> = side
                .live
                .iter()
                .filter(|(_, j)| j.tube == tube && j.state == State::Buried)
                .map(|(&id, j)| (j.bury_seq, id))
                .collect();
            if ids.is_empty() {
                ids = side
                    .live
                    .iter()
                    .filter(|(_, j)| j.tube == tube && j.state == State::Delayed)
                    .map(|(&id, j)| (j.deadline_ns, id))
                    .collect();
            }
            ids.sort();
            ids.truncate(n);
            counts.insert(ids.len());
            for (_, id) in ids {
                side.change(id, LoggedBy::Both, |j, _| Drive::kicked(j));
            }
        }
        assert_eq!(counts.len(), 1, "model: the servers would kick different numbers of jobs");
        let count = counts.into_iter().next().unwrap();
        self.expect(conn, &format!("kick {n}"), &format!("KICKED {count}"));
    }

    fn touch(&mut self, conn: usize, id: u64) {
        let now = now_ns();
        self.expect(conn, &format!("touch {id}"), "TOUCHED");
        self.each_side(id, LoggedBy::Neither, |j, _| j.deadline_ns = now + u64::from(j.ttr_s) * NS_PER_S);
    }

    fn delete(&mut self, conn: usize, id: u64) {
        self.expect(conn, &format!("delete {id}"), "DELETED");
        for side in &mut self.sides {
            side.live.remove(&id);
            side.logged.remove(&id);
        }
    }

    /// Waits until job `id` is ready on every server, asking on connection `conn` (C notices
    /// an expired reservation only when the connection holding it sends a command).
    fn wait_ready(&mut self, conn: usize, id: u64) {
        for (label, c) in self.labels.iter().zip(self.conns[conn].iter_mut()) {
            let deadline = Instant::now() + WAIT_LIMIT;
            loop {
                let stats = ask_line(c, &format!("stats-job {id}"));
                if yaml_map(&stats.data).get("state").map(String::as_str) == Some("ready") {
                    break;
                }
                assert!(Instant::now() < deadline, "{label}: job {id} never became ready");
                thread::sleep(POLL_PAUSE);
            }
        }
    }

    /// A reservation of a job with TTR 1 runs out (not logged).
    fn time_out(&mut self, conn: usize, id: u64) {
        self.wait_ready(conn, id);
        self.each_side(id, LoggedBy::Neither, |j, _| {
            j.state = State::Ready;
            j.timeouts += 1;
            j.deadline_ns = 0;
        });
    }

    /// A delayed job's time comes (not logged).
    fn fall_due(&mut self, conn: usize, id: u64) {
        self.wait_ready(conn, id);
        self.each_side(id, LoggedBy::Neither, |j, _| j.state = State::Ready);
    }

    /// Every server checked against its model.
    fn check(&mut self, procs: &[Proc]) -> Vec<View> {
        let mut views = Vec::new();
        let mut bad = Vec::new();
        let in_use = self.tubes_in_use();
        for (i, p) in procs.iter().enumerate() {
            let (view, found) = check_side(&self.labels[i], p, &self.sides[i], self.last_id, &in_use, &self.paused);
            views.push(view);
            bad.extend(found);
        }
        assert_no_differences(bad);
        views
    }

    /// Once the servers are stopped: waits until every job delayed for a few seconds is due,
    /// so that it falls due while they are down.
    fn let_short_delays_run_out(&self) {
        let due = self
            .sides
            .iter()
            .flat_map(|s| s.live.values())
            .filter(|j| j.state == State::Delayed && j.delay_s <= DUE_WHILE_DOWN_S)
            .map(|j| j.deadline_ns)
            .max();
        if let Some(due) = due {
            while now_ns() <= due {
                thread::sleep(POLL_PAUSE);
            }
        }
    }
}

/// One server's jobs (ids up to `last_id`) and tubes against the model of it: the view, and
/// the differences.
fn check_side(
    label: &str,
    p: &Proc,
    side: &Side,
    last_id: u64,
    in_use: &BTreeSet<String>,
    paused: &BTreeMap<String, u32>,
) -> (View, Vec<String>) {
    let mut c = p.connect();
    let view = View::take(&mut c, 1..=last_id);
    let want = side.expected(now_ns(), in_use, paused);
    let bad = differences(label, &want, &view);
    (view, bad)
}

// -----------------------------------------------------------------------------------------------
// The histories.
// -----------------------------------------------------------------------------------------------

/// The delay of a job meant to fall due while the servers are down.
const DUE_WHILE_DOWN_S: u32 = 1;

/// Connections of the differential histories.
const PRODUCER: usize = 0;
const WORKER: usize = 1;
const HOLDER: usize = 2;
const CONNECTIONS: usize = 3;

/// Ids of the jobs the histories and their checks refer to.
struct Ids {
    released_now: u64,
    due_then_released_now: u64,
    buried: u64,
    order: [u64; 3],
    reserved_at_kill: [u64; 2],
    timed_out_then_buried: u64,
    ready: u64,
}

/// The first part of the history: every kind of change, ending with two jobs reserved.
fn history(d: &mut Drive) -> Ids {
    d.use_tube(PRODUCER, "alpha");
    let ready = d.put(PRODUCER, 10, 0, 60, b"alpha: ready");
    d.put(PRODUCER, 20, 3600, 60, b"alpha: delayed for an hour");
    let released_now = d.put(PRODUCER, 5, 0, 30, b"alpha: released at once with a new priority");
    d.reserve_job(PRODUCER, released_now);
    d.release(PRODUCER, released_now, 7, 0);
    let released_later = d.put(PRODUCER, 30, 0, 60, b"alpha: released with a delay and a new priority");
    d.reserve_job(PRODUCER, released_later);
    d.release(PRODUCER, released_later, 8, 3600);
    let due = d.put(PRODUCER, 12, 0, 60, b"alpha: released with delay 1, then at once with a new priority");
    d.reserve_job(PRODUCER, due);
    d.release(PRODUCER, due, 12, 1);

    d.use_tube(PRODUCER, "beta");
    let buried = d.put(PRODUCER, 40, 0, 60, b"beta: buried with a new priority");
    let kicked = d.put(PRODUCER, 50, 0, 60, b"beta: buried, then kicked by kick 1");
    d.reserve_job(PRODUCER, kicked);
    d.bury(PRODUCER, kicked, 50);
    d.kick(PRODUCER, 1);
    d.reserve_job(PRODUCER, buried);
    d.bury(PRODUCER, buried, 41);
    let delayed_kicked = d.put(PRODUCER, 60, 600, 60, b"beta: delayed, then kick-job");
    d.kick_job(PRODUCER, delayed_kicked);
    let buried_kicked = d.put(PRODUCER, u32::MAX, 0, 60, b"beta: buried, then kick-job");
    d.reserve_job(PRODUCER, buried_kicked);
    d.bury(PRODUCER, buried_kicked, u32::MAX);
    d.kick_job(PRODUCER, buried_kicked);

    // Buried in the order 3, 1, 2 of their puts.
    d.use_tube(PRODUCER, "order");
    let order = [(); 3].map(|()| d.put(PRODUCER, 100, 0, 60, b"order: buried out of put order"));
    for id in [order[2], order[0], order[1]] {
        d.reserve_job(PRODUCER, id);
        d.bury(PRODUCER, id, 100);
    }

    d.use_tube(PRODUCER, "delta");
    d.put(PRODUCER, 1, 600, 60, b"delta: delayed ten minutes, kicked by kick 1");
    d.put(PRODUCER, 2, 700, 60, b"delta: delayed longer, stays delayed");
    d.kick(PRODUCER, 1);
    d.pause_tube(PRODUCER, "delta", 3600);

    d.use_tube(PRODUCER, "deleted");
    let gone = d.put(PRODUCER, 0, 0, 60, b"deleted while ready");
    d.delete(PRODUCER, gone);
    let gone = d.put(PRODUCER, 0, 600, 60, b"deleted while delayed");
    d.delete(PRODUCER, gone);
    let gone = d.put(PRODUCER, 0, 0, 60, b"deleted while buried");
    d.reserve_job(PRODUCER, gone);
    d.bury(PRODUCER, gone, 0);
    d.delete(PRODUCER, gone);
    let gone = d.put(PRODUCER, 0, 0, 60, b"deleted while reserved");
    d.reserve_job(PRODUCER, gone);
    d.delete(PRODUCER, gone);

    d.use_tube(PRODUCER, "ttr");
    let timed_out_then_buried = d.put(PRODUCER, 80, 0, 1, b"ttr: reservation ran out, then buried");
    let timed_out = d.put(PRODUCER, 81, 0, 1, b"ttr: reservation ran out, nothing logged since");
    d.reserve_job(HOLDER, timed_out_then_buried);
    d.reserve_job(HOLDER, timed_out);
    d.time_out(HOLDER, timed_out_then_buried);
    d.time_out(HOLDER, timed_out);
    d.reserve_job(HOLDER, timed_out_then_buried);
    d.bury(HOLDER, timed_out_then_buried, 82);

    d.use_tube(PRODUCER, "default");
    let mut binary: Vec<u8> = (0..=255).collect();
    binary.extend_from_slice(b"\r\nafter a CRLF");
    d.put(PRODUCER, 0, 0, 60, &binary);
    d.put(PRODUCER, 0, 0, 60, b"");

    // The job released with a delay of 1 s is due by now (nothing logged), and released again
    // at once with a new priority (logged by runnerbean only).
    d.fall_due(PRODUCER, due);
    d.reserve_job(PRODUCER, due);
    d.release(PRODUCER, due, 3, 0);

    // Reserved at the kill: one touched, one released at once before (logged by runnerbean
    // only) and reserved again by a plain reserve.
    d.use_tube(PRODUCER, "gamma");
    let touched = d.put(PRODUCER, 70, 0, 120, b"gamma: reserved and touched at the kill");
    let again = d.put(PRODUCER, 71, 0, 60, b"gamma: released at once, then reserved at the kill");
    d.reserve_job(WORKER, touched);
    d.touch(WORKER, touched);
    d.reserve_job(WORKER, again);
    d.release(WORKER, again, 72, 0);
    d.watch(WORKER, "gamma");
    d.ignore(WORKER, "default");
    assert_eq!(d.reserve(WORKER), again);
    Ids {
        released_now,
        due_then_released_now: due,
        buried,
        order,
        reserved_at_kill: [touched, again],
        timed_out_then_buried,
        ready,
    }
}

/// A job put last before the servers go down, whose delay runs out while they are (put after
/// the check of the live servers, which its delay must outlast).
fn put_due_while_down(d: &mut Drive) -> u64 {
    d.put(PRODUCER, 90, DUE_WHILE_DOWN_S, 60, b"due while the server is down")
}

/// The second part, after a restart: changes by id only, since the servers no longer agree
/// on priorities or buried order.
fn history_after_restart(d: &mut Drive, ids: &Ids) {
    // C's count of buries, one up since its start, reaches its log with the next bury.
    d.kick_job(PRODUCER, ids.buried);
    d.reserve_job(PRODUCER, ids.buried);
    d.bury(PRODUCER, ids.buried, 42);
    d.reserve_job(PRODUCER, ids.released_now);
    d.release(PRODUCER, ids.released_now, 9, 0);
    let [touched, _] = ids.reserved_at_kill;
    d.reserve_job(WORKER, touched);
    d.release(WORKER, touched, 70, 600);
    d.kick_job(PRODUCER, ids.order[0]);
    d.delete(PRODUCER, ids.ready);
    d.use_tube(PRODUCER, "epsilon");
    let late = d.put(PRODUCER, 5, 0, 60, b"epsilon: put and buried after the restart");
    d.reserve_job(PRODUCER, late);
    d.bury(PRODUCER, late, 5);
}

/// Kills every server, starts each again on its directory, and brings the model along.
fn restart_all(procs: Vec<Proc>, dirs: &[PathBuf], extra: &[&str], d: &mut Drive) -> Vec<Proc> {
    let kinds: Vec<Kind> = procs.iter().map(|p| p.kind.clone()).collect();
    for p in procs {
        p.kill();
    }
    d.let_short_delays_run_out();
    let now = now_ns();
    for side in &mut d.sides {
        side.restart(now);
    }
    let procs: Vec<Proc> = kinds.iter().zip(dirs).map(|(k, dir)| Proc::start(k, dir, extra)).collect();
    d.connect(&procs, CONNECTIONS);
    procs
}

/// Which (job, field) pairs the C and runnerbean models differ in.
fn model_differences(rb: &Side, c: &Side, now: u64) -> Vec<(u64, String)> {
    let none = (BTreeSet::new(), BTreeMap::new());
    let (rb, c) = (rb.expected(now, &none.0, &none.1), c.expected(now, &none.0, &none.1));
    assert_eq!(rb.jobs.keys().collect::<Vec<_>>(), c.jobs.keys().collect::<Vec<_>>());
    let mut out = Vec::new();
    for (id, r) in &rb.jobs {
        for key in JOB_KEYS_EXACT {
            if r.stats[key] != c.jobs[id].stats[key] {
                out.push((*id, key.to_string()));
            }
        }
    }
    out
}

#[test]
fn c_and_runnerbean_bring_back_the_same_jobs_after_sigkill_but_for_known_differences() {
    let Some(c_binary) = beanstalkd("restart") else { return };
    let tmp = TempDir::new("restart");
    let kinds = [Kind::C(c_binary), Kind::Rb(BACKENDS[0]), Kind::Rb(BACKENDS[1])];
    let dirs: Vec<PathBuf> = ["c", "uring", "epoll"].iter().map(|n| tmp.dir(n)).collect();
    let extra = ["-s", SEGMENT_BYTES];
    let mut procs: Vec<Proc> = kinds.iter().zip(&dirs).map(|(k, dir)| Proc::start(k, dir, &extra)).collect();
    let mut d = Drive::new(&procs, CONNECTIONS);
    let ids = history(&mut d);
    // Before the kill every server agrees with the model, and so with the others.
    d.check(&procs);
    let due_while_down = put_due_while_down(&mut d);

    procs = restart_all(procs, &dirs, &extra, &mut d);
    d.check(&procs);
    // What the model says differs between C and runnerbean, and why. The jobs released at
    // once: their last release is not in C's log, nor the reservation before it (and for one,
    // the release before set a delay of 1 s).
    let fields = |id: u64, keys: &[&str]| keys.iter().map(|k| (id, k.to_string())).collect::<Vec<_>>();
    let mut known = fields(ids.released_now, &["pri", "reserves", "releases"]);
    known.extend(fields(ids.due_then_released_now, &["pri", "delay", "reserves", "releases"]));
    known.extend(fields(ids.reserved_at_kill[1], &["pri", "reserves", "releases"]));
    // Every buried job: one more bury in C.
    let buried: Vec<u64> =
        d.sides[1].live.iter().filter(|(_, j)| j.state == State::Buried).map(|(&id, _)| id).collect();
    assert_eq!(buried.len(), 5, "the history buries five jobs");
    for id in buried {
        known.extend(fields(id, &["buries"]));
    }
    known.sort();
    let mut found = model_differences(&d.sides[1], &d.sides[0], now_ns());
    found.sort();
    assert_eq!(found, known);
    assert_eq!(d.sides[0].live[&ids.timed_out_then_buried].timeouts, 1);
    assert!(d.sides.iter().all(|s| s.live[&due_while_down].state == State::Ready));

    history_after_restart(&mut d, &ids);
    d.check(&procs);
    procs = restart_all(procs, &dirs, &extra, &mut d);
    let views = d.check(&procs);
    // The job buried again after the first restart took C's extra bury into its record: two
    // more than runnerbean's count now.
    let buries = |v: &View| -> u64 { v.jobs[&ids.buried].stats["buries"].parse().unwrap() };
    assert_eq!((buries(&views[0]), buries(&views[1]), buries(&views[2])), (4, 2, 2));
    let pri = |v: &View| v.jobs[&ids.released_now].stats["pri"].clone();
    assert_eq!((pri(&views[0]), pri(&views[1])), ("5".to_string(), "9".to_string()));

    // The buried order: C's is the order of the jobs' first records (put order), runnerbean's
    // the order of the buries (third, first, second; the first was kicked after the restart).
    let [_, second, third] = ids.order;
    let expected_order = [vec![second, third], vec![third, second]];
    let mut next_ids = Vec::new();
    for (i, p) in procs.iter().enumerate() {
        let mut c = p.connect();
        let orders = buried_orders(&mut c, views[i].tubes.keys().cloned());
        assert_eq!(orders, d.sides[i].buried_orders(), "{}: buried order", d.labels[i]);
        let order = &orders["order"];
        assert_eq!(order, &expected_order[usize::from(!p.kind.is_c())], "{}: buried order", d.labels[i]);
        next_ids.push(next_id(&mut c));
    }
    // No id is handed out again (C's ids would go back once compaction removed the file of
    // the highest one; here every record is still in its first file).
    assert_eq!(next_ids, vec![d.last_id + 1; 3]);
}

#[test]
fn ids_never_come_back_where_c_hands_them_out_again() {
    let Some(c_binary) = beanstalkd("ids") else { return };
    let tmp = TempDir::new("ids");
    let kinds = [Kind::C(c_binary), Kind::Rb(BACKENDS[0]), Kind::Rb(BACKENDS[1])];
    let dirs: Vec<PathBuf> = ["c", "uring", "epoll"].iter().map(|n| tmp.dir(n)).collect();
    // Small files, so that C's file holding the last job's record goes once nothing refers to it.
    let extra = ["-s", C_SMALL_FILE_BYTES];
    let mut procs: Vec<Proc> = kinds.iter().zip(&dirs).map(|(k, dir)| Proc::start(k, dir, &extra)).collect();
    let mut d = Drive::new(&procs, CONNECTIONS);
    for _ in 0..12 {
        let id = d.put(PRODUCER, 0, 0, 60, b"put and deleted");
        d.delete(PRODUCER, id);
    }
    // The first restart still finds the last record; C deletes its file as it starts, since no
    // job refers to it, and the second restart finds none.
    procs = restart_all(procs, &dirs, &extra, &mut d);
    procs = restart_all(procs, &dirs, &extra, &mut d);
    let next: Vec<u64> = procs.iter().map(|p| next_id(&mut p.connect())).collect();
    assert_eq!(next, [1, 13, 13], "C beanstalkd, runnerbean (uring), runnerbean (epoll)");
}

// -----------------------------------------------------------------------------------------------
// Import: C beanstalkd's files, read by the binary.
// -----------------------------------------------------------------------------------------------

/// A history for C with small files: after a churn of jobs deleted at once, puts of 200-byte
/// bodies in three tubes, each round ending in another state, so that records spread over
/// many files, C's compaction moves some jobs forward, and C deletes its oldest files. Ends
/// with a job reserved, and a job put and deleted. Returns the last id.
fn c_files_history(d: &mut Drive) -> u64 {
    // Jobs put and deleted at once fill the first files, which C then deletes.
    d.use_tube(PRODUCER, "churn");
    for _ in 0..12 {
        let id = d.put(PRODUCER, 0, 0, 60, &[b'c'; 600]);
        d.delete(PRODUCER, id);
    }
    let tubes = ["import-a", "import-b", "import-c"];
    for round in 0..36u32 {
        d.use_tube(PRODUCER, tubes[(round as usize / 6) % 3]);
        let mut body = format!("round {round}: ").into_bytes();
        body.resize(200, b'0' + (round % 10) as u8);
        let delay = if round % 6 == 4 { 3600 } else { 0 };
        let id = d.put(PRODUCER, round, delay, 60, &body);
        match round % 6 {
            0 => d.delete(PRODUCER, id),
            1 => {
                d.reserve_job(PRODUCER, id);
                d.bury(PRODUCER, id, round + 1);
            }
            2 => {
                d.reserve_job(PRODUCER, id);
                d.release(PRODUCER, id, round + 2, 0);
            }
            3 => {
                d.reserve_job(PRODUCER, id);
                d.release(PRODUCER, id, round, 600);
            }
            4 if round % 12 == 4 => d.kick_job(PRODUCER, id),
            _ => {}
        }
    }
    d.use_tube(PRODUCER, "import-a");
    d.kick(PRODUCER, 2);
    let mut binary: Vec<u8> = (0..=255).rev().collect();
    binary.extend_from_slice(b"\r\n");
    let held = d.put(PRODUCER, 7, 0, 60, &binary);
    d.reserve_job(WORKER, held);
    // The highest id is a deleted job's: it still counts for the next one.
    let last = d.put(PRODUCER, 0, 0, 60, b"put last and deleted");
    d.delete(PRODUCER, last);
    d.last_id
}

/// C writes its files with `-s 1000` and is killed; returns its directory and the last id.
fn c_writes_small_files(c_binary: &Path, tmp: &TempDir) -> (PathBuf, u64) {
    let dir = tmp.dir("c-wrote");
    let c = Proc::start(&Kind::C(c_binary.to_path_buf()), &dir, &["-s", C_SMALL_FILE_BYTES]);
    let procs = [c];
    let mut d = Drive::new(&procs, 2);
    let last = c_files_history(&mut d);
    d.check(&procs);
    let [c] = procs;
    c.kill();
    let files = files_named(&dir, "binlog.");
    assert!(files.len() >= 3, "C wrote only {:?}", files.keys());
    assert!(!files.contains_key("binlog.1"), "C's compaction removed no file: {:?}", files.keys());
    (dir, last)
}

/// The line runnerbean logs when it has imported C's files.
fn import_line(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains("C beanstalkd binlog files")).collect()
}

#[test]
fn runnerbean_imports_c_files_serves_what_c_serves_and_moves_them_aside() {
    let Some(c_binary) = beanstalkd("import") else { return };
    let tmp = TempDir::new("import");
    let (written, last) = c_writes_small_files(&c_binary, &tmp);
    let originals = files_named(&written, "binlog.");
    // C's own restart, on a copy (it deletes files it no longer needs), is the reference.
    let c_dir = tmp.dir("c-restart");
    copy_dir(&written, &c_dir);
    let c = Proc::start(&Kind::C(c_binary.clone()), &c_dir, &["-s", C_SMALL_FILE_BYTES]);
    let c_view = View::take(&mut c.connect(), 1..=last);
    for state in ["ready", "delayed", "buried"] {
        assert!(!c_view.ids_in(state).is_empty(), "C brought back no {state} job");
    }
    // What runnerbean must show: C's view without its extra bury.
    let want = c_view.c_start_buries(-1);
    let mut bad = Vec::new();
    let mut rbs = Vec::new();
    for backend in BACKENDS {
        let dir = tmp.dir(backend);
        copy_dir(&written, &dir);
        let rb = Proc::start(&Kind::Rb(backend), &dir, &["-s", SEGMENT_BYTES]);
        let view = View::take(&mut rb.connect(), 1..=last);
        bad.extend(differences(&rb.kind.label(), &want, &view));
        // The C files are in one subdirectory, byte for byte, and no longer in the directory.
        assert!(files_named(&dir, "binlog.").is_empty(), "{backend}: binlog files left in the directory");
        let subs = subdirs(&dir);
        assert!(
            subs.len() == 1 && subs[0].starts_with("beanstalkd-binlog-imported-"),
            "{backend}: subdirectories {subs:?}"
        );
        let sub = dir.join(&subs[0]);
        assert_eq!(files_named(&sub, ""), originals, "{backend}: the files moved aside differ from C's");
        // One line says so.
        let log = rb.wait_for_log("C beanstalkd binlog files");
        let expected_end = format!(
            ": imported {} jobs from {} C beanstalkd binlog files; the files were moved to {}",
            c_view.jobs.len(),
            originals.len(),
            sub.display()
        );
        let lines = import_line(&log);
        assert!(
            lines.len() == 1 && lines[0].ends_with(&expected_end),
            "{backend}: expected one line ending {expected_end:?}:\n{log}"
        );
        rbs.push((rb, dir, view));
    }
    assert_no_differences(bad);

    // Started again, runnerbean reads its own log: no import, the same jobs.
    let mut again = Vec::new();
    for (rb, dir, view) in rbs {
        let kind = rb.kind.clone();
        let subs = subdirs(&dir);
        rb.kill();
        let rb = Proc::start(&kind, &dir, &["-s", SEGMENT_BYTES]);
        let second = View::take(&mut rb.connect(), 1..=last);
        assert_no_differences(differences(&format!("{} started again", kind.label()), &view, &second));
        // The line a start prints when it has read its own log, and no import line (the two
        // are printed on different branches of the start).
        let log = rb.wait_for_log(&format!("log {}: {} jobs from ", dir.display(), view.jobs.len()));
        assert!(import_line(&log).is_empty(), "{}: imported again:\n{log}", kind.label());
        assert_eq!(subdirs(&dir), subs, "{}", kind.label());
        assert_eq!(files_named(&dir.join(&subs[0]), ""), originals, "{}", kind.label());
        again.push((rb, dir));
    }

    // The buried order and the next id are C's.
    let mut c_client = c.connect();
    let c_orders = buried_orders(&mut c_client, c_view.tubes.keys().cloned());
    let c_next = next_id(&mut c_client);
    for (rb, _) in &again {
        let mut client = rb.connect();
        assert_eq!(buried_orders(&mut client, c_view.tubes.keys().cloned()), c_orders, "{}", rb.kind.label());
        assert_eq!(next_id(&mut client), c_next, "{}", rb.kind.label());
    }

    // A directory holding both runnerbean's log and a C binlog file is refused, and left as
    // it is.
    let (rb, dir) = again.pop().unwrap();
    rb.kill();
    let (name, bytes) = originals.iter().next().unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
    let before: BTreeMap<String, Vec<u8>> = files_named(&dir, "");
    let (code, _, stderr) = run_to_exit(&["-l", "127.0.0.1", "-p", "0", "-b", dir.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{stderr}");
    let message = format!(
        "{} holds both C beanstalkd's binlog files and runnerbean's log; move one of them elsewhere",
        dir.display()
    );
    assert!(stderr.contains(&message), "{stderr}");
    assert_eq!(files_named(&dir, ""), before);
}

// -----------------------------------------------------------------------------------------------
// Export: runnerbean's log, written for C beanstalkd by the binary.
// -----------------------------------------------------------------------------------------------

/// `runnerbean --export-binlog DIR OUT`.
fn export(dir: &Path, out: &Path) -> (Option<i32>, String, String) {
    run_to_exit(&["--export-binlog", dir.to_str().unwrap(), out.to_str().unwrap()])
}

#[test]
fn c_serves_runnerbeans_export_with_the_jobs_a_restart_would_bring_back() {
    let Some(c_binary) = beanstalkd("export") else { return };
    let tmp = TempDir::new("export");
    let dirs: Vec<PathBuf> = BACKENDS.iter().map(|b| tmp.dir(b)).collect();
    let outs: Vec<PathBuf> = BACKENDS.iter().map(|b| tmp.0.join(format!("out-{b}"))).collect();
    // A body over C's default -z, so that the export says which -z C needs.
    let extra = ["-s", SEGMENT_BYTES, "-z", "100000"];
    let big_body_bytes = 70_000;
    let rbs: Vec<Proc> = BACKENDS.iter().zip(&dirs).map(|(b, dir)| Proc::start(&Kind::Rb(b), dir, &extra)).collect();
    let mut d = Drive::new(&rbs, CONNECTIONS);
    let ids = history(&mut d);
    d.use_tube(PRODUCER, "big");
    d.put(PRODUCER, 3, 0, 60, &vec![b'z'; big_body_bytes]);
    d.check(&rbs);
    let due_while_down = put_due_while_down(&mut d);
    // While a server runs, its directory is locked.
    for (dir, out) in dirs.iter().zip(&outs) {
        let (code, _, stderr) = export(dir, out);
        assert_eq!(code, Some(10), "{stderr}");
        assert!(
            stderr.contains(&format!("{}: the log directory is in use (stop the server first)", dir.display())),
            "{stderr}"
        );
        assert!(!out.exists(), "{} made while the export was refused", out.display());
    }
    for rb in rbs {
        rb.stop();
    }
    d.let_short_delays_run_out();
    let jobs = d.sides[0].live.len();
    for (dir, out) in dirs.iter().zip(&outs) {
        let (code, stdout, stderr) = export(dir, out);
        assert_eq!(code, Some(0), "{stderr}");
        let binlog = out.join("binlog.1");
        assert_eq!(
            stdout,
            format!(
                "wrote {jobs} jobs to {}; start C beanstalkd with -b {} -z {}\n",
                binlog.display(),
                out.display(),
                big_body_bytes + 2
            )
        );
        assert_eq!(stderr, "");
        // Never into a directory that has binlog files.
        let first = std::fs::read(&binlog).unwrap();
        let (code, _, stderr) = export(dir, out);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("{} already holds binlog files; export into an empty directory", out.display())),
            "{stderr}"
        );
        assert_eq!(files_named(out, ""), BTreeMap::from([("binlog.1".to_string(), first)]));
    }
    // C on each export, and runnerbean started again on its directory.
    let now = now_ns();
    let no_tubes = (BTreeSet::new(), BTreeMap::new());
    let mut bad = Vec::new();
    let mut servers = Vec::new();
    for (i, backend) in BACKENDS.iter().enumerate() {
        let c_side = d.sides[i].exported_to_c(now);
        let c_z = (big_body_bytes + 2).to_string();
        let c = Proc::start(&Kind::C(c_binary.clone()), &outs[i], &["-z", &c_z]);
        let label = format!("C beanstalkd on the export of runnerbean ({backend})");
        let (c_view, found) = check_side(&label, &c, &c_side, d.last_id, &no_tubes.0, &no_tubes.1);
        bad.extend(found);
        assert_eq!(c_side.live[&due_while_down].state, State::Ready);
        assert_eq!(c_side.live[&ids.buried].buries, 2, "C's extra bury at its start");
        let mut rb_side = d.sides[i].clone();
        rb_side.restart(now);
        let rb = Proc::start(&Kind::Rb(backend), &dirs[i], &extra);
        let (_, found) = check_side(&rb.kind.label(), &rb, &rb_side, d.last_id, &no_tubes.0, &no_tubes.1);
        bad.extend(found);
        servers.push((c, c_side, c_view));
    }
    assert_no_differences(bad);
    // Buried jobs come back in runnerbean's order (the export writes them so), and the next
    // id is runnerbean's.
    for (c, side, view) in &servers {
        let mut client = c.connect();
        assert_eq!(buried_orders(&mut client, view.tubes.keys().cloned()), side.buried_orders());
        let [_, second, third] = ids.order;
        assert_eq!(side.buried_orders()["order"], [third, ids.order[0], second]);
        assert_eq!(next_id(&mut client), d.last_id + 1);
    }
    // C's directory is not runnerbean's to export: refused while C holds its lock, and after.
    let scratch = tmp.0.join("never-written");
    let (code, _, stderr) = export(&outs[0], &scratch);
    assert_eq!(code, Some(10), "{stderr}");
    drop(servers);
    let (code, _, stderr) = export(&outs[0], &scratch);
    assert_eq!(code, Some(1), "{stderr}");
    let message = format!(
        "{}: no runnerbean log to export; it holds C beanstalkd's binlog files, which C beanstalkd reads as they are",
        outs[0].display()
    );
    assert!(stderr.contains(&message), "{stderr}");
    assert!(!scratch.exists());
}

// -----------------------------------------------------------------------------------------------
// The round trip.
// -----------------------------------------------------------------------------------------------

#[test]
fn jobs_go_from_c_to_runnerbean_and_back_intact() {
    let Some(c_binary) = beanstalkd("round trip") else { return };
    let tmp = TempDir::new("round-trip");
    let (written, mut last) = c_writes_small_files(&c_binary, &tmp);
    let c_dir = tmp.dir("c-restart");
    copy_dir(&written, &c_dir);
    let c_kind = Kind::C(c_binary.clone());
    let c = Proc::start(&c_kind, &c_dir, &["-s", C_SMALL_FILE_BYTES]);
    let first = View::take(&mut c.connect(), 1..=last);
    drop(c);

    // Imported on one back end, worked on, stopped.
    let rb = Proc::start(&Kind::Rb(BACKENDS[0]), &written, &["-s", SEGMENT_BYTES]);
    let mut client = rb.connect();
    let imported = View::take(&mut client, 1..=last);
    assert_no_differences(differences(&rb.kind.label(), &first.c_start_buries(-1), &imported));
    let pick = |state: &str| *first.ids_in(state).iter().next().unwrap_or_else(|| panic!("no {state} job"));
    let (ready, buried, delayed) = (pick("ready"), pick("buried"), pick("delayed"));
    // A release without delay with a new priority: C would forget it, runnerbean keeps it.
    assert!(ask_line(&mut client, &format!("reserve-job {ready}")).line.starts_with("RESERVED "));
    assert_eq!(ask_line(&mut client, &format!("release {ready} 777 0")).line, "RELEASED");
    assert_eq!(ask_line(&mut client, &format!("kick-job {buried}")).line, "KICKED");
    assert_eq!(ask_line(&mut client, &format!("delete {delayed}")).line, "DELETED");
    assert_eq!(ask_line(&mut client, "use round-trip").line, "USING round-trip");
    let put = |client: &mut Client, body: &[u8]| -> u64 {
        let mut bytes = format!("put 3 0 60 {}\r\n", body.len()).into_bytes();
        bytes.extend_from_slice(body);
        bytes.extend_from_slice(b"\r\n");
        ask(client, &bytes).line.strip_prefix("INSERTED ").unwrap().parse().unwrap()
    };
    let new_buried = put(&mut client, b"put on runnerbean, buried");
    assert!(ask_line(&mut client, &format!("reserve-job {new_buried}")).line.starts_with("RESERVED "));
    assert_eq!(ask_line(&mut client, &format!("bury {new_buried} 4")).line, "BURIED");
    let new_ready = put(&mut client, b"put on runnerbean, ready");
    assert!(new_ready > new_buried && new_buried > last);
    last = new_ready;
    drop(client);
    rb.stop();

    // What runnerbean holds now, read by the other back end.
    let rb = Proc::start(&Kind::Rb(BACKENDS[1]), &written, &["-s", SEGMENT_BYTES]);
    let mut client = rb.connect();
    let held = View::take(&mut client, 1..=last);
    drop(client);
    rb.stop();
    let out = tmp.0.join("back-to-c");
    let (code, _, stderr) = export(&written, &out);
    assert_eq!(code, Some(0), "{stderr}");
    let c = Proc::start(&c_kind, &out, &[]);
    let mut client = c.connect();
    let back = View::take(&mut client, 1..=last);
    let mut bad = differences("C beanstalkd on the export", &held.c_start_buries(1), &back);
    // Jobs nobody touched are as C itself brought them back at first (its extra bury again).
    let touched = BTreeSet::from([ready, buried, delayed, new_buried, new_ready]);
    let untouched: BTreeSet<u64> = first.jobs.keys().filter(|id| !touched.contains(id)).copied().collect();
    assert!(untouched.len() > 10);
    bad.extend(differences("untouched jobs, C before and after", &first.only(&untouched), &back.only(&untouched)));
    assert_no_differences(bad);
    let field = |v: &View, id: u64, key: &str| -> u64 { v.jobs[&id].stats[key].parse().unwrap() };
    assert_eq!(field(&back, ready, "pri"), 777);
    assert_eq!(field(&back, ready, "releases"), field(&first, ready, "releases") + 1);
    assert_eq!(back.jobs[&buried].stats["state"], "ready");
    assert_eq!(field(&back, buried, "kicks"), field(&first, buried, "kicks") + 1);
    assert!(!back.jobs.contains_key(&delayed));
    assert_eq!(back.jobs[&new_buried].stats["state"], "buried");
    assert_eq!(back.jobs[&new_buried].body, b"put on runnerbean, buried");
    // The buried order and the next id, which take jobs out of the buried lists: runnerbean's
    // after the export.
    let rb = Proc::start(&Kind::Rb(BACKENDS[0]), &written, &["-s", SEGMENT_BYTES]);
    let mut rb_client = rb.connect();
    let rb_orders = buried_orders(&mut rb_client, held.tubes.keys().cloned());
    assert!(rb_orders.values().any(|o| o.contains(&new_buried)));
    assert_eq!(buried_orders(&mut client, back.tubes.keys().cloned()), rb_orders);
    assert_eq!(next_id(&mut client), next_id(&mut rb_client));
}
