//! One shard's log as the engine sees it: where each record goes, how much
//! space is left, which segments are still needed, and the batches of
//! records that the event loop writes out.
//!
//! The engine appends records while it runs commands; the loop takes them
//! once per turn as one [`Batch`] (group commit) and reports back when the
//! batch is written and, where the sync policy asks, synced. Nothing here
//! waits for the disk: writes and syncs run in the loop's back end, and
//! replies that depend on a batch are held by the shard until the batch is
//! done (see `shard`).
//!
//! # Space
//! Segment files are preallocated to their full size when they are made,
//! so writing never needs the file system to find room, and a record never
//! spans two files. Space is reserved before a change is made: a put
//! reserves its job record and the delete record that will end the job, so
//! every live job can always be deleted even on a full disk; a state change
//! reserves its state record. When the current segment and the spare ones
//! cannot hold a reservation and no new segment can be made, the
//! reservation fails and the command gets the reference's reply
//! (`OUT_OF_MEMORY` for a put); nothing already written is touched, and
//! reservations succeed again once a segment can be made.
//!
//! # Which segments are needed
//! Every live job's latest job record is in exactly one segment; each
//! segment counts the live jobs whose latest job record it holds. Segments
//! are removed from the oldest end only: once the oldest segment counts no
//! live job, every record in it is superseded (a later job record, or a
//! delete of a job whose records are all in it or in segments already
//! removed), so it can go as soon as the records that superseded it are
//! durable. Removing only from the oldest end is what makes a delete record
//! safe to drop: the job record it cancels is never in a later segment.
//!
//! # Reusing files
//! A segment that could be removed becomes a spare instead when spares are
//! wanted and it has the usual size: its file is renamed to the next seq
//! and written again from its start ([`SegmentFiles::recycle`]). Its blocks
//! were written before, so a sync of records written into them needs no
//! journal commit (the first write into freshly allocated space makes one:
//! a `-f0` batch cost several times as much there). The salted checksums
//! and the zeros after every write (see `segment`) keep the file's earlier
//! records from being read as the new segment's.
//!
//! # Compaction
//! A segment can hold a live job for a long time (a buried job, a job
//! delayed for days), and that pins it and every later segment. While the
//! segments on disk take more than [`COMPACT_RATIO`] times the bytes of the
//! live records plus two segments, jobs whose latest job record is in the
//! oldest segment are written again at the head (a "move", counted in
//! `binlog-records-migrated`), a bounded number of bytes per turn, so that
//! the oldest segment empties and goes. This bounds the directory to about
//! `COMPACT_RATIO × live bytes + 3 segments` under any workload (see
//! docs/OPERATIONS.md and the tests).
//!
//! # What it must never do
//! Remove a segment whose records are still the latest word on a live job,
//! or before the records that superseded it are durable; place a record
//! across two files; let a write go past the end of a preallocated file.

use std::collections::VecDeque;
use std::io;

use super::record::{self, StateFields};
use super::recover::{Recovered, SegmentId};
use super::segment::{self, HEADER_BYTES, Header};
use crate::engine::body::Body;

/// Bodies up to this many bytes are copied into the batch's text; larger
/// ones are written from the job's own memory.
const BODY_COPY_BYTES_MAX: usize = 1024;

/// A batch's record text is written into chunks of this capacity, a new
/// chunk (an iovec more) when a record does not fit, so no buffer is ever
/// grown: a turn's text grew from nothing by doubling before, and with
/// `-F` and 1 KiB puts the copies and page faults of that growth were a
/// tenth of the server's time. 256 KiB is a few hundred records, so a
/// write of a busy turn has a handful of iovecs.
pub const TEXT_CHUNK_BYTES: usize = 256 * 1024;

/// Chunks of written batches kept for the next ones (4 MiB): enough for a
/// turn of 50 connections with 32 puts of 1 KiB in flight each, and all an
/// idle log holds of them.
pub const TEXT_POOL_CHUNKS: usize = 16;

/// The directory may hold this many times the bytes of live records (plus
/// two segments) before compaction moves jobs.
pub const COMPACT_RATIO: u64 = 2;

/// Compaction moves at least this many bytes per turn while it is behind,
/// and at least twice what the turn wrote, so it outpaces the garbage
/// that writes make.
const COMPACT_BYTES_PER_TURN_MIN: u64 = 256 * 1024;

/// Spare segments are kept ready for at least this many bytes of records,
/// so a burst does not wait for a file to be made (and tiny `-s` values
/// still leave room for a turn's records).
const SPARE_BYTES_MIN: u64 = 4 * 1024 * 1024;

/// At least this many spare segments are kept ready.
const SPARES_MIN: usize = 1;

