//! Prelogin (route = "user"): no panic, bounded buffers, the replay is the client's own bytes
//! and nothing depends on how the input is split into reads.
//! Input: byte 0 picks the protocol, byte 1 the read size, the rest is the client's bytes.

use postern_proto::capabilities::Capabilities;
use postern_proto::prelogin::{PreStep, Prelogin, PreloginLimits, MAX_COMMAND};
use postern_proto::Protocol;

const LIMITS: PreloginLimits = PreloginLimits {
    max_line_length: 256,
    max_commands: 64,
};

/// One fuzz input: panics on a broken invariant.
pub(crate) fn fuzz_one(data: &[u8]) {
    let [p, size, input @ ..] = data else { return };
    let protocol = [
        Protocol::Imap,
        Protocol::Pop3,
        Protocol::Smtp,
        Protocol::Sieve,
    ][usize::from(*p % 4)];
    let size = usize::from(*size).max(1);
    let whole = run(protocol, &[input]);
    let chunks: Vec<&[u8]> = input.chunks(size).collect();
    assert_eq!(whole, run(protocol, &chunks));
    if let (_, Some(replay)) = &whole {
        if protocol != Protocol::Smtp {
            assert!(input.ends_with(replay));
        }
    }
}

/// The bytes written, and the replay followed by the input not fed yet.
fn run(protocol: Protocol, chunks: &[&[u8]]) -> (Vec<u8>, Option<Vec<u8>>) {
    let caps = Capabilities::new(
        [
            "IMAP4rev1",
            "LITERAL+",
            "AUTH=PLAIN",
            "USER",
            "SASL PLAIN LOGIN",
            "AUTH PLAIN LOGIN",
            "\"SASL\" \"PLAIN\"",
        ]
        .map(str::to_owned)
        .to_vec(),
    );
    let mut pre = Prelogin::new(protocol, "mx.test", Some(&caps), LIMITS);
    let mut buf = Vec::new();
    let mut written = pre.greeting();
    for (i, chunk) in chunks.iter().enumerate() {
        buf.extend_from_slice(chunk);
        loop {
            match pre.step(&mut buf) {
                PreStep::NeedMore => {
                    assert!(buf.len() <= 64 * 1024 && pre.held_len() <= MAX_COMMAND + 256);
                    break;
                }
                PreStep::Reply(r) => written.extend_from_slice(&r),
                PreStep::Login(login) => {
                    let mut rest = login.replay.as_slice().to_vec();
                    for c in &chunks[i + 1..] {
                        rest.extend_from_slice(c);
                    }
                    return (written, Some(rest));
                }
                PreStep::Close(r) => {
                    written.extend_from_slice(&r);
                    return (written, None);
                }
            }
        }
    }
    (written, None)
}
