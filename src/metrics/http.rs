//! The metrics thread: an HTTP/1.1 server (the `oxhttp` crate) that answers
//! `GET /metrics` with [`super::Exporter::render`], and every other path
//! with 404.
//!
//! It runs beside the cores, never on them: its listener thread accepts,
//! and each connection is served on a thread of its own, at most
//! [`METRICS_CONNECTIONS_MAX`] at once (more wait in the listen backlog),
//! each read and write bounded by [`METRICS_TIMEOUT_MS`]. oxhttp rather
//! than tiny_http, the other small synchronous server: tiny_http starts its
//! pool's threads with `thread::spawn`, which panics when a thread cannot
//! be had (a task limit, exhausted memory), and a panic aborts this
//! server; oxhttp reports the failure and goes on, and it bounds the
//! threads it starts.
//!
//! # What it must never do
//! Panic (see `metrics`), or answer a scrape while memory is short: the
//! body is allocated on this thread, from the memory the clients need to
//! get out of the shortage, so a scrape then gets 503 and Prometheus tries
//! at its next interval.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use oxhttp::Server;
use oxhttp::model::header::{ALLOW, CONTENT_TYPE};
use oxhttp::model::{Body, HeaderValue, Method, Request, Response, StatusCode};

use super::Exporter;
use crate::memory;

/// Scrapes served at once. One Prometheus server keeps one connection per
/// target, and a pair of them for high availability two; the rest is room
/// for a person's `curl`. More wait, unaccepted, in the kernel's backlog.
const METRICS_CONNECTIONS_MAX: usize = 4;

/// How long a connection may take to send its request or read the reply,
/// in milliseconds, before it is closed: Prometheus' own default scrape
/// timeout, so that a client that stops half way holds a place no longer
/// than a scrape may last.
const METRICS_TIMEOUT_MS: u64 = 10_000;

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
    pub addr: SocketAddr,
}

impl MetricsServer {
    /// Binds `addr` and starts serving on threads of its own; a failure to
    /// bind is returned here, before the server serves anything.
    pub fn start(addr: SocketAddr, exporter: Arc<Exporter>) -> std::io::Result<MetricsServer> {
        let server = Server::new(move |request| respond(&exporter, request))
            .bind(addr)
            .with_global_timeout(Duration::from_millis(METRICS_TIMEOUT_MS))
            .with_max_concurrent_connections(METRICS_CONNECTIONS_MAX);
        // The handle only joins the threads, which serve until the process
        // exits; dropping it leaves them running.
        drop(server.spawn()?);
        Ok(MetricsServer { addr })
    }
}

fn respond(exporter: &Exporter, request: &Request<Body>) -> Response<Body> {
    if request.uri().path() != "/metrics" {
        return text(StatusCode::NOT_FOUND, "not found: the metrics are at /metrics\n".to_string());
    }
    if request.method() != Method::GET {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".to_string());
        response.headers_mut().insert(ALLOW, HeaderValue::from_static("GET"));
        return response;
    }
    if memory::is_short() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "memory is short; the metrics wait until it is not\n".into());
    }
    let mut response = Response::new(Body::from(exporter.render()));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_TEXT));
    response
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
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
