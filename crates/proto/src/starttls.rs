//! The plaintext phase of a STARTTLS listener: postern itself speaks the protocol until the
//! client asks for TLS.
//!
//! The phase is hostile-input territory (STARTTLS command injection, CVE-2011-0411 and its
//! 2021 relatives), so it answers only what the protocol allows before TLS and never carries a
//! byte across the upgrade:
//!
//! - **T1/T2**: on STARTTLS/STLS every byte already buffered after the command line is removed
//!   from `buf` and reported as [`PlainStep::Upgrade::discarded`]; nothing is answered for it.
//! - **T4**: authentication is refused (IMAP `NO [PRIVACYREQUIRED]`, POP3 `-ERR [AUTH]`, SMTP
//!   `530 5.7.0`, ManageSieve `NO (ENCRYPT-NEEDED)`); after `Upgrade` or `Close` the phase is over: any further [`PlainPhase::step`]
//!   returns `Close` with nothing to write, so a second STARTTLS can never be honoured. The
//!   caller must not call `step` again after `Upgrade`/`Close`.
//! - **T6/T7**: postern's own greeting and capability lists advertise STARTTLS/STLS (and IMAP
//!   `LOGINDISABLED`), never `AUTH`, `PREAUTH` or `[ALERT]`; ManageSieve's lists `"SASL" ""`
//!   (no mechanism before TLS).
//! - **T8**: one line splitter ([`crate::lex::split_line`], CRLF or bare LF) and one
//!   dispatcher decide every command, STARTTLS included. The upgrade command must be exactly
//!   `tag SP STARTTLS` / `STLS` / `STARTTLS` (keyword case-insensitive, no arguments, no
//!   trailing SP). IMAP literals are never read as commands: a command ending in a
//!   synchronizing literal `{n}` gets `BAD` and the connection is closed (the client would
//!   wait for a `+` that never comes, and a client that sends the bytes anyway must not have
//!   them parsed); a non-synchronizing literal `{n+}` gets `BAD` and its `n` bytes, plus the
//!   rest of that command, are skipped unread. ManageSieve has no go-ahead: the bytes of
//!   `{n}` and `{n+}` both follow at once (as Dovecot reads them), so both get `NO` and are
//!   skipped. SMTP `BDAT` (chunk bytes follow the line) closes.
//! - **T9**: a line longer than `max_line_length` (terminator included) and command number
//!   `max_commands + 1` each get the protocol's error and `Close`. `step` never waits for more
//!   input while `buf` holds `max_line_length` bytes without a line end, so the caller's buffer
//!   stays within `max_line_length` plus one read.
//! - **Binary input** (a TLS ClientHello from a client that mixed up the implicit-TLS and
//!   STARTTLS ports, or any other byte that is not text: a control byte other than HTAB, CR
//!   and LF, DEL, or a byte over 0x7f) closes the phase at once with the protocol's error,
//!   instead of waiting for a line end that may never come.
//! - **Echoed tags**: an IMAP reply echoes the client's tag only when it is a valid tag of at
//!   most [`crate::lex::MAX_ECHO_TAG`] bytes; any other command is answered untagged (`*`).

use crate::lex::{echo_tag, split_line, split_word, trailing_literal, LineSplit};
use crate::Protocol;

/// Bounds of the plaintext phase (rule T9).
#[derive(Clone, Copy, Debug)]
pub struct PlainLimits {
    /// Longest command line accepted, terminator included.
    pub max_line_length: usize,
    /// Most command lines answered before the client must upgrade.
    pub max_commands: usize,
}

/// What the caller does next.
#[derive(Debug, PartialEq, Eq)]
pub enum PlainStep {
    /// Need more input; nothing to write.
    NeedMore,
    /// Write these bytes to the client and call step() again (more lines may be buffered).
    Reply(Vec<u8>),
    /// Write `reply` (the STARTTLS/STLS go-ahead), then start the TLS handshake on the raw socket.
    /// `discarded` = bytes that were already buffered after the STARTTLS command line; the
    /// state machine has already dropped them from `buf` (rule T1: they must never be replayed
    /// inside TLS); the caller counts and logs them.
    Upgrade {
        /// The go-ahead reply.
        reply: Vec<u8>,
        /// Bytes dropped from the buffer after the upgrade command.
        discarded: usize,
    },
    /// Write these bytes, then close the connection (LOGOUT/QUIT, too many commands, too long a line...).
    Close(Vec<u8>),
}

