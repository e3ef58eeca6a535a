//! ImapState: no panic on any interleaving of client and backend bytes, `Close` never turns
//! back, and the answer does not depend on how the backend's bytes are split into reads.
//! Input: byte 0 the read size, then steps: a byte whose low bit picks the direction and
//! whose upper bits give a length, followed by that many bytes.

use postern_proto::imap_state::{Goodbye, ImapState};

/// One fuzz input: panics on a broken invariant.
pub(crate) fn fuzz_one(data: &[u8]) {
    let [size, rest @ ..] = data else { return };
    let size = usize::from(*size).max(1);
    let mut steps: Vec<(bool, &[u8])> = Vec::new();
    let mut rest = rest;
    while let [head, tail @ ..] = rest {
        let len = usize::from(head >> 1).min(tail.len());
        steps.push((head & 1 == 1, &tail[..len]));
        rest = &tail[len..];
    }
    let whole = run(&steps, usize::MAX);
    assert_eq!(whole, run(&steps, size));
}

/// Feeds the steps in order, each split into reads of `size` bytes; returns the answer
/// after every step.
fn run(steps: &[(bool, &[u8])], size: usize) -> Vec<Goodbye> {
    let mut state = ImapState::new();
    let mut answers = Vec::with_capacity(steps.len());
    let mut closed = false;
    for (backend, bytes) in steps {
        for chunk in bytes.chunks(size.min(bytes.len().max(1))) {
            if *backend {
                state.backend(chunk);
            } else {
                state.client(chunk);
            }
        }
        let answer = state.goodbye();
        if closed {
            assert_eq!(answer, Goodbye::Close, "Close turned back");
        }
        closed = answer == Goodbye::Close;
        answers.push(answer);
    }
    answers
}
