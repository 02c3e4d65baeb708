//! The protocol on two shards, step by step: the session's side driven
//! with answers from real engines, delivered by hand so that each test
//! places its race where it wants it.

use super::*;
use crate::engine::{Body, ClaimState, EngineConfig, IdSource, NANOS_PER_SEC, PutOutcome, ReserveOutcome};
use crate::shard::route::shard_of_tube;

const S: Nanos = NANOS_PER_SEC;

/// Two shards sharing one id counter, a producer on each, and a session
/// watching tube `a` (on shard 0) and tube `b` (on shard 1).
struct Two {
    e: [Engine; 2],
    producer: [ClientId; 2],
    proxy: [ClientId; 2],
    names: [String; 2],
    session: SpanSession,
    holdings: Holdings,
}

/// A tube name that hashes to `shard` of two.
fn tube_on(shard: u32, avoid: &str) -> String {
    (0..).map(|i| format!("t{i}")).find(|n| shard_of_tube(n, 2).0 == shard && n != avoid).unwrap()
}

impl Two {
    fn new() -> Two {
        let ids = IdSource::default();
        let mut e = [0, 1].map(|s| Engine::with_id_source(EngineConfig { shard: s, shards: 2 }, ids.clone()));
        let names = [tube_on(0, ""), tube_on(1, "")];
        let producer = [0, 1].map(|s| {
            let c = e[s].join_remote().unwrap();
            e[s].use_tube(c, &names[s]).unwrap();
            c
        });
        let proxy = [0, 1].map(|s| {
            let c = e[s].join_remote().unwrap();
            e[s].watch(c, &names[s]).unwrap();
            c
        });
        Two { e, producer, proxy, names, session: SpanSession::default(), holdings: Holdings::default() }
    }

    fn parts(&self) -> Vec<(ShardId, ClientId)> {
        vec![(ShardId(0), self.proxy[0]), (ShardId(1), self.proxy[1])]
    }

    fn put(&mut self, s: usize, pri: u32, now: Nanos) -> u64 {
        let id = self.e[s].allocate_id();
        let put = self.e[s].put(self.producer[s], id, now, pri, 0, 10, Body::from_slice(b"job"), now);
        assert_eq!(put, PutOutcome::Inserted);
        id
    }

    /// Runs one request on its shard; returns the answer and whatever the
    /// shard then owes (served waits).
    fn run(&mut self, (shard, client, request): Outgoing, now: Nanos) -> Vec<(ShardId, SpanAnswer)> {
        let e = &mut self.e[shard.0 as usize];
        let mut answers: Vec<_> = execute(e, client, request, now).into_iter().map(|a| (shard, a)).collect();
        owed(e, |_, a| answers.push((shard, a)));
        e.check_invariants(now);
        answers
    }

    /// Whatever shard `s` owes after a call made outside the protocol.
    fn owed(&mut self, s: usize) -> Vec<(ShardId, SpanAnswer)> {
        let mut answers = Vec::new();
        owed(&mut self.e[s], |_, a| answers.push((ShardId(s as u32), a)));
        answers
    }

    /// Delivers every request, in order, and their answers, until the
    /// reserve is answered or nothing is left to deliver.
    fn settle(&mut self, r: &mut SpanReserve, mut out: Vec<Outgoing>, now: Nanos) -> Option<Outcome> {
        while !out.is_empty() {
            for request in std::mem::take(&mut out) {
                for (shard, answer) in self.run(request, now) {
                    if let Some(outcome) = r.answer(&mut self.session, &self.holdings, shard, answer, now, &mut out) {
                        for request in std::mem::take(&mut out) {
                            assert!(self.run(request, now).is_empty(), "an unwait is not answered");
                        }
                        return Some(outcome);
                    }
                }
            }
        }
        None
    }

    /// Delivers the round's probes and their reports, none of which may
    /// answer the reserve; returns what the session sends next.
    fn reports(&mut self, r: &mut SpanReserve, probes: Vec<Outgoing>, now: Nanos) -> Vec<Outgoing> {
        let mut next = Vec::new();
        for request in probes {
            for (shard, answer) in self.run(request, now) {
                assert!(r.answer(&mut self.session, &self.holdings, shard, answer, now, &mut next).is_none());
            }
        }
        next
    }

