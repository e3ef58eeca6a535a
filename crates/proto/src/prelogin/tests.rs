use base64::Engine;

use super::*;

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn limits() -> PreloginLimits {
    PreloginLimits {
        max_line_length: 1024,
        max_commands: 20,
    }
}

fn dovecot_caps() -> Capabilities {
    Capabilities::new(
        "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS AUTH=PLAIN AUTH=LOGIN AUTH=CRAM-MD5 AUTH=XOAUTH2"
            .split(' ')
            .map(str::to_owned)
            .collect(),
    )
}

/// Feeds `input` in `chunk`-byte reads; returns everything written and the login, if any.
fn run(p: &mut Prelogin, input: &[u8], chunk: usize) -> (Vec<u8>, Option<Login>, bool) {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for piece in input.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match p.step(&mut buf) {
                PreStep::NeedMore => break,
                PreStep::Reply(r) => out.extend(r),
                PreStep::Login(l) => return (out, Some(l), false),
                PreStep::Close(r) => {
                    out.extend(r);
                    return (out, None, true);
                }
            }
        }
    }
    (out, None, false)
}

fn imap() -> Prelogin {
    Prelogin::new(Protocol::Imap, "gw.test", Some(&dovecot_caps()), limits())
}

#[test]
fn imap_capabilities_are_the_servers_without_what_postern_cannot_route() {
    let p = imap();
    let g = String::from_utf8(p.greeting()).unwrap();
    assert_eq!(
        g,
        "* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN AUTH=LOGIN AUTH=XOAUTH2] gw.test ready (postern)\r\n"
    );
    let mut p = imap();
    let (out, login, closed) = run(&mut p, b"a CAPABILITY\r\nb NOOP\r\nc LOGOUT\r\n", 100);
    let out = String::from_utf8(out).unwrap();
    assert!(out.starts_with("* CAPABILITY IMAP4rev1 SASL-IR"), "{out}");
    assert!(
        out.contains("a OK CAPABILITY") && out.contains("b OK NOOP") && out.contains("c OK LOGOUT")
    );
    assert!(!out.contains("STARTTLS") && !out.contains("CRAM"));
    assert!(login.is_none() && closed);
}

#[test]
fn imap_login_every_spelling_is_replayed_byte_for_byte() {
    for (input, user, swallow) in [
        (&b"a LOGIN alice secret\r\n"[..], "alice", 0),
        (b"a login \"al ice\" \"se cret\"\n", "al ice", 0),
        (b"a LOGIN {5}\r\nalice {6}\r\nsecret\r\n", "alice", 2),
        (b"a LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n", "alice", 0),
    ] {
        for chunk in [1, 3, 1000] {
            let mut p = imap();
            let (out, login, _) = run(&mut p, input, chunk);
            let login = login.expect("a login");
            assert_eq!(login.user, user);
            assert_eq!(login.replay.as_slice(), input);
            assert_eq!(login.swallow, swallow);
            assert_eq!(out, b"+ OK\r\n".repeat(swallow as usize));
        }
    }
}

