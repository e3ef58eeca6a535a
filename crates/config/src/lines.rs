//! Maps a dotted key path to the line where it is written, for semantic errors.

/// Line lookup over the parsed document.
#[derive(Debug)]
pub(crate) struct Lines<'i> {
    text: &'i str,
}

impl<'i> Lines<'i> {
    pub(crate) fn new(text: &'i str) -> Self {
        Lines { text }
    }

    /// 1-based line of byte offset `offset`.
    pub(crate) fn line_of_offset(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
    }
}
