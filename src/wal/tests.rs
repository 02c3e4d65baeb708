//! Tests of the log's placement, space and removal rules, on files kept in
//! memory (which can be told to fail), written out to a directory and read
//! back with [`recover`].

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use super::image::{Counters, ImageState};
use super::log::{Batch, FileRef, Log, LogConfig, SegmentFiles, SyncPolicy};
use super::record::{self, StateFields};
use super::recover::{Recovered, SegmentId, recover};
use super::segment;
use crate::engine::body::Body;

/// What happened to the files, in order, so that the disk as it was at
/// any byte of the writes can be rebuilt (a crash at that byte).
#[derive(Clone, Debug)]
pub enum DiskEvent {
    Create(SegmentId, u64),
    Write(SegmentId, u64, Vec<u8>),
    Remove(SegmentId),
    /// Renamed from the first to the second, its bytes kept.
    Recycle(SegmentId, SegmentId),
}

/// Segment files in memory.
#[derive(Default)]
pub struct Disk {
    pub files: HashMap<SegmentId, Vec<u8>>,
    pub journal: Vec<DiskEvent>,
    /// Creating a file fails while this is set (a full disk).
    pub full: bool,
    /// When set, this many more files can be made, then the disk is full.
    pub creates_left: Option<usize>,
    next_fd: i32,
    pub fds: HashMap<i32, SegmentId>,
}

#[derive(Clone, Default)]
pub struct MemFiles(pub Arc<Mutex<Disk>>);

impl SegmentFiles for MemFiles {
    fn create(&mut self, id: SegmentId, bytes: u64) -> io::Result<FileRef> {
        let mut d = self.0.lock().unwrap();
        if d.full || d.creates_left == Some(0) {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        if let Some(left) = &mut d.creates_left {
            *left -= 1;
        }
        assert!(!d.files.contains_key(&id), "segment {id:?} made twice");
        d.files.insert(id, vec![0; bytes as usize]);
        d.journal.push(DiskEvent::Create(id, bytes));
        d.next_fd += 1;
        let fd = d.next_fd;
        d.fds.insert(fd, id);
        Ok(FileRef(fd))
    }

    fn close(&mut self, _id: SegmentId, file: FileRef) {
        assert!(self.0.lock().unwrap().fds.remove(&file.0).is_some(), "closing a file twice");
    }

    fn recycle(&mut self, old: SegmentId, file: Option<FileRef>, new: SegmentId) -> io::Result<FileRef> {
        let mut d = self.0.lock().unwrap();
        if let Some(file) = file {
            d.fds.remove(&file.0);
        }
        assert!(!d.files.contains_key(&new), "segment {new:?} made twice");
        // The bytes stay as they were, earlier records and all.
        let bytes = d.files.remove(&old).expect("recycling a segment that is not there");
        d.files.insert(new, bytes);
        d.journal.push(DiskEvent::Recycle(old, new));
        d.next_fd += 1;
        let fd = d.next_fd;
        d.fds.insert(fd, new);
        Ok(FileRef(fd))
    }

    fn remove(&mut self, id: SegmentId, file: Option<FileRef>) -> io::Result<()> {
        let mut d = self.0.lock().unwrap();
        if let Some(file) = file {
            d.fds.remove(&file.0);
        }
        assert!(d.files.remove(&id).is_some(), "removing a segment that is not there");
        d.journal.push(DiskEvent::Remove(id));
        Ok(())
    }
}

impl MemFiles {
    /// Carries out a batch's writes on the files in memory.
    pub fn apply(&self, batch: &Batch) {
        let mut d = self.0.lock().unwrap();
        for w in &batch.writes {
            let id = d.fds[&w.file.0];
            assert_eq!(id, w.segment);
            let file = d.files.get_mut(&id).expect("written file exists");
            let mut at = w.offset as usize;
            let mut all = Vec::new();
            for p in &w.parts {
                let bytes = p.bytes();
                assert!(at + bytes.len() <= file.len(), "a write past the end of a preallocated file");
                file[at..at + bytes.len()].copy_from_slice(bytes);
                at += bytes.len();
                all.extend_from_slice(bytes);
            }
            assert_eq!(at - w.offset as usize, w.len as usize);
            d.journal.push(DiskEvent::Write(id, w.offset, all));
        }
    }

    /// The files as they were when `cut` bytes of writes had reached them
    /// (the write that byte falls in only partly), as after a crash then.
    pub fn at_cut(&self, cut: u64) -> HashMap<SegmentId, Vec<u8>> {
        let mut files: HashMap<SegmentId, Vec<u8>> = HashMap::new();
        let mut left = cut;
        for event in &self.0.lock().unwrap().journal {
            match event {
                DiskEvent::Create(id, bytes) => {
                    files.insert(*id, vec![0; *bytes as usize]);
                }
                DiskEvent::Remove(id) => {
                    files.remove(id);
                }
                DiskEvent::Recycle(old, new) => {
                    let bytes = files.remove(old).expect("recycled file exists");
                    files.insert(*new, bytes);
                }
                DiskEvent::Write(id, offset, bytes) => {
                    let n = (bytes.len() as u64).min(left) as usize;
                    let file = files.get_mut(id).expect("written file exists");
                    file[*offset as usize..*offset as usize + n].copy_from_slice(&bytes[..n]);
                    left -= n as u64;
                    if left == 0 {
                        break;
                    }
                }
            }
        }
        files
    }

