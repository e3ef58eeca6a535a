use base64::engine::general_purpose::STANDARD;

use super::*;

const MAX: usize = 1024;

struct Out {
    backend: Vec<u8>,
    client: Vec<u8>,
    user: Option<String>,
    done: bool,
}

fn whole(p: Protocol, input: &[u8]) -> Out {
    whole_r(p, input, b"")
}

/// The client's bytes in one read, then the backend's replies in one read.
fn whole_r(p: Protocol, input: &[u8], replies: &[u8]) -> Out {
    let mut w = ClientWatch::new(p, MAX);
    let (mut backend, mut client) = (Vec::new(), Vec::new());
    w.feed(input, &mut backend, &mut client);
    w.backend(replies);
    Out {
        backend,
        client,
        user: w.user().map(str::to_owned),
        done: w.is_done(),
    }
}

/// Byte-by-byte feeding; asserts on the way that no secret ever shows in Debug output.
fn bytewise(p: Protocol, input: &[u8], replies: &[u8], secret: &str) -> Out {
    let mut w = ClientWatch::new(p, MAX);
    let (mut backend, mut client) = (Vec::new(), Vec::new());
    for b in input {
        w.feed(std::slice::from_ref(b), &mut backend, &mut client);
        let debug = format!("{w:?}");
        assert!(secret.is_empty() || !debug.contains(secret), "{debug}");
    }
    for b in replies {
        w.backend(std::slice::from_ref(b));
        let debug = format!("{w:?}");
        assert!(secret.is_empty() || !debug.contains(secret), "{debug}");
    }
    Out {
        backend,
        client,
        user: w.user().map(str::to_owned),
        done: w.is_done(),
    }
}

/// Checks an IMAP login transcript (tag `a`) confirmed by `a OK`.
fn login(p: Protocol, input: &[u8], user: &str, secret: &str) {
    login_r(p, input, b"a OK Logged in\r\n", user, secret);
}

/// Checks a login transcript both ways, in strict and default mode: passed through
/// unchanged, user recorded and done only once the backend's `replies` were seen.
fn login_r(p: Protocol, input: &[u8], replies: &[u8], user: &str, secret: &str) {
    let text = String::from_utf8_lossy(input);
    for (how, out) in [
        ("whole", whole_r(p, input, replies)),
        ("bytewise", bytewise(p, input, replies, secret)),
    ] {
        assert_eq!(out.backend, input, "{how}: {text}");
        assert!(out.client.is_empty(), "{how}: {text}");
        assert_eq!(out.user.as_deref(), Some(user), "{how}: {text}");
        assert!(out.done, "{how}: {text}");
    }
    for mut w in [ClientWatch::new(p, MAX), ClientWatch::strict(p, MAX)] {
        w.feed(input, &mut Vec::new(), &mut Vec::new());
        assert!(!format!("{w:?}").contains(secret));
        assert_eq!(w.user(), None, "not confirmed yet: {text}");
        assert!(!w.is_done(), "not confirmed yet: {text}");
        w.backend(replies);
        assert_eq!(w.user(), Some(user), "{text}");
        assert!(w.is_done(), "{text}");
    }
}

fn b64(s: &[u8]) -> String {
    STANDARD.encode(s)
}

// ---- user capture ----

#[test]
fn imap_login_forms() {
    login(Protocol::Imap, b"a LOGIN bob s3cret\r\n", "bob", "s3cret");
    login(
        Protocol::Imap,
        b"a login \"bob smith\" \"s3\\\"cret\"\r\n",
        "bob smith",
        "s3",
    );
    login(
        Protocol::Imap,
        b"a LOGIN \"b\\\\o\\\"b\" s3cret\r\n",
        "b\\o\"b",
        "s3cret",
    );
    login(
        Protocol::Imap,
        b"a LOGIN {3}\r\nbob {6}\r\ns3cret\r\n",
        "bob",
        "s3cret",
    );
    login(
        Protocol::Imap,
        b"a LOGIN {3+}\r\nbob {6+}\r\ns3cret\r\n",
        "bob",
        "s3cret",
    );
    login(
        Protocol::Imap,
        b"a LOGIN {3}\r\nbob \"s3cret\"\r\n",
        "bob",
        "s3cret",
    );
    login(
        Protocol::Imap,
        b"a LOGIN bob {6}\r\ns3cret\r\n",
        "bob",
        "s3cret",
    );
    login(
        Protocol::Imap,
        b"a LOGIN bob@example.org s3cret\n",
        "bob@example.org",
        "s3cret",
    );
}

#[test]
fn imap_authenticate_forms() {
    let plain = b64(b"\0bob\0s3cret");
    login(
        Protocol::Imap,
        format!("a AUTHENTICATE PLAIN {plain}\r\n").as_bytes(),
        "bob",
        "s3cret",
    );
    login(
        Protocol::Imap,
        format!("a authenticate plain\r\n{plain}\r\n").as_bytes(),
        "bob",
        "s3cret",
    );
    login(
        Protocol::Imap,
        format!("a AUTHENTICATE PLAIN =\r\n{plain}\r\n").as_bytes(),
        "bob",
        "s3cret",
    );
    let authz = b64(b"admin\0bob\0s3cret");
    login(
        Protocol::Imap,
        format!("a AUTHENTICATE PLAIN {authz}\r\n").as_bytes(),
        "bob",
        "s3cret",
    );
    let (u, pw) = (b64(b"bob"), b64(b"s3cret"));
    login(
        Protocol::Imap,
        format!("a AUTHENTICATE LOGIN\r\n{u}\r\n{pw}\r\n").as_bytes(),
        "bob",
        "s3cret",
    );
    let xo = b64(b"user=bob@x.org\x01auth=Bearer t0ken\x01\x01");
    login(
        Protocol::Imap,
        format!("a AUTHENTICATE XOAUTH2 {xo}\r\n").as_bytes(),
        "bob@x.org",
        "t0ken",
    );
    let ob = b64(b"n,a=bob=2Cx,\x01auth=Bearer t0ken\x01\x01");
    login(
        Protocol::Imap,
        format!("a AUTHENTICATE OAUTHBEARER\r\n{ob}\r\n").as_bytes(),
        "bob,x",
        "t0ken",
    );
}

