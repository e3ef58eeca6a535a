//! Recognising a backend server's greeting (the first response on a new connection).
//!
//! Used by the backend pool (health checks, and every session connect, so that a server
//! that greets with a refusal is failed over) and nowhere else.

use crate::lex::starts_with_ci;
use crate::Protocol;

/// What the bytes received so far say about the greeting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Greeting {
    /// No complete greeting yet; read more (unless `buf.len()` passed the caller's bound).
    Incomplete,
    /// A positive greeting (`* OK`, `* PREAUTH`, `+OK`, `220`, ManageSieve's capability
    /// lines and `OK`) of `len` bytes, CRLF included.
    Ok {
        /// Length of the greeting in bytes.
        len: usize,
    },
    /// The server refused service (`* BYE`, `-ERR`, `421`/`554`, `BYE`/`NO`...) in `len` bytes.
    Refused {
        /// Length of the refusal in bytes.
        len: usize,
    },
    /// The bytes are not a greeting of this protocol (wrong service on that port?).
    Invalid,
}

/// Longest greeting accepted; real servers send well under 1 KiB.
pub const MAX_GREETING: usize = 8192;

/// Parses the start of a backend connection for `protocol`'s greeting.
pub fn parse_greeting(protocol: Protocol, buf: &[u8]) -> Greeting {
    match protocol {
        Protocol::Imap | Protocol::Pop3 => {
            let Some(end) = line_end(buf) else {
                return incomplete(buf);
            };
            let line = &buf[..end];
            let ok = match protocol {
                Protocol::Imap => {
                    if starts_with_ci(line, b"* OK") || starts_with_ci(line, b"* PREAUTH") {
                        Some(true)
                    } else if starts_with_ci(line, b"* BYE") {
                        Some(false)
                    } else {
                        None
                    }
                }
                _ => {
                    if starts_with_ci(line, b"+OK") {
                        Some(true)
                    } else if starts_with_ci(line, b"-ERR") {
                        Some(false)
                    } else {
                        None
                    }
                }
            };
            match ok {
                Some(true) => Greeting::Ok { len: end },
                Some(false) => Greeting::Refused { len: end },
                None => Greeting::Invalid,
            }
        }
        Protocol::Sieve => sieve(buf),
        Protocol::Smtp => {
            // Multi-line replies: "220-..." continuation lines, then "220 ..." (or "220\r\n").
            let mut pos = 0;
            loop {
                let Some(rel_end) = line_end(&buf[pos..]) else {
                    return incomplete(buf);
                };
                let line = &buf[pos..pos + rel_end];
                if line.len() < 5 || !line[..3].iter().all(u8::is_ascii_digit) {
                    return Greeting::Invalid;
                }
                let code = &line[..3];
                pos += rel_end;
                match line[3] {
                    b'-' => continue,
                    b' ' | b'\r' | b'\n' => {
                        return if code == b"220" {
                            Greeting::Ok { len: pos }
                        } else if code[0] == b'4' || code[0] == b'5' {
                            Greeting::Refused { len: pos }
                        } else {
                            Greeting::Invalid
                        };
                    }
                    _ => return Greeting::Invalid,
                }
            }
        }
    }
}

/// RFC 5804: capability lines (each starting with a quoted string), then `OK`; `BYE` or
/// `NO` instead is a refusal. A literal in the greeting is not something a server sends.
fn sieve(buf: &[u8]) -> Greeting {
    let mut pos = 0;
    loop {
        let Some(rel) = line_end(&buf[pos..]) else {
            return incomplete(buf);
        };
        let line = &buf[pos..pos + rel];
        pos += rel;
        if pos > MAX_GREETING {
            return Greeting::Invalid;
        }
        if line.starts_with(b"\"") {
            continue;
        }
        return match sieve_status(line) {
            Some(true) => Greeting::Ok { len: pos },
            Some(false) => Greeting::Refused { len: pos },
            None => Greeting::Invalid,
        };
    }
}

/// True for a ManageSieve `OK` line (a go-ahead, a greeting's end).
pub fn is_sieve_ok(line: &[u8]) -> bool {
    sieve_status(line) == Some(true)
}

