//! A column: one value per arena key, in pages allocated on first use.
//!
//! Fields that few jobs ever set (a job's release delay and counters, and
//! later the log segment of its latest record) would cost every job if they
//! lived in the job. A hash table beside the arena costs only the jobs that
//! have them, but it grows by doubling: with three million delayed jobs,
//! each doubling rehashed and copied a hundred megabytes while every client
//! waited. A column instead cuts the key space into pages of
//! [`PAGE_SLOTS`] values, the arena's chunk size, found by indexing a small
//! directory: a value is reached in two loads, a page is allocated the
//! first time a value in it is set and freed when its last one is cleared,
//! and growth never moves anything but the directory, at 24 bytes per page.
//!
//! A value equal to `T::default()` is "not set": reading a key whose page
//! is absent gives the default, and a page whose values are all default
//! again is freed.
//!
//! # Invariants
//! Each page counts its values that differ from the default, exactly; a
//! page is present only while that count is above zero, or after
//! [`Column::try_reserve`] made room for a value about to be set.

use super::arena::CHUNK;
use crate::memory::{self, OutOfMemory};

/// Values per page: the arena's chunk size, so the jobs of one arena chunk
/// share a page.
pub const PAGE_SLOTS: usize = CHUNK;
const PAGE_BITS: u32 = PAGE_SLOTS.trailing_zeros();

struct Page<T> {
    /// Values that differ from the default.
    set: u32,
    values: Box<[T]>,
}

pub struct Column<T> {
    pages: Vec<Option<Page<T>>>,
}

impl<T> Default for Column<T> {
    fn default() -> Column<T> {
        Column { pages: Vec::new() }
    }
}

impl<T: Copy + Default + PartialEq> Column<T> {
    /// The value at `key` (the default if it was never set).
    pub fn get(&self, key: u32) -> T {
        match self.pages.get((key >> PAGE_BITS) as usize) {
            Some(Some(page)) => page.values[key as usize & (PAGE_SLOTS - 1)],
            _ => T::default(),
        }
    }

    /// Makes sure that setting the value at `key` will not allocate.
    pub fn try_reserve(&mut self, key: u32) -> Result<(), OutOfMemory> {
        let p = (key >> PAGE_BITS) as usize;
        if self.pages.len() <= p {
            let more = p + 1 - self.pages.len();
            memory::try_reserve(&mut self.pages, more)?;
            self.pages.resize_with(p + 1, || None);
        }
        if self.pages[p].is_none() {
            let mut values = Vec::new();
            memory::try_reserve_exact(&mut values, PAGE_SLOTS)?;
            values.resize(PAGE_SLOTS, T::default());
            self.pages[p] = Some(Page { set: 0, values: values.into_boxed_slice() });
        }
        Ok(())
    }

    /// Changes the value at `key` with `f`, allocating its page if needed;
    /// refuses, changing nothing, when that page cannot be had.
    pub fn update(&mut self, key: u32, f: impl FnOnce(&mut T)) -> Result<(), OutOfMemory> {
        self.try_reserve(key)?;
        let p = (key >> PAGE_BITS) as usize;
        let page = self.pages[p].as_mut().expect("reserved above");
        let value = &mut page.values[key as usize & (PAGE_SLOTS - 1)];
        let was_set = *value != T::default();
        f(value);
        let is_set = *value != T::default();
        match (was_set, is_set) {
            (false, true) => page.set += 1,
            (true, false) => page.set -= 1,
            _ => {}
        }
        if page.set == 0 {
            self.pages[p] = None;
        }
        Ok(())
    }

    /// Resets the value at `key` to the default; never allocates.
    pub fn clear(&mut self, key: u32) {
        let p = (key >> PAGE_BITS) as usize;
        let Some(Some(page)) = self.pages.get_mut(p) else {
            return;
        };
        let value = &mut page.values[key as usize & (PAGE_SLOTS - 1)];
        if *value != T::default() {
            *value = T::default();
            page.set -= 1;
        }
        if page.set == 0 {
            self.pages[p] = None;
        }
    }

    /// Pages allocated now.
    pub fn pages(&self) -> usize {
        self.pages.iter().filter(|p| p.is_some()).count()
    }

    /// Checks every page's count; for tests.
    #[cfg(test)]
    pub fn check(&self) {
        for page in self.pages.iter().flatten() {
            let set = page.values.iter().filter(|&&v| v != T::default()).count();
            assert_eq!(set, page.set as usize, "count of set values");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn unset_values_read_as_default_and_cost_nothing() {
        let mut c: Column<u32> = Column::default();
        assert_eq!(c.get(5), 0);
        assert_eq!(c.get(u32::MAX), 0);
        c.update(3000, |v| *v = 7).unwrap();
        assert_eq!((c.get(3000), c.get(3001), c.get(5)), (7, 0, 0));
        assert_eq!(c.pages(), 1);
        c.clear(3000);
        assert_eq!(c.get(3000), 0);
        assert_eq!(c.pages(), 0, "an emptied page is freed");
        c.clear(1 << 30);
        c.check();
    }

    #[test]
    fn a_page_lives_while_any_value_in_it_is_set() {
        let mut c: Column<u16> = Column::default();
        c.update(1, |v| *v = 1).unwrap();
        c.update(2, |v| *v = 2).unwrap();
        c.update(2, |v| *v = 0).unwrap();
        assert_eq!(c.pages(), 1);
        c.update(1, |v| *v -= 1).unwrap();
        assert_eq!(c.pages(), 0);
        // A reserved page stays until a value in it is set and cleared.
        c.try_reserve(9).unwrap();
        assert_eq!(c.pages(), 1);
        c.update(9, |v| *v = 3).unwrap();
        c.clear(9);
        assert_eq!(c.pages(), 0);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Set(u32, u8),
        Add(u32),
        Clear(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        let key = prop_oneof![0u32..3000, 0u32..40];
        prop_oneof![
            3 => (key.clone(), 0u8..3).prop_map(|(k, v)| Op::Set(k, v)),
            2 => key.clone().prop_map(Op::Add),
            2 => key.prop_map(Op::Clear),
        ]
    }

    proptest! {
        #[test]
        fn behaves_like_a_map_with_defaults(ops in proptest::collection::vec(op(), 0..400)) {
            let mut c: Column<u8> = Column::default();
            let mut model = std::collections::HashMap::new();
            for op in ops {
                match op {
                    Op::Set(k, v) => {
                        c.update(k, |x| *x = v).unwrap();
                        model.insert(k, v);
                    }
                    Op::Add(k) => {
                        c.update(k, |x| *x = x.wrapping_add(1)).unwrap();
                        let m = model.entry(k).or_insert(0);
                        *m = m.wrapping_add(1);
                    }
                    Op::Clear(k) => {
                        c.clear(k);
                        model.remove(&k);
                    }
                }
                c.check();
            }
            for k in 0..3000 {
                prop_assert_eq!(c.get(k), model.get(&k).copied().unwrap_or(0));
            }
            let live_pages: std::collections::HashSet<u32> =
                model.iter().filter(|&(_, &v)| v != 0).map(|(&k, _)| k >> PAGE_BITS).collect();
            prop_assert_eq!(c.pages(), live_pages.len());
        }
    }
}
