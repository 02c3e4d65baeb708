//! Several shards in one thread, for tests: a [`Cluster`] of N [`Shard`]s
//! whose messages a seeded scheduler delivers in random per-pair-FIFO order
//! after random delays, with a clock driven by hand; and the model test,
//! which runs random multi-client histories through four shards and
//! through one, and asserts the same reply bytes on every connection and
//! the same final state.
//!
//! A history runs one client's input (one or a few pipelined commands), a
//! half-close, or a clock step at a time, and lets the cluster settle (every
//! message delivered) before the next: one server answers each input
//! before it reads the next, so that is what the two must agree on. Within
//! a step everything may interleave: fan-outs, tries of an id on every
//! shard, the rounds of a reserve across shards, takedowns, answers to
//! waiters on other cores.
//!
//! `cargo test` runs [`SEEDS_DEFAULT`] seeds; `RUNNERBEAN_CLUSTER_SEEDS=n`
//! runs `n`, `RUNNERBEAN_CLUSTER_SEED=s` replays one (a failure prints its
//! seed and the steps before it), `RUNNERBEAN_CLUSTER_STEPS` sets the
//! length of a history.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};

use super::spread::Message;
use super::*;
use crate::engine::directory::Directory;
use crate::engine::{IdSource, NANOS_PER_SEC};
use crate::shard::route::ShardId;
use crate::shard::spanning::sim::Rng;

const S: Nanos = NANOS_PER_SEC;
/// How far apart the instants of two steps of a history are, beyond whole
/// half seconds (see `Pair::advance`).
const STEP_NS: Nanos = 100_000;
/// How far past a timer the clock stops for it: far more than the
/// nanoseconds by which the two servers' clocks drift apart within a step
/// (one per command), far less than [`STEP_NS`].
const STOP_NS: Nanos = 1_000;
const SEEDS_DEFAULT: u64 = 40;
const STEPS_DEFAULT: usize = 300;
/// Steps of the scheduler a message may wait before it can be delivered.
const DELAY_STEPS_MAX: u64 = 4;

/// `-z` in the model test: small, so that a body too big is cheap to send.
const JOB_BYTES_MAX: usize = 100;

pub(super) fn info() -> ServerInfo {
    ServerInfo { extra: vec![], ..super::tests::info(JOB_BYTES_MAX as u64) }
}

/// N shards in one thread, with a seeded scheduler between them.
pub(super) struct Cluster {
    pub shards: Vec<Shard>,
    rng: Rng,
    /// Messages in flight, per ordered pair `from * n + to`, each with the
    /// scheduler step from which it may be delivered and the sender's
    /// clock when it left.
    rings: Vec<VecDeque<(u64, Nanos, Message)>>,
    step: u64,
    pub seen: Seen,
}

/// What the deliveries of a run held, so that a run that never exercised
/// a path says so.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Seen {
    pub messages: u64,
    pub probes: u64,
    pub takes: u64,
    pub served: u64,
    pub id_not_found: u64,
    pub leaves: u64,
    pub stats: u64,
    pub remote_waits: u64,
    pub pipelined: u64,
    /// Messages carrying several requests or several replies.
    pub batches: u64,
}

impl Seen {
    fn add(&mut self, o: &Seen) {
        self.messages += o.messages;
        self.probes += o.probes;
        self.takes += o.takes;
        self.served += o.served;
        self.id_not_found += o.id_not_found;
        self.leaves += o.leaves;
        self.stats += o.stats;
        self.remote_waits += o.remote_waits;
        self.pipelined += o.pipelined;
        self.batches += o.batches;
    }

    fn note(&mut self, msg: &Message) {
        use super::spanning::{SpanAnswer, SpanRequest};
        use super::spread::{Answer, Ask, Order};
        self.messages += 1;
        match msg {
            Message::Ask { ask: Ask::Span(SpanRequest::Probe { .. }), .. } => self.probes += 1,
            Message::Ask { ask: Ask::Span(SpanRequest::Take { .. }), .. } => self.takes += 1,
            Message::Ask { ask: Ask::Leave(_), .. } => self.leaves += 1,
            Message::Ask { ask: Ask::Run(Order::Stats), .. } => self.stats += 1,
            Message::Answer { answer: Answer::Span(SpanAnswer::Served { .. }), .. } => self.served += 1,
            Message::Answer { answer: Answer::Wake { .. }, .. } => self.remote_waits += 1,
            Message::Answer { answer: Answer::Reply { reply: Reply::Word(request::Word::NotFound), .. }, .. } => {
                self.id_not_found += 1
            }
            Message::Answer { answer: Answer::Replies(replies), .. } => {
                self.batches += 1;
                let not_found = replies.iter().filter(|(r, _)| matches!(r, Reply::Word(request::Word::NotFound)));
                self.id_not_found += not_found.count() as u64;
            }
            Message::Ask { ask: Ask::Runs(_), .. } => self.batches += 1,
            _ => {}
        }
    }
}

