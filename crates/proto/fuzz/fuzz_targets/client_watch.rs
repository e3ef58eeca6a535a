//! ClientWatch fed client and backend bytes: no panic, held bytes within their bounds,
//! nothing held once done, and the output does not depend on how each direction's bytes are
//! split into reads (the interleaving of client and backend steps is kept).
//! Input: byte 0 picks the protocol (and strict mode when >= 128), byte 1 the read size, the
//! rest is a sequence of steps, each a header byte (high bit: from the backend; low 7 bits:
//! length) followed by that many bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_proto::watch::{ClientWatch, PASS_TAIL, REPLY_HEAD};
use postern_proto::Protocol;

const MAX_LINE: usize = 256;
const MAX_BACKEND_HELD: usize = REPLY_HEAD + PASS_TAIL + 64 * 64;

fuzz_target!(|data: &[u8]| {
    let [p, size, input @ ..] = data else { return };
    let mut rest: &[u8] = input;
    let protocol = [Protocol::Imap, Protocol::Pop3, Protocol::Smtp][usize::from(*p % 3)];
    let size = usize::from(*size).max(1);
    let strict = *p >= 128;
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
        run(protocol, strict, &whole),
        run(protocol, strict, &chunked)
    );
});

type Out = (Vec<u8>, Vec<u8>, Option<String>, bool);

fn run(protocol: Protocol, strict: bool, steps: &[(bool, Vec<&[u8]>)]) -> Out {
    let mut watch = if strict {
        ClientWatch::strict(protocol, MAX_LINE)
    } else {
        ClientWatch::new(protocol, MAX_LINE)
    };
    let (mut backend, mut client) = (Vec::new(), Vec::new());
    for (from_client, reads) in steps {
        for read in reads {
            match (from_client, watch.is_done()) {
                (true, true) => backend.extend_from_slice(read),
                (true, false) => watch.feed(read, &mut backend, &mut client),
                (false, _) => watch.backend(read),
            }
            assert!(watch.held_len() <= MAX_LINE);
            assert!(watch.backend_held_len() <= MAX_BACKEND_HELD);
            if watch.is_done() {
                assert_eq!(watch.held_len(), 0);
            }
        }
    }
    let done = watch.is_done();
    watch.flush(&mut backend);
    (backend, client, watch.user().map(str::to_owned), done)
}
