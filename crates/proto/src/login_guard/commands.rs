//! What each client command is, per protocol, and what the guard does with it: pass it on
//! (and await its reply), refuse it, follow its literal or SASL exchange, assemble its `ID`.
//!
//! Keywords are read by [`crate::lex::keyword`] (any case, after leading blanks and control
//! bytes, up to the first byte that is not a letter or digit), wider than any server reads
//! them, so the guard refuses whatever a lenient server might execute.

use super::claims::{GuardClose, Refused};
use super::id::IdAssembly;
use super::sasl::{clean_user, imap_login_user, SaslMech};
use super::{Core, Data, Entry, Io, Kind, LineKind, RestOf, Stream, Tracker, Wait, MAX_TAG};
use crate::lex::{
    first_word, is_imap_tag, keyword, parse_u64, trailing_literal, trim_blanks,
    trim_leading_blanks, Literal,
};
use crate::Protocol;

use super::framing::Plan;

/// What the start of an over-long command line shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Head {
    /// IMAP `ID`: held up to its own bound.
    Id,
    /// `AUTHENTICATE`/`AUTH` with an initial response: streamed.
    Sasl,
    Other,
}

impl Tracker {
    /// Classifies the start of an over-long command line.
    pub(super) fn head_kind(&self, head: &[u8]) -> Head {
        let rest = match self.protocol {
            Protocol::Imap => {
                let Some(sp) = memchr::memchr(b' ', head) else {
                    return Head::Other;
                };
                if sp > MAX_TAG || !is_imap_tag(&head[..sp]) {
                    return Head::Other;
                }
                &head[sp + 1..]
            }
            Protocol::Pop3 | Protocol::Smtp | Protocol::Sieve => head,
        };
        let (kw, args) = keyword(rest);
        let kw = kw.to_ascii_uppercase();
        let sasl = match self.protocol {
            Protocol::Imap | Protocol::Sieve => &kw[..] == b"AUTHENTICATE",
            Protocol::Pop3 | Protocol::Smtp => &kw[..] == b"AUTH",
        };
        if self.protocol == Protocol::Imap && &kw[..] == b"ID" {
            return Head::Id;
        }
        if sasl {
            // A mechanism name, then a blank: what follows is the initial response.
            let (mech, ir) = first_word(args);
            if !mech.is_empty() && ir.is_some() {
                return Head::Sasl;
            }
        }
        Head::Other
    }

    /// A complete command segment (`seg` with its line end, `content` without).
    pub(super) fn command(&mut self, core: &mut Core, seg: &[u8], content: &[u8], io: &mut Io) {
        match self.protocol {
            Protocol::Imap => self.imap_command(core, seg, content, true, io),
            Protocol::Pop3 => self.pop3_command(core, seg, content, true, io),
            Protocol::Smtp => self.smtp_command(core, seg, content, true, io),
            Protocol::Sieve => self.sieve_command(core, seg, content, true, io),
        }
    }

    /// The start of an over-long `AUTHENTICATE`/`AUTH` line: passed on, its rest streamed.
    pub(super) fn command_head(&mut self, core: &mut Core, head: &[u8], io: &mut Io<'_>) {
        match self.protocol {
            Protocol::Imap => self.imap_command(core, head, head, false, io),
            Protocol::Pop3 => self.pop3_command(core, head, head, false, io),
            Protocol::Smtp => self.smtp_command(core, head, head, false, io),
            Protocol::Sieve => self.sieve_command(core, head, head, false, io),
        }
    }

