//! PlainPhase: no panic, bounded buffer, nothing left across an upgrade, and the replies do
//! not depend on how the input is split into reads.
//! Input: byte 0 picks the protocol, byte 1 the read size, the rest is the client's bytes.

use postern_proto::starttls::{PlainLimits, PlainPhase, PlainStep};
use postern_proto::Protocol;

const LIMITS: PlainLimits = PlainLimits {
    max_line_length: 256,
    max_commands: 64,
};

/// One fuzz input: panics on a broken invariant.
pub(crate) fn fuzz_one(data: &[u8]) {
    let [p, size, input @ ..] = data else { return };
    let protocol = Protocol::ALL[usize::from(*p) % Protocol::ALL.len()];
    let size = usize::from(*size).max(1);
    let whole = run(protocol, &[input]);
    let chunks: Vec<&[u8]> = input.chunks(size).collect();
    assert_eq!(whole, run(protocol, &chunks));
}

fn run(protocol: Protocol, chunks: &[&[u8]]) -> Vec<u8> {
    let mut phase = PlainPhase::new(protocol, "mx.test", LIMITS);
    let mut buf = Vec::new();
    let mut written = phase.greeting();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match phase.step(&mut buf) {
                PlainStep::NeedMore => {
                    assert!(buf.len() < LIMITS.max_line_length);
                    break;
                }
                PlainStep::Reply(r) => written.extend_from_slice(&r),
                PlainStep::Upgrade { reply, .. } => {
                    assert!(buf.is_empty());
                    written.extend_from_slice(&reply);
                    return written;
                }
                PlainStep::Close(r) => {
                    written.extend_from_slice(&r);
                    return written;
                }
            }
        }
    }
    written
}
