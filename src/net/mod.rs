//! The network shell around a shard: one core's event loop.
//!
//! The loop is a plain `loop` over an [`Io`] back end, io_uring
//! ([`uring`]) or epoll ([`epoll`]), in the manner of Redis' `ae.c`: wait
//! for events, hand received bytes and the time to the shard, then, once
//! per turn, start a send for every connection that has replies and no
//! send in flight, close the connections that are done, and go back to
//! waiting with a timeout set by the shard's next deadline (or none at all
//! while the shard carries input over from one turn to the next, see
//! `shard` on turns). There is no async runtime and no task per
//! connection; all state is owned by the loop, so no operation can be
//! dropped while the kernel still uses its memory: a connection is closed
//! only when its receive has ended and its send has completed, and the
//! loop returns only when the back end has nothing in flight.
//!
//! It also owns accepting: at most `Settings::connections_max` connections
//! are served, and accepting pauses (the listener stays open) at the limit
//! and for a moment after an accept error. SIGTERM and SIGINT start an
//! orderly stop (`Server::begin_stop`, `StopWait`), after which `serve`
//! returns and the process exits 0.
//!
//! Both back ends run this same code; only the mechanics of accept,
//! receive, send and wait differ (see [`io`]).

pub mod cores;
pub mod epoll;
pub mod filethread;
pub mod io;
pub mod listen;
pub mod uring;
pub mod wal;

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::engine::Nanos;
use crate::memory;
use crate::metrics::Publisher;
use crate::protocol::output::Segment;
use crate::shard::spread::Message;
use crate::shard::{BodyLoan, ConnId, ReadGate, Shard};
use cores::CoreLink;
use io::{Event, Io, RecvEnd};
use listen::{BoundListener, LISTEN_BACKLOG};
use wal::LogDriver;

/// How long to pause accepting after an accept error such as EMFILE, so a
/// full descriptor table does not turn the loop into a spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);
/// While accepting keeps failing (out of descriptors), or keeps pausing at
/// the connection limit, one log line per this long; failures in between
/// are counted.
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Most iovecs handed to one writev (the kernel's IOV_MAX).
const IOVECS_PER_SEND_MAX: usize = 1024;

/// Entries a connection can add to one turn's lists of deferred events
/// and of connections to look at: its receive ended, its send completed,
/// its receive into a put body completed, and its session changed. Room
/// for this many per connection is made, fallibly, when it is accepted,
/// so that a flood of connections is refused there rather than making
/// those lists grow when nothing can be refused.
const EVENTS_PER_CONN_MAX: usize = 4;

/// Room kept in the turn's list of deferred events for what no connection
/// accounts for: the connections one wait can accept (the kernel queues
/// at most the listen backlog), a signal and a file operation.
const DEFERRED_SPARE: usize = LISTEN_BACKLOG as usize + 2;

/// A connection keeps the vectors of its last send for the next one only
/// if they hold at most this many segments: a request-and-reply client
/// needs one to three, and a burst of large bodies by reference leaves
/// thousands (32 bytes of segment and 16 of iovec each), which would stay
/// with every connection that ever had one.
const SEND_KEPT_SEGMENTS_MAX: usize = 64;

/// A connection with input carried over to the next turn (it pipelines
/// more than a turn's budget) is sent its replies once this many bytes of
/// them are waiting, or when its carried input has run, rather than every
/// turn: a send costs the kernel about as much as running 20 commands, so
/// sending a flooder its 64 replies each turn took 40% off the throughput
/// of four connections keeping 1,000 puts in flight. A client that waits
/// for each reply is never carried and never waits for this.
const CARRIED_SEND_BYTES_MIN: usize = 16 * 1024;

/// How long a core whose messages wait for room in a full ring sleeps at
/// most before it tries again: the receiver does not wake a producer when
/// it frees room (replies coming back usually do), and a core with only
/// answers waiting would otherwise sleep on them.
const MAIL_RETRY: Duration = Duration::from_micros(100);

/// How long an orderly stop waits for clients to take the replies they are
/// owed before it cancels the sends still in flight. A client that reads
/// takes megabytes in milliseconds, so this only bounds what a client that
/// never reads can hold up; it is well inside the 10 s that Docker and
/// most supervisors wait before they send SIGKILL.
pub const STOP_GRACE_MS: u64 = 2_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Uring,
    Epoll,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Uring => "io_uring",
            Backend::Epoll => "epoll",
        }
    }
}

/// How the loop is run, from the command line.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// 0 quiet, 1 connections, 2 also commands (beanstalkd's `-V`).
    pub verbosity: u8,
    /// The most connections served at once (`--connections-max`); beyond
    /// it, accepting pauses and the kernel queues new connections.
    pub connections_max: usize,
}

/// What a core is started with besides its shard and back end.
pub struct Start {
    /// The listener, on the core that accepts (every core but core 0 of
    /// several has none; see [`cores`]).
    pub listener: Option<BoundListener>,
    pub signals: OwnedFd,
    pub settings: Settings,
    /// The clock the shard's instants were read from so far (recovery).
    pub clock: Clock,
    /// The log directory, with `-b` (the shard's engine has the log).
    pub log_dir: Option<OwnedFd>,
    /// Where the loop publishes its snapshots, with `--metrics`.
    pub metrics: Option<Publisher>,
    /// The mailbox and shared state of a core among several.
    pub link: Option<CoreLink>,
}

