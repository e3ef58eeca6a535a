//! Client bytes into command line segments, literal data and streamed lines; waiting for
//! the backend's answer before reading on; postern's own replies and the session's end.
//!
//! A segment is a line, or the part of one up to a literal announcement (`{n}` / `{n+}` and
//! the line end). It is held until complete (bounded: `max_line_length`, or
//! [`MAX_ID_COMMAND`] for an `ID`), then decided on as a whole, so the decision never
//! depends on how the bytes were split into reads. SASL data lines and SMTP message text
//! are streamed instead: they are never refused, and may be long.

use std::mem;

use super::claims::{GuardClose, Refused, LITERAL_GO_AHEAD};
use super::id::{IdAssembly, IdStep};
use super::sasl::{clean_user, scrub, MAX_USER};
use super::{
    ClientState, Core, Data, Entry, Io, Kind, LineKind, RestOf, Stream, Tracker, Wait,
    MAX_ID_COMMAND, MAX_IN_FLIGHT, MAX_OWN_BACKLOG, MAX_SASL_LINE, TAIL,
};
use crate::lex::{strip_eol, trailing_literal, Literal};
use crate::Protocol;

/// How a literal announced at the end of a forwarded segment is followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Plan {
    /// No literal: the segment ends the command.
    None,
    /// Synchronizing: wait for the backend's `+` or its tagged reply.
    Sync(Option<u64>),
    /// Non-synchronizing and advertised: the bytes follow at once.
    NonSync(u64),
    /// Non-synchronizing but not advertised (or of unreadable length): the backend would not
    /// read it as a literal.
    Unsupported,
}

impl Tracker {
    pub(super) fn new(protocol: Protocol, max_line: usize) -> Self {
        Tracker {
            protocol,
            max_line,
            held: Vec::new(),
            parked: Vec::new(),
            state: ClientState::Line,
            line: LineKind::Command,
            wait: None,
            long_id: false,
            eof: false,
            id: None,
            window: Default::default(),
            window_on: false,
            user_literal: Vec::new(),
            tail: Vec::new(),
            streamed: 0,
            body_head: Vec::new(),
            pop3_user: None,
            reply: Default::default(),
            in_flight: Default::default(),
            own_bytes: 0,
            own_unwritten: 0,
            caps: Default::default(),
        }
    }

    /// Client bytes: processed as far as possible, the rest parked until the backend answers.
    pub(super) fn client(&mut self, core: &mut Core, input: &[u8], io: &mut Io<'_>) {
        if core.close.is_some() {
            return;
        }
        if !self.parked.is_empty() || self.blocked(core) {
            self.parked.extend_from_slice(input);
            return;
        }
        let rest = self.run(core, input, io);
        self.parked.extend_from_slice(rest);
    }

    /// Processes parked client bytes once nothing blocks them any more.
    pub(super) fn resume(&mut self, core: &mut Core, io: &mut Io<'_>) {
        if self.parked.is_empty() || self.blocked(core) {
            return;
        }
        let mut parked = mem::take(&mut self.parked);
        let keep = self.run(core, &parked, io).to_vec();
        scrub(&mut parked);
        self.parked = keep;
        if self.eof && self.parked.is_empty() {
            scrub(&mut self.held);
        }
    }

    /// The client's EOF: a partial line is dropped now or once the parked bytes are read.
    pub(super) fn client_eof(&mut self) {
        self.eof = true;
        if self.parked.is_empty() {
            scrub(&mut self.held);
        }
    }

    /// True while client bytes must wait: for a backend answer, for replies to be written,
    /// or for commands in flight to be answered.
    pub(super) fn blocked(&self, core: &Core) -> bool {
        self.wait.is_some()
            || self.in_flight.len() >= MAX_IN_FLIGHT
            || core.waiting.len() + self.own_bytes + self.own_unwritten > MAX_OWN_BACKLOG
    }

    /// True when nothing of the client's stream is half-read (IMAP may switch to the
    /// after-login filter).
    pub(super) fn at_rest(&self) -> bool {
        self.state == ClientState::Line
            && self.line == LineKind::Command
            && self.held.is_empty()
            && self.parked.is_empty()
            && self.wait.is_none()
            && self.id.is_none()
    }

    pub(super) fn drop_client_bytes(&mut self) {
        scrub(&mut self.held);
        scrub(&mut self.parked);
        scrub(&mut self.user_literal);
        self.id = None;
        self.wait = None;
        self.state = ClientState::Line;
        self.line = LineKind::Command;
    }

