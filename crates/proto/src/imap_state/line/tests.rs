//! The incremental readers of a line against reading the whole line: the head's words
//! (tag, keyword) and the literal automaton, however the line is split into pieces.

use proptest::prelude::*;

use super::super::reference::Tail as OldTail;
use super::{Kw, Stream, Tag, KEYWORDS, TAG_MAX};

/// The first segment of a line, fed in pieces cut at `cuts`, without its LF.
fn fed(segment: &[u8], cuts: &[prop::sample::Index]) -> Stream {
    let mut st = Stream::default();
    st.open_line();
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(segment.len() + 1)).collect();
    at.sort_unstable();
    let mut from = 0;
    for to in at.into_iter().chain([segment.len()]) {
        st.absorb(&segment[from..to]);
        from = to;
    }
    st
}

/// Ends the first segment as `Stream::step` does at a line end.
fn ended(mut st: Stream) -> Stream {
    st.end_head();
    st
}

/// A word of the line as the old reader had it: split at single spaces, one trailing CR off.
fn word(segment: &[u8], n: usize) -> &[u8] {
    let w = segment.split(|&c| c == b' ').nth(n).unwrap_or(b"");
    w.strip_suffix(b"\r").unwrap_or(w)
}

const KWS: [Kw; 6] = [Kw::Ok, Kw::No, Kw::Bad, Kw::Bye, Kw::Preauth, Kw::Compress];

fn segment() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            3 => prop::sample::select(b" \r*+aZzOoKkNnBbAaDdYyEePpRrUuTtHhCcMmSs1".to_vec()),
            1 => prop::sample::select(KEYWORDS.to_vec()).prop_map(|k| k[0]),
        ],
        0..24,
    )
    .prop_flat_map(|bytes| {
        // Now and then a whole keyword as the second word.
        (
            Just(bytes),
            prop::sample::select(KEYWORDS.to_vec()),
            any::<bool>(),
        )
            .prop_map(|(bytes, k, insert)| {
                if !insert {
                    return bytes;
                }
                let mut s = b"t1 ".to_vec();
                s.extend_from_slice(k);
                s.extend_from_slice(&bytes);
                s
            })
    })
}

fn tag_of(word: &[u8]) -> Tag {
    let mut st = Stream::default();
    st.open_line();
    st.absorb(word);
    ended(st).tag
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1024),
        ..ProptestConfig::default()
    })]

    #[test]
    fn head_in_pieces_reads_as_the_whole_line(
        seg in segment(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let st = ended(fed(&seg, &cuts));
        let (tag, second) = (word(&seg, 0), word(&seg, 1));
        prop_assert_eq!(st.tag.fits(), tag.len() <= TAG_MAX);
        if tag.len() <= TAG_MAX {
            prop_assert!(st.tag.is(tag), "{:?} vs {:?}", st.tag, String::from_utf8_lossy(tag));
        }
        prop_assert_eq!(st.tag.is(b"*"), tag == b"*");
        for (k, spelling) in KWS.iter().zip(KEYWORDS) {
            prop_assert_eq!(st.said(*k), second.eq_ignore_ascii_case(spelling), "{:?}", k);
        }
    }

    /// Tags compare exactly: equal only when equal, unequal whenever kept bytes or lengths
    /// differ, undecided only for two long ones that agree in both.
    #[test]
    fn tags_match_exactly(
        a in prop::collection::vec(prop::sample::select(b"ab\r".to_vec()), 0..16),
        b in prop::collection::vec(prop::sample::select(b"ab\r".to_vec()), 0..16),
    ) {
        for (x, y) in [(&a, &b), (&a, &a)] {
            let (tx, ty) = (tag_of(x), tag_of(y));
            let (wx, wy) = (word(x, 0), word(y, 0));
            let expect = if wx != wy {
                let undecided = wx.len() == wy.len()
                    && wx.len() > TAG_MAX
                    && wx[..TAG_MAX] == wy[..TAG_MAX];
                if undecided { None } else { Some(false) }
            } else if wx.len() <= TAG_MAX {
                Some(true)
            } else {
                None
            };
            prop_assert_eq!(tx.same(&ty), expect);
        }
    }

    /// The literal automaton against the old reader of the segment's last 24 bytes.
    #[test]
    fn literal_automaton_reads_as_the_last_bytes_did(
        parts in prop::collection::vec(
            prop_oneof![
                4 => prop::collection::vec(prop::sample::select(b"{}~+09\r x".to_vec()), 1..4),
                1 => (0usize..30).prop_map(|n| vec![b'0'; n]),
                1 => (0usize..30).prop_map(|n| vec![b'9'; n]),
                1 => (1usize..40).prop_map(|n| vec![b'x'; n]),
                1 => Just(b"{1099511627776}".to_vec()),
                1 => Just(b"{1099511627777}".to_vec()),
            ],
            0..8,
        ),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let seg = parts.concat();
        prop_assert_eq!(
            literal_of(&seg, &cuts),
            old_literal_of(&seg),
            "{:?}",
            String::from_utf8_lossy(&seg)
        );
    }
}

/// What the automaton reads at the end of `segment`, fed in pieces cut at `cuts`.
fn literal_of(segment: &[u8], cuts: &[prop::sample::Index]) -> Result<Option<(u64, bool)>, ()> {
    ended(fed(segment, cuts)).literal().map_err(|_| ())
}

fn old_literal_of(segment: &[u8]) -> Result<Option<(u64, bool)>, ()> {
    let mut old = OldTail::default();
    old.push(segment);
    old.literal().map_err(|_| ())
}

/// Every digit count around the 24 bytes the old reader kept, with every ending, after
/// nothing, a `{`, another byte or a long line, fed whole and byte by byte.
#[test]
fn literal_limits_are_the_old_readers() {
    let prefixes: [&[u8]; 7] = [
        b"",
        b"{",
        b"~{",
        b"x",
        b"x{",
        b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx{",
        b"x1",
    ];
    let bytewise: Vec<prop::sample::Index> = Vec::new();
    for prefix in prefixes {
        for n in 0..=30 {
            for digit in [b'0', b'1', b'9'] {
                for end in [
                    &b"}"[..],
                    b"}\r",
                    b"+}",
                    b"+}\r",
                    b"",
                    b"+",
                    b"}x",
                    b"}\r\r",
                ] {
                    let mut seg = prefix.to_vec();
                    seg.resize(prefix.len() + n, digit);
                    seg.extend_from_slice(end);
                    let want = old_literal_of(&seg);
                    assert_eq!(
                        literal_of(&seg, &bytewise),
                        want,
                        "{:?}",
                        String::from_utf8_lossy(&seg)
                    );
                    let mut st = Stream::default();
                    st.open_line();
                    seg.iter().for_each(|c| st.absorb(std::slice::from_ref(c)));
                    assert_eq!(
                        ended(st).literal().map_err(|_| ()),
                        want,
                        "bytewise {:?}",
                        String::from_utf8_lossy(&seg)
                    );
                }
            }
        }
    }
}
