//! A shard among several: the messages its sessions send to the shards
//! that own what their commands touch, and the owner's side that runs them
//! on a proxy client of the session.
//!
//! With one shard none of this runs: [`Shard`] holds no [`Spread`], every
//! command runs on its own engine as before, and no message is ever made.
//! With several, every engine command of a session goes out as a
//! [`Message`], even to the session's own shard, and its reply comes back
//! as one; the shard itself does no I/O and no threading. Its caller drains
//! each destination's outbox ([`Shard::take_outbox`]) and hands what it
//! carries to the destination ([`Shard::deliver`]), so a test can run N
//! shards in one thread with any delivery order a ring per ordered pair of
//! shards allows (per-pair FIFO).
//!
//! # One shard busy per connection
//! A connection's commands may pipeline to one shard; a command for another
//! shard, or one the session answers itself, waits until every reply owed
//! has come back (`Session::awaiting`, `Shard::may_pipeline`). So each
//! command runs at one instant on one engine, in the connection's order,
//! and any sequence of commands sees what one server would show. Only
//! commands answered by one reply that need nothing of the ones before
//! join a pipeline: puts, the peeks, kick, the commands on a named tube,
//! those on an id whose shard the session knows, and `reserve-with-timeout
//! 0` when every watched tube and reservation is on the pipeline's shard
//! (a worker draining one tube keeps its reserves in flight); their replies come
//! back in order over the pair's FIFO ring. A command may need several
//! steps, each one message, and then runs alone:
//! * **id commands** go to the shard of an id the session has seen (a put's
//!   answer, a reservation, a peek) and otherwise to every shard in turn,
//!   until one has the job (NOT_FOUND only when none did);
//! * `use` of a tube on another shard than the old one: the new tube is
//!   used first, then the old one's shard drops its reference (beanstalkd
//!   makes the new tube before it destroys the old);
//! * `stats` asks every shard and merges their answers: counters summed,
//!   `current-tubes` exact, and the connection figures of each core
//!   counted once, by the core whose sessions they are;
//! * `list-tubes` needs no message: the names are in the server's
//!   [`Directory`], in C's order;
//! * a reserve whose watch list and live reservations all lie on one shard
//!   is an ordinary reserve there (that engine times it and decides
//!   DEADLINE_SOON); any other runs [`SpanReserve`], whose timer is the
//!   shard's ([`Shard::next_deadline`]).
//!
//! # Its own shard, and batches
//! A request of a session to its own shard, with nothing of the session's
//! in flight and nothing queued for that shard before it, runs at once on
//! the engine (`Shard::run_own`): what its message would do on arrival and
//! its answer on return, with no message. Every other request is a
//! message, and messages of one session that meet at the tail of an
//! outbox go together: an `Ask::Run` joins the session's orders in the
//! last message for that shard (`Ask::Runs`), a reply joins the replies
//! to the same session held for the same log batch (`Answer::Replies`).
//! The receiver takes a batch apart in order, each item as the message of
//! its own that it would have been, delivered in a row: a batch changes
//! how many slots a ring spends, never an order. A client pipelining 32
//! commands through another core costs a message or two each way a turn,
//! not 64.
//!
//! # Counted once
//! The session's core counts every command (`cmd-*`) when it parses it;
//! owners run what they are sent uncounted. `current-connections`,
//! producers, workers and total connections are counted by the sessions'
//! cores; `current-waiting` is each engine's ordinary waits plus each
//! core's armed spanning waits.
//!
//! # Proxies, and leaving
//! An owner runs a session's requests on a proxy client
//! (`Engine::join_remote`), made when the session's first message arrives
//! (at open, the shard of `default` makes it using and watching `default`).
//! A closed connection is taken down in beanstalkd's order, one step at a
//! time, each answered before the next: its reservations given back in the
//! order it made them, its watched tubes dropped (first entry out, last
//! into the gap), its used tube dropped; then every shard it touched drops
//! its proxy, which also returns any job reserved for it meanwhile.
//!
//! # The log
//! An owner whose engine recorded a change for a request holds the reply
//! message (and every later message to the same shard, which keeps each
//! pair's order) until the batch holding the record is durable
//! ([`Shard::durable`]). The owner answers only then, rather than sending
//! the batch number for the session's core to wait on, because only the
//! owner's loop learns when its log is durable: a batch number would need
//! a second message to say so. A request run at once on the session's own
//! shard (see "Its own shard, and batches") has no message to hold: its
//! reply waits in the session's output instead, as with one shard.
//!
//! # What it must never do
//! Run a connection's command before the replies of the one before are in;
//! count a command twice; run a request on another session's proxy.

use std::collections::{HashMap, VecDeque};

use crate::engine::directory::Directory;
use crate::engine::{ClientId, DEFAULT_TUBE, JobState, Nanos, Op, ServerStats, StateSet, Wake};
use crate::protocol::command::Command;
use crate::protocol::reply;
use crate::shard::request::{self, Put, Reply, Request, Word};
use crate::shard::route::{self, ShardId};
use crate::shard::session::{self, TubeName};
use crate::shard::spanning::{self, Holdings, Outcome, SpanAnswer, SpanRequest, SpanReserve, SpanSession};
use crate::shard::{ConnId, Shard};
use crate::wal::log::LogStats;

/// Ids a session remembers the shard of, beyond its reservations: the
/// latest puts and peeks. A command on an id forgotten costs a try on each
/// shard in turn, not a wrong answer, so a few dozen are plenty for the
/// put-then-act pattern of clients.
pub const SEEN_IDS_MAX: usize = 32;

/// A session as the shards address it: its core, its connection there,
/// and a number no other connection of that core ever had (connection
/// slots are reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    pub core: ShardId,
    pub conn: u32,
    pub serial: u64,
}

/// What crosses between shards. Everything in it is owned: tube names as
/// boxed strings, a put's body by its reference-counted [`crate::engine::Body`].
#[derive(Debug)]
pub enum Message {
    /// A session's request to a shard.
    Ask { from: Origin, ask: Ask },
    /// A shard's answer to a session; `client` is the session's proxy there.
    Answer { to: Origin, client: Option<ClientId>, answer: Answer },
}

// Messages are copied several times on their way between cores; large
// replies are boxed to keep them this small (see `Reply::JobStats`).
const _: () = assert!(size_of::<Message>() <= 80);

// What crosses cores must be allowed to.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<Message>();
};

#[derive(Debug)]
pub enum Ask {
    /// The connection opened: use and watch `default` (to its shard).
    Open,
    /// An engine command, run uncounted.
    Run(Order),
    /// Several, of one session, run one after another as so many `Run`s
    /// delivered in a row would be (see "Batches").
    Runs(Vec<Order>),
    /// The used tube moved to another shard.
    Unuse,
    /// A tube of this shard left the watch list.
    Unwatch(Box<str>),
    /// The client half-closed while waiting here: TIMED_OUT.
    HalfClose,
    /// A step of taking a closed connection down (see "Proxies, and
    /// leaving").
    Leave(Leave),
    /// The connection has gone: drop the proxy.
    Disconnect,
    /// The reserve-across-shards protocol.
    Span(SpanRequest),
}

/// One step of taking a closed connection down, answered [`Answer::Left`].
#[derive(Debug)]
pub enum Leave {
    GiveBack(u64),
    Unwatch(Box<str>),
    Unuse,
}

/// An engine command in owned form (see [`Request`]).
#[derive(Debug)]
pub enum Order {
    Put(Put),
    Id(IdOrder),
    PeekReady,
    PeekDelayed,
    PeekBuried,
    Reserve(Option<u32>),
    Kick(u32),
    StatsTube(Box<str>),
    Stats,
    Use(Box<str>),
    Watch(Box<str>),
    PauseTube { name: Box<str>, delay_s: u32 },
    ClearTube { name: Box<str>, states: StateSet },
    ListJobs { name: Box<str>, state: JobState, after: u64, count: u32 },
}

/// A command on one job id, which may be tried on several shards.
#[derive(Clone, Copy, Debug)]
pub enum IdOrder {
    Peek(u64),
    ReserveJob(u64),
    Delete(u64),
    Release { id: u64, pri: u32, delay_s: u32 },
    Bury { id: u64, pri: u32 },
    KickJob(u64),
    Touch(u64),
    StatsJob(u64),
}

impl IdOrder {
    fn id(self) -> u64 {
        match self {
            IdOrder::Peek(id)
            | IdOrder::ReserveJob(id)
            | IdOrder::Delete(id)
            | IdOrder::KickJob(id)
            | IdOrder::Touch(id)
            | IdOrder::StatsJob(id) => id,
            IdOrder::Release { id, .. } | IdOrder::Bury { id, .. } => id,
        }
    }