/// A core's I/O back end, chosen before the shard is built.
pub enum Driver {
    Uring(Box<uring::Uring>),
    Epoll(Box<epoll::Epoll>),
}

impl Driver {
    /// io_uring unless `epoll` is asked for; when io_uring cannot be had
    /// and was not insisted on, epoll, with the reason.
    pub fn new(prefer_uring: bool, insist_uring: bool) -> std::io::Result<(Driver, Option<String>)> {
        if prefer_uring {
            match uring::Uring::new() {
                Ok(ring) => return Ok((Driver::Uring(Box::new(ring)), None)),
                Err(e) if insist_uring => return Err(e),
                Err(e) => {
                    let why = format!("io_uring unavailable ({e}); using epoll");
                    return Ok((Driver::Epoll(Box::new(epoll::Epoll::new()?)), Some(why)));
                }
            }
        }
        Ok((Driver::Epoll(Box::new(epoll::Epoll::new()?)), None))
    }

    pub fn backend(&self) -> Backend {
        match self {
            Driver::Uring(_) => Backend::Uring,
            Driver::Epoll(_) => Backend::Epoll,
        }
    }

    /// Serves until SIGTERM or SIGINT, then stops in order (see
    /// `Server::begin_stop`) and returns. An error is a fault of the back
    /// end itself, after which the server cannot go on.
    pub fn serve(self, shard: Shard, start: Start) -> std::io::Result<()> {
        match self {
            Driver::Uring(io) => Server::new(*io, shard, start).run(),
            Driver::Epoll(io) => Server::new(*io, shard, start).run(),
        }
    }
}

/// The shard's clock: monotonic, and anchored to the wall clock when it
/// starts, so that its instants are nanoseconds since the Unix epoch (as
/// the write-ahead log stores them) without ever going backwards while the
/// process runs, whatever is done to the wall clock meanwhile.
#[derive(Clone, Copy)]
pub struct Clock {
    origin: Instant,
    /// The wall clock at `origin`.
    wall_at_origin: Nanos,
}

impl Clock {
    pub fn new() -> Clock {
        let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Clock { origin: Instant::now(), wall_at_origin: wall.as_nanos() as Nanos }
    }

    pub fn now(&self) -> Nanos {
        self.wall_at_origin + self.origin.elapsed().as_nanos() as Nanos
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::new()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Recv {
    Active,
    /// Asked to stop; `RecvEnded` will follow.
    Stopping,
    /// Receiving a large put body straight into the job's memory;
    /// `ReceivedInto` will follow.
    Direct,
    /// The same, asked to stop early (the connection is closing).
    DirectStopping,
    /// Ended (end of stream, error, or stopped by us).
    Ended,
}

/// Whether the listener is being accepted on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Accepting {
    On,
    /// Asked to stop; `AcceptEnded` will follow.
    Ending,
    Off,
}

/// An orderly stop under way (after SIGTERM or SIGINT).
struct Stop {
    /// When sends still in flight are cancelled, for clients that do not
    /// read what they are owed. A second signal brings it forward to now.
    grace_ends_at: Instant,
    /// They have been.
    sends_cancelled: bool,
}

/// What an orderly stop waits for before the process may exit, in the
/// order they finish. The first that is not done yet is what the loop is
/// waiting for; when none is left, `run` returns and the process exits 0.
/// A later kind of work that must end before exit (the write-ahead log's
/// pending writes and syncs) is one more entry here, checked in
/// [`Server::stop_waits_for`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StopWait {
    /// The accept must be cancelled and reaped before the listener is
    /// closed, or the ring, torn down after exit, would keep the port bound.
    Listener,
    /// Every connection must have its replies written (within the grace),
    /// its receive and send reaped, and its socket closed.
    Connections,
    /// The write-ahead log: everything recorded written and synced (in
    /// every sync mode), so that a clean stop loses nothing.
    Log,
    /// The read on the signalfd, kept until the connections are gone so
    /// that a second signal can cut the grace short.
    SignalRead,
    /// A core among several: every core must be done with its connections
    /// and owe the others nothing before any may finish (see [`cores`]).
    Peers,
    /// Anything else the back end still has in flight.
    Operations,
}

/// A send in flight: the segments it writes, kept alive until it completes,
/// and the iovecs pointing into them.
#[derive(Default)]
struct Sending {
    segments: Vec<Segment>,
    iovecs: Vec<libc::iovec>,
    /// The first iovec not completely written.
    first: usize,
}

impl Sending {
    /// Accounts for `n` bytes written; true once everything is.
    fn advance(&mut self, mut n: usize) -> bool {
        while n > 0 {
            let iov = &mut self.iovecs[self.first];
            if n >= iov.iov_len {
                n -= iov.iov_len;
                self.first += 1;
            } else {
                // Safety: advancing within the same live allocation.
                iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(n) }.cast();
                iov.iov_len -= n;
                n = 0;
            }
        }
        self.first == self.iovecs.len()
    }
}

struct Conn {
    fd: RawFd,
    recv: Recv,
    /// Whether the peer ended the stream (no more receiving, ever).
    peer_done: bool,
    sending: Option<Sending>,
    /// A spare for the next send, so sends do not allocate.
    spare: Sending,
    /// The put body lent by the session while `Recv::Direct`.
    body: Option<BodyLoan>,
}

