//! Injected faults (a full disk mid-write, failing fsyncs, a failing truncate): the log is
//! rolled back or poisoned, never left with half a record in front of the next one.

// Helpers outside `#[test]` fns unwrap too: in a test, a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::Path;

use rstmdb_storage::wal::{FaultPlan, Wal, WalError, WalOptions, WalRecord};

fn open(dir: &Path, segment_size_bytes: u64) -> Wal {
    let opts = WalOptions {
        segment_size_bytes,
        ..WalOptions::new(dir)
    };
    Wal::open(opts, 1).unwrap().0
}

fn payload(i: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| ((i * 31 + k as u64 * 7) % 251) as u8)
        .collect()
}

fn read_all(wal: &Wal) -> Vec<WalRecord> {
    wal.reader()
        .iter_from(1)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

fn seqs(records: &[WalRecord]) -> Vec<u64> {
    records.iter().map(|r| r.seq).collect()
}

fn name(seq: u64) -> String {
    format!("{seq:020}.wal")
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

fn fail_write_after(bytes: usize) -> FaultPlan {
    FaultPlan {
        fail_write_after_bytes: Some(bytes),
        ..FaultPlan::default()
    }
}

fn failing_syncs(n: u32) -> FaultPlan {
    FaultPlan {
        failing_syncs: n,
        ..FaultPlan::default()
    }
}

fn is_io(e: &WalError) -> bool {
    matches!(e, WalError::Io { .. })
}

#[test]
fn a_failed_write_leaves_no_partial_record_and_the_next_append_works() {
    let tmp = tempfile::tempdir().unwrap();
    let seg = tmp.path().join(name(1));
    let mut wal = open(tmp.path(), 1 << 20);
    let mut expected: Vec<Vec<u8>> = (0..3).map(|i| payload(i, 30)).collect();
    for p in &expected {
        wal.append(&[p]).unwrap();
    }
    wal.sync().unwrap();
    let (a, b) = (payload(10, 50), payload(11, 5));
    for k in [0usize, 1, 10, 23, 24, 25, 73, 74, 75, 102] {
        let len = file_len(&seg);
        let next = wal.next_seq();
        wal.set_fault(fail_write_after(k));
        let err = wal.append(&[&a, &b]).unwrap_err();
        assert!(is_io(&err), "k={k}: {err}");
        assert!(
            err.to_string().contains(&seg.display().to_string()),
            "{err}"
        );
        assert_eq!(file_len(&seg), len, "k={k}: partial write not cut");
        assert_eq!(wal.next_seq(), next, "k={k}");
        let c = payload(k as u64, k % 7);
        assert_eq!(wal.append(&[&c]).unwrap(), next);
        expected.push(c);
    }
    wal.publish(wal.last_seq());
    let records = read_all(&wal);
    assert_eq!(
        records
            .iter()
            .map(|r| r.payload.clone())
            .collect::<Vec<_>>(),
        expected
    );
    drop(wal);
    let (wal, report) = Wal::open(WalOptions::new(tmp.path()), 1).unwrap();
    assert_eq!(report.torn_tail, None);
    assert_eq!(read_all(&wal).len(), expected.len());
}

#[test]
fn a_failed_write_in_a_later_segment_undoes_the_whole_append() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut wal = open(dir, 100);
    wal.append(&[&payload(1, 20)]).unwrap(); // segment 1: 44 bytes
    let seg1_len = file_len(&dir.join(name(1)));
    // 5 records of 44 bytes: one more in segment 1, two in segment 3, two in segment 5; the
    // write to segment 5 fails half way.
    let batch: Vec<Vec<u8>> = (2..7).map(|i| payload(i, 20)).collect();
    let refs: Vec<&[u8]> = batch.iter().map(|p| p.as_slice()).collect();
    wal.set_fault(FaultPlan {
        fail_write_after_bytes: Some(50),
        writes_before_failure: 2,
        ..FaultPlan::default()
    });
    let err = wal.append(&refs).unwrap_err();
    assert!(is_io(&err), "{err}");
    assert_eq!(wal.next_seq(), 2);
    assert_eq!(file_len(&dir.join(name(1))), seg1_len);
    assert!(
        !dir.join(name(3)).exists(),
        "segment created by the failed append removed"
    );
    assert!(!dir.join(name(5)).exists());
    assert_eq!(wal.stats().segment_count, 1);
    assert_eq!(wal.append(&refs).unwrap(), 2);
    wal.publish(wal.last_seq());
    assert_eq!(seqs(&read_all(&wal)), (1..=6).collect::<Vec<_>>());
    drop(wal);
    let (wal, report) = Wal::open(
        WalOptions {
            segment_size_bytes: 100,
            ..WalOptions::new(dir)
        },
        1,
    )
    .unwrap();
    assert_eq!(report.torn_tail, None);
    assert_eq!(read_all(&wal).len(), 6);
}

#[test]
fn a_failed_sync_drops_the_unsynced_records_and_moves_next_seq_back() {
    let tmp = tempfile::tempdir().unwrap();
    let seg = tmp.path().join(name(1));
    let mut wal = open(tmp.path(), 1 << 20);
    for i in 1..=3 {
        wal.append(&[&payload(i, 10)]).unwrap();
    }
    wal.sync().unwrap();
    let synced_len = file_len(&seg);
    wal.append(&[&payload(4, 10), &payload(5, 10)]).unwrap();
    // Under a relaxed fsync policy records can be published before they are synced.
    wal.publish(5);
    let reader = wal.reader();
    assert_eq!(reader.published_seq(), 5);

    wal.set_fault(failing_syncs(1));
    let err = wal.sync().unwrap_err();
    assert!(is_io(&err), "{err}");
    assert_eq!(wal.next_seq(), 4);
    assert_eq!(file_len(&seg), synced_len);
    assert_eq!(
        reader.published_seq(),
        3,
        "readers no longer see the dropped records"
    );
    assert_eq!(seqs(&reader.read(1, 10, 1 << 20).unwrap()), vec![1, 2, 3]);

    assert_eq!(wal.append(&[b"four again"]).unwrap(), 4);
    wal.sync().unwrap();
    wal.publish(4);
    assert_eq!(read_all(&wal)[3].payload, b"four again");
    drop(wal);
    let (wal, report) = Wal::open(WalOptions::new(tmp.path()), 1).unwrap();
    assert_eq!(report.torn_tail, None);
    assert_eq!(seqs(&read_all(&wal)), vec![1, 2, 3, 4]);
}

#[test]
fn a_failed_sync_of_a_new_segment_leaves_it_empty_and_reusable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut wal = open(dir, 100);
    wal.append(&[&payload(1, 60)]).unwrap();
    wal.sync().unwrap();
    wal.append(&[&payload(2, 60)]).unwrap(); // rotates into segment 2
    assert!(dir.join(name(2)).exists());
    wal.set_fault(failing_syncs(1));
    wal.sync().unwrap_err();
    assert_eq!(wal.next_seq(), 2);
    assert_eq!(file_len(&dir.join(name(2))), 0);
    assert_eq!(wal.append(&[&payload(3, 60)]).unwrap(), 2);
    wal.sync().unwrap();
    drop(wal);
    let (wal, report) = Wal::open(
        WalOptions {
            segment_size_bytes: 100,
            ..WalOptions::new(dir)
        },
        1,
    )
    .unwrap();
    assert_eq!(report.torn_tail, None);
    let records = read_all(&wal);
    assert_eq!(seqs(&records), vec![1, 2]);
    assert_eq!(records[1].payload, payload(3, 60));
}

