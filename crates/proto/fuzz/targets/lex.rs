//! The lexical helpers every parser shares: no panic, split_line within its window, and
//! trailing_literal's length agrees with parse_u64 on the digits it read.

use postern_proto::lex::{keyword, parse_u64, split_line, trailing_literal, LineSplit};

/// One fuzz input: panics on a broken invariant.
pub(crate) fn fuzz_one(data: &[u8]) {
    let [max, buf @ ..] = data else { return };
    let max = usize::from(*max);
    match split_line(buf, max) {
        LineSplit::Line { content, len } => {
            assert!(len <= max && len <= buf.len() && content < len);
            assert_eq!(buf[len - 1], b'\n');
            assert!(!buf[..len - 1].contains(&b'\n'));
        }
        LineSplit::TooLong => assert!(buf.len() >= max && !buf[..max].contains(&b'\n')),
        LineSplit::Incomplete => {
            assert!(buf.is_empty() || (buf.len() < max && !buf.contains(&b'\n')))
        }
    }
    if let Some(lit) = trailing_literal(buf) {
        let open = buf.iter().rposition(|&b| b == b'{').unwrap_or(0);
        let spec = &buf[open + 1..buf.len() - 1];
        let digits = spec.strip_suffix(b"+").unwrap_or(spec);
        assert_eq!(lit.len, parse_u64(digits));
        assert_eq!(lit.sync, !spec.ends_with(b"+"));
    }
    let (kw, rest) = keyword(buf);
    assert!(kw.iter().all(u8::is_ascii_alphanumeric));
    assert!(kw.len() + rest.len() <= buf.len());
}
