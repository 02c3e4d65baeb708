//! The io_uring back end: one ring per core, driven directly (the io-uring
//! crate) rather than through an async runtime.
//!
//! * Each connection has one multishot receive armed for its whole life;
//!   data lands in a ring of provided buffers shared by all connections,
//!   so an idle connection holds no buffer and no receive is re-armed per
//!   message.
//! * Sends are single writev operations on memory the server keeps alive
//!   until their completion.
//! * Everything an iteration queues is submitted by the one
//!   `io_uring_enter` that also waits for the next completions.
//! * The ring is single-issuer and completions are collected when the loop
//!   enters the kernel (DEFER_TASKRUN where the kernel has it, else
//!   COOP_TASKRUN) instead of interrupting it.
//!
//! Needs Linux 6.0 (multishot receive, provided buffer rings); the server
//! uses epoll on older kernels or where io_uring is refused.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::{IoUring, cqueue, opcode, squeue, types};

use super::io::{Event, Io, RecvEnd};

/// Submission queue entries.
const SQ_ENTRIES: u32 = 4096;
/// Provided receive buffers, shared by all connections (a power of two).
const RECV_BUFFERS: u16 = 128;
/// Bytes per receive buffer.
const RECV_BUFFER_BYTES: usize = 16 * 1024;
/// The buffer group id of the receive buffers.
const BUFFER_GROUP: u16 = 0;

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

fn tag(kind: u64, conn: u32) -> u64 {
    kind << KIND_SHIFT | u64::from(conn)
}

fn tag_generation(kind: u64, conn: u32, generation: u16) -> u64 {
    tag(kind, conn) | u64::from(generation) << GENERATION_SHIFT
}

/// What the back end knows of a connection.
#[derive(Clone, Copy)]
struct ConnSlot {
    fd: RawFd,
    /// A cancel of its receive was asked for.
    stopping: bool,
    /// Bumped for every receive started on the slot.
    generation: u16,
}

/// Bytes of one `signalfd_siginfo`.
const SIGINFO_BYTES: usize = 128;

pub struct Uring {
    ring: IoUring,
    buffers: BufferRing,
    conns: Vec<ConnSlot>,
    listener: Option<RawFd>,
    signal_fd: Option<RawFd>,
    signal_buf: Box<[u8; SIGINFO_BYTES]>,
    completions: Vec<cqueue::Entry>,
    /// Entries that found the submission queue full while the completion
    /// queue was full too; submitted after the next wait.
    overflow: Vec<squeue::Entry>,
}

impl Uring {
    pub fn new() -> io::Result<Uring> {
        Uring::with_buffers(RECV_BUFFERS, RECV_BUFFER_BYTES)
    }

    /// A ring with `count` (a power of two) receive buffers of `bytes` each.
    fn with_buffers(count: u16, bytes: usize) -> io::Result<Uring> {
        assert!(count.is_power_of_two(), "buffer count must be a power of two");
        let release = crate::sys::uname().map(|u| u.release).unwrap_or_default();
        if !kernel_at_least(&release, 6, 0) {
            return Err(io::Error::new(io::ErrorKind::Unsupported, format!("kernel {release} is older than 6.0")));
        }
        let ring = build_ring()?;
        let buffers = BufferRing::new(&ring, count, bytes)?;
        Ok(Uring {
            ring,
            buffers,
            conns: Vec::new(),
            listener: None,
            signal_fd: None,
            signal_buf: Box::new([0; SIGINFO_BYTES]),
            completions: Vec::with_capacity(1024),
            overflow: Vec::new(),
        })
    }

