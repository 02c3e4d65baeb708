//! The queue engine: one shard's tubes, jobs, waiting clients and timers, as
//! a deterministic state machine.
//!
//! # What it must never do
//! No I/O, no clock reads, no threads, no formatting of replies. Time comes in
//! as an argument (`now`, nanoseconds on a monotonic clock), results go out as
//! return values, and replies owed to *other* clients (a waiter that got a
//! job, timed out or hit DEADLINE_SOON) are queued as [`Wake`]s for the
//! caller to deliver. That is what lets model-based tests, simulations and
//! the network shell drive the same code.
//!
//! # Invariants
//! * Every job is in exactly one structure chosen by its state (see
//!   [`job`]); heap back-pointers are exact; counters match the structures.
//! * After every public call, no tube that is not paused has both a ready
//!   job and a live waiter. Matching is therefore event-driven: a job that
//!   becomes ready is offered to its tube's oldest waiter at once, a client
//!   that starts to wait takes the best `(pri, id)` ready job across its
//!   unpaused watched tubes, and an unpaused tube serves its waiters. This
//!   gives the same result as beanstalkd's scan of every tube on every pass,
//!   without the scan: cost does not grow with the number of tubes.
//! * Waiters of one tube are served first come, first served (a deliberate
//!   divergence from beanstalkd's cursor-and-swap order, see docs/COMPAT.md).
//! * Timers live in three indexed heaps (tubes by next delayed job or pause
//!   end, reserved jobs by TTR deadline, waiting clients by wake-up time), so
//!   [`Engine::advance`] does work only for what is due.
//! * Tubes are reference counted by the clients using and watching them and
//!   by their jobs; an unreferenced tube other than `default` is destroyed at
//!   once, its counters and pause with it.
//! * Job ids come from one [`IdSource`] shared by every shard's engine:
//!   increasing in the order puts are accepted, starting at 1, never
//!   handed out twice (across restarts too, through the log).
//! * Memory: what a call adds (a job, a tube, a client, a waiter, a
//!   watched tube) is reserved first and fallibly, and a refusal changes
//!   nothing and is reported (`PutOutcome::OutOfMemory` and the like).
//!   Room in every structure a job, tube or client can later enter is
//!   reserved with it: each heap a job can be in holds as many places as
//!   there are jobs that may enter it, the client timers and the wake list
//!   one per client, the tube timers one per tube. So moving a job, a
//!   timer firing and a client leaving never allocate and cannot fail.

mod admin;
pub mod arena;
pub mod body;
pub mod client;
pub mod column;
pub mod directory;
pub mod heap;
mod ids;
pub mod job;
mod keys;
pub mod spanning;
pub mod stats;
pub mod time;
pub mod tube;
mod wal;

use std::hash::{BuildHasher, Hasher, RandomState};

use hashbrown::HashTable;

use crate::memory::{self, OutOfMemory};
pub use admin::{LIST_JOBS_COUNT_MAX, StateSet};
use arena::{Arena, Slots};
pub use body::{Body, BodyBuilder};
use client::{Client, Wait};
use column::Column;
use heap::{HeapOrder, IndexedHeap, NO_POS};
use ids::IdMap;
pub use ids::IdSource;
pub use job::JobState;
use job::{Extras, Job, NIL};
pub use spanning::{Claim, ClaimState, Rank, SpanServed, TakeOutcome};
pub use stats::{JobStats, Op, OpCounts, ServerStats, TubeStats};
pub use time::{NANOS_PER_SEC, Nanos, SAFETY_MARGIN_NS, secs};
pub use tube::shard_of_tube;
use tube::{Pause, Tube, Waiter};
pub use wal::NoLogSpace;

// While memory is short, a put is accepted only with a margin beyond its
// body for the fresh pages it may need (see `make_room_for_job`): a chunk
// of the job arena, a page of the delayed jobs' column and of the log's
// positions, and a page of the id index.
const _: () = assert!(
    arena::CHUNK * size_of::<Job>()
        + column::PAGE_SLOTS * (size_of::<Extras>() + size_of::<wal::WalPos>())
        + ids::PAGE_BYTES
        <= memory::SHORT_MARGIN_BYTES
);

/// The name of the tube every client starts with; it is never destroyed.
pub const DEFAULT_TUBE: &str = "default";

/// A client of this shard (one per connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientId(u32);

impl ClientId {
    /// The raw slab key, for callers that index their own tables by client.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// What a reply needs of a job: its id and its body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRef {
    pub id: u64,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReserveOutcome {
    Reserved(JobRef),
    DeadlineSoon,
    TimedOut,
    /// The client now waits; its answer will come as a [`Wake`].
    Waiting,
    /// Waiting needs memory that cannot be had; nothing changed.
    OutOfMemory,
}

/// An answer owed to a waiting client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wake {
    Reserved(JobRef),
    TimedOut,
    DeadlineSoon,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    Inserted,
    Draining,
    /// The job could not be stored for want of memory; nothing changed.
    OutOfMemory,
    /// The log has no room for the job (a full disk): OUT_OF_MEMORY, as
    /// beanstalkd answers.
    NoLogSpace,
}

/// The outcome of a command that changes one job and may need the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Done,
    NotFound,
    /// The change could not be recorded (a full disk); nothing changed.
    NoLogSpace,
}

impl From<bool> for Change {
    fn from(done: bool) -> Change {
        if done { Change::Done } else { Change::NotFound }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct EngineConfig {
    /// This shard's number, `0..shards`.
    pub shard: u32,
    pub shards: u32,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig { shard: 0, shards: 1 }
    }
}

/// Global counters kept incrementally (the rest of `stats` is derived).
#[derive(Debug, Default)]
struct Counts {
    urgent: u64,
    ready: u64,
    reserved: u64,
    delayed: u64,
    buried: u64,
    job_timeouts: u64,
    total_jobs: u64,
    producers: u64,
    workers: u64,
    waiting: u64,
    total_connections: u32,
}

pub struct Engine {
    config: EngineConfig,
    jobs: Arena<Job>,
    /// The rarely set fields of jobs, by job key: paged, so that growth
    /// never rehashes or copies anything large (see [`column`]).
    extras: Column<Extras>,
    /// Job id → arena key.
    ids: IdMap,
    tubes: Slots<Tube>,
    /// Tube name → slab key, hashed with a random key because names come
    /// from clients.
    tube_names: HashTable<u32>,
    name_hasher: RandomState,
    /// Tubes in `list-tubes` order.
    tube_list: Vec<u32>,
    default_tube: u32,
    clients: Slots<Client>,
    /// Reserved jobs by (deadline, id).
    ttr: IndexedHeap,
    /// Tubes with delayed jobs, by their soonest one's (deadline, id).
    delay_timers: IndexedHeap,
    /// Paused tubes by the end of their pause.
    pause_timers: IndexedHeap,
    /// Waiting clients by wake-up time.
    client_timers: IndexedHeap,
    id_source: IdSource,
    wait_seq: u64,
    counts: Counts,
    ops: OpCounts,
    draining: bool,
    wakes: Vec<(ClientId, Wake)>,
    /// The write-ahead log, with `-b`.
    wal: Option<Box<crate::wal::log::Log>>,
    /// Where each job's records are, while there is a log.
    wal_pos: wal::WalPositions,
    /// The order of the next bury: a buried job keeps it in its `deadline`
    /// (unused while buried), so the log can say in which order buried jobs
    /// were buried.
    bury_seq: u64,
    /// Tubes whose pause ended in the current [`Engine::advance`], with
    /// room for every tube and one more.
    unpaused: Vec<u32>,
    /// Spanning waits registered here (see [`spanning`]).
    spans: Slots<spanning::Span>,
    /// Answers owed to spanning waits served here, with room for one per
    /// registration.
    span_served: Vec<SpanServed>,
    /// Remote clients whose reservations ran out here, with room for every
    /// remote client.
    expiry_notices: Vec<u32>,
    /// The server's tube names in `list-tubes` order, when several shards
    /// share it (see [`directory`]).
    directory: Option<directory::Directory>,
}

impl Engine {
    /// An engine with ids of its own (one shard, or a test).
    pub fn new(config: EngineConfig) -> Engine {
        Engine::with_id_source(config, IdSource::default())
    }

