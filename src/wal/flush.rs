//! Getting batches to the disk: the writes and syncs of one shard's log as
//! a state machine that asks for one file operation at a time and is told
//! when it completes. The event loop carries the operations out on its back
//! end (io_uring operations, or the epoll back end's I/O thread), so the
//! loop never waits for the disk.
//!
//! One batch is in flight at a time: its writes in order, then, with `-f0`,
//! a sync of every file it wrote (and of the directory when it started a
//! new file), and only then is it done. Meanwhile the next batch fills, so
//! the records of everything that happened during a sync go out together
//! (group commit). With `-f MS` a batch is done once written, and a sync of
//! the files written since the last one follows within MS even when
//! nothing else happens (beanstalkd syncs only on its next write, so its
//! last records can stay unsynced forever). With `-F` nothing is synced
//! until the server stops.
//!
//! # Lanes
//! Operations run in two [`Lane`]s, each with at most one operation in
//! flight: a batch's writes (and a `-f0` batch's syncs) in one, the timed
//! syncs of `-f MS` in the other. A timed sync can take tens of
//! milliseconds with megabytes to write back; in one lane, the batches
//! behind it waited that long (`-f 50` puts ran at half the rate of `-F`).
//! A timed sync covers the batches written before it started; a batch
//! written while it runs waits for the next one. At a stop the lanes take
//! turns, as the final syncs must cover everything.
//!
//! # Holding a `-f0` batch for the clients just answered
//! When a `-f0` batch is durable its replies go out, and clients that send
//! one command at a time answer within tens of microseconds. Started with
//! the first record that arrives, the next batch would be synced nearly
//! alone, and the records arriving during that sync would wait for the
//! one after: the clients split into two groups that take turns, each
//! waiting for the other's sync. So the next batch waits until it has as
//! many records as the last one plus those that came during its write
//! (as many as there are clients just answered and clients already
//! waiting), or until [`HOLD_NS`] after the last batch became durable,
//! or until no record has come for [`HOLD_QUIET_NS`], whichever comes
//! first. A client alone never waits (one record answered, none come
//! meanwhile, so its next record is all the batch waits for), no reply
//! waits more than [`HOLD_NS`] longer than it otherwise would, and the
//! loop serves every connection meanwhile. While it holds, the loop looks
//! for events without sleeping: waking a sleeping thread for a deadline
//! tens of microseconds away costs about as much as the hold (on the
//! virtual machines of the benchmarks, more). The other policies never
//! hold a batch: their replies wait only for the write.
//!
//! # Faults
//! A write or sync that fails is logged and tried again after
//! [`RETRY_NS`]; the replies that wait for it wait too, and nothing is
//! acknowledged that is not on disk. (A failed sync is retried as a sync;
//! on Linux the pages it failed to write may already be marked clean, so
//! an operator should treat a logged sync failure as a disk fault.)
//!
//! # What it must never do
//! Drop the memory of an operation in flight: the batch (and the bodies it
//! refers to) and its iovecs live here until the operation's completion has
//! been reported.

use super::log::{Batch, FileRef, Part, SyncPolicy, Write};

/// With `-f0`, how long after a batch became durable a smaller next batch
/// may wait for more records; see "Holding a `-f0` batch" above.
pub const HOLD_NS: u64 = 50_000;

/// A held batch starts once no record has come for this long: the clients
/// that were going to answer soon have.
pub const HOLD_QUIET_NS: u64 = 15_000;

/// A failed write or sync is tried again after this long.
pub const RETRY_NS: u64 = 1_000_000_000;

/// Most iovecs in one vectored write (the kernel's IOV_MAX).
const IOVECS_PER_WRITE_MAX: usize = 1024;

// More would make the write fail with EINVAL.
const _: () = assert!(IOVECS_PER_WRITE_MAX <= libc::UIO_MAXIOV as usize);

/// Where an operation runs; see "Lanes" above.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    Batch = 0,
    Timed = 1,
}

/// The number of lanes, for back ends that keep state per lane.
pub const LANES: usize = 2;

impl Lane {
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_index(i: usize) -> Option<Lane> {
        match i {
            0 => Some(Lane::Batch),
            1 => Some(Lane::Timed),
            _ => None,
        }
    }
}

