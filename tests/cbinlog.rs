//! The C binlog reader and writer (`runnerbean::wal::cbinlog`) against the real C server.
//!
//! * **Fixtures** (`tests/fixtures/cbinlog/`, recorded by `scripts/record-c-binlog`, format in
//!   its README): every case imports with exactly the jobs C itself recovered when it was
//!   restarted on the same files, field by field, apart from the listed deliberate differences.
//! * **Damage** done to those files (cut inside every field of every record, a bad name length
//!   or state at every record, zero-filled files): warnings, and never a job that no complete record described.
//! * **Live** (when `beanstalkd` is on `PATH`; required when `RUNNERBEAN_REQUIRE_LIVE=1`): an
//!   export written by `write_v7` is served by C beanstalkd with the same jobs.
//!
//! Every server is started here on 127.0.0.1 with `-p 0` and killed when its guard drops;
//! temporary directories are removed the same way.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{CServer, TempDir};

use runnerbean::wal::cbinlog::{Import, Problem, read_dir, write_v7};
use runnerbean::wal::{Counters, ImageState, JobImage};

/// How long a reply, or a server's start, may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between attempts to connect to a server that is still starting (C prints its bind line
/// before it calls listen).
const CONNECT_RETRY_PAUSE: Duration = Duration::from_millis(5);
/// beanstalkd's default `-z`.
const JOB_BYTES_MAX_DEFAULT: u64 = 65535;
const NS_PER_S: u64 = 1_000_000_000;

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cbinlog")
}

// -----------------------------------------------------------------------------------------------
// The fixtures' expected.txt.
// -----------------------------------------------------------------------------------------------

type Fields = BTreeMap<String, String>;

#[derive(Debug)]
struct Case {
    name: String,
    generated: bool,
    flags: Vec<String>,
    restart_ns: (u64, u64),
    next_id: u64,
    tubes: Vec<String>,
    buried: Vec<(String, Vec<u64>)>,
    c_stderr: Vec<String>,
    jobs: Vec<Recorded>,
}

#[derive(Debug, Default)]
struct Recorded {
    id: u64,
    put_ns: (u64, u64),
    deadline_ns: Option<(u64, u64)>,
    live: Option<Fields>,
    live_body: Option<Vec<u8>>,
    restart: Option<Fields>,
    restart_body: Option<Vec<u8>>,
}

impl Case {
    fn binlog_dir(&self) -> PathBuf {
        fixtures_dir().join(&self.name).join("binlog")
    }

    fn max_job_bytes(&self) -> u64 {
        let at = self.flags.iter().position(|f| f == "-z");
        at.map_or(JOB_BYTES_MAX_DEFAULT, |i| self.flags[i + 1].parse().unwrap())
    }

    /// The binlog files in ascending number.
    fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<(i64, PathBuf)> = std::fs::read_dir(self.binlog_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| (p.extension().unwrap().to_str().unwrap().parse().unwrap(), p))
            .collect();
        files.sort();
        files.into_iter().map(|(_, p)| p).collect()
    }
}

fn window(words: &[&str]) -> (u64, u64) {
    (words[0].parse().unwrap(), words[1].parse().unwrap())
}

fn fields(rest: &str) -> Option<Fields> {
    (rest != "missing").then(|| {
        rest.split(' ')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect()
    })
}

fn hex(rest: &str) -> Option<Vec<u8>> {
    (rest != "missing")
        .then(|| (0..rest.len()).step_by(2).map(|i| u8::from_str_radix(&rest[i..i + 2], 16).unwrap()).collect())
}