#[test]
fn pop3_login_forms() {
    login_r(
        Protocol::Pop3,
        b"CAPA\r\nUSER bob\r\nPASS s3cret\r\n",
        b"+OK\r\nUSER\r\n.\r\n+OK\r\n+OK Logged in.\r\n",
        "bob",
        "s3cret",
    );
    login_r(
        Protocol::Pop3,
        b"USER wrong\r\nUSER bob\r\nPASS s3cret\r\n",
        b"+OK\r\n+OK\r\n+OK Logged in.\r\n",
        "bob",
        "s3cret",
    );
    login_r(
        Protocol::Pop3,
        b"APOP bob c4c9334bac560ecc979e58001b3e22fb\r\n",
        b"+OK Logged in.\r\n",
        "bob",
        "c4c9334b",
    );
    let plain = b64(b"\0bob\0s3cret");
    login_r(
        Protocol::Pop3,
        format!("AUTH\r\nAUTH PLAIN {plain}\r\n").as_bytes(),
        b"+OK\r\nPLAIN\r\n.\r\n+OK Logged in.\r\n",
        "bob",
        "s3cret",
    );
    login_r(
        Protocol::Pop3,
        format!("AUTH PLAIN\r\n{plain}\r\n").as_bytes(),
        b"+ \r\n+OK Logged in.\r\n",
        "bob",
        "s3cret",
    );
}

#[test]
fn smtp_login_forms() {
    let plain = b64(b"\0bob\0s3cret");
    login_r(
        Protocol::Smtp,
        format!("EHLO x\r\nAUTH PLAIN {plain}\r\n").as_bytes(),
        b"250-x\r\n250 AUTH PLAIN\r\n235 2.7.0 ok\r\n",
        "bob",
        "s3cret",
    );
    login_r(
        Protocol::Smtp,
        format!("EHLO x\r\nauth plain\r\n{plain}\r\n").as_bytes(),
        b"250 x\r\n334 \r\n235 ok\r\n",
        "bob",
        "s3cret",
    );
    let (u, pw) = (b64(b"bob"), b64(b"s3cret"));
    login_r(
        Protocol::Smtp,
        format!("EHLO x\r\nAUTH LOGIN\r\n{u}\r\n{pw}\r\n").as_bytes(),
        b"250 x\r\n334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235 ok\r\n",
        "bob",
        "s3cret",
    );
    login_r(
        Protocol::Smtp,
        format!("EHLO x\r\nAUTH LOGIN {u}\r\n{pw}\r\n").as_bytes(),
        b"250 x\r\n334 UGFzc3dvcmQ6\r\n235 ok\r\n",
        "bob",
        "s3cret",
    );
}

#[test]
fn bytes_after_a_confirmed_login_pass_unchanged() {
    let mut w = ClientWatch::strict(Protocol::Imap, MAX);
    let (mut backend, mut client) = (Vec::new(), Vec::new());
    w.feed(b"a LOGIN bob pw\r\n", &mut backend, &mut client);
    w.backend(b"a OK Logged in\r\n");
    assert!(w.is_done());
    // From here the relay copies; the watch would pass anything on unchanged too.
    let after = b"b ID (\"x-originating-ip\" \"1.2.3.4\")\r\nc SELECT INBOX\r\n";
    w.feed(after, &mut backend, &mut client);
    assert_eq!(&backend[16..], after);
    assert!(client.is_empty());
}

#[test]
fn pipelined_id_after_an_unconfirmed_login_is_refused() {
    let input = b"a LOGIN bob pw\r\nb ID (\"x-originating-ip\" \"1.2.3.4\")\r\nc SELECT INBOX\r\n";
    let out = whole(Protocol::Imap, input);
    assert_eq!(out.backend, b"a LOGIN bob pw\r\nc SELECT INBOX\r\n");
    assert_eq!(out.client, ID_REPLY);
    assert!(!out.done);
}

#[test]
fn sasl_cancel_keeps_watching() {
    let plain = b64(b"\0bob\0pw");
    let input = format!("a AUTHENTICATE PLAIN\r\n*\r\nb AUTHENTICATE PLAIN {plain}\r\n");
    let w = whole_r(
        Protocol::Imap,
        input.as_bytes(),
        b"+ \r\na BAD Authentication aborted\r\nb OK Logged in\r\n",
    );
    assert_eq!(w.user.as_deref(), Some("bob"));
    assert!(w.done);
    let mut w = ClientWatch::new(Protocol::Imap, MAX);
    w.feed(
        b"a AUTHENTICATE PLAIN\r\n*\r\n",
        &mut Vec::new(),
        &mut Vec::new(),
    );
    assert!(!w.is_done());
}

#[test]
fn unknown_mechanism_ends_at_the_backends_success() {
    let input = b"AUTH CRAM-MD5\r\nZm9v\r\n";
    let out = whole(Protocol::Smtp, input);
    assert!(!out.done);
    assert_eq!(out.backend, input);
    let out = whole_r(Protocol::Smtp, input, b"334 PDE+\r\n235 2.7.0 ok\r\n");
    assert!(out.done);
    assert_eq!(out.user, None);
    assert_eq!(out.backend, input);
}

#[test]
fn user_is_sanitised_and_bounded() {
    let ok = b"+OK\r\n+OK\r\n";
    let out = whole_r(Protocol::Pop3, b"USER a\x1bb\x07\r\nPASS x\r\n", ok);
    assert_eq!(out.user.as_deref(), Some("a?b?"));
    let long = format!("USER {}\r\nPASS x\r\n", "u".repeat(600));
    assert_eq!(
        whole_r(Protocol::Pop3, long.as_bytes(), ok)
            .user
            .map(|u| u.len()),
        Some(MAX_USER)
    );
    let lit = format!("a LOGIN {{600}}\r\n{} pw\r\n", "u".repeat(600));
    assert_eq!(
        whole_r(Protocol::Imap, lit.as_bytes(), b"+ OK\r\na OK\r\n")
            .user
            .map(|u| u.len()),
        Some(MAX_USER)
    );
}

// ---- literals and chunks pass at once ----

#[test]
fn imap_literal_bytes_are_passed_immediately() {
    let mut w = ClientWatch::new(Protocol::Imap, MAX);
    let (mut backend, mut client) = (Vec::new(), Vec::new());
    w.feed(b"a LOGIN {3}\r\n", &mut backend, &mut client);
    // The client now waits for the backend's "+": the line must already be on its way.
    assert_eq!(backend, b"a LOGIN {3}\r\n");
    w.feed(b"bo", &mut backend, &mut client);
    assert_eq!(backend, b"a LOGIN {3}\r\nbo");
    assert_eq!(w.held_len(), 0);
    w.feed(b"b {2}\r\n", &mut backend, &mut client);
    w.feed(b"pw", &mut backend, &mut client);
    assert_eq!(backend, b"a LOGIN {3}\r\nbob {2}\r\npw");
    assert!(!w.is_done());
    w.feed(b"\r\n", &mut backend, &mut client);
    assert!(!w.is_done());
    w.backend(b"a OK\r\n");
    assert!(w.is_done());
    assert_eq!(w.user(), Some("bob"));
}

