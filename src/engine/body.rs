//! Job bodies: immutable, reference-counted byte strings in one allocation.
//!
//! The bytes stored are the body alone: the CRLF that follows it on the wire
//! is checked on the way in and added on the way out, and not storing it
//! keeps a 100-byte body in mimalloc's 112-byte size class instead of the
//! 128-byte one.
//!
//! A body is shared between the job and every reply that is still being
//! written (a RESERVED or FOUND reply holds the body, not a copy, and the
//! job may be deleted before the write completes). `Arc<[u8]>` would do, but
//! it costs a 16-byte pointer in every job, a 16-byte header in every
//! allocation, and it cannot be allocated fallibly; a 1 GiB put must earn
//! OUT_OF_MEMORY, not abort the server. So a body is one allocation of an
//! 8-byte header (reference count, length) followed by the bytes, reached
//! through one thin pointer.
//!
//! Bodies are filled once, through a [`BodyBuilder`] that owns the
//! allocation alone, and only a completely filled builder becomes a
//! [`Body`]; no uninitialised byte is ever read.

use std::alloc::{Layout, alloc, dealloc};
use std::cell::Cell;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering, fence};

use crate::memory;

#[repr(C)]
struct Header {
    refs: AtomicU32,
    /// Bytes after the header.
    len: u32,
}

/// Largest body: the 1 GiB job limit.
pub const BODY_BYTES_MAX: usize = 1 << 30;

fn layout(len: usize) -> Layout {
    // Cannot fail: len is bounded by BODY_BYTES_MAX.
    Layout::from_size_align(size_of::<Header>() + len, align_of::<Header>()).expect("body layout")
}

/// Bodies at least this large (with their header) get a mapping of their
/// own from the kernel, which goes back to it when the body is freed. The
/// allocator would keep the memory for reuse: after a 200 MB job was
/// deleted, the server stayed 200 MB larger.
const MAP_BYTES_MIN: usize = 1 << 20;

/// Memory for the header and `len` bytes; null when there is none. A
/// failure here earns OUT_OF_MEMORY: it never spends the allocator's
/// reserve (see [`crate::memory`]).
fn allocate(len: usize) -> *mut Header {
    if memory::injected_failure() {
        return std::ptr::null_mut();
    }
    let size = size_of::<Header>() + len;
    if size < MAP_BYTES_MIN {
        // Safety: the layout has a non-zero size (the header).
        return memory::fallible(|| unsafe { alloc(layout(len)) }).cast();
    }
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    // Safety: a new anonymous mapping, placed by the kernel.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), size, prot, flags, -1, 0) };
    if p == libc::MAP_FAILED {
        return std::ptr::null_mut();
    }
    memory::mapped(size);
    p.cast()
}

/// Frees what [`allocate`] gave for `len` bytes.
///
/// # Safety
/// `ptr` came from `allocate(len)` and nothing refers to it any more.
unsafe fn free(ptr: *mut Header, len: usize) {
    let size = size_of::<Header>() + len;
    if size < MAP_BYTES_MIN {
        // Safety: allocated with this layout (the caller's promise).
        unsafe { dealloc(ptr.cast(), layout(len)) };
    } else {
        // Safety: the whole mapping, unused from now on.
        unsafe { libc::munmap(ptr.cast(), size) };
        memory::unmapped(size);
    }
}

/// A job body (without the CRLF that follows it on the wire). Cloning
/// shares it.
pub struct Body {
    ptr: NonNull<Header>,
}

// The bytes are immutable once a Body exists and the count is atomic.
unsafe impl Send for Body {}
unsafe impl Sync for Body {}

impl Body {
    /// Copies a complete body. Panics when the allocation fails; for tests
    /// and small bodies.
    pub fn from_slice(bytes: &[u8]) -> Body {
        let mut builder = BodyBuilder::try_new(bytes.len()).expect("body allocation");
        builder.fill(bytes);
        builder.finish()
    }

