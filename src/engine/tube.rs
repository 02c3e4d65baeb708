//! A tube: its queues, its waiting clients and its counters.

use std::collections::VecDeque;

use super::heap::{IndexedHeap, NO_POS};
use super::job::JobList;
use super::time::Nanos;

/// A client registered as waiting on a tube. The registration is live only
/// while the client's current wait carries the same sequence number: a
/// client served from another tube, timed out or gone leaves stale entries
/// behind, which are skipped when met and swept when they pile up.
#[derive(Clone, Copy, Debug)]
pub struct Waiter {
    pub client: u32,
    pub seq: u64,
}

/// The shard that owns the tube `name`, of `shards`: FNV-1a of the name,
/// fixed so that it never changes between runs or builds (each shard keeps
/// its own log, and a tube found in one must be looked for there again).
pub fn shard_of_tube(name: &str, shards: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in name.as_bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(shards)) as u32
}

#[derive(Clone, Copy, Debug)]
pub struct Pause {
    /// The requested pause length, as `stats-tube` shows it.
    pub length: Nanos,
    pub until: Nanos,
}

#[derive(Debug)]
pub struct Tube {
    pub name: Box<str>,
    pub ready: IndexedHeap,
    pub delayed: IndexedHeap,
    pub buried: JobList,
    /// Waiting clients, oldest first (see [`Waiter`]).
    pub waiters: VecDeque<Waiter>,
    /// Live entries in `waiters`.
    pub waiting: u32,
    pub urgent: u64,
    pub reserved: u64,
    /// Jobs of this tube in any state; each one keeps the tube alive.
    pub jobs: u64,
    pub using: u64,
    pub watching: u64,
    pub total_jobs: u64,
    pub deletes: u64,
    pub pauses: u64,
    pub pause: Option<Pause>,
    /// Index in the shard's tube list (the order of `list-tubes`).
    pub list_pos: u32,
    /// Positions in the shard's delay timer and pause timer heaps.
    pub delay_pos: u32,
    pub pause_pos: u32,
}

impl Tube {
    pub fn new(name: Box<str>, list_pos: u32) -> Tube {
        Tube {
            name,
            ready: IndexedHeap::default(),
            delayed: IndexedHeap::default(),
            buried: JobList::default(),
            waiters: VecDeque::new(),
            waiting: 0,
            urgent: 0,
            reserved: 0,
            jobs: 0,
            using: 0,
            watching: 0,
            total_jobs: 0,
            deletes: 0,
            pauses: 0,
            pause: None,
            list_pos,
            delay_pos: NO_POS,
            pause_pos: NO_POS,
        }
    }

    /// Whether reserve must skip this tube at `now`.
    pub fn is_paused(&self, now: Nanos) -> bool {
        self.pause.is_some_and(|p| p.until > now)
    }

    /// Nothing refers to the tube any more (`default` is kept apart).
    pub fn is_unreferenced(&self) -> bool {
        self.jobs == 0 && self.using == 0 && self.watching == 0
    }
}
