//! The engine's side of the write-ahead log: the records its state changes
//! emit, restoring jobs at start-up, and moving jobs forward for
//! compaction.
//!
//! The engine stays free of I/O: records are appended to the shard's
//! [`Log`], which the event loop writes out once per turn. Which changes
//! are recorded, and why (docs/LOG-FORMAT.md has the list):
//!
//! | change | record |
//! |---|---|
//! | put (ready or delayed) | job record |
//! | delete | delete record |
//! | bury, kick (each job), release (with or without a delay) | state record |
//! | compaction moving a live job forward | job record with its state now |
//!
//! Reserving, touching, TTR expiry and a closed connection's jobs going
//! back to ready are not recorded: a reserved job comes back ready, and its
//! counters reach the log with its next record.
//!
//! # Invariants
//! Every live job's latest job record is in the segment its position says
//! ([`WalPos`]), and the log's count of live bytes is the sum over live jobs
//! of their job record and, if they have one since, a state record.

use super::column::Column;
use super::job::{Extras, JobState};
use super::{BodyBuilder, Engine, Nanos};
use crate::memory::OutOfMemory;
use crate::wal::image::{Counters, ImageState};
use crate::wal::log::Log;
use crate::wal::record::{self, StateFields};
use crate::wal::recover::{RecoveredJob, SegmentId};

/// Ids looked at per step of compaction, copied out of the log so the
/// engine can change the log while it moves them.
const COMPACT_IDS_PER_STEP: usize = 256;

/// Where a job's records are: the seq of the segment holding its latest job
/// record, and whether a state record followed it. Kept per job key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalPos {
    pub seq: u64,
    pub has_state: bool,
}

/// The positions of the jobs that have records, by job key: a column,
/// whose page is reserved with the job's other room (see
/// `Engine::make_room_for_job`), so that setting it never allocates.
#[derive(Default)]
pub struct WalPositions {
    column: Column<WalPos>,
}

impl WalPositions {
    pub fn get(&self, k: u32) -> WalPos {
        self.column.get(k)
    }

    pub fn try_reserve(&mut self, k: u32) -> Result<(), OutOfMemory> {
        self.column.try_reserve(k)
    }

    pub fn set(&mut self, k: u32, pos: WalPos) {
        // The page was reserved when room for the job was made.
        let set = self.column.update(k, |p| *p = pos);
        assert!(set.is_ok(), "the log position of a job without reserved room");
    }

    pub fn clear(&mut self, k: u32) {
        self.column.clear(k);
    }
}

/// Why a change that must be recorded was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoLogSpace;

impl Engine {
    /// Gives the engine its log; from now on its changes are recorded.
    pub fn attach_log(&mut self, log: Log) {
        self.wal = Some(Box::new(log));
    }

    pub fn log(&self) -> Option<&Log> {
        self.wal.as_deref()
    }

    pub fn log_mut(&mut self) -> Option<&mut Log> {
        self.wal.as_deref_mut()
    }

    /// The state fields of job `k` as a record carries them.
    pub(super) fn state_fields(&self, k: u32) -> StateFields {
        let job = &self.jobs[k];
        let extras = self.extras_of(k);
        let (state, deadline) = match job.state() {
            JobState::Ready | JobState::Reserved => (ImageState::Ready, 0),
            JobState::Delayed => (ImageState::Delayed, job.deadline),
            JobState::Buried => (ImageState::Buried, job.deadline),
        };
        StateFields {
            id: job.id,
            state,
            pri: job.pri,
            delay_s: extras.delay_s,
            deadline,
            counters: counters(job.reserves, &extras),
        }
    }

    /// Records job `k` whole: a put, or (`moved`) a move of a live job.
    pub(super) fn log_job(&mut self, k: u32, moved: bool) {
        if self.wal.is_none() {
            return;
        }
        let fields = self.state_fields(k);
        let log = self.wal.as_deref_mut().expect("checked above");
        let job = &self.jobs[k];
        let tube = &self.tubes[job.tube() as usize].name;
        let seg = log.job(&fields, job.ttr_s, job.created_at, tube, &job.body, moved);
        self.wal_pos.set(k, WalPos { seq: seg.seq, has_state: false });
    }

    /// Records job `k`'s state now.
    pub(super) fn log_state(&mut self, k: u32) {
        if self.wal.is_none() {
            return;
        }
        let fields = self.state_fields(k);
        let mut pos = self.wal_pos.get(k);
        let log = self.wal.as_deref_mut().expect("checked above");
        log.state(&fields, !pos.has_state);
        pos.has_state = true;
        self.wal_pos.set(k, pos);
    }

