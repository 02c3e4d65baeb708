//! One shard's part in a reserve whose watch list spans shards: the claim
//! word a session shares with every shard it waits on, and the engine's
//! primitives the protocol of [`crate::shard::spanning`] is made of (that
//! module's doc comment has the protocol, its invariants and why they
//! hold).
//!
//! A spanning wait is *registered* on a shard by [`Engine::span_probe`]:
//! the client joins the waiter queue of each of its watched tubes here, in
//! arrival order like any waiter, and the call answers the best ready job
//! the shard has for it (its *report*) without serving anything. From then
//! on the claim word decides what the registration is:
//!
//! * **probing** (or **dirty**): the session is still deciding. The wait is
//!   not served; it keeps its place in the queues, and waiters behind it
//!   are served as if it were not there. A job that becomes ready here and
//!   stays ready (no armed waiter took it) and beats what the shard last
//!   reported marks the word dirty, so that a decision resting on that
//!   report fails (`Engine::notice_ready`, after every serve).
//! * **open** (armed): the wait is served like any waiter, first come first
//!   served in each tube, after the shard has claimed it with one
//!   compare-exchange on the word; a failed claim (another shard served it,
//!   or the session ended it) ends the registration here and the job goes
//!   to the next waiter.
//! * **closed**: the wait is over; the registration is dropped when met.
//!
//! [`Engine::span_take`] reserves a job a session chose from the reports,
//! claiming the word first; [`Engine::span_unwait`] drops a registration
//! the session no longer needs.
//!
//! # Invariants
//! * A registration never serves a wait other than its own: it acts only
//!   while the word holds the round it last answered, and a session never
//!   reuses a round, so a stale registration (of an earlier round or an
//!   earlier wait) finds the word changed and does nothing.
//! * Every job a registration receives was claimed first: exactly one
//!   transition closes a round, so a wait is served at most once across
//!   all shards.
//! * Spanning waits are not counted in this shard's `current-waiting` nor
//!   timed here (the session's core counts its connections and runs their
//!   timeouts and DEADLINE_SOON); they are counted in each watched tube's
//!   `current-waiting`, as any waiter.
//! * Nothing here allocates after the registration: room for the answer
//!   owed to each registered wait is made when it registers, and room for
//!   every remote client's expiry notice when it joins.
//!
//! # What it must never do
//! Serve a registration whose word it has not claimed; change a counter
//! or a job's place when a claim fails (nothing was held, so nothing goes
//! back).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::job::NIL;
use super::{ClientId, Engine, JobRef, Nanos, is_live, reserve_total};
use crate::memory::OutOfMemory;

/// A ready job's place in reserve order: lowest priority first, then
/// lowest id (ids come from one counter for every shard, so ranks from
/// different shards compare as one server's would).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rank {
    pub pri: u32,
    pub id: u64,
}

/// The state part of a claim word (its low [`STATE_BITS`] bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimState {
    /// The session is deciding from the shards' reports of this round.
    Probing = 0,
    /// A shard saw a job that beats its report of this round: the round's
    /// decision must not be taken.
    Dirty = 1,
    /// The wait is armed: the first shard to claim it serves it.
    Open = 2,
    /// The round is over: a shard took or served it, or the session ended
    /// it (timeout, DEADLINE_SOON, disconnect).
    Closed = 3,
}

const STATE_BITS: u32 = 2;
const STATE_MASK: u64 = (1 << STATE_BITS) - 1;
/// Rounds must fit above the state bits.
pub const ROUND_MAX: u64 = u64::MAX >> STATE_BITS;

fn pack(round: u64, state: ClaimState) -> u64 {
    debug_assert!(round <= ROUND_MAX);
    (round << STATE_BITS) | state as u64
}

fn unpack(word: u64) -> (u64, ClaimState) {
    let state = match word & STATE_MASK {
        0 => ClaimState::Probing,
        1 => ClaimState::Dirty,
        2 => ClaimState::Open,
        _ => ClaimState::Closed,
    };
    (word >> STATE_BITS, state)
}

/// The claim word of a session's reserves that span shards: the round the
/// session is in and its [`ClaimState`], in one atomic shared by the
/// session's core and every shard it waits on. One per session, reused
/// for every reserve: rounds only grow, so a word never returns to a value
/// an old registration could act on.
///
/// Nothing is published through the word: jobs, reports and answers
/// travel in messages, which the mailbox orders. The word only decides who
/// acts, so each transition needs atomicity and nothing more; the
/// acquire/release orderings cost nothing beyond that on x86 and keep the
/// reasoning simple elsewhere.
#[derive(Clone, Debug)]
pub struct Claim(Arc<AtomicU64>);

