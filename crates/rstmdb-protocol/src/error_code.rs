//! The closed set of RCP error codes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ParseNameError;

/// An RCP error code (protocol.md §6).
///
/// The set is closed on purpose: published clients validate codes against exactly these 16
/// and fail on any other, so a new situation must reuse one of them and explain itself in
/// `details` instead of adding a variant.
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
}

impl ErrorCode {
    /// Every code, in protocol.md's order.
    pub const ALL: [ErrorCode; 16] = [
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
    ];

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
        }
    }

    /// Whether the same request may succeed if simply sent again: only for transient server
    /// conditions, never for anything the request itself got wrong.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::WalIoError | ErrorCode::InternalError | ErrorCode::RateLimited
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
                ErrorCode::RateLimited
            ]
        );
    }
}
