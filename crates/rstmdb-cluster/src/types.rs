//! The raft type configuration.

use rstmdb_storage::replicated::Applied;
use serde::{Deserialize, Serialize};
use std::io::Cursor;

/// Node ids are positive and never reused (a wiped node rejoins under a new id).
pub type NodeId = u64;

/// A log entry's data: one encoded WAL entry (compact JSON, as the WAL stores it), validated
/// by the leader under the instance locks before it is proposed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request(pub String);

/// A member's addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Where clients reach it (RCP).
    pub client: String,
    /// Where peers reach it (the raft listener).
    pub raft: String,
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client {} raft {}", self.client, self.raft)
    }
}

openraft::declare_raft_types!(
    /// rstmdb's raft types.
    pub TypeConfig:
        D = Request,
        R = Applied,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

/// A log id as our WAL records carry it: `(term, index)`.
pub fn log_id(term: u64, index: u64) -> openraft::LogId<NodeId> {
    openraft::LogId::new(openraft::CommittedLeaderId::new(term, 0), index)
}
