//! The log as a whole, through the engine: random histories of commands
//! with their records written to files in memory, the files cut at every
//! command's boundary and at random bytes (inside records too, as a crash
//! leaves them), read back and restored into a new engine. The restored
//! jobs must be those of the engine when the records up to the cut were
//! made: exactly at a boundary, and between the two neighbouring states
//! inside one.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::Kept;
use crate::engine::{Body, ClientId, Engine, EngineConfig, JobState, NANOS_PER_SEC, Nanos, PutOutcome, StateSet};
use crate::wal::image::ImageState;
use crate::wal::log::{Log, LogConfig, SyncPolicy};
use crate::wal::recover::Recovered;
use crate::wal::tests::{MemFiles, recover_files};

const TUBES: [&str; 3] = ["default", "a", "bb"];

#[derive(Clone, Debug)]
enum Step {
    Connect,
    Disconnect(usize),
    Use(usize, usize),
    Watch(usize, usize),
    Put {
        c: usize,
        pri: u32,
        delay_s: u32,
        ttr_s: u32,
        body: usize,
    },
    Reserve(usize),
    Delete(usize, usize),
    Release {
        c: usize,
        job: usize,
        pri: u32,
        delay_s: u32,
    },
    Bury(usize, usize, u32),
    Kick(usize, u32),
    KickJob(usize),
    Touch(usize, usize),
    /// `clear-tube` of a tube, the states as bits: ready, delayed, buried.
    Clear(usize, u8),
    Advance(u64),
    Turn,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => Just(Step::Connect),
        1 => (0..4usize).prop_map(Step::Disconnect),
        2 => (0..4usize, 0..3usize).prop_map(|(c, t)| Step::Use(c, t)),
        2 => (0..4usize, 0..3usize).prop_map(|(c, t)| Step::Watch(c, t)),
        8 => (0..4usize, 0..3u32, prop_oneof![3 => Just(0u32), 1 => 1..3u32], 1..3u32, prop_oneof![5 => 0..60usize, 1 => Just(3000usize)])
            .prop_map(|(c, pri, delay_s, ttr_s, body)| Step::Put { c, pri, delay_s, ttr_s, body }),
        5 => (0..4usize).prop_map(Step::Reserve),
        4 => (0..4usize, 0..40usize).prop_map(|(c, j)| Step::Delete(c, j)),
        3 => (0..4usize, 0..40usize, 0..3u32, prop_oneof![Just(0u32), 1..3u32])
            .prop_map(|(c, job, pri, delay_s)| Step::Release { c, job, pri, delay_s }),
        3 => (0..4usize, 0..40usize, 0..3u32).prop_map(|(c, j, p)| Step::Bury(c, j, p)),
        2 => (0..4usize, 0..4u32).prop_map(|(c, n)| Step::Kick(c, n)),
        2 => (0..40usize).prop_map(Step::KickJob),
        1 => (0..4usize, 0..40usize).prop_map(|(c, j)| Step::Touch(c, j)),
        1 => (0..3usize, 1..8u8).prop_map(|(t, states)| Step::Clear(t, states)),
        3 => (0..3_000_000_000u64).prop_map(Step::Advance),
        4 => Just(Step::Turn),
    ]
}

/// The engine's jobs when the log had `appended` bytes.
#[derive(Clone, Debug)]
struct Snapshot {
    appended: u64,
    jobs: BTreeMap<u64, Kept>,
    buried: BTreeMap<String, Vec<u64>>,
    /// The highest id handed out to a job whose put was recorded.
    max_id: u64,
}

fn config(segment_bytes: u64) -> LogConfig {
    LogConfig { shard: 0, shards: 1, segment_bytes, sync: SyncPolicy::Always }
}

/// Jobs as they come back at `now`: a delayed job whose deadline passed is
/// ready.
fn at(jobs: &BTreeMap<u64, Kept>, now: Nanos) -> BTreeMap<u64, Kept> {
    jobs.iter()
        .map(|(&id, k)| {
            let mut k = k.clone();
            if k.state == ImageState::Delayed && k.deadline <= now {
                k.state = ImageState::Ready;
                k.deadline = 0;
            }
            (id, k)
        })
        .collect()
}

