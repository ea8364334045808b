//! Tokenizer for PTX source text: identifiers (dotted opcodes such as
//! `ld.global.v4.f32`, registers `%r1`, specials `%tid.x`, labels `$L0`), directives
//! (`.reg`, one dot-segment each), integer / float literals (`0f3F800000`, `0d…`,
//! `0x…`, decimal, octal, binary), strings and punctuation. Comments are skipped and
//! every token carries its 1-based source line.

use super::error::PtxError;

#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    /// Identifier, register or dotted opcode.
    Ident(String),
    /// Directive without the leading dot (`reg`, `b32`, `align`, …).
    Dir(String),
    /// Integer literal (unsigned 64-bit two's complement).
    Int(u64),
    /// Hexadecimal single-precision literal `0fXXXXXXXX` (raw bits).
    F32Bits(u32),
    /// Hexadecimal double-precision literal `0dXXXXXXXXXXXXXXXX` (raw bits).
    F64Bits(u64),
    /// Decimal floating-point literal.
    Float(f64),
    Str(String),
    Punct(char),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub tok: Tok,
    pub line: u32,
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b'$' || c == b'%'
}

fn is_ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$'
}

/// Tokenize a whole PTX file.
pub fn tokenize(src: &str) -> Result<Vec<Token>, PtxError> {
    let b = src.as_bytes();
    let mut i = 0usize;
    let mut line = 1u32;
    let mut out = Vec::with_capacity(src.len() / 3);
    while i < b.len() {
        let c = b[i];
        if c == b'\n' {
            line += 1;
            i += 1;
            continue;
        }
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let start = line;
            i += 2;
            loop {
                if i + 1 >= b.len() {
                    return Err(PtxError::parse(start, "unterminated block comment"));
                }
                if b[i] == b'*' && b[i + 1] == b'/' {
                    i += 2;
                    break;
                }
                if b[i] == b'\n' {
                    line += 1;
                }
                i += 1;
            }
            continue;
        }
        if c == b'"' {
            let start = i + 1;
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\n' {
                    return Err(PtxError::parse(line, "unterminated string literal"));
                }
                i += 1;
            }
            if i >= b.len() {
                return Err(PtxError::parse(line, "unterminated string literal"));
            }
            let s = String::from_utf8_lossy(&b[start..i]).into_owned();
            i += 1;
            out.push(Token {
                tok: Tok::Str(s),
                line,
            });
            continue;
        }
        if c == b'.'
            && b.get(i + 1)
                .is_some_and(|&n| n.is_ascii_alphabetic() || n == b'_')
        {
            // Directive / type / modifier: a single dot segment (may contain `::`).
            let start = i + 1;
            i += 1;
            while i < b.len() {
                if is_ident_char(b[i]) {
                    i += 1;
                } else if b[i] == b':' && b.get(i + 1) == Some(&b':') {
                    i += 2;
                } else {
                    break;
                }
            }
            let s = std::str::from_utf8(&b[start..i]).unwrap_or("").to_string();
            out.push(Token {
                tok: Tok::Dir(s),
                line,
            });
            continue;
        }
        if is_ident_start(c) {
            let start = i;
            i += 1;
            loop {
                if i >= b.len() {
                    break;
                }
                if is_ident_char(b[i])
                    || (b[i] == b'.' && b.get(i + 1).is_some_and(|&n| is_ident_char(n)))
                {
                    i += 1;
                } else if b[i] == b':'
                    && b.get(i + 1) == Some(&b':')
                    && b.get(i + 2).is_some_and(|&n| is_ident_char(n))
                {
                    i += 2;
                } else {
                    break;
                }
            }
            let s = std::str::from_utf8(&b[start..i]).unwrap_or("").to_string();
            out.push(Token {
                tok: Tok::Ident(s),
                line,
            });
            continue;
        }
        if c.is_ascii_digit() {
            let (tok, len) = lex_number(&b[i..], line)?;
            i += len;
            out.push(Token { tok, line });
            continue;
        }
        match c {
            b',' | b';' | b':' | b'{' | b'}' | b'[' | b']' | b'(' | b')' | b'<' | b'>' | b'+'
            | b'-' | b'@' | b'!' | b'|' | b'=' | b'*' => {
                out.push(Token {
                    tok: Tok::Punct(c as char),
                    line,
                });
                i += 1;
            }
            _ => {
                return Err(PtxError::parse(
                    line,
                    format!("unexpected character `{}`", c as char),
                ))
            }
        }
    }
    Ok(out)
}

