//! Reading a log directory back into jobs at start-up.
//!
//! Segments are read in the order they were written (by seq within each
//! shard) and their records applied in order: a job record creates the job
//! or replaces everything about it (a compaction move writes one), a state
//! record changes a known job, a delete record removes one. State and
//! delete records for a job not seen are skipped: the job's earlier records
//! were in a segment that compaction already deleted, after moving the job
//! forward or because the job was gone.
//!
//! Damage never stops the start: a segment whose header is refused is left
//! alone (and named in a warning), a segment is read up to its first bad
//! record (the warning says where and how many bytes were cut), a missing
//! seq between two present ones is named, and everything that can be read
//! is. The jobs that come out are exactly those the readable records
//! describe; a job is never made up from bytes that failed a check.
//!
//! A file that is zeros to its end (or empty) holds nothing: it is a spare
//! made ahead and never used, or a segment whose header never reached the
//! disk. Either way there is nothing in it to read or to keep, and it is
//! removed; when segments of its shard after it were written, which only
//! happens once it was in use (spares are used in seq order), a warning
//! says that whatever was written in it is lost. A file whose header is
//! zeros but that holds other bytes is named in a warning and left as it
//! is, like a file whose header is refused: what is in it is not ours to
//! guess, nor to throw away.
//!
//! A file whose header names an earlier seq of its shard than its name is
//! a reused file (see `segment`) renamed for its next use, whose new header
//! never reached the disk: its records are those of the segment it was,
//! which the log had given up, and it is treated like a file of zeros.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::path::{Path, PathBuf};

use super::image::{Counters, ImageState, JobImage};
use super::record::{self, Record, StateFields};
use super::segment::{self, BadHeader, Damage, End};
use crate::engine::body::{Body, BodyBuilder};

