//! How a core that published messages wakes the core that sleeps on them.
//!
//! A sleeping core waits in its loop (`io_uring_enter`, or `epoll_wait`)
//! for any of its events, so the wake-up must be one of those events: an
//! eventfd that the loop keeps a read armed on (io_uring) or watches for
//! input (epoll). Writing to it is a system call, which is why the rings'
//! sleep protocol asks for one only when the receiver said it was going to
//! sleep, and at most once per ring per announcement.
//!
//! The mechanism sits behind [`Wake`] so that tests can count wakes, and so
//! that io_uring's `MSG_RING` (which posts a completion straight into the
//! other core's ring) can replace the eventfd later without touching the
//! rings.
//!
//! # What it must never do
//! Block, or lose a wake: a write that finds the counter saturated leaves
//! a wake pending, which is all that is asked.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Makes a core that sleeps, or is about to, run its loop once more.
pub trait Wake: Send + Sync {
    fn wake(&self);
}

/// A core's wake-up: a non-blocking eventfd. Producers on other cores hold
/// it through an `Arc` and write to it; the owning core's loop reads it.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // Non-blocking: epoll needs it, and a wake must never block the
        // core that sends it. io_uring still completes a read on it only
        // when the counter is non-zero.
        // Safety: a plain system call with no pointers.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // Safety: a descriptor we just made and nothing else owns.
        Ok(EventFd { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Takes the wakes that arrived since the last call, and says how many:
    /// zero when none did. The epoll back end calls it when the descriptor
    /// is readable; an io_uring read on the descriptor does the same.
    pub fn clear(&self) -> u64 {
        let mut count = 0u64;
        loop {
            // Safety: reads 8 bytes into a `u64` that lives across the call.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), (&raw mut count).cast(), 8) };
            if n == 8 {
                return count;
            }
            let error = io::Error::last_os_error();
            match error.kind() {
                io::ErrorKind::WouldBlock => return 0,
                io::ErrorKind::Interrupted => continue,
                // An eventfd read of 8 bytes into valid memory has no other
                // way to fail; anything else means the descriptor is not
                // ours any more, and the core could no longer be woken.
                _ => panic!("reading a core's wake-up eventfd failed: {error}"),
            }
        }
    }
}

impl Wake for EventFd {
    fn wake(&self) {
        let one = 1u64;
        loop {
            // Safety: writes 8 bytes from a `u64` that lives across the call.
            let n = unsafe { libc::write(self.fd.as_raw_fd(), (&raw const one).cast(), 8) };
            if n == 8 {
                return;
            }
            let error = io::Error::last_os_error();
            match error.kind() {
                // The counter is at its maximum: a wake is pending already.
                io::ErrorKind::WouldBlock => return,
                io::ErrorKind::Interrupted => continue,
                // As in `clear`: no other failure is possible on our own
                // descriptor, and a wake that cannot be sent would leave a
                // core asleep on messages; stopping is better.
                _ => panic!("writing a core's wake-up eventfd failed: {error}"),
            }
        }
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_accumulate_until_cleared() {
        let e = EventFd::new().unwrap();
        assert_eq!(e.clear(), 0, "nothing pending on a new eventfd");
        e.wake();
        e.wake();
        e.wake();
        assert_eq!(e.clear(), 3);
        assert_eq!(e.clear(), 0);
    }

    #[test]
    fn a_wake_makes_the_descriptor_readable() {
        let e = EventFd::new().unwrap();
        let readable = |e: &EventFd| {
            let mut p = libc::pollfd { fd: e.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // Safety: one pollfd that lives across the call; no wait.
            let n = unsafe { libc::poll(&mut p, 1, 0) };
            assert!(n >= 0);
            n == 1 && p.revents & libc::POLLIN != 0
        };
        assert!(!readable(&e));
        e.wake();
        assert!(readable(&e));
        e.clear();
        assert!(!readable(&e));
    }
}
