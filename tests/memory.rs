//! Wire tests of memory: the real binary under an address-space limit
//! (`ulimit -v`), so that allocations really fail, on both back ends, with
//! one core and with four; and what connections that never read, or that
//! burst and go idle, cost (with four cores, each core's reply text budget
//! and the rings between the cores included).

mod common;

use std::time::{Duration, Instant};

use common::{Client, Server, cores, on_both_and_four_cores, stat};

/// The body of every job: the hostile tester's "ordinary 1000-byte puts".
const BODY_BYTES: usize = 1000;
/// Commands sent before their replies are read.
const BATCH: usize = 100;
/// Address space the server may use beyond what it has once started (its
/// binary and libraries, the ring, the allocator's first arena and its
/// reserve): room for some fifty thousand jobs, filled in a second or two.
const ROOM_BYTES: u64 = 64 << 20;
/// A limit loose enough for the server to start with its usual layout
/// (mimalloc reserves smaller arenas once 1 GiB is refused), for reading
/// the size of that layout.
const START_LIMIT_BYTES: u64 = 1 << 30;
/// Jobs deleted before puts are tried again: 2 MB of bodies, a modest
/// number beside the jobs that fit, and fifteen times what must have been
/// freed for a put to be taken while memory is short
/// (`memory::SHORT_MARGIN_BYTES`).
const DELETES: u64 = 2_000;
/// Connections opened once memory has run out: each must be served (an
/// administrator must be able to get in and delete jobs).
const LATE_CONNS: usize = 50;

fn put_line() -> Vec<u8> {
    let mut put = format!("put 0 0 60 {BODY_BYTES}\r\n").into_bytes();
    put.resize(put.len() + BODY_BYTES, b'x');
    put.extend_from_slice(b"\r\n");
    put
}

/// Puts until the server answers OUT_OF_MEMORY; returns how many were
/// inserted. Every reply must be one of the two.
fn fill(c: &mut Client) -> u64 {
    let batch = put_line().repeat(BATCH);
    let mut inserted = 0;
    loop {
        c.send(&batch);
        let replies = String::from_utf8(c.replies(BATCH)).unwrap();
        let mut out_of_memory = 0;
        for reply in replies.split_terminator("\r\n") {
            match reply {
                "OUT_OF_MEMORY" => out_of_memory += 1,
                r if r.starts_with("INSERTED ") => inserted += 1,
                other => panic!("unexpected reply to a put: {other:?}"),
            }
        }
        if out_of_memory > 0 {
            return inserted;
        }
        assert!(inserted < 10_000_000, "memory never ran out");
    }
}

