//! The network shell around a shard: one core's event loop, its listener,
//! its connections, its timer and its signals.
//!
//! A core runs a single-threaded runtime: tokio-uring (io_uring, with every
//! operation of a loop iteration submitted in one system call when the
//! thread parks) or, where io_uring is refused, plain tokio on epoll. Both
//! run exactly this code; the difference is confined to [`stream`].
//!
//! The shard is shared by the core's tasks through a `RefCell` that is
//! never held across an `.await`, so no two tasks ever see it borrowed.
//!
//! Tasks per core: the accept loop, a timer that sleeps until the shard's
//! next deadline, the signal handlers, and a reader and a writer per
//! connection ([`conn`]).

mod conn;
pub mod listen;
pub mod stream;

use std::cell::{Cell, RefCell};
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;

use crate::engine::Nanos;
use crate::shard::{ConnId, Shard};
use conn::ConnIo;
use listen::BoundListener;
use stream::{Listener, Stream};

/// Submission queue entries of each core's ring.
const RING_ENTRIES: u32 = 1024;

/// How long to pause accepting after an accept error such as EMFILE, so a
/// full descriptor table does not turn the loop into a spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);

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

/// A runtime for one core, already created so that the choice of back end
/// is known before the shard is built.
pub enum Runtime {
    Uring(tokio_uring::Runtime),
    Epoll(tokio::runtime::Runtime),
}

impl Runtime {
    /// io_uring unless `epoll` is asked for; when the kernel refuses a ring
    /// and io_uring was not insisted on, epoll, with the reason.
    pub fn new(prefer_uring: bool, insist_uring: bool) -> io::Result<(Runtime, Option<String>)> {
        if prefer_uring {
            // Completions are collected when the loop next enters the kernel
            // rather than by interrupting it (COOP_TASKRUN), and only this
            // thread submits (SINGLE_ISSUER). DEFER_TASKRUN would go further
            // but hangs tokio-uring, which waits for the ring through epoll.
            // Kernels before 6.0 refuse these flags; they get a plain ring.
            let mut tuned = tokio_uring::uring_builder();
            tuned.setup_coop_taskrun().setup_single_issuer();
            let mut builder = tokio_uring::builder();
            builder.entries(RING_ENTRIES).uring_builder(&tuned);
            let attempt = tokio_uring::Runtime::new(&builder).or_else(|_| {
                let mut plain = tokio_uring::builder();
                plain.entries(RING_ENTRIES);
                tokio_uring::Runtime::new(&plain)
            });
            match attempt {
                Ok(rt) => return Ok((Runtime::Uring(rt), None)),
                Err(e) if insist_uring => return Err(e),
                Err(e) => {
                    let why = format!("io_uring unavailable ({e}); using epoll");
                    return Ok((Runtime::Epoll(epoll_runtime()?), Some(why)));
                }
            }
        }
        Ok((Runtime::Epoll(epoll_runtime()?), None))
    }

    pub fn backend(&self) -> Backend {
        match self {
            Runtime::Uring(_) => Backend::Uring,
            Runtime::Epoll(_) => Backend::Epoll,
        }
    }

    /// Serves until SIGTERM or SIGINT.
    pub fn serve(self, shard: Shard, listener: BoundListener, verbosity: u8) -> io::Result<()> {
        let backend = self.backend();
        match self {
            Runtime::Uring(rt) => rt.block_on(serve_core(shard, listener, verbosity, backend)),
            Runtime::Epoll(rt) => {
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, serve_core(shard, listener, verbosity, backend))
            }
        }
    }
}

fn epoll_runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
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

    fn instant(&self, at: Nanos) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.origin + Duration::from_nanos(at))
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::new()
    }
}

