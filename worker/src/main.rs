//! runnerbean-worker: long-running workers for beanstalkd-protocol queues (runnerbean and C
//! beanstalkd). `exec` runs a process per job; `apns` sends Apple push notifications.
//!
//! # Layout
//! * main.rs: the command line (clap), the exit statuses.
//! * runner.rs: the slots shared by every subcommand: reserve, touch, delete, release with
//!   back-off, bury, reconnect.
//! * life.rs: the life cycle: `--max-jobs`, `--idle-timeout`, `--max-time`, `--memory-mb`,
//!   SIGTERM, SIGINT and SIGHUP with `--grace`.
//! * backoff.rs: release and reconnect delays.
//! * exec.rs: the `exec` handler, running a job's process; body.rs: what a job's body asks
//!   for (JSON, a backq message, a command line); php.rs: PHP's `serialize()` format.
//! * apns.rs: the `apns` handler, one push notification per job; provider.rs: the HTTP/2
//!   connection to APNs; token.rs: the ES256 provider tokens.
//! * log.rs: the log on stderr.
//!
//! See docs/WORKERS.md for the job formats, the flags and running workers under systemd.

mod apns;
mod backoff;
mod body;
mod exec;
mod life;
mod log;
mod php;
mod provider;
mod runner;
mod token;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
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
  0  ended as asked: --max-jobs, --idle-timeout, --max-time, --memory-mb, SIGTERM, SIGINT, SIGHUP
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
    /// Send each job as an Apple push notification over the HTTP/2 provider API: a JSON
    /// {"token": "<hex>", "payload": {...}} body. Dead device tokens (410, 400 BadDeviceToken)
    /// are deleted and recorded on --dead-tokens-tube; 429 and 5xx are retried with back-off;
    /// other refusals are buried.
    Apns(Box<ApnsArgs>),
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
    /// After SIGTERM, SIGINT or SIGHUP, seconds that running jobs have to finish before they are
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

/// `apns`.
#[derive(Args, Debug)]
struct ApnsArgs {
    /// Tube to take jobs from (repeatable). `default` is watched only when named.
    #[arg(short, long = "tube", value_name = "TUBE", default_value = "apns")]
    tubes: Vec<String>,
    /// How many notifications are in flight at once, all on one HTTP/2 connection to APNs
    /// (and one connection to the queue server each).
    #[arg(short, long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    concurrency: u64,
    /// Token authentication: the .p8 signing key from Apple (with --key-id and --team-id).
    #[arg(long, value_name = "PATH", requires_all = ["key_id", "team_id"], conflicts_with_all = ["cert", "cert_key"])]
    key_file: Option<PathBuf>,
    /// Token authentication: the key's 10-character id.
    #[arg(long, value_name = "ID", requires = "key_file")]
    key_id: Option<String>,
    /// Token authentication: the Apple developer team's 10-character id.
    #[arg(long, value_name = "ID", requires = "key_file")]
    team_id: Option<String>,
    /// Certificate authentication: the client certificate, PEM, with --cert-key. (`openssl
    /// pkcs12 -in cert.p12 -out cert.pem -nodes` turns a .p12 into one PEM file with both,
    /// which can be given to both flags.)
    #[arg(long, value_name = "PATH", requires = "cert_key")]
    cert: Option<PathBuf>,
    /// Certificate authentication: the certificate's private key, PEM.
    #[arg(long, value_name = "PATH", requires = "cert")]
    cert_key: Option<PathBuf>,
    /// The apns-topic (usually the app's bundle id) of jobs that name none.
    #[arg(long)]
    topic: Option<String>,
    /// Send to Apple's sandbox (development) endpoint instead of production.
    #[arg(long, conflicts_with = "apns_url")]
    sandbox: bool,
    /// Send to this endpoint instead of Apple's (https://HOST[:PORT]), for tests and private
    /// relays.
    #[arg(long, value_name = "URL")]
    apns_url: Option<String>,
    /// Also trust the CA certificates in this PEM file (for a test server or a relay).
    #[arg(long, value_name = "PATH")]
    ca_file: Option<PathBuf>,
    /// Where records of dead device tokens go, as JSON, for the app to clean up.
    #[arg(long, value_name = "TUBE", default_value = "apns-dead-tokens")]
    dead_tokens_tube: String,
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
        Cmd::Apns(args) => {
            let settings = match settings(&args.common, args.tubes.clone(), args.concurrency) {
                Ok(settings) => settings,
                Err(e) => return usage(&e),
            };
            let handler = match apns_handler(&args) {
                Ok(handler) => handler,
                Err(Setup::Usage(e)) => return usage(&e),
                Err(Setup::Failed(e)) => {
                    log::error(&e);
                    return ExitCode::from(exit::FAILED);
                }
            };
            work(settings, args.common.limits(), handler).await
        }
    }
}

/// Why a worker cannot start.
enum Setup {
    /// The command line is wrong.
    Usage(String),
    /// A file it names cannot be used.
    Failed(String),
}

fn apns_handler(args: &ApnsArgs) -> Result<apns::Apns, Setup> {
    check_tube(&args.dead_tokens_tube).map_err(Setup::Usage)?;
    let url = match (&args.apns_url, args.sandbox) {
        (Some(url), _) => url.as_str(),
        (None, true) => provider::SANDBOX_URL,
        (None, false) => provider::PRODUCTION_URL,
    };
    let endpoint = provider::Endpoint::parse(url).map_err(|e| Setup::Usage(format!("--apns-url: {e}")))?;
    let auth = match (&args.key_file, &args.cert) {
        (Some(key_file), None) => {
            let pem = std::fs::read(key_file)
                .map_err(|e| Setup::Failed(format!("--key-file {}: {}", key_file.display(), exec::describe_io(&e))))?;
            let key_id = args.key_id.as_deref().unwrap_or_default();
            let team_id = args.team_id.as_deref().unwrap_or_default();
            let signer = token::Signer::new(&pem, key_id, team_id)
                .map_err(|e| Setup::Failed(format!("--key-file {}: {e}", key_file.display())))?;
            apns::Auth::Token(signer)
        }
        (None, Some(_)) => apns::Auth::Certificate,
        _ => return Err(Setup::Usage("give --key-file, --key-id and --team-id (token authentication) or --cert and --cert-key (certificate authentication)".to_owned())),
    };
    let client = args.cert.as_deref().zip(args.cert_key.as_deref());
    let tls = provider::tls_config(args.ca_file.as_deref(), client).map_err(Setup::Failed)?;
    Ok(apns::Apns {
        provider: Arc::new(provider::Provider::new(endpoint, tls)),
        auth,
        topic: args.topic.clone(),
        dead_tokens_tube: args.dead_tokens_tube.clone(),
    })
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
