//! What the engine does for operators beyond beanstalkd's commands: emptying
//! a tube of its jobs in chosen states (`clear-tube`), listing the ids of one
//! state of a tube page by page (`list-jobs`), and the rows of the tubes
//! with the most jobs, for the metrics exporter.
//!
//! # Invariants
//! * Clearing takes each job through the steps `delete` takes (out of its
//!   queue, a delete record in the log when there is one, freed), so the
//!   counters, the log and the tube's life cycle follow exactly as they
//!   would after deletes: a tube left with nothing referring to it is
//!   destroyed. Reserved jobs are never touched, and nothing is woken.
//! * Listing and the metrics rows change nothing, and neither allocates
//!   anything beyond what it returns and a bounded walk, all of it fallibly.
//!
//! # What it must never do
//! Walk every job of a large queue to answer the first page: the ready and
//! delayed queues are heaps, and a page is found by walking the heap
//! best-first from its root (see [`Engine::list_heap`]).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::heap::IndexedHeap;
use super::job::{JobState, NIL};
use super::stats::TubeStats;
use super::{Engine, Nanos};
use crate::memory::{self, OutOfMemory};

/// The most ids one `list-jobs` answers; a larger count is cut to this.
/// A page of 1,000 ids is at most 23 KB of reply, which a console shows at
/// once, and it bounds what one command walks: at most this many jobs,
/// plus those before the cursor (see [`FRONTIER_VISITS_MAX`]).
pub const LIST_JOBS_COUNT_MAX: usize = 1000;

/// Jobs before the cursor that the best-first walk of a heap may pass
/// before it gives up and scans the whole heap instead. The walk costs
/// about a heap operation per job it passes, the scan a comparison per job
/// in the queue: past a few thousand jobs before the cursor, a deep page of
/// a large queue is cheaper to find by scanning. The first page never
/// passes any.
const FRONTIER_VISITS_MAX: usize = 4096;

/// A set of the states `clear-tube` may empty: ready, delayed, buried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateSet(u8);

impl StateSet {
    /// The set with `state` added.
    pub fn with(self, state: JobState) -> StateSet {
        StateSet(self.0 | 1 << state as u8)
    }

    pub fn contains(self, state: JobState) -> bool {
        self.0 & 1 << state as u8 != 0
    }
}

/// The order a queue is taken in, as a pair compared lexicographically:
/// `(pri, id)` for ready jobs (a reserve takes the least), `(deadline, id)`
/// for delayed ones (the soonest becomes ready first).
type OrderKey = (u64, u64);

impl Engine {
    /// `clear-tube`: deletes every job of the tube in one of `states`, as
    /// `delete` would, and says how many; `None` when there is no such
    /// tube. Jobs due at `now` are made ready first, as every command does.
    ///
    /// Neither the global nor the tube's `cmd-delete` counts these jobs:
    /// they count `delete` commands (docs/COMPAT.md).
    pub fn clear_tube(&mut self, name: &str, states: StateSet, now: Nanos) -> Option<u64> {
        self.advance(now);
        let t = self.find_tube(name)?;
        let mut cleared = 0;
        for state in [JobState::Ready, JobState::Delayed, JobState::Buried] {
            if !states.contains(state) {
                continue;
            }
            loop {
                let tube = &self.tubes[t as usize];
                // From the back of each queue: the last place of a heap
                // leaves without moving any other job.
                let next = match state {
                    JobState::Ready => tube.ready.keys().last().copied(),
                    JobState::Delayed => tube.delayed.keys().last().copied(),
                    _ => (tube.buried.tail != NIL).then_some(tube.buried.tail),
                };
                let Some(k) = next else { break };
                // Freeing the tube's last job may destroy the tube; there is
                // nothing left to clear then.
                let last = tube.jobs == 1;
                self.detach(k);
                // The delete's record was reserved with the put: it never
                // fails.
                self.log_delete(k);
                self.free_job(k);
                cleared += 1;
                if last {
                    return Some(cleared);
                }
            }
        }
        Some(cleared)
    }

