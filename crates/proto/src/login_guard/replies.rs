//! The backend's replies: read line by line (IMAP and ManageSieve literals skipped unread),
//! matched to the commands that caused them (IMAP by tag, POP3, SMTP and ManageSieve in
//! order; ManageSieve's in `sieve`), and turned into login
//! outcomes, continuations the tracker waits for, and points where postern's own replies
//! may be written.
//!
//! Whatever a reply cannot be matched to (an SMTP or POP3 reply nothing asked for, a line
//! of neither protocol's form) ends the session: from then on the guard could not tell
//! which client line the backend reads as what.

use std::mem;

use super::claims::GuardClose;
use super::{
    ClientState, Core, Entry, Io, Kind, LineKind, LoginVerdict, ReplyLine, Stream, Tracker, Wait,
    REPLY_HEAD, TAIL,
};
use crate::lex::{
    first_word, split_word, starts_with_ci, strip_eol, strip_prefix_ci, trailing_literal,
    trim_blanks,
};
use crate::Protocol;

impl ReplyLine {
    /// True when the backend stream is between responses (IMAP) or replies (POP3, SMTP).
    pub(super) fn at_boundary(&self) -> bool {
        self.len == 0 && self.literal_left == 0 && !self.continued && !self.multi && !self.more
    }

    fn take(&mut self, chunk: &[u8], head_max: usize) {
        let room = head_max.saturating_sub(self.head.len());
        self.head.extend_from_slice(&chunk[..room.min(chunk.len())]);
        self.tail
            .extend_from_slice(&chunk[chunk.len().saturating_sub(TAIL)..]);
        let excess = self.tail.len().saturating_sub(TAIL);
        self.tail.drain(..excess);
        self.len = self.len.saturating_add(chunk.len());
    }
}

impl Tracker {
    /// Backend bytes, in order: copied to `io.to_client` with postern's replies inserted at
    /// the boundaries where they belong. Returns true when an IMAP session may switch to the
    /// after-login filter: the rest of `input` was copied unread. The switch happens at the
    /// first line end where it may, whatever the read sizes.
    pub(super) fn backend(&mut self, core: &mut Core, mut input: &[u8], io: &mut Io<'_>) -> bool {
        if self.may_hand_over(core) {
            io.to_client.extend_from_slice(input);
            return true;
        }
        while !input.is_empty() {
            if self.reply.literal_left > 0 {
                let k = usize::try_from(self.reply.literal_left)
                    .map_or(input.len(), |left| left.min(input.len()));
                io.to_client.extend_from_slice(&input[..k]);
                self.reply.literal_left -= k as u64;
                input = &input[k..];
                continue;
            }
            if self.plain_lines_pass(core) {
                let used = plain_data_lines(input);
                io.to_client.extend_from_slice(&input[..used]);
                input = &input[used..];
                if input.is_empty() {
                    break;
                }
            }
            // Inside a POP3 multi-line body only `.` matters: keep three bytes of each line.
            let head_max = if self.reply.multi { 3 } else { REPLY_HEAD };
            let end = memchr::memchr(b'\n', input).map_or(input.len(), |i| i + 1);
            self.reply.take(&input[..end], head_max);
            io.to_client.extend_from_slice(&input[..end]);
            let complete = input[..end].ends_with(b"\n");
            input = &input[end..];
            if complete {
                self.reply_line(core, io);
                if self.may_hand_over(core) {
                    io.to_client.extend_from_slice(input);
                    return true;
                }
            }
        }
        false
    }

    /// True when an IMAP untagged data line that announces no literal changes nothing here:
    /// between responses after the greeting, no reply of postern's waiting for a boundary,
    /// and no client bytes that a line end would let go on (parked ones stay blocked).
    /// Such lines are passed over by [`plain_data_lines`] without the per-line reading.
    fn plain_lines_pass(&self, core: &Core) -> bool {
        self.protocol == Protocol::Imap
            && self.reply.greeted
            && self.reply.at_boundary()
            && core.waiting.is_empty()
            && (self.parked.is_empty() || self.blocked(core))
    }

