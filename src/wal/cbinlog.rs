//! C beanstalkd's binlog: reading a directory of `binlog.N` files the way
//! beanstalkd 1.12 recovers it, and writing one format-7 file that C starts
//! from, so that migrating in either direction keeps every job.
//!
//! # Reading ([`read_dir`])
//! The directory is scanned as C scans it: every name `binlog.` followed by
//! text that C's `strtol` reads completely counts, and the numbers from the
//! smallest to the largest are opened as `binlog.<N>` (a number without a
//! file is a warning). Files are read in ascending N with C's rules (the
//! spec's §5.8): format 7 or 5 (5 has an 8-byte name length and microsecond
//! times); id 0 ends a file (zero padding); a short record for a job not
//! seen yet is ignored (its full record was in a file already deleted); a
//! reserved job comes back ready; a record copies every field over the job,
//! counters and creation time included, while the job keeps its first tube
//! and its first position in the list; state 0 frees the job. The survivors
//! come back in the order they were first seen, which is the order C
//! re-enqueues them in; buried jobs get an increasing [`JobImage::deadline`]
//! in that order, so the engine restores C's buried order. A record that
//! fails a check ends the reading of its file with a [`Warning`] naming the
//! file and the record's offset, and the next file is read.
//!
//! # Deliberate differences from C's reader
//! Each one keeps a job, an id or a count that C would lose, damage or
//! inflate (docs/COMPAT.md lists every divergence of the project):
//! 1. A body longer than `-z` is skipped and reported in [`Import::skipped`]
//!    (id, size), and reading goes on. C stops reading the file there and
//!    loses every later record in it.
//! 2. The `-z` check compares the body without its CRLF with the limit, as
//!    `put` does. C compares the size with the CRLF, so it refuses, after a
//!    restart with the same `-z`, the jobs of `-z - 1` and `-z` bytes that
//!    it accepted (recorded in the `zlimit` fixture).
//! 3. `buries` is not raised by one for buried jobs: C does that on every
//!    restart (its issue #668), so the count would drift with each restart.
//! 4. A record is applied only once it has been read whole. When the body of
//!    a full record of a job already seen is cut by the end of the file (a
//!    compaction move torn by a crash), the job keeps what its earlier
//!    records said; C frees it.
//! 5. A record whose body size differs from the size of the job already
//!    seen, whose body does not end in CRLF, whose size has no room for the
//!    CRLF, or whose tube name is not a valid name is corrupt: a warning, the
//!    job is dropped, and the file ends there. C has no such checks (it would
//!    write past the body it allocated, or frame the job wrongly on the wire).
//! 6. A full record with state 0 (never written by C) is a delete whose body
//!    is skipped; C would read that body as the next record.
//! 7. A file that ends inside a record, or whose records end at id 0 while
//!    non-zero bytes follow, gets a warning unless every remaining byte is
//!    zero (preallocation padding, however short). C is silent when fewer
//!    than 4 bytes remain, and warns about zero padding shorter than a record.
//! 8. [`Import::next_id`] also counts ids of skipped (too big) jobs, so that
//!    an id handed out later never names a job still waiting on the disk.
//!
//! # Writing ([`write_v7`], [`V7Writer`])
//! One header, then one full record per job, in C's native layout. Choices
//! made for C's start-up (each is C behaviour the export has to live with):
//! * C re-enqueues in file order. Ready and delayed jobs order themselves by
//!   `(pri, id)` and `(deadline, id)` anyway, so only buried jobs care:
//!   [`write_v7`] writes ready and delayed jobs by id, then buried jobs in
//!   their bury order (`deadline`, then id).
//! * A delayed job keeps its wall-clock deadline; C makes it ready at start
//!   if that time has passed.
//! * C's next id is the largest id it read plus one. When the log's next id
//!   is higher (runnerbean never reuses ids), the export ends with a full
//!   record for `next_id - 1` followed by its delete: C raises its next id
//!   for the full record and then frees the job, so no id is reused.
//! * `buries` is written as it is, not lowered by one to make up for C's +1
//!   at start: the file then says what C's own files say (the count as of
//!   the last record), a job never buried cannot be compensated, and a trip
//!   runnerbean → C → runnerbean that did not touch the job keeps the right
//!   count. C shows one more from its start on, as after each of its own
//!   restarts, and writes that count with the job's next record.
//! * C refuses, when it reads the file, a body whose size with CRLF exceeds
//!   its `-z` ([`Written::c_job_size_min`] says which `-z` it needs).
//! * The file is created new (an existing file is never overwritten) with
//!   mode 0400, as C creates its own, then synced with its directory.
//!
//! # What it must never do
//! Return a job that no complete record described, or allocate a body
//! before its size has passed the `-z` check and fits in the file. Integers
//! are little-endian, as C writes them on every platform runnerbean runs on.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::image::{Counters, ImageState, JobImage};
use crate::protocol::command::{TUBE_NAME_BYTES_MAX, valid_tube_name};

