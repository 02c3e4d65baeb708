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
}

impl Client {
    pub fn new(default_tube: u32) -> Client {
        let mut watched = SmallVec::new();
        watched.push(default_tube);
        Client {
            used: default_tube,
            watched,
            reserved: JobList::default(),
            soonest: NIL,
            soonest_known: true,
            wait: None,
            timer_pos: NO_POS,
            wake_at: 0,
            producer: false,
            worker: false,
        }
    }
}
