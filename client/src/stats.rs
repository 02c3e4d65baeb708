//! The stats documents as structs: [`Stats`] (`stats`), [`TubeStats`] (`stats-tube`) and
//! [`JobStats`] (`stats-job`), with every key beanstalkd 1.12 and 1.13 send, and runnerbean's
//! own keys.
//!
//! Each struct is declared once, by `stats_struct!`, as a list of `"key" => field: Type` in the
//! order the servers send them; the macro writes the struct, its parser and
//! [`fields`](Stats::fields), which lists the keys again in that order with typed values (what
//! rbctl prints as a table or as JSON). A key the library does not know is kept in `other`, as
//! text; a key that a struct requires and the document lacks is a protocol error.

use crate::error::Error;
use crate::job::JobId;
use crate::yaml;

/// One value of a stats document, typed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    /// A count, an id, a size or a number of seconds.
    Count(u64),
    /// A number with a fraction (CPU seconds).
    Real(f64),
    /// `true` or `false`.
    Flag(bool),
    /// Text: names, versions, states.
    Text(&'a str),
}

/// A job's state, as `stats-job` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    /// Waiting to be reserved.
    Ready,
    /// Waiting for its delay to pass.
    Delayed,
    /// Held by a worker.
    Reserved,
    /// Set aside until kicked.
    Buried,
}

impl JobState {
    /// The state's name as the server writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Ready => "ready",
            JobState::Delayed => "delayed",
            JobState::Reserved => "reserved",
            JobState::Buried => "buried",
        }
    }
}

/// How one field's text becomes its type, and how the type is shown again.
trait Field: Sized {
    /// The value when the key is missing, if it may be missing.
    fn missing() -> Option<Self> {
        None
    }
    fn parse(text: &str) -> Option<Self>;
    fn value(&self) -> Option<Value<'_>>;
}

impl Field for u64 {
    fn parse(text: &str) -> Option<u64> {
        text.parse().ok()
    }
    fn value(&self) -> Option<Value<'_>> {
        Some(Value::Count(*self))
    }
}

impl Field for u32 {
    fn parse(text: &str) -> Option<u32> {
        text.parse().ok()
    }
    fn value(&self) -> Option<Value<'_>> {
        Some(Value::Count(u64::from(*self)))
    }
}

impl Field for JobId {
    fn parse(text: &str) -> Option<JobId> {
        text.parse().ok()
    }
    fn value(&self) -> Option<Value<'_>> {
        Some(Value::Count(self.0))
    }
}

impl Field for f64 {
    fn parse(text: &str) -> Option<f64> {
        text.parse().ok().filter(|v: &f64| v.is_finite())
    }
    fn value(&self) -> Option<Value<'_>> {
        Some(Value::Real(*self))
    }
}

impl Field for bool {
    fn parse(text: &str) -> Option<bool> {
        match text {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        }
    }
    fn value(&self) -> Option<Value<'_>> {
        Some(Value::Flag(*self))
    }
}

impl Field for String {
    fn parse(text: &str) -> Option<String> {
        Some(text.to_owned())
    }
    fn value(&self) -> Option<Value<'_>> {
        Some(Value::Text(self))
    }
}

impl Field for JobState {
    fn parse(text: &str) -> Option<JobState> {
        Some(match text {
            "ready" => JobState::Ready,
            "delayed" => JobState::Delayed,
            "reserved" => JobState::Reserved,
            "buried" => JobState::Buried,
            _ => return None,
        })
    }
    fn value(&self) -> Option<Value<'_>> {
        Some(Value::Text(self.as_str()))
    }
}

/// A key only some servers send (runnerbean's own keys, absent from C beanstalkd's stats).
impl<T: Field> Field for Option<T> {
    fn missing() -> Option<Self> {
        Some(None)
    }
    fn parse(text: &str) -> Option<Self> {
        T::parse(text).map(Some)
    }
    fn value(&self) -> Option<Value<'_>> {
        self.as_ref().and_then(T::value)
    }
}

