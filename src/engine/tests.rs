//! Engine tests: focused unit tests of the rules, then a model-based test
//! that drives the engine and a deliberately naive model (plain maps,
//! linear scans, no heaps, no caches) with random operations and clock
//! advances and demands the same answers and the same state after every
//! step.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

const S: Nanos = NANOS_PER_SEC;

fn body(s: &str) -> Body {
    Body::from_slice(s.as_bytes())
}

/// An engine with a few helpers for terse tests.
struct T {
    e: Engine,
}

impl T {
    fn new() -> T {
        T { e: Engine::new(EngineConfig::default()) }
    }

    fn put(&mut self, c: ClientId, pri: u32, delay_s: u32, ttr_s: u32, now: Nanos) -> u64 {
        let id = self.e.allocate_id();
        assert_eq!(self.e.put(c, id, now, pri, delay_s, ttr_s, body("x"), now), PutOutcome::Inserted);
        self.e.check_invariants(now);
        id
    }

    fn reserve(&mut self, c: ClientId, timeout: Option<u32>, now: Nanos) -> ReserveOutcome {
        let r = self.e.reserve(c, timeout, now);
        self.e.check_invariants(now);
        r
    }

    fn wakes(&mut self) -> Vec<(ClientId, Wake)> {
        self.e.take_wakes().collect()
    }

    fn state(&self, id: u64, now: Nanos) -> &'static str {
        self.e.stats_job(id, now).map_or("gone", |s| s.state)
    }
}

fn reserved_id(r: &ReserveOutcome) -> u64 {
    match r {
        ReserveOutcome::Reserved(j) => j.id,
        other => panic!("expected a reservation, got {other:?}"),
    }
}

fn woken_id(w: &Wake) -> u64 {
    match w {
        Wake::Reserved(j) => j.id,
        other => panic!("expected a reservation, got {other:?}"),
    }
}

#[test]
fn ready_jobs_come_out_by_priority_then_id() {
    let mut t = T::new();
    let c = t.e.connect().unwrap();
    let a = t.put(c, 5, 0, 10, 0);
    let b = t.put(c, 1, 0, 10, 0);
    let d = t.put(c, 5, 0, 10, 0);
    let order: Vec<u64> = (0..3).map(|_| reserved_id(&t.reserve(c, None, 0))).collect();
    assert_eq!(order, vec![b, a, d]);
    assert_eq!(t.reserve(c, Some(0), 0), ReserveOutcome::TimedOut);
}

#[test]
fn best_job_across_watched_tubes() {
    // The spec's live example: B2(pri 1), A2(5, id 8), B1(5, id 9), A1(10).
    let mut t = T::new();
    let p = t.e.connect().unwrap();
    let w = t.e.connect().unwrap();
    t.e.use_tube(p, "a").unwrap();
    let a1 = t.put(p, 10, 0, 10, 0);
    let a2 = t.put(p, 5, 0, 10, 0);
    t.e.use_tube(p, "b").unwrap();
    let b1 = t.put(p, 5, 0, 10, 0);
    let b2 = t.put(p, 1, 0, 10, 0);
    t.e.watch(w, "a").unwrap();
    t.e.watch(w, "b").unwrap();
    t.e.ignore(w, "default");
    let order: Vec<u64> = (0..4).map(|_| reserved_id(&t.reserve(w, None, 0))).collect();
    assert_eq!(order, vec![b2, a2, b1, a1]);
}

#[test]
fn waiters_are_served_first_come_first_served() {
    let mut t = T::new();
    let p = t.e.connect().unwrap();
    let waiters: Vec<ClientId> = (0..6).map(|_| t.e.connect().unwrap()).collect();
    for &w in &waiters {
        assert_eq!(t.reserve(w, None, 0), ReserveOutcome::Waiting);
    }
    assert_eq!(t.e.stats().waiting, 6);
    let mut served = Vec::new();
    for _ in 0..6 {
        t.put(p, 0, 0, 10, 0);
        served.extend(t.wakes().into_iter().map(|(c, _)| c));
    }
    assert_eq!(served, waiters);
    assert_eq!(t.e.stats().waiting, 0);
}

#[test]
fn a_waiter_served_elsewhere_leaves_no_trace() {
    let mut t = T::new();
    let p = t.e.connect().unwrap();
    let w1 = t.e.connect().unwrap();
    let w2 = t.e.connect().unwrap();
    t.e.watch(w1, "other").unwrap();
    assert_eq!(t.reserve(w1, None, 0), ReserveOutcome::Waiting);
    assert_eq!(t.reserve(w2, None, 0), ReserveOutcome::Waiting);
    t.e.use_tube(p, "other").unwrap();
    t.put(p, 0, 0, 10, 0);
    assert_eq!(t.wakes().into_iter().map(|(c, _)| c).collect::<Vec<_>>(), vec![w1]);
    // w1 was also queued on default; the next default job goes to w2.
    t.e.use_tube(p, "default").unwrap();
    t.put(p, 0, 0, 10, 0);
    assert_eq!(t.wakes().into_iter().map(|(c, _)| c).collect::<Vec<_>>(), vec![w2]);
    t.e.check_invariants(0);
}

#[test]
fn stale_waiter_entries_are_swept() {
    let mut t = T::new();
    let p = t.e.connect().unwrap();
    let w = t.e.connect().unwrap();
    t.e.watch(w, "quiet").unwrap();
    for i in 0..1000 {
        assert_eq!(t.reserve(w, None, i), ReserveOutcome::Waiting);
        t.put(p, 0, 0, 10, i);
        let id = woken_id(&t.wakes()[0].1);
        assert!(t.e.delete(w, id, i));
    }
    let quiet = t.e.find_tube("quiet").unwrap();
    assert!(t.e.tubes[quiet as usize].waiters.len() <= 17);
}

#[test]
fn reserve_with_timeout_times_out() {
    let mut t = T::new();
    let w = t.e.connect().unwrap();
    assert_eq!(t.reserve(w, Some(2), 0), ReserveOutcome::Waiting);
    assert_eq!(t.e.next_deadline(), Some(2 * S));
    t.e.advance(2 * S - 1);
    assert!(t.wakes().is_empty());
    t.e.advance(2 * S);
    assert_eq!(t.wakes(), vec![(w, Wake::TimedOut)]);
    assert!(!t.e.is_waiting(w));
    t.e.check_invariants(2 * S);
}

#[test]
fn ttr_expiry_returns_the_job_to_ready_strictly_after_the_deadline() {
    let mut t = T::new();
    let c = t.e.connect().unwrap();
    let id = t.put(c, 0, 0, 2, 0);
    reserved_id(&t.reserve(c, None, 0));
    assert_eq!(t.e.stats_job(id, S).unwrap().time_left_s, 1);
    t.e.advance(2 * S);
    assert_eq!(t.state(id, 2 * S), "reserved");
    t.e.advance(2 * S + 1);
    assert_eq!(t.state(id, 2 * S + 1), "ready");
    let stats = t.e.stats_job(id, 2 * S + 1).unwrap();
    assert_eq!((stats.timeouts, stats.reserves), (1, 1));
    assert_eq!(t.e.stats().job_timeouts, 1);
    // The old holder may no longer release it, but may delete it.
    assert_eq!(t.e.release(c, id, 0, 0, 3 * S), Change::NotFound);
    assert!(t.e.delete(c, id, 3 * S));
}

