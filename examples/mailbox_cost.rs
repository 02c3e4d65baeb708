//! What a message through the mailbox costs: two threads, as two cores,
//! exchanging messages the size of the server's `Envelope` through the
//! same rings, wake-ups and sleep protocol the server's loops use.
//!
//! ```text
//! cargo run --release --example mailbox_cost [-- MESSAGES]
//! ```
//!
//! Three runs, each a request from core A answered by a reply from core B:
//! * `pipelined`: A keeps a ring's worth in flight, both threads spin on
//!   separate CPUs; the rings' own cost (push, publish, batch, drop).
//! * `ping-pong`: one request at a time, each side sleeping on its eventfd
//!   when it has nothing to do; the wake-up's cost and its latency.
//! * `one-cpu`: both threads on one CPU, 64 requests a batch, sleeping
//!   when idle (as `--cores 2` on one CPU runs).
//!
//! Prints one line of JSON: per run, CPU nanoseconds per message (both
//! threads' CPU time over every message, requests and replies alike) and
//! wall nanoseconds per round trip. `scripts/bench-vs-c` runs it with the
//! cores scenarios. Speed is measured, never asserted.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use runnerbean::mailbox::{EventFd, Inbox, Mailbox, Mailboxes, Outbox, slots_for};
use runnerbean::net::cores::Envelope;

/// A message as large as the server's: what matters is the bytes copied.
#[derive(Clone, Copy)]
struct Payload {
    seq: u64,
    _rest: [u64; PAYLOAD_WORDS - 1],
}

const PAYLOAD_WORDS: usize = size_of::<Envelope>() / 8;
const _: () = assert!(size_of::<Payload>() == size_of::<Envelope>());

/// The request that tells core B to stop.
const STOP: u64 = u64::MAX;

/// Round trips per run when none is given.
const MESSAGES_DEFAULT: u64 = 2_000_000;
/// Ping-pong round trips are slower by two wake-ups each; fewer of them.
const PING_PONG_SHARE: u64 = 20;
/// Requests per batch in the one-CPU run.
const ONE_CPU_BATCH: u64 = 64;

fn payload(seq: u64) -> Payload {
    Payload { seq, _rest: [seq; PAYLOAD_WORDS - 1] }
}

/// CPU time of the calling thread, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // Safety: fills a timespec that lives across the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn pin(cpu: Option<usize>) {
    if let Some(cpu) = cpu
        && let Err(e) = runnerbean::sys::pin_to_cpu(cpu)
    {
        eprintln!("mailbox_cost: cannot pin to CPU {cpu}: {e}");
    }
}

