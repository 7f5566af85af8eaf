//! Why a database could not open. Below `db`, `datadir` and `rekey`, which all return it.

use std::path::PathBuf;

/// Why the database could not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("opening the state store at {path}: {source}")]
    State { path: PathBuf, source: sled::Error },
    #[error(transparent)]
    Wal(#[from] crate::wal::WalError),
    #[error("WAL record {seq} cannot be replayed: {reason}")]
    Replay { seq: u64, reason: String },
    #[error("state store is corrupt: {0}")]
    CorruptState(String),
    /// The data directory's encryption does not match the configured key (or an interrupted
    /// `rekey` must be finished first).
    #[error("encryption at rest: {0}")]
    Encryption(String),
}
