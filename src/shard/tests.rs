//! Whole conversations through a shard, byte for byte, with the clock
//! driven by hand: framing, pipelining, put bodies, blocked reserves,
//! timeouts and closing, without a socket.

use super::*;
use crate::engine::NANOS_PER_SEC;
use crate::protocol::output::Segment;

const S: Nanos = NANOS_PER_SEC;

pub(super) fn info(max_job_size: u64) -> ServerInfo {
    ServerInfo {
        max_job_size,
        pid: 42,
        instance_id: "0123456789abcdef".into(),
        hostname: "host".into(),
        os: "#1 SMP".into(),
        platform: "x86_64".into(),
        binlog_max_size: 10485760,
        extra: vec![("runnerbean-io".into(), "\"test\"".into())],
        cpu_times: || (CpuTime { secs: 1, micros: 5 }, CpuTime::default()),
        verbosity: 0,
        started_at: 0,
        strict: false,
    }
}

struct Conv {
    shard: Shard,
}

impl Conv {
    fn new() -> Conv {
        Conv::with_max(65535)
    }

    fn with_max(max: u64) -> Conv {
        Conv { shard: Shard::new(EngineConfig::default(), info(max)) }
    }

    fn open(&mut self) -> ConnId {
        self.shard.open(0).expect("memory for a connection")
    }

    /// Input, then as many turns as the carried input needs (see
    /// `turns`).
    fn send(&mut self, conn: ConnId, bytes: &[u8], now: Nanos) {
        self.shard.input(conn, bytes, now);
        self.shard.engine().check_invariants(now);
        self.shard.check_text_held();
        self.turns(now);
    }

    /// Turns of the loop, as the network runs them, until no input is
    /// carried over: each runs at most COMMANDS_PER_TURN_MAX commands per
    /// connection, and their replies pile up in the sessions' output.
    fn turns(&mut self, now: Nanos) {
        while self.shard.has_carried() {
            self.shard.begin_turn();
            self.shard.run_carried(now);
            self.shard.engine().check_invariants(now);
        }
    }

    fn sent(&mut self, conn: ConnId, now: Nanos) {
        self.shard.sent(conn, now);
        self.turns(now);
    }

    fn eof(&mut self, conn: ConnId, now: Nanos) {
        self.shard.eof(conn, now);
        self.turns(now);
    }

    /// Everything the connection was sent since the last call, written
    /// out as the network would: one send, completed at once.
    fn out(&mut self, conn: ConnId) -> Vec<u8> {
        let mut segments = Vec::new();
        self.shard.start_send(conn, &mut segments);
        self.shard.sent(conn, 0);
        self.shard.check_text_held();
        segments.iter().flat_map(|s: &Segment| s.bytes().to_vec()).collect()
    }

    /// Sends and returns the replies as text.
    fn ask(&mut self, conn: ConnId, bytes: &[u8], now: Nanos) -> String {
        self.send(conn, bytes, now);
        String::from_utf8(self.out(conn)).unwrap()
    }
}

#[test]
fn pipelined_commands_answer_in_order() {
    let mut c = Conv::new();
    let a = c.open();
    assert_eq!(
        c.ask(a, b"use a\r\nuse b\r\nput 0 0 0 1\r\nx\r\nput 0 0 0 1\r\ny\r\nlist-tube-used\r\n", 0),
        "USING a\r\nUSING b\r\nINSERTED 1\r\nINSERTED 2\r\nUSING b\r\n"
    );
}

#[test]
fn bytes_may_arrive_one_at_a_time() {
    let mut c = Conv::new();
    let a = c.open();
    let script = b"put 1 0 10 5\r\nhello\r\npeek 1\r\n";
    for &b in script {
        c.send(a, &[b], 0);
    }
    assert_eq!(String::from_utf8(c.out(a)).unwrap(), "INSERTED 1\r\nFOUND 1 5\r\nhello\r\n");
}

#[test]
fn job_too_big_skips_exactly_the_body() {
    let mut c = Conv::with_max(10);
    let a = c.open();
    c.send(a, b"put 0 0 0 11\r\n0123456789a", 0);
    assert_eq!(c.out(a), b"", "the reply waits for the whole body");
    c.send(a, b"\r\nput 0 0 0 10\r\n0123456789\r\n", 0);
    assert_eq!(c.out(a), b"JOB_TOO_BIG\r\nINSERTED 1\r\n");
    // Too big is checked before trailing garbage.
    assert_eq!(
        c.ask(a, b"put 0 0 0 11 junk\r\n0123456789a\r\nlist-tube-used\r\n", 0),
        "JOB_TOO_BIG\r\nUSING default\r\n"
    );
}

#[test]
fn a_malformed_put_line_leaves_its_body_to_be_read_as_commands() {
    let mut c = Conv::new();
    let a = c.open();
    assert_eq!(c.ask(a, b"put 0 0 10 3 \r\nabc\r\n", 0), "BAD_FORMAT\r\nUNKNOWN_COMMAND\r\n");
    assert_eq!(c.ask(a, b"put 0 0 10 3\nabc\r\n", 0), "BAD_FORMAT\r\n");
    assert_eq!(c.ask(a, b"put 0 4294967296 10 0\r\n\r\n", 0), "BAD_FORMAT\r\nUNKNOWN_COMMAND\r\n");
}

#[test]
fn body_without_crlf_uses_up_its_id() {
    let mut c = Conv::new();
    let a = c.open();
    // The body is "abcd\r"; the "\n" left over starts the next line.
    assert_eq!(c.ask(a, b"put 0 0 10 3\r\nabcd\r\n", 0), "EXPECTED_CRLF\r\n");
    assert_eq!(c.ask(a, b"list-tube-used\r\n", 0), "UNKNOWN_COMMAND\r\n");
    assert_eq!(c.ask(a, b"put 0 0 10 1\r\nx\r\n", 0), "INSERTED 2\r\n");
    let stats = c.ask(a, b"stats\r\n", 0);
    assert!(stats.contains("\ncmd-put: 2\n") && stats.contains("\ntotal-jobs: 1\n"), "{stats}");
}

#[test]
fn draining_answers_after_the_body_and_uses_up_the_id() {
    let mut c = Conv::new();
    let a = c.open();
    c.shard.set_draining();
    assert_eq!(c.ask(a, b"put 0 0 10 1\r\nx\r\n", 0), "DRAINING\r\n");
    assert_eq!(c.ask(a, b"put 0 0 10 1\r\nxy\r\n", 0), "EXPECTED_CRLF\r\n");
    assert_eq!(c.ask(a, b"\r\n", 0), "UNKNOWN_COMMAND\r\n");
    assert!(c.ask(a, b"stats\r\n", 0).contains("\ndraining: true\n"));
    assert_eq!(c.ask(a, b"peek 1\r\n", 0), "NOT_FOUND\r\n");
}

