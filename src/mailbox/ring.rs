//! One bounded single-producer single-consumer ring, split into the
//! [`Producer`] that one core holds and the [`Consumer`] that another holds.
//!
//! # How the two sides meet
//! The ring is a power-of-two array of slots and two counters that only
//! grow (modulo `usize`): `tail`, how many messages the producer has
//! published, and `head`, how many the consumer has taken. A slot's index is
//! the counter masked by the capacity, so the counters can wrap without a
//! special case: `tail - head` (wrapping) is always the number of published
//! messages not yet taken, between 0 and the capacity.
//!
//! Each side keeps its own counter in its handle and writes it to the shared
//! ring only once per batch: the producer's [`Producer::publish`] is one
//! release store of `tail`, the consumer's [`Batch`] is one acquire load of
//! `tail` when it starts and one release store of `head` when it ends. The
//! release store of `tail` orders the writes of the slots before it, so the
//! consumer's acquire load that sees the new `tail` also sees the messages;
//! the release store of `head` orders the consumer's reads of the slots
//! before the producer's acquire load that lets it write them again.
//!
//! # Sleeping
//! A consumer that is about to sleep sets the ring's `sleeping` flag, then
//! a sequentially consistent fence, then loads `tail` once more; a producer
//! that publishes stores `tail`, then a sequentially consistent fence, then
//! loads the flag. The two fences are ordered one before the other in the
//! single total order of such fences, and whichever comes second sees the
//! other side's store: either the consumer sees the new `tail` (and does not
//! sleep) or the producer sees the flag (and wakes it). Without the fences
//! both loads could be satisfied before the other side's store reaches the
//! cache (a store-buffer reordering that x86 allows too), the producer would
//! skip the wake and the consumer would sleep on a message: a lost wake-up.
//! The producer clears the flag when it reports a wake, so one announcement
//! earns at most one wake from this ring.
//!
//! # Invariants
//! * Slots in `[head, tail)` of the shared counters hold published messages
//!   that only the consumer reads; slots in `[tail, producer's tail)` hold
//!   messages pushed but not published, that only the producer touches;
//!   every other slot is uninitialised. No slot is read twice or written
//!   while it holds a message.
//! * A message is dropped exactly once: by whoever takes it from a batch,
//!   by the [`Producer`] when it goes with the message unpublished, or by
//!   the ring when the last handle goes with the message still in it.
//!
//! # What it must never do
//! Block, allocate after construction, or take a lock. A full ring refuses
//! the message and hands it back; the caller holds it or pauses whatever
//! produces it.

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};

/// Keeps what it holds on cache lines of its own. 128 bytes rather than
/// 64: x86-64's spatial prefetcher fetches lines in aligned pairs, so two
/// counters 64 bytes apart still bounce between cores together.
#[repr(C, align(128))]
struct Padded<T>(T);

/// What the two handles share. `repr(C)` keeps the read-only fields on the
/// first line and each written counter on a line of its own.
#[repr(C)]
struct Ring<T> {
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
    /// The capacity minus one: a slot's index is a counter masked by it.
    mask: usize,
    /// Messages published; written by the producer once per batch.
    tail: Padded<AtomicUsize>,
    /// Messages taken; written by the consumer once per batch.
    head: Padded<AtomicUsize>,
    /// The consumer's announcement that it is about to sleep; set and
    /// cleared by the consumer, cleared by the producer when it reports a
    /// wake. Apart from the counters so that `publish`, which reads it
    /// every time, does not miss the cache each time the consumer stores
    /// `head`.
    sleeping: Padded<AtomicBool>,
}

// Safety: the ring hands each slot to one side at a time (the module's
// invariants): the producer writes only slots outside `[head, tail)` and
// the consumer reads only slots inside it, and each handover is a release
// store seen by an acquire load. The counters and the flag are atomics.
// So sharing the ring between two threads is sound when the messages may
// move between threads (`T: Send`); nothing in it is shared by reference.
unsafe impl<T: Send> Sync for Ring<T> {}

impl<T> Ring<T> {
    fn capacity(&self) -> usize {
        self.mask + 1
    }

