//! runnerbean-abuse: the hostile loads of `scripts/abuse`, which no
//! well-behaved client produces, driven fast enough to matter on a 2-core
//! machine.
//!
//! Modes:
//! * `flood`: F connections pipeline one command (`put`, a delayed `put` or
//!   `list-tube-used`) as fast as the server takes them, or with at most
//!   `--depth` in flight each, for `--secs` or until `--ops` are answered.
//!   Meanwhile a normal client runs paced put/reserve/delete cycles on a tube
//!   of its own and, with `--timeouts 1`, a third connection waits in
//!   `reserve-with-timeout 1` on an empty tube, over and over. It reports the
//!   cycle times, how late each timeout was answered and the flooders'
//!   throughput.
//! * `noread`: N connections flood `stats` and never read, until the server
//!   stops taking their bytes; then they close. Then (or, with `--flood 0`,
//!   instead) N fresh connections each send a burst of `stats`, read every
//!   reply and stay idle. It reports the server's resident memory at each
//!   step (`--pid`).
//! * `slowbody`: N connections each start a `put` of `--size` bytes and send
//!   its body one byte per connection per second. It reports the server's
//!   resident memory before and after.
//!
//! Each run prints one line of JSON on stdout, with an `error` field when the
//! server closed a connection, answered something unexpected or did not
//! answer within `REPLY_SECS_MAX`; the exit status is then 1. The flooders
//! run on one thread with an edge-triggered mio loop, from pre-built blocks
//! of commands, so the generator is not what limits a flood; the normal
//! clients are blocking connections on threads of their own, so a flood
//! never delays their own sending or reading.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream as StdStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

// Only its memory reading is used here, not the CPU snapshots.
#[allow(dead_code)]
#[path = "../probe.rs"]
mod probe;

const USAGE: &str = "\
runnerbean-abuse <mode> --addr HOST:PORT [options]

modes and their options:
  flood     --flooders F (20)  --cmd put|delayed-put|list-tube-used (put)
            --size S body bytes (16)  --delay SECS of delayed-put (3600)
            --depth D commands in flight per flooder, 0 = as many as the server takes (0)
            --ops N commands in all, 0 = until --secs (0)  --secs S (10)
            --warmup-secs S before the normal client starts measuring (0.5)
            --timeouts 0|1 also measure reserve-with-timeout 1 lateness (1)
            --interval-ms MS between the starts of the normal client's cycles (5)
  noread    --conns N (2000)  --flood 0|1 run the flood (1)  --secs S longest flood (30)  --quiet-secs S of no progress
            that ends the flood (1.5)  --settle-secs S after closing (2)
            --burst K stats per connection in the read burst, 0 = none (100)  --pid PID
  slowbody  --conns N (2000)  --size S body bytes (60000)  --secs S (10)  --pid PID

The result is one line of JSON on stdout; the exit status is 1 when the server
misbehaved (closed a connection, answered unexpectedly, did not answer).
";

