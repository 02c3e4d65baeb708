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
//! | stop receiving   | cancel the recv                  | stop reading                       |
//! | send             | one send or writev               | writev now, or when writable       |
//! | receive into     | one recv (MSG_WAITALL)           | read now, or when readable         |
//! | signals          | read on a signalfd               | readiness of the signalfd          |
//! | wait             | io_uring_enter with a timeout    | epoll_wait with a timeout          |

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// How a receive ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvEnd {
    /// The peer sent its last byte.
    Eof,
    /// Receiving failed (connection reset and the like).
    Error,
    /// The server asked it to stop.
    Stopped,
}

pub enum Event<'a> {
    /// A new connection (close-on-exec; non-blocking where the back end
    /// needs it).
    Accepted(RawFd),
    /// Accepting stopped on an error (for example too many open files);
    /// the server starts it again after a pause.
    AcceptFailed(io::Error),
    /// Bytes received on a connection; valid only during the call.
    Data(u32, &'a [u8]),
    /// A connection's receive ended; no more data will come unless the
    /// server starts receiving again.
    RecvEnded(u32, RecvEnd),
    /// A send finished: bytes written, or the error.
    Sent(u32, io::Result<usize>),
    /// A receive into the server's own memory finished: bytes received
    /// (0 at end of stream), or the error.
    ReceivedInto(u32, io::Result<usize>),
    /// A signal arrived (SIGUSR1, SIGTERM, SIGINT).
    Signal(i32),
}

pub trait Io {
    /// Starts (or restarts) accepting on the listening socket.
    fn accept(&mut self, listener: RawFd);

    /// Starts reporting signals read from a signalfd.
    fn watch_signals(&mut self, signal_fd: RawFd);

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

    /// The server is about to close `fd`: nothing is in flight on it.
    fn forget(&mut self, conn: u32, fd: RawFd);

    /// Waits until something happens or `timeout` passes, and reports every
    /// event that is ready to `handle`.
    fn wait(&mut self, timeout: Option<Duration>, handle: &mut dyn FnMut(Event<'_>)) -> io::Result<()>;
}
