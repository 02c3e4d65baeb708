//! The slots of a worker: reserving jobs, keeping them reserved while they run, and settling
//! them (delete, release with back-off, bury) once they are done. The subcommands (`exec`,
//! `apns`) only say what running a job means, as a [`Handler`].
//!
//! Each slot has its own connection to the queue server and runs one job at a time, so
//! `--concurrency N` is N connections. A slot never has a reserve waiting while it holds a
//! job, so its touches, deletes and releases go out at once instead of queueing behind a
//! reserve (the server runs a connection's commands in order), and `current-waiting` of a tube
//! counts exactly the idle slots.
//!
//! # Invariants
//! * A job is touched at least every half of its time-to-run while its handler runs, so the
//!   server never hands it to a second worker while this one still has it.
//! * The attempt number is the server's `releases` count plus one, read with `stats-job`
//!   after the reserve, so it survives a worker restart; a job is buried at attempt `--tries`.
//! * When the connection drops while a job runs, the job keeps running; the slot reconnects
//!   with back-off and takes the job again with `reserve-job` (it is ready again once the
//!   server noticed the close). If someone else has it by then, the outcome is logged and not
//!   acted on: the job is not ours to delete or release.
//! * A job whose body cannot be understood is buried with the reason, never deleted.
//! * Nothing here exits the process: the slots end and [`run`] returns.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use runnerbean_client::{Client, DEFAULT_PRI, DEFAULT_TTR_SECS, Error, JobId, JobStats};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::backoff;
use crate::life::{Life, Phase};
use crate::log;

/// How long one `reserve-with-timeout` waits for a job. The wait ends early for a job or for
/// the end of the worker's life; the timeout bounds how long a server that vanished without
/// closing the connection (a host that died) goes unnoticed, with the client's read timeout.
const RESERVE_WAIT_SECS: u32 = 10;

/// How long a slot pauses after a reserve the server refused for a reason that is not a lost
/// connection (there is none in the protocol today; this keeps a misbehaving server from
/// turning the slot into a busy loop).
const RESERVE_ERROR_PAUSE_MS: u64 = 1000;

/// The shortest interval between two touches of a running job. A job's time-to-run is at least
/// one second, touched every half of it; this floor only guards against a server reporting 0.
const TOUCH_INTERVAL_MS_MIN: u64 = 100;

/// How often a slot with a running job checks that its connection is still open, so that
/// after a drop it takes the job back within a fraction of a second, before another worker
/// can, whatever the job's time-to-run.
const CONNECTION_CHECK_INTERVAL_MS: u64 = 200;

/// What every worker subcommand is configured with.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The queue server: `HOST:PORT`, `HOST` or `unix:PATH`.
    pub addr: String,
    /// The tubes to watch. `default` is ignored unless it is one of them.
    pub tubes: Vec<String>,
    /// How many jobs run at once (one connection each).
    pub concurrency: usize,
    /// After how many attempts a failing job is buried.
    pub tries: u32,
    /// The release delay after the first failed attempt, doubled for each later one.
    pub backoff: Duration,
}

/// A reserved job, as a handler sees it.
pub struct Job {
    /// The job's id.
    pub id: JobId,
    /// Its body.
    pub body: Vec<u8>,
    /// Which attempt this is, from 1: the server's `releases` count plus one.
    pub attempt: u32,
    /// The worker's life, to stop the job when the worker is stopping.
    pub life: Arc<Life>,
}

/// How a job went.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Done: delete it. The text says what happened, for the log.
    Delete(String),
    /// Done, with a record to put on another tube first (a dead device token): put `body` on
    /// `tube`, then delete the job. If the record cannot be put the job counts as failed.
    Record {
        /// Where the record goes.
        tube: String,
        /// The record.
        body: Vec<u8>,
        /// What happened, for the log.
        note: String,
    },
    /// Failed in a way that may pass: release it with back-off, or bury it after `--tries`.
    Retry(String),
    /// Cannot succeed (a body that cannot be understood, a refusal that will not change): bury
    /// it, with the reason in the log.
    Bury(String),
    /// Stopped because the worker is stopping: the job goes back to ready as it is.
    Interrupted,
}

/// What running a job means.
pub trait Handler: Send + Sync + 'static {
    /// Runs the job to its outcome. It must return [`Outcome::Interrupted`] promptly once
    /// `job.life` is stopping.
    fn handle(&self, job: &Job) -> impl Future<Output = Outcome> + Send;
}

