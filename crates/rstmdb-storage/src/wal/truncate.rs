//! Cutting the unpublished suffix off the log ([`Wal::truncate_from`]), for the raft log: a
//! follower drops the entries a new leader does not have, then appends the leader's.
//!
//! Order of operations, chosen so that a crash at any point leaves a log that opens cleanly and
//! holds a prefix of the old records that keeps every record below the cut (like `repair`):
//! 1. remove every segment starting at or after the cut, newest first, fsyncing the directory
//!    after each (so what remains is always a prefix, never a log with a hole);
//! 2. cut the segment holding the cut point at that record's offset and fdatasync it;
//! 3. if the log now ends below the cut (a gap left by `skip_to`) or starts above it (the cut
//!    is below the first retained record), rename or start the active segment so that the
//!    next record gets exactly the cut seq (the `skip_to` machinery).
//!
//! A failure before anything on disk changed leaves the log as it was; any later failure
//! poisons the writer (reopen it: open sees one of the states above).

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use super::error::WalError;
use super::format::{RECORD_HEADER_BYTES, RECORD_HEADER_V2_BYTES, RecordHeader};
use super::segment::scan_segment;
use super::shared::{CountingFile, ScannedSegment, SegmentMeta};
use super::writer::{ActiveSegment, Wal};

/// Read buffer for walking headers to the cut point.
const WALK_BUFFER_BYTES: usize = 64 * 1024;

/// What is kept of the segment the cut falls in.
struct Cut {
    /// Index of that segment in the table.
    keep: usize,
    /// Its new length.
    len: u64,
    /// Its new last record.
    last_seq: Option<u64>,
    scanned: ScannedSegment,
}

/// What is needed to undo the in-memory changes if the first disk change fails.
struct Saved {
    table: Vec<SegmentMeta>,
    active: Option<ActiveSegment>,
}

impl Wal {
    /// Removes every record with seq >= `seq`, so that [`Wal::next_seq`] becomes `seq` and the
    /// next append gets `seq` (with any term). For the raft log: only records no reader may
    /// have seen can go, so `seq` must be above the published seq (otherwise
    /// [`WalError::InvalidArgument`]); `seq` above `next_seq` is refused too, and
    /// `seq == next_seq` does nothing.
    ///
    /// Works across segments: later segments are deleted, the one holding `seq` is cut at that
    /// record. When `seq` is below the first retained record every segment is emptied and the
    /// log continues at `seq`. The cut is durable when this returns (files fdatasynced,
    /// directory fsynced). On failure the log is unchanged if nothing had been touched yet;
    /// otherwise it is poisoned, and reopening it finds a prefix of the old log holding every
    /// record below `seq` (never a hole), so the truncation can simply be repeated.
    pub fn truncate_from(&mut self, seq: u64) -> Result<(), WalError> {
        self.check_writable()?;
        let next = self.active.next_seq;
        if seq > next {
            return Err(WalError::InvalidArgument {
                reason: format!(
                    "truncate_from({seq}) is above the next sequence number {next}; \
                     use skip_to to leave a gap"
                ),
            });
        }
        if seq == next {
            return Ok(());
        }
        self.refuse_published(seq)?;
        let snapshot = self.shared.segments().clone();
        let cut = self.plan_cut(&snapshot, seq)?;
        let saved = self.apply_to_table(seq, &cut)?;
        self.cut_files(seq, &cut, saved)?;
        let next_now = self.active.next_seq;
        if next_now > seq {
            // Everything was cut and the (now empty) first segment starts above `seq`.
            self.rename_empty_active(seq, "truncate_from")?;
        } else if next_now < seq {
            // The log ends below `seq` (a gap left by skip_to): keep the numbering.
            self.skip_to(seq)?;
        }
        tracing::info!(
            from_seq = seq,
            old_next_seq = next,
            "WAL truncated its unpublished suffix"
        );
        Ok(())
    }

    fn refuse_published(&self, seq: u64) -> Result<(), WalError> {
        let published = self.shared.published();
        if seq <= published {
            return Err(WalError::InvalidArgument {
                reason: format!(
                    "truncate_from({seq}) would remove published records (published up to \
                     {published})"
                ),
            });
        }
        Ok(())
    }

    /// Finds the segment and offset of the cut, reading but changing nothing.
    fn plan_cut(&self, table: &[SegmentMeta], seq: u64) -> Result<Cut, WalError> {
        let keep = table
            .partition_point(|m| m.first_seq < seq)
            .saturating_sub(1);
        let Some(meta) = table.get(keep) else {
            return Err(WalError::InvalidArgument {
                reason: "internal: the WAL segment table is empty".into(),
            });
        };
        if meta.first_seq >= seq {
            // Every record is at or above the cut: the first segment is emptied.
            return Ok(Cut {
                keep,
                len: 0,
                last_seq: None,
                scanned: ScannedSegment {
                    last_seq: None,
                    index: Default::default(),
                },
            });
        }
        let scanned = match &meta.scanned {
            Some(s) => s.clone(),
            None => {
                let scan = scan_segment(
                    &meta.path,
                    meta.first_seq,
                    &self.shared.stats,
                    &self.shared.expect,
                )?;
                if let Some(bad) = scan.invalid {
                    return Err(bad.into_error(&meta.path));
                }
                ScannedSegment {
                    last_seq: scan.last_seq,
                    index: scan.index,
                }
            }
        };
        let (len, last_seq) = match scanned.last_seq {
            Some(last) if last >= seq => {
                let (from_seq, from_offset) = scanned.index.start_for(meta.first_seq, seq);
                let offset = self.offset_of(&meta.path, from_seq, from_offset, seq)?;
                (offset, Some(seq - 1))
            }
            last => (meta.len, last),
        };
        let mut scanned = scanned;
        scanned.index.truncate(len);
        scanned.last_seq = last_seq;
        Ok(Cut {
            keep,
            len,
            last_seq,
            scanned,
        })
    }

