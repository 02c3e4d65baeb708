//! An indexed binary min-heap of slab keys.
//!
//! The heap stores only `u32` keys; the order and the back-pointers live in
//! the items themselves (a job's `(pri, id)` or `(deadline, id)`, a tube's
//! next timer), reached through a [`HeapOrder`]. Every move tells the item
//! its new position, so any item can be removed or re-ordered in O(log n)
//! given its position. This is beanstalkd's `setpos` design, and it keeps
//! one copy of each sort key instead of two.
//!
//! Invariant (checked in debug builds and by the tests): for every index
//! `i`, the item `keys[i]` records position `i`, and no child is less than
//! its parent.
//!
//! Room is made ahead of time and fallibly ([`IndexedHeap::try_reserve`]):
//! the engine reserves a place in every heap a job can enter when the job
//! is put, so moving jobs between heaps never allocates and cannot fail.

/// How heap items compare and where they record their position.
pub trait HeapOrder {
    /// Strict order: `a` comes out before `b`.
    fn less(&self, a: u32, b: u32) -> bool;
    /// Records that `key` now sits at `pos`.
    fn set_pos(&mut self, key: u32, pos: u32);
}

/// Position value for an item that is in no heap.
pub const NO_POS: u32 = u32::MAX;

/// The smallest room a heap is given, as a vector of `u32` would start.
const CAPACITY_MIN: usize = 4;

use super::keys::Keys;
use crate::memory::OutOfMemory;

#[derive(Debug, Default)]
pub struct IndexedHeap {
    keys: Keys,
}

impl IndexedHeap {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Items the heap holds without allocating.
    pub fn capacity(&self) -> usize {
        self.keys.capacity()
    }

    /// Makes room for `total` items in all, or refuses, changing nothing.
    /// The room doubles, as a vector's would; see `engine::keys` for why growing
    /// a large heap moves pages rather than bytes, and why room never used
    /// costs no memory (the engine reserves for every job a place in heaps
    /// it may never enter).
    #[inline]
    pub fn try_reserve(&mut self, total: usize) -> Result<(), OutOfMemory> {
        if total <= self.keys.capacity() { Ok(()) } else { self.grow(total) }
    }

    #[cold]
    fn grow(&mut self, total: usize) -> Result<(), OutOfMemory> {
        self.keys.try_reserve(total.max(2 * self.keys.capacity()).max(CAPACITY_MIN))
    }

    /// The least item, if any.
    pub fn peek(&self) -> Option<u32> {
        self.keys.first().copied()
    }

    pub fn push(&mut self, key: u32, order: &mut impl HeapOrder) {
        let pos = self.keys.len();
        assert!(pos < NO_POS as usize, "heap overflow");
        self.keys.push(key);
        order.set_pos(key, pos as u32);
        self.sift_up(pos, order);
    }

    /// Removes the item at `pos` and returns its key. The removed item's
    /// position is set to [`NO_POS`].
    pub fn remove(&mut self, pos: u32, order: &mut impl HeapOrder) -> u32 {
        let pos = pos as usize;
        assert!(pos < self.keys.len(), "heap position out of range");
        let key = self.keys.swap_remove(pos);
        order.set_pos(key, NO_POS);
        if pos < self.keys.len() {
            order.set_pos(self.keys[pos], pos as u32);
            // The moved item may belong above or below its new place.
            let pos = self.sift_up(pos, order);
            self.sift_down(pos, order);
        }
        key
    }

    pub fn pop(&mut self, order: &mut impl HeapOrder) -> Option<u32> {
        if self.keys.is_empty() { None } else { Some(self.remove(0, order)) }
    }

    /// Restores the order after the sort key of the item at `pos` changed.
    pub fn update(&mut self, pos: u32, order: &mut impl HeapOrder) {
        let pos = self.sift_up(pos as usize, order);
        self.sift_down(pos, order);
    }

    /// The keys in heap order (not sorted); for iteration and checks.
    pub fn keys(&self) -> &[u32] {
        &self.keys
    }

    fn sift_up(&mut self, mut pos: usize, order: &mut impl HeapOrder) -> usize {
        while pos > 0 {
            let parent = (pos - 1) / 2;
            if !order.less(self.keys[pos], self.keys[parent]) {
                break;
            }
            self.swap(pos, parent, order);
            pos = parent;
        }
        pos
    }

