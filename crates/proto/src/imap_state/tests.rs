use proptest::prelude::*;

use super::{Goodbye, ImapState};

/// Feeds `backend` one byte at a time; returns the goodbye after each prefix (index 0 =
/// before any byte).
fn per_byte(state: &mut ImapState, backend: &[u8]) -> Vec<Goodbye> {
    let mut out = vec![state.goodbye()];
    for b in backend {
        state.backend(std::slice::from_ref(b));
        out.push(state.goodbye());
    }
    out
}

/// Prefix positions of `backend` at which a goodbye may be written.
fn now_points(backend: &[u8]) -> Vec<usize> {
    per_byte(&mut ImapState::new(), backend)
        .iter()
        .enumerate()
        .filter(|(_, g)| **g == Goodbye::Now)
        .map(|(i, _)| i)
        .collect()
}

fn line_ends(s: &[u8]) -> Vec<usize> {
    let mut v = vec![0];
    v.extend(
        s.iter()
            .enumerate()
            .filter(|(_, c)| **c == b'\n')
            .map(|(i, _)| i + 1),
    );
    v
}

fn compressed_session() -> ImapState {
    let mut st = ImapState::new();
    st.client(b"z1 COMPRESS DEFLATE\r\n");
    st
}

#[test]
fn boundary_at_each_crlf_outside_literals() {
    let s = b"* 1 EXISTS\r\n* 0 RECENT\r\n* OK [UIDNEXT 5] next\r\na1 OK SELECT done\r\n";
    assert_eq!(now_points(s), line_ends(s));
}

#[test]
fn start_state_and_greeting_are_boundaries() {
    let mut st = ImapState::new();
    assert_eq!(st.goodbye(), Goodbye::Now);
    st.backend(b"* OK [CAPABILITY IMAP4rev1 COMPRESS=DEFLATE] Dovecot ready.\r\n");
    assert_eq!(st.goodbye(), Goodbye::Now);
}

#[test]
fn split_crlf_waits_for_lf() {
    let mut st = ImapState::new();
    st.backend(b"* 2 EX");
    assert_eq!(st.goodbye(), Goodbye::Wait);
    st.backend(b"ISTS\r");
    assert_eq!(st.goodbye(), Goodbye::Wait);
    st.backend(b"\n");
    assert_eq!(st.goodbye(), Goodbye::Now);
}

#[test]
fn fetch_literal_of_text_lines_is_no_boundary_until_the_response_ends() {
    let body = b"x\r\nx\r\nx\r\n* 9 BYE fake\r\nx\r\n";
    let mut s = format!("* 1 FETCH (UID 7 BODY[] {{{}}}\r\n", body.len()).into_bytes();
    s.extend_from_slice(body);
    s.extend_from_slice(b" FLAGS (\\Seen))\r\na2 OK Fetch completed.\r\n");
    let first_end = s.windows(2).position(|w| w == b")\r").map(|i| i + 3);
    let Some(first_end) = first_end else {
        panic!("test transcript has no response end");
    };
    assert_eq!(now_points(&s), vec![0, first_end, s.len()]);
}

#[test]
fn literal_split_anywhere_including_inside_the_braces() {
    let s = b"* 3 FETCH (BODY[HEADER] {10}\r\nab\r\ncd\r\n\r\n)\r\n";
    for cut in 0..=s.len() {
        let mut st = ImapState::new();
        st.backend(&s[..cut]);
        st.backend(&s[cut..]);
        assert_eq!(st.goodbye(), Goodbye::Now, "cut at {cut}");
    }
    assert_eq!(now_points(s), vec![0, s.len()]);
}

#[test]
fn binary_literal() {
    let s = b"* 1 FETCH (BINARY[1] ~{6}\r\n\0\r\n\n\r\n)\r\nb OK done\r\n";
    let ends = line_ends(s);
    // Only the end of the FETCH response and of the tagged OK are boundaries.
    assert_eq!(now_points(s), vec![0, ends[ends.len() - 2], s.len()]);
}

#[test]
fn several_literals_in_one_response() {
    let s = b"* 1 FETCH (BODY[1] {3}\r\na\r\n BODY[2] {0}\r\n BODY[3] {2}\r\n\r\n)\r\n";
    assert_eq!(now_points(s), vec![0, s.len()]);
}

#[test]
fn status_lines_ending_in_braces_announce_no_literal() {
    for s in [
        &b"a NO Mailbox doesn't exist: x{5}\r\n"[..],
        b"* OK [ALERT] look {5}\r\n",
        b"* BYE {5}\r\n",
        b"+ {5}\r\n",
    ] {
        let mut st = ImapState::new();
        st.backend(s);
        assert_eq!(st.goodbye(), Goodbye::Now, "{}", String::from_utf8_lossy(s));
    }
}

