//! Command-line parsing: one complete line (without its CRLF) in, one
//! [`Command`] or one error reply out.
//!
//! Recognition follows beanstalkd's prefix table exactly (spec §1.2): the
//! line is compared against a fixed list of prefixes *in order* and the
//! first match wins, so `quitter` quits, `pause-tubefoo 1` pauses `foo`,
//! `statsx` is BAD_FORMAT and `put` alone is UNKNOWN_COMMAND.
//!
//! This module never touches server state. A few checks that beanstalkd
//! makes only *after* it has counted a command (trailing garbage after a put
//! size, the validity of a pause-tube name) are reported as fields of the
//! parsed command, so the dispatcher can count first and reject second.
//!
//! Two commands are runnerbean's own, `clear-tube` and `list-jobs`
//! (docs/COMPAT.md, "Commands beanstalkd does not have"). Their prefixes
//! come after all of beanstalkd's and no line beanstalkd accepts starts with
//! them, so every line means what it means to beanstalkd; the session
//! answers them UNKNOWN_COMMAND again under `--strict`
//! ([`parse_with`] without extensions).

use super::number::{Position, read_kick_bound, read_reserve_timeout, read_u32, read_u64};
use crate::engine::{JobState, StateSet};

/// Longest tube name, in bytes.
pub const TUBE_NAME_BYTES_MAX: usize = 200;

/// A parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    Put {
        pri: u32,
        delay_s: u32,
        ttr_s: u32,
        size: u32,
        /// Bytes followed the size. beanstalkd checks this only after the
        /// JOB_TOO_BIG check, so it is not a parse error.
        trailing_garbage: bool,
    },
    Peek(u64),
    PeekReady,
    PeekDelayed,
    PeekBuried,
    Reserve,
    ReserveWithTimeout(u32),
    ReserveJob(u64),
    Delete(u64),
    Release {
        id: u64,
        pri: u32,
        delay_s: u32,
    },
    Bury {
        id: u64,
        pri: u32,
    },
    Kick(u32),
    KickJob(u64),
    Touch(u64),
    StatsJob(u64),
    StatsTube(&'a str),
    Stats,
    Use(&'a str),
    Watch(&'a str),
    Ignore(&'a str),
    ListTubesWatched,
    ListTubeUsed,
    ListTubes,
    Quit,
    PauseTube {
        /// The run of tube-name bytes found; `None` when it is not a valid
        /// tube name (too long, or starting with `-`). beanstalkd counts the
        /// command before it validates the name.
        name: Option<&'a str>,
        delay_s: u32,
    },
    /// `clear-tube <tube> <states>`: runnerbean's own.
    ClearTube {
        name: &'a str,
        states: StateSet,
    },
    /// `list-jobs <tube> <state> <after-id> <count>`: runnerbean's own.
    ListJobs {
        name: &'a str,
        state: JobState,
        after: u64,
        count: u32,
    },
}

/// A line that is not a command, with the reply it earns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    BadFormat,
    UnknownCommand,
}

/// Whether `b` may appear in a tube name.
pub fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'/' | b';' | b'.' | b'$' | b'_' | b'(' | b')')
}

/// A valid tube name: 1 to 200 name bytes, not starting with `-`.
pub fn valid_tube_name(name: &[u8]) -> Option<&str> {
    let ok = !name.is_empty()
        && name.len() <= TUBE_NAME_BYTES_MAX
        && name[0] != b'-'
        && name.iter().all(|&b| is_name_byte(b));
    // Name bytes are ASCII, so the conversion cannot fail once `ok` holds.
    if ok { std::str::from_utf8(name).ok() } else { None }
}

/// The kinds of command line, in the order beanstalkd tries their prefixes.
#[derive(Clone, Copy)]
enum Kind {
    Put,
    Peek,
    PeekReady,
    PeekDelayed,
    PeekBuried,
    ReserveWithTimeout,
    ReserveJob,
    Reserve,
    Delete,
    Release,
    Bury,
    Kick,
    KickJob,
    Touch,
    StatsJob,
    StatsTube,
    Stats,
    Use,
    Watch,
    Ignore,
    ListTubesWatched,
    ListTubeUsed,
    ListTubes,
    Quit,
    PauseTube,
    ClearTube,
    ListJobs,
}

