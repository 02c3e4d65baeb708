//! What an `exec` job asks for: its body read as a command to run.
//!
//! Three formats, told apart by their first bytes:
//! * JSON, when the body starts with `{` (after blanks): `{"argv": ["prog", "arg"...]}` or
//!   `{"shell": "command line"}`, with optional `cwd`, `env` (names to strings; `null`
//!   removes a variable), `stdin` (a string) and `timeout_s` (seconds, more than 0). Unknown
//!   keys are refused, so that a misspelt one is not silently ignored.
//! * PHP-serialized (`O:`, `a:`, `s:`...): backq's `BackQ\Message\Process` object (see
//!   [`backq`]).
//! * Anything else: a shell command line, run with `/bin/sh -c`. It must be UTF-8 and not
//!   blank.
//!
//! A body that cannot be understood is an error with the reason, and the job is buried.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::php::{self, Value};

/// The class of backq's process messages.
pub const BACKQ_PROCESS_CLASS: &str = "BackQ\\Message\\Process";

/// backq's timeout when a message's is null (`$message->getTimeout() ?? 60`), in seconds.
pub const BACKQ_TIMEOUT_SECS_DEFAULT: f64 = 60.0;

/// The longest timeout a job may ask for: a year, far beyond any job, and small enough that
/// adding it to the clock never overflows.
const TIMEOUT_SECS_MAX: f64 = 366.0 * 24.0 * 3600.0;

/// How a job runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Program {
    /// A program and its arguments, run without a shell.
    Argv(Vec<OsString>),
    /// A command line for `/bin/sh -c`.
    Shell(OsString),
}

/// Everything needed to run a job's process.
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    /// What to run.
    pub program: Program,
    /// The working directory (the worker's own when `None`).
    pub cwd: Option<PathBuf>,
    /// Changes to the worker's environment: set to a value, or removed (`None`).
    pub env: Vec<(OsString, Option<OsString>)>,
    /// Bytes written to the process's standard input (which is empty otherwise).
    pub stdin: Option<Vec<u8>>,
    /// How long it may run; `None` leaves it to the worker's `--timeout`.
    pub timeout: Option<Duration>,
    /// Whether the job said that it has no time limit (backq's timeout 0).
    pub unlimited: bool,
}

/// The format a body was read in, for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `{"argv": ...}` or `{"shell": ...}`.
    Json,
    /// A backq `BackQ\Message\Process`.
    Backq,
    /// A plain command line.
    Text,
}

/// A body, understood.
#[derive(Clone, Debug, PartialEq)]
pub enum Job {
    /// Run this.
    Run(Spec),
    /// A backq message whose `until` deadline (a Unix time) has passed: backq does not run it,
    /// and neither does this worker.
    Expired(i64),
}

/// Reads a job body; `now` is the Unix time, for backq deadlines. The error is the reason the
/// body cannot be run.
pub fn parse(body: &[u8], now: i64) -> Result<(Format, Job), String> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(body.len());
    if body[start..].starts_with(b"{") {
        return json(body).map(|spec| (Format::Json, Job::Run(spec)));
    }
    if php::looks_serialized(body) {
        let value = php::unserialize(body).map_err(|e| format!("malformed PHP-serialized body: {e}"))?;
        return backq(&value, now).map(|job| (Format::Backq, job));
    }
    let text = std::str::from_utf8(body).map_err(|e| format!("the body is not UTF-8 (at byte {})", e.valid_up_to()))?;
    if text.trim().is_empty() {
        return Err("the body is empty".to_owned());
    }
    if text.contains('\0') {
        return Err("the command line has a NUL byte".to_owned());
    }
    let spec = Spec {
        program: Program::Shell(text.into()),
        cwd: None,
        env: Vec::new(),
        stdin: None,
        timeout: None,
        unlimited: false,
    };
    Ok((Format::Text, Job::Run(spec)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonJob {
    argv: Option<Vec<String>>,
    shell: Option<String>,
    cwd: Option<String>,
    env: Option<BTreeMap<String, Option<String>>>,
    stdin: Option<String>,
    timeout_s: Option<f64>,
}

fn json(body: &[u8]) -> Result<Spec, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("the body is not UTF-8 (at byte {})", e.valid_up_to()))?;
    let job: JsonJob = serde_json::from_str(text).map_err(|e| format!("malformed JSON job: {e}"))?;
    let program = match (job.argv, job.shell) {
        (Some(argv), None) => {
            if argv.is_empty() {
                return Err("\"argv\" is empty".to_owned());
            }
            Program::Argv(argv.into_iter().map(OsString::from).collect())
        }
        (None, Some(shell)) => Program::Shell(shell.into()),
        (Some(_), Some(_)) => return Err("a JSON job has \"argv\" or \"shell\", not both".to_owned()),
        (None, None) => return Err("a JSON job needs \"argv\" or \"shell\"".to_owned()),
    };
    let env = job.env.unwrap_or_default().into_iter().map(|(k, v)| (k.into(), v.map(OsString::from))).collect();
    let timeout = match job.timeout_s {
        None => None,
        Some(seconds) if seconds > 0.0 && seconds <= TIMEOUT_SECS_MAX => Some(Duration::from_secs_f64(seconds)),
        Some(seconds) => return Err(format!("\"timeout_s\" must be more than 0 and at most a year, not {seconds}")),
    };
    let spec = Spec {
        program,
        cwd: job.cwd.map(PathBuf::from),
        env,
        stdin: job.stdin.map(String::into_bytes),
        timeout,
        unlimited: false,
    };
    check(&spec)?;
    Ok(spec)
}