fn load_case(name: &str) -> Case {
    let path = fixtures_dir().join(name).join("expected.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut case = Case {
        name: String::new(),
        generated: false,
        flags: Vec::new(),
        restart_ns: (0, 0),
        next_id: 0,
        tubes: Vec::new(),
        buried: Vec::new(),
        c_stderr: Vec::new(),
        jobs: Vec::new(),
    };
    let mut job: Option<Recorded> = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (key, rest) = line.split_once(' ').unwrap_or((line, ""));
        let words: Vec<&str> = rest.split(' ').filter(|w| !w.is_empty()).collect();
        match (key, job.as_mut()) {
            ("case", None) => case.name = rest.to_string(),
            ("source", None) => case.generated = rest == "generated",
            ("c-version", None) => {}
            ("flags", None) => case.flags = words.iter().map(|w| w.to_string()).collect(),
            ("restart-ns", None) => case.restart_ns = window(&words),
            ("next-id", None) => case.next_id = rest.parse().unwrap(),
            ("tubes", None) => case.tubes = words.iter().map(|w| w.to_string()).collect(),
            ("buried", None) => {
                case.buried.push((words[0].to_string(), words[1..].iter().map(|w| w.parse().unwrap()).collect()))
            }
            ("c-stderr", None) => case.c_stderr.push(rest.to_string()),
            ("job", None) => job = Some(Recorded { id: rest.parse().unwrap(), ..Recorded::default() }),
            ("put-ns", Some(j)) => j.put_ns = window(&words),
            ("deadline-ns", Some(j)) => j.deadline_ns = Some(window(&words)),
            ("live", Some(j)) => j.live = fields(rest),
            ("live-body", Some(j)) => j.live_body = hex(rest),
            ("restart", Some(j)) => j.restart = fields(rest),
            ("restart-body", Some(j)) => j.restart_body = hex(rest),
            ("end", Some(_)) => case.jobs.extend(job.take()),
            _ => panic!("{}: unexpected line {line:?}", path.display()),
        }
    }
    assert!(job.is_none(), "{}: job block without end", path.display());
    assert_eq!(case.name, name);
    case
}

fn case_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

// -----------------------------------------------------------------------------------------------
// Fixtures: the reader gives the jobs C recovered.
// -----------------------------------------------------------------------------------------------

fn num(f: &Fields, key: &str) -> u64 {
    f.get(key).unwrap_or_else(|| panic!("no {key} in {f:?}")).parse().unwrap()
}

/// Compares an imported job with what C showed for it (`stats-job` fields and body) once
/// restarted at a time in `restart_ns`; returns the differences.
fn compare(image: &JobImage, c: &Fields, body: &[u8], rec: &Recorded, restart_ns: (u64, u64)) -> Vec<String> {
    let mut bad = Vec::new();
    let mut check = |what: &str, ok: bool, detail: String| {
        if !ok {
            bad.push(format!("job {}: {what}: {detail}", image.id));
        }
    };
    check("tube", image.tube == c["tube"], format!("{} vs C {}", image.tube, c["tube"]));
    // C makes a delayed job whose deadline has passed ready when it starts.
    let state_ok = match c["state"].as_str() {
        "buried" => image.state == ImageState::Buried,
        "delayed" => image.state == ImageState::Delayed && image.deadline > restart_ns.1,
        "ready" => {
            image.state == ImageState::Ready || (image.state == ImageState::Delayed && image.deadline <= restart_ns.1)
        }
        _ => false,
    };
    check("state", state_ok, format!("{:?} (deadline {}) vs C {}", image.state, image.deadline, c["state"]));
    check("pri", u64::from(image.pri) == num(c, "pri"), format!("{} vs C {}", image.pri, c["pri"]));
    check("ttr", u64::from(image.ttr_s) == num(c, "ttr"), format!("{} vs C {}", image.ttr_s, c["ttr"]));
    check("delay", u64::from(image.delay_s) == num(c, "delay"), format!("{} vs C {}", image.delay_s, c["delay"]));
    // C adds one to `buries` of every buried job when it starts (issue #668); the reader does not.
    let quirk = u64::from(image.state == ImageState::Buried);
    let counters = image.counters;
    let expected = [
        ("reserves", counters.reserves, 0),
        ("timeouts", counters.timeouts, 0),
        ("releases", counters.releases, 0),
        ("buries", counters.buries, quirk),
        ("kicks", counters.kicks, 0),
    ];
    for (key, got, plus) in expected {
        check(key, u64::from(got) + plus == num(c, key), format!("{got} (+{plus}) vs C {}", c[key]));
    }
    check("body", image.body == body, format!("{:?} vs C {:?}", image.body, body));
    let (lo, hi) = rec.put_ns;
    check("created_at", (lo..=hi).contains(&image.created_at), format!("{} outside {lo}..={hi}", image.created_at));
    if image.state == ImageState::Delayed {
        match rec.deadline_ns {
            Some((lo, hi)) => check(
                "deadline",
                (lo..=hi).contains(&image.deadline),
                format!("{} outside {lo}..={hi}", image.deadline),
            ),
            None => check("deadline", false, "delayed, but no command set a deadline".into()),
        }
    }
    bad
}