#[test]
fn deadline_soon() {
    let mut t = T::new();
    let c = t.e.connect().unwrap();
    t.put(c, 0, 0, 2, 0);
    reserved_id(&t.reserve(c, None, 0));
    // Outside the margin, the second reserve waits, and the margin ends it.
    assert_eq!(t.reserve(c, None, S / 2), ReserveOutcome::Waiting);
    assert_eq!(t.e.next_deadline(), Some(S));
    t.e.advance(S);
    assert_eq!(t.wakes(), vec![(c, Wake::DeadlineSoon)]);
    // Inside the margin it answers at once...
    assert_eq!(t.reserve(c, None, S + 1), ReserveOutcome::DeadlineSoon);
    // ...unless a watched tube has a ready job, even a paused one: then it
    // waits, and the margin ends the wait at once.
    let p = t.e.connect().unwrap();
    let id = t.put(p, 0, 0, 10, S + 2);
    assert!(t.e.pause_tube("default", 100, S + 2));
    assert_eq!(t.reserve(c, None, S + 3), ReserveOutcome::Waiting);
    t.e.advance(S + 3);
    assert_eq!(t.wakes(), vec![(c, Wake::DeadlineSoon)]);
    // With a zero timeout beanstalkd answers the same, not TIMED_OUT.
    assert_eq!(t.reserve(c, Some(0), S + 4), ReserveOutcome::DeadlineSoon);
    assert!(t.e.delete(p, id, S + 5));
    assert_eq!(t.reserve(c, Some(0), S + 6), ReserveOutcome::DeadlineSoon);
}

#[test]
fn a_leaving_client_is_never_answered() {
    // Its reservation is inside the margin and the only ready job is in a
    // paused tube, so its reserve waits for the next tick, which would
    // answer DEADLINE_SOON; it disconnects before that tick.
    let mut t = T::new();
    let c = t.e.connect().unwrap();
    let id = t.put(c, 0, 0, 1, 0);
    reserved_id(&t.reserve(c, None, 0));
    t.put(c, 0, 0, 10, 0);
    assert!(t.e.pause_tube("default", 10, 0));
    assert_eq!(t.reserve(c, None, 0), ReserveOutcome::Waiting);
    t.e.disconnect(c, 1);
    assert_eq!(t.wakes(), vec![]);
    assert_eq!(t.state(id, 1), "ready");
    t.e.check_invariants(1);
}

#[test]
fn ttr_of_one_second_is_deadline_soon_at_once() {
    let mut t = T::new();
    let c = t.e.connect().unwrap();
    let id = t.put(c, 0, 0, 0, 0);
    assert_eq!(t.e.stats_job(id, 0).unwrap().ttr_s, 1);
    reserved_id(&t.reserve(c, None, 0));
    assert_eq!(t.reserve(c, None, 0), ReserveOutcome::DeadlineSoon);
}

#[test]
fn delayed_jobs_become_ready_at_their_deadline() {
    let mut t = T::new();
    let c = t.e.connect().unwrap();
    let late = t.put(c, 0, 2, 10, 0);
    let early = t.put(c, 9, 1, 10, 0);
    assert_eq!(t.e.peek_delayed(c).unwrap().id, early);
    assert_eq!(t.e.stats_job(late, 0).unwrap().time_left_s, 2);
    assert_eq!(t.e.stats_job(late, 1).unwrap().time_left_s, 1);
    assert_eq!(t.e.next_deadline(), Some(S));
    t.e.advance(S);
    assert_eq!((t.state(early, S), t.state(late, S)), ("ready", "delayed"));
    t.e.advance(2 * S);
    assert_eq!(t.e.stats().ready, 2);
    assert_eq!(t.e.next_deadline(), None);
}

#[test]
fn kick_takes_buried_first_and_never_both() {
    let mut t = T::new();
    let c = t.e.connect().unwrap();
    let buried: Vec<u64> = (0..3)
        .map(|_| {
            let id = t.put(c, 0, 0, 10, 0);
            assert_eq!(reserved_id(&t.reserve(c, None, 0)), id);
            assert_eq!(t.e.bury(c, id, 0, 0), Change::Done);
            id
        })
        .collect();
    let delayed: Vec<u64> = (0..3).map(|i| t.put(c, 0, 10 + i, 10, 0)).collect();
    assert_eq!(t.e.peek_buried(c).unwrap().id, buried[0]);
    assert_eq!(t.e.kick(c, 2, 0), 2);
    assert_eq!(t.e.kick(c, 5, 0), 1);
    assert_eq!(t.e.kick(c, 2, 0), 2);
    assert_eq!(t.e.kick(c, u32::MAX, 0), 1);
    assert_eq!(t.e.kick(c, 1, 0), 0);
    for id in buried.iter().chain(&delayed) {
        assert_eq!(t.state(*id, 0), "ready");
        assert_eq!(t.e.stats_job(*id, 0).unwrap().kicks, 1);
    }
}

#[test]
fn kick_job_and_reserve_job() {
    let mut t = T::new();
    let c = t.e.connect().unwrap();
    let ready = t.put(c, 0, 0, 10, 0);
    let delayed = t.put(c, 0, 5, 10, 0);
    assert!(!t.e.kick_job(ready, 0));
    assert!(t.e.kick_job(delayed, 0));
    assert!(!t.e.kick_job(delayed, 0));
    assert!(!t.e.kick_job(999, 0));
    // reserve-job ignores pauses and tubes.
    t.e.pause_tube("default", 100, 0);
    let other = t.e.connect().unwrap();
    assert_eq!(t.e.reserve_job(other, delayed, 0).unwrap().id, delayed);
    assert!(t.e.reserve_job(c, delayed, 0).is_none());
    assert!(!t.e.delete(c, delayed, 0), "reserved by another client");
    assert!(t.e.delete(other, delayed, 0));
    assert_eq!(t.e.stats().workers, 1);
}

