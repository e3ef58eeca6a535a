//! Rule T12: address claims in every spelling, in every protocol, at every point.

use super::*;

const RESERVED: &str = "is reserved to the mail gateway\r\n";

#[test]
fn t12_id_claims_in_every_spelling_are_refused() {
    for cmd in [
        &b"b ID (\"x-originating-ip\" \"192.0.2.66\")\r\n"[..],
        b"b id (\"X-Originating-IP\" \"192.0.2.66\")\r\n",
        b"b ID (\"x\\-originating\\-ip\" \"192.0.2.66\")\r\n",
        b"b ID (x-originating-ip \"192.0.2.66\")\r\n",
        b"b ID (\"name\" \"mua\" \"x-connected-ip\" \"10.0.0.1\")\r\n",
        b"b ID (\"x-forward-user\" \"admin\")\r\n",
        b"b ID (\"x-session-id\" \"abc\")\r\n",
        b"b ID (\"x-proxy-ttl\" \"5\")\r\n",
        b"b ID ({16+}\r\nx-originating-ip \"192.0.2.66\")\r\n",
        b"b ID(\"x-originating-port\" \"1\")\r\n",
    ] {
        let o = run(Protocol::Imap, &[B(IMAP_GREETING), C(cmd)]);
        assert_eq!(o.to_backend, "", "{}", String::from_utf8_lossy(cmd));
        assert!(o.to_client.starts_with("* OK"));
        assert!(o.to_client.ends_with(RESERVED), "{}", o.to_client);
        assert_eq!(o.claims, 1);
    }
}

#[test]
fn t12_id_with_a_synchronizing_literal_gets_postern_s_go_ahead() {
    // The client waits for `+` before each literal: postern gives it, assembles the whole
    // command, and refuses it; the backend never sees a byte of it.
    let o = run(
        Protocol::Imap,
        &[
            B(IMAP_GREETING),
            C(b"b ID ({16}\r\n"),
            C(b"x-originating-ip {10}\r\n"),
            C(b"192.0.2.66)\r\n"),
        ],
    );
    assert_eq!(o.to_backend, "");
    assert_eq!(
        o.to_client.matches("+ Ready for literal data\r\n").count(),
        2,
        "{}",
        o.to_client
    );
    assert!(o.to_client.ends_with(RESERVED));
    // A clean one with literals reaches the backend, re-encoded as quoted strings.
    let o = run(
        Protocol::Imap,
        &[
            B(IMAP_GREETING),
            C(b"b ID ({4}\r\n"),
            C(b"name {5}\r\n"),
            C(b"mutt!)\r\n"),
        ],
    );
    assert_eq!(o.to_backend, "b ID (\"name\" \"mutt!\")\r\n");
}

#[test]
fn rfc_2971_largest_id_reaches_the_backend() {
    // 30 fields of 1024-byte values: a 32 KB line, far over max_line_length.
    let mut quoted = b"c ID (".to_vec();
    let mut literal = b"d ID (".to_vec();
    for i in 0..30 {
        let value = format!("{i:02}").repeat(512);
        quoted.extend_from_slice(format!("\"field-{i:02}\" \"{value}\" ").as_bytes());
        literal.extend_from_slice(format!("\"field-{i:02}\" {{1024+}}\r\n{value} ").as_bytes());
    }
    for cmd in [&mut quoted, &mut literal] {
        cmd.pop();
        cmd.extend_from_slice(b")\r\n");
    }
    assert!(quoted.len() > 30 * 1024);
    let o = run(Protocol::Imap, &[B(IMAP_GREETING), C(&quoted)]);
    assert_eq!(o.to_backend.as_bytes(), &quoted[..]);
    assert_eq!(o.claims, 0);
    let o = run(Protocol::Imap, &[B(IMAP_GREETING), C(&literal)]);
    assert_eq!(
        o.to_backend.as_bytes(),
        &quoted[..].replacen("c ID", "d ID", 1)[..]
    );
}

trait Replacen {
    fn replacen(&self, from: &str, to: &str, n: usize) -> Vec<u8>;
}

impl Replacen for [u8] {
    fn replacen(&self, from: &str, to: &str, n: usize) -> Vec<u8> {
        String::from_utf8_lossy(self)
            .replacen(from, to, n)
            .into_bytes()
    }
}

#[test]
fn an_id_the_guard_cannot_decode_is_refused_saying_why() {
    let o = run(
        Protocol::Imap,
        &[B(IMAP_GREETING), C(b"b ID (\"name\" (\"nested\"))\r\n")],
    );
    assert_eq!(o.to_backend, "");
    assert!(o.to_client.ends_with(
        "b BAD ID refused: the gateway could not parse it (an argument is not a string)\r\n"
    ));
    let long = format!("b ID (\"name\" \"{}\")\r\n", "v".repeat(MAX_ID_COMMAND));
    let o = run(Protocol::Imap, &[B(IMAP_GREETING), C(long.as_bytes())]);
    assert!(o
        .to_client
        .contains("b BAD ID refused: longer than 65536 bytes\r\n"));
    assert!(o.finished);
}