/// At most this many are made ahead, however small the segments: with a
/// tiny `-s`, a burst that needs more makes them as it goes.
const SPARES_MAX: usize = 16;

const _: () = assert!(1 <= SPARES_MIN && SPARES_MIN <= SPARES_MAX);

/// After a segment could not be made (a full disk), no new attempt is made
/// for this long, so a full disk does not cost a failed system call per
/// command.
const MAKE_RETRY_NS: u64 = 100_000_000;

/// When the log must reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPolicy {
    /// `-f0`: a batch is done once written and synced.
    Always,
    /// `-f MS`: a batch is done once written; a sync follows within MS.
    EveryMs(u64),
    /// `-F`: a batch is done once written; never synced.
    Never,
}

#[derive(Clone, Copy, Debug)]
pub struct LogConfig {
    pub shard: u32,
    pub shards: u32,
    /// `-s`: bytes of each segment file.
    pub segment_bytes: u64,
    pub sync: SyncPolicy,
}

/// An open segment file, as the file layer names it (a descriptor in the
/// real one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileRef(pub i32);

/// What the log needs of the file system; the real one works on a
/// directory, tests use one in memory that can be told to fail.
pub trait SegmentFiles: Send {
    /// Makes segment `id` with room for `bytes` (header included),
    /// preallocated and reading as zeros, and returns it open for writing.
    /// The header is written with the segment's first records.
    fn create(&mut self, id: SegmentId, bytes: u64) -> io::Result<FileRef>;
    /// The segment will not be written again.
    fn close(&mut self, id: SegmentId, file: FileRef);
    /// Removes a segment's file, closing it first if it is open (it is
    /// closed even when the removal fails).
    fn remove(&mut self, id: SegmentId, file: Option<FileRef>) -> io::Result<()>;
    /// Renames segment `old` (closing nothing: its file, if open, stays
    /// open) to `new`, a spare of the same size whose earlier bytes stay
    /// until they are written over, and returns it open for writing. On
    /// failure the old segment is left as it was, closed.
    fn recycle(&mut self, old: SegmentId, file: Option<FileRef>, new: SegmentId) -> io::Result<FileRef>;
    /// The log was opened and the server starts serving: files made from
    /// now on are made while commands wait.
    fn serving(&mut self) {}
}

/// Zero bytes written after the last record of every write: an all-zero
/// frame, so that records read back end there even in a reused file.
const END_MARK_BYTES: u64 = record::FRAME_BYTES as u64;

/// Bytes to write at one place in one file.
#[derive(Debug)]
pub struct Write {
    pub segment: SegmentId,
    pub file: FileRef,
    pub offset: u64,
    pub parts: Vec<Part>,
    /// Bytes of all parts.
    pub len: u64,
}

#[derive(Debug)]
pub enum Part {
    Text(Vec<u8>),
    Body(Body),
}

impl Part {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Part::Text(t) => t,
            Part::Body(b) => b.bytes(),
        }
    }
}

/// A turn's records, to be written in order.
#[derive(Debug)]
pub struct Batch {
    pub number: u64,
    pub writes: Vec<Write>,
    /// A segment file was made for this batch: for `-f0`, its directory
    /// entry must be synced too before the batch is durable.
    pub new_file: bool,
    /// Records in the batch.
    pub records: u64,
}

/// A segment of the log: on disk, holding records.
#[derive(Debug)]
struct Seg {
    id: SegmentId,
    /// Open while it may still be written; closed once it is not the
    /// current segment and its writes are done.
    file: Option<FileRef>,
    bytes: u64,
    /// Live jobs whose latest job record is here.
    live_jobs: u64,
    /// Ids of the job records written here, in order (some since moved or
    /// deleted): where compaction looks for the jobs to move.
    job_ids: Vec<u64>,
    /// The last batch that wrote to it.
    last_batch: u64,
    /// The filling batch when its last live job left it: it can be removed
    /// once that batch is durable.
    emptied_in: Option<u64>,
}

/// A made segment not yet written to.
#[derive(Debug)]
struct Spare {
    id: SegmentId,
    file: FileRef,
    bytes: u64,
}

/// Counters for `stats` and the operator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    pub oldest_seq: u64,
    pub current_seq: u64,
    pub records_written: u64,
    pub records_migrated: u64,
    pub segment_bytes: u64,
    pub disk_bytes: u64,
    pub live_bytes: u64,
    /// Segments holding records (the current one included).
    pub segments: u64,
    /// Segments made ahead and not used yet.
    pub spares: u64,
}

