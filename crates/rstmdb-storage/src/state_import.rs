//! Exported state records (a backup's body, a raft snapshot) back into state-store writes:
//! one mapping for `restore` and for a replica installing a snapshot.

use crate::state::{self, IdemRecord, StoredMachine, keys};
use rstmdb_backup::Record;
use rstmdb_core::Instance;
use std::collections::HashMap;

/// Which part of the state an exported record belongs to.
pub(crate) enum StateKind {
    Machine,
    Instance,
    Idempotency,
}

/// The state-store writes that put back one exported state record (a restore, or a raft
/// snapshot installed on a replica); per-(machine, state) instance counts are added to
/// `counts`, for the caller to write once every record is in.
pub(crate) fn state_writes(
    r: Record,
    writes: &mut Vec<(Vec<u8>, Vec<u8>)>,
    counts: &mut HashMap<Vec<u8>, u64>,
) -> std::result::Result<StateKind, String> {
    match r {
        Record::Machine {
            machine,
            version,
            checksum,
            definition,
            wal_offset,
        } => {
            let stored = StoredMachine {
                machine,
                version,
                definition,
                checksum,
                wal_offset,
            };
            let v = serde_json::to_vec(&stored).map_err(|e| e.to_string())?;
            writes.push((keys::machine(&stored.machine, stored.version), v));
            Ok(StateKind::Machine)
        }
        Record::Instance { instance } => {
            let inst: Instance =
                serde_json::from_value(instance).map_err(|e| format!("instance record: {e}"))?;
            rstmdb_core::names::validate_instance_id(&inst.id)
                .map_err(|e| format!("instance record: {e}"))?;
            if inst.deleted {
                writes.push((
                    keys::tombstone(&inst.id),
                    state::encode_u64(inst.last_wal_offset),
                ));
            } else {
                writes.push((
                    keys::by_state(&inst.machine, &inst.state, &inst.id),
                    Vec::new(),
                ));
                *counts
                    .entry(keys::count(&inst.machine, &inst.state))
                    .or_insert(0) += 1;
            }
            let v = serde_json::to_vec(&inst).map_err(|e| e.to_string())?;
            writes.push((keys::instance(&inst.id), v));
            Ok(StateKind::Instance)
        }
        Record::Idempotency { scope, record } => {
            let rec: IdemRecord =
                serde_json::from_value(record).map_err(|e| format!("idempotency record: {e}"))?;
            if scope.is_empty() || scope.len() > 1024 {
                return Err("idempotency record with a bad scope".into());
            }
            writes.push((keys::idem_expiry(rec.expires_at, &scope), Vec::new()));
            let v = serde_json::to_vec(&rec).map_err(|e| e.to_string())?;
            writes.push((keys::idem(&scope), v));
            Ok(StateKind::Idempotency)
        }
        Record::Wal { .. } => Err("unexpected WAL record".into()),
    }
}