macro_rules! stats_struct {
    (
        $(#[$meta:meta])*
        $name:ident from $command:literal {
            $( $(#[$field_meta:meta])* $key:literal => $field:ident : $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq)]
        #[non_exhaustive]
        pub struct $name {
            $( $(#[$field_meta])* #[doc = concat!("\n\nKey `", $key, "`.")] pub $field: $ty, )*
            /// Keys this version of the library does not know, in the server's order, with their
            /// values as the server wrote them.
            pub other: Vec<(String, String)>,
        }

        impl $name {
            /// Parses the YAML document of the reply.
            pub(crate) fn from_yaml(doc: &[u8]) -> Result<$name, Error> {
                let text = std::str::from_utf8(doc)
                    .map_err(|_| Error::Protocol(concat!($command, " reply is not UTF-8").to_owned()))?;
                let pairs = yaml::mapping(text).map_err(|e| Error::Protocol(format!(concat!($command, " reply: {}"), e)))?;
                $( let mut $field: Option<$ty> = None; )*
                let mut other = Vec::new();
                for (key, value) in pairs {
                    match key.as_str() {
                        $( $key => {
                            $field = Some(<$ty as Field>::parse(&value).ok_or_else(|| {
                                Error::Protocol(format!(concat!($command, " reply: {}: {:?} is not a valid value"), $key, value))
                            })?);
                        } )*
                        _ => other.push((key, value)),
                    }
                }
                Ok($name {
                    $( $field: match $field.or_else(<$ty as Field>::missing) {
                        Some(value) => value,
                        None => return Err(Error::Protocol(concat!($command, " reply has no ", $key).to_owned())),
                    }, )*
                    other,
                })
            }

            /// Every key the server sent with its value, in the server's order; keys the
            /// library does not know come last, as text.
            pub fn fields(&self) -> Vec<(&str, Value<'_>)> {
                let mut fields = Vec::new();
                $( if let Some(value) = Field::value(&self.$field) { fields.push(($key, value)); } )*
                fields.extend(self.other.iter().map(|(k, v)| (k.as_str(), Value::Text(v.as_str()))));
                fields
            }
        }
    };
}

stats_struct! {
    /// The server's counters, from `stats`.
    Stats from "stats" {
        /// Ready jobs with priority below 1024.
        "current-jobs-urgent" => current_jobs_urgent: u64,
        /// Ready jobs.
        "current-jobs-ready" => current_jobs_ready: u64,
        /// Reserved jobs.
        "current-jobs-reserved" => current_jobs_reserved: u64,
        /// Delayed jobs.
        "current-jobs-delayed" => current_jobs_delayed: u64,
        /// Buried jobs.
        "current-jobs-buried" => current_jobs_buried: u64,
        /// `put` commands.
        "cmd-put" => cmd_put: u64,
        /// `peek` commands.
        "cmd-peek" => cmd_peek: u64,
        /// `peek-ready` commands.
        "cmd-peek-ready" => cmd_peek_ready: u64,
        /// `peek-delayed` commands.
        "cmd-peek-delayed" => cmd_peek_delayed: u64,
        /// `peek-buried` commands.
        "cmd-peek-buried" => cmd_peek_buried: u64,
        /// `reserve` commands.
        "cmd-reserve" => cmd_reserve: u64,
        /// `reserve-with-timeout` commands.
        "cmd-reserve-with-timeout" => cmd_reserve_with_timeout: u64,
        /// `delete` commands.
        "cmd-delete" => cmd_delete: u64,
        /// `release` commands.
        "cmd-release" => cmd_release: u64,
        /// `use` commands.
        "cmd-use" => cmd_use: u64,
        /// `watch` commands.
        "cmd-watch" => cmd_watch: u64,
        /// `ignore` commands.
        "cmd-ignore" => cmd_ignore: u64,
        /// `bury` commands.
        "cmd-bury" => cmd_bury: u64,
        /// `kick` commands.
        "cmd-kick" => cmd_kick: u64,
        /// `touch` commands.
        "cmd-touch" => cmd_touch: u64,
        /// `stats` commands.
        "cmd-stats" => cmd_stats: u64,
        /// `stats-job` commands.
        "cmd-stats-job" => cmd_stats_job: u64,
        /// `stats-tube` commands.
        "cmd-stats-tube" => cmd_stats_tube: u64,
        /// `list-tubes` commands.
        "cmd-list-tubes" => cmd_list_tubes: u64,
        /// `list-tube-used` commands.
        "cmd-list-tube-used" => cmd_list_tube_used: u64,
        /// `list-tubes-watched` commands.
        "cmd-list-tubes-watched" => cmd_list_tubes_watched: u64,
        /// `pause-tube` commands.
        "cmd-pause-tube" => cmd_pause_tube: u64,
        /// Times a reserved job ran past its time-to-run.
        "job-timeouts" => job_timeouts: u64,
        /// Jobs created since the server started.
        "total-jobs" => total_jobs: u64,
        /// The largest body the server accepts, in bytes.
        "max-job-size" => max_job_size: u64,
        /// Tubes that exist.
        "current-tubes" => current_tubes: u64,
        /// Open connections.
        "current-connections" => current_connections: u64,
        /// Open connections that have put a job.
        "current-producers" => current_producers: u64,
        /// Open connections that have reserved.
        "current-workers" => current_workers: u64,
        /// Open connections waiting in a reserve.
        "current-waiting" => current_waiting: u64,
        /// Connections accepted since the server started.
        "total-connections" => total_connections: u64,
        /// The server's process id.
        "pid" => pid: u64,
        /// The beanstalkd version the server speaks (`1.13` for runnerbean).
        "version" => version: String,
        /// User CPU time, in seconds.
        "rusage-utime" => rusage_utime: f64,
        /// System CPU time, in seconds.
        "rusage-stime" => rusage_stime: f64,
        /// Seconds since the server started.
        "uptime" => uptime: u64,
        /// Index of the oldest write-ahead log file.
        "binlog-oldest-index" => binlog_oldest_index: u64,
        /// Index of the write-ahead log file being written.
        "binlog-current-index" => binlog_current_index: u64,
        /// Log records moved forward by compaction.
        "binlog-records-migrated" => binlog_records_migrated: u64,
        /// Log records written.
        "binlog-records-written" => binlog_records_written: u64,
        /// Size of each log file, in bytes.
        "binlog-max-size" => binlog_max_size: u64,
        /// Whether the server is in drain mode (puts get `DRAINING`).
        "draining" => draining: bool,
        /// A random id the server chose at start.
        "id" => id: String,
        /// The server's host name.
        "hostname" => hostname: String,
        /// The kernel's version string.
        "os" => os: String,
        /// The machine type (`x86_64`).
        "platform" => platform: String,
        /// runnerbean's own version (runnerbean only).
        "runnerbean-version" => runnerbean_version: Option<String>,
        /// The I/O back end, `io_uring` or `epoll` (runnerbean only).
        "runnerbean-io" => runnerbean_io: Option<String>,
        /// Cores serving (runnerbean only).
        "runnerbean-cores" => runnerbean_cores: Option<u64>,
    }
}

stats_struct! {
    /// One tube's counters, from `stats-tube`.
    TubeStats from "stats-tube" {
        /// The tube's name.
        "name" => name: String,
        /// Ready jobs with priority below 1024.
        "current-jobs-urgent" => current_jobs_urgent: u64,
        /// Ready jobs.
        "current-jobs-ready" => current_jobs_ready: u64,
        /// Reserved jobs.
        "current-jobs-reserved" => current_jobs_reserved: u64,
        /// Delayed jobs.
        "current-jobs-delayed" => current_jobs_delayed: u64,
        /// Buried jobs.
        "current-jobs-buried" => current_jobs_buried: u64,
        /// Jobs created in this tube since it was created.
        "total-jobs" => total_jobs: u64,
        /// Connections using the tube.
        "current-using" => current_using: u64,
        /// Connections watching the tube.
        "current-watching" => current_watching: u64,
        /// Connections waiting in a reserve on the tube.
        "current-waiting" => current_waiting: u64,
        /// Jobs of this tube deleted.
        "cmd-delete" => cmd_delete: u64,
        /// `pause-tube` commands for this tube.
        "cmd-pause-tube" => cmd_pause_tube: u64,
        /// The length of the current pause, in seconds (0 when not paused).
        "pause" => pause: u64,
        /// Seconds left of the pause.
        "pause-time-left" => pause_time_left: u64,
    }
}

stats_struct! {
    /// One job's state and counters, from `stats-job`.
    JobStats from "stats-job" {
        /// The job's id.
        "id" => id: JobId,
        /// The tube the job is in.
        "tube" => tube: String,
        /// The job's state.
        "state" => state: JobState,
        /// The job's priority.
        "pri" => pri: u32,
        /// Seconds since the job was put.
        "age" => age: u64,
        /// The delay it was put or released with, in seconds.
        "delay" => delay: u64,
        /// Its time-to-run, in seconds.
        "ttr" => ttr: u64,
        /// Seconds until a reserved job is released or a delayed job becomes ready.
        "time-left" => time_left: u64,
        /// The write-ahead log file that holds the job (0 without a log).
        "file" => file: u64,
        /// Times the job was reserved.
        "reserves" => reserves: u64,
        /// Times it ran past its time-to-run.
        "timeouts" => timeouts: u64,
        /// Times it was released.
        "releases" => releases: u64,
        /// Times it was buried.
        "buries" => buries: u64,
        /// Times it was kicked.
        "kicks" => kicks: u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C_BEANSTALKD_STATS: &str = "---\ncurrent-jobs-urgent: 1\ncurrent-jobs-ready: 1\ncurrent-jobs-reserved: 0\n\
        current-jobs-delayed: 0\ncurrent-jobs-buried: 0\ncmd-put: 1\ncmd-peek: 0\ncmd-peek-ready: 0\n\
        cmd-peek-delayed: 0\ncmd-peek-buried: 0\ncmd-reserve: 0\ncmd-reserve-with-timeout: 0\ncmd-delete: 0\n\
        cmd-release: 0\ncmd-use: 0\ncmd-watch: 0\ncmd-ignore: 0\ncmd-bury: 0\ncmd-kick: 0\ncmd-touch: 0\n\
        cmd-stats: 1\ncmd-stats-job: 0\ncmd-stats-tube: 0\ncmd-list-tubes: 0\ncmd-list-tube-used: 0\n\
        cmd-list-tubes-watched: 0\ncmd-pause-tube: 0\njob-timeouts: 0\ntotal-jobs: 1\nmax-job-size: 65535\n\
        current-tubes: 1\ncurrent-connections: 1\ncurrent-producers: 1\ncurrent-workers: 0\ncurrent-waiting: 0\n\
        total-connections: 1\npid: 8062\nversion: \"1.12\"\nrusage-utime: 0.000000\nrusage-stime: 0.001728\n\
        uptime: 0\nbinlog-oldest-index: 0\nbinlog-current-index: 0\nbinlog-records-migrated: 0\n\
        binlog-records-written: 0\nbinlog-max-size: 10485760\ndraining: false\nid: 95dd4817c81bd995\n\
        hostname: vm\nos: #1 SMP PREEMPT_DYNAMIC @0\nplatform: x86_64\n";

    #[test]
    fn c_beanstalkd_stats_parse_with_every_key() {
        let stats = Stats::from_yaml(C_BEANSTALKD_STATS.as_bytes()).unwrap();
        assert_eq!(stats.pid, 8062);
        assert_eq!(stats.version, "1.12");
        assert_eq!(stats.rusage_stime, 0.001728);
        assert_eq!(stats.os, "#1 SMP PREEMPT_DYNAMIC @0");
        assert_eq!(stats.runnerbean_version, None);
        assert!(!stats.draining);
        let fields = stats.fields();
        assert_eq!(fields.len(), 51);
        assert_eq!(fields[0], ("current-jobs-urgent", Value::Count(1)));
        assert_eq!(fields[50], ("platform", Value::Text("x86_64")));
    }

    #[test]
    fn unknown_keys_are_kept_and_missing_ones_are_errors() {
        let doc = "---\nid: 1\ntube: \"t\"\nstate: buried\npri: 5\nage: 0\ndelay: 0\nttr: 1\ntime-left: 0\nfile: 0\n\
                   reserves: 1\ntimeouts: 0\nreleases: 0\nburies: 1\nkicks: 0\nnew-key: x\n";
        let job = JobStats::from_yaml(doc.as_bytes()).unwrap();
        assert_eq!((job.id, job.state, job.pri), (JobId(1), JobState::Buried, 5));
        assert_eq!(job.other, [("new-key".to_owned(), "x".to_owned())]);
        assert_eq!(job.fields().last(), Some(&("new-key", Value::Text("x"))));

        let missing = JobStats::from_yaml(doc.replace("kicks: 0\n", "").as_bytes()).unwrap_err();
        assert_eq!(missing.to_string(), "protocol error: stats-job reply has no kicks");
        let bad = JobStats::from_yaml(doc.replace("pri: 5", "pri: -5").as_bytes()).unwrap_err();
        assert_eq!(bad.to_string(), "protocol error: stats-job reply: pri: \"-5\" is not a valid value");
    }
}