impl LogStats {
    /// Adds another shard's log to these figures, as `stats` shows the
    /// logs of several shards: counts and bytes summed, the oldest file
    /// the oldest of any, the current the newest, the file size the same.
    pub fn merge(&mut self, other: &LogStats) {
        self.oldest_seq = self.oldest_seq.min(other.oldest_seq);
        self.current_seq = self.current_seq.max(other.current_seq);
        self.records_written += other.records_written;
        self.records_migrated += other.records_migrated;
        self.segment_bytes = self.segment_bytes.max(other.segment_bytes);
        self.disk_bytes += other.disk_bytes;
        self.live_bytes += other.live_bytes;
        self.segments += other.segments;
        self.spares += other.spares;
    }
}

pub struct Log {
    config: LogConfig,
    files: Box<dyn SegmentFiles>,
    /// Oldest first; the last one is the current segment.
    segs: VecDeque<Seg>,
    spares: VecDeque<Spare>,
    /// Bytes used in the current segment (header included).
    used: u64,
    next_seq: u64,
    /// The next job id to hand out, for new segments' headers.
    next_id: u64,
    /// Bytes promised to records not written yet (the delete of every
    /// live job).
    reserved: u64,
    /// Bytes of the records that describe live jobs now.
    live_bytes: u64,
    /// Bytes of all segments on disk (spares included).
    disk_bytes: u64,
    /// The batch being filled, and its writes.
    filling: u64,
    writes: Vec<Write>,
    new_file: bool,
    written: u64,
    synced: u64,
    records_written: u64,
    records_migrated: u64,
    /// Bytes of records appended this turn, for the compaction pace.
    turn_bytes: u64,
    /// Records appended since the last batch was taken.
    filling_records: u64,
    /// Where compaction goes on in the oldest segment's id list.
    compact_cursor: usize,
    /// No segment is made before this time (after a failure).
    make_after: u64,
    /// The last failure to make a segment, for the operator.
    make_error: Option<String>,
    /// The time the shard last gave, for file headers.
    now: u64,
    /// Bytes appended to batches since the log was opened (headers,
    /// records and the zeros after each write), for tests that cut the log
    /// at a byte.
    appended: u64,
    /// The server is stopping: files stay open until they are synced,
    /// whatever the policy, for the final sync.
    stopping: bool,
    /// Empty text chunks for new records (see [`TEXT_CHUNK_BYTES`]).
    text_pool: Vec<Vec<u8>>,
}

impl Log {
    /// A log that goes on after what `recovered` read: its segments stay
    /// (compaction removes them in time) and writing starts in a new one.
    pub fn open(config: LogConfig, files: Box<dyn SegmentFiles>, recovered: &Recovered, now: u64) -> io::Result<Log> {
        let mut log = Log {
            config,
            files,
            segs: VecDeque::new(),
            spares: VecDeque::new(),
            used: 0,
            next_seq: 1,
            next_id: recovered.next_id,
            reserved: 0,
            live_bytes: 0,
            disk_bytes: 0,
            filling: 1,
            writes: Vec::new(),
            new_file: false,
            written: 0,
            synced: 0,
            records_written: 0,
            records_migrated: 0,
            turn_bytes: 0,
            filling_records: 0,
            compact_cursor: 0,
            make_after: 0,
            make_error: None,
            now,
            appended: 0,
            stopping: false,
            text_pool: Vec::new(),
        };
        for s in recovered.segments.iter().filter(|s| s.id.shard == config.shard) {
            log.next_seq = log.next_seq.max(s.id.seq + 1);
            // The whole file counts (it was preallocated), so that segments
            // left by earlier starts drive compaction like any other.
            log.disk_bytes += s.file_bytes;
            log.segs.push_back(Seg {
                id: s.id,
                file: None,
                bytes: s.file_bytes,
                live_jobs: 0,
                job_ids: s.job_ids.clone(),
                last_batch: 0,
                emptied_in: None,
            });
        }
        // Files left on disk unread keep their seqs.
        for id in recovered.refused.iter().filter(|id| id.shard == config.shard) {
            log.next_seq = log.next_seq.max(id.seq + 1);
        }
        for job in &recovered.jobs {
            if let Some(seg) = log.segs.iter_mut().find(|s| s.id == job.segment) {
                seg.live_jobs += 1;
            }
            log.live_bytes += super::recover::live_bytes(job);
            log.reserved += record::DELETE_RECORD_BYTES as u64;
        }
        // Segments of other shards were read too (the jobs in them now
        // belong here or elsewhere by their tube); they are this shard's
        // to remove only when there is one shard.
        log.start_segment(record::DELETE_RECORD_BYTES as u64)?;
        // Every recovered job can be deleted: room for its delete record
        // is reserved now, as a put reserves it, and a start that cannot
        // find it on the disk is refused (a delete must always be written).
        // Each round makes a bounded number of spares; many jobs in small
        // segments take several.
        while !log.room_for(0, 0) {
            if let Some(e) = &log.make_error {
                return Err(io::Error::other(format!(
                    "no room on the disk for the delete records of the {} jobs read back ({} bytes): {e}; \
                     free some space and start again",
                    recovered.jobs.len(),
                    log.reserved
                )));
            }
        }
        // The spares the first turns will want, made before serving (a
        // failure here is not fatal: the turns try again).
        while log.wants_spare(0) && log.make_spare(log.config.segment_bytes) {}
        log.make_after = 0;
        log.files.serving();
        Ok(log)
    }

