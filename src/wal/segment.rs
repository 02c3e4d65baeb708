//! Segment files: their names, their header, and reading their records
//! back with every check that keeps a damaged file from being replayed as
//! jobs.
//!
//! A shard's log is a sequence of segment files named
//! `runnerbean-wal.<shard>.<seq>` (seq zero-padded to 12 digits, so a
//! directory listing sorts them), each preallocated to its full size and
//! opened by a 64-byte header:
//!
//! ```text
//!  0  16  magic "runnerbean-wal\n\0"
//! 16   4  format version (1)
//! 20   4  shard that wrote the file
//! 24   4  number of shards the server ran with
//! 28   4  header bytes (64)
//! 32   8  seq, the file's place in its shard's log
//! 40   8  next job id: no job id at or above it was handed out before
//!         this file was opened
//! 48   8  wall-clock time the file was opened, ns since the epoch
//! 56   4  salt: the value the records' checksums start from (0 in files
//!         written before files were reused, which read as before)
//! 60   4  CRC32C of bytes 0..60
//! ```
//!
//! Records follow the header back to back ([`super::record`]), and every
//! write ends with up to eight zero bytes after its last record (the next
//! write starts on them), so that the records of a file always end at an
//! all-zero frame or at the end of the file.
//!
//! # Reused files
//! A segment whose jobs are all gone is not always removed: its file may
//! be renamed to a later seq and written again (the log's spares), because
//! writing into blocks that were written before costs a sync no journal
//! commit, while the first write into freshly allocated space does. Such a
//! file still holds its earlier records after the new ones. Two things
//! keep them from ever being read as the new segment's: the salt, which
//! differs between any two seqs of a shard ([`salt_for`]), so an old
//! record's checksum fails in the new file even where it starts exactly at
//! a record boundary; and the header, which is written before any record
//! is relied on: a file whose header names an earlier seq than its name is
//! a reused file whose new header never reached the disk, and nothing in it
//! is read (see [`super::recover`]).
//!
//! # Reading
//! [`read`] returns every record up to the first one that fails a check,
//! and says why it stopped: at the zeros after the last record (the normal
//! end), at the end of the file, or at a record that is torn (the file ends
//! inside it) or corrupt (bad length, checksum or field). Nothing after
//! that point is returned, and nothing in the file is changed.

use std::io;
use std::path::Path;

use super::record::{self, FRAME_BYTES, Frame, Invalid, Record};

/// The first bytes of every segment file.
pub const MAGIC: &[u8; 16] = b"runnerbean-wal\n\0";

/// The format this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;

pub const HEADER_BYTES: usize = 64;

/// The start of a segment file's name; the shard and seq follow.
pub const FILE_PREFIX: &str = "runnerbean-wal.";

/// Digits of the seq in a file name.
const SEQ_DIGITS: usize = 12;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub shard: u32,
    pub shards: u32,
    pub seq: u64,
    pub next_id: u64,
    pub created_at: u64,
    pub salt: u32,
}

