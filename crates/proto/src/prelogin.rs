//! The pre-login dialogue of a `route = "user"` session: postern answers the greeting and
//! every command before the login itself, reads the login name, and hands over the client's
//! login bytes, unchanged, for the server the name is placed on.
//!
//! [`Prelogin::step`] works like the STARTTLS phase's: the caller appends client bytes to a
//! buffer and calls it until it wants more. It answers:
//! - IMAP `CAPABILITY`, `NOOP`, `ID` (decoded and checked by the login guard's `ID` reader:
//!   a reserved field is refused with the guard's text; a clean one is answered `* ID NIL`
//!   and not passed on), `LOGOUT`; `STARTTLS` (TLS is already on) and `COMPRESS` refused;
//!   anything else `BAD`. Literals (`{n}` gets `+ OK`; `{n+}` only as far as the servers
//!   advertised LITERAL+ / LITERAL-) are read as part of their command.
//! - POP3 `CAPA`, `AUTH` without arguments (the mechanisms), `QUIT`; `XCLIENT`, `STLS`
//!   refused; anything else `-ERR`.
//! - SMTP `EHLO`/`HELO`, `NOOP`, `RSET`, `QUIT`; `MAIL`/`RCPT`/`DATA` get `530`;
//!   `XCLIENT`/`XFORWARD`/`STARTTLS` refused; `BDAT` closes (its chunk follows unannounced).
//! - ManageSieve: the greeting is the capability list (also after STARTTLS, as RFC 5804
//!   has it), `CAPABILITY`, `NOOP`, `LOGOUT`; `XCLIENT`, `STARTTLS` refused; anything else
//!   `NO`. Literals (`{n}` and `{n+}` alike: the protocol has no go-ahead) are read as part
//!   of their command; a SASL response after postern's `""` challenge must be a quoted
//!   string (a literal one closes the session: postern cannot follow it).
//!
//! The capability lists are the servers' own, learned by the health probe
//! ([`crate::capabilities`]), minus what postern does not pass on: STARTTLS/STLS (the client
//! is on TLS with postern), LOGINDISABLED, XCLIENT/XFORWARD, and every SASL mechanism whose
//! login name postern cannot read (CRAM-MD5, SCRAM-*, GSSAPI...): only PLAIN, LOGIN, XOAUTH2
//! and OAUTHBEARER are offered.
//!
//! The login name comes from the login guard's parser ([`crate::login_guard::login_line`],
//! [`crate::login_guard::sasl_response_name`]): IMAP `LOGIN`, `AUTHENTICATE` with an
//! initial response, POP3 `USER`/`APOP`/`AUTH`, SMTP `AUTH`; a SASL exchange without an
//! initial response gets postern's continuation (`+ `, `334 `) and the name is read from the
//! client's response. Then [`PreStep::Login`] hands over:
//! - `replay`: the bytes the chosen server must receive, byte for byte as the client sent
//!   them: the login command with its literals and SASL response, and for SMTP the client's
//!   last `EHLO` line first (the server must see one before `AUTH`), followed by whatever the
//!   client pipelined after it.
//! - `swallow`: how many of the server's replies to `replay` the client already had from
//!   postern (IMAP continuations for the literals and SASL steps postern acknowledged; POP3
//!   and SMTP SASL continuations; the SMTP `EHLO` reply): [`ReplySwallow`] drops them from
//!   the server's stream.
//!
//! # Invariants
//! - Bounded: one command is assembled at a time, at most [`MAX_COMMAND`] bytes with its
//!   literals; a command line other than a SASL line at most `max_line_length`; a SASL
//!   response line at most [`MAX_SASL_LINE`]; at most `max_commands` commands are answered.
//!   Every violation gets the protocol's error and a close.
//! - Secrets: the assembled bytes (which hold a password or token) are zeroed as soon as a
//!   command is answered, and [`LoginBytes`] zeroes the replay when dropped; `Debug` shows
//!   lengths only. Nothing but the name is decoded out of them.
//! - One parser: line ends, literals, tags and keywords come from [`crate::lex`], login
//!   names from the login guard's `sasl` module, `ID` from its `id` module.