#[test]
fn line_length_limit_and_framing() {
    let mut c = Conv::new();
    let a = c.open();
    let longest = format!("pause-tube {} 4294967295\r\n", "x".repeat(200));
    assert_eq!(longest.len(), 224);
    assert_eq!(c.ask(a, b"use xxxxx\r\n", 0), "USING xxxxx\r\n");
    assert_eq!(c.ask(a, longest.as_bytes(), 0), "NOT_FOUND\r\n");
    // Over the limit: one BAD_FORMAT, and the next command is never lost.
    for n in [223, 224, 300, 447, 448, 5000] {
        let line = format!("{}\r\nlist-tube-used\r\n", "x".repeat(n));
        assert_eq!(c.ask(a, line.as_bytes(), 0), "BAD_FORMAT\r\nUSING xxxxx\r\n", "{n} bytes");
    }
    // The same, fed in small pieces with the CR and LF split apart.
    let line = format!("{}\r\nlist-tube-used\r\n", "y".repeat(500));
    for piece in line.as_bytes().chunks(7) {
        c.send(a, piece, 0);
    }
    assert_eq!(c.out(a), b"BAD_FORMAT\r\nUSING xxxxx\r\n");
    assert_eq!(c.ask(a, b"use a\rb\r\nlist-tube-used\r\n", 0), "BAD_FORMAT\r\nUSING xxxxx\r\n");
    assert_eq!(c.ask(a, b"peek\x001\r\n", 0), "BAD_FORMAT\r\n");
    assert_eq!(c.ask(a, b"\r\n \r\n", 0), "UNKNOWN_COMMAND\r\nUNKNOWN_COMMAND\r\n");
}

#[test]
fn commands_behind_a_blocked_reserve_wait_for_it() {
    let mut c = Conv::new();
    let (w, p) = (c.open(), c.open());
    c.send(w, b"reserve\r\nlist-tube-used\r\n", 0);
    assert_eq!(c.out(w), b"");
    assert_eq!(c.shard.read_gate(w), ReadGate::Read);
    c.send(w, b"use other\r\n", 0);
    assert_eq!(c.out(w), b"");
    assert_eq!(c.ask(p, b"put 0 0 10 2\r\nhi\r\n", S), "INSERTED 1\r\n");
    let mut dirty = Vec::new();
    c.shard.take_dirty(&mut dirty);
    assert!(dirty.contains(&w));
    assert_eq!(c.out(w), b"RESERVED 1 2\r\nhi\r\nUSING default\r\nUSING other\r\n");
}

#[test]
fn pipelining_behind_a_reserve_is_bounded() {
    let mut c = Conv::new();
    let w = c.open();
    c.send(w, b"reserve\r\n", 0);
    let mut dirty = Vec::new();
    c.shard.take_dirty(&mut dirty);
    let filler = b"list-tube-used\r\n".repeat(PENDING_BYTES_MAX / 16 + 1);
    c.send(w, &filler, 0);
    assert_eq!(c.shard.read_gate(w), ReadGate::Wait);
    // No reply came of it, but the network must hear that the gate shut.
    c.shard.take_dirty(&mut dirty);
    assert_eq!(dirty, vec![w]);
}

/// Starts a send of everything owed, as the network would, and returns
/// its size; it stays in flight until `sent`.
fn start_send(c: &mut Conv, conn: ConnId) -> usize {
    let mut segments = Vec::new();
    c.shard.start_send(conn, &mut segments);
    segments.iter().map(|s| s.bytes().len()).sum()
}

/// Sends, one complete send after another, until `done` says so given the
/// bytes sent (counting from `total`); returns that count. Fails if a send
/// is empty before then.
fn send_until(c: &mut Conv, conn: ConnId, mut total: usize, done: impl Fn(&Shard, usize) -> bool) -> usize {
    while !done(&c.shard, total) {
        let sent = start_send(c, conn);
        c.sent(conn, 0);
        assert!(sent > 0, "stuck after {total} bytes");
        total += sent;
    }
    total
}

#[test]
fn replies_owed_hold_back_further_commands() {
    let mut c = Conv::new();
    let w = c.open();
    // Cheap commands with big replies, never read: the commands past the
    // high mark wait in the input until the replies owed have been sent.
    let n = 20_000;
    let reply = c.ask(w, b"stats-tube default\r\n", 0).len();
    c.send(w, &b"stats-tube default\r\n".repeat(n), 0);
    let first = start_send(&mut c, w);
    assert!((OUTPUT_TEXT_BYTES_HIGH..OUTPUT_TEXT_BYTES_HIGH + reply).contains(&first), "{first}");
    assert_eq!(c.shard.read_gate(w), ReadGate::Wait);
    // More input now runs nothing: the first replies are still in flight.
    c.send(w, b"list-tube-used\r\n", 0);
    assert_eq!(c.shard.output(w).len(), 0);
    c.sent(w, 0);
    let expected = n * reply + b"USING default\r\n".len();
    assert_eq!(send_until(&mut c, w, first, |_, total| total >= expected), expected);
    assert_eq!(c.shard.read_gate(w), ReadGate::Read);
    assert_eq!(c.shard.read_gate(w), ReadGate::Read);
}

#[test]
fn bodies_sent_by_reference_count_against_the_larger_mark() {
    let mut c = Conv::new();
    let w = c.open();
    let mut put = b"put 0 0 10 60000\r\n".to_vec();
    put.resize(put.len() + 60_000, b'b');
    put.extend_from_slice(b"\r\n");
    assert_eq!(c.ask(w, &put, 0), "INSERTED 1\r\n");
    c.send(w, &b"peek 1\r\n".repeat(200), 0);
    let first = start_send(&mut c, w);
    let reply = "FOUND 1 60000\r\n".len() + 60_002;
    assert!((OUTPUT_BYTES_HIGH..OUTPUT_BYTES_HIGH + reply).contains(&first), "{first}");
    assert_eq!(c.shard.read_gate(w), ReadGate::Wait);
    c.sent(w, 0);
    assert_eq!(send_until(&mut c, w, first, |_, total| total >= 200 * reply), 200 * reply);
}

#[test]
fn connections_that_never_read_share_one_budget() {
    let mut c = Conv::new();
    let probe = c.open();
    let reply = c.ask(probe, b"stats-tube default\r\n", 0).len();
    let flood = b"stats-tube default\r\n".repeat(OUTPUT_TEXT_BYTES_HIGH / reply + 2);
    // Enough connections that their high marks together would be far
    // beyond the budget. Each floods and never reads: its first send never
    // completes.
    let first = OUTPUT_TEXT_BUDGET_BYTES / OUTPUT_TEXT_BYTES_HIGH;
    let conns: Vec<ConnId> = (0..first + 50).map(|_| c.open()).collect();
    let mut held = Vec::new();
    for &w in &conns {
        c.send(w, &flood, 0);
        held.push(start_send(&mut c, w));
        assert_eq!(c.shard.read_gate(w), ReadGate::Wait);
    }
    assert!(held[..first - 1].iter().all(|&h| h >= OUTPUT_TEXT_BYTES_HIGH), "{held:?}");
    let late = &held[first + 1..];
    assert!(late.iter().all(|&h| (OUTPUT_TEXT_FLOOR_BYTES..OUTPUT_TEXT_FLOOR_BYTES + reply).contains(&h)), "{late:?}");
    assert!(
        c.shard.text_held()
            < OUTPUT_TEXT_BUDGET_BYTES + OUTPUT_TEXT_BYTES_HIGH + 50 * (OUTPUT_TEXT_FLOOR_BYTES + reply)
    );
    // A connection that reads still gets on, a floor at a time.
    let reader = conns[first + 10];
    c.shard.sent(reader, 0);
    let next = start_send(&mut c, reader);
    assert!((OUTPUT_TEXT_FLOOR_BYTES..OUTPUT_TEXT_FLOOR_BYTES + reply).contains(&next), "{next}");
    c.shard.check_text_held();
    // The budget comes back as connections go.
    for w in conns {
        c.shard.abort(w, 0);
        c.shard.sent(w, 0);
        c.shard.remove(w);
    }
    c.shard.check_text_held();
    assert_eq!(c.shard.text_held(), 0);
}

