//! openraft's state machine over our apply stage. Applying an entry is exactly what a single
//! node does after its group commit: plan, write the store, publish the offset (WAL_READ,
//! watches and reads see it only now, after commit), acknowledge.
//!
//! Snapshots are the backup format: the state at the last applied entry exported as backup
//! records inside an `rstmdb-backup` container (checksummed chunks), whose manifest names the
//! snapshot's offset. Installing one replaces the whole state (`RaftApply::install_snapshot`).
//! Snapshots are built and held in memory for now.

use crate::log_store::encode_entry;
use crate::storage_error;
use crate::types::{Member, NodeId, TypeConfig, log_id};
use openraft::storage::RaftStateMachine;
use openraft::{
    Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StoredMembership,
};
use rstmdb_backup::{Manifest, Reader, Record, Writer};
use rstmdb_storage::replicated::{Applied, ApplyRecord, RaftApply, RaftLog};
use sha2::{Digest, Sha256};
use std::io::Cursor;
use std::sync::{Arc, Mutex};

/// A snapshot this node built or installed: its metadata and its bytes.
#[derive(Debug, Clone)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, Member>,
    data: Vec<u8>,
}

/// The state machine. Clones share everything.
#[derive(Debug, Clone)]
pub struct StateMachine {
    apply: RaftApply,
    log: RaftLog,
    /// The last applied entry's id. Kept here because our store cannot tell "applied the
    /// entry at index 0" from "applied nothing" (offsets start at 1; only openraft's own
    /// tests apply an entry 0).
    last_applied: Arc<Mutex<Option<LogId<NodeId>>>>,
    current: Arc<Mutex<Option<StoredSnapshot>>>,
    snapshots_built: Arc<std::sync::atomic::AtomicU64>,
    /// Payload bytes applied since the last snapshot began (the node's snapshot trigger).
    bytes_since_snapshot: Arc<std::sync::atomic::AtomicU64>,
}

fn sm_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError<NodeId> {
    storage_error(ErrorSubject::StateMachine, verb, e)
}

fn snap_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError<NodeId> {
    storage_error(ErrorSubject::Snapshot(None), verb, e)
}

fn lock_err() -> StorageError<NodeId> {
    sm_err(ErrorVerb::Read, "state machine lock poisoned")
}

impl StateMachine {
    pub fn new(apply: RaftApply, log: RaftLog) -> StateMachine {
        let (seq, term) = apply.applied();
        let last = (seq > 0 || term > 0).then(|| log_id(term, seq));
        StateMachine {
            apply,
            log,
            last_applied: Arc::new(Mutex::new(last)),
            current: Arc::new(Mutex::new(None)),
            snapshots_built: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            bytes_since_snapshot: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        }
    }

    /// Payload bytes applied since the last snapshot began.
    pub fn bytes_since_snapshot(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.bytes_since_snapshot.clone()
    }

