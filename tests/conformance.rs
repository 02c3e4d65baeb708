//! Differential conformance tests: runnerbean against recorded C beanstalkd transcripts.
//!
//! The corpus lives in `tests/corpus/`: each `*.bs` file is a byte script (format in
//! `tests/corpus/README.md`), and `tests/corpus/golden/<name>.golden` holds the bytes C
//! beanstalkd sent for each of the script's receive steps. Three modes share one runner:
//!
//! * **replay** (`cargo test`): every script runs against a fresh runnerbean, once with the
//!   default I/O back end and once with `RUNNERBEAN_IO=epoll`, and each receive step is
//!   compared with the golden bytes (or with the step's divergence override). No C server is
//!   needed.
//! * **live**: when `beanstalkd` is on `PATH`, every script runs against C beanstalkd and
//!   runnerbean at the same time; C must still match the golden, and runnerbean must match C
//!   (or the override). Without `beanstalkd` the test passes with a note, unless
//!   `RUNNERBEAN_REQUIRE_LIVE=1`, which turns the missing server into a failure.
//! * **record** (ignored test, run by `scripts/record-golden`): every script runs twice
//!   against C beanstalkd; if both runs agree after normalisation, the first is written as
//!   the golden file (an existing golden that only differs in normalised fields is kept).
//!
//! Invariants: every server is started by this file on 127.0.0.1 with `-p 0`, is owned by a
//! [`Server`] guard and is killed when the guard drops (also when a comparison panics); no
//! traffic leaves loopback. Comparisons see bytes only after [`normalise`], which is the single
//! place where replies are allowed to differ (README lists every rule). A run never waits for
//! a reply by guessing from quiet periods: a receive step names how many replies it expects.
//!
//! Environment: `RUNNERBEAN_CORPUS_FILTER=substr` limits every mode to scripts whose name
//! contains `substr`; `RUNNERBEAN_CONFORMANCE_THREADS=n` sets the number of scripts run at
//! once (default 8).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long a receive step waits for its replies (or an `eof` step for the close).
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a server may take to print its `bind` line.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between attempts to connect to a server that is still starting.
const CONNECT_RETRY_PAUSE: Duration = Duration::from_millis(5);
/// Default and largest length of a `quiet` step.
const QUIET_MS_DEFAULT: u64 = 200;
const QUIET_MS_MAX: u64 = 500;
/// After the last step, how long every open connection is watched for unexpected bytes.
const FINAL_QUIET_MS: u64 = 100;
/// Largest `sleep` step; beanstalkd's timers are whole seconds, so 2.5 s covers every case.
const SLEEP_MS_MAX: u64 = 3000;
/// Largest repetition count in `{TEXT*N}`.
const REPEAT_COUNT_MAX: usize = 16 * 1024 * 1024;
/// Runs of at least this many equal bytes are written as `{c*N}` in goldens and messages.
const RUN_BYTES_MIN: usize = 16;
/// Scripts run at the same time unless `RUNNERBEAN_CONFORMANCE_THREADS` says otherwise.
const THREADS_DEFAULT: usize = 8;
/// The live run's scripts at the same time, per CPU. A script's steps between connections
/// rely on quiet windows of 100 ms, and a server of four cores takes a command through two or
/// three threads: with eight scripts at a time on two CPUs, each against three servers (C,
/// runnerbean and runnerbean with four cores), a window was missed in one run of five; with
/// four, in none of many.
const LIVE_THREADS_PER_CPU: usize = 2;
/// Lines of server log shown with a failure.
const LOG_LINES_SHOWN: usize = 20;

/// The name of the connection that every script starts with, already open.
const FIRST_CONNECTION: &str = "a";

// ----------------------------------------------------------------------------------------
// Escaped byte text: the one notation used by scripts, goldens and failure messages.
// ----------------------------------------------------------------------------------------

/// Decodes escaped text: `\r \n \t \\ \xHH \{ \} \*` and `{TEXT*N}` (TEXT repeated N times).
/// Every other byte stands for itself.
fn unescape(text: &str) -> Result<Vec<u8>, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'{' {
            let mut unit = Vec::new();
            i += 1;
            loop {
                match bytes.get(i) {
                    None => return Err("unterminated `{TEXT*N}` group".into()),
                    Some(b'*') => break,
                    Some(b'{') => return Err("`{` inside a `{TEXT*N}` group".into()),
                    Some(_) => i = unescape_one(bytes, i, &mut unit)?,
                }
            }
            let digits_start = i + 1;
            let close = bytes[digits_start..].iter().position(|&b| b == b'}').ok_or("`{TEXT*N}` group without `}`")?
                + digits_start;
            let count: usize = text[digits_start..close]
                .parse()
                .map_err(|_| format!("bad repeat count `{}`", &text[digits_start..close]))?;
            if unit.is_empty() || count > REPEAT_COUNT_MAX {
                return Err("repeat group must be non-empty and at most 16 MiB".into());
            }
            for _ in 0..count {
                out.extend_from_slice(&unit);
            }
            i = close + 1;
        } else {
            i = unescape_one(bytes, i, &mut out)?;
        }
    }
    Ok(out)
}

/// Decodes the byte or escape at `bytes[i]` into `out` and returns the next index.
fn unescape_one(bytes: &[u8], i: usize, out: &mut Vec<u8>) -> Result<usize, String> {
    if bytes[i] != b'\\' {
        out.push(bytes[i]);
        return Ok(i + 1);
    }
    let code = *bytes.get(i + 1).ok_or("`\\` at the end of the text")?;
    let decoded = match code {
        b'r' => b'\r',
        b'n' => b'\n',
        b't' => b'\t',
        b'\\' | b'{' | b'}' | b'*' => code,
        b'x' => {
            let hex = bytes.get(i + 2..i + 4).ok_or("`\\x` needs two hex digits")?;
            let hex = std::str::from_utf8(hex).map_err(|_| "bad `\\x` escape")?;
            let value = u8::from_str_radix(hex, 16).map_err(|_| format!("bad `\\x{hex}`"))?;
            out.push(value);
            return Ok(i + 4);
        }
        other => return Err(format!("unknown escape `\\{}`", other as char)),
    };
    out.push(decoded);
    Ok(i + 2)
}

