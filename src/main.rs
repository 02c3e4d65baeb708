//! The runnerbean server: flags and start-up, in beanstalkd's order (parse
//! flags, bind the socket, read the host facts, drop privileges, install
//! signal handlers, serve) and with its exit codes.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::exit;

use runnerbean::config::{self, Config, Fsync, IoChoice, Parsed};
use runnerbean::engine::{Engine, EngineConfig};
use runnerbean::memory;
use runnerbean::metrics::{self, CoreSlot, Exporter, MetricsServer, ProcessInfo, Publisher};
use runnerbean::net::{self, Clock, Driver};
use runnerbean::shard::{ServerInfo, Shard};
use runnerbean::sys;
use runnerbean::wal::files::{self, DirFiles, DirLock};
use runnerbean::wal::log::{Log, LogConfig, SyncPolicy};
use runnerbean::wal::open::{self, OpenError};
use runnerbean::wal::recover::Recovered;

/// mimalloc, with a reserve for when it fails (see `runnerbean::memory`).
#[global_allocator]
static GLOBAL: memory::Allocator = memory::Allocator;

/// Exit codes beanstalkd uses.
const EXIT_SOCKET: i32 = 111;
const EXIT_HOST_FACTS: i32 = 50;
const EXIT_UNSUPPORTED: i32 = 1;
/// Another process holds the log directory's lock.
const EXIT_LOCKED: i32 = 10;
/// The log cannot be opened, read or started.
const EXIT_LOG: i32 = 1;

/// Segment files are made in whole pages: `-s` is rounded up to this, as
/// beanstalkd's files are.
const SEGMENT_BYTES_GRAIN: u64 = 4096;

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
        Parsed::Export { dir, out } => export(&progname, &dir, &out),
    };
    let warn = |message: &str| eprintln!("{progname}: {message}");
    let die = |message: &str, code: i32| -> ! {
        warn(message);
        exit(code)
    };
    for w in &warnings {
        warn(w);
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
    let clock = Clock::new();
    let mut engine = Engine::new(EngineConfig { shard: 0, shards: config.cores });
    // After privileges are dropped, as beanstalkd opens its binlog.
    let (_lock, log_dir) = match config.binlog_dir.as_deref() {
        Some(dir) => match open_log(&config, Path::new(dir), &mut engine, &clock, &warn) {
            Ok((lock, dir)) => (Some(lock), Some(dir)),
            Err((message, code)) => die(&message, code),
        },
        None => (None, None),
    };
    let mut info = server_info(&config, instance_id, uname, driver.backend());
    info.started_at = clock.now();
    // Once the log is read and privileges are dropped, so that the metrics
    // threads start as the user the server runs as; a failure to bind still
    // stops the start before any client is served.
    let metrics = config.metrics.as_deref().map(|addr| {
        let slot = CoreSlot::new(0);
        let process = ProcessInfo {
            pid: info.pid,
            instance_id: info.instance_id.clone(),
            hostname: info.hostname.clone(),
            os: info.os.clone(),
            platform: info.platform.clone(),
            io: driver.backend().name(),
            cores: config.cores,
            max_job_size: config.max_job_size,
            binlog_max_size: config.binlog_size,
            started: std::time::Instant::now(),
            cpu_times: sys::cpu_times,
        };
        let exporter = Exporter::new(vec![slot.clone()], process, config.metrics_tubes_max);
        let addr = metrics::parse_addr(addr).unwrap_or_else(|e| die(&e, EXIT_SOCKET));
        match MetricsServer::start(addr, std::sync::Arc::new(exporter)) {
            Ok(server) if config.verbosity > 0 => println!("metrics http://{}/metrics", server.addr),
            Ok(_) => {}
            Err(e) => die(&format!("--metrics {addr}: cannot listen: {e}"), EXIT_SOCKET),
        }
        Publisher::new(slot, config.metrics_tubes_max)
    });
    let shard = Shard::with_engine(engine, info);
    let settings = net::Settings { verbosity: config.verbosity, connections_max: config.connections_max };
    let start = net::Start { listener: bound.listener, signals, settings, clock, log_dir, metrics };
    if let Err(e) = driver.serve(shard, start) {
        die(&format!("serve: {e}"), EXIT_SOCKET);
    }
}

