//! What the loops of a server of several cores share: the mailbox rings
//! between their shards, the connections the accepting core hands to the
//! others, and the signals only one of them reads.
//!
//! # One acceptor
//! Core 0 owns the listener and accepts for every core; each connection
//! goes to the core with the fewest open ([`Cores::pick`]), by a short
//! hand-over list under a lock and a wake-up. The lists are touched once
//! per connection, never per command: the data path (commands, replies,
//! mailbox messages) takes no lock. One listener also keeps `unix:`
//! sockets, socket activation and `-p 0` exactly as with one core, and it
//! balances exactly, where `SO_REUSEPORT`'s hash left the busiest of four
//! listeners with 1.28 times its share of 50 connections
//! (`scripts/conn-spread`, perf/RESULTS.md). The connection limit is the
//! server's: the acceptor counts every core's connections
//! ([`Cores::total_open`]), and a core that closes one at the limit wakes
//! it.
//!
//! # Signals
//! Core 0 reads the signalfd. SIGTERM and SIGINT raise the stop count and
//! SIGUSR1 the drain flag, and every other core is woken to see them
//! ([`Cores::seen`]).
//!
//! # Stopping together
//! A core that stops closes its sessions, and taking a session down is a
//! conversation with the shards it used, which must still answer. So a
//! core that has no connection left and owes no peer anything
//! ([`crate::shard::Shard::peers_quiet`]) says so once
//! ([`Cores::quiet`]), and goes on answering messages until every core has
//! said it; only then does it finish its log and exit. Once every core is
//! quiet no request is in flight anywhere: a core says it only when its own
//! requests have all been answered.
//!
//! # What it must never do
//! Take a lock per command; lose a handed-over connection (a core that
//! stops closes the ones still in its list); let a core exit while another
//! may still ask it something.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::engine::Nanos;
use crate::mailbox::{EventFd, Inbox, Mailbox, Mailboxes, Outbox, Wake};
use crate::shard::Shard;
use crate::shard::route::ShardId;
use crate::shard::spread::Message;

/// A message between shards, with the sender's clock when it left (the
/// receiver runs it at no earlier instant; see `Shard::take_outbox`).
pub struct Envelope {
    pub at: Nanos,
    pub msg: Message,
}

/// What every core's loop shares.
pub struct Cores {
    wakers: Vec<Arc<EventFd>>,
    /// Connections handed to each core and not taken yet.
    handed: Vec<Mutex<Vec<RawFd>>>,
    /// Each core's open connections, handed ones included.
    open: Vec<AtomicUsize>,
    /// SIGTERM and SIGINT received so far.
    stops: AtomicU32,
    /// SIGUSR1 received.
    drain: AtomicBool,
    /// Cores that have said they are quiet during a stop.
    quiet: AtomicUsize,
    connections_max: usize,
}

/// One core's part: its mailbox and the shared state.
pub struct CoreLink {
    pub core: usize,
    pub outbox: Outbox<Envelope>,
    pub inbox: Inbox<Envelope>,
    pub waker: Arc<EventFd>,
    pub cores: Arc<Cores>,
    /// The stop count and drain flag as this core last acted on them.
    stops_seen: u32,
    drain_seen: bool,
    /// Whether this core has said it is quiet.
    said_quiet: bool,
}

/// What a wake-up brought that the loop must act on.
#[derive(Default)]
pub struct Seen {
    /// Stop signals not acted on yet.
    pub stops: u32,
    pub drain: bool,
}

impl Cores {
    /// The shared state and mailboxes of `n` cores, one link per core in
    /// core order.
    pub fn links(n: usize, connections_max: usize) -> std::io::Result<Vec<CoreLink>> {
        let mailboxes = Mailboxes::<Envelope>::new(n)?.into_cores();
        let wakers = mailboxes.iter().map(|m| Arc::clone(&m.waker)).collect();
        let cores = Arc::new(Cores {
            wakers,
            handed: (0..n).map(|_| Mutex::new(Vec::new())).collect(),
            open: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            stops: AtomicU32::new(0),
            drain: AtomicBool::new(false),
            quiet: AtomicUsize::new(0),
            connections_max,
        });
        Ok(mailboxes
            .into_iter()
            .map(|Mailbox { core, outbox, inbox, waker }| CoreLink {
                core,
                outbox,
                inbox,
                waker,
                cores: Arc::clone(&cores),
                stops_seen: 0,
                drain_seen: false,
                said_quiet: false,
            })
            .collect())
    }

    fn n(&self) -> usize {
        self.wakers.len()
    }

    fn wake_others(&self, me: usize) {
        for (core, waker) in self.wakers.iter().enumerate() {
            if core != me {
                waker.wake();
            }
        }
    }

    /// Connections open on every core together.
    pub fn total_open(&self) -> usize {
        self.open.iter().map(|o| o.load(Ordering::Relaxed)).sum()
    }

