//! The WAL as a raft log: record version 2 (with a term), appending at a given seq, cutting
//! the unpublished suffix, reading records that are written but not published, and all of that
//! under faults, encryption, repair and rekey. Every test works in its own temporary directory.

// Helpers outside `#[test]` fns unwrap too: in a test, a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rstmdb_storage::wal::{
    FaultPlan, RECORD_HEADER_BYTES, RECORD_HEADER_V2_BYTES, Wal, WalError, WalOptions, WalRecord,
    repair, rewrite,
};
use rstmdb_storage::{Cipher, EncryptionKey};

fn options(dir: &Path, segment_size_bytes: u64) -> WalOptions {
    WalOptions {
        segment_size_bytes,
        ..WalOptions::new(dir)
    }
}

fn open(dir: &Path, segment_size_bytes: u64) -> Wal {
    Wal::open(options(dir, segment_size_bytes), 1).unwrap().0
}

/// Appends `(term, payload)` records at `next_seq`; returns the first seq.
fn append_terms(wal: &mut Wal, records: &[(u64, &str)]) -> u64 {
    let recs: Vec<(u64, &[u8])> = records.iter().map(|(t, p)| (*t, p.as_bytes())).collect();
    wal.append_with_terms(wal.next_seq(), &recs).unwrap()
}

/// Every written record, published or not.
fn written(wal: &Wal) -> Vec<WalRecord> {
    wal.reader()
        .read_unpublished(1, u64::MAX, usize::MAX)
        .unwrap()
}

/// (seq, term, payload) of every written record.
fn triples(wal: &Wal) -> Vec<(u64, u64, String)> {
    written(wal)
        .into_iter()
        .map(|r| (r.seq, r.term, String::from_utf8(r.payload).unwrap()))
        .collect()
}

fn segment_paths(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    paths.sort();
    paths
}

fn name(seq: u64) -> String {
    format!("{seq:020}.wal")
}

fn names(dir: &Path) -> Vec<String> {
    segment_paths(dir)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

fn is_invalid_argument(e: &WalError) -> bool {
    matches!(e, WalError::InvalidArgument { .. })
}

#[test]
fn v2_records_round_trip_with_their_terms_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = open(dir.path(), 1 << 20);
    assert_eq!(append_terms(&mut wal, &[(1, "a"), (1, "b"), (3, "c")]), 1);
    let expected = vec![
        (1, 1, "a".to_string()),
        (2, 1, "b".to_string()),
        (3, 3, "c".to_string()),
    ];
    assert_eq!(triples(&wal), expected);
    let reader = wal.reader();
    assert_eq!(reader.term_of(1).unwrap(), Some(1));
    assert_eq!(reader.term_of(3).unwrap(), Some(3));
    assert_eq!(reader.term_of(4).unwrap(), None);
    assert_eq!(reader.term_of(0).unwrap(), None);
    wal.sync().unwrap();
    drop(wal);

    let image = std::fs::read(dir.path().join(name(1))).unwrap();
    assert_eq!(image.len(), 3 * (RECORD_HEADER_V2_BYTES + 1));
    assert_eq!(image[4], 2, "a record with a term is version 2");
    assert_eq!(
        &image[20..28],
        &1u64.to_le_bytes(),
        "the term follows the seq"
    );

    let (wal, report) = Wal::open(options(dir.path(), 1 << 20), 1).unwrap();
    assert_eq!(report.last_seq, 3);
    assert_eq!(report.torn_tail, None);
    assert_eq!(triples(&wal), expected);
    let published: Vec<u64> = wal
        .reader()
        .iter_from(1)
        .unwrap()
        .map(|r| r.unwrap().term)
        .collect();
    assert_eq!(published, vec![1, 1, 3]);
}

#[test]
fn term_zero_is_written_as_v1_byte_for_byte_like_append() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut plain = open(a.path(), 1 << 20);
    plain.append(&[b"one", b"two"]).unwrap();
    let mut termed = open(b.path(), 1 << 20);
    termed
        .append_with_terms(1, &[(0, b"one".as_slice()), (0, b"two".as_slice())])
        .unwrap();
    plain.sync().unwrap();
    termed.sync().unwrap();
    let image = std::fs::read(a.path().join(name(1))).unwrap();
    assert_eq!(image, std::fs::read(b.path().join(name(1))).unwrap());
    assert_eq!(image.len(), 2 * RECORD_HEADER_BYTES + 6);
    assert_eq!(image[4], 1);
    assert!(written(&termed).iter().all(|r| r.term == 0));
}

