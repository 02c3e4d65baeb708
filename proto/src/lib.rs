//! The beanstalkd protocol as plain data, for clients: a command encoder and a reply decoder.
//!
//! This crate does no I/O, keeps no state and depends on nothing. It is the framing layer that
//! `runnerbean-client` is built on, and it is small and allocation-free so that test harnesses
//! and load generators can share it instead of each keeping a private reply framer.
//!
//! # Layout
//! * [`Command`]: every command of the protocol, written to a caller's buffer by
//!   [`Command::encode`] (the buffer is reused, so encoding allocates only when it grows).
//! * [`check`] and [`parse`]: two-phase reply decoding. `check` looks at the bytes received so
//!   far and says either "incomplete" or how long the first reply is, without allocating;
//!   `parse` turns those bytes into a [`Reply`] that borrows them. [`decode`] does both.
//!
//! # Invariants
//! * The decoder never reads past the reply it reports, so pipelined replies that arrive in one
//!   read are taken one at a time, in order.
//! * Any byte sequence is either incomplete, one well-formed reply, or a [`DecodeError`]; the
//!   decoder never panics (the tests feed it every prefix and random bytes).
//! * It must never accept a reply line longer than [`REPLY_LINE_BYTES_MAX`] or a body larger
//!   than [`BODY_BYTES_MAX`], so a hostile peer cannot make a client buffer without bound.
//!
//! # Example
//! ```
//! use runnerbean_proto::{check, parse, Command, Reply};
//!
//! let mut out = Vec::new();
//! Command::Put { pri: 10, delay: 0, ttr: 60, body: b"hello" }.encode(&mut out);
//! assert_eq!(out, b"put 10 0 60 5\r\nhello\r\n");
//!
//! let received = b"INSERTED 7\r\nRESERVED 7 5\r\nhel";
//! let len = check(received).unwrap().unwrap();
//! assert_eq!(parse(&received[..len]).unwrap(), Reply::Inserted(7));
//! // The second reply's body has not fully arrived yet.
//! assert_eq!(check(&received[len..]).unwrap(), None);
//! ```

#![warn(missing_docs)]

use std::fmt;

/// The longest reply line accepted, CRLF excluded. beanstalkd's longest is `USING` followed by a
/// 200-byte tube name (206 bytes); 1 KiB leaves room for other servers while still refusing a
/// peer that streams a line with no end.
pub const REPLY_LINE_BYTES_MAX: usize = 1024;

/// The largest body accepted in a `RESERVED`, `FOUND` or `OK` reply: beanstalkd's own ceiling
/// for `-z` (1 GiB). Anything larger cannot come from a beanstalkd-protocol server.
pub const BODY_BYTES_MAX: usize = 1 << 30;