    /// The core with the fewest open connections (the lowest first on a
    /// tie, which spreads a burst round the cores in order).
    pub fn pick(&self) -> usize {
        (0..self.n()).min_by_key(|&c| self.open[c].load(Ordering::Relaxed)).unwrap_or(0)
    }
}

impl CoreLink {
    /// How many cores there are.
    pub fn cores_n(&self) -> usize {
        self.cores.n()
    }

    pub fn wake_fd(&self) -> RawFd {
        self.waker.as_raw_fd()
    }

    /// Core 0 accepts for all.
    pub fn is_acceptor(&self) -> bool {
        self.core == 0
    }

    /// Hands an accepted connection to `core` (not this one): it is counted
    /// there at once, so the next pick sees it.
    pub fn hand_over(&self, core: usize, fd: RawFd) {
        debug_assert_ne!(core, self.core, "handing a connection to oneself");
        self.cores.open[core].fetch_add(1, Ordering::Relaxed);
        self.cores.handed[core].lock().unwrap_or_else(|p| p.into_inner()).push(fd);
        self.cores.wakers[core].wake();
    }

    /// Connections handed to this core since the last call (already
    /// counted as open here).
    pub fn take_handed(&self, into: &mut Vec<RawFd>) {
        let mut handed = self.cores.handed[self.core].lock().unwrap_or_else(|p| p.into_inner());
        into.append(&mut handed);
    }

    /// A connection of this core's own accepting opened.
    pub fn opened(&self) {
        self.cores.open[self.core].fetch_add(1, Ordering::Relaxed);
    }

    /// A connection of this core closed (or a handed one was refused); at
    /// the server's limit, the acceptor is woken to accept again.
    pub fn closed(&self) {
        self.cores.open[self.core].fetch_sub(1, Ordering::Relaxed);
        if self.core != 0 && self.cores.total_open() + 1 >= self.cores.connections_max {
            self.cores.wakers[0].wake();
        }
    }

    /// A signal read by this core (the one with the signalfd): every other
    /// core is told.
    pub fn signal(&mut self, signal: i32) {
        if signal == libc::SIGUSR1 {
            self.cores.drain.store(true, Ordering::Release);
        } else {
            self.cores.stops.fetch_add(1, Ordering::AcqRel);
        }
        self.cores.wake_others(self.core);
    }

    /// What the shared flags say that this core has not acted on yet.
    pub fn seen(&mut self) -> Seen {
        let stops = self.cores.stops.load(Ordering::Acquire);
        let drain = self.cores.drain.load(Ordering::Acquire);
        let seen = Seen { stops: stops - self.stops_seen, drain: drain && !self.drain_seen };
        self.stops_seen = stops;
        self.drain_seen = drain;
        seen
    }

    /// During a stop: this core has no connection and owes no peer
    /// anything. Said once; the last core to say it wakes the others.
    pub fn say_quiet(&mut self) {
        if self.said_quiet {
            return;
        }
        self.said_quiet = true;
        if self.cores.quiet.fetch_add(1, Ordering::AcqRel) + 1 == self.cores.n() {
            self.cores.wake_others(self.core);
        }
    }

    /// Whether every core has said it is quiet.
    pub fn all_quiet(&self) -> bool {
        self.cores.quiet.load(Ordering::Acquire) == self.cores.n()
    }
}

