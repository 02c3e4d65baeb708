//! Job id → arena key.
//!
//! Ids are handed out in increasing order ([`IdSource`]), so a shard's live
//! jobs cluster in runs of nearby ids (every id, with one shard; a part of
//! them, with several, each shard's runs as dense as its share of puts). The sequence is cut into pages of [`PAGE_SLOTS`] slots
//! holding arena keys, found through a small directory keyed by page number
//! (one entry per 1024 ids): finding a job is a lookup in that directory and
//! an index, and adding one never rehashes anything large. (A hash table of
//! a million jobs stalled every connection for tens of milliseconds each
//! time it doubled.) A full page costs 4 bytes per job, and ids that never
//! became jobs, or jobs long gone, cost nothing.
//!
//! Jobs that outlive their neighbours would keep whole pages alive, so a
//! page other than the newest left with fewer than [`PAGE_LIVE_MIN`] jobs
//! hands them to a small hash table, the overflow, and is freed. A put
//! whose body arrives after its page is gone also lands in the overflow,
//! and the overflow gives its memory back as it empties. Memory therefore
//! follows the live jobs, never the number of ids issued.
//!
//! Adding an id may fail for want of memory ([`IdMap::try_insert`]), and
//! then changes nothing; removing one never fails: when the overflow
//! cannot grow to take a sparse page's jobs, the page is simply kept.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::KeyHasher;
use crate::memory::{self, OutOfMemory};

/// Where job ids come from: one counter for the whole server, shared by
/// the engines of every shard. A fresh server's first id is 1, and ids
/// increase in the order puts are accepted across all tubes, whichever
/// shard owns them, as C beanstalkd's do: equal-priority jobs come out in
/// put order across shards, and a client's later put always gets a larger
/// id. (Each increment is one read-modify-write, so the counter's single
/// modification order is the order ids are handed out in; relaxed ordering
/// is enough for that.)
#[derive(Clone, Debug)]
pub struct IdSource(Arc<AtomicU64>);

impl Default for IdSource {
    fn default() -> IdSource {
        IdSource(Arc::new(AtomicU64::new(1)))
    }
}

impl IdSource {
    /// The next id; never handed out again.
    pub fn take(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }

    /// No id below `floor` is handed out from now on (ids recovered from
    /// the log, or handed out before a restart).
    pub fn raise_to(&self, floor: u64) {
        self.0.fetch_max(floor, Ordering::Relaxed);
    }

