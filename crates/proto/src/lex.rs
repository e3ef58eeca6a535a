//! Every lexical helper of this crate, in one place: line splitting with a hard length
//! limit, words and keywords, IMAP tags and literal announcements, case-insensitive
//! matching, decimal numbers.
//!
//! A line ends at LF. A CR just before the LF belongs to the terminator; a bare LF is
//! accepted as a line end too (many clients and test tools send it, and RFC 9051 §2.2 /
//! RFC 5321 §2.3.8 leave servers room for that leniency). Every parser in this crate uses
//! these helpers, so the STARTTLS decision, the login guard and the normal dispatch can never
//! disagree on where a command ends or how long a literal is (rule T8: no parser
//! differential). A bare CR inside a line is not a line end: it stays in the content, where
//! it makes the command invalid.
//!
//! Numbers are parsed with checked arithmetic: a decimal that does not fit in 64 bits is
//! reported as such ([`Literal::len`] is `None`), never wrapped or silently capped.

/// Result of looking for the first line in a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineSplit {
    /// A complete line: `content` bytes of content, `len` bytes in all (terminator included).
    Line {
        /// Bytes of content, terminator excluded.
        content: usize,
        /// Bytes taken by the line, terminator included.
        len: usize,
    },
    /// No line end yet and the buffer is within the limit: read more.
    Incomplete,
    /// No line end within `max` bytes: the line is over-long.
    TooLong,
}

/// Finds the first line of `buf`; a line (terminator included) may be at most `max` bytes.
///
/// Only the first `max` bytes are searched, so the cost is bounded whatever the caller buffered.
pub fn split_line(buf: &[u8], max: usize) -> LineSplit {
    let window = &buf[..buf.len().min(max)];
    match memchr::memchr(b'\n', window) {
        Some(i) => LineSplit::Line {
            content: content_len(&window[..=i]),
            len: i + 1,
        },
        None if !buf.is_empty() && buf.len() >= max => LineSplit::TooLong,
        None => LineSplit::Incomplete,
    }
}

/// Content length of a complete line `line` (terminator included): strips LF and one CR.
pub fn content_len(line: &[u8]) -> usize {
    let mut n = line.len();
    if n > 0 && line[n - 1] == b'\n' {
        n -= 1;
        if n > 0 && line[n - 1] == b'\r' {
            n -= 1;
        }
    }
    n
}

/// `line` without its terminator (LF and one CR before it).
pub fn strip_eol(line: &[u8]) -> &[u8] {
    &line[..content_len(line)]
}

/// Splits at the first SP: the word before it and, when there is a SP, everything after it.
pub fn split_word(s: &[u8]) -> (&[u8], Option<&[u8]>) {
    match memchr::memchr(b' ', s) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    }
}

/// The first word (up to SP/HTAB, leading blanks skipped) and the rest after one separator.
pub fn first_word(s: &[u8]) -> (&[u8], Option<&[u8]>) {
    let s = trim_leading_blanks(s);
    match s.iter().position(|&c| c == b' ' || c == b'\t') {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    }
}

/// The command keyword at the start of `s`: after any leading SP, HTAB or control bytes,
/// the longest run of ASCII letters and digits. Returns the keyword and what follows it.
///
/// Deliberately wider than any server's own tokenizer (`XCLIENT\x0cADDR=` yields `XCLIENT`):
/// the login guard refuses by keyword, and reading a keyword where a server would not only
/// ever refuses more.
pub fn keyword(s: &[u8]) -> (&[u8], &[u8]) {
    let start = s.iter().position(|&c| c > b' ').unwrap_or(s.len());
    let s = &s[start..];
    let end = s
        .iter()
        .position(|c| !c.is_ascii_alphanumeric())
        .unwrap_or(s.len());
    (&s[..end], &s[end..])
}

/// `s` without leading SP / HTAB.
pub fn trim_leading_blanks(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|&c| c != b' ' && c != b'\t')
        .unwrap_or(s.len());
    &s[start..]
}

/// `s` without leading and trailing SP / HTAB.
pub fn trim_blanks(s: &[u8]) -> &[u8] {
    let s = trim_leading_blanks(s);
    let end = s
        .iter()
        .rposition(|&c| c != b' ' && c != b'\t')
        .map_or(0, |i| i + 1);
    &s[..end]
}

