//! WAL behaviour on a healthy disk: sequence numbers, rotation, reads, publishing, trimming,
//! skipping, the sparse index. Every test works in its own temporary directory.

// Helpers outside `#[test]` fns unwrap too: in a test, a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rstmdb_storage::wal::{Wal, WalError, WalOptions, WalRecord};

fn options(dir: &Path, segment_size_bytes: u64) -> WalOptions {
    WalOptions {
        segment_size_bytes,
        ..WalOptions::new(dir)
    }
}

fn open(dir: &Path, segment_size_bytes: u64) -> Wal {
    Wal::open(options(dir, segment_size_bytes), 1).unwrap().0
}

/// Deterministic payload of `len` bytes for record `i` (never contains the record magic).
fn payload(i: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| ((i * 31 + k as u64 * 7) % 251) as u8)
        .collect()
}

/// Appends one record per payload in one call and publishes them.
fn append(wal: &mut Wal, payloads: &[Vec<u8>]) -> u64 {
    let refs: Vec<&[u8]> = payloads.iter().map(|p| p.as_slice()).collect();
    let first = wal.append(&refs).unwrap();
    wal.publish(wal.last_seq());
    first
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

fn segment_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wal"))
        .collect();
    names.sort();
    names
}

fn name(seq: u64) -> String {
    format!("{seq:020}.wal")
}

#[test]
fn new_log_starts_at_seq_one_with_one_empty_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let (wal, report) = Wal::open(WalOptions::new(&dir), 1).unwrap();
    assert_eq!(segment_names(&dir), vec!["00000000000000000001.wal"]);
    assert_eq!(wal.next_seq(), 1);
    assert_eq!(wal.last_seq(), 0);
    assert_eq!(report.segments, 1);
    assert_eq!(report.last_seq, 0);
    assert_eq!(report.torn_tail, None);
    assert_eq!(wal.stats().earliest_seq, None);
    assert_eq!(wal.reader().earliest_seq(), None);
    assert!(wal.reader().read(1, 10, 1 << 20).unwrap().is_empty());
}

#[test]
fn append_assigns_consecutive_seqs_and_reads_them_back() {
    let tmp = tempfile::tempdir().unwrap();
    let mut wal = open(tmp.path(), 1 << 20);
    let batch1: Vec<Vec<u8>> = (0..3).map(|i| payload(i, 10 + i as usize)).collect();
    let batch2: Vec<Vec<u8>> = (3..8).map(|i| payload(i, i as usize * 3)).collect();
    assert_eq!(append(&mut wal, &batch1), 1);
    assert_eq!(append(&mut wal, &batch2), 4);
    assert_eq!(wal.next_seq(), 9);
    assert_eq!(
        wal.append(&[]).unwrap(),
        9,
        "an empty append writes nothing"
    );
    let records = read_all(&wal);
    assert_eq!(seqs(&records), (1..=8).collect::<Vec<_>>());
    for (r, p) in records.iter().zip(batch1.iter().chain(&batch2)) {
        assert_eq!(&r.payload, p);
        assert_eq!(r.flags, 0);
    }
}

#[test]
fn reopen_continues_the_sequence() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let mut wal = open(tmp.path(), 1 << 20);
        append(&mut wal, &[payload(1, 5), payload(2, 6)]);
        wal.sync().unwrap();
    }
    let (mut wal, report) = Wal::open(options(tmp.path(), 1 << 20), 1).unwrap();
    assert_eq!(report.last_seq, 2);
    assert_eq!(report.verified_records, 2);
    assert_eq!(
        wal.reader().published_seq(),
        2,
        "everything found at open is published"
    );
    assert_eq!(append(&mut wal, &[payload(3, 7)]), 3);
    assert_eq!(seqs(&read_all(&wal)), vec![1, 2, 3]);
}

#[test]
fn tiny_segments_rotate_and_reads_cross_every_boundary() {
    let tmp = tempfile::tempdir().unwrap();
    // 24-byte headers: two 20-byte payloads (88 bytes) fit in 100, a third does not.
    let mut wal = open(tmp.path(), 100);
    let all: Vec<Vec<u8>> = (0..20).map(|i| payload(i, 20)).collect();
    append(&mut wal, &all[..7]);
    for p in &all[7..] {
        append(&mut wal, std::slice::from_ref(p));
    }
    let expected: Vec<String> = (0..10).map(|k| name(1 + 2 * k)).collect();
    assert_eq!(segment_names(tmp.path()), expected);
    assert_eq!(wal.stats().segment_count, 10);
    for from in 1..=20u64 {
        let got = wal.reader().read(from, 100, 1 << 20).unwrap();
        assert_eq!(seqs(&got), (from..=20).collect::<Vec<_>>(), "from {from}");
        for r in &got {
            assert_eq!(r.payload, all[(r.seq - 1) as usize]);
        }
    }
    drop(wal);
    let wal = open(tmp.path(), 100);
    assert_eq!(read_all(&wal).len(), 20);
}