impl Cluster {
    pub fn new(n: u32, seed: u64) -> Cluster {
        let (ids, directory) = (IdSource::default(), Directory::default());
        let shards = (0..n)
            .map(|i| {
                let config = EngineConfig { shard: i, shards: n };
                Shard::new_spread(config, ids.clone(), directory.clone(), info())
            })
            .collect();
        let rings = (0..n * n).map(|_| VecDeque::new()).collect();
        Cluster { shards, rng: Rng(seed ^ 0x5eed), rings, step: 0, seen: Seen::default() }
    }

    fn n(&self) -> usize {
        self.shards.len()
    }

    /// Takes every message that may leave into the rings, each with a
    /// random delay.
    fn collect(&mut self) {
        let n = self.n();
        let mut taken = Vec::new();
        for from in 0..n {
            for to in 0..n {
                let sent_at = self.shards[from].take_outbox(ShardId(to as u32), &mut taken, usize::MAX);
                for msg in taken.drain(..) {
                    let due = self.step + self.rng.below(DELAY_STEPS_MAX + 1);
                    self.rings[from * n + to].push_back((due, sent_at, msg));
                }
            }
        }
    }

    /// Delivers messages until none is left anywhere, in a random order
    /// that keeps each pair's FIFO, at `now`.
    pub fn settle(&mut self, now: Nanos) {
        let n = self.n();
        loop {
            for shard in &mut self.shards {
                while shard.has_carried() {
                    shard.begin_turn();
                    shard.run_carried(now);
                }
            }
            self.collect();
            if self.rings.iter().all(VecDeque::is_empty) {
                return;
            }
            let ready: Vec<usize> =
                (0..n * n).filter(|&r| self.rings[r].front().is_some_and(|(due, _, _)| *due <= self.step)).collect();
            self.step += 1;
            if ready.is_empty() {
                continue;
            }
            let r = *self.rng.pick(&ready);
            // Sometimes several of the ring's ready messages at once, as a
            // loop turn takes what its rings hold (see `net::cores::exchange`).
            let batch = 1 + self.rng.below(3u64);
            let to = r % n;
            self.shards[to].begin_deliveries(now);
            for _ in 0..batch {
                let Some((due, _, _)) = self.rings[r].front() else { break };
                if *due > self.step {
                    break;
                }
                let (_, sent_at, msg) = self.rings[r].pop_front().expect("a ready ring");
                self.seen.note(&msg);
                self.shards[to].deliver_in_batch(ShardId((r / n) as u32), msg, now.max(sent_at));
            }
            self.shards[to].end_deliveries();
        }
    }

    /// The clock reached `now`: every shard's engine timers first, their
    /// answers delivered, then the sessions' timers (spanning reserves).
    /// One beanstalkd hands out the jobs its tick makes ready before it
    /// times out waiting connections; with several shards ticking late
    /// (the clock here jumps by seconds) the same order needs the jobs'
    /// answers in before any session decides on time.
    pub fn tick(&mut self, now: Nanos) {
        for shard in &mut self.shards {
            shard.tick_engine(now);
        }
        self.settle(now);
        for shard in &mut self.shards {
            shard.tick(now);
        }
        self.settle(now);
    }
}

/// Everything a connection was sent since the last call, as the network
/// would write it.
pub(super) fn take_out(shard: &mut Shard, conn: ConnId) -> Vec<u8> {
    let mut segments = Vec::new();
    shard.start_send(conn, &mut segments);
    shard.sent(conn, 0);
    segments.iter().flat_map(|s| s.bytes().to_vec()).collect()
}

/// One client of the model test: its connection on the single shard, and
/// its core and connection in the cluster.
struct Client {
    single: ConnId,
    core: usize,
    far: ConnId,
    open: bool,
    /// Its connections are forgotten (`Shard::remove`), and their slots
    /// free for new ones.
    removed: bool,
}

/// The two servers under comparison.
struct Pair {
    single: Shard,
    cluster: Cluster,
    clients: Vec<Client>,
    now: Nanos,
    trace: Vec<String>,
    draining: bool,
}

