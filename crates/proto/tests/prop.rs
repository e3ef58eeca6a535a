//! Property tests: no input panics any state machine, held buffers stay within their bounds,
//! and how the input is split into reads never changes what comes out.

use postern_proto::capfilter::{CapabilityFilter, MAX_FILTER_LINE};
use postern_proto::starttls::{PlainLimits, PlainPhase, PlainStep};
use postern_proto::watch::{ClientWatch, PASS_TAIL, REPLY_HEAD};
use postern_proto::Protocol;
use proptest::prelude::*;

const MAX_LINE: usize = 128;

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![
        Just(Protocol::Imap),
        Just(Protocol::Pop3),
        Just(Protocol::Smtp)
    ]
}

/// Mail-protocol-shaped bytes: keywords, literals, line ends and random bytes mixed.
fn wire() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just(b"a ".to_vec()),
        Just(b"STARTTLS".to_vec()),
        Just(b"STLS".to_vec()),
        Just(b"CAPABILITY".to_vec()),
        Just(b"CAPA".to_vec()),
        Just(b"EHLO x".to_vec()),
        Just(b"250-".to_vec()),
        Just(b"250 ".to_vec()),
        Just(b"* ".to_vec()),
        Just(b"+OK".to_vec()),
        Just(b"LOGIN ".to_vec()),
        Just(b"AUTHENTICATE PLAIN".to_vec()),
        Just(b"AUTH LOGIN".to_vec()),
        Just(b"USER bob".to_vec()),
        Just(b"ID (\"x-originating-ip\" \"1\")".to_vec()),
        Just(b"XCLIENT ADDR=1".to_vec()),
        Just(b"BDAT 3".to_vec()),
        Just(b"AGJvYgBwdw==".to_vec()),
        Just(b"{3}".to_vec()),
        Just(b"{2+}".to_vec()),
        Just(b"{0}".to_vec()),
        Just(b"[CAPABILITY ".to_vec()),
        Just(b"]".to_vec()),
        Just(b"*".to_vec()),
        Just(b" ".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b".\r\n".to_vec()),
        prop::collection::vec(any::<u8>(), 0..8),
        prop::collection::vec(Just(b'x'), 100..300),
    ];
    prop::collection::vec(token, 0..60).prop_map(|t| t.concat())
}

/// Backend-reply-shaped bytes: tagged and untagged completions, continuations, POP3 and
/// SMTP status lines, literals, line ends and random bytes mixed.
fn replies() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just(b"a OK".to_vec()),
        Just(b"a NO".to_vec()),
        Just(b"b BAD".to_vec()),
        Just(b"* PREAUTH".to_vec()),
        Just(b"* OK".to_vec()),
        Just(b"+ ".to_vec()),
        Just(b"+OK".to_vec()),
        Just(b"-ERR".to_vec()),
        Just(b"235 ".to_vec()),
        Just(b"334 ".to_vec()),
        Just(b"354 ".to_vec()),
        Just(b"250-".to_vec()),
        Just(b"535 ".to_vec()),
        Just(b"{3}".to_vec()),
        Just(b"{100}".to_vec()),
        Just(b" ".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n".to_vec()),
        Just(b".\r\n".to_vec()),
        prop::collection::vec(any::<u8>(), 0..8),
        prop::collection::vec(Just(b'x'), 100..300),
    ];
    prop::collection::vec(token, 0..20).prop_map(|t| t.concat())
}

/// A session: client (true) and backend (false) reads in the order they arrive.
fn session() -> impl Strategy<Value = Vec<(bool, Vec<u8>)>> {
    let step = prop_oneof![
        wire().prop_map(|b| (true, b)),
        replies().prop_map(|b| (false, b)),
    ];
    prop::collection::vec(step, 0..8)
}

/// Splits `input` at the given (sorted, deduplicated) cut points.
fn split(input: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut out = Vec::new();
    let mut last = 0;
    for c in cuts {
        out.push(input[last..c].to_vec());
        last = c;
    }
    out.push(input[last..].to_vec());
    out
}

