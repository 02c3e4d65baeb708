//! A thread that carries out the log's file operations for the epoll back
//! end, which has no way to write or sync a file without blocking the loop.
//!
//! The loop hands it one [`Request`] at a time (the log's flush never has
//! more than one in flight); the thread performs it with `pwritev`,
//! `fdatasync` or `fsync`, puts the outcome in a slot, and adds one to an
//! eventfd that the loop's epoll set watches. The io_uring back end does
//! not need it: there the same requests are ring operations.
//!
//! # What it must never do
//! Outlive or drop an operation: dropping the thread's handle waits for the
//! operation in progress to finish before it returns, so the memory the
//! loop lent the operation is never freed under it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

use crate::wal::flush::Request;

/// A request and the token the loop knows it by.
struct Job {
    token: u64,
    request: Request,
}

// Safety: the iovecs of a write point to memory that the loop keeps alive
// and unchanged until it has read the completion (the contract of
// `FileThread::submit`); nothing else in a request is tied to a thread.
unsafe impl Send for Job {}

pub struct FileThread {
    requests: Option<Sender<Job>>,
    done: Receiver<(u64, io::Result<usize>)>,
    eventfd: OwnedFd,
    thread: Option<JoinHandle<()>>,
    /// Requests the thread could not take (it had stopped).
    lost: Vec<u64>,
}

impl FileThread {
    pub fn spawn(name: &str) -> io::Result<FileThread> {
        // Safety: a plain system call.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // Safety: a descriptor we just made and own.
        let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
        let (requests, jobs) = mpsc::channel::<Job>();
        let (results, done) = mpsc::channel();
        let wake = eventfd.as_raw_fd();
        let thread = std::thread::Builder::new().name(name.to_string()).spawn(move || {
            for job in jobs {
                let outcome = perform(job.request);
                if results.send((job.token, outcome)).is_err() {
                    return;
                }
                let one: u64 = 1;
                // Safety: writing 8 bytes to an eventfd that outlives the
                // thread (the handle joins before closing it).
                unsafe { libc::write(wake, (&raw const one).cast(), 8) };
            }
        })?;
        Ok(FileThread { requests: Some(requests), done, eventfd, thread: Some(thread), lost: Vec::new() })
    }

    /// The descriptor that becomes readable when an operation completes.
    pub fn eventfd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    /// Starts an operation.
    ///
    /// # Safety
    /// The memory a write's iovecs point to must stay valid and unchanged
    /// until its completion has been taken with [`FileThread::completions`].
    pub unsafe fn submit(&mut self, token: u64, request: Request) {
        let sender = self.requests.as_ref().expect("the thread runs until drop");
        if sender.send(Job { token, request }).is_err() {
            // The thread is gone: the operation fails rather than staying
            // unanswered, and the loop is woken to hear it.
            self.lost.push(token);
            let one: u64 = 1;
            // Safety: writing 8 bytes to our own eventfd.
            unsafe { libc::write(self.eventfd.as_raw_fd(), (&raw const one).cast(), 8) };
        }
    }

    /// Hands every completed operation to `each`, clearing the eventfd.
    pub fn completions(&mut self, mut each: impl FnMut(u64, io::Result<usize>)) {
        let mut count = [0u8; 8];
        // Safety: reading the eventfd's counter into a local buffer.
        unsafe { libc::read(self.eventfd.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
        while let Ok((token, outcome)) = self.done.try_recv() {
            each(token, outcome);
        }
        for token in self.lost.drain(..) {
            each(token, Err(io::Error::other("the log's I/O thread has stopped")));
        }
    }
}

impl Drop for FileThread {
    fn drop(&mut self) {
        // Closing the channel ends the thread once it has finished what it
        // was doing.
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Carries out one request, retrying on EINTR.
fn perform(request: Request) -> io::Result<usize> {
    loop {
        // Safety: the iovecs are valid by the submit contract; the
        // descriptors belong to the log until the completion is read.
        let r = unsafe {
            match request {
                Request::Write { fd, iov, count, offset, dsync } => {
                    let flags = if dsync { libc::RWF_DSYNC } else { 0 };
                    libc::pwritev2(fd, iov, count as libc::c_int, offset as libc::off_t, flags) as i64
                }
                Request::Sync { fd, data_only: true } => i64::from(libc::fdatasync(fd)),
                Request::Sync { fd, data_only: false } => i64::from(libc::fsync(fd)),
            }
        };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn writes_and_syncs_complete_through_the_eventfd() {
        let dir = std::env::temp_dir().join(format!("rb-filethread-{}", std::process::id()));
        let file = std::fs::File::create(&dir).unwrap();
        let mut t = FileThread::spawn("test-file-io").unwrap();
        let parts = [b"hello ".to_vec(), b"world".to_vec()];
        let iov: Vec<libc::iovec> =
            parts.iter().map(|p| libc::iovec { iov_base: p.as_ptr().cast_mut().cast(), iov_len: p.len() }).collect();
        let fd = file.as_raw_fd();
        // Safety: `parts` and `iov` outlive the completion read below.
        unsafe { t.submit(1, Request::Write { fd, iov: iov.as_ptr(), count: 2, offset: 3, dsync: true }) };
        let mut got = Vec::new();
        while got.is_empty() {
            let mut pfd = libc::pollfd { fd: t.eventfd(), events: libc::POLLIN, revents: 0 };
            // Safety: polling one valid descriptor.
            unsafe { libc::poll(&mut pfd, 1, 5000) };
            t.completions(|token, outcome| got.push((token, outcome.unwrap())));
        }
        assert_eq!(got, vec![(1, 11)]);
        // Safety: a sync has no memory to keep alive.
        unsafe { t.submit(2, Request::Sync { fd, data_only: true }) };
        let mut got = Vec::new();
        while got.is_empty() {
            t.completions(|token, outcome| got.push((token, outcome.is_ok())));
        }
        assert_eq!(got, vec![(2, true)]);
        drop(t);
        let mut text = Vec::new();
        std::fs::File::open(&dir).unwrap().read_to_end(&mut text).unwrap();
        assert_eq!(text, b"\0\0\0hello world");
        std::fs::remove_file(&dir).unwrap();
    }
}