#[test]
fn idle_continuation_is_a_boundary() {
    let mut st = ImapState::new();
    st.client(b"i1 IDLE\r\n");
    st.backend(b"+ idling\r\n");
    assert_eq!(st.goodbye(), Goodbye::Now);
    st.client(b"DONE\r\n");
    st.backend(b"i1 OK Idle completed.\r\n");
    assert_eq!(st.goodbye(), Goodbye::Now);
}

#[test]
fn compress_ok_closes_for_good() {
    let mut st = compressed_session();
    assert_eq!(
        st.goodbye(),
        Goodbye::Now,
        "pending COMPRESS: plain text still"
    );
    st.backend(b"z1 OK Begin compression.\r\n");
    assert_eq!(st.goodbye(), Goodbye::Close);
    st.backend(b"* 1 EXISTS\r\n");
    st.client(b"a NOOP\r\n");
    assert_eq!(st.goodbye(), Goodbye::Close);
}

#[test]
fn compress_ok_and_compressed_bytes_in_one_chunk() {
    let mut st = compressed_session();
    st.backend(
        b"* 1 EXISTS\r\nz1 OK Begin compression.\r\n\x78\x9c\x0a\x0a{99999999999999999999}\r\n",
    );
    assert_eq!(st.goodbye(), Goodbye::Close);
}

#[test]
fn compress_ok_byte_by_byte_and_lower_case() {
    let mut st = ImapState::new();
    for b in b"z1 compress deflate\r\n" {
        st.client(std::slice::from_ref(b));
    }
    let g = per_byte(&mut st, b"z1 OK go\r\n\x0a\x0a");
    assert_eq!(g[10], Goodbye::Close);
    assert!(g[..10].iter().all(|g| *g != Goodbye::Close));
    assert_eq!(g.last(), Some(&Goodbye::Close));
}

#[test]
fn compress_refused_stays_plain() {
    for reply in [
        &b"z1 NO [COMPRESSIONACTIVE] already\r\n"[..],
        b"z1 BAD no\r\n",
    ] {
        let mut st = compressed_session();
        st.backend(reply);
        assert_eq!(st.goodbye(), Goodbye::Now);
        // The tag is forgotten: a later OK with the same tag is just an OK.
        st.client(b"z1 NOOP\r\n");
        st.backend(b"z1 OK NOOP completed.\r\n");
        assert_eq!(st.goodbye(), Goodbye::Now);
    }
}

#[test]
fn other_tags_do_not_end_compress() {
    let mut st = compressed_session();
    st.backend(b"* OK still\r\nz10 OK other\r\nz OK other\r\n");
    assert_eq!(st.goodbye(), Goodbye::Now);
    st.backend(b"z1 OK now\r\n");
    assert_eq!(st.goodbye(), Goodbye::Close);
}

#[test]
fn compress_inside_a_client_literal_is_data() {
    let data = b"z1 COMPRESS DEFLATE\r\n";
    let mut st = ImapState::new();
    st.client(format!("a APPEND INBOX {{{}+}}\r\n", data.len()).as_bytes());
    st.client(data);
    st.client(b"\r\n");
    st.backend(b"a OK APPEND completed\r\nz1 OK fake\r\n");
    assert_eq!(st.goodbye(), Goodbye::Now);
    // The tracker is still in step: a real COMPRESS afterwards is seen.
    st.client(b"z2 COMPRESS DEFLATE\r\n");
    st.backend(b"z2 OK\r\n");
    assert_eq!(st.goodbye(), Goodbye::Close);
}

#[test]
fn client_synchronizing_and_binary_literals_are_skipped() {
    let mut st = ImapState::new();
    st.client(b"a LOGIN {4}\r\n");
    st.backend(b"+ OK\r\n");
    st.client(b"u\r\nz {2}\r\n");
    st.backend(b"+ OK\r\n");
    st.client(b"p\n\r\nb APPEND INBOX ~{5}\r\n");
    st.backend(b"+ OK\r\n");
    st.client(b"\0\r\n\n\0\r\nc COMPRESS DEFLATE\r\n");
    st.backend(b"a OK\r\nb OK\r\nc OK\r\n");
    assert_eq!(st.goodbye(), Goodbye::Close);
}

#[test]
fn refused_synchronizing_literal_is_not_skipped() {
    let mut st = ImapState::new();
    st.client(b"a APPEND INBOX {100000}\r\n");
    st.backend(b"a NO [TOOBIG] Mail too big\r\n");
    st.client(b"z COMPRESS DEFLATE\r\n");
    st.backend(b"z OK\r\n");
    assert_eq!(st.goodbye(), Goodbye::Close);
}