    /// Records that job `k` is gone (before it is freed).
    pub(super) fn log_delete(&mut self, k: u32) {
        if self.wal.is_none() {
            return;
        }
        let pos = self.wal_pos.get(k);
        let segment = self.segment_id(pos.seq);
        let job = &self.jobs[k];
        let tube = &self.tubes[job.tube() as usize].name;
        let live = Log::live_bytes_of(tube.len(), job.body.len(), pos.has_state);
        let log = self.wal.as_deref_mut().expect("checked above");
        log.delete(job.id, segment, live);
        self.wal_pos.clear(k);
    }

    /// Room for a put's records, checked before the job exists.
    pub(super) fn reserve_put_record(&mut self, tube: u32, body_bytes: usize) -> Result<(), NoLogSpace> {
        let Some(log) = self.wal.as_deref_mut() else { return Ok(()) };
        let tube_bytes = self.tubes[tube as usize].name.len();
        if log.reserve_put(tube_bytes, body_bytes) { Ok(()) } else { Err(NoLogSpace) }
    }

    /// Room for a state record.
    pub(super) fn reserve_state_record(&mut self) -> Result<(), NoLogSpace> {
        match self.wal.as_deref_mut() {
            Some(log) => {
                if log.reserve_state() {
                    Ok(())
                } else {
                    Err(NoLogSpace)
                }
            }
            None => Ok(()),
        }
    }

    fn segment_id(&self, seq: u64) -> SegmentId {
        SegmentId { shard: self.config.shard, seq }
    }

    /// Moves jobs out of the oldest segment, about `budget` bytes of
    /// records, so that it can be removed (see `wal::log`, "Compaction").
    pub fn compact(&mut self, budget: u64) {
        let mut left = budget;
        let mut ids: Vec<u64> = Vec::with_capacity(COMPACT_IDS_PER_STEP);
        while left > 0 {
            let Some(log) = self.wal.as_deref() else { return };
            let Some((seg, candidates)) = log.compaction_candidates() else { return };
            if candidates.is_empty() {
                return;
            }
            ids.clear();
            ids.extend(candidates.iter().take(COMPACT_IDS_PER_STEP));
            let mut seen = 0;
            for &id in &ids {
                let Some(k) = self.find_job(id) else {
                    seen += 1;
                    continue;
                };
                let pos = self.wal_pos.get(k);
                if pos.seq != seg.seq {
                    seen += 1;
                    continue;
                }
                let job = &self.jobs[k];
                let tube_bytes = self.tubes[job.tube() as usize].name.len();
                let body_bytes = job.body.len();
                let bytes = record::job_record_bytes(tube_bytes, body_bytes) as u64;
                let log = self.wal.as_deref_mut().expect("checked above");
                if !log.reserve_move(bytes) {
                    // No room now: try again on a later turn.
                    log.compacted(seen);
                    return;
                }
                self.log_job(k, true);
                let log = self.wal.as_deref_mut().expect("checked above");
                let old = Log::live_bytes_of(tube_bytes, body_bytes, pos.has_state);
                let new = Log::live_bytes_of(tube_bytes, body_bytes, false);
                log.moved(seg, old, new);
                seen += 1;
                left = left.saturating_sub(bytes);
                if left == 0 {
                    break;
                }
            }
            self.wal.as_deref_mut().expect("checked above").compacted(seen);
        }
    }

    /// Writes a job record for every job (the jobs just imported from C
    /// beanstalkd's files, which are not in the log yet).
    pub fn record_all(&mut self) -> Result<(), NoLogSpace> {
        let keys: Vec<u32> = self.jobs.iter().map(|(k, _)| k).collect();
        for k in keys {
            let (tube, len) = (self.jobs[k].tube(), self.jobs[k].body.len());
            self.reserve_put_record(tube, len)?;
            self.log_job(k, false);
        }
        Ok(())
    }