    /// Queues an operation, submitting first if the queue is full.
    fn push(&mut self, entry: squeue::Entry) {
        loop {
            // Safety: every buffer an entry points to is kept alive by the
            // server or by this struct until its completion.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            if let Err(e) = self.ring.submit() {
                assert!(e.raw_os_error() == Some(libc::EBUSY), "io_uring submit: {e}");
                // The completion queue must be drained first: keep the
                // entry for right after the next wait.
                self.overflow.push(entry);
                return;
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

    fn recv_entry(conn: u32, slot: ConnSlot) -> squeue::Entry {
        opcode::RecvMulti::new(types::Fd(slot.fd), BUFFER_GROUP).build().user_data(tag_generation(
            RECV,
            conn,
            slot.generation,
        ))
    }

    fn conn_mut(&mut self, conn: u32) -> &mut ConnSlot {
        let i = conn as usize;
        if self.conns.len() <= i {
            self.conns.resize(i + 1, ConnSlot { fd: -1, stopping: false, generation: 0 });
        }
        &mut self.conns[i]
    }
}

impl Io for Uring {
    fn accept(&mut self, listener: RawFd) {
        self.listener = Some(listener);
        self.push(Uring::accept_entry(listener));
    }

    fn watch_signals(&mut self, signal_fd: RawFd) {
        self.signal_fd = Some(signal_fd);
        self.read_signal(signal_fd);
    }

    fn recv(&mut self, conn: u32, fd: RawFd) {
        let slot = self.conn_mut(conn);
        *slot = ConnSlot { fd, stopping: false, generation: slot.generation.wrapping_add(1) };
        let slot = *slot;
        self.push(Uring::recv_entry(conn, slot));
    }

    fn stop_recv(&mut self, conn: u32, _fd: RawFd) {
        let slot = self.conn_mut(conn);
        slot.stopping = true;
        let target = tag_generation(RECV, conn, slot.generation);
        let cancel = opcode::AsyncCancel::new(target).build().user_data(tag(CANCEL, conn));
        self.push(cancel);
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

    fn forget(&mut self, conn: u32, _fd: RawFd) {
        let slot = self.conn_mut(conn);
        slot.fd = -1;
        slot.stopping = false;
    }

    fn wait(&mut self, timeout: Option<Duration>, handle: &mut dyn FnMut(Event<'_>)) -> io::Result<()> {
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
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY)) => {}
            Err(e) => return Err(e),
        }
        for entry in std::mem::take(&mut self.overflow) {
            self.push(entry);
        }
        self.completions.clear();
        self.completions.extend(self.ring.completion());
        let mut returned = false;
        for i in 0..self.completions.len() {
            let cqe = self.completions[i].clone();
            let (data, res, flags) = (cqe.user_data(), cqe.result(), cqe.flags());
            let conn = data as u32;
            let generation = (data >> GENERATION_SHIFT) as u16;
            let more = cqueue::more(flags);
            match data >> KIND_SHIFT {
                ACCEPT => {
                    if res >= 0 {
                        handle(Event::Accepted(res));
                    } else {
                        handle(Event::AcceptFailed(io::Error::from_raw_os_error(-res)));
                    }
                    if !more
                        && res >= 0
                        && let Some(listener) = self.listener
                    {
                        // Ended without an error (it can happen): restart.
                        // After an error the server restarts it later.
                        self.push(Uring::accept_entry(listener));
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
                        returned = true;
                    }
                    if more || !current {
                        continue;
                    }
                    let slot = slot.expect("checked by current");
                    let stopping = slot.stopping;
                    let end = match res {
                        0 => Some(RecvEnd::Eof),
                        _ if stopping => Some(RecvEnd::Stopped),
                        // Out of buffers, or ended after data: arm again.
                        r if r > 0 || r == -libc::ENOBUFS => None,
                        r if r == -libc::ECANCELED => Some(RecvEnd::Stopped),
                        _ => Some(RecvEnd::Error),
                    };
                    match end {
                        Some(end) => handle(Event::RecvEnded(conn, end)),
                        None => self.push(Uring::recv_entry(conn, slot)),
                    }
                }
                SEND => handle(Event::Sent(conn, outcome(res))),
                RECV_INTO => handle(Event::ReceivedInto(conn, outcome(res))),
                SIGNAL => {
                    if res as usize == SIGINFO_BYTES {
                        let signo = u32::from_ne_bytes(self.signal_buf[..4].try_into().expect("four bytes"));
                        handle(Event::Signal(signo as i32));
                    }
                    if let Some(fd) = self.signal_fd {
                        self.read_signal(fd);
                    }
                }
                _ => {} // CANCEL: the outcome shows on the receive itself.
            }
        }
        if returned {
            self.buffers.publish();
        }
        Ok(())
    }
}

fn outcome(res: i32) -> io::Result<usize> {
    if res >= 0 { Ok(res as usize) } else { Err(io::Error::from_raw_os_error(-res)) }
}

fn build_ring() -> io::Result<IoUring> {
    let mut deferred = IoUring::builder();
    deferred.setup_single_issuer().setup_defer_taskrun().setup_cqsize(SQ_ENTRIES * 2);
    if let Ok(ring) = deferred.build(SQ_ENTRIES) {
        return Ok(ring);
    }
    let mut cooperative = IoUring::builder();
    cooperative.setup_single_issuer().setup_coop_taskrun().setup_cqsize(SQ_ENTRIES * 2);
    cooperative.build(SQ_ENTRIES)
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
        // Safety: the entries live in the mapping above until drop, which
        // unregisters them first.
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
        // Safety: unmapping what new() mapped. The ring that used it is
        // being dropped too (the ring field is declared first).
        unsafe { libc::munmap(self.entries.cast(), self.entries_bytes) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two 64-byte receive buffers for four connections with 300 bytes
    /// each: receives run out of buffers again and again and must be armed
    /// again, and every byte must arrive, in order.
    #[test]
    fn receives_survive_running_out_of_buffers() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let mut io = Uring::with_buffers(2, 64).expect("io_uring");
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
            io.wait(Some(Duration::from_millis(50)), &mut |event| {
                if let Event::Data(conn, bytes) = event {
                    got[conn as usize].extend_from_slice(bytes);
                }
            })
            .unwrap();
        }
        assert_eq!(got, sent);
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
