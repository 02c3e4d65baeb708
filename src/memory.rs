//! Running out of memory without stopping: the global allocator, its
//! reserve, and the fallible reservations the rest of the server makes.
//!
//! Rust stops the process when an ordinary allocation fails. A server that
//! a client can fill with jobs must instead answer `OUT_OF_MEMORY` and go on
//! serving, as beanstalkd does. Two mechanisms share the work:
//!
//! * **Fallible growth where a client's command makes things grow.** Every
//!   structure a client can make large (job bodies, the job arena and the id
//!   index, the heaps, tubes, watch sets, waiter lists, reply text, pending
//!   input, documents) reserves what it needs before it changes anything,
//!   through [`attempt`], and a refusal becomes a reply (or closes that one
//!   connection). Moves of a job between queues never allocate: room in
//!   every heap a job can enter is reserved when it is put.
//! * **A reserve for what is left.** A few allocations stay infallible
//!   (small log and bookkeeping buffers, the allocator's own metadata). The
//!   [`Allocator`] sets aside [`RESERVE_BLOCKS`] blocks of
//!   [`RESERVE_BLOCK_BYTES`] at start-up, untouched, so they cost address
//!   space and commit charge (what `ulimit -v` and strict overcommit count)
//!   but no resident memory. When an infallible allocation fails, one block
//!   goes back to the allocator and the allocation is tried again; from
//!   then on memory is *short*: puts, new tubes and new connections are
//!   refused and replies are made room for fallibly, until [`Upkeep`] has
//!   taken every block back, which it tries once a block's worth has been
//!   freed and every [`REPLENISH_INTERVAL_NS`]. What a client needs to get
//!   through the shortage (room for its pipelined deletes) may spend a
//!   further block, never the last ([`try_or_spend`]).
//!
//! # What it must never do
//! Allocate while handling a failed allocation, or let a fallible
//! reservation dip into the reserve: that is what [`fallible`] marks.
//! The reserve is taken straight from mimalloc, never through
//! [`Allocator`], so rebuilding it cannot spend it.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

use mimalloc::MiMalloc;

use crate::engine::Nanos;

/// A fallible reservation was refused: there is not enough memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfMemory;