    fn slot(&self, counter: usize) -> *mut T {
        // A cast, not a reference: the slot may be uninitialised.
        self.slots[counter & self.mask].get().cast()
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        // Both handles are gone: the last one's `Arc` drop made every
        // store of the other visible here. The producer dropped what it had
        // not published; what was published and not taken is ours.
        let head = *self.head.0.get_mut();
        let tail = *self.tail.0.get_mut();
        let mut at = head;
        while at != tail {
            // Safety: slots in `[head, tail)` hold published messages that
            // nobody took, and nobody else can reach the ring any more.
            unsafe { self.slot(at).drop_in_place() };
            at = at.wrapping_add(1);
        }
    }
}

/// The writing end of a ring: the core that sends holds it.
///
/// `Send` (it may be made on one thread and moved to its core) but not
/// `Clone`: one producer per ring is what makes it lock-free.
pub struct Producer<T> {
    ring: Arc<Ring<T>>,
    /// Messages pushed, published or not.
    tail: usize,
    /// Messages published: the value last stored in the ring's `tail`.
    published: usize,
    /// The consumer's `head` as last read; it only grows, so a stale value
    /// only underestimates the room.
    head: usize,
}

/// The reading end of a ring: the core that receives holds it.
///
/// `Send` but not `Clone`, for the same reason as [`Producer`].
pub struct Consumer<T> {
    ring: Arc<Ring<T>>,
    /// Messages taken.
    head: usize,
    /// Messages taken and reported: the value last stored in the ring's
    /// `head`.
    released: usize,
}

/// A ring of `slots` messages (a power of two), as its two ends.
pub fn ring<T: Send>(slots: usize) -> (Producer<T>, Consumer<T>) {
    ring_from(slots, 0)
}

/// A ring whose counters start at `start`: tests start them near the top
/// of `usize` to see them wrap.
fn ring_from<T: Send>(slots: usize, start: usize) -> (Producer<T>, Consumer<T>) {
    assert!(slots.is_power_of_two(), "a ring's slots must be a power of two, not {slots}");
    let slots: Box<[UnsafeCell<MaybeUninit<T>>]> = (0..slots).map(|_| UnsafeCell::new(MaybeUninit::uninit())).collect();
    let mask = slots.len() - 1;
    let ring = Arc::new(Ring {
        slots,
        mask,
        tail: Padded(AtomicUsize::new(start)),
        head: Padded(AtomicUsize::new(start)),
        sleeping: Padded(AtomicBool::new(false)),
    });
    let producer = Producer { ring: Arc::clone(&ring), tail: start, published: start, head: start };
    let consumer = Consumer { ring, head: start, released: start };
    (producer, consumer)
}

impl<T> Producer<T> {
    pub fn capacity(&self) -> usize {
        self.ring.capacity()
    }

    /// Writes `message` into the next slot, where the consumer cannot see
    /// it until [`Producer::publish`]. A full ring refuses it and hands it
    /// back; the ring never grows.
    pub fn push(&mut self, message: T) -> Result<(), T> {
        if self.tail.wrapping_sub(self.head) == self.capacity() {
            // Acquire: the consumer's reads of the slots it freed happen
            // before we write them again.
            self.head = self.ring.head.0.load(Ordering::Acquire);
            if self.tail.wrapping_sub(self.head) == self.capacity() {
                return Err(message);
            }
        }
        // Safety: `tail - head < capacity`, so the slot is outside the
        // consumer's `[head, tail)` and beyond what we pushed: it is
        // uninitialised and only we may touch it.
        unsafe { self.ring.slot(self.tail).write(message) };
        self.tail = self.tail.wrapping_add(1);
        Ok(())
    }

    /// Makes every message pushed since the last publish visible to the
    /// consumer at once, and says whether the consumer must be woken: true
    /// when it had announced that it was going to sleep, at most once per
    /// announcement. Nothing new to publish costs one comparison and
    /// returns false.
    pub fn publish(&mut self) -> bool {
        if self.tail == self.published {
            return false;
        }
        self.published = self.tail;
        // Release: the slots written before are visible to whoever sees
        // this value (the consumer's acquire load).
        self.ring.tail.0.store(self.tail, Ordering::Release);
        // The sleep protocol's fence (see the module's comment): without it
        // the load of the flag below could be satisfied before the store
        // above is visible to the consumer's re-check.
        fence(Ordering::SeqCst);
        // A plain load first: the flag is almost always clear, and a swap
        // would take the line exclusively on every publish.
        let sleeping = &self.ring.sleeping.0;
        sleeping.load(Ordering::Relaxed) && sleeping.swap(false, Ordering::Relaxed)
    }