    /// The body's bytes.
    pub fn bytes(&self) -> &[u8] {
        // Safety: a Body exists only for fully written allocations, which
        // live as long as any Body refers to them.
        unsafe {
            let len = self.ptr.as_ref().len as usize;
            std::slice::from_raw_parts(self.ptr.as_ptr().cast::<u8>().add(size_of::<Header>()), len)
        }
    }

    pub fn len(&self) -> usize {
        self.header().len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn header(&self) -> &Header {
        // Safety: the allocation outlives every Body that refers to it.
        unsafe { self.ptr.as_ref() }
    }
}

impl Clone for Body {
    fn clone(&self) -> Body {
        let old = self.header().refs.fetch_add(1, Ordering::Relaxed);
        // A count this high means a leak of clones; stop rather than wrap.
        assert!(old < u32::MAX / 2, "body reference count overflow");
        Body { ptr: self.ptr }
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        if self.header().refs.fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        // Pairs with the Release above in other owners' drops.
        fence(Ordering::Acquire);
        let len = self.header().len as usize;
        // Safety: this was the last reference.
        unsafe { free(self.ptr.as_ptr(), len) }
    }
}

impl PartialEq for Body {
    fn eq(&self, other: &Body) -> bool {
        self.bytes() == other.bytes()
    }
}

impl Eq for Body {}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Body({:?})", String::from_utf8_lossy(self.bytes()))
    }
}

/// A stretch of body at least this large has its memory made resident in
/// one system call before it is written.
const POPULATE_BYTES_MIN: usize = 16 * 1024;

/// How far ahead of the bytes received one body's memory is made resident.
/// Memory follows what a client has sent, not what its put line announced:
/// `put 0 0 1 1000000000` alone must not cost a gigabyte. Ahead, because a
/// body arriving through the receive buffers comes 16 KiB at a time, and
/// one system call for all of a 64 KB body costs less than four.
const POPULATE_AHEAD_BYTES_MAX: usize = 64 * 1024;

/// How much memory all the bodies being received on one core may have made
/// resident ahead of their bytes. Without a cap, 2,000 clients that each
/// start a 60 KB put and send a byte a second held 120 MB of memory that
/// nothing had been written to (C beanstalkd: 12 MB). With it, the first 64
/// bodies in flight get the fast path, and a body beyond them has its
/// pages faulted in as its bytes arrive, which is what a slow body can
/// afford. 4 MiB covers 50 connections each putting 64 KB bodies back to
/// back, the benchmark's largest case.
pub const POPULATE_AHEAD_CORE_BYTES_MAX: usize = 4 * 1024 * 1024;

thread_local! {
    /// Bytes made resident ahead of what arrived, over this thread's
    /// bodies being received (a core receives its own bodies, so the cap
    /// holds per core without any sharing).
    static AHEAD_BYTES: Cell<usize> = const { Cell::new(0) };
}

/// This thread's bodies' memory made resident ahead of their bytes.
pub fn populated_ahead_bytes() -> usize {
    AHEAD_BYTES.get()
}

/// Asks the kernel to back every page holding a byte of
/// `[start, start + len)` with memory now. Filling a fresh 64 KB body
/// otherwise takes sixteen page faults from user space, which cost more
/// than the copy itself. Failure (an older kernel) only means the faults
/// happen as before.
fn populate(start: *mut u8, len: usize) {
    const PAGE: usize = 4096;
    let first = start as usize / PAGE * PAGE;
    let end = (start as usize + len).div_ceil(PAGE) * PAGE;
    if len > 0 {
        // Safety: every page in the range holds bytes of one live
        // allocation of ours, so it is mapped; MADV_POPULATE_WRITE only
        // faults pages in, it changes no contents (not even of other
        // allocations sharing the first or last page).
        unsafe { libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_POPULATE_WRITE) };
    }
}

/// A body being received: a unique, partly written allocation.
pub struct BodyBuilder {
    ptr: NonNull<Header>,
    filled: usize,
    /// Body bytes from the start whose memory was made resident.
    populated: usize,
    /// What this body adds to [`AHEAD_BYTES`]: `populated` beyond `filled`.
    ahead: usize,
}

