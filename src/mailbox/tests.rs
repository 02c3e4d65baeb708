//! Mailboxes between cores: the pairs they connect, the wakes they send,
//! and the rings under real threads. The ring alone, single-threaded, is
//! tested in `ring.rs`.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::*;

/// A wake-up that counts.
#[derive(Default)]
struct Count(AtomicUsize);

impl Wake for Count {
    fn wake(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

fn counted(cores: usize, slots: usize) -> Vec<Mailbox<(usize, u64), Count>> {
    Mailboxes::with_wakers(cores, slots, |_| Ok(Count::default())).unwrap().into_cores()
}

fn wakes(m: &Mailbox<(usize, u64), Count>) -> usize {
    m.waker.0.load(Ordering::Relaxed)
}

/// How long a thread in these tests may wait without progress before the
/// test fails: far beyond anything a working ring needs, so that a hang
/// fails instead of stalling the suite. Not a measure of speed: it counts
/// from the last message that moved, so a slow machine is not a hang.
const HANG_GUARD: Duration = Duration::from_secs(30);

/// A small deterministic generator, so that a failing run repeats.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Waits until `fd` is readable; false when the guard ran out.
fn wait_readable(fd: i32, guard: Duration) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    loop {
        // Safety: one pollfd that lives across the call.
        let n = unsafe { libc::poll(&mut p, 1, guard.as_millis() as i32) };
        if n >= 0 {
            return n == 1;
        }
        assert_eq!(std::io::Error::last_os_error().kind(), std::io::ErrorKind::Interrupted);
    }
}

#[test]
fn every_ordered_pair_of_cores_has_its_own_ring() {
    let mut cores = counted(3, 8);
    for (i, m) in cores.iter().enumerate() {
        assert_eq!(m.core, i);
        assert_eq!(m.outbox.core(), i);
        assert_eq!(m.inbox.core(), i);
    }
    for m in cores.iter_mut() {
        let me = m.core;
        for to in (0..3).filter(|&t| t != me) {
            assert_eq!(m.outbox.free(to), 8);
            m.outbox.push(to, (me, to as u64 * 10)).unwrap();
            m.outbox.push(to, (me, to as u64 * 10 + 1)).unwrap();
            assert_eq!(m.outbox.free(to), 6);
        }
        assert_eq!(m.outbox.publish(), 0, "nobody sleeps");
    }
    for m in cores.iter_mut() {
        let me = m.core;
        let mut got = Vec::new();
        let n = m.inbox.drain(|from, message| got.push((from, message)));
        let expect: Vec<_> = (0..3)
            .filter(|&f| f != me)
            .flat_map(|f| [(f, (f, me as u64 * 10)), (f, (f, me as u64 * 10 + 1))])
            .collect();
        assert_eq!(n, 4);
        assert_eq!(got, expect, "core {me} gets each sender's messages, in order, tagged with the sender");
        assert_eq!(m.inbox.drain(|_, _| panic!("drained twice")), 0);
    }
    assert_eq!(cores.iter().map(wakes).sum::<usize>(), 0);
}

#[test]
fn only_a_sleeping_core_is_woken_and_once_per_sleep() {
    let mut cores = counted(3, 8);
    let (first, rest) = cores.split_at_mut(1);
    let (a, rest) = (&mut first[0], rest);
    let (b, c) = rest.split_at_mut(1);
    let (b, c) = (&mut b[0], &mut c[0]);

    assert!(c.inbox.prepare_sleep(), "c's rings are empty");
    a.outbox.push(1, (0, 1)).unwrap();
    a.outbox.push(2, (0, 2)).unwrap();
    assert_eq!(a.outbox.publish(), 1);
    assert_eq!((wakes(b), wakes(c)), (0, 1), "b was running; c slept");
    // c has not run yet: more messages for it earn no second wake.
    a.outbox.push(2, (0, 3)).unwrap();
    assert_eq!(a.outbox.publish(), 0);
    b.outbox.push(2, (1, 1)).unwrap();
    assert_eq!(b.outbox.publish(), 1, "b's ring to c carries c's announcement too");
    assert_eq!(wakes(c), 2);

    c.inbox.awake();
    let mut got = Vec::new();
    c.inbox.drain(|from, m| got.push((from, m)));
    assert_eq!(got, [(0, (0, 2)), (0, (0, 3)), (1, (1, 1))]);
    a.outbox.push(2, (0, 4)).unwrap();
    assert_eq!(a.outbox.publish(), 0, "c is awake");

    // A message published before c's re-check: c must not sleep.
    assert!(!c.inbox.prepare_sleep());
    b.outbox.push(2, (1, 2)).unwrap();
    assert_eq!(b.outbox.publish(), 0, "the announcement was withdrawn");
    assert_eq!(c.inbox.drain(|_, _| {}), 2);
    assert!(c.inbox.prepare_sleep());
    b.outbox.push(2, (1, 3)).unwrap();
    assert_eq!(b.outbox.publish(), 1);
    assert_eq!(wakes(c), 3);
    assert_eq!(wakes(b), 0);
    assert_eq!(b.inbox.drain(|_, _| {}), 1, "b's message from a waited for it");
}

#[test]
fn a_full_ring_hands_the_message_back_and_leaves_the_others_alone() {
    let mut cores = counted(3, 2);
    let a = &mut cores[0];
    a.outbox.push(1, (0, 0)).unwrap();
    a.outbox.push(1, (0, 1)).unwrap();
    assert_eq!(a.outbox.push(1, (0, 2)), Err((0, 2)));
    assert_eq!(a.outbox.free(1), 0);
    assert_eq!(a.outbox.free(2), 2, "the ring to core 2 is another ring");
    a.outbox.push(2, (0, 9)).unwrap();
}

#[test]
fn one_core_has_no_rings() {
    let mut cores = counted(1, 8);
    let m = &mut cores[0];
    assert_eq!(m.outbox.publish(), 0);
    assert_eq!(m.inbox.drain(|_, _| panic!("no sender")), 0);
    assert!(m.inbox.prepare_sleep());
}

#[test]
#[should_panic(expected = "core 1 has no ring to core 1")]
fn a_core_cannot_send_to_itself() {
    let mut cores = counted(2, 8);
    let _ = cores[1].outbox.push(1, (1, 0));
}

#[test]
#[should_panic(expected = "core 0 has no ring from core 5")]
fn a_core_has_no_ring_from_a_core_that_does_not_exist() {
    let mut cores = counted(2, 8);
    let _ = cores[0].inbox.from(5);
}

#[test]
fn leftovers_in_every_ring_are_dropped_once() {
    let drops = Arc::new(AtomicUsize::new(0));
    #[derive(Debug)]
    struct D(Arc<AtomicUsize>);
    impl Drop for D {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    let mut cores = Mailboxes::<D, Count>::with_wakers(3, 4, |_| Ok(Count::default())).unwrap().into_cores();
    for m in cores.iter_mut() {
        for round in 0..2 {
            for to in (0..3).filter(|&t| t != m.core) {
                m.outbox.push(to, D(Arc::clone(&drops))).unwrap();
            }
            if round == 0 {
                m.outbox.publish();
            }
        }
    }
    // Core 1 goes first: its unpublished messages go with it; what it
    // published stays for its receivers, and what was published to it
    // stays until its senders go too.
    drop(cores.remove(1));
    assert_eq!(drops.load(Ordering::Relaxed), 2);
    let mut senders = Vec::new();
    cores[0].inbox.drain(|from, _| senders.push(from));
    assert_eq!(senders, [1, 2], "core 1's published message still reaches core 0");
    assert_eq!(drops.load(Ordering::Relaxed), 4);
    drop(cores);
    assert_eq!(drops.load(Ordering::Relaxed), 12);
}

/// Two threads, a few million messages through a ring of the real size:
/// every message arrives once and in order, whatever the interleaving of
/// pushes, refusals, publishes and batches.
#[test]
fn two_threads_pass_millions_in_order_and_exactly_once() {
    const MESSAGES: u64 = 3_000_000;
    let (mut p, mut c) = ring::<u64>(MAILBOX_SLOTS);
    let start = Instant::now();
    // The consumer's count of messages taken, which the producer watches
    // for progress while the ring is full.
    let taken = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let taken_seen = taken.clone();
    let producer = thread::spawn(move || {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut next = 0;
        let mut refused = 0u64;
        while next < MESSAGES {
            // Bursts up to past the capacity, so some fill the ring.
            let burst = 1 + rng.below(2 * MAILBOX_SLOTS as u64);
            for _ in 0..burst.min(MESSAGES - next) {
                let (mut since, mut seen) = (Instant::now(), taken_seen.load(Ordering::Relaxed));
                while let Err(back) = p.push(next) {
                    assert_eq!(back, next);
                    refused += 1;
                    p.publish();
                    let now_taken = taken_seen.load(Ordering::Relaxed);
                    if now_taken != seen {
                        (since, seen) = (Instant::now(), now_taken);
                    }
                    assert!(since.elapsed() < HANG_GUARD, "the consumer stopped taking");
                    thread::yield_now();
                }
                next += 1;
            }
            p.publish();
        }
        refused
    });
    let mut expect = 0u64;
    let mut batches = 0u64;
    let mut progress = Instant::now();
    while expect < MESSAGES {
        let mut batch = c.batch();
        if batch.len() == 0 {
            assert!(progress.elapsed() < HANG_GUARD, "stuck at {expect}");
            thread::yield_now();
            continue;
        }
        progress = Instant::now();
        batches += 1;
        for got in &mut batch {
            assert_eq!(got, expect);
            expect += 1;
        }
        taken.store(expect, Ordering::Relaxed);
    }
    let refused = producer.join().unwrap();
    assert_eq!(c.batch().next(), None, "nothing beyond the last message");
    // Not a bound on speed: a sign the run crossed threads in many batches
    // rather than in one lucky sweep.
    assert!(batches > 1);
    eprintln!("{MESSAGES} messages in {batches} batches, {refused} pushes refused, {:?}", start.elapsed());
}

/// A consumer that sleeps on its eventfd whenever its rings are empty and
/// a producer that publishes in bursts, sometimes waiting until the
/// consumer has taken everything (so the next burst's wake is the only
/// thing that can end the consumer's sleep), sometimes racing with its
/// sleep. A lost wake-up leaves the consumer asleep with a message
/// waiting, and the guard fails the test.
#[test]
fn the_sleep_protocol_never_loses_a_wake_up() {
    const BURSTS: u64 = 20_000;
    let mut cores = Mailboxes::<u64>::new(2).unwrap().into_cores();
    let mut receiver = cores.pop().unwrap();
    let mut sender = cores.pop().unwrap();
    let receiver_waker = Arc::clone(&receiver.waker);
    let taken = Arc::new(AtomicU64::new(0));
    let total = Arc::new(AtomicU64::new(u64::MAX));

    let consumer = {
        let (taken, total) = (Arc::clone(&taken), Arc::clone(&total));
        thread::spawn(move || {
            let mut expect = 0u64;
            let mut sleeps = 0u64;
            while expect != total.load(Ordering::Acquire) {
                receiver.inbox.drain(|from, got| {
                    assert_eq!(from, 0);
                    assert_eq!(got, expect);
                    expect += 1;
                });
                taken.store(expect, Ordering::Release);
                if receiver.inbox.prepare_sleep() {
                    if expect == total.load(Ordering::Acquire) {
                        break;
                    }
                    sleeps += 1;
                    assert!(wait_readable(receiver.waker.as_raw_fd(), HANG_GUARD), "lost wake-up: asleep at {expect}");
                    receiver.waker.clear();
                }
                receiver.inbox.awake();
            }
            sleeps
        })
    };

    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let mut next = 0u64;
    let mut woken = 0;
    for _ in 0..BURSTS {
        for _ in 0..1 + rng.below(64) {
            let guard = Instant::now();
            while sender.outbox.push(1, next).is_err() {
                woken += sender.outbox.publish();
                assert!(guard.elapsed() < HANG_GUARD, "the consumer stopped taking");
                thread::yield_now();
            }
            next += 1;
        }
        woken += sender.outbox.publish();
        match rng.below(4) {
            // Wait until the consumer has everything: it goes to sleep,
            // and only the next burst's wake can end that sleep.
            0 | 1 => {
                let guard = Instant::now();
                while taken.load(Ordering::Acquire) != next {
                    assert!(guard.elapsed() < HANG_GUARD, "the consumer stopped at {}", taken.load(Ordering::Relaxed));
                    thread::yield_now();
                }
            }
            2 => thread::yield_now(),
            // Publish again at once, racing with the consumer's sleep.
            _ => {}
        }
    }
    total.store(next, Ordering::Release);
    // The consumer may be asleep having taken everything: one last wake
    // lets it see the total.
    receiver_waker.wake();
    let sleeps = consumer.join().unwrap();
    assert!(sleeps > BURSTS / 20, "the consumer slept only {sleeps} times: the protocol was hardly exercised");
    // Each sleep ended on a wake it cleared: one sent by a publish, or the
    // last one above.
    assert!(sleeps <= woken as u64 + 1, "{sleeps} sleeps ended by {woken} wakes and the last");
    eprintln!("{next} messages in {BURSTS} bursts; the consumer slept {sleeps} times, {woken} wakes");
}

/// Three cores, each sending to both others and receiving from both,
/// sleeping on its eventfd when it has nothing to send or take: every
/// message arrives once, in each sender's order, and nobody hangs.
#[test]
fn three_cores_exchange_all_to_all() {
    const CORES: usize = 3;
    const MESSAGES_PER_PAIR: u64 = 100_000;
    let cores = Mailboxes::<(usize, u64)>::with_wakers(CORES, 64, |_| EventFd::new()).unwrap().into_cores();
    let threads: Vec<_> = cores
        .into_iter()
        .map(|mut m| {
            thread::spawn(move || {
                let me = m.core;
                // The last time this core's messages moved either way.
                let mut moved = (0u64, Instant::now());
                let mut sent = [0u64; CORES];
                let mut expect = [0u64; CORES];
                let mut rng = XorShift(0x1234_5678 + me as u64);
                let mut sleeps = 0;
                loop {
                    m.inbox.drain(|from, (tag, seq)| {
                        assert_eq!(tag, from, "a message arrives on its sender's ring");
                        assert_eq!(seq, expect[from], "core {me} from {from}");
                        expect[from] += 1;
                    });
                    let mut blocked = false;
                    for to in (0..CORES).filter(|&t| t != me) {
                        for _ in 0..rng.below(100) {
                            if sent[to] == MESSAGES_PER_PAIR {
                                break;
                            }
                            if m.outbox.push(to, (me, sent[to])).is_err() {
                                blocked = true;
                                break;
                            }
                            sent[to] += 1;
                        }
                    }
                    m.outbox.publish();
                    let sending = (0..CORES).any(|t| t != me && sent[t] < MESSAGES_PER_PAIR);
                    let receiving = (0..CORES).any(|f| f != me && expect[f] < MESSAGES_PER_PAIR);
                    if !sending && !receiving {
                        return sleeps;
                    }
                    let count = sent.iter().sum::<u64>() + expect.iter().sum::<u64>();
                    if count != moved.0 {
                        moved = (count, Instant::now());
                    }
                    assert!(moved.1.elapsed() < HANG_GUARD, "core {me} stuck: sent {sent:?}, got {expect:?}");
                    // A core with more to send keeps going (a full ring
                    // empties without waking anyone); one with only
                    // receiving left sleeps until woken.
                    if blocked || sending {
                        thread::yield_now();
                    } else if m.inbox.prepare_sleep() {
                        sleeps += 1;
                        assert!(
                            wait_readable(m.waker.as_raw_fd(), HANG_GUARD),
                            "core {me}: lost wake-up, got {expect:?}"
                        );
                        m.waker.clear();
                        m.inbox.awake();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// The cost of a message, printed, never asserted (timing belongs to the
/// benchmark, not to the suite). Run with
/// `cargo test --release --lib mailbox::tests::cost -- --ignored --nocapture`
/// on an otherwise idle machine: each figure is the best of a few runs, as
/// a busy machine only ever adds to it.
#[test]
#[ignore]
fn cost_per_message() {
    // 8 bytes, and about the size of a reply with its envelope.
    cost::<1>();
    cost::<18>();
    wake_costs();
}

const COST_RUNS: usize = 3;

fn ns_per(elapsed: Duration, n: u64) -> f64 {
    elapsed.as_nanos() as f64 / n as f64
}

fn best(mut run: impl FnMut() -> f64) -> f64 {
    (0..COST_RUNS).map(|_| run()).fold(f64::INFINITY, f64::min)
}

fn cost<const WORDS: usize>() {
    use std::hint::black_box;
    const MESSAGES: u64 = 2_000_000;
    let bytes = WORDS * 8;

    // One thread: push, publish and take, in batches of `batch`.
    for batch in [1u64, 16, 64] {
        let ns = best(|| {
            let (mut p, mut c) = ring::<[u64; WORDS]>(MAILBOX_SLOTS);
            let start = Instant::now();
            let mut sum = 0u64;
            let mut i = 0;
            while i < MESSAGES {
                for _ in 0..batch {
                    p.push([i; WORDS]).unwrap();
                    i += 1;
                }
                black_box(p.publish());
                for m in c.batch() {
                    sum = sum.wrapping_add(m[WORDS - 1]);
                }
            }
            black_box(sum);
            ns_per(start.elapsed(), MESSAGES)
        });
        eprintln!("{bytes:3}-byte messages, one thread, batches of {batch:2}: {ns:6.1} ns/message");
    }

    // Two threads: the producer publishes every `batch` messages, the
    // consumer takes whatever is published, and both spin, then yield,
    // when they cannot go on. The figure is the time per message of the
    // whole transfer.
    for batch in [1u64, 16, 64] {
        let mut per_batch = 0.0;
        let ns = best(|| {
            let (mut p, mut c) = ring::<[u64; WORDS]>(MAILBOX_SLOTS);
            let start = Instant::now();
            let producer = thread::spawn(move || {
                let mut i = 0;
                while i < MESSAGES {
                    for _ in 0..batch {
                        let mut idle = 0;
                        while p.push([i; WORDS]).is_err() {
                            p.publish();
                            idle = pause(idle);
                        }
                        i += 1;
                    }
                    p.publish();
                }
            });
            let (mut got, mut batches, mut idle) = (0, 0u64, 0);
            while got < MESSAGES {
                let mut n = 0;
                for m in c.batch() {
                    black_box(m);
                    n += 1;
                }
                if n == 0 {
                    idle = pause(idle);
                } else {
                    idle = 0;
                    batches += 1;
                    got += n;
                }
            }
            producer.join().unwrap();
            per_batch = MESSAGES as f64 / batches as f64;
            ns_per(start.elapsed(), MESSAGES)
        });
        eprintln!(
            "{bytes:3}-byte messages, two threads, published every {batch:2}: {ns:6.1} ns/message \
             ({per_batch:.0} per batch taken, last run)"
        );
    }
}

/// Spins a while, then gives the CPU away: a thread that waits for the
/// other must not hold the CPU the other needs when they share one.
fn pause(idle: u32) -> u32 {
    if idle < 100 {
        std::hint::spin_loop();
    } else {
        thread::yield_now();
    }
    idle + 1
}

/// What the wake-up adds: an eventfd write alone, and a round trip of one
/// message each way between two cores that sleep on their eventfds
/// between messages (what a cross-core command costs when the other core
/// is idle).
fn wake_costs() {
    let e = EventFd::new().unwrap();
    const WAKES: u64 = 1_000_000;
    let ns = best(|| {
        let start = Instant::now();
        for _ in 0..WAKES {
            e.wake();
        }
        let ns = ns_per(start.elapsed(), WAKES);
        assert_eq!(e.clear(), WAKES);
        ns
    });
    eprintln!("eventfd wake: {ns:.0} ns");

    const ROUND_TRIPS: u64 = 50_000;
    // Sleeps until a message arrives, takes it, and returns it.
    fn next(m: &mut Mailbox<u64>, from: usize) -> u64 {
        loop {
            if let Some(got) = m.inbox.from(from).batch().next() {
                return got;
            }
            if m.inbox.prepare_sleep() {
                assert!(wait_readable(m.waker.as_raw_fd(), HANG_GUARD), "lost wake-up");
                m.waker.clear();
            }
            m.inbox.awake();
        }
    }
    let ns = best(|| {
        let mut cores = Mailboxes::<u64>::new(2).unwrap().into_cores();
        let mut b = cores.pop().unwrap();
        let mut a = cores.pop().unwrap();
        let echo = thread::spawn(move || {
            for _ in 0..ROUND_TRIPS {
                let got = next(&mut b, 0);
                b.outbox.push(0, got).unwrap();
                b.outbox.publish();
            }
        });
        let start = Instant::now();
        for i in 0..ROUND_TRIPS {
            a.outbox.push(1, i).unwrap();
            a.outbox.publish();
            assert_eq!(next(&mut a, 1), i);
        }
        let ns = ns_per(start.elapsed(), ROUND_TRIPS);
        echo.join().unwrap();
        ns
    });
    eprintln!("round trip between two sleeping cores: {:.1} µs", ns / 1000.0);
}

#[test]
fn rings_shrink_as_the_cores_grow() {
    assert_eq!(slots_for(2, 176), MAILBOX_SLOTS_MAX);
    assert_eq!(slots_for(16, 176), 1024);
    assert_eq!(slots_for(64, 176), MAILBOX_SLOTS);
    assert_eq!(slots_for(1, 176), MAILBOX_SLOTS_MAX);
    for cores in 2..=64 {
        let slots = slots_for(cores, 176);
        assert!(slots.is_power_of_two());
        assert!(slots == MAILBOX_SLOTS || slots * 176 * (cores - 1) <= MAILBOX_BYTES_PER_CORE, "{cores}");
    }
}