/// Checks one fixture; returns every difference found.
fn check_case(case: &Case) -> Vec<String> {
    let import = read_dir(&case.binlog_dir(), case.max_job_bytes()).unwrap();
    let mut bad = Vec::new();
    let by_id: HashMap<u64, &JobImage> = import.jobs.iter().map(|j| (j.id, j)).collect();
    let c_kept: Vec<&Recorded> = case.jobs.iter().filter(|r| r.restart.is_some()).collect();
    // Which jobs the reader must return, and what C shows for them.
    let expected: Vec<(&Recorded, &Fields, &[u8])> = if case.name == "zlimit" {
        // C's reader refuses its own jobs of -z bytes and stops there (deliberate difference 2):
        // the jobs as they were before the kill are the reference.
        let lost: Vec<u64> = case.jobs.iter().filter(|r| r.restart.is_none()).map(|r| r.id).collect();
        if lost != [2, 3] || !case.c_stderr.iter().any(|l| l.contains("job 2 is too big (102 > 100)")) {
            bad.push(format!("zlimit: C no longer loses jobs 2 and 3 ({lost:?}, {:?})", case.c_stderr));
        }
        case.jobs.iter().filter_map(|r| Some((r, r.live.as_ref()?, r.live_body.as_deref()?))).collect()
    } else {
        if !case.c_stderr.is_empty() {
            bad.push(format!("C printed {:?}", case.c_stderr));
        }
        if import.next_id != case.next_id {
            bad.push(format!("next id {} vs C {}", import.next_id, case.next_id));
        }
        c_kept.iter().map(|r| (*r, r.restart.as_ref().unwrap(), r.restart_body.as_deref().unwrap())).collect()
    };
    if !import.warnings.is_empty() || !import.skipped.is_empty() {
        bad.push(format!("warnings {:?}, skipped {:?}", import.warnings, import.skipped));
    }
    let got: BTreeSet<u64> = by_id.keys().copied().collect();
    let want: BTreeSet<u64> = expected.iter().map(|(r, _, _)| r.id).collect();
    if got != want {
        bad.push(format!("imported ids {got:?}, expected {want:?}"));
    }
    for (rec, c, body) in &expected {
        if let Some(image) = by_id.get(&rec.id) {
            bad.extend(compare(image, c, body, rec, case.restart_ns));
        }
    }
    // Buried jobs come back in C's order.
    for (tube, order) in &case.buried {
        let mut buried: Vec<&JobImage> =
            import.jobs.iter().filter(|j| j.state == ImageState::Buried && &j.tube == tube).collect();
        buried.sort_by_key(|j| j.deadline);
        let ids: Vec<u64> = buried.iter().map(|j| j.id).collect();
        if &ids != order {
            bad.push(format!("buried order in {tube}: {ids:?} vs C {order:?}"));
        }
    }
    let buried_in_c: usize = case.buried.iter().map(|(_, o)| o.len()).sum();
    let buried_here = import.jobs.iter().filter(|j| j.state == ImageState::Buried).count();
    if buried_here != buried_in_c {
        bad.push(format!("{buried_here} buried jobs vs C {buried_in_c}"));
    }
    // Every tube C lists exists here, and no other.
    let mut tubes: BTreeSet<&str> = import.jobs.iter().map(|j| j.tube.as_str()).collect();
    tubes.insert("default");
    let c_tubes: BTreeSet<&str> = case.tubes.iter().map(String::as_str).collect();
    if tubes != c_tubes && case.name != "zlimit" {
        bad.push(format!("tubes {tubes:?} vs C {c_tubes:?}"));
    }
    // The recording itself: a job's body does not change across the restart.
    for r in &case.jobs {
        if let (Some(live), Some(restart)) = (&r.live_body, &r.restart_body)
            && live != restart
        {
            bad.push(format!("job {}: body changed across C's restart", r.id));
        }
    }
    bad.into_iter().map(|b| format!("{}: {b}", case.name)).collect()
}

#[test]
fn every_fixture_imports_the_jobs_c_recovered() {
    let names = case_names();
    for required in ["basic", "lifecycle", "files", "all-deleted", "zlimit", "v5"] {
        assert!(names.iter().any(|n| n == required), "fixture {required} is missing");
    }
    let mut bad = Vec::new();
    for name in &names {
        let case = load_case(name);
        assert!(!case.jobs.is_empty(), "{name}: no jobs recorded");
        assert_eq!(case.generated, name == "v5", "{name}: source");
        bad.extend(check_case(&case));
    }
    assert!(bad.is_empty(), "{} differences:\n{}", bad.len(), bad.join("\n"));
}

