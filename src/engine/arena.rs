//! Slabs that can refuse to grow: [`Arena`], in fixed-size chunks, for
//! jobs, and [`Slots`], one vector, for tubes, clients and sessions.
//!
//! `slab::Slab` keeps its entries in one vector, which doubles as it
//! grows: filling a server with a million jobs copies hundreds of
//! megabytes at each doubling, stalls every connection while it does, and
//! leaves the slack of the last doubling unused; and its growth cannot
//! fail into a reply. Here entries live in chunks of [`CHUNK`] slots that
//! never move, so growth is one chunk allocation, which can be made ahead
//! of time and refused ([`Arena::try_reserve`]), keys are stable, and no
//! memory is wasted beyond the last chunk.
//!
//! Freed keys are reused, most recent first, through a list threaded
//! through the vacant slots themselves: freeing never allocates, so a
//! delete cannot fail for want of memory.
//!
//! There are far fewer tubes, clients and sessions than jobs, and the
//! engine looks them up on every command, so they live in [`Slots`]: one
//! vector, found by one index, grown by doubling (fallibly).
//!
//! # Invariants
//! A chunk's slots are created as they are first used (its capacity is
//! allocated at once, exactly, and never grows), so a fresh chunk costs
//! memory only as it fills. Keys `0..high` name created slots; the free
//! list links every vacant one among them.

use crate::memory::{self, OutOfMemory};

const CHUNK_BITS: u32 = 10;
/// Slots per chunk.
pub const CHUNK: usize = 1 << CHUNK_BITS;

/// End of the free list.
const NO_KEY: u32 = u32::MAX;

enum Slot<T> {
    Occupied(T),
    /// Vacant; the next key of the free list.
    Vacant(u32),
}

pub struct Arena<T> {
    chunks: Vec<Vec<Slot<T>>>,
    /// The most recently freed key, or NO_KEY.
    free: u32,
    /// Slots ever created: keys `0..high`.
    high: u32,
    len: usize,
}

impl<T> Default for Arena<T> {
    fn default() -> Arena<T> {
        Arena { chunks: Vec::new(), free: NO_KEY, high: 0, len: 0 }
    }
}

impl<T> Arena<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Makes sure that the next [`Arena::insert`] will not allocate.
    #[inline]
    pub fn try_reserve(&mut self) -> Result<(), OutOfMemory> {
        if self.free != NO_KEY || (self.high as usize) < self.chunks.len() * CHUNK {
            return Ok(());
        }
        self.add_chunk()
    }

    #[cold]
    fn add_chunk(&mut self) -> Result<(), OutOfMemory> {
        assert!(self.high < NO_KEY, "arena full");
        memory::try_reserve(&mut self.chunks, 1)?;
        let mut chunk = Vec::new();
        memory::try_reserve_exact(&mut chunk, CHUNK)?;
        self.chunks.push(chunk);
        Ok(())
    }

    /// The key the next [`Arena::insert`] will return.
    pub fn next_key(&self) -> u32 {
        if self.free != NO_KEY { self.free } else { self.high }
    }

    /// Stores `value` and returns its key. Allocates (infallibly) only
    /// when no room was reserved.
    pub fn insert(&mut self, value: T) -> u32 {
        if self.free != NO_KEY {
            let key = self.free;
            let slot = self.slot_mut(key);
            let Slot::Vacant(next) = *slot else { unreachable!("an occupied slot on the free list") };
            *slot = Slot::Occupied(value);
            self.free = next;
            self.len += 1;
            return key;
        }
        let key = self.high;
        assert!(key < NO_KEY, "arena full");
        if key as usize == self.chunks.len() * CHUNK {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        self.chunks[(key >> CHUNK_BITS) as usize].push(Slot::Occupied(value));
        self.high += 1;
        self.len += 1;
        key
    }

    /// Takes the value out; panics if the slot is vacant.
    pub fn remove(&mut self, key: u32) -> T {
        let free = self.free;
        let slot = self.slot_mut(key);
        match std::mem::replace(slot, Slot::Vacant(free)) {
            Slot::Occupied(value) => {
                self.free = key;
                self.len -= 1;
                value
            }
            Slot::Vacant(next) => {
                *slot = Slot::Vacant(next);
                panic!("removing a vacant arena slot");
            }
        }
    }

    pub fn get(&self, key: u32) -> Option<&T> {
        match self.chunks.get((key >> CHUNK_BITS) as usize)?.get(key as usize & (CHUNK - 1))? {
            Slot::Occupied(value) => Some(value),
            Slot::Vacant(_) => None,
        }
    }

    /// Occupied slots and their keys, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.chunks.iter().flat_map(|chunk| chunk.iter()).enumerate().filter_map(|(key, slot)| match slot {
            Slot::Occupied(value) => Some((key as u32, value)),
            Slot::Vacant(_) => None,
        })
    }

    fn slot_mut(&mut self, key: u32) -> &mut Slot<T> {
        &mut self.chunks[(key >> CHUNK_BITS) as usize][key as usize & (CHUNK - 1)]
    }
}

