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
    let mut w = ClientWatch::new(p, MAX);
    let (mut backend, mut client) = (Vec::new(), Vec::new());
    w.feed(input, &mut backend, &mut client);
    Out {
        backend,
        client,
        user: w.user().map(str::to_owned),
        done: w.is_done(),
    }
}

/// Byte-by-byte feeding; asserts on the way that no secret ever shows in Debug output.
fn bytewise(p: Protocol, input: &[u8], secret: &str) -> Out {
    let mut w = ClientWatch::new(p, MAX);
    let (mut backend, mut client) = (Vec::new(), Vec::new());
    for b in input {
        w.feed(std::slice::from_ref(b), &mut backend, &mut client);
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

/// Checks a login transcript both ways: passed through unchanged, user recorded, done.
fn login(p: Protocol, input: &[u8], user: &str, secret: &str) {
    for (how, out) in [
        ("whole", whole(p, input)),
        ("bytewise", bytewise(p, input, secret)),
    ] {
        let text = String::from_utf8_lossy(input);
        assert_eq!(out.backend, input, "{how}: {text}");
        assert!(out.client.is_empty(), "{how}: {text}");
        assert_eq!(out.user.as_deref(), Some(user), "{how}: {text}");
        assert!(out.done, "{how}: {text}");
    }
    let mut w = ClientWatch::new(p, MAX);
    w.feed(input, &mut Vec::new(), &mut Vec::new());
    assert!(!format!("{w:?}").contains(secret));
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
    login(
        Protocol::Pop3,
        b"CAPA\r\nUSER bob\r\nPASS s3cret\r\n",
        "bob",
        "s3cret",
    );
    login(
        Protocol::Pop3,
        b"USER wrong\r\nUSER bob\r\nPASS s3cret\r\n",
        "bob",
        "s3cret",
    );
    login(
        Protocol::Pop3,
        b"APOP bob c4c9334bac560ecc979e58001b3e22fb\r\n",
        "bob",
        "c4c9334b",
    );
    let plain = b64(b"\0bob\0s3cret");
    login(
        Protocol::Pop3,
        format!("AUTH\r\nAUTH PLAIN {plain}\r\n").as_bytes(),
        "bob",
        "s3cret",
    );
    login(
        Protocol::Pop3,
        format!("AUTH PLAIN\r\n{plain}\r\n").as_bytes(),
        "bob",
        "s3cret",
    );
}

#[test]
fn smtp_login_forms() {
    let plain = b64(b"\0bob\0s3cret");
    login(
        Protocol::Smtp,
        format!("EHLO x\r\nAUTH PLAIN {plain}\r\n").as_bytes(),
        "bob",
        "s3cret",
    );
    login(
        Protocol::Smtp,
        format!("EHLO x\r\nauth plain\r\n{plain}\r\n").as_bytes(),
        "bob",
        "s3cret",
    );
    let (u, pw) = (b64(b"bob"), b64(b"s3cret"));
    login(
        Protocol::Smtp,
        format!("EHLO x\r\nAUTH LOGIN\r\n{u}\r\n{pw}\r\n").as_bytes(),
        "bob",
        "s3cret",
    );
    login(
        Protocol::Smtp,
        format!("EHLO x\r\nAUTH LOGIN {u}\r\n{pw}\r\n").as_bytes(),
        "bob",
        "s3cret",
    );
}

#[test]
fn pipelined_bytes_after_login_pass_unchanged() {
    let input = b"a LOGIN bob pw\r\nb ID (\"x-originating-ip\" \"1.2.3.4\")\r\nc SELECT INBOX\r\n";
    let out = whole(Protocol::Imap, input);
    assert_eq!(out.backend, input);
    assert!(out.done);
}

#[test]
fn sasl_cancel_keeps_watching() {
    let plain = b64(b"\0bob\0pw");
    let input = format!("a AUTHENTICATE PLAIN\r\n*\r\nb AUTHENTICATE PLAIN {plain}\r\n");
    let w = whole(Protocol::Imap, input.as_bytes());
    assert_eq!(w.user.as_deref(), Some("bob"));
    let mut w = ClientWatch::new(Protocol::Imap, MAX);
    w.feed(
        b"a AUTHENTICATE PLAIN\r\n*\r\n",
        &mut Vec::new(),
        &mut Vec::new(),
    );
    assert!(!w.is_done());
}

#[test]
fn unknown_mechanism_ends_inspection_at_once() {
    let out = whole(Protocol::Smtp, b"AUTH CRAM-MD5\r\nZm9v\r\n");
    assert!(out.done);
    assert_eq!(out.user, None);
    assert_eq!(out.backend, b"AUTH CRAM-MD5\r\nZm9v\r\n");
}

#[test]
fn user_is_sanitised_and_bounded() {
    let out = whole(Protocol::Pop3, b"USER a\x1bb\x07\r\nPASS x\r\n");
    assert_eq!(out.user.as_deref(), Some("a?b?"));
    let long = format!("USER {}\r\nPASS x\r\n", "u".repeat(600));
    assert_eq!(
        whole(Protocol::Pop3, long.as_bytes()).user.map(|u| u.len()),
        Some(MAX_USER)
    );
    let lit = format!("a LOGIN {{600}}\r\n{} pw\r\n", "u".repeat(600));
    assert_eq!(
        whole(Protocol::Imap, lit.as_bytes()).user.map(|u| u.len()),
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
    assert!(w.is_done());
    assert_eq!(w.user(), Some("bob"));
}

#[test]
fn other_imap_literals_are_counted_not_parsed() {
    // The literal holds what looks like a refused command: it is data, passed unchanged.
    let input = b"a APPEND x {22}\r\nb ID (\"x-connected-ip\")\r\nc LOGIN bob pw\r\n";
    let out = whole(Protocol::Imap, input);
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
        bytewise(Protocol::Imap, &id, ""),
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
        bytewise(Protocol::Imap, &input, ""),
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
        let b = bytewise(p, &input, "");
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
    let (out, _) = strict(Protocol::Imap, input);
    assert_eq!(out.backend, b"a LOGIN bob wrong\r\nc LOGIN bob right\r\n");
    assert_eq!(out.client, ID_REPLY);
    assert_eq!(out.user.as_deref(), Some("bob"));
    assert!(!out.done, "strict mode ends only past the byte bound");
    // The default mode ends at the first login, as documented.
    assert_eq!(whole(Protocol::Imap, input).backend, input);
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
fn strict_mode_ends_past_the_bound_after_login() {
    let mut input = b"a LOGIN bob pw\r\n".to_vec();
    input.extend(b"a NOOP\r\n".repeat(INSPECT_LIMIT / 8 + 10));
    let (out, w) = strict(Protocol::Imap, &input);
    assert!(out.done);
    assert_eq!(w.held_len(), 0);
    assert_eq!(out.backend, input);
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
    let plain = b64(b"\0bob\0pw");
    let input = format!(
        "AUTH PLAIN {plain}\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nXCLIENT is a word\r\nSTARTTLS\r\n.\r\nXCLIENT ADDR=1.2.3.4\r\n"
    );
    let (out, _) = strict(Protocol::Smtp, input.as_bytes());
    let want = input.trim_end_matches("XCLIENT ADDR=1.2.3.4\r\n");
    assert_eq!(String::from_utf8_lossy(&out.backend), want);
    assert_eq!(
        out.client,
        b"550 5.7.0 XCLIENT is not accepted from clients\r\n"
    );
    // A bare-LF "." also ends the text (never later than a lenient backend would).
    let (out, _) = strict(Protocol::Smtp, b"DATA\n.\nXCLIENT ADDR=1\n");
    assert_eq!(out.backend, b"DATA\n.\n");
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
            assert_eq!(out.user.as_deref(), Some("bob"));
        }
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
