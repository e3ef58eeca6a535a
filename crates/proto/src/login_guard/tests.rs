//! Tests of the login guard. Every transcript is run with its steps whole, byte by byte and
//! in 3-byte reads, and must give the same result each way.

mod claims;
mod imap;
mod pop3;
mod post_login;
mod sieve;
mod smtp;

use super::*;

/// One read: from the client, or from the backend.
#[derive(Clone, Copy, Debug)]
pub(super) enum Step<'a> {
    C(&'a [u8]),
    B(&'a [u8]),
}

pub(super) use Step::{B, C};

/// What a transcript produced.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Outcome {
    pub(super) to_backend: String,
    pub(super) to_client: String,
    pub(super) verdicts: Vec<LoginVerdict>,
    pub(super) logged_in: bool,
    pub(super) user: Option<String>,
    pub(super) claims: u32,
    pub(super) finished: bool,
    pub(super) wants_client: bool,
}

pub(super) const MAX_LINE: usize = 1024;

/// Runs `steps`, each split into reads of `size` bytes (0: whole). After every step the
/// backend stream is taken to be at a response boundary (for the after-login filter).
pub(super) fn run_sized(p: Protocol, steps: &[Step<'_>], size: usize, secret: &str) -> Outcome {
    let mut g = LoginGuard::new(p, MAX_LINE);
    let (mut to_backend, mut to_client) = (Vec::new(), Vec::new());
    let mut verdicts = Vec::new();
    for step in steps {
        let bytes = match step {
            C(b) | B(b) => *b,
        };
        let size = if size == 0 { bytes.len().max(1) } else { size };
        for chunk in bytes.chunks(size) {
            let passed = match step {
                C(_) => g.client(chunk, &mut to_backend, &mut to_client),
                B(_) => g.backend(chunk, &mut to_client, &mut to_backend),
            };
            if passed == Passed::Unchanged {
                match step {
                    C(_) => to_backend.extend_from_slice(chunk),
                    B(_) => to_client.extend_from_slice(chunk),
                }
            }
            // The caller writes postern's replies, then tells the guard (the relay does).
            while g.own_replies_unwritten() {
                g.own_replies_written(&mut to_backend, &mut to_client);
            }
            while let Some(v) = g.next_verdict() {
                verdicts.push(v);
            }
            if !secret.is_empty() {
                assert!(!format!("{g:?}").contains(secret), "Debug shows the secret");
                for v in &verdicts {
                    assert!(
                        !format!("{v:?}").contains(secret),
                        "a verdict shows the secret"
                    );
                }
            }
            assert!(
                g.held_len() <= 2 * MAX_ID_COMMAND + MAX_LINE,
                "held {}",
                g.held_len()
            );
        }
        g.replies_at_boundary(&mut to_client);
    }
    Outcome {
        to_backend: String::from_utf8_lossy(&to_backend).into_owned(),
        to_client: String::from_utf8_lossy(&to_client).into_owned(),
        verdicts,
        logged_in: g.logged_in(),
        user: g.user().map(str::to_owned),
        claims: g.refused_claims(),
        finished: g.finished(),
        wants_client: g.wants_client(),
    }
}

/// Runs `steps` whole, byte by byte and in 3-byte reads; all three must agree.
pub(super) fn run(p: Protocol, steps: &[Step<'_>]) -> Outcome {
    run_secret(p, steps, "")
}

/// [`run`], also checking that `secret` never shows in `Debug` output or a verdict.
pub(super) fn run_secret(p: Protocol, steps: &[Step<'_>], secret: &str) -> Outcome {
    let whole = run_sized(p, steps, 0, secret);
    for size in [1, 3] {
        let other = run_sized(p, steps, size, secret);
        assert!(
            whole == other,
            "{size}-byte reads differ:\n{}\n{}",
            short(&whole),
            short(&other)
        );
    }
    whole
}

/// An outcome's Debug, long strings cut.
fn short(o: &Outcome) -> String {
    let cut = |s: &str| {
        if s.len() > 300 {
            format!(
                "{}...({} bytes)...{}",
                &s[..150],
                s.len(),
                &s[s.len() - 150..]
            )
        } else {
            s.to_owned()
        }
    };
    format!(
        "to_backend={:?} to_client={:?} verdicts={:?} logged_in={} claims={} finished={} wants={}",
        cut(&o.to_backend),
        cut(&o.to_client),
        o.verdicts,
        o.logged_in,
        o.claims,
        o.finished,
        o.wants_client
    )
}

pub(super) fn ok(user: &str) -> LoginVerdict {
    LoginVerdict::LoggedIn {
        user: Some(user.to_owned()),
    }
}

pub(super) fn failed(user: &str) -> LoginVerdict {
    LoginVerdict::Failed {
        user: Some(user.to_owned()),
    }
}

pub(super) fn b64(s: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

pub(super) const IMAP_GREETING: &[u8] =
    b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN] Dovecot ready.\r\n";
pub(super) const IMAP_GREETING_NO_CAPS: &[u8] = b"* OK ready\r\n";
pub(super) const POP3_GREETING: &[u8] = b"+OK Dovecot ready.\r\n";
pub(super) const SMTP_GREETING: &[u8] = b"220 mx.test ESMTP Postfix\r\n";
pub(super) const SIEVE_GREETING: &[u8] = b"\"IMPLEMENTATION\" \"Dovecot Pigeonhole\"\r\n\"SIEVE\" \"fileinto reject\"\r\n\"SASL\" \"PLAIN LOGIN\"\r\n\"VERSION\" \"1.0\"\r\nOK \"Dovecot ready.\"\r\n";