    fn start(&mut self, timeout: Option<u32>, now: Nanos) -> (SpanReserve, Vec<Outgoing>) {
        let mut out = Vec::new();
        let parts = self.parts();
        let r = SpanReserve::start(&mut self.session, &parts, timeout, now, &mut out);
        (r, out)
    }
}

fn reserved(outcome: Option<Outcome>) -> (ShardId, u64) {
    match outcome {
        Some(Outcome::Reserved { shard, job, .. }) => (shard, job.id),
        other => panic!("expected a reservation, got {other:?}"),
    }
}

#[test]
fn the_best_job_across_shards_is_taken_and_the_other_shard_unwaits() {
    let mut t = Two::new();
    let a = t.put(0, 10, 0);
    let b = t.put(1, 1, 0);
    let (mut r, out) = t.start(None, 0);
    assert_eq!(reserved(t.settle(&mut r, out, 0)), (ShardId(1), b));
    assert_eq!(t.e[1].reservation_deadline(t.proxy[1], b), Some(10 * S));
    // The job of `a` never moved; no shard still has the wait registered.
    assert_eq!(t.e[0].stats_job(a, 0).unwrap().state, "ready");
    assert!(!t.e[0].is_waiting(t.proxy[0]) && !t.e[1].is_waiting(t.proxy[1]));
    assert_eq!(t.session.claim().load().1, ClaimState::Closed);
}

#[test]
fn equal_priorities_across_shards_come_out_in_put_order() {
    let mut t = Two::new();
    let first = t.put(1, 5, 0);
    let second = t.put(0, 5, 0);
    let (mut r, out) = t.start(None, 0);
    assert_eq!(reserved(t.settle(&mut r, out, 0)).1, first);
    let (mut r, out) = t.start(None, 0);
    assert_eq!(reserved(t.settle(&mut r, out, 0)).1, second);
}

#[test]
fn a_better_job_left_ready_after_a_report_spoils_the_take_and_a_new_round_finds_it() {
    // The producer puts into `b`, then into `a`, one after the other; the
    // session's probe of `b` came before both. One server would give the
    // job of `b` (it was put first and is better); so must the shards.
    let mut t = Two::new();
    let (mut r, out) = t.start(None, 0);
    let mut out = out.into_iter();
    let probe_a = out.next().unwrap();
    let probe_b = out.next().unwrap();
    let mut next = Vec::new();
    for (shard, answer) in t.run(probe_b, 0) {
        assert!(r.answer(&mut t.session, &t.holdings, shard, answer, 0, &mut next).is_none());
    }
    let b = t.put(1, 1, 0);
    assert_eq!(t.session.claim().load().1, ClaimState::Dirty);
    t.put(0, 10, 0);
    for (shard, answer) in t.run(probe_a, 0) {
        assert!(r.answer(&mut t.session, &t.holdings, shard, answer, 0, &mut next).is_none());
    }
    // The reports say `a` has the only job: the take goes there and fails.
    assert!(matches!(&next[..], [(ShardId(0), _, SpanRequest::Take { round: 1, .. })]));
    assert_eq!(reserved(t.settle(&mut r, next, 0)), (ShardId(1), b));
    assert_eq!(r.round(), 2, "one more round");
}

#[test]
fn a_job_taken_by_another_client_meanwhile_is_missed_and_the_next_best_taken() {
    let mut t = Two::new();
    let a = t.put(0, 1, 0);
    let b = t.put(1, 2, 0);
    let (mut r, out) = t.start(None, 0);
    let next = t.reports(&mut r, out, 0);
    // Before the take arrives, another client of shard 0 takes `a`.
    let other = t.e[0].join_remote().unwrap();
    t.e[0].watch(other, &t.names[0].clone()).unwrap();
    assert!(matches!(t.e[0].reserve(other, None, 0), ReserveOutcome::Reserved(j) if j.id == a));
    assert_eq!(reserved(t.settle(&mut r, next, 0)), (ShardId(1), b));
    assert_eq!(r.round(), 1, "a missed take needs no new round");
}

