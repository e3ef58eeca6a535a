//! Line splitting with a hard length limit, shared by every state machine of this crate.
//!
//! A line ends at LF. A CR just before the LF is part of the terminator; a bare LF is
//! accepted as a line end too (many clients and test tools send it, and RFC 9051 §2.2 /
//! RFC 5321 §2.3.8 let servers be lenient). Every parser in this crate uses this one
//! function, so the STARTTLS decision and the normal dispatch can never disagree on where
//! a command ends (rule T8: no parser differential).

/// Result of looking for the first line in a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineSplit {
    /// A complete line: `content` bytes of content, `len` bytes in all (terminator included).
    Line {
        /// Bytes of content, terminator excluded.
        content: usize,
        /// Bytes consumed by the line, terminator included.
        len: usize,
    },
    /// No line end yet and the buffer is within the limit: read more.
    Incomplete,
    /// No line end within `max` bytes: the line is over-long.
    TooLong,
}

/// Finds the first line of `buf`; a line (terminator included) may be at most `max` bytes.
pub fn split_line(buf: &[u8], max: usize) -> LineSplit {
    let window = &buf[..buf.len().min(max)];
    match memchr::memchr(b'\n', window) {
        Some(i) => {
            let content = if i > 0 && window[i - 1] == b'\r' { i - 1 } else { i };
            LineSplit::Line { content, len: i + 1 }
        }
        None if buf.len() >= max => LineSplit::TooLong,
        None => LineSplit::Incomplete,
    }
}
