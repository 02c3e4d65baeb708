//! The array of keys behind a heap: a growable `[u32]` whose storage, once
//! it reaches [`MAP_BYTES_MIN`], is a mapping of its own that grows in
//! place or moves with `mremap`.
//!
//! A vector doubles by allocating twice the room, copying every key and
//! freeing the old room: with three million delayed jobs that was 8 MB
//! copied into 16 MB of fresh pages, faulted in one at a time, about 8 ms
//! during which every client waited, and the engine grows three heaps of
//! that size at once (it reserves room for every job in each heap a job can
//! enter). `mremap` moves the pages instead of the bytes, so growth costs
//! about the same at any size. And a room reserved but never written costs
//! no memory, whatever the allocator last did with the memory it hands
//! out: fresh pages of a mapping are untouched until a key is written
//! there.
//!
//! Growth is fallible ([`Keys::try_reserve`]) and a refusal changes nothing.
//!
//! # Invariants
//! `len <= cap`; the first `len` keys are initialised; storage is nothing
//! when `cap == 0`, an allocation of `cap` keys from the global allocator
//! when `cap` keys take less than [`MAP_BYTES_MIN`], else a mapping of
//! exactly `cap * 4` bytes, a multiple of the page size.

use std::alloc::{Layout, alloc, dealloc};
use std::ptr::NonNull;

use crate::memory::{self, OutOfMemory};

/// Storage of at least this many bytes is a mapping of its own (256K keys).
pub const MAP_BYTES_MIN: usize = 1 << 20;

const PAGE: usize = 4096;
const KEY_BYTES: usize = size_of::<u32>();

pub struct Keys {
    ptr: NonNull<u32>,
    len: usize,
    cap: usize,
}

// Unique ownership of plain integers, as a Vec<u32> would have.
unsafe impl Send for Keys {}
unsafe impl Sync for Keys {}

impl Default for Keys {
    fn default() -> Keys {
        Keys { ptr: NonNull::dangling(), len: 0, cap: 0 }
    }
}

fn is_mapped(cap: usize) -> bool {
    cap * KEY_BYTES >= MAP_BYTES_MIN
}

fn layout(cap: usize) -> Layout {
    // Cannot fail: the capacity stays below MAP_BYTES_MIN / 4 here.
    Layout::array::<u32>(cap).expect("keys layout")
}

impl Keys {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keys held without growing.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Makes room for at least `cap` keys in all, or refuses, changing
    /// nothing.
    pub fn try_reserve(&mut self, cap: usize) -> Result<(), OutOfMemory> {
        if cap <= self.cap {
            return Ok(());
        }
        if memory::injected_failure() {
            return Err(OutOfMemory);
        }
        let bytes = cap.checked_mul(KEY_BYTES).ok_or(OutOfMemory)?;
        if bytes >= MAP_BYTES_MIN {
            self.grow_mapped(bytes.checked_next_multiple_of(PAGE).ok_or(OutOfMemory)?)
        } else {
            self.grow_allocated(cap)
        }
    }

    /// Moves to (or grows) a mapping of `bytes`, a multiple of the page.
    fn grow_mapped(&mut self, bytes: usize) -> Result<(), OutOfMemory> {
        let p = if is_mapped(self.cap) {
            // Safety: the current storage is a mapping of exactly
            // cap * 4 bytes; MREMAP_MAYMOVE keeps its contents.
            unsafe { libc::mremap(self.ptr.as_ptr().cast(), self.cap * KEY_BYTES, bytes, libc::MREMAP_MAYMOVE) }
        } else {
            let prot = libc::PROT_READ | libc::PROT_WRITE;
            let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
            // Safety: a new anonymous mapping, placed by the kernel.
            let p = unsafe { libc::mmap(std::ptr::null_mut(), bytes, prot, flags, -1, 0) };
            if p != libc::MAP_FAILED {
                // Safety: both hold at least `len` keys and do not overlap;
                // the old storage is no longer referred to after this.
                unsafe {
                    std::ptr::copy_nonoverlapping(self.ptr.as_ptr(), p.cast::<u32>(), self.len);
                    self.free();
                }
            }
            p
        };
        if p == libc::MAP_FAILED {
            return Err(OutOfMemory);
        }
        self.ptr = NonNull::new(p.cast()).expect("a mapping is never at address 0");
        self.cap = bytes / KEY_BYTES;
        Ok(())
    }

