//! Segment files: names, listing, and scanning their records.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::WalError;
use super::format::{
    Expect, RECORD_HEADER_BYTES, RECORD_HEADER_V2_BYTES, RECORD_MAGIC, RecordHeader,
};
use super::index::SparseIndex;
use super::shared::{CountingFile, IoStats};

/// Read buffer used when scanning a whole segment.
const SCAN_BUFFER_BYTES: usize = 1024 * 1024;
/// Window used when searching byte by byte for a valid record after an invalid one.
const SEARCH_CHUNK_BYTES: usize = 1024 * 1024;
/// File in the WAL directory that a `Wal` or `repair` holds an exclusive lock on.
pub(crate) const LOCK_FILE_NAME: &str = "wal.lock";

const SEGMENT_SUFFIX: &str = ".wal";
const SEGMENT_DIGITS: usize = 20;

/// `{first_seq:020}.wal`
pub(crate) fn segment_file_name(first_seq: u64) -> String {
    format!(
        "{first_seq:0width$}{SEGMENT_SUFFIX}",
        width = SEGMENT_DIGITS
    )
}

/// The first seq named by a segment file name, or `None` if `name` is not a segment name.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListedSegment {
    pub first_seq: u64,
    pub path: PathBuf,
    pub len: u64,
}

/// Segment files of `dir`, ascending by first seq. Other names are ignored.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<ListedSegment>, WalError> {
    let entries = fs::read_dir(dir).map_err(|e| WalError::io("listing WAL directory", dir, e))?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| WalError::io("listing WAL directory", dir, e))?;
        let path = entry.path();
        let name = entry.file_name();
        let Some(first_seq) = name.to_str().and_then(parse_segment_name) else {
            if name != LOCK_FILE_NAME {
                tracing::debug!(file = %path.display(), "ignoring a file that is not a WAL segment");
            }
            continue;
        };
        if first_seq == 0 {
            tracing::warn!(file = %path.display(), "ignoring a segment named 0: sequence numbers start at 1");
            continue;
        }
        let meta = entry
            .metadata()
            .map_err(|e| WalError::io("reading metadata of WAL segment", &path, e))?;
        if !meta.is_file() {
            tracing::debug!(file = %path.display(), "ignoring a non-file entry with a segment name");
            continue;
        }
        found.push(ListedSegment {
            first_seq,
            path,
            len: meta.len(),
        });
    }
    found.sort_by_key(|s| s.first_seq);
    Ok(found)
}

/// fsync a directory so that file creations, renames and removals in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        // Directories cannot be opened for fsync here; renames are durable per file system.
        let _ = dir;
        Ok(())
    }
}

/// Creates `dir` if missing (fsyncing its parent so the new name survives a crash).
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), WalError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|e| WalError::io("creating WAL directory", dir, e))?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent).map_err(|e| WalError::io("syncing directory", parent, e))?;
    }
    Ok(())
}

/// Takes the exclusive lock of the WAL directory; held until the returned file is dropped.
pub(crate) fn lock_dir(dir: &Path) -> Result<File, WalError> {
    let path = dir.join(LOCK_FILE_NAME);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| WalError::io("opening WAL lock file", &path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(WalError::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(fs::TryLockError::Error(e)) => Err(WalError::io("locking WAL lock file", &path, e)),
    }
}

/// Why a scan stopped before the end of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InvalidRecord {
    pub offset: u64,
    /// The seq a record at this offset should have.
    pub seq: u64,
    pub reason: String,
    /// The record's CRC matched but a field did not (a newer format, a wrong seq): a torn write
    /// cannot produce this, so it is corruption even at the very end of the log.
    pub definite: bool,
    /// The record is sound but does not match the configured key (encrypted without a key,
    /// plaintext with one, another key): not corruption, and `repair` would not help.
    pub encryption: bool,
}

impl InvalidRecord {
    /// The error that stops the log from opening at this record of `path`.
    pub fn into_error(self, path: &Path) -> WalError {
        if self.encryption {
            WalError::Encryption {
                segment: path.to_path_buf(),
                file_offset: self.offset,
                seq: self.seq,
                reason: self.reason,
            }
        } else {
            WalError::corrupt(path, self.offset, Some(self.seq), self.reason)
        }
    }
}