#[test]
fn a_burst_leaves_no_large_buffer_behind() {
    let mut c = Conv::new();
    let w = c.open();
    // 300 documents in one write, pipelined behind a blocked reserve.
    let reply = c.ask(w, b"stats-tube default\r\n", 0).len();
    let burst = b"stats-tube default\r\n".repeat(300);
    c.send(w, b"reserve-with-timeout 1\r\n", 0);
    c.send(w, &burst, 0);
    assert!(c.shard.sessions[w.0 as usize].pending.capacity() >= burst.len());
    c.shard.tick(2 * S);
    // The burst runs over several turns (COMMANDS_PER_TURN_MAX a turn).
    c.turns(2 * S);
    assert_eq!(c.out(w).len(), "TIMED_OUT\r\n".len() + 300 * reply);
    let session = &c.shard.sessions[w.0 as usize];
    assert_eq!(session.pending.capacity(), 0, "the input buffer of the burst is freed");
    assert!(session.out.capacity() <= crate::protocol::output::KEPT_BUFFER_BYTES_MAX, "{}", session.out.capacity());
    // And the connection still works, with small buffers.
    assert_eq!(c.ask(w, b"list-tube-used\r\n", 2 * S), "USING default\r\n");
}

#[test]
fn a_quit_behind_the_high_mark_answers_what_came_before_it() {
    let mut c = Conv::new();
    let w = c.open();
    let n = 20_000;
    let reply = c.ask(w, b"stats-tube default\r\n", 0).len();
    let mut input = b"stats-tube default\r\n".repeat(n);
    input.extend_from_slice(b"quit\r\nlist-tube-used\r\n");
    c.send(w, &input, 0);
    assert_eq!(send_until(&mut c, w, 0, |shard, _| shard.finished(w)), n * reply);
}

#[test]
fn a_half_close_behind_the_high_mark_still_gets_every_reply() {
    let mut c = Conv::new();
    let w = c.open();
    let n = 20_000;
    let reply = c.ask(w, b"stats-tube default\r\n", 0).len();
    c.send(w, &b"stats-tube default\r\n".repeat(n), 0);
    c.send(w, b"list-tube-used\r\n", 0);
    c.eof(w, 0);
    assert!(!c.shard.finished(w));
    let total = send_until(&mut c, w, 0, |shard, _| shard.finished(w));
    assert_eq!(total, n * reply + b"USING default\r\n".len());
}

/// `n` puts of one byte each, as one client pipelines them.
fn puts(n: usize) -> Vec<u8> {
    (0..n).flat_map(|i| format!("put 0 0 60 1\r\n{}\r\n", i % 10).into_bytes()).collect()
}

/// `INSERTED a` .. `INSERTED b`, one line each.
fn inserted(ids: std::ops::RangeInclusive<u64>) -> String {
    ids.map(|id| format!("INSERTED {id}\r\n")).collect()
}

#[test]
fn a_turn_runs_a_budget_of_commands_and_carries_the_rest_in_order() {
    let mut c = Conv::new();
    let flooder = c.open();
    let other = c.open();
    let budget = COMMANDS_PER_TURN_MAX as u64;
    c.shard.begin_turn();
    c.shard.input(flooder, &puts(2 * budget as usize + 5), 0);
    assert_eq!(String::from_utf8(c.out(flooder)).unwrap(), inserted(1..=budget));
    assert!(c.shard.has_carried());
    // It is read no further while it has input left over.
    assert_eq!(c.shard.read_gate(flooder), ReadGate::Wait);
    // Another client, in the same turn, is served at once.
    c.shard.input(other, b"put 0 0 60 1\r\nz\r\n", 0);
    assert_eq!(c.out(other), format!("INSERTED {}\r\n", budget + 1).as_bytes());
    // What the flooder sends next waits behind what it carries.
    c.shard.input(flooder, b"list-tube-used\r\n", 0);
    assert_eq!(c.out(flooder), b"");
    c.shard.run_carried(0);
    assert_eq!(c.out(flooder), b"", "this turn's budget is spent");
    c.shard.begin_turn();
    c.shard.run_carried(0);
    assert_eq!(String::from_utf8(c.out(flooder)).unwrap(), inserted(budget + 2..=2 * budget + 1));
    assert!(c.shard.has_carried());
    c.shard.begin_turn();
    c.shard.run_carried(0);
    let last = inserted(2 * budget + 2..=2 * budget + 6) + "USING default\r\n";
    assert_eq!(String::from_utf8(c.out(flooder)).unwrap(), last);
    assert!(!c.shard.has_carried());
    assert_eq!(c.shard.read_gate(flooder), ReadGate::Read);
    c.shard.engine().check_invariants(0);
}

#[test]
fn carried_input_behind_a_half_close_runs_before_the_connection_closes() {
    let mut c = Conv::new();
    let w = c.open();
    let budget = COMMANDS_PER_TURN_MAX as u64;
    c.shard.begin_turn();
    c.shard.input(w, &puts(3 * budget as usize), 0);
    c.shard.eof(w, 0);
    assert!(!c.shard.finished(w), "closed with commands carried");
    c.turns(0);
    assert_eq!(String::from_utf8(c.out(w)).unwrap(), inserted(1..=3 * budget));
    assert!(c.shard.finished(w));
    c.shard.remove(w);
    assert!(!c.shard.has_carried());
}

#[test]
fn a_session_closed_with_carried_input_leaves_the_queue() {
    let mut c = Conv::new();
    let w = c.open();
    c.shard.begin_turn();
    c.shard.input(w, &puts(2 * COMMANDS_PER_TURN_MAX as usize), 0);
    c.shard.abort(w, 0);
    c.shard.remove(w);
    assert!(!c.shard.has_carried());
    // A new session in the same slot starts with a clean budget.
    let again = c.open();
    assert_eq!(again, w);
    assert_eq!(c.ask(again, b"list-tube-used\r\n", 0), "USING default\r\n");
}

