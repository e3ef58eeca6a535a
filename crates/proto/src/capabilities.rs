//! What a backend server offers before login, learned by the health probe of a
//! `route = "user"` backend so that postern, which answers the pre-login commands itself,
//! shows clients what the servers offer (AUTH mechanisms, SASL-IR, LITERAL+, ID, ENABLE...).
//!
//! - IMAP: the `[CAPABILITY ...]` code of the greeting, else the reply to `CAPABILITY`.
//! - POP3: the reply to `CAPA` (RFC 2449).
//! - SMTP: the reply to `EHLO` (its keyword lines after the first).
//! - ManageSieve: the greeting's capability lines (RFC 5804 sends them before `OK`), else
//!   the reply to `CAPABILITY`; each item is the name and its value, unquoted
//!   (`SASL PLAIN LOGIN`, `STARTTLS`).
//!
//! [`probe`] says what to send after the greeting, [`parse_reply`] reads the answer.

use crate::Protocol;

/// Longest capability reply read; real servers send well under 2 KiB.
pub const MAX_REPLY: usize = 16 * 1024;

/// The tag of the probe's IMAP `CAPABILITY` command.
const TAG: &[u8] = b"postern-caps";

/// A server's pre-login capabilities: IMAP capability atoms, POP3 `CAPA` lines, SMTP EHLO
/// keyword lines, ManageSieve capability lines, in the server's order and spelling.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    items: Vec<String>,
}

impl Capabilities {
    /// Capabilities from their items (each an IMAP atom or one POP3/SMTP line).
    pub fn new(items: Vec<String>) -> Self {
        Capabilities { items }
    }

    /// The items, in order.
    pub fn items(&self) -> &[String] {
        &self.items
    }

    /// True when an item is `name` (case-insensitive), or for POP3/SMTP lines, starts with
    /// `name` and a space.
    pub fn has(&self, name: &str) -> bool {
        self.items.iter().any(|i| keyword_is(i, name))
    }

    /// The SASL mechanisms offered: IMAP `AUTH=X` atoms, the POP3 and ManageSieve `SASL`
    /// line, the SMTP `AUTH` line; upper-cased.
    pub fn sasl_mechanisms(&self) -> Vec<String> {
        let mut mechs = Vec::new();
        for item in &self.items {
            if let Some(m) = strip_prefix_ci(item, "AUTH=") {
                mechs.push(m.to_ascii_uppercase());
            } else if let Some(rest) =
                strip_prefix_ci(item, "SASL ").or_else(|| strip_prefix_ci(item, "AUTH "))
            {
                mechs.extend(rest.split_whitespace().map(str::to_ascii_uppercase));
            }
        }
        mechs
    }

    /// The items both have (compared case-insensitively), in `self`'s order: what every
    /// server of a backend offers.
    pub fn intersect(&self, other: &Capabilities) -> Capabilities {
        Capabilities {
            items: self
                .items
                .iter()
                .filter(|i| other.items.iter().any(|o| o.eq_ignore_ascii_case(i)))
                .cloned()
                .collect(),
        }
    }
}

/// What the probe does after the greeting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// The greeting already said it (IMAP `[CAPABILITY ...]`).
    Known(Capabilities),
    /// Send these bytes and read the reply with [`parse_reply`].
    Ask(&'static [u8]),
}

/// What to do after `greeting` to learn the server's capabilities.
pub fn probe(protocol: Protocol, greeting: &[u8]) -> Probe {
    match protocol {
        Protocol::Imap => match greeting_capabilities(greeting) {
            Some(caps) => Probe::Known(caps),
            None => Probe::Ask(b"postern-caps CAPABILITY\r\n"),
        },
        Protocol::Pop3 => Probe::Ask(b"CAPA\r\n"),
        Protocol::Smtp => Probe::Ask(b"EHLO postern.invalid\r\n"),
        Protocol::Sieve => match parse_reply(Protocol::Sieve, greeting) {
            Reply::Done(caps) => Probe::Known(caps),
            _ => Probe::Ask(b"CAPABILITY\r\n"),
        },
    }
}

/// What the bytes received after the probe's command say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Read more (unless [`MAX_REPLY`] bytes were read: then give up).
    Incomplete,
    /// The capabilities.
    Done(Capabilities),
    /// The server refused the command (or answered something else).
    Refused,
}