    /// `list-jobs`: the ids of the tube's jobs in `state` that come after
    /// job `after` in the order that state is left in (a reserve takes
    /// ready jobs by `(pri, id)`, delayed jobs become ready by
    /// `(deadline, id)`, kicks take buried jobs oldest first), at most
    /// `count` of them (and at most [`LIST_JOBS_COUNT_MAX`]). An `after`
    /// that is not a job of that tube in that state (0, or one reserved,
    /// deleted or moved since) starts from the front, so that a client
    /// paging through a queue it is emptying misses nothing.
    ///
    /// `None` when there is no such tube; `Err` when the memory for the
    /// list cannot be had.
    pub fn list_jobs(
        &self,
        name: &str,
        state: JobState,
        after: u64,
        count: usize,
    ) -> Option<Result<Vec<u64>, OutOfMemory>> {
        let t = self.find_tube(name)?;
        let tube = &self.tubes[t as usize];
        let cursor = self.find_job(after).filter(|&k| {
            let job = &self.jobs[k];
            job.tube() == t && job.state() == state
        });
        let len = match state {
            JobState::Ready => tube.ready.len(),
            JobState::Delayed => tube.delayed.len(),
            _ => tube.buried.len as usize,
        };
        let count = count.min(LIST_JOBS_COUNT_MAX).min(len);
        let mut ids = Vec::new();
        if let Err(e) = memory::try_reserve(&mut ids, count) {
            return Some(Err(e));
        }
        if count == 0 {
            return Some(Ok(ids));
        }
        let listed = match state {
            JobState::Ready => {
                let key = |k: u32| (u64::from(self.jobs[k].pri), self.jobs[k].id);
                self.list_heap(&tube.ready, key, cursor.map(key), count, &mut ids)
            }
            JobState::Delayed => {
                let key = |k: u32| (self.jobs[k].deadline, self.jobs[k].id);
                self.list_heap(&tube.delayed, key, cursor.map(key), count, &mut ids)
            }
            _ => {
                let mut k = cursor.map_or(tube.buried.head, |k| self.jobs[k].next);
                while k != NIL && ids.len() < count {
                    ids.push(self.jobs[k].id);
                    k = self.jobs[k].next;
                }
                Ok(())
            }
        };
        Some(listed.map(|()| ids))
    }

    /// The first `count` jobs of `heap` whose key is past `after`, in key
    /// order, into `ids` (which has room for them).
    ///
    /// A best-first walk: a frontier of heap places, least key first,
    /// starts at the root; each place taken from it is the next job in
    /// order (a heap's children are never less than their parent), and its
    /// children join the frontier. Jobs up to the cursor are passed over
    /// that way, and once [`FRONTIER_VISITS_MAX`] have been, the whole heap
    /// is scanned instead ([`Engine::scan_heap`]).
    fn list_heap(
        &self,
        heap: &IndexedHeap,
        key: impl Fn(u32) -> OrderKey,
        after: Option<OrderKey>,
        count: usize,
        ids: &mut Vec<u64>,
    ) -> Result<(), OutOfMemory> {
        let keys = heap.keys();
        let mut frontier: BinaryHeap<Reverse<(OrderKey, u32)>> = BinaryHeap::new();
        memory::attempt(|| frontier.try_reserve(2 * count + 1))?;
        frontier.push(Reverse((key(keys[0]), 0)));
        let mut passed = 0;
        while let Some(Reverse((order, pos))) = frontier.pop() {
            if after.is_none_or(|a| order > a) {
                ids.push(order.1);
                if ids.len() == count {
                    break;
                }
            } else {
                // Only jobs before the first one listed are passed over,
                // so nothing has been listed yet.
                passed += 1;
                if passed > FRONTIER_VISITS_MAX {
                    return self.scan_heap(keys, &key, after, count, ids);
                }
            }
            memory::attempt(|| frontier.try_reserve(2))?;
            for child in [2 * pos as usize + 1, 2 * pos as usize + 2] {
                if let Some(&k) = keys.get(child) {
                    frontier.push(Reverse((key(k), child as u32)));
                }
            }
        }
        Ok(())
    }

