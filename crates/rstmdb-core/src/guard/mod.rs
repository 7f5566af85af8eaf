//! The guard language: a small boolean expression over the instance context and the event
//! payload, compiled once when a machine is defined and evaluated for every event.
//!
//! ```
//! use rstmdb_core::guard::Guard;
//! use serde_json::json;
//!
//! let g = Guard::compile("ctx.amount > 0 && payload.currency == \"EUR\"").unwrap();
//! let ctx = json!({"amount": 10}).as_object().cloned().unwrap();
//! let payload = json!({"currency": "EUR"}).as_object().cloned().unwrap();
//! assert!(g.evaluate(&ctx, &payload));
//! ```
//!
//! Compared with the reference implementation, malformed guards are rejected instead of
//! silently truncated (`ctx.a = 5` used to mean `ctx.a`), string escapes are decoded,
//! numbers use full JSON syntax and compare exactly, and no input can panic the parser.

mod ast;
mod eval;
mod lexer;
mod parser;

pub use ast::{CmpOp, Expr, Literal, Number, Operand, Path, Root, Segment};

use crate::limits::MAX_GUARD_BYTES;
use serde_json::{Map, Value};

/// Why a guard did not compile, with the 1-based column (in characters) of the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid guard expression at column {column}: {message}")]
pub struct GuardError {
    pub column: usize,
    pub message: String,
}

impl GuardError {
    pub(crate) fn new(column: usize, message: impl Into<String>) -> Self {
        GuardError {
            column,
            message: message.into(),
        }
    }
}

/// A compiled guard together with its source text (kept for GET_MACHINE and diagrams).
#[derive(Debug, Clone, PartialEq)]
pub struct Guard {
    source: String,
    expr: Expr,
}

impl Guard {
    /// Parses `source`. Leading and trailing whitespace is ignored; an empty guard, a guard
    /// over [`MAX_GUARD_BYTES`], nesting deeper than
    /// [`MAX_GUARD_DEPTH`](crate::limits::MAX_GUARD_DEPTH) and anything left over after a
    /// complete expression are errors.
    pub fn compile(source: &str) -> Result<Guard, GuardError> {
        if source.len() > MAX_GUARD_BYTES {
            return Err(GuardError::new(
                1,
                format!(
                    "guard is {} bytes long, over the limit of {MAX_GUARD_BYTES}",
                    source.len()
                ),
            ));
        }
        let tokens = lexer::tokenize(source)?;
        if tokens.is_empty() {
            return Err(GuardError::new(1, "empty guard expression"));
        }
        let end_column = source.chars().count() + 1;
        let expr = parser::parse(&tokens, end_column)?;
        Ok(Guard {
            source: source.to_owned(),
            expr,
        })
    }

    /// The guard text exactly as defined.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The parsed expression.
    pub fn expr(&self) -> &Expr {
        &self.expr
    }

    /// Evaluates the guard against the context *before* the payload is merged and the
    /// event's payload. Never fails.
    pub fn evaluate(&self, ctx: &Map<String, Value>, payload: &Map<String, Value>) -> bool {
        eval::eval(&self.expr, ctx, payload)
    }
}

#[cfg(test)]
mod tests;