/// The format C 1.12 and 1.13 write.
pub const VERSION_7: i32 = 7;
/// The format of beanstalkd 1.4.6 and older, which C still reads.
pub const VERSION_5: i32 = 5;

/// Every binlog file is named this, then a number.
const FILE_PREFIX: &str = "binlog.";
/// Bytes of C's `Jobrec` in format 7 (LP64 layout, padding included).
const JOBREC_BYTES: usize = 80;
/// Bytes of the format-5 `Jobrec` that C reads: up to and including the
/// state byte, without the struct's trailing padding.
const JOBREC5_BYTES: usize = 77;
/// A body on disk ends with the CRLF that framed it on the wire.
const CRLF: &[u8; 2] = b"\r\n";
const NS_PER_S: i64 = 1_000_000_000;
const NS_PER_US: i64 = 1_000;
/// Read buffer: large enough that a file of small records costs few reads.
const READ_BUFFER_BYTES: usize = 64 * 1024;
/// Write buffer of [`write_v7`].
const WRITE_BUFFER_BYTES: usize = 64 * 1024;
/// What C's `walscandir` starts its minimum at (`1<<30`): with only larger
/// numbers present, C starts reading there.
const SCAN_MIN_START: i32 = 1 << 30;
/// The tube of the record that carries the next id (see [`V7Writer::finish`]);
/// C never destroys it, so the marker leaves no tube behind.
const MARKER_TUBE: &str = "default";

/// Job states as C stores them in a record.
const STATE_INVALID: u8 = 0;
const STATE_READY: u8 = 1;
const STATE_RESERVED: u8 = 2;
const STATE_BURIED: u8 = 3;
const STATE_DELAYED: u8 = 4;

/// What reading a directory found.
#[derive(Debug)]
pub struct Import {
    /// The surviving jobs, in the order C re-enqueues them (first seen).
    pub jobs: Vec<JobImage>,
    /// Jobs left out because their body is longer than the limit, in the
    /// order they were first seen; a job deleted later is not listed.
    pub skipped: Vec<SkippedJob>,
    /// Everything that was odd, in the order it was found.
    pub warnings: Vec<Warning>,
    /// The files opened and read, in ascending N: the ones to move aside.
    pub files: Vec<PathBuf>,
    /// One more than the largest id of a full record that created a job
    /// (deleted and skipped jobs included, and a new job whose body the end
    /// of its file cut), 1 if none: the id C would hand out next, had it read
    /// every job.
    pub next_id: u64,
    pub records: RecordCounts,
}

/// How many records of each kind were read (for the import's log line).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordCounts {
    pub full: u64,
    pub short: u64,
    /// Short records of jobs not seen (their full record was in a file C had
    /// already deleted), ignored as C ignores them.
    pub ignored: u64,
}

/// A job whose body is longer than the limit given to [`read_dir`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedJob {
    pub id: u64,
    pub tube: String,
    pub body_bytes: u64,
    /// The file and offset of the last full record seen for it.
    pub file: PathBuf,
    pub offset: u64,
}

/// Something the reader found odd: a missing or unreadable file, or a
/// record it could not use. Displays as `path:offset: what`.
#[derive(Debug)]
pub struct Warning {
    pub path: PathBuf,
    /// Where the record (or header) starts; `None` for file-level problems.
    pub offset: Option<u64>,
    pub problem: Problem,
}