/// The mailbox's part of a loop turn: messages from other cores delivered
/// to the shard; the shard's messages to itself delivered until it sends
/// itself no more (a session's request to its own core's shard, answered
/// within the turn); its messages to other cores pushed into their rings,
/// as many as each has room for, then published, with one wake-up per
/// receiver that announced sleep. Messages that find a ring full stay in
/// the shard's outbox, in order, and the shard's sessions run no new
/// command until they have left (`Shard::set_mail_blocked`): what a core
/// holds beyond its rings is what the commands of the turn that filled
/// them sent, never a queue that grows with the load.
pub fn exchange<W: Wake>(
    outbox: &mut Outbox<Envelope, W>,
    inbox: &mut Inbox<Envelope>,
    shard: &mut Shard,
    mail: &mut Vec<Message>,
    now: Nanos,
) {
    let me = outbox.core();
    shard.begin_deliveries(now);
    inbox.drain(|from, Envelope { at, msg }| shard.deliver_in_batch(ShardId(from as u32), msg, at.max(now)));
    shard.end_deliveries();
    loop {
        let at = shard.take_outbox(ShardId(me as u32), mail, usize::MAX);
        if mail.is_empty() {
            break;
        }
        for msg in mail.drain(..) {
            shard.deliver_in_batch(ShardId(me as u32), msg, at.max(now));
        }
        shard.end_deliveries();
    }
    let mut blocked = false;
    for to in (0..outbox.cores()).filter(|&c| c != me) {
        let free = outbox.free(to);
        shard.drain_outbox(ShardId(to as u32), free, |at, msg| {
            if outbox.push(to, Envelope { at, msg }).is_err() {
                unreachable!("pushed no more than the ring had room for");
            }
        });
        blocked |= shard.has_outbox_for(ShardId(to as u32)) && outbox.free(to) == 0;
    }
    shard.set_mail_blocked(blocked);
    outbox.publish();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::directory::Directory;
    use crate::engine::{EngineConfig, IdSource};
    use crate::protocol::yaml::CpuTime;
    use crate::shard::ServerInfo;

    struct NoWake;
    impl Wake for NoWake {
        fn wake(&self) {}
    }

    fn info() -> ServerInfo {
        ServerInfo {
            max_job_size: 65_535,
            pid: 1,
            instance_id: String::new(),
            hostname: String::new(),
            os: String::new(),
            platform: String::new(),
            binlog_max_size: 0,
            extra: vec![],
            cpu_times: || (CpuTime::default(), CpuTime::default()),
            verbosity: 0,
            started_at: 0,
            strict: false,
        }
    }

    /// Clients pipelining puts to another core's tube, more of them than
    /// the ring between the cores has slots (a client's commands of a turn
    /// leave as one message): the ring fills, the sessions pause (their
    /// input carried, not run), what waits beyond the ring stays within one
    /// turn's messages, and every put is answered, in order.
    #[test]
    fn a_full_ring_pauses_the_sender_and_loses_nothing() {
        const SLOTS: usize = 8;
        const CLIENTS: usize = 40;
        const PUTS: usize = 30;
        let (ids, directory) = (IdSource::default(), Directory::default());
        let mut shards: Vec<Shard> = (0..2)
            .map(|i| Shard::new_spread(EngineConfig { shard: i, shards: 2 }, ids.clone(), directory.clone(), info()))
            .collect();
        let mut links = Mailboxes::<Envelope, NoWake>::with_wakers(2, SLOTS, |_| Ok(NoWake)).unwrap().into_cores();
        let far = (0..).map(|i| format!("t{i}")).find(|t| crate::shard::route::shard_of_tube(t, 2).0 == 1).unwrap();
        let mut input = format!("use {far}\r\n");
        for _ in 0..PUTS {
            input.push_str("put 0 0 10 1\r\nx\r\n");
        }
        let conns: Vec<_> = (0..CLIENTS).map(|i| shards[0].open(7 + i as i32).unwrap()).collect();
        for &conn in &conns {
            shards[0].input(conn, input.as_bytes(), 1);
        }
        let mut out = vec![Vec::new(); CLIENTS];
        let done = |out: &[u8]| out.iter().filter(|&&b| b == b'\n').count() == PUTS + 1;
        let (mut mail, mut blocked_turns, mut most_waiting) = (Vec::new(), 0, 0);
        for turn in 0..10_000u64 {
            for (core, (shard, link)) in shards.iter_mut().zip(links.iter_mut()).enumerate() {
                shard.begin_turn();
                shard.run_carried(turn + 2);
                exchange(&mut link.outbox, &mut link.inbox, shard, &mut mail, turn + 2);
                if core == 0 {
                    blocked_turns += usize::from(shard.mail_blocked());
                    most_waiting = most_waiting.max(shard.outbox_len(ShardId(1)));
                }
            }
            for (&conn, out) in conns.iter().zip(out.iter_mut()) {
                let mut segments = Vec::new();
                shards[0].start_send(conn, &mut segments);
                shards[0].sent(conn, turn + 2);
                out.extend(segments.iter().flat_map(|s| s.bytes().to_vec()));
            }
            if out.iter().all(|o| done(o)) {
                break;
            }
        }
        let mut ids = Vec::new();
        for out in &out {
            let text = String::from_utf8_lossy(out);
            let mut lines = text.lines();
            assert_eq!(lines.next(), Some(format!("USING {far}").as_str()));
            let mine: Vec<u64> = lines.map(|l| l.strip_prefix("INSERTED ").expect(l).parse().unwrap()).collect();
            assert_eq!(mine.len(), PUTS, "every put answered: {text}");
            assert!(mine.windows(2).all(|w| w[0] < w[1]), "in order: {mine:?}");
            ids.extend(mine);
        }
        ids.sort_unstable();
        assert_eq!(ids, (1..=(CLIENTS * PUTS) as u64).collect::<Vec<_>>());
        assert!(blocked_turns > 0, "the ring never filled: the test shows nothing");
        // Each session sends at most one message a turn to the other core
        // (its `use`, then its puts together), so a full ring leaves behind
        // it at most one per session.
        assert!(most_waiting <= CLIENTS, "{most_waiting} messages waited beyond the ring, more than one turn's");
    }
}
