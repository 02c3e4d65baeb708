//! Command-line flags, parsed the way beanstalkd parses them.
//!
//! beanstalkd's parser is small and has visible habits, which scripts and
//! init files rely on: single-letter flags may be grouped (`-VVp11300`), a
//! flag's value is the rest of its word or else the next word (even one
//! starting with `-`), the last `-f`/`-F` wins, sizes are one whole decimal
//! (a sign and leading blanks are accepted, as `sscanf("%zu")` accepts
//! them), and every usage error prints a message and the usage text and
//! exits with status 5. Flags are acted on in order, so `-x -h` fails on
//! `-x` and `-h -x` prints the help.
//!
//! runnerbean's own options are long flags, which beanstalkd's parser never
//! accepted, so they cannot clash with an existing command line:
//! `--cores N`, `--io uring|epoll`, `--connections-max N`, `--strict`,
//! `--metrics ADDR` and `--metrics-tubes-max N`.

use crate::metrics::METRICS_TUBES_MAX_DEFAULT;
use crate::protocol::{JOB_BYTES_MAX_DEFAULT, JOB_BYTES_MAX_LIMIT};

pub const PORT_DEFAULT: &str = "11300";
pub const BINLOG_BYTES_DEFAULT: u64 = 10_485_760;
pub const FSYNC_MS_DEFAULT: u64 = 50;
pub const EXIT_USAGE: i32 = 5;

/// The most connections served at once unless `--connections-max` says
/// otherwise; beyond it accepting pauses and the kernel's listen backlog
/// holds new connections until others leave. beanstalkd has no limit but
/// the descriptor table. This one is there so that what clients can make
/// the server hold has a bound the operator chose; the default is far above
/// the 19,000 concurrent connections runnerbean has been shown to serve in
/// milliseconds (and above what the usual descriptor limits allow), so it
/// changes nothing for a deployment that works today, while at a few KiB
/// per idle connection it still bounds their cost to a few hundred MB.
pub const CONNECTIONS_MAX_DEFAULT: usize = 65_536;

/// Environment variable that picks the I/O back end (`uring` or `epoll`)
/// when `--io` is not given.
pub const IO_ENV: &str = "RUNNERBEAN_IO";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
    /// `-f0`: sync before every acknowledgement.
    Always,
    /// `-f MS`: sync at least every MS milliseconds.
    EveryMs(u64),
    /// `-F`: never sync.
    Never,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoChoice {
    /// io_uring when the kernel allows it, otherwise epoll.
    Auto,
    Uring,
    Epoll,
}

/// The most cores `--cores` takes: the mailbox has a ring per ordered pair
/// of cores, 64 cores 4,032 of them (about 170 MiB; docs/ARCHITECTURE.md,
/// "How far it scales").
pub const CORES_MAX: u32 = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `-l`: an address, or `unix:PATH`.
    pub addr: Option<String>,
    /// `-p`: a port number or service name.
    pub port: String,
    pub user: Option<String>,
    pub max_job_size: u64,
    pub binlog_dir: Option<String>,
    pub binlog_size: u64,
    pub fsync: Fsync,
    pub verbosity: u8,
    pub cores: u32,
    pub io: IoChoice,
    /// `--connections-max`: connections served at once.
    pub connections_max: usize,
    /// `--strict`: runnerbean's own commands are answered UNKNOWN_COMMAND,
    /// as C beanstalkd answers them.
    pub strict: bool,
    /// `--metrics`: the address to serve Prometheus metrics on, as given
    /// (resolved at start, see `metrics::parse_addr`).
    pub metrics: Option<String>,
    /// `--metrics-tubes-max`: the most tubes the metrics export.
    pub metrics_tubes_max: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            addr: None,
            port: PORT_DEFAULT.to_string(),
            user: None,
            max_job_size: JOB_BYTES_MAX_DEFAULT,
            binlog_dir: None,
            binlog_size: BINLOG_BYTES_DEFAULT,
            fsync: Fsync::EveryMs(FSYNC_MS_DEFAULT),
            verbosity: 0,
            cores: 1,
            io: IoChoice::Auto,
            connections_max: CONNECTIONS_MAX_DEFAULT,
            strict: false,
            metrics: None,
            metrics_tubes_max: METRICS_TUBES_MAX_DEFAULT,
        }
    }
}

impl Config {
    /// The unix socket path when `-l unix:PATH` was given.
    pub fn unix_path(&self) -> Option<&str> {
        self.addr.as_deref().and_then(|a| a.strip_prefix("unix:"))
    }
}

