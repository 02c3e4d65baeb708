//! The runnerbean server: flags and start-up, in beanstalkd's order (parse
//! flags, bind the socket, read the host facts, drop privileges, install
//! signal handlers, serve) and with its exit codes.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::exit;

use runnerbean::config::{self, Config, Fsync, IoChoice, Parsed};
use runnerbean::engine::directory::Directory;
use runnerbean::engine::{Engine, EngineConfig, IdSource};
use runnerbean::memory;
use runnerbean::metrics::{self, CoreSlot, Exporter, MetricsServer, ProcessInfo, Publisher};
use runnerbean::net::{self, Backend, Clock, Driver};
use runnerbean::shard::route;
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
    // A fault in any core ends the process, as the release build's abort on
    // panic does: one core stopping alone would leave the others waiting on
    // it for ever.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
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

    let cores = config.cores as usize;
    let (driver, fallback) = Driver::new(config.io != IoChoice::Epoll, config.io == IoChoice::Uring)
        .unwrap_or_else(|e| die(&format!("cannot start the event loop: {e}"), EXIT_SOCKET));
    if let Some(why) = fallback {
        warn(&why);
    }
    let backend = driver.backend();
    let clock = Clock::new();
    // One id counter for the server, shared by every shard's engine.
    let ids = IdSource::default();
    let mut engines: Vec<Engine> = (0..cores as u32)
        .map(|shard| Engine::with_id_source(EngineConfig { shard, shards: config.cores }, ids.clone()))
        .collect();
    // After privileges are dropped, as beanstalkd opens its binlog.
    let (_lock, mut log_dirs) = match config.binlog_dir.as_deref() {
        Some(dir) => match open_log(&config, Path::new(dir), &mut engines, &clock, &warn) {
            Ok((lock, dirs)) => (Some(lock), dirs.into_iter().map(Some).collect()),
            Err((message, code)) => die(&message, code),
        },
        None => (None, (0..cores).map(|_| None).collect::<Vec<_>>()),
    };
    let mut info = server_info(&config, instance_id, uname, backend);
    info.started_at = clock.now();
    let slots: Vec<_> = (0..config.cores).map(CoreSlot::new).collect();
    // Once the log is read and privileges are dropped, so that the metrics
    // threads start as the user the server runs as; a failure to bind still
    // stops the start before any client is served.
    if let Some(addr) = config.metrics.as_deref() {
        let process = ProcessInfo {
            pid: info.pid,
            instance_id: info.instance_id.clone(),
            hostname: info.hostname.clone(),
            os: info.os.clone(),
            platform: info.platform.clone(),
            io: backend.name(),
            cores: config.cores,
            max_job_size: config.max_job_size,
            binlog_max_size: config.binlog_size,
            started: std::time::Instant::now(),
            cpu_times: sys::cpu_times,
        };
        let exporter = Exporter::new(slots.clone(), process, config.metrics_tubes_max);
        let addr = metrics::parse_addr(addr).unwrap_or_else(|e| die(&e, EXIT_SOCKET));
        match MetricsServer::start(addr, std::sync::Arc::new(exporter)) {
            Ok(server) if config.verbosity > 0 => println!("metrics http://{}/metrics", server.addr),
            Ok(_) => {}
            Err(e) => die(&format!("--metrics {addr}: cannot listen: {e}"), EXIT_SOCKET),
        }
    }
    let publisher =
        |core: usize| config.metrics.as_ref().map(|_| Publisher::new(slots[core].clone(), config.metrics_tubes_max));
    let settings = net::Settings { verbosity: config.verbosity, connections_max: config.connections_max };
    if cores == 1 {
        let shard = Shard::with_engine(engines.pop().expect("one engine"), info);
        let start = net::Start {
            listener: Some(bound.listener),
            signals,
            settings,
            clock,
            log_dir: log_dirs.pop().flatten(),
            metrics: publisher(0),
            link: None,
        };
        if let Err(e) = driver.serve(shard, start) {
            die(&format!("serve: {e}"), EXIT_SOCKET);
        }
        return;
    }

    // Several cores: a loop per core on its own thread, each pinned to one
    // of the CPUs the process may use; core 0 runs on this thread, accepts
    // for all and reads the signals (see `net::cores`).
    let cpus = sys::allowed_cpus();
    if cpus.len() < cores {
        warn(&format!(
            "--cores {cores} on {} CPUs: the loops share them (throughput is the same as with --cores {})",
            cpus.len(),
            cpus.len().max(1)
        ));
    }
    let mut links = net::cores::Cores::links(cores, config.connections_max)
        .unwrap_or_else(|e| die(&format!("cannot make the cores' mailboxes: {e}"), EXIT_SOCKET));
    let directory = Directory::default();
    let mut shards: Vec<Shard> =
        engines.into_iter().map(|engine| Shard::spread_engine(engine, directory.clone(), info.clone())).collect();
    let mut threads = Vec::new();
    // Every core has its ring (or epoll) before core 0 accepts: the server
    // is whole when it first answers.
    let ready = std::sync::Arc::new(std::sync::Barrier::new(cores));
    for core in (1..cores).rev() {
        let ready = std::sync::Arc::clone(&ready);
        let shard = shards.pop().expect("a shard per core");
        let link = links.pop().expect("a link per core");
        let log_dir = log_dirs.pop().flatten();
        let metrics = publisher(core);
        // Never read: only core 0 watches the signals, but every loop is
        // started with a descriptor.
        let signals = signals.try_clone().unwrap_or_else(|e| die(&format!("signalfd: {e}"), EXIT_SOCKET));
        let cpu = cpus.get(core % cpus.len().max(1)).copied();
        let spawned = std::thread::Builder::new().name(format!("runnerbean-{core}")).spawn(move || {
            if let Some(cpu) = cpu {
                let _ = sys::pin_to_cpu(cpu);
            }
            // The same back end on every core.
            let driver = Driver::new(backend == Backend::Uring, backend == Backend::Uring);
            ready.wait();
            let (driver, _) = driver.unwrap_or_else(|e| {
                // A core short of its loop would leave the others waiting
                // on it: the server does not start.
                eprintln!("runnerbean: cannot start the event loop of core {core}: {e}");
                exit(EXIT_SOCKET)
            });
            let start = net::Start { listener: None, signals, settings, clock, log_dir, metrics, link: Some(link) };
            driver.serve(shard, start)
        });
        threads.push(spawned.unwrap_or_else(|e| die(&format!("cannot start core {core}: {e}"), EXIT_SOCKET)));
    }
    if let Some(&cpu) = cpus.first() {
        let _ = sys::pin_to_cpu(cpu);
    }
    ready.wait();
    let start = net::Start {
        listener: Some(bound.listener),
        signals,
        settings,
        clock,
        log_dir: log_dirs.pop().flatten(),
        metrics: publisher(0),
        link: links.pop(),
    };
    let shard = shards.pop().expect("core 0's shard");
    if let Err(e) = driver.serve(shard, start) {
        die(&format!("serve: {e}"), EXIT_SOCKET);
    }
    for (i, thread) in threads.into_iter().enumerate() {
        match thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => die(&format!("serve (core {}): {e}", cores - 1 - i), EXIT_SOCKET),
            Err(_) => die(&format!("core {} stopped on a fault", cores - 1 - i), EXIT_SOCKET),
        }
    }
}