/// A recovered job and where its records are.
#[derive(Debug)]
pub struct RecoveredJob {
    /// Everything but the body, which is in `body` (read straight into a
    /// job body: copying it again into the engine's memory cost a recovery
    /// a second copy of every byte). Imported jobs have it in the image.
    pub image: JobImage,
    pub body: Option<Body>,
    /// The segment holding the job's latest job record.
    pub segment: SegmentId,
    /// Whether a state record was written after that job record.
    pub has_state: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SegmentId {
    pub shard: u32,
    pub seq: u64,
}

/// A segment file that was read.
#[derive(Clone, Debug)]
pub struct SegmentFile {
    pub id: SegmentId,
    pub path: PathBuf,
    /// The shard count of the server that wrote it.
    pub shards: u32,
    /// The ids whose job records it holds, in the order written.
    pub job_ids: Vec<u64>,
    /// Bytes of the file: what it takes on the disk until it is removed
    /// (its preallocated size, not only the records in it).
    pub file_bytes: u64,
}

#[derive(Debug, Default)]
pub struct Recovered {
    /// Surviving jobs, in the order they were first seen.
    pub jobs: Vec<RecoveredJob>,
    /// Readable segments, in the order read.
    pub segments: Vec<SegmentFile>,
    /// Files that are zeros to their end (spares made ahead and never
    /// used, or segments whose header never reached the disk): they hold
    /// nothing and can be removed.
    pub unused: Vec<PathBuf>,
    /// Files named as segments that were not read and stay on disk (a
    /// refused header, or a zero header before other bytes): their seqs
    /// are taken, so new segments must be numbered above them.
    pub refused: Vec<SegmentId>,
    /// No job id at or above this was handed out by the servers that wrote
    /// the log.
    pub next_id: u64,
    /// Everything worth telling the operator, one line each.
    pub warnings: Vec<String>,
    /// Records read and applied.
    pub records: u64,
}

/// Reads every segment file in `dir`.
pub fn recover(dir: &Path) -> io::Result<Recovered> {
    let mut found: Vec<(SegmentId, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some((shard, seq)) = segment::parse_file_name(name) {
            found.push((SegmentId { shard, seq }, entry.path()));
        }
    }
    found.sort_by_key(|&(id, _)| (id.seq, id.shard));
    let mut replay = Replay::default();
    let mut out = Recovered { next_id: 1, ..Recovered::default() };
    let mut buf = Vec::new();
    let mut last_seq: HashMap<u32, u64> = HashMap::new();
    // Files that are zeros to their end, and the last seq read per shard:
    // whether one of them was in use is known once every file was seen.
    let mut zeroed: Vec<(SegmentId, PathBuf)> = Vec::new();
    let mut last_read: HashMap<u32, u64> = HashMap::new();
    for (id, path) in found {
        let name = path.display().to_string();
        if let Some(&prev) = last_seq.get(&id.shard)
            && id.seq > prev + 1
        {
            out.warnings.push(format!(
                "segments {} to {} of shard {} are missing: changes recorded in them are lost \
                 (jobs deleted there may come back)",
                prev + 1,
                id.seq - 1,
                id.shard
            ));
        }
        last_seq.insert(id.shard, id.seq);
        let mut job_ids = Vec::new();
        let scan = segment::read_with(&path, Some((id.shard, id.seq)), &mut buf, |_, record| {
            if let Record::Job { fields, .. } = &record {
                job_ids.push(fields.id);
            }
            replay.apply(id, record);
        })?;
        let scan = match scan {
            Ok(scan) => scan,
            // `buf` holds the whole file: a short file or a zero header is
            // nothing at all if every byte after it is zero too.
            Err(BadHeader::Zeros | BadHeader::Short) if buf.iter().all(|&b| b == 0) => {
                zeroed.push((id, path));
                continue;
            }
            Err(BadHeader::Reused(_)) => {
                zeroed.push((id, path));
                continue;
            }
            Err(BadHeader::Zeros) => {
                let at = buf.iter().position(|&b| b != 0).unwrap_or(0);
                out.warnings.push(format!(
                    "{name}: the header is all zeros, but the file holds other bytes from offset {at}: \
                     what was written in it is lost; the file is left as it is and not read"
                ));
                out.refused.push(id);
                continue;
            }
            Err(why) => {
                out.warnings.push(format!("{name}: {why}; the file is left as it is and not read"));
                out.refused.push(id);
                continue;
            }
        };
        last_read.insert(id.shard, id.seq);
        if scan.header.seq != id.seq || scan.header.shard != id.shard {
            out.warnings.push(format!(
                "{name}: its header says shard {} seq {}, unlike its name",
                scan.header.shard, scan.header.seq
            ));
        }
        out.next_id = out.next_id.max(scan.header.next_id);
        out.records += scan.records;
        if let End::Damaged { offset, cut, why } = scan.end {
            let what = match why {
                Damage::Torn => "a torn record",
                Damage::Invalid(_) => "a corrupt record",
            };
            out.warnings.push(format!(
                "{name}: {what} at offset {offset} ({why}); the log is cut there: {cut} bytes \
                 to the end of the file were not replayed"
            ));
        }
        let file_bytes = std::fs::metadata(&path)?.len();
        out.segments.push(SegmentFile { id, path, shards: scan.header.shards, job_ids, file_bytes });
    }
    for (id, path) in zeroed {
        if last_read.get(&id.shard).is_some_and(|&seq| seq > id.seq) {
            out.warnings.push(format!(
                "{}: it is zeros to its end, yet later segments of shard {} were written: its header \
                 never reached the disk, and the records written in it, if any, are lost; it holds \
                 nothing and is removed",
                path.display(),
                id.shard
            ));
        }
        out.unused.push(path);
    }
    if replay.out_of_memory {
        return Err(io::Error::new(io::ErrorKind::OutOfMemory, "not enough memory for the jobs in the log"));
    }
    out.next_id = out.next_id.max(replay.max_id + 1);
    out.jobs = replay.jobs.into_iter().flatten().collect();
    Ok(out)
}

/// The jobs described by the records applied so far.
#[derive(Default)]
struct Replay {
    jobs: Vec<Option<RecoveredJob>>,
    /// Job id → index in `jobs`. Ids come from the log, not from a client,
    /// so a plain multiplicative hash is enough (SipHash was a tenth of a
    /// million-job recovery).
    index: HashMap<u64, usize, BuildHasherDefault<IdHasher>>,
    max_id: u64,
    /// A body could not be allocated.
    out_of_memory: bool,
}

/// Hashes job ids for [`Replay::index`].
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        // The high half folded down, so the bucket bits depend on every
        // bit of the id.
        let x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = x ^ (x >> 32);
    }
}

