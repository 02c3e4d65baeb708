//! runnerbean's two commands beyond the beanstalkd protocol, `clear-tube` and `list-jobs`, and
//! the fallbacks that do their work, less well, on a server without them.
//!
//! C beanstalkd (and runnerbean with `--strict`) answers both commands `UNKNOWN_COMMAND`, which
//! leaves the connection as it was. [`Client::clear_tube`] and [`Client::list_jobs`] send the
//! commands and report that answer as [`Error::UnknownCommand`]. The `_or_` methods try the
//! command first and, on that answer, fall back to the protocol every server has:
//! * listing: `peek-ready` (`-delayed`, `-buried`) shows only the first job of a state, so the
//!   fallback's list has at most that one id ([`JobList::by_peeking`] says so);
//! * clearing: the first job of each state is peeked and deleted, again and again, until the
//!   state is empty, as many times as the tube had jobs when it began, or until
//!   [`VANISHED_IN_A_ROW_MAX`] peeked jobs in a row were gone before their delete (other
//!   clients took them).
//!
//! Once a server has answered `UNKNOWN_COMMAND` the client remembers it for the connection and
//! goes straight to the fallback.
//!
//! # Invariants
//! * A fallback peek is sent as `use TUBE`, the peek, and `use` of the tube the connection used
//!   before, back to back with no other command of any clone between them: clones that share
//!   the connection see their used tube unchanged, and the fallback never keeps a tube alive
//!   by using it.
//! * A fallback never creates a tube: it asks `stats-tube` first and answers
//!   [`Error::NotFound`] for a tube that does not exist, as the commands do.

use std::sync::atomic::Ordering;

use runnerbean_proto::{Command, Reply};

use crate::client::{Client, decode, found, list, refusal, tube_arg};
use crate::conn::{Track, lock};
use crate::error::Error;
use crate::job::JobId;
use crate::stats::JobState;

/// Peeked jobs in a row that are gone before the fallback clear can delete them (a worker
/// reserved them first) before it gives up: other clients take the tube's jobs as fast as it
/// finds them, and it could go on for ever.
pub const VANISHED_IN_A_ROW_MAX: u32 = 1000;

/// The ids [`Client::list_jobs_or_peek`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobList {
    /// The ids, in the order the server would take the jobs.
    pub ids: Vec<JobId>,
    /// True when the server has no `list-jobs` and the ids come from a peek: at most the
    /// first job of the state, whatever the count asked for (and none for a page after the
    /// first).
    pub by_peeking: bool,
}

/// What [`Client::clear_tube_or_delete`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cleared {
    /// How many jobs it deleted.
    pub deleted: u64,
    /// True when the server has no `clear-tube` and the jobs were peeked and deleted one by
    /// one: jobs put meanwhile may have been deleted or kept, and jobs reserved meanwhile
    /// were left alone.
    pub by_peeking: bool,
}

/// The protocol's name for a state `list-jobs` and `clear-tube` take; reserved jobs are not
/// theirs to touch.
fn state_arg(state: JobState) -> Result<&'static str, Error> {
    match state {
        JobState::Ready | JobState::Delayed | JobState::Buried => Ok(state.as_str()),
        JobState::Reserved => {
            Err(Error::InvalidArgument("only ready, delayed and buried jobs can be listed or cleared".to_owned()))
        }
    }
}

