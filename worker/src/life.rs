//! The worker's life cycle: when to stop taking jobs, and when to stop running ones.
//!
//! A worker is `Running` (its slots reserve jobs), then `Draining` (no new jobs; the running
//! ones finish), then `Stopping` (running jobs are stopped and their jobs go back to the
//! queue). It drains after `--max-jobs` jobs, after `--idle-timeout` seconds without a job,
//! after `--max-time` seconds, when its memory passes `--memory-mb`, and on SIGTERM, SIGINT or
//! SIGHUP. A signal also starts the `--grace` period, at whose end (or at a second signal) it stops.
//! The process exits 0 once every slot is done, which is how a supervisor expects a worker to
//! end before it starts a fresh one.
//!
//! # Invariants
//! * The phase only moves forward: Running, Draining, Stopping.
//! * At most `--max-jobs` jobs are ever reserved: a slot takes a [`Ticket`] before each
//!   reserve and hands it back when the reserve brings no job.
//! * The idle clock runs only while no job is running; it restarts when a job is reserved and
//!   when one finishes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::log;

/// How often the worker reads its own memory use for `--memory-mb`. Memory grows slowly; a
/// second's lag costs nothing and reading /proc once a second costs nothing either.
const MEMORY_CHECK_INTERVAL_MS: u64 = 1000;

/// Where the worker is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Reserving and running jobs.
    Running,
    /// Reserving no more jobs; running ones finish.
    Draining,
    /// Running jobs are stopped and given back.
    Stopping,
}

/// The limits of the command line.
#[derive(Clone, Copy, Debug, Default)]
pub struct Limits {
    /// `--max-jobs`: drain after this many jobs.
    pub max_jobs: Option<u64>,
    /// `--idle-timeout`: drain after this long without a job.
    pub idle: Option<Duration>,
    /// `--max-time`: drain after this long.
    pub max_time: Option<Duration>,
    /// `--memory-mb`, in bytes: drain when the worker's resident memory passes it.
    pub memory_bytes: Option<u64>,
    /// `--grace`: how long running jobs may go on after a signal.
    pub grace: Duration,
}

#[derive(Debug)]
struct Counts {
    /// Jobs reserved, plus reserves in progress (tickets out).
    taken: u64,
    /// Jobs running now.
    running: u64,
    /// Jobs finished.
    done: u64,
    /// When the last job was reserved or finished (or the worker started).
    last_activity: Instant,
}

/// The shared life-cycle state of one worker process.
pub struct Life {
    limits: Limits,
    phase: watch::Sender<Phase>,
    counts: Mutex<Counts>,
    /// Woken whenever a job starts or finishes, for the idle clock.
    activity: Notify,
    /// Set when the worker stops because of a fault (exit status 1).
    failed: AtomicBool,
}

/// The right to reserve one job under `--max-jobs`. Dropping it without [`Ticket::used`] hands
/// it back.
pub struct Ticket {
    life: Arc<Life>,
    used: bool,
}

impl Ticket {
    /// The reserve brought a job: the ticket is spent, and the job is running.
    pub fn used(mut self) {
        self.used = true;
        let mut counts = self.life.lock();
        counts.running += 1;
        counts.last_activity = Instant::now();
        drop(counts);
        self.life.activity.notify_one();
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.used {
            self.life.lock().taken -= 1;
        }
    }
}