    pub fn config(&self) -> LogConfig {
        self.config
    }

    /// The batch that records appended now will be written in.
    pub fn filling(&self) -> u64 {
        self.filling
    }

    /// The last batch that is durable under the sync policy (its replies
    /// may leave).
    pub fn durable(&self) -> u64 {
        match self.config.sync {
            SyncPolicy::Always => self.synced,
            SyncPolicy::EveryMs(_) | SyncPolicy::Never => self.written,
        }
    }

    pub fn records_written(&self) -> u64 {
        self.records_written
    }

    /// Records appended since the last batch was taken.
    pub fn filling_records(&self) -> u64 {
        self.filling_records
    }

    /// Whether records wait to be taken as a batch.
    pub fn has_records(&self) -> bool {
        !self.writes.is_empty()
    }

    /// Bytes appended to batches since the log was opened.
    pub fn appended_bytes(&self) -> u64 {
        self.appended
    }

    pub fn stats(&self) -> LogStats {
        LogStats {
            oldest_seq: self.segs.front().map_or(0, |s| s.id.seq),
            current_seq: self.segs.back().map_or(0, |s| s.id.seq),
            records_written: self.records_written,
            records_migrated: self.records_migrated,
            segment_bytes: self.config.segment_bytes,
            disk_bytes: self.disk_bytes,
            live_bytes: self.live_bytes,
            segments: self.segs.len() as u64,
            spares: self.spares.len() as u64,
        }
    }

    /// The last failure to make a segment, if making them fails now.
    pub fn make_error(&self) -> Option<&str> {
        self.make_error.as_deref()
    }

    /// The tag of the current segment, which job records are placed in
    /// (see [`Log::job`]); the engine keeps it per job.
    fn current(&self) -> SegmentId {
        self.segs.back().expect("a log always has a current segment").id
    }

    // ----- reservations ---------------------------------------------------

    /// Reserves room for a new job's record and its future delete.
    pub fn reserve_put(&mut self, tube_bytes: usize, body_bytes: usize) -> bool {
        let job = record::job_record_bytes(tube_bytes, body_bytes) as u64;
        let delete = record::DELETE_RECORD_BYTES as u64;
        if !self.room_for(job, delete) {
            return false;
        }
        self.reserved += delete;
        true
    }

    /// Whether a state record can be written now.
    pub fn reserve_state(&mut self) -> bool {
        self.room_for(record::STATE_RECORD_BYTES as u64, 0)
    }

    /// Whether a live job's record of `bytes` can be written again now (a
    /// move); its delete is reserved already.
    pub fn reserve_move(&mut self, bytes: u64) -> bool {
        self.room_for(bytes, 0)
    }

    /// Whether a record of `bytes` fits, leaving room for every reserved
    /// byte and `more`, making a segment if that is what it takes.
    fn room_for(&mut self, bytes: u64, more: u64) -> bool {
        // A reserved delete may find the end of a segment too short for it:
        // count one delete's worth of waste per segment it may land in.
        let waste = record::DELETE_RECORD_BYTES as u64;
        let usable = |s: &Spare| s.bytes - HEADER_BYTES as u64;
        // Each round adds a spare; with a tiny `-s`, a few may be needed.
        for _ in 0..=SPARES_MAX {
            let cur_free = self.segs.back().map_or(0, |s| s.bytes - self.used);
            let spare_free: u64 = self.spares.iter().map(usable).sum();
            let wasted = waste * (self.spares.len() as u64 + 1);
            let need = self.reserved + more + wasted;
            let after = if bytes <= cur_free {
                cur_free - bytes + spare_free
            } else if self.spares.front().is_some_and(|s| usable(s) >= bytes) {
                // Moving on to the next spare leaves the rest of the current
                // one unused.
                spare_free - bytes
            } else if bytes + HEADER_BYTES as u64 > self.config.segment_bytes {
                return self.make_oversize(bytes, need);
            } else {
                0
            };
            if after >= need {
                return true;
            }
            if !self.make_spare(self.config.segment_bytes) {
                return false;
            }
        }
        false
    }