    /// File offset of record `seq` in `path`, walking headers from the record `from_seq` at
    /// `from_offset`.
    fn offset_of(
        &self,
        path: &Path,
        from_seq: u64,
        from_offset: u64,
        seq: u64,
    ) -> Result<u64, WalError> {
        let io_err = |e| WalError::io("reading WAL segment to truncate it", path, e);
        let mut file = File::open(path).map_err(io_err)?;
        file.seek(SeekFrom::Start(from_offset)).map_err(io_err)?;
        let mut reader = BufReader::with_capacity(
            WALK_BUFFER_BYTES,
            CountingFile::new(file, Arc::clone(&self.shared.stats)),
        );
        let (mut at_seq, mut offset) = (from_seq, from_offset);
        while at_seq < seq {
            let mut raw = [0u8; RECORD_HEADER_V2_BYTES];
            let mut first = [0u8; RECORD_HEADER_BYTES];
            reader.read_exact(&mut first).map_err(io_err)?;
            let header_len = RECORD_HEADER_BYTES + RecordHeader::extra_len(&first);
            raw[..RECORD_HEADER_BYTES].copy_from_slice(&first);
            reader
                .read_exact(&mut raw[RECORD_HEADER_BYTES..header_len])
                .map_err(io_err)?;
            let header = RecordHeader::decode(&raw[..header_len]);
            if let Some(problem) = header.field_problem(at_seq) {
                return Err(WalError::corrupt(path, offset, Some(at_seq), problem));
            }
            reader
                .seek_relative(i64::from(header.payload_len))
                .map_err(io_err)?;
            offset += header.record_len();
            at_seq += 1;
        }
        Ok(offset)
    }

    /// Checks the published seq and cuts the shared table under its lock, so a publisher
    /// cannot raise the published seq past the cut in between. Makes the kept segment the
    /// active one.
    fn apply_to_table(&mut self, seq: u64, cut: &Cut) -> Result<Saved, WalError> {
        let mut table = self.shared.segments_mut();
        self.refuse_published(seq)?;
        let saved_table = table.clone();
        let is_active = cut.keep + 1 == table.len();
        let Some(meta) = table.get_mut(cut.keep) else {
            return Err(WalError::InvalidArgument {
                reason: "internal: the WAL segment table changed during truncate_from".into(),
            });
        };
        let saved_active = if is_active {
            None
        } else {
            // A sealed segment: durable, so it reopens like the last segment at open.
            let reopened = ActiveSegment::reopen(meta, &cut.scanned)?;
            Some(std::mem::replace(&mut self.active, reopened))
        };
        meta.len = cut.len;
        meta.scanned = Some(cut.scanned.clone());
        table.truncate(cut.keep + 1);
        let a = &mut self.active;
        // `reopen` took the old length as synced; until the cut below is synced that is the
        // old state, so keep `synced_*` describing what is durable.
        a.next_seq = cut.last_seq.map_or(a.first_seq, |l| l + 1);
        a.index = cut.scanned.index.clone();
        Ok(Saved {
            table: saved_table,
            active: saved_active,
        })
    }

    /// Removes the later segments and cuts the kept one on disk; see the module docs.
    fn cut_files(&mut self, seq: u64, cut: &Cut, saved: Saved) -> Result<(), WalError> {
        let removed: Vec<SegmentMeta> =
            saved.table.get(cut.keep + 1..).unwrap_or_default().to_vec();
        let mut saved = Some(saved);
        for meta in removed.iter().rev() {
            if let Err(e) = self.disk.remove_file(&meta.path) {
                return Err(self.fail_truncate(seq, saved.take(), e));
            }
            saved = None;
            if let Err(e) = self.disk.sync_dir() {
                return Err(self.fail_truncate(seq, None, e));
            }
        }
        if cut.len < self.active.len {
            let a = &self.active;
            if let Err(e) = self.disk.truncate(&a.file, &a.path, cut.len) {
                return Err(self.fail_truncate(seq, saved.take(), e));
            }
            let a = &self.active;
            if let Err(e) = self.disk.sync_data(&a.file, &a.path) {
                return Err(self.fail_truncate(seq, None, e));
            }
            if !self.active.name_durable {
                if let Err(e) = self.disk.sync_dir() {
                    return Err(self.fail_truncate(seq, None, e));
                }
                self.active.name_durable = true;
            }
            let a = &mut self.active;
            a.len = cut.len;
            a.synced_len = cut.len;
            a.synced_next_seq = a.next_seq;
        }
        Ok(())
    }

    /// A step of the truncation failed: undo the in-memory changes if nothing on disk had
    /// changed yet (`saved`), otherwise poison the writer.
    fn fail_truncate(&mut self, seq: u64, saved: Option<Saved>, error: WalError) -> WalError {
        let Some(saved) = saved else {
            return self.poison(format!(
                "truncate_from({seq}) failed part-way: {error}; reopen the WAL"
            ));
        };
        let table = saved.table;
        if let Some(active) = saved.active {
            self.active = active;
        } else if let Some(meta) = table.last().and_then(|m| m.scanned.as_ref()) {
            let a = &mut self.active;
            a.next_seq = meta.last_seq.map_or(a.first_seq, |l| l + 1);
            a.index = meta.index.clone();
        }
        *self.shared.segments_mut() = table;
        tracing::warn!(seq, error = %error, "WAL truncate_from failed; nothing was changed");
        error
    }
}