/// The outcome of parsing: run, or print and exit.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Run {
        config: Config,
        warnings: Vec<String>,
    },
    Exit {
        code: i32,
        stdout: String,
        stderr: String,
    },
    /// `--export-binlog DIR OUT`: write the jobs of the log in DIR as a C
    /// beanstalkd binlog in OUT, and exit.
    Export {
        dir: String,
        out: String,
    },
}

pub fn usage(progname: &str) -> String {
    format!(
        "Use: {progname} [OPTIONS]\n\
         \n\
         Options:\n \
         -b DIR   keep a write-ahead log of jobs in DIR\n \
         -f MS    sync the log to disk at least every MS milliseconds (default {FSYNC_MS_DEFAULT});\n          \
         -f0 syncs before every reply that acknowledges a change\n \
         -F       never sync the log to disk\n \
         -l ADDR  address to listen on, or unix:PATH (default: all IPv4 addresses)\n \
         -p PORT  port to listen on (default {PORT_DEFAULT})\n \
         -u USER  run as USER and its group once the socket is bound\n \
         -z BYTES largest job body in bytes (default {JOB_BYTES_MAX_DEFAULT}, at most {JOB_BYTES_MAX_LIMIT})\n \
         -s BYTES size of each log file in bytes (default {BINLOG_BYTES_DEFAULT})\n \
         -v       print the version and exit\n \
         -V       log more (repeat for more detail)\n \
         -h       print this help and exit\n \
         --cores N       number of cores and queue shards (default 1, at most 64)\n \
         --io uring|epoll  I/O back end (default: io_uring when available; also ${IO_ENV})\n \
         --connections-max N  connections served at once; more wait to be accepted (default {CONNECTIONS_MAX_DEFAULT})\n \
         --metrics ADDR  serve Prometheus metrics at http://ADDR/metrics (HOST:PORT, or :PORT for every address)\n \
         --metrics-tubes-max N  export the N tubes with the most jobs at most (default {METRICS_TUBES_MAX_DEFAULT})\n \
         --strict        answer runnerbean's own commands (clear-tube, list-jobs) UNKNOWN_COMMAND, as beanstalkd does\n \
         --export-binlog DIR OUT  write the jobs of the log in DIR as a C beanstalkd binlog in OUT, and exit\n"
    )
}

pub fn version_line() -> String {
    format!("runnerbean {} (beanstalkd 1.13 protocol)\n", env!("CARGO_PKG_VERSION"))
}

/// Reads a size the way `sscanf("%zu%c")` does: leading blanks, an
/// optional sign (a minus wraps around), digits, and nothing after.
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let (negative, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // strtoull saturates on overflow; sscanf still reports one conversion.
    let value = digits.bytes().try_fold(0u64, |v, b| v.checked_mul(10)?.checked_add(u64::from(b - b'0')));
    let value = value.unwrap_or(u64::MAX);
    Some(if negative { value.wrapping_neg() } else { value })
}