impl Replay {
    fn apply(&mut self, segment: SegmentId, record: Record<'_>) {
        match record {
            Record::Job { fields, ttr_s, created_at, tube, body } => {
                self.max_id = self.max_id.max(fields.id);
                let Some(mut builder) = BodyBuilder::try_new(body.len()) else {
                    self.out_of_memory = true;
                    return;
                };
                builder.fill(body);
                let image = JobImage {
                    id: fields.id,
                    tube: tube.to_string(),
                    state: fields.state,
                    pri: fields.pri,
                    ttr_s,
                    delay_s: fields.delay_s,
                    created_at,
                    deadline: fields.deadline,
                    counters: fields.counters,
                    body: Vec::new(),
                };
                let job = RecoveredJob { image, body: Some(builder.finish()), segment, has_state: false };
                match self.index.get(&fields.id) {
                    Some(&i) => self.jobs[i] = Some(job),
                    None => {
                        self.index.insert(fields.id, self.jobs.len());
                        self.jobs.push(Some(job));
                    }
                }
            }
            Record::State(fields) => {
                self.max_id = self.max_id.max(fields.id);
                if let Some(job) = self.index.get(&fields.id).and_then(|&i| self.jobs[i].as_mut()) {
                    set_state(&mut job.image, &fields);
                    job.has_state = true;
                }
            }
            Record::Delete { id } => {
                self.max_id = self.max_id.max(id);
                if let Some(i) = self.index.remove(&id) {
                    self.jobs[i] = None;
                }
            }
        }
    }
}

fn set_state(image: &mut JobImage, f: &StateFields) {
    image.state = f.state;
    image.pri = f.pri;
    image.delay_s = f.delay_s;
    image.deadline = f.deadline;
    image.counters = f.counters;
}

/// The state fields of an image, for writing it again.
pub fn state_fields(image: &JobImage) -> StateFields {
    StateFields {
        id: image.id,
        state: image.state,
        pri: image.pri,
        delay_s: image.delay_s,
        deadline: image.deadline,
        counters: image.counters,
    }
}

impl RecoveredJob {
    /// The body's bytes, wherever they are.
    pub fn body_bytes(&self) -> &[u8] {
        match &self.body {
            Some(body) => body.bytes(),
            None => &self.image.body,
        }
    }

    /// The whole image, body included (for the export).
    pub fn into_image(self) -> JobImage {
        let mut image = self.image;
        if let Some(body) = self.body {
            image.body = body.bytes().to_vec();
        }
        image
    }
}

/// Bytes of the records that describe a recovered job now: its job record,
/// and a state record after it if there is one.
pub fn live_bytes(job: &RecoveredJob) -> u64 {
    let full = record::job_record_bytes(job.image.tube.len(), job.body_bytes().len());
    (full + if job.has_state { record::STATE_RECORD_BYTES } else { 0 }) as u64
}

/// An image with every field zero but the id, tube and body: for tests.
#[doc(hidden)]
pub fn plain_image(id: u64, tube: &str, body: &[u8]) -> JobImage {
    JobImage {
        id,
        tube: tube.to_string(),
        state: ImageState::Ready,
        pri: 0,
        ttr_s: 1,
        delay_s: 0,
        created_at: 0,
        deadline: 0,
        counters: Counters::default(),
        body: body.to_vec(),
    }
}