#[test]
fn the_fixtures_hold_what_they_are_meant_to() {
    // Guards against a recording that no longer exercises the rules the fixtures exist for.
    let files = load_case("files");
    let import = read_dir(&files.binlog_dir(), files.max_job_bytes()).unwrap();
    assert!(import.records.ignored > 0, "files: no short record of an unknown job");
    assert!(import.files.len() >= 4, "files: only {} files", import.files.len());
    assert!(!import.files[0].ends_with("binlog.1"), "files: no file was deleted by C");
    let v5 = load_case("v5");
    assert_eq!(read_dir(&v5.binlog_dir(), 65535).unwrap().files.len(), 2);
    let lifecycle = load_case("lifecycle");
    assert!(lifecycle.buried.iter().any(|(t, order)| t == "order" && order.len() == 3));
}

#[test]
fn a_job_over_the_limit_is_skipped_and_the_rest_of_the_file_is_read() {
    let case = load_case("zlimit");
    let import = read_dir(&case.binlog_dir(), 50).unwrap();
    let ids: Vec<u64> = import.jobs.iter().map(|j| j.id).collect();
    assert_eq!(ids, [1, 3]);
    let skipped: Vec<(u64, u64)> = import.skipped.iter().map(|s| (s.id, s.body_bytes)).collect();
    assert_eq!(skipped, [(2, 100)]);
    assert!(import.warnings.is_empty(), "{:?}", import.warnings);
    // Its id is not handed out again.
    assert_eq!(import.next_id, 4);
}

// -----------------------------------------------------------------------------------------------
// Damage done to the recorded files.
// -----------------------------------------------------------------------------------------------

/// Where records start in a binlog file, found independently of the reader, places to cut
/// inside each of their fields, and the end of the last record (padding after it excluded).
fn record_starts(bytes: &[u8]) -> (bool, Vec<usize>, Vec<usize>, usize) {
    let v5 = bytes[..4] == 5i32.to_le_bytes();
    let (namelen_bytes, jobrec_bytes) = if v5 { (8, 77) } else { (4, 80) };
    let mut at = 4;
    let mut starts = Vec::new();
    let mut cuts: BTreeSet<usize> = (0..=4).collect();
    while at + namelen_bytes <= bytes.len() {
        let namelen = if v5 {
            u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize
        } else {
            i32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize
        };
        let fixed = at + namelen_bytes + namelen;
        if fixed + jobrec_bytes > bytes.len() || bytes[fixed..fixed + 8] == [0; 8] {
            break;
        }
        let body = i32::from_le_bytes(bytes[fixed + 32..fixed + 36].try_into().unwrap()) as usize;
        starts.push(at);
        let end = fixed + jobrec_bytes + if namelen > 0 { body } else { 0 };
        // In the name length, the name, the id, the struct, the body and its CRLF.
        let inside = [1, namelen_bytes - 1, namelen_bytes, namelen_bytes + namelen / 2];
        cuts.extend(inside.iter().map(|d| at + d));
        cuts.extend([fixed, fixed + 4, fixed + 8, fixed + 40, fixed + jobrec_bytes - 1, fixed + jobrec_bytes]);
        cuts.extend([fixed + jobrec_bytes + body / 2, end - 2, end - 1, end]);
        at = end;
    }
    (v5, starts, cuts.into_iter().filter(|&c| c <= at).collect(), at)
}

/// A scratch directory holding a fixture's files, one of which (`i`) the test rewrites.
struct Scratch<'a> {
    dir: &'a Path,
    case: &'a Case,
    target: PathBuf,
}

impl<'a> Scratch<'a> {
    /// Copies the files before `i`, and after it if `later` is set, into the empty `dir`.
    fn new(case: &'a Case, dir: &'a Path, i: usize, later: bool) -> Scratch<'a> {
        for entry in std::fs::read_dir(dir).unwrap() {
            std::fs::remove_file(entry.unwrap().path()).unwrap();
        }
        let files = case.files();
        for (n, path) in files.iter().enumerate() {
            if n < i || (n > i && later) {
                std::fs::copy(path, dir.join(path.file_name().unwrap())).unwrap();
            }
        }
        Scratch { dir, case, target: dir.join(files[i].file_name().unwrap()) }
    }

    /// Imports the directory with file `i` holding `bytes`.
    fn import(&self, bytes: &[u8]) -> Import {
        std::fs::write(&self.target, bytes).unwrap();
        read_dir(self.dir, self.case.max_job_bytes()).unwrap()
    }
}