/// beanstalkd's prefix table. The first prefix the line starts with wins,
/// so the order matters: `reserve-job ` before `reserve`, `stats-job `
/// before `stats`, `list-tubes-watched` before `list-tubes`. runnerbean's
/// own commands come last: no earlier prefix matches them, so their place
/// changes nothing for beanstalkd's.
const PREFIXES: [(&[u8], Kind); 27] = [
    (b"put ", Kind::Put),
    (b"peek ", Kind::Peek),
    (b"peek-ready", Kind::PeekReady),
    (b"peek-delayed", Kind::PeekDelayed),
    (b"peek-buried", Kind::PeekBuried),
    (b"reserve-with-timeout ", Kind::ReserveWithTimeout),
    (b"reserve-job ", Kind::ReserveJob),
    (b"reserve", Kind::Reserve),
    (b"delete ", Kind::Delete),
    (b"release ", Kind::Release),
    (b"bury ", Kind::Bury),
    (b"kick ", Kind::Kick),
    (b"kick-job ", Kind::KickJob),
    (b"touch ", Kind::Touch),
    (b"stats-job ", Kind::StatsJob),
    (b"stats-tube ", Kind::StatsTube),
    (b"stats", Kind::Stats),
    (b"use ", Kind::Use),
    (b"watch ", Kind::Watch),
    (b"ignore ", Kind::Ignore),
    (b"list-tubes-watched", Kind::ListTubesWatched),
    (b"list-tube-used", Kind::ListTubeUsed),
    (b"list-tubes", Kind::ListTubes),
    (b"quit", Kind::Quit),
    // No trailing space: `pause-tubefoo 1` pauses `foo`.
    (b"pause-tube", Kind::PauseTube),
    (b"clear-tube ", Kind::ClearTube),
    (b"list-jobs ", Kind::ListJobs),
];

/// How many of [`PREFIXES`] are beanstalkd's; runnerbean's own follow.
const BEANSTALKD_PREFIXES: usize = 25;

/// Parses one command line, runnerbean's own commands included. `line`
/// excludes the terminating CRLF.
pub fn parse(line: &[u8]) -> Result<Command<'_>, ParseError> {
    parse_with(line, true)
}