    /// IMAP, logged in, nothing half-read on either side, none of postern's replies waiting.
    fn may_hand_over(&self, core: &Core) -> bool {
        self.protocol == Protocol::Imap
            && core.logged_in
            && core.close.is_none()
            && self.at_rest()
            && self.reply.at_boundary()
            && core.waiting.is_empty()
    }

    fn reply_line(&mut self, core: &mut Core, io: &mut Io<'_>) {
        let whole = self.reply.len <= REPLY_HEAD;
        let mut head = mem::take(&mut self.reply.head);
        let mut tail = mem::take(&mut self.reply.tail);
        self.reply.len = 0;
        {
            let line = if whole { strip_eol(&head) } else { &head[..] };
            match self.protocol {
                Protocol::Imap => self.imap_line(core, line, strip_eol(&tail), io),
                Protocol::Pop3 => self.pop3_line(core, line, whole, io),
                Protocol::Smtp => self.smtp_line(core, line, io),
                Protocol::Sieve => self.sieve_line(core, line, strip_eol(&tail), io),
            }
        }
        if self.protocol != Protocol::Sieve {
            // A ManageSieve greeting is many lines: `sieve_line` knows when it ended.
            self.reply.greeted = true;
        }
        head.clear();
        tail.clear();
        self.reply.head = head;
        self.reply.tail = tail;
        self.release(core, io);
    }

    fn imap_line(&mut self, core: &mut Core, line: &[u8], tail: &[u8], io: &mut Io<'_>) {
        let (first, rest) = split_word(line);
        let (second, args) = rest.map_or((&b""[..], None), split_word);
        let greeting = !self.reply.greeted;
        let continued = mem::take(&mut self.reply.continued);
        let mut data_line = continued;
        if continued {
            // The rest of a response after a literal: no status here.
        } else if first.starts_with(b"+") {
            // `+ text` or a bare `+` (a tag never starts with `+`).
            self.continuation(core, io);
        } else if first == b"*" {
            let status = [&b"OK"[..], b"NO", b"BAD", b"BYE", b"PREAUTH"]
                .iter()
                .any(|s| second.eq_ignore_ascii_case(s));
            data_line = !status;
            if greeting && second.eq_ignore_ascii_case(b"PREAUTH") {
                core.logged_in = true;
            }
            if second.eq_ignore_ascii_case(b"BYE") {
                core.backend_goodbye = true;
            }
            if second.eq_ignore_ascii_case(b"CAPABILITY") {
                self.capabilities(args.unwrap_or_default());
            } else if status {
                self.capability_code(args.unwrap_or_default());
            }
        } else {
            self.capability_code(args.unwrap_or_default());
            if let Some(i) = self
                .in_flight
                .iter()
                .position(|e| *e.tag == *first && !matches!(e.kind, Kind::Own(_)))
            {
                let last = i + 1 == self.in_flight.len();
                if let Some(entry) = self.in_flight.remove(i) {
                    let ok = second.eq_ignore_ascii_case(b"OK");
                    if matches!(entry.kind, Kind::Login | Kind::Auth { .. }) {
                        verdict(core, ok, entry.user);
                    }
                    if last && self.wait.is_some() {
                        // The command the client is waiting on is over: its literal or SASL
                        // response will not come, the next line is a command.
                        self.end_wait();
                    }
                }
            }
        }
        if data_line {
            if let Some(lit) = trailing_literal(tail) {
                self.reply.literal_left = lit.len.unwrap_or(u64::MAX);
                self.reply.continued = true;
            }
        }
    }

