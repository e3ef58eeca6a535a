//! One direction of an IMAP session, read as it passes: where lines and literals begin and
//! end, and the few facts of a line's head the tracker acts on, in 24 bytes.
//!
//! Nothing of a line is buffered except its tag (the first [`TAG_MAX`] bytes and the length):
//! the second word is matched byte by byte against the handful of [`Kw`]s, and the end of each
//! line segment goes through a small automaton that reads `{n}`, `{n+}` and `~{n}` as they
//! pass. Both give exactly what reading the buffered words and the segment's last 24 bytes
//! gave (the tests compare them with that reader, `super::reference`).

use memchr::memchr;

/// Bytes kept of a line's tag: what lets [`super::ImapState`] fit in 64 bytes. IMAP clients'
/// tags are a few characters (`a1`, `A0042`, MailKit's `A00000001`); a longer `COMPRESS` tag
/// makes the state unknown, and two longer tags that agree in length and kept bytes cannot be
/// told apart ([`Tag::same`] answers `None`).
pub(super) const TAG_MAX: usize = 11;
/// Largest literal followed (1 TiB); a larger one means we no longer understand the stream.
pub(super) const LITERAL_MAX: u64 = 1 << 40;
/// Bytes of a piece the literal automaton reads (its end): a digit run that fills them up to
/// the `}` (and the `+` and CR there are) already reaches the limit [`Stream::literal`] has
/// for that ending, so whatever came before cannot change the answer.
const TAIL_WINDOW: usize = 24;
/// Where the digit count stops: the largest limit [`Stream::literal`] compares it with.
const DIGITS_MAX: u8 = 23;

/// Which side of the session a stream comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    Client,
    Backend,
}

/// Why [`Stream::step`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Event {
    /// Input used up mid-line or mid-literal.
    More,
    /// A logical line (literals included) just ended; its head is still readable.
    Line,
    /// A literal length this tracker refuses to follow.
    Absurd,
}

/// The second words of a line that the tracker acts on (statuses, and the one command).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kw {
    Ok,
    No,
    Bad,
    Bye,
    Preauth,
    Compress,
}

/// Spelling of each [`Kw`], in its order (upper case; words compare case-insensitively).
const KEYWORDS: [&[u8]; 6] = [b"OK", b"NO", b"BAD", b"BYE", b"PREAUTH", b"COMPRESS"];
const ALL_KEYWORDS: u8 = (1 << KEYWORDS.len()) - 1;

/// Where a line's head is: which word is being read, or none is any more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// The tag (first word).
    Tag,
    /// The second word (command or status).
    Word,
    /// The head is known: the rest of the first segment, or a segment after a literal.
    Done,
    /// Passing over a literal's bytes (`Stream::lit` counts them).
    Skip,
}

/// What the end of the current segment can still become on the way to `{n}` `+`? `}` CR?.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tail {
    /// No byte of the segment yet.
    Fresh,
    /// The segment does not end in anything that can become a literal.
    Other,
    /// In a run of digits, or right after a `{`.
    Run,
    /// Digits then `+`.
    Plus,
    /// Digits, maybe `+`, then `}`.
    Close,
    /// The same then a CR.
    CloseCr,
}

const TAILS: [Tail; 6] = [
    Tail::Fresh,
    Tail::Other,
    Tail::Run,
    Tail::Plus,
    Tail::Close,
    Tail::CloseCr,
];
const PHASES: [Phase; 4] = [Phase::Tag, Phase::Word, Phase::Done, Phase::Skip];

/// `Stream::flags` bits.
const SYNC: u8 = 1;
const OPEN: u8 = 1 << 1;
/// The current word's last byte was a CR: it counts only if more of the word follows (a
/// word's one trailing CR is not part of it, as the line terminator's CR is not).
const CR: u8 = 1 << 2;
/// The digit run at the segment's end follows a `{`.
const BRACE: u8 = 1 << 3;
/// The literal at the segment's end has a `+` (non-synchronizing).
const PLUS: u8 = 1 << 4;
const PHASE_SHIFT: u8 = 5;

