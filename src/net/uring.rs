//! The io_uring back end: one ring per core, driven directly (the io-uring
//! crate) rather than through an async runtime.
//!
//! * Each connection has one multishot receive armed at a time; data
//!   lands in a ring of provided buffers shared by all connections, so an
//!   idle connection holds no buffer and no receive is re-armed per
//!   message. The kernel ends a receive once it has brought
//!   [`RECV_BYTES_MAX`] (its total limit, probed at start: see
//!   [`Uring::recv_entry`]), and the server arms the next one when its
//!   session wants more, so what a connection reads ahead is bounded.
//! * Sends are single writev operations on memory the server keeps alive
//!   until their completion.
//! * Everything an iteration queues is submitted by the one
//!   `io_uring_enter` that also waits for the next completions.
//! * A kernel's "not now" to a submit (EBUSY, EAGAIN, EINTR) is never an
//!   error: the entry waits in the ordered `unqueued` queue. Any other
//!   failure of the ring is recorded by `Uring::fault`, the one place
//!   that does so, and returned by the next wait; nothing here panics on
//!   an errno.
//! * Every operation pushed is counted until its last completion is
//!   reaped ([`Io::idle`]), so the server can exit with nothing in flight.
//! * The ring is single-issuer and completions are collected when the loop
//!   enters the kernel (DEFER_TASKRUN where the kernel has it, else
//!   COOP_TASKRUN) instead of interrupting it.
//! * Each connection also has a hang-up watch (a one-shot poll), because a
//!   multishot receive can miss a reset: see [`ConnSlot::watch`]. It is the
//!   one operation the back end starts on its own; `forget` cancels it, and
//!   the socket, closed by the server at once, is released by the kernel
//!   when the cancel has been processed.
//!
//! Needs Linux 6.0 (multishot receive, provided buffer rings); the server
//! uses epoll on older kernels or where io_uring is refused.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::{IoUring, cqueue, opcode, squeue, types};

use super::io::{Event, Io, RECV_BYTES_MAX, RecvEnd};
use crate::memory::{self, OutOfMemory};

/// Submission queue entries.
const SQ_ENTRIES: u32 = 4096;
/// Provided receive buffers, shared by all connections (a power of two).
const RECV_BUFFERS: u16 = 128;
/// Bytes per receive buffer.
const RECV_BUFFER_BYTES: usize = 16 * 1024;
/// Where a receive's total limit goes in the kernel's 64-byte
/// `struct io_uring_sqe`: the `optlen` member of the union at byte 44
/// (`splice_fd_in`, `file_index`), which the io-uring crate does not set
/// on a multishot receive.
const SQE_OPTLEN_OFFSET: usize = 44;
const _: () = assert!(size_of::<squeue::Entry>() == 64);
/// The buffer group id of the receive buffers.
const BUFFER_GROUP: u16 = 0;
/// When the ring is dropped with operations still in flight (a test, or a
/// fault that ends the server), it cancels them all and reaps them for at
/// most this many waits of [`DROP_REAP_WAIT`], so that no operation is left
/// to write into freed memory or to hold a socket open.
const DROP_REAP_ROUNDS_MAX: u32 = 100;
const DROP_REAP_WAIT: Duration = Duration::from_millis(10);

// What a completion belongs to, in the top byte of its user data; the low
// 32 bits carry the connection and the bits between a generation, so that a
// completion can never be mistaken for one of a later connection that
// reuses the same slot.
const KIND_SHIFT: u32 = 56;
const GENERATION_SHIFT: u32 = 32;
const ACCEPT: u64 = 1;
const RECV: u64 = 2;
const SEND: u64 = 3;
const CANCEL: u64 = 4;
const SIGNAL: u64 = 5;
const RECV_INTO: u64 = 6;
const FILE: u64 = 7;
const HANGUP: u64 = 8;
const PROBE: u64 = 9;
const WAKE: u64 = 10;

/// What a hang-up watch waits for: the peer's end of the stream or a reset
/// (the kernel always adds POLLERR and POLLHUP to a poll's events).
const HANGUP_EVENTS: u32 = libc::POLLRDHUP as u32;
/// What a hang-up watch reports when the connection was reset or failed,
/// rather than ended in order (a FIN alone gives POLLRDHUP and POLLIN).
const RESET_EVENTS: u32 = (libc::POLLERR | libc::POLLHUP) as u32;

fn tag(kind: u64, conn: u32) -> u64 {
    kind << KIND_SHIFT | u64::from(conn)
}

fn tag_generation(kind: u64, conn: u32, generation: u16) -> u64 {
    tag(kind, conn) | u64::from(generation) << GENERATION_SHIFT
}

/// Whether `io_uring_enter` failed only for now: the completion queue is
/// full and must be reaped first (EBUSY), the kernel is short of memory for
/// requests (EAGAIN), or a signal came (EINTR). The entries stay queued and
/// go in after the next wait.
fn not_now(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN | libc::EINTR))
}

/// A connection's hang-up watch (see [`ConnSlot::watch`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Watch {
    /// Not started: the connection's first receive starts it.
    Off,
    Armed,
    /// It reported the hang-up (or failed); it is not started again.
    Fired,
}

/// What the back end knows of a connection.
#[derive(Clone, Copy)]
struct ConnSlot {
    fd: RawFd,
    /// A cancel of its receive was asked for.
    stopping: bool,
    /// Bumped for every receive started on the slot.
    generation: u16,
    /// A receive is in flight (until its last completion).
    receiving: bool,
    /// Bumped when a connection leaves the slot; tags its hang-up watch,
    /// whose completion may come after the slot has a new connection.
    epoch: u16,
    /// A multishot receive that finds the last bytes of a connection and
    /// its reset in one wake-up reports the bytes and then waits for a
    /// wake-up that never comes: the kernel does not try the socket again
    /// when it says it is empty, and a reset, unlike a FIN, does not make
    /// it say otherwise. The connection then stays open for ever (a client
    /// killed in the middle of a put left one in a few hundred). The watch
    /// is a one-shot poll that completes at the hang-up; on a reset, while
    /// a receive is armed, the receive is cancelled and armed again, and
    /// the new one finds the error at once.
    watch: Watch,
    /// The receive was cancelled after a reset to be armed again.
    nudged: bool,
}