/// The take carries the best other report as its bound: when its job is
/// gone but the next job of its shard still beats the bound, that job is
/// taken by the same take; when it does not, the take misses and the
/// session takes the other shard's.
#[test]
fn a_take_whose_job_is_gone_takes_the_next_one_of_its_shard_only_if_it_beats_the_other_reports() {
    for (next_pri, expect_next) in [(1, true), (3, false)] {
        let mut t = Two::new();
        let a = t.put(0, 0, 0);
        let a2 = t.put(0, next_pri, 0);
        let b = t.put(1, 2, 0);
        let (mut r, out) = t.start(None, 0);
        let mut next = t.reports(&mut r, out, 0);
        let bound = Some(Rank { pri: 2, id: b });
        assert!(
            matches!(&next[..], [(ShardId(0), _, SpanRequest::Take { round: 1, bound: sent, .. })] if *sent == bound)
        );
        let other = t.e[0].join_remote().unwrap();
        t.e[0].watch(other, &t.names[0].clone()).unwrap();
        assert!(matches!(t.e[0].reserve(other, None, 0), ReserveOutcome::Reserved(j) if j.id == a));
        let take = next.pop().unwrap();
        let answers = t.run(take, 0);
        let (shard, answer) = answers.into_iter().next().unwrap();
        if expect_next {
            assert!(matches!(&answer, SpanAnswer::Taken { job, .. } if job.id == a2));
        } else {
            assert_eq!(answer, SpanAnswer::Missed { round: 1, best: Some(Rank { pri: 3, id: a2 }) });
        }
        let mut more = Vec::new();
        let outcome = r.answer(&mut t.session, &t.holdings, shard, answer, 0, &mut more);
        let outcome = if expect_next { outcome } else { t.settle(&mut r, more, 0) };
        assert_eq!(reserved(outcome), if expect_next { (ShardId(0), a2) } else { (ShardId(1), b) });
        assert_eq!(r.round(), 1);
    }
}

#[test]
fn with_nothing_ready_the_wait_is_armed_and_served_by_the_first_shard_with_a_job() {
    let mut t = Two::new();
    let (mut r, out) = t.start(None, 0);
    assert!(t.settle(&mut r, out, 0).is_none());
    assert!(r.is_armed());
    assert_eq!(t.session.claim().load(), (1, ClaimState::Open));
    assert_eq!((t.e[0].stats_tube(&t.names[0], 0).unwrap().waiting, t.e[0].stats().waiting), (1, 0));
    assert_eq!(r.timer(&t.holdings, 0), None, "a plain reserve with no reservation has no timer");
    let b = t.put(1, 7, S);
    let mut out = Vec::new();
    let mut outcome = None;
    for (shard, answer) in t.owed(1) {
        outcome = r.answer(&mut t.session, &t.holdings, shard, answer, S, &mut out);
    }
    assert_eq!(reserved(outcome), (ShardId(1), b));
    assert!(matches!(&out[..], [(ShardId(0), _, SpanRequest::Unwait { wait: 1 })]));
    for request in out {
        t.run(request, S);
    }
    assert!(!t.e[0].is_waiting(t.proxy[0]));
    // A later job on the other shard stays ready.
    let a = t.put(0, 0, S);
    assert_eq!(t.e[0].stats_job(a, S).unwrap().state, "ready");
}

#[test]
fn timeout_zero_with_nothing_ready_times_out_at_once() {
    let mut t = Two::new();
    let (mut r, out) = t.start(Some(0), 0);
    assert_eq!(t.settle(&mut r, out, 0), Some(Outcome::TimedOut));
    assert!(!t.e[0].is_waiting(t.proxy[0]) && !t.e[1].is_waiting(t.proxy[1]));
}

