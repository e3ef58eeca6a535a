//! CapabilityFilter: no panic, bounded holding, and the output does not depend on how the
//! input is split into reads.
//! Input: byte 0 picks the protocol, byte 1 the read size, the rest is the backend's bytes.

use postern_proto::capfilter::{CapabilityFilter, MAX_FILTER_LINE};
use postern_proto::Protocol;

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
    let mut filter = CapabilityFilter::new(protocol);
    let mut out = Vec::new();
    for chunk in chunks {
        filter.feed(chunk, &mut out);
        assert!(filter.held_len() <= 2 * MAX_FILTER_LINE);
    }
    filter.flush(&mut out);
    out
}
