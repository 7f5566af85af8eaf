//! Turns guard text into tokens, each tagged with the 1-based column (in characters) where it
//! starts, so that every parse error can point at the exact spot.
//!
//! Field paths (`ctx.a.b[0]`, `payload.x`) are lexed as one token: whitespace inside a path
//! is not allowed, and lexing them here keeps `.5` (a number) and `.b` (a segment) apart.

use super::GuardError;
use super::ast::{Literal, Number, Path, Root, Segment};

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    LParen,
    RParen,
    Not,
    And,
    Or,
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    Lit(Literal),
    Path(Path),
    /// A bare word that is neither a keyword nor a path root; always a parse error, but it
    /// is lexed so the error can name it.
    Word(String),
}

impl Tok {
    /// How the token reads in an error message.
    pub(crate) fn describe(&self) -> String {
        match self {
            Tok::LParen => "'('".into(),
            Tok::RParen => "')'".into(),
            Tok::Not => "'!'".into(),
            Tok::And => "'&&'".into(),
            Tok::Or => "'||'".into(),
            Tok::Eq => "'=='".into(),
            Tok::Ne => "'!='".into(),
            Tok::Gt => "'>'".into(),
            Tok::Ge => "'>='".into(),
            Tok::Lt => "'<'".into(),
            Tok::Le => "'<='".into(),
            Tok::Lit(l) => format!("literal {l}"),
            Tok::Path(p) => format!("field {p}"),
            Tok::Word(w) => format!("word '{w}'"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub tok: Tok,
    pub column: usize,
}

struct Lexer {
    chars: Vec<char>,
    pos: usize,
}

pub(crate) fn tokenize(src: &str) -> Result<Vec<Token>, GuardError> {
    let mut lx = Lexer {
        chars: src.chars().collect(),
        pos: 0,
    };
    let mut out = Vec::new();
    while let Some(t) = lx.next_token()? {
        out.push(t);
    }
    Ok(out)
}

fn is_field_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn is_word_start(c: char) -> bool {
    c.is_alphabetic() || c == '_'
}

impl Lexer {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, n: usize) -> Option<char> {
        self.chars.get(self.pos + n).copied()
    }

    fn column(&self) -> usize {
        self.pos + 1
    }

    fn err(&self, column: usize, msg: impl Into<String>) -> GuardError {
        GuardError::new(column, msg)
    }

    fn next_token(&mut self) -> Result<Option<Token>, GuardError> {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
        let Some(c) = self.peek() else {
            return Ok(None);
        };
        let column = self.column();
        let two = |this: &mut Self, t: Tok| {
            this.pos += 2;
            t
        };
        let one = |this: &mut Self, t: Tok| {
            this.pos += 1;
            t
        };
        let tok = match (c, self.peek_at(1)) {
            ('(', _) => one(self, Tok::LParen),
            (')', _) => one(self, Tok::RParen),
            ('&', Some('&')) => two(self, Tok::And),
            ('|', Some('|')) => two(self, Tok::Or),
            ('=', Some('=')) => two(self, Tok::Eq),
            ('!', Some('=')) => two(self, Tok::Ne),
            ('!', _) => one(self, Tok::Not),
            ('>', Some('=')) => two(self, Tok::Ge),
            ('>', _) => one(self, Tok::Gt),
            ('<', Some('=')) => two(self, Tok::Le),
            ('<', _) => one(self, Tok::Lt),
            ('&', _) => return Err(self.err(column, "unexpected '&' (did you mean '&&'?)")),
            ('|', _) => return Err(self.err(column, "unexpected '|' (did you mean '||'?)")),
            ('=', _) => return Err(self.err(column, "unexpected '=' (did you mean '=='?)")),
            ('"', _) => Tok::Lit(Literal::Str(self.string()?)),
            ('\'', _) => {
                return Err(self.err(column, "strings are written in double quotes"));
            }
            (c, next)
                if c.is_ascii_digit()
                    || (c == '-' && next.is_some_and(|n| n.is_ascii_digit() || n == '.'))
                    || (c == '.' && next.is_some_and(|n| n.is_ascii_digit())) =>
            {
                Tok::Lit(Literal::Num(self.number()?))
            }
            (c, _) if is_word_start(c) => self.word()?,
            (c, _) => return Err(self.err(column, format!("unexpected character '{c}'"))),
        };
        Ok(Some(Token { tok, column }))
    }

    /// A JSON-style string literal; escapes are decoded (decisions.md).
    fn string(&mut self) -> Result<String, GuardError> {
        let start = self.column();
        self.pos += 1; // opening quote
        let mut s = String::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(self.err(start, "unterminated string"));
            };
            self.pos += 1;
            match c {
                '"' => return Ok(s),
                '\\' => {
                    let esc_col = self.column() - 1;
                    let Some(e) = self.peek() else {
                        return Err(self.err(start, "unterminated string"));
                    };
                    self.pos += 1;
                    match e {
                        '"' => s.push('"'),
                        '\\' => s.push('\\'),
                        '/' => s.push('/'),
                        'b' => s.push('\u{8}'),
                        'f' => s.push('\u{c}'),
                        'n' => s.push('\n'),
                        'r' => s.push('\r'),
                        't' => s.push('\t'),
                        'u' => s.push(self.unicode_escape(esc_col)?),
                        other => {
                            return Err(self.err(esc_col, format!("invalid escape '\\{other}'")));
                        }
                    }
                }
                c => s.push(c),
            }
        }
    }