/// Sleeps until another core publishes to this one, as a loop does: only
/// after the inbox has said that every ring is empty.
fn sleep(inbox: &mut Inbox<Payload>, waker: &EventFd) {
    if inbox.prepare_sleep() {
        let mut fd = libc::pollfd { fd: waker.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // Safety: one pollfd that lives across the call.
        unsafe { libc::poll(&mut fd, 1, 1000) };
        waker.clear();
        inbox.awake();
    }
}

/// Core B: answers every request with a reply, until STOP. Returns its CPU time.
fn answer(mut outbox: Outbox<Payload>, mut inbox: Inbox<Payload>, waker: Arc<EventFd>, spin: bool) -> u64 {
    let start = thread_cpu_ns();
    let mut stopped = false;
    while !stopped {
        let taken = inbox.drain(|_, request| {
            if request.seq == STOP {
                stopped = true;
            } else if outbox.push(0, request).is_err() {
                // The sender keeps no more in flight than a ring holds.
                panic!("reply ring full");
            }
        });
        outbox.publish();
        if taken == 0 && !spin {
            sleep(&mut inbox, &waker);
        }
    }
    thread_cpu_ns() - start
}

/// Core A: `trips` requests, at most `window` in flight, pushed `batch` at
/// a time. Returns (its CPU time, wall time).
fn ask(mailbox: Mailbox<Payload>, trips: u64, window: u64, batch: u64, spin: bool, ready: &AtomicBool) -> (u64, u64) {
    let Mailbox { mut outbox, mut inbox, waker, .. } = mailbox;
    while !ready.load(Ordering::Acquire) {
        std::hint::spin_loop();
    }
    let wall = Instant::now();
    let start = thread_cpu_ns();
    let (mut sent, mut answered, mut checksum) = (0u64, 0u64, 0u64);
    while answered < trips {
        let mut pushed = 0;
        while sent < trips && sent - answered < window && pushed < batch {
            outbox.push(1, payload(sent)).unwrap_or_else(|_| panic!("request ring full"));
            sent += 1;
            pushed += 1;
        }
        outbox.publish();
        let taken = inbox.drain(|_, reply| {
            checksum = checksum.wrapping_add(reply.seq);
            answered += 1;
        });
        if taken == 0 && pushed == 0 && !spin {
            sleep(&mut inbox, &waker);
        }
    }
    assert_eq!(checksum, trips * (trips - 1) / 2, "a reply was lost or repeated");
    outbox.push(1, payload(STOP)).unwrap_or_else(|_| panic!("request ring full"));
    outbox.publish();
    (thread_cpu_ns() - start, wall.elapsed().as_nanos() as u64)
}

struct Run {
    name: &'static str,
    trips: u64,
    cpu_ns_per_message: f64,
    wall_ns_per_trip: f64,
}

/// `window` in flight at most (never more than a ring holds, so that every
/// reply fits), pushed `batch` at a time.
fn run(
    name: &'static str,
    trips: u64,
    (window, batch): (u64, u64),
    spin: bool,
    cpus: (Option<usize>, Option<usize>),
) -> Run {
    let mut cores = Mailboxes::<Payload>::new(2).expect("eventfds").into_cores().into_iter();
    let a = cores.next().expect("core 0");
    let b = cores.next().expect("core 1");
    let window = window.min(slots_for(2, size_of::<Payload>()) as u64);
    let ready = Arc::new(AtomicBool::new(false));
    let answerer = {
        let ready = Arc::clone(&ready);
        std::thread::spawn(move || {
            pin(cpus.1);
            ready.store(true, Ordering::Release);
            answer(b.outbox, b.inbox, b.waker, spin)
        })
    };
    let asker = std::thread::spawn(move || {
        pin(cpus.0);
        ask(a, trips, window, batch, spin, &ready)
    });
    let (ask_cpu, wall) = asker.join().expect("asker");
    let answer_cpu = answerer.join().expect("answerer");
    Run {
        name,
        trips,
        cpu_ns_per_message: (ask_cpu + answer_cpu) as f64 / (2 * trips) as f64,
        wall_ns_per_trip: wall as f64 / trips as f64,
    }
}

fn main() {
    let trips: u64 = match std::env::args().nth(1) {
        Some(n) => n.parse().unwrap_or_else(|_| {
            eprintln!("mailbox_cost: not a number of messages: {n}");
            std::process::exit(2)
        }),
        None => MESSAGES_DEFAULT,
    };
    let cpus = runnerbean::sys::allowed_cpus();
    let two = (cpus.first().copied(), cpus.get(1).copied().or(cpus.first().copied()));
    let one = (cpus.first().copied(), cpus.first().copied());
    let slots = slots_for(2, size_of::<Payload>());
    let runs = [
        run("pipelined", trips, (slots as u64, slots as u64), true, two),
        run("ping-pong", (trips / PING_PONG_SHARE).max(1), (1, 1), false, two),
        run("one-cpu", trips, (ONE_CPU_BATCH, ONE_CPU_BATCH), false, one),
    ];
    let fields: Vec<String> = runs
        .iter()
        .map(|r| {
            format!(
                "\"{}\":{{\"round_trips\":{},\"cpu_ns_per_message\":{:.1},\"wall_ns_per_round_trip\":{:.1}}}",
                r.name, r.trips, r.cpu_ns_per_message, r.wall_ns_per_trip
            )
        })
        .collect();
    println!("{{\"message_bytes\":{},\"ring_slots\":{slots},{}}}", size_of::<Payload>(), fields.join(","));
}
