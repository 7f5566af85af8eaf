//! The one place where engine errors become RCP error objects.

use rstmdb_protocol::{ErrorCode, ErrorObject};
use serde_json::Value;
use std::str::FromStr;

/// Maps an engine error to the wire: same code, same message, `details` when useful.
pub fn to_wire(e: &rstmdb_core::Error) -> ErrorObject {
    // The core's codes are the closed RCP set; the fallback is unreachable in practice but
    // keeps a new variant from ever putting an unknown code on the wire.
    let code = ErrorCode::from_str(e.code().as_str()).unwrap_or(ErrorCode::InternalError);
    let mut obj = ErrorObject::new(code, e.to_string());
    for (k, v) in e.details() {
        obj = obj.with_detail(k, v);
    }
    obj
}

pub fn bad_request(message: impl Into<String>) -> ErrorObject {
    ErrorObject::new(ErrorCode::BadRequest, message)
}

pub fn with_details(mut obj: ErrorObject, details: &[(&str, Value)]) -> ErrorObject {
    for (k, v) in details {
        obj = obj.with_detail(*k, v.clone());
    }
    obj
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The engine is all a standalone node has to fail with, and none of its codes may become
    /// a replication-only code (the Python client 0.2.1 rejects those).
    #[test]
    fn every_engine_code_maps_to_a_standalone_wire_code() {
        for code in rstmdb_core::ErrorCode::ALL {
            let wire = ErrorCode::from_str(code.as_str());
            assert!(
                wire.is_ok_and(|w| !w.is_replication_only() && w.as_str() == code.as_str()),
                "{} has no standalone wire code",
                code.as_str()
            );
        }
    }
}
