//! runnerbean-bench: a load generator for beanstalkd-protocol servers.
//!
//! It drives runnerbean and C beanstalkd alike, from one thread with an
//! edge-triggered mio loop, many connections and a configurable number of
//! requests in flight per connection. Requests are pre-built or written
//! into reused buffers, replies are parsed in place, and latencies go into
//! HdrHistograms, so the generator does no allocation per operation and is
//! not the bottleneck. `scripts/bench-vs-c` runs it against both servers.
//!
//! Modes (see `--help`): `put`/`fill`, `drain`, `pc` (producers and
//! consumers, saturated or at a fixed rate, optionally over many tubes).
//! The result is one line of JSON on stdout.
//!
//! Latency is measured from the moment a request is queued for sending to
//! the moment its reply is parsed. In a rate-limited run it is measured from
//! the request's *scheduled* send time instead, which corrects for
//! coordinated omission: a stall delays the sends behind it and is charged
//! to all of them, not hidden.

mod conn;
mod decimal;
mod drain;
mod pc;
mod probe;
mod put;

use std::net::SocketAddr;
use std::process::exit;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

const USAGE: &str = "\
runnerbean-bench <mode> --addr HOST:PORT [options]

modes:
  put     put --ops N jobs of --size S bytes into --tube over --conns C connections,
          each with up to --depth D requests in flight
  fill    the same as put, for prefilling a server before a timed run
  drain   each of --conns C connections keeps --depth D `reserve-with-timeout 0` in
          flight and deletes every job it gets, until the server says TIMED_OUT;
          one op is one job
  pc      --producers P put --jobs N jobs of --size S (>= 16) bytes, saturated with
          --pdepth D jobs in flight each, or at a total --rate R jobs/s; --workers W
          reserve and delete them. With --tubes T, T tubes exist, each worker watches
          --watch K of them and producers spread their jobs (use + put) over the
          watched tubes. Reports end-to-end latency (put sent -> job reserved).

options:
  --addr HOST:PORT   the server (default 127.0.0.1:11300)
  --conns C          connections (put, fill, drain; default 50)
  --depth D          requests in flight per connection (default 1)
  --size S           body bytes (default 16; pc default 100)
  --ops N            jobs to put (put, fill; default 100000)
  --tube NAME        tube for put, fill and drain (default bench)
  --producers P      (pc, default 10)      --workers W   (pc, default 100)
  --jobs N           (pc, default 100000)  --pdepth D    (pc, default 1)
  --rate R           (pc) total jobs per second; saturated when absent
  --tubes T          (pc) tubes that exist (default 1)
  --watch K          (pc) tubes each worker watches (default 1; at most T)
  --pid PID          the server's pid: report its CPU time and RSS
  --max-secs S       stop after S seconds and report as truncated (default 120)
";

#[derive(Clone, Debug)]
pub struct Opts {
    pub mode: String,
    pub addr: SocketAddr,
    pub conns: usize,
    pub depth: usize,
    pub size: usize,
    pub ops: u64,
    pub tube: String,
    pub producers: usize,
    pub workers: usize,
    pub jobs: u64,
    pub pdepth: usize,
    pub rate: Option<f64>,
    pub tubes: usize,
    pub watch: usize,
    pub pid: Option<u32>,
    pub max_secs: f64,
}

fn parse_opts(args: &[String]) -> Result<Opts, String> {
    let mode = args.first().ok_or("no mode given")?.clone();
    if !matches!(mode.as_str(), "put" | "fill" | "drain" | "pc") {
        return Err(format!("unknown mode {mode}"));
    }
    let mut o = Opts {
        mode,
        addr: "127.0.0.1:11300".parse().unwrap(),
        conns: 50,
        depth: 1,
        size: 16,
        ops: 100_000,
        tube: "bench".into(),
        producers: 10,
        workers: 100,
        jobs: 100_000,
        pdepth: 1,
        rate: None,
        tubes: 1,
        watch: 1,
        pid: None,
        max_secs: 120.0,
    };
    let mut size_given = false;
    let mut i = 1;
    while i < args.len() {
        let flag = args[i].as_str();
        let value = args.get(i + 1).ok_or_else(|| format!("{flag} needs a value"))?;
        let num = || value.parse::<u64>().map_err(|_| format!("{flag}: not a number: {value}"));
        match flag {
            "--addr" => o.addr = value.parse().map_err(|_| format!("--addr: not HOST:PORT: {value}"))?,
            "--conns" => o.conns = num()? as usize,
            "--depth" => o.depth = num()? as usize,
            "--size" => {
                o.size = num()? as usize;
                size_given = true;
            }
            "--ops" => o.ops = num()?,
            "--tube" => o.tube = value.clone(),
            "--producers" => o.producers = num()? as usize,
            "--workers" => o.workers = num()? as usize,
            "--jobs" => o.jobs = num()?,
            "--pdepth" => o.pdepth = num()? as usize,
            "--rate" => o.rate = Some(value.parse().map_err(|_| format!("--rate: not a number: {value}"))?),
            "--tubes" => o.tubes = num()? as usize,
            "--watch" => o.watch = num()? as usize,
            "--pid" => o.pid = Some(num()? as u32),
            "--max-secs" => o.max_secs = value.parse().map_err(|_| format!("--max-secs: not a number: {value}"))?,
            _ => return Err(format!("unknown option {flag}")),
        }
        i += 2;
    }
    if o.mode == "pc" && !size_given {
        o.size = 100;
    }
    if o.conns == 0 || o.depth == 0 || o.pdepth == 0 || o.producers == 0 || o.workers == 0 {
        return Err("connection counts and depths must be at least 1".into());
    }
    if o.mode == "pc" && o.size < pc::STAMP_BYTES {
        return Err(format!("pc needs --size of at least {} (the body carries a timestamp)", pc::STAMP_BYTES));
    }
    if o.tubes == 0 || o.watch == 0 || o.watch > o.tubes {
        return Err("--watch must be between 1 and --tubes".into());
    }
    Ok(o)
}

