//! IMAP strings decoded the way IMAP servers decode them, over a complete command whose
//! literals are inline (`{n}` or `{n+}`, a line end, then n bytes).
//!
//! - Quoted strings: `"` ... `"`; a backslash escapes the byte after it, whatever it is
//!   (`"x\-originating-ip"` is `x-originating-ip`, as Dovecot's parser unescapes it; RFC 9051
//!   only defines `\"` and `\\`, and decoding the others too only ever reveals more). A CR or
//!   LF inside is an error.
//! - Literals: `{` digits `}` or `{` digits `+}`, then CRLF or a bare LF, then exactly that
//!   many bytes. `~{n}` (literal8), `{n-}` and a length past the buffer are errors.
//! - Atoms: a run of letters, digits and `-_.:/@+!#$&'=?^|[]` (the bytes real field names
//!   and user names use); anything unusual ends the atom and is then an error to the caller.
//!
//! The decoder is strict where servers differ: every input it cannot decode with certainty is
//! an error, and the login guard refuses what it cannot decode.

use crate::lex::parse_u64;

/// Why a string could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// The command ended where a string was expected, or inside one.
    Missing,
    /// A quoted string runs into a line end, or has no closing quote.
    Unterminated,
    /// A literal announcement that is not `{n}` / `{n+}` + line end, or too long for the
    /// bytes given.
    BadLiteral,
    /// A byte that starts no string (a list, a literal8, a control byte...).
    NotAString,
}

impl DecodeError {
    /// A short description for a refusal text.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DecodeError::Missing => "a string is missing",
            DecodeError::Unterminated => "a quoted string is not terminated",
            DecodeError::BadLiteral => "a literal is malformed",
            DecodeError::NotAString => "an argument is not a string",
        }
    }
}

/// A string item: its decoded bytes, or NIL.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NString {
    Str(Vec<u8>),
    Nil,
}

/// A read position in a command.
#[derive(Debug)]
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    /// The byte at the read position.
    pub(crate) fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    pub(crate) fn bump(&mut self) {
        self.pos += 1;
    }

    /// Skips SP and HTAB; returns how many.
    pub(crate) fn skip_blanks(&mut self) -> usize {
        let start = self.pos;
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// True when only a line end (CRLF, a bare LF) or nothing is left.
    pub(crate) fn at_eol(&self) -> bool {
        matches!(&self.buf[self.pos..], b"" | b"\n" | b"\r\n")
    }

    /// An astring: atom, quoted string or literal.
    pub(crate) fn astring(&mut self) -> Result<Vec<u8>, DecodeError> {
        match self.peek() {
            None | Some(b'\r' | b'\n') => Err(DecodeError::Missing),
            Some(b'"') => self.quoted(),
            Some(b'{') => self.literal(),
            Some(c) if is_atom_char(c) => Ok(self.atom().to_vec()),
            Some(_) => Err(DecodeError::NotAString),
        }
    }

    /// An nstring where atoms are accepted too (`NIL` in any case is NIL).
    pub(crate) fn nstring(&mut self) -> Result<NString, DecodeError> {
        match self.peek() {
            Some(c) if is_atom_char(c) => {
                let atom = self.atom();
                Ok(if atom.eq_ignore_ascii_case(b"NIL") {
                    NString::Nil
                } else {
                    NString::Str(atom.to_vec())
                })
            }
            _ => self.astring().map(NString::Str),
        }
    }

    fn atom(&mut self) -> &'a [u8] {
        let start = self.pos;
        while self.peek().is_some_and(is_atom_char) {
            self.pos += 1;
        }
        &self.buf[start..self.pos]
    }

    fn quoted(&mut self) -> Result<Vec<u8>, DecodeError> {
        self.pos += 1; // the opening quote
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None | Some(b'\r' | b'\n') => return Err(DecodeError::Unterminated),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    match self.peek() {
                        None | Some(b'\r' | b'\n') => return Err(DecodeError::Unterminated),
                        Some(c) => out.push(c),
                    }
                    self.pos += 1;
                }
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    fn literal(&mut self) -> Result<Vec<u8>, DecodeError> {
        let rest = &self.buf[self.pos + 1..];
        let close = memchr::memchr(b'}', rest).ok_or(DecodeError::BadLiteral)?;
        let spec = &rest[..close];
        let digits = spec.strip_suffix(b"+").unwrap_or(spec);
        let len = parse_u64(digits)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or(DecodeError::BadLiteral)?;
        let mut at = self.pos + 1 + close + 1;
        if self.buf.get(at) == Some(&b'\r') {
            at += 1;
        }
        if self.buf.get(at) != Some(&b'\n') {
            return Err(DecodeError::BadLiteral);
        }
        at += 1;
        let end = at.checked_add(len).ok_or(DecodeError::BadLiteral)?;
        let data = self.buf.get(at..end).ok_or(DecodeError::BadLiteral)?;
        self.pos = end;
        Ok(data.to_vec())
    }
}

/// Bytes an atom is made of here: letters, digits and the punctuation names use.
fn is_atom_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-_.:/@+!#$&'=?^|[]".contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn astring(s: &[u8]) -> Result<Vec<u8>, DecodeError> {
        Cursor::new(s).astring()
    }

    #[test]
    fn quoted_strings_unescape_any_byte() {
        assert_eq!(
            astring(b"\"x\\-originating-ip\""),
            Ok(b"x-originating-ip".to_vec())
        );
        assert_eq!(astring(b"\"a\\\"b\\\\\""), Ok(b"a\"b\\".to_vec()));
        assert_eq!(astring(b"\"\xc3\xa9\""), Ok("é".as_bytes().to_vec()));
        assert_eq!(astring(b"\"open"), Err(DecodeError::Unterminated));
        assert_eq!(astring(b"\"a\r\n\""), Err(DecodeError::Unterminated));
        assert_eq!(astring(b"\"a\\"), Err(DecodeError::Unterminated));
    }

    #[test]
    fn literals_of_every_form() {
        assert_eq!(astring(b"{3}\r\nabc"), Ok(b"abc".to_vec()));
        assert_eq!(astring(b"{3+}\nabc)"), Ok(b"abc".to_vec()));
        assert_eq!(astring(b"{003}\r\na\r\n"), Ok(b"a\r\n".to_vec()));
        assert_eq!(astring(b"{0}\r\n"), Ok(Vec::new()));
        for bad in [
            &b"{3}\r\nab"[..],
            b"{3} abc",
            b"{3-}\r\nabc",
            b"{}\r\n",
            b"{3}\r\r\nabc",
            b"{99999999999999999999}\r\n",
        ] {
            assert_eq!(astring(bad), Err(DecodeError::BadLiteral), "{bad:?}");
        }
        assert_eq!(astring(b"~{3}\r\nabc"), Err(DecodeError::NotAString));
    }

    #[test]
    fn atoms_nil_and_positions() {
        let mut c = Cursor::new(b"  nil x-forward-a \"v\"\r\n");
        assert_eq!(c.skip_blanks(), 2);
        assert_eq!(c.nstring(), Ok(NString::Nil));
        c.skip_blanks();
        assert_eq!(c.nstring(), Ok(NString::Str(b"x-forward-a".to_vec())));
        c.skip_blanks();
        assert_eq!(c.nstring(), Ok(NString::Str(b"v".to_vec())));
        assert!(c.at_eol());
        assert_eq!(astring(b"(x)"), Err(DecodeError::NotAString));
        assert_eq!(astring(b""), Err(DecodeError::Missing));
    }
}
