//! Property tests: no input panics any state machine, held buffers stay within their bounds,
//! and how the input is split into reads never changes what comes out.

use postern_proto::capabilities::Capabilities;
use postern_proto::capfilter::{CapabilityFilter, MAX_FILTER_LINE};
use postern_proto::login_guard::MAX_SASL_LINE;
use postern_proto::login_guard::{
    LoginGuard, LoginVerdict, Passed, MAX_ID_COMMAND, MAX_OWN_BACKLOG, MAX_TAG, REPLY_HEAD,
};
use postern_proto::prelogin::{PreStep, Prelogin, PreloginLimits, ReplySwallow, MAX_COMMAND};
use postern_proto::starttls::{PlainLimits, PlainPhase, PlainStep};
use postern_proto::Protocol;
use proptest::prelude::*;

const MAX_LINE: usize = 128;

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![
        Just(Protocol::Imap),
        Just(Protocol::Pop3),
        Just(Protocol::Smtp),
        Just(Protocol::Sieve)
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
        Just(b"a ID (\"x-originating-ip\" \"1\")\r\n".to_vec()),
        Just(b"ID (\"name\" {3}".to_vec()),
        Just(b"DATA".to_vec()),
        Just(b"AUTH PLAIN".to_vec()),
        Just(b"EHLO c".to_vec()),
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
        Just(b"+ OK\r\n".to_vec()),
        Just(b"* OK [CAPABILITY IMAP4rev1 LITERAL+]\r\n".to_vec()),
        Just(b"250-CHUNKING\r\n".to_vec()),
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

/// IMAP backend bytes rich in whole untagged lines (what the guard's fast path passes over)
/// mixed with every line it must not pass over: statuses, BYE, CAPABILITY, tagged replies,
/// continuations, literals, status text ending in braces, lines over 1 KiB.
fn imap_lines() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just(b"* 1 FETCH (UID 4711 FLAGS (\\Seen))\r\n".to_vec()),
        Just(b"* 1 FETCH (UID 4711 FLAGS (\\Seen))\r\n".to_vec()),
        Just(b"* 3 EXISTS\r\n".to_vec()),
        Just(b"* FLAGS (\\Seen)\r\n".to_vec()),
        Just(b"* SEARCH 1 2 3\n".to_vec()),
        Just(b"* 1 FETCH (BODY[] {3}\r\nabc)\r\n".to_vec()),
        Just(b"* LIST () \"/\" {5}\r\nINBOX\r\n".to_vec()),
        Just(b"* OK [CAPABILITY IMAP4rev1 LITERAL+] {5}\r\n".to_vec()),
        Just(b"* cApAbIlItY IMAP4rev1\r\n".to_vec()),
        Just(b"* CAPABILITY IMAP4rev1 LITERAL+\r\n".to_vec()),
        Just(b"* bye going\r\n".to_vec()),
        Just(b"* BYE\r\n".to_vec()),
        Just(b"* NO x\r\n".to_vec()),
        Just(b"* PREAUTH\r\n".to_vec()),
        Just(b"a OK done\r\n".to_vec()),
        Just(b"b NO {5}\r\n".to_vec()),
        Just(b"+ go\r\n".to_vec()),
        Just(b"*\r\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"}".to_vec()),
        Just(b"*".to_vec()),
        Just(b" ".to_vec()),
        prop::collection::vec(Just(b'x'), 1000..1100),
        prop::collection::vec(any::<u8>(), 0..8),
    ];
    prop::collection::vec(token, 0..40).prop_map(|t| t.concat())
}

/// Client commands for the IMAP session of [`imap_lines`].
fn imap_commands() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just(b"a LOGIN u p\r\n".to_vec()),
        Just(b"b NOOP\r\n".to_vec()),
        Just(b"c LOGIN {1}\r\n".to_vec()),
        Just(b"u p\r\n".to_vec()),
        Just(b"d ID (\"x-originating-ip\" \"1\")\r\n".to_vec()),
        Just(b"e CAPABILITY\r\n".to_vec()),
        Just(b"f LOGIN {1+}\r\nu p\r\n".to_vec()),
    ];
    prop::collection::vec(token, 0..4).prop_map(|t| t.concat())
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

/// Client bytes held by the guard: one segment (an ID at most), bytes waiting for an answer
/// (at most the reads fed while it did not want more: here, the whole input), SASL window.
fn held_bound(input_len: usize) -> usize {
    MAX_ID_COMMAND + input_len + 2048
}