/// The length of a flooder's pre-built block of commands: large enough that
/// one write can fill a loopback socket's buffer, small enough to stay in
/// cache.
const BLOCK_BYTES: usize = 64 * 1024;
/// The read buffer of a flooder or of a burst connection.
const READ_BYTES: usize = 64 * 1024;
/// How often the flooder loop wakes up to look at the clock when no event
/// arrives.
const POLL_MS: u64 = 20;
/// A normal client that waits longer than this for one reply declares the
/// server hung. It is far above any stall seen (the worst, under 20
/// pipelining flooders, was about 1.5 s) and far below the harness's own
/// limits.
const REPLY_SECS_MAX: u64 = 60;
/// How often the server's resident memory is sampled during a flood.
const RSS_SAMPLE_MS: u64 = 100;
/// The pause after connecting (or after a burst) before memory is read, so
/// that the server has accepted every connection and is idle again.
const SETTLE_MS: u64 = 500;
/// The send buffer of a never-reading connection (the kernel doubles it).
const NOREAD_SNDBUF_BYTES: libc::c_int = 16 * 1024;
/// The timeout the timer client asks for, in seconds (the protocol's unit).
const TIMER_TIMEOUT_SECS: u64 = 1;
/// The normal client's job body.
const NORMAL_BODY: &[u8] = b"hello";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{USAGE}");
        return ExitCode::from(if args.is_empty() { 2 } else { 0 });
    }
    let opts = match Opts::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("runnerbean-abuse: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    raise_descriptor_limit();
    let mut out = Json::default();
    let result = match opts.mode.as_str() {
        "flood" => flood(&opts, &mut out),
        "noread" => noread(&opts, &mut out),
        "slowbody" => slowbody(&opts, &mut out),
        _ => unreachable!("checked by Opts::parse"),
    };
    if let Err(e) = &result {
        out.str("error", e);
    }
    println!("{}", out.finish());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("runnerbean-abuse: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Thousands of connections need thousands of descriptors: the soft limit
/// goes up to the hard one. Failing that, connecting fails later with a
/// clear error.
fn raise_descriptor_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

// ---------------------------------------------------------------------------
// Options

struct Opts {
    mode: String,
    addr: SocketAddr,
    pid: Option<u32>,
    flooders: usize,
    cmd: FloodCmd,
    size: usize,
    delay: u64,
    depth: u64,
    ops: u64,
    secs: f64,
    warmup_secs: f64,
    timeouts: bool,
    interval_ms: u64,
    conns: usize,
    quiet_secs: f64,
    settle_secs: f64,
    burst: usize,
    flood: bool,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Opts, String> {
        let mode = args[0].clone();
        let allowed: &[&str] = match mode.as_str() {
            "flood" => &[
                "--flooders",
                "--cmd",
                "--size",
                "--delay",
                "--depth",
                "--ops",
                "--secs",
                "--warmup-secs",
                "--timeouts",
                "--interval-ms",
            ],
            "noread" => &["--conns", "--flood", "--secs", "--quiet-secs", "--settle-secs", "--burst", "--pid"],
            "slowbody" => &["--conns", "--size", "--secs", "--pid"],
            _ => return Err(format!("unknown mode {mode}")),
        };
        let mut o = Opts {
            addr: SocketAddr::from(([127, 0, 0, 1], 11300)),
            pid: None,
            flooders: 20,
            cmd: FloodCmd::Put,
            size: if mode == "slowbody" { 60_000 } else { 16 },
            delay: 3600,
            depth: 0,
            ops: 0,
            secs: match mode.as_str() {
                "noread" => 30.0,
                _ => 10.0,
            },
            warmup_secs: 0.5,
            timeouts: true,
            interval_ms: 5,
            conns: 2000,
            quiet_secs: 1.5,
            settle_secs: 2.0,
            burst: 100,
            flood: true,
            mode,
        };
        let mut i = 1;
        while i < args.len() {
            let flag = args[i].as_str();
            let value = args.get(i + 1).ok_or_else(|| format!("{flag} needs a value"))?;
            if flag != "--addr" && !allowed.contains(&flag) {
                return Err(format!("unknown option {flag} for {}", o.mode));
            }
            let num = || value.parse::<u64>().map_err(|_| format!("{flag}: not a number: {value}"));
            let secs = || value.parse::<f64>().map_err(|_| format!("{flag}: not a number: {value}"));
            match flag {
                "--addr" => o.addr = value.parse().map_err(|_| format!("--addr: not HOST:PORT: {value}"))?,
                "--pid" => o.pid = Some(num()? as u32),
                "--flooders" => o.flooders = num()? as usize,
                "--cmd" => o.cmd = FloodCmd::parse(value).ok_or_else(|| format!("--cmd: unknown command {value}"))?,
                "--size" => o.size = num()? as usize,
                "--delay" => o.delay = num()?,
                "--depth" => o.depth = num()?,
                "--ops" => o.ops = num()?,
                "--secs" => o.secs = secs()?,
                "--warmup-secs" => o.warmup_secs = secs()?,
                "--timeouts" => o.timeouts = num()? != 0,
                "--interval-ms" => o.interval_ms = num()?,
                "--conns" => o.conns = num()? as usize,
                "--quiet-secs" => o.quiet_secs = secs()?,
                "--settle-secs" => o.settle_secs = secs()?,
                "--burst" => o.burst = num()? as usize,
                "--flood" => o.flood = num()? != 0,
                _ => unreachable!("checked against the allowed options"),
            }
            i += 2;
        }
        if o.flooders == 0 || o.conns == 0 {
            return Err("--flooders and --conns must be at least 1".into());
        }
        if o.mode != "flood" && o.pid.is_none() {
            return Err(format!("{} reads the server's memory: --pid is required", o.mode));
        }
        Ok(o)
    }
}

// ---------------------------------------------------------------------------
// JSON output

/// The fields of the one line of output, in the order they were set.
#[derive(Default)]
struct Json {
    fields: Vec<String>,
}

impl Json {
    fn num(&mut self, key: &str, value: impl std::fmt::Display) {
        self.fields.push(format!("\"{key}\":{value}"));
    }

    fn opt(&mut self, key: &str, value: Option<u64>) {
        match value {
            Some(v) => self.num(key, v),
            None => self.num(key, "null"),
        }
    }

    fn str(&mut self, key: &str, value: &str) {
        let escaped: String = value
            .chars()
            .flat_map(|c| match c {
                '"' | '\\' => vec!['\\', c],
                c if (c as u32) < 0x20 => format!("\\u{:04x}", c as u32).chars().collect(),
                c => vec![c],
            })
            .collect();
        self.fields.push(format!("\"{key}\":\"{escaped}\""));
    }

    /// Percentiles and maximum of a histogram of nanoseconds, in µs.
    fn hist(&mut self, prefix: &str, h: &Histogram<u64>) {
        if h.is_empty() {
            return;
        }
        let us = |ns: u64| format!("{:.1}", ns as f64 / 1000.0);
        self.num(&format!("{prefix}_p50_us"), us(h.value_at_quantile(0.5)));
        self.num(&format!("{prefix}_p99_us"), us(h.value_at_quantile(0.99)));
        self.num(&format!("{prefix}_max_us"), us(h.max()));
    }

    fn finish(self) -> String {
        format!("{{{}}}", self.fields.join(","))
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("histogram bounds")
}

/// Lets the tool's own failures read as sentences.
fn ctx(what: &str) -> impl FnOnce(io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

// ---------------------------------------------------------------------------
// A normal client: blocking, one request at a time.

struct Client {
    stream: StdStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Client {
    fn connect(addr: SocketAddr) -> io::Result<Client> {
        let stream = StdStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(REPLY_SECS_MAX)))?;
        Ok(Client { stream, buf: vec![0; 4096], start: 0, end: 0 })
    }

    /// Sends one request and returns its reply line (without CRLF), which
    /// must start with `expect`.
    fn ask(&mut self, request: &[u8], expect: &str) -> Result<Vec<u8>, String> {
        self.stream.write_all(request).map_err(|e| format!("sending {}: {e}", show(request)))?;
        let line = self.line().map_err(|e| format!("reply to {}: {e}", show(request)))?;
        if !line.starts_with(expect.as_bytes()) {
            return Err(format!("{} answered {} (expected {expect})", show(request), show(&line)));
        }
        Ok(line)
    }

    fn line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = memchr::memmem::find(&self.buf[self.start..self.end], b"\r\n") {
                let line = self.buf[self.start..self.start + i].to_vec();
                self.start += i + 2;
                return Ok(line);
            }
            self.fill()?;
        }
    }

    /// Skips a body of `n` bytes and its CRLF.
    fn skip(&mut self, n: usize) -> io::Result<()> {
        let mut left = n + 2;
        while left > 0 {
            if self.start == self.end {
                self.fill()?;
            }
            let k = left.min(self.end - self.start);
            self.start += k;
            left -= k;
        }
        Ok(())
    }

    fn fill(&mut self) -> io::Result<()> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        match self.stream.read(&mut self.buf[self.end..]) {
            Ok(0) => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection")),
            Ok(n) => {
                self.end += n;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => {
                Err(io::Error::new(e.kind(), format!("no reply within {REPLY_SECS_MAX} s")))
            }
            Err(e) => Err(e),
        }
    }
}

/// A request or reply for an error message: at most 60 bytes, escaped.
fn show(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(60)];
    format!("\"{}\"", cut.escape_ascii())
}

