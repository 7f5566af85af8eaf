//! Evaluation of a compiled guard. Never fails: a missing field is `null`, a type mismatch
//! makes a comparison false (and `!=` true), exactly as in the reference.

use super::ast::{CmpOp, Expr, Literal, Number, Operand, Path, Root, Segment};
use serde_json::{Map, Value};
use std::cmp::Ordering;

/// A resolved operand: a JSON value borrowed from ctx/payload, a computed `.length`, or a
/// literal from the guard.
#[derive(Debug, Clone, Copy)]
enum Val<'a> {
    Json(&'a Value),
    Missing,
    Len(usize),
    Lit(&'a Literal),
}

/// Numbers in a form that compares exactly across integers and floats.
#[derive(Debug, Clone, Copy)]
enum Num {
    Int(i128),
    Float(f64),
}

pub(crate) fn eval(expr: &Expr, ctx: &Map<String, Value>, payload: &Map<String, Value>) -> bool {
    match expr {
        Expr::Or(items) => items.iter().any(|e| eval(e, ctx, payload)),
        Expr::And(items) => items.iter().all(|e| eval(e, ctx, payload)),
        Expr::Not(inner) => !eval(inner, ctx, payload),
        Expr::Truthy(path) => truthy(resolve(path, ctx, payload)),
        Expr::Compare { left, op, right } => {
            let l = operand(left, ctx, payload);
            let r = operand(right, ctx, payload);
            match op {
                CmpOp::Eq => equal(l, r),
                CmpOp::Ne => !equal(l, r),
                CmpOp::Gt => order(l, r) == Some(Ordering::Greater),
                CmpOp::Ge => matches!(order(l, r), Some(Ordering::Greater | Ordering::Equal)),
                CmpOp::Lt => order(l, r) == Some(Ordering::Less),
                CmpOp::Le => matches!(order(l, r), Some(Ordering::Less | Ordering::Equal)),
            }
        }
    }
}

fn operand<'a>(
    o: &'a Operand,
    ctx: &'a Map<String, Value>,
    payload: &'a Map<String, Value>,
) -> Val<'a> {
    match o {
        Operand::Path(p) => resolve(p, ctx, payload),
        Operand::Lit(l) => Val::Lit(l),
    }
}

fn resolve<'a>(
    path: &Path,
    ctx: &'a Map<String, Value>,
    payload: &'a Map<String, Value>,
) -> Val<'a> {
    let root = match path.root {
        Root::Ctx => ctx,
        Root::Payload => payload,
    };
    // The roots are always objects, so the first segment is a key lookup.
    let Some((Segment::Key(first), rest)) = path.segments.split_first() else {
        return Val::Missing;
    };
    let Some(mut cur) = root.get(first) else {
        return Val::Missing;
    };
    for (i, seg) in rest.iter().enumerate() {
        let is_last = i + 1 == rest.len();
        cur = match (seg, cur) {
            (Segment::Key(k), Value::Object(m)) => match m.get(k) {
                Some(v) => v,
                None => return Val::Missing,
            },
            // `.length` is only special on arrays and strings, and only as the last segment:
            // an object may well have a key named "length".
            (Segment::Key(k), Value::Array(a)) if k == "length" && is_last => {
                return Val::Len(a.len());
            }
            (Segment::Key(k), Value::String(s)) if k == "length" && is_last => {
                return Val::Len(s.chars().count());
            }
            (Segment::Index(i), Value::Array(a)) => match a.get(*i) {
                Some(v) => v,
                None => return Val::Missing,
            },
            _ => return Val::Missing,
        };
    }
    Val::Json(cur)
}

/// Truthiness as the reference: null, false, 0, "", [] and {} are false.
fn truthy(v: Val<'_>) -> bool {
    match v {
        Val::Missing => false,
        Val::Len(n) => n != 0,
        Val::Json(j) => match j {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Number(n) => as_num(n).is_some_and(|x| !is_zero(x)),
            Value::String(s) => !s.is_empty(),
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
        },
        Val::Lit(l) => match l {
            Literal::Null => false,
            Literal::Bool(b) => *b,
            Literal::Num(n) => !is_zero(lit_num(*n)),
            Literal::Str(s) => !s.is_empty(),
        },
    }
}

fn is_zero(n: Num) -> bool {
    match n {
        Num::Int(i) => i == 0,
        Num::Float(f) => f == 0.0,
    }
}

