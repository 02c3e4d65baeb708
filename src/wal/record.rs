//! The records of runnerbean's log, byte for byte (docs/LOG-FORMAT.md has
//! the same layout as a table).
//!
//! Every record is framed the same way:
//!
//! ```text
//! u32 len      bytes after this 8-byte frame (kind byte through the last body byte)
//! u32 crc      CRC32C of the 4 len bytes followed by those `len` bytes,
//!              started from the segment's salt (see super::segment)
//! u8  kind     1 job, 2 state, 3 delete
//! ...          the kind's fields, little-endian
//! ```
//!
//! and every record can be replayed alone: a job record carries the whole
//! job (tube, body, times, counters), a state record carries every field a
//! state change can alter, a delete record the id. Recovery therefore never
//! needs an earlier record to make sense of a later one, only to know that
//! the job exists (a state or delete record for a job it has not seen is
//! skipped).
//!
//! # What it must never do
//! Accept a record whose fields are out of range: [`decode`] checks every
//! field (kind, state code, tube name, lengths, TTR) after the checksum has
//! matched, so a record that passed the checksum by accident is still not
//! replayed as a job.

use crate::protocol::command::valid_tube_name;
use crate::wal::image::{Counters, ImageState};

/// Bytes of the frame: `len` and `crc`.
pub const FRAME_BYTES: usize = 8;

/// Bytes of the fields every job and state record carries ([`StateFields`]).
const STATE_FIELDS_BYTES: usize = 8 + 1 + 4 + 4 + 8 + 5 * 4;

/// A job record without its tube name and body.
pub const JOB_RECORD_BYTES_MIN: usize = FRAME_BYTES + 1 + STATE_FIELDS_BYTES + 4 + 8 + 1 + 4;

/// A state record.
pub const STATE_RECORD_BYTES: usize = FRAME_BYTES + 1 + STATE_FIELDS_BYTES;

/// A delete record.
pub const DELETE_RECORD_BYTES: usize = FRAME_BYTES + 1 + 8;

pub use crate::protocol::command::TUBE_NAME_BYTES_MAX;

/// Largest body a record may carry: the 1 GiB job limit.
pub const BODY_BYTES_MAX: usize = crate::engine::body::BODY_BYTES_MAX;

/// Largest value of a record's `len` field.
pub const RECORD_LEN_MAX: usize = JOB_RECORD_BYTES_MIN - FRAME_BYTES + TUBE_NAME_BYTES_MAX + BODY_BYTES_MAX;

const _: () = assert!(RECORD_LEN_MAX < u32::MAX as usize, "a record's length must fit its u32 field");

const KIND_JOB: u8 = 1;
const KIND_STATE: u8 = 2;
const KIND_DELETE: u8 = 3;

const STATE_READY: u8 = 1;
const STATE_DELAYED: u8 = 2;
const STATE_BURIED: u8 = 3;

/// What a state change can alter, and the job's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateFields {
    pub id: u64,
    pub state: ImageState,
    pub pri: u32,
    pub delay_s: u32,
    /// Delayed: when the job becomes ready (ns since the epoch). Buried: the
    /// order of its bury. Ready: 0.
    pub deadline: u64,
    pub counters: Counters,
}

/// A decoded record; names and bodies borrow the bytes read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record<'a> {
    Job { fields: StateFields, ttr_s: u32, created_at: u64, tube: &'a str, body: &'a [u8] },
    State(StateFields),
    Delete { id: u64 },
}

/// Bytes of the job record for a tube name and body of these lengths.
pub fn job_record_bytes(tube_bytes: usize, body_bytes: usize) -> usize {
    JOB_RECORD_BYTES_MIN + tube_bytes + body_bytes
}