#[test]
fn other_imap_literals_are_counted_not_parsed() {
    // The literal holds what looks like a refused command: it is data, passed unchanged.
    let input = b"a APPEND x {22}\r\nb ID (\"x-connected-ip\")\r\nc LOGIN bob pw\r\n";
    let out = whole_r(Protocol::Imap, input, b"+ OK\r\na OK\r\nc OK\r\n");
    assert_eq!(out.backend, input);
    assert!(out.client.is_empty());
    assert_eq!(out.user.as_deref(), Some("bob"));
}

#[test]
fn smtp_bdat_chunk_is_passed_without_waiting_for_a_line_end() {
    let mut w = ClientWatch::new(Protocol::Smtp, MAX);
    let (mut backend, mut client) = (Vec::new(), Vec::new());
    w.feed(b"BDAT 5 LAST\r\nhello", &mut backend, &mut client);
    assert_eq!(backend, b"BDAT 5 LAST\r\nhello");
    assert_eq!(w.held_len(), 0);
}

// ---- T12 and T4 refusals ----

#[test]
fn t12_imap_id_with_address_fields_is_refused() {
    let reply = b"a BAD ID fields reserved to the gateway are not accepted\r\n";
    for id in [
        &b"a ID (\"x-originating-ip\" \"1.2.3.4\")\r\n"[..],
        b"a id (\"name\" \"x\" \"X-Originating-Port\" \"1\")\r\n",
        b"a ID (\"X-CONNECTED-IP\" \"10.0.0.1\")\r\n",
        b"a  ID (\"x-forward-user\" \"eve\")\r\n",
        b"a ID (\"x-session-id\" \"1\")\r\n",
    ] {
        let out = whole(Protocol::Imap, id);
        assert!(out.backend.is_empty(), "{}", String::from_utf8_lossy(id));
        assert_eq!(out.client, reply);
        assert!(!out.done);
    }
    // A harmless ID goes through.
    let ok = b"a ID (\"name\" \"Thunderbird\")\r\n";
    assert_eq!(whole(Protocol::Imap, ok).backend, ok);
    // Pipelined: only the ID is held back.
    let out = whole(
        Protocol::Imap,
        b"a ID (\"x-originating-ip\" \"1.2.3.4\")\r\nb LOGIN bob pw\r\n",
    );
    assert_eq!(out.backend, b"b LOGIN bob pw\r\n");
    assert_eq!(out.client, reply);
}

#[test]
fn t12_imap_id_with_literal_is_refused_and_its_bytes_dropped() {
    let reply = b"a BAD ID fields reserved to the gateway are not accepted\r\n";
    let out = whole(
        Protocol::Imap,
        b"a ID ({16+}\r\nx-originating-ip \"1.2.3.4\")\r\nb NOOP\r\n",
    );
    assert_eq!(out.backend, b"b NOOP\r\n");
    assert_eq!(out.client, reply);
    // Synchronizing: the client gets the tagged reply instead of "+" and sends no literal.
    let out = whole(Protocol::Imap, b"a ID ({16}\r\nb NOOP\r\n");
    assert_eq!(out.backend, b"b NOOP\r\n");
    assert_eq!(out.client, reply);
}

#[test]
fn t12_over_long_id_is_still_refused() {
    let mut id = b"a ID (\"x-originating-ip\" \"1.2.3.4\" \"pad\" \"".to_vec();
    id.extend(std::iter::repeat_n(b'x', 3 * MAX));
    id.extend_from_slice(b"\")\r\nb NOOP\r\n");
    for out in [
        whole(Protocol::Imap, &id),
        bytewise(Protocol::Imap, &id, b"", ""),
    ] {
        assert_eq!(out.backend, b"b NOOP\r\n");
        assert_eq!(
            out.client,
            b"a BAD ID fields reserved to the gateway are not accepted\r\n"
        );
    }
}

#[test]
fn t12_xclient_is_refused() {
    let out = whole(Protocol::Pop3, b"XCLIENT ADDR=1.2.3.4\r\nUSER bob\r\n");
    assert_eq!(out.backend, b"USER bob\r\n");
    assert_eq!(out.client, b"-ERR XCLIENT is not accepted from clients\r\n");
    let out = whole(
        Protocol::Smtp,
        b"EHLO x\r\n xclient ADDR=1.2.3.4\r\nXFORWARD ADDR=1.2.3.4\r\n",
    );
    assert_eq!(out.backend, b"EHLO x\r\n");
    assert_eq!(
        out.client,
        b"550 5.7.0 XCLIENT is not accepted from clients\r\n550 5.7.0 XFORWARD is not accepted from clients\r\n"
    );
}

#[test]
fn t12_refusal_still_applies_when_a_sasl_exchange_was_cut_short() {
    // The backend refused AUTHENTICATE PLAIN at once; the next line is a command, not a response.
    let out = whole(
        Protocol::Imap,
        b"a AUTHENTICATE PLAIN\r\nb ID (\"x-originating-ip\" \"1\")\r\n",
    );
    assert_eq!(out.backend, b"a AUTHENTICATE PLAIN\r\n");
    assert!(!out.client.is_empty());
    let out = whole(Protocol::Smtp, b"AUTH LOGIN\r\nXCLIENT ADDR=1.2.3.4\r\n");
    assert_eq!(out.backend, b"AUTH LOGIN\r\n");
    assert!(!out.done);
}

#[test]
fn t4_starttls_inside_tls_is_refused() {
    let out = whole(Protocol::Imap, b"a STARTTLS\r\n");
    assert!(out.backend.is_empty());
    assert_eq!(out.client, b"a BAD TLS is already active\r\n");
    assert_eq!(
        whole(Protocol::Pop3, b"stls\r\n").client,
        b"-ERR TLS is already active\r\n"
    );
    assert_eq!(
        whole(Protocol::Smtp, b"STARTTLS\r\n").client,
        b"503 5.5.1 TLS is already active\r\n"
    );
}

// ---- bounds ----

#[test]
fn over_long_line_is_passed_and_ends_inspection() {
    let mut input = b"a SELECT ".to_vec();
    input.extend(std::iter::repeat_n(b'x', 2 * MAX));
    input.extend_from_slice(b"\r\nb NOOP\r\n");
    for out in [
        whole(Protocol::Imap, &input),
        bytewise(Protocol::Imap, &input, b"", ""),
    ] {
        assert_eq!(out.backend, input);
        assert!(out.done);
    }
    let mut w = ClientWatch::new(Protocol::Imap, MAX);
    let mut backend = Vec::new();
    w.feed(&input[..MAX], &mut backend, &mut Vec::new());
    assert_eq!(w.held_len(), MAX);
    w.feed(&input[MAX..MAX + 1], &mut backend, &mut Vec::new());
    assert_eq!(w.held_len(), 0);
    assert!(w.is_done());
    assert_eq!(backend, &input[..MAX + 1]);
}