impl Life {
    /// A worker at the start of its life.
    pub fn new(limits: Limits) -> Arc<Life> {
        let counts = Counts { taken: 0, running: 0, done: 0, last_activity: Instant::now() };
        Arc::new(Life {
            limits,
            phase: watch::channel(Phase::Running).0,
            counts: Mutex::new(counts),
            activity: Notify::new(),
            failed: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // The counts stay valid whatever a panicking holder did (each update is one statement).
        self.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The phase now.
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// A receiver that sees every change of phase.
    pub fn watch(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// Moves to `phase` if that is forward, logging why.
    pub fn advance(&self, phase: Phase, why: &str) {
        let moved = self.phase.send_if_modified(|now| {
            if phase > *now {
                *now = phase;
                true
            } else {
                false
            }
        });
        if moved {
            match phase {
                Phase::Draining => log::info(&format!("{why}: taking no more jobs; running jobs finish")),
                Phase::Stopping => log::info(&format!("{why}: stopping running jobs")),
                Phase::Running => {}
            }
        }
    }

    /// A ticket to reserve one more job, unless the worker is draining or `--max-jobs` jobs
    /// have been taken.
    pub fn ticket(self: &Arc<Life>) -> Option<Ticket> {
        if self.phase() != Phase::Running {
            return None;
        }
        let mut counts = self.lock();
        if self.limits.max_jobs.is_some_and(|max| counts.taken >= max) {
            return None;
        }
        counts.taken += 1;
        Some(Ticket { life: self.clone(), used: false })
    }

    /// A job has finished (whatever its outcome). After the last of `--max-jobs` the worker
    /// drains. (Counting finished jobs, not tickets: a ticket out on a reserve still waiting is
    /// a job that may yet come.)
    pub fn finished(&self) {
        let mut counts = self.lock();
        counts.running -= 1;
        counts.done += 1;
        counts.last_activity = Instant::now();
        let done = counts.done;
        drop(counts);
        self.activity.notify_one();
        if self.limits.max_jobs.is_some_and(|max| done >= max) {
            self.advance(Phase::Draining, &format!("processed {done} job{}", if done == 1 { "" } else { "s" }));
        }
        self.check_memory();
    }

    /// Stops the worker because of a fault that no retry mends (a tube name the server
    /// refuses, a bug): logs it, and the process exits with status 1.
    pub fn fail(&self, why: &str) {
        log::error(why);
        self.failed.store(true, Ordering::Relaxed);
        self.advance(Phase::Stopping, "stopping after the error");
    }

    /// Whether [`fail`](Life::fail) was called.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Resolves once the phase is `phase` or later.
    pub async fn reaches(&self, phase: Phase) {
        let mut watch = self.watch();
        let _ = watch.wait_for(|now| *now >= phase).await;
    }

    /// Resolves once the worker is no longer running (draining or stopping).
    pub async fn draining(&self) {
        self.reaches(Phase::Draining).await;
    }

    /// Resolves once the worker is stopping.
    pub async fn stopping(&self) {
        self.reaches(Phase::Stopping).await;
    }

    /// Drains if the worker's resident memory is over `--memory-mb`.
    fn check_memory(&self) {
        let (Some(limit), Some(used)) = (self.limits.memory_bytes, resident_bytes()) else { return };
        if used > limit {
            self.advance(Phase::Draining, &format!("memory use {} MiB is over --memory-mb", used >> 20));
        }
    }

    /// When the idle clock runs out, if it runs (no job running and `--idle-timeout` set).
    fn idle_deadline(&self) -> Option<Instant> {
        let idle = self.limits.idle?;
        let counts = self.lock();
        (counts.running == 0).then(|| counts.last_activity + idle)
    }

    /// Watches the clocks and the signals and moves the phase on; runs until the process ends.
    /// It must be started before the slots, so that a signal that comes while they connect
    /// is not lost.
    pub fn supervise(self: &Arc<Life>) -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        // backq's workers stop on SIGHUP too; without a handler it would kill the worker on
        // the spot, with no grace for its jobs.
        let mut hangup = signal(SignalKind::hangup())?;
        let life = self.clone();
        Ok(async move {
            let started = Instant::now();
            let mut grace_end: Option<Instant> = None;
            let mut memory = tokio::time::interval(Duration::from_millis(MEMORY_CHECK_INTERVAL_MS));
            loop {
                let idle_end = life.idle_deadline();
                let max_time_end = life.limits.max_time.map(|max| started + max);
                let signalled = tokio::select! {
                    _ = terminate.recv() => Some("SIGTERM"),
                    _ = interrupt.recv() => Some("SIGINT"),
                    _ = hangup.recv() => Some("SIGHUP"),
                    () = sleep_until(grace_end) => {
                        life.advance(Phase::Stopping, "the grace period is over");
                        grace_end = None;
                        None
                    }
                    () = sleep_until(idle_end), if life.phase() == Phase::Running => {
                        // The deadline was read before the wait: make sure no job came since.
                        if life.idle_deadline().is_some_and(|end| end <= Instant::now()) {
                            let idle = life.limits.idle.unwrap_or_default();
                            life.advance(Phase::Draining, &format!("no job for {}s (--idle-timeout)", idle.as_secs_f64()));
                        }
                        None
                    }
                    () = sleep_until(max_time_end), if life.phase() == Phase::Running => {
                        let max = life.limits.max_time.unwrap_or_default();
                        life.advance(Phase::Draining, &format!("ran for {}s (--max-time)", max.as_secs_f64()));
                        None
                    }
                    _ = memory.tick(), if life.limits.memory_bytes.is_some() => {
                        life.check_memory();
                        None
                    }
                    () = life.activity.notified() => None,
                };
                if let Some(name) = signalled {
                    if life.phase() == Phase::Running {
                        let grace = life.limits.grace;
                        life.advance(
                            Phase::Draining,
                            &format!("{name} (running jobs have {}s, --grace)", grace.as_secs_f64()),
                        );
                        grace_end = Some(Instant::now() + grace);
                    } else {
                        life.advance(Phase::Stopping, &format!("{name} again"));
                    }
                }
            }
        })
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The worker's resident memory in bytes, from /proc/self/statm (Linux); `None` where it
/// cannot be read.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(page).ok().map(|page| pages * page)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_jobs: Option<u64>) -> Limits {
        Limits { max_jobs, ..Limits::default() }
    }

    #[test]
    fn tickets_stop_at_max_jobs_and_come_back_unused() {
        let life = Life::new(limits(Some(2)));
        let first = life.ticket().expect("first");
        let second = life.ticket().expect("second");
        assert!(life.ticket().is_none());
        drop(second);
        let second = life.ticket().expect("handed back");
        first.used();
        second.used();
        assert!(life.ticket().is_none());
        assert_eq!(life.phase(), Phase::Running);
        life.finished();
        assert_eq!(life.phase(), Phase::Running, "one job still runs");
        life.finished();
        assert_eq!(life.phase(), Phase::Draining);
    }

    #[test]
    fn a_ticket_still_waiting_for_a_job_keeps_the_worker_running() {
        let life = Life::new(limits(Some(2)));
        life.ticket().expect("first").used();
        let waiting = life.ticket().expect("second");
        life.finished();
        assert_eq!(life.phase(), Phase::Running, "the second job may still come");
        waiting.used();
        life.finished();
        assert_eq!(life.phase(), Phase::Draining);
    }

    #[test]
    fn no_tickets_once_draining_and_the_phase_only_moves_forward() {
        let life = Life::new(limits(None));
        assert!(life.ticket().is_some());
        life.advance(Phase::Stopping, "test");
        life.advance(Phase::Draining, "test");
        assert_eq!(life.phase(), Phase::Stopping);
        assert!(life.ticket().is_none());
    }

    #[test]
    fn the_idle_clock_runs_only_without_jobs() {
        let life = Life::new(Limits { idle: Some(Duration::from_secs(5)), ..Limits::default() });
        let start = life.idle_deadline().expect("idle at the start");
        life.ticket().expect("ticket").used();
        assert_eq!(life.idle_deadline(), None);
        life.finished();
        assert!(life.idle_deadline().expect("idle again") >= start);
    }

    #[test]
    fn resident_memory_is_readable() {
        assert!(resident_bytes().is_some_and(|bytes| bytes > 0));
    }
}