#[test]
fn closing_returns_reservations_in_order_and_frees_tubes() {
    let mut t = T::new();
    let p = t.e.connect().unwrap();
    let c = t.e.connect().unwrap();
    t.e.use_tube(p, "jobs").unwrap();
    let ids: Vec<u64> = (0..3).map(|_| t.put(p, 0, 0, 10, 0)).collect();
    t.e.watch(c, "jobs").unwrap();
    for _ in 0..3 {
        reserved_id(&t.reserve(c, None, 0));
    }
    let w = t.e.connect().unwrap();
    t.e.watch(w, "jobs").unwrap();
    assert_eq!(t.reserve(w, None, 0), ReserveOutcome::Waiting);
    t.e.disconnect(c, 0);
    assert_eq!(t.wakes(), vec![(w, Wake::Reserved(JobRef { id: ids[0], body: body("x") }))]);
    assert_eq!(t.e.stats().ready, 2);
    assert_eq!(t.e.stats_job(ids[1], 0).unwrap().timeouts, 0);
    t.e.disconnect(w, 0);
    t.e.disconnect(p, 0);
    // Jobs keep the tube alive; deleting the last one destroys it.
    assert!(t.e.stats_tube("jobs", 0).is_some());
    let q = t.e.connect().unwrap();
    for id in ids {
        assert!(t.e.delete(q, id, 0));
    }
    assert!(t.e.stats_tube("jobs", 0).is_none());
    assert_eq!(t.e.tube_names().collect::<Vec<_>>(), vec!["default"]);
    t.e.check_invariants(0);
}

#[test]
fn tube_list_fills_gaps_with_the_last_tube() {
    let mut t = T::new();
    let c = t.e.connect().unwrap();
    for name in ["ta", "tb", "tc", "td"] {
        t.e.watch(c, name).unwrap();
    }
    t.e.ignore(c, "ta");
    assert_eq!(t.e.tube_names().collect::<Vec<_>>(), vec!["default", "td", "tb", "tc"]);
    assert_eq!(t.e.watched_tubes(c).collect::<Vec<_>>(), vec!["default", "td", "tb", "tc"]);
    assert_eq!(t.e.ignore(c, "nonexistent"), Some(4));
    assert!(t.e.stats_tube("nonexistent", 0).is_none());
    for name in ["default", "td", "tb"] {
        t.e.ignore(c, name);
    }
    assert_eq!(t.e.ignore(c, "tc"), None);
}

#[test]
fn pause_holds_back_reserve_until_it_ends() {
    let mut t = T::new();
    let c = t.e.connect().unwrap();
    let id = t.put(c, 0, 0, 10, 0);
    assert!(t.e.pause_tube("default", 2, 0));
    assert!(!t.e.pause_tube("nope", 2, 0));
    let ts = t.e.stats_tube("default", S / 2).unwrap();
    assert_eq!((ts.pause_s, ts.pause_left_s, ts.pauses), (2, 1, 1));
    let w = t.e.connect().unwrap();
    assert_eq!(t.reserve(w, None, S), ReserveOutcome::Waiting);
    assert_eq!(t.e.peek_ready(c).unwrap().id, id, "peek ignores pauses");
    assert_eq!(t.e.next_deadline(), Some(2 * S));
    t.e.advance(2 * S);
    assert_eq!(t.wakes(), vec![(w, Wake::Reserved(JobRef { id, body: body("x") }))]);
    let ts = t.e.stats_tube("default", 2 * S).unwrap();
    assert_eq!((ts.pause_s, ts.pause_left_s), (0, 0));
}

#[test]
fn pause_zero_unpauses_at_once() {
    let mut t = T::new();
    let c = t.e.connect().unwrap();
    t.put(c, 0, 0, 10, 0);
    t.e.pause_tube("default", 86400, 0);
    let w = t.e.connect().unwrap();
    assert_eq!(t.reserve(w, None, 0), ReserveOutcome::Waiting);
    t.e.pause_tube("default", 0, 1);
    assert_eq!(t.wakes().len(), 1);
    assert_eq!(t.e.stats_tube("default", 1).unwrap().pauses, 2);
}

#[test]
fn shards_share_one_sequence_of_ids() {
    // Puts on different shards, one after another, get increasing ids from
    // 1, as one server's would; each shard finds its own jobs by them.
    let ids = IdSource::default();
    let mut a = Engine::with_id_source(EngineConfig { shard: 0, shards: 2 }, ids.clone());
    let mut b = Engine::with_id_source(EngineConfig { shard: 1, shards: 2 }, ids.clone());
    // `default` is shard 0's; shard 1's client uses `b`, which is its own.
    let (ca, cb) = (a.connect().unwrap(), b.join().unwrap());
    b.use_tube(cb, "b").unwrap();
    let put = |e: &mut Engine, c, text: &str| {
        let id = e.allocate_id();
        assert_eq!(e.put(c, id, 0, 0, 0, 10, body(text), 0), PutOutcome::Inserted);
        id
    };
    assert_eq!(put(&mut a, ca, "one"), 1);
    assert_eq!(put(&mut b, cb, "two"), 2);
    assert_eq!(put(&mut a, ca, "three"), 3);
    assert_eq!(a.peek(3).map(|j| j.body.bytes().to_vec()), Some(b"three".to_vec()));
    assert_eq!(a.peek(2), None);
    assert_eq!(b.peek(2).map(|j| j.body.bytes().to_vec()), Some(b"two".to_vec()));
    // A floor set from the log holds for every shard.
    ids.raise_to(100);
    assert_eq!(b.allocate_id(), 100);
    assert_eq!(a.allocate_id(), 101);
    let mut e = Engine::new(EngineConfig::default());
    assert_eq!((e.allocate_id(), e.allocate_id()), (1, 2));
}

#[test]
fn draining_refuses_puts() {
    let mut t = T::new();
    let c = t.e.connect().unwrap();
    t.e.set_draining();
    let id = t.e.allocate_id();
    assert_eq!(t.e.put(c, id, 0, 0, 0, 1, body("x"), 0), PutOutcome::Draining);
    assert_eq!(t.e.stats().total_jobs, 0);
    assert!(t.e.stats().draining);
}

#[test]
fn touch_moves_the_deadline() {
    let mut t = T::new();
    let c = t.e.connect().unwrap();
    let id = t.put(c, 0, 0, 3, 0);
    reserved_id(&t.reserve(c, None, 0));
    assert!(t.e.touch(c, id, 2 * S));
    t.e.advance(4 * S);
    assert_eq!(t.state(id, 4 * S), "reserved");
    assert_eq!(t.e.stats_job(id, 4 * S).unwrap().time_left_s, 1);
    let other = t.e.connect().unwrap();
    assert!(!t.e.touch(other, id, 4 * S));
    t.e.advance(5 * S + 1);
    assert_eq!(t.state(id, 5 * S + 1), "ready");
}

#[test]
fn a_pause_ending_with_due_jobs_serves_the_best_job() {
    // Waiter W watches a (paused, holding a pri-5 job) and b (a pri-1 job
    // falls due as a's pause ends): W gets the better job.
    let mut t = T::new();
    let p = t.e.connect().unwrap();
    let w = t.e.connect().unwrap();
    t.e.use_tube(p, "a").unwrap();
    t.put(p, 5, 0, 10, 0);
    t.e.use_tube(p, "b").unwrap();
    let best = t.put(p, 1, 2, 10, 0);
    t.e.pause_tube("a", 2, 0);
    t.e.watch(w, "a").unwrap();
    t.e.watch(w, "b").unwrap();
    assert_eq!(t.reserve(w, None, 0), ReserveOutcome::Waiting);
    t.e.advance(3 * S);
    assert_eq!(woken_id(&t.wakes()[0].1), best);
    t.e.check_invariants(3 * S);
}