/// One core: its shard, its connections and its back end.
struct Server<I: Io> {
    io: I,
    shard: Shard,
    clock: Clock,
    /// Closed (`None`) during a stop, once accepting has ended.
    listener: Option<OwnedFd>,
    accepting: Accepting,
    signals: OwnedFd,
    /// A read of the signalfd is going on.
    signals_watched: bool,
    settings: Settings,
    conns: Vec<Option<Conn>>,
    /// Connections in `conns`.
    open: usize,
    /// Connections the kernel handed over after the limit was reached,
    /// before accepting paused: not served (nothing is read from them)
    /// until others leave. At most what one multishot accept takes from
    /// the listen backlog.
    held: VecDeque<RawFd>,
    /// Connections to look at after this turn's events.
    touched: Vec<ConnId>,
    /// When to start accepting again after an accept error.
    accept_again_at: Option<Instant>,
    /// When an accept failure was last logged, and failures since.
    accept_error_logged: Option<Instant>,
    accept_errors_unlogged: u64,
    /// When reaching the connection limit was last logged.
    limit_logged: Option<Instant>,
    stop: Option<Stop>,
    /// Events of the current turn other than data, kept between turns so
    /// the loop does not allocate.
    deferred: VecDeque<Deferred>,
    /// The write-ahead log's writes and syncs, with `-b`.
    log: Option<LogDriver>,
    /// Snapshots for the metrics thread, with `--metrics`.
    metrics: Option<Publisher>,
    /// The mailbox and shared state of a core among several.
    link: Option<CoreLink>,
    /// A read of the wake-up eventfd is going on.
    wake_watched: bool,
    /// Messages taken from the shard's outbox, kept between turns.
    mail: Vec<Message>,
    /// Connections handed over by the accepting core, kept between turns.
    handed: Vec<RawFd>,
}

impl<I: Io> Server<I> {
    fn new(io: I, shard: Shard, start: Start) -> Server<I> {
        let Start { listener, signals, settings, clock, log_dir, metrics, link } = start;
        let log = log_dir.map(|dir| LogDriver::new(&shard, dir, clock.now()));
        let listener: Option<OwnedFd> = listener.map(|listener| match listener {
            BoundListener::Tcp(l) => l.into(),
            BoundListener::Unix(l) => l.into(),
        });
        Server {
            io,
            shard,
            clock,
            listener,
            accepting: Accepting::Off,
            signals,
            signals_watched: false,
            settings,
            conns: Vec::new(),
            open: 0,
            held: VecDeque::with_capacity(LISTEN_BACKLOG as usize),
            touched: Vec::new(),
            accept_again_at: None,
            accept_error_logged: None,
            accept_errors_unlogged: 0,
            limit_logged: None,
            stop: None,
            deferred: VecDeque::with_capacity(DEFERRED_SPARE),
            log,
            metrics,
            link,
            wake_watched: false,
            mail: Vec::new(),
            handed: Vec::new(),
        }
    }

    /// The loop. Each turn: wait for events (not at all while some
    /// connection has input carried over from an earlier turn), hand data
    /// to the shard as it comes, act on the other events, let timers fire,
    /// bring every connection whose session changed up to date (send,
    /// pause or resume receiving, close); then, if input was carried over,
    /// submit those sends, run the carried input and bring connections up
    /// to date again; then start or pause accepting; last, with
    /// `--metrics`, count the turn's busy time and publish a snapshot if
    /// one is due.
    fn run(mut self) -> std::io::Result<()> {
        if let Some(listener) = &self.listener {
            set_nonblocking(listener.as_raw_fd())?;
        }
        // Of several cores, the accepting one reads the signals for all.
        if self.link.as_ref().is_none_or(CoreLink::is_acceptor) {
            self.io.watch_signals(self.signals.as_raw_fd());
            self.signals_watched = true;
        }
        if let Some(link) = &self.link {
            self.io.watch_wake(link.wake_fd());
            self.wake_watched = true;
        }
        self.steer_accept();
        loop {
            if self.stop.is_some() && self.stop_waits_for().is_none() {
                return Ok(());
            }
            self.shard.begin_turn();
            let mut timeout = self.timeout();
            // Among several cores, announce the sleep to the senders, and
            // do not sleep if a message came meanwhile.
            let announced = match self.link.as_mut() {
                Some(link) if timeout != Some(Duration::ZERO) => {
                    if link.inbox.prepare_sleep() {
                        true
                    } else {
                        timeout = Some(Duration::ZERO);
                        false
                    }
                }
                _ => false,
            };
            let timed = self.metrics.is_some();
            let mut events = Events {
                shard: &mut self.shard,
                clock: &self.clock,
                now: None,
                deferred: &mut self.deferred,
                first_at: None,
                timed,
            };
            self.io.wait(timeout, &mut |event| events.handle(event))?;
            if announced && let Some(link) = self.link.as_mut() {
                link.inbox.awake();
            }
            // The turn's work starts with its first event (the back end
            // hands events over as soon as its wait returns), or when the
            // wait timed out.
            let busy_from = timed.then(|| events.first_at.unwrap_or_else(Instant::now));
            // Taken one at a time, not drained, so that a connection
            // accepted meanwhile can make room in the list; nothing acted on
            // here adds to it (only a wait does).
            while let Some(event) = self.deferred.pop_front() {
                match event {
                    Deferred::Accepted(fd) => self.accepted(fd),
                    Deferred::AcceptEnded(error) => self.accept_ended(error),
                    Deferred::RecvEnded(conn, end) => self.recv_ended(conn, end),
                    Deferred::Sent(conn, outcome) => self.sent(conn, outcome),
                    Deferred::ReceivedInto(conn, outcome) => self.received_into(conn, outcome),
                    Deferred::Signal(signal) => self.signal(signal),
                    Deferred::Woken => self.woken(),
                    Deferred::FileDone(lane, outcome) => {
                        let now = self.clock.now();
                        if let Some(log) = self.log.as_mut() {
                            log.completed(&mut self.shard, &mut self.io, lane, outcome, now);
                        }
                    }
                }
            }
            if self.accept_again_at.is_some_and(|at| Instant::now() >= at) {
                self.accept_again_at = None;
            }
            let now = self.clock.now();
            self.shard.tick(now);
            self.exchange(now);
            self.service_dirty();
            if self.shard.has_carried() && !self.shard.mail_blocked() {
                // The replies of this turn's fresh commands leave before
                // the carried input runs, so a client that sends one
                // command at a time waits for at most one round of it.
                self.io.submit();
                self.shard.run_carried(now);
                self.exchange(now);
                self.service_dirty();
            }
            // The turn's records go out as one batch (group commit).
            if let Some(log) = self.log.as_mut() {
                log.after_turn(&mut self.shard, &mut self.io, now);
            }
            self.steer_accept();
            // Last, so that it sees the connections closed in this turn.
            if self.stop.is_some() {
                self.stop_step();
            }
            if let (Some(metrics), Some(busy_from)) = (self.metrics.as_mut(), busy_from) {
                let wal = self.log.as_ref().map(LogDriver::latencies);
                metrics.turn_end(busy_from, &self.shard, self.open, wal, now);
            }
        }
    }

