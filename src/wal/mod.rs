//! The write-ahead log: what `-b DIR` keeps on disk so that jobs survive a
//! restart or a crash.
//!
//! # Layout
//! * [`image`] — a job as the log and recovery see it ([`JobImage`]): every
//!   field recovery restores, independent of the engine's memory layout.
//! * [`cbinlog`] — C beanstalkd's `binlog.N` files: reading a directory with
//!   C's recovery rules (formats 7 and 5) into images, and writing images
//!   as one format-7 file that C starts from. Pure: files in, images out.
//!
//! # What it must never do
//! Replay garbage as a job. Every byte read from disk is checked (lengths,
//! checksums, field ranges) before it becomes a job; a record that fails a
//! check cuts the file there, with a log line saying what was cut.

pub mod cbinlog;
pub mod image;

pub use image::{Counters, ImageState, JobImage};
