//! A job as it is stored and recovered: every field a restart must restore,
//! in plain values, so that readers of different formats (runnerbean's own
//! log, C beanstalkd's binlog) and the engine meet in one type.
//!
//! Times are nanoseconds since the Unix epoch (wall clock), because they must
//! mean the same thing in the next process: the engine runs on a clock that
//! is anchored to the wall clock at start-up and monotonic afterwards (see
//! `engine::time`), so its instants can be stored as they are.

/// The state a recovered job comes back in. A job that was reserved when
/// the log was written comes back ready, as in beanstalkd, so there is no
/// reserved state here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageState {
    Ready,
    /// Becomes ready at [`JobImage::deadline`].
    Delayed,
    /// Buried jobs come back in the order of [`JobImage::deadline`], which
    /// for them is a sequence number of the bury, not a time.
    Buried,
}

/// The five per-job counters of `stats-job`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub reserves: u32,
    pub timeouts: u32,
    pub releases: u32,
    pub buries: u32,
    pub kicks: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobImage {
    pub id: u64,
    pub tube: String,
    pub state: ImageState,
    pub pri: u32,
    /// Time to run, whole seconds (at least 1).
    pub ttr_s: u32,
    /// The delay last set by put or release, whole seconds (`stats-job`'s
    /// `delay`).
    pub delay_s: u32,
    /// When the job was put, ns since the epoch.
    pub created_at: u64,
    /// Delayed: when it becomes ready (ns since the epoch). Buried: the
    /// order of its bury among buried jobs. Ready: unused (0).
    pub deadline: u64,
    pub counters: Counters,
    /// The body, without the CRLF that frames it on the wire.
    pub body: Vec<u8>,
}