/// Parses one command line; without `extensions` (`--strict`) only
/// beanstalkd's commands are known, so any line starting with `clear-tube `
/// or `list-jobs `, well formed or not, is UNKNOWN_COMMAND, as beanstalkd
/// answers it.
pub fn parse_with(line: &[u8], extensions: bool) -> Result<Command<'_>, ParseError> {
    use Command as C;
    use ParseError::BadFormat;

    // beanstalkd NUL-terminates the line and compares strlen with the line
    // length, so any NUL byte makes the line malformed before recognition.
    if memchr::memchr(0, line).is_some() {
        return Err(BadFormat);
    }
    let table = if extensions { &PREFIXES[..] } else { &PREFIXES[..BEANSTALKD_PREFIXES] };
    let Some(&(prefix, kind)) = table.iter().find(|(prefix, _)| line.starts_with(prefix)) else {
        return Err(ParseError::UnknownCommand);
    };
    let args = &line[prefix.len()..];
    // Bare words take no arguments: anything after them is BAD_FORMAT.
    let bare = |command: Command<'static>| if args.is_empty() { Ok(command) } else { Err(BadFormat) };
    let id = || read_u64(args, Position::Last).map(|(id, _)| id).ok_or(BadFormat);
    let name = || valid_tube_name(args).ok_or(BadFormat);
    match kind {
        Kind::Put => parse_put(args),
        Kind::Peek => id().map(C::Peek),
        Kind::PeekReady => bare(C::PeekReady),
        Kind::PeekDelayed => bare(C::PeekDelayed),
        Kind::PeekBuried => bare(C::PeekBuried),
        Kind::ReserveWithTimeout => read_reserve_timeout(args).map(C::ReserveWithTimeout).ok_or(BadFormat),
        Kind::ReserveJob => id().map(C::ReserveJob),
        Kind::Reserve => bare(C::Reserve),
        Kind::Delete => id().map(C::Delete),
        Kind::Release => {
            let (id, rest) = read_u64(args, Position::Middle).ok_or(BadFormat)?;
            let (pri, rest) = read_u32(rest, Position::Middle).ok_or(BadFormat)?;
            let (delay_s, _) = read_u32(rest, Position::Last).ok_or(BadFormat)?;
            Ok(C::Release { id, pri, delay_s })
        }
        Kind::Bury => {
            let (id, rest) = read_u64(args, Position::Middle).ok_or(BadFormat)?;
            let (pri, _) = read_u32(rest, Position::Last).ok_or(BadFormat)?;
            Ok(C::Bury { id, pri })
        }
        Kind::Kick => read_kick_bound(args).map(C::Kick).ok_or(BadFormat),
        Kind::KickJob => id().map(C::KickJob),
        Kind::Touch => id().map(C::Touch),
        Kind::StatsJob => id().map(C::StatsJob),
        Kind::StatsTube => name().map(C::StatsTube),
        Kind::Stats => bare(C::Stats),
        Kind::Use => name().map(C::Use),
        Kind::Watch => name().map(C::Watch),
        Kind::Ignore => name().map(C::Ignore),
        Kind::ListTubesWatched => bare(C::ListTubesWatched),
        Kind::ListTubeUsed => bare(C::ListTubeUsed),
        Kind::ListTubes => bare(C::ListTubes),
        // Anything may follow "quit".
        Kind::Quit => Ok(C::Quit),
        Kind::PauseTube => parse_pause_tube(args),
        Kind::ClearTube => parse_clear_tube(args),
        Kind::ListJobs => parse_list_jobs(args),
    }
}

/// A word of `clear-tube` and `list-jobs` naming a job state; reserved jobs
/// are never cleared nor listed, so `reserved` is not one of them.
fn state_word(word: &[u8]) -> Option<JobState> {
    match word {
        b"ready" => Some(JobState::Ready),
        b"delayed" => Some(JobState::Delayed),
        b"buried" => Some(JobState::Buried),
        _ => None,
    }
}

/// The tube name of `clear-tube` and `list-jobs`: the bytes up to the next
/// space, a valid name as `use` takes it (no leading space), and the rest
/// after that space.
fn leading_name(args: &[u8]) -> Option<(&str, &[u8])> {
    let end = memchr::memchr(b' ', args)?;
    Some((valid_tube_name(&args[..end])?, &args[end + 1..]))
}

/// `clear-tube <tube> <states>`: the states are a comma list of `ready`,
/// `delayed` and `buried` (each at least once, in any order, repeats
/// allowed) that ends the line; anything else is BAD_FORMAT.
fn parse_clear_tube(args: &[u8]) -> Result<Command<'_>, ParseError> {
    let (name, list) = leading_name(args).ok_or(ParseError::BadFormat)?;
    let mut states = StateSet::default();
    for word in list.split(|&b| b == b',') {
        states = states.with(state_word(word).ok_or(ParseError::BadFormat)?);
    }
    Ok(Command::ClearTube { name, states })
}

/// `list-jobs <tube> <state> <after-id> <count>`: the state is one word
/// followed by a space, and the two numbers are read as `release` reads
/// its own (the strict reader: spaces may precede each, the count ends the
/// line).
fn parse_list_jobs(args: &[u8]) -> Result<Command<'_>, ParseError> {
    let bad = ParseError::BadFormat;
    let (name, rest) = leading_name(args).ok_or(bad)?;
    let end = memchr::memchr(b' ', rest).ok_or(bad)?;
    let state = state_word(&rest[..end]).ok_or(bad)?;
    let (after, rest) = read_u64(&rest[end..], Position::Middle).ok_or(bad)?;
    let (count, _) = read_u32(rest, Position::Last).ok_or(bad)?;
    Ok(Command::ListJobs { name, state, after, count })
}

