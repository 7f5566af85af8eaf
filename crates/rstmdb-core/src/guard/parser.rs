//! Recursive-descent parser from tokens to [`Expr`].
//!
//! Grammar (tightest binding first: parentheses and comparisons, then `!`, `&&`, `||`):
//!
//! ```text
//! guard      := or_expr EOF            -- anything after a complete expression is an error
//! or_expr    := and_expr ( "||" and_expr )*
//! and_expr   := unary ( "&&" unary )*
//! unary      := "!" unary | primary
//! primary    := "(" or_expr ")" | comparison
//! comparison := operand [ op operand ]  -- without an operator the operand must be a field
//! operand    := path | literal
//! ```
//!
//! A comparison is one operand of `!`, so `!ctx.a == 5` means `!(ctx.a == 5)`, as in the
//! reference. Recursion happens only through `!` and `(`, and both count against
//! [`MAX_GUARD_DEPTH`](crate::limits::MAX_GUARD_DEPTH), so no input can overflow the stack.

use super::GuardError;
use super::ast::{CmpOp, Expr, Literal, Operand};
use super::lexer::{Tok, Token};
use crate::limits::MAX_GUARD_DEPTH;

pub(crate) fn parse(tokens: &[Token], end_column: usize) -> Result<Expr, GuardError> {
    let mut p = Parser {
        tokens,
        pos: 0,
        depth: 0,
        end_column,
    };
    let expr = p.or_expr()?;
    if let Some(t) = p.peek() {
        return Err(GuardError::new(
            t.column,
            format!(
                "unexpected {} after a complete expression",
                t.tok.describe()
            ),
        ));
    }
    Ok(expr)
}

struct Parser<'a> {
    tokens: &'a [Token],
    pos: usize,
    depth: usize,
    /// Column just past the last character, for "unexpected end" errors.
    end_column: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<&Token> {
        let t = self.tokens.get(self.pos);
        self.pos += 1;
        t
    }

    fn eat(&mut self, tok: &Tok) -> bool {
        if self.peek().is_some_and(|t| &t.tok == tok) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn enter(&mut self, column: usize) -> Result<(), GuardError> {
        self.depth += 1;
        if self.depth > MAX_GUARD_DEPTH {
            return Err(GuardError::new(
                column,
                format!("nesting deeper than {MAX_GUARD_DEPTH} levels"),
            ));
        }
        Ok(())
    }

    fn or_expr(&mut self) -> Result<Expr, GuardError> {
        let mut items = vec![self.and_expr()?];
        while self.eat(&Tok::Or) {
            items.push(self.and_expr()?);
        }
        Ok(if items.len() == 1 {
            items.swap_remove(0)
        } else {
            Expr::Or(items)
        })
    }

    fn and_expr(&mut self) -> Result<Expr, GuardError> {
        let mut items = vec![self.unary()?];
        while self.eat(&Tok::And) {
            items.push(self.unary()?);
        }
        Ok(if items.len() == 1 {
            items.swap_remove(0)
        } else {
            Expr::And(items)
        })
    }

    fn unary(&mut self) -> Result<Expr, GuardError> {
        if let Some(t) = self.peek()
            && t.tok == Tok::Not
        {
            let column = t.column;
            self.pos += 1;
            self.enter(column)?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, GuardError> {
        if let Some(t) = self.peek()
            && t.tok == Tok::LParen
        {
            let column = t.column;
            self.pos += 1;
            self.enter(column)?;
            let inner = self.or_expr()?;
            if !self.eat(&Tok::RParen) {
                let at = self.peek().map_or(self.end_column, |t| t.column);
                return Err(GuardError::new(
                    at,
                    format!("expected ')' to close the '(' at column {column}"),
                ));
            }
            self.depth -= 1;
            return Ok(inner);
        }
        self.comparison()
    }

    fn operand(&mut self) -> Result<(Operand, usize), GuardError> {
        let end = self.end_column;
        let Some(t) = self.next() else {
            return Err(GuardError::new(
                end,
                "unexpected end of expression; expected a field or a value",
            ));
        };
        let column = t.column;
        match &t.tok {
            Tok::Path(p) => Ok((Operand::Path(p.clone()), column)),
            Tok::Lit(l) => Ok((Operand::Lit(l.clone()), column)),
            Tok::Word(w) => Err(GuardError::new(
                column,
                format!(
                    "unknown word '{w}': expected a field (ctx.… or payload.…), a number, a string, true, false or null"
                ),
            )),
            other => Err(GuardError::new(
                column,
                format!(
                    "unexpected {}; expected a field or a value",
                    other.describe()
                ),
            )),
        }
    }

    fn comparison(&mut self) -> Result<Expr, GuardError> {
        let (left, left_col) = self.operand()?;
        let op = match self.peek().map(|t| &t.tok) {
            Some(Tok::Eq) => CmpOp::Eq,
            Some(Tok::Ne) => CmpOp::Ne,
            Some(Tok::Gt) => CmpOp::Gt,
            Some(Tok::Ge) => CmpOp::Ge,
            Some(Tok::Lt) => CmpOp::Lt,
            Some(Tok::Le) => CmpOp::Le,
            _ => {
                return match left {
                    Operand::Path(p) => Ok(Expr::Truthy(p)),
                    Operand::Lit(l) => Err(GuardError::new(
                        left_col,
                        format!(
                            "the literal {l} alone is not a condition; compare a field with it"
                        ),
                    )),
                };
            }
        };
        self.pos += 1;
        let (right, right_col) = self.operand()?;
        if let (Operand::Lit(_), Operand::Lit(_)) = (&left, &right) {
            return Err(GuardError::new(
                left_col,
                "a comparison needs at least one field (ctx.… or payload.…)",
            ));
        }
        if op.is_ordering() {
            for (operand, col) in [(&left, left_col), (&right, right_col)] {
                if let Operand::Lit(l) = operand
                    && !matches!(l, Literal::Num(_))
                {
                    return Err(GuardError::new(
                        col,
                        format!("'{}' compares numbers, not {l}", op.as_str()),
                    ));
                }
            }
        }
        Ok(Expr::Compare { left, op, right })
    }
}
