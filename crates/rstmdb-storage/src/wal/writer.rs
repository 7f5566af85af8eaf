//! The writer: append, sync, publish, rotation. Opening (with torn-tail recovery) is in
//! `open`, removing old segments in `retention`.
//!
//! Invariants kept here:
//! - Only the active (last) segment can hold data or a file name that is not yet durable:
//!   before a new segment file is created the current one is synced (data and name). So after
//!   a crash an invalid record can only be a torn tail of the last segment; anywhere else it
//!   is corruption.
//! - A failed append leaves the files exactly as they were before it (or the log is poisoned),
//!   so no later record ever lands after half a record.
//! - A failed fsync is never retried in the hope that the data is safe: the records it covered
//!   are dropped from the log (fsyncgate).

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::WalOptions;
use super::disk::{Disk, FaultPlan};
use super::error::WalError;
use super::format::{encode_record, encode_sealed_record, record_len};
use super::index::SparseIndex;
use super::reader::WalReader;
use super::segment::segment_file_name;
use super::shared::{ScannedSegment, SegmentMeta, Shared};
use crate::crypto::SEAL_OVERHEAD;

/// Numbers for WAL_STATS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalStats {
    pub segment_count: u64,
    /// Sum of the current segment file sizes.
    pub total_size_bytes: u64,
    /// Seq of the earliest retained record; `None` when the log holds no record.
    pub earliest_seq: Option<u64>,
    pub last_seq: u64,
    pub bytes_written: u64,
    pub bytes_read: u64,
    /// Segment writes (one per segment touched by an append).
    pub writes: u64,
    /// `read(2)` calls on segment files.
    pub reads: u64,
    /// fsync / fdatasync calls, files and directory.
    pub fsyncs: u64,
    /// Segments a checkpoint could not copy to the archive (and kept).
    pub archive_failures: u64,
}

/// The segment being appended to, with what is known to be durable in it.
#[derive(Debug)]
pub(super) struct ActiveSegment {
    /// Opened in append mode: every write lands at the current end of the file.
    pub(super) file: File,
    pub(super) path: PathBuf,
    pub(super) first_seq: u64,
    /// Bytes of whole records written.
    pub(super) len: u64,
    /// Seq the next record appended here gets.
    pub(super) next_seq: u64,
    /// Prefix that survived a successful fdatasync *and* whose file name is durable.
    pub(super) synced_len: u64,
    pub(super) synced_next_seq: u64,
    /// False for a file created since the last directory fsync.
    pub(super) name_durable: bool,
    pub(super) index: SparseIndex,
}

impl ActiveSegment {
    pub(super) fn create(dir: &Path, first_seq: u64) -> Result<ActiveSegment, WalError> {
        let path = dir.join(segment_file_name(first_seq));
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| WalError::io("creating WAL segment", &path, e))?;
        Ok(ActiveSegment {
            file,
            path,
            first_seq,
            len: 0,
            next_seq: first_seq,
            synced_len: 0,
            synced_next_seq: first_seq,
            name_durable: false,
            index: SparseIndex::default(),
        })
    }

    /// The last segment found at open: everything in it is durable (open synced it).
    pub(super) fn reopen(
        meta: &SegmentMeta,
        scanned: &ScannedSegment,
    ) -> Result<ActiveSegment, WalError> {
        let file = OpenOptions::new()
            .append(true)
            .open(&meta.path)
            .map_err(|e| WalError::io("opening WAL segment for appending", &meta.path, e))?;
        let next_seq = match scanned.last_seq {
            Some(last) => last
                .checked_add(1)
                .ok_or_else(|| WalError::InvalidArgument {
                    reason: "sequence numbers exhausted".into(),
                })?,
            None => meta.first_seq,
        };
        Ok(ActiveSegment {
            file,
            path: meta.path.clone(),
            first_seq: meta.first_seq,
            len: meta.len,
            next_seq,
            synced_len: meta.len,
            synced_next_seq: next_seq,
            name_durable: true,
            index: scanned.index.clone(),
        })
    }

    fn last_seq(&self) -> Option<u64> {
        (self.next_seq > self.first_seq).then(|| self.next_seq - 1)
    }

    pub(super) fn meta(&self) -> SegmentMeta {
        SegmentMeta {
            first_seq: self.first_seq,
            path: self.path.clone(),
            len: self.len,
            scanned: Some(ScannedSegment {
                last_seq: self.last_seq(),
                index: self.index.clone(),
            }),
        }
    }
}