/// `Some(true)` for a ManageSieve `OK` line, `Some(false)` for `NO`/`BYE`, else None.
pub(crate) fn sieve_status(line: &[u8]) -> Option<bool> {
    let word_end = line
        .iter()
        .position(|&c| matches!(c, b' ' | b'\r' | b'\n'))
        .unwrap_or(line.len());
    let word = &line[..word_end];
    if word.eq_ignore_ascii_case(b"OK") {
        Some(true)
    } else if word.eq_ignore_ascii_case(b"NO") || word.eq_ignore_ascii_case(b"BYE") {
        Some(false)
    } else {
        None
    }
}

/// Offset just past the first LF, if any.
fn line_end(buf: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', buf).map(|i| i + 1)
}

fn incomplete(buf: &[u8]) -> Greeting {
    if buf.len() > MAX_GREETING {
        Greeting::Invalid
    } else {
        Greeting::Incomplete
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imap() {
        let g = b"* OK [CAPABILITY IMAP4rev1] Dovecot ready.\r\n";
        assert_eq!(
            parse_greeting(Protocol::Imap, g),
            Greeting::Ok { len: g.len() }
        );
        assert_eq!(
            parse_greeting(Protocol::Imap, &g[..10]),
            Greeting::Incomplete
        );
        assert_eq!(
            parse_greeting(Protocol::Imap, b"* BYE go away\r\n"),
            Greeting::Refused { len: 15 }
        );
        assert_eq!(
            parse_greeting(Protocol::Imap, b"+OK pop\r\n"),
            Greeting::Invalid
        );
    }

    #[test]
    fn pop3() {
        assert_eq!(
            parse_greeting(Protocol::Pop3, b"+OK ready\r\nextra"),
            Greeting::Ok { len: 11 }
        );
        assert_eq!(
            parse_greeting(Protocol::Pop3, b"-ERR busy\r\n"),
            Greeting::Refused { len: 11 }
        );
    }

    #[test]
    fn smtp_multiline() {
        let g = b"220-mail.test ESMTP\r\n220-more\r\n220 ready\r\n";
        assert_eq!(
            parse_greeting(Protocol::Smtp, g),
            Greeting::Ok { len: g.len() }
        );
        assert_eq!(
            parse_greeting(Protocol::Smtp, &g[..25]),
            Greeting::Incomplete
        );
        assert_eq!(
            parse_greeting(Protocol::Smtp, b"421 4.3.2 busy\r\n"),
            Greeting::Refused { len: 16 }
        );
        assert_eq!(
            parse_greeting(Protocol::Smtp, b"* OK imap\r\n"),
            Greeting::Invalid
        );
    }

    #[test]
    fn sieve_capability_lines_then_ok() {
        let g = b"\"IMPLEMENTATION\" \"Dovecot Pigeonhole\"\r\n\"SASL\" \"PLAIN\"\r\n\"STARTTLS\"\r\nOK \"Dovecot ready.\"\r\nrest";
        assert_eq!(
            parse_greeting(Protocol::Sieve, g),
            Greeting::Ok { len: g.len() - 4 }
        );
        assert_eq!(
            parse_greeting(Protocol::Sieve, &g[..40]),
            Greeting::Incomplete
        );
        assert_eq!(
            parse_greeting(Protocol::Sieve, b"BYE (TRYLATER) \"busy\"\r\n"),
            Greeting::Refused { len: 23 }
        );
        assert_eq!(
            parse_greeting(Protocol::Sieve, b"ok\n"),
            Greeting::Ok { len: 3 }
        );
        assert_eq!(
            parse_greeting(Protocol::Sieve, b"* OK imap\r\n"),
            Greeting::Invalid
        );
        assert_eq!(
            parse_greeting(Protocol::Sieve, b"OKAY\r\n"),
            Greeting::Invalid
        );
        let junk = b"\"x\"\r\n".repeat(MAX_GREETING);
        assert_eq!(parse_greeting(Protocol::Sieve, &junk), Greeting::Invalid);
    }

    #[test]
    fn unbounded_garbage_is_invalid() {
        let junk = vec![b'x'; MAX_GREETING + 1];
        assert_eq!(parse_greeting(Protocol::Imap, &junk), Greeting::Invalid);
        assert_eq!(parse_greeting(Protocol::Smtp, &junk), Greeting::Invalid);
    }
}