/// The C server's behaviour under `ulimit -v`, whether or not an
/// allocation that cannot fail into a reply has failed meanwhile (which
/// the client cannot see): the put that finds no memory gets
/// OUT_OF_MEMORY, every other command goes on working, new connections are
/// served, and once a modest number of jobs has been deleted puts are
/// taken again, at once. Every step is a request and its reply; nothing
/// waits for time to pass.
#[test]
fn running_out_of_memory_earns_out_of_memory_and_the_server_goes_on() {
    on_both_and_four_cores(|backend| {
        let probe = Server::start_with_address_space_limit(backend, &[], START_LIMIT_BYTES);
        let started = probe.status_kb("VmSize:") * 1024;
        drop(probe);
        let mut server = Server::start_with_address_space_limit(backend, &[], started + ROOM_BYTES);
        let mut c = server.connect();
        let inserted = fill(&mut c);
        assert!(inserted > 2 * DELETES, "{backend}: only {inserted} jobs fit");

        // Everything but new jobs is still answered, as beanstalkd does.
        let stats = c.ask(b"stats\r\n", 1);
        assert!(stats.starts_with("OK "), "{backend}: {stats}");
        assert_eq!(stat(&stats, "current-jobs-ready"), inserted.to_string(), "{backend}");
        assert_eq!(stat(&stats, "current-connections"), "1", "{backend}");
        assert_eq!(c.ask(b"list-tubes\r\n", 1), "OK 14\r\n---\n- default\n\r\n", "{backend}");
        let body = "x".repeat(BODY_BYTES);
        assert_eq!(c.ask(b"peek 1\r\n", 1), format!("FOUND 1 {BODY_BYTES}\r\n{body}\r\n"), "{backend}");
        let job = c.ask(b"stats-job 1\r\n", 1);
        assert_eq!(stat(&job, "state"), "ready", "{backend}: {job}");
        let reserved = c.ask(b"reserve-with-timeout 0\r\n", 1);
        assert_eq!(reserved, format!("RESERVED 1 {BODY_BYTES}\r\n{body}\r\n"), "{backend}");
        assert_eq!(c.ask(b"delete 1\r\n", 1), "DELETED\r\n", "{backend}");

        // New connections are served: the last of them is the
        // administrator who deletes jobs.
        let mut late: Vec<Client> = (0..LATE_CONNS).map(|_| server.connect()).collect();
        for (i, l) in late.iter_mut().enumerate() {
            assert_eq!(l.ask(b"list-tube-used\r\n", 1), "USING default\r\n", "{backend}: connection {i}");
        }
        let admin = late.last_mut().unwrap();
        let stats = admin.ask(b"stats\r\n", 1);
        assert_eq!(stat(&stats, "current-connections"), (LATE_CONNS + 1).to_string(), "{backend}");
        assert_eq!(admin.ask(b"peek-ready\r\n", 1), format!("FOUND 2 {BODY_BYTES}\r\n{body}\r\n"), "{backend}");

        // Deleting a modest number of jobs gives memory back; then every
        // put is taken, on both connections.
        let ids: Vec<u64> = (2..2 + DELETES).collect();
        for chunk in ids.chunks(BATCH) {
            let deletes: Vec<u8> = chunk.iter().flat_map(|id| format!("delete {id}\r\n").into_bytes()).collect();
            assert_eq!(admin.ask(&deletes, chunk.len()), "DELETED\r\n".repeat(chunk.len()), "{backend}");
        }
        // (The puts refused used up ids or not, as memory was short or
        // not when they came.)
        for client in [&mut c, admin] {
            let replies = client.ask(&put_line().repeat(BATCH), BATCH);
            let first: u64 =
                replies.strip_prefix("INSERTED ").and_then(|r| r.split("\r\n").next()?.parse().ok()).unwrap_or(0);
            assert!(first > inserted, "{backend}: after {DELETES} deletes: {replies}");
            let expected: String = (first..first + BATCH as u64).map(|id| format!("INSERTED {id}\r\n")).collect();
            assert_eq!(replies, expected, "{backend}: puts after {DELETES} deletes");
        }
        assert!(server.is_running(), "{backend}: the server died");
        let log = server.log_text();
        assert!(!log.contains("memory allocation of") && !log.contains("panicked"), "{backend}: {log}");
    });
}

/// Connections of the tests of what connections cost.
const CONNS: usize = 300;
/// The server's reply text budget (`shard::OUTPUT_TEXT_BUDGET_BYTES`).
const TEXT_BUDGET_BYTES: u64 = 32 << 20;
/// What a connection that never reads may cost beyond the budget, the
/// hostile tester's target; the server costs about a tenth of it here.
const NEVER_READING_BYTES_MAX: u64 = 64 << 10;
/// What a connection may keep once a burst of replies is over: the sixth
/// of what it kept before connections gave buffers back (105 KB), and
/// several times what it keeps now (2.5 KB at 2,000 connections).
const IDLE_AFTER_BURST_BYTES_MAX: u64 = 16 << 10;
/// What the allocator may keep after a burst whatever the number of
/// connections (pages of the size classes the burst used): 3.5–6 MB were
/// measured with 300 connections.
const ALLOCATOR_SLACK_BYTES: u64 = 12 << 20;
/// What the server may keep once every connection is gone, beyond the
/// rings between its cores.
const LEFT_AFTER_CLOSE_BYTES_MAX: u64 = 16 << 20;
/// How long a burst of replies to every connection may take: a debug
/// build answers the 30,000 `stats` in a few seconds, and a machine shared
/// with other work may be several times slower (a passing test waits only
/// as long as it must).
const BURST_WAIT: Duration = Duration::from_secs(60);
/// How long memory may take to go back: mimalloc frees a page a second
/// after it was last used, and the server looks once a second; generous,
/// for a loaded machine (a passing test waits only as long as it must).
const GIVE_BACK_SECS: u64 = 30;