/// Result of reading a segment from byte 0 and validating every record.
#[derive(Debug)]
pub(crate) struct SegmentScan {
    pub records: u64,
    pub last_seq: Option<u64>,
    /// End of the last valid record.
    pub valid_len: u64,
    pub file_len: u64,
    pub index: SparseIndex,
    /// Set when the file holds bytes after `valid_len` that are not a valid record.
    pub invalid: Option<InvalidRecord>,
}

/// Reads `path` from byte 0, validating each record (header shape, CRC, fields, seq contiguous
/// from `first_seq`, encryption as `expect` says), until the end of the file or the first
/// invalid record.
pub(crate) fn scan_segment(
    path: &Path,
    first_seq: u64,
    stats: &Arc<IoStats>,
    expect: &Expect,
) -> Result<SegmentScan, WalError> {
    let file = File::open(path).map_err(|e| WalError::io("opening WAL segment", path, e))?;
    let file_len = file
        .metadata()
        .map_err(|e| WalError::io("reading metadata of WAL segment", path, e))?
        .len();
    let reader = BufReader::with_capacity(
        SCAN_BUFFER_BYTES,
        CountingFile::new(file, Arc::clone(stats)),
    );
    scan_records(reader, file_len, first_seq, expect, |_, _| {})
        .map_err(|e| WalError::io("reading WAL segment", path, e))
}

/// The loop behind [`scan_segment`], over any reader holding exactly `file_len` bytes, so the
/// very code recovery runs can also be fuzzed on an in-memory image. `on_record` sees the
/// header and stored payload of every record found valid, in order.
pub(crate) fn scan_records(
    mut reader: impl Read,
    file_len: u64,
    first_seq: u64,
    expect: &Expect,
    mut on_record: impl FnMut(&RecordHeader, &[u8]),
) -> io::Result<SegmentScan> {
    let mut scan = SegmentScan {
        records: 0,
        last_seq: None,
        valid_len: 0,
        file_len,
        index: SparseIndex::default(),
        invalid: None,
    };
    let mut payload = Vec::new();
    let mut expected = first_seq;
    loop {
        let offset = scan.valid_len;
        let remaining = file_len - offset;
        if remaining == 0 {
            break;
        }
        let torn = |reason: String| InvalidRecord {
            offset,
            seq: expected,
            reason,
            definite: false,
            encryption: false,
        };
        let mut raw = [0u8; RECORD_HEADER_BYTES];
        if remaining < RECORD_HEADER_BYTES as u64 {
            let part = &mut raw[..remaining as usize];
            reader.read_exact(part)?;
            let reason = if part.iter().all(|&b| b == 0) {
                format!("{remaining} zero bytes at the end of the file")
            } else {
                format!("partial record header: {remaining} of {RECORD_HEADER_BYTES} bytes")
            };
            scan.invalid = Some(torn(reason));
            break;
        }
        reader.read_exact(&mut raw)?;
        let extra = RecordHeader::extra_len(&raw);
        let mut full = [0u8; RECORD_HEADER_V2_BYTES];
        full[..RECORD_HEADER_BYTES].copy_from_slice(&raw);
        let header_len = RECORD_HEADER_BYTES + extra;
        if remaining < header_len as u64 {
            scan.invalid = Some(torn(format!(
                "partial record header: {remaining} of {header_len} bytes"
            )));
            break;
        }
        reader.read_exact(&mut full[RECORD_HEADER_BYTES..header_len])?;
        let header = RecordHeader::decode(&full[..header_len]);
        if let Some(reason) = header.shape_problem(remaining - header_len as u64) {
            scan.invalid = Some(torn(reason));
            break;
        }
        payload.resize(header.payload_len as usize, 0);
        reader.read_exact(&mut payload)?;
        if !header.crc_matches(&payload) {
            scan.invalid = Some(torn("CRC mismatch".into()));
            break;
        }
        if let Some(reason) = header.field_problem(expected) {
            scan.invalid = Some(InvalidRecord {
                definite: true,
                ..torn(reason)
            });
            break;
        }
        if let Some(reason) = expect.problem(&header, &payload) {
            scan.invalid = Some(InvalidRecord {
                definite: true,
                encryption: true,
                ..torn(reason)
            });
            break;
        }
        on_record(&header, &payload);
        scan.index.note(expected, offset);
        scan.records += 1;
        scan.last_seq = Some(expected);
        scan.valid_len = offset + header.record_len();
        expected = expected.saturating_add(1);
    }
    Ok(scan)
}

