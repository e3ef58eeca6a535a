//! The pure login-name extractor and the ID field rule: no panic, and every name returned
//! is bounded and fit for a log line (no control characters).
//! Input: byte 0 picks the protocol and the SASL mechanism, the rest is a command line.

use postern_proto::login_guard::{
    imap_login_user, is_reserved_id_field, login_line, sasl_plain_identities, sasl_response_name,
    LoginLine, SaslMech, MAX_USER,
};
use postern_proto::Protocol;

fn check(name: &str) {
    assert!(!name.is_empty());
    assert!(name.chars().count() <= MAX_USER);
    assert!(!name.chars().any(char::is_control));
}

/// One fuzz input: panics on a broken invariant.
pub(crate) fn fuzz_one(data: &[u8]) {
    let [p, line @ ..] = data else { return };
    let protocol = Protocol::ALL[usize::from(*p) % Protocol::ALL.len()];
    let mech = [
        SaslMech::Plain,
        SaslMech::Login,
        SaslMech::XOAuth2,
        SaslMech::OAuthBearer,
        SaslMech::Other,
    ][usize::from(*p) / Protocol::ALL.len() % 5];
    if let LoginLine::Name(name) = login_line(protocol, line) {
        check(&name);
    }
    for name in [imap_login_user(line), sasl_response_name(mech, line)]
        .into_iter()
        .flatten()
    {
        check(&name);
    }
    if let Some((zid, cid)) = sasl_plain_identities(line) {
        zid.iter().chain(cid.iter()).for_each(|n| check(n));
    }
    // Case never matters to the rule.
    assert_eq!(
        is_reserved_id_field(line),
        is_reserved_id_field(&line.to_ascii_uppercase())
    );
}