    /// Writes the files out to a fresh directory and reads it back.
    pub fn recover(&self) -> Recovered {
        recover_files(&self.0.lock().unwrap().files)
    }
}

/// Whether a file holds nothing recovery reads: zeros to its end (a spare
/// made ahead), or a reused file whose header still names the segment it
/// was (a spare made from an emptied segment).
pub fn holds_nothing(id: SegmentId, bytes: &[u8]) -> bool {
    if bytes.iter().all(|&b| b == 0) {
        return true;
    }
    let head: &[u8; segment::HEADER_BYTES] = bytes[..segment::HEADER_BYTES].try_into().unwrap();
    segment::Header::decode(head).is_ok_and(|h| h.shard == id.shard && h.seq < id.seq)
}

/// Writes files out to a fresh directory and reads it back.
pub fn recover_files(files: &HashMap<SegmentId, Vec<u8>>) -> Recovered {
    {
        let dir = temp_dir();
        for (id, bytes) in files {
            std::fs::write(dir.join(segment::file_name(id.shard, id.seq)), bytes).unwrap();
        }
        let recovered = recover(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        recovered
    }
}

pub fn temp_dir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let dir =
        std::env::temp_dir().join(format!("rb-wal-test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config(segment_bytes: u64) -> LogConfig {
    LogConfig { shard: 0, shards: 1, segment_bytes, sync: SyncPolicy::Always }
}

fn fields(id: u64, state: ImageState) -> StateFields {
    StateFields { id, state, pri: 10, delay_s: 0, deadline: 0, counters: Counters::default() }
}

/// A stand-in for the engine: puts, state changes and deletes against a
/// log, remembering where each live job's job record is.
struct Jobs {
    log: Log,
    files: MemFiles,
    live: HashMap<u64, (SegmentId, Body, bool)>,
    next_id: u64,
}

impl Jobs {
    fn new(segment_bytes: u64) -> Jobs {
        Jobs::with(config(segment_bytes))
    }

    fn with(config: LogConfig) -> Jobs {
        let files = MemFiles::default();
        let log = Log::open(config, Box::new(files.clone()), &Recovered::default(), 1).unwrap();
        Jobs { log, files, live: HashMap::new(), next_id: 1 }
    }

    /// The batch written and not synced, then upkeep.
    fn write_only(&mut self, now: u64) {
        if let Some(batch) = self.log.take_batch() {
            self.files.apply(&batch);
            self.log.written(batch.number);
        }
        self.log.maintain(now);
    }

    /// Whether the log holds `file` open.
    fn is_open(&self, file: FileRef) -> bool {
        self.files.0.lock().unwrap().fds.contains_key(&file.0)
    }

    /// The next start on the files as they are now (the process stopped
    /// after its last turn): what recovery reads of them, the files that
    /// hold nothing removed (as `open` does), and a new log after them.
    fn restart(&mut self, now: u64) -> io::Result<()> {
        let recovered = self.files.recover();
        {
            let mut d = self.files.0.lock().unwrap();
            d.fds.clear();
            let unused: Vec<SegmentId> =
                d.files.iter().filter(|(id, bytes)| holds_nothing(**id, bytes)).map(|(&id, _)| id).collect();
            assert_eq!(unused.len(), recovered.unused.len(), "the files recovery found to hold nothing");
            for id in unused {
                d.files.remove(&id);
                d.journal.push(DiskEvent::Remove(id));
            }
        }
        self.log = Log::open(self.log.config(), Box::new(self.files.clone()), &recovered, now)?;
        self.live = recovered
            .jobs
            .iter()
            .map(|j| (j.image.id, (j.segment, Body::from_slice(j.body_bytes()), j.has_state)))
            .collect();
        self.next_id = recovered.next_id;
        Ok(())
    }

    /// Bytes of the files that hold a header (the spares made ahead left
    /// out), as they are in memory, whatever the log believes.
    fn segment_file_bytes(&self) -> u64 {
        let d = self.files.0.lock().unwrap();
        d.files.iter().filter(|(id, b)| !holds_nothing(**id, b)).map(|(_, b)| b.len() as u64).sum()
    }

    fn put(&mut self, body: &[u8]) -> Option<u64> {
        if !self.log.reserve_put(7, body.len()) {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.log.note_next_id(self.next_id);
        let body = Body::from_slice(body);
        let seg = self.log.job(&fields(id, ImageState::Ready), 60, 5, "default", &body, false);
        self.live.insert(id, (seg, body, false));
        Some(id)
    }

    fn bury(&mut self, id: u64) -> bool {
        if !self.log.reserve_state() {
            return false;
        }
        let (_, _, has_state) = self.live.get_mut(&id).unwrap();
        self.log.state(&fields(id, ImageState::Buried), !*has_state);
        *has_state = true;
        true
    }

    fn delete(&mut self, id: u64) {
        let (seg, body, has_state) = self.live.remove(&id).unwrap();
        self.log.delete(id, seg, Log::live_bytes_of(7, body.len(), has_state));
    }

    /// Moves what compaction asks for, as the engine does.
    fn compact(&mut self, mut budget: u64) {
        while budget > 0 {
            let Some((seg, ids)) = self.log.compaction_candidates() else { return };
            let ids: Vec<u64> = ids.to_vec();
            if ids.is_empty() {
                return;
            }
            let mut seen = 0;
            for id in ids {
                seen += 1;
                let Some((at, body, has_state)) = self.live.get(&id).cloned() else { continue };
                if at != seg {
                    continue;
                }
                let bytes = record::job_record_bytes(7, body.len()) as u64;
                if !self.log.reserve_move(bytes) {
                    break;
                }
                let state = if has_state { ImageState::Buried } else { ImageState::Ready };
                let new = self.log.job(&fields(id, state), 60, 5, "default", &body, true);
                self.log.moved(
                    at,
                    Log::live_bytes_of(7, body.len(), has_state),
                    Log::live_bytes_of(7, body.len(), false),
                );
                self.live.insert(id, (new, body, false));
                budget = budget.saturating_sub(bytes);
                if budget == 0 {
                    break;
                }
            }
            self.log.compacted(seen);
        }
    }

    /// One loop turn: the batch written and synced, then upkeep.
    fn turn(&mut self, now: u64) {
        if let Some(batch) = self.log.take_batch() {
            self.files.apply(&batch);
            self.log.written(batch.number);
            self.log.synced(batch.number);
        }
        let budget = self.log.maintain(now);
        self.compact(budget);
    }

    fn check_recovers(&self) {
        let r = self.files.recover();
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        let mut got: Vec<u64> = r.jobs.iter().map(|j| j.image.id).collect();
        let mut want: Vec<u64> = self.live.keys().copied().collect();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want);
        for j in &r.jobs {
            assert_eq!(j.body_bytes(), self.live[&j.image.id].1.bytes());
        }
        assert!(r.next_id >= self.next_id);
    }
}

#[test]
fn records_reach_the_files_and_read_back() {
    let mut jobs = Jobs::new(1 << 20);
    let a = jobs.put(b"first").unwrap();
    let big = vec![7u8; 5000];
    let b = jobs.put(&big).unwrap();
    let c = jobs.put(b"third").unwrap();
    jobs.bury(b);
    jobs.delete(a);
    jobs.turn(2);
    jobs.check_recovers();
    let r = jobs.files.recover();
    let b_job = r.jobs.iter().find(|j| j.image.id == b).unwrap();
    assert_eq!(b_job.image.state, ImageState::Buried);
    assert!(b_job.has_state);
    assert!(r.jobs.iter().any(|j| j.image.id == c));
    assert_eq!(jobs.log.stats().records_written, 5);
}

#[test]
fn a_turn_larger_than_a_text_chunk_is_written_in_chunks_that_never_grow_and_are_used_again() {
    use super::log::{Part, TEXT_CHUNK_BYTES};
    let mut jobs = Jobs::new(64 << 20);
    // Bodies copied into the text (up to 1 KiB) and one written from the
    // job's memory, past three chunks of text in one turn.
    let bodies: Vec<Vec<u8>> =
        (0..1000u32).map(|i| vec![(i % 251) as u8; if i == 500 { 5000 } else { 1000 }]).collect();
    let turn = |jobs: &mut Jobs| -> Vec<*const u8> {
        for body in &bodies {
            jobs.put(body).unwrap();
        }
        let mut batch = jobs.log.take_batch().unwrap();
        let mut chunks = Vec::new();
        for w in &batch.writes {
            for part in &w.parts {
                if let Part::Text(t) = part {
                    assert!(t.capacity() == TEXT_CHUNK_BYTES || t.len() <= 64, "a text part grew: {}", t.capacity());
                    chunks.push(t.as_ptr());
                }
            }
        }
        jobs.files.apply(&batch);
        jobs.log.written(batch.number);
        jobs.log.synced(batch.number);
        let texts: Vec<Vec<u8>> = batch
            .writes
            .iter_mut()
            .flat_map(|w| w.parts.drain(..))
            .filter_map(|p| if let Part::Text(t) = p { Some(t) } else { None })
            .collect();
        jobs.log.recycle_text(texts);
        chunks
    };
    let first = turn(&mut jobs);
    assert!(first.len() >= 4, "{} text parts", first.len());
    let second = turn(&mut jobs);
    let reused = second.iter().filter(|p| first.contains(p)).count();
    assert!(reused >= 3, "only {reused} chunks used again");
    jobs.check_recovers();
}

#[test]
fn tiny_segments_keep_records_whole_and_go_from_the_oldest_end() {
    // Room for two or three records per file: records land in many files,
    // never across two.
    let mut jobs = Jobs::new(400);
    let mut ids = Vec::new();
    for i in 0..50u8 {
        ids.push(jobs.put(&[i; 40]).unwrap());
        jobs.turn(u64::from(i) + 2);
    }
    jobs.check_recovers();
    let before = jobs.log.stats().segments;
    // Delete all but the first: every segment but the first's is emptied,
    // and the first still pins the rest until compaction moves it.
    for &id in &ids[1..] {
        jobs.delete(id);
        jobs.turn(100);
    }
    for t in 0..20 {
        jobs.turn(200 + t);
    }
    jobs.check_recovers();
    let after = jobs.log.stats().segments;
    assert!(after <= 4, "segments {before} -> {after}");
    assert!(jobs.log.stats().records_migrated >= 1);
}

#[test]
fn a_full_disk_refuses_puts_but_never_deletes() {
    let mut jobs = Jobs::new(300);
    let mut ids = Vec::new();
    jobs.files.0.lock().unwrap().full = true;
    // What the current and spare segments hold still takes puts...
    while let Some(id) = jobs.put(&[1; 30]) {
        ids.push(id);
        assert!(ids.len() < 1000, "puts never refused on a full disk");
    }
    assert!(jobs.log.make_error().is_some());
    // ...and every job taken can still be deleted.
    jobs.turn(2);
    for &id in &ids {
        jobs.delete(id);
    }
    jobs.turn(3);
    jobs.check_recovers();
    // Space comes back: puts work again once a file can be made (after the
    // retry pause).
    jobs.files.0.lock().unwrap().full = false;
    jobs.turn(2_000_000_000);
    for _ in 0..20 {
        jobs.put(&[2; 30]).expect("a put after space came back");
        jobs.turn(2_000_000_001);
    }
    jobs.check_recovers();
}

#[test]
fn a_record_larger_than_a_segment_gets_a_segment_of_its_own() {
    let mut jobs = Jobs::new(200);
    let big = vec![3u8; 10_000];
    let id = jobs.put(&big).unwrap();
    jobs.put(b"small").unwrap();
    jobs.turn(2);
    jobs.check_recovers();
    jobs.delete(id);
    jobs.turn(3);
    jobs.check_recovers();
}

/// Bytes of the segments that hold records (spares made ahead excluded).
fn used_disk(jobs: &Jobs) -> u64 {
    let s = jobs.log.stats();
    s.disk_bytes - s.spares * s.segment_bytes
}

#[test]
fn old_jobs_and_repeated_state_changes_never_pin_old_segments() {
    // A few long-lived jobs (buried, say) while others come and go, and one
    // job whose state changes over and over (a release with a delay, again
    // and again): beanstalkd keeps every segment since the oldest live job
    // (its issues #43 and #622). The directory must stay within the bound.
    let segment = 4096;
    let mut jobs = Jobs::new(segment);
    let old: Vec<u64> = (0..5).map(|_| jobs.put(&[9; 200]).unwrap()).collect();
    for &id in &old {
        jobs.bury(id);
    }
    let flapper = jobs.put(b"again and again").unwrap();
    let mut worst = 0u64;
    for round in 0..3000u64 {
        let id = jobs.put(&[1; 100]).unwrap();
        jobs.bury(flapper);
        jobs.delete(id);
        jobs.turn(round + 2);
        let live = jobs.log.stats().live_bytes;
        let bound = super::log::COMPACT_RATIO * live + 3 * segment;
        worst = worst.max(used_disk(&jobs));
        assert!(used_disk(&jobs) <= bound, "round {round}: {} bytes on disk, bound {bound}", used_disk(&jobs));
    }
    assert!(jobs.log.stats().records_migrated > 0);
    assert!(worst <= 6 * segment, "worst {worst}");
    jobs.check_recovers();
}

#[test]
fn a_segment_read_back_stays_until_the_new_segments_header_is_safe() {
    // Every job deleted: what keeps their ids from being handed out again
    // is then the next id in the header of the segment the next start
    // opens; until that is safe, the last old segment must stay.
    let mut jobs = Jobs::new(4096);
    for _ in 0..5 {
        let id = jobs.put(b"gone").unwrap();
        jobs.delete(id);
    }
    jobs.turn(2);
    let recovered = jobs.files.recover();
    assert!(recovered.jobs.is_empty());
    assert_eq!(recovered.next_id, 6);
    let old: Vec<SegmentId> = recovered.segments.iter().map(|s| s.id).collect();
    // The next start, on the same segments (spares made ahead are removed
    // before the log opens).
    let files = MemFiles::default();
    for id in &old {
        let bytes = jobs.files.0.lock().unwrap().files[id].clone();
        files.0.lock().unwrap().files.insert(*id, bytes);
    }
    let mut log = Log::open(config(4096), Box::new(files.clone()), &recovered, 3).unwrap();
    let still_there = |files: &MemFiles| old.iter().all(|id| files.0.lock().unwrap().files.contains_key(id));
    log.maintain(3);
    let batch = log.take_batch().expect("the new segment's header");
    log.maintain(4);
    assert!(still_there(&files), "removed before the new header was written");
    files.apply(&batch);
    log.written(batch.number);
    log.maintain(5);
    assert!(still_there(&files), "removed before the new header was synced");
    log.synced(batch.number);
    log.maintain(6);
    assert!(!still_there(&files), "an emptied segment stays after the new header is safe");
    assert_eq!(files.recover().next_id, 6);
}

#[test]
fn segments_left_by_earlier_starts_count_whole_and_are_compacted_away() {
    // Every start writes in a new segment and keeps the old ones, which a
    // buried job pins. They take their whole preallocated size on the disk,
    // and must count so, or compaction never sees them and each restart
    // leaves one more segment behind for good.
    let segment = 4096;
    let mut jobs = Jobs::new(segment);
    let pinned = jobs.put(&[5; 100]).unwrap();
    jobs.bury(pinned);
    jobs.turn(2);
    for round in 0..20u64 {
        let now = 100 * (round + 1);
        jobs.restart(now).unwrap();
        let all_files: u64 = jobs.files.0.lock().unwrap().files.values().map(|b| b.len() as u64).sum();
        assert_eq!(jobs.log.stats().disk_bytes, all_files, "round {round}: the bytes of the files on disk");
        for t in 1..4 {
            jobs.turn(now + t);
        }
        let live = jobs.log.stats().live_bytes;
        let bound = super::log::COMPACT_RATIO * live + 3 * segment;
        let on_disk = jobs.segment_file_bytes();
        assert!(on_disk <= bound, "round {round}: {on_disk} bytes of segments, bound {bound}");
    }
    assert!(jobs.log.stats().records_migrated > 0, "the job was never moved");
    jobs.check_recovers();
}

#[test]
fn a_start_needs_room_for_the_delete_of_every_job_it_reads_back() {
    // A thousand small jobs: their deletes take 17,000 bytes, more than the
    // one segment the full disk lets the start make.
    let segment = 4096;
    let mut jobs = Jobs::new(segment);
    for _ in 0..1000 {
        jobs.put(b"x").unwrap();
    }
    jobs.turn(2);
    jobs.files.0.lock().unwrap().creates_left = Some(1);
    let Err(e) = jobs.restart(10) else { panic!("a start without room for its deletes") };
    let message = e.to_string();
    assert!(
        message.starts_with(
            "no room on the disk for the delete records of the 1000 jobs read back (17000 bytes): \
             cannot make log segment "
        ),
        "{message}"
    );
    assert!(message.ends_with("; free some space and start again"), "{message}");
    // With room, the start reserves it all (the segment the refused start
    // made holds nothing and is removed): then the disk fills, and every
    // job read back can still be deleted.
    jobs.files.0.lock().unwrap().creates_left = None;
    jobs.restart(20).unwrap();
    jobs.files.0.lock().unwrap().full = true;
    let ids: Vec<u64> = jobs.live.keys().copied().collect();
    assert_eq!(ids.len(), 1000);
    for id in ids {
        jobs.delete(id);
    }
    jobs.turn(30);
    jobs.check_recovers();
    assert!(jobs.files.recover().jobs.is_empty());
}

#[test]
fn with_f_never_files_close_once_written_but_a_stop_keeps_them_for_its_sync() {
    // `-F`: nothing is synced before the stop, so a segment's file closes
    // as soon as its writes are done. At the stop, the files still open are
    // synced, and none of them may close before that sync is done (its
    // number could name another file by then).
    let mut jobs = Jobs::with(LogConfig { sync: SyncPolicy::Never, ..config(400) });
    for _ in 0..20 {
        jobs.put(&[1; 100]).unwrap();
    }
    jobs.write_only(2);
    let s = jobs.log.stats();
    assert!(s.segments >= 5, "{s:?}");
    let open_now = jobs.log.stopping();
    assert_eq!(open_now.len(), 1, "only the current segment stays open once written: {open_now:?}");
    jobs.log.synced(0);
    // More records after the stop began fill more segments: none closes
    // before it is synced.
    for _ in 0..20 {
        jobs.put(&[2; 100]).unwrap();
    }
    let before = jobs.files.0.lock().unwrap().fds.clone();
    jobs.write_only(3);
    for (fd, id) in &before {
        assert!(jobs.is_open(FileRef(*fd)), "segment {id:?} closed before the final sync");
    }
    assert!(open_now.iter().all(|f| jobs.is_open(*f)));
    let written = jobs.log.written_batch();
    jobs.log.synced(written);
    jobs.log.maintain(4);
    assert!(!jobs.is_open(open_now[0]), "a synced segment no longer written stays open");
    jobs.check_recovers();
}

/// A log of a few segments of 4096 bytes: the files, and the live jobs.
fn a_few_segments() -> (HashMap<SegmentId, Vec<u8>>, Vec<u64>) {
    let mut jobs = Jobs::new(4096);
    for i in 0..60u64 {
        jobs.put(&[i as u8; 150]).unwrap();
        jobs.turn(i + 2);
    }
    let files = jobs.files.0.lock().unwrap().files.clone();
    let mut live: Vec<u64> = jobs.live.keys().copied().collect();
    live.sort_unstable();
    (files, live)
}

/// The seqs of the files that hold records, in order.
fn used_seqs(files: &HashMap<SegmentId, Vec<u8>>) -> Vec<u64> {
    let mut seqs: Vec<u64> = files.iter().filter(|(_, b)| b.iter().any(|&x| x != 0)).map(|(id, _)| id.seq).collect();
    seqs.sort_unstable();
    seqs
}

/// Recovery of `files` in a directory: what it read, and the names of the
/// files it found to hold nothing.
fn recover_naming_unused(files: &HashMap<SegmentId, Vec<u8>>) -> (Recovered, Vec<String>) {
    let dir = temp_dir();
    for (id, bytes) in files {
        std::fs::write(dir.join(segment::file_name(id.shard, id.seq)), bytes).unwrap();
    }
    let recovered = recover(&dir).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let mut unused: Vec<String> =
        recovered.unused.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    unused.sort();
    (recovered, unused)
}

fn ids(recovered: &Recovered) -> Vec<u64> {
    let mut ids: Vec<u64> = recovered.jobs.iter().map(|j| j.image.id).collect();
    ids.sort_unstable();
    ids
}

#[test]
fn files_of_zeros_hold_nothing_and_are_removed() {
    let (mut files, live) = a_few_segments();
    let seqs = used_seqs(&files);
    assert!(seqs.len() >= 3, "{seqs:?}");
    let spares: Vec<u64> = files.keys().map(|id| id.seq).filter(|s| !seqs.contains(s)).collect();
    assert!(!spares.is_empty() && spares.iter().all(|s| s > seqs.last().unwrap()), "spares {spares:?}");
    // After the last segment: spares made ahead, an empty file (a crash
    // between its creation and its preallocation) and a short one. Nothing
    // to say about them.
    let last = files.keys().map(|id| id.seq).max().unwrap();
    files.insert(SegmentId { shard: 0, seq: last + 1 }, Vec::new());
    files.insert(SegmentId { shard: 0, seq: last + 2 }, vec![0; 10]);
    let (r, unused) = recover_naming_unused(&files);
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert_eq!(ids(&r), live);
    assert_eq!(unused.len(), spares.len() + 2, "{unused:?}");
    assert!(r.refused.is_empty());
    // A segment in the middle that reads as zeros was in use, since later
    // ones were written: it is said, and removed all the same.
    let middle = SegmentId { shard: 0, seq: seqs[1] };
    let bytes = files[&middle].len();
    files.insert(middle, vec![0; bytes]);
    let (r, unused) = recover_naming_unused(&files);
    assert!(unused.contains(&segment::file_name(0, middle.seq)), "{unused:?}");
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    assert!(
        r.warnings[0].ends_with(&format!(
            "{}: it is zeros to its end, yet later segments of shard 0 were written: its header never \
             reached the disk, and the records written in it, if any, are lost; it holds nothing and is removed",
            segment::file_name(0, middle.seq)
        )),
        "{:?}",
        r.warnings
    );
    assert!(ids(&r).len() < live.len() && ids(&r).iter().all(|id| live.contains(id)));
}

#[test]
fn emptied_segments_are_reused_and_their_old_records_never_read_back() {
    // Jobs of one size put and deleted for a long time: records land at
    // the same offsets in every use of a file, the case where an old
    // record would read as valid in the new segment if the checksums were
    // not salted per segment.
    let mut jobs = Jobs::new(4096);
    let mut snaps: Vec<(u64, Vec<u64>)> = Vec::new();
    let mut queue = std::collections::VecDeque::new();
    for round in 0..400u64 {
        queue.push_back(jobs.put(&[round as u8; 150]).unwrap());
        if queue.len() > 12 {
            jobs.delete(queue.pop_front().unwrap());
        }
        jobs.turn(round + 2);
        let mut live: Vec<u64> = jobs.live.keys().copied().collect();
        live.sort_unstable();
        snaps.push((jobs.log.appended_bytes(), live));
    }
    // Some 40 segments were filled; once the first one emptied, every
    // spare was a reused file and none was made or removed.
    let d = jobs.files.0.lock().unwrap();
    let first = d.journal.iter().position(|e| matches!(e, DiskEvent::Recycle(..))).expect("a file reused");
    let later = &d.journal[first..];
    let recycled = later.iter().filter(|e| matches!(e, DiskEvent::Recycle(..))).count();
    assert!(recycled > 15, "{recycled} files reused");
    assert!(
        !later.iter().any(|e| matches!(e, DiskEvent::Create(..) | DiskEvent::Remove(..))),
        "a file made or removed"
    );
    drop(d);
    jobs.check_recovers();
    // A crash after any turn: exactly the jobs live then, whatever earlier
    // uses of the files hold.
    for (appended, live) in snaps.iter().skip(100) {
        let r = recover_files(&jobs.files.at_cut(*appended));
        assert!(r.warnings.is_empty(), "cut at {appended}: {:?}", r.warnings);
        assert_eq!(&ids(&r), live, "cut at {appended}");
    }
    // A crash in the middle of a turn's write, right after its put's
    // record: what follows in the file is an earlier use's record at the
    // same offset. The jobs are those before or after the turn, none older.
    let put_bytes = record::job_record_bytes(7, 150) as u64;
    for pair in snaps[100..].windows(2) {
        let ((before_at, before), (_, after)) = (&pair[0], &pair[1]);
        let cut = before_at + put_bytes;
        let r = recover_files(&jobs.files.at_cut(cut));
        for id in ids(&r) {
            assert!(before.contains(&id) || after.contains(&id), "cut at {cut}: job {id} came back");
        }
    }
}

#[test]
fn a_reused_file_whose_new_header_never_landed_holds_nothing() {
    let mut jobs = Jobs::new(4096);
    let first: Vec<u64> = (0..10u8).map(|i| jobs.put(&[i; 150]).unwrap()).collect();
    jobs.turn(2);
    for i in 0..30u64 {
        jobs.put(&[1; 150]).unwrap();
        jobs.turn(3 + i);
    }
    for &id in &first {
        jobs.delete(id);
    }
    jobs.turn(50);
    jobs.check_recovers();
    // Segment 1 holds the job records of the ten deleted jobs, and their
    // deletes are in a later one. A copy of it under the next seq is what
    // a reused file looks like until its new header is written: read as a
    // segment, its records would come after those deletes and bring the
    // jobs back.
    let mut files = jobs.files.0.lock().unwrap().files.clone();
    let last = files.keys().map(|id| id.seq).max().unwrap();
    let copy = files[&SegmentId { shard: 0, seq: 1 }].clone();
    files.insert(SegmentId { shard: 0, seq: last + 1 }, copy);
    let (r, unused) = recover_naming_unused(&files);
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert!(unused.contains(&segment::file_name(0, last + 1)), "{unused:?}");
    let mut live: Vec<u64> = jobs.live.keys().copied().collect();
    live.sort_unstable();
    assert_eq!(ids(&r), live);
    // Once a later segment was written, the reused file was in use: its
    // records are lost, and that is said.
    let mut later = files.clone();
    let header = segment::Header {
        shard: 0,
        shards: 1,
        seq: last + 2,
        next_id: jobs.next_id,
        created_at: 9,
        salt: segment::salt_for(last + 2),
    };
    let mut bytes = header.encode().to_vec();
    bytes.resize(4096, 0);
    later.insert(SegmentId { shard: 0, seq: last + 2 }, bytes);
    let (r, unused) = recover_naming_unused(&later);
    assert!(unused.contains(&segment::file_name(0, last + 1)), "{unused:?}");
    assert!(r.warnings.iter().any(|w| w.contains(&segment::file_name(0, last + 1))), "{:?}", r.warnings);
}

#[test]
fn a_zero_header_before_other_bytes_is_left_alone_and_its_seq_kept() {
    let (mut files, live) = a_few_segments();
    let seqs = used_seqs(&files);
    // The last segment that holds records loses its header only.
    let last = SegmentId { shard: 0, seq: *seqs.last().unwrap() };
    files.get_mut(&last).unwrap()[..segment::HEADER_BYTES].fill(0);
    let (r, unused) = recover_naming_unused(&files);
    assert!(!unused.contains(&segment::file_name(0, last.seq)), "{unused:?}");
    assert_eq!(r.refused, vec![last]);
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    assert!(
        r.warnings[0].ends_with(&format!(
            "{}: the header is all zeros, but the file holds other bytes from offset 64: what was \
             written in it is lost; the file is left as it is and not read",
            segment::file_name(0, last.seq)
        )),
        "{:?}",
        r.warnings
    );
    assert!(ids(&r).len() < live.len());
    // The next start writes above it: the file is never made twice nor
    // written over (the files in memory refuse both).
    let mem = MemFiles::default();
    for (id, bytes) in &files {
        if used_seqs(&files).contains(&id.seq) || *id == last {
            mem.0.lock().unwrap().files.insert(*id, bytes.clone());
        }
    }
    let mut log = Log::open(config(4096), Box::new(mem.clone()), &r, 5).unwrap();
    assert!(log.stats().current_seq > last.seq, "{:?}", log.stats());
    let batch = log.take_batch().unwrap();
    mem.apply(&batch);
    assert_eq!(mem.0.lock().unwrap().files[&last][..segment::HEADER_BYTES], [0; segment::HEADER_BYTES]);
}

mod opening {
    use std::path::{Path, PathBuf};

    use super::temp_dir;
    use crate::engine::{Engine, EngineConfig};
    use crate::wal::cbinlog;
    use crate::wal::files::{self, DirFiles};
    use crate::wal::log::{Log, LogConfig, SyncPolicy};
    use crate::wal::open::{self, IMPORT_MARKER, OpenError, Opened};
    use crate::wal::recover::{self, Recovered};

    const NOW: u64 = 1_800_000_000_000_000_000;

    fn fixture(case: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cbinlog").join(case).join("binlog")
    }

    /// A fresh directory holding a copy of a fixture's C files.
    fn with_c_files(case: &str) -> PathBuf {
        let dir = temp_dir();
        for entry in std::fs::read_dir(fixture(case)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
        dir
    }

    fn config() -> LogConfig {
        LogConfig { shard: 0, shards: 1, segment_bytes: 1 << 20, sync: SyncPolicy::Always }
    }

    /// What main does with an opened directory, up to the point where the
    /// loop would start; `finish` false stops short of finishing an import
    /// (a crash before the C files moved).
    fn start(dir: &Path, finish: bool) -> (Engine, Opened) {
        let Ok(mut opened) = open::open(dir, 65535, NOW, 1) else { panic!("open failed") };
        let importing = opened.import.is_some();
        let empty = Recovered::default();
        let log =
            Log::open(config(), Box::new(DirFiles::new(dir)), if importing { &empty } else { &opened.recovered }, NOW)
                .unwrap();
        let mut e = Engine::new(EngineConfig::default());
        e.attach_log(log);
        let jobs = std::mem::take(&mut opened.recovered.jobs);
        e.restore(jobs, opened.recovered.next_id, NOW).unwrap();
        if importing {
            e.record_all().unwrap();
            let batch = e.log_mut().unwrap().take_batch().unwrap();
            let dir_fd = files::open_dir(dir).unwrap();
            use std::os::fd::AsRawFd;
            crate::wal::flush::write_blocking(&batch, dir_fd.as_raw_fd()).unwrap();
            if finish {
                let line = open::finish_import(opened.import.take().unwrap()).unwrap();
                assert!(line.starts_with("imported "), "{line}");
            }
        }
        (e, opened)
    }

    fn ids(e: &Engine) -> Vec<u64> {
        e.kept().keys().copied().collect()
    }

    #[test]
    fn c_files_are_imported_then_moved_aside_never_deleted() {
        let dir = with_c_files("lifecycle");
        let c = cbinlog::read_dir(&fixture("lifecycle"), 65535).unwrap();
        let mut want: Vec<u64> = c.jobs.iter().map(|j| j.id).collect();
        want.sort_unstable();
        let (e, opened) = start(&dir, true);
        assert_eq!(ids(&e), want);
        drop((e, opened));
        // The C files are all in the subdirectory, byte for byte.
        let sub = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with(open::IMPORTED_DIR_PREFIX))
            .expect("the subdirectory");
        for entry in std::fs::read_dir(fixture("lifecycle")).unwrap() {
            let entry = entry.unwrap();
            assert_eq!(std::fs::read(sub.join(entry.file_name())).unwrap(), std::fs::read(entry.path()).unwrap());
            assert!(!dir.join(entry.file_name()).exists());
        }
        assert!(!dir.join(IMPORT_MARKER).exists());
        // A restart reads runnerbean's own log and finds the same jobs.
        let (e, _) = start(&dir, true);
        assert_eq!(ids(&e), want);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_import_keeps_cs_next_id_across_restarts() {
        // C's next id is above every live job when the last jobs were deleted ("files"), or
        // when every job was ("all-deleted", where the import writes no record at all): the
        // header of the log's first segment is then all that carries it to the next start.
        for case in ["files", "all-deleted"] {
            let dir = with_c_files(case);
            let c = cbinlog::read_dir(&fixture(case), 65535).unwrap();
            let max_live = c.jobs.iter().map(|j| j.id).max().unwrap_or(0);
            assert!(c.next_id > max_live + 1, "{case}: the fixture no longer ends with deleted jobs");
            let (e, opened) = start(&dir, true);
            drop((e, opened));
            let (mut e, opened) = start(&dir, true);
            assert!(opened.import.is_none(), "{case}: imported again");
            assert_eq!(e.allocate_id(), c.next_id, "{case}: ids handed out again after the import");
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn an_interrupted_import_starts_again() {
        let dir = with_c_files("files");
        let (e, opened) = start(&dir, false);
        let want = ids(&e);
        drop((e, opened));
        // Interrupted after the log was written: the C files are still there.
        assert!(dir.join(IMPORT_MARKER).exists());
        // Interrupted halfway through moving them, too.
        let c_file = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with("binlog."))
            .unwrap();
        let sub = dir.join(std::fs::read_to_string(dir.join(IMPORT_MARKER)).unwrap());
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::rename(&c_file, sub.join(c_file.file_name().unwrap())).unwrap();
        let (e, _) = start(&dir, true);
        assert_eq!(ids(&e), want);
        assert!(!dir.join(IMPORT_MARKER).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_export_is_what_c_reads_back() {
        let dir = with_c_files("lifecycle");
        let (e, opened) = start(&dir, true);
        let kept = e.kept();
        drop((e, opened));
        let out = temp_dir();
        let Ok(exported) = open::export(&dir, &out) else { panic!("export failed") };
        assert_eq!(exported.jobs as usize, kept.len());
        let back = cbinlog::read_dir(&out, 65535).unwrap();
        assert!(back.warnings.is_empty(), "{:?}", back.warnings);
        for image in &back.jobs {
            let k = &kept[&image.id];
            assert_eq!((&image.tube, image.pri, &image.body), (&k.tube, k.pri, &k.body), "job {}", image.id);
        }
        assert_eq!(back.jobs.len(), kept.len());
        // Exporting again into the same place is refused: nothing is
        // overwritten.
        assert!(matches!(open::export(&dir, &out), Err(OpenError::Failed(_))));
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_dir_all(&out).unwrap();
    }

    #[test]
    fn a_directory_without_runnerbeans_log_is_not_exported() {
        // C beanstalkd's own directory, never imported, and an empty one: nothing is written.
        for dir in [with_c_files("basic"), temp_dir()] {
            let out = temp_dir();
            let Err(OpenError::Failed(message)) = open::export(&dir, &out) else { panic!("exported") };
            assert!(message.contains("no runnerbean log to export"), "{message}");
            let c_files = std::fs::read_dir(&dir).unwrap().any(|e| e.unwrap().file_name() == "binlog.1");
            assert_eq!(message.contains("C beanstalkd reads as they are"), c_files, "{message}");
            assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
            std::fs::remove_dir_all(&dir).unwrap();
            std::fs::remove_dir_all(&out).unwrap();
        }
    }

    #[test]
    fn a_held_lock_or_both_kinds_of_file_refuse_to_open() {
        let dir = temp_dir();
        let first = open::open(&dir, 65535, NOW, 1);
        assert!(first.is_ok());
        // fcntl locks are per process: a second process is needed to see
        // the lock held (the wire tests do that); here, both kinds of file.
        drop(first);
        let dir2 = with_c_files("basic");
        std::fs::write(dir2.join(crate::wal::segment::file_name(0, 1)), [0u8; 64]).unwrap();
        assert!(matches!(open::open(&dir2, 65535, NOW, 1), Err(OpenError::Failed(m)) if m.contains("both")));
        let r = recover::recover(&dir).unwrap();
        assert!(r.jobs.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_dir_all(&dir2).unwrap();
    }
}