#[test]
fn record_larger_than_a_segment_goes_alone_into_a_fresh_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let mut wal = open(tmp.path(), 100);
    append(&mut wal, &[payload(1, 10)]);
    append(&mut wal, &[payload(2, 500), payload(3, 10)]);
    append(&mut wal, &[payload(4, 10)]);
    assert_eq!(
        segment_names(tmp.path()),
        vec![name(1), name(2), name(3)],
        "the big record sits alone in segment 2"
    );
    let sizes: Vec<u64> = wal.segments().iter().map(|s| s.size_bytes).collect();
    assert_eq!(sizes, vec![34, 524, 68]);
    let records = read_all(&wal);
    assert_eq!(records[1].payload, payload(2, 500));
    drop(wal);
    let wal = open(tmp.path(), 100);
    assert_eq!(seqs(&read_all(&wal)), vec![1, 2, 3, 4]);
}

#[test]
fn read_from_the_middle_honours_max_records_and_max_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut wal = open(tmp.path(), 300);
    let all: Vec<Vec<u8>> = (0..30).map(|i| payload(i, 10)).collect();
    append(&mut wal, &all);
    let reader = wal.reader();
    assert_eq!(
        seqs(&reader.read(12, 5, 1 << 20).unwrap()),
        vec![12, 13, 14, 15, 16]
    );
    // 35 bytes allow three 10-byte payloads, not four.
    assert_eq!(seqs(&reader.read(12, 100, 35).unwrap()), vec![12, 13, 14]);
    assert_eq!(seqs(&reader.read(12, 100, 30).unwrap()), vec![12, 13, 14]);
    assert_eq!(seqs(&reader.read(29, 100, 1 << 20).unwrap()), vec![29, 30]);
    assert!(reader.read(31, 100, 1 << 20).unwrap().is_empty());
    assert!(reader.read(12, 0, 1 << 20).unwrap().is_empty());
    assert_eq!(seqs(&reader.read(0, 2, 1 << 20).unwrap()), vec![1, 2]);
}

#[test]
fn read_returns_one_record_even_when_it_alone_exceeds_max_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut wal = open(tmp.path(), 1 << 20);
    append(&mut wal, &[payload(1, 1000), payload(2, 10)]);
    let got = wal.reader().read(1, 10, 100).unwrap();
    assert_eq!(seqs(&got), vec![1]);
    assert_eq!(got[0].payload.len(), 1000);
}

#[test]
fn readers_never_see_records_above_the_published_seq() {
    let tmp = tempfile::tempdir().unwrap();
    let mut wal = open(tmp.path(), 1 << 20);
    let refs: Vec<&[u8]> = vec![b"one", b"two", b"three"];
    wal.append(&refs).unwrap();
    let reader = wal.reader();
    assert_eq!(reader.published_seq(), 0);
    assert!(reader.read(1, 10, 1 << 20).unwrap().is_empty());
    assert_eq!(reader.iter_from(1).unwrap().count(), 0);
    wal.publish(2);
    assert_eq!(seqs(&reader.read(1, 10, 1 << 20).unwrap()), vec![1, 2]);
    wal.publish(1);
    assert_eq!(reader.published_seq(), 2, "publish never moves backwards");
    wal.publish(99);
    assert_eq!(
        reader.published_seq(),
        3,
        "publish is clamped to the last seq"
    );
    assert_eq!(seqs(&reader.read(1, 10, 1 << 20).unwrap()), vec![1, 2, 3]);
}

#[test]
fn iterator_yields_what_was_published_when_it_was_made() {
    let tmp = tempfile::tempdir().unwrap();
    let mut wal = open(tmp.path(), 200);
    let all: Vec<Vec<u8>> = (0..50).map(|i| payload(i, i as usize)).collect();
    append(&mut wal, &all);
    let iter = wal.reader().iter_from(7).unwrap();
    assert_eq!(iter.until(), 50);
    append(&mut wal, &[payload(99, 3)]);
    let got: Vec<WalRecord> = iter.collect::<Result<_, _>>().unwrap();
    assert_eq!(seqs(&got), (7..=50).collect::<Vec<_>>());
    for r in &got {
        assert_eq!(r.payload, all[(r.seq - 1) as usize]);
    }
}