// Unique ownership of plain bytes.
unsafe impl Send for BodyBuilder {}

impl BodyBuilder {
    /// Allocates room for `len` bytes; `None` when memory
    /// cannot be had or `len` exceeds [`BODY_BYTES_MAX`].
    pub fn try_new(len: usize) -> Option<BodyBuilder> {
        if len > BODY_BYTES_MAX {
            return None;
        }
        let ptr = NonNull::new(allocate(len))?;
        // Safety: freshly allocated, properly aligned for Header.
        unsafe { ptr.as_ptr().write(Header { refs: AtomicU32::new(1), len: len as u32 }) };
        Some(BodyBuilder { ptr, filled: 0, populated: 0, ahead: 0 })
    }

    /// Makes the body's memory resident for the `arriving` bytes about to
    /// be written and as far ahead of them as the core's cap allows, when
    /// that is large enough to be worth a system call.
    fn populate_for(&mut self, arriving: usize) {
        let must = self.filled + arriving;
        let room = POPULATE_AHEAD_CORE_BYTES_MAX.saturating_sub(AHEAD_BYTES.get() - self.ahead);
        let end = (must + POPULATE_AHEAD_BYTES_MAX.min(room)).min(self.len());
        // Pages below `filled` were made resident by the bytes written there.
        let start = self.populated.max(self.filled);
        if end >= start + POPULATE_BYTES_MIN {
            // Safety: the offset stays within the allocation.
            let at = unsafe { self.ptr.as_ptr().cast::<u8>().add(size_of::<Header>() + start) };
            populate(at, end - start);
            self.populated = end;
        }
    }

    /// Brings [`AHEAD_BYTES`] up to date with this body.
    fn account(&mut self) {
        let ahead = self.populated.saturating_sub(self.filled);
        AHEAD_BYTES.set((AHEAD_BYTES.get() + ahead).saturating_sub(self.ahead));
        self.ahead = ahead;
    }