#[test]
fn segments_mixing_v1_and_v2_records_reopen_and_read_in_order() {
    let dir = tempfile::tempdir().unwrap();
    // Small segments so the mix also crosses segment boundaries.
    let mut wal = open(dir.path(), 200);
    let mut expected = Vec::new();
    for i in 0..30u64 {
        let payload = format!("record-{i}");
        let term = if i % 3 == 0 { 0 } else { i / 3 + 1 };
        if term == 0 {
            wal.append(&[payload.as_bytes()]).unwrap();
        } else {
            append_terms(&mut wal, &[(term, &payload)]);
        }
        expected.push((i + 1, term, payload));
    }
    wal.sync().unwrap();
    wal.publish(wal.last_seq());
    assert!(segment_paths(dir.path()).len() > 2);
    assert_eq!(triples(&wal), expected);
    drop(wal);

    let (wal, report) = Wal::open(options(dir.path(), 200), 1).unwrap();
    assert_eq!(report.last_seq, 30);
    assert_eq!(triples(&wal), expected);
    let reader = wal.reader();
    for (seq, term, _) in &expected {
        assert_eq!(reader.term_of(*seq).unwrap(), Some(*term), "seq {seq}");
    }
    let page = reader.read(10, 5, usize::MAX).unwrap();
    assert_eq!(
        page.iter().map(|r| (r.seq, r.term)).collect::<Vec<_>>(),
        expected[9..14]
            .iter()
            .map(|(s, t, _)| (*s, *t))
            .collect::<Vec<_>>()
    );
}

#[test]
fn append_with_terms_at_another_seq_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = open(dir.path(), 1 << 20);
    append_terms(&mut wal, &[(1, "a")]);
    for at in [1, 3, 0] {
        let err = wal
            .append_with_terms(at, &[(1, b"x".as_slice())])
            .unwrap_err();
        assert!(is_invalid_argument(&err), "{err}");
    }
    assert_eq!(wal.next_seq(), 2);
    assert_eq!(wal.append_with_terms(2, &[]).unwrap(), 2);
    assert_eq!(triples(&wal), vec![(1, 1, "a".to_string())]);
}

#[test]
fn read_unpublished_sees_unsynced_records_from_another_thread() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = open(dir.path(), 1 << 20);
    append_terms(&mut wal, &[(1, "a"), (1, "b")]);
    wal.sync().unwrap();
    wal.publish(2);
    append_terms(&mut wal, &[(2, "c"), (2, "d"), (2, "e")]);
    // Neither synced nor published.
    let reader = wal.reader();
    let seen = std::thread::spawn(move || {
        let all = reader.read_unpublished(1, u64::MAX, 100).unwrap();
        let bounded = reader.read_unpublished(2, 4, 100).unwrap();
        let few = reader.read_unpublished(3, u64::MAX, 2).unwrap();
        let published = reader.read(1, 100, usize::MAX).unwrap();
        let term = reader.term_of(5).unwrap();
        (all, bounded, few, published, term)
    })
    .join()
    .unwrap();
    let seqs = |rs: &[WalRecord]| rs.iter().map(|r| r.seq).collect::<Vec<_>>();
    assert_eq!(seqs(&seen.0), vec![1, 2, 3, 4, 5]);
    assert_eq!(seen.0[4].payload, b"e");
    assert_eq!(seqs(&seen.1), vec![2, 3, 4]);
    assert_eq!(seqs(&seen.2), vec![3, 4]);
    assert_eq!(seqs(&seen.3), vec![1, 2], "read still stops at published");
    assert_eq!(seen.4, Some(2));
    assert_eq!(wal.reader().written_seq(), 5);
    assert!(
        wal.reader()
            .read_unpublished(6, u64::MAX, 10)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn truncate_within_a_segment_then_append_with_a_new_term() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = open(dir.path(), 1 << 20);
    append_terms(
        &mut wal,
        &[(1, "a"), (1, "b"), (1, "c"), (1, "d"), (1, "e")],
    );
    wal.sync().unwrap();
    wal.publish(2);
    wal.truncate_from(4).unwrap();
    assert_eq!(wal.next_seq(), 4);
    assert_eq!(wal.reader().written_seq(), 3);
    assert_eq!(wal.reader().term_of(4).unwrap(), None);
    let len = std::fs::metadata(dir.path().join(name(1))).unwrap().len();
    assert_eq!(len, 3 * (RECORD_HEADER_V2_BYTES as u64 + 1));

    assert_eq!(append_terms(&mut wal, &[(2, "D2"), (2, "E2")]), 4);
    let expected = vec![
        (1, 1, "a".to_string()),
        (2, 1, "b".to_string()),
        (3, 1, "c".to_string()),
        (4, 2, "D2".to_string()),
        (5, 2, "E2".to_string()),
    ];
    assert_eq!(triples(&wal), expected);
    assert_eq!(wal.reader().term_of(4).unwrap(), Some(2));
    wal.sync().unwrap();
    drop(wal);
    let wal = open(dir.path(), 1 << 20);
    assert_eq!(triples(&wal), expected);
}

