//! What only a server of several cores does, at the wire, on both back
//! ends: connections spread over the cores by the accepting one (to the
//! core with the fewest), signals that reach every core, the connection
//! limit counted over all of them, and a stop that every core finishes
//! together while connections have work on other cores.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Client, REPLY_TIMEOUT, Server, TempDir, on_both, stat};

const CORES: usize = 4;

/// Starts runnerbean with `--cores 4 --metrics` and more flags; returns it
/// with the metrics port.
fn start(backend: &'static str, args: &[&str]) -> (Server, u16) {
    let server = Server::start(backend, &[&["--cores", "4", "--metrics", "127.0.0.1:0"], args].concat());
    let log = server.wait_for_log("metrics http://127.0.0.1:");
    let port = log
        .lines()
        .find_map(|l| l.strip_prefix("metrics http://127.0.0.1:")?.strip_suffix("/metrics")?.parse().ok())
        .unwrap_or_else(|| panic!("no metrics port in\n{log}"));
    (server, port)
}

/// Every core's open connections, from the metrics.
fn per_core(metrics_port: u16) -> Vec<u64> {
    let mut stream = TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
    stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    (0..CORES)
        .map(|core| {
            let key = format!("runnerbean_connections{{core=\"{core}\"}} ");
            text.lines().find_map(|l| l.strip_prefix(&key)?.parse().ok()).unwrap_or(0)
        })
        .collect()
}