    /// IMAP `+`, POP3 `+ `, SMTP `334`: the backend asks for what the client waits to send.
    pub(super) fn continuation(&mut self, core: &mut Core, io: &mut Io<'_>) {
        match self.wait {
            Some(Wait::Literal { len, data }) => {
                self.wait = None;
                match len {
                    Some(n) => self.start_literal(n, data),
                    None => self.close_now(core, GuardClose::CannotFollow, io),
                }
            }
            Some(Wait::Sasl) => {
                self.wait = None;
                let first = match self.in_flight.back() {
                    Some(Entry {
                        kind: Kind::Auth { mech, responses },
                        ..
                    }) => *responses == 0 && mech.name_in_first_response(),
                    _ => false,
                };
                self.window_on = first;
                self.line = LineKind::Command;
                self.start_stream(Stream::SaslResponse, b"");
            }
            // Unsolicited (e.g. an IDLE a backend allowed): nothing waits on it.
            Some(Wait::Data) | None => {}
        }
    }

    /// The awaited answer was a final reply: the client's next line is a command.
    pub(super) fn end_wait(&mut self) {
        self.wait = None;
        self.line = LineKind::Command;
        self.state = ClientState::Line;
        self.id = None;
    }

    fn pop3_line(&mut self, core: &mut Core, line: &[u8], whole: bool, io: &mut Io<'_>) {
        if !self.reply.greeted {
            return;
        }
        if self.reply.multi {
            if whole && line == b"." {
                self.reply.multi = false;
            }
            return;
        }
        let ok = starts_with_ci(line, b"+OK");
        let err = starts_with_ci(line, b"-ERR");
        let more = line == b"+" || line.starts_with(b"+ ");
        let Some(front) = self.in_flight.front() else {
            if err {
                // Dovecot's "-ERR Disconnected for inactivity" before it closes.
                core.backend_goodbye = true;
            } else {
                self.close_now(core, GuardClose::CannotFollow, io);
            }
            return;
        };
        if more {
            let sasl = matches!(front.kind, Kind::Auth { .. })
                && self.in_flight.len() == 1
                && self.wait == Some(Wait::Sasl);
            if sasl {
                self.continuation(core, io);
            } else {
                self.close_now(core, GuardClose::CannotFollow, io);
            }
            return;
        }
        if !(ok || err) {
            return self.close_now(core, GuardClose::CannotFollow, io);
        }
        let Some(entry) = self.in_flight.pop_front() else {
            return;
        };
        match entry.kind {
            Kind::Multi if ok => self.reply.multi = true,
            Kind::User if !ok => self.pop3_user = None,
            Kind::Pass | Kind::Auth { .. } => verdict(core, ok, entry.user),
            Kind::Quit => core.backend_goodbye = true,
            _ => {}
        }
        if self.in_flight.is_empty() && self.wait.is_some() {
            self.end_wait();
        }
    }

    fn smtp_line(&mut self, core: &mut Core, line: &[u8], io: &mut Io<'_>) {
        let code = line.get(..3).filter(|c| c.iter().all(u8::is_ascii_digit));
        let sep = line.get(3).copied();
        let (Some(code), Some(b' ' | b'-') | None) = (code, sep) else {
            return self.close_now(core, GuardClose::CannotFollow, io);
        };
        let text = trim_blanks(line.get(4..).unwrap_or_default());
        let ehlo = matches!(self.in_flight.front(), Some(e) if e.kind == Kind::Ehlo);
        if ehlo && text.eq_ignore_ascii_case(b"CHUNKING") {
            self.caps.chunking_seen = true;
        }
        if sep == Some(b'-') {
            self.reply.more = true;
            return;
        }
        self.reply.more = false;
        if code == b"421" || code == b"221" {
            core.backend_goodbye = true;
        }
        if !self.reply.greeted {
            return;
        }
        let Some(entry) = self.in_flight.pop_front() else {
            // A reply nothing asked for: a goodbye before a close is expected, nothing else.
            if code != b"421" && code != b"221" {
                self.close_now(core, GuardClose::CannotFollow, io);
            }
            return;
        };
        match (&entry.kind, code) {
            (Kind::Auth { .. }, b"334") if self.wait == Some(Wait::Sasl) => {
                // An intermediate reply: the exchange goes on.
                self.in_flight.push_front(entry);
                self.continuation(core, io);
                return;
            }
            (Kind::Auth { .. }, _) => verdict(core, code == b"235", entry.user),
            (Kind::Data, b"354") if self.wait == Some(Wait::Data) => {
                // Only now is the client's next line message text (had DATA been refused,
                // the backend would read those lines as commands).
                self.wait = None;
                self.body_head.clear();
                self.state = ClientState::Stream(Stream::Body);
                return;
            }
            (Kind::Ehlo, _) => self.caps.chunking = mem::take(&mut self.caps.chunking_seen),
            _ => {}
        }
        self.caps.chunking_seen = false;
        if self
            .in_flight
            .iter()
            .all(|e| matches!(e.kind, Kind::Own(_)))
            && self.wait.is_some()
        {
            self.end_wait();
        }
    }