/// A file operation to start now. The iovecs it points to stay valid
/// until [`Flush::complete`] is called for it.
#[derive(Clone, Copy, Debug)]
pub enum Request {
    /// A vectored write at `offset`; with `dsync`, the write also makes
    /// its data durable before it completes (`RWF_DSYNC`), so `-f0` needs
    /// one operation per batch instead of a write and a sync.
    Write { fd: i32, iov: *const libc::iovec, count: usize, offset: u64, dsync: bool },
    /// `fdatasync` of a segment file, or `fsync` of the log directory (for
    /// the entries of files made in it).
    Sync { fd: i32, data_only: bool },
}

/// What a completion finished.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Every batch up to this one is written.
    pub written: Option<u64>,
    /// Every batch up to this one is synced.
    pub synced: Option<u64>,
}

enum Phase {
    /// Writing `writes[write]`: its iovecs from `first` on are still to go
    /// (the first of them trimmed by what a short write took), `offset`
    /// is where they go in the file.
    Writing { write: usize, first: usize, offset: u64 },
    /// Syncing `targets[next]` (`-f0`).
    Syncing { next: usize },
}

struct InFlight {
    number: u64,
    writes: Vec<Write>,
    /// One iovec list per write.
    iovecs: Vec<Vec<libc::iovec>>,
    /// The files the batch wrote, each once.
    files: Vec<FileRef>,
    /// What a `-f0` batch syncs after its writes: the directory if it
    /// started a file (the files' data is synced by their writes), or, at
    /// a stop, the files too.
    targets: Vec<i32>,
    /// The writes sync their own data (`-f0`).
    dsync: bool,
    phase: Phase,
}

/// A sync started by the `-f MS` timer or at stop: what it syncs and the
/// last batch it covers.
struct TimedSync {
    targets: Vec<i32>,
    next: usize,
    upto: u64,
}

pub struct Flush {
    policy: SyncPolicy,
    dir_fd: i32,
    batch: Option<InFlight>,
    timed: Option<TimedSync>,
    /// Files written since the last sync, and the last batch written.
    unsynced: Vec<FileRef>,
    unsynced_upto: u64,
    unsynced_dir: bool,
    /// An operation is in flight in each lane.
    busy: [bool; LANES],
    last_sync_at: u64,
    /// After a failure, nothing is tried before this time.
    retry_at: Option<u64>,
    /// Sync everything now, whatever the policy (the server is stopping).
    final_sync: bool,
    /// Text buffers of batches done, for the log to fill again
    /// ([`Flush::take_spent`]).
    spent: Vec<Vec<u8>>,
    /// Records in the last batch started.
    last_records: u64,
    /// A batch became durable since `can_start` was last asked.
    just_durable: bool,
    /// The records a held batch waits for: the last batch's (its clients
    /// were just answered) and those that came during its write.
    hold_for: u64,
    /// The filling batch is held until then (`-f0`; see [`HOLD_NS`]).
    held_until: Option<u64>,
    /// The records of the filling batch when `can_start` was last asked,
    /// and when the last of them came (as far as the loop could tell).
    seen_records: u64,
    record_came_at: u64,
}

/// Spent text chunks kept until the log takes them; more are freed.
const SPENT_BUFFERS_MAX: usize = super::log::TEXT_POOL_CHUNKS;

impl Flush {
    pub fn new(policy: SyncPolicy, dir_fd: i32, now: u64) -> Flush {
        Flush {
            policy,
            dir_fd,
            batch: None,
            timed: None,
            unsynced: Vec::new(),
            unsynced_upto: 0,
            unsynced_dir: false,
            busy: [false; LANES],
            last_sync_at: now,
            retry_at: None,
            final_sync: false,
            spent: Vec::new(),
            last_records: 0,
            just_durable: false,
            hold_for: 0,
            held_until: None,
            seen_records: 0,
            record_came_at: 0,
        }
    }

