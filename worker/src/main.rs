//! runnerbean-worker: long-running workers for beanstalkd-protocol queues (runnerbean and C
//! beanstalkd). `exec` runs a process per job; `apns` sends Apple push notifications.
//!
//! # Layout
//! * main.rs: the command line (clap), the exit statuses.
//! * runner.rs: the slots shared by every subcommand: reserve, touch, delete, release with
//!   back-off, bury, reconnect.
//! * life.rs: the life cycle: `--max-jobs`, `--idle-timeout`, `--max-time`, `--memory-mb`,
//!   SIGTERM and SIGINT with `--grace`.
//! * backoff.rs: release and reconnect delays.
//! * exec.rs: the `exec` handler, running a job's process; body.rs: what a job's body asks
//!   for (JSON, a backq message, a command line); php.rs: PHP's `serialize()` format.
//! * log.rs: the log on stderr.
//!
//! See docs/WORKERS.md for the job formats, the flags and running workers under systemd.

mod backoff;
mod body;
mod exec;
mod life;
mod log;
mod php;
mod runner;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::life::{Life, Limits};
use crate::runner::Settings;

/// Exit statuses, documented in `--help`.
mod exit {
    /// The worker ended as asked: a life-cycle limit, or a signal.
    pub const OK: u8 = 0;
    /// The worker stopped on an error no retry mends (it is in the log).
    pub const FAILED: u8 = 1;
    /// The command line is wrong.
    pub const USAGE: u8 = 2;
}

const AFTER_HELP: &str = "\
Exit statuses:
  0  ended as asked: --max-jobs, --idle-timeout, --max-time, --memory-mb, SIGTERM or SIGINT
  1  stopped on an error no retry mends (the log says which)
  2  usage error

See docs/WORKERS.md for the job formats and running workers under a supervisor.";

/// Long-running workers for beanstalkd-protocol queues (runnerbean, C beanstalkd).
#[derive(Parser, Debug)]
#[command(name = "runnerbean-worker", version, about, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run each job as a process: a JSON {"argv": [...]} or {"shell": "..."} body, a backq
    /// BackQ\Message\Process, or a plain command line. Exit status 0 deletes the job; a failure
    /// releases it with back-off, and buries it after --tries attempts.
    Exec(ExecArgs),
}

/// The flags every worker takes.
#[derive(Args, Debug)]
struct Common {
    /// Queue server address: HOST:PORT, HOST (port 11300) or unix:PATH.
    #[arg(long, env = "BEANSTALK_ADDR", default_value = "127.0.0.1:11300")]
    addr: String,
    /// Bury a failing job at this attempt (attempts are counted by the server, as the job's
    /// releases plus one, so the count survives a worker restart).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    tries: u32,
    /// Seconds before a failed job is ready again after its first attempt; the delay doubles
    /// with each attempt, plus up to half again at random.
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = seconds)]
    backoff: Duration,
    /// Exit 0 after this many jobs (jobs reserved and processed, not empty waits).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_jobs: Option<u64>,
    /// Exit 0 after this many seconds without a job to run.
    #[arg(long, value_name = "SECONDS", value_parser = positive_seconds)]
    idle_timeout: Option<Duration>,
    /// Take no new job after this many seconds, and exit 0 once the running ones finish.
    #[arg(long, value_name = "SECONDS", value_parser = positive_seconds)]
    max_time: Option<Duration>,
    /// Take no new job once the worker's own resident memory is over this many MiB, and exit
    /// 0 once the running ones finish.
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
    memory_mb: Option<u64>,
    /// After SIGTERM or SIGINT, seconds that running jobs have to finish before they are
    /// stopped and their jobs go back to ready (a second signal stops them at once).
    #[arg(long, value_name = "SECONDS", default_value = "30", value_parser = seconds)]
    grace: Duration,
}

impl Common {
    fn limits(&self) -> Limits {
        Limits {
            max_jobs: self.max_jobs,
            idle: self.idle_timeout,
            max_time: self.max_time,
            memory_bytes: self.memory_mb.map(|mib| mib.saturating_mul(1 << 20)),
            grace: self.grace,
        }
    }
}

