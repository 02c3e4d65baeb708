//! The engine's primitives for reserves that span shards, one rule at a
//! time, with the claim word driven by hand where a session would drive it.

use super::*;
use crate::engine::{Body, EngineConfig, NANOS_PER_SEC, PutOutcome, ReserveOutcome, Wake};

const S: Nanos = NANOS_PER_SEC;

fn engine() -> Engine {
    Engine::new(EngineConfig::default())
}

/// A remote client using and watching `tubes` (the first is used).
fn client(e: &mut Engine, tubes: &[&str]) -> ClientId {
    let c = e.join_remote().unwrap();
    e.use_tube(c, tubes[0]).unwrap();
    for t in tubes {
        e.watch(c, t).unwrap();
    }
    c
}

fn put(e: &mut Engine, c: ClientId, tube: &str, pri: u32, now: Nanos) -> u64 {
    e.use_tube(c, tube).unwrap();
    let id = e.allocate_id();
    assert_eq!(e.put(c, id, now, pri, 0, 10, Body::from_slice(b"x"), now), PutOutcome::Inserted);
    e.check_invariants(now);
    id
}

fn rank(pri: u32, id: u64) -> Option<Rank> {
    Some(Rank { pri, id })
}

fn served(e: &mut Engine) -> Vec<(ClientId, u64, u64)> {
    e.take_span_served().map(|s| (s.client, s.round, s.job.id)).collect()
}

#[test]
fn the_best_ready_job_for_a_client_passes_paused_tubes_over() {
    let mut e = engine();
    let p = client(&mut e, &["a"]);
    let w = client(&mut e, &["a", "b"]);
    assert_eq!(e.best_ready_for(w, 0), None);
    let a5 = put(&mut e, p, "a", 5, 0);
    let b1 = put(&mut e, p, "b", 1, 0);
    put(&mut e, p, "c", 0, 0);
    assert_eq!(e.best_ready_for(w, 0), rank(1, b1));
    assert!(e.pause_tube("b", 10, 0));
    assert_eq!(e.best_ready_for(w, 0), rank(5, a5));
    assert!(e.pause_tube("a", 10, 0));
    assert_eq!(e.best_ready_for(w, 0), None);
    // Read-only: nothing moved.
    assert_eq!(e.stats().ready, 3);
    e.check_invariants(0);
}

#[test]
fn a_probe_registers_without_serving_and_a_take_claims_first() {
    let mut e = engine();
    let p = client(&mut e, &["a"]);
    let w = client(&mut e, &["a"]);
    let id = put(&mut e, p, "a", 0, 0);
    let claim = Claim::default();
    claim.begin(1);
    assert_eq!(e.span_probe(w, &claim, 1, 1, 0).unwrap(), rank(0, id));
    // Registered, counted in the tube (not in the shard's figure), and the
    // job is still ready.
    assert!(e.is_waiting(w));
    assert_eq!((e.stats_tube("a", 0).unwrap().waiting, e.stats().waiting, e.stats().ready), (1, 0, 1));
    e.check_invariants(0);
    match e.span_take(w, 1, Rank { pri: 0, id }, None, S) {
        TakeOutcome::Taken { job, deadline } => assert_eq!((job.id, deadline), (id, S + 10 * S)),
        other => panic!("{other:?}"),
    }
    assert_eq!(claim.load(), (1, ClaimState::Closed));
    assert!(!e.is_waiting(w));
    assert_eq!(e.reservation_deadline(w, id), Some(11 * S));
    assert_eq!(e.stats_tube("a", S).unwrap().waiting, 0);
    e.check_invariants(S);
}

/// A spanning wait in round 1 that was reported the best of two jobs
/// (priorities 0 and 3) in tube `a`, which another client then took: the
/// engine, the waiting client, the claim word and the two ids.
struct Gone {
    e: Engine,
    w: ClientId,
    claim: Claim,
    first: u64,
    second: u64,
}