fn parse_put(args: &[u8]) -> Result<Command<'_>, ParseError> {
    let bad = ParseError::BadFormat;
    let (pri, rest) = read_u32(args, Position::Middle).ok_or(bad)?;
    let (delay_s, rest) = read_u32(rest, Position::Middle).ok_or(bad)?;
    let (ttr_s, rest) = read_u32(rest, Position::Middle).ok_or(bad)?;
    let (size, rest) = read_u32(rest, Position::Middle).ok_or(bad)?;
    Ok(Command::Put { pri, delay_s, ttr_s, size, trailing_garbage: !rest.is_empty() })
}

/// `pause-tube` has no space in its prefix: leading spaces are skipped, the
/// name is the longest run of name bytes, and the delay must end the line.
fn parse_pause_tube(args: &[u8]) -> Result<Command<'_>, ParseError> {
    let start = args.iter().position(|&b| b != b' ').unwrap_or(args.len());
    let args = &args[start..];
    let name_len = args.iter().take_while(|&&b| is_name_byte(b)).count();
    if name_len == 0 {
        return Err(ParseError::BadFormat);
    }
    let (delay_s, _) = read_u32(&args[name_len..], Position::Last).ok_or(ParseError::BadFormat)?;
    Ok(Command::PauseTube { name: valid_tube_name(&args[..name_len]), delay_s })
}

#[cfg(test)]
mod tests {
    use super::Command as C;
    use super::ParseError::{BadFormat, UnknownCommand};
    use super::*;

