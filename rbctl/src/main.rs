//! rbctl: inspect and operate the queues of a beanstalkd-protocol server (runnerbean or C
//! beanstalkd) from the command line.
//!
//! # Layout
//! * main.rs: the command line (clap), the exit codes, and turning every failure into one line
//!   on stderr.
//! * jobs.rs: put, reserve, peek, jobs, delete, bury, kick, touch, release.
//! * report.rs: stats and tubes, as aligned tables or JSON.
//! * manage.rs: pause, clear, move.
//! * tail.rs: tail.
//! * top.rs: top, full-screen on a terminal and plain lines elsewhere.
//! * raw.rs: raw, an interactive protocol session.
//! * web/: web, the console in a browser (an axum server with its page embedded).
//! * out.rs: writing to stdout, tables, the progress bar, confirmation prompts.
//!
//! rbctl is one binary crate built on the `runnerbean-client` library (a separate crate, so that
//! programs can use the library without rbctl's terminal dependencies).
//!
//! # Invariants
//! * Every failure ends as one line `rbctl: ...` on stderr and one of the [`exit`] codes;
//!   nothing panics (a panic hook turns a bug into the same one line, exit code 70).
//! * Nothing is written to stdout but the command's output, so scripts can read it.

mod jobs;
mod manage;
mod out;
mod raw;
mod report;
mod tail;
mod top;
mod web;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use runnerbean_client::{Client, Error};

/// Exit codes, documented in `rbctl --help`.
pub mod exit {
    /// The command did what it was asked.
    pub const OK: u8 = 0;
    /// The server said no: no such job or tube, no job in time, job too big, draining, ...
    pub const REFUSED: u8 = 1;
    /// The command line is wrong (clap's code for usage errors).
    pub const USAGE: u8 = 2;
    /// rbctl cannot talk to the server: cannot connect, connection lost, no reply in time,
    /// or replies that are not the protocol.
    pub const CONNECTION: u8 = 3;
    /// A local file or stream failed: an input file cannot be read, stdout is closed.
    pub const LOCAL_IO: u8 = 4;
    /// The user answered no at a confirmation prompt.
    pub const CANCELLED: u8 = 5;
    /// `put --require-workers` found no worker watching the tube, and put nothing.
    pub const NO_WORKERS: u8 = 6;
    /// A bug in rbctl (the panic hook's code, as sysexits' EX_SOFTWARE).
    pub const BUG: u8 = 70;
}

const AFTER_HELP: &str = "\
Exit codes:
  0  done
  1  the server refused (no such job or tube, no job in time, job too big, draining...)
  2  usage error
  3  cannot connect, connection lost, no reply in time, or not a beanstalkd server
  4  local I/O error (cannot read an input file, stdout closed)
  5  cancelled at a confirmation prompt
  6  put --require-workers: no worker watches the tube; nothing was put
  70 a bug in rbctl";

/// A command-line client for beanstalkd-protocol servers (runnerbean, C beanstalkd).
#[derive(Parser, Debug)]
#[command(name = "rbctl", version, about, after_help = AFTER_HELP)]
struct Cli {
    /// Server address: HOST:PORT, HOST (port 11300) or unix:PATH. `web` takes it more than
    /// once, for several servers.
    #[arg(long, global = true, env = "BEANSTALK_ADDR", default_value = "127.0.0.1:11300", action = clap::ArgAction::Append)]
    addr: Vec<String>,

    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Put a job (body from the argument, --file, or stdin); prints its id.
    Put(jobs::PutArgs),
    /// Reserve a job and print its body; without --delete the job goes back to ready when
    /// rbctl exits.
    Reserve(jobs::ReserveArgs),
    /// Print a job's body: by id, or the next ready, delayed or buried job of a tube.
    Peek(jobs::PeekArgs),
    /// List the ids of a tube's ready (or --delayed, or --buried) jobs in the order the server
    /// would take them: all of them from runnerbean (list-jobs), only the first from servers
    /// without it (C beanstalkd), which rbctl says on stderr.
    Jobs(jobs::JobsArgs),
    /// Delete jobs by id.
    Delete(jobs::IdsArgs),
    /// Bury a ready or delayed job (rbctl reserves it first: only the reserving connection may
    /// bury).
    Bury(jobs::BuryArgs),
    /// Kick up to N buried (or, if none, delayed) jobs of a tube, or one job with --job.
    Kick(jobs::KickArgs),
    /// Touch a job: reserves it, restarts its time-to-run and gives it back (only the
    /// connection that reserved a job may touch it, so this checks that the job can be held).
    Touch(jobs::IdArgs),
    /// Release a ready, delayed or buried job with a new priority and delay (rbctl reserves it
    /// first: only the reserving connection may release).
    Release(jobs::ReleaseArgs),
    /// Server, tube (--tube) or job (--job) statistics, as a table or --json.
    Stats(report::StatsArgs),
    /// Every tube with its job counts, waiting workers and put/delete rates.
    Tubes(report::TubesArgs),
    /// Pause a tube: no job is reserved from it for SECONDS (0 ends a pause).
    Pause(manage::PauseArgs),
    /// Delete every job of a tube in the given states (all states by default): with one
    /// clear-tube command on runnerbean, job by job on servers without it (C beanstalkd).
    Clear(manage::ClearArgs),
    /// Move ready and buried jobs to another tube: each is put again with the same body,
    /// priority and time-to-run, then deleted. Not preserved: the id (jobs get new ones), the
    /// buried state (moved jobs arrive ready), the age and the counters (reserves, releases,
    /// buries, kicks, timeouts).
    Move(manage::MoveArgs),
    /// Print jobs of a tube as they arrive, giving them back unchanged (or consuming them with
    /// --delete).
    Tail(tail::TailArgs),
    /// A live view of every tube and the server, refreshed each second; plain lines when stdout
    /// is not a terminal.
    Top(top::TopArgs),
    /// An interactive protocol session: type commands, see the server's replies.
    Raw(raw::RawArgs),
    /// A web console for one or more servers (--addr once per server): every tube with live
    /// counts and rates, a tube's jobs with their bodies, and put, kick, delete, clear, pause
    /// and move. It listens on 127.0.0.1:8080 by default; any address but a loopback one
    /// needs --token. A move is a reserve, a put and a delete, not atomic: see the section
    /// "The web console" of docs/OPERATIONS.md.
    Web(web::WebArgs),
}