#[test]
fn an_answered_waiter_runs_its_pipelined_commands_when_the_input_ends() {
    // Commands pipelined behind an answered reserve run once the input that
    // answered it has run, all of it: where the network's reads end decides
    // how the two connections' commands interleave (here, which put gets
    // which id). This is why the fuzz target keeps such deliveries whole
    // when it compares cut and uncut input (fuzz/, `Run::may_cut`).
    let input = b"put 0 0 10 1\r\na\r\nput 0 0 10 1\r\nb\r\n";
    for (cut, waiter_put, second_put) in [(None, 3, 2), (Some(17), 2, 3)] {
        let mut c = Conv::new();
        let (w, p) = (c.open(), c.open());
        c.send(w, b"reserve\r\nput 0 0 10 1\r\nw\r\n", 0);
        match cut {
            None => c.send(p, input, 0),
            Some(at) => {
                c.send(p, &input[..at], 0);
                c.send(p, &input[at..], 0);
            }
        }
        assert_eq!(String::from_utf8(c.out(w)).unwrap(), format!("RESERVED 1 1\r\na\r\nINSERTED {waiter_put}\r\n"));
        assert_eq!(String::from_utf8(c.out(p)).unwrap(), format!("INSERTED 1\r\nINSERTED {second_put}\r\n"));
    }
}

#[test]
fn timers_run_between_inputs_not_inside_one() {
    // The job's reservation (ttr 1 s, reserved at 3 ns) expires once the
    // clock is past 1 s + 3 ns. Commands read at 1 s run at 1 s + 1 ns,
    // + 2 ns, ...: the fifth is past the expiry, but timers run only when
    // an input begins, so it still sees the job reserved unless the input
    // was cut before it. The fuzz target therefore keeps deliveries whole
    // when a deadline falls within them (fuzz/, `Run::may_cut`).
    let input = b"list-tube-used\r\n".repeat(4);
    for (cut, state) in [(false, "reserved"), (true, "ready")] {
        let mut c = Conv::new();
        let w = c.open();
        assert_eq!(c.ask(w, b"put 0 0 1 1\r\nx\r\nreserve\r\n", 0), "INSERTED 1\r\nRESERVED 1 1\r\nx\r\n");
        if cut {
            c.send(w, &input, S);
            c.send(w, b"stats-job 1\r\n", S);
        } else {
            c.send(w, &[input.as_slice(), b"stats-job 1\r\n"].concat(), S);
        }
        let replies = String::from_utf8(c.out(w)).unwrap();
        assert!(replies.contains(&format!("\nstate: {state}\n")), "{replies}");
    }
}

#[test]
fn reserve_with_timeout_and_the_clock() {
    let mut c = Conv::new();
    let w = c.open();
    assert_eq!(c.ask(w, b"reserve-with-timeout 0\r\n", 0), "TIMED_OUT\r\n");
    c.send(w, b"reserve-with-timeout 2\r\nlist-tube-used\r\n", 0);
    // Each command runs a nanosecond after the one before: this one at 2 ns.
    assert_eq!(c.shard.engine().next_deadline(), Some(2 * S + 2));
    assert!(c.shard.next_deadline() <= Some(2 * S + 2));
    c.shard.tick(2 * S + 1);
    assert_eq!(c.out(w), b"");
    c.shard.tick(2 * S + 2);
    assert_eq!(c.out(w), b"TIMED_OUT\r\nUSING default\r\n");
}

#[test]
fn ttr_margin_and_expiry() {
    let mut c = Conv::new();
    let w = c.open();
    // The put line runs at 1 ns, its body completes at 2 ns, the reserve
    // runs at 3 ns: the job's deadline is 2 s + 3 ns.
    c.send(w, b"put 0 0 2 1\r\nx\r\nreserve\r\n", 0);
    assert_eq!(c.out(w), b"INSERTED 1\r\nRESERVED 1 1\r\nx\r\n");
    c.send(w, b"reserve\r\n", 0);
    c.shard.tick(S + 2);
    assert_eq!(c.out(w), b"");
    c.shard.tick(S + 3);
    assert_eq!(c.out(w), b"DEADLINE_SOON\r\n");
    c.shard.tick(2 * S + 4);
    let stats = c.ask(w, b"stats-job 1\r\n", 2 * S + 4);
    assert!(stats.contains("\nstate: ready\n") && stats.contains("\ntimeouts: 1\n"), "{stats}");
}

#[test]
fn commands_in_one_batch_see_time_pass() {
    let mut c = Conv::new();
    let w = c.open();
    // One read, one clock reading: beanstalkd reads the clock for each
    // command, so the full delay is never left by the next command.
    let stats = c.ask(w, b"put 0 100 30 1\r\nx\r\nstats-job 1\r\n", 5 * S);
    assert!(stats.contains("\ntime-left: 99\n"), "{stats}");
    let stats = c.ask(w, b"pause-tube default 100\r\nstats-tube default\r\n", 6 * S);
    assert!(stats.contains("\npause-time-left: 99\n"), "{stats}");
    // Two delays set in one batch keep the order they were set in, not
    // the order of their ids.
    c.ask(w, b"pause-tube default 0\r\nput 0 0 100 1\r\na\r\nput 0 0 100 1\r\nb\r\n", 7 * S);
    c.ask(w, b"reserve\r\nreserve\r\n", 7 * S);
    assert_eq!(
        c.ask(w, b"release 3 0 10\r\nrelease 2 0 10\r\npeek-delayed\r\n", 8 * S),
        "RELEASED\r\nRELEASED\r\nFOUND 3 1\r\nb\r\n"
    );
}

#[test]
fn a_failed_write_while_an_answer_is_due_closes_cleanly() {
    let mut c = Conv::new();
    let w = c.open();
    // A reservation inside its last second, and the only ready job in a
    // paused tube: the reserve waits for a tick that will say
    // DEADLINE_SOON. The connection fails before that tick.
    c.ask(w, b"put 0 0 1 1\r\nx\r\nreserve\r\nput 0 0 9 1\r\ny\r\npause-tube default 9\r\n", 0);
    c.send(w, b"reserve\r\n", 0);
    c.shard.abort(w, 10);
    let p = c.open();
    assert_eq!(c.ask(p, b"peek-ready\r\n", 20), "FOUND 1 1\r\nx\r\n");
}

#[test]
fn half_close_while_blocked_times_out_then_runs_what_is_left() {
    let mut c = Conv::new();
    let w = c.open();
    c.send(w, b"reserve\r\nlist-tube-used\r\nreserve\r\n", 0);
    c.shard.eof(w, S);
    assert_eq!(c.out(w), b"TIMED_OUT\r\nUSING default\r\nTIMED_OUT\r\n");
    assert_eq!(c.shard.read_gate(w), ReadGate::Stop);
    assert!(c.shard.finished(w));
    c.shard.remove(w);
    assert!(c.shard.engine().stats().connections == 0);
}