    /// Makes a segment of its own for a record larger than a segment, with
    /// room after it for `need` more bytes. Spares are used in the order
    /// they were made, so that seqs follow the order of the records: the
    /// unused spares made before it are removed (a rare case, a record
    /// larger than `-s`; spares of the usual size are made again later).
    fn make_oversize(&mut self, bytes: u64, need: u64) -> bool {
        if !self.make_spare(bytes + HEADER_BYTES as u64 + need) {
            return false;
        }
        while self.spares.len() > 1 {
            let spare = self.spares.pop_front().expect("more than one");
            if let Err(e) = self.files.remove(spare.id, Some(spare.file)) {
                // The file stays as an unused spare, which the next start
                // removes.
                self.make_error = Some(format!("cannot remove unused log segment {}: {e}", spare.id.seq));
            }
            self.disk_bytes -= spare.bytes;
        }
        true
    }

    /// Makes one spare segment of `bytes`; false (and the error kept) if
    /// the file system refuses. Its header is written when it becomes the
    /// current segment, so that the header's next id covers every id
    /// handed out before any record went into it.
    fn make_spare(&mut self, bytes: u64) -> bool {
        if self.now < self.make_after {
            return false;
        }
        let id = SegmentId { shard: self.config.shard, seq: self.next_seq };
        match self.files.create(id, bytes) {
            Ok(file) => {
                self.next_seq += 1;
                self.disk_bytes += bytes;
                self.spares.push_back(Spare { id, file, bytes });
                self.make_error = None;
                true
            }
            Err(e) => {
                self.make_after = self.now.saturating_add(MAKE_RETRY_NS);
                self.make_error = Some(format!("cannot make log segment {}: {e}", id.seq));
                false
            }
        }
    }

    /// A new job id was handed out: no id below `next_id` is free.
    pub fn note_next_id(&mut self, next_id: u64) {
        self.next_id = next_id;
    }

    /// The engine has restored its jobs at start-up and hands out ids from
    /// `next_id` on. The current segment was started when the log was
    /// opened, before that id was known: an import from C beanstalkd opens
    /// the log empty, and C's next id can be above every job it brings (its
    /// last jobs were deleted), or there may be no job at all. Nothing but
    /// this segment's header would carry the id to the next start, so the
    /// header, still in the filling batch, says it too. Called before the
    /// first batch is taken.
    pub fn note_restored_next_id(&mut self, next_id: u64) {
        self.next_id = self.next_id.max(next_id);
        let current = self.current();
        let text = self
            .writes
            .iter_mut()
            .find(|w| w.segment == current && w.offset == 0)
            .and_then(|w| match w.parts.first_mut() {
                Some(Part::Text(text)) if text.len() >= HEADER_BYTES => Some(text),
                _ => None,
            })
            .expect("the current segment's header is still in the filling batch");
        let bytes: &[u8; HEADER_BYTES] = text[..HEADER_BYTES].try_into().expect("a header's bytes");
        let mut header = Header::decode(bytes).expect("the header this log encoded");
        header.next_id = self.next_id;
        text[..HEADER_BYTES].copy_from_slice(&header.encode());
    }

    /// Starts writing in a new segment (the first, or after the current one
    /// filled up), which must have room for `bytes`.
    fn start_segment(&mut self, bytes: u64) -> io::Result<()> {
        let fits = |s: &Spare| s.bytes - HEADER_BYTES as u64 >= bytes;
        if self.spares.is_empty() {
            // Only when the log is opened: later, reservations have made
            // sure a spare is there.
            let want = self.config.segment_bytes.max(bytes + HEADER_BYTES as u64);
            self.make_after = 0;
            if !self.make_spare(want) {
                return Err(io::Error::other(self.make_error.clone().unwrap_or_default()));
            }
        }
        // Spares are used in the order they were made, so that seqs follow
        // the order of the records; the reservation made sure the first one
        // fits (or made one that does and removed those before it).
        let spare = self.spares.pop_front().expect("a spare exists");
        assert!(fits(&spare), "the next spare is too small for a reserved record");
        self.activate(spare);
        Ok(())
    }

    /// Makes a spare the current segment, its header first in the batch.
    fn activate(&mut self, spare: Spare) {
        assert!(self.segs.back().is_none_or(|s| s.id.seq < spare.id.seq), "segments out of order");
        self.retire_current();
        self.segs.push_back(Seg {
            id: spare.id,
            file: Some(spare.file),
            bytes: spare.bytes,
            live_jobs: 0,
            job_ids: Vec::new(),
            last_batch: self.filling,
            emptied_in: None,
        });
        let header = Header {
            shard: self.config.shard,
            shards: self.config.shards,
            seq: spare.id.seq,
            next_id: self.next_id,
            created_at: self.now,
            salt: segment::salt_for(spare.id.seq),
        };
        self.end_last_write();
        self.writes.push(Write {
            segment: spare.id,
            file: spare.file,
            offset: 0,
            parts: vec![Part::Text(header.encode().to_vec())],
            len: HEADER_BYTES as u64,
        });
        self.used = HEADER_BYTES as u64;
        self.appended += HEADER_BYTES as u64;
        self.new_file = true;
    }

