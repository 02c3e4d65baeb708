//! The transport between cores: one bounded single-producer
//! single-consumer ring per ordered pair of cores, and a wake-up per core.
//!
//! [`Mailboxes::new`] builds the rings for `n` cores and hands each core its
//! [`Mailbox`]: an [`Outbox`] holding the producing end of the ring to
//! every other core, an [`Inbox`] holding the consuming end of the ring
//! from every other core, and its own [`EventFd`], whose descriptor its
//! loop watches. What the messages mean (requests, replies, offers and
//! their answers) is the caller's; this module only moves them.
//!
//! A loop turn uses it like this: take a batch from every inbox ring and
//! act on it; push what other cores must see into the outbox, pausing a
//! connection whose message is refused (a full ring); at the end of the
//! turn [`Outbox::publish`] once, which makes each ring's new messages
//! visible with one store and wakes a receiver only when it sleeps; then
//! [`Inbox::prepare_sleep`], and sleep only when it says so;
//! [`Inbox::awake`] after the sleep. The eventfd must have a read armed (or
//! an epoll interest) at all times, so a wake written while the core runs
//! ends its next sleep at once instead of being missed.
//!
//! # Invariants
//! * Each ring has exactly one producer and one consumer, each owned by
//!   one core: the handles are `Send` and not `Clone`, so the types show
//!   which core may write and which may read.
//! * Per ring, messages arrive in the order they were pushed, each exactly
//!   once, and not before the producer's next publish.
//! * No lost wake-up: once [`Inbox::prepare_sleep`] has returned true, any
//!   later publish to one of the core's rings wakes it (see the ring's
//!   module for the fences that guarantee it).
//! * Bounded: a ring holds [`slots_for`] messages and never grows.
//!
//! # What it must never do
//! Block, lock, or allocate after [`Mailboxes::new`]; wake a core that has
//! not announced sleep; hold a message that was refused (it goes back to
//! the caller). A full ring is not a reason to wake its producer: what
//! filled it are requests, and the replies to them come back on the
//! opposite ring, whose arrival is the producer's cue to retry what it
//! paused.

// Every unsafe block here says why it is sound; the lint keeps it so.
#![deny(clippy::undocumented_unsafe_blocks)]

mod ring;
#[cfg(test)]
mod tests;
mod wake;

use std::io;
use std::sync::Arc;

pub use ring::{Batch, Consumer, Producer, ring};
pub use wake::{EventFd, Wake};

/// Messages one ring holds at least: the most one core can have in flight
/// to another before it pauses connections, with many cores. 256 is four
/// connections' worth of a full turn (`shard::COMMANDS_PER_TURN_MAX` is 64
/// commands).
pub const MAILBOX_SLOTS: usize = 256;

/// Messages one ring holds at most, with few cores.
pub const MAILBOX_SLOTS_MAX: usize = 4096;

/// What the rings into one core may take together, in bytes of slots.
pub const MAILBOX_BYTES_PER_CORE: usize = 4 << 20;

/// The slots of each ring for `cores` cores whose messages take `slot`
/// bytes: as many as [`MAILBOX_BYTES_PER_CORE`] gives each of a core's
/// `cores - 1` inbound rings, a power of two within [`MAILBOX_SLOTS`] and
/// [`MAILBOX_SLOTS_MAX`]. A ring of 256 held a quarter of what 25
/// connections keeping 32 puts each in flight to another core send in a
/// turn: the senders paused, replies came back in pieces, and sends (a
/// loopback send costs the kernel as much as 20 commands) multiplied: with
/// 4,096 slots `--cores 2` spent 1.5 times the CPU per put and drain of
/// `--cores 1` rather than 2.3 times (perf/RESULTS.md). Memory is the cost
/// that grows with the square of the cores: at 88 bytes a slot (the
/// server's `Envelope`), two cores take 0.7 MiB of rings, 16 cores 2,048
/// slots a ring (43 MiB), 64 cores 512 (182 MiB), resident only as slots
/// are first used.
pub fn slots_for(cores: usize, slot: usize) -> usize {
    let per_ring = MAILBOX_BYTES_PER_CORE / (slot.max(1) * cores.saturating_sub(1).max(1));
    let pow2 = if per_ring.is_power_of_two() { per_ring } else { per_ring.next_power_of_two() / 2 };
    pow2.clamp(MAILBOX_SLOTS, MAILBOX_SLOTS_MAX)
}

/// The rings of `n` cores, before they are handed out.
pub struct Mailboxes<T, W = EventFd> {
    cores: Vec<Mailbox<T, W>>,
}

/// One core's share: the rings it writes, the rings it reads, and the
/// wake-up other cores use to end its sleep. The fields are public so that
/// a loop can borrow its outbox and inbox apart.
pub struct Mailbox<T, W = EventFd> {
    pub core: usize,
    pub outbox: Outbox<T, W>,
    pub inbox: Inbox<T>,
    pub waker: Arc<W>,
}

/// The producing end of the ring to every other core, with each one's
/// wake-up.
pub struct Outbox<T, W = EventFd> {
    core: usize,
    /// Indexed by receiving core; `None` at our own index.
    to: Vec<Option<Link<T, W>>>,
}

struct Link<T, W> {
    producer: Producer<T>,
    waker: Arc<W>,
}

/// The consuming end of the ring from every other core.
pub struct Inbox<T> {
    core: usize,
    /// Indexed by sending core; `None` at our own index.
    from: Vec<Option<Consumer<T>>>,
}