/// Runs a plaintext phase over `chunks`; returns the bytes written to the client and whether
/// (and how) it ended. Asserts the buffer bound on the way.
fn plain(p: Protocol, chunks: &[Vec<u8>]) -> (Vec<u8>, Option<&'static str>) {
    let limits = PlainLimits {
        max_line_length: MAX_LINE,
        max_commands: 40,
    };
    let mut ph = PlainPhase::new(p, "mx.test", limits);
    let mut buf = Vec::new();
    let mut written = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match ph.step(&mut buf) {
                PlainStep::NeedMore => {
                    assert!(
                        buf.len() < MAX_LINE,
                        "NeedMore with {} bytes buffered",
                        buf.len()
                    );
                    break;
                }
                PlainStep::Reply(r) => {
                    assert!(r.ends_with(b"\r\n"));
                    written.extend_from_slice(&r);
                }
                PlainStep::Upgrade { reply, .. } => {
                    assert!(buf.is_empty(), "bytes left in buf across the upgrade");
                    written.extend_from_slice(&reply);
                    return (written, Some("upgrade"));
                }
                PlainStep::Close(r) => {
                    written.extend_from_slice(&r);
                    return (written, Some("close"));
                }
            }
        }
    }
    (written, None)
}

fn watch(p: Protocol, strict: bool, chunks: &[Vec<u8>]) -> (Vec<u8>, Vec<u8>, Option<String>) {
    let mut w = if strict {
        ClientWatch::strict(p, MAX_LINE)
    } else {
        ClientWatch::new(p, MAX_LINE)
    };
    let (mut backend, mut client) = (Vec::new(), Vec::new());
    for chunk in chunks {
        if w.is_done() {
            backend.extend_from_slice(chunk);
            continue;
        }
        w.feed(chunk, &mut backend, &mut client);
        assert!(w.held_len() <= MAX_LINE, "held {}", w.held_len());
        if w.is_done() {
            assert_eq!(w.held_len(), 0);
        }
    }
    w.flush(&mut backend);
    (backend, client, w.user().map(str::to_owned))
}

/// Held memory bound of the backend side (reply line, 64 tags of at most 64 bytes).
const MAX_BACKEND_HELD: usize = REPLY_HEAD + PASS_TAIL + 64 * 64;

type WatchOut = (Vec<u8>, Vec<u8>, Option<String>, bool);

/// Feeds client and backend reads in order (each step already split into reads).
fn watch_session(p: Protocol, strict: bool, steps: &[(bool, Vec<Vec<u8>>)]) -> WatchOut {
    let mut w = if strict {
        ClientWatch::strict(p, MAX_LINE)
    } else {
        ClientWatch::new(p, MAX_LINE)
    };
    let (mut backend, mut client) = (Vec::new(), Vec::new());
    for (from_client, reads) in steps {
        for read in reads {
            match (from_client, w.is_done()) {
                (true, true) => backend.extend_from_slice(read),
                (true, false) => w.feed(read, &mut backend, &mut client),
                (false, _) => w.backend(read),
            }
            assert!(w.held_len() <= MAX_LINE, "held {}", w.held_len());
            assert!(
                w.backend_held_len() <= MAX_BACKEND_HELD,
                "backend held {}",
                w.backend_held_len()
            );
            if w.is_done() {
                assert_eq!(w.held_len(), 0);
            }
        }
    }
    let done = w.is_done();
    w.flush(&mut backend);
    (backend, client, w.user().map(str::to_owned), done)
}

fn filter(p: Protocol, chunks: &[Vec<u8>]) -> Vec<u8> {
    let mut f = CapabilityFilter::new(p);
    let mut out = Vec::new();
    for chunk in chunks {
        f.feed(chunk, &mut out);
        assert!(f.held_len() <= 2 * MAX_FILTER_LINE);
        if f.is_done() {
            assert_eq!(f.held_len(), 0);
        }
    }
    f.flush(&mut out);
    out
}