/// True when `tag` is a valid IMAP tag (RFC 9051: `1*<any ASTRING-CHAR except "+">`).
///
/// A valid tag holds no SP, CTL, CR or LF, so echoing it in a reply cannot inject a line.
pub fn is_imap_tag(tag: &[u8]) -> bool {
    !tag.is_empty()
        && tag.iter().all(|&c| {
            c > 0x20
                && c < 0x7f
                && !matches!(c, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b'+')
        })
}

/// Longest client tag postern echoes in its own replies; a longer (or invalid) tag is
/// answered untagged (`*`), so a client cannot make postern write long lines.
pub const MAX_ECHO_TAG: usize = 64;

/// The tag postern writes when answering a command whose tag is `tag`: the tag itself when
/// it is a valid IMAP tag of at most [`MAX_ECHO_TAG`] bytes, else `*`.
pub fn echo_tag(tag: &[u8]) -> &str {
    if tag.len() <= MAX_ECHO_TAG && is_imap_tag(tag) {
        // A valid tag is ASCII by construction.
        std::str::from_utf8(tag).unwrap_or("*")
    } else {
        "*"
    }
}

/// An IMAP literal announced at the end of a line (`{n}`, `{n+}`, also after `~` for literal8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Literal {
    /// Announced length in bytes; `None` when the number does not fit in 64 bits.
    pub len: Option<u64>,
    /// True for a synchronizing literal (`{n}`): the client waits for `+` before sending it.
    pub sync: bool,
    /// True when the `{` starts a token (at the start of the content, or after SP, `(` or a
    /// literal8 `~` that itself starts a token), where every IMAP parser reads a literal.
    /// `x{5+}` is not delimited: a server may well read it as an atom.
    pub delimited: bool,
}

