//! The one error type of the engine and its mapping to RCP error codes.
//!
//! Every variant maps to exactly one RCP code (`Error::code`), so the server never has to
//! guess: the wire code is decided where the error is created. Codes outside the RCP table
//! must never reach the wire (the published Python client validates against a closed enum),
//! which is why [`ErrorCode`] is closed and extra information goes into [`Error::details`].

use serde_json::{Map, Value};

/// The RCP error codes (protocol.md §6): the wire's closed set, defined once in
/// `rstmdb-protocol`. The engine knows nothing of replication, so it only ever produces the
/// codes in [`ErrorCode::STANDALONE`] (see [`Error::code`]); the three replication-only ones
/// (`READ_ONLY_MODE`, `REPLICATION_TIMEOUT`, `REPLICATION_ERROR`) never come from here.
pub use rstmdb_protocol::ErrorCode;

/// Why an optimistic or idempotency check refused a request (all are `CONFLICT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConflictKind {
    /// `expected_state` did not match the instance's current state.
    State { expected: String, actual: String },
    /// `expected_wal_offset` did not match the instance's `last_wal_offset`.
    WalOffset { expected: u64, actual: u64 },
    /// An idempotency key was replayed with different parameters.
    IdempotencyKeyReused { key: String },
}

/// Every error the engine (and the layers above it) can report.
///
/// Each variant maps to exactly one [`ErrorCode`]; see [`Error::code`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("unsupported protocol version: {requested}")]
    UnsupportedProtocol { requested: u64 },

    /// A request or definition that can never succeed as sent. `path` names the bad field
    /// (`transitions[2].to`, `initial_ctx`), `column` the 1-based column inside a guard.
    #[error("{message}")]
    BadRequest {
        message: String,
        path: Option<String>,
        column: Option<usize>,
    },

    #[error("{message}")]
    Unauthorized { message: String },

    #[error("authentication failed: {reason}")]
    AuthFailed { reason: String },

    #[error("not found: {what}")]
    NotFound { what: String },

    #[error("machine version not found: {machine} v{version}")]
    MachineNotFound { machine: String, version: u32 },

    #[error("machine version already exists: {machine} v{version}")]
    MachineVersionExists { machine: String, version: u32 },

    #[error(
        "machine version limit exceeded: machine '{machine}' already has {count} versions (limit: {limit})"
    )]
    MachineVersionLimitExceeded {
        machine: String,
        count: usize,
        limit: usize,
    },

    #[error("instance not found: {instance_id}")]
    InstanceNotFound { instance_id: String },

    #[error("instance already exists: {instance_id}")]
    InstanceExists { instance_id: String },

    /// The id belongs to a deleted instance and re-creating deleted ids is turned off.
    #[error(
        "instance already exists: {instance_id} (it was deleted, and storage.allow_instance_recreate is false)"
    )]
    InstanceDeleted { instance_id: String },

    #[error("invalid transition: cannot apply '{event}' in state '{state}'")]
    InvalidTransition { state: String, event: String },

    #[error("guard failed for transition '{from}' -> '{to}' on event '{event}'")]
    GuardFailed {
        from: String,
        to: String,
        event: String,
    },

    #[error("{}", conflict_message(.0))]
    Conflict(ConflictKind),

    #[error("WAL error: {detail}")]
    WalIo { detail: String },

    #[error("internal error: {detail}")]
    Internal { detail: String },

    #[error("{message}")]
    RateLimited { message: String },

    /// A cluster could not commit a write in time (no leader, or no quorum within the
    /// write timeout). Only a cluster member sends it.
    #[error("{detail}")]
    ReplicationTimeout {
        /// `no_leader` or `commit_timeout`.
        reason: String,
        /// Whether the write is in the log: `Some(false)` never, `None` unknown (retry with
        /// the same idempotency key).
        committed: Option<bool>,
        detail: String,
    },
}

fn conflict_message(kind: &ConflictKind) -> String {
    match kind {
        ConflictKind::State { expected, actual } => {
            format!("state conflict: expected '{expected}', actual '{actual}'")
        }
        ConflictKind::WalOffset { expected, actual } => {
            format!("WAL offset conflict: expected {expected}, actual {actual}")
        }
        ConflictKind::IdempotencyKeyReused { key } => {
            format!("idempotency key '{key}' was already used with different parameters")
        }
    }
}

impl Error {
    /// A `BAD_REQUEST` naming the offending field.
    pub fn bad_request(path: impl Into<String>, message: impl Into<String>) -> Self {
        let path = path.into();
        let message = message.into();
        Error::BadRequest {
            message: if path.is_empty() {
                message
            } else {
                format!("{path}: {message}")
            },
            path: (!path.is_empty()).then_some(path),
            column: None,
        }
    }