/// Appends a job record's frame and fields up to (not including) the body,
/// with the checksum computed over the body too: the caller appends `body`
/// next, by copy or as a separate buffer of a vectored write.
pub fn encode_job_head(
    out: &mut Vec<u8>,
    salt: u32,
    fields: &StateFields,
    ttr_s: u32,
    created_at: u64,
    tube: &str,
    body: &[u8],
) {
    debug_assert!(!tube.is_empty() && tube.len() <= TUBE_NAME_BYTES_MAX);
    let start = out.len();
    let len = job_record_bytes(tube.len(), body.len()) - FRAME_BYTES;
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(KIND_JOB);
    put_state_fields(out, fields);
    out.extend_from_slice(&ttr_s.to_le_bytes());
    out.extend_from_slice(&created_at.to_le_bytes());
    out.push(tube.len() as u8);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(tube.as_bytes());
    let crc = crc32c::crc32c_append(checksum_head(salt, &out[start..]), body);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

pub fn encode_state(out: &mut Vec<u8>, salt: u32, fields: &StateFields) {
    let start = out.len();
    out.extend_from_slice(&((STATE_RECORD_BYTES - FRAME_BYTES) as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(KIND_STATE);
    put_state_fields(out, fields);
    seal(out, salt, start);
}

pub fn encode_delete(out: &mut Vec<u8>, salt: u32, id: u64) {
    let start = out.len();
    out.extend_from_slice(&((DELETE_RECORD_BYTES - FRAME_BYTES) as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(KIND_DELETE);
    out.extend_from_slice(&id.to_le_bytes());
    seal(out, salt, start);
}

/// The checksum of a record's `len` field and the bytes after the frame
/// that are present in `record` (which starts at the frame), started from
/// the segment's salt (with salt 0, the plain CRC32C of those bytes).
fn checksum_head(salt: u32, record: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c_append(salt, &record[..4]), &record[FRAME_BYTES..])
}

fn seal(out: &mut [u8], salt: u32, start: usize) {
    let crc = checksum_head(salt, &out[start..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn put_state_fields(out: &mut Vec<u8>, f: &StateFields) {
    out.extend_from_slice(&f.id.to_le_bytes());
    out.push(match f.state {
        ImageState::Ready => STATE_READY,
        ImageState::Delayed => STATE_DELAYED,
        ImageState::Buried => STATE_BURIED,
    });
    out.extend_from_slice(&f.pri.to_le_bytes());
    out.extend_from_slice(&f.delay_s.to_le_bytes());
    out.extend_from_slice(&f.deadline.to_le_bytes());
    let c = &f.counters;
    for n in [c.reserves, c.timeouts, c.releases, c.buries, c.kicks] {
        out.extend_from_slice(&n.to_le_bytes());
    }
}

/// Why a frame or record was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// The frame's length is zero with a non-zero checksum, or larger than
    /// any record can be.
    Length(u32),
    /// The checksum does not match.
    Checksum,
    /// The checksum matched, but a field is out of range.
    Field(&'static str),
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::Length(n) => write!(f, "impossible record length {n}"),
            Invalid::Checksum => write!(f, "checksum mismatch"),
            Invalid::Field(what) => write!(f, "bad {what}"),
        }
    }
}

/// A record frame's two fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    pub len: u32,
    pub crc: u32,
}

impl Frame {
    pub fn parse(bytes: [u8; FRAME_BYTES]) -> Frame {
        let word = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("four bytes"));
        Frame { len: word(0), crc: word(4) }
    }

    /// An all-zero frame: the preallocated space after the last record.
    pub fn is_end(&self) -> bool {
        self.len == 0 && self.crc == 0
    }

    /// Checks the length before anything is read or allocated for it.
    pub fn check_len(&self) -> Result<usize, Invalid> {
        let len = self.len as usize;
        if len == 0 || len > RECORD_LEN_MAX {
            return Err(Invalid::Length(self.len));
        }
        Ok(len)
    }

    /// Checks the payload (the `len` bytes after the frame) against the
    /// checksum, started from the segment's salt.
    pub fn check(&self, payload: &[u8], salt: u32) -> Result<(), Invalid> {
        let crc = crc32c::crc32c_append(crc32c::crc32c_append(salt, &self.len.to_le_bytes()), payload);
        if crc == self.crc { Ok(()) } else { Err(Invalid::Checksum) }
    }
}

/// Decodes a payload whose checksum has matched.
pub fn decode(payload: &[u8]) -> Result<Record<'_>, Invalid> {
    let mut r = Reader { bytes: payload };
    let record = match r.u8()? {
        KIND_JOB => {
            let fields = r.state_fields()?;
            let ttr_s = r.u32()?;
            if ttr_s == 0 {
                return Err(Invalid::Field("ttr"));
            }
            let created_at = r.u64()?;
            let tube_len = usize::from(r.u8()?);
            let body_len = r.u32()? as usize;
            let tube = valid_tube_name(r.take(tube_len)?).ok_or(Invalid::Field("tube name"))?;
            if body_len > BODY_BYTES_MAX {
                return Err(Invalid::Field("body length"));
            }
            let body = r.take(body_len)?;
            Record::Job { fields, ttr_s, created_at, tube, body }
        }
        KIND_STATE => Record::State(r.state_fields()?),
        KIND_DELETE => {
            let id = r.u64()?;
            if id == 0 {
                return Err(Invalid::Field("job id"));
            }
            Record::Delete { id }
        }
        _ => return Err(Invalid::Field("record kind")),
    };
    if !r.bytes.is_empty() {
        return Err(Invalid::Field("record length"));
    }
    Ok(record)
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Invalid> {
        if self.bytes.len() < n {
            return Err(Invalid::Field("record length"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Invalid> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, Invalid> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("four bytes")))
    }

    fn u64(&mut self) -> Result<u64, Invalid> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("eight bytes")))
    }

    fn state_fields(&mut self) -> Result<StateFields, Invalid> {
        let id = self.u64()?;
        if id == 0 {
            return Err(Invalid::Field("job id"));
        }
        let state = match self.u8()? {
            STATE_READY => ImageState::Ready,
            STATE_DELAYED => ImageState::Delayed,
            STATE_BURIED => ImageState::Buried,
            _ => return Err(Invalid::Field("job state")),
        };
        let pri = self.u32()?;
        let delay_s = self.u32()?;
        let deadline = self.u64()?;
        let counters = Counters {
            reserves: self.u32()?,
            timeouts: self.u32()?,
            releases: self.u32()?,
            buries: self.u32()?,
            kicks: self.u32()?,
        };
        Ok(StateFields { id, state, pri, delay_s, deadline, counters })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(id: u64, state: ImageState) -> StateFields {
        StateFields {
            id,
            state,
            pri: 7,
            delay_s: 30,
            deadline: 1_700_000_000_000_000_000,
            counters: Counters { reserves: 1, timeouts: 2, releases: 3, buries: 4, kicks: 5 },
        }
    }

    /// Splits one encoded record into its frame and payload, checking it.
    fn open(bytes: &[u8]) -> Record<'_> {
        let frame = Frame::parse(bytes[..FRAME_BYTES].try_into().unwrap());
        assert_eq!(frame.check_len().unwrap(), bytes.len() - FRAME_BYTES);
        frame.check(&bytes[FRAME_BYTES..], 0).unwrap();
        decode(&bytes[FRAME_BYTES..]).unwrap()
    }

    #[test]
    fn each_kind_round_trips_with_its_documented_size() {
        let mut buf = Vec::new();
        let f = fields(42, ImageState::Delayed);
        encode_job_head(&mut buf, 0, &f, 60, 123, "tube-a", b"hello\r\nworld");
        assert_eq!(buf.len(), job_record_bytes(6, 12) - 12);
        buf.extend_from_slice(b"hello\r\nworld");
        assert_eq!(
            open(&buf),
            Record::Job { fields: f, ttr_s: 60, created_at: 123, tube: "tube-a", body: b"hello\r\nworld" }
        );

        let mut buf = Vec::new();
        encode_state(&mut buf, 0, &fields(9, ImageState::Buried));
        assert_eq!(buf.len(), STATE_RECORD_BYTES);
        assert_eq!(open(&buf), Record::State(fields(9, ImageState::Buried)));

        let mut buf = Vec::new();
        encode_delete(&mut buf, 0, u64::MAX);
        assert_eq!(buf.len(), DELETE_RECORD_BYTES);
        assert_eq!(open(&buf), Record::Delete { id: u64::MAX });
    }

    #[test]
    fn the_documented_bytes_of_a_delete_record() {
        let mut buf = Vec::new();
        encode_delete(&mut buf, 0, 1);
        assert_eq!(&buf[..4], &[9, 0, 0, 0]);
        assert_eq!(buf[8], KIND_DELETE);
        assert_eq!(&buf[9..], &[1, 0, 0, 0, 0, 0, 0, 0]);
        let crc = crc32c::crc32c(&[9, 0, 0, 0, KIND_DELETE, 1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&buf[4..8], &crc.to_le_bytes());
    }

    #[test]
    fn a_record_sealed_with_one_salt_fails_with_any_other() {
        use crate::wal::segment::salt_for;
        let salts = [0, salt_for(1), salt_for(2), salt_for(3), salt_for(0x7fff_ffff)];
        for &written in &salts {
            let mut buf = Vec::new();
            encode_delete(&mut buf, written, 77);
            let frame = Frame::parse(buf[..FRAME_BYTES].try_into().unwrap());
            for &read in &salts {
                assert_eq!(
                    frame.check(&buf[FRAME_BYTES..], read).is_ok(),
                    read == written,
                    "{written:x} read as {read:x}"
                );
            }
        }
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let mut buf = Vec::new();
        encode_job_head(&mut buf, 0, &fields(5, ImageState::Ready), 1, 2, "t", b"body");
        buf.extend_from_slice(b"body");
        for bit in 0..buf.len() * 8 {
            let mut bad = buf.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let frame = Frame::parse(bad[..FRAME_BYTES].try_into().unwrap());
            let refused = match frame.check_len() {
                Err(_) => true,
                Ok(len) if len != bad.len() - FRAME_BYTES => true,
                Ok(_) => frame.check(&bad[FRAME_BYTES..], 0).is_err(),
            };
            assert!(refused, "bit {bit} flipped and still accepted");
        }
    }

    #[test]
    fn fields_out_of_range_are_refused_even_with_a_good_checksum() {
        type Spoil = fn(&mut Vec<u8>);
        let cases: [(&str, Spoil); 5] = [
            ("kind", |b| b[0] = 9),
            ("state", |b| b[9] = 0),
            ("id", |b| b[1..9].fill(0)),
            ("ttr", |b| b[46..50].fill(0)),
            ("tube", |b| *b.last_mut().unwrap() = b' '),
        ];
        for (what, spoil) in cases {
            let mut buf = Vec::new();
            encode_job_head(&mut buf, 0, &fields(5, ImageState::Ready), 1, 2, "tube", b"");
            let mut payload = buf[FRAME_BYTES..].to_vec();
            spoil(&mut payload);
            assert!(decode(&payload).is_err(), "{what} accepted");
        }
        assert_eq!(decode(&[KIND_DELETE, 1, 0, 0, 0, 0, 0, 0, 0, 0]), Err(Invalid::Field("record length")));
        assert_eq!(decode(&[KIND_DELETE, 1, 0, 0]), Err(Invalid::Field("record length")));
    }

    #[test]
    fn frames() {
        assert!(Frame::parse([0; 8]).is_end());
        assert_eq!(Frame { len: 0, crc: 1 }.check_len(), Err(Invalid::Length(0)));
        assert_eq!(Frame { len: u32::MAX, crc: 1 }.check_len(), Err(Invalid::Length(u32::MAX)));
    }
}
