//! SMTP: AUTH, XCLIENT/XFORWARD for the whole session, DATA and BDAT.

use super::*;

const EHLO_REPLY: &[u8] =
    b"250-mx.test\r\n250-PIPELINING\r\n250-CHUNKING\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n";

fn logged_in() -> Vec<Step<'static>> {
    vec![
        B(SMTP_GREETING),
        C(b"EHLO client.test\r\n"),
        B(EHLO_REPLY),
        C(b"AUTH LOGIN\r\n"),
        B(b"334 VXNlcm5hbWU6\r\n"),
        C(b"Ym9i\r\n"),
        B(b"334 UGFzc3dvcmQ6\r\n"),
        C(b"c2VjcmV0Mg==\r\n"),
        B(b"235 2.7.0 Authentication successful\r\n"),
    ]
}

#[test]
fn auth_login_confirms_with_235() {
    let o = run_secret(Protocol::Smtp, &logged_in(), "secret2");
    assert_eq!(o.verdicts, [ok("bob")]);
    assert!(o.logged_in);
}

#[test]
fn t12_xclient_and_xforward_after_auth_are_refused() {
    let mut steps = logged_in();
    steps.push(C(
        b"XCLIENT LOGIN=admin\r\n  xforward ADDR=192.0.2.66\r\nRSET\r\n",
    ));
    steps.push(B(b"250 2.0.0 Ok\r\n"));
    steps.push(C(b"XCLIENT\x0cADDR=1.2.3.4\r\nRSET\r\n"));
    let o = run(Protocol::Smtp, &steps);
    assert!(o.to_backend.ends_with("c2VjcmV0Mg==\r\nRSET\r\n"));
    assert!(o.to_client.ends_with(
        "235 2.7.0 Authentication successful\r\n\
         550 5.7.0 XCLIENT is not accepted from clients\r\n\
         550 5.7.0 XFORWARD is not accepted from clients\r\n\
         250 2.0.0 Ok\r\n\
         550 5.7.0 XCLIENT is not accepted from clients\r\n\
         421 4.7.0 Too many refused commands, closing connection\r\n"
    ));
    assert!(o.finished);
}

#[test]
fn message_text_is_passed_unread_after_354() {
    let mut steps = logged_in();
    steps.push(C(
        b"MAIL FROM:<bob@x.test>\r\nRCPT TO:<c@x.test>\r\nDATA\r\n",
    ));
    steps.push(B(b"250 ok\r\n250 ok\r\n354 go\r\n"));
    steps.push(C(
        b"Subject: x\r\n\r\nXCLIENT ADDR=1.2.3.4\r\n..leading dot\r\n.\r\n",
    ));
    steps.push(B(b"250 2.0.0 queued\r\n"));
    steps.push(C(b"XCLIENT ADDR=1.2.3.4\r\n"));
    let o = run(Protocol::Smtp, &steps);
    assert!(o
        .to_backend
        .ends_with("DATA\r\nSubject: x\r\n\r\nXCLIENT ADDR=1.2.3.4\r\n..leading dot\r\n.\r\n"));
    assert!(o
        .to_client
        .ends_with("250 2.0.0 queued\r\n550 5.7.0 XCLIENT is not accepted from clients\r\n"));
}

#[test]
fn t12_lines_after_a_refused_data_are_commands() {
    // The client sends DATA and its "message" at once; the backend refuses DATA: the lines
    // are commands to it, and the guard never forwarded them before knowing.
    let mut steps = logged_in();
    steps.push(C(b"DATA\r\nXCLIENT ADDR=1.2.3.4\r\n.\r\n"));
    let o = run(Protocol::Smtp, &steps);
    assert!(o.to_backend.ends_with("==\r\nDATA\r\n"));
    assert!(!o.wants_client);
    steps.push(B(b"554 5.5.1 Error: no valid recipients\r\n"));
    steps.push(B(b"502 5.5.2 Error: command not recognized\r\n"));
    let o = run(Protocol::Smtp, &steps);
    assert!(o.to_backend.ends_with("==\r\nDATA\r\n.\r\n"));
    assert!(o.to_client.ends_with(
        "554 5.5.1 Error: no valid recipients\r\n550 5.7.0 XCLIENT is not accepted from clients\r\n502 5.5.2 Error: command not recognized\r\n"
    ));
}

