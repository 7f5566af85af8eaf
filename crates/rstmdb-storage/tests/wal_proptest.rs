//! Property: whatever sequence of batches is appended, with any segment size, reopens at any
//! point and any `verify_from`, reads return exactly what was written.

// Helpers outside `#[test]` fns unwrap too: in a test, a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use proptest::collection::vec;
use proptest::prelude::*;
use rstmdb_storage::wal::{Wal, WalOptions, WalRecord};

fn payload(i: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| ((i * 131 + k as u64 * 17) % 256) as u8)
        .collect()
}

fn open(dir: &Path, segment_size_bytes: u64, verify_from: u64) -> Wal {
    let opts = WalOptions {
        segment_size_bytes,
        ..WalOptions::new(dir)
    };
    Wal::open(opts, verify_from).unwrap().0
}

/// What `read(from, max_records, max_bytes)` must return for the records in `model`
/// (record `i` has seq `i + 1`).
fn expected_read(
    model: &[Vec<u8>],
    from: u64,
    max_records: usize,
    max_bytes: usize,
) -> Vec<WalRecord> {
    let mut out: Vec<WalRecord> = Vec::new();
    let mut total = 0usize;
    for (i, p) in model.iter().enumerate().skip(from.max(1) as usize - 1) {
        if out.len() == max_records || (!out.is_empty() && total + p.len() > max_bytes) {
            break;
        }
        total += p.len();
        out.push(WalRecord {
            seq: i as u64 + 1,
            term: 0,
            flags: 0,
            payload: p.clone(),
        });
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1000,
        // Never write regression files into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn appended_records_read_back_exactly(
        segment_size in 1u64..600,
        steps in vec((vec(0usize..120, 0..6), any::<bool>(), any::<u8>()), 1..6),
        reads in vec((0u64..60, 1usize..20, 0usize..600), 1..5),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let mut wal = open(tmp.path(), segment_size, 1);
        let mut model: Vec<Vec<u8>> = Vec::new();
        for (sizes, reopen, verify) in steps {
            let batch: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(k, &len)| payload((model.len() + k) as u64, len))
                .collect();
            let refs: Vec<&[u8]> = batch.iter().map(|p| p.as_slice()).collect();
            let first = wal.append(&refs).unwrap();
            prop_assert_eq!(first, model.len() as u64 + 1);
            model.extend(batch);
            wal.publish(wal.last_seq());
            if reopen {
                if verify % 2 == 0 {
                    wal.sync().unwrap();
                }
                drop(wal);
                let verify_from = u64::from(verify) % (model.len() as u64 + 2);
                wal = open(tmp.path(), segment_size, verify_from);
                prop_assert_eq!(wal.last_seq(), model.len() as u64);
                prop_assert_eq!(wal.reader().published_seq(), model.len() as u64);
            }
        }
        let all: Vec<WalRecord> = wal
            .reader()
            .iter_from(1)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        prop_assert_eq!(&all, &expected_read(&model, 1, usize::MAX, usize::MAX));
        for (from, max_records, max_bytes) in reads {
            let got = wal.reader().read(from, max_records, max_bytes).unwrap();
            prop_assert_eq!(got, expected_read(&model, from, max_records, max_bytes));
        }
        let stats = wal.stats();
        let on_disk: u64 = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".wal"))
            .map(|e| e.metadata().unwrap().len())
            .sum();
        prop_assert_eq!(stats.total_size_bytes, on_disk);
        drop(wal);
        let (_, report) = Wal::open(
            WalOptions { segment_size_bytes: segment_size, ..WalOptions::new(tmp.path()) },
            1,
        )
        .unwrap();
        prop_assert_eq!(report.torn_tail, None);
        prop_assert_eq!(report.verified_records, model.len() as u64);
    }
}