impl Default for Claim {
    fn default() -> Claim {
        Claim(Arc::new(AtomicU64::new(pack(0, ClaimState::Closed))))
    }
}

/// What a shard finds when it tries to serve an armed registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Serve {
    /// Claimed: the wait is this shard's to serve.
    Claimed,
    /// Not armed in the registration's round (still probing, dirty, or the
    /// session has moved to a round this shard has not answered yet): keep
    /// its place, serve the next waiter.
    NotYet,
    /// The round is closed: the wait is over, drop the registration.
    Over,
}

impl Claim {
    pub fn load(&self) -> (u64, ClaimState) {
        unpack(self.0.load(Ordering::Acquire))
    }

    fn exchange(&self, round: u64, from: ClaimState, to: ClaimState) -> Result<(), (u64, ClaimState)> {
        self.0
            .compare_exchange(pack(round, from), pack(round, to), Ordering::AcqRel, Ordering::Acquire)
            .map(drop)
            .map_err(unpack)
    }

    /// Session: starts `round` (probing). Only from a dirty or closed word
    /// and a larger round, which no shard ever changes, so a plain swap
    /// races with nothing.
    pub fn begin(&self, round: u64) {
        assert!(round <= ROUND_MAX, "claim rounds exhausted");
        let (old, state) = unpack(self.0.swap(pack(round, ClaimState::Probing), Ordering::AcqRel));
        assert!(
            old < round && matches!(state, ClaimState::Dirty | ClaimState::Closed),
            "round {round} begun over {old} {state:?}"
        );
    }

    /// Session: arms the wait of `round`; fails (with what the word holds)
    /// when a shard has made the round dirty.
    pub fn arm(&self, round: u64) -> Result<(), (u64, ClaimState)> {
        self.exchange(round, ClaimState::Probing, ClaimState::Open)
    }

    /// Session: ends a round it has decided on while probing (TIMED_OUT,
    /// DEADLINE_SOON, OUT_OF_MEMORY); fails when the round became dirty,
    /// since the decision rests on reports that may be stale.
    pub fn close_probing(&self, round: u64) -> Result<(), (u64, ClaimState)> {
        self.exchange(round, ClaimState::Probing, ClaimState::Closed)
    }

    /// Session: ends `round` whatever its state (a timeout or DEADLINE_SOON
    /// while armed, a disconnect); false when a shard closed it first, in
    /// which case that shard's answer (a job) is on its way.
    pub fn close(&self, round: u64) -> bool {
        loop {
            let (r, state) = self.load();
            assert_eq!(r, round, "closing a round that is not the session's");
            if state == ClaimState::Closed {
                return false;
            }
            if self.exchange(round, state, ClaimState::Closed).is_ok() {
                return true;
            }
        }
    }

    /// Shard: takes `round` for an immediate reserve; fails when the round
    /// is dirty, closed or not current.
    pub(super) fn take(&self, round: u64) -> Result<(), (u64, ClaimState)> {
        self.exchange(round, ClaimState::Probing, ClaimState::Closed)
    }

    /// Shard: tries to claim an armed registration that answered `round`.
    pub(super) fn serve(&self, round: u64) -> Serve {
        loop {
            match self.load() {
                (r, _) if r != round => return Serve::NotYet,
                (_, ClaimState::Open) => {
                    if self.exchange(round, ClaimState::Open, ClaimState::Closed).is_ok() {
                        return Serve::Claimed;
                    }
                }
                (_, ClaimState::Closed) => return Serve::Over,
                (_, ClaimState::Probing | ClaimState::Dirty) => return Serve::NotYet,
            }
        }
    }

    /// Whether a registration that answered `round` is armed now.
    pub(super) fn is_open(&self, round: u64) -> bool {
        self.load() == (round, ClaimState::Open)
    }

    /// Shard: marks `round` dirty; true when the wait turned out to be
    /// armed (the session armed it first), so the shard must serve it.
    pub(super) fn dirty(&self, round: u64) -> bool {
        loop {
            match self.exchange(round, ClaimState::Probing, ClaimState::Dirty) {
                Ok(()) => return false,
                Err((r, ClaimState::Open)) if r == round => return true,
                Err((r, ClaimState::Probing)) if r == round => continue,
                Err(_) => return false,
            }
        }
    }
}