#[test]
fn a_recorded_file_cut_inside_any_field_gives_the_jobs_of_its_complete_records() {
    let dir = TempDir::new("cut");
    for name in case_names() {
        let case = load_case(&name);
        for (i, path) in case.files().iter().enumerate() {
            let scratch = Scratch::new(&case, &dir.0, i, false);
            let bytes = std::fs::read(path).unwrap();
            let (_, starts, cuts, end) = record_starts(&bytes);
            let mut boundaries: Vec<usize> = starts.clone();
            boundaries.push(end);
            let mut expected_at: HashMap<usize, Vec<JobImage>> = HashMap::new();
            let padding_cuts = [end + 1, end + 83, end + 84, end + 85, bytes.len()];
            for cut in cuts.into_iter().chain(padding_cuts.into_iter().filter(|&c| c <= bytes.len())) {
                let got = scratch.import(&bytes[..cut]);
                let what = format!("{name}: {} cut at {cut}", path.file_name().unwrap().to_string_lossy());
                if cut < 4 {
                    assert!(
                        matches!(got.warnings[..], [ref w] if w.problem == Problem::ShortHeader { bytes: cut as u64 }),
                        "{what}: {:?}",
                        got.warnings
                    );
                    continue;
                }
                let boundary = *boundaries.iter().rev().find(|&&b| b <= cut).unwrap_or(&4);
                let expected = expected_at.entry(boundary).or_insert_with(|| {
                    let import = scratch.import(&bytes[..boundary]);
                    assert!(import.warnings.is_empty(), "{name}: clean cut at {boundary}: {:?}", import.warnings);
                    import.jobs
                });
                assert_eq!(&got.jobs, expected, "{what}");
                let zero_tail = bytes[boundary..cut].iter().all(|&b| b == 0);
                if zero_tail {
                    assert!(got.warnings.is_empty(), "{what}: {:?}", got.warnings);
                } else {
                    assert_eq!(got.warnings.len(), 1, "{what}: {:?}", got.warnings);
                    assert_eq!(got.warnings[0].offset, Some(boundary as u64), "{what}");
                    assert!(matches!(got.warnings[0].problem, Problem::Torn { .. }), "{what}: {:?}", got.warnings);
                    assert_eq!(got.warnings[0].path, dir.0.join(path.file_name().unwrap()), "{what}");
                }
            }
        }
    }
}

/// A short delete record of `id` in either format, which is what a dropped job amounts to.
fn delete_record(v5: bool, id: u64) -> Vec<u8> {
    let namelen_bytes = if v5 { 8 } else { 4 };
    let mut b = vec![0u8; namelen_bytes + if v5 { 77 } else { 80 }];
    b[namelen_bytes..namelen_bytes + 8].copy_from_slice(&id.to_le_bytes());
    b
}

fn offsets_and_problems(import: &Import) -> Vec<(Option<u64>, &Problem)> {
    import.warnings.iter().map(|w| (w.offset, &w.problem)).collect()
}

#[test]
fn a_bad_name_length_or_state_in_a_recorded_file_ends_that_file_only() {
    let dir = TempDir::new("corrupt");
    let before_dir = TempDir::new("corrupt-before");
    for name in case_names() {
        let case = load_case(&name);
        let clean = read_dir(&case.binlog_dir(), case.max_job_bytes()).unwrap();
        for (i, path) in case.files().iter().enumerate() {
            let scratch = Scratch::new(&case, &dir.0, i, true);
            let before = Scratch::new(&case, &before_dir.0, i, false);
            let bytes = std::fs::read(path).unwrap();
            let (v5, starts, _, _) = record_starts(&bytes);
            let namelen_bytes = if v5 { 8 } else { 4 };
            for &at in &starts {
                let what = format!("{name}: {} record at {at}", path.file_name().unwrap().to_string_lossy());
                // The reference: the file cut before the record, later files read.
                let expected = scratch.import(&bytes[..at]);
                assert!(expected.warnings.is_empty(), "{what}: {:?}", expected.warnings);
                let mut bad = bytes.clone();
                bad[at..at + 4].copy_from_slice(&201i32.to_le_bytes());
                let got = scratch.import(&bad);
                assert_eq!(got.jobs, expected.jobs, "{what}: name length 201");
                assert_eq!(got.next_id, expected.next_id, "{what}: name length 201");
                assert_eq!(offsets_and_problems(&got), [(Some(at as u64), &Problem::NameLen(201))], "{what}");
                // A state byte no job has. Name lengths are at most 200, so one byte holds them.
                let namelen = bytes[at] as usize;
                let jobrec_at = at + namelen_bytes + namelen;
                let id = u64::from_le_bytes(bytes[jobrec_at..jobrec_at + 8].try_into().unwrap());
                let mut bad = bytes.clone();
                bad[jobrec_at + 76] = 9;
                let got = scratch.import(&bad);
                let known = before.import(&bytes[..at]).jobs.iter().any(|j| j.id == id);
                if namelen > 0 || known {
                    // The job is dropped and the file ends: the file cut there with a delete of
                    // the job in its place.
                    let mut reference = bytes[..at].to_vec();
                    reference.extend_from_slice(&delete_record(v5, id));
                    let expected = scratch.import(&reference);
                    assert_eq!(got.jobs, expected.jobs, "{what}: state 9");
                    let problem = Problem::UnknownState { id, state: 9 };
                    assert_eq!(offsets_and_problems(&got), [(Some(at as u64), &problem)], "{what}");
                } else {
                    // A short record of a job not seen is ignored before its state is looked at.
                    assert_eq!(got.jobs, clean.jobs, "{what}: state 9 in an ignored record");
                    assert!(got.warnings.is_empty(), "{what}: {:?}", got.warnings);
                }
            }
        }
    }
}

