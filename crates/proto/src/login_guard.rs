//! The login guard: every client byte of a session passes it on its way to the backend, and
//! it reads the backend's replies. It reports each login outcome the backend gives (the name
//! tried, never a password), and it makes sure no client-supplied address claim reaches a
//! backend that trusts postern's own address (rule T12 of docs/starttls.md), in any
//! spelling, at any point of the session.
//!
//! # Invariants
//! - **Claims never pass.** IMAP `ID` fields reserved to a trusted proxy ([`RESERVED_ID_PREFIXES`]:
//!   which and why), POP3 `XCLIENT`, SMTP `XCLIENT` and `XFORWARD` are refused with the protocol's
//!   error and never forwarded: before login and after it (IMAP's after-login filter,
//!   POP3's and SMTP's guard for the whole session), until an IMAP `COMPRESS` turns the
//!   stream into deflate. After [`MAX_REFUSED_CLAIMS`] refused claims the session ends.
//! - **The backend's bytes decide, never a guess.** Each command's reply is matched to the
//!   command: IMAP by tag (a command reusing the tag of one still in progress is refused, so
//!   no reply can be taken for another's), POP3 and SMTP in order. Where a command's meaning
//!   depends on the backend's answer (a synchronizing literal, a SASL step, SMTP `DATA`), the
//!   guard reads no further client byte until that answer came, as a conforming client waits
//!   for it anyway. A login counts as confirmed only on the backend's success reply to it.
//! - **Decoded the way servers decode, or refused.** IMAP strings (quoted with escapes,
//!   literals `{n}`/`{n+}`), keywords in any case after any leading blanks, a non-synchronizing
//!   literal only when the backend advertised LITERAL+ (or LITERAL- up to 4096 bytes); an `ID`
//!   reaches the backend only re-encoded from what the guard decoded. What the guard cannot
//!   follow (a length it cannot read, a reply it cannot match) ends the session with the
//!   protocol's error instead of leaving it unwatched.
//! - **Bounded.** At most one command line segment is held (`max_line_length`, an `ID` up to
//!   [`MAX_ID_COMMAND`]), plus client bytes waiting for a backend answer (the caller stops
//!   reading while [`LoginGuard::wants_client`] is false, so at most one read), 1 KiB of a
//!   backend line, 64 commands in flight, 4 KiB of postern's own replies. SASL lines are
//!   passed on as they come (up to [`MAX_SASL_LINE`]), keeping only the start to read the name.
//! - **Secrets stay out.** Held bytes that may hold a password are zeroed once processed,
//!   decoded SASL data is zeroed, `Debug` shows lengths only, verdicts carry names only.
//!
//! # Module map
//! - `framing`: client bytes into lines, literals and streamed lines; waiting for answers.
//! - `commands`: what each command is, per protocol, and what the guard does with it.
//! - `replies`: reading the backend's replies and matching them to commands.
//! - `imap_string`: IMAP string and literal decoding.
//! - `id`: `ID` commands: reserved fields, decoding, the canonical form sent on.
//! - `sasl`: login names from login commands and SASL responses (also a public API).
//! - `post_login`: the cheap literal-skipping filter of an IMAP session after login.
//! - `claims`: postern's refusal texts and goodbyes.
//!
//! # What `max_line_length` covers
//! Every client command line the guard holds before deciding what to do with it (terminator
//! included, literal data excluded): all POP3 and SMTP command lines for the whole session,
//! IMAP command lines before login. A longer line ends the session with the protocol's
//! error (the guard cannot know how a backend would split it). Not covered: `ID` (bounded
//! by [`MAX_ID_COMMAND`]: RFC 2971's largest ID must pass), SASL data lines (`AUTHENTICATE`,
//! `AUTH` and their responses, bounded by [`MAX_SASL_LINE`]: OAuth tokens and Kerberos
//! tickets run to many kilobytes), literal data, SMTP message text, IMAP after login.

pub(crate) mod claims;
mod commands;
mod framing;
pub(crate) mod id;
mod imap_string;
mod post_login;
mod replies;
pub(crate) mod sasl;
pub(crate) mod sieve;

use std::collections::VecDeque;
use std::fmt;

pub use claims::GuardClose;
pub use id::{is_reserved_id_field, MAX_ID_COMMAND, RESERVED_ID_FIELDS, RESERVED_ID_PREFIXES};
pub use sasl::{
    imap_login_user, login_line, sasl_plain_identities, sasl_response_name, LoginLine, SaslMech,
    MAX_USER,
};

