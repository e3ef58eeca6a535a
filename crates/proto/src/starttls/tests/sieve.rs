//! The ManageSieve plaintext phase (RFC 5804): postern's own capability list, STARTTLS,
//! refusals, and literals whose bytes follow at once whatever their announcement.

use super::*;

const CAPS: &str = "\"IMPLEMENTATION\" \"postern\"\r\n\"SASL\" \"\"\r\n\"SIEVE\" \"\"\r\n\"STARTTLS\"\r\n\"VERSION\" \"1.0\"\r\n";

#[test]
fn t6_t7_greeting_is_the_capability_list_then_ok() {
    let g = phase(Protocol::Sieve).greeting();
    assert_eq!(
        String::from_utf8_lossy(&g),
        format!("{CAPS}OK \"mx.test ready (postern)\"\r\n")
    );
    // A configured name can neither end the quoted string nor the line.
    let ph = PlainPhase::new(Protocol::Sieve, "a\"b\\c\r\nOK", LIMITS);
    let g = String::from_utf8(ph.greeting()).unwrap_or_default();
    assert!(g.ends_with("OK \"a-b-c--OK ready (postern)\"\r\n"), "{g}");
}

#[test]
fn t6_capability_snapshot_and_dialogue() {
    assert_eq!(
        run(Protocol::Sieve, b"CAPABILITY\r\nnoop\r\n"),
        [
            reply(&format!("{CAPS}OK \"Capability completed.\"\r\n")),
            reply("OK \"NOOP completed.\"\r\n"),
            PlainStep::NeedMore
        ]
    );
    assert_eq!(
        run(Protocol::Sieve, b"LOGOUT\r\nCAPABILITY\r\n"),
        [close("OK \"Logout completed.\"\r\n")]
    );
}

#[test]
fn t1_t4_authenticate_refused_then_starttls_drops_what_follows() {
    let steps = run(
        Protocol::Sieve,
        b"AUTHENTICATE \"PLAIN\" \"AGFsaWNlAHNlY3JldA==\"\r\nPUTSCRIPT \"x\" \"y\"\r\nStartTLS\r\nAUTHENTICATE \"PLAIN\"\r\n",
    );
    assert_eq!(
        steps,
        [
            reply("NO (ENCRYPT-NEEDED) \"Plaintext authentication is disabled, use STARTTLS first\"\r\n"),
            reply("NO \"Command unknown or not allowed before STARTTLS\"\r\n"),
            upgrade("OK \"Begin TLS negotiation now.\"\r\n", 22),
        ]
    );
}

#[test]
fn t8_starttls_with_arguments_is_not_an_upgrade() {
    assert_eq!(
        run(Protocol::Sieve, b"STARTTLS x\r\nLOGOUT \"now\"\r\n"),
        [
            reply("NO \"Command takes no arguments\"\r\n"),
            reply("NO \"Command takes no arguments\"\r\n"),
            PlainStep::NeedMore
        ]
    );
}

#[test]
fn t8_literal_bytes_are_skipped_whatever_the_announcement() {
    // Dovecot reads `{n}` like `{n+}` (ManageSieve has no go-ahead): the bytes follow, and a
    // STARTTLS inside them must not upgrade.
    for announce in ["{10}", "{10+}"] {
        let input = format!("AUTHENTICATE \"PLAIN\" {announce}\r\nSTARTTLS\r\n\r\nSTARTTLS\r\n");
        assert_eq!(
            run(Protocol::Sieve, input.as_bytes()),
            [
                reply("NO \"Literals are not accepted before STARTTLS\"\r\n"),
                upgrade("OK \"Begin TLS negotiation now.\"\r\n", 0),
            ],
            "{announce}"
        );
        assert_eq!(
            run_bytewise(Protocol::Sieve, input.as_bytes()),
            [
                reply("NO \"Literals are not accepted before STARTTLS\"\r\n"),
                upgrade("OK \"Begin TLS negotiation now.\"\r\n", 0),
            ],
            "{announce}"
        );
    }
    // Longer than a line could be: the phase cannot follow it, and closes.
    assert_eq!(
        run(Protocol::Sieve, b"PUTSCRIPT \"x\" {99999}\r\n"),
        [close(
            "NO \"Literals are not accepted before STARTTLS\"\r\nBYE \"Literals are not accepted before STARTTLS, closing connection\"\r\n"
        )]
    );
}

#[test]
fn t8_t9_binary_long_lines_floods_and_timeout() {
    let hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
    let steps = run(Protocol::Sieve, hello);
    assert!(
        matches!(&steps[..], [PlainStep::Close(b)] if b.starts_with(b"BYE \"Binary data")),
        "{steps:?}"
    );
    let long = vec![b'x'; LIMITS.max_line_length + 1];
    assert_eq!(
        run(Protocol::Sieve, &long),
        [close("BYE \"Line too long\"\r\n")]
    );
    let flood = b"NOOP\r\n".repeat(LIMITS.max_commands + 1);
    let steps = run(Protocol::Sieve, &flood);
    assert_eq!(
        steps.last(),
        Some(&close("BYE \"Too many commands before STARTTLS\"\r\n"))
    );
    assert!(phase(Protocol::Sieve)
        .timeout_goodbye()
        .starts_with(b"BYE \"Timeout"));
}
