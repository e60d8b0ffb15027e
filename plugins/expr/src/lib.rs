//! Boolean expressions over named, typed values: the binding-key language of `x-header-expr`
//! (names are headers) and `x-json-route` (names are JSON paths such as `$.order.items[0]`).
//!
//! ```text
//! expr       := or
//! or         := and ("||" and)*
//! and        := unary ("&&" unary)*
//! unary      := "!" unary | primary
//! primary    := "(" expr ")"
//!             | "exists" "(" name | string ")"
//!             | operand [cmp operand]
//! cmp        := "==" | "!=" | "<" | "<=" | ">" | ">="
//! operand    := name | string | number | "true" | "false" | "null"
//! name       := [A-Za-z_][A-Za-z0-9_.:-]*  |  "$" path
//! string     := '"' ... '"' | "'" ... "'"      (escapes: \\ \" \' \n \t \r)
//! number     := -?[0-9]+(.[0-9]+)?([eE][+-]?[0-9]+)?
//! ```
//!
//! Expressions are parsed once, when a binding is validated or added, and evaluated per message
//! without allocating. The meaning of a name is up to the caller: [`parse`] hands every name to
//! a resolver that turns it into the caller's variable type (a header name, a parsed JSON path)
//! or rejects it, and [`Expr::eval`] asks a lookup function for each variable's value.
//!
//! Comparison rules (see [`compare`]): a missing value makes every comparison false (like SQL's
//! NULL, so `!(a == 1)` is how to say "absent or not 1"); numbers compare numerically whatever
//! their types; strings and byte strings compare bytewise; values of different kinds are
//! unequal and unordered. A bare name is true when its value is boolean `true`.

use std::cmp::Ordering;
use std::fmt;

/// Longest accepted expression, in bytes.
pub const MAX_LEN: usize = 4096;
/// Deepest accepted nesting of parentheses and `!`.
pub const MAX_DEPTH: usize = 64;

/// A value looked up for a name at evaluation time, borrowed from the message.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(&'a str),
    Bytes(&'a [u8]),
    /// Present but not comparable (a nested table, a JSON object): only `exists` sees it.
    Other,
}

/// A literal written in an expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl Literal {
    fn value(&self) -> Value<'_> {
        match self {
            Literal::Null => Value::Null,
            Literal::Bool(b) => Value::Bool(*b),
            Literal::Int(i) => Value::Int((*i).into()),
            Literal::Float(f) => Value::Float(*f),
            Literal::Str(s) => Value::Str(s),
        }
    }
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// One side of a comparison.
#[derive(Clone, Debug, PartialEq)]
pub enum Operand<V> {
    Var(V),
    Lit(Literal),
}

/// A parsed expression over variables of type `V`.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr<V> {
    Const(bool),
    Not(Box<Expr<V>>),
    And(Vec<Expr<V>>),
    Or(Vec<Expr<V>>),
    /// `exists(name)`: the value is present, whatever its type.
    Exists(V),
    /// A bare name: the value is boolean `true`.
    Truthy(V),
    Compare(Operand<V>, CmpOp, Operand<V>),
}

impl<V> Expr<V> {
    /// Evaluates the expression, asking `lookup` for the value of each variable it reaches
    /// (`&&` and `||` short-circuit).
    pub fn eval<'a>(&self, lookup: &impl Fn(&V) -> Option<Value<'a>>) -> bool {
        match self {
            Expr::Const(b) => *b,
            Expr::Not(e) => !e.eval(lookup),
            Expr::And(es) => es.iter().all(|e| e.eval(lookup)),
            Expr::Or(es) => es.iter().any(|e| e.eval(lookup)),
            Expr::Exists(v) => lookup(v).is_some(),
            Expr::Truthy(v) => lookup(v) == Some(Value::Bool(true)),
            Expr::Compare(a, op, b) => {
                let x = match a {
                    Operand::Var(v) => lookup(v),
                    Operand::Lit(l) => Some(l.value()),
                };
                let y = match b {
                    Operand::Var(v) => lookup(v),
                    Operand::Lit(l) => Some(l.value()),
                };
                match (x, y) {
                    (Some(x), Some(y)) => compare(&x, *op, &y),
                    _ => false,
                }
            }
        }
    }

    /// Every variable the expression mentions, in source order.
    pub fn variables(&self) -> Vec<&V> {
        fn walk<'e, V>(e: &'e Expr<V>, out: &mut Vec<&'e V>) {
            match e {
                Expr::Const(_) => {}
                Expr::Not(e) => walk(e, out),
                Expr::And(es) | Expr::Or(es) => es.iter().for_each(|e| walk(e, out)),
                Expr::Exists(v) | Expr::Truthy(v) => out.push(v),
                Expr::Compare(a, _, b) => {
                    for o in [a, b] {
                        if let Operand::Var(v) = o {
                            out.push(v);
                        }
                    }
                }
            }
        }
        let mut out = Vec::new();
        walk(self, &mut out);
        out
    }
}