impl ConnSlot {
    const VACANT: ConnSlot = ConnSlot {
        fd: -1,
        stopping: false,
        generation: 0,
        receiving: false,
        epoch: 0,
        watch: Watch::Off,
        nudged: false,
    };
}

/// Bytes of one `signalfd_siginfo`.
const SIGINFO_BYTES: usize = 128;

pub struct Uring {
    ring: IoUring,
    buffers: BufferRing,
    conns: Vec<ConnSlot>,
    listener: Option<RawFd>,
    /// An accept is in flight, and whether it was asked to stop.
    accepting: bool,
    accept_stopping: bool,
    signal_fd: Option<RawFd>,
    signal_buf: Box<[u8; SIGINFO_BYTES]>,
    /// The core's wake-up eventfd, with a read armed on it.
    wake_fd: Option<RawFd>,
    wake_buf: Box<u64>,
    completions: Vec<cqueue::Entry>,
    /// Entries that could not be queued because the submission queue was
    /// full and the kernel said "not now" ([`not_now`]). They go in, in
    /// this order, after the next wait, and every entry pushed meanwhile
    /// joins the back of this queue, since the order of entries matters (a
    /// cancel must not overtake the receive it cancels).
    unqueued: VecDeque<squeue::Entry>,
    /// Operations pushed whose last completion has not been reaped
    /// (including those still in `unqueued`).
    in_flight: usize,
    /// The first error of the ring itself (a submit that failed for good,
    /// a completion no operation can produce), returned by the next wait.
    fault: Option<io::Error>,
    /// The kernel ends a multishot receive after a total of bytes (see
    /// [`Uring::recv_entry`]).
    recv_limit: bool,
    /// Errors that the next submits return instead of entering the kernel.
    #[cfg(test)]
    submit_errors: VecDeque<i32>,
    /// Receives skip their first attempt and wait for readiness at once,
    /// which is how a test puts a receive in the state where the kernel
    /// misses a reset (see [`ConnSlot::watch`]).
    #[cfg(test)]
    recv_poll_first: bool,
}

impl Uring {
    pub fn new() -> io::Result<Uring> {
        Uring::with_sizes(SQ_ENTRIES, RECV_BUFFERS, RECV_BUFFER_BYTES)
    }

    /// A ring of `sq_entries` submission entries with `count` (a power of
    /// two) receive buffers of `bytes` each.
    fn with_sizes(sq_entries: u32, count: u16, bytes: usize) -> io::Result<Uring> {
        assert!(count.is_power_of_two(), "buffer count must be a power of two");
        let release = crate::sys::uname().map(|u| u.release).unwrap_or_default();
        if !kernel_at_least(&release, 6, 0) {
            return Err(io::Error::new(io::ErrorKind::Unsupported, format!("kernel {release} is older than 6.0")));
        }
        let ring = build_ring(sq_entries)?;
        // Room for a whole completion queue, so that reaping never grows it.
        let cq_entries = ring.params().cq_entries() as usize;
        let buffers = BufferRing::new(&ring, count, bytes)?;
        let mut uring = Uring {
            ring,
            buffers,
            conns: Vec::new(),
            listener: None,
            accepting: false,
            accept_stopping: false,
            signal_fd: None,
            signal_buf: Box::new([0; SIGINFO_BYTES]),
            wake_fd: None,
            wake_buf: Box::new(0),
            completions: Vec::with_capacity(cq_entries),
            unqueued: VecDeque::new(),
            in_flight: 0,
            fault: None,
            recv_limit: false,
            #[cfg(test)]
            submit_errors: VecDeque::new(),
            #[cfg(test)]
            recv_poll_first: false,
        };
        uring.recv_limit = uring.probe_recv_limit()?;
        Ok(uring)
    }