/// A record to append: its term (0: a version 1 record) and payload.
trait NewRecord {
    fn term(&self) -> u64;
    fn payload(&self) -> &[u8];
}

impl NewRecord for &[u8] {
    fn term(&self) -> u64 {
        0
    }

    fn payload(&self) -> &[u8] {
        self
    }
}

impl NewRecord for (u64, &[u8]) {
    fn term(&self) -> u64 {
        self.0
    }

    fn payload(&self) -> &[u8] {
        self.1
    }
}

/// Where the active segment stood before an append.
#[derive(Debug, Clone, Copy)]
struct Mark {
    len: u64,
    next_seq: u64,
}

/// An error inside an append, with whether it was a failed fsync (whose records are lost).
#[derive(Debug)]
struct Failure {
    error: WalError,
    fsync_failed: bool,
}

impl Failure {
    fn write(error: WalError) -> Failure {
        Failure {
            error,
            fsync_failed: false,
        }
    }

    fn fsync(error: WalError) -> Failure {
        Failure {
            error,
            fsync_failed: true,
        }
    }
}

/// The writer side of the log. Owned by one thread; readers use [`Wal::reader`].
#[derive(Debug)]
pub struct Wal {
    pub(super) opts: WalOptions,
    pub(super) shared: Arc<Shared>,
    pub(super) disk: Disk,
    pub(super) active: ActiveSegment,
    /// Set when a failure could not be rolled back: the files are in an unknown state.
    pub(super) poisoned: Option<String>,
    /// Holds the directory lock for as long as the `Wal` lives.
    pub(super) _lock: File,
}

impl Wal {
    /// The directory holding the segments.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Seq the next appended record gets.
    pub fn next_seq(&self) -> u64 {
        self.active.next_seq
    }

    /// `next_seq() - 1`: the highest seq used or skipped (0 when nothing was ever written).
    pub fn last_seq(&self) -> u64 {
        self.active.next_seq - 1
    }

    /// Why the log refuses writes, if it does (see [`WalError::Poisoned`]).
    pub fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    /// Makes the next record get sequence `seq` (>= `next_seq`; equal is a no-op) by starting
    /// a new segment named `seq`. For a state store that is ahead of a log whose tail was
    /// lost: offsets are never reused. The skip is durable when this returns.
    pub fn skip_to(&mut self, seq: u64) -> Result<(), WalError> {
        self.check_writable()?;
        let next = self.active.next_seq;
        if seq < next {
            return Err(WalError::InvalidArgument {
                reason: format!("skip_to({seq}) is below the next sequence number {next}"),
            });
        }
        if seq == next {
            return Ok(());
        }
        if self.active.len == 0 {
            self.rename_empty_active(seq, "skip_to")?;
        } else {
            if let Err(e) = self.make_durable() {
                return Err(self.drop_unsynced(e));
            }
            let mut fresh = ActiveSegment::create(&self.shared.dir, seq)?;
            if let Err(e) = self.disk.sync_dir() {
                let _ = fs::remove_file(&fresh.path);
                return Err(self.poison(format!(
                    "the new segment for skip_to({seq}) could not be made durable: {e}"
                )));
            }
            fresh.name_durable = true;
            self.active = fresh;
            self.shared.segments_mut().push(self.active.meta());
        }
        tracing::info!(
            from_seq = next,
            to_seq = seq,
            "WAL skipped sequence numbers"
        );
        Ok(())
    }

    /// Renames the empty active segment to start at `seq` (durable when this returns). An
    /// empty active segment is renamed, not left behind: an empty segment followed by another
    /// one reads as lost records at open.
    pub(super) fn rename_empty_active(&mut self, seq: u64, why: &str) -> Result<(), WalError> {
        debug_assert_eq!(self.active.len, 0);
        let path = self.shared.dir.join(segment_file_name(seq));
        fs::rename(&self.active.path, &path)
            .map_err(|e| WalError::io("renaming WAL segment", &self.active.path, e))?;
        let old_first = self.active.first_seq;
        self.active.path = path;
        self.active.first_seq = seq;
        self.active.next_seq = seq;
        self.active.synced_next_seq = seq;
        self.active.index = SparseIndex::default();
        {
            let mut table = self.shared.segments_mut();
            table.retain(|m| m.first_seq != old_first);
            table.push(self.active.meta());
        }
        if let Err(e) = self.disk.sync_dir() {
            return Err(self.poison(format!(
                "the segment rename for {why}({seq}) could not be made durable: {e}"
            )));
        }
        self.active.name_durable = true;
        Ok(())
    }