/// Compares two present values (see the module documentation for the rules).
pub fn compare(a: &Value<'_>, op: CmpOp, b: &Value<'_>) -> bool {
    use Value::*;
    let ordering = match (a, b) {
        (Int(x), Int(y)) => Some(x.cmp(y)),
        (Int(_) | Float(_), Int(_) | Float(_)) => as_f64(a).partial_cmp(&as_f64(b)),
        (Str(_) | Bytes(_), Str(_) | Bytes(_)) => Some(as_bytes(a).cmp(as_bytes(b))),
        (Bool(x), Bool(y)) => Some(x.cmp(y)),
        (Null, Null) => Some(Ordering::Equal),
        _ => None,
    };
    match (op, ordering) {
        (CmpOp::Ne, None) => true,
        (_, None) => false,
        (CmpOp::Eq, Some(o)) => o.is_eq(),
        (CmpOp::Ne, Some(o)) => o.is_ne(),
        // Null has no order: only equality makes sense for it.
        (_, Some(_)) if matches!(a, Null) => false,
        (CmpOp::Lt, Some(o)) => o.is_lt(),
        (CmpOp::Le, Some(o)) => o.is_le(),
        (CmpOp::Gt, Some(o)) => o.is_gt(),
        (CmpOp::Ge, Some(o)) => o.is_ge(),
    }
}

fn as_f64(v: &Value<'_>) -> f64 {
    match *v {
        Value::Int(i) => i as f64,
        Value::Float(f) => f,
        _ => f64::NAN,
    }
}

fn as_bytes<'a>(v: &Value<'a>) -> &'a [u8] {
    match *v {
        Value::Str(s) => s.as_bytes(),
        Value::Bytes(b) => b,
        _ => &[],
    }
}

/// Why an expression was rejected: shown to the client in the 406 reply, so it says where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// Byte offset in the expression.
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.message, self.offset)
    }
}

impl std::error::Error for ParseError {}

