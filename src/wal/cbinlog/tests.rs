//! Tests of the C binlog reader and writer on hand-built files: C's
//! recovery rules one by one, every kind of damage, the directory scan, the
//! exact bytes of a record, and a property test that what the writer writes
//! the reader reads back unchanged. The files recorded from the real server
//! are checked in `tests/cbinlog.rs`.

use std::io::Cursor;

use proptest::prelude::*;

use super::*;

const S: i64 = NS_PER_S;
/// A plausible wall-clock time (2026), so that times look like C's.
const T0: i64 = 1_780_000_000 * S;

fn rec(id: u64, state: u8) -> Jobrec {
    Jobrec {
        id,
        pri: 10,
        delay_ns: 0,
        ttr_ns: 60 * S,
        body_size: 0,
        created_ns: T0 + id as i64,
        deadline_ns: 0,
        counters: Counters::default(),
        state,
    }
}

/// A format-7 full record of `r` with `body` (CRLF added, size set).
fn full(tube: &str, r: Jobrec, body: &[u8]) -> Vec<u8> {
    let r = Jobrec { body_size: (body.len() + 2) as i32, ..r };
    let mut b = (tube.len() as i32).to_le_bytes().to_vec();
    b.extend_from_slice(tube.as_bytes());
    b.extend_from_slice(&encode_jobrec(&r));
    b.extend_from_slice(body);
    b.extend_from_slice(CRLF);
    b
}

/// A format-7 short record of `r` for a job whose body has `body_bytes`.
fn short(r: Jobrec, body_bytes: usize) -> Vec<u8> {
    let r = Jobrec { body_size: (body_bytes + 2) as i32, ..r };
    let mut b = 0i32.to_le_bytes().to_vec();
    b.extend_from_slice(&encode_jobrec(&r));
    b
}