    /// An engine taking its ids from `id_source`, shared with the other
    /// shards' engines.
    pub fn with_id_source(config: EngineConfig, id_source: IdSource) -> Engine {
        assert!(config.shards >= 1 && config.shard < config.shards, "bad shard numbering");
        let mut engine = Engine {
            config,
            jobs: Arena::default(),
            extras: Column::default(),
            // Ids are one sequence for the server; a shard's are a sparse
            // part of it, which the map's overflow takes when it is thin.
            ids: IdMap::new(1, 1),
            tubes: Slots::default(),
            tube_names: HashTable::new(),
            name_hasher: RandomState::new(),
            tube_list: Vec::new(),
            default_tube: 0,
            clients: Slots::default(),
            ttr: IndexedHeap::default(),
            delay_timers: IndexedHeap::default(),
            pause_timers: IndexedHeap::default(),
            client_timers: IndexedHeap::default(),
            id_source,
            wait_seq: 0,
            counts: Counts::default(),
            ops: OpCounts::default(),
            draining: false,
            wakes: Vec::new(),
            wal: None,
            wal_pos: wal::WalPositions::default(),
            bury_seq: 0,
            unpaused: Vec::new(),
            spans: Slots::default(),
            span_served: Vec::new(),
            expiry_notices: Vec::new(),
            directory: None,
        };
        // `default` lives on the shard its name hashes to, like any tube;
        // the others never make it.
        engine.default_tube = NIL;
        if shard_of_tube(DEFAULT_TUBE, config.shards) == config.shard {
            engine.default_tube = engine.tube_for_name(DEFAULT_TUBE).expect("memory for the default tube at start-up");
        }
        engine
    }

    pub fn config(&self) -> EngineConfig {
        self.config
    }

    /// Shares `directory`, the server's list of tube names, with the other
    /// shards' engines; the tubes this engine holds already are entered.
    pub fn set_directory(&mut self, directory: directory::Directory) {
        for name in self.tube_names() {
            directory.add(name.into());
        }
        self.directory = Some(directory);
    }

    // ----- clients -------------------------------------------------------

    /// A new client, using and watching `default` (this shard must own
    /// it); refused when the memory for it cannot be had.
    pub fn connect(&mut self) -> Result<ClientId, OutOfMemory> {
        assert_ne!(self.default_tube, NIL, "a client of the default tube on a shard that does not own it");
        let c = self.add_client(Client::new(self.default_tube))?;
        let default = &mut self.tubes[self.default_tube as usize];
        default.using += 1;
        default.watching += 1;
        self.counts.total_connections = self.counts.total_connections.wrapping_add(1);
        Ok(c)
    }

    /// A client that uses and watches none of this shard's tubes: a
    /// connection whose session is on another core, or that has not yet
    /// named a tube of this shard. It is not counted as a connection (its
    /// session's core counts it).
    pub fn join(&mut self) -> Result<ClientId, OutOfMemory> {
        self.add_client(Client::detached())
    }

    fn add_client(&mut self, client: Client) -> Result<ClientId, OutOfMemory> {
        self.clients.try_reserve()?;
        assert!(self.clients.next_key() < NIL, "too many clients");
        let clients = self.clients.len() + 1;
        self.client_timers.try_reserve(clients)?;
        reserve_total(&mut self.wakes, clients)?;
        Ok(ClientId(self.clients.insert(client)))
    }

    /// Ends a client: it stops waiting, its reserved jobs go back to ready in
    /// the order it reserved them (each may be handed to a waiter at once),
    /// and its tubes lose their references, in beanstalkd's order.
    pub fn disconnect(&mut self, c: ClientId, now: Nanos) {
        // The wait ends first, so that the timers run below cannot answer a
        // client that is leaving (say with DEADLINE_SOON); an answer not
        // yet taken is dropped, and a job it handed over goes back below.
        if self.clients[c.index()].wait.is_some() {
            self.end_wait(c.0);
        }
        self.wakes.retain(|(w, _)| *w != c);
        self.span_served.retain(|s| s.client != c);
        self.expiry_notices.retain(|&w| w != c.0);
        self.advance(now);
        loop {
            let head = self.clients[c.index()].reserved.head;
            if head == NIL {
                break;
            }
            self.detach(head);
            self.enqueue_ready(head, now);
        }
        let client = self.clients.remove(c.0);
        if client.producer {
            self.counts.producers -= 1;
        }
        if client.worker {
            self.counts.workers -= 1;
        }
        // beanstalkd empties the watch set by removing its first entry and
        // moving the last one into the gap, which decides the order in which
        // tubes are destroyed and so the later order of list-tubes.
        let mut watched = client.watched;
        while !watched.is_empty() {
            let t = watched.swap_remove(0);
            self.tubes[t as usize].watching -= 1;
            self.release_tube(t);
        }
        if client.used != NIL {
            self.tubes[client.used as usize].using -= 1;
            self.release_tube(client.used);
        }
    }

    pub fn set_producer(&mut self, c: ClientId) {
        let client = &mut self.clients[c.index()];
        if !client.producer {
            client.producer = true;
            self.counts.producers += 1;
        }
    }

    fn set_worker(&mut self, c: ClientId) {
        let client = &mut self.clients[c.index()];
        if !client.worker {
            client.worker = true;
            self.counts.workers += 1;
        }
    }

    pub fn is_waiting(&self, c: ClientId) -> bool {
        self.clients[c.index()].wait.is_some()
    }

    /// Answers owed to other clients, in the order they arose.
    /// Whether [`Engine::take_wakes`] has anything.
    pub fn has_wakes(&self) -> bool {
        !self.wakes.is_empty()
    }

    pub fn take_wakes(&mut self) -> std::vec::Drain<'_, (ClientId, Wake)> {
        self.wakes.drain(..)
    }

    // ----- counters and modes --------------------------------------------

    pub fn count(&mut self, op: Op) {
        self.ops.bump(op);
    }

    pub fn set_draining(&mut self) {
        self.draining = true;
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }

    // ----- tubes ---------------------------------------------------------

    /// Makes `name` the client's used tube, creating it if need be;
    /// refused when a new tube cannot be had.
    pub fn use_tube(&mut self, c: ClientId, name: &str) -> Result<(), OutOfMemory> {
        let t = self.tube_for_name(name)?;
        let old = self.clients[c.index()].used;
        if old != t {
            self.tubes[t as usize].using += 1;
            self.clients[c.index()].used = t;
            if old != NIL {
                self.tubes[old as usize].using -= 1;
                self.release_tube(old);
            }
        }
        Ok(())
    }

    /// The client's used tube moved to another shard: this one's loses its
    /// reference (and goes, if nothing else holds it).
    pub fn unuse(&mut self, c: ClientId) {
        let old = std::mem::replace(&mut self.clients[c.index()].used, NIL);
        if old != NIL {
            self.tubes[old as usize].using -= 1;
            self.release_tube(old);
        }
    }

    /// Whether a tube of that name exists.
    pub fn has_tube(&self, name: &str) -> bool {
        self.find_tube(name).is_some()
    }

    /// The client's used tube, when it is on this shard.
    pub fn used_tube(&self, c: ClientId) -> Option<&str> {
        let t = self.clients[c.index()].used;
        (t != NIL).then(|| &*self.tubes[t as usize].name)
    }