/// One command of the beanstalkd protocol, borrowing its arguments.
///
/// Numbers are sent as decimal; seconds are whole seconds, as the protocol has them. Tube names
/// are sent as given: checking them (at most 200 bytes of letters, digits and `-+/;.$_()`, not
/// starting with `-`) is the caller's or the server's job, but a name must never contain a space,
/// CR or LF, since those would split the command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// `put <pri> <delay> <ttr> <bytes>` and the body: adds a job to the used tube.
    Put {
        /// Priority; lower is more urgent, below 1024 counts as urgent.
        pri: u32,
        /// Seconds before the job becomes ready.
        delay: u32,
        /// Seconds a worker may hold the job before it is released again.
        ttr: u32,
        /// The job's body, any bytes.
        body: &'a [u8],
    },
    /// `use <tube>`: the tube later puts go to.
    Use(&'a str),
    /// `reserve`: waits as long as it takes for a job from a watched tube.
    Reserve,
    /// `reserve-with-timeout <seconds>`: waits at most that long (0 means "only if one is ready").
    ReserveWithTimeout(u32),
    /// `reserve-job <id>`: reserves that job if it is ready, delayed or buried.
    ReserveJob(u64),
    /// `delete <id>`.
    Delete(u64),
    /// `release <id> <pri> <delay>`: gives a reserved job back.
    Release {
        /// The job.
        id: u64,
        /// Its new priority.
        pri: u32,
        /// Seconds before it is ready again.
        delay: u32,
    },
    /// `bury <id> <pri>`: puts a reserved job aside until it is kicked.
    Bury {
        /// The job.
        id: u64,
        /// Its new priority.
        pri: u32,
    },
    /// `touch <id>`: restarts a reserved job's time-to-run.
    Touch(u64),
    /// `watch <tube>`: adds a tube to the ones reserve takes jobs from.
    Watch(&'a str),
    /// `ignore <tube>`: removes a tube from the watched ones.
    Ignore(&'a str),
    /// `peek <id>`.
    Peek(u64),
    /// `peek-ready`: the next ready job of the used tube.
    PeekReady,
    /// `peek-delayed`: the delayed job of the used tube that becomes ready first.
    PeekDelayed,
    /// `peek-buried`: the oldest buried job of the used tube.
    PeekBuried,
    /// `kick <bound>`: makes up to `bound` buried (or, if none, delayed) jobs of the used tube ready.
    Kick(u32),
    /// `kick-job <id>`: makes one buried or delayed job ready.
    KickJob(u64),
    /// `stats-job <id>`.
    StatsJob(u64),
    /// `stats-tube <tube>`.
    StatsTube(&'a str),
    /// `stats`: the server's counters.
    Stats,
    /// `list-tubes`.
    ListTubes,
    /// `list-tube-used`.
    ListTubeUsed,
    /// `list-tubes-watched`.
    ListTubesWatched,
    /// `pause-tube <tube> <seconds>`: no job is reserved from the tube for that long.
    PauseTube(&'a str, u32),
    /// `quit`: the server closes the connection.
    Quit,
    /// `clear-tube <tube> <states>`: deletes every job of the tube in the given states, a comma
    /// list of `ready`, `delayed` and `buried`. A runnerbean extension: C beanstalkd answers
    /// `UNKNOWN_COMMAND`.
    ClearTube {
        /// The tube.
        tube: &'a str,
        /// The states, such as `ready,buried`.
        states: &'a str,
    },
    /// `list-jobs <tube> <state> <after-id> <count>`: up to `count` ids of the tube's jobs in
    /// one state (`ready`, `delayed` or `buried`), those after `after` in the order the server
    /// would take them (0 starts at the first). A runnerbean extension: C beanstalkd answers
    /// `UNKNOWN_COMMAND`.
    ListJobs {
        /// The tube.
        tube: &'a str,
        /// The state.
        state: &'a str,
        /// The id the page starts after (0: from the start).
        after: u64,
        /// The most ids wanted.
        count: u32,
    },
}

impl Command<'_> {
    /// Appends the command's bytes, CRLF included (and the body with its CRLF for `put`), to
    /// `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        // Writing to a Vec cannot fail, so the results are ignored.
        let _ = match *self {
            Command::Put { pri, delay, ttr, body } => {
                let _ = write!(out, "put {pri} {delay} {ttr} {}\r\n", body.len());
                out.extend_from_slice(body);
                Ok(())
            }
            Command::Use(tube) => write!(out, "use {tube}"),
            Command::Reserve => write!(out, "reserve"),
            Command::ReserveWithTimeout(seconds) => write!(out, "reserve-with-timeout {seconds}"),
            Command::ReserveJob(id) => write!(out, "reserve-job {id}"),
            Command::Delete(id) => write!(out, "delete {id}"),
            Command::Release { id, pri, delay } => write!(out, "release {id} {pri} {delay}"),
            Command::Bury { id, pri } => write!(out, "bury {id} {pri}"),
            Command::Touch(id) => write!(out, "touch {id}"),
            Command::Watch(tube) => write!(out, "watch {tube}"),
            Command::Ignore(tube) => write!(out, "ignore {tube}"),
            Command::Peek(id) => write!(out, "peek {id}"),
            Command::PeekReady => write!(out, "peek-ready"),
            Command::PeekDelayed => write!(out, "peek-delayed"),
            Command::PeekBuried => write!(out, "peek-buried"),
            Command::Kick(bound) => write!(out, "kick {bound}"),
            Command::KickJob(id) => write!(out, "kick-job {id}"),
            Command::StatsJob(id) => write!(out, "stats-job {id}"),
            Command::StatsTube(tube) => write!(out, "stats-tube {tube}"),
            Command::Stats => write!(out, "stats"),
            Command::ListTubes => write!(out, "list-tubes"),
            Command::ListTubeUsed => write!(out, "list-tube-used"),
            Command::ListTubesWatched => write!(out, "list-tubes-watched"),
            Command::PauseTube(tube, seconds) => write!(out, "pause-tube {tube} {seconds}"),
            Command::Quit => write!(out, "quit"),
            Command::ClearTube { tube, states } => write!(out, "clear-tube {tube} {states}"),
            Command::ListJobs { tube, state, after, count } => write!(out, "list-jobs {tube} {state} {after} {count}"),
        };
        out.extend_from_slice(b"\r\n");
    }

    /// Whether the server may hold the reply back for as long as the command asks it to wait:
    /// `reserve` (without end) and `reserve-with-timeout`. A client's reply timeout has to allow
    /// for that wait.
    pub fn waits(&self) -> Option<Wait> {
        match *self {
            Command::Reserve => Some(Wait::Forever),
            Command::ReserveWithTimeout(seconds) => Some(Wait::Seconds(seconds)),
            _ => None,
        }
    }
}

/// How long a command may legitimately keep its reply waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Until a job arrives, however long that is.
    Forever,
    /// Up to this many seconds.
    Seconds(u32),
}

/// One reply of a beanstalkd-protocol server, borrowing the received bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    /// `INSERTED <id>`: put succeeded.
    Inserted(u64),
    /// `BURIED <id>`: put stored the job but had to bury it (the server was out of memory).
    BuriedId(u64),
    /// `BURIED`: bury succeeded, or release had to bury the job.
    Buried,
    /// `USING <tube>`.
    Using(&'a str),
    /// `RESERVED <id> <bytes>` and the body.
    Reserved {
        /// The job's id.
        id: u64,
        /// The job's body.
        body: &'a [u8],
    },
    /// `FOUND <id> <bytes>` and the body: a peek's answer.
    Found {
        /// The job's id.
        id: u64,
        /// The job's body.
        body: &'a [u8],
    },
    /// `OK <bytes>` and a YAML document (stats and lists).
    Ok(&'a [u8]),
    /// `DELETED`.
    Deleted,
    /// `RELEASED`.
    Released,
    /// `TOUCHED`.
    Touched,
    /// `WATCHING <count>`: the number of tubes now watched.
    Watching(u64),
    /// `KICKED <count>`: the answer to kick.
    KickedCount(u64),
    /// `KICKED`: the answer to kick-job.
    Kicked,
    /// `PAUSED`.
    Paused,
    /// `CLEARED <count>`: the answer to clear-tube, the number of jobs it deleted.
    Cleared(u64),
    /// `NOT_FOUND`.
    NotFound,
    /// `NOT_IGNORED`: the tube is the last one watched.
    NotIgnored,
    /// `TIMED_OUT`: reserve-with-timeout found no job in time.
    TimedOut,
    /// `DEADLINE_SOON`: a job this connection holds is about to reach its time-to-run.
    DeadlineSoon,
    /// `JOB_TOO_BIG`: the body is larger than the server's `max-job-size`.
    JobTooBig,
    /// `DRAINING`: the server takes no new jobs.
    Draining,
    /// `BAD_FORMAT`: the command line was malformed.
    BadFormat,
    /// `UNKNOWN_COMMAND`.
    UnknownCommand,
    /// `OUT_OF_MEMORY`.
    OutOfMemory,
    /// `INTERNAL_ERROR`.
    InternalError,
    /// `EXPECTED_CRLF`: a put's body was not followed by CRLF.
    ExpectedCrlf,
}

/// Bytes that are not a beanstalkd reply. After one of these the stream's framing cannot be
/// trusted, so a client has to close the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// No CRLF within [`REPLY_LINE_BYTES_MAX`] bytes.
    LineTooLong,
    /// The line is not one of the protocol's replies (or its numbers do not parse).
    UnknownReply,
    /// A body's announced size is over [`BODY_BYTES_MAX`].
    BodyTooBig,
    /// The bytes after a body are not CRLF.
    MissingCrlf,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DecodeError::LineTooLong => "reply line has no end",
            DecodeError::UnknownReply => "not a beanstalkd reply",
            DecodeError::BodyTooBig => "reply body is larger than any server may send",
            DecodeError::MissingCrlf => "reply body is not followed by CRLF",
        })
    }
}

