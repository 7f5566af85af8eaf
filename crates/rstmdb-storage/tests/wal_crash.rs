//! Crashes and damage: a kill at every byte of the tail, bit flips, zero-filled tails, damaged
//! sealed segments, and `repair`. Every test works on copies in temporary directories.

// Helpers outside `#[test]` fns unwrap too: in a test, a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};

use rstmdb_storage::wal::{
    OpenReport, RECORD_HEADER_BYTES, Wal, WalError, WalOptions, WalRecord, repair,
};

fn options(dir: &Path, segment_size_bytes: u64) -> WalOptions {
    WalOptions {
        segment_size_bytes,
        ..WalOptions::new(dir)
    }
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

fn name(seq: u64) -> String {
    format!("{seq:020}.wal")
}

/// Writes `payloads` (one append each), syncs, and closes the log.
fn write_log(dir: &Path, segment_size_bytes: u64, payloads: &[Vec<u8>]) {
    let (mut wal, _) = Wal::open(options(dir, segment_size_bytes), 1).unwrap();
    for p in payloads {
        wal.append(&[p]).unwrap();
    }
    wal.sync().unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

fn open_at(dir: &Path, segment_size_bytes: u64) -> Result<(Wal, OpenReport), WalError> {
    Wal::open(options(dir, segment_size_bytes), 1)
}

fn flip_bit(path: &Path, offset: u64, bit: u8) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= 1 << bit;
    fs::write(path, bytes).unwrap();
}

fn expect_corrupt(result: Result<(Wal, OpenReport), WalError>) -> (PathBuf, u64, String) {
    match result {
        Err(WalError::Corrupt {
            segment,
            file_offset,
            reason,
            ..
        }) => (segment, file_offset, reason),
        Err(other) => panic!("expected corruption, got {other}"),
        Ok((_, report)) => panic!("expected corruption, open succeeded: {report:?}"),
    }
}

/// Payload sizes that put record boundaries around header-sized edges.
fn varied_payloads(n: u64) -> Vec<Vec<u8>> {
    let sizes = [0usize, 1, 23, 24, 25, 57, 3, 100, 0, 7, 48, 31];
    (0..n)
        .map(|i| payload(i, sizes[i as usize % sizes.len()]))
        .collect()
}

/// For every length of the last segment from the end of record N-3 to its full length:
/// open succeeds, reports a torn tail exactly when the length is not a record boundary, reads
/// exactly the fully written records, and takes a new append that a later open finds clean.
fn kill_at_every_point(segment_size_bytes: u64, payloads: &[Vec<u8>]) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write_log(&src, segment_size_bytes, payloads);
    let (wal, _) = open_at(&src, segment_size_bytes).unwrap();
    let last = wal.segments().pop().unwrap();
    drop(wal);
    // Record boundaries inside the last segment, and how many records end at or before each.
    let first_index = (last.first_seq - 1) as usize;
    let mut boundaries = vec![(0u64, first_index)];
    let mut end = 0u64;
    for (k, p) in payloads[first_index..].iter().enumerate() {
        end += (RECORD_HEADER_BYTES + p.len()) as u64;
        boundaries.push((end, first_index + k + 1));
    }
    assert_eq!(end, last.size_bytes);
    let n = payloads.len();
    assert!(
        n - first_index >= 3,
        "the last segment must hold the last three records"
    );
    let start = boundaries
        .iter()
        .find(|(_, count)| *count == n - 3)
        .unwrap()
        .0;

    for len in start..=end {
        let case = tmp.path().join(format!("len-{len}"));
        copy_dir(&src, &case);
        let seg = case.join(last.path.file_name().unwrap());
        fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len)
            .unwrap();
        let complete = boundaries.iter().rev().find(|(b, _)| *b <= len).unwrap();
        let at_boundary = complete.0 == len;
        let kept = complete.1;

        let (mut wal, report) = open_at(&case, segment_size_bytes)
            .unwrap_or_else(|e| panic!("length {len}: open failed: {e}"));
        match &report.torn_tail {
            None => assert!(at_boundary, "length {len}: torn tail not reported"),
            Some(t) => {
                assert!(!at_boundary, "length {len}: torn tail at a record boundary");
                assert_eq!(t.segment, seg);
                assert_eq!(t.file_offset, complete.0);
                assert_eq!(t.bytes_removed, len - complete.0);
            }
        }
        assert_eq!(
            fs::metadata(&seg).unwrap().len(),
            complete.0,
            "length {len}"
        );
        assert_eq!(report.last_seq, kept as u64, "length {len}");
        let records = read_all(&wal);
        assert_eq!(records.len(), kept, "length {len}");
        for r in &records {
            assert_eq!(r.payload, payloads[(r.seq - 1) as usize], "length {len}");
        }
        assert_eq!(wal.append(&[b"after the crash"]).unwrap(), kept as u64 + 1);
        wal.sync().unwrap();
        drop(wal);
        let (wal, report) = open_at(&case, segment_size_bytes).unwrap();
        assert_eq!(report.torn_tail, None, "length {len}: second open");
        let records = read_all(&wal);
        assert_eq!(records.len(), kept + 1);
        assert_eq!(records[kept].payload, b"after the crash");
        drop(wal);
        fs::remove_dir_all(&case).unwrap();
    }
}