    fn membership(&self) -> Result<StoredMembership<NodeId, Member>, StorageError<NodeId>> {
        match self
            .apply
            .membership()
            .map_err(|e| sm_err(ErrorVerb::Read, e))?
        {
            Some(v) => serde_json::from_value(v).map_err(|e| sm_err(ErrorVerb::Read, e)),
            None => Ok(StoredMembership::default()),
        }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>), StorageError<NodeId>>
    {
        let last = *self.last_applied.lock().map_err(|_| lock_err())?;
        Ok((last, self.membership()?))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut records = Vec::new();
        let mut last = None;
        let mut bytes = 0u64;
        for e in entries {
            let payload = encode_entry(&e).map_err(|err| sm_err(ErrorVerb::Write, err))?;
            bytes += payload.len() as u64;
            last = Some(e.log_id);
            records.push(ApplyRecord {
                seq: e.log_id.index,
                term: e.log_id.leader_id.term,
                payload,
            });
        }
        let Some(last) = last else {
            return Ok(Vec::new());
        };
        // The entry at index 0 (the initial membership) is not in the WAL, so replay could
        // not restore it: make it durable in the state store right away.
        let has_entry0 = records.first().is_some_and(|r| r.seq == 0);
        let apply = self.apply.clone();
        let answers = tokio::task::spawn_blocking(move || {
            let answers = apply.apply(records);
            if has_entry0 {
                apply.flush_state()?;
            }
            Ok::<_, String>(answers)
        })
        .await
        .map_err(|e| sm_err(ErrorVerb::Write, e))?
        .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        // A committed entry this replica cannot apply: it must stop rather than diverge.
        if let Some(failed) = answers.iter().find(|a| a.error.is_some()) {
            return Err(sm_err(
                ErrorVerb::Write,
                format!(
                    "applying the committed entry at {}: {}",
                    failed.seq,
                    failed.error.as_deref().unwrap_or_default()
                ),
            ));
        }
        *self.last_applied.lock().map_err(|_| lock_err())? = Some(last);
        self.bytes_since_snapshot
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        Ok(answers)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let Some(last) = meta.last_log_id else {
            return Err(snap_err(
                ErrorVerb::Write,
                "a snapshot without a last log id",
            ));
        };
        let membership = serde_json::to_value(&meta.last_membership)
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let (apply, log, bytes) = (self.apply.clone(), self.log.clone(), data.clone());
        tokio::task::spawn_blocking(move || {
            let reader = Reader::open(Cursor::new(bytes), None).map_err(|e| e.to_string())?;
            if reader.manifest().wal_end != last.index {
                return Err(format!(
                    "the snapshot's data is at offset {} but its metadata says {}",
                    reader.manifest().wal_end,
                    last.index
                ));
            }
            let mut records = reader.records().map(|r| r.map_err(|e| e.to_string()));
            apply.install_snapshot(
                &mut records,
                last.index,
                last.leader_id.term,
                Some(membership),
                &log,
            )
        })
        .await
        .map_err(|e| snap_err(ErrorVerb::Write, e))?
        .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        *self.last_applied.lock().map_err(|_| lock_err())? = Some(last);
        *self.current.lock().map_err(|_| lock_err())? = Some(StoredSnapshot {
            meta: meta.clone(),
            data,
        });
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        Ok(self
            .current
            .lock()
            .map_err(|_| lock_err())?
            .as_ref()
            .map(|s| Snapshot {
                meta: s.meta.clone(),
                snapshot: Box::new(Cursor::new(s.data.clone())),
            }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        self.bytes_since_snapshot
            .store(0, std::sync::atomic::Ordering::Relaxed);
        let apply = self.apply.clone();
        let (body, export) = tokio::task::spawn_blocking(move || {
            let mut body = Vec::new();
            let export = apply.export_snapshot(&mut |r: &Record| {
                rstmdb_backup::encode_record(r, &mut body).map_err(|e| e.to_string())
            })?;
            Ok::<_, String>((body, export))
        })
        .await
        .map_err(|e| snap_err(ErrorVerb::Read, e))?
        .map_err(|e| snap_err(ErrorVerb::Read, e))?;
        let membership: StoredMembership<NodeId, Member> = match export.membership {
            Some(v) => serde_json::from_value(v).map_err(|e| snap_err(ErrorVerb::Read, e))?,
            None => StoredMembership::default(),
        };
        // The store cannot say "applied entry 0" (see `last_applied`): trust our own record
        // when it is at the exported offset.
        let recorded = *self.last_applied.lock().map_err(|_| lock_err())?;
        let last_log_id = match recorded {
            Some(id) if id.index == export.seq => Some(id),
            _ if export.seq == 0 && export.term == 0 => None,
            _ => Some(log_id(export.term, export.seq)),
        };
        let manifest = Manifest {
            format_version: rstmdb_backup::FORMAT_VERSION,
            created_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
            server_version: env!("CARGO_PKG_VERSION").into(),
            base_offset: export.seq,
            wal_end: export.seq,
            counts: export.counts,
            body_bytes: body.len() as u64,
            body_sha256: rstmdb_backup::hex(&Sha256::digest(&body)),
            chunk_bytes: 0,
            encryption: None,
        };
        let mut w =
            Writer::new(Vec::new(), manifest, None).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        w.write_body(&body)
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let data = w.finish().map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let n = self
            .snapshots_built
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let snapshot_id = match last_log_id {
            Some(id) => format!("{}-{}-{n}", id.leader_id.term, id.index),
            None => format!("0-0-{n}"),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership: membership,
            snapshot_id,
        };
        *self.current.lock().map_err(|_| lock_err())? = Some(StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        });
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}
