//! Checkpoints: on demand and from the checkpointer thread the log stage wakes.

use super::{Database, internal, now_ms, sled_err, spawn_named};
use crate::CheckpointOutcome;
use crate::commit::{CheckpointMark, Command};
use crate::error::OpenError;
use rstmdb_core::{Error, Result};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::sync::oneshot;

impl Database {
    /// Checkpoint now: sync the WAL, flush the state store, record the checkpoint offset,
    /// purge tombstones and expired idempotency records, and delete WAL segments below the
    /// checkpoint beyond the retention.
    pub async fn checkpoint(&self) -> Result<CheckpointOutcome> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.checkpoint_blocking())
            .await
            .map_err(|e| internal(format!("checkpoint task: {e}")))?
    }

    fn checkpoint_blocking(&self) -> Result<CheckpointOutcome> {
        let _serial = self
            .inner
            .checkpoint_lock
            .lock()
            .map_err(|_| internal("checkpoint lock poisoned"))?;
        let started = Instant::now();
        let (reply, rx) = oneshot::channel();
        self.inner
            .commit_tx
            .blocking_send(Command::Checkpoint {
                now_ms: now_ms(),
                reply,
            })
            .map_err(|_| Error::WalIo {
                detail: "the database is closed".into(),
            })?;
        let mark: CheckpointMark = rx
            .blocking_recv()
            .map_err(|_| internal("the commit pipeline stopped"))?
            .map_err(|detail| Error::WalIo { detail })?;
        // Everything at or below the mark is in sled; make it durable there.
        self.inner.db.flush().map_err(sled_err)?;
        self.inner
            .checkpoint_seq
            .store(mark.checkpoint_seq, Ordering::Relaxed);
        // A running backup still has to read the records after its pin.
        let trim_seq = match self.inner.backup_pins.lock() {
            Ok(pins) => pins.values().min().map_or(mark.checkpoint_seq, |&p| {
                mark.checkpoint_seq.min(p.saturating_sub(1))
            }),
            Err(_) => return Err(internal("backup pin lock poisoned")),
        };
        let (reply, rx) = oneshot::channel();
        self.inner
            .commit_tx
            .blocking_send(Command::TrimWal {
                checkpoint_seq: trim_seq,
                retention_bytes: self
                    .inner
                    .config
                    .wal_retention_mb
                    .saturating_mul(1024 * 1024),
                reply,
            })
            .map_err(|_| Error::WalIo {
                detail: "the database is closed".into(),
            })?;
        let trim = rx
            .blocking_recv()
            .map_err(|_| internal("the commit pipeline stopped"))?
            .map_err(|detail| Error::WalIo { detail })?;
        tracing::info!(
            checkpoint_offset = mark.checkpoint_seq,
            segments_deleted = trim.segments_deleted,
            tombstones_purged = mark.tombstones_purged,
            idempotency_purged = mark.idempotency_purged,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "checkpoint"
        );
        self.inner
            .stats
            .checkpoint_micros
            .observe(started.elapsed().as_micros() as u64);
        Ok(CheckpointOutcome {
            checkpoint_offset: mark.checkpoint_seq,
            segments_deleted: trim.segments_deleted,
            bytes_reclaimed: trim.bytes_deleted,
            tombstones_purged: mark.tombstones_purged,
            idempotency_purged: mark.idempotency_purged,
            wal_segments: trim.segments_left,
        })
    }

    /// Starts the checkpointer thread: it checkpoints when the log stage asks (through
    /// `checkpoint_rx`), at most once per `checkpoint_min_interval`, and stops when the
    /// database is gone.
    pub(super) fn spawn_checkpointer(
        &self,
        checkpoint_rx: std::sync::mpsc::Receiver<()>,
    ) -> std::result::Result<JoinHandle<()>, OpenError> {
        let weak = Arc::downgrade(&self.inner);
        let min_interval = self.inner.config.checkpoint_min_interval;
        spawn_named("rstmdb-checkpoint", move || {
            use std::sync::mpsc::RecvTimeoutError;
            // A trigger that comes too soon after the last checkpoint waits for the interval.
            let mut last = Instant::now();
            let mut pending = false;
            loop {
                let received = if pending {
                    checkpoint_rx.recv_timeout(min_interval.saturating_sub(last.elapsed()))
                } else {
                    checkpoint_rx
                        .recv()
                        .map_err(|_| RecvTimeoutError::Disconnected)
                };
                match received {
                    Ok(()) => pending = true,
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                if pending && last.elapsed() >= min_interval {
                    let Some(inner) = weak.upgrade() else { return };
                    if let Err(e) = (Database { inner }).checkpoint_blocking() {
                        tracing::error!(error = %e, "automatic checkpoint failed");
                    }
                    last = Instant::now();
                    pending = false;
                }
            }
        })
    }
}
