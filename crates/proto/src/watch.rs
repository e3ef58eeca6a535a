//! Watches the client->backend bytes of every session (implicit TLS, and STARTTLS after the
//! upgrade) until authentication: records the login name for the session log line and
//! refuses the few commands a client must never get through to a backend that trusts postern.
//!
//! # What is recognised
//! - IMAP: `LOGIN` with the user as atom, quoted string or literal (`{n}`/`{n+}`);
//!   `AUTHENTICATE PLAIN|LOGIN|XOAUTH2|OAUTHBEARER`, with the initial response inline (SASL-IR)
//!   or on the continuation line(s).
//! - POP3: `USER`, `APOP`, `AUTH PLAIN|LOGIN|XOAUTH2|OAUTHBEARER` (inline or continuation).
//! - SMTP: `AUTH PLAIN|LOGIN|XOAUTH2|OAUTHBEARER` (inline or continuation).
//!
//! For PLAIN the recorded name is the authentication identity (authcid), or the authorization
//! identity when authcid is empty. Names are cut to [`MAX_USER`] bytes and control characters
//! become `?` (the name goes into a log line). Passwords and tokens are never copied into the
//! struct: decoded SASL buffers are zeroed before they are dropped, a partial line held between
//! reads is zeroed once processed, and `Debug` prints only the held length.
//!
//! # What is refused (rules T12 and T4); the client gets the reply, the backend nothing
//! - IMAP `ID` whose arguments carry `x-originating-*`, `x-connected-*`, `x-forward-*`,
//!   `x-proxy-ttl` or `x-session-*` (any case; Dovecot's trusted-proxy fields), or any literal
//!   (its content could not be checked before forwarding): `<tag> BAD ID fields reserved to
//!   the gateway are not accepted`.
//! - POP3 `XCLIENT`: `-ERR XCLIENT is not accepted from clients`; SMTP `XCLIENT`/`XFORWARD`:
//!   `550 5.7.0 XCLIENT is not accepted from clients` (resp. `XFORWARD`).
//! - `STARTTLS`/`STLS` (TLS is already active; T4 "only once"): IMAP `<tag> BAD TLS is already
//!   active`, POP3 `-ERR TLS is already active`, SMTP `503 5.5.1 TLS is already active`.
//!
//! Keywords match case-insensitively after any leading blanks, as lenient backends parse them.
//! A refused line that is over-long is still refused (its rest is dropped up to the line end).
//! A refused IMAP command's non-synchronizing literal bytes are dropped; for a synchronizing
//! literal the client got a tagged reply instead of `+` and so sends no literal bytes.
//!
//! # Ending: the backend decides
//! The watch also reads the backend's replies ([`ClientWatch::backend`]), and inspection
//! ends ([`ClientWatch::is_done`]) only once the backend has *confirmed* authentication
//! (IMAP tagged `OK` to the LOGIN/AUTHENTICATE tag; POP3 `+OK` to PASS/APOP/AUTH or to a
//! SASL response it asked for; SMTP `235`), or greeted with IMAP `* PREAUTH`, at a moment
//! when nothing is held. A failed login (NO/BAD, `-ERR`, `5xx`) drops its name and the watch
//! goes on, so a client cannot fail a login and then send a claim. [`ClientWatch::user`] is
//! only ever a confirmed name (SPEC §5: the name the client authenticated as).
//!
//! Matching replies to commands: IMAP by tag (several commands may be in flight; `+`
//! continuations and untagged lines are not completions; `{n}` at the end of a backend line
//! announces n literal bytes, skipped unread). POP3 and SMTP replies come in order: every
//! command line and SASL response line forwarded is one entry of a bounded queue, every
//! final reply line (POP3 `+OK`/`-ERR`/`+ `, SMTP `NNN ` after any `NNN-` lines, a POP3
//! multi-line `+OK` body up to `.`) takes one. A SASL response line confirms only when the
//! backend had asked for it with a continuation (`+ `/`334`). Whenever the count could be
//! wrong (an empty or over-long line, a full queue, a reply line of unknown form) no login
//! is confirmed any more: the watch then stays on to the session's end, the safe side.
//! SMTP message text starts only at the backend's `354` to DATA (a refused DATA leaves the
//! next lines commands, as the backend reads them).
//!
//! The strict mode ([`ClientWatch::strict`]) has no byte bound before confirmation; the
//! default mode also ends once more than [`INSPECT_LIMIT`] client bytes were inspected, or
//! at an over-long line. Held memory stays bounded either way: one client line
//! (`max_line_length`), [`REPLY_HEAD`] + [`PASS_TAIL`] bytes of a backend line, 64 commands
//! in flight with their tags (64 bytes at most) and names ([`MAX_USER`]).
//!
//! Remaining limits: the caller must pass the backend's bytes in the order read, and its
//! greeting before any client byte (a POP3 greeting fed late would be counted as a reply).
//! In IMAP a command hidden from the watch (inside a synchronizing literal the backend
//! refused, where the watch reads literal data) that reuses the tag of a later failing
//! LOGIN could have its `OK` taken for that LOGIN; strict mode checks such literal data for
//! reserved `ID` fields, but does not track the tags in it. Backends should still honour
//! address fields only from postern's own forwarding command, which is sent first.
//!
//! SMTP message text after `DATA` and its `354` (up to the line `.`, CRLF or bare LF) is passed unread,
//! so a message line is never refused.
//!
//! Literal bytes (IMAP `{n}`/`{n+}`, SMTP `BDAT n` chunks) pass through at once, counted,
//! never held waiting for a line end (strict mode: see above; the bytes after the last line
//! end of IMAP literal data wait for the next line end, which a client always sends without
//! waiting for the server). An over-long line (more than `max_line_length` bytes
//! without a line end) that is not refused is passed through and ends inspection.

use std::collections::VecDeque;
use std::fmt;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;

use crate::line::{contains_ci, content_len, is_imap_tag, trailing_literal, trim_blanks};
use crate::Protocol;

/// Bytes inspected after which the watcher stops (at the next point where nothing is held).
pub const INSPECT_LIMIT: usize = 16 * 1024;

