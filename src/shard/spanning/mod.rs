//! Reserve across shards: the protocol between a session whose watch list
//! spans shards and the shards that own its tubes, as message types, the
//! session's side as a state machine ([`SpanReserve`]) and the shard's
//! side as two functions over an [`Engine`] ([`execute`], [`owed`]).
//!
//! [`crate::shard::spread`] runs it for a [`crate::shard::Shard`] among
//! several; the running server has one shard, whose reserves never span.
//! It is built and tested here, in the pure layer, so that putting it on
//! threads and the mailbox changes the transport, not the decisions.
//!
//! # The problem
//! A client watching tubes on several shards must get what one beanstalkd
//! would give it: the best `(pri, id)` ready job among its unpaused watched
//! tubes (beanstalkd's `next_awaited_job`), exactly once; when there is
//! none, a wait served first come first served in each tube, ended by its
//! timeout (0 included), by DEADLINE_SOON one second before one of its
//! reservations runs out, or by a disconnect, with no job lost or handed
//! out twice and no counter moved by the machinery itself. Each shard is a
//! separate engine on its own core; they share nothing but what this
//! protocol puts between them.
//!
//! # The choice: a claim word, with probing rounds
//! Two designs were weighed (see Dragonfly's BLPOP across shards, whose
//! `BatonBarrier` is the claim word).
//!
//! *Offer / accept / decline*: a shard with a job for a waiting session
//! holds the job and offers it; the session accepts the first offer and
//! declines the rest, and a declined job goes back untouched. Holding is
//! what costs: a held job still reads as ready, yet no other reserve may
//! take it, so a reserve on its shard that meets it must either take a
//! worse job (wrong if the offer is then declined: the job was ready all
//! along) or wait for the offer's fate (a lock across cores). Every tube
//! with an offer out is blocked for a round trip, and the decline path is
//! one more way for a job to move.
//!
//! *A claim word* (chosen): one atomic word per session, [`Claim`], shared
//! by its core and every shard it waits on. A shard that has a job for the
//! session first wins the word with a compare-exchange, and only then
//! reserves the job; a shard that loses passes the session over. No job is
//! ever held, so there is nothing to decline and nothing to put back.
//! Timeouts, DEADLINE_SOON and disconnects close the word from the
//! session's side through the same compare-exchange, so a late job and a
//! timeout can never both win.
//!
//! A claim word alone gives "the first shard to claim wins", which is
//! BLPOP's rule but not beanstalkd's: a session watching `a` (a job of
//! priority 10) and `b` (priority 1) must get the job of `b`. So the word
//! also carries a *round*, and a round is first a probe:
//!
//! 1. **Probe.** The session starts round `r` (word: `r`, probing) and
//!    sends [`SpanRequest::Probe`] to every shard of its watch list. Each
//!    shard registers the wait in the queue of each watched tube it owns
//!    (in arrival order, as any waiter) and answers its *report*: its best
//!    ready `(pri, id)` among the session's unpaused watched tubes, or
//!    none. From then on, a job that becomes ready on that shard (a put,
//!    a release, a kick, a delay or a TTR running out, a pause ending), is
//!    left ready (no armed waiter took it) and beats that report turns the
//!    word *dirty*.
//! 2. **Decide**, once every report of the round is in, as beanstalkd
//!    decides at the instant it runs the reserve:
//!    * if some shard reported a job, [`SpanRequest::Take`] to the shard
//!      of the least one, with the least of the other reports as its
//!      *bound*: that shard checks the job is still the session's best
//!      there with the rank reported (a job reserved and released
//!      meanwhile keeps its id but may have a new priority), or else that
//!      its best now beats the bound, and takes that job only if it wins
//!      the word from `r`, probing. With neither (the job gone, and what
//!      is left there no better than another shard's report) it answers a
//!      fresh report ([`SpanAnswer::Missed`]) and the session takes the
//!      next least. Without the bound, workers that all chose the same job
//!      chased it one miss after another (in 10 producers and 100 workers
//!      over 10 tubes, four misses for every job);
//!    * otherwise DEADLINE_SOON if one of the session's reservations is
//!      within its safety margin, and TIMED_OUT with a timeout of 0 or one
//!      already past. (beanstalkd first answers DEADLINE_SOON when no
//!      watched tube has a ready job even paused; with only paused jobs
//!      it lets the client wait, and the client's timer, already due,
//!      answers DEADLINE_SOON at the next tick: with nothing to take, the
//!      answer inside the margin is DEADLINE_SOON either way, so reports
//!      need not say whether paused tubes hold jobs.)
//!    * otherwise the session *arms* the wait (word: `r`, open) and sets
//!      its timer to the earlier of the timeout and the start of the
//!      margin of its soonest reservation.
//!
//!    An answer decided without a take (TIMED_OUT, DEADLINE_SOON) is given
//!    only if the session closes the word from `r`, probing, and arming
//!    needs the same: a dirty round decides nothing. The session starts
//!    round `r + 1` and probes again; registrations keep their places.
//! 3. **Wait.** An armed wait is served by whichever shard first has a job
//!    for it: that shard claims the word (`r`, open → closed), reserves
//!    the job and sends [`SpanAnswer::Served`]. A shard that fails to
//!    claim drops the registration and serves its tube's next waiter.
//!    The session's timer closes the word itself (TIMED_OUT or
//!    DEADLINE_SOON); if it finds the word already closed, a job is on its
//!    way and that is the answer.
//! 4. **End.** After any answer the session sends [`SpanRequest::Unwait`]
//!    to every other shard of the wait; a registration met before that
//!    finds the word closed and is dropped there and then.
//!
//! # Invariants, and why they hold
//! (An *instant* is a point between two steps of the shards' loops: each
//! shard's state changes only in its own steps, and its timers fire when
//! its loop next runs, as beanstalkd's tick does.)
//! * **Exactly once.** A round leaves probing or open once, by one
//!   compare-exchange, and only the winner reserves a job for the session
//!   or answers it; so a reserve gets one answer and a job is reserved for
//!   it by one shard. The session answers only after its own winning
//!   transition or the winner's message.
//! * **Never a stale wait.** The session never reuses a round (its rounds
//!   only grow, across all its reserves), and a shard acts on a
//!   registration only while the word holds the round that registration
//!   last answered. A registration of an earlier wait, or of an earlier
//!   round whose probe the shard has not answered yet, finds another round
//!   and does nothing; a probe of a new wait replaces an old registration.
//! * **The best job at some instant.** A take wins the word at instant `T`
//!   only if the round is clean. For every shard, its latest report was
//!   made before `T`; since then every job that became ready there and
//!   beat the report either went to an armed waiter at once or spoilt the
//!   round, and removals only make a shard's best worse: so at `T` each
//!   report is a lower bound of what its shard has, and the job taken, the
//!   session's best on its own shard and either the least of the reports
//!   with the rank it was reported at or better than every other shard's
//!   report, is the best of all at `T`. A wait armed at instant `A` had nothing ready in
//!   any watched tube at `A` by the same argument; afterwards each shard
//!   serves it the moment a job is ready there, so the job it gets is the
//!   best ready for it when it gets it (among several made ready in one
//!   step, the shard picks the best first, as beanstalkd's queue pass
//!   does). TIMED_OUT and DEADLINE_SOON are given at a clean close, when
//!   no watched unpaused tube had a ready job.
//! * **First come, first served per tube.** A tube's shard serves its
//!   armed waiters in the order it registered them; a spanning wait that
//!   is still probing keeps its place and is passed over, as one server
//!   would pass over a client whose reserve it has not run yet. A spanning
//!   waiter's place is therefore the moment its first probe reached that
//!   tube's shard, a little before it is armed: a waiter of one shard that
//!   joins the tube in between is served after it, which is what one
//!   server would do had it run the spanning reserve first.
//! * **Nothing held, nothing lost.** No job is ever reserved without a
//!   won claim, so a failed claim, a missed take and a dirty round move no
//!   job and no counter. A job reserved for a session that has gone (the
//!   answer crossed its disconnect) goes back to ready when the
//!   disconnect reaches that shard, after everything the session sent
//!   before it, as beanstalkd returns a leaving client's jobs.
//! * **Counted once.** `cmd-reserve` and `cmd-reserve-with-timeout` are
//!   counted by the session's core when the command is parsed, never by
//!   the shards; a spanning wait counts once in `current-waiting` (by the
//!   session's core, while armed) and in every watched tube's
//!   `current-waiting` (by its shard, while registered).
//!
//! # Time, DEADLINE_SOON and TTR
//! The session keeps its reservations on every shard with their deadlines
//! ([`Holdings`]): the shard that reserves a job for it sends the deadline
//! with the job, and a `touch` answer would send the new one. DEADLINE_SOON
//! is the session's decision, by beanstalkd's rule on the soonest of them:
//! no shard knows the others' deadlines. A TTR expiry is the owning
//! shard's business (the job goes back to ready there, and may be served
//! at once); the shard then sends [`SpanAnswer::Expired`] to the session.
//! The session needs the notice only to forget jobs sooner: the rule
//! (a reservation has run out once the clock is past its deadline) is the
//! same on both sides and read from one monotonic clock, so whatever the
//! session sends after the deadline reaches a shard that has expired the
//! job first. While a `touch` is on its way the session knows only the old
//! deadline, but it decides nothing meanwhile (a connection runs one
//! command at a time), and the answer records the job afresh. The shards
//! never time spanning waits.
//!
//! # Messages and ownership
//! [`ToShard`] and [`ToSession`] are what the mailbox rings will carry
//! (one ring per ordered pair of cores, in order). What crosses cores is
//! owned by the message: a job's [`crate::engine::Body`] is shared by an
//! atomic reference count over bytes never written once it exists, so it
//! is already `Send` and `Sync` and needs nothing more: its last owner may
//! free it on any core (mimalloc takes frees from other threads, and the
//! accounting of large bodies' mappings is process-wide). A body being
//! received, a `BodyBuilder`, must not cross: its drop adjusts its core's
//! count of memory made resident ahead. The claim word is an `Arc` of an
//! atomic, and [`ClientId`] and ranks are plain numbers; the compiler
//! checks below that both envelopes are `Send`. The protocol needs the
//! rings' order only
//! within one session's messages to one shard (a disconnect after the
//! requests before it); every answer carries its round, so a stale one is
//! recognised and dropped.
//!
//! # Costs
//! An immediate reserve across `n` shards costs `n` probes and one take (a
//! hop each way, twice) and `n - 1` unwaits, which need no answer; a wait
//! costs the probes, one served answer and the unwaits. A round is retried
//! only when a job that beats a report was left ready meanwhile: at equal
//! priority a new put almost never beats one (its id is larger, unless its
//! put line was accepted before the reported job's and its body came
//! after), so retries come from lower priorities, releases and kicks of
//! older jobs, each retry seeing what spoilt the one before. No bound is
//! put on retries.
//!
//! # What it must never do
//! Reserve a job without winning the claim word; answer a reserve twice;
//! answer from a round's reports when the round is dirty; let a shard time
//! or count a spanning wait in its own `current-waiting`.