    /// Adds a tube to the watch set, creating it if need be; returns the
    /// number of watched tubes, or refuses when the memory cannot be had.
    pub fn watch(&mut self, c: ClientId, name: &str) -> Result<usize, OutOfMemory> {
        let t = self.tube_for_name(name)?;
        let client = &mut self.clients[c.index()];
        if !client.watched.contains(&t) {
            if memory::attempt(|| client.watched.try_reserve(1)).is_err() {
                // A tube made for this watch alone goes again.
                self.release_tube(t);
                return Err(OutOfMemory);
            }
            client.watched.push(t);
            self.tubes[t as usize].watching += 1;
        }
        Ok(self.clients[c.index()].watched.len())
    }

    /// Removes a tube from the watch set; returns the number of watched
    /// tubes, or `None` (NOT_IGNORED) when it is the last one. Ignoring a
    /// tube that is not watched is not an error and creates nothing.
    pub fn ignore(&mut self, c: ClientId, name: &str) -> Option<usize> {
        let found = self.find_tube(name);
        let client = &mut self.clients[c.index()];
        if let Some(t) = found
            && let Some(i) = client.watched.iter().position(|&w| w == t)
        {
            if client.watched.len() < 2 {
                return None;
            }
            client.watched.swap_remove(i);
            self.tubes[t as usize].watching -= 1;
            self.release_tube(t);
        }
        Some(self.clients[c.index()].watched.len())
    }

    /// Removes a tube from the watch set even when it is the last one of
    /// this shard (its session, which keeps the whole watch set, decides
    /// NOT_IGNORED); false when it was not watched.
    pub fn unwatch(&mut self, c: ClientId, name: &str) -> bool {
        let Some(t) = self.find_tube(name) else { return false };
        let client = &mut self.clients[c.index()];
        let Some(i) = client.watched.iter().position(|&w| w == t) else { return false };
        client.watched.swap_remove(i);
        self.tubes[t as usize].watching -= 1;
        self.release_tube(t);
        true
    }

    pub fn watched_tubes(&self, c: ClientId) -> impl Iterator<Item = &str> {
        self.clients[c.index()].watched.iter().map(|&t| &*self.tubes[t as usize].name)
    }

    pub fn tube_names(&self) -> impl Iterator<Item = &str> {
        self.tube_list.iter().map(|&t| &*self.tubes[t as usize].name)
    }

    /// Pauses an existing tube for `delay_s` seconds; false if there is no
    /// such tube. A pause of 0 ends any pause at once.
    pub fn pause_tube(&mut self, name: &str, delay_s: u32, now: Nanos) -> bool {
        self.advance(now);
        let Some(t) = self.find_tube(name) else {
            return false;
        };
        let tube = &mut self.tubes[t as usize];
        tube.pauses += 1;
        let pos = tube.pause_pos;
        let mut order = PauseTimerOrder(&mut self.tubes);
        if delay_s == 0 {
            // beanstalkd pauses for 1 ns, which ends at its next tick and
            // reads as "pause: 0" until then; ending it now is the same to a
            // client and wakes the waiters without a timer round trip.
            order.0[t as usize].pause = None;
            if pos != NO_POS {
                self.pause_timers.remove(pos, &mut order);
            }
            self.serve_tube(t, now);
        } else {
            let length = secs(delay_s);
            order.0[t as usize].pause = Some(Pause { length, until: now + length });
            if pos == NO_POS {
                self.pause_timers.push(t, &mut order);
            } else {
                self.pause_timers.update(pos, &mut order);
            }
        }
        true
    }

    // ----- jobs ------------------------------------------------------------

    /// Hands out the next job id. beanstalkd does this when a put line is
    /// accepted, before the body arrives, so a put that then fails still
    /// uses up its id.
    pub fn allocate_id(&mut self) -> u64 {
        let id = self.id_source.take();
        if let Some(log) = self.wal.as_deref_mut() {
            log.note_next_id(id + 1);
        }
        id
    }

    /// Enqueues a job into the client's used tube: ready, or delayed when
    /// `delay_s > 0`. `id` comes from [`Engine::allocate_id`] and
    /// `created_at` is when the put line was accepted.
    #[allow(clippy::too_many_arguments)]
    pub fn put(
        &mut self,
        c: ClientId,
        id: u64,
        created_at: Nanos,
        pri: u32,
        delay_s: u32,
        ttr_s: u32,
        body: Body,
        now: Nanos,
    ) -> PutOutcome {
        self.advance(now);
        if self.draining {
            return PutOutcome::Draining;
        }
        let t = self.clients[c.index()].used;
        // Room in memory first: what it reserves is only capacity, kept if
        // the log then refuses (a log reservation is not undone).
        let Ok(k) = self.make_room_for_job(id, t, delay_s > 0) else {
            return PutOutcome::OutOfMemory;
        };
        if self.reserve_put_record(t, body.len()).is_err() {
            return PutOutcome::NoLogSpace;
        }
        // A TTR below one second is raised to one second.
        let inserted = self.jobs.insert(Job::new(id, created_at, pri, ttr_s.max(1), t, body));
        debug_assert_eq!(inserted, k);
        if delay_s > 0 {
            self.note(k, |e| e.delay_s = delay_s);
        }
        let tube = &mut self.tubes[t as usize];
        tube.jobs += 1;
        tube.total_jobs += 1;
        self.counts.total_jobs += 1;
        // Recorded as put: ready or delayed (a waiter that takes it at once
        // is not recorded, like any reserve).
        if delay_s > 0 {
            self.enqueue_delayed(k, now + secs(delay_s));
            self.log_job(k, false);
        } else {
            let t = self.push_ready(k);
            self.log_job(k, false);
            self.serve_tube(t, now);
        }
        PutOutcome::Inserted
    }

    /// `reserve` and `reserve-with-timeout` (`timeout_s`). Counting the
    /// command is the caller's job; marking the client a worker is ours.
    pub fn reserve(&mut self, c: ClientId, timeout_s: Option<u32>, now: Nanos) -> ReserveOutcome {
        self.advance(now);
        assert!(self.clients[c.index()].wait.is_none(), "reserve while waiting");
        self.set_worker(c);
        // DEADLINE_SOON only when no watched tube has a ready job, paused or
        // not (beanstalkd ignores pauses in this test).
        if self.deadline_soon(c.0, now) && !self.any_ready_watched(c.0) {
            return ReserveOutcome::DeadlineSoon;
        }
        if let Some(k) = self.best_ready_watched(c.0, now) {
            self.detach(k);
            self.enqueue_reserved(k, c.0, now);
            return ReserveOutcome::Reserved(self.job_ref(k));
        }
        if timeout_s == Some(0) {
            // beanstalkd lets the client wait zero seconds, and its next
            // tick checks the margin before the timeout: a client inside
            // it gets DEADLINE_SOON (reached here when the only ready jobs
            // are in paused tubes).
            return if self.deadline_soon(c.0, now) { ReserveOutcome::DeadlineSoon } else { ReserveOutcome::TimedOut };
        }
        if self.reserve_waiters(c.0).is_err() {
            return ReserveOutcome::OutOfMemory;
        }
        self.start_wait(c.0, timeout_s.map(|s| now + secs(s)), now);
        ReserveOutcome::Waiting
    }

    /// Stops a client's wait (it half-closed its connection); true if it
    /// was waiting.
    pub fn cancel_wait(&mut self, c: ClientId) -> bool {
        if self.clients[c.index()].wait.is_none() {
            return false;
        }
        self.end_wait(c.0);
        true
    }

    /// `reserve-job`: any ready, delayed or buried job, in any tube, paused
    /// or not.
    pub fn reserve_job(&mut self, c: ClientId, id: u64, now: Nanos) -> Option<JobRef> {
        self.advance(now);
        let k = self.find_job(id)?;
        if self.jobs[k].state() == JobState::Reserved {
            return None;
        }
        self.detach(k);
        self.set_worker(c);
        self.enqueue_reserved(k, c.0, now);
        Some(self.job_ref(k))
    }

