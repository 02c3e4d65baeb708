//! The epoll back end, for kernels or sandboxes without io_uring (Docker's
//! default seccomp profile refuses it, and so does
//! `kernel.io_uring_disabled`).
//!
//! Sockets are registered once, edge-triggered, for both directions. A
//! readable socket is read into one buffer shared by every connection (the
//! server consumes the bytes before the next read), at most
//! [`RECV_BYTES_MAX`] per receive: then the receive ends
//! ([`RecvEnd::Paused`]) and the server starts it again when it wants more,
//! so one busy connection cannot starve the others nor pile up input that
//! its session is not taking. Stopping an operation (`stop_accept`,
//! `stop_recv_into`, `cancel_send`) only forgets it, since nothing is in
//! the kernel's hands; its end is reported by the next `wait` like any
//! other completion. A send is attempted at once with writev and,
//! if the socket is full, again when it reports writable. Completions that
//! happen inside `send` or `stop_recv` are queued and reported by the next
//! `wait`, which then does not sleep.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use super::filethread::FileThread;
use super::io::{Event, Io, RECV_BYTES_MAX, RecvEnd};
use crate::memory::{self, OutOfMemory};
use crate::wal::flush::{LANES, Lane};

/// Bytes of the shared read buffer: one receive's share, which one read
/// can bring at once.
const READ_BUFFER_BYTES: usize = RECV_BYTES_MAX;
/// Events taken per epoll_wait.
const EVENTS_MAX: usize = 1024;
/// Entries a connection can have waiting in `later` at once: a read or a
/// receive into a put body to try, its send completed, its receive ended,
/// its receive into a body completed. Room for as many per connection is
/// made when it is accepted ([`Io::reserve_conn`]).
const LATER_PER_CONN_MAX: usize = 4;
/// Entries of `later` that belong to no connection: the accept ended, a
/// file operation that could not be started.
const LATER_SPARE: usize = 2;

const LISTENER_TOKEN: u64 = u64::MAX;
const SIGNAL_TOKEN: u64 = u64::MAX - 1;
/// The log's I/O threads, one per lane: `FILE_TOKEN - lane`.
const FILE_TOKEN: u64 = u64::MAX - 2;
/// The core's wake-up eventfd (a core among several).
const WAKE_TOKEN: u64 = u64::MAX - 4;

#[derive(Clone, Copy, Default)]
struct Conn {
    fd: RawFd,
    reading: bool,
    /// Bytes the current receive has brought.
    taken: usize,
    /// A send waiting for the socket to become writable.
    pending_send: Option<(*const libc::iovec, usize)>,
    /// A receive into the server's memory waiting for data.
    pending_recv: Option<(*mut u8, usize)>,
}

enum Later {
    Sent(u32, io::Result<usize>),
    RecvEnded(u32, RecvEnd),
    ReceivedInto(u32, io::Result<usize>),
    AcceptEnded,
    /// Read what may have arrived while reading was paused or cut short.
    Read(u32),
    /// Try a pending receive into the server's memory.
    ReadInto(u32),
    /// A file operation that could not be started.
    FileDone(Lane, io::Result<usize>),
}

