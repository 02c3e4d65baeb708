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
//!   input, documents, the tables of connections, the turn's lists of
//!   events and what a send writes) reserves what it needs before it
//!   changes anything, through [`attempt`], and a refusal becomes a reply
//!   (or closes that one connection). Moves of a job between queues never
//!   allocate: room in every heap a job can enter is reserved when it is
//!   put.
//! * **A reserve for what is left.** A few allocations stay infallible
//!   (small log and bookkeeping buffers, a reply's owned strings, the
//!   allocator's own metadata). The [`Allocator`] sets aside
//!   [`RESERVE_BYTES`] at start-up, in pieces of at most
//!   [`RESERVE_PIECE_BYTES_MAX`], untouched, so they cost address space and
//!   commit charge (what `ulimit -v` and strict overcommit count) but no
//!   resident memory. When an infallible allocation fails, the largest
//!   piece goes back to the allocator and the allocation is tried again.
//!
//! # Short
//! From the first piece spent until the reserve is whole again, memory is
//! *short*: replies are made room for fallibly, each connection is held to
//! a small share of reply text, and a new job or tube is accepted only out
//! of memory freed since the shortage began ([`room_for`]). The allocator
//! keeps that account, the *credit*: bytes freed less bytes allocated since
//! memory last ran out, plus the pieces spent, less the pieces taken back.
//! What the allocator has free is at least the credit (it had nothing for
//! the allocation that failed), and the reserve holds [`RESERVE_BYTES`]
//! less what it lacks; so a new job is accepted when the credit covers
//! what the reserve lacks, the job and [`SHORT_MARGIN_BYTES`], and after
//! it free memory and reserve together are still worth a whole reserve.
//! In other words a put is taken once the client has freed about the
//! margin's worth more than it has allocated since memory ran out:
//! measured at 512 MiB with 1000-byte jobs, 104–137 deletes (C beanstalkd
//! takes one after a single delete, as does runnerbean when no infallible
//! allocation failed and memory never became short).
//!
//! Waiting for the reserve itself to come back would wait for contiguous
//! memory: deleting jobs frees blocks scattered between live ones, which
//! serve new jobs of the same size at once but may never add up to a
//! piece (at 512 MiB, after 1,000 deletes the reserve could not be had
//! back). [`Upkeep`] still takes it back in pieces as large as the
//! allocator can give, down to [`RESERVE_PIECE_BYTES_MIN`]: at once after a
//! piece was spent (what the failed allocation left of it), whenever
//! [`REPLENISH_FREED_BYTES`] more has been freed, and every
//! [`REPLENISH_INTERVAL_NS`]; memory stays short, with puts taken out of
//! the credit, for as long as it cannot.
//!
//! New connections are not refused for being short: an administrator must
//! be able to get in to delete jobs. What a client needs to get through the
//! shortage (a connection, room for its pipelined deletes and its replies)
//! may spend a further piece, never the last [`RESERVE_KEPT_BYTES`]
//! ([`try_or_spend`]).
//!
//! # What it must never do
//! Allocate while handling a failed allocation, or let a fallible
//! reservation dip into the reserve: that is what [`fallible`] marks.
//! The reserve is taken straight from mimalloc, never through
//! [`Allocator`], so rebuilding it cannot spend it (nor count as credit).

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicPtr, AtomicUsize, Ordering};

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

