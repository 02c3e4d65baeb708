//! Fairness, on both back ends, with one core and with four: while several
//! clients pipeline puts as fast as they can, an ordinary client that sends
//! one command at a time is still served, correctly, and so is every
//! flooder. Only correctness is asserted here; how long the ordinary client
//! waits is measured by `runnerbean-flood` (scripts/fairness), not tested.

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{Server, on_both_and_four_cores, stat};

/// Flooding connections.
const FLOODERS: usize = 8;
/// Puts each flooder writes at once, many more than a connection may run
/// in one turn, so each one's input is carried from turn to turn.
const PUTS_PER_WRITE: usize = 500;
/// Put/reserve/delete cycles of the ordinary client.
const CYCLES: usize = 40;

/// A flooder: writes PUTS_PER_WRITE puts at a time into tube `flood` and
/// reads their replies, until told to stop; checks that every reply is an
/// INSERTED with a larger id than the one before. Returns the puts made.
fn flood(port: u16, stop: Arc<AtomicBool>) -> u64 {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(common::REPLY_TIMEOUT)).unwrap();
    stream.write_all(b"use flood\r\n").unwrap();
    let mut expect_using = [0u8; 12];
    stream.read_exact(&mut expect_using).unwrap();
    assert_eq!(&expect_using, b"USING flood\r");
    let mut lf = [0u8; 1];
    stream.read_exact(&mut lf).unwrap();
    let batch = b"put 0 0 60 4\r\nfood\r\n".repeat(PUTS_PER_WRITE);
    let (mut puts, mut last_id) = (0u64, 0u64);
    let mut buf = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        stream.write_all(&batch).unwrap();
        let mut replies = 0;
        while replies < PUTS_PER_WRITE {
            let mut chunk = [0u8; 16384];
            let n = stream.read(&mut chunk).unwrap();
            assert!(n > 0, "a flooder was closed");
            buf.extend_from_slice(&chunk[..n]);
            while let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
                let line = std::str::from_utf8(&buf[..end]).unwrap().to_string();
                buf.drain(..end + 2);
                let id: u64 = line.strip_prefix("INSERTED ").and_then(|n| n.parse().ok()).unwrap_or_else(|| {
                    panic!("a flooder got {line:?}");
                });
                assert!(id > last_id, "ids out of order: {id} after {last_id}");
                last_id = id;
                replies += 1;
            }
        }
        puts += PUTS_PER_WRITE as u64;
    }
    puts
}

#[test]
fn an_ordinary_client_is_served_while_others_flood() {
    on_both_and_four_cores(|backend| {
        let server = Server::start(backend, &[]);
        let stop = Arc::new(AtomicBool::new(false));
        let flooders: Vec<_> = (0..FLOODERS)
            .map(|_| {
                let (port, stop) = (server.port, stop.clone());
                std::thread::spawn(move || flood(port, stop))
            })
            .collect();
        let mut c = server.connect();
        assert_eq!(
            c.ask(b"use mine\r\nwatch mine\r\nignore default\r\n", 3),
            "USING mine\r\nWATCHING 2\r\nWATCHING 1\r\n"
        );
        for _ in 0..CYCLES {
            let inserted = c.ask(b"put 0 0 60 5\r\nhello\r\n", 1);
            let id = inserted.strip_prefix("INSERTED ").and_then(|r| r.strip_suffix("\r\n")).unwrap().to_string();
            assert_eq!(c.ask(b"reserve-with-timeout 5\r\n", 1), format!("RESERVED {id} 5\r\nhello\r\n"));
            assert_eq!(c.ask(format!("delete {id}\r\n").as_bytes(), 1), "DELETED\r\n");
        }
        // A reserve that times out still answers while the flood goes on.
        assert_eq!(c.ask(b"reserve-with-timeout 0\r\n", 1), "TIMED_OUT\r\n");
        stop.store(true, Ordering::Relaxed);
        let flooded: u64 = flooders.into_iter().map(|f| f.join().unwrap()).sum();
        assert!(flooded >= FLOODERS as u64 * PUTS_PER_WRITE as u64);
        let stats = c.ask(b"stats-tube flood\r\n", 1);
        assert_eq!(stat(&stats, "current-jobs-ready"), flooded.to_string());
        let stats = c.ask(b"stats\r\n", 1);
        assert_eq!(stat(&stats, "cmd-put"), (flooded + CYCLES as u64).to_string());
    });
}
