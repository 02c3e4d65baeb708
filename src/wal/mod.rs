//! The write-ahead log: what `-b DIR` keeps on disk so that jobs survive a
//! restart or a crash.
//!
//! # Layout
//! * [`files`] — the log directory on disk: its lock, making and removing
//!   segment files.
//! * [`flush`] — getting batches to the disk: writes and syncs as a state
//!   machine the event loop drives on its back end.
//! * [`image`] — a job as the log and recovery see it ([`JobImage`]): every
//!   field recovery restores, independent of the engine's memory layout.
//!
//! # What it must never do
//! Replay garbage as a job. Every byte read from disk is checked (lengths,
//! checksums, field ranges) before it becomes a job; a record that fails a
//! check cuts the file there, with a log line saying what was cut.

pub mod files;
pub mod flush;
pub mod image;
pub mod log;
pub mod record;
pub mod recover;
pub mod segment;

pub use image::{Counters, ImageState, JobImage};

#[cfg(test)]
pub(crate) mod tests;