/// One core's shared state.
pub struct Core {
    shard: RefCell<Shard>,
    clock: Clock,
    backend: Backend,
    verbosity: u8,
    conns: RefCell<Vec<Option<Rc<ConnIo>>>>,
    dirty: RefCell<Vec<ConnId>>,
    timer_wake: Notify,
    /// The deadline the timer task sleeps until.
    armed: Cell<Option<Nanos>>,
}

impl Core {
    /// After the shard ran: wake the writers (and held-back readers) of
    /// every connection whose session changed, and the timer if the shard's
    /// next deadline moved earlier.
    fn publish(&self, shard: &mut Shard) {
        let mut dirty = self.dirty.borrow_mut();
        shard.take_dirty(&mut dirty);
        let conns = self.conns.borrow();
        for conn in dirty.drain(..) {
            if let Some(Some(io)) = conns.get(conn.0 as usize) {
                io.write_wake.notify_one();
                io.read_wake.notify_one();
            }
        }
        if let Some(next) = shard.next_deadline()
            && self.armed.get().is_none_or(|armed| next < armed)
        {
            self.armed.set(Some(next));
            self.timer_wake.notify_one();
        }
    }

    fn register(&self, conn: ConnId, io: Rc<ConnIo>) {
        let mut conns = self.conns.borrow_mut();
        let i = conn.0 as usize;
        if conns.len() <= i {
            conns.resize(i + 1, None);
        }
        conns[i] = Some(io);
    }

    fn unregister(&self, conn: ConnId) {
        self.conns.borrow_mut()[conn.0 as usize] = None;
    }
}

async fn serve_core(shard: Shard, bound: BoundListener, verbosity: u8, backend: Backend) -> io::Result<()> {
    // Signal handlers first, so a signal sent once clients can connect is
    // never met by the default action.
    let mut drain = signal(SignalKind::user_defined1())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut shard = shard;
    if crate::sys::drain_requested() {
        shard.set_draining();
    }
    let listener = Listener::from_bound(bound)?;
    let core = Rc::new(Core {
        shard: RefCell::new(shard),
        clock: Clock::new(),
        backend,
        verbosity,
        conns: RefCell::new(Vec::new()),
        dirty: RefCell::new(Vec::new()),
        timer_wake: Notify::new(),
        armed: Cell::new(None),
    });
    tokio::task::spawn_local(timer(core.clone()));
    tokio::task::spawn_local(accept_loop(core.clone(), listener));
    let drain_core = core.clone();
    tokio::task::spawn_local(async move {
        while drain.recv().await.is_some() {
            drain_core.shard.borrow_mut().set_draining();
        }
    });
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    Ok(())
}

async fn accept_loop(core: Rc<Core>, listener: Listener) {
    loop {
        let accepted = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("runnerbean: accept(): {e}");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let stream = match Stream::adopt(accepted, core.backend == Backend::Uring) {
            Ok(stream) => stream,
            Err(e) => {
                eprintln!("runnerbean: adopting a connection: {e}");
                continue;
            }
        };
        let fd = stream.raw_fd();
        if core.verbosity > 0 {
            println!("accept {fd}");
        }
        let conn = core.shard.borrow_mut().open(fd);
        let io = Rc::new(ConnIo::new(stream));
        core.register(conn, io.clone());
        tokio::task::spawn_local(conn::reader(core.clone(), conn, io.clone()));
        tokio::task::spawn_local(conn::writer(core.clone(), conn, io));
    }
}

/// Sleeps until the shard's next deadline and lets it act. Timers are
/// tokio's, not io_uring operations, so racing them against a wake-up is
/// safe.
async fn timer(core: Rc<Core>) {
    loop {
        let next = core.shard.borrow().next_deadline();
        core.armed.set(next);
        match next {
            None => {
                core.timer_wake.notified().await;
                continue;
            }
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(core.clock.instant(at)) => {}
                    _ = core.timer_wake.notified() => continue,
                }
            }
        }
        let now = core.clock.now();
        let mut shard = core.shard.borrow_mut();
        shard.tick(now);
        core.publish(&mut shard);
    }
}