#[test]
fn kill_at_every_byte_of_the_tail_recovers_exactly_the_written_prefix() {
    kill_at_every_point(1 << 20, &varied_payloads(12));
}

#[test]
fn kill_at_every_byte_of_the_tail_of_a_rotated_log() {
    // 300-byte segments: several segments. Pick a record count that leaves at least three
    // records in the last one (same rotation rule as the writer).
    let segment_size = 300u64;
    let n = (20..60)
        .find(|&n| {
            let mut len = 0u64;
            let mut in_last = 0;
            for p in varied_payloads(n) {
                let rec = (RECORD_HEADER_BYTES + p.len()) as u64;
                if len > 0 && len + rec > segment_size {
                    len = 0;
                    in_last = 0;
                }
                len += rec;
                in_last += 1;
            }
            in_last >= 3
        })
        .unwrap();
    let payloads = varied_payloads(n);
    let tmp = tempfile::tempdir().unwrap();
    write_log(tmp.path(), segment_size, &payloads);
    let (wal, _) = open_at(tmp.path(), segment_size).unwrap();
    assert!(wal.segments().len() >= 3);
    drop(wal);
    kill_at_every_point(segment_size, &payloads);
}

#[test]
fn a_bit_flip_in_a_middle_record_is_corruption_naming_segment_and_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let payloads: Vec<Vec<u8>> = (0..5).map(|i| payload(i, 40)).collect();
    write_log(&src, 1 << 20, &payloads);
    let record_len = (RECORD_HEADER_BYTES + 40) as u64;
    let middle = 2 * record_len; // record 3
    let bits = (0..RECORD_HEADER_BYTES as u64 * 8).chain([(24 + 10) * 8, (24 + 39) * 8 + 7]);
    for bit in bits {
        let case = tmp.path().join(format!("bit-{bit}"));
        copy_dir(&src, &case);
        let seg = case.join(name(1));
        flip_bit(&seg, middle + bit / 8, (bit % 8) as u8);
        let (segment, offset, reason) = expect_corrupt(open_at(&case, 1 << 20));
        assert_eq!(segment, seg, "bit {bit}");
        assert_eq!(offset, middle, "bit {bit}: {reason}");
        assert_eq!(
            fs::metadata(&seg).unwrap().len(),
            5 * record_len,
            "nothing was cut"
        );
        fs::remove_dir_all(&case).unwrap();
    }
}

#[test]
fn a_bit_flip_in_the_last_record_is_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let payloads: Vec<Vec<u8>> = (0..5).map(|i| payload(i, 40)).collect();
    write_log(&src, 1 << 20, &payloads);
    let record_len = (RECORD_HEADER_BYTES + 40) as u64;
    let last = 4 * record_len;
    let bits = (0..RECORD_HEADER_BYTES as u64 * 8).chain([(24 + 10) * 8 + 3]);
    for bit in bits {
        let case = tmp.path().join(format!("bit-{bit}"));
        copy_dir(&src, &case);
        let seg = case.join(name(1));
        flip_bit(&seg, last + bit / 8, (bit % 8) as u8);
        let (wal, report) = open_at(&case, 1 << 20).unwrap_or_else(|e| panic!("bit {bit}: {e}"));
        let torn = report.torn_tail.unwrap();
        assert_eq!(torn.file_offset, last, "bit {bit}");
        assert_eq!(torn.bytes_removed, record_len);
        assert_eq!(read_all(&wal).len(), 4);
        drop(wal);
        fs::remove_dir_all(&case).unwrap();
    }
}

#[test]
fn a_zero_filled_tail_is_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let payloads: Vec<Vec<u8>> = (0..3).map(|i| payload(i, 40)).collect();
    write_log(tmp.path(), 1 << 20, &payloads);
    let seg = tmp.path().join(name(1));
    let len = fs::metadata(&seg).unwrap().len();
    let mut bytes = fs::read(&seg).unwrap();
    bytes.extend_from_slice(&[0u8; 4096]);
    fs::write(&seg, bytes).unwrap();
    let (mut wal, report) = open_at(tmp.path(), 1 << 20).unwrap();
    let torn = report.torn_tail.unwrap();
    assert_eq!((torn.file_offset, torn.bytes_removed), (len, 4096));
    assert_eq!(read_all(&wal).len(), 3);
    assert_eq!(wal.append(&[b"x"]).unwrap(), 4);
}

