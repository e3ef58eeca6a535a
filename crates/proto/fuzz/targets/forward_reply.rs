//! parse_reply (the backend's answer to postern's ID/XCLIENT): no panic, lengths within the
//! buffer and MAX_REPLY, and a complete answer never changes as more bytes arrive.
//! Input: byte 0 picks the protocol, the rest is what the backend sent.

use postern_proto::forward::{parse_reply, ForwardReply, MAX_REPLY};
use postern_proto::Protocol;

/// One fuzz input: panics on a broken invariant.
pub(crate) fn fuzz_one(data: &[u8]) {
    let [p, buf @ ..] = data else { return };
    let protocol = Protocol::ALL[usize::from(*p) % Protocol::ALL.len()];
    let whole = parse_reply(protocol, buf);
    if let ForwardReply::Accepted { len } | ForwardReply::Refused { len } = whole {
        assert!(len > 0 && len <= buf.len() && len <= MAX_REPLY + 1);
    }
    let mut first = None;
    // Prefixes up to 512 bytes: enough for the shapes, cheap enough to run often.
    for end in 0..=buf.len().min(512) {
        match parse_reply(protocol, &buf[..end]) {
            ForwardReply::Incomplete => assert!(end <= MAX_REPLY),
            answer => {
                first.get_or_insert(answer);
            }
        }
    }
    if let Some(first @ (ForwardReply::Accepted { .. } | ForwardReply::Refused { .. })) = first {
        assert_eq!(whole, first);
    }
}
