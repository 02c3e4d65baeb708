//! The write-ahead log: what `-b DIR` keeps on disk so that jobs survive a
//! restart or a crash.
//!
//! # Layout
//! * [`files`] — the log directory on disk: its lock, making, reusing and
//!   removing segment files.
//! * [`flush`] — getting batches to the disk: writes and syncs as a state
//!   machine the event loop drives on its back end.
//! * [`image`] — a job as the log and recovery see it ([`JobImage`]): every
//!   field recovery restores, independent of the engine's memory layout.
//! * [`cbinlog`] — C beanstalkd's `binlog.N` files: reading a directory with
//!   C's recovery rules (formats 7 and 5) into images, and writing images
//!   as one format-7 file that C starts from. Pure: files in, images out.
//! * [`log`] — one shard's log as the engine writes it: placement of records
//!   in segments, space reservations, batches for group commit, which
//!   segments are still needed, and the pace of compaction.
//! * [`open`] — opening a directory at start-up (its lock, C files imported
//!   safely, the log read back) and the export to C's format.
//! * [`record`] — the records of runnerbean's own log: framing, checksums,
//!   encoding and checked decoding.
//! * [`recover`] — reading a directory's segments back into jobs.
//! * [`segment`] — segment files: names, header, reading records back with
//!   torn and corrupt records detected.
//!
//! # What it must never do
//! Replay garbage as a job. Every byte read from disk is checked (lengths,
//! checksums, field ranges) before it becomes a job; a record that fails a
//! check cuts the file there, with a log line saying what was cut.

pub mod cbinlog;
pub mod files;
pub mod flush;
pub mod image;
pub mod log;
pub mod open;
pub mod record;
pub mod recover;
pub mod segment;

pub use image::{Counters, ImageState, JobImage};

#[cfg(test)]
pub(crate) mod tests;