    fn sift_down(&mut self, mut pos: usize, order: &mut impl HeapOrder) {
        let len = self.keys.len();
        loop {
            let left = 2 * pos + 1;
            if left >= len {
                break;
            }
            let right = left + 1;
            let child = if right < len && order.less(self.keys[right], self.keys[left]) { right } else { left };
            if !order.less(self.keys[child], self.keys[pos]) {
                break;
            }
            self.swap(pos, child, order);
            pos = child;
        }
    }

    fn swap(&mut self, a: usize, b: usize, order: &mut impl HeapOrder) {
        self.keys.swap(a, b);
        order.set_pos(self.keys[a], a as u32);
        order.set_pos(self.keys[b], b as u32);
    }

    /// Checks the heap property and every back-pointer. Slow: for tests.
    pub fn check(&self, order: &impl HeapOrder, pos_of: impl Fn(u32) -> u32) {
        for (i, &key) in self.keys.iter().enumerate() {
            assert_eq!(pos_of(key), i as u32, "back-pointer of {key}");
            if i > 0 {
                assert!(!order.less(key, self.keys[(i - 1) / 2]), "heap order at {i}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Items are (value, id) pairs stored in a plain vector.
    struct Items {
        value: Vec<u64>,
        pos: Vec<u32>,
    }

    impl HeapOrder for Items {
        fn less(&self, a: u32, b: u32) -> bool {
            (self.value[a as usize], a) < (self.value[b as usize], b)
        }
        fn set_pos(&mut self, key: u32, pos: u32) {
            self.pos[key as usize] = pos;
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Push(u64),
        Pop,
        Remove(usize),
        Update(usize, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u64..50).prop_map(Op::Push),
            2 => Just(Op::Pop),
            2 => any::<usize>().prop_map(Op::Remove),
            1 => (any::<usize>(), 0u64..50).prop_map(|(i, v)| Op::Update(i, v)),
        ]
    }

    #[test]
    fn reserved_room_is_kept_and_growth_keeps_the_items() {
        let mut heap = IndexedHeap::default();
        let mut items = Items { value: Vec::new(), pos: Vec::new() };
        heap.try_reserve(3).unwrap();
        assert_eq!(heap.capacity(), CAPACITY_MIN);
        for v in [5, 1, 4] {
            items.value.push(v);
            items.pos.push(NO_POS);
            heap.push(items.value.len() as u32 - 1, &mut items);
        }
        heap.try_reserve(1000).unwrap();
        assert_eq!(heap.capacity(), 1000);
        heap.try_reserve(1001).unwrap();
        assert_eq!(heap.capacity(), 2000, "room doubles");
        heap.check(&items, |k| items.pos[k as usize]);
        assert_eq!(heap.pop(&mut items), Some(1));
        assert!(heap.try_reserve(usize::MAX / 2).is_err(), "an impossible reservation is refused");
        assert_eq!((heap.len(), heap.capacity()), (2, 2000), "and changes nothing");
    }

    proptest! {
        /// The heap always yields what a sorted set of (value, key) yields.
        #[test]
        fn behaves_like_a_sorted_set(ops in proptest::collection::vec(op(), 0..300)) {
            let mut heap = IndexedHeap::default();
            let mut items = Items { value: Vec::new(), pos: Vec::new() };
            let mut model = std::collections::BTreeSet::new();
            for op in ops {
                match op {
                    Op::Push(v) => {
                        let key = items.value.len() as u32;
                        items.value.push(v);
                        items.pos.push(NO_POS);
                        heap.push(key, &mut items);
                        model.insert((v, key));
                    }
                    Op::Pop => {
                        let got = heap.pop(&mut items);
                        let want = model.pop_first().map(|(_, k)| k);
                        prop_assert_eq!(got, want);
                    }
                    Op::Remove(i) if !model.is_empty() => {
                        let (v, key) = *model.iter().nth(i % model.len()).unwrap();
                        model.remove(&(v, key));
                        let removed = heap.remove(items.pos[key as usize], &mut items);
                        prop_assert_eq!(removed, key);
                        prop_assert_eq!(items.pos[key as usize], NO_POS);
                    }
                    Op::Update(i, nv) if !model.is_empty() => {
                        let (v, key) = *model.iter().nth(i % model.len()).unwrap();
                        model.remove(&(v, key));
                        items.value[key as usize] = nv;
                        model.insert((nv, key));
                        heap.update(items.pos[key as usize], &mut items);
                    }
                    _ => {}
                }
                heap.check(&items, |k| items.pos[k as usize]);
                prop_assert_eq!(heap.peek(), model.first().map(|&(_, k)| k));
                prop_assert_eq!(heap.len(), model.len());
            }
        }
    }
}
