//! IMAP before login: login names, reply matching by tag, literals, the bounds.

use super::*;

#[test]
fn login_atom_quoted_and_literal_forms() {
    for (cmd, user) in [
        (&b"a LOGIN alice secret1\r\n"[..], "alice"),
        (b"a login \"al\\\"ice\" \"secret1\"\r\n", "al\"ice"),
        (b"a LOGIN alice {7+}\r\nsecret1\r\n", "alice"),
        (b"a LOGIN {5+}\r\nalice {7+}\r\nsecret1\r\n", "alice"),
    ] {
        let o = run_secret(
            Protocol::Imap,
            &[
                B(IMAP_GREETING),
                C(cmd),
                B(b"a OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n"),
            ],
            "secret1",
        );
        assert_eq!(o.to_backend.as_bytes(), cmd, "passed unchanged");
        assert_eq!(o.verdicts, [ok(user)]);
        assert!(o.logged_in);
        assert_eq!(o.user.as_deref(), Some(user));
    }
}

#[test]
fn synchronizing_literals_wait_for_the_backends_go_ahead() {
    let client = b"a LOGIN {5}\r\nalice {7}\r\nsecret1\r\n";
    // The client sends everything at once (it should wait for `+`): the guard passes only
    // what the backend has asked for so far.
    let o = run(Protocol::Imap, &[B(IMAP_GREETING), C(client)]);
    assert_eq!(o.to_backend, "a LOGIN {5}\r\n");
    assert!(!o.wants_client);
    let o = run(
        Protocol::Imap,
        &[B(IMAP_GREETING), C(client), B(b"+ OK\r\n"), B(b"+ OK\r\n")],
    );
    assert_eq!(o.to_backend.as_bytes(), client);
    let o = run_secret(
        Protocol::Imap,
        &[
            B(IMAP_GREETING),
            C(b"a LOGIN {5}\r\n"),
            B(b"+ OK\r\n"),
            C(b"alice {7}\r\n"),
            B(b"+ OK\r\n"),
            C(b"secret1\r\n"),
            B(b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"),
        ],
        "secret1",
    );
    assert_eq!(o.verdicts, [failed("alice")]);
    assert!(!o.logged_in && o.wants_client);
}

#[test]
fn a_literal_the_backend_refuses_leaves_the_next_bytes_commands() {
    // The backend answers the LOGIN with NO instead of `+`: what the client sent as the
    // literal is a command to the backend, and the guard reads it as one.
    let o = run(
        Protocol::Imap,
        &[
            B(IMAP_GREETING),
            C(b"a LOGIN {40}\r\nb ID (\"x-originating-ip\" \"192.0.2.1\")\r\n"),
            B(b"a BAD Literal too large\r\n"),
        ],
    );
    assert_eq!(o.to_backend, "a LOGIN {40}\r\n");
    assert!(o
        .to_client
        .ends_with("b BAD ID field \"x-originating-ip\" is reserved to the mail gateway\r\n"));
    assert_eq!(o.verdicts, [LoginVerdict::Failed { user: None }]);
}

#[test]
fn non_synchronizing_literals_need_the_capability() {
    let cmd = b"a LOGIN {5+}\r\nalice x\r\nb NOOP\r\n";
    let o = run(Protocol::Imap, &[B(IMAP_GREETING_NO_CAPS), C(cmd)]);
    assert_eq!(
        o.to_backend, "b NOOP\r\n",
        "refused, its literal and rest dropped"
    );
    assert_eq!(
        o.to_client,
        "* OK ready\r\na BAD Non-synchronizing literal refused: the server did not advertise LITERAL+\r\n"
    );
    // LITERAL- allows up to 4096 bytes only.
    let minus = b"* OK [CAPABILITY IMAP4rev1 LITERAL-] ready\r\n";
    let o = run(
        Protocol::Imap,
        &[B(minus), C(b"a LOGIN {5+}\r\nalice x\r\n")],
    );
    assert_eq!(o.to_backend, "a LOGIN {5+}\r\nalice x\r\n");
    let o = run(Protocol::Imap, &[B(minus), C(b"a NOOP {4097+}\r\n")]);
    assert!(o.to_client.contains("a BAD Non-synchronizing"));
    // A CAPABILITY reply teaches it too.
    let o = run(
        Protocol::Imap,
        &[
            B(IMAP_GREETING_NO_CAPS),
            C(b"c CAPABILITY\r\n"),
            B(b"* CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN\r\nc OK done\r\n"),
            C(b"a LOGIN {5+}\r\nalice x\r\n"),
        ],
    );
    assert_eq!(o.to_backend, "c CAPABILITY\r\na LOGIN {5+}\r\nalice x\r\n");
}

#[test]
fn brace_forms_that_are_no_literal() {
    // `{n-}` is not a literal (LITERAL- uses `{n+}`), nor is `x{5+}` a token of its own:
    // the line ends there, and what follows is read as commands, as a server reads it.
    for cmd in [&b"a NOOP {5-}\r\n"[..], b"a NOOP x{5+}\r\n"] {
        let mut all = cmd.to_vec();
        all.extend_from_slice(b"b ID (\"x-originating-ip\" \"1.2.3.4\")\r\n");
        let o = run(Protocol::Imap, &[B(IMAP_GREETING), C(&all)]);
        assert_eq!(o.to_backend.as_bytes(), cmd);
        assert!(o.to_client.contains("b BAD ID field"), "{}", o.to_client);
    }
}

#[test]
fn authenticate_with_and_without_initial_response() {
    let plain = b64(b"\0bob\0secret2");
    let ir = format!("a AUTHENTICATE PLAIN {plain}\r\n");
    let o = run_secret(
        Protocol::Imap,
        &[B(IMAP_GREETING), C(ir.as_bytes()), B(b"a OK Logged in\r\n")],
        "secret2",
    );
    assert_eq!(o.verdicts, [ok("bob")]);
    let resp = format!("{plain}\r\n");
    let o = run_secret(
        Protocol::Imap,
        &[
            B(IMAP_GREETING),
            C(b"a AUTHENTICATE PLAIN\r\n"),
            B(b"+ \r\n"),
            C(resp.as_bytes()),
            B(b"a NO [AUTHENTICATIONFAILED] failed\r\n"),
        ],
        "secret2",
    );
    assert_eq!(o.verdicts, [failed("bob")]);
    // LOGIN: the name on the first response, the password never read.
    let (u, pw) = (
        format!("{}\r\n", b64(b"carol")),
        format!("{}\r\n", b64(b"secret3")),
    );
    let o = run(
        Protocol::Imap,
        &[
            B(IMAP_GREETING),
            C(b"a AUTHENTICATE LOGIN\r\n"),
            B(b"+ VXNlcm5hbWU6\r\n"),
            C(u.as_bytes()),
            B(b"+ UGFzc3dvcmQ6\r\n"),
            C(pw.as_bytes()),
            B(b"a OK done\r\n"),
        ],
    );
    assert_eq!(o.verdicts, [ok("carol")]);
    // XOAUTH2 with its error dance, then OAUTHBEARER.
    let xo = b64(b"user=dave@x.test\x01auth=Bearer tok\x01\x01");
    let ob = b64(b"n,a=erin@x.test,\x01auth=Bearer tok\x01\x01");
    let (l1, l2) = (
        format!("a AUTHENTICATE XOAUTH2 {xo}\r\n"),
        format!("b AUTHENTICATE OAUTHBEARER {ob}\r\n"),
    );
    let o = run(
        Protocol::Imap,
        &[
            B(IMAP_GREETING),
            C(l1.as_bytes()),
            B(b"+ eyJzdGF0dXMiOiI0MDEifQ==\r\n"),
            C(b"\r\n"),
            B(b"a NO failed\r\n"),
            C(l2.as_bytes()),
            B(b"b OK yes\r\n"),
        ],
    );
    assert_eq!(o.verdicts, [failed("dave@x.test"), ok("erin@x.test")]);
}

#[test]
fn a_long_sasl_line_is_passed_on_as_it_comes() {
    let mut raw = b"user=frank@x.test\x01auth=Bearer ".to_vec();
    raw.extend(std::iter::repeat_n(b'T', 9000));
    raw.extend_from_slice(b"\x01\x01");
    let line = format!("a AUTHENTICATE XOAUTH2 {}\r\n", b64(&raw));
    assert!(line.len() > 4 * MAX_LINE);
    let o = run(
        Protocol::Imap,
        &[B(IMAP_GREETING), C(line.as_bytes()), B(b"a OK yes\r\n")],
    );
    assert_eq!(o.to_backend, line);
    assert_eq!(o.verdicts, [ok("frank@x.test")]);
    // Past the SASL bound the session ends.
    let huge = format!(
        "a AUTHENTICATE PLAIN {}\r\n",
        "A".repeat(MAX_SASL_LINE + 10)
    );
    let o = run(Protocol::Imap, &[B(IMAP_GREETING), C(huge.as_bytes())]);
    assert!(o.finished);
    assert!(o
        .to_client
        .ends_with("* BYE Line too long, closing connection\r\n"));
}

#[test]
fn tag_reuse_cannot_confirm_a_login() {
    // The review's sequence: NOOP's `a OK` must not be taken for the LOGIN's.
    let o = run(
        Protocol::Imap,
        &[
            B(IMAP_GREETING),
            C(b"a NOOP\r\na LOGIN victim wrong\r\n"),
            B(b"a OK NOOP completed\r\n"),
            C(b"b ID (\"x-originating-ip\" \"192.0.2.66\")\r\n"),
        ],
    );
    assert_eq!(o.to_backend, "a NOOP\r\n");
    assert!(o
        .to_client
        .contains("a BAD Tag already in use by a command in progress\r\n"));
    assert!(o.verdicts.is_empty());
    assert!(!o.logged_in && o.user.is_none());
    assert!(o.to_client.contains("b BAD ID field \"x-originating-ip\""));
    // Once the first is answered, the tag is free again.
    let o = run(
        Protocol::Imap,
        &[
            B(IMAP_GREETING),
            C(b"a NOOP\r\n"),
            B(b"a OK NOOP completed\r\n"),
            C(b"a LOGIN alice pw\r\n"),
            B(b"a OK in\r\n"),
        ],
    );
    assert_eq!(o.verdicts, [ok("alice")]);
}

#[test]
fn pipelined_commands_are_matched_by_tag_in_any_order() {
    let o = run(
        Protocol::Imap,
        &[
            B(IMAP_GREETING),
            C(b"a CAPABILITY\r\nb LOGIN alice pw\r\nc NOOP\r\n"),
            B(b"* CAPABILITY IMAP4rev1\r\nc OK n\r\na OK c\r\n"),
            B(b"b NO [AUTHENTICATIONFAILED] no\r\n"),
        ],
    );
    assert_eq!(o.verdicts, [failed("alice")]);
}

#[test]
fn invalid_and_long_tags_are_refused() {
    let long = format!("{} LOGIN alice pw\r\n", "t".repeat(MAX_TAG + 1));
    for line in [
        &b" a LOGIN alice pw\r\n"[..],
        b"a+ LOGIN alice pw\r\n",
        long.as_bytes(),
    ] {
        let o = run(Protocol::Imap, &[B(IMAP_GREETING), C(line)]);
        assert_eq!(o.to_backend, "", "{line:?}");
        assert!(o.to_client.ends_with(
            "* BAD Invalid tag (the mail gateway accepts tags of at most 64 valid characters)\r\n"
        ));
    }
    // An empty line is no command: passed, nothing awaited.
    let o = run(Protocol::Imap, &[B(IMAP_GREETING), C(b"\r\n")]);
    assert_eq!(o.to_backend, "\r\n");
}

#[test]
fn over_long_lines_end_the_session() {
    let long = format!("a LOGIN alice {}\r\n", "p".repeat(MAX_LINE));
    let o = run(
        Protocol::Imap,
        &[B(IMAP_GREETING), C(long.as_bytes()), C(b"b NOOP\r\n")],
    );
    assert_eq!(o.to_backend, "");
    assert!(o.finished && !o.wants_client);
    assert!(o
        .to_client
        .ends_with("* BYE Line too long, closing connection\r\n"));
    let noise = "x".repeat(3 * MAX_LINE);
    let o = run(Protocol::Imap, &[B(IMAP_GREETING), C(noise.as_bytes())]);
    assert!(o.finished, "no keyword in its head: never held forever");
}

#[test]
fn preauth_greeting_is_logged_in() {
    let o = run(
        Protocol::Imap,
        &[
            B(b"* PREAUTH [CAPABILITY IMAP4rev1] logged in as alice\r\n"),
            C(b"a SELECT INBOX\r\n"),
        ],
    );
    assert!(o.logged_in);
    assert!(o.verdicts.is_empty());
    assert_eq!(o.to_backend, "a SELECT INBOX\r\n");
}

#[test]
fn t4_starttls_and_compress_before_login_are_refused() {
    let o = run(
        Protocol::Imap,
        &[B(IMAP_GREETING), C(b"a STARTTLS\r\nb COMPRESS DEFLATE\r\n")],
    );
    assert_eq!(o.to_backend, "");
    assert!(o.to_client.contains("a BAD TLS is already active\r\n"));
    assert!(o
        .to_client
        .contains("b BAD COMPRESS is not accepted before login\r\n"));
    assert_eq!(o.claims, 0, "not address claims");
}

#[test]
fn replies_wait_for_a_line_boundary_of_the_backend() {
    // The backend is mid-line when the client's claim is refused: the refusal goes after
    // that line, never inside it.
    let o = run(
        Protocol::Imap,
        &[
            B(IMAP_GREETING),
            C(b"a CAPABILITY\r\n"),
            B(b"* CAPABILITY IMAP4rev1 "),
            C(b"b STARTTLS\r\n"),
            B(b"ID\r\na OK done\r\n"),
        ],
    );
    assert!(o
        .to_client
        .ends_with("* CAPABILITY IMAP4rev1 ID\r\nb BAD TLS is already active\r\na OK done\r\n"));
}

#[test]
fn backend_literals_are_skipped() {
    // A literal in the backend's output holding something that looks like a tagged OK.
    let o = run(
        Protocol::Imap,
        &[
            B(IMAP_GREETING),
            C(b"a LOGIN alice pw\r\n"),
            B(b"* ID (\"name\" {12}\r\na OK fooled)\r\n"),
            B(b"a NO no\r\n"),
        ],
    );
    assert_eq!(o.verdicts, [failed("alice")]);
}

#[test]
fn too_many_commands_in_flight_wait_for_replies() {
    let many: Vec<u8> = (0..MAX_IN_FLIGHT + 5)
        .flat_map(|i| format!("t{i} NOOP\r\n").into_bytes())
        .collect();
    let o = run(Protocol::Imap, &[B(IMAP_GREETING), C(&many)]);
    assert_eq!(o.to_backend.lines().count(), MAX_IN_FLIGHT);
    assert!(!o.wants_client);
    let o = run(
        Protocol::Imap,
        &[B(IMAP_GREETING), C(&many), B(b"t0 OK\r\nt1 OK\r\n")],
    );
    assert_eq!(o.to_backend.lines().count(), MAX_IN_FLIGHT + 2);
}

#[test]
fn client_eof_drops_a_partial_line() {
    let mut g = LoginGuard::new(Protocol::Imap, MAX_LINE);
    let (mut b, mut c) = (Vec::new(), Vec::new());
    let _ = g.backend(IMAP_GREETING, &mut c, &mut b);
    let _ = g.client(b"a LOGIN alice secr", &mut b, &mut c);
    assert!(b.is_empty() && g.held_len() > 0);
    g.client_eof();
    assert_eq!(g.held_len(), 0);
}
