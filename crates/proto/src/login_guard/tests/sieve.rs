//! ManageSieve: AUTHENTICATE with the SASL data as a quoted string or a literal, replies in
//! order, literals both ways, and no XCLIENT at any point.

use super::*;

#[test]
fn authenticate_plain_quoted_or_literal_initial_response() {
    let ir = b64(b"\0alice\0secret1");
    let quoted = format!("AUTHENTICATE \"PLAIN\" \"{ir}\"\r\n");
    let o = run_secret(
        Protocol::Sieve,
        &[
            B(SIEVE_GREETING),
            C(quoted.as_bytes()),
            B(b"OK \"Logged in.\"\r\n"),
        ],
        "secret1",
    );
    assert_eq!(o.verdicts, [ok("alice")]);
    assert_eq!(o.to_backend, quoted);
    // Python's managesieve sends the response as a literal, `{n}` works the same.
    for plus in ["+", ""] {
        let literal = format!("AUTHENTICATE \"PLAIN\" {{{}{plus}}}\r\n{ir}\r\n", ir.len());
        let o = run_secret(
            Protocol::Sieve,
            &[
                B(SIEVE_GREETING),
                C(literal.as_bytes()),
                B(b"NO \"Authentication failed.\"\r\n"),
                C(b"LOGOUT\r\n"),
                B(b"OK \"Logout completed.\"\r\n"),
            ],
            "secret1",
        );
        assert_eq!(o.verdicts, [failed("alice")], "{plus}");
        assert_eq!(o.to_backend, format!("{literal}LOGOUT\r\n"));
        assert!(!o.logged_in);
    }
}

#[test]
fn authenticate_without_initial_response_reads_the_answer_to_the_challenge() {
    for (resp, name) in [
        (format!("\"{}\"\r\n", b64(b"\0bob\0secret2")), "bob"),
        (
            format!(
                "{{{}+}}\r\n{}\r\n",
                b64(b"\0carol\0secret2").len(),
                b64(b"\0carol\0secret2")
            ),
            "carol",
        ),
    ] {
        let o = run_secret(
            Protocol::Sieve,
            &[
                B(SIEVE_GREETING),
                C(b"Authenticate \"plain\"\r\n"),
                B(b"\"\"\r\n"),
                C(resp.as_bytes()),
                B(b"OK \"Logged in.\"\r\n"),
                C(b"LISTSCRIPTS\r\n"),
                B(b"\"vacation\" ACTIVE\r\n\"STARTTLS\"\r\nOK \"Listscripts completed.\"\r\n"),
            ],
            "secret2",
        );
        assert_eq!(o.verdicts, [ok(name)], "{resp}");
        assert_eq!(o.user.as_deref(), Some(name));
        assert!(o.logged_in && o.wants_client);
    }
    // A cancelled exchange: no name, a failure.
    let o = run(
        Protocol::Sieve,
        &[
            B(SIEVE_GREETING),
            C(b"AUTHENTICATE \"PLAIN\"\r\n"),
            B(b"{0}\r\n\r\n"),
            C(b"\"*\"\r\n"),
            B(b"NO \"Authentication aborted.\"\r\n"),
        ],
    );
    assert_eq!(o.verdicts, [LoginVerdict::Failed { user: None }]);
}

#[test]
fn t12_xclient_is_refused_before_and_after_login_and_the_third_ends_the_session() {
    let ir = b64(b"\0alice\0secret1");
    let auth = format!("AUTHENTICATE \"PLAIN\" \"{ir}\"\r\n");
    let o = run(
        Protocol::Sieve,
        &[
            B(SIEVE_GREETING),
            C(b"XCLIENT ADDR=192.0.2.66 PORT=1\r\n"),
            C(auth.as_bytes()),
            B(b"OK \"Logged in.\"\r\n"),
            C(b"xclient addr=192.0.2.66\r\nNOOP\r\n"),
            B(b"OK \"NOOP completed.\"\r\n"),
            C(b"  XCLIENT {5+}\r\nADDR=\r\nNOOP\r\n"),
        ],
    );
    assert_eq!(o.to_backend, format!("{auth}NOOP\r\n"));
    let refused = "NO \"XCLIENT is not accepted from clients\"\r\n";
    assert_eq!(
        o.to_client,
        format!(
            "{}{refused}OK \"Logged in.\"\r\n{refused}OK \"NOOP completed.\"\r\n{refused}BYE \"Too many refused commands, closing connection\"\r\n",
            String::from_utf8_lossy(SIEVE_GREETING)
        )
    );
    assert_eq!(o.claims, 3);
    assert!(o.finished);
}