/// A format-5 record, written from the documented layout independently of
/// the reader: u64 name length, microsecond times, 77-byte struct.
fn v5(tube: &str, r: Jobrec, body: &[u8]) -> Vec<u8> {
    let mut b = (tube.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(tube.as_bytes());
    let us = |ns: i64| ((ns / 1000) as u64).to_le_bytes();
    b.extend_from_slice(&r.id.to_le_bytes());
    b.extend_from_slice(&r.pri.to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&us(r.delay_ns));
    b.extend_from_slice(&us(r.ttr_ns));
    b.extend_from_slice(&((body.len() + 2) as i32).to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&us(r.created_ns));
    b.extend_from_slice(&us(r.deadline_ns));
    let c = r.counters;
    for n in [c.reserves, c.timeouts, c.releases, c.buries, c.kicks] {
        b.extend_from_slice(&n.to_le_bytes());
    }
    b.push(r.state);
    if !tube.is_empty() {
        b.extend_from_slice(body);
        b.extend_from_slice(CRLF);
    }
    b
}

fn file(version: i32, records: &[Vec<u8>]) -> Vec<u8> {
    let mut b = version.to_le_bytes().to_vec();
    for r in records {
        b.extend_from_slice(r);
    }
    b
}

/// Reads in-memory files in order, as `read_dir` reads a directory's files.
fn read(files: &[&[u8]], max_job_bytes: u64) -> Import {
    let mut recovery = Recovery::new(max_job_bytes);
    for (n, bytes) in files.iter().enumerate() {
        let path = PathBuf::from(format!("binlog.{}", n + 1));
        let mut src = Source { inner: Cursor::new(*bytes), pos: 0, len: bytes.len() as u64 };
        recovery.read_source(&path, &mut src);
    }
    recovery.finish()
}

fn ids(import: &Import) -> Vec<u64> {
    import.jobs.iter().map(|j| j.id).collect()
}

fn problems(import: &Import) -> Vec<(Option<u64>, &Problem)> {
    import.warnings.iter().map(|w| (w.offset, &w.problem)).collect()
}

fn job(import: &Import, id: u64) -> &JobImage {
    import.jobs.iter().find(|j| j.id == id).unwrap_or_else(|| panic!("job {id} not imported"))
}

/// A directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("rb-cbinlog-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// C's recovery rules.
// ---------------------------------------------------------------------------------------------

#[test]
fn full_records_make_jobs_with_every_field() {
    let r = Jobrec {
        pri: 7,
        delay_ns: 3600 * S,
        ttr_ns: 30 * S,
        deadline_ns: T0 + 3600 * S,
        counters: Counters { reserves: 1, timeouts: 2, releases: 3, buries: 4, kicks: 5 },
        ..rec(5, STATE_DELAYED)
    };
    let import = read(&[&file(7, &[full("alpha", r, b"a\r\nb\0c")])], 100);
    assert!(import.warnings.is_empty(), "{:?}", import.warnings);
    assert_eq!(
        import.jobs,
        vec![JobImage {
            id: 5,
            tube: "alpha".into(),
            state: ImageState::Delayed,
            pri: 7,
            ttr_s: 30,
            delay_s: 3600,
            created_at: (T0 + 5) as u64,
            deadline: (T0 + 3600 * S) as u64,
            counters: r.counters,
            body: b"a\r\nb\0c".to_vec(),
        }]
    );
    assert_eq!(import.next_id, 6);
    assert_eq!(import.records, RecordCounts { full: 1, short: 0, ignored: 0 });
}

#[test]
fn short_records_update_delete_and_are_ignored_for_unknown_jobs() {
    let records = [
        full("default", rec(1, STATE_READY), b"one"),
        full("default", rec(2, STATE_READY), b"two"),
        // Job 1 buried with a new priority and count, job 2 deleted.
        short(Jobrec { pri: 3, counters: Counters { buries: 1, ..Counters::default() }, ..rec(1, STATE_BURIED) }, 3),
        short(rec(2, STATE_INVALID), 3),
        // A job whose full record is gone: ignored, whatever its state byte says.
        short(rec(9, STATE_READY), 3),
        short(rec(10, 77), 3),
    ];
    let import = read(&[&file(7, &records)], 100);
    assert!(import.warnings.is_empty(), "{:?}", import.warnings);
    assert_eq!(ids(&import), [1]);
    let one = job(&import, 1);
    assert_eq!((one.state, one.pri, one.counters.buries), (ImageState::Buried, 3, 1));
    assert_eq!(one.body, b"one");
    // Job 2 was created, so it counts for the next id; 9 and 10 were never created.
    assert_eq!(import.next_id, 3);
    assert_eq!(import.records, RecordCounts { full: 2, short: 2, ignored: 2 });
}

#[test]
fn a_reserved_job_comes_back_ready() {
    let r = Jobrec { deadline_ns: T0 + 60 * S, counters: Counters { reserves: 1, ..Counters::default() }, ..rec(4, 2) };
    let import = read(&[&file(7, &[full("t", r, b"x")])], 100);
    let four = job(&import, 4);
    assert_eq!((four.state, four.deadline, four.counters.reserves), (ImageState::Ready, 0, 1));
}

#[test]
fn a_job_seen_again_keeps_its_first_tube_and_position_and_takes_the_new_fields() {
    // A compaction move writes a fresh full record of a job in a later file.
    let first = file(7, &[full("a", rec(1, STATE_READY), b"one"), full("b", rec(2, STATE_READY), b"two")]);
    let moved = Jobrec { pri: 99, created_ns: T0 - S, ..rec(1, STATE_BURIED) };
    let second = file(7, &[full("z", moved, b"ONE")]);
    let import = read(&[&first, &second], 100);
    assert!(import.warnings.is_empty(), "{:?}", import.warnings);
    assert_eq!(ids(&import), [1, 2]);
    let one = job(&import, 1);
    assert_eq!(one.tube, "a");
    assert_eq!((one.state, one.pri, one.created_at), (ImageState::Buried, 99, (T0 - S) as u64));
    assert_eq!(one.body, b"ONE");
}

#[test]
fn a_job_deleted_and_seen_again_is_new_and_goes_last() {
    let records = [
        full("a", rec(1, STATE_READY), b"old"),
        full("a", rec(2, STATE_READY), b"two"),
        short(rec(1, STATE_INVALID), 3),
        full("b", rec(1, STATE_READY), b"new!"),
    ];
    let import = read(&[&file(7, &records)], 100);
    assert_eq!(ids(&import), [2, 1]);
    assert_eq!((job(&import, 1).tube.as_str(), job(&import, 1).body.as_slice()), ("b", &b"new!"[..]));
}

#[test]
fn buried_jobs_come_back_in_first_seen_order() {
    // Buried in the order 3, 1, 2; C brings them back as 1, 2, 3.
    let mut records: Vec<Vec<u8>> = (1..=3).map(|id| full("t", rec(id, STATE_READY), b"x")).collect();
    for id in [3, 1, 2] {
        records.push(short(rec(id, STATE_BURIED), 1));
    }
    records.push(full("t", rec(4, STATE_READY), b"x"));
    let import = read(&[&file(7, &records)], 100);
    let buried: Vec<(u64, u64)> =
        import.jobs.iter().filter(|j| j.state == ImageState::Buried).map(|j| (j.id, j.deadline)).collect();
    assert_eq!(buried, [(1, 0), (2, 1), (3, 2)]);
    assert_eq!(job(&import, 4).deadline, 0);
}

#[test]
fn durations_become_whole_seconds_truncated_with_ttr_at_least_one() {
    let cases = [
        // (ttr ns, delay ns) -> (ttr s, delay s)
        ((60 * S, 0), (60, 0)),
        ((S + S / 2, 2 * S - 1), (1, 1)),
        ((0, 0), (1, 0)),
        ((-5 * S, -5 * S), (1, 0)),
        ((S / 2, S / 2), (1, 0)),
        ((i64::MAX, i64::MAX), (u32::MAX, u32::MAX)),
    ];
    for (n, ((ttr, delay), expected)) in cases.into_iter().enumerate() {
        let r = Jobrec { ttr_ns: ttr, delay_ns: delay, ..rec(n as u64 + 1, STATE_READY) };
        let import = read(&[&file(7, &[full("t", r, b"")])], 100);
        let j = &import.jobs[0];
        assert_eq!((j.ttr_s, j.delay_s), expected, "ttr {ttr} ns, delay {delay} ns");
    }
    let r = Jobrec { created_ns: -1, deadline_ns: -1, ..rec(1, STATE_DELAYED) };
    let import = read(&[&file(7, &[full("t", r, b"")])], 100);
    assert_eq!((import.jobs[0].created_at, import.jobs[0].deadline), (0, 0));
}

#[test]
fn buries_is_not_raised_by_the_restart() {
    let r = Jobrec { counters: Counters { buries: 1, ..Counters::default() }, ..rec(1, STATE_BURIED) };
    let import = read(&[&file(7, &[full("t", r, b"x")])], 100);
    assert_eq!(import.jobs[0].counters.buries, 1);
}

#[test]
fn a_body_over_the_limit_is_skipped_and_reading_goes_on() {
    let records = [
        full("t", rec(1, STATE_READY), &[b'a'; 10]),
        // Exactly the limit: kept (C would refuse it, comparing 12 with 10).
        full("t", rec(2, STATE_READY), &[b'b'; 10]),
        full("t", rec(3, STATE_READY), &[b'c'; 11]),
        full("u", rec(4, STATE_READY), &[b'd'; 1000]),
        short(rec(3, STATE_BURIED), 11),
        short(rec(4, STATE_INVALID), 1000),
        full("t", rec(5, STATE_READY), b"after"),
    ];
    let import = read(&[&file(7, &records)], 10);
    assert!(import.warnings.is_empty(), "{:?}", import.warnings);
    assert_eq!(ids(&import), [1, 2, 5]);
    // Job 4 was deleted later, so only job 3 is still missing.
    assert_eq!(
        import.skipped,
        [SkippedJob {
            id: 3,
            tube: "t".into(),
            body_bytes: 11,
            file: "binlog.1".into(),
            offset: 4 + 2 * (4 + 1 + 80 + 12)
        }]
    );
    assert_eq!(import.next_id, 6);
}

#[test]
fn next_id_is_one_past_the_largest_created_id() {
    assert_eq!(read(&[], 100).next_id, 1);
    let records =
        [full("t", rec(7, STATE_READY), b""), short(rec(7, STATE_INVALID), 0), short(rec(50, STATE_READY), 0)];
    let import = read(&[&file(7, &records)], 100);
    assert!(import.jobs.is_empty());
    assert_eq!(import.next_id, 8);
}

#[test]
fn format_5_has_a_u64_name_length_and_microsecond_times() {
    let r = Jobrec {
        pri: 3,
        delay_ns: 20 * S,
        ttr_ns: 90 * S,
        created_ns: T0,
        deadline_ns: T0 + 20 * S,
        counters: Counters { reserves: 1, timeouts: 2, releases: 3, buries: 0, kicks: 5 },
        ..rec(2, STATE_DELAYED)
    };
    let records = [
        v5("legacy", r, b"five\r\n"),
        v5("default", rec(3, STATE_RESERVED), b"three"),
        v5("", rec(3, STATE_BURIED), b"three"),
        v5("", rec(8, STATE_READY), b""),
        v5("default", rec(4, STATE_READY), b"four"),
        v5("", rec(4, STATE_INVALID), b"four"),
    ];
    let mut bytes = file(5, &records);
    bytes.extend_from_slice(&[0; 100]);
    let import = read(&[&bytes], 100);
    assert!(import.warnings.is_empty(), "{:?}", import.warnings);
    assert_eq!(ids(&import), [2, 3]);
    let two = job(&import, 2);
    assert_eq!(
        (two.tube.as_str(), two.state, two.pri, two.ttr_s, two.delay_s),
        ("legacy", ImageState::Delayed, 3, 90, 20)
    );
    assert_eq!((two.created_at, two.deadline), (T0 as u64, (T0 + 20 * S) as u64));
    assert_eq!(two.counters, r.counters);
    assert_eq!(two.body, b"five\r\n");
    assert_eq!(job(&import, 3).state, ImageState::Buried);
    assert_eq!(import.next_id, 5);
    assert_eq!(import.records, RecordCounts { full: 3, short: 2, ignored: 1 });
}

// ---------------------------------------------------------------------------------------------
// Damage: every case warns, names the file and offset, and returns no wrong job.
// ---------------------------------------------------------------------------------------------

/// Three good records, then whatever `bad` is, then a good record that must
/// not be read; returns the import and the offset where `bad` starts.
fn with_bad_record(version: i32, bad: &[u8]) -> (Import, u64) {
    let good = [
        full("t", rec(1, STATE_READY), b"one"),
        full("t", rec(2, STATE_READY), b"two"),
        short(rec(2, STATE_BURIED), 3),
    ];
    let mut bytes = file(version, &good);
    let at = bytes.len() as u64;
    bytes.extend_from_slice(bad);
    bytes.extend_from_slice(&full("t", rec(3, STATE_READY), b"three"));
    let next = file(7, &[full("u", rec(4, STATE_READY), b"next file")]);
    (read(&[&bytes, &next], 100), at)
}

#[test]
fn a_name_length_out_of_range_ends_the_file() {
    for namelen in [-1i32, 201, i32::MIN] {
        let (import, at) = with_bad_record(7, &namelen.to_le_bytes());
        assert_eq!(problems(&import), [(Some(at), &Problem::NameLen(i64::from(namelen)))]);
        assert_eq!(import.warnings[0].path, PathBuf::from("binlog.1"));
        assert_eq!(ids(&import), [1, 2, 4], "namelen {namelen}");
    }
    // Format 5's length is unsigned: a "negative" one is huge.
    let mut bytes = file(5, &[v5("t", rec(1, STATE_READY), b"one")]);
    let at = bytes.len() as u64;
    bytes.extend_from_slice(&u64::MAX.to_le_bytes());
    let import = read(&[&bytes], 100);
    assert_eq!(problems(&import), [(Some(at), &Problem::NameLen(i64::MAX))]);
    assert_eq!(ids(&import), [1]);
}

#[test]
fn an_unknown_state_drops_the_job_and_ends_the_file() {
    // Known job 2: dropped, since the damaged record may have been its delete.
    let (import, at) = with_bad_record(7, &short(rec(2, 5), 3));
    assert_eq!(problems(&import), [(Some(at), &Problem::UnknownState { id: 2, state: 5 })]);
    assert_eq!(ids(&import), [1, 4]);
    // A new job in a full record is never created.
    let (import, at) = with_bad_record(7, &full("t", rec(9, 200), b"nine"));
    assert_eq!(problems(&import), [(Some(at), &Problem::UnknownState { id: 9, state: 200 })]);
    assert_eq!(ids(&import), [1, 2, 4]);
}

#[test]
fn a_body_size_that_differs_from_the_known_job_drops_it() {
    let (import, at) = with_bad_record(7, &short(rec(1, STATE_BURIED), 4));
    assert_eq!(problems(&import), [(Some(at), &Problem::SizeChanged { id: 1, was: 3, now: 6 })]);
    assert_eq!(ids(&import), [2, 4]);
    let (import, at) = with_bad_record(7, &full("t", rec(2, STATE_READY), b"2"));
    assert_eq!(problems(&import), [(Some(at), &Problem::SizeChanged { id: 2, was: 3, now: 3 })]);
    assert_eq!(ids(&import), [1, 4]);
}

#[test]
fn a_body_without_its_crlf_is_corrupt() {
    let mut bad = full("t", rec(9, STATE_READY), b"nine");
    let len = bad.len();
    bad[len - 2..].copy_from_slice(b"??");
    let (import, at) = with_bad_record(7, &bad);
    assert_eq!(problems(&import), [(Some(at), &Problem::BodyFrame { id: 9 })]);
    assert_eq!(ids(&import), [1, 2, 4]);
    for size in [1, 0, -1, i32::MIN] {
        let mut bad = full("t", rec(9, STATE_READY), b"");
        bad[4 + 1 + 32..4 + 1 + 36].copy_from_slice(&size.to_le_bytes());
        let (import, at) = with_bad_record(7, &bad);
        assert_eq!(problems(&import), [(Some(at), &Problem::BodySize { id: 9, body_size: size })]);
        assert_eq!(ids(&import), [1, 2, 4]);
    }
}

#[test]
fn a_tube_name_no_tube_may_have_is_corrupt() {
    for name in ["-dash", "sp ace", "nul\0", "\u{e9}"] {
        let (import, at) = with_bad_record(7, &full(name, rec(9, STATE_READY), b"nine"));
        assert_eq!(problems(&import), [(Some(at), &Problem::TubeName)], "{name:?}");
        assert_eq!(ids(&import), [1, 2, 4]);
    }
}

#[test]
fn a_full_record_with_state_0_is_a_delete_whose_body_is_skipped() {
    let records = [
        full("t", rec(1, STATE_READY), b"one"),
        full("t", rec(1, STATE_INVALID), b"one"),
        full("t", rec(2, STATE_READY), b"two"),
    ];
    let import = read(&[&file(7, &records)], 100);
    assert!(import.warnings.is_empty(), "{:?}", import.warnings);
    assert_eq!(ids(&import), [2]);
}

#[test]
fn a_torn_record_is_cut_and_the_job_keeps_its_earlier_records() {
    let first = file(7, &[full("t", rec(1, STATE_READY), b"one"), full("t", rec(2, STATE_READY), b"two")]);
    // A compaction move of job 1 (now buried) cut in its body.
    let moved = full("t", rec(1, STATE_BURIED), b"one");
    let mut second = file(7, &[short(rec(2, STATE_BURIED), 3)]);
    second.extend_from_slice(&moved[..moved.len() - 3]);
    let import = read(&[&first, &second], 100);
    let at = 4 + 84;
    assert_eq!(
        problems(&import),
        [(Some(at), &Problem::Torn { needed: moved.len() as u64, left: moved.len() as u64 - 3 })]
    );
    assert_eq!(import.warnings[0].path, PathBuf::from("binlog.2"));
    assert_eq!(ids(&import), [1, 2]);
    assert_eq!(job(&import, 1).state, ImageState::Ready);
    assert_eq!(job(&import, 2).state, ImageState::Buried);
}

#[test]
fn a_size_beyond_the_end_of_the_file_is_torn_and_its_id_still_counts() {
    // 2 GiB claimed, a few bytes present: reported without reading (or allocating) the body.
    let mut bad = full("t", rec(9, STATE_READY), b"nine");
    bad[4 + 1 + 32..4 + 1 + 36].copy_from_slice(&i32::MAX.to_le_bytes());
    let good = file(7, &[full("t", rec(1, STATE_READY), b"one")]);
    let mut bytes = good.clone();
    bytes.extend_from_slice(&bad);
    for limit in [u64::MAX, 10] {
        let import = read(&[&bytes], limit);
        let torn = Problem::Torn { needed: (4 + 1 + 80) + i32::MAX as u64, left: bad.len() as u64 };
        assert_eq!(problems(&import), [(Some(good.len() as u64), &torn)], "limit {limit}");
        assert_eq!((ids(&import), import.next_id), (vec![1], 10), "limit {limit}");
        assert!(import.skipped.is_empty());
    }
}

#[test]
fn a_cut_at_any_byte_gives_the_jobs_of_the_complete_records() {
    let records = [
        full("alpha", rec(1, STATE_READY), b"one"),
        short(Jobrec { pri: 1, ..rec(1, STATE_BURIED) }, 3),
        full("beta", rec(2, STATE_DELAYED), b"two\r\n"),
        short(rec(1, STATE_INVALID), 3),
        full("alpha", rec(3, STATE_READY), &[7; 300]),
        short(rec(2, STATE_READY), 5),
    ];
    let bytes = file(7, &records);
    let mut boundaries = vec![4];
    for r in &records {
        boundaries.push(boundaries.last().unwrap() + r.len());
    }
    for cut in 4..=bytes.len() {
        let boundary = *boundaries.iter().rev().find(|&&b| b <= cut).unwrap();
        let got = read(&[&bytes[..cut]], 1000);
        let expected = read(&[&bytes[..boundary]], 1000);
        assert!(expected.warnings.is_empty());
        assert_eq!(got.jobs, expected.jobs, "cut at {cut}");
        // A short record cut right after its zero name length looks like
        // padding; every other cut inside a record is reported where it starts.
        let zero_tail = bytes[boundary..cut].iter().all(|&b| b == 0);
        if cut == boundary || zero_tail {
            assert!(got.warnings.is_empty(), "cut at {cut}: {:?}", got.warnings);
        } else {
            assert_eq!(got.warnings.len(), 1, "cut at {cut}");
            assert_eq!(got.warnings[0].offset, Some(boundary as u64), "cut at {cut}");
            assert!(matches!(got.warnings[0].problem, Problem::Torn { .. }), "cut at {cut}");
        }
    }
}

#[test]
fn zero_padding_ends_a_file_quietly_whatever_its_length() {
    let good = file(7, &[full("t", rec(1, STATE_READY), b"one")]);
    for padding in [1, 3, 4, 40, 83, 84, 85, 4096] {
        let mut bytes = good.clone();
        bytes.resize(good.len() + padding, 0);
        let import = read(&[&bytes], 100);
        assert!(import.warnings.is_empty(), "padding {padding}: {:?}", import.warnings);
        assert_eq!(ids(&import), [1]);
    }
}

#[test]
fn bytes_after_the_records_end_are_reported() {
    let good = file(7, &[full("t", rec(1, STATE_READY), b"one")]);
    // A tail too short for a name length.
    let mut bytes = good.clone();
    bytes.extend_from_slice(&[0, 1]);
    let import = read(&[&bytes], 100);
    assert_eq!(problems(&import), [(Some(good.len() as u64), &Problem::Torn { needed: 4, left: 2 })]);
    // A zero id with data after it, in the padding or in the record itself.
    let mut bytes = good.clone();
    bytes.resize(good.len() + 500, 0);
    bytes[good.len() + 300] = 9;
    let import = read(&[&bytes], 100);
    let at = good.len() as u64;
    assert_eq!(problems(&import), [(Some(at), &Problem::DataAfterEnd { at: at + 300 })]);
    let mut bytes = good.clone();
    bytes.extend_from_slice(&full("t", rec(0, STATE_READY), b"zero"));
    let import = read(&[&bytes], 100);
    assert_eq!(problems(&import), [(Some(at), &Problem::DataAfterEnd { at })]);
    assert_eq!(ids(&import), [1]);
}

#[test]
fn a_file_without_a_known_version_is_skipped() {
    let next = file(7, &[full("t", rec(1, STATE_READY), b"one")]);
    let import = read(&[&[0; 4096], &next], 100);
    assert_eq!(problems(&import), [(Some(0), &Problem::UnknownVersion(0))]);
    assert_eq!(ids(&import), [1]);
    let import = read(&[&[6, 0, 0, 0, 1, 2, 3], &next], 100);
    assert_eq!(problems(&import), [(Some(0), &Problem::UnknownVersion(6))]);
    for short_file in [&[][..], &[7, 0, 0][..]] {
        let import = read(&[short_file, &next], 100);
        assert_eq!(problems(&import), [(None, &Problem::ShortHeader { bytes: short_file.len() as u64 })]);
        assert_eq!(ids(&import), [1]);
    }
}

// ---------------------------------------------------------------------------------------------
// The directory.
// ---------------------------------------------------------------------------------------------

#[test]
fn numbers_are_read_as_c_strtol_reads_them() {
    let cases: [(&str, Option<i32>); 15] = [
        ("1", Some(1)),
        ("42", Some(42)),
        ("007", Some(7)),
        ("+7", Some(7)),
        (" \t7", Some(7)),
        ("-3", Some(-3)),
        ("0", Some(0)),
        // No digits at all: strtol's end is the start, which is the end of "".
        ("", Some(0)),
        (" ", None),
        ("+", None),
        ("7x", None),
        ("7 ", None),
        ("1.tmp", None),
        // long, then its low 32 bits, as C's assignment to int keeps them.
        ("99999999999", Some(1215752191)),
        ("99999999999999999999999", Some(-1)),
    ];
    for (text, expected) in cases {
        assert_eq!(c_strtol_whole(text.as_bytes()), expected, "{text:?}");
    }
}

#[test]
fn the_directory_is_scanned_and_read_as_c_does() {
    let dir = TempDir::new("scan");
    let write = |name: &str, bytes: &[u8]| std::fs::write(dir.0.join(name), bytes).unwrap();
    write("binlog.1", &file(7, &[full("t", rec(1, STATE_READY), b"one")]));
    write("binlog.3", &file(7, &[full("t", rec(3, STATE_READY), b"three")]));
    write("binlog.007", &file(7, &[full("t", rec(7, STATE_READY), b"never read")]));
    write("binlog.2.tmp", b"not a binlog");
    write("binlog.x", b"not a binlog");
    write("lock", b"");
    let import = read_dir(&dir.0, 100).unwrap();
    assert_eq!(ids(&import), [1, 3]);
    assert_eq!(import.files, [dir.0.join("binlog.1"), dir.0.join("binlog.3")]);
    let mut got: Vec<String> = import.warnings.iter().map(|w| w.to_string()).collect();
    got.sort();
    let d = dir.0.display();
    assert_eq!(
        got,
        [
            format!("{d}/binlog.007: counted as number 7 but not read (beanstalkd reads only binlog.7)"),
            format!("{d}/binlog.2: missing"),
            format!("{d}/binlog.4: missing, and so is every file up to binlog.7"),
        ]
    );
}

#[test]
fn an_empty_or_unnumbered_directory_has_nothing_to_read() {
    let dir = TempDir::new("empty");
    let import = read_dir(&dir.0, 100).unwrap();
    assert!(import.jobs.is_empty() && import.warnings.is_empty() && import.files.is_empty());
    assert_eq!(import.next_id, 1);
    // "binlog." alone is number 0 to C's strtol, so C tries to open binlog.0.
    std::fs::write(dir.0.join("binlog."), b"").unwrap();
    let import = read_dir(&dir.0, 100).unwrap();
    let problems: Vec<&Problem> = import.warnings.iter().map(|w| &w.problem).collect();
    assert_eq!(problems, [&Problem::NotRead { number: 0 }, &Problem::Missing { first: 0, last: 0 }]);
    assert!(read_dir(&dir.0.join("absent"), 100).is_err());
}

#[test]
fn a_file_that_cannot_be_read_is_a_warning_and_the_next_is_read() {
    let dir = TempDir::new("unreadable");
    std::fs::create_dir(dir.0.join("binlog.1")).unwrap();
    std::fs::write(dir.0.join("binlog.2"), file(7, &[full("t", rec(2, STATE_READY), b"two")])).unwrap();
    let import = read_dir(&dir.0, 100).unwrap();
    assert_eq!(ids(&import), [2]);
    assert_eq!(import.warnings.len(), 1, "{:?}", import.warnings);
    assert_eq!(import.warnings[0].path, dir.0.join("binlog.1"));
    assert!(matches!(import.warnings[0].problem, Problem::Io(_) | Problem::ShortHeader { .. }));
}

// ---------------------------------------------------------------------------------------------
// The writer.
// ---------------------------------------------------------------------------------------------

fn image(id: u64, tube: &str, state: ImageState, body: &[u8]) -> JobImage {
    JobImage {
        id,
        tube: tube.into(),
        state,
        pri: 7,
        ttr_s: 60,
        delay_s: 0,
        created_at: T0 as u64,
        deadline: 0,
        counters: Counters::default(),
        body: body.to_vec(),
    }
}

fn written(jobs: &[JobImage], next_id: u64) -> (Vec<u8>, Written) {
    let mut writer = V7Writer::new(Vec::new()).unwrap();
    for j in jobs {
        writer.push(j).unwrap();
    }
    writer.finish(next_id).unwrap()
}

#[test]
fn a_record_has_c_s_layout_byte_for_byte() {
    // The spec's hexdump of `use tubeA` and `put 7 0 60 5` with body hello.
    let mut j = image(1, "tubeA", ImageState::Ready, b"hello");
    j.created_at = 0x0102_0304_0506_0708;
    j.counters = Counters { reserves: 1, timeouts: 2, releases: 3, buries: 4, kicks: 5 };
    let (bytes, w) = written(&[j], 0);
    let mut expected = vec![7, 0, 0, 0, 5, 0, 0, 0];
    expected.extend_from_slice(b"tubeA");
    expected.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]); // id
    expected.extend_from_slice(&[7, 0, 0, 0, 0, 0, 0, 0]); // pri, padding
    expected.extend_from_slice(&[0; 8]); // delay
    expected.extend_from_slice(&[0x00, 0x58, 0x47, 0xf8, 0x0d, 0, 0, 0]); // ttr, 60e9 ns
    expected.extend_from_slice(&[7, 0, 0, 0, 0, 0, 0, 0]); // body_size, padding
    expected.extend_from_slice(&[8, 7, 6, 5, 4, 3, 2, 1]); // created_at
    expected.extend_from_slice(&[0; 8]); // deadline_at
    expected.extend_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0, 5, 0, 0, 0]);
    expected.extend_from_slice(&[1, 0, 0, 0]); // state, padding
    expected.extend_from_slice(b"hello\r\n");
    assert_eq!(bytes, expected);
    assert_eq!(bytes.len(), 4 + 96);
    assert_eq!(w, Written { jobs: 1, bytes: 100, body_bytes_max: 5, next_id: 2 });
    assert_eq!(w.c_job_size_min(), 7);
}