#[test]
fn quit_closes_and_returns_reservations() {
    let mut c = Conv::new();
    let (a, b) = (c.open(), c.open());
    c.send(a, b"put 0 0 10 1\r\nx\r\nreserve\r\nquit\r\nput 0 0 10 1\r\ny\r\n", 0);
    assert_eq!(c.out(a), b"INSERTED 1\r\nRESERVED 1 1\r\nx\r\n");
    assert_eq!(c.shard.read_gate(a), ReadGate::Stop);
    assert_eq!(c.ask(b, b"reserve-with-timeout 0\r\n", 0), "RESERVED 1 1\r\nx\r\n");
    assert_eq!(c.ask(b, b"peek 2\r\n", 0), "NOT_FOUND\r\n");
}

#[test]
fn stats_documents() {
    let mut c = Conv::new();
    let a = c.open();
    let stats = c.ask(a, b"stats\r\n", 3 * S + 1);
    let (head, doc) = stats.split_once("\r\n").unwrap();
    assert_eq!(head, format!("OK {}", doc.len() - 2));
    assert!(doc.starts_with("---\ncurrent-jobs-urgent: 0\n"));
    assert!(doc.contains("\ncmd-stats: 1\n"));
    assert!(doc.contains("\npid: 42\nversion: \"1.13\"\nrusage-utime: 1.000005\nrusage-stime: 0.000000\nuptime: 3\n"));
    assert!(doc.ends_with("\nid: 0123456789abcdef\nhostname: \"host\"\nos: \"#1 SMP\"\nplatform: \"x86_64\"\nrunnerbean-io: \"test\"\n\r\n"));
    assert_eq!(c.ask(a, b"list-tubes\r\n", 0), "OK 14\r\n---\n- default\n\r\n");
    assert_eq!(c.ask(a, b"list-tubes-watched\r\n", 0), "OK 14\r\n---\n- default\n\r\n");
    let tube = c.ask(a, b"stats-tube default\r\n", 0);
    assert_eq!(
        tube,
        "OK 267\r\n---\nname: \"default\"\ncurrent-jobs-urgent: 0\ncurrent-jobs-ready: 0\ncurrent-jobs-reserved: 0\n\
current-jobs-delayed: 0\ncurrent-jobs-buried: 0\ntotal-jobs: 0\ncurrent-using: 1\ncurrent-watching: 1\n\
current-waiting: 0\ncmd-delete: 0\ncmd-pause-tube: 0\npause: 0\npause-time-left: 0\n\r\n"
    );
    assert_eq!(c.ask(a, b"stats-tube nope\r\n", 0), "NOT_FOUND\r\n");
    assert_eq!(c.ask(a, b"stats-job 1\r\n", 0), "NOT_FOUND\r\n");
}

#[test]
fn counters_count_what_beanstalkd_counts() {
    let mut c = Conv::new();
    let a = c.open();
    // Counted although they fail afterwards: a put with trailing garbage,
    // a pause-tube with an invalid name, an ignore refused.
    c.ask(a, b"put 0 0 0 1 x\r\npause-tube -x 1\r\nignore default\r\nstats-tube \r\nfoo\r\n", 0);
    let stats = c.ask(a, b"stats\r\n", 0);
    for line in ["cmd-put: 1", "cmd-pause-tube: 1", "cmd-ignore: 1", "cmd-stats-tube: 0", "current-producers: 0"] {
        assert!(stats.contains(&format!("\n{line}\n")), "{line} in {stats}");
    }
}

#[test]
fn clear_tube_and_list_jobs_answer_byte_for_byte() {
    let mut c = Conv::new();
    let a = c.open();
    // Jobs 1-3 ready (priorities 5, 1, 5), 4-5 delayed, 6-7 buried after
    // being reserved in that order, 8 reserved.
    c.ask(a, b"use t\r\nwatch t\r\nignore default\r\n", S);
    for (pri, delay) in [(5, 0), (1, 0), (5, 0), (0, 30), (0, 20)] {
        c.ask(a, format!("put {pri} {delay} 60 1\r\nx\r\n").as_bytes(), S);
    }
    c.ask(a, b"put 0 0 60 1\r\nx\r\nput 0 0 60 1\r\nx\r\nput 0 0 60 1\r\nx\r\n", S);
    assert_eq!(
        c.ask(a, b"reserve\r\nbury 6 0\r\nreserve\r\nbury 7 0\r\nreserve\r\n", S),
        "RESERVED 6 1\r\nx\r\nBURIED\r\nRESERVED 7 1\r\nx\r\nBURIED\r\nRESERVED 8 1\r\nx\r\n"
    );
    assert_eq!(c.ask(a, b"list-jobs t ready 0 10\r\n", S), "OK 16\r\n---\n- 2\n- 1\n- 3\n\r\n");
    assert_eq!(c.ask(a, b"list-jobs t ready 2 1\r\n", S), "OK 8\r\n---\n- 1\n\r\n");
    assert_eq!(c.ask(a, b"list-jobs t delayed 0 10\r\n", S), "OK 12\r\n---\n- 5\n- 4\n\r\n");
    assert_eq!(c.ask(a, b"list-jobs t buried 6 10\r\n", S), "OK 8\r\n---\n- 7\n\r\n");
    assert_eq!(c.ask(a, b"list-jobs t buried 7 10\r\n", S), "OK 4\r\n---\n\r\n");
    assert_eq!(c.ask(a, b"list-jobs nope ready 0 10\r\n", S), "NOT_FOUND\r\n");
    assert_eq!(c.ask(a, b"list-jobs t reserved 0 10\r\n", S), "BAD_FORMAT\r\n");
    assert_eq!(c.ask(a, b"list-jobs t ready 0\r\n", S), "BAD_FORMAT\r\n");
    assert_eq!(c.ask(a, b"clear-tube t ready, buried\r\n", S), "BAD_FORMAT\r\n");
    assert_eq!(c.ask(a, b"clear-tube nope ready\r\n", S), "NOT_FOUND\r\n");
    assert_eq!(c.ask(a, b"clear-tubet ready\r\n", S), "UNKNOWN_COMMAND\r\n");
    assert_eq!(c.ask(a, b"clear-tube t buried,ready\r\n", S), "CLEARED 5\r\n");
    assert_eq!(c.ask(a, b"peek 1\r\npeek 6\r\npeek 4\r\n", S), "NOT_FOUND\r\nNOT_FOUND\r\nFOUND 4 1\r\nx\r\n");
    assert_eq!(c.ask(a, b"clear-tube t delayed\r\n", S), "CLEARED 2\r\n");
    assert_eq!(c.ask(a, b"clear-tube t ready,delayed,buried\r\n", S), "CLEARED 0\r\n");
    // The reserved job is left, and the tube with it.
    let tube = c.ask(a, b"stats-tube t\r\n", S);
    for line in
        ["current-jobs-ready: 0", "current-jobs-reserved: 1", "current-jobs-delayed: 0", "current-jobs-buried: 0"]
    {
        assert!(tube.contains(&format!("\n{line}\n")), "{line} in {tube}");
    }
    // cmd-delete counts delete commands, and none was sent.
    assert!(tube.contains("\ncmd-delete: 0\n"), "{tube}");
    let stats = c.ask(a, b"stats\r\n", S);
    for line in ["current-jobs-ready: 0", "current-jobs-reserved: 1", "cmd-delete: 0", "total-jobs: 8"] {
        assert!(stats.contains(&format!("\n{line}\n")), "{line} in {stats}");
    }
    let ops = c.shard.engine().stats().ops;
    // Counted as beanstalkd counts a command: once parsed, whatever it
    // then answers (not a line answered BAD_FORMAT).
    assert_eq!((ops.get(Op::ClearTube), ops.get(Op::ListJobs)), (4, 6));
    assert_eq!(c.ask(a, b"delete 8\r\n", S), "DELETED\r\n");
}