#[test]
fn zero_filled_and_missing_files_are_warnings() {
    let dir = TempDir::new("zero");
    let case = load_case("files");
    let files = case.files();
    let number = |p: &Path| -> i64 { p.extension().unwrap().to_str().unwrap().parse().unwrap() };
    let first = number(&files[0]);
    let last = number(files.last().unwrap());
    let clean = read_dir(&case.binlog_dir(), case.max_job_bytes()).unwrap();
    for path in &files {
        std::fs::copy(path, dir.0.join(path.file_name().unwrap())).unwrap();
    }
    // A zero-filled file before and after the others: unknown version 0, nothing else changes.
    for n in [first - 1, last + 1] {
        std::fs::write(dir.0.join(format!("binlog.{n}")), vec![0u8; 4096]).unwrap();
    }
    let got = read_dir(&dir.0, case.max_job_bytes()).unwrap();
    assert_eq!(got.jobs, clean.jobs);
    assert_eq!(got.next_id, clean.next_id);
    let problems: Vec<(PathBuf, &Problem)> = got.warnings.iter().map(|w| (w.path.clone(), &w.problem)).collect();
    assert_eq!(
        problems,
        [
            (dir.0.join(format!("binlog.{}", first - 1)), &Problem::UnknownVersion(0)),
            (dir.0.join(format!("binlog.{}", last + 1)), &Problem::UnknownVersion(0)),
        ]
    );
    assert_eq!(got.files.len(), files.len() + 2);
    // A file missing in the middle: named, and the files after it are still read.
    let middle = &files[files.len() / 2];
    std::fs::remove_file(dir.0.join(middle.file_name().unwrap())).unwrap();
    let got = read_dir(&dir.0, case.max_job_bytes()).unwrap();
    let n = number(middle) as i32;
    assert!(
        got.warnings.iter().any(|w| w.problem == Problem::Missing { first: n, last: n }
            && w.path == dir.0.join(middle.file_name().unwrap())),
        "{:?}",
        got.warnings
    );
    assert_eq!(got.files.len(), files.len() + 1);
}