impl<T: Send> Mailboxes<T, EventFd> {
    /// Rings of [`slots_for`] `cores` for every ordered pair of `cores`
    /// distinct cores, and an eventfd per core.
    pub fn new(cores: usize) -> io::Result<Mailboxes<T, EventFd>> {
        Mailboxes::with_wakers(cores, slots_for(cores, size_of::<T>()), |_| EventFd::new())
    }
}

impl<T: Send, W: Wake> Mailboxes<T, W> {
    /// Rings of `slots` (a power of two) for every ordered pair of
    /// `cores` distinct cores, with the wake-up `waker(core)` makes for
    /// each core.
    pub fn with_wakers(
        cores: usize,
        slots: usize,
        mut waker: impl FnMut(usize) -> io::Result<W>,
    ) -> io::Result<Mailboxes<T, W>> {
        assert!(cores >= 1, "mailboxes need at least one core");
        let wakers = (0..cores).map(|c| waker(c).map(Arc::new)).collect::<io::Result<Vec<_>>>()?;
        let mut to: Vec<Vec<Option<Link<T, W>>>> = (0..cores).map(|_| (0..cores).map(|_| None).collect()).collect();
        let mut from: Vec<Vec<Option<Consumer<T>>>> = (0..cores).map(|_| (0..cores).map(|_| None).collect()).collect();
        for sender in 0..cores {
            for receiver in (0..cores).filter(|&r| r != sender) {
                let (producer, consumer) = ring(slots);
                to[sender][receiver] = Some(Link { producer, waker: Arc::clone(&wakers[receiver]) });
                from[receiver][sender] = Some(consumer);
            }
        }
        let cores = to
            .into_iter()
            .zip(from)
            .zip(wakers)
            .enumerate()
            .map(|(core, ((to, from), waker))| Mailbox {
                core,
                outbox: Outbox { core, to },
                inbox: Inbox { core, from },
                waker,
            })
            .collect();
        Ok(Mailboxes { cores })
    }

    /// Each core's mailbox, in core order, to move to its thread.
    pub fn into_cores(self) -> Vec<Mailbox<T, W>> {
        self.cores
    }
}

impl<T, W: Wake> Outbox<T, W> {
    /// The core that sends.
    pub fn core(&self) -> usize {
        self.core
    }

    /// How many cores there are (this one included).
    pub fn cores(&self) -> usize {
        self.to.len()
    }

    fn link(&mut self, core: usize) -> &mut Link<T, W> {
        match self.to.get_mut(core) {
            Some(Some(link)) => link,
            // A core never sends to itself and only to cores that exist:
            // a caller that does has routed wrong.
            _ => panic!("core {} has no ring to core {core}", self.core),
        }
    }

    /// Pushes `message` for `core`; it becomes visible at the next
    /// [`Outbox::publish`]. A full ring hands it back.
    pub fn push(&mut self, core: usize, message: T) -> Result<(), T> {
        self.link(core).producer.push(message)
    }

    /// Messages the ring to `core` still has room for.
    pub fn free(&mut self, core: usize) -> usize {
        self.link(core).producer.free()
    }

    /// Publishes what was pushed to every core since the last publish, and
    /// wakes each receiver that announced sleep, once. Returns how many
    /// were woken. A ring with nothing new costs one comparison.
    pub fn publish(&mut self) -> usize {
        let mut woken = 0;
        for link in self.to.iter_mut().flatten() {
            if link.producer.publish() {
                link.waker.wake();
                woken += 1;
            }
        }
        woken
    }
}

impl<T> Inbox<T> {
    /// The core that receives.
    pub fn core(&self) -> usize {
        self.core
    }

    /// The ring from `core`, to take a batch from it and stop where the
    /// caller must (for example when its own reply ring is full).
    pub fn from(&mut self, core: usize) -> &mut Consumer<T> {
        match self.from.get_mut(core) {
            Some(Some(consumer)) => consumer,
            _ => panic!("core {} has no ring from core {core}", self.core),
        }
    }

    /// Takes one batch from every ring, calling `f(sender, message)` for
    /// each message, and returns how many there were.
    pub fn drain(&mut self, mut f: impl FnMut(usize, T)) -> usize {
        let mut taken = 0;
        for (sender, consumer) in self.from.iter_mut().enumerate() {
            if let Some(consumer) = consumer {
                for message in consumer.batch() {
                    f(sender, message);
                    taken += 1;
                }
            }
        }
        taken
    }

    /// Announces to every sender that this core is about to sleep, then
    /// checks every ring once more: true when all are empty and the core
    /// may sleep (the next publish to any of them wakes it); false when a
    /// message arrived meanwhile, and the announcements are withdrawn. One
    /// fence serves all rings.
    pub fn prepare_sleep(&mut self) -> bool {
        for consumer in self.from.iter_mut().flatten() {
            consumer.announce_sleep();
        }
        // The sleep protocol's fence (see the ring's module): orders the
        // announcements before the re-checks below.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        if self.from.iter().flatten().any(Consumer::has_published) {
            self.awake();
            return false;
        }
        true
    }

    /// Withdraws the announcements of sleep once the core runs again,
    /// whatever woke it, so senders stop paying for wakes it does not need.
    pub fn awake(&mut self) {
        for consumer in self.from.iter_mut().flatten() {
            consumer.awake();
        }
    }
}