#[test]
fn imap_sasl_with_and_without_initial_response() {
    let plain = b64(b"\0bob\0pw");
    let with_ir = format!("t1 AUTHENTICATE PLAIN {plain}\r\n");
    let mut p = imap();
    let (out, login, _) = run(&mut p, with_ir.as_bytes(), 4);
    let login = login.unwrap();
    assert!(out.is_empty());
    assert_eq!((login.user.as_str(), login.swallow), ("bob", 0));
    assert_eq!(login.replay.as_slice(), with_ir.as_bytes());

    let without = format!("t1 AUTHENTICATE PLAIN\r\n{plain}\r\n");
    let mut p = imap();
    let (out, login, _) = run(&mut p, without.as_bytes(), 5);
    let login = login.unwrap();
    assert_eq!(out, b"+ \r\n");
    assert_eq!((login.user.as_str(), login.swallow), ("bob", 1));
    assert_eq!(login.replay.as_slice(), without.as_bytes());

    let xoauth = b64(b"user=carol@x.test\x01auth=Bearer tok\x01\x01");
    let mut p = imap();
    let (_, login, _) = run(
        &mut p,
        format!("x AUTHENTICATE XOAUTH2 {xoauth}\r\n").as_bytes(),
        7,
    );
    assert_eq!(login.unwrap().user, "carol@x.test");

    let bearer = b64(b"n,a=dave@x.test,\x01auth=Bearer t\x01\x01");
    let mut p = imap();
    let (_, login, _) = run(
        &mut p,
        format!("x AUTHENTICATE OAUTHBEARER\r\n{bearer}\r\n").as_bytes(),
        7,
    );
    assert_eq!(login.unwrap().user, "dave@x.test");

    // LOGIN: the name is the first response; the password prompt will be the server's.
    let mut p = imap();
    let (out, login, _) = run(
        &mut p,
        format!("x AUTHENTICATE LOGIN\r\n{}\r\n", b64(b"erin")).as_bytes(),
        100,
    );
    assert_eq!(out, b"+ VXNlcm5hbWU6\r\n");
    assert_eq!(login.unwrap().user, "erin");
}

#[test]
fn imap_cancel_unreadable_and_claims_are_answered_not_routed() {
    let mut p = imap();
    let (out, login, closed) = run(
        &mut p,
        b"a AUTHENTICATE PLAIN\r\n*\r\nb AUTHENTICATE CRAM-MD5\r\nc ID (\"x-originating-ip\" \"1.2.3.4\")\r\nd ID (\"name\" \"mutt\")\r\ne STARTTLS\r\nf SELECT INBOX\r\n",
        9,
    );
    let out = String::from_utf8(out).unwrap();
    assert!(login.is_none() && !closed, "{out}");
    assert!(out.contains("a BAD Authentication cancelled"), "{out}");
    assert!(out.contains("b NO [AUTHENTICATIONFAILED]"), "{out}");
    assert!(
        out.contains("c BAD ID field \"x-originating-ip\" is reserved"),
        "{out}"
    );
    assert!(out.contains("* ID NIL\r\nd OK ID completed"), "{out}");
    assert!(out.contains("e BAD TLS is already active"), "{out}");
    assert!(out.contains("f BAD Command unknown"), "{out}");
}

#[test]
fn imap_bounds_close() {
    let mut p = imap();
    let long = [b"a LOGIN ".as_slice(), &[b'x'; 2000], b" y\r\n"].concat();
    let (out, _, closed) = run(&mut p, &long, 100);
    assert!(closed && out.starts_with(b"* BYE Line too long"));

    let mut p = imap();
    let (out, _, closed) = run(&mut p, &b"a NOOP\r\n".repeat(21), 1000);
    assert!(closed && out.ends_with(b"* BYE Too many commands before login\r\n"));

    // A non-synchronizing literal the servers did not advertise cannot be followed.
    let caps = Capabilities::new(vec!["IMAP4rev1".into(), "AUTH=PLAIN".into()]);
    let mut p = Prelogin::new(Protocol::Imap, "h", Some(&caps), limits());
    let (out, _, closed) = run(&mut p, b"a LOGIN {5+}\r\nalice x\r\n", 100);
    assert!(closed && String::from_utf8_lossy(&out).contains("LITERAL+"));

    // A synchronizing literal over the bound is refused; the client sends nothing more.
    let mut p = imap();
    let (out, login, closed) = run(&mut p, b"a LOGIN {999999}\r\nb NOOP\r\n", 100);
    assert!(!closed && login.is_none());
    assert_eq!(
        out,
        b"a NO [TOOBIG] Literal too large\r\nb OK NOOP completed\r\n"
    );
}