    /// Brings every connection whose session changed up to date.
    fn service_dirty(&mut self) {
        self.shard.take_dirty(&mut self.touched);
        // By index, not taken, so that a connection opened meanwhile (one
        // held at the limit takes the place of one closed) can make room
        // in the list; servicing adds nothing to it.
        let mut i = 0;
        while let Some(&conn) = self.touched.get(i) {
            self.service(conn);
            i += 1;
        }
        self.touched.clear();
    }

    /// SIGTERM or SIGINT: an orderly stop. Accepting stops and the
    /// listener closes as soon as the accept has been reaped (see
    /// `steer_accept`); connections accepted but not served yet are closed;
    /// every session stops (see `Shard::stop`), so no further command runs
    /// and each connection stops receiving, writes the replies of the
    /// commands already run (on any core), and closes. Sends still in
    /// flight when the grace ends are cancelled (`stop_step`). The loop
    /// ends when nothing listed in [`StopWait`] is left. A second signal
    /// ends the grace at once.
    fn begin_stop(&mut self) {
        if let Some(stop) = &mut self.stop {
            stop.grace_ends_at = Instant::now();
            return;
        }
        self.stop =
            Some(Stop { grace_ends_at: Instant::now() + Duration::from_millis(STOP_GRACE_MS), sends_cancelled: false });
        for fd in self.held.drain(..) {
            // Safety: held descriptors are ours and have nothing in flight.
            unsafe { libc::close(fd) };
        }
        let now = self.clock.now();
        for i in 0..self.conns.len() {
            if self.conns[i].is_some() {
                self.shard.stop(ConnId(i as u32), now);
            }
        }
        if let Some(log) = self.log.as_mut() {
            log.stopping(&mut self.shard);
        }
    }

    /// At the end of every turn during a stop: cancels the sends still in
    /// flight when the grace has ended, and stops reading signals once
    /// every connection of every core is gone.
    fn stop_step(&mut self) {
        let stop = self.stop.as_mut().expect("stopping");
        if !stop.sends_cancelled && Instant::now() >= stop.grace_ends_at {
            stop.sends_cancelled = true;
            for (i, c) in self.conns.iter().enumerate() {
                if let Some(c) = c
                    && c.sending.is_some()
                {
                    self.io.cancel_send(i as u32);
                }
            }
        }
        if let Some(link) = self.link.as_mut() {
            if self.open == 0 && self.held.is_empty() && self.shard.peers_quiet() {
                link.say_quiet();
            }
            // Once every core is quiet, nothing more is sent to this one.
            if link.all_quiet() && self.wake_watched {
                self.io.stop_wake();
                self.wake_watched = false;
            }
        }
        // The core that reads signals reads them until no core has a
        // connection left: a second signal must reach the core whose
        // connection still waits out the grace.
        let others_quiet = self.link.as_ref().is_none_or(|link| link.all_quiet());
        if self.open == 0 && others_quiet && self.signals_watched {
            self.io.stop_signals();
            self.signals_watched = false;
        }
    }