    fn request(self) -> Request<'static> {
        match self {
            IdOrder::Peek(id) => Request::Peek(id),
            IdOrder::ReserveJob(id) => Request::ReserveJob(id),
            IdOrder::Delete(id) => Request::Delete(id),
            IdOrder::Release { id, pri, delay_s } => Request::Release { id, pri, delay_s },
            IdOrder::Bury { id, pri } => Request::Bury { id, pri },
            IdOrder::KickJob(id) => Request::KickJob(id),
            IdOrder::Touch(id) => Request::Touch(id),
            IdOrder::StatsJob(id) => Request::StatsJob(id),
        }
    }
}

#[derive(Debug)]
pub enum Answer {
    /// The proxy of [`Ask::Open`] is made.
    Opened,
    /// The reply to [`Ask::Run`]; `deadline` is the reservation's, for a
    /// job reserved or touched.
    Reply {
        reply: Reply,
        deadline: Option<Nanos>,
    },
    /// The replies to [`Ask::Run`]s of one session, in order, that left
    /// together (see "Batches").
    Replies(Vec<(Reply, Option<Nanos>)>),
    /// An ordinary wait here was answered.
    Wake {
        wake: Wake,
        deadline: Option<Nanos>,
    },
    /// [`Ask::Unuse`] or [`Ask::Unwatch`] is done.
    Ack,
    /// A [`Leave`] step is done.
    Left,
    Span(SpanAnswer),
}

/// Whether a session's next input may go out while replies are owed (see
/// [`Shard::may_pipeline`]).
pub(super) enum Pipeline<'a> {
    No,
    /// The body of a put whose line went out behind the others.
    Body,
    /// A command line, parsed.
    Line(Command<'a>),
}

/// A shard's part in a server of several.
pub(super) struct Spread {
    core: ShardId,
    shards: u32,
    /// Messages for each shard (this one included), each with the log batch
    /// that must be durable before it leaves (0: none).
    outbox: Vec<VecDeque<(u64, Message)>>,
    /// The latest batch of this shard's log known durable.
    durable: u64,
    /// Proxy clients on this engine, by the session's core and serial.
    /// (Keyed by [`proxy_key`]: one integer, hashed with one
    /// multiplication, since every request looks its proxy up.)
    proxies: HashMap<u64, ClientId, std::hash::BuildHasherDefault<crate::engine::KeyHasher>>,
    /// The session of each proxy, by client index.
    origin_of: Vec<Option<Origin>>,
    /// Serials given to this core's connections so far.
    serials: u64,
    /// Closed connections still being taken down.
    takedowns: Vec<Takedown>,
    /// This core's sessions with an armed spanning wait.
    armed: u64,
    /// This core's sessions with a spanning reserve under way (their timers).
    spanning: Vec<u32>,
    directory: Directory,
    /// Commands sent behind others to the same shard, for tests and stats.
    pipelined: u64,
    /// See [`Shard::set_mail_blocked`].
    mail_blocked: bool,
    /// Delivering messages to itself ([`Shard::run_own_messages`]), and
    /// the list it takes them into.
    running_own: bool,
    own_mail: Vec<Message>,
}

/// A session's part in a server of several (kept in its [`session::Session`]).
pub struct Far {
    serial: u64,
    /// The session's proxy on each shard, once known.
    proxies: Vec<Option<ClientId>>,
    holdings: Holdings,
    /// Ids recently put or peeked, with their shard (at most
    /// [`SEEN_IDS_MAX`]).
    seen: VecDeque<(u64, ShardId)>,
    span: SpanSession,
    reserve: Option<SpanReserve>,
    step: Step,
    /// Commands sent to the same shard behind `step`, answered in order.
    queued: VecDeque<Step>,
    /// The shard every command in flight went to, while they may be
    /// joined by more (see "Pipelining").
    pipe: Option<ShardId>,
    /// The session's routes, kept as its used tube and watch list change
    /// ([`Far::set_routes`]) rather than hashed for every command: the used
    /// tube's shard, and the one shard of every watched tube (`None` when
    /// they span shards).
    used_on: ShardId,
    watched_on: Option<ShardId>,
}

/// What the command in flight waits for.
#[derive(Debug)]
enum Step {
    Idle,
    /// A reply of the session's own, written once the replies before it
    /// have come.
    Local(&'static [u8]),
    /// The proxy on `default`'s shard.
    Open,
    /// One reply, written as it comes.
    Simple,
    /// An id command tried on `shard`; `next` is the next to try when it
    /// answers NOT_FOUND (`None`: no other).
    Id {
        order: IdOrder,
        next: Option<u32>,
    },
    /// `use`: the new tube's reply; then, if `old` is another shard, its
    /// drop.
    Use {
        name: TubeName,
        old: ShardId,
    },
    /// `use`: the old tube's shard dropped it; the reply follows.
    Unused {
        name: TubeName,
    },
    Watch {
        name: TubeName,
    },
    /// `ignore` of the watch list's entry `index`.
    Ignore {
        index: usize,
    },
    /// `stats`: answers still to come and the sum so far.
    Stats {
        left: u32,
        sum: Option<Box<(ServerStats, Option<LogStats>)>>,
        failed: bool,
    },
    /// An ordinary reserve on `shard`.
    Reserve {
        shard: ShardId,
    },
    /// A spanning reserve, in `Far::reserve`.
    Span,
}

/// A closed connection being taken down, one answered step at a time.
struct Takedown {
    origin: Origin,
    steps: VecDeque<(ShardId, Leave)>,
    /// Shards with a proxy of the connection, told last.
    shards: Vec<ShardId>,
}

impl Spread {
    pub(super) fn new(core: u32, shards: u32, directory: Directory) -> Spread {
        Spread {
            core: ShardId(core),
            shards,
            outbox: (0..shards).map(|_| VecDeque::new()).collect(),
            durable: 0,
            proxies: HashMap::default(),
            origin_of: Vec::new(),
            serials: 0,
            takedowns: Vec::new(),
            armed: 0,
            spanning: Vec::new(),
            directory,
            pipelined: 0,
            mail_blocked: false,
            running_own: false,
            own_mail: Vec::new(),
        }
    }

    fn send(&mut self, to: ShardId, fence: u64, msg: Message) {
        self.outbox[to.0 as usize].push_back((fence, msg));
    }

    /// Sends a session's request; an order joins the session's orders in
    /// the outbox's last message when that is where they are (see
    /// "Batches").
    fn send_ask(&mut self, to: ShardId, from: Origin, ask: Ask) {
        let queue = &mut self.outbox[to.0 as usize];
        let Ask::Run(order) = ask else { return queue.push_back((0, Message::Ask { from, ask })) };
        let order = match queue.back_mut() {
            Some((0, Message::Ask { from: last, ask: tail })) if *last == from => match join(tail, order) {
                Ok(()) => return,
                Err(order) => order,
            },
            _ => order,
        };
        queue.push_back((0, Message::Ask { from, ask: Ask::Run(order) }));
    }

    /// Sends a session an answer; a reply joins the replies to the same
    /// session held by the same batch in the outbox's last message (see
    /// "Batches").
    fn answer(&mut self, origin: Origin, client: Option<ClientId>, answer: Answer, fence: u64) {
        let queue = &mut self.outbox[origin.core.0 as usize];
        let Answer::Reply { reply, deadline } = answer else {
            return queue.push_back((fence, Message::Answer { to: origin, client, answer }));
        };
        let item = match queue.back_mut() {
            Some((held, Message::Answer { to, client: last, answer: tail }))
                if *held == fence && *to == origin && *last == client =>
            {
                match join(tail, (reply, deadline)) {
                    Ok(()) => return,
                    Err(item) => item,
                }
            }
            _ => (reply, deadline),
        };
        let answer = Answer::Reply { reply: item.0, deadline: item.1 };
        queue.push_back((fence, Message::Answer { to: origin, client, answer }));
    }

    fn set_origin(&mut self, client: ClientId, origin: Option<Origin>) {
        if self.origin_of.len() <= client.index() {
            self.origin_of.resize(client.index() + 1, None);
        }
        self.origin_of[client.index()] = origin;
    }
}

impl Far {
    fn shard_of(&self, id: u64) -> Option<ShardId> {
        if let Some(held) = self.holdings.get(id) {
            return Some(held.shard);
        }
        self.seen.iter().rev().find(|(seen, _)| *seen == id).map(|&(_, shard)| shard)
    }

    fn set_routes(&mut self, used: &str, watched: &[TubeName], shards: u32) {
        (self.used_on, self.watched_on) = routes_of(used, watched, shards);
    }

    /// [`Far::used_on`] and [`Far::watched_on`], checked against the
    /// session in debug builds.
    fn routes(&self, used: &str, watched: &[TubeName], shards: u32) -> (ShardId, Option<ShardId>) {
        debug_assert_eq!(routes_of(used, watched, shards), (self.used_on, self.watched_on), "the routes kept");
        (self.used_on, self.watched_on)
    }

    fn empty(serial: u64, shards: u32) -> Far {
        Far {
            serial,
            proxies: vec![None; shards as usize],
            holdings: Holdings::default(),
            seen: VecDeque::new(),
            span: SpanSession::default(),
            reserve: None,
            step: Step::Idle,
            queued: VecDeque::new(),
            pipe: None,
            used_on: ShardId(0),
            watched_on: None,
        }
    }

