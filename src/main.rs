//! The runnerbean server: flags and start-up, in beanstalkd's order (parse
//! flags, bind the socket, read the host facts, drop privileges, install
//! signal handlers, serve) and with its exit codes.

use std::process::exit;

use runnerbean::config::{self, Config, IoChoice, Parsed};
use runnerbean::engine::EngineConfig;
use runnerbean::memory;
use runnerbean::net::{self, Driver};
use runnerbean::shard::{ServerInfo, Shard};
use runnerbean::sys;

/// mimalloc, with a reserve for when it fails (see `runnerbean::memory`).
#[global_allocator]
static GLOBAL: memory::Allocator = memory::Allocator;

/// Exit codes beanstalkd uses.
const EXIT_SOCKET: i32 = 111;
const EXIT_HOST_FACTS: i32 = 50;
const EXIT_UNSUPPORTED: i32 = 1;

fn main() {
    // First of all, so that no signal is lost or kills the process before
    // the event loop reads it.
    let signals = sys::server_signal_fd().unwrap_or_else(|e| {
        eprintln!("runnerbean: signalfd: {e}");
        exit(EXIT_SOCKET);
    });
    // Before anything else allocates much: the reserve is what lets a
    // failed allocation become OUT_OF_MEMORY instead of an abort.
    if !memory::init() {
        eprintln!("runnerbean: memory is short already; new jobs are refused until some is freed");
    }
    let mut args = std::env::args();
    let progname = args.next().unwrap_or_else(|| "runnerbean".to_string());
    let args: Vec<String> = args.collect();
    let (mut config, warnings) = match config::parse(&progname, &args) {
        Parsed::Run { config, warnings } => (config, warnings),
        Parsed::Exit { code, stdout, stderr } => {
            print!("{stdout}");
            eprint!("{stderr}");
            exit(code);
        }
    };
    let warn = |message: &str| eprintln!("{progname}: {message}");
    let die = |message: &str, code: i32| -> ! {
        warn(message);
        exit(code)
    };
    for w in &warnings {
        warn(w);
    }
    if config.binlog_dir.is_some() {
        die(
            "-b: the write-ahead log is not available in this version of runnerbean; \
             refusing to start, since jobs would not survive a restart",
            EXIT_UNSUPPORTED,
        );
    }
    if config.cores > 1 {
        die("--cores: this version of runnerbean runs on one core; use --cores 1", EXIT_UNSUPPORTED);
    }
    if config.io == IoChoice::Auto {
        config.io = match std::env::var(config::IO_ENV).as_deref() {
            Ok("epoll") => IoChoice::Epoll,
            Ok("uring") | Ok("io_uring") => IoChoice::Uring,
            _ => IoChoice::Auto,
        };
    }
    if config.verbosity > 0 {
        println!("pid {}", sys::pid());
    }

    let bound = net::listen::bind(config.addr.as_deref(), &config.port).unwrap_or_else(|e| die(&e, EXIT_SOCKET));
    for w in &bound.warnings {
        warn(w);
    }
    if config.verbosity > 0 {
        println!("{}", bound.description);
    }

    let instance_id = sys::instance_id().unwrap_or_else(|e| die(&format!("open /dev/urandom: {e}"), EXIT_HOST_FACTS));
    let uname = sys::uname().unwrap_or_else(|e| die(&format!("uname: {e}"), EXIT_HOST_FACTS));
    if let Some(user) = &config.user
        && let Err(e) = sys::become_user(user)
    {
        die(&e.message, e.exit_code);
    }
    sys::ignore_sigpipe();

    let (driver, fallback) = Driver::new(config.io != IoChoice::Epoll, config.io == IoChoice::Uring)
        .unwrap_or_else(|e| die(&format!("cannot start the event loop: {e}"), EXIT_SOCKET));
    if let Some(why) = fallback {
        warn(&why);
    }
    let info = server_info(&config, instance_id, uname, driver.backend());
    let shard = Shard::new(EngineConfig { shard: 0, shards: config.cores }, info);
    if let Err(e) = driver.serve(shard, bound.listener, signals, config.verbosity) {
        die(&format!("serve: {e}"), EXIT_SOCKET);
    }
}

fn server_info(config: &Config, instance_id: String, uname: sys::Uname, backend: net::Backend) -> ServerInfo {
    let extra = vec![
        ("runnerbean-version".to_string(), format!("\"{}\"", env!("CARGO_PKG_VERSION"))),
        ("runnerbean-io".to_string(), format!("\"{}\"", backend.name())),
        ("runnerbean-cores".to_string(), config.cores.to_string()),
    ];
    ServerInfo {
        max_job_size: config.max_job_size,
        pid: sys::pid(),
        instance_id,
        hostname: uname.nodename,
        os: uname.version,
        platform: uname.machine,
        binlog_max_size: config.binlog_size,
        extra,
        cpu_times: sys::cpu_times,
        verbosity: config.verbosity,
    }
}
