//! The per-byte work postern's relay does on an IMAP session's backend→client bytes, without
//! sockets or TLS, so it can be counted exactly under `valgrind --tool=callgrind`: the IMAP
//! response tracker (drain safe points) after login, the tracker and the login guard before
//! login, and the tracker over a literal. The bytes are those of compare.py's backend
//! (`benches/workloads.py`): 80-byte untagged FETCH lines, or one literal of 78-byte text
//! lines, fed in 64 KiB reads (the relay's scratch buffer), so reads split lines.
//!
//!     cargo bench -p postern-bench --bench tracker -- [lines|prelines|literal] [MiB]
//!     valgrind --tool=callgrind target/release/deps/tracker-* lines 64
//!
//! Prints the wall time per GiB (informational; callgrind's instruction count is the figure).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
// Times the loop with std's clock: this is a measurement program, not postern.
#![allow(clippy::disallowed_types)]

use std::time::Instant;

use postern_proto::imap_state::ImapState;
use postern_proto::login_guard::LoginGuard;
use postern_proto::Protocol;

const READ: usize = 64 * 1024;

fn resp_line() -> Vec<u8> {
    let mut line =
        br#"* 1 FETCH (UID 4711 FLAGS (\Seen) ENVELOPE ("Mon, 1 Jan 2026" "re: ipsum"))"#.to_vec();
    line.resize(78, b' ');
    line.extend_from_slice(b"\r\n");
    line
}

fn text(n: usize) -> Vec<u8> {
    let line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tem.\r\n";
    line.iter().copied().cycle().take(n).collect()
}

fn lines(n: usize) -> Vec<u8> {
    resp_line().into_iter().cycle().take(n / 80 * 80).collect()
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mode = args.first().map_or("all", String::as_str);
    let mib: usize = args.get(1).map_or(64, |s| s.parse().expect("MiB"));
    let n = mib << 20;
    let modes: &[&str] = if mode == "all" {
        &["lines", "prelines", "literal"]
    } else {
        std::slice::from_ref(&mode)
    };
    for &m in modes {
        let body = match m {
            "literal" => text(n),
            _ => lines(n),
        };
        let start = Instant::now();
        let passed = run(m, &body);
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{m}: {} MiB, {:.3} s/GiB wall ({passed} bytes passed)",
            body.len() >> 20,
            secs * f64::from(1u32 << 30) / body.len() as f64
        );
    }
}

/// Feeds `body` as the relay does and returns the bytes passed toward the client.
fn run(mode: &str, body: &[u8]) -> usize {
    let mut imap = ImapState::new();
    let mut guard = LoginGuard::new(Protocol::Imap, 8192);
    let (mut to_client, mut to_backend) = (Vec::new(), Vec::new());
    let mut passed = 0;
    imap.backend(b"* OK ready\r\n");
    let _ = guard.backend(b"* OK ready\r\n", &mut to_client, &mut to_backend);
    let (cmd, head, tail): (&[u8], Vec<u8>, &[u8]) = match mode {
        "lines" => (b"l FETCHLINES 1\r\n", Vec::new(), b"l OK done\r\n"),
        "prelines" => (
            b"l ID (\"bench-lines\" \"1\")\r\n",
            Vec::new(),
            b"l OK done\r\n",
        ),
        "literal" => (
            b"d FETCHBIG 1\r\n",
            format!("* 1 FETCH (BODY[] {{{}}}\r\n", body.len()).into_bytes(),
            b")\r\nd OK FETCH completed\r\n",
        ),
        other => panic!("unknown mode {other} (lines, prelines, literal)"),
    };
    let reads_backend = mode == "prelines";
    if !reads_backend {
        // After LOGIN the guard no longer reads the backend: only the tracker does.
        let login = b"a LOGIN u p\r\n";
        let _ = guard.client(login, &mut to_backend, &mut to_client);
        imap.client(login);
        let _ = guard.backend(b"a OK logged in\r\n", &mut to_client, &mut to_backend);
        imap.backend(b"a OK logged in\r\n");
        assert!(!guard.reads_backend());
    }
    to_backend.clear();
    let _ = guard.client(cmd, &mut to_backend, &mut to_client);
    imap.client(&to_backend);
    let stream: Vec<&[u8]> = std::iter::once(&head[..])
        .chain(body.chunks(READ))
        .chain(std::iter::once(tail))
        .collect();
    for chunk in stream {
        imap.backend(chunk);
        if reads_backend {
            to_client.clear();
            let _ = guard.backend(chunk, &mut to_client, &mut to_backend);
            passed += to_client.len();
        } else {
            passed += chunk.len();
        }
    }
    assert_eq!(
        imap.goodbye(),
        postern_proto::imap_state::Goodbye::Now,
        "the stream ends at a response boundary"
    );
    passed
}