/// A failure as rbctl reports it: one line and an exit code.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub code: u8,
}

impl Failure {
    /// A failure with this message and exit code.
    pub fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure { message: message.into(), code }
    }

    /// A failure of a local file or stream.
    pub fn local(what: &str, e: std::io::Error) -> Failure {
        Failure::new(exit::LOCAL_IO, format!("{what}: {}", describe_io(&e)))
    }
}

/// A client error in the words of the thing it was about: `what` names it ("job 5",
/// "tube \"x\""), and is used for the server's refusals, which are about it.
pub fn about(what: &str, e: Error) -> Failure {
    match e {
        Error::NotFound => Failure::new(exit::REFUSED, format!("{what} not found")),
        e if e.is_server_reply() => Failure::new(exit::REFUSED, format!("{what}: {e}")),
        e => Failure::from(e),
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let code = if e.is_server_reply() { exit::REFUSED } else { exit::CONNECTION };
        let code = if matches!(e, Error::InvalidArgument(_)) { exit::USAGE } else { code };
        Failure::new(code, e.to_string())
    }
}

/// An I/O error as one lower-case phrase without "(os error N)".
pub fn describe_io(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or_default();
    let mut chars = text.chars();
    chars.next().map(|first| first.to_lowercase().chain(chars).collect()).unwrap_or_default()
}

/// Connects to the server the command line names.
pub async fn connect(addr: &str) -> Result<Client, Failure> {
    Client::connect(addr).await.map_err(Failure::from)
}

/// The quoted name of a tube, for messages: `tube "x"`.
pub fn tube_name(tube: &str) -> String {
    format!("tube {tube:?}")
}

/// Arguments naming one tube, shared by several subcommands.
#[derive(Args, Debug)]
pub struct TubeArg {
    /// The tube.
    #[arg(short, long, default_value = "default")]
    pub tube: String,
}

fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        eprintln!("rbctl: internal error{at}; please report it");
        std::process::exit(i32::from(exit::BUG));
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are "errors" that print to stdout and succeed.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit::USAGE } else { exit::OK });
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("rbctl: cannot start: {}", describe_io(&e));
            return ExitCode::from(exit::BUG);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(failure) => {
            // An empty message means the reason was printed already (or there is none to give).
            if !failure.message.is_empty() {
                eprintln!("rbctl: {}", failure.message);
            }
            ExitCode::from(failure.code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    if let Cmd::Web(args) = cli.command {
        return web::web(&cli.addr, args).await;
    }
    let addr = match cli.addr.as_slice() {
        [addr] => addr.as_str(),
        _ => return Err(Failure::new(exit::USAGE, "only `rbctl web` takes more than one --addr")),
    };
    match cli.command {
        Cmd::Put(args) => jobs::put(addr, args).await,
        Cmd::Reserve(args) => jobs::reserve(addr, args).await,
        Cmd::Peek(args) => jobs::peek(addr, args).await,
        Cmd::Jobs(args) => jobs::jobs(addr, args).await,
        Cmd::Delete(args) => jobs::delete(addr, args).await,
        Cmd::Bury(args) => jobs::bury(addr, args).await,
        Cmd::Kick(args) => jobs::kick(addr, args).await,
        Cmd::Touch(args) => jobs::touch(addr, args).await,
        Cmd::Release(args) => jobs::release(addr, args).await,
        Cmd::Stats(args) => report::stats(addr, args).await,
        Cmd::Tubes(args) => report::tubes(addr, args).await,
        Cmd::Pause(args) => manage::pause(addr, args).await,
        Cmd::Clear(args) => manage::clear(addr, args).await,
        Cmd::Move(args) => manage::move_jobs(addr, args).await,
        Cmd::Tail(args) => tail::tail(addr, args).await,
        Cmd::Top(args) => top::top(addr, args).await,
        Cmd::Raw(args) => raw::raw(addr, args).await,
        Cmd::Web(_) => Ok(()),
    }
}