    /// The RCP code this error is reported as. This is the only place the mapping lives.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::UnsupportedProtocol { .. } => ErrorCode::UnsupportedProtocol,
            Error::BadRequest { .. } => ErrorCode::BadRequest,
            Error::Unauthorized { .. } => ErrorCode::Unauthorized,
            Error::AuthFailed { .. } => ErrorCode::AuthFailed,
            Error::NotFound { .. } => ErrorCode::NotFound,
            Error::MachineNotFound { .. } => ErrorCode::MachineNotFound,
            Error::MachineVersionExists { .. } => ErrorCode::MachineVersionExists,
            Error::MachineVersionLimitExceeded { .. } => ErrorCode::MachineVersionLimitExceeded,
            Error::InstanceNotFound { .. } => ErrorCode::InstanceNotFound,
            Error::InstanceExists { .. } | Error::InstanceDeleted { .. } => {
                ErrorCode::InstanceExists
            }
            Error::InvalidTransition { .. } => ErrorCode::InvalidTransition,
            Error::GuardFailed { .. } => ErrorCode::GuardFailed,
            Error::Conflict(_) => ErrorCode::Conflict,
            Error::WalIo { .. } => ErrorCode::WalIoError,
            Error::Internal { .. } => ErrorCode::InternalError,
            Error::RateLimited { .. } => ErrorCode::RateLimited,
            Error::ReplicationTimeout { .. } => ErrorCode::ReplicationTimeout,
        }
    }

    /// Whether the client may retry unchanged.
    pub fn retryable(&self) -> bool {
        self.code().retryable()
    }

    /// Structured context for `error.details` on the wire (bad field path, expected/actual
    /// state, …). Empty when there is nothing useful to add.
    pub fn details(&self) -> Map<String, Value> {
        let mut d = Map::new();
        match self {
            Error::BadRequest { path, column, .. } => {
                if let Some(p) = path {
                    d.insert("path".into(), Value::from(p.as_str()));
                }
                if let Some(c) = column {
                    d.insert("column".into(), Value::from(*c));
                }
            }
            Error::MachineNotFound { machine, version }
            | Error::MachineVersionExists { machine, version } => {
                d.insert("machine".into(), Value::from(machine.as_str()));
                d.insert("version".into(), Value::from(*version));
            }
            Error::MachineVersionLimitExceeded {
                machine,
                count,
                limit,
            } => {
                d.insert("machine".into(), Value::from(machine.as_str()));
                d.insert("versions".into(), Value::from(*count));
                d.insert("limit".into(), Value::from(*limit));
            }
            Error::InstanceNotFound { instance_id } | Error::InstanceExists { instance_id } => {
                d.insert("instance_id".into(), Value::from(instance_id.as_str()));
            }
            Error::InstanceDeleted { instance_id } => {
                d.insert("instance_id".into(), Value::from(instance_id.as_str()));
                d.insert("reason".into(), Value::from("deleted"));
            }
            Error::InvalidTransition { state, event } => {
                d.insert("state".into(), Value::from(state.as_str()));
                d.insert("event".into(), Value::from(event.as_str()));
            }
            Error::GuardFailed { from, to, event } => {
                d.insert("from_state".into(), Value::from(from.as_str()));
                d.insert("to_state".into(), Value::from(to.as_str()));
                d.insert("event".into(), Value::from(event.as_str()));
            }
            Error::Conflict(kind) => match kind {
                ConflictKind::State { expected, actual } => {
                    d.insert("reason".into(), Value::from("state_mismatch"));
                    d.insert("expected_state".into(), Value::from(expected.as_str()));
                    d.insert("actual_state".into(), Value::from(actual.as_str()));
                }
                ConflictKind::WalOffset { expected, actual } => {
                    d.insert("reason".into(), Value::from("wal_offset_mismatch"));
                    d.insert("expected_wal_offset".into(), Value::from(*expected));
                    d.insert("actual_wal_offset".into(), Value::from(*actual));
                }
                ConflictKind::IdempotencyKeyReused { key } => {
                    d.insert("reason".into(), Value::from("idempotency_key_reused"));
                    d.insert("idempotency_key".into(), Value::from(key.as_str()));
                }
            },
            Error::ReplicationTimeout {
                reason, committed, ..
            } => {
                d.insert("reason".into(), Value::from(reason.as_str()));
                d.insert(
                    "committed".into(),
                    committed.map_or(Value::from("unknown"), Value::from),
                );
            }
            Error::UnsupportedProtocol { requested } => {
                d.insert("requested".into(), Value::from(*requested));
                d.insert("supported".into(), Value::from(vec![1u64]));
            }
            Error::Unauthorized { .. }
            | Error::AuthFailed { .. }
            | Error::NotFound { .. }
            | Error::WalIo { .. }
            | Error::Internal { .. }
            | Error::RateLimited { .. } => {}
        }
        d
    }
}