fn as_num(n: &serde_json::Number) -> Option<Num> {
    if let Some(i) = n.as_i64() {
        Some(Num::Int(i128::from(i)))
    } else if let Some(u) = n.as_u64() {
        Some(Num::Int(i128::from(u)))
    } else {
        n.as_f64().map(Num::Float)
    }
}

fn lit_num(n: Number) -> Num {
    match n {
        Number::Int(i) => Num::Int(i),
        Number::Float(f) => Num::Float(f),
    }
}

fn number_of(v: Val<'_>) -> Option<Num> {
    match v {
        Val::Json(Value::Number(n)) => as_num(n),
        Val::Len(n) => Some(Num::Int(n as i128)),
        Val::Lit(Literal::Num(n)) => Some(lit_num(*n)),
        _ => None,
    }
}

/// Exact comparison of an integer with a float, without rounding the integer to f64.
fn cmp_int_float(i: i128, f: f64) -> Option<Ordering> {
    if f.is_nan() {
        return None;
    }
    // i128 spans ±1.7e38; beyond that the float wins outright.
    if f >= 1.7e38 {
        return Some(Ordering::Less);
    }
    if f <= -1.7e38 {
        return Some(Ordering::Greater);
    }
    let t = f.trunc();
    // Within range, so the conversion is exact for an integral float.
    let ti = t as i128;
    match i.cmp(&ti) {
        Ordering::Equal => {
            let frac = f - t;
            Some(if frac > 0.0 {
                Ordering::Less
            } else if frac < 0.0 {
                Ordering::Greater
            } else {
                Ordering::Equal
            })
        }
        other => Some(other),
    }
}

fn cmp_num(a: Num, b: Num) -> Option<Ordering> {
    match (a, b) {
        (Num::Int(x), Num::Int(y)) => Some(x.cmp(&y)),
        (Num::Float(x), Num::Float(y)) => x.partial_cmp(&y),
        (Num::Int(x), Num::Float(y)) => cmp_int_float(x, y),
        (Num::Float(x), Num::Int(y)) => cmp_int_float(y, x).map(Ordering::reverse),
    }
}

fn order(l: Val<'_>, r: Val<'_>) -> Option<Ordering> {
    cmp_num(number_of(l)?, number_of(r)?)
}

fn equal(l: Val<'_>, r: Val<'_>) -> bool {
    if let (Some(a), Some(b)) = (number_of(l), number_of(r)) {
        return cmp_num(a, b) == Some(Ordering::Equal);
    }
    match (l, r) {
        (Val::Json(a), Val::Json(b)) => json_equal(a, b),
        (Val::Missing, other) | (other, Val::Missing) => is_null(other),
        (Val::Lit(lit), Val::Json(j)) | (Val::Json(j), Val::Lit(lit)) => lit_equal(lit, j),
        // Literal vs literal is rejected by the parser; a length only equals numbers.
        _ => false,
    }
}

fn is_null(v: Val<'_>) -> bool {
    matches!(
        v,
        Val::Missing | Val::Json(Value::Null) | Val::Lit(Literal::Null)
    )
}

fn lit_equal(lit: &Literal, j: &Value) -> bool {
    match (lit, j) {
        (Literal::Null, Value::Null) => true,
        (Literal::Bool(a), Value::Bool(b)) => a == b,
        (Literal::Str(a), Value::String(b)) => a == b,
        // Numbers were handled by the caller; every other pairing is a type mismatch.
        _ => false,
    }
}

/// Structural equality for field-to-field comparisons; numbers compare exactly.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (as_num(x), as_num(y)) {
            (Some(x), Some(y)) => cmp_num(x, y) == Some(Ordering::Equal),
            _ => false,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_equal(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_float_comparison_is_exact() {
        assert_eq!(
            cmp_int_float(9_007_199_254_740_993, 9_007_199_254_740_992.0),
            Some(Ordering::Greater)
        );
        assert_eq!(cmp_int_float(1, 1.0), Some(Ordering::Equal));
        assert_eq!(cmp_int_float(1, 1.5), Some(Ordering::Less));
        assert_eq!(cmp_int_float(-1, -1.5), Some(Ordering::Greater));
        assert_eq!(cmp_int_float(0, -0.0), Some(Ordering::Equal));
        assert_eq!(cmp_int_float(i128::MAX, 1e300), Some(Ordering::Less));
        assert_eq!(cmp_int_float(i128::MIN, -1e300), Some(Ordering::Greater));
    }
}