    /// Appends one record per payload with consecutive seqs from `next_seq`, all with term 0
    /// (written as version 1 records); returns the first seq (`next_seq` unchanged for an
    /// empty slice).
    ///
    /// A new segment is started before a record that would push the current one past
    /// `segment_size_bytes` (the current one is synced first). Each segment touched gets one
    /// `write_all` of one buffer. On any error the touched files are cut back to their length
    /// before the call (segments this call created are removed) and `next_seq` is unchanged —
    /// except that a failed fsync during rotation also drops the records written since the last
    /// successful sync, as [`Wal::sync`] does. If the rollback itself fails the log is poisoned.
    pub fn append(&mut self, payloads: &[&[u8]]) -> Result<u64, WalError> {
        self.append_records(payloads)
    }

    /// [`Wal::append`] for the raft log: each record is `(term, payload)`, and `first_seq` must
    /// be [`Wal::next_seq`] (otherwise [`WalError::InvalidArgument`] and nothing is written).
    /// A record with term 0 is written as version 1, any other as version 2. Once this returns
    /// the records are readable through [`WalReader::read_unpublished`] from any thread; they
    /// are durable after [`Wal::sync`].
    pub fn append_with_terms(
        &mut self,
        first_seq: u64,
        records: &[(u64, &[u8])],
    ) -> Result<u64, WalError> {
        self.check_writable()?;
        let next = self.active.next_seq;
        if first_seq != next {
            return Err(WalError::InvalidArgument {
                reason: format!(
                    "append_with_terms at seq {first_seq}, but the next sequence number is {next}"
                ),
            });
        }
        self.append_records(records)
    }

    fn append_records<R: NewRecord>(&mut self, records: &[R]) -> Result<u64, WalError> {
        self.check_writable()?;
        let max = self.opts.max_record_bytes;
        if let Some(r) = records.iter().find(|r| r.payload().len() > max as usize) {
            return Err(WalError::RecordTooLarge {
                len: r.payload().len(),
                max,
            });
        }
        let first = self.active.next_seq;
        if records.is_empty() {
            return Ok(first);
        }
        if first.checked_add(records.len() as u64).is_none() {
            return Err(WalError::InvalidArgument {
                reason: "sequence numbers exhausted".into(),
            });
        }
        let mark = Mark {
            len: self.active.len,
            next_seq: first,
        };
        let mut sealed = Vec::new();
        match self.write_records(records, &mut sealed) {
            Ok(()) => {
                self.commit(&sealed);
                Ok(first)
            }
            Err(failure) => Err(self.roll_back(mark, sealed, failure)),
        }
    }

    /// Makes every appended record durable: fdatasync of the active segment and, if it was
    /// created since the last sync, of the directory. (Older segments were synced when the
    /// log rotated away from them.)
    ///
    /// If an fsync fails the records it covered are treated as lost: the segment is cut back to
    /// the last successfully synced length, `next_seq` moves back accordingly (readers'
    /// published seq too), and that state is synced; the fsync error is returned. If even that
    /// fails the log is poisoned.
    pub fn sync(&mut self) -> Result<(), WalError> {
        self.check_writable()?;
        match self.make_durable() {
            Ok(()) => Ok(()),
            Err(e) => Err(self.drop_unsynced(e)),
        }
    }

    /// Lets readers see records up to `seq` (clamped to `last_seq`; never moves backwards).
    /// Call it once the records are durable under the fsync policy and applied.
    pub fn publish(&self, seq: u64) {
        self.shared.raise_published(seq.min(self.last_seq()));
    }

    /// Lowers the published seq to `seq` (never raises it). [`Wal::open`] publishes every
    /// record it finds; a raft log reopened after a restart calls this with its commit index
    /// before handing out any reader, so that the uncommitted suffix is hidden from
    /// [`WalReader::read`] again and [`Wal::truncate_from`] may cut it. A reader that already
    /// read above `seq` is not told.
    pub fn lower_published(&mut self, seq: u64) {
        self.shared.lower_published(seq);
    }

    /// A handle that publishes from another thread (the apply stage of a pipelined
    /// committer), with the same clamping as [`Wal::publish`].
    pub fn publisher(&self) -> WalPublisher {
        WalPublisher {
            shared: Arc::clone(&self.shared),
        }
    }

    /// A reader sharing this log's state.
    pub fn reader(&self) -> WalReader {
        WalReader::new(Arc::clone(&self.shared))
    }