#[test]
fn truncate_unsynced_records_then_reopen_without_a_sync() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = open(dir.path(), 1 << 20);
    append_terms(&mut wal, &[(1, "a"), (1, "b"), (1, "c")]);
    wal.truncate_from(2).unwrap();
    drop(wal);
    // truncate_from made the cut (and what is below it) durable.
    let wal = open(dir.path(), 1 << 20);
    assert_eq!(triples(&wal), vec![(1, 1, "a".to_string())]);
}

#[test]
fn truncate_across_segments_removes_later_segments_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = open(dir.path(), 150);
    let records: Vec<(u64, String)> = (1..=20u64)
        .map(|i| (i, format!("payload-{i:02}")))
        .collect();
    let refs: Vec<(u64, &str)> = records.iter().map(|(t, p)| (*t, p.as_str())).collect();
    append_terms(&mut wal, &refs);
    wal.sync().unwrap();
    wal.publish(3);
    let before = names(dir.path());
    assert!(before.len() >= 4, "{before:?}");
    // A seq in the middle of the second segment.
    let second_first: u64 = before[1].trim_end_matches(".wal").parse().unwrap();
    let cut = second_first + 1;
    wal.truncate_from(cut).unwrap();
    assert_eq!(wal.next_seq(), cut);
    assert_eq!(names(dir.path()), before[..2].to_vec());
    assert_eq!(
        written(&wal).last().map(|r| r.seq),
        Some(cut - 1),
        "nothing above the cut"
    );
    append_terms(&mut wal, &[(99, "new")]);
    assert_eq!(wal.reader().term_of(cut).unwrap(), Some(99));
    // Appending goes on rotating normally from the cut segment.
    append_terms(&mut wal, &[(99, "more-1"), (99, "more-2"), (99, "more-3")]);
    wal.sync().unwrap();
    let expected = triples(&wal);
    assert_eq!(expected.len() as u64, cut + 3);
    drop(wal);
    let wal = open(dir.path(), 150);
    assert_eq!(triples(&wal), expected);
}

#[test]
fn truncate_at_a_segment_boundary_removes_the_segment_starting_there() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = open(dir.path(), 150);
    let records: Vec<(u64, String)> = (1..=12u64)
        .map(|i| (1, format!("payload-{i:02}")))
        .collect();
    let refs: Vec<(u64, &str)> = records.iter().map(|(t, p)| (*t, p.as_str())).collect();
    append_terms(&mut wal, &refs);
    let before = names(dir.path());
    let second_first: u64 = before[1].trim_end_matches(".wal").parse().unwrap();
    wal.truncate_from(second_first).unwrap();
    assert_eq!(names(dir.path()), before[..1].to_vec());
    assert_eq!(wal.next_seq(), second_first);
    append_terms(&mut wal, &[(2, "x")]);
    drop(wal);
    let wal = open(dir.path(), 150);
    assert_eq!(wal.next_seq(), second_first + 1);
    assert_eq!(wal.reader().term_of(second_first).unwrap(), Some(2));
}