    /// `delete`: a job reserved by this client, or any ready, delayed or
    /// buried job.
    pub fn delete(&mut self, c: ClientId, id: u64, now: Nanos) -> bool {
        self.advance(now);
        let Some(k) = self.find_job(id) else {
            return false;
        };
        let job = &self.jobs[k];
        if job.state() == JobState::Reserved && job.reserver != c.0 {
            return false;
        }
        self.detach(k);
        let t = self.jobs[k].tube();
        self.tubes[t as usize].deletes += 1;
        // The delete's record was reserved with the put: it never fails.
        self.log_delete(k);
        self.free_job(k);
        true
    }

    /// `release`: a job reserved by this client goes back, ready or delayed,
    /// with a new priority. With a log and no room in it, a delayed release
    /// is refused (OUT_OF_MEMORY, as beanstalkd answers) and the job stays
    /// reserved; a release without delay goes ahead unrecorded, losing
    /// only the priority change on a restart (which is what beanstalkd
    /// always does).
    pub fn release(&mut self, c: ClientId, id: u64, pri: u32, delay_s: u32, now: Nanos) -> Change {
        self.advance(now);
        let Some(k) = self.reserved_by(c, id) else {
            return Change::NotFound;
        };
        let logged = self.reserve_state_record().is_ok();
        if !logged && delay_s > 0 {
            return Change::NoLogSpace;
        }
        self.detach(k);
        self.jobs[k].pri = pri;
        self.note(k, |e| {
            e.delay_s = delay_s;
            e.releases += 1;
        });
        if delay_s > 0 {
            self.enqueue_delayed(k, now + secs(delay_s));
            self.log_state(k);
        } else {
            let t = self.push_ready(k);
            if logged {
                self.log_state(k);
            }
            self.serve_tube(t, now);
        }
        Change::Done
    }

    /// `bury`: with a log and no room in it, refused (INTERNAL_ERROR, as
    /// beanstalkd answers) and the job stays reserved.
    pub fn bury(&mut self, c: ClientId, id: u64, pri: u32, now: Nanos) -> Change {
        self.advance(now);
        let Some(k) = self.reserved_by(c, id) else {
            return Change::NotFound;
        };
        if self.reserve_state_record().is_err() {
            return Change::NoLogSpace;
        }
        self.detach(k);
        self.jobs[k].pri = pri;
        self.note(k, |e| e.buries += 1);
        self.enqueue_buried(k);
        self.log_state(k);
        Change::Done
    }

    pub fn touch(&mut self, c: ClientId, id: u64, now: Nanos) -> bool {
        self.advance(now);
        let Some(k) = self.reserved_by(c, id) else {
            return false;
        };
        let job = &mut self.jobs[k];
        job.deadline = now + secs(job.ttr_s);
        let pos = job.pos;
        self.ttr.update(pos, &mut DeadlineOrder(&mut self.jobs));
        self.clients[c.index()].soonest_known = false;
        true
    }

    /// `kick <bound>` on the client's used tube: buried jobs if there are
    /// any (oldest first), otherwise delayed jobs (soonest first), never
    /// both in one command.
    pub fn kick(&mut self, c: ClientId, bound: u32, now: Nanos) -> u32 {
        self.advance(now);
        let t = self.clients[c.index()].used as usize;
        let from_buried = !self.tubes[t].buried.is_empty();
        let mut kicked = 0;
        while kicked < bound {
            let tube = &self.tubes[t];
            let next = if from_buried { tube.buried.head } else { tube.delayed.peek().unwrap_or(NIL) };
            // With a log and no room in it, the kick stops: the reply counts
            // the jobs really kicked (beanstalkd counts the ones it failed
            // to kick too).
            if next == NIL || self.reserve_state_record().is_err() {
                break;
            }
            self.kick_one(next, now);
            kicked += 1;
        }
        kicked
    }

    /// `kick-job`: a buried or delayed job in any tube.
    pub fn kick_job(&mut self, id: u64, now: Nanos) -> bool {
        self.advance(now);
        let Some(k) = self.find_job(id) else {
            return false;
        };
        if !matches!(self.jobs[k].state(), JobState::Buried | JobState::Delayed) {
            return false;
        }
        // With a log and no room in it: NOT_FOUND, as beanstalkd answers.
        if self.reserve_state_record().is_err() {
            return false;
        }
        self.kick_one(k, now);
        true
    }

    /// Kicks one buried or delayed job whose state record has room.
    fn kick_one(&mut self, k: u32, now: Nanos) {
        self.detach(k);
        self.note(k, |e| e.kicks += 1);
        let t = self.push_ready(k);
        self.log_state(k);
        self.serve_tube(t, now);
    }

    // ----- peeks and stats -------------------------------------------------

    pub fn peek(&self, id: u64) -> Option<JobRef> {
        self.find_job(id).map(|k| self.job_ref(k))
    }

    pub fn peek_ready(&self, c: ClientId) -> Option<JobRef> {
        let tube = &self.tubes[self.clients[c.index()].used as usize];
        tube.ready.peek().map(|k| self.job_ref(k))
    }

    pub fn peek_delayed(&self, c: ClientId) -> Option<JobRef> {
        let tube = &self.tubes[self.clients[c.index()].used as usize];
        tube.delayed.peek().map(|k| self.job_ref(k))
    }

    pub fn peek_buried(&self, c: ClientId) -> Option<JobRef> {
        let tube = &self.tubes[self.clients[c.index()].used as usize];
        (!tube.buried.is_empty()).then(|| self.job_ref(tube.buried.head))
    }

    pub fn stats(&self) -> ServerStats {
        let c = &self.counts;
        ServerStats {
            urgent: c.urgent,
            ready: c.ready,
            reserved: c.reserved,
            delayed: c.delayed,
            buried: c.buried,
            ops: self.ops,
            job_timeouts: c.job_timeouts,
            total_jobs: c.total_jobs,
            tubes: self.tubes.len() as u64,
            connections: self.clients.len() as u64,
            producers: c.producers,
            workers: c.workers,
            waiting: c.waiting,
            total_connections: c.total_connections,
            draining: self.draining,
        }
    }

    pub fn stats_tube(&self, name: &str, now: Nanos) -> Option<TubeStats> {
        let tube = &self.tubes[self.find_tube(name)? as usize];
        let (pause_s, pause_left_s) = match tube.pause {
            Some(p) if p.until > now => (p.length / NANOS_PER_SEC, time::secs_until(p.until, now)),
            _ => (0, 0),
        };
        Some(TubeStats {
            name: tube.name.to_string(),
            urgent: tube.urgent,
            ready: tube.ready.len() as u64,
            reserved: tube.reserved,
            delayed: tube.delayed.len() as u64,
            buried: u64::from(tube.buried.len),
            total_jobs: tube.total_jobs,
            using: tube.using,
            watching: tube.watching,
            waiting: u64::from(tube.waiting),
            deletes: tube.deletes,
            pauses: tube.pauses,
            pause_s,
            pause_left_s,
        })
    }

    pub fn stats_job(&self, id: u64, now: Nanos) -> Option<JobStats> {
        let k = self.find_job(id)?;
        let job = &self.jobs[k];
        let extras = self.extras.get(k);
        let time_left_s = match job.state() {
            JobState::Reserved | JobState::Delayed => time::secs_until(job.deadline, now),
            _ => 0,
        };
        Some(JobStats {
            id: job.id,
            tube: self.tubes[job.tube() as usize].name.to_string(),
            state: job.state().name(),
            pri: job.pri,
            age_s: time::secs_until(now, job.created_at),
            delay_s: extras.delay_s,
            ttr_s: job.ttr_s,
            time_left_s,
            file: self.wal_pos.get(k).seq,
            reserves: job.reserves,
            timeouts: extras.timeouts,
            releases: extras.releases,
            buries: extras.buries,
            kicks: extras.kicks,
        })
    }

