//! The tracker as it was before it shrank to a few dozen bytes (a 648-byte state: the first
//! words of each line and the last bytes of each line segment, buffered), kept unchanged as
//! the oracle the property tests compare [`super::ImapState`] with, answer for answer.

#![allow(dead_code)]

use memchr::memchr;

use super::line::TAG_MAX;
use super::Goodbye;

#[derive(Debug, Default)]
pub(super) struct Reference {
    mode: Mode,
    client: Stream,
    backend: Stream,
    /// Tag of a `COMPRESS` command the backend has not answered yet.
    compress_tag: Option<Word>,
    /// The backend sent `* BYE` (a reset after it is a close, not a failure).
    bye: bool,
    /// Not part of the old tracker: set where [`super::ImapState`] keeps too little of a tag
    /// to decide as this one does (a `COMPRESS` tag longer than `TAG_MAX`, or a refusal while
    /// a literal awaits the go-ahead when both tags are longer), and so gives up.
    pub(super) diverges: bool,
}

impl Reference {
    /// A tracker at a response boundary (before or right after the backend greeting).
    pub(super) fn new() -> Self {
        Self::default()
    }

    /// Bytes the client sent toward the backend (plaintext IMAP commands after TLS).
    ///
    /// Learns the tag of a `COMPRESS` command; literals (`{n}`, `{n+}`, `~{n}`) are skipped.
    pub(super) fn client(&mut self, input: &[u8]) {
        let mut rest = input;
        while self.mode == Mode::Plain && !rest.is_empty() {
            let (used, event) = self.client.step(rest, Side::Client);
            rest = &rest[used..];
            match event {
                Event::More => {}
                Event::Absurd => self.mode = Mode::Unknown,
                Event::Line => self.client_line(),
            }
        }
    }

    /// Bytes the backend sent toward the client.
    ///
    /// When the tagged `OK` to a pending `COMPRESS` ends, everything after it (in this chunk
    /// too) is compressed in both directions and the state stays [`Goodbye::Close`].
    pub(super) fn backend(&mut self, input: &[u8]) {
        let mut rest = input;
        while self.mode == Mode::Plain && !rest.is_empty() {
            if self.backend.at_boundary() && self.lines_are_plain() {
                rest = &rest[self.plain_lines(rest)..];
                if rest.is_empty() {
                    break;
                }
            }
            let (used, event) = self.backend.step(rest, Side::Backend);
            rest = &rest[used..];
            match event {
                Event::More => {}
                Event::Absurd => self.mode = Mode::Unknown,
                Event::Line => self.backend_line(),
            }
        }
    }

    /// True once the backend accepted `COMPRESS`: nothing after it is plain text.
    pub(super) fn compressed(&self) -> bool {
        self.mode == Mode::Compressed
    }

    /// True once the backend said `* BYE` (while the stream was readable).
    pub(super) fn backend_said_bye(&self) -> bool {
        self.bye
    }

    /// Whether a goodbye may be injected toward the client right now.
    pub(super) fn goodbye(&self) -> Goodbye {
        match self.mode {
            Mode::Plain if self.backend.at_boundary() => Goodbye::Now,
            Mode::Plain => Goodbye::Wait,
            Mode::Compressed | Mode::Unknown => Goodbye::Close,
        }
    }

    /// True when a backend line that announces no literal can change nothing but
    /// [`Self::bye`]: no `COMPRESS` answer and no refusal of a client literal is awaited.
    fn lines_are_plain(&self) -> bool {
        self.compress_tag.is_none() && !self.client.awaits_go_ahead()
    }