    fn imap_command(
        &mut self,
        core: &mut Core,
        seg: &[u8],
        content: &[u8],
        complete: bool,
        io: &mut Io<'_>,
    ) {
        if content.iter().all(|&c| c == b' ' || c == b'\t') {
            // An empty line: no command, no reply to await.
            io.to_backend.extend_from_slice(seg);
            return;
        }
        let lit = if complete {
            trailing_literal(content)
        } else {
            None
        };
        let sp = memchr::memchr(b' ', content);
        let tag = &content[..sp.unwrap_or(content.len())];
        if tag.len() > MAX_TAG || !is_imap_tag(tag) {
            self.refuse(core, Refused::InvalidTag, b"*", io);
            return self.refused_literal(core, lit, io);
        }
        if self.in_flight.iter().any(|e| *e.tag == *tag) {
            // Its reply could not be told from the other command's.
            self.refuse(core, Refused::TagInUse, tag, io);
            return self.refused_literal(core, lit, io);
        }
        let after_tag = sp.map_or(&b""[..], |i| &content[i + 1..]);
        let (kw, args) = keyword(after_tag);
        let args_at = content.len() - args.len();
        match &kw.to_ascii_uppercase()[..] {
            b"ID" => {
                self.id = Some(Box::new(IdAssembly::new(tag, &seg[args_at..])));
                self.id_step(core, lit, io);
            }
            b"STARTTLS" => {
                self.refuse(core, Refused::Starttls, tag, io);
                self.refused_literal(core, lit, io);
            }
            b"COMPRESS" if !core.logged_in => {
                self.refuse(core, Refused::CompressBeforeLogin, tag, io);
                self.refused_literal(core, lit, io);
            }
            b"AUTHENTICATE" if !first_word(args).0.is_empty() => {
                self.sasl_start(core, tag, args, seg, lit, complete, io)
            }
            b"LOGIN" => self.imap_forward(core, tag, Kind::Login, seg, args, lit, io),
            _ => self.imap_forward(core, tag, Kind::Other, seg, args, lit, io),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn imap_forward(
        &mut self,
        core: &mut Core,
        tag: &[u8],
        kind: Kind,
        seg: &[u8],
        args: &[u8],
        lit: Option<Literal>,
        io: &mut Io<'_>,
    ) {
        let plan = self.literal_plan(lit);
        if plan == Plan::Unsupported {
            self.refuse(core, Refused::NonSyncLiteral, tag, io);
            return self.refused_literal(core, lit, io);
        }
        io.to_backend.extend_from_slice(seg);
        let rest = if kind == Kind::Login {
            RestOf::Login
        } else {
            RestOf::Other
        };
        let mut entry = Entry::new(tag, kind);
        let mut data = Data::Pass;
        if rest == RestOf::Login {
            // The user is the first argument: a literal (its bytes follow) or a string here.
            if trim_leading_blanks(args).starts_with(b"{") && plan != Plan::None {
                data = Data::CaptureUser;
            } else {
                entry.user = imap_login_user(args);
            }
        }
        self.push(entry);
        self.follow_literal(core, rest, lit, data, io);
    }

    /// `AUTHENTICATE`/`AUTH mech [initial-response]`; `complete` is false for the start of an
    /// over-long line (its rest is streamed).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn sasl_start(
        &mut self,
        core: &mut Core,
        tag: &[u8],
        args: &[u8],
        seg: &[u8],
        lit: Option<Literal>,
        complete: bool,
        io: &mut Io<'_>,
    ) {
        if self.literal_plan(lit) == Plan::Unsupported {
            self.refuse(core, Refused::NonSyncLiteral, tag, io);
            return self.refused_literal(core, lit, io);
        }
        let (mech_name, ir) = first_word(args);
        let sieve = self.protocol == Protocol::Sieve;
        let mech = if sieve {
            // ManageSieve names the mechanism with a string: `"PLAIN"`.
            SaslMech::parse(super::sieve::unquote(mech_name))
        } else {
            SaslMech::parse(mech_name)
        };
        let ir = ir.map(trim_leading_blanks).filter(|ir| !ir.is_empty());
        io.to_backend.extend_from_slice(seg);
        let responses = u8::from(ir.is_some());
        self.push(Entry::new(tag, Kind::Auth { mech, responses }));
        self.window_on = ir.is_some() && mech.name_in_first_response();
        // A ManageSieve initial response sent as a literal: the name is in its bytes.
        let ir_literal = sieve && complete && lit.is_some();
        if self.window_on && !ir_literal {
            self.window.feed(ir.unwrap_or_default());
        }
        if !complete {
            return self.start_stream(Stream::SaslCommand, seg);
        }
        if ir_literal && self.window_on {
            return self.follow_literal(core, RestOf::Auth, lit, Data::Sasl, io);
        }
        self.finish_window();
        if matches!(self.protocol, Protocol::Imap | Protocol::Sieve) {
            self.follow_literal(core, RestOf::Auth, lit, Data::Pass, io);
        } else {
            self.wait = Some(Wait::Sasl);
        }
    }

    fn pop3_command(
        &mut self,
        core: &mut Core,
        seg: &[u8],
        content: &[u8],
        complete: bool,
        io: &mut Io<'_>,
    ) {
        if content.iter().all(|&c| c <= b' ') {
            return self.refuse(core, Refused::EmptyLine, b"", io);
        }
        let (kw, args) = keyword(content);
        let has_args = !trim_blanks(args).is_empty();
        let kind = match &kw.to_ascii_uppercase()[..] {
            b"XCLIENT" => return self.refuse(core, Refused::Xclient, b"", io),
            b"STLS" => return self.refuse(core, Refused::Starttls, b"", io),
            b"AUTH" if has_args => {
                return self.sasl_start(core, b"", args, seg, None, complete, io);
            }
            b"USER" => {
                self.pop3_user = clean_user(trim_blanks(args));
                let mut e = Entry::new(b"", Kind::User);
                e.user = self.pop3_user.clone();
                e
            }
            b"PASS" => {
                let mut e = Entry::new(b"", Kind::Pass);
                e.user = self.pop3_user.clone();
                e
            }
            b"APOP" => {
                let mut e = Entry::new(b"", Kind::Pass);
                e.user = clean_user(first_word(args).0);
                e
            }
            b"AUTH" | b"CAPA" | b"RETR" | b"TOP" => Entry::new(b"", Kind::Multi),
            b"LIST" | b"UIDL" if !has_args => Entry::new(b"", Kind::Multi),
            b"QUIT" => Entry::new(b"", Kind::Quit),
            _ => Entry::new(b"", Kind::Other),
        };
        io.to_backend.extend_from_slice(seg);
        self.push(kind);
    }

    fn smtp_command(
        &mut self,
        core: &mut Core,
        seg: &[u8],
        content: &[u8],
        complete: bool,
        io: &mut Io<'_>,
    ) {
        if content.iter().all(|&c| c <= b' ') {
            return self.refuse(core, Refused::EmptyLine, b"", io);
        }
        let (kw, args) = keyword(content);
        let has_args = !trim_blanks(args).is_empty();
        let kind = match &kw.to_ascii_uppercase()[..] {
            b"XCLIENT" => return self.refuse(core, Refused::Xclient, b"", io),
            b"XFORWARD" => return self.refuse(core, Refused::Xforward, b"", io),
            b"STARTTLS" => return self.refuse(core, Refused::Starttls, b"", io),
            b"AUTH" if has_args => {
                return self.sasl_start(core, b"", args, seg, None, complete, io);
            }
            b"BDAT" => return self.bdat(core, seg, args, io),
            b"DATA" => {
                io.to_backend.extend_from_slice(seg);
                self.push(Entry::new(b"", Kind::Data));
                self.wait = Some(Wait::Data);
                return;
            }
            b"EHLO" | b"HELO" => Kind::Ehlo,
            b"QUIT" => Kind::Quit,
            _ => Kind::Other,
        };
        io.to_backend.extend_from_slice(seg);
        self.push(Entry::new(b"", kind));
    }

    /// `BDAT size [LAST]`: the chunk follows the line at once, whatever the reply.
    fn bdat(&mut self, core: &mut Core, seg: &[u8], args: &[u8], io: &mut Io<'_>) {
        let Some(n) = parse_u64(first_word(args).0) else {
            // Neither side could find where the next command starts.
            return self.close(core, GuardClose::CannotFollow, io);
        };
        let refused = if !core.logged_in {
            // A backend without CHUNKING would read the chunk as commands.
            Some(Refused::BdatBeforeAuth)
        } else if !self.caps.chunking {
            Some(Refused::BdatWithoutChunking)
        } else {
            None
        };
        match refused {
            Some(r) => {
                self.refuse(core, r, b"", io);
                self.start_literal(n, Data::Drop);
            }
            None => {
                io.to_backend.extend_from_slice(seg);
                self.push(Entry::new(b"", Kind::Other));
                self.start_literal(n, Data::Pass);
            }
        }
        self.line = LineKind::Command;
    }
}