#[test]
fn rare_fields_cost_pages_only_while_jobs_have_them() {
    let mut e = Engine::new(EngineConfig::default());
    let c = e.connect().unwrap();
    let put = |e: &mut Engine, delay_s| {
        let id = e.allocate_id();
        assert_eq!(e.put(c, id, 0, 0, delay_s, 10, body("x"), 0), PutOutcome::Inserted);
        id
    };
    // Three arena chunks of plain jobs, then three of delayed ones.
    let plain: Vec<u64> = (0..3 * column::PAGE_SLOTS).map(|_| put(&mut e, 0)).collect();
    assert_eq!(e.extras.pages(), 0, "plain ready jobs cost no page");
    let delayed: Vec<u64> = (0..3 * column::PAGE_SLOTS).map(|_| put(&mut e, 5)).collect();
    assert_eq!(e.extras.pages(), 3);
    assert_eq!(e.stats_job(*delayed.last().unwrap(), 0).unwrap().delay_s, 5);
    assert_eq!(e.stats_job(plain[0], 0).unwrap().delay_s, 0);
    e.check_invariants(0);
    for id in delayed {
        assert!(e.delete(c, id, 0));
    }
    assert_eq!(e.extras.pages(), 0, "pages go with the last job that used them");
    // A key reused by a new job starts with nothing set.
    let fresh = put(&mut e, 0);
    assert_eq!(e.stats_job(fresh, 0).unwrap().delay_s, 0);
    e.check_invariants(0);
}

// ----- model-based test ---------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MState {
    Ready,
    Reserved,
    Delayed,
    Buried,
}

#[derive(Clone, Debug)]
struct MJob {
    tube: String,
    state: MState,
    pri: u32,
    delay_s: u32,
    ttr_s: u32,
    created: Nanos,
    deadline: Nanos,
    reserver: Option<usize>,
    bury_seq: u64,
    counters: [u32; 5],
}

#[derive(Clone, Debug)]
struct MClient {
    used: String,
    watched: Vec<String>,
    wait: Option<(u64, Option<Nanos>)>,
    reserved: Vec<u64>,
    producer: bool,
    worker: bool,
}

#[derive(Clone, Debug, Default)]
struct MTube {
    total_jobs: u64,
    deletes: u64,
    pauses: u64,
    pause: Option<(Nanos, Nanos)>,
}

/// The naive model: everything by scanning.
#[derive(Debug, Default)]
struct Model {
    jobs: BTreeMap<u64, MJob>,
    clients: BTreeMap<usize, MClient>,
    tubes: BTreeMap<String, MTube>,
    tube_list: Vec<String>,
    seq: u64,
    bury_seq: u64,
    job_timeouts: u64,
    total_jobs: u64,
    total_connections: u32,
    wakes: Vec<(usize, Wake)>,
}

impl Model {
    fn new() -> Model {
        let mut m = Model::default();
        m.tube("default");
        m
    }

    fn tube(&mut self, name: &str) {
        if !self.tubes.contains_key(name) {
            self.tubes.insert(name.to_string(), MTube::default());
            self.tube_list.push(name.to_string());
        }
    }

    fn maybe_destroy(&mut self, name: &str) {
        let used = self.clients.values().any(|c| c.used == name || c.watched.iter().any(|w| w == name));
        let has_jobs = self.jobs.values().any(|j| j.tube == name);
        if name == "default" || used || has_jobs || !self.tubes.contains_key(name) {
            return;
        }
        self.tubes.remove(name);
        let i = self.tube_list.iter().position(|t| t == name).unwrap();
        self.tube_list.swap_remove(i);
    }

    fn paused(&self, tube: &str, now: Nanos) -> bool {
        self.tubes[tube].pause.is_some_and(|(_, until)| until > now)
    }

    fn body_of(id: u64) -> Body {
        body(&format!("job{id}"))
    }

    fn soonest(&self, c: usize) -> Option<Nanos> {
        self.clients[&c].reserved.iter().map(|id| self.jobs[id].deadline).min()
    }

    fn deadline_soon(&self, c: usize, now: Nanos) -> bool {
        self.soonest(c).is_some_and(|d| now >= d.saturating_sub(SAFETY_MARGIN_NS))
    }

    fn reserve_for(&mut self, c: usize, id: u64, now: Nanos) {
        let job = self.jobs.get_mut(&id).unwrap();
        job.state = MState::Reserved;
        job.reserver = Some(c);
        job.counters[0] += 1;
        job.deadline = now + secs(job.ttr_s);
        self.clients.get_mut(&c).unwrap().reserved.push(id);
    }

    fn unreserve(&mut self, id: u64) {
        let c = self.jobs[&id].reserver.unwrap();
        self.clients.get_mut(&c).unwrap().reserved.retain(|&x| x != id);
        self.jobs.get_mut(&id).unwrap().reserver = None;
    }

    fn best_ready(&self, tubes: &[String], now: Nanos, ignore_pause: bool) -> Option<u64> {
        self.jobs
            .iter()
            .filter(|(_, j)| j.state == MState::Ready && tubes.contains(&j.tube))
            .filter(|(_, j)| ignore_pause || !self.paused(&j.tube, now))
            .min_by_key(|(id, j)| (j.pri, **id))
            .map(|(id, _)| *id)
    }

    /// beanstalkd's queue pass over the given tubes.
    fn offer(&mut self, tubes: &[String], now: Nanos) {
        loop {
            let with_waiters: Vec<String> = tubes
                .iter()
                .filter(|t| self.clients.values().any(|c| c.wait.is_some() && c.watched.contains(t)))
                .cloned()
                .collect();
            let Some(id) = self.best_ready(&with_waiters, now, false) else {
                return;
            };
            let tube = self.jobs[&id].tube.clone();
            let (&c, _) = self
                .clients
                .iter()
                .filter(|(_, c)| c.wait.is_some() && c.watched.contains(&tube))
                .min_by_key(|(_, c)| c.wait.unwrap().0)
                .unwrap();
            self.clients.get_mut(&c).unwrap().wait = None;
            self.reserve_for(c, id, now);
            self.wakes.push((c, Wake::Reserved(JobRef { id, body: Model::body_of(id) })));
        }
    }

    fn make_ready(&mut self, id: u64, now: Nanos) {
        self.jobs.get_mut(&id).unwrap().state = MState::Ready;
        let tube = self.jobs[&id].tube.clone();
        self.offer(&[tube], now);
    }