#[test]
fn zeros_followed_by_a_valid_record_are_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let payloads: Vec<Vec<u8>> = (0..3).map(|i| payload(i, 40)).collect();
    write_log(tmp.path(), 1 << 20, &payloads);
    let seg = tmp.path().join(name(1));
    let record_len = RECORD_HEADER_BYTES + 40;
    let mut bytes = fs::read(&seg).unwrap();
    // Zero record 2 out: record 3 after it is still valid.
    bytes[record_len..2 * record_len].fill(0);
    fs::write(&seg, bytes).unwrap();
    let (segment, offset, reason) = expect_corrupt(open_at(tmp.path(), 1 << 20));
    assert_eq!((segment, offset), (seg, record_len as u64));
    assert!(reason.contains("seq 3"), "{reason}");
}

#[test]
fn a_torn_record_at_the_end_of_a_sealed_segment_is_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let payloads: Vec<Vec<u8>> = (0..6).map(|i| payload(i, 20)).collect();
    write_log(tmp.path(), 100, &payloads); // segments 1, 3, 5
    let seg = tmp.path().join(name(3));
    let f = fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(44 + 10).unwrap();
    let (segment, offset, _) = expect_corrupt(open_at(tmp.path(), 100));
    assert_eq!((segment, offset), (seg, 44));
}

#[test]
fn an_empty_segment_in_the_middle_is_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let payloads: Vec<Vec<u8>> = (0..6).map(|i| payload(i, 20)).collect();
    write_log(tmp.path(), 100, &payloads); // segments 1, 3, 5
    fs::OpenOptions::new()
        .write(true)
        .open(tmp.path().join(name(3)))
        .unwrap()
        .set_len(0)
        .unwrap();
    let (segment, offset, _) = expect_corrupt(open_at(tmp.path(), 100));
    assert_eq!((segment, offset), (tmp.path().join(name(3)), 0));
}

#[test]
fn a_record_with_unknown_flags_is_corruption_even_at_the_very_end() {
    let tmp = tempfile::tempdir().unwrap();
    write_log(tmp.path(), 1 << 20, &[payload(1, 8)]);
    // A well-formed record, CRC included, written by a "newer version" with flag bit 1 set
    // (bit 0 means encrypted).
    let mut rec = Vec::new();
    rec.extend_from_slice(b"RWAL");
    rec.push(1);
    rec.push(0x02);
    rec.extend_from_slice(&0u16.to_le_bytes());
    rec.extend_from_slice(&3u32.to_le_bytes());
    rec.extend_from_slice(&2u64.to_le_bytes());
    let mut covered = rec.clone();
    covered.extend_from_slice(b"abc");
    rec.extend_from_slice(&crc32c::crc32c(&covered).to_le_bytes());
    rec.extend_from_slice(b"abc");
    let seg = tmp.path().join(name(1));
    let mut bytes = fs::read(&seg).unwrap();
    let offset = bytes.len() as u64;
    bytes.extend_from_slice(&rec);
    fs::write(&seg, bytes).unwrap();
    let (segment, file_offset, reason) = expect_corrupt(open_at(tmp.path(), 1 << 20));
    assert_eq!((segment, file_offset), (seg, offset));
    assert!(reason.contains("flags"), "{reason}");
}

#[test]
fn the_corruption_message_names_segment_offset_and_the_repair_command() {
    let tmp = tempfile::tempdir().unwrap();
    let payloads: Vec<Vec<u8>> = (0..3).map(|i| payload(i, 40)).collect();
    write_log(tmp.path(), 1 << 20, &payloads);
    let seg = tmp.path().join(name(1));
    flip_bit(&seg, 64 + 30, 2);
    let err = open_at(tmp.path(), 1 << 20).err().unwrap();
    let text = err.to_string();
    assert!(text.contains(&seg.display().to_string()), "{text}");
    assert!(text.contains("offset 64"), "{text}");
    assert!(text.contains("rstmdb repair --data-dir"), "{text}");
}