#[test]
fn strict_answers_runnerbean_s_own_commands_as_beanstalkd_does() {
    let mut c = Conv { shard: Shard::new(EngineConfig::default(), ServerInfo { strict: true, ..info(65535) }) };
    let a = c.open();
    c.ask(a, b"put 0 0 60 1\r\nx\r\n", S);
    assert_eq!(
        c.ask(a, b"list-jobs default ready 0 10\r\nclear-tube default ready\r\nclear-tube x\r\npeek 1\r\n", S),
        "UNKNOWN_COMMAND\r\nUNKNOWN_COMMAND\r\nUNKNOWN_COMMAND\r\nFOUND 1 1\r\nx\r\n"
    );
    // Not counted, as no unknown command is.
    let ops = c.shard.engine().stats().ops;
    assert_eq!((ops.get(Op::ClearTube), ops.get(Op::ListJobs)), (0, 0));
}

/// With the log, CLEARED acknowledges deletes: it waits for their records
/// to be durable, as DELETED does.
#[test]
fn cleared_waits_for_the_log_as_deleted_does() {
    use crate::wal::log::{Log, LogConfig, SyncPolicy};
    use crate::wal::recover::Recovered;
    use crate::wal::tests::MemFiles;
    let mut c = Conv::new();
    let files = MemFiles::default();
    let config = LogConfig { shard: 0, shards: 1, segment_bytes: 1 << 20, sync: SyncPolicy::Always };
    let log = Log::open(config, Box::new(files.clone()), &Recovered::default(), S).unwrap();
    c.shard.engine_mut().attach_log(log);
    let a = c.open();
    let flush = |c: &mut Conv| {
        let log = c.shard.engine_mut().log_mut().unwrap();
        let batch = log.take_batch().unwrap();
        files.apply(&batch);
        log.written(batch.number);
        log.synced(batch.number);
        let durable = log.durable();
        c.shard.durable(durable);
    };
    c.send(a, b"put 0 0 60 1\r\nx\r\nput 0 0 60 1\r\nx\r\n", S);
    flush(&mut c);
    assert_eq!(c.out(a), b"INSERTED 1\r\nINSERTED 2\r\n");
    c.send(a, b"clear-tube default ready\r\nlist-jobs default ready 0 10\r\n", S);
    assert_eq!(c.out(a), b"", "held until the delete records are durable");
    flush(&mut c);
    assert_eq!(c.out(a), b"CLEARED 2\r\nOK 4\r\n---\n\r\n");
    // Nothing to record, nothing to wait for.
    assert_eq!(c.ask(a, b"clear-tube default ready\r\n", S), "CLEARED 0\r\n");
}

mod random_input {
    use super::*;
    use proptest::prelude::*;

    /// Pieces of input: fragments of real commands, garbage, and the bytes
    /// that matter to framing, so that random streams reach every state.
    fn piece() -> impl Strategy<Value = Vec<u8>> {
        let words: Vec<&'static [u8]> = vec![
            b"put 0 0 1 3\r\n",
            b"put 5 1 2 0\r\n\r\n",
            b"put 0 0 1 70000\r\n",
            b"abc\r\n",
            b"reserve\r\n",
            b"reserve-with-timeout 0\r\n",
            b"reserve-with-timeout 1\r\n",
            b"delete 1\r\n",
            b"release 2 0 1\r\n",
            b"bury 1 0\r\n",
            b"kick 3\r\n",
            b"touch 1\r\n",
            b"use t\r\n",
            b"watch t\r\n",
            b"ignore default\r\n",
            b"pause-tube t 1\r\n",
            b"clear-tube t ready,buried\r\n",
            b"clear-tube default delayed\r\n",
            b"list-jobs default ready 0 5\r\n",
            b"list-jobs t buried 1 2\r\n",
            b"stats\r\n",
            b"quit\r\n",
            b"\r",
            b"\n",
            b"\x00",
        ];
        prop_oneof![
            3 => proptest::sample::select(words).prop_map(|w| w.to_vec()),
            1 => proptest::collection::vec(any::<u8>(), 0..300),
        ]
    }

    #[derive(Clone, Debug)]
    enum Step {
        Send(usize, Vec<u8>),
        Eof(usize),
        Abort(usize),
        Tick(u64),
        /// A new turn of the loop, which runs carried input.
        Turn,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            8 => (0usize..3, piece()).prop_map(|(c, p)| Step::Send(c, p)),
            1 => (0usize..3).prop_map(Step::Eof),
            1 => (0usize..3).prop_map(Step::Abort),
            2 => (0u64..3000).prop_map(Step::Tick),
            2 => Just(Step::Turn),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        /// Whatever arrives, in whatever pieces, the shard neither panics
        /// nor breaks an engine invariant, and every connection it closes
        /// can be removed.
        #[test]
        fn random_streams_never_break_the_shard(steps in proptest::collection::vec(step(), 1..80)) {
            let mut c = Conv::with_max(65535);
            let mut conns: Vec<Option<ConnId>> = (0..3).map(|_| Some(c.open())).collect();
            let mut now = 0;
            for step in steps {
                match step {
                    Step::Send(i, bytes) => {
                        if let Some(conn) = conns[i] {
                            c.shard.input(conn, &bytes, now);
                        }
                    }
                    Step::Eof(i) => {
                        if let Some(conn) = conns[i] {
                            c.shard.eof(conn, now);
                        }
                    }
                    Step::Abort(i) => {
                        if let Some(conn) = conns[i] {
                            c.shard.abort(conn, now);
                        }
                    }
                    Step::Tick(ms) => {
                        now += ms * 1_000_000;
                        c.shard.tick(now);
                    }
                    Step::Turn => {
                        c.shard.begin_turn();
                        c.shard.run_carried(now);
                    }
                }
                c.shard.engine().check_invariants(now);
                for slot in conns.iter_mut() {
                    if let Some(conn) = *slot {
                        let _ = c.out(conn);
                        if c.shard.finished(conn) {
                            c.shard.remove(conn);
                            *slot = Some(c.open());
                        }
                    }
                }
            }
        }
    }
}