    /// Puts back the jobs read from the log at start-up, before any client
    /// connects: ready ones ready, delayed ones delayed until their
    /// deadline (ready at once if it has passed), buried ones buried in
    /// the order of their buries. Ids below `next_id` are never handed out
    /// again.
    pub fn restore(&mut self, jobs: Vec<RecoveredJob>, next_id: u64, now: Nanos) -> Result<(), String> {
        let mut buried: Vec<(u64, u32)> = Vec::new();
        let mut max_id = 0;
        for job in jobs {
            let body = match job.body {
                Some(body) => body,
                None => {
                    let Some(mut builder) = BodyBuilder::try_new(job.image.body.len()) else {
                        return Err(format!("out of memory restoring job {}", job.image.id));
                    };
                    builder.fill(&job.image.body);
                    builder.finish()
                }
            };
            let image = job.image;
            max_id = max_id.max(image.id);
            let oom = |what: &str| format!("out of memory restoring job {} ({what})", image.id);
            let tube = self.tube_for_name(&image.tube).map_err(|_| oom("its tube"))?;
            let delayed = image.state == ImageState::Delayed;
            let k = self.make_room_for_job(image.id, tube, delayed).map_err(|_| oom("its place"))?;
            let mut j = super::job::Job::new(image.id, image.created_at, image.pri, image.ttr_s.max(1), tube, body);
            j.reserves = image.counters.reserves;
            let inserted = self.jobs.insert(j);
            debug_assert_eq!(inserted, k);
            let c = image.counters;
            let extras = Extras {
                delay_s: image.delay_s,
                timeouts: c.timeouts,
                releases: c.releases,
                buries: c.buries,
                kicks: c.kicks,
            };
            if extras != Extras::default() {
                // Counters shown by stats-job only: without memory for
                // their page they start from zero.
                self.note(k, |e| *e = extras);
            }
            self.tubes[tube as usize].jobs += 1;
            if self.wal.is_some() && job.segment.shard == self.config.shard {
                self.wal_pos.set(k, WalPos { seq: job.segment.seq, has_state: job.has_state });
            }
            match image.state {
                ImageState::Ready => {
                    self.push_ready(k);
                }
                ImageState::Delayed if image.deadline > now => self.enqueue_delayed(k, image.deadline),
                ImageState::Delayed => {
                    self.push_ready(k);
                }
                ImageState::Buried => buried.push((image.deadline, k)),
            }
        }
        buried.sort_unstable();
        for (order, k) in buried {
            self.enqueue_buried(k);
            self.bury_seq = self.bury_seq.max(order + 1);
            self.jobs[k].deadline = order;
        }
        // No id seen, in the log or handed out before it, comes again.
        let floor = next_id.max(max_id + 1).max(self.id_source.peek());
        self.id_source.raise_to(floor);
        if let Some(log) = self.wal.as_deref_mut() {
            log.note_restored_next_id(floor);
        }
        Ok(())
    }
}

fn counters(reserves: u32, e: &Extras) -> Counters {
    Counters { reserves, timeouts: e.timeouts, releases: e.releases, buries: e.buries, kicks: e.kicks }
}

/// What a restart must bring back of a job: every field but the counters
/// that reach the log only with a job's next record (reserves, timeouts),
/// with a reserved job shown as ready (as it comes back).
#[cfg(test)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kept {
    pub tube: String,
    pub state: ImageState,
    pub pri: u32,
    pub ttr_s: u32,
    pub delay_s: u32,
    pub created_at: u64,
    /// Delayed jobs only.
    pub deadline: u64,
    pub body: Vec<u8>,
    pub releases: u32,
    pub buries: u32,
    pub kicks: u32,
}

#[cfg(test)]
impl Engine {
    /// Each tube's buried jobs, oldest first, by tube name.
    pub fn buried_order(&self) -> std::collections::BTreeMap<String, Vec<u64>> {
        let mut out = std::collections::BTreeMap::new();
        for (_, tube) in self.tubes.iter() {
            let mut ids = Vec::new();
            let mut k = tube.buried.head;
            while k != super::job::NIL {
                ids.push(self.jobs[k].id);
                k = self.jobs[k].next;
            }
            if !ids.is_empty() {
                out.insert(tube.name.to_string(), ids);
            }
        }
        out
    }

    /// Every job as a restart must bring it back, by id.
    pub fn kept(&self) -> std::collections::BTreeMap<u64, Kept> {
        self.jobs
            .iter()
            .map(|(k, job)| {
                let f = self.state_fields(k);
                let kept = Kept {
                    tube: self.tubes[job.tube() as usize].name.to_string(),
                    state: f.state,
                    pri: f.pri,
                    ttr_s: job.ttr_s,
                    delay_s: f.delay_s,
                    created_at: job.created_at,
                    deadline: if f.state == ImageState::Delayed { f.deadline } else { 0 },
                    body: job.body.bytes().to_vec(),
                    releases: f.counters.releases,
                    buries: f.counters.buries,
                    kicks: f.counters.kicks,
                };
                (job.id, kept)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
