//! Opening the log: listing its segments, verifying those that may hold records after the
//! checkpoint, and cutting a torn tail off the last one.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::WalOptions;
use super::disk::Disk;
use super::error::WalError;
use super::format::Expect;
use super::segment::{
    ListedSegment, ensure_dir, find_valid_record, list_segments, lock_dir, scan_segment,
};
use super::shared::{IoStats, ScannedSegment, SegmentMeta, Shared};
use super::writer::{ActiveSegment, Wal};

/// What [`Wal::open`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// Set when the last segment ended in a torn record, which was cut off.
    pub torn_tail: Option<TornTail>,
    /// Number of segment files after open.
    pub segments: usize,
    /// `next_seq - 1`: the highest sequence number used (0 for a new log).
    pub last_seq: u64,
    /// Records whose header and CRC were checked during open.
    pub verified_records: u64,
}

/// A torn record cut off the end of the log at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub segment: PathBuf,
    /// Where the torn record started; the file now ends here.
    pub file_offset: u64,
    pub bytes_removed: u64,
}

impl Wal {
    /// Opens (creating if needed) the log in `opts.dir`.
    ///
    /// Segments that may hold a seq >= `verify_from`, and always the last segment, are read
    /// and every record validated (header, CRC, sequence continuity). Older segments are only
    /// listed, so restart time depends on the data after the checkpoint, not on retention.
    ///
    /// An invalid record at the end of the last segment with nothing valid after it is a torn
    /// tail: it is cut off (truncate + fsync), logged, and reported. Any other invalid record
    /// is [`WalError::Corrupt`].
    pub fn open(opts: WalOptions, verify_from: u64) -> Result<(Wal, OpenReport), WalError> {
        opts.validate()?;
        let dir = opts.dir.clone();
        ensure_dir(&dir)?;
        let lock = lock_dir(&dir)?;
        let stats = Arc::new(IoStats::default());
        let mut disk = Disk::new(dir.clone(), Arc::clone(&stats));
        let expect = Expect::of(opts.cipher.as_ref());

        let mut listed = list_segments(&dir)?;
        if listed.is_empty() {
            let first = ActiveSegment::create(&dir, 1)?;
            listed.push(ListedSegment {
                first_seq: first.first_seq,
                path: first.path,
                len: 0,
            });
        }
        let scan_from = first_segment_to_verify(&listed, verify_from);
        let last_index = listed.len() - 1;

        let mut metas: Vec<SegmentMeta> = Vec::with_capacity(listed.len());
        let mut verified_records = 0u64;
        let mut torn_tail = None;
        for (i, seg) in listed.into_iter().enumerate() {
            if i < scan_from {
                metas.push(SegmentMeta {
                    first_seq: seg.first_seq,
                    path: seg.path,
                    len: seg.len,
                    scanned: None,
                });
                continue;
            }
            if let Some(prev) = metas.last() {
                check_boundary(prev, &seg)?;
            }
            let scan = scan_segment(&seg.path, seg.first_seq, &stats, &expect)?;
            verified_records += scan.records;
            if let Some(bad) = &scan.invalid {
                if bad.definite || i != last_index {
                    return Err(bad.clone().into_error(&seg.path));
                }
                if let Some((at, seq)) =
                    find_valid_record(&seg.path, bad.offset + 1, bad.seq, &stats)?
                {
                    return Err(WalError::corrupt(
                        &seg.path,
                        bad.offset,
                        Some(bad.seq),
                        format!(
                            "{}, but a valid record (seq {seq}) follows at offset {at}",
                            bad.reason
                        ),
                    ));
                }
                cut_torn_tail(&mut disk, &seg.path, bad.offset)?;
                let bytes_removed = scan.file_len - bad.offset;
                tracing::warn!(
                    segment = %seg.path.display(),
                    file_offset = bad.offset,
                    bytes_removed,
                    seq = bad.seq,
                    reason = %bad.reason,
                    "cut a torn record off the end of the WAL"
                );
                torn_tail = Some(TornTail {
                    segment: seg.path.clone(),
                    file_offset: bad.offset,
                    bytes_removed,
                });
            }
            metas.push(SegmentMeta {
                first_seq: seg.first_seq,
                path: seg.path,
                len: scan.valid_len,
                scanned: Some(ScannedSegment {
                    last_seq: scan.last_seq,
                    index: scan.index,
                }),
            });
        }
        // Every name listed (or created) above is durable from here on.
        disk.sync_dir()?;

        let active = match metas.last() {
            Some(
                meta @ SegmentMeta {
                    scanned: Some(scanned),
                    ..
                },
            ) => ActiveSegment::reopen(meta, scanned)?,
            _ => {
                return Err(WalError::InvalidArgument {
                    reason: "internal: the last WAL segment was not scanned".into(),
                });
            }
        };
        let last_seq = active.next_seq - 1;
        let report = OpenReport {
            torn_tail,
            segments: metas.len(),
            last_seq,
            verified_records,
        };
        tracing::info!(
            dir = %dir.display(),
            segments = report.segments,
            last_seq,
            verify_from,
            verified_records,
            torn_tail = report.torn_tail.is_some(),
            "opened WAL"
        );
        // Everything on disk at open is durable (the tail was just checked and synced).
        let shared = Arc::new(Shared::new(dir, metas, last_seq, stats, expect));
        let wal = Wal {
            opts,
            shared,
            disk,
            active,
            poisoned: None,
            _lock: lock,
        };
        Ok((wal, report))
    }
}

/// Index of the first segment that may hold a seq >= `verify_from` (the last one at worst).
fn first_segment_to_verify(listed: &[ListedSegment], verify_from: u64) -> usize {
    let last = listed.len().saturating_sub(1);
    (0..last)
        .find(|&i| listed.get(i + 1).is_some_and(|n| n.first_seq > verify_from))
        .unwrap_or(last)
}

/// Checks that `next` may follow the scanned segment `prev`.
fn check_boundary(prev: &SegmentMeta, next: &ListedSegment) -> Result<(), WalError> {
    let Some(scanned) = &prev.scanned else {
        // Not read: its end is only known from `next`'s name, which is consistent by definition.
        return Ok(());
    };
    match scanned.last_seq {
        None => Err(WalError::corrupt(
            &prev.path,
            0,
            Some(prev.first_seq),
            "empty segment followed by a later segment: its records are missing",
        )),
        Some(last) if next.first_seq <= last => Err(WalError::corrupt(
            &next.path,
            0,
            Some(next.first_seq),
            format!(
                "segment name says it starts at seq {} but the previous segment already ends at \
                 seq {last}",
                next.first_seq
            ),
        )),
        Some(_) => Ok(()),
    }
}

fn cut_torn_tail(disk: &mut Disk, path: &Path, len: u64) -> Result<(), WalError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| WalError::io("opening WAL segment to cut its torn tail", path, e))?;
    disk.truncate(&file, path, len)?;
    disk.sync_data(&file, path)
}