#[test]
fn a_failed_fsync_while_rotating_fails_the_append_and_drops_unsynced_records() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut wal = open(dir, 100);
    wal.append(&[&payload(1, 20)]).unwrap();
    wal.sync().unwrap();
    wal.append(&[&payload(2, 20)]).unwrap(); // unsynced, still in segment 1
    wal.set_fault(failing_syncs(1));
    // Needs a new segment: the rotation syncs segment 1 first, and that fails.
    let err = wal.append(&[&payload(3, 60)]).unwrap_err();
    assert!(is_io(&err), "{err}");
    assert_eq!(
        wal.next_seq(),
        2,
        "record 2 was never synced and is dropped"
    );
    assert_eq!(file_len(&dir.join(name(1))), 44);
    assert!(!dir.join(name(3)).exists());
    assert!(!dir.join(name(2)).exists());
    assert_eq!(wal.append(&[&payload(4, 60)]).unwrap(), 2);
}

#[test]
fn a_failed_truncate_after_a_failed_write_poisons_the_log_until_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let mut wal = open(tmp.path(), 1 << 20);
    wal.append(&[&payload(1, 10)]).unwrap();
    wal.sync().unwrap();
    wal.set_fault(FaultPlan {
        fail_write_after_bytes: Some(10),
        failing_truncates: 1,
        ..FaultPlan::default()
    });
    let err = wal.append(&[&payload(2, 10)]).unwrap_err();
    assert!(matches!(err, WalError::Poisoned { .. }), "{err}");
    assert!(wal.poisoned().is_some());
    assert!(matches!(
        wal.append(&[b"x"]),
        Err(WalError::Poisoned { .. })
    ));
    assert!(matches!(wal.sync(), Err(WalError::Poisoned { .. })));
    assert!(matches!(wal.skip_to(10), Err(WalError::Poisoned { .. })));
    drop(wal);
    let (mut wal, report) = Wal::open(WalOptions::new(tmp.path()), 1).unwrap();
    let torn = report.torn_tail.unwrap();
    assert_eq!((torn.file_offset, torn.bytes_removed), (34, 10));
    assert_eq!(wal.append(&[&payload(2, 10)]).unwrap(), 2);
    wal.publish(2);
    assert_eq!(seqs(&read_all(&wal)), vec![1, 2]);
}

#[test]
fn a_failed_sync_whose_recovery_also_fails_poisons_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let mut wal = open(tmp.path(), 1 << 20);
    wal.append(&[&payload(1, 10)]).unwrap();
    wal.set_fault(failing_syncs(2));
    assert!(matches!(wal.sync(), Err(WalError::Poisoned { .. })));
    assert!(matches!(
        wal.append(&[b"x"]),
        Err(WalError::Poisoned { .. })
    ));
    drop(wal);
    Wal::open(WalOptions::new(tmp.path()), 1).unwrap();
}

#[test]
fn a_failed_write_after_a_synced_rotation_cuts_durably_back() {
    // The rotation synced segment 1 including this append's first group; the rollback must
    // cut that group off again and sync the cut.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut wal = open(dir, 100);
    wal.append(&[&payload(1, 20)]).unwrap();
    let fsyncs = wal.stats().fsyncs;
    wal.set_fault(FaultPlan {
        fail_write_after_bytes: Some(5),
        writes_before_failure: 1,
        ..FaultPlan::default()
    });
    let batch = [payload(2, 20), payload(3, 20)];
    wal.append(&[&batch[0], &batch[1]]).unwrap_err();
    assert_eq!(file_len(&dir.join(name(1))), 44);
    assert!(!dir.join(name(3)).exists());
    assert!(
        wal.stats().fsyncs > fsyncs + 1,
        "rotation sync plus the sync of the cut"
    );
    assert_eq!(wal.append(&[&batch[0], &batch[1]]).unwrap(), 2);
    wal.publish(3);
    assert_eq!(seqs(&read_all(&wal)), vec![1, 2, 3]);
}
