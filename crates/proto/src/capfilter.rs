//! Backend->client filter used after a STARTTLS upgrade: the client is already on TLS, so the
//! backend's advertisements of STARTTLS/STLS (and IMAP `LOGINDISABLED`) must not reach it
//! (rule T6: post-TLS capability lists omit STARTTLS).
//!
//! - IMAP: `* CAPABILITY ...` lines and `[CAPABILITY ...]` response codes of status responses
//!   (`* OK`/`* PREAUTH`/`* BYE`/tagged `OK`/`NO`/`BAD`) lose the `STARTTLS` and `LOGINDISABLED`
//!   atoms (any case). Literal bytes (`{n}` at a line end) are passed untouched, never parsed.
//! - POP3: a `STLS` line is dropped when it stands in a multi-line block whose lines so far
//!   all look like capabilities (first word of letters, digits, `-`, `_`, `.`); a message's
//!   header line (`From: ...`) ends that, so message text is never edited.
//! - SMTP: `250-STARTTLS` / `250 STARTTLS` lines of a multi-line 250 reply are dropped; when
//!   the dropped line was the last one, the line before it becomes the last (`250-` -> `250 `).
//!   The first line of a reply (the domain) is never dropped. To do this the latest `250-`
//!   line is held until the next line arrives (the client waits for the last line anyway).
//! - ManageSieve: a `"STARTTLS"` capability line (any case) is dropped, in the greeting that
//!   follows the upgrade (RFC 5804 has the server list its capabilities again after TLS:
//!   postern passes the backend's on) and in `CAPABILITY` replies. Literal bytes (`{n}` at a
//!   line end) are passed untouched, never parsed. Before login no other reply holds a line
//!   that is only a quoted `STARTTLS` (script listings come after login).
//!
//! At most one partial line ([`MAX_FILTER_LINE`] bytes) and, for SMTP, one pending line are
//! held. A longer line is passed through unchanged.
//!
//! # How long it runs (rule T6)
//! The filter has no byte bound: the session keeps it until the backend confirms a login
//! (IMAP, POP3), or for the whole session (SMTP, where a client may send EHLO again after
//! AUTH and a backend reached in plaintext advertises STARTTLS in every EHLO reply). However
//! many `CAPABILITY` commands a client sends before logging in, the answers are filtered.
//! After an IMAP or POP3 login the backend's own capability lists no longer carry STARTTLS
//! (it is a pre-login capability), and the stream may turn binary (`COMPRESS`).

use crate::lex::{content_len, split_word, trailing_literal, trim_blanks};
use crate::Protocol;

/// Longest backend line the filter holds; a longer one passes unchanged.
pub const MAX_FILTER_LINE: usize = 8 * 1024;

/// Removes STARTTLS/STLS advertisements from backend replies.
#[derive(Debug)]
pub struct CapabilityFilter {
    protocol: Protocol,
    held: Vec<u8>,
    done: bool,
    /// IMAP literal bytes still to pass untouched.
    literal_left: u64,
    /// Passing the rest of an over-long line.
    passing_line: bool,
    /// SMTP: the latest `250-` line, held until the next line shows whether it is the last.
    pending: Option<Vec<u8>>,
    /// POP3: inside a block where a `STLS` line is a capability.
    capa_block: bool,
}

impl CapabilityFilter {
    /// A filter for `protocol`'s backend replies.
    pub fn new(protocol: Protocol) -> Self {
        CapabilityFilter {
            protocol,
            held: Vec::new(),
            done: false,
            literal_left: 0,
            passing_line: false,
            pending: None,
            capa_block: false,
        }
    }

    /// Passes backend bytes to `to_client`, removing STARTTLS/STLS (and IMAP LOGINDISABLED) from
    /// IMAP `* CAPABILITY` lines and `[CAPABILITY ...]` response codes, POP3 CAPA `STLS` lines, SMTP EHLO
    /// `250-STARTTLS`/`250 STARTTLS` lines (fixing up the last-line marker). May hold an incomplete line
    /// (bounded); an over-long line is passed through unchanged.
    pub fn feed(&mut self, input: &[u8], to_client: &mut Vec<u8>) {
        let mut input = input;
        while !input.is_empty() {
            if self.done {
                to_client.extend_from_slice(input);
                return;
            }
            if self.literal_left > 0 {
                let k =
                    usize::try_from(self.literal_left).map_or(input.len(), |l| l.min(input.len()));
                to_client.extend_from_slice(&input[..k]);
                self.literal_left -= k as u64;
                input = &input[k..];
            } else if self.passing_line {
                let end = memchr::memchr(b'\n', input).map_or(input.len(), |i| i + 1);
                self.passing_line = !input[..end].ends_with(b"\n");
                to_client.extend_from_slice(&input[..end]);
                input = &input[end..];
            } else {
                input = self.line(input, to_client);
            }
        }
    }

