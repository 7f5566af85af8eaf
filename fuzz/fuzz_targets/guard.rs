//! The guard language: lexer → parser → evaluator (`Guard::compile`, `Guard::evaluate`).
//!
//! Properties: never panics or overflows the stack on any text; a rejected guard names a
//! column inside the text (1-based, at most one past its last character); an accepted guard
//! compiles to the same expression with whitespace around it; evaluation is deterministic.
//!
//! Input: `<guard source>\n<ctx JSON object>\n<payload JSON object>`; a missing or invalid
//! object is `{}`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rstmdb_core::Guard;
use serde_json::{Map, Value};

fn object(bytes: Option<&[u8]>) -> Map<String, Value> {
    match bytes.and_then(|b| serde_json::from_slice::<Value>(b).ok()) {
        Some(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == b'\n');
    let source = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let ctx = object(parts.next());
    let payload = object(parts.next());

    match Guard::compile(&source) {
        Ok(guard) => {
            let first = guard.evaluate(&ctx, &payload);
            assert_eq!(
                first,
                guard.evaluate(&ctx, &payload),
                "evaluation not deterministic"
            );
            let padded = format!(" \t{source}\u{3000} ");
            if padded.len() <= rstmdb_core::limits::MAX_GUARD_BYTES {
                let again = Guard::compile(&padded)
                    .unwrap_or_else(|e| panic!("{source:?} compiles but not with padding: {e}"));
                assert_eq!(again.expr(), guard.expr(), "padding changed the expression");
            }
        }
        Err(error) => {
            let chars = source.chars().count();
            assert!(
                error.column >= 1 && error.column <= chars + 1,
                "column {} outside a guard of {chars} characters: {error}",
                error.column
            );
        }
    }
});