/// The number after the first word of a reply line (`INSERTED 7`).
fn reply_number(line: &[u8]) -> Option<u64> {
    let word = line.split(|&b| b == b' ').nth(1)?;
    std::str::from_utf8(word).ok()?.parse().ok()
}

// ---------------------------------------------------------------------------
// flood

#[derive(Clone, Copy, PartialEq)]
enum FloodCmd {
    Put,
    DelayedPut,
    ListTubeUsed,
}

impl FloodCmd {
    fn parse(s: &str) -> Option<FloodCmd> {
        match s {
            "put" => Some(FloodCmd::Put),
            "delayed-put" => Some(FloodCmd::DelayedPut),
            "list-tube-used" => Some(FloodCmd::ListTubeUsed),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            FloodCmd::Put => "put",
            FloodCmd::DelayedPut => "delayed-put",
            FloodCmd::ListTubeUsed => "list-tube-used",
        }
    }

    fn request(self, size: usize, delay: u64) -> Vec<u8> {
        let put = |delay| {
            let mut r = format!("put 0 {delay} 120 {size}\r\n").into_bytes();
            r.extend(std::iter::repeat_n(b'x', size));
            r.extend_from_slice(b"\r\n");
            r
        };
        match self {
            FloodCmd::Put => put(0),
            FloodCmd::DelayedPut => put(delay),
            FloodCmd::ListTubeUsed => b"list-tube-used\r\n".to_vec(),
        }
    }

