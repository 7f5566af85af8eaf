//! The client's error type.

use std::time::Duration;

use rstmdb_protocol::{ErrorCode, ErrorObject};
use serde_json::{Map, Value};

/// Everything a client call can fail with.
///
/// A server's refusal ([`Error::Server`]) carries the RCP error code so callers can match on
/// it; every other variant is a local or transport failure. [`Error::is_retryable`] says
/// whether sending the same request again may succeed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error object.
    #[error("server error: {code} - {message}")]
    Server {
        /// One of the 19 RCP codes.
        code: ErrorCode,
        /// The server's text (informative; do not parse it).
        message: String,
        /// The server's `retryable` flag.
        retryable: bool,
        /// Structured context (field path, expected/actual state, batch index).
        details: Map<String, Value>,
    },
    /// Opening the TCP connection failed (refused, unreachable, name not resolved).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address as given.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TLS configuration could not be built (unreadable or invalid PEM, bad name).
    #[error("TLS configuration: {0}")]
    TlsConfig(String),
    /// The TLS handshake failed (unknown CA, name mismatch, certificate required).
    #[error("TLS handshake failed: {0}")]
    TlsHandshake(std::io::Error),
    /// Reading or writing the connection failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The server sent bytes that are not RCP, or a message we cannot read.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The connection closed before the answer arrived (or was already closed).
    #[error("connection closed")]
    ConnectionClosed,
    /// No answer within the configured time.
    #[error("request timeout after {0:?}")]
    Timeout(Duration),
    /// The request could not be built (bad argument, unserialisable params).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl Error {
    /// The RCP code when the server refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether the same request may succeed if sent again: the server's flag for server
    /// errors; true for transport failures and timeouts (the request may not have arrived —
    /// use an idempotency key before retrying a mutation).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Server { retryable, .. } => *retryable,
            Error::Connect { .. } | Error::Io(_) | Error::ConnectionClosed | Error::Timeout(_) => {
                true
            }
            Error::TlsConfig(_)
            | Error::TlsHandshake(_)
            | Error::Protocol(_)
            | Error::InvalidRequest(_) => false,
        }
    }

    /// True when the connection is unusable and a new one is needed.
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            Error::Io(_) | Error::ConnectionClosed | Error::Protocol(_)
        )
    }
}

impl From<ErrorObject> for Error {
    fn from(e: ErrorObject) -> Self {
        Error::Server {
            code: e.code,
            message: e.message,
            retryable: e.retryable,
            details: e.details,
        }
    }
}

/// Shorthand for results of client calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_error_displays_code_and_message_like_the_reference_cli() {
        let e = Error::from(ErrorObject::new(
            ErrorCode::Unauthorized,
            "authentication required",
        ));
        assert_eq!(
            e.to_string(),
            "server error: UNAUTHORIZED - authentication required"
        );
        assert_eq!(e.code(), Some(ErrorCode::Unauthorized));
        assert!(!e.is_retryable());
    }

    #[test]
    fn retryable_follows_the_server_flag() {
        let e = Error::from(ErrorObject::new(ErrorCode::WalIoError, "disk"));
        assert!(e.is_retryable());
        assert!(Error::ConnectionClosed.is_retryable());
        assert!(!Error::TlsConfig("x".into()).is_retryable());
    }
}
