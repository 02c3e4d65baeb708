//! The connection task: the one owner of a connection's socket.
//!
//! Callers hand it encoded commands through a channel, each with a one-shot sender for its
//! reply. The task writes commands as they come (many per write when they queue up) and reads
//! replies as they come, and since a beanstalkd server answers in order, the n-th reply goes
//! to the n-th command written: that is all the pipelining there is. Reading and writing run
//! side by side in one `select!`, so a client that has written a long pipeline never stops
//! reading replies while it writes (which would deadlock once both sockets' buffers fill).
//!
//! # Invariants
//! * `pending` holds exactly the commands written or being written whose reply has not come,
//!   oldest first; a reply that arrives when it is empty is a protocol error.
//! * The command at the front must make progress: a reply, or bytes read or written, within
//!   the read timeout (plus the time a reserve asks to wait; a plain `reserve` may wait
//!   forever). Otherwise the connection is closed with [`Error::ReplyTimeout`], since a late
//!   reply would be taken for the next command's.
//! * Once the connection fails, every pending command and every later one gets the same error,
//!   and the task ends. It never reconnects by itself: the server's state for the connection
//!   (used tube, watched tubes, reserved jobs) would silently be lost.
//! * It must never half-close the socket while commands are pending: beanstalkd answers a
//!   waiting reserve on a half-closed connection with `TIMED_OUT`.

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runnerbean_proto::{self as proto, Reply, Wait};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use crate::addr::Stream;
use crate::error::Error;

/// The most commands in flight on one connection. Enough to hide a network round trip behind
/// a pipeline of small commands (1024 puts of 100 bytes are 130 KB on the wire), while bounding
/// what a runaway producer can queue in memory.
pub(crate) const COMMANDS_IN_FLIGHT_MAX: usize = 1024;

/// Bytes queued for one write before the task stops taking more commands and waits for the
/// socket: large enough to batch a pipeline into few system calls, small enough to keep memory
/// flat while a slow server drains it.
const WRITE_BATCH_BYTES_MAX: usize = 256 * 1024;

/// Spare room the read buffer keeps for the next read.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A command on its way to the task.
pub(crate) struct Request {
    pub bytes: Vec<u8>,
    pub wait: Option<Wait>,
    pub quit: bool,
    pub track: Option<Track>,
    pub reply: oneshot::Sender<Result<Vec<u8>, Error>>,
    pub permit: OwnedSemaphorePermit,
    /// A command that must follow this one directly on the wire, with no other command of any
    /// clone of the client between them (`publish` sends `use` and then `put` this way).
    pub then: Option<Box<Request>>,
}

/// A change to the connection's session that a successful reply confirms, recorded so that
/// [`Client::reconnect`](crate::Client::reconnect) can set up the same session again.
pub(crate) enum Track {
    Use(String),
    Watch(String),
    Ignore(String),
}

/// The session state the server holds for the connection, as far as the client changed it.
#[derive(Clone, Debug)]
pub(crate) struct Session {
    pub used: String,
    pub watched: Vec<String>,
}

impl Default for Session {
    fn default() -> Session {
        Session { used: "default".to_owned(), watched: vec!["default".to_owned()] }
    }
}

/// What the task shares with the client handles.
pub(crate) struct Shared {
    /// Why the connection closed, once it has.
    pub closed: Mutex<Option<Error>>,
    pub session: Mutex<Session>,
    /// One permit per command in flight.
    pub slots: Arc<Semaphore>,
    /// Set once the server answered `clear-tube` or `list-jobs` with `UNKNOWN_COMMAND`.
    pub lacks_extensions: AtomicBool,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            closed: Mutex::new(None),
            session: Mutex::new(Session::default()),
            slots: Arc::new(Semaphore::new(COMMANDS_IN_FLIGHT_MAX)),
            lacks_extensions: AtomicBool::new(false),
        }
    }

    /// The error every command gets once the connection is closed.
    pub fn closed_error(&self) -> Error {
        lock(&self.closed).clone().unwrap_or(Error::ClosedByServer)
    }
}

/// Locks a mutex, taking the data even if a thread panicked while holding it: the data here
/// (a session record, a close reason) is valid after any partial update.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Pending {
    wait: Option<Wait>,
    quit: bool,
    track: Option<Track>,
    reply: oneshot::Sender<Result<Vec<u8>, Error>>,
    _permit: OwnedSemaphorePermit,
}

