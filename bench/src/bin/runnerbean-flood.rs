//! runnerbean-flood: how well a server serves an ordinary client while a
//! few others pipeline commands as fast as they can.
//!
//! `--flooders F` connections each write one command (a put into tube
//! `flood` by default) over and over, as fast as the server takes them, and
//! read and count whatever replies come back; all of them run on one thread
//! over mio. Meanwhile two probe threads with blocking sockets measure what
//! an ordinary client sees:
//!
//! * the cycle prober puts a job into its own tube, reserves it and deletes
//!   it, one request at a time, and records the time of each whole cycle;
//! * the timeout prober sends `reserve-with-timeout 1` on an empty tube and
//!   records how late the `TIMED_OUT` comes (its arrival less one second).
//!
//! The probe threads ask for SCHED_FIFO (it works as root and fails
//! harmlessly otherwise), so that on a core shared with the flooding thread
//! they measure the server and not the scheduler; the report says whether
//! they got it. The result is one line of JSON on stdout.
//!
//! Usage: `runnerbean-flood --addr HOST:PORT [--flooders F] [--secs S]
//! [--size BYTES] [--flood put|list-tube-used]`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::{Events, Interest, Poll, Token};

const USAGE: &str = "\
runnerbean-flood --addr HOST:PORT [options]

  --flooders F   connections pipelining commands as fast as they can (default 20)
  --secs S       how long to measure (default 5)
  --size BYTES   body bytes of each flooding put (default 16)
  --flood KIND   what the flooders send: put (default) or list-tube-used
";

/// Bytes of commands written per flooder per write call: many commands per
/// system call, so the generator is never what limits the flood.
const FLOOD_CHUNK_BYTES: usize = 64 * 1024;
/// Bytes read per read call on a flooder.
const READ_CHUNK_BYTES: usize = 256 * 1024;
/// How long a probe waits for one reply before the run counts as failed.
const PROBE_REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// A pause between two probe cycles, so the probe samples the server
/// rather than competing with the flooders for it.
const PROBE_GAP: Duration = Duration::from_millis(1);

struct Opts {
    addr: SocketAddr,
    flooders: usize,
    secs: f64,
    size: usize,
    flood: String,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        addr: "127.0.0.1:11300".parse().expect("a valid address"),
        flooders: 20,
        secs: 5.0,
        size: 16,
        flood: "put".into(),
    };
    let mut i = 0;
    while i < args.len() {
        let flag = args[i].as_str();
        let value = args.get(i + 1).ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |_| format!("{flag}: bad value {value}");
        match flag {
            "--addr" => o.addr = value.parse().map_err(bad)?,
            "--flooders" => o.flooders = value.parse().map_err(|_| format!("--flooders: bad value {value}"))?,
            "--secs" => o.secs = value.parse().map_err(|_| format!("--secs: bad value {value}"))?,
            "--size" => o.size = value.parse().map_err(|_| format!("--size: bad value {value}"))?,
            "--flood" if matches!(value.as_str(), "put" | "list-tube-used") => o.flood = value.clone(),
            _ => return Err(format!("unknown option {flag} {value}")),
        }
        i += 2;
    }
    Ok(o)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("histogram bounds")
}

/// Asks for real-time scheduling for the calling thread; true if granted.
fn realtime() -> bool {
    let param = libc::sched_param { sched_priority: 10 };
    // Safety: a plain system call on the calling thread (pid 0).
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0 }
}

/// A blocking connection that reads one reply at a time.
struct Probe {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Probe {
    fn connect(addr: SocketAddr) -> io::Result<Probe> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(PROBE_REPLY_TIMEOUT))?;
        Ok(Probe { stream, buf: Vec::new() })
    }

    /// Sends `request` and returns the first line of the reply (a body
    /// announced by RESERVED is read and dropped).
    fn ask(&mut self, request: &[u8]) -> io::Result<String> {
        self.stream.write_all(request)?;
        loop {
            if let Some(nl) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..nl]).into_owned();
                let mut used = nl + 2;
                if line.starts_with("RESERVED ") {
                    let size: usize = line.rsplit(' ').next().and_then(|s| s.parse().ok()).unwrap_or(0);
                    if self.buf.len() < used + size + 2 {
                        self.more()?;
                        continue;
                    }
                    used += size + 2;
                }
                self.buf.drain(..used);
                return Ok(line);
            }
            self.more()?;
        }
    }

    fn more(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed a probe"));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn expect(got: String, prefix: &str) -> io::Result<String> {
    if got.starts_with(prefix) { Ok(got) } else { Err(io::Error::other(format!("expected {prefix}, got {got}"))) }
}

