//! The log as clients read it: WAL_READ pages, the last offset and WAL_STATS.

use super::Database;
use crate::commit::Command;
use crate::{
    DEFAULT_WAL_READ_LIMIT, MAX_WAL_READ_BYTES, MAX_WAL_READ_LIMIT, WalPage, WalReadRecord,
    WalStatsOutcome,
};
use rstmdb_core::{Error, Result};
use serde_json::Value;
use std::sync::atomic::Ordering;
use tokio::sync::oneshot;

impl Database {
    /// WAL_READ: records with offset ≥ `from`, at most `limit` (default 100, max 1000), stopping
    /// before 8 MiB.
    pub fn wal_read(&self, from: u64, limit: Option<usize>) -> Result<WalPage> {
        let limit = limit
            .unwrap_or(DEFAULT_WAL_READ_LIMIT)
            .min(MAX_WAL_READ_LIMIT);
        if limit == 0 {
            return Ok(WalPage {
                records: Vec::new(),
                next_offset: None,
            });
        }
        let recs = self
            .inner
            .reader
            .read(from, limit, MAX_WAL_READ_BYTES)
            .map_err(|e| Error::WalIo {
                detail: e.to_string(),
            })?;
        let mut records = Vec::with_capacity(recs.len());
        // Past every record read, shown or not: a page of raft's own records only (which
        // are left out) still moves the reader on.
        let next_offset = recs.last().map(|r| r.seq + 1);
        for r in recs {
            let entry: Value = serde_json::from_slice(&r.payload).map_err(|e| Error::WalIo {
                detail: format!("record {} is not valid JSON: {e}", r.seq),
            })?;
            if is_raft_record(&entry) {
                continue;
            }
            records.push(WalReadRecord {
                offset: r.seq,
                entry,
            });
        }
        Ok(WalPage {
            records,
            next_offset,
        })
    }

    /// The offset of the last committed record (0 when empty). In a cluster it may be one
    /// of raft's own records, which WAL_READ leaves out.
    pub fn last_offset(&self) -> u64 {
        self.inner.reader.published_seq()
    }

    /// WAL_STATS.
    pub async fn wal_stats(&self) -> Result<WalStatsOutcome> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .commit_tx
            .send(Command::Stats { reply })
            .await
            .map_err(|_| Error::WalIo {
                detail: "the database is closed".into(),
            })?;
        let s = rx.await.map_err(|_| Error::WalIo {
            detail: "the commit pipeline stopped".into(),
        })?;
        Ok(WalStatsOutcome {
            entry_count: s.last_seq,
            segment_count: s.segment_count,
            total_size_bytes: s.total_size_bytes,
            latest_offset: s.last_seq,
            earliest_offset: s.earliest_seq,
            checkpoint_offset: self.inner.checkpoint_seq.load(Ordering::Relaxed),
            bytes_written: s.bytes_written,
            bytes_read: s.bytes_read,
            writes: s.writes,
            reads: s.reads,
            fsyncs: s.fsyncs,
            archive_failures: s.archive_failures,
        })
    }
}

/// A cluster's blank and membership records (`WalEntry::is_internal`), told by their tag.
fn is_raft_record(entry: &Value) -> bool {
    matches!(
        entry.get("type").and_then(Value::as_str),
        Some("noop" | "membership")
    )
}
