//! Line splitting with a hard length limit, and the small lexical helpers every state
//! machine of this crate shares.
//!
//! A line ends at LF. A CR just before the LF belongs to the terminator; a bare LF is
//! accepted as a line end too (many clients and test tools send it, and RFC 9051 §2.2 /
//! RFC 5321 §2.3.8 leave servers room for that leniency). Every parser in this crate uses
//! [`split_line`], so the STARTTLS decision and the normal dispatch can never disagree on
//! where a command ends (rule T8: no parser differential). A bare CR inside a line is not a
//! line end: it stays in the content, where it makes the command invalid.

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
        Some(i) => {
            let content = if i > 0 && window[i - 1] == b'\r' {
                i - 1
            } else {
                i
            };
            LineSplit::Line {
                content,
                len: i + 1,
            }
        }
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

/// Splits at the first SP: the word before it and, when there is a SP, everything after it.
pub fn split_word(s: &[u8]) -> (&[u8], Option<&[u8]>) {
    match memchr::memchr(b' ', s) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    }
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

/// An IMAP literal announced at the end of a line (`{n}`, `{n+}`, also after `~` for literal8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Literal {
    /// Announced length in bytes (`u64::MAX` when the number overflows).
    pub len: u64,
    /// True for a synchronizing literal (`{n}`): the client waits for `+` before sending it.
    pub sync: bool,
}

/// The literal announced at the end of `content` (terminator excluded), if any.
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
    let len = digits
        .iter()
        .try_fold(0u64, |acc, &d| {
            acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .unwrap_or(u64::MAX);
    Some(Literal { len, sync })
}

/// ASCII case-insensitive search for `needle` in `hay`.
pub fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || hay
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

/// `s` without leading and trailing SP / HTAB.
pub fn trim_blanks(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|&c| c != b' ' && c != b'\t')
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|&c| c != b' ' && c != b'\t')
        .map_or(start, |i| i + 1);
    &s[start..end]
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

    #[test]
    fn literals() {
        assert_eq!(
            trailing_literal(b"a LOGIN {5}"),
            Some(Literal { len: 5, sync: true })
        );
        assert_eq!(
            trailing_literal(b"a LOGIN {5+}"),
            Some(Literal {
                len: 5,
                sync: false
            })
        );
        assert_eq!(
            trailing_literal(b"a APPEND x ~{0}"),
            Some(Literal { len: 0, sync: true })
        );
        assert_eq!(
            trailing_literal(b"a {99999999999999999999999}").map(|l| l.len),
            Some(u64::MAX)
        );
        assert_eq!(trailing_literal(b"a {}"), None);
        assert_eq!(trailing_literal(b"a {+}"), None);
        assert_eq!(trailing_literal(b"a {1x}"), None);
        assert_eq!(trailing_literal(b"a {1} "), None);
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
    }

    #[test]
    fn helpers() {
        assert_eq!(split_word(b"a NOOP x"), (&b"a"[..], Some(&b"NOOP x"[..])));
        assert_eq!(split_word(b"NOOP"), (&b"NOOP"[..], None));
        assert!(contains_ci(b"ID (\"X-Originating-IP\"", b"x-originating-"));
        assert_eq!(trim_blanks(b"  a b \t"), b"a b");
        assert_eq!(trim_blanks(b"   "), b"");
        assert_eq!(content_len(b"ab\r\n"), 2);
        assert_eq!(content_len(b"ab\n"), 2);
    }
}