const TUBES: [&str; 7] = ["default", "t0", "t1", "t2", "t3", "t4", "t5"];

impl Pair {
    fn new(seed: u64) -> Pair {
        Pair {
            single: Shard::new(EngineConfig::default(), info()),
            cluster: Cluster::new(4, seed),
            clients: Vec::new(),
            now: 1000 * S,
            trace: Vec::new(),
            draining: false,
        }
    }

    /// The next step's instant (see `advance`).
    fn step_clock(&mut self) {
        self.now = self.now / STEP_NS * STEP_NS + STEP_NS;
    }

    fn open(&mut self, core: usize) -> usize {
        self.step_clock();
        let single = self.single.open(0).expect("memory");
        let far = self.cluster.shards[core].open(0).expect("memory");
        self.cluster.settle(self.now);
        self.clients.push(Client { single, core, far, open: true, removed: false });
        self.trace.push(format!("open client {} on core {core}", self.clients.len() - 1));
        self.clients.len() - 1
    }

    fn send(&mut self, c: usize, bytes: &[u8]) {
        self.step_clock();
        self.trace.push(format!("client {c}: {:?}", String::from_utf8_lossy(bytes)));
        let now = self.now;
        let client = &self.clients[c];
        self.single.input(client.single, bytes, now);
        while self.single.has_carried() {
            self.single.begin_turn();
            self.single.run_carried(now);
        }
        self.cluster.shards[client.core].input(client.far, bytes, now);
        self.cluster.settle(now);
        self.due_timers();
        self.compare();
    }

    /// Timers already due fire at once, as the network's loop, which
    /// sleeps no later than `next_deadline`, runs them: one engine lets a
    /// reserve wait whose DEADLINE_SOON is already due (only paused tubes
    /// have jobs), and answers it at its next tick.
    fn due_timers(&mut self) {
        let now = self.now;
        if self.single.next_deadline().is_some_and(|d| d <= now) {
            self.single.tick(now);
        }
        if self.cluster.shards.iter().any(|s| s.next_deadline().is_some_and(|d| d <= now)) {
            self.cluster.tick(now);
        }
    }

    fn eof(&mut self, c: usize) {
        self.step_clock();
        self.trace.push(format!("client {c}: eof"));
        let now = self.now;
        let client = &mut self.clients[c];
        client.open = false;
        self.single.eof(client.single, now);
        self.cluster.shards[client.core].eof(client.far, now);
        self.cluster.settle(now);
        self.due_timers();
        self.compare();
    }

    /// The clock moves on by `by` (whole half seconds), stopping at every
    /// timer on the way as an event loop that wakes on time does, so that
    /// what falls due at different instants happens in that order on both
    /// (a tick that comes late, past several timers, leaves one engine to
    /// order them and several shards to order them per shard).
    ///
    /// The same command can run a few nanoseconds apart on the two servers:
    /// each shard steps its own clock once per command. That must never
    /// decide anything, and every limit of the protocol (TTRs, delays,
    /// timeouts, the margin) is whole seconds: so no two instants of a
    /// history may lie a whole number of seconds apart within those
    /// nanoseconds. Each step runs at an instant of its own, [`STEP_NS`]
    /// past the one before beyond half seconds (`step_clock`); the clock
    /// stops [`STOP_NS`] past each timer (a timer is whole seconds and a
    /// few nanoseconds after some instant), so a stop lies `k * STOP_NS`
    /// past some step's instant, for the few `k` of a chain of timers,
    /// and never on another step's.
    fn advance(&mut self, by: Nanos) {
        self.trace.push(format!("clock +{by} ns"));
        let end = (self.now + by) / STEP_NS * STEP_NS + STEP_NS;
        loop {
            let next = std::iter::once(self.single.next_deadline())
                .chain(self.cluster.shards.iter().map(Shard::next_deadline))
                .flatten()
                .min();
            let Some(at) = next.map(|at| (at / STOP_NS + 1) * STOP_NS).filter(|&at| at < end) else { break };
            self.now = self.now.max(at);
            self.single.tick(self.now);
            self.cluster.tick(self.now);
            self.compare();
            if next.is_some_and(|n| n >= self.now) {
                break;
            }
        }
        self.now = end;
        self.single.tick(self.now);
        self.cluster.tick(self.now);
        self.compare();
    }

    fn drain(&mut self) {
        self.trace.push("drain".into());
        self.draining = true;
        self.single.set_draining();
        for shard in &mut self.cluster.shards {
            shard.set_draining();
        }
    }