    /// The text buffers of batches whose operations are done (their
    /// memory is no longer the kernel's), for [`super::log::Log::recycle_text`].
    pub fn take_spent(&mut self) -> std::vec::Drain<'_, Vec<u8>> {
        self.spent.drain(..)
    }

    /// Keeps a finished batch's text buffers.
    fn retire(&mut self, writes: &mut [Write]) {
        for w in writes {
            for part in w.parts.drain(..) {
                if let Part::Text(t) = part
                    && self.spent.len() < SPENT_BUFFERS_MAX
                {
                    self.spent.push(t);
                }
            }
        }
    }

    /// Whether a new batch of `records` records can start: no batch is in
    /// flight. At a stop, a due final sync goes first, or a steady stream
    /// of batches would keep it from ever running. With `-f0`, a batch
    /// may be held for a moment after the last one became durable (see
    /// [`HOLD_NS`]); [`Flush::next_deadline`] then says until when. The
    /// loop asks as soon as a batch is durable, so `records` then are
    /// those that came during its write.
    pub fn can_start(&mut self, now: u64, records: u64) -> bool {
        self.held_until = None;
        if self.batch.is_some()
            || (self.final_sync && (self.timed.is_some() || (!self.unsynced.is_empty() && self.sync_due(now))))
        {
            return false;
        }
        if std::mem::take(&mut self.just_durable) {
            self.hold_for = self.last_records + records;
            self.record_came_at = now;
        } else if records > self.seen_records {
            self.record_came_at = now;
        }
        self.seen_records = records;
        let until = self.last_sync_at.saturating_add(HOLD_NS);
        // With nothing to start there is nothing to hold (and the loop
        // need not poll): the first record to come asks again.
        let hold = self.policy == SyncPolicy::Always
            && !self.final_sync
            && records > 0
            && records < self.hold_for
            && now < until
            && now < self.record_came_at.saturating_add(HOLD_QUIET_NS);
        if hold {
            self.held_until = Some(until.min(self.record_came_at + HOLD_QUIET_NS));
        }
        !hold
    }

    /// Whether a batch is held (see [`HOLD_NS`]).
    pub fn is_holding(&self) -> bool {
        self.held_until.is_some()
    }

    /// Whether nothing is in flight and nothing waits to be synced.
    pub fn is_idle(&self) -> bool {
        self.batch.is_none() && self.timed.is_none() && !self.is_busy() && self.unsynced.is_empty()
    }

    /// Whether an operation is in flight (the loop must wait for it).
    pub fn is_busy(&self) -> bool {
        self.busy.iter().any(|&b| b)
    }

    /// From now on, sync what is written as soon as possible, whatever the
    /// policy: the server is stopping. `open` are the files the log still
    /// has open, which it keeps open until they are synced. With `-F` they
    /// are all that is synced: files the log closed earlier were never
    /// listed (see [`Flush::complete`]) and their writes are left to the
    /// kernel's write-back, as every write is with `-F`.
    pub fn sync_all(&mut self, open: impl IntoIterator<Item = FileRef>) {
        self.final_sync = true;
        self.retry_at = None;
        if self.policy == SyncPolicy::Never {
            for f in open {
                if !self.unsynced.contains(&f) {
                    self.unsynced.push(f);
                }
            }
        }
    }

    pub fn start(&mut self, batch: Batch) {
        assert!(self.batch.is_none(), "a batch is already in flight");
        self.last_records = batch.records;
        let iovecs = batch
            .writes
            .iter()
            .map(|w| {
                w.parts
                    .iter()
                    .map(|p| libc::iovec { iov_base: p.bytes().as_ptr().cast_mut().cast(), iov_len: p.bytes().len() })
                    .collect()
            })
            .collect();
        let mut files: Vec<FileRef> = Vec::new();
        for w in &batch.writes {
            if !files.contains(&w.file) {
                files.push(w.file);
            }
        }
        let dsync = self.policy == SyncPolicy::Always;
        // Files written by earlier batches are synced too at a stop; with
        // `-f0` a batch's own writes sync their data.
        let mut targets: Vec<i32> = Vec::new();
        if !dsync {
            targets.extend(files.iter().map(|f| f.0));
            targets.extend(self.unsynced.iter().filter(|f| !files.contains(f)).map(|f| f.0));
        }
        if batch.new_file || self.unsynced_dir {
            targets.push(self.dir_fd);
        }
        let offset = batch.writes.first().map_or(0, |w| w.offset);
        self.batch = Some(InFlight {
            number: batch.number,
            writes: batch.writes,
            iovecs,
            files,
            targets,
            dsync,
            phase: Phase::Writing { write: 0, first: 0, offset },
        });
        if let Some(b) = self.batch.as_mut()
            && b.writes.is_empty()
        {
            b.phase = Phase::Syncing { next: 0 };
        }
    }

    /// An operation to start now, if any, and its lane; call again until
    /// it returns `None` (at most one is in flight per lane).
    pub fn request(&mut self, now: u64) -> Option<(Lane, Request)> {
        if self.retry_at.is_some_and(|at| now < at) {
            return None;
        }
        self.retry_at = None;
        if !self.busy[Lane::Batch.index()]
            && let Some(request) = self.batch_request()
        {
            self.busy[Lane::Batch.index()] = true;
            return Some((Lane::Batch, request));
        }
        // At a stop, the final syncs wait for the batch in flight and go
        // before the next (see `can_start`).
        let turns = self.final_sync && (self.batch.is_some() || self.busy[Lane::Batch.index()]);
        if self.busy[Lane::Timed.index()] || turns {
            return None;
        }
        if self.timed.is_none() && !self.unsynced.is_empty() && self.sync_due(now) {
            let mut targets: Vec<i32> = self.unsynced.drain(..).map(|f| f.0).collect();
            if std::mem::take(&mut self.unsynced_dir) {
                targets.push(self.dir_fd);
            }
            self.timed = Some(TimedSync { targets, next: 0, upto: self.unsynced_upto });
        }
        let t = self.timed.as_ref()?;
        let fd = t.targets[t.next];
        self.busy[Lane::Timed.index()] = true;
        Some((Lane::Timed, Request::Sync { fd, data_only: fd != self.dir_fd }))
    }

    /// The next operation of the batch in flight.
    fn batch_request(&self) -> Option<Request> {
        let b = self.batch.as_ref()?;
        Some(match b.phase {
            Phase::Writing { write, first, offset } => {
                let iov = &b.iovecs[write][first..];
                Request::Write {
                    fd: b.writes[write].file.0,
                    iov: iov.as_ptr(),
                    count: iov.len().min(IOVECS_PER_WRITE_MAX),
                    offset,
                    dsync: b.dsync,
                }
            }
            Phase::Syncing { next } => {
                let fd = b.targets[next];
                Request::Sync { fd, data_only: fd != self.dir_fd }
            }
        })
    }

    fn sync_due(&self, now: u64) -> bool {
        if self.final_sync {
            return true;
        }
        match self.policy {
            SyncPolicy::EveryMs(ms) => now >= self.last_sync_at.saturating_add(ms * 1_000_000),
            SyncPolicy::Always | SyncPolicy::Never => false,
        }
    }

    /// When [`Flush::request`] will next have something to start without
    /// anything else happening (a timed sync, or a retry).
    pub fn next_deadline(&self) -> Option<u64> {
        if let Some(at) = self.retry_at {
            return (!self.is_busy()).then_some(at);
        }
        if self.held_until.is_some() {
            return self.held_until;
        }
        if self.busy[Lane::Timed.index()] || self.timed.is_some() {
            return None;
        }
        match self.policy {
            SyncPolicy::EveryMs(ms) if !self.unsynced.is_empty() => {
                Some(self.last_sync_at.saturating_add(ms * 1_000_000))
            }
            _ => None,
        }
    }

    /// The operation in flight in `lane` completed with `result` (bytes
    /// written, or 0 for a sync). Returns what is now done, or the error to
    /// log (the operation is tried again later).
    pub fn complete(&mut self, lane: Lane, result: std::io::Result<usize>, now: u64) -> Result<Progress, String> {
        assert!(self.busy[lane.index()], "a completion with nothing in flight in {lane:?}");
        self.busy[lane.index()] = false;
        let n = match result {
            Ok(n) => n,
            Err(e) => {
                self.retry_at = Some(now + RETRY_NS);
                let what = match (lane, self.batch.as_ref().map(|b| &b.phase)) {
                    (Lane::Batch, Some(Phase::Writing { .. })) => "write",
                    _ => "sync",
                };
                return Err(format!("log {what} failed: {e}; trying again in a second"));
            }
        };
        let b = match lane {
            Lane::Batch => self.batch.as_mut().expect("a batch completion with no batch"),
            Lane::Timed => {
                let t = self.timed.as_mut().expect("a timed completion with no timed sync");
                t.next += 1;
                if t.next < t.targets.len() {
                    return Ok(Progress::default());
                }
                let upto = t.upto;
                self.timed = None;
                self.last_sync_at = now;
                return Ok(Progress { written: None, synced: Some(upto) });
            }
        };
        match b.phase {
            Phase::Writing { write, first, offset } => {
                if n == 0 {
                    self.retry_at = Some(now + RETRY_NS);
                    return Err("log write wrote nothing; trying again in a second".to_string());
                }
                let iov = &mut b.iovecs[write];
                let first = advance(iov, first, n);
                if first < iov.len() {
                    b.phase = Phase::Writing { write, first, offset: offset + n as u64 };
                    return Ok(Progress::default());
                }
                if write + 1 < b.writes.len() {
                    b.phase = Phase::Writing { write: write + 1, first: 0, offset: b.writes[write + 1].offset };
                    return Ok(Progress::default());
                }
                if (self.policy == SyncPolicy::Always || self.final_sync) && !b.targets.is_empty() {
                    b.phase = Phase::Syncing { next: 0 };
                    return Ok(Progress { written: Some(b.number), synced: None });
                }
                if b.dsync {
                    // Written with its data synced, and no new file's entry
                    // to sync: durable now.
                    let mut b = self.batch.take().expect("checked above");
                    self.retire(&mut b.writes);
                    self.last_sync_at = now;
                    self.just_durable = true;
                    return Ok(Progress { written: Some(b.number), synced: Some(b.number) });
                }
                let mut b = self.batch.take().expect("checked above");
                self.retire(&mut b.writes);
                // With `-F` nothing is synced before a stop, and the log
                // closes a file as soon as its writes are done: a list of
                // its descriptors would name closed files by then, or other
                // files that reuse their numbers (see `sync_all`).
                if self.policy != SyncPolicy::Never || self.final_sync {
                    for f in b.files {
                        if !self.unsynced.contains(&f) {
                            self.unsynced.push(f);
                        }
                    }
                }
                self.unsynced_upto = b.number;
                self.unsynced_dir |= b.targets.last() == Some(&self.dir_fd);
                Ok(Progress { written: Some(b.number), synced: None })
            }
            Phase::Syncing { next } => {
                if next + 1 < b.targets.len() {
                    b.phase = Phase::Syncing { next: next + 1 };
                    return Ok(Progress::default());
                }
                let mut b = self.batch.take().expect("checked above");
                self.retire(&mut b.writes);
                if b.targets.last() == Some(&self.dir_fd) {
                    self.unsynced_dir = false;
                }
                // Files written by earlier batches and not synced yet stay
                // listed unless this batch synced them too; the batch counts
                // as synced only when nothing earlier is left.
                if b.dsync {
                    self.unsynced.retain(|f| !b.files.contains(f));
                } else {
                    self.unsynced.retain(|f| !b.targets.contains(&f.0));
                }
                self.last_sync_at = now;
                self.just_durable = true;
                // A timed sync still in flight holds files of earlier
                // batches (it took them from `unsynced`): until it is done,
                // they are not synced, and the log must keep them open.
                let synced = if self.unsynced.is_empty() && self.timed.is_none() { Some(b.number) } else { None };
                if synced.is_none() {
                    self.unsynced_upto = b.number;
                }
                Ok(Progress { written: Some(b.number), synced })
            }
        }
    }
}