fn best_job_gone() -> Gone {
    let mut e = engine();
    let p = client(&mut e, &["a"]);
    let w = client(&mut e, &["a"]);
    let first = put(&mut e, p, "a", 0, 0);
    let second = put(&mut e, p, "a", 3, 0);
    let claim = Claim::default();
    claim.begin(1);
    assert_eq!(e.span_probe(w, &claim, 1, 1, 0).unwrap(), rank(0, first));
    let r = client(&mut e, &["a"]);
    assert!(matches!(e.reserve(r, None, 0), ReserveOutcome::Reserved(j) if j.id == first));
    Gone { e, w, claim, first, second }
}

#[test]
fn a_take_of_a_job_gone_meanwhile_misses_and_reports_again() {
    let Gone { mut e, w, claim, first, second } = best_job_gone();
    // Another shard reported a job of priority 2, which beats the next
    // one here: a miss, with the fresh report.
    let elsewhere = rank(2, 1000);
    assert_eq!(e.span_take(w, 1, Rank { pri: 0, id: first }, elsewhere, 0), TakeOutcome::Missed(rank(3, second)));
    // The round goes on: the next take succeeds.
    assert_eq!(claim.load(), (1, ClaimState::Probing));
    assert!(matches!(
        e.span_take(w, 1, Rank { pri: 3, id: second }, elsewhere, 0),
        TakeOutcome::Taken { job, .. } if job.id == second
    ));
    e.check_invariants(0);
}

/// A take whose job went to another client takes the next best job here
/// at once when it beats every other shard's report (the bound), or when
/// no other shard reported one: it is then the best of all.
#[test]
fn a_take_that_misses_its_job_takes_the_next_one_that_beats_the_bound() {
    for bound in [None, rank(3, 1000), rank(4, 1)] {
        let Gone { mut e, w, claim, first, second } = best_job_gone();
        match e.span_take(w, 1, Rank { pri: 0, id: first }, bound, 0) {
            TakeOutcome::Taken { job, .. } => assert_eq!(job.id, second, "bound {bound:?}"),
            other => panic!("bound {bound:?}: {other:?}"),
        }
        assert_eq!(claim.load(), (1, ClaimState::Closed));
        assert_eq!((e.stats().ready, e.stats().reserved), (0, 2));
        e.check_invariants(0);
    }
    // A bound equal to the next job's rank is not beaten (ranks of two
    // shards are never equal; the test only pins the comparison).
    let Gone { mut e, w, claim, first, second } = best_job_gone();
    assert_eq!(e.span_take(w, 1, rank(0, first).unwrap(), rank(3, second), 0), TakeOutcome::Missed(rank(3, second)));
    assert_eq!(claim.load(), (1, ClaimState::Probing), "nothing claimed");
    e.check_invariants(0);
}

#[test]
fn a_better_job_left_ready_makes_the_round_dirty_and_the_take_fails() {
    let mut e = engine();
    let p = client(&mut e, &["a"]);
    let w = client(&mut e, &["a", "b"]);
    let a = put(&mut e, p, "a", 5, 0);
    let claim = Claim::default();
    claim.begin(1);
    assert_eq!(e.span_probe(w, &claim, 1, 1, 0).unwrap(), rank(5, a));
    // A worse job changes nothing; a better one makes the round dirty.
    put(&mut e, p, "b", 9, 0);
    assert_eq!(claim.load(), (1, ClaimState::Probing));
    let b = put(&mut e, p, "b", 1, 0);
    assert_eq!(claim.load(), (1, ClaimState::Dirty));
    assert_eq!(e.span_take(w, 1, Rank { pri: 5, id: a }, None, 0), TakeOutcome::Dirty);
    // Nothing moved: both jobs are ready, the registration is still here.
    assert_eq!((e.stats().ready, e.stats().reserved), (3, 0));
    assert!(e.is_waiting(w));
    // The next round sees the better job and takes it.
    claim.begin(2);
    assert_eq!(e.span_probe(w, &claim, 1, 2, 0).unwrap(), rank(1, b));
    assert!(
        matches!(e.span_take(w, 2, Rank { pri: 1, id: b }, None, 0), TakeOutcome::Taken { job, .. } if job.id == b)
    );
    e.check_invariants(0);
}

