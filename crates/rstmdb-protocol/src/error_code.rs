//! The closed set of RCP error codes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ParseNameError;

/// An RCP error code (protocol.md §6): the 19 codes of the reference's 0.3.0.
///
/// The set is closed on purpose: published clients validate codes against a fixed list and
/// fail on any other, so a new situation must reuse one of them and explain itself in
/// `details` instead of adding a variant. The last three came with replication in 0.3.0;
/// the Python client 0.2.1 still knows only the first 16, so only a node with replication or
/// a cluster configured may send them ([`ErrorCode::STANDALONE`] is what a standalone node
/// can answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The requested protocol version is not supported.
    UnsupportedProtocol,
    /// The request is malformed or invalid.
    BadRequest,
    /// Authentication (or a role) is required for this op.
    Unauthorized,
    /// The credentials were rejected.
    AuthFailed,
    /// Something other than a machine or instance was not found.
    NotFound,
    /// The machine name or version is unknown.
    MachineNotFound,
    /// The version is stored with a different definition.
    MachineVersionExists,
    /// The per-machine version limit is reached.
    MachineVersionLimitExceeded,
    /// The instance id is unknown.
    InstanceNotFound,
    /// The instance id is taken.
    InstanceExists,
    /// No transition for (state, event).
    InvalidTransition,
    /// The transition's guard evaluated to false.
    GuardFailed,
    /// An optimistic check or idempotency key did not match.
    Conflict,
    /// The write-ahead log could not be read or written.
    WalIoError,
    /// An unexpected server failure.
    InternalError,
    /// The client is being throttled.
    RateLimited,
    /// The node is a read-only replica and the op writes (replication only).
    ReadOnlyMode,
    /// A synchronous write was committed but not acknowledged by enough replicas in time
    /// (replication only).
    ReplicationTimeout,
    /// Replication failed (replication only).
    ReplicationError,
}

impl ErrorCode {
    /// Every code, in protocol.md's order.
    pub const ALL: [ErrorCode; 19] = [
        ErrorCode::UnsupportedProtocol,
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::AuthFailed,
        ErrorCode::NotFound,
        ErrorCode::MachineNotFound,
        ErrorCode::MachineVersionExists,
        ErrorCode::MachineVersionLimitExceeded,
        ErrorCode::InstanceNotFound,
        ErrorCode::InstanceExists,
        ErrorCode::InvalidTransition,
        ErrorCode::GuardFailed,
        ErrorCode::Conflict,
        ErrorCode::WalIoError,
        ErrorCode::InternalError,
        ErrorCode::RateLimited,
        ErrorCode::ReadOnlyMode,
        ErrorCode::ReplicationTimeout,
        ErrorCode::ReplicationError,
    ];

    /// The codes a node without replication or a cluster may send: 0.1.1's 16, all that
    /// the published Python client 0.2.1 accepts.
    pub const STANDALONE: &'static [ErrorCode] = Self::ALL.split_at(16).0;

    /// Whether only a node with replication (or a cluster) configured may send this code.
    pub fn is_replication_only(self) -> bool {
        !Self::STANDALONE.contains(&self)
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::UnsupportedProtocol => "UNSUPPORTED_PROTOCOL",
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::AuthFailed => "AUTH_FAILED",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::MachineNotFound => "MACHINE_NOT_FOUND",
            ErrorCode::MachineVersionExists => "MACHINE_VERSION_EXISTS",
            ErrorCode::MachineVersionLimitExceeded => "MACHINE_VERSION_LIMIT_EXCEEDED",
            ErrorCode::InstanceNotFound => "INSTANCE_NOT_FOUND",
            ErrorCode::InstanceExists => "INSTANCE_EXISTS",
            ErrorCode::InvalidTransition => "INVALID_TRANSITION",
            ErrorCode::GuardFailed => "GUARD_FAILED",
            ErrorCode::Conflict => "CONFLICT",
            ErrorCode::WalIoError => "WAL_IO_ERROR",
            ErrorCode::InternalError => "INTERNAL_ERROR",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::ReadOnlyMode => "READ_ONLY_MODE",
            ErrorCode::ReplicationTimeout => "REPLICATION_TIMEOUT",
            ErrorCode::ReplicationError => "REPLICATION_ERROR",
        }
    }

    /// Whether the same request may succeed if simply sent again: only for transient server
    /// conditions, never for anything the request itself got wrong. `REPLICATION_TIMEOUT`
    /// is retryable as in 0.3.0, although its write was committed: a retry must carry an
    /// idempotency key to be safe.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::WalIoError
                | ErrorCode::InternalError
                | ErrorCode::RateLimited
                | ErrorCode::ReplicationTimeout
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ErrorCode {
    type Err = ParseNameError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        ErrorCode::ALL
            .into_iter()
            .find(|code| code.as_str() == name)
            .ok_or_else(|| ParseNameError::new("error code", name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_str_and_serde() {
        for code in ErrorCode::ALL {
            assert_eq!(code.as_str().parse::<ErrorCode>().unwrap(), code);
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
    }

    #[test]
    fn only_transient_codes_are_retryable() {
        let retryable: Vec<_> = ErrorCode::ALL
            .into_iter()
            .filter(|code| code.retryable())
            .collect();
        assert_eq!(
            retryable,
            [
                ErrorCode::WalIoError,
                ErrorCode::InternalError,
                ErrorCode::RateLimited,
                ErrorCode::ReplicationTimeout,
            ]
        );
    }

    #[test]
    fn the_set_is_the_reference_0_3_0_set_of_19() {
        let names: Vec<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), 19);
        assert_eq!(
            names[16..],
            ["READ_ONLY_MODE", "REPLICATION_TIMEOUT", "REPLICATION_ERROR"]
        );
    }

    #[test]
    fn standalone_codes_are_the_first_16_and_exclude_the_replication_ones() {
        assert_eq!(ErrorCode::STANDALONE[..], ErrorCode::ALL[..16]);
        let only: Vec<_> = ErrorCode::ALL
            .into_iter()
            .filter(|c| c.is_replication_only())
            .collect();
        assert_eq!(
            only,
            [
                ErrorCode::ReadOnlyMode,
                ErrorCode::ReplicationTimeout,
                ErrorCode::ReplicationError
            ]
        );
    }
}
