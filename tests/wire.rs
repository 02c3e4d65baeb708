//! Wire tests: the real binary on 127.0.0.1, exact reply bytes, and every
//! test on both I/O back ends (io_uring and epoll). Protocol details are
//! covered byte by byte by the conformance corpus (tests/conformance.rs);
//! these tests cover what a corpus script cannot: the back ends
//! themselves, volume, large bodies, slow readers, signals, unix sockets
//! and runnerbean's own answers where it differs from beanstalkd.

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::Duration;

use common::{Client, Server, on_both_and_four_cores, stat};

#[test]
fn each_back_end_is_the_one_asked_for() {
    on_both_and_four_cores(|backend| {
        let server = Server::start(backend, &[]);
        let stats = server.connect().ask(b"stats\r\n", 1);
        let expected = if backend == "uring" { "\"io_uring\"" } else { "\"epoll\"" };
        assert_eq!(stat(&stats, "runnerbean-io"), expected);
    });
    // The flag does the same as the environment variable.
    let server = Server::start("uring", &["--io", "epoll"]);
    assert_eq!(stat(&server.connect().ask(b"stats\r\n", 1), "runnerbean-io"), "\"epoll\"");
}

#[test]
fn stats_has_beanstalkd_1_13_keys_in_order() {
    on_both_and_four_cores(|backend| {
        let server = Server::start(backend, &[]);
        let mut c = server.connect();
        let reply = c.ask(b"stats\r\n", 1);
        let (head, doc) = reply.split_once("\r\n").unwrap();
        let doc = doc.strip_suffix("\r\n").unwrap();
        assert_eq!(head, format!("OK {}", doc.len()));
        let keys: Vec<&str> = doc.lines().skip(1).map(|l| l.split_once(": ").unwrap().0).collect();
        let standard = [
            "current-jobs-urgent",
            "current-jobs-ready",
            "current-jobs-reserved",
            "current-jobs-delayed",
            "current-jobs-buried",
            "cmd-put",
            "cmd-peek",
            "cmd-peek-ready",
            "cmd-peek-delayed",
            "cmd-peek-buried",
            "cmd-reserve",
            "cmd-reserve-with-timeout",
            "cmd-delete",
            "cmd-release",
            "cmd-use",
            "cmd-watch",
            "cmd-ignore",
            "cmd-bury",
            "cmd-kick",
            "cmd-touch",
            "cmd-stats",
            "cmd-stats-job",
            "cmd-stats-tube",
            "cmd-list-tubes",
            "cmd-list-tube-used",
            "cmd-list-tubes-watched",
            "cmd-pause-tube",
            "job-timeouts",
            "total-jobs",
            "max-job-size",
            "current-tubes",
            "current-connections",
            "current-producers",
            "current-workers",
            "current-waiting",
            "total-connections",
            "pid",
            "version",
            "rusage-utime",
            "rusage-stime",
            "uptime",
            "binlog-oldest-index",
            "binlog-current-index",
            "binlog-records-migrated",
            "binlog-records-written",
            "binlog-max-size",
            "draining",
            "id",
            "hostname",
            "os",
            "platform",
        ];
        assert_eq!(standard.len(), 51);
        assert_eq!(&keys[..51], &standard[..]);
        assert_eq!(&keys[51..], &["runnerbean-version", "runnerbean-io", "runnerbean-cores"]);
        assert_eq!(stat(doc, "version"), "\"1.13\"");
        assert_eq!(stat(doc, "pid"), server.pid().to_string());
        assert_eq!(stat(doc, "cmd-stats"), "1");
        assert_eq!(stat(doc, "current-connections"), "1");
        assert_eq!(stat(doc, "max-job-size"), "65535");
        assert_eq!(stat(doc, "binlog-max-size"), "10485760");
        assert_eq!(stat(doc, "draining"), "false");
        let id = stat(doc, "id");
        assert!(id.len() == 16 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        for key in ["hostname", "os", "platform"] {
            let v = stat(doc, key);
            assert!(v.len() >= 2 && v.starts_with('"') && v.ends_with('"'), "{key}: {v}");
        }
        let utime = stat(doc, "rusage-utime");
        let (secs, micros) = utime.split_once('.').unwrap();
        assert!(secs.parse::<u64>().is_ok() && micros.len() == 6, "{utime}");
        // A second connection shows in the counts.
        let mut d = server.connect();
        let doc = d.ask(b"stats\r\n", 1);
        assert_eq!((stat(&doc, "current-connections"), stat(&doc, "total-connections")), ("2", "2"));
    });
}

#[test]
fn tube_and_job_stats_quote_names_as_1_13_does() {
    on_both_and_four_cores(|backend| {
        let server = Server::start(backend, &[]);
        let mut c = server.connect();
        c.ask(b"use foo\r\nput 0 0 1 3\r\nabc\r\n", 2);
        assert_eq!(
            c.ask(b"stats-tube foo\r\n", 1),
            "OK 263\r\n---\nname: \"foo\"\ncurrent-jobs-urgent: 1\ncurrent-jobs-ready: 1\ncurrent-jobs-reserved: 0\n\
current-jobs-delayed: 0\ncurrent-jobs-buried: 0\ntotal-jobs: 1\ncurrent-using: 1\ncurrent-watching: 0\n\
current-waiting: 0\ncmd-delete: 0\ncmd-pause-tube: 0\npause: 0\npause-time-left: 0\n\r\n"
        );
        // The transcript of spec §1.7 for 1.13.
        assert_eq!(
            c.ask(b"stats-job 1\r\n", 1),
            "OK 141\r\n---\nid: 1\ntube: \"foo\"\nstate: ready\npri: 0\nage: 0\ndelay: 0\nttr: 1\ntime-left: 0\n\
file: 0\nreserves: 0\ntimeouts: 0\nreleases: 0\nburies: 0\nkicks: 0\n\r\n"
        );
    });
}

#[test]
fn large_bodies_round_trip_unchanged() {
    on_both_and_four_cores(|backend| {
        let server = Server::start(backend, &["-z", "2000000"]);
        let mut c = server.connect();
        let body: Vec<u8> = (0..1_500_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut put = format!("put 5 0 10 {}\r\n", body.len()).into_bytes();
        put.extend_from_slice(&body);
        put.extend_from_slice(b"\r\n");
        assert_eq!(c.ask(&put, 1), "INSERTED 1\r\n");
        c.send(b"reserve\r\n");
        let reply = c.replies(1);
        let header = format!("RESERVED 1 {}\r\n", body.len());
        assert_eq!(&reply[..header.len()], header.as_bytes());
        assert_eq!(&reply[header.len()..reply.len() - 2], &body[..]);
        // The limit is inclusive; one more byte is thrown away in full.
        c.send(b"put 0 0 1 2000001\r\n");
        c.send(&vec![b'y'; 2_000_001]);
        assert_eq!(c.ask(b"\r\nlist-tube-used\r\n", 2), "JOB_TOO_BIG\r\nUSING default\r\n");
    });
}

#[test]
fn a_burst_of_pipelined_commands_is_answered_in_order() {
    on_both_and_four_cores(|backend| {
        let server = Server::start(backend, &[]);
        let mut c = server.connect();
        const N: usize = 20_000;
        let puts = b"put 0 0 60 4\r\nbody\r\n".repeat(N);
        c.send(&puts);
        let replies = c.replies(N);
        let expected: String = (1..=N).map(|i| format!("INSERTED {i}\r\n")).collect();
        assert_eq!(String::from_utf8(replies).unwrap(), expected);
        let mut work = Vec::new();
        for i in 1..=N {
            work.extend_from_slice(format!("reserve\r\ndelete {i}\r\n").as_bytes());
        }
        c.send(&work);
        let replies = String::from_utf8(c.replies(2 * N)).unwrap();
        let expected: String = (1..=N).map(|i| format!("RESERVED {i} 4\r\nbody\r\nDELETED\r\n")).collect();
        assert_eq!(replies, expected);
        let stats = c.ask(b"stats\r\n", 1);
        assert_eq!((stat(&stats, "total-jobs"), stat(&stats, "current-jobs-ready")), ("20000", "0"));
    });
}

#[test]
fn many_connections_share_one_queue() {
    on_both_and_four_cores(|backend| {
        let server = Server::start(backend, &[]);
        let mut producers: Vec<Client> = (0..100).map(|_| server.connect()).collect();
        for (i, p) in producers.iter_mut().enumerate() {
            p.send(format!("use t{}\r\n", i % 7).as_bytes());
            p.send(&b"put 0 0 60 1\r\nx\r\n".repeat(10));
        }
        for p in producers.iter_mut() {
            let replies = p.replies(11);
            assert_eq!(replies.iter().filter(|&&b| b == b'\n').count(), 11);
        }
        let mut worker = server.connect();
        let watches: String = (0..7).map(|i| format!("watch t{i}\r\n")).collect();
        worker.ask(watches.as_bytes(), 7);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let r = worker.ask(b"reserve-with-timeout 0\r\n", 1);
            let id: u64 = r.split(' ').nth(1).unwrap().parse().unwrap();
            assert!(seen.insert(id));
            assert_eq!(worker.ask(format!("delete {id}\r\n").as_bytes(), 1), "DELETED\r\n");
        }
        assert_eq!(worker.ask(b"reserve-with-timeout 0\r\n", 1), "TIMED_OUT\r\n");
        let stats = worker.ask(b"stats\r\n", 1);
        assert_eq!(stat(&stats, "current-connections"), "101");
        assert_eq!(stat(&stats, "current-producers"), "100");
    });
}

#[test]
fn a_blocked_reserve_is_answered_by_another_connection_and_keeps_order() {
    on_both_and_four_cores(|backend| {
        let server = Server::start(backend, &[]);
        let mut w = server.connect();
        w.send(b"reserve\r\nlist-tube-used\r\n");
        w.assert_quiet(Duration::from_millis(100));
        let mut p = server.connect();
        assert_eq!(p.ask(b"put 0 0 60 2\r\nhi\r\n", 1), "INSERTED 1\r\n");
        assert_eq!(w.replies(2), b"RESERVED 1 2\r\nhi\r\nUSING default\r\n");
    });
}

#[test]
fn half_close_while_waiting_times_out_then_closes() {
    on_both_and_four_cores(|backend| {
        let server = Server::start(backend, &[]);
        let mut w = server.connect();
        w.send(b"reserve\r\n");
        w.assert_quiet(Duration::from_millis(50));
        w.stream.shutdown(Shutdown::Write).unwrap();
        assert_eq!(w.read_to_eof(), b"TIMED_OUT\r\n");
        let stats = server.connect().ask(b"stats\r\n", 1);
        assert_eq!(stat(&stats, "current-waiting"), "0");
    });
}

#[test]
fn a_closed_connection_gives_its_jobs_back() {
    on_both_and_four_cores(|backend| {
        let server = Server::start(backend, &[]);
        let mut a = server.connect();
        a.ask(b"put 0 0 60 1\r\nx\r\nput 0 0 60 1\r\ny\r\nreserve\r\nreserve\r\n", 4);
        let mut w = server.connect();
        w.send(b"reserve\r\n");
        w.assert_quiet(Duration::from_millis(50));
        drop(a);
        assert_eq!(w.replies(1), b"RESERVED 1 1\r\nx\r\n");
        let stats = w.ask(b"stats-job 2\r\n", 1);
        assert_eq!((stat(&stats, "state"), stat(&stats, "timeouts")), ("ready", "0"));
    });
}

#[test]
fn sigusr1_turns_on_drain_mode() {
    on_both_and_four_cores(|backend| {
        let server = Server::start(backend, &[]);
        let mut c = server.connect();
        assert_eq!(c.ask(b"put 0 0 60 1\r\nx\r\n", 1), "INSERTED 1\r\n");
        server.signal("USR1");
        let mut draining = false;
        for _ in 0..100 {
            if stat(&c.ask(b"stats\r\n", 1), "draining") == "true" {
                draining = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(draining);
        assert_eq!(c.ask(b"put 0 0 60 1\r\ny\r\n", 1), "DRAINING\r\n");
        assert_eq!(c.ask(b"reserve\r\n", 1), "RESERVED 1 1\r\nx\r\n");
    });
}

#[test]
fn sigterm_and_sigint_end_the_process_cleanly() {
    on_both_and_four_cores(|backend| {
        for sig in ["TERM", "INT"] {
            let mut server = Server::start(backend, &[]);
            let mut c = server.connect();
            c.ask(b"put 0 0 60 1\r\nx\r\n", 1);
            server.signal(sig);
            assert_eq!(server.wait(Duration::from_secs(5)), Some(0), "SIG{sig}");
        }
    });
}

#[test]
fn unix_socket_listener_replaces_a_stale_socket() {
    on_both_and_four_cores(|backend| {
        use std::os::unix::net::UnixStream;
        let dir = std::env::temp_dir().join(format!("rb-wire-{}-{backend}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("beanstalk.sock");
        let addr = format!("unix:{}", path.display());
        for round in 0..2 {
            let server = Server::start(backend, &["-l", &addr]);
            let mut s = UnixStream::connect(&path).unwrap();
            s.write_all(b"put 0 0 60 2\r\nhi\r\npeek 1\r\n").unwrap();
            let mut reply = vec![0u8; b"INSERTED 1\r\nFOUND 1 2\r\nhi\r\n".len()];
            s.read_exact(&mut reply).unwrap();
            assert_eq!(reply, b"INSERTED 1\r\nFOUND 1 2\r\nhi\r\n");
            if round == 1 {
                server.wait_for_log("removing existing local socket to replace it");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    });
}

#[test]
fn a_slow_reader_gets_every_byte() {
    on_both_and_four_cores(|backend| {
        let server = Server::start(backend, &[]);
        let mut c = server.connect();
        let body = vec![b'z'; 60_000];
        let mut put = b"put 0 0 60 60000\r\n".to_vec();
        put.extend_from_slice(&body);
        put.extend_from_slice(b"\r\n");
        assert_eq!(c.ask(&put, 1), "INSERTED 1\r\n");
        // About 18 MB of replies asked for at once, read only later.
        const N: usize = 300;
        c.send(&b"peek 1\r\n".repeat(N));
        std::thread::sleep(Duration::from_millis(200));
        for _ in 0..N {
            let reply = c.replies(1);
            assert_eq!(&reply[..14], b"FOUND 1 60000\r");
            assert_eq!(reply.len(), 15 + 60_000 + 2);
        }
        assert_eq!(c.ask(b"list-tube-used\r\n", 1), "USING default\r\n");
    });
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Writes `bytes` until the server stops taking them for a moment;
/// returns how many went.
fn send_until_refused(c: &mut Client, bytes: &[u8]) -> usize {
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
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("write: {e}"),
        }
    }
    c.stream.set_nonblocking(false).unwrap();
    sent
}

#[test]
fn a_client_that_never_reads_costs_bounded_memory() {
    on_both_and_four_cores(|backend| {
        let server = Server::start(backend, &[]);
        let mut greedy = server.connect();
        let mut other = server.connect();
        assert_eq!(other.ask(b"list-tube-used\r\n", 1), "USING default\r\n");
        let before = rss_kib(server.pid());
        // About 900 MB of replies asked for in 8 MB of commands, none read.
        let flood = b"stats\r\n".repeat(8 << 20 >> 3);
        let sent = send_until_refused(&mut greedy, &flood);
        assert!(sent < flood.len(), "the server read all {sent} bytes");
        let grown = rss_kib(server.pid()).saturating_sub(before);
        assert!(grown < 4 * 1024, "grew by {grown} KiB after {sent} bytes of commands");
        // It stopped reading the greedy client; it still serves the others.
        assert_eq!(other.ask(b"list-tube-used\r\n", 1), "USING default\r\n");
        // Commands piled up behind a reserve are bounded the same way.
        let mut blocked = server.connect();
        blocked.send(b"reserve\r\n");
        let flood = b"list-tube-used\r\n".repeat(1 << 20);
        let sent = send_until_refused(&mut blocked, &flood);
        assert!(sent < flood.len(), "the server read all {sent} bytes");
        let grown = rss_kib(server.pid()).saturating_sub(before);
        assert!(grown < 8 * 1024, "grew by {grown} KiB after {sent} bytes behind a reserve");
        assert_eq!(other.ask(b"list-tube-used\r\n", 1), "USING default\r\n");
    });
}

#[test]
fn a_put_line_alone_does_not_commit_its_body() {
    on_both_and_four_cores(|backend| {
        let server = Server::start(backend, &["-z", "1073741824"]);
        let mut other = server.connect();
        assert_eq!(other.ask(b"list-tube-used\r\n", 1), "USING default\r\n");
        let before = rss_kib(server.pid());
        // Three announced gigabyte bodies, of which only the first 64 KiB
        // arrive: memory follows what was sent.
        let mut putters: Vec<Client> = (0..3).map(|_| server.connect()).collect();
        for p in &mut putters {
            p.send(b"put 0 0 60 1000000000\r\n");
            p.send(&[b'x'; 65536]);
        }
        // The three put lines have been read (the bodies follow them).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while stat(&other.ask(b"stats\r\n", 1), "cmd-put") != "3" {
            assert!(std::time::Instant::now() < deadline, "the put lines were not read");
            std::thread::sleep(Duration::from_millis(10));
        }
        let grown = rss_kib(server.pid()).saturating_sub(before);
        assert!(grown < 32 * 1024, "grew by {grown} KiB");
    });
}

#[test]
fn memory_of_a_deleted_large_job_goes_back() {
    on_both_and_four_cores(|backend| {
        let server = Server::start(backend, &["-z", "1073741824"]);
        let mut c = server.connect();
        // A first large put and delete touch the receive buffers, which
        // stay resident.
        let mut warm = b"put 0 0 60 4194304\r\n".to_vec();
        warm.resize(warm.len() + (4 << 20), b'w');
        warm.extend_from_slice(b"\r\n");
        assert_eq!(c.ask(&warm, 1), "INSERTED 1\r\n");
        assert_eq!(c.ask(b"delete 1\r\n", 1), "DELETED\r\n");
        let before = rss_kib(server.pid());
        let size = 32 << 20;
        let mut put = format!("put 0 0 60 {size}\r\n").into_bytes();
        put.resize(put.len() + size, b'q');
        put.extend_from_slice(b"\r\n");
        assert_eq!(c.ask(&put, 1), "INSERTED 2\r\n");
        assert!(rss_kib(server.pid()) > before + 30 * 1024);
        assert_eq!(c.ask(b"delete 2\r\n", 1), "DELETED\r\n");
        let grown = rss_kib(server.pid()).saturating_sub(before);
        assert!(grown < 4 * 1024, "still {grown} KiB larger");
    });
}

#[test]
fn out_of_descriptors_it_serves_on_and_logs_little() {
    on_both_and_four_cores(|backend| {
        let server = Server::start_with_files_limit(backend, &[], 24);
        let mut first = server.connect();
        assert_eq!(first.ask(b"list-tube-used\r\n", 1), "USING default\r\n");
        // More connections than descriptors: the kernel queues them, and
        // every accept fails while the table is full.
        let extra: Vec<Client> = (0..40).map(|_| server.connect()).collect();
        // The old server logged every failure, a hundred a second.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(first.ask(b"list-tube-used\r\n", 1), "USING default\r\n");
        let log = server.log_text();
        let lines = log.matches("accept(): ").count();
        assert!((1..=2).contains(&lines), "{lines} accept error lines:\n{log}");
        // Descriptors come back when clients leave, and the rest are served.
        drop(extra);
        let mut late = server.connect();
        assert_eq!(late.ask(b"list-tube-used\r\n", 1), "USING default\r\n");
    });
}

#[test]
fn verbose_mode_logs_connections() {
    on_both_and_four_cores(|backend| {
        let server = Server::start(backend, &[]);
        let c = server.connect();
        let mut d = server.connect();
        d.ask(b"list-tube-used\r\n", 1);
        drop(c);
        let log = server.wait_for_log("\nclose ");
        assert!(log.starts_with(&format!("pid {}\nbind ", server.pid())), "{log}");
        assert!(log.contains(&format!(" 127.0.0.1:{}\n", server.port)));
        assert_eq!(log.matches("\naccept ").count(), 2, "{log}");
        assert!(log.contains("\nclose "), "{log}");
    });
}

#[test]
fn verbose_mode_says_why_a_connection_failed() {
    on_both_and_four_cores(|backend| {
        let server = Server::start(backend, &[]);
        let mut c = server.connect();
        assert_eq!(c.ask(b"list-tube-used\r\n", 1), "USING default\r\n");
        // Closing with SO_LINGER 0 resets the connection: the server's
        // receive fails.
        socket2::SockRef::from(&c.stream).set_linger(Some(Duration::ZERO)).unwrap();
        drop(c);
        let log = server.wait_for_log("\nclose ");
        let error = log.lines().find(|l| l.starts_with("error ")).unwrap_or_else(|| panic!("no error line:\n{log}"));
        let fd = error.split(' ').nth(1).unwrap();
        assert_eq!(error, format!("error {fd} recv(): Connection reset by peer (os error 104)"), "{log}");
        assert!(log.contains(&format!("{error}\nclose {fd}\n")), "{log}");
    });
}

#[test]
fn garbage_never_breaks_the_server() {
    on_both_and_four_cores(|backend| {
        let server = Server::start(backend, &["-z", "100"]);
        // A fixed-seed generator of hostile input: random bytes, command
        // words with random arguments, stray CRs, NULs and long lines.
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let words: [&[u8]; 12] = [
            b"put ",
            b"reserve",
            b"delete ",
            b"release ",
            b"bury ",
            b"kick ",
            b"peek ",
            b"use ",
            b"watch ",
            b"ignore ",
            b"stats-job ",
            b"pause-tube ",
        ];
        for _ in 0..20 {
            let mut c = server.connect();
            let mut junk = Vec::new();
            for _ in 0..200 {
                match next() % 4 {
                    0 => junk.extend((0..next() % 40).map(|_| next() as u8)),
                    1 => junk.extend_from_slice(words[(next() % 12) as usize]),
                    2 => junk.extend_from_slice(format!("{} ", next() % 300).as_bytes()),
                    _ => junk.extend_from_slice(b"\r\n"),
                }
            }
            c.send(&junk);
            // Whatever state the junk left it in, closing is always fine.
            drop(c);
        }
        let mut c = server.connect();
        assert_eq!(c.ask(b"list-tube-used\r\n", 1), "USING default\r\n");
        // A closed connection's waits end as it is taken down, which with
        // several cores is a few messages after the close.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        loop {
            let stats = c.ask(b"stats\r\n", 1);
            if stat(&stats, "current-waiting") == "0" {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "waits left behind: {stats}");
            std::thread::sleep(Duration::from_millis(5));
        }
    });
}

#[test]
fn closed_connections_leave_no_descriptor_behind() {
    on_both_and_four_cores(|backend| {
        let server = Server::start(backend, &[]);
        let fds = || std::fs::read_dir(format!("/proc/{}/fd", server.pid())).unwrap().count();
        let mut probe = server.connect();
        probe.ask(b"list-tube-used\r\n", 1);
        let baseline = fds();
        for round in 0..3 {
            let mut clients: Vec<Client> = (0..100).map(|_| server.connect()).collect();
            for (i, c) in clients.iter_mut().enumerate() {
                // Leave each connection in a different state when it goes.
                match i % 5 {
                    0 => c.send(b"reserve\r\n"),
                    1 => c.send(b"put 0 0 60 10\r\nhalf"),
                    2 => c.send(&b"peek 1\r\n".repeat(50)),
                    3 => {
                        // A tube of its own, so the waiters above cannot take the job.
                        c.ask(b"use own\r\nwatch own\r\nignore default\r\nput 0 0 60 1\r\nx\r\nreserve\r\n", 5);
                    }
                    _ => c.send(b"quit\r\n"),
                }
            }
            if round == 1 {
                // Half of them close their write side first.
                for c in clients.iter().step_by(2) {
                    let _ = c.stream.shutdown(Shutdown::Write);
                }
            }
            drop(clients);
            let mut stats = String::new();
            for _ in 0..200 {
                stats = probe.ask(b"stats\r\n", 1);
                if stat(&stats, "current-connections") == "1" && fds() == baseline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            assert_eq!(stat(&stats, "current-connections"), "1", "round {round}");
            assert_eq!(fds(), baseline, "round {round}: descriptors left open");
            assert_eq!(stat(&stats, "current-jobs-reserved"), "0");
        }
    });
}

#[test]
fn large_bodies_in_pieces_keep_their_framing() {
    // Bodies of 16 KiB and more are received straight into the job's
    // memory; what follows them must still be read as commands.
    on_both_and_four_cores(|backend| {
        let server = Server::start(backend, &["-z", "1000000"]);
        let body: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let mut c = server.connect();
        c.send(b"put 0 0 60 300000\r\n");
        for piece in body.chunks(70_000) {
            c.send(piece);
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(c.ask(b"\r\nlist-tube-used\r\n", 2), "INSERTED 1\r\nUSING default\r\n");
        // A wrong trailer is still caught, and the next line still parses.
        let mut bad = b"put 0 0 60 20000\r\n".to_vec();
        bad.extend(std::iter::repeat_n(b'z', 20_000));
        bad.extend_from_slice(b"XY\r\nlist-tube-used\r\n");
        assert_eq!(c.ask(&bad, 3), "EXPECTED_CRLF\r\nUNKNOWN_COMMAND\r\nUSING default\r\n");
        let reply = c.ask(b"peek 1\r\n", 1).into_bytes();
        assert_eq!(&reply[..20], b"FOUND 1 300000\r\nabcd");
        assert_eq!(&reply[16..16 + body.len()], &body[..]);
        // A client that leaves in the middle of a large body loses the job
        // and nothing else.
        let mut d = server.connect();
        d.send(b"put 0 0 60 100000\r\n");
        d.send(&body[..30_000]);
        std::thread::sleep(Duration::from_millis(20));
        drop(d);
        let mut stats = String::new();
        for _ in 0..100 {
            stats = c.ask(b"stats\r\n", 1);
            if stat(&stats, "current-connections") == "1" {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(stat(&stats, "current-connections"), "1");
        assert_eq!(stat(&stats, "total-jobs"), "1");
    });
}

#[test]
fn a_burst_on_many_connections_at_once_is_answered() {
    // More connections than the io_uring back end has receive buffers, all
    // sending at the same moment: receives that find no free buffer must
    // be armed again, and nothing may be lost.
    on_both_and_four_cores(|backend| {
        let server = Server::start(backend, &[]);
        let mut clients: Vec<Client> = (0..600).map(|_| server.connect()).collect();
        let burst = b"put 0 0 60 5\r\nhello\r\n".repeat(3);
        for c in clients.iter_mut() {
            c.send(&burst);
        }
        let mut ids = std::collections::HashSet::new();
        for c in clients.iter_mut() {
            let replies = String::from_utf8(c.replies(3)).unwrap();
            for line in replies.lines() {
                let id: u64 = line.strip_prefix("INSERTED ").expect("INSERTED").parse().unwrap();
                assert!(ids.insert(id));
            }
        }
        assert_eq!(ids.len(), 1800);
    });
}