use crate::engine::{Claim, ClientId, Engine, JobRef, Nanos, Rank, SAFETY_MARGIN_NS, TakeOutcome, secs};
use crate::shard::route::ShardId;

#[cfg(test)]
pub(crate) mod sim;
#[cfg(test)]
mod tests;

/// A session, as shards address their answers: its core and its
/// connection there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionRef {
    pub core: ShardId,
    pub conn: u32,
}

/// A session's request to a shard about one of its spanning waits.
#[derive(Debug)]
pub enum SpanRequest {
    /// Register wait `wait` (its first round) or move it to `round`, and
    /// report.
    Probe { claim: Claim, wait: u64, round: u64 },
    /// Take the job of `rank` for `round`, if it is still the best here,
    /// with that rank, or else the best here if it beats `bound` (the
    /// least rank the other shards of the round reported); only if the
    /// round can be won.
    Take { round: u64, rank: Rank, bound: Option<Rank> },
    /// Drop the registration of wait `wait`; no answer.
    Unwait { wait: u64 },
}

/// A shard's answer to a session.
#[derive(Debug, PartialEq, Eq)]
pub enum SpanAnswer {
    /// The best ready job the shard has for the session (none: `None`),
    /// for a probe of `round`.
    Report { round: u64, best: Option<Rank> },
    /// The registration could not be made for want of memory.
    OutOfMemory { round: u64 },
    /// The take of `round` won: the job is reserved for the session.
    Taken { round: u64, job: JobRef, deadline: Nanos },
    /// The job to take was gone; the best the shard has now.
    Missed { round: u64, best: Option<Rank> },
    /// The take found `round` dirty; nothing was taken.
    Dirty { round: u64 },
    /// The take found `round` over; nothing was taken.
    Ended { round: u64 },
    /// An armed wait was served when a job became ready.
    Served { wait: u64, round: u64, job: JobRef, deadline: Nanos },
    /// Some of the session's reservations on this shard ran out (see
    /// "Time, DEADLINE_SOON and TTR").
    Expired,
}