    /// The same as [`Engine::list_heap`], by looking at every job of the
    /// heap once and keeping the `count` least past `after`.
    fn scan_heap(
        &self,
        keys: &[u32],
        key: &impl Fn(u32) -> OrderKey,
        after: Option<OrderKey>,
        count: usize,
        ids: &mut Vec<u64>,
    ) -> Result<(), OutOfMemory> {
        let mut best: BinaryHeap<OrderKey> = BinaryHeap::new();
        memory::attempt(|| best.try_reserve(count))?;
        for &k in keys {
            let order = key(k);
            if after.is_some_and(|a| order <= a) {
                continue;
            }
            if best.len() < count {
                best.push(order);
            } else if best.peek().is_some_and(|&worst| order < worst) {
                best.pop();
                best.push(order);
            }
        }
        ids.extend(best.into_sorted_vec().into_iter().map(|(_, id)| id));
        Ok(())
    }

    /// The `stats-tube` figures of the `max` tubes with the most jobs (ties
    /// by name), into `rows`, most jobs first; returns how many tubes there
    /// are in all. `scratch` is the caller's, kept between calls so that
    /// this allocates only the rows.
    pub fn busiest_tubes(
        &self,
        max: usize,
        now: Nanos,
        rows: &mut Vec<TubeStats>,
        scratch: &mut Vec<(u64, u32)>,
    ) -> u64 {
        scratch.clear();
        scratch.extend(self.tube_list.iter().map(|&t| (self.tubes[t as usize].jobs, t)));
        let busiest = |a: &(u64, u32), b: &(u64, u32)| {
            b.0.cmp(&a.0).then_with(|| self.tubes[a.1 as usize].name.cmp(&self.tubes[b.1 as usize].name))
        };
        if scratch.len() > max && max > 0 {
            scratch.select_nth_unstable_by(max - 1, busiest);
        }
        scratch.truncate(max);
        scratch.sort_unstable_by(busiest);
        rows.clear();
        rows.extend(scratch.iter().filter_map(|&(_, t)| self.stats_tube(&self.tubes[t as usize].name, now)));
        self.tube_list.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Body, ClientId, EngineConfig, NANOS_PER_SEC, PutOutcome, ReserveOutcome, StateSet};

    const S: Nanos = NANOS_PER_SEC;

    fn put(e: &mut Engine, c: ClientId, pri: u32, delay_s: u32, now: Nanos) -> u64 {
        let id = e.allocate_id();
        let outcome = e.put(c, id, now, pri, delay_s, 60, Body::from_slice(b"x"), now);
        assert_eq!(outcome, PutOutcome::Inserted);
        id
    }

    fn reserve(e: &mut Engine, c: ClientId, now: Nanos) -> u64 {
        match e.reserve(c, Some(0), now) {
            ReserveOutcome::Reserved(job) => job.id,
            other => panic!("{other:?}"),
        }
    }

    fn bury(e: &mut Engine, c: ClientId, now: Nanos) -> u64 {
        let id = reserve(e, c, now);
        assert_eq!(e.bury(c, id, 0, now), crate::engine::Change::Done);
        id
    }

    fn list(e: &Engine, tube: &str, state: JobState, after: u64, count: usize) -> Vec<u64> {
        e.list_jobs(tube, state, after, count).expect("the tube exists").expect("memory for the list")
    }

    fn all() -> StateSet {
        StateSet::default().with(JobState::Ready).with(JobState::Delayed).with(JobState::Buried)
    }

    #[test]
    fn state_sets_hold_what_was_added() {
        let s = StateSet::default().with(JobState::Buried);
        assert!(s.contains(JobState::Buried));
        assert!(!s.contains(JobState::Ready) && !s.contains(JobState::Delayed) && !s.contains(JobState::Reserved));
        assert_eq!(s.with(JobState::Buried), s);
    }