use crate::Protocol;
use id::IdAssembly;
use post_login::PostLogin;
use sasl::NameWindow;

/// Refused address claims after which the guard ends the session (the claim that reaches
/// it is answered, then the goodbye follows). Three: a client that a misconfigured webmail
/// makes send a claim in every session still works; a client that keeps trying is cut off
/// before it can queue much.
pub const MAX_REFUSED_CLAIMS: u32 = 3;

/// Longest SASL data line (an `AUTHENTICATE`/`AUTH` line with its initial response, or a
/// response line) passed on; a longer one ends the session.
pub const MAX_SASL_LINE: usize = 64 * 1024;

/// Bytes of postern's own replies the guard queues before it stops taking client bytes.
pub const MAX_OWN_BACKLOG: usize = 4096;

/// Longest IMAP tag of a pre-login command; a longer one is refused.
pub const MAX_TAG: usize = 64;

/// Commands whose replies are awaited at once; beyond, the guard waits for replies.
pub const MAX_IN_FLIGHT: usize = 64;

/// Bytes kept from the start of a backend line (tag, status, a capability list).
pub const REPLY_HEAD: usize = 1024;

/// Bytes kept from the end of a line to read a literal announcement.
const TAIL: usize = 32;

/// The outcome of one login attempt, as the backend gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoginVerdict {
    /// The backend accepted the login. `user` is the name the client logged in as, when
    /// the mechanism shows it.
    LoggedIn {
        /// The login name, if readable.
        user: Option<String>,
    },
    /// The backend refused a login attempt (IMAP `NO`/`BAD` to LOGIN/AUTHENTICATE, POP3
    /// `-ERR` to PASS/APOP/AUTH, SMTP `4xx`/`5xx` to AUTH).
    Failed {
        /// The name tried, if readable (never a password).
        user: Option<String>,
    },
}

/// Whether the guard wrote the bytes to pass on, or the caller passes its input unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Passed {
    /// Nothing was written to the output: pass the input on as it is.
    Unchanged,
    /// The bytes to pass on were written to the output (possibly none).
    Written,
}

/// Watches one session's client commands and backend replies (see the module docs).
pub struct LoginGuard {
    core: Core,
    stage: Stage,
}

/// What every stage shares: the protocol, outcomes, postern's replies waiting for a point
/// where they may be written.
struct Core {
    protocol: Protocol,
    verdicts: VecDeque<LoginVerdict>,
    logged_in: bool,
    user: Option<String>,
    refused_claims: u32,
    close: Option<GuardClose>,
    /// IMAP: postern's replies waiting for the backend stream to reach a line boundary.
    waiting: Vec<u8>,
    /// The backend said goodbye (IMAP `* BYE`, POP3 reply to `QUIT` or an unsolicited
    /// `-ERR`, SMTP `221`/`421`).
    backend_goodbye: bool,
}

enum Stage {
    /// Everything tracked: IMAP before login, POP3, SMTP and ManageSieve for the whole session.
    Full(Box<Tracker>),
    /// IMAP after login: client bytes only, literal-skipping.
    ImapPostLogin(Box<PostLogin>),
    /// IMAP after `COMPRESS`: nothing readable is left.
    Off,
}

/// The output of one call: bytes for each side.
struct Io<'a> {
    to_backend: &'a mut Vec<u8>,
    to_client: &'a mut Vec<u8>,
}

impl LoginGuard {
    /// A guard for a new session of `protocol`; `max_line_length` bounds held command lines
    /// (see the module docs; at least 512).
    pub fn new(protocol: Protocol, max_line_length: usize) -> Self {
        LoginGuard {
            core: Core {
                protocol,
                verdicts: VecDeque::new(),
                logged_in: false,
                user: None,
                refused_claims: 0,
                close: None,
                waiting: Vec::new(),
                backend_goodbye: false,
            },
            stage: Stage::Full(Box::new(Tracker::new(protocol, max_line_length.max(512)))),
        }
    }

    /// Bytes read from the client. The bytes to pass to the backend go to `to_backend`
    /// (or, when [`Passed::Unchanged`] is returned, they are `input` itself); postern's own
    /// replies that may be written now go to `to_client`, after everything the backend sent
    /// so far. Call only while [`Self::wants_client`] (or with the bytes already read).
    pub fn client(
        &mut self,
        input: &[u8],
        to_backend: &mut Vec<u8>,
        to_client: &mut Vec<u8>,
    ) -> Passed {
        let mut io = Io {
            to_backend,
            to_client,
        };
        match &mut self.stage {
            Stage::Full(t) => {
                t.client(&mut self.core, input, &mut io);
                Passed::Written
            }
            Stage::ImapPostLogin(p) => p.client(&mut self.core, input, &mut io),
            Stage::Off => Passed::Unchanged,
        }
    }