    // ----- time --------------------------------------------------------------

    /// Does everything due at `now`, in this order:
    ///
    /// 1. tubes whose pause has ended are unpaused;
    /// 2. delayed jobs that are due become ready, in `(deadline, id)` order,
    ///    each offered at once to the waiters of its tube and of the tubes
    ///    just unpaused (best `(pri, id)` job first, as beanstalkd's queue
    ///    pass does);
    /// 3. the unpaused tubes serve their waiters;
    /// 4. waiting clients' timers (DEADLINE_SOON, TIMED_OUT) and TTR
    ///    expiries, merged in time order; an expired job goes back to ready
    ///    and is offered to its tube's waiters.
    ///
    /// beanstalkd's tick has the same phases.
    pub fn advance(&mut self, now: Nanos) {
        // The list of tubes unpaused now, with room for every tube and one
        // more, reserved with the tubes; taken only when a pause ends (an
        // empty vector stands in, and is never pushed to).
        let pause_ended = self.pause_timers.peek().is_some_and(|t| self.tubes[t].pause.is_none_or(|p| p.until <= now));
        let mut unpaused = if pause_ended { std::mem::take(&mut self.unpaused) } else { Vec::new() };
        unpaused.clear();
        while let Some(t) = self.pause_timers.peek() {
            if self.tubes[t as usize].pause.is_some_and(|p| p.until > now) {
                break;
            }
            self.pause_timers.pop(&mut PauseTimerOrder(&mut self.tubes));
            self.tubes[t as usize].pause = None;
            unpaused.push(t);
        }
        while let Some(t) = self.delay_timers.peek() {
            let k = self.tubes[t as usize].delayed.peek().expect("delay timer of a tube with no delayed job");
            if self.jobs[k].deadline > now {
                break;
            }
            self.detach(k);
            self.push_ready(k);
            if unpaused.is_empty() {
                self.serve_tube(t, now);
            } else {
                unpaused.push(t);
                self.match_tubes(&unpaused, now);
                unpaused.pop();
            }
        }
        if !unpaused.is_empty() {
            self.match_tubes(&unpaused, now);
        }
        if pause_ended {
            self.unpaused = unpaused;
        }
        loop {
            let client_at = self.client_timers.peek().map(|c| (self.clients[c as usize].wake_at, c));
            // A reservation expires once `now` is strictly past its deadline.
            let expiry_at = self.ttr.peek().map(|k| (self.jobs[k].deadline + 1, k));
            match (client_at, expiry_at) {
                (Some((at, c)), expiry) if at <= now && expiry.is_none_or(|(e, _)| at <= e) => {
                    self.fire_client_timer(c, now)
                }
                (_, Some((at, k))) if at <= now => self.expire(k, now),
                _ => break,
            }
        }
    }

    /// The earliest time at which [`Engine::advance`] has work to do.
    pub fn next_deadline(&self) -> Option<Nanos> {
        let pause = self.pause_timers.peek().and_then(|t| self.tubes[t as usize].pause.map(|p| p.until));
        let delay =
            self.delay_timers.peek().and_then(|t| self.tubes[t as usize].delayed.peek()).map(|k| self.jobs[k].deadline);
        let client = self.client_timers.peek().map(|c| self.clients[c as usize].wake_at);
        let ttr = self.ttr.peek().map(|k| self.jobs[k].deadline + 1);
        [pause, delay, client, ttr].into_iter().flatten().min()
    }

    fn fire_client_timer(&mut self, c: u32, now: Nanos) {
        let wait = self.clients[c as usize].wait.expect("client timer without a wait");
        let wake = if self.deadline_soon(c, now) {
            Wake::DeadlineSoon
        } else if wait.timeout_at.is_some_and(|at| at <= now) {
            Wake::TimedOut
        } else {
            // The deadline that set the timer went away (the job expired or
            // was deleted); wait for what is due now.
            self.schedule_client(c);
            return;
        };
        self.end_wait(c);
        self.wakes.push((ClientId(c), wake));
    }

    fn expire(&mut self, k: u32, now: Nanos) {
        let c = self.jobs[k].reserver;
        self.detach(k);
        self.note(k, |e| e.timeouts += 1);
        self.counts.job_timeouts += 1;
        self.note_expiry(c);
        if self.clients[c as usize].wait.is_some() {
            self.schedule_client(c);
        }
        self.enqueue_ready(k, now);
    }

    // ----- state transitions ---------------------------------------------------
    //
    // `detach` takes a job out of whatever structure its state puts it in;
    // the `enqueue_*` functions put a detached job into a new one. Counters
    // move with the job.

    fn detach(&mut self, k: u32) {
        let job = &self.jobs[k];
        let (t, pos, pri) = (job.tube() as usize, job.pos, job.pri);
        match job.state() {
            JobState::Ready => {
                self.tubes[t].ready.remove(pos, &mut ReadyOrder(&mut self.jobs));
                self.counts.ready -= 1;
                if pri < job::URGENT_PRI_LIMIT {
                    self.counts.urgent -= 1;
                    self.tubes[t].urgent -= 1;
                }
            }
            JobState::Delayed => {
                self.tubes[t].delayed.remove(pos, &mut DeadlineOrder(&mut self.jobs));
                self.counts.delayed -= 1;
                if pos == 0 {
                    self.reschedule_delay_timer(t as u32);
                }
            }
            JobState::Reserved => {
                let c = job.reserver as usize;
                self.ttr.remove(pos, &mut DeadlineOrder(&mut self.jobs));
                let client = &mut self.clients[c];
                client.reserved.remove(&mut self.jobs, k);
                client.soonest_known = false;
                self.jobs[k].reserver = NIL;
                self.counts.reserved -= 1;
                self.tubes[t].reserved -= 1;
            }
            JobState::Buried => {
                self.tubes[t].buried.remove(&mut self.jobs, k);
                self.counts.buried -= 1;
            }
        }
    }

    /// Makes a detached job ready and offers it to the tube's waiters.
    fn enqueue_ready(&mut self, k: u32, now: Nanos) {
        let t = self.push_ready(k);
        self.serve_tube(t, now);
    }

    /// Makes a detached job ready without offering it; returns its tube.
    fn push_ready(&mut self, k: u32) -> u32 {
        let job = &mut self.jobs[k];
        job.set_state(JobState::Ready);
        let (t, urgent) = (job.tube(), job.is_urgent_pri());
        let tube = &mut self.tubes[t as usize];
        tube.ready.push(k, &mut ReadyOrder(&mut self.jobs));
        self.counts.ready += 1;
        if urgent {
            self.counts.urgent += 1;
            self.tubes[t as usize].urgent += 1;
        }
        t
    }

    fn enqueue_delayed(&mut self, k: u32, deadline: Nanos) {
        let job = &mut self.jobs[k];
        job.set_state(JobState::Delayed);
        job.deadline = deadline;
        let t = job.tube();
        self.tubes[t as usize].delayed.push(k, &mut DeadlineOrder(&mut self.jobs));
        self.counts.delayed += 1;
        if self.jobs[k].pos == 0 {
            self.reschedule_delay_timer(t);
        }
    }

    fn enqueue_buried(&mut self, k: u32) {
        let job = &mut self.jobs[k];
        job.set_state(JobState::Buried);
        job.deadline = self.bury_seq;
        self.bury_seq += 1;
        let t = job.tube() as usize;
        self.tubes[t].buried.push_back(&mut self.jobs, k);
        self.counts.buried += 1;
    }