#[test]
fn remove_segments_below_deletes_whole_old_segments_and_reads_restart_at_the_earliest() {
    let tmp = tempfile::tempdir().unwrap();
    let mut wal = open(tmp.path(), 100);
    let all: Vec<Vec<u8>> = (0..10).map(|i| payload(i, 20)).collect();
    append(&mut wal, &all); // segments 1, 3, 5, 7, 9 with two records each
    let before = wal.stats();
    // Segment 5 holds 5 and 6: 6 >= 6, so it stays.
    let (deleted, bytes) = wal.remove_segments_below(6).unwrap();
    assert_eq!((deleted, bytes), (2, 4 * 44));
    assert_eq!(segment_names(tmp.path()), vec![name(5), name(7), name(9)]);
    let after = wal.stats();
    assert_eq!(after.segment_count, 3);
    assert_eq!(after.total_size_bytes, before.total_size_bytes - bytes);
    assert_eq!(after.earliest_seq, Some(5));
    assert_eq!(
        seqs(&wal.reader().read(1, 3, 1 << 20).unwrap()),
        vec![5, 6, 7]
    );
    assert_eq!(seqs(&wal.reader().read(4, 1, 1 << 20).unwrap()), vec![5]);
    drop(wal);
    let (wal, report) = Wal::open(options(tmp.path(), 100), 1).unwrap();
    assert_eq!(report.last_seq, 10);
    assert_eq!(seqs(&read_all(&wal)), (5..=10).collect::<Vec<_>>());
}

#[test]
fn remove_segments_below_never_removes_the_active_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let mut wal = open(tmp.path(), 100);
    append(
        &mut wal,
        &(0..4).map(|i| payload(i, 20)).collect::<Vec<_>>(),
    );
    let (deleted, _) = wal.remove_segments_below(u64::MAX).unwrap();
    assert_eq!(deleted, 1);
    assert_eq!(segment_names(tmp.path()), vec![name(3)]);
    assert_eq!(wal.stats().earliest_seq, Some(3));
    assert_eq!(append(&mut wal, &[payload(5, 1)]), 5);
}

#[test]
fn a_reader_keeps_going_when_segments_vanish_under_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut wal = open(tmp.path(), 100);
    append(
        &mut wal,
        &(0..20).map(|i| payload(i, 20)).collect::<Vec<_>>(),
    );
    let mut iter = wal.reader().iter_from(1).unwrap();
    assert_eq!(iter.next().unwrap().unwrap().seq, 1);
    wal.remove_segments_below(11).unwrap();
    let rest: Vec<u64> = iter.map(|r| r.unwrap().seq).collect();
    // Segment 1 was already open and is read to its end; then reading resumes at the earliest
    // remaining segment.
    assert_eq!(rest, std::iter::once(2).chain(11..=20).collect::<Vec<_>>());
}

#[test]
fn skip_to_leaves_a_gap_at_a_segment_boundary_that_reopen_accepts() {
    let tmp = tempfile::tempdir().unwrap();
    let mut wal = open(tmp.path(), 1 << 20);
    append(&mut wal, &[payload(1, 5), payload(2, 5), payload(3, 5)]);
    wal.skip_to(3).map(|_| ()).unwrap_err();
    wal.skip_to(4).unwrap(); // equal to next_seq: nothing to do
    assert_eq!(segment_names(tmp.path()), vec![name(1)]);
    wal.skip_to(100).unwrap();
    assert_eq!(wal.next_seq(), 100);
    assert_eq!(wal.last_seq(), 99);
    assert_eq!(segment_names(tmp.path()), vec![name(1), name(100)]);
    assert_eq!(append(&mut wal, &[payload(100, 5), payload(101, 5)]), 100);
    let reader = wal.reader();
    assert_eq!(
        seqs(&reader.read(1, 10, 1 << 20).unwrap()),
        vec![1, 2, 3, 100, 101]
    );
    assert_eq!(seqs(&reader.read(3, 2, 1 << 20).unwrap()), vec![3, 100]);
    assert_eq!(seqs(&reader.read(50, 10, 1 << 20).unwrap()), vec![100, 101]);
    drop(wal);
    let (wal, report) = Wal::open(options(tmp.path(), 1 << 20), 1).unwrap();
    assert_eq!(report.last_seq, 101);
    assert_eq!(report.torn_tail, None);
    assert_eq!(seqs(&read_all(&wal)), vec![1, 2, 3, 100, 101]);
}