/// Reads the reply to the command of [`Probe::Ask`].
pub fn parse_reply(protocol: Protocol, buf: &[u8]) -> Reply {
    let mut lines = Vec::new();
    let mut pos = 0;
    while let Some(rel) = buf[pos..].iter().position(|&b| b == b'\n') {
        let line = trim_eol(&buf[pos..pos + rel + 1]);
        pos += rel + 1;
        let text = String::from_utf8_lossy(line);
        match protocol {
            Protocol::Imap => {
                if let Some(rest) = strip_prefix_ci(&text, "* CAPABILITY ") {
                    lines.extend(rest.split_whitespace().map(str::to_owned));
                } else if text.as_bytes().starts_with(TAG) {
                    let status = text[TAG.len()..].trim_start();
                    return if strip_prefix_ci(status, "OK").is_some() && !lines.is_empty() {
                        Reply::Done(Capabilities::new(lines))
                    } else {
                        Reply::Refused
                    };
                }
            }
            Protocol::Pop3 => {
                if lines.is_empty() && pos == rel + 1 {
                    if !text.starts_with("+OK") {
                        return Reply::Refused;
                    }
                    lines.push(String::new()); // placeholder for the status line
                    continue;
                }
                if text == "." {
                    lines.remove(0);
                    return Reply::Done(Capabilities::new(lines));
                }
                // Dot-stuffing (RFC 1939): a line starting with "." has one added.
                lines.push(text.strip_prefix('.').unwrap_or(&text).to_owned());
            }
            Protocol::Sieve => {
                if let Some(ok) = crate::greeting::sieve_status(line) {
                    return if ok && !lines.is_empty() {
                        Reply::Done(Capabilities::new(lines))
                    } else {
                        Reply::Refused
                    };
                }
                match sieve_capability(line) {
                    Some(item) => lines.push(item),
                    None => return Reply::Refused,
                }
            }
            Protocol::Smtp => {
                if text.len() < 3 || !text.starts_with("250") {
                    return Reply::Refused;
                }
                let first = pos == rel + 1;
                let last = text.as_bytes().get(3) != Some(&b'-');
                if !first {
                    lines.push(text.get(4..).unwrap_or("").to_owned());
                }
                if last {
                    return Reply::Done(Capabilities::new(lines));
                }
            }
        }
    }
    Reply::Incomplete
}

/// One ManageSieve capability line (`"NAME"` or `"NAME" "value"`, quoted strings only) as
/// `NAME` or `NAME value`; None for anything else.
fn sieve_capability(line: &[u8]) -> Option<String> {
    let mut rest = line;
    let mut parts = Vec::new();
    while !rest.is_empty() && parts.len() < 2 {
        let body = rest.strip_prefix(b"\"")?;
        let mut text = Vec::new();
        let mut i = 0;
        loop {
            match *body.get(i)? {
                b'"' => break,
                b'\\' => {
                    text.push(*body.get(i + 1)?);
                    i += 2;
                }
                c => {
                    text.push(c);
                    i += 1;
                }
            }
        }
        parts.push(String::from_utf8_lossy(&text).into_owned());
        rest = &body[i + 1..];
        if let Some(r) = rest.strip_prefix(b" ") {
            rest = r;
        }
    }
    if !rest.is_empty() || parts.first().is_none_or(String::is_empty) {
        return None;
    }
    Some(match &parts[..] {
        [name, value] if !value.is_empty() => format!("{name} {value}"),
        [name, ..] => name.clone(),
        [] => return None,
    })
}

/// The `[CAPABILITY ...]` response code of an IMAP greeting.
pub fn greeting_capabilities(greeting: &[u8]) -> Option<Capabilities> {
    let end = greeting
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(greeting.len());
    let line = String::from_utf8_lossy(trim_eol(&greeting[..end]));
    let rest = strip_prefix_ci(&line, "* OK [CAPABILITY ")?;
    let (atoms, _) = rest.split_once(']')?;
    let items: Vec<String> = atoms.split_whitespace().map(str::to_owned).collect();
    (!items.is_empty()).then(|| Capabilities::new(items))
}