    /// The current segment stops being written: its file closes once its
    /// last batch is written.
    fn retire_current(&mut self) {
        let filling = self.filling;
        if let Some(seg) = self.segs.back_mut()
            && seg.live_jobs == 0
            && seg.emptied_in.is_none()
        {
            seg.emptied_in = Some(filling);
        }
    }

    // ----- records ------------------------------------------------------------

    /// Appends a record of `bytes` to the filling batch in the current
    /// segment, moving to the next segment when it does not fit, with room
    /// for `text` bytes of it in the write's open text part. The room was
    /// reserved, so this cannot fail.
    fn place(&mut self, bytes: u64, text: usize) -> &mut Write {
        let cur = self.segs.back().expect("a current segment");
        if self.used + bytes > cur.bytes {
            self.start_segment(bytes).expect("room for a reserved record");
        }
        let seg = self.segs.back_mut().expect("a current segment");
        seg.last_batch = self.filling;
        let (id, file) = (seg.id, seg.file.expect("the current segment is open"));
        let offset = self.used;
        self.used += bytes;
        self.appended += bytes;
        self.turn_bytes += bytes;
        self.records_written += 1;
        self.filling_records += 1;
        let extend = self.writes.last().is_some_and(|w| w.segment == id && w.offset + w.len == offset);
        if !extend {
            self.end_last_write();
            self.writes.push(Write { segment: id, file, offset, parts: Vec::new(), len: 0 });
        }
        let write = self.writes.last_mut().expect("pushed above");
        write.len += bytes;
        let open = matches!(write.parts.last(), Some(Part::Text(t)) if t.capacity() - t.len() >= text);
        if !open {
            let chunk = match self.text_pool.pop() {
                Some(chunk) if chunk.capacity() >= text => chunk,
                _ => Vec::with_capacity(text.max(TEXT_CHUNK_BYTES)),
            };
            write.parts.push(Part::Text(chunk));
        }
        write
    }

    /// Writes a job record (a put, or a move when `moved`); returns the
    /// segment it is in, which the engine keeps for the job.
    pub fn job(
        &mut self,
        fields: &StateFields,
        ttr_s: u32,
        created_at: u64,
        tube: &str,
        body: &Body,
        moved: bool,
    ) -> SegmentId {
        let bytes = record::job_record_bytes(tube.len(), body.len());
        let copied = body.len() <= BODY_COPY_BYTES_MAX;
        let write = self.place(bytes as u64, if copied { bytes } else { bytes - body.len() });
        let salt = segment::salt_for(write.segment.seq);
        let text = text_part(write);
        record::encode_job_head(text, salt, fields, ttr_s, created_at, tube, body.bytes());
        if copied {
            text.extend_from_slice(body.bytes());
        } else {
            // The next record opens a text part after it.
            write.parts.push(Part::Body(body.clone()));
        }
        let bytes = bytes as u64;
        let seg = self.segs.back_mut().expect("a current segment");
        seg.live_jobs += 1;
        seg.job_ids.push(fields.id);
        let id = seg.id;
        if moved {
            self.records_migrated += 1;
        } else {
            self.live_bytes += bytes;
        }
        id
    }

    /// Writes a state record; `first` when the job had none since its job
    /// record (it adds to the live bytes).
    pub fn state(&mut self, fields: &StateFields, first: bool) {
        let write = self.place(record::STATE_RECORD_BYTES as u64, record::STATE_RECORD_BYTES);
        let salt = segment::salt_for(write.segment.seq);
        record::encode_state(text_part(write), salt, fields);
        if first {
            self.live_bytes += record::STATE_RECORD_BYTES as u64;
        }
    }

    /// Writes a job's delete record, using its reservation. `live` is what
    /// [`Log::live_bytes_of`] said of the job, `segment` where its latest
    /// job record is.
    pub fn delete(&mut self, id: u64, segment: SegmentId, live: u64) {
        self.reserved -= record::DELETE_RECORD_BYTES as u64;
        let write = self.place(record::DELETE_RECORD_BYTES as u64, record::DELETE_RECORD_BYTES);
        let salt = segment::salt_for(write.segment.seq);
        record::encode_delete(text_part(write), salt, id);
        self.live_bytes -= live;
        self.leave(segment);
    }

