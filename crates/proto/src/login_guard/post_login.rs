//! The client->backend filter of an IMAP session after login: the same claim rule as
//! before login, at memchr speed.
//!
//! Only line ends and literal announcements matter: each line's first bytes are looked at
//! (at most [`HEAD_MAX`], held only while the keyword is not known yet), literal bytes
//! (`{n}`, `{n+}`, `~{n}`) are passed without being looked at, and a read that holds no `ID`
//! passes unchanged, without a copy. An `ID` command is assembled and checked like before
//! login ([`super::id`]); postern answers its synchronizing literals itself, and its replies
//! wait for a response boundary of the backend stream, which the caller knows from
//! [`crate::imap_state::ImapState`].
//!
//! Limit, documented: after login the filter does not read the backend's replies, so it
//! cannot know whether the backend refused a synchronizing literal (the bytes the client
//! then sends anyway would be commands to the backend). No backend acts on an address claim
//! after login (Dovecot's trusted-proxy `ID` fields are read by imap-login alone); before
//! login, where it matters, the full tracker waits for the backend's answer instead.

use std::mem;

use super::claims::{GuardClose, LITERAL_GO_AHEAD};
use super::id::{IdAssembly, IdStep};
use super::{Core, Io, Passed, MAX_ID_COMMAND, MAX_REFUSED_CLAIMS, TAIL};
use crate::lex::{keyword, strip_eol, trailing_literal};

/// Bytes of a line's start looked at for its keyword (a tag, a SP, `ID`, one more byte).
pub(super) const HEAD_MAX: usize = 128;

