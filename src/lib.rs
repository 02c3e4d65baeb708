//! runnerbean: a drop-in replacement for the beanstalkd work queue.
//!
//! # Layout
//! * [`protocol`] — parsing command lines and encoding replies; no state.
//! * [`engine`] — the pure queue state machine of one shard: tubes, jobs,
//!   indexed heaps, waiting clients, timers, counters. No I/O, no clock.
//! * [`shard`] — one core's share of the server: the engine plus every
//!   connection's protocol session (framing, put bodies, blocked reserves),
//!   still without I/O, the routing of commands to shards, and the protocol
//!   of reserves whose watch list spans shards (`shard::spanning`, built
//!   and simulated, not yet used by the server).
//! * [`net`] — listeners, connections and the core's event loop, on
//!   io_uring or on epoll; the only place with sockets.
//! * [`mailbox`] — the transport between cores: a bounded single-producer
//!   single-consumer ring per ordered pair of cores, published once per
//!   turn, and the eventfd that wakes a core only when it sleeps.
//! * [`wal`] — the write-ahead log of `-b DIR`: record formats, recovery,
//!   and C beanstalkd's binlog for migration both ways.
//! * [`metrics`] — `--metrics`: the snapshot each core publishes, and the
//!   thread that serves them to Prometheus, off the cores.
//! * [`memory`] — the global allocator's reserve and fallible reservations,
//!   so that running out of memory earns `OUT_OF_MEMORY`, not an abort.
//! * [`config`] — beanstalkd-compatible command-line flags.
//! * [`sys`] — facts about the process and host (`uname`, `getrusage`,
//!   privileges, signals).

pub mod config;
pub mod engine;
pub mod mailbox;
pub mod memory;
pub mod metrics;
pub mod net;
pub mod protocol;
pub mod shard;
pub mod sys;
pub mod wal;