    /// The fast path over whole backend lines, at a response boundary while
    /// [`Self::lines_are_plain`]: a few `memchr`/`memmem` passes over the whole buffer,
    /// nothing per line. Only two things in such lines matter: a `}` right before a line end
    /// (a literal may follow) and a `* BYE` line start. Returns the bytes used: up to the
    /// first line that may announce a literal, or to the start of an unterminated last
    /// line; the per-line path reads from there. What it passes over leaves the state
    /// exactly as [`Stream::step`] would: at a boundary, `bye` set if a line said it.
    fn plain_lines(&mut self, input: &[u8]) -> usize {
        let Some(last) = memchr::memrchr(b'\n', input) else {
            return 0;
        };
        let whole = &input[..=last];
        // The first `}` that ends a line's content (one CR trimmed, as `Tail::literal` reads
        // it): its line goes to the per-line path.
        let used = memchr::memchr_iter(b'}', whole)
            .find(|&i| matches!(&whole[i + 1..], [b'\n', ..] | [b'\r', b'\n', ..]))
            .map_or(whole.len(), |i| {
                memchr::memrchr(b'\n', &whole[..i]).map_or(0, |j| j + 1)
            });
        if !self.bye {
            let lines = &whole[..used];
            let line_at = |start: usize| {
                let rest = &lines[start..];
                &rest[..memchr::memchr(b'\n', rest).unwrap_or(rest.len())]
            };
            self.bye = (!lines.is_empty() && says_bye(line_at(0)))
                || [&b"\n* B"[..], b"\n* b"].iter().any(|needle| {
                    memchr::memmem::find_iter(lines, needle).any(|i| says_bye(line_at(i + 1)))
                });
        }
        used
    }

    fn client_line(&mut self) {
        let head = &self.client.head;
        // Any mechanism counts: a server that accepted one we do not know would still
        // compress, and a refusal just clears the pending tag.
        if !head.words[1].eq_ci(b"COMPRESS") {
            return;
        }
        if self.compress_tag.is_some() || head.words[0].complete().is_none() {
            self.mode = Mode::Unknown;
            return;
        }
        self.diverges |= head.words[0].len > TAG_MAX;
        self.compress_tag = Some(head.words[0]);
    }

    fn backend_line(&mut self) {
        let head = &self.backend.head;
        if head.words[0].eq_ci(b"*") && head.words[1].eq_ci(b"BYE") {
            self.bye = true;
        }
        let refused = head.words[1].eq_ci(b"NO") || head.words[1].eq_ci(b"BAD");
        self.diverges |= refused
            && self.client.awaits_go_ahead()
            && head.words[0].len > TAG_MAX
            && self.client.head.words[0].len > TAG_MAX;
        if refused
            && self.client.awaits_go_ahead()
            && head.words[0].same(&self.client.head.words[0])
        {
            self.client.cancel_literal();
        }
        let Some(tag) = &self.compress_tag else {
            return;
        };
        if !head.words[0].same(tag) {
            return;
        }
        if head.words[1].eq_ci(b"OK") {
            self.mode = Mode::Compressed;
        } else if refused {
            self.compress_tag = None;
        }
    }
}