impl<T> std::ops::Index<u32> for Arena<T> {
    type Output = T;

    fn index(&self, key: u32) -> &T {
        match &self.chunks[(key >> CHUNK_BITS) as usize][key as usize & (CHUNK - 1)] {
            Slot::Occupied(value) => value,
            Slot::Vacant(_) => panic!("vacant arena slot"),
        }
    }
}

impl<T> std::ops::IndexMut<u32> for Arena<T> {
    fn index_mut(&mut self, key: u32) -> &mut T {
        match self.slot_mut(key) {
            Slot::Occupied(value) => value,
            Slot::Vacant(_) => panic!("vacant arena slot"),
        }
    }
}

/// A slab in one vector, whose growth can be refused ([`Slots::try_reserve`]);
/// freed keys are reused most recent first, through the vacant slots.
pub struct Slots<T> {
    slots: Vec<Slot<T>>,
    /// The most recently freed key, or NO_KEY.
    free: u32,
    len: usize,
}

impl<T> Default for Slots<T> {
    fn default() -> Slots<T> {
        Slots { slots: Vec::new(), free: NO_KEY, len: 0 }
    }
}

impl<T> Slots<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Makes sure that the next [`Slots::insert`] will not allocate.
    #[inline]
    pub fn try_reserve(&mut self) -> Result<(), OutOfMemory> {
        if self.free != NO_KEY || self.slots.len() < self.slots.capacity() {
            return Ok(());
        }
        assert!(self.slots.len() < NO_KEY as usize, "slab full");
        memory::try_reserve(&mut self.slots, 1)
    }

    /// The key the next [`Slots::insert`] will return.
    pub fn next_key(&self) -> u32 {
        if self.free != NO_KEY { self.free } else { self.slots.len() as u32 }
    }

    /// Stores `value` and returns its key. Allocates (infallibly) only
    /// when no room was reserved.
    pub fn insert(&mut self, value: T) -> u32 {
        self.len += 1;
        if self.free != NO_KEY {
            let key = self.free;
            let slot = &mut self.slots[key as usize];
            let Slot::Vacant(next) = *slot else { unreachable!("an occupied slot on the free list") };
            *slot = Slot::Occupied(value);
            self.free = next;
            return key;
        }
        let key = self.slots.len();
        assert!(key < NO_KEY as usize, "slab full");
        self.slots.push(Slot::Occupied(value));
        key as u32
    }

    /// Takes the value out; panics if the slot is vacant.
    pub fn remove(&mut self, key: u32) -> T {
        let free = self.free;
        let slot = &mut self.slots[key as usize];
        match std::mem::replace(slot, Slot::Vacant(free)) {
            Slot::Occupied(value) => {
                self.free = key;
                self.len -= 1;
                value
            }
            Slot::Vacant(next) => {
                *slot = Slot::Vacant(next);
                panic!("removing a vacant slot");
            }
        }
    }

    pub fn get(&self, key: u32) -> Option<&T> {
        match self.slots.get(key as usize)? {
            Slot::Occupied(value) => Some(value),
            Slot::Vacant(_) => None,
        }
    }

    pub fn get_mut(&mut self, key: u32) -> Option<&mut T> {
        match self.slots.get_mut(key as usize)? {
            Slot::Occupied(value) => Some(value),
            Slot::Vacant(_) => None,
        }
    }

    pub fn contains(&self, key: u32) -> bool {
        self.get(key).is_some()
    }

    /// Occupied slots and their keys, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.slots.iter().enumerate().filter_map(|(key, slot)| match slot {
            Slot::Occupied(value) => Some((key as u32, value)),
            Slot::Vacant(_) => None,
        })
    }
}

