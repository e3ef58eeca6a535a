//! One client connection's life: TLS (implicit or after the STARTTLS dialogue), the
//! backend connection, the relay, timeouts, the goodbye, and the session log line.
//!
//! # Invariants
//! - Never binds a socket; receives accepted connections from the listener crate.
//! - Every wait has a deadline: TLS handshake, plaintext phase, backend connect (the pool's),
//!   idle relay.
//! - Bytes received after a STARTTLS command line and before the handshake are dropped
//!   and counted, never fed to TLS (rule T1/T2); the TLS engine only ever reads the socket.
//! - A password or token never reaches a log line: the only user field comes from
//!   `proto::watch`, which keeps login names only.
//! - Exactly one `session ended` log line per accepted connection that reached the handler.

mod handler;
mod record;
mod relay;
mod starttls;

pub use handler::{SessionHandler, SessionSettings};