/// Bytes of the mailbox rings between the cores of the servers the test
/// starts now: a ring for every ordered pair of cores, of
/// `mailbox::slots_for` slots (together at most
/// `mailbox::MAILBOX_BYTES_PER_CORE` into each core), resident once
/// messages have used them, and kept.
fn ring_bytes() -> u64 {
    use runnerbean::mailbox::slots_for;
    let n = cores() as usize;
    let slot = size_of::<runnerbean::net::cores::Envelope>();
    if n < 2 { 0 } else { (n * (n - 1) * slots_for(n, slot) * slot) as u64 }
}

fn rss_bytes(server: &Server) -> u64 {
    server.status_kb("VmRSS:") * 1024
}

/// Connections that read little: a small receive buffer, so that the
/// server, not the kernel, holds what they are owed.
fn slow_readers(server: &Server, n: usize) -> Vec<std::net::TcpStream> {
    (0..n)
        .map(|_| {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            socket.set_recv_buffer_size(4096).unwrap();
            socket.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], server.port)).into()).unwrap();
            socket.into()
        })
        .collect()
}

/// Waits until the server's memory is at most `bound` above `base`;
/// returns what it is then.
fn wait_for_rss_below(server: &Server, base: u64, bound: u64, what: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(GIVE_BACK_SECS);
    loop {
        let rss = rss_bytes(server);
        if rss <= base + bound {
            return rss;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} KB above the start, more than {} KB",
            (rss - base) >> 10,
            bound >> 10
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn connections_that_never_read_cost_a_bounded_amount_and_give_it_back() {
    use std::io::Write;
    on_both_and_four_cores(|backend| {
        let server = Server::start(backend, &[]);
        let mut conns = slow_readers(&server, CONNS);
        let base = rss_bytes(&server);
        // Each is owed more than the per-connection mark in replies.
        for c in &mut conns {
            c.write_all(&b"stats\r\n".repeat(300)).unwrap();
        }
        // Until the server has done what it can with them.
        let mut last = 0;
        let flooded = loop {
            std::thread::sleep(Duration::from_millis(200));
            let rss = rss_bytes(&server);
            if rss == last {
                break rss;
            }
            last = rss;
        };
        // Reply text within every core's budget (the connections are spread
        // over the cores, and each core's shard has a budget of its own),
        // and as much again of text buffers freed while the kernel still
        // took replies and not yet given back; and the rings between the
        // cores, which every `stats` crosses.
        let bound = 2 * u64::from(cores()) * TEXT_BUDGET_BYTES + CONNS as u64 * NEVER_READING_BYTES_MAX + ring_bytes();
        assert!(flooded <= base + bound, "{backend}: {} KB for {CONNS} connections", (flooded - base) >> 10);
        drop(conns);
        wait_for_rss_below(&server, base, LEFT_AFTER_CLOSE_BYTES_MAX + ring_bytes(), backend);
    });
}

#[test]
fn connections_keep_little_once_a_burst_is_over() {
    on_both_and_four_cores(|backend| {
        let server = Server::start(backend, &[]);
        let mut conns: Vec<Client> = (0..CONNS).map(|_| server.connect()).collect();
        let base = rss_bytes(&server);
        for c in &mut conns {
            c.send(&b"stats\r\n".repeat(100));
        }
        for c in &mut conns {
            let replies = String::from_utf8(c.replies_within(100, BURST_WAIT)).unwrap();
            assert_eq!(replies.matches("OK ").count(), 100, "{backend}");
        }
        // Idle, and connected; the rings between the cores, which every
        // `stats` crossed, stay resident.
        let bound = ALLOCATOR_SLACK_BYTES + CONNS as u64 * IDLE_AFTER_BURST_BYTES_MAX + ring_bytes();
        wait_for_rss_below(&server, base, bound, backend);
        assert_eq!(conns[0].ask(b"list-tube-used\r\n", 1), "USING default\r\n");
    });
}