/// Routing is consulted for every command, in release builds too: on
/// shard 0 of two, a command whose owner is shard 1 (tube `b` hashes
/// there) is refused loudly rather than answered from the wrong shard's
/// state.
#[test]
#[should_panic(expected = "a command for shard 1 reached shard 0")]
fn every_command_goes_through_the_router() {
    let mut shard = Shard::new(EngineConfig { shard: 0, shards: 2 }, info(65535));
    let a = shard.open(0).unwrap();
    shard.input(a, b"stats-tube default\r\n", 0);
    shard.input(a, b"stats-tube b\r\n", 0);
}

/// Runs `f` with memory short on this thread, and `room` bytes of it for
/// new jobs and tubes (see `memory::room_for`).
fn while_short<R>(room: usize, f: impl FnOnce() -> R) -> R {
    crate::memory::set_short_for_test(Some(room));
    let result = f();
    crate::memory::set_short_for_test(None);
    result
}

#[test]
fn while_memory_is_short_new_jobs_and_tubes_need_room_and_connections_are_served() {
    let mut c = Conv::new();
    let a = c.open();
    assert_eq!(c.ask(a, b"put 0 0 10 1\r\nx\r\nwatch old\r\n", 0), "INSERTED 1\r\nWATCHING 2\r\n");
    while_short(0, || {
        // The body is read and thrown away, as after JOB_TOO_BIG, and no
        // id is used up.
        assert_eq!(c.ask(a, b"put 0 0 10 5\r\nhello\r\nlist-tube-used\r\n", S), "OUT_OF_MEMORY\r\nUSING default\r\n");
        assert_eq!(
            c.ask(a, b"use new\r\nwatch new\r\nlist-tubes\r\n", S),
            "OUT_OF_MEMORY\r\nOUT_OF_MEMORY\r\nOK 20\r\n---\n- default\n- old\n\r\n"
        );
        // Existing tubes and jobs work as ever.
        assert_eq!(c.ask(a, b"use old\r\nwatch default\r\n", S), "USING old\r\nWATCHING 2\r\n");
        assert!(c.ask(a, b"stats\r\n", S).starts_with("OK "));
        assert_eq!(c.ask(a, b"peek 1\r\n", S), "FOUND 1 1\r\nx\r\n");
        assert_eq!(c.ask(a, b"reserve\r\n", S), "RESERVED 1 1\r\nx\r\n");
        assert_eq!(c.ask(a, b"delete 1\r\n", S), "DELETED\r\n");
        // A new connection is served: an administrator can get in.
        let admin = c.open();
        assert_eq!(c.ask(admin, b"list-tube-used\r\nstats-tube old\r\n", S).lines().next(), Some("USING default"));
    });
    // Memory freed beyond what the reserve lacks is room for new jobs and
    // tubes up to its size, while memory is still short.
    while_short(5, || {
        assert_eq!(
            c.ask(a, b"put 0 0 10 6\r\nhello!\r\nput 0 0 10 5\r\nhello\r\nuse new\r\n", 2 * S),
            "OUT_OF_MEMORY\r\nINSERTED 2\r\nUSING new\r\n"
        );
    });
    assert_eq!(c.ask(a, b"put 0 0 10 6\r\nhello!\r\nwatch newer\r\n", 2 * S), "INSERTED 3\r\nWATCHING 3\r\n");
}

#[test]
fn while_memory_is_short_each_connection_is_held_to_the_floor() {
    let mut c = Conv::new();
    let w = c.open();
    let reply = c.ask(w, b"stats-tube default\r\n", 0).len();
    let flood = b"stats-tube default\r\n".repeat(OUTPUT_TEXT_BYTES_HIGH / reply);
    while_short(0, || {
        c.send(w, &flood, 0);
        let first = start_send(&mut c, w);
        assert!((OUTPUT_TEXT_FLOOR_BYTES..OUTPUT_TEXT_FLOOR_BYTES + reply).contains(&first), "{first}");
        assert_eq!(c.shard.read_gate(w), ReadGate::Wait);
    });
    // Once memory is back, the connection gets its full share again (over
    // as many turns as its commands take).
    c.sent(w, 0);
    let next = start_send(&mut c, w);
    assert!(next >= OUTPUT_TEXT_BYTES_HIGH / 2, "{next}");
}

#[test]
fn a_connection_whose_input_cannot_be_kept_is_closed_alone() {
    let mut c = Conv::new();
    let (a, b) = (c.open(), c.open());
    c.send(a, b"put 0 0 10 1\r\nx\r\nreserve\r\nreserve\r\n", 0);
    // Behind its blocked reserve, a's next commands must be kept, and the
    // memory for them cannot be had.
    crate::memory::fail_for_test(0, 1);
    c.shard.input(a, b"list-tube-used\r\n", 0);
    crate::memory::fail_for_test(0, 0);
    assert!(c.shard.finished(a) && c.shard.is_dead(a));
    assert_eq!(c.shard.read_gate(a), ReadGate::Stop);
    // Its reservation went back, and b is served as ever.
    assert_eq!(c.ask(b, b"reserve-with-timeout 0\r\n", 0), "RESERVED 1 1\r\nx\r\n");
    c.shard.remove(a);
    c.shard.check_text_held();
}

#[test]
fn a_waiter_whose_answer_cannot_be_written_goes_and_its_job_to_the_next() {
    let mut c = Conv::new();
    let (p, w1, w2) = (c.open(), c.open(), c.open());
    c.send(w1, b"reserve\r\n", 0);
    c.send(w2, b"reserve\r\n", 0);
    c.send(p, b"put 0 1 10 1\r\nx\r\n", 0);
    assert_eq!(c.out(p), b"INSERTED 1\r\n");
    while_short(0, || {
        // The job falls due and goes to w1, whose answer finds no room.
        crate::memory::fail_for_test(0, 1);
        c.shard.tick(2 * S);
        crate::memory::fail_for_test(0, 0);
    });
    assert!(c.shard.finished(w1) && c.shard.is_dead(w1));
    assert_eq!(c.out(w2), b"RESERVED 1 1\r\nx\r\n");
    c.shard.engine().check_invariants(2 * S);
}

#[test]
fn a_connection_refused_for_want_of_memory_leaves_nothing() {
    let mut c = Conv::new();
    let a = c.open();
    for k in 0..3 {
        crate::memory::fail_for_test(k, u32::MAX);
        let refused = c.shard.open(0);
        crate::memory::fail_for_test(0, 0);
        if let Some(conn) = refused {
            // Every reservation was made before the k-th.
            c.shard.close(conn, 0);
            c.shard.remove(conn);
        }
        assert_eq!(c.shard.engine().stats().connections, 1);
        c.shard.engine().check_invariants(0);
    }
    assert_eq!(c.ask(a, b"list-tube-used\r\n", 0), "USING default\r\n");
}

