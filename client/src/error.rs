//! The one error type of the library: what the server answered, and what went wrong on the way.
//!
//! The first group of variants are the server's own error replies: the connection is fine and
//! the next command can be sent. The second group are failures of the connection itself (I/O,
//! timeouts, bytes that are not the protocol): the connection is closed and every command in
//! flight, and every later one, gets the same error; [`Error::is_disconnect`] tells them apart,
//! and [`Client::reconnect`](crate::Client::reconnect) is the way on.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::JobId;

/// Everything a command can fail with.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Error {
    /// `NOT_FOUND`: no such job (or tube), or the job is not in a state the command works on
    /// (reserved by another connection, for instance).
    NotFound,
    /// `BURIED`: `put` stored the job but the server had to bury it (it was out of memory), or
    /// `release` had to bury it. The job exists, buried, with this id.
    Buried(JobId),
    /// `JOB_TOO_BIG`: the body is larger than the server's `max-job-size`.
    JobTooBig,
    /// `DRAINING`: the server is in drain mode and takes no new jobs.
    Draining,
    /// `DEADLINE_SOON`: a job this connection reserved is within a second of its time-to-run;
    /// touch, release or delete it.
    DeadlineSoon,
    /// `TIMED_OUT`: `reserve-with-timeout` found no job in time.
    TimedOut,
    /// `BAD_FORMAT`: the server could not parse the command (a tube name with characters
    /// beanstalkd does not allow, for instance).
    BadFormat,
    /// `UNKNOWN_COMMAND`: the server does not know the command (`reserve-job` on a server
    /// older than beanstalkd 1.12, for instance).
    UnknownCommand,
    /// `OUT_OF_MEMORY`: the server could not allocate what the command needed.
    OutOfMemory,
    /// `INTERNAL_ERROR`: the server failed on its side (a failed log write, for instance).
    InternalError,
    /// `EXPECTED_CRLF`: the server did not find CRLF after a put's body.
    ExpectedCrlf,
    /// `NOT_IGNORED`: `ignore` was asked to drop the last watched tube.
    NotIgnored,

    /// The connection could not be opened.
    Connect {
        /// The address as given.
        addr: String,
        /// What the operating system said.
        source: Arc<io::Error>,
    },
    /// The connection was not open within the connect timeout.
    ConnectTimeout {
        /// The address as given.
        addr: String,
        /// The timeout that ran out.
        after: Duration,
    },
    /// Reading from or writing to the connection failed; the connection is closed.
    Io(Arc<io::Error>),
    /// The server closed the connection (after `quit`, or because it stopped).
    ClosedByServer,
    /// No reply came within the read timeout (plus whatever wait the command asked for); the
    /// connection is closed, since the reply may still come and would answer the wrong command.
    ReplyTimeout(Duration),
    /// The server sent bytes that are not a beanstalkd reply (or a reply nothing was waiting
    /// for); the framing cannot be trusted any more, so the connection is closed.
    Protocol(String),
    /// The server sent a well-formed reply that does not answer the command (`DELETED` to a
    /// `put`, say). The connection stays open.
    UnexpectedReply(String),
    /// An argument the protocol cannot carry, such as a tube name with a space in it. Nothing
    /// was sent.
    InvalidArgument(String),
}

impl Error {
    /// Whether this is one of the server's error replies: the connection is still good.
    pub fn is_server_reply(&self) -> bool {
        matches!(
            self,
            Error::NotFound
                | Error::Buried(_)
                | Error::JobTooBig
                | Error::Draining
                | Error::DeadlineSoon
                | Error::TimedOut
                | Error::BadFormat
                | Error::UnknownCommand
                | Error::OutOfMemory
                | Error::InternalError
                | Error::ExpectedCrlf
                | Error::NotIgnored
        )
    }

    /// Whether the connection is gone: a new one is needed ([`Client::reconnect`](crate::Client::reconnect)).
    pub fn is_disconnect(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. }
                | Error::ConnectTimeout { .. }
                | Error::Io(_)
                | Error::ClosedByServer
                | Error::ReplyTimeout(_)
                | Error::Protocol(_)
        )
    }

    /// The reply word the server sent, for the server's error replies (`"NOT_FOUND"`, ...).
    pub fn reply_word(&self) -> Option<&'static str> {
        Some(match self {
            Error::NotFound => "NOT_FOUND",
            Error::Buried(_) => "BURIED",
            Error::JobTooBig => "JOB_TOO_BIG",
            Error::Draining => "DRAINING",
            Error::DeadlineSoon => "DEADLINE_SOON",
            Error::TimedOut => "TIMED_OUT",
            Error::BadFormat => "BAD_FORMAT",
            Error::UnknownCommand => "UNKNOWN_COMMAND",
            Error::OutOfMemory => "OUT_OF_MEMORY",
            Error::InternalError => "INTERNAL_ERROR",
            Error::ExpectedCrlf => "EXPECTED_CRLF",
            Error::NotIgnored => "NOT_IGNORED",
            _ => return None,
        })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotFound => f.write_str("not found"),
            Error::Buried(id) => write!(f, "job {id} was buried"),
            Error::JobTooBig => f.write_str("job too big for the server's max-job-size"),
            Error::Draining => f.write_str("server is draining and takes no new jobs"),
            Error::DeadlineSoon => f.write_str("a reserved job's deadline is less than a second away"),
            Error::TimedOut => f.write_str("timed out waiting for a job"),
            Error::BadFormat => f.write_str("server replied BAD_FORMAT"),
            Error::UnknownCommand => f.write_str("server replied UNKNOWN_COMMAND"),
            Error::OutOfMemory => f.write_str("server is out of memory"),
            Error::InternalError => f.write_str("server replied INTERNAL_ERROR"),
            Error::ExpectedCrlf => f.write_str("server expected CRLF after the body"),
            Error::NotIgnored => f.write_str("cannot ignore the only watched tube"),
            Error::Connect { addr, source } => write!(f, "cannot connect to {addr}: {}", describe_io(source)),
            Error::ConnectTimeout { addr, after } => write!(f, "cannot connect to {addr}: timed out after {after:?}"),
            Error::Io(e) => write!(f, "connection failed: {}", describe_io(e)),
            Error::ClosedByServer => f.write_str("the server closed the connection"),
            Error::ReplyTimeout(after) => write!(f, "no reply from the server within {after:?}"),
            Error::Protocol(what) => write!(f, "protocol error: {what}"),
            Error::UnexpectedReply(reply) => write!(f, "unexpected reply from the server: {reply}"),
            Error::InvalidArgument(what) => write!(f, "invalid argument: {what}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Connect { source, .. } => Some(source.as_ref()),
            Error::Io(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}

/// An I/O error as one lower-case phrase, without Rust's "(os error N)" suffix:
/// "connection refused", "no such file or directory".
pub(crate) fn describe_io(e: &io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error") {
        Some(at) => &text[..at],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_read_as_one_phrase() {
        let refused = io::Error::from_raw_os_error(libc_econnrefused());
        assert_eq!(describe_io(&refused), "connection refused");
        let e = Error::Connect { addr: "127.0.0.1:11300".into(), source: Arc::new(refused) };
        assert_eq!(e.to_string(), "cannot connect to 127.0.0.1:11300: connection refused");
        assert!(e.is_disconnect() && !e.is_server_reply());
        assert!(Error::NotFound.is_server_reply() && !Error::NotFound.is_disconnect());
    }

    /// ECONNREFUSED on Linux.
    fn libc_econnrefused() -> i32 {
        111
    }
}
