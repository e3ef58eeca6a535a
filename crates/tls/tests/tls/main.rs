//! Integration tests of postern-tls: real rustls handshakes against the `ServerConfig`s it
//! builds, over `tokio::io::duplex` or loopback TCP, with certificates generated per test.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod alpn;
mod formats;
mod generate;
mod load_errors;
mod permissions;
mod reload;
mod rotation;
mod sni;
mod support;
mod tickets;