/// Runs `settings.concurrency` slots with `handler` until the worker's life ends.
pub async fn run<H: Handler>(settings: Settings, life: Arc<Life>, handler: H) {
    let settings = Arc::new(settings);
    let handler = Arc::new(handler);
    let mut slots = JoinSet::new();
    for _ in 0..settings.concurrency.max(1) {
        slots.spawn(slot(settings.clone(), life.clone(), handler.clone()));
    }
    while let Some(ended) = slots.join_next().await {
        if let Err(e) = ended {
            // A panic is a bug; the other slots go on, and the exit status says so.
            life.fail(&format!("a worker slot failed: {e}"));
        }
    }
}

/// One slot: reserve, run, settle, until the worker drains.
async fn slot<H: Handler>(settings: Arc<Settings>, life: Arc<Life>, handler: Arc<H>) {
    let mut conn = Conn { settings: settings.clone(), life: life.clone(), client: None, failures: 0 };
    loop {
        let Some(ticket) = life.ticket() else { break };
        let Some(client) = conn.get(Phase::Draining).await else { break };
        let reserved = tokio::select! {
            biased;
            // A reserve still waiting is abandoned: if it takes a job after all, the job goes
            // back to ready when the connection closes at exit.
            () = life.draining() => break,
            reserved = client.reserve_with_timeout(RESERVE_WAIT_SECS) => reserved,
        };
        match reserved {
            Ok(job) => {
                ticket.used();
                work(&mut conn, &settings, &life, handler.as_ref(), job).await;
                life.finished();
            }
            Err(Error::TimedOut) => {}
            Err(e) if e.is_disconnect() => conn.lost(&e),
            Err(e) => {
                log::warn(&format!("reserve failed: {e}"));
                drop(ticket);
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(RESERVE_ERROR_PAUSE_MS)) => {}
                    () = life.draining() => break,
                }
            }
        }
    }
}

/// Whether this slot still holds the job it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hold {
    /// Reserved by this slot's connection.
    Held,
    /// The connection dropped; the job must be taken again before it can be settled.
    Unheld,
    /// Another client has it (or it is gone): its outcome is not ours to act on.
    Lost,
}

/// Runs one reserved job and settles it.
async fn work<H: Handler>(
    conn: &mut Conn,
    settings: &Settings,
    life: &Arc<Life>,
    handler: &H,
    job: runnerbean_client::Job,
) {
    let id = job.id;
    let Some(client) = conn.client.clone() else { return };
    let stats = match client.stats_job(id).await {
        Ok(stats) => stats,
        Err(Error::NotFound) => {
            log::warn(&format!("job {id}: deleted by another client before it started"));
            return;
        }
        Err(e) => {
            // Without its stats the job cannot be run safely (its time-to-run is unknown):
            // closing the connection gives it back as it was.
            log::warn(&format!("job {id}: cannot read its stats ({e}); given back"));
            conn.close();
            return;
        }
    };
    let attempt = u32::try_from(stats.releases).unwrap_or(u32::MAX).saturating_add(1);
    let job = Job { id, body: job.body, attempt, life: life.clone() };
    let mut hold = Hold::Held;
    let outcome = {
        let run = handler.handle(&job);
        let keep = keep(conn, id, touch_interval(stats.ttr), &mut hold);
        tokio::select! {
            outcome = run => outcome,
            never = keep => match never {},
        }
    };
    settle(conn, settings, &stats, attempt, outcome, hold).await;
}

/// How often a job with this time-to-run (in seconds) is touched: every half of it.
fn touch_interval(ttr_secs: u64) -> Duration {
    Duration::from_millis((ttr_secs.saturating_mul(1000) / 2).max(TOUCH_INTERVAL_MS_MIN))
}

/// Keeps the job reserved while it runs: touches it every `every`, and takes it back after the
/// connection drops. Runs until it is dropped (when the job's handler returns).
async fn keep(conn: &mut Conn, id: JobId, every: Duration, hold: &mut Hold) -> Infallible {
    let mut next_touch = Instant::now() + every;
    let check = Duration::from_millis(CONNECTION_CHECK_INTERVAL_MS).min(every);
    loop {
        tokio::time::sleep(check).await;
        if *hold == Hold::Lost {
            continue;
        }
        if conn.client.as_ref().is_none_or(Client::is_closed) {
            conn.lost(&Error::ClosedByServer);
            *hold = Hold::Unheld;
        }
        if *hold == Hold::Unheld {
            *hold = regain(conn, id).await;
            next_touch = Instant::now() + every;
            continue;
        }
        if Instant::now() < next_touch {
            continue;
        }
        next_touch = Instant::now() + every;
        let Some(client) = conn.client.clone() else { continue };
        match client.touch(id).await {
            Ok(()) => {}
            Err(Error::NotFound) => {
                log::warn(&format!("job {id}: no longer reserved by this worker; another one may run it too"));
                *hold = Hold::Lost;
            }
            Err(e) if e.is_disconnect() => {
                conn.lost(&e);
                *hold = Hold::Unheld;
            }
            Err(e) => log::warn(&format!("job {id}: touch failed: {e}")),
        }
    }
}