#[test]
fn t13_a_bare_lf_dot_ends_message_text_for_the_guard() {
    let mut steps = logged_in();
    steps.push(C(b"DATA\r\n"));
    steps.push(B(b"354 go\r\n"));
    steps.push(C(b"text\n.\nXCLIENT ADDR=1.2.3.4\r\n"));
    let o = run(Protocol::Smtp, &steps);
    assert!(o.to_backend.ends_with("text\n.\n"));
    assert!(o.to_client.ends_with("354 go\r\n"));
    steps.push(B(b"250 ok\r\n"));
    let o = run(Protocol::Smtp, &steps);
    assert!(o
        .to_client
        .ends_with("250 ok\r\n550 5.7.0 XCLIENT is not accepted from clients\r\n"));
}

#[test]
fn bdat_before_auth_is_refused_and_its_chunk_dropped() {
    let o = run(
        Protocol::Smtp,
        &[
            B(SMTP_GREETING),
            C(b"EHLO c\r\n"),
            B(EHLO_REPLY),
            C(b"BDAT 22 LAST\r\nXCLIENT ADDR=1.2.3.4\r\nNOOP\r\n"),
            B(b"250 ok\r\n"),
        ],
    );
    assert_eq!(o.to_backend, "EHLO c\r\nNOOP\r\n");
    assert!(o
        .to_client
        .ends_with("530 5.7.0 Authentication required before BDAT\r\n250 ok\r\n"));
}

#[test]
fn bdat_after_auth_passes_with_chunking_only() {
    let mut steps = logged_in();
    steps.push(C(
        b"MAIL FROM:<b@x>\r\nBDAT 22 LAST\r\nXCLIENT ADDR=1.2.3.4\r\n",
    ));
    steps.push(B(b"250 ok\r\n250 2.0.0 queued\r\n"));
    let o = run(Protocol::Smtp, &steps);
    assert!(o
        .to_backend
        .ends_with("MAIL FROM:<b@x>\r\nBDAT 22 LAST\r\nXCLIENT ADDR=1.2.3.4\r\n"));
    assert_eq!(o.claims, 0);
    // A backend that did not advertise CHUNKING would read the chunk as commands.
    let no_chunking = [
        B(SMTP_GREETING),
        C(b"EHLO c\r\n"),
        B(b"250-mx.test\r\n250 AUTH PLAIN\r\n"),
        C(format!("AUTH PLAIN {}\r\n", b64(b"\0bob\0pw"))
            .as_bytes()
            .to_vec()
            .leak()),
        B(b"235 ok\r\n"),
        C(b"BDAT 22 LAST\r\nXCLIENT ADDR=1.2.3.4\r\n"),
    ];
    let o = run(Protocol::Smtp, &no_chunking);
    assert!(!o.to_backend.contains("XCLIENT"));
    assert!(o
        .to_client
        .ends_with("502 5.5.1 BDAT refused: the server did not advertise CHUNKING\r\n"));
    // A size nobody can read: the session ends.
    let mut steps = logged_in();
    steps.push(C(b"BDAT lots\r\n"));
    assert!(run(Protocol::Smtp, &steps).finished);
}

#[test]
fn refusals_are_inserted_between_pipelined_replies() {
    let o = run(
        Protocol::Smtp,
        &[
            B(SMTP_GREETING),
            C(b"EHLO c\r\nSTARTTLS\r\nNOOP\r\n"),
            B(EHLO_REPLY),
            B(b"250 2.0.0 Ok\r\n"),
        ],
    );
    assert_eq!(o.to_backend, "EHLO c\r\nNOOP\r\n");
    assert!(o
        .to_client
        .ends_with("250 8BITMIME\r\n503 5.5.1 TLS is already active\r\n250 2.0.0 Ok\r\n"));
}

#[test]
fn malformed_replies_end_the_session() {
    let o = run(
        Protocol::Smtp,
        &[B(SMTP_GREETING), C(b"NOOP\r\n"), B(b"hello there\r\n")],
    );
    assert!(o.finished);
    assert!(o.to_client.ends_with(
        "421 4.7.0 The mail gateway cannot follow this command, closing connection\r\n"
    ));
}

#[test]
fn goodbyes_are_seen() {
    let mut g = LoginGuard::new(Protocol::Smtp, MAX_LINE);
    let (mut b, mut c) = (Vec::new(), Vec::new());
    let _ = g.backend(SMTP_GREETING, &mut c, &mut b);
    let _ = g.client(b"QUIT\r\n", &mut b, &mut c);
    assert!(!g.backend_said_goodbye());
    let _ = g.backend(b"221 2.0.0 Bye\r\n", &mut c, &mut b);
    assert!(g.backend_said_goodbye());
}