    /// Bytes read from the backend, in order, before they are written to the client (the
    /// greeting first, also one postern swallows). The bytes to write to the client go to
    /// `to_client`, with postern's own replies inserted where they belong (or, when
    /// [`Passed::Unchanged`] is returned, `input` goes on as it is); client bytes the guard
    /// was holding until this answer go to `to_backend`.
    pub fn backend(
        &mut self,
        input: &[u8],
        to_client: &mut Vec<u8>,
        to_backend: &mut Vec<u8>,
    ) -> Passed {
        match &mut self.stage {
            Stage::Full(t) => {
                let mut io = Io {
                    to_backend,
                    to_client,
                };
                if t.backend(&mut self.core, input, &mut io) {
                    self.stage = Stage::ImapPostLogin(Box::default());
                }
                Passed::Written
            }
            Stage::ImapPostLogin(_) | Stage::Off => Passed::Unchanged,
        }
    }

    /// True while the guard reads the backend's bytes; after an IMAP login it no longer
    /// does, and the caller may skip [`Self::backend`] (it would pass everything unchanged)
    /// and instead call [`Self::replies_at_boundary`] at response boundaries.
    pub fn reads_backend(&self) -> bool {
        matches!(self.stage, Stage::Full(_))
    }

    /// IMAP after login: the backend stream is at a response boundary (the caller knows it
    /// from [`crate::imap_state::ImapState`]), so postern's waiting replies go to `to_client`.
    pub fn replies_at_boundary(&mut self, to_client: &mut Vec<u8>) {
        if !self.reads_backend() {
            to_client.append(&mut self.core.waiting);
        }
    }

    /// True while the backend stream is inside a literal (or the rest of the line after
    /// one) of a stage that reads it: a line start there is data, no place for a goodbye.
    pub fn backend_in_literal(&self) -> bool {
        match &self.stage {
            Stage::Full(t) => t.reply.literal_left > 0 || t.reply.continued,
            Stage::ImapPostLogin(_) | Stage::Off => false,
        }
    }

    /// True when postern has replies waiting for a point where they may be written.
    pub fn has_waiting_replies(&self) -> bool {
        !self.core.waiting.is_empty()
    }

    /// False while the guard holds client bytes it cannot process yet (waiting for the
    /// backend's answer, replies queued, too many commands in flight) or is ending the
    /// session: the caller should not read the client until it turns true again (it may,
    /// after a call to [`Self::backend`]).
    pub fn wants_client(&self) -> bool {
        self.core.close.is_none()
            && match &self.stage {
                Stage::Full(t) => t.parked.is_empty() && !t.blocked(&self.core),
                Stage::ImapPostLogin(_) | Stage::Off => true,
            }
    }

    /// The protocol this guard reads.
    pub fn protocol(&self) -> Protocol {
        self.core.protocol
    }

    /// The next login outcome, in the order the backend gave them.
    pub fn next_verdict(&mut self) -> Option<LoginVerdict> {
        let verdict = self.core.verdicts.pop_front();
        if verdict.is_some() && self.core.verdicts.is_empty() {
            // Verdicts come once or twice a session: an idle session keeps no grown queue.
            self.core.verdicts = VecDeque::new();
        }
        verdict
    }

    /// True once the backend confirmed a login (or greeted with IMAP `PREAUTH`).
    pub fn logged_in(&self) -> bool {
        self.core.logged_in
    }

    /// The name of the confirmed login, when the mechanism shows it.
    pub fn user(&self) -> Option<&str> {
        self.core.user.as_deref()
    }

    /// Address claims refused so far.
    pub fn refused_claims(&self) -> u32 {
        self.core.refused_claims
    }

    /// Why the guard is ending the session, once it is.
    pub fn closing(&self) -> Option<GuardClose> {
        self.core.close
    }

    /// True when the guard ended the session and its goodbye has been handed out: write what
    /// `to_client` holds, then close both sides.
    pub fn finished(&self) -> bool {
        self.core.close.is_some()
            && self.core.waiting.is_empty()
            && match &self.stage {
                Stage::Full(t) => t.own_bytes == 0,
                _ => true,
            }
    }