/// Parses `src`, turning each name into a variable with `resolve` (whose `Err` text is reported
/// at the name's position).
pub fn parse<V>(
    src: &str,
    resolve: impl FnMut(&str) -> Result<V, String>,
) -> Result<Expr<V>, ParseError> {
    if src.len() > MAX_LEN {
        return Err(ParseError {
            offset: MAX_LEN,
            message: format!("expression longer than {MAX_LEN} bytes"),
        });
    }
    let tokens = lex(src)?;
    let mut p = Parser {
        tokens,
        pos: 0,
        end: src.len(),
        resolve,
        depth: 0,
    };
    let e = p.or()?;
    match p.peek() {
        None => Ok(e),
        Some(t) => Err(p.error_at(t.offset, format!("unexpected {}", t.kind.describe()))),
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Kind {
    LParen,
    RParen,
    Bang,
    AndAnd,
    OrOr,
    Cmp(CmpOp),
    Name(String),
    Lit(Literal),
    Exists,
}

impl Kind {
    fn describe(&self) -> String {
        match self {
            Kind::LParen => "'('".into(),
            Kind::RParen => "')'".into(),
            Kind::Bang => "'!'".into(),
            Kind::AndAnd => "'&&'".into(),
            Kind::OrOr => "'||'".into(),
            Kind::Cmp(_) => "comparison operator".into(),
            Kind::Name(n) => format!("name '{n}'"),
            Kind::Lit(_) => "literal".into(),
            Kind::Exists => "'exists'".into(),
        }
    }
}

#[derive(Clone, Debug)]
struct Token {
    kind: Kind,
    offset: usize,
}

fn lex(src: &str) -> Result<Vec<Token>, ParseError> {
    let b = src.as_bytes();
    let err = |offset, message: &str| ParseError {
        offset,
        message: message.to_owned(),
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let start = i;
        let c = b[i];
        let two = b.get(i + 1).copied();
        let kind = match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'(' => Kind::LParen,
            b')' => Kind::RParen,
            b'&' if two == Some(b'&') => Kind::AndAnd,
            b'|' if two == Some(b'|') => Kind::OrOr,
            b'=' if two == Some(b'=') => Kind::Cmp(CmpOp::Eq),
            b'!' if two == Some(b'=') => Kind::Cmp(CmpOp::Ne),
            b'<' if two == Some(b'=') => Kind::Cmp(CmpOp::Le),
            b'>' if two == Some(b'=') => Kind::Cmp(CmpOp::Ge),
            b'!' => Kind::Bang,
            b'<' => Kind::Cmp(CmpOp::Lt),
            b'>' => Kind::Cmp(CmpOp::Gt),
            b'"' | b'\'' => {
                let (s, next) = lex_string(src, i)?;
                i = next;
                out.push(Token {
                    kind: Kind::Lit(Literal::Str(s)),
                    offset: start,
                });
                continue;
            }
            b'-' | b'0'..=b'9' => {
                let (lit, next) = lex_number(src, i)?;
                i = next;
                out.push(Token {
                    kind: Kind::Lit(lit),
                    offset: start,
                });
                continue;
            }
            b'$' => {
                i = lex_path(src, i)?;
                out.push(Token {
                    kind: Kind::Name(src[start..i].to_owned()),
                    offset: start,
                });
                continue;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                i += 1;
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric() || matches!(b[i], b'_' | b'.' | b':' | b'-'))
                {
                    i += 1;
                }
                let word = &src[start..i];
                let kind = match word {
                    "true" => Kind::Lit(Literal::Bool(true)),
                    "false" => Kind::Lit(Literal::Bool(false)),
                    "null" => Kind::Lit(Literal::Null),
                    "exists" => Kind::Exists,
                    _ => Kind::Name(word.to_owned()),
                };
                out.push(Token {
                    kind,
                    offset: start,
                });
                continue;
            }
            b'=' => return Err(err(i, "'=' is not an operator, use '=='")),
            b'&' => return Err(err(i, "'&' is not an operator, use '&&'")),
            b'|' => return Err(err(i, "'|' is not an operator, use '||'")),
            _ => {
                let ch = src[i..].chars().next().unwrap_or('?');
                return Err(ParseError {
                    offset: i,
                    message: format!("unexpected character {ch:?}"),
                });
            }
        };
        i += match kind {
            Kind::AndAnd | Kind::OrOr => 2,
            Kind::Cmp(CmpOp::Eq | CmpOp::Ne | CmpOp::Le | CmpOp::Ge) => 2,
            _ => 1,
        };
        out.push(Token {
            kind,
            offset: start,
        });
    }
    Ok(out)
}

/// A quoted string starting at `start`; returns the text and the offset after the quote.
fn lex_string(src: &str, start: usize) -> Result<(String, usize), ParseError> {
    let quote = src.as_bytes()[start] as char;
    let mut out = String::new();
    let mut chars = src[start + 1..].char_indices();
    while let Some((off, c)) = chars.next() {
        let at = start + 1 + off;
        match c {
            c if c == quote => return Ok((out, at + 1)),
            '\\' => match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, 't')) => out.push('\t'),
                Some((_, 'r')) => out.push('\r'),
                Some((_, c @ ('\\' | '"' | '\''))) => out.push(c),
                _ => {
                    return Err(ParseError {
                        offset: at,
                        message: "unknown escape".into(),
                    });
                }
            },
            c => out.push(c),
        }
    }
    Err(ParseError {
        offset: start,
        message: "unterminated string".into(),
    })
}