/// The plaintext dialogue of one connection.
#[derive(Debug)]
pub struct PlainPhase {
    protocol: Protocol,
    hostname: String,
    limits: PlainLimits,
    commands: usize,
    state: State,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// The next line is a new command.
    Command,
    /// Dropping the bytes of a refused non-synchronizing literal.
    SkipLiteral { remaining: usize },
    /// The next line continues a refused command (it follows a skipped literal).
    RestOfCommand,
    /// Upgrade or Close was returned; nothing more is read.
    Finished,
}

impl PlainPhase {
    /// A new plaintext phase; `hostname` appears in greetings (anything but visible ASCII is
    /// replaced, so a configured name can never break a reply line).
    pub fn new(protocol: Protocol, hostname: &str, limits: PlainLimits) -> Self {
        let hostname: String = hostname
            .chars()
            .map(|c| if c.is_ascii_graphic() { c } else { '-' })
            .collect();
        let hostname = if hostname.is_empty() {
            "postern".to_owned()
        } else {
            hostname
        };
        PlainPhase {
            protocol,
            hostname,
            limits,
            commands: 0,
            state: State::Command,
        }
    }

    /// postern's own greeting: IMAP `* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] <hostname> ready (postern)\r\n`, POP3 `+OK ...`, SMTP `220 <hostname> ESMTP ...`.
    pub fn greeting(&self) -> Vec<u8> {
        let h = &self.hostname;
        match self.protocol {
            Protocol::Imap => {
                format!("* OK [CAPABILITY {IMAP_CAPS}] {h} ready (postern)\r\n").into_bytes()
            }
            Protocol::Pop3 => format!("+OK {h} POP3 ready (postern)\r\n").into_bytes(),
            Protocol::Smtp => format!("220 {h} ESMTP ready (postern)\r\n").into_bytes(),
            // RFC 5804: the greeting is the capability list, then OK.
            Protocol::Sieve => {
                format!("{SIEVE_CAPS}OK \"{} ready (postern)\"\r\n", sieve_text(h)).into_bytes()
            }
        }
    }

    /// Consumes complete commands from the front of `buf` (removing exactly what it consumed) and
    /// returns the next step. The caller appends newly read bytes to `buf` and calls step() until NeedMore.
    pub fn step(&mut self, buf: &mut Vec<u8>) -> PlainStep {
        loop {
            match self.state {
                State::Finished => return PlainStep::Close(Vec::new()),
                State::SkipLiteral { remaining } => {
                    let k = remaining.min(buf.len());
                    buf.drain(..k);
                    if k < remaining {
                        self.state = State::SkipLiteral {
                            remaining: remaining - k,
                        };
                        return PlainStep::NeedMore;
                    }
                    self.state = State::RestOfCommand;
                }
                State::Command | State::RestOfCommand => {
                    // Only the next line counts (earlier ones were answered), and only as far
                    // as the line splitter looks, so the verdict never depends on read sizes.
                    let window = &buf[..buf.len().min(self.limits.max_line_length)];
                    let line_end = memchr::memchr(b'\n', window).map_or(window.len(), |i| i + 1);
                    if window[..line_end].iter().any(|&c| is_binary(c)) {
                        return self.close(Violation::Binary);
                    }
                    let (content, len) = match split_line(buf, self.limits.max_line_length) {
                        LineSplit::Incomplete => return PlainStep::NeedMore,
                        LineSplit::TooLong => return self.close(Violation::LineTooLong),
                        LineSplit::Line { content, len } => (content, len),
                    };
                    let line: Vec<u8> = buf.drain(..len).collect();
                    let content = &line[..content];
                    self.commands += 1;
                    if self.commands > self.limits.max_commands {
                        return self.close(Violation::TooManyCommands);
                    }
                    if self.state == State::RestOfCommand {
                        // Already answered with BAD; only a further literal matters here.
                        self.state = State::Command;
                        match self.refuse_literal(content, b"*", true) {
                            Some(PlainStep::Reply(r)) if r.is_empty() => continue,
                            Some(step) => return step,
                            None => continue,
                        }
                    }
                    return match self.protocol {
                        Protocol::Imap => self.imap(content, buf),
                        Protocol::Pop3 => self.pop3(content, buf),
                        Protocol::Smtp => self.smtp(content, buf),
                        Protocol::Sieve => self.sieve(content, buf),
                    };
                }
            }
        }
    }