impl<T> std::ops::Index<usize> for Slots<T> {
    type Output = T;

    fn index(&self, key: usize) -> &T {
        match &self.slots[key] {
            Slot::Occupied(value) => value,
            Slot::Vacant(_) => panic!("vacant slot"),
        }
    }
}

impl<T> std::ops::IndexMut<usize> for Slots<T> {
    fn index_mut(&mut self, key: usize) -> &mut T {
        match &mut self.slots[key] {
            Slot::Occupied(value) => value,
            Slot::Vacant(_) => panic!("vacant slot"),
        }
    }
}

impl<T> std::ops::Index<u32> for Slots<T> {
    type Output = T;

    fn index(&self, key: u32) -> &T {
        &self[key as usize]
    }
}

impl<T> std::ops::IndexMut<u32> for Slots<T> {
    fn index_mut(&mut self, key: u32) -> &mut T {
        &mut self[key as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_reused() {
        let mut a = Arena::default();
        let keys: Vec<u32> = (0..3000u32).map(|i| a.insert(i)).collect();
        assert_eq!(keys, (0..3000).collect::<Vec<_>>());
        assert_eq!(a.remove(1500), 1500);
        assert_eq!(a.remove(7), 7);
        assert_eq!(a.len(), 2998);
        assert!(a.get(7).is_none() && a.get(1500).is_none());
        assert_eq!(a.next_key(), 7);
        assert_eq!(a.insert(99), 7);
        assert_eq!(a.insert(98), 1500);
        assert_eq!(a.insert(97), 3000);
        assert_eq!(a[2999u32], 2999);
        a[2999u32] = 5;
        a[0u32] = 5;
        assert_eq!(a.iter().filter(|&(_, &v)| v == 5).count(), 3);
        assert_eq!(a.iter().count(), a.len());
        assert!(a.get(1 << 20).is_none());
    }

    #[test]
    fn reserving_makes_room_for_exactly_the_next_insert() {
        let mut a: Arena<u64> = Arena::default();
        a.try_reserve().unwrap();
        assert_eq!((a.chunks.len(), a.chunks[0].capacity(), a.chunks[0].len()), (1, CHUNK, 0));
        for i in 0..CHUNK as u64 {
            a.try_reserve().unwrap();
            assert_eq!(a.insert(i), i as u32);
        }
        assert_eq!(a.chunks.len(), 1, "a full chunk asks for the next one only when it is needed");
        a.try_reserve().unwrap();
        assert_eq!(a.chunks.len(), 2);
        a.remove(3);
        a.try_reserve().unwrap();
        assert_eq!(a.chunks.len(), 2, "a freed key needs no new chunk");
        assert_eq!(a.insert(7), 3);
    }

    #[test]
    fn slots_reuse_keys_and_refuse_to_grow_without_changing() {
        let mut s: Slots<String> = Slots::default();
        s.try_reserve().unwrap();
        assert_eq!(s.next_key(), 0);
        let a = s.insert("a".into());
        let b = s.insert("b".into());
        assert_eq!((a, b, s.len()), (0, 1, 2));
        assert_eq!(s.remove(a), "a");
        assert!(!s.contains(a) && s.get(a).is_none());
        assert_eq!(s.next_key(), a);
        assert_eq!(s.insert("c".into()), a);
        s[b] = "B".into();
        assert_eq!(s.iter().map(|(k, v)| (k, v.as_str())).collect::<Vec<_>>(), vec![(0, "c"), (1, "B")]);
        while s.slots.len() < s.slots.capacity() {
            s.insert("x".into());
        }
        let before = (s.len(), s.slots.capacity());
        crate::memory::fail_for_test(0, 1);
        assert!(s.try_reserve().is_err());
        assert_eq!((s.len(), s.slots.capacity()), before);
        s.try_reserve().unwrap();
        assert!(s.slots.capacity() > before.1);
    }

    #[test]
    fn a_slot_is_no_larger_than_its_value() {
        assert_eq!(size_of::<Slot<super::super::job::Job>>(), size_of::<super::super::job::Job>());
    }
}