#[test]
fn a_job_taken_by_an_armed_waiter_at_once_leaves_the_round_clean() {
    // A put served to an ordinary waiter in the same call was never ready
    // for anyone else: it does not spoil a probing round.
    let mut e = engine();
    let p = client(&mut e, &["a"]);
    let o = client(&mut e, &["a"]);
    assert_eq!(e.reserve(o, None, 0), ReserveOutcome::Waiting);
    let w = client(&mut e, &["a"]);
    let claim = Claim::default();
    claim.begin(1);
    assert_eq!(e.span_probe(w, &claim, 1, 1, 0).unwrap(), None);
    let id = put(&mut e, p, "a", 0, 0);
    assert!(matches!(&e.take_wakes().collect::<Vec<_>>()[..], [(c, Wake::Reserved(j))] if *c == o && j.id == id));
    assert_eq!(claim.load(), (1, ClaimState::Probing));
    // With nothing left anywhere, the session may arm.
    assert!(claim.arm(1).is_ok());
    e.check_invariants(0);
}

#[test]
fn a_job_in_a_paused_tube_spoils_nothing_until_the_pause_ends() {
    let mut e = engine();
    let p = client(&mut e, &["a"]);
    let w = client(&mut e, &["a"]);
    e.pause_tube("a", 10, 0);
    let claim = Claim::default();
    claim.begin(1);
    assert_eq!(e.span_probe(w, &claim, 1, 1, 0).unwrap(), None);
    put(&mut e, p, "a", 0, 0);
    assert_eq!(claim.load(), (1, ClaimState::Probing));
    // The end of the pause makes a job visible that beats "none".
    e.advance(10 * S);
    assert_eq!(claim.load(), (1, ClaimState::Dirty));
    assert_eq!(e.stats().ready, 1);
    e.check_invariants(10 * S);
}

#[test]
fn an_armed_wait_is_claimed_and_served_first_come_first_served() {
    let mut e = engine();
    let p = client(&mut e, &["a"]);
    // Order of arrival in tube a: w1 (spanning), o (ordinary), w2 (spanning).
    let (w1, o, w2) = (client(&mut e, &["a"]), client(&mut e, &["a"]), client(&mut e, &["a"]));
    let (c1, c2) = (Claim::default(), Claim::default());
    c1.begin(1);
    e.span_probe(w1, &c1, 1, 1, 0).unwrap();
    assert_eq!(e.reserve(o, None, 0), ReserveOutcome::Waiting);
    c2.begin(7);
    e.span_probe(w2, &c2, 7, 7, 0).unwrap();
    // w1 still probing: it keeps its place, the job goes to the next waiter.
    let first = put(&mut e, p, "a", 0, 0);
    assert!(matches!(&e.take_wakes().collect::<Vec<_>>()[..], [(c, Wake::Reserved(j))] if *c == o && j.id == first));
    assert!(served(&mut e).is_empty());
    // Both armed: w1, which came first, is served first.
    c1.arm(1).unwrap();
    c2.arm(7).unwrap();
    let second = put(&mut e, p, "a", 0, 0);
    let third = put(&mut e, p, "a", 0, 0);
    assert_eq!(served(&mut e), vec![(w1, 1, second), (w2, 7, third)]);
    assert_eq!((c1.load(), c2.load()), ((1, ClaimState::Closed), (7, ClaimState::Closed)));
    assert_eq!(e.stats_tube("a", 0).unwrap().waiting, 0);
    e.check_invariants(0);
}

