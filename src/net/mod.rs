//! The network shell around a shard: one core's event loop.
//!
//! The loop is a plain `loop` over an [`Io`] back end, io_uring
//! ([`uring`]) or epoll ([`epoll`]), in the manner of Redis' `ae.c`: wait
//! for events, hand received bytes and the time to the shard, then, once
//! per turn, start a send for every connection that has replies and no
//! send in flight, close the connections that are done, and go back to
//! waiting with a timeout set by the shard's next deadline. There is no
//! async runtime and no task per connection; all state is owned by the
//! loop, so no operation can be dropped while the kernel still uses its
//! memory: a connection is closed only when its receive has ended and its
//! send has completed.
//!
//! Both back ends run this same code; only the mechanics of accept,
//! receive, send and wait differ (see [`io`]).

pub mod epoll;
pub mod io;
pub mod listen;
pub mod uring;

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::engine::Nanos;
use crate::protocol::output::Segment;
use crate::shard::{BodyLoan, ConnId, ReadGate, Shard};
use io::{Event, Io, RecvEnd};
use listen::BoundListener;

/// How long to pause accepting after an accept error such as EMFILE, so a
/// full descriptor table does not turn the loop into a spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);
/// While accepting keeps failing (out of descriptors), one log line per
/// this long, with a count of the failures in between.
const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Most iovecs handed to one writev (the kernel's IOV_MAX).
const IOVECS_PER_SEND_MAX: usize = 1024;

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

/// A core's I/O back end, chosen before the shard is built.
pub enum Driver {
    Uring(Box<uring::Uring>),
    Epoll(epoll::Epoll),
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
                    return Ok((Driver::Epoll(epoll::Epoll::new()?), Some(why)));
                }
            }
        }
        Ok((Driver::Epoll(epoll::Epoll::new()?), None))
    }

    pub fn backend(&self) -> Backend {
        match self {
            Driver::Uring(_) => Backend::Uring,
            Driver::Epoll(_) => Backend::Epoll,
        }
    }

    /// Serves until SIGTERM or SIGINT.
    pub fn serve(self, shard: Shard, listener: BoundListener, signals: OwnedFd, verbosity: u8) -> std::io::Result<()> {
        match self {
            Driver::Uring(io) => Server::new(*io, shard, listener, signals, verbosity).run(),
            Driver::Epoll(io) => Server::new(io, shard, listener, signals, verbosity).run(),
        }
    }
}

/// The shard's clock: monotonic nanoseconds since the core started.
pub struct Clock {
    origin: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock { origin: Instant::now() }
    }

    pub fn now(&self) -> Nanos {
        self.origin.elapsed().as_nanos() as Nanos
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
    /// Ended (end of stream, error, or stopped by us).
    Ended,
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
    listener: OwnedFd,
    signals: OwnedFd,
    verbosity: u8,
    conns: Vec<Option<Conn>>,
    /// Connections to look at after this turn's events.
    touched: Vec<ConnId>,
    /// When to start accepting again after an accept error.
    accept_again_at: Option<Instant>,
    /// When an accept failure was last logged, and failures since.
    accept_error_logged: Option<Instant>,
    accept_errors_unlogged: u64,
    stop: bool,
    /// Events of the current turn other than data, kept between turns so
    /// the loop does not allocate.
    deferred: Vec<Deferred>,
}

impl<I: Io> Server<I> {
    fn new(io: I, shard: Shard, listener: BoundListener, signals: OwnedFd, verbosity: u8) -> Server<I> {
        let listener: OwnedFd = match listener {
            BoundListener::Tcp(l) => l.into(),
            BoundListener::Unix(l) => l.into(),
        };
        Server {
            io,
            shard,
            clock: Clock::new(),
            listener,
            signals,
            verbosity,
            conns: Vec::new(),
            touched: Vec::new(),
            accept_again_at: None,
            accept_error_logged: None,
            accept_errors_unlogged: 0,
            stop: false,
            deferred: Vec::new(),
        }
    }