/// What a [`Warning`] is about; the variants that end a file say so when
/// displayed.
#[derive(Debug, PartialEq, Eq)]
pub enum Problem {
    /// The numbers `first..=last` lie between the smallest and the largest
    /// binlog number, but no file `binlog.<N>` exists for them.
    Missing { first: i32, last: i32 },
    /// A name C's scan counts (`binlog.007`, `binlog.+7`) but never opens,
    /// because it opens `binlog.<N>` written plainly.
    NotRead { number: i32 },
    /// An I/O error; the file is not read further.
    Io(String),
    /// The file is shorter than the 4-byte version header.
    ShortHeader { bytes: u64 },
    /// A version other than 7 or 5 (a zero-filled file gives 0).
    UnknownVersion(i32),
    /// A tube name length outside 0..=200.
    NameLen(i64),
    /// A tube name with bytes that no tube name may hold.
    TubeName,
    /// A state byte other than 0 to 4.
    UnknownState { id: u64, state: u8 },
    /// A body size with no room for the CRLF.
    BodySize { id: u64, body_size: i32 },
    /// A body size other than the one of the job already seen.
    SizeChanged { id: u64, was: u64, now: i64 },
    /// A body that does not end with CRLF.
    BodyFrame { id: u64 },
    /// The file ends inside a record.
    Torn { needed: u64, left: u64 },
    /// Records end at a zero id, but a non-zero byte follows at `at`.
    DataAfterEnd { at: u64 },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.offset {
            Some(offset) => write!(f, "{}:{offset}: {}", self.path.display(), self.problem),
            None => write!(f, "{}: {}", self.path.display(), self.problem),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Missing { first, last } if first == last => write!(f, "missing"),
            Problem::Missing { last, .. } => write!(f, "missing, and so is every file up to binlog.{last}"),
            Problem::NotRead { number } => {
                write!(f, "counted as number {number} but not read (beanstalkd reads only binlog.{number})")
            }
            Problem::Io(e) => write!(f, "{e}; rest of file not read"),
            Problem::ShortHeader { bytes } => write!(f, "{bytes} bytes, no room for the version header"),
            Problem::UnknownVersion(v) => write!(f, "unknown version {v}; file not read"),
            Problem::NameLen(n) => {
                write!(f, "tube name length {n} is outside 0..={TUBE_NAME_BYTES_MAX}; rest of file not read")
            }
            Problem::TubeName => write!(f, "tube name holds bytes no tube name may hold; rest of file not read"),
            Problem::UnknownState { id, state } => {
                write!(f, "job {id} has unknown state {state}; job dropped, rest of file not read")
            }
            Problem::BodySize { id, body_size } => {
                write!(f, "job {id} has body size {body_size}, no room for CRLF; job dropped, rest of file not read")
            }
            Problem::SizeChanged { id, was, now } => write!(
                f,
                "job {id} had a {was}-byte body, this record says {now} bytes with CRLF; job dropped, rest of file not read"
            ),
            Problem::BodyFrame { id } => {
                write!(f, "job {id}'s body does not end with CRLF; job dropped, rest of file not read")
            }
            Problem::Torn { needed, left } => {
                write!(f, "file ends inside a record ({left} of {needed} bytes); cut here")
            }
            Problem::DataAfterEnd { at } => write!(f, "records end here (id 0) but a non-zero byte follows at {at}"),
        }
    }
}

/// Reads the `binlog.N` files of `dir` as C beanstalkd 1.12 would on start
/// (see the module doc, with its list of deliberate differences).
/// `max_job_bytes` is the `-z` limit: longer bodies are skipped, before any
/// memory is allocated for them.
///
/// Fails only when the directory cannot be listed; a file that cannot be
/// opened or read is a warning, as in C.
pub fn read_dir(dir: &Path, max_job_bytes: u64) -> io::Result<Import> {
    let scan = scan_dir(dir)?;
    let mut recovery = Recovery::new(max_job_bytes);
    recovery.warnings.extend(scan.not_read);
    // C opens every number from the smallest to the largest; only the ones
    // with a file matter, and the gaps between them become one warning
    // each (the range can span billions of numbers with odd names).
    let mut expected = i64::from(scan.min);
    for &number in &scan.present {
        if i64::from(number) > expected {
            recovery.warn_missing(dir, expected as i32, number - 1);
        }
        expected = i64::from(number) + 1;
        let path = dir.join(format!("{FILE_PREFIX}{number}"));
        match File::open(&path) {
            Ok(file) => {
                recovery.files.push(path.clone());
                recovery.read_file(&path, file);
            }
            Err(e) => recovery.warn(&path, None, Problem::Io(format!("open: {e}"))),
        }
    }
    if expected <= i64::from(scan.max) {
        recovery.warn_missing(dir, expected as i32, scan.max);
    }
    Ok(recovery.finish())
}

/// The numbered names of a directory, as C's `walscandir` counts them.
struct Scan {
    /// Numbers whose file C opens: the name is exactly `binlog.<N>`.
    present: BTreeSet<i32>,
    /// C reads from the smallest number (its minimum starts at 2^30) to the
    /// largest (its maximum starts at 0).
    min: i32,
    max: i32,
    not_read: Vec<Warning>,
}

fn scan_dir(dir: &Path) -> io::Result<Scan> {
    let mut scan = Scan { present: Default::default(), min: SCAN_MIN_START, max: 0, not_read: Vec::new() };
    let mut counted = false;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(rest) = name.as_bytes().strip_prefix(FILE_PREFIX.as_bytes()) else { continue };
        let Some(number) = c_strtol_whole(rest) else { continue };
        counted = true;
        scan.min = scan.min.min(number);
        scan.max = scan.max.max(number);
        if rest == number.to_string().as_bytes() {
            scan.present.insert(number);
        } else {
            scan.not_read.push(Warning { path: entry.path(), offset: None, problem: Problem::NotRead { number } });
        }
    }
    if !counted {
        // No numbered name: C's loop from 2^30 up to 0 never runs.
        scan.min = 1;
        scan.max = 0;
    }
    Ok(scan)
}