    fn enqueue_reserved(&mut self, k: u32, c: u32, now: Nanos) {
        let job = &mut self.jobs[k];
        job.set_state(JobState::Reserved);
        job.reserver = c;
        job.reserves += 1;
        job.deadline = now + secs(job.ttr_s);
        let (t, deadline) = (job.tube() as usize, job.deadline);
        self.ttr.push(k, &mut DeadlineOrder(&mut self.jobs));
        let client = &mut self.clients[c as usize];
        client.reserved.push_back(&mut self.jobs, k);
        if client.soonest_known && (client.soonest == NIL || deadline < self.jobs[client.soonest].deadline) {
            client.soonest = k;
        }
        self.counts.reserved += 1;
        self.tubes[t].reserved += 1;
    }

    // ----- waiting -----------------------------------------------------------

    /// Serves waiters of several tubes whose state changed at once: the best
    /// `(pri, id)` ready job among them goes to the oldest waiter of its
    /// tube, and again, until none of them has both. This is beanstalkd's
    /// queue pass, limited to the tubes that can have become matchable.
    fn match_tubes(&mut self, tubes: &[u32], now: Nanos) {
        loop {
            loop {
                let order = ReadyOrderRef(&self.jobs);
                let best = tubes
                    .iter()
                    .filter(|&&t| !self.tubes[t as usize].is_paused(now) && self.has_taker(t))
                    .filter_map(|&t| self.tubes[t as usize].ready.peek().map(|k| (t, k)))
                    .reduce(|best, cand| if order.less(cand.1, best.1) { cand } else { best });
                let Some((t, k)) = best else {
                    break;
                };
                // A failure (the taker's wait ended elsewhere meanwhile)
                // dropped it: the next pass looks again.
                self.serve_one(t, k, now);
            }
            let mut armed = false;
            for &t in tubes {
                armed |= self.notice_ready(t, now);
            }
            if !armed {
                return;
            }
        }
    }

    /// Serves the tube's waiters, oldest first, while it is unpaused and has
    /// ready jobs.
    fn serve_tube(&mut self, t: u32, now: Nanos) {
        loop {
            loop {
                let tube = &self.tubes[t as usize];
                if tube.waiting == 0 || tube.is_paused(now) {
                    break;
                }
                let Some(k) = tube.ready.peek() else {
                    break;
                };
                if !self.serve_one(t, k, now) {
                    break;
                }
            }
            if !self.notice_ready(t, now) {
                return;
            }
        }
    }

    /// Gives ready job `k` of tube `t` to the tube's oldest waiter that can
    /// take it now; false when none can (every live entry is a spanning
    /// wait still probing, see [`spanning`]).
    fn serve_one(&mut self, t: u32, k: u32, now: Nanos) -> bool {
        let c = loop {
            match self.next_waiter(t) {
                spanning::NextWaiter::Takes(c) => break c,
                spanning::NextWaiter::Ended(c) => self.end_wait(c),
                spanning::NextWaiter::None => return false,
            }
        };
        let span = self.span_of(c);
        self.end_wait(c);
        self.detach(k);
        self.enqueue_reserved(k, c, now);
        let job = self.job_ref(k);
        match span {
            Some((wait, round)) => {
                let deadline = self.jobs[k].deadline;
                self.span_served.push(SpanServed { client: ClientId(c), wait, round, job, deadline });
            }
            None => self.wakes.push((ClientId(c), Wake::Reserved(job))),
        }
        true
    }

    fn start_wait(&mut self, c: u32, timeout_at: Option<Nanos>, _now: Nanos) {
        self.wait_seq += 1;
        let seq = self.wait_seq;
        let client = &mut self.clients[c as usize];
        client.wait = Some(Wait { seq, timeout_at });
        for &t in &client.watched {
            let tube = &mut self.tubes[t as usize];
            tube.waiters.push_back(Waiter { client: c, seq });
            tube.waiting += 1;
        }
        self.counts.waiting += 1;
        self.schedule_client(c);
    }

    fn end_wait(&mut self, c: u32) {
        let client = &mut self.clients[c as usize];
        client.wait = None;
        let span = std::mem::replace(&mut client.span, NIL);
        // Taken out for the loop, which reads the client table.
        let watched = std::mem::take(&mut client.watched);
        for &t in &watched {
            let tube = &mut self.tubes[t as usize];
            tube.waiting -= 1;
            // Sweep stale registrations once they outnumber live ones, so
            // a tube that never gets jobs does not collect them forever.
            if tube.waiters.len() > 2 * tube.waiting as usize + 16 {
                let clients = &self.clients;
                tube.waiters.retain(|&w| is_live(clients, w));
            }
        }
        self.clients[c as usize].watched = watched;
        if span == NIL {
            self.counts.waiting -= 1;
        } else {
            // A spanning wait is counted and timed by its session's core.
            self.spans.remove(span);
        }
        let pos = self.clients[c as usize].timer_pos;
        if pos != NO_POS {
            self.client_timers.remove(pos, &mut ClientTimerOrder(&mut self.clients));
        }
    }

    /// (Re)arms a waiting client's timer: the earlier of its timeout and the
    /// start of the safety margin before its soonest reservation's deadline.
    fn schedule_client(&mut self, c: u32) {
        if self.clients[c as usize].span != NIL {
            // Its session's core runs its timeout and DEADLINE_SOON.
            return;
        }
        let soon = self.soonest_deadline(c).map(|d| d.saturating_sub(SAFETY_MARGIN_NS));
        let client = &mut self.clients[c as usize];
        let timeout = client.wait.and_then(|w| w.timeout_at);
        let at = match (timeout, soon) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let pos = client.timer_pos;
        let mut order = ClientTimerOrder(&mut self.clients);
        match at {
            Some(at) => {
                order.0[c as usize].wake_at = at;
                if pos == NO_POS {
                    self.client_timers.push(c, &mut order);
                } else {
                    self.client_timers.update(pos, &mut order);
                }
            }
            None if pos != NO_POS => {
                self.client_timers.remove(pos, &mut order);
            }
            None => {}
        }
    }

    /// Whether the client's soonest reservation is within the safety margin.
    fn deadline_soon(&mut self, c: u32, now: Nanos) -> bool {
        self.soonest_deadline(c).is_some_and(|d| now >= d.saturating_sub(SAFETY_MARGIN_NS))
    }

    fn soonest_deadline(&mut self, c: u32) -> Option<Nanos> {
        let client = &mut self.clients[c as usize];
        if !client.soonest_known {
            let mut best = NIL;
            let mut k = client.reserved.head;
            while k != NIL {
                let job = &self.jobs[k];
                if best == NIL || job.deadline < self.jobs[best].deadline {
                    best = k;
                }
                k = job.next;
            }
            client.soonest = best;
            client.soonest_known = true;
        }
        (client.soonest != NIL).then(|| self.jobs[client.soonest].deadline)
    }

    fn any_ready_watched(&self, c: u32) -> bool {
        self.clients[c as usize].watched.iter().any(|&t| !self.tubes[t as usize].ready.is_empty())
    }

    /// The best `(pri, id)` ready job across the client's unpaused tubes.
    fn best_ready_watched(&self, c: u32, now: Nanos) -> Option<u32> {
        let order = ReadyOrderRef(&self.jobs);
        self.clients[c as usize]
            .watched
            .iter()
            .map(|&t| &self.tubes[t as usize])
            .filter(|tube| !tube.is_paused(now))
            .filter_map(|tube| tube.ready.peek())
            .reduce(|best, k| if order.less(k, best) { k } else { best })
    }

    // ----- bookkeeping -------------------------------------------------------

    /// Job `k`'s rarely set fields (all zero when it has none).
    fn extras_of(&self, k: u32) -> Extras {
        self.extras.get(k)
    }

    /// Records a change to a job's rarely set fields. They only show in
    /// `stats-job`; when their page cannot be had for want of memory, the
    /// change is not recorded rather than the command refused.
    fn note(&mut self, k: u32, f: impl FnOnce(&mut Extras)) {
        let _ = self.extras.update(k, f);
    }