#[test]
fn pop3_user_apop_and_auth() {
    let caps = Capabilities::new(
        [
            "CAPA",
            "TOP",
            "UIDL",
            "USER",
            "SASL PLAIN LOGIN CRAM-MD5",
            "STLS",
            "RESP-CODES",
        ]
        .map(str::to_owned)
        .to_vec(),
    );
    let new = || Prelogin::new(Protocol::Pop3, "h", Some(&caps), limits());
    let mut p = new();
    let (out, login, _) = run(&mut p, b"CAPA\r\nAUTH\r\nUSER alice\r\nPASS x\r\n", 1000);
    let out = String::from_utf8(out).unwrap();
    assert_eq!(
        out,
        "+OK Capability list follows\r\nCAPA\r\nTOP\r\nUIDL\r\nUSER\r\nSASL PLAIN LOGIN\r\nRESP-CODES\r\n.\r\n+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n"
    );
    let login = login.unwrap();
    assert_eq!((login.user.as_str(), login.swallow), ("alice", 0));
    assert_eq!(login.replay.as_slice(), b"USER alice\r\nPASS x\r\n");

    let mut p = new();
    let input = format!("AUTH PLAIN\r\n{}\r\n", b64(b"\0bob\0pw"));
    let (out, login, _) = run(&mut p, input.as_bytes(), 2);
    assert_eq!(out, b"+ \r\n");
    let login = login.unwrap();
    assert_eq!((login.user.as_str(), login.swallow), ("bob", 1));
    assert_eq!(login.replay.as_slice(), input.as_bytes());

    let mut p = new();
    let (out, _, closed) = run(&mut p, b"PASS x\r\nXCLIENT ADDR=1.2.3.4\r\nQUIT\r\n", 100);
    let out = String::from_utf8(out).unwrap();
    assert!(
        closed && out.starts_with("-ERR USER first\r\n-ERR XCLIENT"),
        "{out}"
    );
}

#[test]
fn smtp_ehlo_is_replayed_before_auth() {
    let caps = Capabilities::new(
        [
            "PIPELINING",
            "SIZE 1000",
            "AUTH PLAIN LOGIN GSSAPI",
            "STARTTLS",
            "XCLIENT ADDR NAME",
            "CHUNKING",
        ]
        .map(str::to_owned)
        .to_vec(),
    );
    let new = || Prelogin::new(Protocol::Smtp, "gw", Some(&caps), limits());
    let mut p = new();
    let (out, login, _) = run(
        &mut p,
        b"AUTH PLAIN x\r\nMAIL FROM:<a@b>\r\nEHLO client.test\r\n",
        5,
    );
    assert!(login.is_none());
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "503 5.5.1 Send EHLO first\r\n530 5.7.0 Authentication required\r\n250-gw\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-AUTH PLAIN LOGIN\r\n250 CHUNKING\r\n"
    );
    let auth = format!("AUTH PLAIN {}\r\n", b64(b"\0carol\0pw"));
    let (_, login, _) = run(&mut p, auth.as_bytes(), 5);
    let login = login.unwrap();
    assert_eq!((login.user.as_str(), login.swallow), ("carol", 1));
    assert_eq!(
        login.replay.as_slice(),
        [&b"EHLO client.test\r\n"[..], auth.as_bytes()].concat()
    );

    let mut p = new();
    let input = format!("EHLO c\r\nAUTH LOGIN\r\n{}\r\n", b64(b"dave"));
    let (out, login, _) = run(&mut p, input.as_bytes(), 100);
    assert!(out.ends_with(b"334 VXNlcm5hbWU6\r\n"));
    let login = login.unwrap();
    assert_eq!((login.user.as_str(), login.swallow), ("dave", 2));
    assert_eq!(login.replay.as_slice(), input.as_bytes());
}