    /// The first byte of every good reply: `INSERTED n`, `USING default`.
    fn reply_byte(self) -> u8 {
        match self {
            FloodCmd::Put | FloodCmd::DelayedPut => b'I',
            FloodCmd::ListTubeUsed => b'U',
        }
    }
}

/// Counts the complete reply lines at the start of `buf`, each of which
/// must begin with `expect`; returns the count and the bytes they take.
fn scan_replies(buf: &[u8], expect: u8) -> Result<(u64, usize), String> {
    let (mut count, mut pos) = (0, 0);
    while let Some(nl) = memchr::memchr(b'\n', &buf[pos..]) {
        if buf[pos] != expect {
            return Err(format!("a flooder got {}", show(&buf[pos..pos + nl])));
        }
        count += 1;
        pos += nl + 1;
    }
    Ok((count, pos))
}

struct Flooder {
    stream: TcpStream,
    /// Bytes written, counted from the start of the endless repetition of
    /// the block.
    sent: u64,
    replies: u64,
    /// Commands this flooder sends in all (`u64::MAX`: until stopped).
    limit: u64,
    inbuf: Vec<u8>,
    in_end: usize,
}

impl Flooder {
    /// Reads every reply that has arrived and checks each line's first byte.
    fn read(&mut self, expect: u8) -> Result<(), String> {
        loop {
            match self.stream.read(&mut self.inbuf[self.in_end..]) {
                Ok(0) => return Err("the server closed a flooder's connection".into()),
                Ok(n) => {
                    self.in_end += n;
                    let (replies, pos) = scan_replies(&self.inbuf[..self.in_end], expect)?;
                    self.replies += replies;
                    self.inbuf.copy_within(pos..self.in_end, 0);
                    self.in_end -= pos;
                    if self.in_end == self.inbuf.len() {
                        return Err("a flooder got a reply line longer than its buffer".into());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("a flooder's read: {e}")),
            }
        }
    }

    /// Writes commands up to the flooder's window, or until the socket is full.
    fn write(&mut self, block: &[u8], cmd_bytes: usize, depth: u64) -> Result<(), String> {
        let cmds = if depth == 0 { self.limit } else { self.limit.min(self.replies + depth) };
        let target = cmds.saturating_mul(cmd_bytes as u64);
        while self.sent < target {
            let off = (self.sent % block.len() as u64) as usize;
            let n = (block.len() - off).min((target - self.sent).min(usize::MAX as u64) as usize);
            match self.stream.write(&block[off..off + n]) {
                Ok(0) => return Err("a flooder's write returned 0".into()),
                Ok(k) => self.sent += k as u64,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("a flooder's write: {e}")),
            }
        }
        Ok(())
    }
}

/// What the normal client measured.
struct Cycles {
    cycles: Histogram<u64>,
    request_max_ns: u64,
    error: Option<String>,
}

/// Put, reserve and delete one job on the client's own tube, one cycle
/// every `interval` (or at once when the previous one took longer), until
/// `stop`. Cycles starting within `warmup` of the start are not counted.
fn run_cycles(mut c: Client, warmup: Duration, interval: Duration, stop: &AtomicBool) -> Cycles {
    let mut out = Cycles { cycles: histogram(), request_max_ns: 0, error: None };
    let begin = Instant::now();
    let mut put = format!("put 0 0 120 {}\r\n", NORMAL_BODY.len()).into_bytes();
    put.extend_from_slice(NORMAL_BODY);
    put.extend_from_slice(b"\r\n");
    let mut next = begin;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now < next {
            thread::sleep(next - now);
        }
        let t0 = Instant::now();
        next = t0 + interval;
        let cycle = one_cycle(&mut c, &put, &mut out.request_max_ns);
        if let Err(e) = cycle {
            out.error = Some(format!("normal client: {e}"));
            break;
        }
        if t0 - begin >= warmup {
            out.cycles.saturating_record(t0.elapsed().as_nanos() as u64);
        }
    }
    out
}

/// One put, reserve and delete; the slowest request's time goes into
/// `request_max_ns`.
fn one_cycle(c: &mut Client, put: &[u8], request_max_ns: &mut u64) -> Result<(), String> {
    let mut step = |c: &mut Client, request: &[u8], expect: &str| -> Result<Vec<u8>, String> {
        let t = Instant::now();
        let line = c.ask(request, expect)?;
        *request_max_ns = (*request_max_ns).max(t.elapsed().as_nanos() as u64);
        Ok(line)
    };
    let inserted = step(c, put, "INSERTED ")?;
    let id = reply_number(&inserted).ok_or_else(|| format!("no id in {}", show(&inserted)))?;
    let reserved = step(c, b"reserve-with-timeout 10\r\n", "RESERVED ")?;
    if reply_number(&reserved) != Some(id) {
        return Err(format!("put {id} but reserved {}", show(&reserved)));
    }
    c.skip(NORMAL_BODY.len()).map_err(|e| format!("the reserved job's body: {e}"))?;
    step(c, format!("delete {id}\r\n").as_bytes(), "DELETED")?;
    Ok(())
}

