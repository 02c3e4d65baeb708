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
//!   [`RESERVE_PIECES`] pieces of [`RESERVE_PIECE_BYTES`] at start-up,
//!   untouched, so they cost address space and commit charge (what
//!   `ulimit -v` and strict overcommit count) but no resident memory. When
//!   an infallible allocation fails, a piece goes back to the allocator and
//!   the allocation is tried again.
//!
//! # Short
//! From the first piece spent until the reserve is whole again, memory is
//! *short*: replies are made room for fallibly, each connection is held to
//! a small share of reply text, and a new job or tube is accepted only out
//! of memory freed since the shortage began ([`room_for`]). The allocator
//! keeps that account, the *credit*: bytes freed less bytes allocated since
//! memory last ran out, plus the pieces spent, less the pieces taken back.
//! What the allocator has free is at least the credit (it had nothing for
//! the allocation that failed), and the reserve lacks the pieces not taken
//! back; so a new job is accepted when the credit covers those pieces, the
//! job and [`SHORT_MARGIN_BYTES`], and after it free memory and reserve
//! together are still worth a whole reserve. In other words a put is taken
//! once the client has freed about the margin's worth more than it has
//! allocated since memory ran out: measured at 512 MiB with 1000-byte
//! jobs, 133–138 deletes (C beanstalkd takes one after a single delete, as
//! does runnerbean when no infallible allocation failed and memory never
//! became short).
//!
//! Waiting for the reserve itself would wait for contiguous memory:
//! deleting jobs frees blocks scattered between live ones, which serve new
//! jobs of the same size at once but are slow to add up to a piece (in the
//! same measurements the reserve was whole again after 1,100 to 17,000
//! deletes). [`Upkeep`] takes the pieces back as the allocator can give
//! them: at once after a piece was spent (what the failed allocation left
//! of it), once a piece's worth more has been freed, and every
//! [`REPLENISH_INTERVAL_NS`]; memory stays short, with puts taken out of
//! the credit, until it has them all.
//!
//! New connections are not refused for being short: an administrator must
//! be able to get in to delete jobs. What a client needs to get through the
//! shortage (a connection, room for its pipelined deletes and its replies)
//! may spend a further piece, never the last [`RESERVE_PIECES_KEPT`]
//! ([`try_or_spend`]). The tables of connections double as they grow, and
//! a doubling needs more contiguous memory than freed jobs give: once only
//! the kept piece is left, a connection that would make one grow is closed
//! at once (measured while short: of 1,500 connections opened together,
//! 511 were served on epoll, all of them on io_uring).
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

/// Bytes per piece of the reserve. A spent piece must be able to serve an
/// allocation of any size the server makes: measured under `ulimit -v`
/// with mimalloc full of 1000-byte blocks, after freeing a piece of 4 MiB
/// every size from 2 KB to 2 MB could be had, after freeing one of 1 or
/// 2 MiB not 100–300 KB (a table of a few hundred connections), and after
/// 512 KiB nothing above 9 KB. With the pieces of 256 KiB to 2 MiB that a
/// fragmented heap gives back, the 257th connection opened while memory
/// was short was refused with 10 MiB of reserve held.
pub const RESERVE_PIECE_BYTES: usize = 4 * 1024 * 1024;

/// Pieces of the reserve: enough for a burst of infallible allocations (a
/// connection's reply buffers, log lines) while clients delete jobs, and
/// for what [`try_or_spend`] lets clients spend.
pub const RESERVE_PIECES: usize = 4;

/// Bytes the reserve holds when it is whole.
pub const RESERVE_BYTES: usize = RESERVE_PIECES * RESERVE_PIECE_BYTES;

/// Pieces [`try_or_spend`] never spends, kept for what cannot fail into a
/// reply.
pub const RESERVE_PIECES_KEPT: usize = 1;

/// While memory is short, what must be left of the credit besides the
/// reserve's missing part and the body for a new job or tube to be
/// accepted: the most a put allocates besides its body when each paged
/// table it enters needs a fresh page (a chunk of the job arena, 64 KiB; a
/// page of the delayed jobs' column, 20 KiB, of the log's positions,
/// 16 KiB, and of the id index, 4 KiB), checked in the engine. (Its heaps
/// have room for as many jobs as the tube ever held.) About 130 deletes of
/// 1000-byte jobs.
pub const SHORT_MARGIN_BYTES: usize = 128 * 1024;

/// While memory is short, the reserve is tried at least this often
/// (memory may have come back from outside: another process, under strict
/// overcommit), besides once a piece's worth has been freed here.
pub const REPLENISH_INTERVAL_NS: Nanos = 100_000_000;

/// A shortage's start (and then its end) is logged at most this often.
pub const SHORTAGE_LOG_INTERVAL_NS: Nanos = 1_000_000_000;

/// How often [`Upkeep`] asks the allocator to give freed memory back to the
/// kernel (see there): a server that went quiet after a burst kept its
/// peak size (2,000 connections gone, 424 MB left). The look costs about
/// 10 µs when there is nothing to give back.
pub const COLLECT_INTERVAL_NS: Nanos = 1_000_000_000;

/// How long after the last work for a client collections go on: past
/// mimalloc's purge delay of a second, so the last one gives back what the
/// last work freed.
pub const COLLECT_QUIET_NS: Nanos = 2_500_000_000;

const PIECE: Layout = match Layout::from_size_align(RESERVE_PIECE_BYTES, 16) {
    Ok(layout) => layout,
    Err(_) => panic!("reserve piece layout"),
};

/// The reserve's pieces; null where a piece was spent.
static PIECES: [AtomicPtr<u8>; RESERVE_PIECES] = [const { AtomicPtr::new(std::ptr::null_mut()) }; RESERVE_PIECES];