#[test]
fn swallow_drops_only_what_the_client_had() {
    let feed = |p: Protocol, n: u32, input: &[u8], chunk: usize| {
        let mut s = ReplySwallow::new(p, n);
        let mut out = Vec::new();
        for c in input.chunks(chunk) {
            s.feed(c, &mut out);
        }
        (String::from_utf8(out).unwrap(), s.done())
    };
    for chunk in [1, 2, 100] {
        assert_eq!(
            feed(
                Protocol::Imap,
                2,
                b"+ OK\r\n+ OK\r\na OK [CAPABILITY X] Logged in\r\n",
                chunk
            ),
            ("a OK [CAPABILITY X] Logged in\r\n".into(), true)
        );
        // A tagged reply in place of a continuation ends it: nothing after it is dropped.
        assert_eq!(
            feed(
                Protocol::Imap,
                2,
                b"* OK x\r\na NO bad\r\n+ later\r\n",
                chunk
            ),
            ("* OK x\r\na NO bad\r\n+ later\r\n".into(), true)
        );
        assert_eq!(
            feed(
                Protocol::Smtp,
                2,
                b"250-gw\r\n250-AUTH PLAIN\r\n250 OK\r\n334 \r\n235 2.7.0 ok\r\n",
                chunk
            ),
            ("235 2.7.0 ok\r\n".into(), true)
        );
        assert_eq!(
            feed(Protocol::Pop3, 1, b"+ \r\n+OK Logged in.\r\n", chunk),
            ("+OK Logged in.\r\n".into(), true)
        );
    }
}

#[test]
fn sieve_greets_with_the_servers_list_and_reads_authenticate() {
    let caps = Capabilities::new(
        [
            "IMPLEMENTATION Dovecot Pigeonhole",
            "SIEVE fileinto reject",
            "SASL PLAIN CRAM-MD5",
            "STARTTLS",
            "VERSION 1.0",
        ]
        .map(str::to_owned)
        .to_vec(),
    );
    let p = Prelogin::new(Protocol::Sieve, "mx.test", Some(&caps), limits());
    assert_eq!(
        String::from_utf8_lossy(&p.greeting()),
        "\"IMPLEMENTATION\" \"Dovecot Pigeonhole\"\r\n\"SIEVE\" \"fileinto reject\"\r\n\"SASL\" \"PLAIN\"\r\n\"VERSION\" \"1.0\"\r\nOK \"mx.test ready (postern)\"\r\n"
    );
    let ir = b64(b"\0alice\0secret1");
    let literal = format!("AUTHENTICATE \"PLAIN\" {{{}+}}\r\n{ir}\r\n", ir.len());
    let quoted = format!("AUTHENTICATE \"PLAIN\" \"{ir}\"\r\n");
    for (login, chunk) in [(&literal, 1), (&literal, 0), (&quoted, 3)] {
        let mut p = Prelogin::new(Protocol::Sieve, "mx.test", Some(&caps), limits());
        let input = format!("NOOP\r\nXCLIENT ADDR=192.0.2.1\r\n{login}LISTSCRIPTS\r\n");
        let (out, l, closed) = run(&mut p, input.as_bytes(), chunk);
        let l = l.expect("a login");
        assert!(!closed);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "OK \"NOOP completed.\"\r\nNO \"XCLIENT is not accepted from clients\"\r\n"
        );
        assert_eq!(l.user, "alice");
        // The login byte for byte, then whatever had been read after it.
        assert!(l.replay.as_slice().starts_with(login.as_bytes()));
        assert_eq!(l.swallow, 0);
    }
    // Without an initial response: postern's empty challenge, then a quoted response.
    let mut p = Prelogin::new(Protocol::Sieve, "mx.test", Some(&caps), limits());
    let input = format!("AUTHENTICATE \"PLAIN\"\r\n\"{}\"\r\n", b64(b"\0bob\0pw"));
    let (out, l, _) = run(&mut p, input.as_bytes(), 0);
    assert_eq!(out, b"\"\"\r\n");
    let l = l.expect("a login");
    assert_eq!((l.user.as_str(), l.swallow), ("bob", 1));
}
