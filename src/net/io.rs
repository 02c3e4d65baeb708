//! The boundary between the event loop and its two back ends.
//!
//! A back end starts operations and later reports their outcome as
//! [`Event`]s; it never calls into the server, and the server never blocks
//! in it except in [`Io::wait`]. Every operation the server starts ends in
//! exactly one event (a receive may first report data many times), and the
//! server closes a socket only once nothing is in flight on it, so no
//! operation is ever abandoned with a buffer the kernel might still use.
//!
//! | operation        | io_uring                         | epoll                              |
//! |------------------|----------------------------------|------------------------------------|
//! | accept           | multishot accept                 | readiness of the listener, accept4 |
//! | receive          | multishot recv, shared buffers   | readiness, read into one buffer    |
//! |   (its share)    | ends past RECV_BYTES_MAX         | ends at RECV_BYTES_MAX             |
//! | stop receiving   | cancel the recv                  | stop reading                       |
//! | send             | one send or writev               | writev now, or when writable       |
//! | receive into     | one recv (MSG_WAITALL)           | read now, or when readable         |
//! | stop accepting   | cancel the accept                | deregister the listener            |
//! | cancel a send    | cancel the send or writev        | forget the pending write           |
//! | signals          | read on a signalfd               | readiness of the signalfd          |
//! | wake-up (cores)  | read on the core's eventfd       | readiness of the eventfd, read     |
//! | log file write   | writev at an offset              | pwritev on the log's I/O thread    |
//! | log file sync    | fsync (data only for segments)   | fdatasync/fsync on that thread     |
//! | wait             | io_uring_enter with a timeout    | epoll_wait with a timeout          |
//!
//! A receive brings at most about [`RECV_BYTES_MAX`] and then ends
//! ([`RecvEnd::Paused`]); the server starts it again if it wants more. So
//! what a connection can have read ahead of what its session takes is
//! bounded by the back end, not by how much the client managed to send
//! before the server next looked.
//!
//! Stopping: every operation can be ended by the server (`stop_accept`,
//! `stop_recv`, `stop_recv_into`, `cancel_send`, `stop_signals`), and
//! [`Io::idle`] says when nothing the back end started is still in flight,
//! which is when the process may exit: an io_uring operation holds a
//! reference to its file, and one left for the kernel to reap when the ring
//! is torn down keeps a listening port bound after the process is gone.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use crate::memory::OutOfMemory;

/// What one receive may bring before it ends with [`RecvEnd::Paused`]:
/// on epoll exactly, on io_uring up to one receive buffer more (the kernel
/// checks its limit after each buffer). A session stops taking input
/// (its read gate closes) once it has a turn's worth of commands, so what
/// a client that sends and never reads has read ahead for it is about
/// one receive: 2,000 of them held 170 KB each of input before this bound
/// (a multishot receive took what the kernel had queued, and epoll read
/// 64 KiB, twice in some turns). A session runs at most 64 commands a
/// turn, which is seldom more than this many bytes; put bodies of 16 KiB
/// or more are received straight into their jobs, outside this bound.
pub const RECV_BYTES_MAX: usize = 16 * 1024;

/// How a receive ended.
#[derive(Debug)]
pub enum RecvEnd {
    /// The peer sent its last byte.
    Eof,
    /// Receiving failed (connection reset and the like).
    Error(io::Error),
    /// The server asked it to stop.
    Stopped,
    /// It brought its share ([`RECV_BYTES_MAX`]), or the back end ran out
    /// of room for a moment; receiving again brings more.
    Paused,
}

pub enum Event<'a> {
    /// A new connection (close-on-exec; non-blocking where the back end
    /// needs it).
    Accepted(RawFd),
    /// Accepting ended: asked to by [`Io::stop_accept`] (`None`), or on an
    /// error such as too many open files, after which the server starts it
    /// again after a pause. Exactly one follows every [`Io::accept`].
    AcceptEnded(Option<io::Error>),
    /// Bytes received on a connection; valid only during the call.
    Data(u32, &'a [u8]),
    /// A connection's receive ended; no more data will come unless the
    /// server starts receiving again.
    RecvEnded(u32, RecvEnd),
    /// A send finished: bytes written, or the error (ECANCELED after
    /// [`Io::cancel_send`], though a cancelled send may also report the
    /// bytes it wrote before it was cancelled).
    Sent(u32, io::Result<usize>),
    /// A receive into the server's own memory finished: bytes received
    /// (0 at end of stream), or the error (ECANCELED after
    /// [`Io::stop_recv_into`], which may also report a partial count).
    ReceivedInto(u32, io::Result<usize>),
    /// A signal arrived (SIGUSR1, SIGTERM, SIGINT).
    Signal(i32),
    /// Another core woke this one (its eventfd was written, and has been
    /// read): messages, handed-over connections or a stop may be waiting.
    Woken,
    /// The log's file operation in a lane finished: bytes written (0 for a
    /// sync), or the error.
    FileDone(crate::wal::flush::Lane, io::Result<usize>),
}

