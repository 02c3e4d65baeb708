//! A slab in fixed-size chunks, for jobs.
//!
//! `slab::Slab` keeps its entries in one vector, which doubles as it
//! grows: filling a server with a million jobs copies hundreds of
//! megabytes at each doubling, stalls every connection while it does, and
//! leaves the slack of the last doubling unused. Here entries live in
//! chunks of [`CHUNK`] slots that never move, so growth is one chunk
//! allocation, keys are stable, and no memory is wasted beyond the last
//! chunk. Freed keys are reused, most recent first.

const CHUNK_BITS: u32 = 10;
/// Slots per chunk.
pub const CHUNK: usize = 1 << CHUNK_BITS;

pub struct Arena<T> {
    chunks: Vec<Box<[Option<T>]>>,
    /// Keys of vacant slots below `high`.
    free: Vec<u32>,
    /// Slots ever used: keys `0..high`.
    high: u32,
    len: usize,
}

impl<T> Default for Arena<T> {
    fn default() -> Arena<T> {
        Arena { chunks: Vec::new(), free: Vec::new(), high: 0, len: 0 }
    }
}

impl<T> Arena<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stores `value` and returns its key.
    pub fn insert(&mut self, value: T) -> u32 {
        let key = match self.free.pop() {
            Some(key) => key,
            None => {
                let key = self.high;
                assert!(key < u32::MAX, "arena full");
                if key as usize == self.chunks.len() * CHUNK {
                    self.chunks.push((0..CHUNK).map(|_| None).collect());
                }
                self.high += 1;
                key
            }
        };
        let slot = self.slot_mut(key);
        debug_assert!(slot.is_none());
        *slot = Some(value);
        self.len += 1;
        key
    }

    /// Takes the value out; panics if the slot is vacant.
    pub fn remove(&mut self, key: u32) -> T {
        let value = self.slot_mut(key).take().expect("removing a vacant arena slot");
        self.free.push(key);
        self.len -= 1;
        value
    }

    pub fn get(&self, key: u32) -> Option<&T> {
        self.chunks.get((key >> CHUNK_BITS) as usize)?[key as usize & (CHUNK - 1)].as_ref()
    }

    /// Occupied slots and their keys, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.chunks
            .iter()
            .flat_map(|chunk| chunk.iter())
            .enumerate()
            .filter_map(|(key, slot)| slot.as_ref().map(|value| (key as u32, value)))
    }

    fn slot_mut(&mut self, key: u32) -> &mut Option<T> {
        &mut self.chunks[(key >> CHUNK_BITS) as usize][key as usize & (CHUNK - 1)]
    }
}

impl<T> std::ops::Index<u32> for Arena<T> {
    type Output = T;

    fn index(&self, key: u32) -> &T {
        self.chunks[(key >> CHUNK_BITS) as usize][key as usize & (CHUNK - 1)].as_ref().expect("vacant arena slot")
    }
}

impl<T> std::ops::IndexMut<u32> for Arena<T> {
    fn index_mut(&mut self, key: u32) -> &mut T {
        self.slot_mut(key).as_mut().expect("vacant arena slot")
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
        assert!(a.get(7).is_none());
        assert_eq!(a.insert(99), 7);
        assert_eq!(a.insert(98), 1500);
        assert_eq!(a.insert(97), 3000);
        assert_eq!(a[2999], 2999);
        a[2999] = 5;
        assert_eq!(a.iter().filter(|&(_, &v)| v == 5).count(), 2);
        assert_eq!(a.iter().count(), a.len());
    }
}