/// Pieces the reserve holds.
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
/// retried after each piece of the reserve goes back to mimalloc, until one
/// try works or the reserve is gone (then Rust stops the process, as it
/// would have without a reserve).
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

/// Gives a piece of the reserve back to mimalloc, if the reserve keeps more
/// than `keep` pieces; false if there is none to give. The first piece of
/// a shortage starts the credit afresh: memory has run out, and the piece
/// is what there is. Later ones add to it: an allocation failed for want of
/// a page of its size, not for want of any free memory (freed job bodies
/// are still there for new ones), so the credit goes on counting free
/// memory from the start of the shortage.
fn spend_piece(keep: usize) -> bool {
    for slot in &PIECES {
        if HELD.load(Ordering::Acquire) <= keep {
            return false;
        }
        // Another thread may spend one meanwhile: then look at the next.
        let piece = slot.swap(std::ptr::null_mut(), Ordering::AcqRel);
        if piece.is_null() {
            continue;
        }
        HELD.fetch_sub(1, Ordering::AcqRel);
        if SHORT.swap(true, Ordering::AcqRel) {
            CREDIT.fetch_add(RESERVE_PIECE_BYTES as isize, Ordering::Relaxed);
        } else {
            CREDIT.store(RESERVE_PIECE_BYTES as isize, Ordering::Relaxed);
        }
        SPENT.fetch_add(1, Ordering::Relaxed);
        // Safety: the piece came from MiMalloc with this layout and is
        // referred to by nothing else.
        unsafe { MiMalloc.dealloc(piece, PIECE) };
        return true;
    }
    false
}

/// Takes back the pieces the reserve lacks, as far as mimalloc can give
/// them; true when it is whole. Memory is short until it is. Only one
/// thread (the shard's) calls it.
fn replenish() -> bool {
    for slot in &PIECES {
        if !slot.load(Ordering::Acquire).is_null() {
            continue;
        }
        // Straight from mimalloc: a failure here must not spend the
        // reserve it is rebuilding.
        // Safety: a valid, non-zero layout.
        let piece = unsafe { MiMalloc.alloc(PIECE) };
        if piece.is_null() {
            // The next would fail as this one did.
            return false;
        }
        slot.store(piece, Ordering::Release);
        HELD.fetch_add(1, Ordering::AcqRel);
        CREDIT.fetch_sub(RESERVE_PIECE_BYTES as isize, Ordering::Relaxed);
    }
    SHORT.store(false, Ordering::Release);
    true
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
    let missing = (RESERVE_PIECES - HELD.load(Ordering::Relaxed)) * RESERVE_PIECE_BYTES;
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
    /// A shortage is under way, as far as the last tick saw (the allocator
    /// itself cannot log: it must not allocate while failing).
    in_shortage: bool,
    /// Its start was logged, so its end is too.
    logged_shortage: bool,
    /// When a shortage was last logged, and shortages since that were not.
    shortage_logged_at: Option<Nanos>,
    shortages_unlogged: u64,
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

    /// Logs that memory ran out, at most once per [`SHORTAGE_LOG_INTERVAL_NS`]
    /// (the shortages in between are counted): a server that runs at the
    /// edge of its memory goes short and back many times a second.
    fn shortage_began(&mut self, now: Nanos) {
        self.in_shortage = true;
        if self.shortage_logged_at.is_some_and(|at| now < at + SHORTAGE_LOG_INTERVAL_NS) {
            self.shortages_unlogged += 1;
            return;
        }
        self.shortage_logged_at = Some(now);
        self.logged_shortage = true;
        let what = "runnerbean: out of memory; new jobs and tubes are refused until some is freed";
        match std::mem::take(&mut self.shortages_unlogged) {
            0 => eprintln!("{what}"),
            n => eprintln!("{what} ({n} more shortages since the last of these lines)"),
        }
    }

    /// Does what is due at `now`. Cheap when nothing is.
    pub fn tick(&mut self, now: Nanos) {
        if SHORT.load(Ordering::Relaxed) {
            if !self.in_shortage {
                self.shortage_began(now);
            }
            let credit = CREDIT.load(Ordering::Relaxed);
            let spent = SPENT.load(Ordering::Relaxed);
            let freed = credit.saturating_sub(self.credit_at_try) >= RESERVE_PIECE_BYTES as isize;
            if spent != self.spent_at_try || freed || now >= self.next_replenish_at {
                self.next_replenish_at = now + REPLENISH_INTERVAL_NS;
                self.spent_at_try = spent;
                replenish();
                self.credit_at_try = CREDIT.load(Ordering::Relaxed);
            }
        }
        if self.in_shortage && !SHORT.load(Ordering::Relaxed) {
            self.in_shortage = false;
            if std::mem::take(&mut self.logged_shortage) {
                eprintln!("runnerbean: memory is available again; new jobs and tubes are accepted");
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

/// Bytes the reserve holds now.
pub fn reserve_bytes() -> usize {
    HELD.load(Ordering::Relaxed) * RESERVE_PIECE_BYTES
}

/// Runs a fallible reservation; when it is refused and the reserve would
/// keep [`RESERVE_PIECES_KEPT`] without one more piece, spends it and tries
/// again. For what a client needs to get through a
/// shortage: its connection, room for the commands it pipelined (often
/// deletes, which are what free memory); the rest stays for what cannot
/// fail into a reply.
pub fn try_or_spend<R>(mut f: impl FnMut() -> Result<R, OutOfMemory>) -> Result<R, OutOfMemory> {
    match f() {
        Err(OutOfMemory) if spend_piece(RESERVE_PIECES_KEPT) => f(),
        result => result,
    }
}