impl std::error::Error for DecodeError {}

/// The length of the first complete reply at the start of `buf`, or `None` if more bytes are
/// needed. It allocates nothing and looks at each byte of the line once; a body is skipped by
/// its announced length.
pub fn check(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    let Some(line_len) = find_crlf(buf)? else { return Ok(None) };
    let line = &buf[..line_len];
    let Some(size) = body_size(line)? else { return Ok(Some(line_len + 2)) };
    let total = line_len + 2 + size + 2;
    if buf.len() < total {
        return Ok(None);
    }
    if &buf[total - 2..total] != b"\r\n" {
        return Err(DecodeError::MissingCrlf);
    }
    Ok(Some(total))
}

/// Parses one complete reply, exactly as long as [`check`] said.
pub fn parse(frame: &[u8]) -> Result<Reply<'_>, DecodeError> {
    let line_len = find_crlf(frame)?.ok_or(DecodeError::UnknownReply)?;
    let line = &frame[..line_len];
    let after = &frame[line_len + 2..];
    // The body, if any, is what lies between the line's CRLF and the final CRLF; a reply
    // without one must end at its line.
    let size = body_size(line)?;
    if after.len() != size.map_or(0, |size| size + 2) {
        return Err(DecodeError::UnknownReply);
    }
    let body = || -> Result<&[u8], DecodeError> { Ok(&after[..size.ok_or(DecodeError::UnknownReply)?]) };
    let mut words = line.split(|&b| b == b' ');
    let word = words.next().unwrap_or_default();
    let first = words.next();
    let second = words.next();
    if words.next().is_some() {
        return Err(DecodeError::UnknownReply);
    }
    let reply = match (word, first, second) {
        (b"RESERVED", Some(id), Some(_)) => Reply::Reserved { id: number(id)?, body: body()? },
        (b"FOUND", Some(id), Some(_)) => Reply::Found { id: number(id)?, body: body()? },
        (b"OK", Some(_), None) => Reply::Ok(body()?),
        (b"INSERTED", Some(id), None) => Reply::Inserted(number(id)?),
        (b"BURIED", Some(id), None) => Reply::BuriedId(number(id)?),
        (b"USING", Some(tube), None) => Reply::Using(std::str::from_utf8(tube).map_err(|_| DecodeError::UnknownReply)?),
        (b"WATCHING", Some(count), None) => Reply::Watching(number(count)?),
        (b"KICKED", Some(count), None) => Reply::KickedCount(number(count)?),
        (b"CLEARED", Some(count), None) => Reply::Cleared(number(count)?),
        (word, None, None) => match word {
            b"BURIED" => Reply::Buried,
            b"DELETED" => Reply::Deleted,
            b"RELEASED" => Reply::Released,
            b"TOUCHED" => Reply::Touched,
            b"KICKED" => Reply::Kicked,
            b"PAUSED" => Reply::Paused,
            b"NOT_FOUND" => Reply::NotFound,
            b"NOT_IGNORED" => Reply::NotIgnored,
            b"TIMED_OUT" => Reply::TimedOut,
            b"DEADLINE_SOON" => Reply::DeadlineSoon,
            b"JOB_TOO_BIG" => Reply::JobTooBig,
            b"DRAINING" => Reply::Draining,
            b"BAD_FORMAT" => Reply::BadFormat,
            b"UNKNOWN_COMMAND" => Reply::UnknownCommand,
            b"OUT_OF_MEMORY" => Reply::OutOfMemory,
            b"INTERNAL_ERROR" => Reply::InternalError,
            b"EXPECTED_CRLF" => Reply::ExpectedCrlf,
            _ => return Err(DecodeError::UnknownReply),
        },
        _ => return Err(DecodeError::UnknownReply),
    };
    Ok(reply)
}