    fn hex4(&mut self, esc_col: usize) -> Result<u32, GuardError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = self
                .peek()
                .and_then(|c| c.to_digit(16))
                .ok_or_else(|| self.err(esc_col, "\\u must be followed by 4 hex digits"))?;
            v = v * 16 + d;
            self.pos += 1;
        }
        Ok(v)
    }

    fn unicode_escape(&mut self, esc_col: usize) -> Result<char, GuardError> {
        let hi = self.hex4(esc_col)?;
        let code = if (0xD800..0xDC00).contains(&hi) {
            // A high surrogate must be followed by `\uDC00`..`\uDFFF`.
            if self.peek() != Some('\\') || self.peek_at(1) != Some('u') {
                return Err(self.err(esc_col, "unpaired surrogate in \\u escape"));
            }
            self.pos += 2;
            let lo = self.hex4(esc_col)?;
            if !(0xDC00..0xE000).contains(&lo) {
                return Err(self.err(esc_col, "unpaired surrogate in \\u escape"));
            }
            0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
        } else {
            hi
        };
        char::from_u32(code).ok_or_else(|| self.err(esc_col, "invalid \\u escape"))
    }

    /// Numbers: JSON syntax plus the reference's looser forms (`.5`, `5.`, `007`), which
    /// existing definitions may use. The text must fit an i128 or a finite f64.
    fn number(&mut self) -> Result<Number, GuardError> {
        let column = self.column();
        let start = self.pos;
        if self.peek() == Some('-') {
            self.pos += 1;
        }
        let mut digits = 0usize;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
            digits += 1;
        }
        let mut is_float = false;
        if self.peek() == Some('.') {
            is_float = true;
            self.pos += 1;
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.pos += 1;
                digits += 1;
            }
        }
        if digits > 0 && matches!(self.peek(), Some('e' | 'E')) {
            is_float = true;
            self.pos += 1;
            if matches!(self.peek(), Some('+' | '-')) {
                self.pos += 1;
            }
            let mut exp_digits = 0;
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.pos += 1;
                exp_digits += 1;
            }
            if exp_digits == 0 {
                let text: String = self.chars[start..self.pos].iter().collect();
                return Err(self.err(column, format!("invalid number '{text}'")));
            }
        }
        let text: String = self.chars[start..self.pos].iter().collect();
        if digits == 0 {
            return Err(self.err(column, format!("invalid number '{text}'")));
        }
        if !is_float && let Ok(i) = text.parse::<i128>() {
            return Ok(Number::Int(i));
        }
        // `5.` is not Rust float syntax; the trailing dot adds nothing.
        let parse_text = text.strip_suffix('.').unwrap_or(&text);
        match parse_text.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Number::Float(f)),
            _ => Err(self.err(column, format!("number out of range '{text}'"))),
        }
    }

    fn word(&mut self) -> Result<Tok, GuardError> {
        let column = self.column();
        let start = self.pos;
        while self.peek().is_some_and(is_field_char) {
            self.pos += 1;
        }
        let word: String = self.chars[start..self.pos].iter().collect();
        let root = match word.as_str() {
            "true" => return Ok(Tok::Lit(Literal::Bool(true))),
            "false" => return Ok(Tok::Lit(Literal::Bool(false))),
            "null" => return Ok(Tok::Lit(Literal::Null)),
            "ctx" => Root::Ctx,
            "payload" => Root::Payload,
            _ => return Ok(Tok::Word(word)),
        };
        if !matches!(self.peek(), Some('.' | '[')) {
            return Err(self.err(
                column,
                format!("'{word}' must be followed by a field, e.g. '{word}.name'"),
            ));
        }
        let mut segments = Vec::new();
        loop {
            match self.peek() {
                Some('.') => {
                    self.pos += 1;
                    let seg_col = self.column();
                    let seg_start = self.pos;
                    while self.peek().is_some_and(is_field_char) {
                        self.pos += 1;
                    }
                    if self.pos == seg_start {
                        return Err(self.err(seg_col, "empty field name"));
                    }
                    segments.push(Segment::Key(
                        self.chars[seg_start..self.pos].iter().collect(),
                    ));
                }
                Some('[') => {
                    let open_col = self.column();
                    self.pos += 1;
                    let idx_start = self.pos;
                    while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                        self.pos += 1;
                    }
                    let text: String = self.chars[idx_start..self.pos].iter().collect();
                    if text.is_empty() {
                        return Err(self.err(open_col, "expected an array index like [0]"));
                    }
                    if self.peek() != Some(']') {
                        return Err(self.err(self.column(), "expected ']'"));
                    }
                    self.pos += 1;
                    let index = text.parse::<usize>().map_err(|_| {
                        self.err(open_col, format!("array index too large '{text}'"))
                    })?;
                    segments.push(Segment::Index(index));
                }
                _ => break,
            }
        }
        Ok(Tok::Path(Path { root, segments }))
    }
}