#[test]
fn a_timeout_races_a_serve_through_the_word_and_exactly_one_wins() {
    let mut t = Two::new();
    let (mut r, out) = t.start(Some(2), 0);
    assert!(t.settle(&mut r, out, 0).is_none());
    assert_eq!(r.timer(&t.holdings, 0), Some(2 * S));
    // A job becomes ready on shard 1 and its shard claims the wait; the
    // answer is still on its way when the session's timer fires.
    let b = t.put(1, 0, 2 * S);
    let served = t.owed(1);
    let mut out = Vec::new();
    assert_eq!(r.fire(&mut t.session, &t.holdings, 2 * S, &mut out), None);
    assert!(out.is_empty());
    let (shard, answer) = served.into_iter().next().unwrap();
    assert_eq!(reserved(r.answer(&mut t.session, &t.holdings, shard, answer, 2 * S, &mut out)), (ShardId(1), b));

    // The other way round: the timer wins, and the shard passes the wait
    // over, leaving the job ready.
    let (mut r, out) = t.start(Some(1), 3 * S);
    assert!(t.settle(&mut r, out, 3 * S).is_none());
    let mut out = Vec::new();
    assert_eq!(r.fire(&mut t.session, &t.holdings, 4 * S, &mut out), Some(Outcome::TimedOut));
    let a = t.put(0, 0, 4 * S);
    assert!(t.owed(0).is_empty());
    assert_eq!(t.e[0].stats_job(a, 4 * S).unwrap().state, "ready");
    assert!(!t.e[0].is_waiting(t.proxy[0]), "the failed claim ended the registration");
}

#[test]
fn deadline_soon_counts_reservations_on_every_shard() {
    // The session holds a job of shard 0 due in a second and a half and
    // now waits on shard 1 only: shard 1 cannot know of the deadline, so
    // the reserve spans, and the session decides.
    let mut t = Two::new();
    t.holdings.hold(99, ShardId(0), S + S / 2);
    assert_eq!(single_shard([ShardId(1)].into_iter(), &t.holdings, 0), None);
    let mut out = Vec::new();
    let parts = [(ShardId(1), t.proxy[1])];
    let mut r = SpanReserve::start(&mut t.session, &parts, None, 0, &mut out);
    assert!(t.settle(&mut r, out, 0).is_none());
    assert_eq!(r.timer(&t.holdings, 0), Some(S / 2));
    let mut out = Vec::new();
    assert_eq!(r.fire(&mut t.session, &t.holdings, S / 2, &mut out), Some(Outcome::DeadlineSoon));
    // Inside the margin at the start, with nothing ready anywhere: at once.
    let mut out = Vec::new();
    let mut r = SpanReserve::start(&mut t.session, &parts, Some(10), S, &mut out);
    assert_eq!(t.settle(&mut r, out, S), Some(Outcome::DeadlineSoon));
    // With a job ready, the reserve goes ahead and takes it.
    let b = t.put(1, 0, S);
    let mut out = Vec::new();
    let mut r = SpanReserve::start(&mut t.session, &parts, Some(10), S, &mut out);
    assert_eq!(reserved(t.settle(&mut r, out, S)).1, b);
    // Once the reservation has run out it no longer counts.
    assert!(!t.holdings.deadline_soon(S + S / 2 + 1));
    assert_eq!(single_shard([ShardId(1)].into_iter(), &t.holdings, 2 * S), Some(ShardId(1)));
}

#[test]
fn a_paused_tube_is_passed_over() {
    let mut t = Two::new();
    let a = t.put(0, 0, 0);
    t.e[0].pause_tube(&t.names[0].clone(), 5, 0);
    let b = t.put(1, 9, 0);
    let (mut r, out) = t.start(None, 0);
    assert_eq!(reserved(t.settle(&mut r, out, 0)), (ShardId(1), b));
    // Only the paused job is left: inside the margin of a reservation,
    // DEADLINE_SOON (beanstalkd lets the client wait, and its timer,
    // already due, answers at the next tick); outside it, timeout 0 times
    // out.
    t.holdings.hold(99, ShardId(1), S / 2);
    let (mut r, out) = t.start(None, 0);
    assert_eq!(t.settle(&mut r, out, 0), Some(Outcome::DeadlineSoon));
    assert_eq!(t.e[0].stats_job(a, 0).unwrap().state, "ready");
    t.holdings.release(99);
    let (mut r, out) = t.start(Some(0), 0);
    assert_eq!(t.settle(&mut r, out, 0), Some(Outcome::TimedOut));
}