#[test]
fn inspection_ends_after_the_limit_with_nothing_held() {
    let input = b"a NOOP\r\n".repeat(INSPECT_LIMIT / 8 + 10);
    let mut w = ClientWatch::new(Protocol::Imap, MAX);
    let mut backend = Vec::new();
    for chunk in input.chunks(7) {
        if w.is_done() {
            backend.extend_from_slice(chunk);
        } else {
            w.feed(chunk, &mut backend, &mut Vec::new());
            if w.is_done() {
                assert_eq!(w.held_len(), 0);
            }
        }
    }
    assert!(w.is_done());
    assert_eq!(backend, input);
}

#[test]
fn flush_passes_a_held_partial_line() {
    let mut w = ClientWatch::new(Protocol::Smtp, MAX);
    let mut backend = Vec::new();
    w.feed(b"NOOP", &mut backend, &mut Vec::new());
    assert!(backend.is_empty());
    w.flush(&mut backend);
    assert_eq!(backend, b"NOOP");
    assert!(w.is_done());
}

#[test]
fn bytewise_equals_one_chunk() {
    let plain = b64(b"\0bob\0pw");
    let corpus: Vec<(Protocol, Vec<u8>)> = vec![
        (Protocol::Imap, b"a CAPABILITY\r\nb ID (\"x-originating-ip\" \"1\")\r\nc LOGIN {3}\r\nbob {2+}\r\npw\r\nd NOOP\r\n".to_vec()),
        (Protocol::Imap, b"a ID ({3+}\r\nabc)\r\nb STARTTLS\r\nc APPEND x {3}\r\nabc\r\n".to_vec()),
        (Protocol::Imap, format!("a AUTHENTICATE PLAIN\r\n{plain}\r\nb NOOP\r\n").into_bytes()),
        (Protocol::Pop3, b"CAPA\r\nXCLIENT ADDR=1\r\nSTLS\r\nUSER bob\r\nPASS pw\r\nSTAT\r\n".to_vec()),
        (Protocol::Smtp, format!("EHLO x\r\nXCLIENT A=1\r\nBDAT 3\r\nabcAUTH PLAIN {plain}\r\nMAIL FROM:<>\r\n").into_bytes()),
    ];
    for (p, input) in corpus {
        let a = whole(p, &input);
        let b = bytewise(p, &input, b"", "");
        let text = String::from_utf8_lossy(&input);
        assert_eq!(a.backend, b.backend, "{text}");
        assert_eq!(a.client, b.client, "{text}");
        assert_eq!(a.user, b.user, "{text}");
        assert_eq!(a.done, b.done, "{text}");
    }
}

// ---- strict mode ----

fn strict(p: Protocol, input: &[u8]) -> (Out, ClientWatch) {
    let mut w = ClientWatch::strict(p, MAX);
    let (mut backend, mut client) = (Vec::new(), Vec::new());
    w.feed(input, &mut backend, &mut client);
    let out = Out {
        backend,
        client,
        user: w.user().map(str::to_owned),
        done: w.is_done(),
    };
    (out, w)
}

const ID_REPLY: &[u8] = b"b BAD ID fields reserved to the gateway are not accepted\r\n";

#[test]
fn t12_strict_mode_keeps_watching_after_a_failed_login() {
    let input =
        b"a LOGIN bob wrong\r\nb ID (\"x-originating-ip\" \"1.2.3.4\")\r\nc LOGIN bob right\r\n";
    for mut w in [
        ClientWatch::strict(Protocol::Imap, MAX),
        ClientWatch::new(Protocol::Imap, MAX),
    ] {
        let (mut backend, mut client) = (Vec::new(), Vec::new());
        w.feed(input, &mut backend, &mut client);
        assert_eq!(backend, b"a LOGIN bob wrong\r\nc LOGIN bob right\r\n");
        assert_eq!(client, ID_REPLY);
        w.backend(b"a NO [AUTHENTICATIONFAILED] failed\r\n");
        assert!(!w.is_done());
        assert_eq!(w.user(), None);
        w.backend(b"c OK Logged in\r\n");
        assert!(w.is_done());
        assert_eq!(w.user(), Some("bob"));
    }
}

#[test]
fn t12_strict_mode_is_not_bypassed_by_padding_or_over_long_lines() {
    let mut input = b"a NOOP\r\n".repeat(INSPECT_LIMIT / 8 + 10);
    input.extend_from_slice(b"a SELECT ");
    input.extend(std::iter::repeat_n(b'x', 3 * MAX));
    input.extend_from_slice(b"\r\n");
    let passed = input.len();
    input.extend_from_slice(b"b ID (\"x-originating-ip\" \"1.2.3.4\")\r\n");
    for chunked in [false, true] {
        let mut w = ClientWatch::strict(Protocol::Imap, MAX);
        let (mut backend, mut client) = (Vec::new(), Vec::new());
        if chunked {
            for chunk in input.chunks(100) {
                w.feed(chunk, &mut backend, &mut client);
                assert!(w.held_len() <= MAX);
            }
        } else {
            w.feed(&input, &mut backend, &mut client);
        }
        assert!(
            backend == input[..passed],
            "{} bytes passed, want {passed}",
            backend.len()
        );
        assert_eq!(client, ID_REPLY);
        assert!(!w.is_done());
    }
}

#[test]
fn strict_mode_ends_once_the_login_is_confirmed_and_nothing_is_held() {
    let mut w = ClientWatch::strict(Protocol::Imap, MAX);
    let (mut backend, mut client) = (Vec::new(), Vec::new());
    w.feed(b"a LOGIN bob pw\r\nb SEL", &mut backend, &mut client);
    w.backend(b"a OK\r\n");
    assert_eq!(w.user(), Some("bob"));
    // A partial line is held: the watch cannot end before it has passed it on.
    assert!(!w.is_done());
    w.feed(b"ECT INBOX\r\n", &mut backend, &mut client);
    assert!(w.is_done());
    assert_eq!(w.held_len(), 0);
    assert_eq!(backend, b"a LOGIN bob pw\r\nb SELECT INBOX\r\n");
}

#[test]
fn strict_mode_over_long_line_ending_in_a_literal() {
    // The literal ("b STARTTLS\r\n") is data, not a command, even after an over-long line.
    let mut input = b"a APPEND INBOX \"".to_vec();
    input.extend(std::iter::repeat_n(b'x', 2 * MAX));
    input.extend_from_slice(b"\" {12}\r\nb STARTTLS\r\n\r\nc STARTTLS\r\n");
    let (out, _) = strict(Protocol::Imap, &input);
    assert!(out.backend == input[..input.len() - 12]);
    assert_eq!(out.client, b"c BAD TLS is already active\r\n");
    let bytewise = bytewise_strict(Protocol::Imap, &input);
    assert!(bytewise.backend == input[..input.len() - 12]);
}