    fn run(mut self) -> std::io::Result<()> {
        set_nonblocking(self.listener.as_raw_fd())?;
        self.io.watch_signals(self.signals.as_raw_fd());
        self.io.accept(self.listener.as_raw_fd());
        while !self.stop {
            let timeout = self.timeout();
            let mut deferred = std::mem::take(&mut self.deferred);
            let mut events = Events { shard: &mut self.shard, clock: &self.clock, now: None, deferred: &mut deferred };
            self.io.wait(timeout, &mut |event| events.handle(event))?;
            for event in deferred.drain(..) {
                match event {
                    Deferred::Accepted(fd) => {
                        self.accept_recovered();
                        self.open(fd);
                    }
                    Deferred::AcceptFailed(e) => self.accept_failed(&e),
                    Deferred::RecvEnded(conn, end) => self.recv_ended(conn, end),
                    Deferred::Sent(conn, outcome) => self.sent(conn, outcome),
                    Deferred::ReceivedInto(conn, outcome) => self.received_into(conn, outcome),
                    Deferred::Signal(libc::SIGUSR1) => self.shard.set_draining(),
                    Deferred::Signal(_) => self.stop = true,
                }
            }
            self.deferred = deferred;
            if self.accept_again_at.is_some_and(|at| Instant::now() >= at) {
                self.accept_again_at = None;
                self.io.accept(self.listener.as_raw_fd());
            }
            self.shard.tick(self.clock.now());
            self.shard.take_dirty(&mut self.touched);
            let touched = std::mem::take(&mut self.touched);
            for &conn in &touched {
                self.service(conn);
            }
            self.touched = touched;
            self.touched.clear();
        }
        Ok(())
    }