/// Makes sure `v` holds `total` elements without allocating, or refuses.
pub fn try_reserve_total<T>(v: &mut Vec<T>, total: usize) -> Result<(), OutOfMemory> {
    match total.checked_sub(v.len()) {
        Some(more) if total > v.capacity() => try_reserve(v, more),
        _ => Ok(()),
    }
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

/// Bytes the reserve holds when it is whole: enough for a burst of
/// infallible allocations (a connection's reply buffers, log lines) while
/// clients delete jobs.
pub const RESERVE_BYTES: usize = 16 * 1024 * 1024;

/// The largest piece the reserve is held in. Above mimalloc's largest
/// size class, so each piece is a page of its own and freeing one gives
/// the allocator memory it can use for anything; and large enough to hold
/// whole 512 KiB pages of its middle size classes (16–84 KiB) once the
/// small page the failed allocation needed is taken out of it. Measured
/// under `ulimit -v`: after spending a 1 MiB block, only 400 KB of 16–64 KB
/// allocations could be had; after a 4 MiB one, 9 MB.
pub const RESERVE_PIECE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// The smallest piece the reserve is taken back in: four of mimalloc's
/// 64 KiB slices, room for the small pages most infallible allocations
/// need. Only 4 MiB pieces, and the reserve could not be had back after
/// 10,000 deletes at 512 MiB; pieces down to 128–512 KiB came back after
/// 2,000–5,000.
pub const RESERVE_PIECE_BYTES_MIN: usize = 256 * 1024;

/// What [`try_or_spend`] never spends: a largest piece's worth, kept for
/// what cannot fail into a reply.
pub const RESERVE_KEPT_BYTES: usize = RESERVE_PIECE_BYTES_MAX;

/// While memory is short, what must be left of the credit besides the
/// reserve's missing part and the body for a new job or tube to be
/// accepted: the most a put allocates besides its body, when each table
/// it enters needs a fresh page (a chunk of the job arena, 64 KiB; a page
/// of the delayed jobs' column, 20 KiB; of the log's positions and of the
/// id index), checked in the engine. About 130 deletes of 1000-byte jobs.
pub const SHORT_MARGIN_BYTES: usize = 128 * 1024;

/// While memory is short, the reserve is tried again once the credit has
/// grown this much since the last try: a slice of mimalloc's, the least
/// that can make a new span.
pub const REPLENISH_FREED_BYTES: usize = 64 * 1024;

/// While memory is short, the reserve is tried at least this often
/// (memory may have come back from outside: another process, under strict
/// overcommit).
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

/// Places for pieces: enough for a reserve made of the smallest ones.
const RESERVE_SLOTS: usize = RESERVE_BYTES / RESERVE_PIECE_BYTES_MIN;

/// The layout of a piece of `bytes`: mimalloc's own alignment, so that it
/// asks for exactly the piece (a page alignment made it ask for 4 KiB
/// more, which rounded the page up by another 512 KiB).
fn piece(bytes: usize) -> Layout {
    match Layout::from_size_align(bytes, 16) {
        Ok(layout) => layout,
        // A multiple of the smallest piece, far below isize::MAX.
        Err(_) => unreachable!("a piece of {bytes} bytes"),
    }
}

/// The reserve's pieces; null where none is held.
static PIECES: [AtomicPtr<u8>; RESERVE_SLOTS] = [const { AtomicPtr::new(std::ptr::null_mut()) }; RESERVE_SLOTS];

/// The size of the piece in each place, written before the piece is.
static PIECE_BYTES: [AtomicUsize; RESERVE_SLOTS] = [const { AtomicUsize::new(0) }; RESERVE_SLOTS];

/// Bytes the reserve holds.
static HELD: AtomicUsize = AtomicUsize::new(0);

/// Some of the reserve is spent.
static SHORT: AtomicBool = AtomicBool::new(false);

/// While memory is short: bytes freed less bytes allocated since memory
/// last ran out, plus the pieces spent since, less the pieces taken back
/// (see "Short" above). What the allocator has free is at least about
/// this: it had nothing left for the allocation that failed.
static CREDIT: AtomicIsize = AtomicIsize::new(0);

/// Pieces spent so far, so that [`Upkeep`] sees a new shortfall at once.
static SPENT: AtomicUsize = AtomicUsize::new(0);

/// The global allocator: mimalloc, and the reserve when it fails.
pub struct Allocator;

/// Counts `bytes` allocated (negative: freed) against the credit while
/// memory is short.
#[inline]
fn charge(bytes: isize) {
    if SHORT.load(Ordering::Relaxed) {
        CREDIT.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// A mapping of `bytes` was made outside the allocator (a large job body):
/// it counts against the credit as an allocation does.
pub fn mapped(bytes: usize) {
    charge(bytes as isize);
}

/// A mapping of `bytes` made outside the allocator was unmapped: it counts
/// as memory freed.
pub fn unmapped(bytes: usize) {
    charge(-(bytes as isize));
}

// Safety: every call is forwarded to mimalloc, a sound global allocator;
// a retry after a failure is a fresh call with the same arguments.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // Safety: forwarded with the caller's layout.
        let mut p = unsafe { MiMalloc.alloc(layout) };
        if p.is_null() {
            // Safety: as above.
            p = failed(|| unsafe { MiMalloc.alloc(layout) });
        }
        if !p.is_null() {
            charge(layout.size() as isize);
        }
        p
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // Safety: forwarded with the caller's layout.
        let mut p = unsafe { MiMalloc.alloc_zeroed(layout) };
        if p.is_null() {
            // Safety: as above.
            p = failed(|| unsafe { MiMalloc.alloc_zeroed(layout) });
        }
        if !p.is_null() {
            charge(layout.size() as isize);
        }
        p
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // Safety: the caller's block, allocated here (so by mimalloc).
        unsafe { MiMalloc.dealloc(ptr, layout) };
        charge(-(layout.size() as isize));
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Safety: forwarded; a failed realloc leaves the block as it was,
        // so trying again is the same call.
        let mut p = unsafe { MiMalloc.realloc(ptr, layout, new_size) };
        if p.is_null() {
            // Safety: as above.
            p = failed(|| unsafe { MiMalloc.realloc(ptr, layout, new_size) });
        }
        if !p.is_null() {
            charge(new_size as isize - layout.size() as isize);
        }
        p
    }
}

/// An allocation failed. A fallible one is refused at once; any other is
/// retried after each piece of the reserve goes back to mimalloc, largest
/// first, until one try works or the reserve is gone (then Rust stops the
/// process, as it would have without a reserve).
#[cold]
#[inline(never)]
fn failed(mut retry: impl FnMut() -> *mut u8) -> *mut u8 {
    if FALLIBLE.get() {
        return std::ptr::null_mut();
    }
    while spend_piece(0) {
        let p = retry();
        if !p.is_null() {
            return p;
        }
    }
    std::ptr::null_mut()
}

/// Gives the largest piece of the reserve back to mimalloc, if the reserve
/// keeps at least `keep` bytes without it; false if there is none to give.
/// The first piece of a shortage starts the credit afresh: memory has run
/// out, and the piece is what there is. Later ones add to it: an
/// allocation failed for want of a page of its size, not for want of any
/// free memory (freed job bodies are still there for new ones), so the
/// credit goes on counting free memory from the start of the shortage.
fn spend_piece(keep: usize) -> bool {
    loop {
        let mut largest: Option<(usize, usize)> = None;
        for (i, slot) in PIECES.iter().enumerate() {
            if !slot.load(Ordering::Acquire).is_null() {
                let bytes = PIECE_BYTES[i].load(Ordering::Acquire);
                if largest.is_none_or(|(_, most)| bytes > most) {
                    largest = Some((i, bytes));
                }
            }
        }
        let Some((i, bytes)) = largest else { return false };
        if HELD.load(Ordering::Acquire) < keep + bytes {
            return false;
        }
        // Another thread may have spent it meanwhile: then look again.
        let block = PIECES[i].swap(std::ptr::null_mut(), Ordering::AcqRel);
        if block.is_null() {
            continue;
        }
        HELD.fetch_sub(bytes, Ordering::AcqRel);
        if SHORT.swap(true, Ordering::AcqRel) {
            CREDIT.fetch_add(bytes as isize, Ordering::Relaxed);
        } else {
            CREDIT.store(bytes as isize, Ordering::Relaxed);
        }
        SPENT.fetch_add(1, Ordering::Relaxed);
        // Safety: the piece came from MiMalloc with this layout and is
        // referred to by nothing else.
        unsafe { MiMalloc.dealloc(block, piece(bytes)) };
        return true;
    }
}

/// Takes the reserve back, in pieces as large as mimalloc can give, down
/// to [`RESERVE_PIECE_BYTES_MIN`]; true when it is whole. Memory is short
/// until it is. Only one thread (the shard's) calls it.
fn replenish() -> bool {
    let mut try_bytes = RESERVE_PIECE_BYTES_MAX;
    for (i, slot) in PIECES.iter().enumerate() {
        let missing = RESERVE_BYTES - HELD.load(Ordering::Acquire);
        if missing == 0 {
            break;
        }
        if !slot.load(Ordering::Acquire).is_null() {
            continue;
        }
        loop {
            let bytes = try_bytes.min(missing);
            // Straight from mimalloc: a failure here must not spend the
            // reserve it is rebuilding.
            // Safety: a valid, non-zero layout.
            let block = unsafe { MiMalloc.alloc(piece(bytes)) };
            if !block.is_null() {
                PIECE_BYTES[i].store(bytes, Ordering::Release);
                slot.store(block, Ordering::Release);
                HELD.fetch_add(bytes, Ordering::AcqRel);
                CREDIT.fetch_sub(bytes as isize, Ordering::Relaxed);
                break;
            }
            if bytes <= RESERVE_PIECE_BYTES_MIN {
                return false;
            }
            // What failed would fail again: smaller pieces from here on.
            try_bytes = (bytes / 2 / RESERVE_PIECE_BYTES_MIN * RESERVE_PIECE_BYTES_MIN).max(RESERVE_PIECE_BYTES_MIN);
        }
    }
    let whole = HELD.load(Ordering::Acquire) == RESERVE_BYTES;
    if whole {
        SHORT.store(false, Ordering::Release);
    }
    whole
}

/// Sets the reserve aside; at start-up, before anything else allocates
/// much. False when memory is so scarce that not all of it could be had
/// (the server then starts short, with no credit).
pub fn init() -> bool {
    let whole = replenish();
    if !whole {
        CREDIT.store(0, Ordering::Relaxed);
        SHORT.store(true, Ordering::Release);
    }
    whole
}

#[cfg(test)]
thread_local! {
    /// Tests of the shard make memory short on their own thread, with
    /// this many bytes of room for new jobs and tubes.
    static SHORT_FOR_TEST: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Makes this thread see memory as short with `room` bytes for new jobs
/// and tubes (see [`room_for`]), or not short (`None`); for tests.
#[cfg(test)]
pub fn set_short_for_test(room: Option<usize>) {
    SHORT_FOR_TEST.set(room);
}

/// Whether some of the reserve is spent: replies are then made room for
/// fallibly, each connection is held to a small share of reply text, and
/// new jobs and tubes must find [`room_for`] themselves.
#[inline]
pub fn is_short() -> bool {
    #[cfg(test)]
    if SHORT_FOR_TEST.get().is_some() {
        return true;
    }
    SHORT.load(Ordering::Relaxed)
}

/// Whether a new job or tube of about `bytes` may be made: always while
/// the reserve is whole; while memory is short, only if the credit covers
/// what the reserve lacks, [`SHORT_MARGIN_BYTES`] and `bytes` (see "Short"
/// above).
#[inline]
pub fn room_for(bytes: usize) -> bool {
    #[cfg(test)]
    if let Some(room) = SHORT_FOR_TEST.get() {
        return bytes <= room;
    }
    if !SHORT.load(Ordering::Relaxed) {
        return true;
    }
    let missing = RESERVE_BYTES - HELD.load(Ordering::Relaxed);
    let credit = CREDIT.load(Ordering::Relaxed);
    credit >= 0 && credit as usize >= missing + SHORT_MARGIN_BYTES + bytes
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
    /// The credit after the last try at taking the reserve back.
    credit_at_try: isize,
    /// Pieces spent as of the last try.
    spent_at_try: usize,
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
                eprintln!("runnerbean: out of memory; new jobs and tubes are refused until memory is freed");
            }
            let credit = CREDIT.load(Ordering::Relaxed);
            let spent = SPENT.load(Ordering::Relaxed);
            let freed = credit.saturating_sub(self.credit_at_try) >= REPLENISH_FREED_BYTES as isize;
            if spent != self.spent_at_try || freed || now >= self.next_replenish_at {
                self.next_replenish_at = now + REPLENISH_INTERVAL_NS;
                self.spent_at_try = spent;
                replenish();
                self.credit_at_try = CREDIT.load(Ordering::Relaxed);
            }
        }
        if self.logged_short && !SHORT.load(Ordering::Relaxed) {
            self.logged_short = false;
            eprintln!("runnerbean: memory is available again; new jobs and tubes are accepted");
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

/// Bytes the reserve holds now.
pub fn reserve_bytes() -> usize {
    HELD.load(Ordering::Relaxed)
}

/// Runs a fallible reservation; when it is refused and the reserve would
/// keep [`RESERVE_KEPT_BYTES`] without its largest piece, spends that
/// piece and tries again. For what a client needs to get through a
/// shortage: its connection, room for the commands it pipelined (often
/// deletes, which are what free memory); the rest stays for what cannot
/// fail into a reply.
pub fn try_or_spend<R>(mut f: impl FnMut() -> Result<R, OutOfMemory>) -> Result<R, OutOfMemory> {
    match f() {
        Err(OutOfMemory) if spend_piece(RESERVE_KEPT_BYTES) => f(),
        result => result,
    }
}
