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
//!   through [`fallible`], and a refusal becomes a reply. Moves of a job
//!   between queues never allocate: room in every heap a job can enter is
//!   reserved when it is put.
//! * **A reserve for what is left.** A few allocations stay infallible
//!   (small log and bookkeeping buffers, the allocator's own metadata). The
//!   [`Allocator`] sets aside [`RESERVE_BLOCKS`] blocks of
//!   [`RESERVE_BLOCK_BYTES`] at start-up, untouched, so they cost address
//!   space and commit charge (what `ulimit -v` and strict overcommit count)
//!   but no resident memory. When an infallible allocation fails, one block
//!   goes back to the allocator and the allocation is tried again; from
//!   then on memory is *short*: puts, new tubes and new connections are
//!   refused until [`Upkeep`] has taken every block back, which it tries
//!   once enough memory has been freed.
//!
//! # What it must never do
//! Allocate while handling a failed allocation, or let a fallible
//! reservation dip into the reserve: that is what [`fallible`] marks.

use std::cell::Cell;

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

/// Makes room for `additional` more elements, or refuses.
pub fn try_reserve<T>(v: &mut Vec<T>, additional: usize) -> Result<(), OutOfMemory> {
    fallible(|| v.try_reserve(additional)).map_err(|_| OutOfMemory)
}

/// Makes room for exactly `additional` more elements, or refuses.
pub fn try_reserve_exact<T>(v: &mut Vec<T>, additional: usize) -> Result<(), OutOfMemory> {
    fallible(|| v.try_reserve_exact(additional)).map_err(|_| OutOfMemory)
}