/// Longest login name recorded, in bytes.
pub const MAX_USER: usize = 256;

/// Watches the client's first commands.
pub struct ClientWatch {
    protocol: Protocol,
    max_line_length: usize,
    /// A partial line waiting for its end; never longer than `max_line_length`.
    held: Vec<u8>,
    inspected: usize,
    done: bool,
    user: Option<String>,
    /// Bytes of an IMAP literal or SMTP BDAT chunk still to come.
    data_left: u64,
    data_mode: DataMode,
    /// The user name arriving as an IMAP literal (at most `MAX_USER` bytes).
    user_literal: Vec<u8>,
    cmd: Cmd,
    /// Dropping the rest of an over-long refused line.
    discard_line: bool,
    /// The login name of the authentication command the client is sending (not yet
    /// confirmed by the backend; a name, never a password).
    pending_user: Option<String>,
    /// Commands whose backend reply is awaited, oldest first: POP3 and SMTP every command
    /// line (replies come in order), IMAP only the authentication commands (matched by tag).
    /// At most [`MAX_IN_FLIGHT`] entries.
    in_flight: VecDeque<InFlight>,
    /// POP3/SMTP: replies can no longer be matched to commands (an over-long or empty line, a
    /// full queue, an unknown reply line); from then on no login is confirmed.
    lost: bool,
    /// POP3/SMTP: the last reply was a SASL continuation, so the next line answers it.
    sasl_open: bool,
    /// The backend confirmed authentication (or greeted with IMAP `PREAUTH`).
    confirmed: bool,
    /// The backend's reply line being read.
    reply: ReplyReader,
    /// Strict mode (see [`ClientWatch::strict`]).
    strict: bool,
    /// Strict mode: passing the rest of an over-long line; keeps its last bytes to see
    /// whether it announces a literal.
    passing_line: Option<Vec<u8>>,
    /// Strict mode, IMAP: how many bytes at the start of `held` are literal data (the start
    /// of a line as the backend would read it had it refused the literal).
    held_literal: usize,
    /// Strict mode, IMAP: passing literal data up to the next line end unchecked (the
    /// shadow line was over-long).
    shadow_passing: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DataMode {
    Pass,
    /// Pass, and record as the user name.
    CaptureUser,
    Drop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmd {
    /// The next line starts a command.
    New,
    /// The next line continues an IMAP command after a literal.
    Continue,
    /// The next line continues an IMAP LOGIN after a literal.
    Login,
    /// The next line continues a refused IMAP command; it is dropped.
    Refused,
    /// The next line is a SASL client response.
    Sasl(Mech),
    /// SMTP message text after `DATA`, up to the line `.`.
    Body,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mech {
    Plain,
    LoginUser,
    LoginPassword,
    XOAuth2,
    OAuthBearer,
    /// A mechanism whose exchange is not understood: responses pass, nothing is captured,
    /// the backend's final reply ends it.
    Unknown,
}

/// A command sent to the backend whose reply is awaited.
#[derive(Debug)]
struct InFlight {
    /// IMAP: the command's tag (at most [`MAX_TAG`] bytes); empty for POP3/SMTP.
    tag: Vec<u8>,
    kind: Kind,
    /// The login name this command authenticates as, once the client has sent it all.
    user: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Other,
    /// POP3 `USER`: a failure forgets the name.
    User,
    /// POP3 command whose `+OK` starts a multi-line reply ending with `.`.
    Multi,
    /// An authentication command: its final success reply confirms the login.
    Auth,
    /// A SASL client response line (POP3/SMTP): confirms only when the backend asked for it.
    Response,
    /// SMTP `DATA`: `354` starts the message text.
    Data,
}

/// The backend's current reply line, kept only as far as needed: its first
/// [`REPLY_HEAD`] bytes (tag and status) and its last [`PASS_TAIL`] bytes (an IMAP literal).
#[derive(Debug, Default)]
struct ReplyReader {
    head: Vec<u8>,
    tail: Vec<u8>,
    /// Bytes of the line so far.
    len: usize,
    /// IMAP literal bytes still to skip.
    literal_left: u64,
    /// IMAP: the line continues a response after a literal (it is not a response start).
    continuation: bool,
    /// POP3: inside a multi-line `+OK` reply, up to the line `.`.
    multi: bool,
    /// At least one line was read (the first is the greeting, when the caller passes it).
    seen_line: bool,
}

impl ClientWatch {
    /// A watcher for `protocol` that holds at most `max_line_length` bytes of a partial line.
    pub fn new(protocol: Protocol, max_line_length: usize) -> Self {
        ClientWatch {
            protocol,
            max_line_length: max_line_length.max(1),
            held: Vec::new(),
            inspected: 0,
            done: false,
            user: None,
            data_left: 0,
            data_mode: DataMode::Pass,
            user_literal: Vec::new(),
            cmd: Cmd::New,
            discard_line: false,
            pending_user: None,
            in_flight: VecDeque::new(),
            lost: false,
            sasl_open: false,
            confirmed: false,
            reply: ReplyReader::default(),
            strict: false,
            passing_line: None,
            held_literal: 0,
            shadow_passing: false,
        }
    }

    /// A watcher in strict mode: inspection ends only once the backend confirmed
    /// authentication (see [`ClientWatch::backend`]), with no byte bound before; an
    /// over-long line is passed through without ending inspection; IMAP literal data is also
    /// checked as the commands it would be had the backend refused the literal. Recommended
    /// when the backend trusts postern's `ID`/`XCLIENT` (`forward_client = "protocol"`). A
    /// session that never authenticates is watched to its end. Held bytes stay bounded by
    /// `max_line_length` (client) and [`REPLY_HEAD`] + [`PASS_TAIL`] (backend) either way.
    pub fn strict(protocol: Protocol, max_line_length: usize) -> Self {
        ClientWatch {
            strict: true,
            ..ClientWatch::new(protocol, max_line_length)
        }
    }

    /// Feeds bytes read from the client. Bytes to pass on to the backend are appended to
    /// `to_backend` (in order, unchanged except refused commands); any reply postern itself
    /// gives the client (a refused command) is appended to `to_client`.
    pub fn feed(&mut self, input: &[u8], to_backend: &mut Vec<u8>, to_client: &mut Vec<u8>) {
        let mut input = input;
        while !input.is_empty() {
            if self.done {
                to_backend.extend_from_slice(input);
                return;
            }
            if self.data_left > 0 && self.shadowed() {
                input = self.shadow_data(input, to_backend, to_client);
            } else if self.data_left > 0 {
                input = self.data(input, to_backend);
            } else if self.passing_line.is_some() {
                input = self.pass_line(input, to_backend);
            } else if self.discard_line {
                let end = memchr::memchr(b'\n', input).map_or(input.len(), |i| i + 1);
                self.inspected = self.inspected.saturating_add(end);
                if end <= input.len() && input[..end].ends_with(b"\n") {
                    self.discard_line = false;
                    self.cmd = Cmd::New;
                }
                input = &input[end..];
            } else {
                input = self.line(input, to_backend, to_client);
            }
            self.check_end();
        }
    }

    /// The login name the backend confirmed (None before its success reply, and for a
    /// mechanism whose name cannot be read).
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Feeds bytes the backend sent toward the client (the relay passes them on unchanged;
    /// this only observes). Lets the watch see the greeting (IMAP `* PREAUTH`: already
    /// authenticated, done) and the outcome of each authentication command: IMAP tagged
    /// OK/NO/BAD for the LOGIN/AUTHENTICATE tag, POP3 `+OK`/`-ERR` to PASS / APOP / AUTH (the
    /// final response after any `+ ` continuations), SMTP `235` / other final codes to AUTH
    /// (`334` is a continuation). On success the pending user becomes [`Self::user`] and the
    /// watch ends as soon as nothing is held; on failure the pending user is dropped and
    /// watching goes on.
    ///
    /// Feed the backend's greeting (also one postern swallows) before any client byte, and
    /// every later backend byte in the order read, interleaved with [`Self::feed`] as the
    /// bytes arrive. Holds at most [`REPLY_HEAD`] + [`PASS_TAIL`] bytes of a reply line; IMAP
    /// literals in the backend's output (`{n}` at a line end) are skipped unread.
    pub fn backend(&mut self, input: &[u8]) {
        let mut input = input;
        while !input.is_empty() && !self.done {
            if self.reply.literal_left > 0 {
                let k = usize::try_from(self.reply.literal_left)
                    .map_or(input.len(), |left| left.min(input.len()));
                self.reply.literal_left -= k as u64;
                input = &input[k..];
                continue;
            }
            match memchr::memchr(b'\n', input) {
                Some(i) => {
                    self.reply.take(&input[..=i]);
                    self.reply_line();
                    input = &input[i + 1..];
                }
                None => {
                    self.reply.take(input);
                    input = &[];
                }
            }
        }
        self.check_end();
    }

    /// True once inspection has ended (the backend confirmed authentication, or the default
    /// mode's bounds were passed): from then on the caller copies bytes in both directions
    /// without calling feed() or backend(). When it turns true, nothing is held.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Passes on whatever partial line is held (the client closed its sending side) and ends
    /// inspection.
    pub fn flush(&mut self, to_backend: &mut Vec<u8>) {
        if !self.discard_line && self.cmd != Cmd::Refused {
            to_backend.extend_from_slice(&self.held);
        }
        scrub(&mut self.held);
        self.done = true;
    }

    /// Bytes held waiting for a line end (bounded by `max_line_length`).
    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    /// Bytes kept of the backend's current reply line (at most [`REPLY_HEAD`] +
    /// [`PASS_TAIL`]), plus the tags of commands in flight (at most 64 of 64 bytes).
    pub fn backend_held_len(&self) -> usize {
        self.reply.head.len()
            + self.reply.tail.len()
            + self.in_flight.iter().map(|e| e.tag.len()).sum::<usize>()
    }

    fn data<'a>(&mut self, input: &'a [u8], to_backend: &mut Vec<u8>) -> &'a [u8] {
        let k = usize::try_from(self.data_left).map_or(input.len(), |left| left.min(input.len()));
        let chunk = &input[..k];
        match self.data_mode {
            DataMode::Pass => to_backend.extend_from_slice(chunk),
            DataMode::CaptureUser => {
                to_backend.extend_from_slice(chunk);
                let room = MAX_USER.saturating_sub(self.user_literal.len());
                self.user_literal.extend_from_slice(&chunk[..room.min(k)]);
            }
            DataMode::Drop => {}
        }
        self.data_left -= k as u64;
        self.inspected = self.inspected.saturating_add(k);
        if self.data_left == 0 && self.data_mode == DataMode::CaptureUser {
            self.pending_user = clean_user(&self.user_literal);
            scrub(&mut self.user_literal);
        }
        &input[k..]
    }

    /// Strict mode, IMAP, a literal being passed: its bytes are also read as lines.
    ///
    /// The watcher cannot see whether the backend accepted a literal; had it refused one
    /// (a tagged reply instead of `+`), the backend reads the "literal" bytes as commands.
    /// So each line of literal data is checked as a command too, and held until its line end
    /// (bounded by `max_line_length`). That never stalls a client: after a literal's bytes a
    /// client always sends on to a line end without waiting for the server. A line that would
    /// be a reserved `ID` is taken as proof the literal was refused: it is answered, dropped,
    /// and the bytes after it are read as commands.
    fn shadowed(&self) -> bool {
        self.strict && self.protocol == Protocol::Imap && self.data_mode != DataMode::Drop
    }

    fn shadow_data<'a>(
        &mut self,
        input: &'a [u8],
        to_backend: &mut Vec<u8>,
        to_client: &mut Vec<u8>,
    ) -> &'a [u8] {
        let k = usize::try_from(self.data_left).map_or(input.len(), |left| left.min(input.len()));
        let chunk = &input[..k];
        if self.data_mode == DataMode::CaptureUser {
            let room = MAX_USER.saturating_sub(self.user_literal.len());
            self.user_literal.extend_from_slice(&chunk[..room.min(k)]);
        }
        let mut pos = 0;
        while let Some(i) = memchr::memchr(b'\n', &chunk[pos..]) {
            let piece = &chunk[pos..pos + i + 1];
            pos += i + 1;
            if std::mem::take(&mut self.shadow_passing) {
                to_backend.extend_from_slice(piece);
                continue;
            }
            let mut line = std::mem::take(&mut self.held);
            line.extend_from_slice(piece);
            self.held_literal = 0;
            // A shadow line longer than the limit is judged on its first `max_line_length`
            // bytes, like an over-long line (the same bytes whatever the read sizes).
            let over_long = line.len() > self.max_line_length;
            let judged = if over_long {
                &line[..self.max_line_length]
            } else {
                &line[..content_len(&line)]
            };
            if let Some(reply) = self.shadow_refusal(judged, over_long) {
                scrub(&mut line);
                return self.literal_refused(reply, &input[pos..], pos, to_client);
            }
            to_backend.extend_from_slice(&line);
            scrub(&mut line);
        }
        let rest = &chunk[pos..];
        if self.shadow_passing {
            to_backend.extend_from_slice(rest);
        } else if self.held.len() + rest.len() > self.max_line_length {
            let mut start = self.line_start(rest);
            let refusal = self.shadow_refusal(&start, true);
            scrub(&mut start);
            if let Some(reply) = refusal {
                self.discard_line = true;
                return self.literal_refused(reply, &input[k..], k, to_client);
            }
            to_backend.extend_from_slice(&self.held);
            to_backend.extend_from_slice(rest);
            scrub(&mut self.held);
            self.held_literal = 0;
            self.shadow_passing = true;
        } else {
            self.held.extend_from_slice(rest);
            self.held_literal += rest.len();
        }
        self.data_left -= k as u64;
        self.inspected = self.inspected.saturating_add(k);
        if self.data_left == 0 {
            if self.data_mode == DataMode::CaptureUser {
                self.pending_user = clean_user(&self.user_literal);
                scrub(&mut self.user_literal);
            }
            if std::mem::take(&mut self.shadow_passing) {
                // The over-long line goes on past the literal: pass it to its end.
                self.passing_line = Some(Vec::new());
            }
        }
        &input[k..]
    }