    fn advance(&mut self, now: Nanos) {
        let mut unpaused = Vec::new();
        for (name, tube) in self.tubes.iter_mut() {
            if tube.pause.is_some_and(|(_, until)| until <= now) {
                tube.pause = None;
                unpaused.push(name.clone());
            }
        }
        let mut due: Vec<(Nanos, u64)> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.state == MState::Delayed && j.deadline <= now)
            .map(|(id, j)| (j.deadline, *id))
            .collect();
        due.sort();
        for (_, id) in due {
            self.jobs.get_mut(&id).unwrap().state = MState::Ready;
            let mut tubes = unpaused.clone();
            tubes.push(self.jobs[&id].tube.clone());
            self.offer(&tubes, now);
        }
        self.offer(&unpaused, now);
        loop {
            let client = self
                .clients
                .iter()
                .filter_map(|(&c, cl)| {
                    let (_, timeout) = cl.wait?;
                    let soon = self.soonest(c).map(|d| d.saturating_sub(SAFETY_MARGIN_NS));
                    let at = [timeout, soon].into_iter().flatten().min()?;
                    Some((at, c))
                })
                .min();
            let expiry = self
                .jobs
                .iter()
                .filter(|(_, j)| j.state == MState::Reserved)
                .map(|(id, j)| (j.deadline + 1, *id))
                .min();
            match (client, expiry) {
                (Some((at, c)), e) if at <= now && e.is_none_or(|(e, _)| at <= e) => {
                    let wake = if self.deadline_soon(c, now) { Wake::DeadlineSoon } else { Wake::TimedOut };
                    self.clients.get_mut(&c).unwrap().wait = None;
                    self.wakes.push((c, wake));
                }
                (_, Some((at, id))) if at <= now => {
                    self.unreserve(id);
                    self.jobs.get_mut(&id).unwrap().counters[1] += 1;
                    self.job_timeouts += 1;
                    self.make_ready(id, now);
                }
                _ => break,
            }
        }
    }

    fn connect(&mut self, c: usize) {
        self.clients.insert(
            c,
            MClient {
                used: "default".into(),
                watched: vec!["default".into()],
                wait: None,
                reserved: Vec::new(),
                producer: false,
                worker: false,
            },
        );
        self.total_connections += 1;
    }

    fn disconnect(&mut self, c: usize, now: Nanos) {
        self.clients.get_mut(&c).unwrap().wait = None;
        self.advance(now);
        for id in self.clients[&c].reserved.clone() {
            self.unreserve(id);
            self.make_ready(id, now);
        }
        let client = self.clients.remove(&c).unwrap();
        let mut watched = client.watched;
        while !watched.is_empty() {
            let t = watched.swap_remove(0);
            self.maybe_destroy(&t);
        }
        self.maybe_destroy(&client.used);
    }

    fn put(&mut self, c: usize, id: u64, pri: u32, delay_s: u32, ttr_s: u32, now: Nanos) {
        self.advance(now);
        let tube = self.clients[&c].used.clone();
        self.tubes.get_mut(&tube).unwrap().total_jobs += 1;
        self.total_jobs += 1;
        let state = if delay_s > 0 { MState::Delayed } else { MState::Ready };
        let job = MJob {
            tube: tube.clone(),
            state,
            pri,
            delay_s,
            ttr_s: ttr_s.max(1),
            created: now,
            deadline: now + secs(delay_s),
            reserver: None,
            bury_seq: 0,
            counters: [0; 5],
        };
        self.jobs.insert(id, job);
        if delay_s == 0 {
            self.offer(&[tube], now);
        }
    }

    fn reserve(&mut self, c: usize, timeout: Option<u32>, now: Nanos) -> ReserveOutcome {
        self.advance(now);
        self.clients.get_mut(&c).unwrap().worker = true;
        let watched = self.clients[&c].watched.clone();
        if self.deadline_soon(c, now) && self.best_ready(&watched, now, true).is_none() {
            return ReserveOutcome::DeadlineSoon;
        }
        if let Some(id) = self.best_ready(&watched, now, false) {
            self.reserve_for(c, id, now);
            return ReserveOutcome::Reserved(JobRef { id, body: Model::body_of(id) });
        }
        if timeout == Some(0) {
            let soon = self.deadline_soon(c, now);
            return if soon { ReserveOutcome::DeadlineSoon } else { ReserveOutcome::TimedOut };
        }
        self.seq += 1;
        self.clients.get_mut(&c).unwrap().wait = Some((self.seq, timeout.map(|t| now + secs(t))));
        ReserveOutcome::Waiting
    }

    fn held_by(&self, c: usize, id: u64) -> bool {
        self.jobs.get(&id).is_some_and(|j| j.state == MState::Reserved && j.reserver == Some(c))
    }

    fn delete(&mut self, c: usize, id: u64, now: Nanos) -> bool {
        self.advance(now);
        let Some(job) = self.jobs.get(&id) else { return false };
        if job.state == MState::Reserved {
            if job.reserver != Some(c) {
                return false;
            }
            self.unreserve(id);
        }
        let job = self.jobs.remove(&id).unwrap();
        self.tubes.get_mut(&job.tube).unwrap().deletes += 1;
        self.maybe_destroy(&job.tube);
        true
    }

    fn release(&mut self, c: usize, id: u64, pri: u32, delay_s: u32, now: Nanos) -> bool {
        self.advance(now);
        if !self.held_by(c, id) {
            return false;
        }
        self.unreserve(id);
        let job = self.jobs.get_mut(&id).unwrap();
        job.pri = pri;
        job.delay_s = delay_s;
        job.counters[2] += 1;
        if delay_s > 0 {
            job.state = MState::Delayed;
            job.deadline = now + secs(delay_s);
        } else {
            self.make_ready(id, now);
        }
        true
    }

    fn bury(&mut self, c: usize, id: u64, pri: u32, now: Nanos) -> bool {
        self.advance(now);
        if !self.held_by(c, id) {
            return false;
        }
        self.unreserve(id);
        self.bury_seq += 1;
        let job = self.jobs.get_mut(&id).unwrap();
        job.pri = pri;
        job.state = MState::Buried;
        job.bury_seq = self.bury_seq;
        job.counters[3] += 1;
        true
    }

    fn touch(&mut self, c: usize, id: u64, now: Nanos) -> bool {
        self.advance(now);
        if !self.held_by(c, id) {
            return false;
        }
        let job = self.jobs.get_mut(&id).unwrap();
        job.deadline = now + secs(job.ttr_s);
        true
    }

    fn kick_one(&mut self, id: u64, now: Nanos) {
        self.jobs.get_mut(&id).unwrap().counters[4] += 1;
        self.make_ready(id, now);
    }

    fn kick(&mut self, c: usize, bound: u32, now: Nanos) -> u32 {
        self.advance(now);
        let tube = self.clients[&c].used.clone();
        let buried = |m: &Model| {
            m.jobs
                .iter()
                .filter(|(_, j)| j.tube == tube && j.state == MState::Buried)
                .min_by_key(|(_, j)| j.bury_seq)
                .map(|(id, _)| *id)
        };
        let delayed = |m: &Model| {
            m.jobs
                .iter()
                .filter(|(_, j)| j.tube == tube && j.state == MState::Delayed)
                .min_by_key(|(id, j)| (j.deadline, **id))
                .map(|(id, _)| *id)
        };
        let from_buried = buried(self).is_some();
        let mut n = 0;
        while n < bound {
            let next = if from_buried { buried(self) } else { delayed(self) };
            let Some(id) = next else { break };
            self.kick_one(id, now);
            n += 1;
        }
        n
    }

    fn kick_job(&mut self, id: u64, now: Nanos) -> bool {
        self.advance(now);
        if !self.jobs.get(&id).is_some_and(|j| matches!(j.state, MState::Buried | MState::Delayed)) {
            return false;
        }
        self.kick_one(id, now);
        true
    }

    fn reserve_job(&mut self, c: usize, id: u64, now: Nanos) -> Option<JobRef> {
        self.advance(now);
        if self.jobs.get(&id).is_none_or(|j| j.state == MState::Reserved) {
            return None;
        }
        self.clients.get_mut(&c).unwrap().worker = true;
        self.reserve_for(c, id, now);
        Some(JobRef { id, body: Model::body_of(id) })
    }

    fn use_tube(&mut self, c: usize, name: &str) {
        self.tube(name);
        let old = std::mem::replace(&mut self.clients.get_mut(&c).unwrap().used, name.to_string());
        self.maybe_destroy(&old);
    }

    fn watch(&mut self, c: usize, name: &str) -> usize {
        self.tube(name);
        let client = self.clients.get_mut(&c).unwrap();
        if !client.watched.iter().any(|w| w == name) {
            client.watched.push(name.to_string());
        }
        client.watched.len()
    }

    fn ignore(&mut self, c: usize, name: &str) -> Option<usize> {
        let client = self.clients.get_mut(&c).unwrap();
        if let Some(i) = client.watched.iter().position(|w| w == name) {
            if client.watched.len() < 2 {
                return None;
            }
            client.watched.swap_remove(i);
            self.maybe_destroy(name);
        }
        Some(self.clients[&c].watched.len())
    }

    fn pause(&mut self, name: &str, delay_s: u32, now: Nanos) -> bool {
        self.advance(now);
        let Some(tube) = self.tubes.get_mut(name) else { return false };
        tube.pauses += 1;
        if delay_s == 0 {
            tube.pause = None;
            self.offer(&[name.to_string()], now);
        } else {
            tube.pause = Some((secs(delay_s), now + secs(delay_s)));
        }
        true
    }

    fn server_stats(&self) -> [u64; 13] {
        let count = |s: MState| self.jobs.values().filter(|j| j.state == s).count() as u64;
        let urgent = self.jobs.values().filter(|j| j.state == MState::Ready && j.pri < 1024).count() as u64;
        [
            urgent,
            count(MState::Ready),
            count(MState::Reserved),
            count(MState::Delayed),
            count(MState::Buried),
            self.job_timeouts,
            self.total_jobs,
            self.tubes.len() as u64,
            self.clients.len() as u64,
            self.clients.values().filter(|c| c.producer).count() as u64,
            self.clients.values().filter(|c| c.worker).count() as u64,
            self.clients.values().filter(|c| c.wait.is_some()).count() as u64,
            u64::from(self.total_connections),
        ]
    }

    fn tube_stats(&self, name: &str, now: Nanos) -> TubeStats {
        let t = &self.tubes[name];
        let count = |s: MState| self.jobs.values().filter(|j| j.tube == name && j.state == s).count() as u64;
        let (pause_s, pause_left_s) = match t.pause {
            Some((len, until)) if until > now => (len / S, time::secs_until(until, now)),
            _ => (0, 0),
        };
        TubeStats {
            name: name.to_string(),
            urgent: self.jobs.values().filter(|j| j.tube == name && j.state == MState::Ready && j.pri < 1024).count()
                as u64,
            ready: count(MState::Ready),
            reserved: count(MState::Reserved),
            delayed: count(MState::Delayed),
            buried: count(MState::Buried),
            total_jobs: t.total_jobs,
            using: self.clients.values().filter(|c| c.used == name).count() as u64,
            watching: self.clients.values().filter(|c| c.watched.iter().any(|w| w == name)).count() as u64,
            waiting: self.clients.values().filter(|c| c.wait.is_some() && c.watched.iter().any(|w| w == name)).count()
                as u64,
            deletes: t.deletes,
            pauses: t.pauses,
            pause_s,
            pause_left_s,
        }
    }

    fn job_stats(&self, id: u64, now: Nanos) -> JobStats {
        let j = &self.jobs[&id];
        let state = match j.state {
            MState::Ready => "ready",
            MState::Reserved => "reserved",
            MState::Delayed => "delayed",
            MState::Buried => "buried",
        };
        let time_left_s = match j.state {
            MState::Reserved | MState::Delayed => time::secs_until(j.deadline, now),
            _ => 0,
        };
        JobStats {
            id,
            tube: j.tube.clone(),
            state,
            pri: j.pri,
            age_s: time::secs_until(now, j.created),
            delay_s: j.delay_s,
            ttr_s: j.ttr_s,
            time_left_s,
            file: 0,
            reserves: j.counters[0],
            timeouts: j.counters[1],
            releases: j.counters[2],
            buries: j.counters[3],
            kicks: j.counters[4],
        }
    }
}