/// `-b DIR`: locks and reads the directory (importing C beanstalkd's files
/// if that is what it holds), restores the jobs into the engine and gives
/// it the log. Returns the lock, held for the life of the process, and the
/// directory opened for syncing. Any failure ends the start: the server
/// never runs without the log it was asked to keep.
fn open_log(
    config: &Config,
    dir: &Path,
    engine: &mut Engine,
    clock: &Clock,
    warn: &dyn Fn(&str),
) -> Result<(DirLock, OwnedFd), (String, i32)> {
    let now = clock.now();
    let failed = |what: String| (format!("{}: {what}", dir.display()), EXIT_LOG);
    let opened = match open::open(dir, config.max_job_size, now, config.cores) {
        Ok(opened) => opened,
        Err(OpenError::Locked) => {
            // beanstalkd's words, which scripts may look for, then why.
            let message = format!(
                "failed to lock wal dir {}: the log directory is in use: another process holds {}",
                dir.display(),
                dir.join("lock").display()
            );
            return Err((message, EXIT_LOCKED));
        }
        Err(OpenError::Failed(message)) => return Err((message, EXIT_LOG)),
    };
    let open::Opened { lock, mut recovered, import, reshard } = opened;
    for w in &recovered.warnings {
        warn(w);
    }
    let sync = match config.fsync {
        Fsync::Always => SyncPolicy::Always,
        Fsync::EveryMs(ms) => SyncPolicy::EveryMs(ms),
        Fsync::Never => SyncPolicy::Never,
    };
    let segment_bytes = config.binlog_size.max(1).div_ceil(SEGMENT_BYTES_GRAIN) * SEGMENT_BYTES_GRAIN;
    let log_config = LogConfig { shard: 0, shards: config.cores, segment_bytes, sync };
    // Imported jobs are not in runnerbean's log yet, nor are jobs read from
    // segments written with another number of cores: the log starts
    // without them (numbered above the old segments) and they are recorded
    // below.
    let (empty, rewritten);
    let known = match (&import, &reshard) {
        (Some(_), _) => {
            empty = Recovered::default();
            &empty
        }
        (None, Some(reshard)) => {
            rewritten = reshard.known(&recovered);
            &rewritten
        }
        (None, None) => &recovered,
    };
    let log = Log::open(log_config, Box::new(DirFiles::new(dir)), known, now)
        .map_err(|e| failed(format!("cannot start the log: {e}")))?;
    engine.attach_log(log);
    let jobs = std::mem::take(&mut recovered.jobs);
    let count = jobs.len();
    engine.restore(jobs, recovered.next_id, now).map_err(failed)?;
    let dir_fd = files::open_dir(dir).map_err(|e| failed(e.to_string()))?;
    // Jobs not in the log as it is now are recorded and synced before the
    // files they came from are moved or removed.
    let record_all = |engine: &mut Engine, what: &str| -> Result<(), (String, i32)> {
        engine.record_all().map_err(|_| failed(format!("no room on the disk for the {what} jobs")))?;
        let log = engine.log_mut().expect("attached above");
        if let Some(batch) = log.take_batch() {
            runnerbean::wal::flush::write_blocking(&batch, dir_fd.as_raw_fd())
                .map_err(|e| failed(format!("cannot write the {what} jobs: {e}")))?;
            log.written(batch.number);
            log.synced(batch.number);
        }
        Ok(())
    };
    if let Some(import) = import {
        record_all(engine, "imported")?;
        let line =
            open::finish_import(import).map_err(|e| failed(format!("cannot move the imported files aside: {e}")))?;
        warn(&line);
    } else if let Some(reshard) = reshard {
        record_all(engine, "rewritten")?;
        let line =
            open::finish_reshard(reshard).map_err(|e| failed(format!("cannot remove the old segment files: {e}")))?;
        warn(&line);
    } else if config.verbosity > 0 {
        println!("log {}: {count} jobs from {} records", dir.display(), recovered.records);
    }
    Ok((lock, dir_fd))
}

/// `--export-binlog DIR OUT`.
fn export(progname: &str, dir: &str, out: &str) -> ! {
    match open::export(Path::new(dir), Path::new(out)) {
        Ok(exported) => {
            for w in &exported.warnings {
                eprintln!("{progname}: {w}");
            }
            println!(
                "wrote {} jobs to {}; start C beanstalkd with -b {out}{}",
                exported.jobs,
                exported.path.display(),
                if exported.job_size_min > 65535 { format!(" -z {}", exported.job_size_min) } else { String::new() }
            );
            exit(0)
        }
        Err(OpenError::Locked) => {
            eprintln!("{progname}: {dir}: the log directory is in use (stop the server first)");
            exit(EXIT_LOCKED)
        }
        Err(OpenError::Failed(message)) => {
            eprintln!("{progname}: {message}");
            exit(EXIT_LOG)
        }
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
        started_at: 0,
        strict: config.strict,
    }
}