    pub(super) fn held_len(&self) -> usize {
        self.held.len()
            + self.parked.len()
            + self.id.as_ref().map_or(0, |id| id.len())
            + self.user_literal.len()
            + self.window.len()
            + self.tail.len()
    }

    pub(super) fn backend_held_len(&self) -> usize {
        self.reply.head.len()
            + self.reply.tail.len()
            + self.own_bytes
            + self
                .in_flight
                .iter()
                .map(|e| e.tag.len() + e.user.as_ref().map_or(0, String::len))
                .sum::<usize>()
    }

    fn run<'a>(&mut self, core: &mut Core, mut input: &'a [u8], io: &mut Io<'_>) -> &'a [u8] {
        while !input.is_empty() {
            if core.close.is_some() {
                return &[];
            }
            if self.blocked(core) {
                return input;
            }
            input = match self.state {
                ClientState::Line => self.line_bytes(core, input, io),
                ClientState::Literal { left, data } => self.literal_bytes(left, data, input, io),
                ClientState::Stream(kind) => self.stream_bytes(core, kind, input, io),
            };
        }
        input
    }

    fn line_bytes<'a>(&mut self, core: &mut Core, input: &'a [u8], io: &mut Io<'_>) -> &'a [u8] {
        let end = memchr::memchr(b'\n', input).map_or(input.len(), |i| i + 1);
        let limit = self.segment_limit();
        if self.held.len() + end > limit {
            return self.over_long(core, input, limit, io);
        }
        self.held.extend_from_slice(&input[..end]);
        if input[..end].ends_with(b"\n") {
            let mut seg = mem::take(&mut self.held);
            self.segment(core, &seg, io);
            scrub(&mut seg);
        }
        &input[end..]
    }

    fn segment_limit(&self) -> usize {
        match (self.line, &self.id) {
            (LineKind::Rest(RestOf::Id), Some(id)) => id.room(),
            (LineKind::Command, _) if self.long_id => MAX_ID_COMMAND,
            _ => self.max_line,
        }
    }