#[test]
fn skip_to_on_an_empty_segment_renames_it_and_survives_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let mut wal = open(tmp.path(), 1 << 20);
    wal.skip_to(42).unwrap();
    assert_eq!(segment_names(tmp.path()), vec![name(42)]);
    drop(wal);
    let (mut wal, report) = Wal::open(options(tmp.path(), 1 << 20), 1).unwrap();
    assert_eq!(report.last_seq, 41);
    assert_eq!(wal.next_seq(), 42);
    assert_eq!(append(&mut wal, &[payload(1, 3)]), 42);
    assert_eq!(wal.stats().earliest_seq, Some(42));
}

#[test]
fn skip_to_backwards_is_an_invalid_argument() {
    let tmp = tempfile::tempdir().unwrap();
    let mut wal = open(tmp.path(), 1 << 20);
    append(&mut wal, &[payload(1, 3), payload(2, 3)]);
    assert!(matches!(
        wal.skip_to(1),
        Err(WalError::InvalidArgument { .. })
    ));
}

#[test]
fn a_record_too_large_is_rejected_without_writing_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(
        WalOptions {
            max_record_bytes: 100,
            ..WalOptions::new(tmp.path())
        },
        1,
    )
    .unwrap()
    .0;
    let ok = payload(1, 100);
    let big = payload(2, 101);
    let err = wal.append(&[&ok, &big]).unwrap_err();
    assert!(
        matches!(err, WalError::RecordTooLarge { len: 101, max: 100 }),
        "{err}"
    );
    assert_eq!(wal.next_seq(), 1);
    assert_eq!(wal.stats().total_size_bytes, 0);
    assert_eq!(wal.append(&[&ok]).unwrap(), 1);
}