/// Accounts for `n` bytes written from `iov[first..]`, trimming the iovec
/// a short write ended in; returns the first iovec not completely written.
fn advance(iov: &mut [libc::iovec], mut first: usize, mut n: usize) -> usize {
    while n > 0 && first < iov.len() {
        let v = &mut iov[first];
        if n >= v.iov_len {
            n -= v.iov_len;
            first += 1;
        } else {
            // Safety: advancing within the same live buffer.
            v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n) }.cast();
            v.iov_len -= n;
            n = 0;
        }
    }
    // Empty iovecs at the end (none are made, but be exact).
    while first < iov.len() && iov[first].iov_len == 0 {
        first += 1;
    }
    first
}

/// Writes and syncs a batch at once, blocking: for start-up (an import
/// must be durable before the C files move aside), before the loop runs.
pub fn write_blocking(batch: &Batch, dir_fd: i32) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut files: Vec<i32> = Vec::new();
    for w in &batch.writes {
        // Safety: the descriptor belongs to the log and stays open while
        // the batch exists; ManuallyDrop keeps this File from closing it.
        let file =
            std::mem::ManuallyDrop::new(unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(w.file.0) });
        let mut at = w.offset;
        for p in &w.parts {
            file.write_all_at(p.bytes(), at)?;
            at += p.bytes().len() as u64;
        }
        if !files.contains(&w.file.0) {
            files.push(w.file.0);
        }
    }
    for fd in files {
        // Safety: fdatasync on the log's own descriptor.
        if unsafe { libc::fdatasync(fd) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    // Safety: fsync on the directory's descriptor.
    if unsafe { libc::fsync(dir_fd) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::log::{Part, Write};
    use crate::wal::recover::SegmentId;

    const DIR: i32 = 99;
    const MS: u64 = 1_000_000;

    fn batch(number: u64, files: &[i32], new_file: bool) -> Batch {
        let writes = files
            .iter()
            .map(|&fd| Write {
                segment: SegmentId { shard: 0, seq: fd as u64 },
                file: FileRef(fd),
                offset: 64,
                parts: vec![Part::Text(b"abc".to_vec()), Part::Text(b"defg".to_vec())],
                len: 7,
            })
            .collect();
        Batch { number, writes, new_file, records: 1 }
    }

    /// A batch of `records` records in file 5.
    fn batch_of(number: u64, records: u64) -> Batch {
        Batch { records, ..batch(number, &[5], false) }
    }

    /// A `-f0` flush whose batch 1, of `records` records, became durable
    /// at `at`.
    fn f0_synced(records: u64, at: u64) -> Flush {
        let mut f = Flush::new(SyncPolicy::Always, DIR, 0);
        f.start(batch_of(1, records));
        let (_, p) = run(&mut f, at);
        assert_eq!(p.synced, Some(1));
        f
    }

    /// Runs requests to completion, each finishing whole, and returns them
    /// with the progress reported.
    fn run(f: &mut Flush, now: u64) -> (Vec<String>, Progress) {
        let mut seen = Vec::new();
        let mut progress = Progress::default();
        while let Some((lane, r)) = f.request(now) {
            let (text, n) = describe(r);
            seen.push(text);
            let p = f.complete(lane, Ok(n), now).unwrap();
            progress.written = p.written.or(progress.written);
            progress.synced = p.synced.or(progress.synced);
        }
        (seen, progress)
    }

    /// A request as text, and the result of doing it whole.
    fn describe(r: Request) -> (String, usize) {
        match r {
            Request::Write { fd, count, offset, dsync, .. } => {
                (format!("write {fd}@{offset}x{count} dsync={dsync}"), 7)
            }
            Request::Sync { fd, data_only } => (format!("sync {fd} data={data_only}"), 0),
        }
    }

    #[test]
    fn f0_writes_sync_their_own_data_and_a_new_file_syncs_its_directory() {
        let mut f = Flush::new(SyncPolicy::Always, DIR, 0);
        f.start(batch(1, &[5], true));
        let (ops, p) = run(&mut f, 0);
        assert_eq!(ops, ["write 5@64x2 dsync=true", "sync 99 data=false"]);
        assert_eq!(p, Progress { written: Some(1), synced: Some(1) });
        f.start(batch(2, &[5], false));
        let (ops, p) = run(&mut f, 0);
        assert_eq!(ops, ["write 5@64x2 dsync=true"]);
        assert_eq!(p, Progress { written: Some(2), synced: Some(2) });
        assert!(f.is_idle());
        // Each finished batch gave its text back for the log to fill again.
        let spent: Vec<Vec<u8>> = f.take_spent().collect();
        assert_eq!(spent, [b"abc".to_vec(), b"defg".to_vec(), b"abc".to_vec(), b"defg".to_vec()]);
        assert_eq!(f.take_spent().count(), 0);
    }

    #[test]
    fn f0_holds_a_batch_while_records_come_up_to_hold_ns_after_the_sync() {
        const US: u64 = 1_000;
        // Nothing was synced yet: a batch of one starts at once.
        assert!(Flush::new(SyncPolicy::Always, DIR, 0).can_start(0, 1));
        let mut f = f0_synced(10, 100 * US);
        // Batch 1 (ten records) became durable at 100 us, with two more
        // come meanwhile: the next batch waits for twelve, and the loop is
        // told until when (the quiet time, as no record came since).
        assert!(!f.can_start(100 * US, 2));
        assert!(f.is_holding());
        assert_eq!(f.next_deadline(), Some(100 * US + HOLD_QUIET_NS));
        // Records keep coming: it waits, up to HOLD_NS after the sync.
        for k in 0..4 {
            assert!(!f.can_start((110 + 10 * k) * US, 3 + k), "held at {} us", 110 + 10 * k);
        }
        assert!(!f.can_start(100 * US + HOLD_NS - 1, 7));
        assert!(f.can_start(100 * US + HOLD_NS, 8), "held no longer than HOLD_NS");
        assert!(!f.is_holding());
        assert_eq!(f.next_deadline(), None, "nothing held, nothing to wake for");
    }

    #[test]
    fn f0_starts_a_held_batch_once_it_has_the_records_it_waits_for() {
        const US: u64 = 1_000;
        let mut f = f0_synced(3, 100 * US);
        assert!(!f.can_start(100 * US, 2), "waits for five");
        assert!(f.can_start(105 * US, 5));
        f.start(batch_of(2, 1));
        let (_, p) = run(&mut f, 200 * US);
        assert_eq!(p.synced, Some(2));
        // A client alone: one record answered, none come meanwhile, and
        // its next record starts a batch the moment it is there.
        assert!(f.can_start(200 * US, 0) && !f.is_holding(), "nothing to hold, nothing to poll for");
        assert!(f.can_start(201 * US, 1));
    }

    #[test]
    fn f0_starts_a_held_batch_once_records_stop_coming() {
        const US: u64 = 1_000;
        let mut f = f0_synced(3, 100 * US);
        assert!(!f.can_start(100 * US, 2), "waits for five");
        assert!(!f.can_start(110 * US, 3), "one came at 110 us");
        assert_eq!(f.next_deadline(), Some(110 * US + HOLD_QUIET_NS));
        assert!(!f.can_start(110 * US + HOLD_QUIET_NS - 1, 3));
        assert!(f.can_start(110 * US + HOLD_QUIET_NS, 3), "none came for HOLD_QUIET_NS");
    }

    #[test]
    fn f0_holds_nothing_at_a_stop_and_other_policies_never_hold() {
        let mut f = f0_synced(3, 0);
        assert!(!f.can_start(1, 1));
        f.sync_all([]);
        assert!(f.can_start(1, 1), "a stop writes what is pending at once");
        assert!(!f.is_holding());

        for policy in [SyncPolicy::EveryMs(50), SyncPolicy::Never] {
            let mut f = Flush::new(policy, DIR, 0);
            f.start(batch_of(1, 3));
            run(&mut f, 0);
            assert!(f.can_start(1, 1), "{policy:?} holds no batch");
            assert!(!f.is_holding());
            assert_eq!(f.next_deadline().filter(|&at| at < MS), None);
        }
    }

    #[test]
    fn every_ms_syncs_what_was_written_once_the_time_has_come_even_when_idle() {
        let mut f = Flush::new(SyncPolicy::EveryMs(50), DIR, 0);
        f.start(batch(1, &[5, 6], false));
        let (ops, p) = run(&mut f, 10 * MS);
        assert_eq!(ops, ["write 5@64x2 dsync=false", "write 6@64x2 dsync=false"]);
        assert_eq!(p, Progress { written: Some(1), synced: None });
        assert_eq!(f.next_deadline(), Some(50 * MS));
        assert!(f.request(49 * MS).is_none());
        let (ops, p) = run(&mut f, 50 * MS);
        assert_eq!(ops, ["sync 5 data=true", "sync 6 data=true"]);
        assert_eq!(p, Progress { written: None, synced: Some(1) });
        assert!(f.is_idle() && f.can_start(50 * MS, 1));
    }

    #[test]
    fn every_ms_batches_are_written_while_a_timed_sync_runs_and_wait_for_the_next() {
        let mut f = Flush::new(SyncPolicy::EveryMs(50), DIR, 0);
        f.start(batch(1, &[5], false));
        run(&mut f, 10 * MS);
        // The timed sync of batch 1 starts and takes its time.
        let Some((Lane::Timed, sync)) = f.request(50 * MS) else { panic!("a timed sync is due") };
        assert_eq!(describe(sync).0, "sync 5 data=true");
        assert!(f.request(50 * MS).is_none(), "one operation per lane");
        // Meanwhile batch 2 starts, is written, and is not covered.
        assert!(f.can_start(51 * MS, 1));
        f.start(batch(2, &[5], false));
        let Some((Lane::Batch, write)) = f.request(51 * MS) else { panic!("the batch lane is free") };
        assert_eq!(describe(write).0, "write 5@64x2 dsync=false");
        assert_eq!(f.complete(Lane::Batch, Ok(7), 52 * MS).unwrap(), Progress { written: Some(2), synced: None });
        assert_eq!(f.complete(Lane::Timed, Ok(0), 60 * MS).unwrap(), Progress { written: None, synced: Some(1) });
        assert!(!f.is_idle(), "batch 2 waits for its sync");
        assert_eq!(f.next_deadline(), Some(110 * MS));
        let (ops, p) = run(&mut f, 110 * MS);
        assert_eq!(ops, ["sync 5 data=true"]);
        assert_eq!(p, Progress { written: None, synced: Some(2) });
        assert!(f.is_idle());
    }

    #[test]
    fn a_stop_during_a_timed_sync_claims_nothing_synced_before_it_is_done() {
        // Batch 1 wrote file 5; its timed sync is in flight when the stop
        // comes, with batch 2 (file 6) being written. Batch 2's final
        // sync must not report batch 2 synced while file 5's sync is still
        // out: the log would close file 5 under it.
        let mut f = Flush::new(SyncPolicy::EveryMs(50), DIR, 0);
        f.start(batch(1, &[5], false));
        run(&mut f, 10 * MS);
        let Some((Lane::Timed, _)) = f.request(50 * MS) else { panic!("a timed sync is due") };
        f.start(batch(2, &[6], false));
        let Some((Lane::Batch, _)) = f.request(50 * MS) else { panic!("the batch lane is free") };
        f.sync_all([FileRef(5), FileRef(6)]);
        assert_eq!(f.complete(Lane::Batch, Ok(7), 51 * MS).unwrap(), Progress { written: Some(2), synced: None });
        let Some((Lane::Batch, sync)) = f.request(51 * MS) else { panic!("the batch's final sync") };
        assert_eq!(describe(sync).0, "sync 6 data=true");
        assert_eq!(f.complete(Lane::Batch, Ok(0), 52 * MS).unwrap(), Progress { written: Some(2), synced: None });
        assert_eq!(f.complete(Lane::Timed, Ok(0), 60 * MS).unwrap(), Progress { written: None, synced: Some(1) });
        // Nothing is left unsynced, and batch 2 is reported at the next
        // step: the next turn's batch, or here the end.
        assert!(f.request(60 * MS).is_none());
    }

    #[test]
    fn at_a_stop_everything_written_is_synced_whatever_the_policy() {
        // `-F`: files 7 and 5 written; the log closed 7 since (its writes
        // were done) and has 5 open at the stop. 5 is synced; 7, whose
        // number may name another file by now, is not.
        let mut f = Flush::new(SyncPolicy::Never, DIR, 0);
        f.start(batch(1, &[7, 5], false));
        run(&mut f, 0);
        assert!(f.is_idle(), "with -F nothing waits for a sync before the stop");
        f.sync_all([FileRef(5)]);
        assert!(!f.is_idle(), "an open file written before the stop waits for its sync");
        f.start(batch(2, &[6], false));
        let (ops, p) = run(&mut f, 0);
        assert_eq!(ops, ["write 6@64x2 dsync=false", "sync 6 data=true", "sync 5 data=true"]);
        assert_eq!(p, Progress { written: Some(2), synced: Some(2) });
        assert!(f.is_idle());
    }

    #[test]
    fn short_writes_go_on_from_where_they_stopped_and_errors_are_retried_later() {
        let mut f = Flush::new(SyncPolicy::Always, DIR, 0);
        f.start(batch(1, &[5], false));
        let Some((Lane::Batch, Request::Write { iov, count, offset, .. })) = f.request(0) else { panic!() };
        assert_eq!((count, offset), (2, 64));
        // Safety: the iovecs live in `f` until the completion.
        let first = unsafe { &*iov };
        assert_eq!(first.iov_len, 3);
        assert_eq!(f.complete(Lane::Batch, Ok(4), 0).unwrap(), Progress::default());
        let Some((Lane::Batch, Request::Write { iov, count, offset, .. })) = f.request(0) else { panic!() };
        // Safety: as above.
        let rest = unsafe { std::slice::from_raw_parts(iov, count) };
        assert_eq!((count, offset, rest[0].iov_len), (1, 68, 3));
        assert!(f.complete(Lane::Batch, Err(std::io::Error::from_raw_os_error(libc::EIO)), 0).is_err());
        assert!(f.request(RETRY_NS - 1).is_none(), "no retry before the pause");
        assert_eq!(f.next_deadline(), Some(RETRY_NS));
        let Some((Lane::Batch, Request::Write { offset, .. })) = f.request(RETRY_NS) else { panic!() };
        assert_eq!(offset, 68);
        assert_eq!(f.complete(Lane::Batch, Ok(3), RETRY_NS).unwrap(), Progress { written: Some(1), synced: Some(1) });
    }
}
