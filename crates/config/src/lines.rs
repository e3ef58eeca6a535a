//! Maps a dotted key path (`listener[1].listen[0]`) to the line where it is written, so
//! semantic errors found after deserialization can still point at a line.

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// Line lookup over the parsed document.
#[derive(Debug)]
pub(crate) struct Lines<'i> {
    text: &'i str,
    root: Option<Spanned<DeValue<'i>>>,
}

impl<'i> Lines<'i> {
    /// `text` has already parsed once for serde, so a failure here only loses line numbers.
    pub(crate) fn new(text: &'i str) -> Self {
        let root = DeTable::parse(text).ok().map(|doc| {
            let span = doc.span();
            Spanned::new(span, DeValue::Table(doc.into_inner()))
        });
        Lines { text, root }
    }

    /// 1-based line of byte offset `offset`.
    pub(crate) fn line_of_offset(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// The line of the deepest part of `path` present in the file: the key itself when
    /// it is written, else the table that would hold it. `None` when nothing of the
    /// path is in the file (the key took its default from a table that is not written).
    pub(crate) fn line_of(&self, path: &str) -> Option<usize> {
        let mut node = self.root.as_ref()?;
        let mut found: Option<usize> = None;
        'walk: for segment in path.split('.') {
            let (name, indexes) = split_indexes(segment);
            let Some(next) = node.get_ref().get(name) else {
                break;
            };
            node = next;
            found = Some(node.span().start);
            for index in indexes {
                let Some(next) = node.get_ref().get(index) else {
                    break 'walk;
                };
                node = next;
                found = Some(node.span().start);
            }
        }
        found.map(|offset| self.line_of_offset(offset))
    }
}

/// `listen[2]` → (`listen`, [2]); `a[1][0]` → (`a`, [1, 0]).
pub(crate) fn split_indexes(segment: &str) -> (&str, Vec<usize>) {
    let Some(open) = segment.find('[') else {
        return (segment, Vec::new());
    };
    let indexes = segment[open..]
        .split(['[', ']'])
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect();
    (&segment[..open], indexes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_lines_of_nested_keys() {
        let text = "[server]\nworkers = 2\n\n[[listener]]\nname = \"a\"\nlisten = [\n  \"x\",\n  \"y\",\n]\n\n[[listener]]\nname = \"b\"\n";
        let lines = Lines::new(text);
        assert_eq!(lines.line_of("server.workers"), Some(2));
        assert_eq!(lines.line_of("listener[0].name"), Some(5));
        assert_eq!(lines.line_of("listener[0].listen[1]"), Some(8));
        assert_eq!(lines.line_of("listener[1].name"), Some(12));
        assert_eq!(lines.line_of("admin.listen"), None);
    }
}