/// A request on its way to a shard, from a session whose proxy client
/// there is `client`.
#[derive(Debug)]
pub struct ToShard {
    pub from: SessionRef,
    pub client: ClientId,
    pub request: SpanRequest,
}

/// An answer on its way to a session.
#[derive(Debug)]
pub struct ToSession {
    pub to: SessionRef,
    pub shard: ShardId,
    pub answer: SpanAnswer,
}

// What crosses cores must be allowed to.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<ToShard>();
    send::<ToSession>();
};

/// A request the session's side wants sent: to `shard`, for the session's
/// proxy client there.
pub type Outgoing = (ShardId, ClientId, SpanRequest);

// ----- the shard's side -----------------------------------------------------

/// Runs a session's request on a shard's engine and returns the answer, if
/// it has one.
pub fn execute(engine: &mut Engine, client: ClientId, request: SpanRequest, now: Nanos) -> Option<SpanAnswer> {
    match request {
        SpanRequest::Probe { claim, wait, round } => Some(match engine.span_probe(client, &claim, wait, round, now) {
            Ok(best) => SpanAnswer::Report { round, best },
            Err(_) => SpanAnswer::OutOfMemory { round },
        }),
        SpanRequest::Take { round, rank, bound } => Some(match engine.span_take(client, round, rank, bound, now) {
            TakeOutcome::Taken { job, deadline } => SpanAnswer::Taken { round, job, deadline },
            TakeOutcome::Missed(best) => SpanAnswer::Missed { round, best },
            TakeOutcome::Dirty => SpanAnswer::Dirty { round },
            TakeOutcome::Ended => SpanAnswer::Ended { round },
        }),
        SpanRequest::Unwait { wait } => {
            engine.span_unwait(client, wait);
            None
        }
    }
}

