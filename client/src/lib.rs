//! An async client for beanstalkd-protocol work queues: runnerbean and C beanstalkd alike.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), runnerbean_client::Error> {
//! # let server = runnerbean_testserver::TestServer::runnerbean();
//! # let addr = server.addr();
//! use runnerbean_client::{Client, PutOptions};
//!
//! let client = Client::connect(addr).await?; // "127.0.0.1:11300", "unix:/run/beanstalkd.sock"...
//! let id = client.put(b"resize photo 42", PutOptions::default()).await?;
//!
//! let job = client.reserve().await?;
//! assert_eq!(job.id, id);
//! // ... do the work, then:
//! client.delete(job.id).await?;
//! # Ok(())
//! # }
//! ```
//!
//! The examples in this documentation run as tests against a real runnerbean server that the
//! test harness starts (`runnerbean-testserver`); `addr` is that server's address.
//!
//! # Layout
//! * [`Client`] (client.rs): one connection; every command of the protocol as an async method
//!   with typed arguments and results. Clones share the connection, and commands sent from
//!   several futures at once are pipelined.
//!   The publisher's calls are there too: [`Client::publish`] puts into a named tube in one
//!   call that is safe from many tasks at once, and [`Client::has_workers`] (or
//!   [`Client::has_waiting_workers`]) checks that a worker watches the tube, as backq's
//!   publishers do.
//! * extend.rs: runnerbean's `clear-tube` and `list-jobs` ([`Client::clear_tube`],
//!   [`Client::list_jobs`]), and [`Client::clear_tube_or_delete`] and
//!   [`Client::list_jobs_or_peek`], which fall back to peeking on servers without them (C
//!   beanstalkd): a listing then sees only the first job of a state.
//! * [`Error`] (error.rs): the server's error replies (`NotFound`, `TimedOut`, ...) and the
//!   failures of the connection (`Io`, `ReplyTimeout`, `Protocol`, ...), in one enum.
//! * [`Job`], [`JobId`], [`PutOptions`] (job.rs); [`Stats`], [`TubeStats`], [`JobStats`]
//!   (stats.rs): the replies, with every field the servers send, parsed from YAML by a real
//!   YAML parser (yaml.rs).
//! * [`Address`], [`Stream`] (addr.rs): `HOST:PORT` and `unix:PATH`, and the byte stream to
//!   them, for programs that speak the protocol themselves.
//! * conn.rs (private): the task that owns the socket, writes commands and hands each reply to
//!   its command.
//!
//! The framing of commands and replies is the dependency-free `runnerbean-proto` crate.
//!
//! # Timeouts and reconnecting
//! Connecting gives up after [`Options::connect_timeout`]; a reply that takes longer than
//! [`Options::read_timeout`] (beyond the wait a `reserve` asks for) closes the connection. A
//! closed connection is never reopened behind the caller's back: see
//! [Reconnecting](Client#reconnecting).
//!
//! # Runtime
//! A [`Client`] runs its connection on a task of the current tokio runtime (either flavour),
//! so it must be created inside one.

#![warn(missing_docs)]

mod addr;
mod client;
mod conn;
mod error;
mod extend;
mod job;
mod stats;
mod yaml;

pub use addr::{Address, DEFAULT_PORT, Stream};
pub use client::{Client, DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_TIMEOUT, Options, TUBE_NAME_BYTES_MAX};
pub use error::Error;
pub use extend::{Cleared, JobList, VANISHED_IN_A_ROW_MAX};
pub use job::{DEFAULT_PRI, DEFAULT_TTR_SECS, Job, JobId, PutOptions};
pub use stats::{JobState, JobStats, Stats, TubeStats, Value};

/// The most commands one [`Client`] keeps in flight; more wait for a reply to free a slot.
pub const COMMANDS_IN_FLIGHT_MAX: usize = conn::COMMANDS_IN_FLIGHT_MAX;