    fn see(&mut self, id: u64, shard: ShardId) {
        if self.seen.len() >= SEEN_IDS_MAX {
            self.seen.pop_front();
        }
        self.seen.push_back((id, shard));
    }
}

/// The used tube's shard, and the one shard of every watched tube (`None`
/// when they span shards).
fn routes_of(used: &str, watched: &[TubeName], shards: u32) -> (ShardId, Option<ShardId>) {
    let mut watched = watched.iter().map(|name| route::shard_of_tube(name, shards));
    let first = watched.next();
    (route::shard_of_tube(used, shards), first.filter(|&f| watched.all(|s| s == f)))
}

/// A message of one item or of several, which the next item may join.
trait Batch: Sized {
    type Item;
    /// The items of a message of several.
    fn list_mut(&mut self) -> Option<&mut Vec<Self::Item>>;
    fn is_single(&self) -> bool;
    /// The item of a message of one, taken out (`self` is left an empty
    /// batch).
    fn take_single(&mut self) -> Option<Self::Item>;
    fn of_items(items: Vec<Self::Item>) -> Self;
}

impl Batch for Ask {
    type Item = Order;
    fn list_mut(&mut self) -> Option<&mut Vec<Order>> {
        if let Ask::Runs(list) = self { Some(list) } else { None }
    }
    fn is_single(&self) -> bool {
        matches!(self, Ask::Run(_))
    }
    fn take_single(&mut self) -> Option<Order> {
        if !self.is_single() {
            return None;
        }
        let Ask::Run(order) = std::mem::replace(self, Ask::Runs(Vec::new())) else { unreachable!() };
        Some(order)
    }
    fn of_items(items: Vec<Order>) -> Ask {
        Ask::Runs(items)
    }
}

impl Batch for Answer {
    type Item = (Reply, Option<Nanos>);
    fn list_mut(&mut self) -> Option<&mut Vec<Self::Item>> {
        if let Answer::Replies(list) = self { Some(list) } else { None }
    }
    fn is_single(&self) -> bool {
        matches!(self, Answer::Reply { .. })
    }
    fn take_single(&mut self) -> Option<Self::Item> {
        if !self.is_single() {
            return None;
        }
        let Answer::Reply { reply, deadline } = std::mem::replace(self, Answer::Replies(Vec::new())) else {
            unreachable!()
        };
        Some((reply, deadline))
    }
    fn of_items(items: Vec<Self::Item>) -> Answer {
        Answer::Replies(items)
    }
}

/// Appends `item` to the message `tail`, which becomes a batch if it was
/// one item; `Err` with the item when `tail` is of another kind or there
/// is no memory for a longer list (`tail` is then as it was, and the item
/// goes in a message of its own).
fn join<M: Batch>(tail: &mut M, item: M::Item) -> Result<(), M::Item> {
    if let Some(list) = tail.list_mut() {
        if crate::memory::try_reserve(list, 1).is_err() {
            return Err(item);
        }
        list.push(item);
        return Ok(());
    }
    let mut items = Vec::new();
    if !tail.is_single() || crate::memory::try_reserve(&mut items, BATCH_START).is_err() {
        return Err(item);
    }
    let Some(first) = tail.take_single() else { return Err(item) };
    items.push(first);
    items.push(item);
    *tail = M::of_items(items);
    Ok(())
}

/// Room a batch starts with: a pipelining client sends a few commands a
/// read.
const BATCH_START: usize = 8;

/// A proxy's key: the session's core and its serial there, in one integer
/// (serials are counted per core and stay far below 2^56).
fn proxy_key(core: u32, serial: u64) -> u64 {
    u64::from(core) << 56 | serial
}

/// The counter a command earns, counted by the session's core.
fn op_of(cmd: &Command<'_>) -> Option<Op> {
    use Command as C;
    Some(match cmd {
        C::Peek(_) => Op::Peek,
        C::PeekReady => Op::PeekReady,
        C::PeekDelayed => Op::PeekDelayed,
        C::PeekBuried => Op::PeekBuried,
        C::Reserve => Op::Reserve,
        C::ReserveWithTimeout(_) => Op::ReserveWithTimeout,
        C::ReserveJob(_) => Op::ReserveJob,
        C::Delete(_) => Op::Delete,
        C::Release { .. } => Op::Release,
        C::Bury { .. } => Op::Bury,
        C::Kick(_) => Op::Kick,
        C::KickJob(_) => Op::KickJob,
        C::Touch(_) => Op::Touch,
        C::StatsJob(_) => Op::StatsJob,
        C::StatsTube(_) => Op::StatsTube,
        C::Stats => Op::Stats,
        C::Use(_) => Op::Use,
        C::Watch(_) => Op::Watch,
        C::Ignore(_) => Op::Ignore,
        C::ListTubes => Op::ListTubes,
        C::PauseTube { .. } => Op::PauseTube,
        C::ClearTube { .. } => Op::ClearTube,
        C::ListJobs { .. } => Op::ListJobs,
        C::Put { .. } | C::Quit | C::ListTubeUsed | C::ListTubesWatched => return None,
    })
}

impl Shard {
    /// One shard of `shards`, its engine sharing job ids (`ids`) and the
    /// tube directory with the others' (see [`crate::shard::spread`]).
    pub fn new_spread(
        config: crate::engine::EngineConfig,
        ids: crate::engine::IdSource,
        directory: Directory,
        info: super::ServerInfo,
    ) -> Shard {
        Shard::spread_engine(crate::engine::Engine::with_id_source(config, ids), directory, info)
    }

    /// The same around an engine made elsewhere (one restored from the
    /// log), which takes its ids from the server's shared source; the
    /// tubes it holds are entered in `directory`.
    pub fn spread_engine(mut engine: crate::engine::Engine, directory: Directory, info: super::ServerInfo) -> Shard {
        let config = engine.config();
        engine.set_directory(directory.clone());
        let mut shard = Shard::with_engine(engine, info);
        if config.shards > 1 {
            shard.spread = Some(Box::new(Spread::new(config.shard, config.shards, directory)));
        }
        shard
    }

    /// Moves the messages for shard `to` that may leave into `into`, in
    /// order, and returns this shard's clock: the receiver must deliver
    /// them at no earlier instant ([`Shard::deliver`]'s `now`), so that a
    /// connection's commands run at increasing instants whichever shards
    /// they run on, as they would on one engine (each shard steps its own
    /// clock once per command).
    ///
    /// At most `max` are taken (the room left in the ring to `to`); the
    /// rest stay, in order, for a later call.
    pub fn take_outbox(&mut self, to: ShardId, into: &mut Vec<Message>, max: usize) -> Nanos {
        let clock = self.clock;
        let Some(spread) = self.spread.as_deref_mut() else { return clock };
        let durable = spread.durable;
        let queue = &mut spread.outbox[to.0 as usize];
        let mut taken = 0;
        while taken < max && queue.front().is_some_and(|(fence, _)| *fence <= durable) {
            taken += 1;
            if let Some((_, msg)) = queue.pop_front() {
                into.push(msg);
            }
        }
        clock
    }

    /// [`Shard::take_outbox`] handing each message to `f` with the clock,
    /// in order, rather than into a list: a loop pushes them straight into
    /// the ring.
    pub fn drain_outbox(&mut self, to: ShardId, max: usize, mut f: impl FnMut(Nanos, Message)) {
        let clock = self.clock;
        let Some(spread) = self.spread.as_deref_mut() else { return };
        let durable = spread.durable;
        let queue = &mut spread.outbox[to.0 as usize];
        for _ in 0..max {
            match queue.front() {
                Some((fence, _)) if *fence <= durable => {}
                _ => break,
            }
            if let Some((_, msg)) = queue.pop_front() {
                f(clock, msg);
            }
        }
    }

    /// Whether some message may leave now.
    pub fn has_outbox(&self) -> bool {
        self.spread
            .as_deref()
            .is_some_and(|s| s.outbox.iter().any(|q| q.front().is_some_and(|(fence, _)| *fence <= s.durable)))
    }

    /// Whether messages for shard `to` wait here, held for the log or for
    /// room in the ring.
    pub fn has_outbox_for(&self, to: ShardId) -> bool {
        self.spread.as_deref().is_some_and(|s| !s.outbox[to.0 as usize].is_empty())
    }

    /// How many messages for shard `to` wait here.
    pub fn outbox_len(&self, to: ShardId) -> usize {
        self.spread.as_deref().map_or(0, |s| s.outbox[to.0 as usize].len())
    }

    /// Whether this shard owes its peers nothing: no message waits to
    /// leave and no closed connection is still being taken down, so none
    /// of its requests is unanswered. With the connections all closed, a
    /// stopping core may then tell the others it is done (`net::cores`).
    pub fn peers_quiet(&self) -> bool {
        self.spread.as_deref().is_none_or(|s| s.takedowns.is_empty() && s.outbox.iter().all(VecDeque::is_empty))
    }

