//! The write-ahead log against SIGKILL: the real binary with `-b DIR -f0`
//! under pipelined puts and deletes from several connections, killed at
//! random moments and started again on the same directory, cycle after
//! cycle, on both back ends, with one core and with four. After every
//! restart, every put acknowledged (INSERTED) and not acknowledged deleted
//! is there with its exact body, every acknowledged delete stays deleted,
//! and ids go on increasing.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{BACKENDS, Server};

/// What the clients were told, across all cycles.
#[derive(Default)]
struct Acked {
    /// Job id → body, for every INSERTED not followed by a DELETED.
    live: BTreeMap<u64, Vec<u8>>,
    /// Ids whose DELETED arrived.
    deleted: Vec<u64>,
    /// Jobs whose delete was sent but not answered before the kill: either
    /// outcome is right, but a job that is there has its body.
    in_doubt: BTreeMap<u64, Vec<u8>>,
    max_id: u64,
}

/// A tiny xorshift generator: the test needs variety, not quality.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Reads one reply line (through CRLF) from `s`, keeping what follows.
fn line(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            let l = String::from_utf8_lossy(&buf[..i]).into_owned();
            buf.drain(..i + 2);
            return Some(l);
        }
        let mut chunk = [0u8; 65536];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// One client until the server dies: batches of pipelined puts, then
/// deletes of about half of what it put, recording every acknowledgement.
fn client(port: u16, seed: u64, acked: Arc<Mutex<Acked>>, stop: Arc<AtomicBool>) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut rng = Rng(seed | 1);
    let mut buf = Vec::new();
    let mut last = acked.lock().unwrap().max_id;
    while !stop.load(Ordering::Relaxed) {
        let n = 1 + rng.next() % 16;
        let mut bodies = Vec::new();
        let mut out = Vec::new();
        for _ in 0..n {
            let len = (rng.next() % 300) as usize;
            let body: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            out.extend_from_slice(format!("put 0 0 60 {len}\r\n").as_bytes());
            out.extend_from_slice(&body);
            out.extend_from_slice(b"\r\n");
            bodies.push(body);
        }
        if s.write_all(&out).is_err() {
            return;
        }
        let mut mine = Vec::new();
        for body in bodies {
            let Some(reply) = line(&mut s, &mut buf) else { return };
            let id: u64 = reply.strip_prefix("INSERTED ").and_then(|i| i.parse().ok()).unwrap_or_else(|| {
                panic!("put got {reply:?}");
            });
            // Ids increase in put order on a connection, and across
            // restarts (checked at each restart).
            assert!(id > last, "id {id} after {last}");
            last = id;
            let mut a = acked.lock().unwrap();
            a.max_id = a.max_id.max(id);
            a.live.insert(id, body);
            mine.push(id);
        }
        let doomed: Vec<u64> = mine.into_iter().filter(|_| rng.next().is_multiple_of(2)).collect();
        let mut out = Vec::new();
        {
            let mut a = acked.lock().unwrap();
            for id in &doomed {
                out.extend_from_slice(format!("delete {id}\r\n").as_bytes());
                let body = a.live.remove(id).expect("a job of this client");
                a.in_doubt.insert(*id, body);
            }
        }
        if s.write_all(&out).is_err() {
            return;
        }
        for id in doomed {
            let Some(reply) = line(&mut s, &mut buf) else { return };
            assert_eq!(reply, "DELETED", "delete {id}");
            let mut a = acked.lock().unwrap();
            a.in_doubt.remove(&id);
            a.deleted.push(id);
        }
    }
}

/// Checks the restarted server against what was acknowledged, and settles
/// the deletes in doubt by what the server says.
fn check(server: &Server, acked: &mut Acked) {
    let mut c = server.connect();
    for (id, body) in std::mem::take(&mut acked.in_doubt) {
        c.send(format!("peek {id}\r\n").as_bytes());
        let reply = c.replies(1);
        if reply == b"NOT_FOUND\r\n" {
            acked.deleted.push(id);
        } else {
            let want = format!("FOUND {id} {}\r\n", body.len());
            assert!(reply.starts_with(want.as_bytes()), "job {id}: {:?}", String::from_utf8_lossy(&reply));
            assert_eq!(&reply[want.len()..reply.len() - 2], body.as_slice(), "body of job {id}");
            acked.live.insert(id, body);
        }
    }
    for (id, body) in &acked.live {
        c.send(format!("peek {id}\r\n").as_bytes());
        let reply = c.replies(1);
        let want = format!("FOUND {id} {}\r\n", body.len());
        assert!(reply.starts_with(want.as_bytes()), "acknowledged job {id}: {:?}", String::from_utf8_lossy(&reply));
        assert_eq!(&reply[want.len()..reply.len() - 2], body.as_slice(), "body of job {id}");
    }
    for id in &acked.deleted {
        assert_eq!(c.ask(format!("peek {id}\r\n").as_bytes(), 1), "NOT_FOUND\r\n", "deleted job {id} came back");
    }
    let reply = c.ask(b"put 0 0 60 1\r\nx\r\n", 1);
    let id: u64 = reply.trim_end().strip_prefix("INSERTED ").unwrap().parse().unwrap();
    assert!(id > acked.max_id, "id {id} handed out again (highest acknowledged {})", acked.max_id);
    assert_eq!(c.ask(format!("delete {id}\r\n").as_bytes(), 1), "DELETED\r\n");
}

#[test]
fn acknowledged_jobs_survive_sigkill_at_any_moment() {
    kill_and_restart("1", 12);
}

/// The same with four cores: every core writes its own shard's log, and a
/// kill catches each at another point. Six cycles, not twelve: with four
/// shards every `peek` of the checks goes to every core, and the checks
/// of the growing set of jobs are most of the test's time (twelve cycles
/// took 38 to 48 s, six take 7 to 22 s).
#[test]
fn acknowledged_jobs_survive_sigkill_at_any_moment_with_four_cores() {
    kill_and_restart("4", 6);
}

/// Cycles of load, SIGKILL and restart on one directory with `--cores
/// cores`, the back ends taking turns, then a last restart and check.
fn kill_and_restart(cores: &str, cycles: usize) {
    let dir = std::env::temp_dir().join(format!("rb-wal-crash-{}-cores-{cores}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_arg = dir.to_str().unwrap().to_string();
    let acked = Arc::new(Mutex::new(Acked::default()));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
    for cycle in 0..cycles {
        let backend = BACKENDS[cycle % 2];
        let server = Server::start(backend, &["-b", &dir_arg, "-f0", "-s", "65536", "--cores", cores]);
        if cycle > 0 {
            check(&server, &mut acked.lock().unwrap());
        }
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..4)
            .map(|i| {
                let (acked, stop) = (acked.clone(), stop.clone());
                let port = server.port;
                let seed = rng.next() ^ i;
                std::thread::spawn(move || client(port, seed, acked, stop))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50 + rng.next() % 250));
        server.signal("KILL");
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().expect("a client thread failed");
        }
        drop(server);
    }
    let server = Server::start(BACKENDS[0], &["-b", &dir_arg, "--cores", cores]);
    let mut a = acked.lock().unwrap();
    check(&server, &mut a);
    assert!(a.live.len() + a.deleted.len() > 100, "the load was too light to prove anything");
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}