/// What a run measured.
pub struct Report {
    pub ops: u64,
    pub elapsed: Duration,
    /// Request latency (put, or reserve in drain), nanoseconds.
    pub latency: Histogram<u64>,
    /// End to end (put sent -> job reserved), pc only.
    pub e2e: Option<Histogram<u64>>,
    pub errors: u64,
    pub truncated: bool,
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("histogram bounds")
}

/// Nanoseconds since `start`.
pub fn since(start: Instant) -> u64 {
    start.elapsed().as_nanos() as u64
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{USAGE}");
        exit(if args.is_empty() { 2 } else { 0 });
    }
    let opts = parse_opts(&args).unwrap_or_else(|e| {
        eprintln!("runnerbean-bench: {e}\n\n{USAGE}");
        exit(2);
    });
    let server = opts.pid.map(probe::Process::new);
    let client = probe::Process::new(std::process::id());
    // Each mode sets up its connections, then calls `begin` right before
    // the timed part.
    let mut before = None;
    let begin = || probe::Snapshot::take(server.as_ref(), &client);
    let result = match opts.mode.as_str() {
        "put" | "fill" => put::run(&opts, &mut || before = Some(begin())),
        "drain" => drain::run(&opts, &mut || before = Some(begin())),
        "pc" => pc::run(&opts, &mut || before = Some(begin())),
        _ => unreachable!("checked by parse_opts"),
    };
    let report = result.unwrap_or_else(|e| {
        eprintln!("runnerbean-bench: {e}");
        exit(1);
    });
    let after = probe::Snapshot::take(server.as_ref(), &client);
    let before = before.expect("mode never started its timed part");
    println!("{}", json(&opts, &report, &before, &after));
    if report.errors > 0 {
        eprintln!("runnerbean-bench: {} unexpected replies", report.errors);
        exit(1);
    }
}

fn json(o: &Opts, r: &Report, before: &probe::Snapshot, after: &probe::Snapshot) -> String {
    let secs = r.elapsed.as_secs_f64();
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let mut fields = vec![
        format!("\"mode\":\"{}\"", o.mode),
        format!("\"ops\":{}", r.ops),
        format!("\"secs\":{secs:.4}"),
        format!("\"ops_per_sec\":{:.1}", if secs > 0.0 { r.ops as f64 / secs } else { 0.0 }),
    ];
    if !r.latency.is_empty() {
        fields.push(format!("\"p50_us\":{:.1}", us(&r.latency, 0.5)));
        fields.push(format!("\"p99_us\":{:.1}", us(&r.latency, 0.99)));
        fields.push(format!("\"p999_us\":{:.1}", us(&r.latency, 0.999)));
        fields.push(format!("\"max_us\":{:.1}", r.latency.max() as f64 / 1000.0));
    }
    if let Some(e2e) = r.e2e.as_ref().filter(|h| !h.is_empty()) {
        fields.push(format!("\"e2e_p50_us\":{:.1}", us(e2e, 0.5)));
        fields.push(format!("\"e2e_p99_us\":{:.1}", us(e2e, 0.99)));
        fields.push(format!("\"e2e_p999_us\":{:.1}", us(e2e, 0.999)));
    }
    if let (Some(b), Some(a)) = (before.server_cpu_ns, after.server_cpu_ns) {
        fields.push(format!("\"server_cpu_ns\":{}", a.saturating_sub(b)));
    }
    if let (Some(b), Some(a)) = (before.server_rss_kb, after.server_rss_kb) {
        fields.push(format!("\"server_rss_kb_before\":{b}"));
        fields.push(format!("\"server_rss_kb_after\":{a}"));
    }
    fields.push(format!("\"client_cpu_ns\":{}", after.client_cpu_ns.saturating_sub(before.client_cpu_ns)));
    fields.push(format!("\"errors\":{}", r.errors));
    fields.push(format!("\"truncated\":{}", r.truncated));
    format!("{{{}}}", fields.join(","))
}
