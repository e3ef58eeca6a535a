//! Telling a backend the client's address in the mail protocol itself
//! (`forward_client = "protocol"`), for backends that honour it from trusted networks
//! (Dovecot's `login_trusted_networks`, Postfix's `smtpd_authorized_xclient_hosts`).
//!
//! After the backend greeting, the pool sends one command built here and reads its reply
//! with [`parse_reply`] until it is complete; the reply is consumed, the client never sees
//! it. The commands:
//! - IMAP: `postern-id ID ("x-originating-ip" "…" "x-originating-port" "…"
//!   "x-connected-ip" "…" "x-connected-port" "…")` (RFC 2971 ID with Dovecot's fields).
//!   Reply: untagged lines (`* ID (…)`), then `postern-id OK|NO|BAD …`.
//! - POP3: `XCLIENT ADDR=… PORT=…` (Dovecot pop3-login). Reply: `+OK …` or `-ERR …`.
//! - SMTP: `XCLIENT ADDR=… PORT=…` (Postfix XCLIENT, also Dovecot submission-login); IPv6
//!   addresses carry the `IPV6:` prefix the Postfix spec requires. Reply: a fresh `220`
//!   greeting (possibly multi-line), or `4xx`/`5xx`.
//! - ManageSieve: `XCLIENT ADDR=… PORT=…` (Dovecot managesieve-login, from
//!   `login_trusted_networks`). Reply: `OK …`, or `NO …` / `BYE …`.
//!
//! Addresses are written canonically: an IPv4-mapped IPv6 address (`::ffff:192.0.2.1`)
//! becomes plain IPv4, so backends see the same form as for a native IPv4 client.

use std::net::{IpAddr, SocketAddr};

use crate::lex::{starts_with_ci, strip_eol, strip_prefix_ci, trailing_literal};
use crate::Protocol;

/// The tag of the IMAP `ID` command postern sends; fixed so the reply is recognisable.
pub const IMAP_ID_TAG: &str = "postern-id";

/// Longest forwarding reply accepted; Dovecot's `* ID (…)` answer is well under 1 KiB.
pub const MAX_REPLY: usize = 16 * 1024;

/// The forwarding command for `protocol`: the client (`peer`) and the address it connected
/// to (`local`, IMAP only), CRLF-terminated.
pub fn forward_command(protocol: Protocol, peer: SocketAddr, local: SocketAddr) -> Vec<u8> {
    match protocol {
        Protocol::Imap => imap_id_command(peer, local),
        Protocol::Pop3 | Protocol::Sieve => pop3_xclient_command(peer),
        Protocol::Smtp => smtp_xclient_command(peer),
    }
}

/// `postern-id ID ("x-originating-ip" "<peer ip>" "x-originating-port" "<peer port>"
/// "x-connected-ip" "<local ip>" "x-connected-port" "<local port>")`.
pub fn imap_id_command(peer: SocketAddr, local: SocketAddr) -> Vec<u8> {
    // IP literals and port numbers never contain `"` or `\`, so plain quoting is exact.
    format!(
        "{IMAP_ID_TAG} ID (\"x-originating-ip\" \"{}\" \"x-originating-port\" \"{}\" \
         \"x-connected-ip\" \"{}\" \"x-connected-port\" \"{}\")\r\n",
        canonical(peer.ip()),
        peer.port(),
        canonical(local.ip()),
        local.port()
    )
    .into_bytes()
}

/// `XCLIENT ADDR=<peer ip> PORT=<peer port>` as Dovecot's pop3-login and managesieve-login
/// parse it (plain IPv6).
pub fn pop3_xclient_command(peer: SocketAddr) -> Vec<u8> {
    format!(
        "XCLIENT ADDR={} PORT={}\r\n",
        canonical(peer.ip()),
        peer.port()
    )
    .into_bytes()
}

/// `XCLIENT ADDR=<peer ip> PORT=<peer port>`, IPv6 as `IPV6:<addr>` (Postfix XCLIENT_README).
pub fn smtp_xclient_command(peer: SocketAddr) -> Vec<u8> {
    let ip = canonical(peer.ip());
    let prefix = if ip.is_ipv6() { "IPV6:" } else { "" };
    format!("XCLIENT ADDR={prefix}{ip} PORT={}\r\n", peer.port()).into_bytes()
}

