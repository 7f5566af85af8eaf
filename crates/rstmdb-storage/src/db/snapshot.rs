//! A replica's raft snapshots: the state at its last applied record, exported in the backup
//! format's records, and a snapshot from the leader installed in place of the whole state.
//!
//! Both hold the checkpoint lock and then the apply stage's lock (the order checkpoints use),
//! so no record is applied meanwhile: the export is exactly the state at the applied record.
//! That pauses replication on this node for the length of the export (O(database size)).

use super::replicated::{RaftApply, RaftLog};
use crate::state::{self, keys};
use crate::state_import::state_writes;
use rstmdb_backup::{Counts, Record};
use std::collections::HashMap;

/// What [`RaftApply::export_snapshot`] exported.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotExport {
    /// The last applied record the state reflects, and its term.
    pub seq: u64,
    pub term: u64,
    /// The latest membership applied (the cluster crate's encoding).
    pub membership: Option<serde_json::Value>,
    pub counts: Counts,
}

/// A store marker set while a snapshot replaces the state: a crash in between leaves a
/// half-written store, which `open_replicated` refuses instead of serving it.
pub(crate) const INSTALLING: &[u8] = b"meta\0snapshot_installing";

/// Keys a snapshot install clears (everything but the encryption marker).
const STATE_PREFIXES: [&[u8]; 7] = [
    keys::INSTANCE,
    keys::MACHINE,
    keys::BY_STATE,
    keys::COUNT,
    keys::TOMBSTONE,
    keys::IDEM,
    keys::IDEM_EXPIRY,
];

/// Writes per store batch while installing.
const INSTALL_BATCH: usize = 10_000;

impl RaftApply {
    /// Exports the state at the last applied record through `sink` (machines, instances,
    /// idempotency records). Blocking; applies wait until it returns.
    pub fn export_snapshot(
        &self,
        sink: &mut dyn FnMut(&Record) -> Result<(), String>,
    ) -> Result<SnapshotExport, String> {
        let db = self.database();
        db.with_checkpoint_lock(|| {
            let stage = self
                .stage()
                .lock()
                .map_err(|_| "the apply stage failed earlier".to_string())?;
            let mut counts = Counts::default();
            db.export_state(sink, &mut counts)
                .map_err(|e| e.to_string())?;
            Ok(SnapshotExport {
                seq: stage.high_water,
                term: stage.applied_term,
                membership: self.membership()?,
                counts,
            })
        })
        .map_err(|e| e.to_string())?
    }

    /// Replaces the whole state with a snapshot's (`records`: machines, instances and
    /// idempotency records, as [`RaftApply::export_snapshot`] made them) taken at `seq` in
    /// `term`, and makes the log continue after `seq`. A snapshot at or below what is
    /// already applied changes nothing. Blocking.
    pub fn install_snapshot(
        &self,
        records: &mut dyn Iterator<Item = Result<Record, String>>,
        seq: u64,
        term: u64,
        membership: Option<serde_json::Value>,
        log: &RaftLog,
    ) -> Result<(), String> {
        let db = self.database();
        db.with_checkpoint_lock(|| {
            let mut stage = self
                .stage()
                .lock()
                .map_err(|_| "the apply stage failed earlier".to_string())?;
            if seq <= stage.high_water && stage.high_water > 0 {
                return Ok(());
            }
            let store = db.state_db();
            let err = |e: crate::store::StoreError| format!("installing a snapshot: {e}");
            // 1. Mark, then clear.
            let mut batch = store.batch();
            batch.insert(INSTALLING, state::encode_u64(seq));
            store.apply_batch(batch).map_err(err)?;
            store.flush().map_err(err)?;
            let mut batch = store.batch();
            for prefix in STATE_PREFIXES {
                for item in store.scan_prefix(prefix) {
                    let (k, _) = item.map_err(err)?;
                    batch.remove(k);
                }
            }
            batch.remove(keys::RAFT_MEMBERSHIP);
            store.apply_batch(batch).map_err(err)?;
            // 2. The snapshot's state.
            let mut counts: HashMap<Vec<u8>, u64> = HashMap::new();
            let mut writes = Vec::new();
            for r in records {
                state_writes(r?, &mut writes, &mut counts)?;
                if writes.len() >= INSTALL_BATCH {
                    let mut batch = store.batch();
                    for (k, v) in writes.drain(..) {
                        batch.insert(k, v);
                    }
                    store.apply_batch(batch).map_err(err)?;
                }
            }
            let mut batch = store.batch();
            for (k, v) in writes {
                batch.insert(k, v);
            }
            for (k, n) in counts {
                batch.insert(k, state::encode_u64(n));
            }
            if let Some(m) = &membership {
                let v = serde_json::to_vec(m).map_err(|e| format!("encoding membership: {e}"))?;
                batch.insert(keys::RAFT_MEMBERSHIP, v);
            }
            batch.insert(keys::HIGH_WATER, state::encode_u64(seq));
            batch.insert(keys::APPLIED_TERM, state::encode_u64(term));
            batch.insert(keys::CHECKPOINT, state::encode_u64(seq));
            store.apply_batch(batch).map_err(err)?;
            // 3. The log continues after the snapshot. If this node's record at `seq` has the
            // snapshot's term, its log agrees with the leader's up to there and what follows
            // stays (raft counts it as present and cuts it itself on a conflict); otherwise
            // what it had beyond its own applied point was never committed here and may
            // conflict, so it goes.
            let agrees = log.term_of(seq).map_err(|e| e.to_string())? == Some(term);
            let published = log.published_seq();
            if !agrees && log.next_seq().map_err(|e| e.to_string())? > published + 1 {
                log.truncate_from(published + 1)
                    .map_err(|e| format!("cutting the log before a snapshot: {e}"))?;
            }
            log.skip_to(seq + 1)
                .map_err(|e| format!("moving the log past a snapshot: {e}"))?;
            // 4. Durable, then unmarked; in-memory views follow.
            store.flush().map_err(err)?;
            let mut batch = store.batch();
            batch.remove(INSTALLING);
            store.apply_batch(batch).map_err(err)?;
            store.flush().map_err(err)?;
            stage.reset_to(seq, term);
            db.after_snapshot_install(seq)
                .map_err(|e| format!("reloading after a snapshot: {e}"))?;
            tracing::info!(seq, term, "installed a raft snapshot");
            Ok(())
        })
        .map_err(|e| e.to_string())?
    }
}
