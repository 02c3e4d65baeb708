//! The connection's behaviour against scripted fake servers: every error reply maps to its
//! error, broken framing and silence close the connection, and the timeouts hold.

use std::time::Duration;

use runnerbean_client::{Client, Error, JobId, Options, PutOptions};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A server that answers the n-th command with `replies[n]`, then keeps the connection open
/// without answering. It reads a put's body so that the body is not taken for a command.
async fn scripted(replies: Vec<&'static [u8]>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        let (socket, _) = listener.accept().await.expect("accept");
        let mut socket = BufReader::new(socket);
        for reply in replies {
            let mut line = String::new();
            if socket.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            if let Some(size) = line.strip_prefix("put ").and_then(|rest| rest.split_whitespace().nth(3)) {
                let mut body = vec![0; size.parse::<usize>().expect("size") + 2];
                socket.read_exact(&mut body).await.expect("body");
            }
            socket.get_mut().write_all(reply).await.expect("write");
        }
        // Hold the connection open and silent.
        let mut rest = Vec::new();
        let _ = socket.read_to_end(&mut rest).await;
    });
    addr
}

/// A reply and the test its error must pass.
type Case = (&'static [u8], fn(&Error) -> bool);

#[tokio::test]
async fn every_error_reply_maps_to_its_error() {
    let cases: Vec<Case> = vec![
        (b"NOT_FOUND\r\n", |e| matches!(e, Error::NotFound)),
        (b"BURIED 42\r\n", |e| matches!(e, Error::Buried(JobId(42)))),
        (b"JOB_TOO_BIG\r\n", |e| matches!(e, Error::JobTooBig)),
        (b"DRAINING\r\n", |e| matches!(e, Error::Draining)),
        (b"DEADLINE_SOON\r\n", |e| matches!(e, Error::DeadlineSoon)),
        (b"TIMED_OUT\r\n", |e| matches!(e, Error::TimedOut)),
        (b"BAD_FORMAT\r\n", |e| matches!(e, Error::BadFormat)),
        (b"UNKNOWN_COMMAND\r\n", |e| matches!(e, Error::UnknownCommand)),
        (b"OUT_OF_MEMORY\r\n", |e| matches!(e, Error::OutOfMemory)),
        (b"INTERNAL_ERROR\r\n", |e| matches!(e, Error::InternalError)),
        (b"EXPECTED_CRLF\r\n", |e| matches!(e, Error::ExpectedCrlf)),
        (b"NOT_IGNORED\r\n", |e| matches!(e, Error::NotIgnored)),
        (b"DELETED\r\n", |e| matches!(e, Error::UnexpectedReply(_))),
    ];
    let addr = scripted(cases.iter().map(|(reply, _)| *reply).chain([&b"INSERTED 7\r\n"[..]]).collect()).await;
    let c = Client::connect(&addr).await.expect("connect");
    for (reply, expected) in &cases {
        let error = c.put(b"x", PutOptions::default()).await.unwrap_err();
        assert!(expected(&error), "{:?} gave {error:?}", String::from_utf8_lossy(reply));
        assert!(error.is_server_reply() || matches!(error, Error::UnexpectedReply(_)));
        assert!(!c.is_closed());
    }
    assert_eq!(c.put(b"x", PutOptions::default()).await.expect("put"), JobId(7));
}

#[tokio::test]
async fn a_release_that_buries_says_which_job() {
    let addr = scripted(vec![b"BURIED\r\n"]).await;
    let c = Client::connect(&addr).await.expect("connect");
    assert!(matches!(c.release(JobId(9), 0, 0).await, Err(Error::Buried(JobId(9)))));
}

#[tokio::test]
async fn broken_framing_closes_the_connection() {
    let addr = scripted(vec![b"HELLO THERE\r\n"]).await;
    let c = Client::connect(&addr).await.expect("connect");
    let error = c.stats().await.unwrap_err();
    assert!(matches!(error, Error::Protocol(_)) && error.is_disconnect(), "{error:?}");
    assert!(c.is_closed());
    assert!(matches!(c.stats().await, Err(Error::Protocol(_))));
}

#[tokio::test]
async fn a_malformed_stats_document_is_a_protocol_error() {
    let addr = scripted(vec![b"OK 12\r\n---\n- a list\r\n", b"OK 10\r\n---\npid: x\r\n"]).await;
    let c = Client::connect(&addr).await.expect("connect");
    let error = c.stats().await.unwrap_err();
    assert_eq!(error.to_string(), "protocol error: stats reply: expected a mapping, found SequenceStart(0, None)");
    let error = c.stats().await.unwrap_err();
    assert_eq!(error.to_string(), "protocol error: stats reply: pid: \"x\" is not a valid value");
}

#[tokio::test]
async fn a_silent_server_times_out_every_pending_command() {
    let addr = scripted(vec![]).await;
    let options = Options::default().read_timeout(Duration::from_millis(100));
    let c = Client::connect_with(&addr, options).await.expect("connect");
    let (a, b) = tokio::join!(c.stats(), c.list_tubes());
    assert!(matches!(a, Err(Error::ReplyTimeout(_))), "{a:?}");
    assert!(matches!(b, Err(Error::ReplyTimeout(_))), "{b:?}");
    assert!(c.is_closed());
    assert!(matches!(c.stats().await, Err(Error::ReplyTimeout(_))));
}

#[tokio::test]
async fn a_plain_reserve_waits_past_the_read_timeout() {
    let addr = scripted(vec![]).await;
    let options = Options::default().read_timeout(Duration::from_millis(50));
    let c = Client::connect_with(&addr, options).await.expect("connect");
    // Nothing answers; the reserve is still waiting after many read timeouts.
    let waited = tokio::time::timeout(Duration::from_millis(400), c.reserve()).await;
    assert!(waited.is_err(), "reserve returned {waited:?}");
    assert!(!c.is_closed());
}

#[tokio::test]
async fn connect_timeout() {
    // A listener whose accept queue is full: the kernel drops further SYNs, so a connect hangs
    // until the client gives up. The queue takes backlog + 1 connections.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().expect("addr").into()).expect("bind");
    socket.listen(0).expect("listen");
    let addr = socket.local_addr().expect("addr").as_socket().expect("inet").to_string();
    let options = Options::default().connect_timeout(Duration::from_millis(200));
    let mut held = Vec::new();
    let mut timed_out = None;
    for _ in 0..8 {
        match Client::connect_with(&addr, options).await {
            Ok(client) => held.push(client),
            Err(e) => {
                timed_out = Some(e);
                break;
            }
        }
    }
    let error = timed_out.expect("a connect should have timed out");
    assert!(matches!(error, Error::ConnectTimeout { .. }), "{error:?}");
    assert_eq!(error.to_string(), format!("cannot connect to {addr}: timed out after 200ms"));
}

#[tokio::test]
async fn bad_addresses_are_refused_before_connecting() {
    for bad in ["", "host:port", "unix:", "two words:11300"] {
        let error = Client::connect(bad).await.unwrap_err();
        assert!(matches!(error, Error::InvalidArgument(_)), "{bad:?}: {error:?}");
    }
}