    fn job_ref(&self, k: u32) -> JobRef {
        let job = &self.jobs[k];
        JobRef { id: job.id, body: job.body.clone() }
    }

    fn reserved_by(&self, c: ClientId, id: u64) -> Option<u32> {
        let k = self.find_job(id)?;
        let job = &self.jobs[k];
        (job.state() == JobState::Reserved && job.reserver == c.0).then_some(k)
    }

    fn find_job(&self, id: u64) -> Option<u32> {
        self.ids.get(id)
    }

    /// Makes room for a job `id` of tube `t` (delayed or not): its arena
    /// slot and id, and a place in every heap it may enter, so that the
    /// insert that follows and every later move of the job allocate
    /// nothing. Returns the key the job will have; refuses, changing
    /// nothing visible, when memory cannot be had.
    pub(super) fn make_room_for_job(&mut self, id: u64, t: u32, delayed: bool) -> Result<u32, OutOfMemory> {
        self.jobs.try_reserve()?;
        let k = self.jobs.next_key();
        assert!(k < NIL, "too many jobs");
        self.ttr.try_reserve(self.jobs.len() + 1)?;
        let tube = &mut self.tubes[t as usize];
        let tube_jobs = tube.jobs as usize + 1;
        tube.ready.try_reserve(tube_jobs)?;
        tube.delayed.try_reserve(tube_jobs)?;
        if delayed {
            self.extras.try_reserve(k)?;
        }
        if self.wal.is_some() {
            self.wal_pos.try_reserve(k)?;
        }
        // Last, as the only step that changes what a lookup sees.
        self.ids.try_insert(id, k)?;
        Ok(k)
    }

    /// Makes room for a client about to wait on each of its watched tubes.
    fn reserve_waiters(&mut self, c: u32) -> Result<(), OutOfMemory> {
        for &t in &self.clients[c as usize].watched {
            let waiters = &mut self.tubes[t as usize].waiters;
            memory::attempt(|| waiters.try_reserve(1))?;
        }
        Ok(())
    }

    /// Frees a detached job; its tube loses a reference.
    fn free_job(&mut self, k: u32) {
        let id = self.jobs[k].id;
        let removed = self.ids.remove(id);
        assert_eq!(removed, Some(k), "job {id} missing from the id index");
        let job = self.jobs.remove(k);
        self.extras.clear(k);
        self.tubes[job.tube() as usize].jobs -= 1;
        self.release_tube(job.tube());
    }

    fn find_tube(&self, name: &str) -> Option<u32> {
        let tubes = &self.tubes;
        self.tube_names.find(self.name_hasher.hash_one(name), |&t| &*tubes[t as usize].name == name).copied()
    }

    /// The tube of that name, created if need be; refused when a new tube
    /// cannot be had (then nothing changed).
    fn tube_for_name(&mut self, name: &str) -> Result<u32, OutOfMemory> {
        if let Some(t) = self.find_tube(name) {
            return Ok(t);
        }
        // Room for the tube, its name, its places in the name index, the
        // list and the tube timers, and in the unpaused list of `advance`.
        let tubes = self.tubes.len() + 1;
        self.tubes.try_reserve()?;
        let (table, hasher) = (&self.tubes, &self.name_hasher);
        memory::attempt(|| self.tube_names.try_reserve(1, |&x| hasher.hash_one(&*table[x as usize].name)))?;
        reserve_total(&mut self.tube_list, tubes)?;
        reserve_total(&mut self.unpaused, tubes + 1)?;
        self.delay_timers.try_reserve(tubes)?;
        self.pause_timers.try_reserve(tubes)?;
        let mut boxed = String::new();
        memory::attempt(|| boxed.try_reserve_exact(name.len()))?;
        boxed.push_str(name);

        if let Some(directory) = &self.directory {
            // The directory's copy, and its room, before anything changes.
            let mut copy = String::new();
            memory::attempt(|| copy.try_reserve_exact(name.len()))?;
            copy.push_str(name);
            directory.reserve()?;
            directory.add(copy.into_boxed_str());
        }
        let list_pos = self.tube_list.len() as u32;
        let t = self.tubes.insert(Tube::new(boxed.into_boxed_str(), list_pos));
        assert!(t <= job::TUBE_KEY_MAX, "too many tubes");
        self.tube_list.push(t);
        let (tubes, hasher) = (&self.tubes, &self.name_hasher);
        self.tube_names.insert_unique(hasher.hash_one(name), t, |&x| hasher.hash_one(&*tubes[x as usize].name));
        Ok(t)
    }

    /// Destroys a tube nothing refers to any more (never `default`).
    fn release_tube(&mut self, t: u32) {
        if t == self.default_tube || !self.tubes[t as usize].is_unreferenced() {
            return;
        }
        let tube = &self.tubes[t as usize];
        debug_assert!(tube.ready.is_empty() && tube.delayed.is_empty() && tube.buried.is_empty());
        let (delay_pos, pause_pos) = (tube.delay_pos, tube.pause_pos);
        if delay_pos != NO_POS {
            self.delay_timers.remove(delay_pos, &mut DelayTimerOrder { tubes: &mut self.tubes, jobs: &self.jobs });
        }
        if pause_pos != NO_POS {
            self.pause_timers.remove(pause_pos, &mut PauseTimerOrder(&mut self.tubes));
        }
        let hash = self.name_hasher.hash_one(&*self.tubes[t as usize].name);
        match self.tube_names.find_entry(hash, |&x| x == t) {
            Ok(entry) => {
                entry.remove();
            }
            Err(_) => panic!("tube {t} missing from the name index"),
        }
        let tube = self.tubes.remove(t);
        if let Some(directory) = &self.directory {
            directory.remove(&tube.name);
        }
        // The list fills the gap with its last entry, as beanstalkd's does.
        let pos = tube.list_pos as usize;
        self.tube_list.swap_remove(pos);
        if let Some(&moved) = self.tube_list.get(pos) {
            self.tubes[moved as usize].list_pos = pos as u32;
        }
    }

    /// Re-keys a tube in the delay timer heap after the soonest job of its
    /// delayed queue changed.
    fn reschedule_delay_timer(&mut self, t: u32) {
        let tube = &self.tubes[t as usize];
        let (pos, has_jobs) = (tube.delay_pos, !tube.delayed.is_empty());
        let mut order = DelayTimerOrder { tubes: &mut self.tubes, jobs: &self.jobs };
        match (has_jobs, pos == NO_POS) {
            (true, true) => self.delay_timers.push(t, &mut order),
            (true, false) => self.delay_timers.update(pos, &mut order),
            (false, false) => {
                self.delay_timers.remove(pos, &mut order);
            }
            (false, true) => {}
        }
    }