    /// Passes on whatever is held (the backend closed) and ends filtering.
    pub fn flush(&mut self, to_client: &mut Vec<u8>) {
        if let Some(p) = self.pending.take() {
            to_client.extend_from_slice(&p);
        }
        to_client.extend_from_slice(&self.held);
        self.held.clear();
        self.done = true;
    }

    /// Bytes held (partial line plus SMTP pending line); at most `2 * MAX_FILTER_LINE`.
    pub fn held_len(&self) -> usize {
        self.held.len() + self.pending.as_ref().map_or(0, Vec::len)
    }

    fn line<'a>(&mut self, input: &'a [u8], to_client: &mut Vec<u8>) -> &'a [u8] {
        let Some(i) = memchr::memchr(b'\n', input) else {
            if self.held.len() + input.len() > MAX_FILTER_LINE {
                self.pass_over_long(input, to_client);
                self.passing_line = true;
            } else {
                self.held.extend_from_slice(input);
            }
            return &[];
        };
        let (head, rest) = input.split_at(i + 1);
        if self.held.len() + head.len() > MAX_FILTER_LINE {
            self.pass_over_long(head, to_client);
        } else if self.held.is_empty() {
            self.on_line(head, to_client);
        } else {
            let mut line = std::mem::take(&mut self.held);
            line.extend_from_slice(head);
            self.on_line(&line, to_client);
        }
        rest
    }

    fn pass_over_long(&mut self, tail: &[u8], to_client: &mut Vec<u8>) {
        if let Some(p) = self.pending.take() {
            to_client.extend_from_slice(&p);
        }
        to_client.extend_from_slice(&self.held);
        to_client.extend_from_slice(tail);
        self.held.clear();
        self.capa_block = false;
    }

    fn on_line(&mut self, line: &[u8], to_client: &mut Vec<u8>) {
        match self.protocol {
            Protocol::Imap => self.imap(line, to_client),
            Protocol::Pop3 => self.pop3(line, to_client),
            Protocol::Smtp => self.smtp(line, to_client),
            Protocol::Sieve => self.sieve(line, to_client),
        }
    }

    fn sieve(&mut self, line: &[u8], to_client: &mut Vec<u8>) {
        let content = &line[..content_len(line)];
        if let Some(lit) = trailing_literal(content) {
            self.literal_left = lit.len.unwrap_or(u64::MAX);
        } else if trim_blanks(content).eq_ignore_ascii_case(b"\"STARTTLS\"") {
            return;
        }
        to_client.extend_from_slice(line);
    }

    fn imap(&mut self, line: &[u8], to_client: &mut Vec<u8>) {
        let n = content_len(line);
        let (content, eol) = line.split_at(n);
        if let Some(lit) = trailing_literal(content) {
            // A length past 64 bits: nothing after it can be read as lines any more.
            self.literal_left = lit.len.unwrap_or(u64::MAX);
            to_client.extend_from_slice(line);
            return;
        }
        let (tag, rest) = split_word(content);
        let (word, args) = rest.map_or((&b""[..], None), split_word);
        if tag == b"*" && word.eq_ignore_ascii_case(b"CAPABILITY") {
            let prefix = content.len() - args.map_or(0, <[u8]>::len);
            to_client.extend_from_slice(&content[..prefix]);
            write_filtered_atoms(args.unwrap_or_default(), to_client);
            to_client.extend_from_slice(eol);
            return;
        }
        let status = [&b"OK"[..], b"NO", b"BAD", b"PREAUTH", b"BYE"];
        if let Some(args) = args.filter(|_| status.iter().any(|s| word.eq_ignore_ascii_case(s))) {
            const CODE: &[u8] = b"[CAPABILITY ";
            if args.len() >= CODE.len() && args[..CODE.len()].eq_ignore_ascii_case(CODE) {
                if let Some(close) = memchr::memchr(b']', args) {
                    let start = content.len() - args.len();
                    to_client.extend_from_slice(&content[..start + CODE.len()]);
                    write_filtered_atoms(&args[CODE.len()..close], to_client);
                    to_client.extend_from_slice(&args[close..]);
                    to_client.extend_from_slice(eol);
                    return;
                }
            }
        }
        to_client.extend_from_slice(line);
    }

    fn pop3(&mut self, line: &[u8], to_client: &mut Vec<u8>) {
        let content = &line[..content_len(line)];
        if content.starts_with(b"+OK") {
            self.capa_block = true;
        } else if content.starts_with(b"-ERR") || content == b"." {
            self.capa_block = false;
        } else if self.capa_block && trim_blanks(content).eq_ignore_ascii_case(b"STLS") {
            return;
        } else if !looks_like_capability(content) {
            self.capa_block = false;
        }
        to_client.extend_from_slice(line);
    }

    fn smtp(&mut self, line: &[u8], to_client: &mut Vec<u8>) {
        let content = &line[..content_len(line)];
        let is_250 =
            content.starts_with(b"250") && matches!(content.get(3), Some(b'-' | b' ') | None);
        let more = content.get(3) == Some(&b'-');
        let starttls = is_250
            && content.len() > 4
            && trim_blanks(&content[4..]).eq_ignore_ascii_case(b"STARTTLS");
        match self.pending.take() {
            // Not the first line of the reply: drop it.
            Some(prev) if starttls && more => self.pending = Some(prev),
            Some(mut prev) if starttls => {
                // The dropped line was the last: the one before it becomes the last.
                if let Some(marker) = prev.get_mut(3) {
                    *marker = b' ';
                }
                to_client.extend_from_slice(&prev);
            }
            prev => {
                if let Some(prev) = prev {
                    to_client.extend_from_slice(&prev);
                }
                if is_250 && more {
                    self.pending = Some(line.to_vec());
                } else {
                    to_client.extend_from_slice(line);
                }
            }
        }
    }
}