/// Backend side: one line head, 64 commands in flight (tag + name), queued replies.
const MAX_BACKEND_HELD: usize = REPLY_HEAD + 32 + 64 * (MAX_TAG + 256) + MAX_OWN_BACKLOG + 512;

type GuardOut = (Vec<u8>, Vec<u8>, Vec<LoginVerdict>, bool, bool);

/// Feeds client and backend reads in order (each step already split into reads); checks
/// the bounds after every read.
fn guard_session(p: Protocol, steps: &[(bool, Vec<Vec<u8>>)]) -> GuardOut {
    let mut g = LoginGuard::new(p, MAX_LINE);
    let (mut backend, mut client) = (Vec::new(), Vec::new());
    let mut verdicts = Vec::new();
    let total: usize = steps.iter().flat_map(|(_, r)| r).map(Vec::len).sum();
    for (from_client, reads) in steps {
        for read in reads {
            let passed = if *from_client {
                g.client(read, &mut backend, &mut client)
            } else {
                g.backend(read, &mut client, &mut backend)
            };
            if passed == Passed::Unchanged {
                if *from_client {
                    backend.extend_from_slice(read);
                } else {
                    client.extend_from_slice(read);
                }
            }
            // The caller writes postern's replies, then tells the guard (the relay does).
            while g.own_replies_unwritten() {
                g.own_replies_written(&mut backend, &mut client);
            }
            while let Some(v) = g.next_verdict() {
                verdicts.push(v);
            }
            assert!(g.held_len() <= held_bound(total), "held {}", g.held_len());
            assert!(
                g.backend_held_len() <= MAX_BACKEND_HELD,
                "backend held {}",
                g.backend_held_len()
            );
        }
        g.replies_at_boundary(&mut client);
    }
    (backend, client, verdicts, g.logged_in(), g.finished())
}

fn filter(p: Protocol, chunks: &[Vec<u8>]) -> Vec<u8> {
    let mut f = CapabilityFilter::new(p);
    let mut out = Vec::new();
    for chunk in chunks {
        f.feed(chunk, &mut out);
        assert!(f.held_len() <= 2 * MAX_FILTER_LINE);
    }
    f.flush(&mut out);
    out
}

/// What a pre-login dialogue did with `chunks`: the bytes written, and when it handed a
/// login over, the user, the swallow count and the replay followed by every chunk not fed
/// (so the split version compares equal: both are the input from the login on).
type PreOut = (Vec<u8>, Option<(String, u32, Vec<u8>)>, bool);