/// Waits until the metrics show `want` connections on each core (a core
/// publishes within 250 ms of a change).
fn await_spread(metrics_port: u16, want: &[u64]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let have = per_core(metrics_port);
        if have == want {
            return;
        }
        assert!(Instant::now() < deadline, "connections per core: {have:?}, want {want:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every connection is answered, wherever it went.
fn served(client: &mut Client) {
    assert_eq!(client.ask(b"list-tube-used\r\n", 1), "USING default\r\n");
}

#[test]
fn connections_go_to_the_core_with_the_fewest() {
    on_both(|backend| {
        let (server, metrics) = start(backend, &[]);
        let mut first = server.connect();
        served(&mut first);
        await_spread(metrics, &[1, 0, 0, 0]);
        let mut clients: Vec<Client> = (0..39).map(|_| server.connect()).collect();
        for c in &mut clients {
            served(c);
        }
        await_spread(metrics, &[10, 10, 10, 10]);
        // The fewest first, the lowest core on a tie: connection i went to
        // core i mod 4, so these ten are core 2's.
        let mut all = vec![first];
        all.extend(clients);
        let (core2, mut rest): (Vec<_>, Vec<_>) = all.into_iter().enumerate().partition(|(i, _)| i % CORES == 2);
        drop(core2);
        await_spread(metrics, &[10, 10, 0, 10]);
        let mut new: Vec<Client> = (0..10).map(|_| server.connect()).collect();
        for c in &mut new {
            served(c);
        }
        await_spread(metrics, &[10, 10, 10, 10]);
        for (_, c) in &mut rest {
            served(c);
        }
    });
}

#[test]
fn the_connection_limit_counts_every_core() {
    on_both(|backend| {
        let (server, metrics) = start(backend, &["--connections-max", "4"]);
        let mut clients: Vec<Client> = (0..4).map(|_| server.connect()).collect();
        for c in &mut clients {
            served(c);
        }
        await_spread(metrics, &[1, 1, 1, 1]);
        // The fifth waits in the kernel's queue: nothing is read from it.
        let mut fifth = server.connect();
        fifth.send(b"list-tube-used\r\n");
        fifth.assert_quiet(Duration::from_millis(300));
        // A close on another core than the accepting one makes room.
        drop(clients.remove(1));
        assert_eq!(String::from_utf8(fifth.replies(1)).unwrap(), "USING default\r\n");
        await_spread(metrics, &[1, 1, 1, 1]);
    });
}

/// Tube names enough that some land on every one of four shards (a tube's
/// shard is a hash of its name).
fn tubes() -> Vec<String> {
    (0..16).map(|i| format!("tube-{i}")).collect()
}

#[test]
fn drain_mode_reaches_every_core() {
    on_both(|backend| {
        let (server, metrics) = start(backend, &[]);
        let mut clients: Vec<Client> = (0..CORES).map(|_| server.connect()).collect();
        for c in &mut clients {
            served(c);
        }
        await_spread(metrics, &[1, 1, 1, 1]);
        server.signal("USR1");
        // Each core learns it when woken; a put on any core, to a tube on any
        // shard, is refused once it has.
        let deadline = Instant::now() + REPLY_TIMEOUT;
        for (i, c) in clients.iter_mut().enumerate() {
            for tube in tubes() {
                assert_eq!(c.ask(format!("use {tube}\r\n").as_bytes(), 1), format!("USING {tube}\r\n"));
                loop {
                    let reply = c.ask(b"put 0 0 10 1\r\nx\r\n", 1);
                    if reply == "DRAINING\r\n" {
                        break;
                    }
                    assert!(reply.starts_with("INSERTED "), "client {i}, {tube}: {reply:?}");
                    assert!(Instant::now() < deadline, "client {i} still puts into {tube} after SIGUSR1");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        let stats = clients[0].ask(b"stats\r\n", 1);
        assert_eq!(stat(&stats, "draining"), "true");
        assert_eq!(stat(&stats, "runnerbean-cores"), "4");
    });
}

#[test]
fn a_stop_with_work_on_every_core_ends_together_and_keeps_the_jobs() {
    on_both(|backend| {
        let dir = TempDir::new(&format!("cores-stop-{backend}"));
        let (mut server, metrics) = start(backend, &["-b", dir.arg()]);
        let mut clients: Vec<Client> = (0..CORES).map(|_| server.connect()).collect();
        for c in &mut clients {
            served(c);
        }
        await_spread(metrics, &[1, 1, 1, 1]);
        let tubes = tubes();
        // Client 0 puts a job into every tube; client 1 reserves one and
        // holds it; client 2 waits in a reserve across every tube, and
        // client 3 in a reserve on a tube that stays empty.
        for tube in &tubes {
            clients[0].ask(format!("use {tube}\r\n").as_bytes(), 1);
            let reply = clients[0].ask(b"put 0 0 60 4\r\nbody\r\n", 1);
            assert!(reply.starts_with("INSERTED "), "{reply}");
        }
        clients[1].ask(format!("watch {}\r\nignore default\r\n", tubes[3]).as_bytes(), 2);
        let reserved = clients[1].ask(b"reserve\r\n", 1);
        assert!(reserved.starts_with("RESERVED "), "{reserved}");
        let drain: String = tubes.iter().map(|t| format!("watch {t}\r\n")).collect();
        clients[2].ask(drain.as_bytes(), tubes.len());
        for _ in 0..tubes.len() - 1 {
            let reply = clients[2].ask(b"reserve-with-timeout 5\r\n", 1);
            assert!(reply.starts_with("RESERVED "), "{reply}");
        }
        clients[2].send(b"reserve\r\n");
        clients[3].ask(b"watch nothing-here\r\nignore default\r\n", 2);
        clients[3].send(b"reserve\r\n");
        clients[2].assert_quiet(Duration::from_millis(100));
        server.signal("TERM");
        assert_eq!(server.wait(Duration::from_secs(10)), Some(0), "{}", server.log_text());
        for c in &mut clients {
            c.read_to_eof();
        }
        // Every job is still there (reserved ones ready again), with its id.
        let (server, _) = start(backend, &["-b", dir.arg()]);
        let mut c = server.connect();
        let stats = c.ask(b"stats\r\n", 1);
        assert_eq!(stat(&stats, "current-jobs-ready"), tubes.len().to_string(), "{stats}");
        let id: u64 = reserved.split(' ').nth(1).unwrap().parse().unwrap();
        assert_eq!(c.ask(format!("peek {id}\r\n").as_bytes(), 1), format!("FOUND {id} 4\r\nbody\r\n"));
    });
}