mod swallow;

use std::fmt;

use crate::capabilities::Capabilities;
use crate::lex::{
    echo_tag, first_word, is_imap_tag, keyword, split_line, split_word, strip_eol,
    trailing_literal, trim_blanks, LineSplit,
};
use crate::login_guard::claims::Refused;
use crate::login_guard::id::check_id;
use crate::login_guard::sasl::scrub;
use crate::login_guard::{login_line, sasl_response_name, LoginLine, SaslMech, MAX_SASL_LINE};
use crate::Protocol;

pub use swallow::ReplySwallow;

/// Longest command postern assembles (line segments and literals together).
pub const MAX_COMMAND: usize = 64 * 1024;

/// LITERAL- (RFC 7888): non-synchronizing literals up to this size.
const LITERAL_MINUS_MAX: u64 = 4096;

/// SASL mechanisms whose login name postern reads (the others are not offered).
const ROUTABLE_MECHS: [&str; 4] = ["PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER"];

/// Bounds of the pre-login dialogue.
#[derive(Clone, Copy, Debug)]
pub struct PreloginLimits {
    /// Longest command line (terminator included) other than a SASL line.
    pub max_line_length: usize,
    /// Most commands answered before the login.
    pub max_commands: usize,
}

/// The client's login bytes for the chosen server; zeroed when dropped.
pub struct LoginBytes(Vec<u8>);

impl LoginBytes {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    /// The number of bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Drop for LoginBytes {
    fn drop(&mut self) {
        scrub(&mut self.0);
    }
}

impl fmt::Debug for LoginBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LoginBytes({} bytes)", self.0.len())
    }
}

/// The login postern read: who, and what to send the server placed for them.
#[derive(Debug)]
pub struct Login {
    /// The login name (as the guard reads it: sanitised, at most `MAX_USER` bytes).
    pub user: String,
    /// The bytes to send the server first (see the module docs).
    pub replay: LoginBytes,
    /// Replies of the server to `replay` the client must not see again.
    pub swallow: u32,
}

/// What the caller does next.
#[derive(Debug)]
pub enum PreStep {
    /// Read more client bytes.
    NeedMore,
    /// Write these bytes to the client and call `step` again.
    Reply(Vec<u8>),
    /// The login: connect to the user's server (the buffer was emptied into the replay).
    Login(Login),
    /// Write these bytes, then close the connection.
    Close(Vec<u8>),
}

/// The pre-login dialogue of one routed session.
pub struct Prelogin {
    protocol: Protocol,
    hostname: String,
    limits: PreloginLimits,
    /// The capability items shown to the client (already filtered).
    caps: Vec<String>,
    literal_plus: bool,
    literal_minus: bool,
    commands: usize,
    /// The command being assembled (segments and literals), zeroed after use.
    cmd: Vec<u8>,
    /// Content length of the command's first line.
    first: usize,
    state: State,
    /// Continuations postern sent for the command being assembled.
    acked: u32,
    /// SMTP: the client's last `EHLO` line (replayed before `AUTH`).
    ehlo: Option<Vec<u8>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading the first line of a command.
    Command,
    /// Reading the next line segment of a command (after a literal).
    Segment,
    /// Reading literal bytes into the command.
    Literal { left: usize },
    /// Reading the client's SASL response line.
    SaslResponse(SaslMech),
    /// Login handed over or closed: nothing more is read.
    Finished,
}

impl fmt::Debug for Prelogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prelogin")
            .field("protocol", &self.protocol)
            .field("state", &self.state)
            .field("commands", &self.commands)
            .field("held", &self.cmd.len())
            .finish_non_exhaustive()
    }
}

impl Prelogin {
    /// A new dialogue; `caps` is what the servers offer (None when no probe has learned it
    /// yet: a minimal list is shown), `hostname` appears in postern's own lines.
    pub fn new(
        protocol: Protocol,
        hostname: &str,
        caps: Option<&Capabilities>,
        limits: PreloginLimits,
    ) -> Self {
        let hostname: String = hostname
            .chars()
            .map(|c| if c.is_ascii_graphic() { c } else { '-' })
            .collect();
        let hostname = if hostname.is_empty() {
            "postern".to_owned()
        } else {
            hostname
        };
        let (caps, literal_plus, literal_minus) = shown_caps(protocol, caps);
        Prelogin {
            protocol,
            hostname,
            limits,
            caps,
            literal_plus,
            literal_minus,
            commands: 0,
            cmd: Vec::new(),
            first: 0,
            state: State::Command,
            acked: 0,
            ehlo: None,
        }
    }

