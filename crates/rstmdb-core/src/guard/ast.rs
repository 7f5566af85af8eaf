//! The compiled form of a guard. Built once at PUT_MACHINE time, evaluated per event.

use std::fmt;

/// A boolean expression. `And`/`Or` are n-ary so that long chains (`a && b && c …`) stay
/// flat: evaluation depth is bounded by the nesting limit, not by the length of the guard.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Or(Vec<Expr>),
    And(Vec<Expr>),
    Not(Box<Expr>),
    /// A bare field: true when the value is truthy.
    Truthy(Path),
    Compare {
        left: Operand,
        op: CmpOp,
        right: Operand,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

impl CmpOp {
    pub fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
        }
    }

    pub fn is_ordering(self) -> bool {
        matches!(self, CmpOp::Gt | CmpOp::Ge | CmpOp::Lt | CmpOp::Le)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Path(Path),
    Lit(Literal),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Null,
    Bool(bool),
    Num(Number),
    Str(String),
}

/// A numeric literal. Integers are kept exact so that `ctx.n == 9007199254740993` compares
/// exactly against an integer ctx value (decisions.md: integers compare exactly).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    Int(i128),
    Float(f64),
}

/// Which document a path reads: the instance context (before the payload is merged) or the
/// event's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Root {
    Ctx,
    Payload,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Object key; `length` on an array or string yields its length instead.
    Key(String),
    /// `[n]` on an array.
    Index(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    pub root: Root,
    pub segments: Vec<Segment>,
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.root {
            Root::Ctx => "ctx",
            Root::Payload => "payload",
        })?;
        for s in &self.segments {
            match s {
                Segment::Key(k) => write!(f, ".{k}")?,
                Segment::Index(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Null => f.write_str("null"),
            Literal::Bool(b) => write!(f, "{b}"),
            Literal::Num(Number::Int(i)) => write!(f, "{i}"),
            Literal::Num(Number::Float(x)) => write!(f, "{x}"),
            Literal::Str(s) => {
                // JSON string syntax round-trips through the lexer.
                let quoted = serde_json::to_string(s).map_err(|_| fmt::Error)?;
                f.write_str(&quoted)
            }
        }
    }
}