/// Hands `send` the answers the engine owes sessions after any call on it
/// (a put, a release, a timer...): spanning waits it served, then expiry
/// notices.
pub fn owed(engine: &mut Engine, mut send: impl FnMut(ClientId, SpanAnswer)) {
    for s in engine.take_span_served() {
        send(s.client, SpanAnswer::Served { wait: s.wait, round: s.round, job: s.job, deadline: s.deadline });
    }
    for c in engine.take_expiry_notices() {
        send(c, SpanAnswer::Expired);
    }
}

// ----- the session's side ---------------------------------------------------

/// A reservation a session holds, on whichever shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    pub id: u64,
    pub shard: ShardId,
    /// When its TTR runs out: it has run out once the clock is past this.
    pub deadline: Nanos,
}

/// The session's reservations across shards, for DEADLINE_SOON and for
/// routing the commands on them. A connection holds few jobs at once, so a
/// list does.
#[derive(Debug, Default)]
pub struct Holdings {
    held: Vec<Held>,
    /// How many of `held` lie on each shard, by index: with every one on
    /// the shard asked about, [`Holdings::all_on`] needs no walk.
    on: Vec<u32>,
}

impl Holdings {
    /// Records a reservation (again, with its new deadline, for a job held
    /// before: an expired job can come back to the same session).
    pub fn hold(&mut self, id: u64, shard: ShardId, deadline: Nanos) {
        self.release(id);
        self.held.push(Held { id, shard, deadline });
        let i = shard.0 as usize;
        if self.on.len() <= i {
            self.on.resize(i + 1, 0);
        }
        self.on[i] += 1;
    }