proptest! {
    // 1000 cases each by default (about 25 s in a debug build); PROPTEST_CASES overrides.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000),
        ..ProptestConfig::default()
    })]

    #[test]
    fn plain_phase_bounded_and_split_invariant(p in protocol(), input in wire(), cuts in prop::collection::vec(any::<usize>(), 0..20)) {
        let once = plain(p, std::slice::from_ref(&input));
        let pieces = plain(p, &split(&input, &cuts));
        prop_assert_eq!(once, pieces);
    }

    #[test]
    fn plain_phase_arbitrary_bytes(p in protocol(), input in prop::collection::vec(any::<u8>(), 0..600)) {
        let bytewise: Vec<Vec<u8>> = input.iter().map(|b| vec![*b]).collect();
        prop_assert_eq!(plain(p, std::slice::from_ref(&input)), plain(p, &bytewise));
    }

    #[test]
    fn watch_bounded_and_split_invariant(
        p in protocol(),
        strict in any::<bool>(), input in wire(), cuts in prop::collection::vec(any::<usize>(), 0..20)) {
        let once = watch(p, strict, std::slice::from_ref(&input));
        let pieces = watch(p, strict, &split(&input, &cuts));
        prop_assert_eq!(once, pieces);
    }

    #[test]
    fn watch_arbitrary_bytes(
        p in protocol(),
        strict in any::<bool>(), input in prop::collection::vec(any::<u8>(), 0..600)) {
        let bytewise: Vec<Vec<u8>> = input.iter().map(|b| vec![*b]).collect();
        prop_assert_eq!(watch(p, strict, std::slice::from_ref(&input)), watch(p, strict, &bytewise));
    }

    #[test]
    fn watch_with_replies_bounded_and_split_invariant(
        p in protocol(),
        strict in any::<bool>(), steps in session(), cuts in prop::collection::vec(any::<usize>(), 0..20)) {
        let whole: Vec<(bool, Vec<Vec<u8>>)> = steps.iter().map(|(c, b)| (*c, vec![b.clone()])).collect();
        let pieces: Vec<(bool, Vec<Vec<u8>>)> = steps.iter().map(|(c, b)| (*c, split(b, &cuts))).collect();
        prop_assert_eq!(watch_session(p, strict, &whole), watch_session(p, strict, &pieces));
    }

    #[test]
    fn watch_with_replies_arbitrary_bytes(
        p in protocol(),
        strict in any::<bool>(),
        steps in prop::collection::vec((any::<bool>(), prop::collection::vec(any::<u8>(), 0..200)), 0..6)) {
        let whole: Vec<(bool, Vec<Vec<u8>>)> = steps.iter().map(|(c, b)| (*c, vec![b.clone()])).collect();
        let bytewise: Vec<(bool, Vec<Vec<u8>>)> = steps.iter().map(|(c, b)| (*c, b.iter().map(|x| vec![*x]).collect())).collect();
        prop_assert_eq!(watch_session(p, strict, &whole), watch_session(p, strict, &bytewise));
    }

    #[test]
    fn filter_bounded_and_split_invariant(p in protocol(), input in wire(), cuts in prop::collection::vec(any::<usize>(), 0..20)) {
        let once = filter(p, std::slice::from_ref(&input));
        let pieces = filter(p, &split(&input, &cuts));
        prop_assert_eq!(once, pieces);
    }

    #[test]
    fn filter_arbitrary_bytes(p in protocol(), input in prop::collection::vec(any::<u8>(), 0..600)) {
        let bytewise: Vec<Vec<u8>> = input.iter().map(|b| vec![*b]).collect();
        prop_assert_eq!(filter(p, std::slice::from_ref(&input)), filter(p, &bytewise));
    }
}