/// One direction: where we are in the line / literal structure, and the current line's head.
#[derive(Debug, Default)]
pub(super) struct Stream {
    /// In [`Phase::Skip`] the literal bytes still to pass over; otherwise the value of the
    /// digit run ending the segment so far (stopping at `LITERAL_MAX + 1`).
    lit: u64,
    /// The current (or last) line's tag.
    pub(super) tag: Tag,
    /// The [`Kw`]s the line's second word can still be, one bit each.
    kw: u8,
    /// Bytes of the second word matched so far.
    kw_len: u8,
    /// The literal automaton: a [`Tail`] (low 3 bits) and the digits in its run, counted up
    /// to [`DIGITS_MAX`] (one less for a run that starts the segment, see `tail_byte`).
    tail: u8,
    /// [`SYNC`], [`OPEN`], [`CR`], [`BRACE`], [`PLUS`], and the [`Phase`] from `PHASE_SHIFT` up.
    flags: u8,
}

impl Stream {
    /// Consumes `input` up to the end of the next logical line (or all of it); returns the
    /// bytes used and why it stopped.
    pub(super) fn step(&mut self, input: &[u8], side: Side) -> (usize, Event) {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            if rest.is_empty() {
                return (pos, Event::More);
            }
            if self.phase() == Phase::Skip {
                let n = usize::try_from(self.lit).map_or(rest.len(), |s| s.min(rest.len()));
                self.lit -= n as u64;
                self.set(SYNC, false);
                pos += n;
                if self.lit == 0 {
                    self.set_phase(Phase::Done);
                }
                continue;
            }
            if !self.has(OPEN) {
                self.open_line();
            }
            let Some(i) = memchr(b'\n', rest) else {
                self.absorb(rest);
                return (input.len(), Event::More);
            };
            self.absorb(&rest[..i]);
            pos += i + 1;
            self.end_head();
            let literal = if side.literals_allowed(self) {
                self.literal()
            } else {
                Ok(None)
            };
            self.clear_tail();
            match literal {
                Err(Absurd) => return (pos, Event::Absurd),
                Ok(Some((len, sync))) => {
                    self.lit = len;
                    self.set(SYNC, sync && len > 0);
                    if len > 0 {
                        self.set_phase(Phase::Skip);
                    }
                }
                Ok(None) => {
                    self.set(OPEN, false);
                    return (pos, Event::Line);
                }
            }
        }
    }

    pub(super) fn at_boundary(&self) -> bool {
        !self.has(OPEN)
    }

    /// Waiting for the backend's `+` before a synchronizing literal.
    pub(super) fn awaits_go_ahead(&self) -> bool {
        self.phase() == Phase::Skip && self.has(SYNC)
    }

    /// The backend refused the command before its literal: the command is over.
    pub(super) fn cancel_literal(&mut self) {
        self.lit = 0;
        self.set(SYNC, false);
        self.set(OPEN, false);
    }

    /// Whether the line's second word is `k` (in any case, one trailing CR ignored).
    pub(super) fn said(&self, k: Kw) -> bool {
        self.kw & (1 << k as u8) != 0 && usize::from(self.kw_len) == KEYWORDS[k as usize].len()
    }

    fn open_line(&mut self) {
        self.tag = Tag::default();
        self.kw = ALL_KEYWORDS;
        self.kw_len = 0;
        self.set(OPEN, true);
        self.set(CR, false);
        self.set_phase(Phase::Tag);
    }

    /// The head is the first segment's: nothing after its line end changes it.
    fn end_head(&mut self) {
        self.set(CR, false);
        self.set_phase(Phase::Done);
    }

    /// A piece of the current line segment (no LF).
    fn absorb(&mut self, segment: &[u8]) {
        self.feed_head(segment);
        self.feed_tail(segment);
    }

    /// Words are separated by single spaces, as the relay's peers write them.
    fn feed_head(&mut self, mut segment: &[u8]) {
        loop {
            let phase = self.phase();
            if !matches!(phase, Phase::Tag | Phase::Word) {
                return;
            }
            let Some(i) = memchr(b' ', segment) else {
                self.feed_word(segment, phase);
                return;
            };
            self.feed_word(&segment[..i], phase);
            self.set(CR, false);
            self.set_phase(if phase == Phase::Tag {
                Phase::Word
            } else {
                Phase::Done
            });
            segment = &segment[i + 1..];
        }
    }

    /// A piece of the current word; a CR ending it is held back until more of the word comes.
    fn feed_word(&mut self, piece: &[u8], phase: Phase) {
        if piece.is_empty() {
            return;
        }
        let (body, cr) = match piece.strip_suffix(b"\r") {
            Some(body) => (body, true),
            None => (piece, false),
        };
        let held = if self.has(CR) { &b"\r"[..] } else { b"" };
        for bytes in [held, body] {
            if phase == Phase::Tag {
                self.tag.push(bytes);
            } else {
                self.match_keywords(bytes);
            }
        }
        self.set(CR, cr);
    }

    fn match_keywords(&mut self, bytes: &[u8]) {
        for &c in bytes {
            if self.kw == 0 {
                return;
            }
            let at = usize::from(self.kw_len);
            let c = c.to_ascii_uppercase();
            for (i, k) in KEYWORDS.iter().enumerate() {
                if k.get(at) != Some(&c) {
                    self.kw &= !(1 << i);
                }
            }
            // At most the longest keyword's length plus one: no keyword survives that byte.
            self.kw_len += 1;
        }
    }

    fn feed_tail(&mut self, segment: &[u8]) {
        let window = &segment[segment.len().saturating_sub(TAIL_WINDOW)..];
        // Any other byte leaves the automaton in `Other` whatever came before: start after
        // the last one (a line's end is mostly text, then a CR).
        let from = match window.iter().rposition(|&c| !is_literal_byte(c)) {
            Some(i) => i + 1,
            None if window.len() < segment.len() => 0,
            None => {
                window.iter().for_each(|&c| self.tail_byte(c));
                return;
            }
        };
        self.set_tail(Tail::Other, 0);
        window[from..].iter().for_each(|&c| self.tail_byte(c));
    }

    fn tail_byte(&mut self, c: u8) {
        let (tail, digits) = self.tail();
        let next = match c {
            b'0'..=b'9' if tail == Tail::Run => {
                self.lit = (self.lit * 10 + u64::from(c - b'0')).min(LITERAL_MAX + 1);
                (Tail::Run, (digits + 1).min(DIGITS_MAX))
            }
            b'0'..=b'9' => {
                self.set(BRACE, false);
                self.lit = u64::from(c - b'0');
                // A run that starts the segment counts one digit less: with nothing before
                // it, the 24-byte reader this replaces took one more digit as absurd.
                (Tail::Run, u8::from(tail != Tail::Fresh))
            }
            b'{' => {
                self.set(BRACE, true);
                self.lit = 0;
                (Tail::Run, 0)
            }
            b'+' if tail == Tail::Run => (Tail::Plus, digits),
            b'}' if matches!(tail, Tail::Run | Tail::Plus) => {
                self.set(PLUS, tail == Tail::Plus);
                (Tail::Close, digits)
            }
            b'\r' if tail == Tail::Close => (Tail::CloseCr, digits),
            _ => (Tail::Other, 0),
        };
        self.set_tail(next.0, next.1);
    }

    /// The literal (`{n}`, `{n+}`, `~{n}`) announced at the end of the segment, with whether
    /// it is synchronizing. As the 24-byte reader it replaces: digits running past 24 bytes
    /// of segment are absurd, with or without a `{` before them.
    fn literal(&self) -> Result<Option<(u64, bool)>, Absurd> {
        let (tail, digits) = self.tail();
        let cr = match tail {
            Tail::Close => 0,
            Tail::CloseCr => 1,
            _ => return Ok(None),
        };
        if digits == 0 {
            return Ok(None);
        }
        let plus = self.has(PLUS);
        // 24 bytes less the `}`, the CR and the `+`, when present, and one byte before the run.
        if digits >= 23 - cr - u8::from(plus) {
            return Err(Absurd);
        }
        if !self.has(BRACE) {
            return Ok(None);
        }
        if self.lit > LITERAL_MAX {
            return Err(Absurd);
        }
        Ok(Some((self.lit, !plus)))
    }

    fn clear_tail(&mut self) {
        self.lit = 0;
        self.set_tail(Tail::Fresh, 0);
    }

    fn tail(&self) -> (Tail, u8) {
        (TAILS[usize::from(self.tail & 7)], self.tail >> 3)
    }

    fn set_tail(&mut self, tail: Tail, digits: u8) {
        self.tail = tail as u8 | digits << 3;
    }

    fn phase(&self) -> Phase {
        PHASES[usize::from(self.flags >> PHASE_SHIFT)]
    }

    fn set_phase(&mut self, phase: Phase) {
        self.flags = self.flags & ((1 << PHASE_SHIFT) - 1) | (phase as u8) << PHASE_SHIFT;
    }

    fn has(&self, bit: u8) -> bool {
        self.flags & bit != 0
    }

    fn set(&mut self, bit: u8, on: bool) {
        if on {
            self.flags |= bit;
        } else {
            self.flags &= !bit;
        }
    }
}