    pub fn len(&self) -> usize {
        // Safety: the header was written in try_new.
        unsafe { self.ptr.as_ref().len as usize }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes still missing.
    pub fn remaining(&self) -> usize {
        self.len() - self.filled
    }

    /// Appends as much of `src` as fits; returns how much was taken.
    pub fn fill(&mut self, src: &[u8]) -> usize {
        let n = src.len().min(self.remaining());
        if n > 0 {
            self.populate_for(n);
        }
        // Safety: the destination range lies inside the allocation and is
        // not yet shared with anyone.
        unsafe {
            let dst = self.ptr.as_ptr().cast::<u8>().add(size_of::<Header>() + self.filled);
            std::ptr::copy_nonoverlapping(src.as_ptr(), dst, n);
        }
        self.filled += n;
        self.account();
        n
    }

    pub fn is_full(&self) -> bool {
        self.remaining() == 0
    }

    /// Where the missing bytes go, for a receive straight into the body:
    /// the first unfilled byte and how many are missing.
    pub fn spare(&mut self) -> (*mut u8, usize) {
        self.populate_for(0);
        self.account();
        // Safety: the offset stays within the allocation.
        let ptr = unsafe { self.ptr.as_ptr().cast::<u8>().add(size_of::<Header>() + self.filled) };
        (ptr, self.remaining())
    }

    /// Records that `n` bytes were written at [`BodyBuilder::spare`].
    ///
    /// # Safety
    /// Those `n` bytes must have been written, and `n` may not exceed
    /// [`BodyBuilder::remaining`].
    pub unsafe fn assume_filled(&mut self, n: usize) {
        assert!(n <= self.remaining(), "filled past the end of a body");
        self.filled += n;
        self.account();
    }

    /// The finished body. Panics if bytes are missing.
    pub fn finish(self) -> Body {
        assert!(self.is_full(), "body finished before it was filled");
        debug_assert_eq!(self.ahead, 0, "a full body has nothing ahead");
        let body = Body { ptr: self.ptr };
        std::mem::forget(self);
        body
    }
}

impl Drop for BodyBuilder {
    fn drop(&mut self) {
        AHEAD_BYTES.set(AHEAD_BYTES.get().saturating_sub(self.ahead));
        let len = self.len();
        // Safety: the builder owns the allocation alone.
        unsafe { free(self.ptr.as_ptr(), len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_in_pieces_and_shares() {
        let mut b = BodyBuilder::try_new(5).unwrap();
        assert_eq!(b.fill(b"hel"), 3);
        assert!(!b.is_full());
        assert_eq!(b.fill(b"lo\r\nextra"), 2);
        let body = b.finish();
        assert_eq!(body.bytes(), b"hello");
        assert_eq!(body.len(), 5);
        let copy = body.clone();
        drop(body);
        assert_eq!(copy.bytes(), b"hello");
        assert!(Body::from_slice(b"").is_empty());
    }

    #[test]
    fn filled_in_place() {
        let mut b = BodyBuilder::try_new(6).unwrap();
        b.fill(b"ab");
        let (ptr, len) = b.spare();
        assert_eq!(len, 4);
        // Safety: writing within the spare part, as a receive would.
        unsafe {
            std::ptr::copy_nonoverlapping(b"cdef".as_ptr(), ptr, 4);
            b.assume_filled(4);
        }
        assert_eq!(b.finish().bytes(), b"abcdef");
    }

    #[test]
    fn large_bodies_round_trip() {
        let bytes: Vec<u8> = (0..3 << 20).map(|i| i as u8).collect();
        let body = Body::from_slice(&bytes);
        assert_eq!(body.bytes(), &bytes[..]);
        let copy = body.clone();
        drop(body);
        assert_eq!(copy.len(), bytes.len());
        let mut unfinished = BodyBuilder::try_new(MAP_BYTES_MIN).unwrap();
        assert_eq!(unfinished.fill(&bytes), MAP_BYTES_MIN);
        drop(unfinished);
    }

    #[test]
    fn unfinished_builder_is_freed() {
        let mut b = BodyBuilder::try_new(1000).unwrap();
        b.fill(b"abc");
        drop(b);
        assert!(BodyBuilder::try_new(BODY_BYTES_MAX + 1).is_none());
    }

    #[test]
    fn memory_ahead_of_the_bytes_received_is_capped_per_core() {
        // A thread of its own: the count is per thread, and starts at zero.
        std::thread::spawn(|| {
            const SIZE: usize = 60_000;
            let bodies = 2 * POPULATE_AHEAD_CORE_BYTES_MAX / SIZE;
            let mut slow: Vec<BodyBuilder> = (0..bodies).map(|_| BodyBuilder::try_new(SIZE).unwrap()).collect();
            for b in &mut slow {
                b.fill(b"x");
            }
            assert!(populated_ahead_bytes() <= POPULATE_AHEAD_CORE_BYTES_MAX);
            assert_eq!(slow[0].populated, SIZE, "the first slow body gets the fast path");
            assert_eq!(slow[bodies - 1].populated, 0, "one beyond the cap only what arrived");
            // A body filled to the end gives its share back.
            let before = populated_ahead_bytes();
            slow[0].fill(&vec![b'y'; SIZE - 1]);
            assert_eq!(populated_ahead_bytes(), before - (SIZE - 1));
            assert_eq!(slow.remove(0).finish().len(), SIZE);
            let (_, missing) = slow[bodies - 2].spare();
            assert_eq!(missing, SIZE - 1);
            assert_eq!(slow[bodies - 2].populated, SIZE, "room freed is used by the next receive");
            // Dropping unfinished bodies returns the rest.
            drop(slow);
            assert_eq!(populated_ahead_bytes(), 0);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn shared_across_threads() {
        let body = Body::from_slice(b"xyz");
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let b = body.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        let c = b.clone();
                        assert_eq!(c.len(), 3);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(body.header().refs.load(Ordering::Relaxed), 1);
    }
}