#[test]
fn truncate_below_the_first_record_empties_the_log_and_continues_at_the_cut() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = open(dir.path(), 150);
    wal.skip_to(100).unwrap();
    let records: Vec<(u64, String)> = (0..10u64).map(|i| (4, format!("payload-{i:02}"))).collect();
    let refs: Vec<(u64, &str)> = records.iter().map(|(t, p)| (*t, p.as_str())).collect();
    append_terms(&mut wal, &refs);
    assert!(names(dir.path()).len() > 1);
    wal.truncate_from(50).unwrap();
    assert_eq!(wal.next_seq(), 50);
    assert!(written(&wal).is_empty());
    assert_eq!(names(dir.path()), vec![name(50)]);
    assert_eq!(append_terms(&mut wal, &[(5, "fresh")]), 50);
    drop(wal);
    let wal = open(dir.path(), 150);
    assert_eq!(triples(&wal), vec![(50, 5, "fresh".to_string())]);
}

#[test]
fn truncate_at_the_first_record_empties_the_segment_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = open(dir.path(), 1 << 20);
    append_terms(&mut wal, &[(1, "a"), (1, "b")]);
    wal.truncate_from(1).unwrap();
    assert_eq!(wal.next_seq(), 1);
    assert_eq!(names(dir.path()), vec![name(1)]);
    assert_eq!(
        std::fs::metadata(dir.path().join(name(1))).unwrap().len(),
        0
    );
    append_terms(&mut wal, &[(2, "A")]);
    drop(wal);
    let wal = open(dir.path(), 1 << 20);
    assert_eq!(triples(&wal), vec![(1, 2, "A".to_string())]);
}

#[test]
fn truncate_into_a_skip_gap_keeps_the_next_seq_at_the_cut() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = open(dir.path(), 1 << 20);
    append_terms(&mut wal, &[(1, "a"), (1, "b")]);
    wal.skip_to(10).unwrap();
    append_terms(&mut wal, &[(2, "j"), (2, "k")]);
    wal.truncate_from(5).unwrap();
    assert_eq!(wal.next_seq(), 5);
    assert_eq!(names(dir.path()), vec![name(1), name(5)]);
    append_terms(&mut wal, &[(3, "e")]);
    drop(wal);
    let wal = open(dir.path(), 1 << 20);
    assert_eq!(
        triples(&wal),
        vec![
            (1, 1, "a".to_string()),
            (2, 1, "b".to_string()),
            (5, 3, "e".to_string())
        ]
    );
}

#[test]
fn truncate_at_or_below_published_or_past_the_end_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = open(dir.path(), 1 << 20);
    append_terms(&mut wal, &[(1, "a"), (1, "b"), (1, "c")]);
    wal.publish(2);
    for seq in [0, 1, 2, 5] {
        let err = wal.truncate_from(seq).unwrap_err();
        assert!(is_invalid_argument(&err), "{seq}: {err}");
    }
    wal.truncate_from(4).unwrap();
    assert_eq!(wal.next_seq(), 4, "truncating at next_seq changes nothing");
    assert_eq!(written(&wal).len(), 3);
    assert_eq!(wal.poisoned(), None);
    // A publisher on another handle cannot publish what is cut.
    let publisher = wal.publisher();
    wal.truncate_from(3).unwrap();
    publisher.publish(10);
    assert_eq!(wal.reader().published_seq(), 2);
}

#[test]
fn a_failing_truncate_of_the_only_segment_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = open(dir.path(), 1 << 20);
    append_terms(&mut wal, &[(1, "a"), (1, "b"), (1, "c")]);
    wal.set_fault(FaultPlan {
        failing_truncates: 1,
        ..FaultPlan::default()
    });
    let err = wal.truncate_from(2).unwrap_err();
    assert!(matches!(err, WalError::Io { .. }), "{err}");
    assert_eq!(wal.poisoned(), None);
    assert_eq!(wal.next_seq(), 4);
    assert_eq!(written(&wal).len(), 3);
    wal.truncate_from(2).unwrap();
    append_terms(&mut wal, &[(2, "B")]);
    assert_eq!(
        triples(&wal),
        vec![(1, 1, "a".to_string()), (2, 2, "B".to_string())]
    );
}