#[test]
fn a_failed_claim_skips_the_wait_and_moves_nothing() {
    // Another shard served the wait (or its session timed it out): the
    // job goes to the next waiter, with no counter moved for the miss.
    let mut e = engine();
    let p = client(&mut e, &["a"]);
    let w = client(&mut e, &["a"]);
    let o = client(&mut e, &["a"]);
    let claim = Claim::default();
    claim.begin(1);
    e.span_probe(w, &claim, 1, 1, 0).unwrap();
    assert_eq!(e.reserve(o, None, 0), ReserveOutcome::Waiting);
    claim.arm(1).unwrap();
    assert!(claim.close(1), "the session ends the wait");
    let id = put(&mut e, p, "a", 0, 0);
    assert!(served(&mut e).is_empty());
    assert!(matches!(&e.take_wakes().collect::<Vec<_>>()[..], [(c, Wake::Reserved(j))] if *c == o && j.id == id));
    assert!(!e.is_waiting(w), "the registration ended when its claim failed");
    assert_eq!(e.stats_job(id, 0).unwrap().reserves, 1);
    // The session's own unwait finds nothing left to drop.
    assert!(!e.span_unwait(w, 1));
    e.check_invariants(0);
}

#[test]
fn a_stale_registration_never_serves_a_later_wait() {
    let mut e = engine();
    let p = client(&mut e, &["a"]);
    let w = client(&mut e, &["a"]);
    let claim = Claim::default();
    claim.begin(1);
    e.span_probe(w, &claim, 1, 1, 0).unwrap();
    claim.arm(1).unwrap();
    // The wait ends on the session's side and a new one starts, whose
    // probe has not reached this shard: the word is at round 2.
    assert!(claim.close(1));
    claim.begin(2);
    // Even armed, round 2 is not the round this registration answered.
    claim.arm(2).unwrap();
    let id = put(&mut e, p, "a", 0, 0);
    assert!(served(&mut e).is_empty());
    assert_eq!(e.stats_job(id, 0).unwrap().state, "ready");
    assert_eq!(claim.load(), (2, ClaimState::Open));
    // The old wait's unwait drops it; the new wait registers afresh (and
    // would have been probed before being armed).
    assert!(!e.span_unwait(w, 2));
    assert!(e.span_unwait(w, 1));
    assert!(!e.is_waiting(w));
    e.check_invariants(0);
}

#[test]
fn a_probe_of_a_new_wait_replaces_the_old_registration_at_the_back() {
    let mut e = engine();
    let p = client(&mut e, &["a"]);
    let (w, o) = (client(&mut e, &["a"]), client(&mut e, &["a"]));
    let claim = Claim::default();
    claim.begin(1);
    e.span_probe(w, &claim, 1, 1, 0).unwrap();
    assert_eq!(e.reserve(o, None, 0), ReserveOutcome::Waiting);
    assert!(claim.close(1));
    claim.begin(2);
    e.span_probe(w, &claim, 2, 2, 0).unwrap();
    claim.arm(2).unwrap();
    assert_eq!(e.stats_tube("a", 0).unwrap().waiting, 2);
    // The ordinary waiter came before the new wait.
    put(&mut e, p, "a", 0, 0);
    assert_eq!(e.take_wakes().count(), 1);
    put(&mut e, p, "a", 0, 0);
    assert_eq!(served(&mut e).len(), 1);
    e.check_invariants(0);
}

#[test]
fn spanning_waits_are_timed_by_their_session_not_by_the_shard() {
    // A reservation about to run out would earn an ordinary waiter
    // DEADLINE_SOON from the shard; a spanning wait's session decides.
    let mut e = engine();
    let p = client(&mut e, &["a"]);
    let w = client(&mut e, &["a"]);
    put(&mut e, p, "a", 0, 0);
    assert!(matches!(e.reserve(w, None, 0), ReserveOutcome::Reserved(_)));
    let claim = Claim::default();
    claim.begin(1);
    e.span_probe(w, &claim, 1, 1, 0).unwrap();
    claim.arm(1).unwrap();
    assert_eq!(e.next_deadline(), Some(10 * S + 1), "only the TTR expiry is timed here");
    e.advance(9 * S + S / 2);
    assert_eq!(e.take_wakes().count(), 0);
    assert_eq!(claim.load(), (1, ClaimState::Open));
    e.check_invariants(9 * S + S / 2);
}