    /// The first thing the stop still waits for, if any.
    fn stop_waits_for(&self) -> Option<StopWait> {
        if self.listener.is_some() {
            Some(StopWait::Listener)
        } else if self.open > 0 {
            Some(StopWait::Connections)
        } else if self.link.as_ref().is_some_and(|link| !link.all_quiet()) {
            Some(StopWait::Peers)
        } else if self.log.as_ref().is_some_and(|log| !log.is_done(&self.shard)) {
            Some(StopWait::Log)
        } else if self.signals_watched || self.wake_watched {
            Some(StopWait::SignalRead)
        } else if !self.io.idle() {
            Some(StopWait::Operations)
        } else {
            None
        }
    }

    fn sends_cancelled(&self) -> bool {
        self.stop.as_ref().is_some_and(|s| s.sends_cancelled)
    }

    /// Starts or stops accepting as the state asks: accept unless stopping,
    /// paused after an error, or at the connection limit. During a stop,
    /// closes the listener once accepting has ended.
    fn steer_accept(&mut self) {
        let open = self.link.as_ref().map_or(self.open, |link| link.cores.total_open());
        let want = self.stop.is_none()
            && self.accept_again_at.is_none()
            && open + self.held.len() < self.settings.connections_max;
        match self.accepting {
            Accepting::Off if want => {
                if let Some(listener) = &self.listener {
                    self.io.accept(listener.as_raw_fd());
                    self.accepting = Accepting::On;
                }
            }
            Accepting::On if !want => {
                self.io.stop_accept();
                self.accepting = Accepting::Ending;
                if self.stop.is_none() {
                    self.limit_reached();
                }
            }
            _ => {}
        }
        if self.accepting == Accepting::Off && self.stop.is_some() {
            // Nothing is in flight on it any more: closing it frees the
            // port now.
            self.listener = None;
        }
    }

    /// Logs that accepting paused at the connection limit, at most once
    /// per ACCEPT_LOG_INTERVAL.
    fn limit_reached(&mut self) {
        let now = Instant::now();
        if self.limit_logged.is_none_or(|at| now - at >= ACCEPT_LOG_INTERVAL) {
            eprintln!(
                "runnerbean: {} connections, the most allowed (--connections-max); \
                 accepting again when one closes",
                self.settings.connections_max
            );
            self.limit_logged = Some(now);
        }
    }

    /// A connection from the kernel: served, held until there is room
    /// under the limit, or, during a stop, closed at once.
    fn accepted(&mut self, fd: RawFd) {
        if self.stop.is_some() {
            // Safety: a new descriptor with nothing in flight.
            unsafe { libc::close(fd) };
            return;
        }
        self.accept_recovered();
        if let Some(link) = &self.link {
            if link.cores.total_open() >= self.settings.connections_max {
                self.held.push_back(fd);
                return;
            }
            let core = link.cores.pick();
            if core != link.core {
                return link.hand_over(core, fd);
            }
            link.opened();
        } else if self.open >= self.settings.connections_max {
            self.held.push_back(fd);
            return;
        }
        self.open(fd);
    }

    /// Connections held at the limit, once other cores have closed some.
    fn dispatch_held(&mut self) {
        while let Some(link) = &self.link {
            if self.stop.is_some() || link.cores.total_open() >= self.settings.connections_max {
                return;
            }
            let Some(fd) = self.held.pop_front() else { return };
            self.accepted(fd);
        }
    }

    /// A signal read by this core: with several, every core is told, this
    /// one through the same flags as the others.
    fn signal(&mut self, signal: i32) {
        match self.link.as_mut() {
            Some(link) => {
                link.signal(signal);
                self.woken();
            }
            None if signal == libc::SIGUSR1 => self.shard.set_draining(),
            None => self.begin_stop(),
        }
    }

    /// Another core woke this one: signals to act on, connections handed
    /// over, and at the accepting core room under the connection limit.
    /// (Messages are taken every turn anyway; see [`Server::exchange`].)
    fn woken(&mut self) {
        let Some(link) = self.link.as_mut() else { return };
        let seen = link.seen();
        if seen.drain {
            self.shard.set_draining();
        }
        for _ in 0..seen.stops {
            self.begin_stop();
        }
        let mut handed = std::mem::take(&mut self.handed);
        if let Some(link) = &self.link {
            link.take_handed(&mut handed);
        }
        for fd in handed.drain(..) {
            if self.stop.is_some() {
                if let Some(link) = &self.link {
                    link.closed();
                }
                // Safety: a descriptor handed over, with nothing in flight.
                unsafe { libc::close(fd) };
            } else {
                self.open(fd);
            }
        }
        self.handed = handed;
        self.dispatch_held();
    }

    /// The mailbox's part of a turn (see [`cores::exchange`]).
    fn exchange(&mut self, now: Nanos) {
        if let Some(link) = self.link.as_mut() {
            cores::exchange(&mut link.outbox, &mut link.inbox, &mut self.shard, &mut self.mail, now);
        }
    }

    fn accept_ended(&mut self, error: Option<std::io::Error>) {
        self.accepting = Accepting::Off;
        if let Some(e) = error
            && self.stop.is_none()
        {
            self.accept_failed(&e);
        }
    }