#[derive(Debug, Default)]
pub(super) struct PostLogin {
    literal_left: u64,
    literal: Use,
    pos: Pos,
    /// The current line's first bytes while its keyword is not known yet.
    head: Vec<u8>,
    /// The current line's last bytes (a literal announcement at its end).
    tail: Vec<u8>,
    /// The `ID` being assembled, and its current segment.
    id: Option<Box<IdAssembly>>,
    seg: Vec<u8>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Pos {
    /// At the start of a line.
    #[default]
    Start,
    /// Holding the start of a line.
    Head,
    /// Passing the rest of a line.
    Pass,
    /// Assembling an `ID`.
    Id,
    /// Dropping the rest of a refused command.
    Drop,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Use {
    #[default]
    Pass,
    Id,
    Drop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decision {
    NeedMore,
    Pass,
    Id,
}

impl PostLogin {
    pub(super) fn client(&mut self, core: &mut Core, input: &[u8], io: &mut Io<'_>) -> Passed {
        let mut sink = Sink {
            input,
            out: io.to_backend,
            clean: 0,
            diverged: false,
        };
        let mut at = 0;
        while at < input.len() && core.close.is_none() {
            if self.literal_left > 0 {
                let k = usize::try_from(self.literal_left)
                    .map_or(input.len() - at, |l| l.min(input.len() - at));
                match self.literal {
                    Use::Pass => sink.pass(at, at + k),
                    Use::Id => {
                        if let Some(id) = self.id.as_mut() {
                            id.push(&input[at..at + k]);
                        }
                    }
                    Use::Drop => {}
                }
                self.literal_left -= k as u64;
                at += k;
                continue;
            }
            let end = memchr::memchr(b'\n', &input[at..]).map(|i| at + i + 1);
            match self.pos {
                Pos::Start | Pos::Head => {
                    let limit = at + HEAD_MAX.saturating_sub(self.head.len());
                    let upto = end.unwrap_or(input.len()).min(limit);
                    let complete = end.is_some_and(|e| e <= limit) || upto == limit;
                    let decision = if self.head.is_empty() {
                        decide(&input[at..upto], complete)
                    } else {
                        let mut candidate = self.head.clone();
                        candidate.extend_from_slice(&input[at..upto]);
                        decide(&candidate, complete)
                    };
                    match decision {
                        Decision::NeedMore => {
                            self.head.extend_from_slice(&input[at..upto]);
                            self.pos = Pos::Head;
                            at = upto;
                        }
                        Decision::Pass => {
                            // The held start is part of the line: its end may announce a literal.
                            let head = mem::take(&mut self.head);
                            sink.emit(&head);
                            self.tail.clear();
                            push_tail(&mut self.tail, &head);
                            self.pos = Pos::Pass;
                        }
                        Decision::Id => {
                            self.seg = mem::take(&mut self.head);
                            self.pos = Pos::Id;
                        }
                    }
                }
                Pos::Pass | Pos::Drop => {
                    let stop = end.unwrap_or(input.len());
                    if self.pos == Pos::Pass {
                        sink.pass(at, stop);
                    }
                    push_tail(&mut self.tail, &input[at..stop]);
                    at = stop;
                    if end.is_some() {
                        self.line_end();
                    }
                }
                Pos::Id => {
                    let stop = end.unwrap_or(input.len());
                    let room = self
                        .id
                        .as_ref()
                        .map_or(MAX_ID_COMMAND, |id| id.room())
                        .saturating_sub(self.seg.len());
                    if stop - at > room {
                        let reply = match &self.id {
                            Some(id) => id.too_long(),
                            None => IdAssembly::new(tag_of(&self.seg), b"").too_long(),
                        };
                        core.waiting.extend_from_slice(&reply);
                        claim(core);
                        close(core, GuardClose::LineTooLong);
                        break;
                    }
                    self.seg.extend_from_slice(&input[at..stop]);
                    at = stop;
                    if end.is_some() {
                        self.id_segment(core, &mut sink);
                    }
                }
            }
        }
        sink.finish()
    }

    pub(super) fn drop_client_bytes(&mut self) {
        *self = PostLogin::default();
    }

    pub(super) fn held_len(&self) -> usize {
        self.head.len() + self.tail.len() + self.seg.len() + self.id.as_ref().map_or(0, |i| i.len())
    }

    /// A line has ended (passed or dropped): a literal at its end continues the command.
    fn line_end(&mut self) {
        let lit = trailing_literal(strip_eol(&self.tail));
        self.tail.clear();
        match (self.pos, lit) {
            (Pos::Drop, Some(l)) if !l.sync => {
                self.literal = Use::Drop;
                self.literal_left = l.len.unwrap_or(u64::MAX);
            }
            (Pos::Pass, Some(l)) => {
                self.literal = Use::Pass;
                // A length past 64 bits: nothing after it can be read as lines any more.
                self.literal_left = l.len.unwrap_or(u64::MAX);
            }
            _ => self.pos = Pos::Start,
        }
    }

    /// A segment of the `ID` being assembled has ended.
    fn id_segment(&mut self, core: &mut Core, sink: &mut Sink<'_, '_>) {
        let seg = mem::take(&mut self.seg);
        let lit = trailing_literal(strip_eol(&seg));
        let id = match self.id.as_mut() {
            Some(id) => {
                id.push(&seg);
                id
            }
            None => {
                let tag = tag_of(&seg);
                let after_tag = seg.get(tag.len() + 1..).unwrap_or_default();
                let (_, args) = keyword(after_tag);
                self.id.insert(Box::new(IdAssembly::new(
                    tag,
                    &seg[seg.len() - args.len()..],
                )))
            }
        };
        match id.segment_end(lit) {
            IdStep::Literal { n, go_ahead } => {
                if go_ahead {
                    core.waiting.extend_from_slice(LITERAL_GO_AHEAD);
                }
                self.literal = Use::Id;
                self.literal_left = n;
            }
            IdStep::Forward(command) => {
                self.id = None;
                self.pos = Pos::Start;
                sink.emit(&command);
            }
            IdStep::Refuse {
                reply,
                drop,
                cannot_follow,
            } => {
                self.id = None;
                self.pos = Pos::Start;
                core.waiting.extend_from_slice(&reply);
                claim(core);
                if cannot_follow {
                    close(core, GuardClose::CannotFollow);
                } else if let Some(n) = drop {
                    self.pos = Pos::Drop;
                    self.literal = Use::Drop;
                    self.literal_left = n;
                }
            }
        }
    }
}

/// Whether the start of a line shows an `ID` command: `tag SP ID` and a byte that is not
/// a letter or digit (or the line's end).
fn decide(head: &[u8], complete: bool) -> Decision {
    let Some(sp) = memchr::memchr(b' ', head) else {
        return if complete {
            Decision::Pass
        } else {
            Decision::NeedMore
        };
    };
    let (kw, rest) = keyword(&head[sp + 1..]);
    if rest.is_empty() && !complete {
        return Decision::NeedMore;
    }
    if kw.eq_ignore_ascii_case(b"ID") {
        Decision::Id
    } else {
        Decision::Pass
    }
}

fn tag_of(line: &[u8]) -> &[u8] {
    line.split(|&b| b == b' ').next().unwrap_or_default()
}

fn push_tail(tail: &mut Vec<u8>, bytes: &[u8]) {
    tail.extend_from_slice(&bytes[bytes.len().saturating_sub(TAIL)..]);
    let excess = tail.len().saturating_sub(TAIL);
    tail.drain(..excess);
}

fn claim(core: &mut Core) {
    core.refused_claims = core.refused_claims.saturating_add(1);
    if core.refused_claims >= MAX_REFUSED_CLAIMS {
        close(core, GuardClose::TooManyClaims);
    }
}

fn close(core: &mut Core, why: GuardClose) {
    if core.close.is_none() {
        core.waiting.extend_from_slice(why.goodbye(core.protocol));
        core.close = Some(why);
    }
}

/// Output that stays a borrow of the input until something differs.
struct Sink<'a, 'b> {
    input: &'a [u8],
    out: &'b mut Vec<u8>,
    /// `input[..clean]` is exactly what has been passed so far.
    clean: usize,
    diverged: bool,
}

impl Sink<'_, '_> {
    fn pass(&mut self, from: usize, to: usize) {
        if !self.diverged && from == self.clean {
            self.clean = to;
        } else {
            self.diverge();
            self.out.extend_from_slice(&self.input[from..to]);
        }
    }

    fn emit(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.diverge();
            self.out.extend_from_slice(bytes);
        }
    }

    fn diverge(&mut self) {
        if !self.diverged {
            self.out.extend_from_slice(&self.input[..self.clean]);
            self.diverged = true;
        }
    }

    fn finish(mut self) -> Passed {
        if !self.diverged && self.clean == self.input.len() {
            Passed::Unchanged
        } else {
            self.diverge();
            Passed::Written
        }
    }
}
