//! Jobs as the client sees them: ids, bodies and the parameters of a put.

use std::fmt;

/// A job's id, as the server assigned it at `put`.
///
/// Ids are unique for the life of a server process (and across restarts with a write-ahead
/// log); they are never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<u64> for JobId {
    fn from(id: u64) -> JobId {
        JobId(id)
    }
}

impl std::str::FromStr for JobId {
    type Err = std::num::ParseIntError;

    fn from_str(text: &str) -> Result<JobId, Self::Err> {
        text.parse().map(JobId)
    }
}

/// A job: its id and its body, as `reserve` and the `peek` commands return it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    /// The job's id.
    pub id: JobId,
    /// The job's body, exactly the bytes that were put.
    pub body: Vec<u8>,
}

/// The parameters of a put besides the body: priority, delay and time-to-run.
///
/// The default is what most beanstalkd clients use: priority 1024 (the first non-urgent one),
/// no delay, and 60 seconds to run.
///
/// ```
/// use runnerbean_client::PutOptions;
///
/// let urgent = PutOptions::default().pri(0).ttr(300);
/// assert_eq!((urgent.pri, urgent.delay, urgent.ttr), (0, 0, 300));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutOptions {
    /// Priority: lower numbers are reserved first; below 1024 counts as urgent in the stats.
    pub pri: u32,
    /// Seconds the job stays delayed before it becomes ready.
    pub delay: u32,
    /// Seconds a worker may keep the job reserved before the server gives it to another one.
    /// The server raises 0 to 1.
    pub ttr: u32,
}

/// The priority [`PutOptions::default`] uses.
pub const DEFAULT_PRI: u32 = 1024;

/// The time-to-run, in seconds, [`PutOptions::default`] uses.
pub const DEFAULT_TTR_SECS: u32 = 60;

impl Default for PutOptions {
    fn default() -> PutOptions {
        PutOptions { pri: DEFAULT_PRI, delay: 0, ttr: DEFAULT_TTR_SECS }
    }
}

impl PutOptions {
    /// The same options with this priority.
    pub fn pri(self, pri: u32) -> PutOptions {
        PutOptions { pri, ..self }
    }

    /// The same options with this delay, in seconds.
    pub fn delay(self, delay: u32) -> PutOptions {
        PutOptions { delay, ..self }
    }

    /// The same options with this time-to-run, in seconds.
    pub fn ttr(self, ttr: u32) -> PutOptions {
        PutOptions { ttr, ..self }
    }
}