#[test]
fn a_failing_sync_during_truncate_poisons_and_reopen_has_nothing_above_the_cut() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = open(dir.path(), 1 << 20);
    append_terms(&mut wal, &[(1, "a"), (1, "b"), (1, "c"), (1, "d")]);
    wal.sync().unwrap();
    wal.set_fault(FaultPlan {
        failing_syncs: 1,
        ..FaultPlan::default()
    });
    let err = wal.truncate_from(3).unwrap_err();
    assert!(matches!(err, WalError::Poisoned { .. }), "{err}");
    assert!(wal.poisoned().is_some());
    assert!(matches!(
        wal.append_with_terms(3, &[(2, b"x".as_slice())]),
        Err(WalError::Poisoned { .. })
    ));
    drop(wal);
    let (mut wal, report) = Wal::open(options(dir.path(), 1 << 20), 1).unwrap();
    assert_eq!(report.last_seq, 2);
    wal.lower_published(0);
    assert_eq!(written(&wal).last().map(|r| r.seq), Some(2));
    append_terms(&mut wal, &[(2, "C")]);
    assert_eq!(wal.reader().term_of(3).unwrap(), Some(2));
}

#[test]
fn faults_while_removing_segments_leave_a_prefix_that_a_retry_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = open(dir.path(), 150);
    let records: Vec<(u64, String)> = (1..=20u64)
        .map(|i| (1, format!("payload-{i:02}")))
        .collect();
    let refs: Vec<(u64, &str)> = records.iter().map(|(t, p)| (*t, p.as_str())).collect();
    append_terms(&mut wal, &refs);
    wal.sync().unwrap();
    let before = names(dir.path());
    assert!(before.len() >= 4);
    let cut = 2;

    // The first removal fails: nothing has changed, and the writer is still usable.
    wal.set_fault(FaultPlan {
        failing_removes: 1,
        ..FaultPlan::default()
    });
    let err = wal.truncate_from(cut).unwrap_err();
    assert!(matches!(err, WalError::Io { .. }), "{err}");
    assert_eq!(wal.poisoned(), None);
    assert_eq!(names(dir.path()), before);
    assert_eq!(written(&wal).len(), 20);

    // The directory fsync after the first removal fails: poisoned, newest segment gone.
    wal.set_fault(FaultPlan {
        failing_syncs: 1,
        ..FaultPlan::default()
    });
    let err = wal.truncate_from(cut).unwrap_err();
    assert!(matches!(err, WalError::Poisoned { .. }), "{err}");
    drop(wal);
    let (mut wal, report) = Wal::open(options(dir.path(), 150), 1).unwrap();
    // Open publishes everything it finds; a raft log lowers that to its commit index.
    assert_eq!(wal.reader().published_seq(), report.last_seq);
    assert!(is_invalid_argument(&wal.truncate_from(cut).unwrap_err()));
    wal.lower_published(cut - 1);
    let after = names(dir.path());
    assert_eq!(after, before[..before.len() - 1].to_vec());
    let seqs: Vec<u64> = written(&wal).iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=report.last_seq).collect::<Vec<_>>(), "a prefix");
    assert!(report.last_seq >= cut - 1);

    wal.truncate_from(cut).unwrap();
    drop(wal);
    let (wal, report) = Wal::open(options(dir.path(), 150), 1).unwrap();
    assert_eq!(report.last_seq, cut - 1);
    assert_eq!(names(dir.path()), vec![name(1)]);
    assert_eq!(written(&wal).len() as u64, cut - 1);
}

fn cipher(b: u8) -> Arc<Cipher> {
    Arc::new(Cipher::new(&EncryptionKey::from_bytes([b; 32])))
}

fn sealed_options(dir: &Path) -> WalOptions {
    WalOptions {
        cipher: Some(cipher(7)),
        ..WalOptions::new(dir)
    }
}