/// `-b DIR`: locks and reads the directory (importing C beanstalkd's files
/// if that is what it holds), restores each job into the engine of the
/// shard its tube belongs to and gives each engine its log. Returns the
/// lock, held for the life of the process, and the directory opened for
/// syncing, once per shard. Any failure ends the start: the server never
/// runs without the log it was asked to keep.
fn open_log(
    config: &Config,
    dir: &Path,
    engines: &mut [Engine],
    clock: &Clock,
    warn: &dyn Fn(&str),
) -> Result<(DirLock, Vec<OwnedFd>), (String, i32)> {
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
    let count = recovered.jobs.len();
    // Each job goes to the shard its tube belongs to now.
    let mut jobs: Vec<Vec<_>> = engines.iter().map(|_| Vec::new()).collect();
    for job in std::mem::take(&mut recovered.jobs) {
        jobs[route::shard_of_tube(&job.image.tube, config.cores).0 as usize].push(job);
    }
    let mut dir_fds = Vec::new();
    for (shard, (engine, jobs)) in engines.iter_mut().zip(jobs).enumerate() {
        let log_config = LogConfig { shard: shard as u32, shards: config.cores, segment_bytes, sync };
        // Imported jobs are not in runnerbean's log yet, nor are jobs read
        // from segments written with another number of cores: the log
        // starts without them (numbered above the old segments) and they
        // are recorded below.
        let (mut known, others) = match (&import, &reshard) {
            (Some(_), _) => (Recovered::default(), jobs),
            (None, Some(reshard)) => (reshard.known(&recovered), jobs),
            (None, None) => {
                let known = Recovered {
                    jobs,
                    segments: recovered.segments.clone(),
                    refused: recovered.refused.clone(),
                    next_id: recovered.next_id,
                    ..Recovered::default()
                };
                (known, Vec::new())
            }
        };
        let log = Log::open(log_config, Box::new(DirFiles::new(dir)), &known, now)
            .map_err(|e| failed(format!("cannot start the log: {e}")))?;
        engine.attach_log(log);
        let mut jobs = std::mem::take(&mut known.jobs);
        jobs.extend(others);
        engine.restore(jobs, recovered.next_id, now).map_err(failed)?;
        dir_fds.push(files::open_dir(dir).map_err(|e| failed(e.to_string()))?);
    }
    // Jobs not in the log as it is now are recorded and synced before the
    // files they came from are moved or removed.
    let record_all = |engines: &mut [Engine], what: &str| -> Result<(), (String, i32)> {
        for (engine, dir_fd) in engines.iter_mut().zip(&dir_fds) {
            engine.record_all().map_err(|_| failed(format!("no room on the disk for the {what} jobs")))?;
            let log = engine.log_mut().expect("attached above");
            if let Some(batch) = log.take_batch() {
                runnerbean::wal::flush::write_blocking(&batch, dir_fd.as_raw_fd())
                    .map_err(|e| failed(format!("cannot write the {what} jobs: {e}")))?;
                log.written(batch.number);
                log.synced(batch.number);
            }
        }
        Ok(())
    };
    if let Some(import) = import {
        record_all(engines, "imported")?;
        let line =
            open::finish_import(import).map_err(|e| failed(format!("cannot move the imported files aside: {e}")))?;
        warn(&line);
    } else if let Some(reshard) = reshard {
        record_all(engines, "rewritten")?;
        let line =
            open::finish_reshard(reshard).map_err(|e| failed(format!("cannot remove the old segment files: {e}")))?;
        warn(&line);
    } else if config.verbosity > 0 {
        println!("log {}: {count} jobs from {} records", dir.display(), recovered.records);
    }
    Ok((lock, dir_fds))
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