    /// Slots the producer can fill now (published or not, what it pushed
    /// counts as taken): the room left before [`Producer::push`] refuses,
    /// for the caller's back-pressure. Reads the consumer's counter.
    pub fn free(&mut self) -> usize {
        self.head = self.ring.head.0.load(Ordering::Acquire);
        self.capacity() - self.tail.wrapping_sub(self.head)
    }
}

impl<T> Drop for Producer<T> {
    fn drop(&mut self) {
        // What was never published was never sent: it goes with us. The
        // ring keeps what was published, for the consumer or its own drop.
        while self.published != self.tail {
            // Safety: slots in `[published, tail)` hold messages we pushed
            // and did not publish; the consumer never reads them.
            unsafe { self.ring.slot(self.published).drop_in_place() };
            self.published = self.published.wrapping_add(1);
        }
    }
}

impl<T> Consumer<T> {
    pub fn capacity(&self) -> usize {
        self.ring.capacity()
    }

    /// The messages published so far, as an iterator that takes them one
    /// by one. One acquire load when it starts; when it is dropped, one
    /// release store gives the taken slots back to the producer. Messages
    /// published while it runs wait for the next batch, so a batch holds at
    /// most one ring's worth.
    pub fn batch(&mut self) -> Batch<'_, T> {
        // Acquire: pairs with the producer's release store of `tail`, so
        // the messages it counts are visible.
        let end = self.ring.tail.0.load(Ordering::Acquire);
        Batch { consumer: self, end }
    }

    /// Announces that the consumer is about to sleep and checks the ring
    /// once more: true when it is empty and the consumer may sleep (a
    /// later publish will return true and the producer will wake it); false
    /// when a message arrived meanwhile, and the announcement is withdrawn.
    /// [`Consumer::awake`] withdraws it once the consumer is running again.
    pub fn prepare_sleep(&mut self) -> bool {
        self.announce_sleep();
        fence(Ordering::SeqCst);
        if self.has_published() {
            self.awake();
            return false;
        }
        true
    }

    /// Withdraws an announcement of sleep, so that producers stop waking a
    /// consumer that is running. Harmless when there was none.
    pub fn awake(&mut self) {
        // Relaxed: a producer that still sees the flag only wakes us once
        // more, and a running consumer checks the ring before it sleeps.
        self.ring.sleeping.0.store(false, Ordering::Relaxed);
    }

    /// The first half of [`Consumer::prepare_sleep`]: the caller issues
    /// the fence, then [`Consumer::has_published`]. Several rings share one
    /// fence this way.
    pub(super) fn announce_sleep(&mut self) {
        self.ring.sleeping.0.store(true, Ordering::Relaxed);
    }

    /// Whether messages were published that the consumer has not taken.
    pub(super) fn has_published(&self) -> bool {
        self.ring.tail.0.load(Ordering::Acquire) != self.head
    }

    /// Gives the slots taken so far back to the producer.
    fn release(&mut self) {
        if self.released != self.head {
            self.released = self.head;
            // Release: our reads of the slots happen before the producer,
            // after its acquire load of this value, writes them again.
            self.ring.head.0.store(self.head, Ordering::Release);
        }
    }
}

impl<T> Drop for Consumer<T> {
    fn drop(&mut self) {
        // A forgotten batch may have taken messages without releasing
        // them; the ring's drop must not drop those again.
        self.release();
    }
}

/// Messages taken from a [`Consumer`] in one batch; see
/// [`Consumer::batch`]. What the caller does not take stays in the ring
/// for the next batch.
pub struct Batch<'a, T> {
    consumer: &'a mut Consumer<T>,
    /// The producer's `tail` when the batch began.
    end: usize,
}