    /// Whether the kernel honours a multishot receive's total limit (the
    /// `optlen` of its entry): a receive limited to one byte, on a socket
    /// with two waiting, must bring both (one buffer) and end. A kernel
    /// before the limit refuses the entry (EINVAL: the field was checked
    /// to be zero); one that ignored it would go on receiving, and is
    /// treated as having none. Runs before anything else is in flight.
    fn probe_recv_limit(&mut self) -> io::Result<bool> {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        (&theirs).write_all(b"ab")?;
        let entry = opcode::RecvMulti::new(types::Fd(ours.as_raw_fd()), BUFFER_GROUP).build();
        let probe = with_total_limit(entry, 1).user_data(tag(PROBE, 0));
        // Safety: the receive writes into the registered buffers only, and
        // is reaped below before `ours` is dropped.
        unsafe { self.ring.submission().push(&probe) }.map_err(|_| io::Error::other("submission queue full"))?;
        let (mut first, mut ended, mut cancelled, mut cancel_reaped) = (None, false, false, false);
        while !ended || cancelled && !cancel_reaped {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if not_now(&e) => {}
                Err(e) => return Err(e),
            }
            let mut returned = false;
            for cqe in self.ring.completion() {
                if cqe.user_data() != tag(PROBE, 0) {
                    // Nothing else is in flight: this is the cancel's.
                    cancel_reaped = true;
                    continue;
                }
                if let Some(bid) = cqueue::buffer_select(cqe.flags()) {
                    self.buffers.give_back(bid);
                    returned = true;
                }
                first.get_or_insert((cqe.result(), cqueue::more(cqe.flags())));
                ended |= !cqueue::more(cqe.flags());
            }
            if returned {
                self.buffers.publish();
            }
            if !ended && !cancelled {
                // Still receiving: the limit was ignored.
                let cancel = opcode::AsyncCancel::new(tag(PROBE, 0)).build().user_data(tag(CANCEL, 0));
                // Safety: the cancel points to no memory.
                unsafe { self.ring.submission().push(&cancel) }
                    .map_err(|_| io::Error::other("submission queue full"))?;
                cancelled = true;
            }
        }
        Ok(first == Some((2, false)))
    }

    /// Submits what is queued, without waiting.
    fn submit_now(&mut self) -> io::Result<usize> {
        #[cfg(test)]
        if let Some(errno) = self.submit_errors.pop_front() {
            return Err(io::Error::from_raw_os_error(errno));
        }
        self.ring.submit()
    }

    /// Records a fault of the ring: the one place where an error that no
    /// connection caused is turned into the error the next wait returns
    /// (and the server stops on). The first one is kept.
    fn fault(&mut self, what: &str, errno: i32) {
        if self.fault.is_none() {
            let e = io::Error::from_raw_os_error(errno);
            self.fault = Some(io::Error::new(e.kind(), format!("{what}: {e}")));
        }
    }

    /// Queues an operation. When the submission queue is full, it submits
    /// first; when the kernel says "not now", the entry waits in
    /// `unqueued` (see there).
    fn push(&mut self, entry: squeue::Entry) {
        self.in_flight += 1;
        if self.unqueued.is_empty() {
            // Safety: every buffer an entry points to is kept alive by the
            // server or by this struct until its completion.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            match self.submit_now() {
                // Safety: as above.
                Ok(n) if n > 0 && unsafe { self.ring.submission().push(&entry) }.is_ok() => return,
                Ok(_) => {}
                Err(e) if not_now(&e) => {}
                Err(e) => self.fault("io_uring_enter", e.raw_os_error().unwrap_or(libc::EIO)),
            }
        }
        self.unqueued.push_back(entry);
    }

    /// Moves the unqueued entries into the submission queue, in order, as
    /// far as the kernel takes them now.
    fn flush_unqueued(&mut self) {
        while let Some(entry) = self.unqueued.front() {
            // Safety: as in `push`.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                self.unqueued.pop_front();
                continue;
            }
            match self.submit_now() {
                Ok(n) if n > 0 => {}
                Ok(_) => return,
                Err(e) if not_now(&e) => return,
                Err(e) => return self.fault("io_uring_enter", e.raw_os_error().unwrap_or(libc::EIO)),
            }
        }
    }

    fn accept_entry(listener: RawFd) -> squeue::Entry {
        // Accepted sockets stay blocking: io_uring never blocks on them (it
        // polls when an operation cannot complete now).
        opcode::AcceptMulti::new(types::Fd(listener)).flags(libc::SOCK_CLOEXEC).build().user_data(tag(ACCEPT, 0))
    }

    fn read_signal(&mut self, fd: RawFd) {
        let read = opcode::Read::new(types::Fd(fd), self.signal_buf.as_mut_ptr(), SIGINFO_BYTES as u32)
            .build()
            .user_data(tag(SIGNAL, 0));
        self.push(read);
    }

    fn read_wake(&mut self, fd: RawFd) {
        let buf: *mut u64 = &mut *self.wake_buf;
        let read = opcode::Read::new(types::Fd(fd), buf.cast(), 8).build().user_data(tag(WAKE, 0));
        self.push(read);
    }

    /// The receive of a connection: multishot, limited to a total of
    /// [`RECV_BYTES_MAX`] (the kernel ends it once that many have come,
    /// checking after each buffer), so that it brings at most that and one
    /// buffer more before the server decides whether its session wants
    /// more ([`RecvEnd::Paused`]). Without the limit, a multishot receive
    /// took whatever the kernel had queued, up to 32 buffers per wake-up
    /// (its retry limit) and more in later ones before the loop had looked:
    /// 2,000 connections that sent `stats` and never read held 170 KB of
    /// input each, the gate that should have stopped them at their first
    /// turn's worth closing too late. A kernel without the limit gets a
    /// single receive of one buffer each time, which bounds the same way at
    /// the cost of arming a receive per message.
    fn recv_entry(&self, conn: u32, slot: ConnSlot) -> squeue::Entry {
        let data = tag_generation(RECV, conn, slot.generation);
        #[allow(unused_mut)]
        let mut entry = if self.recv_limit {
            let entry = opcode::RecvMulti::new(types::Fd(slot.fd), BUFFER_GROUP).build();
            with_total_limit(entry, RECV_BYTES_MAX as u32).user_data(data)
        } else {
            opcode::Recv::new(types::Fd(slot.fd), std::ptr::null_mut(), self.buffers.size as u32)
                .buf_group(BUFFER_GROUP)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
                .user_data(data)
        };
        #[cfg(test)]
        if self.recv_poll_first {
            tests::set_poll_first(&mut entry);
        }
        entry
    }

    /// Starts a connection's hang-up watch (see [`ConnSlot::watch`]).
    fn watch_hangup(&mut self, conn: u32) {
        let slot = &mut self.conns[conn as usize];
        slot.watch = Watch::Armed;
        let poll = opcode::PollAdd::new(types::Fd(slot.fd), HANGUP_EVENTS)
            .build()
            .user_data(tag_generation(HANGUP, conn, slot.epoch));
        self.push(poll);
    }

    /// A hang-up watch completed: on a reset, a receive still armed is
    /// cancelled, to be armed again (see [`ConnSlot::watch`]). A watch of
    /// a connection that has left its slot (cancelled by `forget`) ends
    /// nothing.
    fn hung_up(&mut self, conn: u32, epoch: u16, res: i32) {
        let Some(slot) = self.conns.get_mut(conn as usize) else { return };
        if slot.fd < 0 || slot.epoch != epoch {
            return;
        }
        // A watch that failed (no memory for it) is not started again: the
        // connection is served as before, without it.
        slot.watch = Watch::Fired;
        let reset = res > 0 && res as u32 & RESET_EVENTS != 0;
        if reset && slot.receiving && !slot.stopping && !slot.nudged {
            slot.nudged = true;
            let target = tag_generation(RECV, conn, slot.generation);
            self.cancel(target, conn);
        }
    }

    fn cancel(&mut self, target: u64, conn: u32) {
        let cancel = opcode::AsyncCancel::new(target).build().user_data(tag(CANCEL, conn));
        self.push(cancel);
    }

    fn conn_mut(&mut self, conn: u32) -> &mut ConnSlot {
        let i = conn as usize;
        if self.conns.len() <= i {
            self.conns.resize(i + 1, ConnSlot::VACANT);
        }
        &mut self.conns[i]
    }

    /// Handles one completion.
    fn complete(&mut self, cqe: &cqueue::Entry, handle: &mut dyn FnMut(Event<'_>), returned: &mut bool) {
        let (data, res, flags) = (cqe.user_data(), cqe.result(), cqe.flags());
        let conn = data as u32;
        let generation = (data >> GENERATION_SHIFT) as u16;
        let more = cqueue::more(flags);
        if !more {
            self.in_flight -= 1;
        }
        match data >> KIND_SHIFT {
            ACCEPT => {
                if res >= 0 {
                    handle(Event::Accepted(res));
                }
                if more {
                    return;
                }
                match self.listener {
                    // Ended without an error and not asked to (it can
                    // happen): go on accepting.
                    Some(listener) if res >= 0 && !self.accept_stopping => self.push(Uring::accept_entry(listener)),
                    _ => {
                        self.accepting = false;
                        self.accept_stopping = false;
                        let error = (res < 0 && res != -libc::ECANCELED).then(|| io::Error::from_raw_os_error(-res));
                        handle(Event::AcceptEnded(error));
                    }
                }
            }
            RECV => {
                let slot = self.conns.get(conn as usize).copied();
                let current = slot.is_some_and(|s| s.fd >= 0 && s.generation == generation);
                if let Some(bid) = cqueue::buffer_select(flags) {
                    if res > 0 && current {
                        handle(Event::Data(conn, self.buffers.bytes(bid, res as usize)));
                    }
                    self.buffers.give_back(bid);
                    *returned = true;
                }
                if more || !current {
                    return;
                }
                let slot = slot.expect("checked by current");
                let nudged = std::mem::take(&mut self.conns[conn as usize].nudged);
                self.conns[conn as usize].receiving = false;
                let end = match res {
                    0 => RecvEnd::Eof,
                    _ if slot.stopping => RecvEnd::Stopped,
                    // Its share brought, out of buffers, or ended after
                    // data for a reason of the kernel's: the server arms
                    // the next receive if the session wants more.
                    r if r > 0 || r == -libc::ENOBUFS => RecvEnd::Paused,
                    // Cancelled by the hang-up watch: the new receive finds
                    // the error (or what is left before it).
                    r if r == -libc::ECANCELED && nudged => {
                        self.conns[conn as usize].receiving = true;
                        let entry = self.recv_entry(conn, slot);
                        return self.push(entry);
                    }
                    r if r == -libc::ECANCELED => RecvEnd::Stopped,
                    r => RecvEnd::Error(io::Error::from_raw_os_error(-r)),
                };
                handle(Event::RecvEnded(conn, end));
            }
            HANGUP => self.hung_up(conn, generation, res),
            SEND => handle(Event::Sent(conn, outcome(res))),
            FILE => match crate::wal::flush::Lane::from_index(conn as usize) {
                Some(lane) => handle(Event::FileDone(lane, outcome(res))),
                None => debug_assert!(false, "a file completion for lane {conn}"),
            },
            RECV_INTO => handle(Event::ReceivedInto(conn, outcome(res))),
            SIGNAL => {
                if res as usize == SIGINFO_BYTES {
                    let signo = u32::from_ne_bytes(self.signal_buf[..4].try_into().expect("four bytes"));
                    handle(Event::Signal(signo as i32));
                } else if res < 0 && !matches!(-res, libc::ECANCELED | libc::EINTR | libc::EAGAIN) {
                    // Reading the signalfd again would only fail again.
                    self.signal_fd = None;
                    return self.fault("read(signalfd)", -res);
                }
                if let Some(fd) = self.signal_fd {
                    self.read_signal(fd);
                }
            }
            WAKE => {
                if res == 8 {
                    handle(Event::Woken);
                } else if res < 0 && !matches!(-res, libc::ECANCELED | libc::EINTR | libc::EAGAIN) {
                    self.wake_fd = None;
                    return self.fault("read(eventfd)", -res);
                }
                if let Some(fd) = self.wake_fd {
                    self.read_wake(fd);
                }
            }
            CANCEL => {
                // Found and cancelled (0), already finished (ENOENT) or
                // finishing (EALREADY): the outcome shows on the target.
                if res < 0 && !matches!(-res, libc::ENOENT | libc::EALREADY) {
                    self.fault("async cancel", -res);
                }
            }
            _ => self.fault("completion of unknown kind", libc::EINVAL),
        }
    }
}