/// [`check`] then [`parse`]: the first reply in `buf` and its length, or `None` if it is
/// incomplete.
pub fn decode(buf: &[u8]) -> Result<Option<(Reply<'_>, usize)>, DecodeError> {
    match check(buf)? {
        Some(len) => Ok(Some((parse(&buf[..len])?, len))),
        None => Ok(None),
    }
}

/// The position of the first CRLF, or `None` if there is none yet; an error once the line is
/// longer than any reply line may be.
fn find_crlf(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    let searched = &buf[..buf.len().min(REPLY_LINE_BYTES_MAX + 2)];
    match searched.windows(2).position(|w| w == b"\r\n") {
        Some(at) => Ok(Some(at)),
        None if buf.len() >= REPLY_LINE_BYTES_MAX + 2 => Err(DecodeError::LineTooLong),
        None => Ok(None),
    }
}

/// The body size announced by a reply line, if the reply has a body (`RESERVED`, `FOUND`, `OK`:
/// the size is the line's last word).
fn body_size(line: &[u8]) -> Result<Option<usize>, DecodeError> {
    let framed = line.starts_with(b"RESERVED ") || line.starts_with(b"FOUND ") || line.starts_with(b"OK ");
    if !framed {
        return Ok(None);
    }
    let last = line.rsplit(|&b| b == b' ').next().unwrap_or_default();
    let size = number(last)?;
    if size > BODY_BYTES_MAX as u64 {
        return Err(DecodeError::BodyTooBig);
    }
    // BODY_BYTES_MAX fits in usize on every platform this builds for.
    Ok(Some(size as usize))
}

