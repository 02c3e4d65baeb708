//! Fuzz target: the write-ahead log's reader (`runnerbean::wal::segment` and
//! `runnerbean::wal::recover`).
//!
//! The input is the bytes of one segment file after a valid header (so that
//! the fuzzer spends its time on records, not on the magic number), written
//! to a directory of its own and read back twice: once record by record
//! with `segment::read`, once whole with `recover`. Checked:
//!
//! * no panic, and no allocation larger than the file (a corrupt length must
//!   not ask for a gigabyte: libFuzzer's memory limit catches that);
//! * every record the reader accepts encodes back to exactly the bytes it was
//!   read from, so nothing is accepted that the writer would not have written;
//! * records are back to back from the header on, and reading stops at the
//!   first that fails, saying where;
//! * the jobs `recover` brings back are exactly those the accepted records
//!   describe when applied in order (a second, plain model of the replay
//!   rules), and reading is deterministic.

#![no_main]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use libfuzzer_sys::fuzz_target;
use runnerbean::wal::image::ImageState;
use runnerbean::wal::record::{self, Record, StateFields};
use runnerbean::wal::recover::recover;
use runnerbean::wal::segment::{self, End, Header};

fuzz_target!(|data: &[u8]| {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir =
        std::env::temp_dir().join(format!("rb-fuzz-wal-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&dir).unwrap();
    // Salt 0 (a file from before reuse, read as ever): the committed seeds'
    // records were sealed that way, and a salt only moves where the
    // checksum starts.
    let header = Header { shard: 0, shards: 1, seq: 1, next_id: 1, created_at: 0, salt: 0 };
    let salt = header.salt;
    let mut file = header.encode().to_vec();
    file.extend_from_slice(data);
    let path = dir.join(segment::file_name(0, 1));
    std::fs::write(&path, &file).unwrap();

    // Record by record: each accepted record re-encodes to its own bytes.
    let mut model: BTreeMap<u64, (StateFields, Vec<u8>)> = BTreeMap::new();
    let mut next = segment::HEADER_BYTES as u64;
    let scan = segment::read(&path, |offset, rec| {
        assert_eq!(offset, next, "records are back to back");
        let mut encoded = Vec::new();
        match &rec {
            Record::Job { fields, ttr_s, created_at, tube, body } => {
                record::encode_job_head(&mut encoded, salt, fields, *ttr_s, *created_at, tube, body);
                encoded.extend_from_slice(body);
                model.insert(fields.id, (*fields, body.to_vec()));
            }
            Record::State(fields) => {
                record::encode_state(&mut encoded, salt, fields);
                if let Some(job) = model.get_mut(&fields.id) {
                    job.0 = *fields;
                }
            }
            Record::Delete { id } => {
                record::encode_delete(&mut encoded, salt, *id);
                model.remove(id);
            }
        }
        let at = offset as usize;
        assert_eq!(
            &file[at..at + encoded.len()],
            encoded.as_slice(),
            "an accepted record is exactly what the writer writes"
        );
        next = offset + encoded.len() as u64;
    })
    .unwrap()
    .expect("a valid header");
    match scan.end {
        End::Eof => assert_eq!(next, file.len() as u64),
        End::Zeros => assert!(file[next as usize..].iter().take(8).all(|&b| b == 0)),
        End::Damaged { offset, cut, .. } => {
            assert_eq!(offset, next);
            assert_eq!(offset + cut, file.len() as u64);
        }
    }

    // The whole directory: the jobs are those of the model, twice over.
    for _ in 0..2 {
        let recovered = recover(&dir).unwrap();
        let got: BTreeMap<u64, (ImageState, u32, Vec<u8>)> = recovered
            .jobs
            .iter()
            .map(|j| (j.image.id, (j.image.state, j.image.pri, j.body_bytes().to_vec())))
            .collect();
        let want: BTreeMap<u64, (ImageState, u32, Vec<u8>)> =
            model.iter().map(|(&id, (f, body))| (id, (f.state, f.pri, body.clone()))).collect();
        assert_eq!(got, want);
    }
    std::fs::remove_dir_all(&dir).unwrap();
});