// -----------------------------------------------------------------------------------------------
// Live: C beanstalkd starts from an export.
// -----------------------------------------------------------------------------------------------

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn connect(port: u16) -> Conn {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let stream = loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(stream) => break stream,
                Err(e) if Instant::now() < deadline && e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    thread::sleep(CONNECT_RETRY_PAUSE)
                }
                Err(e) => panic!("connect to beanstalkd: {e}"),
            }
        };
        stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        Conn { stream, buf: Vec::new() }
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 65536];
        let n = self.stream.read(&mut chunk).expect("read reply");
        assert!(n > 0, "beanstalkd closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// Sends a command line and returns the reply line and, for replies that carry one, the
    /// data block.
    fn ask(&mut self, line: &str) -> (String, Vec<u8>) {
        self.stream.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        let end = loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                break end;
            }
            self.fill();
        };
        let reply = String::from_utf8(self.buf.drain(..end + 2).take(end).collect()).unwrap();
        let size = match reply.split(' ').next() {
            Some("OK" | "FOUND" | "RESERVED") => reply.rsplit(' ').next().unwrap().parse::<usize>().unwrap(),
            _ => return (reply, Vec::new()),
        };
        while self.buf.len() < size + 2 {
            self.fill();
        }
        let data: Vec<u8> = self.buf.drain(..size + 2).take(size).collect();
        (reply, data)
    }

    fn yaml(&mut self, line: &str) -> Option<Fields> {
        let (reply, data) = self.ask(line);
        if reply == "NOT_FOUND" {
            return None;
        }
        assert!(reply.starts_with("OK "), "{line}: {reply}");
        let text = String::from_utf8(data).unwrap();
        Some(
            text.lines()
                .skip(1)
                .map(|l| {
                    let (k, v) = l.split_once(':').unwrap();
                    (k.trim_start_matches("- ").to_string(), v.trim().trim_matches('"').to_string())
                })
                .collect(),
        )
    }
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn export_jobs(now: u64) -> Vec<JobImage> {
    let hour = 3600 * NS_PER_S;
    let job = |id: u64, tube: &str, state: ImageState, pri: u32, body: &[u8]| JobImage {
        id,
        tube: tube.into(),
        state,
        pri,
        ttr_s: 60,
        delay_s: 0,
        created_at: now - hour - id * NS_PER_S,
        deadline: 0,
        counters: Counters::default(),
        body: body.to_vec(),
    };
    let mut binary: Vec<u8> = (0..=255).collect();
    binary.extend_from_slice(b"\r\nand after CRLF\r\n");
    vec![
        job(3, "default", ImageState::Ready, 0, b"ready in default"),
        JobImage { ttr_s: 1, ..job(5, "alpha", ImageState::Ready, 1023, &binary) },
        job(8, "alpha", ImageState::Ready, u32::MAX, b""),
        JobImage {
            delay_s: 7200,
            deadline: now + 2 * hour,
            counters: Counters { reserves: 2, timeouts: 1, releases: 2, buries: 0, kicks: 0 },
            ..job(9, "alpha", ImageState::Delayed, 5, b"delayed two hours")
        },
        // Due while runnerbean was stopped: C makes it ready.
        JobImage { delay_s: 10, deadline: now - NS_PER_S, ..job(10, "beta", ImageState::Delayed, 6, b"due") },
        // Buried in the order 20, 12, 15 (bury sequence in `deadline`).
        JobImage {
            deadline: 2,
            counters: Counters { reserves: 1, timeouts: 0, releases: 0, buries: 1, kicks: 0 },
            ..job(12, "beta", ImageState::Buried, 100, b"buried second")
        },
        JobImage {
            deadline: 3,
            counters: Counters { reserves: 4, timeouts: 3, releases: 2, buries: 2, kicks: 1 },
            ..job(15, "beta", ImageState::Buried, 100, b"buried third")
        },
        JobImage {
            deadline: 1,
            counters: Counters { reserves: 1, timeouts: 0, releases: 0, buries: 1, kicks: 0 },
            ..job(20, "beta", ImageState::Buried, 100, b"buried first")
        },
        JobImage {
            counters: Counters { reserves: 9, timeouts: 8, releases: 7, buries: 6, kicks: 5 },
            ..job(21, &format!("{}-end", "t".repeat(196)), ImageState::Ready, 2000, &[b'x'; 70000])
        },
    ]
}