    /// The rings to other shards are full: sessions run no new command
    /// (their input is carried, and they are not read) until
    /// [`Shard::set_mail_blocked`] says otherwise. Requests already sent
    /// are answered meanwhile, and their answers are what frees the rings,
    /// so this only ever waits on the other cores' progress.
    pub fn set_mail_blocked(&mut self, blocked: bool) {
        if let Some(spread) = self.spread.as_deref_mut() {
            spread.mail_blocked = blocked;
        }
    }

    pub fn mail_blocked(&self) -> bool {
        self.spread.as_deref().is_some_and(|s| s.mail_blocked)
    }

    pub(super) fn note_durable(&mut self, batch: u64) {
        if let Some(spread) = self.spread.as_deref_mut() {
            spread.durable = spread.durable.max(batch);
        }
    }

    /// A message from shard `from`.
    pub fn deliver(&mut self, from: ShardId, msg: Message, now: Nanos) {
        self.begin_deliveries(now);
        self.deliver_in_batch(from, msg, now);
        self.end_deliveries();
    }

    /// Before a batch of messages ([`Shard::deliver_in_batch`], then
    /// [`Shard::end_deliveries`]): what is due at `now` is done first.
    pub fn begin_deliveries(&mut self, now: Nanos) {
        let now = self.observe(now);
        self.upkeep.note_activity(now);
        self.engine.advance(now);
        self.settle(now);
    }

    /// One message of a batch: acted on, and what the engine owes other
    /// shards' sessions after it sent at once, in order with its answer;
    /// the sessions it let go on run at the batch's end. (A loop turn takes
    /// every message its rings hold as one batch: running the sessions and
    /// settling after each cost `--cores 2` a seventh of its CPU.)
    pub fn deliver_in_batch(&mut self, from: ShardId, msg: Message, now: Nanos) {
        let before = self.clock;
        let now = self.observe(now);
        if now > before {
            self.engine.advance(now);
        }
        match msg {
            Message::Ask { from: origin, ask } => self.owner_ask(origin, ask, now),
            Message::Answer { to, client, answer } => self.origin_answer(to, from, client, answer, now),
        }
        self.forward_if_owed();
    }

    /// After a batch of messages: the sessions they answered run on.
    pub fn end_deliveries(&mut self) {
        let now = self.clock;
        self.settle(now);
    }

    // ----- the owner's side ---------------------------------------------

    fn owner_ask(&mut self, origin: Origin, ask: Ask, now: Nanos) {
        let key = proxy_key(origin.core.0, origin.serial);
        let spread = self.spread.as_deref_mut().expect("a message for a shard alone");
        let client = match spread.proxies.get(&key) {
            Some(&c) => c,
            None if matches!(ask, Ask::Open | Ask::Run(_) | Ask::Runs(_) | Ask::Span(SpanRequest::Probe { .. })) => {
                match crate::memory::try_or_spend(|| self.engine.join_remote()) {
                    Ok(c) => {
                        let spread = self.spread.as_deref_mut().expect("spread");
                        spread.proxies.insert(key, c);
                        spread.set_origin(c, Some(origin));
                        c
                    }
                    Err(_) => return self.refuse(origin, ask),
                }
            }
            // Nothing of the session is here: nothing to drop or give back.
            None => {
                if matches!(ask, Ask::Leave(_)) {
                    self.refuse(origin, ask);
                }
                return;
            }
        };
        let ask = match ask {
            Ask::Run(order) => return self.owner_run(origin, client, order, now),
            Ask::Runs(orders) => {
                // As many `Run`s delivered one after another, each followed
                // by what the engine then owes (see `deliver_in_batch`), on
                // the proxy found once.
                for order in orders {
                    self.owner_run(origin, client, order, now);
                    self.forward_if_owed();
                }
                return;
            }
            ask => ask,
        };
        let before = self.engine.log().map(|log| log.records_written());
        let answer = match ask {
            Ask::Open => {
                // `default` exists and the lists have room for it, so
                // nothing can fail.
                let _ = self.engine.use_tube(client, DEFAULT_TUBE);
                let _ = self.engine.watch(client, DEFAULT_TUBE);
                Some(Answer::Opened)
            }
            Ask::Run(_) | Ask::Runs(_) => unreachable!("run above"),
            Ask::Unuse => {
                self.engine.unuse(client);
                Some(Answer::Ack)
            }
            Ask::Unwatch(name) => {
                self.engine.unwatch(client, &name);
                Some(Answer::Ack)
            }
            Ask::HalfClose => {
                self.engine.cancel_wait(client).then_some(Answer::Wake { wake: Wake::TimedOut, deadline: None })
            }
            Ask::Leave(step) => {
                // A leaving client waits no more: a job given back must not
                // go to its own wait.
                self.engine.cancel_wait(client);
                match step {
                    Leave::GiveBack(id) => {
                        self.engine.give_back(client, id, now);
                    }
                    Leave::Unwatch(name) => {
                        self.engine.unwatch(client, &name);
                    }
                    Leave::Unuse => self.engine.unuse(client),
                }
                Some(Answer::Left)
            }
            Ask::Disconnect => {
                self.engine.disconnect(client, now);
                let spread = self.spread.as_deref_mut().expect("spread");
                spread.proxies.remove(&key);
                spread.set_origin(client, None);
                None
            }
            Ask::Span(request) => spanning::execute(&mut self.engine, client, request, now).map(Answer::Span),
        };
        let fence = self.fence_since(before);
        if let Some(answer) = answer {
            self.spread.as_deref_mut().expect("spread").answer(origin, Some(client), answer, fence);
        }
    }

    /// Runs one order on the session's proxy at a fresh instant and sends
    /// its reply, held behind the log batch it recorded into, if any.
    fn owner_run(&mut self, origin: Origin, client: ClientId, order: Order, now: Nanos) {
        let before = self.engine.log().map(|log| log.records_written());
        let now = self.command_time(now);
        let (reply, deadline) = self.perform(client, order, now);
        let fence = self.fence_since(before);
        let answer = Answer::Reply { reply, deadline };
        self.spread.as_deref_mut().expect("spread").answer(origin, Some(client), answer, fence);
    }

    /// The batch an answer must wait for: the filling one when the engine
    /// recorded anything since `before` (its records written then), else
    /// none.
    fn fence_since(&self, before: Option<u64>) -> u64 {
        match (before, self.engine.log()) {
            (Some(before), Some(log)) if log.records_written() != before => log.filling(),
            _ => 0,
        }
    }

    /// The proxy for a request could not be made (no memory): the request
    /// is answered as a refusal, so that its session is not left waiting.
    fn refuse(&mut self, origin: Origin, ask: Ask) {
        let answer = match ask {
            Ask::Runs(orders) => {
                for order in orders {
                    self.refuse(origin, Ask::Run(order));
                }
                return;
            }
            Ask::Open => Answer::Opened,
            Ask::Run(_) => Answer::Reply { reply: Word::OutOfMemory.into(), deadline: None },
            Ask::Span(SpanRequest::Probe { round, .. }) => Answer::Span(SpanAnswer::OutOfMemory { round }),
            Ask::Leave(_) => Answer::Left,
            _ => return,
        };
        self.spread.as_deref_mut().expect("spread").answer(origin, None, answer, 0);
    }

    /// Runs an order on a proxy, uncounted; a reservation's deadline comes
    /// with a job reserved or touched.
    fn perform(&mut self, c: ClientId, order: Order, now: Nanos) -> (Reply, Option<Nanos>) {
        let engine = &mut self.engine;
        let run = |engine: &mut crate::engine::Engine, request| request::execute_uncounted(engine, c, request, now);
        let reply = match order {
            Order::Put(put) => run(engine, Request::Put(put)),
            Order::Id(order) => {
                let reply = run(engine, order.request());
                let deadline = match (&reply, order) {
                    (Reply::Reserved(job), _) => engine.reservation_deadline(c, job.id),
                    (Reply::Word(Word::Touched), IdOrder::Touch(id)) => engine.reservation_deadline(c, id),
                    _ => None,
                };
                return (reply, deadline);
            }
            Order::PeekReady => run(engine, Request::PeekReady),
            Order::PeekDelayed => run(engine, Request::PeekDelayed),
            Order::PeekBuried => run(engine, Request::PeekBuried),
            Order::Reserve(timeout) => {
                let reply = run(engine, Request::Reserve(timeout));
                let deadline = match &reply {
                    Reply::Reserved(job) => engine.reservation_deadline(c, job.id),
                    _ => None,
                };
                return (reply, deadline);
            }
            Order::Kick(bound) => run(engine, Request::Kick(bound)),
            Order::StatsTube(name) => run(engine, Request::StatsTube(&name)),
            Order::Stats => {
                let mut reply = run(engine, Request::Stats);
                if let Reply::Stats(figures) = &mut reply {
                    self.core_figures(&mut figures.0);
                }
                reply
            }
            Order::Use(name) => run(engine, Request::Use(&name)),
            Order::Watch(name) => run(engine, Request::Watch(&name)),
            Order::PauseTube { name, delay_s } => run(engine, Request::PauseTube { name: Some(&name), delay_s }),
            Order::ClearTube { name, states } => run(engine, Request::ClearTube { name: &name, states }),
            Order::ListJobs { name, state, after, count } => {
                run(engine, Request::ListJobs { name: &name, state, after, count })
            }
        };
        (reply, None)
    }