#[test]
fn segments_below_verify_from_are_only_listed_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    let mut wal = open(tmp.path(), 100);
    append(
        &mut wal,
        &(0..10).map(|i| payload(i, 20)).collect::<Vec<_>>(),
    );
    drop(wal);
    // Damage record 1's payload, in the oldest segment.
    let first = tmp.path().join(name(1));
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[30] ^= 0x01;
    std::fs::write(&first, bytes).unwrap();

    let (wal, report) = Wal::open(options(tmp.path(), 100), 9).unwrap();
    assert_eq!(
        report.verified_records, 2,
        "only the segment holding seq 9 is read"
    );
    assert_eq!(report.last_seq, 10);
    let reader = wal.reader();
    assert_eq!(
        seqs(&reader.read(5, 10, 1 << 20).unwrap()),
        (5..=10).collect::<Vec<_>>()
    );
    match reader.read(1, 10, 1 << 20) {
        Err(WalError::Corrupt {
            segment,
            file_offset,
            ..
        }) => {
            assert_eq!(segment, first);
            assert_eq!(file_offset, 0);
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    drop(wal);
    assert!(matches!(
        Wal::open(options(tmp.path(), 100), 1),
        Err(WalError::Corrupt { .. })
    ));
}

#[test]
fn a_read_in_the_middle_of_a_big_segment_uses_the_sparse_index() {
    let tmp = tempfile::tempdir().unwrap();
    let mut wal = open(tmp.path(), 64 << 20);
    let all: Vec<Vec<u8>> = (0..4000).map(|i| payload(i, 1000)).collect();
    for chunk in all.chunks(100) {
        append(&mut wal, chunk);
    }
    let check = |wal: &Wal| {
        let reader = wal.reader();
        for from in [1u64, 777, 2500, 3999] {
            let before = wal.stats().bytes_read;
            let got = reader.read(from, 1, 1 << 20).unwrap();
            assert_eq!(seqs(&got), vec![from]);
            assert_eq!(got[0].payload, all[(from - 1) as usize]);
            let read = wal.stats().bytes_read - before;
            assert!(
                read < 512 * 1024,
                "read {read} bytes of a 4 MB segment for one record"
            );
        }
    };
    check(&wal);
    drop(wal);
    // Rebuilt by the scan at open.
    let wal = open(tmp.path(), 64 << 20);
    check(&wal);
}

#[test]
fn a_segment_not_read_at_open_is_indexed_once_by_the_first_reader() {
    let tmp = tempfile::tempdir().unwrap();
    let mut wal = open(tmp.path(), 2 << 20);
    let all: Vec<Vec<u8>> = (0..3000).map(|i| payload(i, 1000)).collect();
    for chunk in all.chunks(100) {
        append(&mut wal, chunk);
    }
    assert_eq!(wal.stats().segment_count, 2);
    drop(wal);
    let (wal, report) = Wal::open(options(tmp.path(), 2 << 20), 2900).unwrap();
    assert!(report.verified_records < 3000);
    let reader = wal.reader();
    assert_eq!(seqs(&reader.read(1500, 1, 1 << 20).unwrap()), vec![1500]);
    let before = wal.stats().bytes_read;
    assert_eq!(seqs(&reader.read(1000, 1, 1 << 20).unwrap()), vec![1000]);
    assert!(wal.stats().bytes_read - before < 512 * 1024);
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = open(tmp.path(), 1 << 20);
    assert!(matches!(
        Wal::open(WalOptions::new(tmp.path()), 1),
        Err(WalError::Locked { .. })
    ));
    drop(wal);
    open(tmp.path(), 1 << 20);
}

#[test]
fn stats_report_true_sizes_and_io_counters() {
    let tmp = tempfile::tempdir().unwrap();
    let mut wal = open(tmp.path(), 100);
    append(
        &mut wal,
        &(0..5).map(|i| payload(i, 20)).collect::<Vec<_>>(),
    );
    wal.sync().unwrap();
    let s = wal.stats();
    assert_eq!(s.segment_count, 3);
    assert_eq!(s.total_size_bytes, 5 * 44);
    assert_eq!(s.earliest_seq, Some(1));
    assert_eq!(s.last_seq, 5);
    assert_eq!(s.bytes_written, 5 * 44);
    assert_eq!(s.writes, 3, "one write per segment touched");
    assert!(s.fsyncs >= 3);
    read_all(&wal);
    let s2 = wal.stats();
    assert!(s2.bytes_read >= 5 * 44);
    assert!(s2.reads > s.reads);
    let on_disk: u64 = segment_names(tmp.path())
        .iter()
        .map(|n| std::fs::metadata(tmp.path().join(n)).unwrap().len())
        .sum();
    assert_eq!(on_disk, s2.total_size_bytes);
}

#[test]
fn other_files_in_the_directory_are_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("notes.txt"), b"hello").unwrap();
    std::fs::write(tmp.path().join("0000000000000001.wal"), b"old format").unwrap();
    std::fs::create_dir(tmp.path().join("damaged")).unwrap();
    let mut wal = open(tmp.path(), 1 << 20);
    assert_eq!(append(&mut wal, &[payload(1, 1)]), 1);
    assert_eq!(wal.stats().segment_count, 1);
}

#[test]
fn a_concurrent_reader_sees_every_published_record_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let mut wal = open(tmp.path(), 4096);
    let reader = wal.reader();
    let total = 2000u64;
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut next = 1u64;
            while next <= total {
                let published = reader.published_seq();
                for r in reader.read(next, 64, 1 << 20).unwrap() {
                    assert_eq!(r.seq, next);
                    assert!(r.seq <= reader.published_seq());
                    assert!(r.seq <= published.max(reader.published_seq()));
                    assert_eq!(r.payload, payload(r.seq, (r.seq % 97) as usize));
                    next += 1;
                }
                if done.load(Ordering::Acquire) && next > reader.published_seq() {
                    break;
                }
            }
            next - 1
        })
    };
    let mut seq = 1;
    while seq <= total {
        let batch: Vec<Vec<u8>> = (seq..(seq + 7).min(total + 1))
            .map(|s| payload(s, (s % 97) as usize))
            .collect();
        seq += batch.len() as u64;
        append(&mut wal, &batch);
        if seq % 5 == 0 {
            wal.sync().unwrap();
        }
    }
    done.store(true, Ordering::Release);
    assert_eq!(watcher.join().unwrap(), total);
}

#[test]
fn open_creates_missing_parent_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let dir: PathBuf = tmp.path().join("a").join("b").join("wal");
    let mut wal = open(&dir, 1 << 20);
    append(&mut wal, &[payload(1, 1)]);
    wal.sync().unwrap();
    assert_eq!(segment_names(&dir), vec![name(1)]);
}