/// Takes a job back after the connection dropped: reconnects (with back-off) and reserves it
/// by id. Gives up (leaving it unheld) when the worker is stopping.
async fn regain(conn: &mut Conn, id: JobId) -> Hold {
    loop {
        let Some(client) = conn.get(Phase::Stopping).await else { return Hold::Unheld };
        match client.reserve_job(id).await {
            Ok(_) => {
                log::info(&format!("job {id}: reserved again after reconnecting"));
                return Hold::Held;
            }
            Err(e) if e.is_disconnect() => conn.lost(&e),
            Err(e) => {
                let why = match e {
                    Error::NotFound => "another worker has it, or it is gone".to_owned(),
                    Error::UnknownCommand => "the server has no reserve-job (beanstalkd before 1.12)".to_owned(),
                    e => e.to_string(),
                };
                log::warn(&format!("job {id}: cannot take it back after reconnecting: {why}"));
                return Hold::Lost;
            }
        }
    }
}

/// What settling a job does on the server.
#[derive(Debug)]
enum Action {
    Delete,
    Record { tube: String, body: Vec<u8> },
    Release { delay: u32 },
    Bury,
}

/// The action for a failed attempt: a release with back-off, or a bury at the last attempt.
fn retry(settings: &Settings, attempt: u32, reason: &str) -> (Action, String) {
    let tries = settings.tries.max(1);
    if attempt >= tries {
        return (Action::Bury, format!("failed ({reason}); attempt {attempt} of {tries}: buried"));
    }
    let delay = backoff::release_delay(settings.backoff, attempt, backoff::jitter());
    (
        Action::Release { delay },
        format!("failed ({reason}); attempt {attempt} of {tries}: released, ready again in {delay}s"),
    )
}

/// Tells the server how the job went.
async fn settle(
    conn: &mut Conn,
    settings: &Settings,
    stats: &JobStats,
    attempt: u32,
    outcome: Outcome,
    mut hold: Hold,
) {
    let id = stats.id;
    let (mut action, mut note) = match outcome {
        Outcome::Interrupted => {
            // Closing the connection gives the job back at once, and (unlike `release`) does
            // not count as a release, so the interrupted run does not use up an attempt.
            conn.close();
            log::info(&format!("job {id}: stopped; back to ready for another worker"));
            return;
        }
        Outcome::Delete(note) => (Action::Delete, format!("{note}; deleted")),
        Outcome::Record { tube, body, note } => (Action::Record { tube, body }, note),
        Outcome::Bury(reason) => (Action::Bury, format!("{reason}: buried")),
        Outcome::Retry(reason) => retry(settings, attempt, &reason),
    };
    if hold == Hold::Lost {
        log::warn(&format!("job {id}: {note} (not done: the job is no longer this worker's)"));
        return;
    }
    loop {
        let Some(client) = conn.get(Phase::Stopping).await else {
            log::warn(&format!("job {id}: {note} (not done: stopping without a connection; the server gives it back)"));
            return;
        };
        if hold == Hold::Unheld {
            hold = regain(conn, id).await;
            match hold {
                Hold::Held => {}
                Hold::Unheld => continue,
                Hold::Lost => {
                    log::warn(&format!("job {id}: {note} (not done: the job is no longer this worker's)"));
                    return;
                }
            }
        }
        let done = match &action {
            Action::Delete => client.delete(id).await,
            Action::Release { delay } => client.release(id, stats.pri, *delay).await,
            Action::Bury => client.bury(id, stats.pri).await,
            Action::Record { tube, body } => match client.publish(tube, body, DEFAULT_PRI, 0, DEFAULT_TTR_SECS).await {
                Ok(record) => {
                    note = format!("{note}; recorded as job {record} on tube {tube:?}; deleted");
                    action = Action::Delete;
                    client.delete(id).await
                }
                Err(e) if e.is_disconnect() => Err(e),
                Err(e) => {
                    // The record is the point of the outcome: without it the job is retried.
                    (action, note) = retry(settings, attempt, &format!("cannot put the record on tube {tube:?}: {e}"));
                    continue;
                }
            },
        };
        match done {
            Ok(()) => {
                match action {
                    Action::Bury => log::error(&format!("job {id}: {note}")),
                    Action::Release { .. } => log::warn(&format!("job {id}: {note}")),
                    Action::Delete | Action::Record { .. } => log::info(&format!("job {id}: {note}")),
                }
                return;
            }
            Err(e) if e.is_disconnect() => {
                conn.lost(&e);
                hold = Hold::Unheld;
            }
            Err(Error::Buried(_)) => {
                log::error(&format!("job {id}: {note}; but the server buried it (out of memory)"));
                return;
            }
            Err(Error::NotFound) => {
                log::warn(&format!(
                    "job {id}: {note} (not done: the server no longer has it reserved for this worker)"
                ));
                return;
            }
            Err(e) => {
                log::warn(&format!("job {id}: {note} (not done: {e}); given back"));
                conn.close();
                return;
            }
        }
    }
}