    /// Forgets a reservation (deleted, released, buried); returns it. The
    /// others keep their order (see [`Holdings::in_order`]).
    pub fn release(&mut self, id: u64) -> Option<Held> {
        let i = self.held.iter().position(|h| h.id == id)?;
        let held = self.held.remove(i);
        self.on[held.shard.0 as usize] -= 1;
        Some(held)
    }

    /// A `touch` moved the deadline; the reservation keeps its place, as
    /// beanstalkd's list of a client's jobs does. Recorded afresh when
    /// missing: an expiry notice for another job may have made the session
    /// forget this one, by its old deadline, while the touch was on its way.
    pub fn touch(&mut self, id: u64, shard: ShardId, deadline: Nanos) {
        match self.held.iter_mut().find(|h| h.id == id) {
            Some(held) if held.shard == shard => held.deadline = deadline,
            _ => self.hold(id, shard, deadline),
        }
    }

    /// Every reservation recorded, in the order they were made: the order
    /// a leaving session gives them back in, as beanstalkd does.
    pub fn in_order(&self) -> impl Iterator<Item = Held> + '_ {
        self.held.iter().copied()
    }

    pub fn get(&self, id: u64) -> Option<Held> {
        self.held.iter().find(|h| h.id == id).copied()
    }

    /// Forgets the reservations on `shard` that have run out by `now` (an
    /// expiry notice from it).
    pub fn prune(&mut self, shard: ShardId, now: Nanos) {
        let on = &mut self.on;
        self.held.retain(|h| {
            let keep = h.shard != shard || h.deadline >= now;
            if !keep {
                on[h.shard.0 as usize] -= 1;
            }
            keep
        });
    }

    /// Reservations not run out at `now`, on any shard.
    pub fn live(&self, now: Nanos) -> impl Iterator<Item = Held> + '_ {
        self.held.iter().copied().filter(move |h| h.deadline >= now)
    }

    /// The soonest deadline of a reservation not run out at `now`.
    pub fn soonest(&self, now: Nanos) -> Option<Nanos> {
        self.live(now).map(|h| h.deadline).min()
    }

    /// beanstalkd's "deadline soon": the soonest reservation is within its
    /// safety margin.
    pub fn deadline_soon(&self, now: Nanos) -> bool {
        self.soonest(now).is_some_and(|d| now >= d.saturating_sub(SAFETY_MARGIN_NS))
    }

    /// The one shard on which every reservation not run out lies, if they
    /// all lie on `shard` (or there are none).
    pub fn all_on(&self, shard: ShardId, now: Nanos) -> bool {
        let on = self.on.get(shard.0 as usize).copied().unwrap_or(0);
        on as usize == self.held.len() || self.live(now).all(|h| h.shard == shard)
    }
}

/// Whether a reserve can go to one shard as an ordinary reserve, whose
/// engine then times it and decides DEADLINE_SOON: only when every watched
/// tube and every live reservation are on that shard. Otherwise it spans
/// (even with one watched shard: a reservation elsewhere must still earn
/// DEADLINE_SOON).
pub fn single_shard(mut watched: impl Iterator<Item = ShardId>, holdings: &Holdings, now: Nanos) -> Option<ShardId> {
    let first = watched.next()?;
    (watched.all(|s| s == first) && holdings.all_on(first, now)).then_some(first)
}