impl Io for Uring {
    fn accept(&mut self, listener: RawFd) {
        debug_assert!(!self.accepting, "accepting twice");
        self.listener = Some(listener);
        self.accepting = true;
        self.accept_stopping = false;
        self.push(Uring::accept_entry(listener));
    }

    fn stop_accept(&mut self) {
        if self.accepting && !self.accept_stopping {
            self.accept_stopping = true;
            self.cancel(tag(ACCEPT, 0), 0);
        }
    }

    fn watch_signals(&mut self, signal_fd: RawFd) {
        self.signal_fd = Some(signal_fd);
        self.read_signal(signal_fd);
    }

    fn stop_signals(&mut self) {
        if self.signal_fd.take().is_some() {
            self.cancel(tag(SIGNAL, 0), 0);
        }
    }

    fn watch_wake(&mut self, wake_fd: RawFd) {
        self.wake_fd = Some(wake_fd);
        self.read_wake(wake_fd);
    }

    fn stop_wake(&mut self) {
        if self.wake_fd.take().is_some() {
            self.cancel(tag(WAKE, 0), 0);
        }
    }

    fn recv(&mut self, conn: u32, fd: RawFd) {
        let slot = self.conn_mut(conn);
        // `forget` clears the watch, so a new connection in the slot is
        // watched.
        slot.fd = fd;
        slot.stopping = false;
        slot.nudged = false;
        slot.receiving = true;
        slot.generation = slot.generation.wrapping_add(1);
        let slot = *slot;
        let entry = self.recv_entry(conn, slot);
        self.push(entry);
        if slot.watch == Watch::Off {
            self.watch_hangup(conn);
        }
    }

    fn stop_recv(&mut self, conn: u32, _fd: RawFd) {
        let slot = self.conn_mut(conn);
        slot.stopping = true;
        let target = tag_generation(RECV, conn, slot.generation);
        self.cancel(target, conn);
    }