/// A spanning wait registered on this shard.
#[derive(Debug)]
pub(super) struct Span {
    pub claim: Claim,
    /// The session's name for the wait (its first round).
    pub wait: u64,
    /// The round this shard last answered.
    pub round: u64,
    /// The best job it reported then (or later, with
    /// [`TakeOutcome::Missed`]).
    pub reported: Option<Rank>,
}

/// What [`Engine::span_take`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TakeOutcome {
    /// The job is reserved for the client; its TTR runs out at `deadline`.
    Taken { job: JobRef, deadline: Nanos },
    /// The job is no longer the client's best here (another client took
    /// it, or its tube was paused) and the best the shard has now, given,
    /// does not beat the bound.
    Missed(Option<Rank>),
    /// The round is dirty: nothing was taken, the session must ask again.
    Dirty,
    /// The round is over or not this registration's: nothing was taken.
    Ended,
}

/// A spanning wait served here when a job became ready: the answer its
/// session is owed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanServed {
    pub client: ClientId,
    pub wait: u64,
    pub round: u64,
    pub job: JobRef,
    pub deadline: Nanos,
}

/// The first waiter of a tube that can take a job now, if any.
pub(super) enum NextWaiter {
    /// This client's wait takes the job (an ordinary waiter, or a spanning
    /// one just claimed); its queue entry is gone.
    Takes(u32),
    /// A spanning registration whose wait is over; its queue entry is
    /// gone and its wait must end here.
    Ended(u32),
    None,
}

impl Engine {
    /// A client whose session is on another core: it uses and watches
    /// nothing yet, is not counted as a connection, and when one of its
    /// reservations runs out here its session is told
    /// ([`Engine::take_expiry_notices`]).
    pub fn join_remote(&mut self) -> Result<ClientId, OutOfMemory> {
        // Room for every remote client's notice, made before the client
        // exists, so that a TTR expiry never allocates.
        reserve_total(&mut self.expiry_notices, self.clients.len() + 1)?;
        let c = self.join()?;
        self.clients[c.index()].remote = true;
        Ok(c)
    }

    /// The client's best ready job here, among its unpaused watched tubes.
    pub fn best_ready_for(&self, c: ClientId, now: Nanos) -> Option<Rank> {
        self.best_ready_watched(c.0, now).map(|k| self.rank(k))
    }

    /// Registers the client's spanning wait `wait` (or, when it is already
    /// registered, moves it to `round`) and reports the best ready job this
    /// shard has for it; nothing is served. A registration of an earlier wait still
    /// here is dropped first. Refused, changing nothing, when the memory
    /// for the registration cannot be had.
    pub fn span_probe(
        &mut self,
        c: ClientId,
        claim: &Claim,
        wait: u64,
        round: u64,
        now: Nanos,
    ) -> Result<Option<Rank>, OutOfMemory> {
        self.advance(now);
        let key = self.clients[c.index()].span;
        let current = key != NIL && self.spans[key as usize].wait == wait;
        if !current {
            assert!(key != NIL || self.clients[c.index()].wait.is_none(), "a spanning wait over an ordinary one");
            // Room for the registration, its queue entries, and the answer
            // a serve would owe it.
            self.spans.try_reserve()?;
            let owed = self.span_served.len() + self.spans.len() + 1;
            reserve_total(&mut self.span_served, owed)?;
            self.reserve_waiters(c.0)?;
            if key != NIL {
                self.end_wait(c.0);
            }
            let reported = self.best_ready_for(c, now);
            let key = self.spans.insert(Span { claim: claim.clone(), wait, round, reported });
            self.register(c.0, key);
            return Ok(reported);
        }
        let reported = self.best_ready_for(c, now);
        let span = &mut self.spans[key as usize];
        assert!(round > span.round, "round {round} probed after {}", span.round);
        span.round = round;
        span.reported = reported;
        Ok(reported)
    }