    /// Logs an accept failure, at most once per ACCEPT_LOG_INTERVAL (the
    /// failures in between are counted), and pauses accepting.
    fn accept_failed(&mut self, e: &std::io::Error) {
        let now = Instant::now();
        if self.accept_error_logged.is_none_or(|at| now - at >= ACCEPT_LOG_INTERVAL) {
            eprintln!("runnerbean: accept(): {e}");
            self.accept_error_logged = Some(now);
        } else {
            self.accept_errors_unlogged += 1;
        }
        self.accept_again_at = Some(now + ACCEPT_ERROR_PAUSE);
    }

    /// An accept worked: report how many failures went unlogged.
    fn accept_recovered(&mut self) {
        if self.accept_error_logged.take().is_some() {
            match std::mem::take(&mut self.accept_errors_unlogged) {
                0 => {}
                n => eprintln!("runnerbean: accept() works again, after {n} more failures"),
            }
        }
    }

    /// How long the back end may wait: not at all while input is carried
    /// over, else until the shard's next deadline, the end of an accept
    /// pause or the end of a stop's grace.
    fn timeout(&self) -> Option<Duration> {
        if self.shard.has_carried() && !self.shard.mail_blocked() {
            return Some(Duration::ZERO);
        }
        // A held log batch waits for records about to come: look for them
        // without sleeping (see `wal::flush::HOLD_NS`).
        if self.log.as_ref().is_some_and(LogDriver::is_holding) {
            return Some(Duration::ZERO);
        }
        let now = self.clock.now();
        let instant = Instant::now();
        let shard = self.shard.next_deadline().map(|at| Duration::from_nanos(at.saturating_sub(now)));
        let accept = self.accept_again_at.map(|at| at.saturating_duration_since(instant));
        let grace = self
            .stop
            .as_ref()
            .filter(|s| !s.sends_cancelled)
            .map(|s| s.grace_ends_at.saturating_duration_since(instant));
        let log =
            self.log.as_ref().and_then(LogDriver::next_deadline).map(|at| Duration::from_nanos(at.saturating_sub(now)));
        let metrics =
            self.metrics.as_ref().and_then(Publisher::next_due).map(|at| at.saturating_duration_since(instant));
        // Messages waiting for room in a ring, or (at the connection
        // limit of several cores) a close on another core: look again soon.
        let mail = self.shard.has_outbox().then_some(MAIL_RETRY);
        [shard, accept, grace, log, metrics, mail].into_iter().flatten().min()
    }

    /// At `-V`, why a connection is being closed for an I/O error.
    fn log_error(&self, fd: RawFd, op: &str, why: &dyn std::fmt::Display) {
        if self.settings.verbosity > 0 {
            println!("error {fd} {op}: {why}");
        }
    }

