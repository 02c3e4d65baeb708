//! A client's state inside a shard: the tube it uses, the tubes it watches,
//! the jobs it holds and, while it is blocked in reserve, its wait.

use smallvec::SmallVec;

use super::heap::NO_POS;
use super::job::{JobList, NIL};
use super::time::Nanos;

#[derive(Clone, Copy, Debug)]
pub struct Wait {
    /// Identifies this wait in the tubes' waiter queues.
    pub seq: u64,
    /// When reserve-with-timeout gives up; `None` for plain reserve.
    pub timeout_at: Option<Nanos>,
}

#[derive(Debug)]
pub struct Client {
    /// The used tube, or NIL when it is on another shard.
    pub used: u32,
    /// Watched tubes in `list-tubes-watched` order: appended at the end,
    /// and a removal moves the last entry into the gap, as beanstalkd does.
    pub watched: SmallVec<[u32; 4]>,
    /// Reserved jobs in the order they were reserved.
    pub reserved: JobList,
    /// Cached key of the reserved job with the earliest deadline, or NIL.
    /// Valid only while `soonest_known` holds.
    pub soonest: u32,
    pub soonest_known: bool,
    pub wait: Option<Wait>,
    /// Position in the shard's client timer heap and its key.
    pub timer_pos: u32,
    pub wake_at: Nanos,
    pub producer: bool,
    pub worker: bool,
    /// While the wait is one shard's part of a reserve that spans shards:
    /// its key in the engine's table of such waits (see
    /// [`super::spanning`]); NIL otherwise.
    pub span: u32,
    /// The client's session is on another core, which must be told of its
    /// reservations that run out here ([`super::Engine::join_remote`]).
    pub remote: bool,
    /// A reservation of this remote client ran out and its session has not
    /// been told yet.
    pub expired_pending: bool,
}

impl Client {
    /// A connection's client, using and watching `default_tube`.
    pub fn new(default_tube: u32) -> Client {
        let mut client = Client::detached();
        client.used = default_tube;
        client.watched.push(default_tube);
        client
    }

    /// A client using and watching none of the shard's tubes (`used` is
    /// NIL): a connection whose commands reach this shard from another
    /// core's session, which keeps the connection's whole state.
    pub fn detached() -> Client {
        Client {
            used: NIL,
            watched: SmallVec::new(),
            reserved: JobList::default(),
            soonest: NIL,
            soonest_known: true,
            wait: None,
            timer_pos: NO_POS,
            wake_at: 0,
            producer: false,
            worker: false,
            span: NIL,
            remote: false,
            expired_pending: false,
        }
    }
}