/// `reserve-with-timeout 1` on an empty tube until `stop`; returns how late
/// each TIMED_OUT came, in ns.
fn run_timeouts(mut c: Client, warmup: Duration, stop: &AtomicBool) -> (Histogram<u64>, Option<String>) {
    let mut late = histogram();
    thread::sleep(warmup);
    let request = format!("reserve-with-timeout {TIMER_TIMEOUT_SECS}\r\n").into_bytes();
    let due = Duration::from_secs(TIMER_TIMEOUT_SECS);
    while !stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        if let Err(e) = c.ask(&request, "TIMED_OUT") {
            return (late, Some(format!("timer client: {e}")));
        }
        late.saturating_record(t0.elapsed().saturating_sub(due).as_nanos().max(1) as u64);
    }
    (late, None)
}

fn flood(o: &Opts, out: &mut Json) -> Result<(), String> {
    out.str("mode", "flood");
    out.str("cmd", o.cmd.name());
    out.num("flooders", o.flooders);
    out.num("depth", o.depth);
    // The normal clients set up their tubes before the flood starts, so
    // what they measure is the flood's effect on ordinary commands only.
    let mut normal = Client::connect(o.addr).map_err(ctx("normal client: connect"))?;
    normal.ask(b"use abuse-normal\r\n", "USING")?;
    normal.ask(b"watch abuse-normal\r\n", "WATCHING")?;
    normal.ask(b"ignore default\r\n", "WATCHING")?;
    let timer = if o.timeouts {
        let mut t = Client::connect(o.addr).map_err(ctx("timer client: connect"))?;
        t.ask(b"watch abuse-timer\r\n", "WATCHING")?;
        t.ask(b"ignore default\r\n", "WATCHING")?;
        Some(t)
    } else {
        None
    };

    let request = o.cmd.request(o.size, o.delay);
    let block = request.repeat((BLOCK_BYTES / request.len()).max(1));
    let mut poll = Poll::new().map_err(ctx("poll"))?;
    let mut flooders = Vec::with_capacity(o.flooders);
    for i in 0..o.flooders {
        let std = StdStream::connect(o.addr).map_err(ctx("flooder: connect"))?;
        std.set_nodelay(true).map_err(ctx("nodelay"))?;
        std.set_nonblocking(true).map_err(ctx("nonblocking"))?;
        let mut stream = TcpStream::from_std(std);
        poll.registry()
            .register(&mut stream, Token(i), Interest::READABLE | Interest::WRITABLE)
            .map_err(ctx("register"))?;
        let limit = if o.ops == 0 {
            u64::MAX
        } else {
            o.ops / o.flooders as u64 + u64::from((i as u64) < o.ops % o.flooders as u64)
        };
        flooders.push(Flooder { stream, sent: 0, replies: 0, limit, inbuf: vec![0; READ_BYTES], in_end: 0 });
    }

    let stop = Arc::new(AtomicBool::new(false));
    let warmup = Duration::from_secs_f64(o.warmup_secs);
    let interval = Duration::from_millis(o.interval_ms);
    let cycles = {
        let stop = stop.clone();
        thread::spawn(move || run_cycles(normal, warmup, interval, &stop))
    };
    let timeouts = timer.map(|t| {
        let stop = stop.clone();
        thread::spawn(move || run_timeouts(t, warmup, &stop))
    });

    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(o.secs);
    let mut events = Events::with_capacity(1024);
    let expect = o.cmd.reply_byte();
    let mut truncated = false;
    let flood_result = (|| -> Result<(), String> {
        loop {
            match poll.poll(&mut events, Some(Duration::from_millis(POLL_MS))) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => other.map_err(ctx("poll"))?,
            }
            for event in events.iter() {
                let f = &mut flooders[event.token().0];
                f.read(expect)?;
                f.write(&block, request.len(), o.depth)?;
            }
            if o.ops > 0 && flooders.iter().all(|f| f.replies == f.limit) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                truncated = o.ops > 0;
                return Ok(());
            }
        }
    })();
    let flood_secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    // The flooders' connections close here, with whatever is still unsent.
    let flood_cmds: u64 = flooders.iter().map(|f| f.replies).sum();
    drop(flooders);
    let cycles = cycles.join().map_err(|_| "the normal client's thread panicked".to_string())?;
    let timeouts = match timeouts {
        Some(t) => Some(t.join().map_err(|_| "the timer client's thread panicked".to_string())?),
        None => None,
    };

    out.num("flood_cmds", flood_cmds);
    out.num("flood_secs", format!("{flood_secs:.3}"));
    out.num("flood_cmds_per_sec", format!("{:.1}", flood_cmds as f64 / flood_secs.max(1e-9)));
    out.num("truncated", truncated);
    out.num("cycles", cycles.cycles.len());
    out.hist("cycle", &cycles.cycles);
    out.num("request_max_us", format!("{:.1}", cycles.request_max_ns as f64 / 1000.0));
    if let Some((late, _)) = &timeouts {
        out.num("timeouts", late.len());
        out.hist("timeout_late", late);
    }
    flood_result?;
    if let Some(e) = cycles.error {
        return Err(e);
    }
    if let Some((_, Some(e))) = timeouts {
        return Err(e);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// noread

/// Resident memory of the server, sampled; the server is gone when a read
/// fails.
struct Rss {
    server: probe::Process,
}

impl Rss {
    fn now(&self) -> Result<u64, String> {
        self.server.rss_kb().ok_or_else(|| "the server is gone (no /proc entry)".to_string())
    }
}

fn connect_nonblocking(addr: SocketAddr) -> Result<TcpStream, String> {
    let std = StdStream::connect(addr).map_err(ctx("connect"))?;
    std.set_nodelay(true).map_err(ctx("nodelay"))?;
    std.set_nonblocking(true).map_err(ctx("nonblocking"))?;
    Ok(TcpStream::from_std(std))
}

/// Fixes a flooding connection's send buffer at `NOREAD_SNDBUF_BYTES`.
/// Left to autotuning, the kernel lets each never-reading client park about
/// a megabyte of commands in its own send buffer, which the server never
/// sees: filling those took most of a run's time and measured nothing.
fn small_send_buffer(s: &TcpStream) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let bytes: libc::c_int = NOREAD_SNDBUF_BYTES;
    // SAFETY: the descriptor is open for the call, and the option value is
    // a c_int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

fn noread(o: &Opts, out: &mut Json) -> Result<(), String> {
    let rss = Rss { server: probe::Process::new(o.pid.expect("checked by Opts::parse")) };
    out.str("mode", "noread");
    out.num("conns", o.conns);
    out.num("rss_before_kb", rss.now()?);

    if o.flood {
        flood_without_reading(o, &rss, out)?;
    }
    if o.burst > 0 {
        let idle = burst_then_idle(o, &rss)?;
        out.num("burst", o.burst);
        out.num("rss_burst_idle_kb", idle);
    }
    Ok(())
}

/// N connections flood `stats` and never read, until the server takes no
/// more of their bytes (or `--secs`); then they close.
fn flood_without_reading(o: &Opts, rss: &Rss, out: &mut Json) -> Result<(), String> {
    let mut poll = Poll::new().map_err(ctx("poll"))?;
    let mut conns = Vec::with_capacity(o.conns);
    for i in 0..o.conns {
        let mut s = connect_nonblocking(o.addr).map_err(|e| format!("connection {i}: {e}"))?;
        small_send_buffer(&s).map_err(ctx("SO_SNDBUF"))?;
        poll.registry().register(&mut s, Token(i), Interest::WRITABLE).map_err(ctx("register"))?;
        conns.push(s);
    }
    thread::sleep(Duration::from_millis(SETTLE_MS));
    out.num("rss_connected_kb", rss.now()?);

    // The flood: every connection writes `stats` until its socket is full,
    // again at each writable edge, and reads nothing.
    let block = b"stats\r\n".repeat(BLOCK_BYTES / 7);
    let start = Instant::now();
    let mut last_progress = start;
    let mut last_sample = start;
    let mut peak = 0;
    let mut sent: u64 = 0;
    let mut events = Events::with_capacity(1024);
    let mut stalled = false;
    loop {
        match poll.poll(&mut events, Some(Duration::from_millis(RSS_SAMPLE_MS))) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => other.map_err(ctx("poll"))?,
        }
        for event in events.iter() {
            let s = &mut conns[event.token().0];
            loop {
                match s.write(&block) {
                    Ok(0) => return Err("write returned 0".into()),
                    Ok(n) => {
                        sent += n as u64;
                        last_progress = Instant::now();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(format!("a flooding connection's write: {e} (the server closed it?)")),
                }
            }
        }
        let now = Instant::now();
        if now - last_sample >= Duration::from_millis(RSS_SAMPLE_MS) {
            peak = peak.max(rss.now()?);
            last_sample = now;
        }
        if now - last_progress >= Duration::from_secs_f64(o.quiet_secs) {
            stalled = true;
            break;
        }
        if now - start >= Duration::from_secs_f64(o.secs) {
            break;
        }
    }
    let flooded = rss.now()?;
    out.num("flood_secs", format!("{:.2}", start.elapsed().as_secs_f64()));
    out.num("flood_bytes_sent", sent);
    out.num("flood_stalled", stalled);
    out.num("rss_flooded_kb", flooded);
    out.num("rss_peak_kb", peak.max(flooded));

    drop(conns);
    thread::sleep(Duration::from_secs_f64(o.settle_secs));
    out.num("rss_closed_kb", rss.now()?);
    Ok(())
}

/// N fresh connections each send `burst` `stats` at once and read every
/// reply, then stay open and idle; returns the server's memory then.
fn burst_then_idle(o: &Opts, rss: &Rss) -> Result<u64, String> {
    let mut poll = Poll::new().map_err(ctx("poll"))?;
    let request = b"stats\r\n".repeat(o.burst);
    let mut conns = Vec::with_capacity(o.conns);
    for i in 0..o.conns {
        let mut s = connect_nonblocking(o.addr).map_err(|e| format!("burst connection {i}: {e}"))?;
        poll.registry().register(&mut s, Token(i), Interest::READABLE).map_err(ctx("register"))?;
        // A few hundred bytes always fit in an empty socket buffer.
        s.write_all(&request).map_err(ctx("burst write"))?;
        conns.push(StatsReader { stream: s, buf: Vec::new(), replies: 0 });
    }
    let deadline = Instant::now() + Duration::from_secs(REPLY_SECS_MAX);
    let mut events = Events::with_capacity(1024);
    let mut chunk = vec![0; READ_BYTES];
    let mut done = 0;
    while done < conns.len() {
        if Instant::now() >= deadline {
            return Err(format!(
                "burst: {done} of {} connections got their replies within {REPLY_SECS_MAX} s",
                conns.len()
            ));
        }
        match poll.poll(&mut events, Some(Duration::from_millis(POLL_MS))) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => other.map_err(ctx("poll"))?,
        }
        for event in events.iter() {
            let c = &mut conns[event.token().0];
            let before = c.replies;
            c.read(&mut chunk)?;
            if before < o.burst && c.replies >= o.burst {
                done += 1;
            }
        }
    }
    thread::sleep(Duration::from_millis(SETTLE_MS));
    let idle = rss.now()?;
    drop(conns);
    Ok(idle)
}