#[test]
fn states_deadlines_and_durations_are_written_as_c_stores_them() {
    let mut delayed = image(2, "t", ImageState::Delayed, b"");
    delayed.deadline = (T0 + 5 * S) as u64;
    delayed.delay_s = 5;
    let mut buried = image(3, "t", ImageState::Buried, b"");
    buried.deadline = 17;
    let mut zero_ttr = image(4, "t", ImageState::Ready, b"");
    zero_ttr.ttr_s = 0;
    let (bytes, _) = written(&[delayed, buried, zero_ttr], 0);
    let rec_at = |n: usize| {
        let at = 4 + n * (4 + 1 + 80 + 2) + 4 + 1;
        decode_jobrec(&bytes[at..at + 80], Version::V7)
    };
    assert_eq!((rec_at(0).state, rec_at(0).deadline_ns, rec_at(0).delay_ns), (STATE_DELAYED, T0 + 5 * S, 5 * S));
    assert_eq!((rec_at(1).state, rec_at(1).deadline_ns), (STATE_BURIED, 0));
    assert_eq!((rec_at(2).state, rec_at(2).ttr_ns, rec_at(2).body_size), (STATE_READY, S, 2));
}

#[test]
fn the_export_carries_the_next_id() {
    let jobs = [image(3, "t", ImageState::Ready, b"x")];
    let (bytes, w) = written(&jobs, 100);
    assert_eq!(w.next_id, 100);
    assert_eq!(w.bytes, bytes.len() as u64);
    let import = read(&[&bytes], 100);
    assert!(import.warnings.is_empty());
    assert_eq!(ids(&import), [3]);
    assert_eq!(import.next_id, 100);
    // No marker when the jobs already give that id, or a higher one.
    for next_id in [0, 1, 4] {
        let (bytes, w) = written(&jobs, next_id);
        assert_eq!((bytes.len(), w.next_id), (4 + 4 + 1 + 80 + 3, 4));
    }
}