/// A slot's connection, opened (and reopened, with back-off) when needed.
struct Conn {
    settings: Arc<Settings>,
    life: Arc<Life>,
    client: Option<Client>,
    /// Failed attempts to connect since the last success.
    failures: u32,
}

impl Conn {
    /// The open connection, connecting first if there is none. Does not connect (`None`) once
    /// the worker's phase reaches `give_up`.
    async fn get(&mut self, give_up: Phase) -> Option<Client> {
        loop {
            if let Some(client) = &self.client
                && !client.is_closed()
            {
                return Some(client.clone());
            }
            self.client = None;
            if self.life.phase() >= give_up {
                return None;
            }
            if self.failures > 0 {
                let pause = backoff::reconnect_delay(self.failures - 1, backoff::jitter());
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = self.life.reaches(give_up) => return None,
                }
            }
            let opened = tokio::select! {
                opened = self.open() => opened,
                () = self.life.reaches(give_up) => return None,
            };
            match opened {
                Ok(client) => {
                    if self.failures > 0 {
                        log::info(&format!("connected to {} again", self.settings.addr));
                    }
                    self.failures = 0;
                    self.client = Some(client.clone());
                    return Some(client);
                }
                Err(e) if e.is_disconnect() => {
                    self.failures = self.failures.saturating_add(1);
                    let pause = backoff::reconnect_delay(self.failures - 1, 0.0);
                    log::warn(&format!("cannot reach the queue server: {e}; trying again in about {pause:?}"));
                }
                Err(e) => {
                    // The server refused a tube name: no retry will change that.
                    self.life.fail(&format!("cannot watch the tubes {:?}: {e}", self.settings.tubes));
                    return None;
                }
            }
        }
    }

    /// Connects and watches the tubes.
    async fn open(&self) -> Result<Client, Error> {
        let client = Client::connect(&self.settings.addr).await?;
        for tube in &self.settings.tubes {
            client.watch(tube).await?;
        }
        if !self.settings.tubes.iter().any(|tube| tube == "default") {
            client.ignore("default").await?;
        }
        Ok(client)
    }

    /// The connection failed: forget it (the next `get` reconnects).
    fn lost(&mut self, e: &Error) {
        if self.client.take().is_some() {
            log::warn(&format!("lost the connection to the queue server: {e}"));
        }
    }

    /// Closes the connection on purpose: the server returns the jobs it held to ready.
    fn close(&mut self) {
        // Dropping the last handle ends the connection's task, which closes the socket.
        self.client = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(tries: u32) -> Settings {
        Settings { addr: String::new(), tubes: vec![], concurrency: 1, tries, backoff: Duration::from_secs(2) }
    }

    #[test]
    fn touches_come_at_half_the_time_to_run() {
        assert_eq!(touch_interval(1), Duration::from_millis(500));
        assert_eq!(touch_interval(120), Duration::from_secs(60));
        assert_eq!(touch_interval(0), Duration::from_millis(TOUCH_INTERVAL_MS_MIN));
        assert_eq!(touch_interval(u64::MAX), Duration::from_millis(u64::MAX / 2));
    }

    #[test]
    fn failures_are_released_until_the_last_attempt() {
        let (action, note) = retry(&settings(3), 1, "exit 1");
        assert!(matches!(action, Action::Release { delay: 2 }), "{action:?}");
        assert_eq!(note, "failed (exit 1); attempt 1 of 3: released, ready again in 2s");
        let (action, _) = retry(&settings(3), 2, "exit 1");
        assert!(matches!(action, Action::Release { delay: 4..=5 }), "{action:?}");
        let (action, note) = retry(&settings(3), 3, "exit 1");
        assert!(matches!(action, Action::Bury), "{action:?}");
        assert_eq!(note, "failed (exit 1); attempt 3 of 3: buried");
        // A job kicked after it was buried comes back with its releases: one more attempt.
        assert!(matches!(retry(&settings(3), 4, "x").0, Action::Bury));
        // --tries 0 means the same as 1: no retry.
        assert!(matches!(retry(&settings(0), 1, "x").0, Action::Bury));
    }
}