pub trait Io {
    /// Starts (or restarts) accepting on the listening socket; called only
    /// when accepting is not going on already.
    fn accept(&mut self, listener: RawFd);

    /// Asks accepting to end; `AcceptEnded` follows unless it already did.
    /// The listener may be closed only after it.
    fn stop_accept(&mut self);

    /// Starts reporting signals read from a signalfd.
    fn watch_signals(&mut self, signal_fd: RawFd);

    /// Stops reading the signalfd (the last step of a stop); once
    /// [`Io::idle`], no read of it is in flight.
    fn stop_signals(&mut self);

    /// Starts reporting [`Event::Woken`] each time the eventfd `wake_fd`
    /// is written (a core among several; see `net::cores`). The read stays
    /// armed until [`Io::stop_wake`], so a wake written while the loop runs
    /// ends its next wait at once.
    fn watch_wake(&mut self, wake_fd: RawFd);

    /// Stops reading the wake-up eventfd; once [`Io::idle`], no read of it
    /// is in flight.
    fn stop_wake(&mut self);

    /// Makes room for the state of connections up to `conn`, and for what
    /// each can have queued at once, fallibly, before the first
    /// [`Io::recv`] on it: a flood of connections makes the back end's
    /// tables large, and their growth must be refusable.
    fn reserve_conn(&mut self, conn: u32) -> Result<(), OutOfMemory>;

    /// Starts receiving on a connection.
    fn recv(&mut self, conn: u32, fd: RawFd);

    /// Asks a receive to end; `RecvEnded` follows unless it already did.
    fn stop_recv(&mut self, conn: u32, fd: RawFd);

    /// Writes `count` iovecs starting at `iov` in one attempt; `Sent`
    /// follows.
    ///
    /// # Safety
    /// The iovecs and the memory they point to must stay valid and
    /// unchanged until the `Sent` event for this connection.
    unsafe fn send(&mut self, conn: u32, fd: RawFd, iov: *const libc::iovec, count: usize);

    /// Receives up to `len` bytes straight into `buf`, once the
    /// connection's ordinary receive has ended; `ReceivedInto` follows.
    ///
    /// # Safety
    /// `buf` must stay valid for `len` bytes, and unused by the server,
    /// until the `ReceivedInto` event for this connection.
    unsafe fn recv_into(&mut self, conn: u32, fd: RawFd, buf: *mut u8, len: usize);

    /// Asks a receive started by [`Io::recv_into`] to end early;
    /// `ReceivedInto` follows unless it already did.
    fn stop_recv_into(&mut self, conn: u32);

    /// Asks a send to end without waiting for the peer to read; `Sent`
    /// follows unless it already did.
    fn cancel_send(&mut self, conn: u32);

    /// Starts one of the write-ahead log's file operations (a vectored
    /// write at an offset, or a sync) in `lane`; `FileDone` follows. At
    /// most one is in flight per lane, and the two lanes' operations run
    /// at the same time.
    ///
    /// # Safety
    /// The iovecs of a write and the memory they point to must stay valid
    /// and unchanged until the `FileDone` event.
    unsafe fn file_op(&mut self, lane: crate::wal::flush::Lane, request: crate::wal::flush::Request);

    /// The server is about to close `fd`: nothing it started is in flight
    /// on it. What the back end started on its own (io_uring's hang-up
    /// watch) it cancels here; that holds no memory of the server, and
    /// [`Io::idle`] counts it until it has been reaped.
    fn forget(&mut self, conn: u32, fd: RawFd);

    /// Starts what has been asked for so far now, without waiting for
    /// anything (io_uring submits its queue; epoll has started everything
    /// already). The loop calls it when it has more work before its next
    /// wait, so that replies already written are not held back by that work.
    fn submit(&mut self);

    /// Whether nothing the back end started is still in flight (every
    /// operation has reported its end), so the process may exit.
    fn idle(&self) -> bool;

    /// Waits until something happens or `timeout` passes, and reports every
    /// event that is ready to `handle`. An error is a fault of the back end
    /// itself (a broken ring, an unusable epoll descriptor), not of one
    /// connection: the server cannot go on.
    fn wait(&mut self, timeout: Option<Duration>, handle: &mut dyn FnMut(Event<'_>)) -> io::Result<()>;
}