    /// Reserves the client's best job here for its spanning wait in
    /// `round`, when that job is still the one of `rank` the session chose,
    /// or beats `bound` (the least rank the session's other shards reported
    /// in the round, `None` when none reported a job), and the round can be
    /// claimed: the claim comes first, and a job is taken only with it.
    /// The rank, not the id alone: a job reported, then reserved and
    /// released by another client with a new priority, is the same id in
    /// another place in the order. The bound lets a take whose job another
    /// client took meanwhile reserve the next one at once when nothing
    /// elsewhere can beat it: in a clean round each other shard has nothing
    /// better than it reported (see the shard's spanning module), so a job
    /// here that beats every other report is the best of all.
    pub fn span_take(&mut self, c: ClientId, round: u64, rank: Rank, bound: Option<Rank>, now: Nanos) -> TakeOutcome {
        self.advance(now);
        let key = self.clients[c.index()].span;
        if key == NIL || self.spans[key as usize].round != round {
            return TakeOutcome::Ended;
        }
        // A round already spoilt is answered as such: a fresh report would
        // only lead to a take that fails.
        if self.spans[key as usize].claim.load() == (round, ClaimState::Dirty) {
            return TakeOutcome::Dirty;
        }
        // One look at the tubes serves the check and, on a miss, the fresh
        // report.
        let best = self.best_ready_watched(c.0, now).map(|k| (k, self.rank(k)));
        let Some((k, _)) = best.filter(|&(_, best)| best == rank || bound.is_none_or(|bound| best < bound)) else {
            let reported = best.map(|(_, best)| best);
            self.spans[key as usize].reported = reported;
            return TakeOutcome::Missed(reported);
        };
        match self.spans[key as usize].claim.take(round) {
            Ok(()) => {}
            Err((r, ClaimState::Dirty)) if r == round => return TakeOutcome::Dirty,
            Err((r, ClaimState::Closed)) if r == round => {
                // The session ended the wait (a disconnect): it is over
                // here too.
                self.end_wait(c.0);
                return TakeOutcome::Ended;
            }
            Err(_) => return TakeOutcome::Ended,
        }
        self.end_wait(c.0);
        self.detach(k);
        self.enqueue_reserved(k, c.0, now);
        TakeOutcome::Taken { job: self.job_ref(k), deadline: self.jobs[k].deadline }
    }

    /// Drops the client's registration of spanning wait `wait`, if it is
    /// here; false when it is not (served here, never registered, or
    /// already dropped).
    pub fn span_unwait(&mut self, c: ClientId, wait: u64) -> bool {
        let key = self.clients[c.index()].span;
        if key == NIL || self.spans[key as usize].wait != wait {
            return false;
        }
        self.end_wait(c.0);
        true
    }

    /// Whether anything waits to be taken by [`Engine::take_span_served`]
    /// or [`Engine::take_expiry_notices`].
    pub fn owes_spans(&self) -> bool {
        !self.span_served.is_empty() || !self.expiry_notices.is_empty()
    }