fn bytewise_strict(p: Protocol, input: &[u8]) -> Out {
    let mut w = ClientWatch::strict(p, MAX);
    let (mut backend, mut client) = (Vec::new(), Vec::new());
    for b in input {
        w.feed(std::slice::from_ref(b), &mut backend, &mut client);
    }
    Out {
        backend,
        client,
        user: w.user().map(str::to_owned),
        done: w.is_done(),
    }
}

#[test]
fn smtp_message_text_is_never_refused() {
    // (Pre-login mail is refused by a submission server; the rule is what matters here.)
    let mut w = ClientWatch::strict(Protocol::Smtp, MAX);
    let (mut backend, mut client) = (Vec::new(), Vec::new());
    w.backend(b"220 mx ESMTP\r\n");
    w.feed(
        b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n",
        &mut backend,
        &mut client,
    );
    w.backend(b"250 ok\r\n250 ok\r\n354 go ahead\r\n");
    let text = b"XCLIENT is a word\r\nSTARTTLS\r\n.\r\n";
    w.feed(text, &mut backend, &mut client);
    w.feed(b"XCLIENT ADDR=1.2.3.4\r\n", &mut backend, &mut client);
    assert_eq!(
        String::from_utf8_lossy(&backend),
        "MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nXCLIENT is a word\r\nSTARTTLS\r\n.\r\n"
    );
    assert_eq!(
        client,
        b"550 5.7.0 XCLIENT is not accepted from clients\r\n"
    );
    // A bare-LF "." also ends the text (never later than a lenient backend would).
    let mut w = ClientWatch::strict(Protocol::Smtp, MAX);
    let (mut backend, mut client) = (Vec::new(), Vec::new());
    w.feed(b"DATA\n", &mut backend, &mut client);
    w.backend(b"354 go\n");
    w.feed(b".\nXCLIENT ADDR=1\n", &mut backend, &mut client);
    assert_eq!(backend, b"DATA\n.\n");
}

#[test]
fn t12_smtp_lines_after_a_refused_data_are_commands() {
    // The backend refused DATA, so it reads the next lines as commands.
    let mut w = ClientWatch::strict(Protocol::Smtp, MAX);
    let (mut backend, mut client) = (Vec::new(), Vec::new());
    w.feed(b"DATA\r\n", &mut backend, &mut client);
    w.backend(b"530 5.7.0 Authentication required\r\n");
    w.feed(b"XCLIENT ADDR=1.2.3.4\r\n", &mut backend, &mut client);
    assert_eq!(backend, b"DATA\r\n");
    assert_eq!(
        client,
        b"550 5.7.0 XCLIENT is not accepted from clients\r\n"
    );
}

#[test]
fn t12_over_long_id_is_refused_even_when_the_field_comes_late() {
    let mut id = b"b ID (\"name\" \"".to_vec();
    id.extend(std::iter::repeat_n(b'x', 2 * MAX));
    id.extend_from_slice(b"\" \"x-originating-ip\" \"1.2.3.4\")\r\nc NOOP\r\n");
    let out = whole(Protocol::Imap, &id);
    assert_eq!(out.backend, b"c NOOP\r\n");
    assert_eq!(out.client, ID_REPLY);
}

// ---- strict mode: literal bytes are also read as the commands they would be if refused ----

#[test]
fn t12_strict_mode_refused_literal_cannot_smuggle_an_id() {
    // The backend answers `a BAD` to XYZ instead of "+": the "literal" is really a command.
    let id = b"b ID (\"x-originating-ip\" \"1.2.3.4\")\r\n";
    let mut input = format!("a XYZ {{{}}}\r\n", id.len()).into_bytes();
    let announce = input.clone();
    input.extend_from_slice(id);
    input.extend_from_slice(b"c NOOP\r\n");
    let mut want = announce.clone();
    want.extend_from_slice(b"c NOOP\r\n");
    let (out, _) = strict(Protocol::Imap, &input);
    assert_eq!(
        String::from_utf8_lossy(&out.backend),
        String::from_utf8_lossy(&want)
    );
    assert_eq!(out.client, ID_REPLY);
    let out = bytewise_strict(Protocol::Imap, &input);
    assert_eq!(
        String::from_utf8_lossy(&out.backend),
        String::from_utf8_lossy(&want)
    );
    assert_eq!(out.client, ID_REPLY);
    // The default mode passes it as literal data (the documented gap).
    assert_eq!(whole(Protocol::Imap, &input).backend, input);
}

#[test]
fn strict_mode_literal_tail_waits_only_for_its_line_end() {
    let mut w = ClientWatch::strict(Protocol::Imap, MAX);
    let (mut backend, mut client) = (Vec::new(), Vec::new());
    w.feed(b"a APPEND x {7}\r\n", &mut backend, &mut client);
    assert_eq!(backend, b"a APPEND x {7}\r\n");
    w.feed(b"hi\r\nyo", &mut backend, &mut client);
    assert_eq!(backend, b"a APPEND x {7}\r\nhi\r\n");
    w.feed(b"u", &mut backend, &mut client);
    w.feed(b"\r\n", &mut backend, &mut client);
    assert_eq!(backend, b"a APPEND x {7}\r\nhi\r\nyou\r\n");
    assert_eq!(w.held_len(), 0);
    assert!(client.is_empty());
}

#[test]
fn strict_mode_logins_and_literals_still_pass_unchanged() {
    for input in [
        &b"a LOGIN {3}\r\nbob {2}\r\npw\r\n"[..],
        b"a LOGIN {3+}\r\nbob \"pw\"\r\n",
        b"a LOGIN bob {2}\r\npw\r\n",
    ] {
        for out in [
            strict(Protocol::Imap, input).0,
            bytewise_strict(Protocol::Imap, input),
        ] {
            assert_eq!(out.backend, input);
        }
        let (_, mut w) = strict(Protocol::Imap, input);
        w.backend(b"+ OK\r\n+ OK\r\na OK\r\n");
        assert_eq!(w.user(), Some("bob"));
    }
    // Literal text that merely looks like commands (other than a reserved ID) is data.
    let input = b"a APPEND x {26}\r\nb STARTTLS\r\nc ID (\"a\" \"b\")\r\n\r\nd NOOP\r\n";
    assert_eq!(strict(Protocol::Imap, input).0.backend, input);
    assert_eq!(bytewise_strict(Protocol::Imap, input).backend, input);
}