    #[test]
    fn ready_jobs_are_listed_in_reserve_order_and_paged_by_cursor() {
        let mut e = Engine::new(EngineConfig::default());
        let c = e.connect().unwrap();
        let now = S;
        // Priorities out of id order: reserve order is (pri, id).
        let pris = [5, 1, 5, 0, 3, 1, 9, 0];
        let ids: Vec<u64> = pris.iter().map(|&p| put(&mut e, c, p, 0, now)).collect();
        let mut order: Vec<(u32, u64)> = pris.iter().copied().zip(ids.iter().copied()).collect();
        order.sort();
        let order: Vec<u64> = order.into_iter().map(|(_, id)| id).collect();
        assert_eq!(list(&e, "default", JobState::Ready, 0, 100), order);
        assert_eq!(list(&e, "default", JobState::Ready, 0, 3), order[..3]);
        assert_eq!(list(&e, "default", JobState::Ready, order[2], 3), order[3..6]);
        assert_eq!(list(&e, "default", JobState::Ready, order[5], 3), order[6..]);
        assert_eq!(list(&e, "default", JobState::Ready, order[7], 3), Vec::<u64>::new());
        assert_eq!(list(&e, "default", JobState::Ready, 0, 0), Vec::<u64>::new());
        // Each reserve takes the head of what was listed.
        for &id in &order[..4] {
            assert_eq!(reserve(&mut e, c, now), id);
        }
        // A cursor that left the state starts over from the front.
        assert_eq!(list(&e, "default", JobState::Ready, order[1], 2), order[4..6]);
        assert_eq!(e.list_jobs("nope", JobState::Ready, 0, 1), None);
        e.check_invariants(now);
    }

    #[test]
    fn delayed_jobs_are_listed_in_the_order_they_become_ready() {
        let mut e = Engine::new(EngineConfig::default());
        let c = e.connect().unwrap();
        let now = S;
        let a = put(&mut e, c, 0, 30, now);
        let b = put(&mut e, c, 0, 10, now);
        let d = put(&mut e, c, 0, 20, now + 1);
        let f = put(&mut e, c, 0, 10, now);
        assert_eq!(list(&e, "default", JobState::Delayed, 0, 10), [b, f, d, a]);
        assert_eq!(list(&e, "default", JobState::Delayed, f, 10), [d, a]);
        assert_eq!(list(&e, "default", JobState::Ready, 0, 10), Vec::<u64>::new());
        e.advance(now + 15 * S);
        assert_eq!(list(&e, "default", JobState::Ready, 0, 10), [b, f]);
        assert_eq!(list(&e, "default", JobState::Delayed, 0, 10), [d, a]);
    }

    #[test]
    fn buried_jobs_are_listed_in_kick_order() {
        let mut e = Engine::new(EngineConfig::default());
        let c = e.connect().unwrap();
        let now = S;
        for _ in 0..4 {
            put(&mut e, c, 0, 0, now);
        }
        let buried: Vec<u64> = (0..4).map(|_| bury(&mut e, c, now)).collect();
        assert_eq!(list(&e, "default", JobState::Buried, 0, 10), buried);
        assert_eq!(list(&e, "default", JobState::Buried, buried[1], 1), [buried[2]]);
        assert_eq!(e.kick(c, 1, now), 1);
        assert_eq!(list(&e, "default", JobState::Buried, 0, 10), buried[1..]);
    }

    /// Deep pages of a large heap are found by the scan, and they are the
    /// same pages a walk from the front finds.
    #[test]
    fn pages_deep_in_a_large_queue_match_the_whole_order() {
        let mut e = Engine::new(EngineConfig::default());
        let c = e.connect().unwrap();
        let now = S;
        let jobs = 3 * FRONTIER_VISITS_MAX;
        let mut order = Vec::new();
        for i in 0..jobs {
            // A scattered but fixed set of priorities.
            let pri = (i as u32).wrapping_mul(2_654_435_761) % 97;
            order.push((pri, put(&mut e, c, pri, 0, now)));
        }
        order.sort();
        let order: Vec<u64> = order.into_iter().map(|(_, id)| id).collect();
        let mut paged = Vec::new();
        let mut after = 0;
        loop {
            let page = list(&e, "default", JobState::Ready, after, LIST_JOBS_COUNT_MAX + 5);
            assert!(page.len() <= LIST_JOBS_COUNT_MAX);
            let Some(&last) = page.last() else { break };
            paged.extend_from_slice(&page);
            after = last;
        }
        assert_eq!(paged, order);
    }

