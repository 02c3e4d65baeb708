//! Stopping and restarting, on both back ends: after SIGTERM or SIGINT the
//! server stops in order (every reply it owes for a command it ran is
//! delivered, the port is free the moment the process is gone, exit 0),
//! and after SIGKILL, which it cannot clean up after, a new server on the
//! same port still starts at once.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Client, REPLY_TIMEOUT, Server, on_both_and_four_cores, stat};

/// Rounds of stop and restart per back end.
const ROUNDS: usize = 20;

/// A port below the kernel's ephemeral range, free now. Client sockets take
/// their ports from that range, so none of them can take this port while
/// the servers on it come and go.
///
/// The tests of this file run side by side, so each call starts from
/// another candidate: two tests that found the same port free would
/// otherwise each see the other's server on it.
fn fixed_port() -> u16 {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let low: u16 = range.split_whitespace().next().and_then(|p| p.parse().ok()).unwrap_or(32768);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let seed = u64::from(std::process::id()).wrapping_mul(2654435761).wrapping_add(call * 1_000_003);
    let span = u64::from(low.saturating_sub(20_000)).max(1);
    for i in 0..1000 {
        let port = 20_000 + ((seed.wrapping_add(i * 7919)) % span) as u16;
        if bind_reusing(port).is_ok() {
            return port;
        }
    }
    panic!("no free port below {low}");
}

/// Binds 127.0.0.1:port with SO_REUSEADDR and listens, as a server
/// restarting on the port would.
fn bind_reusing(port: u16) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    socket.bind(&addr.into())?;
    socket.listen(16)?;
    Ok(socket)
}