impl Side {
    /// Whether a `{n}` at the end of a line of this kind announces a literal.
    fn literals_allowed(self, line: &Stream) -> bool {
        match self {
            Side::Client => true,
            Side::Backend => {
                let status: &[Kw] = if line.tag.is(b"*") {
                    &[Kw::Ok, Kw::No, Kw::Bad, Kw::Bye, Kw::Preauth]
                } else if line.tag.is(b"+") {
                    return false;
                } else {
                    &[Kw::Ok, Kw::No, Kw::Bad]
                };
                !status.iter().any(|&k| line.said(k))
            }
        }
    }
}

/// The bytes that can be part of `{n}` `+`? `}` CR? at a segment's end.
fn is_literal_byte(c: u8) -> bool {
    c.is_ascii_digit() || matches!(c, b'{' | b'+' | b'}' | b'\r')
}

/// A literal length this tracker refuses to follow.
#[derive(Debug)]
struct Absurd;

/// A line's first word (one trailing CR excluded): its first [`TAG_MAX`] bytes and its
/// length (stopping at 255).
#[derive(Clone, Copy, Default)]
pub(super) struct Tag {
    kept: [u8; TAG_MAX],
    len: u8,
}

impl Tag {
    fn push(&mut self, bytes: &[u8]) {
        let at = usize::from(self.len).min(TAG_MAX);
        let n = bytes.len().min(TAG_MAX - at);
        self.kept[at..at + n].copy_from_slice(&bytes[..n]);
        self.len = self
            .len
            .saturating_add(u8::try_from(bytes.len()).unwrap_or(u8::MAX));
    }

    fn kept(&self) -> &[u8] {
        &self.kept[..usize::from(self.len).min(TAG_MAX)]
    }

    /// The whole tag is kept.
    pub(super) fn fits(&self) -> bool {
        usize::from(self.len) <= TAG_MAX
    }

    pub(super) fn is(&self, s: &[u8]) -> bool {
        self.fits() && self.kept() == s
    }

    /// Whether two tags are the same, byte for byte (the server echoes them exactly); `None`
    /// when both are longer than kept and agree in what is kept.
    pub(super) fn same(&self, other: &Tag) -> Option<bool> {
        if self.len != other.len || self.kept() != other.kept() {
            Some(false)
        } else if self.fits() {
            Some(true)
        } else {
            None
        }
    }
}

impl std::fmt::Debug for Tag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept = String::from_utf8_lossy(self.kept());
        write!(f, "{kept:?}/{}", self.len)
    }
}

#[cfg(test)]
mod tests;