#[test]
fn repair_cuts_at_the_first_bad_record_and_keeps_the_damage_aside() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let payloads: Vec<Vec<u8>> = (0..9).map(|i| payload(i, 20)).collect();
    write_log(dir, 140, &payloads); // segments 1, 4, 7 with three 44-byte records each
    let seg4 = dir.join(name(4));
    let original = fs::read(&seg4).unwrap();
    flip_bit(&seg4, 44 + 30, 0); // record 5, in the middle of segment 4
    let (segment, offset, _) = expect_corrupt(open_at(dir, 140));
    assert_eq!((segment.clone(), offset), (seg4.clone(), 44));

    let report = repair(dir).unwrap();
    let damage = report.damage.clone().unwrap();
    assert_eq!(damage.segment, seg4);
    assert_eq!(damage.file_offset, 44);
    assert_eq!(damage.seq, Some(5));
    assert!(damage.truncated);
    assert_eq!(
        damage.saved_as,
        dir.join("damaged").join(format!("{}.damaged", name(4)))
    );
    assert_eq!(damage.moved.len(), 1);
    assert_eq!(damage.moved[0].from, dir.join(name(7)));
    assert_eq!(damage.bytes_removed, 2 * 44 + 3 * 44);
    assert_eq!(report.last_seq, 4);
    assert_eq!(report.segments, 2);
    let text = report.to_string();
    assert!(
        text.contains("offset 44") && text.contains("seq 4"),
        "{text}"
    );

    // The damaged segment is kept byte for byte (with the flipped bit), the later one moved.
    let mut flipped = original.clone();
    flipped[44 + 30] ^= 1;
    assert_eq!(fs::read(&damage.saved_as).unwrap(), flipped);
    assert!(damage.moved[0].to.starts_with(dir.join("damaged")));
    assert!(damage.moved[0].to.exists());
    assert!(!dir.join(name(7)).exists());
    assert_eq!(fs::metadata(&seg4).unwrap().len(), 44);

    let (mut wal, report) = open_at(dir, 140).unwrap();
    assert_eq!(report.torn_tail, None);
    assert_eq!(report.last_seq, 4);
    let records = read_all(&wal);
    assert_eq!(records.len(), 4);
    for r in &records {
        assert_eq!(r.payload, payloads[(r.seq - 1) as usize]);
    }
    assert_eq!(wal.append(&[b"after repair"]).unwrap(), 5);
    drop(wal);
    assert!(repair(dir).unwrap().is_clean());
}

#[test]
fn repair_of_a_torn_tail_keeps_a_copy_and_truncates() {
    let tmp = tempfile::tempdir().unwrap();
    let payloads: Vec<Vec<u8>> = (0..3).map(|i| payload(i, 40)).collect();
    write_log(tmp.path(), 1 << 20, &payloads);
    let seg = tmp.path().join(name(1));
    let f = fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(64 * 2 + 30).unwrap();
    let report = repair(tmp.path()).unwrap();
    let damage = report.damage.unwrap();
    assert_eq!((damage.file_offset, damage.bytes_removed), (128, 30));
    assert_eq!(report.last_seq, 2);
    assert_eq!(fs::metadata(&damage.saved_as).unwrap().len(), 158);
    let (wal, report) = open_at(tmp.path(), 1 << 20).unwrap();
    assert_eq!(report.torn_tail, None);
    assert_eq!(read_all(&wal).len(), 2);
}

#[test]
fn repair_moves_aside_a_segment_whose_name_overlaps_its_predecessor() {
    let tmp = tempfile::tempdir().unwrap();
    let payloads: Vec<Vec<u8>> = (0..6).map(|i| payload(i, 20)).collect();
    write_log(tmp.path(), 100, &payloads); // segments 1, 3, 5
    fs::rename(tmp.path().join(name(5)), tmp.path().join(name(2))).unwrap();
    expect_corrupt(open_at(tmp.path(), 100));
    let report = repair(tmp.path()).unwrap();
    let damage = report.damage.unwrap();
    assert!(!damage.truncated);
    assert_eq!(damage.segment, tmp.path().join(name(2)));
    assert_eq!(damage.moved.len(), 1, "segment 3 follows the hole");
    assert_eq!(report.last_seq, 2);
    assert_eq!(report.segments, 1);
    let (wal, _) = open_at(tmp.path(), 100).unwrap();
    assert_eq!(read_all(&wal).len(), 2);
}

#[test]
fn repair_of_a_clean_log_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let payloads: Vec<Vec<u8>> = (0..6).map(|i| payload(i, 20)).collect();
    write_log(tmp.path(), 100, &payloads);
    let report = repair(tmp.path()).unwrap();
    assert!(report.is_clean());
    assert_eq!((report.segments, report.last_seq), (3, 6));
    assert!(report.to_string().contains("clean"));
    assert!(!tmp.path().join("damaged").exists());
    assert!(repair(&tmp.path().join("missing")).unwrap().is_clean());
}

#[test]
fn repair_refuses_to_run_while_the_log_is_open() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = open_at(tmp.path(), 100).unwrap();
    assert!(matches!(repair(tmp.path()), Err(WalError::Locked { .. })));
    drop(wal);
}