impl Client {
    /// `clear-tube`: deletes every job of `tube` in the given states at once and returns how
    /// many it deleted; [`Error::NotFound`] if there is no such tube. Only runnerbean has it:
    /// other servers answer [`Error::UnknownCommand`] (see
    /// [`clear_tube_or_delete`](Client::clear_tube_or_delete) for a fallback).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runnerbean_client::Error> {
    /// # let server = runnerbean_testserver::TestServer::runnerbean();
    /// # let addr = server.addr();
    /// use runnerbean_client::{Client, Error, JobState, PutOptions};
    ///
    /// let client = Client::connect(addr).await?;
    /// client.put(b"now", PutOptions::default()).await?;
    /// client.put(b"later", PutOptions::default().delay(600)).await?;
    /// match client.clear_tube("default", &[JobState::Ready, JobState::Delayed]).await {
    ///     Ok(deleted) => assert_eq!(deleted, 2),
    ///     // A server without the command (C beanstalkd) changes nothing.
    ///     Err(Error::UnknownCommand) => assert_eq!(client.stats_tube("default").await?.current_jobs_ready, 1),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn clear_tube(&self, tube: &str, states: &[JobState]) -> Result<u64, Error> {
        if states.is_empty() {
            return Err(Error::InvalidArgument("clear-tube needs at least one state".to_owned()));
        }
        let names = states.iter().map(|&s| state_arg(s)).collect::<Result<Vec<_>, _>>()?.join(",");
        let frame = self.call(Command::ClearTube { tube: tube_arg(tube)?, states: &names }, None).await?;
        let result = match decode(&frame)? {
            Reply::Cleared(count) => Ok(count),
            other => Err(refusal(other, "clear-tube")),
        };
        self.note_unknown(&result);
        result
    }

    /// `list-jobs`: up to `count` ids of `tube`'s jobs in `state` (ready, delayed or buried),
    /// in the order the server would take them (a reserve, a kick, the end of a delay),
    /// starting after the job `after` (`JobId(0)`: from the first). [`Error::NotFound`] if
    /// there is no such tube. Only runnerbean has it: other servers answer
    /// [`Error::UnknownCommand`] (see [`list_jobs_or_peek`](Client::list_jobs_or_peek)).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runnerbean_client::Error> {
    /// # let server = runnerbean_testserver::TestServer::runnerbean();
    /// # let addr = server.addr();
    /// use runnerbean_client::{Client, Error, JobId, JobState, PutOptions};
    ///
    /// let client = Client::connect(addr).await?;
    /// let second = client.put(b"b", PutOptions::default().pri(2)).await?;
    /// let first = client.put(b"a", PutOptions::default().pri(1)).await?;
    /// match client.list_jobs("default", JobState::Ready, JobId(0), 10).await {
    ///     Ok(ids) => assert_eq!(ids, [first, second]),
    ///     Err(Error::UnknownCommand) => {} // C beanstalkd
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn list_jobs(&self, tube: &str, state: JobState, after: JobId, count: u32) -> Result<Vec<JobId>, Error> {
        let command = Command::ListJobs { tube: tube_arg(tube)?, state: state_arg(state)?, after: after.0, count };
        let frame = self.call(command, None).await?;
        let result = list(frame, "list-jobs").and_then(|names| {
            names
                .iter()
                .map(|name| {
                    name.parse()
                        .map(JobId)
                        .map_err(|_| Error::Protocol(format!("list-jobs reply has {name:?} for an id")))
                })
                .collect()
        });
        self.note_unknown(&result);
        result
    }

    /// [`list_jobs`](Client::list_jobs), or, on a server without it, the one job a peek shows:
    /// the first of the state, and only for the first page (`after` is `JobId(0)`).
    /// [`JobList::by_peeking`] tells which.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runnerbean_client::Error> {
    /// # let server = runnerbean_testserver::TestServer::runnerbean();
    /// # let addr = server.addr();
    /// use runnerbean_client::{Client, JobId, JobState, PutOptions};
    ///
    /// let client = Client::connect(addr).await?;
    /// let first = client.publish("mail", b"a", 1, 0, 60).await?;
    /// client.publish("mail", b"b", 2, 0, 60).await?;
    /// let list = client.list_jobs_or_peek("mail", JobState::Ready, JobId(0), 10).await?;
    /// assert_eq!(list.ids[0], first);
    /// assert_eq!(list.ids.len(), if list.by_peeking { 1 } else { 2 });
    /// # Ok(())
    /// # }
    /// ```
    pub async fn list_jobs_or_peek(
        &self,
        tube: &str,
        state: JobState,
        after: JobId,
        count: u32,
    ) -> Result<JobList, Error> {
        if !self.lacks_extensions() {
            match self.list_jobs(tube, state, after, count).await {
                Ok(ids) => return Ok(JobList { ids, by_peeking: false }),
                Err(Error::UnknownCommand) => {}
                Err(e) => return Err(e),
            }
        }
        state_arg(state)?;
        self.stats_tube(tube).await?;
        if after != JobId(0) || count == 0 {
            return Ok(JobList { ids: Vec::new(), by_peeking: true });
        }
        let ids = self.peek_in(tube, state).await?.into_iter().collect();
        Ok(JobList { ids, by_peeking: true })
    }

    /// [`clear_tube`](Client::clear_tube), or, on a server without it, peeking the first job
    /// of each state and deleting it until none is left. [`Cleared::by_peeking`] tells which.
    ///
    /// The fallback stops a state after as many deletes as the state had jobs when it began
    /// (so producers cannot keep it going), or after [`VANISHED_IN_A_ROW_MAX`] peeked jobs in a
    /// row were taken by other clients before their delete.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runnerbean_client::Error> {
    /// # let server = runnerbean_testserver::TestServer::runnerbean();
    /// # let addr = server.addr();
    /// use runnerbean_client::{Client, JobState};
    ///
    /// let client = Client::connect(addr).await?;
    /// for body in [b"a", b"b", b"c"] {
    ///     client.publish("mail", body, 0, 0, 60).await?;
    /// }
    /// let cleared = client.clear_tube_or_delete("mail", &[JobState::Ready]).await?;
    /// assert_eq!(cleared.deleted, 3);
    /// assert_eq!(client.stats_tube("mail").await?.current_jobs_ready, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn clear_tube_or_delete(&self, tube: &str, states: &[JobState]) -> Result<Cleared, Error> {
        if !self.lacks_extensions() {
            match self.clear_tube(tube, states).await {
                Ok(deleted) => return Ok(Cleared { deleted, by_peeking: false }),
                Err(Error::UnknownCommand) => {}
                Err(e) => return Err(e),
            }
        }
        if states.is_empty() {
            return Err(Error::InvalidArgument("clear-tube needs at least one state".to_owned()));
        }
        for &state in states {
            state_arg(state)?;
        }
        let stats = self.stats_tube(tube).await?;
        let mut deleted = 0;
        for &state in states {
            let mut left = match state {
                JobState::Ready => stats.current_jobs_ready,
                JobState::Delayed => stats.current_jobs_delayed,
                _ => stats.current_jobs_buried,
            };
            let mut vanished = 0;
            while left > 0 {
                let Some(id) = self.peek_in(tube, state).await? else { break };
                match self.delete(id).await {
                    Ok(()) => {
                        deleted += 1;
                        left -= 1;
                        vanished = 0;
                    }
                    // Another client reserved it between the peek and the delete.
                    Err(Error::NotFound) => {
                        vanished += 1;
                        if vanished == VANISHED_IN_A_ROW_MAX {
                            break;
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(Cleared { deleted, by_peeking: true })
    }

    /// The id of the first job of `tube` in `state`, by `use`, peek and `use` of the tube
    /// used before, sent together; `None` when the state has no job.
    async fn peek_in(&self, tube: &str, state: JobState) -> Result<Option<JobId>, Error> {
        let used = lock(&self.inner.shared.session).used.clone();
        let peek = match state {
            JobState::Ready => Command::PeekReady,
            JobState::Delayed => Command::PeekDelayed,
            _ => Command::PeekBuried,
        };
        let mut replies = self
            .call_chain(vec![
                (Command::Use(tube_arg(tube)?), Some(Track::Use(tube.to_owned()))),
                (peek, None),
                (Command::Use(&used), Some(Track::Use(used.clone()))),
            ])
            .await?
            .into_iter();
        let (Some(using), Some(peeked), Some(back)) = (replies.next(), replies.next(), replies.next()) else {
            return Err(Error::Protocol("a reply is missing".to_owned()));
        };
        match decode(&using?)? {
            Reply::Using(_) => {}
            other => return Err(refusal(other, "use")),
        }
        let peeked = match found(peeked?, "peek") {
            Ok(job) => Some(job.id),
            Err(Error::NotFound) => None,
            Err(e) => return Err(e),
        };
        match decode(&back?)? {
            Reply::Using(_) => Ok(peeked),
            other => Err(refusal(other, "use")),
        }
    }

    /// Whether this connection's server answered one of the extensions `UNKNOWN_COMMAND`.
    fn lacks_extensions(&self) -> bool {
        self.inner.shared.lacks_extensions.load(Ordering::Relaxed)
    }

    /// Remembers a server without the extensions.
    fn note_unknown<T>(&self, result: &Result<T, Error>) {
        if matches!(result, Err(Error::UnknownCommand)) {
            self.inner.shared.lacks_extensions.store(true, Ordering::Relaxed);
        }
    }
}
