//! Jobs, their bodies and their states.
//!
//! A job lives in the shard's slab and is reached by its slab key. Its id is
//! what clients see; the shard keeps an id → key index beside the slab.
//!
//! Each job sits in exactly one structure, chosen by its state:
//!
//! | state    | structure                       | `pos` / links used        |
//! |----------|---------------------------------|---------------------------|
//! | ready    | its tube's ready heap           | `pos`                     |
//! | delayed  | its tube's delay heap           | `pos`                     |
//! | reserved | the shard's TTR heap, and its   | `pos`, and `prev`/`next`  |
//! |          | reserver's list of reservations |                           |
//! | buried   | its tube's buried FIFO list     | `prev`/`next`             |
//!
//! so one position field and one pair of list links serve every state.

use super::arena::Arena;
pub use super::body::Body;
use super::heap::NO_POS;
use super::time::Nanos;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    Ready = 0,
    Reserved = 1,
    Delayed = 2,
    Buried = 3,
}

impl JobState {
    pub fn name(self) -> &'static str {
        match self {
            JobState::Ready => "ready",
            JobState::Reserved => "reserved",
            JobState::Delayed => "delayed",
            JobState::Buried => "buried",
        }
    }
}

/// Key value meaning "none" in list links and client references.
pub const NIL: u32 = u32::MAX;

/// A job, in 64 bytes: a million jobs of 100 bytes must fit in well under
/// 200 MB. Fields that are rarely set (the release delay and four of the
/// five counters) live beside the jobs in [`Extras`], and the tube and the
/// state share one word.
#[derive(Debug)]
pub struct Job {
    pub id: u64,
    pub created_at: Nanos,
    /// Delayed: when the job becomes ready. Reserved: when its TTR runs out.
    pub deadline: Nanos,
    pub body: Body,
    pub pri: u32,
    pub ttr_s: u32,
    /// The tube's key shifted left by two, and the state in the low bits.
    tube_state: u32,
    /// Position in the heap the state puts the job in.
    pub pos: u32,
    pub prev: u32,
    pub next: u32,
    /// The reserving client's key while reserved, else NIL.
    pub reserver: u32,
    pub reserves: u32,
}

/// The largest tube key a job can hold.
pub const TUBE_KEY_MAX: u32 = u32::MAX >> 2;

impl Job {
    pub fn new(id: u64, created_at: Nanos, pri: u32, ttr_s: u32, tube: u32, body: Body) -> Job {
        assert!(tube <= TUBE_KEY_MAX, "tube key out of range");
        Job {
            id,
            created_at,
            deadline: 0,
            body,
            pri,
            ttr_s,
            tube_state: tube << 2 | JobState::Ready as u32,
            pos: NO_POS,
            prev: NIL,
            next: NIL,
            reserver: NIL,
            reserves: 0,
        }
    }

    pub fn tube(&self) -> u32 {
        self.tube_state >> 2
    }

    pub fn state(&self) -> JobState {
        match self.tube_state & 3 {
            0 => JobState::Ready,
            1 => JobState::Reserved,
            2 => JobState::Delayed,
            _ => JobState::Buried,
        }
    }

    pub fn set_state(&mut self, state: JobState) {
        self.tube_state = self.tube_state & !3 | state as u32;
    }

    /// Whether the job counts as urgent (ready and pri < 1024).
    pub fn is_urgent_pri(&self) -> bool {
        self.pri < URGENT_PRI_LIMIT
    }
}

/// A job's rarely set fields; a job without an entry has them all zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Extras {
    /// The delay last set by put or release, in seconds.
    pub delay_s: u32,
    pub timeouts: u32,
    pub releases: u32,
    pub buries: u32,
    pub kicks: u32,
}

/// Jobs with a priority below this are "urgent" in the stats.
pub const URGENT_PRI_LIMIT: u32 = 1024;

/// A doubly linked list threaded through the jobs' `prev`/`next` links.
#[derive(Clone, Copy, Debug)]
pub struct JobList {
    pub head: u32,
    pub tail: u32,
    pub len: u32,
}

impl Default for JobList {
    fn default() -> JobList {
        JobList { head: NIL, tail: NIL, len: 0 }
    }
}

impl JobList {
    pub fn push_back(&mut self, jobs: &mut Arena<Job>, key: u32) {
        let job = &mut jobs[key];
        debug_assert!(job.prev == NIL && job.next == NIL);
        job.prev = self.tail;
        job.next = NIL;
        if self.tail == NIL {
            self.head = key;
        } else {
            jobs[self.tail].next = key;
        }
        self.tail = key;
        self.len += 1;
    }

    pub fn remove(&mut self, jobs: &mut Arena<Job>, key: u32) {
        let (prev, next) = {
            let job = &mut jobs[key];
            let links = (job.prev, job.next);
            job.prev = NIL;
            job.next = NIL;
            links
        };
        if prev == NIL {
            debug_assert_eq!(self.head, key);
            self.head = next;
        } else {
            jobs[prev].next = next;
        }
        if next == NIL {
            debug_assert_eq!(self.tail, key);
            self.tail = prev;
        } else {
            jobs[next].prev = prev;
        }
        self.len -= 1;
    }

    pub fn is_empty(&self) -> bool {
        self.head == NIL
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_fills_one_cache_line_and_an_empty_slot_costs_nothing_more() {
        assert_eq!(size_of::<Job>(), 64);
        assert_eq!(size_of::<Option<Job>>(), 64);
    }

    #[test]
    fn tube_and_state_share_a_word() {
        let mut job = Job::new(1, 0, 0, 1, TUBE_KEY_MAX, Body::from_slice(b""));
        for state in [JobState::Reserved, JobState::Delayed, JobState::Buried, JobState::Ready] {
            job.set_state(state);
            assert_eq!((job.tube(), job.state()), (TUBE_KEY_MAX, state));
        }
    }
}