#[test]
fn absurd_literal_sizes_close() {
    for line in [
        &b"* 1 FETCH (BODY[] {1099511627777}\r\n"[..],
        b"* 1 FETCH (BODY[] {99999999999999999999999}\r\n",
        b"* 1 FETCH (BODY[] ~{999999999999999999999999999999999999}\r\n",
        b"* 1 FETCH (X 1234567890123456789012345678901234567890}\r\n",
    ] {
        let mut st = ImapState::new();
        st.backend(line);
        assert_eq!(
            st.goodbye(),
            Goodbye::Close,
            "{}",
            String::from_utf8_lossy(line)
        );
        st.backend(b")\r\n");
        assert_eq!(st.goodbye(), Goodbye::Close);
    }
    let mut st = ImapState::new();
    st.client(b"a APPEND INBOX {18446744073709551616}\r\n");
    assert_eq!(st.goodbye(), Goodbye::Close);
}

#[test]
fn largest_literal_is_followed() {
    let mut st = ImapState::new();
    st.backend(b"* 1 FETCH (BODY[] {1099511627776}\r\n");
    assert_eq!(st.goodbye(), Goodbye::Wait);
}

#[test]
fn long_lines_are_fine() {
    let mut st = ImapState::new();
    st.backend(b"* SEARCH");
    for _ in 0..10_000 {
        st.backend(b" 1234567");
    }
    assert_eq!(st.goodbye(), Goodbye::Wait);
    st.backend(b"\r\n");
    assert_eq!(st.goodbye(), Goodbye::Now);
}

#[test]
fn long_compress_tag_is_unknown() {
    let mut st = ImapState::new();
    st.client(format!("{} COMPRESS DEFLATE\r\n", "t".repeat(100)).as_bytes());
    assert_eq!(st.goodbye(), Goodbye::Close);
    let mut st = compressed_session();
    st.client(b"z2 COMPRESS DEFLATE\r\n");
    assert_eq!(
        st.goodbye(),
        Goodbye::Close,
        "second COMPRESS while one is pending"
    );
}

/// A Dovecot-like session: (true = client, false = backend) chunks.
fn transcript() -> Vec<(bool, Vec<u8>)> {
    let body = "Subject: hi\r\n\r\nline one\r\n* BYE not really\r\nz1 OK nope\r\n".repeat(3);
    let mut t: Vec<(bool, Vec<u8>)> = vec![
        (
            false,
            b"* OK [CAPABILITY IMAP4rev1 COMPRESS=DEFLATE] ready.\r\n".to_vec(),
        ),
        (true, b"a1 LOGIN {4}\r\n".to_vec()),
        (false, b"+ OK\r\n".to_vec()),
        (true, b"user pass\r\na2 SELECT INBOX\r\n".to_vec()),
        (
            false,
            b"a1 OK Logged in\r\n* 3 EXISTS\r\n* OK [UIDVALIDITY 1] v\r\na2 OK [READ-WRITE] x\r\n"
                .to_vec(),
        ),
        (true, b"a3 FETCH 1:3 BODY.PEEK[]\r\n".to_vec()),
    ];
    for i in 1..=3 {
        t.push((
            false,
            format!(
                "* {i} FETCH (UID {i} BODY[] {{{}}}\r\n{body})\r\n",
                body.len()
            )
            .into_bytes(),
        ));
    }
    t.push((false, b"a3 OK Fetch completed.\r\n".to_vec()));
    t.push((true, b"z1 COMPRESS DEFLATE\r\n".to_vec()));
    t.push((
        false,
        b"z1 OK Begin compression.\r\n\x78\x9c\x03\x00".to_vec(),
    ));
    t
}

fn run(chunks: &[(bool, Vec<u8>)], piece: usize) -> Vec<Goodbye> {
    let mut st = ImapState::new();
    let mut out = Vec::new();
    for (from_client, bytes) in chunks {
        for part in bytes.chunks(piece.max(1)) {
            if *from_client {
                st.client(part);
            } else {
                st.backend(part);
            }
        }
        out.push(st.goodbye());
    }
    out
}

#[test]
fn transcript_split_invariance() {
    let t = transcript();
    let whole = run(&t, usize::MAX);
    assert_eq!(whole.last(), Some(&Goodbye::Close));
    assert!(whole[..whole.len() - 1].iter().all(|g| *g == Goodbye::Now));
    for piece in [1, 2, 3, 5, 7, 13, 64] {
        assert_eq!(run(&t, piece), whole, "pieces of {piece}");
    }
    // Mid-literal, byte by byte: no Now until the FETCH response ends.
    let fetch = &t[6].1;
    let points = now_points_after(&t[..6], fetch);
    assert_eq!(points, vec![fetch.len()]);
}