    fn p(s: &str) -> Result<Command<'_>, ParseError> {
        parse(s.as_bytes())
    }

    #[test]
    fn prefix_table_quirks() {
        assert_eq!(p("quit"), Ok(C::Quit));
        assert_eq!(p("quitter"), Ok(C::Quit));
        assert_eq!(p("quit "), Ok(C::Quit));
        assert_eq!(p("pause-tubedefault 0"), Ok(C::PauseTube { name: Some("default"), delay_s: 0 }));
        for bad in [
            "statsx",
            "stats-job",
            "stats-tube",
            "reservex",
            "reserve ",
            "reserve x",
            "reserve-job",
            "reserve-with-timeout",
            "list-tubesx",
            "list-tube-usedx",
            "list-tubes-watchedx",
            "peek-readyx",
            "peek-ready ",
            "peek-delayed ",
            "peek-buriedx",
        ] {
            assert_eq!(p(bad), Err(BadFormat), "{bad:?}");
        }
        for unknown in [
            "",
            " ",
            "put",
            "peek",
            "delete",
            "kick",
            "kick-job",
            "touch",
            "use",
            "watch",
            "ignore",
            "usefoo",
            "watchfoo",
            "peekx 1",
            "deletex 1",
            "PUT 0 0 0 1",
            "bogus",
        ] {
            assert_eq!(p(unknown), Err(UnknownCommand), "{unknown:?}");
        }
    }

    #[test]
    fn put_line() {
        assert_eq!(p("put 0 0 10 3"), Ok(C::Put { pri: 0, delay_s: 0, ttr_s: 10, size: 3, trailing_garbage: false }));
        assert_eq!(
            p("put  0  0  10  3"),
            Ok(C::Put { pri: 0, delay_s: 0, ttr_s: 10, size: 3, trailing_garbage: false })
        );
        assert_eq!(
            p("put 0 0 0 70000 garbage"),
            Ok(C::Put { pri: 0, delay_s: 0, ttr_s: 0, size: 70000, trailing_garbage: true })
        );
        assert_eq!(
            p("put 0 0 10 3\nabc"),
            Ok(C::Put { pri: 0, delay_s: 0, ttr_s: 10, size: 3, trailing_garbage: true })
        );
        for bad in ["put ", "put 0 0 10", "put +1 0 10 3", "put 0\t0 10 3", "put 0 4294967296 10 0", "put 0 0 0 0x10"] {
            assert!(matches!(p(bad), Ok(C::Put { trailing_garbage: true, .. }) | Err(BadFormat)), "{bad:?}");
        }
        assert_eq!(p("put 0 0 0 0x10"), Ok(C::Put { pri: 0, delay_s: 0, ttr_s: 0, size: 0, trailing_garbage: true }));
        assert_eq!(p("put 0 4294967296 10 0"), Err(BadFormat));
        assert_eq!(
            p("put 4294967295 4294967295 4294967295 0"),
            Ok(C::Put { pri: u32::MAX, delay_s: u32::MAX, ttr_s: u32::MAX, size: 0, trailing_garbage: false })
        );
    }

    #[test]
    fn nul_byte_is_bad_format() {
        assert_eq!(parse(b"peek\x001"), Err(BadFormat));
        assert_eq!(parse(b"bogus\x00"), Err(BadFormat));
    }

    #[test]
    fn tube_names() {
        assert_eq!(p("use foo-"), Ok(C::Use("foo-")));
        assert_eq!(p("use a+b/c;d.e$f_g(h)"), Ok(C::Use("a+b/c;d.e$f_g(h)")));
        assert_eq!(p("use ("), Ok(C::Use("(")));
        assert_eq!(p("use 123"), Ok(C::Use("123")));
        let long = "a".repeat(200);
        assert_eq!(parse(format!("use {long}").as_bytes()), Ok(C::Use(&long)));
        assert_eq!(parse(format!("use {long}a").as_bytes()), Err(BadFormat));
        for bad in [
            "use  foo",
            "use foo ",
            "use -foo",
            "use \u{e9}",
            "use a\rb",
            "watch ",
            "ignore a\tb",
            "stats-tube default ",
        ] {
            assert_eq!(p(bad), Err(BadFormat), "{bad:?}");
        }
    }

    #[test]
    fn pause_tube() {
        assert_eq!(p("pause-tube  default  0"), Ok(C::PauseTube { name: Some("default"), delay_s: 0 }));
        assert_eq!(p("pause-tube -x 0"), Ok(C::PauseTube { name: None, delay_s: 0 }));
        for bad in [
            "pause-tube default",
            "pause-tube default 0 ",
            "pause-tube default 4294967296",
            "pause-tube",
            "pause-tube  ",
        ] {
            assert_eq!(p(bad), Err(BadFormat), "{bad:?}");
        }
        let long = "b".repeat(200);
        let line = format!("pause-tube {long} 4294967295");
        assert_eq!(line.len() + 2, 224);
        assert_eq!(parse(line.as_bytes()), Ok(C::PauseTube { name: Some(&long), delay_s: u32::MAX }));
    }

    #[test]
    fn clear_tube() {
        let all = StateSet::default().with(JobState::Ready).with(JobState::Delayed).with(JobState::Buried);
        assert_eq!(p("clear-tube default ready,delayed,buried"), Ok(C::ClearTube { name: "default", states: all }));
        assert_eq!(p("clear-tube a buried,ready,buried,delayed"), Ok(C::ClearTube { name: "a", states: all }));
        let buried = StateSet::default().with(JobState::Buried);
        assert_eq!(p("clear-tube x(1) buried"), Ok(C::ClearTube { name: "x(1)", states: buried }));
        assert_eq!(p("clear-tube"), Err(UnknownCommand));
        assert_eq!(p("clear-tubes a ready"), Err(UnknownCommand));
        for bad in [
            "clear-tube ",
            "clear-tube a",
            "clear-tube a ",
            "clear-tube  a ready",
            "clear-tube a  ready",
            "clear-tube a ready ",
            "clear-tube a ready,",
            "clear-tube a ,ready",
            "clear-tube a ready,,buried",
            "clear-tube a ready, buried",
            "clear-tube a reserved",
            "clear-tube a READY",
            "clear-tube -a ready",
            "clear-tube a\tb ready",
        ] {
            assert_eq!(p(bad), Err(BadFormat), "{bad:?}");
        }
        let long = "c".repeat(200);
        assert_eq!(
            parse(format!("clear-tube {long} ready,delayed,buried").as_bytes()),
            Ok(C::ClearTube { name: &long, states: all })
        );
        assert_eq!(parse(format!("clear-tube {long}c ready").as_bytes()), Err(BadFormat));
    }

    #[test]
    fn without_extensions_runnerbean_s_own_commands_are_unknown() {
        for line in ["clear-tube a ready", "clear-tube a", "clear-tube ", "list-jobs a ready 0 1", "list-jobs x"] {
            assert_eq!(parse_with(line.as_bytes(), false), Err(UnknownCommand), "{line:?}");
            assert_ne!(parse_with(line.as_bytes(), true), Err(UnknownCommand), "{line:?}");
        }
        for line in ["stats", "use a", "pause-tube a 1", "list-tubes", "bogus", "stats-tube -a"] {
            assert_eq!(parse_with(line.as_bytes(), false), parse(line.as_bytes()), "{line:?}");
        }
        assert_eq!(BEANSTALKD_PREFIXES, PREFIXES.iter().take_while(|(_, k)| !matches!(k, Kind::ClearTube)).count());
    }

    #[test]
    fn list_jobs() {
        let ready = |after, count| Ok(C::ListJobs { name: "default", state: JobState::Ready, after, count });
        assert_eq!(p("list-jobs default ready 0 10"), ready(0, 10));
        assert_eq!(p("list-jobs default ready  07   10"), ready(7, 10));
        assert_eq!(p("list-jobs default ready 18446744073709551615 4294967295"), ready(u64::MAX, u32::MAX));
        assert_eq!(
            p("list-jobs t delayed 5 0"),
            Ok(C::ListJobs { name: "t", state: JobState::Delayed, after: 5, count: 0 })
        );
        assert_eq!(
            p("list-jobs t buried 1 2"),
            Ok(C::ListJobs { name: "t", state: JobState::Buried, after: 1, count: 2 })
        );
        assert_eq!(p("list-jobs"), Err(UnknownCommand));
        for bad in [
            "list-jobs ",
            "list-jobs default",
            "list-jobs default ready",
            "list-jobs default ready ",
            "list-jobs default ready 0",
            "list-jobs default ready 0 ",
            "list-jobs default ready 0 10 ",
            "list-jobs default ready 0 10x",
            "list-jobs default ready -1 10",
            "list-jobs default ready 0 4294967296",
            "list-jobs default ready 18446744073709551616 1",
            "list-jobs default reserved 0 10",
            "list-jobs default ready,buried 0 10",
            "list-jobs  default ready 0 10",
            "list-jobs default  ready 0 10",
            "list-jobs -x ready 0 10",
        ] {
            assert_eq!(p(bad), Err(BadFormat), "{bad:?}");
        }
    }

    #[test]
    fn id_commands() {
        assert_eq!(p("peek 01"), Ok(C::Peek(1)));
        assert_eq!(p("peek 18446744073709551615"), Ok(C::Peek(u64::MAX)));
        assert_eq!(p("peek 18446744073709551616"), Err(BadFormat));
        assert_eq!(p("touch a111"), Err(BadFormat));
        assert_eq!(p("touch 111a"), Err(BadFormat));
        assert_eq!(p("bury 1"), Err(BadFormat));
        assert_eq!(p("bury 1 1 "), Err(BadFormat));
        assert_eq!(p("bury 1 4294967296"), Err(BadFormat));
        assert_eq!(p("release 1 1"), Err(BadFormat));
        assert_eq!(p("release 1 1 1 1"), Err(BadFormat));
        assert_eq!(p("release 1 2 3"), Ok(C::Release { id: 1, pri: 2, delay_s: 3 }));
        assert_eq!(p("stats-job 1 "), Err(BadFormat));
        assert_eq!(p("kick 1abc"), Ok(C::Kick(1)));
        assert_eq!(p("kick "), Err(BadFormat));
        assert_eq!(p("reserve-with-timeout 1x"), Ok(C::ReserveWithTimeout(1)));
        assert_eq!(p("reserve-with-timeout -1"), Err(BadFormat));
    }
}