#[test]
fn c_beanstalkd_starts_from_an_export_with_the_same_jobs() {
    let Some(binary) = common::c_beanstalkd() else {
        assert!(
            std::env::var("RUNNERBEAN_REQUIRE_LIVE").as_deref() != Ok("1"),
            "RUNNERBEAN_REQUIRE_LIVE=1 but `beanstalkd` is not on PATH \
             (install it with `apt-get install -y beanstalkd`)"
        );
        eprintln!("cbinlog live: skipped, `beanstalkd` is not on PATH");
        return;
    };
    let dir = TempDir::new("export");
    let now = now_ns();
    let jobs = export_jobs(now);
    let next_id = 1000;
    let written = write_v7(&dir.0.join("binlog.1"), &jobs, next_id).unwrap();
    assert_eq!(written.c_job_size_min(), 70002);
    let started = now_ns();
    let z = written.c_job_size_min().to_string();
    let server = CServer::start(&binary, &["-b", dir.0.to_str().expect("a UTF-8 path"), "-z", &z]);
    let mut c = Conn::connect(server.port);
    let mut bad = Vec::new();
    for job in &jobs {
        let asked = now_ns();
        let Some(s) = c.yaml(&format!("stats-job {}", job.id)) else {
            bad.push(format!("job {}: NOT_FOUND", job.id));
            continue;
        };
        let answered = now_ns();
        let due = job.state == ImageState::Delayed && job.deadline <= started;
        let state = match job.state {
            ImageState::Ready => "ready",
            ImageState::Delayed if due => "ready",
            ImageState::Delayed => "delayed",
            ImageState::Buried => "buried",
        };
        // C adds one to buries of every buried job when it starts (issue #668, docs/COMPAT.md).
        let buries = job.counters.buries + u32::from(job.state == ImageState::Buried);
        let mut expected: Vec<(&str, String)> = vec![
            ("id", job.id.to_string()),
            ("tube", job.tube.clone()),
            ("state", state.into()),
            ("pri", job.pri.to_string()),
            ("delay", job.delay_s.to_string()),
            ("ttr", job.ttr_s.to_string()),
            ("file", "1".into()),
            ("reserves", job.counters.reserves.to_string()),
            ("timeouts", job.counters.timeouts.to_string()),
            ("releases", job.counters.releases.to_string()),
            ("buries", buries.to_string()),
            ("kicks", job.counters.kicks.to_string()),
        ];
        if state != "delayed" {
            expected.push(("time-left", "0".into()));
        }
        for (key, value) in expected {
            if s.get(key) != Some(&value) {
                bad.push(format!("job {}: {key} {:?}, expected {value}", job.id, s.get(key)));
            }
        }
        // Ages and time left are whole seconds of C's clock between the ask and the answer.
        let age = num(&s, "age");
        let age_range = (asked - job.created_at) / NS_PER_S..=(answered - job.created_at) / NS_PER_S;
        if !age_range.contains(&age) {
            bad.push(format!("job {}: age {age} outside {age_range:?}", job.id));
        }
        if state == "delayed" {
            let left = num(&s, "time-left");
            let left_range = (job.deadline - answered) / NS_PER_S..=(job.deadline - asked) / NS_PER_S;
            if !left_range.contains(&left) {
                bad.push(format!("job {}: time-left {left} outside {left_range:?}", job.id));
            }
        }
        let (reply, body) = c.ask(&format!("peek {}", job.id));
        if reply != format!("FOUND {} {}", job.id, job.body.len()) || body != job.body {
            bad.push(format!("job {}: peek answered {reply} with a different body", job.id));
        }
    }
    // Per-tube counts, and the tube list.
    let mut tubes: BTreeSet<&str> = jobs.iter().map(|j| j.tube.as_str()).collect();
    tubes.insert("default");
    for tube in &tubes {
        let of_tube =
            |f: &dyn Fn(&JobImage) -> bool| jobs.iter().filter(|j| &j.tube == tube && f(j)).count().to_string();
        let ready =
            |j: &JobImage| j.state == ImageState::Ready || (j.state == ImageState::Delayed && j.deadline <= started);
        let stats = c.yaml(&format!("stats-tube {tube}")).unwrap_or_default();
        let expected = [
            ("current-jobs-ready", of_tube(&ready)),
            ("current-jobs-urgent", of_tube(&|j| ready(j) && j.pri < 1024)),
            ("current-jobs-delayed", of_tube(&|j| j.state == ImageState::Delayed && j.deadline > started)),
            ("current-jobs-buried", of_tube(&|j| j.state == ImageState::Buried)),
            ("current-jobs-reserved", "0".into()),
        ];
        for (key, value) in expected {
            if stats.get(key) != Some(&value) {
                bad.push(format!("tube {tube}: {key} {:?}, expected {value}", stats.get(key)));
            }
        }
    }
    let (reply, list) = c.ask("list-tubes");
    assert!(reply.starts_with("OK "), "{reply}");
    let listed: BTreeSet<String> = String::from_utf8(list)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.trim_start_matches("- ").trim_matches('"').to_string())
        .collect();
    let expected_tubes: BTreeSet<String> = tubes.iter().map(|t| t.to_string()).collect();
    if listed != expected_tubes {
        bad.push(format!("list-tubes {listed:?}, expected {expected_tubes:?}"));
    }
    // Buried jobs come out in their bury order, oldest first.
    c.ask("use beta");
    let mut order = Vec::new();
    loop {
        let (reply, _) = c.ask("peek-buried");
        let Some(id) = reply.strip_prefix("FOUND ").and_then(|r| r.split(' ').next()) else { break };
        order.push(id.parse::<u64>().unwrap());
        assert_eq!(c.ask(&format!("kick-job {id}")).0, "KICKED");
    }
    if order != [20, 12, 15] {
        bad.push(format!("buried order {order:?}, expected [20, 12, 15]"));
    }
    // The next id is the export's, above every job's.
    // `ask` ends the line; the second CRLF is the empty body.
    let (reply, _) = c.ask("put 0 0 1 0\r\n");
    if reply != format!("INSERTED {next_id}") {
        bad.push(format!("put answered {reply}, expected INSERTED {next_id}"));
    }
    drop(server);
    assert!(bad.is_empty(), "C beanstalkd differs from the export:\n{}", bad.join("\n"));
}