    pub fn stats(&self) -> WalStats {
        let (segment_count, total_size_bytes) = {
            let table = self.shared.segments();
            (table.len() as u64, table.iter().map(|m| m.len).sum())
        };
        let io = &self.shared.stats;
        WalStats {
            segment_count,
            total_size_bytes,
            earliest_seq: self.shared.earliest_seq(),
            last_seq: self.last_seq(),
            bytes_written: io.bytes_written.load(Ordering::Relaxed),
            bytes_read: io.bytes_read.load(Ordering::Relaxed),
            writes: io.writes.load(Ordering::Relaxed),
            reads: io.reads.load(Ordering::Relaxed),
            fsyncs: io.fsyncs.load(Ordering::Relaxed),
            archive_failures: io.archive_failures.load(Ordering::Relaxed),
        }
    }

    /// Injects faults into the next file-system calls: for tests of the error paths.
    pub fn set_fault(&mut self, plan: FaultPlan) {
        self.disk.set_faults(plan);
    }

    pub(super) fn check_writable(&self) -> Result<(), WalError> {
        match &self.poisoned {
            Some(reason) => Err(WalError::Poisoned {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    pub(super) fn poison(&mut self, reason: String) -> WalError {
        tracing::error!(reason = %reason, "WAL poisoned: refusing writes until reopened");
        self.poisoned = Some(reason.clone());
        WalError::Poisoned { reason }
    }

    fn write_records<R: NewRecord>(
        &mut self,
        records: &[R],
        sealed: &mut Vec<ActiveSegment>,
    ) -> Result<(), Failure> {
        let limit = self.opts.segment_size_bytes;
        let cipher = self.opts.cipher.clone();
        let overhead = if cipher.is_some() { SEAL_OVERHEAD } else { 0 };
        let stored = |r: &R| record_len(r.term(), r.payload().len() + overhead);
        let mut rest = records;
        while let Some(next) = rest.first() {
            if self.active.len > 0 && self.active.len + stored(next) > limit {
                self.rotate(sealed)?;
            }
            // As many records as fit in this segment, at least one.
            let mut take = 0usize;
            let mut bytes = 0u64;
            for p in rest {
                let len = stored(p);
                if take > 0 && self.active.len + bytes + len > limit {
                    break;
                }
                take += 1;
                bytes += len;
            }
            let group = rest.get(..take).unwrap_or_default();
            let mut buf = Vec::with_capacity(usize::try_from(bytes).unwrap_or(0));
            let mut offset = self.active.len;
            let mut seq = self.active.next_seq;
            for r in group {
                let (term, p) = (r.term(), r.payload());
                match &cipher {
                    Some(c) => encode_sealed_record(&mut buf, seq, term, c, p).map_err(|e| {
                        Failure::write(WalError::Io {
                            context: format!("encrypting WAL record {seq}"),
                            source: std::io::Error::other(e),
                        })
                    })?,
                    None => encode_record(&mut buf, seq, term, 0, p),
                }
                self.active.index.note(seq, offset);
                offset += stored(r);
                seq += 1;
            }
            debug_assert_eq!(buf.len() as u64, bytes);
            self.disk
                .write(&mut self.active.file, &self.active.path, &buf)
                .map_err(Failure::write)?;
            self.active.len = offset;
            self.active.next_seq = seq;
            rest = rest.get(take..).unwrap_or_default();
        }
        Ok(())
    }

    /// Seals the active segment (made durable first) and starts a new one at `next_seq`.
    fn rotate(&mut self, sealed: &mut Vec<ActiveSegment>) -> Result<(), Failure> {
        // The new file must not exist before the old one is durable: otherwise a crash could
        // leave a torn record in a segment that is no longer the last, which reads as
        // corruption at open.
        self.make_durable().map_err(Failure::fsync)?;
        let fresh = ActiveSegment::create(&self.shared.dir, self.active.next_seq)
            .map_err(Failure::write)?;
        sealed.push(std::mem::replace(&mut self.active, fresh));
        Ok(())
    }

    /// Publishes the new segment state to the shared table (readers still wait for `publish`).
    fn commit(&mut self, sealed: &[ActiveSegment]) {
        let mut table = self.shared.segments_mut();
        for seg in sealed.iter().chain(std::iter::once(&self.active)) {
            let meta = seg.meta();
            match table
                .iter_mut()
                .rev()
                .find(|m| m.first_seq == meta.first_seq)
            {
                Some(slot) => *slot = meta,
                None => table.push(meta),
            }
        }
    }

    /// Undoes a failed append: removes segments it created and cuts the segment that was
    /// active back to `mark`, making that durable where the undone data had been synced.
    fn roll_back(&mut self, mark: Mark, sealed: Vec<ActiveSegment>, failure: Failure) -> WalError {
        let Failure {
            error,
            fsync_failed,
        } = failure;
        let mut removed_durable_name = false;
        let mut sealed = sealed.into_iter();
        if let Some(original) = sealed.next() {
            let mut created: Vec<ActiveSegment> = sealed.collect();
            created.push(std::mem::replace(&mut self.active, original));
            for seg in created.iter().rev() {
                removed_durable_name |= seg.name_durable;
                if let Err(e) = fs::remove_file(&seg.path)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    return self.poison(format!(
                        "{error}; then removing segment {} created by the failed append failed: {e}",
                        seg.path.display()
                    ));
                }
            }
        }
        let synced_past_mark = self.active.synced_len > mark.len;
        if let Err(e) = self
            .disk
            .truncate(&self.active.file, &self.active.path, mark.len)
        {
            return self.poison(format!(
                "{error}; then cutting the partial write off failed: {e}"
            ));
        }
        if synced_past_mark
            && let Err(e) = self.disk.sync_data(&self.active.file, &self.active.path)
        {
            return self.poison(format!(
                "{error}; then syncing the rolled-back segment failed: {e}"
            ));
        }
        if removed_durable_name && let Err(e) = self.disk.sync_dir() {
            return self.poison(format!(
                "{error}; then syncing the directory after removing new segments failed: {e}"
            ));
        }
        let a = &mut self.active;
        a.len = mark.len;
        a.next_seq = mark.next_seq;
        a.index.truncate(mark.len);
        if synced_past_mark {
            a.synced_len = mark.len;
            a.synced_next_seq = mark.next_seq;
        }
        tracing::warn!(
            segment = %a.path.display(),
            len = mark.len,
            next_seq = mark.next_seq,
            error = %error,
            "WAL append failed; rolled the log back"
        );
        if fsync_failed {
            return self.drop_unsynced(error);
        }
        error
    }

    /// fdatasync the active segment (and the directory if its name is new).
    fn make_durable(&mut self) -> Result<(), WalError> {
        let a = &mut self.active;
        if a.len > a.synced_len {
            self.disk.sync_data(&a.file, &a.path)?;
        }
        if !a.name_durable {
            self.disk.sync_dir()?;
            a.name_durable = true;
        }
        a.synced_len = a.len;
        a.synced_next_seq = a.next_seq;
        Ok(())
    }

    /// After a failed fsync: the records it covered may or may not be on disk, and retrying
    /// cannot tell. Drop them (cut to the last synced length, sync that) and return `cause`.
    fn drop_unsynced(&mut self, cause: WalError) -> WalError {
        let keep_len = self.active.synced_len;
        let keep_next = self.active.synced_next_seq;
        let dropped = self.active.next_seq - keep_next;
        // Readers must not look at what is about to vanish.
        self.shared.lower_published(keep_next - 1);
        if let Err(e) = self
            .disk
            .truncate(&self.active.file, &self.active.path, keep_len)
        {
            return self.poison(format!(
                "{cause}; then dropping the unsynced records failed: {e}"
            ));
        }
        if let Err(e) = self.disk.sync_data(&self.active.file, &self.active.path) {
            return self.poison(format!(
                "{cause}; then syncing after dropping the unsynced records failed: {e}"
            ));
        }
        if !self.active.name_durable {
            if let Err(e) = self.disk.sync_dir() {
                return self.poison(format!(
                    "{cause}; then syncing the directory after dropping the unsynced records \
                     failed: {e}"
                ));
            }
            self.active.name_durable = true;
        }
        let a = &mut self.active;
        a.len = keep_len;
        a.next_seq = keep_next;
        a.index.truncate(keep_len);
        let meta = a.meta();
        {
            let mut table = self.shared.segments_mut();
            if let Some(slot) = table
                .iter_mut()
                .rev()
                .find(|m| m.first_seq == meta.first_seq)
            {
                *slot = meta;
            }
        }
        tracing::warn!(
            segment = %self.active.path.display(),
            records_dropped = dropped,
            next_seq = keep_next,
            error = %cause,
            "WAL fsync failed; dropped the records written since the last successful sync"
        );
        cause
    }
}

/// Publishes records to readers from a thread other than the writer's; see [`Wal::publisher`].
#[derive(Debug, Clone)]
pub struct WalPublisher {
    shared: Arc<Shared>,
}

impl WalPublisher {
    /// Lets readers see records up to `seq`, clamped to the last record in the log; never moves
    /// backwards.
    pub fn publish(&self, seq: u64) {
        self.shared.publish_clamped(seq);
    }
}