    /// A shadow line showed the backend refused the literal: answer, drop the line, and read
    /// what follows (`after`, at `consumed` bytes into the input) as commands.
    fn literal_refused<'a>(
        &mut self,
        reply: Vec<u8>,
        after: &'a [u8],
        consumed: usize,
        to_client: &mut Vec<u8>,
    ) -> &'a [u8] {
        to_client.extend_from_slice(&reply);
        scrub(&mut self.held);
        scrub(&mut self.user_literal);
        self.held_literal = 0;
        self.shadow_passing = false;
        self.data_left = 0;
        self.cmd = Cmd::New;
        self.inspected = self.inspected.saturating_add(consumed);
        after
    }

    /// The first `max_line_length` bytes of the line made of `held` and then `tail`: what an
    /// over-long line is judged on, the same bytes however the line was split into reads.
    fn line_start(&self, tail: &[u8]) -> Vec<u8> {
        let mut start = self.held.clone();
        let room = self.max_line_length.saturating_sub(start.len());
        start.extend_from_slice(&tail[..tail.len().min(room)]);
        start
    }

    /// Strict mode: the rest of an over-long line goes through unread.
    fn pass_line<'a>(&mut self, input: &'a [u8], to_backend: &mut Vec<u8>) -> &'a [u8] {
        let end = memchr::memchr(b'\n', input).map_or(input.len(), |i| i + 1);
        let chunk = &input[..end];
        to_backend.extend_from_slice(chunk);
        self.inspected = self.inspected.saturating_add(end);
        let Some(tail) = self.passing_line.as_mut() else {
            return &input[end..];
        };
        tail.extend_from_slice(chunk);
        let excess = tail.len().saturating_sub(PASS_TAIL);
        tail.drain(..excess);
        if chunk.ends_with(b"\n") {
            let mut tail = self.passing_line.take().unwrap_or_default();
            self.after_over_long_line(&tail);
            scrub(&mut tail);
        }
        &input[end..]
    }

    /// Strict mode: an over-long line has passed; `tail` is its end, terminator included.
    fn after_over_long_line(&mut self, tail: &[u8]) {
        let literal = match self.protocol {
            Protocol::Imap => trailing_literal(&tail[..content_len(tail)]),
            _ => None,
        };
        match (self.cmd, literal) {
            (Cmd::Body, _) => {}
            (_, Some(lit)) => {
                self.start_data(lit.len, DataMode::Pass);
                if self.cmd != Cmd::Login {
                    self.cmd = Cmd::Continue;
                }
            }
            (Cmd::Login | Cmd::Sasl(_), None) => self.auth_complete(),
            (_, None) => self.cmd = Cmd::New,
        }
    }

    fn line<'a>(
        &mut self,
        input: &'a [u8],
        to_backend: &mut Vec<u8>,
        to_client: &mut Vec<u8>,
    ) -> &'a [u8] {
        let Some(i) = memchr::memchr(b'\n', input) else {
            if self.held.len() + input.len() > self.max_line_length {
                self.over_long(input, false, to_backend, to_client);
            } else {
                self.held.extend_from_slice(input);
                self.inspected = self.inspected.saturating_add(input.len());
            }
            return &[];
        };
        let (head, rest) = input.split_at(i + 1);
        if self.held.len() + head.len() > self.max_line_length {
            self.over_long(head, true, to_backend, to_client);
            return rest;
        }
        self.inspected = self.inspected.saturating_add(head.len());
        if self.held.is_empty() {
            self.on_line(head, 0, to_backend, to_client);
        } else {
            let literal_prefix = std::mem::take(&mut self.held_literal);
            let mut line = std::mem::take(&mut self.held);
            line.extend_from_slice(head);
            let shadow = if literal_prefix > 0 {
                self.shadow_refusal(&line[..content_len(&line)], false)
            } else {
                None
            };
            match shadow {
                Some(reply) => {
                    to_client.extend_from_slice(&reply);
                    self.cmd = Cmd::New;
                }
                None => self.on_line(&line, literal_prefix, to_backend, to_client),
            }
            scrub(&mut line);
        }
        rest
    }

    /// `held` + `tail` is longer than the limit; `complete` when `tail` ends the line.
    fn over_long(
        &mut self,
        tail: &[u8],
        complete: bool,
        to_backend: &mut Vec<u8>,
        to_client: &mut Vec<u8>,
    ) {
        self.inspected = self.inspected.saturating_add(tail.len());
        if std::mem::take(&mut self.held_literal) > 0 {
            let mut start = self.line_start(tail);
            let shadow = self.shadow_refusal(&start, true);
            scrub(&mut start);
            if let Some(reply) = shadow {
                to_client.extend_from_slice(&reply);
                self.cmd = Cmd::New;
                self.discard_line = !complete;
                scrub(&mut self.held);
                return;
            }
        }
        let refuse = match self.cmd {
            Cmd::Refused => true,
            Cmd::New => {
                let mut start = self.line_start(tail);
                let refusal = self.refusal_truncated(&start);
                scrub(&mut start);
                match refusal {
                    Some(reply) => {
                        to_client.extend_from_slice(&reply);
                        true
                    }
                    None => false,
                }
            }
            _ => false,
        };
        if refuse {
            self.cmd = Cmd::New;
            self.discard_line = !complete;
        } else if self.strict {
            // How many replies an over-long line gets is up to the backend.
            self.lost |= self.protocol != Protocol::Imap;
            to_backend.extend_from_slice(&self.held);
            to_backend.extend_from_slice(tail);
            let keep = tail.len().saturating_sub(PASS_TAIL);
            if complete {
                self.after_over_long_line(&tail[keep..]);
            } else {
                self.passing_line = Some(tail[keep..].to_vec());
            }
        } else {
            to_backend.extend_from_slice(&self.held);
            to_backend.extend_from_slice(tail);
            self.done = true;
        }
        scrub(&mut self.held);
    }

    /// A complete line; its first `skip` bytes are the end of a literal (strict mode), so
    /// they are forwarded but not parsed.
    fn on_line(
        &mut self,
        line: &[u8],
        skip: usize,
        to_backend: &mut Vec<u8>,
        to_client: &mut Vec<u8>,
    ) {
        let end = content_len(line);
        let content = &line[skip.min(end)..end];
        let literal = match self.protocol {
            Protocol::Imap => trailing_literal(content),
            _ => None,
        };
        match self.cmd {
            Cmd::New => self.command(line, content, to_backend, to_client),
            Cmd::Refused => match literal {
                Some(lit) if !lit.sync => self.start_data(lit.len, DataMode::Drop),
                _ => self.cmd = Cmd::New,
            },
            Cmd::Continue | Cmd::Login => {
                to_backend.extend_from_slice(line);
                match literal {
                    // A LOGIN's second literal is the password: passed, never captured.
                    Some(lit) => self.start_data(lit.len, DataMode::Pass),
                    None if self.cmd == Cmd::Login => self.auth_complete(),
                    None => self.cmd = Cmd::New,
                }
            }
            // A SASL response is one base64 token; a line with a blank in it (or a command that
            // must be refused) means the server ended the exchange early, e.g. refused the
            // mechanism, and this is the next command.
            Cmd::Sasl(_)
                if trim_blanks(content).contains(&b' ') || self.refusal(content).is_some() =>
            {
                self.cmd = Cmd::New;
                self.command(line, content, to_backend, to_client);
            }
            Cmd::Sasl(mech) => {
                to_backend.extend_from_slice(line);
                self.push_command(Kind::Response);
                self.sasl_response(mech, content);
            }
            Cmd::Body => {
                to_backend.extend_from_slice(line);
                // `.` ends the text whether the line ends in CRLF or a bare LF: ending at
                // least wherever a lenient backend ends keeps commands from passing unread.
                if content == b"." {
                    self.cmd = Cmd::New;
                    self.push_command(Kind::Other);
                }
            }
        }
    }

    fn command(
        &mut self,
        line: &[u8],
        content: &[u8],
        to_backend: &mut Vec<u8>,
        to_client: &mut Vec<u8>,
    ) {
        let literal = match self.protocol {
            Protocol::Imap => trailing_literal(content),
            _ => None,
        };
        if let Some(reply) = self.refusal(content) {
            to_client.extend_from_slice(&reply);
            if let Some(lit) = literal.filter(|l| !l.sync) {
                self.start_data(lit.len, DataMode::Drop);
                self.cmd = Cmd::Refused;
            }
            return;
        }
        to_backend.extend_from_slice(line);
        if self.protocol != Protocol::Imap {
            if self.sasl_open && self.in_flight.is_empty() {
                // The backend asked for a SASL response (a mechanism or step the watch does
                // not follow, e.g. the empty line after an XOAUTH2 error): this is it.
                return self.push_command(Kind::Response);
            }
            if trim_blanks(content).is_empty() {
                // Servers differ on whether an empty line gets a reply.
                self.lost = true;
                return;
            }
        }
        let (kw, args) = self.keyword(content);
        let kw = kw.to_ascii_uppercase();
        let has_args = args.is_some_and(|a| !trim_blanks(a).is_empty());
        let kind = match (self.protocol, &kw[..]) {
            (Protocol::Imap, _) => Kind::Other,
            (Protocol::Pop3, b"USER") => Kind::User,
            (Protocol::Pop3, b"PASS" | b"APOP") | (_, b"AUTH") if has_args => Kind::Auth,
            (Protocol::Pop3, b"PASS" | b"APOP") => Kind::Auth,
            (Protocol::Pop3, b"CAPA" | b"AUTH" | b"RETR" | b"TOP") => Kind::Multi,
            (Protocol::Pop3, b"LIST" | b"UIDL") if !has_args => Kind::Multi,
            (Protocol::Smtp, b"DATA") => Kind::Data,
            _ => Kind::Other,
        };
        self.push_command(kind);
        match (self.protocol, &kw[..]) {
            (Protocol::Imap, b"LOGIN") => {
                self.push(first_word(content).0, Kind::Auth);
                self.imap_login(args.unwrap_or_default(), literal.map(|l| l.len))
            }
            (Protocol::Imap, b"AUTHENTICATE") if literal.is_none() => {
                self.push(first_word(content).0, Kind::Auth);
                self.sasl_start(args)
            }
            (Protocol::Imap, _) => {
                if let Some(lit) = literal {
                    self.start_data(lit.len, DataMode::Pass);
                    self.cmd = Cmd::Continue;
                }
            }
            (Protocol::Pop3, b"USER") => {
                self.pending_user = clean_user(trim_blanks(args.unwrap_or_default()))
            }
            (Protocol::Pop3, b"PASS") => self.auth_complete(),
            (Protocol::Pop3, b"APOP") => {
                self.pending_user = clean_user(first_word(args.unwrap_or_default()).0);
                self.auth_complete();
            }
            // POP3 `AUTH` alone lists mechanisms (RFC 1734 clients); it is not a login.
            (Protocol::Pop3 | Protocol::Smtp, b"AUTH")
                if args.is_some_and(|a| !trim_blanks(a).is_empty()) =>
            {
                self.sasl_start(args);
            }
            (Protocol::Smtp, b"BDAT") => {
                let size = first_word(args.unwrap_or_default()).0;
                if let Some(n) = parse_u64(size) {
                    self.start_data(n, DataMode::Pass);
                }
            }
            _ => {}
        }
    }

    /// [`Self::refusal`] for the start of an over-long line: an IMAP `ID` is refused whatever
    /// the part seen, since a reserved field could sit past it.
    fn refusal_truncated(&self, start: &[u8]) -> Option<Vec<u8>> {
        self.shadow_refusal(start, true)
            .or_else(|| self.refusal(start))
    }

    /// The refusal of an IMAP `ID` carrying a reserved field or a literal (always, when
    /// `truncated`: the field could sit past the part seen). None for anything else.
    fn shadow_refusal(&self, content: &[u8], truncated: bool) -> Option<Vec<u8>> {
        if self.protocol != Protocol::Imap {
            return None;
        }
        let (kw, args) = self.keyword(content);
        if !kw.eq_ignore_ascii_case(b"ID") {
            return None;
        }
        let args = args.unwrap_or_default();
        let forbidden = truncated
            || trailing_literal(content).is_some()
            || RESERVED_ID_FIELDS.iter().any(|f| contains_ci(args, f));
        let tag = first_word(content).0;
        let tag = String::from_utf8_lossy(if is_imap_tag(tag) { tag } else { b"*" });
        forbidden.then(|| {
            format!("{tag} BAD ID fields reserved to the gateway are not accepted\r\n").into_bytes()
        })
    }

    /// The reply refusing `content` when it must not reach the backend.
    fn refusal(&self, content: &[u8]) -> Option<Vec<u8>> {
        let (kw, _) = self.keyword(content);
        let kw = kw.to_ascii_uppercase();
        match self.protocol {
            Protocol::Imap => {
                let tag = first_word(content).0;
                let tag = String::from_utf8_lossy(if is_imap_tag(tag) { tag } else { b"*" });
                match &kw[..] {
                    b"ID" => self.shadow_refusal(content, false),
                    b"STARTTLS" => {
                        Some(format!("{tag} BAD TLS is already active\r\n").into_bytes())
                    }
                    _ => None,
                }
            }
            Protocol::Pop3 => match &kw[..] {
                b"XCLIENT" => Some(b"-ERR XCLIENT is not accepted from clients\r\n".to_vec()),
                b"STLS" => Some(b"-ERR TLS is already active\r\n".to_vec()),
                _ => None,
            },
            Protocol::Smtp => match &kw[..] {
                b"XCLIENT" => Some(b"550 5.7.0 XCLIENT is not accepted from clients\r\n".to_vec()),
                b"XFORWARD" => {
                    Some(b"550 5.7.0 XFORWARD is not accepted from clients\r\n".to_vec())
                }
                b"STARTTLS" => Some(b"503 5.5.1 TLS is already active\r\n".to_vec()),
                _ => None,
            },
        }
    }

    /// The command keyword and its arguments (IMAP: after the tag), blanks skipped leniently.
    fn keyword<'a>(&self, content: &'a [u8]) -> (&'a [u8], Option<&'a [u8]>) {
        match self.protocol {
            Protocol::Imap => match first_word(content).1 {
                Some(rest) => first_word(rest),
                None => (&[], None),
            },
            _ => first_word(content),
        }
    }

    fn imap_login(&mut self, args: &[u8], literal: Option<u64>) {
        let args = trim_leading_blanks(args);
        let user_is_literal =
            literal.is_some() && args.first() == Some(&b'{') && trailing_literal(args).is_some();
        match literal {
            Some(n) if user_is_literal => {
                self.user_literal.clear();
                self.start_data(n, DataMode::CaptureUser);
                self.cmd = Cmd::Login;
            }
            Some(n) => {
                self.pending_user = clean_user(&astring(args));
                self.start_data(n, DataMode::Pass);
                self.cmd = Cmd::Login;
            }
            None => {
                self.pending_user = clean_user(&astring(args));
                self.auth_complete();
            }
        }
    }

    fn sasl_start(&mut self, args: Option<&[u8]>) {
        let (mech, ir) = first_word(args.unwrap_or_default());
        let ir = ir
            .map(trim_blanks)
            .filter(|ir| !ir.is_empty() && *ir != b"=");
        let mech = match &mech.to_ascii_uppercase()[..] {
            b"PLAIN" => Mech::Plain,
            b"LOGIN" => Mech::LoginUser,
            b"XOAUTH2" => Mech::XOAuth2,
            b"OAUTHBEARER" => Mech::OAuthBearer,
            // Unknown mechanism: its responses pass uncaptured until the backend's reply.
            _ => Mech::Unknown,
        };
        match ir {
            Some(ir) => self.sasl_response(mech, ir),
            None => self.cmd = Cmd::Sasl(mech),
        }
    }

    fn sasl_response(&mut self, mech: Mech, response: &[u8]) {
        let response = trim_blanks(response);
        if response == b"*" {
            self.cmd = Cmd::New;
            self.pending_user = None;
            return;
        }
        match mech {
            Mech::LoginPassword => return self.auth_complete(),
            Mech::Unknown => return,
            _ => {}
        }
        let mut decoded = B64.decode(response).unwrap_or_default();
        let name = match mech {
            Mech::Plain => {
                let mut parts = decoded.split(|&b| b == 0);
                let authzid = parts.next().unwrap_or_default();
                let authcid = parts.next().unwrap_or_default();
                clean_user(if authcid.is_empty() { authzid } else { authcid })
            }
            Mech::LoginUser | Mech::LoginPassword => clean_user(&decoded),
            Mech::XOAuth2 => decoded
                .split(|&b| b == 0x01)
                .find_map(|kv| kv.strip_prefix(b"user="))
                .and_then(clean_user),
            Mech::OAuthBearer => oauthbearer_user(&decoded),
            Mech::Unknown => None,
        };
        scrub(&mut decoded);
        if name.is_some() {
            self.pending_user = name;
        }
        if mech == Mech::LoginUser {
            self.cmd = Cmd::Sasl(Mech::LoginPassword);
        } else {
            self.auth_complete();
        }
    }

    fn start_data(&mut self, len: u64, mode: DataMode) {
        self.data_left = len;
        self.data_mode = mode;
        if len == 0 && mode == DataMode::CaptureUser {
            self.pending_user = None;
        }
    }

    /// The client has sent all of an authentication command: its name goes with the command
    /// in flight, to be confirmed or dropped by the backend's reply.
    fn auth_complete(&mut self) {
        self.cmd = Cmd::New;
        let user = self.pending_user.take();
        if let Some(entry) = self
            .in_flight
            .iter_mut()
            .rev()
            .find(|e| matches!(e.kind, Kind::Auth | Kind::Response))
        {
            entry.user = user;
        }
    }

    /// Records a command line forwarded to the backend (whose reply is now awaited).
    fn push(&mut self, tag: &[u8], kind: Kind) {
        if self.in_flight.len() >= MAX_IN_FLIGHT || tag.len() > MAX_TAG {
            // POP3/SMTP: replies could no longer be counted. IMAP: that login just cannot be
            // confirmed. Either way the watch goes on, which is the safe side.
            self.lost |= self.protocol != Protocol::Imap;
            return;
        }
        self.in_flight.push_back(InFlight {
            tag: tag.to_vec(),
            kind,
            user: None,
        });
    }

    /// POP3/SMTP: a complete client command line went to the backend.
    fn push_command(&mut self, kind: Kind) {
        if self.protocol != Protocol::Imap {
            self.push(&[], kind);
        }
    }

    /// The backend confirmed a login.
    fn confirm(&mut self, user: Option<String>) {
        self.confirmed = true;
        self.user = user;
        self.pending_user = None;
    }

    /// An authentication command failed: a SASL exchange the client still thinks open is over.
    fn auth_failed(&mut self) {
        if matches!(self.cmd, Cmd::Sasl(_)) {
            self.cmd = Cmd::New;
        }
    }

    /// A complete backend line has been read into `self.reply`.
    fn reply_line(&mut self) {
        let r = std::mem::take(&mut self.reply);
        let whole = r.len <= REPLY_HEAD;
        let head = if whole {
            &r.head[..content_len(&r.head)]
        } else {
            &r.head[..]
        };
        match self.protocol {
            Protocol::Imap => {
                if !r.continuation {
                    self.imap_reply(head, !r.seen_line);
                }
                let tail = &r.tail[..content_len(&r.tail)];
                if let Some(lit) = trailing_literal(tail) {
                    self.reply.literal_left = lit.len;
                    self.reply.continuation = true;
                }
            }
            Protocol::Pop3 if r.multi => self.reply.multi = !(whole && head == b"."),
            Protocol::Pop3 => self.pop3_reply(head),
            Protocol::Smtp => self.smtp_reply(head),
        }
        self.reply.seen_line = true;
    }

    fn imap_reply(&mut self, head: &[u8], greeting: bool) {
        if head.starts_with(b"*") {
            let (_, rest) = first_word(head);
            let status = first_word(rest.unwrap_or_default()).0;
            if greeting && status.eq_ignore_ascii_case(b"PREAUTH") {
                self.confirm(None);
            }
            return;
        }
        if head.starts_with(b"+") {
            return; // a continuation request, not a completion
        }
        let (tag, rest) = first_word(head);
        let Some(i) = self.in_flight.iter().position(|e| e.tag == tag) else {
            return;
        };
        let entry = self.in_flight.remove(i);
        let status = first_word(rest.unwrap_or_default()).0;
        match entry {
            Some(e) if status.eq_ignore_ascii_case(b"OK") => self.confirm(e.user),
            _ => self.auth_failed(),
        }
    }

    fn pop3_reply(&mut self, head: &[u8]) {
        let ok = head.len() >= 3 && head[..3].eq_ignore_ascii_case(b"+OK");
        let err = head.len() >= 4 && head[..4].eq_ignore_ascii_case(b"-ERR");
        let more = head == b"+" || head.starts_with(b"+ ");
        let Some(entry) = self.in_flight.pop_front() else {
            return; // the greeting, or a line nothing asked for
        };
        if !(ok || err || more) {
            self.lost = true;
            return;
        }
        if ok && entry.kind == Kind::Multi {
            self.reply.multi = true;
        }
        self.answered(entry, ok, more);
    }

    fn smtp_reply(&mut self, head: &[u8]) {
        let code = head.get(..3).filter(|c| c.iter().all(u8::is_ascii_digit));
        let sep = head.get(3).copied();
        if code.is_some() && sep == Some(b'-') {
            return; // a line of a multi-line reply; its last line (`NNN `) is the reply
        }
        let Some(entry) = self.in_flight.pop_front() else {
            return; // the greeting, or a line nothing asked for
        };
        let Some(code) = code.filter(|_| matches!(sep, None | Some(b' '))) else {
            self.lost = true;
            return;
        };
        match code {
            b"334" => self.answered(entry, false, true),
            b"354" if entry.kind == Kind::Data => {
                // Only now is the client's next line message text (were DATA refused, the
                // backend would read those lines as commands).
                if self.cmd == Cmd::New {
                    self.cmd = Cmd::Body;
                }
            }
            _ => self.answered(entry, code == b"235", false),
        }
    }

    /// POP3/SMTP: `entry` got its reply: a SASL continuation (`more`), a success or a failure.
    fn answered(&mut self, entry: InFlight, success: bool, more: bool) {
        let auth = matches!(entry.kind, Kind::Auth | Kind::Response);
        if more {
            // Only an authentication exchange has continuations.
            if auth {
                self.sasl_open = true;
            } else {
                self.lost = true;
            }
            return;
        }
        // A response line counts only when the backend asked for it: a line the client sent
        // after an AUTH the backend refused at once was a command, whatever the client meant.
        let solicited =
            entry.kind == Kind::Auth || (entry.kind == Kind::Response && self.sasl_open);
        self.sasl_open = false;
        if success && solicited && !self.lost {
            self.confirm(entry.user);
        } else if auth {
            self.auth_failed();
        } else if entry.kind == Kind::User && !success {
            self.pending_user = None;
        }
    }

    fn check_end(&mut self) {
        if self.done
            || !self.held.is_empty()
            || self.discard_line
            || self.passing_line.is_some()
            || self.cmd == Cmd::Refused
        {
            return;
        }
        if self.data_left > 0 && self.data_mode != DataMode::Pass {
            return;
        }
        let past_limit = self.inspected > INSPECT_LIMIT;
        self.done = self.confirmed || (!self.strict && past_limit);
    }
}