/// Writes the space-separated atoms of `atoms` without STARTTLS and LOGINDISABLED.
fn write_filtered_atoms(atoms: &[u8], out: &mut Vec<u8>) {
    let mut first = true;
    for atom in atoms.split(|&c| c == b' ') {
        if atom.eq_ignore_ascii_case(b"STARTTLS") || atom.eq_ignore_ascii_case(b"LOGINDISABLED") {
            continue;
        }
        if !first {
            out.push(b' ');
        }
        out.extend_from_slice(atom);
        first = false;
    }
}

/// A POP3 CAPA line: its first word is a capability name, not e.g. a `Header:`.
fn looks_like_capability(content: &[u8]) -> bool {
    let word = split_word(content).0;
    !word.is_empty()
        && word
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(p: Protocol, input: &[u8]) -> Vec<u8> {
        let mut f = CapabilityFilter::new(p);
        let mut out = Vec::new();
        f.feed(input, &mut out);
        f.flush(&mut out);
        out
    }

    fn bytewise(p: Protocol, input: &[u8]) -> Vec<u8> {
        let mut f = CapabilityFilter::new(p);
        let mut out = Vec::new();
        for b in input {
            f.feed(std::slice::from_ref(b), &mut out);
        }
        f.flush(&mut out);
        out
    }

    fn check(p: Protocol, input: &[u8], want: &[u8]) {
        let text = String::from_utf8_lossy(input);
        assert_eq!(
            String::from_utf8_lossy(&whole(p, input)),
            String::from_utf8_lossy(want),
            "{text}"
        );
        assert_eq!(bytewise(p, input), want, "bytewise: {text}");
    }

    #[test]
    fn t6_imap_capability_after_upgrade() {
        check(
            Protocol::Imap,
            b"* CAPABILITY IMAP4rev1 SASL-IR STARTTLS AUTH=PLAIN LOGINDISABLED IDLE\r\na OK done\r\n",
            b"* CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN IDLE\r\na OK done\r\n",
        );
        check(
            Protocol::Imap,
            b"* OK [CAPABILITY IMAP4rev1 starttls AUTH=PLAIN] Dovecot ready.\r\n",
            b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] Dovecot ready.\r\n",
        );
        check(
            Protocol::Imap,
            b"a1 OK [CAPABILITY IMAP4rev1 IDLE STARTTLS] Logged in\n",
            b"a1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\n",
        );
        // Untouched: other responses, and text that merely mentions STARTTLS.
        for same in [
            &b"* OK STARTTLS is not the point here\r\n"[..],
            b"a BAD [CAPABILITY without close bracket STARTTLS\r\n",
            b"* 1 FETCH (FLAGS (STARTTLS))\r\n",
        ] {
            check(Protocol::Imap, same, same);
        }
    }

    #[test]
    fn imap_literal_content_is_not_filtered() {
        let input = b"* 1 FETCH (BODY[] {35}\r\n* CAPABILITY IMAP4rev1 STARTTLS\r\n)\r\n* CAPABILITY STARTTLS X\r\n";
        check(
            Protocol::Imap,
            input,
            b"* 1 FETCH (BODY[] {35}\r\n* CAPABILITY IMAP4rev1 STARTTLS\r\n)\r\n* CAPABILITY X\r\n",
        );
    }

    #[test]
    fn t6_pop3_capa_after_upgrade() {
        check(
            Protocol::Pop3,
            b"+OK\r\nCAPA\r\nTOP\r\nSTLS\r\nSASL PLAIN LOGIN\r\n.\r\n",
            b"+OK\r\nCAPA\r\nTOP\r\nSASL PLAIN LOGIN\r\n.\r\n",
        );
        check(
            Protocol::Pop3,
            b"+OK Capability list follows\r\nstls\r\n.\r\n",
            b"+OK Capability list follows\r\n.\r\n",
        );
        // A message that contains a line "STLS" after its header is not edited.
        let retr = b"+OK 30 octets\r\nSubject: x\r\n\r\nSTLS\r\n.\r\n";
        check(Protocol::Pop3, retr, retr);
    }

    #[test]
    fn t6_smtp_ehlo_after_upgrade() {
        check(
            Protocol::Smtp,
            b"250-mx.test\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n",
            b"250-mx.test\r\n250-PIPELINING\r\n250 AUTH PLAIN LOGIN\r\n",
        );
        check(
            Protocol::Smtp,
            b"250-mx.test\r\n250-AUTH PLAIN\r\n250 STARTTLS\r\n",
            b"250-mx.test\r\n250 AUTH PLAIN\r\n",
        );
        check(
            Protocol::Smtp,
            b"250-mx.test\r\n250 starttls \r\n",
            b"250 mx.test\r\n",
        );
        // The first line of a reply is the domain, never a capability.
        check(Protocol::Smtp, b"250 STARTTLS\r\n", b"250 STARTTLS\r\n");
        check(
            Protocol::Smtp,
            b"250-STARTTLS\r\n250 OK\r\n",
            b"250-STARTTLS\r\n250 OK\r\n",
        );
        let other = b"220 mx ESMTP\r\n535 5.7.8 STARTTLS\r\n250 2.0.0 OK\r\n";
        check(Protocol::Smtp, other, other);
    }

    #[test]
    fn smtp_pending_line_is_released_by_the_next() {
        let mut f = CapabilityFilter::new(Protocol::Smtp);
        let mut out = Vec::new();
        f.feed(b"250-mx.test\r\n", &mut out);
        assert!(out.is_empty());
        f.feed(b"250 SIZE 10\r\n", &mut out);
        assert_eq!(out, b"250-mx.test\r\n250 SIZE 10\r\n");
        assert_eq!(f.held_len(), 0);
    }

    #[test]
    fn t6_sieve_capabilities_after_upgrade() {
        check(
            Protocol::Sieve,
            b"\"IMPLEMENTATION\" \"Dovecot\"\r\n\"SASL\" \"PLAIN\"\r\n\"STARTTLS\"\r\n\"VERSION\" \"1.0\"\r\nOK \"ready\"\r\n",
            b"\"IMPLEMENTATION\" \"Dovecot\"\r\n\"SASL\" \"PLAIN\"\r\n\"VERSION\" \"1.0\"\r\nOK \"ready\"\r\n",
        );
        check(Protocol::Sieve, b"\"starttls\"\nOK\n", b"OK\n");
        // Inside a literal nothing is a capability; a value that merely says STARTTLS stays.
        let same = b"{12}\r\n\"STARTTLS\"\r\n\r\nOK\r\n\"X\" \"STARTTLS\"\r\nNO \"STARTTLS\"\r\n";
        check(Protocol::Sieve, same, same);
    }

    #[test]
    fn over_long_line_passes_unchanged() {
        for p in Protocol::ALL {
            let mut input = b"250-x\r\n* CAPABILITY STARTTLS ".to_vec();
            input.extend(std::iter::repeat_n(b'x', 2 * MAX_FILTER_LINE));
            input.extend_from_slice(b"\r\n");
            assert_eq!(whole(p, &input), input);
            assert_eq!(bytewise(p, &input), input);
        }
    }

    #[test]
    fn t6_many_capability_replies_are_all_filtered() {
        // About 60 CAPABILITY answers used to pass the old 16 KiB bound: now there is none.
        let reply = b"* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED IDLE AUTH=PLAIN SASL-IR ID ENABLE LITERAL+ NAMESPACE UNSELECT CHILDREN
a OK CAPABILITY completed
";
        let input = reply.repeat(400);
        let want = b"* CAPABILITY IMAP4rev1 IDLE AUTH=PLAIN SASL-IR ID ENABLE LITERAL+ NAMESPACE UNSELECT CHILDREN
a OK CAPABILITY completed
".repeat(400);
        assert_eq!(whole(Protocol::Imap, &input), want);
        let mut f = CapabilityFilter::new(Protocol::Imap);
        let mut out = Vec::new();
        for chunk in input.chunks(7) {
            f.feed(chunk, &mut out);
        }
        assert_eq!(out, want);
    }
}
