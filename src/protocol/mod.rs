//! The beanstalkd wire protocol without any state: command lines in,
//! reply bytes out.
//!
//! * [`number`] — the three number readers beanstalkd uses.
//! * [`command`] — recognising and parsing one command line.
//! * [`reply`] — reply words and reply lines.
//! * [`yaml`] — the stats and list documents.
//! * [`output`] — the per-connection queue of outgoing bytes.

pub mod command;
pub mod number;
pub mod output;
pub mod reply;
pub mod yaml;

/// Longest command line, CRLF included (beanstalkd's `LINE_BUF_SIZE`).
pub const LINE_BYTES_MAX: usize = 224;

// The longest valid command fits a line: `pause-tube`, a tube name of the
// longest length and the largest delay.
const _: () =
    assert!(LINE_BYTES_MAX >= "pause-tube ".len() + command::TUBE_NAME_BYTES_MAX + " 4294967295".len() + "\r\n".len());

/// Default and largest `-z` values.
pub const JOB_BYTES_MAX_DEFAULT: u64 = 65_535;
pub const JOB_BYTES_MAX_LIMIT: u64 = 1_073_741_824;
