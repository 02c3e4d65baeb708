//! runnerbean-idcost: what one id counter shared by every core costs a put.
//!
//! runnerbean hands out job ids from one atomic counter (`engine::IdSource`)
//! so that a fresh server's first id is 1 and ids increase in put order
//! across shards, as C beanstalkd's do. The alternative is ids that encode
//! their shard (each core counting on its own, no shared cache line). This
//! measures the difference where it shows: threads on different CPUs, each
//! taking an id between stretches of other work as long as a put's (the
//! `--work-ns` values), so the counter's cache line moves between cores on
//! nearly every take. It prints, per stretch, the nanoseconds per id of a
//! per-thread counter and of the shared one with 1 and with N threads.
//!
//! Usage: `runnerbean-idcost [--threads N] [--ops M]`; figures in
//! `perf/RESULTS.md`.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Stretches of other work between two takes, in nanoseconds: none (the
/// worst case), and about what a pipelined put and an unpipelined one cost
/// the server on these machines.
const WORK_NS: [u64; 3] = [0, 500, 2500];

fn main() {
    let mut threads = 2usize;
    let mut ops = 2_000_000u64;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).and_then(|v| v.parse::<u64>().ok());
        match (args[i].as_str(), value) {
            ("--threads", Some(v)) if v >= 1 => threads = v as usize,
            ("--ops", Some(v)) if v >= 1 => ops = v,
            _ => {
                eprintln!("usage: runnerbean-idcost [--threads N] [--ops M]");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    let cpus = allowed_cpus();
    println!("cpus allowed: {cpus:?}; {threads} threads; {ops} ids per thread");
    for work in WORK_NS {
        let spin = calibrate(work);
        let local = run(1, ops, spin, &cpus, false);
        let shared1 = run(1, ops, spin, &cpus, true);
        let shared = run(threads, ops, spin, &cpus, true);
        let local_n = run(threads, ops, spin, &cpus, false);
        println!(
            "work {work:>5} ns: per-thread counter {local:>7.1} ns/id ({threads} threads: {local_n:>7.1}), \
             shared counter {shared1:>7.1} ns/id ({threads} threads: {shared:>7.1}); \
             shared costs {:+.1} ns/id across threads",
            shared - local_n
        );
    }
}

/// Nanoseconds per id (work included) of `threads` threads, each pinned to
/// one allowed CPU in turn, taking `ops` ids.
fn run(threads: usize, ops: u64, spin: u64, cpus: &[usize], shared: bool) -> f64 {
    let counter = Arc::new(AtomicU64::new(1));
    let start = Arc::new(std::sync::Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (counter, start, cpu) = (counter.clone(), start.clone(), cpus[t % cpus.len()]);
            std::thread::spawn(move || {
                pin(cpu);
                start.wait();
                let began = Instant::now();
                let mut own = 1u64;
                let mut last = 0u64;
                for _ in 0..ops {
                    let id = if shared {
                        counter.fetch_add(1, Ordering::Relaxed)
                    } else {
                        own += 1;
                        own
                    };
                    assert!(id > last, "ids went back");
                    last = black_box(id);
                    busy(spin);
                }
                began.elapsed().as_nanos() as f64 / ops as f64
            })
        })
        .collect();
    let per: Vec<f64> = handles.into_iter().map(|h| h.join().expect("a measuring thread panicked")).collect();
    per.iter().sum::<f64>() / per.len() as f64
}

/// A loop of `n` steps of dependent arithmetic.
fn busy(n: u64) {
    let mut x = 1u64;
    for i in 0..n {
        x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
    }
    black_box(x);
}

/// The number of [`busy`] steps that take about `ns`.
fn calibrate(ns: u64) -> u64 {
    if ns == 0 {
        return 0;
    }
    let steps = 10_000_000u64;
    let began = Instant::now();
    busy(steps);
    let per_step = began.elapsed().as_nanos() as f64 / steps as f64;
    (ns as f64 / per_step).max(1.0) as u64
}

fn allowed_cpus() -> Vec<usize> {
    // Safety: a zeroed cpu_set_t is a valid empty set; the call fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return vec![0];
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    }
}

fn pin(cpu: usize) {
    // Safety: as in `allowed_cpus`; a failure leaves the thread unpinned,
    // which only blurs the figure.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}
