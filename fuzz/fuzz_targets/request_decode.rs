//! Request payload → typed request (`decode_request`), the step between the codecs and the
//! handlers.
//!
//! Properties: never panics; *malformed* (the connection closes) exactly when the payload is
//! not UTF-8 JSON; an echoed id is never over the 256-byte limit; the error response always
//! serialises; and a decoded request, re-encoded, decodes to the same request (so the typed
//! form loses nothing the server acts on).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rstmdb_protocol::decode_request;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let is_json = std::str::from_utf8(data)
        .ok()
        .is_some_and(|text| serde_json::from_str::<Value>(text).is_ok());
    match decode_request(data) {
        Ok(request) => {
            assert!(is_json, "accepted a payload that is not JSON");
            let bytes = request
                .to_json_bytes()
                .unwrap_or_else(|e| panic!("a decoded request does not serialise: {e}"));
            let again = decode_request(&bytes).unwrap_or_else(|e| {
                panic!(
                    "re-encoded request does not decode: {e}\n{}",
                    String::from_utf8_lossy(&bytes)
                )
            });
            assert_eq!(again, request, "request round trip");
        }
        Err(error) => {
            assert_eq!(
                error.closes_connection(),
                !is_json,
                "malformed/invalid split is wrong for: {error}"
            );
            if let Some(id) = error.id() {
                assert!(id.len() <= 256, "echoed id of {} bytes", id.len());
            }
            let response = error.to_response();
            response
                .to_json_bytes()
                .unwrap_or_else(|e| panic!("error response does not serialise: {e}"));
        }
    }
});