thread_local! {
    /// Set while the current thread makes a reservation that can fail
    /// into a reply: the allocator then reports failure at once instead
    /// of spending its reserve.
    static FALLIBLE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, in which a failed allocation is a refusal the caller handles
/// (`try_reserve` and the like), not one the reserve should cover.
pub fn fallible<R>(f: impl FnOnce() -> R) -> R {
    let was = FALLIBLE.replace(true);
    let result = f();
    FALLIBLE.set(was);
    result
}

/// Runs a fallible reservation (`try_reserve` and the like, which fail
/// with their own error type) as [`fallible`] does, with its failure as
/// [`OutOfMemory`]. Tests can make it fail on purpose (`fail_for_test`).
pub fn attempt<T, E>(f: impl FnOnce() -> Result<T, E>) -> Result<T, OutOfMemory> {
    if injected_failure() {
        return Err(OutOfMemory);
    }
    fallible(f).map_err(|_| OutOfMemory)
}

/// Makes room for `additional` more elements, or refuses.
pub fn try_reserve<T>(v: &mut Vec<T>, additional: usize) -> Result<(), OutOfMemory> {
    attempt(|| v.try_reserve(additional))
}

/// Makes room for exactly `additional` more elements, or refuses.
pub fn try_reserve_exact<T>(v: &mut Vec<T>, additional: usize) -> Result<(), OutOfMemory> {
    attempt(|| v.try_reserve_exact(additional))
}

#[cfg(test)]
thread_local! {
    /// Fallible reservations on this thread that will succeed before some
    /// are refused, and how many will then be refused.
    static INJECTED: Cell<(u32, u32)> = const { Cell::new((0, 0)) };
}

/// Makes the fallible reservations on this thread succeed `after` more
/// times, then fail `times` times; for tests that inject allocation
/// failures. `fail_for_test(0, 0)` ends it.
#[cfg(test)]
pub fn fail_for_test(after: u32, times: u32) {
    INJECTED.set((after, times));
}

/// Whether a test has made this reservation fail.
#[inline]
pub fn injected_failure() -> bool {
    #[cfg(test)]
    match INJECTED.get() {
        (_, 0) => {}
        (0, times) => {
            INJECTED.set((0, times - 1));
            return true;
        }
        (after, times) => INJECTED.set((after - 1, times)),
    }
    false
}

/// Blocks of the reserve: a shortage spends them one at a time, and the
/// last one only on what must not fail.
pub const RESERVE_BLOCKS: usize = 4;

/// Bytes per block. Above mimalloc's largest size class (512 KiB), so each
/// block is a page of its own and freeing one gives the allocator memory
/// it can use for anything; and large enough to hold whole 512 KiB pages
/// of its middle size classes (16–84 KiB) once the small page the failed
/// allocation needed is taken out of it. Measured under `ulimit -v`: after
/// spending a 1 MiB block, only 400 KB of 16–64 KB allocations could be
/// had; after a 4 MiB one, 9 MB.
pub const RESERVE_BLOCK_BYTES: usize = 4 * 1024 * 1024;

/// While memory is short, the reserve is taken back at most this often
/// when nothing has been freed (memory may have come back from outside:
/// another process, under strict overcommit), and at once when a block's
/// worth has been freed here.
pub const REPLENISH_INTERVAL_NS: Nanos = 100_000_000;

/// How often [`Upkeep`] asks the allocator to give freed memory back to the
/// kernel (see there): a server that went quiet after a burst kept its
/// peak size (2,000 connections gone, 424 MB left). The look costs about
/// 10 µs when there is nothing to give back.
pub const COLLECT_INTERVAL_NS: Nanos = 1_000_000_000;

/// How long after the last work for a client collections go on: past
/// mimalloc's purge delay of a second, so the last one gives back what the
/// last work freed.
pub const COLLECT_QUIET_NS: Nanos = 2_500_000_000;

const BLOCK: Layout = match Layout::from_size_align(RESERVE_BLOCK_BYTES, 4096) {
    Ok(layout) => layout,
    Err(_) => panic!("reserve block layout"),
};

/// The reserve's blocks; null where a block was spent.
static RESERVE: [AtomicPtr<u8>; RESERVE_BLOCKS] = [const { AtomicPtr::new(std::ptr::null_mut()) }; RESERVE_BLOCKS];

/// Some of the reserve is spent.
static SHORT: AtomicBool = AtomicBool::new(false);

/// Bytes freed since memory became short (or since the last attempt to
/// take the reserve back).
static FREED_WHILE_SHORT: AtomicUsize = AtomicUsize::new(0);

/// The global allocator: mimalloc, and the reserve when it fails.
pub struct Allocator;

// Safety: every call is forwarded to mimalloc, a sound global allocator;
// a retry after a failure is a fresh call with the same arguments.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // Safety: forwarded with the caller's layout.
        let p = unsafe { MiMalloc.alloc(layout) };
        if p.is_null() {
            // Safety: as above.
            return failed(|| unsafe { MiMalloc.alloc(layout) });
        }
        p
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // Safety: forwarded with the caller's layout.
        let p = unsafe { MiMalloc.alloc_zeroed(layout) };
        if p.is_null() {
            // Safety: as above.
            return failed(|| unsafe { MiMalloc.alloc_zeroed(layout) });
        }
        p
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // Safety: the caller's block, allocated here (so by mimalloc).
        unsafe { MiMalloc.dealloc(ptr, layout) };
        if SHORT.load(Ordering::Relaxed) {
            FREED_WHILE_SHORT.fetch_add(layout.size(), Ordering::Relaxed);
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Safety: forwarded; a failed realloc leaves the block as it was,
        // so trying again is the same call.
        let p = unsafe { MiMalloc.realloc(ptr, layout, new_size) };
        if p.is_null() {
            // Safety: as above.
            return failed(|| unsafe { MiMalloc.realloc(ptr, layout, new_size) });
        }
        p
    }
}

/// An allocation failed. A fallible one is refused at once; any other is
/// retried after each block of the reserve goes back to mimalloc, until
/// one try works or the reserve is gone (then Rust stops the process, as
/// it would have without a reserve).
#[cold]
#[inline(never)]
fn failed(mut retry: impl FnMut() -> *mut u8) -> *mut u8 {
    if FALLIBLE.get() {
        return std::ptr::null_mut();
    }
    while spend_block() {
        let p = retry();
        if !p.is_null() {
            return p;
        }
    }
    std::ptr::null_mut()
}

/// Gives one block of the reserve back to mimalloc; false if none is left.
fn spend_block() -> bool {
    for slot in &RESERVE {
        let block = slot.swap(std::ptr::null_mut(), Ordering::AcqRel);
        if !block.is_null() {
            SHORT.store(true, Ordering::Release);
            // Safety: the block came from MiMalloc with this layout and is
            // referred to by nothing else.
            unsafe { MiMalloc.dealloc(block, BLOCK) };
            return true;
        }
    }
    false
}

/// Takes back every block of the reserve that mimalloc can give; true when
/// the reserve is whole. Memory is short until it is.
fn replenish() -> bool {
    let mut whole = true;
    for slot in &RESERVE {
        if slot.load(Ordering::Acquire).is_null() {
            // Straight from mimalloc: a failure here must not spend the
            // reserve it is rebuilding.
            // Safety: a valid, non-zero layout.
            let block = unsafe { MiMalloc.alloc(BLOCK) };
            if block.is_null() {
                whole = false;
                break;
            }
            slot.store(block, Ordering::Release);
        }
    }
    if whole {
        SHORT.store(false, Ordering::Release);
    }
    whole
}