    /// Whether the client waits in a reserve (as one shard sees it).
    fn blocked(&self, c: usize) -> bool {
        self.single.sessions[self.clients[c].single.0 as usize].blocked
    }

    /// Every connection got the same bytes from both.
    fn compare(&mut self) {
        for (i, client) in self.clients.iter_mut().enumerate() {
            if client.removed {
                continue;
            }
            let a = take_out(&mut self.single, client.single);
            let b = take_out(&mut self.cluster.shards[client.core], client.far);
            if a != b {
                let held = self.cluster.shards[client.core].far_holdings(client.far);
                panic!(
                    "client {i} differs:\n  one shard: {:?}\n  4 shards:  {:?}\n  its reservations: {held}",
                    String::from_utf8_lossy(&a),
                    String::from_utf8_lossy(&b)
                );
            }
            // A closed connection with nothing left to write goes, as the
            // network forgets it, so that its slot serves a new one while
            // the shards may still be taking the old one down.
            let far = &mut self.cluster.shards[client.core];
            if self.single.finished(client.single) && far.finished(client.far) {
                self.single.remove(client.single);
                far.remove(client.far);
                client.removed = true;
            }
        }
        self.single.engine().check_invariants(self.now);
        for shard in &self.cluster.shards {
            shard.engine().check_invariants(self.now);
        }
    }
}

/// A random command line (with its body, for a put).
fn command(rng: &mut Rng, ids: u64) -> String {
    let tube = *rng.pick(&TUBES);
    let id = 1 + rng.below(ids + 2);
    match rng.below(33) {
        0..=5 => {
            let body = "x".repeat(1 + rng.below(3) as usize);
            let delay = *rng.pick(&[0, 0, 0, 1, 3]);
            let ttr = *rng.pick(&[1, 2, 5, 30]);
            format!("put {} {delay} {ttr} {}\r\n{body}\r\n", rng.below(3), body.len())
        }
        6 => format!("use {tube}\r\n"),
        7 | 8 => format!("watch {tube}\r\n"),
        9 => format!("ignore {tube}\r\n"),
        10 | 11 => format!("reserve-with-timeout {}\r\n", rng.pick(&[0, 0, 1, 2, 5])),
        12 => "reserve\r\n".into(),
        13 => format!("delete {id}\r\n"),
        14 => format!("release {id} {} {}\r\n", rng.below(3), rng.pick(&[0, 0, 1])),
        15 => format!("bury {id} {}\r\n", rng.below(3)),
        16 => format!("touch {id}\r\n"),
        17 => format!("kick-job {id}\r\n"),
        18 => format!("peek {id}\r\n"),
        19 => format!("stats-job {id}\r\n"),
        20 => format!("reserve-job {id}\r\n"),
        21 => format!("kick {}\r\n", 1 + rng.below(3)),
        22 => (*rng.pick(&["peek-ready\r\n", "peek-delayed\r\n", "peek-buried\r\n"])).into(),
        23 => format!("stats-tube {tube}\r\n"),
        24 => format!("pause-tube {tube} {}\r\n", rng.pick(&[0, 1, 2])),
        25 => "list-tubes\r\n".into(),
        26 => (*rng.pick(&["list-tubes-watched\r\n", "list-tube-used\r\n"])).into(),
        27 => "stats\r\n".into(),
        28 => format!("clear-tube {tube} buried\r\n"),
        29 => format!("list-jobs {tube} ready 0 10\r\n"),
        // What the session answers itself: a body too big (thrown away,
        // then JOB_TOO_BIG), a body without its CRLF, lines that fail.
        30 => format!("put 0 0 1 {}\r\n{}\r\n", JOB_BYTES_MAX + 1, "y".repeat(JOB_BYTES_MAX + 1)),
        31 => "put 0 0 1 1\r\nxy\r\n".into(),
        _ => (*rng.pick(&["frobnicate\r\n", "put x\r\n", "delete\r\n"])).into(),
    }
}

