//! A deterministic simulation of reserves across shards: `N` shards (an
//! engine each, as each core will have) and several sessions, joined by
//! one FIFO ring per ordered pair of cores, as the mailbox will join them.
//! A seeded scheduler picks every step: deliver the head of some ring
//! (messages therefore wait arbitrarily long and interleave in any order
//! across rings), a session's next command, a clock advance (the clock is
//! a number moved by hand), a shard's timers, a session's timer, a
//! disconnect (in the middle of anything, a wait included) or a reconnect.
//! Commands are random histories of puts into many tubes, reserves with
//! and without timeouts (0 included) over watch lists spanning shards,
//! deletes, releases, buries, touches, kicks, pauses, watches and ignores.
//!
//! After every step it checks:
//! * every engine's own invariants, and that the shard just stepped holds
//!   exactly the jobs a naive model says it does, each in the state and
//!   (reserved) with the holder and deadline the model says: no job lost,
//!   none duplicated, none reserved twice;
//! * that a job reserved for a reserve was, when it was reserved, the
//!   best `(pri, id)` ready job among the client's watched unpaused tubes
//!   on every shard: better than everything ready on the other shards, and
//!   than everything on its own shard that was ready before and after the
//!   step (a job that became ready within the step may have come after);
//! * that a waiter served a job of a tube had no older armed waiter of
//!   that tube still waiting (first come, first served);
//! * that TIMED_OUT and DEADLINE_SOON came only when due and with nothing
//!   ready for the client;
//! * that each reserve gets one answer, and no answer comes unasked.
//!
//! When the history ends, everything in flight is delivered and the
//! counters of all shards together (`current-jobs-*`, `total-jobs`,
//! `job-timeouts`, `cmd-reserve` counted once per reserve at the origin,
//! `current-waiting`, and every tube's figures) must equal the model's,
//! and each session's record of its reservations must be what the
//! engines hold for it.
//!
//! `cargo test` runs [`SEEDS_DEFAULT`] seeds; `RUNNERBEAN_SPAN_SEEDS=n`
//! runs `n`, `RUNNERBEAN_SPAN_SEED=s` replays one seed (a failure prints
//! its seed and the last steps), `RUNNERBEAN_SPAN_STEPS` sets the length
//! of a history.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};

use super::*;
use crate::engine::{Body, Change, ClaimState, EngineConfig, IdSource, NANOS_PER_SEC, Op, PutOutcome, Rank};
use crate::engine::{ReserveOutcome, Wake, secs};
use crate::shard::route::shard_of_tube;

const S: Nanos = NANOS_PER_SEC;
const MS: Nanos = 1_000_000;

/// Seeds run by `cargo test`: a few seconds in a debug build.
const SEEDS_DEFAULT: u64 = 120;
/// Steps in one history.
const STEPS_DEFAULT: usize = 500;
/// Tubes the sessions share; spread over the shards.
const TUBES: usize = 7;
/// Sessions alive at once (disconnected ones reconnect).
const SESSIONS: usize = 5;
/// Steps remembered for a failure's report.
const TRACE_STEPS: usize = 80;

/// How often the interesting paths were taken, over all seeds run: the
/// default run must take every one of them, or it would prove nothing.
#[derive(Debug, Default, Clone, Copy)]
struct Coverage {
    spanning_reserves: u64,
    single_reserves: u64,
    taken: u64,
    missed: u64,
    dirty_rounds: u64,
    armed: u64,
    served_spanning: u64,
    served_single: u64,
    timed_out_spanning: u64,
    deadline_soon_spanning: u64,
    claims_lost_to_a_shard: u64,
    disconnects_mid_wait: u64,
    answers_to_the_gone: u64,
    first_come_checks_with_older_waiters: u64,
    expiry_notices: u64,
}

thread_local! {
    static COVERAGE: RefCell<Coverage> = RefCell::new(Coverage::default());
    static TRACE: RefCell<VecDeque<String>> = const { RefCell::new(VecDeque::new()) };
}

fn cover(f: impl FnOnce(&mut Coverage)) {
    COVERAGE.with(|c| f(&mut c.borrow_mut()));
}

fn trace(line: String) {
    TRACE.with(|t| {
        let mut t = t.borrow_mut();
        if t.len() == TRACE_STEPS {
            t.pop_front();
        }
        t.push_back(line);
    });
}