/// Counts whole `OK <n>` replies (line and document) on one connection.
struct StatsReader {
    stream: TcpStream,
    buf: Vec<u8>,
    replies: usize,
}

impl StatsReader {
    fn read(&mut self, chunk: &mut [u8]) -> Result<(), String> {
        loop {
            match self.stream.read(chunk) {
                Ok(0) => return Err("the server closed a burst connection".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("a burst connection's read: {e}")),
            }
        }
        let (replies, pos) = scan_stats(&self.buf)?;
        self.replies += replies;
        self.buf.drain(..pos);
        Ok(())
    }
}

/// Counts the complete `OK <n>` replies (line, document, CRLF) at the start
/// of `buf`; returns the count and the bytes they take.
fn scan_stats(buf: &[u8]) -> Result<(usize, usize), String> {
    let (mut count, mut pos) = (0, 0);
    while let Some(i) = memchr::memmem::find(&buf[pos..], b"\r\n") {
        let line = &buf[pos..pos + i];
        let n = line
            .strip_prefix(b"OK ")
            .and_then(|n| std::str::from_utf8(n).ok()?.parse::<usize>().ok())
            .ok_or_else(|| format!("stats answered {}", show(line)))?;
        if buf.len() < pos + i + 2 + n + 2 {
            break;
        }
        pos += i + 2 + n + 2;
        count += 1;
    }
    Ok((count, pos))
}

