//! ClientWatch: no panic, held bytes within max_line_length, nothing held once done, and the
//! output does not depend on how the input is split into reads.
//! Input: byte 0 picks the protocol (and strict mode when >= 128), byte 1 the read size, the rest is the client's bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_proto::watch::ClientWatch;
use postern_proto::Protocol;

const MAX_LINE: usize = 256;

fuzz_target!(|data: &[u8]| {
    let [p, size, input @ ..] = data else { return };
    let protocol = [Protocol::Imap, Protocol::Pop3, Protocol::Smtp][usize::from(*p % 3)];
    let size = usize::from(*size).max(1);
    let strict = *p >= 128;
    let whole = run(protocol, strict, &[input]);
    let chunks: Vec<&[u8]> = input.chunks(size).collect();
    assert_eq!(whole, run(protocol, strict, &chunks));
});

fn run(protocol: Protocol, strict: bool, chunks: &[&[u8]]) -> (Vec<u8>, Vec<u8>, Option<String>) {
    let mut watch = if strict {
        ClientWatch::strict(protocol, MAX_LINE)
    } else {
        ClientWatch::new(protocol, MAX_LINE)
    };
    let (mut backend, mut client) = (Vec::new(), Vec::new());
    for chunk in chunks {
        if watch.is_done() {
            backend.extend_from_slice(chunk);
            continue;
        }
        watch.feed(chunk, &mut backend, &mut client);
        assert!(watch.held_len() <= MAX_LINE);
        if watch.is_done() {
            assert_eq!(watch.held_len(), 0);
        }
    }
    watch.flush(&mut backend);
    (backend, client, watch.user().map(str::to_owned))
}