#[test]
fn an_expiry_is_noticed_for_remote_clients_once_per_batch() {
    let mut e = engine();
    let local = e.connect().unwrap();
    let remote = client(&mut e, &["default"]);
    for _ in 0..2 {
        put(&mut e, local, "default", 0, 0);
    }
    assert!(matches!(e.reserve(local, None, 0), ReserveOutcome::Reserved(_)));
    assert!(matches!(e.reserve(remote, None, 0), ReserveOutcome::Reserved(_)));
    let other = put(&mut e, local, "default", 0, 0);
    assert!(matches!(e.reserve(remote, None, 0), ReserveOutcome::Reserved(j) if j.id == other));
    e.advance(11 * S);
    assert_eq!(e.stats().job_timeouts, 3);
    assert_eq!(e.take_expiry_notices().collect::<Vec<_>>(), vec![remote]);
    assert_eq!(e.take_expiry_notices().count(), 0);
    e.check_invariants(11 * S);
}

#[test]
fn a_disconnect_mid_wait_drops_the_registration_and_any_answer_owed() {
    let mut e = engine();
    let p = client(&mut e, &["a"]);
    let w = client(&mut e, &["a", "b"]);
    let claim = Claim::default();
    claim.begin(1);
    e.span_probe(w, &claim, 1, 1, 0).unwrap();
    claim.arm(1).unwrap();
    let id = put(&mut e, p, "a", 0, 0);
    // Served, but the session leaves before the answer is taken: the job
    // goes back to ready and the answer is dropped.
    e.disconnect(w, 0);
    assert!(served(&mut e).is_empty());
    assert_eq!(e.stats_job(id, 0).unwrap().state, "ready");
    assert!(!e.has_tube("b"));
    e.check_invariants(0);
}

#[test]
fn an_unpause_serves_armed_spanning_waits_best_job_first() {
    let mut e = engine();
    let p = client(&mut e, &["a"]);
    let w = client(&mut e, &["a", "b"]);
    e.pause_tube("a", 1, 0);
    e.pause_tube("b", 1, 0);
    put(&mut e, p, "a", 5, 0);
    let b = put(&mut e, p, "b", 2, 0);
    let claim = Claim::default();
    claim.begin(1);
    assert_eq!(e.span_probe(w, &claim, 1, 1, 0).unwrap(), None);
    claim.arm(1).unwrap();
    e.advance(S);
    assert_eq!(served(&mut e), vec![(w, 1, b)]);
    e.check_invariants(S);
}

#[test]
fn a_job_back_with_a_worse_priority_is_missed_by_its_rank() {
    // Reported at priority 0, then reserved by another client and released
    // at 2000 (a place the report never saw): a take by id alone would get
    // it, though the session may have better elsewhere.
    let mut e = engine();
    let p = client(&mut e, &["a"]);
    let w = client(&mut e, &["a"]);
    let id = put(&mut e, p, "a", 0, 0);
    let claim = Claim::default();
    claim.begin(1);
    assert_eq!(e.span_probe(w, &claim, 1, 1, 0).unwrap(), rank(0, id));
    let r = client(&mut e, &["a"]);
    assert!(matches!(e.reserve(r, None, 0), ReserveOutcome::Reserved(j) if j.id == id));
    assert_eq!(e.release(r, id, 2000, 0, 0), crate::engine::Change::Done);
    assert_eq!(claim.load(), (1, ClaimState::Probing), "worse than the report: nothing spoilt");
    assert_eq!(e.span_take(w, 1, Rank { pri: 0, id }, rank(1000, id + 1), 0), TakeOutcome::Missed(rank(2000, id)));
    assert_eq!(e.stats_job(id, 0).unwrap().state, "ready");
    e.check_invariants(0);
}