/// What the bytes received since the forwarding command say about its reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardReply {
    /// The reply is not complete yet; read more.
    Incomplete,
    /// The backend accepted the command; the reply is `len` bytes (everything after it
    /// belongs to the session). For SMTP the reply is a new greeting when it starts `220`.
    Accepted {
        /// Length of the whole reply, CRLF included.
        len: usize,
    },
    /// The backend refused (`NO`/`BAD`, `* BYE`, `-ERR`, `4xx`/`5xx`) in `len` bytes.
    Refused {
        /// Length of the whole reply, CRLF included.
        len: usize,
    },
    /// Not a reply to our command (or longer than [`MAX_REPLY`]).
    Invalid,
}

/// Parses the backend's reply to [`forward_command`]. Stateless: call it again with the
/// whole buffer after each read.
pub fn parse_reply(protocol: Protocol, buf: &[u8]) -> ForwardReply {
    match protocol {
        Protocol::Imap => imap_reply(buf),
        Protocol::Pop3 => pop3_reply(buf),
        Protocol::Smtp => smtp_reply(buf),
        Protocol::Sieve => sieve_reply(buf),
    }
}

fn sieve_reply(buf: &[u8]) -> ForwardReply {
    let Some(rel) = memchr::memchr(b'\n', buf) else {
        return incomplete(buf);
    };
    let len = rel + 1;
    match crate::greeting::sieve_status(&buf[..len]) {
        Some(true) => ForwardReply::Accepted { len },
        Some(false) => ForwardReply::Refused { len },
        None => ForwardReply::Invalid,
    }
}

fn imap_reply(buf: &[u8]) -> ForwardReply {
    let mut pos = 0;
    loop {
        let start = pos;
        // One logical line: a line ending in a literal `{n}` continues after n raw bytes.
        loop {
            let Some(rel) = memchr::memchr(b'\n', &buf[pos..]) else {
                return incomplete(buf);
            };
            let content = strip_eol(&buf[pos..pos + rel + 1]);
            pos += rel + 1;
            let Some(lit) = trailing_literal(content) else {
                break;
            };
            // A literal the reply could not hold within MAX_REPLY (or whose length does not
            // even fit in 64 bits) is no reply to our command.
            let Some(n) = lit
                .len
                .and_then(|n| usize::try_from(n).ok())
                .filter(|&n| n <= MAX_REPLY && pos + n <= MAX_REPLY)
            else {
                return ForwardReply::Invalid;
            };
            if buf.len() < pos + n {
                return incomplete(buf);
            }
            pos += n;
        }
        let line = &buf[start..pos];
        if starts_with_ci(line, b"* BYE") {
            return ForwardReply::Refused { len: pos };
        }
        if line.starts_with(b"* ") {
            continue;
        }
        let Some(rest) =
            strip_prefix_ci(line, IMAP_ID_TAG.as_bytes()).and_then(|r| r.strip_prefix(b" "))
        else {
            return ForwardReply::Invalid;
        };
        return if starts_with_ci(rest, b"OK") {
            ForwardReply::Accepted { len: pos }
        } else if starts_with_ci(rest, b"NO") || starts_with_ci(rest, b"BAD") {
            ForwardReply::Refused { len: pos }
        } else {
            ForwardReply::Invalid
        };
    }
}

fn pop3_reply(buf: &[u8]) -> ForwardReply {
    let Some(rel) = memchr::memchr(b'\n', buf) else {
        return incomplete(buf);
    };
    let len = rel + 1;
    if starts_with_ci(buf, b"+OK") {
        ForwardReply::Accepted { len }
    } else if starts_with_ci(buf, b"-ERR") {
        ForwardReply::Refused { len }
    } else {
        ForwardReply::Invalid
    }
}