    /// Logs an accept failure, at most once per ACCEPT_ERROR_LOG_INTERVAL
    /// (the failures in between are counted), and pauses accepting.
    fn accept_failed(&mut self, e: &std::io::Error) {
        let now = Instant::now();
        if self.accept_error_logged.is_none_or(|at| now - at >= ACCEPT_ERROR_LOG_INTERVAL) {
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

    /// How long the back end may wait: until the shard's next deadline or
    /// the end of an accept pause.
    fn timeout(&self) -> Option<Duration> {
        let now = self.clock.now();
        let shard = self.shard.next_deadline().map(|at| Duration::from_nanos(at.saturating_sub(now)));
        let accept = self.accept_again_at.map(|at| at.saturating_duration_since(Instant::now()));
        match (shard, accept) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
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
        if self.verbosity > 0 {
            println!("accept {fd}");
        }
        let Some(conn) = self.shard.open(fd) else {
            // Out of memory: the connection is closed at once, as
            // beanstalkd does when it cannot allocate one.
            if self.verbosity > 0 {
                println!("close {fd}");
            }
            // Safety: a descriptor just accepted, with nothing in flight.
            unsafe { libc::close(fd) };
            return;
        };
        let i = conn.0 as usize;
        if self.conns.len() <= i {
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
        self.io.recv(conn.0, fd);
    }

    fn recv_ended(&mut self, conn: u32, end: RecvEnd) {
        let Some(c) = self.conns.get_mut(conn as usize).and_then(Option::as_mut) else { return };
        c.recv = Recv::Ended;
        let now = self.clock.now();
        match end {
            RecvEnd::Eof => {
                c.peer_done = true;
                self.shard.eof(ConnId(conn), now);
            }
            RecvEnd::Error => {
                c.peer_done = true;
                self.shard.abort(ConnId(conn), now);
            }
            RecvEnd::Stopped => {}
        }
        self.touched.push(ConnId(conn));
    }

    fn sent(&mut self, conn: u32, outcome: std::io::Result<usize>) {
        let Some(c) = self.conns.get_mut(conn as usize).and_then(Option::as_mut) else { return };
        let mut sending = c.sending.take().expect("a send completed that was not started");
        match outcome {
            Ok(n) if !sending.advance(n) => {
                // Partly written: go on with the rest.
                let first = sending.first;
                let count = (sending.iovecs.len() - first).min(IOVECS_PER_SEND_MAX);
                let iov = sending.iovecs[first..].as_ptr();
                let fd = c.fd;
                c.sending = Some(sending);
                // Safety: the iovecs and the segments they point into are
                // owned by `c.sending` until the next Sent event.
                unsafe { self.io.send(conn, fd, iov, count) };
                return;
            }
            Ok(_) => {
                let output = self.shard.output(ConnId(conn));
                for segment in sending.segments.drain(..) {
                    if let Segment::Text(text) = segment {
                        output.recycle(text);
                    }
                }
                self.shard.sent(ConnId(conn), self.clock.now());
            }
            Err(_) => {
                sending.segments.clear();
                let now = self.clock.now();
                self.shard.abort(ConnId(conn), now);
                // The session is closing: this only clears its count of
                // bytes in flight.
                self.shard.sent(ConnId(conn), now);
            }
        }
        sending.iovecs.clear();
        sending.first = 0;
        let c = self.conns[conn as usize].as_mut().expect("connection checked above");
        c.spare = sending;
        self.touched.push(ConnId(conn));
    }

    /// A receive into a lent put body finished: the body goes back to the
    /// session with what arrived.
    fn received_into(&mut self, conn: u32, outcome: std::io::Result<usize>) {
        let Some(c) = self.conns.get_mut(conn as usize).and_then(Option::as_mut) else { return };
        let loan = c.body.take().expect("a receive into a body that was not lent");
        c.recv = Recv::Ended;
        let now = self.clock.now();
        let id = ConnId(conn);
        match outcome {
            Ok(n) => {
                // Safety: the kernel wrote `n` bytes at the loan's spare
                // pointer.
                unsafe { self.shard.return_body(id, loan, n, now) };
                if n == 0 {
                    c.peer_done = true;
                    self.shard.eof(id, now);
                }
            }
            Err(_) => {
                // Safety: nothing was written.
                unsafe { self.shard.return_body(id, loan, 0, now) };
                c.peer_done = true;
                self.shard.abort(id, now);
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
        let Some(c) = self.conns.get_mut(conn.0 as usize).and_then(Option::as_mut) else { return };
        if c.sending.is_none() && !self.shard.output(conn).is_empty() && !self.shard.is_dead(conn) {
            let mut sending = std::mem::take(&mut c.spare);
            self.shard.start_send(conn, &mut sending.segments);
            sending.iovecs.extend(
                sending
                    .segments
                    .iter()
                    .map(|s| libc::iovec { iov_base: s.bytes().as_ptr().cast_mut().cast(), iov_len: s.bytes().len() }),
            );
            let count = sending.iovecs.len().min(IOVECS_PER_SEND_MAX);
            let iov = sending.iovecs.as_ptr();
            c.sending = Some(sending);
            // Safety: the iovecs and the segments they point into are owned
            // by `c.sending` until the Sent event.
            unsafe { self.io.send(conn.0, c.fd, iov, count) };
        }
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
            _ => {}
        }
        if c.recv == Recv::Ended && c.sending.is_none() && self.shard.finished(conn) {
            self.close(conn);
        }
    }

    fn close(&mut self, conn: ConnId) {
        let c = self.conns[conn.0 as usize].take().expect("closing a connection twice");
        self.io.forget(conn.0, c.fd);
        if self.verbosity > 0 {
            println!("close {}", c.fd);
        }
        // Safety: nothing is in flight on the descriptor any more.
        unsafe { libc::close(c.fd) };
        self.shard.remove(conn);
    }
}

/// An event acted on once the back end's wait has returned.
enum Deferred {
    Accepted(RawFd),
    AcceptFailed(std::io::Error),
    RecvEnded(u32, RecvEnd),
    Sent(u32, std::io::Result<usize>),
    ReceivedInto(u32, std::io::Result<usize>),
    Signal(i32),
}

/// The handler of one wait: data goes to the shard at once (all data of
/// one wait shares one reading of the clock), everything else is deferred,
/// in arrival order, until the back end is free again.
struct Events<'a> {
    shard: &'a mut Shard,
    clock: &'a Clock,
    now: Option<Nanos>,
    deferred: &'a mut Vec<Deferred>,
}

impl Events<'_> {
    fn handle(&mut self, event: Event<'_>) {
        let deferred = match event {
            Event::Data(conn, bytes) => {
                let now = *self.now.get_or_insert_with(|| self.clock.now());
                self.shard.input(ConnId(conn), bytes, now);
                return;
            }
            Event::Accepted(fd) => Deferred::Accepted(fd),
            Event::AcceptFailed(e) => Deferred::AcceptFailed(e),
            Event::RecvEnded(conn, end) => Deferred::RecvEnded(conn, end),
            Event::Sent(conn, outcome) => Deferred::Sent(conn, outcome),
            Event::ReceivedInto(conn, outcome) => Deferred::ReceivedInto(conn, outcome),
            Event::Signal(signal) => Deferred::Signal(signal),
        };
        self.deferred.push(deferred);
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