#[derive(Clone, Debug)]
enum Step {
    Connect,
    Disconnect(usize),
    Put { c: usize, pri: u32, delay_s: u32, ttr_s: u32 },
    Reserve { c: usize, timeout: Option<u32> },
    ReserveJob { c: usize, id: u64 },
    Delete { c: usize, id: u64 },
    Release { c: usize, id: u64, pri: u32, delay_s: u32 },
    Bury { c: usize, id: u64, pri: u32 },
    Touch { c: usize, id: u64 },
    Kick { c: usize, bound: u32 },
    KickJob { id: u64 },
    Use { c: usize, tube: usize },
    Watch { c: usize, tube: usize },
    Ignore { c: usize, tube: usize },
    Pause { tube: usize, delay_s: u32 },
    Advance { quarter_seconds: u64 },
}

const TUBES: [&str; 3] = ["default", "a", "b"];

fn step() -> impl Strategy<Value = Step> {
    let c = 0usize..4;
    let id = 1u64..14;
    let pri = prop_oneof![Just(0u32), Just(1), Just(1023), Just(1024), Just(5)];
    prop_oneof![
        2 => Just(Step::Connect),
        1 => c.clone().prop_map(Step::Disconnect),
        8 => (c.clone(), pri.clone(), 0u32..3, 0u32..4)
            .prop_map(|(c, pri, delay_s, ttr_s)| Step::Put { c, pri, delay_s, ttr_s }),
        6 => (c.clone(), prop_oneof![Just(None), Just(Some(0)), Just(Some(1)), Just(Some(3))])
            .prop_map(|(c, timeout)| Step::Reserve { c, timeout }),
        1 => (c.clone(), id.clone()).prop_map(|(c, id)| Step::ReserveJob { c, id }),
        3 => (c.clone(), id.clone()).prop_map(|(c, id)| Step::Delete { c, id }),
        3 => (c.clone(), id.clone(), pri.clone(), 0u32..3)
            .prop_map(|(c, id, pri, delay_s)| Step::Release { c, id, pri, delay_s }),
        2 => (c.clone(), id.clone(), pri).prop_map(|(c, id, pri)| Step::Bury { c, id, pri }),
        1 => (c.clone(), id.clone()).prop_map(|(c, id)| Step::Touch { c, id }),
        2 => (c.clone(), 0u32..4).prop_map(|(c, bound)| Step::Kick { c, bound }),
        1 => id.prop_map(|id| Step::KickJob { id }),
        2 => (c.clone(), 0usize..3).prop_map(|(c, tube)| Step::Use { c, tube }),
        2 => (c.clone(), 0usize..3).prop_map(|(c, tube)| Step::Watch { c, tube }),
        1 => (c, 0usize..3).prop_map(|(c, tube)| Step::Ignore { c, tube }),
        1 => (0usize..3, 0u32..3).prop_map(|(tube, delay_s)| Step::Pause { tube, delay_s }),
        5 => (0u64..9).prop_map(|quarter_seconds| Step::Advance { quarter_seconds }),
    ]
}