fn now_points_after(prefix: &[(bool, Vec<u8>)], backend: &[u8]) -> Vec<usize> {
    let mut st = ImapState::new();
    for (c, b) in prefix {
        if *c {
            st.client(b);
        } else {
            st.backend(b);
        }
    }
    per_byte(&mut st, backend)
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(_, g)| **g == Goodbye::Now)
        .map(|(i, _)| i)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512),
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_input_never_panics_and_close_is_final(
        chunks in prop::collection::vec(
            (any::<bool>(), prop::collection::vec(
                prop_oneof![
                    any::<u8>(),
                    prop::sample::select(b"{}~+0123456789\r\n OKNOBADCOMPRESS*".to_vec()),
                ],
                0..64,
            )),
            0..32,
        )
    ) {
        let mut st = ImapState::new();
        let mut closed = false;
        for (c, b) in &chunks {
            if *c { st.client(b) } else { st.backend(b) }
            let g = st.goodbye();
            prop_assert!(!closed || g == Goodbye::Close);
            closed = g == Goodbye::Close;
        }
    }

    #[test]
    fn any_split_of_a_chunk_gives_the_same_answer(
        chunks in prop::collection::vec(
            (any::<bool>(), prop::collection::vec(
                prop::sample::select(b"{}~+019\r\n aOKNOCOMPRESSz*x".to_vec()),
                0..48,
            )),
            0..16,
        ),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut whole = ImapState::new();
        let mut split = ImapState::new();
        for (c, b) in &chunks {
            let at = cut.index(b.len() + 1);
            if *c {
                whole.client(b);
                split.client(&b[..at]);
                split.client(&b[at..]);
            } else {
                whole.backend(b);
                split.backend(&b[..at]);
                split.backend(&b[at..]);
            }
            prop_assert_eq!(whole.goodbye(), split.goodbye());
        }
    }

    #[test]
    fn whole_lines_and_single_bytes_agree(
        chunks in prop::collection::vec(
            (any::<bool>(), prop::collection::vec(
                prop_oneof![
                    Just(b"* 1 FETCH (UID 4711)\r\n".to_vec()),
                    Just(b"* 1 FETCH (UID 4711)\r\n".to_vec()),
                    Just(b"* BYE\r\n".to_vec()),
                    Just(b"* bYe later\r\n".to_vec()),
                    Just(b"* BYE\r".to_vec()),
                    Just(b"* BYEx\r\n".to_vec()),
                    Just(b"*  BYE\r\n".to_vec()),
                    Just(b"* 1 FETCH (BODY[] {3}\r\nab\n)\r\n".to_vec()),
                    Just(b"* OK [x] {4}\r\n".to_vec()),
                    Just(b"z1 COMPRESS DEFLATE\r\n".to_vec()),
                    Just(b"z1 OK\r\n".to_vec()),
                    Just(b"z1 NO\r\n".to_vec()),
                    Just(b"c APPEND x {3}\r\n".to_vec()),
                    Just(b"c NO\r\n".to_vec()),
                    Just(b"}".to_vec()),
                    Just(b"\r".to_vec()),
                    Just(b"\n".to_vec()),
                    prop::collection::vec(any::<u8>(), 0..6),
                ],
                0..24,
            ).prop_map(|t| t.concat())),
            0..12,
        )
    ) {
        // Whole chunks take the fast path over complete lines; single bytes never can.
        let (mut whole, mut bytes) = (ImapState::new(), ImapState::new());
        for (c, b) in &chunks {
            if *c {
                whole.client(b);
                b.iter().for_each(|x| bytes.client(std::slice::from_ref(x)));
            } else {
                whole.backend(b);
                b.iter().for_each(|x| bytes.backend(std::slice::from_ref(x)));
            }
            prop_assert_eq!(whole.goodbye(), bytes.goodbye());
            prop_assert_eq!(whole.backend_said_bye(), bytes.backend_said_bye());
            prop_assert_eq!(whole.compressed(), bytes.compressed());
        }
    }

    #[test]
    fn literal_bytes_never_yield_now(body in prop::collection::vec(any::<u8>(), 0..200)) {
        let mut st = ImapState::new();
        st.backend(format!("* 1 FETCH (BODY[] {{{}}}\r\n", body.len()).as_bytes());
        for (i, b) in body.iter().enumerate() {
            st.backend(std::slice::from_ref(b));
            if i + 1 < body.len() {
                prop_assert_eq!(st.goodbye(), Goodbye::Wait);
            }
        }
        prop_assert_eq!(st.goodbye(), Goodbye::Wait);
        st.backend(b")\r\n");
        prop_assert_eq!(st.goodbye(), Goodbye::Now);
    }
}