    fn open(&mut self, fd: RawFd) {
        // Accepted sockets inherit TCP_NODELAY from the listener on Linux;
        // setting it again keeps that true everywhere (it fails harmlessly
        // on unix sockets).
        let one: libc::c_int = 1;
        // Safety: setsockopt with a valid option value.
        unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&raw const one).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        if self.settings.verbosity > 0 {
            println!("accept {fd}");
        }
        // Room in the loop's and the back end's tables, and in the turn's
        // lists for the connection's events, first, fallibly: a flood of
        // connections makes them large. Session keys are dense, so the new
        // one is at most one past the end of `conns`.
        let next = self.conns.len() as u32;
        let events = EVENTS_PER_CONN_MAX * (self.open + 1);
        let room = memory::try_or_spend(|| memory::try_reserve(&mut self.conns, 1))
            .and_then(|()| memory::try_or_spend(|| self.io.reserve_conn(next)))
            .and_then(|()| memory::try_or_spend(|| memory::try_reserve_total(&mut self.touched, events)))
            .and_then(|()| {
                let deferred = &mut self.deferred;
                let more = (DEFERRED_SPARE + events).saturating_sub(deferred.len());
                memory::try_or_spend(|| memory::attempt(|| deferred.try_reserve(more)))
            });
        let Some(conn) = room.ok().and_then(|()| self.shard.open(fd)) else {
            // Out of memory: the connection is closed at once, as
            // beanstalkd does when it cannot allocate one.
            if let Some(link) = &self.link {
                link.closed();
            }
            if self.settings.verbosity > 0 {
                println!("close {fd}");
            }
            // Safety: a descriptor just accepted, with nothing in flight.
            unsafe { libc::close(fd) };
            return;
        };
        let i = conn.0 as usize;
        if self.conns.len() <= i {
            // Within the room made above.
            self.conns.resize_with(i + 1, || None);
        }
        self.conns[i] = Some(Conn {
            fd,
            recv: Recv::Active,
            peer_done: false,
            sending: None,
            spare: Sending::default(),
            body: None,
        });
        self.open += 1;
        self.io.recv(conn.0, fd);
    }

    fn recv_ended(&mut self, conn: u32, end: RecvEnd) {
        let Some(c) = self.conns.get_mut(conn as usize).and_then(Option::as_mut) else { return };
        c.recv = Recv::Ended;
        let fd = c.fd;
        let now = self.clock.now();
        match end {
            RecvEnd::Eof => {
                c.peer_done = true;
                self.shard.eof(ConnId(conn), now);
            }
            RecvEnd::Error(e) => {
                c.peer_done = true;
                self.log_error(fd, "recv()", &e);
                self.shard.abort(ConnId(conn), now);
            }
            RecvEnd::Stopped | RecvEnd::Paused => {}
        }
        self.touched.push(ConnId(conn));
    }

    fn sent(&mut self, conn: u32, outcome: std::io::Result<usize>) {
        let cancelled = self.sends_cancelled();
        let Some(c) = self.conns.get_mut(conn as usize).and_then(Option::as_mut) else { return };
        let mut sending = c.sending.take().expect("a send completed that was not started");
        let fd = c.fd;
        let done = match &outcome {
            Ok(n) => sending.advance(*n),
            Err(_) => false,
        };
        match outcome {
            Ok(_) if done => {
                let output = self.shard.output(ConnId(conn));
                for segment in sending.segments.drain(..) {
                    if let Segment::Text(text) = segment {
                        output.recycle(text);
                    }
                }
                self.shard.sent(ConnId(conn), self.clock.now());
            }
            Ok(_) if !cancelled => {
                // Partly written: go on with the rest.
                let first = sending.first;
                let count = (sending.iovecs.len() - first).min(IOVECS_PER_SEND_MAX);
                let iov = sending.iovecs[first..].as_ptr();
                c.sending = Some(sending);
                // Safety: the iovecs and the segments they point into are
                // owned by `c.sending` until the next Sent event.
                unsafe { self.io.send(conn, fd, iov, count) };
                return;
            }
            failed => {
                match failed {
                    Err(e) if e.raw_os_error() != Some(libc::ECANCELED) => self.log_error(fd, "send()", &e),
                    _ => self.log_error(fd, "send()", &"replies still unsent when the stop's grace period ended"),
                }
                sending.segments.clear();
                let now = self.clock.now();
                self.shard.abort(ConnId(conn), now);
                // The session is closing: this only clears its count of
                // bytes in flight. It comes after abort() so that it cannot
                // run commands held back by the high mark.
                self.shard.sent(ConnId(conn), now);
            }
        }
        sending.iovecs.clear();
        sending.first = 0;
        if sending.iovecs.capacity() > SEND_KEPT_SEGMENTS_MAX || sending.segments.capacity() > SEND_KEPT_SEGMENTS_MAX {
            sending = Sending::default();
        }
        let c = self.conns[conn as usize].as_mut().expect("connection checked above");
        c.spare = sending;
        self.touched.push(ConnId(conn));
    }

    /// A receive into a lent put body finished: the body goes back to the
    /// session with what arrived. One that the server stopped (the
    /// connection is closing) ends nothing else.
    fn received_into(&mut self, conn: u32, outcome: std::io::Result<usize>) {
        let Some(c) = self.conns.get_mut(conn as usize).and_then(Option::as_mut) else { return };
        let loan = c.body.take().expect("a receive into a body that was not lent");
        let stopped = c.recv == Recv::DirectStopping;
        c.recv = Recv::Ended;
        let fd = c.fd;
        let now = self.clock.now();
        let id = ConnId(conn);
        match outcome {
            Ok(n) => {
                // Safety: the kernel wrote `n` bytes at the loan's spare
                // pointer.
                unsafe { self.shard.return_body(id, loan, n, now) };
                if n == 0 && !stopped {
                    c.peer_done = true;
                    self.shard.eof(id, now);
                }
            }
            Err(e) => {
                // Safety: nothing was written.
                unsafe { self.shard.return_body(id, loan, 0, now) };
                if !stopped {
                    c.peer_done = true;
                    self.log_error(fd, "recv()", &e);
                    self.shard.abort(id, now);
                }
            }
        }
        self.touched.push(id);
    }

    /// Starts a receive straight into the session's put body.
    fn receive_body(&mut self, conn: ConnId) {
        let c = self.conns[conn.0 as usize].as_mut().expect("connection exists");
        let Some(mut loan) = self.shard.lend_body(conn) else { return };
        let (buf, len) = loan.spare();
        c.body = Some(loan);
        c.recv = Recv::Direct;
        // Safety: the loan, held in `c.body` until ReceivedInto, owns the
        // memory, and the session takes no input meanwhile.
        unsafe { self.io.recv_into(conn.0, c.fd, buf, len) };
    }

    /// Brings one connection up to date with its session: send what it is
    /// owed, pause or resume receiving, close it when it is done.
    fn service(&mut self, conn: ConnId) {
        let cancelled = self.sends_cancelled();
        let Some(c) = self.conns.get_mut(conn.0 as usize).and_then(Option::as_mut) else { return };
        let owed = self.shard.output(conn).len();
        let sendable = self.shard.output(conn).has_sendable();
        let hold = self.shard.is_carried(conn) && owed < CARRIED_SEND_BYTES_MIN;
        // Replies held for the log (see `Output::fence`) leave when their
        // batch is durable; the shard marks the connection dirty then.
        if c.sending.is_none() && (sendable || cancelled && owed > 0) && !hold && !self.shard.is_dead(conn) {
            if cancelled {
                // The stop's grace is over: what is owed now is dropped.
                self.shard.abort(conn, self.clock.now());
            } else {
                // Room for a segment and an iovec per reply buffer and body
                // owed, fallibly: a client that pipelines reserves of large
                // jobs makes thousands. Without it the replies cannot go,
                // and the connection goes as one whose send failed.
                let mut sending = std::mem::take(&mut c.spare);
                let n = self.shard.output(conn).sendable_segments();
                let room = memory::try_or_spend(|| memory::try_reserve(&mut sending.segments, n))
                    .and_then(|()| memory::try_or_spend(|| memory::try_reserve(&mut sending.iovecs, n)));
                if room.is_err() {
                    c.spare = sending;
                    if self.settings.verbosity > 0 {
                        println!("error {} send(): no memory for the replies", c.fd);
                    }
                    self.shard.abort(conn, self.clock.now());
                } else {
                    self.send_owed(conn, sending);
                }
            }
        }
        let Some(c) = self.conns.get_mut(conn.0 as usize).and_then(Option::as_mut) else { return };
        let direct = self.shard.wants_direct_body(conn);
        match (self.shard.read_gate(conn), c.recv) {
            (ReadGate::Read, Recv::Ended) if !c.peer_done && direct => return self.receive_body(conn),
            (ReadGate::Read, Recv::Ended) if !c.peer_done => {
                c.recv = Recv::Active;
                self.io.recv(conn.0, c.fd);
            }
            // A large body is coming: end the shared-buffer receive first
            // (so no byte is left behind in it), then receive the body.
            (ReadGate::Read, Recv::Active) if direct => {
                c.recv = Recv::Stopping;
                self.io.stop_recv(conn.0, c.fd);
            }
            (ReadGate::Wait | ReadGate::Stop, Recv::Active) => {
                c.recv = Recv::Stopping;
                self.io.stop_recv(conn.0, c.fd);
            }
            // Closing while a body is received into: the body is dropped
            // once the receive is reaped.
            (ReadGate::Stop, Recv::Direct) => {
                c.recv = Recv::DirectStopping;
                self.io.stop_recv_into(conn.0);
            }
            _ => {}
        }
        if c.recv == Recv::Ended && c.sending.is_none() && self.shard.finished(conn) {
            self.close(conn);
        }
    }

    /// Starts the send of everything a connection may be sent now, into
    /// `sending`, which has room for it.
    fn send_owed(&mut self, conn: ConnId, mut sending: Sending) {
        self.shard.start_send(conn, &mut sending.segments);
        sending.iovecs.extend(
            sending
                .segments
                .iter()
                .map(|s| libc::iovec { iov_base: s.bytes().as_ptr().cast_mut().cast(), iov_len: s.bytes().len() }),
        );
        let count = sending.iovecs.len().min(IOVECS_PER_SEND_MAX);
        let iov = sending.iovecs.as_ptr();
        let c = self.conns[conn.0 as usize].as_mut().expect("connection exists");
        c.sending = Some(sending);
        // Safety: the iovecs and the segments they point into are owned by
        // `c.sending` until the Sent event.
        unsafe { self.io.send(conn.0, c.fd, iov, count) };
    }

    fn close(&mut self, conn: ConnId) {
        let c = self.conns[conn.0 as usize].take().expect("closing a connection twice");
        self.io.forget(conn.0, c.fd);
        if self.settings.verbosity > 0 {
            println!("close {}", c.fd);
        }
        // Safety: nothing is in flight on the descriptor any more.
        unsafe { libc::close(c.fd) };
        self.shard.remove(conn);
        self.open -= 1;
        if let Some(link) = &self.link {
            link.closed();
            return self.dispatch_held();
        }
        // A connection held at the limit takes the place.
        if let Some(fd) = self.held.pop_front() {
            self.open(fd);
        }
    }
}