/// `exec`.
#[derive(Args, Debug)]
struct ExecArgs {
    /// Tube to take jobs from (repeatable). `default` is watched only when named.
    #[arg(short, long = "tube", value_name = "TUBE", default_value = "process")]
    tubes: Vec<String>,
    /// How many jobs run at once (one connection to the server each).
    #[arg(short, long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    concurrency: u64,
    /// Seconds a job may run when its body sets no limit (default: no limit); then its
    /// process group is stopped and the attempt counts as failed.
    #[arg(long, value_name = "SECONDS", value_parser = positive_seconds)]
    timeout: Option<Duration>,
    #[command(flatten)]
    common: Common,
}

/// Seconds, possibly with a fraction: `10`, `0.5`.
fn seconds(text: &str) -> Result<Duration, String> {
    let value: f64 = text.parse().map_err(|_| format!("{text:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(value).map_err(|_| format!("{text:?} is not a number of seconds"))
}

/// Seconds, more than zero.
fn positive_seconds(text: &str) -> Result<Duration, String> {
    let value = seconds(text)?;
    if value.is_zero() {
        return Err("must be more than 0".to_owned());
    }
    Ok(value)
}

/// beanstalkd's rule for tube names: 1 to 200 of letters, digits and `-+/;.$_()`, not starting
/// with `-`. Checked before connecting, so a typo is a usage error instead of a worker that
/// retries forever.
fn check_tube(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-+/;.$_()".contains(c);
    if name.is_empty()
        || name.len() > runnerbean_client::TUBE_NAME_BYTES_MAX
        || name.starts_with('-')
        || !name.chars().all(allowed)
    {
        return Err(format!(
            "{name:?} is not a tube name (1 to 200 of letters, digits and -+/;.$_(), not starting with -)"
        ));
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit::USAGE } else { exit::OK });
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            log::error(&format!("cannot start: {e}"));
            return ExitCode::from(exit::FAILED);
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Cmd::Exec(args) => {
            let settings = match settings(&args.common, args.tubes, args.concurrency) {
                Ok(settings) => settings,
                Err(e) => return usage(&e),
            };
            let handler = exec::Exec { timeout: args.timeout };
            work(settings, args.common.limits(), handler).await
        }
    }
}

fn settings(common: &Common, tubes: Vec<String>, concurrency: u64) -> Result<Settings, String> {
    for tube in &tubes {
        check_tube(tube)?;
    }
    Ok(Settings {
        addr: common.addr.clone(),
        tubes,
        concurrency: usize::try_from(concurrency).unwrap_or(1),
        tries: common.tries,
        backoff: common.backoff,
    })
}

fn usage(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(exit::USAGE)
}

/// Runs the worker's slots under its life cycle; the exit status.
async fn work<H: runner::Handler>(settings: Settings, limits: Limits, handler: H) -> ExitCode {
    let life = Life::new(limits);
    let supervisor = match life.supervise() {
        Ok(supervisor) => tokio::spawn(supervisor),
        Err(e) => {
            log::error(&format!("cannot handle signals: {e}"));
            return ExitCode::from(exit::FAILED);
        }
    };
    log::info(&format!(
        "watching {} on {} with {} slot{}",
        settings.tubes.join(", "),
        settings.addr,
        settings.concurrency,
        if settings.concurrency == 1 { "" } else { "s" }
    ));
    runner::run(settings, life.clone(), handler).await;
    supervisor.abort();
    if life.failed() {
        return ExitCode::from(exit::FAILED);
    }
    log::info("done");
    ExitCode::from(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tube_names_follow_beanstalkd() {
        for good in ["process", "a-b", "x+y/z;1.$_()", &"t".repeat(200)] {
            assert_eq!(check_tube(good), Ok(()), "{good}");
        }
        for bad in ["", "-x", "a b", "a*b", "é", &"t".repeat(201)] {
            assert!(check_tube(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn seconds_take_fractions() {
        assert_eq!(seconds("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(seconds("0"), Ok(Duration::ZERO));
        assert!(positive_seconds("0").is_err());
        assert!(seconds("-1").is_err());
        assert!(seconds("x").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