#[test]
fn strict_mode_long_literal_without_line_ends_passes() {
    let mut input = b"a APPEND x {3000}\r\n".to_vec();
    input.extend(std::iter::repeat_n(b'x', 3000));
    input.extend_from_slice(b" y\r\nc STARTTLS\r\n");
    let want = &input[..input.len() - 12];
    let (out, w) = strict(Protocol::Imap, &input);
    assert!(out.backend == want, "{}", out.backend.len());
    assert_eq!(out.client, b"c BAD TLS is already active\r\n");
    assert_eq!(w.held_len(), 0);
    let out = bytewise_strict(Protocol::Imap, &input);
    assert!(out.backend == want, "{}", out.backend.len());
}

#[test]
fn strict_mode_over_long_id_inside_a_literal_is_refused() {
    let mut id = b"b ID (\"".to_vec();
    id.extend(std::iter::repeat_n(b'x', 2 * MAX));
    id.extend_from_slice(b"\")\r\n");
    let mut input = format!("a XYZ {{{}}}\r\n", id.len()).into_bytes();
    let announce = input.clone();
    input.extend_from_slice(&id);
    input.extend_from_slice(b"c NOOP\r\n");
    let mut want = announce;
    want.extend_from_slice(b"c NOOP\r\n");
    for out in [
        strict(Protocol::Imap, &input).0,
        bytewise_strict(Protocol::Imap, &input),
    ] {
        assert!(
            out.backend == want,
            "{} bytes: {:?} / client {:?}",
            out.backend.len(),
            String::from_utf8_lossy(&out.backend[out.backend.len().saturating_sub(40)..]),
            String::from_utf8_lossy(&out.client)
        );
        assert_eq!(out.client, ID_REPLY);
    }
}

// ---- the backend's replies decide (client and backend bytes in protocol order) ----

