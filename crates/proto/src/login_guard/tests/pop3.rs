//! POP3: logins, replies in order, the whole session.

use super::*;

#[test]
fn user_pass_apop_and_auth() {
    let o = run_secret(
        Protocol::Pop3,
        &[
            B(POP3_GREETING),
            C(b"CAPA\r\n"),
            B(b"+OK\r\nCAPA\r\nUSER\r\nSASL PLAIN\r\n.\r\n"),
            C(b"USER alice\r\nPASS secret1\r\n"),
            B(b"+OK\r\n+OK Logged in.\r\n"),
        ],
        "secret1",
    );
    assert_eq!(o.verdicts, [ok("alice")]);
    let o = run(
        Protocol::Pop3,
        &[
            B(POP3_GREETING),
            C(b"APOP bob c4c9334bac560ecc\r\n"),
            B(b"-ERR no\r\n"),
        ],
    );
    assert_eq!(o.verdicts, [failed("bob")]);
    let resp = format!("{}\r\n", b64(b"\0carol\0secret3"));
    let o = run_secret(
        Protocol::Pop3,
        &[
            B(POP3_GREETING),
            C(b"AUTH PLAIN\r\n"),
            B(b"+ \r\n"),
            C(resp.as_bytes()),
            B(b"+OK Logged in.\r\n"),
        ],
        "secret3",
    );
    assert_eq!(o.verdicts, [ok("carol")]);
    assert_eq!(o.user.as_deref(), Some("carol"));
}

#[test]
fn a_sasl_response_is_one_only_when_asked_for() {
    // AUTH refused at once: the next line is a command (here a claim), not a response.
    let o = run(
        Protocol::Pop3,
        &[
            B(POP3_GREETING),
            C(b"AUTH FOO\r\nXCLIENT ADDR=192.0.2.66\r\n"),
            B(b"-ERR Unsupported authentication mechanism.\r\n"),
        ],
    );
    assert_eq!(o.to_backend, "AUTH FOO\r\n");
    assert!(o
        .to_client
        .ends_with("-ERR Unsupported authentication mechanism.\r\n-ERR XCLIENT is not accepted from clients\r\n"));
}

#[test]
fn refusals_come_in_reply_order() {
    let o = run(
        Protocol::Pop3,
        &[
            B(POP3_GREETING),
            C(b"NOOP\r\nSTLS\r\nUIDL\r\n"),
            B(b"+OK\r\n+OK\r\n1 abc\r\n.\r\n"),
        ],
    );
    assert_eq!(o.to_backend, "NOOP\r\nUIDL\r\n");
    assert_eq!(
        o.to_client,
        "+OK Dovecot ready.\r\n+OK\r\n-ERR TLS is already active\r\n+OK\r\n1 abc\r\n.\r\n"
    );
}

#[test]
fn claims_after_login_are_refused_too() {
    let o = run(
        Protocol::Pop3,
        &[
            B(POP3_GREETING),
            C(b"USER alice\r\nPASS pw\r\n"),
            B(b"+OK\r\n+OK Logged in.\r\n"),
            C(b"RETR 1\r\nXCLIENT ADDR=192.0.2.66\r\nQUIT\r\n"),
            B(b"+OK 5 octets\r\nXCLIENT line in a message\r\n.\r\n+OK Logging out.\r\n"),
        ],
    );
    assert!(o.logged_in);
    assert_eq!(o.to_backend, "USER alice\r\nPASS pw\r\nRETR 1\r\nQUIT\r\n");
    assert!(o
        .to_client
        .ends_with(".\r\n-ERR XCLIENT is not accepted from clients\r\n+OK Logging out.\r\n"));
}

#[test]
fn empty_lines_are_answered_by_postern() {
    let o = run(Protocol::Pop3, &[B(POP3_GREETING), C(b"\r\n  \r\n")]);
    assert_eq!(o.to_backend, "");
    assert_eq!(o.to_client.matches("-ERR Empty command\r\n").count(), 2);
}

#[test]
fn replies_nothing_asked_for_end_the_session() {
    let o = run(Protocol::Pop3, &[B(POP3_GREETING), B(b"+OK surprise\r\n")]);
    assert!(o.finished);
    // Dovecot's idle goodbye is expected.
    let mut g = LoginGuard::new(Protocol::Pop3, MAX_LINE);
    let (mut b, mut c) = (Vec::new(), Vec::new());
    let _ = g.backend(POP3_GREETING, &mut c, &mut b);
    let _ = g.backend(b"-ERR Disconnected for inactivity.\r\n", &mut c, &mut b);
    assert!(g.backend_said_goodbye() && !g.finished());
}