fn lex_number(b: &[u8], line: u32) -> Result<(Tok, usize), PtxError> {
    let bad = |msg: &str| PtxError::parse(line, msg.to_string());
    let take_while = |from: usize, f: &dyn Fn(u8) -> bool| -> usize {
        let mut j = from;
        while j < b.len() && f(b[j]) {
            j += 1;
        }
        j
    };
    let skip_suffix = |j: usize| -> usize {
        if j < b.len() && (b[j] == b'U' || b[j] == b'u') {
            j + 1
        } else {
            j
        }
    };
    if b[0] == b'0' && b.len() > 1 {
        let p = b[1];
        if p == b'f' || p == b'F' {
            let j = take_while(2, &|c| c.is_ascii_hexdigit());
            if j - 2 != 8 {
                return Err(bad("0f float literal needs exactly 8 hex digits"));
            }
            let s = std::str::from_utf8(&b[2..j]).map_err(|_| bad("bad literal"))?;
            let v = u32::from_str_radix(s, 16).map_err(|_| bad("bad 0f literal"))?;
            return Ok((Tok::F32Bits(v), j));
        }
        if p == b'd' || p == b'D' {
            let j = take_while(2, &|c| c.is_ascii_hexdigit());
            if j - 2 != 16 {
                return Err(bad("0d double literal needs exactly 16 hex digits"));
            }
            let s = std::str::from_utf8(&b[2..j]).map_err(|_| bad("bad literal"))?;
            let v = u64::from_str_radix(s, 16).map_err(|_| bad("bad 0d literal"))?;
            return Ok((Tok::F64Bits(v), j));
        }
        if p == b'x' || p == b'X' {
            let j = take_while(2, &|c| c.is_ascii_hexdigit());
            let s = std::str::from_utf8(&b[2..j]).map_err(|_| bad("bad literal"))?;
            let v = u64::from_str_radix(s, 16).map_err(|_| bad("bad hex literal"))?;
            return Ok((Tok::Int(v), skip_suffix(j)));
        }
        if p == b'b' || p == b'B' {
            let j = take_while(2, &|c| c == b'0' || c == b'1');
            let s = std::str::from_utf8(&b[2..j]).map_err(|_| bad("bad literal"))?;
            let v = u64::from_str_radix(s, 2).map_err(|_| bad("bad binary literal"))?;
            return Ok((Tok::Int(v), skip_suffix(j)));
        }
    }
    let mut j = take_while(0, &|c| c.is_ascii_digit());
    let mut is_float = false;
    if j < b.len() && b[j] == b'.' && b.get(j + 1).is_some_and(|c| c.is_ascii_digit()) {
        is_float = true;
        j = take_while(j + 1, &|c| c.is_ascii_digit());
    }
    if j < b.len() && (b[j] == b'e' || b[j] == b'E') {
        let mut k = j + 1;
        if k < b.len() && (b[k] == b'+' || b[k] == b'-') {
            k += 1;
        }
        if k < b.len() && b[k].is_ascii_digit() {
            is_float = true;
            j = take_while(k, &|c| c.is_ascii_digit());
        }
    }
    let s = std::str::from_utf8(&b[..j]).map_err(|_| bad("bad literal"))?;
    if is_float {
        let v: f64 = s.parse().map_err(|_| bad("bad float literal"))?;
        return Ok((Tok::Float(v), j));
    }
    let v = if s.len() > 1 && s.starts_with('0') {
        u64::from_str_radix(&s[1..], 8).map_err(|_| bad("bad octal literal"))?
    } else {
        s.parse::<u64>()
            .map_err(|_| bad("integer literal out of range"))?
    };
    Ok((Tok::Int(v), skip_suffix(j)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexes_opcodes_registers_and_literals() {
        let t = tokenize(
            "@!%p1 ld.global.nc.v4.f32 {%f1,%f2}, [%rd1+-16]; // c\n mov.f32 %f1, 0f3F800000;",
        )
        .unwrap();
        let toks: Vec<Tok> = t.iter().map(|t| t.tok.clone()).collect();
        assert_eq!(toks[0], Tok::Punct('@'));
        assert_eq!(toks[1], Tok::Punct('!'));
        assert_eq!(toks[2], Tok::Ident("%p1".into()));
        assert_eq!(toks[3], Tok::Ident("ld.global.nc.v4.f32".into()));
        assert!(toks.contains(&Tok::F32Bits(0x3F80_0000)));
        assert_eq!(t.last().unwrap().line, 2);
    }

    #[test]
    fn lexes_directives_and_scoped_modifiers() {
        let t =
            tokenize(".param .u64 .ptr.global.align 8 p; cp.async.ca.shared::cta.global").unwrap();
        let toks: Vec<Tok> = t.iter().map(|t| t.tok.clone()).collect();
        assert_eq!(toks[0], Tok::Dir("param".into()));
        assert_eq!(toks[2], Tok::Dir("ptr".into()));
        assert_eq!(toks[3], Tok::Dir("global".into()));
        assert_eq!(toks[8], Tok::Ident("cp.async.ca.shared::cta.global".into()));
    }

    #[test]
    fn bad_literal_is_error_not_panic() {
        assert!(matches!(
            tokenize("mov.f32 %f1, 0f3F80;"),
            Err(PtxError::Parse { line: 1, .. })
        ));
        assert!(matches!(tokenize("/* open"), Err(PtxError::Parse { .. })));
        assert!(matches!(tokenize("a # b"), Err(PtxError::Parse { .. })));
    }
}