/// Refuses what the operating system cannot take: NUL bytes in arguments, paths or the
/// environment, and variable names that are empty or hold `=`.
fn check(spec: &Spec) -> Result<(), String> {
    let nul = |s: &OsString| s.as_encoded_bytes().contains(&0);
    let args = match &spec.program {
        Program::Argv(argv) => argv.iter().any(nul),
        Program::Shell(line) => nul(line),
    };
    if args {
        return Err("the command has a NUL byte".to_owned());
    }
    if spec.cwd.as_ref().is_some_and(|cwd| cwd.as_os_str().as_encoded_bytes().contains(&0)) {
        return Err("\"cwd\" has a NUL byte".to_owned());
    }
    for (name, value) in &spec.env {
        let bytes = name.as_encoded_bytes();
        if bytes.is_empty() || bytes.contains(&b'=') || bytes.contains(&0) || value.as_ref().is_some_and(nul) {
            return Err(format!("environment variable {name:?} cannot be set"));
        }
    }
    Ok(())
}

/// backq's `BackQ\Message\Process`: private properties `commandline` (a string for the
/// shell, or an array of arguments), `cwd`, `env` (an array; `false` removes a variable, as
/// Symfony's Process does), `input` (standard input), `timeout` (seconds; 0 is none, null is
/// backq's 60) and `until` (a Unix time after which the job is not run; 0 is none).
fn backq(value: &Value, now: i64) -> Result<Job, String> {
    let Value::Object { class, props } = value else {
        return Err(format!("a PHP-serialized {}, not a {BACKQ_PROCESS_CLASS} object", value.type_name()));
    };
    // PHP class names are case-insensitive.
    if !class.eq_ignore_ascii_case(BACKQ_PROCESS_CLASS.as_bytes()) {
        return Err(format!("unknown serialized class {:?}", String::from_utf8_lossy(class)));
    }
    let prop = |name: &str| props.iter().find(|(key, _)| key.property_name() == name.as_bytes()).map(|(_, v)| v);
    let program = match prop("commandline") {
        Some(Value::Str(line)) => Program::Shell(OsString::from_vec(line.clone())),
        Some(Value::Array(args)) if !args.is_empty() => {
            let argv: Option<Vec<OsString>> = args.iter().map(|(_, arg)| scalar(arg).map(OsString::from_vec)).collect();
            Program::Argv(argv.ok_or("a commandline argument is not a string or a number")?)
        }
        Some(Value::Array(_)) => return Err("the commandline is an empty array".to_owned()),
        Some(other) => return Err(format!("the commandline is {}, not a string or an array", other.type_name())),
        None => return Err("the message has no commandline".to_owned()),
    };
    let cwd = match prop("cwd") {
        None | Some(Value::Null) => None,
        Some(Value::Str(dir)) => Some(PathBuf::from(OsString::from_vec(dir.clone()))),
        Some(other) => return Err(format!("cwd is {}, not a string", other.type_name())),
    };
    let env = match prop("env") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(vars)) => vars
            .iter()
            .map(|(name, value)| {
                let name = OsString::from_vec(name.to_bytes());
                match value {
                    Value::Bool(false) => Ok((name, None)),
                    // PHP turns true into "1" and null into "" when it builds the environment.
                    Value::Bool(true) => Ok((name, Some("1".into()))),
                    Value::Null => Ok((name, Some(OsString::new()))),
                    value => scalar(value)
                        .map(|v| (name.clone(), Some(OsString::from_vec(v))))
                        .ok_or_else(|| format!("environment variable {name:?} is {}", value.type_name())),
                }
            })
            .collect::<Result<_, String>>()?,
        Some(other) => return Err(format!("env is {}, not an array", other.type_name())),
    };
    let stdin = match prop("input") {
        None | Some(Value::Null) => None,
        Some(value) => Some(scalar(value).ok_or_else(|| format!("input is {}, not a string", value.type_name()))?),
    };
    let seconds = match prop("timeout") {
        None | Some(Value::Null) => BACKQ_TIMEOUT_SECS_DEFAULT,
        Some(Value::Int(n)) => *n as f64,
        Some(Value::Float(f)) => *f,
        Some(other) => return Err(format!("timeout is {}, not a number", other.type_name())),
    };
    let (timeout, unlimited) = if seconds == 0.0 {
        (None, true)
    } else if seconds > 0.0 && seconds <= TIMEOUT_SECS_MAX {
        (Some(Duration::from_secs_f64(seconds)), false)
    } else {
        return Err(format!("timeout {seconds} is not a number of seconds"));
    };
    match prop("until") {
        None | Some(Value::Null) | Some(Value::Int(0)) => {}
        Some(Value::Int(until)) if *until < now => return Ok(Job::Expired(*until)),
        Some(Value::Int(_)) => {}
        Some(other) => return Err(format!("until is {}, not an integer", other.type_name())),
    }
    let spec = Spec { program, cwd, env, stdin, timeout, unlimited };
    check(&spec)?;
    Ok(Job::Run(spec))
}