struct Run {
    e: Engine,
    files: MemFiles,
    clients: Vec<Option<ClientId>>,
    ids: Vec<u64>,
    now: Nanos,
    snaps: Vec<Snapshot>,
    max_id: u64,
}

impl Run {
    fn new(segment_bytes: u64) -> Run {
        let files = MemFiles::default();
        let now = 1_700_000_000 * NANOS_PER_SEC;
        let mut e = Engine::new(EngineConfig::default());
        e.attach_log(Log::open(config(segment_bytes), Box::new(files.clone()), &Recovered::default(), now).unwrap());
        let c = e.connect().unwrap();
        let empty = Snapshot { appended: 0, jobs: BTreeMap::new(), buried: BTreeMap::new(), max_id: 0 };
        let mut run = Run { e, files, clients: vec![Some(c)], ids: Vec::new(), now, snaps: vec![empty], max_id: 0 };
        run.snapshot();
        run
    }

    fn snapshot(&mut self) {
        let appended = self.e.log().unwrap().appended_bytes();
        if self.snaps.last().is_some_and(|s| s.appended == appended) {
            // Nothing recorded since: the state a restart sees is the same.
            self.snaps.pop();
        }
        self.snaps.push(Snapshot { appended, jobs: self.e.kept(), buried: self.e.buried_order(), max_id: self.max_id });
    }

    fn client(&self, c: usize) -> Option<ClientId> {
        self.clients.get(c).copied().flatten()
    }

    fn job(&self, j: usize) -> u64 {
        self.ids.get(j).copied().unwrap_or(999_999)
    }

    fn apply(&mut self, step: &Step) {
        let now = self.now;
        match *step {
            Step::Connect => self.clients.push(Some(self.e.connect().unwrap())),
            Step::Disconnect(c) => {
                if let Some(cl) = self.client(c) {
                    self.e.disconnect(cl, now);
                    self.clients[c] = None;
                }
            }
            Step::Use(c, t) => {
                if let Some(cl) = self.client(c) {
                    self.e.use_tube(cl, TUBES[t]).unwrap();
                }
            }
            Step::Watch(c, t) => {
                if let Some(cl) = self.client(c) {
                    self.e.watch(cl, TUBES[t]).unwrap();
                }
            }
            Step::Put { c, pri, delay_s, ttr_s, body } => {
                if let Some(cl) = self.client(c) {
                    let id = self.e.allocate_id();
                    let bytes: Vec<u8> = (0..body).map(|i| (i as u8).wrapping_mul(31) ^ id as u8).collect();
                    let outcome = self.e.put(cl, id, now, pri, delay_s, ttr_s, Body::from_slice(&bytes), now);
                    assert_eq!(outcome, PutOutcome::Inserted);
                    self.ids.push(id);
                    self.max_id = id;
                }
            }
            Step::Reserve(c) => {
                if let Some(cl) = self.client(c) {
                    self.e.reserve(cl, Some(0), now);
                }
            }
            Step::Delete(c, j) => {
                if let Some(cl) = self.client(c) {
                    self.e.delete(cl, self.job(j), now);
                }
            }
            Step::Release { c, job, pri, delay_s } => {
                if let Some(cl) = self.client(c) {
                    self.e.release(cl, self.job(job), pri, delay_s, now);
                }
            }
            Step::Bury(c, j, pri) => {
                if let Some(cl) = self.client(c) {
                    self.e.bury(cl, self.job(j), pri, now);
                }
            }
            Step::Kick(c, n) => {
                if let Some(cl) = self.client(c) {
                    self.e.kick(cl, n, now);
                }
            }
            Step::KickJob(j) => {
                self.e.kick_job(self.job(j), now);
            }
            Step::Touch(c, j) => {
                if let Some(cl) = self.client(c) {
                    self.e.touch(cl, self.job(j), now);
                }
            }
            Step::Clear(t, bits) => {
                let mut states = StateSet::default();
                for (bit, state) in [JobState::Ready, JobState::Delayed, JobState::Buried].into_iter().enumerate() {
                    if bits & 1 << bit != 0 {
                        states = states.with(state);
                    }
                }
                self.e.clear_tube(TUBES[t], states, now);
            }
            Step::Advance(ns) => {
                self.now += ns;
                self.e.advance(self.now);
            }
            Step::Turn => self.turn(),
        }
        self.e.take_wakes().for_each(drop);
        self.e.check_invariants(self.now);
        self.snapshot();
    }