fn history(seed: u64, steps: usize, pair: &mut Pair) {
    let mut rng = Rng(seed);
    let mut puts = 0u64;
    for _ in 0..4 {
        let core = rng.below(4) as usize;
        pair.open(core);
    }
    for _ in 0..steps {
        match rng.below(20) {
            0..=14 => {
                // A client blocked in a reserve is sent nothing, and a
                // reserve ends its input: commands pipelined behind a wait
                // run when another client's command serves it, and whether
                // that is before or after that client's next command is a
                // race with several shards (one shard runs them after the
                // whole of the serving client's input).
                let idle: Vec<usize> =
                    (0..pair.clients.len()).filter(|&c| pair.clients[c].open && !pair.blocked(c)).collect();
                if idle.is_empty() {
                    continue;
                }
                let c = *rng.pick(&idle);
                let mut input = String::new();
                for _ in 0..1 + rng.below(3) {
                    let line = command(&mut rng, puts);
                    puts += u64::from(line.starts_with("put"));
                    input.push_str(&line);
                    if line.starts_with("reserve") {
                        break;
                    }
                }
                pair.send(c, input.as_bytes());
            }
            15 | 16 => {
                let by = rng.below(6) * S / 2;
                pair.advance(by);
            }
            17 => {
                let open: Vec<usize> = (0..pair.clients.len()).filter(|&c| pair.clients[c].open).collect();
                if open.len() > 1 {
                    pair.eof(*rng.pick(&open));
                }
            }
            // Drain mode (SIGUSR1 reaches every core), late in a history
            // so that most of it runs with puts taken.
            18 if !pair.draining && rng.below(steps as u64) < 2 => pair.drain(),
            _ => {
                if pair.clients.len() < 12 {
                    let core = rng.below(4) as usize;
                    pair.open(core);
                }
            }
        }
    }
    // The final state, through a fresh connection of each.
    pair.trace.push("final state".into());
    let admin = pair.open(0);
    let mut state = String::from("stats\r\nlist-tubes\r\n");
    for tube in TUBES {
        state.push_str(&format!("stats-tube {tube}\r\n"));
    }
    pair.send(admin, state.as_bytes());
    for c in 0..pair.clients.len() {
        if pair.clients[c].open {
            pair.eof(c);
        }
    }
    pair.send_stats_after_close();
}