    /// The id the next [`IdSource::take`] would return, if no other shard
    /// takes one first.
    pub fn peek(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

const PAGE_BITS: u32 = 10;
/// Slots per page.
const PAGE_SLOTS: usize = 1 << PAGE_BITS;
/// A page other than the newest with fewer live jobs than this moves them
/// to the overflow. At PAGE_SLOTS / 8 a kept page costs at most 32 bytes
/// per job.
const PAGE_LIVE_MIN: u32 = (PAGE_SLOTS / 8) as u32;
/// The overflow shrinks when it is less than a quarter full and larger
/// than this many entries.
const OVERFLOW_SHRINK_MIN: usize = 64;
const VACANT: u32 = u32::MAX;

type Slots = Box<[u32; PAGE_SLOTS]>;

/// Bytes of a page: what a put may allocate here.
pub(super) const PAGE_BYTES: usize = size_of::<[u32; PAGE_SLOTS]>();

struct Page {
    keys: Slots,
    live: u32,
}

/// A page with every slot vacant, or a refusal.
fn vacant_page() -> Result<Slots, OutOfMemory> {
    let mut keys = Vec::new();
    memory::try_reserve_exact(&mut keys, PAGE_SLOTS)?;
    keys.resize(PAGE_SLOTS, VACANT);
    Ok(keys.into_boxed_slice().try_into().expect("a page of PAGE_SLOTS slots"))
}

pub struct IdMap {
    first: u64,
    step: u64,
    /// Page number → page.
    pages: HashMap<u64, Page, BuildHasherDefault<KeyHasher>>,
    /// The page of the highest id inserted so far, where new ids land.
    newest: Option<u64>,
    overflow: HashMap<u64, u32, BuildHasherDefault<KeyHasher>>,
    /// A freed page, all vacant, kept for the next one needed.
    spare: Option<Slots>,
    len: usize,
}

impl IdMap {
    /// A map for ids `first`, `first + step`, `first + 2 * step`, ….
    pub fn new(first: u64, step: u64) -> IdMap {
        assert!(step >= 1);
        IdMap {
            first,
            step,
            pages: HashMap::default(),
            newest: None,
            overflow: HashMap::default(),
            spare: None,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The page number and slot of `id`; `None` for an id not of this
    /// sequence.
    fn locate(&self, id: u64) -> Option<(u64, usize)> {
        let offset = id.checked_sub(self.first)?;
        let seq = if self.step == 1 {
            offset
        } else if offset % self.step == 0 {
            offset / self.step
        } else {
            return None;
        };
        Some((seq >> PAGE_BITS, seq as usize & (PAGE_SLOTS - 1)))
    }

    pub fn get(&self, id: u64) -> Option<u32> {
        let (p, slot) = self.locate(id)?;
        match self.pages.get(&p) {
            // An id is never both in a page and in the overflow.
            Some(page) => Some(page.keys[slot]).filter(|&k| k != VACANT),
            None => self.overflow.get(&id).copied(),
        }
    }

    /// Records `id` → `key`; `id` must be absent. Refuses, changing
    /// nothing, when the memory for it cannot be had.
    pub fn try_insert(&mut self, id: u64, key: u32) -> Result<(), OutOfMemory> {
        debug_assert_ne!(key, VACANT);
        let (p, slot) = self.locate(id).expect("an id of this shard's sequence");
        if !self.pages.contains_key(&p) && self.newest.is_none_or(|n| p > n) {
            // Ids only grow, so this is the new newest page; the one that
            // was newest is now judged like the others.
            memory::attempt(|| self.pages.try_reserve(1))?;
            let keys = match self.spare.take() {
                Some(keys) => keys,
                None => vacant_page()?,
            };
            if let Some(old) = self.newest
                && self.pages.get(&old).is_some_and(|page| page.live < PAGE_LIVE_MIN)
            {
                self.evict(old);
            }
            self.pages.insert(p, Page { keys, live: 0 });
            self.newest = Some(p);
        }
        match self.pages.get_mut(&p) {
            Some(page) => {
                assert_eq!(page.keys[slot], VACANT, "id {id} is already mapped");
                page.keys[slot] = key;
                page.live += 1;
            }
            None => {
                memory::attempt(|| self.overflow.try_reserve(1))?;
                let old = self.overflow.insert(id, key);
                assert!(old.is_none(), "id {id} is already mapped");
            }
        }
        self.len += 1;
        Ok(())
    }

    /// Records `id` → `key`, for tests that never run out of memory.
    #[cfg(test)]
    pub fn insert(&mut self, id: u64, key: u32) {
        self.try_insert(id, key).expect("memory for the id index");
    }

    /// Forgets `id`; returns its key if it was there.
    pub fn remove(&mut self, id: u64) -> Option<u32> {
        let (p, slot) = self.locate(id)?;
        let key = match self.pages.get_mut(&p) {
            Some(page) => {
                let key = std::mem::replace(&mut page.keys[slot], VACANT);
                if key == VACANT {
                    return None;
                }
                page.live -= 1;
                // The newest page stays, even empty: new ids land there.
                if page.live < PAGE_LIVE_MIN && self.newest != Some(p) {
                    self.evict(p);
                }
                key
            }
            None => {
                let key = self.overflow.remove(&id)?;
                let capacity = self.overflow.capacity();
                if capacity > OVERFLOW_SHRINK_MIN && self.overflow.len() < capacity / 4 {
                    self.shrink_overflow();
                }
                key
            }
        };
        self.len -= 1;
        Some(key)
    }

    /// Moves the overflow into a table half its size, when one can be had
    /// (`shrink_to` would stop the server if it could not).
    fn shrink_overflow(&mut self) {
        let mut smaller = HashMap::default();
        if memory::attempt(|| smaller.try_reserve(self.overflow.len() * 2)).is_ok() {
            smaller.extend(self.overflow.drain());
            self.overflow = smaller;
        }
    }

    /// Moves the live jobs of page `p` to the overflow and frees it; keeps
    /// it when the overflow cannot grow to take them.
    fn evict(&mut self, p: u64) {
        let live = self.pages.get(&p).map_or(0, |page| page.live as usize);
        if memory::attempt(|| self.overflow.try_reserve(live)).is_err() {
            return;
        }
        let Some(mut page) = self.pages.remove(&p) else {
            return;
        };
        if page.live > 0 {
            let first_seq = p << PAGE_BITS;
            for (slot, key) in page.keys.iter_mut().enumerate() {
                if *key != VACANT {
                    let id = self.first + (first_seq + slot as u64) * self.step;
                    self.overflow.insert(id, std::mem::replace(key, VACANT));
                }
            }
        }
        self.spare = Some(page.keys);
    }

    /// Checks the bookkeeping; for tests (which never run out of memory, so
    /// no sparse page was kept for want of room in the overflow).
    #[cfg(test)]
    pub fn check(&self) {
        let mut live = 0;
        for (&p, page) in &self.pages {
            let n = page.keys.iter().filter(|&&k| k != VACANT).count();
            assert_eq!(n, page.live as usize);
            assert!(page.live >= PAGE_LIVE_MIN || self.newest == Some(p), "a sparse page is kept");
            live += n;
        }
        for &id in self.overflow.keys() {
            let (p, _) = self.locate(id).expect("an overflow id of this sequence");
            assert!(!self.pages.contains_key(&p), "id {id} in the overflow and its page present");
        }
        assert_eq!(live + self.overflow.len(), self.len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn finds_what_was_put_in() {
        let mut m = IdMap::new(1, 1);
        for id in 1..=5000 {
            m.insert(id, id as u32 * 10);
        }
        assert_eq!(m.get(1), Some(10));
        assert_eq!(m.get(5000), Some(50000));
        assert_eq!(m.get(5001), None);
        assert_eq!(m.get(0), None);
        m.check();
        for id in 1..=5000 {
            assert_eq!(m.remove(id), Some(id as u32 * 10));
        }
        assert_eq!(m.len(), 0);
        assert_eq!(m.remove(7), None);
        m.check();
    }

    #[test]
    fn ids_of_another_shard_are_never_found() {
        // Shard 1 of 4: ids 1, 5, 9, …
        let mut m = IdMap::new(1, 4);
        m.insert(5, 0);
        m.insert(9, 1);
        assert_eq!(m.get(5), Some(0));
        assert_eq!(m.get(6), None);
        assert_eq!(m.get(4), None);
        assert_eq!(m.remove(6), None);
        m.check();
    }

    #[test]
    fn one_old_job_does_not_pin_memory() {
        let mut m = IdMap::new(1, 1);
        m.insert(1, 0);
        // Two million ids pass by while job 1 stays, in a queue of about
        // one page.
        let mut oldest = 2;
        for id in 2..2_000_000u64 {
            m.insert(id, 1);
            if id - oldest >= PAGE_SLOTS as u64 {
                assert_eq!(m.remove(oldest), Some(1));
                oldest += 1;
            }
        }
        m.check();
        assert!(m.pages.len() <= 3, "{} pages", m.pages.len());
        assert!(m.overflow.len() < 2 * PAGE_SLOTS);
        assert_eq!(m.get(1), Some(0));
    }

    #[test]
    fn a_backlog_stays_in_its_pages_while_traffic_passes() {
        let mut m = IdMap::new(1, 1);
        let backlog = 20 * PAGE_SLOTS as u64;
        for id in 1..=backlog {
            m.insert(id, 0);
        }
        // Short-lived jobs, one at a time, for ten times as many ids.
        for id in backlog + 1..=11 * backlog {
            m.insert(id, 1);
            assert_eq!(m.remove(id), Some(1));
        }
        // A jump (ids used up by failed puts) changes nothing either.
        m.insert(1000 * backlog, 2);
        m.check();
        assert_eq!(m.len(), backlog as usize + 1);
        assert!(m.overflow.is_empty(), "{} jobs moved to the overflow", m.overflow.len());
        assert_eq!(m.pages.len(), 21);
    }

    #[test]
    fn the_overflow_gives_memory_back() {
        let mut m = IdMap::new(1, 1);
        let n = 50 * PAGE_SLOTS as u64;
        for id in 1..=n {
            m.insert(id, 0);
        }
        // Nine in ten go: every page but the newest turns sparse.
        for id in (1..=n).filter(|id| id % 10 != 0) {
            m.remove(id);
        }
        assert!(m.overflow.len() > 4 * PAGE_SLOTS);
        for id in (1..=n).filter(|id| id % 10 == 0) {
            m.remove(id);
        }
        m.check();
        assert_eq!(m.len(), 0);
        assert!(m.overflow.capacity() <= OVERFLOW_SHRINK_MIN * 2, "{}", m.overflow.capacity());
    }

    #[test]
    fn a_late_body_lands_in_the_overflow() {
        let mut m = IdMap::new(1, 1);
        for id in 2..=(10 * PAGE_SLOTS as u64) {
            m.insert(id, 1);
            m.remove(id);
        }
        // Id 1 was handed out first, but its put completes only now.
        m.insert(1, 7);
        assert_eq!(m.get(1), Some(7));
        m.check();
        assert_eq!(m.remove(1), Some(7));
        assert_eq!(m.len(), 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Insert the next id, `skip` ids later (failed puts use ids up).
        Insert { skip: u8 },
        /// Insert the oldest id handed out but not inserted yet.
        InsertLate,
        /// Remove the n-th live id (modulo the live count).
        Remove(usize),
        /// Remove a run of the oldest live ids.
        RemoveOldest(u16),
        /// Look up an id near the live range.
        Get(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0u8..3).prop_map(|skip| Op::Insert { skip }),
            1 => (200u8..=255).prop_map(|skip| Op::Insert { skip }),
            1 => Just(Op::InsertLate),
            4 => any::<usize>().prop_map(Op::Remove),
            1 => (1u16..2000).prop_map(Op::RemoveOldest),
            2 => (0u64..20_000).prop_map(Op::Get),
        ]
    }

    proptest! {
        #[test]
        fn behaves_like_a_hash_map(
            step in 1u64..4,
            ops in proptest::collection::vec(op(), 1..3000),
        ) {
            let first = step; // shard 0 of `step` shards starts at `step`
            let mut m = IdMap::new(first, step);
            let mut model = std::collections::BTreeMap::new();
            let mut next = first;
            let mut late = std::collections::VecDeque::new();
            let mut key = 0u32;
            for op in ops {
                match op {
                    Op::Insert { skip } => {
                        for _ in 0..skip {
                            late.push_back(next);
                            next += step;
                        }
                        // Some handed-out ids never become jobs.
                        late.truncate(4);
                        m.insert(next, key);
                        model.insert(next, key);
                        next += step;
                        key += 1;
                    }
                    Op::InsertLate => {
                        if let Some(id) = late.pop_front() {
                            m.insert(id, key);
                            model.insert(id, key);
                            key += 1;
                        }
                    }
                    Op::Remove(n) => {
                        if !model.is_empty() {
                            let id = *model.keys().nth(n % model.len()).unwrap();
                            prop_assert_eq!(m.remove(id), model.remove(&id));
                        }
                    }
                    Op::RemoveOldest(n) => {
                        for _ in 0..n {
                            let Some((&id, _)) = model.iter().next() else { break };
                            prop_assert_eq!(m.remove(id), model.remove(&id));
                        }
                    }
                    Op::Get(back) => {
                        let id = next.saturating_sub(back);
                        prop_assert_eq!(m.get(id), model.get(&id).copied());
                        prop_assert_eq!(m.get(id + 1), model.get(&(id + 1)).copied());
                    }
                }
                prop_assert_eq!(m.len(), model.len());
            }
            m.check();
            for (&id, &k) in &model {
                prop_assert_eq!(m.get(id), Some(k));
            }
        }
    }
}
