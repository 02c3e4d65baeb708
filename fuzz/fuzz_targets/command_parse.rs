//! Fuzz target: the command-line parser, `runnerbean::protocol::command::parse`.
//!
//! The input is one command line without its CRLF. Besides "never panics",
//! every line is checked against a model of spec §1.2 and §1.3 written here
//! a second time, in a different shape (string splitting and `str::parse`
//! instead of byte readers), so that a change to the parser that moves away
//! from the spec is caught:
//!
//! * the prefix table: the first matching prefix decides the command, no
//!   match is UNKNOWN_COMMAND, a NUL anywhere is BAD_FORMAT;
//! * the strict number reader's bounds (u64 ids, u32 everything else,
//!   `i32::MAX` for `reserve-with-timeout`), checked with `str::parse`;
//! * the `kick` bound, checked against the C library's own `strtoul`, which
//!   is what beanstalkd calls;
//! * tube names;
//! * runnerbean's own `clear-tube` and `list-jobs`, and without them
//!   (`parse_with(line, false)`, what `--strict` runs) the same line is
//!   what beanstalkd's table alone makes of it;
//! * a parsed command, written back out as a line, parses to the same
//!   command.

#![no_main]

use libfuzzer_sys::fuzz_target;
use runnerbean::engine::{JobState, StateSet};
use runnerbean::protocol::command::{Command, ParseError, parse, parse_with};

fuzz_target!(|line: &[u8]| {
    let parsed = parse(line);
    let expected = model(line, true);
    assert_eq!(parsed, expected, "line {:?}", String::from_utf8_lossy(line));
    let strict = parse_with(line, false);
    assert_eq!(strict, model(line, false), "strict, line {:?}", String::from_utf8_lossy(line));
    if let Ok(command) = parsed {
        let encoded = encode(&command);
        assert_eq!(parse(&encoded), Ok(command.clone()), "re-encoded as {:?}", String::from_utf8_lossy(&encoded));
    }
});

/// The prefix table of spec §1.2, in its order, then runnerbean's own two.
const PREFIXES: [&str; 27] = [
    "put ",
    "peek ",
    "peek-ready",
    "peek-delayed",
    "peek-buried",
    "reserve-with-timeout ",
    "reserve-job ",
    "reserve",
    "delete ",
    "release ",
    "bury ",
    "kick ",
    "kick-job ",
    "touch ",
    "stats-job ",
    "stats-tube ",
    "stats",
    "use ",
    "watch ",
    "ignore ",
    "list-tubes-watched",
    "list-tube-used",
    "list-tubes",
    "quit",
    "pause-tube",
    "clear-tube ",
    "list-jobs ",
];

/// How many of `PREFIXES` are beanstalkd's.
const BEANSTALKD_PREFIXES: usize = 25;

/// The states `clear-tube` and `list-jobs` name, by their words.
fn state_word(word: &str) -> Option<JobState> {
    [("ready", JobState::Ready), ("delayed", JobState::Delayed), ("buried", JobState::Buried)]
        .into_iter()
        .find_map(|(w, s)| (w == word).then_some(s))
}