fn prelogin(p: Protocol, chunks: &[Vec<u8>]) -> PreOut {
    let caps = Capabilities::new(
        [
            "IMAP4rev1",
            "SASL-IR",
            "LITERAL+",
            "AUTH=PLAIN",
            "AUTH=LOGIN",
            "USER",
            "SASL PLAIN LOGIN",
            "AUTH PLAIN LOGIN",
        ]
        .map(str::to_owned)
        .to_vec(),
    );
    let limits = PreloginLimits {
        max_line_length: MAX_LINE,
        max_commands: 40,
    };
    let mut pre = Prelogin::new(p, "mx.test", Some(&caps), limits);
    let mut buf = Vec::new();
    let mut written = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        buf.extend_from_slice(chunk);
        loop {
            match pre.step(&mut buf) {
                PreStep::NeedMore => {
                    assert!(
                        buf.len() <= MAX_SASL_LINE.max(MAX_COMMAND),
                        "NeedMore with {} bytes buffered",
                        buf.len()
                    );
                    assert!(pre.held_len() <= MAX_COMMAND + MAX_LINE);
                    break;
                }
                PreStep::Reply(r) => {
                    assert!(r.is_empty() || r.ends_with(b"\r\n"));
                    written.extend_from_slice(&r);
                }
                PreStep::Login(login) => {
                    assert!(buf.is_empty(), "the buffer goes into the replay");
                    let mut rest = login.replay.as_slice().to_vec();
                    for c in &chunks[i + 1..] {
                        rest.extend_from_slice(c);
                    }
                    return (written, Some((login.user, login.swallow, rest)), false);
                }
                PreStep::Close(r) => {
                    written.extend_from_slice(&r);
                    return (written, None, true);
                }
            }
        }
    }
    (written, None, false)
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
    fn prelogin_bounded_split_invariant_and_replays_what_the_client_sent(
        p in protocol(), input in wire(), cuts in prop::collection::vec(any::<usize>(), 0..20)
    ) {
        let once = prelogin(p, std::slice::from_ref(&input));
        let pieces = prelogin(p, &split(&input, &cuts));
        if let (_, Some((_, _, replay)), _) = &once {
            // Byte for byte: what the server gets is the client's own bytes (SMTP: its
            // EHLO line first, itself an earlier part of the input).
            if p != Protocol::Smtp {
                prop_assert!(input.ends_with(replay));
            }
        }
        prop_assert_eq!(once, pieces);
    }

    #[test]
    fn prelogin_arbitrary_bytes(p in protocol(), input in prop::collection::vec(any::<u8>(), 0..600)) {
        let bytewise: Vec<Vec<u8>> = input.iter().map(|b| vec![*b]).collect();
        prop_assert_eq!(prelogin(p, std::slice::from_ref(&input)), prelogin(p, &bytewise));
    }

    #[test]
    fn swallow_split_invariant(p in protocol(), n in 0u32..4, input in replies(), cuts in prop::collection::vec(any::<usize>(), 0..20)) {
        let run = |chunks: &[Vec<u8>]| {
            let mut s = ReplySwallow::new(p, n);
            let mut out = Vec::new();
            for c in chunks {
                s.feed(c, &mut out);
            }
            (out, s.done())
        };
        let (out, done) = run(std::slice::from_ref(&input));
        prop_assert!(out.len() <= input.len());
        if n == 0 {
            prop_assert_eq!(&out, &input);
        }
        prop_assert_eq!((out, done), run(&split(&input, &cuts)));
    }

    #[test]
    fn plain_phase_arbitrary_bytes(p in protocol(), input in prop::collection::vec(any::<u8>(), 0..600)) {
        let bytewise: Vec<Vec<u8>> = input.iter().map(|b| vec![*b]).collect();
        prop_assert_eq!(plain(p, std::slice::from_ref(&input)), plain(p, &bytewise));
    }

    #[test]
    fn guard_verdict_does_not_depend_on_read_sizes(
        p in protocol(), steps in session(), cuts in prop::collection::vec(any::<usize>(), 0..20)) {
        let whole: Vec<(bool, Vec<Vec<u8>>)> = steps.iter().map(|(c, b)| (*c, vec![b.clone()])).collect();
        let pieces: Vec<(bool, Vec<Vec<u8>>)> = steps.iter().map(|(c, b)| (*c, split(b, &cuts))).collect();
        prop_assert_eq!(guard_session(p, &whole), guard_session(p, &pieces));
    }

    #[test]
    fn guard_imap_lines_whole_or_bytewise(
        steps in prop::collection::vec(prop_oneof![
            imap_commands().prop_map(|b| (true, b)),
            imap_lines().prop_map(|b| (false, b)),
        ], 0..8)) {
        // Whole reads take the fast path over untagged lines; single bytes never can.
        let mut steps = steps;
        steps.insert(0, (false, b"* OK ready\r\n".to_vec()));
        let whole: Vec<(bool, Vec<Vec<u8>>)> = steps.iter().map(|(c, b)| (*c, vec![b.clone()])).collect();
        let bytewise: Vec<(bool, Vec<Vec<u8>>)> = steps.iter().map(|(c, b)| (*c, b.iter().map(|x| vec![*x]).collect())).collect();
        prop_assert_eq!(guard_session(Protocol::Imap, &whole), guard_session(Protocol::Imap, &bytewise));
    }

    #[test]
    fn guard_arbitrary_bytes_bytewise(
        p in protocol(),
        steps in prop::collection::vec((any::<bool>(), prop::collection::vec(any::<u8>(), 0..200)), 0..6)) {
        let whole: Vec<(bool, Vec<Vec<u8>>)> = steps.iter().map(|(c, b)| (*c, vec![b.clone()])).collect();
        let bytewise: Vec<(bool, Vec<Vec<u8>>)> = steps.iter().map(|(c, b)| (*c, b.iter().map(|x| vec![*x]).collect())).collect();
        prop_assert_eq!(guard_session(p, &whole), guard_session(p, &bytewise));
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
