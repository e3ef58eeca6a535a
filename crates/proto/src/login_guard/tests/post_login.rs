//! IMAP after login: the cheap filter.

use super::*;

fn logged_in() -> Vec<Step<'static>> {
    vec![
        B(IMAP_GREETING),
        C(b"a LOGIN alice pw\r\n"),
        B(b"a OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n"),
    ]
}

#[test]
fn the_guard_hands_over_after_login() {
    let mut g = LoginGuard::new(Protocol::Imap, MAX_LINE);
    let (mut b, mut c) = (Vec::new(), Vec::new());
    let _ = g.backend(IMAP_GREETING, &mut c, &mut b);
    let _ = g.client(b"a LOGIN alice pw\r\n", &mut b, &mut c);
    assert!(g.reads_backend());
    let _ = g.backend(b"a OK Logged in\r\n", &mut c, &mut b);
    assert!(!g.reads_backend());
    // A read without an ID passes as it is, without a copy.
    let append = b"b APPEND INBOX {40}\r\nc ID (\"x-originating-ip\" \"1.2.3.4\")\r\n\r\n";
    b.clear();
    assert_eq!(g.client(append, &mut b, &mut c), Passed::Unchanged);
    assert!(b.is_empty());
    assert_eq!(
        g.backend(b"* 1 FETCH\r\n", &mut c, &mut b),
        Passed::Unchanged
    );
}

#[test]
fn t12_id_claims_after_login_are_refused() {
    let mut steps = logged_in();
    steps.push(C(
        b"b SELECT INBOX\r\nc ID (\"X-ORIGINATING-IP\" \"1.2.3.4\")\r\nd NOOP\r\n",
    ));
    let o = run(Protocol::Imap, &steps);
    assert!(o
        .to_backend
        .ends_with("a LOGIN alice pw\r\nb SELECT INBOX\r\nd NOOP\r\n"));
    assert!(o
        .to_client
        .ends_with("c BAD ID field \"X-ORIGINATING-IP\" is reserved to the mail gateway\r\n"));
    assert_eq!(o.claims, 1);
    // A clean ID (Thunderbird sends one after login) is forwarded, re-encoded.
    let mut steps = logged_in();
    steps.push(C(
        b"e ID (\"name\" \"Thunderbird\" \"version\" {3+}\r\n115)\r\n",
    ));
    let o = run(Protocol::Imap, &steps);
    assert!(o
        .to_backend
        .ends_with("e ID (\"name\" \"Thunderbird\" \"version\" \"115\")\r\n"));
}

#[test]
fn literal_data_after_login_is_not_read_as_commands() {
    let mut steps = logged_in();
    let append =
        b"b APPEND INBOX {42}\r\nc ID (\"x-originating-ip\" \"1.2.3.4\")\r\n\r\nd NOOP\r\n";
    steps.push(C(append));
    let o = run(Protocol::Imap, &steps);
    assert!(o.to_backend.ends_with(std::str::from_utf8(append).unwrap()));
    assert_eq!(o.claims, 0);
}

#[test]
fn a_synchronizing_literal_in_an_id_after_login_gets_postern_s_go_ahead() {
    let mut steps = logged_in();
    steps.push(C(b"f ID ({16}\r\n"));
    steps.push(C(b"x-originating-ip \"1.2.3.4\")\r\n"));
    let o = run(Protocol::Imap, &steps);
    assert!(o.to_client.contains("+ Ready for literal data\r\n"));
    assert!(o.to_client.ends_with("is reserved to the mail gateway\r\n"));
    assert!(!o.to_backend.contains("originating"));
}

#[test]
fn compress_stops_the_filter() {
    let mut g = LoginGuard::new(Protocol::Imap, MAX_LINE);
    let (mut b, mut c) = (Vec::new(), Vec::new());
    let _ = g.backend(b"* PREAUTH ready\r\n", &mut c, &mut b);
    let _ = g.client(b"a COMPRESS DEFLATE\r\n", &mut b, &mut c);
    g.compressed();
    assert_eq!(
        g.client(b"c ID (\"x-originating-ip\" \"1\")\r\n", &mut b, &mut c),
        Passed::Unchanged
    );
}

#[test]
fn a_literal_after_a_held_line_start_is_still_seen() {
    // Found by the fuzzer: a line whose start was held across reads (no SP in it yet) ends
    // with a literal announcement; its bytes must not be read as commands.
    let o = run(
        Protocol::Imap,
        &[
            B(b"* PREAUTH hi\r\n"),
            C(b"..{20+}\r\nb ID AYN\r\n(\x84\"x"),
        ],
    );
    assert_eq!(o.claims, 0);
    assert!(o.to_backend.ends_with("b ID AYN\r\n(\u{fffd}\"x"));
}