#[test]
fn jobs_c_cannot_hold_are_refused() {
    let mut writer = V7Writer::new(Vec::new()).unwrap();
    let bad = [
        image(0, "t", ImageState::Ready, b""),
        image(1, "-t", ImageState::Ready, b""),
        image(1, "", ImageState::Ready, b""),
        image(1, &"t".repeat(201), ImageState::Ready, b""),
        JobImage { created_at: u64::MAX, ..image(1, "t", ImageState::Ready, b"") },
        JobImage { deadline: u64::MAX, ..image(1, "t", ImageState::Delayed, b"") },
    ];
    for job in &bad {
        let e = writer.push(job).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{job:?}");
    }
    let (bytes, w) = writer.finish(0).unwrap();
    assert_eq!((bytes.len(), w.jobs), (4, 0));
}

#[test]
fn write_v7_orders_buried_jobs_by_bury_order_and_never_overwrites() {
    let dir = TempDir::new("write");
    let path = dir.0.join("binlog.1");
    let mut jobs = vec![
        JobImage { deadline: 2, ..image(1, "t", ImageState::Buried, b"first put, buried last") },
        image(5, "u", ImageState::Ready, b"ready"),
        JobImage { deadline: 1, ..image(3, "t", ImageState::Buried, b"buried first") },
        image(2, "t", ImageState::Ready, b"ready"),
    ];
    jobs.push(JobImage { deadline: 1, ..image(4, "t", ImageState::Buried, b"buried first too, higher id") });
    let w = write_v7(&path, &jobs, 10).unwrap();
    assert_eq!((w.jobs, w.next_id), (5, 10));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o400);
    let import = read_dir(&dir.0, 100).unwrap();
    assert!(import.warnings.is_empty(), "{:?}", import.warnings);
    assert_eq!(ids(&import), [2, 5, 3, 4, 1]);
    let buried: Vec<(u64, u64)> =
        import.jobs.iter().filter(|j| j.state == ImageState::Buried).map(|j| (j.id, j.deadline)).collect();
    assert_eq!(buried, [(3, 0), (4, 1), (1, 2)]);
    assert_eq!(import.next_id, 10);
    let e = write_v7(&path, &jobs, 10).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
    // A job the format cannot hold leaves no file behind.
    let other = dir.0.join("binlog.2");
    assert!(write_v7(&other, &[image(0, "t", ImageState::Ready, b"")], 0).is_err());
    assert!(!other.exists());
}