#[test]
fn a_half_close_that_crosses_a_winning_take_answers_with_the_job() {
    let mut t = Two::new();
    let b = t.put(1, 0, 0);
    let (mut r, out) = t.start(None, 0);
    let mut next = t.reports(&mut r, out, 0);
    let take = next.pop().unwrap();
    let answers = t.run(take, 0);
    // The client half-closes while the job is on its way.
    let mut out = Vec::new();
    assert_eq!(r.half_close(&mut t.session, &mut out), None);
    let (shard, answer) = answers.into_iter().next().unwrap();
    assert_eq!(reserved(r.answer(&mut t.session, &t.holdings, shard, answer, 0, &mut out)), (ShardId(1), b));
}

#[test]
fn a_disconnect_crossing_a_serve_puts_the_job_back() {
    let mut t = Two::new();
    let (mut r, out) = t.start(None, 0);
    assert!(t.settle(&mut r, out, 0).is_none());
    let b = t.put(1, 0, 0);
    let _lost_answer = t.owed(1);
    r.abandon(&mut t.session);
    for s in 0..2 {
        t.e[s].disconnect(t.proxy[s], 0);
        t.e[s].check_invariants(0);
    }
    assert_eq!(t.e[1].stats_job(b, 0).unwrap().state, "ready");
    assert_eq!(t.e[1].stats().reserved, 0);
}

#[test]
fn a_second_reserve_is_never_served_by_the_first_ones_registrations() {
    // The first wait times out; its unwaits are still on their way when
    // the second reserve starts (its word is at round 2). A job put on
    // shard 0 meanwhile is not served to the old registration there, which
    // answered round 1; the second reserve, once its probes are in, takes
    // it.
    let mut t = Two::new();
    let (mut r, out) = t.start(Some(1), 0);
    assert!(t.settle(&mut r, out, 0).is_none());
    let mut out = Vec::new();
    assert_eq!(r.fire(&mut t.session, &t.holdings, S, &mut out), Some(Outcome::TimedOut));
    let unwaits = out;
    let (mut r2, out) = t.start(None, S);
    let a = t.put(0, 0, S);
    assert!(t.owed(0).is_empty(), "the old registration serves nothing");
    assert_eq!(t.e[0].stats_job(a, S).unwrap().state, "ready");
    for request in unwaits {
        t.run(request, S);
    }
    assert_eq!(reserved(t.settle(&mut r2, out, S)), (ShardId(0), a));
    assert_eq!(t.e[0].best_ready_for(t.proxy[0], S), None);
    assert!(!t.e[0].is_waiting(t.proxy[0]) && !t.e[1].is_waiting(t.proxy[1]));
}

#[test]
fn messages_own_what_they_carry() {
    // A body crosses cores by its reference count, the claim by its Arc.
    let body = Body::from_slice(b"x");
    let answer = ToSession {
        to: SessionRef { core: ShardId(0), conn: 1 },
        shard: ShardId(1),
        answer: SpanAnswer::Served { wait: 1, round: 1, job: JobRef { id: 1, body: body.clone() }, deadline: 0 },
    };
    let moved = std::thread::spawn(move || answer).join().unwrap();
    assert!(matches!(moved.answer, SpanAnswer::Served { job, .. } if job.body == body));
    // Small enough for a ring slot beside today's replies.
    assert!(
        size_of::<ToShard>() <= 64 && size_of::<ToSession>() <= 64,
        "{} {}",
        size_of::<ToShard>(),
        size_of::<ToSession>()
    );
}

#[test]
fn a_touch_answer_that_crosses_an_expiry_notice_keeps_the_reservation() {
    // The session holds jobs 7 (due at 22 s) and 8 (due at 24 s) on shard
    // 1 and touches 8 (to 25 s); job 7's expiry notice, sent before the
    // touch's answer, arrives at 24.5 s and prunes by the deadlines known.
    let mut h = Holdings::default();
    h.hold(7, ShardId(1), 22 * S);
    h.hold(8, ShardId(1), 24 * S);
    h.prune(ShardId(1), 24 * S + S / 2);
    assert_eq!(h.get(8), None);
    h.touch(8, ShardId(1), 25 * S);
    assert_eq!(h.get(8).map(|held| held.deadline), Some(25 * S));
    assert!(h.deadline_soon(24 * S + S / 2));
}