/// A session's part of the protocol that outlives one reserve: its claim
/// word and the next round it will use.
#[derive(Debug, Default)]
pub struct SpanSession {
    claim: Claim,
    last_round: u64,
}

impl SpanSession {
    pub fn claim(&self) -> &Claim {
        &self.claim
    }

    fn next_round(&mut self) -> u64 {
        self.last_round += 1;
        self.last_round
    }
}

/// How a spanning reserve ended, for the session to answer its client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Reserved { shard: ShardId, job: JobRef, deadline: Nanos },
    TimedOut,
    DeadlineSoon,
    OutOfMemory,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Reports of the round are coming in.
    Probing,
    /// A take is out to the part at this index.
    Taking(usize),
    /// Armed: a shard will serve it, or the timer end it.
    Armed,
    /// The session tried to end it and found the word closed by a shard:
    /// that shard's job is on its way.
    Claimed,
    Done,
}

/// One shard of a spanning reserve: its number, the session's proxy
/// client there, and its latest report in this round.
#[derive(Clone, Copy, Debug)]
struct Part {
    shard: ShardId,
    client: ClientId,
    reported: bool,
    best: Option<Rank>,
}

/// The session's side of one reserve that spans shards (see the module
/// doc for the protocol). Driven by [`SpanReserve::answer`] for each
/// answer from a shard and [`SpanReserve::fire`] when its
/// [`SpanReserve::timer`] is due; each returns the outcome once, and
/// leaves the requests to send in `out`.
#[derive(Debug)]
pub struct SpanReserve {
    wait: u64,
    round: u64,
    parts: Vec<Part>,
    /// Reports of this round still to come.
    pending: usize,
    phase: Phase,
    /// When a reserve-with-timeout times out (`None` for plain reserve).
    timeout_at: Option<Nanos>,
    /// When the wait was armed. A reservation that runs out while armed
    /// still earns DEADLINE_SOON, as beanstalkd's tick gives a waiting
    /// client whose job it times out, even when the tick comes late.
    armed_at: Nanos,
}

impl SpanReserve {
    /// Starts a reserve over `parts` (each watched shard with the session's
    /// proxy client there; at least one) with `timeout_s` seconds
    /// (`None`: plain reserve).
    pub fn start(
        session: &mut SpanSession,
        parts: &[(ShardId, ClientId)],
        timeout_s: Option<u32>,
        now: Nanos,
        out: &mut Vec<Outgoing>,
    ) -> SpanReserve {
        assert!(!parts.is_empty(), "a reserve over no shard");
        let mut reserve = SpanReserve {
            wait: 0,
            round: 0,
            parts: parts.iter().map(|&(shard, client)| Part { shard, client, reported: false, best: None }).collect(),
            pending: 0,
            phase: Phase::Probing,
            timeout_at: timeout_s.map(|s| now + secs(s)),
            armed_at: now,
        };
        // The first round names the wait.
        let round = session.next_round();
        reserve.wait = round;
        reserve.probe(session, round, out);
        reserve
    }