/// Parses the arguments after the program name.
#[allow(clippy::result_large_err)] // the error is the exit itself, built once
pub fn parse(progname: &str, args: &[String]) -> Parsed {
    let mut config = Config::default();
    let mut warnings = Vec::new();
    let fail = |message: String| Parsed::Exit {
        code: EXIT_USAGE,
        stdout: String::new(),
        stderr: format!("{progname}: {message}\n{}", usage(progname)),
    };
    let mut words = args.iter();
    while let Some(word) = words.next() {
        if let Some(long) = word.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            // The one long flag without a value.
            if name == "strict" {
                if inline.is_some() {
                    return fail("flag takes no argument: --strict".to_string());
                }
                config.strict = true;
                continue;
            }
            let value = match inline.or_else(|| words.next().cloned()) {
                Some(v) => v,
                None => return fail(format!("flag requires an argument: --{name}")),
            };
            match name {
                "export-binlog" => {
                    let Some(out) = words.next() else {
                        return fail("flag requires two arguments: --export-binlog DIR OUT".to_string());
                    };
                    return Parsed::Export { dir: value, out: out.clone() };
                }
                "cores" => match value.parse::<u32>() {
                    Ok(n) if (1..=CORES_MAX).contains(&n) => config.cores = n,
                    Ok(n) if n > CORES_MAX => {
                        return fail(format!("invalid number of cores: {value} (at most {CORES_MAX})"));
                    }
                    _ => return fail(format!("invalid number of cores: {value}")),
                },
                "connections-max" => match value.parse::<usize>() {
                    Ok(n) if n >= 1 => config.connections_max = n,
                    _ => return fail(format!("invalid number of connections: {value}")),
                },
                "metrics" => config.metrics = Some(value),
                "metrics-tubes-max" => match value.parse::<usize>() {
                    Ok(n) => config.metrics_tubes_max = n,
                    _ => return fail(format!("invalid number of tubes: {value}")),
                },
                "io" => match value.as_str() {
                    "uring" | "io_uring" => config.io = IoChoice::Uring,
                    "epoll" => config.io = IoChoice::Epoll,
                    _ => return fail(format!("invalid I/O back end: {value} (use uring or epoll)")),
                },
                _ => return fail(format!("unknown flag: --{name}")),
            }
            continue;
        }
        let Some(flags) = word.strip_prefix('-').filter(|f| !f.is_empty()) else {
            return fail(format!("unknown argument: {word}"));
        };
        let mut rest = flags;
        while let Some(flag) = rest.chars().next() {
            let before = &word[word.len() - rest.len() - 1..];
            rest = &rest[flag.len_utf8()..];
            // A value is the rest of this word, or else the next word.
            let mut value = |name: &str| -> Result<String, Parsed> {
                if !rest.is_empty() {
                    let v = rest.to_string();
                    rest = "";
                    Ok(v)
                } else {
                    words.next().cloned().ok_or_else(|| fail(format!("flag requires an argument: {name}")))
                }
            };
            let size = |v: String| parse_size(&v).ok_or_else(|| fail(format!("invalid size: {v}")));
            let step = match flag {
                'p' => value("-p").map(|v| config.port = v),
                'l' => value("-l").map(|v| config.addr = Some(v)),
                'z' => value("-z").and_then(size).map(|z| {
                    if z > JOB_BYTES_MAX_LIMIT {
                        warnings.push(format!("maximum job size was set to {JOB_BYTES_MAX_LIMIT}"));
                    }
                    config.max_job_size = z.min(JOB_BYTES_MAX_LIMIT);
                }),
                's' => value("-s").and_then(size).map(|s| config.binlog_size = s),
                'c' | 'n' => {
                    warnings.push(format!("-{flag} flag was removed. binlog is always compacted."));
                    Ok(())
                }
                'f' => value("-f").and_then(size).map(|ms| {
                    config.fsync = if ms == 0 { Fsync::Always } else { Fsync::EveryMs(ms) };
                }),
                'F' => {
                    config.fsync = Fsync::Never;
                    Ok(())
                }
                'u' => value("-u").map(|u| config.user = Some(u)),
                'b' => value("-b").map(|b| config.binlog_dir = Some(b)),
                'h' => return Parsed::Exit { code: 0, stdout: String::new(), stderr: usage(progname) },
                'v' => return Parsed::Exit { code: 0, stdout: version_line(), stderr: String::new() },
                'V' => {
                    config.verbosity = config.verbosity.saturating_add(1);
                    Ok(())
                }
                // beanstalkd prints the flag with the character before it.
                _ => Err(fail(format!("unknown flag: {before}"))),
            };
            if let Err(exit) = step {
                return exit;
            }
        }
    }
    Parsed::Run { config, warnings }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Config {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        match parse("beanstalkd", &args) {
            Parsed::Run { config, .. } => config,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    fn exit(args: &[&str]) -> (i32, String, String) {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        match parse("beanstalkd", &args) {
            Parsed::Exit { code, stdout, stderr } => (code, stdout, stderr),
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let c = run(&[]);
        assert_eq!(c.port, "11300");
        assert_eq!(c.addr, None);
        assert_eq!(c.max_job_size, 65535);
        assert_eq!(c.binlog_size, 10485760);
        assert_eq!(c.fsync, Fsync::EveryMs(50));
        assert_eq!(c.cores, 1);
    }

    #[test]
    fn values_attached_separate_and_grouped() {
        assert_eq!(run(&["-p11300"]).port, "11300");
        assert_eq!(run(&["-p", "1234"]).port, "1234");
        assert_eq!(run(&["-l", "127.0.0.1"]).addr.as_deref(), Some("127.0.0.1"));
        let c = run(&["-VVp11300", "-f0", "-F"]);
        assert_eq!((c.verbosity, c.port.as_str(), c.fsync), (2, "11300", Fsync::Never));
        let c = run(&["-VFVu", "nobody"]);
        assert_eq!((c.verbosity, c.user.as_deref(), c.fsync), (2, Some("nobody"), Fsync::Never));
        assert_eq!(run(&["-f1234"]).fsync, Fsync::EveryMs(1234));
        assert_eq!(run(&["-f1234", "-F"]).fsync, Fsync::Never);
        assert_eq!(run(&["-F", "-f", "7"]).fsync, Fsync::EveryMs(7));
        assert_eq!(run(&["-Fb", "/tmp/x"]).binlog_dir.as_deref(), Some("/tmp/x"));
        assert_eq!(run(&["-z", "10"]).max_job_size, 10);
        assert_eq!(run(&["-s", "4096"]).binlog_size, 4096);
        // A value may start with '-'.
        assert_eq!(run(&["-u", "-x"]).user.as_deref(), Some("-x"));
    }

    #[test]
    fn size_parsing_follows_sscanf() {
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size(" 12"), Some(12));
        assert_eq!(parse_size("+12"), Some(12));
        assert_eq!(parse_size("-1"), Some(u64::MAX));
        assert_eq!(parse_size("99999999999999999999999"), Some(u64::MAX));
        for bad in ["", "12abc", "12 ", "abc", "-", "0x10"] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn job_size_is_capped_with_a_warning() {
        let args = vec!["-z".to_string(), "2000000000".to_string()];
        let Parsed::Run { config, warnings } = parse("rb", &args) else { panic!() };
        assert_eq!(config.max_job_size, 1 << 30);
        assert_eq!(warnings, vec!["maximum job size was set to 1073741824".to_string()]);
    }

    #[test]
    fn usage_errors_exit_5() {
        let (code, out, err) = exit(&["-x"]);
        assert_eq!((code, out.as_str()), (5, ""));
        assert!(err.starts_with("beanstalkd: unknown flag: -x\nUse: beanstalkd [OPTIONS]\n"), "{err}");
        assert!(exit(&["-Vx"]).2.starts_with("beanstalkd: unknown flag: Vx\n"));
        assert!(exit(&["-p"]).2.starts_with("beanstalkd: flag requires an argument: -p\n"));
        assert!(exit(&["-z", "12abc"]).2.starts_with("beanstalkd: invalid size: 12abc\n"));
        assert!(exit(&["stray"]).2.starts_with("beanstalkd: unknown argument: stray\n"));
        assert!(exit(&["-"]).2.starts_with("beanstalkd: unknown argument: -\n"));
        assert!(exit(&["--bogus", "1"]).2.starts_with("beanstalkd: unknown flag: --bogus\n"));
        assert!(exit(&["--cores", "0"]).2.starts_with("beanstalkd: invalid number of cores: 0\n"));
        assert!(exit(&["--cores", "65"]).2.starts_with("beanstalkd: invalid number of cores: 65 (at most 64)\n"));
        assert_eq!(run(&["--cores", "64"]).cores, 64);
        for bad in ["0", "-1", "x", ""] {
            let err = exit(&["--connections-max", bad]).2;
            assert!(err.starts_with(&format!("beanstalkd: invalid number of connections: {bad}\n")), "{err}");
        }
        assert_eq!(exit(&["-x", "-h"]).0, 5);
    }

    #[test]
    fn help_and_version_exit_0() {
        let (code, out, err) = exit(&["-h", "-x"]);
        assert_eq!((code, out.as_str()), (0, ""));
        assert!(err.starts_with("Use: beanstalkd [OPTIONS]\n"));
        let (code, out, err) = exit(&["-v"]);
        assert_eq!((code, err.as_str()), (0, ""));
        assert!(out.starts_with("runnerbean "));
    }

    #[test]
    fn long_flags() {
        assert_eq!(run(&["--cores", "1"]).cores, 1);
        assert_eq!(run(&["--cores=3"]).cores, 3);
        assert_eq!(run(&["--io", "epoll"]).io, IoChoice::Epoll);
        assert_eq!(run(&["--io=uring"]).io, IoChoice::Uring);
        assert_eq!(run(&[]).connections_max, CONNECTIONS_MAX_DEFAULT);
        assert_eq!(run(&["--connections-max", "3"]).connections_max, 3);
        assert_eq!(run(&["--connections-max=100000"]).connections_max, 100_000);
        assert_eq!(run(&["-l", "unix:/tmp/s"]).unix_path(), Some("/tmp/s"));
        assert!(!run(&[]).strict);
        assert!(run(&["--strict"]).strict);
        // It takes no value: what follows is the next flag.
        let c = run(&["--strict", "-p", "7"]);
        assert!(c.strict && c.port == "7");
        assert!(exit(&["--strict=yes"]).2.starts_with("beanstalkd: flag takes no argument: --strict\n"));
        assert_eq!(run(&[]).metrics, None);
        assert_eq!(run(&["--metrics", "127.0.0.1:9127"]).metrics.as_deref(), Some("127.0.0.1:9127"));
        assert_eq!(run(&["--metrics=:9127"]).metrics.as_deref(), Some(":9127"));
        assert_eq!(run(&[]).metrics_tubes_max, METRICS_TUBES_MAX_DEFAULT);
        assert_eq!(run(&["--metrics-tubes-max", "0"]).metrics_tubes_max, 0);
        assert!(exit(&["--metrics-tubes-max", "x"]).2.starts_with("beanstalkd: invalid number of tubes: x\n"));
        assert!(exit(&["--metrics"]).2.starts_with("beanstalkd: flag requires an argument: --metrics\n"));
    }
}