/// Runs both sides through the steps, comparing after each.
fn run_steps(steps: &[Step]) -> Result<(), TestCaseError> {
    let mut e = Engine::new(EngineConfig::default());
    let mut m = Model::new();
    // Model client slots 0..4 map to engine clients; a slot may be empty
    // (never connected, or disconnected).
    let mut slots: [Option<ClientId>; 4] = [None; 4];
    let mut blocked = [false; 4];
    let mut now: Nanos = 0;
    for step in steps {
        // Clients blocked in reserve can only wait or hang up.
        let slot_of = |c: usize| slots[c].filter(|_| !blocked[c]);
        let mut outcome = String::new();
        let mut model_outcome = String::new();
        match *step {
            Step::Connect => {
                if let Some(free) = slots.iter().position(Option::is_none) {
                    let id = e.connect().unwrap();
                    m.connect(id.index());
                    slots[free] = Some(id);
                }
            }
            Step::Disconnect(c) => {
                if let Some(id) = slots[c].take() {
                    blocked[c] = false;
                    e.disconnect(id, now);
                    m.disconnect(id.index(), now);
                }
            }
            Step::Put { c, pri, delay_s, ttr_s } => {
                if let Some(cl) = slot_of(c) {
                    let id = e.allocate_id();
                    outcome = format!("{:?}", e.put(cl, id, now, pri, delay_s, ttr_s, Model::body_of(id), now));
                    m.put(cl.index(), id, pri, delay_s, ttr_s, now);
                    model_outcome = format!("{:?}", PutOutcome::Inserted);
                }
            }
            Step::Reserve { c, timeout } => {
                if let Some(cl) = slot_of(c) {
                    let r = e.reserve(cl, timeout, now);
                    blocked[c] = r == ReserveOutcome::Waiting;
                    outcome = format!("{r:?}");
                    model_outcome = format!("{:?}", m.reserve(cl.index(), timeout, now));
                }
            }
            Step::ReserveJob { c, id } => {
                if let Some(cl) = slot_of(c) {
                    outcome = format!("{:?}", e.reserve_job(cl, id, now));
                    model_outcome = format!("{:?}", m.reserve_job(cl.index(), id, now));
                }
            }
            Step::Delete { c, id } => {
                if let Some(cl) = slot_of(c) {
                    outcome = format!("{}", e.delete(cl, id, now));
                    model_outcome = format!("{}", m.delete(cl.index(), id, now));
                }
            }
            Step::Release { c, id, pri, delay_s } => {
                if let Some(cl) = slot_of(c) {
                    outcome = format!("{}", e.release(cl, id, pri, delay_s, now) == Change::Done);
                    model_outcome = format!("{}", m.release(cl.index(), id, pri, delay_s, now));
                }
            }
            Step::Bury { c, id, pri } => {
                if let Some(cl) = slot_of(c) {
                    outcome = format!("{}", e.bury(cl, id, pri, now) == Change::Done);
                    model_outcome = format!("{}", m.bury(cl.index(), id, pri, now));
                }
            }
            Step::Touch { c, id } => {
                if let Some(cl) = slot_of(c) {
                    outcome = format!("{}", e.touch(cl, id, now));
                    model_outcome = format!("{}", m.touch(cl.index(), id, now));
                }
            }
            Step::Kick { c, bound } => {
                if let Some(cl) = slot_of(c) {
                    outcome = format!("{}", e.kick(cl, bound, now));
                    model_outcome = format!("{}", m.kick(cl.index(), bound, now));
                }
            }
            Step::KickJob { id } => {
                outcome = format!("{}", e.kick_job(id, now));
                model_outcome = format!("{}", m.kick_job(id, now));
            }
            Step::Use { c, tube } => {
                if let Some(cl) = slot_of(c) {
                    e.use_tube(cl, TUBES[tube]).unwrap();
                    m.use_tube(cl.index(), TUBES[tube]);
                }
            }
            Step::Watch { c, tube } => {
                if let Some(cl) = slot_of(c) {
                    outcome = format!("{}", e.watch(cl, TUBES[tube]).unwrap());
                    model_outcome = format!("{}", m.watch(cl.index(), TUBES[tube]));
                }
            }
            Step::Ignore { c, tube } => {
                if let Some(cl) = slot_of(c) {
                    outcome = format!("{:?}", e.ignore(cl, TUBES[tube]));
                    model_outcome = format!("{:?}", m.ignore(cl.index(), TUBES[tube]));
                }
            }
            Step::Pause { tube, delay_s } => {
                outcome = format!("{}", e.pause_tube(TUBES[tube], delay_s, now));
                model_outcome = format!("{}", m.pause(TUBES[tube], delay_s, now));
            }
            Step::Advance { quarter_seconds } => {
                now += quarter_seconds * S / 4;
                e.advance(now);
                m.advance(now);
            }
        }
        prop_assert_eq!(&outcome, &model_outcome, "outcome of {:?} at {}", step, now);
        let wakes: Vec<(usize, Wake)> = e.take_wakes().map(|(c, w)| (c.index(), w)).collect();
        let model_wakes = std::mem::take(&mut m.wakes);
        prop_assert_eq!(&wakes, &model_wakes, "wakes after {:?} at {}", step, now);
        for (c, _) in &wakes {
            let slot = slots.iter().position(|s| s.is_some_and(|s| s.index() == *c)).unwrap();
            blocked[slot] = false;
        }
        compare(&e, &m, &slots, now)?;
    }
    Ok(())
}