    /// postern's greeting on an implicit-TLS listener (on a STARTTLS listener the client had
    /// the plaintext phase's): IMAP with the capability list in it.
    pub fn greeting(&self) -> Vec<u8> {
        let h = &self.hostname;
        match self.protocol {
            Protocol::Imap => format!(
                "* OK [CAPABILITY {}] {h} ready (postern)\r\n",
                self.caps.join(" ")
            )
            .into_bytes(),
            Protocol::Pop3 => format!("+OK {h} POP3 ready (postern)\r\n").into_bytes(),
            Protocol::Smtp => format!("220 {h} ESMTP ready (postern)\r\n").into_bytes(),
            Protocol::Sieve => format!(
                "{}OK \"{} ready (postern)\"\r\n",
                self.sieve_caps(),
                h.replace(['"', '\\'], "-")
            )
            .into_bytes(),
        }
    }

    /// ManageSieve capability lines: `"NAME" "value"` (the value may be empty for the
    /// ones RFC 5804 gives a value), else `"NAME"`.
    fn sieve_caps(&self) -> String {
        let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let mut out = String::new();
        for item in &self.caps {
            let (name, value) = item.split_once(' ').unwrap_or((item, ""));
            let valued = [
                "IMPLEMENTATION",
                "SASL",
                "SIEVE",
                "NOTIFY",
                "MAXREDIRECTS",
                "LANGUAGE",
                "OWNER",
                "VERSION",
            ]
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n));
            if valued || !value.is_empty() {
                out.push_str(&format!("\"{}\" \"{}\"\r\n", quote(name), quote(value)));
            } else {
                out.push_str(&format!("\"{}\"\r\n", quote(name)));
            }
        }
        out
    }

    /// Bytes held (the command being assembled); bounded by [`MAX_COMMAND`] plus a SASL line.
    pub fn held_len(&self) -> usize {
        self.cmd.len()
    }

    /// Consumes client bytes from the front of `buf` and says what to do next (see
    /// [`PreStep`]); the caller appends what it reads to `buf` and calls again until
    /// `NeedMore`. After `Login` or `Close`, every call returns `Close` with nothing to write.
    pub fn step(&mut self, buf: &mut Vec<u8>) -> PreStep {
        loop {
            match self.state {
                State::Finished => return PreStep::Close(Vec::new()),
                State::Literal { left } => {
                    let k = left.min(buf.len());
                    self.cmd.extend(buf.drain(..k));
                    if k < left {
                        self.state = State::Literal { left: left - k };
                        return PreStep::NeedMore;
                    }
                    self.state = State::Segment;
                }
                State::Command | State::Segment | State::SaslResponse(_) => {
                    let sasl = matches!(self.state, State::SaslResponse(_));
                    let max = if sasl {
                        MAX_SASL_LINE
                    } else {
                        MAX_COMMAND.saturating_sub(self.cmd.len()).max(1)
                    };
                    let (content, len) = match split_line(buf, max) {
                        LineSplit::Incomplete => return PreStep::NeedMore,
                        LineSplit::TooLong => return self.close(Violation::LineTooLong),
                        LineSplit::Line { content, len } => (content, len),
                    };
                    if let State::SaslResponse(mech) = self.state {
                        let line: Vec<u8> = buf.drain(..len).collect();
                        return self.sasl_response(mech, line, content, buf);
                    }
                    let start = self.cmd.len();
                    self.cmd.extend(buf.drain(..len));
                    if self.state == State::Command {
                        self.commands += 1;
                        if self.commands > self.limits.max_commands {
                            return self.close(Violation::TooManyCommands);
                        }
                        self.first = content;
                        if len > self.limits.max_line_length && !self.is_sasl_command() {
                            return self.close(Violation::LineTooLong);
                        }
                    }
                    let segment_end = start + content;
                    if matches!(self.protocol, Protocol::Imap | Protocol::Sieve) {
                        match self.literal(segment_end) {
                            Lit::Absent => {}
                            Lit::Read => continue,
                            Lit::Answer(step) => return step,
                        }
                    }
                    return self.dispatch(buf);
                }
            }
        }
    }

    /// True when the first line is `AUTHENTICATE`/`AUTH` (its initial response may be long).
    fn is_sasl_command(&self) -> bool {
        let line = &self.cmd[..self.first];
        let args = match self.protocol {
            Protocol::Imap => split_word(line).1.unwrap_or_default(),
            Protocol::Pop3 | Protocol::Smtp | Protocol::Sieve => line,
        };
        let kw = keyword(args).0;
        kw.eq_ignore_ascii_case(b"AUTHENTICATE") || kw.eq_ignore_ascii_case(b"AUTH")
    }

    /// An IMAP literal announced at the end of the segment just read (ending at `end` in
    /// `cmd`).
    fn literal(&mut self, end: usize) -> Lit {
        let Some(lit) = trailing_literal(&self.cmd[..end]) else {
            return Lit::Absent;
        };
        let room = MAX_COMMAND.saturating_sub(self.cmd.len());
        let n = lit.len.and_then(|n| usize::try_from(n).ok());
        if self.protocol == Protocol::Sieve {
            // No go-ahead in ManageSieve: the bytes of `{n}` and `{n+}` follow at once.
            if !lit.delimited {
                return Lit::Absent;
            }
            return match n.filter(|&n| n <= room) {
                Some(n) => {
                    self.state = State::Literal { left: n };
                    Lit::Read
                }
                None => {
                    self.finish();
                    Lit::Answer(PreStep::Close(
                        b"NO \"Literal too large\"\r\nBYE \"The mail gateway cannot follow this command, closing connection\"\r\n"
                            .to_vec(),
                    ))
                }
            };
        }
        let tag = self.tag();
        if lit.sync {
            match n.filter(|&n| n <= room) {
                Some(n) => {
                    self.acked += 1;
                    self.state = State::Literal { left: n };
                    Lit::Answer(PreStep::Reply(b"+ OK\r\n".to_vec()))
                }
                // The client waits for `+`: refusing the command is enough.
                None => {
                    let reply = format!("{tag} NO [TOOBIG] Literal too large\r\n");
                    self.reset();
                    Lit::Answer(PreStep::Reply(reply.into_bytes()))
                }
            }
        } else {
            let allowed = lit.delimited
                && (self.literal_plus
                    || (self.literal_minus && lit.len.is_some_and(|l| l <= LITERAL_MINUS_MAX)));
            match n.filter(|&n| n <= room && allowed) {
                Some(n) => {
                    self.state = State::Literal { left: n };
                    Lit::Read
                }
                // Its bytes follow unannounced: they cannot be told from commands.
                None => {
                    let mut reply = Refused::NonSyncLiteral.reply(Protocol::Imap, tag.as_bytes());
                    reply.extend_from_slice(
                        b"* BYE The mail gateway cannot follow this command, closing connection\r\n",
                    );
                    self.finish();
                    Lit::Answer(PreStep::Close(reply))
                }
            }
        }
    }

    /// The IMAP tag of the command being assembled, as postern echoes it.
    fn tag(&self) -> String {
        echo_tag(split_word(&self.cmd[..self.first]).0).to_owned()
    }

    /// A complete command is in `cmd`: answer it, or hand the login over.
    fn dispatch(&mut self, buf: &mut Vec<u8>) -> PreStep {
        match self.protocol {
            Protocol::Imap => self.imap(buf),
            Protocol::Pop3 => self.pop3(buf),
            Protocol::Smtp => self.smtp(buf),
            Protocol::Sieve => self.sieve(buf),
        }
    }

    fn sieve(&mut self, buf: &mut Vec<u8>) -> PreStep {
        let line = &self.cmd[..self.first];
        let (kw, args) = keyword(line);
        let kw = kw.to_ascii_uppercase();
        let no_args = trim_blanks(args).is_empty();
        let reply: Vec<u8> = match &kw[..] {
            b"CAPABILITY" if no_args => {
                format!("{}OK \"Capability completed.\"\r\n", self.sieve_caps()).into_bytes()
            }
            b"NOOP" if no_args => b"OK \"NOOP completed.\"\r\n".to_vec(),
            b"LOGOUT" if no_args => {
                self.finish();
                return PreStep::Close(b"OK \"Logout completed.\"\r\n".to_vec());
            }
            b"AUTHENTICATE" => return self.login(buf),
            b"XCLIENT" => Refused::Xclient.reply(Protocol::Sieve, b""),
            b"STARTTLS" => Refused::Starttls.reply(Protocol::Sieve, b""),
            b"" => Refused::EmptyLine.reply(Protocol::Sieve, b""),
            b"CAPABILITY" | b"NOOP" | b"LOGOUT" => {
                b"NO \"Command takes no arguments\"\r\n".to_vec()
            }
            _ => b"NO \"Command unknown or not allowed before login\"\r\n".to_vec(),
        };
        self.reset();
        PreStep::Reply(reply)
    }

    fn imap(&mut self, buf: &mut Vec<u8>) -> PreStep {
        let line = &self.cmd[..self.first];
        let (tag_raw, rest) = split_word(line);
        if !is_imap_tag(tag_raw) {
            self.reset();
            return PreStep::Reply(Refused::InvalidTag.reply(Protocol::Imap, b"*"));
        }
        let tag = echo_tag(tag_raw).to_owned();
        let (kw, args) = keyword(rest.unwrap_or_default());
        let kw = kw.to_ascii_uppercase();
        let no_args = trim_blanks(args).is_empty();
        let reply = match &kw[..] {
            b"CAPABILITY" if no_args => format!(
                "* CAPABILITY {}\r\n{tag} OK CAPABILITY completed\r\n",
                self.caps.join(" ")
            ),
            b"NOOP" if no_args => format!("{tag} OK NOOP completed\r\n"),
            b"LOGOUT" if no_args => {
                let bye = format!(
                    "* BYE {} logging out\r\n{tag} OK LOGOUT completed\r\n",
                    self.hostname
                );
                self.finish();
                return PreStep::Close(bye.into_bytes());
            }
            b"ID" => {
                // Everything after the keyword, literals inline, as the guard's reader takes it.
                let at = self.first - args.len();
                match check_id(tag_raw, &self.cmd[at..]) {
                    Ok(_) => format!("* ID NIL\r\n{tag} OK ID completed\r\n"),
                    Err(refusal) => String::from_utf8_lossy(&refusal.reply(tag_raw)).into_owned(),
                }
            }
            b"STARTTLS" => {
                String::from_utf8_lossy(&Refused::Starttls.reply(Protocol::Imap, tag_raw))
                    .into_owned()
            }
            b"COMPRESS" => String::from_utf8_lossy(
                &Refused::CompressBeforeLogin.reply(Protocol::Imap, tag_raw),
            )
            .into_owned(),
            b"LOGIN" | b"AUTHENTICATE" => return self.login(buf),
            b"CAPABILITY" | b"NOOP" | b"LOGOUT" => {
                format!("{tag} BAD Command takes no arguments\r\n")
            }
            _ => format!("{tag} BAD Command unknown or not allowed before login\r\n"),
        };
        self.reset();
        PreStep::Reply(reply.into_bytes())
    }

    fn pop3(&mut self, buf: &mut Vec<u8>) -> PreStep {
        let line = &self.cmd[..self.first];
        let (kw, args) = keyword(line);
        let kw = kw.to_ascii_uppercase();
        let no_args = trim_blanks(args).is_empty();
        let reply: Vec<u8> = match &kw[..] {
            b"CAPA" if no_args => {
                let mut r = String::from("+OK Capability list follows\r\n");
                for item in &self.caps {
                    r.push_str(item);
                    r.push_str("\r\n");
                }
                r.push_str(".\r\n");
                r.into_bytes()
            }
            b"AUTH" if no_args => {
                let mut r = String::from("+OK\r\n");
                for m in self.mechanisms() {
                    r.push_str(&m);
                    r.push_str("\r\n");
                }
                r.push_str(".\r\n");
                r.into_bytes()
            }
            b"QUIT" if no_args => {
                self.finish();
                return PreStep::Close(
                    format!("+OK {} closing connection\r\n", self.hostname).into_bytes(),
                );
            }
            b"USER" | b"APOP" | b"AUTH" => return self.login(buf),
            b"PASS" => b"-ERR USER first\r\n".to_vec(),
            b"XCLIENT" => Refused::Xclient.reply(Protocol::Pop3, b""),
            b"STLS" => Refused::Starttls.reply(Protocol::Pop3, b""),
            b"" => Refused::EmptyLine.reply(Protocol::Pop3, b""),
            _ => b"-ERR Command unknown or not allowed before login\r\n".to_vec(),
        };
        self.reset();
        PreStep::Reply(reply)
    }

    fn smtp(&mut self, buf: &mut Vec<u8>) -> PreStep {
        let line = &self.cmd[..self.first];
        let (kw, args) = keyword(line);
        let kw = kw.to_ascii_uppercase();
        let has_arg = !trim_blanks(args).is_empty();
        let h = &self.hostname;
        let reply = match &kw[..] {
            b"EHLO" if has_arg => {
                self.ehlo = Some(self.cmd.clone());
                let mut r = format!("250-{h}\r\n");
                for (i, item) in self.caps.iter().enumerate() {
                    let sep = if i + 1 == self.caps.len() { ' ' } else { '-' };
                    r.push_str(&format!("250{sep}{item}\r\n"));
                }
                if self.caps.is_empty() {
                    r = format!("250 {h}\r\n");
                }
                r
            }
            b"HELO" if has_arg => {
                // AUTH needs EHLO: a HELO client cannot log in, and what it said is not replayed.
                self.ehlo = None;
                format!("250 {h}\r\n")
            }
            b"EHLO" | b"HELO" => "501 5.5.4 Syntax: EHLO hostname\r\n".to_owned(),
            b"AUTH" if self.ehlo.is_none() => "503 5.5.1 Send EHLO first\r\n".to_owned(),
            b"AUTH" => return self.login(buf),
            b"NOOP" | b"RSET" => "250 2.0.0 OK\r\n".to_owned(),
            b"QUIT" => {
                let bye = format!("221 2.0.0 {h} closing connection\r\n");
                self.finish();
                return PreStep::Close(bye.into_bytes());
            }
            b"MAIL" | b"RCPT" | b"DATA" => "530 5.7.0 Authentication required\r\n".to_owned(),
            b"BDAT" => {
                // Chunk bytes follow the command line unannounced; they must not be parsed.
                let bye = format!(
                    "530 5.7.0 Authentication required\r\n421 4.7.0 {h} BDAT before AUTH, closing connection\r\n"
                );
                self.finish();
                return PreStep::Close(bye.into_bytes());
            }
            b"XCLIENT" => lossy(&Refused::Xclient.reply(Protocol::Smtp, b"")),
            b"XFORWARD" => lossy(&Refused::Xforward.reply(Protocol::Smtp, b"")),
            b"STARTTLS" => lossy(&Refused::Starttls.reply(Protocol::Smtp, b"")),
            b"" => lossy(&Refused::EmptyLine.reply(Protocol::Smtp, b"")),
            b"VRFY" | b"EXPN" | b"HELP" | b"ETRN" => {
                "502 5.5.1 Command not implemented\r\n".to_owned()
            }
            _ => "500 5.5.2 Command unrecognized\r\n".to_owned(),
        };
        self.reset();
        PreStep::Reply(reply.into_bytes())
    }

    /// A login command is in `cmd`.
    fn login(&mut self, buf: &mut Vec<u8>) -> PreStep {
        match login_line(self.protocol, &self.cmd) {
            LoginLine::Name(user) => self.hand_over(user, Vec::new(), buf),
            LoginLine::AwaitsResponse(mech) => {
                self.acked += 1;
                self.state = State::SaslResponse(mech);
                PreStep::Reply(self.continuation(mech))
            }
            LoginLine::Unreadable | LoginLine::NotLogin => {
                let reply = self.no_name();
                self.reset();
                PreStep::Reply(reply)
            }
        }
    }

    /// The client's first SASL response (`line`, `content` bytes before its terminator).
    fn sasl_response(
        &mut self,
        mech: SaslMech,
        mut line: Vec<u8>,
        content: usize,
        buf: &mut Vec<u8>,
    ) -> PreStep {
        let sieve = self.protocol == Protocol::Sieve;
        if sieve && trailing_literal(&line[..content]).is_some() {
            // Its bytes follow at once; postern reads a quoted response only.
            scrub(&mut line);
            self.finish();
            return PreStep::Close(
                b"NO \"Send the SASL response as a quoted string\"\r\nBYE \"The mail gateway cannot follow this command, closing connection\"\r\n"
                    .to_vec(),
            );
        }
        let response = trim_blanks(&line[..content]);
        let response = if sieve {
            crate::login_guard::sieve::unquote(response)
        } else {
            response
        };
        if response == b"*" {
            let reply = match self.protocol {
                Protocol::Imap => format!("{} BAD Authentication cancelled\r\n", self.tag()),
                Protocol::Pop3 => "-ERR Authentication cancelled\r\n".to_owned(),
                Protocol::Smtp => "501 5.7.0 Authentication cancelled\r\n".to_owned(),
                Protocol::Sieve => "NO \"Authentication cancelled\"\r\n".to_owned(),
            };
            scrub(&mut line);
            self.reset();
            return PreStep::Reply(reply.into_bytes());
        }
        match sasl_response_name(mech, response) {
            Some(user) => self.hand_over(user, line, buf),
            None => {
                scrub(&mut line);
                let reply = self.no_name();
                self.reset();
                PreStep::Reply(reply)
            }
        }
    }

    /// The name is known: everything the server must see, in order.
    fn hand_over(&mut self, user: String, response: Vec<u8>, buf: &mut Vec<u8>) -> PreStep {
        let mut replay = Vec::new();
        let mut swallow = self.acked;
        if self.protocol == Protocol::Smtp {
            if let Some(ehlo) = self.ehlo.take() {
                replay.extend_from_slice(&ehlo);
                swallow += 1;
            }
        }
        replay.append(&mut self.cmd);
        let mut response = response;
        replay.append(&mut response);
        replay.append(buf);
        self.finish();
        PreStep::Login(Login {
            user,
            replay: LoginBytes(replay),
            swallow,
        })
    }

    /// postern's continuation for a SASL exchange whose name comes in the first response.
    fn continuation(&self, mech: SaslMech) -> Vec<u8> {
        // The LOGIN mechanism's customary prompt ("Username:"); the others start empty.
        let prompt = if mech == SaslMech::Login {
            "VXNlcm5hbWU6"
        } else {
            ""
        };
        match self.protocol {
            Protocol::Imap | Protocol::Pop3 => format!("+ {prompt}\r\n"),
            Protocol::Smtp => format!("334 {prompt}\r\n"),
            Protocol::Sieve => format!("\"{prompt}\"\r\n"),
        }
        .into_bytes()
    }

    /// The refusal of a login whose name postern cannot read (so cannot place).
    fn no_name(&self) -> Vec<u8> {
        match self.protocol {
            Protocol::Imap => format!(
                "{} NO [AUTHENTICATIONFAILED] The mail gateway could not read a login name (mechanisms: {})\r\n",
                self.tag(),
                self.mechanisms().join(" ")
            ),
            Protocol::Pop3 => "-ERR [AUTH] The mail gateway could not read a login name\r\n".to_owned(),
            Protocol::Smtp => {
                "535 5.7.8 The mail gateway could not read a login name\r\n".to_owned()
            }
            Protocol::Sieve => {
                "NO \"The mail gateway could not read a login name\"\r\n".to_owned()
            }
        }
        .into_bytes()
    }

    /// The SASL mechanisms offered (upper case).
    fn mechanisms(&self) -> Vec<String> {
        Capabilities::new(self.caps.clone()).sasl_mechanisms()
    }

    /// The command was answered: forget it (zeroed) and read the next.
    fn reset(&mut self) {
        scrub(&mut self.cmd);
        self.first = 0;
        self.acked = 0;
        self.state = State::Command;
    }

    fn finish(&mut self) {
        scrub(&mut self.cmd);
        if let Some(mut e) = self.ehlo.take() {
            scrub(&mut e);
        }
        self.state = State::Finished;
    }

    fn close(&mut self, why: Violation) -> PreStep {
        self.finish();
        let text = match why {
            Violation::LineTooLong => "Line too long",
            Violation::TooManyCommands => "Too many commands before login",
        };
        PreStep::Close(self.protocol.closing_goodbye(&self.hostname, text, false))
    }
}

