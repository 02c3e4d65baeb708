//! Reply words and the encoding of reply lines.
//!
//! Every reply a client can receive is built here or in [`super::yaml`], so
//! the exact bytes live in one place.

use super::output::Output;
use crate::engine::JobRef;

pub const BAD_FORMAT: &[u8] = b"BAD_FORMAT\r\n";
pub const UNKNOWN_COMMAND: &[u8] = b"UNKNOWN_COMMAND\r\n";
pub const OUT_OF_MEMORY: &[u8] = b"OUT_OF_MEMORY\r\n";
pub const INTERNAL_ERROR: &[u8] = b"INTERNAL_ERROR\r\n";
pub const DRAINING: &[u8] = b"DRAINING\r\n";
pub const EXPECTED_CRLF: &[u8] = b"EXPECTED_CRLF\r\n";
pub const JOB_TOO_BIG: &[u8] = b"JOB_TOO_BIG\r\n";
pub const NOT_FOUND: &[u8] = b"NOT_FOUND\r\n";
pub const DEADLINE_SOON: &[u8] = b"DEADLINE_SOON\r\n";
pub const TIMED_OUT: &[u8] = b"TIMED_OUT\r\n";
pub const DELETED: &[u8] = b"DELETED\r\n";
pub const RELEASED: &[u8] = b"RELEASED\r\n";
pub const BURIED: &[u8] = b"BURIED\r\n";
pub const KICKED: &[u8] = b"KICKED\r\n";
pub const TOUCHED: &[u8] = b"TOUCHED\r\n";
pub const NOT_IGNORED: &[u8] = b"NOT_IGNORED\r\n";
pub const PAUSED: &[u8] = b"PAUSED\r\n";

/// Appends the decimal digits of `n`.
pub fn push_u64(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // A byte loop, not extend_from_slice: a libc memcpy call for a handful
    // of bytes showed up as a fifth of the server's time in profiles.
    buf.reserve(digits.len() - i);
    for &d in &digits[i..] {
        buf.push(d);
    }
}

/// Appends the decimal digits of a signed `n`.
pub fn push_i64(buf: &mut Vec<u8>, n: i64) {
    if n < 0 {
        buf.push(b'-');
    }
    push_u64(buf, n.unsigned_abs());
}

/// `WORD <n>\r\n`, for INSERTED, BURIED, WATCHING and KICKED.
pub fn number_line(out: &mut Output, word: &[u8], n: u64) {
    let buf = out.text();
    buf.extend_from_slice(word);
    buf.push(b' ');
    push_u64(buf, n);
    buf.extend_from_slice(b"\r\n");
}

/// `USING <tube>\r\n`.
pub fn using(out: &mut Output, tube: &str) {
    let buf = out.text();
    buf.extend_from_slice(b"USING ");
    buf.extend_from_slice(tube.as_bytes());
    buf.extend_from_slice(b"\r\n");
}

/// `RESERVED <id> <bytes>\r\n<body>\r\n` or the same with FOUND.
pub fn job(out: &mut Output, word: &[u8], job: &JobRef) {
    let buf = out.text();
    buf.extend_from_slice(word);
    buf.push(b' ');
    push_u64(buf, job.id);
    buf.push(b' ');
    push_u64(buf, job.body.len() as u64);
    buf.extend_from_slice(b"\r\n");
    out.body(&job.body);
}

pub fn reserved(out: &mut Output, j: &JobRef) {
    job(out, b"RESERVED", j);
}

pub fn found(out: &mut Output, j: &JobRef) {
    job(out, b"FOUND", j);
}

/// `OK <n>\r\n<document>\r\n` for stats and list replies.
pub fn ok_document(out: &mut Output, document: &[u8]) {
    let buf = out.text();
    buf.extend_from_slice(b"OK ");
    push_u64(buf, document.len() as u64);
    buf.extend_from_slice(b"\r\n");
    buf.extend_from_slice(document);
    buf.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        let mut b = Vec::new();
        for n in [0, 7, 10, 1234567890, u64::MAX] {
            b.clear();
            push_u64(&mut b, n);
            assert_eq!(b, n.to_string().as_bytes());
        }
        for n in [0, -1, -1_000_000_001, i64::MIN, i64::MAX] {
            b.clear();
            push_i64(&mut b, n);
            assert_eq!(b, n.to_string().as_bytes());
        }
    }
}