/// Images the writer accepts, with the fields its reader gives back as they
/// are: ready jobs have deadline 0 and ttr at least 1.
fn arb_image() -> impl Strategy<Value = JobImage> {
    let tube = prop_oneof![
        Just("default".to_string()),
        "[a-z][a-z0-9]{0,5}",
        "[A-Za-z0-9+/;.$_()][A-Za-z0-9+/;.$_()-]{0,199}",
    ];
    let state = prop_oneof![Just(ImageState::Ready), Just(ImageState::Delayed), Just(ImageState::Buried)];
    let counters = (any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(
        |(reserves, timeouts, releases, buries, kicks)| Counters { reserves, timeouts, releases, buries, kicks },
    );
    (
        tube,
        state,
        any::<u32>(),
        1..=u32::MAX,
        any::<u32>(),
        0..=i64::MAX as u64,
        0..=i64::MAX as u64,
        counters,
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(tube, state, pri, ttr_s, delay_s, created_at, deadline, counters, body)| JobImage {
            id: 0,
            tube,
            state,
            pri,
            ttr_s,
            delay_s,
            created_at,
            deadline: if state == ImageState::Ready { 0 } else { deadline },
            counters,
            body,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// What the writer writes, the reader reads back: the same images in the
    /// same order, except that buried jobs' bury order is renumbered from 0,
    /// and the same next id.
    #[test]
    fn the_reader_reads_back_what_the_writer_wrote(
        images in proptest::collection::vec(arb_image(), 0..40),
        id_gaps in proptest::collection::vec(1..1000u64, 40),
        extra_ids in 0..5u64,
    ) {
        let mut id = 0;
        let mut jobs = images;
        for (job, gap) in jobs.iter_mut().zip(&id_gaps) {
            id += gap;
            job.id = id;
        }
        let next_id = id + 1 + extra_ids;
        let (bytes, w) = written(&jobs, next_id);
        let import = read(&[&bytes], 300);
        prop_assert!(import.warnings.is_empty(), "{:?}", import.warnings);
        prop_assert_eq!(import.next_id, next_id);
        prop_assert_eq!(w.next_id, next_id);
        prop_assert_eq!(w.bytes, bytes.len() as u64);
        let mut seq = 0;
        let expected: Vec<JobImage> = jobs
            .into_iter()
            .map(|mut j| {
                if j.state == ImageState::Buried {
                    j.deadline = seq;
                    seq += 1;
                }
                j
            })
            .collect();
        prop_assert_eq!(import.jobs, expected);
    }
}