/// Runs the connection until it fails or every client handle is gone.
pub(crate) async fn run(
    stream: Stream,
    mut requests: mpsc::Receiver<Request>,
    shared: Arc<Shared>,
    read_timeout: Duration,
) {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut out: Vec<u8> = Vec::new();
    let mut written = 0;
    let mut input: Vec<u8> = Vec::with_capacity(READ_CHUNK_BYTES);
    let mut last_progress = Instant::now();
    let mut handles_gone = false;

    let failure = loop {
        if handles_gone && pending.is_empty() && written == out.len() {
            return;
        }
        let deadline = pending.front().and_then(|front| match front.wait {
            None => Some(last_progress + read_timeout),
            Some(Wait::Seconds(seconds)) => Some(last_progress + read_timeout + Duration::from_secs(seconds.into())),
            Some(Wait::Forever) => None,
        });
        if input.capacity() - input.len() < READ_CHUNK_BYTES {
            input.reserve(READ_CHUNK_BYTES);
        }
        tokio::select! {
            read = reader.read_buf(&mut input) => match read {
                Ok(0) => {
                    // EOF is the expected answer to quit.
                    if pending.front().is_some_and(|front| front.quit)
                        && let Some(front) = pending.pop_front()
                    {
                        let _ = front.reply.send(Ok(Vec::new()));
                    }
                    break Error::ClosedByServer;
                }
                Ok(_) => {
                    last_progress = Instant::now();
                    if let Err(e) = deliver(&mut input, &mut pending, &shared) {
                        break e;
                    }
                }
                Err(e) => break Error::Io(Arc::new(e)),
            },
            result = writer.write(&out[written..]), if written < out.len() => match result {
                Ok(0) => break Error::ClosedByServer,
                Ok(n) => {
                    last_progress = Instant::now();
                    written += n;
                    if written == out.len() {
                        out.clear();
                        written = 0;
                    }
                }
                Err(e) => break Error::Io(Arc::new(e)),
            },
            request = requests.recv(), if !handles_gone && out.len() - written < WRITE_BATCH_BYTES_MAX => match request {
                Some(request) => {
                    if pending.is_empty() {
                        last_progress = Instant::now();
                    }
                    let mut request = request;
                    loop {
                        let Request { bytes, wait, quit, track, reply, permit, then } = request;
                        out.extend_from_slice(&bytes);
                        pending.push_back(Pending { wait, quit, track, reply, _permit: permit });
                        match then {
                            Some(next) => request = *next,
                            None => break,
                        }
                    }
                }
                None => handles_gone = true,
            },
            () = sleep_until(deadline) => break Error::ReplyTimeout(read_timeout),
        }
    };

    // The connection is finished: record why, refuse new commands, and fail the pending ones.
    *lock(&shared.closed) = Some(failure.clone());
    shared.slots.close();
    requests.close();
    for waiting in pending.drain(..) {
        let _ = waiting.reply.send(Err(failure.clone()));
    }
    while let Ok(request) = requests.try_recv() {
        let mut request = request;
        loop {
            let _ = request.reply.send(Err(failure.clone()));
            match request.then {
                Some(next) => request = *next,
                None => break,
            }
        }
    }
}

/// Hands every complete reply in `input` to its command, in order.
fn deliver(input: &mut Vec<u8>, pending: &mut VecDeque<Pending>, shared: &Shared) -> Result<(), Error> {
    let mut taken = 0;
    loop {
        let len = match proto::check(&input[taken..]) {
            Ok(Some(len)) => len,
            Ok(None) => break,
            Err(e) => return Err(Error::Protocol(e.to_string())),
        };
        let frame = &input[taken..taken + len];
        let reply = proto::parse(frame).map_err(|e| Error::Protocol(e.to_string()))?;
        let Some(front) = pending.pop_front() else {
            return Err(Error::Protocol(format!("a reply nobody asked for: {:?}", String::from_utf8_lossy(frame))));
        };
        if let Some(track) = &front.track {
            record(shared, track, &reply);
        }
        let _ = front.reply.send(Ok(frame.to_vec()));
        taken += len;
    }
    input.drain(..taken);
    Ok(())
}

/// Updates the session record after a reply that confirms a change of tubes.
fn record(shared: &Shared, track: &Track, reply: &Reply<'_>) {
    let mut session = lock(&shared.session);
    match (track, reply) {
        (Track::Use(tube), Reply::Using(_)) => session.used.clone_from(tube),
        (Track::Watch(tube), Reply::Watching(_)) if !session.watched.contains(tube) => {
            session.watched.push(tube.clone());
        }
        (Track::Ignore(tube), Reply::Watching(_)) => session.watched.retain(|t| t != tube),
        _ => {}
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