/// The literal announced at the end of `content` (terminator excluded), if any: `{`, at
/// least one decimal digit, an optional `+`, `}`. `{n-}` is not a literal: RFC 7888's
/// LITERAL- uses the `{n+}` syntax with a size limit.
pub fn trailing_literal(content: &[u8]) -> Option<Literal> {
    let body = content.strip_suffix(b"}")?;
    let open = memchr::memrchr(b'{', body)?;
    let spec = &body[open + 1..];
    let (digits, sync) = match spec.strip_suffix(b"+") {
        Some(d) => (d, false),
        None => (spec, true),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let before = &content[..open];
    let before = match before.strip_suffix(b"~") {
        Some(b) => b,
        None => before,
    };
    let delimited = matches!(before.last(), None | Some(b' ' | b'('));
    Some(Literal {
        len: parse_u64(digits),
        sync,
        delimited,
    })
}

/// A decimal number of ASCII digits, or None (empty, another byte, or over 64 bits).
pub fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// ASCII case-insensitive prefix test.
pub fn starts_with_ci(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// `s` after `prefix` (ASCII case-insensitive), if it starts with it.
pub fn strip_prefix_ci<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    starts_with_ci(s, prefix).then(|| &s[prefix.len()..])
}

/// ASCII case-insensitive search for `needle` in `hay`.
pub fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || hay
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_and_bare_lf_end_a_line() {
        assert_eq!(
            split_line(b"a NOOP\r\nb", 100),
            LineSplit::Line { content: 6, len: 8 }
        );
        assert_eq!(
            split_line(b"a NOOP\nb", 100),
            LineSplit::Line { content: 6, len: 7 }
        );
        assert_eq!(
            split_line(b"\n", 100),
            LineSplit::Line { content: 0, len: 1 }
        );
        assert_eq!(split_line(b"a NOOP\r", 100), LineSplit::Incomplete);
        // A bare CR is content, not a line end.
        assert_eq!(
            split_line(b"a\rb\r\n", 100),
            LineSplit::Line { content: 3, len: 5 }
        );
    }

    #[test]
    fn limit_counts_the_terminator() {
        assert_eq!(
            split_line(b"abc\r\n", 5),
            LineSplit::Line { content: 3, len: 5 }
        );
        assert_eq!(split_line(b"abcd\r\n", 5), LineSplit::TooLong);
        assert_eq!(split_line(b"abcd", 5), LineSplit::Incomplete);
        assert_eq!(split_line(b"abcde", 5), LineSplit::TooLong);
        // An empty buffer is never over-long, whatever the limit.
        assert_eq!(split_line(b"", 0), LineSplit::Incomplete);
        assert_eq!(split_line(b"a", 0), LineSplit::TooLong);
    }

    fn lit(len: u64, sync: bool) -> Option<Literal> {
        Some(Literal {
            len: Some(len),
            sync,
            delimited: true,
        })
    }

    #[test]
    fn literals() {
        assert_eq!(trailing_literal(b"a LOGIN {5}"), lit(5, true));
        assert_eq!(trailing_literal(b"a LOGIN {5+}"), lit(5, false));
        assert_eq!(trailing_literal(b"a APPEND x ~{0}"), lit(0, true));
        assert_eq!(trailing_literal(b"{7}"), lit(7, true));
        assert_eq!(trailing_literal(b"a ID (\"x\" {0012}"), lit(12, true));
        // Checked arithmetic: too big to represent is said so, not wrapped or capped.
        let huge = trailing_literal(b"a {99999999999999999999999}").unwrap();
        assert_eq!(huge.len, None);
        assert_eq!(
            trailing_literal(b"a {18446744073709551615}").unwrap().len,
            Some(u64::MAX)
        );
        assert_eq!(
            trailing_literal(b"a {18446744073709551616}").unwrap().len,
            None
        );
        // Not a token of its own: reported, but not delimited.
        assert!(!trailing_literal(b"a x{5+}").unwrap().delimited);
        assert!(!trailing_literal(b"a x~{5}").unwrap().delimited);
        for none in [
            &b"a {}"[..],
            b"a {+}",
            b"a {1x}",
            b"a {1} ",
            b"a {5-}",
            b"a {-5}",
            b"a {5++}",
            b"a { 5}",
        ] {
            assert_eq!(trailing_literal(none), None, "{none:?}");
        }
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64(b"0"), Some(0));
        assert_eq!(parse_u64(b"0042"), Some(42));
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"-1"), None);
        assert_eq!(parse_u64(b"1 "), None);
    }

    #[test]
    fn tags() {
        assert!(is_imap_tag(b"a001"));
        assert!(is_imap_tag(b"x]y"));
        for bad in [
            &b""[..],
            b"a+",
            b"a*",
            b"a{",
            b"a\"",
            b"a\0",
            b"a b",
            b"\xc3\xa9",
        ] {
            assert!(!is_imap_tag(bad), "{bad:?}");
        }
        assert_eq!(echo_tag(b"a1"), "a1");
        assert_eq!(echo_tag(b"a\"1"), "*");
        assert_eq!(echo_tag(&[b'a'; MAX_ECHO_TAG]), "a".repeat(MAX_ECHO_TAG));
        assert_eq!(echo_tag(&[b'a'; MAX_ECHO_TAG + 1]), "*");
    }

    #[test]
    fn keywords() {
        assert_eq!(
            keyword(b"XCLIENT ADDR=1"),
            (&b"XCLIENT"[..], &b" ADDR=1"[..])
        );
        assert_eq!(
            keyword(b"  \txclient\x0cADDR"),
            (&b"xclient"[..], &b"\x0cADDR"[..])
        );
        assert_eq!(keyword(b"\0XFORWARD"), (&b"XFORWARD"[..], &b""[..]));
        assert_eq!(keyword(b"ID(\"a\")"), (&b"ID"[..], &b"(\"a\")"[..]));
        assert_eq!(keyword(b""), (&b""[..], &b""[..]));
        assert_eq!(keyword(b"-X"), (&b""[..], &b"-X"[..]));
    }

    #[test]
    fn helpers() {
        assert_eq!(split_word(b"a NOOP x"), (&b"a"[..], Some(&b"NOOP x"[..])));
        assert_eq!(split_word(b"NOOP"), (&b"NOOP"[..], None));
        assert_eq!(first_word(b"  a\tb c"), (&b"a"[..], Some(&b"b c"[..])));
        assert!(contains_ci(b"ID (\"X-Originating-IP\"", b"x-originating-"));
        assert!(starts_with_ci(b"* bye now", b"* BYE"));
        assert!(!starts_with_ci(b"* BY", b"* BYE"));
        assert_eq!(
            strip_prefix_ci(b"Postern-ID OK", b"postern-id"),
            Some(&b" OK"[..])
        );
        assert_eq!(trim_blanks(b"  a b \t"), b"a b");
        assert_eq!(trim_blanks(b"   "), b"");
        assert_eq!(content_len(b"ab\r\n"), 2);
        assert_eq!(content_len(b"ab\n"), 2);
        assert_eq!(strip_eol(b"ab\r\n"), b"ab");
    }
}
