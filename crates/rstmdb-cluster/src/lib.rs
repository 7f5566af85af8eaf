//! rstmdb's cluster: replication and failover on openraft, with rstmdb's own WAL as the raft
//! log and its apply stage as the state machine (`docs/cluster.md`, spec `replication.md`).
//!
//! This crate holds all of openraft; `rstmdb-storage` only offers hooks
//! ([`rstmdb_storage::replicated`]) and knows nothing of raft.
//!
//! - [`types`]: the raft type configuration: a log entry's data is one encoded WAL entry, a
//!   node is its client and peer addresses;
//! - [`hardstate`]: the vote and the purge point, in a small crash-safe file beside the WAL;
//! - [`log_store`]: openraft's log storage over the WAL (`RaftLog`);
//! - [`state_machine`]: openraft's state machine over the apply stage (`RaftApply`), with
//!   snapshots in the backup format;
//! - [`net`]: the peer link (raft RPCs over TCP, cluster id and target checked);
//! - [`forward`]: requests a follower forwards to the leader;
//! - [`peer_tls`]: TLS with mutual authentication on the peer link, its material swappable;
//! - [`init`]: `rstmdb cluster init`, a single node's directory as a one-voter cluster;
//! - [`node`]: one running node, and the proposer that turns a validated write into a raft
//!   proposal;
//! - [`admin`]: the operator's view and changes: status, add a node, remove a node, and what
//!   the metrics watch counts;
//! - [`observe`]: the metrics watch: leader changes, every member id seen.

// openraft's storage traits return its `StorageError` (208 bytes) by value; the helpers that
// build one for them return the same type rather than boxing it only to unbox it again.
#![allow(clippy::result_large_err)]

pub mod admin;
pub mod forward;
pub mod hardstate;
pub mod init;
pub mod log_store;
pub mod net;
pub mod node;
pub mod observe;
pub mod peer_tls;
mod read_index;
pub mod state_machine;
pub mod types;

pub use admin::{AdminError, MemberStatus, Role, Status};
pub use log_store::LogStore;
pub use node::{ClusterError, ClusterNode, ClusterOptions, ReadConsistency};
pub use peer_tls::{PeerSecurity, PeerTls};
pub use state_machine::StateMachine;
pub use types::{Member, NodeId, Request, TypeConfig};

use std::path::{Path, PathBuf};

/// Where a node keeps its raft files inside the data directory.
pub fn raft_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("raft")
}

/// An openraft storage error from one of ours.
pub(crate) fn storage_error(
    subject: openraft::ErrorSubject<NodeId>,
    verb: openraft::ErrorVerb,
    detail: impl std::fmt::Display,
) -> openraft::StorageError<NodeId> {
    openraft::StorageError::from(openraft::StorageIOError::new(
        subject,
        verb,
        openraft::AnyError::error(detail.to_string()),
    ))
}