    unsafe fn send(&mut self, conn: u32, fd: RawFd, iov: *const libc::iovec, count: usize) {
        let entry = if count == 1 {
            // One buffer (the common case): a plain send skips the iovec
            // import of writev.
            // Safety: the caller keeps the iovec valid until the completion.
            let iov = unsafe { &*iov };
            opcode::Send::new(types::Fd(fd), iov.iov_base.cast(), iov.iov_len as u32).build()
        } else {
            opcode::Writev::new(types::Fd(fd), iov, count as u32).build()
        };
        self.push(entry.user_data(tag(SEND, conn)));
    }

    unsafe fn recv_into(&mut self, conn: u32, fd: RawFd, buf: *mut u8, len: usize) {
        // MSG_WAITALL: complete once the whole of `len` has come (or the
        // stream ended), not at each segment.
        let recv = opcode::Recv::new(types::Fd(fd), buf, len.min(u32::MAX as usize) as u32)
            .flags(libc::MSG_WAITALL)
            .build()
            .user_data(tag(RECV_INTO, conn));
        self.push(recv);
    }

    fn stop_recv_into(&mut self, conn: u32) {
        // At most one receive into memory and one send are in flight per
        // connection, so their tags name them.
        self.cancel(tag(RECV_INTO, conn), conn);
    }

    fn cancel_send(&mut self, conn: u32) {
        self.cancel(tag(SEND, conn), conn);
    }

    fn reserve_conn(&mut self, conn: u32) -> Result<(), OutOfMemory> {
        memory::try_reserve_total(&mut self.conns, conn as usize + 1)
    }

    unsafe fn file_op(&mut self, lane: crate::wal::flush::Lane, request: crate::wal::flush::Request) {
        use crate::wal::flush::Request;
        let entry = match request {
            Request::Write { fd, iov, count, offset, dsync } => {
                let flags = if dsync { libc::RWF_DSYNC } else { 0 };
                opcode::Writev::new(types::Fd(fd), iov, count as u32).offset(offset).rw_flags(flags).build()
            }
            Request::Sync { fd, data_only } => {
                let flags = if data_only { types::FsyncFlags::DATASYNC } else { types::FsyncFlags::empty() };
                opcode::Fsync::new(types::Fd(fd)).flags(flags).build()
            }
        };
        // The lane in the connection's place: one operation per lane is
        // in flight, so it names the operation.
        self.push(entry.user_data(tag(FILE, lane.index() as u32)));
    }

    fn forget(&mut self, conn: u32, _fd: RawFd) {
        let slot = self.conn_mut(conn);
        debug_assert!(!slot.receiving, "forgetting a connection with a receive in flight");
        let watch = (slot.watch == Watch::Armed).then(|| tag_generation(HANGUP, conn, slot.epoch));
        *slot = ConnSlot { generation: slot.generation, epoch: slot.epoch.wrapping_add(1), ..ConnSlot::VACANT };
        // The poll holds its own reference to the socket, so the server
        // may close the descriptor now; the kernel releases the socket once
        // the cancel has ended the poll.
        if let Some(watch) = watch {
            self.cancel(watch, conn);
        }
    }

    fn submit(&mut self) {
        match self.submit_now() {
            Ok(_) => {}
            Err(e) if not_now(&e) => {}
            Err(e) => self.fault("io_uring_enter", e.raw_os_error().unwrap_or(libc::EIO)),
        }
    }

    fn idle(&self) -> bool {
        self.in_flight == 0
    }