    /// The segment being held would pass `limit` without a line end. The decision is taken
    /// on exactly its first `limit` bytes, however they arrived.
    fn over_long<'a>(
        &mut self,
        core: &mut Core,
        input: &'a [u8],
        limit: usize,
        io: &mut Io<'_>,
    ) -> &'a [u8] {
        let room = limit.saturating_sub(self.held.len()).min(input.len());
        self.held.extend_from_slice(&input[..room]);
        let rest = &input[room..];
        match self.line {
            LineKind::Command if !self.long_id => match self.head_kind(&self.held) {
                super::commands::Head::Id => {
                    self.long_id = true;
                    rest
                }
                super::commands::Head::Sasl => {
                    let mut head = mem::take(&mut self.held);
                    self.command_head(core, &head, io);
                    scrub(&mut head);
                    if self.state != ClientState::Stream(Stream::SaslCommand) {
                        // Refused (a tag in use...): its rest cannot be told from commands.
                        self.close(core, GuardClose::LineTooLong, io);
                        return &[];
                    }
                    rest
                }
                super::commands::Head::Other => {
                    self.close(core, GuardClose::LineTooLong, io);
                    &[]
                }
            },
            LineKind::Command | LineKind::Rest(RestOf::Id) => {
                let tag = self.held.split(|&b| b == b' ').next().unwrap_or_default();
                let reply = match &self.id {
                    Some(id) => id.too_long(),
                    None => IdAssembly::new(tag, b"").too_long(),
                };
                self.own_reply(core, reply, io);
                self.count_claim(core, io);
                self.close(core, GuardClose::LineTooLong, io);
                &[]
            }
            LineKind::Rest(_) => {
                self.close(core, GuardClose::LineTooLong, io);
                &[]
            }
        }
    }

    fn segment(&mut self, core: &mut Core, seg: &[u8], io: &mut Io<'_>) {
        let content = strip_eol(seg);
        match self.line {
            LineKind::Command => {
                self.long_id = false;
                self.command(core, seg, content, io);
            }
            LineKind::Rest(rest) => self.rest(core, rest, seg, content, io),
        }
    }

    /// A further segment of an IMAP command, after a literal.
    fn rest(&mut self, core: &mut Core, rest: RestOf, seg: &[u8], content: &[u8], io: &mut Io) {
        let lit = trailing_literal(content);
        match rest {
            RestOf::Refused => self.refused_literal(core, lit, io),
            RestOf::Id => {
                if let Some(id) = self.id.as_mut() {
                    id.push(seg);
                }
                self.id_step(core, lit, io);
            }
            RestOf::Other | RestOf::Login | RestOf::Auth => {
                if self.literal_plan(lit) == Plan::Unsupported {
                    // Half the command is with the backend already: it cannot be refused now.
                    return self.close(core, GuardClose::CannotFollow, io);
                }
                io.to_backend.extend_from_slice(seg);
                self.follow_literal(core, rest, lit, Data::Pass, io);
            }
        }
    }

    fn literal_bytes<'a>(
        &mut self,
        left: u64,
        data: Data,
        input: &'a [u8],
        io: &mut Io,
    ) -> &'a [u8] {
        let k = usize::try_from(left).map_or(input.len(), |l| l.min(input.len()));
        let chunk = &input[..k];
        match data {
            Data::Pass => io.to_backend.extend_from_slice(chunk),
            Data::CaptureUser => {
                io.to_backend.extend_from_slice(chunk);
                let room = MAX_USER.saturating_sub(self.user_literal.len());
                self.user_literal
                    .extend_from_slice(&chunk[..room.min(chunk.len())]);
            }
            Data::Sasl => {
                io.to_backend.extend_from_slice(chunk);
                self.window.feed(chunk);
            }
            Data::Drop => {}
            Data::Id => {
                if let Some(id) = self.id.as_mut() {
                    id.push(chunk);
                }
            }
        }
        let left = left - k as u64;
        if left == 0 {
            self.literal_done(data);
        } else {
            self.state = ClientState::Literal { left, data };
        }
        &input[k..]
    }

    fn literal_done(&mut self, data: Data) {
        if data == Data::Sasl {
            self.finish_window();
        }
        if data == Data::CaptureUser {
            let name = clean_user(&self.user_literal);
            scrub(&mut self.user_literal);
            if let Some(e) = self.in_flight.back_mut() {
                e.user = name;
            }
        }
        self.state = ClientState::Line;
    }

    /// Starts a literal of `n` bytes (none: straight back to reading segments).
    pub(super) fn start_literal(&mut self, n: u64, data: Data) {
        if n == 0 {
            self.literal_done(data);
        } else {
            self.state = ClientState::Literal { left: n, data };
        }
    }

    fn stream_bytes<'a>(
        &mut self,
        core: &mut Core,
        kind: Stream,
        input: &'a [u8],
        io: &mut Io<'_>,
    ) -> &'a [u8] {
        let end = memchr::memchr(b'\n', input).map_or(input.len(), |i| i + 1);
        let chunk = &input[..end];
        let complete = chunk.ends_with(b"\n");
        if kind != Stream::Body {
            // Exactly MAX_SASL_LINE bytes pass, however the line was split into reads.
            let allowed = MAX_SASL_LINE.saturating_sub(self.streamed);
            if end > allowed {
                io.to_backend.extend_from_slice(&input[..allowed]);
                self.close(core, GuardClose::LineTooLong, io);
                return &[];
            }
        }
        self.streamed = self.streamed.saturating_add(end);
        io.to_backend.extend_from_slice(chunk);
        if kind == Stream::Body {
            let room = 3usize.saturating_sub(self.body_head.len());
            self.body_head
                .extend_from_slice(&chunk[..room.min(chunk.len())]);
        } else {
            if self.window_on {
                self.window
                    .feed(if complete { strip_eol(chunk) } else { chunk });
            }
            self.tail.extend_from_slice(chunk);
            let excess = self.tail.len().saturating_sub(TAIL);
            self.tail.drain(..excess);
        }
        if complete {
            self.stream_end(core, kind, io);
        }
        &input[end..]
    }

    fn stream_end(&mut self, core: &mut Core, kind: Stream, io: &mut Io<'_>) {
        self.streamed = 0;
        match kind {
            Stream::Body => {
                // `.` ends the text whether the line ends in CRLF or a bare LF: ending at least
                // wherever a lenient backend ends keeps commands from passing unread (T13).
                let end = matches!(&self.body_head[..], b".\n" | b".\r\n");
                self.body_head.clear();
                if end {
                    self.push(Entry::new(b"", Kind::Other));
                    self.state = ClientState::Line;
                }
            }
            Stream::SaslResponse => {
                if let Some(Entry {
                    kind: Kind::Auth { responses, .. },
                    ..
                }) = self.in_flight.back_mut()
                {
                    *responses = responses.saturating_add(1);
                }
                let lit = match self.protocol {
                    Protocol::Sieve => trailing_literal(strip_eol(&self.tail)),
                    _ => None,
                };
                scrub(&mut self.tail);
                self.state = ClientState::Line;
                self.line = LineKind::Command;
                if lit.is_some() {
                    // A ManageSieve response sent as a literal: its bytes follow at once and
                    // hold the name (not the announcement the window saw).
                    let data = if self.window_on {
                        // Empties (and zeroes) the window; no name is read.
                        let _ = self.window.finish(super::SaslMech::Other);
                        Data::Sasl
                    } else {
                        Data::Pass
                    };
                    return self.follow_literal(core, RestOf::Auth, lit, data, io);
                }
                self.finish_window();
                self.wait = Some(Wait::Sasl);
            }
            Stream::SaslCommand => {
                self.finish_window();
                let tail = mem::take(&mut self.tail);
                let lit = match self.protocol {
                    Protocol::Imap | Protocol::Sieve => trailing_literal(strip_eol(&tail)),
                    Protocol::Pop3 | Protocol::Smtp => None,
                };
                self.state = ClientState::Line;
                if self.literal_plan(lit) == Plan::Unsupported {
                    return self.close(core, GuardClose::CannotFollow, io);
                }
                self.follow_literal(core, RestOf::Auth, lit, Data::Pass, io);
            }
        }
    }

    /// The SASL data passed on has ended: the name it carried goes with the exchange.
    pub(super) fn finish_window(&mut self) {
        if !mem::take(&mut self.window_on) {
            return;
        }
        let mech = match self.in_flight.back() {
            Some(Entry {
                kind: Kind::Auth { mech, .. },
                ..
            }) => *mech,
            _ => return,
        };
        if self.protocol == Protocol::Sieve {
            // ManageSieve sends SASL data as strings: `"base64"`.
            self.window.unquote();
        }
        let name = self.window.finish(mech);
        if let (Some(name), Some(e)) = (name, self.in_flight.back_mut()) {
            e.user = Some(name);
        }
    }

    /// Starts streaming a line of `kind`; `start` is what of it has been read already.
    pub(super) fn start_stream(&mut self, kind: Stream, start: &[u8]) {
        self.streamed = start.len();
        self.tail.clear();
        self.tail
            .extend_from_slice(&start[start.len().saturating_sub(TAIL)..]);
        self.state = ClientState::Stream(kind);
    }

    /// How the literal announced at the end of a segment would be read by the backend.
    pub(super) fn literal_plan(&self, lit: Option<Literal>) -> Plan {
        let Some(lit) = lit else {
            return Plan::None;
        };
        if self.protocol == Protocol::Sieve {
            return super::sieve::literal_plan(lit);
        }
        if lit.sync {
            return Plan::Sync(lit.len);
        }
        if !lit.delimited {
            // `x{5+}`: no token of its own, a server may read it as an atom; the bytes after
            // the line end are then commands, and the guard reads them as such.
            return Plan::None;
        }
        match lit.len {
            Some(n) if self.caps.literal_plus || (self.caps.literal_minus && n <= 4096) => {
                Plan::NonSync(n)
            }
            _ => Plan::Unsupported,
        }
    }

    /// A forwarded IMAP segment announced `lit` (or none): follow it.
    pub(super) fn follow_literal(
        &mut self,
        core: &mut Core,
        rest: RestOf,
        lit: Option<Literal>,
        data: Data,
        io: &mut Io<'_>,
    ) {
        match self.literal_plan(lit) {
            Plan::None => {
                self.line = LineKind::Command;
                if rest == RestOf::Auth {
                    self.wait = Some(Wait::Sasl);
                }
            }
            Plan::Sync(len) => {
                self.line = LineKind::Rest(rest);
                self.wait = Some(Wait::Literal { len, data });
            }
            Plan::NonSync(n) => {
                self.line = LineKind::Rest(rest);
                self.start_literal(n, data);
            }
            Plan::Unsupported => self.close(core, GuardClose::CannotFollow, io),
        }
    }

    /// postern refused a command whose segment announced `lit`: the client's next bytes.
    pub(super) fn refused_literal(&mut self, core: &mut Core, lit: Option<Literal>, io: &mut Io) {
        self.line = LineKind::Command;
        // ManageSieve has no go-ahead: the bytes of `{n}` follow as those of `{n+}` do.
        let sieve = self.protocol == Protocol::Sieve;
        let Some(lit) = lit.filter(|l| (!l.sync || sieve) && l.delimited) else {
            // No literal, or a synchronizing one: the client got a tagged reply instead of
            // `+` and sends no literal bytes.
            return;
        };
        match lit.len {
            Some(n) => {
                self.line = LineKind::Rest(RestOf::Refused);
                self.start_literal(n, Data::Drop);
            }
            None => self.close(core, GuardClose::CannotFollow, io),
        }
    }

    /// An `ID` segment has ended (its bytes are in the assembly).
    pub(super) fn id_step(&mut self, core: &mut Core, lit: Option<Literal>, io: &mut Io<'_>) {
        let Some(id) = self.id.as_mut() else {
            return;
        };
        match id.segment_end(lit) {
            IdStep::Literal { n, go_ahead } => {
                if go_ahead {
                    self.own_reply(core, LITERAL_GO_AHEAD.to_vec(), io);
                }
                self.line = LineKind::Rest(RestOf::Id);
                self.start_literal(n, Data::Id);
            }
            IdStep::Forward(command) => {
                self.id = None;
                self.line = LineKind::Command;
                io.to_backend.extend_from_slice(&command);
                let tag = command.split(|&b| b == b' ').next().unwrap_or_default();
                self.push(Entry::new(tag, Kind::Other));
            }
            IdStep::Refuse {
                reply,
                drop,
                cannot_follow,
            } => {
                self.id = None;
                self.line = LineKind::Command;
                self.own_reply(core, reply, io);
                self.count_claim(core, io);
                if cannot_follow {
                    self.close(core, GuardClose::CannotFollow, io);
                } else if let Some(n) = drop {
                    self.line = LineKind::Rest(RestOf::Refused);
                    self.start_literal(n, Data::Drop);
                }
            }
        }
    }

    /// Refuses a command with postern's reply `r` (counted when it is an address claim).
    pub(super) fn refuse(&mut self, core: &mut Core, r: Refused, tag: &[u8], io: &mut Io<'_>) {
        let reply = r.reply(self.protocol, tag);
        self.own_reply(core, reply, io);
        if r.is_claim() {
            self.count_claim(core, io);
        }
    }

    pub(super) fn count_claim(&mut self, core: &mut Core, io: &mut Io<'_>) {
        core.refused_claims = core.refused_claims.saturating_add(1);
        if core.refused_claims >= super::MAX_REFUSED_CLAIMS {
            self.close(core, GuardClose::TooManyClaims, io);
        }
    }

    /// Ends the session: the goodbye goes after everything before it; nothing more is read.
    pub(super) fn close(&mut self, core: &mut Core, why: GuardClose, io: &mut Io<'_>) {
        if core.close.is_some() {
            return;
        }
        self.own_reply(core, why.goodbye(self.protocol).to_vec(), io);
        core.close = Some(why);
        self.drop_client_bytes();
    }

    /// Ends the session at once, because the backend's replies can no longer be matched to
    /// commands: postern's queued replies and the goodbye go out now (the caller has just
    /// read a complete backend line).
    pub(super) fn close_now(&mut self, core: &mut Core, why: GuardClose, io: &mut Io<'_>) {
        if core.close.is_some() {
            return;
        }
        io.to_client.append(&mut core.waiting);
        for e in self.in_flight.drain(..) {
            if let Kind::Own(reply) = e.kind {
                io.to_client.extend_from_slice(&reply);
            }
        }
        self.own_bytes = 0;
        io.to_client.extend_from_slice(why.goodbye(self.protocol));
        core.close = Some(why);
        self.drop_client_bytes();
    }

    /// postern's reply to the client: now, when the backend stream is at a point where it
    /// may go and nothing of postern's waits before it, else queued (IMAP: for the next line
    /// boundary; POP3/SMTP: behind the replies to earlier commands).
    pub(super) fn own_reply(&mut self, core: &mut Core, reply: Vec<u8>, io: &mut Io<'_>) {
        match self.protocol {
            Protocol::Imap => {
                if core.waiting.is_empty() && self.reply.at_boundary() {
                    self.own_unwritten += reply.len();
                    io.to_client.extend_from_slice(&reply);
                } else {
                    core.waiting.extend_from_slice(&reply);
                }
            }
            Protocol::Pop3 | Protocol::Smtp | Protocol::Sieve => {
                if self.in_flight.is_empty() && self.reply.at_boundary() {
                    self.own_unwritten += reply.len();
                    io.to_client.extend_from_slice(&reply);
                } else {
                    self.own_bytes += reply.len();
                    self.in_flight.push_back(Entry::new(b"", Kind::Own(reply)));
                }
            }
        }
    }

    /// Records a command sent to the backend.
    pub(super) fn push(&mut self, entry: Entry) {
        self.in_flight.push_back(entry);
    }
}

impl Entry {
    pub(super) fn new(tag: &[u8], kind: Kind) -> Self {
        Entry {
            tag: tag.into(),
            kind,
            user: None,
        }
    }
}