    /// Writes postern's replies whose turn has come, then lets waiting client bytes go on.
    fn release(&mut self, core: &mut Core, io: &mut Io<'_>) {
        if self.reply.at_boundary() {
            match self.protocol {
                Protocol::Imap => io.to_client.append(&mut core.waiting),
                Protocol::Pop3 | Protocol::Smtp | Protocol::Sieve => {
                    while let Some(Entry {
                        kind: Kind::Own(_), ..
                    }) = self.in_flight.front()
                    {
                        if let Some(Entry {
                            kind: Kind::Own(reply),
                            ..
                        }) = self.in_flight.pop_front()
                        {
                            self.own_bytes -= reply.len();
                            io.to_client.extend_from_slice(&reply);
                        }
                    }
                }
            }
        }
        self.resume(core, io);
    }

    /// `[CAPABILITY ...]` at the start of a status response's text.
    fn capability_code(&mut self, text: &[u8]) {
        if let Some(list) = strip_prefix_ci(text, b"[CAPABILITY ") {
            let end = memchr::memchr(b']', list).unwrap_or(list.len());
            self.capabilities(&list[..end]);
        }
    }

    /// A capability list (replaces what was known).
    fn capabilities(&mut self, list: &[u8]) {
        self.caps.literal_plus = false;
        self.caps.literal_minus = false;
        let mut rest = list;
        while !rest.is_empty() {
            let (atom, after) = first_word(rest);
            if atom.eq_ignore_ascii_case(b"LITERAL+") {
                self.caps.literal_plus = true;
            } else if atom.eq_ignore_ascii_case(b"LITERAL-") {
                self.caps.literal_minus = true;
            }
            rest = after.unwrap_or_default();
        }
    }
}

/// Records a login outcome.
pub(super) fn verdict(core: &mut Core, ok: bool, user: Option<String>) {
    if ok {
        core.logged_in = true;
        core.user.clone_from(&user);
        core.verdicts.push_back(LoginVerdict::LoggedIn { user });
    } else {
        core.verdicts.push_back(LoginVerdict::Failed { user });
    }
}

/// The length of the run of whole IMAP untagged data lines at the start of `input` (one
/// `memchr` pass for the line ends): lines `* <word> ...` whose second word is no status or
/// `CAPABILITY` (what [`Tracker::imap_line`] reads), that end in no `}` (no literal) and fit
/// [`REPLY_HEAD`]. Every other line, and an unterminated last one, is left to the per-line
/// path.
fn plain_data_lines(input: &[u8]) -> usize {
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', input) {
        let line = &input[start..=end];
        if line.len() > REPLY_HEAD || !is_plain_data_line(strip_eol(line)) {
            break;
        }
        start = end + 1;
    }
    start
}

fn is_plain_data_line(content: &[u8]) -> bool {
    let Some(rest) = content.strip_prefix(b"* ") else {
        return false;
    };
    if content.last() == Some(&b'}') {
        return false;
    }
    // `* 1 FETCH`, `* 3 EXISTS`: a number is no keyword.
    if rest.first().is_some_and(u8::is_ascii_digit) {
        return true;
    }
    let (second, _) = split_word(rest);
    ![&b"OK"[..], b"NO", b"BAD", b"BYE", b"PREAUTH", b"CAPABILITY"]
        .iter()
        .any(|k| second.eq_ignore_ascii_case(k))
}
