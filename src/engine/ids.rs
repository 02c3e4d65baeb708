//! Job id → arena key.
//!
//! A shard hands out its ids as one arithmetic sequence (`first`,
//! `first + step`, …), so its live jobs sit in a window of sequence numbers
//! that slides forward as jobs come and go. The window is cut into pages of
//! [`PAGE`] slots holding arena keys: finding a job is two indexings and no
//! hashing, and adding one never rehashes. (A hash table of a million jobs
//! stalled every connection for tens of milliseconds each time it doubled.)
//! A full page costs 4 bytes per job.
//!
//! Jobs that outlive their neighbours would keep whole pages alive, so a
//! page left with fewer than [`SPARSE`] jobs hands them to a small hash
//! table, the overflow, and is freed; and when the window is mostly holes,
//! the oldest page goes to the overflow as well. Memory therefore follows
//! the live jobs, never the number of ids issued. A put whose body arrives
//! after its page is gone also lands in the overflow.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;

use super::KeyHasher;

const PAGE_BITS: u32 = 10;
/// Slots per page.
const PAGE: usize = 1 << PAGE_BITS;
/// A page other than the newest with fewer live jobs than this moves them
/// to the overflow. At PAGE / 8 a kept page costs at most 32 bytes per job.
const SPARSE: u32 = (PAGE / 8) as u32;
/// Holes allowed in the window beyond one per page.
const HOLES_SLACK: usize = 16;
const VACANT: u32 = u32::MAX;

type Slots = Box<[u32; PAGE]>;

struct Page {
    keys: Slots,
    live: u32,
}

pub struct IdMap {
    first: u64,
    step: u64,
    /// Page number of `pages[0]`.
    base: u64,
    /// The window; `None` is a page freed or handed to the overflow.
    pages: VecDeque<Option<Page>>,
    /// How many of `pages` are `Some`.
    present: usize,
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
            base: 0,
            pages: VecDeque::new(),
            present: 0,
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
        Some((seq >> PAGE_BITS, seq as usize & (PAGE - 1)))
    }

    /// The index in `pages` of page `p`, if it is inside the window.
    fn index(&self, p: u64) -> Option<usize> {
        let i = usize::try_from(p.checked_sub(self.base)?).ok()?;
        (i < self.pages.len()).then_some(i)
    }

    pub fn get(&self, id: u64) -> Option<u32> {
        let (p, slot) = self.locate(id)?;
        if let Some(Some(page)) = self.index(p).map(|i| &self.pages[i]) {
            let key = page.keys[slot];
            if key != VACANT {
                return Some(key);
            }
        }
        self.overflow.get(&id).copied()
    }

    /// Records `id` → `key`; `id` must be absent.
    pub fn insert(&mut self, id: u64, key: u32) {
        debug_assert_ne!(key, VACANT);
        debug_assert!(self.get(id).is_none(), "id {id} is already mapped");
        let (p, slot) = self.locate(id).expect("an id of this shard's sequence");
        if self.pages.is_empty() && p >= self.base {
            self.base = p;
        }
        let end = self.base + self.pages.len() as u64;
        if p >= end {
            // Ids only grow, so this is the newest page (after the holes
            // left by ids that never became jobs). The page that was newest
            // is now judged like the others.
            if let Some(Some(last)) = self.pages.back()
                && last.live < SPARSE
            {
                self.evict(self.pages.len() - 1);
            }
            for _ in end..p {
                self.pages.push_back(None);
            }
            let keys = self.spare.take().unwrap_or_else(|| Box::new([VACANT; PAGE]));
            self.pages.push_back(Some(Page { keys, live: 0 }));
            self.present += 1;
        }
        let page = self.index(p).and_then(|i| self.pages[i].as_mut());
        match page {
            Some(page) => {
                page.keys[slot] = key;
                page.live += 1;
            }
            None => {
                self.overflow.insert(id, key);
            }
        }
        self.len += 1;
        self.trim();
    }

    /// Forgets `id`; returns its key if it was there.
    pub fn remove(&mut self, id: u64) -> Option<u32> {
        let (p, slot) = self.locate(id)?;
        if let Some(i) = self.index(p)
            && let Some(page) = self.pages[i].as_mut()
            && page.keys[slot] != VACANT
        {
            let key = std::mem::replace(&mut page.keys[slot], VACANT);
            page.live -= 1;
            let live = page.live;
            self.len -= 1;
            // The newest page stays, even empty: new ids land there.
            if live < SPARSE && i + 1 < self.pages.len() {
                self.evict(i);
                self.trim();
            }
            return Some(key);
        }
        let key = self.overflow.remove(&id)?;
        self.len -= 1;
        Some(key)
    }

    /// Moves the live jobs of page `pages[i]` to the overflow and frees it.
    fn evict(&mut self, i: usize) {
        let Some(mut page) = self.pages[i].take() else {
            return;
        };
        self.present -= 1;
        if page.live > 0 {
            let first_seq = (self.base + i as u64) << PAGE_BITS;
            for (slot, key) in page.keys.iter_mut().enumerate() {
                if *key != VACANT {
                    let id = self.first + (first_seq + slot as u64) * self.step;
                    self.overflow.insert(id, std::mem::replace(key, VACANT));
                }
            }
        }
        self.spare = Some(page.keys);
    }

    /// Drops leading holes, and evicts the oldest pages while the window is
    /// mostly holes.
    fn trim(&mut self) {
        loop {
            match self.pages.front() {
                Some(None) => {
                    self.pages.pop_front();
                    self.base += 1;
                }
                Some(Some(_)) if self.pages.len() > 2 * self.present + HOLES_SLACK => self.evict(0),
                _ => break,
            }
        }
        if self.pages.capacity() > 64 && self.pages.len() < self.pages.capacity() / 4 {
            self.pages.shrink_to(self.pages.len() * 2);
        }
    }

    /// Checks the bookkeeping; for tests.
    #[cfg(test)]
    pub fn check(&self) {
        let mut live = 0;
        for (i, page) in self.pages.iter().enumerate() {
            if let Some(page) = page {
                let n = page.keys.iter().filter(|&&k| k != VACANT).count();
                assert_eq!(n, page.live as usize);
                assert!(page.live >= SPARSE || i + 1 == self.pages.len(), "a sparse page is kept");
                live += n;
            }
        }
        assert_eq!(self.present, self.pages.iter().filter(|p| p.is_some()).count());
        assert!(!matches!(self.pages.front(), Some(None)), "a leading hole");
        assert!(self.pages.len() <= 2 * self.present + HOLES_SLACK + 1, "too many holes");
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
            if id - oldest >= PAGE as u64 {
                assert_eq!(m.remove(oldest), Some(1));
                oldest += 1;
            }
        }
        m.check();
        assert!(m.pages.len() <= 4, "window of {} pages", m.pages.len());
        assert!(m.overflow.len() < 2 * PAGE);
        assert_eq!(m.get(1), Some(0));
    }

    #[test]
    fn a_late_body_lands_in_the_overflow() {
        let mut m = IdMap::new(1, 1);
        for id in 2..=(10 * PAGE as u64) {
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