/// A decimal number as the server writes it: one or more ASCII digits, nothing else.
fn number(word: &[u8]) -> Result<u64, DecodeError> {
    if word.is_empty() || word.len() > 20 {
        return Err(DecodeError::UnknownReply);
    }
    let mut value: u64 = 0;
    for &b in word {
        if !b.is_ascii_digit() {
            return Err(DecodeError::UnknownReply);
        }
        value =
            value.checked_mul(10).and_then(|v| v.checked_add(u64::from(b - b'0'))).ok_or(DecodeError::UnknownReply)?;
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(bytes: &[u8]) -> Reply<'_> {
        let (reply, len) = decode(bytes).unwrap().unwrap();
        assert_eq!(len, bytes.len(), "{:?}", String::from_utf8_lossy(bytes));
        reply
    }

    #[test]
    fn every_command_encodes_as_the_protocol_spells_it() {
        let cases: &[(Command, &[u8])] = &[
            (Command::Put { pri: 1, delay: 2, ttr: 3, body: b"a\r\nb" }, b"put 1 2 3 4\r\na\r\nb\r\n"),
            (Command::Use("t"), b"use t\r\n"),
            (Command::Reserve, b"reserve\r\n"),
            (Command::ReserveWithTimeout(0), b"reserve-with-timeout 0\r\n"),
            (Command::ReserveJob(9), b"reserve-job 9\r\n"),
            (Command::Delete(u64::MAX), b"delete 18446744073709551615\r\n"),
            (Command::Release { id: 1, pri: 2, delay: 3 }, b"release 1 2 3\r\n"),
            (Command::Bury { id: 1, pri: 4294967295 }, b"bury 1 4294967295\r\n"),
            (Command::Touch(5), b"touch 5\r\n"),
            (Command::Watch("w"), b"watch w\r\n"),
            (Command::Ignore("i"), b"ignore i\r\n"),
            (Command::Peek(6), b"peek 6\r\n"),
            (Command::PeekReady, b"peek-ready\r\n"),
            (Command::PeekDelayed, b"peek-delayed\r\n"),
            (Command::PeekBuried, b"peek-buried\r\n"),
            (Command::Kick(10), b"kick 10\r\n"),
            (Command::KickJob(7), b"kick-job 7\r\n"),
            (Command::StatsJob(8), b"stats-job 8\r\n"),
            (Command::StatsTube("s"), b"stats-tube s\r\n"),
            (Command::Stats, b"stats\r\n"),
            (Command::ListTubes, b"list-tubes\r\n"),
            (Command::ListTubeUsed, b"list-tube-used\r\n"),
            (Command::ListTubesWatched, b"list-tubes-watched\r\n"),
            (Command::PauseTube("p", 30), b"pause-tube p 30\r\n"),
            (Command::Quit, b"quit\r\n"),
            (Command::ClearTube { tube: "c", states: "ready,buried" }, b"clear-tube c ready,buried\r\n"),
            (Command::ListJobs { tube: "l", state: "delayed", after: 12, count: 50 }, b"list-jobs l delayed 12 50\r\n"),
        ];
        let mut out = Vec::new();
        for (command, expected) in cases {
            out.clear();
            command.encode(&mut out);
            assert_eq!(out, *expected, "{command:?}");
        }
    }

    #[test]
    fn every_reply_decodes() {
        assert_eq!(one(b"INSERTED 12\r\n"), Reply::Inserted(12));
        assert_eq!(one(b"BURIED 3\r\n"), Reply::BuriedId(3));
        assert_eq!(one(b"BURIED\r\n"), Reply::Buried);
        assert_eq!(one(b"USING a-b\r\n"), Reply::Using("a-b"));
        assert_eq!(one(b"RESERVED 4 3\r\na\r\n\r\n"), Reply::Reserved { id: 4, body: b"a\r\n" });
        assert_eq!(one(b"FOUND 5 0\r\n\r\n"), Reply::Found { id: 5, body: b"" });
        assert_eq!(one(b"OK 4\r\n---\n\r\n"), Reply::Ok(b"---\n"));
        assert_eq!(one(b"DELETED\r\n"), Reply::Deleted);
        assert_eq!(one(b"RELEASED\r\n"), Reply::Released);
        assert_eq!(one(b"TOUCHED\r\n"), Reply::Touched);
        assert_eq!(one(b"WATCHING 2\r\n"), Reply::Watching(2));
        assert_eq!(one(b"KICKED 0\r\n"), Reply::KickedCount(0));
        assert_eq!(one(b"KICKED\r\n"), Reply::Kicked);
        assert_eq!(one(b"PAUSED\r\n"), Reply::Paused);
        assert_eq!(one(b"CLEARED 42\r\n"), Reply::Cleared(42));
        assert_eq!(one(b"NOT_FOUND\r\n"), Reply::NotFound);
        assert_eq!(one(b"NOT_IGNORED\r\n"), Reply::NotIgnored);
        assert_eq!(one(b"TIMED_OUT\r\n"), Reply::TimedOut);
        assert_eq!(one(b"DEADLINE_SOON\r\n"), Reply::DeadlineSoon);
        assert_eq!(one(b"JOB_TOO_BIG\r\n"), Reply::JobTooBig);
        assert_eq!(one(b"DRAINING\r\n"), Reply::Draining);
        assert_eq!(one(b"BAD_FORMAT\r\n"), Reply::BadFormat);
        assert_eq!(one(b"UNKNOWN_COMMAND\r\n"), Reply::UnknownCommand);
        assert_eq!(one(b"OUT_OF_MEMORY\r\n"), Reply::OutOfMemory);
        assert_eq!(one(b"INTERNAL_ERROR\r\n"), Reply::InternalError);
        assert_eq!(one(b"EXPECTED_CRLF\r\n"), Reply::ExpectedCrlf);
    }

    #[test]
    fn every_prefix_of_a_pipelined_stream_is_incomplete_or_a_whole_reply() {
        let stream: &[u8] = b"INSERTED 1\r\nRESERVED 1 4\r\nab\r\n\r\nOK 8\r\n---\n- a\n\r\nDELETED\r\n";
        let lengths = [12, 20, 16, 9];
        for cut in 0..=stream.len() {
            let mut at = 0;
            let mut seen = 0;
            while let Some(len) = check(&stream[at..cut]).unwrap() {
                assert_eq!(len, lengths[seen]);
                parse(&stream[at..at + len]).unwrap();
                at += len;
                seen += 1;
            }
            let whole: usize = lengths[..seen].iter().sum();
            assert_eq!(at, whole);
            assert!(seen == lengths.len() || cut < whole + lengths[seen], "cut {cut}");
        }
    }

    #[test]
    fn malformed_replies_are_errors() {
        assert_eq!(check(b"RESERVED 1 3\r\nabcXY"), Err(DecodeError::MissingCrlf));
        assert_eq!(check(b"OK 1073741825\r\n"), Err(DecodeError::BodyTooBig));
        assert_eq!(check(b"OK x\r\n"), Err(DecodeError::UnknownReply));
        assert_eq!(check(&[b'A'; REPLY_LINE_BYTES_MAX + 2]), Err(DecodeError::LineTooLong));
        assert_eq!(check(&[b'A'; REPLY_LINE_BYTES_MAX + 1]), Ok(None));
        for bad in [
            &b"HELLO\r\n"[..],
            b"INSERTED\r\n",
            b"INSERTED x\r\n",
            b"INSERTED 1 2\r\n",
            b"INSERTED -1\r\n",
            b"INSERTED 18446744073709551616\r\n",
            b"DELETED 1\r\n",
            b"CLEARED\r\n",
            b"\r\n",
            b"USING \xff\r\n",
        ] {
            assert_eq!(decode(bad), Err(DecodeError::UnknownReply), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small deterministic generator: every byte pattern the decoder could meet at a cut.
        let alphabet = b"RESERVED OK FOUND 0123456789\r\n X";
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let mut bytes = Vec::new();
            for _ in 0..(state % 40) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                bytes.push(alphabet[(state % alphabet.len() as u64) as usize]);
            }
            if let Ok(Some(len)) = check(&bytes) {
                assert!(len <= bytes.len());
                let _ = parse(&bytes[..len]);
            }
        }
    }
}