fn keyword_is(item: &str, name: &str) -> bool {
    item.eq_ignore_ascii_case(name)
        || (item.len() > name.len()
            && item.as_bytes()[name.len()] == b' '
            && item[..name.len()].eq_ignore_ascii_case(name))
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imap_greeting_caps_and_capability_reply() {
        let greeting = b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN AUTH=LOGIN] Dovecot ready.\r\n";
        let Probe::Known(caps) = probe(Protocol::Imap, greeting) else {
            panic!()
        };
        assert!(caps.has("sasl-ir") && caps.has("LITERAL+") && !caps.has("STARTTLS"));
        assert_eq!(caps.sasl_mechanisms(), ["PLAIN", "LOGIN"]);
        assert_eq!(
            probe(Protocol::Imap, b"* OK ready\r\n"),
            Probe::Ask(b"postern-caps CAPABILITY\r\n")
        );
        let reply = b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\npostern-caps OK done\r\n";
        assert_eq!(parse_reply(Protocol::Imap, &reply[..20]), Reply::Incomplete);
        let Reply::Done(caps) = parse_reply(Protocol::Imap, reply) else {
            panic!()
        };
        assert_eq!(caps.items(), ["IMAP4rev1", "AUTH=PLAIN"]);
        assert_eq!(
            parse_reply(Protocol::Imap, b"postern-caps BAD no\r\n"),
            Reply::Refused
        );
    }

    #[test]
    fn pop3_capa() {
        let reply = b"+OK\r\nCAPA\r\nTOP\r\nUSER\r\nSASL PLAIN LOGIN\r\nSTLS\r\n.\r\n";
        let Reply::Done(caps) = parse_reply(Protocol::Pop3, reply) else {
            panic!()
        };
        assert_eq!(
            caps.items(),
            ["CAPA", "TOP", "USER", "SASL PLAIN LOGIN", "STLS"]
        );
        assert!(caps.has("SASL") && caps.has("user"));
        assert_eq!(caps.sasl_mechanisms(), ["PLAIN", "LOGIN"]);
        assert_eq!(
            parse_reply(Protocol::Pop3, b"+OK\r\nTOP\r\n"),
            Reply::Incomplete
        );
        assert_eq!(parse_reply(Protocol::Pop3, b"-ERR no\r\n"), Reply::Refused);
    }

    #[test]
    fn smtp_ehlo() {
        let reply = b"250-mail.test\r\n250-PIPELINING\r\n250-AUTH PLAIN LOGIN\r\n250-STARTTLS\r\n250 CHUNKING\r\n";
        assert_eq!(parse_reply(Protocol::Smtp, &reply[..30]), Reply::Incomplete);
        let Reply::Done(caps) = parse_reply(Protocol::Smtp, reply) else {
            panic!()
        };
        assert_eq!(
            caps.items(),
            ["PIPELINING", "AUTH PLAIN LOGIN", "STARTTLS", "CHUNKING"]
        );
        assert_eq!(parse_reply(Protocol::Smtp, b"502 no\r\n"), Reply::Refused);
        assert_eq!(
            parse_reply(Protocol::Smtp, b"250 mail.test\r\n"),
            Reply::Done(Capabilities::default())
        );
    }

    #[test]
    fn sieve_greeting_carries_the_capabilities() {
        let greeting = b"\"IMPLEMENTATION\" \"Dovecot Pigeonhole\"\r\n\"SIEVE\" \"fileinto reject\"\r\n\"SASL\" \"PLAIN LOGIN\"\r\n\"STARTTLS\"\r\n\"VERSION\" \"1.0\"\r\nOK \"Dovecot ready.\"\r\n";
        let Probe::Known(caps) = probe(Protocol::Sieve, greeting) else {
            panic!()
        };
        assert_eq!(
            caps.items(),
            [
                "IMPLEMENTATION Dovecot Pigeonhole",
                "SIEVE fileinto reject",
                "SASL PLAIN LOGIN",
                "STARTTLS",
                "VERSION 1.0"
            ]
        );
        assert!(caps.has("STARTTLS") && caps.has("sasl"));
        assert_eq!(caps.sasl_mechanisms(), ["PLAIN", "LOGIN"]);
        assert_eq!(
            parse_reply(Protocol::Sieve, b"\"SASL\" \"\"\r\nOK\r\n"),
            Reply::Done(Capabilities::new(vec!["SASL".into()]))
        );
        assert_eq!(
            probe(Protocol::Sieve, b"OK \"no list\"\r\n"),
            Probe::Ask(b"CAPABILITY\r\n")
        );
        assert_eq!(
            parse_reply(Protocol::Sieve, b"\"SASL\" {5}\r\n"),
            Reply::Refused
        );
        assert_eq!(
            parse_reply(Protocol::Sieve, b"\"a\\\"b\"\r\n"),
            Reply::Incomplete
        );
        assert_eq!(
            parse_reply(Protocol::Sieve, b"NO \"x\"\r\n"),
            Reply::Refused
        );
    }

    #[test]
    fn intersection_keeps_what_every_server_offers() {
        let a = Capabilities::new(vec!["IMAP4rev1".into(), "ID".into(), "AUTH=PLAIN".into()]);
        let b = Capabilities::new(vec!["auth=plain".into(), "IMAP4rev1".into()]);
        assert_eq!(a.intersect(&b).items(), ["IMAP4rev1", "AUTH=PLAIN"]);
    }
}