/// Searches `path` byte by byte from `start` for a record whose CRC matches and whose seq is
/// at least `min_seq`; returns its (offset, seq). Such a record proves that an invalid record
/// before it is not a torn tail but a hole in the middle of the log.
pub(crate) fn find_valid_record(
    path: &Path,
    start: u64,
    min_seq: u64,
    stats: &Arc<IoStats>,
) -> Result<Option<(u64, u64)>, WalError> {
    let read_err = |e| WalError::io("searching WAL segment", path, e);
    let mut file = File::open(path).map_err(read_err)?;
    let mut probe = File::open(path).map_err(read_err)?;
    let file_len = file.metadata().map_err(read_err)?.len();
    let mut chunk = Vec::new();
    let mut pos = start;
    while file_len.saturating_sub(pos) >= RECORD_HEADER_BYTES as u64 {
        let want = (file_len - pos).min(SEARCH_CHUNK_BYTES as u64) as usize;
        chunk.resize(want, 0);
        file.seek(SeekFrom::Start(pos)).map_err(read_err)?;
        file.read_exact(&mut chunk).map_err(read_err)?;
        IoStats::add(&stats.bytes_read, want as u64);
        IoStats::add(&stats.reads, 1);
        for (i, window) in chunk.windows(RECORD_MAGIC.len()).enumerate() {
            if window != RECORD_MAGIC {
                continue;
            }
            let at = pos + i as u64;
            if let Some(seq) = valid_record_at(&mut probe, at, file_len, stats).map_err(read_err)?
                && seq >= min_seq
            {
                return Ok(Some((at, seq)));
            }
        }
        if pos + want as u64 >= file_len {
            break;
        }
        // Overlap by one magic length minus one so a magic split across chunks is seen.
        pos += (want - (RECORD_MAGIC.len() - 1)) as u64;
    }
    Ok(None)
}

/// The seq of the record at `at` if one with a matching CRC is there.
fn valid_record_at(
    file: &mut File,
    at: u64,
    file_len: u64,
    stats: &IoStats,
) -> io::Result<Option<u64>> {
    let Some(available) = file_len
        .checked_sub(at)
        .and_then(|r| r.checked_sub(RECORD_HEADER_BYTES as u64))
    else {
        return Ok(None);
    };
    let mut raw = [0u8; RECORD_HEADER_V2_BYTES];
    file.seek(SeekFrom::Start(at))?;
    file.read_exact(&mut raw[..RECORD_HEADER_BYTES])?;
    let mut first = [0u8; RECORD_HEADER_BYTES];
    first.copy_from_slice(&raw[..RECORD_HEADER_BYTES]);
    let extra = RecordHeader::extra_len(&first);
    let Some(available) = available.checked_sub(extra as u64) else {
        return Ok(None);
    };
    file.read_exact(&mut raw[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + extra])?;
    let header = RecordHeader::decode(&raw[..RECORD_HEADER_BYTES + extra]);
    if header.shape_problem(available).is_some() {
        return Ok(None);
    }
    let mut payload = vec![0u8; header.payload_len as usize];
    file.read_exact(&mut payload)?;
    IoStats::add(&stats.bytes_read, header.record_len());
    IoStats::add(&stats.reads, 2);
    Ok(header.crc_matches(&payload).then_some(header.seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(segment_file_name(1), "00000000000000000001.wal");
        assert_eq!(segment_file_name(u64::MAX), "18446744073709551615.wal");
        assert_eq!(parse_segment_name("00000000000000000001.wal"), Some(1));
        assert_eq!(
            parse_segment_name("18446744073709551615.wal"),
            Some(u64::MAX)
        );
    }

    #[test]
    fn other_names_are_not_segments() {
        for name in [
            "0000000000000001.wal",
            "00000000000000000001.WAL",
            "00000000000000000001.wal.damaged",
            "0000000000000000000a.wal",
            "99999999999999999999.wal",
            "+0000000000000000001.wal",
            "wal.lock",
        ] {
            assert_eq!(parse_segment_name(name), None, "{name}");
        }
    }
}