#[test]
fn encrypted_v2_records_bind_their_term() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(sealed_options(dir.path()), 1).unwrap();
    append_terms(
        &mut wal,
        &[(5, "secret-a"), (5, "secret-b"), (6, "secret-c")],
    );
    wal.sync().unwrap();
    assert_eq!(
        triples(&wal),
        vec![
            (1, 5, "secret-a".to_string()),
            (2, 5, "secret-b".to_string()),
            (3, 6, "secret-c".to_string())
        ]
    );
    drop(wal);
    let path = dir.path().join(name(1));
    let image = std::fs::read(&path).unwrap();
    assert!(!image.windows(6).any(|w| w == b"secret"));
    assert_eq!(image[4], 2);

    // Flip the term of record 1: the CRC no longer matches, and a valid record follows, so
    // this is corruption.
    let mut flipped = image.clone();
    flipped[20] ^= 0x01;
    std::fs::write(&path, &flipped).unwrap();
    let err = Wal::open(sealed_options(dir.path()), 1).unwrap_err();
    assert!(matches!(err, WalError::Corrupt { .. }), "{err}");

    // Recompute the CRC as an attacker could: authentication still fails.
    let record_len = image.len() / 3;
    let payload = &flipped[RECORD_HEADER_V2_BYTES..record_len];
    let crc = crc32c::crc32c_append(crc32c::crc32c(&flipped[..28]), payload);
    flipped[28..32].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, &flipped).unwrap();
    let (wal, _) = Wal::open(sealed_options(dir.path()), 1).unwrap();
    let err = wal.reader().read_unpublished(1, 1, 1).unwrap_err();
    assert!(matches!(err, WalError::Encryption { seq: 1, .. }), "{err}");
    assert_eq!(wal.reader().read_unpublished(2, 3, 10).unwrap().len(), 2);
}

#[test]
fn rekey_keeps_every_record_term_and_version() {
    let (src, dst, back) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let mut wal = open(src.path(), 1 << 20);
    wal.append(&[b"v1"]).unwrap();
    append_terms(&mut wal, &[(3, "v2")]);
    wal.sync().unwrap();
    let expected = triples(&wal);
    drop(wal);
    let report = rewrite(src.path(), dst.path(), None, Some(cipher(7))).unwrap();
    assert_eq!(report.records, 2);
    let (sealed, _) = Wal::open(sealed_options(dst.path()), 1).unwrap();
    assert_eq!(triples(&sealed), expected);
    drop(sealed);
    rewrite(dst.path(), back.path(), Some(cipher(7)), None).unwrap();
    assert_eq!(
        std::fs::read(back.path().join(name(1))).unwrap(),
        std::fs::read(src.path().join(name(1))).unwrap(),
        "plaintext round trip is byte-identical"
    );
}

#[test]
fn repair_reads_v2_records_and_cuts_at_a_damaged_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = open(dir.path(), 1 << 20);
    wal.append(&[b"first"]).unwrap();
    append_terms(&mut wal, &[(2, "second"), (2, "third"), (3, "fourth")]);
    wal.sync().unwrap();
    drop(wal);
    assert!(repair(dir.path()).unwrap().is_clean());
    assert_eq!(repair(dir.path()).unwrap().last_seq, 4);

    // Damage record 3 (a v2 record) in its payload; record 4 stays valid after it.
    let path = dir.path().join(name(1));
    let mut image = std::fs::read(&path).unwrap();
    let third_at = RECORD_HEADER_BYTES + 5 + RECORD_HEADER_V2_BYTES + 6;
    image[third_at + RECORD_HEADER_V2_BYTES + 1] ^= 0xff;
    std::fs::write(&path, &image).unwrap();
    assert!(Wal::open(options(dir.path(), 1 << 20), 1).is_err());
    let report = repair(dir.path()).unwrap();
    let damage = report.damage.clone().unwrap();
    assert_eq!(damage.file_offset, third_at as u64);
    assert_eq!(damage.seq, Some(3));
    assert_eq!(report.last_seq, 2);
    let wal = open(dir.path(), 1 << 20);
    assert_eq!(
        triples(&wal),
        vec![(1, 0, "first".to_string()), (2, 2, "second".to_string())]
    );
}

#[test]
fn an_encrypted_log_truncates_and_reseals_the_new_term() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(sealed_options(dir.path()), 1).unwrap();
    append_terms(&mut wal, &[(1, "a"), (1, "b"), (1, "c")]);
    wal.truncate_from(2).unwrap();
    append_terms(&mut wal, &[(2, "B")]);
    wal.sync().unwrap();
    drop(wal);
    let (wal, _) = Wal::open(sealed_options(dir.path()), 1).unwrap();
    assert_eq!(
        triples(&wal),
        vec![(1, 1, "a".to_string()), (2, 2, "B".to_string())]
    );
    assert_eq!(wal.stats().segment_count, 1);
}