/// Sets the reserve aside; at start-up, before anything else allocates
/// much. False when memory is so scarce that not all of it could be had
/// (the server then starts short).
pub fn init() -> bool {
    let whole = replenish();
    if !whole {
        SHORT.store(true, Ordering::Release);
    }
    whole
}

#[cfg(test)]
thread_local! {
    /// Tests of the shard make memory short on their own thread.
    static SHORT_FOR_TEST: Cell<bool> = const { Cell::new(false) };
}

/// Makes this thread see memory as short, or not; for tests.
#[cfg(test)]
pub fn set_short_for_test(short: bool) {
    SHORT_FOR_TEST.set(short);
}

/// Whether some of the reserve is spent: puts, new tubes and new
/// connections are then refused, and replies are made room for fallibly.
#[inline]
pub fn is_short() -> bool {
    #[cfg(test)]
    if SHORT_FOR_TEST.get() {
        return true;
    }
    SHORT.load(Ordering::Relaxed)
}

/// The memory work of the event loop, done from the shard's tick: taking
/// the reserve back while memory is short, and giving freed memory back to
/// the kernel once the server has gone quiet.
///
/// mimalloc purges a free page only once it has been free for its purge
/// delay (a second), and only when some later allocation or free looks; a
/// server that goes quiet after a burst would keep its peak size for good,
/// and a loop with nothing to do does not even wake up. So while there was
/// activity in the last [`COLLECT_QUIET_NS`], the shard's next deadline
/// includes a collection every [`COLLECT_INTERVAL_NS`]; the last ones,
/// after the server went quiet, give back what the burst freed.
#[derive(Default)]
pub struct Upkeep {
    next_collect_at: Nanos,
    next_replenish_at: Nanos,
    /// When the shard last did work for a client, if it ever did.
    active_at: Option<Nanos>,
    /// The shortage under way was logged (the allocator itself cannot log:
    /// it must not allocate while failing).
    logged_short: bool,
}

impl Upkeep {
    /// The shard did work for a client at `now` (memory may have been
    /// allocated or freed).
    pub fn note_activity(&mut self, now: Nanos) {
        self.active_at = Some(now);
    }

    /// Whether there was work recent enough for a collection at `at` to
    /// be worth it.
    fn recently_active(&self, at: Nanos) -> bool {
        self.active_at.is_some_and(|active| active + COLLECT_QUIET_NS >= at)
    }

    /// When [`Upkeep::tick`] next has something to do, if ever.
    pub fn next_due(&self) -> Option<Nanos> {
        let collect = self.recently_active(self.next_collect_at).then_some(self.next_collect_at);
        let replenish = SHORT.load(Ordering::Relaxed).then_some(self.next_replenish_at);
        match (collect, replenish) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Does what is due at `now`. Cheap when nothing is.
    pub fn tick(&mut self, now: Nanos) {
        if SHORT.load(Ordering::Relaxed) {
            if !self.logged_short {
                self.logged_short = true;
                eprintln!("runnerbean: out of memory; refusing new jobs, tubes and connections until memory is freed");
            }
            if FREED_WHILE_SHORT.load(Ordering::Relaxed) >= RESERVE_BLOCK_BYTES || now >= self.next_replenish_at {
                FREED_WHILE_SHORT.store(0, Ordering::Relaxed);
                self.next_replenish_at = now + REPLENISH_INTERVAL_NS;
                if replenish() {
                    self.logged_short = false;
                    eprintln!("runnerbean: memory is available again; accepting new jobs, tubes and connections");
                }
            }
        }
        if now >= self.next_collect_at {
            if self.recently_active(self.next_collect_at) {
                collect();
            }
            self.next_collect_at = now + COLLECT_INTERVAL_NS;
        }
    }
}

unsafe extern "C" {
    // mimalloc's own entry points, from the library the `mimalloc` crate
    // links (its `extended` feature would declare them too, at the price
    // of another dependency).
    fn mi_collect(force: bool);
}

/// Gives the allocator's freed memory back to the kernel where it can (see
/// [`Upkeep`]).
pub fn collect() {
    // Safety: mi_collect only walks the allocator's own state.
    unsafe { mi_collect(false) }
}

/// Blocks of the reserve held now.
pub fn reserve_blocks() -> usize {
    RESERVE.iter().filter(|slot| !slot.load(Ordering::Relaxed).is_null()).count()
}

/// Runs a fallible reservation; when it is refused and more than one block
/// of the reserve is left, spends one and tries again. For what a client
/// needs to get through a shortage, such as room for the commands it
/// pipelined (often deletes, which are what free memory); the last block
/// stays for what cannot fail into a reply.
pub fn try_or_spend<R>(mut f: impl FnMut() -> Result<R, OutOfMemory>) -> Result<R, OutOfMemory> {
    match f() {
        Err(OutOfMemory) if reserve_blocks() > 1 && spend_block() => f(),
        result => result,
    }
}