    /// What to send when the plaintext-phase timeout fires (IMAP `* BYE ...`, POP3 `-ERR ...`, SMTP `421 4.4.2 ...`).
    pub fn timeout_goodbye(&self) -> &'static [u8] {
        match self.protocol {
            Protocol::Imap => b"* BYE Autologout; timeout waiting for STARTTLS\r\n",
            Protocol::Pop3 => b"-ERR Timeout waiting for STLS, closing connection\r\n",
            Protocol::Smtp => b"421 4.4.2 Timeout waiting for STARTTLS, closing connection\r\n",
            Protocol::Sieve => b"BYE \"Timeout waiting for STARTTLS, closing connection\"\r\n",
        }
    }

    /// Number of command lines read so far (continuation lines of refused commands included).
    pub fn commands(&self) -> usize {
        self.commands
    }

    fn imap(&mut self, content: &[u8], buf: &mut Vec<u8>) -> PlainStep {
        let (tag, rest) = split_word(content);
        let tag = echo_tag(tag).as_bytes();
        // Literals first: whatever the command, its literal bytes must never be parsed.
        if let Some(step) = self.refuse_literal(content, tag, false) {
            return step;
        }
        if tag == b"*" {
            return PlainStep::Reply(b"* BAD Invalid tag\r\n".to_vec());
        }
        let tag = String::from_utf8_lossy(tag);
        let Some(rest) = rest else {
            return PlainStep::Reply(format!("{tag} BAD Missing command\r\n").into_bytes());
        };
        let (cmd, args) = split_word(rest);
        let cmd = cmd.to_ascii_uppercase();
        let reply = match (&cmd[..], args) {
            (b"CAPABILITY", None) => {
                format!("* CAPABILITY {IMAP_CAPS}\r\n{tag} OK CAPABILITY completed\r\n")
            }
            (b"NOOP", None) => format!("{tag} OK NOOP completed\r\n"),
            (b"LOGOUT", None) => {
                let bye = format!(
                    "* BYE {} logging out\r\n{tag} OK LOGOUT completed\r\n",
                    self.hostname
                );
                self.state = State::Finished;
                return PlainStep::Close(bye.into_bytes());
            }
            (b"STARTTLS", None) => {
                return self.upgrade(format!("{tag} OK Begin TLS negotiation now\r\n"), buf);
            }
            (b"LOGIN" | b"AUTHENTICATE", _) => format!(
                "{tag} NO [PRIVACYREQUIRED] Plaintext authentication is disabled, use STARTTLS first\r\n"
            ),
            (b"CAPABILITY" | b"NOOP" | b"LOGOUT" | b"STARTTLS", Some(_)) => {
                format!("{tag} BAD Command takes no arguments\r\n")
            }
            _ => format!("{tag} BAD Command unknown or not allowed before STARTTLS\r\n"),
        };
        PlainStep::Reply(reply.into_bytes())
    }

    fn pop3(&mut self, content: &[u8], buf: &mut Vec<u8>) -> PlainStep {
        let (cmd, args) = split_word(content);
        let cmd = cmd.to_ascii_uppercase();
        let reply: &[u8] = match (&cmd[..], args) {
            (b"CAPA", None) => POP3_CAPA,
            (b"NOOP", None) => b"+OK\r\n",
            (b"STLS", None) => return self.upgrade(String::from("+OK Begin TLS negotiation\r\n"), buf),
            (b"QUIT", None) => {
                self.state = State::Finished;
                let bye = format!("+OK {} closing connection\r\n", self.hostname);
                return PlainStep::Close(bye.into_bytes());
            }
            (b"USER" | b"PASS" | b"APOP" | b"AUTH", _) => {
                b"-ERR [AUTH] Plaintext authentication is disabled, TLS required: use STLS first\r\n"
            }
            (b"CAPA" | b"NOOP" | b"STLS" | b"QUIT", Some(_)) => b"-ERR Command takes no arguments\r\n",
            _ => b"-ERR Command unknown or not allowed before STLS\r\n",
        };
        PlainStep::Reply(reply.to_vec())
    }

    fn smtp(&mut self, content: &[u8], buf: &mut Vec<u8>) -> PlainStep {
        let (cmd, args) = split_word(content);
        let cmd = cmd.to_ascii_uppercase();
        let has_arg = args.is_some_and(|a| a.iter().any(|&c| c != b' '));
        let h = &self.hostname;
        let reply = match (&cmd[..], args) {
            (b"EHLO", _) if has_arg => {
                format!("250-{h}\r\n250-ENHANCEDSTATUSCODES\r\n250 STARTTLS\r\n")
            }
            (b"HELO", _) if has_arg => format!("250 {h}\r\n"),
            (b"EHLO" | b"HELO", _) => "501 5.5.4 Syntax: EHLO hostname\r\n".to_owned(),
            (b"NOOP", _) => "250 2.0.0 OK\r\n".to_owned(),
            (b"RSET", None) => "250 2.0.0 OK\r\n".to_owned(),
            (b"QUIT", None) => {
                self.state = State::Finished;
                return PlainStep::Close(
                    format!("221 2.0.0 {h} closing connection\r\n").into_bytes(),
                );
            }
            (b"STARTTLS", None) => {
                return self.upgrade(String::from("220 2.0.0 Ready to start TLS\r\n"), buf);
            }
            (b"RSET" | b"QUIT" | b"STARTTLS", Some(_)) => {
                "501 5.5.4 Syntax error (no parameters allowed)\r\n".to_owned()
            }
            (b"AUTH" | b"MAIL", _) => {
                "530 5.7.0 Must issue a STARTTLS command first\r\n".to_owned()
            }
            (b"RCPT" | b"DATA", _) => "503 5.5.1 Bad sequence of commands\r\n".to_owned(),
            (b"BDAT", _) => {
                // Chunk bytes follow the command line unannounced; they must not be parsed.
                self.state = State::Finished;
                let bye = format!(
                    "421 4.7.0 {h} BDAT is not accepted before STARTTLS, closing connection\r\n"
                );
                return PlainStep::Close(bye.into_bytes());
            }
            (b"VRFY" | b"EXPN" | b"HELP" | b"ETRN", _) => {
                "502 5.5.1 Command not implemented\r\n".to_owned()
            }
            _ => "500 5.5.2 Command unrecognized\r\n".to_owned(),
        };
        PlainStep::Reply(reply.into_bytes())
    }

    fn sieve(&mut self, content: &[u8], buf: &mut Vec<u8>) -> PlainStep {
        // Literals first: whatever the command, its literal bytes must never be parsed.
        if let Some(step) = self.refuse_literal(content, b"", false) {
            return step;
        }
        let (cmd, args) = split_word(content);
        let cmd = cmd.to_ascii_uppercase();
        let has_arg = args.is_some_and(|a| a.iter().any(|&c| c != b' '));
        let reply: String = match &cmd[..] {
            b"CAPABILITY" if !has_arg => format!("{SIEVE_CAPS}OK \"Capability completed.\"\r\n"),
            b"NOOP" if !has_arg => "OK \"NOOP completed.\"\r\n".to_owned(),
            b"LOGOUT" if !has_arg => {
                self.state = State::Finished;
                return PlainStep::Close(b"OK \"Logout completed.\"\r\n".to_vec());
            }
            b"STARTTLS" if !has_arg => {
                return self.upgrade(String::from("OK \"Begin TLS negotiation now.\"\r\n"), buf);
            }
            b"AUTHENTICATE" => "NO (ENCRYPT-NEEDED) \"Plaintext authentication is disabled, use STARTTLS first\"\r\n".to_owned(),
            b"CAPABILITY" | b"NOOP" | b"LOGOUT" | b"STARTTLS" => {
                "NO \"Command takes no arguments\"\r\n".to_owned()
            }
            _ => "NO \"Command unknown or not allowed before STARTTLS\"\r\n".to_owned(),
        };
        PlainStep::Reply(reply.into_bytes())
    }

    /// `Some(step)` when `content` ends with an IMAP or ManageSieve literal (never for POP3/SMTP): the refusal
    /// to send, with the state set to skip the literal or finished. `tag` is echoed; `silent`
    /// is for continuation lines of a command already refused (no second BAD).
    fn refuse_literal(&mut self, content: &[u8], tag: &[u8], silent: bool) -> Option<PlainStep> {
        let sieve = match self.protocol {
            Protocol::Imap => false,
            Protocol::Sieve => true,
            Protocol::Pop3 | Protocol::Smtp => return None,
        };
        let lit = trailing_literal(content)?;
        let bad = if sieve {
            "NO \"Literals are not accepted before STARTTLS\"\r\n".to_owned()
        } else {
            let tag = String::from_utf8_lossy(tag);
            format!("{tag} BAD Literals are not accepted before STARTTLS\r\n")
        };
        let fits = lit
            .len
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n <= self.limits.max_line_length);
        match fits {
            // ManageSieve has no go-ahead: the bytes follow whatever the announcement.
            Some(n) if !lit.sync || sieve => {
                self.state = State::SkipLiteral { remaining: n };
                Some(PlainStep::Reply(if silent {
                    Vec::new()
                } else {
                    bad.into_bytes()
                }))
            }
            _ => {
                self.state = State::Finished;
                let bye = if sieve {
                    "BYE \"Literals are not accepted before STARTTLS, closing connection\"\r\n"
                } else {
                    "* BYE Literals are not accepted before STARTTLS, closing connection\r\n"
                };
                Some(PlainStep::Close(if silent {
                    bye.into()
                } else {
                    format!("{bad}{bye}").into_bytes()
                }))
            }
        }
    }

    fn upgrade(&mut self, reply: String, buf: &mut Vec<u8>) -> PlainStep {
        self.state = State::Finished;
        let discarded = buf.len();
        buf.clear();
        PlainStep::Upgrade {
            reply: reply.into_bytes(),
            discarded,
        }
    }

    fn close(&mut self, why: Violation) -> PlainStep {
        self.state = State::Finished;
        let starttls = self.protocol.starttls_command();
        let (text, say_closing) = match why {
            Violation::Binary => (
                format!("Binary data before {starttls} (a TLS client on the {starttls} port?)"),
                true,
            ),
            Violation::LineTooLong => ("Line too long".to_owned(), false),
            Violation::TooManyCommands => (format!("Too many commands before {starttls}"), false),
        };
        PlainStep::Close(
            self.protocol
                .closing_goodbye(&self.hostname, &text, say_closing),
        )
    }
}