    /// Moves to a larger allocation of `cap` keys (below a mapping's size).
    fn grow_allocated(&mut self, cap: usize) -> Result<(), OutOfMemory> {
        // Safety: a non-zero layout (cap > self.cap >= 0).
        let p = memory::fallible(|| unsafe { alloc(layout(cap)) }).cast::<u32>();
        let p = NonNull::new(p).ok_or(OutOfMemory)?;
        // Safety: both hold at least `len` keys and do not overlap; the old
        // storage is no longer referred to after this.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr(), p.as_ptr(), self.len);
            self.free();
        }
        self.ptr = p;
        self.cap = cap;
        Ok(())
    }

    /// Releases the storage.
    ///
    /// # Safety
    /// Nothing may refer to it afterwards (the caller replaces `ptr`).
    unsafe fn free(&mut self) {
        if self.cap == 0 {
            return;
        }
        if is_mapped(self.cap) {
            // Safety: a mapping of exactly cap * 4 bytes, the caller's
            // promise that it is unused from now on.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.cap * KEY_BYTES) };
        } else {
            // Safety: allocated with this layout.
            unsafe { dealloc(self.ptr.as_ptr().cast(), layout(self.cap)) };
        }
    }

    /// Appends a key. Grows (infallibly) only when no room was reserved.
    pub fn push(&mut self, key: u32) {
        if self.len == self.cap {
            let cap = (2 * self.cap).max(4);
            if self.try_reserve(cap).is_err() {
                std::alloc::handle_alloc_error(layout(cap.min(MAP_BYTES_MIN / KEY_BYTES)));
            }
        }
        // Safety: len < cap, so the slot lies within the storage.
        unsafe { self.ptr.as_ptr().add(self.len).write(key) };
        self.len += 1;
    }

    /// Removes the key at `i`, moving the last one into its place.
    pub fn swap_remove(&mut self, i: usize) -> u32 {
        let last = self.len - 1;
        self.swap(i, last);
        self.len = last;
        // Safety: `last` was initialised and is now past the end.
        unsafe { self.ptr.as_ptr().add(last).read() }
    }
}

impl std::ops::Deref for Keys {
    type Target = [u32];

    fn deref(&self) -> &[u32] {
        // Safety: the first `len` keys are initialised.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for Keys {
    fn deref_mut(&mut self) -> &mut [u32] {
        // Safety: as above, and borrowed uniquely.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        // Safety: the keys go with it.
        unsafe { self.free() }
    }
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_from_nothing_to_a_mapping_and_keeps_every_key() {
        let mut keys = Keys::default();
        assert!(keys.is_empty());
        let n = 3 * MAP_BYTES_MIN / KEY_BYTES;
        for i in 0..n as u32 {
            keys.push(i);
        }
        assert!(is_mapped(keys.capacity()));
        assert_eq!(keys.len(), n);
        assert!(keys.iter().enumerate().all(|(i, &k)| k == i as u32));
        keys.try_reserve(4 * n).unwrap();
        assert_eq!(keys.capacity(), 4 * n, "a mapping grows to the page, here exactly");
        assert_eq!(keys[n - 1], n as u32 - 1);
        assert_eq!(keys.swap_remove(0), 0);
        assert_eq!(keys[0], n as u32 - 1);
        assert_eq!(keys.len(), n - 1);
        keys.swap(1, 2);
        assert_eq!(&keys[1..3], &[2, 1]);
    }

    #[test]
    fn a_refused_growth_changes_nothing() {
        let mut keys = Keys::default();
        keys.push(7);
        assert!(keys.try_reserve(usize::MAX / 2).is_err());
        memory::fail_for_test(0, 1);
        assert!(keys.try_reserve(1000).is_err());
        assert_eq!((keys.len(), keys.capacity(), keys[0]), (1, 4, 7));
        keys.try_reserve(1000).unwrap();
        assert_eq!((keys.len(), keys.capacity(), keys[0]), (1, 1000, 7));
    }
}