    /// True once the backend said goodbye (so a reset that follows is a close, not a failure).
    pub fn backend_said_goodbye(&self) -> bool {
        self.core.backend_goodbye
    }

    /// The backend accepted IMAP `COMPRESS`: nothing after it is readable, the guard stops.
    pub fn compressed(&mut self) {
        self.stage = Stage::Off;
    }

    /// The client closed its sending side: an incomplete command is dropped (zeroed), never
    /// passed on. Complete commands still waiting for a backend answer go on as it comes
    /// (pass the EOF on once [`Self::holds_client_bytes`] is false).
    pub fn client_eof(&mut self) {
        match &mut self.stage {
            Stage::Full(t) => t.client_eof(),
            Stage::ImapPostLogin(p) => p.drop_client_bytes(),
            Stage::Off => {}
        }
    }

    /// The caller wrote every reply the guard handed it in `to_client` (the client took
    /// them): client bytes parked behind them are processed now, like after a backend
    /// answer. The bytes to pass on go to `to_backend`, postern's new replies to `to_client`
    /// (write them, then call this again). Cheap when nothing was handed out.
    pub fn own_replies_written(&mut self, to_backend: &mut Vec<u8>, to_client: &mut Vec<u8>) {
        if let Stage::Full(t) = &mut self.stage {
            if t.own_unwritten == 0 {
                return;
            }
            t.own_unwritten = 0;
            let mut io = Io {
                to_backend,
                to_client,
            };
            t.resume(&mut self.core, &mut io);
        }
    }

    /// True while replies the guard handed out are not known to be written yet.
    pub fn own_replies_unwritten(&self) -> bool {
        matches!(&self.stage, Stage::Full(t) if t.own_unwritten > 0)
    }

    /// True while client bytes wait for a backend answer before they may be passed on.
    pub fn holds_client_bytes(&self) -> bool {
        self.core.close.is_none()
            && match &self.stage {
                Stage::Full(t) => !t.parked.is_empty(),
                _ => false,
            }
    }

    /// Client bytes held (a partial line, an `ID` being assembled, bytes waiting for an
    /// answer); bounded, see the module docs.
    pub fn held_len(&self) -> usize {
        match &self.stage {
            Stage::Full(t) => t.held_len(),
            Stage::ImapPostLogin(p) => p.held_len(),
            Stage::Off => 0,
        }
    }

    /// Bytes kept of the backend's current line, tags and names of commands in flight and
    /// postern's queued replies; bounded, see the module docs.
    pub fn backend_held_len(&self) -> usize {
        self.core.waiting.len()
            + match &self.stage {
                Stage::Full(t) => t.backend_held_len(),
                _ => 0,
            }
    }
}

impl fmt::Debug for LoginGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Held bytes may be part of a LOGIN line: only counts are shown.
        f.debug_struct("LoginGuard")
            .field("protocol", &self.core.protocol)
            .field(
                "stage",
                &match self.stage {
                    Stage::Full(_) => "full",
                    Stage::ImapPostLogin(_) => "imap_post_login",
                    Stage::Off => "off",
                },
            )
            .field("logged_in", &self.core.logged_in)
            .field("user", &self.core.user)
            .field("refused_claims", &self.core.refused_claims)
            .field("close", &self.core.close)
            .field("held_len", &self.held_len())
            .field("backend_held_len", &self.backend_held_len())
            .finish_non_exhaustive()
    }
}

/// The full tracker: client framing and backend reply matching.
struct Tracker {
    protocol: Protocol,
    max_line: usize,
    // ---- client side ----
    /// The line segment being read (up to a literal announcement or the line end).
    held: Vec<u8>,
    /// Client bytes not processed yet (the guard waits for the backend).
    parked: Vec<u8>,
    state: ClientState,
    line: LineKind,
    wait: Option<Wait>,
    /// The command line being read is an IMAP `ID` longer than `max_line`.
    long_id: bool,
    /// The client closed its sending side: what is left of a line once the parked bytes
    /// are processed is dropped.
    eof: bool,
    id: Option<Box<IdAssembly>>,
    /// The start of the SASL data being passed on, to read the name from.
    window: NameWindow,
    window_on: bool,
    /// IMAP `LOGIN` whose user name is a literal: its bytes (at most [`MAX_USER`]).
    user_literal: Vec<u8>,
    /// The last bytes of a streamed line (an IMAP literal announcement at its end).
    tail: Vec<u8>,
    /// Bytes of the streamed line so far.
    streamed: usize,
    /// SMTP message text: the first bytes of the current line (is it `.`?).
    body_head: Vec<u8>,
    /// POP3: the name of the last `USER` sent (the following `PASS` logs in as it).
    pop3_user: Option<String>,
    // ---- backend side ----
    reply: ReplyLine,
    in_flight: VecDeque<Entry>,
    /// Bytes of postern's replies queued in `in_flight` (POP3/SMTP).
    own_bytes: usize,
    /// Bytes of postern's replies handed to the caller to write since it last said they
    /// were written ([`LoginGuard::own_replies_written`]): they count against
    /// [`MAX_OWN_BACKLOG`] too, so one read of short refused commands cannot make a reply
    /// pile of several times its size toward a client that never reads.
    own_unwritten: usize,
    caps: Caps,
}