#[derive(Clone, Copy)]
enum Step<'a> {
    /// Bytes from the client.
    C(&'a [u8]),
    /// Bytes from the backend.
    S(&'a [u8]),
}
use Step::{C, S};

/// Runs a transcript with each step fed in reads of `size` bytes (0: whole); checks the
/// bounds and that Debug never shows `secret`.
fn run_steps(w: &mut ClientWatch, steps: &[Step<'_>], size: usize, secret: &str) -> Out {
    let (mut backend, mut client) = (Vec::new(), Vec::new());
    for step in steps {
        let (C(bytes) | S(bytes)) = *step;
        let chunks: Vec<&[u8]> = if size == 0 {
            vec![bytes]
        } else {
            bytes.chunks(size).collect()
        };
        for chunk in chunks {
            match step {
                C(_) if w.is_done() => backend.extend_from_slice(chunk),
                C(_) => w.feed(chunk, &mut backend, &mut client),
                S(_) => w.backend(chunk),
            }
            assert!(w.held_len() <= MAX);
            assert!(w.backend_held_len() <= REPLY_HEAD + PASS_TAIL + MAX_IN_FLIGHT * MAX_TAG);
            if w.is_done() {
                assert_eq!(w.held_len(), 0);
            }
            let debug = format!("{w:?}");
            assert!(secret.is_empty() || !debug.contains(secret), "{debug}");
        }
    }
    Out {
        backend,
        client,
        user: w.user().map(str::to_owned),
        done: w.is_done(),
    }
}

/// The transcript's outcome in strict (`strict`) or default mode; the same whatever the
/// read sizes.
fn steps(p: Protocol, strict: bool, steps: &[Step<'_>], secret: &str) -> Out {
    let make = || {
        if strict {
            ClientWatch::strict(p, MAX)
        } else {
            ClientWatch::new(p, MAX)
        }
    };
    let out = run_steps(&mut make(), steps, 0, secret);
    for size in [1, 2, 3, 7] {
        let other = run_steps(&mut make(), steps, size, secret);
        assert_eq!(other.backend, out.backend, "reads of {size}");
        assert_eq!(other.client, out.client, "reads of {size}");
        assert_eq!(other.user, out.user, "reads of {size}");
        assert_eq!(other.done, out.done, "reads of {size}");
    }
    out
}

fn client_bytes(steps: &[Step<'_>]) -> Vec<u8> {
    steps
        .iter()
        .filter_map(|s| match s {
            C(b) => Some(b.to_vec()),
            S(_) => None,
        })
        .collect::<Vec<_>>()
        .concat()
}

/// A transcript, the claim in it, and postern's reply refusing the claim.
type Case<'a> = (Protocol, Vec<Step<'a>>, &'a [u8], &'a [u8]);

const IMAP_ID: &[u8] = b"b ID (\"x-originating-ip\" \"1.2.3.10\")\r\n";
const XCLIENT: &[u8] = b"XCLIENT ADDR=1.2.3.11\r\n";

#[test]
fn t12_claim_after_a_failed_login_is_refused_in_every_protocol() {
    let plain_bad = format!("AUTH PLAIN {}\r\n", b64(b"\0bob\0wrong"));
    let plain_good = format!("AUTH PLAIN {}\r\n", b64(b"\0bob\0right"));
    let cases: [Case<'_>; 3] = [
        (
            Protocol::Imap,
            vec![
                S(b"* OK Dovecot ready.\r\n"),
                C(b"a LOGIN bob wrong\r\n"),
                S(b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"),
                C(IMAP_ID),
                C(b"c LOGIN bob right\r\n"),
                S(b"c OK [CAPABILITY IMAP4rev1] Logged in\r\n"),
            ],
            IMAP_ID,
            ID_REPLY,
        ),
        (
            Protocol::Pop3,
            vec![
                S(b"+OK Dovecot ready.\r\n"),
                C(b"USER bob\r\n"),
                S(b"+OK\r\n"),
                C(b"PASS wrong\r\n"),
                S(b"-ERR [AUTH] Authentication failed.\r\n"),
                C(XCLIENT),
                C(b"USER bob\r\n"),
                S(b"+OK\r\n"),
                C(b"PASS right\r\n"),
                S(b"+OK Logged in.\r\n"),
            ],
            XCLIENT,
            b"-ERR XCLIENT is not accepted from clients\r\n",
        ),
        (
            Protocol::Smtp,
            vec![
                S(b"220 mx Dovecot ready.\r\n"),
                C(b"EHLO x\r\n"),
                S(b"250-mx\r\n250-PIPELINING\r\n250 AUTH PLAIN LOGIN\r\n"),
                C(plain_bad.as_bytes()),
                S(b"535 5.7.8 Authentication failed\r\n"),
                C(XCLIENT),
                C(plain_good.as_bytes()),
                S(b"235 2.7.0 Logged in.\r\n"),
            ],
            XCLIENT,
            b"550 5.7.0 XCLIENT is not accepted from clients\r\n",
        ),
    ];
    for (p, transcript, claim, reply) in cases {
        for strict in [true, false] {
            let out = steps(p, strict, &transcript, "right");
            let all = client_bytes(&transcript);
            let at = all.windows(claim.len()).position(|w| w == claim);
            let at = at.unwrap_or(all.len());
            let want = [&all[..at], &all[(at + claim.len()).min(all.len())..]].concat();
            assert_eq!(out.backend, want, "{p:?} strict={strict}");
            assert_eq!(out.client, reply, "{p:?} strict={strict}");
            assert_eq!(out.user.as_deref(), Some("bob"), "{p:?} strict={strict}");
            assert!(out.done, "{p:?} strict={strict}");
        }
    }
}

#[test]
fn t12_claim_after_2000_noops_is_refused_in_strict_mode() {
    let mut transcript = vec![S(b"* OK ready\r\n")];
    for _ in 0..2000 {
        transcript.push(C(b"a NOOP\r\n"));
        transcript.push(S(b"a OK NOOP completed.\r\n"));
    }
    transcript.push(C(IMAP_ID));
    let mut w = ClientWatch::strict(Protocol::Imap, MAX);
    let out = run_steps(&mut w, &transcript, 0, "");
    assert_eq!(out.client, ID_REPLY);
    assert_eq!(out.backend.len(), 2000 * 8);
    assert!(!out.done);
    // Split reads too (a smaller transcript keeps the test quick).
    let mut w = ClientWatch::strict(Protocol::Imap, MAX);
    let out = run_steps(&mut w, &transcript[1800..], 3, "");
    assert_eq!(out.client, ID_REPLY);
}

#[test]
fn user_is_the_name_that_logged_in() {
    let out = steps(
        Protocol::Imap,
        true,
        &[
            C(b"a LOGIN nosuch wrong\r\n"),
            S(b"a NO [AUTHENTICATIONFAILED] failed\r\n"),
            C(b"b LOGIN good pw\r\n"),
            S(b"b OK Logged in\r\n"),
        ],
        "",
    );
    assert_eq!(out.user.as_deref(), Some("good"));
    // Both in flight at once (pipelined): each name goes with its own tag.
    let out = steps(
        Protocol::Imap,
        true,
        &[
            C(b"a LOGIN nosuch wrong\r\nb LOGIN good pw\r\n"),
            S(b"a NO failed\r\nb OK Logged in\r\n"),
        ],
        "",
    );
    assert_eq!(out.user.as_deref(), Some("good"));
    // A reused tag: the first completion answers the first command.
    let out = steps(
        Protocol::Imap,
        true,
        &[
            C(b"a LOGIN nosuch wrong\r\na LOGIN good pw\r\n"),
            S(b"a NO failed\r\na OK Logged in\r\n"),
        ],
        "",
    );
    assert_eq!(out.user.as_deref(), Some("good"));
    let plain = format!("AUTH PLAIN {}\r\n", b64(b"\0good\0pw"));
    let out = steps(
        Protocol::Smtp,
        true,
        &[
            C(b"AUTH LOGIN\r\n"),
            S(b"334 VXNlcm5hbWU6\r\n"),
            C(format!("{}\r\n", b64(b"nosuch")).as_bytes()),
            S(b"334 UGFzc3dvcmQ6\r\n"),
            C(format!("{}\r\n", b64(b"wrong")).as_bytes()),
            S(b"535 5.7.8 failed\r\n"),
            C(plain.as_bytes()),
            S(b"235 2.7.0 ok\r\n"),
        ],
        "",
    );
    assert_eq!(out.user.as_deref(), Some("good"));
}

#[test]
fn preauth_greeting_means_done() {
    for strict in [true, false] {
        let out = steps(
            Protocol::Imap,
            strict,
            &[
                S(b"* PREAUTH [CAPABILITY IMAP4rev1] Logged in as bob\r\n"),
                C(b"a SELECT INBOX\r\n"),
            ],
            "",
        );
        assert!(out.done);
        assert_eq!(out.user, None);
        assert_eq!(out.backend, b"a SELECT INBOX\r\n");
    }
    // Only the greeting can pre-authenticate.
    let out = steps(
        Protocol::Imap,
        true,
        &[
            S(b"* OK ready\r\n"),
            C(b"a NOOP\r\n"),
            S(b"* PREAUTH x\r\na OK\r\n"),
        ],
        "",
    );
    assert!(!out.done);
}

#[test]
fn pipelined_login_and_noop() {
    let out = steps(
        Protocol::Imap,
        true,
        &[
            C(b"a LOGIN bob pw\r\nb NOOP\r\n"),
            S(b"a OK Logged in\r\nb OK NOOP completed\r\n"),
        ],
        "",
    );
    assert!(out.done);
    assert_eq!(out.user.as_deref(), Some("bob"));
    assert_eq!(out.backend, b"a LOGIN bob pw\r\nb NOOP\r\n");
    // The NOOP's OK is no login.
    let out = steps(
        Protocol::Imap,
        true,
        &[
            C(b"a LOGIN bob pw\r\nb NOOP\r\n"),
            S(b"b OK NOOP\r\na NO failed\r\n"),
            C(IMAP_ID),
        ],
        "",
    );
    assert!(!out.done);
    assert_eq!(out.user, None);
    assert_eq!(out.client, ID_REPLY);
}

#[test]
fn authenticate_plain_with_a_continuation() {
    let plain = format!("{}\r\n", b64(b"\0bob\0s3cret"));
    let out = steps(
        Protocol::Imap,
        true,
        &[
            C(b"a AUTHENTICATE PLAIN\r\n"),
            S(b"+ \r\n"),
            C(plain.as_bytes()),
            S(b"a OK Logged in\r\n"),
        ],
        "s3cret",
    );
    assert!(out.done);
    assert_eq!(out.user.as_deref(), Some("bob"));
    // A failed exchange ends it on the client side too: the next line is a command again.
    let out = steps(
        Protocol::Imap,
        true,
        &[
            C(b"a AUTHENTICATE PLAIN\r\n"),
            S(b"+ \r\n"),
            C(plain.as_bytes()),
            S(b"a NO failed\r\n"),
            C(IMAP_ID),
        ],
        "s3cret",
    );
    assert!(!out.done);
    assert_eq!(out.user, None);
    assert_eq!(out.client, ID_REPLY);
}

#[test]
fn pop3_failed_then_good_login() {
    let out = steps(
        Protocol::Pop3,
        true,
        &[
            S(b"+OK ready\r\n"),
            C(b"CAPA\r\n"),
            S(b"+OK\r\nUSER\r\nSASL PLAIN\r\n+OK not a reply\r\n.\r\n"),
            C(b"USER nosuch\r\n"),
            S(b"+OK\r\n"),
            C(b"PASS wrong\r\n"),
            S(b"-ERR [AUTH] failed\r\n"),
            C(b"USER bob\r\n"),
            S(b"+OK\r\n"),
            C(b"PASS right\r\n"),
            S(b"+OK Logged in.\r\n"),
        ],
        "right",
    );
    assert!(out.done);
    assert_eq!(out.user.as_deref(), Some("bob"));
}

#[test]
fn pop3_reply_counting_cannot_be_fooled_by_a_pipelined_command() {
    // AUTH refused at once; the CAPA the client sent along was a command, its +OK no login.
    let out = steps(
        Protocol::Pop3,
        true,
        &[
            C(b"AUTH PLAIN\r\nCAPA\r\n"),
            S(b"-ERR Unsupported mechanism\r\n+OK\r\nUSER\r\n.\r\n"),
            C(XCLIENT),
        ],
        "",
    );
    assert!(!out.done);
    assert_eq!(out.client, b"-ERR XCLIENT is not accepted from clients\r\n");
    // An empty line may or may not get a reply: nothing is confirmed after it.
    let out = steps(
        Protocol::Pop3,
        true,
        &[
            C(b"\r\nUSER x\r\nPASS wrong\r\nCAPA\r\n"),
            S(b"+OK\r\n-ERR\r\n+OK\r\n"),
            C(XCLIENT),
        ],
        "",
    );
    assert!(!out.done);
}

#[test]
fn smtp_auth_login_334_334_235() {
    let (u, pw) = (b64(b"bob"), b64(b"s3cret"));
    let (u, pw) = (format!("{u}\r\n"), format!("{pw}\r\n"));
    let transcript = [
        S(b"220 mx ESMTP\r\n"),
        C(b"EHLO x\r\n"),
        S(b"250-mx\r\n250 AUTH LOGIN\r\n"),
        C(b"AUTH LOGIN\r\n"),
        S(b"334 VXNlcm5hbWU6\r\n"),
        C(u.as_bytes()),
        S(b"334 UGFzc3dvcmQ6\r\n"),
        C(pw.as_bytes()),
    ];
    let out = steps(Protocol::Smtp, true, &transcript, "s3cret");
    assert!(!out.done);
    assert_eq!(out.user, None);
    let mut all = transcript.to_vec();
    all.push(S(b"235 2.7.0 Authentication successful\r\n"));
    let out = steps(Protocol::Smtp, true, &all, "s3cret");
    assert!(out.done);
    assert_eq!(out.user.as_deref(), Some("bob"));
    assert_eq!(out.backend, client_bytes(&all));
}

#[test]
fn backend_literals_are_skipped() {
    // The literal's bytes look like a tagged OK; they are message data.
    let out = steps(
        Protocol::Imap,
        true,
        &[
            C(b"a LOGIN bob pw\r\n"),
            S(b"* 1 FETCH (BODY[] {5}\r\nhello FLAGS ())\r\n"),
            S(b"* 2 FETCH (BODY[] {11}\r\na OK fake\r\n)\r\n"),
            S(b"a NO failed\r\n"),
            C(IMAP_ID),
        ],
        "",
    );
    assert!(!out.done);
    assert_eq!(out.client, ID_REPLY);
    let out = steps(
        Protocol::Imap,
        true,
        &[
            C(b"a LOGIN bob pw\r\n"),
            S(b"* 1 FETCH (BODY[] {5}\r\nhello)\r\na OK done\r\n"),
        ],
        "",
    );
    assert!(out.done);
}

#[test]
fn backend_reply_memory_is_bounded() {
    let mut w = ClientWatch::strict(Protocol::Imap, MAX);
    w.feed(b"a LOGIN bob pw\r\n", &mut Vec::new(), &mut Vec::new());
    for _ in 0..1000 {
        w.backend(&[b'x'; 1000]);
        assert!(w.backend_held_len() <= REPLY_HEAD + PASS_TAIL + MAX_TAG);
    }
    w.backend(b"\r\na OK\r\n");
    assert!(w.is_done());
    // Over-long tags are not tracked: that login is simply not confirmed.
    let mut w = ClientWatch::strict(Protocol::Imap, MAX);
    let tag = "t".repeat(MAX_TAG + 1);
    w.feed(
        format!("{tag} LOGIN bob pw\r\n").as_bytes(),
        &mut Vec::new(),
        &mut Vec::new(),
    );
    w.backend(format!("{tag} OK\r\n").as_bytes());
    assert!(!w.is_done());
    // A full queue: POP3 stops confirming rather than miscounting.
    let mut w = ClientWatch::strict(Protocol::Pop3, MAX);
    let many = b"NOOP\r\n".repeat(MAX_IN_FLIGHT + 1);
    w.feed(&many, &mut Vec::new(), &mut Vec::new());
    w.feed(b"USER bob\r\nPASS pw\r\n", &mut Vec::new(), &mut Vec::new());
    w.backend(&b"+OK\r\n".repeat(MAX_IN_FLIGHT + 3));
    assert!(!w.is_done());
}

#[test]
fn smtp_xoauth2_error_dance_then_a_good_login() {
    let bad = format!(
        "AUTH XOAUTH2 {}\r\n",
        b64(b"user=bob\x01auth=Bearer expired\x01\x01")
    );
    let good = format!("AUTH PLAIN {}\r\n", b64(b"\0bob\0s3cret"));
    let out = steps(
        Protocol::Smtp,
        true,
        &[
            S(b"220 mx ESMTP\r\n"),
            // Pipelined EHLO and AUTH (PIPELINING), then the error dance: 334 with the
            // error, an empty response, 535.
            C(b"EHLO x\r\n"),
            C(bad.as_bytes()),
            S(b"250-mx\r\n250-PIPELINING\r\n250 AUTH PLAIN XOAUTH2\r\n"),
            S(b"334 eyJzdGF0dXMiOiI0MDEifQ==\r\n"),
            C(b"\r\n"),
            S(b"535 5.7.8 failed\r\n"),
            C(XCLIENT),
            C(good.as_bytes()),
            S(b"235 2.7.0 ok\r\n"),
        ],
        "s3cret",
    );
    assert_eq!(
        out.client,
        b"550 5.7.0 XCLIENT is not accepted from clients\r\n"
    );
    assert!(out.done);
    assert_eq!(out.user.as_deref(), Some("bob"));
}

#[test]
fn nothing_is_confirmed_without_the_backend() {
    for p in [Protocol::Imap, Protocol::Pop3, Protocol::Smtp] {
        let input = b"a LOGIN bob pw\r\nUSER bob\r\nPASS pw\r\nAUTH PLAIN AGJvYgBwdw==\r\n";
        let (out, _) = strict(p, input);
        assert_eq!(out.user, None);
        assert!(!out.done);
    }
}
