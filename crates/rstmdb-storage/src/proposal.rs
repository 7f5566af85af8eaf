//! The write-side types of a replica: the proposal handed to the cluster and the answer
//! its state machine returns. Re-exported, with the database's raft handles, as
//! [`crate::replicated`].

use crate::commit::{CommitError, CommitOutcome, CommitRequest};
use crate::entry::WalEntry;
use crate::state::FlushCounts;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// What the cluster does with a write the database validated: replicate it and finish it.
pub trait Proposer: Send + Sync + 'static {
    /// Whether this node may validate a write now. A leader must have applied every record
    /// committed before its term (it has once it applied a record of its own term), or it
    /// would validate against state that misses them and lose an update. `Err` says why not
    /// (not the leader, still catching up): the write is refused as not written.
    fn write_gate(&self) -> Result<(), String>;

    /// Takes ownership of `proposal`; must finish it (`complete` or one of the `fail_*`)
    /// or drop it (which the waiting caller sees as a stopped pipeline).
    fn propose(&self, proposal: Proposal);
}

/// One write waiting to be replicated: the encoded WAL entry, the caller's instance locks and
/// the caller's reply channel.
pub struct Proposal {
    pub(crate) payload: Vec<u8>,
    pub(crate) guards: Vec<tokio::sync::OwnedMutexGuard<()>>,
    pub(crate) reply: oneshot::Sender<Result<CommitOutcome, CommitError>>,
}

impl std::fmt::Debug for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proposal")
            .field("payload_bytes", &self.payload.len())
            .finish_non_exhaustive()
    }
}

impl Proposal {
    /// Takes the instance locks out of the proposal, to be dropped once the record's fate is
    /// known. For a caller answered before that (a write timeout): the record may still
    /// commit, and until it is applied (or certainly lost) no other write may validate
    /// against the instances it changes.
    pub fn take_locks(&mut self) -> HeldLocks {
        HeldLocks(std::mem::take(&mut self.guards))
    }

    /// The record to append: one encoded [`WalEntry`].
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Answers the caller with what the state machine returned for its record, then releases
    /// the instance locks.
    pub fn complete(self, applied: Applied) {
        let result = match applied.error {
            None => Ok(CommitOutcome {
                seq: applied.seq,
                flushed: applied.flushed,
            }),
            Some(reason) => Err(CommitError::Apply(reason)),
        };
        let _ = self.reply.send(result);
        drop(self.guards);
    }

    /// The record is certainly not in the log (no leader, refused): the caller may retry.
    pub fn fail_not_written(self, detail: impl Into<String>) {
        let _ = self.reply.send(Err(CommitError::Wal(detail.into())));
    }

    /// No leader could take the write: it is certainly not in the log; the client may retry
    /// (`REPLICATION_TIMEOUT`, `reason: no_leader`, `committed: false`).
    pub fn fail_no_leader(self, detail: impl Into<String>) {
        let _ = self.reply.send(Err(CommitError::Replication {
            reason: "no_leader",
            committed: Some(false),
            detail: detail.into(),
        }));
    }

    /// Not committed within the write timeout; it may still commit (`REPLICATION_TIMEOUT`,
    /// `reason: commit_timeout`, `committed: "unknown"`): the client retries with its
    /// idempotency key.
    pub fn fail_commit_timeout(self, detail: impl Into<String>) {
        let _ = self.reply.send(Err(CommitError::Replication {
            reason: "commit_timeout",
            committed: None,
            detail: detail.into(),
        }));
    }

    /// Whether the record will be committed is unknown (leadership lost after it was
    /// appended, commit not reached in time): the caller must retry with its idempotency key.
    pub fn fail_outcome_unknown(self, detail: impl Into<String>) {
        let _ = self.reply.send(Err(CommitError::Apply(detail.into())));
    }
}

/// Instance locks taken from a [`Proposal`]; released when dropped.
pub struct HeldLocks(Vec<tokio::sync::OwnedMutexGuard<()>>);

impl std::fmt::Debug for HeldLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("HeldLocks").field(&self.0.len()).finish()
    }
}

/// The state machine's answer for one applied record, carried back to the proposer (through
/// raft, so it is serializable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The record's offset (= its raft log index).
    pub seq: u64,
    /// FLUSH_ALL's counts, when the record was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flushed: Option<FlushCounts>,
    /// Set when applying failed (the state machine is poisoned: it refuses writes until a
    /// restart replays the log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One committed record for [`RaftApply::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyRecord {
    pub seq: u64,
    pub term: u64,
    /// One encoded [`WalEntry`] (use [`encode_noop`] / [`encode_membership`] for raft's own).
    pub payload: Vec<u8>,
}

/// The kind of record a log payload holds, for the raft log store to rebuild raft's entry.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordKind {
    /// A client's change.
    Normal,
    /// A leader's blank record.
    Noop,
    /// A membership change, in the cluster crate's encoding.
    Membership(serde_json::Value),
}

/// What kind of record `payload` is; an error when it is not a WAL entry at all.
pub fn record_kind(payload: &[u8]) -> Result<RecordKind, String> {
    // Raft's own records are rare and small; a client's change is recognised by its tag
    // without building its whole tree.
    #[derive(Deserialize)]
    struct Tag<'a> {
        #[serde(borrow, rename = "type")]
        kind: std::borrow::Cow<'a, str>,
    }
    let tag: Tag<'_> =
        serde_json::from_slice(payload).map_err(|e| format!("undecodable WAL entry: {e}"))?;
    match tag.kind.as_ref() {
        "noop" => Ok(RecordKind::Noop),
        "membership" => match WalEntry::from_bytes(payload) {
            Ok(WalEntry::Membership { membership }) => Ok(RecordKind::Membership(membership)),
            Ok(_) => Err("membership record of an unexpected shape".into()),
            Err(e) => Err(format!("undecodable membership record: {e}")),
        },
        _ => Ok(RecordKind::Normal),
    }
}

/// The payload of a leader's blank record.
pub fn encode_noop() -> Vec<u8> {
    WalEntry::Noop
        .to_bytes()
        .unwrap_or_else(|_| b"{\"type\":\"noop\"}".to_vec())
}

/// The payload of a membership record.
pub fn encode_membership(membership: serde_json::Value) -> Result<Vec<u8>, String> {
    WalEntry::Membership { membership }
        .to_bytes()
        .map_err(|e| format!("encoding membership record: {e}"))
}

pub(crate) fn request_for(
    entry: WalEntry,
    payload: Vec<u8>,
) -> (
    CommitRequest,
    oneshot::Receiver<Result<CommitOutcome, CommitError>>,
) {
    let (reply, rx) = oneshot::channel();
    (
        CommitRequest {
            entry,
            bytes: payload,
            hints: Vec::new(),
            _guards: Vec::new(),
            reply,
        },
        rx,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_kinds_are_told_apart() {
        assert_eq!(record_kind(&encode_noop()).unwrap(), RecordKind::Noop);
        let m = encode_membership(serde_json::json!({"voters": [1]})).unwrap();
        assert_eq!(
            record_kind(&m).unwrap(),
            RecordKind::Membership(serde_json::json!({"voters": [1]}))
        );
        let flush = WalEntry::FlushAll { timestamp: 3 }.to_bytes().unwrap();
        assert_eq!(record_kind(&flush).unwrap(), RecordKind::Normal);
        assert!(record_kind(b"not json").is_err());
    }
}