    /// This core's share of `stats` with several shards: the engine's
    /// counters, this core's sessions' connection figures, and its waits:
    /// the engine's ordinary ones and this core's armed spanning ones.
    fn core_figures(&self, stats: &mut ServerStats) {
        let f = self.figures;
        stats.connections = f.connections;
        stats.producers = f.producers;
        stats.workers = f.workers;
        stats.total_connections = self.total_connections;
        stats.waiting += self.spread.as_deref().map_or(0, |s| s.armed);
    }

    /// [`Shard::forward_owed`] when the engine owes anything: most calls
    /// leave nothing owed, and then there is nothing to walk.
    fn forward_if_owed(&mut self) {
        if self.engine.has_wakes() || self.engine.owes_spans() || !self.wakes.is_empty() {
            self.wakes.extend(self.engine.take_wakes());
            self.forward_owed();
        }
    }

    /// Answers the engine owes sessions elsewhere after a call on it:
    /// ordinary waits answered, spanning waits served, expiry notices.
    pub(super) fn forward_owed(&mut self) {
        let Some(spread) = self.spread.as_deref_mut() else { return };
        for (client, wake) in self.wakes.drain(..) {
            let Some(origin) = spread.origin_of.get(client.index()).copied().flatten() else { continue };
            let deadline = match &wake {
                Wake::Reserved(job) => self.engine.reservation_deadline(client, job.id),
                _ => None,
            };
            spread.answer(origin, Some(client), Answer::Wake { wake, deadline }, 0);
        }
        spanning::owed(&mut self.engine, |client, answer| {
            if let Some(origin) = spread.origin_of.get(client.index()).copied().flatten() {
                spread.answer(origin, Some(client), Answer::Span(answer), 0);
            }
        });
    }

    // ----- the session's side -------------------------------------------

    /// A new connection of a shard among several: its proxy here, and one
    /// on `default`'s shard using and watching it.
    pub(super) fn far_open(&mut self, label: i32) -> Option<ConnId> {
        let client = crate::memory::try_or_spend(|| self.engine.join_remote()).ok()?;
        let spread = self.spread.as_deref_mut().expect("spread");
        spread.serials += 1;
        let serial = spread.serials;
        let (core, shards) = (spread.core, spread.shards);
        let mut far = Box::new(Far::empty(serial, shards));
        far.proxies[core.0 as usize] = Some(client);
        let conn = self.sessions.insert(session::Session::new(client, label));
        let session = &self.sessions[conn as usize];
        far.set_routes(&session.used, &session.watched, shards);
        let origin = Origin { core, conn, serial };
        let spread = self.spread.as_deref_mut().expect("spread");
        spread.proxies.insert(proxy_key(core.0, serial), client);
        spread.set_origin(client, Some(origin));
        let home = route::shard_of_tube(DEFAULT_TUBE, shards);
        if home == core {
            let _ = self.engine.use_tube(client, DEFAULT_TUBE);
            let _ = self.engine.watch(client, DEFAULT_TUBE);
        } else {
            far.step = Step::Open;
            self.sessions[conn as usize].awaiting = true;
            spread.send(home, 0, Message::Ask { from: origin, ask: Ask::Open });
        }
        self.sessions[conn as usize].far = Some(far);
        self.total_connections = self.total_connections.wrapping_add(1);
        self.figures.connections += 1;
        Some(ConnId(conn))
    }

    fn origin(&self, conn: u32) -> Origin {
        let far = self.sessions[conn as usize].far.as_deref().expect("a session of several shards");
        Origin { core: self.spread.as_deref().expect("spread").core, conn, serial: far.serial }
    }

    /// Sends a session's request to shard `to`; the session now waits for
    /// the answer (`step`), behind those of the commands before it when it
    /// is pipelined.
    fn ask(&mut self, conn: u32, to: ShardId, ask: Ask, step: Step) {
        let from = self.origin(conn);
        let session = &mut self.sessions[conn as usize];
        let far = session.far.as_deref_mut().expect("far");
        // A reserve that cannot wait (timeout 0) on one shard is answered at
        // once, by that shard alone, so it may lead a pipeline too.
        let joins = matches!(step, Step::Simple | Step::Id { next: None, .. })
            || matches!(ask, Ask::Run(Order::Reserve(Some(0))));
        let spread = self.spread.as_deref_mut().expect("spread");
        // A request of a session with nothing in flight to its own shard,
        // with nothing queued for that shard ahead of it, is run here and
        // now: what the message would have done on arrival, and what its
        // answer would have done on its return, without the two trips
        // through the outbox (see `run_own`).
        let own = to == spread.core
            && !session.awaiting
            && !spread.running_own
            && spread.outbox[to.0 as usize].is_empty()
            && matches!(ask, Ask::Run(_));
        if session.awaiting {
            debug_assert_eq!(far.pipe, Some(to), "a command pipelined to another shard");
            far.queued.push_back(step);
            spread.pipelined += 1;
        } else {
            session.awaiting = true;
            far.step = step;
            far.pipe = joins.then_some(to);
        }
        if own && let Ask::Run(order) = ask {
            return self.run_own(conn, order);
        }
        spread.send_ask(to, from, ask);
        if to == spread.core {
            self.run_own_messages();
        }
    }

    /// Runs a session's order on its own engine, as [`Shard::ask`] decided:
    /// the owner's half of a delivered `Ask::Run` (a fresh instant, the
    /// order on the session's client there, what the engine then owes
    /// other sessions sent), then the session's half of its answer. The
    /// two differ from the trip through messages in one way only, the log:
    /// a reply acknowledging a recorded change is held in the session's
    /// output until its batch is durable (`Shard::hold_if_recorded`, as
    /// with one shard) rather than in the outbox, so the session may run
    /// its next commands meanwhile, as it may with one shard.
    fn run_own(&mut self, conn: u32, order: Order) {
        let me = self.spread.as_deref().expect("spread").core;
        let far = self.sessions[conn as usize].far.as_deref().expect("far");
        let client = far.proxies[me.0 as usize].expect("a session's client on its own shard");
        let before = self.log_mark(conn);
        let now = self.command_time(self.clock);
        let (reply, deadline) = self.perform(client, order, now);
        self.forward_if_owed();
        self.far_reply(conn, me, reply, deadline, now);
        self.hold_if_recorded(conn, before);
        if self.has_outbox_for(me) {
            self.run_own_messages();
        }
    }

    /// Delivers at once the messages this shard sent itself that may leave
    /// (a request of one of its sessions to its own engine, and what that
    /// engine owes in return), as the loop would at the end of the turn:
    /// a session whose commands all stay on its own core then runs them one
    /// after another within its input, as on one shard, instead of one per
    /// turn. Not while doing so already: the outer call takes what the
    /// inner would. The caller settles afterwards, as after any input.
    fn run_own_messages(&mut self) {
        let Some(spread) = self.spread.as_deref_mut() else { return };
        if spread.running_own {
            return;
        }
        spread.running_own = true;
        let me = spread.core;
        let mut mail = std::mem::take(&mut spread.own_mail);
        let now = self.clock;
        loop {
            self.take_outbox(me, &mut mail, usize::MAX);
            if mail.is_empty() {
                break;
            }
            for msg in mail.drain(..) {
                self.deliver_in_batch(me, msg, now);
            }
        }
        let spread = self.spread.as_deref_mut().expect("spread");
        spread.own_mail = mail;
        spread.running_own = false;
    }

    /// A reply of the session's own while replies are owed: it waits its
    /// turn.
    pub(super) fn far_local(&mut self, conn: u32, reply: &'static [u8]) {
        let far = self.sessions[conn as usize].far.as_deref_mut().expect("far");
        far.queued.push_back(Step::Local(reply));
    }