/// Whether a whole line (its LF excluded) is `* BYE`, read as [`Head`] reads words: the
/// second word, up to a SP or the line end, one trailing CR trimmed, in any case.
fn says_bye(line: &[u8]) -> bool {
    let Some(rest) = line.strip_prefix(b"* ") else {
        return false;
    };
    let Some((word, after)) = rest.split_at_checked(3) else {
        return false;
    };
    word.eq_ignore_ascii_case(b"BYE")
        && matches!(after, [] | [b' ', ..] | [b'\r'] | [b'\r', b' ', ..])
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Mode {
    #[default]
    Plain,
    /// `COMPRESS` accepted: nothing after it is plain text.
    Compressed,
    /// Lost track (absurd literal, ambiguous `COMPRESS`): treated like compressed.
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Client,
    Backend,
}

impl Side {
    /// Whether a `{n}` at the end of a line of this kind announces a literal.
    fn literals_allowed(self, head: &Head) -> bool {
        match self {
            Side::Client => true,
            Side::Backend => {
                let [first, second, _] = &head.words;
                let status: &[&[u8]] = if first.eq_ci(b"*") {
                    &[b"OK", b"NO", b"BAD", b"BYE", b"PREAUTH"]
                } else if first.eq_ci(b"+") {
                    return false;
                } else {
                    &[b"OK", b"NO", b"BAD"]
                };
                !status.iter().any(|s| second.eq_ci(s))
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    /// Input used up mid-line or mid-literal.
    More,
    /// A logical line (literals included) just ended; its head is still readable.
    Line,
    /// A literal length this tracker refuses to follow.
    Absurd,
}

/// One direction: where we are in the line / literal structure.
#[derive(Debug, Default)]
struct Stream {
    /// Literal bytes still to pass over.
    skip: u64,
    /// The pending literal is synchronizing and none of it has been seen yet.
    sync: bool,
    /// A logical line has started and not ended.
    open: bool,
    /// The current logical line resumed after a literal (its head is already known).
    continued: bool,
    head: Head,
    tail: Tail,
}

impl Stream {
    /// Consumes `input` up to the end of the next logical line (or all of it); returns the
    /// bytes used and why it stopped.
    fn step(&mut self, input: &[u8], side: Side) -> (usize, Event) {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            if rest.is_empty() {
                return (pos, Event::More);
            }
            if self.skip > 0 {
                let n = usize::try_from(self.skip).map_or(rest.len(), |s| s.min(rest.len()));
                self.skip -= n as u64;
                self.sync = false;
                pos += n;
                continue;
            }
            if !self.open {
                self.open = true;
                self.continued = false;
                self.head.clear();
            }
            let Some(i) = memchr(b'\n', rest) else {
                self.absorb(rest);
                return (input.len(), Event::More);
            };
            self.absorb(&rest[..i]);
            pos += i + 1;
            let literal = if side.literals_allowed(&self.head) {
                self.tail.literal()
            } else {
                Ok(None)
            };
            self.tail.clear();
            match literal {
                Err(Absurd) => return (pos, Event::Absurd),
                Ok(Some((len, sync))) => {
                    self.skip = len;
                    self.sync = sync && len > 0;
                    self.continued = true;
                }
                Ok(None) => {
                    self.open = false;
                    return (pos, Event::Line);
                }
            }
        }
    }

    fn absorb(&mut self, segment: &[u8]) {
        if !self.continued {
            self.head.feed(segment);
        }
        self.tail.push(segment);
    }

    fn at_boundary(&self) -> bool {
        self.skip == 0 && !self.open
    }

    /// Waiting for the backend's `+` before a synchronizing literal.
    fn awaits_go_ahead(&self) -> bool {
        self.skip > 0 && self.sync
    }

    /// The backend refused the command before its literal: the command is over.
    fn cancel_literal(&mut self) {
        self.skip = 0;
        self.sync = false;
        self.open = false;
        self.continued = false;
    }
}

/// The first three space-separated words of a line: tag, command or status, argument.
#[derive(Debug, Default)]
struct Head {
    words: [Word; 3],
    /// Index of the word being filled; 3 once all are known.
    at: usize,
}

impl Head {
    fn clear(&mut self) {
        self.words.iter_mut().for_each(|w| w.len = 0);
        self.at = 0;
    }

    fn feed(&mut self, mut segment: &[u8]) {
        while let Some(word) = self.words.get_mut(self.at) {
            match memchr(b' ', segment) {
                Some(i) => {
                    word.push(&segment[..i]);
                    segment = &segment[i + 1..];
                    self.at += 1;
                }
                None => {
                    word.push(segment);
                    return;
                }
            }
        }
    }
}

/// A word's first [`WORD_MAX`] bytes and its true length.
#[derive(Clone, Copy)]
struct Word {
    buf: [u8; WORD_MAX],
    len: usize,
}

impl Word {
    fn push(&mut self, bytes: &[u8]) {
        let kept = self.len.min(WORD_MAX);
        let n = bytes.len().min(WORD_MAX - kept);
        self.buf[kept..kept + n].copy_from_slice(&bytes[..n]);
        self.len = self.len.saturating_add(bytes.len());
    }

    /// The whole word (a CR of the line terminator trimmed), if it fitted.
    fn complete(&self) -> Option<&[u8]> {
        let w = self.buf.get(..self.len)?;
        Some(w.strip_suffix(b"\r").unwrap_or(w))
    }

    fn eq_ci(&self, s: &[u8]) -> bool {
        self.complete().is_some_and(|w| w.eq_ignore_ascii_case(s))
    }

    /// Tags compare exactly (the server echoes them byte for byte).
    fn same(&self, other: &Word) -> bool {
        matches!((self.complete(), other.complete()), (Some(a), Some(b)) if a == b)
    }
}

impl Default for Word {
    fn default() -> Self {
        Self {
            buf: [0; WORD_MAX],
            len: 0,
        }
    }
}

impl std::fmt::Debug for Word {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept = &self.buf[..self.len.min(WORD_MAX)];
        write!(f, "{:?}/{}", String::from_utf8_lossy(kept), self.len)
    }
}

/// The last [`TAIL_MAX`] bytes of the current line segment, and how long the segment is.
#[derive(Debug, Default)]
pub(super) struct Tail {
    buf: [u8; TAIL_MAX],
    len: usize,
    total: u64,
}

/// A literal length this tracker refuses to follow.
#[derive(Debug)]
pub(super) struct Absurd;

impl Tail {
    fn clear(&mut self) {
        self.len = 0;
        self.total = 0;
    }

    pub(super) fn push(&mut self, segment: &[u8]) {
        self.total = self.total.saturating_add(segment.len() as u64);
        if segment.len() >= TAIL_MAX {
            self.buf
                .copy_from_slice(&segment[segment.len() - TAIL_MAX..]);
            self.len = TAIL_MAX;
            return;
        }
        let keep = (TAIL_MAX - segment.len()).min(self.len);
        self.buf.copy_within(self.len - keep..self.len, 0);
        self.buf[keep..keep + segment.len()].copy_from_slice(segment);
        self.len = keep + segment.len();
    }

    /// The literal (`{n}`, `{n+}`, `~{n}`) announced at the end of the segment, with whether it
    /// is synchronizing.
    pub(super) fn literal(&self) -> Result<Option<(u64, bool)>, Absurd> {
        let s = &self.buf[..self.len];
        let s = s.strip_suffix(b"\r").unwrap_or(s);
        let Some(s) = s.strip_suffix(b"}") else {
            return Ok(None);
        };
        let (s, sync) = match s.strip_suffix(b"+") {
            Some(s) => (s, false),
            None => (s, true),
        };
        let digits = s.iter().rev().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Ok(None);
        }
        let (before, digits) = s.split_at(s.len() - digits);
        if before.is_empty() && self.total > self.len as u64 {
            // The digits run past what we kept: far more than any sane length.
            return Err(Absurd);
        }
        if before.last() != Some(&b'{') {
            return Ok(None);
        }
        let len = digits
            .iter()
            .try_fold(0u64, |acc, &d| {
                acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            })
            .filter(|&n| n <= LITERAL_MAX)
            .ok_or(Absurd)?;
        Ok(Some((len, sync)))
    }
}

/// Bytes kept of each of the first words of a line; a longer `COMPRESS` tag makes the
/// state unknown.
const WORD_MAX: usize = 64;
/// Bytes kept of a line's end: `~{` + 13 digits (2^40) + `+}` + CR fit with room to spare.
const TAIL_MAX: usize = 24;
/// Largest literal followed (1 TiB); a larger one means we no longer understand the stream.
const LITERAL_MAX: u64 = 1 << 40;