    /// The wait's name (its first round), as registrations know it.
    pub fn wait(&self) -> u64 {
        self.wait
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Whether the wait is armed (counted in the session's
    /// `current-waiting`).
    pub fn is_armed(&self) -> bool {
        matches!(self.phase, Phase::Armed | Phase::Claimed)
    }

    /// The round the word is in (for tests and assertions).
    pub fn round(&self) -> u64 {
        self.round
    }

    /// Starts `round`: probes every part (again).
    fn probe(&mut self, session: &mut SpanSession, round: u64, out: &mut Vec<Outgoing>) {
        self.round = round;
        session.claim.begin(round);
        self.phase = Phase::Probing;
        self.pending = self.parts.len();
        for part in &mut self.parts {
            part.reported = false;
            let request = SpanRequest::Probe { claim: session.claim.clone(), wait: self.wait, round: self.round };
            out.push((part.shard, part.client, request));
        }
    }

    /// Takes an answer from `shard`.
    pub fn answer(
        &mut self,
        session: &mut SpanSession,
        holdings: &Holdings,
        shard: ShardId,
        answer: SpanAnswer,
        now: Nanos,
        out: &mut Vec<Outgoing>,
    ) -> Option<Outcome> {
        let Some(i) = self.parts.iter().position(|p| p.shard == shard) else {
            panic!("an answer from shard {shard:?}, which this reserve does not span");
        };
        match (self.phase, answer) {
            (Phase::Probing, SpanAnswer::Report { round, best }) if round == self.round => {
                assert!(!self.parts[i].reported, "two reports from one shard in one round");
                self.parts[i].reported = true;
                self.parts[i].best = best;
                self.pending -= 1;
                if self.pending == 0 {
                    return self.decide(session, holdings, now, out);
                }
                None
            }
            (Phase::Probing, SpanAnswer::OutOfMemory { round }) if round == self.round => {
                // Nothing can have claimed a probing round: the session
                // ends it.
                assert!(session.claim.close(self.round), "a probing round closed by a shard");
                self.finish(Outcome::OutOfMemory, None, out)
            }
            (Phase::Taking(t), SpanAnswer::Taken { round, job, deadline }) if round == self.round && t == i => {
                self.finish(Outcome::Reserved { shard, job, deadline }, Some(i), out)
            }
            (Phase::Taking(t), SpanAnswer::Missed { round, best }) if round == self.round && t == i => {
                self.parts[i].best = best;
                self.decide(session, holdings, now, out)
            }
            (Phase::Taking(t), SpanAnswer::Dirty { round }) if round == self.round && t == i => {
                self.reprobe(session, out);
                None
            }
            (Phase::Taking(t), SpanAnswer::Ended { round }) if round == self.round && t == i => {
                panic!("a take of round {round} found it ended, which only the session does while not taking");
            }
            (Phase::Armed | Phase::Claimed, SpanAnswer::Served { wait, round, job, deadline })
                if wait == self.wait && round == self.round =>
            {
                self.finish(Outcome::Reserved { shard, job, deadline }, Some(i), out)
            }
            // A half-close crossed a take that won: its job is the answer.
            (Phase::Claimed, SpanAnswer::Taken { round, job, deadline }) if round == self.round => {
                self.finish(Outcome::Reserved { shard, job, deadline }, Some(i), out)
            }
            (_, SpanAnswer::Served { wait, round, .. }) => {
                panic!("served wait {wait} round {round} unexpected in {:?} of wait {}", self.phase, self.wait)
            }
            // An answer of an earlier round (a report, a take's failure)
            // or an expiry notice, which the session's holdings take.
            _ => None,
        }
    }

    /// Decides on the reports of the round, as beanstalkd's reserve does
    /// at the instant it runs.
    fn decide(
        &mut self,
        session: &mut SpanSession,
        holdings: &Holdings,
        now: Nanos,
        out: &mut Vec<Outgoing>,
    ) -> Option<Outcome> {
        assert!(self.parts.iter().all(|p| p.reported), "decided before every report was in");
        let best = self.parts.iter().enumerate().filter_map(|(i, p)| p.best.map(|b| (b, i))).min();
        if let Some((rank, i)) = best {
            self.phase = Phase::Taking(i);
            let bound = self.parts.iter().enumerate().filter(|&(j, _)| j != i).filter_map(|(_, p)| p.best).min();
            let take = SpanRequest::Take { round: self.round, rank, bound };
            out.push((self.parts[i].shard, self.parts[i].client, take));
            return None;
        }
        // Nothing ready in an unpaused tube: beanstalkd would wait, and
        // its timer would answer at once when already due.
        let soon = holdings.deadline_soon(now);
        let timed_out = self.timeout_at.is_some_and(|at| at <= now);
        if soon || timed_out {
            let outcome = if soon { Outcome::DeadlineSoon } else { Outcome::TimedOut };
            return self.close_probing(session, outcome, out);
        }
        match session.claim.arm(self.round) {
            Ok(()) => {
                self.phase = Phase::Armed;
                self.armed_at = now;
            }
            Err(_) => self.reprobe(session, out),
        }
        None
    }

    /// The round was spoilt: a new one.
    fn reprobe(&mut self, session: &mut SpanSession, out: &mut Vec<Outgoing>) {
        let round = session.next_round();
        self.probe(session, round, out);
    }

    /// Gives `outcome` if the round is still clean; probes again if not.
    fn close_probing(
        &mut self,
        session: &mut SpanSession,
        outcome: Outcome,
        out: &mut Vec<Outgoing>,
    ) -> Option<Outcome> {
        match session.claim.close_probing(self.round) {
            Ok(()) => self.finish(outcome, None, out),
            Err(_) => {
                self.reprobe(session, out);
                None
            }
        }
    }

    /// Ends the reserve with `outcome`; every shard but the one that
    /// answered with a job drops its registration.
    fn finish(&mut self, outcome: Outcome, served_by: Option<usize>, out: &mut Vec<Outgoing>) -> Option<Outcome> {
        self.phase = Phase::Done;
        for (i, part) in self.parts.iter().enumerate() {
            if Some(i) != served_by {
                out.push((part.shard, part.client, SpanRequest::Unwait { wait: self.wait }));
            }
        }
        Some(outcome)
    }

    /// When [`SpanReserve::fire`] must run next: only while armed (a probe
    /// in flight decides on time when its reports are in).
    /// (The reservations that count are those live when the wait was
    /// armed, so `_now` decides nothing.)
    pub fn timer(&self, holdings: &Holdings, _now: Nanos) -> Option<Nanos> {
        if self.phase != Phase::Armed {
            return None;
        }
        let soon = holdings.soonest(self.armed_at).map(|d| d.saturating_sub(SAFETY_MARGIN_NS));
        [self.timeout_at, soon].into_iter().flatten().min()
    }

    /// The timer is due: DEADLINE_SOON or TIMED_OUT if either holds now,
    /// given only if the session ends the wait before a shard serves it.
    pub fn fire(
        &mut self,
        session: &mut SpanSession,
        holdings: &Holdings,
        now: Nanos,
        out: &mut Vec<Outgoing>,
    ) -> Option<Outcome> {
        if self.phase != Phase::Armed {
            return None;
        }
        let soon = holdings.soonest(self.armed_at).is_some_and(|d| now >= d.saturating_sub(SAFETY_MARGIN_NS));
        let outcome = if soon {
            Outcome::DeadlineSoon
        } else if self.timeout_at.is_some_and(|at| at <= now) {
            Outcome::TimedOut
        } else {
            return None;
        };
        self.end(session, outcome, out)
    }

    /// The client half-closed its connection: beanstalkd answers a waiting
    /// client TIMED_OUT at once. A job already on its way is the answer
    /// instead.
    pub fn half_close(&mut self, session: &mut SpanSession, out: &mut Vec<Outgoing>) -> Option<Outcome> {
        match self.phase {
            Phase::Done | Phase::Claimed => None,
            _ => self.end(session, Outcome::TimedOut, out),
        }
    }

    /// The client has gone: the wait ends without an answer. The caller
    /// then sends its disconnect to every shard, which drops the
    /// registrations and puts back any job already reserved for it.
    pub fn abandon(&mut self, session: &mut SpanSession) {
        if self.phase != Phase::Done {
            session.claim.close(self.round);
            self.phase = Phase::Done;
        }
    }

    fn end(&mut self, session: &mut SpanSession, outcome: Outcome, out: &mut Vec<Outgoing>) -> Option<Outcome> {
        if session.claim.close(self.round) {
            self.finish(outcome, None, out)
        } else {
            self.phase = Phase::Claimed;
            None
        }
    }
}
