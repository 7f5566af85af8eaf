//! What a WAL record says. The payload of every record is one [`WalEntry`] as compact JSON,
//! tagged by `type`. The shapes follow the reference's entries (protocol.md §5.11) so WAL_READ
//! results look familiar, with additive fields that make replay self-sufficient: timestamps
//! (so `created_at`/`updated_at` survive restart), `machine`/`version` on applies (so watch
//! events need no lookup), and `batch`/`flush_all` records.
//!
//! Every entry carries the *result* of the change (target state, full context after merge),
//! never a request to re-evaluate: replay does not re-run guards, so a replayed log always
//! lands in the state that was acknowledged.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WalEntry {
    PutMachine {
        machine: String,
        version: u32,
        /// Lowercase hex SHA-256 of the canonical definition.
        definition_hash: String,
        /// The canonical (normalised) definition.
        definition: Value,
    },
    CreateInstance {
        instance_id: String,
        machine: String,
        version: u32,
        initial_state: String,
        initial_ctx: Map<String, Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<String>,
        /// Unix ms.
        created_at: i64,
    },
    ApplyEvent {
        instance_id: String,
        machine: String,
        version: u32,
        event: String,
        from_state: String,
        to_state: String,
        payload: Map<String, Value>,
        /// Full context after the merge.
        ctx: Map<String, Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<String>,
        /// Unix ms.
        updated_at: i64,
    },
    DeleteInstance {
        instance_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<String>,
        /// Unix ms.
        updated_at: i64,
    },
    /// An atomic BATCH: every sub-entry is applied, or (if this record is not in the log)
    /// none is.
    Batch { entries: Vec<WalEntry> },
    /// RESTORE_INSTANCE (extension): puts an instance, as a backup held it, back in place of
    /// whatever has this id (nothing, a tombstone, or a live instance when replacing).
    RestoreInstance {
        instance_id: String,
        machine: String,
        version: u32,
        state: String,
        ctx: Map<String, Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_event_id: Option<String>,
        /// Unix ms, from the backup.
        created_at: i64,
        /// Unix ms: when it was restored.
        updated_at: i64,
    },
    /// FLUSH_ALL: removes every machine, instance and idempotency record written before it.
    FlushAll {
        /// Unix ms.
        timestamp: i64,
    },
    /// Cluster only: the blank record a new raft leader writes in its term. Changes no state;
    /// WAL_READ leaves it out unless asked and watches never see it.
    Noop,
    /// Cluster only: a raft membership change. `membership` is the cluster crate's encoding
    /// (with the record's own log id), opaque to storage, which keeps the latest one applied.
    Membership { membership: Value },
}

impl WalEntry {
    pub fn to_bytes(&self) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(self)
    }

    pub fn from_bytes(bytes: &[u8]) -> serde_json::Result<WalEntry> {
        serde_json::from_slice(bytes)
    }

    /// Raft's own records (`Noop`, `Membership`): in the log, but not a change of the
    /// database a client made.
    pub fn is_internal(&self) -> bool {
        matches!(self, WalEntry::Noop | WalEntry::Membership { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entries_are_tagged_by_type_in_snake_case() {
        let e = WalEntry::DeleteInstance {
            instance_id: "i".into(),
            idempotency_key: None,
            updated_at: 5,
        };
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({"type": "delete_instance", "instance_id": "i", "updated_at": 5})
        );
    }

    #[test]
    fn batch_round_trips() {
        let e = WalEntry::Batch {
            entries: vec![
                WalEntry::FlushAll { timestamp: 1 },
                WalEntry::DeleteInstance {
                    instance_id: "x".into(),
                    idempotency_key: Some("k".into()),
                    updated_at: 2,
                },
            ],
        };
        assert_eq!(WalEntry::from_bytes(&e.to_bytes().unwrap()).unwrap(), e);
    }

    #[test]
    fn raft_records_are_tagged_and_internal() {
        assert_eq!(
            serde_json::to_value(WalEntry::Noop).unwrap(),
            json!({"type": "noop"})
        );
        let m = WalEntry::Membership {
            membership: json!({"voters": [1, 2, 3]}),
        };
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            json!({"type": "membership", "membership": {"voters": [1, 2, 3]}})
        );
        assert!(m.is_internal() && WalEntry::Noop.is_internal());
        assert!(!WalEntry::FlushAll { timestamp: 1 }.is_internal());
        assert_eq!(WalEntry::from_bytes(&m.to_bytes().unwrap()).unwrap(), m);
    }
}