/// Result alias for engine operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_io_internal_and_rate_limited_are_retryable() {
        let retryable: Vec<_> = ErrorCode::STANDALONE
            .iter()
            .filter(|c| c.retryable())
            .map(|c| c.as_str())
            .collect();
        assert_eq!(
            retryable,
            ["WAL_IO_ERROR", "INTERNAL_ERROR", "RATE_LIMITED"]
        );
    }

    #[test]
    fn wire_names_are_unique_and_upper_snake_case() {
        let mut names: Vec<_> = ErrorCode::STANDALONE.iter().map(|c| c.as_str()).collect();
        assert!(
            names
                .iter()
                .all(|n| n.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        );
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 16);
    }

    /// The engine knows nothing of replication: no error of it may become a replication-only
    /// code (the Python client 0.2.1 rejects those). One error of every variant.
    #[test]
    fn every_engine_error_has_a_standalone_code() {
        let s = || String::from("x");
        let all = [
            Error::UnsupportedProtocol { requested: 2 },
            Error::bad_request("p", "m"),
            Error::Unauthorized { message: s() },
            Error::AuthFailed { reason: s() },
            Error::NotFound { what: s() },
            Error::MachineNotFound {
                machine: s(),
                version: 1,
            },
            Error::MachineVersionExists {
                machine: s(),
                version: 1,
            },
            Error::MachineVersionLimitExceeded {
                machine: s(),
                count: 1,
                limit: 1,
            },
            Error::InstanceNotFound { instance_id: s() },
            Error::InstanceExists { instance_id: s() },
            Error::InstanceDeleted { instance_id: s() },
            Error::InvalidTransition {
                state: s(),
                event: s(),
            },
            Error::GuardFailed {
                from: s(),
                to: s(),
                event: s(),
            },
            Error::Conflict(ConflictKind::WalOffset {
                expected: 1,
                actual: 2,
            }),
            Error::WalIo { detail: s() },
            Error::Internal { detail: s() },
            Error::RateLimited { message: s() },
        ];
        for e in &all {
            assert!(!e.code().is_replication_only(), "{e:?}");
            assert!(ErrorCode::STANDALONE.contains(&e.code()), "{e:?}");
        }
        // Every standalone code is reachable from some variant.
        for code in ErrorCode::STANDALONE {
            assert!(all.iter().any(|e| e.code() == *code), "{code}");
        }
    }

    #[test]
    fn a_replication_timeout_is_replication_only_and_says_whether_it_committed() {
        let e = Error::ReplicationTimeout {
            reason: "commit_timeout".into(),
            committed: None,
            detail: "not committed within 5000 ms".into(),
        };
        assert_eq!(e.code(), ErrorCode::ReplicationTimeout);
        assert!(e.code().is_replication_only() && e.retryable());
        let d = e.details();
        assert_eq!(d["reason"], "commit_timeout");
        assert_eq!(d["committed"], "unknown");
        let e = Error::ReplicationTimeout {
            reason: "no_leader".into(),
            committed: Some(false),
            detail: "no leader".into(),
        };
        assert_eq!(e.details()["committed"], false);
    }

    #[test]
    fn bad_request_message_and_details_name_the_path() {
        let e = Error::bad_request("transitions[2].to", "state 'x' is not in states");
        assert_eq!(e.code(), ErrorCode::BadRequest);
        assert_eq!(
            e.to_string(),
            "transitions[2].to: state 'x' is not in states"
        );
        assert_eq!(e.details()["path"], "transitions[2].to");
    }

    #[test]
    fn idempotency_conflict_carries_the_reason() {
        let e = Error::Conflict(ConflictKind::IdempotencyKeyReused { key: "k".into() });
        assert_eq!(e.code(), ErrorCode::Conflict);
        assert!(!e.retryable());
        assert_eq!(e.details()["reason"], "idempotency_key_reused");
    }

    #[test]
    fn reference_messages_are_kept_for_operator_familiarity() {
        let e = Error::InvalidTransition {
            state: "paid".into(),
            event: "PAY".into(),
        };
        assert_eq!(
            e.to_string(),
            "invalid transition: cannot apply 'PAY' in state 'paid'"
        );
        let e = Error::Conflict(ConflictKind::WalOffset {
            expected: 3,
            actual: 4,
        });
        assert_eq!(e.to_string(), "WAL offset conflict: expected 3, actual 4");
    }
}