    /// Whether the command line at the start of `input` may be sent now
    /// although replies are owed: only to the shard they are owed by, and
    /// only a command answered by one reply from it that needs nothing of
    /// the ones before (a put, the peeks, kick, the commands on a named
    /// tube, those on an id whose shard the session knows, and a reserve
    /// with timeout 0 whose watched tubes and reservations are all there). Anything
    /// else, and any line this session would answer itself, waits.
    pub(super) fn may_pipeline<'a>(&self, conn: u32, input: &'a [u8]) -> Pipeline<'a> {
        let session = &self.sessions[conn as usize];
        let Some(far) = session.far.as_deref() else { return Pipeline::No };
        let Some(pipe) = far.pipe else { return Pipeline::No };
        let crate::shard::Mode::Line = session.mode else {
            // A put body whose line was sent behind the others.
            return if matches!(session.mode, crate::shard::Mode::Body(_)) { Pipeline::Body } else { Pipeline::No };
        };
        let session::LineScan::Line(len) = session::scan_line(input) else { return Pipeline::No };
        let Ok(cmd) = crate::protocol::command::parse_with(&input[..len], !self.info.strict) else {
            return Pipeline::No;
        };
        if self.joins_pipeline(session, far, pipe, &cmd) { Pipeline::Line(cmd) } else { Pipeline::No }
    }

    fn joins_pipeline(&self, session: &session::Session, far: &Far, pipe: ShardId, cmd: &Command<'_>) -> bool {
        use Command as C;
        let shards = self.engine.config().shards;
        let tube = |name: &str| route::shard_of_tube(name, shards) == pipe;
        let id = |id: u64| far.shard_of(id) == Some(pipe);
        let (used_on, watched_on) = far.routes(&session.used, &session.watched, shards);
        match *cmd {
            C::Put { size, trailing_garbage, .. } => {
                u64::from(size) <= self.info.max_job_size && !trailing_garbage && used_on == pipe
            }
            C::PeekReady | C::PeekDelayed | C::PeekBuried | C::Kick(_) => used_on == pipe,
            C::StatsTube(name) | C::ClearTube { name, .. } | C::ListJobs { name, .. } => tube(name),
            C::PauseTube { name: Some(name), .. } => tube(name),
            C::Peek(i) | C::ReserveJob(i) | C::Delete(i) | C::KickJob(i) | C::Touch(i) | C::StatsJob(i) => id(i),
            C::Release { id: i, .. } | C::Bury { id: i, .. } => id(i),
            // Never waits, and with every watched tube and reservation on
            // the pipeline's shard it is an ordinary reserve there (see
            // `far_reserve`): its answer, RESERVED, TIMED_OUT or
            // DEADLINE_SOON, is that shard's alone. Its job then becomes a
            // holding on the same shard, so the next one stays there too.
            C::ReserveWithTimeout(0) => {
                spanning::single_shard(watched_on.into_iter(), &far.holdings, self.clock) == Some(pipe)
            }
            _ => false,
        }
    }

    /// Runs a parsed command of a session of several shards (all but put,
    /// quit and the connection's own lists, which the caller runs).
    pub(super) fn far_command(&mut self, conn: u32, cmd: Command<'_>, now: Nanos) {
        use Command as C;
        if let Some(op) = op_of(&cmd) {
            self.engine.count(op);
        }
        let shards = self.engine.config().shards;
        let session = &mut self.sessions[conn as usize];
        let (used, _) = session.far.as_deref().expect("far").routes(&session.used, &session.watched, shards);
        match cmd {
            C::Peek(id) => self.far_id(conn, IdOrder::Peek(id)),
            C::ReserveJob(id) => self.far_id(conn, IdOrder::ReserveJob(id)),
            C::Delete(id) => self.far_id(conn, IdOrder::Delete(id)),
            C::Release { id, pri, delay_s } => self.far_id(conn, IdOrder::Release { id, pri, delay_s }),
            C::Bury { id, pri } => self.far_id(conn, IdOrder::Bury { id, pri }),
            C::KickJob(id) => self.far_id(conn, IdOrder::KickJob(id)),
            C::Touch(id) => self.far_id(conn, IdOrder::Touch(id)),
            C::StatsJob(id) => self.far_id(conn, IdOrder::StatsJob(id)),
            C::PeekReady => self.ask(conn, used, Ask::Run(Order::PeekReady), Step::Simple),
            C::PeekDelayed => self.ask(conn, used, Ask::Run(Order::PeekDelayed), Step::Simple),
            C::PeekBuried => self.ask(conn, used, Ask::Run(Order::PeekBuried), Step::Simple),
            C::Kick(bound) => self.ask(conn, used, Ask::Run(Order::Kick(bound)), Step::Simple),
            C::StatsTube(name) => {
                let to = route::shard_of_tube(name, shards);
                self.ask(conn, to, Ask::Run(Order::StatsTube(name.into())), Step::Simple)
            }
            C::PauseTube { name: None, .. } => session.out.push(reply::BAD_FORMAT),
            C::PauseTube { name: Some(name), delay_s } => {
                let to = route::shard_of_tube(name, shards);
                self.ask(conn, to, Ask::Run(Order::PauseTube { name: name.into(), delay_s }), Step::Simple)
            }
            C::ClearTube { name, states } => {
                let to = route::shard_of_tube(name, shards);
                self.ask(conn, to, Ask::Run(Order::ClearTube { name: name.into(), states }), Step::Simple)
            }
            C::ListJobs { name, state, after, count } => {
                let to = route::shard_of_tube(name, shards);
                let order = Order::ListJobs { name: name.into(), state, after, count };
                self.ask(conn, to, Ask::Run(order), Step::Simple)
            }
            C::Stats => {
                let from = self.origin(conn);
                let session = &mut self.sessions[conn as usize];
                session.awaiting = true;
                session.far.as_deref_mut().expect("far").step = Step::Stats { left: shards, sum: None, failed: false };
                let spread = self.spread.as_deref_mut().expect("spread");
                for s in 0..shards {
                    spread.send(ShardId(s), 0, Message::Ask { from, ask: Ask::Run(Order::Stats) });
                }
            }
            C::ListTubes => {
                let spread = self.spread.as_deref().expect("spread");
                let list = spread.directory.with_names(|names| request::names(names.len(), names.iter().map(|n| &**n)));
                self.answer(conn, list, now);
            }
            C::Use(name) => match session::tube_name(name) {
                Ok(staged) => {
                    let to = route::shard_of_tube(name, shards);
                    self.ask(conn, to, Ask::Run(Order::Use(name.into())), Step::Use { name: staged, old: used })
                }
                Err(_) => session.out.push(reply::OUT_OF_MEMORY),
            },
            C::Watch(name) => {
                if session.watched.iter().any(|w| w == name) {
                    let n = session.watched.len();
                    return self.answer(conn, Reply::Watching(n), now);
                }
                let room = crate::memory::attempt(|| session.watched.try_reserve(1));
                match room.and_then(|()| session::tube_name(name)) {
                    Ok(staged) => {
                        let to = route::shard_of_tube(name, shards);
                        self.ask(conn, to, Ask::Run(Order::Watch(name.into())), Step::Watch { name: staged })
                    }
                    Err(_) => session.out.push(reply::OUT_OF_MEMORY),
                }
            }
            C::Ignore(name) => match session.watched.iter().position(|w| w == name) {
                None => {
                    let n = session.watched.len();
                    self.answer(conn, Reply::Watching(n), now)
                }
                Some(_) if session.watched.len() < 2 => session.out.push(reply::NOT_IGNORED),
                Some(index) => {
                    let to = route::shard_of_tube(name, shards);
                    self.ask(conn, to, Ask::Unwatch(name.into()), Step::Ignore { index })
                }
            },
            C::Reserve | C::ReserveWithTimeout(_) => {
                self.figures.workers += u64::from(!session.worker);
                session.worker = true;
                let timeout = if let C::ReserveWithTimeout(t) = cmd { Some(t) } else { None };
                self.far_reserve(conn, timeout, now);
            }
            C::Put { .. } | C::Quit | C::ListTubeUsed | C::ListTubesWatched => {
                unreachable!("run by the caller")
            }
        }
    }

    /// A put whose body has come, to its used tube's shard.
    pub(super) fn far_put(&mut self, conn: u32, put: Put) {
        let shards = self.engine.config().shards;
        let session = &self.sessions[conn as usize];
        let (to, _) = session.far.as_deref().expect("far").routes(&session.used, &session.watched, shards);
        self.ask(conn, to, Ask::Run(Order::Put(put)), Step::Simple);
    }

    fn far_id(&mut self, conn: u32, order: IdOrder) {
        let far = self.sessions[conn as usize].far.as_deref().expect("far");
        match far.shard_of(order.id()) {
            Some(shard) => self.ask(conn, shard, Ask::Run(Order::Id(order)), Step::Id { order, next: None }),
            None => {
                let shards = self.engine.config().shards;
                let next = (shards > 1).then_some(1);
                self.ask(conn, ShardId(0), Ask::Run(Order::Id(order)), Step::Id { order, next })
            }
        }
    }

    fn far_reserve(&mut self, conn: u32, timeout: Option<u32>, now: Nanos) {
        let shards = self.engine.config().shards;
        let session = &mut self.sessions[conn as usize];
        let far = session.far.as_deref_mut().expect("far");
        let (_, watched_on) = far.routes(&session.used, &session.watched, shards);
        if let Some(shard) = spanning::single_shard(watched_on.into_iter(), &far.holdings, now) {
            return self.ask(conn, shard, Ask::Run(Order::Reserve(timeout)), Step::Reserve { shard });
        }
        let mut parts: Vec<(ShardId, ClientId)> = Vec::new();
        for name in &session.watched {
            let shard = route::shard_of_tube(name, shards);
            if !parts.iter().any(|&(s, _)| s == shard) {
                let client = far.proxies[shard.0 as usize].expect("a proxy on every watched tube's shard");
                parts.push((shard, client));
            }
        }
        let mut out = Vec::new();
        far.reserve = Some(SpanReserve::start(&mut far.span, &parts, timeout, now, &mut out));
        far.step = Step::Span;
        session.awaiting = true;
        let from = self.origin(conn);
        let spread = self.spread.as_deref_mut().expect("spread");
        spread.spanning.push(conn);
        for (to, _, request) in out {
            spread.send(to, 0, Message::Ask { from, ask: Ask::Span(request) });
        }
    }

    /// An answer from shard `from` for one of this core's sessions.
    fn origin_answer(&mut self, to: Origin, from: ShardId, client: Option<ClientId>, answer: Answer, now: Nanos) {
        let spread = self.spread.as_deref_mut().expect("spread");
        if let Some(i) = spread.takedowns.iter().position(|t| t.origin.serial == to.serial) {
            if matches!(answer, Answer::Left) {
                self.takedown_step(i);
            }
            return;
        }
        let Some(session) = self.sessions.get_mut(to.conn) else { return };
        let Some(far) = session.far.as_deref_mut() else { return };
        if far.serial != to.serial || session.closing {
            return;
        }
        if client.is_some() {
            far.proxies[from.0 as usize] = client;
        }
        match answer {
            Answer::Span(SpanAnswer::Expired) => {
                // A wait whose timer is due answers first, by the
                // reservations it was armed with (the notice may come
                // before this core's own tick).
                self.span_timer(to.conn, now);
                if let Some(far) = self.sessions.get_mut(to.conn).and_then(|s| s.far.as_deref_mut()) {
                    far.holdings.prune(from, now);
                }
            }
            Answer::Span(answer) => self.span_answer(to.conn, from, answer, now),
            Answer::Opened => {
                debug_assert!(matches!(far.step, Step::Open));
                self.finish(to.conn);
            }
            Answer::Wake { wake, deadline } => {
                debug_assert!(matches!(far.step, Step::Reserve { .. }) && session.blocked);
                session.blocked = false;
                self.figures.waiting -= 1;
                let reply = match wake {
                    Wake::Reserved(job) => {
                        far.holdings.hold(job.id, from, deadline.unwrap_or(now));
                        Reply::Reserved(job)
                    }
                    Wake::TimedOut => Word::TimedOut.into(),
                    Wake::DeadlineSoon => Word::DeadlineSoon.into(),
                };
                self.answer(to.conn, reply, now);
                self.finish(to.conn);
            }
            Answer::Ack => match std::mem::replace(&mut far.step, Step::Idle) {
                Step::Unused { name } => {
                    session.used = name;
                    far.set_routes(&session.used, &session.watched, self.engine.config().shards);
                    reply::using(&mut session.out, &session.used);
                    self.finish(to.conn);
                }
                Step::Ignore { index } => {
                    session.watched.swap_remove(index);
                    far.set_routes(&session.used, &session.watched, self.engine.config().shards);
                    let n = session.watched.len();
                    self.answer(to.conn, Reply::Watching(n), now);
                    self.finish(to.conn);
                }
                step => panic!("an acknowledgement in {step:?}"),
            },
            Answer::Left => {}
            Answer::Reply { reply, deadline } => self.far_reply(to.conn, from, reply, deadline, now),
            Answer::Replies(replies) => {
                for (reply, deadline) in replies {
                    self.far_reply(to.conn, from, reply, deadline, now);
                }
            }
        }
    }

    fn far_reply(&mut self, conn: u32, from: ShardId, reply: Reply, deadline: Option<Nanos>, now: Nanos) {
        let from_origin = self.origin(conn);
        let session = &mut self.sessions[conn as usize];
        let far = session.far.as_deref_mut().expect("far");
        match std::mem::replace(&mut far.step, Step::Idle) {
            Step::Simple => {
                match &reply {
                    Reply::Inserted(id) => far.see(*id, from),
                    Reply::Found(job) => far.see(job.id, from),
                    _ => {}
                }
                self.answer(conn, reply, now);
                self.finish(conn);
            }
            Step::Id { order, next } => {
                if matches!(reply, Reply::Word(Word::NotFound))
                    && let Some(k) = next
                {
                    let shards = self.engine.config().shards;
                    let next = (k + 1 < shards).then_some(k + 1);
                    far.step = Step::Id { order, next };
                    let spread = self.spread.as_deref_mut().expect("spread");
                    spread.send(ShardId(k), 0, Message::Ask { from: from_origin, ask: Ask::Run(Order::Id(order)) });
                    return;
                }
                let id = order.id();
                match (&reply, order) {
                    (Reply::Reserved(job), _) => {
                        far.holdings.hold(job.id, from, deadline.unwrap_or(now));
                        self.figures.workers += u64::from(!session.worker);
                        session.worker = true;
                    }
                    (Reply::Found(_) | Reply::JobStats(_), _) => far.see(id, from),
                    (Reply::Word(Word::Touched), _) => far.holdings.touch(id, from, deadline.unwrap_or(now)),
                    (Reply::Word(Word::Deleted | Word::Released | Word::Buried), _) => {
                        far.holdings.release(id);
                    }
                    _ => {}
                }
                self.answer(conn, reply, now);
                self.finish(conn);
            }
            Step::Use { name, old } => {
                let to = route::shard_of_tube(&name, self.engine.config().shards);
                if matches!(reply, Reply::Using(_)) && to != old {
                    far.step = Step::Unused { name };
                    let spread = self.spread.as_deref_mut().expect("spread");
                    spread.send(old, 0, Message::Ask { from: from_origin, ask: Ask::Unuse });
                    return;
                }
                if matches!(reply, Reply::Using(_)) {
                    session.used = name;
                    far.set_routes(&session.used, &session.watched, self.engine.config().shards);
                }
                self.answer(conn, reply, now);
                self.finish(conn);
            }
            Step::Watch { name } => {
                let reply = match reply {
                    Reply::Watching(_) => {
                        session.watched.push(name);
                        far.set_routes(&session.used, &session.watched, self.engine.config().shards);
                        Reply::Watching(session.watched.len())
                    }
                    other => other,
                };
                self.answer(conn, reply, now);
                self.finish(conn);
            }
            Step::Stats { left, mut sum, failed } => {
                // A shard that could not answer (OUT_OF_MEMORY) makes the
                // whole answer that.
                let failed = match reply {
                    Reply::Stats(part) => {
                        match &mut sum {
                            None => sum = Some(part),
                            Some(s) => {
                                ServerStats::merge(&mut s.0, &part.0);
                                match (&mut s.1, part.1) {
                                    (Some(mine), Some(theirs)) => mine.merge(&theirs),
                                    (mine @ None, theirs) => *mine = theirs,
                                    (Some(_), None) => {}
                                }
                            }
                        }
                        failed
                    }
                    _ => true,
                };
                if left > 1 {
                    far.step = Step::Stats { left: left - 1, sum, failed };
                    return;
                }
                let reply = match sum {
                    Some(sum) if !failed => Reply::Stats(sum),
                    _ => Word::OutOfMemory.into(),
                };
                self.answer(conn, reply, now);
                self.finish(conn);
            }
            Step::Reserve { shard } => match reply {
                Reply::Waiting => {
                    far.step = Step::Reserve { shard };
                    session.blocked = true;
                    self.figures.waiting += 1;
                    if session.eof {
                        // The client has half-closed: its wait ends at once.
                        let spread = self.spread.as_deref_mut().expect("spread");
                        spread.send(shard, 0, Message::Ask { from: from_origin, ask: Ask::HalfClose });
                    }
                }
                reply => {
                    if let Reply::Reserved(job) = &reply {
                        far.holdings.hold(job.id, from, deadline.unwrap_or(now));
                    }
                    self.answer(conn, reply, now);
                    self.finish(conn);
                }
            },
            step => panic!("a reply in {step:?}"),
        }
    }

    /// The command in flight is answered: the next pipelined one is, or the
    /// session runs on.
    fn finish(&mut self, conn: u32) {
        let session = &mut self.sessions[conn as usize];
        session.awaiting = false;
        if let Some(far) = session.far.as_deref_mut() {
            far.step = Step::Idle;
            while let Some(next) = far.queued.pop_front() {
                if let Step::Local(reply) = next {
                    session.out.push(reply);
                    continue;
                }
                far.step = next;
                session.awaiting = true;
                break;
            }
            if !session.awaiting {
                far.pipe = None;
            }
        }
        self.recount(conn);
        self.mark_dirty(conn);
        self.queue_run(conn);
    }

    fn span_answer(&mut self, conn: u32, from: ShardId, answer: SpanAnswer, now: Nanos) {
        let session = &mut self.sessions[conn as usize];
        let far = session.far.as_deref_mut().expect("far");
        let Some(reserve) = far.reserve.as_mut() else { return };
        let mut out = Vec::new();
        let outcome = reserve.answer(&mut far.span, &far.holdings, from, answer, now, &mut out);
        self.span_progress(conn, outcome, out, now);
    }

    /// After a step of a spanning reserve: its requests sent, the session's
    /// waiting state brought in line, a half-close applied once armed, and
    /// its outcome answered.
    fn span_progress(&mut self, conn: u32, mut outcome: Option<Outcome>, mut out: Vec<spanning::Outgoing>, now: Nanos) {
        let from = self.origin(conn);
        let session = &mut self.sessions[conn as usize];
        let far = session.far.as_deref_mut().expect("far");
        let spread = self.spread.as_deref_mut().expect("spread");
        if let Some(reserve) = far.reserve.as_mut()
            && outcome.is_none()
            && reserve.is_armed()
            && session.eof
        {
            outcome = reserve.half_close(&mut far.span, &mut out);
        }
        for (to, _, request) in out.drain(..) {
            spread.send(to, 0, Message::Ask { from, ask: Ask::Span(request) });
        }
        let armed = outcome.is_none() && far.reserve.as_ref().is_some_and(SpanReserve::is_armed);
        if armed != session.blocked {
            session.blocked = armed;
            if armed {
                self.figures.waiting += 1;
                spread.armed += 1;
            } else {
                self.figures.waiting -= 1;
                spread.armed -= 1;
            }
        }
        let Some(outcome) = outcome else { return };
        far.reserve = None;
        spread.spanning.retain(|&c| c != conn);
        let reply = match outcome {
            Outcome::Reserved { shard, job, deadline } => {
                far.holdings.hold(job.id, shard, deadline);
                Reply::Reserved(job)
            }
            Outcome::TimedOut => Word::TimedOut.into(),
            Outcome::DeadlineSoon => Word::DeadlineSoon.into(),
            Outcome::OutOfMemory => Word::OutOfMemory.into(),
        };
        if session.make_room().is_err() {
            return self.kill(conn, now);
        }
        self.answer(conn, reply, now);
        self.finish(conn);
    }

    /// The soonest timer of this core's spanning reserves.
    pub(super) fn span_deadline(&self) -> Option<Nanos> {
        let spread = self.spread.as_deref()?;
        spread
            .spanning
            .iter()
            .filter_map(|&conn| {
                let far = self.sessions.get(conn)?.far.as_deref()?;
                far.reserve.as_ref()?.timer(&far.holdings, self.clock)
            })
            .min()
    }

    /// Fires the spanning reserves' timers that are due.
    pub(super) fn span_timers(&mut self, now: Nanos) {
        let Some(spread) = self.spread.as_deref() else { return };
        for conn in spread.spanning.clone() {
            self.span_timer(conn, now);
        }
    }

    /// Fires one session's spanning reserve's timer if it is due.
    fn span_timer(&mut self, conn: u32, now: Nanos) {
        let Some(far) = self.sessions.get_mut(conn).and_then(|s| s.far.as_deref_mut()) else { return };
        let Some(reserve) = far.reserve.as_mut() else { return };
        if reserve.timer(&far.holdings, now).is_none_or(|t| t > now) {
            return;
        }
        let mut out = Vec::new();
        let outcome = reserve.fire(&mut far.span, &far.holdings, now, &mut out);
        self.span_progress(conn, outcome, out, now);
    }

    /// The peer of a session of several shards sent its last byte: a wait
    /// is ended at once (TIMED_OUT, as beanstalkd answers a half-closed
    /// waiter), commands already buffered still run, then it closes.
    pub(super) fn far_eof(&mut self, conn: u32, now: Nanos) {
        // A closing session's part among the shards is being taken down
        // already (its `far` is gone).
        if self.sessions[conn as usize].closing {
            return;
        }
        let from = self.origin(conn);
        let session = &mut self.sessions[conn as usize];
        session.eof = true;
        let far = session.far.as_deref_mut().expect("far");
        match far.step {
            Step::Reserve { shard } if session.blocked => {
                let spread = self.spread.as_deref_mut().expect("spread");
                spread.send(shard, 0, Message::Ask { from, ask: Ask::HalfClose });
            }
            Step::Span => self.span_progress(conn, None, Vec::new(), now),
            _ => {}
        }
        if self.sessions[conn as usize].runnable() {
            self.run(conn, now);
        }
        self.far_idle(conn, now);
    }

    /// A stop (SIGTERM) ends a session of several shards with commands in
    /// flight on other shards: no further command of it runs, and it
    /// closes once those are answered, as a half-closed one does, so that
    /// a command that ran on another shard has its reply written (with
    /// one shard, every command that ran has its reply in the output when
    /// the stop closes the session). Returns false, and does nothing, for
    /// a session that must close at once: one with nothing in flight, or
    /// with a reserve waiting or in flight (a half-closed one would be
    /// answered TIMED_OUT, which a stop does not write).
    pub(super) fn far_stop(&mut self, conn: u32) -> bool {
        let session = &mut self.sessions[conn as usize];
        let Some(far) = session.far.as_deref() else { return false };
        let reserving = |step: &Step| matches!(step, Step::Reserve { .. } | Step::Span);
        if session.closing
            || !session.awaiting
            || session.blocked
            || far.reserve.is_some()
            || reserving(&far.step)
            || far.queued.iter().any(reserving)
        {
            return false;
        }
        session.pending = Default::default();
        session.mode = crate::shard::Mode::Line;
        session.eof = true;
        true
    }

    /// A half-closed session with nothing left in flight or to run closes.
    pub(super) fn far_idle(&mut self, conn: u32, now: Nanos) {
        let Some(s) = self.sessions.get(conn) else { return };
        if s.far.is_some() && s.eof && !s.closing && !s.awaiting && !s.blocked && !s.stalled && !s.carried {
            self.close(ConnId(conn), now);
        }
    }

    /// A session of several shards closed: its takedown starts (see
    /// "Proxies, and leaving").
    pub(super) fn far_close(&mut self, conn: u32) {
        let origin = self.origin(conn);
        let shards = self.engine.config().shards;
        let session = &mut self.sessions[conn as usize];
        let mut far = session.far.take().expect("far");
        let spread = self.spread.as_deref_mut().expect("spread");
        if let Some(reserve) = far.reserve.as_mut() {
            reserve.abandon(&mut far.span);
            spread.spanning.retain(|&c| c != conn);
            if session.blocked {
                spread.armed -= 1;
            }
        }
        // An ordinary wait ends first, as `Engine::disconnect` ends it
        // before anything else: no job may reach a leaving proxy while the
        // takedown is on other shards. (Its answer finds the session gone.)
        if let Step::Reserve { shard } = far.step
            && session.blocked
        {
            spread.send(shard, 0, Message::Ask { from: origin, ask: Ask::HalfClose });
        }
        let mut steps = VecDeque::new();
        for held in far.holdings.in_order() {
            steps.push_back((held.shard, Leave::GiveBack(held.id)));
        }
        // beanstalkd empties the watch set first entry out, last into the
        // gap, which decides the order in which tubes are destroyed.
        let mut watched: Vec<&str> = session.watched.iter().map(|n| &**n).collect();
        while !watched.is_empty() {
            let name = watched.swap_remove(0);
            steps.push_back((route::shard_of_tube(name, shards), Leave::Unwatch(name.into())));
        }
        steps.push_back((route::shard_of_tube(&session.used, shards), Leave::Unuse));
        let touched = (0..shards).filter(|&s| far.proxies[s as usize].is_some()).map(ShardId).collect();
        spread.takedowns.push(Takedown { origin, steps, shards: touched });
        let i = spread.takedowns.len() - 1;
        self.takedown_step(i);
    }

    /// The next step of a takedown, or its end: every shard drops its proxy.
    fn takedown_step(&mut self, i: usize) {
        let spread = self.spread.as_deref_mut().expect("spread");
        let takedown = &mut spread.takedowns[i];
        let from = takedown.origin;
        if let Some((to, step)) = takedown.steps.pop_front() {
            spread.send(to, 0, Message::Ask { from, ask: Ask::Leave(step) });
            return;
        }
        let takedown = spread.takedowns.swap_remove(i);
        for to in takedown.shards {
            spread.send(to, 0, Message::Ask { from, ask: Ask::Disconnect });
        }
    }
}

#[cfg(test)]
impl Shard {
    /// Commands this core's sessions sent behind others to the same shard.
    pub(super) fn pipelined(&self) -> u64 {
        self.spread.as_deref().map_or(0, |s| s.pipelined)
    }

    /// Sessions run from the runnable queue.
    pub(super) fn queued_runs(&self) -> u64 {
        self.queued_runs
    }

    /// A session's reservations as its core knows them, for failing tests.
    pub(super) fn far_holdings(&self, conn: ConnId) -> String {
        match self.sessions.get(conn.0).and_then(|s| s.far.as_deref()) {
            Some(far) => format!("{:?} at {}", far.holdings.in_order().collect::<Vec<_>>(), self.clock),
            None => "gone".into(),
        }
    }
}