/// Encodes bytes in the notation `unescape` reads, compressing long runs of one byte.
/// The result is one line (no raw CR or LF) and never ends in a space.
fn escape(bytes: &[u8]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < bytes.len() {
        let run = bytes[i..].iter().take_while(|&&b| b == bytes[i]).count();
        if run >= RUN_BYTES_MIN {
            out.push('{');
            escape_byte(bytes[i], true, &mut out);
            let _ = write!(out, "*{run}}}");
            i += run;
        } else {
            escape_byte(bytes[i], false, &mut out);
            i += 1;
        }
    }
    if out.ends_with(' ') {
        out.pop();
        out.push_str("\\x20");
    }
    out
}

fn escape_byte(byte: u8, in_group: bool, out: &mut String) {
    match byte {
        b'\r' => out.push_str("\\r"),
        b'\n' => out.push_str("\\n"),
        b'\t' => out.push_str("\\t"),
        b'\\' => out.push_str("\\\\"),
        b'{' => out.push_str("\\{"),
        b'}' | b'*' if in_group => {
            out.push('\\');
            out.push(byte as char);
        }
        0x20..=0x7e => out.push(byte as char),
        _ => {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
}

// ----------------------------------------------------------------------------------------
// Replies: framing and normalisation.
// ----------------------------------------------------------------------------------------

/// Reply words whose line ends with a byte count followed by that many bytes and CRLF.
const DATA_REPLY_WORDS: [&[u8]; 3] = [b"RESERVED", b"FOUND", b"OK"];

/// Length of the first complete reply in `bytes`, or `None` if it is not complete yet.
fn reply_len(bytes: &[u8]) -> Option<usize> {
    let line_end = bytes.windows(2).position(|w| w == b"\r\n")? + 2;
    let line = &bytes[..line_end - 2];
    let word = line.split(|&b| b == b' ').next().unwrap_or_default();
    if !DATA_REPLY_WORDS.contains(&word) {
        return Some(line_end);
    }
    let count = line
        .rsplit(|&b| b == b' ')
        .next()
        .and_then(|n| std::str::from_utf8(n).ok())
        .and_then(|n| n.parse::<usize>().ok());
    match count {
        Some(n) if bytes.len() >= line_end + n + 2 => Some(line_end + n + 2),
        Some(_) => None,
        None => Some(line_end),
    }
}

/// Splits `bytes` into complete replies; the second value is the incomplete tail.
fn split_replies(bytes: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let mut replies = Vec::new();
    let mut rest = bytes;
    while let Some(len) = reply_len(rest) {
        replies.push(&rest[..len]);
        rest = &rest[len..];
    }
    (replies, rest)
}

/// `stats` keys whose values depend on the process, the machine or the clock.
const STATS_VOLATILE_KEYS: [&str; 9] =
    ["pid", "version", "rusage-utime", "rusage-stime", "uptime", "id", "hostname", "os", "platform"];
/// Prefix of the keys runnerbean appends after the standard `stats` keys.
const RUNNERBEAN_STATS_PREFIX: &str = "runnerbean-";
/// What a volatile value becomes.
const VOLATILE_PLACEHOLDER: &str = "*";

/// The only place where replies are allowed to differ. Every rule is listed in
/// `tests/corpus/README.md`; keep the two in step.
///
/// * `stats` (a YAML body whose first key is `current-jobs-urgent`): the values of
///   [`STATS_VOLATILE_KEYS`] become `*`, and lines whose key starts with `runnerbean-` are
///   dropped.
/// * `stats-tube` (first key `name`): double quotes around the `name` value are removed.
/// * `stats-job` (first key `id`): double quotes around the `tube` value are removed.
/// * The `OK <n>` count of an edited body is recomputed.
///
/// Everything else, including an incomplete tail, passes through unchanged.
fn normalise(bytes: &[u8]) -> Vec<u8> {
    let (replies, tail) = split_replies(bytes);
    let mut out = Vec::with_capacity(bytes.len());
    for reply in replies {
        out.extend_from_slice(&normalise_reply(reply).unwrap_or_else(|| reply.to_vec()));
    }
    out.extend_from_slice(tail);
    out
}

/// Normalises one complete `OK <n>` YAML reply; `None` means "leave it as it is".
fn normalise_reply(reply: &[u8]) -> Option<Vec<u8>> {
    let header_len = reply.windows(2).position(|w| w == b"\r\n")? + 2;
    if !reply.starts_with(b"OK ") {
        return None;
    }
    let body = std::str::from_utf8(&reply[header_len..reply.len() - 2]).ok()?;
    let yaml = body.strip_prefix("---\n")?;
    let first_key = yaml.split(':').next()?;
    let mut edited = String::from("---\n");
    for line in yaml.split_inclusive('\n') {
        let Some((key, value)) = line.strip_suffix('\n').and_then(|l| l.split_once(": ")) else {
            edited.push_str(line);
            continue;
        };
        let value = match (first_key, key) {
            ("current-jobs-urgent", k) if k.starts_with(RUNNERBEAN_STATS_PREFIX) => continue,
            ("current-jobs-urgent", k) if STATS_VOLATILE_KEYS.contains(&k) => VOLATILE_PLACEHOLDER,
            ("name", "name") | ("id", "tube") => strip_quotes(value),
            _ => value,
        };
        let _ = writeln!(edited, "{key}: {value}");
    }
    let mut out = format!("OK {}\r\n", edited.len()).into_bytes();
    out.extend_from_slice(edited.as_bytes());
    out.extend_from_slice(b"\r\n");
    Some(out)
}

fn strip_quotes(value: &str) -> &str {
    value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value)
}

// ----------------------------------------------------------------------------------------
// Scripts and goldens.
// ----------------------------------------------------------------------------------------

/// A deliberate difference: the bytes runnerbean must send instead of C's, and why.
#[derive(Debug, Clone)]
struct Divergence {
    reason: String,
    bytes: Vec<u8>,
    replies: usize,
}

#[derive(Debug, Clone)]
enum Action {
    Open,
    Send(Vec<u8>),
    Recv { replies: usize, divergence: Option<Divergence> },
    Quiet { ms: u64, divergence: Option<Divergence> },
    Eof,
    Close,
    Shutdown,
    Sleep(u64),
    SignalUsr1,
}

#[derive(Debug, Clone)]
struct Step {
    line: usize,
    text: String,
    conn: String,
    action: Action,
}

impl Step {
    /// The golden-file key of a receive step (`a recv 2`, `b quiet 200`, `c eof`), or `None`
    /// for steps that receive nothing.
    fn descriptor(&self) -> Option<String> {
        match &self.action {
            Action::Recv { replies, .. } => Some(format!("{} recv {replies}", self.conn)),
            Action::Quiet { ms, .. } => Some(format!("{} quiet {ms}", self.conn)),
            Action::Eof => Some(format!("{} eof", self.conn)),
            _ => None,
        }
    }

    fn divergence(&self) -> Option<&Divergence> {
        match &self.action {
            Action::Recv { divergence, .. } | Action::Quiet { divergence, .. } => divergence.as_ref(),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Script {
    name: String,
    flags: Vec<String>,
    steps: Vec<Step>,
}

impl Script {
    fn receive_steps(&self) -> impl Iterator<Item = &Step> {
        self.steps.iter().filter(|s| s.descriptor().is_some())
    }
}

fn is_conn_name(word: &str) -> bool {
    let mut chars = word.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase()) && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// Parses `~REASON [BYTES]`, the divergence tail of a receive step.
fn parse_divergence(tail: &str) -> Result<Divergence, String> {
    let tail = tail.strip_prefix('~').ok_or("expected `~reason` after the step")?;
    let (reason, bytes) = tail.split_once(' ').unwrap_or((tail, ""));
    if reason.is_empty() || !reason.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
        return Err(format!("bad divergence reason id `{reason}`"));
    }
    let bytes = unescape(bytes)?;
    let (replies, tail) = split_replies(&bytes);
    if !tail.is_empty() {
        return Err("divergence bytes must be whole replies".into());
    }
    Ok(Divergence { reason: reason.into(), replies: replies.len(), bytes })
}

fn parse_step(line: usize, text: &str) -> Result<Step, String> {
    let (head, rest) = text.split_once(' ').unwrap_or((text, ""));
    let global = |action| Ok(Step { line, text: text.into(), conn: String::new(), action });
    match head {
        "sleep" => {
            let ms: u64 = rest.parse().map_err(|_| "sleep needs milliseconds")?;
            if ms > SLEEP_MS_MAX {
                return Err(format!("sleep is limited to {SLEEP_MS_MAX} ms"));
            }
            return global(Action::Sleep(ms));
        }
        "signal" if rest == "usr1" => return global(Action::SignalUsr1),
        "signal" => return Err("only `signal usr1` is supported".into()),
        _ => {}
    }
    if !is_conn_name(head) {
        return Err(format!("`{head}` is neither a step nor a connection name"));
    }
    let (verb, args) = rest.split_once(' ').unwrap_or((rest, ""));
    let action = match verb {
        "open" if args.is_empty() => Action::Open,
        "close" if args.is_empty() => Action::Close,
        "shutdown" if args.is_empty() => Action::Shutdown,
        "eof" if args.is_empty() => Action::Eof,
        "send" => Action::Send(unescape(args)?),
        "recv" => {
            let (count, tail) = args.split_once(' ').unwrap_or((args, ""));
            let replies = count.parse().map_err(|_| "recv needs a reply count")?;
            if replies == 0 {
                return Err("`recv 0` waits for nothing; use `quiet`".into());
            }
            let divergence = (!tail.is_empty()).then(|| parse_divergence(tail)).transpose()?;
            Action::Recv { replies, divergence }
        }
        "quiet" => {
            let (ms, tail) = match args.split_once(' ') {
                Some((ms, tail)) if !ms.starts_with('~') => (ms, tail),
                _ if args.starts_with('~') => ("", args),
                _ => (args, ""),
            };
            let ms =
                if ms.is_empty() { QUIET_MS_DEFAULT } else { ms.parse().map_err(|_| "quiet takes milliseconds")? };
            if ms > QUIET_MS_MAX {
                return Err(format!("quiet is limited to {QUIET_MS_MAX} ms"));
            }
            let divergence = (!tail.is_empty()).then(|| parse_divergence(tail)).transpose()?;
            Action::Quiet { ms, divergence }
        }
        _ => return Err(format!("unknown step `{verb}`")),
    };
    Ok(Step { line, text: text.into(), conn: head.into(), action })
}

fn parse_script(name: &str, source: &str) -> Result<Script, String> {
    let mut script = Script { name: name.into(), flags: Vec::new(), steps: Vec::new() };
    let mut open: BTreeSet<String> = BTreeSet::from([FIRST_CONNECTION.to_string()]);
    for (index, text) in source.lines().enumerate() {
        let line = index + 1;
        let fail = |msg: String| format!("{name}.bs:{line}: {msg}");
        if text.ends_with([' ', '\t']) {
            return Err(fail("trailing white space (write \\x20 for a space)".into()));
        }
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        if let Some(flags) = text.strip_prefix("flags ") {
            if !script.steps.is_empty() {
                return Err(fail("`flags` must come before the first step".into()));
            }
            script.flags.extend(flags.split_whitespace().map(String::from));
            continue;
        }
        let step = parse_step(line, text).map_err(fail)?;
        match step.action {
            Action::Open if !open.insert(step.conn.clone()) => {
                return Err(fail(format!("connection `{}` is already open", step.conn)));
            }
            Action::Close => {
                open.remove(&step.conn);
            }
            Action::Sleep(_) | Action::SignalUsr1 | Action::Open => {}
            _ if !open.contains(&step.conn) => {
                return Err(fail(format!("connection `{}` is not open", step.conn)));
            }
            _ => {}
        }
        script.steps.push(step);
    }
    if script.receive_steps().next().is_none() {
        return Err(format!("{name}.bs: no receive step"));
    }
    Ok(script)
}

/// One golden entry: the step descriptor it was recorded for and C's bytes.
type Golden = Vec<(String, Vec<u8>)>;

const GOLDEN_SEPARATOR: &str = " =>";

fn parse_golden(source: &str) -> Result<Golden, String> {
    let mut entries = Vec::new();
    for (index, line) in source.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (descriptor, bytes) =
            line.split_once(GOLDEN_SEPARATOR).ok_or_else(|| format!("line {}: missing `=>`", index + 1))?;
        let bytes = bytes.strip_prefix(' ').unwrap_or(bytes);
        let bytes = unescape(bytes).map_err(|e| format!("line {}: {e}", index + 1))?;
        entries.push((descriptor.to_string(), bytes));
    }
    Ok(entries)
}

fn format_golden(script: &Script, observed: &[Vec<u8>]) -> String {
    let mut out = format!(
        "# C beanstalkd's replies to {}.bs, one line per receive step.\n\
         # Written by scripts/record-golden; do not edit by hand.\n",
        script.name
    );
    for (step, bytes) in script.receive_steps().zip(observed) {
        let escaped = escape(bytes);
        let descriptor = step.descriptor().unwrap_or_default();
        if escaped.is_empty() {
            let _ = writeln!(out, "{descriptor}{GOLDEN_SEPARATOR}");
        } else {
            let _ = writeln!(out, "{descriptor}{GOLDEN_SEPARATOR} {escaped}");
        }
    }
    out
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

fn golden_path(name: &str) -> PathBuf {
    corpus_dir().join("golden").join(format!("{name}.golden"))
}

/// Loads every script (sorted by name), honouring `RUNNERBEAN_CORPUS_FILTER`.
fn load_corpus() -> Vec<Script> {
    let filter = std::env::var("RUNNERBEAN_CORPUS_FILTER").unwrap_or_default();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("tests/corpus exists")
        .map(|entry| entry.expect("readable corpus entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "bs"))
        .collect();
    paths.sort();
    let mut scripts = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if !name.contains(&filter) {
            continue;
        }
        let source = std::fs::read_to_string(&path).expect("readable script");
        match parse_script(&name, &source) {
            Ok(script) => scripts.push(script),
            Err(e) => errors.push(e),
        }
    }
    assert!(errors.is_empty(), "corpus errors:\n{}", errors.join("\n"));
    assert!(!scripts.is_empty(), "no scripts match `{filter}`");
    scripts
}

/// The golden bytes of each receive step, checked against the script's current steps.
fn load_golden(script: &Script) -> Result<Vec<Vec<u8>>, String> {
    let path = golden_path(&script.name);
    let source = std::fs::read_to_string(&path)
        .map_err(|e| format!("{}: cannot read {} ({e}); run scripts/record-golden", script.name, path.display()))?;
    let golden = parse_golden(&source).map_err(|e| format!("{}: {e}", path.display()))?;
    let wanted: Vec<String> = script.receive_steps().filter_map(Step::descriptor).collect();
    let have: Vec<&String> = golden.iter().map(|(d, _)| d).collect();
    if wanted.iter().collect::<Vec<_>>() != have {
        return Err(format!(
            "{}: golden file is out of date with the script (steps {wanted:?}, golden {have:?}); \
             run scripts/record-golden",
            script.name
        ));
    }
    Ok(golden.into_iter().map(|(_, bytes)| bytes).collect())
}

// ----------------------------------------------------------------------------------------
// Servers.
// ----------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// C beanstalkd: receive steps wait for the golden reply counts.
    C,
    /// runnerbean: receive steps with a divergence wait for the override's reply count.
    Runnerbean,
}

#[derive(Debug, Clone)]
struct ServerKind {
    label: &'static str,
    binary: PathBuf,
    io_epoll: bool,
    /// `--cores`, for runnerbean (1: the flag is not given).
    cores: u32,
    target: Target,
}

/// runnerbean on a back end, with one core or four (four shards on however
/// many CPUs: every command that touches a tube of another shard crosses
/// between cores).
fn runnerbean(io_epoll: bool, cores: u32) -> ServerKind {
    let label = match (io_epoll, cores) {
        (false, 1) => "runnerbean (default io)",
        (true, 1) => "runnerbean (RUNNERBEAN_IO=epoll)",
        (false, _) => "runnerbean --cores 4 (default io)",
        (true, _) => "runnerbean --cores 4 (RUNNERBEAN_IO=epoll)",
    };
    assert!(cores == 1 || cores == 4, "labelled for 1 and 4 cores");
    ServerKind {
        label,
        binary: PathBuf::from(env!("CARGO_BIN_EXE_runnerbean")),
        io_epoll,
        cores,
        target: Target::Runnerbean,
    }
}

fn beanstalkd() -> Option<ServerKind> {
    let path = std::env::var_os("PATH")?;
    let binary =
        std::env::split_paths(&path).map(|dir| dir.join("beanstalkd")).find(|candidate| candidate.is_file())?;
    Some(ServerKind { label: "beanstalkd", binary, io_epoll: false, cores: 1, target: Target::C })
}

/// A running server. Dropping the guard kills the process and reaps it.
struct Server {
    child: Child,
    port: u16,
    log: Arc<Mutex<Vec<u8>>>,
}

impl Server {
    /// Starts `<binary> -l 127.0.0.1 -p 0 -V <flags>` and reads the port from its
    /// `bind <fd> 127.0.0.1:<port>` line. Both output pipes are drained for the life of the
    /// process so that its `-V` logging never blocks it.
    fn start(kind: &ServerKind, flags: &[String]) -> Result<Server, String> {
        let mut command = Command::new(&kind.binary);
        command
            .args(["-l", "127.0.0.1", "-p", "0", "-V"])
            .args(flags)
            .args(if kind.cores > 1 { vec!["--cores".to_string(), kind.cores.to_string()] } else { vec![] })
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if kind.io_epoll {
            command.env("RUNNERBEAN_IO", "epoll");
        } else {
            command.env_remove("RUNNERBEAN_IO");
        }
        let mut child = command.spawn().map_err(|e| format!("cannot start {}: {e}", kind.binary.display()))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (port_tx, port_rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let stdout_log = Arc::clone(&log);
        thread::spawn(move || {
            for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
                if let Some(port) = bind_port(&line) {
                    let _ = port_tx.send(port);
                }
                let mut log = stdout_log.lock().unwrap();
                log.extend_from_slice(&line);
                log.push(b'\n');
            }
        });
        let stderr_log = Arc::clone(&log);
        thread::spawn(move || {
            let mut stderr = stderr;
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = stderr.read(&mut chunk) {
                stderr_log.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        let mut server = Server { child, port: 0, log };
        match port_rx.recv_timeout(START_TIMEOUT) {
            Ok(port) => {
                server.port = port;
                Ok(server)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
                "{} printed no `bind <fd> 127.0.0.1:<port>` line within {START_TIMEOUT:?}{}",
                kind.label,
                server.log_tail()
            )),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = server.child.wait().map(|s| s.to_string());
                Err(format!(
                    "{} closed its stdout without printing a `bind <fd> 127.0.0.1:<port>` line \
                     ({}){}",
                    kind.label,
                    status.unwrap_or_else(|e| e.to_string()),
                    server.log_tail()
                ))
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines the server printed, for failure messages.
    fn log_tail(&self) -> String {
        let log = self.log.lock().unwrap();
        let text = String::from_utf8_lossy(&log);
        let lines: Vec<&str> = text.lines().collect();
        let shown = &lines[lines.len().saturating_sub(LOG_LINES_SHOWN)..];
        if shown.is_empty() {
            "\n    (server printed nothing)".into()
        } else {
            format!("\n    server log (last lines):\n      {}", shown.join("\n      "))
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bind_port(line: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(line).ok()?;
    let rest = line.trim_end().strip_prefix("bind ")?;
    rest.rsplit(':').next()?.parse().ok()
}

// ----------------------------------------------------------------------------------------
// Running a script.
// ----------------------------------------------------------------------------------------

/// One client connection and the bytes received on it but not yet claimed by a step.
struct Conn {
    stream: TcpStream,
    pending: Vec<u8>,
    closed_by_server: bool,
}

impl Conn {
    fn connect(port: u16) -> Result<Conn, String> {
        let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
        stream.set_write_timeout(Some(REPLY_TIMEOUT)).map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        Ok(Conn { stream, pending: Vec::new(), closed_by_server: false })
    }

    /// Connects the first connection of a run. C beanstalkd prints its `bind` line between
    /// bind(2) and listen(2), so a refused connection is retried until the start timeout.
    fn connect_first(port: u16) -> Result<Conn, String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match Conn::connect(port) {
                Err(_) if Instant::now() < deadline => thread::sleep(CONNECT_RETRY_PAUSE),
                result => return result,
            }
        }
    }

    /// Reads whatever arrives before `deadline`; returns early when `done` says so.
    /// Returns false if the deadline passed without `done` becoming true.
    fn read_until(&mut self, deadline: Instant, done: impl Fn(&Conn) -> bool) -> bool {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if done(self) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || self.closed_by_server {
                return false;
            }
            let wait = (deadline - now).max(Duration::from_millis(1));
            let _ = self.stream.set_read_timeout(Some(wait));
            match self.stream.read(&mut chunk) {
                Ok(0) => self.closed_by_server = true,
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // A reset is how Linux closes a socket that still had unread input; for a
                // client it means the same as EOF.
                Err(_) => self.closed_by_server = true,
            }
        }
    }

    fn recv(&mut self, replies: usize) -> Result<Vec<u8>, String> {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let complete = |c: &Conn| split_replies(&c.pending).0.len() >= replies;
        if !self.read_until(deadline, complete) {
            let why = if self.closed_by_server { "the server closed the connection" } else { "timed out" };
            return Err(format!(
                "{why} while waiting for {replies} repl{}; received: {}",
                if replies == 1 { "y" } else { "ies" },
                show(&self.pending)
            ));
        }
        let len: usize = split_replies(&self.pending).0[..replies].iter().map(|r| r.len()).sum();
        Ok(self.pending.drain(..len).collect())
    }

    fn quiet(&mut self, ms: u64) -> Vec<u8> {
        self.read_until(Instant::now() + Duration::from_millis(ms), |_| false);
        std::mem::take(&mut self.pending)
    }

    fn eof(&mut self) -> Result<Vec<u8>, String> {
        if self.read_until(Instant::now() + REPLY_TIMEOUT, |c| c.closed_by_server) {
            Ok(std::mem::take(&mut self.pending))
        } else {
            Err(format!(
                "expected the server to close the connection; still open after {REPLY_TIMEOUT:?}, \
                 received: {}",
                show(&self.pending)
            ))
        }
    }
}

/// Where a run stopped early.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// The server did not start, or the first connection failed.
    Start,
    /// The step with this index could not complete.
    Step(usize),
    /// Every step ran, but bytes were left unclaimed.
    End,
}

/// What one script produced on one server.
struct Run {
    /// The bytes of each receive step, in order, up to the first failed step.
    observed: Vec<Vec<u8>>,
    /// Where the run stopped early (timeout, closed connection, ...) and why.
    error: Option<(Stop, String)>,
    /// The server's last log lines, kept for failure messages.
    log_tail: String,
}

/// Runs `script` against a fresh server of `kind`.
fn run_script(script: &Script, kind: &ServerKind) -> Run {
    let mut server = match Server::start(kind, &script.flags) {
        Ok(server) => server,
        Err(e) => {
            return Run { observed: Vec::new(), error: Some((Stop::Start, e)), log_tail: String::new() };
        }
    };
    let mut run = Run { observed: Vec::new(), error: None, log_tail: String::new() };
    let mut conns: Vec<(String, Conn)> = Vec::new();
    match Conn::connect_first(server.port) {
        Ok(conn) => conns.push((FIRST_CONNECTION.into(), conn)),
        Err(e) => run.error = Some((Stop::Start, e)),
    }
    for (index, step) in script.steps.iter().enumerate() {
        if run.error.is_some() {
            break;
        }
        match execute(step, kind.target, &server, &mut conns) {
            Ok(Some(bytes)) => run.observed.push(bytes),
            Ok(None) => {}
            Err(e) => run.error = Some((Stop::Step(index), e)),
        }
    }
    if run.error.is_none() {
        // Late replies count too: every open connection gets one short shared window.
        let deadline = Instant::now() + Duration::from_millis(FINAL_QUIET_MS);
        for (name, conn) in &mut conns {
            conn.read_until(deadline, |_| false);
            if !conn.pending.is_empty() {
                run.error = Some((
                    Stop::End,
                    format!("unclaimed bytes on `{name}` at the end of the script: {}", show(&conn.pending)),
                ));
                break;
            }
        }
    }
    // Connections close before the server is killed, so a server never sees a reset it
    // could log as an error in the middle of the next script.
    drop(conns);
    if let Ok(Some(status)) = server.child.try_wait() {
        run.log_tail = format!("\n    server exited: {status}");
    }
    run.log_tail.push_str(&server.log_tail());
    run
}

/// Executes one step; returns the received bytes for receive steps.
fn execute(
    step: &Step,
    target: Target,
    server: &Server,
    conns: &mut Vec<(String, Conn)>,
) -> Result<Option<Vec<u8>>, String> {
    let find = |conns: &mut Vec<(String, Conn)>| conns.iter().position(|(n, _)| *n == step.conn);
    // The reply count this target must produce: the override's when runnerbean diverges.
    let wanted = |replies: usize| match (target, step.divergence()) {
        (Target::Runnerbean, Some(d)) => d.replies,
        _ => replies,
    };
    match &step.action {
        Action::Sleep(ms) => {
            thread::sleep(Duration::from_millis(*ms));
            return Ok(None);
        }
        Action::SignalUsr1 => {
            let status = Command::new("kill")
                .args(["-USR1", &server.pid().to_string()])
                .status()
                .map_err(|e| format!("cannot run kill: {e}"))?;
            return if status.success() { Ok(None) } else { Err(format!("kill -USR1 failed: {status}")) };
        }
        Action::Open => {
            let conn = Conn::connect(server.port)?;
            conns.push((step.conn.clone(), conn));
            return Ok(None);
        }
        _ => {}
    }
    let index = find(conns).ok_or_else(|| format!("connection `{}` is not open", step.conn))?;
    let conn = &mut conns[index].1;
    match &step.action {
        Action::Send(bytes) => conn.stream.write_all(bytes).map(|()| None).map_err(|e| format!("send failed: {e}")),
        Action::Recv { replies, .. } => match wanted(*replies) {
            0 => Ok(Some(conn.quiet(QUIET_MS_DEFAULT))),
            n => conn.recv(n).map(Some),
        },
        Action::Quiet { ms, .. } => match wanted(0) {
            0 => Ok(Some(conn.quiet(*ms))),
            n => conn.recv(n).map(Some),
        },
        Action::Eof => conn.eof().map(Some),
        Action::Shutdown => {
            conn.stream.shutdown(Shutdown::Write).map(|()| None).map_err(|e| format!("shutdown failed: {e}"))
        }
        Action::Close => {
            conns.remove(index);
            Ok(None)
        }
        Action::Open | Action::Sleep(_) | Action::SignalUsr1 => unreachable!("handled above"),
    }
}

// ----------------------------------------------------------------------------------------
// Comparing.
// ----------------------------------------------------------------------------------------

/// Escaped bytes for messages, with the length.
fn show(bytes: &[u8]) -> String {
    format!("\"{}\" ({} bytes)", escape(bytes), bytes.len())
}

/// Compares a run with the expected bytes of each receive step (already chosen between
/// golden, live C output and divergence override). Returns a readable report of the first
/// mismatch or failed step.
fn compare(script: &Script, label: &str, expected: &[Vec<u8>], run: &Run) -> Result<(), String> {
    let steps: Vec<(usize, &Step)> =
        script.steps.iter().enumerate().filter(|(_, s)| s.descriptor().is_some()).collect();
    for (((index, step), want), got) in steps.iter().zip(expected).zip(&run.observed) {
        let (want_n, got_n) = (normalise(want), normalise(got));
        if want_n != got_n {
            let offset = want_n.iter().zip(&got_n).position(|(a, b)| a != b).unwrap_or(want_n.len().min(got_n.len()));
            let divergence = step
                .divergence()
                .filter(|_| label.starts_with("runnerbean"))
                .map(|d| format!(" (divergence override `{}`)", d.reason))
                .unwrap_or_default();
            return Err(format!(
                "{}.bs [{label}] step {} (line {}: `{}`){divergence}\n    expected: {}\n    actual:   {}\n    \
                 (normalised; first difference at byte {offset})",
                script.name,
                index + 1,
                step.line,
                step.text,
                show(&want_n),
                show(&got_n),
            ));
        }
    }
    if let Some((stop, message)) = &run.error {
        let location = match *stop {
            Stop::Step(index) => {
                let step = &script.steps[index];
                format!("step {} (line {}: `{}`)", index + 1, step.line, step.text)
            }
            Stop::Start => "server start".into(),
            Stop::End => "end of script".into(),
        };
        return Err(format!("{}.bs [{label}] {location}\n    {message}{}", script.name, run.log_tail));
    }
    Ok(())
}

/// The bytes runnerbean must produce: the override where a step diverges, else `reference`.
fn runnerbean_expectation(script: &Script, reference: &[Vec<u8>]) -> Vec<Vec<u8>> {
    script
        .receive_steps()
        .zip(reference)
        .map(|(step, bytes)| match step.divergence() {
            Some(d) => d.bytes.clone(),
            None => bytes.clone(),
        })
        .collect()
}

// ----------------------------------------------------------------------------------------
// Driving the corpus.
// ----------------------------------------------------------------------------------------

/// Only one corpus-wide test runs at a time, so timing-sensitive scripts are not starved by
/// another mode's servers.
static CORPUS_LOCK: Mutex<()> = Mutex::new(());

/// Scripts at the same time: `default` unless the environment says otherwise.
fn thread_count(default: usize) -> usize {
    std::env::var("RUNNERBEAN_CONFORMANCE_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

/// Calls `job` for every item on a bounded pool of threads; returns the non-empty
/// results in item order.
fn run_parallel<T: Sync, R: Send>(items: &[T], threads: usize, job: impl Fn(&T) -> Option<R> + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, R)>> = Mutex::new(Vec::new());
    thread::scope(|scope| {
        for _ in 0..threads.min(items.len()) {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(index) else { break };
                    if let Some(result) = job(item) {
                        results.lock().unwrap().push((index, result));
                    }
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(index, _)| *index);
    results.into_iter().map(|(_, r)| r).collect()
}

fn report(mode: &str, runs: usize, failures: &[String], started: Instant) {
    eprintln!("conformance {mode}: {} of {runs} runs passed in {:.1?}", runs - failures.len(), started.elapsed());
    if !failures.is_empty() {
        panic!("conformance {mode}: {} of {runs} runs failed\n\n{}\n", failures.len(), failures.join("\n\n"));
    }
}

/// Replay: every script against runnerbean, with both I/O back ends, compared with the
/// golden transcripts.
#[test]
fn replay() {
    let _serial = CORPUS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let scripts = load_corpus();
    let kinds = [runnerbean(false, 1), runnerbean(true, 1), runnerbean(false, 4), runnerbean(true, 4)];
    let jobs: Vec<(&Script, &ServerKind)> = scripts.iter().flat_map(|s| kinds.iter().map(move |k| (s, k))).collect();
    let failures = run_parallel(&jobs, thread_count(THREADS_DEFAULT), |(script, kind)| {
        let golden = match load_golden(script) {
            Ok(golden) => golden,
            Err(e) => return Some(e),
        };
        let expected = runnerbean_expectation(script, &golden);
        compare(script, kind.label, &expected, &run_script(script, kind)).err()
    });
    report("replay", jobs.len(), &failures, started);
}

/// Live: C beanstalkd and runnerbean side by side; C against the golden, runnerbean
/// against C.
#[test]
fn live() {
    let Some(c_server) = beanstalkd() else {
        assert!(
            std::env::var("RUNNERBEAN_REQUIRE_LIVE").as_deref() != Ok("1"),
            "RUNNERBEAN_REQUIRE_LIVE=1 but `beanstalkd` is not on PATH \
             (install it with `apt-get install -y beanstalkd`)"
        );
        eprintln!("conformance live: skipped, `beanstalkd` is not on PATH");
        return;
    };
    let _serial = CORPUS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let scripts = load_corpus();
    let (rb, rb4) = (runnerbean(false, 1), runnerbean(false, 4));
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    let threads = thread_count(THREADS_DEFAULT.min(LIVE_THREADS_PER_CPU * cpus));
    let failures = run_parallel(&scripts, threads, |script| {
        let golden = match load_golden(script) {
            Ok(golden) => golden,
            Err(e) => return Some(e),
        };
        let (c_run, rb_run, rb4_run) = thread::scope(|scope| {
            let c = scope.spawn(|| run_script(script, &c_server));
            let four = scope.spawn(|| run_script(script, &rb4));
            let rb_run = run_script(script, &rb);
            (c.join().expect("C run thread"), rb_run, four.join().expect("--cores 4 run thread"))
        });
        let mut problems = Vec::new();
        if let Err(e) = compare(script, "beanstalkd vs golden", &golden, &c_run) {
            problems.push(e);
        }
        let expected = runnerbean_expectation(script, &c_run.observed);
        if let Err(e) = compare(script, "runnerbean vs beanstalkd", &expected, &rb_run) {
            problems.push(e);
        }
        if let Err(e) = compare(script, "runnerbean --cores 4 vs beanstalkd", &expected, &rb4_run) {
            problems.push(e);
        }
        (!problems.is_empty()).then(|| problems.join("\n\n"))
    });
    report("live", scripts.len(), &failures, started);
}

/// Record: runs every script twice against C beanstalkd and writes the golden file when
/// both runs agree after normalisation and differ from the existing golden. Run by
/// `scripts/record-golden`.
#[test]
#[ignore = "records golden transcripts from C beanstalkd; run scripts/record-golden"]
fn record() {
    let c_server = beanstalkd().expect("`beanstalkd` is not on PATH; install it first");
    let _serial = CORPUS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let scripts = load_corpus();
    std::fs::create_dir_all(corpus_dir().join("golden")).expect("create tests/corpus/golden");
    let failures = run_parallel(&scripts, thread_count(THREADS_DEFAULT), |script| {
        let (first, second) = thread::scope(|scope| {
            let first = scope.spawn(|| run_script(script, &c_server));
            let second = run_script(script, &c_server);
            (first.join().expect("record thread"), second)
        });
        for run in [&first, &second] {
            if run.error.is_some() {
                let failure = compare(script, "beanstalkd", &run.observed, run);
                return Some(failure.expect_err("a run with an error fails"));
            }
        }
        if let Err(e) = compare(script, "beanstalkd run 2 vs run 1", &first.observed, &second) {
            return Some(format!("unstable script, golden not written:\n{e}"));
        }
        // Keep an existing golden that differs only in normalised fields (pid, rusage, ...), so
        // that re-recording leaves unchanged transcripts untouched in the diff.
        let unchanged = load_golden(script).is_ok_and(|old| {
            old.len() == first.observed.len()
                && old.iter().zip(&first.observed).all(|(a, b)| normalise(a) == normalise(b))
        });
        if !unchanged {
            let text = format_golden(script, &first.observed);
            std::fs::write(golden_path(&script.name), text).expect("write golden");
        }
        None
    });
    let names: BTreeSet<String> = scripts.iter().map(|s| format!("{}.golden", s.name)).collect();
    if std::env::var("RUNNERBEAN_CORPUS_FILTER").is_err() {
        for entry in std::fs::read_dir(corpus_dir().join("golden")).expect("golden dir") {
            let name = entry.expect("golden entry").file_name();
            if !names.contains(&*name.to_string_lossy()) {
                eprintln!("note: {} has no script; delete it", name.to_string_lossy());
            }
        }
    }
    report("record", scripts.len(), &failures, started);
}

// ----------------------------------------------------------------------------------------
// Tests of the harness itself.
// ----------------------------------------------------------------------------------------

#[test]
fn escape_round_trips() {
    let samples: [&[u8]; 5] = [
        b"put 0 0 10 3\r\nabc\r\n",
        b"\x00\xff{}*\\ \t",
        b"trailing space ",
        &[b'x'; 70000],
        b"ab{{{{{{{{{{{{{{{{{{{{{{}}}}}}}}}}}}}}}}}}}}}}}********************",
    ];
    for sample in samples {
        let text = escape(sample);
        assert!(!text.contains(['\r', '\n']) && !text.ends_with(' '), "{text}");
        assert_eq!(unescape(&text).unwrap(), sample, "{text}");
    }
    assert_eq!(unescape("{ab*3}\\x41").unwrap(), b"abababA");
    assert!(unescape("\\q").is_err());
    assert!(unescape("{x*}").is_err());
}

#[test]
fn replies_are_framed_by_their_byte_counts() {
    let bytes = b"INSERTED 1\r\nRESERVED 1 4\r\na\r\nb\r\nOK 3\r\nabc\r\nFOUND 2 5\r\nab";
    let (replies, tail) = split_replies(bytes);
    assert_eq!(replies, [&b"INSERTED 1\r\n"[..], b"RESERVED 1 4\r\na\r\nb\r\n", b"OK 3\r\nabc\r\n"]);
    assert_eq!(tail, b"FOUND 2 5\r\nab");
}

/// An `OK <n>` reply around `body`, with the count computed.
fn ok_reply(body: &str) -> Vec<u8> {
    format!("OK {}\r\n{body}\r\n", body.len()).into_bytes()
}

#[test]
fn normalise_edits_only_the_listed_fields() {
    let c = ok_reply("---\ncurrent-jobs-urgent: 0\npid: 42\nversion: \"1.12\"\nid: 0123abcd\nos: #1 SMP\n");
    let rb = ok_reply(
        "---\ncurrent-jobs-urgent: 0\npid: 7\nversion: \"1.13\"\nid: ffff\nos: \"#2\"\n\
         runnerbean-version: \"0.1.0\"\nrunnerbean-shards: 4\n",
    );
    let normalised = ok_reply("---\ncurrent-jobs-urgent: 0\npid: *\nversion: *\nid: *\nos: *\n");
    assert_eq!(normalise(&c), normalised);
    assert_eq!(normalise(&rb), normalised);

    let mut job_c = ok_reply("---\nid: 1\ntube: default\nstate: ready\n");
    job_c.extend_from_slice(b"NOT_FOUND\r\n");
    let mut job_rb = ok_reply("---\nid: 1\ntube: \"default\"\nstate: ready\n");
    job_rb.extend_from_slice(b"NOT_FOUND\r\n");
    assert_eq!(normalise(&job_c), job_c);
    assert_eq!(normalise(&job_rb), job_c);

    let tube_rb = ok_reply("---\nname: \"a\"\npid: 1\n");
    assert_eq!(normalise(&tube_rb), ok_reply("---\nname: a\npid: 1\n"));
    let list = ok_reply("---\n- default\n- \"x\"\n");
    assert_eq!(normalise(&list), list);
    let partial = b"OK 30\r\n---\npid: 1\n";
    assert_eq!(normalise(partial), partial);
}

#[test]
fn scripts_parse_with_divergences() {
    let script = parse_script(
        "sample",
        "flags -z 10\n# comment\na send use a\\rb\\r\\n\na quiet ~line-cr BAD_FORMAT\\r\\n\nb open\n\
         b send reserve\\r\\n\nb recv 1 ~fifo\nsleep 100\nsignal usr1\nb eof\n",
    )
    .unwrap();
    assert_eq!(script.flags, ["-z", "10"]);
    let receive: Vec<String> = script.receive_steps().filter_map(Step::descriptor).collect();
    assert_eq!(receive, ["a quiet 200", "b recv 1", "b eof"]);
    assert_eq!(script.steps[1].divergence().unwrap().replies, 1);
    assert_eq!(script.steps[4].divergence().unwrap().replies, 0);
    assert!(parse_script("bad", "a send x \n").is_err());
    assert!(parse_script("bad", "b send x\n").is_err());
    assert!(parse_script("bad", "a recv 1 ~r PARTIAL\n").is_err());
}