fn compare(e: &Engine, m: &Model, slots: &[Option<ClientId>], now: Nanos) -> Result<(), TestCaseError> {
    e.check_invariants(now);
    let s = e.stats();
    let got = [
        s.urgent,
        s.ready,
        s.reserved,
        s.delayed,
        s.buried,
        s.job_timeouts,
        s.total_jobs,
        s.tubes,
        s.connections,
        s.producers,
        s.workers,
        s.waiting,
        u64::from(s.total_connections),
    ];
    prop_assert_eq!(got, m.server_stats(), "server stats at {}", now);
    prop_assert_eq!(e.tube_names().collect::<Vec<_>>(), m.tube_list.iter().map(String::as_str).collect::<Vec<_>>());
    for name in &m.tube_list {
        prop_assert_eq!(e.stats_tube(name, now), Some(m.tube_stats(name, now)));
    }
    for &id in m.jobs.keys() {
        prop_assert_eq!(e.stats_job(id, now), Some(m.job_stats(id, now)));
    }
    prop_assert_eq!(e.jobs.len(), m.jobs.len());
    for c in slots.iter().flatten() {
        let watched: Vec<&str> = e.watched_tubes(*c).collect();
        prop_assert_eq!(watched, m.clients[&c.index()].watched.iter().map(String::as_str).collect::<Vec<_>>());
        prop_assert_eq!(e.used_tube(*c), Some(m.clients[&c.index()].used.as_str()));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_the_naive_model(steps in proptest::collection::vec(step(), 1..120)) {
        run_steps(&steps)?;
    }
}

// ----- running out of memory ---------------------------------------------

/// Runs `f` with every fallible reservation refused after the first `k`.
fn failing_after<R>(k: u32, f: impl FnOnce() -> R) -> R {
    memory::fail_for_test(k, u32::MAX);
    let result = f();
    memory::fail_for_test(0, 0);
    result
}

#[test]
fn a_put_refused_for_want_of_memory_changes_nothing() {
    for (delay_s, tube) in [(0, "default"), (5, "default"), (0, "other")] {
        let mut e = Engine::new(EngineConfig::default());
        let c = e.connect().unwrap();
        e.use_tube(c, tube).unwrap();
        // A full arena chunk, id page and heap: the next put needs a new
        // one of each, and room in every heap.
        for _ in 0..arena::CHUNK {
            let id = e.allocate_id();
            assert_eq!(e.put(c, id, 0, 0, delay_s, 10, body("x"), 0), PutOutcome::Inserted);
        }
        let before = format!("{:?}", e.stats());
        let mut k = 0;
        loop {
            let id = e.allocate_id();
            let job_body = body("y");
            let outcome = failing_after(k, || e.put(c, id, 0, 0, delay_s, 10, job_body, 0));
            e.check_invariants(0);
            if outcome == PutOutcome::Inserted {
                assert_eq!(e.peek(id).unwrap().body, body("y"));
                break;
            }
            assert_eq!(outcome, PutOutcome::OutOfMemory);
            assert_eq!(format!("{:?}", e.stats()), before, "a refused put left a trace (failing at {k})");
            assert!(e.peek(id).is_none());
            k += 1;
        }
        assert!(k >= 4, "only {k} reservations were tried");
    }
}

#[test]
fn a_client_tube_or_wait_refused_for_want_of_memory_changes_nothing() {
    let mut e = Engine::new(EngineConfig::default());
    // The first client needs room of every kind.
    let mut k = 0;
    let a = loop {
        match failing_after(k, || e.connect()) {
            Ok(a) => break a,
            Err(OutOfMemory) => {
                e.check_invariants(0);
                assert_eq!(e.stats().connections, 0);
                k += 1;
            }
        }
    };
    assert!(k >= 2, "only {k} reservations were tried");
    for watch in [false, true] {
        let mut k = 0;
        loop {
            let made =
                failing_after(k, || if watch { e.watch(a, "fresh").map(|_| ()) } else { e.use_tube(a, "fresh") });
            e.check_invariants(0);
            if made.is_ok() {
                break;
            }
            assert!(!e.has_tube("fresh"), "a tube made for a refused command stayed (failing at {k})");
            k += 1;
        }
        assert!(k >= 1);
        // Back as it was.
        if watch {
            assert_eq!(e.ignore(a, "fresh"), Some(1));
        } else {
            e.use_tube(a, "default").unwrap();
        }
        assert!(!e.has_tube("fresh"));
    }
    assert_eq!(e.used_tube(a), Some("default"));
    assert_eq!(e.watched_tubes(a).count(), 1);
    assert_eq!(failing_after(0, || e.reserve(a, None, 0)), ReserveOutcome::OutOfMemory);
    e.check_invariants(0);
    assert!(!e.is_waiting(a));
    assert_eq!(e.reserve(a, None, 0), ReserveOutcome::Waiting);
    e.check_invariants(0);
}

#[test]
fn deleting_needs_no_memory() {
    let mut e = Engine::new(EngineConfig::default());
    let c = e.connect().unwrap();
    // Enough jobs that deleting most leaves sparse id pages to evict.
    let ids: Vec<u64> = (0..10 * arena::CHUNK)
        .map(|_| {
            let id = e.allocate_id();
            assert_eq!(e.put(c, id, 0, 0, 0, 10, body("x"), 0), PutOutcome::Inserted);
            id
        })
        .collect();
    failing_after(0, || {
        for &id in ids.iter().filter(|&&id| id % 10 != 0) {
            assert!(e.delete(c, id, 0));
        }
    });
    // Pages left sparse for want of room in the overflow still find every
    // job, and go with the next delete that touches them.
    assert!(ids.iter().filter(|&&id| id % 10 == 0).all(|&id| e.peek(id).is_some()));
    for &id in ids.iter().filter(|&&id| id % 10 == 0) {
        assert!(e.delete(c, id, 0));
    }
    e.check_invariants(0);
    assert_eq!(e.stats().ready, 0);
}

#[test]
fn a_shard_without_default_serves_clients_that_joined_it() {
    // `default` hashes to shard 0 of two: shard 1 never makes it, and its
    // clients start with no tube of it, used or watched.
    let mut e = Engine::new(EngineConfig { shard: 1, shards: 2 });
    assert!(!e.has_tube("default"));
    assert_eq!(e.stats().tubes, 0);
    let c = e.join().unwrap();
    assert_eq!((e.used_tube(c), e.watched_tubes(c).count()), (None, 0));
    e.use_tube(c, "b").unwrap();
    assert_eq!(e.watch(c, "b").unwrap(), 1);
    let id = e.allocate_id();
    assert_eq!(e.put(c, id, 0, 5, 0, 10, body("job"), 0), PutOutcome::Inserted);
    match e.reserve(c, None, 0) {
        ReserveOutcome::Reserved(job) => assert_eq!(job.id, id),
        other => panic!("{other:?}"),
    }
    // The used tube moving away and the last watch of this shard going
    // leave the tube to its job.
    e.unuse(c);
    assert!(e.unwatch(c, "b"));
    assert!(!e.unwatch(c, "b"), "not watched any more");
    let tube = e.stats_tube("b", 0).unwrap();
    assert_eq!((tube.using, tube.watching, tube.reserved), (0, 0, 1));
    e.check_invariants(0);
    // Deleting the job ends the tube; leaving ends the client.
    assert!(e.delete(c, id, 0));
    assert!(!e.has_tube("b"));
    e.disconnect(c, 0);
    assert_eq!(e.stats().tubes, 0);
    e.check_invariants(0);
}