// ---------------------------------------------------------------------------
// slowbody

fn slowbody(o: &Opts, out: &mut Json) -> Result<(), String> {
    let rss = Rss { server: probe::Process::new(o.pid.expect("checked by Opts::parse")) };
    out.str("mode", "slowbody");
    out.num("conns", o.conns);
    out.num("size", o.size);
    out.num("rss_before_kb", rss.now()?);
    let mut conns = Vec::with_capacity(o.conns);
    for i in 0..o.conns {
        conns.push(connect_nonblocking(o.addr).map_err(|e| format!("connection {i}: {e}"))?);
    }
    thread::sleep(Duration::from_millis(SETTLE_MS));
    out.num("rss_connected_kb", rss.now()?);

    let header = format!("put 0 0 120 {}\r\n", o.size).into_bytes();
    for s in &mut conns {
        s.write_all(&header).map_err(ctx("header write"))?;
    }
    let start = Instant::now();
    let mut bytes = 0;
    let mut peak = 0;
    // One body byte per connection per second, never the whole body.
    while start.elapsed() < Duration::from_secs_f64(o.secs) && bytes + 1 < o.size {
        let due = start + Duration::from_secs(bytes as u64 + 1);
        thread::sleep(due.saturating_duration_since(Instant::now()));
        for s in &mut conns {
            s.write_all(b"x").map_err(ctx("body byte write"))?;
        }
        bytes += 1;
        peak = peak.max(rss.now()?);
    }
    thread::sleep(Duration::from_millis(SETTLE_MS));
    let end = rss.now()?;
    out.num("body_bytes_sent", bytes);
    out.num("rss_end_kb", end);
    out.num("rss_peak_kb", peak.max(end));
    // No reply is due before the body is complete: anything read is wrong.
    let mut byte = [0u8; 256];
    for s in &mut conns {
        match s.read(&mut byte) {
            Ok(0) => return Err("the server closed a connection in the middle of a body".into()),
            Ok(n) => return Err(format!("the server answered a body not yet sent: {}", show(&byte[..n]))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    drop(conns);
    thread::sleep(Duration::from_millis(SETTLE_MS));
    out.opt("rss_closed_kb", rss.server.rss_kb());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flood_requests_and_their_replies() {
        assert_eq!(FloodCmd::Put.request(3, 9), b"put 0 0 120 3\r\nxxx\r\n");
        assert_eq!(FloodCmd::DelayedPut.request(2, 3600), b"put 0 3600 120 2\r\nxx\r\n");
        assert_eq!(FloodCmd::ListTubeUsed.request(16, 0), b"list-tube-used\r\n");
        assert_eq!(FloodCmd::parse("delayed-put").map(FloodCmd::name), Some("delayed-put"));
        assert!(FloodCmd::parse("peek").is_none());
    }

    #[test]
    fn flooder_replies_are_counted_whole_and_checked() {
        assert_eq!(scan_replies(b"INSERTED 1\r\nINSERTED 2\r\nINSE", b'I'), Ok((2, 24)));
        assert_eq!(scan_replies(b"USING default\r\n", b'U'), Ok((1, 15)));
        assert_eq!(scan_replies(b"", b'I'), Ok((0, 0)));
        let err = scan_replies(b"INSERTED 1\r\nOUT_OF_MEMORY\r\n", b'I').unwrap_err();
        assert!(err.contains("OUT_OF_MEMORY"), "{err}");
    }

    #[test]
    fn stats_replies_are_counted_only_when_complete() {
        // "OK 3", three bytes of document, CRLF: 11 bytes each.
        assert_eq!(scan_stats(b"OK 3\r\nabc\r\nOK 3\r\nabc\r\n"), Ok((2, 22)));
        assert_eq!(scan_stats(b"OK 3\r\nabc\r\nOK 3\r\nab"), Ok((1, 11)));
        // A document may contain CRLF; the length decides where it ends.
        assert_eq!(scan_stats(b"OK 4\r\na\r\nb\r\nOK"), Ok((1, 12)));
        assert!(scan_stats(b"OUT_OF_MEMORY\r\n").is_err());
    }

    #[test]
    fn reply_numbers() {
        assert_eq!(reply_number(b"INSERTED 42"), Some(42));
        assert_eq!(reply_number(b"RESERVED 7 5"), Some(7));
        assert_eq!(reply_number(b"DELETED"), None);
    }

    #[test]
    fn options_are_checked_per_mode() {
        let args = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert!(Opts::parse(&args("flood --flooders 3 --cmd list-tube-used")).is_ok());
        assert!(Opts::parse(&args("flood --burst 3")).is_err());
        assert!(Opts::parse(&args("noread --conns 10")).is_err(), "--pid is required");
        let o = Opts::parse(&args("slowbody --pid 1 --size 10")).expect("valid");
        assert_eq!((o.size, o.conns), (10, 2000));
    }

    #[test]
    fn json_escapes_strings() {
        let mut j = Json::default();
        j.str("error", "a \"b\"\n");
        j.num("n", 3);
        assert_eq!(j.finish(), r#"{"error":"a \"b\"\u000a","n":3}"#);
    }
}
