//! State shared by the writer and every reader: the segment table, the published sequence
//! number and the I/O counters.

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::format::Expect;
use super::index::SparseIndex;

/// I/O counters for WAL_STATS. Relaxed atomics: they are statistics, not synchronisation.
#[derive(Debug, Default)]
pub(crate) struct IoStats {
    pub bytes_written: AtomicU64,
    pub bytes_read: AtomicU64,
    pub writes: AtomicU64,
    pub reads: AtomicU64,
    pub fsyncs: AtomicU64,
    /// Segments a checkpoint could not copy to the archive directory (kept, not deleted).
    pub archive_failures: AtomicU64,
}

impl IoStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A file whose reads are counted in [`IoStats`].
#[derive(Debug)]
pub(crate) struct CountingFile {
    file: File,
    stats: Arc<IoStats>,
}

impl CountingFile {
    pub fn new(file: File, stats: Arc<IoStats>) -> Self {
        CountingFile { file, stats }
    }

    /// Current length of the file.
    pub fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
}

impl Read for CountingFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        IoStats::add(&self.stats.reads, 1);
        IoStats::add(&self.stats.bytes_read, n as u64);
        Ok(n)
    }
}

impl io::Seek for CountingFile {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        self.file.seek(pos)
    }
}

/// What is known about one segment file.
#[derive(Debug, Clone)]
pub(crate) struct SegmentMeta {
    /// From the file name: the seq of its first record (or of the next record written to it).
    pub first_seq: u64,
    pub path: PathBuf,
    /// Bytes of whole records (the true file length once open has cut any torn tail).
    pub len: u64,
    /// `None` until the segment's records have been read once: segments below `verify_from`
    /// are only listed at open and scanned lazily by the first reader that needs them.
    pub scanned: Option<ScannedSegment>,
}

#[derive(Debug, Clone)]
pub(crate) struct ScannedSegment {
    /// Seq of the last record, `None` when the segment is empty.
    pub last_seq: Option<u64>,
    pub index: SparseIndex,
}

impl SegmentMeta {
    /// Highest seq this segment may hold: exact when scanned, otherwise derived from the next
    /// segment's name (`next_first_seq - 1`). `None` when it is known to be empty, or when it
    /// is the last segment and was never scanned (cannot happen: the last one always is).
    pub fn last_seq_bound(&self, next_first_seq: Option<u64>) -> Option<u64> {
        match &self.scanned {
            Some(s) => s.last_seq,
            None => next_first_seq.map(|n| n.saturating_sub(1)),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub dir: PathBuf,
    /// Ascending by `first_seq`; the last entry is the writer's active segment.
    segments: RwLock<Vec<SegmentMeta>>,
    published: AtomicU64,
    pub stats: Arc<IoStats>,
    /// The encryption every record must have; readers decrypt with its cipher.
    pub expect: Expect,
}

impl Shared {
    pub fn new(
        dir: PathBuf,
        segments: Vec<SegmentMeta>,
        published: u64,
        stats: Arc<IoStats>,
        expect: Expect,
    ) -> Self {
        Shared {
            dir,
            segments: RwLock::new(segments),
            published: AtomicU64::new(published),
            stats,
            expect,
        }
    }

    // Nothing panics while holding the lock, and the table is consistent after every
    // statement that changes it, so a poisoned lock is still safe to use.
    pub fn segments(&self) -> RwLockReadGuard<'_, Vec<SegmentMeta>> {
        self.segments.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn segments_mut(&self) -> RwLockWriteGuard<'_, Vec<SegmentMeta>> {
        self.segments
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn published(&self) -> u64 {
        // Acquire pairs with the Release in `raise_published`: whoever sees the number also
        // sees the table updates made before it was published.
        self.published.load(Ordering::Acquire)
    }

    pub fn raise_published(&self, seq: u64) {
        self.published.fetch_max(seq, Ordering::AcqRel);
    }

    pub fn lower_published(&self, seq: u64) {
        self.published.fetch_min(seq, Ordering::AcqRel);
    }

    /// Seq of the last record written (published or not), 0 when the log holds none. The
    /// writer updates the table once an append's `write(2)`s have returned, so every record up
    /// to this seq is whole in the files (in the page cache if not yet synced).
    pub fn written_seq(&self) -> u64 {
        written_seq_in(&self.segments())
    }

    /// Raises the published seq to `seq` clamped to the last written record, atomically with
    /// respect to table changes (a truncation cannot slip between the clamp and the raise).
    pub fn publish_clamped(&self, seq: u64) {
        let table = self.segments();
        self.raise_published(seq.min(written_seq_in(&table)));
    }

    /// Seq of the earliest retained record, `None` when no segment holds a record.
    pub fn earliest_seq(&self) -> Option<u64> {
        let table = self.segments();
        let first = table.first()?;
        // Every segment but the last holds at least one record (open checks it).
        let last_has_records = table
            .last()
            .is_some_and(|m| m.scanned.as_ref().is_none_or(|s| s.last_seq.is_some()));
        if table.len() > 1 || last_has_records {
            Some(first.first_seq)
        } else {
            None
        }
    }

    /// `first_seq` of the segment after the one starting at `first_seq`.
    pub fn next_segment_after(&self, first_seq: u64) -> Option<u64> {
        self.segments()
            .iter()
            .map(|m| m.first_seq)
            .find(|&f| f > first_seq)
    }
}

/// Seq of the last record in `table`, 0 when it holds none.
pub(crate) fn written_seq_in(table: &[SegmentMeta]) -> u64 {
    table
        .iter()
        .rev()
        .find_map(|m| m.scanned.as_ref().and_then(|s| s.last_seq))
        .unwrap_or(0)
}