    /// A job's latest job record is no longer in `segment` (it was moved or
    /// deleted).
    pub fn leave(&mut self, segment: SegmentId) {
        let filling = self.filling;
        let current = self.current();
        if let Some(seg) = self.seg_mut(segment) {
            seg.live_jobs -= 1;
            if seg.live_jobs == 0 && seg.id != current {
                seg.emptied_in = Some(filling);
            }
        }
    }

    /// A moved job's old job record and state record no longer count as
    /// live; its new job record does (see [`Log::job`] with `moved`).
    pub fn moved(&mut self, from: SegmentId, old_live: u64, new_live: u64) {
        self.live_bytes = self.live_bytes - old_live + new_live;
        self.leave(from);
    }

    /// The live bytes of a job with this tube and body: its job record, and
    /// a state record if it has one.
    pub fn live_bytes_of(tube_bytes: usize, body_bytes: usize, has_state: bool) -> u64 {
        (record::job_record_bytes(tube_bytes, body_bytes) + if has_state { record::STATE_RECORD_BYTES } else { 0 })
            as u64
    }

    fn seg_mut(&mut self, id: SegmentId) -> Option<&mut Seg> {
        // Segments are in seq order; most lookups hit near the back.
        let front = self.segs.front()?.id.seq;
        let i = id.seq.checked_sub(front)? as usize;
        let i =
            if self.segs.get(i).is_some_and(|s| s.id == id) { i } else { self.segs.iter().position(|s| s.id == id)? };
        self.segs.get_mut(i)
    }

    // ----- the turn --------------------------------------------------------

    /// The records appended since the last batch, as one batch; the next
    /// records go to the next one.
    pub fn take_batch(&mut self) -> Option<Batch> {
        if self.writes.is_empty() {
            return None;
        }
        self.end_last_write();
        let mut writes = std::mem::take(&mut self.writes);
        for w in &mut writes {
            w.parts.retain(|p| !p.bytes().is_empty());
        }
        let batch = Batch {
            number: self.filling,
            writes,
            new_file: std::mem::take(&mut self.new_file),
            records: std::mem::take(&mut self.filling_records),
        };
        self.filling += 1;
        self.turn_bytes = 0;
        Some(batch)
    }

    /// The last write of the filling batch gets its end mark: zeros after
    /// its records, as far as the file has room (a later write in that
    /// file starts on them). Called when a write into another place starts
    /// and when the batch is taken, so the bytes appended count the mark
    /// where it is written.
    fn end_last_write(&mut self) {
        let Some(w) = self.writes.last_mut() else { return };
        let room = self.segs.iter().rev().find(|s| s.id == w.segment).map_or(0, |s| s.bytes - (w.offset + w.len));
        let mark = room.min(END_MARK_BYTES);
        if mark > 0 {
            let text = text_part(w);
            text.resize(text.len() + mark as usize, 0);
            w.len += mark;
            self.appended += mark;
        }
    }

    /// Text chunks of a batch whose writes are done, for new records (at
    /// most [`TEXT_POOL_CHUNKS`] kept; chunks made larger for one big
    /// record are freed).
    pub fn recycle_text(&mut self, chunks: impl IntoIterator<Item = Vec<u8>>) {
        for mut chunk in chunks {
            if self.text_pool.len() >= TEXT_POOL_CHUNKS {
                return;
            }
            if chunk.capacity() == TEXT_CHUNK_BYTES {
                chunk.clear();
                self.text_pool.push(chunk);
            }
        }
    }

    /// Batches up to `number` are written.
    pub fn written(&mut self, number: u64) {
        self.written = self.written.max(number);
    }

    /// Everything written up to batch `number` is synced.
    pub fn synced(&mut self, number: u64) {
        self.synced = self.synced.max(number);
    }

    /// The server is stopping: everything written will be synced, so no
    /// file is closed or removed before it is (with `-F` too), and the
    /// files open now are returned for that sync.
    pub fn stopping(&mut self) -> Vec<FileRef> {
        self.stopping = true;
        self.segs.iter().filter_map(|s| s.file).collect()
    }

    /// Whether written records wait for a sync.
    pub fn needs_sync(&self) -> bool {
        self.config.sync != SyncPolicy::Never && self.synced < self.written
    }

    /// The last batch written.
    pub fn written_batch(&self) -> u64 {
        self.written
    }