/// Where in the client's stream the tracker is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientState {
    /// Reading a line segment into `held`.
    Line,
    /// Literal (or BDAT chunk) bytes.
    Literal { left: u64, data: Data },
    /// A line passed on as it comes, up to its end.
    Stream(Stream),
}

/// What becomes of literal bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Data {
    Pass,
    /// Passed, and recorded as the IMAP LOGIN user name.
    CaptureUser,
    /// Passed, and read for the login name (a ManageSieve SASL response sent as a literal).
    Sasl,
    /// Dropped (the command was refused).
    Drop,
    /// Collected into the `ID` being assembled.
    Id,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stream {
    /// The rest of an over-long `AUTHENTICATE`/`AUTH` line (its initial response).
    SaslCommand,
    /// A SASL response line the backend asked for.
    SaslResponse,
    /// A line of SMTP message text.
    Body,
}

/// What the next line segment is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LineKind {
    Command,
    /// The rest of an IMAP command after a literal.
    Rest(RestOf),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RestOf {
    Other,
    Login,
    /// `AUTHENTICATE`: at its end the backend's continuation or final reply is awaited.
    Auth,
    Id,
    /// A refused command: dropped.
    Refused,
}

/// The backend answer the tracker waits for before reading on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    /// IMAP: `+` for a synchronizing literal (then `len` bytes of `data`), or the command's
    /// tagged reply (the literal will not come).
    Literal { len: Option<u64>, data: Data },
    /// A SASL step: a continuation (`+`, `334`) or the final reply.
    Sasl,
    /// SMTP `DATA`: `354` (message text follows) or a refusal.
    Data,
}

/// A command sent to the backend whose reply is awaited, or (POP3/SMTP) postern's own reply
/// waiting for the replies before it.
#[derive(Debug)]
struct Entry {
    /// IMAP tag (at most [`MAX_TAG`] bytes); empty for POP3/SMTP.
    tag: Box<[u8]>,
    kind: Kind,
    /// The login name this command tries, once known.
    user: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Other,
    /// IMAP `LOGIN`.
    Login,
    /// A SASL exchange; `responses` counts the client's responses so far (the initial one
    /// included).
    Auth {
        mech: SaslMech,
        responses: u8,
    },
    /// POP3 `USER`.
    User,
    /// POP3 `PASS` / `APOP`.
    Pass,
    /// POP3 command whose `+OK` starts a multi-line reply.
    Multi,
    /// SMTP `DATA`.
    Data,
    /// SMTP `EHLO`/`HELO` (its reply lists CHUNKING).
    Ehlo,
    Quit,
    /// postern's reply, written when every reply before it was.
    Own(Vec<u8>),
}

/// What the backend advertised, as far as the guard's reading depends on it.
#[derive(Debug, Default)]
struct Caps {
    literal_plus: bool,
    literal_minus: bool,
    chunking: bool,
    /// SMTP: CHUNKING seen in the EHLO reply being read.
    chunking_seen: bool,
}

/// The backend line being read: its start and end, and where the stream stands.
#[derive(Debug, Default)]
struct ReplyLine {
    head: Vec<u8>,
    tail: Vec<u8>,
    /// Bytes of the current line so far.
    len: usize,
    literal_left: u64,
    /// IMAP: the current line continues a response after a literal.
    continued: bool,
    /// POP3: inside a multi-line reply, up to `.`.
    multi: bool,
    /// SMTP: inside a multi-line reply (`NNN-` lines).
    more: bool,
    /// The greeting has been read.
    greeted: bool,
}

#[cfg(test)]
mod tests;