impl Pair {
    /// `stats` once every connection has gone: what the takedowns left.
    fn send_stats_after_close(&mut self) {
        let admin = self.open(1);
        self.send(admin, b"stats\r\nlist-tubes\r\nstats-tube default\r\n");
    }
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn four_shards_answer_as_one() {
    let steps = env_number("RUNNERBEAN_CLUSTER_STEPS").map_or(STEPS_DEFAULT, |s| s as usize);
    let seeds: Vec<u64> = match env_number("RUNNERBEAN_CLUSTER_SEED") {
        Some(seed) => vec![seed],
        None => (0..env_number("RUNNERBEAN_CLUSTER_SEEDS").unwrap_or(SEEDS_DEFAULT)).collect(),
    };
    let mut seen = Seen::default();
    for seed in seeds {
        let mut pair = Pair::new(seed);
        let result = catch_unwind(AssertUnwindSafe(|| history(seed, steps, &mut pair)));
        if let Err(panic) = result {
            let from = pair.trace.len().saturating_sub(env_number("RUNNERBEAN_CLUSTER_TRACE").unwrap_or(30) as usize);
            eprintln!("last steps of seed {seed}:\n{}", pair.trace[from..].join("\n"));
            let why =
                panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
            panic!("seed {seed} failed (replay: RUNNERBEAN_CLUSTER_SEED={seed}): {}", why.unwrap_or_default());
        }
        seen.add(&pair.cluster.seen);
        seen.pipelined += pair.cluster.shards.iter().map(Shard::pipelined).sum::<u64>();
    }
    // The histories did take every path between shards.
    eprintln!("{seen:#?}");
    let Seen { messages, probes, takes, served, id_not_found, leaves, stats, remote_waits, pipelined, batches } = seen;
    for (what, n) in [
        ("messages", messages),
        ("probes", probes),
        ("takes", takes),
        ("spanning waits served", served),
        ("NOT_FOUND from a shard", id_not_found),
        ("takedown steps", leaves),
        ("stats parts", stats),
        ("ordinary waits answered remotely", remote_waits),
        ("commands pipelined to a busy shard", pipelined),
        ("requests or replies sent together", batches),
    ] {
        assert!(n > 0, "no {what} in the runs");
    }
}

/// With the log, a change made on another shard is acknowledged only once
/// the owner's batch holding its record is durable: the owner holds the
/// reply, and what follows it to the same core, in its outbox.
#[test]
fn a_remote_change_is_answered_once_the_owners_log_is_durable() {
    use crate::wal::log::{Log, LogConfig, SyncPolicy};
    use crate::wal::recover::Recovered;
    use crate::wal::tests::MemFiles;
    let now = 1000 * S;
    let mut c = Cluster::new(2, 7);
    // `default` lives on shard 0; the connection is on core 1.
    assert_eq!(route::shard_of_tube("default", 2), ShardId(0));
    let files = MemFiles::default();
    let config = LogConfig { shard: 0, shards: 2, segment_bytes: 1 << 20, sync: SyncPolicy::Always };
    let log = Log::open(config, Box::new(files.clone()), &Recovered::default(), now).unwrap();
    c.shards[0].engine_mut().attach_log(log);
    let a = c.shards[1].open(0).unwrap();
    c.settle(now);
    let flush = |c: &mut Cluster| {
        let log = c.shards[0].engine_mut().log_mut().unwrap();
        let batch = log.take_batch().unwrap();
        files.apply(&batch);
        log.written(batch.number);
        log.synced(batch.number);
        let durable = log.durable();
        c.shards[0].durable(durable);
    };
    c.shards[1].input(a, b"put 0 0 60 1\r\nx\r\n", now);
    c.settle(now);
    assert_eq!(take_out(&mut c.shards[1], a), b"", "held until the put's record is durable");
    assert!(!c.shards[0].has_outbox(), "the reply waits in the owner's outbox");
    flush(&mut c);
    c.settle(now);
    assert_eq!(take_out(&mut c.shards[1], a), b"INSERTED 1\r\n");
    // Nothing recorded, nothing to wait for.
    c.shards[1].input(a, b"peek 1\r\n", now);
    c.settle(now);
    assert_eq!(take_out(&mut c.shards[1], a), b"FOUND 1 1\r\nx\r\n");
}

/// A watch list over two shards gets the best job of both, and an id the
/// connection never saw is found on whichever shard has it.
#[test]
fn a_reserve_over_two_shards_takes_the_best_of_both() {
    let now = 1000 * S;
    let mut c = Cluster::new(2, 3);
    // `a` lives on shard 0 and `b` on shard 1.
    assert_eq!((route::shard_of_tube("a", 2), route::shard_of_tube("b", 2)), (ShardId(0), ShardId(1)));
    let p = c.shards[0].open(0).unwrap();
    let w = c.shards[1].open(0).unwrap();
    let ask = |c: &mut Cluster, core: usize, conn: ConnId, bytes: &[u8]| {
        c.shards[core].input(conn, bytes, now);
        c.settle(now);
        String::from_utf8(take_out(&mut c.shards[core], conn)).unwrap()
    };
    assert_eq!(
        ask(&mut c, 0, p, b"use a\r\nput 5 0 60 2\r\naa\r\nuse b\r\nput 1 0 60 2\r\nbb\r\n"),
        "USING a\r\nINSERTED 1\r\nUSING b\r\nINSERTED 2\r\n"
    );
    assert_eq!(
        ask(&mut c, 1, w, b"watch a\r\nwatch b\r\nignore default\r\n"),
        "WATCHING 2\r\nWATCHING 3\r\nWATCHING 2\r\n"
    );
    assert_eq!(ask(&mut c, 1, w, b"reserve-with-timeout 0\r\n"), "RESERVED 2 2\r\nbb\r\n");
    assert_eq!(ask(&mut c, 1, w, b"reserve-with-timeout 0\r\n"), "RESERVED 1 2\r\naa\r\n");
    assert_eq!(ask(&mut c, 1, w, b"reserve-with-timeout 0\r\n"), "TIMED_OUT\r\n");
    // The producer never saw its jobs reserved: its commands on them try
    // every shard in turn, and NOT_FOUND comes only from all of them.
    assert_eq!(ask(&mut c, 0, p, b"stats-job 1\r\ndelete 1\r\ndelete 9\r\n").lines().last(), Some("NOT_FOUND"));
    assert_eq!(ask(&mut c, 1, w, b"delete 1\r\ndelete 2\r\n"), "DELETED\r\nDELETED\r\n");
    assert_eq!(
        ask(&mut c, 0, p, b"list-tubes\r\n"),
        "OK 22\r\n---\n- default\n- a\n- b\n\r\n",
        "creation order across shards"
    );
}

/// Commands for the shard a connection waits on go out behind the ones in
/// flight; one for another shard, or one the session answers itself, waits
/// for their replies. Every reply leaves in command order.
#[test]
fn commands_pipeline_to_the_busy_shard_and_answer_in_order() {
    let now = 1000 * S;
    let mut c = Cluster::new(2, 5);
    let conn = c.shards[0].open(0).unwrap();
    c.settle(now);
    // `b` lives on shard 1, `default` on shard 0. The second put's body
    // lacks its CRLF: `z\r` is its trailer, and the `\n` starts the next
    // line, which is then no command.
    let input = b"use b\r\nput 0 0 60 1\r\nx\r\nput 0 0 60 1\r\nyz\r\npeek-ready\r\nlist-tube-used\r\nput 0 0 60 1\r\nw\r\npeek-ready\r\n";
    c.shards[0].input(conn, input, now);
    c.settle(now);
    assert_eq!(
        String::from_utf8(take_out(&mut c.shards[0], conn)).unwrap(),
        "USING b\r\nINSERTED 1\r\nEXPECTED_CRLF\r\nUNKNOWN_COMMAND\r\nUSING b\r\nINSERTED 3\r\nFOUND 1 1\r\nx\r\n"
    );
    // The second put was taken in behind the first (its EXPECTED_CRLF held
    // in turn); the lines the session answers itself waited for the reply
    // owed; the last peek went out behind the last put: one request sent
    // while another was in flight.
    assert_eq!(c.shards[0].pipelined(), 1);
}

/// A batch of answers from another shard finishes a command per reply;
/// the session is then run once for the batch, not once per reply.
#[test]
fn a_batch_of_answers_runs_its_session_once() {
    let now = 1000 * S;
    let mut c = Cluster::new(2, 15);
    assert_eq!(route::shard_of_tube("b", 2), ShardId(1));
    let conn = c.shards[0].open(0).unwrap();
    c.shards[0].input(conn, b"use b\r\n", now);
    c.settle(now);
    assert_eq!(take_out(&mut c.shards[0], conn), b"USING b\r\n");
    let puts = "put 0 0 60 1\r\nx\r\n".repeat(16);
    let runs = c.shards[0].queued_runs();
    c.shards[0].input(conn, puts.as_bytes(), now);
    c.settle(now);
    let expected: String = (1..=16).map(|id| format!("INSERTED {id}\r\n")).collect();
    assert_eq!(String::from_utf8(take_out(&mut c.shards[0], conn)).unwrap(), expected);
    assert_eq!(c.shards[0].pipelined(), 15, "the puts went out behind the first");
    assert_eq!(c.shards[0].queued_runs() - runs, 1, "one run for the one batch of answers");
}

/// A batch of requests from a session the owner has no proxy for, when
/// the proxy cannot be made, is refused order by order: each gets its
/// OUT_OF_MEMORY, in order, so the session is not left waiting.
#[test]
fn a_batch_refused_for_want_of_memory_answers_every_order() {
    use super::spread::{Answer, Ask, Order, Origin};
    let now = 1000 * S;
    let mut c = Cluster::new(2, 17);
    let from = Origin { core: ShardId(0), conn: 0, serial: 1 << 40 };
    let ask = Ask::Runs(vec![Order::PeekReady, Order::Kick(1), Order::PeekBuried]);
    crate::memory::fail_for_test(0, 2);
    c.shards[1].deliver(ShardId(0), Message::Ask { from, ask }, now);
    crate::memory::fail_for_test(0, 0);
    let mut out = Vec::new();
    c.shards[1].take_outbox(ShardId(0), &mut out, usize::MAX);
    let replies: Vec<String> = out
        .iter()
        .flat_map(|msg| match msg {
            Message::Answer { to, client: None, answer: Answer::Reply { reply, .. } } if *to == from => {
                vec![format!("{reply:?}")]
            }
            Message::Answer { to, client: None, answer: Answer::Replies(list) } if *to == from => {
                list.iter().map(|(reply, _)| format!("{reply:?}")).collect()
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    let oom = format!("{:?}", Reply::from(Word::OutOfMemory));
    assert_eq!(replies, vec![oom.clone(), oom.clone(), oom]);
}

/// A worker draining one tube of another shard keeps its non-blocking
/// reserves in flight, and the deletes of what they reserved behind them;
/// once it holds a job on another shard, a reserve goes on its own.
#[test]
fn reserves_with_timeout_0_pipeline_to_the_one_shard_they_need() {
    let now = 1000 * S;
    let mut c = Cluster::new(2, 9);
    assert_eq!((route::shard_of_tube("a", 2), route::shard_of_tube("b", 2)), (ShardId(0), ShardId(1)));
    let p = c.shards[0].open(0).unwrap();
    let w = c.shards[0].open(0).unwrap();
    let ask = |c: &mut Cluster, conn: ConnId, bytes: &[u8]| {
        c.shards[0].input(conn, bytes, now);
        c.settle(now);
        String::from_utf8(take_out(&mut c.shards[0], conn)).unwrap()
    };
    ask(&mut c, p, b"use b\r\nput 0 0 60 1\r\nx\r\nput 0 0 60 1\r\ny\r\nuse a\r\nput 0 0 60 1\r\nz\r\n");
    assert_eq!(ask(&mut c, w, b"watch b\r\nignore default\r\n"), "WATCHING 2\r\nWATCHING 1\r\n");
    let before = c.shards[0].pipelined();
    assert_eq!(
        ask(&mut c, w, b"reserve-with-timeout 0\r\nreserve-with-timeout 0\r\nreserve-with-timeout 0\r\n"),
        "RESERVED 1 1\r\nx\r\nRESERVED 2 1\r\ny\r\nTIMED_OUT\r\n"
    );
    assert_eq!(c.shards[0].pipelined() - before, 2, "the second and third went out behind the first");
    let before = c.shards[0].pipelined();
    assert_eq!(ask(&mut c, w, b"delete 1\r\nrelease 2 0 0\r\n"), "DELETED\r\nRELEASED\r\n");
    assert_eq!(c.shards[0].pipelined() - before, 1);
    // Holding a job of `a` (shard 0) makes the watch of `b` a reserve that
    // must weigh both shards' deadlines: it is not pipelined.
    assert_eq!(
        ask(&mut c, w, b"watch a\r\nreserve-with-timeout 0\r\nignore a\r\n"),
        "WATCHING 2\r\nRESERVED 2 1\r\ny\r\nWATCHING 1\r\n"
    );
    assert_eq!(
        ask(&mut c, w, b"watch a\r\nreserve-with-timeout 0\r\nignore a\r\n"),
        "WATCHING 2\r\nRESERVED 3 1\r\nz\r\nWATCHING 1\r\n"
    );
    let before = c.shards[0].pipelined();
    assert_eq!(
        ask(&mut c, w, b"delete 2\r\nreserve-with-timeout 0\r\nreserve-with-timeout 0\r\n"),
        "DELETED\r\nTIMED_OUT\r\nTIMED_OUT\r\n"
    );
    assert_eq!(c.shards[0].pipelined() - before, 0, "a reservation on shard 0 keeps each reserve alone");
}

/// A connection that sent `quit` is closing when its end of stream comes:
/// nothing more happens to it, on any shard, and its takedown completes.
#[test]
fn end_of_stream_after_quit_is_nothing_more() {
    let now = 1000 * S;
    let mut c = Cluster::new(2, 11);
    let conn = c.shards[1].open(0).unwrap();
    c.settle(now);
    c.shards[1].input(conn, b"quit\r\n", now);
    c.shards[1].eof(conn, now);
    c.settle(now);
    assert!(c.shards[1].finished(conn), "the connection is done");
    assert!(c.shards.iter().all(Shard::peers_quiet), "the takedown completed");
}

/// A stop (SIGTERM) finds a command in flight to another shard: it runs
/// there, and its reply is written before the connection closes, as with
/// one shard, where every command that ran has its reply out; the input
/// behind it never runs.
#[test]
fn a_stop_writes_the_reply_of_a_command_in_flight_on_another_shard() {
    let now = 1000 * S;
    let mut c = Cluster::new(2, 13);
    assert_eq!((route::shard_of_tube("a", 2), route::shard_of_tube("b", 2)), (ShardId(0), ShardId(1)));
    let conn = c.shards[0].open(0).unwrap();
    c.settle(now);
    c.shards[0].input(conn, b"use b\r\nput 0 0 60 1\r\nx\r\n", now);
    c.settle(now);
    assert_eq!(String::from_utf8(take_out(&mut c.shards[0], conn)).unwrap(), "USING b\r\nINSERTED 1\r\n");
    // The delete goes to shard 1; `use a` (shard 0) waits behind it.
    c.shards[0].input(conn, b"delete 1\r\nuse a\r\n", now);
    c.shards[0].stop(conn, now);
    c.settle(now);
    assert_eq!(String::from_utf8(take_out(&mut c.shards[0], conn)).unwrap(), "DELETED\r\n");
    assert!(c.shards[0].finished(conn), "the connection is done");
    assert!(c.shards.iter().all(Shard::peers_quiet), "the takedown completed");
    let other = c.shards[1].open(0).unwrap();
    c.settle(now);
    c.shards[1].input(other, b"peek 1\r\nlist-tubes\r\n", now);
    c.settle(now);
    let out = String::from_utf8(take_out(&mut c.shards[1], other)).unwrap();
    assert!(out.starts_with("NOT_FOUND\r\nOK "), "{out}");
    assert!(!out.contains("- a\n"), "`use a` ran: {out}");
}
