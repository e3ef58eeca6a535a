//! The mail protocols postern fronts, and the fixed wire strings of each.

use std::fmt;

/// A mail protocol spoken on a listener and by its backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// IMAP4rev1 / IMAP4rev2 (RFC 3501, RFC 9051).
    Imap,
    /// POP3 (RFC 1939, RFC 2449).
    Pop3,
    /// SMTP message submission (RFC 6409).
    Smtp,
    /// ManageSieve (RFC 5804): Sieve script management, port 4190.
    Sieve,
}

impl Protocol {
    /// Every protocol, in the order the docs list them.
    pub const ALL: [Protocol; 4] = [
        Protocol::Imap,
        Protocol::Pop3,
        Protocol::Smtp,
        Protocol::Sieve,
    ];

    /// The config spelling (`imap`, `pop3`, `smtp`, `sieve`), also used as a metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::Imap => "imap",
            Protocol::Pop3 => "pop3",
            Protocol::Smtp => "smtp",
            Protocol::Sieve => "sieve",
        }
    }

    /// Parses the config spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "imap" => Some(Protocol::Imap),
            "pop3" => Some(Protocol::Pop3),
            "smtp" => Some(Protocol::Smtp),
            "sieve" => Some(Protocol::Sieve),
            _ => None,
        }
    }

    /// The ALPN protocol identifier (IANA registry: `imap`, `pop3`, `smtp`, `managesieve`).
    pub const fn alpn(self) -> &'static [u8] {
        match self {
            Protocol::Sieve => b"managesieve",
            p => p.as_str().as_bytes(),
        }
    }

    /// The command that starts TLS: `STLS` for POP3, `STARTTLS` for the others.
    pub const fn starttls_command(self) -> &'static str {
        match self {
            Protocol::Pop3 => "STLS",
            _ => "STARTTLS",
        }
    }

    /// postern's goodbye when it ends a session itself before login, saying `text`: `* BYE`,
    /// `-ERR`, `421 4.7.0 <host> … , closing connection` (SMTP always says it closes), `BYE "…"`.
    /// `say_closing` adds ", closing connection" in the other protocols too.
    pub fn closing_goodbye(self, host: &str, text: &str, say_closing: bool) -> Vec<u8> {
        let closing = if say_closing {
            ", closing connection"
        } else {
            ""
        };
        match self {
            Protocol::Imap => format!("* BYE {text}{closing}\r\n"),
            Protocol::Pop3 => format!("-ERR {text}{closing}\r\n"),
            Protocol::Smtp => format!("421 4.7.0 {host} {text}, closing connection\r\n"),
            Protocol::Sieve => format!("BYE \"{text}{closing}\"\r\n"),
        }
        .into_bytes()
    }

    /// The goodbye sent when no backend server can be reached (README.md).
    pub const fn unavailable_goodbye(self) -> &'static [u8] {
        match self {
            Protocol::Imap => {
                b"* BYE [UNAVAILABLE] no mail server is available, try again later\r\n"
            }
            Protocol::Pop3 => b"-ERR [SYS/TEMP] no mail server is available, try again later\r\n",
            Protocol::Smtp => b"421 4.3.0 no mail server is available, try again later\r\n",
            Protocol::Sieve => {
                b"BYE (TRYLATER) \"no mail server is available, try again later\"\r\n"
            }
        }
    }

    /// The goodbye sent to a session still open when the shutdown grace ends.
    pub const fn shutdown_goodbye(self) -> &'static [u8] {
        match self {
            Protocol::Imap => b"* BYE [UNAVAILABLE] shutting down\r\n",
            Protocol::Pop3 => b"-ERR [SYS/TEMP] shutting down\r\n",
            Protocol::Smtp => b"421 4.3.2 shutting down\r\n",
            Protocol::Sieve => b"BYE (TRYLATER) \"shutting down\"\r\n",
        }
    }

    /// The goodbye sent when the gateway refuses a connection over a limit.
    pub const fn busy_goodbye(self) -> &'static [u8] {
        match self {
            Protocol::Imap => b"* BYE [UNAVAILABLE] too many connections, try again later\r\n",
            Protocol::Pop3 => b"-ERR [SYS/TEMP] too many connections, try again later\r\n",
            Protocol::Smtp => b"421 4.7.0 too many connections, try again later\r\n",
            Protocol::Sieve => b"BYE (TRYLATER) \"too many connections, try again later\"\r\n",
        }
    }
}

impl Protocol {
    /// The goodbye sent to a session that has not logged in within `limits.prelogin_timeout`.
    pub const fn prelogin_goodbye(self) -> &'static [u8] {
        match self {
            Protocol::Imap => b"* BYE Autologout; timeout waiting for login\r\n",
            Protocol::Pop3 => b"-ERR Timeout waiting for login, closing connection\r\n",
            Protocol::Smtp => b"421 4.4.2 Timeout waiting for login, closing connection\r\n",
            Protocol::Sieve => b"BYE \"Timeout waiting for login, closing connection\"\r\n",
        }
    }

    /// The refusal sent on a STARTTLS listener, before the close, to a connection refused
    /// before it became a session (a limit, `allow`/`deny`, the PROXY protocol).
    /// Implicit-TLS listeners close such connections without a word.
    pub const fn refused_goodbye(self) -> &'static [u8] {
        match self {
            Protocol::Imap => b"* BYE [UNAVAILABLE] connection refused\r\n",
            Protocol::Pop3 => b"-ERR [IN-USE] connection refused\r\n",
            Protocol::Smtp => b"421 4.7.0 connection refused\r\n",
            Protocol::Sieve => b"BYE \"connection refused\"\r\n",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip() {
        for p in Protocol::ALL {
            assert_eq!(Protocol::parse(p.as_str()), Some(p));
            assert!(p.busy_goodbye().ends_with(b"\r\n"));
            assert!(p.unavailable_goodbye().ends_with(b"\r\n"));
            assert!(p.shutdown_goodbye().ends_with(b"\r\n"));
            assert!(p.refused_goodbye().ends_with(b"\r\n"));
            assert!(p.prelogin_goodbye().ends_with(b"\r\n"));
        }
        assert_eq!(Protocol::parse("submission"), None);
        assert_eq!(Protocol::parse("managesieve"), None);
        assert_eq!(Protocol::Sieve.alpn(), b"managesieve");
        assert_eq!(Protocol::Imap.alpn(), b"imap");
    }
}