impl Drop for Prelogin {
    fn drop(&mut self) {
        scrub(&mut self.cmd);
    }
}

/// What a literal announcement at a segment's end means.
enum Lit {
    /// There is none: the command is complete.
    Absent,
    /// Its bytes are read next, with no answer (non-synchronizing).
    Read,
    /// postern answers now (`+ OK`, or a refusal).
    Answer(PreStep),
}

#[derive(Clone, Copy, Debug)]
enum Violation {
    LineTooLong,
    TooManyCommands,
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The capability items shown to clients, and whether LITERAL+ / LITERAL- are among them.
fn shown_caps(protocol: Protocol, learned: Option<&Capabilities>) -> (Vec<String>, bool, bool) {
    let fallback: &[&str] = match protocol {
        Protocol::Imap => &["IMAP4rev1", "AUTH=PLAIN"],
        Protocol::Pop3 => &["USER", "SASL PLAIN"],
        Protocol::Smtp => &["ENHANCEDSTATUSCODES", "AUTH PLAIN"],
        Protocol::Sieve => &[
            "IMPLEMENTATION postern",
            "SASL PLAIN",
            "SIEVE",
            "VERSION 1.0",
        ],
    };
    let items: Vec<String> = match learned {
        Some(c) if !c.items().is_empty() => c.items().to_vec(),
        _ => fallback.iter().map(|s| (*s).to_owned()).collect(),
    };
    let mut shown = Vec::new();
    for item in items {
        let (word, rest) = first_word(item.as_bytes());
        let word = String::from_utf8_lossy(word).to_ascii_uppercase();
        match (protocol, &word[..]) {
            (Protocol::Imap, "STARTTLS" | "LOGINDISABLED") => {}
            (Protocol::Imap, w) if w.starts_with("AUTH=") => {
                if ROUTABLE_MECHS.contains(&&w[5..]) {
                    shown.push(item);
                }
            }
            (Protocol::Pop3, "STLS")
            | (Protocol::Smtp, "STARTTLS" | "XCLIENT" | "XFORWARD")
            | (Protocol::Sieve, "STARTTLS" | "XCLIENT") => {}
            (Protocol::Pop3 | Protocol::Sieve, "SASL") | (Protocol::Smtp, "AUTH") => {
                let mechs: Vec<String> = rest
                    .map(|r| String::from_utf8_lossy(r).into_owned())
                    .unwrap_or_default()
                    .split_whitespace()
                    .filter(|m| ROUTABLE_MECHS.contains(&m.to_ascii_uppercase().as_str()))
                    .map(str::to_owned)
                    .collect();
                if !mechs.is_empty() {
                    shown.push(format!("{word} {}", mechs.join(" ")));
                } else if protocol == Protocol::Sieve {
                    // RFC 5804: SASL is always listed, empty when no mechanism is offered.
                    shown.push(word.clone());
                }
            }
            _ => shown.push(item),
        }
    }
    let has = |name: &str| shown.iter().any(|i| i.eq_ignore_ascii_case(name));
    let imap = protocol == Protocol::Imap;
    let (plus, minus) = (imap && has("LITERAL+"), imap && has("LITERAL-"));
    // The IMAP line must not be empty or end with a stray line break.
    let shown = shown
        .into_iter()
        .filter(|i| !strip_eol(i.as_bytes()).is_empty())
        .collect();
    (shown, plus, minus)
}

#[cfg(test)]
mod tests;