impl fmt::Debug for ClientWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Held bytes may be part of a LOGIN line: only their count is shown.
        f.debug_struct("ClientWatch")
            .field("protocol", &self.protocol)
            .field("user", &self.user)
            .field("pending_user", &self.pending_user)
            .field("in_flight", &self.in_flight.len())
            .field("confirmed", &self.confirmed)
            .field("lost", &self.lost)
            .field("held_len", &self.held.len())
            .field("inspected", &self.inspected)
            .field("data_left", &self.data_left)
            .field("data_mode", &self.data_mode)
            .field("cmd", &self.cmd)
            .field("done", &self.done)
            .field("strict", &self.strict)
            .finish_non_exhaustive()
    }
}

/// The first word (up to SP/HTAB, leading blanks skipped) and the rest after one separator.
fn first_word(s: &[u8]) -> (&[u8], Option<&[u8]>) {
    let s = trim_leading_blanks(s);
    match s.iter().position(|&c| c == b' ' || c == b'\t') {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    }
}

fn trim_leading_blanks(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|&c| c != b' ' && c != b'\t')
        .unwrap_or(s.len());
    &s[start..]
}

/// The value of the IMAP astring at the start of `s` (atom or quoted string).
fn astring(s: &[u8]) -> Vec<u8> {
    if let Some(quoted) = s.strip_prefix(b"\"") {
        let mut out = Vec::new();
        let mut escaped = false;
        for &c in quoted {
            match (escaped, c) {
                (false, b'\\') => escaped = true,
                (false, b'"') => break,
                _ => {
                    escaped = false;
                    if out.len() < MAX_USER {
                        out.push(c);
                    }
                }
            }
        }
        out
    } else {
        first_word(s).0.to_vec()
    }
}