/// Put, reserve, delete in a loop; the histogram of whole cycles (ns).
fn cycle_probe(addr: SocketAddr, stop: Arc<AtomicBool>) -> io::Result<(Histogram<u64>, bool)> {
    let rt = realtime();
    let mut p = Probe::connect(addr)?;
    expect(p.ask(b"use probe\r\n")?, "USING")?;
    expect(p.ask(b"watch probe\r\n")?, "WATCHING")?;
    expect(p.ask(b"ignore default\r\n")?, "WATCHING")?;
    let mut h = histogram();
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        expect(p.ask(b"put 0 0 60 5\r\nhello\r\n")?, "INSERTED")?;
        let reserved = expect(p.ask(b"reserve-with-timeout 10\r\n")?, "RESERVED")?;
        let id = reserved.split(' ').nth(1).unwrap_or("0").to_string();
        expect(p.ask(format!("delete {id}\r\n").as_bytes())?, "DELETED")?;
        h.saturating_record(start.elapsed().as_nanos() as u64);
        std::thread::sleep(PROBE_GAP);
    }
    Ok((h, rt))
}

/// `reserve-with-timeout 1` on an empty tube in a loop; the histogram of
/// how late each TIMED_OUT came (ns).
fn timeout_probe(addr: SocketAddr, stop: Arc<AtomicBool>) -> io::Result<Histogram<u64>> {
    realtime();
    let mut p = Probe::connect(addr)?;
    expect(p.ask(b"watch empty-probe\r\n")?, "WATCHING")?;
    expect(p.ask(b"ignore default\r\n")?, "WATCHING")?;
    let mut h = histogram();
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        expect(p.ask(b"reserve-with-timeout 1\r\n")?, "TIMED_OUT")?;
        let late = start.elapsed().saturating_sub(Duration::from_secs(1));
        h.saturating_record(late.as_nanos() as u64);
    }
    Ok(h)
}

/// The flooders, on this thread, until `secs` pass; commands answered.
fn flood(o: &Opts) -> io::Result<u64> {
    let command = match o.flood.as_str() {
        "put" => {
            let mut put = format!("put 0 0 60 {}\r\n", o.size).into_bytes();
            put.extend(std::iter::repeat_n(b'x', o.size));
            put.extend_from_slice(b"\r\n");
            put
        }
        _ => b"list-tube-used\r\n".to_vec(),
    };
    let chunk = command.repeat(FLOOD_CHUNK_BYTES.div_ceil(command.len()));
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let mut conns = Vec::new();
    for i in 0..o.flooders {
        let std = std::net::TcpStream::connect(o.addr)?;
        std.set_nodelay(true)?;
        let mut p = Probe { stream: std.try_clone()?, buf: Vec::new() };
        expect(p.ask(b"use flood\r\n")?, "USING")?;
        std.set_nonblocking(true)?;
        let mut stream = mio::net::TcpStream::from_std(std);
        poll.registry().register(&mut stream, Token(i), Interest::READABLE | Interest::WRITABLE)?;
        // Bytes of `chunk` already written (the write position within it).
        conns.push((stream, 0usize));
    }
    let mut replies = 0u64;
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    let end = Instant::now() + Duration::from_secs_f64(o.secs);
    while Instant::now() < end {
        poll.poll(&mut events, Some(Duration::from_millis(10)))?;
        for event in events.iter() {
            let (stream, at) = &mut conns[event.token().0];
            if event.is_readable() {
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) => return Err(io::Error::other("the server closed a flooder")),
                        Ok(n) => replies += memchr::memchr_iter(b'\n', &buf[..n]).count() as u64,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            if event.is_writable() {
                loop {
                    match stream.write(&chunk[*at..]) {
                        Ok(n) => *at = (*at + n) % chunk.len(),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }
    Ok(replies)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let o = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("runnerbean-flood: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let cycles = {
        let stop = stop.clone();
        let addr = o.addr;
        std::thread::spawn(move || cycle_probe(addr, stop))
    };
    let timeouts = {
        let stop = stop.clone();
        let addr = o.addr;
        std::thread::spawn(move || timeout_probe(addr, stop))
    };
    let start = Instant::now();
    let flooded = flood(&o);
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let cycles = cycles.join().expect("cycle probe thread");
    let timeouts = timeouts.join().expect("timeout probe thread");
    let (flooded, (cycles, realtime), timeouts) = match (flooded, cycles, timeouts) {
        (Ok(f), Ok(c), Ok(t)) => (f, c, t),
        (f, c, t) => {
            for e in [f.err(), c.err(), t.err()].into_iter().flatten() {
                eprintln!("runnerbean-flood: {e}");
            }
            return ExitCode::FAILURE;
        }
    };
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e6;
    println!(
        "{{\"flood\":\"{}\",\"flooders\":{},\"secs\":{elapsed:.2},\"flood_ops_per_sec\":{:.0},\
         \"cycles\":{},\"cycle_p50_ms\":{:.2},\"cycle_p99_ms\":{:.2},\"cycle_max_ms\":{:.2},\
         \"timeouts\":{},\"timeout_late_p50_ms\":{:.2},\"timeout_late_max_ms\":{:.2},\"probe_realtime\":{realtime}}}",
        o.flood,
        o.flooders,
        flooded as f64 / elapsed,
        cycles.len(),
        ms(&cycles, 0.5),
        ms(&cycles, 0.99),
        cycles.max() as f64 / 1e6,
        timeouts.len(),
        ms(&timeouts, 0.5),
        timeouts.max() as f64 / 1e6,
    );
    ExitCode::SUCCESS
}