/// splitmix64: small, seedable, and the same on every machine.
/// SplitMix64: a small seeded generator, shared by the simulations of
/// the shard layer (this one and `shard::cluster`).
pub(crate) struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n`, of `n`'s type.
    pub fn below<T>(&mut self, n: T) -> T
    where
        T: TryInto<u64> + TryFrom<u64>,
    {
        let n: u64 = n.try_into().ok().expect("a bound that fits in u64");
        T::try_from(self.next() % n).ok().expect("below the bound")
    }

    pub fn percent(&mut self, p: u64) -> bool {
        self.next() % 100 < p
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

// ----- what travels ---------------------------------------------------------

/// A command as a shard runs it for a session's proxy client.
#[derive(Debug)]
enum Cmd {
    Span(SpanRequest),
    Put {
        pri: u32,
        delay: u32,
        ttr: u32,
    },
    Use(usize),
    /// The used tube moved to another shard; no answer.
    Unuse,
    Watch(usize),
    Unwatch(usize),
    /// An ordinary reserve, on the one shard of the watch list.
    Reserve(Option<u32>),
    Delete(u64),
    Release {
        id: u64,
        pri: u32,
        delay: u32,
    },
    Bury {
        id: u64,
        pri: u32,
    },
    Touch(u64),
    Kick(u32),
    KickJob(u64),
    Pause(usize, u32),
    Disconnect,
}

#[derive(Debug)]
enum Reply {
    Inserted(u64),
    Done(bool),
    Touched(Option<Nanos>),
    Kicked,
    Reserved { id: u64, deadline: Nanos },
    Waiting,
    TimedOut,
    DeadlineSoon,
}

#[derive(Debug)]
enum Answer {
    Span(SpanAnswer),
    Reply(Reply),
}

#[derive(Debug)]
enum Msg {
    ToShard { session: usize, life: u32, client: ClientId, cmd: Cmd },
    ToSession { session: usize, life: u32, shard: usize, answer: Answer },
}

// ----- sessions -------------------------------------------------------------

#[derive(Debug)]
enum How {
    Single { shard: usize },
    Span(SpanReserve),
}

#[derive(Debug)]
struct Reserving {
    number: u64,
    sent_at: Nanos,
    timeout: Option<u32>,
    how: How,
}

#[derive(Debug)]
enum Pending {
    Idle,
    /// A command whose one answer is awaited; the job it is about, if any.
    Cmd(&'static str, Option<u64>),
    Reserve(Reserving),
}

struct Sess {
    life: u32,
    alive: bool,
    /// The core the session lives on.
    home: usize,
    /// Its proxy client on each shard.
    proxies: Vec<ClientId>,
    used: usize,
    watched: Vec<usize>,
    holdings: Holdings,
    span: SpanSession,
    /// Jobs it put, with their shard.
    known: Vec<(u64, usize)>,
    pending: Pending,
    reserves: u64,
}

// ----- the model ------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MState {
    Ready,
    Delayed(Nanos),
    Reserved { session: usize, life: u32, deadline: Nanos },
    Buried(u64),
}

#[derive(Clone, Copy, Debug)]
struct MJob {
    tube: usize,
    pri: u32,
    ttr: u32,
    state: MState,
}

#[derive(Clone, Debug, Default)]
struct MTube {
    total_jobs: u64,
    deletes: u64,
    pauses: u64,
    /// Seconds and end of the pause.
    pause: Option<(u32, Nanos)>,
    using: u64,
    watching: u64,
}

/// What the shards together must hold, kept with plain maps from what the
/// shards were asked and answered, and from the clock.
#[derive(Default)]
struct Model {
    jobs: BTreeMap<u64, MJob>,
    tubes: Vec<MTube>,
    bury_seq: u64,
    cmd_reserve: u64,
    cmd_reserve_with_timeout: u64,
    total_jobs: u64,
    job_timeouts: u64,
    /// Each live proxy client's used tube and watched tubes, by session,
    /// generation and shard.
    proxies: HashMap<(usize, u32, usize), ProxyTubes>,
}

/// A proxy client's used tube (when on its shard) and watched tubes.
type ProxyTubes = (Option<usize>, Vec<usize>);

/// A waiter's place in a tube's queue, for the first come, first served
/// check: the order in which shards registered waits.
#[derive(Clone, Copy, Debug)]
struct Reg {
    shard: usize,
    tube: usize,
    order: u64,
    session: usize,
    life: u32,
    number: u64,
}

/// A reservation made in a shard step, for the checks.
#[derive(Clone, Copy, Debug)]
struct Got {
    session: usize,
    life: u32,
    id: u64,
    /// Served to a waiter (not an immediate reserve or take).
    waited: bool,
    /// The model has followed it.
    applied: bool,
}

struct Host {
    engine: Engine,
    /// The time of the shard's last step: its state is as of then.
    now: Nanos,
    /// Proxy client → session and generation.
    owner: HashMap<ClientId, (usize, u32)>,
    /// The last spanning wait each proxy registered.
    last_wait: HashMap<ClientId, u64>,
}

struct World {
    rng: Rng,
    now: Nanos,
    n: usize,
    names: Vec<String>,
    /// Each tube's shard.
    home_of: Vec<usize>,
    hosts: Vec<Host>,
    sessions: Vec<Sess>,
    /// One ring per ordered pair of cores, `from * n + to`.
    rings: Vec<VecDeque<Msg>>,
    model: Model,
    regs: Vec<Reg>,
    reg_order: u64,
    steps: u64,
}

impl World {
    fn new(seed: u64) -> World {
        let mut rng = Rng(seed);
        let n = 2 + rng.below(3);
        // Tubes spread over every shard.
        let mut names = Vec::new();
        let mut home_of = Vec::new();
        for i in 0.. {
            if names.len() == TUBES {
                break;
            }
            let name = format!("tube{i}");
            let s = shard_of_tube(&name, n as u32).0 as usize;
            let wanted = names.len() % n;
            if s == wanted {
                names.push(name);
                home_of.push(s);
            }
        }
        let ids = IdSource::default();
        let hosts = (0..n)
            .map(|s| Host {
                engine: Engine::with_id_source(EngineConfig { shard: s as u32, shards: n as u32 }, ids.clone()),
                now: 0,
                owner: HashMap::new(),
                last_wait: HashMap::new(),
            })
            .collect();
        let mut w = World {
            rng,
            now: 0,
            n,
            names,
            home_of,
            hosts,
            sessions: Vec::new(),
            rings: (0..n * n).map(|_| VecDeque::new()).collect(),
            model: Model { tubes: vec![MTube::default(); TUBES], ..Model::default() },
            regs: Vec::new(),
            reg_order: 0,
            steps: 0,
        };
        for i in 0..SESSIONS {
            w.sessions.push(Sess {
                life: 0,
                alive: false,
                home: 0,
                proxies: Vec::new(),
                used: 0,
                watched: Vec::new(),
                holdings: Holdings::default(),
                span: SpanSession::default(),
                known: Vec::new(),
                pending: Pending::Idle,
                reserves: 0,
            });
            w.connect(i);
        }
        w
    }

    // ----- the scheduler ------------------------------------------------

    fn step(&mut self, quiescing: bool) -> bool {
        self.steps += 1;
        let roll = self.rng.below(100);
        let busy_rings: Vec<usize> = (0..self.rings.len()).filter(|&r| !self.rings[r].is_empty()).collect();
        if quiescing {
            if let Some(&r) = busy_rings.get(self.rng.below(busy_rings.len().max(1))) {
                self.deliver(r);
                return true;
            }
            return self.fire_due_timer();
        }
        match roll {
            0..45 if !busy_rings.is_empty() => {
                let r = *self.rng.pick(&busy_rings);
                self.deliver(r);
            }
            45..70 => {
                let idle: Vec<usize> = (0..self.sessions.len())
                    .filter(|&s| self.sessions[s].alive && matches!(self.sessions[s].pending, Pending::Idle))
                    .collect();
                if !idle.is_empty() {
                    let s = *self.rng.pick(&idle);
                    self.command(s);
                }
            }
            70..80 => {
                let d = match self.rng.below(4) {
                    0 => 1 + self.rng.below(1000) as Nanos,
                    1 => self.rng.below(300) as Nanos * MS,
                    2 => S - self.now % S,
                    _ => S / 2 + self.rng.below(1500) as Nanos * MS,
                };
                self.now += d;
                trace(format!("clock +{d} = {}", self.now));
            }
            80..88 => {
                let s = self.rng.below(self.n);
                self.shard_step(s, None);
            }
            88..93 => {
                self.fire_due_timer();
            }
            93..95 => {
                let alive: Vec<usize> = (0..self.sessions.len()).filter(|&s| self.sessions[s].alive).collect();
                if alive.len() > 1 {
                    let s = *self.rng.pick(&alive);
                    self.disconnect(s);
                }
            }
            95..98 => {
                let dead: Vec<usize> = (0..self.sessions.len()).filter(|&s| !self.sessions[s].alive).collect();
                if !dead.is_empty() {
                    let s = *self.rng.pick(&dead);
                    self.connect(s);
                }
            }
            _ => {}
        }
        true
    }

    fn fire_due_timer(&mut self) -> bool {
        let now = self.now;
        let due: Vec<usize> = (0..self.sessions.len())
            .filter(|&s| {
                let sess = &self.sessions[s];
                match &sess.pending {
                    Pending::Reserve(Reserving { how: How::Span(r), .. }) => {
                        sess.alive && r.timer(&sess.holdings, now).is_some_and(|t| t <= now)
                    }
                    _ => false,
                }
            })
            .collect();
        if due.is_empty() {
            return false;
        }
        let s = *self.rng.pick(&due);
        trace(format!("session {s} timer at {now}"));
        let sess = &mut self.sessions[s];
        let Pending::Reserve(Reserving { how: How::Span(r), .. }) = &mut sess.pending else { unreachable!() };
        let mut out = Vec::new();
        let outcome = r.fire(&mut sess.span, &sess.holdings, now, &mut out);
        if outcome.is_none() && sess.span.claim().load().1 == ClaimState::Closed {
            cover(|c| c.claims_lost_to_a_shard += 1);
        }
        self.send_span(s, out);
        if let Some(outcome) = outcome {
            self.finish_span(s, outcome);
        }
        true
    }

    // ----- sessions -------------------------------------------------------

    /// A session starts: a proxy client on every shard, a used tube and a
    /// watch list (set up at once, as a new connection's are).
    fn connect(&mut self, s: usize) {
        let life = self.sessions[s].life + 1;
        let home = self.rng.below(self.n);
        let used = self.rng.below(TUBES);
        let mut watched = vec![self.rng.below(TUBES)];
        for _ in 0..self.rng.below(3) {
            let t = self.rng.below(TUBES);
            if !watched.contains(&t) {
                watched.push(t);
            }
        }
        let mut proxies = Vec::new();
        for shard in 0..self.n {
            let c = self.hosts[shard].engine.join_remote().unwrap();
            self.hosts[shard].owner.insert(c, (s, life));
            self.hosts[shard].last_wait.remove(&c);
            proxies.push(c);
            self.model.proxies.insert((s, life, shard), (None, Vec::new()));
        }
        let shard = self.home_of[used];
        self.hosts[shard].engine.use_tube(proxies[shard], &self.names[used]).unwrap();
        self.model.tubes[used].using += 1;
        self.model.proxies.get_mut(&(s, life, shard)).unwrap().0 = Some(used);
        for &t in &watched {
            let shard = self.home_of[t];
            self.hosts[shard].engine.watch(proxies[shard], &self.names[t]).unwrap();
            self.model.tubes[t].watching += 1;
            self.model.proxies.get_mut(&(s, life, shard)).unwrap().1.push(t);
        }
        for shard in 0..self.n {
            self.hosts[shard].engine.check_invariants(self.hosts[shard].now);
        }
        trace(format!("session {s} life {life} connects on core {home}: uses {used}, watches {watched:?}"));
        let sess = &mut self.sessions[s];
        *sess = Sess {
            life,
            alive: true,
            home,
            proxies,
            used,
            watched,
            holdings: Holdings::default(),
            span: SpanSession::default(),
            known: Vec::new(),
            pending: Pending::Idle,
            reserves: sess.reserves,
        };
    }

    fn disconnect(&mut self, s: usize) {
        trace(format!("session {s} disconnects while {:?}", self.sessions[s].pending));
        let sess = &mut self.sessions[s];
        if let Pending::Reserve(Reserving { how, .. }) = &mut sess.pending {
            let proxies = &sess.proxies;
            let waiting = match how {
                How::Single { shard } => self.hosts[*shard].engine.is_waiting(proxies[*shard]),
                How::Span(r) => r.is_armed(),
            };
            if waiting {
                cover(|c| c.disconnects_mid_wait += 1);
            }
            if let How::Span(r) = how {
                r.abandon(&mut sess.span);
            }
        }
        sess.pending = Pending::Idle;
        for shard in 0..self.n {
            self.send(s, shard, Cmd::Disconnect);
        }
        self.sessions[s].alive = false;
    }

    fn send(&mut self, s: usize, shard: usize, cmd: Cmd) {
        let sess = &self.sessions[s];
        let msg = Msg::ToShard { session: s, life: sess.life, client: sess.proxies[shard], cmd };
        self.rings[sess.home * self.n + shard].push_back(msg);
    }

    fn send_span(&mut self, s: usize, out: Vec<Outgoing>) {
        for (shard, client, request) in out {
            assert_eq!(client, self.sessions[s].proxies[shard.0 as usize]);
            self.send(s, shard.0 as usize, Cmd::Span(request));
        }
    }

    /// An idle session's next command.
    fn command(&mut self, s: usize) {
        let now = self.now;
        let roll = self.rng.below(100);
        let held: Vec<Held> = self.sessions[s].holdings.live(now).collect();
        let sess = &self.sessions[s];
        let (used, used_shard) = (sess.used, self.home_of[sess.used]);
        match roll {
            0..25 => {
                let pri = *self.rng.pick(&[0, 1, 1, 500, 1024, 2000]);
                let delay = *self.rng.pick(&[0, 0, 0, 0, 1, 2]);
                let ttr = *self.rng.pick(&[1, 2, 3, 5]);
                self.sessions[s].pending = Pending::Cmd("put", None);
                trace(format!("session {s} puts pri {pri} delay {delay} ttr {ttr} into {used}"));
                self.send(s, used_shard, Cmd::Put { pri, delay, ttr });
            }
            25..52 => self.reserve(s),
            52..72 if !held.is_empty() => {
                let h = *self.rng.pick(&held);
                let shard = h.shard.0 as usize;
                let (what, cmd) = match self.rng.below(4) {
                    0 => ("delete", Cmd::Delete(h.id)),
                    1 => {
                        let delay = *self.rng.pick(&[0, 0, 1]);
                        ("release", Cmd::Release { id: h.id, pri: *self.rng.pick(&[0, 1, 700, 2000]), delay })
                    }
                    2 => ("bury", Cmd::Bury { id: h.id, pri: *self.rng.pick(&[0, 5]) }),
                    _ => ("touch", Cmd::Touch(h.id)),
                };
                trace(format!("session {s} {what}s {}: {cmd:?}", h.id));
                self.sessions[s].pending = Pending::Cmd(what, Some(h.id));
                self.send(s, shard, cmd);
            }
            72..80 => {
                let t = self.rng.below(TUBES);
                let sess = &mut self.sessions[s];
                if let Some(i) = sess.watched.iter().position(|&w| w == t) {
                    if sess.watched.len() == 1 {
                        return;
                    }
                    sess.watched.swap_remove(i);
                    sess.pending = Pending::Cmd("ignore", None);
                    trace(format!("session {s} ignores {t}"));
                    self.send(s, self.home_of[t], Cmd::Unwatch(t));
                } else {
                    sess.watched.push(t);
                    sess.pending = Pending::Cmd("watch", None);
                    trace(format!("session {s} watches {t}"));
                    self.send(s, self.home_of[t], Cmd::Watch(t));
                }
            }
            80..85 => {
                let t = self.rng.below(TUBES);
                if t == used {
                    return;
                }
                self.sessions[s].used = t;
                self.sessions[s].pending = Pending::Cmd("use", None);
                trace(format!("session {s} uses {t}"));
                self.send(s, used_shard, Cmd::Unuse);
                self.send(s, self.home_of[t], Cmd::Use(t));
            }
            85..90 => {
                let bound = *self.rng.pick(&[1, 2, 5]);
                self.sessions[s].pending = Pending::Cmd("kick", None);
                trace(format!("session {s} kicks {bound} in {used}"));
                self.send(s, used_shard, Cmd::Kick(bound));
            }
            90..94 if !self.sessions[s].known.is_empty() => {
                let (id, shard) = *self.rng.pick(&self.sessions[s].known);
                let delete = self.rng.percent(50);
                self.sessions[s].pending = Pending::Cmd(if delete { "delete" } else { "kick-job" }, Some(id));
                trace(format!("session {s} {} {id}", if delete { "deletes" } else { "kicks job" }));
                self.send(s, shard, if delete { Cmd::Delete(id) } else { Cmd::KickJob(id) });
            }
            94..100 => {
                let t = self.rng.below(TUBES);
                let d = *self.rng.pick(&[0, 1, 1, 2]);
                self.sessions[s].pending = Pending::Cmd("pause", None);
                trace(format!("session {s} pauses {t} for {d}"));
                self.send(s, self.home_of[t], Cmd::Pause(t, d));
            }
            _ => {}
        }
    }

    fn reserve(&mut self, s: usize) {
        let timeout = *self.rng.pick(&[None, None, Some(0), Some(0), Some(1), Some(2)]);
        self.reserve_with(s, timeout);
    }

    fn reserve_with(&mut self, s: usize, timeout: Option<u32>) {
        let now = self.now;
        let sess = &mut self.sessions[s];
        sess.reserves += 1;
        let number = sess.reserves;
        // Counted once, where the command was parsed.
        let op = if timeout.is_some() { Op::ReserveWithTimeout } else { Op::Reserve };
        self.hosts[sess.home].engine.count(op);
        if timeout.is_some() {
            self.model.cmd_reserve_with_timeout += 1;
        } else {
            self.model.cmd_reserve += 1;
        }
        let mut shards: Vec<usize> = Vec::new();
        for &t in &sess.watched {
            if !shards.contains(&self.home_of[t]) {
                shards.push(self.home_of[t]);
            }
        }
        let single = single_shard(shards.iter().map(|&x| ShardId(x as u32)), &sess.holdings, now);
        let how = match single {
            Some(shard) => {
                cover(|c| c.single_reserves += 1);
                How::Single { shard: shard.0 as usize }
            }
            None => {
                let parts: Vec<(ShardId, ClientId)> =
                    shards.iter().map(|&x| (ShardId(x as u32), sess.proxies[x])).collect();
                let mut out = Vec::new();
                let r = SpanReserve::start(&mut sess.span, &parts, timeout, now, &mut out);
                cover(|c| c.spanning_reserves += 1);
                sess.pending = Pending::Reserve(Reserving { number, sent_at: now, timeout, how: How::Span(r) });
                trace(format!("session {s} reserve #{number} timeout {timeout:?} spans {shards:?}"));
                self.send_span(s, out);
                return;
            }
        };
        trace(format!("session {s} reserve #{number} timeout {timeout:?} on one shard {shards:?}"));
        sess.pending = Pending::Reserve(Reserving { number, sent_at: now, timeout, how });
        self.send(s, shards[0], Cmd::Reserve(timeout));
    }

    /// A spanning reserve has its outcome.
    fn finish_span(&mut self, s: usize, outcome: Outcome) {
        trace(format!("session {s} answered {outcome:?}"));
        match outcome {
            Outcome::Reserved { shard, job, deadline } => {
                // Checked when its shard reserved it.
                self.sessions[s].holdings.hold(job.id, shard, deadline);
            }
            Outcome::TimedOut => {
                cover(|c| c.timed_out_spanning += 1);
                self.check_decided(s, false, None)
            }
            Outcome::DeadlineSoon => {
                cover(|c| c.deadline_soon_spanning += 1);
                self.check_decided(s, true, None)
            }
            Outcome::OutOfMemory => panic!("out of memory in the simulation"),
        }
        self.sessions[s].pending = Pending::Idle;
    }

    /// An answer reaches its session.
    fn deliver_to_session(&mut self, s: usize, life: u32, shard: usize, answer: Answer) {
        let now = self.now;
        let sess = &mut self.sessions[s];
        if !sess.alive || sess.life != life {
            trace(format!("session {s} life {life} is gone: drops {answer:?}"));
            cover(|c| c.answers_to_the_gone += 1);
            return;
        }
        trace(format!("session {s} gets from shard {shard}: {answer:?}"));
        match answer {
            Answer::Span(SpanAnswer::Expired) => {
                cover(|c| c.expiry_notices += 1);
                sess.holdings.prune(ShardId(shard as u32), now)
            }
            Answer::Span(answer) => {
                let Pending::Reserve(Reserving { how: How::Span(r), .. }) = &mut sess.pending else {
                    assert!(
                        !matches!(answer, SpanAnswer::Served { .. } | SpanAnswer::Taken { .. }),
                        "a job for a reserve already answered: {answer:?}"
                    );
                    return;
                };
                let mut out = Vec::new();
                match &answer {
                    SpanAnswer::Taken { .. } => cover(|c| c.taken += 1),
                    SpanAnswer::Missed { .. } => cover(|c| c.missed += 1),
                    SpanAnswer::Served { .. } => cover(|c| c.served_spanning += 1),
                    _ => {}
                }
                let (round, was_armed) = (r.round(), r.is_armed());
                let outcome = r.answer(&mut sess.span, &sess.holdings, ShardId(shard as u32), answer, now, &mut out);
                if r.round() > round {
                    cover(|c| c.dirty_rounds += 1);
                }
                if r.is_armed() && !was_armed {
                    cover(|c| c.armed += 1);
                }
                self.send_span(s, out);
                if let Some(outcome) = outcome {
                    self.finish_span(s, outcome);
                }
            }
            Answer::Reply(reply) => match (&mut sess.pending, reply) {
                (Pending::Reserve(Reserving { how: How::Single { shard: on }, .. }), reply) => {
                    assert_eq!(*on, shard);
                    match reply {
                        Reply::Waiting => {}
                        Reply::Reserved { id, deadline } => {
                            sess.holdings.hold(id, ShardId(shard as u32), deadline);
                            sess.pending = Pending::Idle;
                        }
                        Reply::TimedOut | Reply::DeadlineSoon => sess.pending = Pending::Idle,
                        other => panic!("a reserve answered {other:?}"),
                    }
                }
                (Pending::Cmd(what, job), reply) => {
                    match (*what, reply) {
                        ("put", Reply::Inserted(id)) => sess.known.push((id, shard)),
                        ("delete" | "release" | "bury", Reply::Done(done)) => {
                            if done && let Some(id) = job {
                                sess.holdings.release(*id);
                            }
                        }
                        ("touch", Reply::Touched(deadline)) => {
                            if let (Some(d), Some(id)) = (deadline, job) {
                                sess.holdings.touch(*id, ShardId(shard as u32), d);
                            }
                        }
                        ("use" | "watch" | "ignore" | "kick-job" | "pause", Reply::Done(_))
                        | ("kick", Reply::Kicked) => {}
                        (what, reply) => panic!("{what} answered {reply:?}"),
                    }
                    sess.pending = Pending::Idle;
                }
                (pending, reply) => panic!("an answer nobody asked for: {reply:?} while {pending:?}"),
            },
        }
    }

    // ----- shards ---------------------------------------------------------

    fn deliver(&mut self, ring: usize) {
        let msg = self.rings[ring].pop_front().expect("a busy ring");
        match msg {
            Msg::ToShard { session, life, client, cmd } => {
                self.shard_step(ring % self.n, Some((session, life, client, cmd)));
            }
            Msg::ToSession { session, life, shard, answer } => self.deliver_to_session(session, life, shard, answer),
        }
    }

    /// One step of shard `s`: its timers, then the command, if any; the
    /// model follows; then the checks.
    fn shard_step(&mut self, s: usize, input: Option<(usize, u32, ClientId, Cmd)>) {
        let now = self.now;
        let before = self.hosts[s].now;
        // What was ready here before the step (for the best-job check).
        let ready_before: Vec<u64> = self
            .model
            .jobs
            .iter()
            .filter(|(_, j)| self.home_of[j.tube] == s && j.state == MState::Ready)
            .filter(|(_, j)| self.model.tubes[j.tube].pause.is_none_or(|(_, until)| until <= before))
            .map(|(&id, _)| id)
            .collect();
        // Tubes paused from before the step to its end: nothing of theirs
        // may be reserved in it.
        let paused_throughout: Vec<bool> =
            self.model.tubes.iter().map(|t| t.pause.is_some_and(|(_, until)| until > now)).collect();
        self.hosts[s].now = now;
        self.model.advance(s, now, &self.home_of);
        let mut got: Vec<Got> = Vec::new();
        let mut answers: Vec<(usize, u32, Answer)> = Vec::new();
        let mut decided: Vec<(usize, u32, bool)> = Vec::new();
        // The shard's timers first, and what they owe, as the engine runs
        // them before any command.
        self.hosts[s].engine.advance(now);
        self.drain(s, now, &mut got, &mut answers, &mut decided);
        let host = &mut self.hosts[s];
        if let Some((session, life, client, cmd)) = input {
            trace(format!("shard {s} runs for session {session} life {life}: {cmd:?}"));
            let key = (session, life, s);
            let e = &mut host.engine;
            let answer = match cmd {
                Cmd::Span(request) => {
                    let new_wait = match &request {
                        SpanRequest::Probe { wait, .. } => host.last_wait.get(&client) != Some(wait),
                        _ => false,
                    };
                    if let SpanRequest::Probe { wait, .. } = &request {
                        host.last_wait.insert(client, *wait);
                    }
                    let answer = execute(e, client, request, now);
                    if new_wait && matches!(answer, Some(SpanAnswer::Report { .. })) {
                        let number = self.sessions[session].reserves;
                        for &t in &self.model.proxies[&key].1 {
                            self.reg_order += 1;
                            self.regs.push(Reg { shard: s, tube: t, order: self.reg_order, session, life, number });
                        }
                    }
                    if let Some(SpanAnswer::Taken { job, .. }) = &answer {
                        got.push(Got { session, life, id: job.id, waited: false, applied: false });
                    }
                    answer.map(Answer::Span)
                }
                Cmd::Put { pri, delay, ttr } => {
                    let id = e.allocate_id();
                    let put = e.put(client, id, now, pri, delay, ttr, Body::from_slice(b"job"), now);
                    assert_eq!(put, PutOutcome::Inserted);
                    let tube = self.model.proxies[&key].0.expect("a put with no used tube here");
                    let state = if delay > 0 { MState::Delayed(now + secs(delay)) } else { MState::Ready };
                    self.model.jobs.insert(id, MJob { tube, pri, ttr, state });
                    self.model.tubes[tube].total_jobs += 1;
                    self.model.total_jobs += 1;
                    Some(Answer::Reply(Reply::Inserted(id)))
                }
                Cmd::Use(t) => {
                    e.use_tube(client, &self.names[t]).unwrap();
                    self.model.tubes[t].using += 1;
                    self.model.proxies.get_mut(&key).unwrap().0 = Some(t);
                    Some(Answer::Reply(Reply::Done(true)))
                }
                Cmd::Unuse => {
                    e.unuse(client);
                    let old = self.model.proxies.get_mut(&key).unwrap().0.take().expect("unuse of no tube");
                    self.model.tubes[old].using -= 1;
                    None
                }
                Cmd::Watch(t) => {
                    e.watch(client, &self.names[t]).unwrap();
                    self.model.tubes[t].watching += 1;
                    self.model.proxies.get_mut(&key).unwrap().1.push(t);
                    Some(Answer::Reply(Reply::Done(true)))
                }
                Cmd::Unwatch(t) => {
                    assert!(e.unwatch(client, &self.names[t]));
                    self.model.tubes[t].watching -= 1;
                    self.model.proxies.get_mut(&key).unwrap().1.retain(|&w| w != t);
                    Some(Answer::Reply(Reply::Done(true)))
                }
                Cmd::Reserve(timeout) => Some(Answer::Reply(match e.reserve(client, timeout, now) {
                    ReserveOutcome::Reserved(job) => {
                        got.push(Got { session, life, id: job.id, waited: false, applied: false });
                        Reply::Reserved { id: job.id, deadline: e.reservation_deadline(client, job.id).unwrap() }
                    }
                    ReserveOutcome::Waiting => {
                        let number = self.sessions[session].reserves;
                        for &t in &self.model.proxies[&key].1 {
                            self.reg_order += 1;
                            self.regs.push(Reg { shard: s, tube: t, order: self.reg_order, session, life, number });
                        }
                        Reply::Waiting
                    }
                    ReserveOutcome::TimedOut => {
                        decided.push((session, life, false));
                        Reply::TimedOut
                    }
                    ReserveOutcome::DeadlineSoon => {
                        decided.push((session, life, true));
                        Reply::DeadlineSoon
                    }
                    ReserveOutcome::OutOfMemory => panic!("out of memory in the simulation"),
                })),
                Cmd::Delete(id) => {
                    let done = e.delete(client, id, now);
                    let expected = self.model.jobs.get(&id).is_some_and(|j| match j.state {
                        MState::Reserved { session: h, life: g, .. } => (h, g) == (session, life),
                        _ => true,
                    });
                    assert_eq!(done, expected, "delete {id}");
                    if done {
                        let job = self.model.jobs.remove(&id).unwrap();
                        self.model.tubes[job.tube].deletes += 1;
                    }
                    Some(Answer::Reply(Reply::Done(done)))
                }
                Cmd::Release { id, pri, delay } => {
                    let done = e.release(client, id, pri, delay, now) == Change::Done;
                    assert_eq!(done, self.model.held_by(id, session, life), "release {id}");
                    if done {
                        let job = self.model.jobs.get_mut(&id).unwrap();
                        job.pri = pri;
                        job.state = if delay > 0 { MState::Delayed(now + secs(delay)) } else { MState::Ready };
                    }
                    Some(Answer::Reply(Reply::Done(done)))
                }
                Cmd::Bury { id, pri } => {
                    let done = e.bury(client, id, pri, now) == Change::Done;
                    assert_eq!(done, self.model.held_by(id, session, life), "bury {id}");
                    if done {
                        self.model.bury_seq += 1;
                        let job = self.model.jobs.get_mut(&id).unwrap();
                        job.pri = pri;
                        job.state = MState::Buried(self.model.bury_seq);
                    }
                    Some(Answer::Reply(Reply::Done(done)))
                }
                Cmd::Touch(id) => {
                    let done = e.touch(client, id, now);
                    assert_eq!(done, self.model.held_by(id, session, life), "touch {id}");
                    if done {
                        let job = self.model.jobs.get_mut(&id).unwrap();
                        job.state = MState::Reserved { session, life, deadline: now + secs(job.ttr) };
                    }
                    Some(Answer::Reply(Reply::Touched(done.then(|| e.reservation_deadline(client, id).unwrap()))))
                }
                Cmd::Kick(bound) => {
                    let kicked = e.kick(client, bound, now);
                    let tube = self.model.proxies[&key].0.expect("a kick with no used tube here");
                    self.model.kick(tube, bound, kicked);
                    Some(Answer::Reply(Reply::Kicked))
                }
                Cmd::KickJob(id) => {
                    let done = e.kick_job(id, now);
                    let job = self.model.jobs.get_mut(&id);
                    let expected =
                        job.as_ref().is_some_and(|j| matches!(j.state, MState::Buried(_) | MState::Delayed(_)));
                    assert_eq!(done, expected, "kick-job {id}");
                    if let Some(job) = job.filter(|_| done) {
                        job.state = MState::Ready;
                    }
                    Some(Answer::Reply(Reply::Done(done)))
                }
                Cmd::Pause(t, d) => {
                    let done = e.pause_tube(&self.names[t], d, now);
                    assert_eq!(done, self.model.exists(t, &self.home_of), "pause-tube {t}");
                    if done {
                        let tube = &mut self.model.tubes[t];
                        tube.pauses += 1;
                        tube.pause = (d > 0).then(|| (d, now + secs(d)));
                    }
                    Some(Answer::Reply(Reply::Done(done)))
                }
                Cmd::Disconnect => {
                    for job in self.model.jobs.values_mut() {
                        if self.home_of[job.tube] == s
                            && matches!(job.state, MState::Reserved { session: h, life: g, .. } if (h, g) == (session, life))
                        {
                            job.state = MState::Ready;
                        }
                    }
                    e.disconnect(client, now);
                    let (used, watched) = self.model.proxies.remove(&key).unwrap();
                    if let Some(t) = used {
                        self.model.tubes[t].using -= 1;
                    }
                    for t in watched {
                        self.model.tubes[t].watching -= 1;
                    }
                    host.owner.remove(&client);
                    host.last_wait.remove(&client);
                    None
                }
            };
            if let Some(answer) = answer {
                answers.push((session, life, answer));
            }
        }
        self.drain(s, now, &mut got, &mut answers, &mut decided);
        self.model.collect(s, &self.home_of);
        // Checks.
        self.hosts[s].engine.check_invariants(now);
        self.compare_shard(s);
        for g in &got {
            self.check_best(s, g, &ready_before, &paused_throughout);
            if g.waited {
                self.check_first_come(s, g);
            }
        }
        for &(session, life, soon) in &decided {
            if self.sessions[session].alive && self.sessions[session].life == life {
                self.check_decided(session, soon, Some((s, &ready_before)));
            }
        }
        for (session, life, answer) in answers {
            let home = self.sessions[session].home;
            self.rings[s * self.n + home].push_back(Msg::ToSession { session, life, shard: s, answer });
        }
    }

    /// Takes what shard `s` owes sessions (wakes, served spanning waits,
    /// expiry notices) into `answers`, and makes the model follow the
    /// reservations made since the last drain of this step.
    fn drain(
        &mut self,
        s: usize,
        now: Nanos,
        got: &mut Vec<Got>,
        answers: &mut Vec<(usize, u32, Answer)>,
        decided: &mut Vec<(usize, u32, bool)>,
    ) {
        let applied = got.iter().filter(|g| g.applied).count();
        let host = &mut self.hosts[s];
        let wakes: Vec<_> = host.engine.take_wakes().collect();
        for (c, wake) in wakes {
            let (session, life) = host.owner[&c];
            let reply = match wake {
                Wake::Reserved(job) => {
                    cover(|c| c.served_single += 1);
                    got.push(Got { session, life, id: job.id, waited: true, applied: false });
                    Reply::Reserved { id: job.id, deadline: host.engine.reservation_deadline(c, job.id).unwrap() }
                }
                Wake::TimedOut => {
                    decided.push((session, life, false));
                    Reply::TimedOut
                }
                Wake::DeadlineSoon => {
                    decided.push((session, life, true));
                    Reply::DeadlineSoon
                }
            };
            answers.push((session, life, Answer::Reply(reply)));
        }
        let owner = &host.owner;
        owed(&mut host.engine, |c, answer| {
            let (session, life) = owner[&c];
            if let SpanAnswer::Served { job, .. } = &answer {
                got.push(Got { session, life, id: job.id, waited: true, applied: false });
            }
            answers.push((session, life, Answer::Span(answer)));
        });
        // The model follows the reservations made.
        for g in got.iter_mut().skip(applied) {
            g.applied = true;
            let job = self.model.jobs.get_mut(&g.id).expect("a reserved job the model does not have");
            assert_eq!(job.state, MState::Ready, "job {} reserved from {:?}", g.id, job.state);
            job.state = MState::Reserved { session: g.session, life: g.life, deadline: now + secs(job.ttr) };
        }
    }

    // ----- checks ---------------------------------------------------------

    /// The shard holds exactly the model's jobs on it, in their states, and
    /// its tubes have the model's figures.
    fn compare_shard(&self, s: usize) {
        let e = &self.hosts[s].engine;
        let now = self.hosts[s].now;
        let mut count = 0;
        for (&id, job) in &self.model.jobs {
            if self.home_of[job.tube] != s {
                continue;
            }
            count += 1;
            let stats = e.stats_job(id, now).unwrap_or_else(|| panic!("job {id} lost from shard {s}"));
            let want = match job.state {
                MState::Ready => "ready",
                MState::Delayed(_) => "delayed",
                MState::Reserved { .. } => "reserved",
                MState::Buried(_) => "buried",
            };
            assert_eq!((stats.state, stats.pri), (want, job.pri), "job {id} on shard {s}");
            if let MState::Reserved { session, life, deadline } = job.state {
                let holder = self.hosts[s].owner.iter().find(|(_, o)| **o == (session, life)).map(|(&c, _)| c);
                let holder = holder
                    .unwrap_or_else(|| panic!("job {id} held by session {session} life {life}, gone from shard {s}"));
                assert_eq!(e.reservation_deadline(holder, id), Some(deadline), "holder of job {id}");
            }
        }
        let st = e.stats();
        assert_eq!(st.ready + st.reserved + st.delayed + st.buried, count, "jobs on shard {s}");
        for t in (0..TUBES).filter(|&t| self.home_of[t] == s) {
            let exists = self.model.exists(t, &self.home_of);
            assert_eq!(e.has_tube(&self.names[t]), exists, "tube {t} exists");
            if exists {
                let got = e.stats_tube(&self.names[t], now).unwrap();
                let want = self.model.tube_stats(t, now);
                assert_eq!(
                    (got.urgent, got.ready, got.reserved, got.delayed, got.buried, got.total_jobs),
                    (want.urgent, want.ready, want.reserved, want.delayed, want.buried, want.total_jobs),
                    "jobs of tube {t}"
                );
                assert_eq!(
                    (got.using, got.watching, got.deletes, got.pauses, got.pause_s),
                    (want.using, want.watching, want.deletes, want.pauses, want.pause_s),
                    "figures of tube {t}"
                );
            }
        }
    }

    /// The job reserved in a step of shard `s` was the best for its
    /// client: better than anything ready for it on another shard, and
    /// than anything ready for it here both before and after the step.
    fn check_best(&self, s: usize, g: &Got, ready_before: &[u64], paused_throughout: &[bool]) {
        let sess = &self.sessions[g.session];
        if !sess.alive || sess.life != g.life {
            return;
        }
        let job = &self.model.jobs[&g.id];
        let rank = Rank { pri: job.pri, id: g.id };
        assert!(sess.watched.contains(&job.tube), "job {} of tube {} for a session not watching it", g.id, job.tube);
        let paused_after = self.model.tubes[job.tube].pause.is_some_and(|(_, until)| until > self.hosts[s].now);
        assert!(
            !(paused_throughout[job.tube] && paused_after),
            "job {} reserved from tube {}, paused all along",
            g.id,
            job.tube
        );
        for shard in (0..self.n).filter(|&x| x != s) {
            let host = &self.hosts[shard];
            let best = host.engine.best_ready_for(sess.proxies[shard], host.now);
            assert!(
                best.is_none_or(|b| b > rank),
                "session {} got {rank:?} while {best:?} was ready on shard {shard}",
                g.session
            );
        }
        let now = self.hosts[s].now;
        for id in ready_before {
            let Some(other) = self.model.jobs.get(id) else { continue };
            let visible = other.state == MState::Ready
                && sess.watched.contains(&other.tube)
                && self.model.tubes[other.tube].pause.is_none_or(|(_, until)| until <= now);
            let other_rank = Rank { pri: other.pri, id: *id };
            assert!(
                !visible || other_rank > rank,
                "session {} got {rank:?} while {other_rank:?} stayed ready on its shard",
                g.session
            );
        }
    }

    /// A waiter served a job of a tube had no older armed waiter of that
    /// tube left waiting.
    fn check_first_come(&self, s: usize, g: &Got) {
        let sess = &self.sessions[g.session];
        if !sess.alive || sess.life != g.life {
            return;
        }
        let tube = self.model.jobs[&g.id].tube;
        let number = sess.reserves;
        let mine = self
            .regs
            .iter()
            .find(|r| (r.shard, r.tube, r.session, r.life, r.number) == (s, tube, g.session, g.life, number));
        let mine =
            mine.unwrap_or_else(|| panic!("session {} served from tube {tube} without a registration", g.session));
        if self.regs.iter().any(|r| r.shard == s && r.tube == tube && r.order < mine.order) {
            cover(|c| c.first_come_checks_with_older_waiters += 1);
        }
        for r in self.regs.iter().filter(|r| r.shard == s && r.tube == tube && r.order < mine.order) {
            assert!(
                !self.armed(r),
                "session {} (registered {}) served from tube {tube} before session {} (registered {}), still waiting",
                g.session,
                mine.order,
                r.session,
                r.order
            );
        }
    }

    /// Whether a registration is an armed wait still waiting.
    fn armed(&self, r: &Reg) -> bool {
        let sess = &self.sessions[r.session];
        if !sess.alive || sess.life != r.life {
            return false;
        }
        let Pending::Reserve(reserving) = &sess.pending else { return false };
        if reserving.number != r.number || !self.hosts[r.shard].engine.is_waiting(sess.proxies[r.shard]) {
            return false;
        }
        match &reserving.how {
            How::Single { shard } => *shard == r.shard,
            How::Span(_) => sess.span.claim().load().1 == ClaimState::Open,
        }
    }

    /// TIMED_OUT (`soon` false) or DEADLINE_SOON came when due, with
    /// nothing ready for the client. Decided by the session (`step`
    /// `None`): at this instant, on every shard; by a shard's timers
    /// (`Some`): nothing ready on the other shards, nor on that one both
    /// before and after its step.
    fn check_decided(&self, s: usize, soon: bool, step: Option<(usize, &[u64])>) {
        let now = self.now;
        let sess = &self.sessions[s];
        let Pending::Reserve(reserving) = &sess.pending else {
            panic!("session {s} answered without a reserve");
        };
        if soon {
            let margin = crate::engine::SAFETY_MARGIN_NS;
            let due = if step.is_none() {
                // The session's decision: a reservation its shard holds
                // for it, not run out, within its margin now; or one that
                // ran out during the reserve, whose margin one engine's
                // timers, run in time order, would have answered first.
                sess.holdings.live(0).any(|h| {
                    let shard = h.shard.0 as usize;
                    let held = self.hosts[shard].engine.reservation_deadline(sess.proxies[shard], h.id);
                    let live = held == Some(h.deadline) && h.deadline >= now;
                    let ran_out = h.deadline < now && h.deadline >= reserving.sent_at;
                    (live || ran_out) && now >= h.deadline.saturating_sub(margin)
                })
            } else {
                // A shard's timers may have run the reservation out later
                // in the same step.
                sess.holdings.live(0).any(|h| now >= h.deadline.saturating_sub(margin))
            };
            assert!(due, "session {s} DEADLINE_SOON with no reservation within its margin");
        } else {
            let timeout = reserving.timeout.expect("TIMED_OUT for a plain reserve");
            assert!(now >= reserving.sent_at + secs(timeout), "session {s} TIMED_OUT early");
            assert!(!sess.holdings.deadline_soon(now), "session {s} TIMED_OUT inside a reservation's margin");
        }
        for shard in 0..self.n {
            if step.is_some_and(|(x, _)| x == shard) {
                continue;
            }
            let host = &self.hosts[shard];
            let best = host.engine.best_ready_for(sess.proxies[shard], host.now);
            assert_eq!(best, None, "session {s} timed out or deadline soon with a job ready on shard {shard}");
        }
        if let Some((shard, ready_before)) = step {
            let now = self.hosts[shard].now;
            for id in ready_before {
                let Some(job) = self.model.jobs.get(id) else { continue };
                let visible = job.state == MState::Ready
                    && sess.watched.contains(&job.tube)
                    && self.model.tubes[job.tube].pause.is_none_or(|(_, until)| until <= now);
                assert!(!visible, "session {s} timed out or deadline soon with job {id} ready on shard {shard}");
            }
        }
    }

    /// Ticks every shard at the current time and delivers everything in
    /// flight, firing the sessions' due timers, until nothing moves.
    fn settle(&mut self) {
        loop {
            for s in 0..self.n {
                self.shard_step(s, None);
            }
            let mut moved = false;
            while self.rings.iter().any(|r| !r.is_empty()) || self.fire_due_timer() {
                moved = true;
                if let Some(r) = (0..self.rings.len()).find(|&r| !self.rings[r].is_empty()) {
                    self.deliver(r);
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Once settled, every reserve not answered is a wait that can still
    /// be answered: armed, with nothing ready for it, and neither timed
    /// out nor inside the margin of a reservation (its timer would have
    /// fired).
    fn check_live(&self) {
        let now = self.now;
        for (s, sess) in self.sessions.iter().enumerate().filter(|(_, s)| s.alive) {
            let Pending::Reserve(r) = &sess.pending else {
                assert!(matches!(sess.pending, Pending::Idle), "session {s} still waits for {:?}", sess.pending);
                continue;
            };
            match &r.how {
                How::Single { shard } => {
                    assert!(self.hosts[*shard].engine.is_waiting(sess.proxies[*shard]), "session {s} lost its wait");
                }
                How::Span(span) => {
                    assert!(span.is_armed(), "session {s} left mid-round");
                    assert_eq!(sess.span.claim().load().1, ClaimState::Open, "session {s} armed on a word not open");
                    let timed_out = r.timeout.is_some_and(|t| now >= r.sent_at + secs(t));
                    assert!(!timed_out, "session {s} waits past its timeout");
                }
            }
            assert!(!sess.holdings.deadline_soon(now), "session {s} waits inside a reservation's margin");
            for (shard, host) in self.hosts.iter().enumerate() {
                let best = host.engine.best_ready_for(sess.proxies[shard], host.now);
                assert_eq!(best, None, "session {s} waits while a job is ready for it on shard {shard}");
            }
        }
    }

    /// Everything in flight delivered: the shards' counters are the
    /// model's, every session's record of its reservations is what the
    /// shards hold for it, and every wait can still be answered; then
    /// again as the clock runs on until every timeout and reservation has
    /// run out.
    fn check_quiet(&mut self) {
        self.settle();
        self.check_counters();
        self.check_live();
        // Every idle session reserves until it waits: sessions end up
        // waiting while they hold jobs, whose margins must then end their
        // waits as the clock runs on.
        for _ in 0..4 {
            for s in 0..self.sessions.len() {
                if self.sessions[s].alive && matches!(self.sessions[s].pending, Pending::Idle) {
                    self.reserve_with(s, None);
                }
            }
            self.settle();
            self.check_live();
        }
        for _ in 0..16 {
            self.now += S / 2;
            trace(format!("clock +0.5 s = {}", self.now));
            self.settle();
            self.check_live();
        }
        self.check_counters();
    }

    fn check_counters(&self) {
        let mut sum = crate::engine::ServerStats::default();
        for host in &self.hosts {
            crate::engine::ServerStats::merge(&mut sum, &host.engine.stats());
        }
        let m = &self.model;
        let count = |f: &dyn Fn(&MJob) -> bool| m.jobs.values().filter(|j| f(j)).count() as u64;
        let want = (
            count(&|j| j.state == MState::Ready && j.pri < 1024),
            count(&|j| j.state == MState::Ready),
            count(&|j| matches!(j.state, MState::Reserved { .. })),
            count(&|j| matches!(j.state, MState::Delayed(_))),
            count(&|j| matches!(j.state, MState::Buried(_))),
            m.total_jobs,
            m.job_timeouts,
        );
        assert_eq!(
            (sum.urgent, sum.ready, sum.reserved, sum.delayed, sum.buried, sum.total_jobs, sum.job_timeouts),
            want
        );
        assert_eq!(
            (sum.ops.get(Op::Reserve), sum.ops.get(Op::ReserveWithTimeout)),
            (m.cmd_reserve, m.cmd_reserve_with_timeout),
            "reserves counted once, at the origin"
        );
        // Waiting: the shards count ordinary waits, sessions their armed
        // spanning ones; each waiter counts in each tube it watches.
        let mut waiting = 0;
        let mut tube_waiting = [0u64; TUBES];
        let mut armed_spans = 0;
        for sess in self.sessions.iter().filter(|s| s.alive) {
            let Pending::Reserve(r) = &sess.pending else { continue };
            let waits = match &r.how {
                How::Single { shard } => self.hosts[*shard].engine.is_waiting(sess.proxies[*shard]),
                How::Span(span) => {
                    assert!(span.is_armed(), "a spanning reserve left mid-round");
                    armed_spans += 1;
                    true
                }
            };
            assert!(waits, "a reserve neither answered nor waiting");
            waiting += 1;
            for &t in &sess.watched {
                tube_waiting[t] += 1;
            }
        }
        assert_eq!(sum.waiting + armed_spans, waiting, "current-waiting");
        for (t, &want) in tube_waiting.iter().enumerate() {
            let host = &self.hosts[self.home_of[t]];
            if let Some(st) = host.engine.stats_tube(&self.names[t], host.now) {
                assert_eq!(st.waiting, want, "current-waiting of tube {t}");
            }
        }
        // Each session's holdings are what the shards hold for it.
        for sess in self.sessions.iter().filter(|s| s.alive) {
            for shard in 0..self.n {
                let host = &self.hosts[shard];
                for (&id, job) in &self.model.jobs {
                    let on_shard = self.home_of[job.tube] == shard;
                    let held_here = on_shard && host.engine.reservation_deadline(sess.proxies[shard], id).is_some();
                    let recorded = sess.holdings.live(host.now).any(|h| h.id == id && h.shard.0 as usize == shard);
                    assert_eq!(held_here, recorded, "session's record of job {id} on shard {shard}");
                }
            }
        }
    }
}

impl Model {
    fn held_by(&self, id: u64, session: usize, life: u32) -> bool {
        self.jobs.get(&id).is_some_and(
            |j| matches!(j.state, MState::Reserved { session: h, life: g, .. } if (h, g) == (session, life)),
        )
    }

    /// Shard `s`'s timers at `now`: pauses end, delayed jobs come due,
    /// reservations run out.
    fn advance(&mut self, s: usize, now: Nanos, home_of: &[usize]) {
        for (t, tube) in self.tubes.iter_mut().enumerate() {
            if home_of[t] == s && tube.pause.is_some_and(|(_, until)| until <= now) {
                tube.pause = None;
            }
        }
        for job in self.jobs.values_mut().filter(|j| home_of[j.tube] == s) {
            match job.state {
                MState::Delayed(at) if at <= now => job.state = MState::Ready,
                MState::Reserved { deadline, .. } if now > deadline => {
                    job.state = MState::Ready;
                    self.job_timeouts += 1;
                }
                _ => {}
            }
        }
    }

    /// `kick` in a tube: buried jobs oldest first if there are any, else
    /// delayed ones soonest first.
    fn kick(&mut self, tube: usize, bound: u32, kicked: u32) {
        let mut buried: Vec<(u64, u64)> = Vec::new();
        let mut delayed: Vec<(Nanos, u64)> = Vec::new();
        for (&id, job) in self.jobs.iter().filter(|(_, j)| j.tube == tube) {
            match job.state {
                MState::Buried(seq) => buried.push((seq, id)),
                MState::Delayed(at) => delayed.push((at, id)),
                _ => {}
            }
        }
        buried.sort_unstable();
        delayed.sort_unstable();
        let ids: Vec<u64> = if buried.is_empty() {
            delayed.iter().map(|&(_, id)| id).collect()
        } else {
            buried.iter().map(|&(_, id)| id).collect()
        };
        assert_eq!(kicked as usize, ids.len().min(bound as usize), "kick {bound} in tube {tube}");
        for id in &ids[..kicked as usize] {
            self.jobs.get_mut(id).unwrap().state = MState::Ready;
        }
    }

    fn exists(&self, t: usize, _home_of: &[usize]) -> bool {
        let tube = &self.tubes[t];
        tube.using > 0 || tube.watching > 0 || self.jobs.values().any(|j| j.tube == t)
    }

    /// Tubes of shard `s` nothing refers to any more are gone, with their
    /// counters and pause.
    fn collect(&mut self, s: usize, home_of: &[usize]) {
        for t in 0..TUBES {
            if home_of[t] == s && !self.exists(t, home_of) {
                self.tubes[t] = MTube::default();
            }
        }
    }

    fn tube_stats(&self, t: usize, now: Nanos) -> crate::engine::TubeStats {
        let jobs: Vec<&MJob> = self.jobs.values().filter(|j| j.tube == t).collect();
        let count = |f: &dyn Fn(&MJob) -> bool| jobs.iter().filter(|j| f(j)).count() as u64;
        let tube = &self.tubes[t];
        crate::engine::TubeStats {
            name: String::new(),
            urgent: count(&|j| j.state == MState::Ready && j.pri < 1024),
            ready: count(&|j| j.state == MState::Ready),
            reserved: count(&|j| matches!(j.state, MState::Reserved { .. })),
            delayed: count(&|j| matches!(j.state, MState::Delayed(_))),
            buried: count(&|j| matches!(j.state, MState::Buried(_))),
            total_jobs: tube.total_jobs,
            using: tube.using,
            watching: tube.watching,
            waiting: 0,
            deletes: tube.deletes,
            pauses: tube.pauses,
            pause_s: tube.pause.filter(|&(_, until)| until > now).map_or(0, |(d, _)| u64::from(d)),
            pause_left_s: 0,
        }
    }
}

/// One history from `seed`: random steps, then quiet and the final checks.
fn run(seed: u64, steps: usize) {
    TRACE.with(|t| t.borrow_mut().clear());
    let mut w = World::new(seed);
    trace(format!("seed {seed}: {} shards, tubes on {:?}", w.n, w.home_of));
    for _ in 0..steps {
        w.step(false);
    }
    w.check_quiet();
    assert!(w.steps > 0);
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name} must be a number")))
}

#[test]
fn reserves_across_shards_behave_as_one_server_under_random_schedules() {
    let steps = env_number("RUNNERBEAN_SPAN_STEPS").map_or(STEPS_DEFAULT, |n| n as usize);
    let replay = env_number("RUNNERBEAN_SPAN_SEED");
    let seeds: Vec<u64> = match replay {
        Some(seed) => vec![seed],
        None => (0..env_number("RUNNERBEAN_SPAN_SEEDS").unwrap_or(SEEDS_DEFAULT)).collect(),
    };
    for seed in seeds {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| run(seed, steps))) {
            let steps_seen = TRACE.with(|t| t.borrow().iter().cloned().collect::<Vec<_>>().join("\n"));
            eprintln!("last steps of seed {seed}:\n{steps_seen}");
            let why =
                panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
            panic!("seed {seed} failed (replay: RUNNERBEAN_SPAN_SEED={seed}): {}", why.unwrap_or_default());
        }
    }
    let coverage = COVERAGE.with(|c| *c.borrow());
    eprintln!("{coverage:#?}");
    if replay.is_none() {
        let Coverage {
            spanning_reserves,
            single_reserves,
            taken,
            missed,
            dirty_rounds,
            armed,
            served_spanning,
            served_single,
            timed_out_spanning,
            deadline_soon_spanning,
            claims_lost_to_a_shard,
            disconnects_mid_wait,
            answers_to_the_gone,
            first_come_checks_with_older_waiters,
            expiry_notices,
        } = coverage;
        let all = [
            spanning_reserves,
            single_reserves,
            taken,
            missed,
            dirty_rounds,
            armed,
            served_spanning,
            served_single,
            timed_out_spanning,
            deadline_soon_spanning,
            claims_lost_to_a_shard,
            disconnects_mid_wait,
            answers_to_the_gone,
            first_come_checks_with_older_waiters,
            expiry_notices,
        ];
        assert!(all.iter().all(|&n| n > 0), "a path the simulation never took: {coverage:#?}");
    }
}