/// Waits until the server's `stats` say `key: value`.
fn wait_for_stat(probe: &mut Client, key: &str, value: &str) {
    let deadline = Instant::now() + REPLY_TIMEOUT;
    loop {
        let stats = probe.ask(b"stats\r\n", 1);
        if stat(&stats, key) == value {
            return;
        }
        assert!(Instant::now() < deadline, "{key} never became {value}:\n{stats}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Writes `bytes` without ever blocking for long: a client that never
/// reads may find the server no longer reading it either.
fn send_until_refused(c: &mut Client, bytes: &[u8]) {
    use std::io::Write;
    c.stream.set_nonblocking(true).unwrap();
    let (mut sent, mut refused) = (0, 0);
    while sent < bytes.len() && refused < 20 {
        match c.stream.write(&bytes[sent..]) {
            Ok(n) => {
                sent += n;
                refused = 0;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                refused += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("write: {e}"),
        }
    }
    c.stream.set_nonblocking(false).unwrap();
}

/// A put of `size` bytes of `fill`, line and body.
fn put(size: usize, fill: u8) -> Vec<u8> {
    let mut bytes = format!("put 0 0 60 {size}\r\n").into_bytes();
    bytes.resize(bytes.len() + size, fill);
    bytes.extend_from_slice(b"\r\n");
    bytes
}

/// Connections in every state a stop must end: idle, in the middle of a
/// large put body (received straight into the job on both back ends),
/// blocked in reserve, and one that never reads while it is owed replies
/// (its send stays in flight). Returns them, to be dropped after the stop.
fn busy_connections(server: &Server) -> Vec<Client> {
    let mut probe = server.connect();
    let idle: Vec<Client> = (0..3).map(|_| server.connect()).collect();
    let mut body = server.connect();
    body.send(b"use big\r\nput 0 0 60 1000000\r\n");
    body.send(&[b'b'; 100_000]);
    let mut blocked = server.connect();
    blocked.send(b"watch nothing\r\nignore default\r\nreserve\r\n");
    let mut greedy = server.connect();
    assert_eq!(greedy.ask(&put(60_000, b'g'), 1), "INSERTED 1\r\n");
    send_until_refused(&mut greedy, &b"peek 1\r\n".repeat(2000));
    wait_for_stat(&mut probe, "cmd-put", "2");
    wait_for_stat(&mut probe, "current-waiting", "1");
    let mut all = idle;
    all.extend([probe, body, blocked, greedy]);
    all
}

#[test]
fn after_sigterm_or_sigint_the_port_is_free_at_once() {
    on_both_and_four_cores(|backend| {
        let port = fixed_port().to_string();
        for round in 0..ROUNDS {
            let mut server = Server::start(backend, &["-p", &port]);
            let clients = busy_connections(&server);
            server.signal(if round % 2 == 0 { "TERM" } else { "INT" });
            // The first round waits out the grace the client that never
            // reads is given; the others cut it short with a second signal
            // (another one, so the two cannot merge into one).
            if round > 0 {
                server.signal(if round % 2 == 0 { "INT" } else { "TERM" });
            }
            assert_eq!(server.wait(REPLY_TIMEOUT), Some(0), "{backend} round {round}:\n{}", server.log_text());
            if let Err(e) = bind_reusing(port.parse().unwrap()) {
                // What holds the port, if `ss` is there to say.
                let ss = std::process::Command::new("ss").arg("-tanp").output().map(|o| o.stdout).unwrap_or_default();
                let ss = String::from_utf8_lossy(&ss);
                let holders: Vec<&str> = ss.lines().filter(|l| l.contains(&format!(":{port} "))).collect();
                panic!("{backend} round {round}: port {port} still bound after exit: {e}\n{holders:#?}");
            }
            drop(clients);
        }
    });
}

#[test]
fn replies_earned_before_the_stop_are_all_delivered() {
    on_both_and_four_cores(|backend| {
        let mut server = Server::start(backend, &[]);
        let mut probe = server.connect();
        // A pipelined burst, not read before the signal.
        let mut burst = server.connect();
        let n = 2000;
        burst.send(&put(3, b'x').repeat(n));
        wait_for_stat(&mut probe, "cmd-put", &n.to_string());
        // Replies far larger than the socket buffers, not read before the
        // signal: the server holds most of them, and commands past its
        // high mark wait unrun. Once the count of peeks stops moving, every
        // peek that ran must be answered in full, and no other.
        let mut greedy = server.connect();
        let size = 60_000;
        assert_eq!(greedy.ask(&put(size, b'p'), 1), format!("INSERTED {}\r\n", n + 1));
        let id = n + 1;
        send_until_refused(&mut greedy, &format!("peek {id}\r\n").repeat(1000).into_bytes());
        let mut peeks = String::new();
        for _ in 0..100 {
            let now = stat(&probe.ask(b"stats\r\n", 1), "cmd-peek").to_string();
            if now == peeks {
                break;
            }
            peeks = now;
            std::thread::sleep(Duration::from_millis(50));
        }
        let peeks: usize = peeks.parse().unwrap();
        assert!(peeks > 0 && peeks < 1000, "{peeks} peeks ran");
        server.signal("TERM");

        let expected: String = (1..=n).map(|i| format!("INSERTED {i}\r\n")).collect();
        assert_eq!(String::from_utf8(burst.read_to_eof()).unwrap(), expected);
        let mut one = format!("FOUND {id} {size}\r\n").into_bytes();
        one.resize(one.len() + size, b'p');
        one.extend_from_slice(b"\r\n");
        let got = greedy.read_to_eof();
        assert_eq!(got.len(), peeks * one.len(), "{peeks} peeks ran");
        assert!(got.chunks(one.len()).all(|reply| reply == one));
        assert_eq!(probe.read_to_eof(), b"");
        assert_eq!(server.wait(REPLY_TIMEOUT), Some(0));
    });
}

#[test]
fn after_sigkill_a_new_server_starts_on_the_same_port_at_once() {
    on_both_and_four_cores(|backend| {
        let port = fixed_port().to_string();
        for round in 0..ROUNDS {
            let mut server = Server::start(backend, &["-p", &port]);
            let clients: Vec<Client> = (0..5).map(|_| server.connect()).collect();
            let mut blocked = server.connect();
            blocked.send(b"reserve\r\n");
            let mut probe = server.connect();
            wait_for_stat(&mut probe, "current-waiting", "1");
            server.signal("KILL");
            assert_eq!(server.wait(REPLY_TIMEOUT), None, "killed by a signal");
            // A restart at once: the new server binds (retrying while the
            // kernel still holds the old listener) and serves.
            let again = Server::start(backend, &["-p", &port]);
            let mut c = again.connect();
            assert_eq!(c.ask(b"put 0 0 60 2\r\nhi\r\n", 1), "INSERTED 1\r\n", "{backend} round {round}");
            drop((clients, blocked, probe));
        }
    });
}

/// What a client library's test fixture does between two tests (beanstalkc's
/// sends SIGTERM and starts the next server at once, without waiting): the
/// new server on the same port starts while the last one is still stopping,
/// and it is the one that answers. In the first round the old server still
/// owes replies to a client that never reads, so it is alive for its whole
/// grace period while the new one serves.
#[test]
fn a_new_server_starts_on_the_port_while_the_last_one_is_still_stopping() {
    on_both_and_four_cores(|backend| {
        let port = fixed_port().to_string();
        let mut old = Server::start(backend, &["-p", &port]);
        for round in 0..ROUNDS {
            let mut clients: Vec<Client> = (0..3).map(|_| old.connect()).collect();
            let mut blocked = old.connect();
            blocked.send(b"reserve\r\n");
            let mut probe = old.connect();
            wait_for_stat(&mut probe, "current-waiting", "1");
            if round == 0 {
                let mut greedy = old.connect();
                assert_eq!(greedy.ask(&put(60_000, b'g'), 1), "INSERTED 1\r\n");
                send_until_refused(&mut greedy, &b"peek 1\r\n".repeat(2000));
                clients.push(greedy);
            }
            old.signal("TERM");
            let new = Server::start(backend, &["-p", &port]);
            let mut c = new.connect();
            let stats = c.ask(b"stats\r\n", 1);
            assert_eq!(
                stat(&stats, "pid"),
                new.pid().to_string(),
                "{backend} round {round}: answered by the old server"
            );
            assert_eq!(c.ask(b"put 0 0 60 2\r\nhi\r\n", 1), "INSERTED 1\r\n", "{backend} round {round}");
            assert_eq!(c.ask(b"reserve-with-timeout 0\r\n", 1), "RESERVED 1 2\r\nhi\r\n", "{backend} round {round}");
            assert_eq!(c.ask(b"delete 1\r\n", 1), "DELETED\r\n", "{backend} round {round}");
            assert_eq!(old.wait(REPLY_TIMEOUT), Some(0), "{backend} round {round}:\n{}", old.log_text());
            drop((clients, blocked, probe));
            old = new;
        }
    });
}