#[test]
fn memory_upkeep_wakes_the_loop_only_while_the_server_has_been_busy() {
    use crate::memory::{COLLECT_INTERVAL_NS, COLLECT_QUIET_NS};
    let mut c = Conv::new();
    let w = c.open();
    c.shard.tick(0);
    assert_eq!(c.shard.next_deadline(), None, "nothing to do before any work");
    assert!(c.ask(w, b"stats\r\n", S).starts_with("OK "));
    // A collection a second after the last, while work was recent.
    let mut now = S;
    let mut wakes = 0;
    while let Some(at) = c.shard.next_deadline() {
        // (Commands move the shard's clock on by a nanosecond each.)
        assert!(at <= now + COLLECT_INTERVAL_NS + 100, "{at} after {now}");
        now = at.max(now);
        c.shard.tick(now);
        wakes += 1;
        assert!(wakes < 10, "the loop never gets to sleep");
    }
    assert!(now >= S + COLLECT_QUIET_NS - COLLECT_INTERVAL_NS, "collections stopped too soon, at {now}");
    assert!(wakes >= 2);
}

/// The connection figures of `stats` as one connection sees them.
fn figures(c: &mut Conv, asker: ConnId, now: Nanos) -> [u64; 4] {
    let doc = c.ask(asker, b"stats\r\n", now);
    ["current-connections", "current-producers", "current-workers", "current-waiting"].map(|key| {
        let line = doc.lines().find(|l| l.starts_with(&format!("{key}: "))).unwrap_or_else(|| panic!("{key}"));
        line[key.len() + 2..].parse().expect("a number")
    })
}

/// The figures are kept as sessions change, not counted by `stats` (which
/// made each `stats` walk every session): every way into and out of each
/// one, checked at the wire and, in debug builds, against a count of the
/// sessions at every `stats`.
#[test]
fn connection_figures_follow_every_change() {
    let mut c = Conv::new();
    let asker = c.open();
    assert_eq!(figures(&mut c, asker, 0), [1, 0, 0, 0]);
    let producer = c.open();
    assert_eq!(c.ask(producer, b"put 0 0 10 1\r\na\r\nput 0 0 10 1\r\nb\r\n", 0), "INSERTED 1\r\nINSERTED 2\r\n");
    assert_eq!(figures(&mut c, asker, 0), [2, 1, 0, 0]);
    // Two reserves answered at once, then one that waits and is answered
    // by a put; one that waits and times out; one that waits and is cut
    // short by a half-close; one that waits and goes with its connection.
    let worker = c.open();
    assert_eq!(c.ask(worker, b"reserve\r\nreserve\r\n", 0), "RESERVED 1 1\r\na\r\nRESERVED 2 1\r\nb\r\n");
    assert_eq!(c.ask(worker, b"reserve\r\n", 0), "");
    assert_eq!(figures(&mut c, asker, 0), [3, 1, 1, 1]);
    assert_eq!(c.ask(producer, b"put 0 0 10 1\r\nc\r\n", 0), "INSERTED 3\r\n");
    assert_eq!(c.out(worker), b"RESERVED 3 1\r\nc\r\n");
    assert_eq!(figures(&mut c, asker, 0), [3, 1, 1, 0]);
    let timing_out = c.open();
    assert_eq!(c.ask(timing_out, b"reserve-with-timeout 1\r\n", 0), "");
    let half_closing = c.open();
    assert_eq!(c.ask(half_closing, b"reserve\r\n", 0), "");
    let leaving = c.open();
    assert_eq!(c.ask(leaving, b"reserve\r\n", 0), "");
    assert_eq!(figures(&mut c, asker, 0), [6, 1, 4, 3]);
    c.shard.tick(2 * S);
    assert_eq!(c.out(timing_out), b"TIMED_OUT\r\n");
    c.eof(half_closing, 2 * S);
    assert_eq!(c.out(half_closing), b"TIMED_OUT\r\n");
    c.shard.close(leaving, 2 * S);
    // The half-closed connection closed once answered.
    assert_eq!(figures(&mut c, asker, 2 * S), [4, 1, 2, 0]);
    // A reserve-job makes a worker too; closing takes each figure away.
    let by_id = c.open();
    assert_eq!(c.ask(by_id, b"reserve-job 3\r\n", 2 * S), "NOT_FOUND\r\n");
    assert_eq!(figures(&mut c, asker, 2 * S), [5, 1, 2, 0]);
    assert_eq!(c.ask(worker, b"release 3 0 0\r\n", 2 * S), "RELEASED\r\n");
    assert_eq!(c.ask(by_id, b"reserve-job 3\r\n", 2 * S), "RESERVED 3 1\r\nc\r\n");
    assert_eq!(figures(&mut c, asker, 2 * S), [5, 1, 3, 0]);
    for conn in [producer, worker, timing_out, by_id] {
        c.shard.close(conn, 2 * S);
    }
    assert_eq!(figures(&mut c, asker, 2 * S), [1, 0, 0, 0]);
}

/// A waiter served by a put is no longer waiting for a `stats` run in the
/// same batch, before its answer has been delivered (beanstalkd takes it off
/// the waiting list when it hands the job over). Found by the
/// session_framing fuzz target.
#[test]
fn a_waiter_served_in_the_same_batch_no_longer_counts_as_waiting() {
    let mut c = Conv::new();
    let (a, b) = (c.open(), c.open());
    assert_eq!(c.ask(a, b"reserve\r\n", 0), "");
    let stats = c.ask(b, b"put 0 0 10 1\r\nx\r\nstats\r\n", 0);
    assert!(stats.starts_with("INSERTED 1\r\nOK "), "{stats}");
    assert!(stats.contains("\ncurrent-waiting: 0\n"), "{stats}");
    assert!(stats.contains("\ncurrent-workers: 1\n"), "{stats}");
    assert_eq!(c.ask(a, b"", 0), "RESERVED 1 1\r\nx\r\n");
}

/// A put body received straight into the job is activity like any input:
/// the memory upkeep's timer is the same as when the bytes come as input
/// (found by the session-framing fuzz target).
#[test]
fn a_body_received_directly_counts_as_activity() {
    let config = EngineConfig { shard: 0, shards: 1 };
    let (mut by_input, mut direct) = (Shard::new(config, info(70_000)), Shard::new(config, info(70_000)));
    let (a, b) = (by_input.open(0).unwrap(), direct.open(0).unwrap());
    let line = b"put 0 0 10 70000\r\n";
    by_input.input(a, line, NANOS_PER_SEC);
    direct.input(b, line, NANOS_PER_SEC);
    // Long after: the upkeep has nothing to do on either.
    let later = 5_000 * NANOS_PER_SEC;
    by_input.tick(later);
    direct.tick(later);
    assert_eq!(by_input.next_deadline(), direct.next_deadline());
    let bytes = vec![b'x'; 30_000];
    by_input.input(a, &bytes, later);
    assert!(direct.wants_direct_body(b));
    let mut loan = direct.lend_body(b).unwrap();
    let (buf, room) = loan.spare();
    assert!(room >= bytes.len());
    // Safety: `buf` has `room` bytes, and `bytes.len()` of them are written.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf, bytes.len());
        direct.return_body(b, loan, bytes.len(), later);
    }
    assert!(by_input.next_deadline().is_some(), "input schedules the upkeep");
    assert_eq!(by_input.next_deadline(), direct.next_deadline());
}