    fn wait(&mut self, timeout: Option<Duration>, handle: &mut dyn FnMut(Event<'_>)) -> io::Result<()> {
        if let Some(e) = self.fault.take() {
            return Err(e);
        }
        let submitted = match timeout {
            Some(t) => {
                let ts = types::Timespec::new().sec(t.as_secs()).nsec(t.subsec_nanos());
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
            None => self.ring.submit_and_wait(1),
        };
        match submitted {
            Ok(_) => {}
            Err(e) if not_now(&e) || e.raw_os_error() == Some(libc::ETIME) => {}
            Err(e) => self.fault("io_uring_enter", e.raw_os_error().unwrap_or(libc::EIO)),
        }
        self.completions.clear();
        self.completions.extend(self.ring.completion());
        let mut returned = false;
        let completions = std::mem::take(&mut self.completions);
        for cqe in &completions {
            self.complete(cqe, handle, &mut returned);
        }
        self.completions = completions;
        if returned {
            self.buffers.publish();
        }
        // After reaping, so that a full completion queue has room again.
        self.flush_unqueued();
        match self.fault.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for Uring {
    /// The server drops the ring only once it is idle. Anything else (a
    /// test, a fault that ends the server) may leave operations in flight:
    /// they are cancelled and reaped here, as far as the ring still works,
    /// so that the kernel neither writes into memory about to be freed nor
    /// keeps their sockets open after the process has gone. Then the
    /// receive buffers are unregistered, before `BufferRing` unmaps them.
    fn drop(&mut self) {
        self.in_flight -= self.unqueued.len();
        self.unqueued.clear();
        if self.in_flight > 0 {
            let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any()).build().user_data(tag(CANCEL, 0));
            // Safety: the cancel points to no memory.
            if unsafe { self.ring.submission().push(&cancel) }.is_ok() {
                self.in_flight += 1;
            }
            let ts = types::Timespec::from(DROP_REAP_WAIT);
            for _ in 0..DROP_REAP_ROUNDS_MAX {
                if self.in_flight == 0 {
                    break;
                }
                let args = types::SubmitArgs::new().timespec(&ts);
                match self.ring.submitter().submit_with_args(1, &args) {
                    Err(e) if !not_now(&e) && e.raw_os_error() != Some(libc::ETIME) => break,
                    _ => {}
                }
                for cqe in self.ring.completion() {
                    if !cqueue::more(cqe.flags()) {
                        self.in_flight -= 1;
                    }
                }
            }
        }
        let _ = self.ring.submitter().unregister_buf_ring(BUFFER_GROUP);
    }
}

/// Sets a multishot receive's total limit: the kernel ends it once it has
/// brought `bytes` (checked after each buffer).
fn with_total_limit(mut entry: squeue::Entry, bytes: u32) -> squeue::Entry {
    // Safety: `squeue::Entry` is a `repr(C)` wrapper of the kernel's 64-byte
    // `io_uring_sqe` (checked above), whose layout is the kernel's ABI; the
    // four bytes at SQE_OPTLEN_OFFSET are its `optlen`.
    unsafe {
        let optlen = (&raw mut entry).cast::<u8>().add(SQE_OPTLEN_OFFSET).cast::<u32>();
        optlen.write_unaligned(bytes);
    }
    entry
}

fn outcome(res: i32) -> io::Result<usize> {
    if res >= 0 { Ok(res as usize) } else { Err(io::Error::from_raw_os_error(-res)) }
}

fn build_ring(sq_entries: u32) -> io::Result<IoUring> {
    let mut deferred = IoUring::builder();
    deferred.setup_single_issuer().setup_defer_taskrun().setup_cqsize(sq_entries * 2);
    if let Ok(ring) = deferred.build(sq_entries) {
        return Ok(ring);
    }
    let mut cooperative = IoUring::builder();
    cooperative.setup_single_issuer().setup_coop_taskrun().setup_cqsize(sq_entries * 2);
    cooperative.build(sq_entries)
}

/// "6.18.44-generic" >= (6, 0)?
fn kernel_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    found >= (major, minor)
}

/// A ring of provided buffers registered with the kernel: the kernel takes
/// buffers from it for multishot receives and the loop gives them back.
struct BufferRing {
    /// The ring entries, page aligned, shared with the kernel.
    entries: *mut types::BufRingEntry,
    entries_bytes: usize,
    count: u16,
    /// Bytes per buffer.
    size: usize,
    /// The buffers themselves.
    data: Box<[u8]>,
    tail: u16,
}

impl BufferRing {
    fn new(ring: &IoUring, count: u16, size: usize) -> io::Result<BufferRing> {
        let entries_bytes = usize::from(count) * size_of::<types::BufRingEntry>();
        // Safety: an anonymous private mapping; checked below.
        let mem = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                entries_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if mem == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut ring_buffers = BufferRing {
            entries: mem.cast(),
            entries_bytes,
            count,
            size,
            data: vec![0u8; usize::from(count) * size].into_boxed_slice(),
            tail: 0,
        };
        // Safety: the entries live in the mapping above until drop; the
        // ring unregisters them in its own drop, before this struct (one of
        // its fields) unmaps them.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(mem as u64, count, BUFFER_GROUP, 0)?;
        }
        for bid in 0..count {
            ring_buffers.give_back(bid);
        }
        ring_buffers.publish();
        Ok(ring_buffers)
    }

    fn bytes(&self, bid: u16, len: usize) -> &[u8] {
        let start = usize::from(bid) * self.size;
        &self.data[start..start + len.min(self.size)]
    }

    /// Puts a buffer back at the tail (visible to the kernel on publish).
    fn give_back(&mut self, bid: u16) {
        let slot = self.tail & (self.count - 1);
        // Safety: `slot` is within the mapped entries; the kernel only reads
        // entries between its head and the published tail.
        unsafe {
            let entry = &mut *self.entries.add(usize::from(slot));
            entry.set_addr(self.data.as_ptr().add(usize::from(bid) * self.size) as u64);
            entry.set_len(self.size as u32);
            entry.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the buffers given back visible to the kernel.
    fn publish(&self) {
        // Safety: the tail field lives in the first entry of the mapping;
        // the release store orders the entry writes before it.
        unsafe {
            let tail = types::BufRingEntry::tail(self.entries).cast::<AtomicU16>();
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufferRing {
    fn drop(&mut self) {
        // Safety: unmapping what new() mapped; `Uring::drop` has
        // unregistered it from the ring already.
        unsafe { libc::munmap(self.entries.cast(), self.entries_bytes) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two 64-byte receive buffers for four connections with 300 bytes
    /// each: receives run out of buffers again and again, end paused and
    /// are armed again, as the server does, and every byte arrives, in
    /// order.
    #[test]
    fn receives_survive_running_out_of_buffers() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let mut io = Uring::with_sizes(SQ_ENTRIES, 2, 64).expect("io_uring");
        let pairs: Vec<_> = (0..4).map(|_| std::os::unix::net::UnixStream::pair().unwrap()).collect();
        for (i, (ours, _)) in pairs.iter().enumerate() {
            io.recv(i as u32, ours.as_raw_fd());
        }
        let sent: Vec<Vec<u8>> =
            (0..4u8).map(|i| (0..300u16).map(|b| (b as u8).wrapping_mul(7) ^ i).collect()).collect();
        for ((_, theirs), bytes) in pairs.iter().zip(&sent) {
            (&*theirs).write_all(bytes).unwrap();
        }
        let mut got = vec![Vec::new(); 4];
        for _ in 0..1000 {
            if got.iter().map(Vec::len).sum::<usize>() == 1200 {
                break;
            }
            let mut paused = Vec::new();
            io.wait(Some(Duration::from_millis(50)), &mut |event| match event {
                Event::Data(conn, bytes) => got[conn as usize].extend_from_slice(bytes),
                Event::RecvEnded(conn, RecvEnd::Paused) => paused.push(conn),
                other => panic!("unexpected {}", kind(&other)),
            })
            .unwrap();
            for conn in paused {
                io.recv(conn, pairs[conn as usize].0.as_raw_fd());
            }
        }
        assert_eq!(got, sent);
    }

    /// Waits (at most many times) until `done` says so, giving every event
    /// to `on`.
    fn pump(io: &mut Uring, on: &mut dyn FnMut(Event<'_>), done: &dyn Fn(&Uring) -> bool) {
        for _ in 0..1000 {
            if done(io) {
                return;
            }
            io.wait(Some(Duration::from_millis(10)), on).expect("wait");
        }
        panic!("never done");
    }

    /// A submission queue of two entries and a kernel that says "not now"
    /// three times in a row, in each of its three ways: the entries that
    /// did not fit wait and go in later, in order. Each connection's
    /// receive (and hang-up watch) is followed by its cancel, so a cancel
    /// that overtook its receive would find nothing, and that receive
    /// would never end; forgetting the connections then cancels their
    /// watches, and nothing is left in flight.
    #[test]
    fn entries_refused_for_now_go_in_later_in_order() {
        use std::os::fd::AsRawFd;
        let mut io = Uring::with_sizes(2, 4, 64).expect("io_uring");
        io.submit_errors.extend([libc::EAGAIN, libc::EINTR, libc::EBUSY]);
        let pairs: Vec<_> = (0..6).map(|_| std::os::unix::net::UnixStream::pair().unwrap()).collect();
        for (i, (ours, _)) in pairs.iter().enumerate() {
            io.recv(i as u32, ours.as_raw_fd());
            io.stop_recv(i as u32, ours.as_raw_fd());
        }
        assert_eq!(io.unqueued.len(), 16, "two entries fit; the kernel refused the rest for now");
        let stopped = std::cell::Cell::new([false; 6]);
        pump(
            &mut io,
            &mut |event| {
                if let Event::RecvEnded(conn, end) = event {
                    assert!(matches!(end, RecvEnd::Stopped), "connection {conn}: {end:?}");
                    let mut now = stopped.get();
                    assert!(!now[conn as usize], "connection {conn} ended twice");
                    now[conn as usize] = true;
                    stopped.set(now);
                }
            },
            &|_| stopped.get() == [true; 6],
        );
        for (i, (ours, _)) in pairs.iter().enumerate() {
            io.forget(i as u32, ours.as_raw_fd());
        }
        pump(&mut io, &mut |event| panic!("nothing more was asked for: {:?}", kind(&event)), &|io| io.idle());
        assert!(io.submit_errors.is_empty() && io.unqueued.is_empty());
    }

    /// The kind of an event, for messages.
    fn kind(event: &Event<'_>) -> &'static str {
        match event {
            Event::Accepted(_) => "Accepted",
            Event::AcceptEnded(_) => "AcceptEnded",
            Event::Data(..) => "Data",
            Event::RecvEnded(..) => "RecvEnded",
            Event::Sent(..) => "Sent",
            Event::ReceivedInto(..) => "ReceivedInto",
            Event::Signal(_) => "Signal",
            Event::Woken => "Woken",
            Event::FileDone(..) => "FileDone",
        }
    }

    /// Any other error of a submit is the ring's fault: the next wait
    /// returns it with its errno, and nothing panics.
    #[test]
    fn a_submit_error_other_than_not_now_is_returned_by_wait() {
        use std::os::fd::AsRawFd;
        let mut io = Uring::with_sizes(1, 4, 64).expect("io_uring");
        let (ours, _theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        io.submit_errors.push_back(libc::EINVAL);
        io.recv(0, ours.as_raw_fd());
        io.stop_recv(0, ours.as_raw_fd());
        let e = io.wait(Some(Duration::from_millis(10)), &mut |_| {}).expect_err("the fault");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().starts_with("io_uring_enter: ") && e.to_string().contains("(os error 22)"), "{e}");
    }

    /// Once the multishot accept has been cancelled and reaped, closing
    /// the listener frees its port at once (the accept held a reference to
    /// it), and nothing of the ring is left in flight.
    #[test]
    fn a_stopped_accept_lets_go_of_its_port() {
        use std::os::fd::AsRawFd;
        let mut io = Uring::with_sizes(8, 4, 64).expect("io_uring");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        io.accept(listener.as_raw_fd());
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let accepted = std::cell::Cell::new(None);
        let ended = std::cell::Cell::new(false);
        let mut on = |event: Event<'_>| match event {
            Event::Accepted(fd) => accepted.set(Some(fd)),
            Event::AcceptEnded(e) => {
                assert!(e.is_none(), "{e:?}");
                ended.set(true);
            }
            _ => {}
        };
        pump(&mut io, &mut on, &|_| accepted.get().is_some());
        io.stop_accept();
        pump(&mut io, &mut on, &|io| io.idle());
        assert!(ended.get());
        drop(listener);
        let again = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        again.set_reuse_address(true).unwrap();
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        again.bind(&addr.into()).expect("the port is free");
        again.listen(1).expect("and can be listened on");
        // Safety: the accepted descriptor is ours.
        unsafe { libc::close(accepted.get().unwrap()) };
    }

    /// Receives on connection 0, armed again each time it ends paused as
    /// the server does, until `bytes` have come; returns the bytes each
    /// receive brought.
    fn receive_in_shares(io: &mut Uring, fd: RawFd, bytes: usize) -> Vec<usize> {
        let mut shares = vec![0];
        io.recv(0, fd);
        for _ in 0..1000 {
            if shares.iter().sum::<usize>() >= bytes {
                return shares;
            }
            let mut paused = false;
            io.wait(Some(Duration::from_millis(10)), &mut |event| match event {
                Event::Data(0, data) => *shares.last_mut().expect("one share at least") += data.len(),
                Event::RecvEnded(0, RecvEnd::Paused) => paused = true,
                other => panic!("unexpected {}", kind(&other)),
            })
            .expect("wait");
            if paused {
                shares.push(0);
                io.recv(0, fd);
            }
        }
        panic!("only {shares:?} of {bytes} bytes came");
    }

    /// A receive on a socket with far more waiting brings its share
    /// (RECV_BYTES_MAX, or up to a buffer more) and ends paused: what a
    /// connection reads ahead of its session is bounded by the back end,
    /// whatever the client managed to send. Then a new receive brings the
    /// next share. Both with the kernel's limit on a multishot receive
    /// (where it has one) and without it (one buffer per receive).
    #[test]
    fn a_receive_brings_its_share_and_ends_paused() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        const SENT_BYTES: usize = 6 * RECV_BYTES_MAX;
        let mut io = Uring::with_sizes(SQ_ENTRIES, 16, 4096).expect("io_uring");
        let limit = io.recv_limit;
        for recv_limit in [true, false] {
            if recv_limit && !limit {
                continue;
            }
            io.recv_limit = recv_limit;
            let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
            theirs.set_nonblocking(true).unwrap();
            let sender = std::thread::spawn(move || {
                let bytes: Vec<u8> = (0..SENT_BYTES).map(|i| i as u8).collect();
                let mut sent = 0;
                while sent < bytes.len() {
                    match (&theirs).write(&bytes[sent..]) {
                        Ok(n) => sent += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                        Err(e) => panic!("{e}"),
                    }
                }
                theirs
            });
            let shares = receive_in_shares(&mut io, ours.as_raw_fd(), SENT_BYTES);
            let share_max = if recv_limit { RECV_BYTES_MAX + 4096 - 1 } else { 4096 };
            assert!(shares.iter().all(|&n| n <= share_max), "limit {recv_limit}: {shares:?}");
            assert!(shares.len() > 2, "limit {recv_limit}: {shares:?}");
            drop(sender.join());
            io.stop_recv(0, ours.as_raw_fd());
            let ended = std::cell::Cell::new(false);
            pump(&mut io, &mut |e| ended.set(ended.get() | matches!(e, Event::RecvEnded(0, _))), &|_| ended.get());
            io.forget(0, ours.as_raw_fd());
            pump(&mut io, &mut |_| {}, &|io| io.idle());
        }
    }

    /// This kernel (6.18) has the limit; the probe must find it.
    #[test]
    fn the_probe_finds_the_kernels_receive_limit() {
        let release = crate::sys::uname().map(|u| u.release).unwrap_or_default();
        let io = Uring::with_sizes(8, 4, 64).expect("io_uring");
        if kernel_at_least(&release, 6, 18) {
            assert!(io.recv_limit, "kernel {release}");
        }
        assert!(io.idle(), "the probe leaves nothing in flight");
    }

    /// Sets IORING_RECVSEND_POLL_FIRST on a receive, for which the io-uring
    /// crate has no setter on a multishot receive: the flag goes in the
    /// entry's `ioprio`, the u16 after the opcode and flags bytes of the
    /// kernel's `struct io_uring_sqe`.
    pub(super) fn set_poll_first(entry: &mut squeue::Entry) {
        const IOPRIO_OFFSET: usize = 2;
        const RECVSEND_POLL_FIRST: u16 = 1;
        const _: () = assert!(size_of::<squeue::Entry>() == 64);
        // Safety: `squeue::Entry` is a `repr(C)` wrapper of the kernel's
        // 64-byte `io_uring_sqe`, whose layout is the kernel's ABI; bytes 2
        // and 3 are its `ioprio`, where receives take their own flags.
        unsafe {
            let ioprio = (&raw mut *entry).cast::<u8>().add(IOPRIO_OFFSET).cast::<u16>();
            ioprio.write_unaligned(ioprio.read_unaligned() | RECVSEND_POLL_FIRST);
        }
    }

    /// A connected TCP pair on loopback: (ours, theirs).
    fn tcp_pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let theirs = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, _) = listener.accept().unwrap();
        (ours, theirs)
    }

    /// Waits until `fd` reports one of `events` (without reading it).
    fn wait_for_poll(fd: RawFd, events: i16) {
        let mut p = libc::pollfd { fd, events, revents: 0 };
        // Safety: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, 5_000) };
        assert!(n == 1 && p.revents & events != 0, "poll: {n}, revents {:#x}", p.revents);
    }

    /// The last bytes of a connection and its reset, both waiting when the
    /// receive looks: the receive reports the bytes, then the reset. A
    /// multishot receive that waits for readiness first (as one does when
    /// it was armed just before they came) reported the bytes and then
    /// nothing, ever, on this kernel (6.18) in 50 runs of 50; the hang-up
    /// watch ends it.
    #[test]
    fn a_reset_that_comes_with_the_last_bytes_still_ends_the_receive() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let mut io = Uring::with_sizes(64, 8, 1024).expect("io_uring");
        io.recv_poll_first = true;
        let (ours, theirs) = tcp_pair();
        (&theirs).write_all(b"put 0 0 10 100\r\nabc").unwrap();
        socket2::SockRef::from(&theirs).set_linger(Some(Duration::ZERO)).unwrap();
        drop(theirs);
        wait_for_poll(ours.as_raw_fd(), libc::POLLHUP | libc::POLLERR);
        io.recv(0, ours.as_raw_fd());
        let got = std::cell::RefCell::new(Vec::new());
        let ended = std::cell::RefCell::new(None);
        pump(
            &mut io,
            &mut |event| match event {
                Event::Data(0, bytes) => got.borrow_mut().extend_from_slice(bytes),
                Event::RecvEnded(0, end) => {
                    assert!(ended.borrow().is_none(), "ended twice");
                    *ended.borrow_mut() = Some(end);
                }
                other => panic!("unexpected {}", kind(&other)),
            },
            &|_| ended.borrow().is_some(),
        );
        assert_eq!(got.borrow().as_slice(), b"put 0 0 10 100\r\nabc");
        match ended.into_inner() {
            Some(RecvEnd::Error(e)) => assert_eq!(e.raw_os_error(), Some(libc::ECONNRESET)),
            other => panic!("{other:?}"),
        }
        io.forget(0, ours.as_raw_fd());
        pump(&mut io, &mut |event| panic!("unexpected {}", kind(&event)), &|io| io.idle());
    }

    /// A connection forgotten while its hang-up watch is armed: the watch
    /// is cancelled, so once the ring is idle the socket closed by the
    /// server is gone and the peer reads the end of the stream.
    #[test]
    fn forgetting_a_connection_cancels_its_hangup_watch() {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let mut io = Uring::with_sizes(64, 8, 1024).expect("io_uring");
        let (ours, mut theirs) = tcp_pair();
        io.recv(0, ours.as_raw_fd());
        io.stop_recv(0, ours.as_raw_fd());
        let stopped = std::cell::Cell::new(false);
        pump(
            &mut io,
            &mut |e| stopped.set(stopped.get() | matches!(e, Event::RecvEnded(0, RecvEnd::Stopped))),
            &|_| stopped.get(),
        );
        assert!(!io.idle(), "the watch is armed");
        io.forget(0, ours.as_raw_fd());
        drop(ours);
        pump(&mut io, &mut |event| panic!("unexpected {}", kind(&event)), &|io| io.idle());
        theirs.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(theirs.read(&mut byte).expect("the end of the stream"), 0);
    }

    #[test]
    fn kernel_versions() {
        assert!(kernel_at_least("6.18.44", 6, 0));
        assert!(kernel_at_least("6.0.0-rc1", 6, 0));
        assert!(kernel_at_least("10.1", 6, 0));
        assert!(!kernel_at_least("5.19.17-generic", 6, 0));
        assert!(!kernel_at_least("", 6, 0));
    }
}