#[test]
fn literals_pass_both_ways_and_are_never_read_as_commands_or_replies() {
    let script = "require \"fileinto\";\r\nXCLIENT ADDR=192.0.2.66\r\nOK \"fake\"\r\n";
    let put = format!("PUTSCRIPT \"s\" {{{}+}}\r\n{script}\r\n", script.len());
    let got = format!(
        "{{{}}}\r\n{script}\r\nOK \"Getscript completed.\"\r\n",
        script.len()
    );
    let o = run(
        Protocol::Sieve,
        &[
            B(SIEVE_GREETING),
            C(put.as_bytes()),
            B(b"OK \"Putscript completed.\"\r\n"),
            C(b"GETSCRIPT \"s\"\r\nSTARTTLS\r\n"),
            B(got.as_bytes()),
        ],
    );
    assert_eq!(o.to_backend, format!("{put}GETSCRIPT \"s\"\r\n"));
    assert!(o.to_client.ends_with(&format!(
        "OK \"Putscript completed.\"\r\n{got}NO \"TLS is already active\"\r\n"
    )));
    assert_eq!(o.claims, 0);
}

#[test]
fn replies_nothing_asked_for_end_the_session_except_a_goodbye() {
    let o = run(
        Protocol::Sieve,
        &[B(SIEVE_GREETING), B(b"OK \"surprise\"\r\n")],
    );
    assert!(o.finished);
    assert!(o
        .to_client
        .ends_with("BYE \"The mail gateway cannot follow this command, closing connection\"\r\n"));
    let o = run(
        Protocol::Sieve,
        &[
            B(SIEVE_GREETING),
            B(b"BYE \"Disconnected for inactivity.\"\r\n"),
        ],
    );
    assert!(!o.finished);
    // A literal of unreadable length: nobody knows where the next command starts.
    let o = run(
        Protocol::Sieve,
        &[
            B(SIEVE_GREETING),
            C(b"PUTSCRIPT \"x\" {99999999999999999999999+}\r\n"),
        ],
    );
    assert!(o.finished && o.to_backend.is_empty());
    let o = run(Protocol::Sieve, &[B(SIEVE_GREETING), C(b"\r\n")]);
    assert_eq!(o.to_backend, "");
    assert!(o.to_client.ends_with("NO \"Empty command\"\r\n"));
}

#[test]
fn login_line_reads_sieve_authenticate() {
    let ir = b64(b"\0dave\0pw");
    let p = Protocol::Sieve;
    assert_eq!(
        login_line(p, format!("AUTHENTICATE \"PLAIN\" \"{ir}\"\r\n").as_bytes()),
        LoginLine::Name("dave".into())
    );
    assert_eq!(
        login_line(
            p,
            format!("authenticate \"PLAIN\" {{{}+}}\r\n{ir}\r\n", ir.len()).as_bytes()
        ),
        LoginLine::Name("dave".into())
    );
    assert_eq!(
        login_line(p, b"AUTHENTICATE \"PLAIN\"\r\n"),
        LoginLine::AwaitsResponse(SaslMech::Plain)
    );
    assert_eq!(
        login_line(p, b"AUTHENTICATE \"PLAIN\" {20+}\r\nshort"),
        LoginLine::Unreadable
    );
    assert_eq!(
        login_line(p, b"AUTHENTICATE \"GSSAPI\""),
        LoginLine::Unreadable
    );
    assert_eq!(login_line(p, b"PUTSCRIPT \"x\" {1+}"), LoginLine::NotLogin);
}