/// The salt of segment `seq`: its low 31 bits with the top bit set, so it
/// is never 0 (the salt of files written before reuse) and two seqs of a
/// shard less than 2^31 apart never share one.
pub fn salt_for(seq: u64) -> u32 {
    (seq as u32 & 0x7fff_ffff) | 0x8000_0000
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut h = [0u8; HEADER_BYTES];
        h[..16].copy_from_slice(MAGIC);
        h[16..20].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        h[20..24].copy_from_slice(&self.shard.to_le_bytes());
        h[24..28].copy_from_slice(&self.shards.to_le_bytes());
        h[28..32].copy_from_slice(&(HEADER_BYTES as u32).to_le_bytes());
        h[32..40].copy_from_slice(&self.seq.to_le_bytes());
        h[40..48].copy_from_slice(&self.next_id.to_le_bytes());
        h[48..56].copy_from_slice(&self.created_at.to_le_bytes());
        h[56..60].copy_from_slice(&self.salt.to_le_bytes());
        let crc = crc32c::crc32c(&h[..60]);
        h[60..64].copy_from_slice(&crc.to_le_bytes());
        h
    }

    pub fn decode(h: &[u8; HEADER_BYTES]) -> Result<Header, BadHeader> {
        if h.iter().all(|&b| b == 0) {
            return Err(BadHeader::Zeros);
        }
        if &h[..16] != MAGIC {
            return Err(BadHeader::Magic);
        }
        let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("four bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("eight bytes"));
        if crc32c::crc32c(&h[..60]) != u32_at(60) {
            return Err(BadHeader::Checksum);
        }
        let version = u32_at(16);
        if version != FORMAT_VERSION {
            return Err(BadHeader::Version(version));
        }
        if u32_at(28) as usize != HEADER_BYTES {
            return Err(BadHeader::Size(u32_at(28)));
        }
        let header = Header {
            shard: u32_at(20),
            shards: u32_at(24),
            seq: u64_at(32),
            next_id: u64_at(40),
            created_at: u64_at(48),
            salt: u32_at(56),
        };
        if header.shards == 0 || header.shard >= header.shards {
            return Err(BadHeader::Shard(header.shard, header.shards));
        }
        Ok(header)
    }
}

/// Why a file's header was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadHeader {
    /// The file starts with zeros: created, but its header never reached
    /// the disk (a crash right after the file was made).
    Zeros,
    Magic,
    Checksum,
    Version(u32),
    Size(u32),
    Shard(u32, u32),
    /// Shorter than a header.
    Short,
    /// The header names an earlier seq of the same shard than the file's
    /// name: a reused file whose new header never reached the disk. Every
    /// record in it belongs to the segment it was before, which the log
    /// had given up; none is read.
    Reused(u64),
}

impl std::fmt::Display for BadHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadHeader::Zeros => write!(f, "the header is all zeros"),
            BadHeader::Magic => write!(f, "not a runnerbean log file"),
            BadHeader::Checksum => write!(f, "header checksum mismatch"),
            BadHeader::Version(v) => write!(f, "unknown format version {v}"),
            BadHeader::Size(n) => write!(f, "unknown header size {n}"),
            BadHeader::Shard(s, n) => write!(f, "impossible shard {s} of {n}"),
            BadHeader::Short => write!(f, "shorter than a header"),
            BadHeader::Reused(seq) => write!(f, "a reused file still headed as segment {seq}"),
        }
    }
}

/// The file name of segment `seq` of `shard`.
pub fn file_name(shard: u32, seq: u64) -> String {
    format!("{FILE_PREFIX}{shard}.{seq:0SEQ_DIGITS$}")
}

/// The shard and seq in a segment file's name, if it is one.
pub fn parse_file_name(name: &str) -> Option<(u32, u64)> {
    let rest = name.strip_prefix(FILE_PREFIX)?;
    let (shard, seq) = rest.split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(shard) || !digits(seq) || seq.len() != SEQ_DIGITS {
        return None;
    }
    Some((shard.parse().ok()?, seq.parse().ok()?))
}

/// Where and why reading a segment stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// At the zeros after the last record: the normal end of a segment.
    Zeros,
    /// At the end of the file, exactly after a record.
    Eof,
    /// At a record that could not be read; `offset` is where it starts and
    /// `cut` how many bytes from there to the end of the file were left
    /// unread.
    Damaged { offset: u64, cut: u64, why: Damage },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Damage {
    /// The file ends inside the record (a write cut short by a crash).
    Torn,
    Invalid(Invalid),
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::Torn => write!(f, "torn record (the file ends inside it)"),
            Damage::Invalid(why) => write!(f, "corrupt record ({why})"),
        }
    }
}

/// The outcome of reading one segment file.
#[derive(Debug)]
pub struct Scan {
    pub header: Header,
    pub end: End,
    /// Bytes of records read (after the header, up to the end).
    pub record_bytes: u64,
    pub records: u64,
}

