//! The one error type of the WAL.

use std::path::{Path, PathBuf};

/// Everything that can go wrong in the WAL.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A file-system call failed. `context` says what was being done and on which path.
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// The log holds an invalid record that is not a torn tail (valid records follow it, or it
    /// sits in a segment that is not the last one). Starting would silently lose the records
    /// after it, so the log refuses to open.
    #[error(
        "corrupt WAL record in segment {} at file offset {file_offset}{}: {reason}; refusing to \
         start. Copy the data directory aside, then run `rstmdb repair --data-dir <dir>` to cut \
         the log at this record (the damaged data is kept in `wal/damaged/`)",
        .segment.display(),
        seq_note(*.seq)
    )]
    Corrupt {
        segment: PathBuf,
        file_offset: u64,
        /// The sequence number the record should have had, when known.
        seq: Option<u64>,
        reason: String,
    },
    /// A record is sound but cannot be read with the configured key: it is encrypted and no key
    /// is configured, it is plaintext and a key is, it names another key, or its
    /// authentication tag does not match (modified, moved or swapped bytes, or a wrong key).
    #[error(
        "WAL record in segment {} at file offset {file_offset} (seq {seq}) cannot be read with \
         the configured encryption key: {reason}",
        .segment.display()
    )]
    Encryption {
        segment: PathBuf,
        file_offset: u64,
        seq: u64,
        reason: String,
    },
    /// A payload is larger than `max_record_bytes`; nothing was written.
    #[error("WAL record too large: {len} bytes (max {max})")]
    RecordTooLarge { len: usize, max: u32 },
    /// An earlier failure could not be rolled back, so the files are in an unknown state.
    /// Every write fails until the log is reopened (which re-validates the tail).
    #[error("WAL refuses writes until it is reopened: {reason}")]
    Poisoned { reason: String },
    /// A caller passed a value the log cannot honour (bad options, `skip_to` backwards,
    /// sequence numbers exhausted).
    #[error("invalid WAL request: {reason}")]
    InvalidArgument { reason: String },
    /// Another `Wal` (in this or another process) or a running `repair` holds the directory.
    #[error("WAL directory {} is in use by another process or handle", .dir.display())]
    Locked { dir: PathBuf },
}

fn seq_note(seq: Option<u64>) -> String {
    match seq {
        Some(seq) => format!(" (seq {seq})"),
        None => String::new(),
    }
}

impl WalError {
    /// An I/O error with `what` and `path` as context: "`what` `path`".
    pub(crate) fn io(what: &str, path: &Path, source: std::io::Error) -> WalError {
        WalError::Io {
            context: format!("{what} {}", path.display()),
            source,
        }
    }

    pub(crate) fn corrupt(
        segment: &Path,
        file_offset: u64,
        seq: Option<u64>,
        reason: impl Into<String>,
    ) -> WalError {
        WalError::Corrupt {
            segment: segment.to_path_buf(),
            file_offset,
            seq,
            reason: reason.into(),
        }
    }

    /// True for an I/O error saying the file is not there (a segment removed under a reader).
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self, WalError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}