    /// The turn's upkeep, after its batch was taken: files of segments no
    /// longer written are closed, emptied segments at the oldest end are
    /// removed once what emptied them is safe, and spares are made.
    /// Returns how many bytes compaction may move this turn (0 when it is
    /// not behind).
    pub fn maintain(&mut self, now: u64) -> u64 {
        self.now = now;
        let safe = match self.config.sync {
            // Nothing is synced before a stop: a file closes once written.
            // At a stop, the final sync needs every file it syncs open.
            SyncPolicy::Never if !self.stopping => self.written,
            _ => self.synced,
        };
        // A file closes once its last writes are safe (synced, where the
        // policy syncs): the sync that covers them needs it open.
        let current = self.current();
        for seg in self.segs.iter_mut().rev().skip(1) {
            if seg.file.is_none() {
                // Older ones were closed before it.
                break;
            }
            if seg.last_batch <= safe
                && let Some(file) = seg.file.take()
            {
                self.files.close(seg.id, file);
            }
        }
        let want = self.config.segment_bytes;
        while let Some(seg) = self.segs.front() {
            let removable = seg.id != current && seg.live_jobs == 0 && seg.emptied_in.is_none_or(|b| b <= safe);
            if !removable || seg.last_batch > safe {
                break;
            }
            let mut seg = self.segs.pop_front().expect("checked above");
            if seg.bytes == want && self.wants_spare(1) {
                let id = SegmentId { shard: self.config.shard, seq: self.next_seq };
                match self.files.recycle(seg.id, seg.file.take(), id) {
                    Ok(file) => {
                        self.next_seq += 1;
                        self.spares.push_back(Spare { id, file, bytes: seg.bytes });
                        self.compact_cursor = 0;
                        continue;
                    }
                    // Removed instead, below (a fresh spare is made later).
                    Err(e) => self.make_error = Some(format!("cannot reuse log segment {}: {e}", seg.id.seq)),
                }
            }
            match self.files.remove(seg.id, seg.file.take()) {
                Ok(()) => {
                    self.disk_bytes -= seg.bytes;
                    self.compact_cursor = 0;
                }
                Err(e) => {
                    // Keep it listed (its file closed) so the byte count
                    // stays true; try again next turn.
                    self.make_error = Some(format!("cannot remove log segment {}: {e}", seg.id.seq));
                    self.segs.push_front(seg);
                    break;
                }
            }
        }
        while self.wants_spare(0) && self.make_spare(want) {}
        self.compaction_budget()
    }

    /// Whether fewer spares are ready than the log keeps, plus `extra`
    /// segments. New files are made only to keep the usual number; an
    /// emptied segment is reused up to one more, because segments empty
    /// at other times than spares are used: a spare used in a turn is made
    /// again in that turn, before the segment whose reuse would replace it
    /// is safe to give up, and the one kept in hand covers the next.
    fn wants_spare(&self, extra: usize) -> bool {
        let have: u64 = self.spares.iter().map(|s| s.bytes).sum();
        let more = extra as u64 * self.config.segment_bytes;
        self.spares.len() < SPARES_MAX + extra
            && (self.spares.len() < SPARES_MIN + extra || have < SPARE_BYTES_MIN.saturating_add(more))
    }

    /// Bytes compaction should move now: none while the disk holds less
    /// than the bound allows, else at least [`COMPACT_BYTES_PER_TURN_MIN`]
    /// and twice what this turn wrote.
    fn compaction_budget(&self) -> u64 {
        let segment = self.config.segment_bytes;
        let spare_bytes: u64 = self.spares.iter().map(|s| s.bytes).sum();
        let on_disk = self.disk_bytes - spare_bytes;
        let allowed = COMPACT_RATIO * self.live_bytes + 2 * segment;
        if on_disk <= allowed || self.segs.len() < 3 {
            return 0;
        }
        COMPACT_BYTES_PER_TURN_MIN.max(2 * self.turn_bytes)
    }

    /// Ids compaction should look at next: the job records in the oldest
    /// segment from where it left off. The engine moves each one that is
    /// still live there and calls [`Log::compacted`] with how many ids it
    /// went through.
    pub fn compaction_candidates(&self) -> Option<(SegmentId, &[u64])> {
        let oldest = self.segs.front()?;
        if self.segs.len() < 3 || oldest.live_jobs == 0 {
            return None;
        }
        Some((oldest.id, &oldest.job_ids[self.compact_cursor.min(oldest.job_ids.len())..]))
    }

    pub fn compacted(&mut self, ids_seen: usize) {
        self.compact_cursor += ids_seen;
    }
}

/// The open text part at the end of a write.
fn text_part(write: &mut Write) -> &mut Vec<u8> {
    if !matches!(write.parts.last(), Some(Part::Text(_))) {
        write.parts.push(Part::Text(Vec::new()));
    }
    match write.parts.last_mut() {
        Some(Part::Text(t)) => t,
        _ => unreachable!("pushed above"),
    }
}