fn smtp_reply(buf: &[u8]) -> ForwardReply {
    let mut pos = 0;
    loop {
        let Some(rel) = memchr::memchr(b'\n', &buf[pos..]) else {
            return incomplete(buf);
        };
        let line = &buf[pos..pos + rel + 1];
        pos += rel + 1;
        if line.len() < 4 || !line[..3].iter().all(u8::is_ascii_digit) {
            return ForwardReply::Invalid;
        }
        match line[3] {
            b'-' => continue,
            b' ' | b'\r' | b'\n' => {
                return match line[0] {
                    b'2' => ForwardReply::Accepted { len: pos },
                    b'4' | b'5' => ForwardReply::Refused { len: pos },
                    _ => ForwardReply::Invalid,
                };
            }
            _ => return ForwardReply::Invalid,
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

fn incomplete(buf: &[u8]) -> ForwardReply {
    if buf.len() > MAX_REPLY {
        ForwardReply::Invalid
    } else {
        ForwardReply::Incomplete
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Feeding the reply byte by byte must agree with feeding it whole.
    fn parse_incrementally(protocol: Protocol, bytes: &[u8]) -> ForwardReply {
        for end in 0..bytes.len() {
            match parse_reply(protocol, &bytes[..end]) {
                ForwardReply::Incomplete => {}
                other => return other,
            }
        }
        parse_reply(protocol, bytes)
    }

    #[test]
    fn imap_id_command_matches_dovecot_syntax() {
        let cmd = imap_id_command(addr("192.0.2.7:50123"), addr("127.0.0.1:993"));
        assert_eq!(
            cmd,
            b"postern-id ID (\"x-originating-ip\" \"192.0.2.7\" \"x-originating-port\" \"50123\" \
              \"x-connected-ip\" \"127.0.0.1\" \"x-connected-port\" \"993\")\r\n"
                .to_vec()
        );
        let v6 = imap_id_command(addr("[2001:db8::1]:4000"), addr("[::ffff:10.0.0.1]:993"));
        let v6 = String::from_utf8(v6).unwrap();
        assert!(v6.contains("\"x-originating-ip\" \"2001:db8::1\""), "{v6}");
        assert!(
            v6.contains("\"x-connected-ip\" \"10.0.0.1\""),
            "mapped address is canonical: {v6}"
        );
    }

    #[test]
    fn xclient_commands() {
        assert_eq!(
            pop3_xclient_command(addr("192.0.2.7:50123")),
            b"XCLIENT ADDR=192.0.2.7 PORT=50123\r\n"
        );
        assert_eq!(
            pop3_xclient_command(addr("[2001:db8::1]:5")),
            b"XCLIENT ADDR=2001:db8::1 PORT=5\r\n"
        );
        assert_eq!(
            smtp_xclient_command(addr("192.0.2.7:50123")),
            b"XCLIENT ADDR=192.0.2.7 PORT=50123\r\n"
        );
        assert_eq!(
            smtp_xclient_command(addr("[2001:db8::1]:5")),
            b"XCLIENT ADDR=IPV6:2001:db8::1 PORT=5\r\n"
        );
        assert_eq!(
            smtp_xclient_command(addr("[::ffff:192.0.2.9]:5")),
            b"XCLIENT ADDR=192.0.2.9 PORT=5\r\n"
        );
        let local = addr("127.0.0.1:1");
        assert_eq!(
            forward_command(Protocol::Pop3, addr("192.0.2.7:1"), local),
            b"XCLIENT ADDR=192.0.2.7 PORT=1\r\n"
        );
        assert!(forward_command(Protocol::Imap, addr("192.0.2.7:1"), local)
            .starts_with(b"postern-id ID ("));
    }

    #[test]
    fn imap_replies() {
        let ok = b"* ID (\"name\" \"Dovecot\")\r\npostern-id OK ID completed.\r\n";
        assert_eq!(
            parse_incrementally(Protocol::Imap, ok),
            ForwardReply::Accepted { len: ok.len() }
        );
        let mut with_tail = ok.to_vec();
        with_tail.extend_from_slice(b"* extra");
        assert_eq!(
            parse_reply(Protocol::Imap, &with_tail),
            ForwardReply::Accepted { len: ok.len() }
        );
        assert_eq!(
            parse_reply(Protocol::Imap, b"* ID NIL\r\nPOSTERN-ID ok done\r\n"),
            ForwardReply::Accepted { len: 30 }
        );
        let no = b"postern-id NO not allowed\r\n";
        assert_eq!(
            parse_incrementally(Protocol::Imap, no),
            ForwardReply::Refused { len: no.len() }
        );
        let bad = b"postern-id BAD syntax\r\n";
        assert_eq!(
            parse_reply(Protocol::Imap, bad),
            ForwardReply::Refused { len: bad.len() }
        );
        let bye = b"* BYE Input buffer full, aborting\r\n";
        assert_eq!(
            parse_reply(Protocol::Imap, bye),
            ForwardReply::Refused { len: bye.len() }
        );
        assert_eq!(
            parse_reply(Protocol::Imap, b"a1 OK other tag\r\n"),
            ForwardReply::Invalid
        );
        assert_eq!(
            parse_reply(Protocol::Imap, b"* ID (\"x\" \"y\")\r\n"),
            ForwardReply::Incomplete
        );
    }

    #[test]
    fn imap_reply_with_literal() {
        let reply = b"* ID (\"name\" {5}\r\nab\r\nc)\r\npostern-id OK done\r\n";
        assert_eq!(
            parse_incrementally(Protocol::Imap, reply),
            ForwardReply::Accepted { len: reply.len() }
        );
        assert_eq!(
            parse_reply(Protocol::Imap, b"* ID ({99999999}\r\n"),
            ForwardReply::Invalid
        );
    }

    #[test]
    fn pop3_replies() {
        assert_eq!(
            parse_incrementally(Protocol::Pop3, b"+OK Updated\r\n"),
            ForwardReply::Accepted { len: 13 }
        );
        assert_eq!(
            parse_reply(Protocol::Pop3, b"-ERR You are not from trusted IP\r\n"),
            ForwardReply::Refused { len: 34 }
        );
        assert_eq!(
            parse_reply(Protocol::Pop3, b"* OK\r\n"),
            ForwardReply::Invalid
        );
    }

    #[test]
    fn sieve_command_and_replies() {
        let local = addr("127.0.0.1:4190");
        assert_eq!(
            forward_command(Protocol::Sieve, addr("[2001:db8::7]:1"), local),
            b"XCLIENT ADDR=2001:db8::7 PORT=1\r\n"
        );
        assert_eq!(
            parse_incrementally(Protocol::Sieve, b"OK \"Updated\"\r\n"),
            ForwardReply::Accepted { len: 14 }
        );
        assert_eq!(
            parse_reply(Protocol::Sieve, b"NO \"You are not from trusted IP\"\r\n"),
            ForwardReply::Refused { len: 34 }
        );
        assert_eq!(
            parse_reply(Protocol::Sieve, b"\"SASL\" \"PLAIN\"\r\n"),
            ForwardReply::Invalid
        );
    }

    #[test]
    fn smtp_replies() {
        let greeting = b"220-mail.test ESMTP\r\n220 ready\r\n";
        assert_eq!(
            parse_incrementally(Protocol::Smtp, greeting),
            ForwardReply::Accepted {
                len: greeting.len()
            }
        );
        let denied = b"550 5.7.14 You are not from trusted IP\r\n";
        assert_eq!(
            parse_reply(Protocol::Smtp, denied),
            ForwardReply::Refused { len: denied.len() }
        );
        assert_eq!(
            parse_reply(Protocol::Smtp, b"502 5.5.1 Unsupported command\r\n"),
            ForwardReply::Refused { len: 31 }
        );
        assert_eq!(
            parse_reply(Protocol::Smtp, b"hello\r\n"),
            ForwardReply::Invalid
        );
    }

    #[test]
    fn unbounded_replies_are_invalid() {
        let junk = vec![b'x'; MAX_REPLY + 1];
        for p in Protocol::ALL {
            assert_eq!(parse_reply(p, &junk), ForwardReply::Invalid);
        }
        let mut untagged = Vec::new();
        while untagged.len() <= MAX_REPLY {
            untagged.extend_from_slice(b"* ID NIL\r\n");
        }
        assert_eq!(
            parse_reply(Protocol::Imap, &untagged),
            ForwardReply::Invalid
        );
    }
}
