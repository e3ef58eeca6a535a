//! parse_greeting: no panic, lengths within the buffer, and feeding a greeting a byte at a
//! time agrees with feeding it whole (the first complete answer is final).
//! Input: byte 0 picks the protocol, the rest is what the backend sent.

use postern_proto::greeting::{parse_greeting, Greeting, MAX_GREETING};
use postern_proto::Protocol;

/// One fuzz input: panics on a broken invariant.
pub(crate) fn fuzz_one(data: &[u8]) {
    let [p, buf @ ..] = data else { return };
    let protocol = Protocol::ALL[usize::from(*p) % Protocol::ALL.len()];
    let whole = parse_greeting(protocol, buf);
    if let Greeting::Ok { len } | Greeting::Refused { len } = whole {
        assert!(len > 0 && len <= buf.len());
    }
    let mut first = None;
    // Prefixes up to 512 bytes: enough for the shapes, cheap enough to run often.
    for end in 0..=buf.len().min(512) {
        match parse_greeting(protocol, &buf[..end]) {
            Greeting::Incomplete => assert!(end <= MAX_GREETING),
            answer => {
                first.get_or_insert(answer);
            }
        }
    }
    if let Some(Greeting::Ok { len } | Greeting::Refused { len }) = first {
        assert_eq!(
            Some(whole),
            first,
            "a complete greeting of {len} bytes changed"
        );
    }
}