#[test]
fn t12_claims_after_a_failed_login_are_refused_in_every_protocol() {
    let imap = run(
        Protocol::Imap,
        &[
            B(IMAP_GREETING),
            C(b"a LOGIN alice wrong\r\n"),
            B(b"a NO [AUTHENTICATIONFAILED] failed\r\n"),
            C(b"b ID (\"x-originating-ip\" \"192.0.2.66\")\r\n"),
        ],
    );
    assert_eq!(imap.to_backend, "a LOGIN alice wrong\r\n");
    assert!(imap.to_client.ends_with(RESERVED));
    let pop3 = run(
        Protocol::Pop3,
        &[
            B(POP3_GREETING),
            C(b"USER alice\r\nPASS wrong\r\n"),
            B(b"+OK\r\n-ERR [AUTH] failed\r\n"),
            C(b"XCLIENT ADDR=192.0.2.66\r\n"),
        ],
    );
    assert_eq!(pop3.to_backend, "USER alice\r\nPASS wrong\r\n");
    assert!(pop3
        .to_client
        .ends_with("-ERR XCLIENT is not accepted from clients\r\n"));
    assert_eq!(pop3.verdicts, [failed("alice")]);
    let smtp = run(
        Protocol::Smtp,
        &[
            B(SMTP_GREETING),
            C(format!("AUTH PLAIN {}\r\n", b64(b"\0alice\0wrong")).as_bytes()),
            B(b"535 5.7.8 failed\r\n"),
            C(b"xclient ADDR=192.0.2.66\r\nXFORWARD ADDR=192.0.2.66\r\n"),
        ],
    );
    assert!(!smtp.to_backend.to_ascii_uppercase().contains("X"));
    assert!(smtp.to_client.ends_with(
        "550 5.7.0 XCLIENT is not accepted from clients\r\n550 5.7.0 XFORWARD is not accepted from clients\r\n"
    ));
}

#[test]
fn a_session_ends_after_max_refused_claims() {
    let claim = b"XCLIENT ADDR=192.0.2.66\r\n";
    let spray = claim.repeat(10);
    let o = run(Protocol::Pop3, &[B(POP3_GREETING), C(&spray)]);
    assert_eq!(o.claims, MAX_REFUSED_CLAIMS);
    assert!(o.finished && !o.wants_client);
    assert_eq!(
        o.to_client,
        format!(
            "+OK Dovecot ready.\r\n{}-ERR Too many refused commands, closing connection\r\n",
            "-ERR XCLIENT is not accepted from clients\r\n".repeat(MAX_REFUSED_CLAIMS as usize)
        )
    );
    assert_eq!(o.to_backend, "");
}

#[test]
fn own_replies_are_bounded_when_the_client_does_not_read() {
    // Refusals that are not claims (STARTTLS) never end the session; the guard stops
    // taking client bytes once its queued replies reach the bound.
    let mut g = LoginGuard::new(Protocol::Smtp, MAX_LINE);
    let (mut b, mut c) = (Vec::new(), Vec::new());
    let _ = g.backend(SMTP_GREETING, &mut c, &mut b);
    let _ = g.client(b"NOOP\r\n", &mut b, &mut c);
    let spray = b"STARTTLS\r\n".repeat(5000);
    let _ = g.client(&spray, &mut b, &mut c);
    assert!(!g.wants_client());
    assert!(g.backend_held_len() <= MAX_OWN_BACKLOG + 64);
    assert!(c.len() < 100, "nothing written before NOOP's reply");
    assert!(g.held_len() <= spray.len());
}

/// postern's own replies obey back-pressure: one big read of commands postern answers
/// itself (STARTTLS inside TLS is refused, and not an address claim, so nothing ends the
/// session) hands out at most MAX_OWN_BACKLOG and one reply, parks the rest, and takes no
/// client bytes until the caller says the replies were written.
#[test]
fn own_replies_to_one_big_read_are_handed_out_a_backlog_at_a_time() {
    for (p, greeting, cmd) in [
        (Protocol::Imap, IMAP_GREETING, &b"a STARTTLS\r\n"[..]),
        (Protocol::Pop3, POP3_GREETING, b"STLS\r\n"),
        (Protocol::Smtp, SMTP_GREETING, b"STARTTLS\r\n"),
    ] {
        let read = cmd.repeat(65536 / cmd.len());
        let count = 65536 / cmd.len();
        let mut g = LoginGuard::new(p, MAX_LINE);
        let (mut to_backend, mut to_client) = (Vec::new(), Vec::new());
        let _ = g.backend(greeting, &mut to_client, &mut to_backend);
        to_client.clear();
        let _ = g.client(&read, &mut to_backend, &mut to_client);
        let longest_reply = 128;
        assert!(
            to_client.len() <= MAX_OWN_BACKLOG + longest_reply,
            "{p:?}: {}",
            to_client.len()
        );
        assert!(!to_client.is_empty());
        assert!(!g.wants_client(), "{p:?}: reads on with replies unwritten");
        assert!(g.own_replies_unwritten());
        let mut all = std::mem::take(&mut to_client);
        let mut rounds = 1;
        while g.own_replies_unwritten() {
            g.own_replies_written(&mut to_backend, &mut to_client);
            assert!(to_client.len() <= MAX_OWN_BACKLOG + longest_reply);
            all.append(&mut to_client);
            rounds += 1;
        }
        assert!(g.wants_client(), "{p:?}");
        assert!(to_backend.is_empty(), "{p:?}: nothing reaches the backend");
        let one = all.len() / count;
        assert_eq!(all.len(), one * count, "{p:?}: one reply per command");
        assert!(
            rounds > all.len() / (MAX_OWN_BACKLOG + longest_reply),
            "{p:?}"
        );
        assert_eq!(g.refused_claims(), 0);
    }
}