/// The number C's `strtol(text, &end, 10)` reads when it consumes all of
/// `text` (C's test `*end == '\0'`), converted to `int` as C does (the long
/// keeps its low 32 bits). Leading white space and a sign are allowed; an
/// empty text counts as 0, because with no digits `end` points at the start.
/// Out-of-range values saturate to `LONG_MIN`/`LONG_MAX` first, as strtol does.
fn c_strtol_whole(text: &[u8]) -> Option<i32> {
    if text.is_empty() {
        return Some(0);
    }
    let mut i = text.iter().take_while(|&&b| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')).count();
    let negative = text.get(i) == Some(&b'-');
    if matches!(text.get(i), Some(b'+' | b'-')) {
        i += 1;
    }
    let digits = &text[i..];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // i128 holds every value up to one digit past the i64 range.
    let mut value: i128 = 0;
    for &d in digits {
        value = (value * 10 + i128::from(d - b'0')).min(i128::from(i64::MAX) + 1);
    }
    let long = if negative { (-value).max(i128::from(i64::MIN)) } else { value.min(i128::from(i64::MAX)) };
    // The truncation is the point: C assigns the long to an int.
    Some(long as i64 as i32)
}

/// A record's fixed part, with times in nanoseconds whatever the format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Jobrec {
    id: u64,
    pri: u32,
    delay_ns: i64,
    ttr_ns: i64,
    /// The body's size with its CRLF.
    body_size: i32,
    created_ns: i64,
    deadline_ns: i64,
    counters: Counters,
    state: u8,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Version {
    V7,
    V5,
}

impl Version {
    fn namelen_bytes(self) -> usize {
        match self {
            Version::V7 => 4,
            Version::V5 => 8,
        }
    }

    fn jobrec_bytes(self) -> usize {
        match self {
            Version::V7 => JOBREC_BYTES,
            Version::V5 => JOBREC5_BYTES,
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Decodes a `Jobrec`. Both formats share the offsets (format 5 was the
/// same struct with microsecond times, read without its trailing padding).
fn decode_jobrec(b: &[u8], version: Version) -> Jobrec {
    let time = |at: usize| match version {
        Version::V7 => u64_at(b, at) as i64,
        // C multiplies the unsigned microseconds by 1000; saturating keeps
        // absurd values absurd instead of wrapping them into plausible ones.
        Version::V5 => i64::try_from(u64_at(b, at)).unwrap_or(i64::MAX).saturating_mul(NS_PER_US),
    };
    Jobrec {
        id: u64_at(b, 0),
        pri: u32_at(b, 8),
        delay_ns: time(16),
        ttr_ns: time(24),
        body_size: u32_at(b, 32) as i32,
        created_ns: time(40),
        deadline_ns: time(48),
        counters: Counters {
            reserves: u32_at(b, 56),
            timeouts: u32_at(b, 60),
            releases: u32_at(b, 64),
            buries: u32_at(b, 68),
            kicks: u32_at(b, 72),
        },
        state: b[76],
    }
}

/// Encodes a format-7 `Jobrec`, padding bytes zero.
fn encode_jobrec(r: &Jobrec) -> [u8; JOBREC_BYTES] {
    let mut b = [0; JOBREC_BYTES];
    b[0..8].copy_from_slice(&r.id.to_le_bytes());
    b[8..12].copy_from_slice(&r.pri.to_le_bytes());
    b[16..24].copy_from_slice(&r.delay_ns.to_le_bytes());
    b[24..32].copy_from_slice(&r.ttr_ns.to_le_bytes());
    b[32..36].copy_from_slice(&r.body_size.to_le_bytes());
    b[40..48].copy_from_slice(&r.created_ns.to_le_bytes());
    b[48..56].copy_from_slice(&r.deadline_ns.to_le_bytes());
    let c = &r.counters;
    for (i, count) in [c.reserves, c.timeouts, c.releases, c.buries, c.kicks].into_iter().enumerate() {
        b[56 + 4 * i..60 + 4 * i].copy_from_slice(&count.to_le_bytes());
    }
    b[76] = r.state;
    b
}

/// A job while the files are read.
struct Pending {
    rec: Jobrec,
    tube: String,
    body: Vec<u8>,
}

/// A file being read, with the position and length that bound every read.
struct Source<R> {
    inner: R,
    pos: u64,
    len: u64,
}

impl<R: Read> Source<R> {
    fn left(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_exact(buf)?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn skip(&mut self, n: u64) -> io::Result<()> {
        let skipped = io::copy(&mut (&mut self.inner).take(n), &mut io::sink())?;
        self.pos += skipped;
        if skipped < n {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        Ok(())
    }

    /// Reads to the end; returns the offset of the first non-zero byte.
    fn first_nonzero(&mut self) -> io::Result<Option<u64>> {
        let mut chunk = [0u8; 8192];
        loop {
            let n = match self.inner.read(&mut chunk) {
                Ok(0) => return Ok(None),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if let Some(i) = chunk[..n].iter().position(|&b| b != 0) {
                return Ok(Some(self.pos + i as u64));
            }
            self.pos += n as u64;
        }
    }
}

/// Where the record being read lies: its offset, the bytes of its fixed
/// part (name length, name, struct) and the bytes the file had left at its
/// start.
#[derive(Clone, Copy)]
struct Place {
    start: u64,
    needed: u64,
    left: u64,
}

/// How one record ended.
enum Step {
    More,
    /// End of the file, nothing wrong (or a warning already pushed).
    End,
}

/// A record that ends the reading of its file.
struct Stop(Problem);

impl From<Problem> for Stop {
    fn from(p: Problem) -> Stop {
        Stop(p)
    }
}

struct Recovery {
    max_job_bytes: u64,
    /// Jobs in first-seen order; `None` where a job was freed.
    slots: Vec<Option<Pending>>,
    by_id: HashMap<u64, usize>,
    skipped: Vec<Option<SkippedJob>>,
    skipped_by_id: HashMap<u64, usize>,
    warnings: Vec<Warning>,
    files: Vec<PathBuf>,
    next_id: u64,
    records: RecordCounts,
}

impl Recovery {
    fn new(max_job_bytes: u64) -> Recovery {
        Recovery {
            max_job_bytes,
            slots: Vec::new(),
            by_id: HashMap::new(),
            skipped: Vec::new(),
            skipped_by_id: HashMap::new(),
            warnings: Vec::new(),
            files: Vec::new(),
            next_id: 1,
            records: RecordCounts::default(),
        }
    }

    fn warn(&mut self, path: &Path, offset: Option<u64>, problem: Problem) {
        self.warnings.push(Warning { path: path.to_path_buf(), offset, problem });
    }

    fn warn_missing(&mut self, dir: &Path, first: i32, last: i32) {
        self.warn(&dir.join(format!("{FILE_PREFIX}{first}")), None, Problem::Missing { first, last });
    }

    fn read_file(&mut self, path: &Path, file: File) {
        let len = match file.metadata() {
            Ok(meta) => meta.len(),
            Err(e) => return self.warn(path, None, Problem::Io(format!("stat: {e}"))),
        };
        let mut src = Source { inner: BufReader::with_capacity(READ_BUFFER_BYTES, file), pos: 0, len };
        self.read_source(path, &mut src);
    }

    fn read_source<R: Read>(&mut self, path: &Path, src: &mut Source<R>) {
        let mut header = [0u8; 4];
        if src.len < header.len() as u64 {
            return self.warn(path, None, Problem::ShortHeader { bytes: src.len });
        }
        if let Err(e) = src.read_exact(&mut header) {
            return self.warn(path, Some(0), io_problem(e, 4, src.len));
        }
        let version = match i32::from_le_bytes(header) {
            VERSION_7 => Version::V7,
            VERSION_5 => Version::V5,
            v => return self.warn(path, Some(0), Problem::UnknownVersion(v)),
        };
        loop {
            let start = src.pos;
            match self.read_record(path, src, version) {
                Ok(Step::More) => {}
                Ok(Step::End) => return,
                Err(Stop(problem)) => return self.warn(path, Some(start), problem),
            }
        }
    }

    /// Reads one record and applies it. Errors end the file.
    fn read_record<R: Read>(&mut self, path: &Path, src: &mut Source<R>, version: Version) -> Result<Step, Stop> {
        let start = src.pos;
        let left = src.left();
        if left == 0 {
            return Ok(Step::End);
        }
        let mut namelen_raw = [0u8; 8];
        let namelen_raw = &mut namelen_raw[..version.namelen_bytes()];
        if left < namelen_raw.len() as u64 {
            return Self::tail(src, true, namelen_raw.len() as u64, left);
        }
        src.read_exact(namelen_raw).map_err(|e| io_problem(e, namelen_raw.len() as u64, left))?;
        let namelen = match version {
            Version::V7 => i64::from(u32_at(namelen_raw, 0) as i32),
            Version::V5 => i64::try_from(u64_at(namelen_raw, 0)).unwrap_or(i64::MAX),
        };
        if !(0..=TUBE_NAME_BYTES_MAX as i64).contains(&namelen) {
            return Err(Problem::NameLen(namelen).into());
        }
        let namelen = namelen as usize;
        let needed = (version.namelen_bytes() + namelen + version.jobrec_bytes()) as u64;
        if left < needed {
            return Self::tail(src, namelen == 0, needed, left);
        }
        let mut name = [0u8; TUBE_NAME_BYTES_MAX];
        let name = &mut name[..namelen];
        let mut jobrec = [0u8; JOBREC_BYTES];
        let jobrec = &mut jobrec[..version.jobrec_bytes()];
        src.read_exact(name).map_err(|e| io_problem(e, needed, left))?;
        src.read_exact(jobrec).map_err(|e| io_problem(e, needed, left))?;
        let rec = decode_jobrec(jobrec, version);
        if rec.id == 0 {
            // C's end of the records: the zero padding of a preallocated file.
            let zero_so_far = namelen == 0 && jobrec.iter().all(|&b| b == 0);
            let nonzero =
                if zero_so_far { src.first_nonzero().map_err(|e| Problem::Io(e.to_string()))? } else { Some(start) };
            if let Some(at) = nonzero {
                self.warn(path, Some(start), Problem::DataAfterEnd { at });
            }
            return Ok(Step::End);
        }
        let full = namelen > 0;
        if rec.state == STATE_INVALID {
            // A delete also settles a job skipped for its size.
            if let Some(k) = self.skipped_by_id.remove(&rec.id) {
                self.skipped[k] = None;
            }
        }
        let slot = self.by_id.get(&rec.id).copied();
        if slot.is_none() && !full {
            self.records.ignored += 1;
            return Ok(Step::More);
        }
        if full {
            self.records.full += 1;
        } else {
            self.records.short += 1;
        }
        match rec.state {
            STATE_INVALID => {
                self.free_opt(slot);
                if full {
                    let size = body_size(&rec)?;
                    if src.left() < size {
                        return Err(Problem::Torn { needed: needed + size, left }.into());
                    }
                    src.skip(size).map_err(|e| io_problem(e, needed + size, left))?;
                }
                Ok(Step::More)
            }
            STATE_READY | STATE_RESERVED | STATE_BURIED | STATE_DELAYED => {
                let rec = Jobrec { state: if rec.state == STATE_RESERVED { STATE_READY } else { rec.state }, ..rec };
                if full {
                    self.apply_full(path, src, Place { start, needed, left }, rec, name, slot)
                } else {
                    // `slot` is known here: short records of unknown jobs were ignored.
                    let Some(k) = slot else { return Ok(Step::More) };
                    self.apply_short(k, rec)
                }
            }
            state => {
                self.free_opt(slot);
                Err(Problem::UnknownState { id: rec.id, state }.into())
            }
        }
    }

    fn apply_short(&mut self, k: usize, rec: Jobrec) -> Result<Step, Stop> {
        let Some(job) = self.slots[k].as_mut() else { return Ok(Step::More) };
        let was = job.body.len() as u64;
        if i64::from(rec.body_size) - 2 != was as i64 {
            self.free(k);
            return Err(Problem::SizeChanged { id: rec.id, was, now: i64::from(rec.body_size) }.into());
        }
        job.rec = rec;
        Ok(Step::More)
    }

    fn apply_full<R: Read>(
        &mut self,
        path: &Path,
        src: &mut Source<R>,
        place: Place,
        rec: Jobrec,
        name: &[u8],
        slot: Option<usize>,
    ) -> Result<Step, Stop> {
        let Place { start, needed, left } = place;
        let Some(tube) = valid_tube_name(name) else {
            self.free_opt(slot);
            return Err(Problem::TubeName.into());
        };
        let size = body_size(&rec).inspect_err(|_| self.free_opt(slot))?;
        let body_bytes = size - CRLF.len() as u64;
        match slot.and_then(|k| self.slots[k].as_ref()) {
            Some(job) if job.body.len() as u64 != body_bytes => {
                let was = job.body.len() as u64;
                self.free_opt(slot);
                return Err(Problem::SizeChanged { id: rec.id, was, now: i64::from(rec.body_size) }.into());
            }
            Some(_) => {}
            None if body_bytes > self.max_job_bytes => {
                self.next_id = self.next_id.max(rec.id.saturating_add(1));
                if src.left() < size {
                    return Err(Problem::Torn { needed: needed + size, left }.into());
                }
                src.skip(size).map_err(|e| io_problem(e, needed + size, left))?;
                let skipped = SkippedJob {
                    id: rec.id,
                    tube: tube.to_string(),
                    body_bytes,
                    file: path.to_path_buf(),
                    offset: start,
                };
                match self.skipped_by_id.get(&rec.id) {
                    Some(&k) => self.skipped[k] = Some(skipped),
                    None => {
                        self.skipped_by_id.insert(rec.id, self.skipped.len());
                        self.skipped.push(Some(skipped));
                    }
                }
                return Ok(Step::More);
            }
            None => {}
        }
        if src.left() < size {
            // Torn: the job, if known, keeps what earlier records said. A new
            // one's id still counts, as in C (which creates the job before it
            // reads the body): its put may have been answered before the crash.
            self.next_id = self.next_id.max(rec.id.saturating_add(1));
            return Err(Problem::Torn { needed: needed + size, left }.into());
        }
        // The size passed the limit (or equals a body already held) and fits
        // in what is left of the file, so this allocation is bounded.
        let mut body = vec![0u8; body_bytes as usize];
        src.read_exact(&mut body[..]).map_err(|e| io_problem(e, needed + size, left))?;
        let mut crlf = [0u8; 2];
        src.read_exact(&mut crlf).map_err(|e| io_problem(e, needed + size, left))?;
        if &crlf != CRLF {
            self.free_opt(slot);
            return Err(Problem::BodyFrame { id: rec.id }.into());
        }
        match slot {
            Some(k) => {
                if let Some(job) = self.slots[k].as_mut() {
                    // A job seen again keeps its first tube, as in C.
                    job.rec = rec;
                    job.body = body;
                }
            }
            None => {
                self.next_id = self.next_id.max(rec.id.saturating_add(1));
                self.by_id.insert(rec.id, self.slots.len());
                self.slots.push(Some(Pending { rec, tube: tube.to_string(), body }));
            }
        }
        Ok(Step::More)
    }

    /// The file ends inside the record that starts at `start`, which needs
    /// `needed` bytes: padding if every byte from there on is zero, a torn
    /// record otherwise.
    fn tail<R: Read>(src: &mut Source<R>, zero_so_far: bool, needed: u64, left: u64) -> Result<Step, Stop> {
        let nonzero = if zero_so_far { src.first_nonzero().map_err(|e| Problem::Io(e.to_string()))? } else { Some(0) };
        match nonzero {
            None => Ok(Step::End),
            Some(_) => Err(Problem::Torn { needed, left }.into()),
        }
    }

    fn free(&mut self, k: usize) {
        if let Some(job) = self.slots[k].take() {
            self.by_id.remove(&job.rec.id);
        }
    }

    fn free_opt(&mut self, slot: Option<usize>) {
        if let Some(k) = slot {
            self.free(k);
        }
    }

    fn finish(self) -> Import {
        let mut buried_seq = 0;
        let jobs = self.slots.into_iter().flatten().map(|job| image(job, &mut buried_seq)).collect();
        Import {
            jobs,
            skipped: self.skipped.into_iter().flatten().collect(),
            warnings: self.warnings,
            files: self.files,
            next_id: self.next_id,
            records: self.records,
        }
    }
}

/// The body size with CRLF, checked to have room for the CRLF.
fn body_size(rec: &Jobrec) -> Result<u64, Stop> {
    if rec.body_size < CRLF.len() as i32 {
        return Err(Problem::BodySize { id: rec.id, body_size: rec.body_size }.into());
    }
    Ok(rec.body_size as u64)
}

/// An I/O error in the middle of a record: an early end of file is a torn
/// record (the file shrank while it was read), anything else is reported.
fn io_problem(e: io::Error, needed: u64, left: u64) -> Problem {
    if e.kind() == io::ErrorKind::UnexpectedEof { Problem::Torn { needed, left } } else { Problem::Io(e.to_string()) }
}

/// Whole seconds of a C duration in nanoseconds, truncated as `stats-job`
/// shows them (C's `put` and `release` only ever store whole seconds, so
/// nothing C wrote is rounded); negative values are 0.
fn whole_seconds(ns: i64) -> u32 {
    u32::try_from(ns.max(0) / NS_PER_S).unwrap_or(u32::MAX)
}

fn wall_ns(ns: i64) -> u64 {
    ns.max(0) as u64
}

fn image(job: Pending, buried_seq: &mut u64) -> JobImage {
    let r = job.rec;
    let (state, deadline) = match r.state {
        STATE_BURIED => {
            *buried_seq += 1;
            (ImageState::Buried, *buried_seq - 1)
        }
        STATE_DELAYED => (ImageState::Delayed, wall_ns(r.deadline_ns)),
        _ => (ImageState::Ready, 0),
    };
    JobImage {
        id: r.id,
        tube: job.tube,
        state,
        pri: r.pri,
        // C raises a ttr below one second at put; keep that floor.
        ttr_s: whole_seconds(r.ttr_ns).max(1),
        delay_s: whole_seconds(r.delay_ns),
        created_at: wall_ns(r.created_ns),
        deadline,
        counters: r.counters,
        body: job.body,
    }
}

/// What an export wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub jobs: u64,
    pub bytes: u64,
    /// The longest body written, without CRLF.
    pub body_bytes_max: u64,
    /// The id C hands out next after reading the file.
    pub next_id: u64,
}

impl Written {
    /// The smallest `-z` with which C keeps every job of the file: its
    /// reader compares the size with the CRLF against `-z`.
    pub fn c_job_size_min(&self) -> u64 {
        if self.jobs == 0 { 0 } else { self.body_bytes_max + CRLF.len() as u64 }
    }
}

/// Writes format-7 records, one full record per job, in the order given.
/// C restores buried jobs in the order of their records, so push them in
/// their bury order ([`write_v7`] does).
pub struct V7Writer<W: Write> {
    out: W,
    written: Written,
    id_max: u64,
}

impl<W: Write> V7Writer<W> {
    /// Writes the version header.
    pub fn new(mut out: W) -> io::Result<V7Writer<W>> {
        out.write_all(&VERSION_7.to_le_bytes())?;
        Ok(V7Writer { out, written: Written { bytes: 4, next_id: 1, ..Written::default() }, id_max: 0 })
    }

    /// Writes one job as a full record. Fails, writing nothing, when the job
    /// cannot be expressed in C's format (id 0, a tube name C would not
    /// accept, a body or time beyond C's field widths).
    pub fn push(&mut self, job: &JobImage) -> io::Result<()> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("job {}: {what}", job.id));
        if job.id == 0 {
            return Err(invalid("id 0 ends a C binlog"));
        }
        if valid_tube_name(job.tube.as_bytes()).is_none() {
            return Err(invalid("tube name is not a valid tube name"));
        }
        let body_size =
            i32::try_from(job.body.len() + CRLF.len()).map_err(|_| invalid("body too long for C's 32-bit size"))?;
        let created_ns = i64::try_from(job.created_at).map_err(|_| invalid("creation time beyond C's range"))?;
        let (state, deadline_ns) = match job.state {
            ImageState::Ready => (STATE_READY, 0),
            ImageState::Buried => (STATE_BURIED, 0),
            ImageState::Delayed => {
                (STATE_DELAYED, i64::try_from(job.deadline).map_err(|_| invalid("deadline beyond C's range"))?)
            }
        };
        let rec = Jobrec {
            id: job.id,
            pri: job.pri,
            delay_ns: i64::from(job.delay_s) * NS_PER_S,
            ttr_ns: i64::from(job.ttr_s.max(1)) * NS_PER_S,
            body_size,
            created_ns,
            deadline_ns,
            counters: job.counters,
            state,
        };
        self.record(&job.tube, &rec, &job.body)?;
        self.written.jobs += 1;
        self.written.body_bytes_max = self.written.body_bytes_max.max(job.body.len() as u64);
        Ok(())
    }

    fn record(&mut self, tube: &str, rec: &Jobrec, body: &[u8]) -> io::Result<()> {
        self.out.write_all(&(tube.len() as i32).to_le_bytes())?;
        self.out.write_all(tube.as_bytes())?;
        self.out.write_all(&encode_jobrec(rec))?;
        self.out.write_all(body)?;
        self.out.write_all(CRLF)?;
        self.written.bytes += (4 + tube.len() + JOBREC_BYTES + body.len() + CRLF.len()) as u64;
        self.id_max = self.id_max.max(rec.id);
        self.written.next_id = self.id_max + 1;
        Ok(())
    }

    /// Makes C's next id at least `next_id`, then flushes. When the jobs
    /// written leave C's next id lower, a full record for `next_id - 1` and
    /// its delete (a short record with state 0) follow: C creates that job,
    /// raising its next id, and frees it at once.
    pub fn finish(mut self, next_id: u64) -> io::Result<(W, Written)> {
        if next_id > self.id_max + 1 {
            let rec = Jobrec {
                id: next_id - 1,
                pri: 0,
                delay_ns: 0,
                ttr_ns: NS_PER_S,
                body_size: CRLF.len() as i32,
                created_ns: 0,
                deadline_ns: 0,
                counters: Counters::default(),
                state: STATE_READY,
            };
            self.record(MARKER_TUBE, &rec, &[])?;
            self.out.write_all(&0i32.to_le_bytes())?;
            self.out.write_all(&encode_jobrec(&Jobrec { state: STATE_INVALID, ..rec }))?;
            self.written.bytes += (4 + JOBREC_BYTES) as u64;
        }
        self.out.flush()?;
        Ok((self.out, self.written))
    }
}

/// Writes `jobs` to a new file at `path` (normally `DIR/binlog.1` of an
/// empty directory) that C beanstalkd 1.12 starts from, ready and delayed
/// jobs by id, then buried jobs in their bury order; C's next id becomes at
/// least `next_id`. The file is created with mode 0400 (never over an
/// existing file) and synced with its directory; on failure it is removed.
pub fn write_v7(path: &Path, jobs: &[JobImage], next_id: u64) -> io::Result<Written> {
    let mut order: Vec<&JobImage> = jobs.iter().collect();
    order.sort_by_key(|job| match job.state {
        ImageState::Buried => (1, job.deadline, job.id),
        ImageState::Ready | ImageState::Delayed => (0, job.id, 0),
    });
    let file = OpenOptions::new().write(true).create_new(true).mode(0o400).open(path)?;
    let result = (|| {
        let mut writer = V7Writer::new(BufWriter::with_capacity(WRITE_BUFFER_BYTES, file))?;
        for job in order {
            writer.push(job)?;
        }
        let (out, written) = writer.finish(next_id)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(written)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

#[cfg(test)]
mod tests;
