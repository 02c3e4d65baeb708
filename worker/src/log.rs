//! The worker's log: one line per event on stderr, `LEVEL message`, written whole.
//!
//! Supervisors (systemd's journal, supervisord, Docker) add the time and the process name, so
//! the worker writes neither. Each line is formatted first and written with one call on a
//! locked stderr, so lines of jobs that run side by side never interleave within a line. A
//! failed write to stderr is ignored: the log must never stop the work.

use std::io::Write;

/// How important a line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// What the worker did: a job started, finished, was released.
    Info,
    /// Something went wrong that the worker recovers from: a lost connection, a failed job.
    Warn,
    /// Something went wrong that needs a person: a job buried, a setting that cannot work.
    Error,
}

impl Level {
    fn word(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// Writes one line.
pub fn line(level: Level, message: &str) {
    let mut text = String::with_capacity(message.len() + 8);
    text.push_str(level.word());
    text.push(' ');
    // A message never spans lines: a line break inside one (from a reason a server or a
    // process gave) would be read as a second line of the log.
    text.extend(message.chars().map(|c| if c == '\n' || c == '\r' { ' ' } else { c }));
    text.push('\n');
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// `info` line.
pub fn info(message: &str) {
    line(Level::Info, message);
}

/// `warn` line.
pub fn warn(message: &str) {
    line(Level::Warn, message);
}

/// `error` line.
pub fn error(message: &str) {
    line(Level::Error, message);
}
