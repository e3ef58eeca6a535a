//! IMAP response boundaries and `COMPRESS` tracking, so a drain can say goodbye safely.
//!
//! During a drain the relay injects `* BYE [UNAVAILABLE] ...` into the backend->client
//! stream of an IMAP session. That is only correct at a response boundary: never mid-line
//! and never inside a literal (`{n}` / `~{n}` then n raw bytes, where a LF means nothing),
//! and never at all once `COMPRESS DEFLATE` (RFC 4978) has turned both directions into
//! deflate streams. [`ImapState`] is fed every byte of both directions and answers with
//! [`Goodbye`].
//!
//! # Invariants
//! - Fixed-size state of 64 bytes, no allocation (the session keeps one for the whole life
//!   of every IMAP session, idle ones included): per direction the current line's tag (its
//!   first `TAG_MAX` bytes and its length), a few bits for its second word, matched as it
//!   passes against the handful of keywords acted on (`OK`, `NO`, `BAD`, `BYE`, `PREAUTH`,
//!   `COMPRESS`), and a small automaton that reads `{n}` at the end of each line segment;
//!   plus the pending `COMPRESS` tag. No other byte of a line is kept.
//! - Literal bytes are skipped without being looked at. Between responses the backend's
//!   whole lines are read with a few `memchr`/`memmem` passes over the buffer (the last
//!   line end, a `}` before a line end, a `* BYE` line start), nothing per line; the
//!   per-line path (words of the line's head) runs only for a line that may announce a
//!   literal, a line split across reads, and while a `COMPRESS` answer or a refused client
//!   literal is pending.
//! - Anything this tracker cannot follow (a literal over `LITERAL_MAX` bytes, an
//!   overflowing length, a second `COMPRESS` while one is pending, a `COMPRESS` tag too long
//!   to keep, a refusal while a client literal awaits the backend's go-ahead when the two
//!   tags are too long to tell apart) makes the state unknown for good, and an unknown state
//!   answers
//!   [`Goodbye::Close`]: closing without a goodbye is always safe, a BYE in the wrong place
//!   corrupts mail.
//! - Ordering: the relay must feed backend bytes no later than it writes them to the client,
//!   so the backend's `+` (or tagged `OK` to `COMPRESS`) is seen before any client bytes that
//!   answer it.
//!
//! # Grammar decisions
//! - A LF ends a line (a CR before it belongs to the terminator), as in [`crate::lex`].
//! - Backend literals are recognised at the end of data lines only: a continuation (`+ ...`),
//!   a tagged status (`tag OK|NO|BAD ...`) and an untagged status (`* OK|NO|BAD|BYE|PREAUTH`)
//!   carry free text (RFC 9051 `resp-text`), where an echoed mailbox name may well end in
//!   `{5}` without announcing anything.
//! - Tags compare byte for byte (the server echoes them); keywords in any case. A word's one
//!   trailing CR is not part of it, as the line terminator's CR is not.
//! - A client's synchronizing literal (`{n}`) that the backend refuses with a tagged `NO` or
//!   `BAD` before the client sent any of it is cancelled (RFC 9051 §7.5: the client then must
//!   not send it), so the next command is still read as a command.

use line::{Event, Kw, Side, Stream, Tag};

mod line;

/// What the relay may do toward the client right now, during a drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Goodbye {
    /// No plain-text goodbye is possible (compressed or unknown stream): close without one.
    Close,
    /// At a response boundary: the BYE may be written now.
    Now,
    /// Mid-response (mid-line or inside a literal): wait for more backend bytes.
    Wait,
}

/// Tracks both directions of one IMAP session (after TLS) to find safe goodbye points.
///
/// 64 bytes (a unit test holds it there): every IMAP session keeps one for its whole life.
#[derive(Debug, Default)]
pub struct ImapState {
    mode: Mode,
    client: Stream,
    backend: Stream,
    /// Tag of a `COMPRESS` command the backend has not answered yet.
    compress_tag: Option<Tag>,
    /// The backend sent `* BYE` (a reset after it is a close, not a failure).
    bye: bool,
}

impl ImapState {
    /// A tracker at a response boundary (before or right after the backend greeting).
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes the client sent toward the backend (plaintext IMAP commands after TLS).
    ///
    /// Learns the tag of a `COMPRESS` command; literals (`{n}`, `{n+}`, `~{n}`) are skipped.
    pub fn client(&mut self, input: &[u8]) {
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
    pub fn backend(&mut self, input: &[u8]) {
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
    pub fn compressed(&self) -> bool {
        self.mode == Mode::Compressed
    }

    /// True once the backend said `* BYE` (while the stream was readable).
    pub fn backend_said_bye(&self) -> bool {
        self.bye
    }

    /// Whether a goodbye may be injected toward the client right now.
    pub fn goodbye(&self) -> Goodbye {
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
        // The first `}` that ends a line's content (one CR trimmed, as the literal automaton
        // reads it): its line goes to the per-line path.
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
        // Any mechanism counts: a server that accepted one we do not know would still
        // compress, and a refusal just clears the pending tag.
        if !self.client.said(Kw::Compress) {
            return;
        }
        if self.compress_tag.is_some() || !self.client.tag.fits() {
            self.mode = Mode::Unknown;
            return;
        }
        self.compress_tag = Some(self.client.tag);
    }

    fn backend_line(&mut self) {
        let line = &self.backend;
        if line.tag.is(b"*") && line.said(Kw::Bye) {
            self.bye = true;
        }
        let refused = line.said(Kw::No) || line.said(Kw::Bad);
        if refused && self.client.awaits_go_ahead() {
            match line.tag.same(&self.client.tag) {
                Some(true) => self.client.cancel_literal(),
                Some(false) => {}
                // Cancelling a literal the client then sends, or waiting for one it never
                // sends, would both lose the client's commands: give up instead.
                None => {
                    self.mode = Mode::Unknown;
                    return;
                }
            }
        }
        let Some(tag) = &self.compress_tag else {
            return;
        };
        // A kept `COMPRESS` tag fits whole, so this is exact.
        if line.tag.same(tag) != Some(true) {
            return;
        }
        if line.said(Kw::Ok) {
            self.mode = Mode::Compressed;
        } else if refused {
            self.compress_tag = None;
        }
    }
}

/// Whether a whole line (its LF excluded) is `* BYE`, read as [`Stream`] reads words: the
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

#[cfg(test)]
mod oracle;
#[cfg(test)]
mod reference;
#[cfg(test)]
mod tests;