/// Reads a segment file, handing each good record and its offset to
/// `each` in order. Fails only when the file cannot be opened or read, or
/// its header is refused.
pub fn read(path: &Path, each: impl FnMut(u64, Record<'_>)) -> io::Result<Result<Scan, BadHeader>> {
    read_with(path, None, &mut Vec::new(), each)
}

/// [`read`], reading the file into `buf` (whose memory is reused from one
/// file to the next: fresh memory for each 10 MB segment cost a fifth of a
/// recovery in the kernel's page zeroing). Once it returns without an I/O
/// error, `buf` holds the whole file, header refused or not. With `name`
/// (the shard and seq in the file's name), a header of the same shard and
/// an earlier seq is refused as [`BadHeader::Reused`].
pub fn read_with(
    path: &Path,
    name: Option<(u32, u64)>,
    buf: &mut Vec<u8>,
    mut each: impl FnMut(u64, Record<'_>),
) -> io::Result<Result<Scan, BadHeader>> {
    // The whole file at once: a segment is at most `-s` bytes (or one
    // record's worth, for a record larger than that), and parsing from
    // memory costs a third of reading it a frame at a time.
    use std::io::Read;
    buf.clear();
    std::fs::File::open(path)?.read_to_end(buf)?;
    let bytes = &buf[..];
    let size = bytes.len() as u64;
    let Some(head) = bytes.first_chunk::<HEADER_BYTES>() else {
        return Ok(Err(BadHeader::Short));
    };
    let header = match Header::decode(head) {
        Ok(h) => h,
        Err(e) => return Ok(Err(e)),
    };
    if let Some((shard, seq)) = name
        && header.shard == shard
        && header.seq < seq
    {
        return Ok(Err(BadHeader::Reused(header.seq)));
    }
    let mut at = HEADER_BYTES;
    let mut scan = Scan { header, end: End::Eof, record_bytes: 0, records: 0 };
    let damaged = |at: usize, why: Damage| End::Damaged { offset: at as u64, cut: size - at as u64, why };
    loop {
        let rest = &bytes[at..];
        if rest.is_empty() {
            scan.end = End::Eof;
            break;
        }
        let Some(frame) = rest.first_chunk::<FRAME_BYTES>() else {
            let zeros = rest.iter().all(|&b| b == 0);
            scan.end = if zeros { End::Zeros } else { damaged(at, Damage::Torn) };
            break;
        };
        let frame = Frame::parse(*frame);
        if frame.is_end() {
            scan.end = End::Zeros;
            break;
        }
        let len = match frame.check_len() {
            Ok(len) => len,
            Err(why) => {
                scan.end = damaged(at, Damage::Invalid(why));
                break;
            }
        };
        let Some(payload) = rest.get(FRAME_BYTES..FRAME_BYTES + len) else {
            scan.end = damaged(at, Damage::Torn);
            break;
        };
        match frame.check(payload, scan.header.salt).and_then(|()| record::decode(payload)) {
            Ok(record) => each(at as u64, record),
            Err(why) => {
                scan.end = damaged(at, Damage::Invalid(why));
                break;
            }
        }
        at += FRAME_BYTES + len;
        scan.record_bytes += (FRAME_BYTES + len) as u64;
        scan.records += 1;
    }
    Ok(Ok(scan))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::image::{Counters, ImageState};
    use crate::wal::record::{StateFields, encode_delete, encode_job_head, encode_state};

    fn header() -> Header {
        Header { shard: 0, shards: 1, seq: 7, next_id: 100, created_at: 1_700_000_000_000_000_000, salt: salt_for(7) }
    }

    fn fields(id: u64) -> StateFields {
        StateFields { id, state: ImageState::Ready, pri: 1, delay_s: 0, deadline: 0, counters: Counters::default() }
    }

    /// A segment with a job, a state and a delete record, then `padding`
    /// zeros.
    fn segment(padding: usize) -> (Vec<u8>, Vec<u64>) {
        let mut bytes = header().encode().to_vec();
        let mut offsets = vec![bytes.len() as u64];
        let salt = header().salt;
        encode_job_head(&mut bytes, salt, &fields(1), 5, 6, "default", b"body");
        bytes.extend_from_slice(b"body");
        offsets.push(bytes.len() as u64);
        encode_state(&mut bytes, salt, &fields(1));
        offsets.push(bytes.len() as u64);
        encode_delete(&mut bytes, salt, 1);
        offsets.push(bytes.len() as u64);
        bytes.resize(bytes.len() + padding, 0);
        (bytes, offsets)
    }

    fn scan(bytes: &[u8]) -> (Result<Scan, BadHeader>, Vec<u64>) {
        let dir = std::env::temp_dir().join(format!("rb-segment-test-{}-{}", std::process::id(), rand_suffix()));
        std::fs::write(&dir, bytes).unwrap();
        let mut seen = Vec::new();
        let result = read(&dir, |offset, _| seen.push(offset)).unwrap();
        std::fs::remove_file(&dir).unwrap();
        (result, seen)
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    #[test]
    fn names_sort_and_parse() {
        assert_eq!(file_name(0, 12), "runnerbean-wal.0.000000000012");
        assert_eq!(parse_file_name("runnerbean-wal.3.000000000012"), Some((3, 12)));
        for bad in ["runnerbean-wal.0.12", "runnerbean-wal..000000000012", "binlog.1", "runnerbean-wal.0.00000000001x"]
        {
            assert_eq!(parse_file_name(bad), None, "{bad}");
        }
        assert!(file_name(0, 9) < file_name(0, 10));
    }

    #[test]
    fn headers_round_trip_and_refuse_damage() {
        let h = header();
        assert_eq!(Header::decode(&h.encode()), Ok(h));
        assert_eq!(Header::decode(&[0; HEADER_BYTES]), Err(BadHeader::Zeros));
        let mut bad = h.encode();
        bad[33] ^= 1;
        assert_eq!(Header::decode(&bad), Err(BadHeader::Checksum));
        let mut bad = h.encode();
        bad[0] = b'R';
        assert_eq!(Header::decode(&bad), Err(BadHeader::Magic));
    }

    #[test]
    fn a_whole_segment_reads_to_its_zeros_or_its_end() {
        let (bytes, offsets) = segment(1000);
        let (result, seen) = scan(&bytes);
        let s = result.unwrap();
        assert_eq!((s.end, s.records, seen.as_slice()), (End::Zeros, 3, &offsets[..3]));
        let (bytes, _) = segment(0);
        assert_eq!(scan(&bytes).0.unwrap().end, End::Eof);
        // Fewer than a frame's bytes of zeros at the end is the same end.
        let (bytes, _) = segment(5);
        assert_eq!(scan(&bytes).0.unwrap().end, End::Zeros);
    }

    #[test]
    fn a_cut_anywhere_keeps_exactly_the_whole_records_before_it() {
        let (bytes, offsets) = segment(0);
        for cut in HEADER_BYTES..bytes.len() {
            let (result, seen) = scan(&bytes[..cut]);
            let s = result.unwrap();
            let whole = offsets.iter().skip(1).filter(|&&end| end as usize <= cut).count();
            assert_eq!(seen.len(), whole, "cut at {cut}");
            let at_boundary = offsets.contains(&(cut as u64));
            if at_boundary {
                assert_eq!(s.end, End::Eof, "cut at {cut}");
            } else {
                let start = offsets[whole];
                assert_eq!(
                    s.end,
                    End::Damaged { offset: start, cut: cut as u64 - start, why: Damage::Torn },
                    "cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn a_flipped_byte_stops_the_read_at_its_record() {
        let (bytes, offsets) = segment(100);
        for i in HEADER_BYTES..offsets[3] as usize {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            let (result, seen) = scan(&bad);
            let s = result.unwrap();
            let hit = offsets.iter().rposition(|&o| o as usize <= i).unwrap();
            assert_eq!(seen.len(), hit, "byte {i}");
            assert!(matches!(s.end, End::Damaged { offset, .. } if offset == offsets[hit]), "byte {i}: {:?}", s.end);
        }
    }
}
