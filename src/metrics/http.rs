//! The metrics thread: it accepts on the metrics address, reads one HTTP/1.x
//! request per connection (parsed by the `httparse` crate), answers
//! `GET /metrics` with [`super::Exporter::render`] and every other path
//! with 404, and closes the connection.
//!
//! One thread, one connection at a time: a scrape takes a millisecond or
//! two, Prometheus scrapes a target every 15 s or more, and a request must
//! arrive whole within [`METRICS_REQUEST_MS`], so a client that sends
//! nothing delays the others by that much at most and costs nothing else.
//! The loop around `httparse` is ours rather than a server crate's:
//! tiny_http and oxhttp both retry a failing `accept` at once, which spins
//! a core and floods the log for as long as the process is out of
//! descriptors (a state the server itself rides out, docs/COMPAT.md 11),
//! and tiny_http starts threads with `thread::spawn`, which panics when one
//! cannot be had; here a failing accept pauses for
//! [`ACCEPT_ERROR_PAUSE_MS`] and is logged once a minute at most.
//!
//! # What it must never do
//! Panic (see `metrics`), hold a connection past its deadlines, or answer a
//! scrape while memory is short: the body is allocated on this thread, from
//! the memory the clients need to get out of the shortage, so a scrape then
//! gets 503 and Prometheus tries again at its next interval.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Exporter;
use crate::memory;

/// The most bytes of a request read: Prometheus sends about 300, `curl`
/// about 80.
const REQUEST_BYTES_MAX: usize = 8 * 1024;

/// Header lines a request may have; more are a bad request.
const REQUEST_HEADERS_MAX: usize = 32;

/// How long a connection may take to deliver its whole request, in
/// milliseconds, before it gets 408 and is closed. A scrape's request is
/// one packet, sent at once.
const METRICS_REQUEST_MS: u64 = 2_000;

/// How long one write of the reply may wait for the client to read, in
/// milliseconds: Prometheus' default scrape timeout. A reply (about 100 KB
/// with a thousand tubes) usually fits in the socket's buffer at once.
const METRICS_REPLY_MS: u64 = 10_000;

/// The pause after a failed accept (out of descriptors, most likely), so
/// the thread does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE_MS: u64 = 100;

/// At most one log line per this many seconds about failing accepts.
const ACCEPT_LOG_INTERVAL_S: u64 = 60;

/// The format of the body, as Prometheus asks for it.
const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `--metrics ADDR`: `HOST:PORT` (a name or an address, `[::1]:9127` for
/// IPv6), or `:PORT` for every IPv4 address, as exporters' listen flags
/// write it.
pub fn parse_addr(value: &str) -> Result<SocketAddr, String> {
    let spelled = match value.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => value.to_string(),
    };
    let mut addrs = spelled.to_socket_addrs().map_err(|e| format!("--metrics {value}: {e}"))?;
    addrs.next().ok_or_else(|| format!("--metrics {value}: no address"))
}

/// The running metrics server.
pub struct MetricsServer {
    /// The address bound (with the port chosen, when 0 was asked for).
    pub addr: SocketAddr,
}

impl MetricsServer {
    /// Binds `addr` and starts the metrics thread; a failure to bind or to
    /// start the thread is returned here, before anything is served.
    pub fn start(addr: SocketAddr, exporter: Arc<Exporter>) -> io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        std::thread::Builder::new().name("metrics".to_string()).spawn(move || serve(&listener, &exporter))?;
        Ok(MetricsServer { addr })
    }
}

fn serve(listener: &TcpListener, exporter: &Exporter) {
    let mut failure_logged_at: Option<Instant> = None;
    loop {
        match listener.accept() {
            // A connection that fails only loses its own answer.
            Ok((stream, _)) => drop(answer(stream, exporter)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                if failure_logged_at.is_none_or(|at| at.elapsed() >= Duration::from_secs(ACCEPT_LOG_INTERVAL_S)) {
                    eprintln!("runnerbean: metrics: accept(): {e}");
                    failure_logged_at = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(ACCEPT_ERROR_PAUSE_MS));
            }
        }
    }
}

/// A reply: status line, extra header lines, body.
struct Reply {
    status: &'static str,
    headers: &'static str,
    content_type: &'static str,
    body: String,
}

fn text(status: &'static str, body: &str) -> Reply {
    Reply { status, headers: "", content_type: "text/plain; charset=utf-8", body: body.to_string() }
}

/// Reads one request from `stream`, answers it and closes.
fn answer(mut stream: TcpStream, exporter: &Exporter) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_millis(METRICS_REQUEST_MS);
    let mut buf = [0u8; REQUEST_BYTES_MAX];
    let mut len = 0;
    let reply = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break text("408 Request Timeout", "the request did not arrive in time\n");
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf[len..]) {
            // Gone before it asked for anything.
            Ok(0) => return Ok(()),
            Ok(n) => len += n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        let mut headers = [httparse::EMPTY_HEADER; REQUEST_HEADERS_MAX];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => break route(request.method, request.path, exporter),
            Ok(httparse::Status::Partial) if len == buf.len() => {
                break text("431 Request Header Fields Too Large", "the request is too large\n");
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => break text("400 Bad Request", &format!("{e}\n")),
        }
    };
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n",
        reply.status,
        reply.content_type,
        reply.body.len(),
        reply.headers
    );
    stream.set_write_timeout(Some(Duration::from_millis(METRICS_REPLY_MS)))?;
    stream.write_all(head.as_bytes())?;
    stream.write_all(reply.body.as_bytes())?;
    stream.shutdown(Shutdown::Write)
}

fn route(method: Option<&str>, path: Option<&str>, exporter: &Exporter) -> Reply {
    // The query string is not part of the path.
    let path = path.unwrap_or("").split('?').next().unwrap_or("");
    if path != "/metrics" {
        return text("404 Not Found", "not found: the metrics are at /metrics\n");
    }
    if method != Some("GET") {
        return Reply { headers: "Allow: GET\r\n", ..text("405 Method Not Allowed", "only GET\n") };
    }
    if memory::is_short() {
        return text("503 Service Unavailable", "memory is short; the metrics wait until it is not\n");
    }
    Reply { status: "200 OK", headers: "", content_type: CONTENT_TYPE_TEXT, body: exporter.render() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_host_and_port_or_a_bare_port() {
        assert_eq!(parse_addr("127.0.0.1:9127"), Ok("127.0.0.1:9127".parse().unwrap()));
        assert_eq!(parse_addr("[::1]:9127"), Ok("[::1]:9127".parse().unwrap()));
        assert_eq!(parse_addr(":9127"), Ok("0.0.0.0:9127".parse().unwrap()));
        assert!(parse_addr("localhost:9127").is_ok_and(|a| a.ip().is_loopback()));
        for bad in ["9127", "127.0.0.1", "127.0.0.1:x", ":", ""] {
            let err = parse_addr(bad).unwrap_err();
            assert!(err.starts_with(&format!("--metrics {bad}: ")), "{err}");
        }
    }
}