    #[test]
    fn clearing_deletes_the_chosen_states_as_delete_would() {
        let mut e = Engine::new(EngineConfig::default());
        let c = e.connect().unwrap();
        let now = S;
        assert!(e.use_tube(c, "t").is_ok());
        for _ in 0..3 {
            put(&mut e, c, 0, 0, now);
        }
        put(&mut e, c, 0, 50, now);
        put(&mut e, c, 0, 50, now);
        assert!(e.watch(c, "t").is_ok());
        let reserved = reserve(&mut e, c, now);
        let buried = bury(&mut e, c, now);
        let before = e.stats();
        let tube_before = e.stats_tube("t", now).unwrap();
        assert_eq!((tube_before.ready, tube_before.delayed, tube_before.buried), (1, 2, 1));

        let buried_only = StateSet::default().with(JobState::Buried);
        assert_eq!(e.clear_tube("t", buried_only, now), Some(1));
        assert_eq!(e.peek(buried), None);
        assert_eq!(e.clear_tube("t", buried_only, now), Some(0));
        assert_eq!(e.clear_tube("t", all(), now), Some(3));
        e.check_invariants(now);
        let after = e.stats();
        let tube = e.stats_tube("t", now).unwrap();
        assert_eq!((tube.ready, tube.delayed, tube.buried, tube.reserved), (0, 0, 0, 1));
        assert_eq!((after.ready, after.delayed, after.buried, after.reserved), (0, 0, 0, 1));
        assert_eq!(after.urgent, 0);
        // What counts commands or puts does not move.
        assert_eq!(after.ops, before.ops);
        assert_eq!((after.total_jobs, tube.total_jobs, tube.deletes), (before.total_jobs, 5, 0));
        // The reserved job is untouched and still deletable by its holder.
        assert!(e.delete(c, reserved, now));
        assert_eq!(e.clear_tube("nope", all(), now), None);
    }

    #[test]
    fn clearing_a_tube_nothing_else_holds_destroys_it() {
        let mut e = Engine::new(EngineConfig::default());
        let c = e.connect().unwrap();
        let now = S;
        assert!(e.use_tube(c, "gone").is_ok());
        put(&mut e, c, 0, 0, now);
        put(&mut e, c, 0, 9, now);
        assert!(e.use_tube(c, "default").is_ok());
        assert!(e.has_tube("gone"));
        assert_eq!(e.clear_tube("gone", StateSet::default().with(JobState::Ready), now), Some(1));
        assert!(e.has_tube("gone"), "a delayed job still holds it");
        assert_eq!(e.clear_tube("gone", all(), now), Some(1));
        assert!(!e.has_tube("gone"));
        assert_eq!(e.stats().tubes, 1);
        e.check_invariants(now);
        // `default` is never destroyed.
        put(&mut e, c, 0, 0, now);
        assert_eq!(e.clear_tube("default", all(), now), Some(1));
        assert!(e.has_tube("default"));
    }

    #[test]
    fn clearing_makes_due_jobs_ready_first() {
        let mut e = Engine::new(EngineConfig::default());
        let c = e.connect().unwrap();
        put(&mut e, c, 0, 1, S);
        // Due at 2 s: at 3 s it is ready, and not cleared as delayed.
        assert_eq!(e.clear_tube("default", StateSet::default().with(JobState::Delayed), 3 * S), Some(0));
        assert_eq!(e.stats().ready, 1);
    }

    #[test]
    fn the_busiest_tubes_come_first_and_the_rest_are_counted() {
        let mut e = Engine::new(EngineConfig::default());
        let c = e.connect().unwrap();
        let now = S;
        for (tube, jobs) in [("a", 1), ("b", 3), ("c", 2), ("d", 2)] {
            assert!(e.use_tube(c, tube).is_ok());
            for _ in 0..jobs {
                put(&mut e, c, 0, 0, now);
            }
        }
        let (mut rows, mut scratch) = (Vec::new(), Vec::new());
        let names = |rows: &[TubeStats]| rows.iter().map(|r| r.name.clone()).collect::<Vec<_>>();
        assert_eq!(e.busiest_tubes(3, now, &mut rows, &mut scratch), 5);
        assert_eq!(names(&rows), ["b", "c", "d"]);
        assert_eq!(rows[0], e.stats_tube("b", now).unwrap());
        assert_eq!(e.busiest_tubes(10, now, &mut rows, &mut scratch), 5);
        assert_eq!(names(&rows), ["b", "c", "d", "a", "default"]);
        assert_eq!(e.busiest_tubes(0, now, &mut rows, &mut scratch), 5);
        assert!(rows.is_empty());
    }
}