impl<T> Iterator for Batch<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        let c = &mut *self.consumer;
        if c.head == self.end {
            return None;
        }
        // Safety: `head != end`, and `end` is a published `tail` we loaded
        // with acquire, so the slot holds a published message whose writes
        // we see. We move it out and advance `head` before anything else,
        // so it is never read again, even if this batch is forgotten.
        let message = unsafe { c.ring.slot(c.head).read() };
        c.head = c.head.wrapping_add(1);
        Some(message)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.end.wrapping_sub(self.consumer.head);
        (left, Some(left))
    }
}

impl<T> ExactSizeIterator for Batch<'_, T> {}

impl<T> Drop for Batch<'_, T> {
    fn drop(&mut self) {
        self.consumer.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    /// A message that counts its drops, to check that each goes once.
    #[derive(Debug)]
    struct Counted {
        value: u64,
        drops: Arc<AtomicUsize>,
    }

    impl Drop for Counted {
        fn drop(&mut self) {
            self.drops.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn counted(value: u64, drops: &Arc<AtomicUsize>) -> Counted {
        Counted { value, drops: Arc::clone(drops) }
    }

    fn take<T>(c: &mut Consumer<T>) -> Vec<T> {
        c.batch().collect()
    }

    #[test]
    fn messages_come_out_in_order_across_many_wraparounds() {
        let (mut p, mut c) = ring::<u64>(4);
        let mut next = 0;
        let mut expect = 0;
        // Batches of 1, 2, 3, 4 messages, so the slots used each time
        // start at every offset of the ring.
        for round in 0..100 {
            let n = round % 4 + 1;
            for _ in 0..n {
                p.push(next).unwrap();
                next += 1;
            }
            assert!(!p.publish());
            for got in take(&mut c) {
                assert_eq!(got, expect);
                expect += 1;
            }
        }
        assert_eq!(expect, next);
        assert_eq!(expect, 250);
    }

    #[test]
    fn counters_that_wrap_around_usize_keep_order_and_room() {
        let (mut p, mut c) = ring_from::<u64>(8, usize::MAX - 5);
        for round in 0..4u64 {
            for i in 0..8 {
                p.push(round * 8 + i).unwrap();
            }
            assert_eq!(p.push(99), Err(99), "the ring holds 8 however its counters wrap");
            assert_eq!(p.free(), 0);
            p.publish();
            assert_eq!(take(&mut c), (round * 8..round * 8 + 8).collect::<Vec<_>>());
            assert_eq!(p.free(), 8);
        }
    }

    #[test]
    fn a_full_ring_refuses_and_returns_the_message() {
        let drops = Arc::new(AtomicUsize::new(0));
        let (mut p, mut c) = ring::<Counted>(4);
        assert_eq!(p.capacity(), 4);
        assert_eq!(p.free(), 4);
        for i in 0..4 {
            assert!(p.push(counted(i, &drops)).is_ok());
            assert_eq!(p.free(), 3 - i as usize);
        }
        let refused = p.push(counted(7, &drops)).unwrap_err();
        assert_eq!(refused.value, 7, "the refused message comes back whole");
        assert_eq!(drops.load(Ordering::Relaxed), 0);
        drop(refused);
        // Published or not, the four still hold their slots.
        p.publish();
        assert!(p.push(counted(8, &drops)).is_err());
        assert_eq!(p.free(), 0);
        // Taking two frees two once the batch ends.
        {
            let mut batch = c.batch();
            assert_eq!(batch.len(), 4);
            assert_eq!(batch.next().unwrap().value, 0);
            assert_eq!(batch.next().unwrap().value, 1);
            assert_eq!(batch.len(), 2);
        }
        assert_eq!(p.free(), 2);
        p.push(counted(4, &drops)).unwrap();
        p.push(counted(5, &drops)).unwrap();
        assert!(p.push(counted(6, &drops)).is_err());
        p.publish();
        let values: Vec<u64> = take(&mut c).iter().map(|m| m.value).collect();
        assert_eq!(values, [2, 3, 4, 5]);
        assert_eq!(drops.load(Ordering::Relaxed), 9, "3 refused, 6 taken");
    }

    #[test]
    fn nothing_is_visible_before_publish() {
        let (mut p, mut c) = ring::<u32>(8);
        p.push(1).unwrap();
        p.push(2).unwrap();
        assert_eq!(c.batch().len(), 0);
        assert!(!c.has_published());
        assert!(!p.publish(), "nobody sleeps");
        p.push(3).unwrap();
        // The batch sees what was published when it began, not the push
        // that followed.
        assert_eq!(take(&mut c), [1, 2]);
        assert!(!p.publish());
        assert_eq!(take(&mut c), [3]);
        assert!(!p.publish(), "nothing new to publish");
        assert!(take(&mut c).is_empty());
    }

    #[test]
    fn a_batch_sees_only_what_was_published_when_it_began() {
        let (mut p, mut c) = ring::<u32>(8);
        p.push(1).unwrap();
        p.publish();
        let mut batch = c.batch();
        assert_eq!(batch.next(), Some(1));
        // The producer publishes more while the batch runs: the batch's
        // end stays where it began.
        p.push(2).unwrap();
        p.publish();
        assert_eq!(batch.next(), None);
        drop(batch);
        assert_eq!(take(&mut c), [2]);
    }

    #[test]
    fn a_sleeping_consumer_is_woken_once_per_announcement() {
        let (mut p, mut c) = ring::<u32>(8);
        assert!(c.prepare_sleep(), "an empty ring lets the consumer sleep");
        p.push(1).unwrap();
        assert!(p.publish(), "the consumer announced sleep");
        p.push(2).unwrap();
        assert!(!p.publish(), "one wake per announcement");
        c.awake();
        assert_eq!(take(&mut c), [1, 2]);

        // Messages published before the re-check: no sleep, and the
        // withdrawn announcement earns no wake.
        p.push(3).unwrap();
        p.publish();
        assert!(!c.prepare_sleep());
        p.push(4).unwrap();
        assert!(!p.publish());
        assert_eq!(take(&mut c), [3, 4]);

        // Woken by something else: awake() withdraws the announcement.
        assert!(c.prepare_sleep());
        c.awake();
        p.push(5).unwrap();
        assert!(!p.publish());
        assert_eq!(take(&mut c), [5]);
        // A publish with nothing new never wakes.
        assert!(c.prepare_sleep());
        assert!(!p.publish());
        p.push(6).unwrap();
        assert!(p.publish());
    }

    #[test]
    fn leftovers_are_dropped_once_whichever_end_goes_last() {
        // Each case: 3 published, 1 taken, 2 pushed and not published.
        for producer_last in [false, true] {
            let drops = Arc::new(AtomicUsize::new(0));
            let (mut p, mut c) = ring::<Counted>(8);
            for i in 0..3 {
                p.push(counted(i, &drops)).unwrap();
            }
            p.publish();
            assert_eq!(c.batch().next().unwrap().value, 0);
            assert_eq!(drops.load(Ordering::Relaxed), 1);
            p.push(counted(3, &drops)).unwrap();
            p.push(counted(4, &drops)).unwrap();
            if producer_last {
                drop(c);
                assert_eq!(drops.load(Ordering::Relaxed), 1, "the producer may still publish into the ring");
                drop(p);
            } else {
                drop(p);
                assert_eq!(drops.load(Ordering::Relaxed), 3, "the unpublished two went with the producer");
                drop(c);
            }
            assert_eq!(drops.load(Ordering::Relaxed), 5);
        }
    }

    #[test]
    fn a_consumer_outliving_its_producer_still_takes_what_was_published() {
        let drops = Arc::new(AtomicUsize::new(0));
        let (mut p, mut c) = ring::<Counted>(4);
        p.push(counted(0, &drops)).unwrap();
        p.publish();
        p.push(counted(1, &drops)).unwrap();
        drop(p);
        let values: Vec<u64> = take(&mut c).iter().map(|m| m.value).collect();
        assert_eq!(values, [0], "only what was published was sent");
        assert_eq!(drops.load(Ordering::Relaxed), 2);
        drop(c);
        assert_eq!(drops.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_forgotten_batch_neither_repeats_nor_drops_twice() {
        let drops = Arc::new(AtomicUsize::new(0));
        let (mut p, mut c) = ring::<Counted>(4);
        for i in 0..4 {
            p.push(counted(i, &drops)).unwrap();
        }
        p.publish();
        let mut batch = c.batch();
        let first = batch.next().unwrap();
        std::mem::forget(batch);
        assert_eq!(first.value, 0);
        drop(first);
        // The taken slot was not given back yet: the producer sees a full
        // ring, which is safe.
        assert_eq!(p.free(), 0);
        let values: Vec<u64> = take(&mut c).iter().map(|m| m.value).collect();
        assert_eq!(values, [1, 2, 3], "the message taken by the forgotten batch is not seen again");
        assert_eq!(p.free(), 4);
        p.push(counted(4, &drops)).unwrap();
        p.publish();
        let mut batch = c.batch();
        assert_eq!(batch.next().unwrap().value, 4);
        std::mem::forget(batch);
        drop(c);
        drop(p);
        assert_eq!(drops.load(Ordering::Relaxed), 5);
    }

    #[test]
    #[should_panic(expected = "power of two")]
    fn slots_must_be_a_power_of_two() {
        let _ = ring::<u8>(6);
    }

    #[test]
    fn the_handles_can_move_between_threads_and_the_indices_do_not_share_a_line() {
        fn send<T: Send>() {}
        send::<Producer<String>>();
        send::<Consumer<String>>();
        assert_eq!(std::mem::offset_of!(Ring<u8>, tail) % 128, 0);
        assert!(std::mem::offset_of!(Ring<u8>, head) - std::mem::offset_of!(Ring<u8>, tail) >= 128);
        assert!(std::mem::offset_of!(Ring<u8>, sleeping) - std::mem::offset_of!(Ring<u8>, head) >= 128);
    }

    #[derive(Clone, Debug)]
    enum Step {
        Push,
        Publish,
        /// Take up to this many from one batch.
        Take(usize),
        Free,
        Sleep,
        Awake,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => Just(Step::Push),
            2 => Just(Step::Publish),
            2 => (0..6usize).prop_map(Step::Take),
            1 => Just(Step::Free),
            1 => Just(Step::Sleep),
            1 => Just(Step::Awake),
        ]
    }

    proptest! {
        /// Random single-threaded use against a model: a queue of what was
        /// published, a queue of what was pushed since, and the flag.
        #[test]
        fn the_ring_behaves_as_its_model(steps in proptest::collection::vec(step(), 0..200), start in any::<usize>()) {
            const SLOTS: usize = 4;
            let drops = Arc::new(AtomicUsize::new(0));
            let (mut p, mut c) = ring_from::<Counted>(SLOTS, start);
            let mut published: VecDeque<u64> = VecDeque::new();
            let mut pending: VecDeque<u64> = VecDeque::new();
            let mut sleeping = false;
            let mut made = 0u64;
            for s in steps {
                match s {
                    Step::Push => {
                        let r = p.push(counted(made, &drops));
                        if published.len() + pending.len() < SLOTS {
                            prop_assert!(r.is_ok());
                            pending.push_back(made);
                        } else {
                            prop_assert_eq!(r.unwrap_err().value, made);
                        }
                        made += 1;
                    }
                    Step::Publish => {
                        let woke = p.publish();
                        let new = !pending.is_empty();
                        prop_assert_eq!(woke, new && sleeping);
                        if new {
                            sleeping = false;
                        }
                        published.extend(pending.drain(..));
                    }
                    Step::Take(n) => {
                        let mut batch = c.batch();
                        prop_assert_eq!(batch.len(), published.len());
                        for _ in 0..n {
                            prop_assert_eq!(batch.next().map(|m| m.value), published.pop_front());
                        }
                    }
                    Step::Free => prop_assert_eq!(p.free(), SLOTS - published.len() - pending.len()),
                    Step::Sleep => {
                        let may = c.prepare_sleep();
                        prop_assert_eq!(may, published.is_empty());
                        sleeping = may;
                    }
                    Step::Awake => {
                        c.awake();
                        sleeping = false;
                    }
                }
            }
            drop(p);
            drop(c);
            prop_assert_eq!(drops.load(Ordering::Relaxed) as u64, made);
        }
    }
}
