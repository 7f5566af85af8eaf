//! The one place where engine errors become RCP error objects.

use rstmdb_protocol::{ErrorCode, ErrorObject};
use serde_json::Value;

/// Maps an engine error to the wire: same code, same message, `details` when useful.
pub fn to_wire(e: &rstmdb_core::Error) -> ErrorObject {
    // One `ErrorCode` for the engine and the wire: no translation, nothing to fall back on.
    let code = e.code();
    // Replication codes come only from a cluster's proposer (`ReplicationTimeout`), which a
    // single node does not have.
    debug_assert!(
        !code.is_replication_only() || matches!(e, rstmdb_core::Error::ReplicationTimeout { .. }),
        "the engine sent replication-only code {code}"
    );
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