    /// Checks every invariant of the module doc; panics on the first broken
    /// one. Slow: for tests.
    #[doc(hidden)]
    pub fn check_invariants(&self, now: Nanos) {
        #[cfg(test)]
        {
            self.ids.check();
            self.extras.check();
        }
        let mut counts = Counts::default();
        let mut waiting_clients = 0u64;
        for (k, job) in self.jobs.iter() {
            assert_eq!(self.find_job(job.id), Some(k), "id index of job {}", job.id);
            let tube = &self.tubes[job.tube() as usize];
            match job.state() {
                JobState::Ready => {
                    assert_eq!(tube.ready.keys()[job.pos as usize], k);
                    counts.ready += 1;
                    counts.urgent += u64::from(job.is_urgent_pri());
                }
                JobState::Delayed => {
                    assert_eq!(tube.delayed.keys()[job.pos as usize], k);
                    counts.delayed += 1;
                }
                JobState::Reserved => {
                    assert_eq!(self.ttr.keys()[job.pos as usize], k);
                    assert!(self.clients.contains(job.reserver));
                    counts.reserved += 1;
                }
                JobState::Buried => counts.buried += 1,
            }
        }
        assert_eq!(self.ids.len(), self.jobs.len());
        assert_eq!(
            (counts.ready, counts.urgent, counts.delayed, counts.reserved, counts.buried),
            (self.counts.ready, self.counts.urgent, self.counts.delayed, self.counts.reserved, self.counts.buried)
        );
        self.ttr.check(&DeadlineOrderRef(&self.jobs), |k| self.jobs[k].pos);
        for (i, &t) in self.tube_list.iter().enumerate() {
            assert_eq!(self.tubes[t as usize].list_pos as usize, i);
        }
        assert_eq!(self.tube_list.len(), self.tubes.len());
        for (t, tube) in self.tubes.iter() {
            assert_eq!(self.find_tube(&tube.name), Some(t));
            assert!(t == self.default_tube || !tube.is_unreferenced(), "unreferenced tube {}", tube.name);
            tube.ready.check(&ReadyOrderRef(&self.jobs), |k| self.jobs[k].pos);
            tube.delayed.check(&DeadlineOrderRef(&self.jobs), |k| self.jobs[k].pos);
            let jobs_here = self.jobs.iter().filter(|(_, j)| j.tube() == t).count() as u64;
            assert_eq!(tube.jobs, jobs_here, "job refs of tube {}", tube.name);
            let live = tube.waiters.iter().filter(|&&w| is_live(&self.clients, w)).count();
            assert_eq!(live, tube.waiting as usize, "waiters of tube {}", tube.name);
            assert!(
                tube.is_paused(now) || !self.has_taker(t) || tube.ready.is_empty(),
                "tube {} has both a ready job and a waiter",
                tube.name
            );
            let using = self.clients.iter().filter(|(_, c)| c.used == t).count() as u64;
            let watching = self.clients.iter().filter(|(_, c)| c.watched.contains(&t)).count() as u64;
            assert_eq!((tube.using, tube.watching), (using, watching), "references of tube {}", tube.name);
        }
        for (_, client) in self.clients.iter() {
            waiting_clients += u64::from(client.wait.is_some() && client.span == NIL);
            let mut k = client.reserved.head;
            let mut n = 0;
            while k != NIL {
                assert_eq!(self.jobs[k].state(), JobState::Reserved);
                n += 1;
                k = self.jobs[k].next;
            }
            assert_eq!(n, client.reserved.len);
        }
        assert_eq!(waiting_clients, self.counts.waiting);
        self.check_spans();
        // Room reserved ahead, so that moves, timers and departures never
        // allocate (see "Memory" in the module doc).
        assert!(self.ttr.capacity() >= self.jobs.len(), "room in the TTR heap");
        for (_, tube) in self.tubes.iter() {
            assert!(tube.ready.capacity() >= tube.jobs as usize, "room in the ready heap of {}", tube.name);
            assert!(tube.delayed.capacity() >= tube.jobs as usize, "room in the delay heap of {}", tube.name);
        }
        assert!(self.client_timers.capacity() >= self.clients.len(), "room in the client timers");
        assert!(self.wakes.capacity() >= self.clients.len(), "room for every client's wake");
        assert!(self.delay_timers.capacity() >= self.tubes.len(), "room in the delay timers");
        assert!(self.pause_timers.capacity() >= self.tubes.len(), "room in the pause timers");
        // (Made with the first tube: a shard that owns none has no room.)
        assert!(
            self.tubes.is_empty() || self.unpaused.capacity() > self.tubes.len(),
            "room for every tube in the unpaused list"
        );
    }
}

fn is_live(clients: &Slots<Client>, w: Waiter) -> bool {
    clients.get(w.client).and_then(|c| c.wait).is_some_and(|wait| wait.seq == w.seq)
}

/// Makes sure `v` holds `total` elements without allocating, or refuses.
fn reserve_total<T>(v: &mut Vec<T>, total: usize) -> Result<(), OutOfMemory> {
    match total.checked_sub(v.len()) {
        Some(more) if total > v.capacity() => memory::try_reserve(v, more),
        _ => Ok(()),
    }
}

/// Hashes job ids and page numbers (the id map's directory and overflow):
/// integers chosen by the server, not by clients, so one multiplication
/// spreads them well enough.
#[derive(Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        // The high half of the product folded down: the low bits, which
        // pick the bucket, then depend on every bit of `n` (ids of one of
        // several shards share their low bits).
        let x = (n ^ (n >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = x ^ (x >> 32);
    }
}

struct ReadyOrder<'a>(&'a mut Arena<Job>);
struct ReadyOrderRef<'a>(&'a Arena<Job>);
struct DeadlineOrder<'a>(&'a mut Arena<Job>);
struct DeadlineOrderRef<'a>(&'a Arena<Job>);
struct DelayTimerOrder<'a> {
    tubes: &'a mut Slots<Tube>,
    jobs: &'a Arena<Job>,
}
struct PauseTimerOrder<'a>(&'a mut Slots<Tube>);
struct ClientTimerOrder<'a>(&'a mut Slots<Client>);

fn ready_less(jobs: &Arena<Job>, a: u32, b: u32) -> bool {
    let (a, b) = (&jobs[a], &jobs[b]);
    (a.pri, a.id) < (b.pri, b.id)
}

fn deadline_less(jobs: &Arena<Job>, a: u32, b: u32) -> bool {
    let (a, b) = (&jobs[a], &jobs[b]);
    (a.deadline, a.id) < (b.deadline, b.id)
}

impl HeapOrder for ReadyOrder<'_> {
    fn less(&self, a: u32, b: u32) -> bool {
        ready_less(self.0, a, b)
    }
    fn set_pos(&mut self, key: u32, pos: u32) {
        self.0[key].pos = pos;
    }
}

impl HeapOrder for ReadyOrderRef<'_> {
    fn less(&self, a: u32, b: u32) -> bool {
        ready_less(self.0, a, b)
    }
    fn set_pos(&mut self, _: u32, _: u32) {
        unreachable!("read-only order")
    }
}

impl HeapOrder for DeadlineOrder<'_> {
    fn less(&self, a: u32, b: u32) -> bool {
        deadline_less(self.0, a, b)
    }
    fn set_pos(&mut self, key: u32, pos: u32) {
        self.0[key].pos = pos;
    }
}

impl HeapOrder for DeadlineOrderRef<'_> {
    fn less(&self, a: u32, b: u32) -> bool {
        deadline_less(self.0, a, b)
    }
    fn set_pos(&mut self, _: u32, _: u32) {
        unreachable!("read-only order")
    }
}

impl HeapOrder for DelayTimerOrder<'_> {
    fn less(&self, a: u32, b: u32) -> bool {
        let top = |t: u32| self.tubes[t as usize].delayed.peek().expect("delay timer of an empty queue");
        deadline_less(self.jobs, top(a), top(b))
    }
    fn set_pos(&mut self, key: u32, pos: u32) {
        self.tubes[key as usize].delay_pos = pos;
    }
}

impl HeapOrder for PauseTimerOrder<'_> {
    fn less(&self, a: u32, b: u32) -> bool {
        let until = |t: u32| self.0[t as usize].pause.map_or(0, |p| p.until);
        (until(a), a) < (until(b), b)
    }
    fn set_pos(&mut self, key: u32, pos: u32) {
        self.0[key as usize].pause_pos = pos;
    }
}

impl HeapOrder for ClientTimerOrder<'_> {
    fn less(&self, a: u32, b: u32) -> bool {
        (self.0[a as usize].wake_at, a) < (self.0[b as usize].wake_at, b)
    }
    fn set_pos(&mut self, key: u32, pos: u32) {
        self.0[key as usize].timer_pos = pos;
    }
}

#[cfg(test)]
mod tests;
