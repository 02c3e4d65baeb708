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

pub use super::body::Body;
use super::heap::NO_POS;
use super::time::Nanos;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    Ready,
    Reserved,
    Delayed,
    Buried,
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

#[derive(Debug)]
pub struct Job {
    pub id: u64,
    pub created_at: Nanos,
    /// Delayed: when the job becomes ready. Reserved: when its TTR runs out.
    pub deadline: Nanos,
    pub body: Body,
    pub pri: u32,
    pub delay_s: u32,
    pub ttr_s: u32,
    pub tube: u32,
    pub state: JobState,
    /// Position in the heap the state puts the job in.
    pub pos: u32,
    pub prev: u32,
    pub next: u32,
    /// The reserving client's key while reserved, else NIL.
    pub reserver: u32,
    pub reserves: u32,
    pub timeouts: u32,
    pub releases: u32,
    pub buries: u32,
    pub kicks: u32,
}

impl Job {
    pub fn new(id: u64, created_at: Nanos, pri: u32, delay_s: u32, ttr_s: u32, tube: u32, body: Body) -> Job {
        Job {
            id,
            created_at,
            deadline: 0,
            body,
            pri,
            delay_s,
            ttr_s,
            tube,
            state: JobState::Ready,
            pos: NO_POS,
            prev: NIL,
            next: NIL,
            reserver: NIL,
            reserves: 0,
            timeouts: 0,
            releases: 0,
            buries: 0,
            kicks: 0,
        }
    }

    /// Whether the job counts as urgent (ready and pri < 1024).
    pub fn is_urgent_pri(&self) -> bool {
        self.pri < URGENT_PRI_LIMIT
    }
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
    pub fn push_back(&mut self, jobs: &mut slab::Slab<Job>, key: u32) {
        let job = &mut jobs[key as usize];
        debug_assert!(job.prev == NIL && job.next == NIL);
        job.prev = self.tail;
        job.next = NIL;
        if self.tail == NIL {
            self.head = key;
        } else {
            jobs[self.tail as usize].next = key;
        }
        self.tail = key;
        self.len += 1;
    }

    pub fn remove(&mut self, jobs: &mut slab::Slab<Job>, key: u32) {
        let (prev, next) = {
            let job = &mut jobs[key as usize];
            let links = (job.prev, job.next);
            job.prev = NIL;
            job.next = NIL;
            links
        };
        if prev == NIL {
            debug_assert_eq!(self.head, key);
            self.head = next;
        } else {
            jobs[prev as usize].next = next;
        }
        if next == NIL {
            debug_assert_eq!(self.tail, key);
            self.tail = prev;
        } else {
            jobs[next as usize].prev = prev;
        }
        self.len -= 1;
    }

    pub fn is_empty(&self) -> bool {
        self.head == NIL
    }
}