/// What the spec says `line` is, with or without runnerbean's own commands.
fn model(line: &[u8], extensions: bool) -> Result<Command<'_>, ParseError> {
    use Command as C;
    use ParseError::{BadFormat, UnknownCommand};
    if line.contains(&0) {
        return Err(BadFormat);
    }
    let table = if extensions { &PREFIXES[..] } else { &PREFIXES[..BEANSTALKD_PREFIXES] };
    let Some(prefix) = table.iter().find(|p| line.starts_with(p.as_bytes())) else {
        return Err(UnknownCommand);
    };
    let args = &line[prefix.len()..];
    let exact = |command: Command<'static>| if args.is_empty() { Ok(command) } else { Err(BadFormat) };
    let id = || last_number::<u64>(args).ok_or(BadFormat);
    let name = || tube_name(args).ok_or(BadFormat);
    match *prefix {
        "put " => {
            let (numbers, rest) = numbers::<4>(args).ok_or(BadFormat)?;
            let [pri, delay_s, ttr_s, size] = numbers;
            Ok(C::Put { pri, delay_s, ttr_s, size, trailing_garbage: !rest.is_empty() })
        }
        "peek " => id().map(C::Peek),
        "peek-ready" => exact(C::PeekReady),
        "peek-delayed" => exact(C::PeekDelayed),
        "peek-buried" => exact(C::PeekBuried),
        "reserve-with-timeout " => {
            // The 1.13 reader: strict, without the end-of-line check.
            let (digits, _) = strict_digits(args).ok_or(BadFormat)?;
            let seconds: u32 = digits.parse().map_err(|_| BadFormat)?;
            if seconds > i32::MAX as u32 { Err(BadFormat) } else { Ok(C::ReserveWithTimeout(seconds)) }
        }
        "reserve-job " => id().map(C::ReserveJob),
        "reserve" => exact(C::Reserve),
        "delete " => id().map(C::Delete),
        "release " => {
            let (id, rest) = middle_number::<u64>(args).ok_or(BadFormat)?;
            let ([pri], rest) = numbers::<1>(rest).ok_or(BadFormat)?;
            let delay_s = last_number::<u32>(rest).ok_or(BadFormat)?;
            Ok(C::Release { id, pri, delay_s })
        }
        "bury " => {
            let (id, rest) = middle_number::<u64>(args).ok_or(BadFormat)?;
            let pri = last_number::<u32>(rest).ok_or(BadFormat)?;
            Ok(C::Bury { id, pri })
        }
        "kick " => strtoul_bound(args).map(C::Kick).ok_or(BadFormat),
        "kick-job " => id().map(C::KickJob),
        "touch " => id().map(C::Touch),
        "stats-job " => id().map(C::StatsJob),
        "stats-tube " => name().map(C::StatsTube),
        "stats" => exact(C::Stats),
        "use " => name().map(C::Use),
        "watch " => name().map(C::Watch),
        "ignore " => name().map(C::Ignore),
        "list-tubes-watched" => exact(C::ListTubesWatched),
        "list-tube-used" => exact(C::ListTubeUsed),
        "list-tubes" => exact(C::ListTubes),
        "quit" => Ok(C::Quit),
        "pause-tube" => {
            let args = trim_spaces(args);
            let run = args.iter().take_while(|&&b| is_name_byte(b)).count();
            if run == 0 {
                return Err(BadFormat);
            }
            let delay_s = last_number::<u32>(&args[run..]).ok_or(BadFormat)?;
            Ok(C::PauseTube { name: tube_name(&args[..run]), delay_s })
        }
        "clear-tube " => {
            // Text from here on: a tube name and state words are ASCII.
            let text = std::str::from_utf8(args).map_err(|_| BadFormat)?;
            let (name, list) = text.split_once(' ').ok_or(BadFormat)?;
            let name = tube_name(name.as_bytes()).ok_or(BadFormat)?;
            let states =
                list.split(',').try_fold(StateSet::default(), |set, word| state_word(word).map(|s| set.with(s)));
            Ok(C::ClearTube { name, states: states.ok_or(BadFormat)? })
        }
        "list-jobs " => {
            let space = args.iter().position(|&b| b == b' ').ok_or(BadFormat)?;
            let name = tube_name(&args[..space]).ok_or(BadFormat)?;
            let rest = &args[space + 1..];
            let space = rest.iter().position(|&b| b == b' ').ok_or(BadFormat)?;
            let word = std::str::from_utf8(&rest[..space]).map_err(|_| BadFormat)?;
            let state = state_word(word).ok_or(BadFormat)?;
            let (after, rest) = middle_number::<u64>(&rest[space..]).ok_or(BadFormat)?;
            let count = last_number::<u32>(rest).ok_or(BadFormat)?;
            Ok(C::ListJobs { name, state, after, count })
        }
        other => unreachable!("prefix {other:?} has no rule"),
    }
}

fn trim_spaces(s: &[u8]) -> &[u8] {
    let spaces = s.iter().take_while(|&&b| b == b' ').count();
    &s[spaces..]
}

/// Spaces (0x20 only), then a non-empty run of decimal digits: the digits
/// and what follows them.
fn strict_digits(s: &[u8]) -> Option<(&str, &[u8])> {
    let s = trim_spaces(s);
    let count = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if count == 0 {
        return None;
    }
    let digits = std::str::from_utf8(&s[..count]).expect("digits are ASCII");
    Some((digits, &s[count..]))
}

/// A strict number followed by more arguments. `str::parse` rejects a
/// value out of range, which the spec makes BAD_FORMAT.
fn middle_number<T: std::str::FromStr>(s: &[u8]) -> Option<(T, &[u8])> {
    let (digits, rest) = strict_digits(s)?;
    Some((digits.parse().ok()?, rest))
}