/// An event acted on once the back end's wait has returned.
enum Deferred {
    Accepted(RawFd),
    AcceptEnded(Option<std::io::Error>),
    RecvEnded(u32, RecvEnd),
    Sent(u32, std::io::Result<usize>),
    ReceivedInto(u32, std::io::Result<usize>),
    Signal(i32),
    Woken,
    FileDone(crate::wal::flush::Lane, std::io::Result<usize>),
}

/// The handler of one wait: data goes to the shard at once (all data of
/// one wait shares one reading of the clock), everything else is deferred,
/// in arrival order, until the back end is free again.
struct Events<'a> {
    shard: &'a mut Shard,
    clock: &'a Clock,
    now: Option<Nanos>,
    deferred: &'a mut VecDeque<Deferred>,
    /// When the first event arrived, if the turn is timed (`--metrics`).
    first_at: Option<Instant>,
    timed: bool,
}

impl Events<'_> {
    fn handle(&mut self, event: Event<'_>) {
        if self.timed && self.first_at.is_none() {
            self.first_at = Some(Instant::now());
        }
        let deferred = match event {
            Event::Data(conn, bytes) => {
                let now = *self.now.get_or_insert_with(|| self.clock.now());
                self.shard.input(ConnId(conn), bytes, now);
                return;
            }
            Event::Accepted(fd) => Deferred::Accepted(fd),
            Event::AcceptEnded(e) => Deferred::AcceptEnded(e),
            Event::RecvEnded(conn, end) => Deferred::RecvEnded(conn, end),
            Event::Sent(conn, outcome) => Deferred::Sent(conn, outcome),
            Event::ReceivedInto(conn, outcome) => Deferred::ReceivedInto(conn, outcome),
            Event::Signal(signal) => Deferred::Signal(signal),
            Event::Woken => Deferred::Woken,
            Event::FileDone(lane, outcome) => Deferred::FileDone(lane, outcome),
        };
        self.deferred.push_back(deferred);
    }
}

fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // Safety: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