pub struct Epoll {
    epfd: RawFd,
    events: Vec<libc::epoll_event>,
    conns: Vec<Conn>,
    listener: Option<RawFd>,
    signal_fd: Option<RawFd>,
    wake_fd: Option<RawFd>,
    later: VecDeque<Later>,
    buf: Box<[u8]>,
    /// The write-ahead log's I/O threads, one per lane, each started with
    /// its lane's first file operation (epoll cannot write or sync a file
    /// without blocking).
    files: [Option<FileThread>; LANES],
    /// A file operation is in flight there.
    file_busy: [bool; LANES],
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // Safety: a plain system call.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epfd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll {
            epfd,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_MAX],
            conns: Vec::new(),
            listener: None,
            signal_fd: None,
            wake_fd: None,
            later: VecDeque::new(),
            buf: vec![0u8; READ_BUFFER_BYTES].into_boxed_slice(),
            files: [None, None],
            file_busy: [false; LANES],
        })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event { events, u64: token };
        // Safety: a valid event struct for the duration of the call.
        if unsafe { libc::epoll_ctl(self.epfd, op, fd, &mut event) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn conn_mut(&mut self, conn: u32) -> &mut Conn {
        let i = conn as usize;
        if self.conns.len() <= i {
            self.conns.resize(i + 1, Conn::default());
        }
        &mut self.conns[i]
    }

    /// Reads a connection until it has nothing more, or this receive has
    /// brought its share ([`RECV_BYTES_MAX`]), when the receive ends
    /// paused. What a receive has brought is counted from its start
    /// ([`Io::recv`]) across turns.
    fn read(&mut self, conn: u32, handle: &mut dyn FnMut(Event<'_>)) {
        loop {
            let c = self.conns[conn as usize];
            if !c.reading {
                return;
            }
            if c.taken >= RECV_BYTES_MAX {
                self.conns[conn as usize].reading = false;
                handle(Event::RecvEnded(conn, RecvEnd::Paused));
                return;
            }
            let room = (RECV_BYTES_MAX - c.taken).min(self.buf.len());
            // Safety: reading into our own buffer, at most its length.
            let n = unsafe { libc::read(c.fd, self.buf.as_mut_ptr().cast(), room) };
            if n > 0 {
                self.conns[conn as usize].taken += n as usize;
                handle(Event::Data(conn, &self.buf[..n as usize]));
                continue;
            }
            let end = if n == 0 {
                RecvEnd::Eof
            } else {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return,
                    Some(libc::EINTR) => continue,
                    _ => RecvEnd::Error(e),
                }
            };
            self.conns[conn as usize].reading = false;
            handle(Event::RecvEnded(conn, end));
            return;
        }
    }

    /// Tries a pending receive into the server's memory; reports it once
    /// something (or the end of the stream, or an error) came.
    fn read_into(&mut self, conn: u32, handle: &mut dyn FnMut(Event<'_>)) {
        let c = self.conns[conn as usize];
        let Some((buf, len)) = c.pending_recv else { return };
        loop {
            // Safety: the server keeps `buf` valid for `len` bytes until the
            // ReceivedInto event.
            let n = unsafe { libc::read(c.fd, buf.cast(), len) };
            let outcome = if n >= 0 {
                Ok(n as usize)
            } else {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return,
                    Some(libc::EINTR) => continue,
                    _ => Err(e),
                }
            };
            self.conns[conn as usize].pending_recv = None;
            handle(Event::ReceivedInto(conn, outcome));
            return;
        }
    }

    fn write(fd: RawFd, iov: *const libc::iovec, count: usize) -> io::Result<usize> {
        loop {
            // Safety: the server keeps the iovecs and their memory alive
            // until the Sent event.
            let n = unsafe { libc::writev(fd, iov, count.min(libc::UIO_MAXIOV as usize) as libc::c_int) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    fn accept_all(&mut self, listener: RawFd, handle: &mut dyn FnMut(Event<'_>)) {
        loop {
            // Safety: plain accept4 without an address.
            let fd = unsafe {
                libc::accept4(
                    listener,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd >= 0 {
                handle(Event::Accepted(fd));
                continue;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => return,
                Some(libc::EINTR | libc::ECONNABORTED) => continue,
                _ => {
                    // Stop watching until the server starts accepting again,
                    // or a full descriptor table would make this spin.
                    let _ = self.ctl(libc::EPOLL_CTL_DEL, listener, 0, LISTENER_TOKEN);
                    self.listener = None;
                    handle(Event::AcceptEnded(Some(e)));
                    return;
                }
            }
        }
    }

    fn read_signals(&mut self, fd: RawFd, handle: &mut dyn FnMut(Event<'_>)) {
        let mut info = [0u8; 128];
        // Safety: reading whole signalfd_siginfo records into a local buffer.
        while unsafe { libc::read(fd, info.as_mut_ptr().cast(), info.len()) } == info.len() as isize {
            let signo = u32::from_ne_bytes(info[..4].try_into().expect("four bytes"));
            handle(Event::Signal(signo as i32));
        }
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // Safety: closing our own epoll descriptor.
        unsafe { libc::close(self.epfd) };
    }
}

impl Io for Epoll {
    fn accept(&mut self, listener: RawFd) {
        if self.listener.is_none()
            && self.ctl(libc::EPOLL_CTL_ADD, listener, libc::EPOLLIN as u32, LISTENER_TOKEN).is_ok()
        {
            self.listener = Some(listener);
        }
    }

    fn stop_accept(&mut self) {
        if let Some(listener) = self.listener.take() {
            let _ = self.ctl(libc::EPOLL_CTL_DEL, listener, 0, LISTENER_TOKEN);
            self.later.push_back(Later::AcceptEnded);
        }
    }

    fn watch_signals(&mut self, signal_fd: RawFd) {
        if self.ctl(libc::EPOLL_CTL_ADD, signal_fd, libc::EPOLLIN as u32, SIGNAL_TOKEN).is_ok() {
            self.signal_fd = Some(signal_fd);
        }
    }

    fn stop_signals(&mut self) {
        if let Some(fd) = self.signal_fd.take() {
            let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, 0, SIGNAL_TOKEN);
        }
    }

    fn watch_wake(&mut self, wake_fd: RawFd) {
        if self.ctl(libc::EPOLL_CTL_ADD, wake_fd, libc::EPOLLIN as u32, WAKE_TOKEN).is_ok() {
            self.wake_fd = Some(wake_fd);
        }
    }

    fn stop_wake(&mut self) {
        if let Some(fd) = self.wake_fd.take() {
            let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, 0, WAKE_TOKEN);
        }
    }

    fn recv(&mut self, conn: u32, fd: RawFd) {
        let c = self.conn_mut(conn);
        let first = c.fd != fd;
        *c = Conn { fd, reading: true, taken: 0, pending_send: c.pending_send.filter(|_| !first), pending_recv: None };
        if first {
            let events = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
            if let Err(e) = self.ctl(libc::EPOLL_CTL_ADD, fd, events, u64::from(conn)) {
                self.conns[conn as usize].reading = false;
                self.later.push_back(Later::RecvEnded(conn, RecvEnd::Error(e)));
                return;
            }
        }
        // Edge-triggered: data that came before now raised no new edge.
        self.later.push_back(Later::Read(conn));
    }

    fn stop_recv(&mut self, conn: u32, _fd: RawFd) {
        let c = self.conn_mut(conn);
        if c.reading {
            c.reading = false;
            self.later.push_back(Later::RecvEnded(conn, RecvEnd::Stopped));
        }
    }

    unsafe fn send(&mut self, conn: u32, fd: RawFd, iov: *const libc::iovec, count: usize) {
        match Epoll::write(fd, iov, count) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.conn_mut(conn).pending_send = Some((iov, count)),
            outcome => self.later.push_back(Later::Sent(conn, outcome)),
        }
    }

    unsafe fn recv_into(&mut self, conn: u32, _fd: RawFd, buf: *mut u8, len: usize) {
        self.conn_mut(conn).pending_recv = Some((buf, len));
        self.later.push_back(Later::ReadInto(conn));
    }

    fn stop_recv_into(&mut self, conn: u32) {
        if self.conn_mut(conn).pending_recv.take().is_some() {
            self.later.push_back(Later::ReceivedInto(conn, Err(io::Error::from_raw_os_error(libc::ECANCELED))));
        }
    }

    fn cancel_send(&mut self, conn: u32) {
        if self.conn_mut(conn).pending_send.take().is_some() {
            self.later.push_back(Later::Sent(conn, Err(io::Error::from_raw_os_error(libc::ECANCELED))));
        }
    }

    fn reserve_conn(&mut self, conn: u32) -> Result<(), OutOfMemory> {
        let conns = conn as usize + 1;
        memory::try_reserve_total(&mut self.conns, conns)?;
        let later = &mut self.later;
        let more = (LATER_SPARE + LATER_PER_CONN_MAX * conns).saturating_sub(later.len());
        memory::attempt(|| later.try_reserve(more))
    }

    fn forget(&mut self, conn: u32, fd: RawFd) {
        let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, 0, u64::from(conn));
        *self.conn_mut(conn) = Conn { fd: -1, reading: false, taken: 0, pending_send: None, pending_recv: None };
        self.later.retain(|l| match l {
            Later::Sent(c, _)
            | Later::RecvEnded(c, _)
            | Later::ReceivedInto(c, _)
            | Later::Read(c)
            | Later::ReadInto(c) => *c != conn,
            Later::AcceptEnded | Later::FileDone(..) => true,
        });
    }

    fn submit(&mut self) {}

    unsafe fn file_op(&mut self, lane: Lane, request: crate::wal::flush::Request) {
        let i = lane.index();
        if self.files[i].is_none() {
            let token = FILE_TOKEN - i as u64;
            match FileThread::spawn(if lane == Lane::Batch { "runnerbean-log" } else { "runnerbean-sync" }) {
                Ok(t) if self.ctl(libc::EPOLL_CTL_ADD, t.eventfd(), libc::EPOLLIN as u32, token).is_ok() => {
                    self.files[i] = Some(t);
                }
                Ok(_) | Err(_) => {
                    // No thread (or no way to hear from it): the operation
                    // fails, and the log tries again later.
                    let e = io::Error::last_os_error();
                    self.later.push_back(Later::FileDone(lane, Err(e)));
                    return;
                }
            }
        }
        self.file_busy[i] = true;
        let files = self.files[i].as_mut().expect("started above");
        // Safety: passed on with the caller's promise.
        unsafe { files.submit(0, request) };
    }

    fn idle(&self) -> bool {
        !self.file_busy.iter().any(|&b| b)
            && self.later.is_empty()
            && self.listener.is_none()
            && self.signal_fd.is_none()
            && self.wake_fd.is_none()
            && self.conns.iter().all(|c| !c.reading && c.pending_send.is_none() && c.pending_recv.is_none())
    }

    fn wait(&mut self, timeout: Option<Duration>, handle: &mut dyn FnMut(Event<'_>)) -> io::Result<()> {
        let timeout_ms = if !self.later.is_empty() {
            0
        } else {
            // Round up, so a timer never fires early.
            timeout.map_or(-1, |t| t.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32)
        };
        // Safety: the events buffer has EVENTS_MAX entries.
        let n = unsafe { libc::epoll_wait(self.epfd, self.events.as_mut_ptr(), EVENTS_MAX as i32, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted { Ok(()) } else { Err(e) };
        }
        // The entries waiting now, one at a time; what they add (a read
        // that used up its turn) waits for the next wait. Not taken, so
        // that the queue keeps the room made for it.
        for _ in 0..self.later.len() {
            let Some(later) = self.later.pop_front() else { break };
            match later {
                Later::Sent(conn, outcome) => handle(Event::Sent(conn, outcome)),
                Later::RecvEnded(conn, end) => handle(Event::RecvEnded(conn, end)),
                Later::ReceivedInto(conn, outcome) => handle(Event::ReceivedInto(conn, outcome)),
                Later::AcceptEnded => handle(Event::AcceptEnded(None)),
                Later::FileDone(lane, outcome) => handle(Event::FileDone(lane, outcome)),
                Later::Read(conn) => self.read(conn, handle),
                Later::ReadInto(conn) => self.read_into(conn, handle),
            }
        }
        for i in 0..n as usize {
            let event = self.events[i];
            let (bits, token) = (event.events, event.u64);
            match token {
                LISTENER_TOKEN => {
                    if let Some(listener) = self.listener {
                        self.accept_all(listener, handle);
                    }
                }
                SIGNAL_TOKEN => {
                    if let Some(fd) = self.signal_fd {
                        self.read_signals(fd, handle);
                    }
                }
                WAKE_TOKEN => {
                    if let Some(fd) = self.wake_fd {
                        let mut count = 0u64;
                        // Safety: reads 8 bytes into a `u64` that lives across
                        // the call; a non-blocking eventfd.
                        if unsafe { libc::read(fd, (&raw mut count).cast(), 8) } == 8 {
                            handle(Event::Woken);
                        }
                    }
                }
                token if token == FILE_TOKEN || token == FILE_TOKEN - 1 => {
                    let i = (FILE_TOKEN - token) as usize;
                    let lane = Lane::from_index(i).expect("a lane's token");
                    if let Some(files) = self.files[i].as_mut() {
                        let busy = &mut self.file_busy[i];
                        files.completions(|_, outcome| {
                            *busy = false;
                            handle(Event::FileDone(lane, outcome));
                        });
                    }
                }
                token => {
                    let conn = token as u32;
                    let Some(c) = self.conns.get(conn as usize).copied() else { continue };
                    if c.fd < 0 {
                        continue;
                    }
                    if bits & (libc::EPOLLOUT | libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0
                        && let Some((iov, count)) = c.pending_send
                    {
                        match Epoll::write(c.fd, iov, count) {
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                            outcome => {
                                self.conns[conn as usize].pending_send = None;
                                handle(Event::Sent(conn, outcome));
                            }
                        }
                    }
                    if bits & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                        self.read(conn, handle);
                        self.read_into(conn, handle);
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A receive on a socket with far more waiting brings exactly its
    /// share and ends paused, in one wait or across several; the next one,
    /// started as the server does, brings the next share, until every
    /// byte has come, in order.
    #[test]
    fn a_receive_brings_its_share_and_ends_paused() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        const SENT_BYTES: usize = 5 * RECV_BYTES_MAX + 100;
        let mut io = Epoll::new().expect("epoll");
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let sent: Vec<u8> = (0..SENT_BYTES).map(|i| (i % 251) as u8).collect();
        let writer = {
            let sent = sent.clone();
            std::thread::spawn(move || (&theirs).write_all(&sent).map(|()| theirs))
        };
        let fd = ours.as_raw_fd();
        io.recv(0, fd);
        let (mut got, mut shares) = (Vec::new(), vec![0]);
        while got.len() < SENT_BYTES {
            let mut paused = false;
            io.wait(Some(Duration::from_millis(100)), &mut |event| match event {
                Event::Data(0, data) => {
                    got.extend_from_slice(data);
                    *shares.last_mut().expect("one share at least") += data.len();
                }
                Event::RecvEnded(0, RecvEnd::Paused) => paused = true,
                Event::RecvEnded(_, end) => panic!("ended: {end:?}"),
                _ => {}
            })
            .expect("wait");
            if paused {
                shares.push(0);
                io.recv(0, fd);
            }
        }
        assert!(got == sent, "the bytes came in order");
        let full = &shares[..shares.len() - 1];
        assert!(full.len() >= 5 && full.iter().all(|&n| n == RECV_BYTES_MAX), "{shares:?}");
        drop(writer.join());
        io.forget(0, fd);
    }
}