fn lex_number(src: &str, start: usize) -> Result<(Literal, usize), ParseError> {
    let b = src.as_bytes();
    let mut i = start;
    let digits = |i: &mut usize| {
        let from = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i > from
    };
    if b[i] == b'-' {
        i += 1;
    }
    let bad = || ParseError {
        offset: start,
        message: "malformed number".into(),
    };
    if !digits(&mut i) {
        return Err(bad());
    }
    let mut float = false;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        float = true;
        if !digits(&mut i) {
            return Err(bad());
        }
    }
    if i < b.len() && matches!(b[i], b'e' | b'E') {
        i += 1;
        float = true;
        if i < b.len() && matches!(b[i], b'+' | b'-') {
            i += 1;
        }
        if !digits(&mut i) {
            return Err(bad());
        }
    }
    if i < b.len() && (b[i].is_ascii_alphabetic() || b[i] == b'_') {
        return Err(bad());
    }
    let text = &src[start..i];
    let lit = match text.parse::<i64>() {
        Ok(v) if !float => Literal::Int(v),
        _ => Literal::Float(text.parse().map_err(|_| bad())?),
    };
    Ok((lit, i))
}

/// A `$` path: `$`, then name characters, dots and brackets; a bracket may hold a quoted key
/// with any characters. Returns the offset after the path.
fn lex_path(src: &str, start: usize) -> Result<usize, ParseError> {
    let b = src.as_bytes();
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            c if c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-' | b'$') => i += 1,
            b'[' => {
                i += 1;
                if i < b.len() && matches!(b[i], b'"' | b'\'') {
                    i = lex_string(src, i)?.1;
                }
                while i < b.len() && b[i] != b']' {
                    i += 1;
                }
                if i == b.len() {
                    return Err(ParseError {
                        offset: start,
                        message: "unclosed '[' in path".into(),
                    });
                }
                i += 1;
            }
            _ => break,
        }
    }
    Ok(i)
}

struct Parser<R> {
    tokens: Vec<Token>,
    pos: usize,
    end: usize,
    resolve: R,
    depth: usize,
}