#[derive(Clone, Copy, Debug)]
enum Violation {
    Binary,
    LineTooLong,
    TooManyCommands,
}

/// Not text: a control byte other than HTAB, CR and LF, DEL, or a byte over 0x7f.
fn is_binary(c: u8) -> bool {
    (c < 0x20 && !matches!(c, b'\t' | b'\r' | b'\n')) || c >= 0x7f
}

/// The capabilities postern honours before TLS: no `AUTH=`, no `ID` (rule T6).
const IMAP_CAPS: &str = "IMAP4rev1 STARTTLS LOGINDISABLED";

/// ManageSieve capabilities before TLS (RFC 5804 section 1.7): no SASL mechanism, since
/// authentication waits for TLS; the Sieve extensions are the backend's, listed after TLS.
const SIEVE_CAPS: &str = "\"IMPLEMENTATION\" \"postern\"\r\n\"SASL\" \"\"\r\n\"SIEVE\" \"\"\r\n\"STARTTLS\"\r\n\"VERSION\" \"1.0\"\r\n";

/// `text` fit for a ManageSieve quoted string: `"` and `\\` (which would need escapes) become `-`.
fn sieve_text(text: &str) -> String {
    text.replace(['"', '\\'], "-")
}

/// POP3 CAPA before TLS: `STLS` and the response codes postern itself uses.
const POP3_CAPA: &[u8] =
    b"+OK Capability list follows\r\nSTLS\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n.\r\n";

#[cfg(test)]
mod tests;