/// `a=<user>` from an OAUTHBEARER GS2 header (`n,a=user,...`), `=2C`/`=3D` unescaped.
fn oauthbearer_user(decoded: &[u8]) -> Option<String> {
    let header = decoded.split(|&b| b == 0x01).next()?;
    let value = header
        .split(|&b| b == b',')
        .find_map(|f| f.strip_prefix(b"a="))?;
    let text = String::from_utf8_lossy(value)
        .replace("=2C", ",")
        .replace("=3D", "=");
    clean_user(text.as_bytes())
}

fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// A login name fit for a log line, or None when empty.
fn clean_user(raw: &[u8]) -> Option<String> {
    let raw = &raw[..raw.len().min(MAX_USER)];
    let name: String = String::from_utf8_lossy(raw)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    (!name.is_empty()).then_some(name)
}

/// Zeroes a buffer that may have held a secret, then empties it.
fn scrub(buf: &mut Vec<u8>) {
    buf.fill(0);
    buf.clear();
}

/// Base64 as clients send it: standard alphabet, padding optional.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Bytes kept from the end of an over-long line passed in strict mode, and of a backend
/// reply line (enough for `{n+}`).
pub const PASS_TAIL: usize = 32;

/// Bytes kept from the start of a backend reply line (tag and status).
pub const REPLY_HEAD: usize = 96;

/// Longest IMAP tag of an authentication command whose reply is matched.
const MAX_TAG: usize = 64;

/// Commands awaiting a reply that are tracked; beyond, POP3/SMTP replies are not matched.
const MAX_IN_FLIGHT: usize = 64;

impl ReplyReader {
    fn take(&mut self, chunk: &[u8]) {
        let room = REPLY_HEAD.saturating_sub(self.head.len());
        self.head.extend_from_slice(&chunk[..room.min(chunk.len())]);
        self.tail
            .extend_from_slice(&chunk[chunk.len().saturating_sub(PASS_TAIL)..]);
        let excess = self.tail.len().saturating_sub(PASS_TAIL);
        self.tail.drain(..excess);
        self.len = self.len.saturating_add(chunk.len());
    }
}

/// IMAP ID fields Dovecot trusts from a proxy; a client must not set them.
const RESERVED_ID_FIELDS: &[&[u8]] = &[
    b"x-originating-",
    b"x-connected-",
    b"x-forward-",
    b"x-proxy-ttl",
    b"x-session-",
];

#[cfg(test)]
mod tests;
