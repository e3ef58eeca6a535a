//! LoginGuard fed client and backend bytes: no panic, held bytes within their bounds, and
//! the outcome (bytes each way, verdicts, login state) does not depend on how each
//! direction's bytes are split into reads (the interleaving of the two is kept).
//! Input: byte 0 picks the protocol, byte 1 the read size, the rest is a sequence of steps,
//! each a header byte (high bit: from the backend; low 7 bits: length) then that many bytes.

use postern_proto::imap_state::{Goodbye, ImapState};
use postern_proto::login_guard::{
    LoginGuard, LoginVerdict, Passed, MAX_ID_COMMAND, MAX_OWN_BACKLOG, MAX_TAG, REPLY_HEAD,
};
use postern_proto::Protocol;

const MAX_LINE: usize = 512;
const MAX_BACKEND_HELD: usize = REPLY_HEAD + 32 + 64 * (MAX_TAG + 256) + MAX_OWN_BACKLOG + 512;

/// One fuzz input: panics on a broken invariant.
pub(crate) fn fuzz_one(data: &[u8]) {
    let [p, size, input @ ..] = data else { return };
    let mut rest: &[u8] = input;
    let protocol = Protocol::ALL[usize::from(*p) % Protocol::ALL.len()];
    let size = usize::from(*size).max(1);
    let mut steps = Vec::new();
    while let [head, tail @ ..] = rest {
        let len = usize::from(head & 0x7f).min(tail.len());
        steps.push((head & 0x80 == 0, &tail[..len]));
        rest = &tail[len..];
    }
    let whole: Vec<(bool, Vec<&[u8]>)> = steps.iter().map(|(c, b)| (*c, vec![*b])).collect();
    let chunked: Vec<(bool, Vec<&[u8]>)> = steps
        .iter()
        .map(|(c, b)| (*c, b.chunks(size).collect()))
        .collect();
    assert_eq!(
        run(protocol, &whole, input.len()),
        run(protocol, &chunked, input.len())
    );
}

type Out = (
    Vec<u8>,
    Vec<u8>,
    Vec<LoginVerdict>,
    bool,
    Option<String>,
    bool,
);

fn run(protocol: Protocol, steps: &[(bool, Vec<&[u8]>)], total: usize) -> Out {
    let mut guard = LoginGuard::new(protocol, MAX_LINE);
    // After an IMAP login the caller knows the response boundaries, as the relay does.
    let mut imap = ImapState::new();
    let (mut backend, mut client) = (Vec::new(), Vec::new());
    let mut verdicts = Vec::new();
    for (from_client, reads) in steps {
        for read in reads {
            let passed = if *from_client {
                guard.client(read, &mut backend, &mut client)
            } else {
                imap.backend(read);
                guard.backend(read, &mut client, &mut backend)
            };
            if passed == Passed::Unchanged {
                if *from_client {
                    backend.extend_from_slice(read);
                } else {
                    client.extend_from_slice(read);
                }
            }
            // The caller writes postern's replies, then tells the guard (the relay does).
            while guard.own_replies_unwritten() {
                guard.own_replies_written(&mut backend, &mut client);
            }
            while let Some(v) = guard.next_verdict() {
                verdicts.push(v);
            }
            assert!(guard.held_len() <= MAX_ID_COMMAND + total + 2048);
            assert!(guard.backend_held_len() <= MAX_BACKEND_HELD);
        }
        if imap.goodbye() == Goodbye::Now {
            guard.replies_at_boundary(&mut client);
        }
    }
    (
        backend,
        client,
        verdicts,
        guard.logged_in(),
        guard.user().map(str::to_owned),
        guard.finished(),
    )
}