    /// Spanning waits served here, in the order they were served.
    pub fn take_span_served(&mut self) -> std::vec::Drain<'_, SpanServed> {
        self.span_served.drain(..)
    }

    /// Remote clients with reservations that ran out here since the last
    /// call, each once.
    pub fn take_expiry_notices(&mut self) -> impl Iterator<Item = ClientId> + '_ {
        let clients = &mut self.clients;
        self.expiry_notices.drain(..).map(move |c| {
            clients[c as usize].expired_pending = false;
            ClientId(c)
        })
    }

    /// When the client's reservation of job `id` runs out, if the client
    /// holds it.
    pub fn reservation_deadline(&self, c: ClientId, id: u64) -> Option<Nanos> {
        self.reserved_by(c, id).map(|k| self.jobs[k].deadline)
    }

    /// A leaving client's reservation of job `id` goes back to ready (and
    /// may be handed to a waiter at once), as [`Engine::disconnect`] returns
    /// each of its jobs, with no counter moved: a session whose jobs lie on
    /// several shards gives them back one at a time, in the order it
    /// reserved them, before it disconnects. False when the client does not
    /// hold it (it ran out meanwhile).
    pub fn give_back(&mut self, c: ClientId, id: u64, now: Nanos) -> bool {
        self.advance(now);
        let Some(k) = self.reserved_by(c, id) else { return false };
        self.detach(k);
        self.enqueue_ready(k, now);
        true
    }

    // ----- the engine's side of the serve path ---------------------------

    fn rank(&self, k: u32) -> Rank {
        let job = &self.jobs[k];
        Rank { pri: job.pri, id: job.id }
    }

    /// Puts a new spanning registration in the queue of each watched tube.
    fn register(&mut self, c: u32, key: u32) {
        self.wait_seq += 1;
        let seq = self.wait_seq;
        let client = &mut self.clients[c as usize];
        client.wait = Some(super::client::Wait { seq, timeout_at: None });
        client.span = key;
        for &t in &client.watched {
            let tube = &mut self.tubes[t as usize];
            tube.waiters.push_back(super::tube::Waiter { client: c, seq });
            tube.waiting += 1;
        }
    }

    /// The spanning wait and round a waiting client is in, if it is one.
    pub(super) fn span_of(&self, c: u32) -> Option<(u64, u64)> {
        let key = self.clients[c as usize].span;
        (key != NIL).then(|| {
            let span = &self.spans[key as usize];
            (span.wait, span.round)
        })
    }

    /// Records that the reservation of remote client `c` ran out.
    pub(super) fn note_expiry(&mut self, c: u32) {
        let client = &mut self.clients[c as usize];
        if client.remote && !client.expired_pending {
            client.expired_pending = true;
            debug_assert!(self.expiry_notices.len() < self.expiry_notices.capacity(), "room for expiry notices");
            self.expiry_notices.push(c);
        }
    }

    /// Finds the oldest waiter of tube `t` that can take a job now,
    /// dropping stale entries on the way; a spanning registration still
    /// probing keeps its place and is passed over.
    pub(super) fn next_waiter(&mut self, t: u32) -> NextWaiter {
        let (tubes, clients, spans) = (&mut self.tubes, &self.clients, &self.spans);
        let waiters = &mut tubes[t as usize].waiters;
        let mut i = 0;
        while let Some(&w) = waiters.get(i) {
            if !is_live(clients, w) {
                waiters.remove(i);
                continue;
            }
            let key = clients[w.client as usize].span;
            if key == NIL {
                waiters.remove(i);
                return NextWaiter::Takes(w.client);
            }
            let span = &spans[key as usize];
            match span.claim.serve(span.round) {
                Serve::Claimed => {
                    waiters.remove(i);
                    return NextWaiter::Takes(w.client);
                }
                Serve::Over => {
                    waiters.remove(i);
                    return NextWaiter::Ended(w.client);
                }
                Serve::NotYet => i += 1,
            }
        }
        NextWaiter::None
    }

    /// Whether tube `t` has a waiter that would take a job now.
    pub(super) fn has_taker(&self, t: u32) -> bool {
        let tube = &self.tubes[t as usize];
        if tube.waiting == 0 {
            return false;
        }
        if self.spans.is_empty() {
            // Only ordinary waiters: a live one takes any job.
            return true;
        }
        tube.waiters.iter().any(|&w| {
            is_live(&self.clients, w) && {
                let key = self.clients[w.client as usize].span;
                key == NIL || self.spans[key as usize].claim.is_open(self.spans[key as usize].round)
            }
        })
    }

    /// After tube `t` has served what it could: a ready job left in it that
    /// beats what this shard reported to a probing registration marks that
    /// round dirty. True when a registration turned out to be armed (its
    /// session armed it while this ran), so that the tube must be served
    /// again.
    pub(super) fn notice_ready(&mut self, t: u32, now: Nanos) -> bool {
        if self.spans.is_empty() {
            return false;
        }
        let tube = &self.tubes[t as usize];
        if tube.is_paused(now) {
            return false;
        }
        let Some(best) = tube.ready.peek().map(|k| self.rank(k)) else {
            return false;
        };
        let mut armed = false;
        for &w in &tube.waiters {
            if !is_live(&self.clients, w) {
                continue;
            }
            let key = self.clients[w.client as usize].span;
            if key == NIL {
                continue;
            }
            let span = &self.spans[key as usize];
            let beaten = span.reported.is_none_or(|r| best < r);
            if beaten && span.claim.dirty(span.round) {
                armed = true;
            }
        }
        armed
    }

    /// Checks the spanning registrations' bookkeeping (for
    /// [`Engine::check_invariants`]).
    pub(super) fn check_spans(&self) {
        let mut registered = 0;
        for (c, client) in self.clients.iter() {
            if client.span != NIL {
                registered += 1;
                assert!(client.wait.is_some(), "client {c} registered without a wait");
                assert_eq!(client.timer_pos, super::heap::NO_POS, "a spanning wait with a timer here");
            }
            if client.expired_pending {
                assert!(client.remote && self.expiry_notices.contains(&c));
            }
        }
        assert_eq!(registered, self.spans.len(), "spanning registrations and their table");
        assert!(
            self.span_served.capacity() >= self.span_served.len() + self.spans.len(),
            "room for the answers owed to spanning waits"
        );
        let remote = self.clients.iter().filter(|(_, c)| c.remote).count();
        assert!(self.expiry_notices.capacity() >= remote, "room for every remote client's expiry notice");
    }
}

#[cfg(test)]
mod tests;