/// A string or a number as the bytes PHP's string conversion gives.
fn scalar(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::Str(bytes) => Some(bytes.clone()),
        Value::Int(n) => Some(n.to_string().into_bytes()),
        // PHP prints integral floats without a fraction ("60", not "60.0").
        Value::Float(f) if f.fract() == 0.0 && f.abs() < 1e15 => Some(format!("{f:.0}").into_bytes()),
        Value::Float(f) => Some(f.to_string().into_bytes()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(body: &[u8]) -> (Format, Spec) {
        match parse(body, 1_700_000_000) {
            Ok((format, Job::Run(spec))) => (format, spec),
            other => panic!("{body:?}: {other:?}"),
        }
    }

    fn refused(body: &[u8]) -> String {
        match parse(body, 1_700_000_000) {
            Err(reason) => reason,
            other => panic!("{body:?} was accepted: {other:?}"),
        }
    }

    fn os(items: &[&str]) -> Vec<OsString> {
        items.iter().map(OsString::from).collect()
    }

    #[test]
    fn json_argv_and_shell_with_every_option() {
        let (format, spec) = run(br#"{"argv": ["touch", "/tmp/x"]}"#);
        assert_eq!(format, Format::Json);
        assert_eq!(spec.program, Program::Argv(os(&["touch", "/tmp/x"])));
        assert_eq!((spec.cwd, spec.stdin, spec.timeout), (None, None, None));
        let body =
            br#" {"shell": "cat > out", "cwd": "/srv", "env": {"A": "1", "B": null}, "stdin": "hi", "timeout_s": 2.5}"#;
        let (_, spec) = run(body);
        assert_eq!(spec.program, Program::Shell("cat > out".into()));
        assert_eq!(spec.cwd, Some(PathBuf::from("/srv")));
        assert_eq!(spec.env, vec![("A".into(), Some("1".into())), ("B".into(), None)]);
        assert_eq!(spec.stdin.as_deref(), Some(&b"hi"[..]));
        assert_eq!(spec.timeout, Some(Duration::from_millis(2500)));
    }

    #[test]
    fn bad_json_jobs_are_refused_with_the_reason() {
        assert!(refused(b"{\"argv\": [\"ls\"").starts_with("malformed JSON job: EOF while parsing"));
        assert!(
            refused(br#"{"argv": ["ls"], "timeout": 5}"#).starts_with("malformed JSON job: unknown field `timeout`")
        );
        assert_eq!(refused(br#"{"argv": []}"#), "\"argv\" is empty");
        assert_eq!(refused(br#"{"argv": ["a"], "shell": "b"}"#), "a JSON job has \"argv\" or \"shell\", not both");
        assert_eq!(refused(br#"{"cwd": "/"}"#), "a JSON job needs \"argv\" or \"shell\"");
        assert_eq!(
            refused(br#"{"shell": "x", "timeout_s": 0}"#),
            "\"timeout_s\" must be more than 0 and at most a year, not 0"
        );
        assert_eq!(refused(br#"{"argv": ["a\u0000b"]}"#), "the command has a NUL byte");
        assert_eq!(refused(br#"{"shell": "x", "env": {"A=B": "1"}}"#), "environment variable \"A=B\" cannot be set");
        assert_eq!(refused(b"{\"shell\": \"\xff\"}"), "the body is not UTF-8 (at byte 11)");
    }

    #[test]
    fn plain_text_is_a_shell_command_line() {
        let (format, spec) = run(b"echo hello >> /tmp/log\n");
        assert_eq!(format, Format::Text);
        assert_eq!(spec.program, Program::Shell("echo hello >> /tmp/log\n".into()));
        assert_eq!(refused(b"  \n"), "the body is empty");
        assert_eq!(refused(b"echo \xc3("), "the body is not UTF-8 (at byte 5)");
    }

    /// Builds backq's serialized Process by hand, as PHP writes it (checked against PHP's own
    /// output in tests/backq.rs).
    fn process(props: &[(&str, &str)]) -> Vec<u8> {
        let class = BACKQ_PROCESS_CLASS;
        let mut out = format!("O:{}:\"{class}\":{}:{{", class.len(), props.len()).into_bytes();
        for (name, value) in props {
            let mangled = format!("\0{class}\0{name}");
            out.extend(format!("s:{}:\"{mangled}\";{value}", mangled.len()).into_bytes());
        }
        out.push(b'}');
        out
    }

    #[test]
    fn backq_process_messages() {
        let body = process(&[
            ("commandline", "s:7:\"echo hi\";"),
            ("cwd", "s:4:\"/tmp\";"),
            ("env", "a:3:{s:1:\"A\";s:1:\"x\";s:1:\"B\";b:0;s:1:\"C\";i:7;}"),
            ("input", "s:2:\"in\";"),
            ("timeout", "d:1.5;"),
            ("until", "i:0;"),
        ]);
        let (format, spec) = run(&body);
        assert_eq!(format, Format::Backq);
        assert_eq!(spec.program, Program::Shell("echo hi".into()));
        assert_eq!(spec.cwd, Some(PathBuf::from("/tmp")));
        assert_eq!(spec.env, vec![("A".into(), Some("x".into())), ("B".into(), None), ("C".into(), Some("7".into()))]);
        assert_eq!(spec.stdin.as_deref(), Some(&b"in"[..]));
        assert_eq!((spec.timeout, spec.unlimited), (Some(Duration::from_millis(1500)), false));

        let body = process(&[
            ("commandline", "a:2:{i:0;s:5:\"touch\";i:1;i:42;}"),
            ("cwd", "N;"),
            ("env", "N;"),
            ("input", "N;"),
            ("timeout", "N;"),
            ("until", "i:1800000000;"),
        ]);
        let (_, spec) = run(&body);
        assert_eq!(spec.program, Program::Argv(os(&["touch", "42"])));
        assert_eq!((spec.cwd, spec.stdin), (None, None));
        assert_eq!(spec.timeout, Some(Duration::from_secs(60)), "backq's default");

        let unlimited = process(&[("commandline", "s:1:\"x\";"), ("timeout", "d:0;")]);
        assert_eq!(run(&unlimited).1.timeout, None);
        assert!(run(&unlimited).1.unlimited);
    }

    /// The fixtures were written by PHP's own serialize() (tests/fixtures/backq/make.php);
    /// the hand-built bytes above must be the same, byte for byte.
    #[test]
    fn php_fixtures_are_what_the_hand_built_bodies_are() {
        let shell = include_bytes!("../tests/fixtures/backq/shell.ser");
        let by_hand = process(&[
            ("commandline", "s:45:\"printf \"%s:%s\" \"$GREETING\" \"$(cat)\" > out.txt\";"),
            ("cwd", "s:8:\"/srv/app\";"),
            ("env", "a:3:{s:8:\"GREETING\";s:5:\"hello\";s:7:\"DROPPED\";b:0;s:5:\"COUNT\";i:7;}"),
            ("input", "s:10:\"from stdin\";"),
            ("timeout", "d:2.5;"),
            ("until", "i:0;"),
        ]);
        assert_eq!(String::from_utf8_lossy(shell), String::from_utf8_lossy(&by_hand));
        let (format, spec) = run(shell);
        assert_eq!(format, Format::Backq);
        assert_eq!(spec.program, Program::Shell("printf \"%s:%s\" \"$GREETING\" \"$(cat)\" > out.txt".into()));
        assert_eq!(spec.cwd, Some(PathBuf::from("/srv/app")));
        let env = vec![
            ("GREETING".into(), Some("hello".into())),
            ("DROPPED".into(), None),
            ("COUNT".into(), Some("7".into())),
        ];
        assert_eq!(spec.env, env);
        assert_eq!(spec.stdin.as_deref(), Some(&b"from stdin"[..]));
        assert_eq!(spec.timeout, Some(Duration::from_millis(2500)));

        let argv = include_bytes!("../tests/fixtures/backq/argv.ser");
        let (_, spec) = run(argv);
        assert_eq!(spec.program, Program::Argv(os(&["touch", "made-by-backq"])));
        assert_eq!((spec.cwd, spec.env, spec.stdin), (None, vec![], None));
        assert_eq!(spec.timeout, Some(Duration::from_secs(60)), "the constructor's 60, serialized as d:60;");

        let null_timeout = include_bytes!("../tests/fixtures/backq/null-timeout.ser");
        assert_eq!(run(null_timeout).1.timeout, Some(Duration::from_secs(60)), "backq's `?? 60`");

        let deadline = include_bytes!("../tests/fixtures/backq/deadline.ser");
        assert_eq!(parse(deadline, 1_700_000_000), Ok((Format::Backq, Job::Expired(1_600_000_000))));
        assert!(matches!(parse(deadline, 1_500_000_000), Ok((_, Job::Run(_)))));

        let other = include_bytes!("../tests/fixtures/backq/other-class.ser");
        assert_eq!(refused(other), "unknown serialized class \"ArrayObject\"");
    }

    #[test]
    fn backq_deadlines_past_are_not_run() {
        let body = process(&[("commandline", "s:1:\"x\";"), ("until", "i:1600000000;")]);
        assert_eq!(parse(&body, 1_700_000_000), Ok((Format::Backq, Job::Expired(1_600_000_000))));
    }

    #[test]
    fn other_serialized_values_are_refused() {
        let other = b"O:8:\"stdClass\":1:{s:1:\"a\";i:1;}";
        assert_eq!(refused(other), "unknown serialized class \"stdClass\"");
        assert_eq!(refused(b"a:0:{}"), "a PHP-serialized array, not a BackQ\\Message\\Process object");
        assert_eq!(refused(b"s:2:\"ab\""), "malformed PHP-serialized body: expected ';' at byte 8");
        assert_eq!(refused(&process(&[("cwd", "N;")])), "the message has no commandline");
        assert_eq!(
            refused(&process(&[("commandline", "i:5;")])),
            "the commandline is integer, not a string or an array"
        );
        assert_eq!(refused(&process(&[("commandline", "a:0:{}")])), "the commandline is an empty array");
        let negative = process(&[("commandline", "s:1:\"x\";"), ("timeout", "i:-1;")]);
        assert_eq!(refused(&negative), "timeout -1 is not a number of seconds");
        // Class names are case-insensitive in PHP.
        let lower = String::from_utf8(process(&[("commandline", "s:1:\"x\";")]))
            .expect("utf-8")
            .replace("BackQ\\Message\\Process\":", "backq\\message\\process\":");
        assert!(parse(lower.as_bytes(), 0).is_ok(), "{lower:?}");
    }
}