    /// The loop's end of a turn: the batch written and synced, upkeep,
    /// compaction.
    fn turn(&mut self) {
        let log = self.e.log_mut().unwrap();
        if let Some(batch) = log.take_batch() {
            self.files.apply(&batch);
            log.written(batch.number);
            log.synced(batch.number);
        }
        let budget = log.maintain(self.now);
        self.e.compact(budget);
    }

    /// Cuts the log at `cut` bytes, recovers and restores, and checks the
    /// jobs that come back.
    fn check_cut(&self, cut: u64) {
        let recovered = recover_files(&self.files.at_cut(cut));
        let now = self.now;
        let next_id = recovered.next_id;
        let mut e2 = Engine::new(EngineConfig::default());
        let log = Log::open(config(1 << 20), Box::new(MemFiles::default()), &recovered, now).unwrap();
        e2.attach_log(log);
        e2.restore(recovered.jobs, next_id, now).unwrap();
        e2.check_invariants(now);
        let got = e2.kept();
        let i = self.snaps.iter().rposition(|s| s.appended <= cut).expect("the first snapshot is at 0 bytes");
        let lo = &self.snaps[i];
        let want = at(&lo.jobs, now);
        // Ids are never handed out again, whatever was lost.
        let id = e2.allocate_id();
        assert!(id > lo.max_id, "cut {cut}: id {id} handed out again (highest recorded {})", lo.max_id);
        if lo.appended == cut || i + 1 == self.snaps.len() {
            assert_eq!(got, want, "cut {cut} at a command's boundary");
            assert_eq!(e2.buried_order(), lo.buried, "cut {cut}: buried order");
            return;
        }
        // Inside the records of one command: each job as before or after
        // it, none made up.
        let hi = at(&self.snaps[i + 1].jobs, now);
        let before: BTreeSet<u64> = want.keys().copied().collect();
        let after: BTreeSet<u64> = hi.keys().copied().collect();
        for (id, kept) in &got {
            assert!(want.get(id) == Some(kept) || hi.get(id) == Some(kept), "cut {cut}: job {id} is {kept:?}");
        }
        let got_ids: BTreeSet<u64> = got.keys().copied().collect();
        assert!(before.intersection(&after).all(|id| got_ids.contains(id)), "cut {cut}: a job lost");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn a_log_cut_anywhere_brings_back_the_jobs_of_its_records(
        steps in proptest::collection::vec(step(), 1..80),
        segment_bytes in prop_oneof![Just(700u64), Just(4096u64), Just(1u64 << 20)],
        cuts in proptest::collection::vec(0.0f64..1.0, 30),
    ) {
        let mut run = Run::new(segment_bytes);
        for s in &steps {
            run.apply(s);
        }
        run.turn();
        let total = run.e.log().unwrap().appended_bytes();
        let boundaries: Vec<u64> = run.snaps.iter().map(|s| s.appended).collect();
        for cut in boundaries {
            run.check_cut(cut);
        }
        for f in cuts {
            run.check_cut((f * total as f64) as u64);
        }
        run.check_cut(total);
    }
}

#[test]
fn buried_jobs_come_back_in_the_order_they_were_buried() {
    let mut run = Run::new(1 << 20);
    for _ in 0..4 {
        run.apply(&Step::Put { c: 0, pri: 1, delay_s: 0, ttr_s: 60, body: 3 });
    }
    // Reserve all four, bury them in the order 3, 1, 4, 2 (C beanstalkd
    // brings them back in the order of their puts).
    for _ in 0..4 {
        run.apply(&Step::Reserve(0));
    }
    for j in [2, 0, 3, 1] {
        run.apply(&Step::Bury(0, j, 5));
    }
    run.turn();
    let order = run.e.buried_order();
    assert_eq!(order["default"], vec![run.ids[2], run.ids[0], run.ids[3], run.ids[1]]);
    run.check_cut(run.e.log().unwrap().appended_bytes());
}