/// A strict number that must end the line.
fn last_number<T: std::str::FromStr>(s: &[u8]) -> Option<T> {
    match middle_number(s)? {
        (n, []) => Some(n),
        _ => None,
    }
}

/// `N` strict u32 numbers in a row, and what follows the last one.
fn numbers<const N: usize>(mut s: &[u8]) -> Option<([u32; N], &[u8])> {
    let mut out = [0; N];
    for slot in &mut out {
        let (n, rest) = middle_number::<u32>(s)?;
        *slot = n;
        s = rest;
    }
    Some((out, s))
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-+/;.$_()".contains(&b)
}

/// A valid tube name: 1 to 200 name bytes, not starting with `-`.
fn tube_name(s: &[u8]) -> Option<&str> {
    let ok = (1..=200).contains(&s.len()) && s[0] != b'-' && s.iter().all(|&b| is_name_byte(b));
    ok.then(|| std::str::from_utf8(s).expect("name bytes are ASCII"))
}

/// beanstalkd's `kick` bound: the C library's `strtoul(args, &end, 10)`,
/// BAD_FORMAT when nothing was consumed or errno was set, then truncated to
/// an `unsigned int`. `args` holds no NUL (checked before).
fn strtoul_bound(args: &[u8]) -> Option<u32> {
    let mut c_string = args.to_vec();
    c_string.push(0);
    let start = c_string.as_ptr().cast::<libc::c_char>();
    let mut end = start.cast_mut();
    // Safety: `c_string` is NUL-terminated and outlives the call; errno is
    // this thread's.
    let (value, errno) = unsafe {
        *libc::__errno_location() = 0;
        let value = libc::strtoul(start, &mut end, 10);
        (value, *libc::__errno_location())
    };
    if std::ptr::eq(end.cast_const(), start) || errno != 0 {
        return None;
    }
    Some(value as u32)
}

/// The command written out as a line a client would send.
fn encode(command: &Command<'_>) -> Vec<u8> {
    use Command as C;
    let line = match command {
        C::Put { pri, delay_s, ttr_s, size, trailing_garbage } => {
            let garbage = if *trailing_garbage { " x" } else { "" };
            format!("put {pri} {delay_s} {ttr_s} {size}{garbage}")
        }
        C::Peek(id) => format!("peek {id}"),
        C::PeekReady => "peek-ready".into(),
        C::PeekDelayed => "peek-delayed".into(),
        C::PeekBuried => "peek-buried".into(),
        C::Reserve => "reserve".into(),
        C::ReserveWithTimeout(s) => format!("reserve-with-timeout {s}"),
        C::ReserveJob(id) => format!("reserve-job {id}"),
        C::Delete(id) => format!("delete {id}"),
        C::Release { id, pri, delay_s } => format!("release {id} {pri} {delay_s}"),
        C::Bury { id, pri } => format!("bury {id} {pri}"),
        C::Kick(bound) => format!("kick {bound}"),
        C::KickJob(id) => format!("kick-job {id}"),
        C::Touch(id) => format!("touch {id}"),
        C::StatsJob(id) => format!("stats-job {id}"),
        C::StatsTube(name) => format!("stats-tube {name}"),
        C::Stats => "stats".into(),
        C::Use(name) => format!("use {name}"),
        C::Watch(name) => format!("watch {name}"),
        C::Ignore(name) => format!("ignore {name}"),
        C::ListTubesWatched => "list-tubes-watched".into(),
        C::ListTubeUsed => "list-tube-used".into(),
        C::ListTubes => "list-tubes".into(),
        C::Quit => "quit".into(),
        // "-" is a run of name bytes that is not a valid name.
        C::PauseTube { name, delay_s } => format!("pause-tube {} {delay_s}", name.unwrap_or("-")),
        C::ClearTube { name, states } => {
            let words = [("ready", JobState::Ready), ("delayed", JobState::Delayed), ("buried", JobState::Buried)];
            let list: Vec<&str> = words.iter().filter(|(_, s)| states.contains(*s)).map(|(w, _)| *w).collect();
            format!("clear-tube {name} {}", list.join(","))
        }
        C::ListJobs { name, state, after, count } => format!("list-jobs {name} {} {after} {count}", state.name()),
    };
    line.into_bytes()
}