impl<V, R: FnMut(&str) -> Result<V, String>> Parser<R> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn offset(&self) -> usize {
        self.peek().map_or(self.end, |t| t.offset)
    }

    fn error_at(&self, offset: usize, message: String) -> ParseError {
        ParseError { offset, message }
    }

    fn expect(&mut self, kind: Kind) -> Result<(), ParseError> {
        match self.next() {
            Some(t) if t.kind == kind => Ok(()),
            Some(t) => Err(self.error_at(
                t.offset,
                format!("expected {}, found {}", kind.describe(), t.kind.describe()),
            )),
            None => Err(self.error_at(self.end, format!("expected {}", kind.describe()))),
        }
    }

    fn var(&mut self, name: &str, offset: usize) -> Result<V, ParseError> {
        (self.resolve)(name).map_err(|m| self.error_at(offset, m))
    }

    fn or(&mut self) -> Result<Expr<V>, ParseError> {
        let mut items = vec![self.and()?];
        while self.peek().is_some_and(|t| t.kind == Kind::OrOr) {
            self.pos += 1;
            items.push(self.and()?);
        }
        Ok(if items.len() == 1 {
            items.pop().expect("one item")
        } else {
            Expr::Or(items)
        })
    }

    fn and(&mut self) -> Result<Expr<V>, ParseError> {
        let mut items = vec![self.unary()?];
        while self.peek().is_some_and(|t| t.kind == Kind::AndAnd) {
            self.pos += 1;
            items.push(self.unary()?);
        }
        Ok(if items.len() == 1 {
            items.pop().expect("one item")
        } else {
            Expr::And(items)
        })
    }

    fn nested<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, ParseError>,
    ) -> Result<T, ParseError> {
        if self.depth >= MAX_DEPTH {
            return Err(self.error_at(self.offset(), format!("nested deeper than {MAX_DEPTH}")));
        }
        self.depth += 1;
        let r = f(self);
        self.depth -= 1;
        r
    }

    fn unary(&mut self) -> Result<Expr<V>, ParseError> {
        if self.peek().is_some_and(|t| t.kind == Kind::Bang) {
            self.pos += 1;
            return self.nested(|p| Ok(Expr::Not(Box::new(p.unary()?))));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr<V>, ParseError> {
        let Some(t) = self.next() else {
            return Err(self.error_at(self.end, "unexpected end of expression".into()));
        };
        match t.kind {
            Kind::LParen => {
                let e = self.nested(|p| p.or())?;
                self.expect(Kind::RParen)?;
                Ok(e)
            }
            Kind::Exists => {
                self.expect(Kind::LParen)?;
                let name = match self.next() {
                    Some(Token {
                        kind: Kind::Name(n),
                        offset,
                    }) => self.var(&n, offset)?,
                    Some(Token {
                        kind: Kind::Lit(Literal::Str(n)),
                        offset,
                    }) => self.var(&n, offset)?,
                    _ => {
                        let at = self.tokens.get(self.pos - 1).map_or(self.end, |t| t.offset);
                        return Err(self.error_at(at, "exists() takes a name".into()));
                    }
                };
                self.expect(Kind::RParen)?;
                Ok(Expr::Exists(name))
            }
            Kind::Name(n) => {
                let left = Operand::Var(self.var(&n, t.offset)?);
                match self.comparison(left)? {
                    Ok(cmp) => Ok(cmp),
                    Err(Operand::Var(v)) => Ok(Expr::Truthy(v)),
                    Err(Operand::Lit(_)) => unreachable!("left operand is a name"),
                }
            }
            Kind::Lit(lit) => match self.comparison(Operand::Lit(lit))? {
                Ok(cmp) => Ok(cmp),
                Err(Operand::Lit(Literal::Bool(b))) => Ok(Expr::Const(b)),
                Err(_) => {
                    Err(self.error_at(t.offset, "expected a comparison after literal".into()))
                }
            },
            other => Err(self.error_at(t.offset, format!("unexpected {}", other.describe()))),
        }
    }

    /// `left [cmp right]`: `Ok(comparison)`, or `Err(left)` back when no operator follows.
    #[allow(clippy::type_complexity)]
    fn comparison(&mut self, left: Operand<V>) -> Result<Result<Expr<V>, Operand<V>>, ParseError> {
        let Some(Token {
            kind: Kind::Cmp(op),
            ..
        }) = self.peek().cloned()
        else {
            return Ok(Err(left));
        };
        self.pos += 1;
        let right = match self.next() {
            Some(Token {
                kind: Kind::Name(n),
                offset,
            }) => Operand::Var(self.var(&n, offset)?),
            Some(Token {
                kind: Kind::Lit(l), ..
            }) => Operand::Lit(l),
            Some(t) => {
                return Err(self.error_at(
                    t.offset,
                    format!("expected a value, found {}", t.kind.describe()),
                ));
            }
            None => return Err(self.error_at(self.end, "expected a value".into())),
        };
        Ok(Ok(Expr::Compare(left, op, right)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn names(src: &str) -> Result<Expr<String>, ParseError> {
        parse(src, |n| Ok(n.to_owned()))
    }

    fn eval(src: &str, env: &[(&str, Value<'static>)]) -> bool {
        let env: HashMap<&str, Value<'static>> = env.iter().copied().collect();
        names(src)
            .unwrap()
            .eval(&|v: &String| env.get(v.as_str()).copied())
    }

    #[test]
    fn the_documented_example() {
        let env = [("region", Value::Str("eu")), ("priority", Value::Int(7))];
        assert!(eval(r#"region == "eu" && priority >= 5"#, &env));
        assert!(!eval(r#"region == "eu" && priority > 7"#, &env));
        assert!(eval(r#"region != "eu" || !(priority < 5)"#, &env));
    }

    #[test]
    fn precedence_and_short_circuit() {
        // && binds tighter than ||.
        let env = [("a", Value::Bool(true)), ("b", Value::Bool(false))];
        assert!(eval("a || b && b", &env));
        assert!(!eval("(a || b) && b", &env));
        assert!(eval("!b && a", &env));
        assert!(eval("!!a", &env));
        assert!(eval("true", &env));
        assert!(!eval("false || b", &env));
    }

    #[test]
    fn missing_values_fail_every_comparison() {
        assert!(!eval("x == 1", &[]));
        assert!(!eval("x != 1", &[]));
        assert!(eval("!(x == 1)", &[]));
        assert!(!eval("exists(x)", &[]));
        assert!(eval(
            r#"exists("x-weird name")"#,
            &[("x-weird name", Value::Other)]
        ));
        assert!(!eval("x", &[]));
    }

    #[test]
    fn numbers_compare_across_types() {
        let env = [
            ("i", Value::Int(5)),
            ("f", Value::Float(5.5)),
            ("big", Value::Int(u64::MAX.into())),
        ];
        assert!(eval("i == 5.0", &env));
        assert!(eval("i < f && f < 6", &env));
        assert!(eval("big > 9223372036854775807", &env));
        assert!(eval("i >= -3 && -3 < i", &env));
        assert!(eval("f == 5.5e0", &env));
    }

    #[test]
    fn kinds_that_differ_are_unequal_and_unordered() {
        let env = [
            ("s", Value::Str("5")),
            ("n", Value::Null),
            ("b", Value::Bytes(b"eu")),
        ];
        assert!(!eval("s == 5", &env));
        assert!(eval("s != 5", &env));
        assert!(!eval("s < 6", &env));
        assert!(eval("n == null && !(n < null)", &env));
        assert!(eval("b == 'eu'", &env));
        assert!(eval(r#"s < "6" && s >= "10""#, &env));
    }

    #[test]
    fn names_may_hold_dashes_dots_and_colons() {
        let env = [("x-match.v:2", Value::Int(1))];
        assert!(eval("x-match.v:2 == 1", &env));
        assert!(eval("x-match.v:2==1&&true", &env));
    }

    #[test]
    fn json_paths_lex_as_single_names() {
        let e = names(r#"$.order["total amount"] > 10 && $.items[0].kind == 'x'"#).unwrap();
        let vars: Vec<&str> = e.variables().into_iter().map(String::as_str).collect();
        assert_eq!(vars, [r#"$.order["total amount"]"#, "$.items[0].kind"]);
    }

    #[test]
    fn errors_say_where() {
        let err = |src: &str| names(src).unwrap_err();
        assert_eq!(err("a = 1").offset, 2);
        assert_eq!(err("a == ").message, "expected a value");
        assert_eq!(err("(a == 1").message, "expected ')'");
        assert_eq!(err("a == 1 b").message, "unexpected name 'b'");
        assert_eq!(err("\"open").message, "unterminated string");
        assert_eq!(err("5").message, "expected a comparison after literal");
        assert_eq!(err("1x == 2").message, "malformed number");
        assert!(err("a # b").message.starts_with("unexpected character"));
        assert_eq!(err("").message, "unexpected end of expression");
        let deep = format!("{}a{}", "(".repeat(100), ")".repeat(100));
        assert!(err(&deep).message.starts_with("nested deeper"));
        let not_deep = format!("{}a", "!".repeat(100));
        assert!(err(&not_deep).message.starts_with("nested deeper"));
        assert!(err(&"a".repeat(MAX_LEN + 1)).message.contains("longer"));
    }

    #[test]
    fn resolver_errors_point_at_the_name() {
        let e = parse::<()>("ok == 1 && bad == 2", |n| {
            if n == "bad" {
                Err("no such header".into())
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert_eq!(
            e,
            ParseError {
                offset: 11,
                message: "no such header".into()
            }
        );
    }

    #[test]
    fn string_escapes() {
        let env = [("q", Value::Str("a\"b\\c\n"))];
        assert!(eval(r#"q == "a\"b\\c\n""#, &env));
        assert!(eval(r#"q == 'a"b\\c\n'"#, &env));
    }
}
